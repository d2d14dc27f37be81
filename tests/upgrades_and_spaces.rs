//! Room upgrades and space hierarchies.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

async fn state(server: &TestServer, token: &str, room_id: &str, event_type: &str, key: &str) -> (u16, Value) {
    server
        .call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{event_type}/{}",
                enc(room_id),
                enc(key)
            ),
            Some(token),
            None,
        )
        .await
}

async fn upgrade(server: &TestServer, token: &str, room_id: &str, version: &str) -> (u16, Value) {
    server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(room_id)),
            Some(token),
            Some(json!({"new_version": version})),
        )
        .await
}

#[tokio::test]
async fn an_upgrade_replaces_the_room_and_carries_its_people_along() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let (carol_id, _, _) = server.register("carol", "pw").await;
    let old = server
        .create_room(
            &alice,
            json!({"room_version": "10", "name": "Family", "topic": "us", "room_alias_name": "family",
                "invite": [bob_id]}),
        )
        .await;
    server.join(&bob, &old).await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&old)),
            Some(&alice),
            Some(json!({"user_id": carol_id, "reason": "spam"})),
        )
        .await;
    assert_eq!(status, 200);

    // Only someone who may send the tombstone upgrades, to a known version.
    assert_error(&upgrade(&server, &bob, &old, "12").await, 403, "M_FORBIDDEN");
    assert_error(
        &upgrade(&server, &alice, &old, "99").await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );

    let (status, resp) = upgrade(&server, &alice, &old, "12").await;
    assert_eq!(status, 200, "{resp}");
    let new = resp["replacement_room"].as_str().unwrap().to_owned();

    // The replacement knows its predecessor and has the old room's state.
    let create = state(&server, &alice, &new, "m.room.create", "").await.1;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert_eq!(
        state(&server, &alice, &new, "m.room.name", "").await.1["name"],
        "Family"
    );
    assert_eq!(state(&server, &alice, &new, "m.room.topic", "").await.1["topic"], "us");
    assert_eq!(
        state(&server, &alice, &new, "m.room.member", &carol_id).await.1["membership"],
        "ban"
    );
    // v12 creators are not listed in the power levels.
    let levels = state(&server, &alice, &new, "m.room.power_levels", "").await.1;
    assert!(levels["users"].get(&alice_id).is_none(), "{levels}");

    // The alias now leads to the replacement.
    let (status, alias) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", enc("#family:localhost")),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(alias["room_id"], new.as_str());
    assert_eq!(
        state(&server, &alice, &new, "m.room.canonical_alias", "").await.1["alias"],
        "#family:localhost"
    );

    // The old room: a tombstone, and bob may no longer talk there.
    let tombstone = state(&server, &bob, &old, "m.room.tombstone", "").await.1;
    assert_eq!(tombstone["replacement_room"], new.as_str());
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1", enc(&old)),
            Some(&bob),
            Some(json!({"msgtype": "m.text", "body": "hello?"})),
        )
        .await;
    assert_eq!(status, 403);

    // Bob was invited to the private replacement and follows.
    let sync = server.sync(&bob, None, 0, None).await;
    assert!(sync["rooms"]["invite"][&new].is_object(), "{sync}");
    server.join(&bob, &new).await;
    server.send_text(&bob, &new, "moved in").await;

    // Back down to v11: the v12 creator, unlisted there, gets a listed level
    // high enough for everything, including another tombstone.
    let (status, resp) = upgrade(&server, &alice, &new, "11").await;
    assert_eq!(status, 200, "{resp}");
    let newest = resp["replacement_room"].as_str().unwrap().to_owned();
    let levels = state(&server, &alice, &newest, "m.room.power_levels", "").await.1;
    let tombstone_level = levels["events"]["m.room.tombstone"].as_i64().unwrap();
    assert!(
        levels["users"][&alice_id].as_i64().unwrap() >= tombstone_level.max(100),
        "{levels}"
    );
    let (status, resp) = upgrade(&server, &alice, &newest, "12").await;
    assert_eq!(status, 200, "{resp}");
}

async fn add_child(server: &TestServer, token: &str, space: &str, child: &str, content: Value) {
    let (status, resp) = server
        .call(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(space),
                enc(child)
            ),
            Some(token),
            Some(content),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
}

async fn hierarchy(server: &TestServer, token: &str, space: &str, query: &str) -> (u16, Value) {
    server
        .call(
            "GET",
            &format!("/_matrix/client/v1/rooms/{}/hierarchy?{query}", enc(space)),
            Some(token),
            None,
        )
        .await
}

