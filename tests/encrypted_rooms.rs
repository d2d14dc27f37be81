//! An encrypted room with everything from the rooms issue: the encryption
//! state, `m.room.encrypted` events in /sync and /messages, unread counts from
//! the encrypted-message push rules, and relations (threads, edits, replies)
//! whose `m.relates_to` stays in the clear as the spec requires.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

/// What a client sends after encrypting: the ciphertext is opaque here.
fn encrypted(session: &str, n: u32, relates_to: Option<Value>) -> Value {
    let mut content = json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": format!("AwgAEn{n}ciphertext"),
        "device_id": "ALICEDEVICE",
        "sender_key": "c2VuZGVyIGtleQ",
        "session_id": session,
    });
    if let Some(relation) = relates_to {
        content["m.relates_to"] = relation;
    }
    content
}

async fn send_encrypted(server: &TestServer, token: &str, room: &str, txn: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.encrypted/{txn}", enc(room));
    let (status, resp) = server.call("PUT", &path, Some(token), Some(content)).await;
    assert_eq!(status, 200, "{resp}");
    resp["event_id"].as_str().unwrap().to_owned()
}

/// GETs a page of events (`chunk`) and returns their IDs in order.
async fn chunk_ids(server: &TestServer, token: &str, path: &str) -> Vec<String> {
    let (status, page) = server.call("GET", path, Some(token), None).await;
    assert_eq!(status, 200, "{page}");
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

fn joined<'a>(sync: &'a Value, room: &str) -> &'a Value {
    &sync["rooms"]["join"][room]
}

