//! Presence (`[extensions.groups] presence`): a join or leave told to the group, either as a text
//! frame to every other member (sent with the broadcast, so members on other hosts get it through
//! the same per-host delivery) or as a MESSAGE event to `presence_route`.

use super::groups;
use crate::config::Presence;
use crate::events::{ConnectionContext, Event, EventKind};
use crate::host::Host;
use crate::ids;
use crate::store::Member;
use axum::body::Body;
use std::pin::Pin;
use std::sync::Arc;

/// What happened to a membership.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Action {
    /// The connection joined the group.
    Join,
    /// The connection left it, or ended.
    Leave,
}

/// The notice, with its keys in the documented order.
#[derive(serde::Serialize)]
struct Notice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    group: &'a str,
    action: Action,
    #[serde(rename = "connectionId")]
    connection_id: &'a str,
    principal: &'a str,
    at: i64,
}

/// Tells `group` that `member` joined or left at `at`, as `presence` says; `context` is the
/// member's (the route's event carries it). Best effort: a failure is logged, the join or leave
/// stands.
pub(super) async fn announce(
    host: &Arc<Host>,
    group: &str,
    action: Action,
    member: &Member,
    at: i64,
    context: &Arc<ConnectionContext>,
) {
    let settings = &host.config.extensions.groups;
    if settings.presence == Presence::Off {
        return;
    }
    let notice = serde_json::to_string(&Notice {
        kind: "presence",
        group,
        action,
        connection_id: &member.connection_id,
        principal: &member.principal,
        at,
    })
    .expect("a notice serializes");
    match settings.presence {
        Presence::Off => {}
        Presence::Frames => {
            // The joining member is told nothing about itself; a leaving one is no member.
            let query = format!(
                "exclude={}",
                percent_encoding::utf8_percent_encode(
                    &member.connection_id,
                    percent_encoding::NON_ALPHANUMERIC
                )
            );
            if let Err(e) = groups::broadcast(host, group, &query, Body::from(notice)).await {
                tracing::warn!(%group, error = %e, "presence notice not sent to the group");
            }
        }
        Presence::Route => {
            let Some(route) = host
                .routes
                .get(&settings.presence_route)
                .or_else(|| host.routes.get("$default"))
            else {
                tracing::debug!(route = %settings.presence_route, "no presence route and no $default");
                return;
            };
            let event = Event::new(
                route.key.clone(),
                ids::new_id(),
                context.event_trace_id(),
                context.clone(),
                EventKind::Message {
                    message_id: ids::new_id(),
                    body: notice,
                    is_base64_encoded: false,
                    idempotency_key: None,
                },
            );
            route.metrics.message_count.increment(1);
            // The answer goes nowhere: no client sent the event.
            if let Err(e) = route.invoke(&event).await {
                tracing::warn!(route = %route.key, error = %e, "presence event failed");
            }
        }
    }
}

/// Tells `group` that `member` left now (an explicit leave, possibly of a connection held by
/// another host or already gone).
pub(super) async fn announce_leave(host: &Arc<Host>, group: &str, member: &Member) {
    let presence = host.config.extensions.groups.presence;
    if presence == Presence::Off {
        return;
    }
    let context = if presence == Presence::Route {
        context_of(host, &member.connection_id).await
    } else {
        Arc::new(bare_context(host, &member.connection_id))
    };
    announce(host, group, Action::Leave, member, ids::now_ms(), &context).await;
}

/// The context of connection `id` for a presence event: this host's, or the one its record
/// describes, or (the connection is gone) its ID alone.
async fn context_of(host: &Host, id: &str) -> Arc<ConnectionContext> {
    if let Some(handle) = host.registry.get(id) {
        return handle.context.clone();
    }
    let mut context = bare_context(host, id);
    if let Ok(Some(record)) = host.store.get_connection(id).await {
        context.connected_at = record.connected_at;
        context.source_ip = record.source_ip;
        context.user_agent = record.user_agent;
        context.authorizer = record.authorizer;
    }
    Arc::new(context)
}

fn bare_context(host: &Host, id: &str) -> ConnectionContext {
    let api = &host.config.api;
    ConnectionContext {
        connection_id: id.to_string(),
        connected_at: 0,
        source_ip: String::new(),
        user_agent: None,
        domain_name: api.domain_name.clone(),
        host: api.domain_name.clone(),
        stage: api.stage.as_str().into(),
        api_id: api.api_id.as_str().into(),
        authorizer: None,
        trace: None,
    }
}

/// The host's [`LeaveHook`](crate::host::LeaveHook): a connection that ended has left `groups`.
pub(crate) fn announce_departure(
    host: Arc<Host>,
    context: Arc<ConnectionContext>,
    groups: Vec<String>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let member = Member {
            connection_id: context.connection_id.clone(),
            principal: context.principal_id().to_string(),
            joined_at: 0,
        };
        let at = ids::now_ms();
        for group in groups {
            announce(&host, &group, Action::Leave, &member, at, &context).await;
        }
    })
}
