//! `RunSupervisor`: owns one run's state machine and its live feed.
//!
//! ```text
//! pending → initializing → running → terminating → completed | failed | aborted
//! ```
//! A failure or an abort goes to terminating from any live state. The state is
//! one `RunPhase` (`domain::life`), which carries why the run is ending;
//! `RunPhase::can_become` is the diagram and `transition_to` refuses anything
//! else. Each transition is persisted, then published, in the order it was
//! made (`journal`). Initializing: the run's network is opened and one `StepActor` per step
//! prepares its nodes. Running: once every step is ready, `started_at` is
//! stamped and each step is started `run_delay` seconds after it. A service
//! step runs until every other step has finished. Terminating: what is left is
//! stopped, service steps last (once every other step is over), and then
//! (closing) the metrics are stored and everything labelled with the run is
//! swept. Every transition is persisted with its time; `failed` carries a
//! reason a user can read.
//!
//! Carrying on after a restart (`resume`): a run the database still calls
//! running or terminating is taken over by a new supervisor. Its network and
//! containers are found by their labels and adopted, steps that finished keep
//! their outcome, steps that were running go on until their `run_max_time`
//! counted from their recorded start, steps not started yet start at the run's
//! recorded start plus their `run_delay`. Feed numbers continue after the last
//! recorded one (recorded every second, with a margin for the last second).
//!
//! Policy: a required step that fails (to prepare, to start, or by exiting
//! non-zero) fails the run and stops the others; an optional step's failure
//! is recorded and the run goes on. Abort works in every state and is idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient, ResponseActFuture, SpawnHandle,
    WrapFuture,
};
use sea_orm::DatabaseConnection;

use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::domain::compare;
use crate::domain::judge;
use crate::domain::life::{Ending, RunPhase, StepOutcome, StopReason};
use crate::domain::views::ContainerView;
use crate::domain::views::{PlanView, RunState, RunView, StepState, StepView};
use crate::domain::Env;
use crate::domain::{DomainError, LimitCode};
use crate::feed::{EventKind, Feed, Listener, RunEvent, Shared};
use crate::journal::{self, Journal, Journaled};
use crate::metrics::{FinishRun, MetricsActor, MetricsPublished, PublishDashboard, RunJudgement, ThresholdsJudged, TrackRun, TrackedStep};
use crate::pool::{AdoptRun, CloseRun, Ec2PoolActor, OpenRun};
use crate::run_cost::RunMeter;
use crate::settings::RunSettings;
use crate::step::{ReportKind, StartStep, StepActor, StepContext, StepLogs, StepReport, StepResume, StopStep};
use crate::store::{plans, runs};

/// A run has ended; its events are handed over for late subscribers.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RunEnded {
    /// The run.
    pub run_id: Uuid,
    /// Every event of its feed.
    pub events: Vec<RunEvent>,
}

struct StepSlot {
    view: StepView,
    addr: Option<Addr<StepActor>>,
    prepared: bool,
    /// The addresses of the step's nodes, once prepared.
    addresses: Vec<String>,
    outcome: Option<StepOutcome>,
    /// A stop was sent to its actor.
    stop_sent: bool,
    /// None of its containers runs any more (its nodes may still be being torn down).
    stopped: bool,
}

/// What every run uses: settings, the database, the pool, the metrics collector.
#[derive(Clone)]
pub struct RunServices {
    /// Shared settings.
    pub settings: RunSettings,
    /// The database.
    pub db: DatabaseConnection,
    /// The node pool.
    pub pool: Addr<Ec2PoolActor>,
    /// The metrics collector.
    pub metrics: Addr<MetricsActor>,
}

/// Supervises one run.
pub struct RunSupervisor {
    run_id: Uuid,
    plan: PlanView,
    run_env: Env,
    settings: RunSettings,
    db: DatabaseConnection,
    pool: Addr<Ec2PoolActor>,
    metrics: Addr<MetricsActor>,
    ingest_token: String,
    broker: Recipient<RunEnded>,
    phase: RunPhase,
    /// The state and reason last handed to the journal, so an unchanged one is not written again.
    stored: (RunState, Option<String>),
    journal: Journal<Self>,
    feed: Feed,
    steps: HashMap<Uuid, StepSlot>,
    start_timers: Vec<SpawnHandle>,
    /// Set when carrying on a run after a restart: when it started, and each step's recorded state and start.
    resumed: Option<Resumed>,
    /// The feed number last written to the database.
    recorded_seq: u64,
    /// What the run's instances cost, metered and checked against the budget.
    meter: RunMeter,
    /// A metering is under way.
    metering: bool,
}

