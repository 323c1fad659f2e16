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

mod dashboards;
mod ingest;
mod live;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, ResponseFuture, WrapFuture};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::domain::aggregate::{lost, saturated, summarise, StepMetrics};
use crate::domain::dashboard;
use crate::domain::judge::{Breach, Judge, Saturation, Threshold};
use crate::domain::metrics::TimerStats;
use crate::domain::views::{MetricSummaryView, ThresholdView};
use crate::domain::DomainError;
use crate::feed::RegionWindow;
use crate::infra::influx::{event_point, step_event_points, Influx, Point};
use crate::store::runs;

pub use self::dashboards::{DashboardSettings, PublishDashboard, RenderDashboard};
pub use self::ingest::{AuthorizeIngest, Ingest, IngestError};
use self::live::LiveRun;

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

/// Collects the runs' metrics.
pub struct MetricsActor {
    db: DatabaseConnection,
    influx: Option<Influx>,
    dashboards: DashboardSettings,
    runs: HashMap<Uuid, LiveRun>,
    /// Distinct series a step keeps at most.
    max_series_per_step: usize,
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
        let (points, published) = run.take_ready(run_id, now_ms, false);
        for window in published {
            run.feed.do_send(window);
        }
        points
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
                dashboards::annotate(&grafana, run_id, at_ms, &text, tag).await;
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
            (last_points, judgement.published) = run.take_ready(msg.run_id, Self::now_ms(), true);
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
                let closed = Some(chrono::Utc::now());
                match dashboards::publish(&db, &dashboards, grafana, msg.run_id, closed, influx_configured).await {
                    Ok(url) => tracing::info!(run_id = %msg.run_id, %url, "dashboard published"),
                    Err(e) => tracing::warn!(run_id = %msg.run_id, error = %e, "dashboard not published"),
                }
            }
            Ok(judgement)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::metrics::Window;
    use crate::infra::grafana::Dashboards;

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
