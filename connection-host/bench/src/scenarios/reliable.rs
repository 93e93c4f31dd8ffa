//! `reliable` and `reliable-store`: PostToConnection to clients speaking the `ch-reliable.v1`
//! subprotocol (PROTOCOL.md) beside plain clients of the same host in the same run, the resume of
//! a session with 1,000 buffered messages, and the envelope's cost by payload size.
//!
//! The reliable clients speak the protocol raw, as a client should: they offer the subprotocol,
//! read the welcome, and acknowledge cumulatively every 64 frames (or 256 KiB, or 200 ms after the
//! last unacknowledged frame). They read a frame's sequence number from the prefix the host writes
//! (`{"t":"msg","s":N,`), parsing the JSON only when a frame does not start with it, so the
//! bench's own cost per frame stays close to a plain client's, which only counts.

use super::post::{CLIENTS, POST_BODY, POSTERS, TOTAL, WHOAMI_CONFIG, post_load};
use crate::*;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The subprotocol a reliable client offers.
const SUBPROTOCOL: &str = "ch-reliable.v1";
/// A client acknowledges at least every this many frames (PROTOCOL.md section 5.2)...
const ACK_EVERY: u64 = 64;
/// ...or when this many bytes are unacknowledged, so large frames never fill the host's
/// `session_buffer_bytes` (1 MiB) between two acknowledgements...
const ACK_BYTES: usize = 256 * 1024;
/// ...or this long after the last frame when no more came (the protocol asks for 1 s at most).
const ACK_DELAY: Duration = Duration::from_millis(200);

/// Target: posts to reliable clients at no less than this share of the rate to plain ones.
const MIN_RATIO: f64 = 0.70;
/// Alternating rounds of plain and reliable clients in the throughput comparison.
const ROUNDS: usize = 3;
/// Messages buffered for a detached session before it resumes.
const BUFFERED: u64 = 1_000;
/// Resumes timed (the median is reported).
const RESUMES: usize = 7;
/// Payload sizes of the envelope's cost, and the posts per round and the rounds per size.
const SIZES: &[usize] = &[100, 4 * 1024, 32 * 1024];
const SIZE_TOTAL: u64 = 20_000;
const SIZE_ROUNDS: usize = 2;
/// Posts to each kind of client with `durability = "store"` from one HTTP client (moto takes
/// milliseconds for each transaction), then posts to reliable clients from several.
const STORE_TOTAL: u64 = 300;
const STORE_CONCURRENT: u64 = 1_000;
const STORE_POSTERS: usize = 4;

/// A host with the whoami route (plain clients learn their IDs with it) and sessions on.
fn config(durability: &str, store: &str) -> String {
    format!(
        "{WHOAMI_CONFIG}\n[extensions.sessions]\nenabled = true\nresume_window = \"30s\"\n\
         durability = \"{durability}\"\n\n{store}"
    )
}

pub(crate) async fn reliable(o: &Opts) -> Res<Vec<Row>> {
    let host = HostProc::start(&o.host_bin, "reliable", &config("memory", "")).await?;
    let mut rows = Vec::new();
    let (compared, _) = compare(
        o, "reliable", host.port, POST_BODY, TOTAL, POSTERS, ROUNDS, true,
    )
    .await?;
    rows.extend(compared);
    rows.push(resume(host.port).await?);
    for &size in SIZES {
        let body = json_payload(size);
        let what = format!("{size} B");
        let scenario = format!("reliable {what}");
        let (compared, _) = compare(
            o,
            &scenario,
            host.port,
            &body,
            SIZE_TOTAL,
            POSTERS,
            SIZE_ROUNDS,
            false,
        )
        .await?;
        rows.extend(compared);
    }
    rows.extend(envelope_micro());
    host.report_log();
    Ok(rows)
}

