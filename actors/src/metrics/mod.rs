//! `MetricsActor`: receives the relays' windows, checks each against its run's
//! token, merges the windows of all nodes of a step exactly, publishes each
//! merged window on the run's feed, and stores a summary of every step's
//! metrics when the run ends.
//!
//! A step's totals take every window as it arrives, so the summary is exact
//! whatever the arrival order. Merged windows for the feed are published once
//! every node of the step has reported that window, or 3 s late at most.
//!
//! Each run's thresholds are judged here too (`domain::judge`), on every
//! window as it arrives, over the union of the selected nodes' samples: the
//! thresholds whose state changed, and a breach of an `abort_on_fail` one,
//! go to the run's supervisor at once (`ThresholdsJudged`); a breach is also
//! marked on the run's Grafana dashboard and in InfluxDB's `events`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, ResponseFuture, WrapFuture};
use sea_orm::DatabaseConnection;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::domain::aggregate::{admit, lost, merged_of, saturated, summarise, take_window, HostTotals, SavedStep, StepMetrics};
use crate::domain::dashboard;
use crate::domain::judge::{Breach, Judge, Saturation, Threshold};
use crate::domain::metrics::{Merged, TimerStats, Window};
use crate::domain::views::{MetricSummaryView, ThresholdView};
use crate::domain::windows::Refusal;
use crate::domain::DomainError;
use crate::domain::ValidationErrors;
use crate::feed::RegionWindow;
use crate::infra::grafana::{DashboardError, Dashboards, Grafana};
use crate::infra::influx::{event_point, step_event_points, window_points, Influx, Point, PointTags};
use crate::store::plans;
use crate::store::runs;
use loads_relay::cardinality::Overflow;

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
    /// OpenTelemetry histograms over every node's points.
    pub histograms: BTreeMap<String, loads_relay::histogram::HistogramStats>,
    /// Each node's CPU use in the window, percent.
    pub cpu: BTreeMap<String, f64>,
    /// A step over several regions: each region's part of the window.
    pub regions: BTreeMap<String, RegionWindow>,
    /// Values of the step not kept so far because their series came past a cap.
    pub overflow: u64,
}

/// How long the actor waits for a second's series windows to be stored.
const SERIES_WRITE_LIMIT: Duration = Duration::from_secs(2);

/// A run's thresholds were judged: those whose state changed, and a breach that must stop the run.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct ThresholdsJudged {
    /// Thresholds whose state changed.
    pub changed: Vec<ThresholdView>,
    /// An `abort_on_fail` threshold failed.
    pub breach: Option<Breach>,
}

struct LiveRun {
    token: String,
    plan: String,
    /// Where its points go: the configured database, or the run's own (a monitor step).
    influx: Option<Influx>,
    feed: Recipient<MetricsPublished>,
    steps: HashMap<Uuid, StepMetrics>,
    /// Windows arrived since the totals were last written to the database.
    dirty: bool,
    /// The run's thresholds, judged as windows arrive, and who is told.
    judge: Judge,
    judged: Recipient<ThresholdsJudged>,
    /// Published windows not yet added to the run's stored series: (step, start ms, point JSON).
    series: Vec<(String, i64, String)>,
    /// When the run began (Unix ms): windows must start after it, give or take `windows::CLOCK_MARGIN_MS`.
    since_ms: i64,
    /// Times the collector failed while it held this run and started again from its saved totals.
    restarts: u32,
}

impl LiveRun {
    /// The totals of every step and the thresholds' judging, as JSON.
    fn saved(&self) -> String {
        let steps: BTreeMap<String, SavedStep> = self
            .steps
            .iter()
            .map(|(id, s)| {
                let hosts = s
                    .hosts
                    .iter()
                    .map(|(node, h)| {
                        (node.clone(), HostTotals { samples: h.samples, active: h.active, busy: h.busy, sums: h.sums, maxima: h.maxima })
                    })
                    .collect();
                let saved = SavedStep {
                    totals: s.totals.to_window(),
                    windows: s.windows.clone(),
                    dropped: s.dropped.clone(),
                    kernel_drops: s.kernel_drops.clone(),
                    gauges: s.gauges.clone(),
                    hosts,
                    node_regions: s.node_regions.clone(),
                    by_region: s.by_region.iter().map(|(r, m)| (r.clone(), m.to_window())).collect(),
                    delivered: s.delivered.clone(),
                    duplicates: s.duplicates,
                    refused: s.refused.clone(),
                    overflow: s.overflow.0.clone(),
                };
                (id.to_string(), saved)
            })
            .collect();
        serde_json::json!({"steps": steps, "judge": self.judge.saved(), "since_ms": self.since_ms, "restarts": self.restarts}).to_string()
    }

