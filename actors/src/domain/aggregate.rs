//! A step's numbers as its nodes' windows arrive: which windows it takes (once
//! each, from its own nodes, dated within the run), its exact totals (overall, per
//! region, per node's host), the slots of merged windows waiting to be published,
//! what it keeps across a broker restart, and at the end its summary rows, its
//! saturated generators and what its numbers miss. Pure: the `MetricsActor`
//! routes windows here and writes what comes out.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use loads_relay::cardinality::Overflow;
use uuid::Uuid;

use super::judge::{Judge, Saturation};
use super::metrics::{Merged, TimerStats, Window};
use super::views::{MetricSummaryView, SERIES_OVERFLOW};
use super::windows::{self, NodeWindows, Refusal};

pub struct Slot {
    pub merged: Merged,
    pub nodes: HashSet<String>,
    /// A step over several regions: each region's nodes and their merged windows.
    pub by_region: BTreeMap<String, (HashSet<String>, Merged)>,
    /// Each reporting node's CPU use, percent.
    pub cpu: BTreeMap<String, f64>,
    pub first_seen_ms: i64,
}

/// A node's host over a step: sums for means, maxima, and, of the windows in which
/// its generator reported (it was running), how many were busy.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostTotals {
    pub samples: u64,
    #[serde(default)]
    pub active: u64,
    pub busy: u64,
    pub sums: [f64; 4],
    pub maxima: [f64; 4],
}

pub const HOST_FIELDS: [&str; 4] = ["host.cpu_percent", "host.memory_percent", "host.net_rx_bytes_per_s", "host.net_tx_bytes_per_s"];

/// CPU above which a window counts as busy, the share of busy windows that means
/// saturated, and the fewest busy windows (seconds) that do.
pub const BUSY_CPU_PERCENT: f64 = 90.0;
pub const SATURATED_SHARE: f64 = 0.10;
pub const SATURATED_SECONDS: u64 = 3;

pub struct StepMetrics {
    pub name: String,
    pub series: String,
    /// The region of a node not placed (its step's first).
    pub region: String,
    /// Whether the step spreads over several regions.
    pub several: bool,
    /// Each node's region, as the step placed them.
    pub node_regions: BTreeMap<String, String>,
    /// A step over several regions: each region's totals.
    pub by_region: BTreeMap<String, Merged>,
    pub nodes: usize,
    pub generator: bool,
    pub hosts: BTreeMap<String, HostTotals>,
    pub totals: Merged,
    pub windows: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    /// Statsd datagrams each node's kernel dropped before its relay read them.
    pub kernel_drops: BTreeMap<String, u64>,
    /// Each node's gauges as its last window had them; the step's are their sum.
    pub gauges: BTreeMap<String, BTreeMap<String, f64>>,
    pub slots: BTreeMap<i64, Slot>,
    /// InfluxDB points of this step that could not be written.
    pub unwritten: u64,
    /// Each node's windows taken so far, so that one delivered again counts once.
    pub delivered: BTreeMap<String, NodeWindows>,
    /// Windows delivered again and ignored.
    pub duplicates: u64,
    /// Windows refused: from a node the step was not granted, dated outside the run.
    pub refused: Refused,
    /// The series the step keeps (at most `max_series`).
    pub keys: HashSet<String>,
    pub max_series: usize,
    /// Values not kept because their series came past a cap (the relays' or the step's), by pattern.
    pub overflow: Overflow,
    /// Windows that tripped a fault in the broker while being taken.
    pub faulted: u64,
}

/// Windows a step refused, by why.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Refused {
    pub unknown_node: u64,
    pub out_of_time: u64,
}

impl Refused {
    pub fn total(&self) -> u64 {
        self.unknown_node.saturating_add(self.out_of_time)
    }
}

