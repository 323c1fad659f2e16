//! `Ec2PoolActor`: hands out nodes for steps and takes them back.
//!
//! Two providers. With `local`, every node lives on this machine's Docker
//! engine: N nodes are N independent container sets, each with its own relay,
//! on one run network. With `ec2`, every node is an EC2 instance: launched
//! (or taken from the idle pool), reached over SSH with its host key checked,
//! its Docker engine driven through that SSH connection, a run network made
//! on it, and a reverse forward that carries its relay's metrics to the
//! broker. Caps are checked when a run opens, before anything is launched.
//! Released instances are terminated, or kept idle for the next run of the
//! same type and region when pooling is on, and terminated once idle too long.
//!
//! The pool also owns the final label sweep and the EC2 reaper, because it is
//! the one that knows which engines and instances a run touched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseActFuture, ResponseFuture, WrapFuture};
use chrono::{DateTime, Utc};
use uuid::Uuid;

mod cloud;

use cloud::{adopt_nodes, node_tags, provision, Adoption, Provision};

use crate::infra::docker::{labels, DockerError, Engine};
use crate::infra::ec2::{self, tags, Backoff, Ec2Error, InstanceView, Region, RegionConfig};
use crate::infra::ssh::{SshNode, SshSettings};
use crate::infra::{forward, Task};

/// Why the pool could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The provider cannot be used (e.g. no Docker engine).
    #[error("the node provider is unavailable: {0}")]
    Unavailable(String),
    /// The engine refused.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// EC2 refused.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// No instance of this broker has that id.
    #[error("no instance {0} belongs to this broker")]
    NoInstance(String),
    /// The configuration does not allow the request (a missing region, a cap).
    #[error("{0}")]
    Refused(String),
    /// Fewer nodes became ready than the step's `min_nodes`.
    #[error("only {ready} of {wanted} nodes became ready (min_nodes {min}): {reasons}")]
    Capacity {
        /// Nodes asked for.
        wanted: u32,
        /// The step's minimum.
        min: u32,
        /// Nodes ready.
        ready: u32,
        /// Why the others are missing.
        reasons: String,
    },
}

/// A run's network on one engine.
#[derive(Clone, Debug)]
pub struct RunNetwork {
    /// The network's name.
    pub name: String,
    /// The address of the host on that network.
    pub gateway: String,
}

/// A node lent to a step.
#[derive(Clone)]
pub struct NodeGrant {
    /// The node's name within the run, e.g. `s1n0`.
    pub id: String,
    /// The engine that runs the node's containers.
    pub engine: Engine,
    /// The node's private address (`PRIVATE_IP`; `dns_name`s resolve to it): on EC2 the
    /// instance's private IP, on the local provider the node's address on the run network.
    pub address: String,
    /// The node's public address (`HOST_IP`): on EC2 the instance's public IP (its private
    /// one when it has none), on the local provider the same as `address`.
    pub public_address: String,
    /// The run's network on the node's engine (its name, or its id where names may be ambiguous).
    pub network: String,
    /// Where the node's relay delivers its windows: `http://host:port`, as the relay sees it.
    pub ingest_base: String,
    /// The EC2 instance, for cloud nodes.
    pub instance_id: Option<String>,
    /// An engine to copy images from when the node lacks them (the broker's own).
    pub images_from: Option<Engine>,
    /// The step's containers use the node's own network: a cloud node is one machine.
    pub host_network: bool,
}

/// An instance's public IP, or `private` when it has none.
fn public_ip(instance: &InstanceView, private: &str) -> String {
    instance.ip_address.clone().unwrap_or_else(|| private.to_string())
}

/// Which address of an instance the broker connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    /// The public IPv4 address (a broker outside the VPC).
    Public,
    /// The private address (a broker inside the VPC).
    Private,
}

