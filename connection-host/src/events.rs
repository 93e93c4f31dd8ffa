//! The event JSON API Gateway sends to `AWS_PROXY` integrations, and the proxy responses that come back.
//!
//! Key sets follow real captured events exactly: MESSAGE events carry no headers or query maps,
//! `messageId` appears only on MESSAGE, `disconnectStatusCode`/`disconnectReason` only on DISCONNECT,
//! DISCONNECT carries exactly four synthetic headers, and nothing ever carries `httpMethod` (which
//! would make `lambda_http` mistake the event for a REST request).

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a connection's events share, fixed at `$connect`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionContext {
    /// `requestContext.connectionId`.
    pub connection_id: String,
    /// `requestContext.connectedAt`, epoch milliseconds.
    pub connected_at: i64,
    /// `identity.sourceIp`: the TCP peer.
    pub source_ip: String,
    /// `identity.userAgent`, when the client sent `User-Agent`.
    pub user_agent: Option<String>,
    /// `requestContext.domainName`.
    pub domain_name: String,
    /// The `Host` header the client sent (repeated in the DISCONNECT event's headers).
    pub host: String,
    /// `requestContext.stage`.
    pub stage: Arc<str>,
    /// `requestContext.apiId`.
    pub api_id: Arc<str>,
    /// `requestContext.authorizer`: the authorizer's `principalId` and context, when one allowed the connection.
    pub authorizer: Option<serde_json::Map<String, serde_json::Value>>,
    /// The valid `X-Amzn-Trace-Id` the client sent with its upgrade request: every event of the
    /// connection carries it. Without one, each event gets a trace of its own.
    pub trace: Option<Box<str>>,
}

impl ConnectionContext {
    /// The authorizer's `principalId`; empty without an authorizer.
    pub fn principal_id(&self) -> &str {
        self.authorizer
            .as_ref()
            .and_then(|a| a.get("principalId"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    }

    /// The `X-Amzn-Trace-Id` of a new event of this connection: the client's, or a new one.
    pub fn event_trace_id(&self) -> String {
        match &self.trace {
            Some(trace) => trace.to_string(),
            None => crate::ids::trace_id(crate::ids::now_ms()),
        }
    }
}

/// Request headers or query parameters as `(name, values)` in the order API Gateway presents them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MultiMap(pub Vec<(String, Vec<String>)>);

impl MultiMap {
    /// Groups header lines case-insensitively (keeping the first spelling) and sorts them the way
    /// API Gateway lists them: by name, ignoring case.
    pub fn from_headers<'a>(lines: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (name, value) in lines {
            match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, values)) => values.push(value.to_string()),
                None => out.push((name.to_string(), vec![value.to_string()])),
            }
        }
        out.sort_by_key(|(n, _)| n.to_ascii_lowercase());
        MultiMap(out)
    }

    /// Parses a raw query string (`a=1&b=x%20y&a=2`), percent-decoding names and values.
    pub fn from_query(query: &str) -> Self {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_encoding::percent_decode_str(k)
                .decode_utf8_lossy()
                .into_owned();
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned();
            match out.iter_mut().find(|(n, _)| *n == k) {
                Some((_, values)) => values.push(v),
                None => out.push((k, vec![v])),
            }
        }
        MultiMap(out)
    }

    /// The last value of `name` (case-insensitive), as the single-value map holds it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.last())
            .map(String::as_str)
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn single(&self) -> SingleValues<'_> {
        SingleValues(self)
    }
}

impl Serialize for MultiMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The single-value view: repeated names keep their last value, like REST APIs' `headers`.
struct SingleValues<'a>(&'a MultiMap);

impl Serialize for SingleValues<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.0.len()))?;
        for (k, v) in &self.0.0 {
            map.serialize_entry(k, v.last().map(String::as_str).unwrap_or(""))?;
        }
        map.end()
    }
}

/// What differs between the three event types.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// `$connect`: the client's handshake headers and query string.
    Connect {
        /// Headers as the integration sees them (hop-by-hop removed, forwarding headers added).
        headers: Arc<MultiMap>,
        /// Query parameters; `None` when the URL had no query string.
        query: Option<Arc<MultiMap>>,
    },
    /// A routed message.
    Message {
        /// `requestContext.messageId`.
        message_id: String,
        /// The frame payload (base64 when `is_base64_encoded`).
        body: String,
        /// Whether `body` is base64 (only with the binary-messages extension).
        is_base64_encoded: bool,
        /// `requestContext.idempotencyKey`: the key a reliable client gave the message
        /// (PROTOCOL.md section 6); `None`, and the field absent, for plain connections.
        idempotency_key: Option<String>,
    },
    /// `$disconnect`.
    Disconnect {
        /// The close code.
        status_code: u16,
        /// The close reason.
        reason: String,
    },
}

