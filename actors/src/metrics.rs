//! `MetricsActor`: receives the relays' windows, checks each against its run's
//! token, merges the windows of all nodes of a step exactly, publishes each
//! merged window on the run's feed, and stores a summary of every step's
//! metrics when the run ends.
//!
//! A step's totals take every window as it arrives, so the summary is exact
//! whatever the arrival order. Merged windows for the feed are published once
//! every node of the step has reported that window, or 3 s late at most.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message, Recipient, ResponseFuture};
use sea_orm::DatabaseConnection;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::domain::metrics::{Merged, TimerStats, Window};
use crate::domain::views::MetricSummaryView;
use crate::store::{runs, StoreError};

/// How long a window slot waits for slow nodes before it is published anyway.
const LATE_MS: i64 = 3000;

/// One merged window of one step, for the live feed.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct MetricsPublished {
    /// The step's name.
    pub step: String,
    /// Start of the window (Unix ms; nodes' windows grouped by the second they started in).
    pub start_ms: i64,
    /// How many nodes it merges.
    pub nodes: usize,
    /// Counter sums.
    pub counters: BTreeMap<String, f64>,
    /// Timer statistics over every node's samples.
    pub timers: BTreeMap<String, TimerStats>,
}

struct Slot {
    merged: Merged,
    nodes: HashSet<String>,
    first_seen_ms: i64,
}

struct StepMetrics {
    name: String,
    nodes: usize,
    totals: Merged,
    windows: BTreeMap<String, u64>,
    dropped: BTreeMap<String, u64>,
    slots: BTreeMap<i64, Slot>,
}

struct RunMetrics {
    token: String,
    feed: Recipient<MetricsPublished>,
    steps: HashMap<Uuid, StepMetrics>,
}

/// Why a delivery of windows was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// No run with that id is collecting metrics.
    #[error("no live run {0} is collecting metrics")]
    UnknownRun(Uuid),
    /// The token is not the run's.
    #[error("the token is not this run's")]
    Unauthorized,
    /// A window names another run or an unknown step.
    #[error("window {0} does not belong to this run")]
    Foreign(u64),
}

/// Collects the runs' metrics.
pub struct MetricsActor {
    db: DatabaseConnection,
    runs: HashMap<Uuid, RunMetrics>,
}

impl MetricsActor {
    /// A metrics collector storing summaries in `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, runs: HashMap::new() }
    }

    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// Publishes slots that are complete, or late.
    fn publish_ready(run: &mut RunMetrics, now_ms: i64, everything: bool) {
        for step in run.steps.values_mut() {
            let ready: Vec<i64> = step
                .slots
                .iter()
                .filter(|(_, s)| everything || s.nodes.len() >= step.nodes || now_ms - s.first_seen_ms >= LATE_MS)
                .map(|(k, _)| *k)
                .collect();
            for key in ready {
                if let Some(slot) = step.slots.remove(&key) {
                    run.feed.do_send(MetricsPublished {
                        step: step.name.clone(),
                        start_ms: key,
                        nodes: slot.nodes.len(),
                        counters: slot.merged.counters.clone(),
                        timers: slot.merged.timers.iter().map(|(k, h)| (k.clone(), TimerStats::of(h))).collect(),
                    });
                }
            }
        }
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            let now = Self::now_ms();
            for run in act.runs.values_mut() {
                Self::publish_ready(run, now, false);
            }
        });
    }
}

/// Starts collecting a run's metrics: its token, its steps and their node counts.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TrackRun {
    /// The run.
    pub run_id: Uuid,
    /// The token its relays present.
    pub token: String,
    /// `(step id, step name, nodes)`.
    pub steps: Vec<(Uuid, String, usize)>,
    /// Where merged windows go (the run's feed).
    pub feed: Recipient<MetricsPublished>,
}

impl Handler<TrackRun> for MetricsActor {
    type Result = ();

    fn handle(&mut self, msg: TrackRun, _: &mut Context<Self>) {
        let steps = msg
            .steps
            .into_iter()
            .map(|(id, name, nodes)| {
                let step = StepMetrics {
                    name,
                    nodes,
                    totals: Merged::default(),
                    windows: BTreeMap::new(),
                    dropped: BTreeMap::new(),
                    slots: BTreeMap::new(),
                };
                (id, step)
            })
            .collect();
        self.runs.insert(msg.run_id, RunMetrics { token: msg.token, feed: msg.feed, steps });
    }
}

