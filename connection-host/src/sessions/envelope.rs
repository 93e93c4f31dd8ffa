//! The frames of the `ch-reliable.v1` subprotocol (PROTOCOL.md section 2): parsing what clients
//! send, and writing what the host sends. JSON text; the host writes its frames with plain string
//! concatenation around a payload escaped once, so a post costs one escape and one copy.

use base64::Engine;
use serde::Deserialize;

/// The subprotocol name a client offers to ask for reliable delivery.
pub const SUBPROTOCOL: &str = "ch-reliable.v1";
/// Prefix of the subprotocol entry that carries a resume: `ch-resume.<lastSeq>.<token>`.
pub const RESUME_PREFIX: &str = "ch-resume.";
/// Longest idempotency key a client may use.
pub const MAX_KEY_LENGTH: usize = 128;

/// A message's payload, as a plain connection would have sent or received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

/// A frame a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// A message for the API's routes, with its idempotency key.
    Msg {
        /// The idempotency key.
        id: String,
        /// What the route sees as the message.
        payload: Payload,
    },
    /// Every sequenced frame up to `seq` arrived.
    Ack {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// Keepalive.
    Ping {
        /// Echoed in the `pong`.
        id: Option<String>,
    },
}

/// A frame that breaks the protocol, answered with an `error` frame (PROTOCOL.md section 8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// The error code (`BadFrame`, `UnknownType`, `BadKey`, `BadPayload`, `BadAck`).
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
    /// The `id` of the `msg` at fault, when it had a usable one.
    pub id: Option<String>,
}

