//! What clients hand to others: OpenID tokens for widgets and Element
//! Call, TURN credentials for calls.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::json;

#[tokio::test]
async fn openid_tokens_for_widgets_and_calls() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (bob_id, _, _) = server.register("bob", "pw").await;
    let path = |user: &str| format!("/_matrix/client/v3/user/{}/openid/request_token", enc(user));
    let (status, body) = server
        .call("POST", &path(&alice_id), Some(&alice), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() >= 32), "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], "localhost");
    assert_eq!(body["expires_in"], 3600);
    let (_, again) = server
        .call("POST", &path(&alice_id), Some(&alice), Some(json!({})))
        .await;
    assert_ne!(again["access_token"], body["access_token"], "a new token each time");
    assert_error(
        &server.call("POST", &path(&bob_id), Some(&alice), Some(json!({}))).await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn turn_credentials_for_calls() {
    let path = "/_matrix/client/v3/voip/turnServer";
    let plain = TestServer::start().await;
    let (_, token, _) = plain.register("alice", "pw").await;
    let (status, body) = plain.call("GET", path, Some(&token), None).await;
    assert_eq!((status, body), (200, json!({})), "no TURN server configured");
    assert_error(&plain.call("GET", path, None, None).await, 401, "M_MISSING_TOKEN");

    let server = TestServer::start_with(
        "turn_uris = [\"turn:turn.example.org?transport=udp\"]\nturn_secret = \"s3cret\"\nturn_ttl = 600",
    )
    .await;
    let (user_id, token, _) = server.register("alice", "pw").await;
    let (status, body) = server.call("GET", path, Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uris"], json!(["turn:turn.example.org?transport=udp"]));
    assert_eq!(body["ttl"], 600);
    // coturn's scheme: "<expiry>:<user>", an HMAC-SHA1 in base64 (28 characters).
    let username = body["username"].as_str().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, user_id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry >= now + 590 && expiry <= now + 610, "{expiry} vs {now}");
    assert_eq!(body["password"].as_str().unwrap().len(), 28, "{body}");
}
