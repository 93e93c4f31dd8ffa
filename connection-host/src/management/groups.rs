//! The groups extension (off by default): server-side fan-out so a broadcast is one call, not one
//! billed PostToConnection per recipient. Membership ends with the connection.
//!
//! The store holds every membership (for listing); each host also keeps an index of its own
//! connections' memberships ([`crate::registry::Registry::join`]), written by the owner on
//! every join and leave. A broadcast reads no membership from the store: it delivers to this
//! host's members from the index and makes one call per other live host
//! (`POST /{stage}/@internal/deliver`), which delivers to its own.

use super::presence::{self, Action};
use super::{Call, Elsewhere, ManagementError, check_id, elsewhere, read_body};
use crate::cluster::{Delivered, DeliveryBatch};
use crate::host::Host;
use crate::registry::{ConnectionHandle, Outbound, PostError};
use crate::store::{Member, StoreError};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;

/// Members listed per page when the caller gives no `limit`.
const DEFAULT_PAGE: usize = 100;
/// Most members listed per page.
const MAX_PAGE: usize = 1000;

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
    // it knows the connection's principal, and it keeps the index its broadcasts read.
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
        principal: handle.context.principal_id().to_string(),
        joined_at: crate::ids::now_ms(),
    };
    let joined = host
        .store
        .add_to_group(group, &member)
        .await
        .map_err(store_error)?;
    // The connection may have closed while the membership was written; its record deletion may
    // already have run, so undo the membership to keep "membership ends with the connection".
    if !host.registry.join(group, &handle) {
        let _ = host.store.remove_from_group(group, id).await;
        return Err(ManagementError::Gone);
    }
    if joined {
        let at = member.joined_at;
        presence::announce(host, group, Action::Join, &member, at, &handle.context).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /{stage}/@connections/{id}/groups/{group}`: served by the connection's owner, which
/// keeps its index; a connection that no longer exists anywhere has its membership removed from
/// the store all the same (idempotent).
pub(super) async fn leave(
    host: &Arc<Host>,
    call: &Call,
    id: &str,
    group: &str,
) -> Result<Response, ManagementError> {
    check_id(id)?;
    let handle = match host.registry.get(id) {
        Some(handle) => Some(handle),
        None => match elsewhere(host, call, id, Bytes::new()).await {
            Ok(Elsewhere::Answered(response)) => return Ok(response),
            Ok(Elsewhere::Here(handle)) => Some(handle),
            // Forwarded here, but no longer here: the caller looks the owner up again.
            Err(ManagementError::Gone) if !call.forwarded => None,
            Err(e) => return Err(e),
        },
    };
    let ended = host
        .store
        .remove_from_group(group, id)
        .await
        .map_err(store_error)?;
    if let Some(handle) = handle {
        host.registry.leave(group, &handle);
    }
    if let Some(member) = ended {
        presence::announce_leave(host, group, &member).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /{stage}/@groups/{group}[?exclude={connectionId}][&volatile=true]`: sends the body to
/// every member.
///
/// No membership is read: this host's members (from its index) get the one shared buffer in their
/// queues at once, and every other live host gets one call, up to `remote_concurrency` at a
/// time, and delivers to its own. A host that does not answer within `remote_timeout` costs at
/// most that long; a dead one (its heartbeat lapsed) is not called.
pub(super) async fn broadcast(
    host: &Arc<Host>,
    group: &str,
    query: &str,
    body: Body,
) -> Result<Response, ManagementError> {
    let data = read_body(body, host.config.limits.post_size).await?;
    let exclude = query_param(query, "exclude");
    let volatile = match query_param(query, "volatile").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ManagementError::BadRequest(format!(
                "volatile must be true or false, not {other:?}"
            )));
        }
    };
    if let Err(wait) = host.fanout.admit(group) {
        return Err(ManagementError::FanoutLimited(wait));
    }
    let mut calls = tokio::task::JoinSet::new();
    if let Some(cluster) = &host.cluster {
        let batch = Arc::new(DeliveryBatch {
            group: group.to_string(),
            data: base64::engine::general_purpose::STANDARD.encode(&data),
            exclude: exclude.as_deref().map(str::to_string),
            volatile,
        });
        let settings = &host.config.extensions.groups;
        let permits = Arc::new(tokio::sync::Semaphore::new(settings.remote_concurrency));
        for peer in cluster.live_peers() {
            let (host, batch, permits) = (host.clone(), batch.clone(), permits.clone());
            calls.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let cluster = host.cluster.as_ref().expect("clustered: peers were listed");
                let settings = &host.config.extensions.groups;
                let stage = host.config.api.stage.as_str();
                cluster
                    .deliver(&peer, stage, &batch, settings.remote_timeout)
                    .await
                    .unwrap_or_default()
            });
        }
    }
    // Delivered here while the other hosts deliver theirs.
    let mut counts = deliver_here(host, group, exclude.as_deref(), data, volatile);
    while let Some(done) = calls.join_next().await {
        counts.add(done.map_err(|e| ManagementError::Unavailable(e.to_string()))?);
    }
    host.fanout.spend(group, counts.delivered);
    Ok(axum::Json(counts.to_json()).into_response())
}