pub(crate) async fn reliable_store(o: &Opts, endpoint: &str) -> Res<Vec<Row>> {
    let tables = Tables::create(o, endpoint, "reliable").await?;
    let result = async {
        let config = config("store", &tables.store_section());
        let host =
            HostProc::start_with_env(&o.host_bin, "reliable-store", &config, &aws_env(endpoint))
                .await?;
        let before = tables.count_frames().await?;
        let mut rows = Vec::new();
        let scenario = "reliable-store";
        // One poster first, while the tables are small: moto copies every table a transaction
        // touches (its rollback copy), so its transactions slow down as frames accumulate.
        let (compared, reliable_posts) =
            compare(o, scenario, host.port, POST_BODY, STORE_TOTAL, 1, 1, false).await?;
        rows.extend(compared);
        // Then concurrent posts. moto answers some concurrent transactions 500 (its rollback
        // copy races with the other requests' writes), which the host's SDK retries with backoff.
        let concurrent = load(
            host.port,
            Kind::Reliable,
            POST_BODY,
            STORE_CONCURRENT,
            STORE_POSTERS,
            o.duration,
        )
        .await?;
        let what = format!(
            "POST @connections, 30 B body, {STORE_POSTERS} keep-alive HTTP clients → {CLIENTS} \
             reliable WebSockets"
        );
        let mut row = concurrent.row(scenario, &what);
        row.target = "— (reported)".into();
        rows.push(row);
        // Every post to a reliable client wrote its frame: one item each in the sessions table.
        let written = tables.count_frames().await? - before;
        let posted = reliable_posts + concurrent.sent;
        let mut row = Row::new(
            scenario,
            "store writes per post to a reliable client: one conditional PutItem of the frame, \
             fenced by its sequence number",
        );
        row.count = format!("{written} frame items for {posted} posts");
        row.rate = format!("{:.2} items/post", written as f64 / posted.max(1) as f64);
        row.verdict = if written == posted {
            "1 per post".into()
        } else {
            format!("MISMATCH ({written} ≠ {posted})")
        };
        rows.push(row);
        host.report_log();
        Ok(rows)
    }
    .await;
    tables.delete().await;
    result
}

/// Plain and reliable clients in alternating rounds on the same host, then the ratio of their
/// mean rates (checked against [`MIN_RATIO`] when `check`); with the posts answered 200 to the
/// reliable clients.
#[allow(clippy::too_many_arguments)]
async fn compare(
    o: &Opts,
    scenario: &str,
    port: u16,
    body: &str,
    total: u64,
    posters: usize,
    rounds: usize,
    check: bool,
) -> Res<(Vec<Row>, u64)> {
    let mut rows = Vec::new();
    let (mut plain, mut reliable) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for kind in [Kind::Plain, Kind::Reliable] {
            let figures = load(port, kind, body, total, posters, o.duration).await?;
            let what = format!(
                "POST @connections, {body} B body, {posters} keep-alive HTTP client{s} → {CLIENTS} \
                 {} WebSockets",
                kind.name(),
                body = body.len(),
                s = if posters == 1 { "" } else { "s" }
            );
            let mut row = figures.row(scenario, &what);
            if !check {
                row.target = "— (reported)".into();
            }
            rows.push(row);
            match kind {
                Kind::Plain => plain.push(figures),
                Kind::Reliable => reliable.push(figures),
            }
        }
    }
    let mean = |f: &[Figures]| f.iter().map(Figures::rate).sum::<f64>() / f.len() as f64;
    let median_p50 = |f: &[Figures]| {
        let mut p: Vec<u64> = f.iter().map(|f| percentile(&f.lat, 0.5)).collect();
        p.sort_unstable();
        p[p.len() / 2]
    };
    let (p, r) = (mean(&plain), mean(&reliable));
    let ratio = r / p;
    let mut row = Row::new(scenario, "reliable ÷ plain, mean post rate of the rounds");
    row.count = format!("{rounds} round(s) each");
    row.rate = format!("{:.0} %", ratio * 100.0);
    // The extra time per post, from the rates (the host and the bench share the cores).
    row.p50 = format!(
        "{:+.1} µs/post, p50 {:+.0} µs",
        1e6 / r - 1e6 / p,
        median_p50(&reliable) as f64 - median_p50(&plain) as f64
    );
    let all_delivered = plain.iter().chain(&reliable).all(|f| f.ok());
    if check {
        row.target = format!("≥ {:.0} %", MIN_RATIO * 100.0);
        row.verdict = verdict(ratio >= MIN_RATIO && all_delivered);
    } else {
        row.target = "— (reported)".into();
    }
    rows.push(row);
    Ok((rows, reliable.iter().map(|f| f.sent).sum()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Reliable,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Reliable => "reliable",
        }
    }
}

