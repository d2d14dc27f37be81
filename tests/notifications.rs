//! `GET /notifications`: the history of what notified a user, newest first,
//! read or not.

mod common;

use common::{alice_and_bob_in_a_room, assert_error, enc, TestServer};
use serde_json::{json, Value};

/// One page of `/notifications` with the query `query`.
async fn notifications(server: &TestServer, token: &str, query: &str) -> Value {
    let (status, body) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/notifications?{query}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn listed(page: &Value) -> &Vec<Value> {
    page["notifications"].as_array().expect("a notifications array")
}

fn event_ids(page: &Value) -> Vec<String> {
    listed(page)
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap().to_owned())
        .collect()
}

fn highlights(notification: &Value) -> bool {
    notification["actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["set_tweak"] == "highlight" && a.get("value") != Some(&json!(false)))
}

/// Alice's message that mentions bob the modern way (`m.mentions`).
async fn mention_bob(server: &TestServer, alice: &str, room_id: &str, body: &str) -> String {
    let content = json!({"msgtype": "m.text", "body": body, "m.mentions": {"user_ids": ["@bob:localhost"]}});
    server.send_event(alice, room_id, "m.room.message", content).await
}

/// Stores a push rule at `path`.
async fn put_rule(server: &TestServer, token: &str, path: &str, rule: Value) {
    let (status, body) = server.call("PUT", path, Some(token), Some(rule)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn notifications_are_listed_newest_first_paged_filtered_and_marked_read() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    let plain = server.send_text(&alice, &room_id, "just saying").await;
    let mention = mention_bob(&server, &alice, &room_id, "bob, look").await;

    let page = notifications(&server, &bob, "").await;
    assert_eq!(event_ids(&page), [mention.clone(), plain.clone()], "{page}");
    assert!(page.get("next_token").is_none(), "nothing more: {page}");
    let (newest, oldest) = (&listed(&page)[0], &listed(&page)[1]);
    for n in [newest, oldest] {
        assert_eq!(n["room_id"], room_id.as_str());
        assert_eq!(n["read"], false, "{n}");
        assert!(n["ts"].as_u64().is_some_and(|ts| ts > 0), "{n}");
        assert!(n["actions"].as_array().unwrap().contains(&json!("notify")), "{n}");
        assert_eq!(n["event"]["sender"], "@alice:localhost");
        assert_eq!(n["event"]["type"], "m.room.message");
    }
    assert_eq!(newest["event"]["content"]["body"], "bob, look");
    assert_eq!(oldest["event"]["content"]["body"], "just saying");
    assert!(highlights(newest), "the mention highlights: {newest}");
    assert!(!highlights(oldest), "the plain message does not: {oldest}");
    // The sender was notified of neither.
    assert!(listed(&notifications(&server, &alice, "").await).is_empty());

    let only = notifications(&server, &bob, "only=highlight").await;
    assert_eq!(event_ids(&only), std::slice::from_ref(&mention), "{only}");

    // One at a time, following next_token to the end.
    let mut paged = Vec::new();
    let mut query = "limit=1".to_owned();
    for _ in 0..5 {
        let page = notifications(&server, &bob, &query).await;
        assert!(listed(&page).len() <= 1, "{page}");
        paged.extend(event_ids(&page));
        match page["next_token"].as_str() {
            Some(token) => query = format!("limit=1&from={}", enc(token)),
            None => break,
        }
    }
    assert_eq!(paged, [mention.clone(), plain.clone()]);

    // A receipt on the plain message covers it, not the newer mention.
    server.read_receipt(&bob, &room_id, &plain).await;
    let page = notifications(&server, &bob, "").await;
    assert_eq!(
        event_ids(&page),
        [mention.clone(), plain.clone()],
        "still listed: {page}"
    );
    let read: Vec<&Value> = listed(&page).iter().map(|n| &n["read"]).collect();
    assert_eq!(read, [&json!(false), &json!(true)], "{page}");

    server.read_receipt(&bob, &room_id, &mention).await;
    let page = notifications(&server, &bob, "").await;
    assert_eq!(event_ids(&page), [mention, plain], "still listed: {page}");
    assert!(listed(&page).iter().all(|n| n["read"] == true), "{page}");
}

#[tokio::test]
async fn a_muted_rooms_messages_are_not_listed() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    let before = server.send_text(&alice, &room_id, "before the mute").await;
    put_rule(
        &server,
        &bob,
        &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room_id)),
        json!({"actions": []}),
    )
    .await;
    server.send_text(&alice, &room_id, "after the mute").await;
    let mention = mention_bob(&server, &alice, &room_id, "bob!").await;
    let page = notifications(&server, &bob, "").await;
    // A mention still gets through a room rule (override rules come before
    // room rules); the plain message does not.
    assert_eq!(event_ids(&page), [mention.clone(), before.clone()], "{page}");

    // Muting as Element does, with an override rule, silences mentions too.
    put_rule(
        &server,
        &bob,
        "/_matrix/client/v3/pushrules/global/override/mute",
        json!({
            "conditions": [{"kind": "event_match", "key": "room_id", "pattern": room_id}],
            "actions": [],
        }),
    )
    .await;
    server.send_text(&alice, &room_id, "muted").await;
    mention_bob(&server, &alice, &room_id, "bob?").await;
    let page = notifications(&server, &bob, "").await;
    assert_eq!(event_ids(&page), [mention, before], "{page}");
}

#[tokio::test]
async fn a_bad_from_token_is_refused() {
    let (server, _alice, bob, _room_id) = alice_and_bob_in_a_room().await;
    for token in ["nonsense", "-1", "1.5"] {
        let got = server
            .call(
                "GET",
                &format!("/_matrix/client/v3/notifications?from={}", enc(token)),
                Some(&bob),
                None,
            )
            .await;
        assert_error(&got, 400, "M_INVALID_PARAM");
    }
    let got = server.call("GET", "/_matrix/client/v3/notifications", None, None).await;
    assert_error(&got, 401, "M_MISSING_TOKEN");
}
