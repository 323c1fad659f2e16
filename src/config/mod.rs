//! Configuration: built-in defaults, then `loads.toml` (or `--config FILE`),
//! then `LOADS__SECTION__KEY` environment variables.
//!
//! Unknown keys and bad values are errors naming the key, so a typo in a
//! variable name cannot silently fall back to a default. Secrets print masked.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use config::{Config, Environment, File, FileFormat};
use loads_actors::domain::Limits;
use serde::{Deserialize, Serialize, Serializer};

/// Every setting of the broker; each section's `Default` is the built-in default.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The HTTP server.
    pub server: ServerSettings,
    /// The database.
    pub database: DatabaseSettings,
    /// This broker's identity.
    pub broker: BrokerSettings,
    /// API authentication.
    pub auth: AuthSettings,
    /// Caps on what plans may ask for.
    pub limits: LimitSettings,
    /// Where nodes come from.
    pub pool: PoolSettings,
    /// EC2: where and how instances are launched, and which regions are managed.
    pub ec2: Ec2Settings,
    /// SSH to cloud nodes.
    pub ssh: SshConfig,
    /// How containers are run.
    pub docker: DockerSettings,
    /// Where relays deliver metrics.
    pub metrics: MetricsSettings,
    /// Where metrics are written (InfluxDB 1.x); an empty `url` writes nothing there.
    pub influx: InfluxSettings,
    /// Per-run dashboards.
    pub grafana: GrafanaSettings,
    /// What `secret:NAME` env values stand for.
    pub secrets: SecretSettings,
    /// Whom outgoing HTTPS connections trust (InfluxDB, Grafana, image downloads).
    pub tls: TlsSettings,
    /// Logging.
    pub log: LogSettings,
    /// How runs are priced before they start.
    pub pricing: PricingSettings,
    /// Caps on what a run may cost.
    pub budget: BudgetSettings,
}

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
        Self {
            max_instance_count: 100,
            max_steps_per_plan: 50,
            max_env_vars: 200,
            max_env_bytes: 65_536,
            max_subscribers_per_run: 1000,
            max_live_runs: 20,
        }
    }
}

/// Where nodes come from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// `local`: every node is a set of containers on this machine's Docker engine; `ec2`: every node is an EC2 instance.
    pub provider: Provider,
    /// `ec2`: keep released instances for later runs of the same type and region.
    pub pooling: bool,
    /// `ec2` with pooling: seconds an idle instance is kept before it is terminated.
    pub idle_seconds: u64,
    /// `ec2`: seconds instances may take to be running, and Docker on them to answer.
    pub launch_timeout_seconds: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self { provider: Provider::Local, pooling: false, idle_seconds: 600, launch_timeout_seconds: 600 }
    }
}

/// SSH to cloud nodes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// The login (root, or a user with passwordless sudo).
    pub user: String,
    /// The private key (its public half is the EC2 key pair `ec2.regions.<region>.key_name`).
    pub key_path: String,
    /// The known-hosts file host keys are checked against.
    pub known_hosts: String,
    /// Record an unknown host key on first use instead of refusing it.
    pub record_new_hosts: bool,
    /// Seconds to keep trying to connect to a node.
    pub connect_timeout_seconds: u64,
    /// Seconds a connected node may leave its connection's probe (sent every quarter of
    /// this, 1 to 15 s) unanswered before it counts as lost, as if it had stopped.
    pub silence_seconds: u64,
    /// The node's directory for loads' files (the dead-man's switch deadline).
    pub node_dir: String,
    /// Commands run as root on every node before use (and in the user-data).
    pub node_tuning: Vec<String>,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            user: "ubuntu".into(),
            key_path: String::new(),
            known_hosts: "loads_known_hosts".into(),
            record_new_hosts: false,
            connect_timeout_seconds: 300,
            silence_seconds: 20,
            node_dir: "/var/lib/loads".into(),
            node_tuning: [
                "sysctl -qw net.core.somaxconn=65535",
                "sysctl -qw net.ipv4.ip_local_port_range='1024 65535'",
                "sysctl -qw net.ipv4.tcp_tw_reuse=1",
                "sysctl -qw fs.file-max=1048576",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

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

/// EC2: the regions this broker launches in and manages (lists, terminates, reaps).
/// Credentials come from the standard AWS chain, never from here.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ec2Settings {
    /// Another EC2 endpoint (a test double); the standard `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: String,
    /// Most instances this broker has at once (running, idle in the pool, or being launched).
    pub max_instances: u32,
    /// Most instances one run may use.
    pub max_instances_per_run: u32,
    /// `public` or `private`: the address SSH connects to.
    pub address: Ec2Address,
    /// `host:port` addresses nodes' SSH is reached at instead, assigned in launch order (test doubles).
    pub address_override: Vec<String>,
    /// The `Owner` tag of instances; empty = the broker id.
    pub owner: String,
    /// Seconds added to a run's maximum time before a node's dead-man's switch fires.
    pub expiry_grace_seconds: u64,
    /// Another user-data template file; empty = `templates/user-data.sh.hbs`.
    pub user_data_template: String,
    /// Launch attempts in all when EC2 throttles or lacks capacity.
    pub launch_attempts: u32,
    /// The first wait between attempts, doubled each time (up to 20 s), with full jitter.
    pub backoff_ms: u64,
    /// Longest one EC2 request may take before it is abandoned (a launch is then tried again).
    pub request_timeout_seconds: u64,
    /// `spot_fallback` steps: seconds spot instances may take to run before the shortfall is launched on demand.
    pub spot_wait_seconds: u64,
    /// Where a node reads its instance metadata (spot interruption notices), as seen from the node.
    pub metadata_url: String,
    /// How often each spot node's interruption notice is read, in seconds.
    pub spot_notice_seconds: u64,
    /// Per region (`ec2.regions.us-west-2`, or `LOADS__EC2__REGIONS__US_WEST_2__AMI`).
    pub regions: std::collections::BTreeMap<String, RegionSettings>,
}

