//! The groups extension (off by default): server-side fan-out so a broadcast is one call, not one
//! billed PostToConnection per recipient. Membership ends with the connection.
//!
//! In a cluster, a broadcast delivers to this host's members directly and makes one call per
//! other host per page of members (`POST /{stage}/@internal/deliver`), so each member gets the
//! message exactly once whichever host received the broadcast.

use super::presence::{self, Action};
use super::{Call, Elsewhere, ManagementError, check_id, elsewhere, read_body};
use crate::cluster::{Cluster, Owner};
use crate::host::Host;
use crate::registry::Outbound;
use crate::store::{Member, StoreError};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;

/// Members listed per page when the caller gives no `limit`.
const DEFAULT_PAGE: usize = 100;
/// Most members listed per page.
const MAX_PAGE: usize = 1000;
/// Other hosts a broadcast calls at once.
const REMOTE_CONCURRENCY: usize = 8;

pub(super) fn query_param<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
}

/// A store failure as the caller sees it: its own bad page token is a 400, anything else a 503.
fn store_error(e: StoreError) -> ManagementError {
    match e {
        StoreError::InvalidToken(reason) => {
            ManagementError::BadRequest(format!("invalid nextToken: {reason}"))
        }
        e => ManagementError::Unavailable(e.to_string()),
    }
}

