//! The [`ConnectionStore`] operations on the three tables.

use super::codec::{
    ENDED_ITEM, connection_item, frame_item, get_n, get_s, group_key, group_name, group_shard,
    host_from_item, host_key, insert_session, key_item, member_from_item, n, record_from_item, s,
    session_from_item, ttl_from_ms,
};
use super::schema::{BY_CONNECTION_INDEX, BY_OWNER_INDEX, HOSTS_PARTITION};
use super::{DynamoDbStore, is_conditional_failure, unavailable};
use crate::store::page_token::PageToken;
use crate::store::{
    Claim, ConnectionRecord, ConnectionStore, HostRecord, KeyClaim, Member, MembersPage,
    RecordsPage, SessionRecord, StoreError, StoredFrame,
};
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, ReturnValue, Select, WriteRequest};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most write requests in one `BatchWriteItem` call (a DynamoDB limit).
const BATCH_SIZE: usize = 25;
/// `BatchWriteItem` rounds before unprocessed deletes count as a failure.
const BATCH_ATTEMPTS: u32 = 8;

/// `claim_key` rounds (conditional write, then read) before a key that keeps changing between the
/// two counts as a failure.
const CLAIM_ATTEMPTS: u32 = 3;

/// Sort key above every frame's (`m#` and 20 nines, more than `u64::MAX` has).
const LAST_FRAME_ITEM: &str = "m#99999999999999999999";

/// A condition that an item of the connections table names `host` and `incarnation` as its
/// owner, with the expression values it needs. `put_connection` leaves empty owner fields out of
/// the item, so an empty one is matched by the attribute's absence (as the memory store matches
/// `""` with `""`).
fn owner_condition(host: &str, incarnation: &str) -> (String, Vec<(&'static str, AttributeValue)>) {
    let mut clauses = vec!["attribute_exists(connectionId)".to_string()];
    let mut values = Vec::new();
    for (attribute, placeholder, value) in [
        ("ownerHost", ":owner", host),
        ("ownerIncarnation", ":incarnation", incarnation),
    ] {
        if value.is_empty() {
            clauses.push(format!("attribute_not_exists({attribute})"));
        } else {
            clauses.push(format!("{attribute} = {placeholder}"));
            values.push((placeholder, s(value)));
        }
    }
    (clauses.join(" AND "), values)
}

/// The `writer` attribute of a frame or fence: the writing host's incarnation and ID. An
/// incarnation is a random ID without `#`, so the split is unambiguous.
fn writer(host: &str, incarnation: &str) -> String {
    format!("{incarnation}#{host}")
}

impl DynamoDbStore {
    fn expiry(&self, from_epoch_secs: i64) -> i64 {
        from_epoch_secs + self.lifetime.as_secs() as i64
    }

    /// Deletes memberships `(group, connection_id)` in batches, resubmitting unprocessed items;
    /// `groups` are partition keys of the groups table (shard keys).
    async fn delete_memberships(
        &self,
        connection_id: &str,
        groups: Vec<String>,
    ) -> Result<(), StoreError> {
        for chunk in groups.chunks(BATCH_SIZE) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|group| {
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .key("group", s(group))
                                .key("connectionId", s(connection_id))
                                .build()
                                .expect("the key is set"),
                        )
                        .build()
                })
                .collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                before_batch_attempt(attempt, pending.len(), "BatchWriteItem").await?;
                attempt += 1;
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.tables.groups, pending)
                    .send()
                    .await
                    .map_err(|e| unavailable("BatchWriteItem", e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.tables.groups))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }
}