/// One round's figures.
struct Figures {
    kind: Kind,
    sent: u64,
    errors: Vec<u16>,
    /// Latencies of the posts answered 200, µs, sorted.
    lat: Vec<u64>,
    post_time: Duration,
    got: u64,
    gaps: u64,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.post_time.as_secs_f64()
    }

    fn ok(&self) -> bool {
        self.errors.is_empty() && self.got == self.sent && self.gaps == 0
    }

    fn row(&self, scenario: &str, what: &str) -> Row {
        let mut row = Row::new(scenario, what);
        row.count = format!("{} posts to {} clients", self.sent, self.kind.name());
        row.rate = format!("{:.0} posts/s", self.rate());
        row.p50 = ms(percentile(&self.lat, 0.50));
        row.p99 = ms(percentile(&self.lat, 0.99));
        row.target = "all delivered, in order".into();
        let mut problems = Vec::new();
        if !self.errors.is_empty() {
            problems.push(format!("{} non-200", self.errors.len()));
        }
        if self.got != self.sent {
            problems.push(format!("{} of {} received", self.got, self.sent));
        }
        if self.gaps > 0 {
            problems.push(format!("{} gaps", self.gaps));
        }
        row.verdict = if problems.is_empty() {
            format!("{} delivered", self.got)
        } else {
            format!("MISMATCH: {}", problems.join(", "))
        };
        row
    }
}

/// Connects [`CLIENTS`] clients of `kind`, posts `body` to them round-robin (`total` posts or
/// `duration`, from `posters` HTTP clients), waits for the messages to arrive, and closes the
/// clients with a Close frame (ending their sessions).
async fn load(
    port: u16,
    kind: Kind,
    body: &str,
    total: u64,
    posters: usize,
    duration: Duration,
) -> Res<Figures> {
    let delivered = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let mut ids = Vec::with_capacity(CLIENTS);
    let mut readers = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (ws, id) = match kind {
            Kind::Plain => {
                let mut ws = ws_connect(port, "/dev").await?;
                ws.send(Message::text(r#"{"action":"whoami"}"#)).await?;
                let reply =
                    tokio::time::timeout(Duration::from_secs(5), next_text(&mut ws)).await??;
                let v: serde_json::Value = serde_json::from_str(&reply)?;
                let id = v["connectionId"]
                    .as_str()
                    .ok_or_else(|| format!("whoami answered {reply}"))?
                    .to_string();
                (ws, id)
            }
            Kind::Reliable => {
                let (ws, welcome) = reliable_connect(port, SUBPROTOCOL).await?;
                (ws, welcome.connection_id)
            }
        };
        ids.push(id);
        let (delivered, gaps, stopped) = (delivered.clone(), gaps.clone(), stopped.clone());
        readers.push(tokio::spawn(async move {
            match kind {
                Kind::Plain => plain_reader(ws, delivered, stopped).await,
                Kind::Reliable => reliable_reader(ws, delivered, gaps, stopped).await,
            }
        }));
    }
    let requests = Arc::new(
        ids.iter()
            .map(|id| post_request(port, id, body))
            .collect::<Vec<_>>(),
    );
    let (mut lat, errors, post_time) = post_load(port, requests, posters, total, duration).await?;
    let sent = lat.len() as u64;
    let wait_until = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < sent && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = delivered.load(Ordering::Relaxed);
    let _ = stop.send(true);
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
    if !errors.is_empty() {
        let mut by_status = std::collections::BTreeMap::new();
        for s in &errors {
            *by_status.entry(*s).or_insert(0) += 1;
        }
        eprintln!("  {} clients: non-200 answers: {by_status:?}", kind.name());
    }
    lat.sort_unstable();
    Ok(Figures {
        kind,
        sent,
        errors,
        lat,
        post_time,
        got,
        gaps: gaps.load(Ordering::Relaxed),
    })
}

/// A PostToConnection request for connection `id` carrying `body`.
fn post_request(port: u16, id: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /dev/@connections/{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        id.replace('=', "%3D"),
        body.len()
    )
    .into_bytes()
}

/// Counts a plain client's text messages until told to stop, then closes.
async fn plain_reader(mut ws: Ws, delivered: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(_))) => {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = stop.changed() => break,
        }
    }
    close(ws).await;
}

