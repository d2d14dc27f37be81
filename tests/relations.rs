//! Edits, threads, references, reactions: /relations, /threads, bundled
//! aggregations, and /context.

mod common;

use common::{enc, TestServer};
use serde_json::{json, Value};

async fn send(server: &TestServer, token: &str, room_id: &str, event_type: &str, content: Value) -> String {
    let txn = format!("rel{}", rand_txn());
    let (status, resp) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/send/{event_type}/{txn}", enc(room_id)),
            Some(token),
            Some(content),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    resp["event_id"].as_str().unwrap().to_owned()
}

fn rand_txn() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn get_event(server: &TestServer, token: &str, room_id: &str, event_id: &str) -> Value {
    let (status, event) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room_id), enc(event_id)),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    event
}

#[tokio::test]
async fn edits_threads_and_references_are_bundled() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    server.join(&bob, &room).await;

    let original = server.send_text(&alice, &room, "helo").await;
    let edit = |body: &str| {
        json!({"msgtype": "m.text", "body": format!("* {body}"), "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original}})
    };
    send(&server, &alice, &room, "m.room.message", edit("hello")).await;
    // Bob's "edit" of Alice's message is not an edit.
    send(&server, &bob, &room, "m.room.message", edit("hijacked")).await;
    let event = get_event(&server, &bob, &room, &original).await;
    let replace = &event["unsigned"]["m.relations"]["m.replace"];
    assert_eq!(replace["content"]["m.new_content"]["body"], "hello", "{event}");

    // A thread of two replies.
    let root = server.send_text(&alice, &room, "thread root").await;
    for body in ["first reply", "second reply"] {
        send(
            &server,
            &alice,
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    }
    let event = get_event(&server, &bob, &room, &root).await;
    let thread = &event["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 2, "{event}");
    assert_eq!(thread["latest_event"]["content"]["body"], "second reply");
    assert_eq!(thread["current_user_participated"], false);

    // The bundle is in /messages and /sync too.
    let (_, page) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            Some(&bob),
            None,
        )
        .await;
    let in_page = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .unwrap();
    assert_eq!(in_page["unsigned"]["m.relations"]["m.thread"]["count"], 2);
    let sync = server
        .sync(&bob, None, 0, Some(json!({"room": {"timeline": {"limit": 50}}})))
        .await;
    let in_sync = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .cloned()
        .unwrap();
    assert_eq!(in_sync["unsigned"]["m.relations"]["m.thread"]["count"], 2);

    // /threads: all threads; participated only once Bob replies.
    let threads_path = format!("/_matrix/client/v1/rooms/{}/threads", enc(&room));
    let (status, all) = server.call("GET", &threads_path, Some(&bob), None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["chunk"][0]["event_id"], root.as_str());
    let (_, mine) = server
        .call("GET", &format!("{threads_path}?include=participated"), Some(&bob), None)
        .await;
    assert_eq!(mine["chunk"].as_array().unwrap().len(), 0);
    send(
        &server,
        &bob,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "bob too", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await;
    let (_, mine) = server
        .call("GET", &format!("{threads_path}?include=participated"), Some(&bob), None)
        .await;
    assert_eq!(mine["chunk"].as_array().unwrap().len(), 1);

    // References.
    let referring = send(
        &server,
        &bob,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "see above", "m.relates_to": {"rel_type": "m.reference", "event_id": original}}),
    )
    .await;
    let event = get_event(&server, &alice, &room, &original).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.reference"]["chunk"],
        json!([{"event_id": referring}])
    );
}

