//! `post`, `post-dynamodb` and `post-cross-host`: PostToConnection throughput through the
//! management API, on one host, with the DynamoDB store, and forwarded between two hosts.

use crate::*;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// A host with a two-way `whoami` route answering the connection's ID (a MOCK integration).
pub(crate) const WHOAMI_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"

[routes.whoami]
integration = "whoami"
two_way = true

[integrations.whoami]
type = "mock"
response_template = '{"connectionId":"$context.connectionId"}'
"#;

pub(crate) async fn post(o: &Opts) -> Res<Vec<Row>> {
    let host = HostProc::start(&o.host_bin, "post", WHOAMI_CONFIG).await?;
    let what =
        format!("POST @connections, {POSTERS} keep-alive HTTP clients → {CLIENTS} WebSockets");
    let rows = post_run(
        o,
        "post",
        &what,
        host.port,
        host.port,
        false,
        Some(30_000.0),
    )
    .await?;
    host.report_log();
    Ok(rows)
}

pub(crate) async fn post_dynamodb(o: &Opts, endpoint: &str) -> Res<Vec<Row>> {
    let tables = Tables::create(o, endpoint, "post").await?;
    let config = format!("{WHOAMI_CONFIG}\n{}", tables.store_section());
    let result = async {
        let host =
            HostProc::start_with_env(&o.host_bin, "post-ddb", &config, &aws_env(endpoint)).await?;
        let what = format!(
            "as `post`, `[store] kind = \"dynamodb\"` (moto or --dynamodb-endpoint); \
             {POSTERS} HTTP clients → {CLIENTS} WebSockets"
        );
        let rows = post_run(
            o,
            "post-dynamodb",
            &what,
            host.port,
            host.port,
            false,
            Some(30_000.0),
        )
        .await?;
        host.report_log();
        Ok(rows)
    }
    .await;
    tables.delete().await;
    result
}

const CLUSTER_SECRET: &str = "bench-cluster-secret-0123456789";

pub(crate) async fn post_cross_host(o: &Opts, endpoint: &str) -> Res<Vec<Row>> {
    let tables = Tables::create(o, endpoint, "xhost").await?;
    let result = async {
        let mut env = aws_env(endpoint);
        env.push(("CONNECTION_HOST_CLUSTER__SECRET", CLUSTER_SECRET.into()));
        // Each host: the whoami route, a management listener, the shared tables, its host ID.
        let server = WHOAMI_CONFIG.replacen(
            "listen = \"127.0.0.1:{PORT}\"\n",
            "listen = \"127.0.0.1:{PORT}\"\nmanagement_listen = \"127.0.0.1:{MPORT}\"\n",
            1,
        );
        let config = |id: &str| {
            format!(
                "{server}\n{}\n[cluster]\nhost_id = \"{id}\"\n\
                 advertise_url = \"http://127.0.0.1:{{MPORT}}\"\nheartbeat_interval = \"1s\"\n",
                tables.store_section()
            )
        };
        let a = HostProc::start_with_env(&o.host_bin, "xhost-a", &config("bench-a"), &env).await?;
        let b = HostProc::start_with_env(&o.host_bin, "xhost-b", &config("bench-b"), &env).await?;
        let what = format!(
            "clients on host A, POST @connections to host B's management listener (forwarded \
             to A); 2 hosts, one DynamoDB store; {POSTERS} HTTP clients → {CLIENTS} WebSockets"
        );
        let rows = post_run(o, "post-cross-host", &what, a.port, b.mport, true, None).await?;
        a.report_log();
        b.report_log();
        Ok(rows)
    }
    .await;
    tables.delete().await;
    result
}

/// WebSocket clients posted to.
pub(crate) const CLIENTS: usize = 100;
/// Keep-alive HTTP clients posting.
pub(crate) const POSTERS: usize = 32;
/// Posts per run (unless `--duration` passes first).
pub(crate) const TOTAL: u64 = 200_000;
/// The body of every post.
pub(crate) const POST_BODY: &str = "bench message 0123456789abcdef";

