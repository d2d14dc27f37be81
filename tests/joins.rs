//! Join rules beyond public and invite: knocking, and restricted rooms that
//! admit the members of other rooms.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

async fn member_event(server: &TestServer, token: &str, room_id: &str, user_id: &str) -> Value {
    let (status, event) = server
        .call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room_id),
                enc(user_id)
            ),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    event
}

async fn knock(server: &TestServer, token: &str, room: &str) -> (u16, Value) {
    server
        .call(
            "POST",
            &format!("/_matrix/client/v3/knock/{}", enc(room)),
            Some(token),
            Some(json!({"reason": "let me in"})),
        )
        .await
}

async fn join(server: &TestServer, token: &str, room: &str) -> (u16, Value) {
    server
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            Some(token),
            Some(json!({})),
        )
        .await
}

#[tokio::test]
async fn a_knock_is_seen_by_the_room_and_answered_with_an_invite() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let room_id = server
        .create_room(
            &alice,
            json!({"name": "Knock here", "initial_state": [
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ]}),
        )
        .await;
    let private = server.create_room(&alice, json!({"preset": "private_chat"})).await;

    // Knocking on an invite-only room is refused; joining a knock room too.
    assert_error(&knock(&server, &bob, &private).await, 403, "M_FORBIDDEN");
    assert_error(&join(&server, &bob, &room_id).await, 403, "M_FORBIDDEN");

    let (status, resp) = knock(&server, &bob, &room_id).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["room_id"], room_id.as_str());
    // The knocker sees the room in the knock section, with its name.
    let sync = server.sync(&bob, None, 0, None).await;
    let knocked = &sync["rooms"]["knock"][&room_id]["knock_state"]["events"];
    assert!(
        knocked
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock here"),
        "{sync}"
    );
    // The room sees the knock with its reason.
    let event = member_event(&server, &alice, &room_id, &bob_id).await;
    assert_eq!(event["membership"], "knock");
    assert_eq!(event["reason"], "let me in");

    server.invite(&alice, &room_id, &bob_id).await;
    server.join(&bob, &room_id).await;
    assert_eq!(
        member_event(&server, &alice, &room_id, &bob_id).await["membership"],
        "join"
    );
}

#[tokio::test]
async fn a_restricted_room_admits_members_of_the_allowed_room_only() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let (_, carol, _) = server.register("carol", "pw").await;
    let space = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "creation_content": {"type": "m.space"}}),
        )
        .await;
    let allow = json!([{"type": "m.room_membership", "room_id": space}]);
    let restricted = server
        .create_room(
            &alice,
            json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "restricted", "allow": allow}}]}),
        )
        .await;
    let knock_restricted = server
        .create_room(
            &alice,
            json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "knock_restricted", "allow": allow}}]}),
        )
        .await;

    // Not in the space: no entry, but a knock where the rule allows it.
    assert_error(&join(&server, &bob, &restricted).await, 403, "M_FORBIDDEN");
    assert_error(&knock(&server, &bob, &restricted).await, 403, "M_FORBIDDEN");
    let (status, resp) = knock(&server, &carol, &knock_restricted).await;
    assert_eq!(status, 200, "{resp}");

    // In the space: straight in, vouched for by a local member who may invite.
    server.join(&bob, &space).await;
    for room in [&restricted, &knock_restricted] {
        let (status, resp) = join(&server, &bob, room).await;
        assert_eq!(status, 200, "{resp}");
        let event = member_event(&server, &alice, room, &bob_id).await;
        assert_eq!(event["membership"], "join");
        assert_eq!(event["join_authorised_via_users_server"], alice_id.as_str(), "{event}");
    }

    // Leaving the space does not undo the membership, but a fresh join
    // after leaving the room needs the space again.
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&space)),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&restricted)),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(&join(&server, &bob, &restricted).await, 403, "M_FORBIDDEN");
}
