//! `Ec2PoolActor`: hands out nodes for steps and takes them back.
//!
//! Two providers behind one interface ([`Provider`]): with `local`
//! ([`local`]), every node lives on this machine's Docker engine: N nodes are
//! N independent container sets, each with its own relay, on one run network.
//! With `ec2` ([`cloud`]), every node is an EC2 instance: launched (or taken
//! from the idle pool), reached over SSH with its host key checked, its Docker
//! engine driven through that SSH connection, a run network made on it, and a
//! reverse forward that carries its relay's metrics to the broker. Caps are
//! checked when a run opens, before anything is launched. Released instances
//! are terminated, or kept idle for the next run of the same type and region
//! when pooling is on, and terminated once idle too long.
//!
//! Whatever the provider, the pool also owns the final label sweep and the EC2
//! reaper ([`reaper`]), because it is the one that knows which engines and
//! instances a run touched; the cost meter ([`meter`]), because it hands
//! instances out and takes them back; and what EC2 says about prices and
//! limits for estimates ([`account`]), because it holds the EC2 clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseActFuture, WrapFuture};
use uuid::Uuid;

mod account;
mod cloud;
mod local;
mod meter;
mod reaper;

pub use account::{InstanceLimits, SpotPrices};
pub use meter::RunUsage;
pub use reaper::{ListInstances, Reap, SweepOrphans, TerminateInstances};

use crate::infra::docker::{labels, DockerError, Engine};
use crate::infra::ec2::{Ec2Error, Region};
use crate::settings::CloudSettings;

/// Why the pool could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// This machine's Docker engine could not be reached when the broker started.
    #[error("the node provider is unavailable: {0}")]
    NoEngine(#[source] Arc<DockerError>),
    /// The run's relays cannot be given a way to the ingest listener.
    #[error("cannot listen for the run's relays on {bind}: {source}")]
    NoIngestForward {
        /// The address asked for on the run network's gateway.
        bind: SocketAddr,
        /// Why it could not be listened on.
        #[source]
        source: std::io::Error,
    },
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
    /// Its region: its instance's on EC2, its share of the step's regions on the local provider.
    pub region: String,
    /// An engine to copy images from when the node lacks them (the broker's own).
    pub images_from: Option<Engine>,
    /// The step's containers use the node's own network: a cloud node is one machine.
    pub host_network: bool,
}

/// What every provider uses: the broker's id, this machine's engine (local
/// nodes, the images copied to cloud nodes, the final label sweep), the
/// ingest listener relays deliver to, the EC2 regions the reaper watches, and
/// the meter of what runs hold.
struct Shared {
    broker_id: String,
    engine: Result<Engine, Arc<DockerError>>,
    ingest: SocketAddr,
    regions: Vec<Region>,
    meter: meter::Meter,
}

impl Shared {
    fn engine(&self) -> Result<Engine, PoolError> {
        self.engine.clone().map_err(PoolError::NoEngine)
    }

    /// Where forwards to the ingest listener connect to.
    fn ingest_target(&self) -> SocketAddr {
        if self.ingest.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], self.ingest.port()))
        } else {
            self.ingest
        }
    }

    fn region(&self, name: &str) -> Option<Region> {
        self.regions.iter().find(|r| r.name() == name).cloned()
    }

    fn labels(&self, run_id: Uuid) -> HashMap<String, String> {
        HashMap::from([(labels::BROKER.to_string(), self.broker_id.clone()), (labels::RUN.to_string(), run_id.to_string())])
    }
}

/// Where nodes come from. Each provider answers the pool's messages for its
/// nodes; what it learns asynchronously it keeps through [`Ec2PoolActor::local_mut`]
/// and [`Ec2PoolActor::cloud_mut`].
enum Provider {
    /// This machine's Docker engine.
    Local(local::LocalNodes),
    /// EC2 instances.
    Cloud(cloud::CloudNodes),
}

/// Hands out nodes.
pub struct Ec2PoolActor {
    shared: Shared,
    provider: Provider,
    facts: account::Facts,
}

impl Ec2PoolActor {
    /// A pool of nodes on this machine's Docker engine.
    pub async fn local(broker_id: String) -> Self {
        let engine = Engine::local().await.map_err(Arc::new);
        if let Err(e) = &engine {
            tracing::warn!(error = %e, "no Docker engine: runs will fail until one is reachable");
        }
        let shared = Shared {
            broker_id,
            engine,
            ingest: SocketAddr::from(([127, 0, 0, 1], 0)),
            regions: Vec::new(),
            meter: meter::Meter::default(),
        };
        Self { shared, provider: Provider::Local(local::LocalNodes::default()), facts: account::Facts::default() }
    }

    /// Also manages this broker's EC2 instances in `regions`.
    pub fn with_regions(mut self, regions: Vec<Region>) -> Self {
        self.shared.regions = regions;
        self
    }

    /// Relays deliver to the broker's ingest listener at `address`.
    pub fn with_ingest(mut self, address: SocketAddr) -> Self {
        self.shared.ingest = address;
        self
    }

