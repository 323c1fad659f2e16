//! `RunSupervisor`: owns one run's state machine and its live feed.
//!
//! ```text
//! pending → initializing → running → terminating → completed | failed | aborted
//! ```
//! Initializing: the run's network is opened and one `StepActor` per step
//! prepares its nodes. Running: once every step is ready, `started_at` is
//! stamped and each step is started `run_delay` seconds after it. A service
//! step runs until every other step has finished. Terminating: what is left is
//! stopped and everything labelled with the run is swept. Every transition is
//! persisted with its time; `failed` carries a reason a user can read.
//!
//! Policy: a required step that fails (to prepare, to start, or by exiting
//! non-zero) fails the run and stops the others; an optional step's failure
//! is recorded and the run goes on. Abort works in every state and is idempotent.

use std::collections::HashMap;
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient, ResponseActFuture,
    SpawnHandle, WrapFuture,
};
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::views::{PlanView, RunState, RunView, StepState, StepView};
use crate::domain::Env;
use crate::feed::{EventKind, Feed, RunEvent};
use crate::metrics::{FinishRun, MetricsActor, MetricsPublished, TrackRun, TrackedStep};
use crate::pool::{CloseRun, Ec2PoolActor, OpenRun};
use crate::settings::RunSettings;
use crate::domain::views::ContainerView;
use crate::step::{ReportKind, StartStep, StepActor, StepContext, StepLogs, StepOutcome, StepReport, StopReason, StopStep};
use crate::store::{runs, StoreError};

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
    state: RunState,
    feed: Feed,
    steps: HashMap<Uuid, StepSlot>,
    start_timers: Vec<SpawnHandle>,
    aborted: bool,
    failure: Option<String>,
    closing: bool,
}

impl RunSupervisor {
    /// A supervisor for the recorded run `run_id` of `plan`.
    pub fn new(run_id: Uuid, plan: PlanView, run_env: Env, services: RunServices, broker: Recipient<RunEnded>) -> Self {
        let RunServices { settings, db, pool, metrics } = services;
        let steps = plan
            .steps
            .iter()
            .map(|s| (s.id, StepSlot { view: s.clone(), addr: None, prepared: false, addresses: Vec::new(), outcome: None }))
            .collect();
        Self {
            run_id,
            plan,
            run_env,
            settings,
            db,
            pool,
            metrics,
            ingest_token: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
            broker,
            state: RunState::Pending,
            feed: Feed::default(),
            steps,
            start_timers: Vec::new(),
            aborted: false,
            failure: None,
            closing: false,
        }
    }

    /// Persists a transition (the actor waits for the write), then publishes it.
    fn transition(&mut self, state: RunState, ctx: &mut Context<Self>) {
        if self.state == state {
            return;
        }
        self.state = state;
        let reason = if state == RunState::Failed { self.failure.clone() } else { None };
        let (db, run_id, stored_reason) = (self.db.clone(), self.run_id, reason.clone());
        ctx.wait(
            async move {
                if let Err(e) = runs::set_state(&db, run_id, state, stored_reason).await {
                    tracing::error!(error = %e, %run_id, "could not record a run state");
                }
            }
            .into_actor(self),
        );
        tracing::info!(run_id = %self.run_id, state = state.as_str(), reason = reason.as_deref().unwrap_or(""), "run state");
        self.feed.publish(EventKind::Run { state, reason });
    }

    fn step_name(&self, id: Uuid) -> String {
        self.steps.get(&id).map(|s| s.view.spec.name.clone()).unwrap_or_default()
    }

    fn live_steps(&self) -> impl Iterator<Item = &StepSlot> {
        self.steps.values().filter(|s| s.outcome.is_none())
    }

    fn stop_steps(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        for handle in self.start_timers.drain(..) {
            ctx.cancel_future(handle);
        }
        for slot in self.steps.values().filter(|s| s.outcome.is_none()) {
            if let Some(addr) = &slot.addr {
                addr.do_send(StopStep { reason });
            }
        }
    }

    fn fail(&mut self, reason: String, ctx: &mut Context<Self>) {
        if self.failure.is_some() || self.aborted {
            return;
        }
        self.failure = Some(reason);
        if self.state != RunState::Terminating {
            self.transition(RunState::Terminating, ctx);
        }
        self.stop_steps(StopReason::RunFailing, ctx);
        // Steps whose actor never started (the run failed while opening) are over too.
        let never_started: Vec<Uuid> = self.steps.values().filter(|s| s.addr.is_none() && s.outcome.is_none()).map(|s| s.view.id).collect();
        for id in never_started {
            if let Some(slot) = self.steps.get_mut(&id) {
                slot.outcome = Some(StepOutcome::Skipped);
            }
            self.record_skipped(id, "the run failed before the step started", ctx);
        }
        self.maybe_close(ctx);
    }