/// What the database says of a run being carried on.
struct Resumed {
    started_at: Option<DateTime<Utc>>,
    steps: HashMap<Uuid, StepResume>,
    scheduled: bool,
}

/// Feed numbers a crashed broker may have handed out after the last one it recorded (it records every second).
const FEED_SEQ_MARGIN: u64 = 10_000;

impl RunSupervisor {
    /// A supervisor for the recorded run `run_id` of `plan`; its relays present `ingest_token`.
    pub fn new(
        run_id: Uuid,
        plan: PlanView,
        run_env: Env,
        services: RunServices,
        broker: Recipient<RunEnded>,
        ingest_token: String,
    ) -> Self {
        let RunServices { settings, db, pool, metrics } = services;
        let meter = RunMeter::new(run_id, pool.clone(), db.clone(), settings.cost.clone(), None);
        let steps = plan
            .steps
            .iter()
            .map(|s| {
                (
                    s.id,
                    StepSlot {
                        view: s.clone(),
                        addr: None,
                        prepared: false,
                        addresses: Vec::new(),
                        outcome: None,
                        stop_sent: false,
                        stopped: false,
                    },
                )
            })
            .collect();
        Self {
            run_id,
            plan,
            run_env,
            settings,
            db,
            pool,
            metrics,
            ingest_token,
            broker,
            phase: RunPhase::Pending,
            stored: (RunState::Pending, None),
            journal: Journal::default(),
            feed: Feed::default(),
            steps,
            start_timers: Vec::new(),
            resumed: None,
            recorded_seq: 0,
            meter,
            metering: false,
        }
    }

    /// A supervisor that carries on `run` (running or terminating) after a broker restart.
    pub fn resume(
        run: &RunView,
        plan: PlanView,
        run_env: Env,
        services: RunServices,
        broker: Recipient<RunEnded>,
        recovery: runs::Recovery,
    ) -> Self {
        let token = recovery.ingest_token.clone().unwrap_or_default();
        let mut me = Self::new(run.id, plan, run_env, services, broker, token);
        me.meter = RunMeter::new(run.id, me.pool.clone(), me.db.clone(), me.settings.cost.clone(), run.cost.clone());
        // A terminating run ends as it was ending: its cause is stored with the state.
        me.phase = match &recovery.phase {
            terminating @ RunPhase::Terminating(_) => terminating.clone(),
            _ => RunPhase::Running,
        };
        me.stored = (me.phase.state(), me.phase.ending().and_then(Ending::reason).map(str::to_string));
        let seq = recovery.feed_seq + FEED_SEQ_MARGIN;
        me.feed = Feed::after(seq);
        me.recorded_seq = recovery.feed_seq;
        let steps = run.step_records.iter().map(|r| (r.step_id, StepResume { state: r.state, started_at: r.started_at })).collect();
        me.resumed = Some(Resumed { started_at: run.started_at, steps, scheduled: false });
        me
    }

    /// Writes the feed's last number when it moved, so a restarted broker continues after it.
    fn record_seq(&mut self, ctx: &mut Context<Self>) {
        let seq = self.feed.last_seq();
        if seq <= self.recorded_seq {
            return;
        }
        self.recorded_seq = seq;
        let (db, run_id) = (self.db.clone(), self.run_id);
        ctx.spawn(
            async move {
                if let Err(e) = runs::set_feed_seq(&db, run_id, seq).await {
                    tracing::warn!(%run_id, error = %e, "could not record the feed's position");
                }
            }
            .into_actor(self),
        );
    }