    /// The cost meter reads `clock`.
    pub fn with_meter_clock(mut self, clock: crate::domain::usage::Clock) -> Self {
        self.shared.meter = meter::Meter::new(clock);
        self
    }

    /// Nodes are EC2 instances (`pool.provider = "ec2"`).
    pub fn with_cloud(mut self, cloud: CloudSettings) -> Self {
        self.provider = Provider::Cloud(cloud::CloudNodes::new(cloud));
        self
    }

    /// The name of a run's network.
    pub fn network_name(run_id: Uuid) -> String {
        format!("loads-{}", run_id.simple())
    }

    fn local_mut(&mut self) -> Option<&mut local::LocalNodes> {
        match &mut self.provider {
            Provider::Local(nodes) => Some(nodes),
            Provider::Cloud(_) => None,
        }
    }

    fn cloud_mut(&mut self) -> Option<&mut cloud::CloudNodes> {
        match &mut self.provider {
            Provider::Cloud(nodes) => Some(nodes),
            Provider::Local(_) => None,
        }
    }
}

impl Actor for Ec2PoolActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Provider::Cloud(nodes) = &self.provider {
            if nodes.pooling() {
                ctx.run_interval(Duration::from_secs(1), |act, ctx| {
                    if let Provider::Cloud(nodes) = &mut act.provider {
                        nodes.expire_idle(&act.shared, ctx);
                    }
                });
            }
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
        match &mut self.provider {
            Provider::Local(nodes) => nodes.open_run(&self.shared, msg.run_id),
            Provider::Cloud(nodes) => Box::pin(actix::fut::ready(nodes.reserve(&msg))),
        }
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
        match &mut self.provider {
            Provider::Local(nodes) => nodes.open_run(&self.shared, msg.run_id),
            Provider::Cloud(nodes) => nodes.adopt(&self.shared, msg.run_id),
        }
    }
}

/// Lends `count` nodes to a step, `regions` saying how many in each region.
#[derive(Clone, Debug, Message)]
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
    /// How many of the nodes each region has (launched there by cloud providers), in order.
    pub regions: Vec<(String, u32)>,
    /// How the instances are bought (used by cloud providers).
    pub market: crate::domain::Market,
    /// How long the nodes are needed at most, from now (the dead-man's switch adds a grace period).
    pub needed_for: Duration,
    /// Carried on after a restart: the nodes the step had, adopted by `AdoptRun`, not new ones.
    pub adopt: bool,
    /// Told when one of the step's spot nodes gets an interruption notice.
    pub interruptions: Option<actix::Recipient<NodeInterrupted>>,
}

/// A spot node got an interruption notice (its instance metadata `spot/instance-action`):
/// EC2 will stop or terminate it about two minutes after.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct NodeInterrupted {
    /// The node's name in the run.
    pub node: String,
    /// Its instance.
    pub instance: String,
    /// What EC2 will do: `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// When, as the notice says (RFC 3339).
    pub time: String,
    /// When the broker read the notice.
    pub noticed_at: chrono::DateTime<chrono::Utc>,
}

impl Handler<AcquireNodes> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, Result<Vec<NodeGrant>, PoolError>>;

    fn handle(&mut self, msg: AcquireNodes, _: &mut Context<Self>) -> Self::Result {
        match &mut self.provider {
            Provider::Local(nodes) => Box::pin(actix::fut::ready(nodes.acquire(&self.shared, &msg))),
            Provider::Cloud(nodes) => nodes.acquire(&self.shared, msg),
        }
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

impl Handler<ReleaseNodes> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: ReleaseNodes, _: &mut Context<Self>) -> Self::Result {
        match &mut self.provider {
            // Local nodes are the run's containers: they go when the run closes.
            Provider::Local(_) => Box::pin(actix::fut::ready(())),
            Provider::Cloud(nodes) => nodes.release_step(&self.shared, msg.run_id, msg.step_id),
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
        if let Some(nodes) = self.cloud_mut() {
            nodes.terminate_when_released(msg.run_id);
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
        let run_id = msg.run_id;
        let (closing, cloud) = match &mut self.provider {
            Provider::Local(nodes) => {
                nodes.close_run(run_id);
                (Box::pin(actix::fut::ready(Ok(()))) as ResponseActFuture<Self, Result<(), PoolError>>, false)
            }
            Provider::Cloud(nodes) => (nodes.close_run(&self.shared, run_id), true),
        };
        let (engine, broker) = (self.shared.engine(), self.shared.broker_id.clone());
        let sweep = async move {
            let run = run_id.to_string();
            match engine {
                Ok(engine) => Ok(engine.sweep(&[(labels::BROKER, &broker), (labels::RUN, &run)]).await?),
                Err(e) if cloud => {
                    tracing::debug!(error = %e, "no local engine to sweep");
                    Ok((0, 0))
                }
                Err(e) => Err(e),
            }
        };
        Box::pin(closing.then(move |closed, act, _| {
            async move {
                closed?;
                sweep.await
            }
            .into_actor(act)
        }))
    }
}
