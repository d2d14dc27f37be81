//! Under systemd (`Type=notify`, `WatchdogSec=`), the server tells the
//! service manager it is ready once it listens, keeps the watchdog fed,
//! and says when it stops: here the manager's socket is a real one.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{conduit_command, spawn_logging, ServerLog};

/// The next message on the manager's socket, waiting at most 30 s.
async fn next_message(manager: &tokio::net::UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(30), manager.recv(&mut buf))
        .await
        .expect("a message within 30 s")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Starts the server as systemd would, with its manager's socket in `dir`
/// and a 200 ms watchdog (`WATCHDOG_PID` as given, or unset).
fn spawn_notifying(
    dir: &std::path::Path,
    watchdog_pid: Option<&str>,
) -> (std::process::Child, String, tokio::net::UnixDatagram) {
    let config = dir.join("conduit.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\nport = 0\ndatabase_path = {:?}\n",
            dir.join("db").display().to_string()
        ),
    )
    .unwrap();
    let socket = dir.join("notify");
    let manager = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let mut command = conduit_command();
    command
        .arg("-c")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    if let Some(pid) = watchdog_pid {
        command.env("WATCHDOG_PID", pid);
    }
    let (child, base) = spawn_logging(command, ServerLog::default());
    (child, base, manager)
}

#[tokio::test]
async fn tells_the_service_manager_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // A ping every 100 ms.
    let (mut child, base, manager) = spawn_notifying(dir.path(), None);

    assert_eq!(next_message(&manager).await, "READY=1");
    // Ready means serving.
    let versions = reqwest::get(format!("{base}/_matrix/client/versions")).await.unwrap();
    assert_eq!(versions.status().as_u16(), 200);

    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(next_message(&manager).await, "WATCHDOG=1");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "pings every 100 ms, not {:?} for three",
        started.elapsed()
    );

    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    // Watchdog pings may still be on their way before it.
    let mut stopping = false;
    for _ in 0..100 {
        let message = next_message(&manager).await;
        if message == "STOPPING=1" {
            stopping = true;
            break;
        }
        assert_eq!(message, "WATCHDOG=1");
    }
    assert!(stopping, "STOPPING=1 after SIGTERM");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a clean stop: {status}");
}

#[tokio::test]
async fn a_watchdog_meant_for_another_process_is_not_fed() {
    let dir = tempfile::tempdir().unwrap();
    // PID 1 is never the server: the variables were inherited, not set for it.
    let (mut child, _base, manager) = spawn_notifying(dir.path(), Some("1"));
    assert_eq!(next_message(&manager).await, "READY=1");
    // Five watchdog intervals: no ping.
    let mut buf = [0u8; 64];
    let quiet = tokio::time::timeout(Duration::from_secs(1), manager.recv(&mut buf)).await;
    assert!(
        quiet.is_err(),
        "no message: {:?}",
        quiet.map(|r| r.map(|n| buf[..n].to_vec()))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
