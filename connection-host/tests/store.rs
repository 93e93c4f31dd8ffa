//! The connection store: one suite of assertions run against `MemoryStore` and `DynamoDbStore`
//! (on the DynamoDB-API server in `DYNAMODB_TEST_ENDPOINT`, moto under `tests/run.sh`), plus the
//! DynamoDB-only behaviour (table setup, expiry, unreachable endpoint) and the host end to end on
//! DynamoDB. Every DynamoDB test works in its own uniquely named tables.

mod common;

use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use common::*;
use connection_host::server::RunError;
use connection_host::store::{
    Claim, ConnectionRecord, ConnectionStore, DynamoDbStore, HostRecord, KeyClaim, Member,
    SessionRecord, StoreError, StoredFrame,
};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn record(id: &str, user_agent: Option<&str>) -> ConnectionRecord {
    ConnectionRecord {
        connection_id: id.into(),
        connected_at: now_ms(),
        source_ip: "203.0.113.7".into(),
        user_agent: user_agent.map(str::to_string),
        owner_host: "host-1".into(),
        owner_incarnation: "inc-1".into(),
        owner_endpoint: "http://127.0.0.1:9080".into(),
        authorizer: None,
        session: None,
    }
}

/// A record whose connection passed an authorizer: claims of every JSON type, nested.
fn authorized(id: &str, host: &str) -> ConnectionRecord {
    let claims = serde_json::json!({
        "principalId": "user-7",
        "sub": "user-7",
        "groups": ["admins", "chat"],
        "exp": 1_900_000_000,
        "ratio": 0.5,
        "verified": true,
        "nickname": null,
        "org": {"id": "o-1", "tier": "gold"},
    });
    ConnectionRecord {
        authorizer: claims.as_object().cloned(),
        ..owned(id, host, "1")
    }
}

fn owned(id: &str, host: &str, incarnation: &str) -> ConnectionRecord {
    ConnectionRecord {
        owner_host: host.into(),
        owner_incarnation: incarnation.into(),
        owner_endpoint: format!("http://{host}:9080"),
        ..record(id, None)
    }
}

/// A membership of `id` with a principal named after it.
fn member(id: &str) -> Member {
    Member {
        connection_id: id.into(),
        principal: format!("user-of-{id}"),
        joined_at: 1_733_400_000_000,
    }
}

/// The connection IDs of a page.
fn ids_of(page: &connection_host::store::MembersPage) -> Vec<String> {
    page.members
        .iter()
        .map(|m| m.connection_id.clone())
        .collect()
}

fn host_record(host_id: &str, incarnation: &str, heartbeat_at: i64) -> HostRecord {
    HostRecord {
        host_id: host_id.into(),
        incarnation: incarnation.into(),
        endpoint: format!("http://{host_id}:9080"),
        heartbeat_at,
        reaping: false,
    }
}

/// Every member of `group`, following `next_token`, with the size of each page.
async fn all_members(
    store: &dyn ConnectionStore,
    group: &str,
    limit: usize,
) -> (Vec<String>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .group_members(group, token.as_deref(), limit)
            .await
            .unwrap();
        assert!(page.members.len() <= limit, "{page:?}");
        sizes.push(page.members.len());
        ids.extend(ids_of(&page));
        token = page.next_token;
        if token.is_none() {
            return (ids, sizes);
        }
        assert!(sizes.len() < 100, "paging does not end");
    }
}

// ---------------------------------------------------------------------------------------------
// The shared suite.
// ---------------------------------------------------------------------------------------------

async fn suite_put_get_delete(store: &dyn ConnectionStore) {
    let a = record("conn-a", Some("test-agent/1.0"));
    store.put_connection(a.clone()).await.unwrap();
    assert_eq!(
        store.get_connection("conn-a").await.unwrap(),
        Some(a.clone())
    );
    // Another writer (host, or incarnation of the same host) cannot overwrite it.
    for other in [
        owned("conn-a", "host-2", "inc-1"),
        owned("conn-a", "host-1", "inc-2"),
    ] {
        let writer = format!("{}/{}", other.owner_host, other.owner_incarnation);
        match store.put_connection(other).await {
            Err(StoreError::AlreadyExists(id)) => assert_eq!(id, "conn-a"),
            other => {
                panic!("a put of conn-a by {writer} must fail with AlreadyExists, got {other:?}")
            }
        }
    }
    // The failed puts left the first record untouched.
    assert_eq!(
        store.get_connection("conn-a").await.unwrap(),
        Some(a.clone())
    );
    // The same writer's put again (a retry of a write that landed) succeeds: the write is idempotent.
    store.put_connection(a.clone()).await.unwrap();
    assert_eq!(store.get_connection("conn-a").await.unwrap(), Some(a));

    let b = record("conn-b", None);
    store.put_connection(b.clone()).await.unwrap();
    assert_eq!(
        store.get_connection("conn-b").await.unwrap(),
        Some(b.clone())
    );
    assert_eq!(store.get_connection("conn-none").await.unwrap(), None);

    store.delete_connection("conn-a").await.unwrap();
    assert_eq!(store.get_connection("conn-a").await.unwrap(), None);
    store.delete_connection("conn-a").await.unwrap();
    assert_eq!(store.get_connection("conn-b").await.unwrap(), Some(b));
    // A deleted ID can be written again.
    store.put_connection(record("conn-a", None)).await.unwrap();
}

async fn suite_delete_removes_memberships(store: &dyn ConnectionStore) {
    for id in ["m-a", "m-b"] {
        store.put_connection(record(id, None)).await.unwrap();
    }
    store.add_to_group("g1", &member("m-a")).await.unwrap();
    store.add_to_group("g2", &member("m-a")).await.unwrap();
    store.add_to_group("g1", &member("m-b")).await.unwrap();
    let mut groups = store.groups_of("m-a").await.unwrap();
    groups.sort();
    assert_eq!(groups, ["g1", "g2"], "a session taken in loads these");
    // The groups it left, for the leave notices.
    let mut left = store.delete_connection("m-a").await.unwrap();
    left.sort();
    assert_eq!(left, ["g1", "g2"]);
    assert!(store.delete_connection("m-a").await.unwrap().is_empty());
    assert!(store.groups_of("m-a").await.unwrap().is_empty());
    let (g1, _) = all_members(store, "g1", 10).await;
    assert_eq!(g1, vec!["m-b".to_string()]);
    let g2 = store.group_members("g2", None, 10).await.unwrap();
    assert!(g2.members.is_empty(), "{g2:?}");
    assert_eq!(g2.next_token, None);
    assert_eq!(store.group_count("g1").await.unwrap(), 1);
    assert_eq!(store.group_count("g2").await.unwrap(), 0);
}

async fn suite_add_remove_idempotent(store: &dyn ConnectionStore) {
    assert!(store.add_to_group("room", &member("i-a")).await.unwrap());
    // Joining again is no new membership and keeps the first one's time and principal.
    let again = Member {
        principal: "someone-else".into(),
        joined_at: 1_733_400_999_999,
        ..member("i-a")
    };
    assert!(!store.add_to_group("room", &again).await.unwrap());
    assert!(store.add_to_group("room", &member("i-b")).await.unwrap());
    let page = store.group_members("room", None, 10).await.unwrap();
    let mut members = page.members.clone();
    members.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
    assert_eq!(members, [member("i-a"), member("i-b")]);
    assert_eq!(
        store.remove_from_group("room", "i-a").await.unwrap(),
        Some(member("i-a")),
        "the ended membership comes back"
    );
    assert_eq!(store.remove_from_group("room", "i-a").await.unwrap(), None);
    assert_eq!(
        store.remove_from_group("nowhere", "i-a").await.unwrap(),
        None
    );
    let (ids, _) = all_members(store, "room", 10).await;
    assert_eq!(ids, vec!["i-b".to_string()]);
    // Joining after leaving is a new membership.
    assert!(store.add_to_group("room", &again).await.unwrap());
    let page = store.group_members("room", None, 10).await.unwrap();
    assert!(page.members.contains(&again), "{page:?}");
}

