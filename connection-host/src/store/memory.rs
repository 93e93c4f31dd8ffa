//! The embedded, in-process store.

use super::page_token::PageToken;
use super::{
    Claim, ConnectionRecord, ConnectionStore, HostRecord, KeyClaim, Member, MembersPage,
    RecordsPage, SessionRecord, StoreError, StoredFrame,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// Records and memberships in memory; lost when the process exits.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connections: HashMap<String, ConnectionRecord>,
    /// Members of each group by connection ID: `(principal, joined_at)`.
    groups: HashMap<String, BTreeMap<String, (String, i64)>>,
    memberships: HashMap<String, BTreeSet<String>>,
    hosts: HashMap<String, HostRecord>,
    /// Idempotency keys per connection: the key's state and when it expires.
    keys: HashMap<String, HashMap<String, (KeyClaim, i64)>>,
    /// Kept frames and fences per connection, by sequence number.
    frames: HashMap<String, BTreeMap<u64, FrameItem>>,
    /// What is kept of ended sessions, and until when.
    ended: HashMap<String, (SessionRecord, i64)>,
}

/// What a sequence number of a session holds.
#[derive(Debug)]
struct FrameItem {
    /// The frame; `None` for a fence.
    frame: Option<String>,
    /// Who wrote it: host and incarnation.
    writer: (String, String),
    /// When it expires (epoch milliseconds).
    expires: i64,
}

impl Inner {
    /// Writes `item` under `seq` if `free` says the item there (if any, and not expired) may be
    /// replaced.
    fn put_frame_item(
        &mut self,
        connection_id: &str,
        seq: u64,
        item: FrameItem,
        free: impl FnOnce(&FrameItem) -> bool,
    ) -> bool {
        let now = crate::ids::now_ms();
        let frames = self.frames.entry(connection_id.to_string()).or_default();
        if let Some(existing) = frames.get(&seq)
            && existing.expires > now
            && !free(existing)
        {
            return false;
        }
        frames.insert(seq, item);
        if frames.len().is_multiple_of(SWEEP_AT) {
            frames.retain(|_, item| item.expires > now);
        }
        true
    }
}

