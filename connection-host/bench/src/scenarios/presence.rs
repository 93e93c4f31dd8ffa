//! `presence-list` and `presence-list-dynamodb`: how long a whole presence listing of a
//! 10,000-member group takes (`GET /{stage}/@groups/{group}?limit=1000`, following `nextToken`
//! through every page), with the memory store and with the DynamoDB store.

use super::post::WHOAMI_CONFIG;
use crate::*;

/// Members of the group listed.
const MEMBERS: usize = 10_000;
/// Members per page (the host's maximum).
const PAGE: usize = 1000;
/// Keep-alive HTTP clients making the joins.
const JOINERS: usize = 32;

pub(crate) async fn presence_list(o: &Opts) -> Res<Vec<Row>> {
    let config = format!("{WHOAMI_CONFIG}\n[extensions]\ngroups = true\n");
    let host = HostProc::start(&o.host_bin, "presence", &config).await?;
    let rows = presence_run("presence-list", "memory store", host.port, 30).await?;
    host.report_log();
    Ok(rows)
}

pub(crate) async fn presence_list_dynamodb(o: &Opts, endpoint: &str) -> Res<Vec<Row>> {
    let tables = Tables::create(o, endpoint, "presence").await?;
    let config = format!(
        "{WHOAMI_CONFIG}\n[extensions]\ngroups = true\n{}",
        tables.store_section()
    );
    let result = async {
        let host =
            HostProc::start_with_env(&o.host_bin, "presence-ddb", &config, &aws_env(endpoint))
                .await?;
        let rows = presence_run(
            "presence-list-dynamodb",
            "DynamoDB store (8 shards; moto or --dynamodb-endpoint)",
            host.port,
            5,
        )
        .await?;
        host.report_log();
        Ok(rows)
    }
    .await;
    tables.delete().await;
    result
}

/// Connects `MEMBERS` clients, joins them to one group, then lists the group whole `rounds`
/// times and reports the time of one listing; checks every listing and the count.
async fn presence_run(scenario: &str, store: &str, port: u16, rounds: usize) -> Res<Vec<Row>> {
    let t = Instant::now();
    let (sockets, _, failed) = open_many(port, MEMBERS, 100).await;
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
    let (status, body) = c
        .request(b"GET /dev/@groups/bench/count HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let count: serde_json::Value = serde_json::from_slice(&body)?;
    if status != 200 || count["count"] != MEMBERS {
        return Err(format!("count answered {status}: {count}").into());
    }
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let (listed, pages) = list_all(&mut c).await?;
        lat.push(t.elapsed().as_micros() as u64);
        if listed != MEMBERS || pages != MEMBERS.div_ceil(PAGE) {
            return Err(format!("a listing found {listed} members in {pages} pages").into());
        }
    }
    lat.sort_unstable();
    drop(sockets);
    let mut row = Row::new(
        scenario,
        &format!(
            "whole presence listing of a {}-member group, pages of {PAGE} ({store})",
            thousands(MEMBERS as f64)
        ),
    );
    row.count = format!("{rounds} listings × {} pages", MEMBERS.div_ceil(PAGE));
    row.p50 = ms(percentile(&lat, 0.50));
    row.p99 = ms(percentile(&lat, 0.99));
    row.target = "p50 ≤ 100 ms".into();
    row.verdict = verdict(percentile(&lat, 0.50) <= 100_000);
    Ok(vec![row])
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
