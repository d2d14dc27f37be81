//! Registration, login, whoami, logout, password change, deactivation,
//! restart on the same data.

mod common;

use common::{assert_error, password_auth, TestServer};
use serde_json::json;

const REGISTER: &str = "/_matrix/client/v3/register";

#[tokio::test]
async fn dummy_registration_then_whoami() {
    let server = TestServer::start().await;
    let (user_id, token, device_id) = server.register("alice", "secret-pw").await;
    assert_eq!(user_id, "@alice:localhost");
    let (status, body) = server.whoami(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@alice:localhost");
    assert_eq!(body["device_id"], device_id.as_str());
    assert!(body["is_guest"].is_null() || body["is_guest"] == false, "{body}");
    // The legacy r0 path serves the same endpoint.
    let (status, body) = server
        .call("GET", "/_matrix/client/r0/account/whoami", Some(&token), None)
        .await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some("@alice:localhost")));
}

#[tokio::test]
async fn registration_token_flow() {
    let server = TestServer::start_with("registration_token = \"let-me-in\"").await;
    let (status, body) = server
        .call(
            "POST",
            REGISTER,
            None,
            Some(json!({"username": "bob", "password": "pw"})),
        )
        .await;
    assert_eq!(status, 401);
    // Synapse's flow: the token, then a dummy stage.
    assert_eq!(
        body["flows"],
        json!([{"stages": ["m.login.registration_token", "m.login.dummy"]}])
    );
    let session = body["session"].as_str().unwrap().to_owned();

    // The dummy stage alone is not enough.
    let dummy = json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}});
    let (status, body) = server.call("POST", REGISTER, None, Some(dummy)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["completed"], json!(["m.login.dummy"]));

    let wrong = json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "nope", "session": session}});
    let (status, body) = server.call("POST", REGISTER, None, Some(wrong)).await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(body["completed"], json!(["m.login.dummy"]), "{body}");

    let right = json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "let-me-in", "session": session}});
    let (status, body) = server.call("POST", REGISTER, None, Some(right)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@bob:localhost");
    assert!(body["access_token"].is_string());
}