    fn open(&mut self, ctx: &mut Context<Self>) {
        self.transition(RunState::Initializing, ctx);
        let pool = self.pool.clone();
        let run_id = self.run_id;
        let instances = self.steps.values().filter(|s| !s.view.spec.monitor).map(|s| s.view.spec.instance_count).sum();
        // A step without a time limit is taken to need a day, for the nodes' dead-man's switch.
        let run_span = self
            .steps
            .values()
            .map(|s| s.view.spec.run_delay + if s.view.spec.run_max_time == 0 { 86_400 } else { s.view.spec.run_max_time })
            .max()
            .unwrap_or(0);
        ctx.wait(async move { pool.send(OpenRun { run_id, instances }).await }.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return act.fail(format!("cannot prepare the run: {e}"), ctx),
                Err(e) => return act.fail(format!("cannot prepare the run: {e}"), ctx),
            }
            if act.aborted {
                return act.maybe_close(ctx);
            }
            let me = ctx.address().recipient::<StepReport>();
            let tracked = act
                .steps
                .values()
                .filter(|s| !s.view.spec.monitor)
                .map(|s| TrackedStep {
                    id: s.view.id,
                    name: s.view.spec.name.clone(),
                    series: s.view.spec.docker_series.clone().unwrap_or_else(|| s.view.spec.name.clone()),
                    region: s.view.spec.instance_region.clone(),
                    nodes: s.view.spec.instance_count as usize,
                    generator: !s.view.spec.service,
                })
                .collect();
            act.metrics.do_send(TrackRun {
                run_id: act.run_id,
                token: act.ingest_token.clone(),
                plan: act.plan.plan.name.clone(),
                steps: tracked,
                feed: ctx.address().recipient(),
            });
            let mut monitor_steps = Vec::new();
            for slot in act.steps.values_mut() {
                if slot.view.spec.monitor {
                    slot.outcome = Some(StepOutcome::Skipped);
                    monitor_steps.push(slot.view.id);
                    continue;
                }
                let step_ctx = StepContext {
                    run_id: act.run_id,
                    step: slot.view.clone(),
                    plan_env: act.plan.environment_data.clone(),
                    run_env: act.run_env.clone(),
                    plan_name: act.plan.plan.name.clone(),
                    run_span: std::time::Duration::from_secs(run_span),
                    settings: act.settings.clone(),
                    db: act.db.clone(),
                    ingest_token: act.ingest_token.clone(),
                };
                slot.addr = Some(StepActor::new(step_ctx, act.pool.clone(), me.clone()).start());
            }
            for id in monitor_steps {
                act.record_skipped(id, "monitor steps are not run", ctx);
            }
            act.maybe_start(ctx);
        }));
    }

    fn record_skipped(&mut self, step_id: Uuid, why: &str, ctx: &mut Context<Self>) {
        let (db, run_id) = (self.db.clone(), self.run_id);
        ctx.wait(
            async move {
                if let Err(e) = runs::set_step_state(&db, run_id, step_id, StepState::Skipped, None).await {
                    tracing::error!(error = %e, "could not record a skipped step");
                }
            }
            .into_actor(self),
        );
        let step = self.step_name(step_id);
        self.feed.publish(EventKind::Step { step, state: StepState::Skipped, reason: Some(why.into()) });
    }

    /// Once every step is prepared: running, and each step started after its delay.
    fn maybe_start(&mut self, ctx: &mut Context<Self>) {
        if self.state != RunState::Initializing || !self.live_steps().all(|s| s.prepared) {
            return;
        }
        self.transition(RunState::Running, ctx);
        // Each `dns_name` and the addresses of its step's nodes, for nodes that share no network.
        let hosts: Vec<(String, Vec<String>)> = self
            .steps
            .values()
            .filter_map(|s| Some((s.view.spec.dns_name.clone()?, s.addresses.clone())))
            .filter(|(_, addresses)| !addresses.is_empty())
            .collect();
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

    /// Stops service steps once every other step is done; closes the run once every step is.
    fn maybe_close(&mut self, ctx: &mut Context<Self>) {
        let others_done = self.live_steps().all(|s| s.view.spec.service);
        if others_done && self.state == RunState::Running {
            self.transition(RunState::Terminating, ctx);
            self.stop_steps(StopReason::ServiceDone, ctx);
        }
        if self.live_steps().next().is_some() || self.closing {
            return;
        }
        self.closing = true;
        if self.state != RunState::Terminating {
            self.transition(RunState::Terminating, ctx);
        }
        let pool = self.pool.clone();
        let run_id = self.run_id;
        let last = if self.aborted {
            RunState::Aborted
        } else if self.failure.is_some() {
            RunState::Failed
        } else {
            RunState::Completed
        };
        let reason = if last == RunState::Failed { self.failure.clone() } else { None };
        let (db, stored_reason) = (self.db.clone(), reason.clone());
        let metrics = self.metrics.clone();
        // The sweep, the metrics summary and the final write complete before the actor stops.
        ctx.wait(
            async move {
                match metrics.send(FinishRun { run_id }).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(%run_id, error = %e, "could not store the run's metrics"),
                    Err(e) => tracing::error!(%run_id, error = %e, "could not store the run's metrics"),
                }
                match pool.send(CloseRun { run_id }).await {
                    Ok(Ok((0, _))) => {}
                    Ok(Ok((containers, networks))) => tracing::info!(%run_id, containers, networks, "swept what the run left"),
                    Ok(Err(e)) => tracing::error!(%run_id, error = %e, "the run's sweep failed"),
                    Err(e) => tracing::error!(%run_id, error = %e, "the run's sweep failed"),
                }
                if let Err(e) = runs::set_state(&db, run_id, last, stored_reason).await {
                    tracing::error!(error = %e, %run_id, "could not record the run's final state");
                }
            }
            .into_actor(self)
            .map(move |_, act, ctx| {
                act.state = last;
                tracing::info!(run_id = %act.run_id, state = last.as_str(), reason = reason.as_deref().unwrap_or(""), "run state");
                act.feed.publish(EventKind::Run { state: last, reason });
                let events = act.feed.close();
                act.broker.do_send(RunEnded { run_id: act.run_id, events });
                ctx.stop();
            }),
        );
    }
}