/// Windows delivered by a relay; answers how many were taken.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, IngestError>")]
pub struct Ingest {
    /// The run in the URL.
    pub run_id: Uuid,
    /// The bearer token presented.
    pub token: String,
    /// The windows.
    pub windows: Vec<Window>,
}

impl Handler<Ingest> for MetricsActor {
    type Result = Result<usize, IngestError>;

    fn handle(&mut self, msg: Ingest, _: &mut Context<Self>) -> Self::Result {
        let run = self.runs.get_mut(&msg.run_id).ok_or(IngestError::UnknownRun(msg.run_id))?;
        if !bool::from(run.token.as_bytes().ct_eq(msg.token.as_bytes())) {
            return Err(IngestError::Unauthorized);
        }
        let run_text = msg.run_id.to_string();
        for w in &msg.windows {
            let step_id = Uuid::parse_str(&w.step_id).ok().filter(|id| run.steps.contains_key(id));
            if w.run_id != run_text || step_id.is_none() {
                return Err(IngestError::Foreign(w.seq));
            }
        }
        let now = Self::now_ms();
        for w in &msg.windows {
            let Some(step) = Uuid::parse_str(&w.step_id).ok().and_then(|id| run.steps.get_mut(&id)) else { continue };
            step.totals.add(w);
            if w.lines > 0 {
                *step.windows.entry(w.node.clone()).or_default() += 1;
            }
            step.dropped.insert(w.node.clone(), w.dropped_windows);
            let slot = step.slots.entry(w.start_ms / 1000 * 1000).or_insert_with(|| Slot {
                merged: Merged::default(),
                nodes: HashSet::new(),
                first_seen_ms: now,
            });
            slot.merged.add(w);
            slot.nodes.insert(w.node.clone());
        }
        Self::publish_ready(run, now, false);
        Ok(msg.windows.len())
    }
}

fn summarise(step_id: Uuid, step: &StepMetrics) -> Vec<MetricSummaryView> {
    // The step's active time: the most windows in which any one node received data (plus
    // windows it lost), times the one-second window.
    let seconds = step
        .windows
        .iter()
        .map(|(node, n)| n + step.dropped.get(node).copied().unwrap_or(0))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let row = |metric: &str, kind: &str, count: f64| MetricSummaryView {
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
    };
    let mut out = Vec::new();
    for (k, v) in &step.totals.counters {
        out.push(MetricSummaryView { rate: Some(v / seconds), ..row(k, "counter", *v) });
    }
    for (k, h) in &step.totals.timers {
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
    for (k, v) in &step.totals.gauges {
        out.push(row(k, "gauge", *v));
    }
    for (k, v) in &step.totals.sets {
        out.push(row(k, "set", *v as f64));
    }
    out.push(row("relay.lines", "relay", step.totals.lines as f64));
    out.push(row("relay.malformed", "relay", step.totals.malformed as f64));
    out.push(row("relay.windows_dropped", "relay", step.dropped.values().sum::<u64>() as f64));
    out
}

/// Stops collecting a run: publishes what is pending, stores the summaries, answers them.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<MetricSummaryView>, StoreError>")]
pub struct FinishRun {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<FinishRun> for MetricsActor {
    type Result = ResponseFuture<Result<Vec<MetricSummaryView>, StoreError>>;

    fn handle(&mut self, msg: FinishRun, _: &mut Context<Self>) -> Self::Result {
        let rows: Vec<MetricSummaryView> = match self.runs.remove(&msg.run_id) {
            Some(mut run) => {
                Self::publish_ready(&mut run, Self::now_ms(), true);
                let mut steps: Vec<(&Uuid, &StepMetrics)> = run.steps.iter().collect();
                steps.sort_by(|a, b| a.1.name.cmp(&b.1.name));
                steps.into_iter().flat_map(|(id, s)| summarise(*id, s)).collect()
            }
            None => Vec::new(),
        };
        let db = self.db.clone();
        Box::pin(async move {
            runs::record_metrics(&db, msg.run_id, &rows).await?;
            Ok(rows)
        })
    }
}