    /// Takes back totals written by `saved` (or by brokers before thresholds: the steps alone).
    fn restore(&mut self, text: &str) {
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
                step.totals = merged_of(&saved.totals);
                step.windows = saved.windows;
                step.dropped = saved.dropped;
                step.kernel_drops = saved.kernel_drops;
                step.gauges = saved.gauges;
                step.hosts = saved.hosts;
                step.node_regions = saved.node_regions;
                step.by_region = saved.by_region.iter().map(|(r, w)| (r.clone(), merged_of(w))).collect();
                step.delivered = saved.delivered;
                step.duplicates = saved.duplicates;
                step.refused = saved.refused;
                step.overflow = Overflow(saved.overflow);
                let totals = &step.totals;
                let kept = totals.counters.keys().chain(totals.gauges.keys()).chain(totals.sets.keys()).chain(totals.timers.keys());
                step.keys = kept.chain(totals.buckets.keys()).chain(totals.exponential.keys()).cloned().collect();
            }
        }
    }
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
    /// A window's step has no nodes yet (it is being prepared, or carried on after a restart).
    #[error("the nodes of step {0} are not known yet; deliver again later")]
    NotPlaced(Uuid),
    /// The collector failed on this delivery and starts again from the runs' saved totals.
    #[error("the metrics collector is starting again; deliver again later")]
    Restarting,
}

/// Collects the runs' metrics.
pub struct MetricsActor {
    db: DatabaseConnection,
    influx: Option<Influx>,
    dashboards: DashboardSettings,
    runs: HashMap<Uuid, LiveRun>,
    /// Distinct series a step keeps at most.
    max_series_per_step: usize,
}

/// How run dashboards are made and published.
#[derive(Clone)]
pub struct DashboardSettings {
    /// The templates.
    pub templates: Dashboards,
    /// The Grafana data source name of the InfluxDB database.
    pub datasource: String,
    /// Where to publish them, if anywhere.
    pub grafana: Option<Grafana>,
}

fn dashboard_problem(e: DashboardError) -> DomainError {
    DomainError::Invalid(ValidationErrors::one("dashboard", e.to_string()))
}

/// Renders the dashboard of a stored run (its plan's template), closed at `until` when given;
/// with InfluxDB configured, a run with a monitor step reads its own database.
async fn render_dashboard(
    db: &DatabaseConnection,
    settings: &DashboardSettings,
    run_id: Uuid,
    until: Option<chrono::DateTime<chrono::Utc>>,
    influx_configured: bool,
) -> Result<serde_json::Value, DomainError> {
    let run = runs::get(db, run_id).await?;
    let plan = plans::get(db, run.plan_id).await?;
    let own = (influx_configured && plan.steps.iter().any(|s| s.spec.monitor)).then(|| dashboard::monitor_database(run_id));
    let metrics = runs::metrics(db, run_id).await?;
    let mut model = dashboard::model(&run, &metrics, &settings.datasource, own.as_deref());
    let template = plan.dashboard;
    if let Some(until) = until {
        model.from = dashboard::rfc3339(run.started_at.unwrap_or(run.created_at));
        model.to = dashboard::rfc3339(until);
        model.refresh = String::new();
    }
    settings.templates.render(template.as_deref(), &model).map_err(dashboard_problem)
}

impl MetricsActor {
    /// A metrics collector storing summaries in `db`, every window in InfluxDB when given, and
    /// making dashboards; each step keeps at most `max_series_per_step` series.
    pub fn new(db: DatabaseConnection, influx: Option<Influx>, dashboards: DashboardSettings, max_series_per_step: usize) -> Self {
        Self { db, influx, dashboards, runs: HashMap::new(), max_series_per_step: max_series_per_step.max(1) }
    }

    /// Writes a run's points (each with its step) in the background; a failure never
    /// holds the run: it is logged, and the points lost are counted on their steps.
    fn write(&self, run_id: Uuid, points: Vec<(Uuid, Point)>, ctx: &mut Context<Self>) {
        let Some(influx) = self.runs.get(&run_id).and_then(|r| r.influx.clone()) else { return };
        if points.is_empty() {
            return;
        }
        let (steps, queries): (Vec<Uuid>, Vec<Point>) = points.into_iter().unzip();
        ctx.spawn(async move { influx.write(queries).await }.into_actor(self).map(move |written, act, _| {
            let Err(e) = written else { return };
            tracing::warn!(%run_id, points = steps.len(), error = %e, "metrics points not written to InfluxDB");
            if let Some(run) = act.runs.get_mut(&run_id) {
                for step in steps {
                    if let Some(s) = run.steps.get_mut(&step) {
                        s.unwritten += 1;
                    }
                }
            }
        }));
    }

    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// Publishes slots that are complete, or late, to the run's feed; answers their InfluxDB points.
    fn publish_ready(run_id: Uuid, run: &mut LiveRun, now_ms: i64) -> Vec<(Uuid, Point)> {
        let (points, published) = Self::take_ready(run_id, run, now_ms, false);
        for window in published {
            run.feed.do_send(window);
        }
        points
    }