impl Default for Ec2Settings {
    fn default() -> Self {
        Self {
            endpoint_url: String::new(),
            max_instances: 50,
            max_instances_per_run: 50,
            address: Ec2Address::Public,
            address_override: Vec::new(),
            owner: String::new(),
            expiry_grace_seconds: 900,
            user_data_template: String::new(),
            launch_attempts: 6,
            backoff_ms: 500,
            request_timeout_seconds: 30,
            spot_wait_seconds: 120,
            metadata_url: "http://169.254.169.254".into(),
            spot_notice_seconds: 5,
            regions: std::collections::BTreeMap::new(),
        }
    }
}

/// How instances are launched in one region.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionSettings {
    /// The machine image: `ami-...`, or `resolve:ssm:/aws/service/...` for a public SSM parameter.
    pub ami: String,
    /// The subnet; empty for the default VPC's.
    pub subnet_id: String,
    /// Security groups, which must let the broker reach port 22 (a list, or comma-separated).
    #[serde(deserialize_with = "list_or_commas")]
    pub security_group_ids: Vec<String>,
    /// The EC2 key pair whose private key is `ssh.key_path`.
    pub key_name: String,
}

/// A list, or one comma-separated string (as environment variables give it).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(list) => list,
        Either::One(text) => text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect(),
    })
}

/// How containers are run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSettings {
    /// Seconds between SIGTERM and SIGKILL when a container is stopped.
    pub stop_grace_seconds: u32,
    /// Longest a node may take to get its image (load or pull) before its step fails.
    pub prepare_timeout_seconds: u64,
    /// An image copy to a node (streamed from the broker's engine) fails when no byte
    /// has moved for this long, however long it has run.
    pub copy_stall_seconds: u64,
    /// The only host directory `volume_mapping` may mount from (on the local provider).
    pub volume_root: String,
    /// The only directory a `container_url` on the broker's disk may name; empty: none may.
    pub image_root: String,
    /// Whether a `container_url` may be an http(s) URL on a loopback address (the broker's own).
    pub allow_loopback_image_urls: bool,
    /// Where `container_url` tarballs are downloaded to, once per step, before the nodes load them.
    pub download_dir: String,
    /// Lines of each container's output kept after it is removed.
    pub log_tail: usize,
    /// Logins for pulls from private registries, by registry host as images name it
    /// (`registry.example.com:5000`); Amazon ECR registries need none (the broker's AWS
    /// credentials fetch a token).
    pub registry_auth: std::collections::BTreeMap<String, RegistryLogin>,
}

/// A private registry's login.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryLogin {
    /// The user.
    pub username: String,
    /// The password or token, or `secret:NAME` (a secret of `secrets.file` or `LOADS_SECRET_NAME`).
    pub password: Secret,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            stop_grace_seconds: 15,
            prepare_timeout_seconds: 900,
            copy_stall_seconds: 120,
            volume_root: "/var/tmp/loads/volumes".into(),
            image_root: String::new(),
            allow_loopback_image_urls: false,
            download_dir: "/var/tmp/loads/downloads".into(),
            log_tail: 1000,
            registry_auth: std::collections::BTreeMap::new(),
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

/// A setting with a few named values: read from its name, written as it.
macro_rules! named_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                match text.as_str() {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("must be {}, not {other:?}", [$(concat!("`", $text, "`")),+].join(" or "))),
                }
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

named_values! {
    /// How log lines are written.
    LogFormat {
        /// Readable lines.
        Human = "human",
        /// One JSON object per line.
        Json = "json",
    }
}

named_values! {
    /// Where nodes come from.
    Provider {
        /// Containers on this machine's Docker engine.
        Local = "local",
        /// EC2 instances.
        Ec2 = "ec2",
    }
}

