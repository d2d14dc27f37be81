//! The service manager's readiness protocol (`sd_notify`): systemd starts
//! the server with `Type=notify` and waits for `READY=1` before it counts the
//! unit as started, so units ordered after it (and `systemctl start`) see a
//! server that already listens. With `WatchdogSec=` set, systemd restarts a
//! server that stops sending `WATCHDOG=1`.
//!
//! The protocol is one datagram per message to the Unix socket named in
//! `$NOTIFY_SOCKET`; a name starting with `@` is in the abstract namespace.
//! Without the variable (not started by systemd) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends state changes to the service manager.
pub struct Notifier {
    socket: UnixDatagram,
    manager: SocketAddr,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when it is unset.
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match Self::for_socket(&path) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                tracing::warn!(error = %e, socket = ?path, "NOTIFY_SOCKET unusable; the service manager is not told");
                None
            }
        }
    }

    /// The notifier for the socket named `path` (`@name`: abstract).
    pub fn for_socket(path: &OsStr) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        let manager = match bytes.strip_prefix(b"@") {
            Some(name) => abstract_address(name)?,
            None if bytes.starts_with(b"/") => SocketAddr::from_pathname(path)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name",
                ))
            }
        };
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            manager,
        })
    }

    /// Sends one message, e.g. `READY=1`.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.manager).map(|_| ())
    }

    /// Sends a message, logging (not failing on) an error: a service manager
    /// that went away is no reason to stop serving.
    pub fn notify_or_log(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, state, "service manager not notified");
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, so one late
/// ping does not trip the watchdog. `None` when no watchdog is set, or when
/// `WATCHDOG_PID` names another process (the variables were inherited).
pub fn watchdog_interval(
    watchdog_usec: Option<&OsStr>,
    watchdog_pid: Option<&OsStr>,
    own_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = watchdog_pid {
        if pid.to_str()?.parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec: u64 = watchdog_usec?.to_str()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `watchdog_interval` for this process' environment.
pub fn watchdog_interval_from_env() -> Option<Duration> {
    watchdog_interval(
        std::env::var_os("WATCHDOG_USEC").as_deref(),
        std::env::var_os("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// Sends `WATCHDOG=1` every `interval` until `stop` turns true (or its
/// sender is gone). It runs on the server's own runtime, so a wedged
/// runtime stops the pings and systemd restarts the server.
pub async fn watchdog(
    notifier: std::sync::Arc<Notifier>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => notifier.notify_or_log("WATCHDOG=1"),
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::sync::Arc;

    fn received(manager: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = manager.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// A service manager's socket in `dir` (reads wait at most 5 s), and a
    /// notifier sending to it by path.
    fn manager_and_notifier(dir: &std::path::Path) -> (UnixDatagram, Notifier) {
        let path = dir.join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        manager.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (manager, Notifier::for_socket(path.as_os_str()).unwrap())
    }

    #[test]
    fn messages_reach_a_socket_named_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let (manager, notifier) = manager_and_notifier(dir.path());
        notifier.notify("READY=1").unwrap();
        notifier.notify("STOPPING=1").unwrap();
        assert_eq!(received(&manager), "READY=1");
        assert_eq!(received(&manager), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("conduit-notify-test-{}-{}", std::process::id(), rand::random::<u64>());
        let manager = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        manager.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = Notifier::for_socket(&OsString::from(format!("@{name}"))).unwrap();
        notifier.notify("READY=1").unwrap();
        assert_eq!(received(&manager), "READY=1");
    }

    #[test]
    fn a_relative_socket_name_is_refused() {
        assert!(Notifier::for_socket(OsStr::new("notify")).is_err());
    }

    #[test]
    fn watchdog_pings_at_half_the_interval_for_this_process_only() {
        let usec = OsString::from("2000000");
        assert_eq!(watchdog_interval(Some(&usec), None, 7), Some(Duration::from_secs(1)));
        assert_eq!(
            watchdog_interval(Some(&usec), Some(OsStr::new("7")), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some(&usec), Some(OsStr::new("8")), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some(OsStr::new("0")), None, 7), None);
        assert_eq!(watchdog_interval(Some(OsStr::new("soon")), None, 7), None);
    }

    #[test]
    fn the_watchdog_worker_pings_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (manager, notifier) = manager_and_notifier(dir.path());
        let notifier = Arc::new(notifier);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        runtime.block_on(async {
            let worker = tokio::spawn(watchdog(notifier, Duration::from_millis(20), stopped));
            tokio::time::sleep(Duration::from_millis(70)).await;
            stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), worker)
                .await
                .expect("the worker stops when told")
                .unwrap();
        });
        // The first tick is immediate, then one every 20 ms: at least 3.
        for _ in 0..3 {
            assert_eq!(received(&manager), "WATCHDOG=1");
        }
        // Nothing after the stop: drain what was sent before it, then the
        // socket stays quiet.
        manager.set_nonblocking(true).unwrap();
        while manager.recv(&mut [0u8; 64]).is_ok() {}
        std::thread::sleep(Duration::from_millis(60));
        assert!(manager.recv(&mut [0u8; 64]).is_err(), "no ping after the stop");
    }
}
