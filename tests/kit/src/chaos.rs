//! A userspace network fault proxy for WebSocket (or any TCP) tests: the kernel's `netem` is not
//! available everywhere the tests run, so latency, jitter, bandwidth caps and broken connections
//! are made here, between a client and one or more hosts, all on loopback.
//!
//! [`ChaosProxy`] listens on a loopback address and forwards each client connection to one of its
//! upstreams, picked per connection by a [`Policy`] (round-robin or random), so a client that
//! reconnects can land on another host of a cluster; [`ChaosProxy::set_upstreams`] replaces the
//! list while it runs (a test that kills a host takes it out).
//!
//! - **Shaping**, per direction ([`Shaping`]): a fixed latency, a random jitter of `0..jitter`
//!   added per chunk read (never reordering bytes: a chunk is never sent before the one before
//!   it), and a bandwidth cap in bytes per second.
//! - **Faults** ([`Fault`]), on demand for every open connection ([`ChaosProxy::inject`]) or on a
//!   random schedule ([`ChaosSchedule`]: each connection lives a random time in `[min, max]`, then
//!   a fault picked by weight hits it):
//!   - [`Fault::Reset`]: both sides are closed with an RST (`SO_LINGER` 0), so both peers read
//!     `ECONNRESET`;
//!   - [`Fault::Blackhole`]: forwarding stops both ways, both sockets stay open and whatever
//!     either peer sends is read and discarded; the peers see nothing until their own timeouts;
//!   - [`Fault::HalfOpen`]: the upstream (host) side is closed, the client side is kept open and
//!     its bytes are read and discarded, and nothing is ever sent to it: the host sees the client
//!     leave while the client believes it is still connected (what its heartbeats must detect).
//! - **Bounded**: the proxy stops by itself at the end of [`ChaosConfig::lifetime`] and closes
//!   every connection; a black-holed or half-open connection is closed after
//!   [`ChaosConfig::max_hold`] or when the proxy stops, whichever comes first. It refuses to
//!   listen on, or forward to, anything but a loopback address.
//! - **Counters** ([`Stats`]): connections accepted and open, upstream failures, each fault, bytes
//!   each way.
//!
//! Outside faults, a connection behaves as a plain proxy: a half-close (FIN) on either side is
//! passed on after the bytes before it, and an RST (an I/O error) on either side resets the other.
//! A connection that finds no upstream (an empty list, or a refused or timed-out connect) is reset.
//!
//! By hand, the `fault-proxy` binary of the `e2e-tests` package runs one until its duration ends
//! (or Ctrl-C) and prints the counters:
//!
//! ```text
//! cargo run -p e2e-tests --bin fault-proxy -- --listen 127.0.0.1:9000 \
//!     --upstream 127.0.0.1:8080 --upstream 127.0.0.1:8081 --policy round-robin \
//!     --latency 20ms --jitter 10ms --bandwidth 1000000 \
//!     --chaos 500ms..3s --faults reset=1,blackhole=1,halfopen=0 --duration 5m
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// How much one read takes from a socket: one chunk of shaping (one jitter draw).
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction: with a latency, the reader runs ahead of the writer by at most
/// this much, so the proxy's memory stays bounded and TCP flow control reaches the sender.
const QUEUE: usize = 64;
/// A capped direction writes slices of at most 1/50 s worth of bytes, so the rate holds over
/// short transfers too instead of in bursts of whole chunks.
const SLICES_PER_SECOND: u64 = 50;

/// Errors of [`ChaosProxy::start`] and [`ChaosProxy::set_upstreams`].
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The proxy listens on and forwards to loopback addresses only: it is for tests, never a
    /// way to break traffic on a real network.
    #[error("{0} is not a loopback address (the fault proxy stays on loopback)")]
    NotLoopback(SocketAddr),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from [`ChaosConfig::listen`].
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A setting that cannot work (named in the message).
    #[error("invalid fault proxy setting: {0}")]
    Invalid(&'static str),
}

/// A setting given as text (on the command line) that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// How each new client connection picks its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The upstreams in turn.
    #[default]
    RoundRobin,
    /// One at random, independently for each connection.
    Random,
}

