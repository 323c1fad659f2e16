//! What EC2 says about the market and the account, for estimates: current spot
//! prices, the instance limit and the vCPU quotas (Service Quotas). Anyone with a read token may ask for an
//! estimate, so each answer (a failure included) is kept for [`FRESH_FOR`]:
//! however many estimates are asked for, EC2 gets at most one request per
//! region (and type) in that time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use actix::{ActorFutureExt, Context, Handler, Message, ResponseActFuture, WrapFuture};

use super::Ec2PoolActor;
use crate::domain::cost;

/// How long an answer of EC2 is used before it is asked again.
pub const FRESH_FOR: Duration = Duration::from_secs(300);

/// Answers kept, with when they were got; `None` = EC2 gave none (or failed).
#[derive(Default)]
pub(super) struct Facts {
    spot: HashMap<(String, String), (Instant, Option<f64>)>,
    limits: HashMap<String, (Instant, Option<cost::AccountLimits>)>,
}

/// A kept answer still fresh.
fn fresh<K: std::hash::Hash + Eq, V: Copy>(kept: &HashMap<K, (Instant, Option<V>)>, key: &K) -> Option<Option<V>> {
    kept.get(key).filter(|(at, _)| at.elapsed() < FRESH_FOR).map(|(_, v)| *v)
}

/// The current spot prices of these (region, instance type) pairs; a pair EC2 gives no price
/// for, or whose region is not configured, is left out (and the reason logged).
#[derive(Debug, Message)]
#[rtype(result = "cost::SpotPrices")]
pub struct SpotPrices {
    /// (region, instance type) pairs.
    pub wanted: Vec<(String, String)>,
}

impl Handler<SpotPrices> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, cost::SpotPrices>;

    fn handle(&mut self, msg: SpotPrices, _: &mut Context<Self>) -> Self::Result {
        let mut known = cost::SpotPrices::new();
        let mut asks = Vec::new();
        for key in msg.wanted {
            match fresh(&self.facts.spot, &key) {
                Some(price) => known.extend(price.map(|p| (key, p))),
                None => asks.extend(self.shared.region(&key.0).map(|region| (region, key))),
            }
        }
        let fetch = async move {
            let mut got = Vec::new();
            for (region, key) in asks {
                let price = region.spot_price(&key.1).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not read spot prices");
                    None
                });
                got.push((key, price));
            }
            got
        };
        Box::pin(fetch.into_actor(self).map(move |got, act, _| {
            for (key, price) in got {
                act.facts.spot.insert(key.clone(), (Instant::now(), price));
                known.extend(price.map(|p| (key, p)));
            }
            known
        }))
    }
}

/// Service Quotas' code of the running on-demand standard (A, C, D, H, I, M, R, T, Z) instances' vCPUs.
pub const ON_DEMAND_STANDARD_VCPUS: &str = "L-1216C47A";
/// Service Quotas' code of all standard spot instance requests' vCPUs.
pub const SPOT_STANDARD_VCPUS: &str = "L-34B43A08";

/// The account's limits in each of these regions: its instance limit (`max-instances`) and its
/// standard vCPU quotas (on demand, spot). A region not configured is left out; a limit EC2
/// does not give is `None` (the reason logged).
#[derive(Debug, Message)]
#[rtype(result = "BTreeMap<String, cost::AccountLimits>")]
pub struct InstanceLimits {
    /// Region names.
    pub regions: Vec<String>,
}

impl Handler<InstanceLimits> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, BTreeMap<String, cost::AccountLimits>>;

    fn handle(&mut self, msg: InstanceLimits, _: &mut Context<Self>) -> Self::Result {
        let mut known = BTreeMap::new();
        let mut asks = Vec::new();
        for name in msg.regions {
            match fresh(&self.facts.limits, &name) {
                Some(limit) => known.extend(limit.map(|l| (name, l))),
                None => asks.extend(self.shared.region(&name).map(|region| (region, name))),
            }
        }
        let fetch = async move {
            let mut got = Vec::new();
            for (region, name) in asks {
                let read = |what: &'static str| {
                    move |e: crate::infra::ec2::Ec2Error| {
                        tracing::warn!(error = %e, "could not read the account's {what}");
                        None
                    }
                };
                let limits = cost::AccountLimits {
                    max_instances: region.max_instances().await.unwrap_or_else(read("instance limit")),
                    on_demand_vcpus: region.ec2_quota(ON_DEMAND_STANDARD_VCPUS).await.unwrap_or_else(read("on-demand vCPU quota")),
                    spot_vcpus: region.ec2_quota(SPOT_STANDARD_VCPUS).await.unwrap_or_else(read("spot vCPU quota")),
                };
                got.push((name, Some(limits)));
            }
            got
        };
        Box::pin(fetch.into_actor(self).map(move |got, act, _| {
            for (name, limit) in got {
                act.facts.limits.insert(name.clone(), (Instant::now(), limit));
                known.extend(limit.map(|l| (name, l)));
            }
            known
        }))
    }
}
