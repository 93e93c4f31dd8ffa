//! End-to-end tests of the `@connections` management API, driven by the official
//! `aws-sdk-apigatewaymanagement` client (and reqwest for the raw wire format).

mod common;

use aws_sdk_apigatewaymanagement::error::ProvideErrorMetadata;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// WHOAMI plus `$connect`/`$disconnect` to a recording handler, plus `extra`.
fn with_handler(url: &str, extra: &str) -> String {
    format!(
        r#"{WHOAMI}
[routes."$connect"]
integration = "h"
[routes."$disconnect"]
integration = "h"
[integrations.h]
type = "http"
url = "{url}"
{extra}"#
    )
}

async fn whoami(ws: &mut Ws) -> String {
    send_text(ws, r#"{"action":"whoami"}"#).await;
    let reply: Value = serde_json::from_str(&next_text(ws).await).unwrap();
    let id = reply["connectionId"].as_str().unwrap().to_string();
    assert!(is_connection_id(&id), "{id}");
    id
}

/// A connected client and its ID.
async fn client(addr: SocketAddr, headers: &[(&str, &str)]) -> (Ws, String) {
    let (mut ws, _) = try_connect(addr, "/dev", headers, None).await.unwrap();
    let id = whoami(&mut ws).await;
    (ws, id)
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).expect("JSON body")
}

fn header<'r>(r: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn post_to_connection_delivers_text_and_binary_to_the_right_client() {
    let host = TestHost::start(WHOAMI).await;
    let sdk = mgmt_client(host.addr);
    let (mut a, id_a) = client(host.addr, &[]).await;
    let (mut b, id_b) = client(host.addr, &[]).await;
    sdk.post_to_connection()
        .connection_id(&id_a)
        .data(Blob::new("hello A"))
        .send()
        .await
        .expect("post to A");
    sdk.post_to_connection()
        .connection_id(&id_b)
        .data(Blob::new(vec![0xffu8, 0x00, 0x01]))
        .send()
        .await
        .expect("post to B");
    assert_eq!(next_message(&mut a).await, Message::text("hello A"));
    assert_eq!(
        next_message(&mut b).await,
        Message::binary(vec![0xffu8, 0x00, 0x01])
    );
}

