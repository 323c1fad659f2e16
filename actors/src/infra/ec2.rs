//! EC2, through aws-sdk-ec2: launching a step's instances (tagged, with the
//! user-data that arms the dead-man's switch), waiting for them, the instances
//! this broker owns, found by its tags, and the reaper rule that terminates
//! those no live run needs.
//!
//! Every instance loads launches carries `Name = loads-<broker>-<plan>`,
//! `Project = loads`, `loads:broker`, `loads:run`, `loads:step`, `Owner` and
//! `loads:expires-at` (RFC 3339); this module only ever touches instances
//! tagged with its own `loads:broker`.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    AccountAttributeName, ArchitectureType, Filter, Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceType, MarketType, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions,
    Tag, TagSpecification, VirtualizationType,
};
use aws_sdk_ec2::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// Tag keys.
pub mod tags {
    /// The broker that launched the instance.
    pub const BROKER: &str = "loads:broker";
    /// The run it serves.
    pub const RUN: &str = "loads:run";
    /// The step it serves.
    pub const STEP: &str = "loads:step";
    /// When it must be gone, RFC 3339.
    pub const EXPIRES_AT: &str = "loads:expires-at";
    /// Set while a pooled instance waits, idle, for its next run: since when, RFC 3339.
    pub const IDLE_SINCE: &str = "loads:idle-since";
    /// The node's name in its run (`s0n1`).
    pub const NODE: &str = "loads:node";
    /// Where the broker reaches the node's sshd, `ip:port`.
    pub const SSH: &str = "loads:ssh";
    /// The node's port of the reverse forward its relay delivers metrics through.
    pub const FORWARD: &str = "loads:forward";
    /// How the instance was bought: `spot` or `on_demand`.
    pub const MARKET: &str = "loads:market";
}

/// Why EC2 refused.
#[derive(Debug, thiserror::Error)]
#[error("EC2 in {region}: {operation}: {message}")]
pub struct Ec2Error {
    /// The region.
    pub region: String,
    /// What was being done.
    pub operation: &'static str,
    /// AWS's message, with its error code.
    pub message: String,
    /// AWS's error code (`RequestLimitExceeded`, `InsufficientInstanceCapacity`, ...), when it gave one.
    pub code: Option<String>,
}

impl Ec2Error {
    /// Whether trying again later may succeed: throttling, capacity, AWS-side failures.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some(
                "RequestLimitExceeded"
                    | "Throttling"
                    | "ThrottlingException"
                    | "InsufficientInstanceCapacity"
                    | "InsufficientCapacity"
                    | "InternalError"
                    | "RequestTimeout"
                    | "ServiceUnavailable"
                    | "Unavailable"
            )
        )
    }
}

/// Where and how a region's instances are launched (`ec2.regions.<region>`).
#[derive(Clone, Debug, Default)]
pub struct RegionConfig {
    /// The machine image: an id (`ami-...`) or `resolve:ssm:<public parameter>`, which EC2 resolves itself.
    pub ami: String,
    /// The subnet; empty for the default VPC's.
    pub subnet_id: String,
    /// Security groups (they must let the broker reach port 22); empty for the default.
    pub security_group_ids: Vec<String>,
    /// The EC2 key pair whose private half is `ssh.key_path`; empty for none.
    pub key_name: String,
}

/// How launches retry throttling and capacity errors: exponential backoff with full jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first wait; each next one doubles.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { attempts: 6, base: Duration::from_millis(500), cap: Duration::from_secs(20) }
    }
}

impl Backoff {
    /// The wait before attempt `n` (1 = the first retry): a random time up to `min(cap, base * 2^(n-1))`.
    pub fn wait(&self, n: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << n.saturating_sub(1).min(16)).min(self.cap);
        let fraction = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        ceiling * fraction / 1000
    }
}

