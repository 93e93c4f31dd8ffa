//! The host's one typed configuration: API Gateway's quotas are the defaults.
//!
//! Sources, later ones winning: the built-in defaults, a TOML file, environment variables
//! (`CONNECTION_HOST_` + the field path with `__` between levels, e.g.
//! `CONNECTION_HOST_LIMITS__IDLE_TIMEOUT=5m`), then command-line flags.

use crate::routing::RouteSelectionExpression;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The complete, commented default configuration file (`connection-host config default`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// Prefix of the environment variables that override configuration fields.
pub const ENV_PREFIX: &str = "CONNECTION_HOST_";

/// Variables under [`ENV_PREFIX`] that belong to the command line, not to the configuration
/// (`CONNECTION_HOST_CONFIG` names the file), so they are not read as fields.
pub const COMMAND_LINE_ENV: &[&str] = &["config"];

/// Everything the host needs to know; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners and process behaviour.
    pub server: ServerConfig,
    /// The API's identity as it appears in events and URLs.
    pub api: ApiConfig,
    /// Quotas and timers.
    pub limits: LimitsConfig,
    /// Routes by route key (`$connect`, `$disconnect`, `$default`, or a custom key).
    pub routes: BTreeMap<String, RouteConfig>,
    /// Integrations by name, referred to from routes.
    pub integrations: BTreeMap<String, IntegrationConfig>,
    /// Authorizers by name (Lambda `REQUEST` or built-in JWT), referred to from the `$connect` route.
    pub authorizers: BTreeMap<String, AuthorizerConfig>,
    /// Lambda functions the host runs itself (its local Lambda runtime), by function name.
    pub functions: BTreeMap<String, FunctionConfig>,
    /// A CloudFormation/SAM template to read the API definition from instead of `[routes]`,
    /// `[integrations]` and `[authorizers]`.
    pub template: TemplateConfig,
    /// Behaviour beyond API Gateway's; all off by default.
    pub extensions: ExtensionsConfig,
    /// Where connection records and group memberships live.
    pub store: StoreConfig,
    /// This host's identity in a cluster of hosts sharing one DynamoDB store.
    pub cluster: ClusterConfig,
    /// The `@connections` management API (and the Lambda Invoke API beside it).
    pub management: ManagementConfig,
    /// Where the template-defined settings came from; not part of the file format.
    #[serde(skip)]
    pub provenance: Provenance,
}

/// Which settings the file and the environment set themselves, rather than the defaults: a
/// template refuses to replace a setting given both ways. Filled by [`Config::load`] and
/// [`Config::from_toml`]; a `Config` built in code has none.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The keys of [`TEMPLATE_KEYS`], `api.stage`, `api.default_route_settings`, and each
    /// function's `timeout` and `memory_size` (`functions.NAME.timeout`) that the file or the
    /// environment set.
    pub given: Vec<String>,
    /// Whether `--stage` chose the stage (it wins over a template's).
    pub stage_flag: bool,
}

/// Listeners and process behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for client WebSockets and, unless `management_listen` is set, the `@connections` API.
    pub listen: SocketAddr,
    /// Optional separate (internal) listener for the `@connections` API and `/health`; when set, the
    /// public listener no longer serves the management API.
    pub management_listen: Option<SocketAddr>,
    /// TCP listen backlog; bursts of connects overflow small backlogs.
    pub backlog: u32,
    /// How long a client may take to send its HTTP request head, counted from the TCP accept (so
    /// the TLS handshake on a TLS listener is part of it).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// On shutdown, how long to wait for connections to close and `$disconnect`s to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Optional folder of files served to plain HTTP `GET`s on the public listener outside the
    /// stage's paths (`/` serves its `index.html`), e.g. the demo chat page.
    pub static_dir: Option<std::path::PathBuf>,
    /// Certificate and key for the public listener: when set it speaks only TLS (`wss://`, and
    /// `https://` for the management API and static files it serves).
    pub tls: Option<TlsConfig>,
    /// Certificate and key for the separate `management_listen` listener; unset, it stays plain
    /// HTTP (fine on a private network or loopback, where the local functions reach it too).
    pub management_tls: Option<TlsConfig>,
}

/// A listener's TLS identity, from PEM files read at start (TLS 1.2 and 1.3, ALPN `http/1.1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain: the server's certificate first, then intermediates.
    pub cert_file: std::path::PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: std::path::PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            management_listen: None,
            backlog: 4096,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            static_dir: None,
            tls: None,
            management_tls: None,
        }
    }
}

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
    fn layer(given: &Figment) -> Result<Serialized<serde_json::Value>, ConfigError> {
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

/// Quotas and timers; the defaults are API Gateway's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest inbound WebSocket frame in bytes (API Gateway: 32 KB); larger closes with 1009.
    /// Also the largest outbound frame: longer messages are sent fragmented.
    pub frame_size: usize,
    /// Largest inbound message (after reassembly) in bytes (API Gateway: 128 KB); larger closes with 1009.
    pub message_size: usize,
    /// Largest PostToConnection payload in bytes (API Gateway: 131072); larger answers 413.
    pub post_size: usize,
    /// A connection with no data message in either direction for this long is closed with 1001.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections are closed with 1001 after this long, whatever their activity.
    #[serde(with = "humantime_serde")]
    pub max_connection_duration: Duration,
    /// How often the host pings a peer it has heard nothing from (dead-peer detection); 0 disables.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Pings in a row left unanswered before the connection is closed as dead.
    pub missed_pongs: u32,
    /// Bytes of outbound messages queued per connection before PostToConnection answers 429.
    pub outbound_queue_bytes: usize,
    /// A connection whose outbound queue stays full this long is closed (1008).
    #[serde(with = "humantime_serde")]
    pub outbound_full_grace: Duration,
    /// Integration invocations in flight per connection; further messages wait (TCP backpressure).
    pub max_inflight_messages: usize,
    /// Read buffer per connection in bytes; small buffers keep idle connections cheap.
    pub read_buffer_size: usize,
    /// Origins whose pages may connect (`Origin` header), e.g. `https://app.example.com` or
    /// `https://*.example.com` (any subdomain); others get 403. Empty allows every origin. A
    /// request without `Origin` (a client that is not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// New connections per second over the whole host, in bursts of up to as many (API Gateway:
    /// 500 per account and Region); beyond it the upgrade answers 429. 0 means unlimited.
    pub connections_per_second: u32,
    /// Concurrent connections (open or in their handshake) per source IP; beyond it the upgrade
    /// answers 429. 0 means unlimited; behind a load balancer every client has its address.
    pub connections_per_ip: u32,
    /// Concurrent connections per authorizer `principalId`; beyond it the upgrade answers 429.
    /// Connections without an authorizer are not counted. 0 means unlimited.
    pub connections_per_principal: u32,
    /// Inbound messages per second per connection; a message over the rate is not routed and the
    /// client gets a `Too Many Requests` frame. 0 means unlimited.
    pub messages_per_second: u32,
    /// Messages a connection may send at once above `messages_per_second` after a quiet spell.
    pub message_burst: u32,
    /// Throttled messages a connection may accumulate within 10 s; one more closes it with 1008.
    /// 0 never closes.
    pub max_throttled_messages: u32,
    /// `@connections` and `@groups` calls per second over the whole host (API Gateway: 10,000
    /// requests per second per account and Region); beyond it they answer 429
    /// `LimitExceededException`. 0 means unlimited.
    pub management_requests_per_second: u32,
    /// Management calls allowed at once above the rate (API Gateway: 5,000).
    pub management_burst: u32,
    /// TCP connections the public listener holds at once (WebSockets, their handshakes, and plain
    /// HTTP); counted from the accept, before the request head is read. Beyond it a connection
    /// gets a fixed 503 and is closed (on a TLS listener, closed without an answer), so a load
    /// balancer tries another host. Default 100,000, above what one host is sized for; 0 means
    /// unlimited. The separate `server.management_listen` is not counted.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            frame_size: 32 * 1024,
            message_size: 128 * 1024,
            post_size: 131_072,
            idle_timeout: Duration::from_secs(600),
            max_connection_duration: Duration::from_secs(7200),
            ping_interval: Duration::from_secs(25),
            missed_pongs: 2,
            outbound_queue_bytes: 1024 * 1024,
            outbound_full_grace: Duration::from_secs(10),
            max_inflight_messages: 16,
            read_buffer_size: 4096,
            allowed_origins: Vec::new(),
            connections_per_second: 500,
            connections_per_ip: 0,
            connections_per_principal: 5,
            messages_per_second: 100,
            message_burst: 200,
            max_throttled_messages: 100,
            management_requests_per_second: 10_000,
            management_burst: 5_000,
            max_connections: 100_000,
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name of the integration in `[integrations]`.
    pub integration: String,
    /// Two-way route (a `$default` route response): the integration's `body` is sent back to the client.
    #[serde(default)]
    pub two_way: bool,
    /// Integration timeout, 50 ms to 29 s (API Gateway's range and default).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Name of the authorizer in `[authorizers]` that must allow a connection before `$connect`
    /// runs; only the `$connect` route may have one, as on API Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<String>,
    /// This route's `ThrottlingRateLimit` (requests per second, may be fractional); unset takes
    /// `api.default_route_settings`' (see [`RouteSettings`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling_rate_limit: Option<f64>,
    /// This route's `ThrottlingBurstLimit`; unset takes `api.default_route_settings`'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling_burst_limit: Option<u32>,
}

