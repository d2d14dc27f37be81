//! Start-up, the HTTP server, and graceful shutdown.

use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::api;
use crate::config::Config;
use crate::service::{ServiceError, Services};
use crate::systemd;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database: {0}")]
    Database(#[from] ServiceError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server stopped with an error: {0}")]
    Serve(std::io::Error),
}

const BLOCKING_THREADS_PER_WORKER: usize = 8;

/// Runs the server until SIGINT or SIGTERM, then finishes in-flight requests,
/// flushes the database and returns.
pub async fn run(config: Config) -> Result<(), StartError> {
    // Certificates are read before the database is opened: a bad path
    // fails start-up at once.
    let listeners = config
        .all_listeners()
        .into_iter()
        .map(|listener| {
            let addr = listener.socket_addr();
            let tls = listener
                .tls
                .as_ref()
                .map(load_tls)
                .transpose()
                .map_err(|e| StartError::Tls(format!("listener {addr}: {e}")))?;
            Ok((addr, tls))
        })
        .collect::<Result<Vec<_>, StartError>>()?;
    let services = Services::open(config)?;
    let data = web::Data::from(Arc::clone(&services));

    // One app behind every listener: clients and other servers may use any.
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(api::cors))
            .wrap(from_fn(api::record_metrics))
            .configure(api::configure)
            .default_service(web::to(api::unrecognized))
    })
    // Storage calls are short; a small pool per worker bounds threads and
    // their memory under load (tokio's default is 512).
    .worker_max_blocking_threads(BLOCKING_THREADS_PER_WORKER)
    // Signals are ours: actix would stop without waiting on SIGINT.
    .disable_signals()
    .shutdown_timeout(30);
    for (addr, tls) in listeners {
        server = match tls {
            Some(tls) => server.bind_rustls_0_23(addr, tls),
            None => server.bind(addr),
        }
        .map_err(|source| StartError::Bind { addr, source })?;
    }
    // In config order, so the first line names the first listener (tests and
    // scripts read the address from it).
    for (bound, scheme) in server.addrs_with_scheme() {
        tracing::info!("listening on {scheme}://{bound}");
    }

    let metrics_server = match services.config.metrics_address {
        Some(addr) => Some(metrics_server(addr, &services)?),
        None => None,
    };

    let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
    let mut workers = services.start_workers(workers_stop.clone());
    let server = server.run();
    let handle = server.handle();
    // The listeners are bound: systemd (Type=notify) may count us as started.
    let notifier = systemd::Notifier::from_env().map(Arc::new);
    if let Some(notifier) = &notifier {
        notifier.notify_or_log("READY=1");
        if let Some(interval) = systemd::watchdog_interval_from_env() {
            workers.push(tokio::spawn(systemd::watchdog(
                Arc::clone(notifier),
                interval,
                workers_stop,
            )));
        }
    }
    tokio::spawn(async {
        // Once the HTTP workers are up, start-up is over.
        tokio::time::sleep(START_UP_SETTLES).await;
        release_start_up_memory();
    });
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        if let Some(notifier) = &notifier {
            notifier.notify_or_log("STOPPING=1");
        }
        handle.stop(true).await;
    });
    let served = server.await.map_err(StartError::Serve);
    if let Some(metrics) = metrics_server {
        metrics.stop(true).await;
    }
    // Background work (deliveries in flight) finishes before the database
    // is flushed.
    let _ = stop_workers.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    served?;
    services.flush()?;
    tracing::info!("database flushed, bye");
    Ok(())
}

/// Serves the metrics on a listener of their own (an operator keeps it
/// private, apart from the client and federation listeners).
fn metrics_server(addr: SocketAddr, services: &Arc<Services>) -> Result<actix_web::dev::ServerHandle, StartError> {
    let data = web::Data::from(Arc::clone(services));
    let path = services.config.metrics_path.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route(&path, web::get().to(render_metrics))
    })
    .workers(1)
    .disable_signals()
    .bind(addr)
    .map_err(|source| StartError::Bind { addr, source })?;
    for (bound, scheme) in server.addrs_with_scheme() {
        tracing::info!("metrics on {scheme}://{bound}");
    }
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