/// One `RunInstances` request of a step.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    /// Machine type.
    pub instance_type: String,
    /// How many are wanted.
    pub count: u32,
    /// Fewer than this and the launch fails (EC2's `MinCount`).
    pub min_count: u32,
    /// Tags on the instances and their volumes.
    pub tags: Vec<(String, String)>,
    /// The rendered user-data script.
    pub user_data: String,
    /// Ask for a public address (the subnet does not give one, and the broker reaches nodes at theirs).
    pub associate_public_ip: bool,
    /// Ask for spot instances (one-time, terminated when interrupted).
    pub spot: bool,
    /// Error codes answered at once instead of tried again: the caller goes elsewhere on them.
    pub give_up_on: &'static [&'static str],
}

/// What EC2 answers when spot capacity is short: a `spot_fallback` step goes on demand on these.
pub const SPOT_SHORTAGE: &[&str] =
    &["InsufficientInstanceCapacity", "InsufficientCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded"];

/// An instance as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct InstanceView {
    /// Instance id.
    pub id: String,
    /// `pending`, `running`, `shutting-down`, ...
    pub state: String,
    /// Machine type.
    pub instance_type: String,
    /// Region.
    pub region: String,
    /// Availability zone.
    pub placement: Option<String>,
    /// Public address.
    pub ip_address: Option<String>,
    /// Private address.
    pub private_ip_address: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// The built-in user-data template (`templates/user-data.sh.hbs`).
pub const USER_DATA_TEMPLATE: &str = include_str!("../../../templates/user-data.sh.hbs");

/// What the user-data template is given.
#[derive(Clone, Debug, Serialize)]
pub struct NodeBoot {
    /// This broker's id.
    pub broker: String,
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// The dead-man's switch deadline, RFC 3339.
    pub expires_at: String,
    /// The same deadline, in seconds since the epoch.
    pub expires_epoch: i64,
    /// The node's directory for loads' files (the deadline).
    pub node_dir: String,
    /// Node tuning commands, run as root.
    pub tuning: Vec<String>,
}

/// Renders a user-data template; values are inserted verbatim (it is a shell script, not HTML).
pub fn render_user_data(template: &str, boot: &NodeBoot) -> Result<String, String> {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.render_template(template, boot).map_err(|e| format!("the user-data template: {e}"))
}

/// EC2 in one region.
#[derive(Clone, Debug)]
pub struct Region {
    client: Client,
    /// Service Quotas in the same region (the vCPU quotas); none for a region built from a client.
    quotas: Option<aws_sdk_servicequotas::Client>,
    name: String,
}

