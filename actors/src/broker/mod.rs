//! `BrokerActor`: owns the runs. Starts a `RunSupervisor` per run, forwards
//! aborts and feed subscriptions to it, serves finished runs from the
//! database, and reconciles at start: runs the database still calls live are
//! carried on (running or terminating: adopted by a resuming supervisor;
//! pending or initializing: swept and initialized again), and every resource
//! labelled with this broker that belongs to no live run is removed. A run
//! that cannot be carried on fails with a reason and is swept.

mod preflight;
mod resume;

use std::collections::{HashMap, VecDeque};

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, ResponseActFuture, WrapFuture};
use sea_orm::DatabaseConnection;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::cost::Estimate;
use crate::domain::life::{Ending, RunPhase};
use crate::domain::views::{ContainerView, RunView};
use crate::domain::{ConflictCode, DomainError, LimitCode};
use crate::feed::{Feed, RunEvent};
use crate::metrics::MetricsActor;
use crate::pool::{Ec2PoolActor, Reap, SweepOrphans, TerminateRunInstances};
use crate::run_supervisor::{AbortSupervised, RunEnded, RunServices, RunSupervisor, SubscribeSupervised, Subscription};
use crate::settings::RunSettings;
use crate::store::{plans, runs};

/// How many finished runs keep their feed in memory for late subscribers.
const FINISHED_FEEDS: usize = 16;

/// The reason given to runs found live at start.
pub const RESTART_REASON: &str = "the broker stopped while this run was live; its containers and networks were removed";

/// Owns the runs.
pub struct BrokerActor {
    db: DatabaseConnection,
    pool: Addr<Ec2PoolActor>,
    metrics: Addr<MetricsActor>,
    settings: RunSettings,
    live: HashMap<Uuid, Addr<RunSupervisor>>,
    /// Starts checked and being recorded, not yet live.
    starting: usize,
    finished: VecDeque<(Uuid, Vec<RunEvent>)>,
}

impl BrokerActor {
    /// A broker over `db`, getting nodes from `pool`, metrics collected by `metrics`.
    pub fn new(db: DatabaseConnection, pool: Addr<Ec2PoolActor>, metrics: Addr<MetricsActor>, settings: RunSettings) -> Self {
        Self { db, pool, metrics, settings, live: HashMap::new(), starting: 0, finished: VecDeque::new() }
    }
}

impl BrokerActor {
    fn services(&self) -> RunServices {
        RunServices { settings: self.settings.clone(), db: self.db.clone(), pool: self.pool.clone(), metrics: self.metrics.clone() }
    }
}

impl Actor for BrokerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (db, pool) = (self.db.clone(), self.pool.clone());
        // Waited for, so no run starts before the reconciliation is done.
        ctx.wait(
            async move {
                let ids = runs::unfinished(&db).await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "could not list the runs left live");
                    Vec::new()
                });
                let mut carried = Vec::new();
                for id in ids {
                    match resume::carry_on(&db, &pool, id).await {
                        Ok(found) => carried.push(found),
                        Err(e) => {
                            tracing::warn!(run_id = %id, error = %e, "failing a run left live by a previous broker");
                            let lost = RunPhase::Ended(Ending::Lost(RESTART_REASON.into()));
                            match runs::transition(&db, id, &lost).await {
                                Ok(true) => {}
                                Ok(false) => tracing::warn!(run_id = %id, "a stale run had already ended"),
                                Err(e) => tracing::error!(run_id = %id, error = %e, "could not fail a stale run"),
                            }
                        }
                    }
                }
                carried
            }
            .into_actor(self)
            .then(|carried, act, ctx| {
                for resume::Found { run, plan, recovery, how } in carried {
                    let services = act.services();
                    let run_env = run.environment_data.clone();
                    let supervisor = match how {
                        resume::Resumption::CarryOn => {
                            tracing::info!(run_id = %run.id, state = run.state.as_str(), "carrying on a run left live by a previous broker");
                            RunSupervisor::resume(&run, plan, run_env, services, ctx.address().recipient(), recovery)
                        }
                        _ => {
                            tracing::info!(run_id = %run.id, "initializing again a run left initializing by a previous broker");
                            let token = recovery.ingest_token.unwrap_or_else(new_token);
                            RunSupervisor::new(run.id, plan, run_env, services, ctx.address().recipient(), token)
                        }
                    };
                    act.live.insert(run.id, supervisor.start());
                }
                let live: Vec<Uuid> = act.live.keys().copied().collect();
                let pool = act.pool.clone();
                async move {
                    match pool.send(Reap { live: live.clone() }).await {
                        Ok(Ok(reaped)) if !reaped.is_empty() => tracing::info!(instances = ?reaped, "terminated instances no live run needs"),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "could not reap instances"),
                        Err(e) => tracing::warn!(error = %e, "could not reap instances"),
                    }
                    match pool.send(SweepOrphans { live }).await {
                        Ok(Ok(swept)) if !swept.is_empty() => tracing::info!(runs = ?swept, "removed resources of runs no longer live"),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "could not sweep leftover resources"),
                        Err(e) => tracing::warn!(error = %e, "could not sweep leftover resources"),
                    }
                }
                .into_actor(act)
            }),
        );
        // The reaper, on a timer: instances of runs no longer live, or past their expiry, go.
        ctx.run_interval(REAP_EVERY, |act, _| {
            let live: Vec<Uuid> = act.live.keys().copied().collect();
            let pool = act.pool.clone();
            actix::spawn(async move {
                match pool.send(Reap { live }).await {
                    Ok(Ok(reaped)) if !reaped.is_empty() => tracing::info!(instances = ?reaped, "terminated instances no live run needs"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not reap instances"),
                    _ => {}
                }
            });
        });
    }
}