async fn render_metrics(services: web::Data<Services>) -> actix_web::HttpResponse {
    let services = services.into_inner();
    let rendered = services
        .run(|s| match &s.metrics {
            Some(metrics) => metrics.render(s),
            None => Ok(String::new()),
        })
        .await;
    match rendered {
        Ok(text) => actix_web::HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(text),
        Err(e) => {
            tracing::error!(error = %e, "metrics not rendered");
            actix_web::HttpResponse::InternalServerError().finish()
        }
    }
}

/// How long after the listeners are bound start-up is taken to be over.
const START_UP_SETTLES: std::time::Duration = std::time::Duration::from_secs(1);

/// Gives back the memory start-up used once and never again.
///
/// Opening the database (51 column families, options files) and building
/// the services run code spread over most of the binary's text, and the
/// kernel maps the pages around each one it runs: measured, 13 of the
/// 22 MiB of text and 19 MiB of file pages in all were resident at idle,
/// against the ~3 MiB that serving requests touches. Dropping the page
/// table entries of our own read-only, unmodified mappings costs nothing
/// but minor faults: the pages stay in the page cache and come back as
/// code runs. Mappings with any private copy (relocated data behind
/// RELRO) are left alone, since their file content is not what is in
/// memory. glibc's freed start-up heap goes back as well.
#[cfg(target_os = "linux")]
fn release_start_up_memory() {
    crate::service::memory::release_free_heap();
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return;
    };
    let exe = exe.to_string_lossy();
    let mut released = 0usize;
    for mapping in clean_read_only_mappings(&smaps, &exe) {
        // SAFETY: the range is a whole mapping of the executable that is not
        // writable and holds no anonymous (modified) page, so every page
        // refaults from the file with the same content.
        if unsafe { libc::madvise(mapping.0 as *mut libc::c_void, mapping.1, libc::MADV_DONTNEED) } == 0 {
            released += mapping.1;
        }
    }
    tracing::debug!(released_kib = released / 1024, "start-up memory released");
}

#[cfg(not(target_os = "linux"))]
fn release_start_up_memory() {}

/// `(start, length)` of each mapping of `exe` in `smaps` that is private,
/// not writable and has no anonymous page.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn clean_read_only_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        // A mapping's header line starts `start-end`; its fields end in `:`.
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            current = match (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) {
                (Ok(start), Ok(end))
                    if path == exe && perms.starts_with('r') && !perms.contains('w') && perms.ends_with('p') =>
                {
                    Some((start, end - start))
                }
                _ => None,
            };
        } else if first == "Anonymous:" {
            let anonymous_kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            if let Some(mapping) = current.take() {
                if anonymous_kib == 0 {
                    found.push(mapping);
                }
            }
        }
    }
    found
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// A listener's rustls config; the error says what is wrong with which file.
fn load_tls(tls: &crate::config::TlsConfig) -> Result<rustls::ServerConfig, String> {
    let read = |path: &std::path::Path| {
        std::fs::File::open(path)
            .map(BufReader::new)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let certs = rustls_pemfile::certs(&mut read(&tls.certs)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificates in {}: {e}", tls.certs.display()))?;
    let key = rustls_pemfile::private_key(&mut read(&tls.key)?)
        .map_err(|e| format!("key in {}: {e}", tls.key.display()))?
        .ok_or_else(|| format!("no private key in {}", tls.key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::clean_read_only_mappings;

    #[test]
    fn only_unmodified_read_only_mappings_of_the_binary_are_released() {
        let smaps = "\
55616b695000-55616bbd3000 r--p 00000000 fe:00 10292962 /usr/bin/conduit
Rss:                1836 kB
Anonymous:             0 kB
55616bbd3000-55616d185000 r-xp 0053d000 fe:00 10292962 /usr/bin/conduit
Anonymous:             0 kB
55616d185000-55616d201000 r--p 01aee000 fe:00 10292962 /usr/bin/conduit
Anonymous:           496 kB
55616d201000-55616d204000 rw-p 01b69000 fe:00 10292962 /usr/bin/conduit
Anonymous:            12 kB
7f0000000000-7f0000001000 r-xp 00000000 fe:00 42 /usr/lib/libc.so.6
Anonymous:             0 kB
";
        assert_eq!(
            clean_read_only_mappings(smaps, "/usr/bin/conduit"),
            vec![
                (0x55616b695000, 0x55616bbd3000 - 0x55616b695000),
                (0x55616bbd3000, 0x55616d185000 - 0x55616bbd3000),
            ]
        );
    }
}
