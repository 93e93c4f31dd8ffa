//! Built-in JWT verification on `$connect` (an extension, `type = "jwt"`), for hosts without an
//! authorizer function.
//!
//! The keys are read and parsed once, when the configuration is validated and again at start.
//! Each key pins the one algorithm it verifies, whatever a token's header says: an `HS256` token
//! is only ever checked against an HMAC secret, so a token "signed" with a public key's bytes as
//! an HMAC secret (algorithm confusion) finds no key, and `alg: none` is not an algorithm at all.
//! A key with a `kid` verifies only tokens naming it. Expiry is required; `nbf`, and `iss` and
//! `aud` when configured, are checked with the configured leeway on the times.

use super::Claims;
use crate::config::{JwtAuthorizerConfig, JwtKeyConfig, JwtTokenSource};
use crate::events::MultiMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Where a request's token is, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    /// `Authorization: Bearer TOKEN`.
    Bearer,
    /// The query-string parameter of this name.
    Query(String),
    /// The offered subprotocol right after this marker protocol.
    Subprotocol(String),
}

/// One verification key with the only algorithm it accepts.
#[derive(Debug)]
struct Key {
    kid: Option<String>,
    decoding: DecodingKey,
    validation: Validation,
}

/// Verifies the JWT of each connection attempt against the configured keys.
#[derive(Debug)]
pub struct JwtAuthorizer {
    placement: Placement,
    keys: Vec<Key>,
}

/// Why a JWT authorizer's configuration is unusable: the field at fault (relative to the
/// authorizer's table, e.g. `keys[0].pem_file`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct KeyError {
    /// The field at fault, relative to the authorizer's table.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a token was refused; every case answers 401.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request carries no token where the authorizer looks for one.
    #[error("no token in {0}")]
    Missing(&'static str),
    /// The token is not a JWT with a known signing algorithm (`alg: none` lands here).
    #[error("not a JWT: {0}")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    /// No configured key verifies the token's `alg` (and `kid`).
    #[error("no key for alg {alg:?} and kid {kid:?}")]
    NoKey {
        /// The token header's `alg`.
        alg: Algorithm,
        /// The token header's `kid`.
        kid: Option<String>,
    },
    /// The signature or a claim check failed (expired, not yet valid, wrong issuer or audience).
    #[error("{0}")]
    Rejected(#[source] jsonwebtoken::errors::Error),
}

/// The longest leeway accepted: beyond it `exp` would hardly mean anything.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

impl JwtAuthorizer {
    /// Reads and parses every key of `config`, checking the rest of it on the way.
    pub fn load(config: &JwtAuthorizerConfig) -> Result<Self, KeyError> {
        let invalid = |field: &str, reason: String| KeyError {
            field: field.into(),
            reason,
        };
        let placement = match config.token_source {
            JwtTokenSource::Header => Placement::Bearer,
            JwtTokenSource::Query => {
                if config.query_parameter.is_empty() {
                    return Err(invalid(
                        "query_parameter",
                        "must not be empty with token_source = \"query\"".into(),
                    ));
                }
                Placement::Query(config.query_parameter.clone())
            }
            JwtTokenSource::Subprotocol => {
                let marker = &config.subprotocol_marker;
                if marker.is_empty() || !marker.bytes().all(is_token_byte) {
                    return Err(invalid(
                        "subprotocol_marker",
                        "must be a non-empty HTTP token (letters, digits, '-', '.', …), as subprotocol names are".into(),
                    ));
                }
                Placement::Subprotocol(marker.clone())
            }
        };
        if config.leeway > MAX_LEEWAY {
            return Err(invalid("leeway", "must be at most 1h".into()));
        }
        if config.keys.is_empty() {
            return Err(invalid(
                "keys",
                "at least one key is needed, or every connection is refused".into(),
            ));
        }
        let mut keys = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let field = |f: &str| format!("keys[{i}].{f}");
            load_key(key, config, &mut keys).map_err(|(f, reason)| KeyError {
                field: field(f),
                reason,
            })?;
        }
        Ok(Self { placement, keys })
    }

    /// Verifies the token `headers` or `query` carry; the claims on success.
    pub fn verify(&self, headers: &MultiMap, query: &MultiMap) -> Result<Claims, TokenError> {
        let token = self.token(headers, query)?;
        let header = jsonwebtoken::decode_header(token).map_err(TokenError::Malformed)?;
        let mut last = None;
        for key in self.keys.iter().filter(|k| {
            k.validation.algorithms == [header.alg]
                && k.kid
                    .as_ref()
                    .is_none_or(|kid| Some(kid) == header.kid.as_ref())
        }) {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(
                token,
                &key.decoding,
                &key.validation,
            ) {
                Ok(data) => return Ok(claims(data.claims)),
                // Another key of the same algorithm may have signed it (kid-less keys).
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => last = Some(e),
                // The signature checked out, so the claims are at fault whatever the key.
                Err(e) => return Err(TokenError::Rejected(e)),
            }
        }
        Err(match last {
            Some(e) => TokenError::Rejected(e),
            None => TokenError::NoKey {
                alg: header.alg,
                kid: header.kid,
            },
        })
    }

    /// The token of a request, where the configuration says it is.
    fn token<'r>(&self, headers: &'r MultiMap, query: &'r MultiMap) -> Result<&'r str, TokenError> {
        let token = match &self.placement {
            Placement::Bearer => headers.get("authorization").and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                // The scheme is case-insensitive (RFC 9110 §11.1).
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            }),
            Placement::Query(name) => query
                .0
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, values)| values.last())
                .map(String::as_str),
            Placement::Subprotocol(marker) => offered_token(headers, marker),
        };
        token
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Missing(match self.placement {
                Placement::Bearer => "the Authorization header (Bearer)",
                Placement::Query(_) => "the query string",
                Placement::Subprotocol(_) => "Sec-WebSocket-Protocol",
            }))
    }

    /// The subprotocol the 101 answers with, given what `$connect` selected (`chosen`).
    ///
    /// With the token in `Sec-WebSocket-Protocol`, the client offered protocols, and browsers
    /// fail a handshake that offered some and got none back: without a choice of `$connect`, the
    /// answer is the marker. The token itself is never echoed, even if `$connect` picked it.
    pub fn subprotocol(&self, headers: &MultiMap, chosen: Option<String>) -> Option<String> {
        let Placement::Subprotocol(marker) = &self.placement else {
            return chosen;
        };
        let token = offered_token(headers, marker);
        match chosen {
            Some(c) if Some(c.as_str()) != token => Some(c),
            _ => Some(marker.clone()),
        }
    }
}

