//! Simplified sliding sync (MSC4186) over HTTP: lists and ranges in
//! recency order, room configs, subscriptions, the extensions, long-polls,
//! and connections that survive a restart.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One sliding sync request; `pos` continues a connection.
async fn sliding(server: &TestServer, token: &str, pos: Option<&str>, timeout_ms: u64, body: Value) -> Value {
    let (status, response) = sliding_raw(server, token, pos, timeout_ms, body).await;
    assert_eq!(status, 200, "{response}");
    assert!(response["pos"].is_string(), "{response}");
    response
}

async fn sliding_raw(
    server: &TestServer,
    token: &str,
    pos: Option<&str>,
    timeout_ms: u64,
    body: Value,
) -> (u16, Value) {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", enc(pos)));
    }
    server.call("POST", &path, Some(token), Some(body)).await
}

/// A body with one list `all` over `range`.
fn one_list(range: [u64; 2], timeout_limit: u64, required_state: Value) -> Value {
    json!({"lists": {"all": {
        "ranges": [range],
        "timeline_limit": timeout_limit,
        "required_state": required_state,
    }}})
}

fn pos(response: &Value) -> String {
    response["pos"].as_str().unwrap().to_owned()
}

fn room<'a>(response: &'a Value, room_id: &str) -> &'a Value {
    &response["rooms"][room_id]
}

