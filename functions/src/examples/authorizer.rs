//! The `authorizer` function: a Lambda REQUEST authorizer for a WebSocket API's `$connect`.
//!
//! It verifies a JWT from the `token` query-string parameter or an `Authorization: Bearer`
//! header (the header wins when both are present). A valid token allows the connection with
//! `principalId` = `sub` and the context `{"nickname": ..., "sub": ...}`, which API Gateway then
//! puts into `requestContext.authorizer` of every event of the connection. Anything else fails
//! with the error message `Unauthorized`, which API Gateway turns into a 401.
//!
//! With `ALLOW_GUEST_NICKNAMES=true`, a request with no token at all may instead give a
//! `nickname` query-string parameter (the chat's nickname rules); it is allowed as principal
//! `guest:<nickname>` with the context `{"nickname": ..., "guest": true}`.
//!
//! Configuration (environment, read once at start):
//! - `JWT_SECRET`: HS256 shared secret; or
//! - `JWT_PUBLIC_KEY_PEM` (the PEM text; `\n` escapes are accepted) or `JWT_PUBLIC_KEY_FILE` (a
//!   path): an RSA public key (RS256) or a P-256 EC public key (ES256);
//! - `JWT_ISSUER`, `JWT_AUDIENCE` (optional): required `iss` / `aud` values;
//! - `ALLOW_GUEST_NICKNAMES` (`true`/`false`, default `false`).
//!
//! Exactly one key is required, unless guests are allowed (then, without a key, every token is
//! refused). Only the algorithm of the configured key is accepted, so `alg: none` and algorithm
//! confusion (an HS256 token signed with the public key) are refused.

use crate::examples::chat::valid_nickname;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lambda_http::aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_http::lambda_runtime::Diagnostic;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// HS256 shared secret.
pub const SECRET_ENV: &str = "JWT_SECRET";
/// RSA or EC public key, PEM text.
pub const PUBLIC_KEY_PEM_ENV: &str = "JWT_PUBLIC_KEY_PEM";
/// Path of a PEM file with the RSA or EC public key.
pub const PUBLIC_KEY_FILE_ENV: &str = "JWT_PUBLIC_KEY_FILE";
/// Required `iss` claim.
pub const ISSUER_ENV: &str = "JWT_ISSUER";
/// Required `aud` claim (one of the token's audiences).
pub const AUDIENCE_ENV: &str = "JWT_AUDIENCE";
/// `true` lets connections without a token in with a `nickname` query-string parameter.
pub const ALLOW_GUESTS_ENV: &str = "ALLOW_GUEST_NICKNAMES";

/// The key tokens are verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// An HS256 shared secret.
    Secret(Vec<u8>),
    /// An RSA (RS256) or P-256 EC (ES256) public key in PEM.
    PublicKeyPem(Vec<u8>),
}

/// Why the authorizer's configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No key, and guests are not allowed: nobody could ever connect.
    #[error(
        "set one of {SECRET_ENV}, {PUBLIC_KEY_PEM_ENV}, {PUBLIC_KEY_FILE_ENV} (or {ALLOW_GUESTS_ENV}=true)"
    )]
    NoKey,
    /// More than one key variable is set.
    #[error("set only one of {SECRET_ENV}, {PUBLIC_KEY_PEM_ENV}, {PUBLIC_KEY_FILE_ENV}")]
    SeveralKeys,
    /// The key file could not be read.
    #[error("reading {path}: {source}")]
    KeyFile {
        /// The file named by `JWT_PUBLIC_KEY_FILE`.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The PEM text is neither an RSA nor an EC public key.
    #[error("the public key is neither an RSA nor an EC public key in PEM: {0}")]
    InvalidKey(jsonwebtoken::errors::Error),
    /// `ALLOW_GUEST_NICKNAMES` is not a boolean.
    #[error("{ALLOW_GUESTS_ENV} must be true or false, not {0:?}")]
    InvalidFlag(String),
}

/// Why a `$connect` was not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizerError {
    /// Missing, invalid, expired or mis-signed token (or no valid guest nickname): exactly the
    /// message API Gateway maps to 401.
    #[error("Unauthorized")]
    Unauthorized,
    /// The event has no `methodArn` to allow: not an authorizer event (API Gateway answers 500).
    #[error("the authorizer event has no methodArn")]
    MissingMethodArn,
}

impl From<AuthorizerError> for Diagnostic {
    fn from(error: AuthorizerError) -> Self {
        Diagnostic {
            error_type: match error {
                AuthorizerError::Unauthorized => "Unauthorized".into(),
                AuthorizerError::MissingMethodArn => "InvalidEvent".into(),
            },
            error_message: error.to_string(),
        }
    }
}

/// The verified configuration.
pub struct AuthorizerConfig {
    key: Option<(DecodingKey, Validation)>,
    allow_guests: bool,
}