/// How the `ec2` provider launches and reaches nodes.
#[derive(Clone, Debug)]
pub struct CloudSettings {
    /// Launch settings by region name; a step in another region is refused.
    pub regions: BTreeMap<String, RegionConfig>,
    /// Most instances this broker has at once (running, idle or being launched).
    pub max_instances: u32,
    /// Most instances one run may use.
    pub max_instances_per_run: u32,
    /// Which address SSH connects to.
    pub address: AddressKind,
    /// Addresses every node's SSH is reached at instead, assigned in launch order (test doubles).
    pub address_override: Vec<SocketAddr>,
    /// The `Owner` tag.
    pub owner: String,
    /// How long instances may take to run, and Docker to answer on them.
    pub launch_timeout: Duration,
    /// Added to a run's maximum time for the dead-man's switch deadline.
    pub expiry_grace: Duration,
    /// Keep released instances for reuse.
    pub pooling: bool,
    /// How long a pooled instance may stay idle before it is terminated.
    pub idle: Duration,
    /// SSH login and host-key checking.
    pub ssh: SshSettings,
    /// Commands run as root on each node before use (also in the user-data).
    pub node_tuning: Vec<String>,
    /// The node's directory for loads' files.
    pub node_dir: String,
    /// The user-data template's text.
    pub user_data_template: String,
    /// Retries of throttling and capacity errors.
    pub backoff: Backoff,
    /// The relay image, copied from the broker's engine to nodes that lack it.
    pub relay_image: String,
    /// How long an image copy to a node may go without moving a byte.
    pub copy_stall: Duration,
}

/// An instance this pool launched and holds an SSH connection to.
struct CloudNode {
    instance: InstanceView,
    ssh: SshNode,
    engine: Engine,
    _bridge: Task,
    forward: Option<Task>,
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

/// Hands out nodes.
pub struct Ec2PoolActor {
    broker_id: String,
    engine: Result<Engine, String>,
    regions: Vec<Region>,
    networks: HashMap<Uuid, RunNetwork>,
    /// The forward on each local run network's gateway to the ingest listener.
    forwards: HashMap<Uuid, Task>,
    /// Runs whose instances are terminated when released, pooling or not.
    terminating: HashSet<Uuid>,
    ingest: SocketAddr,
    cloud: Option<Arc<CloudSettings>>,
    nodes: HashMap<String, CloudNode>,
    reserved: HashMap<Uuid, u32>,
    next_override: usize,
}

impl Ec2PoolActor {
    /// A pool of nodes on this machine's Docker engine.
    pub async fn local(broker_id: String) -> Self {
        let engine = Engine::local().await.map_err(|e| e.to_string());
        if let Err(e) = &engine {
            tracing::warn!(error = %e, "no Docker engine: runs will fail until one is reachable");
        }
        Self {
            broker_id,
            engine,
            regions: Vec::new(),
            networks: HashMap::new(),
            forwards: HashMap::new(),
            terminating: HashSet::new(),
            ingest: SocketAddr::from(([127, 0, 0, 1], 0)),
            cloud: None,
            nodes: HashMap::new(),
            reserved: HashMap::new(),
            next_override: 0,
        }
    }

    /// Also manages this broker's EC2 instances in `regions`.
    pub fn with_regions(mut self, regions: Vec<Region>) -> Self {
        self.regions = regions;
        self
    }

    /// Relays deliver to the broker's ingest listener at `address`.
    pub fn with_ingest(mut self, address: SocketAddr) -> Self {
        self.ingest = address;
        self
    }

    /// Where forwards to the ingest listener connect to.
    fn ingest_target(&self) -> SocketAddr {
        if self.ingest.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], self.ingest.port()))
        } else {
            self.ingest
        }
    }

    /// Nodes are EC2 instances (`pool.provider = "ec2"`).
    pub fn with_cloud(mut self, cloud: CloudSettings) -> Self {
        self.cloud = Some(Arc::new(cloud));
        self
    }

    fn engine(&self) -> Result<Engine, PoolError> {
        self.engine.clone().map_err(PoolError::Unavailable)
    }

    /// The name of a run's network.
    pub fn network_name(run_id: Uuid) -> String {
        format!("loads-{}", run_id.simple())
    }

    fn region(&self, name: &str) -> Option<Region> {
        self.regions.iter().find(|r| r.name() == name).cloned()
    }

    fn labels(&self, run_id: Uuid) -> HashMap<String, String> {
        HashMap::from([(labels::BROKER.to_string(), self.broker_id.clone()), (labels::RUN.to_string(), run_id.to_string())])
    }

    /// Terminates idle pooled instances that waited longer than allowed.
    fn expire_idle(&mut self, ctx: &mut Context<Self>) {
        let Some(cloud) = self.cloud.clone() else { return };
        let now = Utc::now();
        let idle = chrono::Duration::from_std(cloud.idle).unwrap_or_default();
        let expired: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.lease.is_none() && n.idle_since.is_some_and(|t| t + idle <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(node) = self.nodes.remove(&id) {
                let region = self.region(&node.instance.region);
                let cloud = cloud.clone();
                ctx.spawn(
                    async move {
                        if let Some(region) = region {
                            match region.terminate(std::slice::from_ref(&node.instance.id)).await {
                                Ok(()) => {
                                    cloud.forget(std::slice::from_ref(&node.instance.id));
                                    tracing::info!(instance = %node.instance.id, "terminated an instance idle too long")
                                }
                                Err(e) => tracing::warn!(instance = %node.instance.id, error = %e, "could not terminate an idle instance; the reaper will"),
                            }
                        }
                    }
                    .into_actor(self),
                );
            }
        }
    }
}

