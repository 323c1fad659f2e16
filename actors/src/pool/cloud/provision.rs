//! Launching and readying a step's instances in one region, away from the actor:
//! launched in the step's market (spot with an on-demand fallback, at least
//! `min_nodes` when capacity is short), reached over SSH once booted, their
//! dead-man's switch armed, the relay image, run network and metrics forward put
//! in place; nodes that do not get ready are terminated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;

use super::super::meter::Meter;
use super::super::{AcquireNodes, PoolError};
use super::{CloudNode, NodeError, NODE_LOOPBACK};
use crate::domain::usage::UsageKey;
use crate::domain::Market;
use crate::infra::docker::Engine;
use crate::infra::ec2::{self, tags, InstanceView, NodeBoot, Region, RegionConfig};
use crate::infra::ssh::{SshError, SshNode};
use crate::infra::Task;
use crate::settings::{AddressKind, CloudSettings};

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
    /// Instances are metered from `since`, when the step asked for them.
    pub(super) meter: Meter,
    pub(super) since: DateTime<Utc>,
    /// This region's share of the step's `min_nodes` (when capacity is short, it asks for at least that).
    pub(super) min_nodes: u32,
    pub(super) msg: AcquireNodes,
}

impl Provision {
    /// Meters instances just launched in `market`.
    fn metered(&self, ids: &[String], spot: bool) {
        let key = UsageKey {
            instance_type: self.msg.instance_type.clone(),
            region: self.region.name().to_string(),
            market: if spot { Market::Spot } else { Market::OnDemand },
        };
        for id in ids {
            self.meter.open(self.msg.run_id, self.msg.step_id, id, key.clone(), self.since);
        }
    }
}

/// A node ready for a step: the node, its run network, its relay's ingest base URL, the forward behind it.
pub(super) type Ready = (CloudNode, String, String, Task);

/// Provisions each region's share of a step at once; keeps the nodes that got
/// ready when they are at least `min_nodes` in all, and terminates them all otherwise.
pub(super) async fn provision_all(jobs: Vec<(Provision, Vec<CloudNode>)>, count: u32, min_nodes: u32) -> Result<Vec<Ready>, PoolError> {
    let (jobs, reused): (Vec<Provision>, Vec<Vec<CloudNode>>) = jobs.into_iter().unzip();
    let results = join_all(jobs.iter().zip(reused).map(|(job, reused)| provision(job, reused))).await;
    let (mut landed, mut failures, mut error) = (Vec::new(), Vec::new(), None);
    for (job, result) in jobs.iter().zip(results) {
        match result {
            Ok((ready, failed)) => {
                failures.extend(failed);
                landed.push((job, ready));
            }
            Err(e) => {
                failures.push(format!("{}: {e}", job.region.name()));
                error.get_or_insert(e);
            }
        }
    }
    let ready = landed.iter().map(|(_, r)| r.len()).sum::<usize>() as u32;
    if ready >= min_nodes {
        return Ok(landed.into_iter().flat_map(|(_, r)| r).collect());
    }
    for (job, nodes) in &landed {
        let ids: Vec<String> = nodes.iter().map(|(n, ..)| n.instance.id.clone()).collect();
        let _ = job.region.terminate(&ids).await;
        job.cloud.forget(&ids);
    }
    match error {
        Some(e) if ready == 0 && jobs.len() == 1 => Err(e),
        _ => Err(PoolError::Capacity { wanted: count, min: min_nodes, ready, reasons: failures.join("; ") }),
    }
}