impl FromStr for Policy {
    type Err = ParseError;

    /// `round-robin` or `random`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "round-robin" | "roundrobin" => Ok(Self::RoundRobin),
            "random" => Ok(Self::Random),
            _ => Err(ParseError(format!(
                "unknown policy {s:?} (round-robin or random)"
            ))),
        }
    }
}

/// A fault that hits a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Both sides closed with an RST.
    Reset,
    /// Nothing forwarded any more, both sockets held open, everything discarded.
    Blackhole,
    /// The upstream side closed; the client side held open, read and discarded, never written to.
    HalfOpen,
}

/// The shaping of one direction of every connection. The default shapes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shaping {
    /// Added to every chunk's trip through the proxy.
    pub latency: Duration,
    /// Up to this much more per chunk, drawn uniformly; a chunk still never overtakes the one
    /// before it, so the byte order holds.
    pub jitter: Duration,
    /// The most bytes per second written to the receiving side; `None` for no cap. Must not be 0.
    pub bandwidth: Option<u64>,
}

/// The relative weights of the faults a [`ChaosSchedule`] picks from; at least one must be
/// non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultWeights {
    /// Weight of [`Fault::Reset`].
    pub reset: u32,
    /// Weight of [`Fault::Blackhole`].
    pub blackhole: u32,
    /// Weight of [`Fault::HalfOpen`].
    pub half_open: u32,
}

impl Default for FaultWeights {
    /// Resets and black holes equally often; half-open connections only when asked for.
    fn default() -> Self {
        Self {
            reset: 1,
            blackhole: 1,
            half_open: 0,
        }
    }
}

impl FaultWeights {
    fn total(&self) -> u64 {
        u64::from(self.reset) + u64::from(self.blackhole) + u64::from(self.half_open)
    }

    fn pick(&self) -> Fault {
        let mut n = rand::random_range(0..self.total());
        for (weight, fault) in [
            (self.reset, Fault::Reset),
            (self.blackhole, Fault::Blackhole),
        ] {
            if n < u64::from(weight) {
                return fault;
            }
            n -= u64::from(weight);
        }
        Fault::HalfOpen
    }
}

impl FromStr for FaultWeights {
    type Err = ParseError;

    /// `reset=1,blackhole=1,halfopen=0`; a fault left out weighs 0.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut weights = Self {
            reset: 0,
            blackhole: 0,
            half_open: 0,
        };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| ParseError(format!("{item:?} is not NAME=WEIGHT")))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| ParseError(format!("{weight:?} is not a whole number")))?;
            match name.trim() {
                "reset" => weights.reset = weight,
                "blackhole" => weights.blackhole = weight,
                "halfopen" | "half-open" | "half_open" => weights.half_open = weight,
                other => {
                    return Err(ParseError(format!(
                        "unknown fault {other:?} (reset, blackhole, halfopen)"
                    )));
                }
            }
        }
        if weights.total() == 0 {
            return Err(ParseError("every fault weighs 0".into()));
        }
        Ok(weights)
    }
}

/// Random faults: each connection lives a time drawn uniformly from `[min, max]` after it is
/// forwarded, then a fault drawn by `weights` hits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosSchedule {
    /// The shortest life of a connection.
    pub min: Duration,
    /// The longest life of a connection (not less than `min`).
    pub max: Duration,
    /// Which fault ends it.
    pub weights: FaultWeights,
}

impl ChaosSchedule {
    fn lifetime(&self) -> Duration {
        self.min + (self.max - self.min).mul_f64(rand::random::<f64>())
    }
}

