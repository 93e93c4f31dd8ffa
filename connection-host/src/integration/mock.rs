//! `MOCK`: answers without a backend, the usual way to accept `$connect` or echo without a handler.

use super::{Integration, IntegrationError, context_variable};
use crate::events::{Event, ProxyResponse};

/// A mocked integration: a fixed status and a body rendered from a template.
#[derive(Debug)]
pub struct MockIntegration {
    status_code: u16,
    template: String,
}

impl MockIntegration {
    /// A mock answering `status_code`, with `template` as the two-way response body.
    pub fn new(status_code: u16, template: &str) -> Self {
        Self {
            status_code,
            template: template.to_string(),
        }
    }

    /// Substitutes `$input.body` and `$context.<name>`; unknown variables render empty, as in VTL.
    fn render(&self, event: &Event) -> String {
        let mut out = String::with_capacity(self.template.len() + event.body().map_or(0, str::len));
        let mut rest = self.template.as_str();
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            if let Some(after) = tail.strip_prefix("$input.body") {
                out.push_str(event.body().unwrap_or(""));
                rest = after;
            } else if let Some(after) = tail.strip_prefix("$context.") {
                let len = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                    .unwrap_or(after.len());
                let name = after[..len].trim_end_matches('.');
                out.push_str(&context_variable(event, name).unwrap_or_default());
                rest = &after[name.len()..];
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }
}

#[async_trait::async_trait]
impl Integration for MockIntegration {
    async fn invoke(&self, event: &Event) -> Result<ProxyResponse, IntegrationError> {
        let is_base64_encoded = matches!(
            event.kind,
            crate::events::EventKind::Message {
                is_base64_encoded: true,
                ..
            }
        );
        Ok(ProxyResponse {
            status_code: Some(self.status_code),
            headers: Vec::new(),
            body: (!self.template.is_empty()).then(|| self.render(event)),
            is_base64_encoded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing;

    #[tokio::test]
    async fn renders_body_and_context_variables() {
        let m = MockIntegration::new(
            200,
            "echo $input.body from $context.connectionId ($context.routeKey). $5 $context.nope!",
        );
        let r = m.invoke(&testing::message("hi")).await.unwrap();
        assert_eq!(r.status_code, Some(200));
        assert_eq!(
            r.body.as_deref(),
            Some("echo hi from BFaT_fALIAMCKug= ($default). $5 !")
        );
        let empty = MockIntegration::new(403, "")
            .invoke(&testing::message("x"))
            .await
            .unwrap();
        assert_eq!((empty.status_code, empty.body), (Some(403), None));
    }
}
