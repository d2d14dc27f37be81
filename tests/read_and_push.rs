//! Unread counts, push rules, receipts, read markers, typing and tags.

mod common;

use common::{alice_and_bob_in_a_room, enc, TestServer};
use serde_json::{json, Value};

fn room<'a>(sync: &'a Value, room_id: &str) -> &'a Value {
    &sync["rooms"]["join"][room_id]
}

fn counts(sync: &Value, room_id: &str) -> (u64, u64) {
    let unread = &room(sync, room_id)["unread_notifications"];
    (
        unread["notification_count"].as_u64().unwrap_or(0),
        unread["highlight_count"].as_u64().unwrap_or(0),
    )
}

fn ephemeral(sync: &Value, room_id: &str, kind: &str) -> Option<Value> {
    room(sync, room_id)["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
        .cloned()
}

async fn receipt(server: &TestServer, token: &str, room_id: &str, kind: &str, event_id: &str, body: Value) -> u16 {
    server
        .call(
            "POST",
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
                enc(room_id),
                enc(event_id)
            ),
            Some(token),
            Some(body),
        )
        .await
        .0
}

#[tokio::test]
async fn unread_counts_rise_and_a_receipt_clears_them() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    let since = server.sync(&bob, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    server.send_text(&alice, &room_id, "one").await;
    server.send_text(&alice, &room_id, "two").await;
    // A mention the modern way (`m.mentions`) highlights.
    let (status, mention) = server
        .call(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/mention1",
                enc(&room_id)
            ),
            Some(&alice),
            Some(json!({"msgtype": "m.text", "body": "hey bob, look", "m.mentions": {"user_ids": ["@bob:localhost"]}})),
        )
        .await;
    assert_eq!(status, 200);
    let last = mention["event_id"].as_str().unwrap().to_owned();
    let sync = server.sync(&bob, Some(&since), 0, None).await;
    assert_eq!(
        counts(&sync, &room_id),
        (3, 1),
        "three notify, the mention highlights: {sync}"
    );
    // The sender's own messages never count for them.
    let alice_sync = server.sync(&alice, None, 0, None).await;
    assert_eq!(counts(&alice_sync, &room_id), (0, 0));
    // An incremental sync now has no receipt to show (and the server notes
    // the room's newest receipt, which later syncs compare against).
    let alice_since = alice_sync["next_batch"].as_str().unwrap().to_owned();
    let quiet = server.sync(&alice, Some(&alice_since), 0, None).await;
    assert!(ephemeral(&quiet, &room_id, "m.receipt").is_none(), "{quiet}");

    // Alice sees Bob's public receipt; the counts go back to zero.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(receipt(&server, &bob, &room_id, "m.read", &last, json!({})).await, 200);
    let sync = server.sync(&bob, Some(&since), 0, None).await;
    assert_eq!(counts(&sync, &room_id), (0, 0), "{sync}");
    let incremental = server.sync(&alice, Some(&alice_since), 0, None).await;
    let receipts = ephemeral(&incremental, &room_id, "m.receipt").expect("a receipt in an incremental sync");
    assert!(
        receipts["content"][&last]["m.read"]["@bob:localhost"]["ts"].is_u64(),
        "{receipts}"
    );
    let receipts = ephemeral(&server.sync(&alice, None, 0, None).await, &room_id, "m.receipt").expect("a receipt");
    assert!(
        receipts["content"][&last]["m.read"]["@bob:localhost"]["ts"].is_u64(),
        "{receipts}"
    );

    // A private receipt also clears, and only its owner sees it. The new
    // message counts on top of the cleared (stored) counts first.
    let more = server.send_text(&alice, &room_id, "more").await;
    assert_eq!(counts(&server.sync(&bob, None, 0, None).await, &room_id), (1, 0));
    assert_eq!(
        receipt(&server, &bob, &room_id, "m.read.private", &more, json!({})).await,
        200
    );
    let bob_sync = server.sync(&bob, None, 0, None).await;
    assert_eq!(counts(&bob_sync, &room_id), (0, 0));
    let own = ephemeral(&bob_sync, &room_id, "m.receipt").unwrap();
    assert!(own["content"][&more]["m.read.private"]["@bob:localhost"].is_object());
    let alice_view = server.sync(&alice, None, 0, None).await;
    let alice_receipts = ephemeral(&alice_view, &room_id, "m.receipt").unwrap();
    assert!(alice_receipts["content"].get(&more).is_none(), "{alice_receipts}");

    // Receipts for unknown events or rooms one is not in are refused.
    assert_eq!(
        receipt(&server, &bob, &room_id, "m.read", "$nope", json!({})).await,
        404
    );
}

