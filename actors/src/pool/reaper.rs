//! The pool's cleaning: the label sweep of runs no longer live on this
//! machine's engine, and the EC2 reaper, which terminates this broker's
//! instances that belong to no live run or have outlived their deadline,
//! whatever the provider (instances outlive a broker that changed provider).

use actix::{Context, Handler, Message, ResponseFuture};
use uuid::Uuid;

use super::{Ec2PoolActor, PoolError};
use crate::infra::docker::labels;
use crate::infra::ec2::{self, InstanceView, Region};

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
        let engine = self.shared.engine();
        let broker = self.shared.broker_id.clone();
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

/// Every instance of `broker` in `regions`, with its region.
pub(super) async fn all_instances(regions: &[Region], broker: &str) -> Result<Vec<(Region, InstanceView)>, PoolError> {
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
        let (regions, broker) = (self.shared.regions.clone(), self.shared.broker_id.clone());
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
        let cloud = self.cloud_mut().map(|nodes| {
            nodes.drop_nodes(msg.id.as_deref());
            nodes.settings()
        });
        let (regions, broker) = (self.shared.regions.clone(), self.shared.broker_id.clone());
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
        let cloud = self.cloud_mut().map(|nodes| nodes.settings());
        let (regions, broker) = (self.shared.regions.clone(), self.shared.broker_id.clone());
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
