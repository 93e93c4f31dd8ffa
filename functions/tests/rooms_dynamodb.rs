//! The DynamoDB rooms backend against a real DynamoDB-API server (moto in `tests/run.sh`):
//! `DYNAMODB_TEST_ENDPOINT` names it. Each test creates a uniquely named table with
//! `create_table` (the documented schema) and deletes it at the end.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use test_kit::{dynamodb_client as client, dynamodb_test_endpoint as endpoint, unique_table};
use ws_handler::rooms::dynamodb::{DynamoDbRooms, create_table};
use ws_handler::testing::Recorder;
use ws_handler::{BroadcastReport, Rooms};

async fn sorted_members(rooms: &dyn Rooms, room: &str) -> Vec<String> {
    let mut members = rooms.members(room).await.unwrap();
    members.sort();
    members
}

#[tokio::test]
async fn join_leave_members_reverse_lookup_and_broadcast() {
    let Some(endpoint) = endpoint("join_leave_members_reverse_lookup_and_broadcast") else {
        return;
    };
    let client = client(&endpoint);
    let table = unique_table("ws-handler-rooms");
    create_table(&client, &table).await.expect("create table");

    let recorder = Arc::new(Recorder::default());
    let rooms = DynamoDbRooms::new(
        client.clone(),
        &table,
        Some(Duration::from_secs(7200)),
        recorder.clone(),
    );

    assert!(rooms.members("lobby").await.unwrap().is_empty());
    for id in ["a=", "b=", "c=", "d="] {
        rooms.join("lobby", id).await.unwrap();
    }
    rooms.join("lobby", "a=").await.unwrap(); // twice is once
    rooms.join("other", "a=").await.unwrap();
    assert_eq!(
        sorted_members(&rooms, "lobby").await,
        ["a=", "b=", "c=", "d="]
    );
    assert!(rooms.is_member("lobby", "b=").await.unwrap());
    assert!(!rooms.is_member("other", "b=").await.unwrap());

    let mut of_a = rooms.rooms_of("a=").await.unwrap().expect("listable");
    of_a.sort();
    assert_eq!(of_a, ["lobby", "other"]);

    rooms.leave("lobby", "b=").await.unwrap();
    rooms.leave("lobby", "b=").await.unwrap(); // leaving twice is harmless
    assert_eq!(sorted_members(&rooms, "lobby").await, ["a=", "c=", "d="]);
    assert_eq!(rooms.rooms_of("b=").await.unwrap(), Some(vec![]));
    assert!(!rooms.is_member("lobby", "b=").await.unwrap());

    // Broadcast: the excluded member gets nothing; a gone member is removed.
    recorder.set_gone("c=");
    let report = rooms
        .broadcast("lobby", b"hello", Some("a="))
        .await
        .unwrap();
    assert_eq!(
        report,
        BroadcastReport {
            delivered: 1,
            failed: 0,
            gone_removed: 1
        }
    );
    assert_eq!(recorder.posts(), [("d=".to_string(), b"hello".to_vec())]);
    assert_eq!(sorted_members(&rooms, "lobby").await, ["a=", "d="]);
    assert_eq!(rooms.rooms_of("c=").await.unwrap(), Some(vec![]));

    // Expired memberships are invisible before DynamoDB's TTL deletes them.
    let expiring = DynamoDbRooms::new(client.clone(), &table, Some(Duration::ZERO), recorder);
    expiring.join("lobby", "e=").await.unwrap();
    assert_eq!(sorted_members(&rooms, "lobby").await, ["a=", "d="]);
    assert!(!rooms.is_member("lobby", "e=").await.unwrap());
    assert_eq!(rooms.rooms_of("e=").await.unwrap(), Some(vec![]));

    // The TTL attribute is on for the table.
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some("expiresAt")
    );

    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn members_are_read_across_pages() {
    let Some(endpoint) = endpoint("members_are_read_across_pages") else {
        return;
    };
    let client = client(&endpoint);
    let table = unique_table("ws-handler-rooms");
    create_table(&client, &table).await.expect("create table");
    let rooms = DynamoDbRooms::new(client.clone(), &table, None, Arc::new(Recorder::default()));
    // DynamoDB pages a query at 1 MB: 1,200 memberships of ~1 KB each take two pages.
    let ids: Vec<String> = (0..1200)
        .map(|i| format!("{i:05}-{}", "x".repeat(1000)))
        .collect();
    futures_util::stream::iter(&ids)
        .map(|id| rooms.join("big", id))
        .buffer_unordered(32)
        .for_each(|joined| async move { joined.unwrap() })
        .await;
    let first_page = client
        .query()
        .table_name(&table)
        .key_condition_expression("room = :r")
        .expression_attribute_values(":r", AttributeValue::S("big".into()))
        .send()
        .await
        .unwrap();
    assert!(
        first_page.last_evaluated_key().is_some(),
        "the room must span pages for this test to mean anything"
    );
    let members = sorted_members(&rooms, "big").await;
    assert_eq!(members.len(), ids.len());
    assert_eq!(members, ids);
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}