/// One event, several recipients: each gets the answer of their own rules,
/// even though the rules that are the same for everybody are evaluated
/// once per event (a mention of one member highlights only for them, and
/// a default rule one member disabled stays off only for them).
#[tokio::test]
async fn each_member_gets_their_own_push_rule_answers() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    let (_, carol, _) = server.register("carol", "pw").await;
    let (_, dave, _) = server.register("dave", "pw").await;
    server.join(&carol, &room_id).await;
    server.join(&dave, &room_id).await;
    // Carol turns plain messages off.
    let (status, body) = server
        .call(
            "PUT",
            "/_matrix/client/v3/pushrules/global/underride/.m.rule.message/enabled",
            Some(&carol),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    server.send_text(&alice, &room_id, "hello all").await;
    let (status, body) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/m1", enc(&room_id)),
            Some(&alice),
            Some(json!({"msgtype": "m.text", "body": "carol, look", "m.mentions": {"user_ids": ["@carol:localhost"]}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let bob_counts = counts(&server.sync(&bob, None, 0, None).await, &room_id);
    let carol_counts = counts(&server.sync(&carol, None, 0, None).await, &room_id);
    let dave_counts = counts(&server.sync(&dave, None, 0, None).await, &room_id);
    assert_eq!(bob_counts, (2, 0), "bob: both notify, neither highlights");
    assert_eq!(carol_counts, (1, 1), "carol: only the mention, which highlights");
    assert_eq!(dave_counts, (2, 0), "dave: as bob, after carol was evaluated");
}

/// Alice's public room with Bob in it: (server, alice's token, bob's token, room ID).
#[tokio::test]
async fn thread_notifications_are_counted_apart() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    let root = server.send_text(&alice, &room_id, "root").await;
    let (status, reply) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/thread1", enc(&room_id)),
            Some(&alice),
            Some(json!({"msgtype": "m.text", "body": "in thread",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root}})),
        )
        .await;
    assert_eq!(status, 200);
    let filter = json!({"room": {"timeline": {"unread_thread_notifications": true}}});
    let sync = server.sync(&bob, None, 0, Some(filter.clone())).await;
    assert_eq!(counts(&sync, &room_id), (1, 0), "{sync}");
    assert_eq!(
        room(&sync, &room_id)["unread_thread_notifications"][&root]["notification_count"],
        1
    );

    // A receipt in the thread clears the thread only.
    let reply_id = reply["event_id"].as_str().unwrap();
    assert_eq!(
        receipt(&server, &bob, &room_id, "m.read", reply_id, json!({"thread_id": root})).await,
        200
    );
    let sync = server.sync(&bob, None, 0, Some(filter)).await;
    assert_eq!(counts(&sync, &room_id), (1, 0));
    assert!(room(&sync, &room_id)["unread_thread_notifications"]
        .get(&root)
        .is_none());
}