/// What a [`ChaosProxy`] does. The default listens on `127.0.0.1:0`, shapes nothing, injects no
/// fault by itself and stops after two minutes; set at least [`upstreams`](Self::upstreams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosConfig {
    /// Where clients connect (loopback only); port 0 picks a free port ([`ChaosProxy::addr`]).
    pub listen: SocketAddr,
    /// Where connections are forwarded (loopback only); [`ChaosProxy::set_upstreams`] changes it.
    pub upstreams: Vec<SocketAddr>,
    /// How a new connection picks its upstream.
    pub policy: Policy,
    /// Shaping of the bytes from the client to the upstream.
    pub to_upstream: Shaping,
    /// Shaping of the bytes from the upstream to the client.
    pub to_client: Shaping,
    /// Random faults per connection; `None` for faults on demand only.
    pub chaos: Option<ChaosSchedule>,
    /// After this long the proxy stops by itself and closes every connection.
    pub lifetime: Duration,
    /// The longest a black-holed or half-open connection is held before it is closed.
    pub max_hold: Duration,
    /// How long a connection to an upstream may take before the client is reset.
    pub connect_timeout: Duration,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            upstreams: Vec::new(),
            policy: Policy::RoundRobin,
            to_upstream: Shaping::default(),
            to_client: Shaping::default(),
            chaos: None,
            lifetime: Duration::from_secs(120),
            max_hold: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl ChaosConfig {
    /// The default configuration forwarding to `upstreams`.
    pub fn to(upstreams: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            upstreams: upstreams.into_iter().collect(),
            ..Self::default()
        }
    }

    fn check(&self) -> Result<(), ChaosError> {
        check_loopback(std::iter::once(&self.listen).chain(&self.upstreams))?;
        for shaping in [&self.to_upstream, &self.to_client] {
            if shaping.bandwidth == Some(0) {
                return Err(ChaosError::Invalid("a bandwidth cap must be above 0"));
            }
        }
        if let Some(chaos) = &self.chaos {
            if chaos.min > chaos.max {
                return Err(ChaosError::Invalid(
                    "the chaos schedule's min is above its max",
                ));
            }
            if chaos.weights.total() == 0 {
                return Err(ChaosError::Invalid(
                    "every fault of the chaos schedule weighs 0",
                ));
            }
        }
        if self.lifetime.is_zero() {
            return Err(ChaosError::Invalid("the lifetime must be above 0"));
        }
        Ok(())
    }
}

fn check_loopback<'a>(addrs: impl IntoIterator<Item = &'a SocketAddr>) -> Result<(), ChaosError> {
    match addrs.into_iter().find(|a| !a.ip().is_loopback()) {
        Some(addr) => Err(ChaosError::NotLoopback(*addr)),
        None => Ok(()),
    }
}

/// The proxy's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections not closed yet (forwarding or held by a fault).
    pub open: u64,
    /// Client connections reset because no upstream could be reached (or the list was empty).
    pub upstream_failures: u64,
    /// Connections hit by [`Fault::Reset`].
    pub resets: u64,
    /// Connections hit by [`Fault::Blackhole`].
    pub blackholes: u64,
    /// Connections hit by [`Fault::HalfOpen`].
    pub half_opens: u64,
    /// Bytes written to upstreams.
    pub bytes_to_upstream: u64,
    /// Bytes written to clients.
    pub bytes_to_client: u64,
    /// Bytes read and thrown away from connections held by a fault.
    pub bytes_discarded: u64,
}

impl Stats {
    /// How many connections `fault` hit.
    pub fn count(&self, fault: Fault) -> u64 {
        match fault {
            Fault::Reset => self.resets,
            Fault::Blackhole => self.blackholes,
            Fault::HalfOpen => self.half_opens,
        }
    }

    /// How many connections any fault hit.
    pub fn faults(&self) -> u64 {
        self.resets + self.blackholes + self.half_opens
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} open={} upstream_failures={} resets={} blackholes={} half_opens={} \
             bytes_to_upstream={} bytes_to_client={} bytes_discarded={}",
            self.accepted,
            self.open,
            self.upstream_failures,
            self.resets,
            self.blackholes,
            self.half_opens,
            self.bytes_to_upstream,
            self.bytes_to_client,
            self.bytes_discarded
        )
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    upstream_failures: AtomicU64,
    resets: AtomicU64,
    blackholes: AtomicU64,
    half_opens: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    bytes_discarded: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        Stats {
            accepted: get(&self.accepted),
            open: get(&self.open),
            upstream_failures: get(&self.upstream_failures),
            resets: get(&self.resets),
            blackholes: get(&self.blackholes),
            half_opens: get(&self.half_opens),
            bytes_to_upstream: get(&self.bytes_to_upstream),
            bytes_to_client: get(&self.bytes_to_client),
            bytes_discarded: get(&self.bytes_discarded),
        }
    }

    fn fault(&self, fault: Fault) -> &AtomicU64 {
        match fault {
            Fault::Reset => &self.resets,
            Fault::Blackhole => &self.blackholes,
            Fault::HalfOpen => &self.half_opens,
        }
    }
}

