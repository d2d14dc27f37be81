//! Client-server behaviours a conformance suite and real clients check,
//! each as the spec states it (issue 21): sync shapes, idempotent state and
//! joins, membership refusals, profiles in rooms, UIA and registration,
//! capabilities, ignored users, 3PIDs, lax key uploads, typing, push rules.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

fn rooms_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

/// A GET (a long-poll) running while the test goes on; its JSON answer.
fn get_in_background(server: &TestServer, token: &str, path: &str) -> tokio::task::JoinHandle<Value> {
    let request = server.client.get(server.url(path)).bearer_auth(token);
    tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
}

fn events(section: &Value) -> Vec<Value> {
    section["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn sync_always_carries_every_section() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let sync = server.sync(&bob, None, 0, None).await;
    for key in ["presence", "account_data", "to_device"] {
        assert!(sync[key]["events"].is_array(), "{key}: {sync}");
    }
    assert!(sync["device_lists"]["changed"].is_array(), "{sync}");
    assert!(sync["device_lists"]["left"].is_array(), "{sync}");
    for key in ["join", "invite", "leave", "knock"] {
        assert!(sync["rooms"][key].is_object(), "rooms.{key}: {sync}");
    }
    let joined = &sync["rooms"]["join"][&room];
    for key in ["state", "timeline", "ephemeral", "account_data"] {
        assert!(joined[key]["events"].is_array(), "{key}: {joined}");
    }
    assert_eq!(joined["timeline"]["limited"], json!(false), "{joined}");

    // An incremental sync with one message: still every section, and
    // `limited: false` written out.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    server.send_text(&alice, &room, "hello").await;
    let sync = server.sync(&bob, Some(&since), 0, None).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(events(&joined["timeline"]).len(), 1, "{joined}");
    assert_eq!(joined["timeline"]["limited"], json!(false), "{joined}");
    assert!(joined["ephemeral"]["events"].is_array(), "{joined}");
    assert!(joined["state"]["events"].is_array(), "{joined}");

    // A left room carries its state and timeline objects too.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .call("POST", &rooms_path(&room, "leave"), Some(&bob), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let sync = server.sync(&bob, Some(&since), 0, None).await;
    let left = &sync["rooms"]["leave"][&room];
    assert!(left["state"]["events"].is_array(), "{sync}");
    assert!(left["timeline"]["events"].is_array(), "{sync}");
}

#[tokio::test]
async fn heroes_only_for_rooms_without_a_name_or_alias() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let sync = server.sync(&bob, None, 0, None).await;
    let summary = &sync["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.heroes"], json!(["@alice:localhost"]), "{summary}");
    assert_eq!(summary["m.joined_member_count"], 2, "{summary}");
    // A lazy-loading client gets the heroes' memberships even when they
    // sent nothing in the timeline (here only Bob's join).
    let lazy = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}});
    let sync = server.sync(&bob, None, 0, Some(lazy)).await;
    let joined = &sync["rooms"]["join"][&room];
    assert!(
        state_of(joined).contains(&("m.room.member".to_owned(), "@alice:localhost".to_owned())),
        "{joined}"
    );

    let (status, _) = server
        .call(
            "PUT",
            &rooms_path(&room, "state/m.room.name/"),
            Some(&alice),
            Some(json!({"name": "Family"})),
        )
        .await;
    assert_eq!(status, 200);
    let sync = server.sync(&bob, None, 0, None).await;
    let summary = &sync["rooms"]["join"][&room]["summary"];
    assert!(summary.get("m.heroes").is_none(), "{summary}");

    // Counts follow each membership change, in incremental syncs too.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    server.register("carol", "pw").await;
    server.invite(&alice, &room, "@carol:localhost").await;
    let sync = server.sync(&bob, Some(&since), 0, None).await;
    let summary = &sync["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.invited_member_count"], 1, "{summary}");
    assert_eq!(summary["m.joined_member_count"], 2, "{summary}");
}

#[tokio::test]
async fn the_federation_event_format_gives_whole_pdus() {
    let (server, alice, _bob, room) = common::alice_and_bob_in_a_room().await;
    server.send_text(&alice, &room, "as a PDU").await;
    let sync = server
        .sync(&alice, None, 0, Some(json!({"event_format": "federation"})))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    let timeline = events(&joined["timeline"]);
    let message = timeline.last().unwrap();
    assert_eq!(message["content"]["body"], "as a PDU");
    for key in ["room_id", "auth_events", "prev_events", "hashes", "signatures", "depth"] {
        assert!(message.get(key).is_some(), "{key} missing: {message}");
    }
    for event in events(&joined["state"]) {
        assert!(event.get("auth_events").is_some(), "{event}");
    }
    // The client format has none of that.
    let sync = server.sync(&alice, None, 0, None).await;
    let message = events(&sync["rooms"]["join"][&room]["timeline"]).pop().unwrap();
    assert!(message.get("auth_events").is_none(), "{message}");
}