async fn suite_paging(store: &dyn ConnectionStore) {
    let expected: Vec<String> = (0..27).map(|i| format!("p-{i:02}")).collect();
    for id in &expected {
        store.add_to_group("big", &member(id)).await.unwrap();
    }
    // A neighbouring group must not leak into the pages.
    store.add_to_group("big2", &member("p-xx")).await.unwrap();

    let (ids, sizes) = all_members(store, "big", 10).await;
    assert_eq!(sizes, vec![10, 10, 7]);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "every member exactly once");
    // The order is stable: another listing in other page sizes sees the same sequence.
    // 27 = 3 × 9: the third page is the last and says so (no empty fourth page).
    let (again, sizes) = all_members(store, "big", 9).await;
    assert_eq!(sizes, vec![9, 9, 9]);
    assert_eq!(again, ids);
    let (again, sizes) = all_members(store, "big", 100).await;
    assert_eq!(sizes, vec![27]);
    assert_eq!(again, ids);
    let (again, sizes) = all_members(store, "big", 1).await;
    assert_eq!(sizes, vec![1; 27]);
    assert_eq!(again, ids);
    assert_eq!(store.group_count("big").await.unwrap(), 27);
    assert_eq!(store.group_count("big2").await.unwrap(), 1);
}

async fn suite_empty_group(store: &dyn ConnectionStore) {
    let page = store.group_members("empty", None, 10).await.unwrap();
    assert!(page.members.is_empty());
    assert_eq!(page.next_token, None);
    assert_eq!(store.group_count("empty").await.unwrap(), 0);
}

/// A group of several pages, over every shard: each member listed once, with its principal, and
/// counted. (Modest, for moto: it takes milliseconds per item it returns, and a page of 1,000
/// would outlast the client's 2 s attempt timeout. The HTTP listing of 2,500 members is in
/// tests/presence.rs, of 10,000 in the bench.)
async fn suite_huge_group(store: &dyn ConnectionStore) {
    const N: usize = 250;
    let joins = (0..N).map(|i| async move {
        store
            .add_to_group("huge", &member(&format!("h-{i:05}")))
            .await
            .unwrap()
    });
    // A few at a time: moto serialises its calls anyway.
    let joined: Vec<bool> = futures_util::stream::iter(joins)
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(joined.iter().all(|j| *j));
    let mut seen = BTreeSet::new();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .group_members("huge", token.as_deref(), 100)
            .await
            .unwrap();
        sizes.push(page.members.len());
        for m in page.members {
            assert_eq!(m.principal, format!("user-of-{}", m.connection_id));
            assert!(seen.insert(m.connection_id), "listed twice");
        }
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(seen.len(), N);
    assert_eq!(store.group_count("huge").await.unwrap(), N as u64);
}

async fn suite_bad_tokens(store: &dyn ConnectionStore) {
    for id in ["t-a", "t-b", "t-c"] {
        store.add_to_group("tokens", &member(id)).await.unwrap();
    }
    let first = store.group_members("tokens", None, 1).await.unwrap();
    let token = first.next_token.clone().expect("a second page");
    // A token is opaque: a connection ID, text, or a token of a shard the table lacks is refused.
    for bad in ["t-a", "after-this", "", "!!", "OTk5OnQtYQ"] {
        match store.group_members("tokens", Some(bad), 1).await {
            Err(StoreError::InvalidToken(reason)) => assert!(!reason.is_empty()),
            other => panic!("token {bad:?} must be refused, got {other:?}"),
        }
    }
    // The real token still works, for any group (an unknown one has nothing after it).
    let second = store
        .group_members("tokens", Some(&token), 1)
        .await
        .unwrap();
    assert_eq!(second.members.len(), 1);
    assert_ne!(second.members, first.members);
    let elsewhere = store
        .group_members("nowhere", Some(&token), 5)
        .await
        .unwrap();
    assert!(elsewhere.members.is_empty(), "{elsewhere:?}");
    assert_eq!(elsewhere.next_token, None);
}

async fn suite_records_name_their_owner(store: &dyn ConnectionStore) {
    let records = [
        owned("o-a", "h1", "1"),
        owned("o-b", "h1", "2"),
        owned("o-c", "h2", "1"),
    ];
    for r in &records {
        store.put_connection(r.clone()).await.unwrap();
    }
    let read = store.get_connection("o-a").await.unwrap().unwrap();
    assert_eq!(read, records[0]);
    assert_eq!(
        (read.owner_host.as_str(), read.owner_incarnation.as_str()),
        ("h1", "1")
    );
    assert_eq!(store.get_connection("missing").await.unwrap(), None);

    let first = store.connections_of_host("h1", None, 1).await.unwrap();
    assert_eq!(first.records, vec![records[0].clone()]);
    let token = first.next_token.expect("a second page");
    let second = store
        .connections_of_host("h1", Some(&token), 1)
        .await
        .unwrap();
    assert_eq!(second.records, vec![records[1].clone()]);
    assert_eq!(second.next_token, None, "two records: no third page");
    let h2 = store.connections_of_host("h2", None, 10).await.unwrap();
    assert_eq!(h2.records, vec![records[2].clone()]);
    assert_eq!(h2.next_token, None);
    assert!(
        store
            .connections_of_host("nobody", None, 10)
            .await
            .unwrap()
            .records
            .is_empty()
    );
    store.delete_connection("o-a").await.unwrap();
    let h1 = store.connections_of_host("h1", None, 10).await.unwrap();
    assert_eq!(h1.records, vec![records[1].clone()]);
}

async fn suite_authorizer_context_round_trips(store: &dyn ConnectionStore) {
    let with = authorized("auth-a", "ha");
    let without = owned("auth-b", "ha", "1");
    store.put_connection(with.clone()).await.unwrap();
    store.put_connection(without.clone()).await.unwrap();

    let read = store.get_connection("auth-a").await.unwrap().unwrap();
    assert_eq!(read.authorizer, with.authorizer);
    assert_eq!(read, with);
    let read = store.get_connection("auth-b").await.unwrap().unwrap();
    assert_eq!(
        read.authorizer, None,
        "no authorizer must read back as none"
    );

    // The reaper's listing sees the same claims.
    let page = store.connections_of_host("ha", None, 10).await.unwrap();
    assert_eq!(page.records, vec![with, without]);
}

async fn suite_host_liveness(store: &dyn ConnectionStore) {
    assert!(store.hosts().await.unwrap().is_empty());
    assert_eq!(store.get_host("h1").await.unwrap(), None);
    store
        .register_host(&host_record("h1", "a", 1_000))
        .await
        .unwrap();
    store
        .register_host(&host_record("h2", "x", 1_000))
        .await
        .unwrap();
    let mut hosts = store.hosts().await.unwrap();
    hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    assert_eq!(
        hosts,
        vec![host_record("h1", "a", 1_000), host_record("h2", "x", 1_000)]
    );
    // Host records are not connections of anyone.
    assert!(
        store
            .connections_of_host("h1", None, 10)
            .await
            .unwrap()
            .records
            .is_empty()
    );

    assert!(store.heartbeat("h1", "a", 2_000).await.unwrap());
    assert_eq!(
        store.get_host("h1").await.unwrap(),
        Some(host_record("h1", "a", 2_000))
    );
    assert!(
        !store.heartbeat("h1", "other", 3_000).await.unwrap(),
        "another incarnation's heartbeat fails"
    );
    assert!(!store.heartbeat("nobody", "a", 3_000).await.unwrap());

    // A reaper that saw an old heartbeat loses; one that saw the current one claims the host, and
    // the host's own heartbeats fail from then on.
    assert!(
        !store
            .begin_reap(&host_record("h1", "a", 1_000))
            .await
            .unwrap()
    );
    assert!(
        store
            .begin_reap(&host_record("h1", "a", 2_000))
            .await
            .unwrap()
    );
    assert!(store.get_host("h1").await.unwrap().unwrap().reaping);
    assert!(!store.heartbeat("h1", "a", 4_000).await.unwrap());

    store.remove_host("h1", "other").await.unwrap();
    assert!(
        store.get_host("h1").await.unwrap().is_some(),
        "kept: other incarnation"
    );
    store.remove_host("h1", "a").await.unwrap();
    assert_eq!(store.get_host("h1").await.unwrap(), None);
    store.remove_host("h1", "a").await.unwrap();

    // A restart replaces the record: new incarnation, not reaping.
    store
        .register_host(&host_record("h2", "y", 5_000))
        .await
        .unwrap();
    assert_eq!(
        store.hosts().await.unwrap(),
        vec![host_record("h2", "y", 5_000)]
    );
    assert!(!store.heartbeat("h2", "x", 6_000).await.unwrap());
    assert!(store.heartbeat("h2", "y", 6_000).await.unwrap());
}

