//! Records to and from DynamoDB items.

use super::schema::HOST_KEY_PREFIX;
use crate::store::{ConnectionRecord, HostRecord};
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
        session: None,
    })
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
