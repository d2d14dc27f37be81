//! Prometheus metrics on a listener of their own, read as Prometheus reads
//! them.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestServer;

/// The samples of a Prometheus text exposition: `name{labels}` → value.
/// Panics on a line that is neither a comment nor a sample.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let kind = comment.split_whitespace().next().unwrap_or_default();
            assert!(kind == "HELP" || kind == "TYPE", "bad comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn scrape(server: &TestServer) -> BTreeMap<String, f64> {
    let line = server
        .log_lines_with("metrics on http://")
        .pop()
        .expect("the metrics listener is logged");
    let base = line[line.find("http://").unwrap()..].trim().to_owned();
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    parse(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_count_requests_and_read_the_queues_database_and_process() {
    let server = TestServer::start_with("metrics_address = \"127.0.0.1:0\"").await;
    let (_, token, _) = server.register("alice", "pw").await;
    for _ in 0..3 {
        server.whoami(&token).await;
    }
    // A long-poll in flight is a waiting sync.
    let since = server.sync(&token, None, 0, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mark = server.log_mark();
    let waiting = {
        let url = server.url(&format!("/_matrix/client/v3/sync?timeout=3000&since={since}"));
        let token = token.clone();
        tokio::spawn(async move { reqwest::Client::new().get(url).bearer_auth(token).send().await })
    };
    server.wait_for_log(mark, &["sync waiting"]).await;

    let samples = scrape(&server).await;
    let whoami =
        "conduit_http_requests_total{endpoint=\"/_matrix/client/v3/account/whoami\",method=\"GET\",status=\"200\"}";
    assert_eq!(samples.get(whoami), Some(&3.0), "{samples:#?}");
    let buckets = samples
        .keys()
        .filter(|k| {
            k.starts_with("conduit_http_request_duration_seconds_bucket{endpoint=\"/_matrix/client/v3/account/whoami\"")
        })
        .count();
    assert!(buckets > 5, "a latency histogram per endpoint");
    assert_eq!(samples.get("conduit_sync_waiters"), Some(&1.0));
    for kind in ["server", "appservice", "pusher"] {
        assert!(samples.contains_key(&format!("conduit_outbox_queued_items{{kind=\"{kind}\"}}")));
        assert!(samples.contains_key(&format!("conduit_outbox_delivery_failures{{kind=\"{kind}\"}}")));
    }
    assert!(samples["conduit_database_bytes{part=\"block_cache_capacity\"}"] > 0.0);
    assert!(samples.contains_key("conduit_database_compactions{state=\"running\"}"));
    assert!(samples["process_resident_memory_bytes"] > 1_000_000.0);
    assert!(samples["process_cpu_seconds_total"] > 0.0);

    let _ = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    let after = scrape(&server).await;
    assert_eq!(after.get("conduit_sync_waiters"), Some(&0.0), "the long-poll ended");
    // The client listener does not serve them.
    let (status, _) = server.call("GET", "/metrics", None, None).await;
    assert_eq!(status, 404);
}
