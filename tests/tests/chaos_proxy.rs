//! The network fault proxy (`test_kit::chaos`) and its `fault-proxy` binary, in front of echo
//! servers on loopback: latency, jitter and bandwidth shaping, the three faults on demand and on a
//! random schedule, the upstream policies, loopback-only addresses, the proxy's own deadline, and
//! a WebSocket client of a real host through it.

use futures_util::{SinkExt, StreamExt};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use test_kit::chaos::{
    ChaosConfig, ChaosError, ChaosProxy, ChaosSchedule, Fault, FaultWeights, Policy, Shaping,
};
use test_kit::{TestHost, WAIT, WHOAMI, connect, eventually, next_text, within, within_for};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// A TCP echo server on loopback that counts the connections it accepted and saw closed.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (accepted, closed) = (accepted.clone(), closed.clone());
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let closed = closed.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0; 64 * 1024];
                        while let Ok(n @ 1..) = stream.read(&mut buf).await {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        closed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Self {
            addr,
            accepted,
            closed,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(config: ChaosConfig) -> ChaosProxy {
    ChaosProxy::start(config).await.expect("fault proxy starts")
}

/// Sends `msg` and reads the same bytes back; returns how long that took.
async fn roundtrip(stream: &mut TcpStream, msg: &[u8]) -> Duration {
    let started = Instant::now();
    stream.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    within("the echo", stream.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, msg);
    started.elapsed()
}

/// A client connection through `proxy` that has made one round trip (so its upstream is chosen).
async fn connected(proxy: &ChaosProxy) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    roundtrip(&mut stream, b"hello").await;
    stream
}

/// Asserts that nothing arrives on `stream` for `quiet`, without the stream being closed.
async fn assert_silent(stream: &mut TcpStream, quiet: Duration) {
    let mut buf = [0; 64];
    match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
        Err(_) => {}
        Ok(read) => panic!("expected silence, the read returned {read:?}"),
    }
}