/// A record of a reliable session held by `host`/`incarnation`.
fn session_record(id: &str, host: &str, incarnation: &str, token_hash: &str) -> ConnectionRecord {
    ConnectionRecord {
        session: Some(Box::new(SessionRecord {
            previous_token_hash: String::new(),
            token_hash: token_hash.into(),
            principal: "user-7".into(),
            detached_at: 0,
            key_scope: String::new(),
        })),
        ..owned(id, host, incarnation)
    }
}

/// A frame of about 8 KB whose text names its sequence number (so a misplaced one shows).
fn big_frame(seq: u64) -> StoredFrame {
    StoredFrame {
        seq,
        frame: format!(
            "{{\"t\":\"msg\",\"seq\":{seq},\"body\":\"{}\"}}",
            "x".repeat(8 * 1024)
        ),
    }
}

async fn suite_session_fields_round_trip(store: &dyn ConnectionStore) {
    let with = session_record("sess-a", "host-1", "inc-1", "ab12");
    store.put_connection(with.clone()).await.unwrap();
    assert_eq!(
        store.get_connection("sess-a").await.unwrap(),
        Some(with.clone())
    );
    // A detached session without a principal, carrying on another's keys: all of it survives
    // as written.
    let detached = ConnectionRecord {
        session: Some(Box::new(SessionRecord {
            previous_token_hash: String::new(),
            token_hash: "cd34".into(),
            principal: String::new(),
            detached_at: 1_700_000_000_123,
            key_scope: "sess-0".into(),
        })),
        ..owned("sess-b", "host-1", "inc-1")
    };
    store.put_connection(detached.clone()).await.unwrap();
    let plain = owned("sess-c", "host-1", "inc-1");
    store.put_connection(plain.clone()).await.unwrap();
    assert_eq!(store.get_connection("sess-c").await.unwrap(), Some(plain));
    assert_eq!(
        store.get_connection("sess-b").await.unwrap(),
        Some(detached)
    );
}

/// What is kept of an ended session comes back until it expires, and the keys claimed under its
/// ID outlive its record.
async fn suite_ended_sessions(store: &dyn ConnectionStore) {
    assert_eq!(store.ended_session("ended-a").await.unwrap(), None);
    let ended = SessionRecord {
        token_hash: "ab12".into(),
        previous_token_hash: "cd34 ef56".into(),
        principal: "user-7".into(),
        detached_at: 0,
        key_scope: "ended-0".into(),
    };
    let now = now_ms();
    let record = session_record("ended-a", "host-1", "inc-1", "ab12");
    store.put_connection(record).await.unwrap();
    store
        .claim_key("ended-a", "k1", &claim("host-1", now), now + 60_000)
        .await
        .unwrap();
    store
        .complete_key("ended-a", "k1", "answer", now + 60_000)
        .await
        .unwrap();
    store
        .keep_ended_session("ended-a", &ended, now + 60_000)
        .await
        .unwrap();
    store.delete_connection("ended-a").await.unwrap();
    assert_eq!(
        store.ended_session("ended-a").await.unwrap(),
        Some(ended.clone())
    );
    assert_eq!(
        store
            .claim_key("ended-a", "k1", &claim("host-2", now), now + 60_000)
            .await
            .unwrap(),
        KeyClaim::Done("answer".into())
    );
    // Expired: gone, although the store may not have removed it yet.
    store
        .keep_ended_session("ended-b", &ended, now - 1_000)
        .await
        .unwrap();
    assert_eq!(store.ended_session("ended-b").await.unwrap(), None);
}

