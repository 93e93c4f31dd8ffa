//! Identity sources: the request parameters that must be present before the authorizer is called.

use crate::events::MultiMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

const HEADER_PREFIX: &str = "route.request.header.";
const QUERY_PREFIX: &str = "route.request.querystring.";

/// One entry of an authorizer's `identity_sources`, written as API Gateway writes WebSocket
/// identity sources: `route.request.header.NAME` or `route.request.querystring.NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A request header, matched case-insensitively as HTTP header names are.
    Header(String),
    /// A query-string parameter, matched exactly (query names are case-sensitive).
    QueryString(String),
}

/// Why an identity source is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid identity source {text:?}: {reason}")]
pub struct IdentitySourceError {
    /// The text as written.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for IdentitySource {
    type Err = IdentitySourceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| IdentitySourceError {
            text: text.to_string(),
            reason,
        };
        if let Some(name) = text.strip_prefix(HEADER_PREFIX) {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(invalid("the header name must be a non-empty HTTP token"));
            }
            return Ok(Self::Header(name.to_string()));
        }
        if let Some(name) = text.strip_prefix(QUERY_PREFIX) {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "the parameter name must be non-empty, without spaces or control characters",
                ));
            }
            return Ok(Self::QueryString(name.to_string()));
        }
        // API Gateway also accepts these, but the host has no stage variables (such a source would
        // refuse every connection) and context variables are always set (such a source would
        // check nothing): refusing them at load time is clearer than either.
        if text.starts_with("stageVariables.") || text.starts_with("context.") {
            return Err(invalid(
                "stage-variable and context identity sources are not supported; use route.request.header.NAME or route.request.querystring.NAME",
            ));
        }
        Err(invalid(
            "WebSocket identity sources are route.request.header.NAME or route.request.querystring.NAME",
        ))
    }
}

/// RFC 9110 `tchar`: what a header name may contain.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "{HEADER_PREFIX}{name}"),
            Self::QueryString(name) => write!(f, "{QUERY_PREFIX}{name}"),
        }
    }
}

impl Serialize for IdentitySource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IdentitySource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl IdentitySource {
    /// The source's value in a request: the last value of a repeated header or parameter, as the
    /// single-value maps of the authorizer event hold it.
    pub fn value<'r>(&self, headers: &'r MultiMap, query: &'r MultiMap) -> Option<&'r str> {
        match self {
            Self::Header(name) => headers.get(name),
            Self::QueryString(name) => query
                .0
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, values)| values.last())
                .map(String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_query_sources_and_prints_them_back() {
        for text in [
            "route.request.header.Authorization",
            "route.request.header.X-Api-Token",
            "route.request.querystring.token",
            "route.request.querystring.access.token",
        ] {
            let source: IdentitySource = text.parse().unwrap();
            assert_eq!(source.to_string(), text);
        }
        assert_eq!(
            "route.request.header.Auth".parse(),
            Ok(IdentitySource::Header("Auth".into()))
        );
        assert_eq!(
            "route.request.querystring.t".parse(),
            Ok(IdentitySource::QueryString("t".into()))
        );
    }

    #[test]
    fn refuses_other_syntaxes() {
        for text in [
            "",
            "Authorization",
            "route.request.header.",
            "route.request.header.Bad Name",
            "route.request.header.a:b",
            "route.request.querystring.",
            "route.request.querystring.a b",
            "route.request.body.token",
            "method.request.header.Authorization",
            "$request.header.Authorization",
            "stageVariables.key",
            "context.identity.sourceIp",
            "Route.Request.Header.Authorization",
        ] {
            let err = text.parse::<IdentitySource>().unwrap_err();
            assert_eq!(err.text, text);
            assert!(err.to_string().contains("identity source"), "{err}");
        }
    }

    #[test]
    fn values_come_from_headers_case_insensitively_and_from_the_query_exactly() {
        let headers = MultiMap::from_headers([("authorization", "a"), ("Authorization", "b")]);
        let query = MultiMap::from_query("token=1&token=2&empty=&Case=x");
        let header = IdentitySource::Header("AUTHORIZATION".into());
        assert_eq!(header.value(&headers, &query), Some("b"));
        let token = IdentitySource::QueryString("token".into());
        assert_eq!(token.value(&headers, &query), Some("2"));
        let empty = IdentitySource::QueryString("empty".into());
        assert_eq!(empty.value(&headers, &query), Some(""));
        let case = IdentitySource::QueryString("case".into());
        assert_eq!(case.value(&headers, &query), None);
        let missing = IdentitySource::Header("X-Missing".into());
        assert_eq!(missing.value(&headers, &query), None);
    }

    #[test]
    fn deserializes_from_toml_strings() {
        #[derive(Deserialize)]
        struct Sources {
            s: Vec<IdentitySource>,
        }
        let ok: Sources = toml::from_str(r#"s = ["route.request.header.A"]"#).unwrap();
        assert_eq!(ok.s, [IdentitySource::Header("A".into())]);
        let err = toml::from_str::<Sources>(r#"s = ["header.A"]"#)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("route.request.header.NAME"),
            "{err}"
        );
    }
}