#[tokio::test]
async fn push_rules_can_be_read_and_changed() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;

    let (status, rules) = server
        .call("GET", "/_matrix/client/v3/pushrules/", Some(&bob), None)
        .await;
    assert_eq!(status, 200);
    let overrides = rules["global"]["override"].as_array().unwrap();
    assert!(overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"), "{rules}");

    // A message notifies (and the server now holds Bob's rules in memory)...
    server.send_text(&alice, &room_id, "loud").await;
    let sync = server.sync(&bob, None, 0, None).await;
    assert_eq!(counts(&sync, &room_id), (1, 0), "{sync}");

    // ...until he mutes the room: its messages no longer notify.
    let path = format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room_id));
    let (status, body) = server
        .call("PUT", &path, Some(&bob), Some(json!({"actions": []})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, rule) = server.call("GET", &path, Some(&bob), None).await;
    assert_eq!(rule["rule_id"], room_id.as_str());
    server.send_text(&alice, &room_id, "quiet").await;
    let sync = server.sync(&bob, None, 0, None).await;
    assert_eq!(counts(&sync, &room_id), (1, 0), "{sync}");

    // Enabled flag and actions read and change; defaults cannot be deleted.
    let enabled = "/_matrix/client/v3/pushrules/global/override/.m.rule.suppress_notices/enabled";
    let (status, _) = server
        .call("PUT", enabled, Some(&bob), Some(json!({"enabled": false})))
        .await;
    assert_eq!(status, 200);
    let (_, got) = server.call("GET", enabled, Some(&bob), None).await;
    assert_eq!(got["enabled"], false);
    let (status, _) = server
        .call(
            "DELETE",
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = server.call("DELETE", &path, Some(&bob), None).await;
    assert_eq!(status, 200);
    let (status, _) = server.call("GET", &path, Some(&bob), None).await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call(
            "PUT",
            "/_matrix/client/v3/user/@bob:localhost/account_data/m.push_rules",
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status / 100, 4, "push rules change only through their API");
    let (status, pushers) = server.call("GET", "/_matrix/client/v3/pushers", Some(&bob), None).await;
    assert_eq!((status, pushers["pushers"].clone()), (200, json!([])));
}

#[tokio::test]
async fn typing_markers_and_tags_reach_sync() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    let since = server.sync(&bob, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let typing = format!("/_matrix/client/v3/rooms/{}/typing/@alice:localhost", enc(&room_id));
    let (status, _) = server
        .call(
            "PUT",
            &typing,
            Some(&alice),
            Some(json!({"typing": true, "timeout": 30000})),
        )
        .await;
    assert_eq!(status, 200);
    let sync = server.sync(&bob, Some(&since), 1000, None).await;
    let event = ephemeral(&sync, &room_id, "m.typing").expect("typing reaches bob");
    assert_eq!(event["content"]["user_ids"], json!(["@alice:localhost"]));
    let (status, _) = server
        .call("PUT", &typing, Some(&alice), Some(json!({"typing": false})))
        .await;
    assert_eq!(status, 200);
    let sync = server
        .sync(&bob, Some(sync["next_batch"].as_str().unwrap()), 1000, None)
        .await;
    assert_eq!(
        ephemeral(&sync, &room_id, "m.typing").unwrap()["content"]["user_ids"],
        json!([])
    );
    let (status, _) = server
        .call(
            "PUT",
            &typing.replace("alice", "bob"),
            Some(&alice),
            Some(json!({"typing": true, "timeout": 1000})),
        )
        .await;
    assert_eq!(status, 403, "one types only for oneself");

    // A typing notification that times out is withdrawn, and a waiting sync
    // hears of it.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .call(
            "PUT",
            &typing,
            Some(&alice),
            Some(json!({"typing": true, "timeout": 300})),
        )
        .await;
    assert_eq!(status, 200);
    let sync = server.sync(&bob, Some(&since), 5000, None).await;
    assert_eq!(
        ephemeral(&sync, &room_id, "m.typing").unwrap()["content"]["user_ids"],
        json!(["@alice:localhost"])
    );
    let started = std::time::Instant::now();
    let sync = server
        .sync(&bob, Some(sync["next_batch"].as_str().unwrap()), 5000, None)
        .await;
    assert_eq!(
        ephemeral(&sync, &room_id, "m.typing").unwrap()["content"]["user_ids"],
        json!([]),
        "{sync}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "woken by the expiry, not the timeout"
    );

    // The fully-read marker is room account data.
    let event_id = server.send_text(&alice, &room_id, "read me").await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room_id)),
            Some(&bob),
            Some(json!({"m.fully_read": event_id, "m.read": event_id})),
        )
        .await;
    assert_eq!(status, 200);

    // Tags.
    let tag = format!(
        "/_matrix/client/v3/user/@bob:localhost/rooms/{}/tags/m.favourite",
        enc(&room_id)
    );
    let (status, _) = server.call("PUT", &tag, Some(&bob), Some(json!({"order": 0.5}))).await;
    assert_eq!(status, 200);
    let (_, tags) = server
        .call("GET", &tag.replace("/tags/m.favourite", "/tags"), Some(&bob), None)
        .await;
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5);

    let sync = server.sync(&bob, None, 0, None).await;
    let data = room(&sync, &room_id)["account_data"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let fully_read = data.iter().find(|e| e["type"] == "m.fully_read").expect("m.fully_read");
    assert_eq!(fully_read["content"]["event_id"], event_id.as_str());
    let tag_event = data.iter().find(|e| e["type"] == "m.tag").expect("m.tag");
    assert!(tag_event["content"]["tags"]["m.favourite"].is_object());
    assert_eq!(counts(&sync, &room_id), (0, 0));

    let (status, _) = server.call("DELETE", &tag, Some(&bob), None).await;
    assert_eq!(status, 200);
    let (_, tags) = server
        .call("GET", &tag.replace("/tags/m.favourite", "/tags"), Some(&bob), None)
        .await;
    assert_eq!(tags["tags"], json!({}));
}

#[tokio::test]
async fn the_legacy_mention_rules_are_served_and_yield_to_intentional_mentions() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let (status, rules) = server
        .call("GET", "/_matrix/client/v3/pushrules/", Some(&alice), None)
        .await;
    assert_eq!(status, 200, "{rules}");
    let ids = |kind: &str| -> Vec<String> {
        rules["global"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let overrides = ids("override");
    let position = |id: &str| {
        overrides
            .iter()
            .position(|r| r == id)
            .unwrap_or_else(|| panic!("{id}: {overrides:?}"))
    };
    assert_eq!(
        position(".m.rule.contains_display_name"),
        position(".m.rule.is_user_mention") + 1
    );
    assert_eq!(position(".m.rule.roomnotif"), position(".m.rule.is_room_mention") + 1);
    let content = &rules["global"]["content"];
    let user_name = content
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule_id"] == ".m.rule.contains_user_name")
        .unwrap_or_else(|| panic!("{content}"));
    assert_eq!(user_name["pattern"], "alice");
    assert_eq!(user_name["default"], true);

    // A name in the body highlights, unless the event says whom it mentions.
    server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            Some(&alice),
            Some(json!({"displayname": "Wonderland"})),
        )
        .await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    server.join(&bob, &room).await;
    let highlights = || async {
        let sync = server.sync(&alice, None, 0, None).await;
        sync["rooms"]["join"][room.as_str()]["unread_notifications"]["highlight_count"].clone()
    };
    server.send_text(&bob, &room, "hello Wonderland").await;
    assert_eq!(highlights().await, 1);
    server
        .send_event(
            &bob,
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "Wonderland again", "m.mentions": {}}),
        )
        .await;
    assert_eq!(highlights().await, 1, "m.mentions turns the legacy rules off");
}
