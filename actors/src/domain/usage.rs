//! What a run has cost so far: the seconds its instances were held, per
//! instance type, region and market, and their price.
//!
//! The pool meters every instance from the moment a step asks for it (so the
//! launch, the boot and the preparation are paid for, as EC2 bills them) until
//! it is terminated or handed back to the idle pool; an instance that never
//! became ready is metered until it was given up. Each instance is billed at
//! least [`MIN_BILLED_SECONDS`], as EC2 bills Linux instances. Prices are the
//! ones estimates use (`cost::PriceTable`, spot at the current spot price),
//! so a run's recorded cost and its estimate are in the same terms.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::cost::{tidy, Budget, PriceTable, SpotPrices, MIN_BILLED_SECONDS};
use super::spec::Market;

/// Where the meter reads the time: the system clock, or a test's own.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(Utc::now)
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// What instances are metered by: type, region and market (`on_demand` or `spot`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    /// The instance type.
    pub instance_type: String,
    /// The region.
    pub region: String,
    /// How the instances were bought: on demand or spot.
    pub market: Market,
}

/// The metered instances of one kind: how many, and their billed seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    /// Their kind.
    pub key: UsageKey,
    /// Instances metered.
    pub instances: u32,
    /// Seconds billed, each instance at least [`MIN_BILLED_SECONDS`].
    pub instance_seconds: f64,
}

impl Usage {
    /// Adds one instance held for `seconds`.
    pub fn add(&mut self, seconds: f64) {
        self.instances += 1;
        self.instance_seconds += seconds.max(MIN_BILLED_SECONDS as f64);
    }
}

/// One line of a run's recorded cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostLine {
    /// Instance type.
    pub instance_type: String,
    /// Region.
    pub region: String,
    /// How they were bought: `on_demand` or `spot`.
    pub market: Market,
    /// Instances held.
    pub instances: u32,
    /// Seconds billed in all.
    pub instance_seconds: f64,
    /// The price of one instance-hour; `null` when there is none.
    pub usd_per_instance_hour: Option<f64>,
    /// What they cost; `null` when unpriced.
    pub usd: Option<f64>,
}

/// What a run's instances have cost, so far or in all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunCost {
    /// Per instance type, region and market.
    pub lines: Vec<CostLine>,
    /// Instance-seconds in all.
    pub instance_seconds: f64,
    /// Dollars in all (lines without a price count nothing; `notes` names them).
    pub usd: f64,
    /// When it was metered.
    pub as_of: DateTime<Utc>,
    /// Whether the run is over and this is its whole cost.
    #[serde(default)]
    pub complete: bool,
    /// What the figures leave out.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl RunCost {
    /// Instance-hours in all.
    pub fn instance_hours(&self) -> f64 {
        self.instance_seconds / 3600.0
    }
}

/// Prices metered usage: on demand from `table`, spot at `spot` (else on demand, the most spot costs).
pub fn price(usage: &[Usage], table: &PriceTable, spot: &SpotPrices, as_of: DateTime<Utc>) -> RunCost {
    let mut lines = Vec::new();
    let mut notes = Vec::new();
    for u in usage {
        let UsageKey { instance_type, region, market } = u.key.clone();
        let on_demand = table.on_demand(&region, &instance_type);
        let hourly = match market {
            Market::Spot => spot.get(&(region.clone(), instance_type.clone())).copied().or(on_demand),
            _ => on_demand,
        };
        if hourly.is_none() {
            notes.push(format!("the price table has no price for {instance_type} in {region} (pricing.file)"));
        }
        let usd = hourly.map(|p| tidy(p * u.instance_seconds / 3600.0));
        lines.push(CostLine {
            instance_type,
            region,
            market,
            instances: u.instances,
            instance_seconds: u.instance_seconds.round(),
            usd_per_instance_hour: hourly,
            usd,
        });
    }
    let instance_seconds = lines.iter().map(|l| l.instance_seconds).sum();
    let usd = tidy(lines.iter().filter_map(|l| l.usd).sum());
    RunCost { lines, instance_seconds, usd, as_of, complete: false, notes }
}

