//! Presence on the connection host's groups extension: who is in a room, since when, and the
//! join and leave notices the host sends (`[extensions.groups] presence` on the host).
//!
//! With `presence = "frames"` every other member of the room receives a notice as a text frame;
//! with `presence = "route"` the notice is the `body` of a MESSAGE event to the presence route
//! (default `$presence`). [`PresenceNotice::parse`] reads either.

use serde::{Deserialize, Serialize};

/// A member of a room as the host lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The member's connection ID.
    pub connection_id: String,
    /// The authorizer's `principalId` of the connection; empty when the API has no authorizer.
    pub principal: String,
    /// When it joined, epoch milliseconds.
    pub joined_at: i64,
}

/// One page of a room's members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberPage {
    /// The members of this page.
    pub members: Vec<Member>,
    /// Pass to the next call for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// What a presence notice reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceAction {
    /// The connection joined the room.
    Join,
    /// The connection left the room, or ended.
    Leave,
}

/// A join or leave notice:
/// `{"type":"presence","group":"…","action":"join"|"leave","connectionId":"…","principal":"…","at":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceNotice {
    /// The room (group).
    pub group: String,
    /// Join or leave.
    pub action: PresenceAction,
    /// The connection that joined or left.
    pub connection_id: String,
    /// Its authorizer's `principalId`; empty without an authorizer.
    pub principal: String,
    /// When, epoch milliseconds.
    pub at: i64,
}

impl PresenceNotice {
    /// The notice in `text` (a frame a client received, or a presence event's body); `None`
    /// when `text` is anything else, so a handler can try it on every message.
    pub fn parse(text: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Tagged {
            #[serde(rename = "type")]
            kind: String,
            #[serde(flatten)]
            notice: PresenceNotice,
        }
        serde_json::from_str::<Tagged>(text)
            .ok()
            .filter(|t| t.kind == "presence")
            .map(|t| t.notice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notices_and_nothing_else() {
        let notice = PresenceNotice::parse(
            r#"{"type":"presence","group":"g","action":"leave","connectionId":"abc=","principal":"u1","at":1733400000000}"#,
        )
        .expect("a notice");
        assert_eq!(
            notice,
            PresenceNotice {
                group: "g".into(),
                action: PresenceAction::Leave,
                connection_id: "abc=".into(),
                principal: "u1".into(),
                at: 1_733_400_000_000,
            }
        );
        for other in [
            r#"{"type":"chat","group":"g","action":"join","connectionId":"a","principal":"","at":1}"#,
            r#"{"type":"presence","group":"g","action":"wave","connectionId":"a","principal":"","at":1}"#,
            r#"{"type":"presence","group":"g"}"#,
            "hello",
            "",
        ] {
            assert_eq!(PresenceNotice::parse(other), None, "{other}");
        }
    }
}
