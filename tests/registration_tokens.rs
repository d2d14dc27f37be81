//! Registration tokens: the config's token, tokens in the database with
//! uses and expiry (MSC3231), their validity endpoint, Synapse's admin API
//! for them and `conduit token ...` on a stopped server.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{assert_error, TestServer};
use serde_json::{json, Value};

const REGISTER: &str = "/_matrix/client/v3/register";
const TOKENS: &str = "/_synapse/admin/v1/registration_tokens";
const NEW: &str = "/_synapse/admin/v1/registration_tokens/new";
const CONFIG_TOKEN: &str = "from-the-config";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn one(token: &str) -> String {
    format!("{TOKENS}/{token}")
}

fn validity(token: &str) -> String {
    format!(
        "/_matrix/client/v1/register/m.login.registration_token/validity?token={}",
        common::enc(token)
    )
}

/// Starts a registration of `username`; returns the 401 body (flows,
/// session).
async fn start_registration(server: &TestServer, username: &str) -> Value {
    let (status, body) = server
        .call(
            "POST",
            REGISTER,
            None,
            Some(json!({"username": username, "password": "pw"})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    body
}

/// One stage of the registration of `username` in `session`.
async fn stage(server: &TestServer, username: &str, session: &Value, auth: Value) -> (u16, Value) {
    let mut auth = auth;
    auth["session"] = session.clone();
    server
        .call(
            "POST",
            REGISTER,
            None,
            Some(json!({"username": username, "password": "pw", "auth": auth})),
        )
        .await
}

fn token_auth(token: &str) -> Value {
    json!({"type": "m.login.registration_token", "token": token})
}

fn dummy_auth() -> Value {
    json!({"type": "m.login.dummy"})
}

/// Registers `username` with `token` through both stages; returns the new
/// account's access token.
async fn register_with(server: &TestServer, username: &str, token: &str) -> String {
    let session = start_registration(server, username).await["session"].clone();
    let (status, body) = stage(server, username, &session, token_auth(token)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["completed"], json!(["m.login.registration_token"]), "{body}");
    let (status, body) = stage(server, username, &session, dummy_auth()).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// A server needing tokens, with its admin registered with the config's
/// token; returns the admin's access token.
async fn server_with_admin(extra: &str) -> (TestServer, String) {
    let server = TestServer::start_with(&format!("registration_token = \"{CONFIG_TOKEN}\"\n{extra}")).await;
    let admin = register_with(&server, "admin", CONFIG_TOKEN).await;
    (server, admin)
}

async fn create(server: &TestServer, admin: &str, body: Value) -> Value {
    let (status, made) = server.call("POST", NEW, Some(admin), Some(body)).await;
    assert_eq!(status, 200, "{made}");
    made
}

async fn counts(server: &TestServer, admin: &str, token: &str) -> (u64, u64) {
    let (status, body) = server.call("GET", &one(token), Some(admin), None).await;
    assert_eq!(status, 200, "{body}");
    (body["pending"].as_u64().unwrap(), body["completed"].as_u64().unwrap())
}

async fn is_valid(server: &TestServer, token: &str) -> bool {
    let (status, body) = server.call("GET", &validity(token), None, None).await;
    assert_eq!(status, 200, "{body}");
    body["valid"].as_bool().unwrap()
}

fn listed(body: &Value) -> Vec<&str> {
    body["registration_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn admins_create_read_change_and_delete_tokens() {
    let (server, admin) = server_with_admin("").await;
    let expiry = now_ms() + 3_600_000;
    let made = create(
        &server,
        &admin,
        json!({"token": "family.2024~x-y_z", "uses_allowed": 3, "expiry_time": expiry}),
    )
    .await;
    assert_eq!(
        made,
        json!({"token": "family.2024~x-y_z", "uses_allowed": 3, "pending": 0, "completed": 0, "expiry_time": expiry})
    );
    let (status, got) = server.call("GET", &one("family.2024~x-y_z"), Some(&admin), None).await;
    assert_eq!((status, &got), (200, &made));

    // Generated: 16 characters of Synapse's alphabet unless told, unlimited.
    let generated = create(&server, &admin, json!({})).await;
    let name = generated["token"].as_str().unwrap().to_owned();
    assert_eq!(name.len(), 16);
    assert!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)),
        "{name}"
    );
    assert_eq!(
        (&generated["uses_allowed"], &generated["expiry_time"]),
        (&Value::Null, &Value::Null)
    );
    let short = create(&server, &admin, json!({"length": 5, "uses_allowed": 0})).await;
    let short_name = short["token"].as_str().unwrap().to_owned();
    assert_eq!(short_name.len(), 5);

    // The config's token is not among them; a token of no uses is invalid.
    let (status, all) = server.call("GET", TOKENS, Some(&admin), None).await;
    assert_eq!(status, 200, "{all}");
    let mut expected = vec!["family.2024~x-y_z", name.as_str(), short_name.as_str()];
    expected.sort();
    assert_eq!(listed(&all), expected);
    let (_, valid) = server
        .call("GET", &format!("{TOKENS}?valid=true"), Some(&admin), None)
        .await;
    let mut expected_valid = vec!["family.2024~x-y_z", name.as_str()];
    expected_valid.sort();
    assert_eq!(listed(&valid), expected_valid);
    let (_, invalid) = server
        .call("GET", &format!("{TOKENS}?valid=false"), Some(&admin), None)
        .await;
    assert_eq!(listed(&invalid), vec![short_name.as_str()]);
    assert_error(
        &server
            .call("GET", &format!("{TOKENS}?valid=maybe"), Some(&admin), None)
            .await,
        400,
        "M_INVALID_PARAM",
    );

    // A field left out stays; null clears it.
    let path = one("family.2024~x-y_z");
    let (status, changed) = server
        .call("PUT", &path, Some(&admin), Some(json!({"uses_allowed": null})))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (&changed["uses_allowed"], &changed["expiry_time"]),
        (&Value::Null, &json!(expiry))
    );
    let (status, changed) = server
        .call(
            "PUT",
            &path,
            Some(&admin),
            Some(json!({"uses_allowed": 7, "expiry_time": null})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (&changed["uses_allowed"], &changed["expiry_time"]),
        (&json!(7), &Value::Null)
    );
    let (status, unchanged) = server.call("PUT", &path, Some(&admin), Some(json!({}))).await;
    assert_eq!((status, &unchanged), (200, &changed));

    // Bad values: Synapse's 400 M_INVALID_PARAM, nothing made or changed.
    for body in [
        json!({"token": "has space"}),
        json!({"token": ""}),
        json!({"token": "x".repeat(65)}),
        json!({"token": 5}),
        json!({"length": 0}),
        json!({"length": 65}),
        json!({"length": -1}),
        json!({"length": "8"}),
        json!({"uses_allowed": -1}),
        json!({"uses_allowed": "3"}),
        json!({"uses_allowed": 1.5}),
        json!({"expiry_time": "tomorrow"}),
        json!({"expiry_time": now_ms() - 1000}),
        json!({"token": "family.2024~x-y_z"}),
    ] {
        let got = server.call("POST", NEW, Some(&admin), Some(body.clone())).await;
        assert_error(&got, 400, "M_INVALID_PARAM");
        assert!(got.1["error"].is_string(), "{body}: {}", got.1);
    }
    for body in [
        json!({"uses_allowed": -2}),
        json!({"expiry_time": 12}),
        json!({"expiry_time": true}),
    ] {
        assert_error(
            &server.call("PUT", &path, Some(&admin), Some(body)).await,
            400,
            "M_INVALID_PARAM",
        );
    }
    assert_error(
        &server.call("POST", NEW, Some(&admin), Some(json!([1]))).await,
        400,
        "M_BAD_JSON",
    );
    let (_, all_again) = server.call("GET", TOKENS, Some(&admin), None).await;
    assert_eq!(listed(&all_again), expected);
    assert_eq!(server.call("GET", &path, Some(&admin), None).await.1, changed);

    // Deleted once; then it is not found.
    let (status, deleted) = server.call("DELETE", &path, Some(&admin), None).await;
    assert_eq!((status, deleted), (200, json!({})));
    for method in ["GET", "DELETE"] {
        assert_error(
            &server.call(method, &path, Some(&admin), None).await,
            404,
            "M_NOT_FOUND",
        );
    }
    assert_error(
        &server
            .call("PUT", &path, Some(&admin), Some(json!({"uses_allowed": 1})))
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert!(!is_valid(&server, "family.2024~x-y_z").await);

    // A token named `new` is read, changed and deleted like any other.
    assert_error(&server.call("GET", NEW, Some(&admin), None).await, 404, "M_NOT_FOUND");
    create(&server, &admin, json!({"token": "new"})).await;
    let (status, got) = server.call("GET", NEW, Some(&admin), None).await;
    assert_eq!((status, &got["token"]), (200, &json!("new")), "{got}");
    let (status, got) = server
        .call("PUT", NEW, Some(&admin), Some(json!({"uses_allowed": 4})))
        .await;
    assert_eq!((status, &got["uses_allowed"]), (200, &json!(4)), "{got}");
    assert_eq!(server.call("DELETE", NEW, Some(&admin), None).await.0, 200);
    assert!(!is_valid(&server, "new").await);
}

#[tokio::test]
async fn only_admins_may_manage_tokens() {
    let (server, admin) = server_with_admin("").await;
    let user = register_with(&server, "user", CONFIG_TOKEN).await;
    create(&server, &admin, json!({"token": "kept"})).await;
    let calls: [(&str, String, Option<Value>); 5] = [
        ("GET", TOKENS.to_owned(), None),
        ("POST", NEW.to_owned(), Some(json!({"token": "mine"}))),
        ("GET", one("kept"), None),
        ("PUT", one("kept"), Some(json!({"uses_allowed": 0}))),
        ("DELETE", one("kept"), None),
    ];
    for (method, path, body) in calls {
        assert_error(
            &server.call(method, &path, Some(&user), body.clone()).await,
            403,
            "M_FORBIDDEN",
        );
        assert_error(&server.call(method, &path, None, body).await, 401, "M_MISSING_TOKEN");
    }
    let (_, all) = server.call("GET", TOKENS, Some(&admin), None).await;
    assert_eq!(
        all["registration_tokens"],
        json!([{"token": "kept", "uses_allowed": null, "pending": 0, "completed": 0, "expiry_time": null}])
    );
}

#[tokio::test]
async fn registering_with_a_token_moves_its_counts() {
    let (server, admin) = server_with_admin("").await;
    create(&server, &admin, json!({"token": "welcome", "uses_allowed": 2})).await;

    let started = start_registration(&server, "bob").await;
    assert_eq!(
        started["flows"],
        json!([{"stages": ["m.login.registration_token", "m.login.dummy"]}])
    );
    let session = started["session"].clone();
    // The dummy stage alone registers nobody.
    let (status, body) = stage(&server, "bob", &session, dummy_auth()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["completed"], json!(["m.login.dummy"]));
    let (status, body) = stage(&server, "bob", &session, token_auth("not-a-token")).await;
    assert_error(&(status, body.clone()), 401, "M_FORBIDDEN");
    assert_eq!(counts(&server, &admin, "welcome").await, (0, 0));

    let (status, body) = stage(&server, "bob", &session, token_auth("welcome")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@bob:localhost");
    let (status, me) = server.whoami(body["access_token"].as_str().unwrap()).await;
    assert_eq!((status, &me["user_id"]), (200, &json!("@bob:localhost")));
    assert_eq!(counts(&server, &admin, "welcome").await, (0, 1));
    // The request repeated in its session is the same account, not a
    // second use.
    let (status, again) = stage(&server, "bob", &session, token_auth("welcome")).await;
    assert_eq!((status, &again["user_id"]), (200, &json!("@bob:localhost")), "{again}");
    assert_eq!(counts(&server, &admin, "welcome").await, (0, 1));

    // Token first: pending until the dummy stage registers.
    let session = start_registration(&server, "carol").await["session"].clone();
    let (status, body) = stage(&server, "carol", &session, token_auth("welcome")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(counts(&server, &admin, "welcome").await, (1, 1));
    // The same stage again in the session takes no second use.
    let (status, _) = stage(&server, "carol", &session, token_auth("welcome")).await;
    assert_eq!(status, 401);
    assert_eq!(counts(&server, &admin, "welcome").await, (1, 1));
    let (status, body) = stage(&server, "carol", &session, dummy_auth()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&server, &admin, "welcome").await, (0, 2));
    assert!(!is_valid(&server, "welcome").await);
}

#[tokio::test]
async fn a_used_up_token_is_refused_pending_uses_included() {
    let (server, admin) = server_with_admin("").await;
    create(&server, &admin, json!({"token": "once", "uses_allowed": 1})).await;
    assert!(is_valid(&server, "once").await);

    // Two registrations at once: the first holds the only use.
    let first = start_registration(&server, "first").await["session"].clone();
    let second = start_registration(&server, "second").await["session"].clone();
    let (status, body) = stage(&server, "first", &first, token_auth("once")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["completed"], json!(["m.login.registration_token"]));
    assert!(!is_valid(&server, "once").await);
    let refused = stage(&server, "second", &second, token_auth("once")).await;
    assert_error(&refused, 401, "M_FORBIDDEN");
    assert_eq!(refused.1["completed"], json!([]), "{}", refused.1);
    let (status, body) = stage(&server, "second", &second, dummy_auth()).await;
    assert_eq!(status, 401, "the second registers without a token: {body}");
    assert_eq!(counts(&server, &admin, "once").await, (1, 0));

    let (status, body) = stage(&server, "first", &first, dummy_auth()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&server, &admin, "once").await, (0, 1));
    assert_error(
        &stage(&server, "second", &second, token_auth("once")).await,
        401,
        "M_FORBIDDEN",
    );
    let (_, invalid) = server
        .call("GET", &format!("{TOKENS}?valid=false"), Some(&admin), None)
        .await;
    assert_eq!(listed(&invalid), vec!["once"]);

    // One more use allowed: the waiting registration goes through.
    let (status, _) = server
        .call("PUT", &one("once"), Some(&admin), Some(json!({"uses_allowed": 2})))
        .await;
    assert_eq!(status, 200);
    let (status, body) = stage(&server, "second", &second, token_auth("once")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@second:localhost");
    assert_eq!(counts(&server, &admin, "once").await, (0, 2));
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let (server, admin) = server_with_admin("").await;
    // Synapse refuses an expiry in the past.
    assert_error(
        &server
            .call(
                "POST",
                NEW,
                Some(&admin),
                Some(json!({"token": "late", "expiry_time": now_ms() - 1})),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let expiry = now_ms() + 1500;
    create(&server, &admin, json!({"token": "soon", "expiry_time": expiry})).await;
    assert!(is_valid(&server, "soon").await);
    // A session that passed the token stage in time still registers.
    let early = start_registration(&server, "early").await["session"].clone();
    let (status, _) = stage(&server, "early", &early, token_auth("soon")).await;
    assert_eq!(status, 401);

    let deadline = Instant::now() + Duration::from_secs(10);
    while is_valid(&server, "soon").await {
        assert!(Instant::now() < deadline, "the token is still valid 10 s on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(now_ms() >= expiry);
    let late = start_registration(&server, "late").await["session"].clone();
    assert_error(
        &stage(&server, "late", &late, token_auth("soon")).await,
        401,
        "M_FORBIDDEN",
    );
    let (_, invalid) = server
        .call("GET", &format!("{TOKENS}?valid=false"), Some(&admin), None)
        .await;
    assert_eq!(listed(&invalid), vec!["soon"]);
    let (status, body) = stage(&server, "early", &early, dummy_auth()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&server, &admin, "soon").await, (0, 1));

    // Given a new expiry, it is valid again.
    let (status, _) = server
        .call(
            "PUT",
            &one("soon"),
            Some(&admin),
            Some(json!({"expiry_time": now_ms() + 3_600_000})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(is_valid(&server, "soon").await);
}

#[tokio::test]
async fn the_validity_endpoint() {
    let (server, admin) = server_with_admin("").await;
    create(&server, &admin, json!({"token": "good"})).await;
    assert!(is_valid(&server, "good").await);
    assert!(is_valid(&server, CONFIG_TOKEN).await);
    assert!(!is_valid(&server, "unknown").await);
    assert!(!is_valid(&server, "").await);
    // MSC3231's unstable path is served too.
    let (status, body) = server
        .call(
            "GET",
            "/_matrix/client/unstable/org.matrix.msc3231/register/org.matrix.msc3231.login.registration_token/validity?token=good",
            None,
            None,
        )
        .await;
    assert_eq!((status, body), (200, json!({"valid": true})));
    let (status, body) = server
        .call(
            "GET",
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "the token is required: {body}");

    // Where nobody may register, every token is invalid: 403.
    let closed = TestServer::start_with("allow_registration = false").await;
    assert_error(
        &closed.call("GET", &validity("good"), None, None).await,
        403,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn the_config_token_alone_still_works_and_never_runs_out() {
    let server = TestServer::start_with(&format!("registration_token = \"{CONFIG_TOKEN}\"")).await;
    for name in ["one", "two", "three"] {
        register_with(&server, name, CONFIG_TOKEN).await;
    }
    let session = start_registration(&server, "four").await["session"].clone();
    assert_error(
        &stage(&server, "four", &session, token_auth("wrong")).await,
        401,
        "M_FORBIDDEN",
    );

    // Without tokens required, the flow is the dummy stage alone and a
    // token stage is not one of it.
    let open = TestServer::start().await;
    let started = start_registration(&open, "free").await;
    assert_eq!(started["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert_error(
        &stage(&open, "free", &started["session"], token_auth("anything")).await,
        401,
        "M_FORBIDDEN",
    );
}

/// `conduit token ...` with the test server's config; (success, stdout,
/// stderr).
fn cli(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let args: Vec<&str> = std::iter::once("token").chain(args.iter().copied()).collect();
    common::run_conduit(server.config_path(), &args)
}

#[tokio::test]
async fn the_command_line_manages_tokens_of_a_stopped_server() {
    let mut server = TestServer::start_with("registration_requires_token = true").await;
    // Tokens required and none made: nobody can register.
    let started = start_registration(&server, "nobody").await;
    assert_eq!(
        started["flows"],
        json!([{"stages": ["m.login.registration_token", "m.login.dummy"]}])
    );
    assert_error(
        &stage(&server, "nobody", &started["session"], token_auth("guess")).await,
        401,
        "M_FORBIDDEN",
    );
    // The database is the running server's.
    let (ok, _, err) = cli(&server, &["list"]);
    assert!(!ok, "the command line opened a running server's database");
    assert!(!err.is_empty());

    assert!(server.stop().success());
    let (ok, out, err) = cli(&server, &["create", "--uses", "1", "--expires-in-days", "2"]);
    assert!(ok, "{err}");
    let limited = out.trim().to_owned();
    assert_eq!(limited.len(), 16, "{out}");
    let (ok, out, err) = cli(&server, &["create"]);
    assert!(ok, "{err}");
    let unlimited = out.trim().to_owned();
    let (ok, out, err) = cli(&server, &["list"]);
    assert!(ok, "{err}");
    let line = |token: &str, out: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(&format!("{token}\t")))
            .unwrap_or_else(|| panic!("{token} not listed: {out}"))
            .split('\t')
            .map(str::to_owned)
            .collect()
    };
    let fields = line(&limited, &out);
    assert_eq!(fields[1..4], ["1", "0", "0"], "{out}");
    let expires: u64 = fields[4].parse().unwrap();
    let two_days = 2 * 24 * 3600 * 1000;
    assert!(expires.abs_diff(now_ms() + two_days) < 60_000, "{out}");
    assert_eq!(fields[5], "valid");
    assert_eq!(line(&unlimited, &out)[1..], ["unlimited", "0", "0", "never", "valid"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, _, err) = cli(&server, &["delete", "no-such-token"]);
    assert!(!ok);
    assert!(err.contains("no registration token no-such-token"), "{err}");
    // A token may start with `-`; it is not taken for an option.
    let (ok, _, err) = cli(&server, &["delete", "-A-token"]);
    assert!(!ok);
    assert!(err.contains("no registration token -A-token"), "{err}");

    server.start_again();
    assert!(is_valid(&server, &limited).await);
    register_with(&server, "first", &limited).await;
    assert!(!is_valid(&server, &limited).await);
    let session = start_registration(&server, "second").await["session"].clone();
    assert_error(
        &stage(&server, "second", &session, token_auth(&limited)).await,
        401,
        "M_FORBIDDEN",
    );
    register_with(&server, "second", &unlimited).await;

    assert!(server.stop().success());
    let (ok, out, _) = cli(&server, &["list"]);
    assert!(ok);
    assert_eq!(line(&limited, &out)[1..4], ["1", "0", "1"], "{out}");
    assert_eq!(line(&limited, &out)[5], "invalid");
    assert_eq!(line(&unlimited, &out)[1..4], ["unlimited", "0", "1"], "{out}");
    let (ok, out, err) = cli(&server, &["delete", &limited]);
    assert!(ok, "{err}");
    assert!(out.contains(&limited));
    let (_, out, _) = cli(&server, &["list"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(!out.contains(&limited));
}
