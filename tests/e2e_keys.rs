//! End-to-end encryption over HTTP: device, one-time, fallback and
//! cross-signing keys, signatures, device lists and to-device messages.

mod common;

use common::keys::{cross_key, device_keys, new_key, public, signed};
use common::{assert_error, enc, password_auth, TestServer};
use ruma::serde::{base64::Standard, Base64};
use ruma::signatures::Ed25519KeyPair;
use serde_json::{json, Value};

/// A cross-signing key whose key ID is its public key.
fn cross_signing_key(user: &str, usage: &str, key: &Ed25519KeyPair) -> Value {
    json!({
        "user_id": user,
        "usage": [usage],
        "keys": { format!("ed25519:{}", public(key)): public(key) },
    })
}

async fn upload(server: &TestServer, token: &str, body: Value) -> (u16, Value) {
    server
        .call("POST", "/_matrix/client/v3/keys/upload", Some(token), Some(body))
        .await
}

async fn query(server: &TestServer, token: &str, users: &[&str]) -> Value {
    let wanted: serde_json::Map<String, Value> = users.iter().map(|u| (u.to_string(), json!([]))).collect();
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(token),
            Some(json!({ "device_keys": wanted })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn claim(server: &TestServer, token: &str, user: &str, device: &str) -> Value {
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(token),
            Some(json!({"one_time_keys": {user: {device: "signed_curve25519"}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["one_time_keys"][user][device].clone()
}

fn one_time_key(n: u32) -> Value {
    json!({ "key": Base64::<Standard>::new(vec![n as u8; 32]).encode() })
}

#[tokio::test]
async fn device_keys_are_checked_stored_and_queried() {
    let server = TestServer::start().await;
    let (alice_id, alice, alice_dev) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let key = new_key(&alice_dev);

    // A signature that does not verify is refused, and nothing is stored.
    let mut forged = device_keys(&alice_id, &alice_dev, &key);
    forged["keys"][format!("curve25519:{alice_dev}")] = json!("AAAAforgedAAAA");
    assert_error(
        &upload(&server, &alice, json!({ "device_keys": forged })).await,
        400,
        "M_INVALID_PARAM",
    );
    // So are keys for another device or user.
    let other = device_keys(&alice_id, "OTHERDEVICE", &new_key("OTHERDEVICE"));
    assert_error(
        &upload(&server, &alice, json!({ "device_keys": other })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert!(query(&server, &bob, &[&alice_id]).await["device_keys"][&alice_id]
        .as_object()
        .unwrap()
        .is_empty());

    let keys = device_keys(&alice_id, &alice_dev, &key);
    let (status, body) = upload(
        &server,
        &alice,
        json!({
            "device_keys": keys,
            "one_time_keys": {"signed_curve25519:AAAAAQ": one_time_key(1), "signed_curve25519:AAAAAg": one_time_key(2)},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2);

    // Bob sees the keys exactly as signed, with the device's name.
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/devices/{alice_dev}"),
            Some(&alice),
            Some(json!({"display_name": "Alice's laptop"})),
        )
        .await;
    assert_eq!(status, 200);
    let got = query(&server, &bob, &[&alice_id]).await;
    let device = &got["device_keys"][&alice_id][&alice_dev];
    assert_eq!(device["keys"], keys["keys"]);
    assert_eq!(device["signatures"], keys["signatures"]);
    assert_eq!(device["unsigned"]["device_display_name"], "Alice's laptop");

    // The same keys again are fine; different keys for the device are not.
    assert_eq!(upload(&server, &alice, json!({ "device_keys": keys })).await.0, 200);
    let replaced = device_keys(&alice_id, &alice_dev, &new_key(&alice_dev));
    assert_error(
        &upload(&server, &alice, json!({ "device_keys": replaced })).await,
        400,
        "M_INVALID_PARAM",
    );
    // A one-time key ID cannot be reused for a different key.
    assert_error(
        &upload(
            &server,
            &alice,
            json!({"one_time_keys": {"signed_curve25519:AAAAAQ": one_time_key(9)}}),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    // A remote user is reported as a failure, not an error.
    let got = query(&server, &bob, &["@carol:elsewhere.example"]).await;
    assert!(got["failures"]["elsewhere.example"].is_object(), "{got}");
}

#[tokio::test]
async fn one_time_keys_are_claimed_once_then_the_fallback_key() {
    let server = TestServer::start().await;
    let (alice_id, alice, alice_dev) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let (_, carol, _) = server.register("carol", "pw").await;
    let key = new_key(&alice_dev);
    let (status, _) = upload(
        &server,
        &alice,
        json!({
            "device_keys": device_keys(&alice_id, &alice_dev, &key),
            "one_time_keys": {"signed_curve25519:AAAAAQ": one_time_key(1)},
        }),
    )
    .await;
    assert_eq!(status, 200);

    // Two users race for the last one-time key: exactly one gets it.
    let (by_bob, by_carol) = tokio::join!(
        claim(&server, &bob, &alice_id, &alice_dev),
        claim(&server, &carol, &alice_id, &alice_dev)
    );
    let got: Vec<&Value> = [&by_bob, &by_carol].into_iter().filter(|v| v.is_object()).collect();
    assert_eq!(got.len(), 1, "bob: {by_bob}, carol: {by_carol}");
    assert_eq!(got[0]["signed_curve25519:AAAAAQ"], one_time_key(1));
    let sync = server.sync(&alice, None, 0, None).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0, "{sync}");

    // With none left, the fallback key is handed out (and stays in use).
    let fallback = json!({"key": "ZmFsbGJhY2s", "fallback": true});
    let (status, _) = upload(
        &server,
        &alice,
        json!({"fallback_keys": {"signed_curve25519:AAAAZg": fallback}}),
    )
    .await;
    assert_eq!(status, 200);
    let sync = server.sync(&alice, None, 0, None).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]));
    for claimer in [&bob, &carol] {
        let got = claim(&server, claimer, &alice_id, &alice_dev).await;
        assert_eq!(got["signed_curve25519:AAAAZg"], fallback, "{got}");
    }
    let sync = server.sync(&alice, None, 0, None).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]), "{sync}");
    // A new fallback key replaces the used one.
    let (status, _) = upload(
        &server,
        &alice,
        json!({"fallback_keys": {"signed_curve25519:AAAAaA": {"key": "bmV3", "fallback": true}}}),
    )
    .await;
    assert_eq!(status, 200);
    let got = claim(&server, &bob, &alice_id, &alice_dev).await;
    assert!(got.get("signed_curve25519:AAAAaA").is_some(), "{got}");
    let sync = server.sync(&alice, None, 0, None).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
}

async fn send_to_device(server: &TestServer, token: &str, txn: &str, messages: Value) -> (u16, Value) {
    server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
            Some(token),
            Some(json!({ "messages": messages })),
        )
        .await
}

fn to_device_bodies(sync: &Value) -> Vec<String> {
    sync["to_device"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn to_device_messages_are_delivered_until_acknowledged() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, bob_dev) = server.register("bob", "pw").await;
    let (_, second) = server.login("bob", "pw", Some("SECOND")).await;
    let bob2 = second["access_token"].as_str().unwrap().to_owned();
    let start = server.sync(&bob, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Two messages, in order; the second transaction repeated is not sent twice.
    for (txn, body) in [("t1", "one"), ("t2", "two"), ("t2", "two")] {
        let (status, resp) =
            send_to_device(&server, &alice, txn, json!({ &bob_id: { &bob_dev: {"body": body} } })).await;
        assert_eq!(status, 200, "{resp}");
    }
    let first = server.sync(&bob, Some(&start), 1000, None).await;
    assert_eq!(to_device_bodies(&first), ["one", "two"]);
    assert_eq!(first["to_device"]["events"][0]["sender"], "@alice:localhost");
    assert_eq!(first["to_device"]["events"][0]["type"], "m.test");

    // The response was lost: syncing from the same token delivers them again.
    let again = server.sync(&bob, Some(&start), 0, None).await;
    assert_eq!(to_device_bodies(&again), ["one", "two"]);
    // Syncing past them acknowledges them; they are gone.
    let next = again["next_batch"].as_str().unwrap();
    let after = server.sync(&bob, Some(next), 0, None).await;
    assert!(to_device_bodies(&after).is_empty(), "{after}");

    // A waiting sync wakes for a message; `*` reaches every device.
    let since = after["next_batch"].as_str().unwrap().to_owned();
    let mark = server.log_mark();
    let waiting = server.sync(&bob2, Some(&since), 10_000, None);
    let send = async {
        server.wait_for_log(mark, &["sync waiting", &bob_id]).await;
        send_to_device(&server, &alice, "t3", json!({ &bob_id: { "*": {"body": "all"} } })).await
    };
    let (woken, (status, _)) = tokio::join!(waiting, send);
    assert_eq!(status, 200);
    assert_eq!(to_device_bodies(&woken), ["all"]);
    let sync = server.sync(&bob, Some(&since), 0, None).await;
    assert_eq!(to_device_bodies(&sync), ["all"]);

    // Deleting a device drops what was queued for it.
    let (status, _) = send_to_device(
        &server,
        &alice,
        "t4",
        json!({ &bob_id: { "SECOND": {"body": "late"} } }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call("POST", "/_matrix/client/v3/logout", Some(&bob2), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let (_, again) = server.login("bob", "pw", Some("SECOND")).await;
    let bob2 = again["access_token"].as_str().unwrap();
    let sync = server.sync(bob2, None, 0, None).await;
    assert!(to_device_bodies(&sync).is_empty(), "{sync}");
}

#[tokio::test]
async fn a_full_to_device_queue_refuses_more() {
    let server = TestServer::start_with("max_to_device_queue = 2").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, bob_dev) = server.register("bob", "pw").await;
    for txn in ["a", "b"] {
        let (status, _) = send_to_device(&server, &alice, txn, json!({ &bob_id: { &bob_dev: {"body": txn} } })).await;
        assert_eq!(status, 200);
    }
    let full = send_to_device(&server, &alice, "c", json!({ &bob_id: { &bob_dev: {"body": "c"} } })).await;
    assert_error(&full, 429, "M_LIMIT_EXCEEDED");
    // Once Bob's device acknowledges them, there is room again.
    let first = server.sync(&bob, None, 0, None).await;
    assert_eq!(to_device_bodies(&first), ["a", "b"]);
    server
        .sync(&bob, Some(first["next_batch"].as_str().unwrap()), 0, None)
        .await;
    let (status, _) = send_to_device(&server, &alice, "c", json!({ &bob_id: { &bob_dev: {"body": "c"} } })).await;
    assert_eq!(status, 200);
}

fn device_list(sync: &Value, which: &str) -> Vec<String> {
    sync["device_lists"][which]
        .as_array()
        .map(|a| a.iter().map(|u| u.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn device_lists_follow_key_changes_and_shared_encrypted_rooms() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", "pw").await;
    let (bob_id, bob, bob_dev) = server.register("bob", "pw").await;
    let (_, carol, _) = server.register("carol", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            ]}),
        )
        .await;
    let alice_since = server.sync(&alice, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob joins: Alice must fetch his keys; Bob must fetch hers.
    let bob_before = server.sync(&bob, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    server.join(&bob, &room).await;
    let sync = server.sync(&alice, Some(&alice_since), 0, None).await;
    assert_eq!(device_list(&sync, "changed"), [bob_id.as_str()]);
    let bob_sync = server.sync(&bob, Some(&bob_before), 0, None).await;
    assert!(device_list(&bob_sync, "changed").contains(&alice_id), "{bob_sync}");
    let alice_since = sync["next_batch"].as_str().unwrap().to_owned();

    // Bob logs in a new device: a change Alice hears of.
    let (_, login) = server.login("bob", "pw", Some("PHONE")).await;
    let phone = login["access_token"].as_str().unwrap().to_owned();
    let sync = server.sync(&alice, Some(&alice_since), 0, None).await;
    assert_eq!(device_list(&sync, "changed"), [bob_id.as_str()]);
    let alice_since = sync["next_batch"].as_str().unwrap().to_owned();
    // He uploads the new device's keys: Alice hears of it, long-polling.
    let mark = server.log_mark();
    let waiting = server.sync(&alice, Some(&alice_since), 10_000, None);
    let upload_keys = async {
        server.wait_for_log(mark, &["sync waiting", &alice_id]).await;
        upload(
            &server,
            &phone,
            json!({"device_keys": device_keys(&bob_id, "PHONE", &new_key("PHONE"))}),
        )
        .await
    };
    let (sync, (status, _)) = tokio::join!(waiting, upload_keys);
    assert_eq!(status, 200);
    assert_eq!(device_list(&sync, "changed"), [bob_id.as_str()]);
    // Carol shares no encrypted room with Bob and hears nothing of him.
    let carol_first = server.sync(&carol, None, 0, None).await;
    let bob_key = new_key(&bob_dev);
    let (status, _) = upload(
        &server,
        &bob,
        json!({"device_keys": device_keys(&bob_id, &bob_dev, &bob_key)}),
    )
    .await;
    assert_eq!(status, 200);
    let carol_sync = server
        .sync(&carol, Some(carol_first["next_batch"].as_str().unwrap()), 0, None)
        .await;
    assert!(device_list(&carol_sync, "changed").is_empty(), "{carol_sync}");

    // /keys/changes answers the same question for a range.
    let to = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, changes) = server
        .call(
            "GET",
            &format!(
                "/_matrix/client/v3/keys/changes?from={}&to={}",
                enc(&alice_since),
                enc(&to)
            ),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{changes}");
    assert_eq!(changes["changed"], json!([bob_id.as_str()]));

    // Deleting the device removes its keys and tells Alice.
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/delete_devices",
            Some(&bob),
            Some(json!({"devices": ["PHONE"]})),
        )
        .await;
    assert_eq!(status, 401);
    let auth = password_auth(&bob_id, "pw", &body["session"]);
    let (status, _) = server
        .call(
            "POST",
            "/_matrix/client/v3/delete_devices",
            Some(&bob),
            Some(json!({"devices": ["PHONE"], "auth": auth})),
        )
        .await;
    assert_eq!(status, 200);
    let sync = server.sync(&alice, Some(&to), 0, None).await;
    assert_eq!(device_list(&sync, "changed"), [bob_id.as_str()]);
    assert!(query(&server, &alice, &[&bob_id]).await["device_keys"][&bob_id]
        .get("PHONE")
        .is_none());

    // Bob leaves: they share no encrypted room any more.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let sync = server.sync(&alice, Some(&since), 0, None).await;
    assert_eq!(device_list(&sync, "left"), [bob_id.as_str()], "{sync}");
    assert!(device_list(&sync, "changed").is_empty());
}

#[tokio::test]
async fn cross_signing_keys_and_signatures() {
    let server = TestServer::start().await;
    let (alice_id, alice, alice_dev) = server.register("alice", "pw").await;
    let (bob_id, bob, _) = server.register("bob", "pw").await;
    let device_key = new_key(&alice_dev);
    let (status, _) = upload(
        &server,
        &alice,
        json!({"device_keys": device_keys(&alice_id, &alice_dev, &device_key)}),
    )
    .await;
    assert_eq!(status, 200);

    let cross_signing = |user: &str| {
        let (master, self_signing, user_signing) = (cross_key(), cross_key(), cross_key());
        let master_id = format!("ed25519:{}", public(&master));
        let body = json!({
            "master_key": cross_signing_key(user, "master", &master),
            "self_signing_key": signed(cross_signing_key(user, "self_signing", &self_signing), user, &master),
            "user_signing_key": signed(cross_signing_key(user, "user_signing", &user_signing), user, &master),
        });
        (master_id, self_signing, user_signing, body)
    };
    let (alice_master_id, alice_ssk, alice_usk, body) = cross_signing(&alice_id);
    // The first upload needs no password.
    let (status, resp) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    // The same keys again are accepted; new ones need the password.
    let (status, _) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(body),
        )
        .await;
    assert_eq!(status, 200);
    let (_, _, _, replacement) = cross_signing(&alice_id);
    let (status, challenge) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(replacement),
        )
        .await;
    assert_eq!(status, 401, "{challenge}");
    // Alice signs her device with her self-signing key; Bob sees the signature.
    let ssk_id = format!("ed25519:{}", public(&alice_ssk));
    let device = device_keys(&alice_id, &alice_dev, &device_key);
    let bare = strip_signatures(device);
    let device_signed = signed(bare, &alice_id, &alice_ssk);
    let mut forged = device_signed.clone();
    forged["signatures"][&alice_id][&ssk_id] = json!("AAAA".repeat(21) + "AA");
    let (status, resp) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice),
            Some(json!({ &alice_id: { &alice_dev: forged } })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        resp["failures"][&alice_id][&alice_dev]["errcode"], "M_INVALID_SIGNATURE",
        "{resp}"
    );
    let (status, resp) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice),
            Some(json!({ &alice_id: { &alice_dev: device_signed } })),
        )
        .await;
    assert_eq!(status, 200);
    assert!(resp["failures"].as_object().is_none_or(|f| f.is_empty()), "{resp}");
    let seen = query(&server, &bob, &[&alice_id]).await;
    assert!(seen["device_keys"][&alice_id][&alice_dev]["signatures"][&alice_id][&ssk_id].is_string());
    assert_eq!(
        seen["master_keys"][&alice_id]["keys"][&alice_master_id],
        alice_master_id[8..]
    );
    assert!(seen["self_signing_keys"][&alice_id].is_object());
    // Only the owner sees a user-signing key.
    assert!(seen["user_signing_keys"].get(&alice_id).is_none());
    assert!(query(&server, &alice, &[&alice_id]).await["user_signing_keys"][&alice_id].is_object());

    // Bob publishes cross-signing keys; Alice verifies him by signing his
    // master key with her user-signing key. Only Alice sees that signature.
    let (bob_master_id, _, _, bob_body) = cross_signing(&bob_id);
    // A self-signing key the master key did not sign is refused, whole.
    let mut unsigned = bob_body.clone();
    unsigned["self_signing_key"] = cross_signing_key(&bob_id, "self_signing", &cross_key());
    let refused = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&bob),
            Some(unsigned),
        )
        .await;
    assert_error(&refused, 400, "M_INVALID_PARAM");
    assert!(query(&server, &alice, &[&bob_id]).await["master_keys"]
        .get(&bob_id)
        .is_none());
    let (status, _) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&bob),
            Some(bob_body),
        )
        .await;
    assert_eq!(status, 200);
    let bob_master = query(&server, &alice, &[&bob_id]).await["master_keys"][&bob_id].clone();
    let usk_id = format!("ed25519:{}", public(&alice_usk));
    let signed_master = signed(strip_signatures(bob_master), &alice_id, &alice_usk);
    let (status, resp) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice),
            Some(json!({ &bob_id: { &bob_master_id[8..]: signed_master } })),
        )
        .await;
    assert_eq!(status, 200);
    assert!(resp["failures"].as_object().is_none_or(|f| f.is_empty()), "{resp}");
    let by_alice = query(&server, &alice, &[&bob_id]).await;
    assert!(
        by_alice["master_keys"][&bob_id]["signatures"][&alice_id][&usk_id].is_string(),
        "{by_alice}"
    );
    let by_bob = query(&server, &bob, &[&bob_id]).await;
    assert!(by_bob["master_keys"][&bob_id]["signatures"].get(&alice_id).is_none());
}