#[tokio::test]
async fn registration_refusals() {
    let server = TestServer::start().await;
    server.register("carol", "pw").await;
    let taken = server
        .call(
            "POST",
            REGISTER,
            None,
            Some(json!({"username": "carol", "password": "x"})),
        )
        .await;
    assert_error(&taken, 400, "M_USER_IN_USE");
    let bad = server
        .call(
            "POST",
            REGISTER,
            None,
            Some(json!({"username": "no spaces!", "password": "x"})),
        )
        .await;
    assert_error(&bad, 400, "M_INVALID_USERNAME");
    let guest = server
        .call("POST", &format!("{REGISTER}?kind=guest"), None, Some(json!({})))
        .await;
    assert_error(&guest, 403, "M_GUEST_ACCESS_FORBIDDEN");

    let (status, body) = server
        .call(
            "GET",
            "/_matrix/client/v3/register/available?username=carol",
            None,
            None,
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (status, body) = server
        .call("GET", "/_matrix/client/v3/register/available?username=dave", None, None)
        .await;
    assert_eq!((status, body["available"].as_bool()), (200, Some(true)));

    let closed = TestServer::start_with("allow_registration = false").await;
    let refused = closed
        .call(
            "POST",
            REGISTER,
            None,
            Some(json!({"username": "eve", "password": "x"})),
        )
        .await;
    assert_error(&refused, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn inhibit_login_gives_no_token() {
    let server = TestServer::start().await;
    let (_, first) = server
        .call(
            "POST",
            REGISTER,
            None,
            Some(json!({"username": "quiet", "password": "pw"})),
        )
        .await;
    let body = json!({"username": "quiet", "password": "pw", "inhibit_login": true, "auth": {"type": "m.login.dummy", "session": first["session"]}});
    let (status, body) = server.call("POST", REGISTER, None, Some(body)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@quiet:localhost");
    assert!(body["access_token"].is_null(), "{body}");
    assert!(body["device_id"].is_null(), "{body}");
    assert_eq!(server.login("quiet", "pw", None).await.0, 200);
}

#[tokio::test]
async fn login_variants_and_logout() {
    let server = TestServer::start().await;
    server.register("frank", "hunter2").await;

    let (status, body) = server.call("GET", "/_matrix/client/v3/login", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["flows"][0]["type"], "m.login.password");

    let (status, by_localpart) = server.login("frank", "hunter2", None).await;
    assert_eq!(status, 200, "{by_localpart}");
    assert_eq!(by_localpart["user_id"], "@frank:localhost");
    let (status, by_id) = server.login("@frank:localhost", "hunter2", Some("MYPHONE")).await;
    assert_eq!(status, 200);
    assert_eq!(by_id["device_id"], "MYPHONE");

    // The legacy top-level `user` field of old clients.
    let legacy = json!({"type": "m.login.password", "user": "frank", "password": "hunter2"});
    let (status, body) = server
        .call("POST", "/_matrix/client/r0/login", None, Some(legacy))
        .await;
    assert_eq!(status, 200, "{body}");

    assert_error(&server.login("frank", "wrong", None).await, 403, "M_FORBIDDEN");
    assert_error(&server.login("nobody", "hunter2", None).await, 403, "M_FORBIDDEN");

    // Logging out kills exactly that token.
    let token = by_localpart["access_token"].as_str().unwrap();
    let other = by_id["access_token"].as_str().unwrap();
    assert_eq!(
        server
            .call("POST", "/_matrix/client/v3/logout", Some(token), Some(json!({})))
            .await
            .0,
        200
    );
    assert_error(&server.whoami(token).await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(server.whoami(other).await.0, 200);

    // Logging in again with an existing device ID replaces its token.
    let (_, again) = server.login("frank", "hunter2", Some("MYPHONE")).await;
    assert_error(&server.whoami(other).await, 401, "M_UNKNOWN_TOKEN");
    let newest = again["access_token"].as_str().unwrap();
    assert_eq!(
        server
            .call("POST", "/_matrix/client/v3/logout/all", Some(newest), Some(json!({})))
            .await
            .0,
        200
    );
    assert_error(&server.whoami(newest).await, 401, "M_UNKNOWN_TOKEN");
}

async fn change_password(
    server: &TestServer,
    token: &str,
    old: &str,
    new: &str,
    logout_devices: bool,
) -> (u16, serde_json::Value) {
    let path = "/_matrix/client/v3/account/password";
    let (status, first) = server
        .call("POST", path, Some(token), Some(json!({"new_password": new})))
        .await;
    assert_eq!(status, 401, "{first}");
    assert_eq!(first["flows"][0]["stages"][0], "m.login.password");
    let body = json!({
        "new_password": new,
        "logout_devices": logout_devices,
        "auth": password_auth("grace", old, &first["session"])
    });
    server.call("POST", path, Some(token), Some(body)).await
}

#[tokio::test]
async fn password_change_keeps_or_logs_out_other_devices() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("grace", "old-pw").await;
    let (_, second) = server.login("grace", "old-pw", None).await;
    let second = second["access_token"].as_str().unwrap().to_owned();

    // A wrong current password is refused and changes nothing.
    let (status, body) = change_password(&server, &token, "not-it", "x", true).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_FORBIDDEN")));
    assert_eq!(server.login("grace", "old-pw", None).await.0, 200);

    let (status, body) = change_password(&server, &token, "old-pw", "mid-pw", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.whoami(&second).await.0, 200, "kept when not asked");
    assert_error(&server.login("grace", "old-pw", None).await, 403, "M_FORBIDDEN");

    let (status, _) = change_password(&server, &token, "mid-pw", "new-pw", true).await;
    assert_eq!(status, 200);
    assert_error(&server.whoami(&second).await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(server.whoami(&token).await.0, 200, "the caller's own device stays");
    assert_eq!(server.login("grace", "new-pw", None).await.0, 200);
}

#[tokio::test]
async fn deactivation() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("henry", "pw").await;
    let path = "/_matrix/client/v3/account/deactivate";
    let (status, first) = server.call("POST", path, Some(&token), Some(json!({}))).await;
    assert_eq!(status, 401);
    let auth = json!({"auth": password_auth("@henry:localhost", "pw", &first["session"])});
    let (status, body) = server.call("POST", path, Some(&token), Some(auth)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");

    assert_error(&server.whoami(&token).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&server.login("henry", "pw", None).await, 403, "M_USER_DEACTIVATED");
    let again = server
        .call(
            "POST",
            REGISTER,
            None,
            Some(json!({"username": "henry", "password": "pw"})),
        )
        .await;
    assert_error(&again, 400, "M_USER_IN_USE");
    let profile = server
        .call("GET", "/_matrix/client/v3/profile/@henry:localhost", None, None)
        .await;
    assert_error(&profile, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn restart_on_same_data_keeps_accounts_and_tokens() {
    let mut server = TestServer::start().await;
    let (_, token, _) = server.register("ivy", "pw").await;
    let put = server
        .call(
            "PUT",
            "/_matrix/client/v3/profile/@ivy:localhost/displayname",
            Some(&token),
            Some(json!({"displayname": "Ivy"})),
        )
        .await;
    assert_eq!(put.0, 200);
    server.restart();
    assert_eq!(server.whoami(&token).await.0, 200);
    let (status, body) = server.login("ivy", "pw", None).await;
    assert_eq!(status, 200, "{body}");
    let (_, profile) = server
        .call(
            "GET",
            "/_matrix/client/v3/profile/@ivy:localhost/displayname",
            None,
            None,
        )
        .await;
    assert_eq!(profile["displayname"], "Ivy");
}