#[tokio::test]
async fn relations_paginate_and_filter() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, eve, _) = server.register("eve", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let target = server.send_text(&alice, &room, "react to me").await;
    let mut reactions = Vec::new();
    for key in ["👍", "🎉", "❤️", "😀", "🚀"] {
        let id = send(
            &server,
            &alice,
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}),
        )
        .await;
        reactions.push(id);
    }
    send(
        &server,
        &alice,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "* edit", "m.new_content": {"msgtype": "m.text", "body": "edit"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": target}}),
    )
    .await;

    let base = format!("/_matrix/client/v1/rooms/{}/relations/{}", enc(&room), enc(&target));
    let (_, all) = server.call("GET", &base, Some(&alice), None).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 6, "{all}");
    let (_, by_type) = server
        .call("GET", &format!("{base}/m.annotation/m.reaction"), Some(&alice), None)
        .await;
    assert_eq!(by_type["chunk"].as_array().unwrap().len(), 5);

    // Pages of two, newest first, until the end.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let mut path = format!("{base}/m.annotation?limit=2");
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let (status, page) = server.call("GET", &path, Some(&alice), None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    reactions.reverse();
    assert_eq!(seen, reactions);

    // Outsiders read nothing.
    let (status, _) = server.call("GET", &base, Some(&eve), None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn context_around_an_event() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({"name": "Ctx"})).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(server.send_text(&alice, &room, &format!("c{i}")).await);
    }
    let (status, ctx) = server
        .call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=2",
                enc(&room),
                enc(&ids[2])
            ),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], "c2");
    assert_eq!(ctx["events_before"][0]["content"]["body"], "c1");
    assert_eq!(ctx["events_after"][0]["content"]["body"], "c3");
    assert!(ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.name"));
    // The tokens page on from there.
    let end = ctx["end"].as_str().unwrap();
    let (_, page) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&from={end}", enc(&room)),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(page["chunk"][0]["content"]["body"], "c4");
    let (status, _) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/context/{}", enc(&room), enc("$missing")),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

async fn redact(server: &TestServer, token: &str, room: &str, event_id: &str) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/redact/{}/r{}",
        enc(room),
        enc(event_id),
        rand_txn()
    );
    let (status, body) = server.call("PUT", &path, Some(token), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn redacted_relations_no_longer_aggregate() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;

    // Edits: redacting the newest one brings back the one before.
    let original = server.send_text(&alice, &room, "helo").await;
    let edit = |body: &str| {
        json!({"msgtype": "m.text", "body": format!("* {body}"), "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original}})
    };
    send(&server, &alice, &room, "m.room.message", edit("hello")).await;
    let second = send(&server, &alice, &room, "m.room.message", edit("hello!")).await;
    let bundle = get_event(&server, &alice, &room, &original).await["unsigned"]["m.relations"].clone();
    assert_eq!(
        bundle["m.replace"]["content"]["m.new_content"]["body"], "hello!",
        "{bundle}"
    );
    redact(&server, &alice, &room, &second).await;
    let bundle = get_event(&server, &alice, &room, &original).await["unsigned"]["m.relations"].clone();
    assert_eq!(
        bundle["m.replace"]["content"]["m.new_content"]["body"], "hello",
        "{bundle}"
    );

    // Reactions: a redacted one is no longer listed.
    let reaction = send(
        &server,
        &alice,
        &room,
        "m.reaction",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "👍"}}),
    )
    .await;
    let annotations = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}/m.annotation",
        enc(&room),
        enc(&original)
    );
    let (_, listed) = server.call("GET", &annotations, Some(&alice), None).await;
    assert_eq!(listed["chunk"].as_array().unwrap().len(), 1, "{listed}");
    redact(&server, &alice, &room, &reaction).await;
    let (_, listed) = server.call("GET", &annotations, Some(&alice), None).await;
    assert_eq!(listed["chunk"], json!([]), "{listed}");

    // Threads: redacted replies no longer count, and a thread with none left is gone.
    let root = server.send_text(&alice, &room, "thread root").await;
    let mut replies = Vec::new();
    for body in ["first reply", "second reply"] {
        let content =
            json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
        replies.push(send(&server, &alice, &room, "m.room.message", content).await);
    }
    redact(&server, &alice, &room, &replies[1]).await;
    let bundle = get_event(&server, &alice, &room, &root).await["unsigned"]["m.relations"].clone();
    assert_eq!(bundle["m.thread"]["count"], 1, "{bundle}");
    assert_eq!(bundle["m.thread"]["latest_event"]["content"]["body"], "first reply");
    redact(&server, &alice, &room, &replies[0]).await;
    let bundle = get_event(&server, &alice, &room, &root).await["unsigned"]["m.relations"].clone();
    assert!(bundle.get("m.thread").is_none(), "{bundle}");
    let (status, threads) = server
        .call(
            "GET",
            &format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{threads}");
    assert_eq!(threads["chunk"], json!([]), "{threads}");
}