#[tokio::test]
async fn get_connection_reports_times_and_identity() {
    let host = TestHost::start(WHOAMI).await;
    let sdk = mgmt_client(host.addr);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (_ws, id) = client(host.addr, &[("User-Agent", "mgmt-test/1.0")]).await;
    let out = sdk
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap();
    let connected = out.connected_at().unwrap().to_millis().unwrap();
    let last = out.last_active_at().unwrap().to_millis().unwrap();
    assert!(
        connected >= before - 1000 && connected <= last,
        "{connected} {last}"
    );
    let identity = out.identity().unwrap();
    assert_eq!(identity.source_ip(), Some("127.0.0.1"));
    assert_eq!(identity.user_agent(), Some("mgmt-test/1.0"));

    // Raw JSON: ISO-8601 with milliseconds.
    let r = http()
        .get(host.http(&format!("/dev/@connections/{}", encode_id(&id))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-amzn-RequestId").is_some());
    let v = json_of(r).await;
    let iso = regex_lite::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$").unwrap();
    for key in ["connectedAt", "lastActiveAt"] {
        assert!(iso.is_match(v[key].as_str().unwrap()), "{key}: {v}");
    }
    assert_eq!(v["identity"]["sourceIp"], "127.0.0.1");

    // Without User-Agent the field is absent.
    let (_ws, id) = client(host.addr, &[]).await;
    let r = http()
        .get(host.http(&format!("/dev/@connections/{}", encode_id(&id))))
        .send()
        .await
        .unwrap();
    let v = json_of(r).await;
    assert!(v["identity"].get("userAgent").is_none(), "{v}");
}

#[tokio::test]
async fn delete_connection_closes_with_1000_and_reports_it_in_disconnect() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = TestHost::start(&with_handler(&handler.url, "")).await;
    let sdk = mgmt_client(host.addr);

    // Raw: 204.
    let (mut ws, id) = client(host.addr, &[]).await;
    let r = http()
        .delete(host.http(&format!("/dev/@connections/{}", encode_id(&id))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    let d = handler.wait_route("$disconnect", Some(&id)).await;
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1000);
    assert_eq!(
        d["requestContext"]["disconnectReason"],
        "Connection Closed Normally"
    );
    let err = sdk
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());

    // Through the SDK.
    let (mut ws, id) = client(host.addr, &[]).await;
    sdk.delete_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("DeleteConnection");
    assert_eq!(expect_close(&mut ws).await.0, 1000);
}

#[tokio::test]
async fn unknown_well_formed_id_is_gone() {
    let host = TestHost::start(WHOAMI).await;
    let sdk = mgmt_client(host.addr);
    let id = "AAAAAAAAAAAAAAA=";
    let err = sdk
        .post_to_connection()
        .connection_id(id)
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());
    let err = sdk
        .get_connection()
        .connection_id(id)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());
    let err = sdk
        .delete_connection()
        .connection_id(id)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());

    let r = http()
        .post(host.http("/dev/@connections/AAAAAAAAAAAAAAA%3D"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(header(&r, "x-amzn-ErrorType"), Some("GoneException"));
    assert!(header(&r, "x-amzn-RequestId").is_some_and(|v| !v.is_empty()));
    assert_eq!(
        r.bytes().await.unwrap().len(),
        0,
        "GoneException has an empty body"
    );
}

#[tokio::test]
async fn percent_encoded_at_sign_and_id_are_accepted() {
    let host = TestHost::start(WHOAMI).await;
    let (mut ws, id) = client(host.addr, &[]).await;
    assert!(id.ends_with('='));
    let url = host.http(&format!("/dev/%40connections/{}", id.replace('=', "%3D")));
    let r = http().post(&url).body("encoded").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(next_text(&mut ws).await, "encoded");
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let literal = host.http(&format!("/dev/@connections/{id}"));
    let r = http().post(&literal).body("literal").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(next_text(&mut ws).await, "literal");
}

#[tokio::test]
async fn malformed_id_is_a_bad_request() {
    let host = TestHost::start(WHOAMI).await;
    let r = http()
        .post(host.http("/dev/@connections/not-an-id"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "x-amzn-ErrorType"), Some("BadRequestException"));
    let err = mgmt_client(host.addr)
        .post_to_connection()
        .connection_id("not-an-id")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.code(), Some("BadRequestException"));
}

#[tokio::test]
async fn payload_limit_is_131072_bytes() {
    let host = TestHost::start(WHOAMI).await;
    let sdk = mgmt_client(host.addr);
    let (mut ws, id) = client(host.addr, &[]).await;
    let err = sdk
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new(vec![b'a'; 131_073]))
        .send()
        .await
        .unwrap_err();
    let err = err.into_service_error();
    assert!(err.is_payload_too_large_exception(), "{err:?}");

    sdk.post_to_connection()
        .connection_id(&id)
        .data(Blob::new(vec![b'b'; 131_072]))
        .send()
        .await
        .expect("exactly 131072 bytes is accepted");
    match next_message(&mut ws).await {
        Message::Text(t) => assert_eq!(t.len(), 131_072),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn post_during_its_own_connect_is_gone() {
    let addr: Arc<OnceLock<SocketAddr>> = Arc::new(OnceLock::new());
    let statuses: Arc<Mutex<Vec<u16>>> = Arc::default();
    let handler = {
        let (addr, statuses) = (addr.clone(), statuses.clone());
        Handler::start_async(move |event| {
            let (addr, statuses) = (addr.clone(), statuses.clone());
            async move {
                if event_type(&event) == "CONNECT" {
                    let addr = *addr.get().expect("host started");
                    let url = format!(
                        "http://{addr}/dev/@connections/{}",
                        encode_id(conn_id(&event))
                    );
                    let r = reqwest::Client::new()
                        .post(url)
                        .body("too early")
                        .send()
                        .await
                        .unwrap();
                    statuses.lock().unwrap().push(r.status().as_u16());
                }
                Reply::proxy(200, None)
            }
        })
        .await
    };
    let host = TestHost::start(&with_handler(&handler.url, "")).await;
    addr.set(host.addr).unwrap();
    let (mut ws, id) = client(host.addr, &[]).await;
    assert_eq!(*statuses.lock().unwrap(), vec![410]);
    let connect = handler.wait_route("$connect", None).await;
    assert_eq!(conn_id(&connect), id);
    // Once established, the same post succeeds, and the early one was never delivered.
    mgmt_client(host.addr)
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new("on time"))
        .send()
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "on time");
}

