//! The reliable subprotocol (`ch-reliable.v1`, connection-host/PROTOCOL.md) spoken with raw frames,
//! so a test checks every byte the protocol promises.

use crate::{Ws, next_text, send_text, try_connect};
use serde_json::Value;
use std::net::SocketAddr;

/// Opens a reliable connection to `ws://ADDR/dev`, offering `resume` (a `ch-resume.…` entry) too
/// when given; checks the 101 selects the subprotocol and returns the `welcome` frame.
pub async fn reliable_connect(addr: SocketAddr, resume: Option<&str>) -> (Ws, Value) {
    let mut offer = "ch-reliable.v1".to_string();
    if let Some(r) = resume {
        offer.push_str(", ");
        offer.push_str(r);
    }
    let (mut ws, response) = try_connect(addr, "/dev", &[("Sec-WebSocket-Protocol", &offer)], None)
        .await
        .expect("reliable handshake");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "ch-reliable.v1"
    );
    let welcome = next_frame(&mut ws).await;
    assert_eq!(welcome["t"], "welcome", "the first frame is the welcome");
    (ws, welcome)
}

/// The next frame, parsed.
pub async fn next_frame(ws: &mut Ws) -> Value {
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame {text:?} is not JSON: {e}"))
}

/// Sends a frame.
pub async fn send_frame(ws: &mut Ws, frame: Value) {
    send_text(ws, &frame.to_string()).await;
}

/// The subprotocol entry resuming the session of `welcome` after sequence number `last_seq`.
pub fn resume_offer(welcome: &Value, last_seq: u64) -> String {
    format!(
        "ch-resume.{last_seq}.{}",
        welcome["resumeToken"]
            .as_str()
            .expect("welcome has a resumeToken")
    )
}