/// What the proxy's tasks share.
struct Shared {
    config: ChaosConfig,
    upstreams: Mutex<Vec<SocketAddr>>,
    turn: AtomicUsize,
    counters: Counters,
    /// The connections still forwarding, each with the channel that hands it an injected fault.
    forwarding: Mutex<HashMap<u64, oneshot::Sender<Fault>>>,
    /// Set once: the proxy is stopping (asked to, or its lifetime is over).
    stop: watch::Sender<bool>,
}

impl Shared {
    fn upstreams(&self) -> MutexGuard<'_, Vec<SocketAddr>> {
        // A panic while holding the lock cannot leave the list half-written (it is replaced whole).
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forwarding(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Fault>>> {
        self.forwarding.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pick_upstream(&self) -> Option<SocketAddr> {
        let upstreams = self.upstreams();
        if upstreams.is_empty() {
            return None;
        }
        let i = match self.config.policy {
            Policy::RoundRobin => self.turn.fetch_add(1, Ordering::SeqCst) % upstreams.len(),
            Policy::Random => rand::random_range(0..upstreams.len()),
        };
        Some(upstreams[i])
    }
}

/// A running fault proxy; see the [module documentation](self). Dropping it stops it too.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Becomes true when the proxy has stopped and every connection is closed.
    done: watch::Receiver<bool>,
}

impl ChaosProxy {
    /// Checks `config`, binds its listening address and starts forwarding; the proxy stops by
    /// itself after `config.lifetime`.
    pub async fn start(config: ChaosConfig) -> Result<Self, ChaosError> {
        config.check()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ChaosError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ChaosError::Bind {
            addr: config.listen,
            source,
        })?;
        let deadline = Instant::now() + config.lifetime;
        let shared = Arc::new(Shared {
            upstreams: Mutex::new(config.upstreams.clone()),
            config,
            turn: AtomicUsize::new(0),
            counters: Counters::default(),
            forwarding: Mutex::new(HashMap::new()),
            stop: watch::channel(false).0,
        });
        let (done_tx, done) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), deadline, done_tx));
        Ok(Self { addr, shared, done })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the upstreams that new connections pick from (an empty list resets every new
    /// connection). Connections already forwarded keep their upstream.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) -> Result<(), ChaosError> {
        check_loopback(&upstreams)?;
        *self.shared.upstreams() = upstreams;
        Ok(())
    }

    /// The upstreams that new connections pick from.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.shared.upstreams().clone()
    }

    /// Hits every connection still forwarding with `fault`; returns how many it reached (a
    /// connection that was closing at that moment may be missed). Connections accepted later are
    /// not affected.
    pub fn inject(&self, fault: Fault) -> usize {
        let targets: Vec<_> = self.shared.forwarding().drain().collect();
        targets
            .into_iter()
            .filter(|(_, tx)| !tx.is_closed())
            .map(|(_, tx)| tx.send(fault))
            .filter(Result::is_ok)
            .count()
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Whether the proxy still runs (it has not been shut down and its lifetime is not over).
    pub fn is_running(&self) -> bool {
        !*self.done.borrow()
    }

    /// Waits until the proxy has stopped by itself (its lifetime is over) and closed everything.
    pub async fn finished(&self) {
        let mut done = self.done.clone();
        // An error means the accept loop is gone, which is stopped as well.
        let _ = done.wait_for(|d| *d).await;
    }

    /// Stops the proxy now: no new connections, every open one closed. Returns the final counters.
    pub async fn shutdown(self) -> Stats {
        self.shared.stop.send_replace(true);
        self.finished().await;
        self.stats()
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

/// Accepts until the lifetime is over or a stop is asked for, then closes the listener, tells
/// every connection to close, and waits for them.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    deadline: Instant,
    done: watch::Sender<bool>,
) {
    let mut stop = shared.stop.subscribe();
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    next_id += 1;
                    shared.counters.accepted.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve(next_id, client, shared.clone()));
                }
                // Out of descriptors, or a connection reset before it was accepted: try again
                // after a moment rather than spinning.
                Err(_) => sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = sleep_until(deadline) => break,
            () = stopping(&mut stop) => break,
        }
    }
    drop(listener);
    shared.stop.send_replace(true);
    while connections.join_next().await.is_some() {}
    shared.forwarding().clear();
    done.send_replace(true);
}