impl RouteConfig {
    /// The route's throttling: its own limits, each unset one taken from the stage's `default`.
    pub fn settings(&self, default: RouteSettings) -> RouteSettings {
        RouteSettings {
            throttling_rate_limit: self.throttling_rate_limit,
            throttling_burst_limit: self.throttling_burst_limit,
        }
        .or(default)
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(29)
}

/// How a route's events reach a handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum IntegrationConfig {
    /// `AWS_PROXY`: the Lambda Invoke API with the event JSON as payload (AWS, LocalStack, `cargo lambda watch`).
    Lambda {
        /// Function name or ARN.
        function_name: String,
        /// Invoke API endpoint; empty uses the standard AWS configuration (`AWS_ENDPOINT_URL`, …).
        #[serde(default)]
        endpoint_url: String,
        /// Region; empty uses `api.region`.
        #[serde(default)]
        region: String,
    },
    /// The event JSON POSTed to a URL, which answers with a Lambda proxy response (an extension
    /// that lets any web server act as a handler).
    Http {
        /// Endpoint URL.
        url: String,
    },
    /// `HTTP_PROXY`: the message body passed through to a URL and the response passed back.
    HttpProxy {
        /// Endpoint URL.
        url: String,
        /// HTTP method (API Gateway's `IntegrationMethod`).
        #[serde(default = "default_method")]
        method: String,
        /// API Gateway request parameters, e.g. `"integration.request.header.connectionId" =
        /// "context.connectionId"`.
        #[serde(default)]
        request_parameters: BTreeMap<String, String>,
    },
    /// `MOCK`: answers without a backend.
    Mock {
        /// Status code of the mocked response (a non-2xx on `$connect` rejects the connection).
        #[serde(default = "default_status")]
        status_code: u16,
        /// Body sent back on two-way routes; `$input.body` and `$context.<name>` are substituted.
        #[serde(default)]
        response_template: String,
    },
}

/// An authorizer guarding `$connect`, selected by `type`: `request` (the default, so a table
/// without `type` is a Lambda `REQUEST` authorizer) or `jwt` (the host verifies a JWT itself, an
/// extension).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthorizerConfig {
    /// API Gateway's Lambda `REQUEST` authorizer (its `CUSTOM` authorization type).
    Request(RequestAuthorizerConfig),
    /// Built-in JWT verification, for hosts without an authorizer function (an extension).
    Jwt(JwtAuthorizerConfig),
}

impl<'de> Deserialize<'de> for AuthorizerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Tagged {
            Request(RequestAuthorizerConfig),
            Jwt(JwtAuthorizerConfig),
        }
        // Serde's tagged enums have no default variant; the tag is filled in instead, so that
        // configurations written before `type` existed keep loading as Lambda authorizers.
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        table
            .entry("type")
            .or_insert_with(|| serde_json::Value::from("request"));
        match Tagged::deserialize(serde_json::Value::Object(table)) {
            Ok(Tagged::Request(c)) => Ok(Self::Request(c)),
            Ok(Tagged::Jwt(c)) => Ok(Self::Jwt(c)),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

/// A Lambda `REQUEST` authorizer (API Gateway's `CUSTOM` authorization type), run on `$connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestAuthorizerConfig {
    /// The authorizer function's name or ARN.
    pub function_name: String,
    /// Invoke API endpoint; empty uses the host's own function of that name when `[functions]`
    /// declares one, else the standard AWS configuration (`AWS_ENDPOINT_URL`, …).
    #[serde(default)]
    pub endpoint_url: String,
    /// Region; empty uses `api.region`.
    #[serde(default)]
    pub region: String,
    /// Request parameters that must all be present and non-empty, or the client gets 401 without
    /// the function being called: `route.request.header.NAME`, `route.request.querystring.NAME`.
    #[serde(default)]
    pub identity_sources: Vec<crate::authorizer::identity::IdentitySource>,
}

