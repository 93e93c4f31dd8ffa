//! `presence-list`: how long a whole presence listing of a 10,000-member group takes
//! (`GET /{stage}/@groups/{group}?limit=1000`, following `nextToken` through every page, as the
//! handler SDK's `members_with_presence` does), and a count (`GET /{stage}/@groups/{group}/count`),
//! on the memory store and then, in the same run, on the DynamoDB store.
//!
//! The DynamoDB endpoint is `--dynamodb-endpoint URL`, else dynalite started here (as for `scale`:
//! `--dynalite PATH`, `$DYNALITE`, or `bench/node_modules/.bin/dynalite`); without either the
//! DynamoDB rows say "skipped". Not moto: it takes milliseconds per item it returns, so one page of
//! 1,000 outlasts the host's 2 s attempt timeout (BENCHMARKS.md).

use super::post::WHOAMI_CONFIG;
use super::scale::Dynalite;
use crate::*;

/// Members of the group listed.
const MEMBERS: usize = 10_000;
/// Members per page (the host's maximum, and the page the handler SDK asks for).
const PAGE: usize = 1000;
/// Keep-alive HTTP clients making the joins.
const JOINERS: usize = 32;
/// Whole listings timed, and counts timed, per store.
const ROUNDS: usize = 30;
/// Handshakes in flight while connecting: on DynamoDB each one waits for a `PutItem`, and many
/// more only queue at a local server (see `scale.rs`).
const IN_FLIGHT: usize = 32;

pub(crate) async fn presence_list(o: &Opts) -> Res<Vec<Row>> {
    let config = format!("{WHOAMI_CONFIG}\n[extensions]\ngroups = true\n");
    let host = HostProc::start(&o.host_bin, "presence", &config).await?;
    let mut rows = presence_run("presence-list", "memory store", host.port).await?;
    host.report_log();
    // One host at a time: the bench holds 10,000 sockets for each.
    drop(host);
    match presence_dynamodb(o, &config).await {
        Ok(more) => rows.extend(more),
        Err(e) => {
            eprintln!("  presence-list on DynamoDB failed: {e}");
            rows.push(Row::failed(
                "presence-list",
                &format!("DynamoDB store: {e}"),
            ));
        }
    }
    Ok(rows)
}

/// The same run with `[store] kind = "dynamodb"` on `--dynamodb-endpoint` or a dynalite started
/// here; one "skipped" row when there is neither.
async fn presence_dynamodb(o: &Opts, config: &str) -> Res<Vec<Row>> {
    let (_dynalite, endpoint, store) = match &o.scale_endpoint {
        Some(url) => (None, url.clone(), format!("DynamoDB API at {url}")),
        None if !o.dynalite.exists() => {
            let why = format!(
                "no --dynamodb-endpoint, and no dynalite at {} (cd connection-host/bench && npm \
                 install --no-save dynalite)",
                o.dynalite.display()
            );
            eprintln!("  skipped on DynamoDB: {why}");
            let mut row = Row::new("presence-list", &format!("DynamoDB store skipped: {why}"));
            row.verdict = "SKIPPED".into();
            return Ok(vec![row]);
        }
        None => {
            let d = Dynalite::start(&o.dynalite).await?;
            let endpoint = d.endpoint.clone();
            (Some(d), endpoint, "dynalite".to_string())
        }
    };
    let tables = Tables::create(o, &endpoint, "presence").await?;
    let config = format!("{config}\n{}", tables.store_section());
    let host = HostProc::start_with_env(
        &o.host_bin,
        "presence-dynamodb",
        &config,
        &aws_env(&endpoint),
    )
    .await?;
    let rows = presence_run(
        "presence-list",
        &format!("DynamoDB store on {store}"),
        host.port,
    )
    .await;
    host.report_log();
    drop(host);
    tables.delete().await;
    rows
}

