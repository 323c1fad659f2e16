//! What a plan costs on EC2 before it runs, and the budget caps that refuse it.
//!
//! Prices come from a table (`pricing/ec2-on-demand.toml`, shipped with loads
//! and replaceable with `pricing.file`): on-demand dollars per instance-hour by
//! region and type, with where they come from and when. An estimate charges
//! every node from its launch to the end of its step: the setup time (launch,
//! boot, image load: `pricing.setup_seconds`), the step's `run_delay` (all
//! nodes are made ready before the run starts) and its `run_max_time`. A
//! service step's nodes live until every other step is over. A step with no
//! time limit (`run_max_time = 0`) has no upper bound, and the estimate says so
//! instead of inventing one. Monitor steps launch nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::spec::{Market, PlanSpec, StepSpec};

/// The price table shipped with loads.
pub const SHIPPED_PRICES: &str = include_str!("../../pricing/ec2-on-demand.toml");

/// AWS bills a Linux instance for at least this many seconds.
pub const MIN_BILLED_SECONDS: u64 = 60;

/// On-demand prices by region and instance type.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Where the prices come from.
    pub source: String,
    /// When they were taken (`YYYY-MM-DD`).
    pub date: String,
    /// The currency of every price.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// vCPUs per instance type.
    #[serde(default)]
    pub vcpus: BTreeMap<String, u32>,
    /// Price per instance-hour, by region, then instance type.
    pub regions: BTreeMap<String, BTreeMap<String, f64>>,
}

fn default_currency() -> String {
    "USD".into()
}

impl PriceTable {
    /// The table shipped with loads.
    pub fn shipped() -> Self {
        Self::parse(SHIPPED_PRICES).expect("the shipped price table is valid")
    }

    /// Reads a table (TOML); the error names the entry that is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: Self = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if table.source.trim().is_empty() || table.date.trim().is_empty() {
            return Err("source and date must say where the prices come from and when".into());
        }
        for (region, prices) in &table.regions {
            for (instance_type, price) in prices {
                if !price.is_finite() || *price < 0.0 {
                    return Err(format!("regions.{region}.\"{instance_type}\": must be a price of zero or more, not {price}"));
                }
            }
        }
        Ok(table)
    }

    /// The on-demand price of one instance-hour of `instance_type` in `region`.
    pub fn on_demand(&self, region: &str, instance_type: &str) -> Option<f64> {
        self.regions.get(region)?.get(instance_type).copied()
    }
}

/// Where an estimate's prices come from.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct PriceSource {
    /// The table's source.
    pub source: String,
    /// The table's date.
    pub date: String,
    /// Its currency.
    pub currency: String,
}

/// One step's share of an estimate.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StepEstimate {
    /// The step's name.
    pub step: String,
    /// Instances it launches.
    pub instances: u32,
    /// Their type.
    pub instance_type: String,
    /// Their region.
    pub region: String,
    /// How they are bought: `on_demand`, `spot`, `spot_fallback`.
    pub market: Market,
    /// Seconds each instance lives, at most; `null` when the step has no upper bound.
    pub seconds_per_instance: Option<u64>,
    /// Instance-hours in all; `null` when unbounded.
    pub instance_hours: Option<f64>,
    /// The price of one instance-hour; `null` when the table has none.
    pub usd_per_instance_hour: Option<f64>,
    /// What the step costs at most; `null` when unbounded or unpriced.
    pub usd: Option<f64>,
    /// vCPUs of one instance; `null` when the table does not say.
    pub vcpus: Option<u32>,
}

