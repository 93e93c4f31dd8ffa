//! `connect-rate` and `connect-rate-dynamodb`: handshakes per second with a `$connect` route.

use crate::*;

const CONNECT_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"

[routes."$connect"]
integration = "accept"

[integrations.accept]
type = "mock"
status_code = 200
"#;

pub(crate) async fn connect_rate(o: &Opts) -> Res<Vec<Row>> {
    const IN_FLIGHT: usize = 200;
    let host = HostProc::start(&o.host_bin, "connect", CONNECT_CONFIG).await?;
    let what = format!("WebSocket handshakes with $connect → MOCK 200, {IN_FLIGHT} in flight");
    let row = connect_run(
        "connect-rate",
        &what,
        &host,
        5_000,
        IN_FLIGHT,
        Some(3_000.0),
    )
    .await?;
    host.report_log();
    Ok(vec![row])
}

pub(crate) async fn connect_rate_dynamodb(o: &Opts, endpoint: &str) -> Res<Vec<Row>> {
    // moto takes roughly 100–150 writes/s; each handshake writes the connection record before
    // the 101. Few in flight, so no call waits near the store's 2 s per-attempt timeout.
    const IN_FLIGHT: usize = 16;
    let tables = Tables::create(o, endpoint, "connect").await?;
    let config = format!("{CONNECT_CONFIG}\n{}", tables.store_section());
    let result = async {
        let host =
            HostProc::start_with_env(&o.host_bin, "connect-ddb", &config, &aws_env(endpoint))
                .await?;
        let what = format!(
            "as `connect-rate`, `[store] kind = \"dynamodb\"` (a PutItem per handshake), \
             {IN_FLIGHT} in flight"
        );
        let row = connect_run("connect-rate-dynamodb", &what, &host, 500, IN_FLIGHT, None).await?;
        host.report_log();
        Ok(vec![row])
    }
    .await;
    tables.delete().await;
    result
}

/// Opens `n` WebSockets to `host`, `in_flight` at a time (bounded to 90 s), and reports the rate
/// and handshake latencies; then closes them.
async fn connect_run(
    scenario: &str,
    what: &str,
    host: &HostProc,
    n: usize,
    in_flight: usize,
    min_rate: Option<f64>,
) -> Res<Row> {
    let t = Instant::now();
    let (sockets, mut lat, failed) =
        tokio::time::timeout(Duration::from_secs(90), open_many(host.port, n, in_flight))
            .await
            .map_err(|_| format!("{n} handshakes took more than 90 s"))?;
    let elapsed = t.elapsed();
    let held = health_connections(host.port).await?;
    lat.sort_unstable();
    let rate = sockets.len() as f64 / elapsed.as_secs_f64();
    let mut row = Row::new(scenario, what);
    row.count = format!(
        "{} conns ({failed} failed, host holds {held})",
        sockets.len()
    );
    row.rate = format!("{rate:.0} conn/s");
    row.p50 = ms(percentile(&lat, 0.50));
    row.p99 = ms(percentile(&lat, 0.99));
    match min_rate {
        Some(min) => {
            row.target = format!("≥ {}/s", thousands(min));
            row.verdict = verdict(rate >= min && failed == 0);
        }
        None => {
            row.target = "— (reported)".into();
            if failed > 0 {
                row.verdict = format!("{failed} failed");
            }
        }
    }
    let t = Instant::now();
    let closed = sockets.len();
    close_many(sockets, in_flight.max(100)).await;
    eprintln!("  {scenario}: closed {closed} in {:?}", t.elapsed());
    Ok(row)
}