/// A fresh metrics token for a run.
fn new_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// How often the reaper looks for instances no live run needs.
const REAP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts a run of a plan; answers the recorded run.
#[derive(Debug, Message)]
#[rtype(result = "Result<RunView, DomainError>")]
pub struct StartRun {
    /// The plan.
    pub plan_id: Uuid,
    /// Who starts it.
    pub owner: Option<String>,
    /// The run env (object or `KEY=VALUE` list); `None` for none.
    pub env: Option<Value>,
    /// A `null` value in an env object means "not given": left out and recorded as
    /// such (the loads v2 client sends every option it knows, `null` when unset).
    pub null_is_unset: bool,
}

impl Handler<StartRun> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<RunView, DomainError>>;

    fn handle(&mut self, msg: StartRun, _: &mut Context<Self>) -> Self::Result {
        // Each live run holds a network on the engine (whose address pools are finite) and
        // nodes: beyond the cap, a start is refused until a run ends.
        let max = self.settings.max_live_runs;
        if self.live.len() + self.starting >= max {
            let refused = DomainError::Limit {
                code: LimitCode::TooManyLiveRuns,
                message: format!("this broker already has {max} live runs (limits.max_live_runs); try again when one has ended"),
            };
            return Box::pin(actix::fut::ready(Err(refused)));
        }
        self.starting += 1;
        let (db, pool, settings) = (self.db.clone(), self.pool.clone(), self.settings.clone());
        Box::pin(
            async move {
                let checked = preflight::preflight(&db, &pool, &settings, &msg).await?;
                let token = new_token();
                let run = runs::create(&db, msg.plan_id, msg.owner, &checked.run_env, &checked.unset, &token).await?;
                Ok::<_, DomainError>((run, checked.plan, checked.run_env, token))
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                act.starting -= 1;
                let (run, plan, run_env, token) = res?;
                let supervisor = RunSupervisor::new(run.id, plan, run_env, act.services(), ctx.address().recipient(), token).start();
                act.live.insert(run.id, supervisor);
                tracing::info!(run_id = %run.id, plan = %run.plan_name, "run started");
                Ok(run)
            }),
        )
    }
}

/// Checks a run as [`StartRun`] would, without starting it: answers its estimate,
/// or the error starting it would give (invalid env, region not configured, `over_budget`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Estimate, DomainError>")]
pub struct DryRun(pub StartRun);

impl Handler<DryRun> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<Estimate, DomainError>>;

    fn handle(&mut self, msg: DryRun, _: &mut Context<Self>) -> Self::Result {
        let (db, pool, settings) = (self.db.clone(), self.pool.clone(), self.settings.clone());
        Box::pin(async move { preflight::preflight(&db, &pool, &settings, &msg.0).await.map(|checked| checked.estimate) }.into_actor(self))
    }
}

/// What a plan's run costs on EC2 at most, per step and in all, and the budget cap it passes, if any.
#[derive(Debug, Message)]
#[rtype(result = "Result<Estimate, DomainError>")]
pub struct EstimatePlan {
    /// The plan.
    pub plan_id: Uuid,
}

