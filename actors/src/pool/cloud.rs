//! The EC2 provider: every node is an instance, launched for a step or taken
//! from the idle pool, reached over SSH, its Docker engine driven through that
//! connection. The actor's state for it is [`CloudNodes`]; the long work runs
//! away from the actor: launching a step's instances and readying each over
//! SSH (`provision`), taking a run's instances back after a broker restart
//! (`adopt_nodes`), and releasing them (`release`). The actor hands these
//! futures what they need and keeps what they answer.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Context, ResponseActFuture};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use uuid::Uuid;

use super::meter::Meter;
use super::reaper::all_instances;
use super::{AcquireNodes, Ec2PoolActor, NodeGrant, NodeInterrupted, OpenRun, PoolError, Shared};
use crate::domain::usage::UsageKey;
use crate::domain::Market;
use crate::infra::docker::{labels, Engine};
use crate::infra::ec2::{self, tags, InstanceView, NodeBoot, Region, RegionConfig};
use crate::infra::ssh::{SshError, SshNode};
use crate::infra::Task;
use crate::settings::{AddressKind, CloudSettings};

/// Where the relays' metrics forward listens on a node: its loopback, which an sshd as it
/// comes (`GatewayPorts no`) allows; the relay shares the node's network to reach it.
const NODE_LOOPBACK: &str = "127.0.0.1";

/// An instance this pool launched and holds an SSH connection to.
pub(super) struct CloudNode {
    instance: InstanceView,
    ssh: SshNode,
    engine: Engine,
    _bridge: Task,
    forward: Option<Task>,
    /// Reads the spot interruption notice while the node is leased (spot nodes only).
    watch: Option<Task>,
    lease: Option<Lease>,
    idle_since: Option<DateTime<Utc>>,
}

/// Who holds a cloud node, and what it was granted as.
#[derive(Clone, Debug)]
struct Lease {
    run_id: Uuid,
    step_id: Uuid,
    name: String,
    address: String,
    network: String,
    ingest_base: String,
}

/// An instance's public IP, or `private` when it has none.
fn public_ip(instance: &InstanceView, private: &str) -> String {
    instance.ip_address.clone().unwrap_or_else(|| private.to_string())
}

/// The instances the pool holds, leased or idle, and what runs have reserved.
pub(super) struct CloudNodes {
    settings: Arc<CloudSettings>,
    nodes: HashMap<String, CloudNode>,
    /// Nodes each open run may still ask for (counted against the caps).
    reserved: HashMap<Uuid, u32>,
    /// Runs whose instances are terminated when released, pooling or not.
    terminating: HashSet<Uuid>,
    /// The next of `address_override` to hand out.
    next_override: usize,
}

