//! A fuzz-style loop over real HTTP: valid request bodies for two dozen
//! endpoints, mutated a few thousand times (fields dropped, replaced by
//! values of other types, deep nesting, bytes cut or broken), bounded in
//! count and time. A client's mistake must never be a 5xx, and the server
//! must never log a panic.
//!
//! The mutations come from a fixed seed, so a failure repeats; set
//! `FUZZ_SEED` to try others.

mod common;

use std::time::{Duration, Instant};

use common::{enc, TestServer};
use serde_json::{json, Value};

/// Mutations sent at most, and the time they may take.
const MUTATIONS: usize = 3000;
const TIME_BUDGET: Duration = Duration::from_secs(120);
/// Requests in flight at once.
const PARALLEL: usize = 8;

/// xorshift64*: small, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values that break assumptions: other types, edges of number ranges,
/// identifiers of every sigil, long and strange strings, deep nesting.
fn odd_value(rng: &mut Rng) -> Value {
    let deep = |levels: usize| (0..levels).fold(json!(1), |v, _| json!({ "a": v }));
    match rng.below(22) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(i64::MIN),
        5 => json!(u64::MAX),
        6 => json!(1.5e300),
        7 => json!(""),
        8 => json!("x".repeat(70_000)),
        9 => json!("\u{0}\u{202e}\u{fffd}"),
        10 => json!("@nobody:localhost"),
        11 => json!("!nowhere:localhost"),
        12 => json!("#nothing:localhost"),
        13 => json!("$noevent"),
        14 => json!("mxc://localhost/none"),
        15 => json!([]),
        16 => json!({}),
        17 => json!([1, "two", null, {"x": []}]),
        18 => deep(60),
        19 => json!({"m.relates_to": {"rel_type": "m.thread", "event_id": "$x"}}),
        20 => json!(["m.login.password", {"type": 7}]),
        _ => json!("🙂".repeat(300)),
    }
}

/// One structural mutation somewhere in `value`.
fn mutate_value(value: &mut Value, rng: &mut Rng, depth: usize) {
    // Go deeper into a random child now and then.
    if depth < 6 && rng.below(3) > 0 {
        match value {
            Value::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(rng.below(map.len())).cloned().unwrap();
                return mutate_value(map.get_mut(&key).unwrap(), rng, depth + 1);
            }
            Value::Array(items) if !items.is_empty() => {
                let i = rng.below(items.len());
                return mutate_value(&mut items[i], rng, depth + 1);
            }
            _ => {}
        }
    }
    match (rng.below(5), value) {
        (0, Value::Object(map)) if !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).cloned().unwrap();
            map.remove(&key);
        }
        (1, Value::Object(map)) => {
            let key = rng
                .pick(&["type", "content", "user_id", "body", "auth", "", "m.relates_to", "x"])
                .to_string();
            map.insert(key, odd_value(rng));
        }
        (2, v) => *v = json!([v.take()]),
        (_, v) => *v = odd_value(rng),
    }
}

