//! `[routes]`, `[integrations]` and `[authorizers]`: the API definition, unless a template
//! supplies it.

use super::*;

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
    /// Invoke a reliable session's messages for this route one at a time, in the client's order
    /// (`[extensions.sessions]`, PROTOCOL.md section 6); plain connections are not affected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
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

fn default_method() -> String {
    "POST".into()
}

fn default_status() -> u16 {
    200
}