/// A new resume token replaces only the token it was issued against.
async fn suite_rotate_token(store: &dyn ConnectionStore) {
    let first = session_record("rotate", "host-1", "inc-1", "token-1");
    store.put_connection(first.clone()).await.unwrap();
    let by_one = session_record("rotate", "host-1", "inc-1", "token-2");
    let by_other = session_record("rotate", "host-1", "inc-1", "token-3");
    // Two resumes read token-1; the first to write wins, the other's write is refused.
    assert!(
        store
            .rotate_token(&by_one, "host-1", "inc-1", "token-1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_token(&by_other, "host-1", "inc-1", "token-1")
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_connection("rotate").await.unwrap(),
        Some(by_one.clone())
    );
    // The owner is checked too.
    assert!(
        !store
            .rotate_token(&by_other, "host-2", "inc-1", "token-2")
            .await
            .unwrap()
    );
    assert!(
        store
            .rotate_token(&by_other, "host-1", "inc-1", "token-2")
            .await
            .unwrap()
    );
    // A plain connection has no token to replace.
    store
        .put_connection(owned("rotate-plain", "host-1", "inc-1"))
        .await
        .unwrap();
    let with_session = session_record("rotate-plain", "host-1", "inc-1", "token-1");
    assert!(
        !store
            .rotate_token(&with_session, "host-1", "inc-1", "")
            .await
            .unwrap()
    );
}

async fn suite_take_over(store: &dyn ConnectionStore) {
    let first = session_record("take", "host-1", "inc-1", "token-1");
    store.put_connection(first.clone()).await.unwrap();
    store.add_to_group("room", &member("take")).await.unwrap();
    store.add_to_group("lobby", &member("take")).await.unwrap();
    let moved = ConnectionRecord {
        connected_at: first.connected_at + 5_000,
        ..session_record("take", "host-2", "inc-9", "token-2")
    };

    // Only the owner the caller expects can be replaced.
    for (host, incarnation) in [
        ("host-1", "inc-2"),
        ("host-2", "inc-1"),
        ("host-2", "inc-9"),
    ] {
        assert!(
            !store.take_over(&moved, host, incarnation).await.unwrap(),
            "expected {host}/{incarnation}"
        );
        assert_eq!(
            store.get_connection("take").await.unwrap(),
            Some(first.clone())
        );
    }
    assert!(store.take_over(&moved, "host-1", "inc-1").await.unwrap());
    assert_eq!(
        store.get_connection("take").await.unwrap(),
        Some(moved.clone())
    );
    // The previous owner lost it: a second take-over expecting it fails.
    assert!(!store.take_over(&first, "host-1", "inc-1").await.unwrap());
    assert_eq!(
        store.get_connection("take").await.unwrap(),
        Some(moved.clone())
    );
    // The new owner can replace its own record (a new resume token).
    let renewed = session_record("take", "host-2", "inc-9", "token-3");
    assert!(store.take_over(&renewed, "host-2", "inc-9").await.unwrap());
    assert_eq!(store.get_connection("take").await.unwrap(), Some(renewed));
    // Memberships are untouched by every take-over.
    for group in ["room", "lobby"] {
        let (members, _) = all_members(store, group, 10).await;
        assert_eq!(members, vec!["take".to_string()], "{group}");
    }
    // A host outside a cluster writes empty owner fields: they match empty expectations only.
    let solo = ConnectionRecord {
        owner_host: String::new(),
        owner_incarnation: String::new(),
        owner_endpoint: String::new(),
        ..session_record("solo", "", "", "token-1")
    };
    store.put_connection(solo.clone()).await.unwrap();
    let renewed_solo = ConnectionRecord {
        session: Some(Box::new(SessionRecord {
            previous_token_hash: String::new(),
            token_hash: "token-2".into(),
            ..*solo.session.clone().unwrap()
        })),
        ..solo.clone()
    };
    assert!(
        !store
            .take_over(&renewed_solo, "host-1", "inc-1")
            .await
            .unwrap()
    );
    assert!(!store.take_over(&renewed_solo, "", "inc-1").await.unwrap());
    assert!(store.take_over(&renewed_solo, "", "").await.unwrap());
    assert_eq!(
        store.get_connection("solo").await.unwrap(),
        Some(renewed_solo)
    );
    assert!(
        store
            .append_frame(
                "solo",
                "",
                "",
                &StoredFrame {
                    seq: 1,
                    frame: "f".into()
                },
                now_ms() + 60_000
            )
            .await
            .unwrap()
    );
    // Nothing to take over when the record is gone.
    let ghost = session_record("ghost", "host-2", "inc-9", "t");
    assert!(!store.take_over(&ghost, "host-1", "inc-1").await.unwrap());
    assert_eq!(store.get_connection("ghost").await.unwrap(), None);
}

/// A claim of host `host`'s first incarnation at `at`.
fn claim(host: &str, at: i64) -> Claim {
    Claim {
        claimed_at: at,
        host_id: host.to_string(),
        incarnation: "inc-1".to_string(),
        attempt: format!("{host}@{at}"),
    }
}

async fn suite_idempotency_keys(store: &dyn ConnectionStore) {
    let now = now_ms();
    let expires = now + 60_000;
    let first = claim("host-1", now);
    assert_eq!(
        store
            .claim_key("conn-k", "k1", &first, expires)
            .await
            .unwrap(),
        KeyClaim::Claimed
    );
    // A second attempt sees the first one's claim: its time and its host.
    assert_eq!(
        store
            .claim_key("conn-k", "k1", &claim("host-2", now + 10), expires + 10)
            .await
            .unwrap(),
        KeyClaim::Pending(first.clone())
    );
    // The first attempt trying again (its write landed, its answer was lost) finds its own
    // claim; another attempt on the same host does not.
    let retried = Claim {
        claimed_at: now + 5,
        ..first.clone()
    };
    assert_eq!(
        store
            .claim_key("conn-k", "k1", &retried, expires)
            .await
            .unwrap(),
        KeyClaim::Claimed
    );
    let other = Claim {
        attempt: "another".into(),
        ..retried.clone()
    };
    assert!(matches!(
        store.claim_key("conn-k", "k1", &other, expires).await.unwrap(),
        KeyClaim::Pending(held) if held.attempt == first.attempt
    ));
    // Another attempt cannot release it; its own attempt can (its claim's write landed although
    // it saw it fail, and it will not invoke).
    store.release_key("conn-k", "k3", &first).await.unwrap();
    assert_eq!(
        store
            .claim_key("conn-k", "k3", &first, expires)
            .await
            .unwrap(),
        KeyClaim::Claimed
    );
    store.release_key("conn-k", "k3", &other).await.unwrap();
    assert!(matches!(
        store.claim_key("conn-k", "k3", &other, expires).await.unwrap(),
        KeyClaim::Pending(held) if held.attempt == first.attempt
    ));
    store.release_key("conn-k", "k3", &first).await.unwrap();
    assert_eq!(
        store
            .claim_key("conn-k", "k3", &other, expires)
            .await
            .unwrap(),
        KeyClaim::Claimed,
        "released, the key is free for the next attempt"
    );
    // Keys are per key and per connection.
    assert_eq!(
        store
            .claim_key("conn-k", "k2", &first, expires)
            .await
            .unwrap(),
        KeyClaim::Claimed
    );
    assert_eq!(
        store
            .claim_key("conn-l", "k1", &first, expires)
            .await
            .unwrap(),
        KeyClaim::Claimed
    );
    let answer = r#"{"t":"reply","key":"k1","status":200,"body":"done"}"#;
    store
        .complete_key("conn-k", "k1", answer, expires)
        .await
        .unwrap();
    // Completing again (a retried write) changes nothing.
    store
        .complete_key("conn-k", "k1", answer, expires)
        .await
        .unwrap();
    // Nor does a release: the key is done.
    store.release_key("conn-k", "k1", &first).await.unwrap();
    assert_eq!(
        store
            .claim_key("conn-k", "k1", &claim("host-2", now + 20), expires + 20)
            .await
            .unwrap(),
        KeyClaim::Done(answer.to_string())
    );
    assert_eq!(
        store
            .claim_key("conn-k", "k2", &claim("host-2", now + 20), expires + 20)
            .await
            .unwrap(),
        KeyClaim::Pending(first.clone()),
        "completing k1 leaves k2 pending"
    );
    // A completed key cannot be reclaimed.
    assert!(
        !store
            .reclaim_key("conn-k", "k1", &first, &claim("host-2", now + 30), expires)
            .await
            .unwrap()
    );

    // Once expired, a done key and a pending one are free again, and the new claim holds.
    let later = expires + 1_000;
    for key in ["k1", "k2"] {
        let again = claim("host-1", later);
        assert_eq!(
            store
                .claim_key("conn-k", key, &again, later + 60_000)
                .await
                .unwrap(),
            KeyClaim::Claimed,
            "{key} after its expiry"
        );
        assert_eq!(
            store
                .claim_key("conn-k", key, &claim("host-2", later + 1), later + 60_001)
                .await
                .unwrap(),
            KeyClaim::Pending(again),
            "{key} claimed again"
        );
    }
}

/// A pending claim whose host died is taken over by exactly one attempt.
async fn suite_reclaim_key(store: &dyn ConnectionStore) {
    let now = now_ms();
    let expires = now + 60_000;
    let lost = claim("host-dead", now);
    store
        .claim_key("conn-r", "k", &lost, expires)
        .await
        .unwrap();
    let (b, c) = (claim("host-b", now + 5), claim("host-c", now + 5));
    assert!(
        store
            .reclaim_key("conn-r", "k", &lost, &b, expires)
            .await
            .unwrap(),
        "the first reclaim wins"
    );
    assert!(
        !store
            .reclaim_key("conn-r", "k", &lost, &c, expires)
            .await
            .unwrap(),
        "a second reclaim of the same lost claim loses"
    );
    assert_eq!(
        store
            .claim_key("conn-r", "k", &claim("host-c", now + 10), expires)
            .await
            .unwrap(),
        KeyClaim::Pending(b),
        "the key is claimed by the winner"
    );
    // A key never claimed cannot be reclaimed.
    assert!(
        !store
            .reclaim_key("conn-r", "other", &lost, &c, expires)
            .await
            .unwrap()
    );
}

async fn suite_frames_fence_the_previous_owner(store: &dyn ConnectionStore) {
    let expires = now_ms() + 60_000;
    let frame = |seq: u64, by: &str| StoredFrame {
        seq,
        frame: format!(r#"{{"t":"msg","s":{seq},"d":"{by}"}}"#),
    };
    let append = |seq: u64, host: &'static str, by: &'static str| {
        let f = frame(seq, by);
        async move {
            store
                .append_frame("fenced", host, "inc-1", &f, expires)
                .await
                .unwrap()
        }
    };
    let fence = |seq: u64, host: &'static str| async move {
        store
            .fence_frames("fenced", seq, host, "inc-1", expires)
            .await
            .unwrap()
    };
    // host-1 holds the session; a retried write of its own frame succeeds.
    assert!(append(1, "host-1", "a").await);
    assert!(append(2, "host-1", "a").await);
    assert!(append(2, "host-1", "a").await);
    // host-2 takes it over and fences the number after the last frame it read.
    assert!(fence(3, "host-2").await);
    // The race fenced against: the old owner's next write comes after the new owner's read. Its
    // number is the fence's, so it fails (the old owner learns it lost the session) and is not
    // kept; the fence is not read as a frame.
    assert!(!append(3, "host-1", "late").await);
    assert_eq!(
        store.frames_after("fenced", 0).await.unwrap(),
        vec![frame(1, "a"), frame(2, "a")]
    );
    // The new owner's first frame replaces its own fence (again when retried).
    assert!(append(3, "host-2", "b").await);
    assert!(append(3, "host-2", "b").await);
    // The other order: the old owner's write lands before the fence, which then fails, so the new
    // owner reads the frame (and delivers it) and fences the next number.
    assert!(append(4, "host-1", "late").await);
    assert!(!fence(4, "host-3").await);
    assert_eq!(
        store.frames_after("fenced", 3).await.unwrap(),
        vec![frame(4, "late")]
    );
    assert!(fence(5, "host-3").await);
    assert!(!append(5, "host-2", "late").await);
    // A fence replaces an earlier owner's fence (a session taken over again before its owner
    // wrote a frame), which then stops that owner too.
    assert!(fence(5, "host-4").await);
    assert!(!append(5, "host-3", "late").await);
    assert!(append(5, "host-4", "d").await);
    // A fence never replaces a frame, not even one of its own writer.
    assert!(!fence(5, "host-4").await);
    // The fence is one number: a writer that skipped it would not be stopped, which is why a host
    // writes its frames one at a time, in order, without gaps.
    assert!(append(7, "host-3", "skipped").await);
    // An expired item takes no number.
    store
        .append_frame(
            "fenced",
            "host-1",
            "inc-1",
            &frame(8, "old"),
            now_ms() - 2_000,
        )
        .await
        .unwrap();
    assert!(append(8, "host-4", "d").await);
    assert_eq!(
        store
            .frames_after("fenced", 0)
            .await
            .unwrap()
            .iter()
            .map(|f| (f.seq, f.frame.clone()))
            .collect::<Vec<_>>(),
        [
            (1, "a"),
            (2, "a"),
            (3, "b"),
            (4, "late"),
            (5, "d"),
            (7, "skipped"),
            (8, "d")
        ]
        .map(|(seq, by)| (seq, frame(seq, by).frame))
    );
}

async fn suite_frames_after(store: &dyn ConnectionStore) {
    let expires = now_ms() + 60_000;
    store
        .put_connection(session_record("frames", "host-1", "inc-1", "t"))
        .await
        .unwrap();
    store
        .put_connection(session_record("other", "host-1", "inc-1", "t"))
        .await
        .unwrap();
    // 150 frames of 8 KB: 1.2 MB, more than one DynamoDB Query page (1 MB). Written out of
    // order, to show the order read back is the sequence numbers'.
    let mut seqs: Vec<u64> = (1..=150).collect();
    seqs.swap(3, 120);
    seqs.swap(0, 149);
    for &seq in &seqs {
        assert!(
            store
                .append_frame("frames", "host-1", "inc-1", &big_frame(seq), expires)
                .await
                .unwrap()
        );
    }
    // A frame of another session, and one that has expired, are never returned.
    assert!(
        store
            .append_frame("other", "host-1", "inc-1", &big_frame(151), expires)
            .await
            .unwrap()
    );
    assert!(
        store
            .append_frame(
                "frames",
                "host-1",
                "inc-1",
                &big_frame(151),
                now_ms() - 2_000
            )
            .await
            .unwrap()
    );

    let all = store.frames_after("frames", 0).await.unwrap();
    assert_eq!(all, (1..=150).map(big_frame).collect::<Vec<_>>());
    let tail = store.frames_after("frames", 100).await.unwrap();
    assert_eq!(tail, (101..=150).map(big_frame).collect::<Vec<_>>());
    // Sequence numbers compare as numbers, not text (9 < 10 < 100).
    let from_nine = store.frames_after("frames", 9).await.unwrap();
    assert_eq!(from_nine.first().map(|f| f.seq), Some(10));
    assert_eq!(from_nine.len(), 141);
    assert_eq!(store.frames_after("frames", 150).await.unwrap(), vec![]);
    assert_eq!(
        store.frames_after("frames", u64::MAX).await.unwrap(),
        vec![]
    );
    assert_eq!(store.frames_after("nobody", 0).await.unwrap(), vec![]);
    // A frame rewritten under the same number (a retried append) is kept once, as last written.
    let rewritten = StoredFrame {
        seq: 150,
        frame: "again".into(),
    };
    assert!(
        store
            .append_frame("frames", "host-1", "inc-1", &rewritten, expires)
            .await
            .unwrap()
    );
    assert_eq!(
        store.frames_after("frames", 149).await.unwrap(),
        vec![rewritten]
    );
    // The largest sequence number sorts last.
    let last = StoredFrame {
        seq: u64::MAX,
        frame: "last".into(),
    };
    assert!(
        store
            .append_frame("frames", "host-1", "inc-1", &last, expires)
            .await
            .unwrap()
    );
    let end = store.frames_after("frames", 149).await.unwrap();
    assert_eq!(
        end.iter().map(|f| f.seq).collect::<Vec<_>>(),
        [150, u64::MAX]
    );
}

async fn suite_newest_frames_start(store: &dyn ConnectionStore) {
    let expires = now_ms() + 60_000;
    store
        .put_connection(session_record("newest", "host-1", "inc-1", "t"))
        .await
        .unwrap();
    // 150 frames of 8 KB, more than one Query page, then a fence after them; a frame of another
    // session, and an expired one above them all.
    for seq in 1..=150 {
        let frame = big_frame(seq);
        let written = store.append_frame("newest", "host-1", "inc-1", &frame, expires);
        assert!(written.await.unwrap());
    }
    let fenced = store.fence_frames("newest", 151, "host-2", "inc-2", expires);
    assert!(fenced.await.unwrap());
    for (id, seq, expires) in [
        ("other-newest", 160, expires),
        ("newest", 170, now_ms() - 2_000),
    ] {
        let frame = big_frame(seq);
        assert!(
            store
                .append_frame(id, "host-1", "inc-1", &frame, expires)
                .await
                .unwrap()
        );
    }

    // Newest first, across pages, every frame as kept, until the walk has enough.
    let mut walked = Vec::new();
    let start = store
        .newest_frames_start("newest", &mut |f| {
            assert_eq!(f, &big_frame(f.seq));
            walked.push(f.seq);
            f.seq == 7
        })
        .await
        .unwrap();
    assert_eq!(start, 6, "frames_after(6) reads the frames walked");
    assert_eq!(walked, (7..=150).rev().collect::<Vec<_>>());
    // A walk that never has enough reads every frame and starts at the beginning.
    let mut count = 0;
    let mut never = |_: &StoredFrame| {
        count += 1;
        false
    };
    let all = store.newest_frames_start("newest", &mut never).await;
    assert_eq!(all.unwrap(), 0);
    assert_eq!(count, 150);
    let mut none = |_: &StoredFrame| -> bool { panic!("a session without frames hands none over") };
    assert_eq!(
        store
            .newest_frames_start("nobody", &mut none)
            .await
            .unwrap(),
        0
    );
}

macro_rules! shared_suite {
    ($($suite:ident => $test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$suite(&connection_host::store::MemoryStore::new()).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(tables) = super::TestTables::create(concat!("dynamodb::", stringify!($test))).await else {
                        return;
                    };
                    super::$suite(&tables.store).await;
                    tables.delete().await;
                }
            )*
        }
    };
}