/// One event for one integration invocation.
#[derive(Debug, Clone)]
pub struct Event {
    /// The selected route key.
    pub route_key: String,
    /// `requestId` and `extendedRequestId`.
    pub request_id: String,
    /// `requestTimeEpoch`, epoch milliseconds.
    pub request_time_epoch: i64,
    /// The `X-Amzn-Trace-Id` the event travels with to its integration (not part of its JSON).
    pub trace_id: String,
    /// The connection.
    pub connection: Arc<ConnectionContext>,
    /// Type-specific parts.
    pub kind: EventKind,
}

impl Event {
    /// An event of `connection` for `route_key`, stamped with the time it is made
    /// (`requestTimeEpoch`): the one place events are built, for integrations and authorizers.
    pub fn new(
        route_key: impl Into<String>,
        request_id: String,
        trace_id: String,
        connection: Arc<ConnectionContext>,
        kind: EventKind,
    ) -> Self {
        Self {
            route_key: route_key.into(),
            request_id,
            request_time_epoch: crate::ids::now_ms(),
            trace_id,
            connection,
            kind,
        }
    }

    /// `requestContext.eventType`.
    pub fn event_type(&self) -> &'static str {
        match self.kind {
            EventKind::Connect { .. } => "CONNECT",
            EventKind::Message { .. } => "MESSAGE",
            EventKind::Disconnect { .. } => "DISCONNECT",
        }
    }

    /// The message body, for MESSAGE events.
    pub fn body(&self) -> Option<&str> {
        match &self.kind {
            EventKind::Message { body, .. } => Some(body),
            _ => None,
        }
    }

    /// Serializes the event exactly as API Gateway would send it to a Lambda proxy integration.
    pub fn to_json(&self) -> Vec<u8> {
        let c = &self.connection;
        let disconnect_headers;
        let (headers, query) = match &self.kind {
            EventKind::Connect { headers, query } => (Some(&**headers), query.as_deref()),
            EventKind::Message { .. } => (None, None),
            EventKind::Disconnect { .. } => {
                disconnect_headers = MultiMap(vec![
                    ("Host".into(), vec![c.host.clone()]),
                    ("x-api-key".into(), vec![String::new()]),
                    ("X-Forwarded-For".into(), vec![String::new()]),
                    ("x-restapi".into(), vec![String::new()]),
                ]);
                (Some(&disconnect_headers), None)
            }
        };
        let (message_id, body, is_base64_encoded, idempotency_key) = match &self.kind {
            EventKind::Message {
                message_id,
                body,
                is_base64_encoded,
                idempotency_key,
            } => (
                Some(message_id.as_str()),
                Some(body.as_str()),
                *is_base64_encoded,
                idempotency_key.as_deref(),
            ),
            _ => (None, None, false, None),
        };
        let (disconnect_status_code, disconnect_reason) = match &self.kind {
            EventKind::Disconnect {
                status_code,
                reason,
            } => (Some(*status_code), Some(reason.as_str())),
            _ => (None, None),
        };
        let request_time = crate::ids::clf_time(self.request_time_epoch);
        let wire = WireEvent {
            headers: headers.map(MultiMap::single),
            multi_value_headers: headers,
            query_string_parameters: query.map(MultiMap::single),
            multi_value_query_string_parameters: query,
            request_context: WireContext {
                route_key: &self.route_key,
                message_id,
                disconnect_status_code,
                event_type: self.event_type(),
                extended_request_id: &self.request_id,
                request_time: &request_time,
                message_direction: "IN",
                disconnect_reason,
                stage: &c.stage,
                connected_at: c.connected_at,
                request_time_epoch: self.request_time_epoch,
                identity: WireIdentity {
                    source_ip: &c.source_ip,
                    user_agent: c.user_agent.as_deref(),
                },
                request_id: &self.request_id,
                domain_name: &c.domain_name,
                connection_id: &c.connection_id,
                api_id: &c.api_id,
                authorizer: c.authorizer.as_ref(),
                idempotency_key,
            },
            body,
            is_base64_encoded,
        };
        serde_json::to_vec(&wire).expect("events always serialize")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<SingleValues<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multi_value_headers: Option<&'a MultiMap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string_parameters: Option<SingleValues<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multi_value_query_string_parameters: Option<&'a MultiMap>,
    request_context: WireContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireContext<'a> {
    route_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnect_status_code: Option<u16>,
    event_type: &'static str,
    extended_request_id: &'a str,
    request_time: &'a str,
    message_direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnect_reason: Option<&'a str>,
    stage: &'a str,
    connected_at: i64,
    request_time_epoch: i64,
    identity: WireIdentity<'a>,
    request_id: &'a str,
    domain_name: &'a str,
    connection_id: &'a str,
    api_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizer: Option<&'a serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireIdentity<'a> {
    source_ip: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
}

/// A Lambda proxy response (`statusCode`, `headers`, `multiValueHeaders`, `body`, `isBase64Encoded`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyResponse {
    /// `statusCode`; absent in responses that are not proxy-shaped.
    pub status_code: Option<u16>,
    /// `headers` and `multiValueHeaders` merged (`lambda_http` puts headers only in the latter).
    pub headers: Vec<(String, String)>,
    /// `body`.
    pub body: Option<String>,
    /// `isBase64Encoded`.
    pub is_base64_encoded: bool,
}