/// Connects `MEMBERS` clients, joins them to one group, then lists the group whole `ROUNDS`
/// times and counts it `ROUNDS` times, and reports the time of one listing and of one count;
/// checks every listing and every count.
async fn presence_run(scenario: &str, store: &str, port: u16) -> Res<Vec<Row>> {
    let t = Instant::now();
    let (sockets, _, failed) = open_many(port, MEMBERS, IN_FLIGHT).await;
    if failed > 0 {
        return Err(format!("{failed} of {MEMBERS} clients failed to connect").into());
    }
    let ids: Vec<Res<(Ws, String)>> = futures_util::stream::iter(sockets)
        .map(|mut ws| async move {
            ws.send(Message::text(r#"{"action":"whoami"}"#)).await?;
            let reply = tokio::time::timeout(Duration::from_secs(30), next_text(&mut ws)).await??;
            let v: serde_json::Value = serde_json::from_str(&reply)?;
            let id = v["connectionId"]
                .as_str()
                .ok_or_else(|| format!("whoami answered {reply}"))?
                .replace('=', "%3D");
            Ok((ws, id))
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let (sockets, ids): (Vec<Ws>, Vec<String>) = ids
        .into_iter()
        .collect::<Res<Vec<_>>>()?
        .into_iter()
        .unzip();
    eprintln!("  {scenario}: {} connected in {:?}", ids.len(), t.elapsed());
    let t = Instant::now();
    let chunks: Vec<Vec<String>> = ids
        .chunks(MEMBERS.div_ceil(JOINERS))
        .map(<[String]>::to_vec)
        .collect();
    let joins = chunks.into_iter().map(|chunk| async move {
        let mut c = RawHttp::connect(port).await?;
        for id in chunk {
            let request = format!(
                "PUT /dev/@connections/{id}/groups/bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            let (status, body) = c.request(request.as_bytes()).await?;
            if status != 204 {
                return Err::<(), AnyError>(
                    format!("join answered {status}: {}", String::from_utf8_lossy(&body)).into(),
                );
            }
        }
        Ok(())
    });
    futures_util::future::try_join_all(joins).await?;
    eprintln!("  {scenario}: {MEMBERS} joined in {:?}", t.elapsed());

    let mut c = RawHttp::connect(port).await?;
    let mut list_lat = Vec::with_capacity(ROUNDS);
    let mut count_lat = Vec::with_capacity(ROUNDS);
    // Alternated, so that both see the same state of the machine.
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let (listed, pages) = list_all(&mut c).await?;
        list_lat.push(t.elapsed().as_micros() as u64);
        if listed != MEMBERS || pages != MEMBERS.div_ceil(PAGE) {
            return Err(format!("a listing found {listed} members in {pages} pages").into());
        }
        let t = Instant::now();
        let (status, body) = c
            .request(b"GET /dev/@groups/bench/count HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        count_lat.push(t.elapsed().as_micros() as u64);
        let count: serde_json::Value = serde_json::from_slice(&body)?;
        if status != 200 || count["count"] != MEMBERS {
            return Err(format!("count answered {status}: {count}").into());
        }
    }
    drop(sockets);
    let members = thousands(MEMBERS as f64);
    let mut rows = Vec::new();
    for (what, lat, count) in [
        (
            format!(
                "whole presence listing of a {members}-member group, pages of {PAGE} ({store})"
            ),
            list_lat,
            format!("{ROUNDS} listings × {} pages", MEMBERS.div_ceil(PAGE)),
        ),
        (
            format!("count of a {members}-member group ({store})"),
            count_lat,
            format!("{ROUNDS} counts"),
        ),
    ] {
        let mut lat = lat;
        lat.sort_unstable();
        let mut row = Row::new(scenario, &what);
        row.count = count;
        row.p50 = ms(percentile(&lat, 0.50));
        row.p99 = ms(percentile(&lat, 0.99));
        row.target = "p50 ≤ 100 ms".into();
        row.verdict = verdict(percentile(&lat, 0.50) <= 100_000);
        rows.push(row);
    }
    Ok(rows)
}

/// Lists the group through every page; returns the members and pages seen.
async fn list_all(c: &mut RawHttp) -> Res<(usize, usize)> {
    let (mut listed, mut pages) = (0, 0);
    let mut token: Option<String> = None;
    loop {
        let request = match &token {
            Some(t) => format!(
                "GET /dev/@groups/bench?limit={PAGE}&nextToken={t} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            ),
            None => {
                format!("GET /dev/@groups/bench?limit={PAGE} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            }
        };
        let (status, body) = c.request(request.as_bytes()).await?;
        if status != 200 {
            return Err(format!(
                "listing answered {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        listed += page["members"].as_array().map_or(0, Vec::len);
        pages += 1;
        // Tokens are URL-safe base64: they go into the query string as they are.
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok((listed, pages)),
        }
    }
}