/// What a plan costs on EC2, at most.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Estimate {
    /// The plan's name.
    pub plan: String,
    /// Where this broker's nodes come from: `ec2` (the estimate is what a run costs) or
    /// `local` (a run costs nothing; the estimate is what it would cost on EC2).
    pub provider: String,
    /// Per step, in plan order (monitor steps launch nothing and are left out).
    pub steps: Vec<StepEstimate>,
    /// Instances in all.
    pub instances: u32,
    /// vCPUs the plan runs at once, by region (for the account's quota).
    pub vcpus_by_region: BTreeMap<String, u32>,
    /// Instance-hours in all; `null` when a step has no upper bound.
    pub instance_hours: Option<f64>,
    /// Dollars in all; `null` when a step has no upper bound or no price.
    pub usd: Option<f64>,
    /// Whether every step has an upper bound.
    pub bounded: bool,
    /// Why a figure is missing: each unbounded step, each price the table lacks.
    pub notes: Vec<String>,
    /// Seconds each instance is charged for before its step starts (launch, boot, image load).
    pub setup_seconds: u64,
    /// The price table's source and date.
    pub prices: PriceSource,
    /// The budget cap this estimate passes (a run would be refused with `over_budget`); `null` when none.
    pub over_budget: Option<String>,
    /// Per region, what the plan needs against the account's instance limit (EC2 only).
    pub quota: Vec<RegionQuota>,
}

/// What a plan needs in one region, against what the account allows there.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct RegionQuota {
    /// The region.
    pub region: String,
    /// Instances the plan runs there at once.
    pub instances: u32,
    /// vCPUs the plan runs there at once.
    pub vcpus: u32,
    /// vCPUs of standard instance types (A, C, D, H, I, M, R, T, Z) bought on demand
    /// (`spot_fallback` counted here: it may all be bought on demand).
    pub on_demand_standard_vcpus: u32,
    /// vCPUs of standard instance types bought as spot.
    pub spot_standard_vcpus: u32,
    /// The account's instance limit there (`max-instances`); `null` when EC2 did not say.
    pub max_instances: Option<u32>,
    /// The account's on-demand standard vCPU quota there (Service Quotas `L-1216C47A`); `null` when unknown.
    pub on_demand_vcpu_quota: Option<u32>,
    /// The account's standard spot vCPU quota there (Service Quotas `L-34B43A08`); `null` when unknown.
    pub spot_vcpu_quota: Option<u32>,
    /// Why the plan does not fit, each limit it passes; `null` when it fits.
    pub shortfall: Option<String>,
}

/// What the account allows in one region; `None` where EC2 did not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountLimits {
    /// Instances at once (`max-instances`).
    pub max_instances: Option<u32>,
    /// vCPUs of running on-demand standard instances.
    pub on_demand_vcpus: Option<u32>,
    /// vCPUs of standard spot instances.
    pub spot_vcpus: Option<u32>,
}

/// Whether an instance type counts against the standard vCPU quotas (families A, C, D, H, I, M, R, T, Z).
fn standard(instance_type: &str) -> bool {
    instance_type.chars().next().is_some_and(|c| "acdhimrtz".contains(c))
}