impl Actor for Ec2PoolActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.cloud.as_ref().is_some_and(|c| c.pooling) {
            ctx.run_interval(Duration::from_secs(1), |act, ctx| act.expire_idle(ctx));
        }
    }
}

/// Prepares a run that needs `instances` nodes: checks the caps and reserves
/// them (`ec2`), or creates the run's network (`local`).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct OpenRun {
    /// The run.
    pub run_id: Uuid,
    /// Nodes the run's steps ask for, in all.
    pub instances: u32,
}

impl Handler<OpenRun> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, Result<(), PoolError>>;

    fn handle(&mut self, msg: OpenRun, _: &mut Context<Self>) -> Self::Result {
        if let Some(cloud) = &self.cloud {
            let result = if msg.instances > cloud.max_instances_per_run {
                Err(PoolError::Refused(format!(
                    "the run needs {} instances; ec2.max_instances_per_run is {}",
                    msg.instances, cloud.max_instances_per_run
                )))
            } else {
                let idle = self.nodes.values().filter(|n| n.lease.is_none()).count() as u32;
                let in_use = self.nodes.len() as u32 + self.reserved.values().sum::<u32>();
                let extra = msg.instances.saturating_sub(idle);
                if in_use + extra > cloud.max_instances {
                    Err(PoolError::Refused(format!(
                        "the run needs {} instances; with {in_use} in use or reserved that exceeds ec2.max_instances ({}); nothing was launched",
                        msg.instances, cloud.max_instances
                    )))
                } else {
                    self.reserved.insert(msg.run_id, msg.instances);
                    Ok(())
                }
            };
            return Box::pin(actix::fut::ready(result));
        }
        if self.networks.contains_key(&msg.run_id) {
            return Box::pin(actix::fut::ready(Ok(())));
        }
        self.run_network(msg.run_id)
    }
}

/// Takes over a run left live by a previous broker process: its network
/// (`local`), or its instances (`ec2`: found by their `loads:run` tag,
/// reached again over SSH at their `loads:ssh` address, the run network made
/// sure of, the metrics forward opened again on its `loads:forward` port so
/// the relays' URL still works). An instance that cannot be taken back is
/// terminated; its step goes on without it.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct AdoptRun {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<AdoptRun> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, Result<(), PoolError>>;

    fn handle(&mut self, msg: AdoptRun, _: &mut Context<Self>) -> Self::Result {
        if let Some(cloud) = self.cloud.clone() {
            let job = Adoption {
                cloud,
                regions: self.regions.clone(),
                broker: self.broker_id.clone(),
                run_id: msg.run_id,
                network: Self::network_name(msg.run_id),
                labels: self.labels(msg.run_id),
                ingest: self.ingest_target(),
            };
            return Box::pin(adopt_nodes(job).into_actor(self).map(|res, act, _| {
                for node in res? {
                    act.nodes.insert(node.instance.id.clone(), node);
                }
                Ok(())
            }));
        }
        self.run_network(msg.run_id)
    }
}

