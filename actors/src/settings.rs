//! Settings the run engine's actors share, built once from the broker's configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::infra::ec2::{Backoff, RegionConfig};
use crate::infra::ssh::SshSettings;

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
    /// Most memory a relay container may use, in bytes.
    pub relay_memory_bytes: u64,
    /// Distinct series a relay keeps in one window.
    pub relay_max_series: usize,
    /// What `secret:NAME` env values stand for.
    pub secrets: crate::domain::secrets::Secrets,
    /// Caps on plans and run envs.
    pub limits: crate::domain::Limits,
    /// Most live-feed subscribers one run may have.
    pub max_subscribers_per_run: usize,
    /// Most runs live at once on this broker.
    pub max_live_runs: usize,
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
    /// How runs are priced and capped.
    pub cost: CostSettings,
}

/// How runs are priced before they start, and what they may cost.
#[derive(Clone, Debug)]
pub struct CostSettings {
    /// On-demand prices by region and type.
    pub prices: std::sync::Arc<crate::domain::cost::PriceTable>,
    /// Seconds each instance is charged for before its step starts.
    pub setup_seconds: u64,
    /// Caps on one run's estimate.
    pub budget: crate::domain::cost::Budget,
    /// The configured EC2 regions when nodes are EC2 instances; `None` with the local
    /// provider, whose runs cost nothing, so no cap applies to them.
    pub cloud_regions: Option<Vec<String>>,
    /// How often a live run's cost is metered, recorded and checked.
    pub check_every: std::time::Duration,
    /// The clock the cost meter reads.
    pub clock: crate::domain::usage::Clock,
}

impl Default for CostSettings {
    fn default() -> Self {
        Self {
            prices: std::sync::Arc::new(crate::domain::cost::PriceTable::shipped()),
            setup_seconds: 300,
            budget: Default::default(),
            cloud_regions: None,
            check_every: std::time::Duration::from_secs(10),
            clock: Default::default(),
        }
    }
}

/// Which address of an instance the broker connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    /// The public IPv4 address (a broker outside the VPC).
    Public,
    /// The private address (a broker inside the VPC).
    Private,
}

/// How the `ec2` provider launches and reaches nodes.
#[derive(Clone, Debug)]
pub struct CloudSettings {
    /// Launch settings by region name; a step in another region is refused.
    pub regions: BTreeMap<String, RegionConfig>,
    /// Most instances this broker has at once (running, idle or being launched).
    pub max_instances: u32,
    /// Most instances one run may use.
    pub max_instances_per_run: u32,
    /// Which address SSH connects to.
    pub address: AddressKind,
    /// Addresses every node's SSH is reached at instead, assigned in launch order (test doubles).
    pub address_override: Vec<SocketAddr>,
    /// The `Owner` tag.
    pub owner: String,
    /// How long instances may take to run, and Docker to answer on them.
    pub launch_timeout: Duration,
    /// How long `spot_fallback` spot instances may take to run before the shortfall goes on demand.
    pub spot_wait: Duration,
    /// Where nodes read their instance metadata (no trailing slash).
    pub metadata_url: String,
    /// How often each spot node's interruption notice is read.
    pub spot_notice: Duration,
    /// Added to a run's maximum time for the dead-man's switch deadline.
    pub expiry_grace: Duration,
    /// Keep released instances for reuse.
    pub pooling: bool,
    /// How long a pooled instance may stay idle before it is terminated.
    pub idle: Duration,
    /// SSH login and host-key checking.
    pub ssh: SshSettings,
    /// Commands run as root on each node before use (also in the user-data).
    pub node_tuning: Vec<String>,
    /// The node's directory for loads' files.
    pub node_dir: String,
    /// The user-data template's text.
    pub user_data_template: String,
    /// Retries of throttling and capacity errors.
    pub backoff: Backoff,
    /// The relay image, copied from the broker's engine to nodes that lack it.
    pub relay_image: String,
    /// How long an image copy to a node may go without moving a byte.
    pub copy_stall: Duration,
}