/// Returns once the proxy is stopping. (A closed channel means the proxy is gone, which is
/// stopping too.) The watch guard is not kept, so the futures that await this stay `Send`.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps the open-connections gauge right however a connection's task ends.
struct OpenGuard<'a>(&'a Counters);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a connection's forwarding ended.
enum Ending {
    /// Both directions were closed by their senders and passed on.
    Closed,
    /// An I/O error (an RST, most likely) on either side.
    Broken,
    /// A fault hit it.
    Fault(Fault),
    /// The proxy is stopping.
    Stopped,
}

/// One client connection, from connecting its upstream to closing both sockets.
async fn serve(id: u64, mut client: TcpStream, shared: Arc<Shared>) {
    let counters = &shared.counters;
    counters.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(counters);
    let config = &shared.config;
    let mut stop = shared.stop.subscribe();

    let connect = async {
        let addr = shared.pick_upstream()?;
        timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()
    };
    let upstream = tokio::select! {
        upstream = connect => upstream,
        () = stopping(&mut stop) => return,
    };
    let Some(mut upstream) = upstream else {
        counters.upstream_failures.fetch_add(1, Ordering::SeqCst);
        reset(client);
        return;
    };
    // The proxy's own small writes must not wait for Nagle's algorithm: the shaping decides
    // every delay.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let (fault_tx, mut fault_rx) = oneshot::channel();
    shared.forwarding().insert(id, fault_tx);
    let scheduled = config
        .chaos
        .map(|chaos| (Instant::now() + chaos.lifetime(), chaos.weights.pick()));

    let ending = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let forward = async {
            tokio::try_join!(
                pipe(
                    client_read,
                    upstream_write,
                    config.to_upstream,
                    &counters.bytes_to_upstream
                ),
                pipe(
                    upstream_read,
                    client_write,
                    config.to_client,
                    &counters.bytes_to_client
                ),
            )
        };
        let schedule = async {
            match scheduled {
                Some((at, fault)) => {
                    sleep_until(at).await;
                    fault
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            forwarded = forward => match forwarded {
                Ok(_) => Ending::Closed,
                Err(_) => Ending::Broken,
            },
            Ok(fault) = &mut fault_rx => Ending::Fault(fault),
            fault = schedule => Ending::Fault(fault),
            () = stopping(&mut stop) => Ending::Stopped,
        }
    };
    shared.forwarding().remove(&id);

    match ending {
        Ending::Closed | Ending::Stopped => {}
        Ending::Broken => {
            reset(client);
            reset(upstream);
        }
        Ending::Fault(fault) => {
            counters.fault(fault).fetch_add(1, Ordering::SeqCst);
            match fault {
                Fault::Reset => {
                    reset(client);
                    reset(upstream);
                }
                Fault::Blackhole => hold(&shared, &mut stop, client, Some(upstream)).await,
                Fault::HalfOpen => {
                    drop(upstream);
                    hold(&shared, &mut stop, client, None).await;
                }
            }
        }
    }
}

/// Closes `stream` with an RST instead of a FIN, as a crashed host or a middlebox would.
fn reset(stream: TcpStream) {
    // Without SO_LINGER the close is an orderly FIN, which is the next best thing.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Holds a faulted connection open, reading and discarding whatever comes, until `max_hold` has
/// passed or the proxy stops; then closes it.
async fn hold(
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    mut client: TcpStream,
    mut upstream: Option<TcpStream>,
) {
    let discarded = &shared.counters.bytes_discarded;
    let discard_upstream = async {
        match upstream.as_mut() {
            Some(upstream) => discard(upstream, discarded).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = sleep(shared.config.max_hold) => {}
        () = stopping(stop) => {}
        // Neither ends: a peer that closes its side is not told either, as in a real black hole.
        () = discard(&mut client, discarded) => {}
        () = discard_upstream => {}
    }
}

/// Reads and drops until the peer closes or fails, then waits forever (the socket stays open).
async fn discard(stream: &mut TcpStream, counter: &AtomicU64) {
    let mut buf = vec![0; CHUNK];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
    std::future::pending().await
}

/// A chunk read from one side, to be written to the other no earlier than `due`.
struct Chunk {
    due: Instant,
    bytes: Vec<u8>,
}

/// One direction of a connection, shaped: a reader stamps each chunk with its due time and queues
/// it; a writer waits for that time, paces the bytes to the bandwidth cap and writes them. The
/// sender's half-close is passed on after its last bytes. Counts the bytes written in `written`.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shaping: Shaping,
    written: &AtomicU64,
) -> io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<Chunk>(QUEUE);
    let read = async move {
        loop {
            let mut bytes = vec![0; CHUNK];
            let n = from.read(&mut bytes).await?;
            if n == 0 {
                // Dropping the queue's sender tells the writer that nothing more comes.
                return Ok::<(), io::Error>(());
            }
            bytes.truncate(n);
            let jitter = if shaping.jitter.is_zero() {
                Duration::ZERO
            } else {
                shaping.jitter.mul_f64(rand::random::<f64>())
            };
            // The queue is first in, first out: a chunk due before the one ahead of it waits
            // for it, so jitter delays bytes but never reorders them.
            let due = Instant::now() + shaping.latency + jitter;
            if queue.send(Chunk { due, bytes }).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async {
        let slice = shaping.bandwidth.map_or(CHUNK, |bw| {
            (bw / SLICES_PER_SECOND).clamp(1, CHUNK as u64) as usize
        });
        // When the next slice may start under the bandwidth cap.
        let mut next_slot = Instant::now();
        while let Some(chunk) = queued.recv().await {
            sleep_until(chunk.due).await;
            for part in chunk.bytes.chunks(slice) {
                if let Some(bw) = shaping.bandwidth {
                    let start = next_slot.max(Instant::now());
                    sleep_until(start).await;
                    next_slot = start + Duration::from_secs_f64(part.len() as f64 / bw as f64);
                }
                to.write_all(part).await?;
                written.fetch_add(part.len() as u64, Ordering::SeqCst);
            }
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_reject_nonsense() {
        let w: FaultWeights = "reset=2, blackhole=1,halfopen=0".parse().unwrap();
        assert_eq!((w.reset, w.blackhole, w.half_open), (2, 1, 0));
        let w: FaultWeights = "half-open=3".parse().unwrap();
        assert_eq!((w.reset, w.blackhole, w.half_open), (0, 0, 3));
        assert!("reset=0".parse::<FaultWeights>().is_err());
        assert!("reset".parse::<FaultWeights>().is_err());
        assert!("drop=1".parse::<FaultWeights>().is_err());
        assert!("reset=-1".parse::<FaultWeights>().is_err());
    }

    #[test]
    fn a_fault_of_weight_zero_is_never_picked() {
        let w = FaultWeights {
            reset: 0,
            blackhole: 1,
            half_open: 1,
        };
        let picked: Vec<_> = (0..200).map(|_| w.pick()).collect();
        assert!(!picked.contains(&Fault::Reset));
        assert!(picked.contains(&Fault::Blackhole));
        assert!(picked.contains(&Fault::HalfOpen));
    }

    #[test]
    fn lifetimes_stay_in_their_range() {
        let chaos = ChaosSchedule {
            min: Duration::from_millis(500),
            max: Duration::from_secs(3),
            weights: FaultWeights::default(),
        };
        for _ in 0..1000 {
            let l = chaos.lifetime();
            assert!(l >= chaos.min && l <= chaos.max, "{l:?}");
        }
    }

    #[test]
    fn policy_parses() {
        assert_eq!("random".parse::<Policy>().unwrap(), Policy::Random);
        assert_eq!("round-robin".parse::<Policy>().unwrap(), Policy::RoundRobin);
        assert!("first".parse::<Policy>().is_err());
    }
}