fn message(e: impl std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

impl Region {
    /// A client for `region`, credentials from the standard AWS chain, at `endpoint_url` when given;
    /// a request attempt that takes longer than `attempt_timeout` is abandoned (and a launch tried again).
    pub async fn connect(region: &str, endpoint_url: Option<&str>, attempt_timeout: Duration) -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder().operation_attempt_timeout(attempt_timeout).build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .timeout_config(timeouts);
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        Self { client: Client::new(&config), quotas: Some(aws_sdk_servicequotas::Client::new(&config)), name: region.to_string() }
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A region from an already-built client (tests, tools).
    pub fn from_client(client: Client, region: &str) -> Self {
        Self { client, quotas: None, name: region.to_string() }
    }

    fn error<E: std::error::Error + ProvideErrorMetadata>(&self, operation: &'static str, e: E) -> Ec2Error {
        let mut code = e.code().map(str::to_string);
        let text = match (e.code(), e.message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            _ => message(e),
        };
        if code.is_none() && (text.contains("timed out") || text.contains("timeout")) {
            code = Some("RequestTimeout".into());
        }
        Ec2Error { region: self.name.clone(), operation, message: text, code }
    }

    /// Launches instances (`RunInstances`), retrying throttling and capacity errors per `backoff`; answers their ids.
    pub async fn launch(&self, config: &RegionConfig, launch: &LaunchRequest, backoff: Backoff) -> Result<Vec<String>, Ec2Error> {
        use base64::Engine as _;
        let tags: Vec<Tag> = launch.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        let on = |kind| TagSpecification::builder().resource_type(kind).set_tags(Some(tags.clone())).build();
        // One token for every attempt of this launch: a retry after an answer that was lost
        // (a timeout) gets the instances of the first attempt instead of launching more.
        let client_token = uuid::Uuid::new_v4().to_string();
        let mut attempt = 0;
        loop {
            let mut request = self
                .client
                .run_instances()
                .image_id(&config.ami)
                .instance_type(InstanceType::from(launch.instance_type.as_str()))
                .min_count(i32::try_from(launch.min_count.max(1)).unwrap_or(1))
                .max_count(i32::try_from(launch.count).unwrap_or(i32::MAX))
                .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                .client_token(&client_token)
                .user_data(base64::engine::general_purpose::STANDARD.encode(&launch.user_data))
                .tag_specifications(on(ResourceType::Instance))
                .tag_specifications(on(ResourceType::Volume));
            if launch.associate_public_ip {
                // A public address is asked for on the network interface, which then carries the subnet and groups.
                let interface = InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .associate_public_ip_address(true)
                    .subnet_id(&config.subnet_id)
                    .set_groups((!config.security_group_ids.is_empty()).then(|| config.security_group_ids.clone()))
                    .build();
                request = request.network_interfaces(interface);
            } else {
                if !config.subnet_id.is_empty() {
                    request = request.subnet_id(&config.subnet_id);
                }
                if !config.security_group_ids.is_empty() {
                    request = request.set_security_group_ids(Some(config.security_group_ids.clone()));
                }
            }
            if !config.key_name.is_empty() {
                request = request.key_name(&config.key_name);
            }
            if launch.spot {
                let spot = SpotMarketOptions::builder()
                    .spot_instance_type(SpotInstanceType::OneTime)
                    .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                    .build();
                request = request.instance_market_options(
                    InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).spot_options(spot).build(),
                );
            }
            // This loop is the one retry layer for launches: the SDK's own is off for them.
            let no_sdk_retries = aws_sdk_ec2::config::Builder::default().retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled());
            match request.customize().config_override(no_sdk_retries).send().await {
                Ok(out) => return Ok(out.instances().iter().filter_map(|i| i.instance_id().map(str::to_string)).collect()),
                Err(e) => {
                    let error = self.error("launch instances", e);
                    attempt += 1;
                    let given_up = error.code.as_deref().is_some_and(|c| launch.give_up_on.contains(&c));
                    if given_up || !error.is_transient() || attempt >= backoff.attempts {
                        return Err(error);
                    }
                    let wait = backoff.wait(attempt);
                    tracing::warn!(region = %self.name, error = %error, attempt, wait_ms = wait.as_millis() as u64, "EC2 refused a launch; trying again");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Why `instance_type` cannot run loads' nodes from `ami`, if it cannot: the relay
    /// image is built for x86_64, and the type must boot the image's virtualization
    /// (`t1.micro`, the original's default, takes no HVM image, which every current Linux is).
    /// An AMI EC2 resolves itself (`resolve:ssm:`) is checked at launch by EC2 alone.
    pub async fn unsuitable_type(&self, instance_type: &str, ami: &str) -> Result<Option<String>, Ec2Error> {
        let types = self
            .client
            .describe_instance_types()
            .instance_types(InstanceType::from(instance_type))
            .send()
            .await
            .map_err(|e| self.error("describe instance types", e))?;
        let Some(info) = types.instance_types().first() else {
            return Ok(Some(format!("instance_type {instance_type:?} is not offered in {}", self.name)));
        };
        let architectures = info.processor_info().map(|p| p.supported_architectures().to_vec()).unwrap_or_default();
        if !architectures.contains(&ArchitectureType::X8664) {
            let names: Vec<&str> = architectures.iter().map(ArchitectureType::as_str).collect();
            return Ok(Some(format!(
                "instance_type {instance_type:?} is {} only; loads' relay runs on x86_64: choose an x86_64 type such as t3.micro",
                names.join("/")
            )));
        }
        if !ami.starts_with("ami-") {
            return Ok(None);
        }
        let images = self.client.describe_images().image_ids(ami).send().await.map_err(|e| self.error("describe images", e))?;
        let Some(image) = images.images().first() else {
            return Ok(Some(format!("the AMI {ami} is not found in {}", self.name)));
        };
        if let Some(arch) = image.architecture().filter(|a| a.as_str() != "x86_64") {
            return Ok(Some(format!("the AMI {ami} is {}; loads' relay runs on x86_64: choose an x86_64 AMI", arch.as_str())));
        }
        let virtualization = image.virtualization_type().cloned().unwrap_or(VirtualizationType::Hvm);
        if !info.supported_virtualization_types().contains(&virtualization) {
            return Ok(Some(format!(
                "instance_type {instance_type:?} cannot boot the AMI {ami} ({} virtualization): choose a current type such as t3.micro",
                virtualization.as_str()
            )));
        }
        Ok(None)
    }

    /// Whether the subnet gives its instances a public address by itself.
    pub async fn subnet_assigns_public_ip(&self, subnet: &str) -> Result<bool, Ec2Error> {
        let out = self.client.describe_subnets().subnet_ids(subnet).send().await.map_err(|e| self.error("describe subnets", e))?;
        Ok(out.subnets().first().and_then(|s| s.map_public_ip_on_launch()).unwrap_or(false))
    }

    /// The current spot price of one `instance_type` hour of Linux in this region: the highest
    /// over its availability zones' latest prices (a launch may land in any); `None` when EC2 has none.
    pub async fn spot_price(&self, instance_type: &str) -> Result<Option<f64>, Ec2Error> {
        let out = self
            .client
            .describe_spot_price_history()
            .instance_types(InstanceType::from(instance_type))
            .product_descriptions("Linux/UNIX")
            .start_time(aws_sdk_ec2::primitives::DateTime::from_secs(Utc::now().timestamp()))
            .send()
            .await
            .map_err(|e| self.error("describe spot prices", e))?;
        let mut latest: BTreeMap<String, (i64, f64)> = BTreeMap::new();
        for p in out.spot_price_history() {
            let (Some(zone), Some(price)) = (p.availability_zone(), p.spot_price().and_then(|s| s.parse::<f64>().ok())) else { continue };
            let at = p.timestamp().map_or(0, |t| t.secs());
            if latest.get(zone).is_none_or(|(seen, _)| at >= *seen) {
                latest.insert(zone.to_string(), (at, price));
            }
        }
        Ok(latest.values().map(|(_, p)| *p).reduce(f64::max))
    }

    /// The account's instance limit in this region (the `max-instances` account attribute).
    pub async fn max_instances(&self) -> Result<Option<u32>, Ec2Error> {
        let out = self
            .client
            .describe_account_attributes()
            .attribute_names(AccountAttributeName::from("max-instances"))
            .send()
            .await
            .map_err(|e| self.error("describe account attributes", e))?;
        Ok(out
            .account_attributes()
            .iter()
            .filter(|a| a.attribute_name() == Some("max-instances"))
            .flat_map(|a| a.attribute_values())
            .find_map(|v| v.attribute_value()?.parse().ok()))
    }

    /// The account's quota `code` of service `ec2` in this region (Service Quotas), as a whole
    /// number; `None` when Service Quotas has no such quota here.
    pub async fn ec2_quota(&self, code: &str) -> Result<Option<u32>, Ec2Error> {
        let Some(quotas) = &self.quotas else { return Ok(None) };
        match quotas.get_service_quota().service_code("ec2").quota_code(code).send().await {
            Ok(out) => Ok(out.quota().and_then(|q| q.value()).map(|v| v.max(0.0).min(u32::MAX as f64) as u32)),
            Err(e) if e.code() == Some("NoSuchResourceException") => Ok(None),
            Err(e) => Err(self.error("get the service quota", e)),
        }
    }

    /// Instances by id, whatever their state.
    pub async fn describe(&self, ids: &[String]) -> Result<Vec<InstanceView>, Ec2Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let answer = self
            .client
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| self.error("describe instances", e))?;
        Ok(answer.reservations().iter().flat_map(|r| r.instances()).map(|i| self.view(i)).collect())
    }

    /// Waits until the instances are running or `timeout` passes; answers those running and the ids of the others.
    pub async fn wait_running(&self, ids: &[String], timeout: Duration) -> Result<(Vec<InstanceView>, Vec<String>), Ec2Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Right after a launch EC2 may not know its own instances yet (eventual
            // consistency): "not found", or fewer instances than asked, means "wait".
            let seen = match self.describe(ids).await {
                Err(e) if e.code.as_deref() == Some("InvalidInstanceID.NotFound") && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "EC2 does not know the new instances yet");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                other => other?,
            };
            let running: Vec<InstanceView> = seen.iter().filter(|i| i.state == "running").cloned().collect();
            let waiting = seen.iter().any(|i| i.state == "pending") || seen.len() < ids.len();
            if !waiting || tokio::time::Instant::now() >= deadline {
                let others = ids.iter().filter(|id| !running.iter().any(|r| &r.id == *id)).cloned().collect();
                return Ok((running, others));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Sets tags on instances (and replaces those with the same keys).
    pub async fn tag(&self, ids: &[String], tags: &[(String, String)]) -> Result<(), Ec2Error> {
        if ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        self.client
            .create_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
            .send()
            .await
            .map_err(|e| self.error("tag instances", e))?;
        Ok(())
    }

    /// Removes tags from instances.
    pub async fn untag(&self, ids: &[String], keys: &[&str]) -> Result<(), Ec2Error> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .delete_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(keys.iter().map(|k| Tag::builder().key(*k).build()).collect()))
            .send()
            .await
            .map_err(|e| self.error("untag instances", e))?;
        Ok(())
    }

    fn view(&self, i: &Instance) -> InstanceView {
        InstanceView {
            id: i.instance_id().unwrap_or_default().to_string(),
            state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
            instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
            region: self.name.clone(),
            placement: i.placement().and_then(|p| p.availability_zone()).map(str::to_string),
            ip_address: i.public_ip_address().map(str::to_string),
            private_ip_address: i.private_ip_address().map(str::to_string),
            tags: i.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect(),
        }
    }

    /// This broker's instances that are not terminated.
    pub async fn instances(&self, broker: &str) -> Result<Vec<InstanceView>, Ec2Error> {
        let live_states = ["pending", "running", "stopping", "stopped", "shutting-down"];
        let answer = self
            .client
            .describe_instances()
            .filters(Filter::builder().name(format!("tag:{}", tags::BROKER)).values(broker).build())
            .filters(Filter::builder().name("instance-state-name").set_values(Some(live_states.map(str::to_string).to_vec())).build())
            .send()
            .await
            .map_err(|e| self.error("describe instances", e))?;
        Ok(answer.reservations().iter().flat_map(|r| r.instances()).map(|i| self.view(i)).collect())
    }

    /// Terminates instances by id.
    pub async fn terminate(&self, ids: &[String]) -> Result<(), Ec2Error> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| self.error("terminate instances", e))?;
        Ok(())
    }
}

