//! Finding events: by time (`timestamp_to_event`), by words (`search`), and
//! reporting them to the operator.

mod common;

use std::time::Duration;

use common::{alice_and_bob_in_a_room, assert_error, enc};
use serde_json::json;

#[tokio::test]
async fn timestamp_to_event_finds_the_nearest_visible_event() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    let path = |ts: u64, dir: &str| {
        format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
            enc(&room_id)
        )
    };
    let ts_of = |event_id: String| {
        let (server, alice, room_id) = (&server, &alice, &room_id);
        async move {
            let (status, event) = server
                .call(
                    "GET",
                    &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room_id), enc(&event_id)),
                    Some(alice),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{event}");
            event["origin_server_ts"].as_u64().unwrap()
        }
    };
    let first = server.send_text(&alice, &room_id, "first").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second = server.send_text(&alice, &room_id, "second").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let third = server.send_text(&alice, &room_id, "third").await;
    let (t1, t2, t3) = (
        ts_of(first.clone()).await,
        ts_of(second.clone()).await,
        ts_of(third.clone()).await,
    );
    assert!(t1 < t2 && t2 < t3);

    let found = |ts: u64, dir: &'static str| {
        let (server, bob, path) = (&server, &bob, &path);
        async move { server.call("GET", &path(ts, dir), Some(bob), None).await }
    };
    // Between two events: forward finds the later, backward the earlier.
    let (status, resp) = found(t2 - 1, "f").await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["event_id"], second.as_str());
    assert_eq!(resp["origin_server_ts"], t2);
    assert_eq!(found(t2 + 1, "b").await.1["event_id"], second.as_str());
    // Exactly on an event: that event, either way.
    assert_eq!(found(t1, "f").await.1["event_id"], first.as_str());
    assert_eq!(found(t3, "b").await.1["event_id"], third.as_str());
    // Past the end: nothing forward, the last event backward.
    assert_error(&found(t3 + 60_000, "f").await, 404, "M_NOT_FOUND");
    assert_eq!(found(t3 + 60_000, "b").await.1["event_id"], third.as_str());

    // A stranger to a private room learns nothing.
    let (_, carol, _) = server.register("carol", "pw").await;
    let private = server.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (status, _) = server
        .call(
            "GET",
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={t1}&dir=f",
                enc(&private)
            ),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn reports_are_kept_for_the_operator() {
    let (mut server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    let (_, carol, _) = server.register("carol", "pw").await;
    let rude = server.send_text(&alice, &room_id, "something rude").await;
    let report_event = |token: String, event_id: String| {
        let (server, room_id) = (&server, &room_id);
        async move {
            server
                .call(
                    "POST",
                    &format!("/_matrix/client/v3/rooms/{}/report/{}", enc(room_id), enc(&event_id)),
                    Some(&token),
                    Some(json!({"reason": "rude"})),
                )
                .await
        }
    };
    let (status, resp) = report_event(bob.clone(), rude.clone()).await;
    assert_eq!(status, 200, "{resp}");
    // Only members report events, and only events that exist.
    assert_error(&report_event(carol.clone(), rude.clone()).await, 404, "M_NOT_FOUND");
    assert_error(
        &report_event(bob.clone(), "$nothere:localhost".to_owned()).await,
        404,
        "M_NOT_FOUND",
    );

    // Rooms and users can be reported by anyone, if they exist.
    let report = |path: String, token: &str| {
        let (server, token) = (&server, token.to_owned());
        async move {
            server
                .call("POST", &path, Some(&token), Some(json!({"reason": "spam"})))
                .await
        }
    };
    let (status, resp) = report(format!("/_matrix/client/v3/rooms/{}/report", enc(&room_id)), &carol).await;
    assert_eq!(status, 200, "{resp}");
    assert_error(
        &report("/_matrix/client/v3/rooms/!nothere:localhost/report".to_owned(), &carol).await,
        404,
        "M_NOT_FOUND",
    );
    let (status, resp) = report(
        format!("/_matrix/client/v3/users/{}/report", enc("@alice:localhost")),
        &carol,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_error(
        &report(
            format!("/_matrix/client/v3/users/{}/report", enc("@nobody:localhost")),
            &carol,
        )
        .await,
        404,
        "M_NOT_FOUND",
    );

    // The operator finds exactly the three accepted reports in the database.
    assert!(server.stop().success());
    let config = conduit::config::Config::load(Some(&server.dir.path().join("conduit.toml")), []).unwrap();
    let services = conduit::service::Services::open(config).unwrap();
    let reports = services.reports.list().unwrap();
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert_eq!(
        (
            reports[0].event_id.as_str(),
            reports[0].reporter.as_str(),
            reports[0].reason.as_str()
        ),
        (rude.as_str(), "@bob:localhost", "rude")
    );
    assert_eq!(
        (reports[1].room_id.as_str(), reports[1].event_id.as_str()),
        (room_id.as_str(), "")
    );
    assert_eq!(reports[2].user_id, "@alice:localhost");
}