/// Every time a connection's keys or frames reach a multiple of this many, the expired ones are
/// swept, so a long session's do not accumulate.
const SWEEP_AT: usize = 256;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than refusing all further service would.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl ConnectionStore for MemoryStore {
    async fn put_connection(&self, record: ConnectionRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        // As on DynamoDB: rewriting a record of the same owner and incarnation is idempotent.
        if let Some(existing) = inner.connections.get(&record.connection_id) {
            let same_writer = !record.owner_host.is_empty()
                && !record.owner_incarnation.is_empty()
                && existing.owner_host == record.owner_host
                && existing.owner_incarnation == record.owner_incarnation;
            if !same_writer {
                return Err(StoreError::AlreadyExists(record.connection_id));
            }
        }
        inner
            .connections
            .insert(record.connection_id.clone(), record);
        Ok(())
    }

    async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        Ok(self.lock().connections.get(connection_id).cloned())
    }

    async fn delete_connection(&self, connection_id: &str) -> Result<Vec<String>, StoreError> {
        let mut inner = self.lock();
        inner.connections.remove(connection_id);
        // A session's keys and frames die with it here (DynamoDB leaves them to their ttl),
        // except the keys of an ended session kept for the client's next session to carry on;
        // those are swept once expired (`keep_ended_session`).
        if !inner.ended.contains_key(connection_id) {
            inner.keys.remove(connection_id);
        }
        inner.frames.remove(connection_id);
        let groups = inner.memberships.remove(connection_id).unwrap_or_default();
        for g in &groups {
            if let Some(members) = inner.groups.get_mut(g) {
                members.remove(connection_id);
                if members.is_empty() {
                    inner.groups.remove(g);
                }
            }
        }
        Ok(groups.into_iter().collect())
    }

    async fn add_to_group(&self, group: &str, member: &Member) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let members = inner.groups.entry(group.to_string()).or_default();
        if members.contains_key(&member.connection_id) {
            return Ok(false);
        }
        members.insert(
            member.connection_id.clone(),
            (member.principal.clone(), member.joined_at),
        );
        inner
            .memberships
            .entry(member.connection_id.clone())
            .or_default()
            .insert(group.to_string());
        Ok(true)
    }

    async fn remove_from_group(
        &self,
        group: &str,
        connection_id: &str,
    ) -> Result<Option<Member>, StoreError> {
        let mut inner = self.lock();
        let mut ended = None;
        if let Some(members) = inner.groups.get_mut(group) {
            ended = members
                .remove(connection_id)
                .map(|(principal, joined_at)| Member {
                    connection_id: connection_id.to_string(),
                    principal,
                    joined_at,
                });
            if members.is_empty() {
                inner.groups.remove(group);
            }
        }
        if let Some(groups) = inner.memberships.get_mut(connection_id) {
            groups.remove(group);
        }
        Ok(ended)
    }

    async fn groups_of(&self, connection_id: &str) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .memberships
            .get(connection_id)
            .map(|groups| groups.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn group_members(
        &self,
        group: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError> {
        // One shard: the token's position is all that matters.
        let start = match next_token {
            Some(t) => std::ops::Bound::Excluded(PageToken::decode(t, 1)?.after),
            None => std::ops::Bound::Unbounded,
        };
        let inner = self.lock();
        let Some(members) = inner.groups.get(group) else {
            return Ok(MembersPage::default());
        };
        let mut page: Vec<Member> = members
            .range((start, std::ops::Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(id, (principal, joined_at))| Member {
                connection_id: id.clone(),
                principal: principal.clone(),
                joined_at: *joined_at,
            })
            .collect();
        let next_token = if page.len() > limit {
            page.pop();
            page.last().map(|m| {
                PageToken {
                    shard: 0,
                    after: m.connection_id.clone(),
                }
                .encode()
            })
        } else {
            None
        };
        Ok(MembersPage {
            members: page,
            next_token,
        })
    }

    async fn group_count(&self, group: &str) -> Result<u64, StoreError> {
        Ok(self.lock().groups.get(group).map_or(0, |m| m.len() as u64))
    }

    async fn connections_of_host(
        &self,
        host_id: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        let inner = self.lock();
        let mut records: Vec<&ConnectionRecord> = inner
            .connections
            .values()
            .filter(|r| r.owner_host == host_id)
            .filter(|r| next_token.is_none_or(|t| r.connection_id.as_str() > t))
            .collect();
        records.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        let more = records.len() > limit;
        records.truncate(limit);
        Ok(RecordsPage {
            next_token: more
                .then(|| records.last().map(|r| r.connection_id.clone()))
                .flatten(),
            records: records.into_iter().cloned().collect(),
        })
    }

    async fn register_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.lock().hosts.insert(host.host_id.clone(), host.clone());
        Ok(())
    }

    async fn heartbeat(
        &self,
        host_id: &str,
        incarnation: &str,
        heartbeat_at: i64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.hosts.get_mut(host_id) {
            Some(h) if h.incarnation == incarnation && !h.reaping => {
                h.heartbeat_at = heartbeat_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn get_host(&self, host_id: &str) -> Result<Option<HostRecord>, StoreError> {
        Ok(self.lock().hosts.get(host_id).cloned())
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        Ok(self.lock().hosts.values().cloned().collect())
    }

    async fn begin_reap(&self, host: &HostRecord) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.hosts.get_mut(&host.host_id) {
            Some(h) if h.incarnation == host.incarnation && h.heartbeat_at == host.heartbeat_at => {
                h.reaping = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn remove_host(&self, host_id: &str, incarnation: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .hosts
            .get(host_id)
            .is_some_and(|h| h.incarnation == incarnation)
        {
            inner.hosts.remove(host_id);
        }
        Ok(())
    }

    async fn take_over(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.connections.get_mut(&record.connection_id) {
            Some(existing)
                if existing.owner_host == expected_host
                    && existing.owner_incarnation == expected_incarnation =>
            {
                *existing = record.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn rotate_token(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
        expected_token_hash: &str,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.connections.get_mut(&record.connection_id) {
            Some(existing)
                if existing.owner_host == expected_host
                    && existing.owner_incarnation == expected_incarnation
                    && existing
                        .session
                        .as_ref()
                        .is_some_and(|s| s.token_hash == expected_token_hash) =>
            {
                *existing = record.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn claim_key(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> Result<KeyClaim, StoreError> {
        let now_ms = claim.claimed_at;
        let mut inner = self.lock();
        let keys = inner.keys.entry(connection_id.to_string()).or_default();
        if let Some((held, expires)) = keys.get(key)
            && *expires > now_ms
        {
            return Ok(match held {
                // This attempt's own claim, from an earlier try.
                KeyClaim::Pending(own) if own.attempt == claim.attempt => KeyClaim::Claimed,
                // Stored states are only `Pending` and `Done`.
                held => held.clone(),
            });
        }
        keys.insert(
            key.to_string(),
            (KeyClaim::Pending(claim.clone()), expires_at_ms),
        );
        if keys.len().is_multiple_of(SWEEP_AT) {
            keys.retain(|_, (_, expires)| *expires > now_ms);
        }
        Ok(KeyClaim::Claimed)
    }

    async fn reclaim_key(
        &self,
        connection_id: &str,
        key: &str,
        lost: &Claim,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let held = inner
            .keys
            .get_mut(connection_id)
            .and_then(|keys| keys.get_mut(key));
        match held {
            Some(held) if held.0 == KeyClaim::Pending(lost.clone()) => {
                *held = (KeyClaim::Pending(claim.clone()), expires_at_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_key(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(keys) = inner.keys.get_mut(connection_id)
            && matches!(keys.get(key), Some((KeyClaim::Pending(held), _)) if held.attempt == claim.attempt)
        {
            keys.remove(key);
        }
        Ok(())
    }

    async fn complete_key(
        &self,
        connection_id: &str,
        key: &str,
        answer: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.lock()
            .keys
            .entry(connection_id.to_string())
            .or_default()
            .insert(
                key.to_string(),
                (KeyClaim::Done(answer.to_string()), expires_at_ms),
            );
        Ok(())
    }

    async fn keep_ended_session(
        &self,
        connection_id: &str,
        session: &SessionRecord,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let kept = (session.clone(), expires_at_ms);
        inner.ended.insert(connection_id.to_string(), kept);
        if inner.ended.len().is_multiple_of(SWEEP_AT) {
            let now = crate::ids::now_ms();
            inner.ended.retain(|_, (_, expires)| *expires > now);
            // Keys outlive their session only while they have not expired.
            inner.keys.retain(|_, keys| {
                keys.retain(|_, (_, expires)| *expires > now);
                !keys.is_empty()
            });
        }
        Ok(())
    }

    async fn ended_session(
        &self,
        connection_id: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let now = crate::ids::now_ms();
        Ok(self
            .lock()
            .ended
            .get(connection_id)
            .filter(|(_, expires)| *expires > now)
            .map(|(session, _)| session.clone()))
    }

    async fn append_frame(
        &self,
        connection_id: &str,
        owner_host: &str,
        owner_incarnation: &str,
        frame: &StoredFrame,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let writer = (owner_host.to_string(), owner_incarnation.to_string());
        let item = FrameItem {
            frame: Some(frame.frame.clone()),
            writer: writer.clone(),
            expires: expires_at_ms,
        };
        // As on DynamoDB: only the writer's own item (frame or fence) may be replaced.
        Ok(self
            .lock()
            .put_frame_item(connection_id, frame.seq, item, |existing| {
                existing.writer == writer
            }))
    }

    async fn fence_frames(
        &self,
        connection_id: &str,
        seq: u64,
        owner_host: &str,
        owner_incarnation: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let item = FrameItem {
            frame: None,
            writer: (owner_host.to_string(), owner_incarnation.to_string()),
            expires: expires_at_ms,
        };
        Ok(self
            .lock()
            .put_frame_item(connection_id, seq, item, |existing| {
                existing.frame.is_none()
            }))
    }

    async fn frames_after(
        &self,
        connection_id: &str,
        after_seq: u64,
    ) -> Result<Vec<StoredFrame>, StoreError> {
        let now = crate::ids::now_ms();
        let inner = self.lock();
        let Some(frames) = inner.frames.get(connection_id) else {
            return Ok(Vec::new());
        };
        Ok(frames
            .range(after_seq.saturating_add(1)..)
            .filter(|(_, item)| item.expires > now)
            .filter_map(|(seq, item)| {
                Some(StoredFrame {
                    seq: *seq,
                    frame: item.frame.clone()?,
                })
            })
            .collect())
    }

    async fn newest_frames_start(
        &self,
        connection_id: &str,
        enough: &mut (dyn for<'f> FnMut(&'f StoredFrame) -> bool + Send),
    ) -> Result<u64, StoreError> {
        let now = crate::ids::now_ms();
        let inner = self.lock();
        let Some(frames) = inner.frames.get(connection_id) else {
            return Ok(0);
        };
        for (seq, item) in frames.iter().rev().filter(|(_, item)| item.expires > now) {
            if let Some(frame) = &item.frame {
                let frame = StoredFrame {
                    seq: *seq,
                    frame: frame.clone(),
                };
                if enough(&frame) {
                    return Ok(seq.saturating_sub(1));
                }
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: id.into(),
            connected_at: 1,
            source_ip: "127.0.0.1".into(),
            ..ConnectionRecord::default()
        }
    }

    fn member(id: &str) -> Member {
        Member {
            connection_id: id.into(),
            principal: format!("user-{id}"),
            joined_at: 7,
        }
    }

    #[tokio::test]
    async fn put_is_conditional_and_delete_drops_memberships() {
        let s = MemoryStore::new();
        s.put_connection(record("a")).await.unwrap();
        assert!(matches!(
            s.put_connection(record("a")).await,
            Err(StoreError::AlreadyExists(_))
        ));
        s.add_to_group("g", &member("a")).await.unwrap();
        s.add_to_group("g", &member("b")).await.unwrap();
        s.add_to_group("h", &member("a")).await.unwrap();
        assert_eq!(s.groups_of("a").await.unwrap(), ["g", "h"]);
        assert_eq!(s.delete_connection("a").await.unwrap(), vec!["g", "h"]);
        assert_eq!(s.get_connection("a").await.unwrap(), None);
        assert!(s.groups_of("a").await.unwrap().is_empty());
        let page = s.group_members("g", None, 10).await.unwrap();
        assert_eq!(page.members, vec![member("b")]);
    }

    #[tokio::test]
    async fn members_page_through_large_groups() {
        let s = MemoryStore::new();
        for i in 0..25 {
            s.add_to_group("g", &member(&format!("c{i:02}")))
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = s.group_members("g", token.as_deref(), 10).await.unwrap();
            assert!(page.members.len() <= 10);
            seen.extend(page.members.into_iter().map(|m| m.connection_id));
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(seen.len(), 25);
        seen.dedup();
        assert_eq!(seen.len(), 25);
    }
}