/// The event ID of a user's current membership event.
async fn member_event_id(server: &TestServer, token: &str, room: &str, user: &str) -> String {
    let (status, event) = server
        .call(
            "GET",
            &rooms_path(room, &format!("state/m.room.member/{}?format=event", enc(user))),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    event["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_same_state_or_join_again_sends_nothing_new() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let put_topic = |topic: &'static str| {
        let (server, alice, room) = (&server, alice.clone(), room.clone());
        async move {
            let (status, body) = server
                .call(
                    "PUT",
                    &rooms_path(&room, "state/m.room.topic/"),
                    Some(&alice),
                    Some(json!({"topic": topic})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        }
    };
    let first = put_topic("same").await;
    assert_eq!(put_topic("same").await, first);
    assert_ne!(put_topic("other").await, first);

    let joined = member_event_id(&server, &bob, &room, "@bob:localhost").await;
    server.join(&bob, &room).await;
    assert_eq!(member_event_id(&server, &bob, &room, "@bob:localhost").await, joined);
    // Only the topic changes made events: the history shows each once.
    let (_, page) = server
        .call("GET", &rooms_path(&room, "messages?dir=b&limit=100"), Some(&bob), None)
        .await;
    let kinds: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.topic" || e["state_key"] == "@bob:localhost")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["m.room.topic", "m.room.topic", "m.room.member"], "{page}");
}

#[tokio::test]
async fn kicks_and_invites_that_would_undo_a_ban_or_hit_nobody_are_refused() {
    let (server, alice, _bob, room) = common::alice_and_bob_in_a_room().await;
    let (carol_id, carol, _) = server.register("carol", "pw").await;
    let (dave_id, dave, _) = server.register("dave", "pw").await;
    server.join(&carol, &room).await;
    let act = |what: &'static str, target: String| {
        let (server, alice, room) = (&server, alice.clone(), room.clone());
        async move {
            server
                .call(
                    "POST",
                    &rooms_path(&room, what),
                    Some(&alice),
                    Some(json!({"user_id": target})),
                )
                .await
        }
    };
    assert_eq!(act("ban", carol_id.clone()).await.0, 200);
    assert_error(&act("kick", carol_id.clone()).await, 403, "M_FORBIDDEN");
    assert_error(&act("invite", carol_id.clone()).await, 403, "M_FORBIDDEN");
    // Still banned: she cannot come back.
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&carol),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403);
    // Dave was never in the room.
    assert_error(&act("kick", dave_id.clone()).await, 403, "M_FORBIDDEN");
    // And nobody kicks from a room they are not in.
    let other = server.create_room(&dave, json!({"preset": "public_chat"})).await;
    server.join(&carol, &other).await;
    let refused = server
        .call(
            "POST",
            &rooms_path(&other, "kick"),
            Some(&alice),
            Some(json!({"user_id": carol_id})),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_join_carries_the_clients_extra_content() {
    let (server, _alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let (_, carol, _) = server.register("carol", "pw").await;
    for (path, key) in [
        (format!("/_matrix/client/v3/join/{}", enc(&room)), "by_alias_path"),
        (rooms_path(&room, "join"), "by_id_path"),
    ] {
        let token = if key == "by_alias_path" { &carol } else { &bob };
        let (status, body) = server
            .call(
                "POST",
                &path,
                Some(token),
                Some(json!({"reason": "hello", "foo": {"bar": key}, "membership": "leave"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, member) = server
        .call(
            "GET",
            &rooms_path(&room, &format!("state/m.room.member/{}", enc("@carol:localhost"))),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(member["foo"]["bar"], "by_alias_path", "{member}");
    assert_eq!(member["reason"], "hello");
    // The client cannot turn a join into something else.
    assert_eq!(member["membership"], "join");
    let (_, member) = server
        .call(
            "GET",
            &rooms_path(&room, &format!("state/m.room.member/{}", enc("@bob:localhost"))),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(member["foo"]["bar"], "by_id_path", "{member}");
}

#[tokio::test]
async fn profile_changes_reach_every_joined_room() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let second = server.create_room(&bob, json!({})).await;
    let put = |field: &'static str, value: Value| {
        let (server, bob) = (&server, bob.clone());
        async move {
            server
                .call(
                    "PUT",
                    &format!("/_matrix/client/v3/profile/{}/{field}", enc("@bob:localhost")),
                    Some(&bob),
                    Some(json!({ field: value })),
                )
                .await
        }
    };
    assert_eq!(put("displayname", json!("Bobby")).await.0, 200);
    // Any mxc:// URI, also one from another server with an unusual ID.
    assert_eq!(put("avatar_url", json!("mxc://elsewhere.example/a.b~c")).await.0, 200);
    for r in [&room, &second] {
        let (_, member) = server
            .call(
                "GET",
                &rooms_path(r, &format!("state/m.room.member/{}", enc("@bob:localhost"))),
                Some(&alice_or(&alice, &bob, r, &room)),
                None,
            )
            .await;
        assert_eq!(member["displayname"], "Bobby", "{member}");
        assert_eq!(member["avatar_url"], "mxc://elsewhere.example/a.b~c", "{member}");
        assert_eq!(member["membership"], "join");
    }
    // Clearing the name removes it from the membership too.
    assert_eq!(put("displayname", Value::Null).await.0, 200);
    let (_, member) = server
        .call(
            "GET",
            &rooms_path(&room, &format!("state/m.room.member/{}", enc("@bob:localhost"))),
            Some(&alice),
            None,
        )
        .await;
    assert!(member.get("displayname").is_none(), "{member}");
    assert_error(
        &put("avatar_url", json!("https://example.org/a.png")).await,
        400,
        "M_INVALID_PARAM",
    );
}

/// Alice reads the shared room; Bob reads his own.
fn alice_or(alice: &str, bob: &str, room: &str, shared: &str) -> String {
    if room == shared { alice } else { bob }.to_owned()
}

#[tokio::test]
async fn uia_answers_carry_params_and_sessions_stay_with_their_request() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    for device in ["PHONE", "TABLET"] {
        assert_eq!(server.login("alice", "pw", Some(device)).await.0, 200);
    }

    let (status, body) = server
        .call(
            "DELETE",
            "/_matrix/client/v3/devices/PHONE",
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["params"], json!({}), "{body}");
    assert_eq!(body["completed"], json!([]), "{body}");
    assert!(body["flows"].is_array() && body["session"].is_string(), "{body}");
    let session = body["session"].as_str().unwrap().to_owned();

    // The session was for deleting PHONE: it cannot delete TABLET, nor
    // serve another operation of the same user.
    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw", "session": session});
    let switched = server
        .call(
            "DELETE",
            "/_matrix/client/v3/devices/TABLET",
            Some(&alice),
            Some(json!({"auth": auth})),
        )
        .await;
    assert_error(&switched, 403, "M_FORBIDDEN");
    let other_operation = server
        .call(
            "POST",
            "/_matrix/client/v3/account/password",
            Some(&alice),
            Some(json!({"new_password": "pw2", "auth": auth})),
        )
        .await;
    assert_error(&other_operation, 403, "M_FORBIDDEN");
    let (_, devices) = server
        .call("GET", "/_matrix/client/v3/devices", Some(&alice), None)
        .await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 3, "{devices}");
    // Nor can another user finish one of Alice's sessions, even for the
    // same operation on his own devices with his own password.
    let (_, bob, bob_device) = server.register("bob", "pw").await;
    let (status, started) = server
        .call(
            "POST",
            "/_matrix/client/v3/delete_devices",
            Some(&alice),
            Some(json!({"devices": ["TABLET"]})),
        )
        .await;
    assert_eq!(status, 401, "{started}");
    let bobs = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw", "session": started["session"]});
    let stolen = server
        .call(
            "POST",
            "/_matrix/client/v3/delete_devices",
            Some(&bob),
            Some(json!({"devices": [bob_device], "auth": bobs})),
        )
        .await;
    assert_error(&stolen, 403, "M_FORBIDDEN");
    assert_eq!(server.whoami(&bob).await.0, 200, "Bob's device is still there");
    // The session still does what it was started for.
    let (status, body) = server
        .call(
            "DELETE",
            "/_matrix/client/v3/devices/PHONE",
            Some(&alice),
            Some(json!({"auth": auth})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Registration's 401 carries them too.
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "carol", "password": "pw"})),
        )
        .await;
    assert_eq!(status, 401);
    assert!(body["params"].is_object(), "{body}");
}

#[tokio::test]
async fn registration_is_idempotent_within_its_session() {
    let server = TestServer::start().await;
    let request = |session: Option<&str>| {
        let mut body = json!({
            "username": "eve",
            "password": "pw",
            "device_id": "EVEPHONE",
            "initial_device_display_name": "Eve's phone",
        });
        if let Some(session) = session {
            body["auth"] = json!({"type": "m.login.dummy", "session": session});
        }
        body
    };
    let (status, body) = server
        .call("POST", "/_matrix/client/v3/register", None, Some(request(None)))
        .await;
    assert_eq!(status, 401);
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, first) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(request(Some(&session))),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(request(Some(&session))),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user_id"], first["user_id"]);
    assert_eq!(again["device_id"], "EVEPHONE");
    let token = again["access_token"].as_str().unwrap();
    let (status, device) = server
        .call("GET", "/_matrix/client/v3/devices/EVEPHONE", Some(token), None)
        .await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["display_name"], "Eve's phone");
    // Without the session the name is taken.
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "eve", "password": "pw"})),
        )
        .await;
    assert_error(&(status, body), 400, "M_USER_IN_USE");

    // inhibit_login: an account, no token, no device.
    let (_, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "frank", "password": "pw", "inhibit_login": true})),
        )
        .await;
    let session = body["session"].as_str().unwrap();
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "frank", "password": "pw", "inhibit_login": true, "auth": {"type": "m.login.dummy", "session": session}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("access_token").is_none() && body.get("device_id").is_none(),
        "{body}"
    );
}

