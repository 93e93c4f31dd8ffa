//! The compiled route table: each configured route with its integration, and the route selection
//! expression that picks among them. It holds integrations, so it sits above the expression
//! parser in `routing` and is built with the host.

use super::{RouteSelectionExpression, select_route};
use crate::limits::RouteThrottle;

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
    /// The stage's throttling of this route, one bucket for every connection (the table shares
    /// each route behind an `Arc`).
    pub throttle: RouteThrottle,
}

impl Route {
    /// Takes a token for one request to this route (a routed message, a `$connect`); false when
    /// the route's throttling refuses it, as API Gateway's `RouteSettings` would.
    pub fn admit(&self) -> bool {
        self.throttle.try_acquire()
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