impl Estimate {
    /// Checks what the plan runs at once per region against the account's limits there: its
    /// instances against `max-instances`, its standard vCPUs against the on-demand and spot
    /// vCPU quotas. Each shortfall is named in `quota` and in `notes`; vCPUs the table does
    /// not know, or of types outside the standard quotas, are named in `notes` as unchecked.
    pub fn check_quotas(&mut self, limits: &BTreeMap<String, AccountLimits>) {
        let mut quota = BTreeMap::<String, RegionQuota>::new();
        let mut unchecked = Vec::new();
        for s in &self.steps {
            let q = quota.entry(s.region.clone()).or_insert_with(|| RegionQuota {
                region: s.region.clone(),
                instances: 0,
                vcpus: self.vcpus_by_region.get(&s.region).copied().unwrap_or(0),
                on_demand_standard_vcpus: 0,
                spot_standard_vcpus: 0,
                max_instances: None,
                on_demand_vcpu_quota: None,
                spot_vcpu_quota: None,
                shortfall: None,
            });
            q.instances += s.instances;
            match s.vcpus {
                Some(v) if standard(&s.instance_type) => match s.market {
                    Market::Spot => q.spot_standard_vcpus += v * s.instances,
                    _ => q.on_demand_standard_vcpus += v * s.instances,
                },
                _ => unchecked.push(format!("step {:?}: the vCPU quota of {} is not checked", s.step, s.instance_type)),
            }
        }
        for (region, q) in &mut quota {
            let limits = limits.get(region).copied().unwrap_or_default();
            (q.max_instances, q.on_demand_vcpu_quota, q.spot_vcpu_quota) =
                (limits.max_instances, limits.on_demand_vcpus, limits.spot_vcpus);
            let mut over = Vec::new();
            if let Some(m) = q.max_instances.filter(|m| q.instances > *m) {
                over.push(format!("the plan runs {} instances at once; the account allows {m} there (max-instances)", q.instances));
            }
            if let Some(m) = q.on_demand_vcpu_quota.filter(|m| q.on_demand_standard_vcpus > *m) {
                over.push(format!(
                    "the plan runs {} on-demand standard vCPUs at once; the account's quota there is {m} (L-1216C47A)",
                    q.on_demand_standard_vcpus
                ));
            }
            if let Some(m) = q.spot_vcpu_quota.filter(|m| q.spot_standard_vcpus > *m) {
                over.push(format!(
                    "the plan runs {} spot standard vCPUs at once; the account's quota there is {m} (L-34B43A08)",
                    q.spot_standard_vcpus
                ));
            }
            q.shortfall = (!over.is_empty()).then(|| format!("{region}: {}", over.join("; ")));
        }
        self.quota = quota.into_values().collect();
        self.notes.extend(self.quota.iter().filter_map(|q| q.shortfall.clone()));
        self.notes.extend(unchecked);
    }
}