    /// Takes the slots that are complete, or late, or all of them (`everything`): their
    /// InfluxDB points and their merged windows for the feed.
    fn take_ready(run_id: Uuid, run: &mut LiveRun, now_ms: i64, everything: bool) -> (Vec<(Uuid, Point)>, Vec<MetricsPublished>) {
        let mut points = Vec::new();
        let mut out = Vec::new();
        for (step_id, step) in run.steps.iter_mut() {
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
                        plan: run.plan.clone(),
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
                    run.series.push((step.name.clone(), key, point.to_string()));
                    out.push(published);
                }
            }
        }
        (points, out)
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.guarded(ctx, "the second's saving", || (), Self::tick));
    }
}

impl MetricsActor {
    /// Each second: publishes the windows ready, writes their points and the runs'
    /// series, saves the totals of runs that took windows.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Self::now_ms();
        let mut points = Vec::new();
        let mut saves = Vec::new();
        let mut series = Vec::new();
        for (id, run) in &mut self.runs {
            points.push((*id, Self::publish_ready(*id, run, now)));
            series.extend(std::mem::take(&mut run.series).into_iter().map(|(step, t, point)| (*id, step, t, point)));
            if std::mem::take(&mut run.dirty) {
                let thresholds = (!run.judge.is_empty()).then(|| run.judge.views());
                saves.push((*id, run.saved(), thresholds));
            }
        }
        for (id, run_points) in points {
            self.write(id, run_points, ctx);
        }
        // The series are written before any later message is handled, so a run's
        // `FinishRun` (and the final state after it) comes after its windows are
        // stored; a database that does not answer holds the actor 2 s at most (the
        // windows are then left out of the charts, not of the summaries).
        if !series.is_empty() {
            let db = self.db.clone();
            ctx.wait(actix::fut::wrap_future(async move {
                match tokio::time::timeout(SERIES_WRITE_LIMIT, runs::append_series(&db, series)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not add windows to the runs' series"),
                    Err(_) => tracing::warn!("the database did not store the runs' series within 2 s; those windows are left out"),
                }
            }));
        }
        let db = self.db.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            for (run_id, state, thresholds) in saves {
                if let Err(e) = runs::set_metrics_state(&db, run_id, state).await {
                    tracing::warn!(%run_id, error = %e, "could not record the run's metrics so far");
                }
                if let Some(views) = thresholds {
                    save_thresholds(&db, run_id, &views).await;
                }
            }
        }));
    }
}

impl MetricsActor {
    /// Runs `work`; should it panic, `fallback` is answered and the collector stops, for
    /// its supervisor to start it again from every run's totals as last saved
    /// ([`actix::Supervised::restarting`]). Messages sent meanwhile wait in its mailbox.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        what: &'static str,
        fallback: impl FnOnce() -> R,
        work: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
    ) -> R {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self, ctx))) {
            Ok(answer) => answer,
            Err(_) => {
                tracing::error!(what, "the metrics collector failed; it starts again from every run's totals as last saved");
                ctx.stop();
                fallback()
            }
        }
    }
}

impl actix::Supervised for MetricsActor {
    /// Started again after a failure: each run's pending windows are dropped, its totals,
    /// the windows it took from each node and its thresholds' tallies come back as last
    /// saved (at most a second old), and the run is marked so its verdict says so. Until
    /// then no other message is handled (`/health` waits, then answers 503).
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<Uuid> = self.runs.keys().copied().collect();
        for run in self.runs.values_mut() {
            run.restarts = run.restarts.saturating_add(1);
            run.series.clear();
            for step in run.steps.values_mut() {
                step.slots.clear();
            }
        }
        let db = self.db.clone();
        let restored = async move {
            let mut saved = Vec::new();
            for id in ids {
                saved.push((id, runs::recovery(&db, id).await.map(|r| r.metrics_state)));
            }
            saved
        };
        ctx.wait(restored.into_actor(self).map(|saved, act, _| {
            for (run_id, state) in saved {
                let Some(run) = act.runs.get_mut(&run_id) else { continue };
                match state {
                    Ok(Some(text)) => {
                        let restarts = run.restarts;
                        run.restore(&text);
                        run.restarts = restarts.max(run.restarts);
                        run.dirty = true;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%run_id, error = %e, "could not read the run's metrics so far"),
                }
            }
            tracing::info!(runs = act.runs.len(), "the metrics collector started again");
        }));
    }
}

