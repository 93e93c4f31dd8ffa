//! The echo function's logic fed the captured API Gateway events, with the management API
//! replaced by a recorder.

mod common;

use common::{body_text, fixture, message, request};
use lambda_http::Body;
use lambda_http::http::StatusCode;
use ws_handler::examples::echo;
use ws_handler::testing::Recorder;
use ws_handler::{ManagementError, PostToConnection, WebSocketEvent};

async fn run(
    event: &serde_json::Value,
    poster: &dyn PostToConnection,
) -> Result<ws_handler::response::Response, ManagementError> {
    let request = request(event);
    let event = WebSocketEvent::from_request(&request).expect("a WebSocket event");
    echo::handle(&event, poster).await
}

#[tokio::test]
async fn a_message_is_posted_back_and_returned() {
    let recorder = Recorder::default();
    let response = run(&fixture("apiGatewayWebSocketApiMessage.json"), &recorder)
        .await
        .unwrap();
    let body = r#"{"action": "chat", "message": "Hello from client"}"#;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(&response), body);
    assert_eq!(
        recorder.posts(),
        [("BFaT_fALIAMCKug=".to_string(), body.as_bytes().to_vec())]
    );
}

#[tokio::test]
async fn connect_and_disconnect_are_accepted_silently() {
    let recorder = Recorder::default();
    for name in [
        "apiGatewayWebSocketApiConnect.json",
        "apiGatewayWebSocketApiDisconnect.json",
    ] {
        let response = run(&fixture(name), &recorder).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(response.body(), &Body::Empty, "{name}");
    }
    assert!(recorder.posts().is_empty());
}

#[tokio::test]
async fn a_gone_sender_still_gets_the_route_response() {
    let recorder = Recorder::default();
    recorder.set_gone("BFaT_fALIAMCKug=");
    let response = run(&fixture("apiGatewayWebSocketApiMessage.json"), &recorder)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(recorder.posts().is_empty());
}

#[tokio::test]
async fn binary_messages_stay_binary() {
    let recorder = Recorder::default();
    let mut event = message("BFaT_fALIAMCKug=", "aGk=", None); // "hi"
    event["isBase64Encoded"] = true.into();
    let response = run(&event, &recorder).await.unwrap();
    assert_eq!(response.body(), &Body::Binary(b"hi".to_vec()));
    assert_eq!(recorder.posts()[0].1, b"hi");
}

/// A management API that refuses every call.
struct Forbidden;

#[async_trait::async_trait]
impl PostToConnection for Forbidden {
    async fn post_to_connection(&self, _: &str, _: &[u8]) -> Result<(), ManagementError> {
        Err(ManagementError::Forbidden)
    }
}

#[tokio::test]
async fn other_management_errors_fail_the_invocation() {
    let result = run(&fixture("apiGatewayWebSocketApiMessage.json"), &Forbidden).await;
    assert!(matches!(result, Err(ManagementError::Forbidden)));
}
