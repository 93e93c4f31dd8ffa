//! Identifiers and timestamps in the formats API Gateway uses.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use rand::RngCore;
use std::time::{SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::macros::format_description;

/// A new 16-character ID in API Gateway's shape: 11 random bytes as URL-safe base64, ending in `=`.
///
/// Used for `connectionId`, `requestId`/`extendedRequestId` and `messageId` alike; 88 random bits make
/// collisions negligible and IDs unguessable, so a connection ID can't be probed by a third party.
pub fn new_id() -> String {
    let mut bytes = [0u8; 11];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE.encode(bytes)
}

/// Whether `id` has the shape of an API Gateway connection ID (15 base64url characters and `=`).
pub fn is_well_formed_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 16
        && b[15] == b'='
        && b[..15]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// An X-Ray trace header value, `Root=1-{epoch seconds hex}-{24 hex}`, as API Gateway adds to `$connect`.
pub fn trace_id(now_ms: i64) -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    let mut hex = String::with_capacity(24);
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("Root=1-{:08x}-{hex}", now_ms / 1000)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn datetime(epoch_ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(epoch_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `requestTime` in Common Log Format, e.g. `09/Feb/2024:18:23:28 +0000`.
pub fn clf_time(epoch_ms: i64) -> String {
    let fmt = format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    datetime(epoch_ms).format(&fmt).unwrap_or_default()
}

/// ISO 8601 with milliseconds in UTC, e.g. `2022-10-26T19:57:25.104Z` (GetConnection timestamps).
pub fn iso8601_ms(epoch_ms: i64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    datetime(epoch_ms).format(&fmt).unwrap_or_default()
}

/// An HTTP `Date` header value (IMF-fixdate).
pub fn http_date(epoch_ms: i64) -> String {
    let fmt = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    datetime(epoch_ms).format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_api_gateway_shape_and_differ() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 16);
        assert!(a.ends_with('='));
        assert!(is_well_formed_id(&a), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn captured_ids_are_well_formed_and_others_are_not() {
        for id in ["BFaT_fALIAMCKug=", "eHrdFcnvvHcCE-w=", "JC1dgf9yoAMCK-g="] {
            assert!(is_well_formed_id(id), "{id}");
        }
        for id in [
            "",
            "abc",
            "BFaT_fALIAMCKug",
            "BFaT_fALIAMCKu==",
            "BFaT/fALIAMCKug=",
            "BFaT_fALIAMCKug=x",
        ] {
            assert!(!is_well_formed_id(id), "{id}");
        }
    }

    #[test]
    fn timestamps_match_captured_formats() {
        // 1731324924561 is the requestTimeEpoch of the captured CONNECT sample (11/Nov/2024:11:35:24 +0000).
        assert_eq!(clf_time(1731324924561), "11/Nov/2024:11:35:24 +0000");
        assert_eq!(iso8601_ms(1666814245104), "2022-10-26T19:57:25.104Z");
        assert_eq!(http_date(1633543063000), "Wed, 06 Oct 2021 17:57:43 GMT");
        let t = trace_id(1731324924561);
        assert!(t.starts_with("Root=1-6731ebfc-"), "{t}");
        assert_eq!(t.len(), "Root=1-6731ebfc-08e1e656421db73c5d2eef31".len());
    }
}