impl StepMetrics {
    /// A step with nothing collected yet, in `regions` (its nodes are placed later; the
    /// first until then), of `nodes` nodes, keeping at most `max_series` series.
    pub fn new(name: String, series: String, regions: &[String], nodes: usize, generator: bool, max_series: usize) -> Self {
        StepMetrics {
            name,
            series,
            region: regions.first().cloned().unwrap_or_default(),
            several: regions.len() > 1,
            node_regions: BTreeMap::new(),
            by_region: BTreeMap::new(),
            nodes,
            generator,
            hosts: BTreeMap::new(),
            totals: Merged::default(),
            windows: BTreeMap::new(),
            dropped: BTreeMap::new(),
            kernel_drops: BTreeMap::new(),
            gauges: BTreeMap::new(),
            slots: BTreeMap::new(),
            unwritten: 0,
            delivered: BTreeMap::new(),
            duplicates: 0,
            refused: Refused::default(),
            keys: HashSet::new(),
            max_series,
            overflow: Overflow::default(),
            faulted: 0,
        }
    }

    /// `w` with only the series the step keeps: those it has, and new ones while it has
    /// room for them; each other series' value in the window is counted as overflow, as are
    /// the values the window's relay did not keep.
    pub fn capped<'w>(&mut self, w: &'w Window) -> Cow<'w, Window> {
        self.overflow.add(&w.overflow);
        let keys = w
            .counters
            .keys()
            .chain(w.gauges.keys())
            .chain(w.sets.keys())
            .chain(w.timers.keys())
            .chain(w.buckets.keys())
            .chain(w.exponential.keys());
        let mut dropped = Vec::new();
        for key in keys {
            if self.keys.contains(key) {
                continue;
            }
            if self.keys.len() < self.max_series {
                self.keys.insert(key.clone());
            } else {
                dropped.push(key.clone());
            }
        }
        if dropped.is_empty() {
            return Cow::Borrowed(w);
        }
        let mut kept = w.clone();
        for key in &dropped {
            self.overflow.count(key, 1);
            kept.counters.remove(key);
            kept.gauges.remove(key);
            kept.sets.remove(key);
            kept.timers.remove(key);
            kept.buckets.remove(key);
            kept.exponential.remove(key);
        }
        Cow::Owned(kept)
    }

    /// The region of `node`.
    pub fn region_of(&self, node: &str) -> String {
        self.node_regions.get(node).cloned().unwrap_or_else(|| self.region.clone())
    }

    /// The tag of points merged over every node: the region, or `all` for a step over several.
    pub fn merged_region(&self) -> String {
        if self.several {
            "all".into()
        } else {
            self.region.clone()
        }
    }

    /// Takes `w`'s gauges as its node's current values (a window carries the gauges set in
    /// it) and makes the step's the sum of its nodes', never a sum over windows.
    pub fn last_gauges(&mut self, w: &Window) {
        self.gauges.entry(w.node.clone()).or_default().extend(w.gauges.iter().map(|(k, v)| (k.clone(), *v)));
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for (key, value) in self.gauges.values().flatten() {
            let sum = sums.entry(key.clone()).or_default();
            *sum = (*sum + value).clamp(f64::MIN, f64::MAX);
        }
        self.totals.gauges = sums;
    }
}

/// A step's totals as written to the database every second, so a restarted broker carries them on.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct SavedStep {
    pub totals: Window,
    pub windows: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    #[serde(default)]
    pub kernel_drops: BTreeMap<String, u64>,
    #[serde(default)]
    pub gauges: BTreeMap<String, BTreeMap<String, f64>>,
    pub hosts: BTreeMap<String, HostTotals>,
    #[serde(default)]
    pub node_regions: BTreeMap<String, String>,
    #[serde(default)]
    pub by_region: BTreeMap<String, Window>,
    #[serde(default)]
    pub delivered: BTreeMap<String, NodeWindows>,
    #[serde(default)]
    pub duplicates: u64,
    #[serde(default)]
    pub refused: Refused,
    #[serde(default)]
    pub overflow: BTreeMap<String, u64>,
}

impl StepMetrics {
    /// What of the step is saved every second, so a restarted broker carries its totals on.
    pub fn saved(&self) -> SavedStep {
        SavedStep {
            totals: self.totals.to_window(),
            windows: self.windows.clone(),
            dropped: self.dropped.clone(),
            kernel_drops: self.kernel_drops.clone(),
            gauges: self.gauges.clone(),
            hosts: self.hosts.clone(),
            node_regions: self.node_regions.clone(),
            by_region: self.by_region.iter().map(|(r, m)| (r.clone(), m.to_window())).collect(),
            delivered: self.delivered.clone(),
            duplicates: self.duplicates,
            refused: self.refused.clone(),
            overflow: self.overflow.0.clone(),
        }
    }

