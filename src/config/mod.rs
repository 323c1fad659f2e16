//! Configuration: built-in defaults, then `loads.toml` (or `--config FILE`),
//! then `LOADS__SECTION__KEY` environment variables.
//!
//! Unknown keys and bad values are errors naming the key, so a typo in a
//! variable name cannot silently fall back to a default. Secrets print masked.

mod check;
mod metrics;
mod nodes;
mod service;
mod values;

use std::net::IpAddr;
use std::path::Path;

use config::{Config, Environment, File, FileFormat};
use loads_actors::domain::Limits;
use serde::{Deserialize, Serialize};

pub use self::metrics::*;
pub use self::nodes::*;
pub use self::service::*;
pub use self::values::*;

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