/// Closes with a Close frame (which ends a reliable session) and drains, bounded to 2 s.
async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A reliable client's side of the sequence: what it received and acknowledged.
#[derive(Default)]
struct Acks {
    last: u64,
    acked: u64,
    unacked_bytes: usize,
}

impl Acks {
    /// Takes a text frame; returns whether it was a new `msg` or `reply` (counted as delivered),
    /// and counts a gap when its sequence number skips one.
    fn take(&mut self, text: &str, gaps: &AtomicU64) -> bool {
        let Some(s) = seq_of(text) else {
            return false;
        };
        if s <= self.last {
            // A replay of a frame already delivered: acknowledged with the next ack, not delivered.
            return false;
        }
        if s != self.last + 1 {
            gaps.fetch_add(1, Ordering::Relaxed);
        }
        self.last = s;
        self.unacked_bytes += text.len();
        true
    }

    /// The ack to send now, if one is due (`idle`: no frame came for [`ACK_DELAY`]).
    fn due(&mut self, idle: bool) -> Option<String> {
        let pending = self.last - self.acked;
        if pending >= ACK_EVERY || self.unacked_bytes >= ACK_BYTES || (idle && pending > 0) {
            self.acked = self.last;
            self.unacked_bytes = 0;
            Some(format!(r#"{{"t":"ack","s":{}}}"#, self.last))
        } else {
            None
        }
    }
}

/// The sequence number of a `msg` or `reply` frame; `None` for the unsequenced ones (an `error`
/// is reported on stderr).
fn seq_of(text: &str) -> Option<u64> {
    if let Some(rest) = text.strip_prefix(r#"{"t":"msg","s":"#) {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(s) = rest[..digits].parse() {
            return Some(s);
        }
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    match v["t"].as_str() {
        Some("msg" | "reply") => v["s"].as_u64(),
        Some("error") => {
            eprintln!("  the host answered an error frame: {text}");
            None
        }
        _ => None,
    }
}

/// Counts a reliable client's new frames and acknowledges them as a client should, until told
/// to stop; then acknowledges the rest and closes.
async fn reliable_reader(
    mut ws: Ws,
    delivered: Arc<AtomicU64>,
    gaps: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut acks = Acks::default();
    loop {
        let next = tokio::select! {
            m = tokio::time::timeout(ACK_DELAY, ws.next()) => m,
            _ = stop.changed() => break,
        };
        let ack = match next {
            Err(_) => acks.due(true),
            Ok(Some(Ok(Message::Text(text)))) => {
                if acks.take(text.as_str(), &gaps) {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                acks.due(false)
            }
            Ok(Some(Ok(_))) => None,
            Ok(_) => return,
        };
        if let Some(ack) = ack
            && ws.send(Message::text(ack)).await.is_err()
        {
            return;
        }
    }
    if let Some(ack) = acks.due(true) {
        let _ = ws.send(Message::text(ack)).await;
    }
    close(ws).await;
}

/// What a `welcome` frame says.
struct Welcome {
    connection_id: String,
    token: String,
    recovered: bool,
    seq: u64,
}

/// Opens a WebSocket offering `offer` in `Sec-WebSocket-Protocol`, checks that the host selected
/// `ch-reliable.v1`, and reads the welcome.
async fn reliable_connect(port: u16, offer: &str) -> Res<(Ws, Welcome)> {
    let stream = client_tcp(port).await?;
    let mut request = format!("ws://127.0.0.1:{port}/dev").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(offer)?);
    let (mut ws, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(client_ws_config()))
            .await?;
    let selected = response.headers().get("sec-websocket-protocol");
    if selected.and_then(|v| v.to_str().ok()) != Some(SUBPROTOCOL) {
        return Err(format!("the 101 selected {selected:?}, not {SUBPROTOCOL}").into());
    }
    let text = tokio::time::timeout(Duration::from_secs(5), next_text(&mut ws)).await??;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    if v["t"] != "welcome" {
        return Err(format!("first frame is not a welcome: {text}").into());
    }
    let field = |name: &str| {
        v[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("welcome without {name}: {text}"))
    };
    let welcome = Welcome {
        connection_id: field("connectionId")?,
        token: field("resumeToken")?,
        recovered: v["recovered"].as_bool().unwrap_or(false),
        seq: v["seq"].as_u64().unwrap_or(0),
    };
    Ok((ws, welcome))
}

/// Times resumes of a session holding [`BUFFERED`] messages: connect, drop the TCP connection
/// without a Close frame, post the messages (each answered 200), then reconnect with the resume
/// offer, from the start of the reconnect to the last replayed frame.
async fn resume(port: u16) -> Res<Row> {
    let mut total = Vec::with_capacity(RESUMES);
    let mut to_welcome = Vec::with_capacity(RESUMES);
    for _ in 0..RESUMES {
        let (ws, welcome) = reliable_connect(port, SUBPROTOCOL).await?;
        // Dropped: the socket closes (FIN) with no Close frame, as on a network drop, and the
        // host keeps the session for the resume window.
        drop(ws);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let request = post_request(port, &welcome.connection_id, POST_BODY);
        let mut c = RawHttp::connect(port).await?;
        for _ in 0..BUFFERED {
            let (status, body) = c.request(&request).await?;
            if status != 200 {
                return Err(format!(
                    "post to a detached session answered {status}: {}",
                    String::from_utf8_lossy(&body)
                )
                .into());
            }
        }
        let offer = format!("{SUBPROTOCOL}, ch-resume.{}.{}", welcome.seq, welcome.token);
        let t = Instant::now();
        let (mut ws, resumed) = reliable_connect(port, &offer).await?;
        let welcomed = t.elapsed();
        if !resumed.recovered || resumed.connection_id != welcome.connection_id {
            return Err(format!(
                "resume not recovered (recovered {}, {} → {})",
                resumed.recovered, welcome.connection_id, resumed.connection_id
            )
            .into());
        }
        let gaps = AtomicU64::new(0);
        let mut acks = Acks {
            last: resumed.seq,
            acked: resumed.seq,
            unacked_bytes: 0,
        };
        let mut replayed = 0u64;
        while acks.last < BUFFERED {
            let text = tokio::time::timeout(Duration::from_secs(10), next_text(&mut ws)).await??;
            if acks.take(&text, &gaps) {
                replayed += 1;
            }
            if let Some(ack) = acks.due(false) {
                ws.send(Message::text(ack)).await?;
            }
        }
        let elapsed = t.elapsed();
        if replayed != BUFFERED || gaps.load(Ordering::Relaxed) > 0 {
            return Err(format!("replayed {replayed} of {BUFFERED} frames, with gaps").into());
        }
        if let Some(ack) = acks.due(true) {
            ws.send(Message::text(ack)).await?;
        }
        close(ws).await;
        total.push(elapsed.as_micros() as u64);
        to_welcome.push(welcomed.as_micros() as u64);
    }
    total.sort_unstable();
    to_welcome.sort_unstable();
    let median = |v: &[u64]| v[v.len() / 2];
    let mut row = Row::new(
        "reliable",
        &format!(
            "resume of a session with {BUFFERED} buffered messages ({} B bodies): reconnect start \
             → last replayed frame (welcome after {})",
            POST_BODY.len(),
            ms(median(&to_welcome))
        ),
    );
    row.count = format!("{RESUMES} resumes, all recovered");
    row.rate = format!(
        "median {} (min {}, max {})",
        ms(median(&total)),
        ms(total[0]),
        ms(total[total.len() - 1])
    );
    row.target = "— (reported)".into();
    Ok(row)
}

/// A JSON text of exactly `size` bytes, the kind of payload APIs post (quotes to escape in the
/// envelope).
fn json_payload(size: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < size {
        let _ = write!(s, r#"{{"user":"u{i:05}","text":"hello world","n":{i}}},"#);
        i += 1;
    }
    s.truncate(size.saturating_sub(1));
    // Cut anywhere (the host does not parse the body); ends as an array would.
    s.push(']');
    s
}

/// The envelope's two steps for one post, timed in this process: the payload escaped as a JSON
/// string (`serde_json::to_string`, as connection-host's `sessions::envelope::payload_member`
/// does) and the frame concatenated around it (as its `msg` does). That module is crate-private,
/// so these are the same library calls on the same kind of data, not the host's own code.
fn envelope_micro() -> Vec<Row> {
    let mut rows = Vec::new();
    for &size in SIZES {
        for (what, payload) in [
            ("JSON text (quotes escaped)", json_payload(size)),
            ("text without characters to escape", "a".repeat(size)),
        ] {
            let iterations = (64 * 1024 * 1024 / size).clamp(1_000, 200_000);
            let mut bytes = 0usize;
            // The fastest of three passes: other processes share the cores.
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let start = Instant::now();
                bytes = 0;
                for seq in 0..iterations as u64 {
                    bytes += std::hint::black_box(msg_frame(seq, &payload)).len();
                }
                best = best.min(start.elapsed());
            }
            let per = best.as_nanos() as f64 / iterations as f64;
            let mut row = Row::new(
                "reliable envelope",
                &format!(
                    "building a msg frame in the bench process (serde_json escape + concatenation), \
                     {size} B {what}, fastest of 3 passes"
                ),
            );
            row.count = format!("{iterations} frames, {} B each", bytes / iterations);
            row.rate = format!("{:.2} µs/frame", per / 1000.0);
            row.p50 = format!("{:.0} MB/s", size as f64 / per * 1000.0);
            row.p99 = "—".into();
            row.target = "— (reported)".into();
            rows.push(row);
        }
    }
    rows
}

/// A `msg` frame around `payload`, built as the host builds it (see [`envelope_micro`]).
fn msg_frame(seq: u64, payload: &str) -> String {
    let mut member = String::with_capacity(payload.len() + 8);
    member.push_str("\"d\":");
    member.push_str(&serde_json::to_string(payload).expect("strings serialize"));
    let mut frame = String::with_capacity(member.len() + 32);
    frame.push_str("{\"t\":\"msg\",\"s\":");
    frame.push_str(&seq.to_string());
    frame.push(',');
    frame.push_str(&member);
    frame.push('}');
    frame
}

impl Tables {
    /// The number of frame items (`item` starting `m#`) in the sessions table: a Scan with
    /// `Select: COUNT`, unsigned like [`Tables::delete`] (enough for moto and other local
    /// endpoints). The table also holds each ended session's `ended` item and key claims, which
    /// are not frames.
    async fn count_frames(&self) -> Res<u64> {
        let table = &self.sessions;
        let addr = self
            .endpoint
            .strip_prefix("http://")
            .ok_or("the item count needs an http:// endpoint")?
            .trim_end_matches('/')
            .to_string();
        let mut c = RawHttp::connect_addr(&addr).await?;
        let mut count = 0;
        let mut start: Option<serde_json::Value> = None;
        loop {
            let mut body = serde_json::json!({
                "TableName": table,
                "Select": "COUNT",
                "FilterExpression": "begins_with(#item, :frame)",
                "ExpressionAttributeNames": {"#item": "item"},
                "ExpressionAttributeValues": {":frame": {"S": "m#"}},
            });
            if let Some(key) = start.take() {
                body["ExclusiveStartKey"] = key;
            }
            let body = body.to_string();
            let request = format!(
                "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.0\r\n\
                 X-Amz-Target: DynamoDB_20120810.Scan\r\n\
                 Authorization: AWS4-HMAC-SHA256 Credential=bench/20200101/us-east-1/dynamodb/aws4_request, \
                 SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let (status, answer) =
                tokio::time::timeout(Duration::from_secs(30), c.request(request.as_bytes()))
                    .await??;
            let v: serde_json::Value = serde_json::from_slice(&answer)?;
            if status != 200 {
                return Err(format!("Scan answered {status}: {v}").into());
            }
            count += v["Count"].as_u64().unwrap_or(0);
            match v.get("LastEvaluatedKey") {
                Some(key) if !key.is_null() => start = Some(key.clone()),
                _ => return Ok(count),
            }
        }
    }
}