impl FrameError {
    fn new(code: &'static str, message: impl Into<String>, id: Option<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id,
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    t: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    b: Option<String>,
    #[serde(default)]
    s: Option<u64>,
}

/// Whether `key` is a usable idempotency key: 1 to [`MAX_KEY_LENGTH`] printable ASCII characters.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LENGTH && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Parses a client's text frame; `binary` says whether `b` payloads are accepted
/// (`extensions.binary_messages`).
pub fn parse(text: &str, binary: bool) -> Result<ClientFrame, FrameError> {
    let raw: Raw = serde_json::from_str(text)
        .map_err(|e| FrameError::new("BadFrame", format!("not a valid frame: {e}"), None))?;
    match raw.t.as_str() {
        "msg" => {
            let id = match raw.id {
                Some(id) if is_valid_key(&id) => id,
                _ => {
                    return Err(FrameError::new(
                        "BadKey",
                        "a msg needs an id of 1 to 128 printable ASCII characters",
                        None,
                    ));
                }
            };
            let payload = match (raw.d, raw.b) {
                (Some(d), None) => Payload::Text(d),
                (None, Some(_)) if !binary => {
                    return Err(FrameError::new(
                        "BadPayload",
                        "binary messages are not enabled",
                        Some(id),
                    ));
                }
                (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(&b) {
                    Ok(bytes) => Payload::Binary(bytes),
                    Err(_) => {
                        return Err(FrameError::new(
                            "BadPayload",
                            "b is not standard base64",
                            Some(id),
                        ));
                    }
                },
                _ => {
                    return Err(FrameError::new(
                        "BadPayload",
                        "a msg carries exactly one of d and b",
                        Some(id),
                    ));
                }
            };
            Ok(ClientFrame::Msg { id, payload })
        }
        "ack" => match raw.s {
            Some(seq) => Ok(ClientFrame::Ack { seq }),
            None => Err(FrameError::new("BadFrame", "an ack needs s", None)),
        },
        "ping" => Ok(ClientFrame::Ping { id: raw.id }),
        other => Err(FrameError::new(
            "UnknownType",
            format!("unknown frame type {:?}", truncate(other)),
            None,
        )),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The payload part of a sequenced frame (`"d":…` or `"b":…`), written once per message.
pub fn payload_member(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) => {
            let mut out = String::with_capacity(text.len() + 8);
            out.push_str("\"d\":");
            out.push_str(&serde_json::to_string(text).expect("strings serialize"));
            out
        }
        Err(_) => format!(
            "\"b\":\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(data)
        ),
    }
}

/// A `msg` frame with sequence number `seq` around a [`payload_member`]; `post_id` (a forwarded
/// post's ID, PROTOCOL.md section 2) goes in its `p`.
pub fn msg(seq: u64, post_id: Option<&str>, payload: &str) -> String {
    match post_id {
        None => sequenced("msg", seq, payload),
        Some(p) => sequenced(
            "msg",
            seq,
            &format!(
                "\"p\":{},{payload}",
                serde_json::to_string(p).expect("strings serialize")
            ),
        ),
    }
}

/// The `p` of a kept `msg` frame, if it has one, with the body that was posted (the payload
/// decoded back).
pub fn post_of(frame: &str) -> Option<(String, Vec<u8>)> {
    #[derive(Deserialize)]
    struct P {
        p: Option<String>,
        d: Option<String>,
        b: Option<String>,
    }
    let P { p, d, b } = serde_json::from_str(frame).ok()?;
    let data = match (d, b) {
        (Some(d), _) => d.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).ok()?,
        (None, None) => return None,
    };
    Some((p?, data))
}

/// A `reply` frame with sequence number `seq` around an [`answer`].
pub fn reply(seq: u64, answer: &str) -> String {
    sequenced("reply", seq, answer)
}

/// Whether a sequenced `frame` is a `reply`, the one kind numbered past the buffer's bound.
pub fn is_reply(frame: &str) -> bool {
    frame.starts_with("{\"t\":\"reply\"")
}

fn sequenced(kind: &str, seq: u64, members: &str) -> String {
    let mut out = String::with_capacity(members.len() + 32);
    out.push_str("{\"t\":\"");
    out.push_str(kind);
    out.push_str("\",\"s\":");
    out.push_str(&seq.to_string());
    out.push(',');
    out.push_str(members);
    out.push('}');
    out
}

/// How a client's message ended, for its `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Accepted; the route returned nothing to send back.
    Accepted,
    /// The route's response: a text body.
    Text(&'a str),
    /// The route's response: a binary body.
    Binary(&'a [u8]),
    /// API Gateway's error frame message, with the request ID.
    Error {
        /// `Forbidden`, `Internal server error`, ...
        message: &'a str,
        /// The request's ID.
        request_id: &'a str,
    },
}

/// The members of a `reply` after its sequence number (what an idempotency key's answer keeps).
pub fn answer(id: &str, outcome: Outcome<'_>) -> String {
    let id = serde_json::to_string(id).expect("strings serialize");
    match outcome {
        Outcome::Accepted => format!("\"id\":{id}"),
        Outcome::Text(text) => format!("\"id\":{id},{}", payload_member(text.as_bytes())),
        Outcome::Binary(bytes) => format!(
            "\"id\":{id},\"b\":\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
        Outcome::Error {
            message,
            request_id,
        } => format!(
            "\"id\":{id},\"error\":{}",
            serde_json::json!({ "message": message, "requestId": request_id })
        ),
    }
}

/// An `error` frame.
pub fn error(e: &FrameError) -> String {
    let mut frame = serde_json::json!({ "t": "error", "code": e.code, "message": e.message });
    if let Some(id) = &e.id {
        frame["id"] = id.as_str().into();
    }
    frame.to_string()
}

/// A `pong` frame answering a `ping` with `id`.
pub fn pong(id: Option<&str>) -> String {
    match id {
        Some(id) => serde_json::json!({ "t": "pong", "id": id }).to_string(),
        None => "{\"t\":\"pong\"}".to_string(),
    }
}

/// What a `welcome` frame says (PROTOCOL.md section 4).
#[derive(Debug, Clone)]
pub struct Welcome<'a> {
    /// The session's connection ID.
    pub connection_id: &'a str,
    /// The token for the next resume.
    pub resume_token: &'a str,
    /// Whether a session was resumed.
    pub recovered: bool,
    /// Where the sequenced frames continue.
    pub seq: u64,
    /// The subprotocol the API itself selected.
    pub protocol: Option<&'a str>,
    /// Why a resume that was asked for did not recover.
    pub reason: Option<&'a str>,
    /// `resume_window` in milliseconds.
    pub resume_window_ms: u64,
    /// `session_buffer_bytes`.
    pub buffer_bytes: usize,
}

/// A `welcome` frame.
pub fn welcome(w: &Welcome<'_>) -> String {
    let mut frame = serde_json::json!({
        "t": "welcome",
        "v": 1,
        "connectionId": w.connection_id,
        "resumeToken": w.resume_token,
        "recovered": w.recovered,
        "seq": w.seq,
        "protocol": w.protocol,
        "limits": {
            "resumeWindowMs": w.resume_window_ms,
            "bufferBytes": w.buffer_bytes,
            "maxKeyLength": MAX_KEY_LENGTH,
        },
    });
    if let Some(reason) = w.reason {
        frame["reason"] = reason.into();
    }
    frame.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame_and_names_what_is_wrong() {
        assert_eq!(
            parse(r#"{"t":"msg","id":"k1","d":"{\"a\":1}"}"#, false),
            Ok(ClientFrame::Msg {
                id: "k1".into(),
                payload: Payload::Text("{\"a\":1}".into())
            })
        );
        assert_eq!(
            parse(r#"{"s":7,"t":"ack","extra":[1]}"#, false),
            Ok(ClientFrame::Ack { seq: 7 })
        );
        assert_eq!(
            parse(r#"{"t":"ping"}"#, false),
            Ok(ClientFrame::Ping { id: None })
        );
        assert_eq!(
            parse(r#"{"t":"msg","id":"k","b":"AAE="}"#, true),
            Ok(ClientFrame::Msg {
                id: "k".into(),
                payload: Payload::Binary(vec![0, 1])
            })
        );
        let code = |text: &str| parse(text, false).unwrap_err().code;
        assert_eq!(code("hello"), "BadFrame");
        assert_eq!(code("[1]"), "BadFrame");
        assert_eq!(code(r#"{"t":5}"#), "BadFrame");
        assert_eq!(code(r#"{"t":"ack","s":-1}"#), "BadFrame");
        assert_eq!(code(r#"{"t":"ack"}"#), "BadFrame");
        assert_eq!(code(r#"{"t":"nope"}"#), "UnknownType");
        assert_eq!(code(r#"{"t":"msg","d":"x"}"#), "BadKey");
        assert_eq!(code(r#"{"t":"msg","id":"","d":"x"}"#), "BadKey");
        assert_eq!(
            code(&format!(
                r#"{{"t":"msg","id":"{}","d":"x"}}"#,
                "k".repeat(129)
            )),
            "BadKey"
        );
        assert_eq!(code(r#"{"t":"msg","id":"k\n","d":"x"}"#), "BadKey");
        assert_eq!(code(r#"{"t":"msg","id":"k"}"#), "BadPayload");
        assert_eq!(
            code(r#"{"t":"msg","id":"k","d":"x","b":"AA=="}"#),
            "BadPayload"
        );
        assert_eq!(code(r#"{"t":"msg","id":"k","b":"AA=="}"#), "BadPayload");
        assert_eq!(
            parse(r#"{"t":"msg","id":"k","b":"%%"}"#, true)
                .unwrap_err()
                .code,
            "BadPayload"
        );
    }

    #[test]
    fn host_frames_are_valid_json_carrying_the_payload_unchanged() {
        let text = "quote \" backslash \\ newline \n é";
        let frame: serde_json::Value =
            serde_json::from_str(&msg(3, None, &payload_member(text.as_bytes()))).unwrap();
        assert_eq!(frame, serde_json::json!({"t":"msg","s":3,"d":text}));
        let frame: serde_json::Value =
            serde_json::from_str(&msg(4, None, &payload_member(&[0xff, 0]))).unwrap();
        assert_eq!(frame, serde_json::json!({"t":"msg","s":4,"b":"/wA="}));
        let forwarded = msg(5, Some("a1"), &payload_member(b"x"));
        let frame: serde_json::Value = serde_json::from_str(&forwarded).unwrap();
        assert_eq!(frame, serde_json::json!({"t":"msg","s":5,"p":"a1","d":"x"}));
        assert_eq!(post_of(&forwarded), Some(("a1".into(), b"x".to_vec())));
        let binary = msg(6, Some("a2"), &payload_member(&[0xff, 0]));
        assert_eq!(post_of(&binary), Some(("a2".into(), vec![0xff, 0])));
        assert_eq!(post_of(&msg(7, None, "\"d\":\"x\"")), None);
        let r: serde_json::Value = serde_json::from_str(&reply(
            5,
            &answer(
                "k\"1",
                Outcome::Error {
                    message: "Forbidden",
                    request_id: "r",
                },
            ),
        ))
        .unwrap();
        assert_eq!(
            r,
            serde_json::json!({"t":"reply","s":5,"id":"k\"1","error":{"message":"Forbidden","requestId":"r"}})
        );
        let r: serde_json::Value =
            serde_json::from_str(&reply(6, &answer("k", Outcome::Accepted))).unwrap();
        assert_eq!(r, serde_json::json!({"t":"reply","s":6,"id":"k"}));
        let r: serde_json::Value =
            serde_json::from_str(&reply(7, &answer("k", Outcome::Text("ok")))).unwrap();
        assert_eq!(r, serde_json::json!({"t":"reply","s":7,"id":"k","d":"ok"}));
        assert!(is_reply(&reply(7, &answer("k", Outcome::Accepted))));
        assert!(!is_reply(&msg(8, Some("reply"), "\"d\":\"reply\"")));
    }
}