/// Delivers `data` to this host's members of `group` but `exclude`, from its index.
fn deliver_here(
    host: &Host,
    group: &str,
    exclude: Option<&str>,
    data: Bytes,
    volatile: bool,
) -> Delivered {
    // Serialized once: every member's queue holds a reference to the same buffer.
    let message = Outbound::data(data);
    let limit = host.config.limits.outbound_queue_bytes;
    let mut counts = Delivered::default();
    for member in host.registry.members(group) {
        if exclude != Some(member.context.connection_id.as_str()) {
            counts.add(post_member(&member, &message, limit, volatile));
        }
    }
    counts
}

/// Queues `message` for one member of this host. Without `volatile`, a member whose queue is full
/// is disconnected (1008, as a client that stopped reading is) rather than left without a message
/// the others got.
fn post_member(
    handle: &ConnectionHandle,
    message: &Outbound,
    limit: usize,
    volatile: bool,
) -> Delivered {
    let mut counts = Delivered::default();
    match handle.post(message.clone(), limit) {
        Ok(()) => counts.delivered = 1,
        Err(PostError::Full) if volatile => counts.dropped = 1,
        Err(PostError::Full) => {
            handle.close(1008, "Client not reading");
            counts.gone = 1;
        }
        Err(_) => counts.gone = 1,
    }
    counts
}

/// The largest delivery call accepted: base64 data of at most `limits.post_size` bytes, a group
/// name and a connection ID. No host-to-host call carries more.
pub(super) fn delivery_limit(host: &Host) -> usize {
    host.config.limits.post_size * 2 + 64 * 1024
}

/// `POST /{stage}/@internal/deliver` (host-to-host, its signature checked by the caller): delivers
/// another host's broadcast to this host's members of its group.
pub(super) async fn deliver(host: &Host, body: Body) -> Result<Response, ManagementError> {
    let body = read_body(body, delivery_limit(host)).await?;
    let batch: DeliveryBatch = serde_json::from_slice(&body)
        .map_err(|e| ManagementError::BadRequest(format!("invalid delivery batch: {e}")))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(&batch.data)
        .map_err(|e| ManagementError::BadRequest(format!("invalid delivery data: {e}")))?;
    let counts = deliver_here(
        host,
        &batch.group,
        batch.exclude.as_deref(),
        data.into(),
        batch.volatile,
    );
    Ok(axum::Json(counts.to_json()).into_response())
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
    // Serialized from borrowed fields in one pass: a page is up to 1,000 members.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Listed<'a> {
        connection_id: &'a str,
        principal: &'a str,
        joined_at: i64,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Page<'a> {
        members: Vec<Listed<'a>>,
        connection_ids: Vec<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_token: Option<&'a str>,
    }
    Ok(axum::Json(Page {
        members: page
            .members
            .iter()
            .map(|m| Listed {
                connection_id: &m.connection_id,
                principal: &m.principal,
                joined_at: m.joined_at,
            })
            .collect(),
        connection_ids: page
            .members
            .iter()
            .map(|m| m.connection_id.as_str())
            .collect(),
        next_token: page.next_token.as_deref(),
    })
    .into_response())
}

/// `GET /{stage}/@groups/{group}/count`: how many members, without listing them.
pub(super) async fn count(host: &Host, group: &str) -> Result<Response, ManagementError> {
    let count = host.store.group_count(group).await.map_err(store_error)?;
    Ok(axum::Json(serde_json::json!({ "count": count })).into_response())
}