    /// Moves the run to `next`: checked against the run's life (`RunPhase::can_become`;
    /// anything else is a bug, logged and refused), then persisted, then published,
    /// in the order transitions are made. A phase that stores nothing new (closing)
    /// is neither written nor published; an ended run's publication closes its feed.
    fn transition_to(&mut self, next: RunPhase, ctx: &mut Context<Self>) -> bool {
        if !self.phase.can_become(&next) {
            tracing::error!(run_id = %self.run_id, from = ?self.phase, to = ?next, "refused a run transition its life does not allow");
            return false;
        }
        self.phase = next.clone();
        let stored = (next.state(), next.ending().and_then(Ending::reason).map(str::to_string));
        if stored == self.stored {
            return true;
        }
        let publish = stored.0 != self.stored.0;
        self.stored = stored.clone();
        let (db, run_id) = (self.db.clone(), self.run_id);
        let (state, reason) = stored;
        let write = async move {
            if let Err(e) = runs::set_phase(&db, run_id, &next).await {
                tracing::error!(error = %e, %run_id, "could not record a run state");
            }
        };
        let job = write.into_actor(self).map(move |(), act, ctx| {
            if !publish {
                return;
            }
            tracing::info!(run_id = %act.run_id, state = state.as_str(), reason = reason.as_deref().unwrap_or(""), "run state");
            act.feed.publish(EventKind::Run { state, reason });
            if state.is_finished() {
                let events = act.feed.close();
                act.broker.do_send(RunEnded { run_id: act.run_id, events });
                ctx.stop();
            }
        });
        journal::record(self, ctx, Box::pin(job));
        true
    }

