//! Typed access to the API Gateway WebSocket event behind a [`lambda_http::Request`].
//!
//! `lambda_http` turns a WebSocket event into a `Request` whose body is the message and whose
//! extensions hold the `requestContext` (as [`RequestContext::WebSocket`]) and the query-string
//! parameters. [`WebSocketEvent`] reads them back with API Gateway's names and types.

use lambda_http::aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequestContext;
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use serde_json::Value;
use std::collections::HashMap;

/// `requestContext.eventType`: which of the three kinds of event this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `CONNECT`: the `$connect` route, run before the client gets its `101`.
    Connect,
    /// `MESSAGE`: a data message, routed to `$default` or a custom route.
    Message,
    /// `DISCONNECT`: the `$disconnect` route, run after the connection closed.
    Disconnect,
}

impl EventType {
    /// The value as API Gateway spells it (`CONNECT`, `MESSAGE`, `DISCONNECT`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Connect => "CONNECT",
            EventType::Message => "MESSAGE",
            EventType::Disconnect => "DISCONNECT",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "CONNECT" => Some(EventType::Connect),
            "MESSAGE" => Some(EventType::Message),
            "DISCONNECT" => Some(EventType::Disconnect),
            _ => None,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request could not be read as a WebSocket event.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The request did not come from an API Gateway WebSocket API (no WebSocket request context).
    #[error("not an API Gateway WebSocket event")]
    NotWebSocket,
    /// A field every WebSocket event carries is missing.
    #[error("the event has no requestContext.{0}")]
    Missing(&'static str),
    /// `requestContext.eventType` is none of `CONNECT`, `MESSAGE`, `DISCONNECT`.
    #[error("unknown requestContext.eventType {0:?}")]
    UnknownEventType(String),
}

/// Why a message body could not be read as text.
#[derive(Debug, thiserror::Error)]
#[error("the message body is binary data that is not valid UTF-8")]
pub struct BodyError;

/// One WebSocket event, read from a `lambda_http` request.
///
/// The fields every event has (`connectionId`, `routeKey`, `eventType`, `stage`, `domainName`)
/// are checked once by [`WebSocketEvent::from_request`]; the others are `Option`s because API
/// Gateway sends them only on some event types.
#[derive(Debug, Clone, Copy)]
pub struct WebSocketEvent<'r> {
    request: &'r Request,
    context: &'r ApiGatewayWebsocketProxyRequestContext,
    event_type: EventType,
    connection_id: &'r str,
    route_key: &'r str,
    stage: &'r str,
    domain_name: &'r str,
}

