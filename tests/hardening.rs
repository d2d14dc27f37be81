//! Bad input and races found when the server was tried as an attacker
//! would: each is refused with the spec's error, never a panic or a 500.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

/// `{"a": {"a": … 1 …}}`, `levels` objects deep.
fn nested(levels: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..levels {
        value = json!({ "a": value });
    }
    value
}

/// JSON text `levels` objects deep (serde_json cannot write a value much
/// deeper than it reads, so deep bodies are written as text).
fn nested_text(levels: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
}

#[tokio::test]
async fn deeply_nested_bodies_are_bad_json_not_a_panic() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;

    let to_device = format!(r#"{{"messages": {{"{alice_id}": {{"*": {}}}}}}}"#, nested_text(130));
    let got = server
        .call_raw(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.test/deep1",
            Some(&alice),
            to_device.into_bytes(),
        )
        .await;
    assert_error(&got, 400, "M_BAD_JSON");

    let deep = nested_text(130).into_bytes();
    for path in [
        format!("/_matrix/client/v3/user/{}/account_data/m.deep", enc(&alice_id)),
        format!("/_matrix/client/v3/rooms/{}/send/m.deep/t1", enc(&room)),
        format!("/_matrix/client/v3/rooms/{}/state/m.deep/", enc(&room)),
    ] {
        let got = server.call_raw("PUT", &path, Some(&alice), deep.clone()).await;
        assert_error(&got, 400, "M_BAD_JSON");
    }

    // Nesting a client might really use still goes through, intact.
    let content = nested(50);
    let (status, body) = server
        .call(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.test/deep2",
            Some(&alice),
            Some(json!({"messages": {alice_id.clone(): {"*": content.clone()}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sync = server.sync(&alice, None, 0, None).await;
    let events = sync["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{sync}");
    assert_eq!(events[0]["content"], content);
    assert!(server.log_lines_with("panic").is_empty());
}

#[tokio::test]
async fn push_rules_without_conditions_always_match() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw").await;
    for kind in ["override", "underride"] {
        let path = format!("/_matrix/client/v3/pushrules/global/{kind}/no.conditions");
        let (status, body) = server
            .call("PUT", &path, Some(&token), Some(json!({"actions": ["notify"]})))
            .await;
        assert_eq!(status, 200, "{kind}: {body}");
        let (status, rule) = server.call("GET", &path, Some(&token), None).await;
        assert_eq!(status, 200, "{rule}");
        assert_eq!(rule["conditions"], json!([]), "{rule}");
        assert_eq!(rule["actions"], json!(["notify"]));
    }
    // Actions stay required.
    let got = server
        .call(
            "PUT",
            "/_matrix/client/v3/pushrules/global/override/no.actions",
            Some(&token),
            Some(json!({"conditions": []})),
        )
        .await;
    assert_error(&got, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn profile_fields_must_be_in_the_body() {
    let server = TestServer::start().await;
    let (user_id, token, _) = server.register("alice", "pw").await;
    let user = enc(&user_id);
    for (field, value) in [
        ("displayname", json!("Alice")),
        ("avatar_url", json!("mxc://localhost/a")),
    ] {
        let path = format!("/_matrix/client/v3/profile/{user}/{field}");
        let (status, body) = server
            .call("PUT", &path, Some(&token), Some(json!({ field: value })))
            .await;
        assert_eq!(status, 200, "{body}");
        let missing = server
            .call("PUT", &path, Some(&token), Some(json!({"something_else": 1})))
            .await;
        assert_error(&missing, 400, "M_MISSING_PARAM");
        let (_, body) = server.call("GET", &path, Some(&token), None).await;
        assert_eq!(body[field], value, "a refused request leaves the field");
        // An explicit null clears it.
        let (status, _) = server
            .call("PUT", &path, Some(&token), Some(json!({ field: null })))
            .await;
        assert_eq!(status, 200);
        let (_, body) = server.call("GET", &path, Some(&token), None).await;
        assert!(body[field].is_null(), "{body}");
    }
}

#[tokio::test]
async fn empty_bodies_are_not_json_except_where_the_body_is_optional() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    let r = enc(&room);

    let send = format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/empty1");
    assert_error(
        &server.call_raw("PUT", &send, Some(&alice), Vec::new()).await,
        400,
        "M_NOT_JSON",
    );
    let state = format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/");
    assert_error(
        &server.call_raw("PUT", &state, Some(&alice), Vec::new()).await,
        400,
        "M_NOT_JSON",
    );
    for path in ["/_matrix/client/v3/createRoom", "/_matrix/client/v3/keys/upload"] {
        assert_error(
            &server.call_raw("POST", path, Some(&alice), Vec::new()).await,
            400,
            "M_NOT_JSON",
        );
    }
    // Nothing was stored for the refused send.
    let (status, messages) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=50"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        messages["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "m.room.message"),
        "{messages}"
    );

    // Joins, leaves and logouts may come without a body.
    let (status, body) = server
        .call_raw("POST", &format!("/_matrix/client/v3/join/{r}"), Some(&bob), Vec::new())
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call_raw(
            "POST",
            &format!("/_matrix/client/v3/rooms/{r}/leave"),
            Some(&bob),
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call_raw("POST", "/_matrix/client/v3/logout", Some(&bob), Vec::new())
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn invalid_utf8_anywhere_is_not_json() {
    let server = TestServer::start().await;
    let (user_id, token, _) = server.register("alice", "pw").await;
    let user = enc(&user_id);
    // Each body is valid for its endpoint but for one ignored field whose
    // string holds bytes that are not UTF-8.
    let with_bad_field = |valid: &str| {
        let mut body = valid.trim_end_matches('}').as_bytes().to_vec();
        if valid != "{}" {
            body.push(b',');
        }
        body.extend_from_slice(b"\"x.ignored\": \"\xff\xfe\"}");
        body
    };
    for (method, path, valid) in [
        (
            "POST",
            format!("/_matrix/client/v3/user/{user}/filter"),
            r#"{"room": {"timeline": {"limit": 5}}}"#,
        ),
        ("POST", "/_matrix/client/v3/createRoom".to_owned(), r#"{"name": "x"}"#),
        (
            "PUT",
            format!("/_matrix/client/v3/profile/{user}/displayname"),
            r#"{"displayname": "A"}"#,
        ),
        ("POST", "/_matrix/client/v3/keys/upload".to_owned(), "{}"),
    ] {
        let (status, body) = server
            .call_raw(method, &path, Some(&token), valid.as_bytes().to_vec())
            .await;
        assert_eq!(status, 200, "{path} takes the valid body: {body}");
        let got = server
            .call_raw(method, &path, Some(&token), with_bad_field(valid))
            .await;
        assert_error(&got, 400, "M_NOT_JSON");
    }
}

#[tokio::test]
async fn a_login_without_type_or_identifier_is_refused_without_a_panic() {
    let server = TestServer::start().await;
    server.register("alice", "pw").await;
    let login = "/_matrix/client/v3/login";
    let no_type = server.call("POST", login, None, Some(json!({"password": "pw"}))).await;
    assert_error(&no_type, 400, "M_BAD_JSON");
    let no_identifier = server
        .call(
            "POST",
            login,
            None,
            Some(json!({"type": "m.login.password", "password": "pw"})),
        )
        .await;
    assert_error(&no_identifier, 400, "M_BAD_JSON");
    let type_not_a_string = server
        .call("POST", login, None, Some(json!({"type": 7, "password": "pw"})))
        .await;
    assert_error(&type_not_a_string, 400, "M_BAD_JSON");
    assert!(
        server.log_lines_with("panic").is_empty(),
        "{:?}",
        server.log_lines_with("panic")
    );
    // The right body still logs in.
    let (status, body) = server.login("alice", "pw", None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn identifiers_longer_than_the_spec_allows_are_refused() {
    let server = TestServer::start().await;
    let (user_id, token, _) = server.register("alice", "pw").await;
    let room = server.create_room(&token, json!({})).await;
    let r = enc(&room);

    // "#" + localpart + ":localhost": 255 bytes fit, 256 do not.
    let localpart = |len: usize| "a".repeat(len - 1 - ":localhost".len());
    let fits = format!("#{}:localhost", localpart(255));
    let too_long = format!("#{}:localhost", localpart(256));
    let put_alias = |alias: String| {
        let (server, token, room) = (&server, &token, &room);
        async move {
            let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
            server
                .call("PUT", &path, Some(token), Some(json!({"room_id": room})))
                .await
        }
    };
    assert_error(&put_alias(too_long.clone()).await, 400, "M_INVALID_PARAM");
    assert_eq!(put_alias(fits).await.0, 200);
    let got = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(json!({"room_alias_name": localpart(256)})),
        )
        .await;
    assert_error(&got, 400, "M_INVALID_PARAM");

    // Registration: a user ID of 256 bytes is refused.
    let long_name = "u".repeat(256 - 1 - ":localhost".len());
    let got = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": long_name, "password": "pw"})),
        )
        .await;
    assert_error(&got, 400, "M_INVALID_USERNAME");

    // Events: type and state key of at most 255 bytes (413, as Synapse).
    let long = "x".repeat(256);
    let got = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{r}/send/{long}/t1"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_error(&got, 413, "M_TOO_LARGE");
    let got = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{r}/state/m.custom/{long}"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_error(&got, 413, "M_TOO_LARGE");
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{r}/send/{}/t2", "x".repeat(255)),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);

    // Tags: at most 255 bytes.
    let tags = format!("/_matrix/client/v3/user/{}/rooms/{r}/tags", enc(&user_id));
    let got = server
        .call("PUT", &format!("{tags}/{long}"), Some(&token), Some(json!({})))
        .await;
    assert_error(&got, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn one_of_many_concurrent_alias_claims_wins() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw").await;
    let rooms: Vec<String> = {
        let mut rooms = Vec::new();
        for _ in 0..4 {
            rooms.push(server.create_room(&token, json!({})).await);
        }
        rooms
    };
    for round in 0..5 {
        let alias = format!("#race{round}:localhost");
        let path = format!("/_matrix/client/v3/directory/room/{}", enc(&alias));
        let claims = (0..20).map(|i| {
            let room = rooms[i % rooms.len()].clone();
            server.call("PUT", &path, Some(&token), Some(json!({ "room_id": room })))
        });
        let results = futures_util::future::join_all(claims).await;
        let winners: Vec<usize> = (0..results.len()).filter(|&i| results[i].0 == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (i, got) in results.iter().enumerate() {
            if i != winners[0] {
                assert_error(got, 409, "M_UNKNOWN");
            }
        }
        // The alias points at the winner's room.
        let (status, body) = server.call("GET", &path, Some(&token), None).await;
        assert_eq!(status, 200);
        assert_eq!(body["room_id"], rooms[winners[0] % rooms.len()].as_str());
    }
}

#[tokio::test]
async fn a_flood_of_logins_is_told_to_retry_not_queued_without_end() {
    // Hashes costly enough that logins pile up behind the hashing thread.
    let server = TestServer::start_with("argon2_memory_kib = 16384\nargon2_iterations = 2").await;
    server.register("alice", "pw").await;
    let logins = (0..24).map(|_| async {
        let resp = server
            .client
            .post(server.url("/_matrix/client/v3/login"))
            .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let body: Value = resp.json().await.unwrap();
        (status, retry_after, body)
    });
    let results = futures_util::future::join_all(logins).await;
    let limited: Vec<_> = results.iter().filter(|(status, _, _)| *status == 429).collect();
    assert!(!limited.is_empty(), "{results:?}");
    for (_, retry_after, body) in &limited {
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
        assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");
        assert!(retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));
    }
    assert!(
        results.iter().all(|(status, _, _)| *status == 200 || *status == 429),
        "{results:?}"
    );
    assert!(results.iter().any(|(status, _, _)| *status == 200));
}

#[tokio::test]
async fn a_logout_forgets_the_devices_transaction_ids() {
    let server = TestServer::start().await;
    server.register("alice", "pw").await;
    let (_, owner, _) = server.register("owner", "pw").await;
    let room = server.create_room(&owner, json!({"preset": "public_chat"})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/same-txn", enc(&room));
    let mut sent = Vec::new();
    for round in 0..2 {
        let (status, body) = server.login("alice", "pw", Some("PHONE")).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap().to_owned();
        if round == 0 {
            server.join(&token, &room).await;
        }
        let (status, body) = server
            .call(
                "PUT",
                &path,
                Some(&token),
                Some(json!({"msgtype": "m.text", "body": format!("round {round}")})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // A retry within the session is the same event.
        let (_, again) = server
            .call(
                "PUT",
                &path,
                Some(&token),
                Some(json!({"msgtype": "m.text", "body": "retry"})),
            )
            .await;
        assert_eq!(again["event_id"], body["event_id"]);
        sent.push(body["event_id"].as_str().unwrap().to_owned());
        let (status, _) = server
            .call("POST", "/_matrix/client/v3/logout", Some(&token), Some(json!({})))
            .await;
        assert_eq!(status, 200);
    }
    assert_ne!(
        sent[0], sent[1],
        "a new login of the device starts its transactions afresh"
    );
    assert_eq!(server.message_bodies(&owner, &room).await, vec!["round 0", "round 1"]);
}