    /// Records what the run's instances have cost so far, and aborts the run when that
    /// reaches a budget cap (one metering at a time; none once the run is closing).
    fn meter(&mut self, ctx: &mut Context<Self>) {
        if self.metering || matches!(self.phase, RunPhase::Closing(_) | RunPhase::Ended(_)) {
            return;
        }
        self.metering = true;
        let meter = self.meter.clone();
        // Checked on a task of its own: it holds the meter's lock, which the closing job (a
        // journal write, during which the actor polls nothing else) waits for.
        let checking = actix::spawn(async move { meter.check().await });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(checking).map(|checked, act, ctx| {
            act.metering = false;
            let Ok(Some((cost, reached))) = checked else { return };
            act.feed.publish(EventKind::Cost { cost });
            if let Some(why) = reached.filter(|_| act.phase.is_live()) {
                tracing::warn!(run_id = %act.run_id, reason = %why, "the run reached its budget; aborting it");
                act.end(Ending::OverBudget(why), ctx);
            }
        }));
    }

    fn step_name(&self, id: Uuid) -> String {
        self.steps.get(&id).map(|s| s.view.spec.name.clone()).unwrap_or_default()
    }

    fn live_steps(&self) -> impl Iterator<Item = &StepSlot> {
        self.steps.values().filter(|s| s.outcome.is_none())
    }

    /// Stops the live steps that are not services; service steps are stopped once
    /// every other step is over (`maybe_close`), so generators never outlive what they test.
    fn stop_steps(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        for handle in self.start_timers.drain(..) {
            ctx.cancel_future(handle);
        }
        self.send_stops(reason, false);
    }

    fn send_stops(&mut self, reason: StopReason, services: bool) {
        for slot in self.steps.values_mut().filter(|s| s.outcome.is_none() && !s.stop_sent && s.view.spec.service == services) {
            if let Some(addr) = &slot.addr {
                addr.do_send(StopStep { reason });
                slot.stop_sent = true;
            }
        }
    }

    /// Ends the run for `ending` unless it is ending for a cause that outranks it: every
    /// step is stopped (services last), and steps that never started are recorded skipped.
    fn end(&mut self, ending: Ending, ctx: &mut Context<Self>) {
        let next = RunPhase::Terminating(ending.clone());
        if !self.phase.can_become(&next) {
            return;
        }
        self.transition_to(next, ctx);
        let reason = match ending {
            Ending::Finished => StopReason::ServiceDone,
            Ending::StepFailed(_) => StopReason::RunFailing,
            Ending::Breached(_) => StopReason::Breach,
            Ending::Aborted | Ending::OverBudget(_) | Ending::Lost(_) => StopReason::Abort,
        };
        self.stop_steps(reason, ctx);
        if ending != Ending::Finished {
            // Steps whose actor never started (the run ended while opening) are over too.
            let never_started: Vec<Uuid> =
                self.steps.values().filter(|s| s.addr.is_none() && s.outcome.is_none()).map(|s| s.view.id).collect();
            let why =
                if ending.is_abort() { "the run was aborted before the step started" } else { "the run failed before the step started" };
            for id in never_started {
                if let Some(slot) = self.steps.get_mut(&id) {
                    slot.outcome = Some(StepOutcome::Skipped);
                }
                self.record_step(id, StepState::Skipped, why, ctx);
            }
        }
        self.maybe_close(ctx);
    }

    fn fail(&mut self, reason: String, ctx: &mut Context<Self>) {
        self.end(Ending::StepFailed(reason), ctx);
    }

    fn open(&mut self, ctx: &mut Context<Self>) {
        self.transition_to(RunPhase::Initializing, ctx);
        let pool = self.pool.clone();
        let run_id = self.run_id;
        let instances = self.steps.values().filter(|s| !s.view.spec.monitor).map(|s| s.view.spec.instance_count).sum();
        let run_span = self.run_span();
        ctx.wait(async move { pool.send(OpenRun { run_id, instances }).await }.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return act.fail(format!("cannot prepare the run: {e}"), ctx),
                Err(e) => return act.fail(format!("cannot prepare the run: {e}"), ctx),
            }
            if !act.phase.is_live() {
                return act.maybe_close(ctx);
            }
            act.spawn_steps(run_span, ctx);
        }));
    }

    /// A day for steps without a time limit, for the nodes' dead-man's switch.
    fn run_span(&self) -> u64 {
        self.steps
            .values()
            .map(|s| s.view.spec.run_delay + if s.view.spec.run_max_time == 0 { 86_400 } else { s.view.spec.run_max_time })
            .max()
            .unwrap_or(0)
    }

    /// Has the metrics actor track the run, and starts one `StepActor` per step still to run.
    fn spawn_steps(&mut self, run_span: u64, ctx: &mut Context<Self>) {
        let me = ctx.address().recipient::<StepReport>();
        let tracked = self
            .steps
            .values()
            .filter(|s| !s.view.spec.monitor)
            .map(|s| TrackedStep {
                id: s.view.id,
                name: s.view.spec.name.clone(),
                series: s.view.spec.docker_series.clone().unwrap_or_else(|| s.view.spec.name.clone()),
                regions: s.view.spec.instance_region.names(),
                nodes: s.view.spec.instance_count as usize,
                generator: !s.view.spec.service,
            })
            .collect();
        self.metrics.do_send(TrackRun {
            run_id: self.run_id,
            token: self.ingest_token.clone(),
            plan: self.plan.plan.name.clone(),
            steps: tracked,
            feed: ctx.address().recipient(),
            resumed: self.resumed.is_some(),
            own_database: self.steps.values().any(|s| s.view.spec.monitor),
            thresholds: judge::compile(&self.plan),
            judged: ctx.address().recipient(),
            since_ms: self.resumed.as_ref().and_then(|r| r.started_at).map(|t| t.timestamp_millis()),
        });
        // The dashboard goes up as the run starts, so it can be watched in Grafana.
        let publish = self.metrics.send(PublishDashboard { run_id: self.run_id });
        ctx.spawn(publish.into_actor(self).map(|answer, act, _| {
            if let Ok(Some(url)) = answer {
                act.feed.publish(EventKind::Dashboard { url });
            }
        }));
        let mut monitor_steps = Vec::new();
        let mut failed_before = Vec::new();
        for slot in self.steps.values_mut() {
            if slot.view.spec.monitor {
                slot.outcome = Some(if self.settings.influx { StepOutcome::Completed } else { StepOutcome::Skipped });
                monitor_steps.push(slot.view.id);
                continue;
            }
            let resume = self.resumed.as_ref().and_then(|r| r.steps.get(&slot.view.id)).cloned();
            // A step that finished before the restart keeps its outcome.
            match resume.as_ref().map(|r| r.state) {
                Some(StepState::Completed) => {
                    slot.outcome = Some(StepOutcome::Completed);
                    continue;
                }
                Some(StepState::Skipped) => {
                    slot.outcome = Some(StepOutcome::Skipped);
                    continue;
                }
                Some(StepState::Failed) => {
                    slot.outcome = Some(StepOutcome::Failed("failed before the broker restarted".into()));
                    if slot.view.spec.required {
                        failed_before.push(slot.view.spec.name.clone());
                    }
                    continue;
                }
                _ => {}
            }
            let step_ctx = StepContext {
                run_id: self.run_id,
                step: slot.view.clone(),
                plan_env: self.plan.environment_data.clone(),
                run_env: self.run_env.clone(),
                plan_name: self.plan.plan.name.clone(),
                run_span: std::time::Duration::from_secs(run_span),
                settings: self.settings.clone(),
                db: self.db.clone(),
                ingest_token: self.ingest_token.clone(),
                metrics: self.metrics.clone(),
                resume,
            };
            slot.addr = Some(StepActor::new(step_ctx, self.pool.clone(), me.clone()).start());
        }
        // A monitor step is the run's own metrics database (the original ran InfluxDB for it).
        for id in monitor_steps {
            if self.settings.influx {
                let database = crate::domain::dashboard::monitor_database(self.run_id);
                self.record_step(id, StepState::Completed, &format!("the run's metrics go to the InfluxDB database {database}"), ctx);
            } else {
                self.record_step(id, StepState::Skipped, "no InfluxDB is configured (influx.url) to keep the run's metrics in", ctx);
            }
        }
        if let Some(name) = failed_before.first() {
            self.fail(format!("step {name:?} failed"), ctx);
        } else if let Some(ending) = self.phase.ending().cloned() {
            // Carried on while terminating: what is left stops as the run was ending.
            let reason = if ending.is_abort() { StopReason::Abort } else { StopReason::RunFailing };
            self.stop_steps(reason, ctx);
        }
        self.maybe_start(ctx);
        self.maybe_close(ctx);
    }

    /// Carries on a run after a restart: adopts its network, then its steps.
    fn adopt(&mut self, ctx: &mut Context<Self>) {
        let pool = self.pool.clone();
        let run_id = self.run_id;
        let run_span = self.run_span();
        self.feed.publish(EventKind::Run { state: self.phase.state(), reason: Some("carried on by a restarted broker".into()) });
        ctx.wait(async move { pool.send(AdoptRun { run_id }).await }.into_actor(self).map(move |res, act, ctx| {
            let refused = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = refused {
                // Nothing of the run is adopted: every step is over, and the run fails and is swept.
                for slot in act.steps.values_mut() {
                    slot.outcome.get_or_insert(StepOutcome::Skipped);
                }
                return act.fail(format!("the broker restarted and cannot carry on this run: {e}"), ctx);
            }
            act.spawn_steps(run_span, ctx);
        }));
    }

    /// Records a step's final state, with why, in the database, then on the feed.
    fn record_step(&mut self, step_id: Uuid, state: StepState, why: &str, ctx: &mut Context<Self>) {
        let (db, run_id, reason) = (self.db.clone(), self.run_id, why.to_string());
        let step = self.step_name(step_id);
        let write = async move {
            if let Err(e) = runs::set_step_state(&db, run_id, step_id, state, Some(reason)).await {
                tracing::error!(error = %e, "could not record a step's state");
            }
        };
        let why = why.to_string();
        let job = write.into_actor(self).map(move |(), act, _| {
            act.feed.publish(EventKind::Step { step, state, reason: Some(why) });
        });
        journal::record(self, ctx, Box::pin(job));
    }

    /// Each `dns_name` and the addresses of its step's nodes, for nodes that share no network.
    fn hosts(&self) -> Vec<(String, Vec<String>)> {
        self.steps
            .values()
            .filter_map(|s| Some((s.view.spec.dns_name.clone()?, s.addresses.clone())))
            .filter(|(_, addresses)| !addresses.is_empty())
            .collect()
    }

    /// Once every step is prepared: running, and each step started after its delay.
    fn maybe_start(&mut self, ctx: &mut Context<Self>) {
        if !self.live_steps().all(|s| s.prepared) {
            return;
        }
        if let Some(resumed) = &mut self.resumed {
            // Carried on: steps not started yet start at the run's recorded start plus their delay.
            if self.phase != RunPhase::Running || resumed.scheduled {
                return;
            }
            resumed.scheduled = true;
            let started_at = resumed.started_at.unwrap_or_else(Utc::now);
            let waiting: Vec<(Uuid, u64)> = resumed
                .steps
                .iter()
                .filter(|(_, r)| r.state == StepState::Pending)
                .filter_map(|(id, _)| self.steps.get(id).map(|s| (*id, s.view.spec.run_delay)))
                .collect();
            for (id, delay) in waiting {
                let Some(addr) = self.steps.get(&id).and_then(|s| s.addr.clone()) else { continue };
                let due = started_at + chrono::Duration::seconds(i64::try_from(delay).unwrap_or(i64::MAX / 1000));
                let wait = (due - Utc::now()).to_std().unwrap_or_default();
                let start = StartStep { hosts: self.hosts() };
                self.start_timers.push(ctx.run_later(wait, move |_, _| addr.do_send(start)));
            }
            return self.maybe_close(ctx);
        }
        if self.phase != RunPhase::Initializing {
            return;
        }
        self.transition_to(RunPhase::Running, ctx);
        let hosts = self.hosts();
        let mut order: Vec<(u64, Addr<StepActor>)> =
            self.live_steps().filter_map(|s| s.addr.clone().map(|a| (s.view.spec.run_delay, a))).collect();
        order.sort_by_key(|(delay, _)| *delay);
        for (delay, addr) in order {
            let start = StartStep { hosts: hosts.clone() };
            if delay == 0 {
                addr.do_send(start);
            } else {
                self.start_timers.push(ctx.run_later(Duration::from_secs(delay), move |_, _| addr.do_send(start)));
            }
        }
        self.maybe_close(ctx);
    }

    /// Stops service steps once every other step is done; closes the run once every step is:
    /// the metrics are stored and what the run left is swept, then it ends.
    fn maybe_close(&mut self, ctx: &mut Context<Self>) {
        // Services are stopped as soon as no other step's container runs, before those steps' teardown.
        let others_done = self.live_steps().all(|s| s.view.spec.service || s.stopped);
        let all_done = self.live_steps().next().is_none();
        if (others_done && self.phase == RunPhase::Running) || (all_done && self.phase.is_live()) {
            self.transition_to(RunPhase::Terminating(Ending::Finished), ctx);
        }
        let Some(ending) = self.phase.ending().cloned() else { return };
        if others_done {
            let reason = if ending.is_abort() { StopReason::Abort } else { StopReason::ServiceDone };
            self.send_stops(reason, true);
        }
        if !all_done || !matches!(self.phase, RunPhase::Terminating(_)) {
            return;
        }
        self.transition_to(RunPhase::Closing(ending.clone()), ctx);
        let (pool, metrics, db, run_id, plan_id) =
            (self.pool.clone(), self.metrics.clone(), self.db.clone(), self.run_id, self.plan.plan.id);
        let meter = self.meter.clone();
        let judged = ending.clone();
        // The metrics are stored and judged, what the run left is swept, and the verdict
        // is stored before the run ends.
        let close = async move {
            let missing = |e: String| {
                tracing::error!(%run_id, error = %e, "could not store the run's metrics");
                RunJudgement { lost: vec![format!("the run's metrics could not be stored: {e}")], ..Default::default() }
            };
            let judgement = match metrics.send(FinishRun { run_id }).await {
                Ok(Ok(judgement)) => judgement,
                Ok(Err(e)) => missing(e.to_string()),
                Err(e) => missing(e.to_string()),
            };
            match pool.send(CloseRun { run_id }).await {
                Ok(Ok((0, _))) => {}
                Ok(Ok((containers, networks))) => tracing::info!(%run_id, containers, networks, "swept what the run left"),
                Ok(Err(e)) => tracing::error!(%run_id, error = %e, "the run's sweep failed"),
                Err(e) => tracing::error!(%run_id, error = %e, "the run's sweep failed"),
            }
            let cost = meter.close().await;
            let (regressions, fail_on_regression) = regressions(&db, run_id, plan_id).await;
            let (verdict, reason) =
                judge::verdict(&judged, &judgement.thresholds, &judgement.saturated, &judgement.lost, &regressions, fail_on_regression);
            if let Err(e) = runs::set_verdict(&db, run_id, verdict, &reason).await {
                tracing::error!(%run_id, error = %e, "could not record the run's verdict");
            }
            (judgement.published, judgement.thresholds, verdict, reason, cost)
        };
        let job = close.into_actor(self).map(move |(published, thresholds, verdict, reason, cost), act, ctx| {
            for window in published {
                act.publish_window(window);
            }
            for threshold in thresholds {
                act.feed.publish(EventKind::Threshold { threshold });
            }
            if let Some(cost) = cost {
                act.feed.publish(EventKind::Cost { cost });
            }
            tracing::info!(run_id = %act.run_id, verdict = verdict.as_str(), %reason, "run verdict");
            act.feed.publish(EventKind::Verdict { verdict, reason });
            act.transition_to(RunPhase::Ended(ending), ctx);
        });
        journal::record(self, ctx, Box::pin(job));
    }
}

