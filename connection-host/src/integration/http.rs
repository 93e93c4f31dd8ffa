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
            .body(event.to_json())
            .send()
            .await
            .map_err(|e| IntegrationError::Unavailable(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| IntegrationError::Unavailable(error_chain(&e)))?;
        if !status.is_success() {
            return Err(IntegrationError::Function(format!(
                "handler answered HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        Ok(ProxyResponse::parse(&body)?)
    }
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