impl<'r> WebSocketEvent<'r> {
    /// Reads the WebSocket event behind `request`.
    pub fn from_request(request: &'r Request) -> Result<Self, ContextError> {
        let context = match request.request_context_ref() {
            Some(RequestContext::WebSocket(context)) => context,
            _ => return Err(ContextError::NotWebSocket),
        };
        let required = |value: &'r Option<String>, name| {
            value
                .as_deref()
                .filter(|v| !v.is_empty())
                .ok_or(ContextError::Missing(name))
        };
        let raw_type = required(&context.event_type, "eventType")?;
        let event_type = EventType::parse(raw_type)
            .ok_or_else(|| ContextError::UnknownEventType(raw_type.to_string()))?;
        Ok(Self {
            request,
            context,
            event_type,
            connection_id: required(&context.connection_id, "connectionId")?,
            route_key: required(&context.route_key, "routeKey")?,
            stage: required(&context.stage, "stage")?,
            domain_name: required(&context.domain_name, "domainName")?,
        })
    }

    /// `requestContext.connectionId`: the ID to post to through the management API.
    pub fn connection_id(&self) -> &'r str {
        self.connection_id
    }

    /// `requestContext.routeKey`: `$connect`, `$disconnect`, `$default` or a custom route key.
    pub fn route_key(&self) -> &'r str {
        self.route_key
    }

    /// `requestContext.eventType`.
    pub fn event_type(&self) -> EventType {
        self.event_type
    }

    /// `requestContext.stage`: the stage the client connected to.
    pub fn stage(&self) -> &'r str {
        self.stage
    }

    /// `requestContext.domainName`: the host name the client connected to.
    pub fn domain_name(&self) -> &'r str {
        self.domain_name
    }

    /// `requestContext.apiId`.
    pub fn api_id(&self) -> Option<&'r str> {
        self.context.apiid.as_deref()
    }

    /// `requestContext.requestId`: new for every event.
    pub fn request_id(&self) -> Option<&'r str> {
        self.context.request_id.as_deref()
    }

    /// `requestContext.idempotencyKey`: the key a connection-host reliable client gave the message
    /// (MESSAGE events from clients using the sessions extension; see connection-host/SESSIONS.md).
    /// The host invokes a route at most once per key; use it to make the handler's own side
    /// effects idempotent. `None` on API Gateway and for plain clients.
    pub fn idempotency_key(&self) -> Option<&'r str> {
        self.context.other.get("idempotencyKey")?.as_str()
    }

    /// `requestContext.messageId` (MESSAGE events only).
    pub fn message_id(&self) -> Option<&'r str> {
        self.context.message_id.as_deref()
    }

    /// `requestContext.connectedAt`: when the connection was opened, in epoch milliseconds.
    pub fn connected_at(&self) -> i64 {
        self.context.connected_at
    }

    /// `requestContext.requestTimeEpoch`: when this event happened, in epoch milliseconds.
    pub fn request_time_epoch(&self) -> i64 {
        self.context.request_time_epoch
    }

    /// `requestContext.identity.sourceIp`.
    pub fn source_ip(&self) -> Option<&'r str> {
        self.context.identity.source_ip.as_deref()
    }

    /// `requestContext.identity.userAgent` (present when the client sent a `User-Agent`).
    pub fn user_agent(&self) -> Option<&'r str> {
        self.context.identity.user_agent.as_deref()
    }

    /// `requestContext.disconnectStatusCode`: the close code (DISCONNECT events only).
    pub fn disconnect_status_code(&self) -> Option<i64> {
        self.context.disconnect_status_code
    }

    /// `requestContext.disconnectReason`: the close reason, may be empty (DISCONNECT events only).
    pub fn disconnect_reason(&self) -> Option<&'r str> {
        self.context.disconnect_reason.as_deref()
    }

    /// What the `$connect` authorizer returned: `principalId` and its `context` keys, on every
    /// event of the connection. Empty when the API has no authorizer.
    pub fn authorizer(&self) -> Authorizer<'r> {
        Authorizer {
            fields: &self.context.authorizer.fields,
        }
    }

    /// The first value of query-string parameter `name` (CONNECT events only: API Gateway sends
    /// the query string with `$connect` alone).
    pub fn query(&self, name: &str) -> Option<&'r str> {
        self.request.query_string_parameters_ref()?.first(name)
    }

    /// Request header `name`, case-insensitive (CONNECT and DISCONNECT events only).
    pub fn header(&self, name: &str) -> Option<&'r str> {
        self.request.headers().get(name)?.to_str().ok()
    }

    /// The message as bytes (empty for CONNECT and DISCONNECT).
    pub fn body_bytes(&self) -> &'r [u8] {
        self.request.body().as_ref()
    }

    /// Whether the message arrived base64-encoded (`isBase64Encoded: true`): a binary frame, which
    /// only the connection host's `extensions.binary_messages` delivers (API Gateway closes the
    /// connection with 1003 instead).
    pub fn is_binary(&self) -> bool {
        matches!(self.request.body(), lambda_http::Body::Binary(_))
    }

    /// The message as text (empty for CONNECT and DISCONNECT). Fails only for a binary body
    /// (`isBase64Encoded: true`) that is not UTF-8.
    pub fn body_text(&self) -> Result<&'r str, BodyError> {
        std::str::from_utf8(self.body_bytes()).map_err(|_| BodyError)
    }

    /// The whole `requestContext`, for fields this type has no accessor for.
    pub fn request_context(&self) -> &'r ApiGatewayWebsocketProxyRequestContext {
        self.context
    }
}