impl Actor for RunSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
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
        self.feed.publish(EventKind::Metrics {
            step: msg.step,
            start_ms: msg.start_ms,
            nodes: msg.nodes,
            counters: msg.counters,
            timers: msg.timers,
        });
    }
}

/// Aborts the run: whatever its state, everything is stopped and removed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AbortRun;

impl Handler<AbortRun> for RunSupervisor {
    type Result = ();

    fn handle(&mut self, _: AbortRun, ctx: &mut Context<Self>) {
        if self.aborted || self.closing {
            return;
        }
        self.aborted = true;
        if self.state != RunState::Terminating {
            self.transition(RunState::Terminating, ctx);
        }
        self.stop_steps(StopReason::Abort, ctx);
        self.maybe_close(ctx);
    }
}

/// A subscription to a run's feed.
#[derive(Debug)]
pub struct Subscription {
    /// The run as stored now.
    pub snapshot: RunView,
    /// The number of the last event when the snapshot was taken.
    pub seq: u64,
    /// Events after the `since` asked for.
    pub backlog: Vec<RunEvent>,
    /// Events to come; `None` when the run is over.
    pub live: Option<mpsc::Receiver<RunEvent>>,
}

/// Subscribes to the run's feed from event `since` on.
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscription, StoreError>")]
pub struct Subscribe {
    /// The last event the subscriber has; 0 for all.
    pub since: u64,
}

impl Handler<Subscribe> for RunSupervisor {
    type Result = ResponseActFuture<Self, Result<Subscription, StoreError>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let max = self.settings.max_subscribers_per_run;
        if self.feed.subscribers() >= max {
            let refused = StoreError::Limit {
                code: "too_many_subscribers",
                message: format!("this run already has {max} live subscribers (limits.max_subscribers_per_run); try again later"),
            };
            return Box::pin(actix::fut::ready(Err(refused)));
        }
        let seq = self.feed.last_seq();
        let (backlog, live) = self.feed.subscribe(msg.since);
        let (db, run_id) = (self.db.clone(), self.run_id);
        Box::pin(async move {
            let snapshot = runs::get(&db, run_id).await?;
            Ok(Subscription { snapshot, seq, backlog, live: Some(live) })
        }.into_actor(self))
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