#[tokio::test]
async fn messages_over_32_kb_are_fragmented() {
    let host = TestHost::start(WHOAMI).await;
    let config = WebSocketConfig::default().max_frame_size(Some(32 * 1024));
    let (mut ws, _) = try_connect(host.addr, "/dev", &[], Some(config))
        .await
        .unwrap();
    let id = whoami(&mut ws).await;
    let data: String = (0..100_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    mgmt_client(host.addr)
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new(data.clone()))
        .send()
        .await
        .unwrap();
    match next_message(&mut ws).await {
        Message::Text(t) => {
            assert_eq!(t.len(), 100_000);
            assert!(t.as_str() == data, "payload reassembled in order");
        }
        other => panic!("expected one text message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_gets_429_without_slowing_others() {
    let host = TestHost::start(&format!(
        "{WHOAMI}\n[limits]\noutbound_queue_bytes = 131072\n"
    ))
    .await;
    let sdk = mgmt_client(host.addr);

    // A raw client with a small receive buffer that reads only its whoami reply.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(host.addr).await.unwrap();
    let mut stuck = raw_upgrade_on(stream, host.addr, "/dev", "").await;
    stuck
        .write_all(&client_frame(0x1, br#"{"action":"whoami"}"#))
        .await
        .unwrap();
    let mut hdr = [0u8; 2];
    within("whoami reply", stuck.read_exact(&mut hdr))
        .await
        .unwrap();
    assert_eq!(hdr[0], 0x81);
    let mut payload = vec![0u8; (hdr[1] & 0x7f) as usize];
    stuck.read_exact(&mut payload).await.unwrap();
    let reply: Value = serde_json::from_slice(&payload).unwrap();
    let stuck_id = reply["connectionId"].as_str().unwrap().to_string();

    let (mut reader, reader_id) = client(host.addr, &[]).await;

    let chunk = vec![b'x'; 64 * 1024];
    let mut posts = 0;
    let limited = loop {
        posts += 1;
        assert!(
            posts <= 400,
            "no LimitExceededException after 400 posts of 64 KB"
        );
        let result = sdk
            .post_to_connection()
            .connection_id(&stuck_id)
            .data(Blob::new(chunk.clone()))
            .send()
            .await;
        if let Err(e) = result {
            break e.into_service_error();
        }
    };
    assert!(limited.is_limit_exceeded_exception(), "{limited:?}");

    // The raw wire answer is 429 LimitExceededException.
    let r = http()
        .post(host.http(&format!("/dev/@connections/{}", encode_id(&stuck_id))))
        .body(chunk.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        header(&r, "x-amzn-ErrorType"),
        Some("LimitExceededException")
    );

    // Meanwhile another client is served promptly.
    for i in 0..3 {
        let text = format!("still flowing {i}");
        sdk.post_to_connection()
            .connection_id(&reader_id)
            .data(Blob::new(text.clone()))
            .send()
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), next_text(&mut reader))
            .await
            .expect("the other client is not held up");
        assert_eq!(got, text);
    }
    drop(stuck);
}

#[tokio::test]
async fn groups_fan_out_page_and_forget_closed_members() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = TestHost::start(&with_handler(&handler.url, "[extensions]\ngroups = true")).await;
    let sdk = mgmt_client(host.addr);
    let (mut a, id_a) = client(host.addr, &[]).await;
    let (mut b, id_b) = client(host.addr, &[]).await;
    let (mut c, id_c) = client(host.addr, &[]).await;
    for id in [&id_a, &id_b, &id_c] {
        let r = http()
            .put(host.http(&format!("/dev/@connections/{}/groups/room", encode_id(id))))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "join: {}", r.status());
    }

    let r = http()
        .post(host.http("/dev/@groups/room"))
        .query(&[("exclude", id_a.as_str())])
        .body("to the room")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["delivered"], 2, "{v}");

    // Each member's queue is FIFO: after the broadcast, a direct post is the next message, so a
    // duplicate (or a delivery to the excluded member) would show up before it.
    for id in [&id_a, &id_b, &id_c] {
        sdk.post_to_connection()
            .connection_id(id)
            .data(Blob::new("marker"))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(next_text(&mut b).await, "to the room");
    assert_eq!(next_text(&mut b).await, "marker");
    assert_eq!(next_text(&mut c).await, "to the room");
    assert_eq!(next_text(&mut c).await, "marker");
    assert_eq!(
        next_text(&mut a).await,
        "marker",
        "the excluded member got nothing"
    );

    // Paging.
    let page = |token: Option<String>| {
        let url = host.http("/dev/@groups/room");
        async move {
            let mut q = vec![("limit", "2".to_string())];
            if let Some(t) = token {
                q.push(("nextToken", t));
            }
            let r = http().get(url).query(&q).send().await.unwrap();
            assert_eq!(r.status(), 200);
            json_of(r).await
        }
    };
    let first = page(None).await;
    let ids1: Vec<String> = serde_json::from_value(first["connectionIds"].clone()).unwrap();
    assert_eq!(ids1.len(), 2, "{first}");
    let token = first["nextToken"].as_str().expect("nextToken").to_string();
    let second = page(Some(token)).await;
    let ids2: Vec<String> = serde_json::from_value(second["connectionIds"].clone()).unwrap();
    assert_eq!(ids2.len(), 1, "{second}");
    assert!(second.get("nextToken").is_none(), "{second}");
    let all: BTreeSet<String> = ids1.into_iter().chain(ids2).collect();
    let expected: BTreeSet<String> = [&id_a, &id_b, &id_c].into_iter().cloned().collect();
    assert_eq!(all, expected);

    // A member that disconnects is no longer listed (its record is gone before $disconnect runs).
    c.close(None).await.unwrap();
    handler.wait_route("$disconnect", Some(&id_c)).await;
    let listed = page(None).await;
    let ids: BTreeSet<String> = serde_json::from_value(listed["connectionIds"].clone()).unwrap();
    assert_eq!(ids, [id_a.clone(), id_b.clone()].into_iter().collect());
    assert!(listed.get("nextToken").is_none(), "{listed}");
}