/// A step whose metrics are collected.
#[derive(Clone, Debug)]
pub struct TrackedStep {
    /// The step.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its `docker_series` (or its name): the `type` tag.
    pub series: String,
    /// Its regions (its nodes are placed in them by `PlaceNodes`; the first until then).
    pub regions: Vec<String>,
    /// How many nodes report for it.
    pub nodes: usize,
    /// Whether it generates load (not a service under test), so saturation matters.
    pub generator: bool,
}

/// Starts collecting a run's metrics: its token, its steps and their node counts.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TrackRun {
    /// The run.
    pub run_id: Uuid,
    /// The token its relays present.
    pub token: String,
    /// The plan's name.
    pub plan: String,
    /// Its steps.
    pub steps: Vec<TrackedStep>,
    /// Where merged windows go (the run's feed).
    pub feed: Recipient<MetricsPublished>,
    /// The run is carried on after a broker restart: its totals so far are in the database.
    pub resumed: bool,
    /// The plan has a monitor step: its points go to an InfluxDB database of its own.
    pub own_database: bool,
    /// Its thresholds (the plan's and its steps').
    pub thresholds: Vec<Threshold>,
    /// Who is told how they stand (the run's supervisor).
    pub judged: Recipient<ThresholdsJudged>,
    /// When the run began, Unix ms, if it did before now (a run carried on).
    pub since_ms: Option<i64>,
}

impl Handler<TrackRun> for MetricsActor {
    type Result = ();

    fn handle(&mut self, msg: TrackRun, ctx: &mut Context<Self>) {
        self.guarded(ctx, "tracking a run", || (), |act, ctx| act.track(msg, ctx));
    }
}

impl MetricsActor {
    fn track(&mut self, msg: TrackRun, ctx: &mut Context<Self>) {
        let max = self.max_series_per_step;
        let steps =
            msg.steps.into_iter().map(|s| (s.id, StepMetrics::new(s.name, s.series, &s.regions, s.nodes, s.generator, max))).collect();
        let influx = match (&self.influx, msg.own_database) {
            (Some(influx), true) => {
                let own = influx.for_database(&dashboard::monitor_database(msg.run_id));
                let created = own.clone();
                ctx.spawn(async move { created.ensure_database().await }.into_actor(self).map(move |res, _, _| {
                    if let Err(e) = res {
                        tracing::warn!(run_id = %msg.run_id, error = %e, "the run's own InfluxDB database could not be created");
                    }
                }));
                Some(own)
            }
            (influx, _) => influx.clone(),
        };
        let judge = Judge::new(msg.thresholds);
        let run = LiveRun {
            token: msg.token,
            plan: msg.plan,
            influx,
            feed: msg.feed,
            steps,
            dirty: false,
            judge,
            judged: msg.judged,
            series: Vec::new(),
            since_ms: msg.since_ms.unwrap_or_else(Self::now_ms),
            restarts: 0,
        };
        if !msg.resumed {
            let (db, run_id, views) = (self.db.clone(), msg.run_id, run.judge.views());
            if !views.is_empty() {
                ctx.spawn(async move { save_thresholds(&db, run_id, &views).await }.into_actor(self));
            }
            self.runs.insert(msg.run_id, run);
            return;
        }
        // Carried on: the totals so far come back first (windows arriving meanwhile are
        // refused as from an unknown run, and their relays send them again).
        let (db, run_id) = (self.db.clone(), msg.run_id);
        ctx.wait(async move { runs::recovery(&db, run_id).await }.into_actor(self).map(move |recovery, act, _| {
            let mut run = run;
            match recovery {
                Ok(runs::Recovery { metrics_state: Some(text), .. }) => run.restore(&text),
                Ok(_) => {}
                Err(e) => tracing::warn!(%run_id, error = %e, "could not read the run's metrics so far"),
            }
            act.runs.insert(run_id, run);
        }));
    }
}

/// Where a step's nodes are: each node's region, once the step has them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PlaceNodes {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: Uuid,
    /// Each node's region, by node name.
    pub regions: BTreeMap<String, String>,
}

impl Handler<PlaceNodes> for MetricsActor {
    type Result = ();