/// Why a handler's output could not be read as a proxy response.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("malformed Lambda proxy response: {0}")]
pub struct MalformedResponse(pub String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    status_code: Option<StatusCode>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    multi_value_headers: Option<std::collections::BTreeMap<String, Vec<serde_json::Value>>>,
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default)]
    is_base64_encoded: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StatusCode {
    Number(u16),
    Text(String),
}

fn value_text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

impl ProxyResponse {
    /// Parses a handler's output. `null` (a handler that returned nothing) is an empty response.
    pub fn parse(payload: &[u8]) -> Result<Self, MalformedResponse> {
        let trimmed = payload.trim_ascii();
        if trimmed.is_empty() || trimmed == b"null" {
            return Ok(Self::default());
        }
        // serde would also read a struct from an array (fields by position): only objects are responses.
        if trimmed.first() != Some(&b'{') {
            return Err(MalformedResponse("not a JSON object".into()));
        }
        let wire: WireResponse = serde_json::from_slice(trimmed)
            .map_err(|e| MalformedResponse(format!("not a JSON object: {e}")))?;
        let status_code = match wire.status_code {
            None => None,
            Some(StatusCode::Number(n)) => Some(n),
            Some(StatusCode::Text(t)) => Some(
                t.parse()
                    .map_err(|_| MalformedResponse(format!("statusCode {t:?} is not a number")))?,
            ),
        };
        if let Some(code) = status_code
            && !(100..=599).contains(&code)
        {
            return Err(MalformedResponse(format!(
                "statusCode {code} is out of range"
            )));
        }
        let mut headers = Vec::new();
        for (k, v) in wire.headers.unwrap_or_default() {
            headers.push((k, value_text(v)));
        }
        for (k, vs) in wire.multi_value_headers.unwrap_or_default() {
            for v in vs {
                headers.push((k.clone(), value_text(v)));
            }
        }
        Ok(Self {
            status_code,
            headers,
            body: wire.body.and_then(|b| match b {
                serde_json::Value::Null => None,
                other => Some(value_text(other)),
            }),
            is_base64_encoded: wire.is_base64_encoded.unwrap_or(false),
        })
    }

    /// The first value of a response header, matched case-insensitively across both header maps.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sample connections and events for the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{ConnectionContext, Event, EventKind, MultiMap};
    use std::sync::Arc;

    /// A connection context as a test client on loopback would produce.
    pub fn connection() -> Arc<ConnectionContext> {
        Arc::new(ConnectionContext {
            connection_id: "BFaT_fALIAMCKug=".into(),
            connected_at: 1731332735513,
            source_ip: "127.0.0.1".into(),
            user_agent: Some("test".into()),
            domain_name: "localhost:8080".into(),
            host: "localhost:8080".into(),
            stage: "dev".into(),
            api_id: "local00api".into(),
            authorizer: None,
            trace: None,
        })
    }

    /// A MESSAGE event with `body`.
    pub fn message(body: &str) -> Event {
        Event {
            route_key: "$default".into(),
            request_id: "BFaVtH2HoAMFZEQ=".into(),
            request_time_epoch: 1731332746514,
            trace_id: "Root=1-6731ebfc-08e1e656421db73c5d2eef31".into(),
            connection: connection(),
            kind: EventKind::Message {
                message_id: "BFaVtfGSIAMCKug=".into(),
                body: body.into(),
                is_base64_encoded: false,
                idempotency_key: None,
            },
        }
    }

