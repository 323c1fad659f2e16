//! Where nodes come from and how they are reached and run: the pool, SSH, EC2 and
//! its regions, Docker and registries, each with its built-in defaults.

use serde::{Deserialize, Serialize};

use super::{Ec2Address, Provider, Secret};

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
