//! `AWS_PROXY` through the Lambda Invoke API: real AWS, LocalStack, `cargo lambda watch`, the
//! host's own local runtime (the functions of `[functions]`), or any endpoint that speaks it.

use super::http::error_chain;
use super::{Integration, IntegrationError};
use crate::events::{Event, ProxyResponse};
use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::primitives::Blob;
use bytes::Bytes;
use std::sync::Arc;

/// Runs a Lambda function synchronously (`RequestResponse`): payload in, result payload out.
///
/// A function error (the handler failed, crashed or timed out) is [`IntegrationError::Function`]
/// carrying the function's error payload as text, usually `{"errorType":…,"errorMessage":…}`, so
/// callers such as the authorizer can read `errorMessage`.
#[async_trait::async_trait]
pub trait LambdaInvoker: Send + Sync + std::fmt::Debug {
    /// Invokes the function once with `payload`, as part of the X-Ray trace `trace_id` (an
    /// `X-Amzn-Trace-Id` value, which the function sees as `_X_AMZN_TRACE_ID`).
    async fn invoke(&self, payload: Bytes, trace_id: &str) -> Result<Bytes, IntegrationError>;
}

/// Finds a function the host runs itself by name (or ARN): how the host's local runtime is
/// offered to integrations, which know nothing of it beyond this.
pub type LocalLookup<'a> = &'a (dyn Fn(&str) -> Option<Arc<dyn LambdaInvoker>> + Sync);

/// The invoker for `function_name`: the local runtime when `local` knows the function and no
/// `endpoint_url` is given, otherwise the Lambda Invoke API through the AWS SDK.
pub async fn lambda_invoker(
    function_name: &str,
    endpoint_url: &str,
    region: &str,
    local: LocalLookup<'_>,
) -> Arc<dyn LambdaInvoker> {
    if endpoint_url.is_empty()
        && let Some(function) = local(function_name)
    {
        return function;
    }
    Arc::new(SdkInvoker::new(function_name, endpoint_url, region).await)
}

/// The Lambda Invoke API through `aws-sdk-lambda`.
#[derive(Debug)]
pub struct SdkInvoker {
    client: aws_sdk_lambda::Client,
    function_name: String,
}

impl SdkInvoker {
    /// A client for `function_name`; an empty `endpoint_url` uses the standard AWS configuration.
    pub async fn new(function_name: &str, endpoint_url: &str, region: &str) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            // API Gateway does not retry a failed invocation; retrying could run a handler twice.
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if !endpoint_url.is_empty() {
            loader = loader.endpoint_url(endpoint_url);
        }
        let sdk = loader.load().await;
        Self {
            client: aws_sdk_lambda::Client::new(&sdk),
            function_name: function_name.to_string(),
        }
    }
}

/// At most this much of an error payload goes into messages and logs.
const ERROR_EXCERPT: usize = 1000;

fn excerpt(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(ERROR_EXCERPT)]).into_owned()
}

#[async_trait::async_trait]
impl LambdaInvoker for SdkInvoker {
    async fn invoke(&self, payload: Bytes, trace_id: &str) -> Result<Bytes, IntegrationError> {
        // The SDK sets this header itself only inside a Lambda function (from
        // `_X_AMZN_TRACE_ID`), and leaves one already set alone. Trace IDs are the host's own or
        // validated client headers, so always valid header values.
        let trace = trace_id.to_string();
        let result = self
            .client
            .invoke()
            .function_name(&self.function_name)
            .payload(Blob::new(payload))
            .customize()
            .mutate_request(move |request| {
                request
                    .headers_mut()
                    .insert(super::TRACE_HEADER, trace.clone());
            })
            .send()
            .await;
        match result {
            Ok(out) => {
                let payload = out.payload().map(Blob::as_ref).unwrap_or_default();
                if out.function_error().is_some() {
                    return Err(IntegrationError::Function(excerpt(payload)));
                }
                Ok(Bytes::copy_from_slice(payload))
            }
            // `cargo lambda watch` reports a function error as HTTP 500 rather than 200 with
            // X-Amz-Function-Error; both are the handler's failure, not the endpoint's.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 500 => {
                let body = e.raw().body().bytes().unwrap_or_default();
                Err(IntegrationError::Function(excerpt(body)))
            }
            Err(e) => Err(IntegrationError::Unavailable(error_chain(&e))),
        }
    }
}

/// A route's Lambda proxy integration: the event JSON in, a proxy response out.
#[derive(Debug)]
pub struct LambdaIntegration {
    invoker: Arc<dyn LambdaInvoker>,
}

impl LambdaIntegration {
    /// An integration calling `invoker`.
    pub fn new(invoker: Arc<dyn LambdaInvoker>) -> Self {
        Self { invoker }
    }
}

#[async_trait::async_trait]
impl Integration for LambdaIntegration {
    async fn invoke(&self, event: &Event) -> Result<ProxyResponse, IntegrationError> {
        let payload = self
            .invoker
            .invoke(Bytes::from(event.to_json()), &event.trace_id)
            .await?;
        Ok(ProxyResponse::parse(&payload)?)
    }
}