/// Rounds away floating-point noise (a millionth of a dollar or an hour).
pub(crate) fn tidy(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Current spot prices per instance-hour, by (region, instance type).
pub type SpotPrices = BTreeMap<(String, String), f64>;

/// The price of an hour of step `s`'s instances in `region` in its market: on demand from the
/// table; spot at the current spot price (else on demand, the most spot costs); `spot_fallback`
/// on demand, since the shortfall of spot capacity is bought there. Notes say which.
fn hourly_price(s: &StepSpec, region: &str, table: &PriceTable, spot: &SpotPrices, notes: &mut Vec<String>) -> Option<f64> {
    let on_demand = table.on_demand(region, &s.instance_type);
    if on_demand.is_none() {
        notes.push(format!("step {:?}: the price table has no on-demand price for {} in {region} (pricing.file)", s.name, s.instance_type));
    }
    let current = spot.get(&(region.to_string(), s.instance_type.clone())).copied();
    match (s.market, current) {
        (Market::OnDemand, _) => on_demand,
        (Market::Spot, Some(price)) => Some(price),
        (Market::Spot, None) => {
            notes.push(format!(
                "step {:?}: no current spot price for {} in {region}; priced on demand, the most spot costs",
                s.name, s.instance_type
            ));
            on_demand
        }
        (Market::SpotFallback, _) => {
            let now = current.map_or_else(String::new, |p| format!(" (spot is ${p} now)"));
            notes.push(format!("step {:?}: spot_fallback is priced on demand, the most it costs{now}", s.name));
            on_demand
        }
    }
}

/// The estimate of `plan` with prices from `table` and `spot`, each instance charged `setup_seconds` before its step.
pub fn estimate(plan: &PlanSpec, table: &PriceTable, spot: &SpotPrices, setup_seconds: u64, provider: &str) -> Estimate {
    let launched: Vec<_> = plan.steps.iter().filter(|s| !s.monitor && s.instance_count > 0).collect();
    // When each step's nodes are done, counted from the run's start; `None` = no limit.
    let end = |s: &StepSpec| (s.run_max_time > 0).then(|| s.run_delay + s.run_max_time);
    let generators: Vec<_> = launched.iter().filter(|s| !s.service).collect();
    let generators_end: Option<Option<u64>> = (!generators.is_empty())
        .then(|| generators.iter().map(|s| end(s)).collect::<Option<Vec<_>>>().map(|e| e.into_iter().max().unwrap_or(0)));
    let mut notes = Vec::new();
    let mut steps = Vec::new();
    let mut vcpus_by_region = BTreeMap::<String, u32>::new();
    for s in &launched {
        let finish = match (s.service, generators_end) {
            // A service lives until every other step is over, or its own limit, whichever is later.
            (true, Some(Some(others))) => Some(end(s).map_or(others, |own| own.max(others))),
            (true, Some(None)) => None,
            _ => end(s),
        };
        let seconds = finish.map(|f| (setup_seconds + f).max(MIN_BILLED_SECONDS));
        match (finish, s.service) {
            (None, true) if generators_end.is_some() => notes.push(format!(
                "step {:?} is a service: it runs until every other step is over, and one of them has no run_max_time",
                s.name
            )),
            (None, _) => notes.push(format!("step {:?} has no upper bound: its run_max_time is 0 (no limit)", s.name)),
            _ => {}
        }
        // A step over several regions: a line per region, with its share of the nodes.
        for (region, instances) in s.instance_region.split(s.instance_count) {
            let price = hourly_price(s, &region, table, spot, &mut notes);
            let hours = seconds.map(|sec| tidy(sec as f64 * f64::from(instances) / 3600.0));
            let usd = hours.zip(price).map(|(h, p)| tidy(h * p));
            *vcpus_by_region.entry(region.clone()).or_default() += instances * table.vcpus.get(&s.instance_type).copied().unwrap_or(0);
            steps.push(StepEstimate {
                step: s.name.clone(),
                instances,
                instance_type: s.instance_type.clone(),
                region,
                market: s.market,
                seconds_per_instance: seconds,
                instance_hours: hours,
                usd_per_instance_hour: price,
                usd,
                vcpus: table.vcpus.get(&s.instance_type).copied(),
            });
        }
    }
    let instance_hours = steps.iter().map(|s| s.instance_hours).sum::<Option<f64>>().map(tidy);
    let usd = steps.iter().map(|s| s.usd).sum::<Option<f64>>().map(tidy);
    Estimate {
        plan: plan.name.clone(),
        provider: provider.into(),
        instances: steps.iter().map(|s| s.instances).sum(),
        bounded: steps.iter().all(|s| s.seconds_per_instance.is_some()),
        steps,
        vcpus_by_region,
        instance_hours,
        usd,
        notes,
        setup_seconds,
        prices: PriceSource { source: table.source.clone(), date: table.date.clone(), currency: table.currency.clone() },
        over_budget: None,
        quota: Vec::new(),
    }
}

/// Caps on what runs may cost (`budget.*`); `None` = no cap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Budget {
    /// Most dollars one run may reach.
    pub max_usd_per_run: Option<f64>,
    /// Most instance-hours one run may reach.
    pub max_instance_hours_per_run: Option<f64>,
    /// Most dollars this broker's runs may reach in a calendar month (UTC), as recorded.
    pub max_usd_per_month: Option<f64>,
}

