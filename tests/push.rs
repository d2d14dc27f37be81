//! Pushers and push gateways against the real binary: a push gateway runs
//! in the test (a loopback HTTP listener) and records the notifications
//! Conduit sends it.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_error, enc, LoopbackListener, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NOTIFY: &str = "/_matrix/push/v1/notify";

/// A push gateway that records each notification and rejects the
/// pushkeys in `rejecting`.
struct Gateway {
    listener: LoopbackListener,
    received: Arc<Mutex<Vec<Value>>>,
    rejecting: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    async fn start() -> Self {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let rejecting: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, j) = (received.clone(), rejecting.clone());
        let listener = LoopbackListener::start(move |stream| {
            tokio::spawn(answer(stream, r.clone(), j.clone()));
        })
        .await;
        Gateway {
            listener,
            received,
            rejecting,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{NOTIFY}", self.listener.port)
    }

    fn notifications(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|body| body["notification"].clone())
            .collect()
    }

    /// Waits (at most 30 s) until `count` notifications have come.
    async fn wait_for(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.notifications();
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "gateway: {} of {count} notifications within 30 s",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Answers one HTTP request (and closes the connection).
async fn answer(mut stream: TcpStream, received: Arc<Mutex<Vec<Value>>>, rejecting: Arc<Mutex<Vec<String>>>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let (header_end, length) = loop {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..i]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                .unwrap_or(0usize);
            break (i + 4, length);
        }
    };
    while data.len() < header_end + length {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => data.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let request_line = String::from_utf8_lossy(&data[..header_end])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(request_line, format!("POST {NOTIFY} HTTP/1.1"));
    let body: Value = serde_json::from_slice(&data[header_end..]).unwrap_or(Value::Null);
    let rejected: Vec<String> = {
        let rejecting = rejecting.lock().unwrap();
        body["notification"]["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["pushkey"].as_str())
            .filter(|k| rejecting.iter().any(|r| r == k))
            .map(str::to_owned)
            .collect()
    };
    received.lock().unwrap().push(body);
    let reply = json!({ "rejected": rejected }).to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

fn pusher(url: &str, pushkey: &str) -> Value {
    json!({
        "kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
        "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
        "data": {"url": url, "custom": "kept"},
    })
}

async fn set_pusher(server: &TestServer, token: &str, body: Value) -> (u16, Value) {
    server
        .call("POST", "/_matrix/client/v3/pushers/set", Some(token), Some(body))
        .await
}

/// The pushkeys of the user's pushers.
async fn pushkeys(server: &TestServer, token: &str) -> Vec<String> {
    let (status, body) = server
        .call("GET", "/_matrix/client/v3/pushers", Some(token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pushkey"].as_str().unwrap().to_owned())
        .collect()
}

/// Alice and Bob in a named room; Bob has a pusher `bobkey` to `gateway`
/// (on loopback, which the server is allowed to reach).
async fn bob_with_a_pusher(gateway: &Gateway) -> (TestServer, String, String, String) {
    bob_with_a_pusher_on(gateway, "push_gateway_allowed_ranges = [\"127.0.0.0/8\"]").await
}

/// [`bob_with_a_pusher`] on a server with `config`.
async fn bob_with_a_pusher_on(gateway: &Gateway, config: &str) -> (TestServer, String, String, String) {
    let server = TestServer::start_with(config).await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let room_id = server
        .create_room(&alice, json!({"preset": "public_chat", "name": "Launch"}))
        .await;
    server.join(&bob, &room_id).await;
    assert_eq!(set_pusher(&server, &bob, pusher(&gateway.url(), "bobkey")).await.0, 200);
    (server, alice, bob, room_id)
}

#[tokio::test]
async fn pushers_are_set_replaced_moved_and_deleted() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let url = "https://push.example.org/_matrix/push/v1/notify";
    assert!(pushkeys(&server, &alice).await.is_empty());

    assert_eq!(set_pusher(&server, &alice, pusher(url, "k1")).await.0, 200);
    let (_, listed) = server
        .call("GET", "/_matrix/client/v3/pushers", Some(&alice), None)
        .await;
    let listed = &listed["pushers"][0];
    assert_eq!(listed["kind"], "http");
    assert_eq!(listed["app_id"], "org.example.app");
    assert_eq!(listed["data"], json!({"url": url, "custom": "kept"}));

    // The same app ID and pushkey again: replaced, not added.
    let mut renamed = pusher(url, "k1");
    renamed["device_display_name"] = json!("Tablet");
    assert_eq!(set_pusher(&server, &alice, renamed).await.0, 200);
    let (_, listed) = server
        .call("GET", "/_matrix/client/v3/pushers", Some(&alice), None)
        .await;
    assert_eq!(listed["pushers"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["pushers"][0]["device_display_name"], "Tablet");

    // Bob takes the pushkey: with `append`, Alice keeps hers; without, not.
    let mut appended = pusher(url, "k1");
    appended["append"] = json!(true);
    assert_eq!(set_pusher(&server, &bob, appended).await.0, 200);
    assert_eq!(pushkeys(&server, &alice).await, ["k1"]);
    assert_eq!(set_pusher(&server, &bob, pusher(url, "k1")).await.0, 200);
    assert!(pushkeys(&server, &alice).await.is_empty());
    assert_eq!(pushkeys(&server, &bob).await, ["k1"]);

    // `kind: null` deletes.
    let delete = json!({"kind": null, "app_id": "org.example.app", "pushkey": "k1"});
    assert_eq!(set_pusher(&server, &bob, delete).await.0, 200);
    assert!(pushkeys(&server, &bob).await.is_empty());

    // What is refused, and why.
    let mut email = pusher(url, "bob@example.org");
    email["kind"] = json!("email");
    assert_error(&set_pusher(&server, &bob, email).await, 400, "M_INVALID_PARAM");
    let elsewhere = pusher("https://push.example.org/other", "k2");
    assert_error(&set_pusher(&server, &bob, elsewhere).await, 400, "M_INVALID_PARAM");
    let mut no_url = pusher(url, "k2");
    no_url["data"] = json!({});
    assert_error(&set_pusher(&server, &bob, no_url).await, 400, "M_MISSING_PARAM");
    let mut no_lang = pusher(url, "k2");
    no_lang.as_object_mut().unwrap().remove("lang");
    assert_error(&set_pusher(&server, &bob, no_lang).await, 400, "M_MISSING_PARAM");
    let mut long = pusher(url, "k2");
    long["app_id"] = json!("a".repeat(65));
    assert_error(&set_pusher(&server, &bob, long).await, 400, "M_INVALID_PARAM");
    assert!(pushkeys(&server, &bob).await.is_empty());

    // A pusher goes with the device that set it.
    let (status, login) = server.login("bob", "pw", Some("PHONE")).await;
    assert_eq!(status, 200, "{login}");
    let phone = login["access_token"].as_str().unwrap().to_owned();
    assert_eq!(set_pusher(&server, &phone, pusher(url, "phonekey")).await.0, 200);
    assert_eq!(set_pusher(&server, &bob, pusher(url, "laptopkey")).await.0, 200);
    let (status, _) = server
        .call("POST", "/_matrix/client/v3/logout", Some(&phone), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(pushkeys(&server, &bob).await, ["laptopkey"]);
}

#[tokio::test]
async fn a_mention_is_pushed_with_its_counts_and_the_pushers_data() {
    let gateway = Gateway::start().await;
    let (server, alice, _bob, room_id) = bob_with_a_pusher(&gateway).await;
    let first = server.send_text(&alice, &room_id, "lift-off soon").await;
    let (status, mention) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/m1", enc(&room_id)),
            Some(&alice),
            Some(json!({"msgtype": "m.text", "body": "bob: look", "m.mentions": {"user_ids": ["@bob:localhost"]}})),
        )
        .await;
    assert_eq!(status, 200, "{mention}");
    let got = gateway.wait_for(2).await;
    assert_eq!(got[0]["event_id"], json!(first));
    assert_eq!(got[0]["counts"], json!({"unread": 1}));

    let n = &got[1];
    assert_eq!(n["event_id"], mention["event_id"]);
    assert_eq!(n["room_id"], json!(room_id));
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], "@alice:localhost");
    assert!(n["sender_display_name"].is_string(), "{n}");
    assert_eq!(n["room_name"], "Launch");
    assert_eq!(n["content"]["body"], "bob: look");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"], json!({"unread": 2}));
    let devices = n["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["app_id"], "org.example.app");
    assert_eq!(devices[0]["pushkey"], "bobkey");
    assert!(devices[0]["pushkey_ts"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(devices[0]["data"], json!({"custom": "kept"}), "the URL is left out");
    assert_eq!(devices[0]["tweaks"]["highlight"], true);

    // Alice's own messages are not pushed to Alice (she has no pusher).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.notifications().len(), 2);
}

#[tokio::test]
async fn a_muted_room_is_not_pushed() {
    let gateway = Gateway::start().await;
    let (server, alice, bob, room_id) = bob_with_a_pusher(&gateway).await;
    let (status, body) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room_id)),
            Some(&bob),
            Some(json!({"actions": []})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let other = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    server.join(&bob, &other).await;

    server.send_text(&alice, &room_id, "muted").await;
    // A message in another room comes after it: once it is pushed, the
    // muted one would have been.
    let heard = server.send_text(&alice, &other, "heard").await;
    let got = gateway.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_later = gateway.notifications();
    assert_eq!(got_later.len(), 1, "{got_later:?}");
    assert_eq!(got[0]["event_id"], json!(heard));
}

#[tokio::test]
async fn a_gateway_down_gets_every_notification_once_when_back() {
    let mut gateway = Gateway::start().await;
    let (server, alice, _bob, room_id) = bob_with_a_pusher(&gateway).await;
    gateway.listener.stop().await;
    let sent = [
        server.send_text(&alice, &room_id, "one").await,
        server.send_text(&alice, &room_id, "two").await,
    ];
    // Let the first try fail.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(gateway.notifications().is_empty());
    gateway.listener.restart().await;
    gateway.wait_for(2).await;
    // Nothing more comes after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got: Vec<Value> = gateway.notifications().iter().map(|n| n["event_id"].clone()).collect();
    assert_eq!(got, sent.map(|id| json!(id)), "each once, in order");
}

#[tokio::test]
async fn a_notification_queued_before_a_restart_is_delivered_after_it() {
    let mut gateway = Gateway::start().await;
    let (mut server, alice, _bob, room_id) = bob_with_a_pusher(&gateway).await;
    gateway.listener.stop().await;
    let sent = server.send_text(&alice, &room_id, "across a restart").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    gateway.listener.restart().await;
    gateway.wait_for(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got: Vec<Value> = gateway.notifications().iter().map(|n| n["event_id"].clone()).collect();
    assert_eq!(got, vec![json!(sent)], "once, after the restart");
}

#[tokio::test]
async fn a_rejected_pushkey_removes_the_pusher() {
    let gateway = Gateway::start().await;
    gateway.rejecting.lock().unwrap().push("bobkey".to_owned());
    let (server, alice, bob, room_id) = bob_with_a_pusher(&gateway).await;
    assert_eq!(pushkeys(&server, &bob).await, ["bobkey"]);
    server.send_text(&alice, &room_id, "one").await;
    gateway.wait_for(1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pushkeys(&server, &bob).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the rejected pusher is still there after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more goes to it.
    server.send_text(&alice, &room_id, "two").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushed: HashSet<String> = gateway
        .notifications()
        .iter()
        .map(|n| n["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(pushed, HashSet::from(["one".to_owned()]));
}

#[tokio::test]
async fn a_gateway_on_a_private_address_is_not_reached_unless_the_operator_allows_it() {
    let gateway = Gateway::start().await;
    let (server, alice, _bob, room_id) = bob_with_a_pusher_on(&gateway, "").await;
    let mark = server.log_mark();
    server
        .send_text(&alice, &room_id, "nobody should post this to loopback")
        .await;
    server.wait_for_log(mark, &["push gateway URL refused"]).await;
    assert_eq!(gateway.notifications(), Vec::<Value>::new());
}

async fn read_markers(server: &TestServer, token: &str, room_id: &str, body: Value) {
    let (status, body) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(room_id)),
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn reading_sends_badge_updates_down_to_zero() {
    let gateway = Gateway::start().await;
    let (server, alice, bob, room_id) = bob_with_a_pusher(&gateway).await;
    let first = server.send_text(&alice, &room_id, "one").await;
    let second = server.send_text(&alice, &room_id, "two").await;
    gateway.wait_for(2).await;

    server.read_receipt(&bob, &room_id, &first).await;
    let got = gateway.wait_for(3).await;
    let badge = &got[2];
    assert!(
        badge.get("event_id").is_none(),
        "a badge update is about no event: {badge}"
    );
    assert!(badge.get("type").is_none(), "{badge}");
    assert_eq!(badge["counts"], json!({"unread": 1, "missed_calls": 0}));
    assert_eq!(badge["devices"][0]["pushkey"], "bobkey");

    // `/read_markers` moves the receipt too; zero is sent, so the badge clears.
    read_markers(
        &server,
        &bob,
        &room_id,
        json!({"m.fully_read": second, "m.read": second}),
    )
    .await;
    let got = gateway.wait_for(4).await;
    assert_eq!(got[3]["counts"], json!({"unread": 0, "missed_calls": 0}));

    // Counts that did not change bring nothing: the same receipt again,
    // and the fully-read marker alone (it is not a receipt).
    server.read_receipt(&bob, &room_id, &second).await;
    read_markers(&server, &bob, &room_id, json!({"m.fully_read": first})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.notifications().len(), 4, "{:?}", gateway.notifications());
}

#[tokio::test]
async fn a_missed_call_is_counted_until_read() {
    let gateway = Gateway::start().await;
    let (server, alice, bob, room_id) = bob_with_a_pusher(&gateway).await;
    let invite = json!({
        "call_id": "c1", "lifetime": 60_000, "version": "1", "party_id": "p1",
        "offer": {"type": "offer", "sdp": "v=0\r\n"},
    });
    let call = server.send_event(&alice, &room_id, "m.call.invite", invite).await;
    let text = server.send_text(&alice, &room_id, "call me back").await;
    let got = gateway.wait_for(2).await;
    assert_eq!(got[0]["event_id"], json!(call));
    assert_eq!(got[0]["type"], "m.call.invite");
    assert_eq!(got[0]["counts"], json!({"unread": 1, "missed_calls": 1}));
    assert_eq!(got[1]["counts"], json!({"unread": 2, "missed_calls": 1}));

    server.read_receipt(&bob, &room_id, &text).await;
    let got = gateway.wait_for(3).await;
    assert_eq!(got[2]["counts"], json!({"unread": 0, "missed_calls": 0}));

    // Read, the call is no longer missed.
    server.send_text(&alice, &room_id, "never mind").await;
    let got = gateway.wait_for(4).await;
    assert_eq!(got[3]["counts"], json!({"unread": 1}));
}

#[tokio::test]
async fn a_room_without_a_name_is_named_after_its_members() {
    let gateway = Gateway::start().await;
    let server = TestServer::start_with("push_gateway_allowed_ranges = [\"127.0.0.0/8\"]").await;
    let mut tokens = Vec::new();
    for (user, name) in [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")] {
        let (_, token, _) = server.register(user, "pw").await;
        let (status, body) = server
            .call(
                "PUT",
                &format!("/_matrix/client/v3/profile/@{user}:localhost/displayname"),
                Some(&token),
                Some(json!({"displayname": name})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        tokens.push(token);
    }
    let [alice, bob, carol] = [&tokens[0], &tokens[1], &tokens[2]];
    let room_id = server.create_room(alice, json!({"preset": "public_chat"})).await;
    server.join(bob, &room_id).await;
    server.join(carol, &room_id).await;
    assert_eq!(set_pusher(&server, bob, pusher(&gateway.url(), "bobkey")).await.0, 200);

    server.send_text(alice, &room_id, "who is here?").await;
    let got = gateway.wait_for(1).await;
    assert_eq!(got[0]["room_name"], "Alice and Carol", "{}", got[0]);
    assert_eq!(got[0]["sender_display_name"], "Alice");
}

#[tokio::test]
async fn a_notification_undelivered_too_long_is_dropped() {
    let mut gateway = Gateway::start().await;
    let config = "push_gateway_allowed_ranges = [\"127.0.0.0/8\"]\npush_notification_max_age = 2";
    let (server, alice, _bob, room_id) = bob_with_a_pusher_on(&gateway, config).await;
    gateway.listener.stop().await;
    let mark = server.log_mark();
    server.send_text(&alice, &room_id, "stale").await;
    server.wait_for_log(mark, &["outbox: delivery failed"]).await;
    // Back before the retry, but the notification is older than 2 s by then.
    gateway.listener.restart().await;
    server
        .wait_for_log(mark, &["push notification not delivered in time; dropped"])
        .await;

    let fresh = server.send_text(&alice, &room_id, "fresh").await;
    let got = gateway.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.notifications().len(), 1, "{:?}", gateway.notifications());
    assert_eq!(got[0]["event_id"], json!(fresh));
}
