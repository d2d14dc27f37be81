//! Rooms over HTTP: creation, membership, messages, state, redaction,
//! history visibility, aliases and the directory.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::json;

fn rooms_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

#[tokio::test]
async fn two_users_chat_in_a_private_room() {
    let server = TestServer::start().await;
    let (alice, alice_token, _) = server.register("alice", "pw").await;
    let (bob, bob_token, _) = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice_token,
            json!({"name": "Family", "topic": "Hello", "invite": [bob]}),
        )
        .await;

    // Bob cannot read or send before joining.
    let before = server
        .call("GET", &rooms_path(&room, "messages?dir=b"), Some(&bob_token), None)
        .await;
    assert_error(&before, 403, "M_FORBIDDEN");

    // The invite shows in Bob's sync with the room's name.
    let sync = server.sync(&bob_token, None, 0, None).await;
    let invite = &sync["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(
        invite
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Family"),
        "{sync}"
    );

    server.join(&bob_token, &room).await;
    server.send_text(&alice_token, &room, "hi bob").await;
    server.send_text(&bob_token, &room, "hi alice").await;
    assert_eq!(
        server.message_bodies(&alice_token, &room).await,
        vec!["hi bob", "hi alice"]
    );

    let (status, joined) = server
        .call("GET", "/_matrix/client/v3/joined_rooms", Some(&bob_token), None)
        .await;
    assert_eq!((status, joined["joined_rooms"].clone()), (200, json!([room])));
    let (_, members) = server
        .call("GET", &rooms_path(&room, "joined_members"), Some(&bob_token), None)
        .await;
    let joined: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
    assert_eq!(joined, vec![&alice, &bob]);
    let (_, members) = server
        .call(
            "GET",
            &rooms_path(&room, "members?membership=join"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 2);
    let (_, members) = server
        .call(
            "GET",
            &rooms_path(&room, "members?not_membership=join"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 0);

    // State reads: one event, and the whole state.
    let (status, topic) = server
        .call("GET", &rooms_path(&room, "state/m.room.topic/"), Some(&bob_token), None)
        .await;
    assert_eq!((status, topic["topic"].as_str()), (200, Some("Hello")));
    let (_, state) = server
        .call("GET", &rooms_path(&room, "state"), Some(&bob_token), None)
        .await;
    let types: Vec<&str> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.name",
        "m.room.member",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
}

#[tokio::test]
async fn sending_is_idempotent_per_transaction_and_device() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw").await;
    let room = server.create_room(&token, json!({})).await;
    let path = rooms_path(&room, "send/m.room.message/txn1");
    let body = json!({"msgtype": "m.text", "body": "once"});
    let first = server.call("PUT", &path, Some(&token), Some(body.clone())).await;
    let second = server.call("PUT", &path, Some(&token), Some(body.clone())).await;
    assert_eq!(first.0, 200);
    assert_eq!(first.1["event_id"], second.1["event_id"]);
    assert_eq!(server.message_bodies(&token, &room).await, vec!["once"]);

    // Another device of the same user has its own transactions.
    let (_, login) = server.login("alice", "pw", None).await;
    let other = login["access_token"].as_str().unwrap();
    let third = server.call("PUT", &path, Some(other), Some(body)).await;
    assert_ne!(third.1["event_id"], first.1["event_id"]);
    assert_eq!(server.message_bodies(&token, &room).await, vec!["once", "once"]);

    // The sending device sees its transaction ID; others do not.
    let event_id = first.1["event_id"].as_str().unwrap();
    let own = server
        .call(
            "GET",
            &rooms_path(&room, &format!("event/{}", enc(event_id))),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(own.1["unsigned"]["transaction_id"], "txn1", "{}", own.1);
    let other_view = server
        .call(
            "GET",
            &rooms_path(&room, &format!("event/{}", enc(event_id))),
            Some(other),
            None,
        )
        .await;
    assert!(other_view.1["unsigned"].get("transaction_id").is_none());
}

#[tokio::test]
async fn refusals_leave_no_trace() {
    let server = TestServer::start().await;
    let (_, alice_token, _) = server.register("alice", "pw").await;
    let (_, bob_token, _) = server.register("bob", "pw").await;
    let (_, eve_token, _) = server.register("eve", "pw").await;
    let room = server
        .create_room(&alice_token, json!({"preset": "public_chat", "name": "Club"}))
        .await;
    server.join(&bob_token, &room).await;

    // A non-member cannot send.
    let eve = server
        .call(
            "PUT",
            &rooms_path(&room, "send/m.room.message/e1"),
            Some(&eve_token),
            Some(json!({"msgtype": "m.text", "body": "spam"})),
        )
        .await;
    assert_error(&eve, 403, "M_FORBIDDEN");

    // A member without power cannot rename the room or change power levels.
    let rename = server
        .call(
            "PUT",
            &rooms_path(&room, "state/m.room.name/"),
            Some(&bob_token),
            Some(json!({"name": "Bob's"})),
        )
        .await;
    assert_error(&rename, 403, "M_FORBIDDEN");
    let promote = server
        .call(
            "PUT",
            &rooms_path(&room, "state/m.room.power_levels/"),
            Some(&bob_token),
            Some(json!({"users": {"@bob:localhost": 100}})),
        )
        .await;
    assert_error(&promote, 403, "M_FORBIDDEN");
    let (_, name) = server
        .call("GET", &rooms_path(&room, "state/m.room.name/"), Some(&bob_token), None)
        .await;
    assert_eq!(name["name"], "Club");
    let (_, page) = server
        .call(
            "GET",
            &rooms_path(&room, "messages?dir=b&limit=100"),
            Some(&alice_token),
            None,
        )
        .await;
    assert!(
        !page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["name"] == "Bob's"),
        "a refused event must not be stored"
    );

    // Unknown rooms and events are 404, not 500.
    let unknown = server
        .call(
            "GET",
            &rooms_path("!nope:localhost", "messages?dir=b"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_error(&unknown, 404, "M_NOT_FOUND");
    let unknown_event = server
        .call("GET", &rooms_path(&room, "event/$nope"), Some(&alice_token), None)
        .await;
    assert_error(&unknown_event, 404, "M_NOT_FOUND");
    let send_unknown = server
        .call(
            "PUT",
            &rooms_path("!nope:localhost", "send/m.room.message/x"),
            Some(&alice_token),
            Some(json!({"body": "x"})),
        )
        .await;
    assert_error(&send_unknown, 404, "M_NOT_FOUND");

    // Invalid IDs and oversized input.
    let bad_room = server
        .call(
            "GET",
            "/_matrix/client/v3/rooms/not-a-room/messages?dir=b",
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(bad_room.0, 400, "{}", bad_room.1);
    let long_key = "k".repeat(300);
    let long = server
        .call(
            "PUT",
            &rooms_path(&room, &format!("state/m.room.custom/{long_key}")),
            Some(&alice_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(long.0 / 100, 4, "{}", long.1);
    let big = server
        .call(
            "PUT",
            &rooms_path(&room, "send/m.room.message/big"),
            Some(&alice_token),
            Some(json!({"msgtype": "m.text", "body": "x".repeat(70_000)})),
        )
        .await;
    assert_error(&big, 413, "M_TOO_LARGE");
    let not_object = server
        .call_raw(
            "PUT",
            &rooms_path(&room, "send/m.room.message/arr"),
            Some(&alice_token),
            b"[1]".to_vec(),
        )
        .await;
    assert_eq!(not_object.0, 400, "{}", not_object.1);
    let third_party = server
        .call(
            "POST",
            &rooms_path(&room, "invite"),
            Some(&alice_token),
            Some(json!({"id_server": "id.example.org", "id_access_token": "t", "medium": "email", "address": "a@example.org"})),
        )
        .await;
    assert_error(&third_party, 403, "M_THREEPID_DENIED");
}

#[tokio::test]
async fn redaction_strips_content_everywhere() {
    let server = TestServer::start().await;
    let (_, alice_token, _) = server.register("alice", "pw").await;
    let (_, bob_token, _) = server.register("bob", "pw").await;
    let room = server.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    server.join(&bob_token, &room).await;
    let secret = server.send_text(&bob_token, &room, "oops, my password").await;
    let alices = server.send_text(&alice_token, &room, "alice's words").await;

    // Bob cannot redact Alice's message; Alice (power 100) can redact Bob's.
    let refused = server
        .call(
            "PUT",
            &rooms_path(&room, &format!("redact/{}/r1", enc(&alices))),
            Some(&bob_token),
            Some(json!({})),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    let redaction = server
        .call(
            "PUT",
            &rooms_path(&room, &format!("redact/{}/r2", enc(&secret))),
            Some(&alice_token),
            Some(json!({"reason": "password"})),
        )
        .await;
    assert_eq!(redaction.0, 200, "{}", redaction.1);

    let (_, event) = server
        .call(
            "GET",
            &rooms_path(&room, &format!("event/{}", enc(&secret))),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(event["content"], json!({}), "{event}");
    assert_eq!(event["unsigned"]["redacted_because"]["content"]["reason"], "password");
    let bodies = server.message_bodies(&bob_token, &room).await;
    assert_eq!(bodies, vec!["", "alice's words"], "the redacted message has no body");
    let sync = server.sync(&bob_token, None, 0, None).await;
    let text = sync.to_string();
    assert!(!text.contains("my password"), "{text}");

    // A redacted state event: the current state shows it stripped at once,
    // even though the room's state was just read (and kept parsed).
    let (status, topic) = server
        .call(
            "PUT",
            &rooms_path(&room, "state/m.room.topic/"),
            Some(&alice_token),
            Some(json!({"topic": "my phone number"})),
        )
        .await;
    assert_eq!(status, 200, "{topic}");
    let full = server
        .call("GET", &rooms_path(&room, "state"), Some(&bob_token), None)
        .await
        .1;
    assert!(full.to_string().contains("my phone number"));
    let topic_id = topic["event_id"].as_str().unwrap();
    let redaction = server
        .call(
            "PUT",
            &rooms_path(&room, &format!("redact/{}/r3", enc(topic_id))),
            Some(&alice_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(redaction.0, 200, "{}", redaction.1);
    let full = server
        .call("GET", &rooms_path(&room, "state"), Some(&bob_token), None)
        .await
        .1;
    assert!(!full.to_string().contains("my phone number"), "{full}");
    let initial = server.sync(&bob_token, None, 0, None).await.to_string();
    assert!(!initial.contains("my phone number"), "{initial}");
}

/// The auth rules see a redaction at once: redacting a v10 room's power
/// levels drops their `invite` level (v11 keeps it), so an invite refused
/// just before (which read the event) goes through just after.
#[tokio::test]
async fn auth_rules_see_a_redacted_power_levels_event_at_once() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let (carol, _, _) = server.register("carol", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10",
                   "power_level_content_override": {"invite": 100}}),
        )
        .await;
    server.join(&bob, &room).await;
    let invite_path = rooms_path(&room, "invite");
    let invite = || server.call("POST", &invite_path, Some(&bob), Some(json!({"user_id": carol})));
    assert_error(&invite().await, 403, "M_FORBIDDEN");

    let (status, state) = server
        .call("GET", &rooms_path(&room, "state"), Some(&alice), None)
        .await;
    assert_eq!(status, 200, "{state}");
    let power_levels = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.power_levels")
        .unwrap();
    assert_eq!(power_levels["content"]["invite"], 100);
    let redaction = server
        .call(
            "PUT",
            &rooms_path(
                &room,
                &format!("redact/{}/r1", enc(power_levels["event_id"].as_str().unwrap())),
            ),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(redaction.0, 200, "{}", redaction.1);

    let allowed = invite().await;
    assert_eq!(allowed.0, 200, "{}", allowed.1);
}

#[tokio::test]
async fn history_visibility_for_a_late_joiner() {
    let server = TestServer::start().await;
    let (_, alice_token, _) = server.register("alice", "pw").await;
    let (_, bob_token, _) = server.register("bob", "pw").await;
    let (_, carol_token, _) = server.register("carol", "pw").await;

    // Shared history: a late joiner reads what was said before.
    let shared = server.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    server.send_text(&alice_token, &shared, "before bob").await;
    server.join(&bob_token, &shared).await;
    assert_eq!(server.message_bodies(&bob_token, &shared).await, vec!["before bob"]);

    // Joined-only history: the late joiner sees from their join on.
    let joined_only = server
        .create_room(
            &alice_token,
            json!({"preset": "public_chat", "initial_state": [
                {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}
            ]}),
        )
        .await;
    server
        .send_text(&alice_token, &joined_only, "secret before carol")
        .await;
    server.join(&carol_token, &joined_only).await;
    server.send_text(&alice_token, &joined_only, "after carol").await;
    assert_eq!(
        server.message_bodies(&carol_token, &joined_only).await,
        vec!["after carol"]
    );
    let sync = server.sync(&carol_token, None, 0, None).await;
    assert!(!sync.to_string().contains("secret before carol"));

    // After leaving, newer messages are hidden.
    let (status, _) = server
        .call(
            "POST",
            &rooms_path(&joined_only, "leave"),
            Some(&carol_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    server.send_text(&alice_token, &joined_only, "after carol left").await;
    assert_eq!(
        server.message_bodies(&carol_token, &joined_only).await,
        vec!["after carol"]
    );
}

#[tokio::test]
async fn kick_ban_unban_leave_forget() {
    let server = TestServer::start().await;
    let (_, alice_token, _) = server.register("alice", "pw").await;
    let (bob, bob_token, _) = server.register("bob", "pw").await;
    let room = server.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    server.join(&bob_token, &room).await;

    // Bob (power 0) cannot kick Alice.
    let refused = server
        .call(
            "POST",
            &rooms_path(&room, "kick"),
            Some(&bob_token),
            Some(json!({"user_id": "@alice:localhost"})),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");

    let kick = server
        .call(
            "POST",
            &rooms_path(&room, "kick"),
            Some(&alice_token),
            Some(json!({"user_id": bob, "reason": "calm down"})),
        )
        .await;
    assert_eq!(kick.0, 200, "{}", kick.1);
    server.join(&bob_token, &room).await;
    let ban = server
        .call(
            "POST",
            &rooms_path(&room, "ban"),
            Some(&alice_token),
            Some(json!({"user_id": bob})),
        )
        .await;
    assert_eq!(ban.0, 200);
    let rejoin = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob_token),
            Some(json!({})),
        )
        .await;
    assert_error(&rejoin, 403, "M_FORBIDDEN");
    let unban = server
        .call(
            "POST",
            &rooms_path(&room, "unban"),
            Some(&alice_token),
            Some(json!({"user_id": bob})),
        )
        .await;
    assert_eq!(unban.0, 200);
    server.join(&bob_token, &room).await;

    // Forgetting needs a leave first; then the room is gone from sync.
    let early = server
        .call("POST", &rooms_path(&room, "forget"), Some(&bob_token), Some(json!({})))
        .await;
    assert_eq!(early.0, 400);
    let leave = server
        .call("POST", &rooms_path(&room, "leave"), Some(&bob_token), Some(json!({})))
        .await;
    assert_eq!(leave.0, 200);
    let forget = server
        .call("POST", &rooms_path(&room, "forget"), Some(&bob_token), Some(json!({})))
        .await;
    assert_eq!(forget.0, 200);
    let sync = server
        .sync(&bob_token, None, 0, Some(json!({"room": {"include_leave": true}})))
        .await;
    assert!(sync["rooms"]["leave"].get(&room).is_none(), "{sync}");
}

#[tokio::test]
async fn aliases_and_the_room_directory() {
    let server = TestServer::start().await;
    let (_, alice_token, _) = server.register("alice", "pw").await;
    let (_, bob_token, _) = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice_token,
            json!({"visibility": "public", "preset": "public_chat", "room_alias_name": "club", "name": "The Club", "topic": "chess"}),
        )
        .await;
    let (status, resolved) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", enc("#club:localhost")),
            None,
            None,
        )
        .await;
    assert_eq!((status, resolved["room_id"].as_str()), (200, Some(room.as_str())));

    // The alias is taken; another room cannot claim it.
    let taken = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&bob_token),
            Some(json!({"room_alias_name": "club"})),
        )
        .await;
    assert_error(&taken, 400, "M_ROOM_IN_USE");

    server.join(&bob_token, "#club:localhost").await;
    let (_, state) = server
        .call(
            "GET",
            &rooms_path(&room, "state/m.room.canonical_alias/"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(state["alias"], "#club:localhost");

    // A canonical alias must point to the room.
    let bad = server
        .call(
            "PUT",
            &rooms_path(&room, "state/m.room.canonical_alias/"),
            Some(&alice_token),
            Some(json!({"alias": "#elsewhere:localhost"})),
        )
        .await;
    assert_error(&bad, 400, "M_BAD_ALIAS");

    // The directory lists and searches it.
    let (_, list) = server
        .call("GET", "/_matrix/client/v3/publicRooms", Some(&bob_token), None)
        .await;
    let entry = &list["chunk"][0];
    assert_eq!(entry["room_id"], room.as_str());
    assert_eq!(entry["name"], "The Club");
    assert_eq!(entry["num_joined_members"], 2);
    let (_, found) = server
        .call(
            "POST",
            "/_matrix/client/v3/publicRooms",
            Some(&bob_token),
            Some(json!({"filter": {"generic_search_term": "CHESS"}})),
        )
        .await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    let (_, none) = server
        .call(
            "POST",
            "/_matrix/client/v3/publicRooms",
            Some(&bob_token),
            Some(json!({"filter": {"generic_search_term": "go"}})),
        )
        .await;
    assert_eq!(none["chunk"].as_array().unwrap().len(), 0);

    // Only someone with power may unpublish; then it is gone.
    let path = format!("/_matrix/client/v3/directory/list/room/{}", enc(&room));
    let refused = server
        .call("PUT", &path, Some(&bob_token), Some(json!({"visibility": "private"})))
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    let ok = server
        .call("PUT", &path, Some(&alice_token), Some(json!({"visibility": "private"})))
        .await;
    assert_eq!(ok.0, 200);
    let (_, vis) = server.call("GET", &path, None, None).await;
    assert_eq!(vis["visibility"], "private");

    // Deleting: not by Bob, by Alice.
    let alias_path = format!("/_matrix/client/v3/directory/room/{}", enc("#club:localhost"));
    let refused = server.call("DELETE", &alias_path, Some(&bob_token), None).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    let deleted = server.call("DELETE", &alias_path, Some(&alice_token), None).await;
    assert_eq!(deleted.0, 200);
    let gone = server.call("GET", &alias_path, None, None).await;
    assert_error(&gone, 404, "M_NOT_FOUND");
}

/// Every room version can be created and used; v12 names the room after its
/// create event and gives the creator unlimited power.
#[tokio::test]
async fn every_room_version_works() {
    let server = TestServer::start().await;
    let (alice, token, _) = server.register("alice", "pw").await;
    for version in 1..=12 {
        let room = server
            .create_room(
                &token,
                json!({"room_version": version.to_string(), "name": format!("v{version}")}),
            )
            .await;
        let event_id = server.send_text(&token, &room, &format!("hello v{version}")).await;
        assert_eq!(
            server.message_bodies(&token, &room).await,
            vec![format!("hello v{version}")]
        );
        let (_, create) = server
            .call("GET", &rooms_path(&room, "state/m.room.create/"), Some(&token), None)
            .await;
        assert_eq!(create["room_version"], version.to_string());
        if version <= 2 {
            assert!(event_id.ends_with(":localhost"), "v{version}: {event_id}");
        } else {
            assert!(!event_id.contains(':'), "v{version}: {event_id}");
        }
        let (_, pl) = server
            .call(
                "GET",
                &rooms_path(&room, "state/m.room.power_levels/"),
                Some(&token),
                None,
            )
            .await;
        if version == 12 {
            assert_eq!(&room[1..], &create_event_id(&server, &token, &room).await[1..]);
            assert!(
                pl["users"].get(&alice).is_none(),
                "v12 creators are not in power levels: {pl}"
            );
            assert_eq!(pl["events"]["m.room.tombstone"], 150);
        } else {
            assert_eq!(pl["users"][&alice], 100);
        }
        // The creator may change the name in every version.
        let rename = server
            .call(
                "PUT",
                &rooms_path(&room, "state/m.room.name/"),
                Some(&token),
                Some(json!({"name": "renamed"})),
            )
            .await;
        assert_eq!(rename.0, 200, "v{version}: {}", rename.1);
    }
    let unsupported = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(json!({"room_version": "99"})),
        )
        .await;
    assert_error(&unsupported, 400, "M_UNSUPPORTED_ROOM_VERSION");
}

async fn create_event_id(server: &TestServer, token: &str, room: &str) -> String {
    let (_, state) = server.call("GET", &rooms_path(room, "state"), Some(token), None).await;
    state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .and_then(|e| e["event_id"].as_str())
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn messages_paginate_both_ways() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw").await;
    let room = server.create_room(&token, json!({})).await;
    for i in 0..25 {
        server.send_text(&token, &room, &format!("m{i}")).await;
    }
    // Backward in pages of 10 until the start of the room.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..20 {
        let mut path = rooms_path(&room, "messages?dir=b&limit=10");
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let (status, page) = server.call("GET", &path, Some(&token), None).await;
        assert_eq!(status, 200, "{page}");
        for e in page["chunk"].as_array().unwrap() {
            if e["type"] == "m.room.message" {
                seen.push(e["content"]["body"].as_str().unwrap().to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    seen.reverse();
    let expected: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);

    // Forward from the start, with a type filter.
    let filter = enc(&json!({"types": ["m.room.message"]}).to_string());
    let (_, page) = server
        .call(
            "GET",
            &rooms_path(&room, &format!("messages?dir=f&limit=5&filter={filter}")),
            Some(&token),
            None,
        )
        .await;
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["m0", "m1", "m2", "m3", "m4"]);
    let bad = server
        .call(
            "GET",
            &rooms_path(&room, "messages?dir=b&from=banana"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(bad.0, 400);
}
