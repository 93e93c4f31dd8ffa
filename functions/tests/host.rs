//! The example functions end to end against a real connection host, in process, over real
//! sockets: WebSocket clients connect to the host, the host posts API Gateway events to an HTTP
//! integration that runs the functions' logic, and the functions push back through the host's
//! management API (the official SDK client) and their rooms: the host's groups extension (the
//! default backend) or a DynamoDB table on the test server (`DYNAMODB_TEST_ENDPOINT`).

use aws_sdk_apigatewaymanagement::config::{
    BehaviorVersion, Credentials, Region, SharedCredentialsProvider,
};
use axum::body::Bytes;
use axum::extract::State;
use futures_util::{SinkExt, StreamExt};
use lambda_http::Body;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use test_kit::{TestHost, Ws, eventually_some, next_text, next_text_within};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use ws_handler::examples::{chat::Chat, echo};
use ws_handler::rooms::dynamodb::{DynamoDbRooms, create_table};
use ws_handler::{Management, ManagementError, Rooms, RoomsConfig, WebSocketEvent};

/// Upper bound for every wait: the DynamoDB rooms backend on moto is slow.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum Function {
    /// Chat with the default rooms backend (the host's groups extension).
    Chat,
    /// Chat with rooms in a DynamoDB table.
    ChatOnDynamoDb {
        client: aws_sdk_dynamodb::Client,
        table: String,
    },
    Echo,
}

struct Integration {
    function: Function,
    management: Management,
    rooms: Arc<dyn Rooms>,
}

/// An AWS configuration signing with `credentials` in us-east-1.
fn sdk_config(credentials: Credentials) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

/// The static key the host requires.
fn host_key() -> aws_config::SdkConfig {
    sdk_config(Credentials::new("test", "test", None, None, "test"))
}

/// The `http` integration: one API Gateway event in, one Lambda proxy response out, as the
/// function would answer on Lambda.
async fn invoke(State(integration): State<Arc<Integration>>, body: Bytes) -> axum::Json<Value> {
    let json = String::from_utf8(body.to_vec()).expect("UTF-8 event");
    let request = lambda_http::request::from_str(&json).expect("a WebSocket event");
    let event = WebSocketEvent::from_request(&request).expect("a WebSocket event");
    let response = match integration.function {
        Function::Chat | Function::ChatOnDynamoDb { .. } => {
            Chat::new(integration.rooms.as_ref(), &integration.management)
                .handle(&event)
                .await
        }
        Function::Echo => echo::handle(&event, &integration.management)
            .await
            .expect("echo"),
    };
    let mut proxy = json!({ "statusCode": response.status().as_u16() });
    if let Body::Text(text) = response.body() {
        proxy["body"] = text.as_str().into();
    }
    axum::Json(proxy)
}

/// A host on a free port whose `$connect`, `$disconnect` and `$default` run `function`.
struct Host {
    addr: SocketAddr,
    _host: TestHost,
}

impl Host {
    async fn start(function: Function, groups: bool, two_way: bool) -> Self {
        Self::start_signed(function, groups, two_way, &host_key()).await
    }

