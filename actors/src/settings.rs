//! Settings the run engine's actors share, built once from the broker's configuration.

/// How runs are carried out.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// This broker's id, on every resource it creates.
    pub broker_id: String,
    /// This broker's version, given to containers as `BROKER_VERSION`.
    pub broker_version: String,
    /// The image of the per-node metrics relay.
    pub relay_image: String,
    /// How long an image copy to a node may go without moving a byte.
    pub copy_stall: std::time::Duration,
    /// Seconds between SIGTERM and SIGKILL when stopping containers.
    pub stop_grace_secs: u32,
    /// Lines of each container's output kept when it is removed.
    pub log_tail: usize,
    /// Longest a node may take to get ready (image load or pull, relay start).
    pub prepare_timeout_secs: u64,
    /// The relays' flush window, in milliseconds.
    pub flush_ms: u64,
    /// What `secret:NAME` env values stand for.
    pub secrets: crate::domain::secrets::Secrets,
    /// Caps on plans and run envs.
    pub limits: crate::domain::Limits,
    /// Most live-feed subscribers one run may have.
    pub max_subscribers_per_run: usize,
    /// Whether metrics are written to InfluxDB (`influx.url`): a monitor step needs it.
    pub influx: bool,
    /// Whom HTTPS image sources' certificates are trusted by.
    pub tls: crate::infra::tls::Tls,
    /// Where image tarballs are downloaded to (a directory per run, removed once loaded).
    pub download_dir: std::path::PathBuf,
    /// The base URL relays deliver to instead of the broker's forward (`metrics.relay_url`).
    pub relay_url: Option<String>,
    /// Credentials for pulls from private registries.
    pub registries: crate::infra::registry::Registries,
    /// PEM certificates relays trust besides the public web's roots (`tls.ca_file`, `SSL_CERT_FILE`).
    pub relay_ca: Option<String>,
}