impl Ec2PoolActor {
    /// Makes sure the run's network exists on the local engine (made, or found after a restart) and keeps it.
    /// With the ingest listener on loopback, a forward on the network's gateway
    /// (same port) carries the relays' deliveries to it.
    fn run_network(&mut self, run_id: Uuid) -> ResponseActFuture<Self, Result<(), PoolError>> {
        let engine = self.engine();
        let name = Self::network_name(run_id);
        let labels = self.labels(run_id);
        let (target, needs_forward) = (self.ingest_target(), self.ingest.ip().is_loopback());
        Box::pin(
            async move {
                let (_, gateway) = engine?.ensure_network(&name, labels).await?;
                let forward = match gateway.parse::<std::net::IpAddr>() {
                    Ok(ip) if needs_forward => {
                        let bind = SocketAddr::new(ip, target.port());
                        let (_, task) = forward::tcp(bind, target)
                            .await
                            .map_err(|e| PoolError::Unavailable(format!("cannot listen for the run's relays on {bind}: {e}")))?;
                        tracing::info!(%run_id, address = %bind, "metrics ingest reachable from the run network");
                        Some(task)
                    }
                    _ => None,
                };
                Ok((RunNetwork { name, gateway }, forward))
            }
            .into_actor(self)
            .map(move |res: Result<(RunNetwork, Option<Task>), PoolError>, act, _| {
                let (network, forward) = res?;
                act.networks.insert(run_id, network);
                if let Some(task) = forward {
                    act.forwards.insert(run_id, task);
                }
                Ok(())
            }),
        )
    }
}

/// Lends `count` nodes to a step.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<NodeGrant>, PoolError>")]
pub struct AcquireNodes {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: Uuid,
    /// The plan's name (the instances' `Name` tag).
    pub plan: String,
    /// The step's position in its plan, for node names.
    pub step_position: u32,
    /// How many nodes.
    pub count: u32,
    /// Fewer ready nodes than this and the step fails; more and it runs on those.
    pub min_nodes: u32,
    /// Machine type (used by cloud providers).
    pub instance_type: String,
    /// Region (used by cloud providers).
    pub region: String,
    /// How long the nodes are needed at most, from now (the dead-man's switch adds a grace period).
    pub needed_for: Duration,
    /// Carried on after a restart: the nodes the step had, adopted by `AdoptRun`, not new ones.
    pub adopt: bool,
}

impl Handler<AcquireNodes> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, Result<Vec<NodeGrant>, PoolError>>;

    fn handle(&mut self, msg: AcquireNodes, _: &mut Context<Self>) -> Self::Result {
        let Some(cloud) = self.cloud.clone() else {
            return Box::pin(actix::fut::ready(self.acquire_local(&msg)));
        };
        if msg.adopt {
            return Box::pin(actix::fut::ready(Ok(self.adopted_grants(msg.run_id, msg.step_id))));
        }
        let Some(config) = cloud.regions.get(&msg.region).cloned() else {
            return Box::pin(actix::fut::ready(Err(PoolError::Refused(format!(
                "region {} is not configured: set ec2.regions.{}.ami",
                msg.region, msg.region
            )))));
        };
        let Some(region) = self.region(&msg.region) else {
            return Box::pin(actix::fut::ready(Err(PoolError::Refused(format!("region {} has no EC2 client", msg.region)))));
        };
        if let Some(left) = self.reserved.get_mut(&msg.run_id) {
            *left = left.saturating_sub(msg.count);
        }
        // Idle pooled instances of the same type and region first.
        let reusable: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.lease.is_none() && n.instance.region == msg.region && n.instance.instance_type == msg.instance_type)
            .map(|(id, _)| id.clone())
            .take(msg.count as usize)
            .collect();
        let reused: Vec<CloudNode> = reusable.iter().filter_map(|id| self.nodes.remove(id)).collect();
        let new = msg.count - reused.len() as u32;
        let overrides: Vec<Option<SocketAddr>> = (0..new as usize)
            .map(|i| {
                (!cloud.address_override.is_empty())
                    .then(|| cloud.address_override[(self.next_override + i) % cloud.address_override.len()])
            })
            .collect();
        self.next_override += new as usize;
        let job = Provision {
            cloud,
            config,
            region,
            broker: self.broker_id.clone(),
            local: self.engine.clone().ok(),
            ingest: self.ingest_target(),
            network: Self::network_name(msg.run_id),
            labels: self.labels(msg.run_id),
            expires_at: Utc::now() + chrono::Duration::from_std(msg.needed_for).unwrap_or_default(),
            overrides,
            msg,
        };
        let (run_id, step_id) = (job.msg.run_id, job.msg.step_id);
        let position = job.msg.step_position;
        Box::pin(provision(job, reused).into_actor(self).map(move |res, act, ctx| {
            let ready = res?;
            let mut grants = Vec::new();
            let mut labels = Vec::new();
            for (i, (mut node, network, ingest_base, forward)) in ready.into_iter().enumerate() {
                // Peers reach a node at its private address (an address override changes
                // only where the broker's SSH goes).
                let address = node.instance.private_ip_address.clone().unwrap_or_else(|| node.ssh.addr().ip().to_string());
                grants.push(NodeGrant {
                    id: format!("s{position}n{i}"),
                    engine: node.engine.clone(),
                    public_address: public_ip(&node.instance, &address),
                    address,
                    network,
                    ingest_base,
                    instance_id: Some(node.instance.id.clone()),
                    images_from: act.engine.clone().ok(),
                    host_network: true,
                });
                let grant = grants.last().expect("just pushed");
                node.forward = Some(forward);
                node.lease = Some(Lease {
                    run_id,
                    step_id,
                    name: grant.id.clone(),
                    address: grant.address.clone(),
                    network: grant.network.clone(),
                    ingest_base: grant.ingest_base.clone(),
                });
                node.idle_since = None;
                labels.push((node.instance.region.clone(), node.instance.id.clone(), node_tags(grant, node.ssh.addr())));
                act.nodes.insert(node.instance.id.clone(), node);
            }
            // What a restarted broker needs to take the nodes back, on the instances themselves.
            let regions = act.regions.clone();
            ctx.spawn(
                async move {
                    for (region, id, tags) in labels {
                        if let Some(r) = regions.iter().find(|r| r.name() == region) {
                            if let Err(e) = r.tag(std::slice::from_ref(&id), &tags).await {
                                tracing::warn!(instance = %id, error = %e, "could not tag a node; it cannot be carried on after a restart");
                            }
                        }
                    }
                }
                .into_actor(act),
            );
            Ok(grants)
        }))
    }
}

