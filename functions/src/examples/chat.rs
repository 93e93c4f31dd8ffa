//! The `chat` function: rooms, presence and messages over the chat protocol (see "The chat
//! protocol" in `functions/README.md`).
//!
//! Every reply goes out through `PostToConnection`, so the routes need not be two-way, and the
//! function dispatches on the message's `action` itself, so `$default` alone or one route per
//! action (all to this function) both work.

use crate::context::{EventType, WebSocketEvent};
use crate::management::{Management, ManagementError, PostToConnection};
use crate::response::{self, Response};
use crate::rooms::{Rooms, RoomsConfig, RoomsError};
use lambda_http::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument;

/// The body of the 400 that refuses a `$connect` without a valid nickname.
pub const NICKNAME_REQUIRED: &str = "nickname required: 1-32 letters, digits, space, _ . -";

/// Longest nickname, in characters (after trimming).
pub const MAX_NICKNAME: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM: usize = 64;
/// Longest message text, in characters (after trimming).
pub const MAX_TEXT: usize = 2000;

/// The nickname `raw` stands for: trimmed, when it is 1–32 ASCII letters, digits, spaces, `_`,
/// `.` or `-`; otherwise `None`. ASCII only, so two nicknames that look alike are alike.
pub fn valid_nickname(raw: &str) -> Option<&str> {
    let nickname = raw.trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-');
    (1..=MAX_NICKNAME)
        .contains(&nickname.len())
        .then_some(nickname)
        .filter(|n| n.chars().all(allowed))
}

/// Whether `room` is 1–64 ASCII letters, digits, `_`, `-` or `.`, and not `.` or `..` (those
/// cannot travel as a URL path segment, which the groups backend needs).
pub fn valid_room(room: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (1..=MAX_ROOM).contains(&room.len()) && room.chars().all(allowed) && room != "." && room != ".."
}

