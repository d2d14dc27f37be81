//! Devices: list, get, rename, delete with user-interactive auth.

mod common;

use common::{assert_error, password_auth, TestServer};
use serde_json::json;

#[tokio::test]
async fn list_get_rename() {
    let server = TestServer::start().await;
    let (_, token, device) = server.register("dana", "pw").await;
    server.login("dana", "pw", Some("LAPTOP")).await;

    let (status, body) = server
        .call("GET", "/_matrix/client/v3/devices", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    let mut ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![device.as_str(), "LAPTOP"];
    expected.sort();
    assert_eq!(ids, expected);
    // Last seen is recorded, with the loopback address.
    let me = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == device.as_str())
        .unwrap();
    assert_eq!(me["last_seen_ip"], "127.0.0.1");
    assert!(me["last_seen_ts"].as_u64().unwrap() > 1_600_000_000_000);

    let path = "/_matrix/client/v3/devices/LAPTOP";
    let (status, _) = server
        .call("PUT", path, Some(&token), Some(json!({"display_name": "Work laptop"})))
        .await;
    assert_eq!(status, 200);
    let (status, body) = server.call("GET", path, Some(&token), None).await;
    assert_eq!((status, body["display_name"].as_str()), (200, Some("Work laptop")));

    assert_error(
        &server
            .call("GET", "/_matrix/client/v3/devices/NOPE", Some(&token), None)
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .call("PUT", "/_matrix/client/v3/devices/NOPE", Some(&token), Some(json!({})))
            .await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn delete_needs_password_and_kills_token() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("eli", "pw").await;
    let (_, other) = server.login("eli", "pw", Some("OLDPHONE")).await;
    let other_token = other["access_token"].as_str().unwrap();
    let path = "/_matrix/client/v3/devices/OLDPHONE";

    let (status, first) = server.call("DELETE", path, Some(&token), Some(json!({}))).await;
    assert_eq!(status, 401);
    assert_eq!(first["flows"][0]["stages"][0], "m.login.password");
    let wrong = json!({"auth": password_auth("eli", "bad", &first["session"])});
    let (status, body) = server.call("DELETE", path, Some(&token), Some(wrong)).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_FORBIDDEN")));
    assert_eq!(server.whoami(other_token).await.0, 200);

    let right = json!({"auth": password_auth("eli", "pw", &first["session"])});
    let (status, body) = server.call("DELETE", path, Some(&token), Some(right)).await;
    assert_eq!(status, 200, "{body}");
    assert_error(&server.whoami(other_token).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&server.call("GET", path, Some(&token), None).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn delete_devices_in_bulk() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("finn", "pw").await;
    for d in ["A1", "A2", "A3"] {
        server.login("finn", "pw", Some(d)).await;
    }
    let path = "/_matrix/client/v3/delete_devices";
    let (status, first) = server
        .call("POST", path, Some(&token), Some(json!({"devices": ["A1", "A2"]})))
        .await;
    assert_eq!(status, 401);
    let body = json!({"devices": ["A1", "A2", "UNKNOWN"], "auth": password_auth("finn", "pw", &first["session"])});
    assert_eq!(server.call("POST", path, Some(&token), Some(body)).await.0, 200);
    let (_, list) = server
        .call("GET", "/_matrix/client/v3/devices", Some(&token), None)
        .await;
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"A3") && !ids.contains(&"A1") && !ids.contains(&"A2"),
        "{ids:?}"
    );
    assert_eq!(ids.len(), 2);
}

#[tokio::test]
async fn a_session_cannot_be_reused_for_another_purpose() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("gil", "pw").await;
    let (_, first) = server
        .call(
            "POST",
            "/_matrix/client/v3/delete_devices",
            Some(&token),
            Some(json!({"devices": []})),
        )
        .await;
    let body = json!({"new_password": "x", "auth": password_auth("gil", "pw", &first["session"])});
    let result = server
        .call("POST", "/_matrix/client/v3/account/password", Some(&token), Some(body))
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
    assert_eq!(
        server.login("gil", "pw", None).await.0,
        200,
        "the password did not change"
    );
}
