//! The `ch-reliable.v1` frames (PROTOCOL.md section 2) and the inbound sequence rule (section 5).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Message;

/// The subprotocol name offered for reliable delivery.
pub(crate) const RELIABLE: &str = "ch-reliable.v1";

/// The subprotocol entry that asks to resume a session.
pub(crate) fn resume_entry(last_seq: u64, token: &str) -> String {
    format!("ch-resume.{last_seq}.{token}")
}

/// A frame from the host. Unknown types land in `Other`, which the client ignores as section 1.5
/// requires; `pong` needs no handling beyond counting as traffic, so it lands there too.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub(crate) enum HostFrame {
    Welcome(Welcome),
    Msg {
        s: u64,
        #[serde(flatten)]
        payload: Payload,
    },
    Reply {
        s: u64,
        id: String,
        #[serde(flatten)]
        payload: Payload,
        #[serde(default)]
        error: Option<ReplyError>,
    },
    Error {
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        id: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// The fields of `welcome` the client uses (section 4).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Welcome {
    pub(crate) connection_id: String,
    pub(crate) resume_token: String,
    #[serde(default)]
    pub(crate) recovered: bool,
    #[serde(default)]
    pub(crate) seq: u64,
    #[serde(default)]
    pub(crate) protocol: Option<String>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// A payload as `d` (text) or `b` (base64 binary).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Payload {
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    b: Option<String>,
}

impl Payload {
    /// The message the payload stands for; `Ok(None)` when there is none (an empty `reply`).
    pub(crate) fn into_message(self) -> Result<Option<Message>, String> {
        match (self.d, self.b) {
            (Some(d), None) => Ok(Some(Message::Text(d))),
            (None, Some(b)) => STANDARD
                .decode(b)
                .map(|v| Some(Message::Binary(Bytes::from(v))))
                .map_err(|e| format!("`b` is not base64: {e}")),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err("both `d` and `b`".to_owned()),
        }
    }
}

/// The `error` of a `reply`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReplyError {
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) request_id: Option<String>,
}

/// A frame from the client.
#[derive(Debug, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub(crate) enum ClientFrame<'a> {
    Msg {
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        d: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        b: Option<String>,
    },
    Ack {
        s: u64,
    },
    Ping {},
}

impl ClientFrame<'_> {
    pub(crate) fn msg<'a>(id: &'a str, message: &'a Message) -> ClientFrame<'a> {
        match message {
            Message::Text(d) => ClientFrame::Msg {
                id,
                d: Some(d),
                b: None,
            },
            Message::Binary(b) => ClientFrame::Msg {
                id,
                d: None,
                b: Some(STANDARD.encode(b)),
            },
        }
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialize")
    }
}

/// Where a sequenced frame stands relative to the last one delivered in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// The next one: deliver it.
    Next,
    /// Already delivered: acknowledge, do not deliver again.
    Replay,
    /// Frames are missing before it: do not deliver, resume.
    Gap,
}

pub(crate) fn order(last: u64, s: u64) -> Order {
    if s <= last {
        Order::Replay
    } else if s == last + 1 {
        Order::Next
    } else {
        Order::Gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_protocol_examples() {
        let w: HostFrame = serde_json::from_str(r#"{"t":"welcome","v":1,"connectionId":"L0SM9cOFvHcCIhw=","resumeToken":"L0SM9cOFvHcCIhw.2kq","recovered":false,"seq":0,"protocol":null,"limits":{"resumeWindowMs":120000,"bufferBytes":1048576,"maxKeyLength":128}}"#).unwrap();
        let HostFrame::Welcome(w) = w else {
            panic!("{w:?}")
        };
        assert_eq!(w.connection_id, "L0SM9cOFvHcCIhw=");
        assert_eq!(w.resume_token, "L0SM9cOFvHcCIhw.2kq");
        assert!(!w.recovered);
        assert_eq!(w.protocol, None);

        let m: HostFrame =
            serde_json::from_str(r#"{"t":"msg","s":1,"d":"{\"hello\":\"world\"}"}"#).unwrap();
        let HostFrame::Msg { s, payload } = m else {
            panic!("{m:?}")
        };
        assert_eq!(s, 1);
        assert_eq!(
            payload.into_message().unwrap(),
            Some(Message::Text(r#"{"hello":"world"}"#.into()))
        );

        let r: HostFrame = serde_json::from_str(
            r#"{"t":"reply","s":2,"id":"c1-7","error":{"message":"Forbidden","requestId":"r-1"}}"#,
        )
        .unwrap();
        let HostFrame::Reply {
            s,
            id,
            payload,
            error,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!((s, id.as_str()), (2, "c1-7"));
        assert_eq!(payload.into_message().unwrap(), None);
        let error = error.unwrap();
        assert_eq!(
            (error.message.as_str(), error.request_id.as_deref()),
            ("Forbidden", Some("r-1"))
        );
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let f: HostFrame = serde_json::from_str(r#"{"t":"future","x":1}"#).unwrap();
        assert!(matches!(f, HostFrame::Other));
        let f: HostFrame = serde_json::from_str(r#"{"t":"pong","id":"7"}"#).unwrap();
        assert!(matches!(f, HostFrame::Other));
        let f: HostFrame =
            serde_json::from_str(r#"{"t":"msg","s":3,"b":"AAE=","new":true}"#).unwrap();
        let HostFrame::Msg { payload, .. } = f else {
            panic!()
        };
        assert_eq!(
            payload.into_message().unwrap(),
            Some(Message::Binary(Bytes::from_static(&[0, 1])))
        );
    }

    #[test]
    fn client_frames_serialize_as_specified() {
        let text = Message::Text("hi".into());
        assert_eq!(
            ClientFrame::msg("k-1", &text).to_json(),
            r#"{"t":"msg","id":"k-1","d":"hi"}"#
        );
        let bin = Message::Binary(Bytes::from_static(&[0, 1]));
        assert_eq!(
            ClientFrame::msg("k-2", &bin).to_json(),
            r#"{"t":"msg","id":"k-2","b":"AAE="}"#
        );
        assert_eq!(ClientFrame::Ack { s: 9 }.to_json(), r#"{"t":"ack","s":9}"#);
        assert_eq!(ClientFrame::Ping {}.to_json(), r#"{"t":"ping"}"#);
    }

    #[test]
    fn orders_sequence_numbers() {
        assert_eq!(order(0, 1), Order::Next);
        assert_eq!(order(4, 5), Order::Next);
        assert_eq!(order(4, 4), Order::Replay);
        assert_eq!(order(4, 1), Order::Replay);
        assert_eq!(order(4, 6), Order::Gap);
        assert_eq!(order(0, 2), Order::Gap);
    }
}