/// A valid message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"action":"join","room":...}`
    Join {
        /// The room to join.
        room: String,
    },
    /// `{"action":"leave","room":...}`
    Leave {
        /// The room to leave.
        room: String,
    },
    /// `{"action":"send","room":...,"text":...}`
    Send {
        /// The room to send to (the sender must be a member).
        room: String,
        /// The text, trimmed.
        text: String,
    },
    /// `{"action":"list","room":...}`
    List {
        /// The room whose members to list.
        room: String,
    },
    /// `{"action":"ping"}`
    Ping,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomFields {
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendFields {
    room: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// Why a client's message was refused; the text goes back to the client in an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn fields<T: serde::de::DeserializeOwned>(
    action: &str,
    rest: Map<String, Value>,
) -> Result<T, Invalid> {
    serde_json::from_value(Value::Object(rest))
        .map_err(|e| Invalid(format!("invalid {action} message: {e}")))
}

fn room(room: String) -> Result<String, Invalid> {
    if valid_room(&room) {
        Ok(room)
    } else {
        Err(Invalid(format!(
            "invalid room name: use 1-{MAX_ROOM} letters, digits, _ - . (not . or ..)"
        )))
    }
}

/// Validates one message body against the protocol's schema: a JSON object with a known
/// `action`, exactly that action's fields, a valid room name and 1–2000 characters of text.
pub fn parse(body: &str) -> Result<ClientMessage, Invalid> {
    let value: Value =
        serde_json::from_str(body).map_err(|_| Invalid("message is not valid JSON".into()))?;
    let Value::Object(mut object) = value else {
        return Err(Invalid("message must be a JSON object".into()));
    };
    let action = match object.remove("action") {
        Some(Value::String(action)) => action,
        _ => return Err(Invalid("message needs an \"action\" string".into())),
    };
    match action.as_str() {
        "join" => Ok(ClientMessage::Join {
            room: room(fields::<RoomFields>(&action, object)?.room)?,
        }),
        "leave" => Ok(ClientMessage::Leave {
            room: room(fields::<RoomFields>(&action, object)?.room)?,
        }),
        "list" => Ok(ClientMessage::List {
            room: room(fields::<RoomFields>(&action, object)?.room)?,
        }),
        "send" => {
            let SendFields { room: name, text } = fields(&action, object)?;
            let text = text.trim();
            if !(1..=MAX_TEXT).contains(&text.chars().count()) {
                return Err(Invalid(format!("text must be 1-{MAX_TEXT} characters")));
            }
            Ok(ClientMessage::Send {
                room: room(name)?,
                text: text.to_string(),
            })
        }
        "ping" => {
            fields::<NoFields>(&action, object)?;
            Ok(ClientMessage::Ping)
        }
        _ => {
            // Quoted through JSON so control characters cannot reach the client raw.
            let mut shown: String = action.chars().take(MAX_ROOM).collect();
            if shown.len() < action.len() {
                shown.push('…');
            }
            Err(Invalid(format!(
                "unknown action {}: use join, leave, send, list or ping",
                Value::String(shown)
            )))
        }
    }
}

/// `presence.event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// A member joined.
    Join,
    /// A member left (or disconnected).
    Leave,
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage<'a> {
    /// To the joiner.
    Joined {
        /// The room joined.
        room: &'a str,
    },
    /// To the other members when someone joins or leaves, from backends that do not announce
    /// it themselves (the host's own notice has another shape: `functions/README.md`).
    Presence {
        /// The room.
        room: &'a str,
        /// Joined or left.
        event: Presence,
        /// The member's nickname.
        nickname: &'a str,
        /// The member's connection ID.
        connection_id: &'a str,
    },
    /// To the leaver.
    Left {
        /// The room left.
        room: &'a str,
    },
    /// To every member, the sender included.
    Message {
        /// The room.
        room: &'a str,
        /// The sender's nickname.
        nickname: &'a str,
        /// The sender's connection ID.
        connection_id: &'a str,
        /// The text.
        text: &'a str,
        /// When API Gateway received the message (`requestTimeEpoch`), epoch milliseconds.
        sent_at: i64,
    },
    /// To the asker.
    Members {
        /// The room.
        room: &'a str,
        /// Every member's connection ID.
        connection_ids: Vec<String>,
    },
    /// The answer to `ping`.
    Pong,
    /// To the sender of an invalid message.
    Error {
        /// What was wrong.
        message: &'a str,
    },
}

