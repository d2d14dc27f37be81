//! Profiles, account data, filters, the user directory.

mod common;

use common::{assert_error, TestServer};
use serde_json::json;

#[tokio::test]
async fn profile_fields() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("kim", "pw").await;
    let (_, other, _) = server.register("lee", "pw").await;
    let base = "/_matrix/client/v3/profile/@kim:localhost";

    let (status, body) = server.call("GET", &format!("{base}/displayname"), None, None).await;
    assert_eq!(
        (status, body["displayname"].as_str()),
        (200, Some("kim")),
        "defaults to the localpart"
    );

    let put = server
        .call(
            "PUT",
            &format!("{base}/displayname"),
            Some(&token),
            Some(json!({"displayname": "Kim K"})),
        )
        .await;
    assert_eq!(put.0, 200);
    let put = server
        .call(
            "PUT",
            &format!("{base}/avatar_url"),
            Some(&token),
            Some(json!({"avatar_url": "mxc://localhost/abc"})),
        )
        .await;
    assert_eq!(put.0, 200, "{}", put.1);

    let (status, body) = server.call("GET", base, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"displayname": "Kim K", "avatar_url": "mxc://localhost/abc"})
    );
    let (_, body) = server.call("GET", &format!("{base}/avatar_url"), None, None).await;
    assert_eq!(body["avatar_url"], "mxc://localhost/abc");

    let foreign = server
        .call(
            "PUT",
            &format!("{base}/displayname"),
            Some(&other),
            Some(json!({"displayname": "hacked"})),
        )
        .await;
    assert_error(&foreign, 403, "M_FORBIDDEN");
    assert_error(
        &server
            .call("GET", "/_matrix/client/v3/profile/@nobody:localhost", None, None)
            .await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .call("GET", "/_matrix/client/v3/profile/not-a-user-id", None, None)
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let long = "x".repeat(2000);
    let too_long = server
        .call(
            "PUT",
            &format!("{base}/displayname"),
            Some(&token),
            Some(json!({"displayname": long})),
        )
        .await;
    assert_error(&too_long, 413, "M_TOO_LARGE");
}

#[tokio::test]
async fn account_data_global_and_room() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("mia", "pw").await;
    let (_, other, _) = server.register("ned", "pw").await;
    let global = "/_matrix/client/v3/user/@mia:localhost/account_data/org.example.settings";
    assert_error(
        &server.call("GET", global, Some(&token), None).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(
        server
            .call("PUT", global, Some(&token), Some(json!({"theme": "dark"})))
            .await
            .0,
        200
    );
    let (status, body) = server.call("GET", global, Some(&token), None).await;
    assert_eq!((status, body), (200, json!({"theme": "dark"})));

    let room = "/_matrix/client/v3/user/@mia:localhost/rooms/!abc:localhost/account_data/m.tag.example";
    assert_eq!(
        server
            .call("PUT", room, Some(&token), Some(json!({"pinned": true})))
            .await
            .0,
        200
    );
    assert_eq!(
        server.call("GET", room, Some(&token), None).await.1,
        json!({"pinned": true})
    );
    // Room and global data with the same type do not mix.
    let same_type_global = "/_matrix/client/v3/user/@mia:localhost/account_data/m.tag.example";
    assert_error(
        &server.call("GET", same_type_global, Some(&token), None).await,
        404,
        "M_NOT_FOUND",
    );

    assert_error(
        &server.call("GET", global, Some(&other), None).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.call("PUT", global, Some(&other), Some(json!({}))).await,
        403,
        "M_FORBIDDEN",
    );
    let push_rules = "/_matrix/client/v3/user/@mia:localhost/account_data/m.push_rules";
    assert_error(
        &server.call("PUT", push_rules, Some(&token), Some(json!({}))).await,
        405,
        "M_BAD_JSON",
    );
    let fully_read = "/_matrix/client/v3/user/@mia:localhost/rooms/!abc:localhost/account_data/m.fully_read";
    assert_error(
        &server
            .call("PUT", fully_read, Some(&token), Some(json!({"event_id": "$x"})))
            .await,
        405,
        "M_BAD_JSON",
    );
    let bad_room = "/_matrix/client/v3/user/@mia:localhost/rooms/not-a-room/account_data/x";
    assert_error(
        &server.call("GET", bad_room, Some(&token), None).await,
        400,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn filters_round_trip() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("ola", "pw").await;
    let (_, other, _) = server.register("pia", "pw").await;
    let filter =
        json!({"room": {"timeline": {"limit": 20, "types": ["m.room.message"]}}, "presence": {"not_types": ["*"]}});
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/user/@ola:localhost/filter",
            Some(&token),
            Some(filter.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["filter_id"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/user/@ola:localhost/filter/{id}");
    let (status, got) = server.call("GET", &path, Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(got["room"]["timeline"]["limit"], 20);
    assert_eq!(got["room"]["timeline"]["types"], json!(["m.room.message"]));
    assert_eq!(got["presence"]["not_types"], json!(["*"]));

    assert_error(&server.call("GET", &path, Some(&other), None).await, 403, "M_FORBIDDEN");
    let missing = server
        .call(
            "GET",
            "/_matrix/client/v3/user/@ola:localhost/filter/99999",
            Some(&token),
            None,
        )
        .await;
    assert_error(&missing, 404, "M_NOT_FOUND");
    let foreign = server
        .call(
            "POST",
            "/_matrix/client/v3/user/@ola:localhost/filter",
            Some(&other),
            Some(json!({})),
        )
        .await;
    assert_error(&foreign, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn user_directory_search() {
    let server = TestServer::start().await;
    let (_, token, _) = server.register("quinn", "pw").await;
    let (_, rita, _) = server.register("rita", "pw").await;
    let (_, ritchie, _) = server.register("ritchie", "pw").await;
    // The directory shows people in public rooms (or a room shared with
    // the searcher): see tests/conformance.rs for who stays hidden.
    let lobby = server.create_room(&rita, json!({"preset": "public_chat"})).await;
    server.join(&ritchie, &lobby).await;
    server
        .call(
            "PUT",
            "/_matrix/client/v3/profile/@rita:localhost/displayname",
            Some(&rita),
            Some(json!({"displayname": "Margarita"})),
        )
        .await;
    let search = |term: &str, limit: u64| json!({"search_term": term, "limit": limit});

    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/user_directory/search",
            Some(&token),
            Some(search("MARGA", 10)),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["results"],
        json!([{"user_id": "@rita:localhost", "display_name": "Margarita"}])
    );
    assert_eq!(body["limited"], false);

    let (_, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/user_directory/search",
            Some(&token),
            Some(search("rit", 1)),
        )
        .await;
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert_eq!(body["limited"], true);
    let none = server
        .call(
            "POST",
            "/_matrix/client/v3/user_directory/search",
            None,
            Some(search("rit", 1)),
        )
        .await;
    assert_error(&none, 401, "M_MISSING_TOKEN");
}
