//! `broadcast`: the fan-out of `POST /{stage}/@groups/{group}` to a group of `--members`
//! WebSockets (10,000 by default), on one host started here or on running hosts (`--targets`).
//!
//! Each broadcast's body carries its number and the epoch microseconds of its call, so every
//! member's reader measures its own delivery latency from the same clock as the caller (also
//! across processes on one machine). First one broadcast at a time, waiting for its last delivery
//! (call to last delivery, per-delivery latency); then broadcasts back to back with a few in
//! flight for `--duration` (deliveries per second sustained).

use super::post::WHOAMI_CONFIG;
use crate::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A host the members connect to: its public listener (WebSockets) and the listener serving its
/// management API (the same one unless it has `management_listen`).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Where the WebSockets connect (`ws://{ws}/dev`).
    pub(crate) ws: SocketAddr,
    /// Where `@connections` and `@groups` calls go.
    pub(crate) mgmt: SocketAddr,
}

impl Target {
    /// `http://IP:PORT` (one listener) or `http://IP:PORT=http://IP:MGMT_PORT`.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let addr = |u: &str| -> Result<SocketAddr, String> {
            let a = u
                .trim()
                .trim_start_matches("http://")
                .trim_start_matches("ws://")
                .trim_end_matches('/');
            a.parse()
                .map_err(|e| format!("{u}: {e} (expected http://IP:PORT)"))
        };
        let (ws, mgmt) = s.split_once('=').unwrap_or((s, s));
        Ok(Target {
            ws: addr(ws)?,
            mgmt: addr(mgmt)?,
        })
    }
}

/// The group every member joins.
const GROUP: &str = "bench";
/// Broadcasts timed one at a time.
const ROUNDS: usize = 30;
/// Broadcasts in flight (called, not yet delivered to every member) in the sustained phase.
const WINDOW: usize = 4;
/// Bytes of every broadcast's body.
const BODY_BYTES: usize = 64;
/// Most broadcasts one run makes.
const MAX_SEQ: usize = 1 << 15;
/// Latency histogram resolution and range.
const BUCKET_US: u64 = 50;
const BUCKETS: usize = 200_000;
/// How long one broadcast may take to reach every member before it counts as incomplete.
const COMPLETE_WITHIN: Duration = Duration::from_secs(10);

/// What the members' readers record.
struct Stats {
    /// Deliveries per broadcast number.
    count: Vec<AtomicU32>,
    /// Epoch µs of each broadcast's last delivery.
    last: Vec<AtomicU64>,
    /// Per-delivery latency histograms: one at a time, then sustained.
    hist: [Vec<AtomicU64>; 2],
    /// The broadcast numbers below this are the one-at-a-time phase.
    sustained_from: AtomicU64,
}

impl Stats {
    fn new() -> Self {
        let zeros = |n| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Stats {
            count: (0..MAX_SEQ).map(|_| AtomicU32::new(0)).collect(),
            last: zeros(MAX_SEQ),
            hist: [zeros(BUCKETS), zeros(BUCKETS)],
            sustained_from: AtomicU64::new(u64::MAX),
        }
    }

