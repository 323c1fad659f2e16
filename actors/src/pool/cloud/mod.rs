//! The EC2 provider: every node is an instance, launched for a step or taken
//! from the idle pool, reached over SSH, its Docker engine driven through that
//! connection. The actor's state for it is [`CloudNodes`]; the long work runs
//! away from the actor: launching a step's instances and readying each over
//! SSH (`provision`), taking a run's instances back after a broker restart
//! (`adopt_nodes`), and releasing them (`release`). The actor hands these
//! futures what they need and keeps what they answer.

mod adopt;
mod provision;
mod spot;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Context, ResponseActFuture};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use self::adopt::{adopt_nodes, Adoption};
use self::provision::{move_deadline, provision_all, run_all, Provision};
use self::spot::{watch_spot_notice, SpotWatch};
use super::reaper::all_instances;
use super::{AcquireNodes, Ec2PoolActor, NodeGrant, OpenRun, PoolError, Shared};
use crate::domain::usage::UsageKey;
use crate::domain::Market;
use crate::infra::docker::{labels, Engine};
use crate::infra::ec2::{tags, InstanceView, Region};
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
        let idle = self.nodes.values().filter(|n| n.lease.is_none()).count() as u32;
        let in_use = self.nodes.len() as u32 + self.reserved.values().sum::<u32>();
        let caps = (self.settings.max_instances_per_run, self.settings.max_instances);
        if let Some(why) = over_caps(caps, msg.instances, idle, in_use) {
            return Err(PoolError::Refused(why));
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
            let overrides = overrides_for(&self.settings.address_override, self.next_override, new as usize);
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
                min_nodes: region_share(msg.min_nodes, count, msg.count),
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
        for node in self.take(|n| n.lease.is_none() && expired(n.idle_since, idle, now)) {
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

/// Why a run needing `instances` does not fit the caps `(per run, in all)`, given the
/// `idle` pooled instances it may reuse and the `in_use` ones held or reserved; `None` when it fits.
fn over_caps((per_run, in_all): (u32, u32), instances: u32, idle: u32, in_use: u32) -> Option<String> {
    if instances > per_run {
        return Some(format!("the run needs {instances} instances; ec2.max_instances_per_run is {per_run}"));
    }
    let extra = instances.saturating_sub(idle);
    (in_use + extra > in_all).then(|| {
        format!(
            "the run needs {instances} instances; with {in_use} in use or reserved that exceeds ec2.max_instances ({in_all}); nothing was launched"
        )
    })
}

/// A region's part of a step's `min_nodes`, for the `count` of its `total` nodes it holds (rounded up).
fn region_share(min_nodes: u32, count: u32, total: u32) -> u32 {
    (min_nodes * count).div_ceil(total.max(1))
}

/// The addresses `new` instances are reached at instead of EC2's (`ec2.address_override`,
/// handed out in turn from `next`), or none each when there are none.
fn overrides_for(overrides: &[SocketAddr], next: usize, new: usize) -> Vec<Option<SocketAddr>> {
    (0..new).map(|i| (!overrides.is_empty()).then(|| overrides[(next + i) % overrides.len()])).collect()
}

/// Whether a node idle since `since` has waited `idle` or more at `now` (a leased node never has).
fn expired(since: Option<DateTime<Utc>>, idle: chrono::Duration, now: DateTime<Utc>) -> bool {
    since.is_some_and(|t| t + idle <= now)
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

/// What an instance is metered by: its type, region and market (its `loads:market` tag).
fn usage_key(instance: &InstanceView) -> UsageKey {
    UsageKey {
        instance_type: instance.instance_type.clone(),
        region: instance.region.clone(),
        market: instance.tags.get(tags::MARKET).and_then(|m| Market::parse(m)).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_refused_past_either_cap_and_idle_instances_count_as_its_own() {
        assert_eq!(over_caps((10, 20), 4, 0, 0), None);
        assert!(over_caps((3, 20), 4, 0, 0).unwrap().contains("ec2.max_instances_per_run is 3"));
        assert!(over_caps((10, 20), 4, 0, 17).unwrap().contains("17 in use or reserved"));
        assert_eq!(over_caps((10, 20), 4, 3, 17), None, "three of its four come from the idle pool");
        assert_eq!(over_caps((10, 20), 4, 0, 16), None, "exactly at the cap");
    }

    #[test]
    fn each_region_asks_for_its_share_of_min_nodes_rounded_up() {
        assert_eq!(region_share(4, 2, 4), 2);
        assert_eq!(region_share(3, 2, 4), 2, "1.5 rounds up");
        assert_eq!(region_share(1, 1, 3), 1);
        assert_eq!(region_share(0, 2, 4), 0);
        assert_eq!(region_share(2, 0, 0), 0, "no nodes, no share, no division by zero");
    }

    #[test]
    fn overrides_are_handed_out_in_turn_and_wrap() {
        let a: SocketAddr = "127.0.0.1:2201".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2202".parse().unwrap();
        assert_eq!(overrides_for(&[a, b], 1, 3), vec![Some(b), Some(a), Some(b)]);
        assert_eq!(overrides_for(&[], 5, 2), vec![None, None]);
        assert!(overrides_for(&[a], 0, 0).is_empty());
    }

    #[test]
    fn an_idle_node_expires_once_it_has_waited_the_idle_time() {
        let now = Utc::now();
        let idle = chrono::Duration::seconds(60);
        assert!(expired(Some(now - chrono::Duration::seconds(60)), idle, now));
        assert!(!expired(Some(now - chrono::Duration::seconds(59)), idle, now));
        assert!(!expired(None, idle, now), "a leased node is not idle");
    }
}