/// Runs before batch call number `attempt` (from 0) while `left` items remain: unprocessed items
/// mean throttling, so later calls back off, and after `BATCH_ATTEMPTS` calls the operation fails.
async fn before_batch_attempt(
    attempt: u32,
    left: usize,
    operation: &str,
) -> Result<(), StoreError> {
    if attempt == BATCH_ATTEMPTS {
        return Err(StoreError::Unavailable(format!(
            "{left} items still unprocessed after {BATCH_ATTEMPTS} {operation} calls"
        )));
    }
    if attempt > 0 {
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
    }
    Ok(())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[async_trait::async_trait]
impl ConnectionStore for DynamoDbStore {
    async fn put_connection(&self, record: ConnectionRecord) -> Result<(), StoreError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.tables.connections)
            .set_item(Some(connection_item(
                &record,
                self.expiry(record.connected_at / 1000),
            )))
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", n(now_secs()));
        // An expired leftover with the same ID is not a live connection: overwrite it. Nor is a
        // record this incarnation of this host wrote: the write is idempotent, so the SDK's retry
        // of an attempt that timed out but landed succeeds instead of failing its own condition
        // (and a host that was reaped while alive can write its records again).
        let fresh = "attribute_not_exists(connectionId) OR #ttl < :now";
        put = if record.owner_host.is_empty() || record.owner_incarnation.is_empty() {
            put.condition_expression(fresh)
        } else {
            put.condition_expression(format!(
                "{fresh} OR (ownerHost = :owner AND ownerIncarnation = :incarnation)"
            ))
            .expression_attribute_values(":owner", s(&record.owner_host))
            .expression_attribute_values(":incarnation", s(&record.owner_incarnation))
        };
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::AlreadyExists(record.connection_id))
            }
            Err(e) => Err(unavailable("PutItem", e)),
        }
    }

    async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.connections)
            .key("connectionId", s(connection_id))
            // The record is read right after the handshake wrote it.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        if get_n(&item, "ttl").is_some_and(|ttl| ttl < now_secs()) {
            return Ok(None);
        }
        Ok(record_from_item(&item))
    }

    async fn delete_connection(&self, connection_id: &str) -> Result<Vec<String>, StoreError> {
        self.client
            .delete_item()
            .table_name(&self.tables.connections)
            .key("connectionId", s(connection_id))
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem", e))?;
        // The index is eventually consistent: a membership written a moment ago may not be listed
        // yet. Its ttl removes it eventually, and broadcasts skip connections that are gone.
        let keys = self.membership_keys(connection_id).await?;
        let groups = group_names(&keys);
        self.delete_memberships(connection_id, keys).await?;
        Ok(groups)
    }

    async fn groups_of(&self, connection_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(group_names(&self.membership_keys(connection_id).await?))
    }

    async fn add_to_group(&self, group: &str, member: &Member) -> Result<bool, StoreError> {
        let shard = group_shard(&member.connection_id, self.group_shards);
        let now = now_secs();
        let mut put = self
            .client
            .put_item()
            .table_name(&self.tables.groups)
            .item("group", group_key(group, shard))
            .item("connectionId", s(&member.connection_id))
            .item("joinedAt", n(member.joined_at))
            // A membership cannot outlive its connection, which started before now.
            .item("ttl", n(self.expiry(now)))
            // Joining again keeps the first membership and its joinedAt; an expired leftover is
            // no membership.
            .condition_expression("attribute_not_exists(connectionId) OR #ttl < :now")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", n(now));
        if !member.principal.is_empty() {
            put = put.item("principal", s(&member.principal));
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("PutItem", e)),
        }
    }

    async fn remove_from_group(
        &self,
        group: &str,
        connection_id: &str,
    ) -> Result<Option<Member>, StoreError> {
        let shard = group_shard(connection_id, self.group_shards);
        let out = self
            .client
            .delete_item()
            .table_name(&self.tables.groups)
            .key("group", group_key(group, shard))
            .key("connectionId", s(connection_id))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem", e))?;
        let now = now_secs();
        Ok(out
            .attributes
            .filter(|old| get_n(old, "ttl").is_none_or(|ttl| ttl > now))
            .as_ref()
            .and_then(member_from_item))
    }

    async fn group_members(
        &self,
        group: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError> {
        let resume = next_token
            .map(|t| PageToken::decode(t, self.group_shards))
            .transpose()?;
        // Read one member past the page to know whether another page exists: DynamoDB returns a
        // LastEvaluatedKey whenever Limit is reached, even when nothing follows.
        let want = limit.saturating_add(1);
        let (mut shard, mut after) = match resume {
            Some(t) => (t.shard, Some(t.after)),
            None => (0, None),
        };
        let mut start = after.take().map(|after| {
            HashMap::from([
                ("group".to_string(), group_key(group, shard)),
                ("connectionId".to_string(), s(&after)),
            ])
        });
        // Each member with the shard it came from: the next token names both.
        let mut members: Vec<(u32, Member)> = Vec::new();
        let now = now_secs();
        while shard < self.group_shards {
            let out = self
                .client
                .query()
                .table_name(&self.tables.groups)
                .key_condition_expression("#g = :g")
                // Limit counts items before the filter, so an expired item makes a page short;
                // the loop reads on until the page is full or the group ends.
                .filter_expression("#ttl > :now")
                // Only what a member needs: a smaller answer to send and to parse.
                .projection_expression("#c, #p, #j")
                .expression_attribute_names("#g", "group")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_names("#c", "connectionId")
                .expression_attribute_names("#p", "principal")
                .expression_attribute_names("#j", "joinedAt")
                .expression_attribute_values(":g", group_key(group, shard))
                .expression_attribute_values(":now", n(now))
                .limit(i32::try_from(want - members.len()).unwrap_or(i32::MAX))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query", e))?;
            members.extend(
                out.items()
                    .iter()
                    .filter_map(member_from_item)
                    .map(|m| (shard, m)),
            );
            start = out.last_evaluated_key;
            if members.len() >= want {
                break;
            }
            if start.is_none() {
                shard += 1;
            }
        }
        let next_token = if members.len() > limit {
            members.truncate(limit);
            members.last().map(|(shard, m)| {
                PageToken {
                    shard: *shard,
                    after: m.connection_id.clone(),
                }
                .encode()
            })
        } else {
            None
        };
        Ok(MembersPage {
            members: members.into_iter().map(|(_, m)| m).collect(),
            next_token,
        })
    }

    async fn group_count(&self, group: &str) -> Result<u64, StoreError> {
        let now = now_secs();
        // The shards are independent partitions: count them at once.
        let counts = (0..self.group_shards).map(|shard| async move {
            let mut count = 0u64;
            let mut start = None;
            // A COUNT query still reads (and pays for) at most 1 MB per call.
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.tables.groups)
                    .select(Select::Count)
                    .key_condition_expression("#g = :g")
                    .filter_expression("#ttl > :now")
                    .expression_attribute_names("#g", "group")
                    .expression_attribute_names("#ttl", "ttl")
                    .expression_attribute_values(":g", group_key(group, shard))
                    .expression_attribute_values(":now", n(now))
                    .consistent_read(true)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| unavailable("Query count", e))?;
                count += u64::try_from(out.count).unwrap_or_default();
                start = out.last_evaluated_key;
                if start.is_none() {
                    return Ok::<_, StoreError>(count);
                }
            }
        });
        futures_util::future::try_join_all(counts)
            .await
            .map(|counts| counts.into_iter().sum())
    }

    async fn connections_of_host(
        &self,
        host_id: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        // As in group_members: one record past the page tells whether another page exists.
        let want = limit.saturating_add(1);
        let mut start = next_token.map(|t| {
            HashMap::from([
                ("ownerHost".to_string(), s(host_id)),
                ("connectionId".to_string(), s(t)),
            ])
        });
        let mut records = Vec::new();
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.tables.connections)
                .index_name(BY_OWNER_INDEX)
                .key_condition_expression("ownerHost = :h")
                .expression_attribute_values(":h", s(host_id))
                .limit(i32::try_from(want - records.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query byOwner", e))?;
            records.extend(out.items().iter().filter_map(record_from_item));
            start = out.last_evaluated_key;
            if records.len() >= want || start.is_none() {
                break;
            }
        }
        let next_token = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.connection_id.clone())
        } else {
            None
        };
        Ok(RecordsPage {
            records,
            next_token,
        })
    }

    async fn register_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.connections)
            .item("connectionId", host_key(&host.host_id))
            .item("ownerHost", s(HOSTS_PARTITION))
            .item("hostId", s(&host.host_id))
            .item("incarnation", s(&host.incarnation))
            .item("endpoint", s(&host.endpoint))
            .item("heartbeatAt", n(host.heartbeat_at))
            // A liveness record nobody reaps (the whole cluster stopped) goes away by itself.
            .item("ttl", n(self.expiry(host.heartbeat_at / 1000)))
            .send()
            .await
            .map_err(|e| unavailable("PutItem host", e))?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        host_id: &str,
        incarnation: &str,
        heartbeat_at: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.tables.connections)
            .key("connectionId", host_key(host_id))
            .update_expression("SET heartbeatAt = :hb, #ttl = :ttl")
            .condition_expression("incarnation = :inc AND attribute_not_exists(reapingSince)")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":hb", n(heartbeat_at))
            .expression_attribute_values(":ttl", n(self.expiry(heartbeat_at / 1000)))
            .expression_attribute_values(":inc", s(incarnation))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("UpdateItem heartbeat", e)),
        }
    }

    async fn get_host(&self, host_id: &str) -> Result<Option<HostRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.connections)
            .key("connectionId", host_key(host_id))
            // Deciding that a host is dead must not rest on a stale read.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem host", e))?;
        Ok(out.item.as_ref().and_then(host_from_item))
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let mut hosts = Vec::new();
        let mut start = None;
        loop {
            // The index is eventually consistent: a host that registered a moment ago may be
            // missing, which only delays reaping it.
            let out = self
                .client
                .query()
                .table_name(&self.tables.connections)
                .index_name(BY_OWNER_INDEX)
                .key_condition_expression("ownerHost = :h")
                .expression_attribute_values(":h", s(HOSTS_PARTITION))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query byOwner hosts", e))?;
            hosts.extend(out.items().iter().filter_map(host_from_item));
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(hosts);
            }
        }
    }

    async fn begin_reap(&self, host: &HostRecord) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.tables.connections)
            .key("connectionId", host_key(&host.host_id))
            .update_expression("SET reapingSince = :now")
            .condition_expression("incarnation = :inc AND heartbeatAt = :hb")
            .expression_attribute_values(":now", n(crate::ids::now_ms()))
            .expression_attribute_values(":inc", s(&host.incarnation))
            .expression_attribute_values(":hb", n(host.heartbeat_at))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("UpdateItem reap", e)),
        }
    }

    async fn remove_host(&self, host_id: &str, incarnation: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.tables.connections)
            .key("connectionId", host_key(host_id))
            .condition_expression("incarnation = :inc")
            .expression_attribute_values(":inc", s(incarnation))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(unavailable("DeleteItem host", e)),
        }
    }
    // Reliable-delivery sessions.

    async fn take_over(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
    ) -> Result<bool, StoreError> {
        self.put_if_owned(record, expected_host, expected_incarnation, None)
            .await
    }

    async fn rotate_token(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
        expected_token_hash: &str,
    ) -> Result<bool, StoreError> {
        self.put_if_owned(
            record,
            expected_host,
            expected_incarnation,
            Some(expected_token_hash),
        )
        .await
    }

    async fn claim_key(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> Result<KeyClaim, StoreError> {
        let now_ms = claim.claimed_at;
        // A key is held while its ttl (whole seconds, rounded up) is after `now_ms`; TTL deletion
        // is late, so an item past its ttl is free although still there.
        let now = n(now_ms.div_euclid(1000));
        // The claim carries its attempt: if a put had landed although its answer was lost (the
        // SDK retries it, or the caller tries again), the next put's conditional failure reads
        // back this attempt's own claim, not another attempt's.
        for _ in 0..CLAIM_ATTEMPTS {
            let result = self
                .put_claim(connection_id, key, claim, expires_at_ms)
                .condition_expression("attribute_not_exists(connectionId) OR #ttl <= :now")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":now", now.clone())
                .send()
                .await;
            match result {
                Ok(_) => return Ok(KeyClaim::Claimed),
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(unavailable("PutItem claim_key", e)),
            }
            let held = self
                .read_key(connection_id, key, "GetItem claim_key")
                .await?;
            let held = held
                .filter(|item| get_n(item, "ttl").is_some_and(|ttl| ttl > now_ms.div_euclid(1000)));
            // Gone or expired between the two calls: claim again.
            let Some(item) = held else { continue };
            if get_s(&item, "state").as_deref() == Some("pending")
                && get_s(&item, "claimToken").as_deref() == Some(claim.attempt.as_str())
            {
                return Ok(KeyClaim::Claimed);
            }
            return Ok(
                match (get_s(&item, "state").as_deref(), get_s(&item, "answer")) {
                    (Some("done"), Some(answer)) => KeyClaim::Done(answer),
                    _ => KeyClaim::Pending(Claim {
                        claimed_at: get_n(&item, "claimedAt").unwrap_or_default(),
                        host_id: get_s(&item, "claimHost").unwrap_or_default(),
                        incarnation: get_s(&item, "claimIncarnation").unwrap_or_default(),
                        attempt: get_s(&item, "claimToken").unwrap_or_default(),
                    }),
                },
            );
        }
        Err(StoreError::Unavailable(format!(
            "idempotency key {key} of {connection_id} kept changing over {CLAIM_ATTEMPTS} claims"
        )))
    }

    async fn reclaim_key(
        &self,
        connection_id: &str,
        key: &str,
        lost: &Claim,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .put_claim(connection_id, key, claim, expires_at_ms)
            .condition_expression(
                "#state = :pending AND claimedAt = :at AND claimHost = :host \
                 AND claimIncarnation = :incarnation",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":at", n(lost.claimed_at))
            .expression_attribute_values(":host", s(&lost.host_id))
            .expression_attribute_values(":incarnation", s(&lost.incarnation))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            // Our own put, retried by the SDK after its answer was lost, fails the condition too.
            Err(e) if is_conditional_failure(&e) => Ok(self
                .read_key(connection_id, key, "GetItem reclaim_key")
                .await?
                .is_some_and(|item| {
                    get_s(&item, "claimToken").as_deref() == Some(claim.attempt.as_str())
                })),
            Err(e) => Err(unavailable("PutItem reclaim_key", e)),
        }
    }

    async fn release_key(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.tables.sessions)
            .key("connectionId", s(connection_id))
            .key("item", key_item(key))
            .condition_expression("#state = :pending AND claimToken = :attempt")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":attempt", s(&claim.attempt))
            .send()
            .await;
        match result {
            // Refused: completed, another attempt's, or already released (a retried delete).
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(unavailable("DeleteItem release_key", e)),
        }
    }

    async fn complete_key(
        &self,
        connection_id: &str,
        key: &str,
        answer: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        // A plain put: completing twice writes the same item, and the claim it replaces was ours.
        self.client
            .put_item()
            .table_name(&self.tables.sessions)
            .item("connectionId", s(connection_id))
            .item("item", key_item(key))
            .item("state", s("done"))
            .item("answer", s(answer))
            .item("ttl", n(ttl_from_ms(expires_at_ms)))
            .send()
            .await
            .map_err(|e| unavailable("PutItem complete_key", e))?;
        Ok(())
    }

    async fn keep_ended_session(
        &self,
        connection_id: &str,
        session: &SessionRecord,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut item = HashMap::from([
            ("connectionId".to_string(), s(connection_id)),
            ("item".to_string(), s(ENDED_ITEM)),
            ("ttl".to_string(), n(ttl_from_ms(expires_at_ms))),
        ]);
        insert_session(&mut item, session);
        self.client
            .put_item()
            .table_name(&self.tables.sessions)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable("PutItem keep_ended_session", e))?;
        Ok(())
    }

    async fn ended_session(
        &self,
        connection_id: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.sessions)
            .key("connectionId", s(connection_id))
            .key("item", s(ENDED_ITEM))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem ended_session", e))?;
        // TTL deletion is late: an item past its ttl is gone all the same.
        Ok(out
            .item
            .filter(|item| get_n(item, "ttl").is_some_and(|ttl| ttl > now_secs()))
            .and_then(|item| session_from_item(&item)))
    }

    async fn append_frame(
        &self,
        connection_id: &str,
        owner_host: &str,
        owner_incarnation: &str,
        frame: &StoredFrame,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        // One conditional put: the sequence number is the fence (STORE.md, "Frames and fences").
        // The writer's own item may be replaced, so a retried put that had landed succeeds.
        let result = self
            .client
            .put_item()
            .table_name(&self.tables.sessions)
            .item("connectionId", s(connection_id))
            .item("item", s(&frame_item(frame.seq)))
            .item("frame", s(&frame.frame))
            .item("writer", s(&writer(owner_host, owner_incarnation)))
            .item("ttl", n(ttl_from_ms(expires_at_ms)))
            .condition_expression(
                "attribute_not_exists(connectionId) OR writer = :writer OR #ttl <= :now",
            )
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":writer", s(&writer(owner_host, owner_incarnation)))
            .expression_attribute_values(":now", n(now_secs()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("PutItem append_frame", e)),
        }
    }

    async fn fence_frames(
        &self,
        connection_id: &str,
        seq: u64,
        owner_host: &str,
        owner_incarnation: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        // Anything but a frame may be replaced: nothing, an expired item, an earlier fence (this
        // one, if the put is retried).
        let result = self
            .client
            .put_item()
            .table_name(&self.tables.sessions)
            .item("connectionId", s(connection_id))
            .item("item", s(&frame_item(seq)))
            .item("writer", s(&writer(owner_host, owner_incarnation)))
            .item("ttl", n(ttl_from_ms(expires_at_ms)))
            .condition_expression(
                "attribute_not_exists(connectionId) OR attribute_not_exists(frame) OR #ttl <= :now",
            )
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", n(now_secs()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("PutItem fence_frames", e)),
        }
    }

    async fn frames_after(
        &self,
        connection_id: &str,
        after_seq: u64,
    ) -> Result<Vec<StoredFrame>, StoreError> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let now_ms = crate::ids::now_ms();
        let mut frames = Vec::new();
        let mut start = None;
        // Pages end at 1 MB; a session's backlog may take several.
        loop {
            let out = self
                .frames_query(connection_id, first)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query frames", e))?;
            frames.extend(out.items().iter().filter_map(|i| stored_frame(i, now_ms)));
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(frames);
            }
        }
    }

    async fn newest_frames_start(
        &self,
        connection_id: &str,
        enough: &mut (dyn for<'f> FnMut(&'f StoredFrame) -> bool + Send),
    ) -> Result<u64, StoreError> {
        let now_ms = crate::ids::now_ms();
        let mut start = None;
        // Page by page, newest first: the walk stops within the page where `enough` does, so
        // what it reads does not grow with the session's age.
        loop {
            let out = self
                .frames_query(connection_id, 0)
                .expression_attribute_names("#ttl", "ttl")
                .projection_expression("#item, frame, #ttl")
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query newest frames", e))?;
            for frame in out.items().iter().filter_map(|i| stored_frame(i, now_ms)) {
                if enough(&frame) {
                    return Ok(frame.seq.saturating_sub(1));
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(0);
            }
        }
    }
}