fn room_ids(response: &Value) -> Vec<String> {
    let mut ids: Vec<String> = response["rooms"]
        .as_object()
        .map(|rooms| rooms.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The bodies of a room's timeline, oldest first.
fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `(type, state_key)` of each required_state event.
fn state_keys(room: &Value) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = room["required_state"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap().to_owned(),
                        e["state_key"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

async fn set_state(server: &TestServer, token: &str, room_id: &str, event_type: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/state/{event_type}/", enc(room_id));
    let (status, body) = server.call("PUT", &path, Some(token), Some(content)).await;
    assert_eq!(status, 200, "{body}");
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn lists_show_rooms_by_recency_and_ranges_grow() {
    let server = TestServer::start().await;
    // The first account is invited to the admin room; Alice's lists hold only her rooms.
    server.register("admin", "pw").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let mut rooms = Vec::new();
    for i in 0..4 {
        let room = server.create_room(&alice, json!({"name": format!("room {i}")})).await;
        rooms.push(room);
    }
    // Activity in the order 2, 0, 3, 1: recency is 1, 3, 0, 2.
    for i in [2, 0, 3, 1] {
        server.send_text(&alice, &rooms[i], &format!("hello {i}")).await;
    }
    let first = sliding(&server, &alice, None, 0, one_list([0, 1], 1, json!([]))).await;
    assert_eq!(first["lists"]["all"]["count"], 4, "{first}");
    assert_eq!(room_ids(&first), sorted(&[&rooms[1], &rooms[3]]));
    let newest = room(&first, &rooms[1]);
    assert_eq!(
        bodies(newest),
        vec!["hello 1"],
        "timeline_limit 1: the latest event only"
    );
    assert_eq!(newest["initial"], true);
    assert_eq!(newest["limited"], true);
    assert_eq!(newest["name"], "room 1");
    assert_eq!(newest["joined_count"], 1);
    let stamp = |r: &Value, id: &str| room(r, id)["bump_stamp"].as_u64().unwrap();
    assert!(stamp(&first, &rooms[1]) > stamp(&first, &rooms[3]), "{first}");

    // Growing the range sends only the rooms not sent yet.
    let grown = sliding(&server, &alice, Some(&pos(&first)), 0, one_list([0, 3], 1, json!([]))).await;
    assert_eq!(room_ids(&grown), sorted(&[&rooms[0], &rooms[2]]));
    assert!(stamp(&grown, &rooms[0]) > stamp(&grown, &rooms[2]));

    // With nothing new, nothing is sent.
    let quiet = sliding(&server, &alice, Some(&pos(&grown)), 0, one_list([0, 3], 1, json!([]))).await;
    assert!(room_ids(&quiet).is_empty(), "{quiet}");

    // A message moves its room to the top of the list.
    server.send_text(&alice, &rooms[2], "back on top").await;
    let moved = sliding(&server, &alice, Some(&pos(&quiet)), 0, one_list([0, 0], 1, json!([]))).await;
    assert_eq!(room_ids(&moved), vec![rooms[2].clone()]);
    let update = room(&moved, &rooms[2]);
    assert_eq!(bodies(update), vec!["back on top"]);
    assert!(
        update.get("initial").is_none(),
        "an update, not the room again: {update}"
    );
    assert_eq!(update["num_live"], 1);
}

#[tokio::test]
async fn required_state_with_lazy_members_me_and_wildcards() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let (carol_id, carol, _) = server.register("carol", "pw").await;
    let room_id = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "Lazy", "topic": "members"}),
        )
        .await;
    server.join(&bob, &room_id).await;
    server.join(&carol, &room_id).await;
    server.send_text(&bob, &room_id, "bob speaks").await;

    let required = json!([
        ["m.room.name", ""],
        ["m.room.member", "$ME"],
        ["m.room.member", "$LAZY"]
    ]);
    let response = sliding(&server, &alice, None, 0, one_list([0, 0], 1, required)).await;
    let keys = state_keys(room(&response, &room_id));
    let member = |id: &str| ("m.room.member".to_owned(), id.to_owned());
    assert!(keys.contains(&("m.room.name".to_owned(), String::new())), "{keys:?}");
    assert!(keys.contains(&member(&alice_id)), "$ME: {keys:?}");
    assert!(
        keys.contains(&member(&bob_id)),
        "$LAZY: the timeline's sender: {keys:?}"
    );
    assert!(
        !keys.contains(&member(&carol_id)),
        "no member the timeline does not show: {keys:?}"
    );
    assert!(!keys.iter().any(|(t, _)| t == "m.room.topic"), "{keys:?}");
    assert_eq!(room(&response, &room_id)["joined_count"], 3);

    // Another connection asking for everything gets the whole state.
    let mut everything = one_list([0, 0], 0, json!([["*", "*"]]));
    everything["conn_id"] = json!("all-state");
    let all = sliding(&server, &alice, None, 0, everything).await;
    let keys = state_keys(room(&all, &room_id));
    assert!(keys.contains(&("m.room.topic".to_owned(), String::new())), "{keys:?}");
    assert!(keys.contains(&member(&carol_id)), "{keys:?}");
    assert!(bodies(room(&all, &room_id)).is_empty(), "timeline_limit 0");

    // A state change reaches a connection that asks for that state.
    let next = sliding(
        &server,
        &alice,
        Some(&pos(&response)),
        0,
        one_list([0, 0], 1, json!([["m.room.name", ""]])),
    )
    .await;
    assert!(room_ids(&next).is_empty(), "nothing new yet: {next}");
    set_state(&server, &alice, &room_id, "m.room.name", json!({"name": "Renamed"})).await;
    let after = sliding(
        &server,
        &alice,
        Some(&pos(&next)),
        0,
        one_list([0, 0], 1, json!([["m.room.name", ""]])),
    )
    .await;
    let renamed = room(&after, &room_id);
    assert_eq!(renamed["name"], "Renamed", "{after}");
    let names: Vec<&Value> = renamed["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(names.len(), 1, "{renamed}");
    assert_eq!(names[0]["content"]["name"], "Renamed");
}

#[tokio::test]
async fn timelines_are_limited_and_page_back_with_prev_batch() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let room_id = server.create_room(&alice, json!({})).await;
    for i in 0..5 {
        server.send_text(&alice, &room_id, &format!("m{i}")).await;
    }
    let first = sliding(&server, &alice, None, 0, one_list([0, 0], 3, json!([]))).await;
    let entry = room(&first, &room_id);
    assert_eq!(bodies(entry), vec!["m2", "m3", "m4"]);
    assert_eq!(entry["limited"], true);
    assert_eq!(entry["num_live"], 0, "nothing is live on a new connection");
    let prev_batch = entry["prev_batch"].as_str().unwrap();
    let (status, older) = server
        .call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=2&from={}",
                enc(&room_id),
                enc(prev_batch)
            ),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{older}");
    let older: Vec<&str> = older["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(older, vec!["m1", "m0"]);

    // Two new messages: both arrive, live, and nothing is missing.
    server.send_text(&alice, &room_id, "m5").await;
    server.send_text(&alice, &room_id, "m6").await;
    let next = sliding(&server, &alice, Some(&pos(&first)), 0, one_list([0, 0], 3, json!([]))).await;
    let entry = room(&next, &room_id);
    assert_eq!(bodies(entry), vec!["m5", "m6"]);
    assert!(entry.get("limited").is_none_or(|l| l == false), "{entry}");
    assert_eq!(entry["num_live"], 2);

    // A larger timeline_limit sends the room again, whole.
    let more = sliding(&server, &alice, Some(&pos(&next)), 0, one_list([0, 0], 5, json!([]))).await;
    let entry = room(&more, &room_id);
    assert_eq!(entry["initial"], true, "{more}");
    assert_eq!(bodies(entry), vec!["m2", "m3", "m4", "m5", "m6"]);
}

#[tokio::test]
async fn room_subscriptions_stick_and_only_cover_the_users_rooms() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let old = server.create_room(&alice, json!({})).await;
    server.send_text(&alice, &old, "old room").await;
    let new = server.create_room(&alice, json!({})).await;
    server.send_text(&alice, &new, "new room").await;
    let bobs = server.create_room(&bob, json!({"preset": "public_chat"})).await;

    let mut body = one_list([0, 0], 1, json!([]));
    body["room_subscriptions"] = json!({
        old.clone(): {"timeline_limit": 10, "required_state": [["m.room.create", ""]]},
        bobs.clone(): {"timeline_limit": 10, "required_state": []},
    });
    let first = sliding(&server, &alice, None, 0, body).await;
    assert_eq!(
        room_ids(&first),
        sorted(&[&old, &new]),
        "not bob's room alice is not in"
    );
    assert_eq!(bodies(room(&first, &old)), vec!["old room"]);
    assert_eq!(
        state_keys(room(&first, &old)),
        vec![("m.room.create".to_owned(), String::new())]
    );

    // The subscription holds without being sent again.
    server.send_text(&alice, &old, "still subscribed").await;
    let next = sliding(&server, &alice, Some(&pos(&first)), 0, one_list([0, 0], 1, json!([]))).await;
    // The message put the old room on top of the list too.
    assert_eq!(room_ids(&next), vec![old.clone()]);
    assert_eq!(bodies(room(&next, &old)), vec!["still subscribed"]);
    server.send_text(&alice, &old, "out of range").await;
    server.send_text(&alice, &new, "list room").await;
    let later = sliding(&server, &alice, Some(&pos(&next)), 0, one_list([0, 0], 1, json!([]))).await;
    assert_eq!(room_ids(&later), sorted(&[&old, &new]));
    assert_eq!(bodies(room(&later, &old)), vec!["out of range"], "{later}");
}

