//! A recording event handler: the HTTP integration (`type = "http"`) a test host posts its events
//! to, answering each as the test says.

use crate::{Ws, within};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the handler answers for one event.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status of the answer (200 for a Lambda proxy response).
    pub http_status: u16,
    /// The answer's body.
    pub body: String,
    /// How long the handler waits before answering.
    pub delay: Duration,
}

impl Reply {
    /// HTTP 200 with a Lambda proxy response `{"statusCode": status, "body": body}`.
    pub fn proxy(status: u16, body: Option<&str>) -> Self {
        let mut v = json!({ "statusCode": status });
        if let Some(b) = body {
            v["body"] = b.into();
        }
        Self::json(v)
    }

    /// HTTP 200 with `value` as the body.
    pub fn json(value: Value) -> Self {
        Self::raw(200, &value.to_string())
    }

    /// An arbitrary HTTP status and body (e.g. 500, or non-JSON garbage).
    pub fn raw(http_status: u16, body: &str) -> Self {
        Self {
            http_status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// Answers only after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Behaviour = Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

#[derive(Clone)]
struct HandlerState {
    events: Arc<watch::Sender<Vec<Value>>>,
    behaviour: Behaviour,
}

/// A recording event handler on `127.0.0.1:0`.
pub struct Handler {
    /// The URL to give the host as the integration's `url`.
    pub url: String,
    events: Arc<watch::Sender<Vec<Value>>>,
}

impl Handler {
    /// A handler answering synchronously.
    pub async fn start(f: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Self {
        let f = Arc::new(f);
        Self::start_async(move |event| {
            let reply = f(&event);
            async move { reply }
        })
        .await
    }

    /// A handler that may await (e.g. call the management API) before answering.
    pub async fn start_async<F, Fut>(f: F) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let behaviour: Behaviour = Arc::new(move |event| Box::pin(f(event)));
        let events = Arc::new(watch::channel(Vec::new()).0);
        let state = HandlerState {
            events: events.clone(),
            behaviour,
        };
        let app = axum::Router::new().fallback(handle_event).with_state(state);
        let url = serve(app).await;
        Self {
            url: format!("{url}/events"),
            events,
        }
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.borrow().clone()
    }

    /// Waits for the first event matching `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut rx = self.events.subscribe();
        let found = within(what, rx.wait_for(|evs| evs.iter().any(&pred))).await;
        let found = found.expect("sender lives as long as the handler");
        found.iter().find(|e| pred(e)).cloned().unwrap()
    }

    /// Waits for an event of `route_key`, for `connection_id` when given.
    pub async fn wait_route(&self, route_key: &str, connection_id: Option<&str>) -> Value {
        self.wait_for(&format!("{route_key} event for {connection_id:?}"), |e| {
            route(e) == route_key && connection_id.is_none_or(|id| conn_id(e) == id)
        })
        .await
    }

    /// Waits for a MESSAGE event whose body is exactly `body`.
    pub async fn wait_body(&self, body: &str) -> Value {
        self.wait_for(&format!("message {body}"), |e| {
            e.get("body").and_then(Value::as_str) == Some(body)
        })
        .await
    }
}

async fn handle_event(State(state): State<HandlerState>, body: axum::body::Bytes) -> Response {
    let event: Value = serde_json::from_slice(&body).expect("the host posts JSON events");
    state.events.send_modify(|evs| evs.push(event.clone()));
    let reply = (state.behaviour)(event).await;
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    (
        http::StatusCode::from_u16(reply.http_status).unwrap(),
        [(http::header::CONTENT_TYPE, "application/json")],
        reply.body,
    )
        .into_response()
}

/// Serves `app` on `127.0.0.1:0`; returns `http://ADDR`.
pub async fn serve(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// An authorizer behind a fake Lambda Invoke API: allows everyone, with the `Authorization`
/// header as `principalId`; returns its base URL (the Lambda endpoint).
pub async fn authorizer_function() -> String {
    let app = axum::Router::new().route(
        "/2015-03-31/functions/{name}/invocations",
        axum::routing::post(|body: String| async move {
            let event: Value = serde_json::from_str(&body).unwrap();
            let principal = event["headers"]
                .as_object()
                .unwrap()
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| v.as_str())
                .unwrap_or_default()
                .to_string();
            json!({
                "principalId": principal,
                "policyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}
                ]},
            })
            .to_string()
            .into_response()
        }),
    );
    serve(app).await
}

/// A URL on which nothing listens.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/nothing")
}

/// `requestContext.routeKey`.
pub fn route(e: &Value) -> &str {
    e["requestContext"]["routeKey"].as_str().unwrap_or_default()
}

/// `requestContext.connectionId`.
pub fn conn_id(e: &Value) -> &str {
    e["requestContext"]["connectionId"]
        .as_str()
        .unwrap_or_default()
}

/// `requestContext.eventType`.
pub fn event_type(e: &Value) -> &str {
    e["requestContext"]["eventType"]
        .as_str()
        .unwrap_or_default()
}

/// The `action` of a MESSAGE event's JSON body, if any.
pub fn action(e: &Value) -> Option<String> {
    let body: Value = serde_json::from_str(e.get("body")?.as_str()?).ok()?;
    body.get("action")?.as_str().map(str::to_string)
}

/// A CONNECT event's `queryStringParameters[name]`.
pub fn query_param<'e>(e: &'e Value, name: &str) -> Option<&'e str> {
    e.get("queryStringParameters")?.get(name)?.as_str()
}

/// Proves that refused attempts produced no event: `allowed`, a connection opened after them, is
/// closed, and once its `$disconnect` has arrived its two events must be all the handler saw.
pub async fn assert_only_events_of(handler: &Handler, mut allowed: Ws) {
    allowed.close(None).await.unwrap();
    let disconnect = handler.wait_route("$disconnect", None).await;
    let id = conn_id(&disconnect);
    let events = handler.events();
    assert!(
        events.iter().all(|e| conn_id(e) == id),
        "refused attempts produced events: {events:#?}"
    );
    assert_eq!(events.len(), 2, "{events:#?}");
}