impl CloudNodes {
    pub(super) fn new(settings: CloudSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            nodes: HashMap::new(),
            reserved: HashMap::new(),
            terminating: HashSet::new(),
            next_override: 0,
        }
    }

    pub(super) fn settings(&self) -> Arc<CloudSettings> {
        self.settings.clone()
    }

    /// Whether released instances are kept for reuse.
    pub(super) fn pooling(&self) -> bool {
        self.settings.pooling
    }

    /// Keeps nodes (adopted, or released into the idle pool).
    fn keep(&mut self, nodes: Vec<CloudNode>) {
        for node in nodes {
            self.nodes.insert(node.instance.id.clone(), node);
        }
    }

    /// Takes out the nodes `held` selects.
    fn take(&mut self, held: impl Fn(&CloudNode) -> bool) -> Vec<CloudNode> {
        let ids: Vec<String> = self.nodes.iter().filter(|(_, n)| held(n)).map(|(id, _)| id.clone()).collect();
        ids.iter().filter_map(|id| self.nodes.remove(id)).collect()
    }

    /// Stops using one instance, or all (they are being terminated; a leased node's step then loses it).
    pub(super) fn drop_nodes(&mut self, id: Option<&str>) {
        match id {
            Some(id) => drop(self.nodes.remove(id)),
            None => self.nodes.clear(),
        }
    }

    /// The run's instances are terminated when released, not pooled.
    pub(super) fn terminate_when_released(&mut self, run_id: Uuid) {
        self.terminating.insert(run_id);
    }

    /// Checks the caps for a run and reserves its nodes.
    pub(super) fn reserve(&mut self, msg: &OpenRun) -> Result<(), PoolError> {
        let cloud = &self.settings;
        if msg.instances > cloud.max_instances_per_run {
            return Err(PoolError::Refused(format!(
                "the run needs {} instances; ec2.max_instances_per_run is {}",
                msg.instances, cloud.max_instances_per_run
            )));
        }
        let idle = self.nodes.values().filter(|n| n.lease.is_none()).count() as u32;
        let in_use = self.nodes.len() as u32 + self.reserved.values().sum::<u32>();
        let extra = msg.instances.saturating_sub(idle);
        if in_use + extra > cloud.max_instances {
            return Err(PoolError::Refused(format!(
                "the run needs {} instances; with {in_use} in use or reserved that exceeds ec2.max_instances ({}); nothing was launched",
                msg.instances, cloud.max_instances
            )));
        }
        self.reserved.insert(msg.run_id, msg.instances);
        Ok(())
    }

    /// Takes a run's instances back after a restart (see [`super::AdoptRun`]).
    pub(super) fn adopt(&self, shared: &Shared, run_id: Uuid) -> ResponseActFuture<Ec2PoolActor, Result<(), PoolError>> {
        let job = Adoption {
            cloud: self.settings.clone(),
            regions: shared.regions.clone(),
            broker: shared.broker_id.clone(),
            run_id,
            network: Ec2PoolActor::network_name(run_id),
            labels: shared.labels(run_id),
            ingest: shared.ingest_target(),
        };
        Box::pin(actix::fut::wrap_future::<_, Ec2PoolActor>(adopt_nodes(job)).map(move |adopted, act, _| {
            let adopted = adopted?;
            // Metered again from now: the broker cannot know when the previous one last counted.
            let since = act.shared.meter.now();
            for node in &adopted {
                if let Some(lease) = &node.lease {
                    act.shared.meter.open(run_id, lease.step_id, &node.instance.id, usage_key(&node.instance), since);
                }
            }
            if let Some(nodes) = act.cloud_mut() {
                nodes.keep(adopted);
            }
            Ok(())
        }))
    }

    /// Lends a step its nodes: idle pooled instances of its type and region first,
    /// then new ones; the ones adopted for it after a restart when it carries on.
    pub(super) fn acquire(
        &mut self,
        shared: &Shared,
        msg: AcquireNodes,
    ) -> ResponseActFuture<Ec2PoolActor, Result<Vec<NodeGrant>, PoolError>> {
        let refuse = |why: String| -> ResponseActFuture<Ec2PoolActor, _> { Box::pin(actix::fut::ready(Err(PoolError::Refused(why)))) };
        if msg.adopt {
            let grants = self.adopted_grants(shared, msg.run_id, msg.step_id);
            // Adopted spot nodes are watched again.
            let settings = self.settings.clone();
            for node in self.nodes.values_mut() {
                let Some(lease) = node.lease.as_ref().filter(|l| l.run_id == msg.run_id && l.step_id == msg.step_id) else { continue };
                if let Some(to) = msg.interruptions.clone().filter(|_| usage_key(&node.instance).market == Market::Spot) {
                    let watch = SpotWatch { cloud: settings.clone(), meter: shared.meter.clone(), run_id: msg.run_id, to };
                    node.watch =
                        Some(Task::spawn(watch_spot_notice(watch, node.ssh.clone(), lease.name.clone(), node.instance.id.clone())));
                }
            }
            return Box::pin(actix::fut::ready(Ok(grants)));
        }
        let mut places = Vec::new();
        for (name, count) in &msg.regions {
            let Some(config) = self.settings.regions.get(name).cloned() else {
                return refuse(format!("region {name} is not configured: set ec2.regions.{name}.ami"));
            };
            let Some(region) = shared.region(name) else {
                return refuse(format!("region {name} has no EC2 client"));
            };
            places.push((config, region, *count));
        }
        if let Some(left) = self.reserved.get_mut(&msg.run_id) {
            *left = left.saturating_sub(msg.count);
        }
        let since = shared.meter.now();
        let mut jobs = Vec::new();
        for (config, region, count) in places {
            let reusable: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.lease.is_none() && n.instance.region == region.name() && n.instance.instance_type == msg.instance_type)
                .map(|(id, _)| id.clone())
                .take(count as usize)
                .collect();
            let reused: Vec<CloudNode> = reusable.iter().filter_map(|id| self.nodes.remove(id)).collect();
            for node in &reused {
                shared.meter.open(msg.run_id, msg.step_id, &node.instance.id, usage_key(&node.instance), since);
            }
            let new = count - reused.len() as u32;
            let overrides = &self.settings.address_override;
            let overrides: Vec<Option<SocketAddr>> =
                (0..new as usize).map(|i| (!overrides.is_empty()).then(|| overrides[(self.next_override + i) % overrides.len()])).collect();
            self.next_override += new as usize;
            let job = Provision {
                cloud: self.settings.clone(),
                config,
                region,
                broker: shared.broker_id.clone(),
                local: shared.engine.clone().ok(),
                ingest: shared.ingest_target(),
                network: Ec2PoolActor::network_name(msg.run_id),
                labels: shared.labels(msg.run_id),
                expires_at: Utc::now() + chrono::Duration::from_std(msg.needed_for).unwrap_or_default(),
                overrides,
                meter: shared.meter.clone(),
                since,
                min_nodes: (msg.min_nodes * count).div_ceil(msg.count.max(1)),
                msg: msg.clone(),
            };
            jobs.push((job, reused));
        }
        let (run_id, step_id) = (msg.run_id, msg.step_id);
        let position = msg.step_position;
        let interruptions = msg.interruptions.clone();
        let settings = self.settings.clone();
        let images_from = shared.engine.clone().ok();
        let all = provision_all(jobs, msg.count, msg.min_nodes);
        Box::pin(actix::fut::wrap_future::<_, Ec2PoolActor>(all).map(move |res, act, ctx| {
            // Instances launched for the step that did not become ready were given up.
            let kept: HashSet<String> = res.iter().flatten().map(|(node, ..)| node.instance.id.clone()).collect();
            act.shared.meter.close(run_id, |id, step| step == step_id && !kept.contains(id));
            let ready = res?;
            let mut grants = Vec::new();
            let mut labels = Vec::new();
            let mut leased = Vec::new();
            for (i, (mut node, network, ingest_base, forward)) in ready.into_iter().enumerate() {
                // Peers reach a node at its private address (an address override changes
                // only where the broker's SSH goes).
                let address = node.instance.private_ip_address.clone().unwrap_or_else(|| node.ssh.addr().ip().to_string());
                let grant = NodeGrant {
                    id: format!("s{position}n{i}"),
                    engine: node.engine.clone(),
                    public_address: public_ip(&node.instance, &address),
                    address,
                    network,
                    ingest_base,
                    instance_id: Some(node.instance.id.clone()),
                    region: node.instance.region.clone(),
                    images_from: images_from.clone(),
                    host_network: true,
                };
                node.forward = Some(forward);
                node.watch = interruptions.clone().filter(|_| usage_key(&node.instance).market == Market::Spot).map(|to| {
                    let watch = SpotWatch { cloud: settings.clone(), meter: act.shared.meter.clone(), run_id, to };
                    Task::spawn(watch_spot_notice(watch, node.ssh.clone(), grant.id.clone(), node.instance.id.clone()))
                });
                node.lease = Some(Lease {
                    run_id,
                    step_id,
                    name: grant.id.clone(),
                    address: grant.address.clone(),
                    network: grant.network.clone(),
                    ingest_base: grant.ingest_base.clone(),
                });
                node.idle_since = None;
                labels.push((node.instance.region.clone(), node.instance.id.clone(), node_tags(&grant, node.ssh.addr())));
                grants.push(grant);
                leased.push(node);
            }
            if let Some(nodes) = act.cloud_mut() {
                nodes.keep(leased);
            }
            // What a restarted broker needs to take the nodes back, on the instances themselves.
            let regions = act.shared.regions.clone();
            ctx.spawn(actix::fut::wrap_future(async move {
                for (region, id, tags) in labels {
                    if let Some(r) = regions.iter().find(|r| r.name() == region) {
                        if let Err(e) = r.tag(std::slice::from_ref(&id), &tags).await {
                            tracing::warn!(instance = %id, error = %e, "could not tag a node; it cannot be carried on after a restart");
                        }
                    }
                }
            }));
            Ok(grants)
        }))
    }

    /// The grants of the nodes adopted for a step, by name.
    fn adopted_grants(&self, shared: &Shared, run_id: Uuid, step_id: Uuid) -> Vec<NodeGrant> {
        let mut grants: Vec<NodeGrant> = self
            .nodes
            .values()
            .filter_map(|n| {
                let l = n.lease.as_ref().filter(|l| l.run_id == run_id && l.step_id == step_id)?;
                Some(NodeGrant {
                    id: l.name.clone(),
                    engine: n.engine.clone(),
                    address: l.address.clone(),
                    public_address: public_ip(&n.instance, &l.address),
                    network: l.network.clone(),
                    ingest_base: l.ingest_base.clone(),
                    instance_id: Some(n.instance.id.clone()),
                    region: n.instance.region.clone(),
                    images_from: shared.engine.clone().ok(),
                    host_network: true,
                })
            })
            .collect();
        grants.sort_by(|a, b| a.id.cmp(&b.id));
        grants
    }

    /// Takes back a step's nodes: terminated, or kept idle when pooling.
    pub(super) fn release_step(&mut self, shared: &Shared, run_id: Uuid, step_id: Uuid) -> ResponseActFuture<Ec2PoolActor, ()> {
        let nodes = self.take(|n| n.lease.as_ref().is_some_and(|l| l.run_id == run_id && l.step_id == step_id));
        let pool = !self.terminating.contains(&run_id);
        let release = release(self.settings.clone(), shared.regions.clone(), shared.broker_id.clone(), nodes, pool);
        Box::pin(actix::fut::wrap_future::<_, Ec2PoolActor>(release).map(move |kept, act, _| {
            act.shared.meter.close(run_id, |_, step| step == step_id);
            if let Some(nodes) = act.cloud_mut() {
                nodes.keep(kept);
            }
        }))
    }

    /// Releases what the run still holds and terminates its instances the pool
    /// lost track of (a launch that failed half-way).
    pub(super) fn close_run(&mut self, shared: &Shared, run_id: Uuid) -> ResponseActFuture<Ec2PoolActor, Result<(), PoolError>> {
        self.reserved.remove(&run_id);
        let leftover = self.take(|n| n.lease.as_ref().is_some_and(|l| l.run_id == run_id));
        let pool = !self.terminating.remove(&run_id);
        let (regions, broker) = (shared.regions.clone(), shared.broker_id.clone());
        let release = release(self.settings.clone(), regions.clone(), broker.clone(), leftover, pool);
        let closed = async move {
            let kept = release.await;
            let run = run_id.to_string();
            let mut lost = Vec::new();
            match all_instances(&regions, &broker).await {
                Ok(all) => lost.extend(
                    all.into_iter().filter(|(_, i)| i.tags.get(tags::RUN) == Some(&run) && !kept.iter().any(|k| k.instance.id == i.id)),
                ),
                Err(e) => return (kept, Err(e)),
            }
            for (region, instance) in lost {
                if let Err(e) = region.terminate(std::slice::from_ref(&instance.id)).await {
                    return (kept, Err(e.into()));
                }
            }
            (kept, Ok(()))
        };
        Box::pin(actix::fut::wrap_future::<_, Ec2PoolActor>(closed).map(move |(kept, closed), act, _| {
            act.shared.meter.close(run_id, |_, _| true);
            if let Some(nodes) = act.cloud_mut() {
                nodes.keep(kept);
            }
            closed
        }))
    }

    /// Terminates idle pooled instances that waited longer than allowed.
    pub(super) fn expire_idle(&mut self, shared: &Shared, ctx: &mut Context<Ec2PoolActor>) {
        let now = Utc::now();
        let idle = chrono::Duration::from_std(self.settings.idle).unwrap_or_default();
        for node in self.take(|n| n.lease.is_none() && n.idle_since.is_some_and(|t| t + idle <= now)) {
            let region = shared.region(&node.instance.region);
            let cloud = self.settings.clone();
            ctx.spawn(actix::fut::wrap_future(async move {
                let Some(region) = region else { return };
                match region.terminate(std::slice::from_ref(&node.instance.id)).await {
                    Ok(()) => {
                        cloud.forget(std::slice::from_ref(&node.instance.id));
                        tracing::info!(instance = %node.instance.id, "terminated an instance idle too long")
                    }
                    Err(e) => {
                        tracing::warn!(instance = %node.instance.id, error = %e, "could not terminate an idle instance; the reaper will")
                    }
                }
            }));
        }
    }
}

