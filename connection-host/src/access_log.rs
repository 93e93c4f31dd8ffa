//! Access logs: one line per connection event (`$connect` attempt, routed message, `$disconnect`),
//! formatted from `$context` variables as API Gateway's stage access log settings are.
//!
//! The format is parsed once, when the host is built, into literal text and variables, so a line
//! costs one pass over the segments and one allocation. Lines go through a bounded channel to one
//! writer thread: a connection task never waits for the destination, and when the writer falls
//! behind, lines are dropped and counted rather than stalling connections.

use crate::config::{AccessLogConfig, ConfigError};
use crate::events::ConnectionContext;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Lines that may wait for the writer before new ones are dropped (a few MB at most).
const QUEUE_LINES: usize = 8192;
/// API Gateway's limit on an access log format ("Access log template size").
const MAX_FORMAT_BYTES: usize = 3 * 1024;
/// What a variable without a value is written as, as API Gateway does.
const NO_VALUE: &str = "-";
/// The writer's signal to stop once the lines before it are written: a real line is never empty,
/// since it ends with a newline.
const STOP: String = String::new();

/// Why `[access_log] format` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    /// The format names a variable the host does not know.
    #[error("unknown variable $context.{0}")]
    UnknownVariable(String),
    /// `$context.` is followed by no name.
    #[error("$context. at byte {0} is not followed by a variable name")]
    MissingName(usize),
    /// Longer than API Gateway's 3 KB.
    #[error("{0} bytes; an access log format is at most {MAX_FORMAT_BYTES}")]
    TooLong(usize),
    /// A line break would split one event's line in two.
    #[error("contains a line break; each event is one line")]
    LineBreak,
    /// API Gateway requires a request ID in every format.
    #[error("must contain $context.requestId or $context.extendedRequestId")]
    NoRequestId,
}

/// A parsed access log format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Format {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(Box<str>),
    Variable(Variable),
}

/// A `$context` variable an access log line can show.
#[derive(Debug, Clone, PartialEq)]
enum Variable {
    ApiId,
    AuthorizerProperty(Box<str>),
    ConnectedAt,
    ConnectionId,
    DisconnectReason,
    DisconnectStatusCode,
    DomainName,
    ErrorMessage,
    ErrorMessageString,
    EventType,
    IntegrationError,
    IntegrationLatency,
    IntegrationStatus,
    MessageId,
    RequestId,
    RequestTime,
    RequestTimeEpoch,
    RouteKey,
    SourceIp,
    Stage,
    Status,
    UserAgent,
    XrayTraceId,
    /// A variable API Gateway defines that has no value on this host (IAM callers, WAF, API
    /// keys): written as `-`, so a format copied from API Gateway works unchanged.
    Unavailable,
}

/// API Gateway's WebSocket access log variables that have no value here: IAM and Cognito
/// identities, API keys, WAF, and the authorizer's own timings.
const UNAVAILABLE: &[&str] = &[
    "authenticate.error",
    "authenticate.latency",
    "authenticate.status",
    "authorize.error",
    "authorize.latency",
    "authorize.status",
    "authorizer.error",
    "authorizer.integrationLatency",
    "authorizer.integrationStatus",
    "authorizer.latency",
    "authorizer.requestId",
    "authorizer.status",
    "awsEndpointRequestId",
    "error.responseType",
    "error.validationErrorString",
    "identity.accountId",
    "identity.apiKey",
    "identity.apiKeyId",
    "identity.caller",
    "identity.cognitoAuthenticationProvider",
    "identity.cognitoAuthenticationType",
    "identity.cognitoIdentityId",
    "identity.cognitoIdentityPoolId",
    "identity.principalOrgId",
    "identity.user",
    "identity.userArn",
    "integration.integrationStatus",
    "integration.requestId",
    "integrationStatus",
    "waf.error",
    "waf.latency",
    "waf.status",
    "webaclArn",
    "wafResponseCode",
];