impl Budget {
    /// Why the run estimated by `estimate` may not start, with `month_before` dollars recorded
    /// this month: the cap it passes and the estimate, or the figure the cap needs that the
    /// estimate cannot give. `None` when every cap holds.
    pub fn refusal(&self, estimate: &Estimate, month_before: f64) -> Option<String> {
        let why_missing = || estimate.notes.join("; ");
        if let Some(cap) = self.max_usd_per_month {
            match estimate.usd {
                None => {
                    return Some(format!("budget.max_usd_per_month is ${cap}, and the run's cost has no estimate: {}", why_missing()))
                }
                Some(usd) if month_before + usd > cap => {
                    return Some(format!(
                        "the run is estimated at ${usd:.4}; with ${month_before:.4} recorded this month that passes budget.max_usd_per_month (${cap})"
                    ))
                }
                _ => {}
            }
        }
        if let Some(cap) = self.max_usd_per_run {
            match estimate.usd {
                None => return Some(format!("budget.max_usd_per_run is ${cap}, and the run's cost has no estimate: {}", why_missing())),
                Some(usd) if usd > cap => return Some(format!("the run is estimated at ${usd:.4}, over budget.max_usd_per_run (${cap})")),
                _ => {}
            }
        }
        if let Some(cap) = self.max_instance_hours_per_run {
            match estimate.instance_hours {
                None => {
                    return Some(format!(
                        "budget.max_instance_hours_per_run is {cap}, and the run's instance-hours have no upper bound: {}",
                        why_missing()
                    ))
                }
                Some(hours) if hours > cap => {
                    return Some(format!(
                        "the run is estimated at {hours:.3} instance-hours, over budget.max_instance_hours_per_run ({cap})"
                    ))
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Regions;

    fn estimate(plan: &PlanSpec, table: &PriceTable, setup_seconds: u64, provider: &str) -> Estimate {
        super::estimate(plan, table, &SpotPrices::new(), setup_seconds, provider)
    }

    fn plan(name: &str, steps: Vec<StepSpec>) -> PlanSpec {
        PlanSpec {
            name: name.into(),
            description: None,
            enabled: true,
            environment_data: Default::default(),
            dashboard: None,
            thresholds: Default::default(),
            compare: Default::default(),
            fail_on_regression: false,
            steps,
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 5e-6)
    }

    /// The demo plan (examples/demo.toml) with the default type and region.
    fn demo() -> PlanSpec {
        let mut web = StepSpec::new("web", "loads/demo-httpd:1");
        web.service = true;
        web.run_max_time = 0;
        let mut shell = StepSpec::new("shell-generator", "loads/demo-shell-gen:2");
        (shell.instance_count, shell.run_delay, shell.run_max_time) = (2, 2, 60);
        let mut c = StepSpec::new("c-generator", "loads/demo-c-gen:1");
        (c.run_delay, c.run_max_time) = (5, 60);
        plan("demo", vec![web, shell, c])
    }

    #[test]
    fn the_shipped_table_is_valid_and_dated() {
        let table = PriceTable::shipped();
        assert!(table.source.contains("aws.amazon.com"));
        assert_eq!(table.date.len(), 10);
        assert_eq!(table.on_demand("us-west-2", "t3.micro"), Some(0.0104));
        for prices in table.regions.values() {
            for t in prices.keys() {
                assert!(table.vcpus.contains_key(t), "{t} has a price and no vCPU count");
            }
        }
    }

    #[test]
    fn the_demo_plan_costs_what_is_computed_by_hand() {
        // web: a service until the last generator ends (5 + 60 s), after 300 s of setup: 365 s.
        // shell-generator: 2 nodes × (300 + 2 + 60) s = 724 s. c-generator: 300 + 5 + 60 = 365 s.
        // 1454 instance-seconds = 0.403889 h; t3.micro in us-west-2 at $0.0104/h = $0.0042004.
        let e = estimate(&demo(), &PriceTable::shipped(), 300, "local");
        assert_eq!(e.steps.iter().map(|s| s.seconds_per_instance).collect::<Vec<_>>(), [Some(365), Some(362), Some(365)]);
        assert!(close(e.instance_hours, 1454.0 / 3600.0), "{:?}", e.instance_hours);
        assert!(close(e.usd, 1454.0 / 3600.0 * 0.0104), "{:?}", e.usd);
        assert_eq!((e.instances, e.bounded), (4, true));
        assert_eq!(e.vcpus_by_region, BTreeMap::from([("us-west-2".to_string(), 8)]));
        assert!(e.notes.is_empty(), "{:?}", e.notes);
    }

    #[test]
    fn steps_in_two_regions_are_priced_by_their_own_region() {
        // east: 3 × m5.large × (120 + 10 + 600) s = 2190 s = 0.608333 h × $0.096 = $0.0584.
        // west: 2 × m5.large × (120 + 0 + 900) s = 2040 s = 0.566667 h × $0.107 = $0.060633.
        let mut east = StepSpec::new("east", "gen");
        (east.instance_count, east.instance_type, east.instance_region) = (3, "m5.large".into(), Regions::one("us-east-1"));
        (east.run_delay, east.run_max_time) = (10, 600);
        let mut eu = StepSpec::new("eu", "gen");
        (eu.instance_count, eu.instance_type, eu.instance_region, eu.run_max_time) = (2, "m5.large".into(), Regions::one("eu-west-1"), 900);
        let plan = plan("regions", vec![east, eu]);
        let e = estimate(&plan, &PriceTable::shipped(), 120, "ec2");
        assert!(close(e.steps[0].usd, 2190.0 / 3600.0 * 0.096));
        assert!(close(e.steps[1].usd, 2040.0 / 3600.0 * 0.107));
        assert!(close(e.usd, 2190.0 / 3600.0 * 0.096 + 2040.0 / 3600.0 * 0.107));
        assert!(close(e.instance_hours, 4230.0 / 3600.0));
        assert_eq!(e.vcpus_by_region, BTreeMap::from([("eu-west-1".to_string(), 4), ("us-east-1".to_string(), 6)]));
    }

    #[test]
    fn a_step_over_two_regions_is_priced_per_region_by_its_share_of_nodes() {
        // 5 × m5.large at 60/40: 3 in us-east-1, 2 in eu-west-1, each (120 + 600) s.
        // us-east-1: 2160 s = 0.6 h × $0.096 = $0.0576; eu-west-1: 1440 s = 0.4 h × $0.107 = $0.0428.
        let mut gen = StepSpec::new("gen", "gen");
        (gen.instance_count, gen.instance_type, gen.run_max_time) = (5, "m5.large".into(), 600);
        gen.instance_region = Regions::Shares(BTreeMap::from([("us-east-1".into(), 60), ("eu-west-1".into(), 40)]));
        let e = estimate(&plan("spread", vec![gen]), &PriceTable::shipped(), 120, "ec2");
        let lines: Vec<(&str, &str, u32)> = e.steps.iter().map(|s| (s.step.as_str(), s.region.as_str(), s.instances)).collect();
        assert_eq!(lines, [("gen", "eu-west-1", 2), ("gen", "us-east-1", 3)]);
        assert!(close(e.steps[0].usd, 0.4 * 0.107) && close(e.steps[1].usd, 0.6 * 0.096), "{:?}", e.steps);
        assert!(close(e.usd, 0.0428 + 0.0576) && close(e.instance_hours, 1.0));
        assert_eq!(e.instances, 5);
        assert_eq!(e.vcpus_by_region, BTreeMap::from([("eu-west-1".to_string(), 4), ("us-east-1".to_string(), 6)]));
    }

    #[test]
    fn a_step_without_a_time_limit_leaves_the_total_unbounded_and_says_why() {
        let mut plan = demo();
        plan.steps[2].run_max_time = 0;
        let e = estimate(&plan, &PriceTable::shipped(), 300, "ec2");
        assert!(!e.bounded);
        assert_eq!((e.usd, e.instance_hours), (None, None));
        assert_eq!(e.steps[1].seconds_per_instance, Some(362), "bounded steps keep their figures");
        assert_eq!(e.steps[0].seconds_per_instance, None, "the service waits for the unbounded step");
        assert!(e.notes.iter().any(|n| n.contains("\"c-generator\" has no upper bound")), "{:?}", e.notes);
        assert!(e.notes.iter().any(|n| n.contains("\"web\" is a service")), "{:?}", e.notes);
    }

    #[test]
    fn a_price_the_table_lacks_is_named_not_guessed() {
        let mut plan = demo();
        plan.steps[1].instance_type = "x9.huge".into();
        let e = estimate(&plan, &PriceTable::shipped(), 300, "ec2");
        assert_eq!(e.usd, None);
        assert!(e.instance_hours.is_some());
        assert_eq!(e.notes, ["step \"shell-generator\": the price table has no on-demand price for x9.huge in us-west-2 (pricing.file)"]);
    }

    #[test]
    fn short_runs_are_billed_the_minimum_and_monitors_launch_nothing() {
        let mut quick = StepSpec::new("quick", "gen");
        quick.run_max_time = 5;
        let mut monitor = StepSpec::new("monitor", "influx");
        monitor.monitor = true;
        let plan = plan("p", vec![quick, monitor]);
        let e = estimate(&plan, &PriceTable::shipped(), 0, "ec2");
        assert_eq!(e.steps.len(), 1);
        assert_eq!(e.steps[0].seconds_per_instance, Some(MIN_BILLED_SECONDS));
    }

    #[test]
    fn a_budget_names_the_cap_and_the_estimate() {
        let e = estimate(&demo(), &PriceTable::shipped(), 300, "ec2");
        assert_eq!(
            Budget { max_usd_per_run: Some(1.0), max_instance_hours_per_run: Some(1.0), max_usd_per_month: Some(1.0) }.refusal(&e, 0.0),
            None
        );
        let why = Budget { max_usd_per_run: Some(0.001), ..Budget::default() }.refusal(&e, 0.0).unwrap();
        assert!(why.contains("$0.0042") && why.contains("budget.max_usd_per_run ($0.001)"), "{why}");
        let why = Budget { max_instance_hours_per_run: Some(0.25), ..Budget::default() }.refusal(&e, 0.0).unwrap();
        assert!(why.contains("0.404 instance-hours") && why.contains("budget.max_instance_hours_per_run (0.25)"), "{why}");
        let mut plan = demo();
        plan.steps[1].run_max_time = 0;
        let unbounded = estimate(&plan, &PriceTable::shipped(), 300, "ec2");
        let why = Budget { max_usd_per_run: Some(100.0), ..Budget::default() }.refusal(&unbounded, 0.0).unwrap();
        assert!(why.contains("no estimate") && why.contains("\"shell-generator\" has no upper bound"), "{why}");
        let month = Budget { max_usd_per_month: Some(1.0), ..Budget::default() };
        assert_eq!(month.refusal(&e, 0.99), None);
        let why = month.refusal(&e, 0.999).unwrap();
        assert!(why.contains("$0.9990 recorded this month") && why.contains("budget.max_usd_per_month ($1)"), "{why}");
    }

    #[test]
    fn spot_is_priced_at_the_current_spot_price_and_spot_fallback_on_demand() {
        let mut plan = demo();
        plan.steps[1].market = Market::Spot;
        plan.steps[2].market = Market::SpotFallback;
        let spot = SpotPrices::from([(("us-west-2".to_string(), "t3.micro".to_string()), 0.0031)]);
        let e = super::estimate(&plan, &PriceTable::shipped(), &spot, 300, "ec2");
        assert_eq!((e.steps[1].market.as_str(), e.steps[1].usd_per_instance_hour), ("spot", Some(0.0031)));
        assert_eq!((e.steps[2].market.as_str(), e.steps[2].usd_per_instance_hour), ("spot_fallback", Some(0.0104)));
        assert!(close(e.usd, (365.0 + 365.0) / 3600.0 * 0.0104 + 724.0 / 3600.0 * 0.0031), "{:?}", e.usd);
        assert_eq!(e.notes, ["step \"c-generator\": spot_fallback is priced on demand, the most it costs (spot is $0.0031 now)"]);
        let e = estimate(&plan, &PriceTable::shipped(), 300, "ec2");
        assert_eq!(e.steps[1].usd_per_instance_hour, Some(0.0104), "no spot price: on demand, the ceiling");
        assert!(e.notes[0].contains("no current spot price for t3.micro in us-west-2"), "{:?}", e.notes);
    }

    #[test]
    fn a_region_over_the_account_instance_limit_is_named() {
        let mut e = estimate(&demo(), &PriceTable::shipped(), 300, "ec2");
        let limits = |max_instances| AccountLimits { max_instances, ..AccountLimits::default() };
        e.check_quotas(&BTreeMap::from([("us-west-2".to_string(), limits(Some(3)))]));
        assert_eq!(e.quota.len(), 1);
        assert_eq!((e.quota[0].instances, e.quota[0].vcpus, e.quota[0].max_instances), (4, 8, Some(3)));
        let why = "us-west-2: the plan runs 4 instances at once; the account allows 3 there (max-instances)";
        assert_eq!(e.quota[0].shortfall.as_deref(), Some(why));
        assert_eq!(e.notes, [why]);
        let mut e = estimate(&demo(), &PriceTable::shipped(), 300, "ec2");
        e.check_quotas(&BTreeMap::new());
        assert_eq!((e.quota[0].max_instances, &e.quota[0].shortfall, e.notes.len()), (None, &None, 0));
    }

    #[test]
    fn standard_vcpus_are_checked_against_each_markets_quota() {
        // The demo: 4 × t3.micro (2 vCPUs each) on demand in us-west-2; one step moved to spot.
        let mut plan = demo();
        plan.steps[1].market = Market::Spot;
        let mut e = estimate(&plan, &PriceTable::shipped(), 300, "ec2");
        let limits = AccountLimits { max_instances: Some(20), on_demand_vcpus: Some(3), spot_vcpus: Some(1) };
        e.check_quotas(&BTreeMap::from([("us-west-2".to_string(), limits)]));
        let q = &e.quota[0];
        let spot = 2 * plan.steps[1].instance_count;
        assert_eq!((q.on_demand_standard_vcpus, q.spot_standard_vcpus), (8 - spot, spot));
        assert_eq!((q.on_demand_vcpu_quota, q.spot_vcpu_quota), (Some(3), Some(1)));
        let why = q.shortfall.as_deref().unwrap();
        assert!(
            why.contains(&format!(
                "the plan runs {} on-demand standard vCPUs at once; the account's quota there is 3 (L-1216C47A)",
                8 - spot
            )),
            "{why}"
        );
        assert!(
            why.contains(&format!("the plan runs {spot} spot standard vCPUs at once; the account's quota there is 1 (L-34B43A08)")),
            "{why}"
        );
        assert!(!why.contains("max-instances"), "{why}");
        // A type outside the standard families, or unknown to the table, is named as not checked.
        plan.steps[1].instance_type = "p3.2xlarge".into();
        let mut e = estimate(&plan, &PriceTable::shipped(), 300, "ec2");
        e.check_quotas(&BTreeMap::new());
        assert!(e.notes.iter().any(|n| n.contains("the vCPU quota of p3.2xlarge is not checked")), "{:?}", e.notes);
    }

    #[test]
    fn a_bad_table_is_refused_with_the_entry_named() {
        let bad = "source = \"s\"\ndate = \"2024-01-01\"\n[regions.us-east-1]\n\"t3.micro\" = -1.0\n";
        assert_eq!(PriceTable::parse(bad).unwrap_err(), "regions.us-east-1.\"t3.micro\": must be a price of zero or more, not -1");
        assert!(PriceTable::parse("date = \"x\"\n[regions]\n").unwrap_err().contains("source"));
    }
}