/// Why the reaper takes an instance.
pub fn reap_reason(instance: &InstanceView, live_runs: &[String], now: DateTime<Utc>) -> Option<String> {
    if instance.state == "shutting-down" {
        return None;
    }
    if let Some(expiry) = instance.tags.get(tags::EXPIRES_AT) {
        match DateTime::parse_from_rfc3339(expiry) {
            Ok(at) if at < now => return Some(format!("expired at {expiry}")),
            Ok(_) => {}
            Err(_) => return Some(format!("unreadable {} tag {expiry:?}", tags::EXPIRES_AT)),
        }
    }
    if instance.tags.contains_key(tags::IDLE_SINCE) && !instance.tags.contains_key(tags::RUN) {
        // A pooled instance waiting for its next run: its expiry tag says how long it may wait.
        return None;
    }
    match instance.tags.get(tags::RUN) {
        Some(run) if live_runs.contains(run) => None,
        Some(run) => Some(format!("run {run} is not live")),
        None => Some(format!("no {} tag", tags::RUN)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(run: Option<&str>, expires: Option<&str>) -> InstanceView {
        let mut tags = BTreeMap::from([(tags::BROKER.to_string(), "b".to_string())]);
        if let Some(r) = run {
            tags.insert(tags::RUN.into(), r.into());
        }
        if let Some(e) = expires {
            tags.insert(tags::EXPIRES_AT.into(), e.into());
        }
        InstanceView {
            id: "i-1".into(),
            state: "running".into(),
            instance_type: "t3.micro".into(),
            region: "us-west-2".into(),
            placement: None,
            ip_address: None,
            private_ip_address: None,
            tags,
        }
    }

    #[test]
    fn the_reaper_takes_expired_and_orphaned_instances_only() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z").unwrap().with_timezone(&Utc);
        let live = vec!["r1".to_string()];
        assert_eq!(reap_reason(&instance(Some("r1"), Some("2026-01-01T13:00:00Z")), &live, now), None);
        assert!(reap_reason(&instance(Some("r1"), Some("2026-01-01T11:00:00Z")), &live, now).unwrap().starts_with("expired"));
        assert_eq!(reap_reason(&instance(Some("r2"), None), &live, now).unwrap(), "run r2 is not live");
        assert!(reap_reason(&instance(None, None), &live, now).is_some());
        assert!(reap_reason(&instance(Some("r1"), Some("soon")), &live, now).unwrap().starts_with("unreadable"));
        let mut idle = instance(None, Some("2026-01-01T12:05:00Z"));
        idle.tags.insert(tags::IDLE_SINCE.into(), "2026-01-01T11:55:00Z".into());
        assert_eq!(reap_reason(&idle, &live, now), None, "a pooled instance waits until its expiry");
        idle.tags.insert(tags::EXPIRES_AT.into(), "2026-01-01T11:59:00Z".into());
        assert!(reap_reason(&idle, &live, now).unwrap().starts_with("expired"));
    }

    #[test]
    fn the_user_data_arms_the_dead_mans_switch_with_the_deadline() {
        let boot = NodeBoot {
            broker: "b1".into(),
            run: "r1".into(),
            step: "s1".into(),
            expires_at: "2026-01-01T13:00:00Z".into(),
            expires_epoch: 1_767_272_400,
            node_dir: "/var/lib/loads".into(),
            tuning: vec!["sysctl -qw net.core.somaxconn=65535".into()],
        };
        let script = render_user_data(USER_DATA_TEMPLATE, &boot).unwrap();
        assert!(script.starts_with("#!/bin/sh"));
        assert!(script.contains("echo 1767272400 > /var/lib/loads/expires-at"), "{script}");
        assert!(script.contains("poweroff"));
        assert!(!script.contains("GatewayPorts"), "the node's sshd stays as it comes");
        assert!(script.contains("\nset -eu\n"), "any failure stops the boot");
        assert!(script.contains("DPkg::Lock::Timeout="), "apt waits for a package lock held at boot");
        let (_, end) = script.rsplit_once("echo ok > /var/lib/loads/boot-status").expect("the status is written");
        assert!(end.contains("> /var/lib/loads/booted"), "the marker comes last: {end}");
        let checked = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
        assert!(checked.status.success(), "sh -n: {}", String::from_utf8_lossy(&checked.stderr));
        assert!(script.contains("\nsysctl -qw net.core.somaxconn=65535\n"));
        assert!(render_user_data("{{nope}}", &boot).unwrap_err().contains("user-data"));
    }

    #[test]
    fn only_throttling_capacity_and_aws_failures_are_retried() {
        let error =
            |code: &str| Ec2Error { region: "r".into(), operation: "launch instances", message: String::new(), code: Some(code.into()) };
        assert!(error("RequestLimitExceeded").is_transient());
        assert!(error("InsufficientInstanceCapacity").is_transient());
        assert!(!error("InstanceLimitExceeded").is_transient(), "a quota does not lift by waiting");
        assert!(!error("InvalidAMIID.NotFound").is_transient());
    }

    #[test]
    fn backoff_waits_grow_and_stay_under_the_cap() {
        let b = Backoff { attempts: 10, base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        for n in 1..12 {
            let ceiling = Duration::from_millis(100 * (1u64 << (n - 1).min(16))).min(Duration::from_secs(1));
            assert!(b.wait(n) <= ceiling);
        }
    }
}