/// Reads until the stream ends; returns whether it ended with an error rather than a FIN.
async fn read_to_end(stream: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = vec![0; 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf).await? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

#[tokio::test]
async fn latency_and_jitter_are_added_without_reordering_bytes() {
    let echo = Echo::start().await;
    let latency = Duration::from_millis(30);
    let jitter = Duration::from_millis(40);
    let proxy = start(ChaosConfig {
        to_upstream: Shaping {
            latency,
            jitter,
            bandwidth: None,
        },
        to_client: Shaping {
            latency,
            ..Shaping::default()
        },
        ..ChaosConfig::to([echo.addr])
    })
    .await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    for _ in 0..10 {
        let rtt = roundtrip(&mut client, b"ping").await;
        assert!(
            rtt >= 2 * latency,
            "round trip {rtt:?} under twice {latency:?}"
        );
        assert!(
            rtt < 2 * latency + jitter + Duration::from_millis(500),
            "{rtt:?}"
        );
        rtts.push(rtt);
    }
    // Ten draws from 0..40 ms all within 10 ms of each other: about one chance in 30,000.
    let spread = *rtts.iter().max().unwrap() - *rtts.iter().min().unwrap();
    assert!(
        spread >= Duration::from_millis(10),
        "no jitter seen: {rtts:?}"
    );

    // Many small writes, each likely a chunk of its own with its own jitter, come back in order.
    let sent: Vec<u8> = (0..60u8).collect();
    let (mut read, mut write) = client.split();
    let writer = async {
        for byte in &sent {
            write.write_all(&[*byte]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let mut back = vec![0; sent.len()];
    let (_, got) = within("the echo", async {
        tokio::join!(writer, read.read_exact(&mut back))
    })
    .await;
    got.unwrap();
    assert_eq!(back, sent);
}

#[tokio::test]
async fn a_bandwidth_cap_holds() {
    let echo = Echo::start().await;
    let cap = 200_000u64;
    let proxy = start(ChaosConfig {
        to_upstream: Shaping {
            bandwidth: Some(cap),
            ..Shaping::default()
        },
        ..ChaosConfig::to([echo.addr])
    })
    .await;
    let mut client = connected(&proxy).await;
    let size = 100_000usize;
    let sent: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let (mut read, mut write) = client.split();
    let mut back = vec![0; size];
    let (wrote, got) = within("the echo", async {
        tokio::join!(write.write_all(&sent), read.read_exact(&mut back))
    })
    .await;
    wrote.unwrap();
    got.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(back, sent);
    // 100 kB at 200 kB/s: half a second, less the first slice that goes at once.
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    let stats = proxy.stats();
    assert_eq!(stats.bytes_to_upstream, 5 + size as u64);
    assert_eq!(stats.bytes_to_client, 5 + size as u64);
}

#[tokio::test]
async fn reset_makes_the_client_read_a_connection_reset() {
    let echo = Echo::start().await;
    let proxy = start(ChaosConfig::to([echo.addr])).await;
    let mut client = connected(&proxy).await;
    assert_eq!(proxy.inject(Fault::Reset), 1);
    let error = within_for(
        "the reset",
        Duration::from_secs(1),
        read_to_end(&mut client),
    )
    .await
    .expect_err("the read fails");
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    eventually("the upstream closed", WAIT, async || echo.closed() == 1).await;
    let stats = proxy.stats();
    assert_eq!(
        (stats.resets, stats.blackholes, stats.half_opens),
        (1, 0, 0)
    );
    // A connection made afterwards is not touched.
    let mut later = connected(&proxy).await;
    roundtrip(&mut later, b"still").await;
}

#[tokio::test]
async fn a_black_hole_swallows_everything_until_its_hold_ends() {
    let echo = Echo::start().await;
    let max_hold = Duration::from_millis(900);
    let proxy = start(ChaosConfig {
        max_hold,
        ..ChaosConfig::to([echo.addr])
    })
    .await;
    let mut client = connected(&proxy).await;
    let faulted = Instant::now();
    assert_eq!(proxy.inject(Fault::Blackhole), 1);
    client.write_all(b"anyone?").await.unwrap();
    assert_silent(&mut client, Duration::from_millis(300)).await;
    // Both sockets are still open: the host saw no close either, and the bytes were discarded.
    assert_eq!(echo.closed(), 0);
    eventually("the bytes discarded", WAIT, async || {
        proxy.stats().bytes_discarded == 7
    })
    .await;
    assert_eq!(proxy.stats().blackholes, 1);
    assert_eq!(proxy.stats().open, 1);

    let ended = within("the hold's end", read_to_end(&mut client)).await;
    assert!(faulted.elapsed() >= max_hold, "{:?}", faulted.elapsed());
    assert_eq!(ended.unwrap(), 0);
    eventually("the upstream closed", WAIT, async || echo.closed() == 1).await;
    eventually("no connection open", WAIT, async || proxy.stats().open == 0).await;
}

#[tokio::test]
async fn half_open_closes_the_host_side_and_holds_the_client() {
    let echo = Echo::start().await;
    let proxy = start(ChaosConfig {
        max_hold: Duration::from_millis(900),
        ..ChaosConfig::to([echo.addr])
    })
    .await;
    let mut client = connected(&proxy).await;
    assert_eq!(proxy.inject(Fault::HalfOpen), 1);
    eventually("the upstream closed", WAIT, async || echo.closed() == 1).await;
    // The client still believes it is connected: its writes go through, nothing comes back.
    client.write_all(b"hello?").await.unwrap();
    assert_silent(&mut client, Duration::from_millis(300)).await;
    assert_eq!(proxy.stats().half_opens, 1);
    assert_eq!(proxy.stats().open, 1);
    assert_eq!(
        within("the hold's end", read_to_end(&mut client))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn round_robin_spreads_connections_and_the_upstreams_can_change() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let proxy = start(ChaosConfig::to([a.addr, b.addr])).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connected(&proxy).await);
    }
    assert_eq!((a.accepted(), b.accepted()), (2, 2));

    // Host a is taken out: every new connection lands on b.
    proxy.set_upstreams(vec![b.addr]).unwrap();
    for _ in 0..2 {
        clients.push(connected(&proxy).await);
    }
    assert_eq!((a.accepted(), b.accepted()), (2, 4));

    // No host at all: a new connection is reset, the open ones carry on.
    proxy.set_upstreams(Vec::new()).unwrap();
    let mut orphan = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        within("the orphan's end", read_to_end(&mut orphan))
            .await
            .is_err()
    );
    assert_eq!(proxy.stats().upstream_failures, 1);
    roundtrip(&mut clients[0], b"still here").await;

    let stats = proxy.shutdown().await;
    assert_eq!(stats.accepted, 7);
    assert_eq!(stats.open, 0);
    for client in &mut clients {
        assert_eq!(within("the close", read_to_end(client)).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn the_random_policy_reaches_every_upstream() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let proxy = start(ChaosConfig {
        policy: Policy::Random,
        ..ChaosConfig::to([a.addr, b.addr])
    })
    .await;
    for _ in 0..24 {
        drop(connected(&proxy).await);
    }
    // Each side misses all 24 with probability 2^-24.
    assert_eq!(a.accepted() + b.accepted(), 24);
    assert!(a.accepted() > 0 && b.accepted() > 0);
}

#[tokio::test]
async fn the_chaos_schedule_cuts_each_connection_within_its_range() {
    let echo = Echo::start().await;
    let (min, max) = (Duration::from_millis(300), Duration::from_millis(700));
    let proxy = start(ChaosConfig {
        chaos: Some(ChaosSchedule {
            min,
            max,
            weights: FaultWeights {
                reset: 1,
                blackhole: 0,
                half_open: 0,
            },
        }),
        ..ChaosConfig::to([echo.addr])
    })
    .await;
    let lives = futures_util::future::join_all((0..4).map(|_| async {
        let started = Instant::now();
        let mut client = connected(&proxy).await;
        let ended = within("the scheduled fault", read_to_end(&mut client)).await;
        assert_eq!(ended.unwrap_err().kind(), ErrorKind::ConnectionReset);
        started.elapsed()
    }))
    .await;
    for life in lives {
        assert!(life >= min, "{life:?}");
        assert!(life <= max + Duration::from_millis(400), "{life:?}");
    }
    assert_eq!(proxy.stats().resets, 4);
}

#[tokio::test]
async fn the_chaos_schedule_picks_every_fault_it_is_given() {
    let echo = Echo::start().await;
    let proxy = start(ChaosConfig {
        chaos: Some(ChaosSchedule {
            min: Duration::from_millis(300),
            max: Duration::from_millis(400),
            weights: FaultWeights {
                reset: 1,
                blackhole: 1,
                half_open: 1,
            },
        }),
        max_hold: Duration::from_millis(300),
        ..ChaosConfig::to([echo.addr])
    })
    .await;
    let mut clients = Vec::new();
    let mut stats = proxy.stats();
    // Until each fault has been seen (a third of a chance each time), 60 connections at most.
    while clients.len() < 60
        && (stats.resets == 0 || stats.blackholes == 0 || stats.half_opens == 0)
    {
        for _ in 0..6 {
            clients.push(connected(&proxy).await);
        }
        let n = clients.len() as u64;
        eventually("every connection faulted", WAIT, async || {
            proxy.stats().faults() == n
        })
        .await;
        stats = proxy.stats();
    }
    assert!(
        stats.resets > 0 && stats.blackholes > 0 && stats.half_opens > 0,
        "{stats}"
    );
    eventually("every hold over", WAIT, async || proxy.stats().open == 0).await;
}

#[tokio::test]
async fn the_proxy_stops_by_itself_at_its_deadline() {
    let echo = Echo::start().await;
    let lifetime = Duration::from_millis(600);
    let started = Instant::now();
    let proxy = start(ChaosConfig {
        lifetime,
        ..ChaosConfig::to([echo.addr])
    })
    .await;
    let mut held = connected(&proxy).await;
    assert_eq!(proxy.inject(Fault::Blackhole), 1);
    let mut open = connected(&proxy).await;
    assert!(proxy.is_running());

    within_for("the deadline", Duration::from_secs(3), proxy.finished()).await;
    assert!(started.elapsed() >= lifetime, "{:?}", started.elapsed());
    assert!(!proxy.is_running());
    // Everything is closed, the black-holed connection too (its own hold is 60 s).
    assert_eq!(
        within("the close", read_to_end(&mut open)).await.unwrap(),
        0
    );
    assert_eq!(
        within("the close", read_to_end(&mut held)).await.unwrap(),
        0
    );
    assert_eq!(proxy.stats().open, 0);
    let refused = TcpStream::connect(proxy.addr()).await;
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn addresses_off_loopback_are_refused() {
    let wild: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let remote: SocketAddr = "192.0.2.1:80".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let listen_anywhere = ChaosProxy::start(ChaosConfig {
        listen: wild,
        ..ChaosConfig::to([local])
    })
    .await;
    assert!(matches!(listen_anywhere, Err(ChaosError::NotLoopback(a)) if a == wild));
    let forward_away = ChaosProxy::start(ChaosConfig::to([local, remote])).await;
    assert!(matches!(forward_away, Err(ChaosError::NotLoopback(a)) if a == remote));

    let proxy = start(ChaosConfig::to([local])).await;
    assert!(matches!(
        proxy.set_upstreams(vec![remote]),
        Err(ChaosError::NotLoopback(_))
    ));
    assert_eq!(proxy.upstreams(), vec![local]);
}

#[tokio::test]
async fn the_binary_forwards_until_its_duration_and_prints_its_counters() {
    let echo = Echo::start().await;
    let upstream = echo.addr.to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fault-proxy"))
        .args([
            "--upstream",
            &upstream,
            "--latency",
            "10ms",
            "--duration",
            "1500ms",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within("the address", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let addr: SocketAddr = first
        .strip_prefix("fault-proxy listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let rtt = roundtrip(&mut client, b"through the binary").await;
    assert!(rtt >= Duration::from_millis(20), "{rtt:?}");

    let status = within("the exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    let last = within("the counters", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(
        last.starts_with("fault-proxy stopped: accepted=1 open=0 upstream_failures=0"),
        "{last}"
    );
    assert!(
        last.contains("bytes_to_upstream=18 bytes_to_client=18"),
        "{last}"
    );
}

#[tokio::test]
async fn a_websocket_client_through_the_proxy_is_slowed_then_reset() {
    let host = TestHost::start(WHOAMI).await;
    let latency = Duration::from_millis(50);
    let proxy = start(ChaosConfig {
        to_client: Shaping {
            latency,
            ..Shaping::default()
        },
        ..ChaosConfig::to([host.addr])
    })
    .await;
    // The handshake's answer is delayed like every other byte.
    let started = Instant::now();
    let mut ws = connect(proxy.addr()).await;
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    let started = Instant::now();
    ws.send(Message::text(r#"{"action":"whoami"}"#))
        .await
        .unwrap();
    let answer = next_text(&mut ws).await;
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    assert!(answer.contains("connectionId"), "{answer}");

    assert_eq!(proxy.inject(Fault::Reset), 1);
    let next = within("the reset", ws.next()).await;
    assert!(matches!(next, Some(Err(_))), "{next:?}");
}