    /// A CONNECT event with the given headers and query string.
    pub fn connect(headers: &[(&str, &str)], query: Option<&str>) -> Event {
        Event {
            route_key: "$connect".into(),
            request_id: "BFHPhFe3IAMF95g=".into(),
            request_time_epoch: 1731324924561,
            trace_id: "Root=1-6731ebfc-08e1e656421db73c5d2eef31".into(),
            connection: connection(),
            kind: EventKind::Connect {
                headers: Arc::new(MultiMap::from_headers(headers.iter().copied())),
                query: query.map(|q| Arc::new(MultiMap::from_query(q))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{connect, connection, message};
    use super::*;
    use serde_json::{Value, json};
    use std::collections::BTreeSet;

    // Real captures (aws-powertools/powertools-lambda-python tests/events, spec §2.7 A/B/C).
    const CAPTURED_CONNECT: &str =
        include_str!("../tests/fixtures/apiGatewayWebSocketApiConnect.json");
    const CAPTURED_MESSAGE: &str =
        include_str!("../tests/fixtures/apiGatewayWebSocketApiMessage.json");
    const CAPTURED_DISCONNECT: &str =
        include_str!("../tests/fixtures/apiGatewayWebSocketApiDisconnect.json");

    fn captured(text: &str) -> Value {
        serde_json::from_str(text).expect("fixture is JSON")
    }

    fn emitted(event: &Event) -> Value {
        serde_json::from_slice(&event.to_json()).expect("to_json emits JSON")
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"))
            .keys()
            .cloned()
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Asserts the top level, `requestContext` and `identity` have the same key sets.
    fn assert_same_keys(actual: &Value, expected: &Value) {
        assert_eq!(keys(actual), keys(expected), "top level");
        let (a, e) = (&actual["requestContext"], &expected["requestContext"]);
        assert_eq!(keys(a), keys(e), "requestContext");
        assert_eq!(keys(&a["identity"]), keys(&e["identity"]), "identity");
    }

    /// The helpers' connection sends `User-Agent`; the captured clients did not.
    fn without_user_agent(mut event: Event) -> Event {
        let mut c = (*event.connection).clone();
        c.user_agent = None;
        event.connection = Arc::new(c);
        event
    }

    fn disconnect(status_code: u16, reason: &str) -> Event {
        Event {
            route_key: "$disconnect".into(),
            request_id: "BFbOeE87IAMF31w=".into(),
            request_time_epoch: 1731333109875,
            trace_id: "Root=1-6731ebfc-08e1e656421db73c5d2eef31".into(),
            connection: connection(),
            kind: EventKind::Disconnect {
                status_code,
                reason: reason.into(),
            },
        }
    }

    /// `^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$` without a regex crate.
    fn is_clf_time(s: &str) -> bool {
        const SHAPE: &[u8] = b"dd/Maa/dddd:dd:dd:dd +0000";
        s.len() == SHAPE.len()
            && s.bytes().zip(SHAPE).all(|(c, &p)| match p {
                b'd' => c.is_ascii_digit(),
                b'M' => c.is_ascii_uppercase(),
                b'a' => c.is_ascii_lowercase(),
                literal => c == literal,
            })
    }

    /// What every event of `event_type` must satisfy, emitted or captured.
    fn assert_event_invariants(v: &Value, event_type: &str) {
        let top = v.as_object().expect("event is an object");
        let rc = v["requestContext"].as_object().expect("requestContext");
        assert_eq!(rc["eventType"], event_type);
        for forbidden in ["httpMethod", "resource", "path", "pathParameters"] {
            assert!(!top.contains_key(forbidden), "top-level {forbidden}: {v}");
        }
        for forbidden in ["http", "elb", "httpMethod", "resourcePath", "accountId"] {
            assert!(
                !rc.contains_key(forbidden),
                "requestContext.{forbidden}: {v}"
            );
        }
        assert_eq!(
            rc.contains_key("messageId"),
            event_type == "MESSAGE",
            "messageId: {v}"
        );
        for key in ["disconnectStatusCode", "disconnectReason"] {
            assert_eq!(
                rc.contains_key(key),
                event_type == "DISCONNECT",
                "{key}: {v}"
            );
        }
        assert_eq!(
            top.contains_key("headers"),
            event_type != "MESSAGE",
            "headers: {v}"
        );
        assert_eq!(
            top.contains_key("body"),
            event_type == "MESSAGE",
            "body: {v}"
        );
        for key in ["connectedAt", "requestTimeEpoch"] {
            assert!(rc[key].is_i64(), "{key} is not a JSON integer: {v}");
        }
        let time = rc["requestTime"].as_str().expect("requestTime string");
        assert!(is_clf_time(time), "requestTime {time:?}");
        assert_eq!(rc["messageDirection"], "IN");
        assert_eq!(rc["requestId"], rc["extendedRequestId"]);
        assert_eq!(top["isBase64Encoded"], false);
    }

    /// What a Rust handler sees: `aws_lambda_events` and `lambda_http`'s request classification.
    fn assert_rust_handlers_accept(
        json: &[u8],
        connection_id: &str,
        route_key: &str,
        event_type: &str,
        body: Option<&str>,
    ) {
        use aws_lambda_events::apigw::{
            ApiGatewayProxyRequest, ApiGatewayV2httpRequest, ApiGatewayWebsocketProxyRequest,
        };
        let request: ApiGatewayWebsocketProxyRequest =
            serde_json::from_slice(json).expect("deserializes as ApiGatewayWebsocketProxyRequest");
        let rc = &request.request_context;
        assert_eq!(rc.connection_id.as_deref(), Some(connection_id));
        assert_eq!(rc.route_key.as_deref(), Some(route_key));
        assert_eq!(rc.event_type.as_deref(), Some(event_type));
        assert_eq!(request.body.as_deref(), body);
        assert!(request.http_method.is_none());

        // lambda_http tries REST v1 and HTTP v2 before WebSocket; only `apigw_websockets` is
        // enabled here, so check directly that the earlier candidates reject the event.
        assert!(serde_json::from_slice::<ApiGatewayProxyRequest>(json).is_err());
        assert!(serde_json::from_slice::<ApiGatewayV2httpRequest>(json).is_err());
        let classified: lambda_http::request::LambdaRequest =
            serde_json::from_slice(json).expect("lambda_http accepts the event");
        #[allow(irrefutable_let_patterns)] // other variants exist only with other features
        let lambda_http::request::LambdaRequest::WebSocket(ws) = classified else {
            panic!("lambda_http did not classify the event as WebSocket");
        };
        assert_eq!(
            ws.request_context.connection_id.as_deref(),
            Some(connection_id)
        );
        assert_eq!(ws.body.as_deref(), body);
    }

    #[test]
    fn clf_time_check_rejects_near_misses() {
        assert!(is_clf_time("11/Nov/2024:13:45:46 +0000"));
        for bad in [
            "11/nov/2024:13:45:46 +0000",
            "1/Nov/2024:13:45:46 +0000",
            "11/Nov/2024:13:45:46 +0100",
            "11/Nov/2024 13:45:46 +0000",
            "11/Nov/2024:13:45:46 +0000 ",
        ] {
            assert!(!is_clf_time(bad), "{bad:?}");
        }
    }

    #[test]
    fn captured_fixtures_pass_the_same_checks() {
        for (text, event_type, route, body) in [
            (CAPTURED_CONNECT, "CONNECT", "$connect", None),
            (
                CAPTURED_MESSAGE,
                "MESSAGE",
                "chat",
                Some(r#"{"action": "chat", "message": "Hello from client"}"#),
            ),
            (CAPTURED_DISCONNECT, "DISCONNECT", "$disconnect", None),
        ] {
            let v = captured(text);
            assert_event_invariants(&v, event_type);
            let id = v["requestContext"]["connectionId"].as_str().unwrap();
            assert_rust_handlers_accept(text.as_bytes(), id, route, event_type, body);
        }
    }

    #[test]
    fn connect_without_query_has_captured_key_set() {
        let event = without_user_agent(connect(&[("Host", "h")], None));
        let v = emitted(&event);
        assert_same_keys(&v, &captured(CAPTURED_CONNECT));
        assert_event_invariants(&v, "CONNECT");
        assert_rust_handlers_accept(
            &event.to_json(),
            "BFaT_fALIAMCKug=",
            "$connect",
            "CONNECT",
            None,
        );
    }

    #[test]
    fn connect_with_query_adds_exactly_the_query_maps() {
        let event = without_user_agent(connect(&[("Host", "h")], Some("token=abc&room=1&room=2")));
        let v = emitted(&event);
        let mut expected = keys(&captured(CAPTURED_CONNECT));
        expected.extend(set(&[
            "queryStringParameters",
            "multiValueQueryStringParameters",
        ]));
        assert_eq!(keys(&v), expected);
        assert_eq!(
            v["queryStringParameters"],
            json!({"token": "abc", "room": "2"})
        );
        assert_eq!(
            v["multiValueQueryStringParameters"],
            json!({"token": ["abc"], "room": ["1", "2"]})
        );
        assert_event_invariants(&v, "CONNECT");
        let request: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest =
            serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(request.query_string_parameters.first("token"), Some("abc"));
        assert_eq!(
            request.multi_value_query_string_parameters.all("room"),
            Some(vec!["1", "2"])
        );
    }

    #[test]
    fn connect_passes_captured_headers_through_unchanged() {
        let sample = captured(CAPTURED_CONNECT);
        let lines: Vec<(&str, &str)> = sample["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let v = emitted(&connect(&lines, None));
        assert_eq!(v["headers"], sample["headers"]);
        assert_eq!(v["multiValueHeaders"], sample["multiValueHeaders"]);
    }

    #[test]
    fn message_has_captured_key_set() {
        let event = without_user_agent(message(r#"{"action":"chat"}"#));
        let v = emitted(&event);
        assert_same_keys(&v, &captured(CAPTURED_MESSAGE));
        assert_event_invariants(&v, "MESSAGE");
        assert_eq!(v["requestContext"]["messageId"], "BFaVtfGSIAMCKug=");
        assert_rust_handlers_accept(
            &event.to_json(),
            "BFaT_fALIAMCKug=",
            "$default",
            "MESSAGE",
            Some(r#"{"action":"chat"}"#),
        );
    }

    #[test]
    fn disconnect_has_captured_key_set_and_the_four_synthetic_headers() {
        let event = without_user_agent(disconnect(1001, "Going away"));
        let v = emitted(&event);
        assert_same_keys(&v, &captured(CAPTURED_DISCONNECT));
        assert_event_invariants(&v, "DISCONNECT");
        assert_eq!(
            v["headers"],
            json!({"Host": "localhost:8080", "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""})
        );
        assert_eq!(
            v["multiValueHeaders"],
            json!({"Host": ["localhost:8080"], "x-api-key": [""], "X-Forwarded-For": [""], "x-restapi": [""]})
        );
        assert_eq!(v["requestContext"]["disconnectStatusCode"], 1001);
        assert_eq!(v["requestContext"]["disconnectReason"], "Going away");
        let request: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest =
            serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(request.request_context.disconnect_status_code, Some(1001));
        assert_rust_handlers_accept(
            &event.to_json(),
            "BFaT_fALIAMCKug=",
            "$disconnect",
            "DISCONNECT",
            None,
        );
    }

    /// With the captured connections' facts, the host reproduces the captures value for value.
    #[test]
    fn replaying_the_captured_connections_reproduces_the_samples() {
        let captured_connection = |id: &str, connected_at: i64, host: &str| {
            Arc::new(ConnectionContext {
                connection_id: id.into(),
                connected_at,
                source_ip: "166.90.225.1".into(),
                user_agent: None,
                domain_name: "asasasas.execute-api.us-east-1.amazonaws.com".into(),
                host: host.into(),
                stage: "prod".into(),
                api_id: "asasasas".into(),
                authorizer: None,
                trace: None,
            })
        };
        let chat = captured_connection(
            "BFaT_fALIAMCKug=",
            1731332735513,
            "asasasas.execute-api.us-east-1.amazonaws.com",
        );
        let message = Event {
            route_key: "chat".into(),
            request_id: "BFaVtH2HoAMFZEQ=".into(),
            request_time_epoch: 1731332746514,
            trace_id: "Root=1-6731ebfc-08e1e656421db73c5d2eef31".into(),
            connection: chat.clone(),
            kind: EventKind::Message {
                message_id: "BFaVtfGSIAMCKug=".into(),
                body: r#"{"action": "chat", "message": "Hello from client"}"#.into(),
                is_base64_encoded: false,
                idempotency_key: None,
            },
        };
        assert_eq!(emitted(&message), captured(CAPTURED_MESSAGE));

        let disconnect = Event {
            connection: chat,
            ..disconnect(1005, "Client-side close frame status not set")
        };
        assert_eq!(emitted(&disconnect), captured(CAPTURED_DISCONNECT));

        let sample = captured(CAPTURED_CONNECT);
        let lines: Vec<(&str, &str)> = sample["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let connect = Event {
            connection: captured_connection(
                "BFHPhfCWIAMCKlQ=",
                1731324924553,
                "fjnq7njcv2.execute-api.us-east-1.amazonaws.com",
            ),
            ..connect(&lines, None)
        };
        assert_eq!(emitted(&connect), sample);
    }

    #[test]
    fn user_agent_only_when_the_client_sent_one() {
        let with = emitted(&message("x"));
        assert_eq!(
            with["requestContext"]["identity"],
            json!({"sourceIp": "127.0.0.1", "userAgent": "test"})
        );
        for event in [
            without_user_agent(message("x")),
            without_user_agent(connect(&[], None)),
            without_user_agent(disconnect(1000, "")),
        ] {
            let v = emitted(&event);
            assert_eq!(
                keys(&v["requestContext"]["identity"]),
                set(&["sourceIp"]),
                "{v}"
            );
        }
    }

    #[test]
    fn request_time_matches_request_time_epoch() {
        // Same epochs as the captures, so the captured strings are the expected values.
        let v = emitted(&message("x"));
        assert_eq!(
            v["requestContext"]["requestTime"],
            captured(CAPTURED_MESSAGE)["requestContext"]["requestTime"]
        );
        let v = emitted(&disconnect(1005, ""));
        assert_eq!(
            v["requestContext"]["requestTime"],
            captured(CAPTURED_DISCONNECT)["requestContext"]["requestTime"]
        );
        assert_eq!(v["requestContext"]["requestTimeEpoch"], 1731333109875_i64);
        assert_eq!(v["requestContext"]["connectedAt"], 1731332735513_i64);
    }

    #[test]
    fn from_headers_groups_sorts_and_keeps_first_spelling() {
        let map = MultiMap::from_headers([
            ("X-Custom", "a"),
            ("accept", "*/*"),
            ("x-custom", "b"),
            ("Host", "h"),
            ("X-CUSTOM", "c"),
        ]);
        let names: Vec<&str> = map.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["accept", "Host", "X-Custom"]);
        assert_eq!(map.0[2].1, ["a", "b", "c"]);
        assert_eq!(map.get("x-custom"), Some("c"));
        assert_eq!(map.get("missing"), None);

        let v = emitted(&connect(
            &[("X-Custom", "a"), ("accept", "*/*"), ("x-custom", "b")],
            None,
        ));
        assert_eq!(v["headers"], json!({"accept": "*/*", "X-Custom": "b"}));
        assert_eq!(
            v["multiValueHeaders"],
            json!({"accept": ["*/*"], "X-Custom": ["a", "b"]})
        );
        // Key order in the JSON text is case-insensitive alphabetical (serde_json::Value sorts
        // case-sensitively, so check the raw text).
        let text =
            String::from_utf8(connect(&[("b", "1"), ("C", "2"), ("A", "3")], None).to_json())
                .unwrap();
        assert!(
            text.starts_with(r#"{"headers":{"A":"3","b":"1","C":"2"}"#),
            "{text}"
        );
    }

    #[test]
    fn from_query_decodes_and_groups() {
        let map = MultiMap::from_query("a=1&b=x%20y&a=2&flag&&c=%E2%9C%93&k%3D=v%26w&d=");
        assert_eq!(
            map.0,
            vec![
                ("a".to_string(), vec!["1".to_string(), "2".to_string()]),
                ("b".to_string(), vec!["x y".to_string()]),
                ("flag".to_string(), vec![String::new()]),
                ("c".to_string(), vec!["✓".to_string()]),
                ("k=".to_string(), vec!["v&w".to_string()]),
                ("d".to_string(), vec![String::new()]),
            ]
        );
        assert_eq!(map.get("a"), Some("2"));
        assert!(MultiMap::from_query("").is_empty());
    }

    /// Serializes `response` exactly as `lambda_http` answers a WebSocket request
    /// (`LambdaResponse::from_response` for `RequestOrigin::WebSocket`, which is crate-private):
    /// `headers` deliberately empty, every header in `multiValueHeaders`.
    fn lambda_http_serialize(response: lambda_http::Response<lambda_http::Body>) -> Vec<u8> {
        use lambda_http::aws_lambda_events::apigw::ApiGatewayProxyResponse;
        let (parts, body) = response.into_parts();
        let mut wire = ApiGatewayProxyResponse::default();
        wire.status_code = i64::from(parts.status.as_u16());
        wire.is_base64_encoded = matches!(body, lambda_http::Body::Binary(_));
        wire.body = match body {
            lambda_http::Body::Empty => None,
            b => Some(b),
        };
        wire.headers = Default::default();
        wire.multi_value_headers = parts.headers;
        serde_json::to_vec(&wire).unwrap()
    }

    #[test]
    fn parse_reads_lambda_http_subprotocol_response() {
        let response = lambda_http::Response::builder()
            .status(200)
            .header("Sec-WebSocket-Protocol", "chat.v1")
            .body(lambda_http::Body::Empty)
            .unwrap();
        let json = lambda_http_serialize(response);
        // The premise: lambda_http leaves `headers` empty.
        let v: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["headers"], json!({}), "{v}");
        assert_eq!(
            v["multiValueHeaders"]["sec-websocket-protocol"],
            json!(["chat.v1"])
        );

        let parsed = ProxyResponse::parse(&json).unwrap();
        assert_eq!(parsed.status_code, Some(200));
        assert_eq!(parsed.header("sec-websocket-protocol"), Some("chat.v1"));
        assert_eq!(parsed.header("Sec-WebSocket-Protocol"), Some("chat.v1"));
        assert_eq!(parsed.body, None);

        let response = lambda_http::Response::builder()
            .status(403)
            .header("x-a", "1")
            .body(lambda_http::Body::Text("no".into()))
            .unwrap();
        let parsed = ProxyResponse::parse(&lambda_http_serialize(response)).unwrap();
        assert_eq!(parsed.status_code, Some(403));
        assert_eq!(parsed.body.as_deref(), Some("no"));
        assert_eq!(parsed.header("X-A"), Some("1"));
    }

    #[test]
    fn parse_accepts_string_status_and_plain_headers() {
        let parsed = ProxyResponse::parse(
            br#"{"statusCode":"200","headers":{"Sec-WebSocket-Protocol":"p"},"body":"ok"}"#,
        )
        .unwrap();
        assert_eq!(parsed.status_code, Some(200));
        assert_eq!(parsed.header("sec-websocket-protocol"), Some("p"));
        assert_eq!(parsed.body.as_deref(), Some("ok"));
        assert!(!parsed.is_base64_encoded);
        assert!(ProxyResponse::parse(br#"{"statusCode":"abc"}"#).is_err());
    }

    #[test]
    fn parse_null_and_empty_are_the_default_response() {
        for payload in [&b""[..], b"null", b"  null\n", b" \n"] {
            assert_eq!(
                ProxyResponse::parse(payload),
                Ok(ProxyResponse::default()),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn parse_rejects_non_objects() {
        for payload in [&b"5"[..], b"\"text\"", b"true", b"{", b"not json"] {
            assert!(
                ProxyResponse::parse(payload).is_err(),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    // serde's derived Deserialize would read a struct from an array (fields by position).
    #[test]
    fn parse_rejects_arrays() {
        for payload in [&b"[]"[..], b"[200]", b"[200, {}]"] {
            assert!(
                ProxyResponse::parse(payload).is_err(),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn parse_rejects_out_of_range_status() {
        for code in [99, 600, 0] {
            let payload = format!(r#"{{"statusCode":{code}}}"#);
            let error = ProxyResponse::parse(payload.as_bytes()).unwrap_err();
            assert!(error.0.contains("out of range"), "{error}");
        }
        let payload = br#"{"statusCode":"600"}"#;
        assert!(ProxyResponse::parse(payload).is_err());
        assert_eq!(
            ProxyResponse::parse(br#"{"statusCode":599}"#)
                .unwrap()
                .status_code,
            Some(599)
        );
    }

    #[test]
    fn parse_turns_a_non_string_body_into_its_json_text() {
        let parsed = ProxyResponse::parse(br#"{"statusCode":200,"body":{"a":[1,"x"]}}"#).unwrap();
        assert_eq!(parsed.body.as_deref(), Some(r#"{"a":[1,"x"]}"#));
        let parsed = ProxyResponse::parse(br#"{"body":42}"#).unwrap();
        assert_eq!(parsed.body.as_deref(), Some("42"));
        assert_eq!(parsed.status_code, None);
        let parsed = ProxyResponse::parse(br#"{"body":null}"#).unwrap();
        assert_eq!(parsed.body, None);
    }
}