#[tokio::test]
async fn an_encrypted_room_works_like_any_other() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "private_chat", "is_direct": true, "invite": [bob_id],
                "initial_state": [{"type": "m.room.encryption", "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
        )
        .await;
    server.join(&bob, &room).await;

    // The encryption state reads back, and only the room's admins may change it.
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.encryption/", enc(&room));
    let (status, state) = server.call("GET", &path, Some(&bob), None).await;
    assert_eq!(
        (status, state["algorithm"].as_str()),
        (200, Some("m.megolm.v1.aes-sha2")),
        "{state}"
    );
    let refused = server
        .call(
            "PUT",
            &path,
            Some(&bob),
            Some(json!({"algorithm": "m.megolm.v1.aes-sha2"})),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");

    let first = server.sync(&bob, None, 0, None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        joined(&first, &room)["unread_notifications"]["notification_count"],
        0,
        "{first}"
    );

    // Encrypted messages, a thread and an edit, all as ciphertext.
    let root = send_encrypted(&server, &alice, &room, "e1", encrypted("S1", 1, None)).await;
    let in_thread = send_encrypted(
        &server,
        &alice,
        &room,
        "e2",
        encrypted(
            "S1",
            2,
            Some(
                json!({"rel_type": "m.thread", "event_id": root, "is_falling_back": true,
            "m.in_reply_to": {"event_id": root}}),
            ),
        ),
    )
    .await;
    let edit = send_encrypted(
        &server,
        &alice,
        &room,
        "e3",
        encrypted("S1", 3, Some(json!({"rel_type": "m.replace", "event_id": root}))),
    )
    .await;

    // Bob's sync: the three events as ciphertext, and counts from the
    // one-to-one encrypted-room rule (the main timeline and the thread apart).
    let threads_apart = json!({"room": {"timeline": {"unread_thread_notifications": true}}});
    let sync = server.sync(&bob, Some(&since), 0, Some(threads_apart.clone())).await;
    let room_sync = joined(&sync, &room);
    let events: Vec<&Value> = room_sync["timeline"]["events"].as_array().unwrap().iter().collect();
    let ids: Vec<&str> = events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [root.as_str(), in_thread.as_str(), edit.as_str()], "{sync}");
    assert!(events
        .iter()
        .all(|e| e["type"] == "m.room.encrypted" && e["content"]["ciphertext"].is_string()));
    assert_eq!(events[1]["content"]["m.relates_to"]["rel_type"], "m.thread", "{sync}");
    let main_count = room_sync["unread_notifications"]["notification_count"]
        .as_u64()
        .unwrap();
    let thread_count = room_sync["unread_thread_notifications"][&root]["notification_count"].as_u64();
    // The root notifies in the main timeline, the reply in its thread; the
    // edit does not (suppress_edits reads the clear-text relation).
    assert_eq!((main_count, thread_count), (1, Some(1)), "{sync}");

    // Relations and threads are found through the clear-text m.relates_to.
    let thread_path = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}/m.thread",
        enc(&room),
        enc(&root)
    );
    assert_eq!(chunk_ids(&server, &bob, &thread_path).await, [in_thread.as_str()]);
    let threads_path = format!("/_matrix/client/v1/rooms/{}/threads", enc(&room));
    assert_eq!(chunk_ids(&server, &bob, &threads_path).await, [root.as_str()]);

    // The root carries its thread summary and its edit in bundled aggregations.
    let (status, event) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&root)),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    let bundled = &event["unsigned"]["m.relations"];
    assert_eq!(bundled["m.thread"]["count"], 1, "{event}");
    assert_eq!(
        bundled["m.thread"]["latest_event"]["event_id"],
        in_thread.as_str(),
        "{event}"
    );
    assert_eq!(bundled["m.replace"]["event_id"], edit.as_str(), "{event}");
    // The server cannot read an encrypted edit, so the original stays as sent.
    assert_eq!(event["content"]["ciphertext"], "AwgAEn1ciphertext", "{event}");

    // /messages serves the ciphertext too, and an event-type filter sees it.
    let filter = enc(&json!({"types": ["m.room.encrypted"]}).to_string());
    let messages_path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&filter={filter}",
        enc(&room)
    );
    assert_eq!(
        chunk_ids(&server, &bob, &messages_path).await,
        [edit.as_str(), in_thread.as_str(), root.as_str()]
    );

    // A read receipt on the last event brings bob's counts back to zero.
    let (status, resp) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&edit)),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    let (status, resp) = server
        .call(
            "POST",
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&in_thread)
            ),
            Some(&bob),
            Some(json!({"thread_id": root})),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    let next = sync["next_batch"].as_str().unwrap();
    let after = server.sync(&bob, Some(next), 0, Some(threads_apart)).await;
    let counts = &joined(&after, &room)["unread_notifications"];
    assert_eq!(counts["notification_count"], 0, "{after}");
    let thread_after = &joined(&after, &room)["unread_thread_notifications"][&root]["notification_count"];
    assert!(thread_after.is_null() || *thread_after == 0, "{after}");
}

#[tokio::test]
async fn the_operator_can_turn_off_encryption_and_room_creation() {
    let encryption_state = json!({"type": "m.room.encryption", "state_key": "",
        "content": {"algorithm": "m.megolm.v1.aes-sha2"}});

    let server = TestServer::start_with("allow_encryption = false").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let refused = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&alice),
            Some(json!({"name": "Secret", "initial_state": [encryption_state]})),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    // The refusal left no room behind.
    let (_, rooms) = server
        .call("GET", "/_matrix/client/v3/joined_rooms", Some(&alice), None)
        .await;
    assert_eq!(rooms["joined_rooms"], json!([]), "{rooms}");
    // Nor can an existing room be switched to encryption.
    let room = server.create_room(&alice, json!({"name": "Plain"})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.encryption/", enc(&room));
    let refused = server
        .call(
            "PUT",
            &path,
            Some(&alice),
            Some(json!({"algorithm": "m.megolm.v1.aes-sha2"})),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    let (status, _) = server.call("GET", &path, Some(&alice), None).await;
    assert_eq!(status, 404);

    let server = TestServer::start_with("allow_room_creation = false").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let refused = server
        .call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({})))
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
}