impl Budget {
    /// The cap a live run's recorded `cost` has reached, with `month_before` dollars recorded
    /// by this broker's other runs this month; `None` while every cap holds.
    pub fn reached(&self, cost: &RunCost, month_before: f64) -> Option<String> {
        if let Some(cap) = self.max_usd_per_run.filter(|cap| cost.usd >= *cap) {
            return Some(format!("the run's recorded cost reached ${:.4}, budget.max_usd_per_run is ${cap}", cost.usd));
        }
        if let Some(cap) = self.max_instance_hours_per_run.filter(|cap| cost.instance_hours() >= *cap) {
            return Some(format!(
                "the run's recorded instance-hours reached {:.3}, budget.max_instance_hours_per_run is {cap}",
                cost.instance_hours()
            ));
        }
        if let Some(cap) = self.max_usd_per_month.filter(|cap| month_before + cost.usd >= *cap) {
            return Some(format!(
                "this month's recorded cost reached ${:.4} (${month_before:.4} before this run), budget.max_usd_per_month is ${cap}",
                month_before + cost.usd
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(market: Market) -> UsageKey {
        UsageKey { instance_type: "t3.micro".into(), region: "us-west-2".into(), market }
    }

    fn used(market: Market, seconds: &[f64]) -> Usage {
        let mut u = Usage { key: key(market), instances: 0, instance_seconds: 0.0 };
        for s in seconds {
            u.add(*s);
        }
        u
    }

    #[test]
    fn each_instance_is_billed_at_least_a_minute_and_priced_from_the_table() {
        let table = PriceTable::shipped();
        let hourly = table.on_demand("us-west-2", "t3.micro").unwrap();
        let cost = price(&[used(Market::OnDemand, &[12.0, 3600.0])], &table, &SpotPrices::new(), Utc::now());
        assert_eq!(cost.lines[0].instances, 2);
        assert_eq!(cost.instance_seconds, 3660.0);
        assert_eq!(cost.usd, tidy(hourly * 3660.0 / 3600.0));
        assert!(cost.notes.is_empty());
    }

    #[test]
    fn spot_is_priced_at_the_spot_price_else_on_demand() {
        let table = PriceTable::shipped();
        let spot = SpotPrices::from([(("us-west-2".to_string(), "t3.micro".to_string()), 0.0036)]);
        let cost = price(&[used(Market::Spot, &[3600.0])], &table, &spot, Utc::now());
        assert_eq!(cost.usd, 0.0036);
        let cost = price(&[used(Market::Spot, &[3600.0])], &table, &SpotPrices::new(), Utc::now());
        assert_eq!(cost.usd, table.on_demand("us-west-2", "t3.micro").unwrap());
    }

    #[test]
    fn an_unpriced_type_is_named_and_counts_nothing() {
        let mut u = used(Market::OnDemand, &[100.0]);
        u.key.instance_type = "x9.huge".into();
        let cost = price(&[u], &PriceTable::shipped(), &SpotPrices::new(), Utc::now());
        assert_eq!(cost.usd, 0.0);
        assert_eq!(cost.instance_seconds, 100.0);
        assert!(cost.notes[0].contains("x9.huge"), "{:?}", cost.notes);
    }

    #[test]
    fn each_cap_is_named_when_reached() {
        let cost = RunCost { lines: Vec::new(), instance_seconds: 7200.0, usd: 0.5, as_of: Utc::now(), complete: false, notes: Vec::new() };
        let none = Budget::default();
        assert_eq!(none.reached(&cost, 100.0), None);
        let run = Budget { max_usd_per_run: Some(0.5), ..Budget::default() };
        assert!(run.reached(&cost, 0.0).unwrap().contains("budget.max_usd_per_run"));
        let hours = Budget { max_instance_hours_per_run: Some(3.0), ..Budget::default() };
        assert_eq!(hours.reached(&cost, 0.0), None);
        let hours = Budget { max_instance_hours_per_run: Some(2.0), ..Budget::default() };
        assert!(hours.reached(&cost, 0.0).unwrap().contains("max_instance_hours_per_run"));
        let month = Budget { max_usd_per_month: Some(10.0), ..Budget::default() };
        assert_eq!(month.reached(&cost, 9.0), None);
        let why = month.reached(&cost, 9.5).unwrap();
        assert!(why.contains("max_usd_per_month") && why.contains("$10.0000"), "{why}");
    }
}
