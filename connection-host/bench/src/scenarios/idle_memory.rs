//! `idle-memory`: the host's VmRSS growth per idle WebSocket connection.

use crate::*;

pub(crate) async fn idle_memory(o: &Opts) -> Res<Vec<Row>> {
    const N: usize = 10_000;
    let host = HostProc::start(&o.host_bin, "idle", BASE_CONFIG).await?;
    // Warm up the runtime and allocator with a few connections, then measure from a settled state.
    let (warm, _, _) = open_many(host.port, 200, 100).await;
    close_many(warm, 100).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = rss_kib(host.pid())?;
    let t = Instant::now();
    let (sockets, _, failed) = open_many(host.port, N, 200).await;
    let open_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(host.pid())?;
    let held = health_connections(host.port).await?;
    let opened = sockets.len();
    let per_conn = (after.saturating_sub(before)) as f64 * 1.024 / opened.max(1) as f64;
    eprintln!(
        "  idle-memory: {opened} open ({failed} failed) in {open_time:?}; host holds {held}; \
         VmRSS {before} KiB -> {after} KiB"
    );
    let mut row = Row::new(
        "idle-memory",
        &format!("host VmRSS growth per idle connection ({before}→{after} KiB)"),
    );
    row.count = format!("{opened} conns (host holds {held}, {failed} failed)");
    row.rate = format!("{per_conn:.1} KB/conn");
    row.target = "≤ 8 KB/conn".into();
    row.verdict = verdict(per_conn <= 8.0 && failed == 0 && held as usize == opened);
    drop(sockets);
    host.report_log();
    Ok(vec![row])
}
