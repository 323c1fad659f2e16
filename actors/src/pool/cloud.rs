//! The cloud half of the pool, away from the actor: launching a step's
//! instances and readying each over SSH (`provision`), and taking a run's
//! instances back after a broker restart (`adopt_nodes`). The actor hands
//! these futures what they need and keeps what they answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use uuid::Uuid;

use super::{all_instances, AcquireNodes, AddressKind, CloudNode, CloudSettings, Lease, NodeGrant, PoolError};
use crate::infra::docker::Engine;
use crate::infra::ec2::{self, tags, InstanceView, NodeBoot, Region, RegionConfig};
use crate::infra::ssh::{SshError, SshNode};
use crate::infra::Task;

/// Where the relays' metrics forward listens on a node: its loopback, which an sshd as it
/// comes (`GatewayPorts no`) allows; the relay shares the node's network to reach it.
const NODE_LOOPBACK: &str = "127.0.0.1";

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

async fn adopt_node(job: &Adoption, instance: InstanceView) -> Result<CloudNode, String> {
    let tag = |key: &str| instance.tags.get(key).cloned().ok_or_else(|| format!("no {key} tag"));
    let name = tag(tags::NODE)?;
    let step_id: Uuid = tag(tags::STEP)?.parse().map_err(|e| format!("{}: {e}", tags::STEP))?;
    let addr: SocketAddr = tag(tags::SSH)?.parse().map_err(|e| format!("{}: {e}", tags::SSH))?;
    let port: u16 = tag(tags::FORWARD)?.parse().map_err(|e| format!("{}: {e}", tags::FORWARD))?;
    let ssh = SshNode::connect(addr, Some(&instance.id), &job.cloud.ssh).await.map_err(|e| e.to_string())?;
    let (engine, bridge) = ssh.docker().await.map_err(|e| e.to_string())?;
    let (network, _) = engine.ensure_network(&job.network, job.labels.clone()).await.map_err(|e| e.to_string())?;
    let (port, forward) = ssh.forward_to_broker(NODE_LOOPBACK, port, job.ingest).await.map_err(|e| e.to_string())?;
    let address = instance.private_ip_address.clone().unwrap_or_else(|| addr.ip().to_string());
    let lease = Lease { run_id: job.run_id, step_id, name, address, network, ingest_base: format!("http://{NODE_LOOPBACK}:{port}") };
    Ok(CloudNode { instance, ssh, engine, _bridge: bridge, forward: Some(forward), lease: Some(lease), idle_since: None })
}

/// The tags that let a restarted broker take a node back: its name in the run, its SSH address, its metrics forward's port.
pub(super) fn node_tags(grant: &NodeGrant, ssh: SocketAddr) -> Vec<(String, String)> {
    let port = grant.ingest_base.rsplit(':').next().unwrap_or_default().to_string();
    vec![(tags::NODE.to_string(), grant.id.clone()), (tags::SSH.to_string(), ssh.to_string()), (tags::FORWARD.to_string(), port)]
}

/// One step's launch, carried out away from the actor.
pub(super) struct Provision {
    pub(super) cloud: Arc<CloudSettings>,
    pub(super) config: RegionConfig,
    pub(super) region: Region,
    pub(super) broker: String,
    pub(super) local: Option<Engine>,
    pub(super) ingest: SocketAddr,
    pub(super) network: String,
    pub(super) labels: HashMap<String, String>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) overrides: Vec<Option<SocketAddr>>,
    pub(super) msg: AcquireNodes,
}

/// A node ready for a step: the node, its run network, its relay's ingest base URL, the forward behind it.
pub(super) type Ready = (CloudNode, String, String, Task);

