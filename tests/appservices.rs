//! Application services against the real binary: a small appservice runs
//! in the test (a loopback HTTP listener) and records what Conduit sends
//! it; it creates users and rooms when Conduit asks about them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const AS_TOKEN: &str = "as_secret_token";
const HS_TOKEN: &str = "hs_secret_token";
/// The tokens of a second appservice (a second bridge of the same
/// protocol), played by a second fake.
const AS_TOKEN_2: &str = "as_second_token";
const HS_TOKEN_2: &str = "hs_second_token";

/// What the appservice has been sent.
#[derive(Default)]
struct Seen {
    /// `(txnId, body)` of each transaction, as it arrived.
    transactions: Vec<(String, Value)>,
    user_queries: Vec<String>,
    alias_queries: Vec<String>,
    pings: Vec<Value>,
    /// Third-party lookups, path and query as they came.
    thirdparty: Vec<String>,
    /// Requests without our `hs_token`.
    unauthorized: usize,
}

struct FakeAppservice {
    port: u16,
    /// The token Conduit must send it.
    hs_token: &'static str,
    /// The homeserver's base URL, for creating what is asked about.
    homeserver: Arc<Mutex<String>>,
    seen: Arc<Mutex<Seen>>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl FakeAppservice {
    async fn start() -> Self {
        Self::start_with_token(HS_TOKEN).await
    }

    async fn start_with_token(hs_token: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut fake = FakeAppservice {
            port,
            hs_token,
            homeserver: Arc::default(),
            seen: Arc::default(),
            listener: None,
        };
        fake.serve(listener);
        fake
    }

    fn serve(&mut self, listener: TcpListener) {
        let (seen, homeserver, hs_token) = (self.seen.clone(), self.homeserver.clone(), self.hs_token);
        self.listener = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, seen.clone(), homeserver.clone(), hs_token));
            }
        }));
    }

    /// Stops listening: connections are refused.
    async fn stop(&mut self) {
        let task = self.listener.take().unwrap();
        task.abort();
        let _ = task.await;
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bodies of the `m.room.message` events received, in order.
    fn messages(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.transactions
            .iter()
            .flat_map(|(_, body)| body["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The entries of each transaction's `field` array, in order.
    fn items(&self, field: &str) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.transactions
            .iter()
            .flat_map(|(_, body)| body[field].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The ephemeral events of type `kind` received, in order; each
    /// transaction carried them under the MSC2409 name too.
    fn ephemeral(&self, kind: &str) -> Vec<Value> {
        let stable = self.items("ephemeral");
        assert_eq!(stable, self.items("de.sorunome.msc2409.ephemeral"));
        stable.into_iter().filter(|e| e["type"] == kind).collect()
    }

    /// Waits (at most 20 s) until `done` holds of what was seen.
    async fn wait_until(&self, what: &str, done: impl Fn(&FakeAppservice) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < deadline, "appservice: no {what} within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Answers one HTTP request (and closes the connection).
async fn answer(mut stream: TcpStream, seen: Arc<Mutex<Seen>>, homeserver: Arc<Mutex<String>>, hs_token: &str) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let header_end = loop {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..header_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while data.len() < header_end + length {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body: Value = serde_json::from_slice(&data[header_end..]).unwrap_or(Value::Null);
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (
        request_line.next().unwrap_or_default(),
        request_line.next().unwrap_or_default(),
    );
    let authorized = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {hs_token}")));
    let decoded = |s: &str| percent_decode(s);
    let (status, reply) = if !authorized {
        seen.lock().unwrap().unauthorized += 1;
        (403, json!({"errcode": "M_FORBIDDEN"}))
    } else if let Some(txn) = path.strip_prefix("/_matrix/app/v1/transactions/") {
        assert_eq!(method, "PUT");
        seen.lock().unwrap().transactions.push((decoded(txn), body));
        (200, json!({}))
    } else if let Some(user) = path.strip_prefix("/_matrix/app/v1/users/") {
        let user = decoded(user);
        seen.lock().unwrap().user_queries.push(user.clone());
        let base = homeserver.lock().unwrap().clone();
        let localpart = user.trim_start_matches('@').split(':').next().unwrap_or_default();
        if localpart.starts_with("bridge_") {
            let (status, _) = as_call(
                &base,
                "POST",
                "/_matrix/client/v3/register",
                None,
                Some(json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true})),
            )
            .await;
            assert_eq!(status, 200);
            (200, json!({}))
        } else {
            (404, json!({"errcode": "M_NOT_FOUND"}))
        }
    } else if let Some(alias) = path.strip_prefix("/_matrix/app/v1/rooms/") {
        let alias = decoded(alias);
        seen.lock().unwrap().alias_queries.push(alias.clone());
        let base = homeserver.lock().unwrap().clone();
        let name = alias
            .trim_start_matches('#')
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let (status, created) = as_call(
            &base,
            "POST",
            "/_matrix/client/v3/createRoom",
            None,
            Some(json!({"room_alias_name": name, "preset": "public_chat"})),
        )
        .await;
        assert_eq!(status, 200, "{created}");
        (200, json!({}))
    } else if path == "/_matrix/app/v1/ping" {
        seen.lock().unwrap().pings.push(body);
        (200, json!({}))
    } else if let Some(lookup) = path.strip_prefix("/_matrix/app/v1/thirdparty/") {
        seen.lock().unwrap().thirdparty.push(decoded(lookup));
        thirdparty_answer(&decoded(lookup))
    } else {
        (404, json!({"errcode": "M_UNRECOGNIZED"}))
    };
    let text = reply.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The fake bridge speaks `irc` on one network (`libera`): it knows the
/// user `alice` there and the channel `#chat`, and sends one malformed
/// location beside the good one.
fn thirdparty_answer(lookup: &str) -> (u16, Value) {
    let (path, query) = lookup.split_once('?').unwrap_or((lookup, ""));
    match path {
        "protocol/irc" => (
            200,
            json!({
                "user_fields": ["nick"],
                "location_fields": ["channel"],
                "icon": "mxc://example.org/irc",
                "field_types": {
                    "nick": {"regexp": "[^\\s]+", "placeholder": "alice"},
                    "channel": {"regexp": "#[^\\s]+", "placeholder": "#chat"}
                },
                "instances": [{"desc": "Libera", "fields": {"network": "libera"}, "network_id": "libera"}]
            }),
        ),
        "user/irc" if query == "nick=alice" => (
            200,
            json!([{"userid": "@bridge_alice:localhost", "protocol": "irc", "fields": {"nick": "alice"}}]),
        ),
        "location/irc" if query == "channel=#chat" => (
            200,
            json!([
                {"alias": "#bridge_chat:localhost", "protocol": "irc", "fields": {"channel": "#chat"}},
                {"alias": "not an alias"}
            ]),
        ),
        "location" if query == "alias=#bridge_chat:localhost" => (
            200,
            json!([{"alias": "#bridge_chat:localhost", "protocol": "irc", "fields": {"channel": "#chat"}}]),
        ),
        "user" if query == "userid=@bridge_alice:localhost" => (
            200,
            json!([{"userid": "@bridge_alice:localhost", "protocol": "irc", "fields": {"nick": "alice"}}]),
        ),
        _ => (404, json!({"errcode": "M_NOT_FOUND"})),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request with the appservice's token.
async fn as_call(base: &str, method: &str, path: &str, query: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let url = match query {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    };
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url).bearer_auth(AS_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `whoami` as the appservice, with `query` (who it acts as).
async fn whoami_as(base: &str, query: &str) -> (u16, Value) {
    as_call(base, "GET", "/_matrix/client/v3/account/whoami", Some(query), None).await
}

/// The registration, as a bridge writes it: users `@bridge_*`
/// (exclusive), aliases `#bridge_*` (exclusive).
fn registration(url: &str) -> String {
    registration_of("testbridge", url, (AS_TOKEN, HS_TOKEN), "bridge", "")
}

/// A registration with users `@{prefix}_*` and aliases `#{prefix}_*`
/// (exclusive), its own user `{prefix}bot`, and `extra` lines.
fn registration_of(id: &str, url: &str, (as_token, hs_token): (&str, &str), prefix: &str, extra: &str) -> String {
    format!(
        "id: {id}\nurl: {url}\nas_token: {as_token}\nhs_token: {hs_token}\nsender_localpart: {prefix}bot\n\
         rate_limited: false\nnamespaces:\n  users:\n  - regex: '@{prefix}_.*'\n    exclusive: true\n\
         \x20 aliases:\n  - regex: '#{prefix}_.*'\n    exclusive: true\n  rooms: []\n{extra}"
    )
}

/// A server with the fake appservice registered through the config.
async fn server_and_appservice() -> (TestServer, FakeAppservice) {
    server_and_appservice_with("").await
}

/// As [`server_and_appservice`], with `extra` lines in the registration.
async fn server_and_appservice_with(extra: &str) -> (TestServer, FakeAppservice) {
    let fake = FakeAppservice::start().await;
    let server = server_with_registrations(&[registration(&fake.url()) + extra]).await;
    *fake.homeserver.lock().unwrap() = server.base.clone();
    (server, fake)
}

/// A server with each registration in a file of its config.
async fn server_with_registrations(registrations: &[String]) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, text) in registrations.iter().enumerate() {
        let file = dir.path().join(format!("appservice{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        files.push(file.display().to_string());
    }
    TestServer::start_in(dir, &format!("app_service_config_files = {files:?}")).await
}

#[tokio::test]
async fn events_reach_the_appservice_once_and_in_order_even_across_its_outage_and_a_restart() {
    let (mut server, mut fake) = server_and_appservice().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    // A puppet of the bridge joins: from then on the room's events concern it.
    let (status, body) = as_call(
        &server.base,
        "POST",
        "/_matrix/client/v3/register",
        None,
        Some(json!({"type": "m.login.application_service", "username": "bridge_carol"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = as_call(
        &server.base,
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some("user_id=%40bridge_carol%3Alocalhost"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for i in 0..3 {
        server.send_text(&alice, &room, &format!("up {i}")).await;
    }
    fake.wait_until("first messages", |f| f.messages().len() == 3).await;
    assert_eq!(fake.messages(), ["up 0", "up 1", "up 2"]);

    // Down: messages wait in the outbox.
    fake.stop().await;
    for i in 0..3 {
        server.send_text(&alice, &room, &format!("down {i}")).await;
    }
    let mark = server.log_mark();
    server.wait_for_log(mark, &["delivery failed", "testbridge"]).await;
    // Conduit restarts while it is still down: nothing is lost.
    server.restart();
    server.send_text(&alice, &room, "after restart").await;
    fake.restart().await;
    // The bridge talks to us once it is up, which retries at once.
    let (status, body) = as_call(&server.base, "GET", "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@bridgebot:localhost");
    fake.wait_until("the queued messages", |f| f.messages().len() == 7)
        .await;
    assert_eq!(
        fake.messages(),
        ["up 0", "up 1", "up 2", "down 0", "down 1", "down 2", "after restart"],
        "each once, in order"
    );
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.unauthorized, 0);
    let mut ids: Vec<&String> = seen.transactions.iter().map(|(id, _)| id).collect();
    ids.dedup();
    assert_eq!(ids.len(), seen.transactions.len(), "no transaction sent twice");
}

#[tokio::test]
async fn masquerading_registration_and_login_stay_inside_the_namespace() {
    let (server, _fake) = server_and_appservice().await;
    let base = server.base.as_str();
    // The appservice's own user exists from the start.
    let (status, body) = as_call(base, "GET", "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (200, Some("@bridgebot:localhost")),
        "{body}"
    );

    let register = |name: &str| json!({"type": "m.login.application_service", "username": name});
    let (status, body) = as_call(
        base,
        "POST",
        "/_matrix/client/v3/register",
        None,
        Some(register("bridge_dave")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    let outside = as_call(base, "POST", "/_matrix/client/v3/register", None, Some(register("eve"))).await;
    assert_error(&outside, 400, "M_EXCLUSIVE");
    // Bridges' libraries (mautrix) name the user being registered in
    // `user_id` too, though it does not exist yet.
    let (status, body) = as_call(
        base,
        "POST",
        "/_matrix/client/v3/register",
        Some("user_id=%40bridge_erin%3Alocalhost"),
        Some(register("bridge_erin")),
    )
    .await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (200, Some("@bridge_erin:localhost")),
        "{body}"
    );
    // Anything else as a user that does not exist is refused.
    let unknown = whoami_as(base, "user_id=%40bridge_nobody%3Alocalhost").await;
    assert_error(&unknown, 403, "M_FORBIDDEN");

    // Acting as a user of the namespace, and refused outside it.
    let (status, body) = whoami_as(base, "user_id=%40bridge_dave%3Alocalhost").await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (200, Some("@bridge_dave:localhost")),
        "{body}"
    );
    assert!(body.get("device_id").is_none(), "no device named: {body}");
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let refused = whoami_as(base, "user_id=%40alice%3Alocalhost").await;
    assert_error(&refused, 403, "M_EXCLUSIVE");
    let unknown_device = whoami_as(base, "user_id=%40bridge_dave%3Alocalhost&device_id=NOPE").await;
    assert_error(&unknown_device, 400, "M_UNKNOWN_DEVICE");

    // The puppet sets its name and makes a room as itself.
    let (status, body) = as_call(
        base,
        "PUT",
        "/_matrix/client/v3/profile/%40bridge_dave%3Alocalhost/displayname",
        Some("user_id=%40bridge_dave%3Alocalhost"),
        Some(json!({"displayname": "Dave (IRC)"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = as_call(
        base,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some("user_id=%40bridge_dave%3Alocalhost"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let (status, body) = as_call(
        base,
        "GET",
        &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
        Some("user_id=%40bridge_dave%3Alocalhost"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["joined"]["@bridge_dave:localhost"]["display_name"], "Dave (IRC)");

    // Login with the appservice's token for its user; not for others.
    let login =
        |user: &str| json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": user}});
    let (status, body) = as_call(
        base,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(login("bridge_dave")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let dave_token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(server.whoami(&dave_token).await.1["user_id"], "@bridge_dave:localhost");
    assert_error(
        &as_call(base, "POST", "/_matrix/client/v3/login", None, Some(login("alice"))).await,
        403,
        "M_EXCLUSIVE",
    );
    let by_user = server
        .call(
            "POST",
            "/_matrix/client/v3/login",
            Some(&alice),
            Some(login("bridge_dave")),
        )
        .await;
    assert_error(&by_user, 401, "M_UNKNOWN_TOKEN");

    // People cannot take the namespace's user IDs or aliases.
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "bridge_mallory", "password": "pw-mallory-1"})),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{body}");
    let available = server
        .call(
            "GET",
            "/_matrix/client/v3/register/available?username=bridge_x",
            None,
            None,
        )
        .await;
    assert_error(&available, 400, "M_EXCLUSIVE");
    let alice_room = server.create_room(&alice, json!({})).await;
    let alias = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/directory/room/{}", enc("#bridge_x:localhost")),
            Some(&alice),
            Some(json!({"room_id": alice_room})),
        )
        .await;
    assert_error(&alias, 400, "M_EXCLUSIVE");
    // The appservice's own users may.
    let (status, body) = as_call(
        base,
        "PUT",
        &format!("/_matrix/client/v3/directory/room/{}", enc("#bridge_y:localhost")),
        Some("user_id=%40bridge_dave%3Alocalhost"),
        Some(json!({"room_id": room})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn unknown_users_and_aliases_are_asked_of_the_appservice_which_creates_them() {
    let (server, fake) = server_and_appservice().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;

    // Profile of a puppet that does not exist yet: the bridge makes it.
    let (status, body) = server
        .call(
            "GET",
            "/_matrix/client/v3/profile/%40bridge_frank%3Alocalhost",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.seen.lock().unwrap().user_queries, ["@bridge_frank:localhost"]);
    // An invite to another unknown puppet.
    let room = server.create_room(&alice, json!({})).await;
    server.invite(&alice, &room, "@bridge_gina:localhost").await;
    assert_eq!(fake.seen.lock().unwrap().user_queries.len(), 2);
    // Outside the namespace nobody is asked.
    let _ = server
        .call(
            "GET",
            "/_matrix/client/v3/profile/%40nobody%3Alocalhost",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(fake.seen.lock().unwrap().user_queries.len(), 2);

    // A directory lookup of an alias in the namespace: the bridge makes the room.
    let (status, body) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", enc("#bridge_chat:localhost")),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room_id = body["room_id"].as_str().unwrap().to_owned();
    // Joining another by alias.
    let (status, body) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc("#bridge_other:localhost")),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["room_id"], room_id.as_str());
    assert_eq!(
        fake.seen.lock().unwrap().alias_queries,
        ["#bridge_chat:localhost", "#bridge_other:localhost"]
    );
    let missing = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", enc("#elsewhere:localhost")),
            Some(&alice),
            None,
        )
        .await;
    assert_error(&missing, 404, "M_NOT_FOUND");
    assert_eq!(fake.seen.lock().unwrap().alias_queries.len(), 2);
}

#[tokio::test]
async fn ping_reaches_the_appservice_and_reports_its_failures() {
    let (server, mut fake) = server_and_appservice().await;
    let base = server.base.as_str();
    let (status, body) = as_call(
        base,
        "POST",
        "/_matrix/client/v1/appservice/testbridge/ping",
        None,
        Some(json!({"transaction_id": "p1"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    assert_eq!(fake.seen.lock().unwrap().pings, [json!({"transaction_id": "p1"})]);

    let other = as_call(
        base,
        "POST",
        "/_matrix/client/v1/appservice/otherbridge/ping",
        None,
        Some(json!({})),
    )
    .await;
    assert_error(&other, 403, "M_FORBIDDEN");
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let by_user = server
        .call(
            "POST",
            "/_matrix/client/v1/appservice/testbridge/ping",
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_error(&by_user, 403, "M_FORBIDDEN");

    fake.stop().await;
    let down = as_call(
        base,
        "POST",
        "/_matrix/client/v1/appservice/testbridge/ping",
        None,
        Some(json!({})),
    )
    .await;
    assert_error(&down, 502, "M_CONNECTION_FAILED");
}

#[tokio::test]
async fn the_command_line_registers_lists_and_unregisters_and_refuses_bad_files() {
    let mut server = TestServer::start().await;
    server.stop();
    let dir = server.dir.path().to_owned();
    let config = server.config_path().to_owned();
    let run = |args: &[&str]| common::run_conduit(&config, args);
    let good = dir.join("good.yaml");
    std::fs::write(&good, registration("http://127.0.0.1:9")).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        registration("http://127.0.0.1:9").replace("'@bridge_.*'", "'@bridge_(.*'"),
    )
    .unwrap();

    let (ok, _, err) = run(&["appservice", "register", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("namespaces.users[0].regex"), "{err}");
    let (ok, out, err) = run(&["appservice", "register", good.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("testbridge"), "{out}");
    let (ok, out, _) = run(&["appservice", "list"]);
    assert!(ok && out.contains("testbridge\thttp://127.0.0.1:9"), "{out}");

    // The running server knows it.
    server.start_again();
    let (status, body) = as_call(&server.base, "GET", "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (200, Some("@bridgebot:localhost")),
        "{body}"
    );
    server.stop();

    let (ok, out, _) = run(&["appservice", "unregister", "testbridge"]);
    assert!(ok, "{out}");
    let (ok, _, err) = run(&["appservice", "unregister", "testbridge"]);
    assert!(!ok && err.contains("no appservice testbridge"), "{err}");
    server.start_again();
    let gone = as_call(&server.base, "GET", "/_matrix/client/v3/account/whoami", None, None).await;
    assert_error(&gone, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn a_bad_registration_file_in_the_config_is_refused_and_the_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "id: x\nurl: http://127.0.0.1:9\n").unwrap();
    let server = TestServer::start_in(
        dir,
        &format!("app_service_config_files = [{:?}]", file.display().to_string()),
    )
    .await;
    let lines = server.log_lines_with("appservice registration refused");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("as_token"), "{}", lines[0]);
    assert_eq!(server.call("GET", "/_matrix/client/versions", None, None).await.0, 200);
}

/// Registers `name` in the namespace of the appservice of `as_token`;
/// its access token and device.
async fn puppet(server: &TestServer, as_token: &str, name: &str) -> (String, String) {
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            Some(as_token),
            Some(json!({"type": "m.login.application_service", "username": name})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let field = |key: &str| body[key].as_str().unwrap().to_owned();
    (field("access_token"), field("device_id"))
}

const QUIET_AS_TOKEN: &str = "quiet_as_token";
const QUIET_HS_TOKEN: &str = "quiet_hs_token";

#[tokio::test]
async fn typing_receipts_and_presence_reach_only_the_appservice_that_asked_for_ephemeral_events() {
    let eager = FakeAppservice::start().await;
    let quiet = FakeAppservice::start_with_token(QUIET_HS_TOKEN).await;
    let server = server_with_registrations(&[
        registration_of(
            "testbridge",
            &eager.url(),
            (AS_TOKEN, HS_TOKEN),
            "bridge",
            "receive_ephemeral: true\n",
        ),
        registration_of(
            "quietbridge",
            &quiet.url(),
            (QUIET_AS_TOKEN, QUIET_HS_TOKEN),
            "quiet",
            "",
        ),
    ])
    .await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    // Each bridge has a puppet in the room: both are interested in it.
    for (as_token, name) in [(AS_TOKEN, "bridge_carol"), (QUIET_AS_TOKEN, "quiet_dan")] {
        let (token, _) = puppet(&server, as_token, name).await;
        server.join(&token, &room).await;
    }

    let typing_path = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        enc(&room),
        enc("@alice:localhost")
    );
    let typing = |typing: bool| {
        server.call(
            "PUT",
            &typing_path,
            Some(&alice),
            Some(json!({"typing": typing, "timeout": 30000})),
        )
    };
    assert_eq!(typing(true).await.0, 200);
    // Typing on (a client renews every few seconds) changes nothing.
    assert_eq!(typing(true).await.0, 200);
    let event = server.send_text(&alice, &room, "read me").await;
    let (status, body) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event)),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(typing(false).await.0, 200);
    let (status, body) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/presence/{}/status", enc("@alice:localhost")),
            Some(&alice),
            Some(json!({"presence": "online", "status_msg": "bridging"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Each appservice's queue is delivered in order: once this message is
    // there, so is everything queued before it.
    server.send_text(&alice, &room, "the end").await;
    let ended = |f: &FakeAppservice| f.messages().iter().any(|m| m == "the end");
    eager.wait_until("the last message", ended).await;
    quiet.wait_until("the last message", ended).await;

    let typists: Vec<Value> = eager
        .ephemeral("m.typing")
        .into_iter()
        .filter(|e| e["room_id"] == room.as_str())
        .map(|e| e["content"]["user_ids"].clone())
        .collect();
    assert_eq!(typists, [json!(["@alice:localhost"]), json!([])], "each change once");
    let receipts = eager.ephemeral("m.receipt");
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    assert_eq!(receipts[0]["room_id"], room.as_str());
    let receipt = &receipts[0]["content"][&event]["m.read"]["@alice:localhost"];
    assert!(receipt["ts"].is_u64(), "{receipts:?}");
    let presence: Vec<Value> = eager
        .ephemeral("m.presence")
        .into_iter()
        .filter(|e| e["sender"] == "@alice:localhost")
        .collect();
    assert_eq!(presence.len(), 1, "{presence:?}");
    assert_eq!(presence[0]["content"]["presence"], "online");
    assert_eq!(presence[0]["content"]["status_msg"], "bridging");

    let seen = quiet.seen.lock().unwrap();
    for (_, body) in &seen.transactions {
        for field in ["ephemeral", "de.sorunome.msc2409.ephemeral"] {
            assert!(body.get(field).is_none(), "without receive_ephemeral: {body}");
        }
    }
}

#[tokio::test]
async fn its_users_to_device_messages_device_lists_and_key_counts_reach_an_msc3202_appservice() {
    let fake = FakeAppservice::start().await;
    let server = server_with_registrations(&[registration_of(
        "testbridge",
        &fake.url(),
        (AS_TOKEN, HS_TOKEN),
        "bridge",
        "org.matrix.msc3202: true\n",
    )])
    .await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (erin, device) = puppet(&server, AS_TOKEN, "bridge_erin").await;
    let erin_id = "@bridge_erin:localhost";

    // The bridge's device gets keys, one of which Alice claims.
    let upload = json!({
        "device_keys": {
            "user_id": erin_id,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {format!("curve25519:{device}"): "Y3VydmU", format!("ed25519:{device}"): "ZWQyNTUxOQ"},
        },
        "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "b3Rr"}},
        "fallback_keys": {"signed_curve25519:AAAAAg": {"key": "ZmFsbGJhY2s", "fallback": true}},
    });
    let (status, body) = server
        .call("POST", "/_matrix/client/v3/keys/upload", Some(&erin), Some(upload))
        .await;
    assert_eq!(status, 200, "{body}");
    // The bridge hears of the upload's count before Alice claims: counts
    // that meet in one transaction keep only the newest, and the sender
    // may or may not have sent one in between.
    fake.wait_until("the key count after the upload", |f| {
        f.seen.lock().unwrap().transactions.iter().any(|(_, b)| {
            b["org.matrix.msc3202.device_one_time_keys_count"][erin_id][&device]["signed_curve25519"] == json!(1)
        })
    })
    .await;
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(&alice),
            Some(json!({"one_time_keys": {erin_id: {&device: "signed_curve25519"}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["one_time_keys"][erin_id][&device]["signed_curve25519:AAAAAQ"].is_object(),
        "{body}"
    );
    let (status, body) = server
        .call(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.test/txn1",
            Some(&alice),
            Some(json!({"messages": {erin_id: {&device: {"hello": "erin"}}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Queued in order: the message comes last.
    fake.wait_until("the to-device message", |f| {
        !f.items("de.sorunome.msc2409.to_device").is_empty()
    })
    .await;
    assert_eq!(
        fake.items("de.sorunome.msc2409.to_device"),
        [json!({
            "type": "m.test",
            "sender": "@alice:localhost",
            "to_user_id": erin_id,
            "to_device_id": device,
            "content": {"hello": "erin"},
        })]
    );
    let bodies: Vec<Value> = fake
        .seen
        .lock()
        .unwrap()
        .transactions
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b["org.matrix.msc3202.device_lists"]["changed"] == json!([erin_id])),
        "{bodies:?}"
    );
    let counts: Vec<&Value> = bodies
        .iter()
        .map(|b| &b["org.matrix.msc3202.device_one_time_keys_count"][erin_id][&device])
        .filter(|c| !c.is_null())
        .collect();
    assert_eq!(
        counts.first().map(|c| &c["signed_curve25519"]),
        Some(&json!(1)),
        "after the upload: {bodies:?}"
    );
    assert_eq!(
        counts.last().map(|c| &c["signed_curve25519"]),
        Some(&json!(0)),
        "after the claim: {bodies:?}"
    );
    let fallback = bodies
        .iter()
        .rev()
        .map(|b| &b["org.matrix.msc3202.device_unused_fallback_key_types"][erin_id][&device])
        .find(|f| !f.is_null());
    assert_eq!(fallback, Some(&json!(["signed_curve25519"])), "{bodies:?}");

    // The message went to the bridge, not to the device's own queue.
    let sync = server.sync(&erin, None, 0, None).await;
    let events = sync["to_device"]["events"].as_array().cloned().unwrap_or_default();
    assert!(events.is_empty(), "{sync}");
}

/// Registers `localpart` as the appservice (with a login unless
/// `inhibit_login`); the answer.
async fn register_puppet(base: &str, localpart: &str, inhibit_login: bool) -> Value {
    let (status, body) = as_call(
        base,
        "POST",
        "/_matrix/client/v3/register",
        None,
        Some(json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": inhibit_login})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A second bridge's registration: users `@other_*`, the `irc` protocol,
/// with the second set of tokens.
fn second_registration(url: &str) -> String {
    format!(
        "id: otherbridge\nurl: {url}\nas_token: {AS_TOKEN_2}\nhs_token: {HS_TOKEN_2}\nsender_localpart: otherbot\n\
         protocols: [irc]\nnamespaces:\n  users:\n  - regex: '@other_.*'\n    exclusive: true\n"
    )
}

#[tokio::test]
async fn third_party_lookups_are_answered_by_the_bridges_of_the_protocol() {
    let mut first = FakeAppservice::start().await;
    let mut second = FakeAppservice::start_with_token(HS_TOKEN_2).await;
    let dir = tempfile::tempdir().unwrap();
    let (file1, file2) = (dir.path().join("bridge.yaml"), dir.path().join("other.yaml"));
    std::fs::write(&file1, registration(&first.url()) + "protocols: [irc, slack]\n").unwrap();
    std::fs::write(&file2, second_registration(&second.url())).unwrap();
    let server = TestServer::start_in(
        dir,
        &format!(
            "app_service_config_files = [{:?}, {:?}]",
            file1.display().to_string(),
            file2.display().to_string()
        ),
    )
    .await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let get = |path: String| {
        let (server, alice) = (&server, alice.clone());
        async move { server.call("GET", &path, Some(&alice), None).await }
    };

    // Both bridges speak irc: one protocol, the instances of both, each
    // named after its bridge. Nobody describes slack: it is left out.
    let (status, body) = get("/_matrix/client/v3/thirdparty/protocols".to_owned()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), ["irc"], "{body}");
    assert_eq!(body["irc"]["user_fields"], json!(["nick"]));
    let mut instances: Vec<&str> = body["irc"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    instances.sort();
    assert_eq!(instances, ["otherbridge|libera", "testbridge|libera"], "{body}");
    let (status, body) = get("/_matrix/client/v3/thirdparty/protocol/irc".to_owned()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["instances"].as_array().unwrap().len(), 2, "{body}");
    assert_error(
        &get("/_matrix/client/v3/thirdparty/protocol/slack".to_owned()).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &get("/_matrix/client/v3/thirdparty/protocol/xmpp".to_owned()).await,
        404,
        "M_NOT_FOUND",
    );

    // Users and locations: the fields go to the bridge; a bad entry of its
    // answer is dropped, the good one kept.
    let (status, body) = get("/_matrix/client/v3/thirdparty/user/irc?nick=alice".to_owned()).await;
    assert_eq!(status, 200, "{body}");
    // Both bridges speak irc and were asked; both answer (the same fake
    // plays both), so the user comes once from each.
    assert_eq!(body.as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body[0]["userid"], "@bridge_alice:localhost");
    let (status, body) = get(format!(
        "/_matrix/client/v3/thirdparty/location/irc?channel={}",
        enc("#chat")
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([
            {"alias": "#bridge_chat:localhost", "protocol": "irc", "fields": {"channel": "#chat"}},
            {"alias": "#bridge_chat:localhost", "protocol": "irc", "fields": {"channel": "#chat"}}
        ])
    );
    assert!(first
        .seen
        .lock()
        .unwrap()
        .thirdparty
        .contains(&"location/irc?channel=#chat".to_owned()));
    let (status, body) = get("/_matrix/client/v3/thirdparty/user/xmpp?nick=alice".to_owned()).await;
    assert_eq!((status, body), (200, json!([])), "nobody speaks xmpp");

    // From Matrix IDs back to the network: asked of the bridge whose
    // namespace holds the ID, only.
    let (status, body) = get(format!(
        "/_matrix/client/v3/thirdparty/location?alias={}",
        enc("#bridge_chat:localhost")
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["fields"]["channel"], "#chat");
    let (status, body) = get(format!(
        "/_matrix/client/v3/thirdparty/user?userid={}",
        enc("@bridge_alice:localhost")
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["fields"]["nick"], "alice");
    assert!(second
        .seen
        .lock()
        .unwrap()
        .thirdparty
        .iter()
        .all(|l| !l.starts_with("user?")));

    // One bridge down: the other's instance remains. Both down: no
    // protocol, and lookups find nothing.
    second.stop().await;
    let (status, body) = get("/_matrix/client/v3/thirdparty/protocols".to_owned()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["irc"]["instances"][0]["instance_id"], "testbridge|libera",
        "{body}"
    );
    assert_eq!(body["irc"]["instances"].as_array().unwrap().len(), 1, "{body}");
    first.stop().await;
    let (status, body) = get("/_matrix/client/v3/thirdparty/protocols".to_owned()).await;
    assert_eq!((status, body), (200, json!({})));
    assert_error(
        &get("/_matrix/client/v3/thirdparty/protocol/irc".to_owned()).await,
        404,
        "M_NOT_FOUND",
    );
    let (status, body) = get("/_matrix/client/v3/thirdparty/user/irc?nick=alice".to_owned()).await;
    assert_eq!((status, body), (200, json!([])));
    assert_eq!(first.seen.lock().unwrap().unauthorized, 0);
}

/// The `origin_server_ts` of event `event_id`, as `token` reads it.
async fn event_ts(server: &TestServer, token: &str, room: &str, event_id: &str) -> u64 {
    let (status, body) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(event_id)),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["origin_server_ts"].as_u64().unwrap()
}

/// The event ID of a successful send.
fn sent(answer: (u16, Value)) -> String {
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_appservice_dates_its_events_with_ts_and_nobody_else_may() {
    let (server, _fake) = server_and_appservice().await;
    let base = server.base.as_str();
    let (alice_id, alice, _) = server.register("alice", "pw-alice-1").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    register_puppet(base, "bridge_dave", true).await;
    let dave = "user_id=%40bridge_dave%3Alocalhost";
    let in_room = |rest: &str| format!("/_matrix/client/v3/rooms/{}/{rest}", enc(&room));
    let (status, body) = as_call(base, "POST", &in_room("join"), Some(dave), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    // Alice lets dave set the topic.
    let levels = json!({"users": {alice_id: 100, "@bridge_dave:localhost": 50}, "events": {"m.room.topic": 50}});
    sent(
        server
            .call(
                "PUT",
                &in_room("state/m.room.power_levels/"),
                Some(&alice),
                Some(levels),
            )
            .await,
    );

    // What the bridge carries over long after it was written keeps its time.
    let message = sent(
        as_call(
            base,
            "PUT",
            &in_room("send/m.room.message/old1"),
            Some(&format!("{dave}&ts=1500000000000")),
            Some(json!({"msgtype": "m.text", "body": "from 2017"})),
        )
        .await,
    );
    assert_eq!(event_ts(&server, &alice, &room, &message).await, 1_500_000_000_000);
    let topic = sent(
        as_call(
            base,
            "PUT",
            &in_room("state/m.room.topic/"),
            Some(&format!("{dave}&ts=1500000002000")),
            Some(json!({"topic": "bridged"})),
        )
        .await,
    );
    assert_eq!(event_ts(&server, &alice, &room, &topic).await, 1_500_000_002_000);
    // A join through the state endpoint too (as Synapse takes it).
    register_puppet(base, "bridge_ed", true).await;
    let join = sent(
        as_call(
            base,
            "PUT",
            &in_room(&format!("state/m.room.member/{}", enc("@bridge_ed:localhost"))),
            Some("user_id=%40bridge_ed%3Alocalhost&ts=1500000003000"),
            Some(json!({"membership": "join"})),
        )
        .await,
    );
    assert_eq!(event_ts(&server, &alice, &room, &join).await, 1_500_000_003_000);

    // A person's ts is ignored: their events are dated now.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let message = sent(
        server
            .call(
                "PUT",
                &in_room("send/m.room.message/a1?ts=1000"),
                Some(&alice),
                Some(json!({"msgtype": "m.text", "body": "now"})),
            )
            .await,
    );
    let topic = sent(
        server
            .call(
                "PUT",
                &in_room("state/m.room.topic/?ts=1000"),
                Some(&alice),
                Some(json!({"topic": "by alice"})),
            )
            .await,
    );
    for event in [message, topic] {
        let ts = event_ts(&server, &alice, &room, &event).await;
        assert!(ts + 60_000 > now_ms, "dated {ts}, now is {now_ms}");
    }
}

/// The devices of `user` as the appservice lists them, by ID.
async fn device_ids(base: &str, user: &str) -> Vec<String> {
    let (status, body) = as_call(
        base,
        "GET",
        "/_matrix/client/v3/devices",
        Some(&format!("user_id={}", enc(user))),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn an_msc4190_appservice_creates_and_deletes_its_users_devices_without_logging_in() {
    let (server, _fake) = server_and_appservice_with("io.element.msc4190: true\n").await;
    let base = server.base.as_str();
    register_puppet(base, "bridge_erin", true).await;
    let erin = "@bridge_erin:localhost";
    let as_erin = format!("user_id={}", enc(erin));
    assert!(device_ids(base, erin).await.is_empty());

    // Created on first PUT (201), renamed on the next (200).
    let put = |device: &str, name: &str| {
        let (path, body, query) = (
            format!("/_matrix/client/v3/devices/{device}"),
            json!({"display_name": name}),
            as_erin.clone(),
        );
        async move { as_call(base, "PUT", &path, Some(&query), Some(body)).await }
    };
    let (status, body) = put("BRIDGEDEV", "Erin's bridge").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = put("BRIDGEDEV", "Erin's bridge, renamed").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(device_ids(base, erin).await, ["BRIDGEDEV"]);
    let (status, body) = as_call(
        base,
        "GET",
        "/_matrix/client/v3/devices/BRIDGEDEV",
        Some(&as_erin),
        None,
    )
    .await;
    assert_eq!(
        (status, body["display_name"].as_str()),
        (200, Some("Erin's bridge, renamed"))
    );
    // It acts with the device; others see it in key queries once it has keys.
    let (status, body) = as_call(
        base,
        "GET",
        "/_matrix/client/v3/account/whoami",
        Some(&format!("{as_erin}&device_id=BRIDGEDEV")),
        None,
    )
    .await;
    assert_eq!((status, body["device_id"].as_str()), (200, Some("BRIDGEDEV")), "{body}");

    // No logins for its users: it has devices without tokens.
    let login = as_call(
        base,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(
            json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "bridge_erin"}}),
        ),
    )
    .await;
    assert_error(&login, 400, "M_APPSERVICE_LOGIN_UNSUPPORTED");

    // Deleted without a password, one or many.
    let (status, body) = as_call(
        base,
        "DELETE",
        "/_matrix/client/v3/devices/BRIDGEDEV",
        Some(&as_erin),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(device_ids(base, erin).await.is_empty());
    for device in ["D1", "D2", "D3"] {
        assert_eq!(put(device, device).await.0, 201);
    }
    let (status, body) = as_call(
        base,
        "POST",
        "/_matrix/client/v3/delete_devices",
        Some(&as_erin),
        Some(json!({"devices": ["D1", "D3"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(device_ids(base, erin).await, ["D2"]);

    // People still need their password.
    let (_, alice, alice_device) = server.register("alice", "pw-alice-1").await;
    let (status, body) = server
        .call(
            "DELETE",
            &format!("/_matrix/client/v3/devices/{alice_device}"),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["flows"].is_array(), "{body}");
    let (status, body) = server
        .call(
            "PUT",
            "/_matrix/client/v3/devices/NEWDEVICE",
            Some(&alice),
            Some(json!({"display_name": "x"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn without_msc4190_an_appservice_neither_creates_nor_freely_deletes_devices() {
    let (server, _fake) = server_and_appservice().await;
    let base = server.base.as_str();
    let body = register_puppet(base, "bridge_finn", false).await;
    let device = body["device_id"].as_str().unwrap().to_owned();
    let as_finn = "user_id=%40bridge_finn%3Alocalhost";
    let created = as_call(
        base,
        "PUT",
        "/_matrix/client/v3/devices/NEWDEVICE",
        Some(as_finn),
        Some(json!({"display_name": "x"})),
    )
    .await;
    assert_error(&created, 404, "M_NOT_FOUND");
    let (status, body) = as_call(
        base,
        "DELETE",
        &format!("/_matrix/client/v3/devices/{device}"),
        Some(as_finn),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 401, "user-interactive authentication: {body}");
    assert_eq!(device_ids(base, "@bridge_finn:localhost").await, [device]);
}

#[tokio::test]
async fn the_stand_in_device_of_an_appservice_is_nobodys_device() {
    let (server, _fake) = server_and_appservice().await;
    let base = server.base.as_str();
    register_puppet(base, "bridge_gus", true).await;
    let as_gus = "user_id=%40bridge_gus%3Alocalhost";
    // Acting without a device: no device is listed, none named.
    let (status, body) = as_call(base, "GET", "/_matrix/client/v3/account/whoami", Some(as_gus), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("device_id").is_none(), "{body}");
    assert!(device_ids(base, "@bridge_gus:localhost").await.is_empty());
    // Keys need a device of its naming: none are stored for the stand-in.
    let upload = as_call(
        base,
        "POST",
        "/_matrix/client/v3/keys/upload",
        Some(as_gus),
        Some(json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "x"}}})),
    )
    .await;
    assert_error(&upload, 400, "M_MISSING_PARAM");

    // The stand-in's ID is taken by no real device, so none shares its
    // transaction IDs (and sees `unsigned.transaction_id` of its events).
    let login = as_call(
        base,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(json!({
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": "bridge_gus"},
            "device_id": "(appservice)"
        })),
    )
    .await;
    assert_error(&login, 400, "M_INVALID_PARAM");
    server.register("alice", "pw-alice-1").await;
    assert_error(
        &server.login("alice", "pw-alice-1", Some("(appservice)")).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_eq!(server.login("alice", "pw-alice-1", Some("PHONE")).await.0, 200);
}

#[tokio::test]
async fn registrations_claiming_the_same_exclusive_namespace_are_refused() {
    let fake = FakeAppservice::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (file1, file2) = (dir.path().join("bridge.yaml"), dir.path().join("clash.yaml"));
    std::fs::write(&file1, registration(&fake.url())).unwrap();
    // Other tokens and sender, the same exclusive users.
    let clash = registration(&fake.url())
        .replace("id: testbridge", "id: clash")
        .replace(AS_TOKEN, AS_TOKEN_2)
        .replace(HS_TOKEN, HS_TOKEN_2)
        .replace("sender_localpart: bridgebot", "sender_localpart: clashbot")
        .replace("'#bridge_.*'", "'#clash_.*'");
    std::fs::write(&file2, &clash).unwrap();
    let mut server = TestServer::start_in(
        dir,
        &format!(
            "app_service_config_files = [{:?}, {:?}]",
            file1.display().to_string(),
            file2.display().to_string()
        ),
    )
    .await;
    let lines = server.log_lines_with("appservice registration refused");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("testbridge") && lines[0].contains("clash") && lines[0].contains("@bridge_.*"),
        "{}",
        lines[0]
    );
    // The first one serves; the second's token is nobody's.
    let (status, _) = as_call(&server.base, "GET", "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!(status, 200);
    let other = reqwest::Client::new()
        .get(server.url("/_matrix/client/v3/account/whoami"))
        .bearer_auth(AS_TOKEN_2)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(other, 401);

    // The command line refuses it too, naming both.
    server.stop();
    let out = common::conduit_command()
        .arg("-c")
        .arg(server.config_path())
        .args(["appservice", "register", file2.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("testbridge") && err.contains("clash"), "{err}");
    // Claimed non-exclusively, the same users are fine.
    std::fs::write(&file2, clash.replace("exclusive: true", "exclusive: false")).unwrap();
    let out = common::conduit_command()
        .arg("-c")
        .arg(server.config_path())
        .args(["appservice", "register", file2.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `(notification_count, highlight_count)` of a room in a /sync.
fn unread_counts(sync: &Value, room: &str) -> (u64, u64) {
    let unread = &sync["rooms"]["join"][room]["unread_notifications"];
    let count = |key: &str| unread[key].as_u64().unwrap_or(0);
    (count("notification_count"), count("highlight_count"))
}

/// A bridge's users are not people: as in Synapse, no event is evaluated
/// against their push rules, so a message that notifies a person beside
/// them, even one naming them, leaves them no count and no notification.
/// A person with rules of their own is counted as before.
#[tokio::test]
async fn a_bridges_users_get_no_notifications_and_people_beside_them_do() {
    let (server, _fake) = server_and_appservice().await;
    let (_, alice, _) = server.register("alice", "pw-alice-1").await;
    let (_, bob, _) = server.register("bob", "pw-bob-1").await;
    let (_, carol, _) = server.register("carol", "pw-carol-1").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    let (puppet_token, _) = puppet(&server, AS_TOKEN, "bridge_pat").await;
    for token in [&bob, &carol, &puppet_token] {
        server.join(token, &room).await;
    }
    // Carol changed her rules: a keyword of her own.
    let (status, body) = server
        .call(
            "PUT",
            "/_matrix/client/v3/pushrules/global/content/lunch",
            Some(&carol),
            Some(json!({"pattern": "lunch", "actions": ["notify", {"set_tweak": "highlight"}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let mentions = json!({"user_ids": ["@bob:localhost", "@bridge_pat:localhost"]});
    server
        .send_event(
            &alice,
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "bob, bridge_pat: lunch?", "m.mentions": mentions}),
        )
        .await;
    server.send_text(&alice, &room, "or later").await;

    let bob_sync = server.sync(&bob, None, 0, None).await;
    assert_eq!(unread_counts(&bob_sync, &room), (2, 1), "{bob_sync}");
    let carol_sync = server.sync(&carol, None, 0, None).await;
    assert_eq!(unread_counts(&carol_sync, &room), (2, 1), "{carol_sync}");
    let puppet_sync = server.sync(&puppet_token, None, 0, None).await;
    assert!(
        puppet_sync["rooms"]["join"][room.as_str()]["timeline"].is_object(),
        "the puppet is in the room: {puppet_sync}"
    );
    assert_eq!(unread_counts(&puppet_sync, &room), (0, 0), "{puppet_sync}");

    let notifications = |token: String| {
        let server = &server;
        async move {
            let (status, body) = server
                .call("GET", "/_matrix/client/v3/notifications", Some(&token), None)
                .await;
            assert_eq!(status, 200, "{body}");
            body["notifications"].as_array().unwrap().len()
        }
    };
    assert_eq!(notifications(bob.clone()).await, 2);
    assert_eq!(notifications(puppet_token.clone()).await, 0);
}
