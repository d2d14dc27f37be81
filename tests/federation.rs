//! Federation: what other homeservers see of this one.

mod common;

use common::{assert_error, conduit_command, TestServer};
use ruma::serde::Base64;
use ruma::signatures::{verify_json, PublicKeyMap};
use ruma::CanonicalJsonObject;
use serde_json::{json, Value};

/// The key document, checked against its own current key.
async fn verified_keys(server: &TestServer) -> Value {
    let (status, keys) = server.call("GET", "/_matrix/key/v2/server", None, None).await;
    assert_eq!(status, 200, "{keys}");
    let (key_id, key) = keys["verify_keys"].as_object().unwrap().iter().next().unwrap();
    let public = Base64::parse(key["key"].as_str().unwrap()).unwrap();
    let mut map = PublicKeyMap::new();
    map.insert(
        keys["server_name"].as_str().unwrap().to_owned(),
        [(key_id.clone(), public)].into(),
    );
    let object: CanonicalJsonObject = serde_json::from_value(keys.clone()).unwrap();
    verify_json(&map, &object).expect("the key document is signed with its key");
    keys
}

#[tokio::test]
async fn signing_keys_are_published_signed_and_a_rotated_key_stays_as_an_old_key() {
    let mut server = TestServer::start_with("allow_federation = true").await;
    let keys = verified_keys(&server).await;
    assert_eq!(keys["server_name"], "localhost");
    assert_eq!(keys["old_verify_keys"], serde_json::json!({}));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(keys["valid_until_ts"].as_u64().unwrap() > now);
    let first_key = keys["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();

    let (status, version) = server.call("GET", "/_matrix/federation/v1/version", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(version["server"]["name"], "Conduit");

    // The operator rotates the key of the stopped server.
    assert!(server.stop().success());
    let rotated = conduit_command()
        .arg("-c")
        .arg(server.config_path())
        .arg("rotate-signing-key")
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    server.start_again();
    let keys = verified_keys(&server).await;
    assert!(keys["verify_keys"].get(&first_key).is_none(), "{keys}");
    assert!(keys["old_verify_keys"][&first_key]["key"].is_string(), "{keys}");
    assert!(
        keys["old_verify_keys"][&first_key]["expired_ts"].as_u64().unwrap() <= keys["valid_until_ts"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn with_federation_off_other_servers_get_a_clean_403() {
    let server = TestServer::start().await;
    for path in [
        "/_matrix/key/v2/server",
        "/_matrix/federation/v1/version",
        "/_matrix/federation/v1/openid/userinfo?access_token=x",
    ] {
        assert_error(&server.call("GET", path, None, None).await, 403, "M_FORBIDDEN");
    }
}

/// A free loopback port (there is a small window in which another process
/// could take it; the test would then fail to start, not pass wrongly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two servers on loopback that reach each other by name.
async fn two_servers() -> (TestServer, TestServer) {
    two_servers_with("", "").await
}

/// [`two_servers`], with more `[global]` keys for A and for B.
async fn two_servers_with(extra_a: &str, extra_b: &str) -> (TestServer, TestServer) {
    let (port_a, port_b) = (free_port(), free_port());
    let config = |name: &str, port: u16, extra: &str, other: &str, other_port: u16| {
        format!(
            "server_name = \"{name}\"\nport = {port}\nallow_federation = true\ntrusted_servers = []\n{extra}\n\
             [global.federation_destination_overrides]\n\"{other}\" = \"http://127.0.0.1:{other_port}\"\n"
        )
    };
    let a = TestServer::start_with(&config("conduit-a.test", port_a, extra_a, "conduit-b.test", port_b)).await;
    let b = TestServer::start_with(&config("conduit-b.test", port_b, extra_b, "conduit-a.test", port_a)).await;
    (a, b)
}

/// Three servers on loopback; A and B reach the two others by name, C
/// reaches only A (and, if `c_trusts_a`, asks A for B's keys).
async fn three_servers(c_trusts_a: bool) -> (TestServer, TestServer, TestServer) {
    let names = ["conduit-a.test", "conduit-b.test", "conduit-c.test"];
    let ports = [free_port(), free_port(), free_port()];
    let closed = free_port();
    let config = |i: usize| {
        // C asks A for B's keys (A vouches for them as a notary).
        let trusted = if i == 2 && c_trusts_a {
            "[\"conduit-a.test\"]"
        } else {
            "[]"
        };
        let mut config = format!(
            "server_name = \"{}\"\nport = {}\nallow_federation = true\ntrusted_servers = {trusted}\n\
             [global.federation_destination_overrides]\n",
            names[i], ports[i]
        );
        for j in (0..3).filter(|j| *j != i) {
            // C cannot reach B (a port nobody listens on): what B learns
            // of C's events, it learns from A or from asking C.
            let port = if (i, j) == (2, 1) { closed } else { ports[j] };
            config.push_str(&format!("\"{}\" = \"http://127.0.0.1:{port}\"\n", names[j]));
        }
        config
    };
    let a = TestServer::start_with(&config(0)).await;
    let b = TestServer::start_with(&config(1)).await;
    let c = TestServer::start_with(&config(2)).await;
    (a, b, c)
}

/// Alice's public room on A, Bob of B in it, Carol of C about to join
/// (see [`three_servers`]).
struct Trio {
    a: TestServer,
    b: TestServer,
    c: TestServer,
    alice: String,
    alice_token: String,
    bob: String,
    bob_token: String,
    carol: String,
    carol_token: String,
    room: String,
}

impl Trio {
    async fn new(c_trusts_a: bool) -> Trio {
        let (a, b, c) = three_servers(c_trusts_a).await;
        let (alice, alice_token, _) = a.register("alice", "password-a").await;
        let (bob, bob_token, _) = b.register("bob", "password-b").await;
        let (carol, carol_token, _) = c.register("carol", "password-c").await;
        let room = a.create_room(&alice_token, json!({"preset": "public_chat"})).await;
        let trio = Trio {
            a,
            b,
            c,
            alice,
            alice_token,
            bob,
            bob_token,
            carol,
            carol_token,
            room,
        };
        let (status, body) = trio
            .b
            .call("POST", &trio.join_path(), Some(&trio.bob_token), Some(json!({})))
            .await;
        assert_eq!(status, 200, "{body}");
        trio
    }

    fn join_path(&self) -> String {
        format!("/_matrix/client/v3/join/{}", common::enc(&self.room))
    }

    async fn carol_joins(&self) {
        let (status, body) = self
            .c
            .call("POST", &self.join_path(), Some(&self.carol_token), Some(json!({})))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn members_seen_on(&self, server: &TestServer, token: &str) -> Value {
        let members = format!("/_matrix/client/v3/rooms/{}/joined_members", common::enc(&self.room));
        let (status, seen) = server.call("GET", &members, Some(token), None).await;
        assert_eq!(status, 200, "{seen}");
        seen
    }
}

#[tokio::test]
async fn a_join_through_the_rooms_server_reaches_the_rooms_other_servers() {
    let t = Trio::new(true).await;
    // Carol joins through A after Bob; C cannot tell B, so B learns of it
    // from A, the server her join went through.
    t.carol_joins().await;
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = t.members_seen_on(&t.b, &t.bob_token).await;
        if seen["joined"][&t.carol].is_object() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen["joined"][&t.carol].is_object(), "carol's join on B: {seen}");
    // So B sends to C directly, and Carol reads Bob.
    t.b.send_text(&t.bob_token, &t.room, "hello carol").await;
    wait_for_messages(&t.c, &t.carol_token, &t.room, &["hello carol"]).await;
}

#[tokio::test]
async fn a_member_event_of_a_server_whose_keys_are_out_of_reach_does_not_stop_a_join() {
    let t = Trio::new(false).await;
    // C can neither reach B nor ask anyone for B's keys: Bob's member event
    // cannot be checked there, and is left out; the rest of the room stands.
    t.carol_joins().await;
    t.a.send_text(&t.alice_token, &t.room, "welcome carol").await;
    wait_for_messages(&t.c, &t.carol_token, &t.room, &["welcome carol"]).await;
    let seen = t.members_seen_on(&t.c, &t.carol_token).await;
    assert!(seen["joined"][&t.alice].is_object(), "{seen}");
    assert!(seen["joined"].get(&t.bob).is_none(), "bob's unverifiable join: {seen}");
}

/// Waits (at most 20 s) until `user` on `server` sees `bodies` as the last
/// messages of the room, in that order.
async fn wait_for_messages(server: &TestServer, token: &str, room_id: &str, bodies: &[&str]) {
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = server.message_bodies(token, room_id).await;
        if seen.len() >= bodies.len() && seen[seen.len() - bodies.len()..] == *bodies {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("expected the room to end in {bodies:?}, saw {seen:?}");
}

#[tokio::test]
async fn users_of_two_servers_join_each_others_rooms_and_talk_both_ways() {
    let (a, b) = two_servers().await;
    let (alice, alice_token, _) = a.register("alice", "password-a").await;
    let (bob, bob_token, _) = b.register("bob", "password-b").await;
    assert_eq!(alice, "@alice:conduit-a.test");

    // Alice's room on A; Bob joins it from B.
    let room_a = a
        .create_room(&alice_token, json!({"preset": "public_chat", "name": "on A"}))
        .await;
    let (status, joined) = b
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", common::enc(&room_a)),
            Some(&bob_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["room_id"], room_a.as_str());

    // Both servers know Bob is in; messages cross both ways, in order, once.
    a.send_text(&alice_token, &room_a, "hello bob").await;
    wait_for_messages(&b, &bob_token, &room_a, &["hello bob"]).await;
    b.send_text(&bob_token, &room_a, "hi alice").await;
    b.send_text(&bob_token, &room_a, "how are you?").await;
    wait_for_messages(&a, &alice_token, &room_a, &["hello bob", "hi alice", "how are you?"]).await;
    wait_for_messages(&b, &bob_token, &room_a, &["hello bob", "hi alice", "how are you?"]).await;

    let (status, members) = a
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/joined_members", common::enc(&room_a)),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(members["joined"][&bob].is_object(), "{members}");

    // Bob's room on B; Alice joins it from A.
    let room_b = b.create_room(&bob_token, json!({"preset": "public_chat"})).await;
    let (status, joined) = a
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", common::enc(&room_b)),
            Some(&alice_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{joined}");
    b.send_text(&bob_token, &room_b, "welcome").await;
    wait_for_messages(&a, &alice_token, &room_b, &["welcome"]).await;
    a.send_text(&alice_token, &room_b, "thanks").await;
    wait_for_messages(&b, &bob_token, &room_b, &["welcome", "thanks"]).await;

    let bodies = a.message_bodies(&alice_token, &room_a).await;
    assert_eq!(
        bodies.iter().filter(|b| *b == "hi alice").count(),
        1,
        "delivered once: {bodies:?}"
    );
}

/// Alice of A with a public room that Bob of B has joined over federation.
struct Pair {
    a: TestServer,
    b: TestServer,
    alice: String,
    alice_token: String,
    bob: String,
    bob_token: String,
    room: String,
}

async fn alice_and_bob_across_servers() -> Pair {
    let (a, b) = two_servers().await;
    let (alice, alice_token, _) = a.register("alice", "password-a").await;
    let (bob, bob_token, _) = b.register("bob", "password-b").await;
    let room = a.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    let path = format!("/_matrix/client/v3/join/{}", common::enc(&room));
    let (status, joined) = b.call("POST", &path, Some(&bob_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{joined}");
    Pair {
        a,
        b,
        alice,
        alice_token,
        bob,
        bob_token,
        room,
    }
}

/// Syncs (at most 20 s in all) until `found` holds for the room's section.
async fn wait_for_sync(server: &TestServer, token: &str, room_id: &str, what: &str, found: impl Fn(&Value) -> bool) {
    let mut since: Option<String> = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let sync = server.sync(token, since.as_deref(), 1000, None).await;
        if found(&sync["rooms"]["join"][room_id]) {
            return;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
    }
    panic!("{what}: not seen within 20 s");
}

#[tokio::test]
async fn typing_and_read_receipts_cross_to_the_other_server() {
    let p = alice_and_bob_across_servers().await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        common::enc(&p.room),
        common::enc(&p.alice)
    );
    let (status, _) =
        p.a.call(
            "PUT",
            &path,
            Some(&p.alice_token),
            Some(json!({"typing": true, "timeout": 20000})),
        )
        .await;
    assert_eq!(status, 200);
    let alice = p.alice.clone();
    wait_for_sync(&p.b, &p.bob_token, &p.room, "alice typing on B", |room| {
        room["ephemeral"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|u| u.contains(&json!(alice)))
            })
        })
    })
    .await;

    // Bob reads Alice's message; A sees his receipt.
    let message = p.a.send_text(&p.alice_token, &p.room, "read me").await;
    wait_for_messages(&p.b, &p.bob_token, &p.room, &["read me"]).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
        common::enc(&p.room),
        common::enc(&message)
    );
    let (status, body) = p.b.call("POST", &path, Some(&p.bob_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let (bob, message_id) = (p.bob.clone(), message.clone());
    wait_for_sync(&p.a, &p.alice_token, &p.room, "bob's receipt on A", |room| {
        room["ephemeral"]["events"].as_array().is_some_and(|events| {
            events
                .iter()
                .any(|e| e["type"] == "m.receipt" && e["content"][&message_id]["m.read"][&bob].is_object())
        })
    })
    .await;
}

#[tokio::test]
async fn messages_sent_while_the_other_server_is_down_for_a_minute_arrive_once_it_is_back() {
    let mut p = alice_and_bob_across_servers().await;
    p.a.send_text(&p.alice_token, &p.room, "before").await;
    wait_for_messages(&p.b, &p.bob_token, &p.room, &["before"]).await;

    // B is down for a minute; A keeps trying (its backoff grows to 40 s
    // meanwhile) and restarts halfway, with the deliveries still queued.
    assert!(p.b.stop().success());
    let down = std::time::Instant::now();
    p.a.send_text(&p.alice_token, &p.room, "while down 1").await;
    tokio::time::sleep(std::time::Duration::from_secs(25)).await;
    p.a.send_text(&p.alice_token, &p.room, "while down 2").await;
    p.a.restart();
    tokio::time::sleep(std::time::Duration::from_secs(25)).await;
    p.a.send_text(&p.alice_token, &p.room, "while down 3").await;
    tokio::time::sleep(std::time::Duration::from_secs(60).saturating_sub(down.elapsed())).await;
    p.b.start_again();
    // B contacting A (its join is long done; any signed request will do)
    // is not needed: A retries on its own, and at once when B calls.
    b_calls_a(&p).await;
    wait_for_messages(
        &p.b,
        &p.bob_token,
        &p.room,
        &["before", "while down 1", "while down 2", "while down 3"],
    )
    .await;
    let bodies = p.b.message_bodies(&p.bob_token, &p.room).await;
    assert_eq!(
        bodies.iter().filter(|b| b.starts_with("while down")).count(),
        3,
        "once each: {bodies:?}"
    );

    // And the other way after the restart.
    p.b.send_text(&p.bob_token, &p.room, "back").await;
    wait_for_messages(&p.a, &p.alice_token, &p.room, &["while down 3", "back"]).await;
}

/// Pages back through a room's history (at most 40 pages of `limit`),
/// oldest first, until the server says it has reached the start.
async fn read_back_to_the_start(server: &TestServer, token: &str, room_id: &str, limit: u32) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..40 {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            common::enc(room_id)
        );
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", common::enc(from)));
        }
        let (status, page) = server.call("GET", &path, Some(token), None).await;
        assert_eq!(status, 200, "{page}");
        events.extend(page["chunk"].as_array().unwrap().iter().cloned());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => {
                events.reverse();
                return events;
            }
        }
    }
    panic!("no start of the room's history after 40 pages");
}

fn bodies_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_late_joiner_reads_what_was_said_before_the_join_fetched_from_the_other_server() {
    let (a, mut b) = two_servers().await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (_, bob_token, _) = b.register("bob", "password-b").await;
    let room = a
        .create_room(&alice_token, json!({"preset": "public_chat", "name": "history"}))
        .await;
    let mut said: Vec<String> = Vec::new();
    for i in 0..30 {
        if i == 12 {
            let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", common::enc(&room));
            let (status, body) = a
                .call("PUT", &path, Some(&alice_token), Some(json!({"topic": "halfway"})))
                .await;
            assert_eq!(status, 200, "{body}");
        }
        said.push(format!("before {i}"));
        a.send_text(&alice_token, &room, &said[i]).await;
    }
    let path = format!("/_matrix/client/v3/join/{}", common::enc(&room));
    let (status, joined) = b.call("POST", &path, Some(&bob_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{joined}");
    a.send_text(&alice_token, &room, "after the join").await;
    said.push("after the join".to_owned());
    wait_for_sync(&b, &bob_token, &room, "the message after the join on B", |r| {
        r["timeline"]["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["content"]["body"] == "after the join"))
    })
    .await;
    // B restarts before anyone reads back: nothing of the room's past is
    // stored there, only its state.
    b.restart();
    let since = b.sync(&bob_token, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob pages back in small pages: each reaches past what B has, and B
    // fetches the rest from A. Everything, in order, once, up to the
    // room's creation.
    let history = read_back_to_the_start(&b, &bob_token, &room, 7).await;
    assert_eq!(bodies_of(&history), said);
    assert_eq!(
        history[0]["type"], "m.room.create",
        "the history starts at the creation"
    );
    let topic = history
        .iter()
        .find(|e| e["type"] == "m.room.topic")
        .expect("the topic change");
    assert_eq!(topic["content"]["topic"], "halfway");
    let ids: std::collections::HashSet<&str> = history.iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(ids.len(), history.len(), "no event twice");

    // The fetched past is history, not news: the next sync brings none of it.
    a.send_text(&alice_token, &room, "later").await;
    let mut news = Vec::new();
    let mut since = since;
    for _ in 0..40 {
        let sync = b.sync(&bob_token, Some(&since), 500, None).await;
        news.extend(bodies_of(
            sync["rooms"]["join"][&room]["timeline"]["events"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ));
        since = sync["next_batch"].as_str().unwrap().to_owned();
        if news.contains(&"later".to_owned()) {
            break;
        }
    }
    assert_eq!(news, ["later"]);

    // Read again, from B alone (A is gone): the same history, and /context
    // works inside the fetched part.
    drop(a);
    let again = read_back_to_the_start(&b, &bob_token, &room, 50).await;
    said.push("later".to_owned());
    assert_eq!(bodies_of(&again), said);
    let fifth = again.iter().find(|e| e["content"]["body"] == "before 5").unwrap()["event_id"]
        .as_str()
        .unwrap();
    let path = format!(
        "/_matrix/client/v3/rooms/{}/context/{}?limit=2",
        common::enc(&room),
        common::enc(fifth)
    );
    let (status, context) = b.call("GET", &path, Some(&bob_token), None).await;
    assert_eq!(status, 200, "{context}");
    assert_eq!(context["events_before"][0]["content"]["body"], "before 4");
    assert_eq!(context["events_after"][0]["content"]["body"], "before 6");
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}",
        common::enc(&room),
        common::enc(context["start"].as_str().unwrap())
    );
    let (status, page) = b.call("GET", &path, Some(&bob_token), None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "before 3");
}

/// Waits (at most 20 s) until B's server has `membership` for Bob in the
/// room (what his client reads from his own server).
async fn wait_for_bob(p: &Pair, membership: &str) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        common::enc(&p.room),
        common::enc(&p.bob)
    );
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = p.b.call("GET", &path, Some(&p.bob_token), None).await.1;
        if seen["membership"] == membership {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("bob's membership on B is not {membership}: {seen}");
}

#[tokio::test]
async fn kicks_bans_and_leaves_cross_servers() {
    let p = alice_and_bob_across_servers().await;
    let room = common::enc(&p.room);
    let join = format!("/_matrix/client/v3/join/{room}");
    let send_as_bob = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/kicked-1");

    // Alice kicks Bob: B learns it, and Bob may no longer speak.
    let (status, body) =
        p.a.call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            Some(&p.alice_token),
            Some(json!({"user_id": p.bob, "reason": "out"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_bob(&p, "leave").await;
    let (status, _) =
        p.b.call(
            "PUT",
            &send_as_bob,
            Some(&p.bob_token),
            Some(json!({"msgtype": "m.text", "body": "still here?"})),
        )
        .await;
    assert_eq!(status, 403, "a kicked member does not speak");

    // A public room: he comes back, then leaves on his own.
    let (status, body) = p.b.call("POST", &join, Some(&p.bob_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    p.b.send_text(&p.bob_token, &p.room, "back again").await;
    wait_for_messages(&p.a, &p.alice_token, &p.room, &["back again"]).await;
    let (status, body) =
        p.b.call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&p.bob_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let members = format!("/_matrix/client/v3/rooms/{room}/joined_members");
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = p.a.call("GET", &members, Some(&p.alice_token), None).await.1;
        if seen["joined"].get(&p.bob).is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen["joined"].get(&p.bob).is_none(), "bob's leave on A: {seen}");

    // Banned, he cannot come back.
    let (status, body) =
        p.a.call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&p.alice_token),
            Some(json!({"user_id": p.bob})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_bob(&p, "ban").await;
    let (status, body) = p.b.call("POST", &join, Some(&p.bob_token), Some(json!({}))).await;
    assert_eq!(status, 403, "a banned user's join is refused: {body}");
}

/// Bob sends something into A's room: B's transaction tells A that B is up.
async fn b_calls_a(p: &Pair) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        common::enc(&p.room),
        common::enc(&p.bob)
    );
    let (status, _) =
        p.b.call(
            "PUT",
            &path,
            Some(&p.bob_token),
            Some(json!({"typing": true, "timeout": 1000})),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn requests_with_a_forged_or_missing_signature_are_refused() {
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    use ruma::signatures::Ed25519KeyPair;

    let (a, b) = two_servers().await;
    let b_keys = verified_keys(&b).await;
    let b_key_id = b_keys["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let path = "/_matrix/federation/v1/send/forged1";
    let body = json!({"origin": "conduit-b.test", "origin_server_ts": 1, "pdus": []});
    let body_bytes = serde_json::to_vec(&body).unwrap();

    // Signed by someone claiming to be B, with B's key ID or another.
    for key_version in [b_key_id.trim_start_matches("ed25519:").to_owned(), "forged".to_owned()] {
        let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), key_version).unwrap();
        let request = http::Request::builder()
            .method("PUT")
            .uri(path)
            .body(body_bytes.clone())
            .unwrap();
        let input = XMatrixSigningInput::new(
            "conduit-b.test".try_into().unwrap(),
            "conduit-a.test".try_into().unwrap(),
            &key,
        );
        let header = http::HeaderValue::from(&XMatrix::sign_http_request(&request, input).unwrap());
        let response = a
            .client
            .put(a.url(path))
            .header("Authorization", header.to_str().unwrap())
            .header("Content-Type", "application/json")
            .body(body_bytes.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (401, Some("M_UNAUTHORIZED")),
            "{answer}"
        );
    }

    // No signature at all.
    let (status, answer) = a.call("PUT", path, None, Some(body)).await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "{answer}"
    );
}

/// A server of the test's own, `fake.test`: a listener that serves its
/// key document (all it answers), and its key to sign requests with.
async fn fake_server() -> (u16, ruma::signatures::Ed25519KeyPair) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = common::keys::new_key("fake");
    let valid_until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 86_400_000;
    let document = common::keys::signed(
        json!({
            "server_name": "fake.test",
            "valid_until_ts": valid_until,
            "verify_keys": {"ed25519:fake": {"key": common::keys::public(&key)}},
            "old_verify_keys": {},
        }),
        "fake.test",
        &key,
    )
    .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let document = document.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{document}",
                    document.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, key)
}

/// `PUT /send/{txn}` to A, signed by `fake.test` for `destination`, with
/// a transaction naming `origin`.
async fn fake_transaction(
    a: &TestServer,
    key: &ruma::signatures::Ed25519KeyPair,
    txn: &str,
    destination: &str,
    origin: &str,
) -> (u16, Value) {
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    let path = format!("/_matrix/federation/v1/send/{txn}");
    let body = serde_json::to_vec(&json!({"origin": origin, "origin_server_ts": 1, "pdus": []})).unwrap();
    let request = http::Request::builder()
        .method("PUT")
        .uri(&path)
        .body(body.clone())
        .unwrap();
    let input = XMatrixSigningInput::new("fake.test".try_into().unwrap(), destination.try_into().unwrap(), key);
    let header = http::HeaderValue::from(&XMatrix::sign_http_request(&request, input).unwrap());
    let response = a
        .client
        .put(a.url(&path))
        .header("Authorization", header.to_str().unwrap())
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_server_speaks_only_for_itself_and_only_to_the_server_it_names() {
    let (port, key) = fake_server().await;
    let a = TestServer::start_with(&format!(
        "server_name = \"conduit-a.test\"\nallow_federation = true\ntrusted_servers = []\n\
         [global.federation_destination_overrides]\n\"fake.test\" = \"http://127.0.0.1:{port}\"\n"
    ))
    .await;
    // Signed by fake.test, for A, as fake.test: taken (so the refusals
    // below are about what they change, not about the signature).
    let (status, answer) = fake_transaction(&a, &key, "t1", "conduit-a.test", "fake.test").await;
    assert_eq!(status, 200, "{answer}");
    // A transaction that claims to come from another server.
    let refused = fake_transaction(&a, &key, "t2", "conduit-a.test", "conduit-b.test").await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    // A request signed for another destination.
    let refused = fake_transaction(&a, &key, "t3", "conduit-b.test", "fake.test").await;
    assert_error(&refused, 401, "M_UNAUTHORIZED");
}

#[tokio::test]
async fn invites_cross_servers_both_ways_and_can_be_accepted_or_refused() {
    let (a, b) = two_servers().await;
    let (alice, alice_token, _) = a.register("alice", "password-a").await;
    let (bob, bob_token, _) = b.register("bob", "password-b").await;

    // A direct chat: Alice creates a private room inviting Bob of B.
    let dm = a
        .create_room(
            &alice_token,
            json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bob]}),
        )
        .await;
    wait_for_invite(&b, &bob_token, &dm).await;
    let (status, joined) = b
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/join", common::enc(&dm)),
            Some(&bob_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{joined}");
    b.send_text(&bob_token, &dm, "thanks for the invite").await;
    wait_for_messages(&a, &alice_token, &dm, &["thanks for the invite"]).await;

    // Bob invites Alice to a private room of B's, with a reason (which the
    // signatures, made over the redacted event, do not cover); she refuses.
    let private = b.create_room(&bob_token, json!({"preset": "private_chat"})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/invite", common::enc(&private));
    let (status, body) = b
        .call(
            "POST",
            &path,
            Some(&bob_token),
            Some(json!({"user_id": alice, "reason": "come and see"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_invite(&a, &alice_token, &private).await;
    let (status, _) = a
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", common::enc(&private)),
            Some(&alice_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let sync = a.sync(&alice_token, None, 0, None).await;
    assert!(sync["rooms"]["invite"].get(&private).is_none(), "refused: {sync}");

    // A private room Alice was never invited to stays closed to her.
    let closed = b.create_room(&bob_token, json!({"preset": "private_chat"})).await;
    let (status, _) = a
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", common::enc(&closed)),
            Some(&alice_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403, "B's refusal reaches Alice's client as one");
}

/// Waits (at most 20 s) for an invite to `room_id` in the user's sync,
/// with the inviting server's stripped state.
async fn wait_for_invite(server: &TestServer, token: &str, room_id: &str) {
    for _ in 0..100 {
        let sync = server.sync(token, None, 0, None).await;
        let invite = &sync["rooms"]["invite"][room_id]["invite_state"]["events"];
        if let Some(events) = invite.as_array() {
            assert!(events.iter().any(|e| e["type"] == "m.room.create"), "{invite}");
            assert!(events
                .iter()
                .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite"));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("no invite to {room_id} within 20 s");
}

#[tokio::test]
async fn encryption_keys_and_to_device_messages_cross_servers() {
    use common::keys::{device_keys, new_key};
    let p = alice_and_bob_across_servers().await;
    let (status, who) = p.a.whoami(&p.alice_token).await;
    assert_eq!(status, 200);
    let alice_device = who["device_id"].as_str().unwrap().to_owned();
    let (_, who) = p.b.whoami(&p.bob_token).await;
    let bob_device = who["device_id"].as_str().unwrap().to_owned();

    // Alice's device publishes its keys and a one-time key on A.
    let key = new_key(&alice_device);
    let upload = json!({
        "device_keys": device_keys(&p.alice, &alice_device, &key),
        "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "b25lLXRpbWUta2V5LW9uZS10aW1lLWtleS0xMjM0NTY"}},
    });
    let (status, body) =
        p.a.call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&p.alice_token),
            Some(upload),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Bob's client, through B, sees her device and claims the key.
    let (status, keys) =
        p.b.call(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&p.bob_token),
            Some(json!({"device_keys": {&p.alice: []}})),
        )
        .await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(
        keys["device_keys"][&p.alice][&alice_device]["device_id"],
        alice_device.as_str(),
        "{keys}"
    );
    assert_eq!(keys["failures"], json!({}));
    let claim = json!({"one_time_keys": {&p.alice: {&alice_device: "signed_curve25519"}}});
    let (status, claimed) =
        p.b.call(
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(&p.bob_token),
            Some(claim.clone()),
        )
        .await;
    assert_eq!(status, 200, "{claimed}");
    assert!(
        claimed["one_time_keys"][&p.alice][&alice_device]["signed_curve25519:AAAAAQ"].is_object(),
        "{claimed}"
    );
    // Claimed once: the second claim finds none.
    let (_, again) =
        p.b.call("POST", "/_matrix/client/v3/keys/claim", Some(&p.bob_token), Some(claim))
            .await;
    assert!(
        again["one_time_keys"][&p.alice][&alice_device]
            .get("signed_curve25519:AAAAAQ")
            .is_none(),
        "{again}"
    );

    // Bob sends Alice's device a to-device message (how room keys travel).
    let path = "/_matrix/client/v3/sendToDevice/m.room.encrypted/txn1";
    let body = json!({"messages": {&p.alice: {&alice_device: {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {"k": {"type": 0, "body": "secret"}}}}}});
    let (status, _) = p.b.call("PUT", path, Some(&p.bob_token), Some(body)).await;
    assert_eq!(status, 200);
    let mut got = Value::Null;
    for _ in 0..100 {
        let sync = p.a.sync(&p.alice_token, None, 0, None).await;
        let events = &sync["to_device"]["events"];
        if events.as_array().is_some_and(|e| !e.is_empty()) {
            got = events[0].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(got["sender"], p.bob.as_str(), "{got}");
    assert_eq!(got["content"]["ciphertext"]["k"]["body"], "secret");

    // Bob's new keys on B: Alice's sync on A says to fetch them again.
    let bob_key = new_key(&bob_device);
    let upload = json!({"device_keys": device_keys(&p.bob, &bob_device, &bob_key)});
    let since = p.a.sync(&p.alice_token, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) =
        p.b.call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&p.bob_token),
            Some(upload),
        )
        .await;
    assert_eq!(status, 200);
    let mut since = since;
    let mut changed = false;
    for _ in 0..20 {
        let sync = p.a.sync(&p.alice_token, Some(&since), 1000, None).await;
        if sync["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.contains(&json!(p.bob)))
        {
            changed = true;
            break;
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
    assert!(changed, "Bob's device list change reached Alice's sync");
}

/// Publishes a new key for the device; answers its public part.
async fn upload_device_keys(server: &TestServer, user: &str, token: &str, device: &str) -> String {
    use common::keys::{device_keys, new_key, public};
    let key = new_key(device);
    let body = json!({"device_keys": device_keys(user, device, &key)});
    let (status, answer) = server
        .call("POST", "/_matrix/client/v3/keys/upload", Some(token), Some(body))
        .await;
    assert_eq!(status, 200, "{answer}");
    public(&key)
}

/// Bob's device list as Alice's client gets it through A: device ID →
/// (display name, the device's ed25519 key).
async fn bobs_devices_seen_by_alice(p: &Pair) -> (Value, std::collections::BTreeMap<String, (Value, Value)>) {
    let (status, keys) =
        p.a.call(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&p.alice_token),
            Some(json!({"device_keys": {&p.bob: []}})),
        )
        .await;
    assert_eq!(status, 200, "{keys}");
    let devices = keys["device_keys"][&p.bob]
        .as_object()
        .map(|devices| {
            devices
                .iter()
                .map(|(id, k)| {
                    let name = k["unsigned"]["device_display_name"].clone();
                    (id.clone(), (name, k["keys"][format!("ed25519:{id}")].clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    (keys, devices)
}

#[tokio::test]
async fn a_remote_users_device_list_is_kept_in_step_and_known_while_their_server_is_down() {
    let mut p = alice_and_bob_across_servers().await;
    let (_, who) = p.b.whoami(&p.bob_token).await;
    let phone = who["device_id"].as_str().unwrap().to_owned();
    let phone_key = upload_device_keys(&p.b, &p.bob, &p.bob_token, &phone).await;

    // Alice's first query fetches Bob's whole list from B.
    let (_, devices) = bobs_devices_seen_by_alice(&p).await;
    assert_eq!(devices.keys().collect::<Vec<_>>(), [&phone], "{devices:?}");
    assert_eq!(devices[&phone].1, json!(phone_key));
    let since = p.a.sync(&p.alice_token, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob signs in on a laptop, which publishes its keys, and renames his
    // phone; B tells A each change.
    let (status, login) = p.b.login("bob", "password-b", Some("LAPTOP")).await;
    assert_eq!(status, 200, "{login}");
    let laptop_token = login["access_token"].as_str().unwrap().to_owned();
    let laptop_key = upload_device_keys(&p.b, &p.bob, &laptop_token, "LAPTOP").await;
    let path = format!("/_matrix/client/v3/devices/{phone}");
    let (status, _) =
        p.b.call(
            "PUT",
            &path,
            Some(&p.bob_token),
            Some(json!({"display_name": "Bob's phone"})),
        )
        .await;
    assert_eq!(status, 200);
    let mut since = since;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let sync = p.a.sync(&p.alice_token, Some(&since), 1000, None).await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        if sync["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.contains(&json!(p.bob)))
        {
            seen = bobs_devices_seen_by_alice(&p).await.1;
            if seen.get(&phone).is_some_and(|(name, _)| name == "Bob's phone") && seen.contains_key("LAPTOP") {
                break;
            }
        }
    }
    assert_eq!(seen["LAPTOP"].1, json!(laptop_key), "{seen:?}");
    assert_eq!(seen[&phone], (json!("Bob's phone"), json!(phone_key)), "{seen:?}");
    // Each update followed on from the list A fetched (B numbers them as
    // its `/user/devices` does), so A never had to fetch it again.
    assert_eq!(p.a.log_lines_with("after a gap"), Vec::<String>::new());

    // With B down, A still knows Bob's devices: the list is kept on A, not
    // asked of B each time.
    p.b.stop();
    let (keys, down) = bobs_devices_seen_by_alice(&p).await;
    assert_eq!(down, seen, "{keys}");
    assert_eq!(keys["failures"], json!({}), "{keys}");

    // Once Bob logs the laptop out (with B back), A forgets it.
    p.b.start_again();
    let (status, _) =
        p.b.call(
            "POST",
            "/_matrix/client/v3/logout",
            Some(login["access_token"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let mut gone = false;
    for _ in 0..50 {
        if !bobs_devices_seen_by_alice(&p).await.1.contains_key("LAPTOP") {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(gone, "the laptop's deletion reached A");

    // Once Bob shares no room with anyone of A, B no longer tells A of his
    // changes, so A stops keeping his list: with B down, A says it cannot
    // answer rather than answer from a list that may be out of date.
    let path = format!("/_matrix/client/v3/rooms/{}/leave", common::enc(&p.room));
    let (status, _) = p.b.call("POST", &path, Some(&p.bob_token), Some(json!({}))).await;
    assert_eq!(status, 200);
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        common::enc(&p.room),
        common::enc(&p.bob)
    );
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = p.a.call("GET", &path, Some(&p.alice_token), None).await.1;
        if seen["membership"] == "leave" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen["membership"], "leave", "{seen}");
    p.b.stop();
    let (keys, devices) = bobs_devices_seen_by_alice(&p).await;
    assert!(devices.is_empty(), "{keys}");
    let b_name = p.bob.split_once(':').unwrap().1;
    assert!(keys["failures"].get(b_name).is_some(), "{keys}");
}

#[tokio::test]
async fn profiles_and_aliases_of_the_other_server_and_its_server_acl() {
    let p = alice_and_bob_across_servers().await;
    // Alice's profile, read from B.
    let path = format!("/_matrix/client/v3/profile/{}/displayname", common::enc(&p.alice));
    let (status, _) =
        p.a.call(
            "PUT",
            &path,
            Some(&p.alice_token),
            Some(json!({"displayname": "Alice A."})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, profile) =
        p.b.call(
            "GET",
            &format!("/_matrix/client/v3/profile/{}", common::enc(&p.alice)),
            Some(&p.bob_token),
            None,
        )
        .await;
    assert_eq!(
        (status, profile["displayname"].as_str()),
        (200, Some("Alice A.")),
        "{profile}"
    );

    // A room of A's by its alias, resolved and joined from B.
    let lobby =
        p.a.create_room(
            &p.alice_token,
            json!({"preset": "public_chat", "room_alias_name": "lobby"}),
        )
        .await;
    let alias = "#lobby:conduit-a.test";
    let (status, found) =
        p.b.call(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", common::enc(alias)),
            Some(&p.bob_token),
            None,
        )
        .await;
    assert_eq!(
        (status, found["room_id"].as_str()),
        (200, Some(lobby.as_str())),
        "{found}"
    );
    let (status, joined) =
        p.b.call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", common::enc(alias)),
            Some(&p.bob_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status, joined["room_id"].as_str()),
        (200, Some(lobby.as_str())),
        "{joined}"
    );

    // The first room bars B by its server ACL: A takes nothing more from B there.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
        common::enc(&p.room)
    );
    let acl = json!({"allow": ["conduit-a.test"], "deny": [], "allow_ip_literals": false});
    let (status, body) = p.a.call("PUT", &path, Some(&p.alice_token), Some(acl)).await;
    assert_eq!(status, 200, "{body}");
    p.a.send_text(&p.alice_token, &p.room, "acl set").await;
    wait_for_messages(&p.b, &p.bob_token, &p.room, &["acl set"]).await;
    p.b.send_text(&p.bob_token, &p.room, "from a barred server").await;
    // Meanwhile the lobby, without an ACL, still takes Bob's messages.
    p.b.send_text(&p.bob_token, &lobby, "lobby is fine").await;
    wait_for_messages(&p.a, &p.alice_token, &lobby, &["lobby is fine"]).await;
    let bodies = p.a.message_bodies(&p.alice_token, &p.room).await;
    assert!(!bodies.iter().any(|b| b == "from a barred server"), "{bodies:?}");
}

#[tokio::test]
async fn a_join_cut_short_by_a_crash_leaves_a_room_that_works_after_a_restart() {
    let (a, mut b) = two_servers().await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (_, bob_token, _) = b.register("bob", "password-b").await;
    let room = a
        .create_room(&alice_token, json!({"preset": "public_chat", "name": "busy"}))
        .await;
    for i in 0..20 {
        a.send_text(&alice_token, &room, &format!("history {i}")).await;
    }

    // B dies (SIGKILL) while its join is under way, at a different point
    // each round; each time it restarts, joins (again) and the room works.
    let path = format!("/_matrix/client/v3/join/{}", common::enc(&room));
    for (round, delay_ms) in [5u64, 20, 60].into_iter().enumerate() {
        let request = b
            .client
            .post(b.url(&path))
            .bearer_auth(&bob_token)
            .json(&json!({}))
            .send();
        let in_flight = tokio::spawn(request);
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        b.stop_with("KILL");
        let _ = in_flight.await;
        b.start_again();
        let (status, joined) = b.call("POST", &path, Some(&bob_token), Some(json!({}))).await;
        assert_eq!(status, 200, "round {round}: {joined}");
        let text = format!("after crash {round}");
        a.send_text(&alice_token, &room, &text).await;
        wait_for_messages(&b, &bob_token, &room, &[text.as_str()]).await;
        let reply = format!("bob back {round}");
        b.send_text(&bob_token, &room, &reply).await;
        wait_for_messages(&a, &alice_token, &room, &[reply.as_str()]).await;
    }
}

/// Runs the `openssl` CLI in `dir` with `args` (split at whitespace), then
/// `verbatim` (paths, which may hold spaces).
fn openssl(dir: &std::path::Path, args: &str, verbatim: &[&str]) {
    let made = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .args(verbatim)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl CLI (scripts/test installs it)");
    assert!(
        made.status.success(),
        "openssl {args} {verbatim:?}: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// A new P-256 key, unencrypted, and two days of validity.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2";

/// A certificate authority in `dir`: `ca.pem` and `ca.key`.
fn make_ca(dir: &std::path::Path) -> std::path::PathBuf {
    openssl(
        dir,
        &format!(
            "req -x509 {NEW_KEY} -keyout ca.key -out ca.pem -subj /CN=conduit-test-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
        &[],
    );
    dir.join("ca.pem")
}

/// A server certificate for `name` (as its DNS name) in `dir`, signed by
/// the CA in `ca_dir`, or self-signed without one. Returns the config value
/// of a listener's `tls`.
fn make_cert(dir: &std::path::Path, name: &str, ca_dir: Option<&std::path::Path>) -> String {
    // Not a CA (OpenSSL's default for a self-signed certificate is one), so
    // that a refusal is for the issuer, not for the kind of certificate.
    let extensions = format!("subjectAltName=DNS:{name}\nbasicConstraints=critical,CA:FALSE\n");
    match ca_dir {
        Some(ca_dir) => {
            let path = |file: &str| ca_dir.join(file).display().to_string();
            std::fs::write(dir.join("cert.ext"), &extensions).unwrap();
            openssl(
                dir,
                &format!("req -new {NEW_KEY} -keyout key.pem -out cert.csr -subj /CN={name}"),
                &[],
            );
            openssl(
                dir,
                "x509 -req -days 2 -in cert.csr -extfile cert.ext -out cert.pem -CAcreateserial",
                &["-CA", &path("ca.pem"), "-CAkey", &path("ca.key")],
            );
        }
        None => {
            let addext: Vec<String> = extensions.lines().map(|e| format!("-addext {e}")).collect();
            openssl(
                dir,
                &format!(
                    "req -x509 {NEW_KEY} -keyout key.pem -out cert.pem -subj /CN={name} {}",
                    addext.join(" ")
                ),
                &[],
            );
        }
    }
    format!(
        "{{ certs = {:?}, key = {:?} }}",
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string()
    )
}

#[tokio::test]
async fn servers_federate_over_tls_listeners_and_refuse_a_certificate_of_no_trusted_ca() {
    let pki = tempfile::tempdir().unwrap();
    let ca = make_ca(pki.path());
    let names = ["conduit-a.test", "conduit-b.test", "conduit-c.test"];
    let tls_ports = [free_port(), free_port(), free_port()];
    let overrides: String = names
        .iter()
        .zip(tls_ports)
        .map(|(name, port)| format!("\"{name}\" = \"https://127.0.0.1:{port}\"\n"))
        .collect();
    // Each server: clients on the first listener (plain HTTP, port 0, what
    // TestServer talks to), other servers on a TLS listener. C's certificate
    // is self-signed: no server trusts it.
    let mut servers = Vec::new();
    for (name, tls_port) in names.into_iter().zip(tls_ports) {
        let dir = tempfile::tempdir().unwrap();
        let tls = make_cert(dir.path(), name, (name != "conduit-c.test").then(|| pki.path()));
        let config = format!(
            "server_name = \"{name}\"\nallow_federation = true\ntrusted_servers = []\n\
             federation_ca_files = [{:?}]\n\
             listeners = [{{ address = \"127.0.0.1\", port = {tls_port}, tls = {tls} }}]\n\
             [global.federation_destination_overrides]\n{overrides}",
            ca.display().to_string()
        );
        servers.push(TestServer::start_in(dir, &config).await);
    }
    let [a, b, c] = <[TestServer; 3]>::try_from(servers).ok().unwrap();
    for (server, port) in [&a, &b, &c].into_iter().zip(tls_ports) {
        assert!(server.base.starts_with("http://127.0.0.1:"), "{}", server.base);
        server
            .wait_for_log(0, &[&format!("listening on https://127.0.0.1:{port}")])
            .await;
    }

    // Bob of B joins Alice's room on A; messages cross both ways.
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (bob, bob_token, _) = b.register("bob", "password-b").await;
    let room_a = a.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    b.join(&bob_token, &room_a).await;
    a.send_text(&alice_token, &room_a, "over tls").await;
    wait_for_messages(&b, &bob_token, &room_a, &["over tls"]).await;
    b.send_text(&bob_token, &room_a, "both ways").await;
    wait_for_messages(&a, &alice_token, &room_a, &["over tls", "both ways"]).await;

    // C answers on its TLS listener, but with a certificate of no trusted
    // CA: B refuses to talk to it, and C's room never sees Bob.
    let (_, carol_token, _) = c.register("carol", "password-c").await;
    let room_c = c.create_room(&carol_token, json!({"preset": "public_chat"})).await;
    let mark = b.log_mark();
    let (status, body) = b
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", common::enc(&room_c)),
            Some(&bob_token),
            Some(json!({})),
        )
        .await;
    assert!(status >= 400, "{status} {body}");
    // For the certificate's issuer, not for want of an answer.
    b.wait_for_log(mark, &["federation request failed", "conduit-c.test", "UnknownIssuer"])
        .await;
    let (status, members) = c
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/joined_members", common::enc(&room_c)),
            Some(&carol_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{members}");
    assert!(members["joined"].get(&bob).is_none(), "{members}");
}

#[tokio::test]
async fn a_server_vouches_for_another_servers_keys_as_a_notary() {
    let (a, b) = two_servers().await;
    let a_keys = verified_keys(&a).await;
    let b_keys = verified_keys(&b).await;
    for (method, path, body) in [
        (
            "POST",
            "/_matrix/key/v2/query".to_owned(),
            Some(json!({"server_keys": {"conduit-b.test": {}}})),
        ),
        ("GET", "/_matrix/key/v2/query/conduit-b.test".to_owned(), None),
    ] {
        let (status, answer) = a.call(method, &path, None, body).await;
        assert_eq!(status, 200, "{answer}");
        let documents = answer["server_keys"].as_array().unwrap();
        assert_eq!(documents.len(), 1, "{answer}");
        let document = &documents[0];
        assert_eq!(document["server_name"], "conduit-b.test");
        assert_eq!(document["verify_keys"], b_keys["verify_keys"]);
        // Signed by B itself, and countersigned by A, the notary.
        let mut map = PublicKeyMap::new();
        for (server, keys) in [("conduit-b.test", &b_keys), ("conduit-a.test", &a_keys)] {
            let (key_id, key) = keys["verify_keys"].as_object().unwrap().iter().next().unwrap();
            map.insert(
                server.to_owned(),
                [(key_id.clone(), Base64::parse(key["key"].as_str().unwrap()).unwrap())].into(),
            );
        }
        let object: CanonicalJsonObject = serde_json::from_value(document.clone()).unwrap();
        verify_json(&map, &object).expect("signed by the server and the notary");
    }
}

/// The `name`s of directory or hierarchy entries, in order.
fn room_names(rooms: &Value) -> Vec<&str> {
    rooms
        .as_array()
        .unwrap_or_else(|| panic!("a list of rooms: {rooms}"))
        .iter()
        .map(|room| room["name"].as_str().unwrap_or("?"))
        .collect()
}

#[tokio::test]
async fn a_client_lists_and_searches_the_other_servers_room_directory() {
    let (a, b) = two_servers().await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (_, bob_token, _) = b.register("bob", "password-b").await;
    let garden = a
        .create_room(
            &alice_token,
            json!({"preset": "public_chat", "visibility": "public", "name": "Gardening club", "topic": "Tomatoes and roses"}),
        )
        .await;
    let chess = a
        .create_room(
            &alice_token,
            json!({"preset": "public_chat", "visibility": "public", "name": "Chess evenings"}),
        )
        .await;
    a.create_room(&alice_token, json!({"preset": "private_chat", "name": "Not listed"}))
        .await;

    let directory_of_a = "/_matrix/client/v3/publicRooms?server=conduit-a.test";
    let (status, listed) = b.call("GET", directory_of_a, Some(&bob_token), None).await;
    assert_eq!(status, 200, "{listed}");
    let mut names = room_names(&listed["chunk"]);
    names.sort_unstable();
    assert_eq!(names, ["Chess evenings", "Gardening club"], "{listed}");
    assert_eq!(listed["total_room_count_estimate"], 2, "{listed}");
    // B's own directory is B's: none of A's rooms.
    let (status, own) = b
        .call("GET", "/_matrix/client/v3/publicRooms", Some(&bob_token), None)
        .await;
    assert_eq!((status, own["chunk"].as_array().map(Vec::len)), (200, Some(0)), "{own}");

    // A search runs on A, whatever the case.
    let (status, found) = b
        .call(
            "POST",
            directory_of_a,
            Some(&bob_token),
            Some(json!({"filter": {"generic_search_term": "TOMATO"}})),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(room_names(&found["chunk"]), ["Gardening club"], "{found}");
    assert_eq!(found["chunk"][0]["room_id"], garden.as_str());
    assert_eq!(found["chunk"][0]["topic"], "Tomatoes and roses");
    assert_eq!(found["chunk"][0]["num_joined_members"], 1);

    // Paging through A's directory from B, A's tokens passed through.
    let (status, first) = b
        .call("POST", directory_of_a, Some(&bob_token), Some(json!({"limit": 1})))
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["chunk"].as_array().map(Vec::len), Some(1), "{first}");
    let since = first["next_batch"].as_str().expect("a next page");
    let (status, second) = b
        .call(
            "POST",
            directory_of_a,
            Some(&bob_token),
            Some(json!({"limit": 1, "since": since})),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    let mut ids = vec![
        first["chunk"][0]["room_id"].as_str().unwrap(),
        second["chunk"][0]["room_id"].as_str().unwrap(),
    ];
    ids.sort_unstable();
    let mut expected = vec![garden.as_str(), chess.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(second.get("next_batch").is_none(), "{second}");
}

#[tokio::test]
async fn a_space_shows_children_that_live_only_on_the_other_server() {
    let (a, b) = two_servers().await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (_, bob_token, _) = b.register("bob", "password-b").await;
    let space_of = |name: &str| json!({"preset": "public_chat", "name": name, "creation_content": {"type": "m.space"}});
    let space = a.create_room(&alice_token, space_of("Club")).await;
    let chat = a
        .create_room(&alice_token, json!({"preset": "public_chat", "name": "Club chat"}))
        .await;
    let sub_space = a.create_room(&alice_token, space_of("Workshops")).await;
    let deep = a
        .create_room(&alice_token, json!({"preset": "public_chat", "name": "Woodwork"}))
        .await;
    let secret = a
        .create_room(&alice_token, json!({"preset": "private_chat", "name": "Committee"}))
        .await;
    for (parent, child, order) in [
        (&space, &chat, "1"),
        (&space, &sub_space, "2"),
        (&space, &secret, "3"),
        (&sub_space, &deep, "1"),
    ] {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
            common::enc(parent),
            common::enc(child)
        );
        let content = json!({"via": ["conduit-a.test"], "order": order});
        let (status, body) = a.call("PUT", &path, Some(&alice_token), Some(content)).await;
        assert_eq!(status, 200, "{body}");
    }

    // Bob joins the space only: B knows none of its children.
    b.join(&bob_token, &space).await;
    let path = format!("/_matrix/client/v1/rooms/{}/hierarchy", common::enc(&space));
    let (status, hierarchy) = b.call("GET", &path, Some(&bob_token), None).await;
    assert_eq!(status, 200, "{hierarchy}");
    let rooms = &hierarchy["rooms"];
    // The committee room is private: A tells B nothing of it.
    assert_eq!(
        room_names(rooms),
        ["Club", "Club chat", "Workshops", "Woodwork"],
        "{hierarchy}"
    );
    assert_eq!(rooms[1]["room_id"], chat.as_str());
    assert_eq!(rooms[1]["num_joined_members"], 1);
    assert_eq!(rooms[2]["room_id"], sub_space.as_str());
    assert_eq!(rooms[2]["room_type"], "m.space");
    assert_eq!(rooms[2]["children_state"][0]["state_key"], deep.as_str(), "{hierarchy}");
    assert_eq!(rooms[3]["room_id"], deep.as_str());

    // Only the suggested: none of the children is.
    let (status, suggested) = b
        .call("GET", &format!("{path}?suggested_only=true"), Some(&bob_token), None)
        .await;
    assert_eq!(status, 200, "{suggested}");
    assert_eq!(room_names(&suggested["rooms"]), ["Club"], "{suggested}");
}

#[tokio::test]
async fn an_event_from_before_this_server_joined_is_found_by_time_through_the_other_server() {
    let (a, b) = two_servers().await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (_, bob_token, _) = b.register("bob", "password-b").await;
    let room = a.create_room(&alice_token, json!({"preset": "public_chat"})).await;
    let early = a.send_text(&alice_token, &room, "before bob came").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    b.join(&bob_token, &room).await;

    // B's copy of the room starts at Bob's join; A has the message.
    let by_time = |dir: &str| {
        format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={between}&dir={dir}",
            common::enc(&room)
        )
    };
    let (status, found) = b.call("GET", &by_time("b"), Some(&bob_token), None).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["event_id"], early.as_str(), "{found}");
    assert!(found["origin_server_ts"].as_u64().unwrap() < between, "{found}");

    // Forward from then, B has the answer itself: Bob's join.
    let (status, found) = b.call("GET", &by_time("f"), Some(&bob_token), None).await;
    assert_eq!(status, 200, "{found}");
    let event_path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        common::enc(&room),
        common::enc(found["event_id"].as_str().unwrap())
    );
    let (status, event) = b.call("GET", &event_path, Some(&bob_token), None).await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(
        (event["type"].as_str(), event["state_key"].as_str()),
        (Some("m.room.member"), Some("@bob:conduit-b.test")),
        "{event}"
    );
}

#[tokio::test]
async fn an_openid_token_names_its_user_to_whoever_checks_it_and_nothing_else_does() {
    let server = TestServer::start_with("allow_federation = true").await;
    let (alice, alice_token, _) = server.register("alice", "password-a").await;
    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", common::enc(&alice));
    let (status, token) = server.call("POST", &path, Some(&alice_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{token}");
    let access_token = token["access_token"].as_str().unwrap();

    // A third party asks, with the OpenID token alone: no signature, no
    // access token.
    let userinfo = |token: &str| {
        format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={}",
            common::enc(token)
        )
    };
    let (status, info) = server.call("GET", &userinfo(access_token), None, None).await;
    assert_eq!((status, info["sub"].as_str()), (200, Some(alice.as_str())), "{info}");

    // Alice's access token is no OpenID token, nor is a made-up one.
    for wrong in [alice_token.as_str(), "99999999999999.nothing", "garbage"] {
        assert_error(
            &server.call("GET", &userinfo(wrong), None, None).await,
            401,
            "M_UNKNOWN_TOKEN",
        );
    }
}
/// Uploads `bytes` to `server`; returns the media ID of the `mxc://` URI.
async fn upload_media(server: &TestServer, token: &str, bytes: Vec<u8>, content_type: &str, filename: &str) -> String {
    let uri = server.upload_media(token, bytes, content_type, Some(filename)).await;
    uri.rsplit('/').next().unwrap().to_owned()
}

/// A GET with `token`: status, `Content-Type`, `Content-Disposition`, body.
async fn get_media(server: &TestServer, path: &str, token: Option<&str>) -> (u16, String, String, Vec<u8>) {
    let mut request = server.client.get(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    let status = resp.status().as_u16();
    (status, content_type, disposition, resp.bytes().await.unwrap().to_vec())
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255])
    }));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn as_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

#[tokio::test]
async fn media_of_another_server_is_fetched_once_kept_and_served_while_it_is_down() {
    let (mut a, b) = two_servers().await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (_, bob_token, _) = b.register("bob", "password-b").await;
    let text = b"notes written on A\n".repeat(100);
    let text_id = upload_media(&a, &alice_token, text.clone(), "text/plain", "notes from A.txt").await;
    let image = png(1000, 500);
    let image_id = upload_media(&a, &alice_token, image.clone(), "image/png", "photo.png").await;

    // Bob's client asks B for A's media: same bytes, type and name.
    let text_path = format!("/_matrix/client/v1/media/download/conduit-a.test/{text_id}");
    let (status, content_type, disposition, bytes) = get_media(&b, &text_path, Some(&bob_token)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(bytes, text);
    assert_eq!(content_type, "text/plain");
    assert!(disposition.contains("filename=\"notes from A.txt\""), "{disposition}");

    // Three clients at once: one fetch from A.
    let image_path = format!("/_matrix/client/v1/media/download/conduit-a.test/{image_id}");
    let mark = b.log_mark();
    let (first, second, third) = tokio::join!(
        get_media(&b, &image_path, Some(&bob_token)),
        get_media(&b, &image_path, Some(&bob_token)),
        get_media(&b, &image_path, Some(&bob_token)),
    );
    for (status, content_type, disposition, bytes) in [first, second, third] {
        assert_eq!((status, content_type.as_str()), (200, "image/png"));
        assert!(disposition.contains("photo.png"), "{disposition}");
        assert!(bytes == image, "the image arrives whole");
    }
    // The log is read by another thread: wait for the line, then count.
    b.wait_for_log(mark, &["remote media fetched", &image_id]).await;
    let fetches = b
        .log_lines_with("remote media fetched")
        .into_iter()
        .filter(|line| line.contains(&image_id))
        .count();
    assert_eq!(fetches, 1, "the image is fetched from A once");

    // A thumbnail of A's image, made by B.
    let thumbnail = |size: u32| {
        format!("/_matrix/client/v1/media/thumbnail/conduit-a.test/{image_id}?width={size}&height={size}&method=crop")
    };
    let (status, content_type, _, bytes) = get_media(&b, &thumbnail(96), Some(&bob_token)).await;
    assert_eq!((status, content_type.as_str()), (200, "image/png"));
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (96, 96));

    // An ID A does not know: A's 404, passed on, with no fallback to the
    // unauthenticated endpoint (A knows the authenticated one).
    let unknown = "/_matrix/client/v1/media/download/conduit-a.test/NoSuchMedia";
    let mark = b.log_mark();
    let (status, _, _, body) = get_media(&b, unknown, Some(&bob_token)).await;
    assert_eq!((status, as_json(&body)["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    b.wait_for_log(mark, &["fetching remote media failed", "NoSuchMedia", "M_NOT_FOUND"])
        .await;
    assert!(b.log_lines_with("falling back").is_empty());
    // Without a token, nothing is fetched for anyone.
    let (status, _, _, _) = get_media(&b, &text_path, None).await;
    assert_eq!(status, 401);

    // A's federation endpoints want a server's signature.
    for path in [
        format!("/_matrix/federation/v1/media/download/{text_id}"),
        format!("/_matrix/federation/v1/media/thumbnail/{image_id}?width=32&height=32"),
    ] {
        let (status, _, _, body) = get_media(&a, &path, None).await;
        assert_eq!(
            (status, as_json(&body)["errcode"].as_str()),
            (401, Some("M_UNAUTHORIZED")),
            "{path}"
        );
    }

    // A goes down: B still has what it fetched, and makes new thumbnails
    // from it; what it never fetched is a gateway failure.
    assert!(a.stop().success());
    let (status, content_type, _, bytes) = get_media(&b, &text_path, Some(&bob_token)).await;
    assert_eq!((status, content_type.as_str(), bytes), (200, "text/plain", text));
    let (status, _, _, bytes) = get_media(&b, &thumbnail(32), Some(&bob_token)).await;
    assert_eq!(status, 200);
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (32, 32));
    let never_fetched = "/_matrix/client/v1/media/download/conduit-a.test/NeverFetched";
    let (status, _, _, body) = get_media(&b, never_fetched, Some(&bob_token)).await;
    assert_eq!(status, 502, "{}", as_json(&body));
}

#[tokio::test]
async fn remote_media_over_the_size_limit_is_refused_as_synapse_does() {
    let (a, b) = two_servers_with("", "max_request_size = 4096").await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (_, bob_token, _) = b.register("bob", "password-b").await;
    let small = upload_media(&a, &alice_token, vec![7; 4000], "application/octet-stream", "small.bin").await;
    let large = upload_media(&a, &alice_token, vec![7; 5000], "application/octet-stream", "large.bin").await;
    let path = |id: &str| format!("/_matrix/client/v1/media/download/conduit-a.test/{id}");
    let (status, _, _, bytes) = get_media(&b, &path(&small), Some(&bob_token)).await;
    assert_eq!((status, bytes.len()), (200, 4000));
    let (status, _, _, body) = get_media(&b, &path(&large), Some(&bob_token)).await;
    assert_eq!(
        (status, as_json(&body)["errcode"].as_str()),
        (502, Some("M_TOO_LARGE")),
        "{}",
        as_json(&body)
    );
}
/// Sets a room's join rule from `token`'s user.
async fn set_join_rules(server: &TestServer, token: &str, room_id: &str, content: Value) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.join_rules/",
        common::enc(room_id)
    );
    let (status, body) = server.call("PUT", &path, Some(token), Some(content)).await;
    assert_eq!(status, 200, "join rules: {body}");
}

/// The room's members as `user_id → membership content`, as `token`'s
/// user sees them.
async fn member_contents(server: &TestServer, token: &str, room_id: &str) -> serde_json::Map<String, Value> {
    let path = format!("/_matrix/client/v3/rooms/{}/members", common::enc(room_id));
    let (status, members) = server.call("GET", &path, Some(token), None).await;
    assert_eq!(status, 200, "{members}");
    members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["state_key"].as_str().unwrap().to_owned(), e["content"].clone()))
        .collect()
}

async fn knock(server: &TestServer, token: &str, room_id: &str, via: &str, reason: &str) -> (u16, Value) {
    let path = format!("/_matrix/client/v3/knock/{}?via={via}", common::enc(room_id));
    server
        .call("POST", &path, Some(token), Some(json!({"reason": reason})))
        .await
}

#[tokio::test]
async fn a_knock_from_another_server_is_seen_answered_with_an_invite_or_withdrawn() {
    let (a, b) = two_servers().await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    let (bob, bob_token, _) = b.register("bob", "password-b").await;
    let (carol, carol_token, _) = b.register("carol", "password-c").await;
    let room = a
        .create_room(&alice_token, json!({"preset": "private_chat", "room_version": "11"}))
        .await;
    set_join_rules(&a, &alice_token, &room, json!({"join_rule": "knock"})).await;

    // Bob cannot walk in, but may knock; his sync shows the knock with
    // what A showed of the room.
    let path = format!("/_matrix/client/v3/join/{}", common::enc(&room));
    let refused = b.call("POST", &path, Some(&bob_token), Some(json!({}))).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    let (status, knocked) = knock(&b, &bob_token, &room, "conduit-a.test", "let me in").await;
    assert_eq!(status, 200, "{knocked}");
    assert_eq!(knocked["room_id"], room.as_str());
    let sync = b.sync(&bob_token, None, 0, None).await;
    let knock_state = sync["rooms"]["knock"][&room]["knock_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no knock in bob's sync: {sync}"))
        .clone();
    assert!(
        knock_state
            .iter()
            .any(|e| e["type"] == "m.room.join_rules" && e["content"]["join_rule"] == "knock"),
        "{knock_state:?}"
    );
    assert!(
        knock_state.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.as_str()
            && e["content"]["membership"] == "knock"),
        "{knock_state:?}"
    );

    // Alice sees it in the member list, with its reason.
    let members = member_contents(&a, &alice_token, &room).await;
    assert_eq!(members[&bob]["membership"], "knock", "{members:?}");
    assert_eq!(members[&bob]["reason"], "let me in");

    // Carol knocks and thinks better of it: A sees her leave, her sync
    // no longer shows the knock.
    let (status, body) = knock(&b, &carol_token, &room, "conduit-a.test", "hello?").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        member_contents(&a, &alice_token, &room).await[&carol]["membership"],
        "knock"
    );
    let path = format!("/_matrix/client/v3/rooms/{}/leave", common::enc(&room));
    let (status, body) = b.call("POST", &path, Some(&carol_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        member_contents(&a, &alice_token, &room).await[&carol]["membership"],
        "leave"
    );
    let sync = b.sync(&carol_token, None, 0, None).await;
    assert!(sync["rooms"]["knock"].get(&room).is_none(), "withdrawn: {sync}");

    // Alice lets Bob in: he accepts the invite and they talk.
    a.invite(&alice_token, &room, &bob).await;
    wait_for_invite(&b, &bob_token, &room).await;
    let (status, joined) = b
        .call(
            "POST",
            &path.replace("/leave", "/join"),
            Some(&bob_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{joined}");
    b.send_text(&bob_token, &room, "thanks for letting me in").await;
    wait_for_messages(&a, &alice_token, &room, &["thanks for letting me in"]).await;
    a.send_text(&alice_token, &room, "welcome").await;
    wait_for_messages(&b, &bob_token, &room, &["thanks for letting me in", "welcome"]).await;
    let sync = b.sync(&bob_token, None, 0, None).await;
    assert!(sync["rooms"]["join"][&room].is_object(), "{sync}");
    assert!(sync["rooms"]["knock"].get(&room).is_none(), "{sync}");
}

#[tokio::test]
async fn members_of_an_allowed_room_join_a_restricted_room_of_another_server_without_invite() {
    let (a, b) = two_servers().await;
    let (alice, alice_token, _) = a.register("alice", "password-a").await;
    let (bob, bob_token, _) = b.register("bob", "password-b").await;
    let (_, carol_token, _) = b.register("carol", "password-c").await;
    let space = a
        .create_room(
            &alice_token,
            json!({"preset": "public_chat", "creation_content": {"type": "m.space"}}),
        )
        .await;
    let restricted = a
        .create_room(&alice_token, json!({"preset": "private_chat", "room_version": "10"}))
        .await;
    set_join_rules(
        &a,
        &alice_token,
        &restricted,
        json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}),
    )
    .await;
    let path = format!("/_matrix/client/v3/join/{}", common::enc(&restricted));

    // Carol is in no allowed room: A refuses her.
    let refused = b.call("POST", &path, Some(&carol_token), Some(json!({}))).await;
    assert_error(&refused, 403, "M_FORBIDDEN");

    // Bob joins the space, then the room: Alice of A admits him.
    b.join(&bob_token, &space).await;
    let (status, joined) = b.call("POST", &path, Some(&bob_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{joined}");
    let members = member_contents(&a, &alice_token, &restricted).await;
    assert_eq!(members[&bob]["membership"], "join", "{members:?}");
    assert_eq!(members[&bob]["join_authorised_via_users_server"], alice.as_str());
    b.send_text(&bob_token, &restricted, "in through the space").await;
    wait_for_messages(&a, &alice_token, &restricted, &["in through the space"]).await;
    a.send_text(&alice_token, &restricted, "hi bob").await;
    wait_for_messages(&b, &bob_token, &restricted, &["in through the space", "hi bob"]).await;

    // A room restricted to a room A is not in: A cannot vouch for anyone,
    // and Bob's client hears a refusal.
    let elsewhere = a
        .create_room(&alice_token, json!({"preset": "private_chat", "room_version": "10"}))
        .await;
    set_join_rules(
        &a,
        &alice_token,
        &elsewhere,
        json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!nowhere:conduit-c.test"}]}),
    )
    .await;
    let path = format!("/_matrix/client/v3/join/{}", common::enc(&elsewhere));
    let refused = b.call("POST", &path, Some(&bob_token), Some(json!({}))).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert!(
        refused.1["error"]
            .as_str()
            .unwrap()
            .contains("M_UNABLE_TO_AUTHORISE_JOIN"),
        "{}",
        refused.1
    );
}

#[tokio::test]
async fn presence_set_on_one_server_is_seen_by_room_mates_on_the_other() {
    let p = alice_and_bob_across_servers().await;
    let (_, carol_token, _) = p.b.register("carol", "password-c").await;
    let status_path = |user: &str| format!("/_matrix/client/v3/presence/{}/status", common::enc(user));
    let (status, body) =
        p.a.call(
            "PUT",
            &status_path(&p.alice),
            Some(&p.alice_token),
            Some(json!({"presence": "unavailable", "status_msg": "on a train"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Bob's sync on B shows it.
    let mut seen = Value::Null;
    for _ in 0..100 {
        let sync = p.b.sync(&p.bob_token, None, 0, None).await;
        if let Some(event) = sync["presence"]["events"]
            .as_array()
            .and_then(|events| events.iter().find(|e| e["sender"] == p.alice.as_str()))
        {
            seen = event["content"].clone();
            if seen["presence"] == "unavailable" {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(seen["presence"], "unavailable", "alice's presence on B: {seen}");
    assert_eq!(seen["status_msg"], "on a train");

    // And so does a direct read; Carol, who shares no room, is refused.
    let (status, got) = p.b.call("GET", &status_path(&p.alice), Some(&p.bob_token), None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["presence"], "unavailable");
    assert_eq!(got["status_msg"], "on a train");
    assert!(got["last_active_ago"].as_u64().is_some(), "{got}");
    let refused = p.b.call("GET", &status_path(&p.alice), Some(&carol_token), None).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn purge_media_cache_forgets_remote_media_and_keeps_local_media() {
    let (a, b) = two_servers().await;
    let (_, alice_token, _) = a.register("alice", "password-a").await;
    // Bob is B's first account: its admin.
    let (_, bob_token, _) = b.register("bob", "password-b").await;
    let remote_id = upload_media(&a, &alice_token, b"from A".to_vec(), "text/plain", "a.txt").await;
    let local_id = upload_media(&b, &bob_token, b"from B".to_vec(), "text/plain", "b.txt").await;
    let remote_path = format!("/_matrix/client/v1/media/download/conduit-a.test/{remote_id}");
    let (status, _, _, bytes) = get_media(&b, &remote_path, Some(&bob_token)).await;
    assert_eq!((status, bytes.as_slice()), (200, b"from A".as_slice()));

    let purge = |before_ts: u64| format!("/_synapse/admin/v1/purge_media_cache?before_ts={before_ts}");
    // Fetched after this time: kept.
    let (status, purged) = b.call("POST", &purge(1), Some(&bob_token), None).await;
    assert_eq!((status, purged), (200, json!({"deleted": 0})));
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    let (status, purged) = b.call("POST", &purge(later), Some(&bob_token), None).await;
    assert_eq!((status, purged), (200, json!({"deleted": 1})));
    let local_path = format!("/_matrix/client/v1/media/download/conduit-b.test/{local_id}");
    assert_eq!(get_media(&b, &local_path, Some(&bob_token)).await.0, 200);

    // Asked for again, B fetches it from A anew.
    let mark = b.log_mark();
    let (status, _, _, bytes) = get_media(&b, &remote_path, Some(&bob_token)).await;
    assert_eq!((status, bytes.as_slice()), (200, b"from A".as_slice()));
    b.wait_for_log(mark, &["remote media fetched", &remote_id]).await;
}