impl AuthorizerConfig {
    /// Reads the configuration from the environment (see the module documentation).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name| var(name).filter(|v| !v.trim().is_empty());
        let secret = var(SECRET_ENV).map(|s| JwtKey::Secret(s.into_bytes()));
        // Environment variables rarely hold newlines; `\n` escapes stand for them.
        let pem = var(PUBLIC_KEY_PEM_ENV)
            .map(|p| JwtKey::PublicKeyPem(p.replace("\\n", "\n").into_bytes()));
        let file = match var(PUBLIC_KEY_FILE_ENV) {
            Some(path) => Some(JwtKey::PublicKeyPem(
                std::fs::read(&path).map_err(|source| ConfigError::KeyFile { path, source })?,
            )),
            None => None,
        };
        let mut keys = [secret, pem, file].into_iter().flatten();
        let key = keys.next();
        if keys.next().is_some() {
            return Err(ConfigError::SeveralKeys);
        }
        let allow_guests = match var(ALLOW_GUESTS_ENV).map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "true" || v == "1" => true,
            Some(v) if v == "false" || v == "0" => false,
            Some(v) => return Err(ConfigError::InvalidFlag(v)),
        };
        Self::new(
            key.as_ref(),
            var(ISSUER_ENV).as_deref(),
            var(AUDIENCE_ENV).as_deref(),
            allow_guests,
        )
    }

    /// A configuration from values: `key` (`None` accepts no token), required issuer and
    /// audience, and whether guests with a nickname may connect without a token.
    pub fn new(
        key: Option<&JwtKey>,
        issuer: Option<&str>,
        audience: Option<&str>,
        allow_guests: bool,
    ) -> Result<Self, ConfigError> {
        let key = match key {
            None if allow_guests => None,
            None => return Err(ConfigError::NoKey),
            Some(key) => {
                let (decoding, algorithm) = decoding_key(key)?;
                let mut validation = Validation::new(algorithm);
                let mut required = vec!["exp", "sub"];
                validation.validate_nbf = true;
                if let Some(issuer) = issuer {
                    validation.set_issuer(&[issuer]);
                    required.push("iss");
                }
                match audience {
                    Some(audience) => {
                        validation.set_audience(&[audience]);
                        required.push("aud");
                    }
                    // Without a configured audience, a token's `aud` is not checked.
                    None => validation.validate_aud = false,
                }
                validation.set_required_spec_claims(&required);
                Some((decoding, validation))
            }
        };
        Ok(Self { key, allow_guests })
    }
}

fn decoding_key(key: &JwtKey) -> Result<(DecodingKey, Algorithm), ConfigError> {
    match key {
        JwtKey::Secret(secret) => Ok((DecodingKey::from_secret(secret), Algorithm::HS256)),
        JwtKey::PublicKeyPem(pem) => match DecodingKey::from_rsa_pem(pem) {
            Ok(key) => Ok((key, Algorithm::RS256)),
            Err(_) => DecodingKey::from_ec_pem(pem)
                .map(|key| (key, Algorithm::ES256))
                .map_err(ConfigError::InvalidKey),
        },
    }
}

/// The claims the authorizer reads.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    nickname: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
}

/// The authorizer's answer, in the REST-style IAM policy format WebSocket APIs use.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizerResponse {
    /// Who connected.
    pub principal_id: String,
    /// Allows `execute-api:Invoke` on the `$connect` method ARN.
    pub policy_document: PolicyDocument,
    /// Keys API Gateway adds to `requestContext.authorizer` of every event.
    pub context: Map<String, Value>,
}

/// An IAM policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDocument {
    /// Always `2012-10-17`.
    #[serde(rename = "Version")]
    pub version: String,
    /// The statements.
    #[serde(rename = "Statement")]
    pub statement: Vec<Statement>,
}

/// One IAM policy statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// Always `execute-api:Invoke`.
    #[serde(rename = "Action")]
    pub action: String,
    /// `Allow` (a refusal is an `Unauthorized` error, not a `Deny`).
    #[serde(rename = "Effect")]
    pub effect: String,
    /// The event's `methodArn`.
    #[serde(rename = "Resource")]
    pub resource: String,
}

impl AuthorizerResponse {
    fn allow(principal_id: String, method_arn: &str, context: Map<String, Value>) -> Self {
        Self {
            principal_id,
            policy_document: PolicyDocument {
                version: "2012-10-17".into(),
                statement: vec![Statement {
                    action: "execute-api:Invoke".into(),
                    effect: "Allow".into(),
                    resource: method_arn.to_string(),
                }],
            },
            context,
        }
    }
}

/// The token of the request: `Authorization: Bearer <token>`, else the `token` query parameter.
fn token(event: &ApiGatewayCustomAuthorizerRequestTypeRequest) -> Option<&str> {
    let bearer = event
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    bearer
        .or_else(|| event.query_string_parameters.first("token"))
        .filter(|t| !t.is_empty())
}

