//! A run's cost as it runs: every `budget.check_seconds` the run's supervisor
//! asks the pool's meter what the run's instances have been held for
//! ([`RunUsage`]), prices it (`domain::usage`), records it on the run, and
//! checks it against the budget caps; once the run is closed, the last figures
//! are recorded as complete. A figure written late never replaces the final one.

use std::sync::Arc;

use actix::Addr;
use chrono::{Datelike, TimeZone, Utc};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::domain::usage::{self, CostLine, RunCost, Usage, UsageKey};
use crate::domain::Market;
use crate::pool::{Ec2PoolActor, RunUsage, SpotPrices};
use crate::settings::CostSettings;
use crate::store::runs;

/// What metering one run needs.
#[derive(Clone)]
pub struct RunMeter {
    run_id: Uuid,
    pool: Addr<Ec2PoolActor>,
    db: DatabaseConnection,
    cost: CostSettings,
    /// What was recorded before a broker restart, added to what is metered since.
    before: Vec<CostLine>,
    /// Set once the final figures are written.
    closed: Arc<tokio::sync::Mutex<bool>>,
}

impl RunMeter {
    /// Meters run `run_id`, adding to `before` (its cost recorded by an earlier broker process).
    pub fn new(run_id: Uuid, pool: Addr<Ec2PoolActor>, db: DatabaseConnection, cost: CostSettings, before: Option<RunCost>) -> Self {
        let before = before.map(|c| c.lines).unwrap_or_default();
        Self { run_id, pool, db, cost, before, closed: Default::default() }
    }

    /// Whether runs on this broker cost anything (EC2 nodes).
    pub fn enabled(&self) -> bool {
        self.cost.cloud_regions.is_some()
    }

    /// Records the cost so far; answers it and the budget cap it reached, if any.
    pub async fn check(&self) -> Option<(RunCost, Option<String>)> {
        let closed = self.closed.lock().await;
        if *closed {
            return None;
        }
        let cost = self.cost_now(false).await?;
        self.record(&cost).await;
        drop(closed);
        let month_before = match self.cost.budget.max_usd_per_month {
            Some(_) => runs::cost_since(&self.db, month_start(), self.run_id).await.unwrap_or_else(|e| {
                tracing::warn!(run_id = %self.run_id, error = %e, "could not read this month's recorded cost");
                0.0
            }),
            None => 0.0,
        };
        let reached = self.cost.budget.reached(&cost, month_before);
        Some((cost, reached))
    }

    /// Records the run's whole cost, once it is closed; answers it.
    pub async fn close(&self) -> Option<RunCost> {
        let mut closed = self.closed.lock().await;
        let cost = self.cost_now(true).await;
        if let Some(cost) = &cost {
            self.record(cost).await;
        }
        *closed = true;
        cost
    }

    async fn cost_now(&self, done: bool) -> Option<RunCost> {
        let metered = match self.pool.send(RunUsage { run_id: self.run_id, done }).await {
            Ok(usage) => usage,
            Err(e) => {
                tracing::warn!(run_id = %self.run_id, error = %e, "could not meter the run's instances");
                return None;
            }
        };
        let usage = with_before(&self.before, metered);
        if usage.is_empty() {
            return None;
        }
        let wanted: Vec<(String, String)> =
            usage.iter().filter(|u| u.key.market == Market::Spot).map(|u| (u.key.region.clone(), u.key.instance_type.clone())).collect();
        let spot = if wanted.is_empty() { Default::default() } else { self.pool.send(SpotPrices { wanted }).await.unwrap_or_default() };
        let mut cost = usage::price(&usage, &self.cost.prices, &spot, self.cost.clock.now());
        cost.complete = done;
        Some(cost)
    }

    async fn record(&self, cost: &RunCost) {
        if let Err(e) = runs::set_cost(&self.db, self.run_id, cost).await {
            tracing::warn!(run_id = %self.run_id, error = %e, "could not record the run's cost");
        }
    }
}

/// What was recorded before a restart plus what is metered since, by kind.
fn with_before(before: &[CostLine], metered: Vec<Usage>) -> Vec<Usage> {
    let mut all = metered;
    for line in before {
        let key = UsageKey { instance_type: line.instance_type.clone(), region: line.region.clone(), market: line.market };
        match all.iter_mut().find(|u| u.key == key) {
            // An instance taken back after the restart is the same instance as before it.
            Some(u) => {
                u.instances = u.instances.max(line.instances);
                u.instance_seconds += line.instance_seconds;
            }
            None => all.push(Usage { key, instances: line.instances, instance_seconds: line.instance_seconds }),
        }
    }
    all
}

/// The start of this calendar month (UTC).
pub fn month_start() -> chrono::DateTime<Utc> {
    let now = Utc::now();
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_recorded_before_a_restart_is_added_by_kind() {
        let key = UsageKey { instance_type: "t3.micro".into(), region: "us-east-1".into(), market: Market::OnDemand };
        let line = |market: Market, instances, seconds| CostLine {
            instance_type: "t3.micro".into(),
            region: "us-east-1".into(),
            market,
            instances,
            instance_seconds: seconds,
            usd_per_instance_hour: None,
            usd: None,
        };
        let now = vec![Usage { key: key.clone(), instances: 2, instance_seconds: 120.0 }];
        let all = with_before(&[line(Market::OnDemand, 2, 600.0), line(Market::Spot, 1, 60.0)], now);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].instances, all[0].instance_seconds), (2, 720.0));
        assert_eq!((all[1].key.market.as_str(), all[1].instances, all[1].instance_seconds), ("spot", 1, 60.0));
    }

    #[test]
    fn the_month_starts_on_the_first_at_midnight_utc() {
        use chrono::Timelike;
        let start = month_start();
        assert_eq!((start.day(), start.hour(), start.minute()), (1, 0, 0));
        assert!(start <= Utc::now());
    }
}