#[tokio::test]
async fn long_poll_wakes_on_a_message_and_times_out_otherwise() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let room_id = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    server.join(&bob, &room_id).await;
    let first = sliding(&server, &alice, None, 0, one_list([0, 9], 1, json!([]))).await;

    let started = Instant::now();
    let quiet = sliding(&server, &alice, Some(&pos(&first)), 300, one_list([0, 9], 1, json!([]))).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(room_ids(&quiet).is_empty(), "{quiet}");

    let mark = server.log_mark();
    let waiting = {
        let url = server.url(&format!("{PATH}?timeout=20000&pos={}", enc(&pos(&quiet))));
        let token = alice.clone();
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&one_list([0, 9], 1, json!([])))
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    server.wait_for_log(mark, &["sliding sync waiting", &alice_id]).await;
    server.send_text(&bob, &room_id, "wake up").await;
    // It waits up to 20 s: an answer within 10 s is the message's wake.
    let woken = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the message woke the waiting sync")
        .unwrap();
    assert_eq!(bodies(room(&woken, &room_id)), vec!["wake up"]);
    assert_eq!(room(&woken, &room_id)["num_live"], 1);
}

#[tokio::test]
async fn unread_counts_drop_after_a_read_receipt_and_invites_are_listed() {
    let server = TestServer::start().await;
    // The first account is invited to the admin room; Alice's one invite is Bob's.
    server.register("admin", "pw").await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let room_id = server.create_room(&bob, json!({"name": "Invite"})).await;
    server.invite(&bob, &room_id, &alice_id).await;

    let mut body = one_list([0, 9], 1, json!([]));
    body["lists"]["invites"] =
        json!({"ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": {"is_invite": true}});
    let first = sliding(&server, &alice, None, 0, body.clone()).await;
    assert_eq!(first["lists"]["invites"]["count"], 1, "{first}");
    let invite = room(&first, &room_id);
    let stripped = invite["invite_state"].as_array().expect("the invite's stripped state");
    assert!(stripped
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Invite"));
    assert!(
        invite.get("timeline").is_none(),
        "an invitee sees no timeline: {invite}"
    );

    // Another invite, rejected: the client learns of the leave, and no
    // more of that room than its own membership.
    let rejected = server
        .create_room(&bob, json!({"name": "Rejected", "topic": "secret"}))
        .await;
    server.invite(&bob, &rejected, &alice_id).await;
    let second = sliding(&server, &alice, Some(&pos(&first)), 0, body.clone()).await;
    assert!(room(&second, &rejected)["invite_state"].is_array(), "{second}");
    let (status, left) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&rejected)),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{left}");
    let after_reject = sliding(&server, &alice, Some(&pos(&second)), 0, body.clone()).await;
    let entry = room(&after_reject, &rejected);
    assert!(entry.get("invite_state").is_none(), "{entry}");
    assert!(entry.get("timeline").is_none(), "{entry}");
    let state = entry["required_state"].as_array().expect("the user's own membership");
    assert_eq!(state.len(), 1, "{entry}");
    assert_eq!(state[0]["type"], "m.room.member");
    assert_eq!(state[0]["state_key"], alice_id.as_str());
    assert_eq!(state[0]["content"]["membership"], "leave");

    server.join(&alice, &room_id).await;
    let joined = sliding(&server, &alice, Some(&pos(&after_reject)), 0, body.clone()).await;
    assert_eq!(joined["lists"]["invites"]["count"], 0, "{joined}");
    assert_eq!(
        room(&joined, &room_id)["initial"],
        true,
        "the joined room, whole: {joined}"
    );

    server.send_text(&bob, &room_id, "one").await;
    let last = server.send_text(&bob, &room_id, "two").await;
    let unread = sliding(&server, &alice, Some(&pos(&joined)), 0, body.clone()).await;
    assert_eq!(room(&unread, &room_id)["notification_count"], 2, "{unread}");

    let (status, receipt) = server
        .call(
            "POST",
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room_id),
                enc(&last)
            ),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{receipt}");
    let read = sliding(&server, &alice, Some(&pos(&unread)), 0, body).await;
    let entry = room(&read, &room_id);
    assert_eq!(entry["notification_count"], 0, "the room is sent again, read: {read}");
    assert_eq!(entry["highlight_count"], 0);
}