shared_suite! {
    suite_put_get_delete => put_is_conditional_get_and_delete,
    suite_delete_removes_memberships => delete_removes_memberships,
    suite_add_remove_idempotent => add_and_remove_are_idempotent,
    suite_paging => pages_through_a_large_group,
    suite_empty_group => empty_group_is_one_empty_page,
    suite_bad_tokens => bad_page_tokens_are_refused,
    suite_huge_group => a_huge_group_lists_in_pages_and_counts,
    suite_records_name_their_owner => records_name_their_owner,
    suite_authorizer_context_round_trips => authorizer_context_round_trips,
    suite_host_liveness => host_liveness,
    suite_session_fields_round_trip => session_fields_round_trip,
    suite_take_over => take_over_replaces_only_the_expected_owner,
    suite_rotate_token => rotate_token_replaces_only_the_expected_token,
    suite_ended_sessions => an_ended_session_is_kept_until_it_expires,
    suite_idempotency_keys => idempotency_keys_claim_complete_expire,
    suite_reclaim_key => a_lost_claim_is_reclaimed_once,
    suite_frames_fence_the_previous_owner => frames_fence_the_previous_owner,
    suite_frames_after => frames_after_reads_every_page_in_order,
    suite_newest_frames_start => newest_frames_start_walks_the_frames_newest_first,
}

