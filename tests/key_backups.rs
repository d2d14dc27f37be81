//! Server-side key backups over HTTP: versions, keys at all three levels,
//! counts and etags, the better-key rule and version conflicts.

mod common;

use common::{assert_error, enc, TestServer};
use serde_json::{json, Value};

const ROOM: &str = "!room:localhost";

fn algorithm(key: &str) -> Value {
    json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": key, "signatures": {}}})
}

fn key_data(first_message_index: u64, forwarded_count: u64, is_verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {"ephemeral": tag, "ciphertext": tag, "mac": tag},
    })
}

fn session_path(version: &str, room: &str, session: &str) -> String {
    format!(
        "/_matrix/client/v3/room_keys/keys/{}/{}?version={version}",
        enc(room),
        enc(session)
    )
}

#[tokio::test]
async fn backup_versions_and_keys() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let (server, alice) = (&server, alice.clone());
        async move { server.call(method, &path, Some(&alice), body).await }
    };

    assert_error(
        &call("GET", "/_matrix/client/v3/room_keys/version".into(), None).await,
        404,
        "M_NOT_FOUND",
    );
    let (status, created) = call(
        "POST",
        "/_matrix/client/v3/room_keys/version".into(),
        Some(algorithm("k1")),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let v1 = created["version"].as_str().unwrap().to_owned();
    let (status, latest) = call("GET", "/_matrix/client/v3/room_keys/version".into(), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&latest["version"], &latest["count"], &latest["auth_data"]["public_key"]),
        (&json!(v1), &json!(0), &json!("k1"))
    );
    // Another user has no backup.
    let (status, _) = server
        .call("GET", "/_matrix/client/v3/room_keys/version", Some(&bob), None)
        .await;
    assert_eq!(status, 404);

    // A session key, then a worse one (later index) that does not replace it,
    // then a better one (verified) that does.
    let (status, put) = call(
        "PUT",
        session_path(&v1, ROOM, "s1"),
        Some(key_data(5, 0, false, "first")),
    )
    .await;
    assert_eq!((status, &put["count"]), (200, &json!(1)), "{put}");
    let etag1 = put["etag"].clone();
    let (_, put) = call(
        "PUT",
        session_path(&v1, ROOM, "s1"),
        Some(key_data(9, 0, false, "worse")),
    )
    .await;
    assert_eq!((&put["count"], &put["etag"]), (&json!(1), &etag1));
    let (_, got) = call("GET", session_path(&v1, ROOM, "s1"), None).await;
    assert_eq!(got["session_data"]["ciphertext"], "first");
    let (_, put) = call(
        "PUT",
        session_path(&v1, ROOM, "s1"),
        Some(key_data(9, 3, true, "verified")),
    )
    .await;
    assert_ne!(put["etag"], etag1);
    let (_, got) = call("GET", session_path(&v1, ROOM, "s1"), None).await;
    assert_eq!(got["session_data"]["ciphertext"], "verified");
    // Among equals, the lower forwarded count wins.
    let (_, _) = call(
        "PUT",
        session_path(&v1, ROOM, "s1"),
        Some(key_data(9, 1, true, "fewer hops")),
    )
    .await;
    let (_, got) = call("GET", session_path(&v1, ROOM, "s1"), None).await;
    assert_eq!(got["session_data"]["ciphertext"], "fewer hops");

    // Room and whole-backup levels.
    let (status, put) = call(
        "PUT",
        format!("/_matrix/client/v3/room_keys/keys/{}?version={v1}", enc(ROOM)),
        Some(json!({"sessions": {"s2": key_data(0, 0, false, "two")}})),
    )
    .await;
    assert_eq!((status, &put["count"]), (200, &json!(2)), "{put}");
    let (status, put) = call(
        "PUT",
        format!("/_matrix/client/v3/room_keys/keys?version={v1}"),
        Some(json!({"rooms": {"!other:localhost": {"sessions": {"s3": key_data(0, 0, false, "three")}}}})),
    )
    .await;
    assert_eq!((status, &put["count"]), (200, &json!(3)));
    let (_, all) = call("GET", format!("/_matrix/client/v3/room_keys/keys?version={v1}"), None).await;
    assert_eq!(all["rooms"][ROOM]["sessions"].as_object().unwrap().len(), 2, "{all}");
    assert_eq!(
        all["rooms"]["!other:localhost"]["sessions"]["s3"]["session_data"]["ciphertext"],
        "three"
    );
    let (_, room) = call(
        "GET",
        format!("/_matrix/client/v3/room_keys/keys/{}?version={v1}", enc(ROOM)),
        None,
    )
    .await;
    assert_eq!(room["sessions"].as_object().unwrap().len(), 2);
    assert_error(
        &call("GET", session_path(&v1, ROOM, "nope"), None).await,
        404,
        "M_NOT_FOUND",
    );
    // Malformed key data is refused.
    assert_error(
        &call("PUT", session_path(&v1, ROOM, "bad"), Some(json!({"session_data": {}}))).await,
        400,
        "M_BAD_JSON",
    );

    // A new version: writes to the old one are refused with the current one.
    let (_, created) = call(
        "POST",
        "/_matrix/client/v3/room_keys/version".into(),
        Some(algorithm("k2")),
    )
    .await;
    let v2 = created["version"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let stale = call(
        "PUT",
        session_path(&v1, ROOM, "s9"),
        Some(key_data(0, 0, false, "late")),
    )
    .await;
    assert_error(&stale, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(stale.1["current_version"], json!(v2));
    // The old version can still be read (a client restoring from it).
    let (status, _) = call("GET", session_path(&v1, ROOM, "s1"), None).await;
    assert_eq!(status, 200);

    // auth_data may change; the algorithm may not.
    let mut changed = algorithm("k2-signed");
    changed["version"] = json!(v2);
    let (status, body) = call(
        "PUT",
        format!("/_matrix/client/v3/room_keys/version/{v2}"),
        Some(changed),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, info) = call("GET", format!("/_matrix/client/v3/room_keys/version/{v2}"), None).await;
    assert_eq!(info["auth_data"]["public_key"], "k2-signed");
    let other = json!({"algorithm": "m.other", "auth_data": {}});
    let (status, _) = call("PUT", format!("/_matrix/client/v3/room_keys/version/{v2}"), Some(other)).await;
    assert_eq!(status, 400);

    // Deleting keys at each level keeps count and etag right.
    let (_, del) = call("DELETE", session_path(&v1, ROOM, "s1"), None).await;
    assert_eq!(del["count"], 2, "{del}");
    let (_, del) = call(
        "DELETE",
        format!("/_matrix/client/v3/room_keys/keys/{}?version={v1}", enc(ROOM)),
        None,
    )
    .await;
    assert_eq!(del["count"], 1);
    let (_, del) = call(
        "DELETE",
        format!("/_matrix/client/v3/room_keys/keys?version={v1}"),
        None,
    )
    .await;
    assert_eq!(del["count"], 0);

    // Deleting the newest version leaves the older one current; the number
    // is not handed out again.
    let (status, _) = call("DELETE", format!("/_matrix/client/v3/room_keys/version/{v2}"), None).await;
    assert_eq!(status, 200);
    assert_error(
        &call("GET", format!("/_matrix/client/v3/room_keys/version/{v2}"), None).await,
        404,
        "M_NOT_FOUND",
    );
    let (_, latest) = call("GET", "/_matrix/client/v3/room_keys/version".into(), None).await;
    assert_eq!(latest["version"], json!(v1));
    let (_, created) = call(
        "POST",
        "/_matrix/client/v3/room_keys/version".into(),
        Some(algorithm("k3")),
    )
    .await;
    assert_ne!(created["version"], json!(v2));
    assert_error(
        &call("GET", "/_matrix/client/v3/room_keys/version/999".into(), None).await,
        404,
        "M_NOT_FOUND",
    );
}
