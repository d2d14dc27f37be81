//! The admin room: `#admins:localhost` made at first start by the bot
//! `@conduit:localhost`, the first person made admin and invited, and the
//! bot answering `!admin …` commands there.

mod common;

use std::time::{Duration, Instant};

use common::{enc, TestServer};
use serde_json::{json, Value};

const BOT: &str = "@conduit:localhost";
const REGISTER: &str = "/_matrix/client/v3/register";
/// Registration needs a token here, so `tokens create` can be tried.
const CONFIG: &str = "registration_requires_token = true\nregistration_token = \"family\"";

/// Registers `username` with `token` (token stage, then dummy); returns
/// (user ID, access token).
async fn register_with(server: &TestServer, username: &str, token: &str) -> (String, String) {
    let body = json!({"username": username, "password": "pw"});
    let (status, first) = server.call("POST", REGISTER, None, Some(body.clone())).await;
    assert_eq!(status, 401, "{first}");
    let mut session = None;
    for auth in [
        json!({"type": "m.login.registration_token", "token": token}),
        json!({"type": "m.login.dummy"}),
    ] {
        let mut auth = auth;
        auth["session"] = first["session"].clone();
        let mut request = body.clone();
        request["auth"] = auth;
        session = Some(server.call("POST", REGISTER, None, Some(request)).await);
    }
    let (status, done) = session.unwrap();
    assert_eq!(status, 200, "{done}");
    (
        done["user_id"].as_str().unwrap().to_owned(),
        done["access_token"].as_str().unwrap().to_owned(),
    )
}

async fn admin_room_id(server: &TestServer) -> String {
    let (status, body) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", enc("#admins:localhost")),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["room_id"].as_str().unwrap().to_owned()
}

async fn is_admin(server: &TestServer, admin_token: &str, user_id: &str) -> bool {
    let path = format!("/_synapse/admin/v1/users/{}/admin", enc(user_id));
    let (status, body) = server.call("GET", &path, Some(admin_token), None).await;
    assert_eq!(status, 200, "{body}");
    body["admin"].as_bool().unwrap()
}

