//! The chat function's logic fed captured API Gateway events (edited per scenario), with rooms in
//! memory and the management API replaced by a recorder: what would be posted, to whom.

mod common;

use async_trait::async_trait;
use common::{body_text, connect, disconnect, guest, message, request};
use lambda_http::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use ws_handler::examples::chat::{Chat, NICKNAME_REQUIRED};
use ws_handler::response::Response;
use ws_handler::rooms::memory::MemoryRooms;
use ws_handler::testing::Recorder;
use ws_handler::{BroadcastReport, Rooms, RoomsError, WebSocketEvent};

/// The connection ID of the captured MESSAGE and DISCONNECT events.
const CAPTURED: &str = "BFaT_fALIAMCKug=";
/// `requestTimeEpoch` of the captured MESSAGE event.
const SENT_AT: i64 = 1731332746514;
const ALICE: &str = "AAAAAAAAAAAAAA0=";
const BOB: &str = "BBBBBBBBBBBBBB0=";

struct World {
    recorder: Arc<Recorder>,
    rooms: MemoryRooms,
}

impl World {
    fn new() -> Self {
        let recorder = Arc::new(Recorder::default());
        Self {
            rooms: MemoryRooms::new(recorder.clone()),
            recorder,
        }
    }

    async fn handle(&self, event: &Value) -> Response {
        handle_with(&self.rooms, &self.recorder, event).await
    }

    /// Sends `body` as `connection_id` (nickname `alice` for ALICE through the authorizer) and
    /// returns what was posted, emptying the record.
    async fn say(&self, connection_id: &str, body: &str) -> Vec<(String, Value)> {
        let authorizer = (connection_id == ALICE).then(|| guest("alice"));
        let response = self.handle(&message(connection_id, body, authorizer)).await;
        assert_eq!(response.status(), StatusCode::OK, "{body}");
        assert_eq!(
            body_text(&response),
            "",
            "replies go through PostToConnection"
        );
        let posted = self.recorder.json_posts();
        self.recorder.clear();
        posted
    }
}

async fn handle_with(rooms: &dyn Rooms, recorder: &Recorder, event: &Value) -> Response {
    let request = request(event);
    let event = WebSocketEvent::from_request(&request).expect("a WebSocket event");
    Chat::new(rooms, recorder).handle(&event).await
}

fn to(connection_id: &str, value: Value) -> (String, Value) {
    (connection_id.to_string(), value)
}

fn sorted(mut posts: Vec<(String, Value)>) -> Vec<(String, Value)> {
    posts.sort_by(|a, b| a.0.cmp(&b.0));
    posts
}

#[tokio::test]
async fn connect_without_a_nickname_is_refused_with_400() {
    let world = World::new();
    for event in [
        common::fixture("apiGatewayWebSocketApiConnect.json"),
        connect(Some(&[("nickname", "  ")]), None),
        connect(Some(&[("nickname", "<script>")]), None),
        connect(Some(&[("nickname", &"x".repeat(33))]), None),
    ] {
        let response = world.handle(&event).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = serde_json::from_str(body_text(&response)).unwrap();
        assert_eq!(body, json!({ "message": NICKNAME_REQUIRED }));
    }
    assert!(world.recorder.posts().is_empty());
}

#[tokio::test]
async fn connect_with_a_nickname_is_accepted() {
    let world = World::new();
    let by_query = connect(Some(&[("nickname", " alice ")]), None);
    let by_authorizer = connect(None, Some(guest("alice")));
    for event in [by_query, by_authorizer] {
        let response = world.handle(&event).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    // An authorizer nickname is the one that counts, even when the query has another.
    let both = connect(Some(&[("nickname", "!!")]), Some(guest("bob")));
    assert_eq!(world.handle(&both).await.status(), StatusCode::OK);
    assert!(
        world.recorder.posts().is_empty(),
        "nothing is posted during $connect"
    );
}

#[tokio::test]
async fn the_captured_message_gets_an_error_back() {
    let world = World::new();
    let event = common::fixture("apiGatewayWebSocketApiMessage.json");
    let response = world.handle(&event).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        world.recorder.json_posts(),
        [to(
            CAPTURED,
            json!({"type": "error", "message": "unknown action \"chat\": use join, leave, send, list or ping"})
        )]
    );
}