/// The protocol offered right after `marker` in `Sec-WebSocket-Protocol` (over all its lines).
fn offered_token<'r>(headers: &'r MultiMap, marker: &str) -> Option<&'r str> {
    let mut offered = headers
        .0
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|(_, values)| values.iter())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    // Subprotocol names are case-sensitive (RFC 6455 §11.3.4).
    offered.find(|p| *p == marker)?;
    offered.next()
}

/// RFC 9110 `tchar`: what a subprotocol name may contain.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The validation of tokens for one key: its one algorithm, `exp` required, `nbf` checked, and
/// `iss` and `aud` required when configured (jsonwebtoken checks them only when present).
fn validation(algorithm: Algorithm, config: &JwtAuthorizerConfig) -> Validation {
    let mut v = Validation::new(algorithm);
    v.leeway = config.leeway.as_secs();
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if !config.issuer.is_empty() {
        v.set_issuer(&[&config.issuer]);
        required.push("iss");
    }
    if config.audience.is_empty() {
        // Otherwise any token with an `aud` is refused when no audience is configured.
        v.validate_aud = false;
    } else {
        v.set_audience(&config.audience);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// Loads one configured key (several for a JWKS file) into `keys`; on failure, the field at
/// fault and why.
fn load_key(
    key: &JwtKeyConfig,
    config: &JwtAuthorizerConfig,
    keys: &mut Vec<Key>,
) -> Result<(), (&'static str, String)> {
    let sources = [
        !key.secret_env.is_empty(),
        key.secret_file.is_some(),
        !key.secret.is_empty(),
        key.pem_file.is_some(),
        key.jwks_file.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err((
            "secret_env",
            "set exactly one of secret_env, secret_file, secret, pem_file or jwks_file".into(),
        ));
    }
    if let Some(path) = &key.jwks_file {
        if !key.kid.is_empty() {
            return Err((
                "kid",
                "not used with jwks_file: its keys carry their own kid".into(),
            ));
        }
        return load_jwks(path, key.algorithm, config, keys).map_err(|r| ("jwks_file", r));
    }
    let Some(algorithm) = key.algorithm else {
        return Err((
            "algorithm",
            "required: the one algorithm this key verifies (HS256, RS256, ES256, EdDSA, …)".into(),
        ));
    };
    let decoding = if let Some(path) = &key.pem_file {
        let pem = read(path).map_err(|r| ("pem_file", r))?;
        let (parsed, kind) = match algorithm.family() {
            AlgorithmFamily::Hmac => {
                return Err((
                    "pem_file",
                    format!(
                        "{algorithm:?} needs a secret (secret_env, secret_file or secret), not a PEM key"
                    ),
                ));
            }
            AlgorithmFamily::Rsa => (DecodingKey::from_rsa_pem(&pem), "an RSA"),
            AlgorithmFamily::Ec => (DecodingKey::from_ec_pem(&pem), "an EC"),
            AlgorithmFamily::Ed => (DecodingKey::from_ed_pem(&pem), "an Ed25519"),
        };
        parsed.map_err(|e| {
            (
                "pem_file",
                format!(
                    "{} is not {kind} public key in PEM, as {algorithm:?} needs: {e}",
                    path.display()
                ),
            )
        })?
    } else {
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err((
                "algorithm",
                format!(
                    "{algorithm:?} verifies with a public key (pem_file or jwks_file), not a secret"
                ),
            ));
        }
        let (field, secret) = secret(key)?;
        if secret.is_empty() {
            return Err((field, "the secret is empty".into()));
        }
        DecodingKey::from_secret(&secret)
    };
    keys.push(Key {
        kid: (!key.kid.is_empty()).then(|| key.kid.clone()),
        decoding,
        validation: validation(algorithm, config),
    });
    Ok(())
}

/// An HMAC secret from its source, with the field it came from.
fn secret(key: &JwtKeyConfig) -> Result<(&'static str, Vec<u8>), (&'static str, String)> {
    if !key.secret.is_empty() {
        return Ok(("secret", key.secret.clone().into_bytes()));
    }
    if !key.secret_env.is_empty() {
        return match std::env::var(&key.secret_env) {
            Ok(v) => Ok(("secret_env", v.into_bytes())),
            Err(_) => Err((
                "secret_env",
                format!("environment variable {} is not set", key.secret_env),
            )),
        };
    }
    let path = key.secret_file.as_deref().expect("one source is set");
    let bytes = read(path).map_err(|r| ("secret_file", r))?;
    // A file written by an editor or `echo` ends with a newline that is not part of the secret.
    Ok(("secret_file", bytes.trim_ascii().to_vec()))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{} could not be read: {e}", path.display()))
}

/// Loads the signing keys of a JWK Set: each pins its own `alg`, or `default` when it has none.
/// Encryption keys are skipped; anything else unusable is an error, as a half-loaded key set
/// would refuse tokens for no visible reason.
fn load_jwks(
    path: &Path,
    default: Option<Algorithm>,
    config: &JwtAuthorizerConfig,
    keys: &mut Vec<Key>,
) -> Result<(), String> {
    let text = read(path)?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a JSON Web Key Set: {e}", path.display()))?;
    let before = keys.len();
    for (i, jwk) in set.keys.iter().enumerate() {
        let common = &jwk.common;
        let name = match &common.key_id {
            Some(kid) => format!("{} key {i} (kid {kid:?})", path.display()),
            None => format!("{} key {i}", path.display()),
        };
        if common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let algorithm = match common.key_algorithm {
            Some(alg) => alg
                .to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("{name}: alg {alg} is not a JWT signing algorithm"))?,
            None => default.ok_or_else(|| {
                format!("{name} has no alg; set the key's algorithm in the configuration")
            })?,
        };
        if let (Some(default), Some(_)) = (default, common.key_algorithm)
            && default != algorithm
        {
            return Err(format!(
                "{name}: alg {algorithm:?} differs from the configured algorithm {default:?}"
            ));
        }
        if common.key_algorithm == Some(KeyAlgorithm::UNKNOWN_ALGORITHM) {
            return Err(format!("{name}: unknown alg"));
        }
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("{name}: {e}"))?;
        if decoding.family() != algorithm.family() {
            return Err(format!(
                "{name}: a {:?} key cannot verify {algorithm:?}",
                decoding.family()
            ));
        }
        keys.push(Key {
            kid: common.key_id.clone(),
            decoding,
            validation: validation(algorithm, config),
        });
    }
    if keys.len() == before {
        return Err(format!("{} holds no signing key", path.display()));
    }
    Ok(())
}

