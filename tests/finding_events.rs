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

async fn search(
    server: &common::TestServer,
    token: &str,
    criteria: serde_json::Value,
    next: Option<&str>,
) -> serde_json::Value {
    let path = match next {
        Some(n) => format!("/_matrix/client/v3/search?next_batch={}", enc(n)),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    let (status, resp) = server
        .call(
            "POST",
            &path,
            Some(token),
            Some(json!({"search_categories": {"room_events": criteria}})),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    resp["search_categories"]["room_events"].clone()
}

fn bodies(found: &serde_json::Value) -> Vec<String> {
    found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn search_finds_words_in_the_users_rooms_by_rank_or_time() {
    let (server, alice, bob, room_id) = alice_and_bob_in_a_room().await;
    server.send_text(&alice, &room_id, "Lunch at noon?").await;
    let over = server.send_text(&bob, &room_id, "lunchtime is over").await;
    server.send_text(&alice, &room_id, "dinner later").await;
    server.send_text(&alice, &room_id, "LUNCH, lunch, lunch!").await;
    // A room bob is not in.
    let secret = server
        .create_room(&alice, json!({"preset": "private_chat", "name": "Lunch club"}))
        .await;
    server.send_text(&alice, &secret, "secret lunch plans").await;

    // Newest first; prefixes match; other people's rooms are not searched.
    let found = search(
        &server,
        &bob,
        json!({"search_term": "lunch", "order_by": "recent"}),
        None,
    )
    .await;
    assert_eq!(found["count"], 3, "{found}");
    assert_eq!(
        bodies(&found),
        ["LUNCH, lunch, lunch!", "lunchtime is over", "Lunch at noon?"]
    );
    let highlights: Vec<&str> = found["highlights"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    assert!(
        highlights.contains(&"lunch") && highlights.contains(&"lunchtime"),
        "{highlights:?}"
    );
    // By rank (the default): the message that says it three times wins.
    let ranked = search(&server, &bob, json!({"search_term": "lunch"}), None).await;
    assert_eq!(bodies(&ranked)[0], "LUNCH, lunch, lunch!");
    let ranks: Vec<f64> = ranked["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().unwrap())
        .collect();
    assert!(ranks[0] > ranks[1] && ranks[1] >= ranks[2], "{ranks:?}");
    // Every word must match.
    let both = search(&server, &bob, json!({"search_term": "noon lunch"}), None).await;
    assert_eq!(bodies(&both), ["Lunch at noon?"]);

    // Pages of two, by time: no result twice, none left out.
    let criteria = json!({"search_term": "lunch", "order_by": "recent", "filter": {"limit": 2}});
    let page1 = search(&server, &bob, criteria.clone(), None).await;
    assert_eq!(bodies(&page1).len(), 2);
    let next = page1["next_batch"].as_str().expect("a next page").to_owned();
    server
        .send_text(&alice, &room_id, "a new lunch arrives meanwhile")
        .await;
    let page2 = search(&server, &bob, criteria, Some(&next)).await;
    assert_eq!(bodies(&page2), ["Lunch at noon?"]);
    assert!(page2.get("next_batch").is_none_or(|n| n.is_null()), "{page2}");

    // Context, profiles and groups.
    let with_context = search(
        &server,
        &bob,
        json!({"search_term": "noon", "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true},
            "groupings": {"group_by": [{"key": "room_id"}]}, "include_state": true}),
        None,
    )
    .await;
    let result = &with_context["results"][0];
    assert_eq!(
        result["context"]["events_after"][0]["content"]["body"],
        "lunchtime is over"
    );
    assert_eq!(result["context"]["events_before"].as_array().unwrap().len(), 1);
    assert!(
        result["context"]["profile_info"]["@alice:localhost"].is_object(),
        "{result}"
    );
    assert_eq!(
        with_context["groups"]["room_id"][&room_id]["results"][0],
        result["result"]["event_id"]
    );
    assert!(with_context["state"][&room_id]
        .as_array()
        .is_some_and(|s| !s.is_empty()));

    // A redacted message is no longer found.
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room_id), enc(&over)),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let after = search(&server, &bob, json!({"search_term": "lunchtime"}), None).await;
    assert_eq!(after["count"], 0, "{after}");

    // Room names are searchable by key, and a room filter narrows the search.
    let names = search(
        &server,
        &alice,
        json!({"search_term": "club", "keys": ["content.name"]}),
        None,
    )
    .await;
    assert_eq!(names["results"][0]["result"]["type"], "m.room.name", "{names}");
    let only_secret = search(
        &server,
        &alice,
        json!({"search_term": "lunch", "filter": {"rooms": [secret]}, "keys": ["content.body"]}),
        None,
    )
    .await;
    assert_eq!(bodies(&only_secret), ["secret lunch plans"]);
    let bad = server
        .call(
            "POST",
            "/_matrix/client/v3/search?next_batch=nonsense",
            Some(&bob),
            Some(json!({"search_categories": {"room_events": {"search_term": "lunch"}}})),
        )
        .await;
    assert_eq!(bad.0, 400, "{}", bad.1);
}
