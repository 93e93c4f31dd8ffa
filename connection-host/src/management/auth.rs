//! Signature Version 4 verification for the management API (service `execute-api`) and the
//! Lambda Invoke API the host serves for its local functions (service `lambda`), so the AWS SDKs,
//! the AWS CLI and `awscurl` authenticate exactly as they do against AWS.
//!
//! The host rebuilds the canonical request from what it received, signs it with the configured
//! secret of the access key the request names, and compares the signatures in constant time.
//! Failures are 403s in AWS's format: `{"message":"…"}` and `x-amzn-ErrorType`.

use crate::config::{AccessKeyConfig, AuthMode, ManagementAuthConfig};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
/// Signing name of the `@connections` API (API Gateway's `execute-api`).
pub const EXECUTE_API: &str = "execute-api";
/// Signing name of the Lambda Invoke API.
pub const LAMBDA: &str = "lambda";
/// Longest lifetime of a presigned URL (`X-Amz-Expires`), as AWS allows: seven days.
const MAX_EXPIRES: u64 = 7 * 24 * 3600;

/// A secret that never appears in logs or `{:?}` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for signing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An access key the host accepts: its ID and its secret, resolved from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// The access key ID (`Credential=ID/…`).
    pub id: String,
    /// The secret access key.
    pub secret: Secret,
}

/// Checks SigV4 signatures against the configured access keys.
#[derive(Debug)]
pub struct Verifier {
    keys: HashMap<String, Secret>,
    /// The first configured key (in key order), handed to the host's local functions.
    first: AccessKey,
    region: String,
    clock_skew: Duration,
}

/// Why a request was refused; each is a 403 in AWS's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header and no presigned query parameters.
    #[error("Missing Authentication Token")]
    Missing,
    /// The signature's parts are missing or malformed.
    #[error("{0}")]
    Incomplete(String),
    /// The access key ID is not one the host knows.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// Wrong scope, a date outside the clock-skew window, or a signature that does not match.
    #[error("{0}")]
    Invalid(String),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let error_type = match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::UnknownKey => "UnrecognizedClientException",
            AuthError::Invalid(_) => "InvalidSignatureException",
        };
        let body = serde_json::json!({ "message": self.to_string() }).to_string();
        (
            StatusCode::FORBIDDEN,
            [
                ("x-amzn-ErrorType", HeaderValue::from_static(error_type)),
                (
                    http::header::CONTENT_TYPE.as_str(),
                    HeaderValue::from_static("application/json"),
                ),
            ],
            body,
        )
            .into_response()
    }
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
        let Some(secret) = self.keys.get(&signed.access_key_id) else {
            return Err(AuthError::UnknownKey);
        };
        let mut scope_errors = String::new();
        if signed.date_stamp != signed.amz_date[..8] {
            return Err(AuthError::Invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{}'.",
                signed.date_stamp,
                &signed.amz_date[..8],
                signed.amz_date
            )));
        }
        if signed.region != self.region {
            scope_errors.push_str(&format!(
                "Credential should be scoped to a valid region, not '{}'. ",
                signed.region
            ));
        }
        if signed.service != service {
            scope_errors.push_str(&format!(
                "Credential should be scoped to correct service: '{service}'. "
            ));
        }
        if signed.terminator != TERMINATOR {
            scope_errors.push_str(&format!(
                "Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{}'. ",
                signed.terminator
            ));
        }
        if !scope_errors.is_empty() {
            return Err(AuthError::Invalid(scope_errors));
        }
        self.check_time(&signed, now)?;
        Ok(Signed {
            secret: Some(secret.clone()),
            ..signed
        })
    }

    fn check_time(&self, signed: &Signed, now: SystemTime) -> Result<(), AuthError> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let skew = self.clock_skew.as_secs();
        let at = signed.signed_at;
        let earliest = now.saturating_sub(skew);
        if let Some(expires) = signed.expires {
            // A presigned URL lives X-Amz-Expires seconds from its X-Amz-Date.
            if now > at + expires {
                return Err(AuthError::Invalid(format!(
                    "Signature expired: {} is now earlier than {} ({} + {expires} sec.)",
                    amz_date(at + expires),
                    amz_date(now),
                    signed.amz_date,
                )));
            }
        } else if at < earliest {
            return Err(AuthError::Invalid(format!(
                "Signature expired: {} is now earlier than {} ({} - {})",
                signed.amz_date,
                amz_date(earliest),
                amz_date(now),
                skew_text(skew)
            )));
        }
        if at > now + skew {
            return Err(AuthError::Invalid(format!(
                "Signature not yet current: {} is still later than {} ({} + {})",
                signed.amz_date,
                amz_date(now + skew),
                amz_date(now),
                skew_text(skew)
            )));
        }
        Ok(())
    }
}