impl Variable {
    fn parse(name: &str) -> Result<Self, FormatError> {
        Ok(match name {
            "apiId" => Self::ApiId,
            "connectedAt" => Self::ConnectedAt,
            "connectionId" => Self::ConnectionId,
            "disconnectReason" => Self::DisconnectReason,
            "disconnectStatusCode" => Self::DisconnectStatusCode,
            "domainName" => Self::DomainName,
            "error.message" => Self::ErrorMessage,
            "error.messageString" => Self::ErrorMessageString,
            "eventType" => Self::EventType,
            "integration.error" => Self::IntegrationError,
            "integrationLatency" | "integration.latency" => Self::IntegrationLatency,
            "integration.status" => Self::IntegrationStatus,
            "messageId" => Self::MessageId,
            "requestId" | "extendedRequestId" => Self::RequestId,
            "requestTime" => Self::RequestTime,
            "requestTimeEpoch" => Self::RequestTimeEpoch,
            "routeKey" => Self::RouteKey,
            "identity.sourceIp" => Self::SourceIp,
            "stage" => Self::Stage,
            "status" => Self::Status,
            "identity.userAgent" => Self::UserAgent,
            "xrayTraceId" => Self::XrayTraceId,
            unavailable if UNAVAILABLE.contains(&unavailable) => Self::Unavailable,
            other => match other.strip_prefix("authorizer.") {
                Some(key) if !key.is_empty() && !key.contains('.') => {
                    Self::AuthorizerProperty(key.into())
                }
                _ => return Err(FormatError::UnknownVariable(other.to_string())),
            },
        })
    }
}

impl Format {
    /// Parses `text`: `$context.` followed by a name (letters, digits, `_` and `.`, a trailing
    /// `.` excluded) is a variable; everything else is written as it is.
    pub(crate) fn parse(text: &str) -> Result<Self, FormatError> {
        const PREFIX: &str = "$context.";
        if text.len() > MAX_FORMAT_BYTES {
            return Err(FormatError::TooLong(text.len()));
        }
        if text.contains(['\n', '\r']) {
            return Err(FormatError::LineBreak);
        }
        let mut segments = Vec::new();
        let mut rest = text;
        let mut has_request_id = false;
        while let Some(at) = rest.find(PREFIX) {
            if at > 0 {
                segments.push(Segment::Literal(rest[..at].into()));
            }
            let after = &rest[at + PREFIX.len()..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(after.len());
            let name = after[..len].trim_end_matches('.');
            if name.is_empty() {
                return Err(FormatError::MissingName(text.len() - rest.len() + at));
            }
            has_request_id |= matches!(name, "requestId" | "extendedRequestId");
            segments.push(Segment::Variable(Variable::parse(name)?));
            rest = &after[name.len()..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.into()));
        }
        if !has_request_id {
            return Err(FormatError::NoRequestId);
        }
        Ok(Self { segments })
    }

    /// The line for `entry`, newline included.
    pub(crate) fn render(&self, entry: &Entry<'_>) -> String {
        let mut line = String::with_capacity(384);
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => line.push_str(text),
                Segment::Variable(variable) => entry.write(variable, &mut line),
            }
        }
        line.push('\n');
        line
    }
}

/// What one access log line reports: an event of a connection and how it ended.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    /// The connection.
    pub connection: &'a ConnectionContext,
    /// `CONNECT`, `MESSAGE` or `DISCONNECT`.
    pub event_type: &'static str,
    /// The route key: the selected route, or the one the event would have gone to.
    pub route_key: &'a str,
    /// `requestId`.
    pub request_id: &'a str,
    /// `requestTimeEpoch`, epoch milliseconds.
    pub request_time_epoch: i64,
    /// The event's `X-Amzn-Trace-Id`.
    pub trace_id: &'a str,
    /// `messageId`, on MESSAGE events that were invoked.
    pub message_id: Option<&'a str>,
    /// The close code and reason, on DISCONNECT events.
    pub disconnect: Option<(u16, &'a str)>,
    /// The status the client saw: 200 for an accepted connection (whose client got its 101) or a
    /// delivered message, otherwise the refusal's HTTP status or the error frame's equivalent.
    pub status: u16,
    /// The message the client got with a failure (`Forbidden`, `Internal server error`, ...).
    pub error: Option<&'a str>,
    /// How long the integration took, when it was invoked.
    pub integration_latency: Option<Duration>,
    /// The `statusCode` of the integration's proxy response.
    pub integration_status: Option<u16>,
    /// Why the integration failed, in the host's words (its log's, not the client's).
    pub integration_error: Option<&'a str>,
}

