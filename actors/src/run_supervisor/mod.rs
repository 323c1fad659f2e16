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

mod close;
mod feed;
mod schedule;
mod steps;

use std::collections::HashMap;
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle, WrapFuture};
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

pub use self::feed::{RunEnded, RunLiveLogs, SubscribeSupervised, Subscription};
use crate::domain::life::{Ending, RunPhase, StepOutcome};
use crate::domain::views::{PlanView, RunState, RunView, StepState, StepView};
use crate::domain::Env;
use crate::feed::{EventKind, Feed};
use crate::journal::{self, Journal, Journaled};
use crate::metrics::{MetricsActor, ThresholdsJudged};
use crate::pool::{Ec2PoolActor, OpenRun};
use crate::run_cost::RunMeter;
use crate::settings::RunSettings;
use crate::step::{ReportKind, StepActor, StepReport, StepResume};
use crate::store::runs;

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

    /// Ends the run for `ending` unless it is ending for a cause that outranks it: every
    /// step is stopped (services last), and steps that never started are recorded skipped.
    fn end(&mut self, ending: Ending, ctx: &mut Context<Self>) {
        let next = RunPhase::Terminating(ending.clone());
        if !self.phase.can_become(&next) {
            return;
        }
        self.transition_to(next, ctx);
        self.stop_steps(ending.stop_reason(), ctx);
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
