//! Records to and from DynamoDB items.

use super::schema::HOST_KEY_PREFIX;
use crate::store::{ConnectionRecord, HostRecord, Member, SessionRecord};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

pub(super) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_s(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

pub(super) fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

pub(super) fn host_key(host_id: &str) -> AttributeValue {
    s(&format!("{HOST_KEY_PREFIX}{host_id}"))
}

pub(super) fn record_from_item(item: &HashMap<String, AttributeValue>) -> Option<ConnectionRecord> {
    Some(ConnectionRecord {
        connection_id: get_s(item, "connectionId")?,
        connected_at: get_n(item, "connectedAt").unwrap_or_default(),
        source_ip: get_s(item, "sourceIp").unwrap_or_default(),
        user_agent: get_s(item, "userAgent"),
        owner_host: get_s(item, "ownerHost").unwrap_or_default(),
        owner_incarnation: get_s(item, "ownerIncarnation").unwrap_or_default(),
        owner_endpoint: get_s(item, "ownerEndpoint").unwrap_or_default(),
        // Written by `put_connection` from a JSON object, so text that is not one was not ours.
        authorizer: get_s(item, "authorizer").and_then(|text| serde_json::from_str(&text).ok()),
        // `sessionTokenHash` marks a session: every session has a token.
        session: session_from_item(item).map(Box::new),
    })
}

/// The session part of a connection record's item, or of an ended session's item in the
/// sessions table.
pub(super) fn session_from_item(item: &HashMap<String, AttributeValue>) -> Option<SessionRecord> {
    // `sessionTokenHash` marks a session: every session has a token.
    Some(SessionRecord {
        token_hash: get_s(item, "sessionTokenHash")?,
        principal: get_s(item, "sessionPrincipal").unwrap_or_default(),
        previous_token_hash: get_s(item, "sessionPreviousTokenHash").unwrap_or_default(),
        detached_at: get_n(item, "sessionDetachedAt").unwrap_or_default(),
        key_scope: get_s(item, "sessionKeyScope").unwrap_or_default(),
    })
}

/// Adds the attributes of `session` to `item` (see [`session_from_item`]).
pub(super) fn insert_session(item: &mut HashMap<String, AttributeValue>, session: &SessionRecord) {
    item.insert("sessionTokenHash".into(), s(&session.token_hash));
    item.insert("sessionDetachedAt".into(), n(session.detached_at));
    // Empty strings are left out, as they read back.
    for (name, value) in [
        ("sessionPreviousTokenHash", &session.previous_token_hash),
        ("sessionPrincipal", &session.principal),
        ("sessionKeyScope", &session.key_scope),
    ] {
        if !value.is_empty() {
            item.insert(name.into(), s(value));
        }
    }
}

/// The item of `record`, expiring at `ttl` (epoch seconds): what `put_connection` and `take_over`
/// write.
pub(super) fn connection_item(
    record: &ConnectionRecord,
    ttl: i64,
) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("connectionId".to_string(), s(&record.connection_id)),
        ("connectedAt".to_string(), n(record.connected_at)),
        ("sourceIp".to_string(), s(&record.source_ip)),
        ("ttl".to_string(), n(ttl)),
    ]);
    if let Some(ua) = &record.user_agent {
        item.insert("userAgent".into(), s(ua));
    }
    // JSON text rather than a DynamoDB map: claims round-trip exactly (numbers, nulls, nested
    // arrays), and no operation filters on them.
    if let Some(authorizer) = &record.authorizer {
        item.insert(
            "authorizer".into(),
            s(&serde_json::Value::Object(authorizer.clone()).to_string()),
        );
    }
    // Empty strings are left out: DynamoDB refuses an empty index key (and reads them back as
    // empty all the same).
    for (name, value) in [
        ("ownerHost", &record.owner_host),
        ("ownerIncarnation", &record.owner_incarnation),
        ("ownerEndpoint", &record.owner_endpoint),
    ] {
        if !value.is_empty() {
            item.insert(name.into(), s(value));
        }
    }
    if let Some(session) = &record.session {
        insert_session(&mut item, session);
    }
    item
}

/// Sort key of idempotency key `key` in the sessions table.
pub(super) fn key_item(key: &str) -> AttributeValue {
    s(&format!("k#{key}"))
}

/// Sort key, in the sessions table, of what is kept of an ended session (beside its frames,
/// `m#…`, and keys, `k#…`).
pub(super) const ENDED_ITEM: &str = "ended";

/// Sort key of frame `seq` in the sessions table: zero-padded to the 20 digits of `u64::MAX`, so
/// that the keys sort as the numbers do.
pub(super) fn frame_item(seq: u64) -> String {
    format!("m#{seq:020}")
}

/// Epoch seconds for a `ttl` attribute from epoch milliseconds, rounded up: an item never expires
/// before the time it was given.
pub(super) fn ttl_from_ms(ms: i64) -> i64 {
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0)
}

pub(super) fn host_from_item(item: &HashMap<String, AttributeValue>) -> Option<HostRecord> {
    Some(HostRecord {
        host_id: get_s(item, "hostId")?,
        incarnation: get_s(item, "incarnation").unwrap_or_default(),
        endpoint: get_s(item, "endpoint").unwrap_or_default(),
        heartbeat_at: get_n(item, "heartbeatAt").unwrap_or_default(),
        reaping: item.contains_key("reapingSince"),
    })
}

/// The shard of a group that a connection's membership lives in: 64-bit FNV-1a of the connection
/// ID, modulo the shard count. Fixed by this definition (not the standard library's hasher, which
/// may change between releases), so every host and every version picks the same shard.
pub(super) fn group_shard(connection_id: &str, shards: u32) -> u32 {
    let hash = connection_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    (hash % u64::from(shards.max(1))) as u32
}

/// The partition key of shard `shard` of `group`: `{group}#{shard}`.
pub(super) fn group_key(group: &str, shard: u32) -> AttributeValue {
    s(&format!("{group}#{shard}"))
}

/// The group named by a partition key of the groups table: the key without its `#{shard}`
/// suffix. A key without one (written before groups were sharded) is the group's name itself.
pub(super) fn group_name(key: &str) -> &str {
    match key.rsplit_once('#') {
        Some((name, shard)) if !shard.is_empty() && shard.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => key,
    }
}

/// The member an item of the groups table records.
pub(super) fn member_from_item(item: &HashMap<String, AttributeValue>) -> Option<Member> {
    Some(Member {
        connection_id: get_s(item, "connectionId")?,
        principal: get_s(item, "principal").unwrap_or_default(),
        joined_at: get_n(item, "joinedAt").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_fixed_and_spread() {
        // The definition is part of the table's format: a change would strand every membership.
        assert_eq!(group_shard("", 8), (0xcbf2_9ce4_8422_2325_u64 % 8) as u32);
        assert_eq!(group_shard("abc", 1), 0);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[group_shard(&format!("Z{i}a1bCdE="), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn group_names_come_back_from_keys() {
        assert_eq!(group_name("room#3"), "room");
        assert_eq!(group_name("a#b#12"), "a#b");
        assert_eq!(group_name("legacy"), "legacy");
        assert_eq!(group_name("ends#"), "ends#");
        assert_eq!(group_name("tag#x"), "tag#x");
    }
}