    /// Takes back what `saved` kept; the series kept are those its totals hold.
    pub fn restore(&mut self, saved: SavedStep) {
        self.totals = merged_of(&saved.totals);
        self.windows = saved.windows;
        self.dropped = saved.dropped;
        self.kernel_drops = saved.kernel_drops;
        self.gauges = saved.gauges;
        self.hosts = saved.hosts;
        self.node_regions = saved.node_regions;
        self.by_region = saved.by_region.iter().map(|(r, w)| (r.clone(), merged_of(w))).collect();
        self.delivered = saved.delivered;
        self.duplicates = saved.duplicates;
        self.refused = saved.refused;
        self.overflow = Overflow(saved.overflow);
        let totals = &self.totals;
        let kept = totals.counters.keys().chain(totals.gauges.keys()).chain(totals.sets.keys()).chain(totals.timers.keys());
        self.keys = kept.chain(totals.buckets.keys()).chain(totals.exponential.keys()).cloned().collect();
    }
}

/// Totals taken back from a saved window.
pub fn merged_of(w: &Window) -> Merged {
    let mut m = Merged::default();
    m.add(w);
    m
}

/// A generator step's nodes that ran their CPU above the busy line for more than
/// `SATURATED_SHARE` of their windows, and at least `SATURATED_SECONDS`.
pub fn saturated(step: &StepMetrics) -> Vec<Saturation> {
    if !step.generator {
        return Vec::new();
    }
    step.hosts
        .iter()
        .filter(|(_, h)| h.active > 0 && h.busy as f64 / h.active as f64 > SATURATED_SHARE && h.busy >= SATURATED_SECONDS)
        .map(|(node, h)| Saturation {
            step: step.name.clone(),
            node: node.clone(),
            busy_seconds: h.busy,
            share: h.busy as f64 / h.active as f64,
            cpu_percent: BUSY_CPU_PERCENT,
        })
        .collect()
}

/// Adds an admitted window to its step (totals, regions, gauges, hosts, the slot to
/// publish) and to the run's judge.
pub fn take_window(step: &mut StepMetrics, judge: &mut Judge, w: &Window, now: i64) {
    let region = step.region_of(&w.node);
    step.totals.add(w);
    if step.several {
        step.by_region.entry(region.clone()).or_default().add(w);
    }
    step.last_gauges(w);
    judge.add(&step.name, &region, w);
    if w.lines > 0 {
        *step.windows.entry(w.node.clone()).or_default() += 1;
    }
    step.dropped.insert(w.node.clone(), w.dropped_windows);
    let drops = step.kernel_drops.entry(w.node.clone()).or_default();
    *drops = (*drops).max(w.kernel_drops);
    if let Some(h) = &w.host {
        let totals = step.hosts.entry(w.node.clone()).or_default();
        let values = [h.cpu_percent, h.memory_percent, h.net_rx_bytes_per_s, h.net_tx_bytes_per_s];
        totals.samples += 1;
        if w.lines > 0 {
            totals.active += 1;
            totals.busy += u64::from(h.cpu_percent > BUSY_CPU_PERCENT);
        }
        for (i, v) in values.iter().enumerate() {
            totals.sums[i] += v;
            totals.maxima[i] = totals.maxima[i].max(*v);
        }
    }
    let slot = step.slots.entry(w.start_ms / 1000 * 1000).or_insert_with(|| Slot {
        merged: Merged::default(),
        nodes: HashSet::new(),
        by_region: BTreeMap::new(),
        cpu: BTreeMap::new(),
        first_seen_ms: now,
    });
    slot.merged.add(w);
    slot.nodes.insert(w.node.clone());
    if step.several {
        let (nodes, merged) = slot.by_region.entry(region).or_default();
        nodes.insert(w.node.clone());
        merged.add(w);
    }
    if let Some(h) = &w.host {
        slot.cpu.insert(w.node.clone(), h.cpu_percent);
    }
}

