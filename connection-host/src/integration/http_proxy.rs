//! `HTTP_PROXY`: the message body passes through to an HTTP endpoint and its response passes back.
//!
//! `$connect` and `$disconnect` are sent without a body. The connection ID is not sent unless a
//! request parameter maps it, as on API Gateway (`integration.request.header.connectionId =
//! context.connectionId`).

use super::http::{error_chain, read_limited};
use super::{Integration, IntegrationError, context_variable};
use crate::events::{Event, EventKind, ProxyResponse};
use std::collections::BTreeMap;

/// Where a mapped request parameter goes.
#[derive(Debug, Clone)]
enum Target {
    Header(String),
    Query(String),
}

/// Where a mapped request parameter's value comes from.
#[derive(Debug, Clone)]
enum Source {
    Literal(String),
    Context(String),
    Header(String),
    Query(String),
    Body(String),
}

/// An `HTTP_PROXY` integration.
#[derive(Debug)]
pub struct HttpProxyIntegration {
    client: reqwest::Client,
    url: String,
    method: reqwest::Method,
    parameters: Vec<(Target, Source)>,
}

impl HttpProxyIntegration {
    /// An integration calling `url` with `method`; unrecognised parameter mappings are ignored with
    /// a warning, so a template written for API Gateway still loads.
    pub fn new(
        client: reqwest::Client,
        url: &str,
        method: &str,
        request_parameters: &BTreeMap<String, String>,
    ) -> Self {
        let mut parameters = Vec::new();
        for (to, from) in request_parameters {
            let target = if let Some(h) = to.strip_prefix("integration.request.header.") {
                Target::Header(h.to_string())
            } else if let Some(q) = to.strip_prefix("integration.request.querystring.") {
                Target::Query(q.to_string())
            } else {
                tracing::warn!(parameter = %to, "unsupported request parameter target; ignored");
                continue;
            };
            let source = if let Some(lit) =
                from.strip_prefix('\'').and_then(|f| f.strip_suffix('\''))
            {
                Source::Literal(lit.to_string())
            } else if let Some(c) = from.strip_prefix("context.") {
                Source::Context(c.to_string())
            } else if let Some(h) = from.strip_prefix("route.request.header.") {
                Source::Header(h.to_string())
            } else if let Some(q) = from.strip_prefix("route.request.querystring.") {
                Source::Query(q.to_string())
            } else if let Some(p) = from.strip_prefix("route.request.body.") {
                Source::Body(p.to_string())
            } else {
                tracing::warn!(parameter = %from, "unsupported request parameter source; ignored");
                continue;
            };
            parameters.push((target, source));
        }
        Self {
            client,
            url: url.to_string(),
            method: reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST),
            parameters,
        }
    }

    fn resolve(source: &Source, event: &Event) -> Option<String> {
        match source {
            Source::Literal(s) => Some(s.clone()),
            Source::Context(name) => context_variable(event, name),
            Source::Header(h) => match &event.kind {
                EventKind::Connect { headers, .. } => headers.get(h).map(str::to_string),
                _ => None,
            },
            Source::Query(q) => match &event.kind {
                EventKind::Connect { query, .. } => query
                    .as_ref()?
                    .0
                    .iter()
                    .find(|(k, _)| k == q)?
                    .1
                    .last()
                    .cloned(),
                _ => None,
            },
            Source::Body(path) => {
                let value: serde_json::Value = serde_json::from_str(event.body()?).ok()?;
                let found = path.split('.').try_fold(&value, |v, key| v.get(key))?;
                Some(match found {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl Integration for HttpProxyIntegration {
    async fn invoke(&self, event: &Event) -> Result<ProxyResponse, IntegrationError> {
        // API Gateway's HTTP integrations pass the trace on; a mapped header may still set it.
        let mut request = self
            .client
            .request(self.method.clone(), &self.url)
            .header(super::TRACE_HEADER, &event.trace_id);
        let mut query = Vec::new();
        for (target, source) in &self.parameters {
            let Some(value) = Self::resolve(source, event) else {
                continue;
            };
            match target {
                Target::Header(h) => request = request.header(h.as_str(), value),
                Target::Query(q) => query.push((q.clone(), value)),
            }
        }
        if !query.is_empty() {
            request = request.query(&query);
        }
        if let EventKind::Message { body, .. } = &event.kind {
            let json = matches!(body.trim_start().as_bytes().first(), Some(b'{' | b'['));
            let content_type = if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            request = request
                .header(http::header::CONTENT_TYPE, content_type)
                .body(body.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|e| IntegrationError::Unavailable(error_chain(&e)))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = read_limited(response).await?;
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok(ProxyResponse {
            status_code: Some(status),
            headers,
            body: (!body.is_empty()).then_some(body),
            is_base64_encoded: false,
        })
    }
}
