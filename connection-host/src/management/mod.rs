//! The `@connections` management API, wire-compatible with API Gateway's so the official SDK
//! clients work unchanged, plus `/health`, `/metrics`, the status page (`/status`) and the opt-in
//! groups extension.
//!
//! Paths: `POST|GET|DELETE /{stage}/@connections/{connectionId}`; `@` may arrive as `%40` and the
//! ID percent-encoded (`=` as `%3D`), as the SDKs send it.
//!
//! In a cluster, a call for a connection another host holds is forwarded to that host (see
//! the `cluster` module); host-to-host calls are signed with the cluster secret and are never
//! forwarded again.

mod error;
mod groups;
mod presence;

pub(crate) use presence::announce_departure;
pub mod path;
mod status;

pub use error::ManagementError;

use crate::cluster;
use crate::host::Host;
use crate::ids;
use crate::metrics::Operation;
use crate::registry::{Outbound, PostError};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use path::Resource;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// The management router; without `management` only the public-listener answers remain
/// (426 for a plain GET on the stage, 403 elsewhere).
pub fn router(host: Arc<Host>, management: bool) -> Router {
    let router = if management {
        Router::new()
            .route("/health", axum::routing::get(health))
            .route("/health/ready", axum::routing::get(ready))
            .route("/metrics", axum::routing::get(metrics))
            .route("/status", axum::routing::get(status::page))
            .route("/status/status.js", axum::routing::get(status::script))
            .route("/status/status.css", axum::routing::get(status::style))
            .route("/status/data", axum::routing::get(status::data))
            .fallback(dispatch)
    } else {
        Router::new().fallback(public_only)
    };
    router
        .layer(axum::middleware::map_response(add_request_id))
        .with_state(host)
}

