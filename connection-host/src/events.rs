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
    /// The connection.
    pub connection: Arc<ConnectionContext>,
    /// Type-specific parts.
    pub kind: EventKind,
}

impl Event {
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
        let (message_id, body, is_base64_encoded) = match &self.kind {
            EventKind::Message {
                message_id,
                body,
                is_base64_encoded,
            } => (
                Some(message_id.as_str()),
                Some(body.as_str()),
                *is_base64_encoded,
            ),
            _ => (None, None, false),
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
