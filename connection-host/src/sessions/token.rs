//! Resume tokens and the subprotocol offer that carries them (PROTOCOL.md sections 1 and 4).
//!
//! A token is `<connection ID without its '='>.<256 random bits, base64url>`: it names its session,
//! so any host can find the session's record, and it is unguessable. Only its SHA-256 is stored
//! and compared (in constant time); every resume replaces it.

use super::envelope::{RESUME_PREFIX, SUBPROTOCOL};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new resume token for `connection_id`, with the hash the store keeps.
pub fn issue(connection_id: &str) -> (String, String) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!(
        "{}.{}",
        connection_id.trim_end_matches('='),
        URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = hash(&token);
    (token, hash)
}

/// The hash of `token` the store keeps (hex SHA-256).
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` hashes to `stored`, compared in constant time.
pub fn matches(token: &str, stored: &str) -> bool {
    let computed = hash(token);
    computed.len() == stored.len()
        && computed
            .bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Whether `token` is the session's current token (`current` hash) or one of the tokens it still
/// accepts besides (`previous`: space-separated hashes, empty when none; see [`unconfirmed`]).
pub fn accepted(token: &str, current: &str, previous: &str) -> bool {
    matches(token, current)
        || previous
            .split(' ')
            .any(|h| !h.is_empty() && matches(token, h))
}

/// Most tokens a session accepts besides its current one.
const MAX_UNCONFIRMED: usize = 4;

/// The tokens a session accepts besides the one a resume issues now (space-separated hashes):
/// the one the resume presented (`presented`, a hash), then every token the session accepted so
/// far (the current one, `current`, first), because the client may hold any of them until it
/// shows which (an `ack` or `msg` on a resumed connection). A client whose reconnect attempts
/// overlap holds the token of the attempt it completed, while an attempt it gave up on can still
/// resume the session after it, with the same older token: that must not cancel the token the
/// client holds. At most [`MAX_UNCONFIRMED`], the presented one always among them.
pub fn unconfirmed(presented: &str, current: &str, previous: &str) -> String {
    let mut hashes: Vec<&str> = Vec::with_capacity(MAX_UNCONFIRMED);
    let all = [presented, current].into_iter().chain(previous.split(' '));
    for h in all {
        if !h.is_empty() && !hashes.contains(&h) && hashes.len() < MAX_UNCONFIRMED {
            hashes.push(h);
        }
    }
    hashes.join(" ")
}

/// A resume asked for in the subprotocol offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The connection ID the token names.
    pub connection_id: String,
    /// The token as offered.
    pub token: String,
    /// The last sequence number the client received.
    pub last_seq: u64,
}

/// What a client's `Sec-WebSocket-Protocol` offer asks of the sessions extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// `ch-reliable.v1` was offered.
    pub reliable: bool,
    /// A well-formed `ch-resume.<lastSeq>.<token>` was offered (with `reliable`).
    pub resume: Option<Resume>,
    /// A `ch-resume.` entry was offered that could not be read (answered as a failed resume).
    pub malformed_resume: bool,
}

/// Reads the offered subprotocols (every value of every `Sec-WebSocket-Protocol` line).
pub fn offer<'a>(values: impl IntoIterator<Item = &'a str>) -> Offer {
    let mut offer = Offer::default();
    for entry in values.into_iter().flat_map(|v| v.split(',')).map(str::trim) {
        if entry == SUBPROTOCOL {
            offer.reliable = true;
        } else if let Some(rest) = entry.strip_prefix(RESUME_PREFIX) {
            match parse_resume(rest) {
                Some(resume) => offer.resume = Some(resume),
                None => offer.malformed_resume = true,
            }
        }
    }
    if !offer.reliable {
        offer.resume = None;
        offer.malformed_resume = false;
    }
    offer
}

fn parse_resume(rest: &str) -> Option<Resume> {
    let (seq, token) = rest.split_once('.')?;
    let last_seq = seq.parse().ok()?;
    let (id, secret) = token.split_once('.')?;
    if id.len() != 15 || secret.len() != 43 {
        return None;
    }
    let connection_id = format!("{id}=");
    crate::ids::is_well_formed_id(&connection_id).then(|| Resume {
        connection_id,
        token: token.to_string(),
        last_seq,
    })
}

/// Whether a subprotocol entry is the resume entry, which carries a secret and so is kept out of
/// the headers the authorizer and `$connect` see.
pub fn is_resume_entry(entry: &str) -> bool {
    entry.trim().starts_with(RESUME_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_session_and_only_its_hash_matches() {
        let id = crate::ids::new_id();
        let (token, stored) = issue(&id);
        assert!(matches(&token, &stored));
        let (other, _) = issue(&id);
        assert_ne!(token, other);
        assert!(!matches(&other, &stored));
        assert!(!matches(&token, &stored[1..]));
        let offered = format!("{SUBPROTOCOL}, ch-resume.42.{token}");
        let read = offer([offered.as_str()]);
        assert!(read.reliable);
        assert_eq!(
            read.resume,
            Some(Resume {
                connection_id: id,
                token,
                last_seq: 42
            })
        );
    }

    #[test]
    fn every_unconfirmed_token_stays_accepted_up_to_a_bound() {
        let hashes: Vec<String> = (0..6).map(|i| hash(&format!("t{i}"))).collect();
        // Resumes with overlapping attempts: each one's token joins those still accepted.
        let mut previous = String::new();
        for current in &hashes[..5] {
            previous = unconfirmed(current, current, &previous);
        }
        let newest = &hashes[5];
        for (i, token) in ["t4", "t3", "t2", "t1"].into_iter().enumerate() {
            assert!(accepted(token, newest, &previous), "{token} ({i})");
        }
        assert!(
            !accepted("t0", newest, &previous),
            "the oldest beyond the bound"
        );
        assert!(accepted("t5", newest, &previous));
        assert!(!accepted("t9", newest, &previous));
        // A token presented again is not kept twice.
        assert_eq!(unconfirmed(&hashes[1], &hashes[1], &hashes[1]), hashes[1]);
        // The presented token stays, however many tokens were issued since (welcomes lost).
        let presented = hash("held");
        let mut previous = presented.clone();
        for current in &hashes {
            previous = unconfirmed(&presented, current, &previous);
        }
        assert!(accepted("held", newest, &previous));
    }

    #[test]
    fn a_malformed_or_unasked_resume_is_not_read() {
        let read = offer(["ch-reliable.v1", "ch-resume.x.abc"]);
        assert!(read.reliable && read.resume.is_none() && read.malformed_resume);
        let read = offer(["ch-resume.1.AAAAAAAAAAAAAAA.BBBB"]);
        assert_eq!(read, Offer::default());
        assert_eq!(offer(["chat, other"]), Offer::default());
        assert!(is_resume_entry(" ch-resume.1.x"));
        assert!(!is_resume_entry("ch-reliable.v1"));
    }
}
