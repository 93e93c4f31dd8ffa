//! `[access_log]`: one line per connection event, as a stage's access log settings write them.

use super::*;

/// Access logs: a line per `$connect` attempt, routed message and `$disconnect`, formatted from
/// `$context` variables as API Gateway's stage access log settings are (MONITORING.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Write access log lines.
    pub enabled: bool,
    /// The line's format: text with `$context.<name>` variables, checked when the host is built
    /// (at most 3 KB, one line, and naming `$context.requestId` or `$context.extendedRequestId`,
    /// as API Gateway requires).
    pub format: String,
    /// `stdout`, or the path of a file the lines are appended to.
    pub destination: String,
}

/// The default `[access_log] format`: the JSON example API Gateway's console offers for WebSocket
/// APIs, with the integration's latency, the error message and the trace added.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = r#"{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","caller":"$context.identity.caller","user":"$context.identity.user","requestTime":"$context.requestTime","eventType":"$context.eventType","routeKey":"$context.routeKey","status":"$context.status","connectionId":"$context.connectionId","integrationLatency":"$context.integrationLatency","errorMessage":"$context.error.message","xrayTraceId":"$context.xrayTraceId"}"#;

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            format: DEFAULT_ACCESS_LOG_FORMAT.to_string(),
            destination: "stdout".to_string(),
        }
    }
}
