//! Presence in the groups extension: members listed with their principal and join time, counts,
//! join and leave notices as frames or as events to a route, automatic leave when a connection
//! ends, bad input, and notices reaching members held by another host of a cluster (moto,
//! `DYNAMODB_TEST_ENDPOINT`).

mod common;

use aws_sdk_apigatewaymanagement::primitives::Blob;
use common::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// A host configuration: `$connect` behind the authorizer at `authorizer`, the connection events
/// and `extra_routes` posted to `handler`, `whoami`, and `[extensions.groups]` as `groups`.
fn config(handler: &str, authorizer: &str, groups: &str, extra_routes: &str) -> String {
    format!(
        r#"{WHOAMI}
[routes."$connect"]
integration = "h"
authorizer = "auth"
[routes."$disconnect"]
integration = "h"
{extra_routes}
[integrations.h]
type = "http"
url = "{handler}"
[authorizers.auth]
function_name = "auth"
endpoint_url = "{authorizer}"
[extensions.groups]
enabled = true
{groups}
"#
    )
}

/// A client of `principal` and its connection ID.
async fn client(addr: SocketAddr, principal: &str) -> (Ws, String) {
    let (mut ws, _) = try_connect(addr, "/dev", &[("Authorization", principal)], None)
        .await
        .unwrap();
    send_text(&mut ws, r#"{"action":"whoami"}"#).await;
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    (ws, v["connectionId"].as_str().unwrap().to_string())
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn join(base: &str, id: &str, group: &str) {
    let r = http()
        .put(format!(
            "{base}/dev/@connections/{}/groups/{group}",
            encode_id(id)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "join {id} to {group}");
}

async fn leave(base: &str, id: &str, group: &str) {
    let r = http()
        .delete(format!(
            "{base}/dev/@connections/{}/groups/{group}",
            encode_id(id)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "leave {id} from {group}");
}

/// `GET {base}{path}`: status and JSON body.
async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = http().get(format!("{base}{path}")).send().await.unwrap();
    let status = r.status().as_u16();
    let body = serde_json::from_slice(&r.bytes().await.unwrap()).expect("JSON body");
    (status, body)
}

/// Posts `marker` to `id` and expects it as the next frame of `ws`: proves nothing (a notice about
/// itself, a second notice) came before it.
async fn nothing_before_marker(host: &TestHost, ws: &mut Ws, id: &str) {
    mgmt_client(host.addr)
        .post_to_connection()
        .connection_id(id)
        .data(Blob::new("marker"))
        .send()
        .await
        .unwrap();
    assert_eq!(next_text(ws).await, "marker");
}

/// The next frame of `ws`, which must be a presence notice: checked for the documented key order
/// and returned parsed.
async fn notice(ws: &mut Ws) -> Value {
    let text = next_text(ws).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let expected = format!(
        r#"{{"type":"presence","group":{},"action":{},"connectionId":{},"principal":{},"at":{}}}"#,
        v["group"], v["action"], v["connectionId"], v["principal"], v["at"]
    );
    assert_eq!(text, expected, "exactly the documented object, in order");
    v
}

#[tokio::test]
async fn frames_tell_the_other_members_and_listing_shows_principals() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let auth = authorizer_function().await;
    let host = TestHost::start(&config(&handler.url, &auth, "presence = \"frames\"", "")).await;
    let base = host.http("");
    let (mut a, id_a) = client(host.addr, "alice").await;
    let (mut b, id_b) = client(host.addr, "bob").await;
    let (mut c, id_c) = client(host.addr, "carol").await;

    let before = connection_host::ids::now_ms();
    join(&base, &id_a, "room").await;
    join(&base, &id_b, "room").await;
    let v = notice(&mut a).await;
    assert_eq!(
        (
            &v["group"],
            &v["action"],
            &v["connectionId"],
            &v["principal"]
        ),
        (&json!("room"), &json!("join"), &json!(id_b), &json!("bob"))
    );
    let at = v["at"].as_i64().unwrap();
    assert!(at >= before && at <= connection_host::ids::now_ms(), "{v}");
    // Joining again changes nothing and tells nobody; the joiner hears nothing about itself.
    join(&base, &id_b, "room").await;
    nothing_before_marker(&host, &mut a, &id_a).await;
    nothing_before_marker(&host, &mut b, &id_b).await;

    let (status, listed) = get(&base, "/dev/@groups/room").await;
    assert_eq!(status, 200);
    let mut members: Vec<Value> = listed["members"].as_array().unwrap().clone();
    members.sort_by_key(|m| m["principal"].as_str().unwrap().to_string());
    assert_eq!(members.len(), 2, "{listed}");
    assert_eq!(
        (&members[0]["connectionId"], &members[0]["principal"]),
        (&json!(id_a), &json!("alice"))
    );
    assert_eq!(
        members[1],
        json!({"connectionId": id_b, "principal": "bob", "joinedAt": at}),
        "the first join's time is kept"
    );
    let mut ids: Vec<String> = serde_json::from_value(listed["connectionIds"].clone()).unwrap();
    ids.sort();
    let mut expected = vec![id_a.clone(), id_b.clone()];
    expected.sort();
    assert_eq!(ids, expected, "connectionIds kept for existing callers");
    assert!(listed.get("nextToken").is_none(), "{listed}");
    assert_eq!(
        get(&base, "/dev/@groups/room/count").await,
        (200, json!({"count": 2}))
    );

    // An explicit leave tells the members that remain.
    join(&base, &id_c, "room").await;
    for ws in [&mut a, &mut b] {
        let v = notice(ws).await;
        assert_eq!(
            (&v["action"], &v["principal"]),
            (&json!("join"), &json!("carol"))
        );
    }
    leave(&base, &id_a, "room").await;
    for ws in [&mut b, &mut c] {
        let v = notice(ws).await;
        assert_eq!(
            (&v["action"], &v["connectionId"], &v["principal"]),
            (&json!("leave"), &json!(id_a), &json!("alice"))
        );
    }
    nothing_before_marker(&host, &mut a, &id_a).await;
    // Leaving again is no leave: nobody is told twice.
    leave(&base, &id_a, "room").await;
    nothing_before_marker(&host, &mut b, &id_b).await;

    // A connection that ends leaves by itself, and the group is told.
    c.close(None).await.unwrap();
    let v = within("the automatic leave notice", notice(&mut b)).await;
    assert_eq!(
        (&v["action"], &v["connectionId"], &v["principal"]),
        (&json!("leave"), &json!(id_c), &json!("carol"))
    );
    assert_eq!(
        get(&base, "/dev/@groups/room/count").await,
        (200, json!({"count": 1}))
    );
}

#[tokio::test]
async fn unknown_groups_and_bad_input() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let auth = authorizer_function().await;
    let host = TestHost::start(&config(&handler.url, &auth, "", "")).await;
    let base = host.http("");
    let (_a, id_a) = client(host.addr, "alice").await;
    join(&base, &id_a, "room").await;

    assert_eq!(
        get(&base, "/dev/@groups/nobody-here").await,
        (200, json!({"members": [], "connectionIds": []}))
    );
    assert_eq!(
        get(&base, "/dev/@groups/nobody-here/count").await,
        (200, json!({"count": 0}))
    );
    for limit in ["0", "1001", "-1", "ten", ""] {
        let (status, body) = get(&base, &format!("/dev/@groups/room?limit={limit}")).await;
        assert_eq!(status, 400, "limit={limit}");
        assert_eq!(body["message"], "limit must be 1 to 1000", "limit={limit}");
    }
    for token in ["abc", "after-this", "%21%21"] {
        let (status, body) = get(&base, &format!("/dev/@groups/room?nextToken={token}")).await;
        assert_eq!(status, 400, "nextToken={token}");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("invalid nextToken: "), "{message}");
    }
    // Only GET counts.
    let r = http()
        .post(format!("{base}/dev/@groups/room/count"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn route_presence_sends_events_with_the_members_context() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let auth = authorizer_function().await;
    let host = TestHost::start(&config(
        &handler.url,
        &auth,
        "presence = \"route\"",
        "[routes.\"$presence\"]\nintegration = \"h\"",
    ))
    .await;
    let base = host.http("");
    let (mut a, id_a) = client(host.addr, "alice").await;
    let (_b, id_b) = client(host.addr, "bob").await;
    join(&base, &id_a, "room").await;
    join(&base, &id_b, "room").await;
    let joined = handler
        .wait_for("bob's join event", |e| {
            route(e) == "$presence" && conn_id(e) == id_b
        })
        .await;
    assert_eq!(event_type(&joined), "MESSAGE");
    assert_eq!(joined["requestContext"]["authorizer"]["principalId"], "bob");
    let body: Value = serde_json::from_str(joined["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            &body["type"],
            &body["group"],
            &body["action"],
            &body["principal"]
        ),
        (
            &json!("presence"),
            &json!("room"),
            &json!("join"),
            &json!("bob")
        )
    );
    // No frames in this mode.
    nothing_before_marker(&host, &mut a, &id_a).await;

    a.close(None).await.unwrap();
    let left = handler
        .wait_for("alice's leave event", |e| {
            route(e) == "$presence"
                && conn_id(e) == id_a
                && e["body"].as_str().is_some_and(|b| b.contains("\"leave\""))
        })
        .await;
    assert_eq!(left["requestContext"]["authorizer"]["principalId"], "alice");
}

#[tokio::test]
async fn route_presence_falls_back_to_default() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let auth = authorizer_function().await;
    let host = TestHost::start(&config(
        &handler.url,
        &auth,
        "presence = \"route\"",
        "[routes.\"$default\"]\nintegration = \"h\"",
    ))
    .await;
    let (_a, id_a) = client(host.addr, "alice").await;
    join(&host.http(""), &id_a, "lobby").await;
    let event = handler
        .wait_for("the join event on $default", |e| {
            route(e) == "$default" && conn_id(e) == id_a
        })
        .await;
    let body: Value = serde_json::from_str(event["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&body["group"], &body["action"]),
        (&json!("lobby"), &json!("join"))
    );
}

/// Two hosts on one DynamoDB store: a member held by the other host gets the notice, through the
/// broadcast's host-to-host delivery.
#[tokio::test]
async fn a_notice_reaches_a_member_on_another_host() {
    let Some(tables) = TestTables::create("presence_cluster").await else {
        return;
    };
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let auth = authorizer_function().await;
    let start = async |host_id: &str| {
        let listener = loopback_listener();
        let addr = listener.local_addr().unwrap();
        let toml = format!(
            r#"{}
[store]
kind = "dynamodb"
connections_table = "{}"
groups_table = "{}"
sessions_table = "{}"
endpoint_url = "{}"
[cluster]
host_id = "{host_id}"
advertise_url = "http://{addr}"
secret = "presence-cluster-secret-0123456789"
"#,
            config(&handler.url, &auth, "presence = \"frames\"", ""),
            tables.connections(),
            tables.groups(),
            tables.sessions(),
            tables.endpoint(),
        );
        TestHost::start_on(listener, &toml).await
    };
    let one = start("one").await;
    let two = start("two").await;
    let (mut a, id_a) = client(one.addr, "alice").await;
    let (_b, id_b) = client(two.addr, "bob").await;
    // Each join is made through the host that does not hold the connection.
    join(&two.http(""), &id_a, "room").await;
    join(&one.http(""), &id_b, "room").await;
    let v = within("the notice from the other host", notice(&mut a)).await;
    assert_eq!(
        (&v["action"], &v["connectionId"], &v["principal"]),
        (&json!("join"), &json!(id_b), &json!("bob"))
    );
    let (_, count) = get(&two.http(""), "/dev/@groups/room/count").await;
    assert_eq!(count, json!({"count": 2}));
    drop((one, two));
    tables.delete().await;
}

/// A listing of a large group in pages of 1000: every member once, each with its principal (the
/// store suites cover DynamoDB paging across shards).
#[tokio::test]
async fn a_large_group_lists_in_pages() {
    let store = Arc::new(connection_host::store::MemoryStore::new());
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = TestHost::start_with_store(
        &format!("{WHOAMI}\n[extensions]\ngroups = true\n[routes.\"$connect\"]\nintegration = \"h\"\n[integrations.h]\ntype = \"http\"\nurl = \"{}\"\n", handler.url),
        store.clone(),
    )
    .await;
    use connection_host::store::{ConnectionStore, Member};
    for i in 0..2_500 {
        let member = Member {
            connection_id: format!("m{i:05}"),
            principal: format!("p{i}"),
            joined_at: i,
        };
        store.add_to_group("big", &member).await.unwrap();
    }
    let base = host.http("");
    let mut seen = std::collections::BTreeSet::new();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/dev/@groups/big?limit=1000&nextToken={t}"),
            None => "/dev/@groups/big?limit=1000".to_string(),
        };
        let (status, page) = get(&base, &path).await;
        assert_eq!(status, 200, "{page}");
        let members = page["members"].as_array().unwrap();
        sizes.push(members.len());
        for m in members {
            let id = m["connectionId"].as_str().unwrap();
            let i: i64 = id[1..].parse().unwrap();
            assert_eq!(m["principal"], format!("p{i}"));
            assert_eq!(m["joinedAt"], i);
            assert!(seen.insert(id.to_string()), "{id} listed twice");
        }
        token = page["nextToken"].as_str().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(sizes, [1000, 1000, 500]);
    assert_eq!(seen.len(), 2_500);
    assert_eq!(
        get(&base, "/dev/@groups/big/count").await,
        (200, json!({"count": 2500}))
    );
}
