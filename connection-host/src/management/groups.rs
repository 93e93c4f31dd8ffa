//! The groups extension (off by default): server-side fan-out so a broadcast is one call, not one
//! billed PostToConnection per recipient. Membership ends with the connection.
//!
//! In a cluster, a broadcast delivers to this host's members directly and makes one call per
//! other host per page of members (`POST /{stage}/@internal/deliver`), so each member gets the
//! message exactly once whichever host received the broadcast.

use super::presence::{self, Action};
use super::{Call, Elsewhere, ManagementError, check_id, elsewhere, read_body};
use crate::cluster::{Cluster, Delivered, DeliveryBatch, Owner};
use crate::host::Host;
use crate::registry::{ConnectionHandle, Outbound, PostError};
use crate::store::{Member, MembersPage, StoreError};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

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
pub(super) async fn leave(
    host: &Arc<Host>,
    id: &str,
    group: &str,
) -> Result<Response, ManagementError> {
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

/// `POST /{stage}/@groups/{group}[?exclude={connectionId}][&volatile=true]`: sends the body to
/// every member.
///
/// Membership is read a page at a time, the next page while the current one is delivered. This
/// host's members get the one shared buffer in their queues at once; the members of each other
/// host get one call per page, up to `remote_concurrency` calls at a time over the whole
/// broadcast. A host that does not answer within `remote_timeout` is not called again for this
/// broadcast, so a dead host costs at most that long.
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
    let settings = &host.config.extensions.groups;
    // Serialized once: every member's queue holds a reference to the same buffer.
    let message = Outbound::data(data.clone());
    let encoded: Arc<str> = match &host.cluster {
        Some(_) => base64::engine::general_purpose::STANDARD
            .encode(&data)
            .into(),
        None => "".into(),
    };
    let mut remote = Remote {
        calls: tokio::task::JoinSet::new(),
        permits: Arc::new(tokio::sync::Semaphore::new(settings.remote_concurrency)),
        unreachable: Arc::new(Mutex::new(HashSet::new())),
        encoded,
        volatile,
    };
    let mut counts = Delivered::default();
    let mut page = fetch_page(host, group, None).await?;
    loop {
        let next = page.next_token.take();
        // Asked for first, so the store works on it while this page is delivered; not a task of
        // its own, which would wait behind the members' tasks this page wakes.
        let next = async {
            match next {
                Some(token) => fetch_page(host, group, Some(token)).await.map(Some),
                None => Ok(None),
            }
        };
        let ids = page
            .members
            .into_iter()
            .map(|m| m.connection_id)
            .filter(|id| exclude.as_deref() != Some(id.as_str()));
        let delivering = deliver_page(host, ids, &message, &mut remote);
        let (next, done) = futures_util::future::join(next, delivering).await;
        counts.add(done?);
        match next? {
            Some(next) => page = next,
            None => break,
        }
    }
    while let Some(done) = remote.calls.join_next().await {
        counts.add(done.map_err(|e| ManagementError::Unavailable(e.to_string()))?);
    }
    host.fanout.spend(group, counts.delivered);
    Ok(axum::Json(counts.to_json()).into_response())
}

/// Reads one page of `group`'s members.
async fn fetch_page(
    host: &Host,
    group: &str,
    token: Option<String>,
) -> Result<MembersPage, ManagementError> {
    let size = host.config.extensions.groups.broadcast_page_size;
    host.store
        .group_members(group, token.as_deref(), size)
        .await
        .map_err(|e| ManagementError::Unavailable(e.to_string()))
}

/// A broadcast's calls to other hosts.
struct Remote {
    /// The calls under way, each answering its counts.
    calls: tokio::task::JoinSet<Delivered>,
    /// `remote_concurrency` places, one per call under way.
    permits: Arc<tokio::sync::Semaphore>,
    /// Hosts that failed a call of this broadcast: not called again.
    unreachable: Arc<Mutex<HashSet<Owner>>>,
    /// The message, base64, as the calls carry it.
    encoded: Arc<str>,
    volatile: bool,
}

/// Delivers to one page of members: this host's at once, the others' through one call per
/// owner (started here, answered into `remote.calls`).
async fn deliver_page(
    host: &Arc<Host>,
    ids: impl Iterator<Item = String>,
    message: &Outbound,
    remote: &mut Remote,
) -> Result<Delivered, ManagementError> {
    let limit = host.config.limits.outbound_queue_bytes;
    let mut counts = Delivered::default();
    let mut elsewhere: HashMap<Owner, Vec<String>> = HashMap::new();
    let mut unknown = Vec::new();
    for id in ids {
        match (host.registry.get(&id), &host.cluster) {
            (Some(handle), _) => counts.add(post_member(&handle, message, limit, remote.volatile)),
            (None, Some(cluster)) => match cluster.cached_owner(&id) {
                Some(owner) => elsewhere.entry(owner).or_default().push(id),
                None => unknown.push(id),
            },
            (None, None) => counts.gone += 1,
        }
    }
    let Some(cluster) = &host.cluster else {
        return Ok(counts);
    };
    counts.gone += owners_of(host, cluster, unknown, &mut elsewhere).await?;
    for (owner, ids) in elsewhere {
        let skip = remote
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&owner);
        let live = !skip
            && cluster
                .is_live(host.store.as_ref(), &owner)
                .await
                .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
        if !live {
            counts.gone += ids.len();
            continue;
        }
        let permit = remote
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (host, unreachable) = (host.clone(), remote.unreachable.clone());
        let (encoded, volatile) = (remote.encoded.clone(), remote.volatile);
        remote.calls.spawn(async move {
            let _permit = permit;
            let cluster = host.cluster.as_ref().expect("clustered: owners were found");
            // A call that was waiting for its place while another to the same host failed.
            if unreachable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&owner)
            {
                return Delivered {
                    gone: ids.len(),
                    ..Delivered::default()
                };
            }
            let batch = DeliveryBatch {
                connection_ids: &ids,
                data: &encoded,
                volatile,
            };
            let settings = &host.config.extensions.groups;
            let stage = host.config.api.stage.as_str();
            match cluster
                .deliver(&owner, stage, &batch, settings.remote_timeout)
                .await
            {
                Some(counts) => counts,
                None => {
                    unreachable
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(owner);
                    Delivered {
                        gone: ids.len(),
                        ..Delivered::default()
                    }
                }
            }
        });
    }
    Ok(counts)
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
    let mut gone = ids.len() - records.len().min(ids.len());
    for record in records {
        let owner = Owner {
            host_id: record.owner_host,
            incarnation: record.owner_incarnation,
            endpoint: record.owner_endpoint,
        };
        if owner.host_id == host.identity.host_id || owner.endpoint.is_empty() {
            gone += 1;
            continue;
        }
        cluster.remember(&record.connection_id, &owner);
        remote.entry(owner).or_default().push(record.connection_id);
    }
    Ok(gone)
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
        // A host of an earlier release sends no flag: its broadcasts were not volatile.
        #[serde(default)]
        volatile: bool,
    }
    let body = read_body(body, delivery_limit(host)).await?;
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| ManagementError::BadRequest(format!("invalid delivery batch: {e}")))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(&batch.data)
        .map_err(|e| ManagementError::BadRequest(format!("invalid delivery data: {e}")))?;
    let message = Outbound::data(data.into());
    let limit = host.config.limits.outbound_queue_bytes;
    let mut counts = Delivered::default();
    for id in &batch.connection_ids {
        match host.registry.get(id) {
            Some(handle) => counts.add(post_member(&handle, &message, limit, batch.volatile)),
            None => counts.gone += 1,
        }
    }
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