/// The regression rules a finished run breaks against its plan's baseline (none without
/// rules or a baseline), and whether the plan fails runs for them.
async fn regressions(db: &DatabaseConnection, run_id: Uuid, plan_id: Uuid) -> (Vec<String>, bool) {
    let Ok(plan) = plans::get(db, plan_id).await else { return (Vec::new(), false) };
    let Some(baseline) = plan.baseline_run_id.filter(|b| *b != run_id && !plan.compare.is_empty()) else {
        return (Vec::new(), plan.fail_on_regression);
    };
    let (Ok(now), Ok(then)) = (runs::metrics(db, run_id).await, runs::metrics(db, baseline).await) else {
        return (Vec::new(), plan.fail_on_regression);
    };
    let comparison = compare::compare(run_id, &now, baseline, &then, &plan.compare, true);
    let broken = comparison.rules.into_iter().filter(|r| r.regressed).map(|r| r.summary).collect();
    (broken, plan.fail_on_regression)
}

impl Journaled for RunSupervisor {
    fn journal(&mut self) -> &mut Journal<Self> {
        &mut self.journal
    }
}

impl Actor for RunSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.record_seq(ctx));
        if self.meter.enabled() {
            ctx.run_interval(self.settings.cost.check_every, |act, ctx| act.meter(ctx));
        }
        if self.resumed.is_some() {
            return self.adopt(ctx);
        }
        self.feed.publish(EventKind::Run { state: RunState::Pending, reason: None });
        self.open(ctx);
    }
}

