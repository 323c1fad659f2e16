//! `Ec2PoolActor`: hands out nodes for steps and takes them back.
//!
//! With the `local` provider every node lives on this machine's Docker engine:
//! N nodes are N independent container sets, each with its own relay. The
//! pool also owns each run's network and the final label sweep, because it is
//! the one that knows which engines a run touched.

use std::collections::HashMap;

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use uuid::Uuid;

use crate::infra::docker::{labels, DockerError, Engine};
use crate::infra::ec2::{self, Ec2Error, InstanceView, Region};

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
}

/// Hands out nodes.
pub struct Ec2PoolActor {
    broker_id: String,
    engine: Result<Engine, String>,
    regions: Vec<Region>,
    networks: HashMap<Uuid, RunNetwork>,
    leases: HashMap<(Uuid, Uuid), usize>,
}

impl Ec2PoolActor {
    /// A pool of nodes on this machine's Docker engine.
    pub async fn local(broker_id: String) -> Self {
        let engine = Engine::local().await.map_err(|e| e.to_string());
        if let Err(e) = &engine {
            tracing::warn!(error = %e, "no Docker engine: runs will fail until one is reachable");
        }
        Self { broker_id, engine, regions: Vec::new(), networks: HashMap::new(), leases: HashMap::new() }
    }

    /// Also manages this broker's EC2 instances in `regions`.
    pub fn with_regions(mut self, regions: Vec<Region>) -> Self {
        self.regions = regions;
        self
    }

    fn engine(&self) -> Result<Engine, PoolError> {
        self.engine.clone().map_err(PoolError::Unavailable)
    }

    /// The name of a run's network.
    pub fn network_name(run_id: Uuid) -> String {
        format!("loads-{}", run_id.simple())
    }
}

impl Actor for Ec2PoolActor {
    type Context = Context<Self>;
}

/// Creates the run's network; answers it.
#[derive(Debug, Message)]
#[rtype(result = "Result<RunNetwork, PoolError>")]
pub struct OpenRun {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<OpenRun> for Ec2PoolActor {
    type Result = actix::ResponseActFuture<Self, Result<RunNetwork, PoolError>>;

    fn handle(&mut self, msg: OpenRun, _: &mut Context<Self>) -> Self::Result {
        use actix::{ActorFutureExt, WrapFuture};
        if let Some(existing) = self.networks.get(&msg.run_id) {
            let existing = existing.clone();
            return Box::pin(actix::fut::ready(Ok(existing)));
        }
        let engine = self.engine();
        let name = Self::network_name(msg.run_id);
        let labels = HashMap::from([
            (labels::BROKER.to_string(), self.broker_id.clone()),
            (labels::RUN.to_string(), msg.run_id.to_string()),
        ]);
        let run_id = msg.run_id;
        Box::pin(
            async move {
                let (_, gateway) = engine?.create_network(&name, labels).await?;
                Ok(RunNetwork { name, gateway })
            }
            .into_actor(self)
            .map(move |res: Result<RunNetwork, PoolError>, act, _| {
                if let Ok(network) = &res {
                    act.networks.insert(run_id, network.clone());
                }
                res
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
    /// The step's position in its plan, for node names.
    pub step_position: u32,
    /// How many nodes.
    pub count: u32,
    /// Machine type (used by cloud providers).
    pub instance_type: String,
    /// Region (used by cloud providers).
    pub region: String,
}

impl Handler<AcquireNodes> for Ec2PoolActor {
    type Result = Result<Vec<NodeGrant>, PoolError>;

    fn handle(&mut self, msg: AcquireNodes, _: &mut Context<Self>) -> Self::Result {
        let engine = self.engine()?;
        let address = self.networks.get(&msg.run_id).map(|n| n.gateway.clone()).unwrap_or_else(|| "127.0.0.1".into());
        self.leases.insert((msg.run_id, msg.step_id), msg.count as usize);
        Ok((0..msg.count)
            .map(|i| NodeGrant { id: format!("s{}n{i}", msg.step_position), engine: engine.clone(), address: address.clone() })
            .collect())
    }
}

/// Takes back a step's nodes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReleaseNodes {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: Uuid,
}

impl Handler<ReleaseNodes> for Ec2PoolActor {
    type Result = ();

    fn handle(&mut self, msg: ReleaseNodes, _: &mut Context<Self>) {
        self.leases.remove(&(msg.run_id, msg.step_id));
    }
}

/// Removes everything labelled with the run (containers, then its network);
/// answers how many containers and networks were left to remove.
#[derive(Debug, Message)]
#[rtype(result = "Result<(usize, usize), PoolError>")]
pub struct CloseRun {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<CloseRun> for Ec2PoolActor {
    type Result = ResponseFuture<Result<(usize, usize), PoolError>>;

    fn handle(&mut self, msg: CloseRun, _: &mut Context<Self>) -> Self::Result {
        self.networks.remove(&msg.run_id);
        self.leases.retain(|(run, _), _| *run != msg.run_id);
        let engine = self.engine();
        let broker = self.broker_id.clone();
        Box::pin(async move {
            let run = msg.run_id.to_string();
            Ok(engine?.sweep(&[(labels::BROKER, &broker), (labels::RUN, &run)]).await?)
        })
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