#[tokio::test]
async fn capabilities_list_each_one_with_its_state() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (status, body) = server
        .call("GET", "/_matrix/client/v3/capabilities", Some(&alice), None)
        .await;
    assert_eq!(status, 200);
    let caps = &body["capabilities"];
    assert_eq!(caps["m.change_password"]["enabled"], true, "{caps}");
    assert_eq!(caps["m.set_displayname"]["enabled"], true, "{caps}");
    assert_eq!(caps["m.set_avatar_url"]["enabled"], true, "{caps}");
    assert_eq!(caps["m.3pid_changes"]["enabled"], false, "{caps}");
    assert_eq!(caps["m.room_versions"]["available"]["12"], "stable", "{caps}");
    assert!(caps["m.room_versions"]["default"].is_string(), "{caps}");
}

#[tokio::test]
async fn ignored_users_are_kept_out_of_sync_and_history() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let sync = server.sync(&alice, None, 0, None).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .call(
            "PUT",
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc("@alice:localhost")
            ),
            Some(&alice),
            Some(json!({"ignored_users": {"@bob:localhost": {}}})),
        )
        .await;
    assert_eq!(status, 200);
    server.send_text(&bob, &room, "you cannot hear me").await;
    server.send_text(&alice, &room, "quiet in here").await;
    let sync = server.sync(&alice, Some(&since), 0, None).await;
    let bodies: Vec<Value> = events(&sync["rooms"]["join"][&room]["timeline"])
        .iter()
        .map(|e| e["content"]["body"].clone())
        .collect();
    assert_eq!(bodies, [json!("quiet in here")], "{sync}");
    assert_eq!(server.message_bodies(&alice, &room).await, ["quiet in here"]);
    // Bob still reads everything.
    assert_eq!(
        server.message_bodies(&bob, &room).await,
        ["you cannot hear me", "quiet in here"]
    );
    // And an invite from Bob does not show.
    let his = server.create_room(&bob, json!({})).await;
    server.invite(&bob, &his, "@alice:localhost").await;
    let sync = server.sync(&alice, None, 0, None).await;
    assert!(sync["rooms"]["invite"].get(&his).is_none(), "{sync}");
}

#[tokio::test]
async fn third_party_identifier_endpoints_answer_as_the_spec_says() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (status, body) = server
        .call("GET", "/_matrix/client/v3/account/3pid", Some(&alice), None)
        .await;
    assert_eq!((status, body), (200, json!({"threepids": []})));
    let email = json!({"client_secret": "secret", "email": "a@example.org", "send_attempt": 1});
    let phone = json!({"client_secret": "secret", "country": "GB", "phone_number": "07700900000", "send_attempt": 1});
    for (path, body, token) in [
        ("/account/3pid/email/requestToken", &email, Some(&alice)),
        ("/account/3pid/msisdn/requestToken", &phone, Some(&alice)),
        ("/register/email/requestToken", &email, None),
        ("/account/password/email/requestToken", &email, None),
        (
            "/account/3pid/add",
            &json!({"client_secret": "secret", "sid": "1"}),
            Some(&alice),
        ),
        (
            "/account/3pid/bind",
            &json!({"client_secret": "secret", "sid": "1", "id_server": "id.example.org", "id_access_token": "t"}),
            Some(&alice),
        ),
    ] {
        let got = server
            .call(
                "POST",
                &format!("/_matrix/client/v3{path}"),
                token.map(String::as_str),
                Some(body.clone()),
            )
            .await;
        assert_error(&got, 403, "M_THREEPID_DENIED");
    }
    // An invite by email address: the same answer.
    let room = server.create_room(&alice, json!({})).await;
    let invite = server
        .call(
            "POST",
            &rooms_path(&room, "invite"),
            Some(&alice),
            Some(json!({"id_server": "id.example.org", "id_access_token": "t", "medium": "email", "address": "a@example.org"})),
        )
        .await;
    assert_error(&invite, 403, "M_THREEPID_DENIED");
    for path in ["/account/3pid/delete", "/account/3pid/unbind"] {
        let (status, body) = server
            .call(
                "POST",
                &format!("/_matrix/client/v3{path}"),
                Some(&alice),
                Some(json!({"medium": "email", "address": "a@example.org"})),
            )
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["id_server_unbind_result"], "no-support");
    }
}