/// Joins `ids` to `group` on `host`.
async fn join_all(host: &TestHost, group: &str, ids: &[&String]) {
    for id in ids {
        let path = format!("/dev/@connections/{}/groups/{group}", encode_id(id));
        let r = http().put(host.http(&path)).send().await.unwrap();
        assert_eq!(r.status(), 204, "join {id}");
    }
}

/// Broadcasts `body` to `group` with `query`; the status and the JSON answer.
async fn broadcast(host: &TestHost, group: &str, query: &str, body: Vec<u8>) -> (u16, Value) {
    let r = http()
        .post(host.http(&format!("/dev/@groups/{group}{query}")))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), json_of(r).await)
}

fn counts(v: &Value) -> [u64; 4] {
    ["delivered", "dropped", "gone", "failed"].map(|k| v[k].as_u64().unwrap_or(u64::MAX))
}

#[tokio::test]
async fn a_broadcast_answers_its_counts_and_refuses_bad_input_like_a_post() {
    let host = TestHost::start(&format!("{WHOAMI}\n[extensions]\ngroups = true")).await;
    let (mut a, id_a) = client(host.addr, &[]).await;
    let (mut b, id_b) = client(host.addr, &[]).await;
    let (gone, id_gone) = client(host.addr, &[]).await;
    join_all(&host, "room", &[&id_a, &id_b, &id_gone]).await;
    drop(gone);
    // Its record may outlive the socket for a moment: wait until a post says it is gone.
    eventually("the dropped member gone", WAIT, || async {
        let r = http()
            .post(host.http(&format!("/dev/@connections/{}", encode_id(&id_gone))))
            .body("x")
            .send()
            .await
            .unwrap();
        r.status() == 410
    })
    .await;

    // An unknown group reaches nobody.
    let (status, v) = broadcast(&host, "nobody-here", "", b"hi".to_vec()).await;
    assert_eq!((status, counts(&v)), (200, [0, 0, 0, 0]), "{v}");
    // An empty body sends an empty message, as PostToConnection does.
    let (status, v) = broadcast(&host, "room", "", Vec::new()).await;
    assert_eq!(status, 200, "{v}");
    let [delivered, dropped, _, _] = counts(&v);
    assert_eq!((delivered, dropped), (2, 0), "{v}");
    assert_eq!(next_text(&mut a).await, "");
    assert_eq!(next_text(&mut b).await, "");
    // Past limits.post_size: 413, as a post.
    let (status, v) = broadcast(&host, "room", "", vec![b'x'; 131_073]).await;
    assert_eq!(status, 413, "{v}");
    // A volatile flag that is not a boolean.
    let (status, v) = broadcast(&host, "room", "?volatile=yes", b"hi".to_vec()).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("volatile"), "{v}");
    // Nothing of the refused calls arrived: the next message is the next broadcast.
    let (status, v) = broadcast(&host, "room", "?volatile=true", b"next".to_vec()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(next_text(&mut a).await, "next");
    assert_eq!(next_text(&mut b).await, "next");
}

