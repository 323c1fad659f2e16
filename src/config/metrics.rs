//! Where metrics go: the relays' delivery, InfluxDB and Grafana, each with its
//! built-in defaults.

use serde::{Deserialize, Serialize};

use super::Secret;

/// Where relays deliver metrics.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address of the ingest listener. Nodes do not reach it there: EC2 nodes through their
    /// SSH connection, local nodes through a forward on their run network's gateway.
    pub ingest_host: String,
    /// Its port; 0 picks a free one (but relays of runs carried on after a restart need the same port).
    pub ingest_port: u16,
    /// Longest one delivery's body may take to arrive.
    pub ingest_body_timeout_seconds: u64,
    /// Deliveries whose bodies are read at once, at most.
    pub ingest_max_bodies: usize,
    /// The relays' flush window, in milliseconds (merged windows are grouped by the second).
    pub flush_ms: u64,
    /// Where relays deliver instead of the broker's own forward: the base URL of a TLS
    /// terminator (or load balancer) in front of the ingest listener that the nodes can
    /// reach, such as `https://loads.example.com:8443`. Relays trust the public web's
    /// roots and the certificates of `tls.ca_file` and `SSL_CERT_FILE`. Empty: the forward.
    pub relay_url: String,
    /// Most memory a node's relay container may use, in MiB (the engine's limit): a
    /// generator that floods it with names is stopped there, not at the node's memory.
    pub relay_memory_mb: u64,
    /// Distinct series a relay keeps in one window (and gauges it keeps); the values of
    /// further series are counted by name pattern, not kept.
    pub max_series_per_window: usize,
    /// Distinct series a step keeps over its run, on the broker; the same holds past it.
    pub max_series_per_step: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            ingest_host: "127.0.0.1".into(),
            ingest_port: 8081,
            ingest_body_timeout_seconds: 10,
            ingest_max_bodies: 4,
            flush_ms: 1000,
            relay_url: String::new(),
            relay_memory_mb: 512,
            max_series_per_window: 2000,
            max_series_per_step: 2000,
        }
    }
}

/// Per-run dashboards: rendered always, published when `url` and `token` are set.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrafanaSettings {
    /// Grafana's base URL; empty to publish nothing.
    pub url: String,
    /// A service-account token that may write dashboards.
    pub token: Secret,
    /// The folder to publish into, by uid; empty for General.
    pub folder_uid: String,
    /// The name of the Grafana data source for `influx.database`.
    pub datasource: String,
    /// A directory of `NAME.json.hbs` templates that plans may name; empty for the built-in only.
    pub templates_dir: String,
}

impl Default for GrafanaSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: Secret::default(),
            folder_uid: String::new(),
            datasource: "InfluxDB".into(),
            templates_dir: String::new(),
        }
    }
}

impl GrafanaSettings {
    /// How the metrics actor makes and publishes dashboards.
    pub fn dashboards(&self, tls: &loads_actors::infra::tls::Tls) -> loads_actors::metrics::DashboardSettings {
        use loads_actors::infra::grafana::{Dashboards, Grafana};
        let dir = (!self.templates_dir.is_empty()).then(|| self.templates_dir.clone().into());
        let grafana = (!self.url.is_empty() && !self.token.expose().is_empty()).then(|| Grafana {
            url: self.url.clone(),
            token: self.token.expose().to_string(),
            folder_uid: (!self.folder_uid.is_empty()).then(|| self.folder_uid.clone()),
            tls: tls.clone(),
        });
        loads_actors::metrics::DashboardSettings { templates: Dashboards::new(dir), datasource: self.datasource.clone(), grafana }
    }
}

/// Where metrics are written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfluxSettings {
    /// `http://host:8086`; empty to write nothing.
    pub url: String,
    /// The database, created when missing.
    pub database: String,
    /// User, if InfluxDB requires authentication.
    pub username: String,
    /// Password, if InfluxDB requires authentication.
    pub password: Secret,
}

impl Default for InfluxSettings {
    fn default() -> Self {
        Self { url: String::new(), database: "loads".into(), username: String::new(), password: Secret::default() }
    }
}

impl InfluxSettings {
    /// The client, when a URL is configured.
    pub fn client(&self, tls: &loads_actors::infra::tls::Tls) -> Option<loads_actors::infra::influx::Influx> {
        if self.url.is_empty() {
            return None;
        }
        let credentials = (!self.username.is_empty()).then(|| (self.username.as_str(), self.password.expose()));
        Some(loads_actors::infra::influx::Influx::new(&self.url, &self.database, credentials, tls))
    }
}
