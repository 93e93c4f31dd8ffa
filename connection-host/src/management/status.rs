//! The live status page on the management listener (`GET /status`; METRICS.md, "Status page").
//!
//! The page, its script and its style sheet are built into the binary and hold no data, so they
//! are served like `/health`. The figures come from `GET /status/data`, which is protected as the
//! `@connections` API is: SigV4 when the host requires it (the page signs its requests in the
//! browser with an access key the operator enters; SECURITY.md). The data is the host's own
//! metrics read back (totals only: the page turns them into rates) and the cluster's liveness
//! view, so a page left open costs one render of the metrics per second and no store call.

use super::authenticate;
use crate::host::Host;
use crate::metrics::Exposition;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use serde::Serialize;
use std::sync::Arc;

const PAGE: &str = include_str!("status/index.html");
const SCRIPT: &str = include_str!("status/status.js");
const STYLE: &str = include_str!("status/status.css");

/// Only the host's own script, style sheet and data: nothing is loaded from elsewhere, and no
/// other site may frame the page.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /status`: the page, with the region the host checks signatures for.
pub(super) async fn page(State(host): State<Arc<Host>>) -> Response {
    let auth = if host.management_auth.is_some() {
        "sigv4"
    } else {
        "none"
    };
    let html = PAGE
        .replace("{{region}}", &escape(&host.config.api.region))
        .replace("{{auth}}", auth);
    asset("text/html; charset=utf-8", html)
}

/// `GET /status/status.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /status/status.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A value for an HTML attribute.
fn escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `GET /status/data`: [`StatusData`] as JSON, signed as a management call when the host
/// requires signatures.
pub(super) async fn data(State(host): State<Arc<Host>>, request: Request) -> Response {
    if let Err(refused) = authenticate(&host, request, false).await {
        return refused;
    }
    let mut response = axum::Json(StatusData::of(&host)).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What the status page shows, as of `at`. Counters are totals since the host started; the page
/// computes rates from two readings.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusData {
    /// Epoch milliseconds of the reading (the host's clock).
    at: i64,
    host: HostInfo,
    /// Open WebSocket connections.
    connections: u64,
    /// Bytes waiting in every connection's outbound queue.
    outbound_queue_bytes: u64,
    totals: Totals,
    integration_latency: Latency,
    /// `None` when the host is not in a cluster.
    cluster: Option<ClusterView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HostInfo {
    host_id: String,
    api_id: String,
    stage: String,
    version: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Totals {
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Handshakes answered with 101.
    connects: u64,
    /// Handshakes refused for any reason.
    refused_connects: u64,
    client_errors: u64,
    integration_errors: u64,
    execution_errors: u64,
    throttles: u64,
    slow_consumer_closes: u64,
}

/// `IntegrationLatency` over every route, in milliseconds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Latency {
    count: u64,
    sum_ms: f64,
    /// Cumulative counts by upper bound, ascending; the last bound is `null` (+Inf).
    buckets: Vec<Bucket>,
}

#[derive(Debug, Serialize)]
struct Bucket {
    le: Option<f64>,
    count: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterView {
    host_timeout_ms: i64,
    heartbeat_interval_ms: u128,
    hosts: Vec<ClusterHost>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterHost {
    host_id: String,
    endpoint: String,
    /// Epoch milliseconds of its last heartbeat (its own clock).
    heartbeat_at: i64,
    /// `live`, `lapsed` (no heartbeat within `host_timeout`) or `reaping` (declared dead).
    state: &'static str,
    /// The host that answered.
    this_host: bool,
}

impl StatusData {
    /// The current reading of `host`.
    fn of(host: &Host) -> Self {
        let e = Exposition::parse(&host.metrics_text());
        let total = |name: &str, labels: &[(&str, &str)]| e.sum(name, labels) as u64;
        let handshakes = total("connection_host_handshakes", &[]);
        let connects = total("connection_host_handshakes", &[("outcome", "accepted")]);
        let at = crate::ids::now_ms();
        StatusData {
            at,
            host: HostInfo {
                host_id: host.identity.host_id.clone(),
                api_id: host.config.api.api_id.clone(),
                stage: host.config.api.stage.clone(),
                version: env!("CARGO_PKG_VERSION"),
            },
            connections: total("connection_host_connections", &[]),
            outbound_queue_bytes: total("connection_host_outbound_queue_bytes", &[]),
            totals: Totals {
                messages_in: total("connection_host_messages", &[("direction", "in")]),
                messages_out: total("connection_host_messages", &[("direction", "out")]),
                bytes_in: total("connection_host_message_bytes", &[("direction", "in")]),
                bytes_out: total("connection_host_message_bytes", &[("direction", "out")]),
                connects,
                refused_connects: handshakes.saturating_sub(connects),
                client_errors: total("ClientError", &[]),
                integration_errors: total("IntegrationError", &[]),
                execution_errors: total("ExecutionError", &[]),
                throttles: total("connection_host_throttles", &[]),
                slow_consumer_closes: total("connection_host_slow_consumer_closes", &[]),
            },
            integration_latency: Latency {
                count: total("IntegrationLatency_count", &[]),
                sum_ms: e.sum("IntegrationLatency_sum", &[]),
                buckets: buckets(&e, "IntegrationLatency_bucket"),
            },
            cluster: host.cluster.as_ref().map(|cluster| {
                let timeout = cluster.host_timeout_ms();
                ClusterView {
                    host_timeout_ms: timeout,
                    heartbeat_interval_ms: host.config.cluster.heartbeat_interval.as_millis(),
                    hosts: cluster
                        .hosts()
                        .into_iter()
                        .map(|h| ClusterHost {
                            state: if h.reaping {
                                "reaping"
                            } else if at - h.heartbeat_at > timeout {
                                "lapsed"
                            } else {
                                "live"
                            },
                            this_host: h.host_id == host.identity.host_id,
                            host_id: h.host_id,
                            endpoint: h.endpoint,
                            heartbeat_at: h.heartbeat_at,
                        })
                        .collect(),
                }
            }),
        }
    }
}

/// The buckets of histogram `name`, summed over every other label.
fn buckets(e: &Exposition, name: &str) -> Vec<Bucket> {
    let mut bounds: Vec<f64> = e
        .matching(name, &[])
        .filter_map(|s| s.labels.iter().find(|(k, _)| k == "le"))
        .filter_map(|(_, le)| le.parse::<f64>().ok())
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds
        .into_iter()
        .map(|le| {
            let count = e
                .matching(name, &[])
                .filter(|s| {
                    s.labels
                        .iter()
                        .any(|(k, v)| k == "le" && v.parse::<f64>().ok() == Some(le))
                })
                .map(|s| s.value)
                .sum::<f64>() as u64;
            Bucket {
                le: le.is_finite().then_some(le),
                count,
            }
        })
        .collect()
}