#[tokio::test]
async fn a_full_queue_drops_a_volatile_broadcast_and_disconnects_on_a_plain_one() {
    // A queue that holds one full-size message: once the client's socket buffers are full, the
    // next broadcast finds its queue full. The host gives up on the stalled write after 5 s,
    // long after the volatile broadcasts below have found the queue full.
    let host = TestHost::start(&format!(
        "{WHOAMI}\n[limits]\noutbound_queue_bytes = 131072\noutbound_full_grace = \"5s\"\n\
         [extensions]\ngroups = true"
    ))
    .await;
    let (mut reader, id_reader) = client(host.addr, &[]).await;
    let (_stuck, id_stuck) = client(host.addr, &[]).await;
    join_all(&host, "room", &[&id_reader, &id_stuck]).await;
    let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = got.clone();
    let read = tokio::spawn(async move {
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut reader).await {
            if matches!(m, Message::Text(_)) {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let big = vec![b'v'; 131_072];
    let mut sent = 0;
    let dropped = loop {
        let (status, v) = broadcast(&host, "room", "?volatile=true", big.clone()).await;
        assert_eq!(status, 200, "{v}");
        sent += 1;
        let [delivered, dropped, gone, failed] = counts(&v);
        assert_eq!(gone, 0, "{v}");
        assert_eq!(delivered + dropped, 2, "{v}");
        assert_eq!(failed, dropped, "{v}");
        if dropped == 1 {
            break v;
        }
        // Loopback socket buffers hold a few MB at most.
        assert!(sent < 400, "the stuck member's queue never filled");
    };
    assert_eq!(counts(&dropped), [1, 1, 0, 1]);
    // Volatile left the stuck member connected.
    let status = |id: String| {
        let url = host.http(&format!("/dev/@connections/{}", encode_id(&id)));
        async move { http().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(id_stuck.clone()).await, 200);
    // A plain broadcast disconnects it instead of leaving it without the message.
    let (code, v) = broadcast(&host, "room", "", big.clone()).await;
    assert_eq!((code, counts(&v)), (200, [1, 0, 1, 1]), "{v}");
    let r = http()
        .post(host.http(&format!("/dev/@connections/{}", encode_id(&id_stuck))))
        .body("after")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410, "the stuck member is closing");
    eventually("the stuck member gone", Duration::from_secs(30), || {
        let f = status(id_stuck.clone());
        async move { f.await == 410 }
    })
    .await;
    // The reader got every broadcast (each answered delivered for it).
    eventually("the reader to get every broadcast", WAIT, || async {
        got.load(std::sync::atomic::Ordering::Relaxed) == sent + 1
    })
    .await;
    read.abort();
}

#[tokio::test]
async fn a_group_over_its_fan_out_rate_is_refused_whole_and_others_are_not() {
    let host = TestHost::start(&format!(
        "{WHOAMI}\n[extensions.groups]\nenabled = true\nfanout_rate = 1\nfanout_burst = 2"
    ))
    .await;
    let (mut a, id_a) = client(host.addr, &[]).await;
    let (mut b, id_b) = client(host.addr, &[]).await;
    let (mut c, id_c) = client(host.addr, &[]).await;
    join_all(&host, "room", &[&id_a, &id_b, &id_c]).await;
    join_all(&host, "other", &[&id_a]).await;
    // Within the burst of 2: admitted and sent to all 3, overdrawing the group.
    let (status, v) = broadcast(&host, "room", "", b"first".to_vec()).await;
    assert_eq!((status, counts(&v)), (200, [3, 0, 0, 0]), "{v}");
    // Overdrawn: refused, nothing sent.
    let r = http()
        .post(host.http("/dev/@groups/room"))
        .body("second")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        header(&r, "x-amzn-ErrorType"),
        Some("LimitExceededException")
    );
    assert!(header(&r, "retry-after").is_some());
    let v = json_of(r).await;
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("extensions.groups.fanout_rate"),
        "{message}"
    );
    assert!(message.contains("nothing was sent"), "{message}");
    // Another group has its own allowance.
    let (status, v) = broadcast(&host, "other", "", b"elsewhere".to_vec()).await;
    assert_eq!((status, counts(&v)), (200, [1, 0, 0, 0]), "{v}");
    assert_eq!(next_text(&mut a).await, "first");
    assert_eq!(next_text(&mut a).await, "elsewhere");
    for ws in [&mut b, &mut c] {
        assert_eq!(next_text(ws).await, "first");
        send_text(ws, r#"{"action":"whoami"}"#).await;
        assert!(
            next_text(ws).await.contains("connectionId"),
            "the refused broadcast reached nobody"
        );
    }
}

#[tokio::test]
async fn groups_paths_are_forbidden_when_the_extension_is_off() {
    let host = TestHost::start(WHOAMI).await;
    let (_ws, id) = client(host.addr, &[]).await;
    let member = host.http(&format!("/dev/@connections/{}/groups/room", encode_id(&id)));
    let group = host.http("/dev/@groups/room");
    for r in [
        http().put(&member).send().await.unwrap(),
        http().delete(&member).send().await.unwrap(),
        http().post(&group).body("x").send().await.unwrap(),
        http().get(&group).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 403);
        assert_eq!(header(&r, "x-amzn-ErrorType"), Some("ForbiddenException"));
    }
}

#[tokio::test]
async fn unknown_paths_stages_and_methods_are_forbidden() {
    let host = TestHost::start(WHOAMI).await;
    let (_ws, id) = client(host.addr, &[]).await;
    let id = encode_id(&id);
    // (A plain GET elsewhere under the stage is the WebSocket URL's 426: see tests/gateway.rs.)
    let cases = [
        (reqwest::Method::POST, "/dev/unknown".to_string()),
        (reqwest::Method::GET, "/dev/@unknown".to_string()),
        (reqwest::Method::POST, format!("/prod/@connections/{id}")),
        (reqwest::Method::POST, format!("/@connections/{id}")),
        (reqwest::Method::PUT, format!("/dev/@connections/{id}")),
        (reqwest::Method::PATCH, format!("/dev/@connections/{id}")),
        (reqwest::Method::GET, "/dev/@connections".to_string()),
    ];
    for (method, path) in cases {
        let r = http()
            .request(method.clone(), host.http(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        assert_eq!(
            header(&r, "x-amzn-ErrorType"),
            Some("ForbiddenException"),
            "{method} {path}"
        );
        assert_eq!(r.text().await.unwrap(), r#"{"message":"Forbidden"}"#);
    }

    let r = http().get(host.http("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").is_some_and(|v| v.starts_with("application/json")));
    let v = json_of(r).await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["connections"], json!(1));
}

#[tokio::test]
async fn a_separate_management_listener_takes_the_api_off_the_public_one() {
    init_env();
    let config = connection_host::Config::from_toml(WHOAMI).unwrap();
    let public = connection_host::bind(([127, 0, 0, 1], 0).into(), 128).unwrap();
    let internal = connection_host::bind(([127, 0, 0, 1], 0).into(), 128).unwrap();
    let (public_addr, internal_addr) =
        (public.local_addr().unwrap(), internal.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(connection_host::run(
        config,
        connection_host::Listeners {
            public,
            management: Some(internal),
        },
        async move {
            let _ = rx.await;
        },
    ));
    let (mut ws, id) = client(public_addr, &[]).await;
    let path = format!("/dev/@connections/{}", encode_id(&id));

    let on_public = http()
        .post(format!("http://{public_addr}{path}"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(on_public.status(), 403);
    assert_eq!(
        http()
            .get(format!("http://{public_addr}/dev"))
            .send()
            .await
            .unwrap()
            .status(),
        426
    );

    let on_internal = http()
        .post(format!("http://{internal_addr}{path}"))
        .body("via the internal listener")
        .send()
        .await
        .unwrap();
    assert_eq!(on_internal.status(), 200);
    assert_eq!(next_text(&mut ws).await, "via the internal listener");
    let health = http()
        .get(format!("http://{internal_addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let _ = tx.send(());
    within("run to return", run).await.unwrap().unwrap();
}