#[tokio::test]
async fn keys_of_unknown_algorithms_and_plain_one_time_keys_are_stored_and_served() {
    let server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let keys = json!({
        "user_id": alice_id,
        "device_id": device,
        "algorithms": ["org.example.future.v1"],
        "keys": {format!("org.example.key:{device}"): "c29tZWtleQ"},
        "signatures": {alice_id.clone(): {format!("org.example.sig:{device}"): "c2lnbmF0dXJl"}},
    });
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&alice),
            Some(json!({
                "device_keys": keys,
                "one_time_keys": {"curve25519:AAAAAQ": "cGxhaW5rZXk", "org.example.otk:AAAAAg": {"key": "x"}},
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["curve25519"], 1, "{body}");
    assert_eq!(body["one_time_key_counts"]["org.example.otk"], 1, "{body}");

    let (_, got) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&bob),
            Some(json!({"device_keys": {alice_id.clone(): []}})),
        )
        .await;
    assert_eq!(got["device_keys"][&alice_id][&device]["keys"], keys["keys"], "{got}");
    let (_, claimed) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(&bob),
            Some(json!({"one_time_keys": {alice_id.clone(): {device.clone(): "curve25519"}}})),
        )
        .await;
    assert_eq!(
        claimed["one_time_keys"][&alice_id][&device]["curve25519:AAAAAQ"], "cGxhaW5rZXk",
        "{claimed}"
    );
}

