//! /sync over HTTP: initial and incremental, long-poll, state across gaps,
//! filters, and tokens that survive a restart.

mod common;

use std::time::{Duration, Instant};

use common::{enc, TestServer};
use serde_json::{json, Value};

fn timeline(sync: &Value, room: &str) -> Vec<Value> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn bodies(sync: &Value, room: &str) -> Vec<String> {
    timeline(sync, room)
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A JSON array, or empty where the server left the field out.
fn list(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

#[tokio::test]
async fn initial_then_incremental() {
    let server = TestServer::start().await;
    let (alice, token, _) = server.register("alice", "pw").await;
    let room = server.create_room(&token, json!({"name": "Notes"})).await;
    server.send_text(&token, &room, "one").await;

    let first = server.sync(&token, None, 0, None).await;
    assert_eq!(bodies(&first, &room), vec!["one"]);
    let joined = &first["rooms"]["join"][&room];
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    let state_types: Vec<String> = list(&joined["state"]["events"])
        .iter()
        .chain(list(&joined["timeline"]["events"]).iter())
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(state_types.iter().any(|t| t == "m.room.name"), "{state_types:?}");
    let since = next_batch(&first);

    // Nothing new: an empty answer, with the same token.
    let quiet = server.sync(&token, Some(&since), 0, None).await;
    assert!(quiet["rooms"]["join"].get(&room).is_none(), "{quiet}");

    server.send_text(&token, &room, "two").await;
    server.send_text(&token, &room, "three").await;
    let second = server.sync(&token, Some(&since), 0, None).await;
    assert_eq!(bodies(&second, &room), vec!["two", "three"]);
    let limited = &second["rooms"]["join"][&room]["timeline"]["limited"];
    assert!(limited.is_null() || limited == false, "nothing was skipped: {limited}");
    assert!(second["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .is_none_or(|s| s.is_empty()));

    // Account data changes come through once.
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/user/{}/account_data/org.example.pref", enc(&alice)),
            Some(&token),
            Some(json!({"theme": "dark"})),
        )
        .await;
    assert_eq!(status, 200);
    let third = server.sync(&token, Some(&next_batch(&second)), 0, None).await;
    let data = list(&third["account_data"]["events"]);
    assert!(data.iter().any(|e| e["type"] == "org.example.pref"), "{third}");
    let fourth = server.sync(&token, Some(&next_batch(&third)), 0, None).await;
    assert!(fourth["account_data"]["events"].as_array().is_none_or(|d| d.is_empty()));
}

#[tokio::test]
async fn long_poll_wakes_on_a_message_and_times_out_otherwise() {
    let server = TestServer::start().await;
    let (_, alice_token, _) = server.register("alice", "pw").await;
    let (bob_id, bob_token, _) = server.register("bob", "pw").await;
    let room = server.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    server.join(&bob_token, &room).await;
    let since = next_batch(&server.sync(&bob_token, None, 0, None).await);

    // A quiet long-poll returns at its timeout with nothing.
    let started = Instant::now();
    let quiet = server.sync(&bob_token, Some(&since), 300, None).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(quiet["rooms"]["join"].get(&room).is_none());

    // A message wakes a waiting sync long before its timeout.
    let mark = server.log_mark();
    let waiting = {
        let url = server.url(&format!("/_matrix/client/v3/sync?timeout=20000&since={since}"));
        let token = bob_token.clone();
        tokio::spawn(async move {
            let body: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body
        })
    };
    server.wait_for_log(mark, &["sync waiting", &bob_id]).await;
    server.send_text(&alice_token, &room, "wake up").await;
    // The sync waits up to 20 s: an answer within 10 s is the message's wake.
    let body = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the message woke the waiting sync")
        .unwrap();
    assert_eq!(bodies(&body, &room), vec!["wake up"]);
}

/// State that changed in the gap a limited timeline leaves appears in the
/// state section, once.
#[tokio::test]
async fn state_deltas_across_a_gap() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw").await;
    let room = server.create_room(&token, json!({"name": "Old name"})).await;
    let filter = json!({"room": {"timeline": {"limit": 2}}});
    let since = next_batch(&server.sync(&token, None, 0, Some(filter.clone())).await);

    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&token),
            Some(json!({"name": "New name"})),
        )
        .await;
    assert_eq!(status, 200);
    for i in 0..5 {
        server.send_text(&token, &room, &format!("m{i}")).await;
    }
    let sync = server.sync(&token, Some(&since), 0, Some(filter)).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{sync}");
    assert_eq!(bodies(&sync, &room), vec!["m3", "m4"]);
    assert!(joined["timeline"]["prev_batch"].is_string());
    let state = list(&joined["state"]["events"]);
    let names: Vec<&Value> = state.iter().filter(|e| e["type"] == "m.room.name").collect();
    assert_eq!(names.len(), 1, "{state:?}");
    assert_eq!(names[0]["content"]["name"], "New name");
    assert!(
        !state.iter().any(|e| e["type"] == "m.room.create"),
        "unchanged state is not repeated: {state:?}"
    );

    // The prev_batch token pages back into the gap.
    let prev = joined["timeline"]["prev_batch"].as_str().unwrap();
    let (_, page) = server
        .call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3&from={prev}",
                enc(&room)
            ),
            Some(&token),
            None,
        )
        .await;
    let older: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(older, vec!["m2", "m1", "m0"]);
}