#[tokio::test]
async fn extensions_carry_keys_to_device_account_data_receipts_and_typing() {
    let server = TestServer::start().await;
    let (alice_id, alice, alice_device) = server.register("alice", "pw").await;
    let (bob_id, bob, bob_device) = server.register("bob", "pw").await;
    let room_id = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    server.join(&bob, &room_id).await;
    let (status, _) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&alice),
            Some(json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "k1"}, "signed_curve25519:AAAB": {"key": "k2"}}})),
        )
        .await;
    assert_eq!(status, 200);
    let extensions = json!({
        "e2ee": {"enabled": true},
        "to_device": {"enabled": true},
        "account_data": {"enabled": true},
        "receipts": {"enabled": true},
        "typing": {"enabled": true},
    });
    let mut body = one_list([0, 9], 1, json!([]));
    body["extensions"] = extensions.clone();
    let first = sliding(&server, &alice, None, 0, body.clone()).await;
    let ext = &first["extensions"];
    assert_eq!(
        ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 2,
        "{ext}"
    );
    assert!(ext["e2ee"]["device_unused_fallback_key_types"].is_array(), "{ext}");
    let to_device_since = ext["to_device"]["next_batch"]
        .as_str()
        .expect("a to-device token")
        .to_owned();

    // Bob's doings, one of each.
    let (status, _) = server
        .call(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.test/txn1",
            Some(&bob),
            Some(json!({"messages": {alice_id.clone(): {alice_device.clone(): {"hello": "alice"}}}})),
        )
        .await;
    assert_eq!(status, 200);
    let message = server.send_text(&bob, &room_id, "read me").await;
    let (status, _) = server
        .call(
            "POST",
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room_id),
                enc(&message)
            ),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room_id), enc(&bob_id)),
            Some(&bob),
            Some(json!({"typing": true, "timeout": 30000})),
        )
        .await;
    assert_eq!(status, 200);
    for (path, content) in [
        (
            format!("/_matrix/client/v3/user/{}/account_data/m.test.global", enc(&alice_id)),
            json!({"g": 1}),
        ),
        (
            format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.test.room",
                enc(&alice_id),
                enc(&room_id)
            ),
            json!({"r": 1}),
        ),
    ] {
        let (status, _) = server.call("PUT", &path, Some(&alice), Some(content)).await;
        assert_eq!(status, 200);
    }
    // Bob's new device key makes a device list change.
    let (status, _) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&bob),
            Some(json!({"device_keys": {
                "user_id": bob_id, "device_id": bob_device,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {format!("curve25519:{bob_device}"): "c", format!("ed25519:{bob_device}"): "e"},
                "signatures": {},
            }})),
        )
        .await;
    assert_eq!(status, 200);

    body["extensions"]["to_device"]["since"] = json!(to_device_since);
    let next = sliding(&server, &alice, Some(&pos(&first)), 0, body.clone()).await;
    let ext = &next["extensions"];
    let to_device = ext["to_device"]["events"].as_array().expect("to-device events");
    assert_eq!(to_device.len(), 1, "{ext}");
    assert_eq!(to_device[0]["content"]["hello"], "alice");
    assert_eq!(to_device[0]["sender"], bob_id.as_str());
    let changed = ext["e2ee"]["device_lists"]["changed"]
        .as_array()
        .expect("device list changes");
    assert!(changed.iter().any(|u| u == bob_id.as_str()), "{ext}");
    let global = ext["account_data"]["global"].as_array().unwrap();
    assert!(
        global
            .iter()
            .any(|e| e["type"] == "m.test.global" && e["content"]["g"] == 1),
        "{ext}"
    );
    assert_eq!(
        ext["account_data"]["rooms"][&room_id][0]["type"], "m.test.room",
        "{ext}"
    );
    let receipt = &ext["receipts"]["rooms"][&room_id];
    assert_eq!(receipt["type"], "m.receipt", "{ext}");
    assert!(
        receipt["content"][&message]["m.read"].get(&bob_id).is_some(),
        "{receipt}"
    );
    let typing = &ext["typing"]["rooms"][&room_id];
    assert_eq!(typing["content"]["user_ids"], json!([bob_id]), "{ext}");

    // Acknowledged to-device messages are not sent again; old receipts and
    // account data are not either. Extensions stay on for a request that
    // does not mention them (clients send their config once).
    let since = ext["to_device"]["next_batch"].clone();
    let mut quiet = one_list([0, 9], 1, json!([]));
    quiet["extensions"] = json!({"to_device": {"since": since}});
    let again = sliding(&server, &alice, Some(&pos(&next)), 0, quiet.clone()).await;
    let ext = &again["extensions"];
    assert_eq!(
        ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 2,
        "{ext}"
    );
    assert!(
        ext["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()),
        "{ext}"
    );
    assert!(ext["receipts"]["rooms"].get(&room_id).is_none(), "{ext}");
    assert!(
        ext.get("account_data")
            .is_none_or(|a| a["global"].as_array().is_none_or(|g| g.is_empty())),
        "{ext}"
    );

    // Turned off, an extension sends nothing.
    quiet["extensions"]["e2ee"] = json!({"enabled": false});
    let off = sliding(&server, &alice, Some(&pos(&again)), 0, quiet).await;
    assert!(off["extensions"].get("e2ee").is_none(), "{off}");
}