impl Ec2PoolActor {
    /// The grants of the nodes adopted for a step, by name.
    fn adopted_grants(&self, run_id: Uuid, step_id: Uuid) -> Vec<NodeGrant> {
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
                    images_from: self.engine.clone().ok(),
                    host_network: true,
                })
            })
            .collect();
        grants.sort_by(|a, b| a.id.cmp(&b.id));
        grants
    }
}

impl Ec2PoolActor {
    fn acquire_local(&mut self, msg: &AcquireNodes) -> Result<Vec<NodeGrant>, PoolError> {
        let engine = self.engine()?;
        let network = self
            .networks
            .get(&msg.run_id)
            .cloned()
            .unwrap_or_else(|| RunNetwork { name: Self::network_name(msg.run_id), gateway: "127.0.0.1".into() });
        let ingest_base = format!("http://{}:{}", network.gateway, self.ingest.port());
        Ok((0..msg.count)
            .map(|i| NodeGrant {
                id: format!("s{}n{i}", msg.step_position),
                engine: engine.clone(),
                address: network.gateway.clone(),
                public_address: network.gateway.clone(),
                network: network.name.clone(),
                ingest_base: ingest_base.clone(),
                instance_id: None,
                images_from: None,
                host_network: false,
            })
            .collect())
    }
}

/// Takes back a step's nodes: cloud nodes are terminated, or kept idle when pooling.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReleaseNodes {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: Uuid,
}

impl CloudSettings {
    /// Forgets the host keys recorded for terminated instances.
    fn forget(&self, instances: &[String]) {
        if let Err(e) = crate::infra::ssh::forget_hosts(&self.ssh.known_hosts, instances) {
            tracing::warn!(error = %e, known_hosts = %self.ssh.known_hosts.display(), "could not remove terminated instances' host keys");
        }
    }
}

impl Handler<ReleaseNodes> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: ReleaseNodes, _: &mut Context<Self>) -> Self::Result {
        let ids: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.lease.as_ref().is_some_and(|l| l.run_id == msg.run_id && l.step_id == msg.step_id))
            .map(|(id, _)| id.clone())
            .collect();
        let nodes: Vec<CloudNode> = ids.iter().filter_map(|id| self.nodes.remove(id)).collect();
        let pool = !self.terminating.contains(&msg.run_id);
        Box::pin(self.release(nodes, pool).into_actor(self).map(|kept, act, _| {
            for node in kept {
                act.nodes.insert(node.instance.id.clone(), node);
            }
        }))
    }
}

