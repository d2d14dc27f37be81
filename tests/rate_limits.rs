//! Client rate limits against the real binary, with small limits: 429
//! `M_LIMIT_EXCEEDED` with a retry time that is enough, per user or per
//! address, the lockout after wrong passwords, and who is exempt.

mod common;

use std::time::Duration;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

/// A server with rate limits on, `limits` being `rate_limits.*` keys (one
/// per line); registration is left unlimited unless `limits` says
/// otherwise, so tests can set up their users.
async fn limited_server(limits: &str) -> TestServer {
    let mut config = "rate_limits.enabled = true\n".to_owned();
    if !limits.contains("rate_limits.register") {
        config.push_str("rate_limits.register = { per_second = 1.0, burst = 1000 }\n");
    }
    config.push_str(limits);
    TestServer::start_with(&config).await
}

/// What a rate-limited request got back.
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

impl Answer {
    /// The `retry_after_ms` of a 429, checked against its `Retry-After`
    /// header (whole seconds, rounded up) and against `at_most`.
    fn refused_for(&self, at_most: u64) -> u64 {
        assert_eq!(self.status, 429, "{}", self.body);
        assert_eq!(self.body["errcode"], "M_LIMIT_EXCEEDED", "{}", self.body);
        let ms = self.body["retry_after_ms"].as_u64().expect("retry_after_ms");
        assert!(ms > 0 && ms <= at_most, "retry_after_ms {ms}, expected 1..={at_most}");
        let header = self.retry_after.as_deref().expect("a Retry-After header");
        assert_eq!(header, ms.div_ceil(1000).to_string());
        ms
    }
}

/// A request with an optional token and client address
/// (`X-Forwarded-For`, which the server takes as the client's).
async fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    address: Option<&str>,
    body: Value,
) -> Answer {
    let mut req = server
        .client
        .request(method.parse().unwrap(), server.url(path))
        .json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(address) = address {
        req = req.header("X-Forwarded-For", address);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        body,
        retry_after,
    }
}

async fn send(server: &TestServer, token: &str, room_id: &str, txn: &str) -> Answer {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room_id));
    request(
        server,
        "PUT",
        &path,
        Some(token),
        None,
        json!({"msgtype": "m.text", "body": txn}),
    )
    .await
}

async fn login_from(server: &TestServer, user: &str, password: &str, address: &str) -> Answer {
    let body =
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
    request(server, "POST", "/_matrix/client/v3/login", None, Some(address), body).await
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn a_burst_of_sends_is_refused_until_the_retry_time_has_passed() {
    let server = limited_server("rate_limits.message = { per_second = 0.5, burst = 3 }").await;
    // The first account is the server's admin, who is exempt.
    server.register("admin", "pw").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let room_id = server.create_room(&alice, json!({})).await;

    assert_eq!(send(&server, &alice, &room_id, "m1").await.status, 200);
    assert_eq!(send(&server, &alice, &room_id, "m2").await.status, 200);
    // State events and redactions take from the same bucket.
    let topic = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room_id));
    let answer = request(&server, "PUT", &topic, Some(&alice), None, json!({"topic": "t"})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let wait = send(&server, &alice, &room_id, "refused").await.refused_for(2000);
    let redact = format!("/_matrix/client/v3/rooms/{}/redact/$x/r1", enc(&room_id));
    request(&server, "PUT", &redact, Some(&alice), None, json!({}))
        .await
        .refused_for(2000);

    // Once the wait is over, one send goes through, and the next waits again.
    sleep_ms(wait).await;
    let answer = send(&server, &alice, &room_id, "m3").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    send(&server, &alice, &room_id, "m4").await.refused_for(2000);
    // Nothing refused was stored.
    let bodies = server.message_bodies(&alice, &room_id).await;
    assert_eq!(bodies, vec!["m1", "m2", "m3"]);
}

#[tokio::test]
async fn server_admins_are_exempt_unless_the_config_says_otherwise() {
    for exempt in [true, false] {
        let server = limited_server(&format!(
            "rate_limits.message = {{ per_second = 0.1, burst = 2 }}\nrate_limits.exempt_admins = {exempt}"
        ))
        .await;
        let (_, admin, _) = server.register("admin", "pw").await;
        let (_, user, _) = server.register("user", "pw").await;
        let admin_room = server.create_room(&admin, json!({})).await;
        let user_room = server.create_room(&user, json!({})).await;
        for i in 0..2 {
            assert_eq!(send(&server, &user, &user_room, &format!("u{i}")).await.status, 200);
        }
        send(&server, &user, &user_room, "u2").await.refused_for(10_000);
        for i in 0..6 {
            let answer = send(&server, &admin, &admin_room, &format!("a{i}")).await;
            if exempt || i < 2 {
                assert_eq!(answer.status, 200, "exempt {exempt}, send {i}: {}", answer.body);
            } else {
                answer.refused_for(10_000);
            }
        }
    }
}