impl ServerMessage<'_> {
    fn to_json(&self) -> Vec<u8> {
        // Only strings, numbers and string lists: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Why handling an event failed (not the client's fault).
#[derive(Debug, thiserror::Error)]
enum ChatError {
    /// The rooms backend failed.
    #[error(transparent)]
    Rooms(#[from] RoomsError),
    /// Posting to the sender failed other than with Gone.
    #[error(transparent)]
    Management(#[from] ManagementError),
}

/// The nickname of the connection behind `event`, following the protocol: the authorizer's
/// `nickname`; on `$connect` without one, the `nickname` query-string parameter; `None` when that
/// is missing or invalid.
pub fn nickname(event: &WebSocketEvent<'_>) -> Option<String> {
    let raw = match event.authorizer().get_str("nickname") {
        Some(from_authorizer) => Some(from_authorizer),
        None if event.event_type() == EventType::Connect => event.query("nickname"),
        None => None,
    };
    raw.and_then(valid_nickname).map(str::to_string)
}

/// What other members see for a connection without an authorizer nickname: `guest-` and the
/// first 6 characters of its connection ID.
pub fn guest_name(connection_id: &str) -> String {
    format!(
        "guest-{}",
        connection_id.chars().take(6).collect::<String>()
    )
}

/// The chat function's logic for one event, with its rooms and outbound side given.
pub struct Chat<'a> {
    rooms: &'a dyn Rooms,
    poster: &'a dyn PostToConnection,
}

impl<'a> Chat<'a> {
    /// Chat over `rooms`, replying through `poster`.
    pub fn new(rooms: &'a dyn Rooms, poster: &'a dyn PostToConnection) -> Self {
        Self { rooms, poster }
    }

    /// Handles one event. Invalid client input is answered with an `error` message and never
    /// fails; a failing backend is logged, reported to the sender as a generic error, and
    /// answered with status 500.
    pub async fn handle(&self, event: &WebSocketEvent<'_>) -> Response {
        match event.event_type() {
            EventType::Connect => match nickname(event) {
                Some(_) => response::ok(),
                None => response::reject(StatusCode::BAD_REQUEST, NICKNAME_REQUIRED),
            },
            EventType::Disconnect => {
                if let Err(error) = self.disconnect(event).await {
                    // Nobody is left to tell; the memberships expire or are dropped on the next
                    // broadcast.
                    tracing::error!(%error, "leaving the rooms of a closed connection failed");
                }
                response::ok()
            }
            EventType::Message => match self.message(event).await {
                Ok(()) => response::ok(),
                Err(error) => {
                    tracing::error!(%error, "chat message failed");
                    let sorry = ServerMessage::Error {
                        message: "the chat service failed; try again",
                    };
                    let _ = self.send(event.connection_id(), &sorry).await;
                    let mut failed = response::ok();
                    *failed.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    failed
                }
            },
        }
    }

    /// Posts `message` to `connection_id`; a connection that is gone is not an error.
    async fn send(
        &self,
        connection_id: &str,
        message: &ServerMessage<'_>,
    ) -> Result<(), ChatError> {
        match self
            .poster
            .post_to_connection(connection_id, &message.to_json())
            .await
        {
            Ok(()) | Err(ManagementError::Gone) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn message(&self, event: &WebSocketEvent<'_>) -> Result<(), ChatError> {
        let me = event.connection_id();
        let parsed = match event.body_text() {
            Ok(body) => parse(body),
            Err(_) => Err(Invalid("message is not valid JSON".into())),
        };
        let request = match parsed {
            Ok(request) => request,
            Err(Invalid(message)) => {
                return self
                    .send(me, &ServerMessage::Error { message: &message })
                    .await;
            }
        };
        let nickname = nickname(event).unwrap_or_else(|| guest_name(me));
        match request {
            ClientMessage::Ping => self.send(me, &ServerMessage::Pong).await,
            // The others are told before the joiner's `joined`: once a client has its answer,
            // whoever joins after it cannot receive its presence message any more. A backend that
            // announces joins itself (the host's presence) needs no notice, nor the member check.
            ClientMessage::Join { room } => {
                let announce =
                    !self.rooms.announces_presence() && !self.rooms.is_member(&room, me).await?;
                self.rooms.join(&room, me).await?;
                if announce {
                    self.presence(&room, Presence::Join, &nickname, me).await?;
                }
                self.send(me, &ServerMessage::Joined { room: &room }).await
            }
            // Idempotent like join: a client's leave may overtake its own join (messages of one
            // connection are handled concurrently), and its state is the same either way.
            ClientMessage::Leave { room } => {
                let announce =
                    !self.rooms.announces_presence() && self.rooms.is_member(&room, me).await?;
                self.rooms.leave(&room, me).await?;
                if announce {
                    self.presence(&room, Presence::Leave, &nickname, me).await?;
                }
                self.send(me, &ServerMessage::Left { room: &room }).await
            }
            ClientMessage::Send { room, text } => {
                if !self.rooms.is_member(&room, me).await? {
                    return self.not_a_member(me, &room).await;
                }
                let message = ServerMessage::Message {
                    room: &room,
                    nickname: &nickname,
                    connection_id: me,
                    text: &text,
                    sent_at: event.request_time_epoch(),
                };
                let report = self
                    .rooms
                    .broadcast(&room, &message.to_json(), None)
                    .await?;
                tracing::debug!(?report, %room, "message broadcast");
                Ok(())
            }
            ClientMessage::List { room } => {
                let connection_ids = self.rooms.members(&room).await?;
                let members = ServerMessage::Members {
                    room: &room,
                    connection_ids,
                };
                self.send(me, &members).await
            }
        }
    }

    async fn not_a_member(&self, me: &str, room: &str) -> Result<(), ChatError> {
        let message = format!("you are not in room {}: join it first", Value::from(room));
        self.send(me, &ServerMessage::Error { message: &message })
            .await
    }

    /// Tells the other members of `room` that `connection_id` joined or left.
    async fn presence(
        &self,
        room: &str,
        event: Presence,
        nickname: &str,
        connection_id: &str,
    ) -> Result<(), ChatError> {
        let message = ServerMessage::Presence {
            room,
            event,
            nickname,
            connection_id,
        };
        let report = self
            .rooms
            .broadcast(room, &message.to_json(), Some(connection_id))
            .await?;
        tracing::debug!(?report, %room, "presence broadcast");
        Ok(())
    }

    /// Leaves every room of a closed connection and tells the remaining members, when the
    /// backend can list the connection's rooms (the groups backend cannot, and needs not: the
    /// host drops the memberships and announces the leaves itself).
    async fn disconnect(&self, event: &WebSocketEvent<'_>) -> Result<(), ChatError> {
        let me = event.connection_id();
        let Some(rooms) = self.rooms.rooms_of(me).await? else {
            return Ok(());
        };
        let nickname = nickname(event).unwrap_or_else(|| guest_name(me));
        for room in rooms {
            self.rooms.leave(&room, me).await?;
            self.presence(&room, Presence::Leave, &nickname, me).await?;
        }
        Ok(())
    }
}

/// The deployed function's entry: reads the event, opens the management client and the rooms
/// backend `config` chose for the event's endpoint, and runs [`Chat::handle`].
pub async fn handle_request(
    config: &RoomsConfig,
    request: lambda_http::Request,
) -> Result<Response, lambda_http::Error> {
    let event = WebSocketEvent::from_request(&request)?;
    let span = tracing::info_span!(
        "event",
        connection_id = event.connection_id(),
        route_key = event.route_key()
    );
    async {
        let management = Management::for_event(&event).await;
        let rooms = config.open(&management).await;
        Ok(Chat::new(rooms.as_ref(), &management).handle(&event).await)
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(body: &str) -> String {
        parse(body).unwrap_err().0
    }

    #[test]
    fn nicknames() {
        assert_eq!(valid_nickname("alice"), Some("alice"));
        assert_eq!(valid_nickname("  Bob the 2nd.-_ "), Some("Bob the 2nd.-_"));
        assert_eq!(
            valid_nickname(&"x".repeat(32)),
            Some("x".repeat(32).as_str())
        );
        for bad in [
            "",
            "   ",
            &"x".repeat(33),
            "al<ice>",
            "émile",
            "a\tb",
            "a@b",
        ] {
            assert_eq!(valid_nickname(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rooms() {
        for good in ["lobby", "a", "Room_1-x.y", "...", &"r".repeat(64)] {
            assert!(valid_room(good), "{good:?}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"r".repeat(65)] {
            assert!(!valid_room(bad), "{bad:?}");
        }
    }

    #[test]
    fn valid_messages() {
        assert_eq!(
            parse(r#"{"action":"join","room":"lobby"}"#),
            Ok(ClientMessage::Join {
                room: "lobby".into()
            })
        );
        assert_eq!(
            parse(r#"{"room":"lobby","action":"leave"}"#),
            Ok(ClientMessage::Leave {
                room: "lobby".into()
            })
        );
        assert_eq!(
            parse(r#"{"action":"send","room":"lobby","text":"  hello  "}"#),
            Ok(ClientMessage::Send {
                room: "lobby".into(),
                text: "hello".into()
            })
        );
        assert_eq!(
            parse(r#"{"action":"list","room":"lobby"}"#),
            Ok(ClientMessage::List {
                room: "lobby".into()
            })
        );
        assert_eq!(parse(r#"{"action":"ping"}"#), Ok(ClientMessage::Ping));
        let longest = format!(
            r#"{{"action":"send","room":"r","text":"{}"}}"#,
            "é".repeat(2000)
        );
        assert!(parse(&longest).is_ok());
    }

    #[test]
    fn invalid_messages_say_why() {
        assert_eq!(error("hello"), "message is not valid JSON");
        assert_eq!(error(""), "message is not valid JSON");
        assert_eq!(error("[1,2]"), "message must be a JSON object");
        assert_eq!(error(r#""join""#), "message must be a JSON object");
        assert_eq!(
            error(r#"{"room":"lobby"}"#),
            "message needs an \"action\" string"
        );
        assert_eq!(
            error(r#"{"action":5}"#),
            "message needs an \"action\" string"
        );
        assert_eq!(
            error(r#"{"action":"dance"}"#),
            "unknown action \"dance\": use join, leave, send, list or ping"
        );
        assert!(
            error(r#"{"action":"join","room":"lobby","admin":true}"#)
                .contains("unknown field `admin`")
        );
        assert!(error(r#"{"action":"ping","x":1}"#).contains("unknown field `x`"));
        assert!(error(r#"{"action":"join"}"#).contains("missing field `room`"));
        assert!(error(r#"{"action":"join","room":7}"#).contains("invalid type"));
        assert!(error(r#"{"action":"join","room":"a b"}"#).starts_with("invalid room name"));
        assert!(error(r#"{"action":"join","room":".."}"#).starts_with("invalid room name"));
        assert!(error(r#"{"action":"join","room":""}"#).starts_with("invalid room name"));
        assert_eq!(
            error(r#"{"action":"send","room":"lobby","text":"   "}"#),
            "text must be 1-2000 characters"
        );
        let too_long = format!(
            r#"{{"action":"send","room":"r","text":"{}"}}"#,
            "x".repeat(2001)
        );
        assert_eq!(error(&too_long), "text must be 1-2000 characters");
        assert!(error(r#"{"action":"send","room":"lobby"}"#).contains("missing field `text`"));
    }

    #[test]
    fn an_unknown_action_is_shown_shortened_and_escaped() {
        let body = serde_json::json!({ "action": format!("<b>\u{7}{}", "x".repeat(100)) });
        let message = error(&body.to_string());
        assert!(
            message.starts_with("unknown action \"<b>\\u0007xxx"),
            "{message}"
        );
        assert!(message.contains("x…\": use"), "{message}");
    }

    #[test]
    fn server_messages_have_the_protocol_shape() {
        let json = |m: ServerMessage<'_>| serde_json::to_value(&m).unwrap();
        assert_eq!(
            json(ServerMessage::Joined { room: "lobby" }),
            serde_json::json!({"type": "joined", "room": "lobby"})
        );
        assert_eq!(
            json(ServerMessage::Presence {
                room: "lobby",
                event: Presence::Leave,
                nickname: "alice",
                connection_id: "c1"
            }),
            serde_json::json!({"type": "presence", "room": "lobby", "event": "leave",
                               "nickname": "alice", "connectionId": "c1"})
        );
        assert_eq!(
            json(ServerMessage::Message {
                room: "lobby",
                nickname: "alice",
                connection_id: "c1",
                text: "hi",
                sent_at: 1731332746514
            }),
            serde_json::json!({"type": "message", "room": "lobby", "nickname": "alice",
                               "connectionId": "c1", "text": "hi", "sentAt": 1731332746514_i64})
        );
        assert_eq!(
            json(ServerMessage::Members {
                room: "lobby",
                connection_ids: vec!["c1".into()]
            }),
            serde_json::json!({"type": "members", "room": "lobby", "connectionIds": ["c1"]})
        );
        assert_eq!(
            json(ServerMessage::Pong),
            serde_json::json!({"type": "pong"})
        );
        assert_eq!(
            json(ServerMessage::Error { message: "no" }),
            serde_json::json!({"type": "error", "message": "no"})
        );
        assert_eq!(
            json(ServerMessage::Left { room: "r" }),
            serde_json::json!({"type": "left", "room": "r"})
        );
    }

    #[test]
    fn guest_names_use_the_connection_id() {
        assert_eq!(guest_name("BFaT_fALIAMCKug="), "guest-BFaT_f");
    }
}