impl Handler<StepReport> for RunSupervisor {
    type Result = ();

    fn handle(&mut self, msg: StepReport, ctx: &mut Context<Self>) {
        let name = self.step_name(msg.step_id);
        match msg.kind {
            ReportKind::Event(kind) => {
                self.feed.publish(kind);
            }
            ReportKind::Stopped => {
                if let Some(slot) = self.steps.get_mut(&msg.step_id) {
                    slot.stopped = true;
                }
                self.maybe_close(ctx);
            }
            ReportKind::Prepared(Ok(addresses)) => {
                if let Some(slot) = self.steps.get_mut(&msg.step_id) {
                    slot.prepared = true;
                    slot.addresses = addresses;
                }
                self.maybe_start(ctx);
            }
            ReportKind::Prepared(Err(_)) => {
                // The step finishes as failed right after; the policy is applied then.
            }
            ReportKind::Finished(outcome) => {
                let required = self.steps.get(&msg.step_id).is_some_and(|s| s.view.spec.required);
                if let Some(slot) = self.steps.get_mut(&msg.step_id) {
                    slot.outcome = Some(outcome.clone());
                    slot.addr = None;
                }
                if let StepOutcome::Failed(reason) = &outcome {
                    if required {
                        self.fail(format!("step {name:?} failed: {reason}"), ctx);
                    }
                }
                self.maybe_start(ctx);
                self.maybe_close(ctx);
            }
        }
    }
}