/// `requestContext.authorizer`: the authorizer's `principalId` and `context` keys, side by side.
#[derive(Debug, Clone, Copy)]
pub struct Authorizer<'r> {
    fields: &'r HashMap<String, Value>,
}

impl<'r> Authorizer<'r> {
    /// `principalId` as the authorizer returned it.
    pub fn principal_id(&self) -> Option<&'r str> {
        self.get_str("principalId")
    }

    /// One `context` key (or `principalId`), with the JSON type the event carries.
    pub fn get(&self, key: &str) -> Option<&'r Value> {
        self.fields.get(key)
    }

    /// One key, when it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<&'r str> {
        self.get(key)?.as_str()
    }

    /// One key read as a boolean: a JSON `true`/`false`, or the strings `"true"`/`"false"`
    /// (API Gateway documents context values as strings, numbers or booleans, and some hosts
    /// stringify them).
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" => Some(true),
            Value::String(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    /// True when the connection was not authorized by a Lambda authorizer.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Every key and value.
    pub fn fields(&self) -> &'r HashMap<String, Value> {
        self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture_request;

    /// A captured event with `edit` applied to its JSON.
    fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> Request {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut json: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        edit(&mut json);
        lambda_http::request::from_str(&json.to_string()).unwrap()
    }

    #[test]
    fn connect_event() {
        let request = fixture_request("apiGatewayWebSocketApiConnect.json");
        let event = WebSocketEvent::from_request(&request).unwrap();
        assert_eq!(event.event_type(), EventType::Connect);
        assert_eq!(event.route_key(), "$connect");
        assert_eq!(event.connection_id(), "BFHPhfCWIAMCKlQ=");
        assert_eq!(event.stage(), "prod");
        assert_eq!(
            event.domain_name(),
            "asasasas.execute-api.us-east-1.amazonaws.com"
        );
        assert_eq!(event.api_id(), Some("asasasas"));
        assert_eq!(event.request_id(), Some("BFHPhFe3IAMF95g="));
        assert_eq!(event.connected_at(), 1731324924553);
        assert_eq!(event.request_time_epoch(), 1731324924561);
        assert_eq!(event.source_ip(), Some("166.90.225.1"));
        assert_eq!(event.user_agent(), None);
        assert_eq!(event.message_id(), None);
        assert_eq!(event.header("x-forwarded-proto"), Some("https"));
        assert_eq!(event.query("nickname"), None);
        assert!(event.authorizer().is_empty());
        assert_eq!(event.body_text().unwrap(), "");
        assert_eq!(event.disconnect_status_code(), None);
    }

    #[test]
    fn message_event() {
        let request = fixture_request("apiGatewayWebSocketApiMessage.json");
        let event = WebSocketEvent::from_request(&request).unwrap();
        assert_eq!(event.event_type(), EventType::Message);
        assert_eq!(event.route_key(), "chat");
        assert_eq!(event.connection_id(), "BFaT_fALIAMCKug=");
        assert_eq!(event.message_id(), Some("BFaVtfGSIAMCKug="));
        assert_eq!(
            event.body_text().unwrap(),
            r#"{"action": "chat", "message": "Hello from client"}"#
        );
        assert!(!event.is_binary());
        assert_eq!(event.request_time_epoch(), 1731332746514);
        assert_eq!(event.header("host"), None);
        assert_eq!(event.idempotency_key(), None, "API Gateway sends none");
    }

    #[test]
    fn idempotency_key_of_a_reliable_clients_message() {
        let request = edited("apiGatewayWebSocketApiMessage.json", |json| {
            json["requestContext"]["idempotencyKey"] = "c1-42".into();
        });
        let event = WebSocketEvent::from_request(&request).unwrap();
        assert_eq!(event.idempotency_key(), Some("c1-42"));
    }

    #[test]
    fn disconnect_event() {
        let request = fixture_request("apiGatewayWebSocketApiDisconnect.json");
        let event = WebSocketEvent::from_request(&request).unwrap();
        assert_eq!(event.event_type(), EventType::Disconnect);
        assert_eq!(event.route_key(), "$disconnect");
        assert_eq!(event.connection_id(), "BFaT_fALIAMCKug=");
        assert_eq!(event.disconnect_status_code(), Some(1005));
        assert_eq!(
            event.disconnect_reason(),
            Some("Client-side close frame status not set")
        );
        assert_eq!(event.body_bytes(), b"");
    }

    #[test]
    fn query_string_on_connect() {
        let request = edited("apiGatewayWebSocketApiConnect.json", |json| {
            json["queryStringParameters"] = serde_json::json!({"nickname": "alice", "x": "1"});
            json["multiValueQueryStringParameters"] =
                serde_json::json!({"nickname": ["alice"], "x": ["1"]});
        });
        let event = WebSocketEvent::from_request(&request).unwrap();
        assert_eq!(event.query("nickname"), Some("alice"));
        assert_eq!(event.query("x"), Some("1"));
        assert_eq!(event.query("y"), None);
    }

    #[test]
    fn authorizer_context() {
        let request = edited("apiGatewayWebSocketApiMessage.json", |json| {
            json["requestContext"]["authorizer"] = serde_json::json!({
                "principalId": "guest:alice", "nickname": "alice", "guest": true,
                "admin": "false", "level": 3
            });
        });
        let event = WebSocketEvent::from_request(&request).unwrap();
        let authorizer = event.authorizer();
        assert!(!authorizer.is_empty());
        assert_eq!(authorizer.principal_id(), Some("guest:alice"));
        assert_eq!(authorizer.get_str("nickname"), Some("alice"));
        assert_eq!(authorizer.get_bool("guest"), Some(true));
        assert_eq!(authorizer.get_bool("admin"), Some(false));
        assert_eq!(authorizer.get_bool("nickname"), None);
        assert_eq!(authorizer.get("level"), Some(&serde_json::json!(3)));
        assert_eq!(authorizer.get_str("level"), None);
        assert_eq!(authorizer.fields().len(), 5);
    }

    #[test]
    fn binary_body() {
        let request = edited("apiGatewayWebSocketApiMessage.json", |json| {
            json["body"] = "AP+A".into(); // bytes 00 ff 80
            json["isBase64Encoded"] = true.into();
        });
        let event = WebSocketEvent::from_request(&request).unwrap();
        assert!(event.is_binary());
        assert_eq!(event.body_bytes(), [0x00, 0xff, 0x80]);
        assert!(event.body_text().is_err());
    }

    #[test]
    fn missing_fields_and_other_events_are_refused() {
        let request = edited("apiGatewayWebSocketApiMessage.json", |json| {
            json["requestContext"]
                .as_object_mut()
                .unwrap()
                .remove("connectionId");
        });
        assert!(matches!(
            WebSocketEvent::from_request(&request),
            Err(ContextError::Missing("connectionId"))
        ));
        let request = edited("apiGatewayWebSocketApiMessage.json", |json| {
            json["requestContext"]["eventType"] = "PING".into();
        });
        assert!(matches!(
            WebSocketEvent::from_request(&request),
            Err(ContextError::UnknownEventType(t)) if t == "PING"
        ));
        assert!(matches!(
            WebSocketEvent::from_request(&Request::default()),
            Err(ContextError::NotWebSocket)
        ));
    }

    #[test]
    fn event_type_names() {
        for t in [
            EventType::Connect,
            EventType::Message,
            EventType::Disconnect,
        ] {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(t.to_string(), t.as_str());
        }
    }
}