#[tokio::test]
async fn typing_without_a_timeout_uses_the_servers() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let sync = server.sync(&bob, None, 0, None).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, body) = server
        .call(
            "PUT",
            &rooms_path(&room, &format!("typing/{}", enc("@alice:localhost"))),
            Some(&alice),
            Some(json!({"typing": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sync = server.sync(&bob, Some(&since), 0, None).await;
    let typing: Vec<Value> = events(&sync["rooms"]["join"][&room]["ephemeral"])
        .into_iter()
        .filter(|e| e["type"] == "m.typing")
        .collect();
    assert_eq!(typing[0]["content"]["user_ids"], json!(["@alice:localhost"]), "{sync}");
}

#[tokio::test]
async fn push_rules_by_kind_and_the_spec_errors() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let get = |path: String| {
        let (server, alice) = (&server, alice.clone());
        async move { server.call("GET", &path, Some(&alice), None).await }
    };
    let (status, all) = get("/_matrix/client/v3/pushrules/".to_owned()).await;
    assert_eq!(status, 200);
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(all["global"][kind].is_array(), "{kind}: {all}");
        let (status, listed) = get(format!("/_matrix/client/v3/pushrules/global/{kind}/")).await;
        assert_eq!(status, 200, "{kind}: {listed}");
        assert_eq!(listed, all["global"][kind], "{kind}");
    }
    let (status, listed) = get("/_matrix/client/v3/pushrules/global/override".to_owned()).await;
    assert_eq!(status, 200);
    assert_eq!(listed[0]["rule_id"], ".m.rule.master");
    let (status, rule) = get("/_matrix/client/v3/pushrules/global/override/.m.rule.master".to_owned()).await;
    assert_eq!((status, rule["rule_id"].clone()), (200, json!(".m.rule.master")));

    assert_error(
        &get("/_matrix/client/v3/pushrules/global/bogus/".to_owned()).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &get("/_matrix/client/v3/pushrules/global/bogus/x".to_owned()).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &get("/_matrix/client/v3/pushrules/global/room/!nope:localhost".to_owned()).await,
        404,
        "M_NOT_FOUND",
    );
    let anchored = server
        .call(
            "PUT",
            "/_matrix/client/v3/pushrules/global/override/mine?before=nonexistent",
            Some(&alice),
            Some(json!({"actions": []})),
        )
        .await;
    assert_error(&anchored, 400, "M_UNKNOWN");
}

#[tokio::test]
async fn the_deprecated_events_stream_and_world_readable_rooms() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let (status, first) = server
        .call("GET", "/_matrix/client/v3/events?timeout=0", Some(&bob), None)
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["chunk"], json!([]));
    let from = first["end"].as_str().unwrap().to_owned();

    // A waiting request wakes for a message, which carries its room.
    let mark = server.log_mark();
    let waiting = get_in_background(
        &server,
        &bob,
        &format!("/_matrix/client/v3/events?timeout=10000&from={from}"),
    );
    server.wait_for_log(mark, &["events stream waiting"]).await;
    let sent = server.send_text(&alice, &room, "streamed").await;
    let got = waiting.await.unwrap();
    let chunk = got["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{got}");
    assert_eq!(chunk[0]["event_id"], sent);
    assert_eq!(chunk[0]["room_id"], room);
    assert_eq!(got["start"], from);
    assert_ne!(got["end"], from);
    assert_error(
        &server
            .call("GET", "/_matrix/client/v3/events?from=banana", Some(&bob), None)
            .await,
        400,
        "M_INVALID_PARAM",
    );

    // A world-readable room can be read by someone who never joined.
    let open = server
        .create_room(
            &alice,
            json!({"initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}]}),
        )
        .await;
    let event_id = server.send_text(&alice, &open, "for everyone").await;
    let (_, carol, _) = server.register("carol", "pw").await;
    assert_eq!(server.message_bodies(&carol, &open).await, ["for everyone"]);
    let (status, state) = server
        .call("GET", &rooms_path(&open, "state"), Some(&carol), None)
        .await;
    assert_eq!(status, 200, "{state}");
    let (status, event) = server
        .call(
            "GET",
            &rooms_path(&open, &format!("event/{}", enc(&event_id))),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!((status, event["content"]["body"].clone()), (200, json!("for everyone")));
    // Not so a room whose history is for members.
    let (status, _) = server
        .call("GET", &rooms_path(&room, "state"), Some(&carol), None)
        .await;
    assert_eq!(status, 403);
}

async fn directory_ids(server: &TestServer, token: &str, term: &str) -> Vec<String> {
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/user_directory/search",
            Some(token),
            Some(json!({"search_term": term, "limit": 50})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_user_directory_shows_only_people_one_could_meet() {
    let server = TestServer::start().await;
    let (_, quinn, _) = server.register("quinn", "pw").await;
    let (_, hermit, _) = server.register("hermit", "pw").await;
    let (_, friend, _) = server.register("friend", "pw").await;
    server.register("hidden", "pw").await;
    // Nobody shares anything yet: only oneself.
    assert_eq!(directory_ids(&server, &quinn, "").await, ["@quinn:localhost"]);

    // A private room shared with quinn makes its members visible to quinn,
    // and to nobody else.
    let private = server.create_room(&quinn, json!({"preset": "private_chat"})).await;
    server.invite(&quinn, &private, "@friend:localhost").await;
    server.join(&friend, &private).await;
    assert_eq!(directory_ids(&server, &quinn, "friend").await, ["@friend:localhost"]);
    assert!(directory_ids(&server, &hermit, "friend").await.is_empty());

    // A member of a public room is visible to all; leaving it hides them.
    let public = server.create_room(&hermit, json!({"preset": "public_chat"})).await;
    assert_eq!(directory_ids(&server, &friend, "hermit").await, ["@hermit:localhost"]);
    let (status, _) = server
        .call("POST", &rooms_path(&public, "leave"), Some(&hermit), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    assert!(directory_ids(&server, &friend, "hermit").await.is_empty());
    // A room that turns public shows its members too.
    let (status, _) = server
        .call(
            "PUT",
            &rooms_path(&private, "state/m.room.join_rules/"),
            Some(&quinn),
            Some(json!({"join_rule": "public"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(directory_ids(&server, &hermit, "friend").await, ["@friend:localhost"]);
    assert!(directory_ids(&server, &hermit, "hidden").await.is_empty());

    // The operator's switch lists everyone.
    let open = TestServer::start_with("user_directory_search_all_users = true").await;
    let (_, a, _) = open.register("alpha", "pw").await;
    open.register("beta", "pw").await;
    assert_eq!(directory_ids(&open, &a, "beta").await, ["@beta:localhost"]);
}

#[tokio::test]
async fn whois_for_the_user_themself_and_the_servers_admin() {
    let server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let path = format!("/_matrix/client/v3/admin/whois/{}", enc(&alice_id));
    let (status, body) = server.call("GET", &path, Some(&alice), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice_id);
    let connection = &body["devices"][&device]["sessions"][0]["connections"][0];
    assert_eq!(connection["ip"], "127.0.0.1", "{body}");
    assert!(connection["last_seen"].as_u64().is_some(), "{body}");
    assert_error(&server.call("GET", &path, Some(&bob), None).await, 403, "M_FORBIDDEN");
    // Alice registered first: she is the server's admin and may look Bob up.
    let bobs = format!("/_matrix/client/v3/admin/whois/{}", enc("@bob:localhost"));
    let (status, body) = server.call("GET", &bobs, Some(&alice), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"].as_object().unwrap().len(), 1, "{body}");
    let nobody = format!("/_matrix/client/v3/admin/whois/{}", enc("@nobody:localhost"));
    assert_error(
        &server.call("GET", &nobody, Some(&alice), None).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn a_timeline_at_exactly_its_limit_is_not_limited() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    // A new room with a large limit holds all of its history.
    let sync = server
        .sync(&alice, None, 0, Some(json!({"room": {"timeline": {"limit": 100}}})))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], json!(false), "{joined}");
    let all = events(&joined["timeline"]).len();
    assert!(events(&joined["timeline"])[0]["type"] == "m.room.create", "{joined}");

    // Exactly `limit` new events after `since`: not limited; one more is.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    for n in 0..3 {
        server.send_text(&bob, &room, &format!("m{n}")).await;
    }
    let limit = |n: u64| Some(json!({"room": {"timeline": {"limit": n}}}));
    let sync = server.sync(&alice, Some(&since), 0, limit(3)).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        (events(timeline).len(), timeline["limited"].clone()),
        (3, json!(false)),
        "{timeline}"
    );
    let sync = server.sync(&alice, Some(&since), 0, limit(2)).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        (events(timeline).len(), timeline["limited"].clone()),
        (2, json!(true)),
        "{timeline}"
    );
    // The whole history at a limit of exactly its length.
    let sync = server.sync(&alice, None, 0, limit(all as u64 + 3)).await;
    assert_eq!(sync["rooms"]["join"][&room]["timeline"]["limited"], json!(false));

    // `limited` counts what the filter lets through: two messages among
    // other events fill a limit of two without being limited.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    server.send_text(&bob, &room, "a").await;
    server
        .send_event(&bob, &room, "org.example.other", json!({"x": 1}))
        .await;
    server.send_text(&bob, &room, "b").await;
    let filter = json!({"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}});
    let sync = server.sync(&alice, Some(&since), 0, Some(filter)).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        (events(timeline).len(), timeline["limited"].clone()),
        (2, json!(false)),
        "{timeline}"
    );
}

#[tokio::test]
async fn redactions_stay_in_their_room_and_aliases_go_when_deleted() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let other = server.create_room(&bob, json!({})).await;
    let kept = server.send_text(&bob, &other, "keep me").await;
    let cross = server
        .call(
            "PUT",
            &rooms_path(&room, &format!("redact/{}/r1", enc(&kept))),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert!(matches!(cross.0, 400 | 404), "{cross:?}");
    let (_, event) = server
        .call(
            "GET",
            &rooms_path(&other, &format!("event/{}", enc(&kept))),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(event["content"]["body"], "keep me");

    // The canonical alias emptied, and a deleted alias resolving no more.
    let alias = "#family:localhost";
    let put_alias = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            Some(&alice),
            Some(json!({"room_id": room})),
        )
        .await;
    assert_eq!(put_alias.0, 200);
    for content in [json!({"alias": alias}), json!({})] {
        let (status, body) = server
            .call(
                "PUT",
                &rooms_path(&room, "state/m.room.canonical_alias/"),
                Some(&alice),
                Some(content),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, canonical) = server
        .call(
            "GET",
            &rooms_path(&room, "state/m.room.canonical_alias/"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(canonical, json!({}));
    let deleted = server
        .call(
            "DELETE",
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(deleted.0, 200);
    let gone = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            Some(&alice),
            None,
        )
        .await;
    assert_error(&gone, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn create_events_upgrades_and_unknown_content_keys() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    for version in ["1", "5", "10", "11", "12"] {
        let room = server.create_room(&alice, json!({"room_version": version})).await;
        let (_, create) = server
            .call("GET", &rooms_path(&room, "state/m.room.create/"), Some(&alice), None)
            .await;
        let has_creator = create.get("creator").is_some();
        assert_eq!(has_creator, matches!(version, "1" | "5" | "10"), "v{version}: {create}");
        if has_creator {
            assert_eq!(create["creator"], alice_id);
        }
    }
    let old = server.create_room(&alice, json!({"room_version": "10"})).await;
    let (status, upgraded) = server
        .call(
            "POST",
            &rooms_path(&old, "upgrade"),
            Some(&alice),
            Some(json!({"new_version": "11"})),
        )
        .await;
    assert_eq!(status, 200, "{upgraded}");
    let new = upgraded["replacement_room"].as_str().unwrap();
    let (_, tombstone) = server
        .call("GET", &rooms_path(&old, "state/m.room.tombstone/"), Some(&alice), None)
        .await;
    assert_eq!(tombstone["replacement_room"], new);
    let (_, create) = server
        .call("GET", &rooms_path(new, "state/m.room.create/"), Some(&alice), None)
        .await;
    assert_eq!(create["predecessor"]["room_id"], old, "{create}");

    let content = json!({"msgtype": "m.text", "body": "x", "self_destruct_after": 1234, "org.example": {"a": [1, 2]}});
    let id = server.send_event(&alice, &old, "m.room.message", content.clone()).await;
    let (_, event) = server
        .call(
            "GET",
            &rooms_path(&old, &format!("event/{}", enc(&id))),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(event["content"], content);
}

/// `/keys/changes` from `from` up to now (a fresh sync's position).
async fn key_changes_since(server: &TestServer, token: &str, from: &str) -> Value {
    let to = server.sync(token, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, changes) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/keys/changes?from={from}&to={to}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{changes}");
    changes
}

/// Waits (at most 10 s) for a sync from `since` whose device list names
/// `user` as changed; returns it.
async fn sync_until_changed(server: &TestServer, token: &str, since: &str, user: &str) -> Value {
    for _ in 0..20 {
        let sync = server.sync(token, Some(since), 500, None).await;
        if sync["device_lists"]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == user)
        {
            return sync;
        }
    }
    panic!("no device-list change for {user} within 10 s");
}

#[tokio::test]
async fn device_changes_reach_everyone_who_shares_a_room() {
    // An unencrypted room: device lists are tracked for every room.
    let (server, alice, bob, _room) = common::alice_and_bob_in_a_room().await;
    let alice_id = "@alice:localhost";
    let next = |sync: &Value| sync["next_batch"].as_str().unwrap().to_owned();
    let mut since = next(&server.sync(&bob, None, 0, None).await);

    // A waiting sync wakes for a new device.
    let mark = server.log_mark();
    let waiting = get_in_background(
        &server,
        &bob,
        &format!("/_matrix/client/v3/sync?timeout=10000&since={since}"),
    );
    server.wait_for_log(mark, &["sync waiting"]).await;
    let (status, login) = server.login("alice", "pw", Some("LAPTOP")).await;
    assert_eq!(status, 200, "{login}");
    let woke = waiting.await.unwrap();
    assert!(
        woke["device_lists"]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == alice_id),
        "{woke}"
    );
    since = next(&woke);

    // A rename, then a deletion.
    let (status, _) = server
        .call(
            "PUT",
            "/_matrix/client/v3/devices/LAPTOP",
            Some(&alice),
            Some(json!({"display_name": "laptop"})),
        )
        .await;
    assert_eq!(status, 200);
    since = next(&sync_until_changed(&server, &bob, &since, alice_id).await);
    let laptop = login["access_token"].as_str().unwrap();
    let (status, _) = server
        .call("POST", "/_matrix/client/v3/logout", Some(laptop), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let after_logout = sync_until_changed(&server, &bob, &since, alice_id).await;

    // /keys/changes over the same stretch names Alice.
    let (status, changes) = server
        .call(
            "GET",
            &format!(
                "/_matrix/client/v3/keys/changes?from={since}&to={}",
                next(&after_logout)
            ),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 200, "{changes}");
    assert!(
        changes["changed"].as_array().unwrap().iter().any(|u| u == alice_id),
        "{changes}"
    );

    // Sharing an encrypted room: a new member is `changed`, one who leaves
    // it (and shares nothing else encrypted) is `left`.
    let secret = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
        )
        .await;
    let (carol_id, carol, _) = server.register("carol", "pw").await;
    let from = next(&server.sync(&alice, None, 0, None).await);
    server.join(&carol, &secret).await;
    let changes = key_changes_since(&server, &alice, &from).await;
    assert!(
        changes["changed"].as_array().unwrap().iter().any(|u| u == &carol_id),
        "{changes}"
    );
    let from = next(&server.sync(&alice, None, 0, None).await);
    let (status, _) = server
        .call("POST", &rooms_path(&secret, "leave"), Some(&carol), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let changes = key_changes_since(&server, &alice, &from).await;
    assert!(
        changes["left"].as_array().unwrap().iter().any(|u| u == &carol_id),
        "{changes}"
    );
}

fn state_of(section: &Value) -> Vec<(String, String)> {
    events(&section["state"])
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["state_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn gapped_syncs_carry_the_gaps_state_and_a_brief_membership_its_whole_state() {
    let (server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let since = server.sync(&bob, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    for (event_type, content) in [
        ("m.room.name", json!({"name": "Renamed"})),
        ("m.room.topic", json!({"topic": "New topic"})),
    ] {
        let (status, _) = server
            .call(
                "PUT",
                &rooms_path(&room, &format!("state/{event_type}/")),
                Some(&alice),
                Some(content),
            )
            .await;
        assert_eq!(status, 200);
    }
    for n in 0..12 {
        server.send_text(&alice, &room, &format!("gap {n}")).await;
    }
    let filter = json!({"room": {"timeline": {"limit": 5}}});
    let sync = server.sync(&bob, Some(&since), 0, Some(filter.clone())).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], json!(true));
    let state = state_of(joined);
    for wanted in ["m.room.name", "m.room.topic"] {
        assert!(
            state.contains(&(wanted.to_owned(), String::new())),
            "{wanted} missing: {joined}"
        );
    }

    // Carol joins and leaves between two of her syncs: the left room comes
    // with its whole state, as she never saw it.
    let (_, carol, _) = server.register("carol", "pw").await;
    let since = server.sync(&carol, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    server.join(&carol, &room).await;
    let (status, _) = server
        .call("POST", &rooms_path(&room, "leave"), Some(&carol), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let sync = server.sync(&carol, Some(&since), 0, None).await;
    let left = &sync["rooms"]["leave"][&room];
    let state = state_of(left);
    let timeline: Vec<(String, String)> = events(&left["timeline"])
        .iter()
        .filter(|e| e.get("state_key").is_some())
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["state_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for wanted in [
        "m.room.create",
        "m.room.name",
        "m.room.join_rules",
        "m.room.power_levels",
    ] {
        assert!(
            state.iter().chain(&timeline).any(|(t, _)| t == wanted),
            "{wanted} missing: {left}"
        );
    }
}

#[tokio::test]
async fn a_joiner_sees_their_own_join_in_a_private_history_room() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    for n in 0..10 {
        server.send_text(&alice, &room, &format!("before {n}")).await;
    }
    server.join(&bob, &room).await;
    for many_after in [2, 15] {
        for n in 0..many_after {
            server.send_text(&alice, &room, &format!("after {n}")).await;
        }
        let sync = server
            .sync(&bob, None, 0, Some(json!({"room": {"timeline": {"limit": 5}}})))
            .await;
        let joined = &sync["rooms"]["join"][&room];
        let own_join = |e: &Value| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str();
        let in_timeline = events(&joined["timeline"]).iter().any(own_join);
        let in_state = events(&joined["state"]).iter().any(own_join);
        assert!(in_timeline || in_state, "{many_after} after: {joined}");
        // Nothing from before the join.
        assert!(
            !events(&joined["timeline"])
                .iter()
                .any(|e| e["content"]["body"].as_str().is_some_and(|b| b.starts_with("before"))),
            "{joined}"
        );
        assert!(
            state_of(joined).contains(&("m.room.create".to_owned(), String::new())),
            "{joined}"
        );
    }
}

#[tokio::test]
async fn lazy_loading_sends_a_membership_once_and_the_gaps_changes() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let (carol_id, carol, _) = server.register("carol", "pw").await;
    let (dave_id, dave, _) = server.register("dave", "pw").await;
    // Named: no heroes, whose memberships would come along anyway.
    let room = server
        .create_room(&alice, json!({"preset": "public_chat", "name": "Lazy"}))
        .await;
    for token in [&bob, &carol] {
        server.join(token, &room).await;
    }
    server.send_text(&carol, &room, "c1").await;
    let lazy = |redundant: bool, limit: u64| json!({"room": {"timeline": {"limit": limit}, "state": {"lazy_load_members": true, "include_redundant_members": redundant}}});
    let members = |sync: &Value| -> Vec<String> {
        state_of(&sync["rooms"]["join"][&room])
            .into_iter()
            .filter(|(t, _)| t == "m.room.member")
            .map(|(_, k)| k)
            .collect()
    };
    let first = server.sync(&bob, None, 0, Some(lazy(false, 1))).await;
    assert!(members(&first).contains(&carol_id), "{first}");
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    // Carol speaks again: Bob's device has her membership already.
    server.send_text(&carol, &room, "c2").await;
    let next = server.sync(&bob, Some(&since), 0, Some(lazy(false, 10))).await;
    assert_eq!(events(&next["rooms"]["join"][&room]["timeline"]).len(), 1);
    assert!(!members(&next).contains(&carol_id), "sent again: {next}");
    since = next["next_batch"].as_str().unwrap().to_owned();
    // Unless the filter asks for redundant members.
    server.send_text(&carol, &room, "c3").await;
    let next = server.sync(&bob, Some(&since), 0, Some(lazy(true, 10))).await;
    assert!(members(&next).contains(&carol_id), "{next}");
    since = next["next_batch"].as_str().unwrap().to_owned();

    // Dave comes and goes in a gap that Alice's chatter leaves: Bob still
    // learns of his leave, though Dave sent nothing in the timeline.
    server.join(&dave, &room).await;
    let (status, _) = server
        .call("POST", &rooms_path(&room, "leave"), Some(&dave), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    for n in 0..6 {
        server.send_text(&alice, &room, &format!("a{n}")).await;
    }
    let gapped = server.sync(&bob, Some(&since), 0, Some(lazy(false, 3))).await;
    let joined = &gapped["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], json!(true));
    let dave_state: Vec<Value> = events(&joined["state"])
        .into_iter()
        .filter(|e| e["state_key"] == dave_id.as_str())
        .collect();
    assert_eq!(dave_state.len(), 1, "{joined}");
    assert_eq!(dave_state[0]["content"]["membership"], "leave");
}

#[tokio::test]
async fn an_erased_users_messages_show_redacted_to_those_who_join_after() {
    let (mut server, alice, bob, room) = common::alice_and_bob_in_a_room().await;
    let said = server.send_text(&bob, &room, "forget I said this").await;
    let erase = |erase: bool, token: String, user: &'static str| {
        let server = &server;
        async move {
            let body = |auth: Value| json!({"erase": erase, "auth": auth});
            let (status, first) = server
                .call(
                    "POST",
                    "/_matrix/client/v3/account/deactivate",
                    Some(&token),
                    Some(body(json!(null))),
                )
                .await;
            assert_eq!(status, 401, "{first}");
            let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw", "session": first["session"]});
            let (status, done) = server
                .call(
                    "POST",
                    "/_matrix/client/v3/account/deactivate",
                    Some(&token),
                    Some(body(auth)),
                )
                .await;
            assert_eq!(status, 200, "{done}");
        }
    };
    erase(true, bob.clone(), "bob").await;
    let (_, carol, _) = server.register("carol", "pw").await;
    server.join(&carol, &room).await;

    let bobs = |token: String| {
        let (server, room, said) = (&server, room.clone(), said.clone());
        async move {
            let (_, event) = server
                .call(
                    "GET",
                    &rooms_path(&room, &format!("event/{}", enc(&said))),
                    Some(&token),
                    None,
                )
                .await;
            event["content"].clone()
        }
    };
    // Alice was there when Bob spoke and when he left: she keeps it.
    assert_eq!(bobs(alice.clone()).await["body"], "forget I said this");
    // Carol joined after the erasure: she reads it redacted, everywhere.
    assert_eq!(bobs(carol.clone()).await, json!({}));
    assert!(!server
        .message_bodies(&carol, &room)
        .await
        .contains(&"forget I said this".to_owned()));
    let sync = server
        .sync(&carol, None, 0, Some(json!({"room": {"timeline": {"limit": 50}}})))
        .await;
    let seen = events(&sync["rooms"]["join"][&room]["timeline"])
        .into_iter()
        .find(|e| e["event_id"] == said.as_str())
        .unwrap();
    assert_eq!(seen["content"], json!({}), "{seen}");

    // A deactivation without erase changes nothing for later joiners.
    let (_, dave, _) = server.register("dave", "pw").await;
    server.join(&dave, &room).await;
    let kept = server.send_text(&dave, &room, "still here").await;
    erase(false, dave.clone(), "dave").await;
    let (_, erin, _) = server.register("erin", "pw").await;
    server.join(&erin, &room).await;
    let (_, event) = server
        .call(
            "GET",
            &rooms_path(&room, &format!("event/{}", enc(&kept))),
            Some(&erin),
            None,
        )
        .await;
    assert_eq!(event["content"]["body"], "still here");

    // The erasure outlives a restart.
    server.restart();
    let (_, event) = server
        .call(
            "GET",
            &rooms_path(&room, &format!("event/{}", enc(&said))),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(event["content"], json!({}), "{event}");
}

#[tokio::test]
async fn guests_read_join_where_let_in_and_upgrade() {
    // Off by default: a family server makes no guest accounts.
    let closed = TestServer::start().await;
    let refused = closed
        .call("POST", "/_matrix/client/v3/register?kind=guest", None, Some(json!({})))
        .await;
    assert_error(&refused, 403, "M_GUEST_ACCESS_FORBIDDEN");

    let server = TestServer::start_with("allow_guest_access = true").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (status, guest) = server
        .call("POST", "/_matrix/client/v3/register?kind=guest", None, Some(json!({})))
        .await;
    assert_eq!(status, 200, "{guest}");
    let guest_id = guest["user_id"].as_str().unwrap().to_owned();
    let token = guest["access_token"].as_str().unwrap().to_owned();
    assert_eq!(server.whoami(&token).await.0, 200);

    // A world-readable room can be read; joining needs guest_access can_join.
    let readable = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}]}),
        )
        .await;
    server.send_text(&alice, &readable, "welcome, visitors").await;
    assert_eq!(server.message_bodies(&token, &readable).await, ["welcome, visitors"]);
    let join = |room: String| {
        let (server, token) = (&server, token.clone());
        async move {
            server
                .call("POST", &rooms_path(&room, "join"), Some(&token), Some(json!({})))
                .await
        }
    };
    assert_error(&join(readable.clone()).await, 403, "M_GUEST_ACCESS_FORBIDDEN");
    let open = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}]}),
        )
        .await;
    assert_eq!(join(open.clone()).await.0, 200);
    server.send_text(&token, &open, "hello from a guest").await;
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&guest_id)),
            Some(&token),
            Some(json!({"displayname": "Visitor"})),
        )
        .await;
    assert_eq!(status, 200);

    // What guests may not do.
    for (method, path, body) in [
        ("POST", "/_matrix/client/v3/createRoom".to_owned(), json!({})),
        (
            "PUT",
            format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&guest_id)),
            json!({"avatar_url": "mxc://localhost/x"}),
        ),
        (
            "POST",
            "/_matrix/client/v3/user_directory/search".to_owned(),
            json!({"search_term": "a"}),
        ),
    ] {
        let got = server.call(method, &path, Some(&token), Some(body)).await;
        assert_error(&got, 403, "M_GUEST_ACCESS_FORBIDDEN");
    }
    let upload = server
        .client
        .post(server.url("/_matrix/media/v3/upload"))
        .bearer_auth(&token)
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 403);

    // The room stops letting guests in: the guest is made to leave.
    let (status, _) = server
        .call(
            "PUT",
            &rooms_path(&open, "state/m.room.guest_access/"),
            Some(&alice),
            Some(json!({"guest_access": "forbidden"})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, member) = server
        .call(
            "GET",
            &rooms_path(&open, &format!("state/m.room.member/{}", enc(&guest_id))),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(member["membership"], "leave", "{member}");

    // Upgrade: the same user ID, now with a password and every endpoint.
    let localpart = guest_id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let upgrade = |auth: Option<Value>| {
        let mut body = json!({"username": localpart, "password": "pw2", "guest_access_token": token});
        if let Some(auth) = auth {
            body["auth"] = auth;
        }
        body
    };
    let (status, first) = server
        .call("POST", "/_matrix/client/v3/register", None, Some(upgrade(None)))
        .await;
    assert_eq!(status, 401, "{first}");
    let (status, upgraded) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(upgrade(Some(
                json!({"type": "m.login.dummy", "session": first["session"]}),
            ))),
        )
        .await;
    assert_eq!(status, 200, "{upgraded}");
    assert_eq!(upgraded["user_id"], guest_id);
    let full = upgraded["access_token"].as_str().unwrap();
    let made = server
        .call("POST", "/_matrix/client/v3/createRoom", Some(full), Some(json!({})))
        .await;
    assert_eq!(made.0, 200, "{made:?}");
    assert_eq!(server.login(&localpart, "pw2", None).await.0, 200);
}

#[tokio::test]
async fn key_backups_take_any_algorithm_and_auth_data() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let auth_data = json!({"public_key": "abc", "org.example.extra": {"n": [1, 2]}});
    let (status, created) = server
        .call(
            "POST",
            "/_matrix/client/v3/room_keys/version",
            Some(&alice),
            Some(json!({"algorithm": "org.example.future.v1", "auth_data": auth_data})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let (status, current) = server
        .call("GET", "/_matrix/client/v3/room_keys/version", Some(&alice), None)
        .await;
    assert_eq!(status, 200, "{current}");
    assert_eq!(current["algorithm"], "org.example.future.v1");
    assert_eq!(current["auth_data"], auth_data);
    assert_eq!(current["version"], created["version"]);
}