    fn handle(&mut self, msg: PlaceNodes, ctx: &mut Context<Self>) {
        self.guarded(
            ctx,
            "placing nodes",
            || (),
            |act, _| {
                if let Some(step) = act.runs.get_mut(&msg.run_id).and_then(|r| r.steps.get_mut(&msg.step_id)) {
                    step.node_regions.extend(msg.regions);
                }
            },
        );
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

/// Checks a relay's token before its delivery is read: `Ok` only for a live run's own token.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), IngestError>")]
pub struct AuthorizeIngest {
    /// The run in the URL.
    pub run_id: Uuid,
    /// The bearer token presented.
    pub token: String,
}

impl MetricsActor {
    fn authorize(&self, run_id: Uuid, token: &str) -> Result<(), IngestError> {
        let run = self.runs.get(&run_id).ok_or(IngestError::UnknownRun(run_id))?;
        if bool::from(run.token.as_bytes().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            Err(IngestError::Unauthorized)
        }
    }
}

impl Handler<AuthorizeIngest> for MetricsActor {
    type Result = Result<(), IngestError>;

    fn handle(&mut self, msg: AuthorizeIngest, _: &mut Context<Self>) -> Self::Result {
        self.authorize(msg.run_id, &msg.token)
    }
}

impl Handler<Ingest> for MetricsActor {
    type Result = Result<usize, IngestError>;

    fn handle(&mut self, msg: Ingest, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, "a delivery of windows", || Err(IngestError::Restarting), |act, ctx| act.ingest(msg, ctx))
    }
}

impl MetricsActor {
    fn ingest(&mut self, msg: Ingest, ctx: &mut Context<Self>) -> Result<usize, IngestError> {
        self.authorize(msg.run_id, &msg.token)?;
        let run = self.runs.get_mut(&msg.run_id).ok_or(IngestError::UnknownRun(msg.run_id))?;
        let run_text = msg.run_id.to_string();
        for w in &msg.windows {
            let step = Uuid::parse_str(&w.step_id).ok().and_then(|id| run.steps.get(&id).map(|s| (id, s)));
            match step {
                Some(_) if w.run_id != run_text => return Err(IngestError::Foreign(w.seq)),
                None => return Err(IngestError::Foreign(w.seq)),
                Some((id, s)) if s.node_regions.is_empty() => return Err(IngestError::NotPlaced(id)),
                Some(_) => {}
            }
        }
        let now = Self::now_ms();
        let mut points = Vec::new();
        run.dirty = true;
        for w in &msg.windows {
            let Some(step_id) = Uuid::parse_str(&w.step_id).ok() else { continue };
            let Some(step) = run.steps.get_mut(&step_id) else { continue };
            match admit(step, run.since_ms, now, w) {
                Ok(()) => {}
                Err(Refusal::Duplicate) => {
                    step.duplicates = step.duplicates.saturating_add(1);
                    continue;
                }
                Err(why) => {
                    let count = if why == Refusal::UnknownNode { &mut step.refused.unknown_node } else { &mut step.refused.out_of_time };
                    *count = count.saturating_add(1);
                    tracing::warn!(run_id = %msg.run_id, step = %step.name, node = %w.node, seq = w.seq, start_ms = w.start_ms, ?why, "a window was refused");
                    continue;
                }
            }
            let capped = step.capped(w);
            // A window that trips a fault is counted and the run's numbers marked as
            // missing; the collector goes on for every run.
            let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let node_points = node_points(&run_text, &run.plan, step_id, step, &capped);
                take_window(step, &mut run.judge, &capped, now);
                node_points
            }));
            match taken {
                Ok(step_points) => points.extend(step_points),
                Err(_) => {
                    step.faulted = step.faulted.saturating_add(1);
                    tracing::error!(run_id = %msg.run_id, step = %step.name, node = %w.node, seq = w.seq, "a window could not be taken");
                }
            }
        }
        points.extend(Self::publish_ready(msg.run_id, run, now));
        let breach = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::judge(run))).unwrap_or_else(|_| {
            tracing::error!(run_id = %msg.run_id, "the run's thresholds could not be judged on this delivery");
            None
        });
        self.write(msg.run_id, points, ctx);
        if let Some(breach) = breach {
            self.mark_breach(msg.run_id, &breach, ctx);
        }
        Ok(msg.windows.len())
    }
}

/// The InfluxDB points of one node's window, tagged with its run, plan, step and region.
fn node_points(run_text: &str, plan: &str, step_id: Uuid, step: &StepMetrics, w: &Window) -> Vec<(Uuid, Point)> {
    let mut single = Merged::default();
    single.add(w);
    let tags = PointTags {
        run: run_text.to_string(),
        plan: plan.to_string(),
        step: step.name.clone(),
        node: w.node.clone(),
        series: step.series.clone(),
        region: step.region_of(&w.node),
    };
    let points = window_points(&tags, w.start_ms / 1000 * 1000, &single, w.duration_ms as f64 / 1000.0, w.host.as_ref());
    points.into_iter().map(|p| (step_id, p)).collect()
}