/// Decides one `$connect`.
pub fn authorize(
    config: &AuthorizerConfig,
    event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Result<AuthorizerResponse, AuthorizerError> {
    let method_arn = event
        .method_arn
        .as_deref()
        .filter(|arn| !arn.is_empty())
        .ok_or(AuthorizerError::MissingMethodArn)?;
    let Some(token) = token(event) else {
        return guest(config, event, method_arn);
    };
    let Some((key, validation)) = &config.key else {
        tracing::info!("token refused: no key is configured");
        return Err(AuthorizerError::Unauthorized);
    };
    let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
        .map_err(|error| {
            tracing::info!(%error, "token refused");
            AuthorizerError::Unauthorized
        })?
        .claims;
    if claims.sub.is_empty() {
        tracing::info!("token refused: empty sub");
        return Err(AuthorizerError::Unauthorized);
    }
    let nickname = [&claims.nickname, &claims.name]
        .into_iter()
        .find_map(|claim| claim.as_ref()?.as_str().map(str::to_string))
        .unwrap_or_else(|| claims.sub.clone());
    let mut context = Map::new();
    context.insert("nickname".into(), nickname.into());
    context.insert("sub".into(), claims.sub.clone().into());
    Ok(AuthorizerResponse::allow(claims.sub, method_arn, context))
}

fn guest(
    config: &AuthorizerConfig,
    event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
    method_arn: &str,
) -> Result<AuthorizerResponse, AuthorizerError> {
    if !config.allow_guests {
        tracing::info!("refused: no token");
        return Err(AuthorizerError::Unauthorized);
    }
    let Some(nickname) = event
        .query_string_parameters
        .first("nickname")
        .and_then(valid_nickname)
    else {
        tracing::info!("guest refused: missing or invalid nickname");
        return Err(AuthorizerError::Unauthorized);
    };
    let mut context = Map::new();
    context.insert("nickname".into(), nickname.into());
    context.insert("guest".into(), true.into());
    Ok(AuthorizerResponse::allow(
        format!("guest:{nickname}"),
        method_arn,
        context,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<AuthorizerConfig, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AuthorizerConfig::from_vars(|name| vars.get(name).cloned())
    }

    fn key(name: &str) -> String {
        let path = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path).unwrap()
    }

    fn algorithm(config: &AuthorizerConfig) -> Option<Vec<Algorithm>> {
        config.key.as_ref().map(|(_, v)| v.algorithms.clone())
    }

    #[test]
    fn a_key_is_required_unless_guests_are_allowed() {
        assert!(matches!(config(&[]), Err(ConfigError::NoKey)));
        assert!(matches!(
            config(&[(SECRET_ENV, "  ")]),
            Err(ConfigError::NoKey)
        ));
        let guests = config(&[(ALLOW_GUESTS_ENV, "TRUE")]).unwrap();
        assert!(guests.allow_guests && guests.key.is_none());
    }

    #[test]
    fn the_key_decides_the_only_accepted_algorithm() {
        let hs = config(&[(SECRET_ENV, "s3cret")]).unwrap();
        assert_eq!(algorithm(&hs), Some(vec![Algorithm::HS256]));
        assert!(!hs.allow_guests);
        let rsa = config(&[(PUBLIC_KEY_PEM_ENV, &key("rsa-public.pem"))]).unwrap();
        assert_eq!(algorithm(&rsa), Some(vec![Algorithm::RS256]));
        // One-line PEM with `\n` escapes, as environment variables often carry it.
        let escaped = key("ec-public.pem").replace('\n', "\\n");
        let ec = config(&[(PUBLIC_KEY_PEM_ENV, &escaped)]).unwrap();
        assert_eq!(algorithm(&ec), Some(vec![Algorithm::ES256]));
        let path = format!(
            "{}/tests/fixtures/keys/rsa-public.pem",
            env!("CARGO_MANIFEST_DIR")
        );
        let file = config(&[(PUBLIC_KEY_FILE_ENV, &path)]).unwrap();
        assert_eq!(algorithm(&file), Some(vec![Algorithm::RS256]));
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(matches!(
            config(&[
                (SECRET_ENV, "s"),
                (PUBLIC_KEY_PEM_ENV, &key("rsa-public.pem"))
            ]),
            Err(ConfigError::SeveralKeys)
        ));
        assert!(matches!(
            config(&[(PUBLIC_KEY_FILE_ENV, "/nonexistent/key.pem")]),
            Err(ConfigError::KeyFile { .. })
        ));
        assert!(matches!(
            config(&[(PUBLIC_KEY_PEM_ENV, "not a key")]),
            Err(ConfigError::InvalidKey(_))
        ));
        assert!(matches!(
            config(&[(SECRET_ENV, "s"), (ALLOW_GUESTS_ENV, "yes please")]),
            Err(ConfigError::InvalidFlag(_))
        ));
    }
}