/// Built-in JWT verification on `$connect` (an extension): a connection is allowed when its token
/// is signed by one of `keys` and its claims pass the checks; anything else is 401 before any
/// integration runs. The claims become `requestContext.authorizer`, with `principalId` = `sub`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtAuthorizerConfig {
    /// Where the client puts its token: `header` (`Authorization: Bearer TOKEN`), `query` (the
    /// `query_parameter`), or `subprotocol` (offered in `Sec-WebSocket-Protocol` right after
    /// `subprotocol_marker`, for browsers, which cannot set headers on a WebSocket).
    pub token_source: JwtTokenSource,
    /// The query-string parameter holding the token when `token_source = "query"`.
    pub query_parameter: String,
    /// With `token_source = "subprotocol"`: the protocol the client offers just before its token,
    /// e.g. `new WebSocket(url, ["bearer", token])`. The 101 answers with it (or with the
    /// protocol `$connect` selects), never with the token.
    pub subprotocol_marker: String,
    /// Required `iss` claim; empty does not check the issuer.
    pub issuer: String,
    /// Accepted `aud` values (the token must name one); empty does not check the audience.
    pub audience: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf` (whole seconds, at most 1h).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The keys tokens may be signed with; each pins the algorithm it accepts.
    pub keys: Vec<JwtKeyConfig>,
}

impl Default for JwtAuthorizerConfig {
    fn default() -> Self {
        Self {
            token_source: JwtTokenSource::Header,
            query_parameter: "token".into(),
            subprotocol_marker: "bearer".into(),
            issuer: String::new(),
            audience: Vec::new(),
            leeway: Duration::from_secs(60),
            keys: Vec::new(),
        }
    }
}

/// Where a JWT authorizer reads the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JwtTokenSource {
    /// `Authorization: Bearer TOKEN`.
    #[default]
    Header,
    /// A query-string parameter (`query_parameter`).
    Query,
    /// An offered `Sec-WebSocket-Protocol` entry, after `subprotocol_marker`.
    Subprotocol,
}

/// One verification key of a JWT authorizer: exactly one of `secret_env`, `secret_file`,
/// `secret` (HMAC), `pem_file` (RSA, EC or Ed25519 public key) or `jwks_file` (a JWK Set).
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// The one algorithm this key verifies (`HS256`, `RS256`, `ES256`, `EdDSA`, …), whatever a
    /// token's header claims. Required except for `jwks_file`, whose keys use their `alg` (or
    /// this, for keys without one).
    pub algorithm: Option<jsonwebtoken::Algorithm>,
    /// Key ID: when set, the key verifies only tokens whose header names this `kid`; empty
    /// verifies tokens of its algorithm with or without one. Not used with `jwks_file`, whose
    /// keys carry their own.
    pub kid: String,
    /// Name of an environment variable holding the HMAC secret (its bytes as they are).
    pub secret_env: String,
    /// A file holding the HMAC secret (surrounding whitespace is ignored), e.g. a mounted secret.
    pub secret_file: Option<std::path::PathBuf>,
    /// The HMAC secret itself, for tests and local setups; keep real secrets out of files under
    /// version control.
    pub secret: String,
    /// A PEM file with the public key (`PUBLIC KEY`, `RSA PUBLIC KEY` or a `CERTIFICATE`).
    pub pem_file: Option<std::path::PathBuf>,
    /// A JSON Web Key Set file (`{"keys": [...]}`); tokens select its keys by `kid`.
    pub jwks_file: Option<std::path::PathBuf>,
}

// Secrets must not end up in logs through `{:?}` of the configuration.
impl std::fmt::Debug for JwtKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeyConfig")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .field("pem_file", &self.pem_file)
            .field("jwks_file", &self.jwks_file)
            .finish()
    }
}

/// A Lambda function the host runs itself: real handler binaries (`lambda_http`,
/// `lambda_runtime`) talking to the host's Lambda Runtime API, one process per unit of concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionConfig {
    /// The executable. `${NAME}` and `${NAME:-default}` are replaced from the environment, e.g.
    /// `"${CARGO_TARGET_DIR:-target}/debug/chat"`; a relative path starts at the working directory.
    pub command: String,
    /// Arguments for the executable.
    pub args: Vec<String>,
    /// A command run once before the host starts, e.g. `["cargo", "build", "--bin", "chat"]`;
    /// if it fails the host does not start. Identical commands of several functions run once.
    pub build: Vec<String>,
    /// Extra environment variables for the function (beside the host's own and Lambda's).
    pub environment: BTreeMap<String, String>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` in MB, 128 to 10240 (reported, not enforced).
    pub memory_size: u32,
    /// Longest an invocation may run; past it the process is killed and restarted and the
    /// invocation fails, as Lambda's function timeout does. 1 s to 900 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Processes kept running: invocations beyond this many wait in a queue.
    pub concurrency: u32,
}

impl Default for FunctionConfig {
    fn default() -> Self {
        Self {
            command: String::new(),
            args: Vec::new(),
            build: Vec::new(),
            environment: BTreeMap::new(),
            memory_size: 128,
            timeout: Duration::from_secs(3),
            concurrency: 1,
        }
    }
}

fn default_method() -> String {
    "POST".into()
}

fn default_status() -> u16 {
    200
}

/// The API definition taken from a CloudFormation/SAM template (see the `template` module): with
/// `file` set, the template's `AWS::ApiGatewayV2::*` resources supply the route selection
/// expression, routes, integrations, authorizers and stage, and setting those in the
/// configuration is an error (two definitions of one API would drift apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateConfig {
    /// The template (YAML with short-form tags, or JSON); a relative path starts at the working
    /// directory. `--template` overrides it. Unset: the API is defined by this file.
    pub file: Option<std::path::PathBuf>,
    /// Logical ID of the `AWS::ApiGatewayV2::Api` to serve; empty means the template's only
    /// WebSocket API.
    pub api: String,
    /// How the template's Lambda functions are reached, by logical ID (or, for a function given as
    /// a literal ARN, its function name): a `[functions]` name runs under the local runtime, any
    /// other value is a Lambda function name or ARN for the Invoke API. Unlisted functions run
    /// locally when `[functions]` declares their logical ID or `FunctionName`, else go to the
    /// Invoke API under their `FunctionName` (or logical ID).
    pub functions: BTreeMap<String, String>,
    /// Values for the template's `Parameters`, instead of their `Default`s.
    pub parameters: BTreeMap<String, String>,
    /// What `AWS::StackName` stands for (e.g. in `FunctionName: !Sub ${AWS::StackName}-chat`).
    pub stack_name: String,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        Self {
            file: None,
            api: String::new(),
            functions: BTreeMap::new(),
            parameters: BTreeMap::new(),
            stack_name: "connection-host".into(),
        }
    }
}

/// Behaviour beyond API Gateway's, each opt-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExtensionsConfig {
    /// Serve the groups API (`/@connections/{id}/groups/{group}`, `/@groups/{group}`).
    pub groups: bool,
    /// Accept binary frames from clients as a base64 `body` with `isBase64Encoded: true` instead of
    /// closing with 1003.
    pub binary_messages: bool,
}

