//! Judging a run: its thresholds evaluated live on every node's windows, and
//! its verdict at the end.
//!
//! A threshold's samples are added window by window from every node of every
//! step it selects, into one tally: counters summed, timers' HDR histograms
//! added sample for sample, gauges kept per node. So `p(95)` over ten nodes is
//! the 95th percentile of the union of their samples, exactly the number the
//! summary shows, never an average of per-node percentiles. A threshold
//! without `window` is judged over the run so far (as k6 does); with one,
//! over that sliding window of one-second buckets, and it fails the run if
//! any window breached it. `rate` is per second of the selected steps' time
//! with metrics. Samples that never arrive are honest too: `count` and `rate`
//! of nothing are 0, any other aggregation of nothing has no value and fails
//! at the end ("no samples").
//!
//! OpenTelemetry histograms are judged like timers, on their merge over the
//! selected nodes: an exponential one's percentiles within the relative error
//! of its scale, an explicit one's as the upper bound of their bucket (the
//! numbers the summary shows). Durations (unit `s`, `ms`, `us`, `ns`, `min`,
//! `h`) are judged in milliseconds, as timers are; other units as they are.

mod tally;
mod verdict;

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::metrics::Window;
use super::thresholds::{self, number_text, Expr, MetricKey};
use super::views::{PlanView, ThresholdState, ThresholdView};

use self::tally::{SavedTally, SavedWatch, Tally, Watch};
pub use self::verdict::{verdict, Saturation};

/// One threshold, parsed and ready to judge.
#[derive(Clone, Debug)]
pub struct Threshold {
    /// The key as written.
    pub key: String,
    /// What it selects (a step's own thresholds are limited to the step).
    pub metric: MetricKey,
    /// The expression as written.
    pub text: String,
    /// The expression.
    pub expr: Expr,
    /// The step it belongs to, for a step's own.
    pub step: Option<String>,
    /// Stop the run when it fails.
    pub abort_on_fail: bool,
    /// Milliseconds after the run's first window before a failure may abort it.
    pub delay_abort_ms: u64,
    /// The sliding window as written, and in milliseconds.
    pub window: Option<(String, u64)>,
}

/// Every threshold of a plan: the plan's own (by key), then each step's.
/// Stored plans were validated, so what does not parse (it cannot) is left out.
pub fn compile(plan: &PlanView) -> Vec<Threshold> {
    let mut out = Vec::new();
    let mut add = |thresholds: &thresholds::Thresholds, step: Option<&str>| {
        for (key, rules) in thresholds {
            let Ok(metric) = thresholds::parse_key(key) else { continue };
            let metric = match step {
                Some(s) => metric.scoped_to(s),
                None => metric,
            };
            for rule in rules {
                let Ok(expr) = thresholds::parse_expr(&rule.threshold) else { continue };
                let window = rule.window.as_ref().and_then(|w| thresholds::parse_duration(w).ok().map(|ms| (w.clone(), ms)));
                out.push(Threshold {
                    key: key.clone(),
                    metric: metric.clone(),
                    text: rule.threshold.clone(),
                    expr,
                    step: step.map(str::to_string),
                    abort_on_fail: rule.abort_on_fail,
                    delay_abort_ms: rule.delay_abort_eval.as_deref().and_then(|d| thresholds::parse_duration(d).ok()).unwrap_or(0),
                    window,
                });
            }
        }
    };
    add(&plan.thresholds, None);
    for step in &plan.steps {
        add(&step.spec.thresholds, Some(&step.spec.name));
    }
    out
}

/// One threshold as it is being judged, reading its watch.
#[derive(Clone, Debug)]
struct Live {
    def: Threshold,
    /// Its watch, in the judge's list.
    watch: usize,
    state: ThresholdState,
    value: Option<f64>,
    note: Option<String>,
    first_breach_ms: Option<i64>,
    /// Whether its breach was reported (it aborts a run once).
    reported: bool,
}