async fn save_thresholds(db: &DatabaseConnection, run_id: Uuid, views: &[ThresholdView]) {
    if let Err(e) = runs::set_thresholds(db, run_id, views).await {
        tracing::warn!(%run_id, error = %e, "could not record how the run's thresholds stand");
    }
}

impl MetricsActor {
    /// Judges the run's thresholds on what has arrived; tells its supervisor what changed.
    fn judge(run: &mut LiveRun) -> Option<Breach> {
        if run.judge.is_empty() {
            return None;
        }
        let (changed, breach) = run.judge.evaluate();
        if !changed.is_empty() || breach.is_some() {
            run.judged.do_send(ThresholdsJudged { changed, breach: breach.clone() });
        }
        breach
    }

    /// Marks a breach where people look.
    fn mark_breach(&self, run_id: Uuid, breach: &Breach, ctx: &mut Context<Self>) {
        tracing::warn!(%run_id, reason = %breach.reason, "a threshold with abort_on_fail failed: the run stops");
        self.mark(Mark { run_id, at_ms: breach.at_ms, text: breach.reason.clone(), tag: "breach" }, ctx);
    }

    /// Marks a moment of a run where people look: an annotation on its Grafana dashboard
    /// (tags `loads` and `mark.tag`), an InfluxDB event.
    fn mark(&self, mark: Mark, ctx: &mut Context<Self>) {
        let Mark { run_id, at_ms, text, tag } = mark;
        let influx = self.runs.get(&run_id).and_then(|r| r.influx.clone());
        let grafana = self.dashboards.grafana.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            if let Some(influx) = influx {
                if let Err(e) = influx.write(vec![event_point(run_id, None, at_ms, &text)]).await {
                    tracing::warn!(%run_id, error = %e, "a {tag} was not written to InfluxDB");
                }
            }
            if let Some(grafana) = grafana {
                if let Err(e) = grafana.annotate(&dashboard::uid_of(run_id), at_ms, &text, &["loads", tag]).await {
                    tracing::warn!(%run_id, error = %e, "a {tag} was not marked on the dashboard");
                }
            }
        }));
    }
}

/// Answers when the collector is taking messages (`/health`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PingMetrics;

impl Handler<PingMetrics> for MetricsActor {
    type Result = ();

    fn handle(&mut self, _: PingMetrics, _: &mut Context<Self>) {}
}

/// Marks a moment of a run on its dashboard and in InfluxDB (a spot interruption, a breach).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Mark {
    /// The run.
    pub run_id: Uuid,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// What happened, for a human.
    pub text: String,
    /// Its kind, a dashboard annotation tag: `breach`, `interruption`.
    pub tag: &'static str,
}

impl Handler<Mark> for MetricsActor {
    type Result = ();

    fn handle(&mut self, msg: Mark, ctx: &mut Context<Self>) {
        self.guarded(ctx, "marking a moment", || (), |act, ctx| act.mark(msg, ctx));
    }
}

/// What a run's metrics say of it at the end.
#[derive(Clone, Debug, Default)]
pub struct RunJudgement {
    /// Each step's summary.
    pub summaries: Vec<MetricSummaryView>,
    /// Its thresholds, judged.
    pub thresholds: Vec<ThresholdView>,
    /// Generator nodes that saturated their CPU.
    pub saturated: Vec<Saturation>,
    /// Numbers the run is missing, each with how many and why: its verdict cannot be `passed`.
    pub lost: Vec<String>,
    /// The run's last merged windows, for its feed before its verdict (not sent apart,
    /// where they could come after the run's end).
    pub published: Vec<MetricsPublished>,
}

/// Stops collecting a run: publishes what is pending, judges its thresholds, stores the
/// summaries and the thresholds' final states, answers them.
#[derive(Debug, Message)]
#[rtype(result = "Result<RunJudgement, DomainError>")]
pub struct FinishRun {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<FinishRun> for MetricsActor {
    type Result = ResponseFuture<Result<RunJudgement, DomainError>>;