/// The skew as AWS words it in its messages (`5 min.`).
fn skew_text(secs: u64) -> String {
    if secs.is_multiple_of(60) {
        format!("{} min.", secs / 60)
    } else {
        format!("{secs} sec.")
    }
}

/// A request's signature, parsed from its `Authorization` header or presigned query.
#[derive(Debug, Clone)]
pub struct Signed {
    access_key_id: String,
    date_stamp: String,
    region: String,
    service: String,
    terminator: String,
    signed_headers: Vec<String>,
    signature: String,
    /// `X-Amz-Date` as sent (`YYYYMMDD'T'HHMMSS'Z'`).
    amz_date: String,
    /// `amz_date` in seconds since the epoch.
    signed_at: u64,
    /// `X-Amz-Expires` of a presigned URL; `None` for header authentication.
    expires: Option<u64>,
    /// The matching secret, once the key is known.
    secret: Option<Secret>,
}

impl Signed {
    /// Parses the signature's parts: from `Authorization`, else from `X-Amz-*` query parameters.
    pub fn parse(uri: &http::Uri, headers: &HeaderMap) -> Result<Self, AuthError> {
        if let Some(header) = headers.get(http::header::AUTHORIZATION) {
            let header = String::from_utf8_lossy(header.as_bytes()).into_owned();
            return Self::from_header(&header, headers);
        }
        let query = query_pairs(uri.query().unwrap_or_default());
        if query.iter().any(|(k, _)| k == "X-Amz-Algorithm") {
            return Self::from_query(&query);
        }
        Err(AuthError::Missing)
    }

    fn from_header(header: &str, headers: &HeaderMap) -> Result<Self, AuthError> {
        let (algorithm, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        let mut fields = HashMap::new();
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(AuthError::Incomplete(format!(
                    "'{part}' not a valid key=value pair (missing equal-sign) in Authorization header: '{header}'."
                )));
            };
            fields.insert(k.trim(), v.trim());
        }
        let amz_date = headers
            .get("x-amz-date")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut missing = String::new();
        for name in ["Credential", "Signature", "SignedHeaders"] {
            if !fields.contains_key(name) {
                missing.push_str(&format!(
                    "Authorization header requires '{name}' parameter. "
                ));
            }
        }
        if amz_date.is_none() {
            missing.push_str(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ",
            );
        }
        if !missing.is_empty() {
            return Err(AuthError::Incomplete(format!(
                "{missing}Authorization={header}"
            )));
        }
        if algorithm != ALGORITHM {
            return Err(AuthError::Incomplete(format!(
                "Unsupported Authorization algorithm '{algorithm}': only {ALGORITHM} is accepted."
            )));
        }
        Self::from_parts(
            fields["Credential"],
            fields["SignedHeaders"],
            fields["Signature"],
            amz_date.as_deref().unwrap_or_default(),
            None,
        )
    }

    fn from_query(query: &[(String, String)]) -> Result<Self, AuthError> {
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut missing = String::new();
        for name in [
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Signature",
            "X-Amz-SignedHeaders",
            "X-Amz-Date",
            "X-Amz-Expires",
        ] {
            if get(name).is_none() {
                missing.push_str(&format!(
                    "AWS query-string parameters must include '{name}'. "
                ));
            }
        }
        if !missing.is_empty() {
            return Err(AuthError::Incomplete(format!(
                "{missing}Re-examine the query-string parameters."
            )));
        }
        let algorithm = get("X-Amz-Algorithm").unwrap_or_default();
        if algorithm != ALGORITHM {
            return Err(AuthError::Incomplete(format!(
                "Unsupported X-Amz-Algorithm '{algorithm}': only {ALGORITHM} is accepted."
            )));
        }
        let expires = get("X-Amz-Expires")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|e| *e <= MAX_EXPIRES)
            .ok_or_else(|| {
                AuthError::Incomplete(format!(
                    "X-Amz-Expires must be a number of seconds from 0 to {MAX_EXPIRES}."
                ))
            })?;
        Self::from_parts(
            get("X-Amz-Credential").unwrap_or_default(),
            get("X-Amz-SignedHeaders").unwrap_or_default(),
            get("X-Amz-Signature").unwrap_or_default(),
            get("X-Amz-Date").unwrap_or_default(),
            Some(expires),
        )
    }

    fn from_parts(
        credential: &str,
        signed_headers: &str,
        signature: &str,
        amz_date: &str,
        expires: Option<u64>,
    ) -> Result<Self, AuthError> {
        let parts: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date_stamp, region, service, terminator] = parts[..] else {
            return Err(AuthError::Incomplete(format!(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
            )));
        };
        let Some(signed_at) = parse_amz_date(amz_date) else {
            return Err(AuthError::Incomplete(format!(
                "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601"
            )));
        };
        let signed_headers: Vec<String> = signed_headers
            .split(';')
            .filter(|h| !h.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(AuthError::Invalid(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
            ));
        }
        Ok(Self {
            access_key_id: access_key_id.to_string(),
            date_stamp: date_stamp.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            terminator: terminator.to_string(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
            amz_date: amz_date.to_string(),
            signed_at,
            expires,
            secret: None,
        })
    }

    /// Recomputes the signature over the request and `body` with the key's secret and compares
    /// it with the one sent, in constant time.
    pub fn verify(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let Some(secret) = &self.secret else {
            return Err(AuthError::UnknownKey);
        };
        let canonical = canonical_request(
            method.as_str(),
            uri.path(),
            uri.query().unwrap_or_default(),
            headers,
            &self.signed_headers,
            &hex::encode(Sha256::digest(body)),
            self.expires.is_some(),
        );
        let scope = format!(
            "{}/{}/{}/{}",
            self.date_stamp, self.region, self.service, self.terminator
        );
        let to_sign = string_to_sign(&self.amz_date, &scope, &canonical);
        let key = signing_key(
            secret.expose(),
            &self.date_stamp,
            &self.region,
            &self.service,
        );
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(to_sign.as_bytes());
        let sent = hex::decode(&self.signature).unwrap_or_default();
        // `verify_slice` compares in constant time, so timing reveals nothing about the secret.
        if mac.verify_slice(&sent).is_ok() {
            return Ok(());
        }
        Err(AuthError::Invalid(format!(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{canonical}'\n\nThe String-to-Sign should have been\n'{to_sign}'\n"
        )))
    }
}