named_values! {
    /// Which address of an instance SSH connects to.
    Ec2Address {
        /// The public IPv4 address (a broker outside the VPC).
        Public = "public",
        /// The private address (a broker inside the VPC).
        Private = "private",
    }
}

impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Human, Self::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(<&'static str>::from(*self)))
    }
}

/// A secret string: read from configuration, never printed.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for comparing or sending.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}

/// A database URL whose password is masked when printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `********`.
    pub fn masked(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.clone() };
        let rest = &url[scheme_end..];
        let Some(at) = rest.find('@') else { return url.clone() };
        match rest[..at].find(':') {
            Some(colon) => format!("{}{}:********{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
            None => url.clone(),
        }
    }

    fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A key that no setting has.
    #[error("configuration: unknown key `{key}` (known here: {known})")]
    Unknown {
        /// The full key, e.g. `server.prot`.
        key: String,
        /// The keys known at that level.
        known: String,
    },
    /// A value of the wrong type or form, e.g. a string where a list belongs.
    #[error("configuration: {key}: {message}")]
    Type {
        /// The key, e.g. `ec2.address_override`.
        key: String,
        /// What serde expected.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("configuration: {key}: {message}")]
    Invalid {
        /// The key, e.g. `database.url`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The first key of `tree` that `reference` (the defaults) does not have, with the known keys beside it.
fn unknown_key(tree: &serde_json::Value, reference: &serde_json::Value, prefix: &str) -> Option<(String, String)> {
    let (serde_json::Value::Object(tree), serde_json::Value::Object(reference)) = (tree, reference) else { return None };
    for (key, value) in tree {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        // Regions and registries are named by the operator; each one's keys are checked against its reference.
        let named_reference = match path.as_str() {
            "ec2.regions" => Some(serde_json::json!({"ami": "", "subnet_id": "", "security_group_ids": [], "key_name": ""})),
            "docker.registry_auth" => Some(serde_json::json!({"username": "", "password": ""})),
            _ => None,
        };
        if let Some(reference) = named_reference {
            if let serde_json::Value::Object(named) = value {
                for (name, settings) in named {
                    if let Some(found) = unknown_key(settings, &reference, &format!("{path}.{name}")) {
                        return Some(found);
                    }
                }
            }
            continue;
        }
        match reference.get(key) {
            None => return Some((path, reference.keys().cloned().collect::<Vec<_>>().join(", "))),
            Some(inner) => {
                if let Some(found) = unknown_key(value, inner, &path) {
                    return Some(found);
                }
            }
        }
    }
    None
}

impl Settings {
    /// Loads the settings: defaults, then `file` (or `./loads.toml` when present), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like `load`, with the environment given explicitly.
    pub fn load_from(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut builder = Config::builder();
        builder = match file {
            Some(path) => builder.add_source(File::from(path).format(FileFormat::Toml).required(true)),
            None => builder.add_source(File::new("loads.toml", FileFormat::Toml).required(false)),
        };
        let vars: config::Map<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("LOADS__")).collect();
        builder = builder.add_source(
            Environment::with_prefix("LOADS")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.tokens")
                .with_list_parse_key("auth.read_tokens")
                .with_list_parse_key("ec2.address_override")
                .with_list_parse_key("ssh.node_tuning")
                .with_list_parse_key("server.allowed_hosts")
                .with_list_parse_key("server.allowed_origins")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let merged = builder.build()?;
        let tree: serde_json::Value = merged.clone().try_deserialize()?;
        let defaults = serde_json::to_value(Settings::default()).expect("the defaults serialize");
        if let Some((key, known)) = unknown_key(&tree, &defaults, "") {
            return Err(ConfigError::Unknown { key, known });
        }
        // Every value is read with its key's path, so a type error says which key it is.
        let mut settings: Settings = serde_path_to_error::deserialize(merged).map_err(|e| ConfigError::Type {
            key: e.path().to_string(),
            message: e.into_inner().to_string().replace("a sequence", "a list"),
        })?;
        // Environment variable names cannot hold `-`: `US_WEST_2` is `us-west-2`.
        settings.ec2.regions = std::mem::take(&mut settings.ec2.regions).into_iter().map(|(k, v)| (k.replace('_', "-"), v)).collect();
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_string() });
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return invalid("database.url", "must start with sqlite:, postgres:// or postgresql://");
        }
        if self.server.host.trim().is_empty() {
            return invalid("server.host", "must not be empty");
        }
        if self.server.max_body_bytes < 1024 {
            return invalid("server.max_body_bytes", "must be at least 1024");
        }
        if self.broker.id.is_empty()
            || self.broker.id.len() > 64
            || !self.broker.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid("broker.id", "must be 1-64 letters, digits, - or _");
        }
        if self.auth.tokens.iter().any(|t| t.expose().len() < 16) {
            return invalid("auth.tokens", "every token must be at least 16 characters long");
        }
        if self.auth.read_tokens.iter().any(|t| t.expose().len() < 16) {
            return invalid("auth.read_tokens", "every token must be at least 16 characters long");
        }
        if self.limits.max_instance_count == 0 {
            return invalid("limits.max_instance_count", "must be at least 1");
        }
        if self.limits.max_steps_per_plan == 0 {
            return invalid("limits.max_steps_per_plan", "must be at least 1");
        }
        if self.limits.max_env_vars == 0
            || self.limits.max_env_bytes == 0
            || self.limits.max_subscribers_per_run == 0
            || self.limits.max_live_runs == 0
        {
            return invalid("limits", "max_env_vars, max_env_bytes, max_subscribers_per_run and max_live_runs must be at least 1");
        }
        if self.pool.idle_seconds == 0 {
            return invalid("pool.idle_seconds", "must be at least 1");
        }
        if self.pool.launch_timeout_seconds == 0 {
            return invalid("pool.launch_timeout_seconds", "must be at least 1");
        }
        if self.ec2.launch_attempts == 0 {
            return invalid("ec2.launch_attempts", "must be at least 1");
        }
        if self.ec2.spot_wait_seconds == 0 {
            return invalid("ec2.spot_wait_seconds", "must be at least 1");
        }
        if self.ec2.spot_notice_seconds == 0 {
            return invalid("ec2.spot_notice_seconds", "must be at least 1");
        }
        let metadata = &self.ec2.metadata_url;
        if !(metadata.starts_with("http://") || metadata.starts_with("https://"))
            || !metadata.chars().all(|c| c.is_ascii_alphanumeric() || ".:/-_[]".contains(c))
        {
            return invalid("ec2.metadata_url", "must be an http:// or https:// URL (letters, digits, . : / - _ [ ] only)");
        }
        if self.ec2.request_timeout_seconds == 0 {
            return invalid("ec2.request_timeout_seconds", "must be at least 1");
        }
        if self.ec2.max_instances == 0 || self.ec2.max_instances_per_run == 0 {
            return invalid("ec2.max_instances", "ec2.max_instances and ec2.max_instances_per_run must be at least 1");
        }
        if let Some(bad) = self.ec2.address_override.iter().find(|a| a.parse::<std::net::SocketAddr>().is_err()) {
            return Err(ConfigError::Invalid { key: "ec2.address_override", message: format!("{bad:?} is not an ip:port address") });
        }
        if self.ssh.connect_timeout_seconds == 0 {
            return invalid("ssh.connect_timeout_seconds", "must be at least 1");
        }
        if !(2..=3600).contains(&self.ssh.silence_seconds) {
            return invalid("ssh.silence_seconds", "must be 2 to 3600");
        }
        if !self.ssh.node_dir.starts_with('/') || self.ssh.node_dir.contains(|c: char| c.is_whitespace() || "'\"$`;&|".contains(c)) {
            return invalid("ssh.node_dir", "must be an absolute path without spaces or shell characters");
        }
        if self.pool.provider == Provider::Ec2 {
            if self.ssh.key_path.is_empty() {
                return invalid("ssh.key_path", "is required with pool.provider = \"ec2\"");
            }
            if self.ec2.regions.is_empty() {
                return invalid("ec2.regions", "needs at least one region with an `ami` with pool.provider = \"ec2\"");
            }
            if let Some((name, _)) = self.ec2.regions.iter().find(|(_, r)| r.ami.is_empty()) {
                return Err(ConfigError::Invalid {
                    key: "ec2.regions",
                    message: format!("ec2.regions.{name}.ami must be set with pool.provider = \"ec2\""),
                });
            }
        }
        if !std::path::Path::new(&self.docker.volume_root).is_absolute() {
            return invalid("docker.volume_root", "must be an absolute path");
        }
        if !(self.docker.image_root.is_empty() || std::path::Path::new(&self.docker.image_root).is_absolute()) {
            return invalid("docker.image_root", "must be empty or an absolute path");
        }
        if !(self.budget.max_usd_per_run.is_finite() && self.budget.max_usd_per_run >= 0.0) {
            return invalid("budget.max_usd_per_run", "must be a number of dollars, 0 or more (0 = no cap)");
        }
        if !(self.budget.max_instance_hours_per_run.is_finite() && self.budget.max_instance_hours_per_run >= 0.0) {
            return invalid("budget.max_instance_hours_per_run", "must be a number of hours, 0 or more (0 = no cap)");
        }
        if !(self.budget.max_usd_per_month.is_finite() && self.budget.max_usd_per_month >= 0.0) {
            return invalid("budget.max_usd_per_month", "must be a number of dollars, 0 or more (0 = no cap)");
        }
        if !(self.budget.check_seconds.is_finite() && (0.05..=3600.0).contains(&self.budget.check_seconds)) {
            return invalid("budget.check_seconds", "must be a number of seconds from 0.05 to 3600");
        }
        if self.metrics.ingest_body_timeout_seconds == 0 {
            return invalid("metrics.ingest_body_timeout_seconds", "must be at least 1");
        }
        if self.metrics.ingest_max_bodies == 0 {
            return invalid("metrics.ingest_max_bodies", "must be at least 1");
        }
        if self.metrics.ingest_host.trim_matches(['[', ']']).parse::<IpAddr>().is_err() {
            return invalid("metrics.ingest_host", "must be an IP address such as 127.0.0.1");
        }
        if let Some(bad) =
            self.server.allowed_origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/'))
        {
            return Err(ConfigError::Invalid {
                key: "server.allowed_origins",
                message: format!("{bad:?} must be an origin such as https://ui.example:8443"),
            });
        }
        if self.docker.prepare_timeout_seconds == 0 {
            return invalid("docker.prepare_timeout_seconds", "must be at least 1");
        }
        if self.docker.copy_stall_seconds == 0 {
            return invalid("docker.copy_stall_seconds", "must be at least 1");
        }
        if self.docker.log_tail == 0 {
            return invalid("docker.log_tail", "must be at least 1");
        }
        if !(self.ec2.endpoint_url.is_empty()
            || self.ec2.endpoint_url.starts_with("http://")
            || self.ec2.endpoint_url.starts_with("https://"))
        {
            return invalid("ec2.endpoint_url", "must be empty or an http(s):// URL");
        }
        let region_ok = |r: &String| {
            r.starts_with(|c: char| c.is_ascii_lowercase()) && r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !self.ec2.regions.keys().all(region_ok) {
            return invalid("ec2.regions", "must be region names such as \"us-west-2\"");
        }
        if !(100..=60_000).contains(&self.metrics.flush_ms) {
            return invalid("metrics.flush_ms", "must be from 100 to 60000");
        }
        if !(32..=65_536).contains(&self.metrics.relay_memory_mb) {
            return invalid("metrics.relay_memory_mb", "must be from 32 to 65536");
        }
        if !(1..=1_000_000).contains(&self.metrics.max_series_per_window) {
            return invalid("metrics.max_series_per_window", "must be from 1 to 1000000");
        }
        if !(1..=1_000_000).contains(&self.metrics.max_series_per_step) {
            return invalid("metrics.max_series_per_step", "must be from 1 to 1000000");
        }
        if !(self.metrics.relay_url.is_empty()
            || (self.metrics.relay_url.starts_with("http://") || self.metrics.relay_url.starts_with("https://"))
                && !self.metrics.relay_url.contains(char::is_whitespace))
        {
            return invalid("metrics.relay_url", "must be empty or an http(s):// URL such as https://loads.example.com:8443");
        }
        if !(self.influx.url.is_empty() || self.influx.url.starts_with("http://") || self.influx.url.starts_with("https://")) {
            return invalid("influx.url", "must be empty or an http(s):// URL");
        }
        if self.influx.database.is_empty() || self.influx.database.contains(['"', '\\']) {
            return invalid("influx.database", "must be a database name");
        }
        if !(self.grafana.url.is_empty() || self.grafana.url.starts_with("http://") || self.grafana.url.starts_with("https://")) {
            return invalid("grafana.url", "must be empty or an http(s):// URL");
        }
        if !self.grafana.url.is_empty() && self.grafana.token.expose().is_empty() {
            return invalid("grafana.token", "is required with grafana.url");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid("log.level", "must be a tracing filter such as `info` or `loads=debug,info`");
        }
        Ok(())
    }

    /// The configured log format (checked at load).
    pub fn log_format(&self) -> LogFormat {
        self.log.format
    }

    /// Whether API requests need a token.
    pub fn auth_enabled(&self) -> bool {
        !self.auth.tokens.is_empty() || !self.auth.read_tokens.is_empty()
    }

    /// Whether `server.host` is a loopback address (or `localhost`).
    pub fn binds_loopback_only(&self) -> bool {
        let host = self.server_host();
        host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// `server.host` as an address to bind: IPv6 literals without their brackets.
    pub fn server_host(&self) -> &str {
        self.server.host.trim_matches(['[', ']'])
    }

    /// The regions whose instances this broker manages.
    pub fn region_names(&self) -> Vec<String> {
        self.ec2.regions.keys().cloned().collect()
    }

    /// How the `ec2` provider launches and reaches nodes; `None` with the `local` provider.
    pub fn cloud(&self) -> anyhow::Result<Option<loads_actors::settings::CloudSettings>> {
        use loads_actors::infra::ec2::{Backoff, RegionConfig, USER_DATA_TEMPLATE};
        use loads_actors::settings::{AddressKind, CloudSettings};
        use std::time::Duration;
        if self.pool.provider != Provider::Ec2 {
            return Ok(None);
        }
        let user_data_template = if self.ec2.user_data_template.is_empty() {
            USER_DATA_TEMPLATE.to_string()
        } else {
            std::fs::read_to_string(&self.ec2.user_data_template)
                .map_err(|e| anyhow::anyhow!("ec2.user_data_template {}: {e}", self.ec2.user_data_template))?
        };
        let regions = self
            .ec2
            .regions
            .iter()
            .map(|(name, r)| {
                let config = RegionConfig {
                    ami: r.ami.clone(),
                    subnet_id: r.subnet_id.clone(),
                    security_group_ids: r.security_group_ids.clone(),
                    key_name: r.key_name.clone(),
                };
                (name.clone(), config)
            })
            .collect();
        Ok(Some(CloudSettings {
            regions,
            max_instances: self.ec2.max_instances,
            max_instances_per_run: self.ec2.max_instances_per_run,
            address: match self.ec2.address {
                Ec2Address::Public => AddressKind::Public,
                Ec2Address::Private => AddressKind::Private,
            },
            address_override: self.ec2.address_override.iter().filter_map(|a| a.parse().ok()).collect(),
            owner: if self.ec2.owner.is_empty() { self.broker.id.clone() } else { self.ec2.owner.clone() },
            launch_timeout: Duration::from_secs(self.pool.launch_timeout_seconds),
            spot_wait: Duration::from_secs(self.ec2.spot_wait_seconds),
            metadata_url: self.ec2.metadata_url.trim_end_matches('/').to_string(),
            spot_notice: Duration::from_secs(self.ec2.spot_notice_seconds),
            expiry_grace: Duration::from_secs(self.ec2.expiry_grace_seconds),
            pooling: self.pool.pooling,
            idle: Duration::from_secs(self.pool.idle_seconds),
            ssh: loads_actors::infra::ssh::SshSettings {
                user: self.ssh.user.clone(),
                key_path: self.ssh.key_path.clone().into(),
                known_hosts: self.ssh.known_hosts.clone().into(),
                record_new_hosts: self.ssh.record_new_hosts,
                connect_timeout: Duration::from_secs(self.ssh.connect_timeout_seconds),
                silence: Duration::from_secs(self.ssh.silence_seconds),
            },
            node_tuning: self.ssh.node_tuning.clone(),
            node_dir: self.ssh.node_dir.clone(),
            user_data_template,
            backoff: Backoff { attempts: self.ec2.launch_attempts, base: Duration::from_millis(self.ec2.backoff_ms), ..Backoff::default() },
            relay_image: crate::images::RELAY.to_string(),
            copy_stall: std::time::Duration::from_secs(self.docker.copy_stall_seconds),
        }))
    }

    /// The secrets: `secrets.file`, then `LOADS_SECRET_<NAME>` variables.
    pub fn secrets(&self, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<loads_actors::domain::secrets::Secrets> {
        let mut values = std::collections::BTreeMap::new();
        if !self.secrets.file.is_empty() {
            let text =
                std::fs::read_to_string(&self.secrets.file).map_err(|e| anyhow::anyhow!("secrets.file {}: {e}", self.secrets.file))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, value) = line
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("secrets.file {} line {}: expected NAME=value", self.secrets.file, n + 1))?;
                values.insert(name.trim().to_string(), value.to_string());
            }
        }
        values.extend(env.into_iter().filter_map(|(k, v)| Some((k.strip_prefix("LOADS_SECRET_")?.to_string(), v))));
        Ok(loads_actors::domain::secrets::Secrets::new(values))
    }

    /// How runs are priced and capped: the price table (`pricing.file`, else the shipped one) and the budget.
    pub fn cost(&self) -> anyhow::Result<loads_actors::settings::CostSettings> {
        use loads_actors::domain::cost::{Budget, PriceTable};
        let prices = if self.pricing.file.is_empty() {
            PriceTable::shipped()
        } else {
            let text =
                std::fs::read_to_string(&self.pricing.file).map_err(|e| anyhow::anyhow!("pricing.file {}: {e}", self.pricing.file))?;
            PriceTable::parse(&text).map_err(|e| anyhow::anyhow!("pricing.file {}: {e}", self.pricing.file))?
        };
        let cap = |x: f64| (x > 0.0).then_some(x);
        Ok(loads_actors::settings::CostSettings {
            prices: std::sync::Arc::new(prices),
            setup_seconds: self.pricing.setup_seconds,
            budget: Budget {
                max_usd_per_run: cap(self.budget.max_usd_per_run),
                max_instance_hours_per_run: cap(self.budget.max_instance_hours_per_run),
                max_usd_per_month: cap(self.budget.max_usd_per_month),
            },
            check_every: std::time::Duration::from_secs_f64(self.budget.check_seconds),
            clock: self.budget.clock.clone(),
            cloud_regions: (self.pool.provider == Provider::Ec2).then(|| self.region_names()),
        })
    }

    /// How the run engine runs.
    pub fn run_settings(&self, tls: &loads_actors::infra::tls::Tls) -> loads_actors::settings::RunSettings {
        loads_actors::settings::RunSettings {
            broker_id: self.broker.id.clone(),
            broker_version: crate::VERSION.to_string(),
            relay_image: crate::images::RELAY.to_string(),
            copy_stall: std::time::Duration::from_secs(self.docker.copy_stall_seconds),
            stop_grace_secs: self.docker.stop_grace_seconds,
            log_tail: self.docker.log_tail,
            prepare_timeout_secs: self.docker.prepare_timeout_seconds,
            flush_ms: self.metrics.flush_ms,
            relay_memory_bytes: self.metrics.relay_memory_mb * 1024 * 1024,
            relay_max_series: self.metrics.max_series_per_window,
            secrets: Default::default(),
            limits: self.limits(),
            max_subscribers_per_run: self.limits.max_subscribers_per_run,
            max_live_runs: self.limits.max_live_runs,
            influx: !self.influx.url.is_empty(),
            tls: tls.clone(),
            download_dir: self.docker.download_dir.clone().into(),
            relay_url: (!self.metrics.relay_url.is_empty()).then(|| self.metrics.relay_url.trim_end_matches('/').to_string()),
            registries: loads_actors::infra::registry::Registries::new(
                self.docker
                    .registry_auth
                    .iter()
                    .map(|(host, login)| {
                        let login = loads_actors::infra::registry::Login {
                            username: login.username.clone(),
                            password: login.password.expose().to_string(),
                        };
                        (host.clone(), login)
                    })
                    .collect(),
                (!self.ec2.endpoint_url.is_empty()).then(|| self.ec2.endpoint_url.clone()),
            ),
            relay_ca: None,
            cost: Default::default(),
        }
    }

    /// The PEM certificates relays delivering to an `https` `metrics.relay_url` trust
    /// besides the public web's roots: those of `tls.ca_file` and of `SSL_CERT_FILE`
    /// (whose environment is given), as the broker trusts them.
    pub fn relay_ca(&self, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Option<String>> {
        /// Environment values beyond this would not fit a container's environment comfortably.
        const MAX_PEM_BYTES: usize = 512 * 1024;
        if !self.metrics.relay_url.starts_with("https://") {
            return Ok(None);
        }
        let ssl_cert_file = env.into_iter().find(|(k, _)| k == "SSL_CERT_FILE").map(|(_, v)| v).filter(|v| !v.is_empty());
        let mut pem = String::new();
        for (key, path) in [("tls.ca_file", Some(self.tls.ca_file.clone()).filter(|f| !f.is_empty())), ("SSL_CERT_FILE", ssl_cert_file)] {
            let Some(path) = path else { continue };
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{key} {path}: {e}"))?;
            pem.push_str(&text);
            pem.push('\n');
        }
        if pem.len() > MAX_PEM_BYTES {
            anyhow::bail!("tls.ca_file and SSL_CERT_FILE hold {} bytes: relays take at most {MAX_PEM_BYTES}", pem.len());
        }
        Ok((!pem.trim().is_empty()).then_some(pem))
    }

    /// The plan validation limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_instance_count: self.limits.max_instance_count,
            max_steps_per_plan: self.limits.max_steps_per_plan,
            max_env_vars: self.limits.max_env_vars,
            max_env_bytes: self.limits.max_env_bytes,
            volume_root: (self.pool.provider != Provider::Ec2).then(|| self.docker.volume_root.clone().into()),
            image_root: (!self.docker.image_root.is_empty()).then(|| self.docker.image_root.clone().into()),
            allow_loopback_image_urls: self.docker.allow_loopback_image_urls,
        }
    }

    /// Whether the database is an embedded SQLite file.
    pub fn uses_sqlite(&self) -> bool {
        self.database.url.is_sqlite()
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_loopback_port_8080_and_sqlite() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.server.host, "127.0.0.1");
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.database.url.expose(), "sqlite://loads.db");
        assert!(!s.auth_enabled());
    }

    #[test]
    fn environment_variables_override_defaults() {
        let s = Settings::load_from(
            None,
            env(&[
                ("LOADS__SERVER__PORT", "0"),
                ("LOADS__DATABASE__URL", "sqlite:///tmp/x.db"),
                ("LOADS__AUTH__TOKENS", "0123456789abcdef0,fedcba9876543210f"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.port, 0);
        assert_eq!(s.database.url.expose(), "sqlite:///tmp/x.db");
        assert_eq!(s.auth.tokens.len(), 2);
        let s = Settings::load_from(
            None,
            env(&[
                ("LOADS__SERVER__ALLOWED_HOSTS", "loads.internal,ci.internal"),
                ("LOADS__SERVER__ALLOWED_ORIGINS", "https://ui.example"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.allowed_hosts, ["loads.internal", "ci.internal"]);
        assert_eq!(s.server.allowed_origins, ["https://ui.example"]);
        let err = Settings::load_from(None, env(&[("LOADS__SERVER__ALLOWED_ORIGINS", "ui.example")])).unwrap_err().to_string();
        assert!(err.contains("server.allowed_origins"), "{err}");
    }

    #[test]
    fn values_of_the_wrong_type_or_name_name_their_key() {
        let dir = std::env::temp_dir().join(format!("loads-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("[ec2]\naddress_override = \"127.0.0.1:22\"\n", "ec2.address_override"),
            ("[ec2]\naddress = \"elastic\"\n", "ec2.address: must be `public` or `private`, not \"elastic\""),
            ("[log]\nformat = \"xml\"\n", "log.format: must be `human` or `json`, not \"xml\""),
            ("[server]\nport = \"eighty\"\n", "server.port"),
            ("[limits]\nmax_steps_per_plan = -1\n", "limits.max_steps_per_plan"),
        ];
        for (i, (text, expected)) in cases.iter().enumerate() {
            let file = dir.join(format!("{i}.toml"));
            std::fs::write(&file, text).unwrap();
            let err = Settings::load_from(Some(&file), env(&[])).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = Settings::load_from(None, env(&[("LOADS__SERVER__PROT", "1")])).unwrap_err().to_string();
        assert!(err.contains("unknown key `server.prot`"), "{err}");
        let err = Settings::load_from(None, env(&[("LOADS__SERVER__PORT", "eighty")])).unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
        let err = Settings::load_from(None, env(&[("LOADS__DATABASE__URL", "mysql://x")])).unwrap_err().to_string();
        assert!(err.contains("database.url"), "{err}");
    }

    #[test]
    fn ec2_regions_come_from_tables_or_variables_and_are_checked() {
        let s = Settings::load_from(
            None,
            env(&[
                ("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-1"),
                ("LOADS__EC2__REGIONS__US_WEST_2__SECURITY_GROUP_IDS", "sg-1, sg-2"),
                ("LOADS__EC2__ADDRESS_OVERRIDE", "127.0.0.1:2222,127.0.0.1:2223"),
            ]),
        )
        .unwrap();
        assert_eq!(s.region_names(), ["us-west-2"]);
        assert_eq!(s.ec2.regions["us-west-2"].security_group_ids, ["sg-1", "sg-2"]);
        assert_eq!(s.ec2.address_override.len(), 2);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loads.toml");
        std::fs::write(&file, "[pool]\nprovider = \"ec2\"\n[ssh]\nkey_path = \"/k\"\n[ec2.regions.eu-west-1]\nami = \"ami-2\"\nsecurity_group_ids = [\"sg-3\"]\n").unwrap();
        let s = Settings::load_from(Some(&file), env(&[])).unwrap();
        let cloud = s.cloud().unwrap().expect("ec2 provider");
        assert_eq!(cloud.regions["eu-west-1"].security_group_ids, ["sg-3"]);
        assert_eq!(cloud.owner, "loads", "the broker id by default");

        std::fs::write(&file, "[ec2.regions.eu-west-1]\namii = \"x\"\n").unwrap();
        let err = Settings::load_from(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("unknown key `ec2.regions.eu-west-1.amii`"), "{err}");
        let err = Settings::load_from(None, env(&[("LOADS__POOL__PROVIDER", "ec2")])).unwrap_err().to_string();
        assert!(err.contains("ssh.key_path"), "{err}");
        let err = Settings::load_from(
            None,
            env(&[("LOADS__POOL__PROVIDER", "ec2"), ("LOADS__SSH__KEY_PATH", "/k"), ("LOADS__EC2__REGIONS__US_WEST_2__SUBNET_ID", "s")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ec2.regions.us-west-2.ami must be set"), "{err}");
        let err = Settings::load_from(None, env(&[("LOADS__EC2__ADDRESS_OVERRIDE", "node-1")])).unwrap_err().to_string();
        assert!(err.contains("ec2.address_override"), "{err}");
        let err = Settings::load_from(None, env(&[("LOADS__POOL__PROVIDER", "gce")])).unwrap_err().to_string();
        assert!(err.contains("pool.provider: must be `local` or `ec2`, not \"gce\""), "{err}");
    }

    #[test]
    fn secrets_are_masked_when_shown() {
        let s = Settings::load_from(
            None,
            env(&[("LOADS__DATABASE__URL", "postgres://loads:hunter2@127.0.0.1/loads"), ("LOADS__AUTH__TOKENS", "supersecrettoken0")]),
        )
        .unwrap();
        let shown = s.to_masked_toml();
        assert!(!shown.contains("hunter2") && !shown.contains("supersecrettoken0"), "{shown}");
        assert!(shown.contains("postgres://loads:********@127.0.0.1/loads"), "{shown}");
    }
}