impl Handler<EstimatePlan> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<Estimate, DomainError>>;

    fn handle(&mut self, msg: EstimatePlan, _: &mut Context<Self>) -> Self::Result {
        let (db, pool, cost) = (self.db.clone(), self.pool.clone(), self.settings.cost.clone());
        Box::pin(
            async move {
                let plan = plans::get(&db, msg.plan_id).await?;
                let mut estimate = preflight::estimate(&plan.spec(), &cost, &pool).await;
                if cost.cloud_regions.is_some() {
                    estimate.over_budget = cost.budget.refusal(&estimate, preflight::month_to_date(&db, &cost).await?);
                }
                Ok(estimate)
            }
            .into_actor(self),
        )
    }
}

/// Aborts a run; idempotent; answers the run as stored.
#[derive(Debug, Message)]
#[rtype(result = "Result<RunView, DomainError>")]
pub struct AbortRun {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<AbortRun> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<RunView, DomainError>>;

    fn handle(&mut self, msg: AbortRun, _: &mut Context<Self>) -> Self::Result {
        let supervisor = self.live.get(&msg.run_id).cloned();
        let db = self.db.clone();
        Box::pin(
            async move {
                if let Some(s) = supervisor {
                    // Sent and processed before the read below, so the answer shows the abort under way.
                    let _ = s.send(AbortSupervised).await;
                }
                runs::get(&db, msg.run_id).await
            }
            .into_actor(self),
        )
    }
}

/// Deletes a finished run and its records.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), DomainError>")]
pub struct DeleteRun {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<DeleteRun> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<(), DomainError>>;

    fn handle(&mut self, msg: DeleteRun, _: &mut Context<Self>) -> Self::Result {
        if self.live.contains_key(&msg.run_id) {
            let err = DomainError::conflict(ConflictCode::RunLive, format!("run {} is still live; abort it first", msg.run_id));
            return Box::pin(actix::fut::ready(Err(err)));
        }
        let db = self.db.clone();
        let run_id = msg.run_id;
        Box::pin(async move { runs::delete(&db, run_id).await }.into_actor(self).map(move |res, act, _| {
            if res.is_ok() {
                act.finished.retain(|(id, _)| *id != run_id);
            }
            res
        }))
    }
}

/// What `StopRun` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The run was live and is being aborted.
    Aborting,
    /// The run had finished and its record was deleted.
    Purged,
    /// The run had finished and nothing was done.
    AlreadyFinished,
}

/// Stops a live run, or with `purge` deletes a finished one (the loads v2 `DELETE /api/run`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Stopped, DomainError>")]
pub struct StopRun {
    /// The run.
    pub run_id: Uuid,
    /// Delete the record of a finished run.
    pub purge: bool,
    /// Terminate the run's instances when released, even when pooling would keep them.
    pub terminate: bool,
}

impl Handler<StopRun> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<Stopped, DomainError>>;

    fn handle(&mut self, msg: StopRun, _: &mut Context<Self>) -> Self::Result {
        let supervisor = self.live.get(&msg.run_id).cloned();
        let (db, pool) = (self.db.clone(), self.pool.clone());
        let run_id = msg.run_id;
        Box::pin(
            async move {
                if let Some(s) = supervisor {
                    if msg.terminate {
                        let _ = pool.send(TerminateRunInstances { run_id }).await;
                    }
                    let _ = s.send(AbortSupervised).await;
                    return Ok(Stopped::Aborting);
                }
                runs::get(&db, run_id).await?;
                if !msg.purge {
                    return Ok(Stopped::AlreadyFinished);
                }
                runs::delete(&db, run_id).await?;
                Ok(Stopped::Purged)
            }
            .into_actor(self)
            .map(move |res, act, _| {
                if matches!(res, Ok(Stopped::Purged)) {
                    act.finished.retain(|(id, _)| *id != run_id);
                }
                res
            }),
        )
    }
}

/// Subscribes to a run's live feed from event `since` on.
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscription, DomainError>")]
pub struct Subscribe {
    /// The run.
    pub run_id: Uuid,
    /// The last event the subscriber has; 0 for all.
    pub since: u64,
}

impl Handler<Subscribe> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<Subscription, DomainError>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        if let Some(s) = self.live.get(&msg.run_id).cloned() {
            let run_id = msg.run_id;
            return Box::pin(
                async move {
                    match s.send(SubscribeSupervised { since: msg.since }).await {
                        Ok(sub) => sub.map(Some),
                        // The run ended between the lookup and the send: serve it as finished.
                        Err(_) => Ok(None),
                    }
                }
                .into_actor(self)
                .then(move |res, act, _| {
                    let fallback = act.finished_subscription(run_id, msg.since);
                    async move {
                        match res? {
                            Some(sub) => Ok(sub),
                            None => fallback.await,
                        }
                    }
                    .into_actor(act)
                }),
            );
        }
        let fut = self.finished_subscription(msg.run_id, msg.since);
        Box::pin(fut.into_actor(self))
    }
}

