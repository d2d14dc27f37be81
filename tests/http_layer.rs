//! The HTTP layer: discovery endpoints, CORS, and every refusal of bad input
//! with the spec's status and errcode.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::json;

#[tokio::test]
async fn versions_capabilities_well_known() {
    let server = TestServer::start_with(
        "[global.well_known]\nclient = \"https://matrix.example.org\"\nserver = \"matrix.example.org:443\"",
    )
    .await;
    let (status, body) = server.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(status, 200);
    assert!(body["versions"].as_array().unwrap().contains(&json!("v1.1")));

    let (status, body) = server.call("GET", "/.well-known/matrix/client", None, None).await;
    assert_eq!(
        (status, &body["m.homeserver"]["base_url"]),
        (200, &json!("https://matrix.example.org"))
    );
    let (status, body) = server.call("GET", "/.well-known/matrix/server", None, None).await;
    assert_eq!((status, &body["m.server"]), (200, &json!("matrix.example.org:443")));

    let (_, token, _) = server.register("una", "pw").await;
    let (status, body) = server
        .call("GET", "/_matrix/client/v3/capabilities", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    // Capabilities at their default (enabled) may be left out.
    let change_password = &body["capabilities"]["m.change_password"];
    assert!(
        change_password.is_null() || change_password["enabled"] == true,
        "{body}"
    );
    assert_eq!(body["capabilities"]["m.3pid_changes"]["enabled"], false, "{body}");
    assert_eq!(body["capabilities"]["m.room_versions"]["default"], "11");

    let plain = TestServer::start().await;
    assert_error(
        &plain.call("GET", "/.well-known/matrix/client", None, None).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn unknown_endpoint_and_wrong_method() {
    let server = TestServer::start().await;
    assert_error(
        &server.call("GET", "/_matrix/client/v3/no/such/thing", None, None).await,
        404,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &server.call("DELETE", "/_matrix/client/v3/login", None, None).await,
        405,
        "M_UNRECOGNIZED",
    );
    // Routes are grouped by their first segment (`/rooms`): a miss inside a
    // group answers like any other miss.
    assert_error(
        &server
            .call("GET", "/_matrix/client/v3/rooms/!a:localhost/no_such_thing", None, None)
            .await,
        404,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &server
            .call(
                "DELETE",
                "/_matrix/client/v3/rooms/!a:localhost/send/m.room.message/t1",
                None,
                None,
            )
            .await,
        405,
        "M_UNRECOGNIZED",
    );
    // Routes nest segment by segment (`/rooms`, `/{room_id}`, `/send`): a
    // miss deep inside answers the same, and every form of a nested route
    // (the state routes with and without a state key) is still found, so
    // it asks for a token.
    assert_error(
        &server
            .call(
                "PUT",
                "/_matrix/client/v3/rooms/!a:localhost/send/m.room.message",
                None,
                None,
            )
            .await,
        404,
        "M_UNRECOGNIZED",
    );
    for path in [
        "/_matrix/client/v3/rooms/!a:localhost/state",
        "/_matrix/client/v3/rooms/!a:localhost/state/m.room.name",
        "/_matrix/client/v3/rooms/!a:localhost/state/m.room.name/",
        "/_matrix/client/v3/rooms/!a:localhost/state/m.room.member/@b:localhost",
        "/_matrix/client/v1/rooms/!a:localhost/relations/$e/m.annotation/m.reaction",
        "/_matrix/client/v3/user/@b:localhost/rooms/!a:localhost/tags",
    ] {
        assert_error(&server.call("GET", path, None, None).await, 401, "M_MISSING_TOKEN");
    }
}

#[tokio::test]
async fn cors_on_responses_and_preflight() {
    let server = TestServer::start().await;
    let resp = server
        .client
        .request(
            reqwest::Method::OPTIONS,
            server.url("/_matrix/client/v3/account/whoami"),
        )
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Authorization"));
    let resp = server
        .client
        .get(server.url("/_matrix/client/versions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let resp = server.client.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "*",
        "errors carry CORS too"
    );
}

#[tokio::test]
async fn missing_and_unknown_tokens() {
    let server = TestServer::start().await;
    assert_error(
        &server
            .call("GET", "/_matrix/client/v3/account/whoami", None, None)
            .await,
        401,
        "M_MISSING_TOKEN",
    );
    let unknown = server.whoami("not-a-token").await;
    assert_error(&unknown, 401, "M_UNKNOWN_TOKEN");
    // The query-string form is accepted too.
    let (_, token, _) = server.register("vic", "pw").await;
    let (status, _) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/account/whoami?access_token={token}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn malformed_bodies() {
    let server = TestServer::start().await;
    let login = "/_matrix/client/v3/login";
    assert_error(
        &server.call_raw("POST", login, None, Vec::new()).await,
        400,
        "M_NOT_JSON",
    );
    assert_error(
        &server.call_raw("POST", login, None, b"{not json".to_vec()).await,
        400,
        "M_NOT_JSON",
    );
    assert_error(
        &server.call_raw("POST", login, None, vec![b'{', 0xFF, 0xFE, b'}']).await,
        400,
        "M_NOT_JSON",
    );
    assert_error(
        &server.call_raw("POST", login, None, b"[1, 2, 3]".to_vec()).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &server.call_raw("POST", login, None, b"{}".to_vec()).await,
        400,
        "M_BAD_JSON",
    );
    let wrong_fields = server
        .call(
            "POST",
            login,
            None,
            Some(json!({"type": "m.login.password", "password": 5})),
        )
        .await;
    assert_error(&wrong_fields, 400, "M_BAD_JSON");
    let no_username = server
        .call("GET", "/_matrix/client/v3/register/available", None, None)
        .await;
    assert_error(&no_username, 400, "M_MISSING_PARAM");
}

#[tokio::test]
async fn large_bodies() {
    // 10 MiB of junk is read (under the 20 MiB default) and refused as not JSON...
    let server = TestServer::start().await;
    let big = vec![b'x'; 10 * 1024 * 1024];
    assert_error(
        &server
            .call_raw("POST", "/_matrix/client/v3/login", None, big.clone())
            .await,
        400,
        "M_NOT_JSON",
    );
    // ...and over a smaller configured limit it is 413, without reading it all.
    let small = TestServer::start_with("max_request_size = 1048576").await;
    assert_error(
        &small.call_raw("POST", "/_matrix/client/v3/login", None, big).await,
        413,
        "M_TOO_LARGE",
    );
    let under = small.login("nobody", "pw", None).await;
    assert_error(&under, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn sigint_and_sigterm_exit_cleanly() {
    for signal in ["INT", "TERM"] {
        let mut server = TestServer::start().await;
        server.register("wes", "pw").await;
        let status = server.stop_with(signal);
        assert!(status.success(), "SIG{signal}: exit status {status:?}");
    }
}

/// A request in flight when the signal arrives still gets its answer.
#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    // A costly hash keeps the login in flight for a while.
    let mut server = TestServer::start_with("argon2_memory_kib = 65536\nargon2_iterations = 6").await;
    server.register("xia", "pw").await;
    let mark = server.log_mark();
    let login = async {
        let answer = server.login("xia", "pw", None).await;
        (answer, std::time::Instant::now())
    };
    let signal = async {
        // The password check has begun: the login is in the server's hands.
        server.wait_for_log(mark, &["password hashing started"]).await;
        server.signal("TERM");
        std::time::Instant::now()
    };
    let (((status, body), answered), signalled) = tokio::join!(login, signal);
    assert!(
        answered > signalled,
        "the login was answered after the signal, not before"
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    assert!(server.wait().success());
    assert_eq!(server.log_lines_with("finishing in-flight requests").len(), 1);
}

#[tokio::test]
async fn versions_advertise_what_is_served() {
    let server = TestServer::start().await;
    let (status, body) = server.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(status, 200);
    let versions = body["versions"].as_array().unwrap();
    for v in ["v1.5", "v1.10", "v1.11", "v1.15"] {
        assert!(versions.contains(&json!(v)), "{v}: {body}");
    }
    assert!(!versions.contains(&json!("v1.16")), "{body}");
    for feature in [
        "org.matrix.msc3916.stable",
        "org.matrix.e2e_cross_signing",
        "org.matrix.msc3266",
    ] {
        assert_eq!(body["unstable_features"][feature], true, "{feature}: {body}");
    }

    // What v1.10 and v1.11 added works: `recurse` in /relations reports its
    // depth and finds relations of relations; authenticated media serves.
    let (_, token, _) = server.register("alice", "pw").await;
    let room = server.create_room(&token, json!({})).await;
    let root = server.send_text(&token, &room, "root").await;
    let reply = server.send_event(&token,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await;
    server
        .send_event(
            &token,
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": reply, "key": "👍"}}),
        )
        .await;
    let relations = format!("/_matrix/client/v1/rooms/{}/relations/{}", enc(&room), enc(&root));
    let (_, direct) = server.call("GET", &relations, Some(&token), None).await;
    assert_eq!(direct["chunk"].as_array().unwrap().len(), 1, "{direct}");
    assert!(direct.get("recursion_depth").is_none(), "{direct}");
    let (_, deep) = server
        .call("GET", &format!("{relations}?recurse=true"), Some(&token), None)
        .await;
    assert_eq!(deep["chunk"].as_array().unwrap().len(), 2, "{deep}");
    assert_eq!(deep["recursion_depth"], 3, "{deep}");
    let (status, config) = server
        .call("GET", "/_matrix/client/v1/media/config", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{config}");
}
