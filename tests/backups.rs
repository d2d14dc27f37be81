//! Online backups: taken while messages are being written, restored with
//! `conduit backup restore` into a fresh directory, served again.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_error, enc, run_conduit as conduit, TestServer};
use serde_json::Value;

#[tokio::test]
async fn a_backup_taken_under_write_load_restores_every_acknowledged_event() {
    let backups = tempfile::tempdir().unwrap();
    // Not made yet: the first backup makes it.
    let backup_dir = backups.path().join("nightly");
    let extra = format!(
        "backup_directory = \"{}\"\nbackup_interval_hours = 0",
        backup_dir.display()
    );
    let mut server = TestServer::start_with(&extra).await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let room_id = server.create_room(&admin, serde_json::json!({})).await;
    let picture = b"not really a picture, but bytes to get back".to_vec();
    let mxc = server.upload_media(&admin, picture.clone(), "image/png", None).await;

    // A writer sends messages until told to stop, noting each one acknowledged.
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, base, token, room) = (
            server.client.clone(),
            server.base.clone(),
            admin.clone(),
            room_id.clone(),
        );
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            for i in 0..5000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let url = format!("{base}/_matrix/client/v3/rooms/{}/send/m.room.message/w{i}", enc(&room));
                let response = client
                    .put(url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"msgtype": "m.text", "body": format!("message {i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                let body: Value = response.json().await.unwrap();
                acknowledged
                    .lock()
                    .unwrap()
                    .push(body["event_id"].as_str().unwrap().to_owned());
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 50 {
        assert!(Instant::now() < deadline, "the writer is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything acknowledged before the backup begins must be in it.
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let (status, taken) = server
        .call("POST", "/_conduit/admin/v1/backups", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(taken["media_files_copied"], 1, "{taken}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    let after_backup = acknowledged.lock().unwrap().len();
    assert!(after_backup > before.len(), "the writer kept writing during the backup");
    let (status, listed) = server
        .call("GET", "/_conduit/admin/v1/backups", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["backups"][0]["backup_id"], taken["backup_id"], "{listed}");
    server.stop();

    let config = server.config_path().to_owned();
    let (ok, out, err) = conduit(&config, &["backup", "list"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (ok, out, err) = conduit(&config, &["backup", "verify"]);
    assert!(ok && out.contains("is whole"), "{out}{err}");

    // Restore into a fresh directory, with the same config but its path.
    let fresh = tempfile::tempdir().unwrap();
    let restored_db = fresh.path().join("db");
    let old_db = server.dir.path().join("db");
    let text = std::fs::read_to_string(&config).unwrap();
    let restore_config = fresh.path().join("restore.toml");
    std::fs::write(
        &restore_config,
        text.replace(&old_db.display().to_string(), &restored_db.display().to_string()),
    )
    .unwrap();
    let (ok, out, err) = conduit(&restore_config, &["backup", "restore"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = conduit(&restore_config, &["backup", "restore"]);
    assert!(!ok && err.contains("not empty"), "a second restore is refused: {err}");

    let restored = TestServer::start_in(fresh, &extra).await;
    let (status, login) = restored.login("admin", "pw", None).await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    for event_id in &before {
        let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room_id), enc(event_id));
        let (status, event) = restored.call("GET", &path, Some(token), None).await;
        assert_eq!(status, 200, "{event_id} was acknowledged before the backup: {event}");
    }
    let media_path = mxc.strip_prefix("mxc://").unwrap();
    let response = restored
        .client
        .get(restored.url(&format!("/_matrix/client/v1/media/download/{media_path}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().to_vec(), picture);
}

#[tokio::test]
async fn backups_are_for_admins_and_need_a_directory() {
    let server = TestServer::start().await;
    let (_, admin, _) = server.register("admin", "pw").await;
    let (_, user, _) = server.register("user", "pw").await;
    let path = "/_conduit/admin/v1/backups";
    assert_error(&server.call("POST", path, Some(&user), None).await, 403, "M_FORBIDDEN");
    assert_error(&server.call("POST", path, Some(&admin), None).await, 400, "M_UNKNOWN");
}

#[tokio::test]
async fn repair_salvages_a_database_whose_manifest_is_lost() {
    let mut server = TestServer::start().await;
    let (_, token, _) = server.register("alice", "pw").await;
    let room_id = server.create_room(&token, serde_json::json!({})).await;
    let sent = server.send_text(&token, &room_id, "still here after the repair").await;
    server.stop();
    // The damage: the files saying which table files make the database.
    let db = server.dir.path().join("db");
    for entry in std::fs::read_dir(&db).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "CURRENT" || name.starts_with("MANIFEST-") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let (ok, out, err) = conduit(server.config_path(), &["repair"]);
    assert!(ok && out.contains("repaired"), "{out}{err}");
    server.start_again();
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room_id), enc(&sent));
    let (status, event) = server.call("GET", &path, Some(&token), None).await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["content"]["body"], "still here after the repair");

    // A directory without a database is refused, not made into one.
    let empty = tempfile::tempdir().unwrap();
    let config = empty.path().join("conduit.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\nserver_name = \"localhost\"\ndatabase_path = \"{}\"\n",
            empty.path().join("db").display()
        ),
    )
    .unwrap();
    let (ok, _, err) = conduit(&config, &["repair"]);
    assert!(!ok && err.contains("holds no database"), "{err}");
}