/// Serves HTTP/1.1 on an accepted connection until it closes or the host shuts down.
pub async fn serve_http<S>(host: Arc<Host>, io: S, management: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router(host.clone(), management));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(host.config.server.handshake_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = host.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn add_request_id(mut response: Response) -> Response {
    // A management call has its ID already: the one its span logged.
    if !response.headers().contains_key(REQUEST_ID_HEADER)
        && let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// The header naming a response's request ID, as API Gateway's management API sends it.
const REQUEST_ID_HEADER: &str = "x-amzn-RequestId";

/// `GET /health`: the process is alive (always 200, so a container health check never replaces a
/// host only because it is full), with what a load balancer or an operator needs to see how full it
/// is. `GET /health/ready` answers the same body with 503 while the host takes no new connection.
async fn health(State(host): State<Arc<Host>>) -> Response {
    axum::Json(health_body(&host)).into_response()
}

/// `GET /health/ready`: 200 while the host accepts new connections; 503 when it holds
/// `limits.max_connections` or is shutting down, so a target group's health check takes it out of
/// rotation for new connections (CONFIGURATION.md, "Limits and load balancers").
async fn ready(State(host): State<Arc<Host>>) -> Response {
    let body = health_body(&host);
    let status = if body["accepting"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// The body of `/health` and `/health/ready`. `connections` counts WebSockets; `maxConnections`
/// and `heldConnections` are `limits.max_connections` (0 = unlimited) and the public listener's TCP
/// connections counted against it (WebSockets, handshakes in progress, plain HTTP).
fn health_body(host: &Host) -> serde_json::Value {
    let (max, held) = host.limits.connection_places();
    let (status, accepting) = if host.shutdown.is_cancelled() {
        ("draining", false)
    } else if max > 0 && held >= max {
        ("full", false)
    } else {
        ("ok", true)
    };
    serde_json::json!({
        "status": status,
        "accepting": accepting,
        "connections": host.registry.len(),
        "heldConnections": held,
        "maxConnections": max,
    })
}

/// `GET /metrics`: every series in Prometheus text format (METRICS.md).
async fn metrics(State(host): State<Arc<Host>>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        host.metrics_text(),
    )
        .into_response()
}

/// Serves `request` from `server.static_dir` when it is a `GET` outside the stage's and the
/// APIs' paths; otherwise hands it back.
async fn static_file(host: &Host, request: Request) -> Result<Response, Request> {
    let Some(files) = &host.static_files else {
        return Err(request);
    };
    let path = request.uri().path();
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let reserved = first == host.config.api.stage
        || first == "health"
        || first == "metrics"
        || first == "status"
        || first == "2015-03-31";
    if reserved || !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Err(request);
    }
    match files.clone().try_call(request).await {
        Ok(response) => Ok(response.map(Body::new)),
        Err(e) => {
            tracing::warn!(error = %e, "static file could not be read");
            Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

async fn public_only(State(host): State<Arc<Host>>, request: Request) -> Response {
    let request = match static_file(&host, request).await {
        Ok(response) => return response,
        Err(request) => request,
    };
    let segs = path::segments(request.uri().path());
    let on_stage = path::resource(&host.config.api.stage, &segs) == Resource::Stage;
    if on_stage && request.method() == Method::GET {
        return ManagementError::UpgradeRequired.into_response();
    }
    ManagementError::Forbidden.into_response()
}

/// What a handler needs to know about the call besides its path, to forward it if need be.
pub(crate) struct Call {
    method: Method,
    /// The path and query as received (still percent-encoded), for the owner's URL.
    target: String,
    /// Sent by another host of the cluster (authenticated): served here, never forwarded again.
    forwarded: bool,
    /// A PostToConnection's ID across the cluster: the caller's [`IDEMPOTENCY_KEY`], or one made
    /// by the host that received it, passed on with a forward (`postId` in the signed query), so
    /// that a post kept once is not kept again by whichever host holds the session when it is
    /// sent again (the caller's retry, or the same call after its forward failed).
    post_id: Option<String>,
}

/// The query parameter that carries a forwarded post's ID.
const POST_ID: &str = "postId";

/// The header with which a PostToConnection caller names a post, so that sending it again is
/// kept once (an extension, PROTOCOL.md section 3).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The caller's [`IDEMPOTENCY_KEY`], if it sent one: 1 to 128 printable ASCII characters, as
/// the header's value or as a quoted string (the header's structured form).
fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, ManagementError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let refused = || {
        ManagementError::BadRequest(format!(
            "Invalid Idempotency-Key: it must be 1 to {} printable ASCII characters",
            crate::sessions::envelope::MAX_KEY_LENGTH
        ))
    };
    let value = value.to_str().map_err(|_| refused())?;
    let key = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if crate::sessions::envelope::is_valid_key(key) {
        Ok(Some(key.to_string()))
    } else {
        Err(refused())
    }
}

/// Serves one call in a span carrying its request ID (the `x-amzn-RequestId` it answers with),
/// its trace (the caller's valid `X-Amzn-Trace-Id`, or a new one) and the connection it names, so
/// every log line of the call carries them.
async fn dispatch(State(host): State<Arc<Host>>, request: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let trace_id = request
        .headers()
        .get(crate::integration::TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| crate::ids::is_valid_trace_header(t))
        .map_or_else(
            || crate::ids::trace_id(crate::ids::now_ms()),
            str::to_string,
        );
    let segs = path::segments(request.uri().path());
    let connection_id = match path::resource(&host.config.api.stage, &segs) {
        Resource::Connection(id)
        | Resource::Membership {
            connection_id: id, ..
        } => Some(id),
        _ => None,
    };
    let span = tracing::info_span!(
        "management",
        method = %request.method(),
        connection_id = connection_id,
        request_id = %request_id,
        trace_id = %trace_id,
    );
    let mut operation = None;
    let mut response =
        tracing::Instrument::instrument(serve_call(&host, request, &mut operation), span).await;
    if let Some(operation) = operation {
        let status = response.status().as_u16();
        host.metrics.management_call(operation, status);
        if operation == Operation::PostToConnection && status == 200 {
            host.metrics.posts.message_count.increment(1);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Serves one call of the management listener; sets `operation` once the call is known to be
/// a client's (not another host's) `@connections` call, for [`dispatch`] to count.
async fn serve_call(
    host: &Arc<Host>,
    request: Request,
    operation: &mut Option<Operation>,
) -> Response {
    let request = match static_file(host, request).await {
        Ok(response) => return response,
        Err(request) => request,
    };
    let segs = path::segments(request.uri().path());
    let resource = path::resource(&host.config.api.stage, &segs);
    let method = request.method().clone();
    let query = request.uri().query().unwrap_or_default().to_string();
    let groups = host.config.extensions.groups.enabled;
    // A host-to-host call must carry a valid signature made with the cluster secret; a bad one is
    // refused before anything else, and a host outside any cluster accepts none.
    let forwarded = [
        cluster::FORWARDED_HEADER,
        cluster::DATE_HEADER,
        cluster::SIGNATURE_HEADER,
    ]
    .iter()
    .any(|name| request.headers().contains_key(*name));
    // Counted once, where the client called: not again on the host a call is forwarded to.
    if let Resource::Connection(_) = resource
        && !forwarded
    {
        *operation = match method {
            Method::POST => Some(Operation::PostToConnection),
            Method::GET => Some(Operation::GetConnection),
            Method::DELETE => Some(Operation::DeleteConnection),
            _ => None,
        };
    }
    // Host-to-host calls are authenticated by their signature; every other call must carry a
    // valid SigV4 signature when the host requires one (the plain GET on the stage is the
    // WebSocket URL's 426, not an API call).
    let request = if forwarded {
        match authenticate_peer(host, request).await {
            Ok(request) => request,
            Err(response) => return response,
        }
    } else if resource == Resource::Stage {
        request
    } else {
        let invoke = matches!(resource, Resource::Invocation(_));
        match authenticate(host, request, invoke).await {
            Ok(request) => request,
            Err(response) => return response,
        }
    };
    let post_id = match resource {
        Resource::Connection(_) if method == Method::POST && forwarded => {
            groups::query_param(&query, POST_ID).map(|id| id.into_owned())
        }
        Resource::Connection(_) if method == Method::POST => {
            match idempotency_key(request.headers()) {
                Ok(Some(key)) => Some(key),
                Ok(None) if host.cluster.is_some() => {
                    Some(uuid::Uuid::new_v4().simple().to_string())
                }
                Ok(None) => None,
                Err(e) => return e.into_response(),
            }
        }
        _ => None,
    };
    let call = Call {
        method: method.clone(),
        target: request.uri().path_and_query().map_or_else(
            || request.uri().path().to_string(),
            |p| p.as_str().to_string(),
        ),
        forwarded,
        post_id,
    };
    if let Resource::Invocation(name) = resource
        && method == Method::POST
        && !forwarded
    {
        let headers = request.headers().clone();
        return match read_body(
            request.into_body(),
            crate::local_lambda::invoke_api::MAX_REQUEST + 1,
        )
        .await
        {
            Ok(body) => {
                crate::local_lambda::invoke_api::invoke(
                    &host.functions,
                    &host.tasks,
                    name,
                    &headers,
                    body,
                )
                .await
            }
            Err(e) => e.into_response(),
        };
    }
    // API Gateway's account-wide rate for management calls; a call forwarded by another host was
    // counted there already.
    if !forwarded && resource.is_rate_limited() && !host.limits.management.try_acquire() {
        tracing::debug!("limits.management_requests_per_second reached");
        host.metrics.throttled(crate::metrics::Throttle::Management);
        return ManagementError::Throttled.into_response();
    }
    let result = match resource {
        Resource::Stage if method == Method::GET => Err(ManagementError::UpgradeRequired),
        Resource::Connection(id) => match method {
            Method::POST => post_to_connection(host, &call, id, request.into_body()).await,
            Method::GET => get_connection(host, &call, id).await,
            Method::DELETE => delete_connection(host, &call, id).await,
            _ => Err(ManagementError::Forbidden),
        },
        Resource::Membership {
            connection_id: id,
            group,
        } if groups => match method {
            Method::PUT => groups::join(host, &call, id, group).await,
            Method::DELETE => groups::leave(host, &call, id, group).await,
            _ => Err(ManagementError::Forbidden),
        },
        Resource::Group(group) if groups => match method {
            Method::POST => groups::broadcast(host, group, &query, request.into_body()).await,
            Method::GET => groups::members(host, group, &query).await,
            _ => Err(ManagementError::Forbidden),
        },
        Resource::GroupCount(group) if groups && method == Method::GET => {
            groups::count(host, group).await
        }
        Resource::Deliver if forwarded && method == Method::POST => {
            groups::deliver(host, request.into_body()).await
        }
        Resource::HandOver if forwarded && method == Method::POST => {
            hand_over(host, request.into_body()).await
        }
        Resource::Hello if forwarded && method == Method::POST => {
            hello(host, request.into_body()).await
        }
        _ => Err(ManagementError::Forbidden),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Checks the request's SigV4 signature when the host requires one (see [`auth`]), with the
/// signing name `lambda` on the Invoke API and `execute-api` elsewhere. The body is read (up to
/// the largest one the path accepts) only after the signature's other parts check out, and is
/// handed on in the returned request.
async fn authenticate(host: &Host, request: Request, invoke: bool) -> Result<Request, Response> {
    let Some(verifier) = &host.management_auth else {
        return Ok(request);
    };
    let (parts, body) = request.into_parts();
    let service = if invoke {
        crate::sigv4::LAMBDA
    } else {
        crate::sigv4::EXECUTE_API
    };
    let refused = |e: crate::sigv4::AuthError| {
        // The first line only: a signature mismatch goes on with the canonical request.
        let reason = e.to_string();
        let reason = reason.lines().next().unwrap_or_default();
        tracing::info!(path = %parts.uri.path(), %reason, "unauthenticated call refused");
        e.into_response()
    };
    let signed = verifier
        .precheck(
            &parts.uri,
            &parts.headers,
            service,
            std::time::SystemTime::now(),
        )
        .map_err(refused)?;
    let limit = if invoke {
        crate::local_lambda::invoke_api::MAX_REQUEST + 1
    } else {
        host.config.limits.post_size
    };
    let body = read_body(body, limit)
        .await
        .map_err(IntoResponse::into_response)?;
    signed
        .verify(&parts.method, &parts.uri, &parts.headers, &body)
        .map_err(refused)?;
    Ok(Request::from_parts(parts, Body::from(body)))
}

/// Checks the signature of a host-to-host call (see [`cluster::signature`]) over its body, read
/// up to the largest body a host sends (a broadcast's delivery batch), and hands the body on in
/// the returned request.
async fn authenticate_peer(host: &Host, request: Request) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let refused = |reason: &dyn std::fmt::Display| {
        tracing::warn!(%path, %reason, "host-to-host call with a bad signature refused");
        ManagementError::Forbidden.into_response()
    };
    let Some(cluster) = host.cluster.as_ref() else {
        return Err(refused(&"this host is not in a cluster"));
    };
    let body = read_body(body, groups::delivery_limit(host))
        .await
        .map_err(IntoResponse::into_response)?;
    let target = parts
        .uri
        .path_and_query()
        .map_or(path.as_str(), http::uri::PathAndQuery::as_str);
    cluster
        .authenticate(&parts.method, target, &parts.headers, &body, ids::now_ms())
        .map_err(|e| refused(&e))?;
    Ok(Request::from_parts(parts, Body::from(body)))
}

/// A call for a connection this host does not hold: forwarded to the owning host when clustered
/// (unless it was itself forwarded), else 410 as on a single host.
///
/// A reliable session can move between hosts (PROTOCOL.md section 5): when the owner answers 410
/// the owner is looked up again once, and a store-durable session whose owner is gone is taken in
/// here ([`crate::sessions::adopt`]) and served as a local connection.
pub(crate) async fn elsewhere(
    host: &Arc<Host>,
    call: &Call,
    id: &str,
    body: Bytes,
) -> Result<Elsewhere, ManagementError> {
    let Some(cluster) = host.cluster.as_ref().filter(|_| !call.forwarded) else {
        return Err(ManagementError::Gone);
    };
    // Nothing was awaited since the call was read, so the calls for `id` queue here in the order
    // they arrived, and each leaves only once the owner has answered the one before. A call that
    // waited too long is refused like one finding the connection's queue full: not delivered,
    // so it changes no order.
    let _turn = cluster
        .turn(id)
        .await
        .ok_or(ManagementError::LimitExceeded)?;
    let target = match &call.post_id {
        Some(post_id) => {
            let separator = if call.target.contains('?') { '&' } else { '?' };
            let post_id =
                percent_encoding::utf8_percent_encode(post_id, percent_encoding::NON_ALPHANUMERIC);
            format!("{}{separator}{POST_ID}={post_id}", call.target)
        }
        None => call.target.clone(),
    };
    // A session can move while the call is under way: an owner that answers 410, or a session
    // another host took in first, sends the call to the owner the record names now.
    let mut tried: Vec<crate::cluster::Owner> = Vec::new();
    for _ in 0..3 {
        let owner = cluster
            .locate(host.store.as_ref(), id)
            .await
            .map_err(|e| ManagementError::Unavailable(e.to_string()))?;
        let owner = owner.filter(|o| !tried.contains(o));
        if let Some(owner) = owner {
            let answer = cluster
                .forward(&owner, id, call.method.clone(), &target, body.clone())
                .await;
            match answer {
                Some(_) => host.metrics.forwards_ok.increment(1),
                None => host.metrics.forwards_error.increment(1),
            }
            match answer {
                Some(answer) if answer.status == StatusCode::GONE => {
                    tried.push(owner);
                    continue;
                }
                Some(answer) => {
                    return Ok(Elsewhere::Answered(
                        (answer.status, answer.headers, answer.body).into_response(),
                    ));
                }
                // Unreachable: dead, or cut off from this host.
                None => tried.push(owner),
            }
        }
        match crate::sessions::adopt(host, id).await {
            crate::sessions::Adoption::Adopted(handle) => return Ok(Elsewhere::Here(handle)),
            // Not 410: the session can still be resumed, and the call can be made again.
            crate::sessions::Adoption::NotYet => {
                return Err(ManagementError::Unavailable(
                    "the host holding the session is not answering".into(),
                ));
            }
            crate::sessions::Adoption::No => {}
        }
        // Resumed or taken in here meanwhile.
        if let Some(handle) = host.registry.get(id) {
            return Ok(Elsewhere::Here(handle));
        }
        if tried.is_empty() {
            break;
        }
        cluster.forget(id);
    }
    Err(ManagementError::Gone)
}

/// Where [`elsewhere`] found a connection.
pub(crate) enum Elsewhere {
    /// Another host answered the call.
    Answered(Response),
    /// A reliable session this host took in (or that resumed here meanwhile): serve the call
    /// here.
    Here(Arc<crate::registry::ConnectionHandle>),
}

/// The connection `id` held here, or the answer of the host that holds it.
async fn find(
    host: &Arc<Host>,
    call: &Call,
    id: &str,
    body: &Bytes,
) -> Result<Result<Arc<crate::registry::ConnectionHandle>, Response>, ManagementError> {
    if let Some(handle) = host.registry.get(id) {
        return Ok(Ok(handle));
    }
    Ok(match elsewhere(host, call, id, body.clone()).await? {
        Elsewhere::Answered(response) => Err(response),
        Elsewhere::Here(handle) => Ok(handle),
    })
}

/// Reads a request body of at most `limit` bytes.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ManagementError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ManagementError::PayloadTooLarge)
        }
        Err(e) => Err(ManagementError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn check_id(id: &str) -> Result<(), ManagementError> {
    if ids::is_well_formed_id(id) {
        Ok(())
    } else {
        Err(ManagementError::BadRequest(format!(
            "Invalid connectionId: {id}"
        )))
    }
}

async fn post_to_connection(
    host: &Arc<Host>,
    call: &Call,
    id: &str,
    body: Body,
) -> Result<Response, ManagementError> {
    check_id(id)?;
    let data = read_body(body, host.config.limits.post_size).await?;
    let handle = match find(host, call, id, &data).await? {
        Ok(handle) => handle,
        Err(answered) => return Ok(answered),
    };
    let post_id = call.post_id.as_deref();
    let posted = if handle.is_session() {
        crate::sessions::post(host, &handle, &data, post_id).await
    } else {
        handle.post(
            Outbound::data(data.clone()),
            host.config.limits.outbound_queue_bytes,
        )
    };
    match posted {
        Ok(()) | Err(PostError::AlreadyKept(_)) => Ok(StatusCode::OK.into_response()),
        Err(PostError::Gone) => Err(ManagementError::Gone),
        Err(PostError::Full) => Err(ManagementError::LimitExceeded),
        Err(PostError::KeyReused) => Err(ManagementError::KeyReused),
        // The session moved to another host while the post was under way: the record names the
        // new owner.
        Err(PostError::Moved | PostError::NotReady) => {
            if let Some(cluster) = &host.cluster {
                cluster.forget(id);
            }
            match elsewhere(host, call, id, data.clone()).await? {
                Elsewhere::Answered(response) => Ok(response),
                Elsewhere::Here(handle) => {
                    match crate::sessions::post(host, &handle, &data, post_id).await {
                        Ok(()) => Ok(StatusCode::OK.into_response()),
                        Err(PostError::Full) => Err(ManagementError::LimitExceeded),
                        Err(PostError::KeyReused) => Err(ManagementError::KeyReused),
                        Err(_) => Err(ManagementError::Gone),
                    }
                }
            }
        }
        Err(PostError::Unavailable) => Err(ManagementError::Unavailable(
            "the session's frame could not be written to the store".into(),
        )),
    }
}

/// `POST /{stage}/@internal/handover` (host to host): lets go of a reliable session and answers
/// with its unacknowledged frames (see [`crate::sessions`]).
async fn hand_over(host: &Host, body: Body) -> Result<Response, ManagementError> {
    #[derive(serde::Deserialize)]
    struct Request {
        #[serde(rename = "connectionId")]
        connection_id: String,
        after: u64,
    }
    let body = read_body(body, 4096).await?;
    let request: Request = serde_json::from_slice(&body)
        .map_err(|e| ManagementError::BadRequest(format!("invalid handover: {e}")))?;
    let handed = crate::sessions::hand_over(host, &request.connection_id, request.after)
        .ok_or(ManagementError::Gone)?;
    Ok(axum::Json(handed).into_response())
}

/// `POST /{stage}/@internal/hello` (host to host): a host that just started, with its liveness
/// record, so that broadcasts from here call it before this host's next listing.
async fn hello(host: &Host, body: Body) -> Result<Response, ManagementError> {
    let body = read_body(body, 4096).await?;
    let record: cluster::Hello = serde_json::from_slice(&body)
        .map_err(|e| ManagementError::BadRequest(format!("invalid hello: {e}")))?;
    if let Some(cluster) = &host.cluster {
        cluster.note_host(record.into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_connection(
    host: &Arc<Host>,
    call: &Call,
    id: &str,
) -> Result<Response, ManagementError> {
    check_id(id)?;
    let handle = match find(host, call, id, &Bytes::new()).await? {
        Ok(handle) => handle,
        Err(answered) => return Ok(answered),
    };
    let c = &handle.context;
    let mut identity = serde_json::json!({ "sourceIp": c.source_ip });
    if let Some(ua) = &c.user_agent {
        identity["userAgent"] = ua.clone().into();
    }
    Ok(axum::Json(serde_json::json!({
        "connectedAt": ids::iso8601_ms(c.connected_at),
        "identity": identity,
        "lastActiveAt": ids::iso8601_ms(handle.last_active_ms()),
    }))
    .into_response())
}

async fn delete_connection(
    host: &Arc<Host>,
    call: &Call,
    id: &str,
) -> Result<Response, ManagementError> {
    check_id(id)?;
    let handle = match find(host, call, id, &Bytes::new()).await? {
        Ok(handle) => handle,
        Err(answered) => return Ok(answered),
    };
    if !handle.close(1000, "Connection Closed Normally") {
        return Err(ManagementError::Gone);
    }
    // A session whose client is away has no connection task to end it: it ends here.
    if !handle.is_attached() {
        let host = host.clone();
        let tasks = host.tasks.clone();
        tasks.spawn(async move {
            crate::sessions::end(&host, &handle, 1000, "Connection Closed Normally").await;
        });
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
