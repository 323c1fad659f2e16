//! What EC2 says about the market and the account, for estimates: current spot
//! prices and instance limits. Anyone with a read token may ask for an
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
    limits: HashMap<String, (Instant, Option<u32>)>,
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

/// The account's instance limit (`max-instances`) in each of these regions; a region
/// not configured, or whose limit EC2 does not give, is left out (and the reason logged).
#[derive(Debug, Message)]
#[rtype(result = "BTreeMap<String, u32>")]
pub struct InstanceLimits {
    /// Region names.
    pub regions: Vec<String>,
}

impl Handler<InstanceLimits> for Ec2PoolActor {
    type Result = ResponseActFuture<Self, BTreeMap<String, u32>>;

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
                let limit = region.max_instances().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not read the account's instance limit");
                    None
                });
                got.push((name, limit));
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
