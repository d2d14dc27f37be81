//! Crash safety: the server is killed with SIGKILL while several clients
//! send; after a restart on the same data every acknowledged message is
//! there exactly once, the room state is intact, and sending goes on.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{enc, TestServer};
use serde_json::json;

const SENDERS: usize = 4;
const PER_SENDER: usize = 300;

/// What one sender saw: bodies acknowledged with 200, and the request in
/// flight when the server died (its txnId and body), if any.
struct SenderLog {
    acknowledged: Vec<String>,
    in_flight: Option<(String, String)>,
}

#[tokio::test]
async fn acknowledged_messages_survive_sigkill() {
    let mut server = TestServer::start().await;
    let (_, owner, _) = server.register("owner", "pw").await;
    let room = server
        .create_room(&owner, json!({"preset": "public_chat", "name": "Crash"}))
        .await;
    let mut tokens = Vec::new();
    for i in 0..SENDERS {
        let (_, token, _) = server.register(&format!("sender{i}"), "pw").await;
        server.join(&token, &room).await;
        tokens.push(token);
    }

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().cloned().enumerate() {
        let base = server.base.clone();
        let room = room.clone();
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut log = SenderLog {
                acknowledged: Vec::new(),
                in_flight: None,
            };
            for n in 0..PER_SENDER {
                let (txn, body) = (format!("crash-{i}-{n}"), format!("sender {i} message {n}"));
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    enc(&room)
                );
                let sent = client
                    .put(url)
                    .bearer_auth(&token)
                    .json(&json!({"msgtype": "m.text", "body": body}))
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status().as_u16() == 200 => {
                        log.acknowledged.push(body);
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        log.in_flight = Some((txn, body));
                        break;
                    }
                }
            }
            log
        }));
    }

    // Kill mid-stream: once a good number of messages went through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.load(Ordering::SeqCst) < 150 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill_and_restart();
    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.unwrap());
    }
    let total: usize = logs.iter().map(|l| l.acknowledged.len()).sum();
    assert!(total >= 150, "the kill came too early: {total}");
    assert!(
        logs.iter().any(|l| l.in_flight.is_some()),
        "the kill must interrupt sending"
    );

    // Retrying the interrupted request with its txnId stores it at most once.
    for (i, log) in logs.iter().enumerate() {
        if let Some((txn, body)) = &log.in_flight {
            let (status, _) = server
                .call(
                    "PUT",
                    &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room)),
                    Some(&tokens[i]),
                    Some(json!({"msgtype": "m.text", "body": body})),
                )
                .await;
            assert_eq!(status, 200);
        }
    }

    let bodies = server.message_bodies(&owner, &room).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for body in &bodies {
        *counts.entry(body.as_str()).or_default() += 1;
    }
    for log in &logs {
        for body in log.acknowledged.iter().chain(log.in_flight.as_ref().map(|(_, b)| b)) {
            assert_eq!(
                counts.get(body.as_str()),
                Some(&1),
                "{body} must be stored exactly once"
            );
        }
        // Each sender's messages are in the order it sent them.
        let own: Vec<&String> = bodies.iter().filter(|b| log.acknowledged.contains(b)).collect();
        assert_eq!(own, log.acknowledged.iter().collect::<Vec<_>>());
    }

    // The state is intact and sending continues.
    let (status, members) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(members["joined"].as_object().unwrap().len(), SENDERS + 1);
    let (_, name) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(name["name"], "Crash");
    server.send_text(&tokens[0], &room, "after the crash").await;
    let bodies = server.message_bodies(&owner, &room).await;
    assert_eq!(bodies.last().map(String::as_str), Some("after the crash"));
}