/// Where connection records and group memberships live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (in-process, lost on exit) or `dynamodb` (shared tables, see `STORE.md`).
    pub kind: StoreKind,
    /// DynamoDB table of connection records (partition key `connectionId`).
    pub connections_table: String,
    /// DynamoDB table of group memberships (keys `group`, `connectionId`; index `byConnection`).
    pub groups_table: String,
    /// DynamoDB endpoint; empty uses the standard AWS configuration (`AWS_ENDPOINT_URL_DYNAMODB`,
    /// `AWS_ENDPOINT_URL`, else AWS itself).
    pub endpoint_url: String,
    /// DynamoDB region; empty uses `api.region`.
    pub region: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            connections_table: "connection-host-connections".into(),
            groups_table: "connection-host-groups".into(),
            endpoint_url: String::new(),
            region: String::new(),
        }
    }
}

/// This host's identity in a cluster: several hosts sharing one DynamoDB store, where a management
/// call made to any host reaches the connection wherever it lives (see CONFIGURATION.md, "Running
/// a cluster").
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This host's ID in the store (letters, digits, `-`, `_`, `.`; at most 64); empty means a
    /// random ID generated at each start. A fixed ID lets a restarted host remove the records its
    /// previous run left behind at once instead of waiting for the reaper. Must be unique in the
    /// cluster.
    pub host_id: String,
    /// The base URL other hosts use to reach this host's management API, e.g.
    /// `http://10.0.0.5:9080`; empty means not clustered (management calls reach only this host's
    /// connections, and nothing runs in the background).
    pub advertise_url: String,
    /// Shared key of the HMAC that signs host-to-host calls (it never travels itself); required
    /// when `advertise_url` is set. Prefer the environment (`CONNECTION_HOST_CLUSTER__SECRET`) to
    /// the file.
    pub secret: String,
    /// How often this host writes its heartbeat and looks for dead hosts to reap.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A host whose last heartbeat is older than this is dead: calls for its connections answer
    /// 410 and its records are reaped. Must exceed twice `heartbeat_interval` (plus clock skew).
    #[serde(with = "humantime_serde")]
    pub host_timeout: Duration,
    /// Connection owners remembered per host, so repeated calls for a remote connection skip the
    /// store read.
    pub owner_cache_size: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            host_id: String::new(),
            advertise_url: String::new(),
            secret: String::new(),
            heartbeat_interval: Duration::from_secs(5),
            host_timeout: Duration::from_secs(20),
            owner_cache_size: 100_000,
        }
    }
}

/// What `{:?}` shows of a secret: whether one is set, never the secret.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

// The secret must not end up in logs through `{:?}` of the configuration.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("host_id", &self.host_id)
            .field("advertise_url", &self.advertise_url)
            .field("secret", &redacted(&self.secret))
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("host_timeout", &self.host_timeout)
            .field("owner_cache_size", &self.owner_cache_size)
            .finish()
    }
}

impl ClusterConfig {
    /// Whether this host takes part in a cluster (`advertise_url` is set).
    pub fn enabled(&self) -> bool {
        !self.advertise_url.is_empty()
    }
}

/// The `@connections` management API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Who may call it: SigV4 signatures checked against configured access keys.
    pub auth: ManagementAuthConfig,
}

/// Authentication of management API calls (and of the Lambda Invoke API for local functions):
/// AWS Signature Version 4 as API Gateway checks it, against access keys configured here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementAuthConfig {
    /// `auto` (SigV4 unless the listener serving the management API is bound to a loopback
    /// address), `sigv4` (always) or `none` (never: anyone who reaches the listener may post to,
    /// read and close every connection).
    pub mode: AuthMode,
    /// How far a request's `X-Amz-Date` may be from the host's clock, either way (AWS: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Accepted access keys by access key ID; each names where its secret comes from.
    pub keys: BTreeMap<String, AccessKeyConfig>,
}

impl Default for ManagementAuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Auto,
            clock_skew: Duration::from_secs(300),
            keys: BTreeMap::new(),
        }
    }
}

/// When the management API requires SigV4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// SigV4 unless the management API's listener is bound to a loopback address.
    #[default]
    Auto,
    /// SigV4 on every listener.
    Sigv4,
    /// No authentication.
    None,
}

impl AuthMode {
    /// The mode as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Auto => "auto",
            AuthMode::Sigv4 => "sigv4",
            AuthMode::None => "none",
        }
    }
}

/// Where one access key's secret comes from: exactly one of the three fields.
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// Name of an environment variable holding the secret (preferred).
    pub secret_env: String,
    /// A file holding the secret (surrounding whitespace is ignored), e.g. a mounted secret.
    pub secret_file: Option<std::path::PathBuf>,
    /// The secret itself, for tests and local setups; keep real secrets out of files under
    /// version control.
    pub secret: String,
}

// Secrets must not end up in logs through `{:?}` of the configuration.
impl std::fmt::Debug for AccessKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeyConfig")
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

impl AccessKeyConfig {
    /// How many of the three sources are set; exactly one is valid.
    pub fn sources(&self) -> usize {
        usize::from(!self.secret_env.is_empty())
            + usize::from(self.secret_file.is_some())
            + usize::from(!self.secret.is_empty())
    }
}

/// Which connection store the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process maps: one host only, nothing survives a restart.
    #[default]
    Memory,
    /// DynamoDB tables shared by every host configured with them.
    Dynamodb,
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or did not match the schema.
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range or inconsistent.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// Why it is wrong.
        reason: String,
    },
}

// Where a setting came from does not change what it is: configurations compare by their settings.
impl PartialEq for Provenance {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Provenance {
    fn of(given: &Figment, stage_flag: bool) -> Self {
        let functions = given
            .find_value("functions")
            .ok()
            .and_then(|v| v.into_dict())
            .map(|d| d.into_keys().collect::<Vec<_>>())
            .unwrap_or_default();
        let function_fields = functions.iter().flat_map(|name| {
            ["timeout", "memory_size"].map(|field| format!("functions.{name}.{field}"))
        });
        Self {
            given: TEMPLATE_KEYS
                .into_iter()
                .chain(["api.stage", "api.default_route_settings"])
                .map(String::from)
                .chain(function_fields)
                .filter(|key| given.contains(key))
                .collect(),
            stage_flag,
        }
    }

