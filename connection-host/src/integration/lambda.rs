//! `AWS_PROXY` through the Lambda Invoke API: real AWS, LocalStack, `cargo lambda watch`, or any
//! endpoint that speaks it.

use super::http::error_chain;
use super::{Integration, IntegrationError};
use crate::events::{Event, ProxyResponse};
use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::primitives::Blob;

/// Invokes one function synchronously (`RequestResponse`), as API Gateway does.
#[derive(Debug)]
pub struct LambdaIntegration {
    client: aws_sdk_lambda::Client,
    function_name: String,
}

impl LambdaIntegration {
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

#[async_trait::async_trait]
impl Integration for LambdaIntegration {
    async fn invoke(&self, event: &Event) -> Result<ProxyResponse, IntegrationError> {
        let result = self
            .client
            .invoke()
            .function_name(&self.function_name)
            .payload(Blob::new(event.to_json()))
            .send()
            .await;
        match result {
            Ok(out) => {
                let payload = out.payload().map(Blob::as_ref).unwrap_or_default();
                if let Some(kind) = out.function_error() {
                    return Err(IntegrationError::Function(format!(
                        "{kind}: {}",
                        String::from_utf8_lossy(&payload[..payload.len().min(500)])
                    )));
                }
                Ok(ProxyResponse::parse(payload)?)
            }
            // `cargo lambda watch` reports a function error as HTTP 500 rather than 200 with
            // X-Amz-Function-Error; both are the handler's failure, not the endpoint's.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 500 => {
                let body = e.raw().body().bytes().unwrap_or_default();
                Err(IntegrationError::Function(
                    String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
                ))
            }
            Err(e) => Err(IntegrationError::Unavailable(error_chain(&e))),
        }
    }
}