    /// Like [`Host::start`], the function's management calls signed with `signing`'s
    /// credentials; the host accepts only the key of [`host_key`].
    async fn start_signed(
        function: Function,
        groups: bool,
        two_way: bool,
        signing: &aws_config::SdkConfig,
    ) -> Self {
        // The functions call back into the host, so its address comes first.
        let listener = test_kit::loopback_listener();
        let addr = listener.local_addr().unwrap();
        let management = Management::from_sdk_config(signing, &format!("http://{addr}/dev"));
        let rooms: Arc<dyn Rooms> = match &function {
            Function::ChatOnDynamoDb { client, table } => Arc::new(DynamoDbRooms::new(
                client.clone(),
                table,
                Some(Duration::from_secs(7200)),
                Arc::new(management.clone()),
            )),
            Function::Chat | Function::Echo => RoomsConfig::Groups.open(&management).await,
        };
        let integration = Arc::new(Integration {
            function,
            management,
            rooms,
        });
        let app = axum::Router::new().fallback(invoke).with_state(integration);
        let handler_url = test_kit::serve(app).await;
        let presence = if groups { "frames" } else { "off" };
        let config = format!(
            r#"
[routes."$connect"]
integration = "f"
[routes."$disconnect"]
integration = "f"
[routes."$default"]
integration = "f"
two_way = {two_way}
[extensions.groups]
enabled = {groups}
# The groups rooms backend leaves join and leave notices to the host.
presence = "{presence}"
[integrations.f]
type = "http"
url = "{handler_url}/"
# Signatures required even on loopback: every call the SDK makes (PostToConnection and the
# groups rooms backend's) must be signed.
[management.auth]
mode = "sigv4"
[management.auth.keys.test]
secret = "test"
"#
        );
        Self {
            addr,
            _host: TestHost::start_on(listener, &config).await,
        }
    }

    async fn connect(&self, query: &str) -> Result<Ws, WsError> {
        let url = format!("ws://{}/dev{query}", self.addr);
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("handshake in time")
            .map(|(ws, _)| ws)
    }
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn next_json(ws: &mut Ws) -> Value {
    let text = next_text_within(ws, WAIT).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[tokio::test]
async fn chat_over_the_groups_extension() {
    let host = Host::start(Function::Chat, true, false).await;

    // $connect without a nickname is refused before the upgrade, with the chat's 400.
    match host.connect("").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("a connection without a nickname was accepted"),
    }

    let mut alice = host.connect("?nickname=alice").await.expect("alice");
    send(&mut alice, json!({"action": "join", "room": "lobby"})).await;
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type": "joined", "room": "lobby"})
    );

    let mut bob = host.connect("?nickname=bob").await.expect("bob");
    send(&mut bob, json!({"action": "join", "room": "lobby"})).await;
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "joined", "room": "lobby"})
    );
    // The host's presence notice, not the chat's: the groups backend announces joins itself.
    let presence = next_json(&mut alice).await;
    let bob_id = presence["connectionId"].as_str().unwrap().to_string();
    let joined_at = presence["at"].as_i64().unwrap();
    assert_eq!(
        presence,
        json!({"type": "presence", "group": "lobby", "action": "join", "connectionId": bob_id,
               "principal": "", "at": joined_at}),
        "without an authorizer the principal is empty"
    );

    send(
        &mut alice,
        json!({"action": "send", "room": "lobby", "text": "hello"}),
    )
    .await;
    let to_alice = next_json(&mut alice).await;
    let to_bob = next_json(&mut bob).await;
    assert_eq!(to_alice, to_bob);
    assert_eq!(to_alice["type"], "message");
    assert_eq!(to_alice["text"], "hello");
    assert!(to_alice["sentAt"].as_i64().is_some_and(|t| t > 0));
    let alice_id = to_alice["connectionId"].as_str().unwrap().to_string();

    send(&mut bob, json!({"action": "list", "room": "lobby"})).await;
    let members = next_json(&mut bob).await;
    assert_eq!(members["type"], "members");
    let mut ids: Vec<String> = serde_json::from_value(members["connectionIds"].clone()).unwrap();
    ids.sort();
    let mut expected = vec![alice_id.clone(), bob_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);

    send(&mut bob, json!({"action": "dance"})).await;
    assert_eq!(next_json(&mut bob).await["type"], "error");
    bob.send(Message::text("not json")).await.unwrap();
    assert_eq!(next_json(&mut bob).await["type"], "error");

    // The host drops a closed connection from its groups and tells the others.
    bob.close(None).await.unwrap();
    let left = next_json(&mut alice).await;
    assert_eq!(
        (&left["type"], &left["action"], &left["connectionId"]),
        (&json!("presence"), &json!("leave"), &json!(bob_id))
    );
    eventually_some("bob gone from the lobby", WAIT, async || {
        send(&mut alice, json!({"action": "list", "room": "lobby"})).await;
        let listed: Vec<String> =
            serde_json::from_value(next_json(&mut alice).await["connectionIds"].clone()).unwrap();
        (listed == std::slice::from_ref(&alice_id)).then_some(())
    })
    .await;

    // The management client's other calls, against the host.
    let endpoint = format!("http://{}/dev", host.addr);
    let client = Management::from_sdk_config(&host_key(), &endpoint);
    let info = client.get(&alice_id).await.expect("GetConnection");
    assert_eq!(info.source_ip.as_deref(), Some("127.0.0.1"));
    assert!(info.connected_at.is_some_and(|t| t > 0));
    client
        .post_json(&alice_id, &json!({"type": "pong"}))
        .await
        .unwrap();
    assert_eq!(next_json(&mut alice).await, json!({"type": "pong"}));
    client.delete(&alice_id).await.expect("DeleteConnection");
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = alice.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some(1000));
    assert!(matches!(
        client.post_text(&alice_id, "anyone?").await,
        Err(ManagementError::Gone)
    ));
    assert!(matches!(
        client.get(&bob_id).await,
        Err(ManagementError::Gone)
    ));
}