    /// Whether the file or the environment set `key` (one of those [`Provenance::given`] lists).
    pub fn gave(&self, key: &str) -> bool {
        self.given.iter().any(|given| given == key)
    }
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    /// `server.listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `server.management_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_listen: Option<SocketAddr>,
    /// `api.stage`; with a template, it also wins over the template's stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// `template.file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<std::path::PathBuf>,
}

/// Settings the template defines, as configuration keys; a configuration setting them too is
/// refused. `api.stage` joins them when the template has a stage.
pub const TEMPLATE_KEYS: [&str; 4] = [
    "routes",
    "integrations",
    "authorizers",
    "api.route_selection_expression",
];

impl Config {
    /// Loads defaults < `file` < environment < `overrides`. Only the schema is checked here:
    /// the template is applied, and everything else checked, by `Host::build`, which a start and
    /// `config check` both run.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        // What the file and the environment set, without the defaults: a template refuses them.
        let mut given = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    field: "--config".into(),
                    reason: format!("file {} does not exist", file.display()),
                });
            }
            given = given.merge(Toml::file(file));
        }
        given = given.merge(
            Env::prefixed(ENV_PREFIX)
                .ignore(COMMAND_LINE_ENV)
                .split("__")
                .map(env_path)
                // Last: every `map` turns figment's own lower-casing back on.
                .lowercase(false),
        );
        let mut figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Profile::layer(&given)?)
            .merge(given.clone());
        let mut server = serde_json::Map::new();
        if let Some(listen) = overrides.listen {
            server.insert("listen".into(), listen.to_string().into());
        }
        if let Some(m) = overrides.management_listen {
            server.insert("management_listen".into(), m.to_string().into());
        }
        if !server.is_empty() {
            figment = figment.merge(Serialized::default("server", server));
        }
        if let Some(stage) = &overrides.stage {
            figment = figment.merge(Serialized::default("api.stage", stage));
        }
        if let Some(template) = &overrides.template {
            figment = figment.merge(Serialized::default("template.file", template));
        }
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.provenance = Provenance::of(&given, overrides.stage.is_some());
        Ok(config)
    }

    /// Parses a TOML document on top of the defaults (no environment). Like [`Config::load`], it
    /// checks only the schema.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let given = Figment::from(Toml::string(text));
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Profile::layer(&given)?)
            .merge(given.clone())
            .extract()
            .map_err(Box::new)?;
        config.provenance = Provenance::of(&given, false);
        Ok(config)
    }

    /// Checks ranges and references that the schema alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        let api = &self.api;
        if api.api_id.len() != 10
            || !api
                .api_id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return invalid(
                "api.api_id".into(),
                "must be 10 lower-case letters or digits, like API Gateway's API IDs",
            );
        }
        if api.stage.is_empty()
            || !api
                .stage
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return invalid(
                "api.stage".into(),
                "must be non-empty and use only letters, digits, '-' and '_'",
            );
        }
        if self.server.management_tls.is_some() && self.server.management_listen.is_none() {
            return invalid(
                "server.management_tls".into(),
                "needs server.management_listen: without it the management API is served on the public listener, which server.tls covers",
            );
        }
        let l = &self.limits;
        if l.frame_size < 1024 || l.frame_size > l.message_size {
            return invalid(
                "limits.frame_size".into(),
                "must be at least 1024 and not larger than limits.message_size",
            );
        }
        if l.post_size == 0 {
            return invalid("limits.post_size".into(), "must be positive");
        }
        if l.idle_timeout.is_zero() || l.max_connection_duration.is_zero() {
            return invalid(
                "limits.idle_timeout".into(),
                "idle_timeout and max_connection_duration must be positive",
            );
        }
        if !l.ping_interval.is_zero() && l.missed_pongs == 0 {
            return invalid(
                "limits.missed_pongs".into(),
                "must be at least 1 when ping_interval is set",
            );
        }
        if l.outbound_queue_bytes < l.post_size {
            return invalid(
                "limits.outbound_queue_bytes".into(),
                "must hold at least one message of limits.post_size bytes",
            );
        }
        if l.max_inflight_messages == 0 {
            return invalid("limits.max_inflight_messages".into(), "must be at least 1");
        }
        if l.read_buffer_size < 512 {
            return invalid("limits.read_buffer_size".into(), "must be at least 512");
        }
        if l.messages_per_second > 0 && l.message_burst == 0 {
            return invalid(
                "limits.message_burst".into(),
                "must be at least 1 when limits.messages_per_second is set",
            );
        }
        if l.management_requests_per_second > 0 && l.management_burst == 0 {
            return invalid(
                "limits.management_burst".into(),
                "must be at least 1 when limits.management_requests_per_second is set",
            );
        }
        // A rate is requests per second: fractional is fine, negative or not a number is not.
        let bad_rate = |rate: Option<f64>| rate.is_some_and(|r| !r.is_finite() || r < 0.0);
        if bad_rate(api.default_route_settings.throttling_rate_limit) {
            return invalid(
                "api.default_route_settings.throttling_rate_limit".into(),
                "must be a finite number of requests per second, 0 or more",
            );
        }
        for (key, route) in &self.routes {
            let field = |name: &str| format!("routes.\"{key}\".{name}");
            if key.is_empty() {
                return invalid("routes".into(), "a route key must not be empty");
            }
            if bad_rate(route.throttling_rate_limit) {
                return invalid(
                    field("throttling_rate_limit"),
                    "must be a finite number of requests per second, 0 or more",
                );
            }
            if !self.integrations.contains_key(&route.integration) {
                return invalid(
                    field("integration"),
                    &format!(
                        "no integration named \"{}\" in [integrations]",
                        route.integration
                    ),
                );
            }
            if route.timeout < Duration::from_millis(50) || route.timeout > Duration::from_secs(29)
            {
                return invalid(
                    field("timeout"),
                    "must be between 50ms and 29s (API Gateway's integration timeout range)",
                );
            }
            if route.two_way && (key == "$connect" || key == "$disconnect") {
                return invalid(
                    field("two_way"),
                    "$connect and $disconnect cannot send route responses to the client",
                );
            }
            if let Some(authorizer) = &route.authorizer {
                if key != "$connect" {
                    return invalid(
                        field("authorizer"),
                        "only the $connect route can have an authorizer (it guards the whole connection)",
                    );
                }
                if !self.authorizers.contains_key(authorizer) {
                    return invalid(
                        field("authorizer"),
                        &format!("no authorizer named \"{authorizer}\" in [authorizers]"),
                    );
                }
            }
        }
        for (name, authorizer) in &self.authorizers {
            let field = |f: &str| format!("authorizers.{name}.{f}");
            match authorizer {
                AuthorizerConfig::Request(authorizer) => {
                    if authorizer.function_name.is_empty() {
                        return invalid(field("function_name"), "must not be empty");
                    }
                    if !authorizer.endpoint_url.is_empty() && !is_http_url(&authorizer.endpoint_url)
                    {
                        return invalid(
                            field("endpoint_url"),
                            "must be an http:// or https:// URL",
                        );
                    }
                }
                // The keys are read by `Host::build`, which `config check` runs too.
                AuthorizerConfig::Jwt(_) => {}
            }
        }
        for (name, integration) in &self.integrations {
            let field = |f: &str| format!("integrations.{name}.{f}");
            match integration {
                IntegrationConfig::Lambda {
                    function_name,
                    endpoint_url,
                    ..
                } => {
                    if function_name.is_empty() {
                        return invalid(field("function_name"), "must not be empty");
                    }
                    if !endpoint_url.is_empty() && !is_http_url(endpoint_url) {
                        return invalid(
                            field("endpoint_url"),
                            "must be an http:// or https:// URL",
                        );
                    }
                }
                IntegrationConfig::Http { url } | IntegrationConfig::HttpProxy { url, .. } => {
                    if !is_http_url(url) {
                        return invalid(field("url"), "must be an http:// or https:// URL");
                    }
                }
                IntegrationConfig::Mock { status_code, .. } => {
                    if !(100..=599).contains(status_code) {
                        return invalid(field("status_code"), "must be an HTTP status code");
                    }
                }
            }
            if let IntegrationConfig::HttpProxy { method, .. } = integration
                && http::Method::from_bytes(method.as_bytes()).is_err()
            {
                return invalid(field("method"), "must be an HTTP method");
            }
        }
        for (name, function) in &self.functions {
            let field = |f: &str| format!("functions.{name}.{f}");
            if !is_function_name(name) {
                return invalid(
                    format!("functions.{name}"),
                    "a function name is 1 to 64 letters, digits, '-' or '_'",
                );
            }
            if function.command.is_empty() {
                return invalid(field("command"), "must name the function's executable");
            }
            if !(128..=10240).contains(&function.memory_size) {
                return invalid(field("memory_size"), "must be between 128 and 10240 (MB)");
            }
            if function.timeout < Duration::from_secs(1)
                || function.timeout > Duration::from_secs(900)
            {
                return invalid(
                    field("timeout"),
                    "must be between 1s and 900s (Lambda's range)",
                );
            }
            if !(1..=64).contains(&function.concurrency) {
                return invalid(field("concurrency"), "must be between 1 and 64 processes");
            }
        }
        let store = &self.store;
        for (field, name) in [
            ("store.connections_table", &store.connections_table),
            ("store.groups_table", &store.groups_table),
        ] {
            if !is_table_name(name) {
                return invalid(
                    field.into(),
                    "must be a DynamoDB table name: 3 to 255 letters, digits, '_', '-' or '.'",
                );
            }
        }
        if store.connections_table == store.groups_table {
            return invalid(
                "store.groups_table".into(),
                "must differ from store.connections_table (the tables have different keys)",
            );
        }
        if !store.endpoint_url.is_empty() && !is_http_url(&store.endpoint_url) {
            return invalid(
                "store.endpoint_url".into(),
                "must be an http:// or https:// URL",
            );
        }
        let cluster = &self.cluster;
        if !cluster.host_id.is_empty() && !is_host_id(&cluster.host_id) {
            return invalid(
                "cluster.host_id".into(),
                "must be at most 64 letters, digits, '-', '_' or '.'",
            );
        }
        if cluster.heartbeat_interval < Duration::from_millis(100) {
            return invalid(
                "cluster.heartbeat_interval".into(),
                "must be at least 100ms",
            );
        }
        if cluster.host_timeout < cluster.heartbeat_interval * 2 {
            return invalid(
                "cluster.host_timeout".into(),
                "must be at least twice cluster.heartbeat_interval, or one late heartbeat kills a host",
            );
        }
        let auth = &self.management.auth;
        if auth.clock_skew < Duration::from_secs(1) || auth.clock_skew > Duration::from_secs(3600) {
            return invalid(
                "management.auth.clock_skew".into(),
                "must be between 1s and 1h (AWS allows 5m)",
            );
        }
        for (id, key) in &auth.keys {
            if id.is_empty() || id.len() > 128 || !id.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return invalid(
                    format!("management.auth.keys.{id}"),
                    "an access key ID is 1 to 128 letters or digits",
                );
            }
            if key.sources() != 1 {
                return invalid(
                    format!("management.auth.keys.{id}"),
                    "set exactly one of secret_env, secret_file or secret",
                );
            }
        }
        if cluster.owner_cache_size == 0 {
            return invalid("cluster.owner_cache_size".into(), "must be at least 1");
        }
        if cluster.enabled() {
            if !is_http_url(&cluster.advertise_url) {
                return invalid(
                    "cluster.advertise_url".into(),
                    "must be an http:// or https:// URL",
                );
            }
            if cluster.secret.len() < 16 {
                return invalid(
                    "cluster.secret".into(),
                    "must be at least 16 characters when cluster.advertise_url is set (it authenticates host-to-host calls)",
                );
            }
            // Every host must hold the same bytes: a control character or surrounding whitespace
            // (a stray newline from a file or a variable) is a copy mistake that would leave this
            // host's signatures refused by every other.
            if http::HeaderValue::from_str(&cluster.secret).is_err()
                || cluster.secret.trim() != cluster.secret
            {
                return invalid(
                    "cluster.secret".into(),
                    "must be visible characters and inner spaces (no control characters such as a newline, no leading or trailing whitespace): every host of the cluster must hold exactly the same key",
                );
            }
            if store.kind == StoreKind::Memory {
                return invalid(
                    "cluster.advertise_url".into(),
                    "a cluster needs a shared store: set store.kind = \"dynamodb\"",
                );
            }
        }
        Ok(())
    }
}