/// Sends `text` to the room and waits (at most 10 s) for the bot's answer
/// to it; returns the answer's content.
async fn ask(server: &TestServer, token: &str, room_id: &str, text: &str) -> Value {
    let asked = server.send_text(token, room_id, text).await;
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", enc(room_id));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = server.call("GET", &path, Some(token), None).await;
        assert_eq!(status, 200, "{page}");
        let answer = page["chunk"].as_array().unwrap().iter().find(|event| {
            event["sender"] == BOT && event["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == asked.as_str()
        });
        if let Some(answer) = answer {
            let content = answer["content"].clone();
            assert_eq!(content["msgtype"], "m.notice", "{content}");
            return content;
        }
        assert!(Instant::now() < deadline, "no answer to {text:?} within 10 s: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The answer's plain body.
async fn ask_text(server: &TestServer, token: &str, room_id: &str, text: &str) -> String {
    ask(server, token, room_id, text).await["body"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_first_user_runs_the_server_from_the_admin_room() {
    let mut server = TestServer::start_with(CONFIG).await;
    let room_id = admin_room_id(&server).await;
    let (alice_id, alice) = register_with(&server, "alice", "family").await;
    let (bob_id, bob) = register_with(&server, "bob", "family").await;
    assert!(is_admin(&server, &alice, &alice_id).await);
    assert!(!is_admin(&server, &alice, &bob_id).await);

    // Alice is invited by the bot; Bob is not.
    let sync = server.sync(&alice, None, 0, None).await;
    let invite = &sync["rooms"]["invite"][&room_id]["invite_state"]["events"];
    assert!(
        invite
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Admins"),
        "{sync}"
    );
    let bob_sync = server.sync(&bob, None, 0, None).await;
    assert!(bob_sync["rooms"]["invite"].get(&room_id).is_none(), "{bob_sync}");
    server.join(&alice, &room_id).await;

    // The room is private and out of the directory.
    let (_, public) = server.call("GET", "/_matrix/client/v3/publicRooms", None, None).await;
    assert!(!public.to_string().contains(&room_id), "{public}");
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403);

    let listed = ask(&server, &alice, &room_id, "!admin users list").await;
    let body = listed["body"].as_str().unwrap();
    assert!(body.contains(&alice_id) && body.contains(&bob_id), "{listed}");
    assert!(!body.contains(BOT), "the bot is no account to manage: {listed}");
    let alice_line = body.lines().find(|l| l.starts_with(&alice_id)).unwrap();
    assert!(alice_line.contains("admin"), "{body}");
    assert_eq!(listed["format"], "org.matrix.custom.html");
    assert!(
        listed["formatted_body"].as_str().unwrap().starts_with("<pre><code>"),
        "{listed}"
    );

    let created = ask_text(&server, &alice, &room_id, "!admin users create carol --password first").await;
    assert!(created.contains("created @carol:localhost"), "{created}");
    assert_eq!(server.login("carol", "first", None).await.0, 200);
    let again = ask_text(&server, &alice, &room_id, "!admin users create carol").await;
    assert!(again.contains("exists"), "{again}");

    // Quoted, a password may hold spaces (and start with `-`).
    let reset = ask_text(
        &server,
        &alice,
        &room_id,
        r#"!admin users reset-password carol --password "-second try""#,
    )
    .await;
    assert!(reset.contains("@carol:localhost"), "{reset}");
    assert_eq!(server.login("carol", "-second try", None).await.0, 200);
    assert_eq!(server.login("carol", "first", None).await.0, 403);
    let unclosed = ask_text(
        &server,
        &alice,
        &room_id,
        "!admin users reset-password carol --password 'x",
    )
    .await;
    assert!(unclosed.contains("not closed"), "{unclosed}");

    let deactivated = ask_text(&server, &alice, &room_id, "!admin users deactivate carol").await;
    assert!(deactivated.contains("deactivated @carol:localhost"), "{deactivated}");
    assert_ne!(server.login("carol", "-second try", None).await.0, 200);

    let family = server.create_room(&bob, json!({"name": "Family"})).await;
    let rooms = ask_text(&server, &alice, &room_id, "!admin rooms list").await;
    assert!(rooms.contains(&family) && rooms.contains("Family"), "{rooms}");
    assert!(
        !rooms.contains(&room_id),
        "the server's own room is no room to manage: {rooms}"
    );

    let token = ask_text(&server, &alice, &room_id, "!admin tokens create --uses 1").await;
    let token = token.trim();
    assert!(!token.is_empty() && !token.contains(' '), "{token}");
    let (dave, _) = register_with(&server, "dave", token).await;
    assert_eq!(dave, "@dave:localhost");
    assert!(!is_admin(&server, &alice, &dave).await);

    let purged = ask_text(&server, &alice, &room_id, "!admin media purge --older-than-days 1").await;
    assert!(purged.contains("purged 0 media"), "{purged}");

    let stats = ask_text(&server, &alice, &room_id, "!admin server stats").await;
    assert!(stats.contains(env!("CARGO_PKG_VERSION")), "{stats}");
    // Alice, Bob, Carol, Dave and the bot; Alice is the one admin.
    assert!(stats.contains("accounts\t5 (1 deactivated, 1 admins)"), "{stats}");
    assert!(stats.contains("rooms\t2"), "{stats}");
    // Two rooms' creation alone is a dozen events; RocksDB estimates.
    let events: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("events\tabout "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event count: {stats}"));
    assert!((12..10_000).contains(&events), "{stats}");
    assert!(stats.contains("uptime\t") && stats.contains("database\t"), "{stats}");

    let help = ask_text(&server, &alice, &room_id, "!admin help").await;
    for command in ["users", "rooms", "tokens", "media", "server"] {
        assert!(help.contains(command), "{help}");
    }
    let wrong = ask_text(&server, &alice, &room_id, "!admin users frobnicate").await;
    assert!(wrong.contains("frobnicate") && wrong.contains("Usage"), "{wrong}");

    // Bob, invited by Alice, may read but not command.
    server.invite(&alice, &room_id, &bob_id).await;
    server.join(&bob, &room_id).await;
    let refused = ask_text(&server, &bob, &room_id, "!admin users deactivate alice").await;
    assert!(refused.contains("not a server admin"), "{refused}");
    assert_eq!(server.login("alice", "pw", None).await.0, 200);

    // Plain talk in the room gets no answer; the bot answers the next command.
    server.send_text(&alice, &room_id, "hello admins").await;
    let listed = ask_text(&server, &alice, &room_id, "!admin users list").await;
    assert!(listed.contains(&dave), "{listed}");

    // A restart makes no second room, and the bot answers again.
    server.restart();
    assert_eq!(admin_room_id(&server).await, room_id);
    let bot_rooms = format!("/_synapse/admin/v1/users/{}/joined_rooms", enc(BOT));
    let (status, joined) = server.call("GET", &bot_rooms, Some(&alice), None).await;
    assert_eq!((status, joined), (200, json!({"joined_rooms": [room_id], "total": 1})));
    let rooms = ask_text(&server, &alice, &room_id, "!admin rooms list").await;
    assert!(rooms.contains(&family), "{rooms}");
}

#[tokio::test]
async fn admins_made_later_are_invited_and_the_command_line_shares_the_commands() {
    let mut server = TestServer::start().await;
    let room_id = admin_room_id(&server).await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (erin_id, erin, _) = server.register("erin", "pw").await;
    let path = format!("/_synapse/admin/v1/users/{}/admin", enc(&erin_id));
    let (status, body) = server
        .call("PUT", &path, Some(&alice), Some(json!({"admin": true})))
        .await;
    assert_eq!(status, 200, "{body}");
    let sync = server.sync(&erin, None, 0, None).await;
    assert!(sync["rooms"]["invite"][&room_id].is_object(), "{sync}");
    server.join(&erin, &room_id).await;
    let listed = ask_text(&server, &erin, &room_id, "!admin users list").await;
    assert!(listed.contains("@alice:localhost\tadmin"), "{listed}");

    // The admin API will not delete it: the bot would leave and later
    // admins could not be invited. It still answers.
    let delete = format!("/_synapse/admin/v2/rooms/{}", enc(&room_id));
    for body in [json!({}), json!({"block": true, "purge": true})] {
        let refused = server.call("DELETE", &delete, Some(&alice), Some(body)).await;
        common::assert_error(&refused, 403, "M_FORBIDDEN");
        assert!(
            refused.1["error"].as_str().unwrap().contains("admin room"),
            "{}",
            refused.1
        );
    }
    let (_, joined) = server
        .call("GET", "/_matrix/client/v3/joined_rooms", Some(&erin), None)
        .await;
    assert!(joined["joined_rooms"].to_string().contains(&room_id), "{joined}");
    let listed = ask_text(&server, &erin, &room_id, "!admin users list").await;
    assert!(listed.contains("@erin:localhost\tadmin"), "{listed}");

    // The same commands from a shell, on the stopped server's database.
    server.stop();
    let config = server.config_path().to_owned();
    let (ok, out, err) = common::run_conduit(&config, &["admin", "tokens", "create", "--uses", "2"]);
    assert!(ok && out.trim().len() >= 16, "{out}{err}");
    let (ok, out, err) = common::run_conduit(&config, &["admin", "server", "stats"]);
    assert!(ok && out.contains("accounts\t3"), "{out}{err}");
    let (ok, _, err) = common::run_conduit(&config, &["admin", "users", "deactivate", "conduit"]);
    assert!(!ok && err.contains("bot"), "{err}");
    let (ok, out, err) = common::run_conduit(&config, &["admin", "users", "create", "frank", "--admin"]);
    assert!(ok && out.contains("@frank:localhost"), "{out}{err}");
    server.start_again();
    let password = out.trim().rsplit(' ').next().unwrap();
    let (status, login) = server.login("frank", password, None).await;
    assert_eq!(status, 200, "{login}");
    let frank = login["access_token"].as_str().unwrap();
    let sync = server.sync(frank, None, 0, None).await;
    assert!(sync["rooms"]["invite"][&room_id].is_object(), "{sync}");
}

/// `conduit admin --token …` manages a running server through its admin
/// API; without a token it says so, and a non-admin's token is refused.
#[tokio::test]
async fn command_line_reaches_a_running_server_with_a_token() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let config = server.config_path().to_owned();
    let base = server.url("");
    let with_token = |token: &str, words: &[&str]| {
        let mut args = vec!["admin", "--token", token, "--server", &base];
        args.extend_from_slice(words);
        common::run_conduit(&config, &args)
    };

    let (ok, _, err) = common::run_conduit(&config, &["admin", "users", "list"]);
    assert!(!ok, "the running server holds the database");
    assert!(err.contains("--token"), "{err}");

    let (ok, out, err) = with_token(&alice, &["users", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains(&alice_id) && out.contains(&bob_id), "{out}");
    let (ok, out, err) = with_token(&alice, &["users", "create", "carol", "--password", "carol-pw"]);
    assert!(ok, "{err}");
    assert!(out.contains("@carol:localhost"), "{out}");
    assert_eq!(server.login("carol", "carol-pw", None).await.0, 200);
    let (ok, out, err) = with_token(&alice, &["server", "stats"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("accounts\t4 (0 deactivated, 1 admins)"),
        "the bot, alice, bob, carol: {out}"
    );

    // A token from a file, of someone who is not an admin.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{bob}\n")).unwrap();
    let (ok, _, err) = common::run_conduit(
        &config,
        &[
            "admin",
            "--token-file",
            token_file.to_str().unwrap(),
            "--server",
            &base,
            "rooms",
            "list",
        ],
    );
    assert!(!ok);
    assert!(err.contains("M_FORBIDDEN"), "{err}");
    let (ok, _, err) = with_token("not-a-token", &["rooms", "list"]);
    assert!(!ok);
    assert!(err.contains("M_UNKNOWN_TOKEN"), "{err}");
}