/// Whether `step` takes window `w`: from one of its nodes, dated within the run, not taken before.
pub fn admit(step: &mut StepMetrics, since_ms: i64, now_ms: i64, w: &Window) -> Result<(), Refusal> {
    if !step.node_regions.contains_key(&w.node) {
        return Err(Refusal::UnknownNode);
    }
    if !windows::within_run(w.start_ms, since_ms, now_ms) {
        return Err(Refusal::OutOfTime);
    }
    if !step.delivered.entry(w.node.clone()).or_default().first(w.epoch, w.seq) {
        return Err(Refusal::Duplicate);
    }
    Ok(())
}

/// A summary row of nothing yet.
pub fn summary_row(step_id: Uuid, step: &StepMetrics, metric: &str, kind: &str, count: f64) -> MetricSummaryView {
    MetricSummaryView {
        step_id,
        step_name: step.name.clone(),
        metric: metric.to_string(),
        kind: kind.to_string(),
        count,
        rate: None,
        min: None,
        mean: None,
        p50: None,
        p90: None,
        p95: None,
        p99: None,
        max: None,
        unit: None,
        relative_error: None,
        region: None,
    }
}

/// The rows of `totals`' errors, counters, timers and histograms (rates over `seconds`).
pub fn sample_rows(step_id: Uuid, step: &StepMetrics, totals: &Merged, seconds: f64) -> Vec<MetricSummaryView> {
    let row = |metric: &str, kind: &str, count: f64| summary_row(step_id, step, metric, kind, count);
    let mut out = Vec::new();
    // Errors: counters whose name or tags say error (`fail;status=error`, `http.errors`).
    let errors: f64 = totals.counters.iter().filter(|(k, _)| k.contains("error")).map(|(_, v)| v).sum();
    out.push(MetricSummaryView { rate: Some(errors / seconds), ..row("errors", "errors", errors) });
    for (k, v) in &totals.counters {
        out.push(MetricSummaryView { rate: Some(v / seconds), ..row(k, "counter", *v) });
    }
    for (k, h) in &totals.timers {
        let s = TimerStats::of(h);
        out.push(MetricSummaryView {
            rate: Some(s.count as f64 / seconds),
            min: Some(s.min),
            mean: Some(s.mean),
            p50: Some(s.p50),
            p90: Some(s.p90),
            p95: Some(s.p95),
            p99: Some(s.p99),
            max: Some(s.max),
            ..row(k, "timer", s.count as f64)
        });
    }
    // OpenTelemetry histograms: explicit-bucket percentiles are the bucket's upper bound,
    // exponential ones within the relative error of their scale (see `loads_relay::histogram`).
    for (k, h) in totals.histogram_stats() {
        let kind = if h.kind == "buckets" { "histogram" } else { "exponential_histogram" };
        out.push(MetricSummaryView {
            rate: Some(h.count as f64 / seconds),
            min: h.min,
            mean: h.mean,
            p50: h.p50,
            p90: h.p90,
            p95: h.p95,
            p99: h.p99,
            max: h.max,
            unit: Some(h.unit.clone()).filter(|u| !u.is_empty()),
            relative_error: h.relative_error,
            ..row(&k, kind, h.count as f64)
        });
    }
    out
}