fn names(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test]
async fn a_space_hierarchy_walks_children_depth_first_and_hides_private_rooms() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let public = |name: &str, space: bool| {
        let mut body = json!({"preset": "public_chat", "name": name});
        if space {
            body["creation_content"] = json!({"type": "m.space"});
        }
        body
    };
    let space = server.create_room(&alice, public("S", true)).await;
    let sub = server.create_room(&alice, public("T", true)).await;
    let a = server.create_room(&alice, public("A", false)).await;
    let c = server.create_room(&alice, public("C", false)).await;
    let b = server
        .create_room(&alice, json!({"preset": "private_chat", "name": "B"}))
        .await;
    let gone = server.create_room(&alice, public("D", false)).await;
    let via = json!(["localhost"]);
    add_child(&server, &alice, &space, &a, json!({"via": via, "order": "b"})).await;
    add_child(&server, &alice, &space, &sub, json!({"via": via, "order": "a"})).await;
    add_child(&server, &alice, &space, &b, json!({"via": via})).await;
    // A child without `via` has been removed.
    add_child(&server, &alice, &space, &gone, json!({})).await;
    add_child(&server, &alice, &sub, &c, json!({"via": via, "suggested": true})).await;
    // A loop back to the top is walked once.
    add_child(&server, &alice, &sub, &space, json!({"via": via})).await;

    // Depth first, by `order`; bob does not see the private room.
    let (status, page) = hierarchy(&server, &bob, &space, "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page), ["S", "T", "C", "A"]);
    let top = &page["rooms"][0];
    assert_eq!(top["room_type"], "m.space");
    assert_eq!(top["children_state"].as_array().unwrap().len(), 3, "{top}");
    assert!(top["children_state"][0]["origin_server_ts"].is_u64());
    // Alice, a member of the private room, does.
    let (_, page) = hierarchy(&server, &alice, &space, "").await;
    assert_eq!(names(&page), ["S", "T", "C", "A", "B"]);
    let (_, page) = hierarchy(&server, &alice, &space, "max_depth=1").await;
    assert_eq!(names(&page), ["S", "T", "A", "B"]);
    let (_, page) = hierarchy(&server, &alice, &space, "suggested_only=true").await;
    assert_eq!(names(&page), ["S"], "only suggested children; T is not one");
    let (_, page) = hierarchy(&server, &alice, &sub, "suggested_only=true").await;
    assert_eq!(names(&page), ["T", "C"]);

    // Pages of two.
    let (_, first) = hierarchy(&server, &bob, &space, "limit=2").await;
    assert_eq!(names(&first), ["S", "T"]);
    let token = first["next_batch"].as_str().expect("more rooms").to_owned();
    let (_, second) = hierarchy(&server, &bob, &space, &format!("limit=2&from={}", enc(&token))).await;
    assert_eq!(names(&second), ["C", "A"]);
    assert!(second.get("next_batch").is_none_or(Value::is_null), "{second}");
    assert_error(
        &hierarchy(
            &server,
            &bob,
            &space,
            &format!("limit=2&max_depth=1&from={}", enc(&token)),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    // A private room's hierarchy is closed to strangers.
    assert_error(&hierarchy(&server, &bob, &b, "").await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn room_summaries_for_those_who_may_see_the_room() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let public = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "Lobby", "topic": "hi", "room_alias_name": "lobby"}),
        )
        .await;
    let private = server
        .create_room(&alice, json!({"preset": "private_chat", "name": "Secret"}))
        .await;
    for prefix in [
        "/_matrix/client/v1/room_summary",
        "/_matrix/client/unstable/im.nheko.summary/rooms",
    ] {
        let path = |room: &str| {
            if prefix.ends_with("/rooms") {
                format!("{prefix}/{}/summary", enc(room))
            } else {
                format!("{prefix}/{}", enc(room))
            }
        };
        let (status, body) = server.call("GET", &path("#lobby:localhost"), Some(&bob), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["room_id"], public.as_str());
        assert_eq!(body["name"], "Lobby");
        assert_eq!(body["topic"], "hi");
        // The spec: no join_rule means public (and ruma writes it so).
        assert!(body.get("join_rule").is_none_or(|r| r == "public"), "{body}");
        assert_eq!(body["num_joined_members"], 1);
        assert_eq!(body["membership"], "leave");
        assert!(body["room_version"].is_string(), "{body}");
        // Public rooms are summarized without a token too, without membership.
        let (status, body) = server.call("GET", &path(&public), None, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("membership").is_none(), "{body}");
        // A private room: its members see it, others get 404 as for no room.
        let (status, body) = server.call("GET", &path(&private), Some(&alice), None).await;
        assert_eq!((status, &body["membership"]), (200, &json!("join")), "{body}");
        assert_eq!(body["join_rule"], "invite", "{body}");
        assert_error(
            &server.call("GET", &path(&private), Some(&bob), None).await,
            404,
            "M_NOT_FOUND",
        );
        assert_error(
            &server.call("GET", &path(&private), None, None).await,
            404,
            "M_NOT_FOUND",
        );
        assert_error(
            &server.call("GET", &path("#nowhere:localhost"), Some(&bob), None).await,
            404,
            "M_NOT_FOUND",
        );
    }
}
