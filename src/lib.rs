//! loads: a load-test orchestrator. This crate is the binary's face: the CLI,
//! the HTTP API, configuration, logging, and `startup`, which wires the actor
//! system of `loads-actors` to the HTTP server.

pub mod api;
pub mod cli;
pub mod config;
pub mod images;
pub use loads_relay as relay;
pub mod startup;
pub mod telemetry;
pub mod ui;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
