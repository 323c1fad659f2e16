//! The cost meter: how long each run has held each instance. An instance is
//! metered from when its step asked for it (launch, boot and preparation are
//! billed too) until it is terminated, handed back to the idle pool, or given
//! up while being readied; see `domain::usage` for how the time is priced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::{Context, Handler, Message};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Ec2PoolActor;
use crate::domain::usage::{Clock, Usage, UsageKey};

/// One instance held by one step, from `since` until `until` (still held while `None`).
struct Span {
    instance: String,
    step_id: Uuid,
    key: UsageKey,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
}

/// Every run's spans; shared with the futures that launch and release instances.
#[derive(Clone, Default)]
pub(super) struct Meter {
    clock: Clock,
    runs: Arc<Mutex<HashMap<Uuid, Vec<Span>>>>,
}

impl Meter {
    pub(super) fn new(clock: Clock) -> Self {
        Self { clock, runs: Default::default() }
    }

    /// The meter's time now.
    pub(super) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, Vec<Span>>) -> T) -> T {
        let mut runs = self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut runs)
    }

    /// `step_id` of `run_id` holds `instance` since `since`.
    pub(super) fn open(&self, run_id: Uuid, step_id: Uuid, instance: &str, key: UsageKey, since: DateTime<Utc>) {
        self.with(|runs| {
            let spans = runs.entry(run_id).or_default();
            if !spans.iter().any(|s| s.instance == instance && s.until.is_none()) {
                spans.push(Span { instance: instance.to_string(), step_id, key, since, until: None });
            }
        });
    }

    /// The run no longer holds the spans `done` selects, from now.
    pub(super) fn close(&self, run_id: Uuid, done: impl Fn(&str, Uuid) -> bool) {
        let now = self.now();
        self.with(|runs| {
            for span in runs.get_mut(&run_id).into_iter().flatten().filter(|s| s.until.is_none() && done(&s.instance, s.step_id)) {
                span.until = Some(now);
            }
        });
    }

    /// The run's `instance` is billed until `at` at the latest (EC2 takes back an
    /// interrupted spot instance then), unless it was let go before.
    pub(super) fn ends_by(&self, run_id: Uuid, instance: &str, at: DateTime<Utc>) {
        self.with(|runs| {
            for span in runs.get_mut(&run_id).into_iter().flatten().filter(|s| s.instance == instance && s.until.is_none()) {
                span.until = Some(at);
            }
        });
    }

    /// The run's usage until now, by instance type, region and market.
    pub(super) fn usage(&self, run_id: Uuid) -> Vec<Usage> {
        let now = self.now();
        let mut by_key: HashMap<UsageKey, Usage> = HashMap::new();
        self.with(|runs| {
            for span in runs.get(&run_id).into_iter().flatten() {
                let until = span.until.map_or(now, |u| u.min(now));
                let seconds = (until - span.since).num_milliseconds().max(0) as f64 / 1000.0;
                by_key
                    .entry(span.key.clone())
                    .or_insert_with(|| Usage { key: span.key.clone(), instances: 0, instance_seconds: 0.0 })
                    .add(seconds);
            }
        });
        let mut usage: Vec<Usage> = by_key.into_values().collect();
        usage.sort_by(|a, b| a.key.cmp(&b.key));
        usage
    }

    fn forget(&self, run_id: Uuid) {
        self.with(|runs| runs.remove(&run_id));
    }
}

/// What a run's instances have been held for so far (none on the local provider); `done`
/// forgets the run once its last figures are read (after `CloseRun`).
#[derive(Debug, Message)]
#[rtype(result = "Vec<Usage>")]
pub struct RunUsage {
    /// The run.
    pub run_id: Uuid,
    /// The run is closed: these are its last figures.
    pub done: bool,
}

impl Handler<RunUsage> for Ec2PoolActor {
    type Result = Vec<Usage>;

    fn handle(&mut self, msg: RunUsage, _: &mut Context<Self>) -> Vec<Usage> {
        let usage = self.shared.meter.usage(msg.run_id);
        if msg.done {
            self.shared.meter.forget(msg.run_id);
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Market;

    #[test]
    fn spans_are_counted_until_closed_and_open_ones_until_now() {
        let t0 = Utc::now();
        let now = Arc::new(Mutex::new(t0));
        let clock = {
            let now = now.clone();
            Clock::new(move || *now.lock().unwrap())
        };
        let meter = Meter::new(clock);
        let (run, step) = (Uuid::new_v4(), Uuid::new_v4());
        let key = |market: Market| UsageKey { instance_type: "t3.micro".into(), region: "us-east-1".into(), market };
        meter.open(run, step, "i-1", key(Market::OnDemand), t0);
        meter.open(run, step, "i-2", key(Market::OnDemand), t0);
        meter.open(run, step, "i-3", key(Market::Spot), t0);
        *now.lock().unwrap() = t0 + chrono::Duration::seconds(100);
        meter.close(run, |id, _| id == "i-1");
        *now.lock().unwrap() = t0 + chrono::Duration::seconds(300);
        let usage = meter.usage(run);
        assert_eq!(usage.len(), 2);
        assert_eq!((usage[0].key.market.as_str(), usage[0].instances, usage[0].instance_seconds), ("on_demand", 2, 400.0));
        assert_eq!((usage[1].key.market.as_str(), usage[1].instances, usage[1].instance_seconds), ("spot", 1, 300.0));
        // An interrupted instance is billed until EC2 takes it, not until it is let go.
        meter.ends_by(run, "i-3", t0 + chrono::Duration::seconds(400));
        let usage = meter.usage(run);
        assert_eq!(usage[1].instance_seconds, 300.0, "not past now");
        *now.lock().unwrap() = t0 + chrono::Duration::seconds(900);
        meter.close(run, |_, _| true);
        let usage = meter.usage(run);
        assert_eq!((usage[0].instance_seconds, usage[1].instance_seconds), (100.0 + 900.0, 400.0));
        meter.forget(run);
        assert!(meter.usage(run).is_empty());
    }
}