#[tokio::test]
async fn ping_pong() {
    let world = World::new();
    assert_eq!(
        world.say(BOB, r#"{"action":"ping"}"#).await,
        [to(BOB, json!({"type": "pong"}))]
    );
}

#[tokio::test]
async fn join_send_list_leave() {
    let world = World::new();

    assert_eq!(
        world
            .say(ALICE, r#"{"action":"join","room":"lobby"}"#)
            .await,
        [to(ALICE, json!({"type": "joined", "room": "lobby"}))]
    );

    // Bob has no authorizer nickname: others see him as guest- and his connection ID's start.
    assert_eq!(
        sorted(world.say(BOB, r#"{"action":"join","room":"lobby"}"#).await),
        [
            to(
                ALICE,
                json!({"type": "presence", "room": "lobby", "event": "join",
                       "nickname": "guest-BBBBBB", "connectionId": BOB})
            ),
            to(BOB, json!({"type": "joined", "room": "lobby"})),
        ]
    );

    // Joining again answers `joined` but tells nobody.
    assert_eq!(
        world.say(BOB, r#"{"action":"join","room":"lobby"}"#).await,
        [to(BOB, json!({"type": "joined", "room": "lobby"}))]
    );

    let said = json!({"type": "message", "room": "lobby", "nickname": "alice",
                      "connectionId": ALICE, "text": "hello", "sentAt": SENT_AT});
    assert_eq!(
        sorted(
            world
                .say(
                    ALICE,
                    r#"{"action":"send","room":"lobby","text":" hello "}"#
                )
                .await
        ),
        [to(ALICE, said.clone()), to(BOB, said)]
    );

    let mut listed = world.say(BOB, r#"{"action":"list","room":"lobby"}"#).await;
    assert_eq!(listed.len(), 1);
    let (asker, members) = listed.remove(0);
    assert_eq!(asker, BOB);
    assert_eq!(members["type"], "members");
    assert_eq!(members["room"], "lobby");
    let mut ids: Vec<&str> = members["connectionIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [ALICE, BOB]);

    assert_eq!(
        sorted(
            world
                .say(ALICE, r#"{"action":"leave","room":"lobby"}"#)
                .await
        ),
        [
            to(ALICE, json!({"type": "left", "room": "lobby"})),
            to(
                BOB,
                json!({"type": "presence", "room": "lobby", "event": "leave",
                       "nickname": "alice", "connectionId": ALICE})
            ),
        ]
    );
    assert_eq!(world.rooms.members("lobby").await.unwrap(), [BOB]);
}

#[tokio::test]
async fn only_members_send_and_leaving_twice_is_harmless() {
    let world = World::new();
    world
        .say(ALICE, r#"{"action":"join","room":"lobby"}"#)
        .await;
    assert_eq!(
        world
            .say(BOB, r#"{"action":"send","room":"lobby","text":"hi"}"#)
            .await,
        [to(
            BOB,
            json!({"type": "error", "message": "you are not in room \"lobby\": join it first"})
        )]
    );
    // Leaving a room one is not in tells nobody.
    assert_eq!(
        world.say(BOB, r#"{"action":"leave","room":"lobby"}"#).await,
        [to(BOB, json!({"type": "left", "room": "lobby"}))]
    );
    assert_eq!(world.rooms.members("lobby").await.unwrap(), [ALICE]);
}

#[tokio::test]
async fn invalid_input_gets_an_error_to_the_sender_only() {
    let world = World::new();
    world
        .say(ALICE, r#"{"action":"join","room":"lobby"}"#)
        .await;
    world.say(BOB, r#"{"action":"join","room":"lobby"}"#).await;
    for body in [
        "not json",
        "",
        "[]",
        "null",
        r#"{"action":"dance"}"#,
        r#"{"action":"join","room":"lobby","extra":1}"#,
        r#"{"action":"join","room":"bad room"}"#,
        r#"{"action":"join","room":"."}"#,
        r#"{"action":"send","room":"lobby","text":""}"#,
        r#"{"action":"send","room":"lobby","text":"hi","nickname":"mallory"}"#,
        r#"{"action":"send","room":"lobby"}"#,
        r#"{"action":"list"}"#,
        r#"{"action":"ping","room":"lobby"}"#,
        "\u{0}\u{1}",
    ] {
        let posted = world.say(BOB, body).await;
        assert_eq!(posted.len(), 1, "{body:?}: {posted:?}");
        assert_eq!(posted[0].0, BOB, "{body:?}");
        assert_eq!(posted[0].1["type"], "error", "{body:?}");
        assert!(
            posted[0].1["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let too_long = json!({"action": "send", "room": "lobby", "text": "x".repeat(2001)});
    let posted = world.say(BOB, &too_long.to_string()).await;
    assert_eq!(
        posted,
        [to(
            BOB,
            json!({"type": "error", "message": "text must be 1-2000 characters"})
        )]
    );
    assert_eq!(world.rooms.members("lobby").await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_binary_message_that_is_not_utf8_is_an_error() {
    let world = World::new();
    let mut event = message(BOB, "AP+A", None);
    event["isBase64Encoded"] = true.into();
    let response = world.handle(&event).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        world.recorder.json_posts(),
        [to(
            BOB,
            json!({"type": "error", "message": "message is not valid JSON"})
        )]
    );
}

#[tokio::test]
async fn disconnect_leaves_every_room_and_tells_the_others() {
    let world = World::new();
    world
        .say(ALICE, r#"{"action":"join","room":"lobby"}"#)
        .await;
    world
        .say(CAPTURED, r#"{"action":"join","room":"lobby"}"#)
        .await;
    world
        .say(CAPTURED, r#"{"action":"join","room":"quiet"}"#)
        .await;
    world.recorder.clear();

    let response = world
        .handle(&common::fixture("apiGatewayWebSocketApiDisconnect.json"))
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        world.recorder.json_posts(),
        [to(
            ALICE,
            json!({"type": "presence", "room": "lobby", "event": "leave",
                   "nickname": "guest-BFaT_f", "connectionId": CAPTURED})
        )]
    );
    assert_eq!(world.rooms.members("lobby").await.unwrap(), [ALICE]);
    assert!(world.rooms.members("quiet").await.unwrap().is_empty());
}

#[tokio::test]
async fn disconnect_uses_the_authorizer_nickname() {
    let world = World::new();
    world
        .say(ALICE, r#"{"action":"join","room":"lobby"}"#)
        .await;
    world.say(BOB, r#"{"action":"join","room":"lobby"}"#).await;
    world.recorder.clear();
    world.handle(&disconnect(ALICE, Some(guest("alice")))).await;
    assert_eq!(
        world.recorder.json_posts(),
        [to(
            BOB,
            json!({"type": "presence", "room": "lobby", "event": "leave",
                   "nickname": "alice", "connectionId": ALICE})
        )]
    );
}

#[tokio::test]
async fn gone_members_are_dropped_by_a_send() {
    let world = World::new();
    world
        .say(ALICE, r#"{"action":"join","room":"lobby"}"#)
        .await;
    world.say(BOB, r#"{"action":"join","room":"lobby"}"#).await;
    world.recorder.set_gone(BOB);
    let posted = world
        .say(
            ALICE,
            r#"{"action":"send","room":"lobby","text":"anyone?"}"#,
        )
        .await;
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].0, ALICE);
    assert_eq!(world.rooms.members("lobby").await.unwrap(), [ALICE]);
}

/// Rooms in memory whose backend announces joins and leaves itself, as the host's groups
/// extension with presence does; counts the member lists read.
struct Announcing {
    rooms: MemoryRooms,
    lists: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Rooms for Announcing {
    async fn join(&self, room: &str, id: &str) -> Result<(), RoomsError> {
        self.rooms.join(room, id).await
    }
    async fn leave(&self, room: &str, id: &str) -> Result<(), RoomsError> {
        self.rooms.leave(room, id).await
    }
    async fn members(&self, room: &str) -> Result<Vec<String>, RoomsError> {
        self.lists
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.rooms.members(room).await
    }
    async fn broadcast(
        &self,
        room: &str,
        data: &[u8],
        exclude: Option<&str>,
    ) -> Result<BroadcastReport, RoomsError> {
        self.rooms.broadcast(room, data, exclude).await
    }
    async fn rooms_of(&self, _: &str) -> Result<Option<Vec<String>>, RoomsError> {
        Ok(None)
    }
    fn announces_presence(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_backend_that_announces_presence_gets_no_notices_from_the_chat() {
    let recorder = Arc::new(Recorder::default());
    let rooms = Announcing {
        rooms: MemoryRooms::new(recorder.clone()),
        lists: Default::default(),
    };
    let say = async |id: &str, body: &str| {
        let response = handle_with(&rooms, &recorder, &message(id, body, None)).await;
        assert_eq!(response.status(), StatusCode::OK, "{body}");
        let posted = recorder.json_posts();
        recorder.clear();
        posted
    };
    say(ALICE, r#"{"action":"join","room":"lobby"}"#).await;
    // Only the joiner's answer: the backend tells Alice.
    assert_eq!(
        say(BOB, r#"{"action":"join","room":"lobby"}"#).await,
        [to(BOB, json!({"type": "joined", "room": "lobby"}))]
    );
    assert_eq!(
        say(BOB, r#"{"action":"leave","room":"lobby"}"#).await,
        [to(BOB, json!({"type": "left", "room": "lobby"}))]
    );
    assert_eq!(
        rooms.lists.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "joins and leaves read no member list"
    );
    assert_eq!(rooms.rooms.members("lobby").await.unwrap(), [ALICE]);
}

/// Rooms whose every call fails, as a DynamoDB table that does not exist would.
struct Broken;

#[async_trait]
impl Rooms for Broken {
    async fn join(&self, _: &str, _: &str) -> Result<(), RoomsError> {
        Err(broken())
    }
    async fn leave(&self, _: &str, _: &str) -> Result<(), RoomsError> {
        Err(broken())
    }
    async fn members(&self, _: &str) -> Result<Vec<String>, RoomsError> {
        Err(broken())
    }
    async fn broadcast(
        &self,
        _: &str,
        _: &[u8],
        _: Option<&str>,
    ) -> Result<BroadcastReport, RoomsError> {
        Err(broken())
    }
    async fn rooms_of(&self, _: &str) -> Result<Option<Vec<String>>, RoomsError> {
        Err(broken())
    }
}

fn broken() -> RoomsError {
    RoomsError::DynamoDb {
        operation: "Query",
        message: "ResourceNotFoundException: secret table name".into(),
    }
}

#[tokio::test]
async fn a_failing_backend_gives_a_generic_error_and_status_500() {
    let recorder = Recorder::default();
    let event = message(BOB, r#"{"action":"join","room":"lobby"}"#, None);
    let response = handle_with(&Broken, &recorder, &event).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let posted = recorder.json_posts();
    assert_eq!(
        posted,
        [to(
            BOB,
            json!({"type": "error", "message": "the chat service failed; try again"})
        )],
        "internal details stay in the logs"
    );

    // Ping needs no rooms; $disconnect's failure has nobody to tell.
    recorder.clear();
    let ping = message(BOB, r#"{"action":"ping"}"#, None);
    assert_eq!(
        handle_with(&Broken, &recorder, &ping).await.status(),
        StatusCode::OK
    );
    let gone = disconnect(BOB, None);
    assert_eq!(
        handle_with(&Broken, &recorder, &gone).await.status(),
        StatusCode::OK
    );
    assert_eq!(recorder.json_posts(), [to(BOB, json!({"type": "pong"}))]);
}
