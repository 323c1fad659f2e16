//! What the collector holds of a live run: each step's numbers, the run's judge, the
//! windows ready to publish and store, and how it is saved every second and taken
//! back after a restart.

use std::collections::{BTreeMap, HashMap};

use actix::Recipient;
use uuid::Uuid;

use super::{MetricsPublished, ThresholdsJudged};
use crate::domain::aggregate::{SavedStep, StepMetrics};
use crate::domain::judge::Judge;
use crate::domain::metrics::{Merged, TimerStats};
use crate::feed::RegionWindow;
use crate::infra::influx::{window_points, Influx, Point, PointTags};

/// How long a window slot waits for slow nodes before it is published anyway.
const LATE_MS: i64 = 3000;

/// A run whose metrics are being collected.
pub(super) struct LiveRun {
    pub(super) token: String,
    pub(super) plan: String,
    /// Where its points go: the configured database, or the run's own (a monitor step).
    pub(super) influx: Option<Influx>,
    pub(super) feed: Recipient<MetricsPublished>,
    pub(super) steps: HashMap<Uuid, StepMetrics>,
    /// Windows arrived since the totals were last written to the database.
    pub(super) dirty: bool,
    /// The run's thresholds, judged as windows arrive, and who is told.
    pub(super) judge: Judge,
    pub(super) judged: Recipient<ThresholdsJudged>,
    /// Published windows not yet added to the run's stored series: (step, start ms, point JSON).
    pub(super) series: Vec<(String, i64, String)>,
    /// When the run began (Unix ms): windows must start after it, give or take `windows::CLOCK_MARGIN_MS`.
    pub(super) since_ms: i64,
    /// Times the collector failed while it held this run and started again from its saved totals.
    pub(super) restarts: u32,
}

impl LiveRun {
    /// The totals of every step and the thresholds' judging, as JSON.
    pub(super) fn saved(&self) -> String {
        let steps: BTreeMap<String, SavedStep> = self.steps.iter().map(|(id, s)| (id.to_string(), s.saved())).collect();
        serde_json::json!({"steps": steps, "judge": self.judge.saved(), "since_ms": self.since_ms, "restarts": self.restarts}).to_string()
    }

    /// Takes back totals written by `saved` (or by brokers before thresholds: the steps alone).
    pub(super) fn restore(&mut self, text: &str) {
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let steps = if value.get("steps").is_some() { &value["steps"] } else { &value };
        let Ok(mut steps) = serde_json::from_value::<BTreeMap<String, SavedStep>>(steps.clone()) else {
            tracing::warn!("the saved metrics of a run could not be read; its totals start again");
            return;
        };
        if let Some(judge) = value.get("judge") {
            self.judge.restore(judge);
        }
        if let Some(since) = value.get("since_ms").and_then(serde_json::Value::as_i64) {
            self.since_ms = self.since_ms.min(since);
        }
        if let Some(restarts) = value.get("restarts").and_then(serde_json::Value::as_u64) {
            self.restarts = self.restarts.max(u32::try_from(restarts).unwrap_or(u32::MAX));
        }
        for (id, step) in &mut self.steps {
            if let Some(saved) = steps.remove(&id.to_string()) {
                step.restore(saved);
            }
        }
    }

    /// Takes the slots that are complete, or late, or all of them (`everything`): their
    /// InfluxDB points and their merged windows for the feed.
    pub(super) fn take_ready(&mut self, run_id: Uuid, now_ms: i64, everything: bool) -> (Vec<(Uuid, Point)>, Vec<MetricsPublished>) {
        let mut points = Vec::new();
        let mut out = Vec::new();
        for (step_id, step) in self.steps.iter_mut() {
            let ready: Vec<i64> = step
                .slots
                .iter()
                .filter(|(_, s)| everything || s.nodes.len() >= step.nodes || now_ms - s.first_seen_ms >= LATE_MS)
                .map(|(k, _)| *k)
                .collect();
            for key in ready {
                if let Some(slot) = step.slots.remove(&key) {
                    let tags = PointTags {
                        run: run_id.to_string(),
                        plan: self.plan.clone(),
                        step: step.name.clone(),
                        node: "all".into(),
                        series: step.series.clone(),
                        region: step.merged_region(),
                    };
                    let seconds = |merged: &Merged, nodes: usize| (merged.duration_ms as f64 / 1000.0 / nodes.max(1) as f64).max(1.0);
                    let merged_points = window_points(&tags, key, &slot.merged, seconds(&slot.merged, slot.nodes.len()), None);
                    points.extend(merged_points.into_iter().map(|p| (*step_id, p)));
                    let mut regions = BTreeMap::new();
                    for (region, (nodes, merged)) in &slot.by_region {
                        let tags = PointTags { region: region.clone(), ..tags.clone() };
                        let region_points = window_points(&tags, key, merged, seconds(merged, nodes.len()), None);
                        points.extend(region_points.into_iter().map(|p| (*step_id, p)));
                        regions.insert(
                            region.clone(),
                            RegionWindow {
                                nodes: nodes.len(),
                                counters: merged.counters.clone(),
                                timers: merged.timers.iter().map(|(k, h)| (k.clone(), TimerStats::of(h))).collect(),
                                histograms: merged.histogram_stats(),
                            },
                        );
                    }
                    let published = MetricsPublished {
                        step: step.name.clone(),
                        start_ms: key,
                        nodes: slot.nodes.len(),
                        counters: slot.merged.counters.clone(),
                        timers: slot.merged.timers.iter().map(|(k, h)| (k.clone(), TimerStats::of(h))).collect(),
                        histograms: slot.merged.histogram_stats(),
                        cpu: slot.cpu,
                        regions,
                        overflow: step.overflow.total(),
                    };
                    let point = serde_json::json!({
                        "t": key, "nodes": published.nodes, "counters": published.counters, "timers": published.timers,
                        "histograms": published.histograms, "cpu": published.cpu,
                    });
                    self.series.push((step.name.clone(), key, point.to_string()));
                    out.push(published);
                }
            }
        }
        (points, out)
    }
}