#[tokio::test]
async fn a_connection_continues_across_a_restart_and_unknown_positions_are_refused() {
    let mut server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let room_id = server.create_room(&alice, json!({})).await;
    server.send_text(&alice, &room_id, "before").await;
    let first = sliding(&server, &alice, None, 0, one_list([0, 9], 5, json!([]))).await;
    assert_eq!(bodies(room(&first, &room_id)), vec!["before"]);

    server.restart();
    server.send_text(&alice, &room_id, "after").await;
    let next = sliding(&server, &alice, Some(&pos(&first)), 0, one_list([0, 9], 5, json!([]))).await;
    let entry = room(&next, &room_id);
    assert_eq!(bodies(entry), vec!["after"], "only the new message: {next}");
    assert!(entry.get("initial").is_none(), "{entry}");

    // A retried request with the same pos gets the same news again.
    let retried = sliding(&server, &alice, Some(&pos(&first)), 0, one_list([0, 9], 5, json!([]))).await;
    assert_eq!(bodies(room(&retried, &room_id)), vec!["after"]);

    for bad in ["banana", "12_999999", "1"] {
        let got = sliding_raw(&server, &alice, Some(bad), 0, one_list([0, 9], 5, json!([]))).await;
        assert_error(&got, 400, "M_UNKNOWN_POS");
    }
    // Another connection's pos is not this one's.
    let mut other = one_list([0, 9], 5, json!([]));
    other["conn_id"] = json!("other");
    let got = sliding_raw(&server, &alice, Some(&pos(&next)), 0, other).await;
    assert_error(&got, 400, "M_UNKNOWN_POS");
    // A device keeps a bounded number of connections: the oldest goes.
    for i in 0..10 {
        let mut extra = one_list([0, 9], 5, json!([]));
        extra["conn_id"] = json!(format!("extra{i}"));
        sliding(&server, &alice, None, 0, extra).await;
    }
    let got = sliding_raw(&server, &alice, Some(&pos(&next)), 0, one_list([0, 9], 5, json!([]))).await;
    assert_error(&got, 400, "M_UNKNOWN_POS");
    let mut recent = one_list([0, 9], 5, json!([]));
    recent["conn_id"] = json!("extra9");
    let (status, _) = sliding_raw(&server, &alice, None, 0, recent).await;
    assert_eq!(status, 200);

    let mut long = one_list([0, 9], 5, json!([]));
    long["conn_id"] = json!("x".repeat(100));
    let got = sliding_raw(&server, &alice, None, 0, long).await;
    assert_error(&got, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn bump_stamps_move_for_bump_types_only() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let room_id = server.create_room(&alice, json!({})).await;
    server.send_text(&alice, &room_id, "a message").await;
    let first = sliding(&server, &alice, None, 0, one_list([0, 0], 1, json!([]))).await;
    let stamp = room(&first, &room_id)["bump_stamp"].as_u64().unwrap();

    set_state(
        &server,
        &alice,
        &room_id,
        "m.room.topic",
        json!({"topic": "not a bump"}),
    )
    .await;
    let topic = sliding(&server, &alice, Some(&pos(&first)), 0, one_list([0, 0], 1, json!([]))).await;
    assert_eq!(room(&topic, &room_id)["bump_stamp"].as_u64(), Some(stamp), "{topic}");

    let mut bumping = one_list([0, 0], 1, json!([]));
    bumping["conn_id"] = json!("topics");
    bumping["lists"]["all"]["bump_event_types"] = json!(["m.room.topic"]);
    let by_topic = sliding(&server, &alice, None, 0, bumping).await;
    assert!(
        room(&by_topic, &room_id)["bump_stamp"].as_u64().unwrap() > stamp,
        "{by_topic}"
    );

    server.send_text(&alice, &room_id, "bump").await;
    let message = sliding(&server, &alice, Some(&pos(&topic)), 0, one_list([0, 0], 1, json!([]))).await;
    assert!(
        room(&message, &room_id)["bump_stamp"].as_u64().unwrap() > stamp,
        "{message}"
    );
}

#[tokio::test]
async fn versions_advertise_simplified_sliding_sync() {
    let server = TestServer::start().await;
    let (status, versions) = server.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true);
}
