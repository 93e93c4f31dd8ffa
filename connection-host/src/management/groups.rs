//! The groups extension (off by default): server-side fan-out so a broadcast is one call, not one
//! billed PostToConnection per recipient. Membership ends with the connection.

use super::{ManagementError, check_id, read_body};
use crate::registry::Outbound;
use crate::server::Host;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Members listed per page when the caller gives no `limit`.
const DEFAULT_PAGE: usize = 100;
/// Most members listed per page.
const MAX_PAGE: usize = 1000;

fn query_param<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
}

/// `PUT /{stage}/@connections/{id}/groups/{group}`.
pub(super) async fn join(host: &Host, id: &str, group: &str) -> Result<Response, ManagementError> {
    check_id(id)?;
    if group.is_empty() {
        return Err(ManagementError::BadRequest("empty group name".into()));
    }
    host.registry.get(id).ok_or(ManagementError::Gone)?;
    host.store
        .add_to_group(group, id)
        .await
        .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
    // The connection may have closed while the membership was written; its record deletion may
    // already have run, so undo the membership to keep "membership ends with the connection".
    if host.registry.get(id).is_none() {
        let _ = host.store.remove_from_group(group, id).await;
        return Err(ManagementError::Gone);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /{stage}/@connections/{id}/groups/{group}`.
pub(super) async fn leave(host: &Host, id: &str, group: &str) -> Result<Response, ManagementError> {
    check_id(id)?;
    host.store
        .remove_from_group(group, id)
        .await
        .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
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
    let message = Outbound::data(data);
    let limit = host.config.limits.outbound_queue_bytes;
    let (mut delivered, mut failed) = (0usize, 0usize);
    let mut token: Option<String> = None;
    loop {
        let page = host
            .store
            .group_members(group, token.as_deref(), MAX_PAGE)
            .await
            .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
        for id in &page.connection_ids {
            if exclude.as_deref() == Some(id.as_str()) {
                continue;
            }
            match host.registry.get(id) {
                Some(handle) if handle.post(message.clone(), limit).is_ok() => delivered += 1,
                _ => failed += 1,
            }
        }
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
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
        .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
    let mut out = serde_json::json!({ "connectionIds": page.connection_ids });
    if let Some(t) = page.next_token {
        out["nextToken"] = t.into();
    }
    Ok(axum::Json(out).into_response())
}