/// The authorizer context of verified claims: `principalId` = `sub`, and every other claim at
/// top level. Strings, numbers and booleans keep their JSON type, as API Gateway's context
/// allows; arrays and objects, which it does not, become their JSON text; null claims are
/// left out.
fn claims(token: serde_json::Map<String, Value>) -> Claims {
    let mut out = Claims::new();
    for (name, value) in token {
        match value {
            Value::Null => {}
            Value::Array(_) | Value::Object(_) => {
                out.insert(name, Value::String(value.to_string()));
            }
            value => {
                out.insert(name, value);
            }
        }
    }
    // A `principalId` claim must not pose as the principal: only `sub` names it.
    out.remove("principalId");
    if let Some(Value::String(sub)) = out.get("sub") {
        let sub = Value::String(sub.clone());
        out.insert("principalId".into(), sub);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-enough-length!!";

    /// Files named relative to the crate are made absolute: another test (figment's Jail)
    /// changes the process's working directory while these run.
    fn config(toml: &str) -> JwtAuthorizerConfig {
        let root = env!("CARGO_MANIFEST_DIR");
        let toml = toml
            .replace("\"tests/fixtures/", &format!("\"{root}/tests/fixtures/"))
            .replace("\"Cargo.toml\"", &format!("\"{root}/Cargo.toml\""));
        toml::from_str(&toml).unwrap()
    }

    fn hs256() -> JwtAuthorizer {
        JwtAuthorizer::load(&config(&format!(
            "issuer = \"https://issuer.test\"\naudience = [\"api\"]\n[[keys]]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
        )))
        .unwrap()
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn sign(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn good() -> Value {
        json!({"sub": "user-1", "iss": "https://issuer.test", "aud": "api", "exp": now() + 300})
    }

    fn bearer(token: &str) -> MultiMap {
        MultiMap::from_headers([("Authorization", format!("Bearer {token}").as_str())])
    }

    fn verify(auth: &JwtAuthorizer, token: &str) -> Result<Claims, TokenError> {
        auth.verify(&bearer(token), &MultiMap::default())
    }

    #[test]
    fn claims_map_to_the_context_with_sub_as_principal() {
        let mut c = good();
        c["groups"] = json!(["a", "b"]);
        c["profile"] = json!({"n": 1});
        c["admin"] = json!(true);
        c["nothing"] = Value::Null;
        c["principalId"] = json!("spoof");
        let claims = verify(&hs256(), &sign(c.clone())).unwrap();
        assert_eq!(claims["principalId"], "user-1");
        assert_eq!(claims["sub"], "user-1");
        assert_eq!(claims["groups"], r#"["a","b"]"#);
        assert_eq!(claims["profile"], r#"{"n":1}"#);
        assert_eq!(claims["admin"], true);
        assert_eq!(claims["exp"], c["exp"]);
        assert!(!claims.contains_key("nothing"));

        let mut anonymous = good();
        anonymous.as_object_mut().unwrap().remove("sub");
        anonymous["principalId"] = json!("spoof");
        let claims = verify(&hs256(), &sign(anonymous)).unwrap();
        assert!(!claims.contains_key("principalId"), "{claims:?}");
    }

    #[test]
    fn claim_checks_refuse() {
        let auth = hs256();
        let with = |k: &str, v: Value| {
            let mut c = good();
            c[k] = v;
            sign(c)
        };
        let without = |k: &str| {
            let mut c = good();
            c.as_object_mut().unwrap().remove(k);
            sign(c)
        };
        for (what, token) in [
            ("expired", with("exp", json!(now() - 120))),
            ("not yet valid", with("nbf", json!(now() + 120))),
            ("wrong issuer", with("iss", json!("https://other.test"))),
            ("wrong audience", with("aud", json!(["other"]))),
            ("no exp", without("exp")),
            ("no iss", without("iss")),
            ("no aud", without("aud")),
        ] {
            let err = verify(&auth, &token).unwrap_err();
            assert!(matches!(err, TokenError::Rejected(_)), "{what}: {err}");
        }
        // Inside the leeway (60 s by default), clocks may disagree.
        verify(&auth, &with("exp", json!(now() - 30))).unwrap();
        verify(&auth, &with("nbf", json!(now() + 30))).unwrap();
        verify(&auth, &with("aud", json!(["other", "api"]))).unwrap();
    }

    #[test]
    fn tokens_are_read_where_configured() {
        let claims = sign(json!({"sub": "u", "exp": now() + 60}));
        let key = format!("[[keys]]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n");
        let none = MultiMap::default();

        let header = JwtAuthorizer::load(&config(&key)).unwrap();
        for value in [format!("Bearer {claims}"), format!("bearer  {claims} ")] {
            let headers = MultiMap::from_headers([("authorization", value.as_str())]);
            header.verify(&headers, &none).unwrap();
        }
        for value in [claims.clone(), format!("Basic {claims}"), "Bearer ".into()] {
            let headers = MultiMap::from_headers([("Authorization", value.as_str())]);
            let err = header.verify(&headers, &none).unwrap_err();
            assert!(matches!(err, TokenError::Missing(_)), "{value}: {err}");
        }

        let query = JwtAuthorizer::load(&config(&format!(
            "token_source = \"query\"\nquery_parameter = \"jwt\"\n{key}"
        )))
        .unwrap();
        query
            .verify(&none, &MultiMap::from_query(&format!("jwt={claims}")))
            .unwrap();
        let err = query
            .verify(&bearer(&claims), &MultiMap::from_query("jwt="))
            .unwrap_err();
        assert!(matches!(err, TokenError::Missing(_)), "{err}");

        let sub = JwtAuthorizer::load(&config(&format!("token_source = \"subprotocol\"\n{key}")))
            .unwrap();
        let offered = format!("chat, bearer, {claims}");
        let headers = MultiMap::from_headers([("Sec-WebSocket-Protocol", offered.as_str())]);
        sub.verify(&headers, &none).unwrap();
        let split = MultiMap::from_headers([
            ("Sec-WebSocket-Protocol", "bearer"),
            ("sec-websocket-protocol", claims.as_str()),
        ]);
        sub.verify(&split, &none).unwrap();
        for offered in ["chat", "bearer", "Bearer, x", &claims] {
            let headers = MultiMap::from_headers([("Sec-WebSocket-Protocol", offered)]);
            let err = sub.verify(&headers, &none).unwrap_err();
            assert!(matches!(err, TokenError::Missing(_)), "{offered}: {err}");
        }
    }

    #[test]
    fn the_101_never_echoes_the_token() {
        let key = format!("[[keys]]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n");
        let sub = JwtAuthorizer::load(&config(&format!("token_source = \"subprotocol\"\n{key}")))
            .unwrap();
        let headers = MultiMap::from_headers([("Sec-WebSocket-Protocol", "chat, bearer, t.o.k")]);
        assert_eq!(sub.subprotocol(&headers, None).as_deref(), Some("bearer"));
        assert_eq!(
            sub.subprotocol(&headers, Some("chat".into())).as_deref(),
            Some("chat")
        );
        assert_eq!(
            sub.subprotocol(&headers, Some("t.o.k".into())).as_deref(),
            Some("bearer")
        );
        let header = JwtAuthorizer::load(&config(&key)).unwrap();
        assert_eq!(header.subprotocol(&headers, None), None);
        assert_eq!(
            header.subprotocol(&headers, Some("chat".into())).as_deref(),
            Some("chat")
        );
    }

    #[test]
    fn alg_none_and_unknown_algorithms_are_not_jwts() {
        let b64 = |v: Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let body = b64(good());
        for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "None"})] {
            let token = format!("{}.{body}.", b64(header));
            let err = verify(&hs256(), &token).unwrap_err();
            assert!(matches!(err, TokenError::Malformed(_)), "{err}");
        }
        let err = verify(&hs256(), "not-a-jwt").unwrap_err();
        assert!(matches!(err, TokenError::Malformed(_)), "{err}");
    }

    #[test]
    fn a_token_of_another_algorithm_or_kid_finds_no_key() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &good(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let err = verify(&hs256(), &token).unwrap_err();
        assert!(matches!(err, TokenError::NoKey { .. }), "{err}");

        let keyed = JwtAuthorizer::load(&config(&format!(
            "[[keys]]\nalgorithm = \"HS256\"\nkid = \"k1\"\nsecret = \"{SECRET}\"\n"
        )))
        .unwrap();
        let mut header = Header::new(Algorithm::HS256);
        let err = verify(&keyed, &sign(good())).unwrap_err();
        assert!(matches!(err, TokenError::NoKey { .. }), "{err}");
        header.kid = Some("k1".into());
        let signed = |header: &Header| {
            jsonwebtoken::encode(
                header,
                &good(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        verify(&keyed, &signed(&header)).unwrap();
        header.kid = Some("k2".into());
        let err = verify(&keyed, &signed(&header)).unwrap_err();
        assert!(matches!(err, TokenError::NoKey { .. }), "{err}");
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let cases = [
            ("", "keys"),
            ("[[keys]]\nsecret = \"s\"", "keys[0].algorithm"),
            ("[[keys]]\nalgorithm = \"HS256\"", "keys[0].secret_env"),
            (
                "[[keys]]\nalgorithm = \"HS256\"\nsecret = \"s\"\nsecret_env = \"S\"",
                "keys[0].secret_env",
            ),
            (
                "[[keys]]\nalgorithm = \"HS256\"\nsecret_env = \"CONNECTION_HOST_TEST_UNSET_JWT_SECRET\"",
                "keys[0].secret_env",
            ),
            (
                "[[keys]]\nalgorithm = \"RS256\"\nsecret = \"s\"",
                "keys[0].algorithm",
            ),
            (
                "[[keys]]\nalgorithm = \"HS256\"\npem_file = \"Cargo.toml\"",
                "keys[0].pem_file",
            ),
            (
                "[[keys]]\nalgorithm = \"RS256\"\npem_file = \"/nonexistent/key.pem\"",
                "keys[0].pem_file",
            ),
            (
                "[[keys]]\nalgorithm = \"ES256\"\npem_file = \"Cargo.toml\"",
                "keys[0].pem_file",
            ),
            ("[[keys]]\njwks_file = \"Cargo.toml\"", "keys[0].jwks_file"),
            (
                "[[keys]]\njwks_file = \"tests/fixtures/jwt/jwks.json\"\nkid = \"x\"",
                "keys[0].kid",
            ),
            (
                "[[keys]]\njwks_file = \"tests/fixtures/jwt/jwks.json\"\nalgorithm = \"RS384\"",
                "keys[0].jwks_file",
            ),
            (
                "token_source = \"query\"\nquery_parameter = \"\"\n[[keys]]\nalgorithm = \"HS256\"\nsecret = \"s\"",
                "query_parameter",
            ),
            (
                "token_source = \"subprotocol\"\nsubprotocol_marker = \"a b\"\n[[keys]]\nalgorithm = \"HS256\"\nsecret = \"s\"",
                "subprotocol_marker",
            ),
            (
                "leeway = \"2h\"\n[[keys]]\nalgorithm = \"HS256\"\nsecret = \"s\"",
                "leeway",
            ),
        ];
        for (toml, field) in cases {
            let err = JwtAuthorizer::load(&config(toml)).unwrap_err();
            assert_eq!(err.field, field, "{toml}: {err}");
        }
        let err = JwtAuthorizer::load(&config(
            "[[keys]]\nalgorithm = \"RS256\"\npem_file = \"/nonexistent/key.pem\"",
        ))
        .unwrap_err();
        assert!(err.reason.contains("/nonexistent/key.pem"), "{err}");
    }

    #[test]
    fn a_jwks_file_loads_each_key_with_its_kid_and_alg() {
        let auth = JwtAuthorizer::load(&config(
            "[[keys]]\njwks_file = \"tests/fixtures/jwt/jwks.json\"",
        ))
        .unwrap();
        let kids: Vec<_> = auth.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("one"), Some("two")]);
        assert!(
            auth.keys
                .iter()
                .all(|k| k.validation.algorithms == [Algorithm::RS256])
        );
    }
}
