//! `scale` and `scale-broadcast`: a local cluster of release hosts on one DynamoDB store, with
//! `--connections` (100,000 by default) WebSockets held by loader processes.
//!
//! One process holds at most as many sockets as its open-file limit allows (20,000 here), so the
//! connections are spread over `--hosts` host processes and `--loaders` loader processes (this
//! binary again, run as `bench --loader …`), each loader on source addresses of its own
//! `127.N.0.0/16`. A loader opens its share round-robin over the hosts, learns each connection's
//! ID (the `whoami` route), prints the IDs, then counts what every connection receives and answers
//! `reset` and `report` on its stdin; it exits when its stdin closes, so a loader never outlives
//! the bench.
//!
//! - `scale`: time to connect them all, VmRSS per connection on every host, then one
//!   PostToConnection to each connection (every third one through a host that does not own it,
//!   which forwards it), and every one counted at the client.
//! - `scale-broadcast`: as `scale`, then every connection joins one group (`extensions.groups`), then
//!   `POST /{stage}/@groups/{group}` through one host, several times: the call's time, the time from
//!   the call to the last delivery, and whether every member got it.
//!
//! The store is dynalite (`--dynalite PATH`, else `$DYNALITE`, else `bench/node_modules/.bin/dynalite`,
//! installed by `npm install --no-save dynalite` in `connection-host/bench`), started on a free
//! loopback port and stopped at the end, unless `--dynamodb-endpoint` names one.

use super::post::{self, post_load};
use crate::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};

/// The shape of a scale run (`--connections`, `--hosts`, `--loaders`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub connections: usize,
    pub hosts: usize,
    pub loaders: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            connections: 100_000,
            hosts: 6,
            loaders: 8,
        }
    }
}

/// Sockets one process may hold here: the open-file limit (20,000) less a margin for the
/// listeners, the store's and the peers' connections, and the process's own files.
const PER_PROCESS: usize = 19_500;
/// Handshakes each loader keeps in flight: 64 in all with 8 loaders. Each handshake waits for a
/// `PutItem`; many more in flight only queue at the store until its 2 s attempt timeout fails
/// them, and the refused connections' deletes add to the queue (seen at 512 in flight on dynalite).
const LOADER_IN_FLIGHT: usize = 8;
/// The whole run's bound; past it the scenario fails and everything it started is stopped.
const RUN_BOUND: Duration = Duration::from_secs(20 * 60);
/// The group every connection joins in `scale-broadcast`.
const GROUP: &str = "everyone";
/// Broadcasts made in `scale-broadcast`, one after the other.
const BROADCASTS: usize = 3;
/// Keep-alive HTTP clients per host for the posts and the joins.
const POSTERS_PER_HOST: usize = 8;

/// A host's configuration: the `whoami` route, a management listener, the cluster on the shared
/// tables. The host timeout is long because the machine is saturated while the connections are
/// opened, and a late heartbeat must not get a host reaped; the idle timeout is longer than the
/// run. No pings (API Gateway's behaviour): a loader reads nothing until all its connections are
/// open, so it would not answer them in time.
fn host_config(tables: &Tables, id: &str, groups: bool) -> String {
    let server = post::WHOAMI_CONFIG.replacen(
        "listen = \"127.0.0.1:{PORT}\"\n",
        "listen = \"127.0.0.1:{PORT}\"\nmanagement_listen = \"127.0.0.1:{MPORT}\"\n",
        1,
    );
    format!(
        "{server}\n[limits]\nidle_timeout = \"1h\"\nping_interval = \"0s\"\n\n[extensions]\ngroups = {groups}\n\n{}\n\
         [cluster]\nhost_id = \"{id}\"\nadvertise_url = \"http://127.0.0.1:{{MPORT}}\"\n\
         host_timeout = \"120s\"\n",
        tables.store_section()
    )
}

pub(crate) async fn scale(o: &Opts, shape: Shape) -> Res<Vec<Row>> {
    bounded(run(o, shape, false)).await
}

