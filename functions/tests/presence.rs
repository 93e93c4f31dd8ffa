//! The SDK's presence calls against a real connection host in process: members with their join
//! time, counts, bounded listing, and the notices clients receive read with
//! `PresenceNotice::parse`.

use serde_json::Value;
use std::net::SocketAddr;
use test_kit::{TestHost, WHOAMI, Ws, next_text, send_text};
use ws_handler::RoomsError;
use ws_handler::rooms::groups::{GroupsRooms, shared_http_client};
use ws_handler::rooms::presence::{PresenceAction, PresenceNotice};

async fn client(addr: SocketAddr) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/dev"))
        .await
        .unwrap();
    send_text(&mut ws, r#"{"action":"whoami"}"#).await;
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    (ws, v["connectionId"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn members_counts_and_notices_through_the_sdk() {
    let host = TestHost::start(&format!(
        "{WHOAMI}\n[extensions.groups]\nenabled = true\npresence = \"frames\"\n"
    ))
    .await;
    // Unsigned: the host checks no signatures on loopback.
    let rooms = GroupsRooms::new(shared_http_client(), &host.http("/dev"));
    let (mut a, id_a) = client(host.addr).await;
    let (_b, id_b) = client(host.addr).await;
    let (_c, id_c) = client(host.addr).await;
    use ws_handler::Rooms;
    for id in [&id_a, &id_b, &id_c] {
        rooms.join("room", id).await.unwrap();
    }
    for joined in [&id_b, &id_c] {
        let notice = PresenceNotice::parse(&next_text(&mut a).await).expect("a notice");
        assert_eq!(notice.action, PresenceAction::Join);
        assert_eq!(&notice.connection_id, joined);
        assert_eq!(
            (notice.group.as_str(), notice.principal.as_str()),
            ("room", "")
        );
    }
    assert_eq!(rooms.count("room").await.unwrap(), 3);
    assert_eq!(rooms.count("nobody").await.unwrap(), 0);

    let first = rooms.members_page("room", 2, None).await.unwrap();
    assert_eq!(first.members.len(), 2);
    let token = first.next_token.clone().expect("a second page");
    let second = rooms.members_page("room", 2, Some(&token)).await.unwrap();
    assert_eq!(second.members.len(), 1);
    assert_eq!(second.next_token, None);
    let all = rooms.members_with_presence("room", 3).await.unwrap();
    let mut ids: Vec<&str> = all.iter().map(|m| m.connection_id.as_str()).collect();
    ids.sort();
    let mut expected = vec![id_a.as_str(), id_b.as_str(), id_c.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(all.iter().all(|m| m.joined_at > 0));
    assert!(matches!(
        rooms.members_with_presence("room", 2).await,
        Err(RoomsError::TooManyMembers { bound: 2, .. })
    ));
    // A bad token is the host's 400, reported with its message.
    match rooms.members_page("room", 2, Some("not-a-token")).await {
        Err(RoomsError::Host {
            status: 400, body, ..
        }) => {
            assert!(body.contains("invalid nextToken"), "{body}")
        }
        other => panic!("expected a 400, got {other:?}"),
    }

    rooms.leave("room", &id_b).await.unwrap();
    let notice = PresenceNotice::parse(&next_text(&mut a).await).expect("a notice");
    assert_eq!(
        (notice.action, notice.connection_id.as_str()),
        (PresenceAction::Leave, id_b.as_str())
    );
}