/// `YYYYMMDD'T'HHMMSS'Z'` in seconds since the epoch.
fn parse_amz_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        month,
        u8::try_from(num(6..8)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
    )
    .ok()?;
    u64::try_from(date.with_time(t).assume_utc().unix_timestamp()).ok()
}

/// Seconds since the epoch as `YYYYMMDD'T'HHMMSS'Z'`.
fn amz_date(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `/` when `keep_slash`),
/// with upper-case hex digits, as SigV4 requires.
fn uri_encode(input: &[u8], keep_slash: bool, out: &mut String) {
    for &c in input {
        if c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && c == b'/')
        {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
}

/// The canonical URI of a path as received: dot segments and empty segments removed (SigV4's
/// normalisation for every service but S3), then each byte URI-encoded again. The path arrives
/// already encoded by the client, so `%3D` becomes `%253D`: the double encoding the SDKs apply
/// for every service but S3.
fn canonical_uri(path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let normalized = if path.contains('.') || path.contains("//") {
        let mut segments: Vec<&str> = Vec::new();
        for segment in path.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        let mut joined = format!("/{}", segments.join("/"));
        let trailing = ["/", "/.", "/.."].iter().any(|s| path.ends_with(s));
        if trailing && !joined.ends_with('/') {
            joined.push('/');
        }
        joined
    } else {
        path.to_string()
    };
    let mut out = String::with_capacity(normalized.len() + 16);
    uri_encode(normalized.as_bytes(), true, &mut out);
    out
}

/// The query's parameters, decoded (`+` is a space, as `application/x-www-form-urlencoded`
/// has it and the SDK signers read it).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The canonical query string: every parameter (but the signature itself on a presigned URL)
/// encoded, then sorted by name and value.
fn canonical_query(query: &str, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| {
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(k.as_bytes(), false, &mut ek);
            uri_encode(v.as_bytes(), false, &mut ev);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value with its ends trimmed and inner runs of spaces collapsed to one.
fn trim_all(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SigV4's canonical request.
fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    signed_headers: &[String],
    payload_hash: &str,
    presigned: bool,
) -> String {
    let mut names: Vec<&str> = signed_headers.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| trim_all(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{payload_hash}",
        canonical_uri(path),
        canonical_query(query, presigned),
        names.join(";"),
    )
}

fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k = hmac(&k, region);
    let k = hmac(&k, service);
    hmac(&k, TERMINATOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessKeyConfig;

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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
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
    fn get_vanilla_canonical_request_and_string_to_sign() {
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ]);
        let canonical = canonical_request(
            "GET",
            "/",
            "",
            &h,
            &["host".into(), "x-amz-date".into()],
            &hex::encode(Sha256::digest(b"")),
            false,
        );
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            string_to_sign(
                "20150830T123600Z",
                "20150830/us-east-1/service/aws4_request",
                &canonical
            ),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
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
    fn paths_are_double_encoded_and_normalized() {
        // What the management SDK sends for a connection ID ending in `=`.
        assert_eq!(
            canonical_uri("/dev/@connections/abc%3D"),
            "/dev/%40connections/abc%253D"
        );
        assert_eq!(
            canonical_uri("/dev/%40connections/abc%3D"),
            "/dev/%2540connections/abc%253D"
        );
        assert_eq!(canonical_uri("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_query("b=2&a=1&a=0&c", false), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("k=a+b%2Fc", false), "k=a%20b%2Fc");
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