pub(crate) async fn scale_broadcast(o: &Opts, shape: Shape) -> Res<Vec<Row>> {
    bounded(run(o, shape, true)).await
}

async fn bounded(run: impl Future<Output = Res<Vec<Row>>>) -> Res<Vec<Row>> {
    tokio::time::timeout(RUN_BOUND, run)
        .await
        .map_err(|_| format!("not finished within {RUN_BOUND:?}; stopped"))?
}

async fn run(o: &Opts, shape: Shape, broadcast: bool) -> Res<Vec<Row>> {
    let scenario = if broadcast {
        "scale-broadcast"
    } else {
        "scale"
    };
    if shape.connections.div_ceil(shape.hosts) > PER_PROCESS
        || shape.connections.div_ceil(shape.loaders) > PER_PROCESS
    {
        return Err(format!(
            "{} connections need more processes: at most {PER_PROCESS} sockets per process here",
            shape.connections
        )
        .into());
    }
    let (_dynalite, endpoint) = match &o.scale_endpoint {
        Some(url) => (None, url.clone()),
        None => {
            let d = Dynalite::start(&o.dynalite).await?;
            let endpoint = d.endpoint.clone();
            (Some(d), endpoint)
        }
    };
    eprintln!("  {scenario}: store {endpoint}");
    let tables = Tables::create(o, &endpoint, scenario).await?;
    let mut env = aws_env(&endpoint);
    env.push((
        "CONNECTION_HOST_CLUSTER__SECRET",
        "bench-scale-secret-0123456789".into(),
    ));
    let mut hosts = Vec::with_capacity(shape.hosts);
    for h in 0..shape.hosts {
        let id = format!("scale-{h}");
        let config = host_config(&tables, &id, broadcast);
        hosts.push(HostProc::start_with_env(&o.host_bin, &id, &config, &env).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before: Vec<u64> = hosts.iter().map(|h| rss_kib(h.pid())).collect::<Res<_>>()?;
    let ports: Vec<u16> = hosts.iter().map(|h| h.port).collect();

    let opened = open_all(shape, &ports).await?;
    let mut rows = opened.rows(scenario, shape);
    tokio::time::sleep(Duration::from_secs(3)).await;
    rows.push(memory_row(scenario, &hosts, &rss_before).await?);
    let mut loaders = opened.loaders;
    let members = opened.ids;
    let mports: Vec<u16> = hosts.iter().map(|h| h.mport).collect();

    rows.extend(post_each(scenario, &mut loaders, &members, &mports).await?);
    if broadcast {
        rows.extend(join_and_broadcast(&mut loaders, &members, &mports).await?);
    }
    for h in &hosts {
        h.report_log();
    }
    drop(loaders);
    drop(hosts);
    tables.delete().await;
    Ok(rows)
}

/// What [`open_all`] leaves: the loaders, and every connection as (owner host index, ID).
struct Opened {
    loaders: Vec<Loader>,
    ids: Vec<(usize, String)>,
    failed: usize,
    retried: usize,
    connect_time: Duration,
    whoami_time: Duration,
}

impl Opened {
    fn rows(&self, scenario: &str, shape: Shape) -> Vec<Row> {
        let opened = self.ids.len();
        let mut row = Row::new(
            scenario,
            &format!(
                "open the connections: {} hosts, {} loader processes, {LOADER_IN_FLIGHT} handshakes in flight each",
                shape.hosts, shape.loaders
            ),
        );
        row.count = format!(
            "{opened} of {} open ({} failed, {} retried) in {:.1} s",
            shape.connections,
            self.failed,
            self.retried,
            self.connect_time.as_secs_f64()
        );
        row.rate = format!(
            "{:.0} handshakes/s",
            opened as f64 / self.connect_time.as_secs_f64()
        );
        row.target = "all open".into();
        row.verdict = verdict(opened == shape.connections);
        let mut ids = Row::new(
            scenario,
            "learn every connection's ID (one `whoami` message each)",
        );
        ids.count = format!("{opened} in {:.1} s", self.whoami_time.as_secs_f64());
        vec![row, ids]
    }
}

/// Starts the loaders, each with its share, and waits until every connection is open and named.
async fn open_all(shape: Shape, ports: &[u16]) -> Res<Opened> {
    let exe = std::env::current_exe()?;
    let ports_arg = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut loaders = Vec::with_capacity(shape.loaders);
    let mut first = 0;
    for l in 0..shape.loaders {
        let count =
            shape.connections / shape.loaders + usize::from(l < shape.connections % shape.loaders);
        // 127.10.0.0/16, 127.11.0.0/16, ...: no two loaders share a source address.
        let net = 10 + l;
        loaders.push(Loader::start(&exe, &ports_arg, count, first, net)?);
        first += count;
    }
    let results =
        futures_util::future::join_all(loaders.iter_mut().map(Loader::read_connections)).await;
    let (mut ids, mut failed, mut retried) = (Vec::new(), 0, 0);
    let (mut start, mut connected, mut named) = (u64::MAX, 0, 0);
    for r in results {
        let r = r?;
        ids.extend(r.ids);
        failed += r.failed;
        retried += r.retried;
        start = start.min(r.start_ms);
        connected = connected.max(r.connected_ms);
        named = named.max(r.named_ms);
    }
    Ok(Opened {
        loaders,
        ids,
        failed,
        retried,
        connect_time: Duration::from_millis(connected.saturating_sub(start)),
        whoami_time: Duration::from_millis(named.saturating_sub(connected)),
    })
}

/// VmRSS growth per connection on every host, from before the loaders to now.
async fn memory_row(scenario: &str, hosts: &[HostProc], before: &[u64]) -> Res<Row> {
    let mut per_host = Vec::with_capacity(hosts.len());
    let (mut grown, mut held_total) = (0u64, 0u64);
    for (h, before) in hosts.iter().zip(before) {
        let after = rss_kib(h.pid())?;
        let held = health_connections(h.mport).await?;
        let growth = after.saturating_sub(*before);
        grown += growth;
        held_total += held;
        per_host.push(growth as f64 * 1.024 / held.max(1) as f64);
        eprintln!(
            "  {scenario}: host {}: {held} connections, VmRSS {before} → {after} KiB",
            h.pid()
        );
    }
    let min = per_host.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per_host.iter().copied().fold(0.0, f64::max);
    let mut row = Row::new(
        scenario,
        "host VmRSS growth per connection (before the loaders → all open and named)",
    );
    row.count = format!(
        "{held_total} held by {} hosts, {:.0} MB grown in all",
        hosts.len(),
        grown as f64 * 1.024 / 1000.0
    );
    row.rate = format!(
        "{:.1} KB/conn (hosts {min:.1}–{max:.1})",
        grown as f64 * 1.024 / held_total.max(1) as f64
    );
    Ok(row)
}

/// One PostToConnection to each connection; every third through the next host, which forwards it
/// to the owner.
async fn post_each(
    scenario: &str,
    loaders: &mut [Loader],
    members: &[(usize, String)],
    mports: &[u16],
) -> Res<Vec<Row>> {
    let mut by_port: Vec<Vec<Vec<u8>>> = vec![Vec::new(); mports.len()];
    let mut forwarded = 0;
    for (i, (owner, id)) in members.iter().enumerate() {
        let via = if i % 3 == 0 {
            forwarded += 1;
            (owner + 1) % mports.len()
        } else {
            *owner
        };
        let body = format!("post {i}");
        by_port[via].push(
            format!(
                "POST /dev/@connections/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                id.replace('=', "%3D"),
                body.len()
            )
            .into_bytes(),
        );
    }
    reset(loaders).await?;
    let start = Instant::now();
    let (lat, errors, call_time) = requests_to_hosts(mports, by_port).await?;
    let sent = lat.len();
    let (received, distinct, _) = await_deliveries(loaders, sent, Duration::from_secs(120)).await?;
    let deliver_time = start.elapsed();
    let mut lat = lat;
    lat.sort_unstable();
    let mut row = Row::new(
        scenario,
        &format!(
            "one PostToConnection to each ({forwarded} through a host that does not own it), \
             {POSTERS_PER_HOST} HTTP clients per host"
        ),
    );
    row.count = format!("{sent} answered 200, {} other", errors.len());
    row.rate = format!("{:.0} posts/s", sent as f64 / call_time.as_secs_f64());
    row.p50 = ms(percentile(&lat, 0.50));
    row.p99 = ms(percentile(&lat, 0.99));
    row.target = "every post 200".into();
    row.verdict = verdict(errors.is_empty() && sent == members.len());
    let mut got = Row::new(scenario, "posts received by the WebSocket clients");
    got.count = format!(
        "{distinct} of {} connections got theirs ({received} messages) in {:.1} s",
        members.len(),
        deliver_time.as_secs_f64()
    );
    got.target = "every connection exactly one".into();
    got.verdict = verdict(distinct == members.len() && received == members.len() as u64);
    Ok(vec![row, got])
}

/// Every connection joins [`GROUP`] (through its own host), then [`BROADCASTS`] broadcasts
/// through host 0.
async fn join_and_broadcast(
    loaders: &mut [Loader],
    members: &[(usize, String)],
    mports: &[u16],
) -> Res<Vec<Row>> {
    let mut by_port: Vec<Vec<Vec<u8>>> = vec![Vec::new(); mports.len()];
    for (owner, id) in members {
        by_port[*owner].push(
            format!(
                "PUT /dev/@connections/{}/groups/{GROUP} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
                id.replace('=', "%3D")
            )
            .into_bytes(),
        );
    }
    let (lat, errors, join_time) = requests_to_hosts(mports, by_port).await?;
    let mut rows = Vec::new();
    let mut row = Row::new(
        "scale-broadcast",
        &format!(
            "join one group (PUT …/groups/{GROUP} through the owner), {POSTERS_PER_HOST} HTTP clients per host"
        ),
    );
    row.count = format!(
        "{} joined, {} refused, in {:.1} s",
        lat.len(),
        errors.len(),
        join_time.as_secs_f64()
    );
    row.rate = format!("{:.0} joins/s", lat.len() as f64 / join_time.as_secs_f64());
    row.verdict = verdict(errors.is_empty() && lat.len() == members.len());
    rows.push(row);
    for n in 1..=BROADCASTS {
        reset(loaders).await?;
        let body = format!("broadcast {n}");
        let request = format!(
            "POST /dev/@groups/{GROUP} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut c = RawHttp::connect(mports[0]).await?;
        let called_at = epoch_us();
        let t = Instant::now();
        let (status, answer) = c.request(request.as_bytes()).await?;
        let call_time = t.elapsed();
        let answer = String::from_utf8_lossy(&answer).to_string();
        let (received, distinct, last_us) =
            await_deliveries(loaders, members.len(), Duration::from_secs(120)).await?;
        let to_last = Duration::from_micros(last_us.saturating_sub(called_at));
        eprintln!(
            "  scale-broadcast: broadcast {n}: {status} {answer} in {call_time:?}; \
             {distinct} members got it, the last {to_last:?} after the call"
        );
        let mut row = Row::new(
            "scale-broadcast",
            &format!(
                "broadcast {n} of {BROADCASTS} to the group through host 0 (one call per other host)"
            ),
        );
        row.count = format!(
            "{distinct} of {} members got it ({received} messages); answer {status} {answer}",
            members.len()
        );
        row.rate = format!(
            "call {:.0} ms; call to last delivery {:.0} ms; {:.0} deliveries/s",
            call_time.as_secs_f64() * 1000.0,
            to_last.as_secs_f64() * 1000.0,
            distinct as f64 / to_last.as_secs_f64().max(1e-6)
        );
        row.target = "every member".into();
        row.verdict = verdict(status == 200 && distinct == members.len());
        rows.push(row);
    }
    Ok(rows)
}

/// Sends each host's requests through [`POSTERS_PER_HOST`] keep-alive clients, every host at
/// once; returns the latencies of the 2xx answers, the other statuses, and the time taken.
async fn requests_to_hosts(
    mports: &[u16],
    by_port: Vec<Vec<Vec<u8>>>,
) -> Res<(Vec<u64>, Vec<u16>, Duration)> {
    let start = Instant::now();
    let runs = mports.iter().zip(by_port).map(|(port, requests)| {
        let total = requests.len() as u64;
        post_load(
            *port,
            Arc::new(requests),
            POSTERS_PER_HOST,
            total,
            RUN_BOUND,
        )
    });
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for r in futures_util::future::join_all(runs).await {
        let (l, e, _) = r?;
        lat.extend(l);
        errors.extend(e);
    }
    if !errors.is_empty() {
        let mut by_status = std::collections::BTreeMap::new();
        for s in &errors {
            *by_status.entry(*s).or_insert(0) += 1;
        }
        eprintln!("  non-2xx answers: {by_status:?}");
    }
    Ok((lat, errors, start.elapsed()))
}

async fn reset(loaders: &mut [Loader]) -> Res<()> {
    for l in loaders.iter_mut() {
        l.command("reset").await?;
    }
    Ok(())
}

/// Polls the loaders until `expected` connections received something since the last reset, or
/// `bound` passes; returns the messages received, the connections that received, and the latest
/// receive time (epoch µs).
async fn await_deliveries(
    loaders: &mut [Loader],
    expected: usize,
    bound: Duration,
) -> Res<(u64, usize, u64)> {
    let deadline = Instant::now() + bound;
    loop {
        let (mut received, mut distinct, mut last) = (0, 0, 0);
        for l in loaders.iter_mut() {
            let line = l.command("report").await?;
            let mut f = line.split_whitespace().skip(1).map(str::parse::<u64>);
            let mut next = || -> Res<u64> { Ok(f.next().ok_or("short report")??) };
            received += next()?;
            distinct += next()? as usize;
            last = last.max(next()?);
        }
        if distinct >= expected || Instant::now() > deadline {
            // A moment more, so a duplicate would be counted too.
            if distinct >= expected {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut again = 0;
                for l in loaders.iter_mut() {
                    let line = l.command("report").await?;
                    again += line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
                received = again;
            }
            return Ok((received, distinct, last));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn epoch_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn epoch_ms() -> u64 {
    epoch_us() / 1000
}

// ---------------------------------------------------------------------------------------------
// dynalite

/// dynalite (a DynamoDB-API server on Node.js, in memory) on a free loopback port; stopped when
/// dropped.
pub(crate) struct Dynalite {
    child: Child,
    pub endpoint: String,
}

impl Dynalite {
    /// Starts dynalite on a free loopback port; a port taken between the check and dynalite's
    /// bind makes it exit, and another port is tried (three in all).
    pub async fn start(bin: &Path) -> Res<Self> {
        if !bin.exists() {
            return Err(format!(
                "dynalite not found at {} (cd connection-host/bench && npm install --no-save dynalite; \
                 or --dynalite PATH, or --dynamodb-endpoint URL)",
                bin.display()
            )
            .into());
        }
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_on(bin, free_port()?).await {
                Ok(d) => return Ok(d),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last.into())
    }

    async fn start_on(bin: &Path, port: u16) -> Res<Self> {
        let log_path =
            std::env::temp_dir().join(format!("ch-bench-{}-dynalite.log", std::process::id()));
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(bin);
        // Tables are ACTIVE at once instead of after dynalite's default half second.
        command.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--createTableMs",
            "0",
            "--deleteTableMs",
            "0",
            "--updateTableMs",
            "0",
        ]);
        let child = spawn_logged(command, bin, log)?;
        let mut d = Dynalite {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Some(status) = d.child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("dynalite exited at start ({status}): {log}").into());
            }
            if Instant::now() > deadline {
                return Err("dynalite did not listen within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("== dynalite (pid {}) on {}", d.child.id(), d.endpoint);
        Ok(d)
    }
}

impl Drop for Dynalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        CHILDREN.lock().unwrap().retain(|p| *p != self.child.id());
    }
}

/// Where dynalite is looked for without `--dynalite`.
pub(crate) fn default_dynalite() -> PathBuf {
    std::env::var_os("DYNALITE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/dynalite"),
        PathBuf::from,
    )
}

// ---------------------------------------------------------------------------------------------
// The loaders, seen from the bench

/// A loader child process: its stdin takes commands, its stdout answers.
struct Loader {
    child: tokio::process::Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// What a loader reports once its connections are open and named.
struct LoaderOpened {
    ids: Vec<(usize, String)>,
    failed: usize,
    retried: usize,
    start_ms: u64,
    connected_ms: u64,
    named_ms: u64,
}

impl Loader {
    fn start(exe: &Path, ports: &str, count: usize, first: usize, net: usize) -> Res<Self> {
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--loader",
                ports,
                &count.to_string(),
                &first.to_string(),
                &net.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(pid) = child.id() {
            CHILDREN.lock().unwrap().push(pid);
        }
        let stdin = child.stdin.take().ok_or("loader stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("loader stdout")?).lines();
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    async fn line(&mut self) -> Res<String> {
        Ok(self.stdout.next_line().await?.ok_or("loader ended early")?)
    }

    async fn read_connections(&mut self) -> Res<LoaderOpened> {
        let mut ids = Vec::new();
        let (mut failed, mut retried, mut start_ms, mut connected_ms) = (0, 0, 0, 0);
        loop {
            let line = self.line().await?;
            let mut f = line.split_whitespace();
            match f.next() {
                Some("id") => {
                    let host = f.next().ok_or("id line")?.parse()?;
                    ids.push((host, f.next().ok_or("id line")?.to_string()));
                }
                Some("connected") => {
                    let mut n = || -> Res<u64> { Ok(f.next().ok_or("connected line")?.parse()?) };
                    failed = n()? as usize;
                    retried = n()? as usize;
                    start_ms = n()?;
                    connected_ms = n()?;
                }
                Some("named") => {
                    let named_ms = f.next().ok_or("named line")?.parse()?;
                    return Ok(LoaderOpened {
                        ids,
                        failed,
                        retried,
                        start_ms,
                        connected_ms,
                        named_ms,
                    });
                }
                _ => return Err(format!("unexpected loader line {line:?}").into()),
            }
        }
    }

    async fn command(&mut self, command: &str) -> Res<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        self.line().await
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            CHILDREN.lock().unwrap().retain(|p| *p != pid);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The loader process itself

/// `bench --loader PORTS COUNT FIRST NET`: opens COUNT WebSockets, the i-th to host
/// `(FIRST + i) % hosts`, from 127.NET.0.2–127.NET.0.201; prints `id HOST ID` per connection,
/// `connected FAILED RETRIED START_MS END_MS`, `named END_MS`; then answers `reset` (`ok`) and
/// `report` (`report MESSAGES CONNECTIONS LAST_US`) until its stdin closes.
pub(crate) fn loader_main(args: &[String]) -> ! {
    let parse = || -> Res<(Vec<u16>, usize, usize, u8)> {
        let [ports, count, first, net] = args else {
            return Err("usage: bench --loader PORTS COUNT FIRST NET".into());
        };
        let ports = ports
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u16>, _>>()?;
        Ok((ports, count.parse()?, first.parse()?, net.parse()?))
    };
    let code = match parse() {
        Ok((ports, count, first, net)) => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(loader(ports, count, first, net)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("loader 127.{net}.0.0: {e}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    };
    std::process::exit(code)
}

/// Counts, per connection and in all, what the connections receive.
struct Received {
    per_connection: Vec<AtomicU32>,
    messages: AtomicU64,
    last_us: AtomicU64,
}

async fn loader(ports: Vec<u16>, count: usize, first: usize, net: u8) -> Res<()> {
    use std::io::Write as _;
    let start_ms = epoch_ms();
    let retried = Arc::new(AtomicUsize::new(0));
    let ports = Arc::new(ports);
    let results: Vec<_> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (ports, retried) = (ports.clone(), retried.clone());
            async move {
                let host = (first + i) % ports.len();
                let src = Ipv4Addr::new(127, net, 0, 2 + (i % 200) as u8);
                let mut attempt = 0;
                loop {
                    match loader_connect(src, ports[host]).await {
                        Ok(ws) => return Ok((host, ws)),
                        Err(e) if attempt >= 2 => return Err(e),
                        Err(_) => {
                            attempt += 1;
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(LOADER_IN_FLIGHT)
        .collect()
        .await;
    let connected_ms = epoch_ms();
    let mut open = Vec::with_capacity(count);
    let mut failed = 0;
    for r in results {
        match r {
            Ok(c) => open.push(c),
            Err(e) => {
                if failed == 0 {
                    eprintln!("loader 127.{net}.0.0: first failure: {e}");
                }
                failed += 1;
            }
        }
    }
    let received = Arc::new(Received {
        per_connection: (0..open.len()).map(|_| AtomicU32::new(0)).collect(),
        messages: AtomicU64::new(0),
        last_us: AtomicU64::new(0),
    });
    let named: Vec<Res<(usize, String)>> = futures_util::stream::iter(open.into_iter().enumerate())
        .map(|(slot, (host, mut ws))| {
            let received = received.clone();
            async move {
                ws.send(Message::text(r#"{"action":"whoami"}"#)).await?;
                let reply =
                    tokio::time::timeout(Duration::from_secs(60), next_text(&mut ws)).await??;
                let v: serde_json::Value = serde_json::from_str(&reply)?;
                let id = v["connectionId"]
                    .as_str()
                    .ok_or_else(|| format!("whoami answered {reply}"))?
                    .to_string();
                tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        if matches!(m, Message::Text(_)) {
                            received.per_connection[slot].fetch_add(1, Ordering::Relaxed);
                            received.messages.fetch_add(1, Ordering::Relaxed);
                            received.last_us.fetch_max(epoch_us(), Ordering::Relaxed);
                        }
                    }
                });
                Ok::<_, AnyError>((host, id))
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let named_ms = epoch_ms();
    {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for n in &named {
            match n {
                Ok((host, id)) => writeln!(out, "id {host} {id}")?,
                Err(e) => {
                    eprintln!("loader 127.{net}.0.0: whoami failed: {e}");
                    failed += 1;
                }
            }
        }
        writeln!(
            out,
            "connected {failed} {} {start_ms} {connected_ms}",
            retried.load(Ordering::Relaxed)
        )?;
        writeln!(out, "named {named_ms}")?;
        out.flush()?;
    }
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        let answer = match command.as_str() {
            "reset" => {
                for c in &received.per_connection {
                    c.store(0, Ordering::Relaxed);
                }
                received.messages.store(0, Ordering::Relaxed);
                received.last_us.store(0, Ordering::Relaxed);
                "ok".to_string()
            }
            "report" => {
                let distinct = received
                    .per_connection
                    .iter()
                    .filter(|c| c.load(Ordering::Relaxed) > 0)
                    .count();
                format!(
                    "report {} {distinct} {}",
                    received.messages.load(Ordering::Relaxed),
                    received.last_us.load(Ordering::Relaxed)
                )
            }
            other => format!("unknown command {other:?}"),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// One WebSocket to `127.0.0.1:port` from `src`, within 30 s.
async fn loader_connect(src: Ipv4Addr, port: u16) -> Res<Ws> {
    tokio::time::timeout(Duration::from_secs(30), async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(src.into(), 0))?;
        socket.set_nodelay(true)?;
        let stream = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://127.0.0.1:{port}/dev"),
            stream,
            Some(client_ws_config()),
        )
        .await?;
        Ok::<_, AnyError>(ws)
    })
    .await
    .map_err(|_| "handshake took more than 30 s")?
}