/// A threshold's judging as saved with the run's metrics (with its watch's tallies, by
/// brokers that kept one per threshold).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SavedLive {
    #[serde(default, skip_serializing)]
    total: Option<SavedTally>,
    #[serde(default, skip_serializing)]
    buckets: BTreeMap<i64, SavedTally>,
    #[serde(default, skip_serializing)]
    span: Option<(i64, i64)>,
    first_breach_ms: Option<i64>,
    reported: bool,
}

/// A threshold with `abort_on_fail` failed: the run must stop.
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    /// Which threshold, its value and when, for a human.
    pub reason: String,
    /// When (the end of the window that breached it, Unix ms).
    pub at_ms: i64,
}

/// A run's thresholds and what they have seen.
#[derive(Clone, Debug, Default)]
pub struct Judge {
    thresholds: Vec<Live>,
    /// What the thresholds read, each selection and window once.
    watches: Vec<Watch>,
    /// When the run's first window started, and the latest window end seen (Unix ms).
    first_ms: Option<i64>,
    latest_end_ms: i64,
}

/// Milliseconds as a time.
fn at(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// A value as a person reads it: three decimals at most.
pub fn shown(v: f64) -> String {
    number_text((v * 1000.0).round() / 1000.0)
}

impl Judge {
    /// A judge of `thresholds`; thresholds that select the same samples over the same
    /// window share one watch.
    pub fn new(thresholds: Vec<Threshold>) -> Self {
        let mut watches: Vec<Watch> = Vec::new();
        let thresholds = thresholds
            .into_iter()
            .map(|def| {
                let window_ms = def.window.as_ref().map(|(_, ms)| *ms);
                let window = window_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
                let watch = match watches.iter().position(|w| w.metric == def.metric && w.window.map(|(ms, _)| ms) == window) {
                    Some(i) => i,
                    None => {
                        watches.push(Watch::new(def.metric.clone(), window_ms));
                        watches.len() - 1
                    }
                };
                Live { def, watch, state: ThresholdState::Pending, value: None, note: None, first_breach_ms: None, reported: false }
            })
            .collect();
        Self { thresholds, watches, first_ms: None, latest_end_ms: 0 }
    }

    /// Whether there is nothing to judge.
    pub fn is_empty(&self) -> bool {
        self.thresholds.is_empty()
    }

    /// Adds one node's window of `step`, from a node in `region`.
    pub fn add(&mut self, step: &str, region: &str, w: &Window) {
        let end = w.start_ms.saturating_add(i64::try_from(w.duration_ms).unwrap_or(0));
        self.latest_end_ms = self.latest_end_ms.max(end);
        // Relays deliver empty windows too (while a step prepares, or idles): time counts
        // from the first window with samples.
        let sampled = w.lines > 0;
        if sampled {
            self.first_ms = Some(self.first_ms.map_or(w.start_ms, |f| f.min(w.start_ms)));
        }
        for watch in &mut self.watches {
            let selectors = watch.metric.selectors();
            if sampled && selectors[0].matches_origin(step, &w.node, region) {
                let (first, last) = watch.span.unwrap_or((w.start_ms, end));
                watch.span = Some((first.min(w.start_ms), last.max(end)));
            }
            let mut part = Tally::default();
            match &watch.metric {
                MetricKey::Single(s) if s.matches_origin(step, &w.node, region) => part.add(s, w),
                MetricKey::Single(_) => continue,
                MetricKey::Ratio(above, below) => {
                    if above.matches_origin(step, &w.node, region) {
                        part.add_counters(above, w, false);
                    }
                    if below.matches_origin(step, &w.node, region) {
                        part.add_counters(below, w, true);
                    }
                }
            }
            watch.total.absorb(&part);
            watch.total.merge_gauges(&part);
            if let Some((window_ms, width)) = watch.window {
                let bucket = w.start_ms.div_euclid(width) * width;
                if bucket < self.latest_end_ms.saturating_sub(window_ms) {
                    continue; // too late for the window it belonged to
                }
                watch.running.absorb(&part);
                let slot = watch.buckets.entry(bucket).or_default();
                slot.absorb(&part);
                slot.merge_gauges(&part);
            }
        }
    }

    /// Judges every threshold on what has arrived: answers the thresholds whose
    /// state changed, and the first breach of an `abort_on_fail` threshold due now.
    pub fn evaluate(&mut self) -> (Vec<ThresholdView>, Option<Breach>) {
        let (latest, first) = (self.latest_end_ms, self.first_ms);
        let mut changed = Vec::new();
        let mut breach = None;
        let watches: Vec<(Cow<'_, Tally>, f64)> = self.watches.iter_mut().map(|w| w.current(latest)).collect();
        for live in &mut self.thresholds {
            let before = live.state;
            let (tally, seconds) = &watches[live.watch];
            let value = tally.value(&live.def.metric, live.def.expr.aggregation, *seconds);
            let value = match &live.def.window {
                Some((text, _)) => value.map_err(|e| format!("{e} in the last {text}")),
                None => value,
            };
            match value {
                Ok(v) => {
                    live.value = Some(v);
                    live.note = None;
                    live.state = if live.def.expr.op.holds(v, live.def.expr.bound) { ThresholdState::Ok } else { ThresholdState::Failing };
                }
                Err(note) => {
                    live.value = None;
                    live.note = Some(note);
                    live.state = ThresholdState::Pending;
                }
            }
            if live.state == ThresholdState::Failing && live.first_breach_ms.is_none() {
                live.first_breach_ms = Some(latest);
            }
            let due = first.is_some_and(|f| latest - f >= i64::try_from(live.def.delay_abort_ms).unwrap_or(i64::MAX));
            if live.def.abort_on_fail && live.state == ThresholdState::Failing && !live.reported && due && breach.is_none() {
                live.reported = true;
                breach = Some(Breach { reason: live.breach_text(latest), at_ms: latest });
            }
            if live.state != before {
                changed.push(live.view());
            }
        }
        (changed, breach)
    }

    /// The final judgement of every threshold, once the run's last window is in.
    pub fn finish(&mut self) -> Vec<ThresholdView> {
        self.evaluate();
        for live in &mut self.thresholds {
            let breached_window = live.def.window.is_some() && live.first_breach_ms.is_some();
            if breached_window {
                live.note = Some(format!("failed in a {} window at {}", live.window_text(), live.first_breach_text()));
            }
            live.state = if live.state == ThresholdState::Ok && !breached_window { ThresholdState::Passed } else { ThresholdState::Failed };
        }
        self.views()
    }

    /// Every threshold as it stands.
    pub fn views(&self) -> Vec<ThresholdView> {
        self.thresholds.iter().map(Live::view).collect()
    }

    /// What a restarted broker needs to go on judging (the thresholds come from the plan again).
    pub fn saved(&self) -> serde_json::Value {
        let lives: Vec<SavedLive> = self
            .thresholds
            .iter()
            .map(|l| SavedLive { first_breach_ms: l.first_breach_ms, reported: l.reported, ..SavedLive::default() })
            .collect();
        let watches: Vec<SavedWatch> = self.watches.iter().map(Watch::saved).collect();
        serde_json::json!({"first_ms": self.first_ms, "latest_end_ms": self.latest_end_ms, "watches": watches, "thresholds": lives})
    }

    /// Takes back what `saved` wrote (for the same plan's thresholds, in the same order).
    pub fn restore(&mut self, saved: &serde_json::Value) {
        self.first_ms = saved["first_ms"].as_i64();
        self.latest_end_ms = saved["latest_end_ms"].as_i64().unwrap_or(0);
        let lives: Vec<SavedLive> = serde_json::from_value(saved["thresholds"].clone()).unwrap_or_default();
        if lives.len() != self.thresholds.len() {
            return;
        }
        let watches: Vec<SavedWatch> = serde_json::from_value(saved["watches"].clone()).unwrap_or_default();
        if watches.len() == self.watches.len() {
            for (watch, saved) in self.watches.iter_mut().zip(watches) {
                watch.restore(saved);
            }
        }
        let mut restored = vec![false; self.watches.len()];
        for (live, saved) in self.thresholds.iter_mut().zip(lives) {
            // Saved by a broker that kept tallies per threshold: the first of a watch's stands for it.
            if let Some(total) = saved.total {
                if !std::mem::replace(&mut restored[live.watch], true) {
                    self.watches[live.watch].restore(SavedWatch { total, buckets: saved.buckets, span: saved.span });
                }
            }
            live.first_breach_ms = saved.first_breach_ms;
            live.reported = saved.reported;
        }
        self.evaluate();
    }
}

impl Live {
    fn window_text(&self) -> String {
        self.def.window.as_ref().map(|(w, _)| w.clone()).unwrap_or_default()
    }

    fn first_breach_text(&self) -> String {
        self.first_breach_ms.and_then(at).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default()
    }

    fn breach_text(&self, at_ms: i64) -> String {
        let value = self.value.map(shown).unwrap_or_default();
        let when = at(at_ms).map(|t| t.format("%H:%M:%S UTC").to_string()).unwrap_or_default();
        let scope = self.def.step.as_ref().map(|s| format!(" of step {s:?}")).unwrap_or_default();
        format!("threshold {} {}{scope} failed: {value} at {when}", self.def.key, self.def.text)
    }

    fn view(&self) -> ThresholdView {
        ThresholdView {
            metric: self.def.key.clone(),
            threshold: self.def.text.clone(),
            step: self.def.step.clone(),
            abort_on_fail: self.def.abort_on_fail,
            window: self.def.window.as_ref().map(|(w, _)| w.clone()),
            state: self.state,
            value: self.value,
            first_breach_at: self.first_breach_ms.and_then(at),
            note: self.note.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::life::Ending;
    use crate::domain::metrics::Aggregator;
    use crate::domain::thresholds::{parse_expr, parse_key};
    use crate::domain::views::Verdict;
    use loads_relay::histogram::{Buckets, Exponential};

    fn threshold(key: &str, text: &str) -> Threshold {
        Threshold {
            key: key.into(),
            metric: parse_key(key).unwrap(),
            text: text.into(),
            expr: parse_expr(text).unwrap(),
            step: None,
            abort_on_fail: false,
            delay_abort_ms: 0,
            window: None,
        }
    }

    /// One node's window of statsd `lines`, starting at second `second`.
    fn window(node: &str, second: i64, lines: &str) -> Window {
        let mut a = Aggregator::default();
        a.take(lines);
        let mut w = a.flush(1, second * 1000, 1000);
        w.node = node.into();
        w
    }

    fn lines(metric: &str, values: impl IntoIterator<Item = u32>) -> String {
        values.into_iter().map(|v| format!("{metric}:{v}|ms\n")).collect()
    }

    #[test]
    fn percentiles_are_judged_on_the_union_of_nodes_never_on_an_average_of_them() {
        // Node a: 1000 fast samples; node b: 100 slow ones. Their p(95)s are 10 and 300;
        // averaged (155) they would pass p(95)<200, but the union's p(95) is 300.
        let mut judge = Judge::new(vec![threshold("lat", "p(95)<200")]);
        judge.add("gen", "r", &window("a", 0, &lines("lat", std::iter::repeat_n(10, 1000))));
        judge.add("gen", "r", &window("b", 0, &lines("lat", std::iter::repeat_n(300, 100))));
        let (changed, _) = judge.evaluate();
        assert_eq!(changed[0].state, ThresholdState::Failing);
        // HDR histograms keep 3 significant digits: the value is 300 within 0.1%, as in the summary.
        assert!((changed[0].value.unwrap() - 300.0).abs() <= 0.3, "{changed:?}");
    }

    #[test]
    fn thresholds_on_one_selection_and_window_share_its_tallies_and_an_hour_keeps_sixty_buckets() {
        // 200 one-hour thresholds on one timer once kept a histogram per second each.
        let hourly = |bound: u32| Threshold { window: Some(("1h".into(), 3_600_000)), ..threshold("lat", &format!("p(95)<{bound}")) };
        let mut all: Vec<Threshold> = (0..200).map(|i| hourly(100 + i)).collect();
        all.push(threshold("lat", "p(95)<150"));
        all.push(Threshold { window: Some(("10s".into(), 10_000)), ..threshold("lat", "max<1000") });
        let mut judge = Judge::new(all);
        assert_eq!(judge.watches.len(), 3, "the hour's, the run's, the ten seconds'");
        for second in 0..4000 {
            judge.add("gen", "r", &window("a", second, &lines("lat", (0..10).map(|i| 100 + (second as u32 + i) % 100))));
            if second % 600 == 0 {
                judge.evaluate();
            }
        }
        let (_, _) = judge.evaluate();
        let hour = &judge.watches[judge.thresholds[0].watch];
        assert!(hour.buckets.len() <= 61, "{} buckets", hour.buckets.len());
        assert!(judge.watches[judge.thresholds[201].watch].buckets.len() <= 11);
        let views = judge.views();
        // Values 100..199 ms: p(95) of the last hour is 194 or so, whatever the bucket width.
        let p95 = views[0].value.unwrap();
        assert!((193.0..=196.0).contains(&p95), "{p95}");
        assert_eq!(views[0].state, ThresholdState::Failing, "p(95)<100 fails");
        assert_eq!(views[199].state, ThresholdState::Ok, "p(95)<299 holds");
        // Saved and taken back, every threshold reads the same.
        let saved = judge.saved();
        assert_eq!(saved["watches"].as_array().unwrap().len(), 3);
        let mut again = Judge::new(
            (0..200)
                .map(|i| hourly(100 + i))
                .chain([threshold("lat", "p(95)<150")])
                .chain([Threshold { window: Some(("10s".into(), 10_000)), ..threshold("lat", "max<1000") }])
                .collect(),
        );
        again.restore(&saved);
        assert_eq!(again.views().iter().map(|v| v.value).collect::<Vec<_>>(), views.iter().map(|v| v.value).collect::<Vec<_>>());
    }

    /// One node's window holding an exponential histogram of `values` (in `unit`) at scale 6.
    fn exponential_window(node: &str, unit: &str, values: &[f64]) -> Window {
        let scale = 6;
        let base = 2f64.powf(2f64.powi(-scale));
        let mut h = Exponential { unit: unit.into(), scale, ..Exponential::default() };
        for v in values {
            let index = (v.ln() / base.ln()).ceil() as i32 - 1;
            let positive = loads_relay::histogram::ExpBuckets { offset: index, counts: vec![1] };
            h.add(&Exponential {
                unit: unit.into(),
                scale,
                positive,
                count: 1,
                sum: *v,
                min: Some(*v),
                max: Some(*v),
                ..Exponential::default()
            })
            .unwrap();
        }
        let mut a = Aggregator::default();
        a.add_exponential("rpc;service.name=gen", &h).unwrap();
        let mut w = a.flush(1, 0, 1000);
        w.node = node.into();
        w
    }

    #[test]
    fn opentelemetry_histograms_are_judged_on_their_union_in_milliseconds() {
        // Seconds, as many SDKs send durations: 1000 values of 10 ms on a, 100 of 300 ms on b.
        let mut judge = Judge::new(vec![
            threshold("rpc", "p(95)<200"),
            threshold("rpc{service.name:gen}", "avg<50"),
            threshold("rpc", "count==1100"),
            threshold("rpc", "max<=300ms"),
        ]);
        judge.add("gen", "r", &exponential_window("a", "s", &[0.010; 1000]));
        judge.add("gen", "r", &exponential_window("b", "s", &[0.300; 100]));
        let views = judge.finish();
        let error = 2f64.powf(2f64.powi(-6)) - 1.0;
        assert_eq!(views[0].state, ThresholdState::Failed, "{views:?}");
        assert!((views[0].value.unwrap() - 300.0).abs() <= 300.0 * error, "the union's p(95), in ms: {views:?}");
        let mean = (1000.0 * 10.0 + 100.0 * 300.0) / 1100.0;
        assert!((views[1].value.unwrap() - mean).abs() < 1e-6, "{views:?}");
        assert_eq!((views[2].state, views[2].value), (ThresholdState::Passed, Some(1100.0)));
        assert_eq!(views[3].state, ThresholdState::Passed, "the largest value sent, 300 ms: {views:?}");
    }

    #[test]
    fn a_sliding_window_of_histograms_forgets_old_values() {
        let mut t = threshold("rpc", "p(99)<100");
        t.window = Some(("3s".into(), 3000));
        let mut judge = Judge::new(vec![t]);
        for second in 0..10 {
            let ms = if (4..6).contains(&second) { 500.0 } else { 10.0 };
            let mut w = exponential_window("a", "ms", &[ms; 10]);
            w.start_ms = second * 1000;
            judge.add("gen", "r", &w);
            judge.evaluate();
        }
        let view = &judge.views()[0];
        assert_eq!(view.state, ThresholdState::Ok, "seconds 7-9 are all fast: {view:?}");
        assert!((view.value.unwrap() - 10.0).abs() <= 0.2, "{view:?}");
        assert_eq!(judge.finish()[0].state, ThresholdState::Failed);
    }

    #[test]
    fn explicit_bucket_percentiles_are_judged_as_their_bucket_bound() {
        let mut judge = Judge::new(vec![threshold("http.duration", "p(95)<100"), threshold("http.duration", "p(50)<=50")]);
        for node in ["a", "b"] {
            let h = Buckets {
                unit: "ms".into(),
                bounds: vec![5.0, 50.0, 500.0],
                counts: vec![10, 80, 10, 0],
                count: 100,
                ..Buckets::default()
            };
            let mut a = Aggregator::default();
            a.add_buckets("http.duration", &h).unwrap();
            let mut w = a.flush(1, 0, 1000);
            w.node = node.into();
            judge.add("gen", "r", &w);
        }
        let views = judge.finish();
        assert_eq!((views[0].state, views[0].value), (ThresholdState::Failed, Some(500.0)), "p(95) falls in (50, 500]");
        assert_eq!((views[1].state, views[1].value), (ThresholdState::Passed, Some(50.0)));
    }

    #[test]
    fn counts_over_every_node_fail_where_each_node_alone_holds() {
        let mut each = Vec::new();
        for node in ["a", "b"] {
            let mut alone = Judge::new(vec![threshold("req", "count<100")]);
            alone.add("gen", "r", &window(node, 0, &"req:1|c\n".repeat(60)));
            each.push(alone.evaluate().0[0].state);
        }
        assert_eq!(each, [ThresholdState::Ok, ThresholdState::Ok]);
        let mut both = Judge::new(vec![threshold("req", "count<100")]);
        for node in ["a", "b"] {
            both.add("gen", "r", &window(node, 0, &"req:1|c\n".repeat(60)));
        }
        let (changed, _) = both.evaluate();
        assert_eq!((changed[0].state, changed[0].value), (ThresholdState::Failing, Some(120.0)));
    }

    #[test]
    fn filters_rates_ratios_and_gauges() {
        let mut judge = Judge::new(vec![
            threshold("req{status:error}", "rate<1"),
            threshold("req{status:error}/req", "value<0.1"),
            threshold("req{node:a}", "count==20"),
            threshold("conns", "value>=5"),
            threshold("conns", "max<4"),
        ]);
        for second in 0..10 {
            for node in ["a", "b"] {
                let errors = if node == "b" { "req:1|c|#status:error\n" } else { "" };
                judge.add("gen", "r", &window(node, second, &format!("req:2|c|#status:ok\n{errors}conns:3|g\n")));
            }
        }
        let views = judge.finish();
        let values: Vec<Option<f64>> = views.iter().map(|v| v.value).collect();
        // 10 errors over 10 s; 10 of 50 requests; node a's 20; two nodes' gauges summed (6), the largest seen (3).
        assert_eq!(values, [Some(1.0), Some(0.2), Some(20.0), Some(6.0), Some(3.0)]);
        let states: Vec<ThresholdState> = views.iter().map(|v| v.state).collect();
        use ThresholdState::*;
        assert_eq!(states, [Failed, Failed, Passed, Passed, Passed]);
    }

    #[test]
    fn what_never_arrives_is_zero_for_counts_and_fails_otherwise() {
        let mut judge = Judge::new(vec![threshold("errors", "count<1"), threshold("lat", "p(95)<200"), threshold("req", "p(95)<1")]);
        judge.add("gen", "r", &window("a", 0, "req:1|c\n"));
        let views = judge.finish();
        assert_eq!((views[0].state, views[0].value), (ThresholdState::Passed, Some(0.0)));
        assert_eq!((views[1].state, views[1].note.as_deref()), (ThresholdState::Failed, Some("no samples of lat")));
        assert!(views[2].note.as_deref().unwrap().contains("req is a counter"), "{views:?}");
    }

    #[test]
    fn a_sliding_window_forgets_old_samples_and_a_breach_in_any_window_fails() {
        let mut t = threshold("lat", "avg<100");
        t.window = Some(("3s".into(), 3000));
        let mut judge = Judge::new(vec![t]);
        for second in 0..10 {
            let ms = if (4..6).contains(&second) { 500 } else { 10 };
            judge.add("gen", "r", &window("a", second, &lines("lat", [ms])));
            judge.evaluate();
        }
        let view = &judge.views()[0];
        assert_eq!(view.state, ThresholdState::Ok);
        assert!((view.value.unwrap() - 10.0).abs() <= 0.01, "seconds 7-9 are all fast: {view:?}");
        let end = judge.finish();
        assert_eq!(end[0].state, ThresholdState::Failed, "{end:?}");
        assert!(end[0].note.as_deref().unwrap().starts_with("failed in a 3s window"), "{end:?}");
    }

    #[test]
    fn an_abort_on_fail_threshold_breaches_once_after_its_delay() {
        let mut t = threshold("lat", "p(99)<500");
        t.abort_on_fail = true;
        t.delay_abort_ms = 3000;
        let mut judge = Judge::new(vec![t]);
        let mut breaches = Vec::new();
        for second in 0..6 {
            judge.add("gen", "r", &window("a", second, &lines("lat", [900])));
            if let (_, Some(b)) = judge.evaluate() {
                breaches.push((second, b));
            }
        }
        assert_eq!(breaches.len(), 1, "{breaches:?}");
        let (second, breach) = &breaches[0];
        assert_eq!(*second, 2, "the window ending 3 s after the first one started");
        assert_eq!(breach.at_ms, 3000);
        assert!(breach.reason.starts_with("threshold lat p(99)<500 failed: 900."), "{}", breach.reason);
        assert!(breach.reason.ends_with(" at 00:00:03 UTC"), "{}", breach.reason);
    }

    #[test]
    fn steps_own_thresholds_see_only_their_step() {
        let mut t = threshold("req", "count<5");
        t.metric = t.metric.scoped_to("gen");
        let mut judge = Judge::new(vec![t]);
        judge.add("gen", "r", &window("a", 0, "req:3|c\n"));
        judge.add("other", "r", &window("b", 0, "req:30|c\n"));
        assert_eq!(judge.finish()[0].value, Some(3.0));
    }

    #[test]
    fn a_restarted_judge_goes_on_where_it_was() {
        let mut t = threshold("lat", "count<10");
        t.window = Some(("60s".into(), 60_000));
        let make = || Judge::new(vec![threshold("req", "count<10"), t.clone()]);
        let mut before = make();
        before.add("gen", "r", &window("a", 0, &format!("req:4|c\n{}", lines("lat", [1, 2, 3]))));
        before.evaluate();
        let mut after = make();
        after.restore(&serde_json::from_str(&before.saved().to_string()).unwrap());
        after.add("gen", "r", &window("a", 1, &format!("req:7|c\n{}", lines("lat", [4]))));
        let values: Vec<Option<f64>> = after.finish().iter().map(|v| v.value).collect();
        assert_eq!(values, [Some(11.0), Some(4.0)]);
    }

    fn view(state: ThresholdState) -> ThresholdView {
        ThresholdView {
            metric: "lat".into(),
            threshold: "p(95)<200".into(),
            step: None,
            abort_on_fail: false,
            window: None,
            state,
            value: Some(250.0),
            first_breach_at: None,
            note: None,
        }
    }

    #[test]
    fn verdicts_follow_their_precedence() {
        let hot = Saturation { step: "gen".into(), node: "s1n0".into(), busy_seconds: 12, share: 0.4, cpu_percent: 90.0 };
        let failed = [view(ThresholdState::Failed)];
        let passed = [view(ThresholdState::Passed)];
        let v = |ending: Ending, t: &[ThresholdView], s: &[Saturation], r: &[String], f: bool| verdict(&ending, t, s, &[], r, f).0;
        let hot_nodes = std::slice::from_ref(&hot);
        assert_eq!(v(Ending::Aborted, &failed, hot_nodes, &[], false), Verdict::Aborted);
        assert_eq!(v(Ending::StepFailed("x".into()), &failed, hot_nodes, &[], false), Verdict::Error);
        assert_eq!(v(Ending::Finished, &failed, hot_nodes, &[], false), Verdict::Invalid);
        assert_eq!(v(Ending::Breached("threshold lat".into()), &failed, &[], &[], false), Verdict::Failed);
        assert_eq!(v(Ending::Finished, &failed, &[], &[], false), Verdict::Failed);
        let regressed = ["lat p(95) +10%".to_string()];
        assert_eq!(v(Ending::Finished, &passed, &[], &regressed, true), Verdict::Failed);
        assert_eq!(v(Ending::Finished, &passed, &[], &regressed, false), Verdict::Passed);
        assert_eq!(v(Ending::Finished, &[], &[], &[], false), Verdict::Passed);
        let lost = ["3 window(s) of step \"gen\" refused (3 from nodes it was not granted, 0 dated outside the run)".to_string()];
        let (verdict_lost, why) = verdict(&Ending::Finished, &passed, &[], &lost, &[], false);
        assert_eq!(verdict_lost, Verdict::Invalid, "missing numbers outrank a pass");
        assert!(why.starts_with("numbers are missing: 3 window(s)"), "{why}");
        assert_eq!(verdict(&Ending::Breached("x".into()), &failed, &[], &lost, &[], false).0, Verdict::Invalid);
        assert_eq!(verdict(&Ending::Aborted, &passed, &[], &lost, &[], false).0, Verdict::Aborted);
        let (_, why) = verdict(&Ending::Finished, &[], &[hot], &[], &[], false);
        assert!(why.starts_with("generator node s1n0 of step \"gen\" ran its CPU above 90% for 12 s (40% of its windows)"), "{why}");
        let (_, why) = verdict(&Ending::Finished, &failed, &[], &[], &[], false);
        assert_eq!(why, "thresholds failed: lat p(95)<200: value 250");
    }
}