    /// One member got the text `text` at epoch µs `now`.
    fn record(&self, text: &str, now: u64) {
        let mut words = text.split(' ');
        let seq = words.next().and_then(|w| w.parse::<usize>().ok());
        let sent = words.next().and_then(|w| w.parse::<u64>().ok());
        let (Some(seq), Some(sent)) = (seq, sent) else {
            return;
        };
        if seq >= MAX_SEQ {
            return;
        }
        self.count[seq].fetch_add(1, Ordering::Relaxed);
        self.last[seq].fetch_max(now, Ordering::Relaxed);
        let phase = usize::from(seq as u64 >= self.sustained_from.load(Ordering::Relaxed));
        let bucket = (now.saturating_sub(sent) / BUCKET_US).min(BUCKETS as u64 - 1);
        self.hist[phase][bucket as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until broadcast `seq` reached `n` members (or [`COMPLETE_WITHIN`] passed); returns
    /// how many it reached.
    async fn complete(&self, seq: usize, n: usize) -> usize {
        let until = Instant::now() + COMPLETE_WITHIN;
        loop {
            let got = self.count[seq].load(Ordering::Relaxed) as usize;
            if got >= n || Instant::now() > until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The p-th percentile (µs, bucket resolution) of a phase's latencies.
    fn percentile(&self, phase: usize, p: f64) -> u64 {
        let h: Vec<u64> = self.hist[phase]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = h.iter().sum();
        let want = ((total as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in h.iter().enumerate() {
            seen += n;
            if seen >= want {
                return (i as u64 + 1) * BUCKET_US;
            }
        }
        0
    }
}

/// Bytes a member's reader holds: many 64-byte frames; a frame that does not fit ends the reader
/// (its deliveries then count as missing).
const READ_BUFFER: usize = 4096;

/// A member's reader: reads its socket's bytes and parses every WebSocket frame in them, recording
/// each text frame with the time its read returned. Straight on the socket rather than through
/// tungstenite, whose reader zeroes its 4 KiB buffer before every read and wakes the task through
/// its own wakers: on two cores shared with the host, that cost came out of the host's share.
/// A Ping is answered with its Pong; a Close or anything unexpected ends the reader.
async fn read_frames(mut tcp: TcpStream, stats: Arc<Stats>) {
    let mut buf = vec![0u8; READ_BUFFER].into_boxed_slice();
    let (mut start, mut end) = (0, 0);
    loop {
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = match tcp.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        end += n;
        let now = epoch_us();
        // Every complete frame in the buffer (a server's frames are not masked).
        while let Some((first, payload)) = frame_at(&buf[start..end]) {
            let len = payload.end;
            // Whole frames only (FIN set): the host sends 64-byte messages unfragmented.
            match first {
                0x81 => match std::str::from_utf8(&buf[start + payload.start..start + len]) {
                    Ok(text) => stats.record(text, now),
                    Err(_) => return,
                },
                0x89 => {
                    let ping = &buf[start + payload.start..start + len];
                    // FIN + Pong, masked (client to server) with a zero key.
                    let mut pong = vec![0x8a, 0x80 | ping.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(ping);
                    if tcp.write_all(&pong).await.is_err() {
                        return;
                    }
                }
                0x8a => {}
                _ => return,
            }
            start += len;
        }
        if start == 0 && end == buf.len() {
            return;
        }
    }
}

/// The first byte (FIN and opcode) and payload range (whose end is the frame's end) of the
/// unmasked frame at the start of `b`, once all of it is there.
fn frame_at(b: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let (header, len) = match b1 & 0x7f {
        126 => (
            4usize,
            usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])),
        ),
        127 => (10, usize::MAX),
        n => (2, usize::from(n)),
    };
    let end = header.checked_add(len)?;
    (b.len() >= end).then_some((b0, header..end))
}

/// CPU seconds (user + system) the host `pid` and this process have used so far, from
/// `/proc/{pid}/stat` (Linux; `None` elsewhere or without a pid).
fn cpu_times(pid: Option<u32>) -> Option<(f64, f64)> {
    let seconds = |path: String| -> Option<f64> {
        let stat = std::fs::read_to_string(path).ok()?;
        // The fields after the command name, which ends with the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // USER_HZ: 100 on Linux's architectures.
        Some(ticks / 100.0)
    };
    Some((
        seconds(format!("/proc/{}/stat", pid?))?,
        seconds("/proc/self/stat".into())?,
    ))
}

fn epoch_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) async fn broadcast(o: &Opts) -> Res<Vec<Row>> {
    if !o.hosts.is_empty() {
        let what = format!("{} running host(s)", o.hosts.len());
        return broadcast_run(o, &o.hosts, &what, None).await;
    }
    // The group's fan-out limit off, like every other rate limit in the bench.
    let config = format!("{WHOAMI_CONFIG}\n[extensions.groups]\nenabled = true\nfanout_rate = 0\n");
    let host = match HostProc::start(&o.host_bin, "broadcast", &config).await {
        Ok(host) => host,
        // A host binary from before `[extensions.groups]` became a table, for a before/after
        // comparison: it has no fan-out limit.
        Err(_) => {
            let config = format!("{WHOAMI_CONFIG}\n[extensions]\ngroups = true\n");
            HostProc::start(&o.host_bin, "broadcast-switch", &config).await?
        }
    };
    let at = SocketAddr::from(([127, 0, 0, 1], host.port));
    let targets = [Target { ws: at, mgmt: at }];
    let rows = broadcast_run(o, &targets, "one host", Some(host.pid())).await;
    host.report_log();
    rows
}

/// Connects `o.members` WebSockets spread over `targets` (round-robin), joins them to the group
/// through their own host, then broadcasts through the first target. The hosts need the groups
/// extension with `fanout_rate = 0`, the `whoami` route of [`WHOAMI_CONFIG`] and their rate
/// limits off (the `UNLIMITED` variables). With `host_pid` (a host started here), the CPU time the
/// host and this process spend per delivery in each phase is printed too.
pub(crate) async fn broadcast_run(
    o: &Opts,
    targets: &[Target],
    where_: &str,
    host_pid: Option<u32>,
) -> Res<Vec<Row>> {
    let n = o.members;
    let t = Instant::now();
    let opened: Vec<Res<(Ws, String, usize)>> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let target = &targets[i % targets.len()];
            let mut ws = ws_connect_to(target.ws, "/dev").await?;
            ws.send(Message::text(r#"{"action":"whoami"}"#)).await?;
            let reply = tokio::time::timeout(Duration::from_secs(10), next_text(&mut ws)).await??;
            let v: serde_json::Value = serde_json::from_str(&reply)?;
            let id = v["connectionId"]
                .as_str()
                .ok_or_else(|| format!("whoami answered {reply}"))?
                .replace('=', "%3D");
            Ok((ws, id, i % targets.len()))
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let mut members = Vec::with_capacity(n);
    for r in opened {
        members.push(r.map_err(|e| format!("a member failed to connect: {e}"))?);
    }
    eprintln!("  broadcast: {n} members connected in {:?}", t.elapsed());
    let t = Instant::now();
    let joins: Vec<(SocketAddr, Vec<u8>)> = members
        .iter()
        .map(|(_, id, target)| {
            let mgmt = targets[*target].mgmt;
            let request = format!(
                "PUT /dev/@connections/{id}/groups/{GROUP} HTTP/1.1\r\nHost: {mgmt}\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            (mgmt, request.into_bytes())
        })
        .collect();
    let joins = Arc::new(joins);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (joins, next) = (joins.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut clients: Vec<(SocketAddr, RawHttp)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((mgmt, request)) = joins.get(i) else {
                    return Ok::<_, AnyError>(());
                };
                let c = match clients.iter_mut().position(|(a, _)| a == mgmt) {
                    Some(k) => &mut clients[k].1,
                    None => {
                        clients.push((*mgmt, RawHttp::connect_addr(&mgmt.to_string()).await?));
                        &mut clients.last_mut().expect("just pushed").1
                    }
                };
                let (status, body) = c.request(request).await?;
                if status != 204 {
                    let body = String::from_utf8_lossy(&body);
                    return Err(format!("join answered {status}: {body}").into());
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    eprintln!("  broadcast: {n} joins in {:?}", t.elapsed());

    let stats = Arc::new(Stats::new());
    let readers: Vec<_> = members
        .into_iter()
        .map(|(ws, _, _)| tokio::spawn(read_frames(ws.into_inner(), stats.clone())))
        .collect();

    let mgmt = targets[0].mgmt;
    let mut caller = RawHttp::connect_addr(&mgmt.to_string()).await?;
    let mut seq = 0usize;
    let mut call = async |seq: usize| -> Res<(u64, u64)> {
        let t0 = epoch_us();
        let head = format!("{seq} {t0} ");
        let body = format!(
            "{head}{}",
            ".".repeat(BODY_BYTES.saturating_sub(head.len()))
        );
        let request = format!(
            "POST /dev/@groups/{GROUP} HTTP/1.1\r\nHost: {mgmt}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = caller.request(request.as_bytes()).await?;
        let answered = epoch_us() - t0;
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        if status != 200 || v["delivered"].as_u64() != Some(n as u64) {
            let answer = String::from_utf8_lossy(&answer);
            return Err(format!("broadcast answered {status}: {answer}").into());
        }
        Ok((t0, answered))
    };

    // Warm-up: one untimed broadcast.
    call(seq).await?;
    stats.complete(seq, n).await;
    seq += 1;

    // One at a time.
    let cpu_start = cpu_times(host_pid);
    let (mut to_last, mut answers, mut missing) = (Vec::new(), Vec::new(), 0);
    for _ in 0..ROUNDS {
        let (t0, answered) = call(seq).await?;
        let got = stats.complete(seq, n).await;
        missing += n - got.min(n);
        to_last.push(stats.last[seq].load(Ordering::Relaxed).saturating_sub(t0));
        answers.push(answered);
        seq += 1;
    }
    to_last.sort_unstable();
    answers.sort_unstable();

    // Sustained: WINDOW broadcasts in flight for the run's duration.
    stats.sustained_from.store(seq as u64, Ordering::Relaxed);
    let cpu_sustained = cpu_times(host_pid);
    eprintln!(
        "  broadcast: one at a time done; sustained for {:?}",
        o.duration
    );
    let first = seq;
    let mut pending = std::collections::VecDeque::new();
    let (start, deadline) = (epoch_us(), Instant::now() + o.duration);
    while Instant::now() < deadline && seq < MAX_SEQ {
        if pending.len() >= WINDOW {
            let oldest = pending.pop_front().expect("window is full");
            let got = stats.complete(oldest, n).await;
            missing += n - got.min(n);
        }
        call(seq).await?;
        pending.push_back(seq);
        seq += 1;
    }
    for oldest in pending {
        let got = stats.complete(oldest, n).await;
        missing += n - got.min(n);
    }
    let end = (first..seq)
        .map(|s| stats.last[s].load(Ordering::Relaxed))
        .max()
        .unwrap_or(start);
    let delivered: u64 = (first..seq)
        .map(|s| u64::from(stats.count[s].load(Ordering::Relaxed)))
        .sum();
    let rate = delivered as f64 / ((end - start) as f64 / 1e6);
    let cpu_end = cpu_times(host_pid);
    for r in readers {
        r.abort();
    }
    eprintln!(
        "  broadcast: calls answered p50 {} p99 {} (one at a time); {} sustained broadcasts",
        ms(percentile(&answers, 0.5)),
        ms(percentile(&answers, 0.99)),
        seq - first
    );
    if let (Some(a), Some(b), Some(c)) = (cpu_start, cpu_sustained, cpu_end) {
        let per = |from: (f64, f64), to: (f64, f64), n: f64| {
            format!(
                "host {:.1} µs, bench {:.1} µs",
                (to.0 - from.0) / n * 1e6,
                (to.1 - from.1) / n * 1e6
            )
        };
        eprintln!(
            "  broadcast: CPU per delivery (user + system): one at a time {}; sustained {}",
            per(a, b, (ROUNDS * n) as f64),
            per(b, c, delivered as f64)
        );
    }

    let complete = if missing == 0 {
        String::new()
    } else {
        format!(", {missing} deliveries MISSING")
    };
    let mut rows = Vec::new();
    let mut row = Row::new(
        "broadcast",
        &format!("call → last delivery, one broadcast at a time, {n} members, {where_}"),
    );
    let (p50, p99) = (percentile(&to_last, 0.5), percentile(&to_last, 0.99));
    row.count = format!("{ROUNDS} broadcasts{complete}");
    row.rate = format!("{} deliveries/s", thousands(n as f64 / (p50 as f64 / 1e6)));
    row.p50 = ms(p50);
    row.p99 = ms(p99);
    row.target = "p50 ≤ 50 ms".into();
    row.verdict = verdict(p50 <= 50_000 && missing == 0);
    rows.push(row);
    let mut row = Row::new("broadcast", "per-delivery latency, one at a time");
    row.count = format!("{} deliveries", ROUNDS * n);
    row.p50 = ms(stats.percentile(0, 0.5));
    row.p99 = ms(stats.percentile(0, 0.99));
    rows.push(row);
    let mut row = Row::new(
        "broadcast",
        &format!("sustained, {WINDOW} broadcasts in flight; per-delivery latency"),
    );
    row.count = format!(
        "{delivered} deliveries ({} broadcasts){complete}",
        seq - first
    );
    row.rate = format!("{} deliveries/s", thousands(rate));
    row.p50 = ms(stats.percentile(1, 0.5));
    row.p99 = ms(stats.percentile(1, 0.99));
    row.target = "≥ 600,000/s".into();
    row.verdict = verdict(rate >= 600_000.0 && missing == 0);
    rows.push(row);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::frame_at;

    #[test]
    fn a_frame_is_found_only_once_all_of_it_is_there() {
        let mut text = vec![0x81, 3];
        text.extend_from_slice(b"1 2");
        assert_eq!(frame_at(&text), Some((0x81, 2..5)));
        assert_eq!(frame_at(&text[..4]), None);
        assert_eq!(frame_at(&text[..1]), None);
        // A 16-bit length, and a second frame behind the first.
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'.', 256));
        long.extend_from_slice(&[0x89, 0]);
        assert_eq!(frame_at(&long), Some((0x81, 4..260)));
        assert_eq!(frame_at(&long[260..]), Some((0x89, 2..2)));
        assert_eq!(frame_at(&long[..259]), None);
        // A 64-bit length never fits the reader's buffer.
        assert_eq!(frame_at(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 1, 0]), None);
    }
}