// ---------------------------------------------------------------------------------------------
// DynamoDB only.
// ---------------------------------------------------------------------------------------------

/// An endpoint in front of `moto` that does not know the TTL operations, answering them as
/// dynalite does (`UnknownOperationException`); everything else goes through.
async fn endpoint_without_ttl(moto: &str) -> String {
    let moto = moto.trim_end_matches('/').to_string();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let moto = moto.clone();
        async move {
            let (parts, body) = request.into_parts();
            let target = parts
                .headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if target.ends_with("TimeToLive") {
                return (
                    http::StatusCode::BAD_REQUEST,
                    [(http::header::CONTENT_TYPE, "application/x-amz-json-1.0")],
                    r#"{"__type":"com.amazon.coral.service#UnknownOperationException"}"#
                        .to_string(),
                );
            }
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let mut forward = reqwest::Client::new().post(format!("{moto}{}", parts.uri));
            for (name, value) in &parts.headers {
                if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
                    forward = forward.header(name.as_str(), value.as_bytes());
                }
            }
            let answer = forward.body(body).send().await.unwrap();
            let status = http::StatusCode::from_u16(answer.status().as_u16()).unwrap();
            (
                status,
                [(http::header::CONTENT_TYPE, "application/x-amz-json-1.0")],
                answer.text().await.unwrap(),
            )
        }
    });
    serve(app).await
}

#[tokio::test]
async fn dynamodb_init_on_a_server_without_ttl_says_so_and_creates_the_tables() {
    let Some(endpoint) = dynamodb_test_endpoint(
        "dynamodb_init_on_a_server_without_ttl_says_so_and_creates_the_tables",
    ) else {
        return;
    };
    init_env();
    let proxy = endpoint_without_ttl(&endpoint).await;
    let config = TestTables::config(&proxy);
    let store = DynamoDbStore::from_env(&config).await;
    let report = store
        .create_tables()
        .await
        .expect("a server without TTL is reported, not fatal");
    let (connections, groups) = (&config.store.connections_table, &config.store.groups_table);
    let sessions = &config.store.sessions_table;
    assert!(
        report.contains(&format!("created table {connections}")),
        "{report:?}"
    );
    let unsupported: Vec<&String> = report
        .iter()
        .filter(|l| l.starts_with("TTL not supported by this endpoint"))
        .collect();
    assert_eq!(unsupported.len(), 3, "one line per table: {report:?}");
    for (table, fate) in [
        (connections, "deleted on disconnect and by the reaper"),
        (groups, "deleted on leave, on disconnect and by the reaper"),
        (sessions, "they accumulate"),
    ] {
        let line = unsupported
            .iter()
            .find(|l| l.contains(&format!("{table}.ttl is not enabled")))
            .unwrap_or_else(|| panic!("no line for {table}: {report:?}"));
        assert!(line.contains(fate), "{line}");
    }
    store.check_tables().await.expect("the tables exist");
    store
        .check_sessions_table()
        .await
        .expect("the sessions table exists");
    // Nothing enabled TTL behind the report's back.
    let ttl = dynamodb_client(&endpoint)
        .describe_time_to_live()
        .table_name(connections)
        .send()
        .await
        .unwrap();
    assert_ne!(
        ttl.time_to_live_description()
            .and_then(|d| d.time_to_live_status()),
        Some(&TimeToLiveStatus::Enabled)
    );
    // The store works on these tables all the same.
    store
        .put_connection(record("ttl-less", None))
        .await
        .unwrap();
    assert!(store.get_connection("ttl-less").await.unwrap().is_some());
    for table in [connections, groups, sessions] {
        let _ = dynamodb_client(&endpoint)
            .delete_table()
            .table_name(table)
            .send()
            .await;
    }
}

#[tokio::test]
async fn dynamodb_check_tables_names_missing_tables_and_init_is_idempotent() {
    let Some(endpoint) =
        dynamodb_test_endpoint("dynamodb_check_tables_names_missing_tables_and_init_is_idempotent")
    else {
        return;
    };
    init_env();
    let config = TestTables::config(&endpoint);
    let store = DynamoDbStore::from_env(&config).await;
    let (connections, groups) = (&config.store.connections_table, &config.store.groups_table);
    let sessions = &config.store.sessions_table;

    let err = store.check_tables().await.unwrap_err().to_string();
    assert!(err.contains(connections) && err.contains(groups), "{err}");
    assert!(err.contains("connection-host store init"), "{err}");
    // The sessions table is checked on its own: hosts without sessions never need it.
    assert!(!err.contains(sessions), "{err}");
    let err = store.check_sessions_table().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("table {sessions} does not exist")),
        "{err}"
    );
    assert!(err.contains("connection-host store init"), "{err}");

    let report = store.create_tables().await.unwrap();
    assert!(
        report.contains(&format!("created table {connections}")),
        "{report:?}"
    );
    assert!(
        report.contains(&format!("created table {groups}")),
        "{report:?}"
    );
    assert!(
        report.contains(&format!("created table {sessions}")),
        "{report:?}"
    );
    store.check_tables().await.expect("both tables exist now");
    store
        .check_sessions_table()
        .await
        .expect("the sessions table exists now");
    for table in [connections, groups, sessions] {
        let ttl = store
            .client()
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .unwrap();
        let ttl = ttl.time_to_live_description().unwrap();
        assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
        assert_eq!(ttl.attribute_name(), Some("ttl"));
    }

    let again = store.create_tables().await.expect("init twice is fine");
    assert!(
        again.contains(&format!("table {connections} already exists")),
        "{again:?}"
    );
    assert!(
        again.contains(&format!("TTL on {groups}.ttl already enabled")),
        "{again:?}"
    );
    assert!(
        again.contains(&format!("table {sessions} already exists")),
        "{again:?}"
    );

    // Only the missing one is named.
    let mut partial = config.clone();
    partial.store.groups_table = format!("{groups}-missing");
    let err = DynamoDbStore::from_env(&partial)
        .await
        .check_tables()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&partial.store.groups_table), "{err}");
    assert!(!err.contains(&format!("table {connections} ")), "{err}");

    // A connections table without the byOwner index (made before clusters) is named too: here
    // the groups table, which has byConnection but not byOwner, stands in for one.
    let tables = connection_host::store::DynamoDbTables {
        connections: groups.clone(),
        groups: groups.clone(),
        sessions: config.store.sessions_table.clone(),
    };
    let err = DynamoDbStore::new(store.client().clone(), tables)
        .check_tables()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "table {groups} has no global secondary index byOwner"
        )),
        "{err}"
    );

    // run() refuses to start on missing tables, with the same message.
    let listener = connection_host::bind(([127, 0, 0, 1], 0).into(), 16).unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        connection_host::run(partial.clone(), listener, std::future::pending()),
    )
    .await
    .expect("run returns promptly when the store check fails");
    match result {
        Err(RunError::Store(message)) => {
            assert!(message.contains(&partial.store.groups_table), "{message}")
        }
        other => panic!("expected RunError::Store, got {other:?}"),
    }
    TestTables { store, config }.delete().await;
}