impl BrokerActor {
    fn finished_subscription(
        &self,
        run_id: Uuid,
        since: u64,
    ) -> impl std::future::Future<Output = Result<Subscription, DomainError>> + 'static {
        let events = self.finished.iter().find(|(id, _)| *id == run_id).map(|(_, e)| e.clone()).unwrap_or_default();
        let db = self.db.clone();
        async move {
            let snapshot = runs::get(&db, run_id).await?;
            let feed = Feed::from_events(events);
            Ok(Subscription { snapshot, seq: feed.last_seq(), kept_from: feed.kept_from(), backlog: feed.since(since), live: None })
        }
    }
}

/// The recorded containers of a run (exit codes and output), optionally of one step and node.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<ContainerView>, DomainError>")]
pub struct RunLogs {
    /// The run.
    pub run_id: Uuid,
    /// A step's name.
    pub step: Option<String>,
    /// A node's name.
    pub node: Option<String>,
    /// Keep only the last lines of each.
    pub tail: Option<usize>,
}

impl Handler<RunLogs> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<Vec<ContainerView>, DomainError>>;

    fn handle(&mut self, msg: RunLogs, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let supervisor = self.live.get(&msg.run_id).cloned();
        Box::pin(
            async move {
                let mut containers = runs::containers(&db, msg.run_id, msg.step.as_deref(), msg.node.as_deref()).await?;
                if let Some(s) = supervisor {
                    // Containers not removed yet: their output as it is now, from their engines.
                    let ask = crate::run_supervisor::RunLiveLogs { step: msg.step.clone(), node: msg.node.clone(), tail: msg.tail };
                    let live = s.send(ask).await.unwrap_or_default();
                    let recorded: Vec<String> = containers.iter().map(|c| c.docker_id.clone()).collect();
                    containers.extend(live.into_iter().filter(|c| !recorded.contains(&c.docker_id)));
                }
                if let Some(tail) = msg.tail {
                    for c in &mut containers {
                        let lines: Vec<&str> = c.logs.lines().collect();
                        c.logs = lines[lines.len().saturating_sub(tail)..].join("\n");
                    }
                }
                Ok(containers)
            }
            .into_actor(self),
        )
    }
}

/// The run's dashboard JSON.
#[derive(Debug, Message)]
#[rtype(result = "Result<serde_json::Value, DomainError>")]
pub struct RunDashboard {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<RunDashboard> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<serde_json::Value, DomainError>>;

    fn handle(&mut self, msg: RunDashboard, _: &mut Context<Self>) -> Self::Result {
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                metrics
                    .send(crate::metrics::RenderDashboard { run_id: msg.run_id })
                    .await
                    .map_err(|_| DomainError::Unavailable { what: "the metrics collector" })?
            }
            .into_actor(self),
        )
    }
}

/// The metric summaries of a run, stored when it ended.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<crate::domain::views::MetricSummaryView>, DomainError>")]
pub struct RunMetrics {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<RunMetrics> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<Vec<crate::domain::views::MetricSummaryView>, DomainError>>;

    fn handle(&mut self, msg: RunMetrics, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { runs::metrics(&db, msg.run_id).await }.into_actor(self))
    }
}

/// The series of a run's steps, for charts: each flush window merged over the step's nodes.
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::domain::views::StepSeriesView>, DomainError>")]
pub struct RunSeries {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<RunSeries> for BrokerActor {
    type Result = ResponseActFuture<Self, Result<Vec<crate::domain::views::StepSeriesView>, DomainError>>;

    fn handle(&mut self, msg: RunSeries, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(
            async move {
                let steps = runs::series(&db, msg.run_id).await?;
                Ok(steps.into_iter().map(|(step, points)| crate::domain::views::StepSeriesView { step, points }).collect())
            }
            .into_actor(self),
        )
    }
}

impl Handler<RunEnded> for BrokerActor {
    type Result = ();

    fn handle(&mut self, msg: RunEnded, _: &mut Context<Self>) {
        self.live.remove(&msg.run_id);
        self.finished.push_back((msg.run_id, msg.events));
        while self.finished.len() > FINISHED_FEEDS {
            self.finished.pop_front();
        }
    }
}