    fn handle(&mut self, msg: FinishRun, ctx: &mut Context<Self>) -> Self::Result {
        let fallback = || -> Self::Result {
            let lost = "the metrics collector failed as it summarised the run: its summary is not stored".to_string();
            Box::pin(async move { Ok(RunJudgement { lost: vec![lost], ..RunJudgement::default() }) })
        };
        self.guarded(ctx, "summarising a run", fallback, |act, _| act.finish(msg))
    }
}

impl MetricsActor {
    fn finish(&mut self, msg: FinishRun) -> ResponseFuture<Result<RunJudgement, DomainError>> {
        let mut influx = self.influx.clone();
        let influx_configured = influx.is_some();
        let dashboards = self.dashboards.clone();
        let mut last_points = Vec::new();
        let mut judgement = RunJudgement::default();
        let mut series = Vec::new();
        if let Some(mut run) = self.runs.remove(&msg.run_id) {
            influx.clone_from(&run.influx);
            (last_points, judgement.published) = Self::take_ready(msg.run_id, &mut run, Self::now_ms(), true);
            series = run.series.drain(..).map(|(step, t, point)| (msg.run_id, step, t, point)).collect();
            let mut steps: Vec<(&Uuid, &StepMetrics)> = run.steps.iter().collect();
            steps.sort_by(|a, b| a.1.name.cmp(&b.1.name));
            judgement.summaries = steps.iter().flat_map(|(id, s)| summarise(**id, s)).collect();
            judgement.saturated = steps.iter().flat_map(|(_, s)| saturated(s)).collect();
            judgement.lost = steps.iter().flat_map(|(_, s)| lost(s)).collect();
            if run.restarts > 0 {
                judgement.lost.push(format!(
                    "the metrics collector failed {} time(s) during the run and started again from its totals as last saved: \
                     windows taken in the second before each failure are not counted",
                    run.restarts
                ));
            }
            judgement.thresholds = run.judge.finish();
        }
        let rows = judgement.summaries.clone();
        let db = self.db.clone();
        Box::pin(async move {
            if let Some(influx) = &influx {
                let queries: Vec<Point> = last_points.into_iter().map(|(_, p)| p).collect();
                if let Err(e) = influx.write(queries).await {
                    tracing::warn!(error = %e, "metrics points not written to InfluxDB");
                }
            }
            runs::append_series(&db, series).await?;
            let mut judgement = judgement;
            if let Err(e) = runs::record_metrics(&db, msg.run_id, &rows).await {
                tracing::error!(run_id = %msg.run_id, rows = rows.len(), error = %e, "the run's metrics summary could not be stored");
                judgement.lost.push(format!("the metrics summary ({} rows) could not be stored: {e}", rows.len()));
            }
            if !judgement.thresholds.is_empty() {
                runs::set_thresholds(&db, msg.run_id, &judgement.thresholds).await?;
            }
            if let (Some(influx), Ok(run)) = (&influx, runs::get(&db, msg.run_id).await) {
                if let Err(e) = influx.write(step_event_points(&run)).await {
                    tracing::warn!(error = %e, "step events not written");
                }
            }
            if let Some(grafana) = &dashboards.grafana {
                let published = async {
                    let json = render_dashboard(&db, &dashboards, msg.run_id, Some(chrono::Utc::now()), influx_configured).await?;
                    let url = grafana.push(&json).await.map_err(dashboard_problem)?;
                    runs::set_dashboard_url(&db, msg.run_id, &url).await?;
                    Ok::<_, DomainError>(url)
                };
                match published.await {
                    Ok(url) => tracing::info!(run_id = %msg.run_id, %url, "dashboard published"),
                    Err(e) => tracing::warn!(run_id = %msg.run_id, error = %e, "dashboard not published"),
                }
            }
            Ok(judgement)
        })
    }
}

/// Publishes a live run's dashboard to Grafana (time range the last 15 minutes,
/// refreshing) and records its URL; answers it, or `None` without Grafana.
/// `FinishRun` publishes it again with the run's time range.
#[derive(Debug, Message)]
#[rtype(result = "Option<String>")]
pub struct PublishDashboard {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<PublishDashboard> for MetricsActor {
    type Result = ResponseFuture<Option<String>>;

    fn handle(&mut self, msg: PublishDashboard, _: &mut Context<Self>) -> Self::Result {
        let (db, dashboards, configured) = (self.db.clone(), self.dashboards.clone(), self.influx.is_some());
        Box::pin(async move {
            let grafana = dashboards.grafana.as_ref()?;
            let published = async {
                let json = render_dashboard(&db, &dashboards, msg.run_id, None, configured).await?;
                let url = grafana.push(&json).await.map_err(dashboard_problem)?;
                runs::set_dashboard_url(&db, msg.run_id, &url).await?;
                Ok::<_, DomainError>(url)
            };
            match published.await {
                Ok(url) => {
                    tracing::info!(run_id = %msg.run_id, %url, "live dashboard published");
                    Some(url)
                }
                Err(e) => {
                    tracing::warn!(run_id = %msg.run_id, error = %e, "live dashboard not published");
                    None
                }
            }
        })
    }
}

/// The run's dashboard JSON (whether or not Grafana is configured).
#[derive(Debug, Message)]
#[rtype(result = "Result<serde_json::Value, DomainError>")]
pub struct RenderDashboard {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<RenderDashboard> for MetricsActor {
    type Result = ResponseFuture<Result<serde_json::Value, DomainError>>;