fn strip_signatures(mut key: Value) -> Value {
    key.as_object_mut().unwrap().remove("signatures");
    key
}

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

fn dehydrated(user: &str, device: &str, key: &Ed25519KeyPair) -> Value {
    json!({
        "device_id": device,
        "initial_device_display_name": "Backup device",
        "device_data": {"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "opaque"},
        "device_keys": device_keys(user, device, key),
        "one_time_keys": {"signed_curve25519:AAAAAQ": one_time_key(1)},
    })
}

#[tokio::test]
async fn a_dehydrated_device_keeps_messages_for_the_next_login() {
    let server = TestServer::start().await;
    let (alice_id, alice, alice_dev) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    assert_error(
        &server.call("GET", DEHYDRATED, Some(&alice), None).await,
        404,
        "M_NOT_FOUND",
    );

    // Keys that do not verify leave nothing behind; a normal device's ID is refused.
    let mut forged = dehydrated(&alice_id, "DEHYDRATED1", &new_key("DEHYDRATED1"));
    forged["device_keys"]["keys"]["curve25519:DEHYDRATED1"] = json!("forged");
    let (status, _) = server.call("PUT", DEHYDRATED, Some(&alice), Some(forged)).await;
    assert_eq!(status, 400);
    assert_eq!(server.call("GET", DEHYDRATED, Some(&alice), None).await.0, 404);
    let (status, _) = server
        .call(
            "PUT",
            DEHYDRATED,
            Some(&alice),
            Some(dehydrated(&alice_id, &alice_dev, &new_key(&alice_dev))),
        )
        .await;
    assert_eq!(status, 400);

    let (status, body) = server
        .call(
            "PUT",
            DEHYDRATED,
            Some(&alice),
            Some(dehydrated(&alice_id, "DEHYDRATED1", &new_key("DEHYDRATED1"))),
        )
        .await;
    assert_eq!((status, &body["device_id"]), (200, &json!("DEHYDRATED1")), "{body}");
    let (_, got) = server.call("GET", DEHYDRATED, Some(&alice), None).await;
    assert_eq!(got["device_data"]["device_pickle"], "opaque");

    // Bob finds the device, claims its key and sends it a message.
    let keys = query(&server, &bob, &[&alice_id]).await;
    assert!(keys["device_keys"][&alice_id]["DEHYDRATED1"].is_object(), "{keys}");
    let claimed = claim(&server, &bob, &alice_id, "DEHYDRATED1").await;
    assert_eq!(claimed["signed_curve25519:AAAAAQ"], one_time_key(1));
    let (status, _) = send_to_device(
        &server,
        &bob,
        "d1",
        json!({ &alice_id: { "DEHYDRATED1": {"body": "room key"} } }),
    )
    .await;
    assert_eq!(status, 200);

    // Alice's next client reads the messages, then acknowledges them.
    let events_path = format!("{DEHYDRATED}/DEHYDRATED1/events");
    let (status, page) = server.call("POST", &events_path, Some(&alice), Some(json!({}))).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["content"]["body"], "room key");
    let (_, next) = server
        .call(
            "POST",
            &events_path,
            Some(&alice),
            Some(json!({"next_batch": page["next_batch"]})),
        )
        .await;
    assert_eq!(next["events"], json!([]), "{next}");
    // Only the owner's own dehydrated device can be read.
    let (status, _) = server.call("POST", &events_path, Some(&bob), Some(json!({}))).await;
    assert_eq!(status, 404);

    let (status, deleted) = server.call("DELETE", DEHYDRATED, Some(&alice), None).await;
    assert_eq!((status, &deleted["device_id"]), (200, &json!("DEHYDRATED1")));
    assert_eq!(server.call("GET", DEHYDRATED, Some(&alice), None).await.0, 404);
    assert!(query(&server, &bob, &[&alice_id]).await["device_keys"][&alice_id]
        .get("DEHYDRATED1")
        .is_none());
}

#[tokio::test]
async fn key_queries_and_claims_always_list_failures() {
    let server = TestServer::start().await;
    let (user_id, token, device) = server.register("alice", "pw").await;
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&token),
            Some(json!({"device_keys": {user_id.clone(): []}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failures"], json!({}), "{body}");
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(&token),
            Some(json!({"one_time_keys": {user_id: {device: "signed_curve25519"}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failures"], json!({}), "{body}");
    assert!(body["one_time_keys"].is_object(), "{body}");
}
