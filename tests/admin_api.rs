//! The admin HTTP API (`/_synapse/admin`, Synapse's paths and bodies): for
//! server admins only.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn only_admins_may_call_the_admin_api() {
    let server = TestServer::start().await;
    // The first account registered is the server's admin.
    let (_, admin, _) = server.register("admin", "pw").await;
    let (_, user, _) = server.register("user", "pw").await;
    let path = "/_synapse/admin/v1/server_version";
    let (status, body) = server.call("GET", path, Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server_version"], env!("CARGO_PKG_VERSION"));
    assert_error(&server.call("GET", path, Some(&user), None).await, 403, "M_FORBIDDEN");
    assert_error(&server.call("GET", path, None, None).await, 401, "M_MISSING_TOKEN");
}

fn user_path(user_id: &str) -> String {
    format!("/_synapse/admin/v2/users/{}", enc(user_id))
}

/// `GET v2/users` with `query`, as `token`; asserts 200.
async fn list(server: &TestServer, token: &str, query: &str) -> Value {
    let (status, body) = server
        .call("GET", &format!("/_synapse/admin/v2/users?{query}"), Some(token), None)
        .await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

fn names(page: &Value) -> Vec<String> {
    page["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Creates a user with `PUT v2/users/{id}`; asserts 201.
async fn create(server: &TestServer, admin: &str, user_id: &str, body: Value) -> Value {
    let (status, created) = server.call("PUT", &user_path(user_id), Some(admin), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created
}

#[tokio::test]
async fn every_user_endpoint_answers_non_admins_403() {
    let server = TestServer::start().await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let (_, user, _) = server.register("user", "pw").await;
    let target = enc("@user:localhost");
    let calls = [
        ("GET", "/_synapse/admin/v2/users".to_owned(), None),
        ("GET", format!("/_synapse/admin/v2/users/{target}"), None),
        (
            "PUT",
            format!("/_synapse/admin/v2/users/{target}"),
            Some(json!({"displayname": "x"})),
        ),
        (
            "POST",
            format!("/_synapse/admin/v1/deactivate/{target}"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/_synapse/admin/v1/reset_password/{target}"),
            Some(json!({"new_password": "x"})),
        ),
        ("GET", format!("/_synapse/admin/v1/whois/{target}"), None),
        ("GET", format!("/_synapse/admin/v1/users/{target}/joined_rooms"), None),
        ("GET", format!("/_synapse/admin/v1/users/{target}/admin"), None),
        (
            "PUT",
            format!("/_synapse/admin/v1/users/{target}/admin"),
            Some(json!({"admin": true})),
        ),
    ];
    for (method, path, body) in &calls {
        let got = server.call(method, path, Some(&user), body.clone()).await;
        assert_error(&got, 403, "M_FORBIDDEN");
        assert_error(
            &server.call(method, path, None, body.clone()).await,
            401,
            "M_MISSING_TOKEN",
        );
    }
    // Nothing the refused calls asked for happened.
    let (status, whoami) = server.whoami(&user).await;
    assert_eq!(status, 200, "{whoami}");
    let (_, flag) = server
        .call(
            "GET",
            &format!("/_synapse/admin/v1/users/{target}/admin"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(flag, json!({"admin": false}));
    // And the admin gets answers from each (the refused PUTs are harmless to repeat).
    for (method, path, body) in &calls[..3] {
        let (status, got) = server.call(method, path, Some(&admin), body.clone()).await;
        assert_eq!(status, 200, "{method} {path}: {got}");
    }
}

#[tokio::test]
async fn admins_list_users_page_by_page_and_filtered() {
    let server = TestServer::start_with("allow_guest_access = true").await;
    let (admin_id, admin, _) = server.register("admin", "pw").await;
    for (name, display) in [
        ("carol", "Carol Singer"),
        ("dave", "Dave"),
        ("erin", "Erin"),
        ("frank", "Frank"),
    ] {
        create(
            &server,
            &admin,
            &format!("@{name}:localhost"),
            json!({"password": "pw", "displayname": display}),
        )
        .await;
    }
    let (status, guest) = server
        .call("POST", "/_matrix/client/v3/register?kind=guest", None, Some(json!({})))
        .await;
    assert_eq!(status, 200, "{guest}");
    let guest_id = guest["user_id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .call(
            "POST",
            "/_synapse/admin/v1/deactivate/%40frank%3Alocalhost",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // Every active account, in name order, two at a time.
    let mut seen = Vec::new();
    let mut from = "0".to_owned();
    for _ in 0..10 {
        let page = list(&server, &admin, &format!("limit=2&from={from}")).await;
        assert_eq!(page["total"], 5, "{page}");
        assert!(names(&page).len() <= 2);
        seen.extend(names(&page));
        match page["next_token"].as_str() {
            Some(next) => from = next.to_owned(),
            None => break,
        }
    }
    let mut expected = vec![
        admin_id.clone(),
        "@carol:localhost".to_owned(),
        "@dave:localhost".to_owned(),
        "@erin:localhost".to_owned(),
        guest_id.clone(),
    ];
    expected.sort();
    assert_eq!(seen, expected);

    let all = list(&server, &admin, "deactivated=true").await;
    assert_eq!(all["total"], 6);
    assert!(all.get("next_token").is_none(), "{all}");
    let frank = all["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "@frank:localhost")
        .expect("the deactivated user is listed with deactivated=true");
    assert_eq!(frank["deactivated"], true);
    let carol = &list(&server, &admin, "name=singer").await["users"];
    assert_eq!(carol.as_array().unwrap().len(), 1, "{carol}");
    assert_eq!(carol[0]["name"], "@carol:localhost");
    assert_eq!(carol[0]["displayname"], "Carol Singer");
    assert_eq!(carol[0]["is_guest"], false);
    assert_eq!(carol[0]["admin"], false);
    assert_eq!(carol[0]["user_type"], Value::Null);
    assert_eq!(carol[0]["shadow_banned"], false);
    assert!(carol[0]["creation_ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(
        names(&list(&server, &admin, "user_id=DAVE").await),
        vec!["@dave:localhost"]
    );
    assert_eq!(
        names(&list(&server, &admin, "admins=true").await),
        vec![admin_id.clone()]
    );
    assert!(!names(&list(&server, &admin, "admins=false").await).contains(&admin_id));
    let no_guests = names(&list(&server, &admin, "guests=false").await);
    assert!(!no_guests.contains(&guest_id) && no_guests.len() == 4, "{no_guests:?}");
    // Newest first: the guest registered last.
    let newest = list(&server, &admin, "order_by=creation_ts&dir=b&limit=1").await;
    assert_eq!(names(&newest), vec![guest_id.clone()]);
    assert_eq!(newest["next_token"], "1");
    let reversed = names(&list(&server, &admin, "dir=b").await);
    let mut descending = expected.clone();
    descending.reverse();
    assert_eq!(reversed, descending);

    for bad in ["order_by=height", "dir=up", "limit=-1", "from=x", "guests=yes"] {
        let got = server
            .call("GET", &format!("/_synapse/admin/v2/users?{bad}"), Some(&admin), None)
            .await;
        assert_error(&got, 400, "M_INVALID_PARAM");
    }
}

#[tokio::test]
async fn admins_create_modify_reset_and_deactivate_users() {
    let server = TestServer::start().await;
    let (admin_id, admin, _) = server.register("admin", "pw").await;
    let grace = "@grace:localhost";

    // Unknown, then created (201), then changed (200).
    assert_error(
        &server.call("GET", &user_path(grace), Some(&admin), None).await,
        404,
        "M_NOT_FOUND",
    );
    let created = create(
        &server,
        &admin,
        grace,
        json!({"password": "first", "displayname": "Grace H"}),
    )
    .await;
    assert_eq!(created["name"], grace);
    assert_eq!(created["displayname"], "Grace H");
    assert_eq!(created["deactivated"], false);
    let (status, login) = server.login("grace", "first", None).await;
    assert_eq!(status, 200, "{login}");
    let grace_token = login["access_token"].as_str().unwrap().to_owned();
    let (status, changed) = server
        .call(
            "PUT",
            &user_path(grace),
            Some(&admin),
            Some(json!({"displayname": "Grace Hopper", "avatar_url": "mxc://localhost/abc", "admin": true})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["admin"], true);
    let (_, profile) = server
        .call("GET", &format!("/_matrix/client/v3/profile/{}", enc(grace)), None, None)
        .await;
    assert_eq!(profile["displayname"], "Grace Hopper");
    assert_eq!(profile["avatar_url"], "mxc://localhost/abc");
    let admin_flag = format!("/_synapse/admin/v1/users/{}/admin", enc(grace));
    assert_eq!(
        server.call("GET", &admin_flag, Some(&admin), None).await.1,
        json!({"admin": true})
    );
    let (status, _) = server
        .call("PUT", &admin_flag, Some(&admin), Some(json!({"admin": false})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        server.call("GET", &admin_flag, Some(&admin), None).await.1,
        json!({"admin": false})
    );
    // An admin cannot demote themself, by either path.
    let own_flag = format!("/_synapse/admin/v1/users/{}/admin", enc(&admin_id));
    assert_error(
        &server
            .call("PUT", &own_flag, Some(&admin), Some(json!({"admin": false})))
            .await,
        400,
        "M_UNKNOWN",
    );
    let demote_self = server
        .call(
            "PUT",
            &user_path(&admin_id),
            Some(&admin),
            Some(json!({"admin": false})),
        )
        .await;
    assert_error(&demote_self, 400, "M_UNKNOWN");
    assert_error(
        &server.call("PUT", &own_flag, Some(&admin), Some(json!({}))).await,
        400,
        "M_MISSING_PARAM",
    );

    // A password set without logging out keeps the session; a reset logs out.
    let (status, _) = server
        .call(
            "PUT",
            &user_path(grace),
            Some(&admin),
            Some(json!({"password": "second", "logout_devices": false})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(server.whoami(&grace_token).await.0, 200);
    let reset = format!("/_synapse/admin/v1/reset_password/{}", enc(grace));
    let (status, body) = server
        .call("POST", &reset, Some(&admin), Some(json!({"new_password": "third"})))
        .await;
    assert_eq!((status, body), (200, json!({})));
    assert_error(&server.whoami(&grace_token).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&server.login("grace", "second", None).await, 403, "M_FORBIDDEN");
    let (status, login) = server.login("grace", "third", None).await;
    assert_eq!(status, 200, "{login}");
    assert_error(
        &server.call("POST", &reset, Some(&admin), Some(json!({}))).await,
        400,
        "M_MISSING_PARAM",
    );

    // Deactivated and erased: no login, marked so in the listing.
    let deactivate = format!("/_synapse/admin/v1/deactivate/{}", enc(grace));
    let (status, body) = server
        .call("POST", &deactivate, Some(&admin), Some(json!({"erase": true})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id_server_unbind_result"], "success");
    let (_, shown) = server.call("GET", &user_path(grace), Some(&admin), None).await;
    assert_eq!(shown["deactivated"], true, "{shown}");
    assert_eq!(shown["erased"], true, "{shown}");
    assert_eq!(shown["displayname"], Value::Null);
    assert_error(&server.login("grace", "third", None).await, 403, "M_USER_DEACTIVATED");
    // Reactivated with a new password.
    let (status, back) = server
        .call(
            "PUT",
            &user_path(grace),
            Some(&admin),
            Some(json!({"deactivated": false, "password": "fourth"})),
        )
        .await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["deactivated"], false);
    assert_eq!(server.login("grace", "fourth", None).await.0, 200);
    // And deactivated again through PUT.
    let (_, again) = server
        .call(
            "PUT",
            &user_path(grace),
            Some(&admin),
            Some(json!({"deactivated": true})),
        )
        .await;
    assert_eq!(again["deactivated"], true, "{again}");

    // Other servers' users, unknown users and bad IDs.
    let remote = enc("@someone:elsewhere.example");
    assert_error(
        &server
            .call("GET", &user_path("@someone:elsewhere.example"), Some(&admin), None)
            .await,
        400,
        "M_UNKNOWN",
    );
    let put_remote = server
        .call(
            "PUT",
            &user_path("@someone:elsewhere.example"),
            Some(&admin),
            Some(json!({"password": "x"})),
        )
        .await;
    assert_error(&put_remote, 400, "M_UNKNOWN");
    let deactivate_remote = format!("/_synapse/admin/v1/deactivate/{remote}");
    assert_error(
        &server.call("POST", &deactivate_remote, Some(&admin), None).await,
        400,
        "M_UNKNOWN",
    );
    let deactivate_unknown = format!("/_synapse/admin/v1/deactivate/{}", enc("@nobody:localhost"));
    assert_error(
        &server.call("POST", &deactivate_unknown, Some(&admin), None).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .call("GET", &user_path("not-a-user-id"), Some(&admin), None)
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let bad_type = server
        .call("PUT", &user_path(grace), Some(&admin), Some(json!({"admin": "yes"})))
        .await;
    assert_error(&bad_type, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn whois_shows_devices_and_joined_rooms_lists_rooms() {
    let server = TestServer::start().await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let (heidi, token, device) = server.register("heidi", "pw").await;
    let room_id = server.create_room(&token, json!({})).await;
    let (status, whois) = server
        .call(
            "GET",
            &format!("/_synapse/admin/v1/whois/{}", enc(&heidi)),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{whois}");
    assert_eq!(whois["user_id"], heidi.as_str());
    let connection = &whois["devices"][&device]["sessions"][0]["connections"][0];
    assert_eq!(connection["ip"], "127.0.0.1", "{whois}");
    assert!(connection["last_seen"].as_u64().unwrap() > 1_600_000_000_000, "{whois}");
    let rooms_path = format!("/_synapse/admin/v1/users/{}/joined_rooms", enc(&heidi));
    let (status, rooms) = server.call("GET", &rooms_path, Some(&admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(rooms, json!({"joined_rooms": [room_id], "total": 1}));
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, rooms) = server.call("GET", &rooms_path, Some(&admin), None).await;
    assert_eq!(rooms, json!({"joined_rooms": [], "total": 0}));
    let unknown = format!("/_synapse/admin/v1/whois/{}", enc("@nobody:localhost"));
    assert_error(
        &server.call("GET", &unknown, Some(&admin), None).await,
        404,
        "M_NOT_FOUND",
    );
}

/// The hex HMAC-SHA1 Synapse's shared-secret registration asks for.
fn registration_mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    let admin = if admin { "admin" } else { "notadmin" };
    mac.update(format!("{nonce}\0{user}\0{password}\0{admin}").as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

async fn nonce(server: &TestServer) -> String {
    let (status, body) = server.call("GET", "/_synapse/admin/v1/register", None, None).await;
    assert_eq!(status, 200, "{body}");
    body["nonce"].as_str().expect("nonce").to_owned()
}

#[tokio::test]
async fn shared_secret_registration_needs_the_right_mac_and_a_fresh_nonce() {
    let secret = "a shared secret";
    let server = TestServer::start_with(&format!(
        "allow_registration = false\nregistration_shared_secret = {secret:?}"
    ))
    .await;
    let register = |body: Value| server.call("POST", "/_synapse/admin/v1/register", None, Some(body));

    let first = nonce(&server).await;
    let mac = registration_mac(secret, &first, "ivan", "pw1", true);
    let (status, body) = register(json!({"nonce": first, "username": "ivan", "password": "pw1", "admin": true, "displayname": "Ivan", "mac": mac})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@ivan:localhost");
    assert_eq!(body["home_server"], "localhost");
    assert!(body["device_id"].is_string());
    let ivan = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(server.whoami(&ivan).await.1["user_id"], "@ivan:localhost");
    // Made an admin as asked: the admin API answers them.
    let (_, shown) = server
        .call("GET", &user_path("@ivan:localhost"), Some(&ivan), None)
        .await;
    assert_eq!(shown["admin"], true, "{shown}");
    assert_eq!(shown["displayname"], "Ivan");
    assert_eq!(server.login("ivan", "pw1", None).await.0, 200);

    // The same nonce again is refused, even with a right MAC.
    let again = registration_mac(secret, &first, "judy", "pw", false);
    let reused = register(json!({"nonce": first, "username": "judy", "password": "pw", "mac": again})).await;
    assert_error(&reused, 400, "M_UNKNOWN");

    // A wrong MAC: 403, and that nonce is spent too.
    let second = nonce(&server).await;
    let wrong = registration_mac("not the secret", &second, "judy", "pw", false);
    assert_error(
        &register(json!({"nonce": second, "username": "judy", "password": "pw", "mac": wrong})).await,
        403,
        "M_FORBIDDEN",
    );
    let right = registration_mac(secret, &second, "judy", "pw", false);
    assert_error(
        &register(json!({"nonce": second, "username": "judy", "password": "pw", "mac": right})).await,
        400,
        "M_UNKNOWN",
    );
    // A MAC for notadmin does not make an admin.
    let third = nonce(&server).await;
    let notadmin = registration_mac(secret, &third, "judy", "pw", false);
    let forged =
        register(json!({"nonce": third, "username": "judy", "password": "pw", "admin": true, "mac": notadmin})).await;
    assert_error(&forged, 403, "M_FORBIDDEN");
    let fourth = nonce(&server).await;
    let mac = registration_mac(secret, &fourth, "judy", "pw", false);
    let (status, judy) = register(json!({"nonce": fourth, "username": "judy", "password": "pw", "mac": mac})).await;
    assert_eq!(status, 200, "{judy}");
    let judy_token = judy["access_token"].as_str().unwrap();
    assert_error(
        &server
            .call("GET", "/_synapse/admin/v2/users", Some(judy_token), None)
            .await,
        403,
        "M_FORBIDDEN",
    );
    let fifth = nonce(&server).await;
    let taken = registration_mac(secret, &fifth, "judy", "pw", false);
    assert_error(
        &register(json!({"nonce": fifth, "username": "judy", "password": "pw", "mac": taken})).await,
        400,
        "M_USER_IN_USE",
    );
    // Open registration stays closed.
    let (status, _) = server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "mallory", "password": "pw"})),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn shared_secret_registration_is_off_without_a_secret() {
    let server = TestServer::start().await;
    assert_error(
        &server.call("GET", "/_synapse/admin/v1/register", None, None).await,
        400,
        "M_UNKNOWN",
    );
    let body = json!({"nonce": "n", "username": "u", "password": "p", "mac": "00"});
    assert_error(
        &server
            .call("POST", "/_synapse/admin/v1/register", None, Some(body))
            .await,
        400,
        "M_UNKNOWN",
    );
}

#[tokio::test]
async fn the_health_check_answers_without_a_token() {
    let server = TestServer::start().await;
    let (status, body) = server.call("GET", "/_conduit/health", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn the_admin_command_line_manages_users_and_lists_rooms() {
    let mut server = TestServer::start().await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let room_id = server.create_room(&admin, json!({"name": "Family"})).await;
    server.stop();
    let config = server.config_path().to_owned();
    let admin_cli = |args: &[&str]| {
        let args: Vec<&str> = std::iter::once("admin").chain(args.iter().copied()).collect();
        common::run_conduit(&config, &args)
    };
    let (ok, out, err) = admin_cli(&["users", "create", "bob", "--password", "first"]);
    assert!(ok && out.contains("@bob:localhost"), "{out}{err}");
    let (ok, _, err) = admin_cli(&["users", "create", "bob"]);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = admin_cli(&["users", "reset-password", "bob", "--password", "second"]);
    assert!(ok, "{err}");
    let (ok, out, _) = admin_cli(&["rooms", "list"]);
    assert!(ok && out.contains(&room_id) && out.contains("Family"), "{out}");

    server.start_again();
    assert_eq!(server.login("bob", "second", None).await.0, 200);
    assert_eq!(server.login("bob", "first", None).await.0, 403);
    server.stop();

    let (ok, _, err) = admin_cli(&["users", "deactivate", "bob"]);
    assert!(ok, "{err}");
    let (ok, out, _) = admin_cli(&["users", "list"]);
    let bob = out
        .lines()
        .find(|l| l.starts_with("@bob:localhost"))
        .unwrap_or_default();
    assert!(ok && bob.contains("deactivated"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("@admin:localhost\tadmin")), "{out}");
    server.start_again();
    assert_ne!(server.login("bob", "second", None).await.0, 200);
}