#[tokio::test]
async fn joins_leaves_and_filters() {
    let server = TestServer::start().await;
    let (_, alice_token, _) = server.register("alice", "pw").await;
    let (bob, bob_token, _) = server.register("bob", "pw").await;
    let room = server.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    let other = server.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    let since = next_batch(&server.sync(&bob_token, None, 0, None).await);

    server.join(&bob_token, &room).await;
    server.join(&bob_token, &other).await;
    // A new join brings the room's whole state.
    let sync = server.sync(&bob_token, Some(&since), 0, None).await;
    let joined = &sync["rooms"]["join"][&room];
    let all: Vec<String> = list(&joined["state"]["events"])
        .iter()
        .chain(list(&joined["timeline"]["events"]).iter())
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(all.iter().any(|t| t == "m.room.create"), "{all:?}");
    let since = next_batch(&sync);

    // Room filters keep other rooms out; sender filters apply to timelines.
    server.send_text(&alice_token, &room, "in room").await;
    server.send_text(&alice_token, &other, "in other").await;
    let only_room = json!({"room": {"rooms": [room]}});
    let sync = server.sync(&bob_token, Some(&since), 0, Some(only_room)).await;
    assert_eq!(bodies(&sync, &room), vec!["in room"]);
    assert!(sync["rooms"]["join"].get(&other).is_none());
    let not_alice = json!({"room": {"timeline": {"not_senders": ["@alice:localhost"]}}});
    let sync2 = server.sync(&bob_token, Some(&since), 0, Some(not_alice)).await;
    assert!(bodies(&sync2, &room).is_empty());

    // Leaving shows the room under `leave`, once.
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&other)),
            Some(&bob_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let sync = server.sync(&bob_token, Some(&next_batch(&sync)), 0, None).await;
    let left = list(&sync["rooms"]["leave"][&other]["timeline"]["events"]);
    assert!(
        left.iter()
            .any(|e| e["state_key"] == bob.as_str() && e["content"]["membership"] == "leave"),
        "{sync}"
    );
    let after = server.sync(&bob_token, Some(&next_batch(&sync)), 0, None).await;
    assert!(after["rooms"]["leave"].get(&other).is_none());

    // A stored filter works by ID.
    let (status, created) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/user/{}/filter", enc(&bob)),
            Some(&bob_token),
            Some(json!({"room": {"timeline": {"limit": 1}}})),
        )
        .await;
    assert_eq!(status, 200);
    let id = created["filter_id"].as_str().unwrap();
    let sync = server.sync(&bob_token, None, 0, None).await;
    let full = timeline(&sync, &room).len();
    let (status, filtered) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/sync?filter={id}"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(full > 1);
    assert_eq!(timeline(&filtered, &room).len(), 1);
    let (status, _) = server
        .call("GET", "/_matrix/client/v3/sync?filter=999999", Some(&bob_token), None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .call("GET", "/_matrix/client/v3/sync?since=nonsense", Some(&bob_token), None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn tokens_survive_a_restart() {
    let mut server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw").await;
    let room = server.create_room(&token, json!({})).await;
    server.send_text(&token, &room, "before").await;
    let since = next_batch(&server.sync(&token, None, 0, None).await);
    server.restart();
    server.send_text(&token, &room, "after").await;
    let sync = server.sync(&token, Some(&since), 0, None).await;
    assert_eq!(bodies(&sync, &room), vec!["after"]);
}

#[tokio::test]
async fn lazy_loading_sends_the_members_of_the_timeline_senders() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (carol_id, carol, _) = server.register("carol", "pw").await;
    let (dave_id, dave, _) = server.register("dave", "pw").await;
    // Named, so there are no heroes, whose members a lazy-loading client
    // gets too (see tests/conformance.rs).
    let room_id = server
        .create_room(&alice, json!({"preset": "public_chat", "name": "Chat"}))
        .await;
    server.join(&carol, &room_id).await;
    server.join(&dave, &room_id).await;
    for i in 0..3 {
        server.send_text(&alice, &room_id, &format!("alice {i}")).await;
    }
    let lazy = json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 2}}});
    let members = |sync: &Value| -> Vec<String> {
        sync["rooms"]["join"][&room_id]["state"]["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .map(|e| e["state_key"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = server.sync(&alice, None, 0, Some(lazy.clone())).await;
    assert!(
        !members(&first).contains(&carol_id),
        "carol has not spoken yet: {first}"
    );
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Carol, silent so far, speaks: her member event comes with it, and
    // dave's, who stays silent, does not.
    server.send_text(&carol, &room_id, "hello").await;
    let next = server.sync(&alice, Some(&since), 0, Some(lazy)).await;
    let got = members(&next);
    assert!(got.contains(&carol_id), "{next}");
    assert!(!got.contains(&dave_id), "{next}");
}