impl Ec2PoolActor {
    /// Terminates nodes, or (pooling, unless `pool` is false) cleans and retags them as idle; answers those kept.
    fn release(&self, nodes: Vec<CloudNode>, pool: bool) -> impl std::future::Future<Output = Vec<CloudNode>> + 'static {
        let cloud = self.cloud.clone();
        let regions = self.regions.clone();
        let broker = self.broker_id.clone();
        async move {
            let Some(cloud) = cloud else { return Vec::new() };
            let mut kept = Vec::new();
            let mut doomed: Vec<CloudNode> = Vec::new();
            for mut node in nodes {
                node.forward = None;
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
                    Ok(()) => cloud::run_all(&node.ssh, vec![cloud::move_deadline(&cloud, expires)]).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
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
                let ids: Vec<String> =
                    doomed.iter().filter(|n| n.instance.region == region.name()).map(|n| n.instance.id.clone()).collect();
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
    }
}

/// The run's instances are to be terminated when released, not kept for reuse
/// (the loads v2 `DELETE /api/run/{id}?terminate=1`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TerminateRunInstances {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<TerminateRunInstances> for Ec2PoolActor {
    type Result = ();

    fn handle(&mut self, msg: TerminateRunInstances, _: &mut Context<Self>) {
        self.terminating.insert(msg.run_id);
    }
}

/// Removes everything labelled with the run (containers, then its network) and
/// releases its instances; answers how many containers and networks were left to remove.
#[derive(Debug, Message)]
#[rtype(result = "Result<(usize, usize), PoolError>")]
pub struct CloseRun {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<CloseRun> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, Result<(usize, usize), PoolError>>;

    fn handle(&mut self, msg: CloseRun, _: &mut Context<Self>) -> Self::Result {
        self.networks.remove(&msg.run_id);
        self.forwards.remove(&msg.run_id);
        self.reserved.remove(&msg.run_id);
        let run_id = msg.run_id;
        let ids: Vec<String> =
            self.nodes.iter().filter(|(_, n)| n.lease.as_ref().is_some_and(|l| l.run_id == run_id)).map(|(id, _)| id.clone()).collect();
        let leftover: Vec<CloudNode> = ids.iter().filter_map(|id| self.nodes.remove(id)).collect();
        let pool = !self.terminating.remove(&run_id);
        let release = self.release(leftover, pool);
        let engine = self.engine();
        let cloud = self.cloud.is_some();
        let (regions, broker) = (self.regions.clone(), self.broker_id.clone());
        Box::pin(
            async move {
                let kept = release.await;
                let run = run_id.to_string();
                if cloud {
                    // Instances of the run the pool lost track of (a launch that failed half-way).
                    for (region, instance) in all_instances(&regions, &broker).await? {
                        if instance.tags.get(tags::RUN) == Some(&run) && !kept.iter().any(|k| k.instance.id == instance.id) {
                            region.terminate(std::slice::from_ref(&instance.id)).await?;
                        }
                    }
                }
                let swept = match engine {
                    Ok(engine) => engine.sweep(&[(labels::BROKER, &broker), (labels::RUN, &run)]).await?,
                    Err(e) if cloud => {
                        tracing::debug!(error = %e, "no local engine to sweep");
                        (0, 0)
                    }
                    Err(e) => return Err(e),
                };
                Ok((kept, swept))
            }
            .into_actor(self)
            .map(|res: Result<(Vec<CloudNode>, (usize, usize)), PoolError>, act, _| {
                let (kept, swept) = res?;
                for node in kept {
                    act.nodes.insert(node.instance.id.clone(), node);
                }
                Ok(swept)
            }),
        )
    }
}

/// Removes resources of this broker that belong to none of `live` runs; answers the runs swept.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<String>, PoolError>")]
pub struct SweepOrphans {
    /// Runs whose resources must stay.
    pub live: Vec<Uuid>,
}

impl Handler<SweepOrphans> for Ec2PoolActor {
    type Result = ResponseFuture<Result<Vec<String>, PoolError>>;

