//! A TCP proxy in front of a DynamoDB endpoint (moto) that a test switches between passing,
//! refusing, black-holing and holding answers, so the store becomes unreachable (or slow) and comes
//! back without losing its state. See `connection-host/STORE.md`, "How outages are tested".

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Close new connections at once, and every open one (as a dead host's RST would).
    Refuse,
    /// Accept new connections and never answer; open ones stop forwarding (a network partition).
    /// Leaving this mode closes the held connections.
    Blackhole,
    /// Forward requests, but hold the answers until the mode changes: every write lands while the
    /// client times out waiting (a store that stalls after doing the work). Back in `Pass`, the held
    /// answers are delivered to the clients still waiting.
    HoldAnswers,
}

/// A TCP proxy on `127.0.0.1:0` in front of a DynamoDB endpoint, switchable at run time.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, the endpoint URL for the store's client.
    pub url: String,
    mode: Arc<watch::Sender<Mode>>,
    /// TCP connections accepted so far (each SDK attempt on a fresh connection counts one).
    accepted: Arc<AtomicUsize>,
    /// Connections that sent a request upstream while answers were held.
    held: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy to `endpoint` (a URL), passing traffic.
    pub async fn start(endpoint: &str) -> Self {
        let url = reqwest::Url::parse(endpoint).expect("DYNAMODB_TEST_ENDPOINT is a URL");
        let upstream = format!(
            "{}:{}",
            url.host_str().expect("endpoint host"),
            url.port_or_known_default().expect("endpoint port")
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(watch::channel(Mode::Pass).0);
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (mode, accepted, held) = (mode.clone(), accepted.clone(), held.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let rx = mode.subscribe();
                    let current = *rx.borrow();
                    match current {
                        Mode::Refuse => drop(client),
                        Mode::Blackhole => {
                            tokio::spawn(async move {
                                let _held = client;
                                hold_while_blackholed(rx).await;
                            });
                        }
                        Mode::Pass | Mode::HoldAnswers => {
                            tokio::spawn(pipe(client, upstream.clone(), rx, held.clone()));
                        }
                    }
                }
            }
        });
        Self {
            url: format!("http://{addr}"),
            mode,
            accepted,
            held,
            task,
        }
    }

    /// Switches the mode.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections that sent a request upstream while answers were held (one per SDK attempt:
    /// an attempt that timed out leaves its connection behind).
    pub fn held_requests(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards until either side closes or the mode turns to `Refuse` or `Blackhole`; then closes
/// both sides (after holding them for as long as the proxy black-holes).
async fn pipe(
    client: TcpStream,
    upstream: String,
    mut mode: watch::Receiver<Mode>,
    held: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = forward(client_read, server_write, mode.clone(), Some(held)) => return,
        _ = forward(server_read, client_write, mode.clone(), None) => return,
        _ = mode.wait_for(|m| matches!(m, Mode::Refuse | Mode::Blackhole)) => {}
    }
    hold_while_blackholed(mode).await;
}

/// Copies `from` to `to`. Requests (`held` is `Some`) always pass, counted once per connection
/// while answers are held; answers (`held` is `None`) wait while the mode is `HoldAnswers`.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    held: Option<Arc<AtomicUsize>>,
) {
    let mut buf = vec![0; 16 * 1024];
    let mut counted = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match &held {
            Some(held) => {
                if !counted && *mode.borrow() == Mode::HoldAnswers {
                    counted = true;
                    held.fetch_add(1, Ordering::SeqCst);
                }
            }
            None => {
                if mode.wait_for(|m| *m != Mode::HoldAnswers).await.is_err() {
                    return;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn hold_while_blackholed(mut mode: watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
}
