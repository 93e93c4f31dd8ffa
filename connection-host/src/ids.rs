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

/// A new X-Ray trace header value, `Root=1-{epoch seconds, 8 hex}-{96 random bits, 24 hex}`, as
/// API Gateway adds to the events of a request that came without one.
pub fn trace_id(now_ms: i64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(TRACE_ID_LEN);
    out.push_str("Root=1-");
    let secs = (now_ms / 1000) as u32;
    for shift in (0..8).rev() {
        out.push(char::from(HEX[(secs >> (shift * 4)) as usize & 0xf]));
    }
    out.push('-');
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The length of a [`trace_id`].
const TRACE_ID_LEN: usize = "Root=1-6731ebfc-08e1e656421db73c5d2eef31".len();

/// The longest `X-Amzn-Trace-Id` a client may send: X-Ray's own limit on the header's fields
/// leaves a root, a parent, a sampling decision and a lineage well under it.
const MAX_TRACE_HEADER: usize = 256;

/// Whether a client's `X-Amzn-Trace-Id` is an X-Ray trace header the host may pass on:
/// `Root=1-{8 hex}-{24 hex}`, optionally followed by `;Parent={16 hex}`, `;Sampled={0|1|?}` and
/// other `;Key=Value` fields of visible ASCII (X-Ray's `Lineage`, or a caller's own).
pub fn is_valid_trace_header(header: &str) -> bool {
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    if header.len() > MAX_TRACE_HEADER {
        return false;
    }
    let mut fields = header.split(';').map(str::trim);
    let root_ok = fields
        .next()
        .and_then(|f| f.strip_prefix("Root=1-"))
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(time, id)| is_hex(time, 8) && is_hex(id, 24));
    root_ok
        && fields.all(|field| match field.split_once('=') {
            Some(("Parent", v)) => is_hex(v, 16),
            Some(("Sampled", v)) => matches!(v, "0" | "1" | "?"),
            Some((key, value)) => {
                !key.is_empty()
                    && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                    && value
                        .bytes()
                        .all(|c| c.is_ascii_graphic() && c != b';' && c != b'"' && c != b'\\')
            }
            // `Sampled=?` is a request; an empty trailing field is a stray `;`.
            None => field.is_empty(),
        })
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
        assert_eq!(t.len(), TRACE_ID_LEN);
        assert!(is_valid_trace_header(&t), "{t}");
        assert_ne!(t, trace_id(1731324924561), "96 random bits per trace");
    }

    #[test]
    fn trace_headers_are_validated_as_x_ray_reads_them() {
        for valid in [
            "Root=1-6731ebfc-08e1e656421db73c5d2eef31",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            "Root=1-5759e988-bd862e3fe1be46a994272793; Sampled=?",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=a87bd80c:1|68fd508a:5",
        ] {
            assert!(is_valid_trace_header(valid), "{valid}");
        }
        for invalid in [
            "",
            "Root=1-abc-def",
            "Root=2-6731ebfc-08e1e656421db73c5d2eef31",
            "Root=1-6731EBFC-08e1e656421db73c5d2eef31",
            "Root=1-6731ebfc-08e1e656421db73c5d2eef3",
            "Parent=53995c3f42cd8ad8;Root=1-6731ebfc-08e1e656421db73c5d2eef31",
            "Root=1-6731ebfc-08e1e656421db73c5d2eef31;Parent=xyz",
            "Root=1-6731ebfc-08e1e656421db73c5d2eef31;Sampled=yes",
            "Root=1-6731ebfc-08e1e656421db73c5d2eef31;Note=\"quoted\"",
            "Root=1-6731ebfc-08e1e656421db73c5d2eef31\r\nX-Evil: 1",
        ] {
            assert!(!is_valid_trace_header(invalid), "{invalid}");
        }
        let long = format!(
            "Root=1-6731ebfc-08e1e656421db73c5d2eef31;Pad={}",
            "a".repeat(300)
        );
        assert!(!is_valid_trace_header(&long));
    }
}
