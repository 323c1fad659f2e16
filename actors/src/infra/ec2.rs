//! EC2, through aws-sdk-ec2: the instances this broker owns, found by its
//! tags, and the reaper that terminates those no live run needs.
//!
//! Every instance loads launches carries `Name = loads-<broker>-<plan>`,
//! `Project = loads`, `loads:broker`, `loads:run`, `loads:step`, `Owner` and
//! `loads:expires-at` (RFC 3339); this module only ever touches instances
//! tagged with its own `loads:broker`.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, Instance};
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
}

/// Why EC2 refused.
#[derive(Debug, thiserror::Error)]
#[error("EC2 in {region}: {operation}: {message}")]
pub struct Ec2Error {
    /// The region.
    pub region: String,
    /// What was being done.
    pub operation: &'static str,
    /// AWS's message.
    pub message: String,
}

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

/// EC2 in one region.
#[derive(Clone, Debug)]
pub struct Region {
    client: Client,
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
    /// A client for `region`, credentials from the standard AWS chain, at `endpoint_url` when given.
    pub async fn connect(region: &str, endpoint_url: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(aws_config::Region::new(region.to_string()));
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        Self { client: Client::new(&config), name: region.to_string() }
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A region from an already-built client (tests, tools).
    pub fn from_client(client: Client, region: &str) -> Self {
        Self { client, name: region.to_string() }
    }

    fn error(&self, operation: &'static str, e: impl std::error::Error) -> Ec2Error {
        Ec2Error { region: self.name.clone(), operation, message: message(e) }
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
    }
}