impl Handler<MetricsPublished> for RunSupervisor {
    type Result = ();

    fn handle(&mut self, msg: MetricsPublished, _: &mut Context<Self>) {
        self.publish_window(msg);
    }
}

impl RunSupervisor {
    /// Puts a merged window of a step on the feed.
    fn publish_window(&mut self, msg: MetricsPublished) {
        self.feed.publish(EventKind::Metrics {
            step: msg.step,
            start_ms: msg.start_ms,
            nodes: msg.nodes,
            counters: msg.counters,
            timers: msg.timers,
            histograms: msg.histograms,
            cpu: msg.cpu,
            regions: msg.regions,
            overflow: msg.overflow,
        });
    }
}

impl Handler<ThresholdsJudged> for RunSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ThresholdsJudged, ctx: &mut Context<Self>) {
        for threshold in msg.changed {
            self.feed.publish(EventKind::Threshold { threshold });
        }
        if let Some(breach) = msg.breach {
            self.end(Ending::Breached(breach.reason), ctx);
        }
    }
}

/// Aborts the run: whatever its state, everything is stopped and removed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AbortSupervised;

impl Handler<AbortSupervised> for RunSupervisor {
    type Result = ();

    fn handle(&mut self, _: AbortSupervised, ctx: &mut Context<Self>) {
        self.end(Ending::Aborted, ctx);
    }
}