/// Connects `CLIENTS` WebSockets to `ws_port`, learns their IDs (whoami route), then posts to
/// them through `post_port` from `POSTERS` keep-alive HTTP clients (at most `TOTAL` posts, or
/// `o.duration`), and counts what the clients receive. With `warm_up`, one untimed post per
/// connection goes first (a cluster host's first call for a connection reads its record).
async fn post_run(
    o: &Opts,
    scenario: &str,
    what: &str,
    ws_port: u16,
    post_port: u16,
    warm_up: bool,
    min_rate: Option<f64>,
) -> Res<Vec<Row>> {
    let (sockets, _, failed) = open_many(ws_port, CLIENTS, 100).await;
    if failed > 0 {
        return Err(format!("{failed} of {CLIENTS} clients failed to connect").into());
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let mut ids = Vec::with_capacity(CLIENTS);
    let mut readers = Vec::with_capacity(CLIENTS);
    for mut ws in sockets {
        ws.send(Message::text(r#"{"action":"whoami"}"#)).await?;
        let reply = tokio::time::timeout(Duration::from_secs(5), next_text(&mut ws)).await??;
        let v: serde_json::Value = serde_json::from_str(&reply)?;
        let id = v["connectionId"]
            .as_str()
            .ok_or_else(|| format!("whoami answered {reply}"))?
            .to_string();
        ids.push(id.replace('=', "%3D"));
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Text(_)) {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        ids.iter()
            .map(|id| {
                let body = POST_BODY;
                format!(
                    "POST /dev/@connections/{id} HTTP/1.1\r\nHost: 127.0.0.1:{post_port}\r\n\
                     Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            })
            .collect(),
    );
    let mut warm = 0u64;
    if warm_up {
        let t = Instant::now();
        let mut c = RawHttp::connect(post_port).await?;
        for request in requests.iter() {
            let (status, body) = c.request(request).await?;
            if status != 200 {
                return Err(format!(
                    "warm-up post answered {status}: {}",
                    String::from_utf8_lossy(&body)
                )
                .into());
            }
            warm += 1;
        }
        eprintln!(
            "  {scenario}: {warm} warm-up posts (one per connection) in {:?}",
            t.elapsed()
        );
    }
    let start = Instant::now();
    let (mut lat, errors, post_time) =
        post_load(post_port, requests, POSTERS, TOTAL, o.duration).await?;
    let sent = lat.len() as u64;
    let wait_until = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < sent + warm && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliver_time = start.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = delivered.load(Ordering::Relaxed).saturating_sub(warm);
    for r in &readers {
        r.abort();
    }
    lat.sort_unstable();
    let post_rate = sent as f64 / post_time.as_secs_f64();
    let deliver_rate = got as f64 / deliver_time.as_secs_f64();
    if !errors.is_empty() {
        let mut by_status = std::collections::BTreeMap::new();
        for s in &errors {
            *by_status.entry(*s).or_insert(0) += 1;
        }
        eprintln!("  {scenario}: non-200 answers: {by_status:?}");
    }
    if got != sent {
        eprintln!("MISMATCH: {scenario}: {sent} posts answered 200 but {got} messages received");
    }
    let min = min_rate.unwrap_or(0.0);
    let mut rows = Vec::new();
    let mut row = Row::new(scenario, what);
    row.count = format!("{sent} posts ({} non-200)", errors.len());
    row.rate = format!("{post_rate:.0} posts/s");
    row.p50 = ms(percentile(&lat, 0.50));
    row.p99 = ms(percentile(&lat, 0.99));
    row.target = match min_rate {
        Some(min) => format!("≥ {}/s", thousands(min)),
        None => "— (reported)".into(),
    };
    row.verdict = match min_rate {
        Some(_) => verdict(post_rate >= min && errors.is_empty()),
        None if errors.is_empty() => "—".into(),
        None => format!("{} non-200", errors.len()),
    };
    rows.push(row);
    let mut row = Row::new(scenario, "messages received by the WebSocket clients");
    row.count = format!("{got} of {sent}");
    row.rate = format!("{deliver_rate:.0} msg/s");
    row.target = match min_rate {
        Some(min) => format!("≥ {}/s, delivered == sent", thousands(min)),
        None => "delivered == sent".into(),
    };
    row.verdict = if got != sent {
        format!("MISMATCH ({got} ≠ {sent})")
    } else {
        verdict(deliver_rate >= min)
    };
    rows.push(row);
    Ok(rows)
}

/// Posts `requests` round-robin from `posters` keep-alive HTTP clients to `port` until `total`
/// posts were made or `duration` passed. Returns the latencies (µs) of the posts answered 2xx,
/// unsorted, the statuses of the others, and the time taken.
pub(crate) async fn post_load(
    port: u16,
    requests: Arc<Vec<Vec<u8>>>,
    posters: usize,
    total: u64,
    duration: Duration,
) -> Res<(Vec<u64>, Vec<u16>, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(posters);
    for _ in 0..posters {
        let requests = requests.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total as usize / posters + 1);
            let mut errors: Vec<u16> = Vec::new();
            let mut c = RawHttp::connect(port).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let (status, _) = c.request(&requests[i as usize % requests.len()]).await?;
                if (200..300).contains(&status) {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors.push(status);
                }
            }
            Ok::<_, AnyError>((lat, errors))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (l, e) = t.await??;
        lat.extend(l);
        errors.extend(e);
    }
    Ok((lat, errors, start.elapsed()))
}
