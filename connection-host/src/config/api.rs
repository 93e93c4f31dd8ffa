//! `[api]`: the API's identity, its profile and the stage's route throttling.

use super::*;

/// The API's identity as it appears in events and URLs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// `requestContext.apiId`: 10 lower-case letters or digits, like API Gateway's.
    pub api_id: String,
    /// Stage name: the first path segment of every URL (`/{stage}`, `/{stage}/@connections/…`).
    pub stage: String,
    /// `requestContext.domainName`; empty means the `Host` the client connected with, as API Gateway does.
    pub domain_name: String,
    /// Region used for ARNs and Lambda calls without their own region.
    pub region: String,
    /// Account ID used in ARNs.
    pub account_id: String,
    /// Route selection expression, e.g. `$request.body.action`.
    pub route_selection_expression: RouteSelectionExpression,
    /// `default`: the defaults of this file, which add protections API Gateway does not have.
    /// `aws`: those protections off, so the host behaves as API Gateway does (see [`Profile`]).
    /// Settings written in the file or the environment win over the profile's.
    pub profile: Profile,
    /// The stage's `DefaultRouteSettings`: throttling for every route that does not set its own.
    /// Unset (the default): no route is throttled.
    #[serde(skip_serializing_if = "RouteSettings::is_unset")]
    pub default_route_settings: RouteSettings,
}

/// A stage's throttling of one route, as API Gateway's `RouteSettings`: a token bucket per route,
/// counted over every connection this host serves (a cluster of N hosts admits N times the
/// rate). A message over it is not routed and gets the `Too Many Requests` frame; a `$connect`
/// over it answers 429. When only one limit is set, the other is API Gateway's account-level
/// value (10,000 requests a second, burst 5,000); 0 in either throttles every request.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteSettings {
    /// `ThrottlingRateLimit`: steady-state requests per second; may be fractional (`0.5`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttling_rate_limit: Option<f64>,
    /// `ThrottlingBurstLimit`: requests admitted at once, the bucket's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttling_burst_limit: Option<u32>,
}

impl RouteSettings {
    /// Whether neither limit is set.
    pub fn is_unset(&self) -> bool {
        self.throttling_rate_limit.is_none() && self.throttling_burst_limit.is_none()
    }

    /// These settings, each limit left unset taken from `default` (a route's own settings over
    /// the stage's `DefaultRouteSettings`).
    pub fn or(self, default: RouteSettings) -> RouteSettings {
        RouteSettings {
            throttling_rate_limit: self.throttling_rate_limit.or(default.throttling_rate_limit),
            throttling_burst_limit: self
                .throttling_burst_limit
                .or(default.throttling_burst_limit),
        }
    }
}

/// A set of defaults chosen by `api.profile`. It changes only the built-in defaults: a value
/// the file or the environment sets explicitly wins over the profile's (precedence: built-in
/// defaults < profile < file < environment < command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The host's recommended defaults: server pings for dead-peer detection (`limits.ping_interval`
    /// 25 s), a per-connection message rate (`limits.messages_per_second` 100) and 5 connections
    /// per authorizer principal (`limits.connections_per_principal`).
    #[default]
    Default,
    /// API Gateway, point for point: no server pings (`ping_interval = "0s"`), no per-connection
    /// message rate (`messages_per_second = 0`) and no per-principal connection count
    /// (`connections_per_principal = 0`). API Gateway's own quotas (frame and message sizes,
    /// idle and 2 h timeouts, 500 connections per second, the management API rate) stay, as in
    /// every profile.
    Aws,
}

impl Profile {
    /// The values this profile sets, as a partial configuration layered on the built-in defaults.
    fn settings(self) -> serde_json::Value {
        match self {
            Profile::Default => serde_json::json!({}),
            Profile::Aws => serde_json::json!({
                "limits": {
                    "ping_interval": "0s",
                    "messages_per_second": 0,
                    "connections_per_principal": 0,
                }
            }),
        }
    }

    /// The profile `given` (the file and environment) names, and its settings as a figment layer.
    pub(super) fn layer(given: &Figment) -> Result<Serialized<serde_json::Value>, ConfigError> {
        let profile = if given.contains("api.profile") {
            given
                .extract_inner::<Profile>("api.profile")
                .map_err(Box::new)?
        } else {
            Profile::default()
        };
        Ok(Serialized::defaults(profile.settings()))
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            api_id: "local00api".into(),
            stage: "dev".into(),
            domain_name: String::new(),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            route_selection_expression: RouteSelectionExpression::parse("$request.body.action")
                .expect("the default expression parses"),
            profile: Profile::Default,
            default_route_settings: RouteSettings::default(),
        }
    }
}
