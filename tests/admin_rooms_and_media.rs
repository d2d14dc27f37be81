//! The room and media parts of the admin API (`/_synapse/admin`, Synapse's
//! paths and bodies): listing, details, deletion with block and purge,
//! media deletion and a user's uploads.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

/// A GET of the admin API as `token`; asserts 200.
async fn get(server: &TestServer, token: &str, path: &str) -> Value {
    let (status, body) = server.call("GET", path, Some(token), None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn room_ids(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

fn room_path(room_id: &str) -> String {
    format!("/_synapse/admin/v1/rooms/{}", enc(room_id))
}

#[tokio::test]
async fn every_room_and_media_endpoint_answers_non_admins_403() {
    let server = TestServer::start().await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let (_, user, _) = server.register("user", "pw").await;
    let room = enc(&server.create_room(&user, json!({})).await);
    let mxc = server.upload_media(&user, b"mine".to_vec(), "text/plain", None).await;
    let media_id = mxc.rsplit('/').next().unwrap().to_owned();
    let calls = [
        ("GET", "/_synapse/admin/v1/rooms".to_owned(), None),
        ("GET", format!("/_synapse/admin/v1/rooms/{room}"), None),
        ("GET", format!("/_synapse/admin/v1/rooms/{room}/members"), None),
        ("DELETE", format!("/_synapse/admin/v2/rooms/{room}"), Some(json!({}))),
        ("GET", "/_synapse/admin/v2/rooms/delete_status/x".to_owned(), None),
        ("GET", format!("/_synapse/admin/v2/rooms/{room}/delete_status"), None),
        ("DELETE", format!("/_synapse/admin/v1/media/localhost/{media_id}"), None),
        (
            "POST",
            "/_synapse/admin/v1/purge_media_cache?before_ts=1".to_owned(),
            None,
        ),
        (
            "GET",
            format!("/_synapse/admin/v1/users/{}/media", enc("@user:localhost")),
            None,
        ),
    ];
    for (method, path, body) in calls {
        assert_error(&server.call(method, &path, Some(&user), body).await, 403, "M_FORBIDDEN");
        assert_error(&server.call(method, &path, None, None).await, 401, "M_MISSING_TOKEN");
    }
    // Nothing was done: the room and the media are still there.
    let listed = get(&server, &admin, "/_synapse/admin/v1/rooms").await;
    assert_eq!(listed["total_rooms"], 1, "{listed}");
    let media = get(
        &server,
        &admin,
        &format!("/_synapse/admin/v1/users/{}/media", enc("@user:localhost")),
    )
    .await;
    assert_eq!(media["total"], 1, "{media}");
}

#[tokio::test]
async fn admins_list_rooms_page_by_page_searched_and_ordered() {
    let server = TestServer::start().await;
    let (admin_id, admin, _) = server.register("admin", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let alpha = server
        .create_room(
            &admin,
            json!({"name": "Alpha club", "preset": "public_chat", "room_alias_name": "alpha", "visibility": "public"}),
        )
        .await;
    server.join(&bob, &alpha).await;
    let beta = server.create_room(&admin, json!({"name": "Beta"})).await;
    let gamma = server.create_room(&bob, json!({"name": "Gamma"})).await;

    // Ordered by name by default; pages of two.
    let page = get(&server, &admin, "/_synapse/admin/v1/rooms?limit=2").await;
    assert_eq!(room_ids(&page), [alpha.clone(), beta.clone()]);
    assert_eq!(
        (page["offset"].clone(), page["total_rooms"].clone()),
        (json!(0), json!(3))
    );
    assert_eq!(page["next_batch"], 2, "{page}");
    assert!(page.get("prev_batch").is_none(), "{page}");
    let rest = get(&server, &admin, "/_synapse/admin/v1/rooms?limit=2&from=2").await;
    assert_eq!(room_ids(&rest), std::slice::from_ref(&gamma));
    assert_eq!(rest["prev_batch"], 0, "{rest}");
    assert!(rest.get("next_batch").is_none(), "{rest}");
    let backwards = get(&server, &admin, "/_synapse/admin/v1/rooms?dir=b").await;
    assert_eq!(room_ids(&backwards), [gamma.clone(), beta.clone(), alpha.clone()]);

    // The fields of a listed room.
    let first = &page["rooms"][0];
    assert_eq!(first["name"], "Alpha club");
    assert_eq!(first["canonical_alias"], "#alpha:localhost");
    assert_eq!(
        (first["joined_members"].clone(), first["joined_local_members"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(first["creator"], admin_id);
    assert_eq!(first["public"], true);
    assert_eq!(first["join_rules"], "public");
    assert_eq!(first["federatable"], true);
    assert!(first["state_events"].as_u64().unwrap() >= 6, "{first}");
    assert!(first["version"].is_string(), "{first}");
    assert_eq!(page["rooms"][1]["public"], false);

    // Most members first; the search matches names, aliases and IDs.
    let by_size = get(&server, &admin, "/_synapse/admin/v1/rooms?order_by=joined_members").await;
    assert_eq!(room_ids(&by_size)[0], alpha);
    for (term, found) in [
        ("ALPHA", vec![alpha.clone()]),
        ("gam", vec![gamma.clone()]),
        (&beta[..], vec![beta.clone()]),
        ("nothing", vec![]),
    ] {
        let searched = get(
            &server,
            &admin,
            &format!("/_synapse/admin/v1/rooms?search_term={}", enc(term)),
        )
        .await;
        assert_eq!(room_ids(&searched), found, "{term}");
        assert_eq!(searched["total_rooms"], found.len(), "{term}");
    }
    assert_error(
        &server
            .call("GET", "/_synapse/admin/v1/rooms?order_by=colour", Some(&admin), None)
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .call("GET", "/_synapse/admin/v1/rooms?dir=sideways", Some(&admin), None)
            .await,
        400,
        "M_INVALID_PARAM",
    );

    // One room's details and members.
    let details = get(&server, &admin, &room_path(&alpha)).await;
    assert_eq!(details["room_id"], alpha);
    assert_eq!(details["joined_local_devices"], 2, "{details}");
    let members = get(&server, &admin, &format!("{}/members", room_path(&alpha))).await;
    assert_eq!(members["total"], 2);
    let mut names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["@admin:localhost", "@bob:localhost"]);
    let unknown = room_path("!nosuchroom:localhost");
    assert_error(
        &server.call("GET", &unknown, Some(&admin), None).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .call("GET", &format!("{unknown}/members"), Some(&admin), None)
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server.call("GET", &room_path("not-a-room"), Some(&admin), None).await,
        400,
        "M_INVALID_PARAM",
    );
}

/// `DELETE v2/rooms/{room_id}` with `body`; returns the `delete_id`.
async fn delete_room(server: &TestServer, admin: &str, room_id: &str, body: Value) -> String {
    let path = format!("/_synapse/admin/v2/rooms/{}", enc(room_id));
    let (status, deleted) = server.call("DELETE", &path, Some(admin), Some(body)).await;
    assert_eq!(status, 200, "{deleted}");
    deleted["delete_id"].as_str().expect("delete_id").to_owned()
}

#[tokio::test]
async fn a_blocked_room_loses_its_local_members_and_refuses_their_joins() {
    let server = TestServer::start().await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({"preset": "public_chat", "name": "Loud"}))
        .await;
    server.join(&bob, &room).await;

    let delete_id = delete_room(&server, &admin, &room, json!({"block": true, "purge": false})).await;
    let status = get(
        &server,
        &admin,
        &format!("/_synapse/admin/v2/rooms/delete_status/{delete_id}"),
    )
    .await;
    assert_eq!(status["status"], "complete", "{status}");
    let mut kicked: Vec<&str> = status["shutdown_room"]["kicked_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    kicked.sort_unstable();
    assert_eq!(kicked, [alice_id.as_str(), bob_id.as_str()]);
    let by_room = get(
        &server,
        &admin,
        &format!("/_synapse/admin/v2/rooms/{}/delete_status", enc(&room)),
    )
    .await;
    assert_eq!(by_room["results"][0]["delete_id"], delete_id, "{by_room}");

    // Nobody is left; the room is still listed, empty.
    let members = get(&server, &admin, &format!("{}/members", room_path(&room))).await;
    assert_eq!(members["total"], 0, "{members}");
    for token in [&alice, &bob] {
        let (status, joined) = server
            .call("GET", "/_matrix/client/v3/joined_rooms", Some(token), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(joined["joined_rooms"], json!([]));
        // Blocked: a join is refused.
        let join = format!("/_matrix/client/v3/join/{}", enc(&room));
        assert_error(
            &server.call("POST", &join, Some(token), Some(json!({}))).await,
            403,
            "M_FORBIDDEN",
        );
    }
    assert_eq!(get(&server, &admin, &room_path(&room)).await["joined_members"], 0);

    assert_error(
        &server
            .call(
                "GET",
                "/_synapse/admin/v2/rooms/delete_status/nosuchid",
                Some(&admin),
                None,
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    let never_deleted = server.create_room(&alice, json!({})).await;
    let path = format!("/_synapse/admin/v2/rooms/{}/delete_status", enc(&never_deleted));
    assert_error(&server.call("GET", &path, Some(&admin), None).await, 404, "M_NOT_FOUND");
    let unknown = "/_synapse/admin/v2/rooms/!nosuchroom:localhost";
    assert_error(
        &server.call("DELETE", unknown, Some(&admin), Some(json!({}))).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn a_purged_room_leaves_the_directory_and_is_gone_for_local_users() {
    let server = TestServer::start().await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "visibility": "public", "room_alias_name": "town"}),
        )
        .await;
    let kept = server.create_room(&alice, json!({"name": "Kept"})).await;
    let (_, directory) = server.call("GET", "/_matrix/client/v3/publicRooms", None, None).await;
    assert_eq!(directory["chunk"][0]["room_id"], room, "{directory}");

    // No body at all: Synapse's defaults, purge without block.
    let path = format!("/_synapse/admin/v2/rooms/{}", enc(&room));
    let (status, deleted) = server.call_raw("DELETE", &path, Some(&admin), Vec::new()).await;
    assert_eq!(status, 200, "{deleted}");
    let status = get(
        &server,
        &admin,
        &format!(
            "/_synapse/admin/v2/rooms/delete_status/{}",
            deleted["delete_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        status["shutdown_room"]["local_aliases"],
        json!(["#town:localhost"]),
        "{status}"
    );

    let (_, directory) = server.call("GET", "/_matrix/client/v3/publicRooms", None, None).await;
    assert_eq!(directory["chunk"], json!([]), "{directory}");
    let alias = format!("/_matrix/client/v3/directory/room/{}", enc("#town:localhost"));
    assert_error(
        &server.call("GET", &alias, Some(&alice), None).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server.call("GET", &room_path(&room), Some(&admin), None).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(
        room_ids(&get(&server, &admin, "/_synapse/admin/v1/rooms").await),
        [kept]
    );
    let join = format!("/_matrix/client/v3/join/{}", enc(&room));
    assert_error(
        &server.call("POST", &join, Some(&alice), Some(json!({}))).await,
        404,
        "M_NOT_FOUND",
    );
    // Forgotten: the room is no longer in Alice's sync.
    let sync = server.sync(&alice, None, 0, None).await;
    assert!(sync["rooms"]["leave"].get(&room).is_none(), "{sync}");
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
}

/// A GET of a local download: its status and bytes.
async fn download(server: &TestServer, token: &str, media_id: &str) -> (u16, Vec<u8>) {
    let path = format!("/_matrix/client/v1/media/download/localhost/{media_id}");
    let resp = server
        .client
        .get(server.url(&path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

async fn upload(server: &TestServer, token: &str, bytes: &[u8], filename: &str) -> String {
    let uri = server
        .upload_media(token, bytes.to_vec(), "text/plain", Some(filename))
        .await;
    uri.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn admins_list_a_users_uploads_and_delete_media() {
    let server = TestServer::start().await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    // A millisecond apart at least: the list is oldest first by upload
    // time, and uploads within one millisecond are ordered by ID.
    let tick = || tokio::time::sleep(std::time::Duration::from_millis(2));
    let first = upload(&server, &alice, b"first", "one.txt").await;
    tick().await;
    let second = upload(&server, &alice, b"second", "two.txt").await;
    tick().await;
    let third = upload(&server, &alice, b"shared", "three.txt").await;
    // The same bytes from the admin: one file under two IDs.
    let admins_copy = upload(&server, &admin, b"shared", "copy.txt").await;

    let media_path = |query: &str| format!("/_synapse/admin/v1/users/{}/media?{query}", enc("@alice:localhost"));
    let listed = get(&server, &admin, &media_path("limit=2")).await;
    assert_eq!(listed["total"], 3, "{listed}");
    assert_eq!(listed["next_token"], 2, "{listed}");
    let ids = |page: &Value| -> Vec<String> {
        page["media"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["media_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&listed), [first.clone(), second.clone()]);
    assert_eq!(listed["media"][0]["media_length"], 5);
    assert_eq!(listed["media"][0]["upload_name"], "one.txt");
    assert_eq!(listed["media"][0]["media_type"], "text/plain");
    let rest = get(&server, &admin, &media_path("from=2")).await;
    assert_eq!(ids(&rest), std::slice::from_ref(&third));
    assert!(rest.get("next_token").is_none(), "{rest}");
    let unknown = format!("/_synapse/admin/v1/users/{}/media", enc("@nobody:localhost"));
    assert_error(
        &server.call("GET", &unknown, Some(&admin), None).await,
        404,
        "M_NOT_FOUND",
    );

    // Deleted: the download is 404, the other uploads stay.
    assert_eq!(download(&server, &alice, &first).await, (200, b"first".to_vec()));
    let path = |server_name: &str, id: &str| format!("/_synapse/admin/v1/media/{server_name}/{id}");
    let (status, deleted) = server
        .call("DELETE", &path("localhost", &first), Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted, json!({"deleted_media": [first], "total": 1}));
    assert_eq!(download(&server, &alice, &first).await.0, 404);
    assert_eq!(download(&server, &alice, &second).await, (200, b"second".to_vec()));
    assert_eq!(get(&server, &admin, &media_path("")).await["total"], 2);

    // A file two IDs share stays while one of them remains.
    let (status, _) = server
        .call("DELETE", &path("localhost", &third), Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(download(&server, &alice, &third).await.0, 404);
    assert_eq!(download(&server, &admin, &admins_copy).await, (200, b"shared".to_vec()));

    assert_error(
        &server
            .call("DELETE", &path("localhost", &first), Some(&admin), None)
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .call("DELETE", &path("elsewhere.test", &second), Some(&admin), None)
            .await,
        400,
        "M_UNKNOWN",
    );
    assert_error(
        &server
            .call("POST", "/_synapse/admin/v1/purge_media_cache", Some(&admin), None)
            .await,
        400,
        "M_MISSING_PARAM",
    );
    // No remote media here: nothing purged, local media untouched.
    let (status, purged) = server
        .call(
            "POST",
            "/_synapse/admin/v1/purge_media_cache?before_ts=99999999999999",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((status, purged), (200, json!({"deleted": 0})));
    assert_eq!(download(&server, &alice, &second).await.0, 200);
}
