//! The local provider: every node is a set of containers on this machine's
//! Docker engine, on the run's own network. With the ingest listener on
//! loopback, a forward on that network's gateway carries the relays'
//! deliveries to it.

use std::collections::HashMap;
use std::net::SocketAddr;

use actix::{ActorFutureExt, ResponseActFuture};
use uuid::Uuid;

use super::{AcquireNodes, Ec2PoolActor, NodeGrant, PoolError, RunNetwork, Shared};
use crate::infra::{forward, Task};

/// The runs' networks on the local engine.
#[derive(Default)]
pub(super) struct LocalNodes {
    networks: HashMap<Uuid, RunNetwork>,
    /// The forward on each run network's gateway to the ingest listener.
    forwards: HashMap<Uuid, Task>,
}

impl LocalNodes {
    /// Makes sure the run's network exists (made, or found after a restart) and keeps it.
    pub(super) fn open_run(&self, shared: &Shared, run_id: Uuid) -> ResponseActFuture<Ec2PoolActor, Result<(), PoolError>> {
        if self.networks.contains_key(&run_id) {
            return Box::pin(actix::fut::ready(Ok(())));
        }
        let engine = shared.engine();
        let name = Ec2PoolActor::network_name(run_id);
        let labels = shared.labels(run_id);
        let (target, needs_forward) = (shared.ingest_target(), shared.ingest.ip().is_loopback());
        let made = async move {
            let (_, gateway) = engine?.ensure_network(&name, labels).await?;
            let forward = match gateway.parse::<std::net::IpAddr>() {
                Ok(ip) if needs_forward => {
                    let bind = SocketAddr::new(ip, target.port());
                    let (_, task) = forward::tcp(bind, target).await.map_err(|source| PoolError::NoIngestForward { bind, source })?;
                    tracing::info!(%run_id, address = %bind, "metrics ingest reachable from the run network");
                    Some(task)
                }
                _ => None,
            };
            Ok((RunNetwork { name, gateway }, forward))
        };
        Box::pin(actix::fut::wrap_future::<_, Ec2PoolActor>(made).map(
            move |made: Result<(RunNetwork, Option<Task>), PoolError>, act, _| {
                let (network, forward) = made?;
                if let Some(nodes) = act.local_mut() {
                    nodes.networks.insert(run_id, network);
                    if let Some(task) = forward {
                        nodes.forwards.insert(run_id, task);
                    }
                }
                Ok(())
            },
        ))
    }

    /// `count` nodes on the run's network, each an independent set of containers.
    pub(super) fn acquire(&self, shared: &Shared, msg: &AcquireNodes) -> Result<Vec<NodeGrant>, PoolError> {
        let engine = shared.engine()?;
        let network = self
            .networks
            .get(&msg.run_id)
            .cloned()
            .unwrap_or_else(|| RunNetwork { name: Ec2PoolActor::network_name(msg.run_id), gateway: "127.0.0.1".into() });
        let ingest_base = format!("http://{}:{}", network.gateway, shared.ingest.port());
        let regions = msg.regions.iter().flat_map(|(region, n)| std::iter::repeat_n(region.clone(), *n as usize));
        Ok((0..msg.count)
            .zip(regions.chain(std::iter::repeat(String::new())))
            .map(|(i, region)| NodeGrant {
                id: format!("s{}n{i}", msg.step_position),
                engine: engine.clone(),
                address: network.gateway.clone(),
                public_address: network.gateway.clone(),
                network: network.name.clone(),
                ingest_base: ingest_base.clone(),
                instance_id: None,
                region,
                images_from: None,
                host_network: false,
            })
            .collect())
    }

    /// Forgets the run's network and stops its forward (the label sweep removes the network).
    pub(super) fn close_run(&mut self, run_id: Uuid) {
        self.networks.remove(&run_id);
        self.forwards.remove(&run_id);
    }
}