pub fn summarise(step_id: Uuid, step: &StepMetrics) -> Vec<MetricSummaryView> {
    // The active time of some of the step's nodes: the most windows in which any one of them
    // received data (plus windows it lost), times the one-second window.
    let seconds_of = |nodes: &mut dyn Iterator<Item = (&String, &u64)>| {
        nodes.map(|(node, n)| n + step.dropped.get(node).copied().unwrap_or(0)).max().unwrap_or(0).max(1) as f64
    };
    let seconds = seconds_of(&mut step.windows.iter());
    let row = |metric: &str, kind: &str, count: f64| summary_row(step_id, step, metric, kind, count);
    let mut out = sample_rows(step_id, step, &step.totals, seconds);
    for (k, v) in &step.totals.gauges {
        out.push(row(k, "gauge", *v));
    }
    for (k, v) in &step.totals.sets {
        out.push(row(k, "set", *v as f64));
    }
    for (i, field) in HOST_FIELDS.iter().enumerate() {
        let samples: u64 = step.hosts.values().map(|h| h.samples).sum();
        if samples > 0 {
            let mean = step.hosts.values().map(|h| h.sums[i]).sum::<f64>() / samples as f64;
            let max = step.hosts.values().map(|h| h.maxima[i]).fold(0.0, f64::max);
            out.push(MetricSummaryView { mean: Some(mean), max: Some(max), ..row(field, "host", samples as f64) });
        }
    }
    out.push(row("generator_saturated", "flag", f64::from(u8::from(!saturated(step).is_empty()))));
    out.push(row("relay.lines", "relay", step.totals.lines as f64));
    out.push(row("relay.malformed", "relay", step.totals.malformed as f64));
    out.push(row("relay.windows_dropped", "relay", step.dropped.values().sum::<u64>() as f64));
    out.push(row("relay.windows_refused", "relay", step.refused.total() as f64));
    out.push(row(SERIES_OVERFLOW, "overflow", step.overflow.total() as f64));
    for (pattern, n) in &step.overflow.0 {
        out.push(row(&format!("{SERIES_OVERFLOW};pattern={pattern}"), "overflow", *n as f64));
    }
    out.push(row("relay.windows_duplicate", "relay", step.duplicates as f64));
    out.push(row("relay.kernel_drops", "relay", step.kernel_drops.values().sum::<u64>() as f64));
    for (node, drops) in step.kernel_drops.iter().filter(|(_, d)| **d > 0) {
        out.push(row(&format!("relay.kernel_drops;node={node}"), "relay", *drops as f64));
    }
    if step.unwritten > 0 {
        out.push(row("influx.points_unwritten", "influx", step.unwritten as f64));
    }
    // A step over several regions: each region's samples, over its own nodes' time.
    for (region, totals) in &step.by_region {
        let seconds = seconds_of(&mut step.windows.iter().filter(|(node, _)| step.region_of(node) == *region));
        let rows = sample_rows(step_id, step, totals, seconds);
        out.extend(rows.into_iter().map(|r| MetricSummaryView { region: Some(region.clone()), ..r }));
    }
    out
}

