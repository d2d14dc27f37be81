//! Runs the real `conduit` binary on a loopback port with a temporary data
//! directory, and talks to it over real HTTP.
#![allow(dead_code)]

pub mod keys;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct TestServer {
    pub base: String,
    pub dir: tempfile::TempDir,
    config_path: PathBuf,
    child: Option<Child>,
    pub client: reqwest::Client,
    /// Every line the server has logged, across restarts.
    log: ServerLog,
}

/// The lines a server logged, shared with the thread that reads them.
pub type ServerLog = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Cheap password hashing: tests exercise the flow, not the cost. No rate
/// limits: tests send, join and register far faster than people do
/// (`tests/rate_limits.rs` turns them on, with small limits).
const BASE_CONFIG: &str = r#"[global]
server_name = "localhost"
address = "127.0.0.1"
port = 0
argon2_memory_kib = 64
argon2_iterations = 1
rate_limits.enabled = false
log = "warn,conduit=info,conduit::wait=debug"
"#;

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// `extra` is more `[global]` keys, one per line.
    pub async fn start_with(extra: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), extra).await
    }

    /// As [`TestServer::start_with`], in `dir`, which may already hold files
    /// the config names (certificates, keys).
    pub async fn start_in(dir: tempfile::TempDir, extra: &str) -> Self {
        let config_path = dir.path().join("conduit.toml");
        let db = dir.path().join("db");
        // Keys in `extra` replace the base's.
        let overridden = |line: &str| {
            let key = line.split('=').next().unwrap_or("").trim();
            !key.is_empty() && extra.lines().any(|e| e.split('=').next().unwrap_or("").trim() == key)
        };
        let base: String = BASE_CONFIG
            .lines()
            .filter(|l| !overridden(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = format!("{base}database_path = {:?}\n{extra}\n", db.display().to_string());
        std::fs::write(&config_path, text).expect("write config");
        let mut server = TestServer {
            base: String::new(),
            dir,
            config_path,
            child: None,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            log: ServerLog::default(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        // A fresh connection pool: connections to a killed process on the
        // same port would fail the first requests to the new one.
        self.client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut command = conduit_command();
        command.arg("-c").arg(&self.config_path);
        let (child, base) = spawn_logging(command, self.log.clone());
        self.base = base;
        self.child = Some(child);
    }

    /// How many lines have been logged: a mark for [`TestServer::wait_for_log`].
    pub fn log_mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits (at most 10 s) until a line containing every one of `needles`
    /// has been logged after `mark`: so a test knows a request is waiting
    /// (the server logs `conduit::wait` events) before it wakes it.
    pub async fn wait_for_log(&self, mark: usize, needles: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let log = self.log.lock().unwrap();
                if log[mark.min(log.len())..]
                    .iter()
                    .any(|l| needles.iter().all(|n| l.contains(n)))
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no log line with {needles:?} within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The lines logged so far that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// SIGTERM, then wait (at most 30 s) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends the signal (`TERM`, `INT`), then waits for the exit status.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        self.wait()
    }

    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("server running");
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Waits (at most 30 s) for the server to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no shutdown at all), then start again on the same data.
    pub fn kill_and_restart(&mut self) {
        self.stop_with("KILL");
        self.spawn();
    }

    /// Starts a stopped server again on the same data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.spawn();
    }

    /// The config file the server runs with (for command-line tools).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Stops the server and starts it again on the same data.
    pub fn restart(&mut self) {
        assert!(self.stop().success());
        self.spawn();
    }

    /// The server process's ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A JSON request; returns the status and the JSON body (Null if none).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method.parse().unwrap(), self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A request with raw body bytes.
    pub async fn call_raw(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self.client.request(method.parse().unwrap(), self.url(path)).body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Registers through the dummy UIA flow; returns (user_id, token, device_id).
    pub async fn register(&self, username: &str, password: &str) -> (String, String, String) {
        let (status, body) = self
            .call(
                "POST",
                "/_matrix/client/v3/register",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, 401, "{body}");
        let session = body["session"].as_str().expect("session").to_owned();
        let (status, body) = self
            .call(
                "POST",
                "/_matrix/client/v3/register",
                None,
                Some(json!({"username": username, "password": password, "auth": {"type": "m.login.dummy", "session": session}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["user_id"].as_str().unwrap().to_owned(),
            body["access_token"].as_str().unwrap().to_owned(),
            body["device_id"].as_str().unwrap().to_owned(),
        )
    }

    /// `GET /account/whoami` with `token`: 200 while the token is live.
    /// Uploads through `POST /_matrix/media/v3/upload`; returns the `mxc://` URI.
    pub async fn upload_media(
        &self,
        token: &str,
        bytes: Vec<u8>,
        content_type: &str,
        filename: Option<&str>,
    ) -> String {
        let mut path = "/_matrix/media/v3/upload".to_owned();
        if let Some(name) = filename {
            path.push_str(&format!("?filename={}", enc(name)));
        }
        let resp = self
            .client
            .post(self.url(&path))
            .bearer_auth(token)
            .header("Content-Type", content_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "upload: {body}");
        body["content_uri"].as_str().expect("content_uri").to_owned()
    }

    pub async fn whoami(&self, token: &str) -> (u16, Value) {
        self.call("GET", "/_matrix/client/v3/account/whoami", Some(token), None)
            .await
    }

    /// Password login; returns (status, body).
    pub async fn login(&self, user: &str, password: &str, device_id: Option<&str>) -> (u16, Value) {
        let mut body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
        if let Some(d) = device_id {
            body["device_id"] = json!(d);
        }
        self.call("POST", "/_matrix/client/v3/login", None, Some(body)).await
    }
}

/// A server with alice and bob (their access tokens) joined to a public room.
#[allow(dead_code)]
pub async fn alice_and_bob_in_a_room() -> (TestServer, String, String, String) {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;
    let room_id = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    server.join(&bob, &room_id).await;
    (server, alice, bob, room_id)
}

/// Room helpers: each asserts success and returns what the caller needs.
#[allow(dead_code)]
impl TestServer {
    pub async fn create_room(&self, token: &str, body: Value) -> String {
        let (status, resp) = self
            .call("POST", "/_matrix/client/v3/createRoom", Some(token), Some(body))
            .await;
        assert_eq!(status, 200, "createRoom: {resp}");
        resp["room_id"].as_str().unwrap().to_owned()
    }

    /// Sends an `m.room.message` with a fresh transaction ID.
    pub async fn send_text(&self, token: &str, room_id: &str, text: &str) -> String {
        self.send_event(
            token,
            room_id,
            "m.room.message",
            json!({"msgtype": "m.text", "body": text}),
        )
        .await
    }

    /// Sends an event of `event_type` with a fresh transaction ID.
    pub async fn send_event(&self, token: &str, room_id: &str, event_type: &str, content: Value) -> String {
        let txn = format!("t{}", TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let (status, resp) = self
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{}/send/{event_type}/{txn}", enc(room_id)),
                Some(token),
                Some(content),
            )
            .await;
        assert_eq!(status, 200, "send: {resp}");
        resp["event_id"].as_str().unwrap().to_owned()
    }

    /// Sets the user's `m.read` receipt at `event_id`.
    pub async fn read_receipt(&self, token: &str, room_id: &str, event_id: &str) {
        let (status, body) = self
            .call(
                "POST",
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    enc(room_id),
                    enc(event_id)
                ),
                Some(token),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "receipt: {body}");
    }

    pub async fn join(&self, token: &str, room: &str) {
        let (status, resp) = self
            .call(
                "POST",
                &format!("/_matrix/client/v3/join/{}", enc(room)),
                Some(token),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "join: {resp}");
    }

    pub async fn invite(&self, token: &str, room_id: &str, user_id: &str) {
        let (status, resp) = self
            .call(
                "POST",
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id)),
                Some(token),
                Some(json!({"user_id": user_id})),
            )
            .await;
        assert_eq!(status, 200, "invite: {resp}");
    }

    /// `/sync`, with an optional token, timeout (ms) and inline filter.
    pub async fn sync(&self, token: &str, since: Option<&str>, timeout_ms: u64, filter: Option<Value>) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        if let Some(filter) = filter {
            path.push_str(&format!("&filter={}", enc(&filter.to_string())));
        }
        let (status, resp) = self.call("GET", &path, Some(token), None).await;
        assert_eq!(status, 200, "sync: {resp}");
        resp
    }

    /// Bodies of the `m.room.message` events of a `/messages` page, oldest first.
    pub async fn message_bodies(&self, token: &str, room_id: &str) -> Vec<String> {
        let (status, resp) = self
            .call(
                "GET",
                &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000", enc(room_id)),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 200, "messages: {resp}");
        let mut bodies: Vec<String> = resp["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
            .collect();
        bodies.reverse();
        bodies
    }
}

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `conduit` binary, with no `CONDUIT_*` variable of the caller's
/// environment (they would override the test's config).
pub fn conduit_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_conduit"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("CONDUIT_")) {
        command.env_remove(name);
    }
    command
}

/// Runs `conduit -c CONFIG ARGS…` to its end: (success, stdout, stderr).
pub fn run_conduit(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = conduit_command().arg("-c").arg(config).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the server and waits (at most 30 s) for the address it logs; the
/// log is drained afterwards (echoed when TEST_SERVER_LOG is set).
pub fn spawn_and_wait_for_address(command: Command) -> (Child, String) {
    spawn_logging(command, ServerLog::default())
}

/// As [`spawn_and_wait_for_address`], keeping every line in `log`.
pub fn spawn_logging(mut command: Command, log_lines: ServerLog) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start conduit");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut early_log = Some(String::new());
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var_os("TEST_SERVER_LOG").is_some() {
                eprintln!("[conduit] {line}");
            }
            log_lines.lock().unwrap().push(line.clone());
            if let Some(log) = early_log.as_mut() {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(Ok(addr.trim().to_owned()));
                    early_log = None;
                } else {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        }
        // The log ended before an address: the server exited.
        if let Some(log) = early_log {
            let _ = tx.send(Err(log));
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(base)) => (child, base),
        Ok(Err(log)) => panic!("the server exited at start:\n{log}"),
        Err(_) => {
            let _ = child.kill();
            panic!("server did not report its address within 30 s");
        }
    }
}

/// The `auth` object of an `m.login.password` UIA stage.
pub fn password_auth(user: &str, password: &str, session: &Value) -> Value {
    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, "session": session})
}

/// Asserts status and errcode of an error response.
#[track_caller]
pub fn assert_error(got: &(u16, Value), status: u16, errcode: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["errcode"], errcode, "body: {}", got.1);
}

/// A loopback listener handing each connection to `answer`, which can stop
/// listening (connections are refused) and listen again on its port.
pub struct LoopbackListener {
    pub port: u16,
    answer: std::sync::Arc<dyn Fn(tokio::net::TcpStream) + Send + Sync>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LoopbackListener {
    pub async fn start(answer: impl Fn(tokio::net::TcpStream) + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut this = Self {
            port: listener.local_addr().unwrap().port(),
            answer: std::sync::Arc::new(answer),
            task: None,
        };
        this.accept_on(listener);
        this
    }

    fn accept_on(&mut self, listener: tokio::net::TcpListener) {
        let answer = self.answer.clone();
        self.task = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                answer(stream);
            }
        }));
    }

    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.accept_on(listener);
    }
}