impl Entry<'_> {
    fn write(&self, variable: &Variable, line: &mut String) {
        let c = self.connection;
        // Numbers are written straight into the line; strings are escaped.
        let text: Option<&str> = match variable {
            Variable::ApiId => Some(&c.api_id),
            Variable::ConnectionId => Some(&c.connection_id),
            Variable::DomainName => Some(&c.domain_name),
            Variable::ErrorMessage => self.error,
            Variable::EventType => Some(self.event_type),
            Variable::IntegrationError => self.integration_error,
            Variable::MessageId => self.message_id,
            Variable::RequestId => Some(self.request_id),
            Variable::RouteKey => Some(self.route_key),
            Variable::SourceIp => Some(&c.source_ip),
            Variable::Stage => Some(&c.stage),
            Variable::UserAgent => c.user_agent.as_deref(),
            Variable::DisconnectReason => self.disconnect.map(|(_, reason)| reason),
            Variable::XrayTraceId => {
                // `$context.xrayTraceId` is the root trace ID alone, `1-{time}-{id}`.
                let root = self.trace_id.split(';').next().unwrap_or_default();
                Some(root.strip_prefix("Root=").unwrap_or(root))
            }
            Variable::ErrorMessageString => {
                // Quoted even without an error, so a JSON format stays JSON.
                line.push('"');
                escape_into(self.error.unwrap_or(NO_VALUE), line);
                line.push('"');
                return;
            }
            Variable::AuthorizerProperty(key) => {
                match c.authorizer.as_ref().and_then(|a| a.get(&**key)) {
                    Some(serde_json::Value::String(s)) => escape_into(s, line),
                    Some(serde_json::Value::Null) | None => line.push_str(NO_VALUE),
                    Some(other) => escape_into(&other.to_string(), line),
                }
                return;
            }
            Variable::RequestTime => {
                line.push_str(&crate::ids::clf_time(self.request_time_epoch));
                return;
            }
            Variable::ConnectedAt => return write_number(Some(c.connected_at), line),
            Variable::RequestTimeEpoch => {
                return write_number(Some(self.request_time_epoch), line);
            }
            Variable::Status => return write_number(Some(self.status), line),
            Variable::IntegrationStatus => return write_number(self.integration_status, line),
            Variable::DisconnectStatusCode => {
                return write_number(self.disconnect.map(|(code, _)| code), line);
            }
            Variable::IntegrationLatency => {
                return write_number(self.integration_latency.map(|d| d.as_millis()), line);
            }
            Variable::Unavailable => None,
        };
        match text {
            Some(text) if !text.is_empty() => escape_into(text, line),
            _ => line.push_str(NO_VALUE),
        }
    }
}

fn write_number(value: Option<impl std::fmt::Display>, line: &mut String) {
    match value {
        Some(n) => {
            let _ = write!(line, "{n}");
        }
        None => line.push_str(NO_VALUE),
    }
}

/// Appends `value` escaped as the contents of a JSON string (`"`, `\` and control characters),
/// so a value can neither end the quoted string it sits in nor break the line.
fn escape_into(value: &str, line: &mut String) {
    let mut start = 0;
    for (i, b) in value.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 | 0x7f => "",
            _ => continue,
        };
        line.push_str(&value[start..i]);
        if escaped.is_empty() {
            let _ = write!(line, "\\u{b:04x}");
        } else {
            line.push_str(escaped);
        }
        start = i + 1;
    }
    line.push_str(&value[start..]);
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq)]
enum Destination {
    Stdout,
    File(std::path::PathBuf),
}

/// The host's access log: the parsed format and the queue to its writer.
#[derive(Debug)]
pub(crate) struct AccessLog {
    format: Format,
    destination: Destination,
    sender: mpsc::Sender<String>,
    /// Taken by [`AccessLog::start`].
    receiver: Mutex<Option<mpsc::Receiver<String>>>,
    dropped: AtomicU64,
}

/// The running writer; [`Writer::finish`] writes what is queued and stops it.
#[derive(Debug)]
pub(crate) struct Writer {
    sender: mpsc::Sender<String>,
    done: oneshot::Receiver<()>,
}

