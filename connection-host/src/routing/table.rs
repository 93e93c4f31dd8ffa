//! The compiled route table: each configured route with its integration, and the route selection
//! expression that picks among them. It holds integrations, so it sits above the expression
//! parser in `routing` and is built with the host.

use super::{RouteSelectionExpression, select_route};
use crate::events::{Event, ProxyResponse};
use crate::integration::IntegrationError;
use crate::limits::RouteThrottle;

/// Why a route's integration gave no response; each is answered as API Gateway answers it.
#[derive(Debug, thiserror::Error)]
pub enum InvokeFailure {
    /// The integration did not answer within the route's timeout.
    #[error("integration timed out")]
    TimedOut,
    /// The integration failed (a function error, an unreachable endpoint, a bad response).
    #[error(transparent)]
    Failed(#[from] IntegrationError),
}

impl InvokeFailure {
    /// What API Gateway tells the client: in a message's error frame, or as the `$connect`
    /// refusal's body.
    pub fn client_message(&self) -> &'static str {
        match self {
            InvokeFailure::TimedOut => "Endpoint request timed out",
            InvokeFailure::Failed(_) => "Internal server error",
        }
    }

    /// The HTTP status API Gateway gives the failure: a `$connect`'s answer, or a message's
    /// `$context.status` in the access log.
    pub fn status(&self) -> u16 {
        match self {
            InvokeFailure::TimedOut => 504,
            InvokeFailure::Failed(_) => 502,
        }
    }
}

/// A configured route: where its events go and how.
#[derive(Debug)]
pub struct Route {
    /// The route key.
    pub key: String,
    /// Where events for this route are delivered.
    pub integration: std::sync::Arc<dyn crate::integration::Integration>,
    /// Whether the integration's response body is sent back to the client.
    pub two_way: bool,
    /// Integration timeout.
    pub timeout: std::time::Duration,
    /// A reliable session's messages for this route are invoked one at a time, in order.
    pub ordered: bool,
    /// The stage's throttling of this route, one bucket for every connection (the table shares
    /// each route behind an `Arc`).
    pub throttle: RouteThrottle,
    /// The route's `MessageCount`, errors and `IntegrationLatency`.
    pub metrics: crate::metrics::RouteMetrics,
}

impl Route {
    /// Takes a token for one request to this route (a routed message, a `$connect`); false when
    /// the route's throttling refuses it, as API Gateway's `RouteSettings` would.
    pub fn admit(&self) -> bool {
        self.throttle.try_acquire()
    }

    /// Delivers `event` to the route's integration within the route's timeout, logging a failure
    /// and recording the call on the route's metrics: the one invocation policy for `$connect`,
    /// routed messages and `$disconnect`.
    pub async fn invoke(&self, event: &Event) -> Result<ProxyResponse, InvokeFailure> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, self.integration.invoke(event)).await;
        let status = match &result {
            Ok(Ok(response)) => Some(response.status_code.unwrap_or(200)),
            _ => None,
        };
        self.metrics.integration_call(started.elapsed(), status);
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                tracing::warn!(route = %self.key, error = %e, "integration failed");
                Err(e.into())
            }
            Err(_) => {
                tracing::warn!(route = %self.key, timeout = ?self.timeout, "integration timed out");
                Err(InvokeFailure::TimedOut)
            }
        }
    }
}

/// The API's routes, with the route selection expression that picks among them.
#[derive(Debug, Clone)]
pub struct RouteTable {
    expression: RouteSelectionExpression,
    routes: std::collections::HashMap<String, std::sync::Arc<Route>>,
}

impl RouteTable {
    /// A table of `routes` selected by `expression`.
    pub fn new(
        expression: RouteSelectionExpression,
        routes: impl IntoIterator<Item = Route>,
    ) -> Self {
        Self {
            expression,
            routes: routes
                .into_iter()
                .map(|r| (r.key.clone(), std::sync::Arc::new(r)))
                .collect(),
        }
    }

    /// The route with exactly this key (`$connect`, `$disconnect`, ...).
    pub fn get(&self, key: &str) -> Option<&std::sync::Arc<Route>> {
        self.routes.get(key)
    }

    /// The route for a message body, or `None` when nothing matches and there is no `$default`.
    pub fn select(&self, body: &str) -> Option<&std::sync::Arc<Route>> {
        let key = select_route(&self.expression, body, |k| self.routes.contains_key(k))?;
        self.routes.get(key.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::message;
    use std::sync::Arc;
    use std::time::Duration;

    /// Answers after `delay`, or fails when `fail` is set.
    #[derive(Debug)]
    struct Slow {
        delay: Duration,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl crate::integration::Integration for Slow {
        async fn invoke(&self, _: &Event) -> Result<ProxyResponse, IntegrationError> {
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(IntegrationError::Function("boom".into()));
            }
            Ok(ProxyResponse::default())
        }
    }

    fn route(delay: Duration, fail: bool) -> Route {
        Route {
            key: "$default".into(),
            integration: Arc::new(Slow { delay, fail }),
            two_way: false,
            timeout: Duration::from_secs(29),
            ordered: false,
            throttle: RouteThrottle::Unlimited,
            metrics: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn invoke_applies_the_route_timeout_and_names_the_failure_as_api_gateway_does() {
        let event = message("{}");
        assert!(
            route(Duration::from_secs(28), false)
                .invoke(&event)
                .await
                .is_ok()
        );
        let timed_out = route(Duration::from_secs(30), false).invoke(&event).await;
        let failure = timed_out.expect_err("29 s is the route's timeout");
        assert!(matches!(failure, InvokeFailure::TimedOut));
        assert_eq!(failure.client_message(), "Endpoint request timed out");
        let failed = route(Duration::ZERO, true).invoke(&event).await;
        assert_eq!(
            failed.expect_err("the integration failed").client_message(),
            "Internal server error"
        );
    }
}