/// One byte-level mutation of a serialized body.
fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut Rng) {
    match rng.below(5) {
        0 => bytes.truncate(rng.below(bytes.len())),
        1 => {
            let at = rng.below(bytes.len() + 1);
            bytes.insert(at, *rng.pick(&[0xFF, 0xC3, 0x00, b'{', b']', b'"', b'\\', b',']));
        }
        2 => {
            if !bytes.is_empty() {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        3 => bytes.clear(),
        _ => {
            // A key written twice.
            if let Some(at) = bytes.iter().position(|b| *b == b'{') {
                bytes.splice(at + 1..at + 1, br#""type": 1, "type": "x", "#.iter().copied());
            }
        }
    }
}

struct Endpoint {
    method: &'static str,
    /// `{txn}` becomes a fresh transaction ID each time.
    path: String,
    body: Value,
}

#[tokio::test]
async fn mutated_bodies_never_get_a_server_error() {
    let server = TestServer::start_with("sync_writes = false").await;
    let (alice_id, alice, device) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    server.join(&bob, &room).await;
    let event = server.send_text(&alice, &room, "a message").await;
    let (r, a, e) = (enc(&room), enc(&alice_id), enc(&event));
    let ep = |method, path: String, body| Endpoint { method, path, body };
    let endpoints = vec![
        ep(
            "POST",
            "/_matrix/client/v3/createRoom".into(),
            json!({"name": "n", "topic": "t", "preset": "private_chat", "invite": [bob_id], "initial_state": [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}], "creation_content": {"m.federate": true}, "power_level_content_override": {"users_default": 0}}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/{{txn}}"),
            json!({"msgtype": "m.text", "body": "hi", "format": "org.matrix.custom.html", "formatted_body": "<b>hi</b>", "m.mentions": {"user_ids": [bob_id]}}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/rooms/{r}/send/m.reaction/{{txn}}"),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event, "key": "👍"}}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/"),
            json!({"topic": "a topic", "m.topic": [{"body": "a topic", "mimetype": "text/plain"}]}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/rooms/{r}/state/m.fuzz/key"),
            json!({"anything": [1, 2, {"three": 3}]}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/rooms/{r}/redact/{e}/{{txn}}"),
            json!({"reason": "because"}),
        ),
        ep(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.room_key_request/{txn}".into(),
            json!({"messages": {alice_id.clone(): {device.clone(): {"action": "request", "body": {"room_id": room}}}}}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/keys/upload".into(),
            json!({"one_time_keys": {"signed_curve25519:AAAAHQ": {"key": "j3fR3HemM16M7CWhoI4Sk5ZsdmdfQHsKL1xuSft6MSw", "signatures": {alice_id.clone(): {format!("ed25519:{device}"): "sig"}}}}}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/keys/query".into(),
            json!({"device_keys": {alice_id.clone(): [], bob_id.clone(): [device.clone()]}, "timeout": 10}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/keys/claim".into(),
            json!({"one_time_keys": {alice_id.clone(): {device.clone(): "signed_curve25519"}}}),
        ),
        ep(
            "POST",
            format!("/_matrix/client/v3/user/{a}/filter"),
            json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}, "state": {"lazy_load_members": true}}, "event_fields": ["content.body"], "presence": {"not_types": ["*"]}}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/profile/{a}/displayname"),
            json!({"displayname": "Alice"}),
        ),
        ep(
            "PUT",
            "/_matrix/client/v3/pushrules/global/override/fuzz.rule".into(),
            json!({"actions": ["notify", {"set_tweak": "highlight"}], "conditions": [{"kind": "event_match", "key": "content.body", "pattern": "x*"}]}),
        ),
        ep(
            "PUT",
            "/_matrix/client/v3/pushrules/global/content/fuzz.content".into(),
            json!({"actions": ["dont_notify"], "pattern": "word"}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/user/{a}/account_data/org.example.fuzz"),
            json!({"setting": {"on": true, "list": [1, 2]}}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/user/{a}/rooms/{r}/account_data/m.tag"),
            json!({"tags": {"u.work": {"order": 0.5}}}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/user/{a}/rooms/{r}/tags/u.fuzz"),
            json!({"order": 0.25}),
        ),
        ep(
            "POST",
            format!("/_matrix/client/v3/rooms/{r}/receipt/m.read/{e}"),
            json!({"thread_id": "main"}),
        ),
        ep(
            "POST",
            format!("/_matrix/client/v3/rooms/{r}/read_markers"),
            json!({"m.fully_read": event, "m.read": event}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/rooms/{r}/typing/{a}"),
            json!({"typing": true, "timeout": 30000}),
        ),
        ep(
            "PUT",
            format!("/_matrix/client/v3/presence/{a}/status"),
            json!({"presence": "online", "status_msg": "here"}),
        ),
        ep(
            "PUT",
            "/_matrix/client/v3/directory/room/{txn}".into(),
            json!({"room_id": room}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/publicRooms".into(),
            json!({"limit": 5, "filter": {"generic_search_term": "x", "room_types": [null, "m.space"]}}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/user_directory/search".into(),
            json!({"search_term": "bob", "limit": 3}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/search".into(),
            json!({"search_categories": {"room_events": {"search_term": "message", "keys": ["content.body"], "order_by": "rank", "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true}, "groupings": {"group_by": [{"key": "room_id"}]}}}}),
        ),
        ep(
            "POST",
            format!("/_matrix/client/v3/rooms/{r}/report/{e}"),
            json!({"reason": "spam", "score": -100}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/room_keys/version".into(),
            json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc", "signatures": {}}}),
        ),
        ep(
            "POST",
            format!("/_matrix/client/v3/rooms/{r}/invite"),
            json!({"user_id": bob_id, "reason": "come"}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/login".into(),
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong", "initial_device_display_name": "fuzz"}),
        ),
        ep(
            "POST",
            "/_matrix/client/v3/register".into(),
            json!({"username": "fuzzer", "password": "pw", "auth": {"type": "m.login.dummy"}, "inhibit_login": true}),
        ),
    ];

    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0DE_u64);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    while sent < MUTATIONS && started.elapsed() < TIME_BUDGET {
        let mut batch = Vec::new();
        for _ in 0..PARALLEL {
            let endpoint = rng.pick(&endpoints);
            let txn = format!("fz{sent}x{}", batch.len());
            // A fresh alias for the directory, a fresh transaction elsewhere.
            let fill = if endpoint.path.contains("/directory/room/") {
                enc(&format!("#{txn}:localhost"))
            } else {
                txn.clone()
            };
            let path = endpoint.path.replace("{txn}", &fill);
            let mut body = endpoint.body.clone();
            if let Some(name) = body.get_mut("username") {
                *name = json!(format!("fuzzer{txn}"));
            }
            let bytes = if rng.below(4) == 0 {
                let mut bytes = serde_json::to_vec(&body).unwrap();
                mutate_bytes(&mut bytes, &mut rng);
                bytes
            } else {
                for _ in 0..=rng.below(3) {
                    mutate_value(&mut body, &mut rng, 0);
                }
                serde_json::to_vec(&body).unwrap()
            };
            // Mostly alice; now and then no token or bob's.
            let token = match rng.below(10) {
                0 => None,
                1 => Some(bob.clone()),
                _ => Some(alice.clone()),
            };
            batch.push((endpoint.method, path, bytes, token));
        }
        let server = &server;
        let calls = batch.iter().map(|(method, path, bytes, token)| async move {
            let got = server.call_raw(method, path, token.as_deref(), bytes.clone()).await;
            (got, method, path, bytes)
        });
        for ((status, answer), method, path, bytes) in futures_util::future::join_all(calls).await {
            sent += 1;
            *statuses.entry(status).or_default() += 1;
            if status >= 500 {
                let shown: String = String::from_utf8_lossy(bytes).chars().take(300).collect();
                failures.push(format!("{status} {method} {path}\n  body: {shown}\n  answer: {answer}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {sent} got a 5xx:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let panics = server.log_lines_with("panic");
    assert!(
        panics.is_empty(),
        "seed {seed}: the server panicked:\n{}",
        panics.join("\n")
    );
    assert!(sent >= 500, "only {sent} mutations within {TIME_BUDGET:?}");
    eprintln!(
        "{sent} mutated requests in {:?}, none a server error; statuses {statuses:?}",
        started.elapsed()
    );
    // Most mutations must reach an endpoint's own checks, not all stop at
    // the token or the JSON syntax: some are accepted.
    assert!(statuses.get(&200).is_some_and(|n| *n >= sent / 20), "{statuses:?}");
    // The server still serves.
    assert_eq!(server.whoami(&alice).await.0, 200);
}
