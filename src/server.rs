//! Start-up, the HTTP server, and graceful shutdown.

use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::api;
use crate::config::Config;
use crate::service::{ServiceError, Services};

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
    let addr = SocketAddr::new(config.address, config.port);
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let services = Services::open(config)?;
    let data = web::Data::from(Arc::clone(&services));

    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(api::cors))
            .configure(api::configure)
            .default_service(web::to(api::unrecognized))
    })
    // Storage calls are short; a small pool per worker bounds threads and
    // their memory under load (tokio's default is 512).
    .worker_max_blocking_threads(BLOCKING_THREADS_PER_WORKER)
    // Signals are ours: actix would stop without waiting on SIGINT.
    .disable_signals()
    .shutdown_timeout(30);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23(addr, tls),
        None => server.bind(addr),
    }
    .map_err(|source| StartError::Bind { addr, source })?;
    for bound in server.addrs() {
        tracing::info!("listening on {scheme}://{bound}");
    }

    let server = server.run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        handle.stop(true).await;
    });
    server.await.map_err(StartError::Serve)?;
    services.flush()?;
    tracing::info!("database flushed, bye");
    Ok(())
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

fn load_tls(tls: &crate::config::TlsConfig) -> Result<rustls::ServerConfig, StartError> {
    let read = |path: &std::path::Path| {
        std::fs::File::open(path)
            .map(BufReader::new)
            .map_err(|e| StartError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let certs = rustls_pemfile::certs(&mut read(&tls.certs)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(format!("certificates in {}: {e}", tls.certs.display())))?;
    let key = rustls_pemfile::private_key(&mut read(&tls.key)?)
        .map_err(|e| StartError::Tls(format!("key in {}: {e}", tls.key.display())))?
        .ok_or_else(|| StartError::Tls(format!("no private key in {}", tls.key.display())))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))
}