impl CloudSettings {
    /// Forgets the host keys recorded for terminated instances.
    pub(super) fn forget(&self, instances: &[String]) {
        if let Err(e) = crate::infra::ssh::forget_hosts(&self.ssh.known_hosts, instances) {
            tracing::warn!(error = %e, known_hosts = %self.ssh.known_hosts.display(), "could not remove terminated instances' host keys");
        }
    }
}

/// Terminates nodes, or (pooling, unless `pool` is false) cleans and retags them as idle; answers those kept.
async fn release(cloud: Arc<CloudSettings>, regions: Vec<Region>, broker: String, nodes: Vec<CloudNode>, pool: bool) -> Vec<CloudNode> {
    let mut kept = Vec::new();
    let mut doomed: Vec<CloudNode> = Vec::new();
    for mut node in nodes {
        node.forward = None;
        node.watch = None;
        let lease = node.lease.take();
        if !(cloud.pooling && pool) {
            doomed.push(node);
            continue;
        }
        // Only a node whose engine still answers and is clean goes back to the pool.
        let cleaned = match &lease {
            Some(l) => node.engine.sweep(&[(labels::BROKER, &broker), (labels::RUN, &l.run_id.to_string())]).await.map(|_| ()),
            None => Ok(()),
        };
        let region = regions.iter().find(|r| r.name() == node.instance.region);
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(cloud.idle + cloud.expiry_grace).unwrap_or_default();
        // The switch's own file moves with the tag, or the node powers off while pooled.
        let cleaned = match cleaned {
            Ok(()) => run_all(&node.ssh, vec![move_deadline(&cloud, expires)]).await.map_err(NodeError::from),
            Err(e) => Err(NodeError::from(e)),
        };
        let idle_tags = [
            (tags::IDLE_SINCE.to_string(), now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            (tags::EXPIRES_AT.to_string(), expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ];
        let retagged = match (cleaned, region) {
            (Ok(()), Some(region)) => match region.tag(std::slice::from_ref(&node.instance.id), &idle_tags).await {
                Ok(()) => region.untag(std::slice::from_ref(&node.instance.id), &[tags::RUN, tags::STEP]).await.is_ok(),
                Err(_) => false,
            },
            _ => false,
        };
        if retagged {
            tracing::info!(instance = %node.instance.id, "instance kept idle for reuse");
            node.idle_since = Some(now);
            node.instance.tags.retain(|k, _| k != tags::RUN && k != tags::STEP);
            kept.push(node);
        } else {
            doomed.push(node);
        }
    }
    for region in &regions {
        let ids: Vec<String> = doomed.iter().filter(|n| n.instance.region == region.name()).map(|n| n.instance.id.clone()).collect();
        match region.terminate(&ids).await {
            Ok(()) if !ids.is_empty() => {
                cloud.forget(&ids);
                tracing::info!(instances = ?ids, "terminated released instances")
            }
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "could not terminate released instances; the reaper will"),
        }
    }
    kept
}

/// The command that prints a node's spot interruption notice, if it has one: its instance
/// metadata `spot/instance-action`, read with an IMDSv2 token (a 404, and so a failure, without one).
fn spot_notice_command(metadata_url: &str) -> String {
    format!(
        "t=$(curl -sf -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' '{metadata_url}/latest/api/token') && \
         curl -sf -m 2 -H \"X-aws-ec2-metadata-token: $t\" '{metadata_url}/latest/meta-data/spot/instance-action'"
    )
}

/// A notice's action and time (`{"action": "terminate", "time": "2017-09-18T08:22:00Z"}`).
fn spot_notice(text: &str) -> Option<(String, String)> {
    let notice: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    let action = notice.get("action")?.as_str()?.to_string();
    let time = notice.get("time").and_then(|t| t.as_str()).unwrap_or_default().to_string();
    Some((action, time))
}

/// What watching a run's spot node needs.
#[derive(Clone)]
struct SpotWatch {
    cloud: Arc<CloudSettings>,
    meter: Meter,
    run_id: Uuid,
    to: actix::Recipient<NodeInterrupted>,
}

/// Reads a spot node's interruption notice every `ec2.spot_notice_seconds` over its SSH
/// connection until there is one, and tells `to`; stops when the node is released.
async fn watch_spot_notice(watch: SpotWatch, ssh: SshNode, node: String, instance: String) {
    let SpotWatch { cloud, meter, run_id, to } = watch;
    let command = spot_notice_command(&cloud.metadata_url);
    loop {
        tokio::time::sleep(cloud.spot_notice).await;
        match ssh.exec(&command).await {
            Ok((0, out)) => {
                if let Some((action, time)) = spot_notice(&out) {
                    tracing::warn!(%instance, %node, %action, %time, "spot interruption notice");
                    // Billed until EC2 takes it: the notice's time, else two minutes from now.
                    let taken = DateTime::parse_from_rfc3339(&time)
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_else(|_| meter.now() + chrono::Duration::minutes(2));
                    meter.ends_by(run_id, &instance, taken.max(meter.now()));
                    to.do_send(NodeInterrupted { node, instance, action, time, noticed_at: Utc::now() });
                    return;
                }
            }
            // No notice (the metadata answers 404), or the node is not answering: the step finds out.
            Ok(_) => {}
            Err(e) => tracing::debug!(%instance, error = %e, "could not read the spot interruption notice"),
        }
    }
}

/// What taking a run's instances back needs.
struct Adoption {
    cloud: Arc<CloudSettings>,
    regions: Vec<Region>,
    broker: String,
    run_id: Uuid,
    network: String,
    labels: HashMap<String, String>,
    ingest: SocketAddr,
}

/// Reaches every instance of the run again; terminates those that cannot be.
async fn adopt_nodes(job: Adoption) -> Result<Vec<CloudNode>, PoolError> {
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

/// The tags that let a restarted broker take a node back: its name in the run, its SSH address, its metrics forward's port.
fn node_tags(grant: &NodeGrant, ssh: SocketAddr) -> Vec<(String, String)> {
    let port = grant.ingest_base.rsplit(':').next().unwrap_or_default().to_string();
    vec![(tags::NODE.to_string(), grant.id.clone()), (tags::SSH.to_string(), ssh.to_string()), (tags::FORWARD.to_string(), port)]
}

/// Why a node could not be reached, taken back or readied: its SSH or Docker
/// operation's own error, or what about the instance is missing.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The instance has no address of the kind `ec2.address` asks for.
    #[error("no {} address (see ec2.address)", match .0 { AddressKind::Public => "public", AddressKind::Private => "private" })]
    NoAddress(AddressKind),
    /// The instance's address does not parse.
    #[error("address {address}: {source}")]
    Address {
        /// The address EC2 gave.
        address: String,
        /// Why it does not parse.
        source: std::net::AddrParseError,
    },
    /// A node to take back lacks one of the tags that say what it was doing.
    #[error("no {0} tag")]
    NoTag(&'static str),
    /// One of those tags does not parse.
    #[error("{tag}: {why}")]
    BadTag {
        /// The tag.
        tag: &'static str,
        /// Why it does not parse.
        why: String,
    },
    /// The relay image is on neither the node nor this machine.
    #[error("{0} is missing on the node and there is no local engine to copy it from")]
    NoRelayImage(String),
    /// An SSH operation failed (connect, boot, rearm, the metrics forward).
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// A Docker operation on the node failed.
    #[error(transparent)]
    Docker(#[from] crate::infra::docker::DockerError),
}

/// One step's launch, carried out away from the actor.
struct Provision {
    cloud: Arc<CloudSettings>,
    config: RegionConfig,
    region: Region,
    broker: String,
    local: Option<Engine>,
    ingest: SocketAddr,
    network: String,
    labels: HashMap<String, String>,
    expires_at: DateTime<Utc>,
    overrides: Vec<Option<SocketAddr>>,
    /// Instances are metered from `since`, when the step asked for them.
    meter: Meter,
    since: DateTime<Utc>,
    /// This region's share of the step's `min_nodes` (when capacity is short, it asks for at least that).
    min_nodes: u32,
    msg: AcquireNodes,
}

/// What an instance is metered by: its type, region and market (its `loads:market` tag).
fn usage_key(instance: &InstanceView) -> UsageKey {
    UsageKey {
        instance_type: instance.instance_type.clone(),
        region: instance.region.clone(),
        market: instance.tags.get(tags::MARKET).and_then(|m| Market::parse(m)).unwrap_or_default(),
    }
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
type Ready = (CloudNode, String, String, Task);

/// Provisions each region's share of a step at once; keeps the nodes that got
/// ready when they are at least `min_nodes` in all, and terminates them all otherwise.
async fn provision_all(jobs: Vec<(Provision, Vec<CloudNode>)>, count: u32, min_nodes: u32) -> Result<Vec<Ready>, PoolError> {
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
fn move_deadline(cloud: &CloudSettings, deadline: DateTime<Utc>) -> String {
    let (sudo, dir) = (cloud.ssh.sudo(), &cloud.node_dir);
    format!("{sudo}mkdir -p {dir} && echo {} | {sudo}tee {dir}/expires-at >/dev/null", deadline.timestamp())
}

/// Runs commands on a node in turn; the first that fails is the error.
async fn run_all(ssh: &SshNode, commands: Vec<String>) -> Result<(), SshError> {
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