/// What a step's numbers are missing: windows refused, or never delivered.
pub fn lost(step: &StepMetrics) -> Vec<String> {
    let mut out = Vec::new();
    let refused = &step.refused;
    if refused.total() > 0 {
        out.push(format!(
            "{} window(s) of step {:?} refused ({} from nodes it was not granted, {} dated outside the run)",
            refused.total(),
            step.name,
            refused.unknown_node,
            refused.out_of_time
        ));
    }
    if step.overflow.total() > 0 {
        let mut patterns: Vec<(&String, &u64)> = step.overflow.0.iter().collect();
        patterns.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = patterns.iter().take(3).map(|(p, n)| format!("{p} {n}")).collect();
        out.push(format!(
            "{} value(s) of step {:?} not kept: their series came past a cap of series (metrics.max_series_per_window, \
             metrics.max_series_per_step), most under {}",
            step.overflow.total(),
            step.name,
            top.join(", ")
        ));
    }
    if step.faulted > 0 {
        out.push(format!("{} window(s) of step {:?} could not be taken (a fault in the broker: see its log)", step.faulted, step.name));
    }
    let dropped: u64 = step.dropped.values().sum();
    if dropped > 0 {
        out.push(format!("{dropped} window(s) of step {:?} never delivered (its relays' buffers overflowed)", step.name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(generator: bool, busy: u64, samples: u64) -> StepMetrics {
        let host =
            HostTotals { samples, active: samples, busy, sums: [50.0 * samples as f64, 0.0, 0.0, 0.0], maxima: [95.0, 0.0, 0.0, 0.0] };
        let step = StepMetrics::new("gen".into(), "gen".into(), &["local".to_string()], 1, generator, 100);
        StepMetrics { hosts: BTreeMap::from([("s0n0".to_string(), host)]), ..step }
    }

    fn flag(rows: &[MetricSummaryView]) -> f64 {
        rows.iter().find(|r| r.metric == "generator_saturated").unwrap().count
    }

    #[test]
    fn a_generator_busy_for_more_than_a_tenth_of_its_windows_is_saturated() {
        let id = Uuid::new_v4();
        assert_eq!(flag(&summarise(id, &step(true, 11, 100))), 1.0);
        assert_eq!(flag(&summarise(id, &step(true, 10, 100))), 0.0, "exactly 10% is not more than 10%");
        assert_eq!(flag(&summarise(id, &step(true, 2, 4))), 0.0, "two busy seconds are a spike, not saturation");
        assert_eq!(saturated(&step(true, 3, 4))[0].busy_seconds, 3);
        assert_eq!(flag(&summarise(id, &step(false, 100, 100))), 0.0, "a busy service under test is not a saturated generator");
        let cpu = summarise(id, &step(true, 0, 4)).into_iter().find(|r| r.metric == "host.cpu_percent").unwrap();
        assert_eq!((cpu.mean, cpu.max), (Some(50.0), Some(95.0)));
    }

    fn window(node: &str, seq: u64, start_ms: i64, hits: f64) -> Window {
        Window {
            node: node.into(),
            seq,
            epoch: 1,
            start_ms,
            duration_ms: 1000,
            lines: 1,
            counters: BTreeMap::from([("hits".to_string(), hits)]),
            ..Window::default()
        }
    }

    #[test]
    fn a_step_takes_each_window_of_its_own_nodes_once_within_the_run() {
        let mut step = StepMetrics::new("gen".into(), "gen".into(), &["local".to_string()], 1, true, 100);
        step.node_regions.insert("s0n0".into(), "local".into());
        let (since, now) = (1_000_000, 1_010_000);
        let mut judge = Judge::new(Vec::new());
        let first = window("s0n0", 1, since + 1000, 2.0);
        assert_eq!(admit(&mut step, since, now, &first), Ok(()));
        take_window(&mut step, &mut judge, &first, now);
        assert_eq!(admit(&mut step, since, now, &first), Err(Refusal::Duplicate), "delivered again");
        assert_eq!(admit(&mut step, since, now, &window("s9n9", 1, since + 1000, 1.0)), Err(Refusal::UnknownNode));
        assert_eq!(admit(&mut step, since, now, &window("s0n0", 2, since - 3_600_000, 1.0)), Err(Refusal::OutOfTime));
        let second = window("s0n0", 2, since + 2000, 3.0);
        assert_eq!(admit(&mut step, since, now, &second), Ok(()));
        take_window(&mut step, &mut judge, &second, now);
        assert_eq!(step.totals.counters.get("hits"), Some(&5.0));
        assert_eq!(step.windows.get("s0n0"), Some(&2));
        assert_eq!(step.slots.len(), 2, "one slot to publish per second");
        assert!(lost(&step).is_empty(), "{:?}", lost(&step));
    }

    #[test]
    fn a_saved_step_comes_back_with_its_totals_and_what_it_already_took() {
        let mut step = StepMetrics::new("gen".into(), "gen".into(), &["local".to_string()], 1, true, 100);
        step.node_regions.insert("s0n0".into(), "local".into());
        let (since, now) = (1_000_000, 1_010_000);
        let mut judge = Judge::new(Vec::new());
        let first = window("s0n0", 1, since + 1000, 2.0);
        admit(&mut step, since, now, &first).unwrap();
        take_window(&mut step, &mut judge, &first, now);
        let text = serde_json::to_string(&step.saved()).unwrap();
        let mut again = StepMetrics::new("gen".into(), "gen".into(), &["local".to_string()], 1, true, 100);
        again.restore(serde_json::from_str(&text).unwrap());
        assert_eq!(again.totals.counters.get("hits"), Some(&2.0));
        assert_eq!(again.windows, step.windows);
        assert_eq!(again.node_regions, step.node_regions);
        assert!(again.keys.contains("hits"), "the series kept are those of its totals");
        assert_eq!(admit(&mut again, since, now, &first), Err(Refusal::Duplicate), "a window taken before the save is not taken twice");
        assert_eq!(admit(&mut again, since, now, &window("s0n0", 2, since + 2000, 1.0)), Ok(()));
    }
}