/// Launches what the idle pool could not give in one region, waits for it, connects and
/// prepares every node; answers those that got ready and why the others did not, and
/// terminates those.
async fn provision(job: &Provision, reused: Vec<CloudNode>) -> Result<(Vec<Ready>, Vec<String>), PoolError> {
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
        let min_new = job.min_nodes.saturating_sub(reused.len() as u32).max(1);
        let launch = ec2::LaunchRequest {
            instance_type: msg.instance_type.clone(),
            count: new,
            min_count: new,
            tags: tag_list,
            user_data,
            associate_public_ip,
            spot: false,
            give_up_on: &[],
        };
        let ids = launch_instances(job, launch, min_new).await?;
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
        match rearm(job, &node.ssh, deadline).await {
            Ok(()) => attach(job, node).await,
            Err(e) => Err((node.instance.id.clone(), e.into())),
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
    match job.region.terminate(&lost).await {
        Ok(()) => job.cloud.forget(&lost),
        Err(e) => tracing::warn!(error = %e, "could not terminate nodes that did not become ready; the reaper will"),
    }
    Ok((ready, failures))
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

/// `launch` bought as the step's market asks, tagged with it.
fn bought(launch: &ec2::LaunchRequest, spot: bool) -> ec2::LaunchRequest {
    let mut launch = launch.clone();
    launch.spot = spot;
    launch.tags.retain(|(k, _)| k != tags::MARKET);
    launch.tags.push((tags::MARKET.to_string(), if spot { Market::Spot } else { Market::OnDemand }.as_str().to_string()));
    launch
}

/// Launches a step's new instances; answers their ids. All of them first, in the step's
/// market; if EC2 keeps lacking the capacity, whatever it has down to `min_new`. With
/// `spot_fallback`, as many spot instances as EC2 gives and runs within
/// `ec2.spot_wait_seconds`, then the shortfall on demand.
async fn launch_instances(job: &Provision, launch: ec2::LaunchRequest, min_new: u32) -> Result<Vec<String>, PoolError> {
    let (cloud, msg) = (&job.cloud, &job.msg);
    let wanted = launch.count;
    let mut ids = Vec::new();
    let mut on_demand = bought(&launch, msg.market == Market::Spot);
    if msg.market == Market::SpotFallback {
        let spot = ec2::LaunchRequest { min_count: 1, give_up_on: ec2::SPOT_SHORTAGE, ..bought(&launch, true) };
        match job.region.launch(&job.config, &spot, cloud.backoff).await {
            Ok(launched) => {
                job.metered(&launched, true);
                let (running, late) = job.region.wait_running(&launched, cloud.spot_wait).await.unwrap_or((Vec::new(), launched));
                if !late.is_empty() {
                    tracing::warn!(instances = ?late, wait_s = cloud.spot_wait.as_secs(), "spot instances not running in time; terminating them");
                    let _ = job.region.terminate(&late).await;
                }
                ids = running.into_iter().map(|i| i.id).collect();
            }
            Err(e) if e.code.as_deref().is_some_and(|c| ec2::SPOT_SHORTAGE.contains(&c)) => {
                tracing::warn!(error = %e, "no spot capacity; launching on demand");
            }
            Err(e) => return Err(e.into()),
        }
        let short = wanted.saturating_sub(ids.len() as u32);
        if short == 0 {
            return Ok(ids);
        }
        tracing::info!(spot = ids.len(), on_demand = short, "launching the spot shortfall on demand");
        on_demand.count = short;
        on_demand.min_count = short;
    }
    let still_needed = min_new.saturating_sub(ids.len() as u32).max(1).min(on_demand.count);
    let more = match job.region.launch(&job.config, &on_demand, cloud.backoff).await {
        Err(e) if e.code.as_deref() == Some("InsufficientInstanceCapacity") && still_needed < on_demand.count => {
            tracing::warn!(error = %e, still_needed, "not enough capacity for every node; asking for at least min_nodes");
            on_demand.min_count = still_needed;
            job.region.launch(&job.config, &on_demand, cloud.backoff).await
        }
        other => other,
    };
    match more {
        Ok(more) => {
            job.metered(&more, on_demand.spot);
            ids.extend(more)
        }
        Err(e) if ids.len() as u32 >= min_new => tracing::warn!(error = %e, nodes = ids.len(), "going on with the spot nodes EC2 gave"),
        Err(e) => {
            let _ = job.region.terminate(&ids).await;
            return Err(e.into());
        }
    }
    Ok(ids)
}

/// Connects to a freshly launched instance and gets its Docker engine through SSH.
async fn connect(
    job: &Provision,
    instance: InstanceView,
    over: Option<SocketAddr>,
    deadline: DateTime<Utc>,
) -> Result<CloudNode, NodeError> {
    let cloud = &job.cloud;
    let addr = match over {
        Some(addr) => addr,
        None => {
            let ip = match cloud.address {
                AddressKind::Public => instance.ip_address.clone(),
                AddressKind::Private => instance.private_ip_address.clone(),
            };
            let ip = ip.ok_or(NodeError::NoAddress(cloud.address))?;
            SocketAddr::new(ip.parse().map_err(|source| NodeError::Address { address: ip, source })?, 22)
        }
    };
    let started = std::time::Instant::now();
    let stage =
        |stage: &str| tracing::info!(instance = %instance.id, stage, elapsed_ms = started.elapsed().as_millis() as u64, "node stage");
    let ssh = SshNode::connect(addr, Some(&instance.id), &cloud.ssh).await?;
    stage("sshd up");
    ssh.wait_for_boot(&cloud.node_dir, cloud.launch_timeout).await?;
    stage("boot finished");
    rearm(job, &ssh, deadline).await?;
    ssh.wait_for_docker(cloud.launch_timeout).await?;
    stage("docker ready");
    let (engine, bridge) = ssh.docker().await?;
    Ok(CloudNode { instance, ssh, engine, _bridge: bridge, forward: None, watch: None, lease: None, idle_since: None })
}

/// Readies a connected node for the run: the relay image, the run network, the metrics forward.
async fn attach(job: &Provision, node: CloudNode) -> Result<Ready, (String, NodeError)> {
    let fail = |e: NodeError| (node.instance.id.clone(), e);
    let relay = &job.cloud.relay_image;
    if !node.engine.has_image(relay).await.map_err(|e| fail(e.into()))? {
        let local = job.local.as_ref().ok_or_else(|| fail(NodeError::NoRelayImage(relay.clone())))?;
        let started = std::time::Instant::now();
        node.engine.copy_image_from(local, relay, job.cloud.copy_stall).await.map_err(|e| fail(e.into()))?;
        tracing::info!(instance = %node.instance.id, stage = "relay image copied", elapsed_ms = started.elapsed().as_millis() as u64, "node stage");
    }
    let (network, _) = node.engine.ensure_network(&job.network, job.labels.clone()).await.map_err(|e| fail(e.into()))?;
    let (port, forward) = node.ssh.forward_to_broker(NODE_LOOPBACK, 0, job.ingest).await.map_err(|e| fail(e.into()))?;
    let ingest_base = format!("http://{NODE_LOOPBACK}:{port}");
    Ok((node, network, ingest_base, forward))
}