/// The configuration path an environment variable sets (its name after [`ENV_PREFIX`], `__`
/// already turned into `.`): field names are lower-cased, as the schema spells them, but an
/// access key ID under `management.auth.keys` keeps its case, because it must equal the ID a
/// request is signed with (`AKIA…`), and a lower-cased one would never match.
fn env_path(key: &figment::value::UncasedStr) -> figment::value::Uncased<'_> {
    const KEYS: [&str; 3] = ["management", "auth", "keys"];
    key.as_str()
        .split('.')
        .enumerate()
        .map(|(i, segment)| {
            let is_key_id = i == KEYS.len()
                && key
                    .as_str()
                    .split('.')
                    .zip(KEYS)
                    .all(|(s, k)| s.eq_ignore_ascii_case(k));
            if is_key_id {
                segment.to_string()
            } else {
                segment.to_ascii_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
        .into()
}

fn is_host_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and validates, as `Host::build` does before it reads any file.
    fn checked(toml: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml(toml)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn default_file_is_complete_and_equals_the_defaults() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML).expect("default file parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn the_aws_profile_turns_the_extra_protections_off_unless_set_explicitly() {
        let aws = Config::from_toml("[api]\nprofile = \"aws\"").unwrap();
        assert_eq!(aws.api.profile, Profile::Aws);
        assert_eq!(aws.limits.ping_interval, Duration::ZERO);
        assert_eq!(aws.limits.messages_per_second, 0);
        assert_eq!(aws.limits.connections_per_principal, 0);
        // Everything else, API Gateway's quotas included, keeps its default.
        let expected = Config {
            api: ApiConfig {
                profile: Profile::Aws,
                ..ApiConfig::default()
            },
            limits: LimitsConfig {
                ping_interval: Duration::ZERO,
                messages_per_second: 0,
                connections_per_principal: 0,
                ..LimitsConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(aws, expected);
        // An explicit setting wins over the profile's value.
        let mixed = Config::from_toml(
            "[api]\nprofile = \"aws\"\n[limits]\nping_interval = \"30s\"\nconnections_per_principal = 3",
        )
        .unwrap();
        assert_eq!(mixed.limits.ping_interval, Duration::from_secs(30));
        assert_eq!(mixed.limits.connections_per_principal, 3);
        assert_eq!(mixed.limits.messages_per_second, 0);
        let default = Config::from_toml("[api]\nprofile = \"default\"").unwrap();
        assert_eq!(default, Config::default());
        let err = Config::from_toml("[api]\nprofile = \"gcp\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("profile"), "{err}");
    }

    #[test]
    fn durations_and_routes_parse() {
        let c = Config::from_toml(
            r#"
            [limits]
            idle_timeout = "5m"
            [routes."$default"]
            integration = "echo"
            two_way = true
            timeout = "500ms"
            [integrations.echo]
            type = "mock"
            response_template = "$input.body"
            "#,
        )
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
        let r = &c.routes["$default"];
        assert!(r.two_way);
        assert_eq!(r.timeout, Duration::from_millis(500));
    }

    #[test]
    fn route_throttling_parses_and_is_validated() {
        let c = checked(
            r#"
            [api.default_route_settings]
            throttling_rate_limit = 0.5
            throttling_burst_limit = 2
            [routes.a]
            integration = "m"
            throttling_rate_limit = 100
            [routes.b]
            integration = "m"
            [integrations.m]
            type = "mock"
            "#,
        )
        .unwrap();
        let default = c.api.default_route_settings;
        assert_eq!(default.throttling_rate_limit, Some(0.5));
        assert_eq!(default.throttling_burst_limit, Some(2));
        // A route's own limit wins; the one it leaves unset is the stage's.
        let a = c.routes["a"].settings(default);
        assert_eq!(
            (a.throttling_rate_limit, a.throttling_burst_limit),
            (Some(100.0), Some(2))
        );
        assert_eq!(c.routes["b"].settings(default), default);
        assert!(Config::default().api.default_route_settings.is_unset());

        let route = "[integrations.m]\ntype = \"mock\"\n[routes.x]\nintegration = \"m\"\n";
        for (toml, field) in [
            (
                "[api.default_route_settings]\nthrottling_rate_limit = -1.0".to_string(),
                "api.default_route_settings.throttling_rate_limit",
            ),
            (
                "[api.default_route_settings]\nthrottling_rate_limit = nan".to_string(),
                "api.default_route_settings.throttling_rate_limit",
            ),
            (
                format!("{route}throttling_rate_limit = -0.5"),
                "routes.\"x\".throttling_rate_limit",
            ),
            (
                format!("{route}throttling_rate_limit = inf"),
                "routes.\"x\".throttling_rate_limit",
            ),
        ] {
            let err = checked(&toml).unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
        for toml in [
            format!("{route}throttling_burst_limit = -1"),
            format!("{route}throttling_burst_limit = 1.5"),
            "[api.default_route_settings]\nthrottling_limit = 1".to_string(),
        ] {
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains("throttling"), "{err}");
        }
        // Zero is valid: it throttles every request, as on API Gateway.
        checked(&format!(
            "{route}throttling_rate_limit = 0\nthrottling_burst_limit = 0"
        ))
        .unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "[routes.\"$default\"]\nintegration = \"nope\"",
                "routes.\"$default\".integration",
            ),
            (
                "[routes.x]\nintegration = \"m\"\ntimeout = \"30s\"\n[integrations.m]\ntype = \"mock\"",
                "routes.\"x\".timeout",
            ),
            ("[api]\napi_id = \"UPPER\"", "api.api_id"),
            ("[limits]\nframe_size = 10", "limits.frame_size"),
            ("[limits]\nmessage_burst = 0", "limits.message_burst"),
            ("[limits]\nmanagement_burst = 0", "limits.management_burst"),
            (
                "[store]\nconnections_table = \"a b\"",
                "store.connections_table",
            ),
            (
                "[store]\ngroups_table = \"connection-host-connections\"",
                "store.groups_table",
            ),
            (
                "[store]\nendpoint_url = \"localhost:8000\"",
                "store.endpoint_url",
            ),
            (
                "[integrations.h]\ntype = \"http\"\nurl = \"ftp://x\"",
                "integrations.h.url",
            ),
            ("[cluster]\nhost_id = \"a b\"", "cluster.host_id"),
            (
                "[cluster]\nheartbeat_interval = \"11s\"",
                "cluster.host_timeout",
            ),
            (
                "[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"",
                "cluster.secret",
            ),
            (
                "[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"\nsecret = \"0123456789abcdef\"",
                "store.kind",
            ),
            (
                "[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"127.0.0.1:9080\"\nsecret = \"0123456789abcdef\"",
                "cluster.advertise_url",
            ),
            (
                // A secret read from a file with its newline, or pasted with a control character.
                "[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"\nsecret = \"0123456789abcdef\\n\"",
                "cluster.secret",
            ),
            (
                "[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"\nsecret = \" 0123456789abcdef\"",
                "cluster.secret",
            ),
        ];
        for (toml, field) in cases {
            let err = checked(toml).unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
        let err = Config::from_toml("[limits]\nidle_timeout = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("idle_timeout"), "{err}");
        let err = Config::from_toml("[store]\nkind = \"redis\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind"), "{err}");
        let c = Config::from_toml("[store]\nkind = \"dynamodb\"").unwrap();
        assert_eq!(c.store.kind, StoreKind::Dynamodb);
        let err = Config::from_toml("[limits]\nbogus = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = Config::from_toml("[api]\nroute_selection_expression = \"${request.body\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("route_selection_expression"), "{err}");
    }

    #[test]
    fn authorizers_parse_and_only_connect_may_name_one() {
        let base = "[integrations.m]\ntype = \"mock\"\n[authorizers.auth]\nfunction_name = \"authorizer\"\nidentity_sources = [\"route.request.header.Authorization\", \"route.request.querystring.token\"]\n";
        let c = Config::from_toml(&format!(
            "{base}[routes.\"$connect\"]\nintegration = \"m\"\nauthorizer = \"auth\""
        ))
        .unwrap();
        assert_eq!(c.routes["$connect"].authorizer.as_deref(), Some("auth"));
        let AuthorizerConfig::Request(auth) = &c.authorizers["auth"] else {
            panic!("a table without type is a Lambda REQUEST authorizer");
        };
        assert_eq!(auth.identity_sources.len(), 2);
        assert!(auth.endpoint_url.is_empty());
        let explicit = Config::from_toml(&base.replace(
            "[authorizers.auth]\n",
            "[authorizers.auth]\ntype = \"request\"\n",
        ))
        .unwrap();
        assert_eq!(explicit.authorizers, c.authorizers);
        let cases = [
            (
                format!("{base}[routes.\"$default\"]\nintegration = \"m\"\nauthorizer = \"auth\""),
                "routes.\"$default\".authorizer",
            ),
            (
                format!("{base}[routes.\"$connect\"]\nintegration = \"m\"\nauthorizer = \"nope\""),
                "routes.\"$connect\".authorizer",
            ),
            (
                "[authorizers.a]\nfunction_name = \"\"".to_string(),
                "authorizers.a.function_name",
            ),
            (
                "[authorizers.a]\nfunction_name = \"f\"\nendpoint_url = \"localhost:1\"".to_string(),
                "authorizers.a.endpoint_url",
            ),
            (
                "[authorizers.a]\nfunction_name = \"f\"\nidentity_sources = [\"header.Authorization\"]".to_string(),
                "route.request.header.NAME",
            ),
        ];
        for (toml, expected) in cases {
            let err = checked(&toml).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn jwt_authorizers_parse() {
        // An absolute path: another test (figment's Jail) changes the working directory meanwhile.
        let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/jwks.json");
        let c = Config::from_toml(&format!(
            "[authorizers.j]\ntype = \"jwt\"\ntoken_source = \"subprotocol\"\nissuer = \"https://issuer.test\"\naudience = [\"api\"]\nleeway = \"5s\"\n[[authorizers.j.keys]]\nalgorithm = \"HS256\"\nsecret = \"s3cret\"\n[[authorizers.j.keys]]\njwks_file = \"{jwks}\"\n",
        ))
        .unwrap();
        let AuthorizerConfig::Jwt(j) = &c.authorizers["j"] else {
            panic!("type = \"jwt\" is a JWT authorizer");
        };
        assert_eq!(j.token_source, JwtTokenSource::Subprotocol);
        assert_eq!(j.leeway, Duration::from_secs(5));
        assert_eq!(j.keys.len(), 2);
        assert_eq!(j.subprotocol_marker, "bearer");
        assert!(!format!("{c:?}").contains("s3cret"));
        let cases = [
            (
                "[authorizers.j]\ntype = \"jwt\"\nfunction_name = \"f\"",
                "function_name",
            ),
            ("[authorizers.j]\ntype = \"token\"", "token"),
            ("[authorizers.j]\nidentity_sources = []", "function_name"),
        ];
        for (toml, expected) in cases {
            let err = checked(toml).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    // figment's Jail closure must return figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn access_key_ids_from_the_environment_keep_their_case() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "CONNECTION_HOST_MANAGEMENT__AUTH__KEYS__AKIAEXAMPLEENV01__SECRET",
                "s3cret-from-env",
            );
            jail.set_env("CONNECTION_HOST_MANAGEMENT__AUTH__CLOCK_SKEW", "1m");
            let c = Config::load(None, &Overrides::default()).expect("loads");
            let auth = &c.management.auth;
            assert_eq!(
                auth.keys.keys().collect::<Vec<_>>(),
                ["AKIAEXAMPLEENV01"],
                "the ID a request is signed with"
            );
            assert_eq!(auth.keys["AKIAEXAMPLEENV01"].secret, "s3cret-from-env");
            assert_eq!(auth.clock_skew, Duration::from_secs(60));
            Ok(())
        });
    }

    // figment's Jail closure must return figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn file_then_environment_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "host.toml",
                "[server]\nlisten = \"127.0.0.1:9000\"\n[api]\nstage = \"file\"\n[limits]\nidle_timeout = \"5m\"\nmissed_pongs = 3\n",
            )?;
            jail.set_env("CONNECTION_HOST_LIMITS__IDLE_TIMEOUT", "7m");
            jail.set_env("CONNECTION_HOST_API__STAGE", "env");
            jail.set_env("CONNECTION_HOST_CLUSTER__SECRET", "from-the-environment");
            // The command line's own variable is not a configuration field.
            jail.set_env("CONNECTION_HOST_CONFIG", "host.toml");
            let flags = Overrides {
                stage: Some("flag".into()),
                ..Overrides::default()
            };
            let c = Config::load(Some(Path::new("host.toml")), &flags).expect("loads");
            assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
            assert_eq!(c.limits.missed_pongs, 3);
            assert_eq!(c.limits.idle_timeout, Duration::from_secs(420));
            assert_eq!(c.api.stage, "flag");
            assert_eq!(c.cluster.secret, "from-the-environment");
            assert!(!format!("{c:?}").contains("from-the-environment"));
            jail.set_env("CONNECTION_HOST_LIMITS__MISSED_PONGS", "many");
            let err = Config::load(Some(Path::new("host.toml")), &flags).unwrap_err();
            assert!(
                err.to_string().to_lowercase().contains("missed_pongs"),
                "{err}"
            );
            // --template names the template; --stage wins over the template's stage and the
            // file's routes are refused.
            let fixture = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/chat-template.yaml"
            );
            jail.set_env("CONNECTION_HOST_LIMITS__MISSED_PONGS", "3");
            jail.create_file(
                "functions.toml",
                "[template.functions]\nChatFunction = \"chat\"\n[functions.chat]\ncommand = \"chat\"\n",
            )?;
            let templated = Overrides {
                template: Some(fixture.into()),
                ..flags.clone()
            };
            let c = Config::load(Some(Path::new("functions.toml")), &templated).expect("loads");
            assert_eq!(c.api.stage, "flag");
            assert_eq!(c.template.file.as_deref(), Some(Path::new(fixture)));
            // What the template will refuse to replace (template::apply reads it): --stage
            // chose the stage, the environment set api.stage too, the file set no route.
            assert!(c.provenance.stage_flag);
            assert!(c.provenance.gave("api.stage"));
            assert!(!c.provenance.gave("routes"));
            let unstaged = Overrides {
                stage: None,
                ..templated.clone()
            };
            let c = Config::load(Some(Path::new("functions.toml")), &unstaged).expect("loads");
            assert!(!c.provenance.stage_flag);
            jail.create_file(
                "routes.toml",
                "[routes.\"$default\"]\nintegration = \"m\"\n[integrations.m]\ntype = \"mock\"\n",
            )?;
            let c = Config::load(Some(Path::new("routes.toml")), &templated).expect("loads");
            assert!(c.provenance.gave("routes"));
            let missing = Config::load(Some(Path::new("nope.toml")), &flags).unwrap_err();
            assert!(missing.to_string().contains("does not exist"), "{missing}");
            Ok(())
        });
    }
}