/// A subscription to a run's feed.
#[derive(Debug)]
pub struct Subscription {
    /// The run as stored now.
    pub snapshot: RunView,
    /// The number of the last event when the snapshot was taken.
    pub seq: u64,
    /// The number of the oldest event the feed still keeps: a `since` before it missed
    /// the events in between (the snapshot has the run as it is now).
    pub kept_from: u64,
    /// Events after the `since` asked for.
    pub backlog: Vec<Arc<Shared>>,
    /// Events to come; `None` when the run is over.
    pub live: Option<Listener>,
}

/// Subscribes to the run's feed from event `since` on.
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscription, DomainError>")]
pub struct SubscribeSupervised {
    /// The last event the subscriber has; 0 for all.
    pub since: u64,
}

impl Handler<SubscribeSupervised> for RunSupervisor {
    type Result = ResponseActFuture<Self, Result<Subscription, DomainError>>;

    fn handle(&mut self, msg: SubscribeSupervised, _: &mut Context<Self>) -> Self::Result {
        let max = self.settings.max_subscribers_per_run;
        if self.feed.subscribers() >= max {
            let refused = DomainError::Limit {
                code: LimitCode::TooManySubscribers,
                message: format!("this run already has {max} live subscribers (limits.max_subscribers_per_run); try again later"),
            };
            return Box::pin(actix::fut::ready(Err(refused)));
        }
        let (seq, kept_from) = (self.feed.last_seq(), self.feed.kept_from());
        let (backlog, live) = self.feed.subscribe(msg.since);
        let (db, run_id) = (self.db.clone(), self.run_id);
        Box::pin(
            async move {
                let snapshot = runs::get(&db, run_id).await?;
                Ok(Subscription { snapshot, seq, kept_from, backlog, live: Some(live) })
            }
            .into_actor(self),
        )
    }
}

/// The output of the run's containers that are not removed yet, optionally of one step (by name) and node.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ContainerView>")]
pub struct RunLiveLogs {
    /// Only this step.
    pub step: Option<String>,
    /// Only this node.
    pub node: Option<String>,
    /// Keep only the last lines of each.
    pub tail: Option<usize>,
}

impl Handler<RunLiveLogs> for RunSupervisor {
    type Result = actix::ResponseFuture<Vec<ContainerView>>;

    fn handle(&mut self, msg: RunLiveLogs, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self
            .steps
            .values()
            .filter(|s| msg.step.as_ref().is_none_or(|wanted| *wanted == s.view.spec.name))
            .filter_map(|s| s.addr.as_ref())
            .map(|addr| addr.send(StepLogs { node: msg.node.clone(), tail: msg.tail }))
            .collect();
        Box::pin(async move { futures_util::future::join_all(asks).await.into_iter().flatten().flatten().collect() })
    }
}
