//! Taking a run's instances back after a broker restart: each found by its tags,
//! reached again over SSH, its engine, run network and metrics forward restored;
//! one that cannot be is terminated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use uuid::Uuid;

use super::super::reaper::all_instances;
use super::super::PoolError;
use super::{CloudNode, Lease, NodeError, NODE_LOOPBACK};
use crate::infra::ec2::{tags, InstanceView, Region};
use crate::infra::ssh::SshNode;
use crate::settings::CloudSettings;

/// What taking a run's instances back needs.
pub(super) struct Adoption {
    pub(super) cloud: Arc<CloudSettings>,
    pub(super) regions: Vec<Region>,
    pub(super) broker: String,
    pub(super) run_id: Uuid,
    pub(super) network: String,
    pub(super) labels: HashMap<String, String>,
    pub(super) ingest: SocketAddr,
}

/// Reaches every instance of the run again; terminates those that cannot be.
pub(super) async fn adopt_nodes(job: Adoption) -> Result<Vec<CloudNode>, PoolError> {
    let run = job.run_id.to_string();
    let mut adopted = Vec::new();
    for (region, instance) in all_instances(&job.regions, &job.broker).await? {
        if instance.tags.get(tags::RUN) != Some(&run) || instance.state != "running" {
            continue;
        }
        let id = instance.id.clone();
        match adopt_node(&job, instance).await {
            Ok(node) => adopted.push(node),
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "could not take a node back after the restart; terminating it");
                if let Err(e) = region.terminate(std::slice::from_ref(&id)).await {
                    tracing::warn!(instance = %id, error = %e, "could not terminate it; the reaper will");
                }
            }
        }
    }
    Ok(adopted)
}

async fn adopt_node(job: &Adoption, instance: InstanceView) -> Result<CloudNode, NodeError> {
    fn tag<T: std::str::FromStr<Err: std::fmt::Display>>(instance: &InstanceView, key: &'static str) -> Result<T, NodeError> {
        let value = instance.tags.get(key).ok_or(NodeError::NoTag(key))?;
        value.parse().map_err(|e: T::Err| NodeError::BadTag { tag: key, why: e.to_string() })
    }
    let name: String = tag(&instance, tags::NODE)?;
    let step_id: Uuid = tag(&instance, tags::STEP)?;
    let addr: SocketAddr = tag(&instance, tags::SSH)?;
    let port: u16 = tag(&instance, tags::FORWARD)?;
    let ssh = SshNode::connect(addr, Some(&instance.id), &job.cloud.ssh).await?;
    let (engine, bridge) = ssh.docker().await?;
    let (network, _) = engine.ensure_network(&job.network, job.labels.clone()).await?;
    let (port, forward) = ssh.forward_to_broker(NODE_LOOPBACK, port, job.ingest).await?;
    let address = instance.private_ip_address.clone().unwrap_or_else(|| addr.ip().to_string());
    let lease = Lease { run_id: job.run_id, step_id, name, address, network, ingest_base: format!("http://{NODE_LOOPBACK}:{port}") };
    Ok(CloudNode { instance, ssh, engine, _bridge: bridge, forward: Some(forward), watch: None, lease: Some(lease), idle_since: None })
}