#[tokio::test]
async fn dynamodb_items_stored_with_schema_and_expired_ones_ignored() {
    let Some(tables) =
        TestTables::create("dynamodb_items_stored_with_schema_and_expired_ones_ignored").await
    else {
        return;
    };
    let store = &tables.store;
    let rec = record("schema-a", Some("ua"));
    store.put_connection(rec.clone()).await.unwrap();
    let item = store
        .client()
        .get_item()
        .table_name(&tables.config.store.connections_table)
        .key("connectionId", AttributeValue::S("schema-a".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the record is in the table");
    let n = |name: &str| item[name].as_n().unwrap().parse::<i64>().unwrap();
    assert_eq!(n("connectedAt"), rec.connected_at);
    assert_eq!(item["sourceIp"].as_s().unwrap(), "203.0.113.7");
    assert_eq!(item["userAgent"].as_s().unwrap(), "ua");
    assert_eq!(item["ownerHost"].as_s().unwrap(), "host-1");
    assert_eq!(item["ownerIncarnation"].as_s().unwrap(), "inc-1");
    assert_eq!(
        item["ownerEndpoint"].as_s().unwrap(),
        "http://127.0.0.1:9080"
    );
    // Default max_connection_duration (2 h) + 1 h.
    assert_eq!(n("ttl"), rec.connected_at / 1000 + 3 * 3600);
    assert!(
        !item.contains_key("authorizer"),
        "a record without an authorizer has no authorizer attribute: {item:?}"
    );

    // The authorizer context is one string attribute holding the claims as JSON.
    let authorized = authorized("schema-auth", "host-1");
    store.put_connection(authorized.clone()).await.unwrap();
    let item = store
        .client()
        .get_item()
        .table_name(&tables.config.store.connections_table)
        .key("connectionId", AttributeValue::S("schema-auth".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the record is in the table");
    let text = item["authorizer"]
        .as_s()
        .expect("authorizer is a string attribute");
    let stored: Value = serde_json::from_str(text).unwrap();
    assert_eq!(stored.as_object(), authorized.authorizer.as_ref());

    // Items whose ttl has passed are invisible, and an expired record's ID can be reused.
    let expiring = DynamoDbStore::new(store.client().clone(), store.tables().clone())
        .with_lifetime(Duration::ZERO);
    let mut old = record("old", None);
    old.connected_at -= 3_600_000;
    expiring.put_connection(old.clone()).await.unwrap();
    assert_eq!(store.get_connection("old").await.unwrap(), None);
    store.put_connection(record("old", None)).await.unwrap();
    assert!(store.get_connection("old").await.unwrap().is_some());
    expiring.add_to_group("g", &member("gone")).await.unwrap();
    store.add_to_group("g", &member("live")).await.unwrap();
    let page = store.group_members("g", None, 1).await.unwrap();
    assert_eq!(ids_of(&page), vec!["live".to_string()]);
    assert_eq!(
        page.next_token, None,
        "the expired member is not a further page"
    );
    assert_eq!(
        store.group_count("g").await.unwrap(),
        1,
        "expired ones are not counted"
    );
    assert_eq!(
        store.remove_from_group("g", "gone").await.unwrap(),
        None,
        "an expired membership is no membership to end"
    );

    // A membership item: its shard's key, the principal (absent when empty) and the join time.
    let anonymous = Member {
        principal: String::new(),
        ..member("anon")
    };
    store.add_to_group("g", &anonymous).await.unwrap();
    let items = store
        .client()
        .scan()
        .table_name(&tables.config.store.groups_table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let item = |id: &str| {
        items
            .iter()
            .find(|i| i["connectionId"].as_s().unwrap() == id)
            .unwrap_or_else(|| panic!("{id} in {items:?}"))
    };
    let live = item("live");
    let key = live["group"].as_s().unwrap();
    let shard: u32 = key
        .strip_prefix("g#")
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("group key {key:?} is g#<shard>"));
    assert!(shard < 8, "{key}");
    assert_eq!(live["principal"].as_s().unwrap(), "user-of-live");
    assert_eq!(live["joinedAt"].as_n().unwrap(), "1733400000000");
    assert!(
        !item("anon").contains_key("principal"),
        "{:?}",
        item("anon")
    );
    tables.delete().await;
}

#[tokio::test]
async fn dynamodb_listing_reads_past_expired_members_in_every_shard() {
    let Some(tables) =
        TestTables::create("dynamodb_listing_reads_past_expired_members_in_every_shard").await
    else {
        return;
    };
    let store = &tables.store;
    let expiring = DynamoDbStore::new(store.client().clone(), store.tables().clone())
        .with_lifetime(Duration::ZERO);
    // Expired memberships before, among and after the live ones, in every shard: a shard's
    // read can come back with nothing but a position, and the page must read on.
    let expired: Vec<String> = (0..48)
        .map(|i| format!("{}-{i:02}", ["a", "m", "z"][i % 3]))
        .collect();
    let live: Vec<String> = (0..10).map(|i| format!("live-{i:02}")).collect();
    let writes = expired
        .iter()
        .map(|id| (&expiring, id))
        .chain(live.iter().map(|id| (store, id)))
        .map(|(store, id)| async move { store.add_to_group("g", &member(id)).await.unwrap() });
    futures_util::stream::iter(writes)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for limit in [1, 3, 10, 1000] {
        let (mut ids, sizes) = all_members(store, "g", limit).await;
        ids.sort();
        assert_eq!(ids, live, "pages of {limit}: each live member once");
        assert_eq!(
            sizes.iter().sum::<usize>(),
            live.len(),
            "pages of {limit}: {sizes:?}"
        );
        assert_eq!(
            sizes.len(),
            live.len().div_ceil(limit),
            "no empty last page"
        );
    }
    assert_eq!(store.group_count("g").await.unwrap(), live.len() as u64);
    tables.delete().await;
}

#[tokio::test]
async fn dynamodb_session_items_stored_with_schema() {
    let Some(tables) = TestTables::create("dynamodb_session_items_stored_with_schema").await else {
        return;
    };
    let store = &tables.store;
    let client = store.client();
    let get = async |table: &str, key: &[(&str, &str)]| {
        let mut request = client.get_item().table_name(table).consistent_read(true);
        for (name, value) in key {
            request = request.key(*name, AttributeValue::S(value.to_string()));
        }
        request
            .send()
            .await
            .unwrap()
            .item
            .expect("the item is in the table")
    };
    let num = |item: &std::collections::HashMap<String, AttributeValue>, name: &str| {
        item[name].as_n().unwrap().parse::<i64>().unwrap()
    };

    // The session is three attributes of the connection item.
    let mut rec = session_record("sess", "host-1", "inc-1", "ab12");
    rec.session.as_mut().unwrap().detached_at = 1_700_000_000_123;
    store.put_connection(rec.clone()).await.unwrap();
    let item = get(tables.connections(), &[("connectionId", "sess")]).await;
    assert_eq!(item["sessionTokenHash"].as_s().unwrap(), "ab12");
    assert_eq!(item["sessionPrincipal"].as_s().unwrap(), "user-7");
    assert_eq!(num(&item, "sessionDetachedAt"), 1_700_000_000_123);
    store
        .put_connection(owned("conn-plain", "host-1", "inc-1"))
        .await
        .unwrap();
    let plain = get(tables.connections(), &[("connectionId", "conn-plain")]).await;
    assert!(
        !plain.keys().any(|k| k.starts_with("session")),
        "a plain connection has no session attributes: {plain:?}"
    );
    // take_over writes the whole record, ttl included (from its connectedAt).
    let moved = ConnectionRecord {
        connected_at: rec.connected_at + 7_000,
        ..session_record("sess", "host-2", "inc-2", "ef56")
    };
    assert!(store.take_over(&moved, "host-1", "inc-1").await.unwrap());
    let item = get(tables.connections(), &[("connectionId", "sess")]).await;
    assert_eq!(item["ownerHost"].as_s().unwrap(), "host-2");
    assert_eq!(item["sessionTokenHash"].as_s().unwrap(), "ef56");
    assert_eq!(num(&item, "ttl"), moved.connected_at / 1000 + 3 * 3600);

    // Keys: `k#{key}`, ttl in epoch seconds rounded up.
    let now = now_ms();
    let expires = now / 1000 * 1000 + 60_500;
    store
        .claim_key("sess", "key-1", &claim("host-2", now), expires)
        .await
        .unwrap();
    let item = get(
        tables.sessions(),
        &[("connectionId", "sess"), ("item", "k#key-1")],
    )
    .await;
    assert_eq!(item["state"].as_s().unwrap(), "pending");
    assert_eq!(num(&item, "claimedAt"), now);
    assert_eq!(item["claimHost"].as_s().unwrap(), "host-2");
    assert_eq!(item["claimIncarnation"].as_s().unwrap(), "inc-1");
    assert_eq!(num(&item, "ttl"), expires / 1000 + 1);
    assert!(!item.contains_key("answer"), "{item:?}");
    store
        .complete_key("sess", "key-1", "the answer", expires)
        .await
        .unwrap();
    let item = get(
        tables.sessions(),
        &[("connectionId", "sess"), ("item", "k#key-1")],
    )
    .await;
    assert_eq!(item["state"].as_s().unwrap(), "done");
    assert_eq!(item["answer"].as_s().unwrap(), "the answer");
    // A key whose ttl passed but that TTL deletion has not removed yet (never, on moto) is free.
    assert_eq!(
        store
            .claim_key(
                "sess",
                "key-1",
                &claim("host-2", expires / 1000 * 1000 + 1000),
                expires + 60_000
            )
            .await
            .unwrap(),
        KeyClaim::Claimed
    );

    // Frames: `m#` and the sequence number in 20 digits; 150 of 8 KB take more than one page.
    for seq in 1..=150 {
        assert!(
            store
                .append_frame("sess", "host-2", "inc-2", &big_frame(seq), expires)
                .await
                .unwrap()
        );
    }
    let item = get(
        tables.sessions(),
        &[("connectionId", "sess"), ("item", "m#00000000000000000007")],
    )
    .await;
    assert_eq!(item["frame"].as_s().unwrap(), &big_frame(7).frame);
    assert_eq!(item["writer"].as_s().unwrap(), "inc-2#host-2");
    assert_eq!(num(&item, "ttl"), expires / 1000 + 1);
    let first_page = client
        .query()
        .table_name(tables.sessions())
        .key_condition_expression("connectionId = :c AND begins_with(#item, :m)")
        .expression_attribute_names("#item", "item")
        .expression_attribute_values(":c", AttributeValue::S("sess".into()))
        .expression_attribute_values(":m", AttributeValue::S("m#".into()))
        .send()
        .await
        .unwrap();
    assert!(
        first_page.last_evaluated_key.is_some() && first_page.items().len() < 150,
        "the frames fit one page ({} items), so paging is not exercised",
        first_page.items().len()
    );
    let frames = store.frames_after("sess", 0).await.unwrap();
    assert_eq!(frames, (1..=150).map(big_frame).collect::<Vec<_>>());
    tables.delete().await;
}

#[tokio::test]
async fn dynamodb_unreachable_endpoint_is_unavailable_quickly() {
    init_env();
    let closed = closed_port_url().await.replace("/nothing", "");
    let mut config = TestTables::config(&closed);
    config.store.endpoint_url = closed;
    let store = DynamoDbStore::from_env(&config).await;
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        store.put_connection(record("x", None)),
    )
    .await
    .expect("the SDK's own timeouts and retry limit end the call");
    let elapsed = started.elapsed();
    match result {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("PutItem"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(matches!(
        store.check_tables().await,
        Err(StoreError::Unavailable(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// The host end to end on DynamoDB.
// ---------------------------------------------------------------------------------------------

async fn whoami(ws: &mut Ws) -> String {
    send_text(ws, r#"{"action":"whoami"}"#).await;
    let v: Value = serde_json::from_str(&next_text(ws).await).unwrap();
    v["connectionId"].as_str().unwrap().to_string()
}

/// Polls `store` until `id`'s record and its membership of `group` are gone.
async fn wait_forgotten(store: &DynamoDbStore, id: &str, group: &str) {
    eventually(&format!("{id} removed from the tables"), WAIT, async || {
        let record = store.get_connection(id).await.unwrap();
        let members = store.group_members(group, None, 100).await.unwrap();
        record.is_none() && !members.members.iter().any(|m| m.connection_id == id)
    })
    .await;
}

#[tokio::test]
async fn host_on_dynamodb_connects_posts_groups_and_forgets() {
    let Some(tables) =
        TestTables::create("host_on_dynamodb_connects_posts_groups_and_forgets").await
    else {
        return;
    };
    let store = Arc::new(tables.store.clone());
    let mut host = TestHost::start_with_store(
        &format!("{WHOAMI}\n[extensions]\ngroups = true\n"),
        store.clone(),
    )
    .await;
    let sdk = mgmt_client(host.addr);
    let http = reqwest::Client::new();

    let (mut a, _) = try_connect(host.addr, "/dev", &[("User-Agent", "e2e/1")], None)
        .await
        .unwrap();
    let id_a = whoami(&mut a).await;
    let mut b = connect(host.addr).await;
    let id_b = whoami(&mut b).await;
    let rec = store
        .get_connection(&id_a)
        .await
        .unwrap()
        .expect("record of a");
    assert_eq!(rec.source_ip, "127.0.0.1");
    assert_eq!(rec.user_agent.as_deref(), Some("e2e/1"));

    sdk.post_to_connection()
        .connection_id(&id_a)
        .data(Blob::new("hello a"))
        .send()
        .await
        .expect("PostToConnection");
    assert_eq!(next_text(&mut a).await, "hello a");
    let info = sdk
        .get_connection()
        .connection_id(&id_a)
        .send()
        .await
        .expect("GetConnection");
    assert_eq!(info.identity().unwrap().source_ip(), Some("127.0.0.1"));

    for id in [&id_a, &id_b] {
        let r = http
            .put(host.http(&format!("/dev/@connections/{}/groups/room", encode_id(id))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "join {id}");
    }
    let members: BTreeSet<String> = store
        .group_members("room", None, 10)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.connection_id)
        .collect();
    assert_eq!(members, [id_a.clone(), id_b.clone()].into());
    let r = http
        .post(host.http("/dev/@groups/room"))
        .body("to the room")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (v["delivered"].as_u64(), v["failed"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    assert_eq!(next_text(&mut a).await, "to the room");
    assert_eq!(next_text(&mut b).await, "to the room");

    // a leaves: its record and membership go, the management API answers 410, and a broadcast
    // reaches only b.
    a.close(None).await.unwrap();
    wait_forgotten(&store, &id_a, "room").await;
    let gone = sdk
        .get_connection()
        .connection_id(&id_a)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        gone.raw_response().map(|r| r.status().as_u16()),
        Some(410),
        "{gone:?}"
    );
    let r = http
        .post(host.http("/dev/@groups/room"))
        .body("again")
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (v["delivered"].as_u64(), v["failed"].as_u64()),
        (Some(1), Some(0)),
        "{v}"
    );
    assert_eq!(next_text(&mut b).await, "again");

    b.close(None).await.unwrap();
    wait_forgotten(&store, &id_b, "room").await;
    host.trigger_shutdown();
    host.join().await.expect("clean shutdown");
    drop(store);
    tables.delete().await;
}
