//! The event JSON POSTed to a URL that answers with a Lambda proxy response: any web server can be a
//! handler (an extension; API Gateway itself only speaks this format to Lambda).

use super::{Integration, IntegrationError};
use crate::events::{Event, ProxyResponse};

/// POSTs events to one URL over the shared keep-alive pool.
#[derive(Debug)]
pub struct HttpIntegration {
    client: reqwest::Client,
    url: String,
}

impl HttpIntegration {
    /// An integration posting to `url`.
    pub fn new(client: reqwest::Client, url: &str) -> Self {
        Self {
            client,
            url: url.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Integration for HttpIntegration {
    async fn invoke(&self, event: &Event) -> Result<ProxyResponse, IntegrationError> {
        let response = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(super::TRACE_HEADER, &event.trace_id)
            .body(event.to_json())
            .send()
            .await
            .map_err(|e| IntegrationError::Unavailable(error_chain(&e)))?;
        let status = response.status();
        let body = read_limited(response).await?;
        if !status.is_success() {
            return Err(IntegrationError::Function(format!(
                "handler answered HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        Ok(ProxyResponse::parse(&body)?)
    }
}

/// The largest response body the `http` and `HTTP_PROXY` integrations read: Lambda's limit on
/// a synchronous response payload (6 MB), the most a handler can return on AWS. A larger one is
/// a function error, like Lambda's `Function.ResponseSizeTooLarge`, and is not buffered.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// Reads a handler's response body, refusing one over [`MAX_RESPONSE_BYTES`] (by its
/// `Content-Length` before reading, or as soon as the chunks read exceed it).
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
) -> Result<bytes::Bytes, IntegrationError> {
    let too_large = || {
        IntegrationError::Function(format!(
            "handler response larger than the {MAX_RESPONSE_BYTES} bytes an integration may return"
        ))
    };
    let declared = response.content_length().unwrap_or(0);
    if declared > MAX_RESPONSE_BYTES as u64 {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::with_capacity(usize::try_from(declared).unwrap_or(0));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| IntegrationError::Unavailable(error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An error with its causes, for log lines (reqwest's own message omits them).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