impl AccessLog {
    /// The access log `config` describes, or `None` when it is off. The format is checked even
    /// then, so turning it on later cannot reveal a mistake.
    pub(crate) fn from_config(config: &AccessLogConfig) -> Result<Option<Self>, ConfigError> {
        let format = Format::parse(&config.format).map_err(|e| ConfigError::Invalid {
            field: "access_log.format".into(),
            reason: e.to_string(),
        })?;
        let destination = match config.destination.as_str() {
            "" => {
                return Err(ConfigError::Invalid {
                    field: "access_log.destination".into(),
                    reason: "empty; \"stdout\" or a file path".into(),
                });
            }
            "stdout" => Destination::Stdout,
            path => Destination::File(path.into()),
        };
        if !config.enabled {
            return Ok(None);
        }
        let (sender, receiver) = mpsc::channel(QUEUE_LINES);
        Ok(Some(Self {
            format,
            destination,
            sender,
            receiver: Mutex::new(Some(receiver)),
            dropped: AtomicU64::new(0),
        }))
    }

    /// Queues the line for `entry`; drops it (counting, and warning at every power of two) when
    /// the writer is that far behind.
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        if self.sender.try_send(self.format.render(entry)).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "access log lines dropped: the destination cannot keep up"
                );
            }
        }
    }

    /// Opens the destination (a file is created or appended to) and starts the writer thread.
    pub(crate) fn start(&self) -> std::io::Result<Writer> {
        let mut out: Box<dyn std::io::Write + Send> = match &self.destination {
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("access_log.destination: {e}"))
                    })?,
            ),
        };
        let mut receiver = self
            .receiver
            .lock()
            .expect("access log lock poisoned")
            .take()
            .expect("the access log is started once");
        let (finished, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                write_lines(&mut receiver, &mut *out);
                let _ = finished.send(());
            })?;
        Ok(Writer {
            sender: self.sender.clone(),
            done,
        })
    }
}

/// The writer thread: writes lines in batches (what is queued when it wakes, one `write_all` each,
/// so lines never interleave with the host's own log on stdout) until [`STOP`].
fn write_lines(receiver: &mut mpsc::Receiver<String>, out: &mut dyn std::io::Write) {
    const BATCH_BYTES: usize = 64 * 1024;
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut failed = false;
    while let Some(first) = receiver.blocking_recv() {
        let mut stop = first.is_empty();
        batch.extend_from_slice(first.as_bytes());
        while !stop && batch.len() < BATCH_BYTES {
            match receiver.try_recv() {
                Ok(line) if line.is_empty() => stop = true,
                Ok(line) => batch.extend_from_slice(line.as_bytes()),
                Err(_) => break,
            }
        }
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            // Once, not per batch: a full disk would otherwise flood the host's own log.
            if !failed {
                tracing::error!(error = %e, "access log lines not written");
            }
            failed = true;
        }
        batch.clear();
        if stop {
            return;
        }
    }
}

impl Writer {
    /// Writes every line queued so far, then stops the writer.
    pub(crate) async fn finish(self) {
        if self.sender.send(STOP).await.is_ok() {
            let _ = self.done.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::connection;

    fn entry(connection: &ConnectionContext) -> Entry<'_> {
        Entry {
            connection,
            event_type: "MESSAGE",
            route_key: "sendmessage",
            request_id: "BFaVtH2HoAMFZEQ=",
            request_time_epoch: 1731332746514,
            trace_id: "Root=1-6731ebfc-08e1e656421db73c5d2eef31;Sampled=1",
            message_id: Some("BFaVtfGSIAMCKug="),
            disconnect: None,
            status: 200,
            error: None,
            integration_latency: Some(Duration::from_micros(12_700)),
            integration_status: Some(200),
            integration_error: None,
        }
    }

    #[test]
    fn the_default_format_is_json_with_api_gateway_values() {
        let format = Format::parse(crate::config::DEFAULT_ACCESS_LOG_FORMAT).unwrap();
        let connection = connection();
        let line = format.render(&entry(&connection));
        assert!(line.ends_with("}\n"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "requestId": "BFaVtH2HoAMFZEQ=",
                "ip": "127.0.0.1",
                "caller": "-",
                "user": "-",
                "requestTime": "11/Nov/2024:13:45:46 +0000",
                "eventType": "MESSAGE",
                "routeKey": "sendmessage",
                "status": "200",
                "connectionId": "BFaT_fALIAMCKug=",
                "integrationLatency": "12",
                "errorMessage": "-",
                "xrayTraceId": "1-6731ebfc-08e1e656421db73c5d2eef31",
            })
        );
    }

