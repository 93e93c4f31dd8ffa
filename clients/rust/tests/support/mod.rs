//! A fake host for the tests: accepts WebSockets on loopback, answers the handshake as told,
//! and hands each connection to the test, which plays the host's side of the protocol by hand.

#![allow(dead_code, reason = "each test file uses a part of the kit")]
#![allow(
    clippy::result_large_err,
    reason = "the handshake callback's signature is tungstenite's"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// How the fake host answers handshakes.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Select `ch-reliable.v1` when offered.
    pub sessions: bool,
    /// Refuse the handshake with this status.
    pub refuse: Option<u16>,
}

pub struct FakeHost {
    pub url: String,
    pub policy: Arc<Mutex<Policy>>,
    /// Handshakes seen, refused ones included.
    pub attempts: Arc<AtomicUsize>,
    accepted: mpsc::UnboundedReceiver<Conn>,
}

/// One accepted connection and what its upgrade request carried.
pub struct Conn {
    pub protocols: Vec<String>,
    pub uri: String,
    pub authorization: Option<String>,
    pub ws: WebSocketStream<TcpStream>,
}

impl FakeHost {
    pub async fn start(sessions: bool) -> FakeHost {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/dev", listener.local_addr().unwrap());
        let policy = Arc::new(Mutex::new(Policy {
            sessions,
            refuse: None,
        }));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (tx, accepted) = mpsc::unbounded_channel();
        let (p, a) = (policy.clone(), attempts.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let policy = p.lock().unwrap().clone();
                a.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::new(Mutex::new((Vec::new(), String::new(), None)));
                let s = seen.clone();
                let callback =
                    move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                        let protocols: Vec<String> = req
                            .headers()
                            .get_all("sec-websocket-protocol")
                            .iter()
                            .flat_map(|v| v.to_str().unwrap().split(','))
                            .map(|p| p.trim().to_owned())
                            .collect();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned());
                        if let Some(status) = policy.refuse {
                            let mut refusal = ErrorResponse::new(Some("refused".into()));
                            *refusal.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            return Err(refusal);
                        }
                        let selected =
                            if policy.sessions && protocols.iter().any(|p| p == "ch-reliable.v1") {
                                Some("ch-reliable.v1")
                            } else if protocols.iter().any(|p| p == "bearer") {
                                // As the JWT authorizer does: the marker, never the token.
                                Some("bearer")
                            } else {
                                None
                            };
                        if let Some(p) = selected {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", p.parse().unwrap());
                        }
                        *s.lock().unwrap() = (protocols, req.uri().to_string(), auth);
                        Ok(resp)
                    };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    continue;
                };
                let (protocols, uri, authorization) = seen.lock().unwrap().clone();
                let _ = tx.send(Conn {
                    protocols,
                    uri,
                    authorization,
                    ws,
                });
            }
        });
        FakeHost {
            url,
            policy,
            attempts,
            accepted,
        }
    }

    /// The next accepted connection.
    pub async fn accept(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.accepted.recv())
            .await
            .expect("no connection in time")
            .unwrap()
    }

    /// Asserts that no connection arrives within `within`.
    pub async fn expect_none(&mut self, within: Duration) {
        if let Ok(Some(c)) = tokio::time::timeout(within, self.accepted.recv()).await {
            panic!("unexpected connection offering {:?}", c.protocols);
        }
    }

    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

impl Conn {
    pub async fn send_json(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    pub async fn welcome(&mut self, connection_id: &str, token: &str, recovered: bool, seq: u64) {
        self.send_json(json!({
            "t": "welcome", "v": 1, "connectionId": connection_id, "resumeToken": token,
            "recovered": recovered, "seq": seq, "protocol": null,
            "limits": {"resumeWindowMs": 120000, "bufferBytes": 1048576, "maxKeyLength": 128}
        }))
        .await;
    }

    pub async fn msg(&mut self, s: u64, d: &str) {
        self.send_json(json!({"t": "msg", "s": s, "d": d})).await;
    }

    /// The next WebSocket message from the client, whatever it is.
    pub async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("nothing from the client in time")
            .and_then(Result::ok)
    }

    /// The next JSON frame of type `t`, skipping the others (acks, pings).
    pub async fn next_of(&mut self, t: &str) -> Value {
        loop {
            match self.next().await {
                Some(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap();
                    if v["t"] == t {
                        return v;
                    }
                }
                Some(Message::Close(c)) => panic!("closed while waiting for {t}: {c:?}"),
                Some(_) => {}
                None => panic!("connection ended while waiting for {t}"),
            }
        }
    }

    /// Reads acks until one covers `s`; an ack beyond `s` fails (nothing past it was sent).
    pub async fn acked(&mut self, s: u64) {
        loop {
            let acked = self.next_of("ack").await["s"].as_u64().unwrap();
            assert!(acked <= s, "ack {acked} beyond the last frame {s}");
            if acked == s {
                return;
            }
        }
    }

    /// The client's Close frame, skipping everything before it.
    pub async fn close_frame(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next().await {
                Some(Message::Close(c)) => return c,
                Some(_) => {}
                None => panic!("connection ended without a Close frame"),
            }
        }
    }
}

/// Options for tests: fast reconnects without jitter, quick acks.
pub fn fast(url: &str) -> connection_host_client::Options {
    connection_host_client::Options::new(url)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .backoff_jitter(Duration::ZERO)
        .ack_delay(Duration::from_millis(20))
}

/// The next event, within [`WAIT`].
pub async fn event(client: &mut connection_host_client::Client) -> connection_host_client::Event {
    tokio::time::timeout(WAIT, client.recv())
        .await
        .expect("no event in time")
        .expect("the client ended")
}

/// The next message event, skipping the others.
pub async fn message(
    client: &mut connection_host_client::Client,
) -> connection_host_client::Message {
    loop {
        if let connection_host_client::Event::Message(m) = event(client).await {
            return m;
        }
    }
}

/// The next `Connected` event, skipping the others.
pub async fn connected(
    client: &mut connection_host_client::Client,
) -> connection_host_client::Event {
    loop {
        let e = event(client).await;
        if matches!(e, connection_host_client::Event::Connected { .. }) {
            return e;
        }
    }
}

/// The next error event, skipping the others.
pub async fn error(client: &mut connection_host_client::Client) -> connection_host_client::Error {
    loop {
        if let connection_host_client::Event::Error(e) = event(client).await {
            return e;
        }
    }
}
