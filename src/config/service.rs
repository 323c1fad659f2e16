//! The broker's own sections: its HTTP server, database, identity, authentication,
//! limits on plans, secrets, outgoing TLS, logging, pricing and budgets, each with
//! its built-in defaults.

use std::path::Path;

use loads_actors::domain::Limits;
use serde::{Deserialize, Serialize};

use super::{DatabaseUrl, LogFormat, Secret};

/// How runs are priced before they start.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingSettings {
    /// A price table (TOML, the shipped one's format) used instead of the one shipped with loads.
    pub file: String,
    /// Seconds each instance is charged for before its step starts: launch, boot, Docker, image load.
    pub setup_seconds: u64,
}

impl Default for PricingSettings {
    fn default() -> Self {
        Self { file: String::new(), setup_seconds: 300 }
    }
}

/// Caps on what runs may cost on EC2, checked against a run's estimate before anything is
/// launched and against its recorded cost while it runs; 0 = no cap.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSettings {
    /// Most dollars one run may reach.
    pub max_usd_per_run: f64,
    /// Most instance-hours one run may reach.
    pub max_instance_hours_per_run: f64,
    /// Most dollars this broker's runs may reach in a calendar month (UTC), from their recorded cost.
    pub max_usd_per_month: f64,
    /// How often a live run's cost is metered, recorded and checked against the caps, in seconds.
    pub check_seconds: f64,
    /// The clock the cost meter reads (the system's; tests give their own).
    #[serde(skip)]
    pub clock: loads_actors::domain::usage::Clock,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            max_usd_per_run: 0.0,
            max_instance_hours_per_run: 0.0,
            max_usd_per_month: 0.0,
            check_seconds: 10.0,
            clock: Default::default(),
        }
    }
}

/// The HTTP server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to bind; without auth tokens only a loopback address is allowed.
    pub host: String,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Host names (`Host` header, port aside) the API answers to besides its own address;
    /// on a loopback address only loopback names are accepted otherwise, against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://ui.example:8443`) whose pages may change things and open the feed;
    /// a page of the API's own origin always may, any other is refused.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self { host: "127.0.0.1".into(), port: 8080, max_body_bytes: 1_048_576, allowed_hosts: Vec::new(), allowed_origins: Vec::new() }
    }
}

/// The database.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://FILE` or `postgres://user:password@host/db`.
    pub url: DatabaseUrl,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: DatabaseUrl("sqlite://loads.db".into()) }
    }
}

/// This broker's identity.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// Tags every resource this broker creates, so it only ever cleans up its own.
    pub id: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self { id: "loads".into() }
    }
}

/// API authentication.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Bearer tokens with the `operate` role (everything); empty with `read_tokens` = no auth (loopback only).
    pub tokens: Vec<Secret>,
    /// Bearer tokens with the `read` role: `GET` only.
    pub read_tokens: Vec<Secret>,
}

/// Caps on what plans may ask for.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Largest `instance_count` of one step.
    pub max_instance_count: u32,
    /// Most steps in one plan.
    pub max_steps_per_plan: usize,
    /// Most variables in one environment (plan, step or run).
    pub max_env_vars: usize,
    /// Most bytes (names and values) in one environment.
    pub max_env_bytes: usize,
    /// Most websocket subscribers of one run's live feed.
    pub max_subscribers_per_run: usize,
    /// Most runs live at once (each holds a network on the engine, and nodes); more starts get 429.
    pub max_live_runs: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        // The plan caps' defaults are the domain's own.
        let plans = Limits::default();
        Self {
            max_instance_count: plans.max_instance_count,
            max_steps_per_plan: plans.max_steps_per_plan,
            max_env_vars: plans.max_env_vars,
            max_env_bytes: plans.max_env_bytes,
            max_subscribers_per_run: 1000,
            max_live_runs: 20,
        }
    }
}

/// Secrets that env values refer to as `secret:NAME`: from `file` (lines
/// `NAME=value`, `#` comments) and from `LOADS_SECRET_<NAME>` variables, which win.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretSettings {
    /// A file of `NAME=value` lines; empty for none.
    pub file: String,
}

/// Outgoing TLS: the system's trust roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` honoured), and a private CA.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// A PEM file of CA certificates trusted besides the system's; empty for none.
    pub ca_file: String,
}

impl TlsSettings {
    /// The trust every outgoing connection uses.
    pub fn tls(&self) -> Result<loads_actors::infra::tls::Tls, loads_actors::infra::tls::TlsError> {
        loads_actors::infra::tls::Tls::new((!self.ca_file.is_empty()).then(|| Path::new(&self.ca_file)))
    }
}

/// Logging.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `loads=debug,info`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".into() }
    }
}