/// Joins `ws` to `room` and waits for the confirmation.
/// A stand-in for Secrets Manager's `GetSecretValue`: answers the secret only to a call signed
/// for `secretsmanager` with the role's temporary credentials, and records what it saw.
async fn fake_secrets_manager(seen: Arc<std::sync::Mutex<Vec<String>>>) -> String {
    async fn get_secret_value(
        State(seen): State<Arc<std::sync::Mutex<Vec<String>>>>,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> (axum::http::StatusCode, String) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let authorization = header("authorization");
        seen.lock().unwrap().push(authorization.clone());
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let signed_by_role = authorization.contains("Credential=ASIAROLE/")
            && authorization.contains("/us-east-1/secretsmanager/aws4_request")
            && header("x-amz-security-token") == "role-session-token";
        if header("x-amz-target") != "secretsmanager.GetSecretValue"
            || request["SecretId"]
                != "arn:aws:secretsmanager:us-east-1:123456789012:secret:chat-key"
            || !signed_by_role
        {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                r#"{"__type":"AccessDeniedException"}"#.into(),
            );
        }
        let secret = json!({"accessKeyId": "test", "secretAccessKey": "test"}).to_string();
        (
            axum::http::StatusCode::OK,
            json!({"SecretString": secret}).to_string(),
        )
    }
    let app = axum::Router::new()
        .fallback(axum::routing::post(get_secret_value))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A function on Lambda has only its role's temporary credentials, which the host cannot verify:
/// it signs with the static key it reads from Secrets Manager (signing that read with its role),
/// and every call it makes, PostToConnection and the groups calls alike, is accepted.
#[tokio::test]
async fn a_key_read_from_secrets_manager_signs_every_call() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let secrets_manager = fake_secrets_manager(seen.clone()).await;
    let role = sdk_config(Credentials::new(
        "ASIAROLE",
        "role-secret",
        Some("role-session-token".into()),
        None,
        "lambda-role",
    ));
    let keyed = ws_handler::static_key::with_key_from_secret(
        &role,
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:chat-key",
        Some(&secrets_manager),
    )
    .await
    .expect("the key is read");
    assert_eq!(seen.lock().unwrap().len(), 1, "one read");

    // With the role's credentials the host refuses the chat's calls: `joined` never comes.
    let refused = Host::start_signed(Function::Chat, true, false, &role).await;
    let mut ws = refused.connect("?nickname=alice").await.expect("alice");
    ws.send(Message::text(
        json!({"action": "join", "room": "lobby"}).to_string(),
    ))
    .await
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), next_text(&mut ws))
            .await
            .is_err(),
        "a call signed with the role's credentials was accepted"
    );

    // With the key from the secret: join (groups), the reply (PostToConnection) and a
    // broadcast (groups) all go through.
    let host = Host::start_signed(Function::Chat, true, false, &keyed).await;
    let mut alice = host.connect("?nickname=alice").await.expect("alice");
    send(&mut alice, json!({"action": "join", "room": "lobby"})).await;
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type": "joined", "room": "lobby"})
    );
    send(
        &mut alice,
        json!({"action": "send", "room": "lobby", "text": "signed"}),
    )
    .await;
    assert_eq!(next_json(&mut alice).await["text"], "signed");

    // A secret that is not the key's JSON is an error that does not quote it.
    let bad = fake_secrets_manager_answering(r#"{"SecretString":"hunter2-not-json"}"#).await;
    let e = ws_handler::static_key::with_key_from_secret(&role, "x", Some(&bad))
        .await
        .expect_err("not a key");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

/// A stand-in for Secrets Manager that answers every call with `answer`.
async fn fake_secrets_manager_answering(answer: &'static str) -> String {
    let app = axum::Router::new().fallback(axum::routing::post(move || async move { answer }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn join(ws: &mut Ws, room: &str) {
    send(ws, json!({"action": "join", "room": room})).await;
    assert_eq!(next_json(ws).await, json!({"type": "joined", "room": room}));
}

#[tokio::test]
async fn chat_over_dynamodb_rooms() {
    let Some(endpoint) = test_kit::dynamodb_test_endpoint("chat_over_dynamodb_rooms") else {
        return;
    };
    let client = test_kit::dynamodb_client(&endpoint);
    let table = test_kit::unique_table("ws-handler-rooms");
    create_table(&client, &table).await.expect("create table");
    let chat = Function::ChatOnDynamoDb {
        client: client.clone(),
        table: table.clone(),
    };
    let host = Host::start(chat, false, false).await;

    let mut alice = host.connect("?nickname=alice").await.expect("alice");
    join(&mut alice, "lobby").await;
    let mut bob = host.connect("?nickname=bob").await.expect("bob");
    join(&mut bob, "lobby").await;
    let bob_id = next_json(&mut alice).await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();

    // A membership whose connection is long gone (a lost $disconnect): the next broadcast finds
    // it gone (410 from the host) and removes it.
    let stale = "AAAAAAAAAAAAAAA=";
    let rooms = DynamoDbRooms::new(
        client.clone(),
        &table,
        None,
        Arc::new(Management::from_sdk_config(&host_key(), "http://unused")),
    );
    rooms.join("lobby", stale).await.unwrap();
    send(
        &mut alice,
        json!({"action": "send", "room": "lobby", "text": "hi"}),
    )
    .await;
    let said = next_json(&mut alice).await;
    assert_eq!(next_json(&mut bob).await, said);
    let alice_id = said["connectionId"].as_str().unwrap().to_string();
    let mut expected = vec![alice_id.clone(), bob_id.clone()];
    expected.sort();
    // The removal follows the deliveries, so it may land just after Alice got the message.
    eventually_some("the gone member removed from the lobby", WAIT, async || {
        let mut members = rooms.members("lobby").await.unwrap();
        members.sort();
        (members == expected).then_some(())
    })
    .await;

    // $disconnect finds Bob's rooms through the byConnection index and tells Alice.
    bob.close(None).await.unwrap();
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type": "presence", "room": "lobby", "event": "leave",
               "nickname": format!("guest-{}", &bob_id[..6]), "connectionId": bob_id})
    );
    assert_eq!(rooms.members("lobby").await.unwrap(), [alice_id]);

    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn echo_on_a_two_way_route_replies_twice() {
    let host = Host::start(Function::Echo, false, true).await;
    let mut client = host.connect("").await.expect("echo accepts everyone");
    client.send(Message::text("hi there")).await.unwrap();
    // Once through PostToConnection, once as the route response.
    assert_eq!(next_text_within(&mut client, WAIT).await, "hi there");
    assert_eq!(next_text_within(&mut client, WAIT).await, "hi there");
}