impl DynamoDbStore {
    /// A query of a session's frames from `first` on (not its fences, which carry no `frame`),
    /// strongly consistent: it is read right after a take-over, and every frame the previous
    /// owner kept must be seen.
    fn frames_query(
        &self,
        connection_id: &str,
        first: u64,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.tables.sessions)
            .key_condition_expression("connectionId = :c AND #item BETWEEN :first AND :last")
            .expression_attribute_names("#item", "item")
            .expression_attribute_values(":c", s(connection_id))
            .expression_attribute_values(":first", s(&frame_item(first)))
            .expression_attribute_values(":last", s(LAST_FRAME_ITEM))
            .consistent_read(true)
    }

    /// A put of `k#{key}` as pending under `claim`, to which the caller adds its condition.
    fn put_claim(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
        self.client
            .put_item()
            .table_name(&self.tables.sessions)
            .item("connectionId", s(connection_id))
            .item("item", key_item(key))
            .item("state", s("pending"))
            .item("claimedAt", n(claim.claimed_at))
            .item("claimHost", s(&claim.host_id))
            .item("claimIncarnation", s(&claim.incarnation))
            .item("claimToken", s(&claim.attempt))
            .item("ttl", n(ttl_from_ms(expires_at_ms)))
    }

    /// The item of an idempotency key, read strongly consistent (a claim may be milliseconds
    /// old).
    async fn read_key(
        &self,
        connection_id: &str,
        key: &str,
        operation: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.sessions)
            .key("connectionId", s(connection_id))
            .key("item", key_item(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(operation, e))?;
        Ok(out.item)
    }

    /// `take_over`, and with `token_hash` `rotate_token` too: the put of `record` if the stored
    /// one still names the expected owner (and session token).
    async fn put_if_owned(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
        token_hash: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (mut owned, mut values) = owner_condition(expected_host, expected_incarnation);
        if let Some(token_hash) = token_hash {
            owned.push_str(" AND sessionTokenHash = :token");
            values.push((":token", s(token_hash)));
        }
        let mut put = self
            .client
            .put_item()
            .table_name(&self.tables.connections)
            .set_item(Some(connection_item(
                record,
                self.expiry(record.connected_at / 1000),
            )))
            // An expired record is gone, as `get_connection` sees it: nothing to take over.
            .condition_expression(format!("{owned} AND #ttl >= :now"))
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", n(now_secs()));
        for (placeholder, value) in values {
            put = put.expression_attribute_values(placeholder, value);
        }
        // Memberships live in the groups table under the same connection ID: untouched.
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("PutItem take_over", e)),
        }
    }
}