/// Launches what the idle pool could not give, waits for it, connects and
/// prepares every node; keeps those that got ready when they are at least
/// `min_nodes`, and terminates the rest.
pub(super) async fn provision(job: Provision, reused: Vec<CloudNode>) -> Result<Vec<Ready>, PoolError> {
    let (cloud, msg) = (&job.cloud, &job.msg);
    let deadline = job.expires_at + chrono::Duration::from_std(cloud.expiry_grace + cloud.launch_timeout).unwrap_or_default();
    let run_tags = vec![
        (tags::RUN.to_string(), msg.run_id.to_string()),
        (tags::STEP.to_string(), msg.step_id.to_string()),
        (tags::EXPIRES_AT.to_string(), deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    ];
    let mut failures: Vec<String> = Vec::new();
    let mut launched: Vec<InstanceView> = Vec::new();
    let new = job.overrides.len() as u32;
    if new > 0 {
        let boot = NodeBoot {
            broker: job.broker.clone(),
            run: msg.run_id.to_string(),
            step: msg.step_id.to_string(),
            expires_at: deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            expires_epoch: deadline.timestamp(),
            node_dir: cloud.node_dir.clone(),
            tuning: cloud.node_tuning.clone(),
        };
        let user_data = ec2::render_user_data(&cloud.user_data_template, &boot).map_err(PoolError::Refused)?;
        if let Some(why) = job.region.unsuitable_type(&msg.instance_type, &job.config.ami).await? {
            return Err(PoolError::Refused(why));
        }
        let associate_public_ip = cloud.address == AddressKind::Public
            && !job.config.subnet_id.is_empty()
            && !job.region.subnet_assigns_public_ip(&job.config.subnet_id).await?;
        let mut tag_list = vec![
            ("Name".to_string(), format!("loads-{}-{}", job.broker, msg.plan)),
            ("Project".to_string(), "loads".to_string()),
            (tags::BROKER.to_string(), job.broker.clone()),
            ("Owner".to_string(), cloud.owner.clone()),
        ];
        tag_list.extend(run_tags.iter().cloned());
        // All of them first; if EC2 keeps lacking the capacity, whatever it has down to `min_nodes`.
        let min_new = msg.min_nodes.saturating_sub(reused.len() as u32).max(1);
        let mut launch = ec2::Launch {
            instance_type: msg.instance_type.clone(),
            count: new,
            min_count: new,
            tags: tag_list,
            user_data,
            associate_public_ip,
        };
        let ids = match job.region.launch(&job.config, &launch, cloud.backoff).await {
            Err(e) if e.code.as_deref() == Some("InsufficientInstanceCapacity") && min_new < new => {
                tracing::warn!(error = %e, min_new, "not enough capacity for every node; asking for at least min_nodes");
                launch.min_count = min_new;
                job.region.launch(&job.config, &launch, cloud.backoff).await?
            }
            other => other?,
        };
        tracing::info!(run_id = %msg.run_id, step_id = %msg.step_id, instances = ?ids, "launched instances");
        let (running, late) = match job.region.wait_running(&ids, cloud.launch_timeout).await {
            Ok(x) => x,
            Err(e) => {
                let _ = job.region.terminate(&ids).await;
                return Err(e.into());
            }
        };
        if !late.is_empty() {
            failures.push(format!("{} not running within {} s", late.join(", "), cloud.launch_timeout.as_secs()));
            let _ = job.region.terminate(&late).await;
        }
        launched = running;
    }

    // Reused nodes get the run's tags and a new deadline.
    let reused_ids: Vec<String> = reused.iter().map(|n| n.instance.id.clone()).collect();
    if let Err(e) = job.region.tag(&reused_ids, &run_tags).await {
        failures.push(e.to_string());
    }
    let _ = job.region.untag(&reused_ids, &[tags::IDLE_SINCE]).await;

    let reuse_jobs = reused.into_iter().map(|node| async {
        let prepared = rearm(&job, &node.ssh, deadline).await.map_err(|e| e.to_string());
        match prepared {
            Ok(()) => attach(&job, node).await,
            Err(e) => Err((node.instance.id.clone(), e)),
        }
    });
    let overrides = job.overrides.clone();
    // An instance reached at an override (a test double) says at which, before it is reached.
    for (instance, over) in launched.iter().zip(&overrides) {
        if let Some(addr) = over {
            if let Err(e) = job.region.tag(std::slice::from_ref(&instance.id), &[(tags::SSH.to_string(), addr.to_string())]).await {
                tracing::warn!(instance = %instance.id, error = %e, "could not tag the instance with its SSH address");
            }
        }
    }
    let new_jobs = launched.iter().enumerate().map(|(i, instance)| {
        let over = overrides.get(i).copied().flatten();
        let job = &job;
        async move {
            let node = connect(job, instance.clone(), over, deadline).await.map_err(|e| (instance.id.clone(), e))?;
            attach(job, node).await
        }
    });
    let mut ready = Vec::new();
    let mut lost = Vec::new();
    for result in join_all(reuse_jobs).await.into_iter().chain(join_all(new_jobs).await) {
        match result {
            Ok(r) => ready.push(r),
            Err((id, reason)) => {
                tracing::warn!(instance = %id, %reason, "a node did not become ready");
                failures.push(format!("{id}: {reason}"));
                lost.push(id);
            }
        }
    }
    if (ready.len() as u32) < msg.min_nodes {
        lost.extend(ready.iter().map(|(n, ..)| n.instance.id.clone()));
        let _ = job.region.terminate(&lost).await;
        job.cloud.forget(&lost);
        return Err(PoolError::Capacity { wanted: msg.count, min: msg.min_nodes, ready: ready.len() as u32, reasons: failures.join("; ") });
    }
    match job.region.terminate(&lost).await {
        Ok(()) => job.cloud.forget(&lost),
        Err(e) => tracing::warn!(error = %e, "could not terminate nodes that did not become ready; the reaper will"),
    }
    Ok(ready)
}

/// Moves a node's dead-man's switch deadline (its file, which the switch reads; the
/// `loads:expires-at` tag is the reaper's) and applies the node tuning unless it was
/// applied already (by the first boot's user-data, or for an earlier run).
async fn rearm(job: &Provision, ssh: &SshNode, deadline: DateTime<Utc>) -> Result<(), SshError> {
    let mut commands = vec![move_deadline(&job.cloud, deadline)];
    commands.extend(tuning(&job.cloud));
    run_all(ssh, commands).await
}

/// The node tuning as one command run as root, once per instance (`<node_dir>/tuning-applied` marks it).
fn tuning(cloud: &CloudSettings) -> Option<String> {
    if cloud.node_tuning.is_empty() {
        return None;
    }
    let (dir, all) = (&cloud.node_dir, cloud.node_tuning.join(" && "));
    Some(cloud.ssh.as_root(&format!("[ -e {dir}/tuning-applied ] || {{ {all} && touch {dir}/tuning-applied; }}")))
}

/// The command that moves the deadline in a node's dead-man's switch file.
pub(super) fn move_deadline(cloud: &CloudSettings, deadline: DateTime<Utc>) -> String {
    let (sudo, dir) = (cloud.ssh.sudo(), &cloud.node_dir);
    format!("{sudo}mkdir -p {dir} && echo {} | {sudo}tee {dir}/expires-at >/dev/null", deadline.timestamp())
}

/// Runs commands on a node in turn; the first that fails is the error.
pub(super) async fn run_all(ssh: &SshNode, commands: Vec<String>) -> Result<(), SshError> {
    for command in commands {
        let (status, out) = ssh.exec(&command).await?;
        if status != 0 {
            return Err(SshError::Session {
                addr: ssh.addr(),
                operation: "prepare the node",
                message: format!("`{command}` exited {status}: {}", out.trim()),
            });
        }
    }
    Ok(())
}

/// Connects to a freshly launched instance and gets its Docker engine through SSH.
async fn connect(job: &Provision, instance: InstanceView, over: Option<SocketAddr>, deadline: DateTime<Utc>) -> Result<CloudNode, String> {
    let cloud = &job.cloud;
    let addr = match over {
        Some(addr) => addr,
        None => {
            let ip = match cloud.address {
                AddressKind::Public => instance.ip_address.clone(),
                AddressKind::Private => instance.private_ip_address.clone(),
            };
            let ip = ip.ok_or_else(|| format!("no {:?} address (see ec2.address)", cloud.address).to_lowercase())?;
            SocketAddr::new(ip.parse().map_err(|e| format!("address {ip}: {e}"))?, 22)
        }
    };
    let started = std::time::Instant::now();
    let stage =
        |stage: &str| tracing::info!(instance = %instance.id, stage, elapsed_ms = started.elapsed().as_millis() as u64, "node stage");
    let ssh = SshNode::connect(addr, Some(&instance.id), &cloud.ssh).await.map_err(|e| e.to_string())?;
    stage("sshd up");
    ssh.wait_for_boot(&cloud.node_dir, cloud.launch_timeout).await.map_err(|e| e.to_string())?;
    stage("boot finished");
    rearm(job, &ssh, deadline).await.map_err(|e| e.to_string())?;
    ssh.wait_for_docker(cloud.launch_timeout).await.map_err(|e| e.to_string())?;
    stage("docker ready");
    let (engine, bridge) = ssh.docker().await.map_err(|e| e.to_string())?;
    Ok(CloudNode { instance, ssh, engine, _bridge: bridge, forward: None, lease: None, idle_since: None })
}

/// Readies a connected node for the run: the relay image, the run network, the metrics forward.
async fn attach(job: &Provision, node: CloudNode) -> Result<Ready, (String, String)> {
    let fail = |e: String| (node.instance.id.clone(), e);
    let relay = &job.cloud.relay_image;
    if !node.engine.has_image(relay).await.map_err(|e| fail(e.to_string()))? {
        let local = job
            .local
            .as_ref()
            .ok_or_else(|| fail(format!("{relay} is missing on the node and there is no local engine to copy it from")))?;
        let started = std::time::Instant::now();
        node.engine.copy_image_from(local, relay, job.cloud.copy_stall).await.map_err(|e| fail(e.to_string()))?;
        tracing::info!(instance = %node.instance.id, stage = "relay image copied", elapsed_ms = started.elapsed().as_millis() as u64, "node stage");
    }
    let (network, _) = node.engine.ensure_network(&job.network, job.labels.clone()).await.map_err(|e| fail(e.to_string()))?;
    let (port, forward) = node.ssh.forward_to_broker(NODE_LOOPBACK, 0, job.ingest).await.map_err(|e| fail(e.to_string()))?;
    let ingest_base = format!("http://{NODE_LOOPBACK}:{port}");
    Ok((node, network, ingest_base, forward))
}
