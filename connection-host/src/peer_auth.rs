//! How the hosts of a cluster sign the calls they forward to each other (a management call for a
//! connection another host holds, a broadcast batch): an HMAC-SHA256 keyed with `cluster.secret`
//! over the call and a timestamp, so the secret never travels, a call cannot be altered, and a
//! captured call is refused once [`FORWARD_WINDOW`] has passed. A wire format of its own, kept
//! public so that it is documented in one place.

use http::{HeaderMap, Method};
use std::time::Duration;

/// Header marking a call forwarded by another host (its value is the sender's `host_id`): it is
/// served locally, never forwarded again.
pub const FORWARDED_HEADER: &str = "x-connection-host-forwarded";
/// Header with the time a host-to-host call was signed, in Unix epoch milliseconds.
pub const DATE_HEADER: &str = "x-connection-host-date";
/// Header with a host-to-host call's signature: lower-case hex of [`signature`].
pub const SIGNATURE_HEADER: &str = "x-connection-host-signature";
/// How far a host-to-host call's [`DATE_HEADER`] may be from the receiving host's clock, either
/// way: a captured call is refused once this has passed. The hosts of a cluster keep their clocks
/// in step (NTP, or Amazon Time Sync on AWS) far closer than this.
pub const FORWARD_WINDOW: Duration = Duration::from_secs(30);

/// Why a host-to-host call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardAuthError {
    /// A signature header is absent or not text.
    #[error("missing or unreadable {0} header")]
    Missing(&'static str),
    /// The date header is not a number of milliseconds.
    #[error("the date header is not epoch milliseconds")]
    BadDate,
    /// The call was signed too long ago (a replay) or too far ahead.
    #[error("signed outside the replay window")]
    OutsideWindow,
    /// The signature does not match: another secret, or an altered call.
    #[error("signature mismatch")]
    Mismatch,
}

/// The signature of a host-to-host call: lower-case hex of HMAC-SHA256, keyed with
/// `cluster.secret`, of
///
/// ```text
/// CONNECTION-HOST-HMAC-SHA256\n{method}\n{path and query}\n{date ms}\n{sender host_id}\n{hex SHA-256 of body}
/// ```
///
/// The path and query are those of the request line, as sent and as received.
pub fn signature(
    secret: &[u8],
    method: &Method,
    path_and_query: &str,
    date_ms: i64,
    from_host: &str,
    body: &[u8],
) -> String {
    use hmac::Mac;
    use sha2::Digest;
    let body_hash = hex::encode(sha2::Sha256::digest(body));
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(
        format!("CONNECTION-HOST-HMAC-SHA256\n{method}\n{path_and_query}\n{date_ms}\n{from_host}\n{body_hash}")
            .as_bytes(),
    );
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a host-to-host call: its signature (compared in constant time) over `method`,
/// `path_and_query` as received, its date, its sender and `body`, keyed with `secret`, and that
/// its date is within [`FORWARD_WINDOW`] of `now_ms`.
pub fn verify(
    secret: &[u8],
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<(), ForwardAuthError> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(ForwardAuthError::Missing(name))
    };
    let (from, date, given) = (
        header(FORWARDED_HEADER)?,
        header(DATE_HEADER)?,
        header(SIGNATURE_HEADER)?,
    );
    let date: i64 = date.parse().map_err(|_| ForwardAuthError::BadDate)?;
    let window = i64::try_from(FORWARD_WINDOW.as_millis()).unwrap_or(i64::MAX);
    if now_ms.abs_diff(date) > window.unsigned_abs() {
        return Err(ForwardAuthError::OutsideWindow);
    }
    let expected = signature(secret, method, path_and_query, date, from, body);
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ForwardAuthError::Mismatch)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
