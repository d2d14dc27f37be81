//! Presence: set, read, and delivered through /sync to users who share a room.

mod common;

use common::{alice_and_bob_in_a_room, assert_error, enc};
use serde_json::{json, Value};

fn presence_of<'a>(sync: &'a Value, user_id: &str) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["sender"] == user_id && e["type"] == "m.presence")
}

#[tokio::test]
async fn presence_reaches_room_mates_and_nobody_else() {
    let (server, alice, bob, _room) = alice_and_bob_in_a_room().await;
    let (carol_id, carol, _) = server.register("carol", "pw").await;
    let alice_id = server.whoami(&alice).await.1["user_id"].as_str().unwrap().to_owned();
    let bob_id = server.whoami(&bob).await.1["user_id"].as_str().unwrap().to_owned();
    let status_path = |user: &str| format!("/_matrix/client/v3/presence/{}/status", enc(user));

    // Syncing marks a user online (set_presence defaults to online).
    let first = server.sync(&bob, None, 0, None).await;
    assert_eq!(presence_of(&first, &bob_id).unwrap()["content"]["presence"], "online");
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Bob's long-poll wakes for alice's new status.
    let mark = server.log_mark();
    let waiting = server.sync(&bob, Some(&since), 10_000, None);
    let setting = async {
        server.wait_for_log(mark, &["sync waiting", &bob_id]).await;
        server
            .call(
                "PUT",
                &status_path(&alice_id),
                Some(&alice),
                Some(json!({"presence": "unavailable", "status_msg": "at lunch"})),
            )
            .await
    };
    let (woken, set) = tokio::join!(waiting, setting);
    assert_eq!(set.0, 200, "{}", set.1);
    let seen = presence_of(&woken, &alice_id).expect("alice's presence in bob's sync");
    assert_eq!(seen["content"]["presence"], "unavailable");
    assert_eq!(seen["content"]["status_msg"], "at lunch");

    // Read directly, by a room mate and by oneself.
    let (status, got) = server.call("GET", &status_path(&alice_id), Some(&bob), None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["presence"], "unavailable");
    assert_eq!(got["status_msg"], "at lunch");
    assert!(got["last_active_ago"].as_u64().is_some(), "{got}");
    let (status, own) = server.call("GET", &status_path(&carol_id), Some(&carol), None).await;
    assert_eq!(status, 200, "{own}");

    // A bare state change keeps the message; an empty one clears it.
    let (status, _) = server
        .call(
            "PUT",
            &status_path(&alice_id),
            Some(&alice),
            Some(json!({"presence": "online"})),
        )
        .await;
    assert_eq!(status, 200);
    let got = server.call("GET", &status_path(&alice_id), Some(&bob), None).await.1;
    assert_eq!(
        (got["presence"].as_str(), got["status_msg"].as_str()),
        (Some("online"), Some("at lunch"))
    );
    server
        .call(
            "PUT",
            &status_path(&alice_id),
            Some(&alice),
            Some(json!({"presence": "online", "status_msg": ""})),
        )
        .await;
    let got = server.call("GET", &status_path(&alice_id), Some(&bob), None).await.1;
    assert!(got.get("status_msg").is_none_or(Value::is_null), "{got}");

    // Carol shares no room with alice: she can neither read nor receive it.
    let carol_sync = server.sync(&carol, None, 0, None).await;
    assert!(presence_of(&carol_sync, &alice_id).is_none(), "{carol_sync}");
    assert_error(
        &server.call("GET", &status_path(&alice_id), Some(&carol), None).await,
        403,
        "M_FORBIDDEN",
    );
    // Nobody sets another user's presence, and the state must be a known one.
    assert_error(
        &server
            .call(
                "PUT",
                &status_path(&bob_id),
                Some(&alice),
                Some(json!({"presence": "online"})),
            )
            .await,
        403,
        "M_FORBIDDEN",
    );
    let bad = server
        .call(
            "PUT",
            &status_path(&alice_id),
            Some(&alice),
            Some(json!({"presence": "asleep"})),
        )
        .await;
    assert_eq!(bad.0, 400, "{}", bad.1);

    // A sync with set_presence=offline leaves the state alone, and an
    // unchanged presence does not reappear in an incremental sync.
    let (status, _) = server
        .call(
            "PUT",
            &status_path(&bob_id),
            Some(&bob),
            Some(json!({"presence": "offline"})),
        )
        .await;
    assert_eq!(status, 200);
    let quiet = server
        .call(
            "GET",
            "/_matrix/client/v3/sync?set_presence=offline&timeout=0",
            Some(&bob),
            None,
        )
        .await
        .1;
    assert_eq!(presence_of(&quiet, &bob_id).unwrap()["content"]["presence"], "offline");
    let next = quiet["next_batch"].as_str().unwrap().to_owned();
    let again = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/sync?set_presence=offline&timeout=0&since={next}"),
            Some(&bob),
            None,
        )
        .await
        .1;
    assert!(presence_of(&again, &bob_id).is_none(), "{again}");
}
