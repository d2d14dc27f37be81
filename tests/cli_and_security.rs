//! The command line, the no-config default, TLS, and what the database holds.

mod common;

use std::process::{Command, Stdio};

use common::{assert_error, conduit_command, spawn_and_wait_for_address, TestServer};
use serde_json::json;

#[test]
fn version_flag() {
    let out = conduit_command().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("conduit {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_prints_effective_settings_or_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[global]\nserver_name = \"example.org\"\n").unwrap();
    let out = conduit_command()
        .args(["check-config", "-c"])
        .arg(&good)
        .env("CONDUIT_PORT", "8448")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("server_name = \"example.org\""), "{text}");
    assert!(text.contains("port = 8448"), "env overrides the file: {text}");
    assert!(
        text.contains("database_path = \"./conduit-data\""),
        "defaults are shown: {text}"
    );
    assert!(text.contains("memory_budget_mb = 256"), "{text}");

    let bad = dir.path().join("bad.toml");
    for (content, key) in [
        ("[global]\nallow_registraton = true\n", "allow_registraton"),
        ("[global]\nport = \"high\"\n", "port"),
        ("[global]\nserver_name = \"bad name\"\n", "server_name"),
        ("[global]\nmemory_budget_mb = 8\n", "memory_budget_mb"),
    ] {
        std::fs::write(&bad, content).unwrap();
        for args in [&["check-config", "-c"][..], &["-c"][..]] {
            let out = conduit_command().args(args).arg(&bad).output().unwrap();
            assert!(!out.status.success(), "{content} must be refused");
            let err = String::from_utf8(out.stderr).unwrap();
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(err.contains(&format!("`{key}`")), "names {key}: {err}");
        }
    }
}

/// With no config file at all the server starts on its defaults: server name
/// `localhost`, data in `./conduit-data`, open registration. (The port is
/// moved off 6167 by env so the test cannot collide with a running server.)
#[tokio::test]
async fn starts_without_any_config() {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = conduit_command();
    command.current_dir(cwd.path()).env("CONDUIT_PORT", "0");
    let (mut child, base) = spawn_and_wait_for_address(command);
    assert!(base.starts_with("http://127.0.0.1:"), "loopback by default: {base}");
    let client = reqwest::Client::new();
    let first = client
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(&json!({"username": "first", "password": "pw", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let body: serde_json::Value = first.json().await.unwrap();
    assert_eq!(body["user_id"], "@first:localhost");
    assert!(cwd.path().join("conduit-data").is_dir());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn database_files_hold_no_live_token_or_password() {
    let mut server = TestServer::start().await;
    let password = "correct horse battery staple";
    let (_, token, _) = server.register("tess", password).await;
    assert!(server.stop().success());
    let contains = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let mut seen_user_id = false;
    for entry in std::fs::read_dir(server.dir.path().join("db")).unwrap() {
        let path = entry.unwrap().path();
        // RocksDB's files are all at the top; `media/` holds uploads.
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(path).unwrap();
        // Control: the scan does see what is stored in the clear.
        seen_user_id |= contains(&bytes, b"@tess:localhost");
        for secret in [token.as_bytes(), password.as_bytes()] {
            assert!(!contains(&bytes, secret), "a secret is stored in the clear");
        }
    }
    assert!(
        seen_user_id,
        "the scan must find the stored user ID, or it proves nothing"
    );
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_create_one_account() {
    let server = TestServer::start().await;
    let attempts = (0..8).map(|i| {
        let server = &server;
        async move {
            let body = json!({"username": "race", "password": format!("pw{i}"), "auth": {"type": "m.login.dummy"}});
            server
                .call("POST", "/_matrix/client/v3/register", None, Some(body))
                .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.0 == 200)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (i, result) in results.iter().enumerate() {
        // A loser finds the name taken, or (more than a few hashes
        // waiting at once) is told to come back.
        if i != winners[0] && result.0 != 429 {
            assert_error(result, 400, "M_USER_IN_USE");
        }
    }
    // The winner's password is the one that works.
    assert_eq!(server.login("race", &format!("pw{}", winners[0]), None).await.0, 200);
}

#[tokio::test]
async fn serves_tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success());
    let server = TestServer::start_with(&format!(
        "[global.tls]\ncerts = {:?}\nkey = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    ))
    .await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let resp = client.get(server.url("/_matrix/client/versions")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = server.base.replacen("https://", "http://", 1);
    let plain_ok = match reqwest::get(format!("{plain}/_matrix/client/versions")).await {
        Ok(resp) => resp.status().is_success(),
        Err(_) => false,
    };
    assert!(!plain_ok);
}

/// A `CONDUIT_*` variable that is no config key (set by a service manager or
/// a wrapper for its own use) is named in the log and does not stop the
/// server; an unknown key in the file still does.
#[tokio::test]
async fn unknown_environment_variables_are_warned_about_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conduit.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\nport = 0\ndatabase_path = {:?}\n",
            dir.path().join("db").display().to_string()
        ),
    )
    .unwrap();
    let mut command = conduit_command();
    command
        .arg("-c")
        .arg(&config)
        .env("CONDUIT_SOMETHING_ELSE", "1")
        .env("CONDUIT_WELL_KNOWN__NOT_A_KEY", "x");
    let log = common::ServerLog::default();
    let (mut child, base) = common::spawn_logging(command, log.clone());
    let status = reqwest::get(format!("{base}/_matrix/client/versions"))
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
    let lines = log.lock().unwrap().clone();
    for variable in ["CONDUIT_SOMETHING_ELSE", "CONDUIT_WELL_KNOWN__NOT_A_KEY"] {
        assert!(
            lines.iter().any(|l| l.contains(variable) && l.contains("ignored")),
            "{variable} is named: {lines:?}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();

    std::fs::write(&config, "[global]\nnot_a_key = 1\n").unwrap();
    let out = conduit_command()
        .arg("-c")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_a_key"));
}