    fn handle(&mut self, msg: SweepOrphans, _: &mut Context<Self>) -> Self::Result {
        let engine = self.engine();
        let broker = self.broker_id.clone();
        Box::pin(async move {
            let engine = engine?;
            let live: Vec<String> = msg.live.iter().map(Uuid::to_string).collect();
            let mut swept = Vec::new();
            for run in engine.labelled(&[(labels::BROKER, &broker)], labels::RUN).await? {
                if !live.contains(&run) {
                    engine.sweep(&[(labels::BROKER, &broker), (labels::RUN, &run)]).await?;
                    swept.push(run);
                }
            }
            Ok(swept)
        })
    }
}

async fn all_instances(regions: &[Region], broker: &str) -> Result<Vec<(Region, InstanceView)>, PoolError> {
    let mut out = Vec::new();
    for region in regions {
        for instance in region.instances(broker).await? {
            out.push((region.clone(), instance));
        }
    }
    Ok(out)
}

/// This broker's EC2 instances, in every configured region.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<InstanceView>, PoolError>")]
pub struct ListInstances;

impl Handler<ListInstances> for Ec2PoolActor {
    type Result = ResponseFuture<Result<Vec<InstanceView>, PoolError>>;

    fn handle(&mut self, _: ListInstances, _: &mut Context<Self>) -> Self::Result {
        let (regions, broker) = (self.regions.clone(), self.broker_id.clone());
        Box::pin(async move { Ok(all_instances(&regions, &broker).await?.into_iter().map(|(_, i)| i).collect()) })
    }
}

/// Terminates one of this broker's instances, or all of them; answers the ids terminated.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<String>, PoolError>")]
pub struct TerminateInstances {
    /// One instance; `None` for all.
    pub id: Option<String>,
}

impl Handler<TerminateInstances> for Ec2PoolActor {
    type Result = ResponseFuture<Result<Vec<String>, PoolError>>;

    fn handle(&mut self, msg: TerminateInstances, _: &mut Context<Self>) -> Self::Result {
        // The pool stops using what is terminated (a leased node's step then loses it).
        match &msg.id {
            Some(id) => drop(self.nodes.remove(id)),
            None => self.nodes.clear(),
        }
        let (regions, broker, cloud) = (self.regions.clone(), self.broker_id.clone(), self.cloud.clone());
        Box::pin(async move {
            let mine = all_instances(&regions, &broker).await?;
            let chosen: Vec<&(Region, InstanceView)> = mine.iter().filter(|(_, i)| msg.id.as_ref().is_none_or(|id| *id == i.id)).collect();
            if let (Some(id), true) = (&msg.id, chosen.is_empty()) {
                return Err(PoolError::NoInstance(id.clone()));
            }
            let mut terminated = Vec::new();
            for region in &regions {
                let ids: Vec<String> = chosen.iter().filter(|(r, _)| r.name() == region.name()).map(|(_, i)| i.id.clone()).collect();
                region.terminate(&ids).await?;
                terminated.extend(ids);
            }
            if let Some(cloud) = cloud {
                cloud.forget(&terminated);
            }
            Ok(terminated)
        })
    }
}

/// Terminates this broker's instances that belong to no live run or have expired; answers `(id, why)`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(String, String)>, PoolError>")]
pub struct Reap {
    /// The runs that are live.
    pub live: Vec<Uuid>,
}

impl Handler<Reap> for Ec2PoolActor {
    type Result = ResponseFuture<Result<Vec<(String, String)>, PoolError>>;

    fn handle(&mut self, msg: Reap, _: &mut Context<Self>) -> Self::Result {
        let (regions, broker, cloud) = (self.regions.clone(), self.broker_id.clone(), self.cloud.clone());
        Box::pin(async move {
            let live: Vec<String> = msg.live.iter().map(Uuid::to_string).collect();
            let now = chrono::Utc::now();
            let mut reaped = Vec::new();
            for (region, instance) in all_instances(&regions, &broker).await? {
                if let Some(why) = ec2::reap_reason(&instance, &live, now) {
                    region.terminate(std::slice::from_ref(&instance.id)).await?;
                    tracing::warn!(instance = %instance.id, region = %region.name(), reason = %why, "reaped an instance");
                    reaped.push((instance.id, why));
                }
            }
            if let Some(cloud) = cloud {
                cloud.forget(&reaped.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
            }
            Ok(reaped)
        })
    }
}