impl DynamoDbStore {
    /// The partition keys (`{group}#{shard}`) of a connection's memberships, from the
    /// `byConnection` index.
    async fn membership_keys(&self, connection_id: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.tables.groups)
                .index_name(BY_CONNECTION_INDEX)
                .key_condition_expression("connectionId = :c")
                .expression_attribute_values(":c", s(connection_id))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query byConnection", e))?;
            keys.extend(out.items().iter().filter_map(|i| get_s(i, "group")));
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(keys);
            }
        }
    }
}

/// The group names of membership partition keys, sorted, each once.
fn group_names(keys: &[String]) -> Vec<String> {
    let mut groups: Vec<String> = keys.iter().map(|k| group_name(k).to_string()).collect();
    groups.sort();
    groups.dedup();
    groups
}

/// The frame an item of the sessions table holds, unless it is a fence or past its `ttl` at
/// `now_ms` (TTL deletion is late).
fn stored_frame(item: &HashMap<String, AttributeValue>, now_ms: i64) -> Option<StoredFrame> {
    if get_n(item, "ttl").is_some_and(|ttl| ttl * 1000 <= now_ms) {
        return None;
    }
    let seq = get_s(item, "item").and_then(|k| k.strip_prefix("m#").and_then(|d| d.parse().ok()));
    Some(StoredFrame {
        seq: seq?,
        frame: get_s(item, "frame")?,
    })
}