    fn handle(&mut self, msg: RenderDashboard, _: &mut Context<Self>) -> Self::Result {
        let (db, settings, configured) = (self.db.clone(), self.dashboards.clone(), self.influx.is_some());
        Box::pin(async move { render_dashboard(&db, &settings, msg.run_id, None, configured).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fault where the collector handles a message: the only way to make it fail, as no
    /// input it takes is known to.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Fail;

    impl Handler<Fail> for MetricsActor {
        type Result = ();

        fn handle(&mut self, _: Fail, ctx: &mut Context<Self>) {
            self.guarded(ctx, "a test fault", || (), |_, _| panic!("a fault in the collector"));
        }
    }

    /// A run's feed and supervisor, which hear nothing here.
    struct Deaf;

    impl Actor for Deaf {
        type Context = Context<Self>;
    }

    impl Handler<MetricsPublished> for Deaf {
        type Result = ();

        fn handle(&mut self, _: MetricsPublished, _: &mut Context<Self>) {}
    }

    impl Handler<ThresholdsJudged> for Deaf {
        type Result = ();

        fn handle(&mut self, _: ThresholdsJudged, _: &mut Context<Self>) {}
    }

    #[actix_rt::test]
    async fn a_collector_that_fails_starts_again_from_the_saved_totals_and_the_run_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::connect(&format!("sqlite://{}/m.db", dir.path().display())).await.unwrap();
        let file = serde_json::json!({"name": "p", "plans": [{"name": "plan", "steps": [{"name": "gen", "container_name": "busybox"}]}]});
        let spec = crate::domain::validate::project(&file, &crate::domain::Limits::default()).unwrap().value;
        let project = crate::store::projects::create(&db, &spec).await.unwrap();
        let run = runs::create(&db, project.plans[0].id, None, &crate::domain::Env::default(), &[], "token").await.unwrap();
        let (run_id, step_id) = (run.id, run.step_records[0].step_id);
        let dashboards = DashboardSettings { templates: Dashboards::new(None), datasource: "InfluxDB".into(), grafana: None };
        let collector = MetricsActor::new(db.clone(), None, dashboards, 100);
        let metrics = actix::Supervisor::start(move |_| collector);
        let deaf = Deaf.start();
        let tracked =
            TrackedStep { id: step_id, name: "gen".into(), series: "gen".into(), regions: vec!["local".into()], nodes: 1, generator: true };
        metrics
            .send(TrackRun {
                run_id,
                token: "token".into(),
                plan: "plan".into(),
                steps: vec![tracked],
                feed: deaf.clone().recipient(),
                resumed: false,
                own_database: false,
                thresholds: Vec::new(),
                judged: deaf.recipient(),
                since_ms: None,
            })
            .await
            .unwrap();
        metrics.send(PlaceNodes { run_id, step_id, regions: BTreeMap::from([("s0n0".into(), "local".into())]) }).await.unwrap();
        let now = MetricsActor::now_ms();
        let window = |seq: u64| Window {
            run_id: run_id.to_string(),
            step_id: step_id.to_string(),
            node: "s0n0".into(),
            epoch: 1,
            seq,
            start_ms: now + 1000 * seq as i64,
            duration_ms: 1000,
            counters: BTreeMap::from([("hits".into(), 1.0)]),
            lines: 1,
            ..Window::default()
        };
        let ingest = |windows: Vec<Window>| Ingest { run_id, token: "token".into(), windows };
        assert_eq!(metrics.send(ingest(vec![window(1)])).await.unwrap(), Ok(1));
        // The collector saves the run's totals within a second of taking a window.
        let mut saved = false;
        for _ in 0..100 {
            saved = runs::recovery(&db, run_id).await.unwrap().metrics_state.is_some_and(|s| s.contains("hits"));
            if saved {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(saved, "the totals were saved");

        metrics.send(Fail).await.unwrap();
        // At the same address, with the totals back: the window taken before the failure,
        // delivered again, counts once; a new one is taken.
        assert_eq!(metrics.send(ingest(vec![window(1), window(2)])).await.unwrap(), Ok(2));
        metrics.send(PingMetrics).await.unwrap();
        let judgement = metrics.send(FinishRun { run_id }).await.unwrap().unwrap();
        let count = |name: &str| judgement.summaries.iter().find(|r| r.metric == name).map(|r| r.count);
        assert_eq!(count("hits"), Some(2.0), "{:?}", judgement.summaries);
        assert_eq!(count("relay.windows_duplicate"), Some(1.0));
        assert!(judgement.lost.iter().any(|l| l.contains("collector failed 1 time(s)")), "{:?}", judgement.lost);
    }
}
