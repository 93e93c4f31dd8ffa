//! Integrations: how an event reaches a handler. One trait, several transports.

mod http;
mod http_proxy;
mod lambda;
mod mock;

use crate::config::{ApiConfig, IntegrationConfig};
use crate::events::{Event, EventKind, MalformedResponse, ProxyResponse};
use std::sync::Arc;

pub use self::http::{HttpIntegration, MAX_RESPONSE_BYTES};
pub use http_proxy::HttpProxyIntegration;
pub use lambda::{LambdaIntegration, LambdaInvoker, LocalLookup, SdkInvoker, lambda_invoker};
pub use mock::MockIntegration;

/// The header carrying an event's X-Ray trace to an HTTP integration or the Lambda Invoke API.
pub const TRACE_HEADER: &str = "X-Amzn-Trace-Id";

/// Why an invocation produced no usable response.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    /// The handler ran and failed (a Lambda function error, an HTTP handler's 5xx).
    #[error("function error: {0}")]
    Function(String),
    /// The integration endpoint could not be reached or refused the call.
    #[error("integration endpoint unavailable: {0}")]
    Unavailable(String),
    /// The handler answered with something that is not a proxy response.
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
}

/// A transport that delivers events to a handler and returns its (proxy-shaped) response.
///
/// The caller enforces the route's timeout by dropping the future, so implementations need no timer.
#[async_trait::async_trait]
pub trait Integration: Send + Sync + std::fmt::Debug {
    /// Delivers one event.
    async fn invoke(&self, event: &Event) -> Result<ProxyResponse, IntegrationError>;
}

/// Builds the integration a config entry describes; `http` is the shared, pooled HTTP client and
/// `local` the functions the host runs itself.
pub async fn build(
    config: &IntegrationConfig,
    api: &ApiConfig,
    http: &reqwest::Client,
    local: LocalLookup<'_>,
) -> Arc<dyn Integration> {
    match config {
        IntegrationConfig::Lambda {
            function_name,
            endpoint_url,
            region,
        } => {
            let region = if region.is_empty() {
                &api.region
            } else {
                region
            };
            Arc::new(LambdaIntegration::new(
                lambda_invoker(function_name, endpoint_url, region, local).await,
            ))
        }
        IntegrationConfig::Http { url } => Arc::new(HttpIntegration::new(http.clone(), url)),
        IntegrationConfig::HttpProxy {
            url,
            method,
            request_parameters,
        } => Arc::new(HttpProxyIntegration::new(
            http.clone(),
            url,
            method,
            request_parameters,
        )),
        IntegrationConfig::Mock {
            status_code,
            response_template,
        } => Arc::new(MockIntegration::new(*status_code, response_template)),
    }
}

/// The value of `$context.<name>` for an event, as mapping expressions and MOCK templates see it.
pub fn context_variable(event: &Event, name: &str) -> Option<String> {
    let c = &event.connection;
    Some(match name {
        "connectionId" => c.connection_id.clone(),
        "routeKey" => event.route_key.clone(),
        "requestId" | "extendedRequestId" => event.request_id.clone(),
        "eventType" => event.event_type().to_string(),
        "messageDirection" => "IN".to_string(),
        "stage" => c.stage.to_string(),
        "apiId" => c.api_id.to_string(),
        "domainName" => c.domain_name.clone(),
        "connectedAt" => c.connected_at.to_string(),
        "requestTimeEpoch" => event.request_time_epoch.to_string(),
        "requestTime" => crate::ids::clf_time(event.request_time_epoch),
        "identity.sourceIp" => c.source_ip.clone(),
        "identity.userAgent" => c.user_agent.clone()?,
        "messageId" => match &event.kind {
            EventKind::Message { message_id, .. } => message_id.clone(),
            _ => return None,
        },
        "disconnectStatusCode" => match &event.kind {
            EventKind::Disconnect { status_code, .. } => status_code.to_string(),
            _ => return None,
        },
        "disconnectReason" => match &event.kind {
            EventKind::Disconnect { reason, .. } => reason.clone(),
            _ => return None,
        },
        other => {
            let key = other.strip_prefix("authorizer.")?;
            let v = c.authorizer.as_ref()?.get(key)?;
            match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        }
    })
}