/// `PUT /{stage}/@connections/{id}/groups/{group}`.
pub(super) async fn join(
    host: &Arc<Host>,
    call: &Call,
    id: &str,
    group: &str,
) -> Result<Response, ManagementError> {
    check_id(id)?;
    if group.is_empty() {
        return Err(ManagementError::BadRequest("empty group name".into()));
    }
    // The owner writes the membership: only it can tell whether the connection is still open,
    // and it knows the connection's principal.
    let handle = match host.registry.get(id) {
        Some(handle) => handle,
        None => match elsewhere(host, call, id, Bytes::new()).await? {
            Elsewhere::Answered(response) => return Ok(response),
            // Taken in here: this host now writes its memberships.
            Elsewhere::Here(handle) => handle,
        },
    };
    let member = Member {
        connection_id: id.to_string(),
        principal: presence::principal(&handle.context).to_string(),
        joined_at: crate::ids::now_ms(),
    };
    let joined = host
        .store
        .add_to_group(group, &member)
        .await
        .map_err(store_error)?;
    // The connection may have closed while the membership was written; its record deletion may
    // already have run, so undo the membership to keep "membership ends with the connection".
    if host.registry.get(id).is_none() {
        let _ = host.store.remove_from_group(group, id).await;
        return Err(ManagementError::Gone);
    }
    if joined {
        let at = member.joined_at;
        presence::announce(host, group, Action::Join, &member, at, &handle.context).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /{stage}/@connections/{id}/groups/{group}`.
pub(super) async fn leave(host: &Host, id: &str, group: &str) -> Result<Response, ManagementError> {
    check_id(id)?;
    let ended = host
        .store
        .remove_from_group(group, id)
        .await
        .map_err(store_error)?;
    if let Some(member) = ended {
        presence::announce_leave(host, group, &member).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /{stage}/@groups/{group}[?exclude={connectionId}]`: sends the body to every member.
pub(super) async fn broadcast(
    host: &Host,
    group: &str,
    query: &str,
    body: Body,
) -> Result<Response, ManagementError> {
    let data = read_body(body, host.config.limits.post_size).await?;
    let exclude = query_param(query, "exclude");
    // Serialized once: every member's queue holds a reference to the same buffer.
    let message = Outbound::data(data.clone());
    let limit = host.config.limits.outbound_queue_bytes;
    let (mut delivered, mut failed) = (0usize, 0usize);
    let mut token: Option<String> = None;
    loop {
        let page = host
            .store
            .group_members(group, token.as_deref(), MAX_PAGE)
            .await
            .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
        let mut remote: HashMap<Owner, Vec<String>> = HashMap::new();
        let mut unknown = Vec::new();
        for id in page.members.into_iter().map(|m| m.connection_id) {
            if exclude.as_deref() == Some(id.as_str()) {
                continue;
            }
            match (host.registry.get(&id), &host.cluster) {
                (Some(handle), _) if handle.post(message.clone(), limit).is_ok() => delivered += 1,
                (None, Some(cluster)) => match cluster.cached_owner(&id) {
                    Some(owner) => remote.entry(owner).or_default().push(id),
                    None => unknown.push(id),
                },
                _ => failed += 1,
            }
        }
        if let Some(cluster) = &host.cluster {
            failed += owners_of(host, cluster, unknown, &mut remote).await?;
            let (d, f) = deliver_remote(host, cluster, remote, &data).await?;
            delivered += d;
            failed += f;
        }
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    Ok(axum::Json(serde_json::json!({ "delivered": delivered, "failed": failed })).into_response())
}

/// Looks up the owners of `ids` in one batch read and sorts them into `remote`; returns how many
/// have no live-looking owner (no record, or a record of this host that is not in its registry).
async fn owners_of(
    host: &Host,
    cluster: &Cluster,
    ids: Vec<String>,
    remote: &mut HashMap<Owner, Vec<String>>,
) -> Result<usize, ManagementError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let records = host
        .store
        .get_connections(&ids)
        .await
        .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
    let mut failed = ids.len() - records.len().min(ids.len());
    for record in records {
        let owner = Owner {
            host_id: record.owner_host,
            incarnation: record.owner_incarnation,
            endpoint: record.owner_endpoint,
        };
        if owner.host_id == host.identity.host_id || owner.endpoint.is_empty() {
            failed += 1;
            continue;
        }
        cluster.remember(&record.connection_id, &owner);
        remote.entry(owner).or_default().push(record.connection_id);
    }
    Ok(failed)
}

/// One delivery call per live owner, a few at a time; members of dead owners count as failed.
async fn deliver_remote(
    host: &Host,
    cluster: &Cluster,
    remote: HashMap<Owner, Vec<String>>,
    data: &Bytes,
) -> Result<(usize, usize), ManagementError> {
    let (mut delivered, mut failed) = (0, 0);
    let mut live = Vec::with_capacity(remote.len());
    for (owner, ids) in remote {
        let owner_live = cluster
            .is_live(host.store.as_ref(), &owner)
            .await
            .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
        if owner_live {
            live.push((owner, ids));
        } else {
            failed += ids.len();
        }
    }
    let stage = host.config.api.stage.as_str();
    let mut calls = futures_util::stream::iter(live)
        .map(|(owner, ids)| async move { cluster.deliver(&owner, stage, &ids, data).await })
        .buffer_unordered(REMOTE_CONCURRENCY);
    while let Some((d, f)) = calls.next().await {
        delivered += d;
        failed += f;
    }
    Ok((delivered, failed))
}

/// The largest delivery batch accepted: base64 data of at most `limits.post_size` bytes, plus a
/// page of connection IDs. No host-to-host call carries more.
pub(super) fn delivery_limit(host: &Host) -> usize {
    host.config.limits.post_size * 2 + 64 * 1024
}

/// `POST /{stage}/@internal/deliver` (host-to-host, its signature checked by the caller): delivers one
/// broadcast's data to the listed connections of this host, as another host's broadcast asks.
pub(super) async fn deliver(host: &Host, body: Body) -> Result<Response, ManagementError> {
    #[derive(serde::Deserialize)]
    struct Batch {
        #[serde(rename = "connectionIds")]
        connection_ids: Vec<String>,
        data: String,
    }
    let body = read_body(body, delivery_limit(host)).await?;
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| ManagementError::BadRequest(format!("invalid delivery batch: {e}")))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(&batch.data)
        .map_err(|e| ManagementError::BadRequest(format!("invalid delivery data: {e}")))?;
    let message = Outbound::data(data.into());
    let limit = host.config.limits.outbound_queue_bytes;
    let delivered = batch
        .connection_ids
        .iter()
        .filter(|id| {
            host.registry
                .get(id)
                .is_some_and(|h| h.post(message.clone(), limit).is_ok())
        })
        .count();
    let failed = batch.connection_ids.len() - delivered;
    Ok(axum::Json(serde_json::json!({ "delivered": delivered, "failed": failed })).into_response())
}

/// `GET /{stage}/@groups/{group}[?limit=N&nextToken=T]`: one page of members.
pub(super) async fn members(
    host: &Host,
    group: &str,
    query: &str,
) -> Result<Response, ManagementError> {
    let limit = match query_param(query, "limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ManagementError::BadRequest(format!("limit must be 1 to {MAX_PAGE}")))?,
        None => DEFAULT_PAGE,
    };
    let token = query_param(query, "nextToken");
    let page = host
        .store
        .group_members(group, token.as_deref(), limit)
        .await
        .map_err(store_error)?;
    let connection_ids: Vec<&str> = page
        .members
        .iter()
        .map(|m| m.connection_id.as_str())
        .collect();
    let members: Vec<serde_json::Value> = page
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "connectionId": m.connection_id,
                "principal": m.principal,
                "joinedAt": m.joined_at,
            })
        })
        .collect();
    let mut out = serde_json::json!({ "members": members, "connectionIds": connection_ids });
    if let Some(t) = page.next_token {
        out["nextToken"] = t.into();
    }
    Ok(axum::Json(out).into_response())
}

/// `GET /{stage}/@groups/{group}/count`: how many members, without listing them.
pub(super) async fn count(host: &Host, group: &str) -> Result<Response, ManagementError> {
    let count = host.store.group_count(group).await.map_err(store_error)?;
    Ok(axum::Json(serde_json::json!({ "count": count })).into_response())
}
