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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseActFuture, ResponseFuture, WrapFuture};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use uuid::Uuid;

use crate::infra::docker::{labels, DockerError, Engine};
use crate::infra::ec2::{self, tags, Backoff, Ec2Error, InstanceView, NodeBoot, Region, RegionConfig};
use crate::infra::ssh::{SshError, SshNode, SshSettings, Task};

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
    /// The node's address (`HOST_IP`, `PRIVATE_IP`).
    pub address: String,
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
}

impl CloudSettings {
    fn sudo(&self) -> &'static str {
        if self.ssh.user == "root" {
            ""
        } else {
            "sudo -n "
        }
    }
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
    ingest_port: u16,
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
            ingest_port: 0,
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

    /// Relays deliver to the broker's ingest listener on `port`.
    pub fn with_ingest_port(mut self, port: u16) -> Self {
        self.ingest_port = port;
        self
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
                ctx.spawn(
                    async move {
                        if let Some(region) = region {
                            match region.terminate(std::slice::from_ref(&node.instance.id)).await {
                                Ok(()) => tracing::info!(instance = %node.instance.id, "terminated an instance idle too long"),
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
        let engine = self.engine();
        let name = Self::network_name(msg.run_id);
        let labels = self.labels(msg.run_id);
        let run_id = msg.run_id;
        Box::pin(
            async move {
                let (_, gateway) = engine?.create_network(&name, labels).await?;
                Ok(RunNetwork { name, gateway })
            }
            .into_actor(self)
            .map(move |res: Result<RunNetwork, PoolError>, act, _| {
                let network = res?;
                act.networks.insert(run_id, network);
                Ok(())
            }),
        )
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
                ingest: SocketAddr::from(([127, 0, 0, 1], self.ingest_port)),
            };
            return Box::pin(adopt_nodes(job).into_actor(self).map(|res, act, _| {
                for node in res? {
                    act.nodes.insert(node.instance.id.clone(), node);
                }
                Ok(())
            }));
        }
        let engine = self.engine();
        let name = Self::network_name(msg.run_id);
        let labels = self.labels(msg.run_id);
        let run_id = msg.run_id;
        Box::pin(
            async move {
                let (_, gateway) = engine?.ensure_network(&name, labels).await?;
                Ok(RunNetwork { name, gateway })
            }
            .into_actor(self)
            .map(move |res: Result<RunNetwork, PoolError>, act, _| {
                act.networks.insert(run_id, res?);
                Ok(())
            }),
        )
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

async fn adopt_node(job: &Adoption, instance: InstanceView) -> Result<CloudNode, String> {
    let tag = |key: &str| instance.tags.get(key).cloned().ok_or_else(|| format!("no {key} tag"));
    let name = tag(tags::NODE)?;
    let step_id: Uuid = tag(tags::STEP)?.parse().map_err(|e| format!("{}: {e}", tags::STEP))?;
    let addr: SocketAddr = tag(tags::SSH)?.parse().map_err(|e| format!("{}: {e}", tags::SSH))?;
    let port: u16 = tag(tags::FORWARD)?.parse().map_err(|e| format!("{}: {e}", tags::FORWARD))?;
    let ssh = SshNode::connect(addr, &job.cloud.ssh).await.map_err(|e| e.to_string())?;
    let (engine, bridge) = ssh.docker().await.map_err(|e| e.to_string())?;
    let (network, gateway) = engine.ensure_network(&job.network, job.labels.clone()).await.map_err(|e| e.to_string())?;
    let (port, forward) = ssh.forward_to_broker(&gateway, port, job.ingest).await.map_err(|e| e.to_string())?;
    let address = match (job.cloud.address_override.is_empty(), &instance.private_ip_address) {
        (true, Some(private)) => private.clone(),
        _ => addr.ip().to_string(),
    };
    let lease = Lease { run_id: job.run_id, step_id, name, address, network, ingest_base: format!("http://{gateway}:{port}") };
    Ok(CloudNode { instance, ssh, engine, _bridge: bridge, forward: Some(forward), lease: Some(lease), idle_since: None })
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
            .map(|i| (!cloud.address_override.is_empty()).then(|| cloud.address_override[(self.next_override + i) % cloud.address_override.len()]))
            .collect();
        self.next_override += new as usize;
        let job = Provision {
            cloud,
            config,
            region,
            broker: self.broker_id.clone(),
            local: self.engine.clone().ok(),
            ingest: SocketAddr::from(([127, 0, 0, 1], self.ingest_port)),
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
                // With an address override (a test double) the node's address is the override's.
                let address = match (act.cloud.as_ref().is_some_and(|c| !c.address_override.is_empty()), &node.instance.private_ip_address) {
                    (false, Some(private)) => private.clone(),
                    _ => node.ssh.addr().ip().to_string(),
                };
                grants.push(NodeGrant {
                    id: format!("s{position}n{i}"),
                    engine: node.engine.clone(),
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

/// The tags that let a restarted broker take a node back: its name in the run, its SSH address, its metrics forward's port.
fn node_tags(grant: &NodeGrant, ssh: SocketAddr) -> Vec<(String, String)> {
    let port = grant.ingest_base.rsplit(':').next().unwrap_or_default().to_string();
    vec![(tags::NODE.to_string(), grant.id.clone()), (tags::SSH.to_string(), ssh.to_string()), (tags::FORWARD.to_string(), port)]
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
        let network = self.networks.get(&msg.run_id).cloned().unwrap_or_else(|| RunNetwork { name: Self::network_name(msg.run_id), gateway: "127.0.0.1".into() });
        let ingest_base = format!("http://{}:{}", network.gateway, self.ingest_port);
        Ok((0..msg.count)
            .map(|i| NodeGrant {
                id: format!("s{}n{i}", msg.step_position),
                engine: engine.clone(),
                address: network.gateway.clone(),
                network: network.name.clone(),
                ingest_base: ingest_base.clone(),
                instance_id: None,
                images_from: None,
                host_network: false,
            })
            .collect())
    }
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
    msg: AcquireNodes,
}

/// A node ready for a step: the node, its run network, its relay's ingest base URL, the forward behind it.
type Ready = (CloudNode, String, String, Task);

/// Launches what the idle pool could not give, waits for it, connects and
/// prepares every node; keeps those that got ready when they are at least
/// `min_nodes`, and terminates the rest.
async fn provision(job: Provision, reused: Vec<CloudNode>) -> Result<Vec<Ready>, PoolError> {
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
        let mut tag_list = vec![
            ("Name".to_string(), format!("loads-{}-{}", job.broker, msg.plan)),
            ("Project".to_string(), "loads".to_string()),
            (tags::BROKER.to_string(), job.broker.clone()),
            ("Owner".to_string(), cloud.owner.clone()),
        ];
        tag_list.extend(run_tags.iter().cloned());
        // All of them first; if EC2 keeps lacking the capacity, whatever it has down to `min_nodes`.
        let min_new = msg.min_nodes.saturating_sub(reused.len() as u32).max(1);
        let mut launch = ec2::Launch { instance_type: msg.instance_type.clone(), count: new, min_count: new, tags: tag_list, user_data };
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
        return Err(PoolError::Capacity { wanted: msg.count, min: msg.min_nodes, ready: ready.len() as u32, reasons: failures.join("; ") });
    }
    if let Err(e) = job.region.terminate(&lost).await {
        tracing::warn!(error = %e, "could not terminate nodes that did not become ready; the reaper will");
    }
    Ok(ready)
}

/// Moves a node's dead-man's switch deadline and applies the node tuning.
async fn rearm(job: &Provision, ssh: &SshNode, deadline: DateTime<Utc>) -> Result<(), SshError> {
    let sudo = job.cloud.sudo();
    let dir = &job.cloud.node_dir;
    let mut commands = vec![format!("{sudo}mkdir -p {dir} && echo {} | {sudo}tee {dir}/expires-at >/dev/null", deadline.timestamp())];
    commands.extend(job.cloud.node_tuning.iter().map(|c| format!("{sudo}{c}")));
    for command in commands {
        let (status, out) = ssh.exec(&command).await?;
        if status != 0 {
            return Err(SshError::Session { addr: ssh.addr(), operation: "prepare the node", message: format!("`{command}` exited {status}: {}", out.trim()) });
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
    let ssh = SshNode::connect(addr, &cloud.ssh).await.map_err(|e| e.to_string())?;
    rearm(job, &ssh, deadline).await.map_err(|e| e.to_string())?;
    ssh.wait_for_docker(cloud.launch_timeout).await.map_err(|e| e.to_string())?;
    let (engine, bridge) = ssh.docker().await.map_err(|e| e.to_string())?;
    Ok(CloudNode { instance, ssh, engine, _bridge: bridge, forward: None, lease: None, idle_since: None })
}

/// Readies a connected node for the run: the relay image, the run network, the metrics forward.
async fn attach(job: &Provision, node: CloudNode) -> Result<Ready, (String, String)> {
    let fail = |e: String| (node.instance.id.clone(), e);
    let relay = &job.cloud.relay_image;
    if !node.engine.has_image(relay).await.map_err(|e| fail(e.to_string()))? {
        let local = job.local.as_ref().ok_or_else(|| fail(format!("{relay} is missing on the node and there is no local engine to copy it from")))?;
        node.engine.copy_image_from(local, relay).await.map_err(|e| fail(e.to_string()))?;
    }
    let (network, gateway) = node.engine.ensure_network(&job.network, job.labels.clone()).await.map_err(|e| fail(e.to_string()))?;
    let (port, forward) = node.ssh.forward_to_broker(&gateway, 0, job.ingest).await.map_err(|e| fail(e.to_string()))?;
    let ingest_base = format!("http://{gateway}:{port}");
    Ok((node, network, ingest_base, forward))
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
        Box::pin(self.release(nodes).into_actor(self).map(|kept, act, _| {
            for node in kept {
                act.nodes.insert(node.instance.id.clone(), node);
            }
        }))
    }
}

impl Ec2PoolActor {
    /// Terminates nodes, or (pooling) cleans and retags them as idle; answers those kept.
    fn release(&self, nodes: Vec<CloudNode>) -> impl std::future::Future<Output = Vec<CloudNode>> + 'static {
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
                if !cloud.pooling {
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
                    Ok(()) if !ids.is_empty() => tracing::info!(instances = ?ids, "terminated released instances"),
                    Ok(()) => {}
                    Err(e) => tracing::warn!(error = %e, "could not terminate released instances; the reaper will"),
                }
            }
            kept
        }
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
        self.reserved.remove(&msg.run_id);
        let run_id = msg.run_id;
        let ids: Vec<String> =
            self.nodes.iter().filter(|(_, n)| n.lease.as_ref().is_some_and(|l| l.run_id == run_id)).map(|(id, _)| id.clone()).collect();
        let leftover: Vec<CloudNode> = ids.iter().filter_map(|id| self.nodes.remove(id)).collect();
        let release = self.release(leftover);
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
        let (regions, broker) = (self.regions.clone(), self.broker_id.clone());
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
        let (regions, broker) = (self.regions.clone(), self.broker_id.clone());
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
            Ok(reaped)
        })
    }
}
