//! Who may call the management API and the Lambda Invoke API: the access keys of
//! `[management.auth]`, their secrets read once at build, and the mode that says when SigV4 is
//! required. Failures are 403s in AWS's format (see `management::error`).

use crate::config::{AccessKeyConfig, AuthMode, ManagementAuthConfig};
use crate::sigv4::{AccessKey, AuthError, Secret, Signed};
use http::HeaderMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Checks SigV4 signatures against the configured access keys.
#[derive(Debug)]
pub struct Verifier {
    keys: HashMap<String, Secret>,
    /// The first configured key (in key order), handed to the host's local functions.
    first: AccessKey,
    region: String,
    clock_skew: Duration,
}

/// A configuration problem found while resolving the keys: the dotted field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Dotted path of the field.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

/// Reads an access key's secret from its source; on failure, the field at fault and why.
fn resolve(key: &AccessKeyConfig) -> Result<Secret, (String, String)> {
    if !key.secret.is_empty() {
        return Ok(Secret::new(key.secret.clone()));
    }
    if !key.secret_env.is_empty() {
        return match std::env::var(&key.secret_env) {
            Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
            _ => Err((
                "secret_env".into(),
                format!(
                    "environment variable {} is not set or empty",
                    key.secret_env
                ),
            )),
        };
    }
    let Some(path) = &key.secret_file else {
        return Err((
            "secret_env".into(),
            "set one of secret_env, secret_file or secret".into(),
        ));
    };
    match std::fs::read_to_string(path) {
        Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim().to_string())),
        Ok(_) => Err(("secret_file".into(), format!("{} is empty", path.display()))),
        Err(e) => Err((
            "secret_file".into(),
            format!("{} could not be read: {e}", path.display()),
        )),
    }
}

/// Whether SigV4 is required on a management API served at `addr` under `config`.
pub fn required(config: &ManagementAuthConfig, addr: SocketAddr) -> bool {
    match config.mode {
        AuthMode::Sigv4 => true,
        AuthMode::None => false,
        AuthMode::Auto => !addr.ip().is_loopback(),
    }
}

impl Verifier {
    /// The verifier for a management API served at `addr`: `None` when it is open (mode `none`,
    /// or `auto` on a loopback address). Secrets are read from their variables or files now, so
    /// a missing one stops the start instead of failing every call.
    pub fn from_config(
        config: &ManagementAuthConfig,
        region: &str,
        addr: SocketAddr,
    ) -> Result<Option<Self>, KeyError> {
        if !required(config, addr) {
            return Ok(None);
        }
        let mut keys = HashMap::new();
        let mut first = None;
        for (id, key) in &config.keys {
            let secret = resolve(key).map_err(|(field, reason)| KeyError {
                field: format!("management.auth.keys.{id}.{field}"),
                reason,
            })?;
            first.get_or_insert_with(|| AccessKey {
                id: id.clone(),
                secret: secret.clone(),
            });
            keys.insert(id.clone(), secret);
        }
        let Some(first) = first else {
            return Err(KeyError {
                field: "management.auth.keys".into(),
                reason: format!(
                    "SigV4 is required on the management API at {addr} (mode \"{}\"), but no access key is configured; add one, or set management.auth.mode = \"none\" to leave the API open",
                    config.mode.as_str()
                ),
            });
        };
        Ok(Some(Self {
            keys,
            first,
            region: region.to_string(),
            clock_skew: config.clock_skew,
        }))
    }

    /// The key the host gives its local functions so their SDK clients sign acceptably.
    pub fn first_key(&self) -> &AccessKey {
        &self.first
    }

