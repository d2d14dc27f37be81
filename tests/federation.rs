//! Federation: what other homeservers see of this one.

mod common;

use common::{assert_error, conduit_command, TestServer};
use ruma::serde::Base64;
use ruma::signatures::{verify_json, PublicKeyMap};
use ruma::CanonicalJsonObject;
use serde_json::Value;

/// The key document, checked against its own current key.
async fn verified_keys(server: &TestServer) -> Value {
    let (status, keys) = server.call("GET", "/_matrix/key/v2/server", None, None).await;
    assert_eq!(status, 200, "{keys}");
    let (key_id, key) = keys["verify_keys"].as_object().unwrap().iter().next().unwrap();
    let public = Base64::parse(key["key"].as_str().unwrap()).unwrap();
    let mut map = PublicKeyMap::new();
    map.insert(
        keys["server_name"].as_str().unwrap().to_owned(),
        [(key_id.clone(), public)].into(),
    );
    let object: CanonicalJsonObject = serde_json::from_value(keys.clone()).unwrap();
    verify_json(&map, &object).expect("the key document is signed with its key");
    keys
}

#[tokio::test]
async fn signing_keys_are_published_signed_and_a_rotated_key_stays_as_an_old_key() {
    let mut server = TestServer::start_with("allow_federation = true").await;
    let keys = verified_keys(&server).await;
    assert_eq!(keys["server_name"], "localhost");
    assert_eq!(keys["old_verify_keys"], serde_json::json!({}));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(keys["valid_until_ts"].as_u64().unwrap() > now);
    let first_key = keys["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();

    let (status, version) = server.call("GET", "/_matrix/federation/v1/version", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(version["server"]["name"], "Conduit");

    // The operator rotates the key of the stopped server.
    assert!(server.stop().success());
    let rotated = conduit_command()
        .arg("-c")
        .arg(server.config_path())
        .arg("rotate-signing-key")
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    server.start_again();
    let keys = verified_keys(&server).await;
    assert!(keys["verify_keys"].get(&first_key).is_none(), "{keys}");
    assert!(keys["old_verify_keys"][&first_key]["key"].is_string(), "{keys}");
    assert!(
        keys["old_verify_keys"][&first_key]["expired_ts"].as_u64().unwrap() <= keys["valid_until_ts"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn with_federation_off_other_servers_get_a_clean_403() {
    let server = TestServer::start().await;
    for path in ["/_matrix/key/v2/server", "/_matrix/federation/v1/version"] {
        assert_error(&server.call("GET", path, None, None).await, 403, "M_FORBIDDEN");
    }
}