#[tokio::test]
async fn logins_are_limited_per_address() {
    let server = limited_server("rate_limits.login = { per_second = 0.1, burst = 3 }").await;
    server.register("alice", "pw").await;
    for _ in 0..3 {
        let answer = login_from(&server, "alice", "pw", "10.0.0.1").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    login_from(&server, "alice", "pw", "10.0.0.1").await.refused_for(10_000);
    // Another address has its own bucket.
    assert_eq!(login_from(&server, "alice", "pw", "10.0.0.2").await.status, 200);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // The test client connects from loopback, here no trusted proxy: its
    // X-Forwarded-For is ignored and every login is from 127.0.0.1.
    let server =
        limited_server("rate_limits.login = { per_second = 0.1, burst = 2 }\ntrusted_proxies = [\"10.0.0.0/8\"]").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    for address in ["10.0.0.1", "10.0.0.2"] {
        let answer = login_from(&server, "alice", "pw", address).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    login_from(&server, "alice", "pw", "10.0.0.3").await.refused_for(20_000);
    // Devices' last-seen addresses are the connection's too.
    let devices = request(
        &server,
        "GET",
        "/_matrix/client/v3/devices",
        Some(&alice),
        Some("10.0.0.4"),
        json!({}),
    )
    .await;
    assert_eq!(devices.status, 200, "{}", devices.body);
    let seen: Vec<&str> = devices.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["last_seen_ip"].as_str())
        .collect();
    assert!(
        !seen.is_empty() && seen.iter().all(|ip| *ip == "127.0.0.1"),
        "{}",
        devices.body
    );
}

#[tokio::test]
async fn registrations_and_validation_tokens_are_limited_per_address() {
    let server = limited_server(
        "rate_limits.register = { per_second = 0.1, burst = 2 }\nrate_limits.threepid = { per_second = 0.01, burst = 1 }",
    )
    .await;
    let path = "/_matrix/client/v3/register";
    let body = json!({"username": "alice", "password": "pw"});
    for _ in 0..2 {
        let answer = request(&server, "POST", path, None, Some("10.0.0.1"), body.clone()).await;
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    request(&server, "POST", path, None, Some("10.0.0.1"), body.clone())
        .await
        .refused_for(10_000);
    let answer = request(&server, "POST", path, None, Some("10.0.0.2"), body).await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    // This server sends no emails, but asking still counts.
    let path = "/_matrix/client/v3/register/email/requestToken";
    let body = json!({"client_secret": "secret", "email": "a@example.org", "send_attempt": 1});
    let answer = request(&server, "POST", path, None, Some("10.0.0.1"), body.clone()).await;
    assert_error(&(answer.status, answer.body), 403, "M_THREEPID_DENIED");
    request(&server, "POST", path, None, Some("10.0.0.1"), body)
        .await
        .refused_for(100_000);
}

#[tokio::test]
async fn wrong_passwords_lock_the_account_from_every_address_for_a_growing_while() {
    let server = limited_server(
        "rate_limits.failed_logins = 2\nrate_limits.failed_login_lockout = 1.0\nrate_limits.failed_login_lockout_max = 8.0",
    )
    .await;
    server.register("alice", "right").await;
    server.register("bob", "right").await;

    assert_error(&server.login("alice", "wrong", None).await, 403, "M_FORBIDDEN");
    let answer = login_from(&server, "alice", "wrong", "10.0.0.2").await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    // Locked now: even the right password, from yet another address.
    let wait = login_from(&server, "alice", "right", "10.0.0.3")
        .await
        .refused_for(1000);
    // Another account is not.
    assert_eq!(login_from(&server, "bob", "right", "10.0.0.3").await.status, 200);

    // After the lock, one more wrong password locks for twice as long.
    sleep_ms(wait).await;
    let answer = login_from(&server, "alice", "wrong", "10.0.0.4").await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    let wait = login_from(&server, "alice", "right", "10.0.0.5")
        .await
        .refused_for(2000);
    assert!(wait > 1000, "the second lock is longer: {wait} ms");

    sleep_ms(wait).await;
    let answer = login_from(&server, "alice", "right", "10.0.0.5").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The right password forgot the wrong ones: one more does not lock.
    assert_error(&server.login("alice", "wrong", None).await, 403, "M_FORBIDDEN");
    assert_eq!(server.login("alice", "right", None).await.0, 200);
}

#[tokio::test]
async fn joins_and_uploads_have_buckets_of_their_own() {
    let server = limited_server(
        "rate_limits.join = { per_second = 0.1, burst = 1 }\nrate_limits.media_upload = { per_second = 0.1, burst = 1 }",
    )
    .await;
    server.register("admin", "pw").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let first = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    let second = server.create_room(&alice, json!({"preset": "public_chat"})).await;

    let join = |room: &str| format!("/_matrix/client/v3/join/{}", enc(room));
    assert_eq!(
        request(&server, "POST", &join(&first), Some(&bob), None, json!({}))
            .await
            .status,
        200
    );
    request(&server, "POST", &join(&second), Some(&bob), None, json!({}))
        .await
        .refused_for(10_000);
    // Inviting counts as joining; sending is another bucket.
    let invite = format!("/_matrix/client/v3/rooms/{}/invite", enc(&second));
    let answer = request(
        &server,
        "POST",
        &invite,
        Some(&alice),
        None,
        json!({"user_id": "@bob:localhost"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    request(
        &server,
        "POST",
        &invite,
        Some(&alice),
        None,
        json!({"user_id": "@admin:localhost"}),
    )
    .await
    .refused_for(10_000);
    assert_eq!(send(&server, &bob, &first, "hello").await.status, 200);

    server.upload_media(&alice, b"one".to_vec(), "text/plain", None).await;
    let upload = request(
        &server,
        "POST",
        "/_matrix/media/v1/create",
        Some(&alice),
        None,
        json!({}),
    )
    .await;
    upload.refused_for(10_000);
    // Another user's uploads are their own.
    server.upload_media(&bob, b"two".to_vec(), "text/plain", None).await;
}

/// A registration that wants no traffic (`url: null`), users `@{prefix}_*`.
fn registration(id: &str, prefix: &str, extra: &str) -> String {
    format!(
        "id: {id}\nurl: null\nas_token: {id}_as_token\nhs_token: {id}_hs_token\nsender_localpart: {prefix}bot\n\
         namespaces:\n  users:\n  - regex: '@{prefix}_.*'\n    exclusive: true\n{extra}"
    )
}

/// Sends five messages as the appservice `id` acting as `user_id` (its own
/// user when `None`), in a room it creates; the statuses.
async fn five_sends_as(server: &TestServer, id: &str, user_id: Option<&str>) -> Vec<u16> {
    let token = format!("{id}_as_token");
    let query = user_id.map(|u| format!("?user_id={}", enc(u))).unwrap_or_default();
    let created = request(
        server,
        "POST",
        &format!("/_matrix/client/v3/createRoom{query}"),
        Some(&token),
        None,
        json!({}),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let room_id = created.body["room_id"].as_str().unwrap().to_owned();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}{query}",
            enc(&room_id)
        );
        let answer = request(
            server,
            "PUT",
            &path,
            Some(&token),
            None,
            json!({"msgtype": "m.text", "body": "x"}),
        )
        .await;
        statuses.push(answer.status);
    }
    statuses
}

#[tokio::test]
async fn an_appservices_users_are_limited_only_if_its_registration_asks() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (id, prefix, extra) in [("free", "free", ""), ("strict", "strict", "rate_limited: true\n")] {
        let file = dir.path().join(format!("{id}.yaml"));
        std::fs::write(&file, registration(id, prefix, extra)).unwrap();
        files.push(file.display().to_string());
    }
    let server = TestServer::start_in(
        dir,
        &format!(
            "app_service_config_files = {files:?}\nrate_limits.enabled = true\n\
             rate_limits.message = {{ per_second = 0.1, burst = 2 }}"
        ),
    )
    .await;
    for (id, localpart) in [("free", "free_puppet"), ("strict", "strict_puppet")] {
        let answer = request(
            &server,
            "POST",
            "/_matrix/client/v3/register",
            Some(&format!("{id}_as_token")),
            None,
            json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let all_sent = vec![200; 5];
    assert_eq!(
        five_sends_as(&server, "free", Some("@free_puppet:localhost")).await,
        all_sent
    );
    assert_eq!(
        five_sends_as(&server, "strict", Some("@strict_puppet:localhost")).await,
        vec![200, 200, 429, 429, 429]
    );
    // The appservice's own user never is.
    assert_eq!(five_sends_as(&server, "strict", None).await, all_sent);
}