    /// Checks everything but the payload: the signature's parts, the key, the scope and the
    /// date. Done before the body is read, so unsigned callers cannot make the host buffer it.
    pub fn precheck(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        service: &str,
        now: SystemTime,
    ) -> Result<Signed, AuthError> {
        let signed = Signed::parse(uri, headers)?;
        let Some(secret) = self.keys.get(signed.access_key_id()) else {
            return Err(AuthError::UnknownKey);
        };
        signed.check_scope(&self.region, service)?;
        signed.check_time(now, self.clock_skew)?;
        Ok(signed.with_secret(secret.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessKeyConfig;
    use crate::sigv4::tests::headers;
    use http::HeaderValue;
    use std::time::UNIX_EPOCH;

    // AWS's published SigV4 test vector `get-vanilla` (the signing test suite's credentials).
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const VANILLA_TIME: u64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    fn verifier(region: &str) -> Verifier {
        let mut config = ManagementAuthConfig {
            mode: AuthMode::Sigv4,
            ..ManagementAuthConfig::default()
        };
        config.keys.insert(
            AKID.into(),
            AccessKeyConfig {
                secret: SECRET.into(),
                ..AccessKeyConfig::default()
            },
        );
        Verifier::from_config(&config, region, ([127, 0, 0, 1], 0).into())
            .unwrap()
            .unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Checks `uri` + `headers` as the `service` signing name at `now`.
    fn check(
        v: &Verifier,
        uri: &str,
        headers: &HeaderMap,
        service: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        let uri: http::Uri = uri.parse().unwrap();
        let signed = v.precheck(&uri, headers, service, at(now))?;
        signed.verify(&http::Method::GET, &uri, headers, b"")
    }

    #[test]
    fn get_vanilla_header_signature_verifies() {
        let v = verifier("us-east-1");
        let mut h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
        ]);
        assert_eq!(check(&v, "/", &h, "service", VANILLA_TIME), Ok(()));
        // One changed signed header breaks it, and the message shows the canonical request.
        h.insert("host", HeaderValue::from_static("other.amazonaws.com"));
        let Err(AuthError::Invalid(message)) = check(&v, "/", &h, "service", VANILLA_TIME) else {
            panic!("a changed host must not verify");
        };
        assert!(message.starts_with("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."));
        assert!(message.contains("host:other.amazonaws.com"), "{message}");
    }

    #[test]
    fn get_vanilla_presigned_url_verifies() {
        let v = verifier("us-east-1");
        let h = headers(&[("host", "example.amazonaws.com")]);
        let uri = "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d";
        assert_eq!(check(&v, uri, &h, "service", VANILLA_TIME + 60), Ok(()));
        let Err(AuthError::Invalid(message)) = check(&v, uri, &h, "service", VANILLA_TIME + 3601)
        else {
            panic!("an expired presigned URL must be refused");
        };
        assert!(
            message.starts_with("Signature expired: 20150830T133600Z is now earlier than"),
            "{message}"
        );
    }

    #[test]
    fn refusals_in_aws_words() {
        let v = verifier("us-east-1");
        let auth = |credential: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host;x-amz-date, Signature=00"
            )
        };
        let with = |authorization: &str, date: &str| {
            headers(&[
                ("host", "h"),
                ("x-amz-date", date),
                ("authorization", authorization),
            ])
        };
        let date = "20150830T123600Z";
        assert_eq!(
            check(&v, "/", &headers(&[("host", "h")]), "service", VANILLA_TIME),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check(
                &v,
                "/",
                &with(&auth("NOPE/20150830/us-east-1/service/aws4_request"), date),
                "service",
                VANILLA_TIME
            ),
            Err(AuthError::UnknownKey)
        );
        let Err(AuthError::Incomplete(m)) = check(
            &v,
            "/",
            &with("Bearer token", date),
            "service",
            VANILLA_TIME,
        ) else {
            panic!("a bearer token is not a signature");
        };
        assert!(
            m.contains("not a valid key=value pair (missing equal-sign)"),
            "{m}"
        );
        let Err(AuthError::Incomplete(m)) = check(
            &v,
            "/",
            &with("AWS4-HMAC-SHA256 Signature=1", date),
            "service",
            VANILLA_TIME,
        ) else {
            panic!("missing parts");
        };
        assert!(m.starts_with("Authorization header requires 'Credential' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization="), "{m}");
        let scoped = check(
            &v,
            "/",
            &with(
                &auth("AKIDEXAMPLE/20150830/eu-west-1/lambda/aws4_request"),
                date,
            ),
            "execute-api",
            VANILLA_TIME,
        );
        assert_eq!(
            scoped,
            Err(AuthError::Invalid("Credential should be scoped to a valid region, not 'eu-west-1'. Credential should be scoped to correct service: 'execute-api'. ".into()))
        );
        let good = with(
            &auth("AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"),
            date,
        );
        assert_eq!(
            check(&v, "/", &good, "service", VANILLA_TIME + 600),
            Err(AuthError::Invalid("Signature expired: 20150830T123600Z is now earlier than 20150830T124100Z (20150830T124600Z - 5 min.)".into()))
        );
        assert_eq!(
            check(&v, "/", &good, "service", VANILLA_TIME - 600),
            Err(AuthError::Invalid("Signature not yet current: 20150830T123600Z is still later than 20150830T123100Z (20150830T122600Z + 5 min.)".into()))
        );
        // Within the window the date passes, and only the signature is wrong.
        assert!(matches!(
            check(&v, "/", &good, "service", VANILLA_TIME + 299),
            Err(AuthError::Invalid(m)) if m.starts_with("The request signature we calculated")
        ));
    }

    #[test]
    fn auto_mode_is_open_only_on_loopback() {
        let config = ManagementAuthConfig::default();
        assert!(!required(&config, ([127, 0, 0, 1], 8080).into()));
        assert!(!required(&config, "[::1]:8080".parse().unwrap()));
        assert!(required(&config, ([0, 0, 0, 0], 8080).into()));
        assert!(required(&config, ([10, 0, 0, 5], 8080).into()));
        let err =
            Verifier::from_config(&config, "us-east-1", ([0, 0, 0, 0], 8080).into()).unwrap_err();
        assert_eq!(err.field, "management.auth.keys");
        assert!(format!("{:?}", verifier("us-east-1")).contains("<redacted>"));
        assert!(!format!("{:?}", verifier("us-east-1")).contains(SECRET));
    }
}