    #[test]
    fn values_are_escaped_so_a_line_stays_one_json_object() {
        let format = Format::parse(
            r#"{"id":"$context.requestId","error":"$context.error.message","quoted":$context.error.messageString,"who":"$context.authorizer.name","n":"$context.authorizer.n"}"#,
        )
        .unwrap();
        let mut connection = (*connection()).clone();
        connection.authorizer = Some(
            serde_json::json!({"name": "a\"b\\c\nd\u{1}é", "n": 3})
                .as_object()
                .unwrap()
                .clone(),
        );
        let mut entry = entry(&connection);
        entry.error = Some("bad \"thing\"");
        let line = format.render(&entry);
        assert_eq!(line.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"], "bad \"thing\"");
        assert_eq!(v["quoted"], "bad \"thing\"");
        assert_eq!(v["who"], "a\"b\\c\nd\u{1}é");
        assert_eq!(v["n"], "3");
        entry.error = None;
        let v: serde_json::Value = serde_json::from_str(&format.render(&entry)).unwrap();
        assert_eq!(v["error"], "-");
        assert_eq!(v["quoted"], "-");
    }

    #[test]
    fn a_custom_text_format_keeps_its_literals() {
        let format = Format::parse(
            "$context.identity.sourceIp - [$context.requestTime] \"$context.eventType $context.routeKey $context.connectionId\" $context.status $context.requestId. $context.disconnectStatusCode $$context.stage$",
        )
        .unwrap();
        let connection = connection();
        let mut entry = entry(&connection);
        entry.event_type = "DISCONNECT";
        entry.route_key = "$disconnect";
        entry.disconnect = Some((1001, "Going away"));
        assert_eq!(
            format.render(&entry),
            "127.0.0.1 - [11/Nov/2024:13:45:46 +0000] \"DISCONNECT $disconnect BFaT_fALIAMCKug=\" 200 BFaVtH2HoAMFZEQ=. 1001 $dev$\n"
        );
    }

    #[test]
    fn bad_formats_are_refused_with_the_reason() {
        for (format, error) in [
            (
                "$context.requestId $context.nosuch",
                FormatError::UnknownVariable("nosuch".into()),
            ),
            (
                "$context.requestId $context.authorizer.a.b",
                FormatError::UnknownVariable("authorizer.a.b".into()),
            ),
            ("$context.requestId $context.", FormatError::MissingName(19)),
            ("$context.status", FormatError::NoRequestId),
            ("$context.requestId\n", FormatError::LineBreak),
        ] {
            assert_eq!(Format::parse(format), Err(error), "{format}");
        }
        let long = format!("$context.requestId{}", " ".repeat(MAX_FORMAT_BYTES));
        assert!(matches!(Format::parse(&long), Err(FormatError::TooLong(_))));
        let config = AccessLogConfig {
            format: "$context.bogus".into(),
            ..AccessLogConfig::default()
        };
        let err = AccessLog::from_config(&config).unwrap_err().to_string();
        assert_eq!(err, "access_log.format: unknown variable $context.bogus");
    }

    #[tokio::test]
    async fn the_writer_appends_every_queued_line_before_it_stops() {
        let path = std::env::temp_dir().join(format!("access-{}.log", crate::ids::new_id()));
        std::fs::write(&path, "earlier\n").unwrap();
        let config = AccessLogConfig {
            enabled: true,
            format: "$context.requestId $context.status".into(),
            destination: path.to_str().unwrap().into(),
        };
        let log = AccessLog::from_config(&config).unwrap().unwrap();
        let writer = log.start().unwrap();
        let connection = connection();
        for status in 0..100 {
            log.record(&Entry {
                status,
                ..entry(&connection)
            });
        }
        writer.finish().await;
        let written = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 101, "{written}");
        assert_eq!(lines[0], "earlier");
        assert_eq!(lines[100], "BFaVtH2HoAMFZEQ= 99");
    }
}
