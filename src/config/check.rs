//! The checks a loaded configuration passes before it is used: each failure names
//! its key and what it must be.

use std::net::IpAddr;

use super::{ConfigError, Provider, Settings};

impl Settings {
    /// Checks every value that is well-typed but may still be unusable.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
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
}
