//! Conduit: a Matrix homeserver in one binary with one embedded RocksDB.
//!
//! Layers, top to bottom: [`api`] (HTTP) → [`service`] (Matrix logic) →
//! [`database`] (key-value storage). Each layer only calls the one below.

pub mod admin_cli;
pub mod api;
pub mod cli;
pub mod config;
pub mod database;
pub mod server;
pub mod service;
pub mod systemd;
