//! `StepActor`: one per step of a run. Prepares its nodes (`prepare`: nodes
//! from the pool, each node's relay, launch and image), starts the step's
//! containers when told, staggered by `node_delay`, and stops them at
//! `run_max_time` or when asked. It finishes when every container has exited
//! or it was stopped, and reports `StepReport::Finished` to its supervisor.
//!
//! Phases: preparing → ready → running → stopping → finishing → done, one
//! `StepPhase` (`domain::life`) carrying the step's first failure and how many
//! nodes have started; `transition_to` checks each move against
//! `StepPhase::can_become`, persists the state, then publishes it. A stop that
//! arrives while preparing is honoured as soon as preparation ends, so nothing
//! that was being created is left behind.
//!
//! Carried on after a broker restart (`StepContext::resume`), the step adopts
//! its nodes' relays and containers (found by their labels) instead of making
//! them; if it was running it goes straight back to running, starting only
//! the nodes that had not started yet, and stops at `run_max_time` counted
//! from its recorded start.

mod prepare;

use std::collections::HashMap;
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle, WrapFuture};
use futures_util::future::join_all;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use self::prepare::Node;
use crate::docker_node::{ContainerExited, LiveLogs, StartContainer, StopContainers, TearDown};
use crate::domain::life::{wait_until, StepPhase};
pub use crate::domain::life::{StepOutcome, StopReason};
use crate::domain::views::{ContainerView, InterruptionView};
use crate::domain::views::{StepState, StepView};
use crate::domain::Env;
use crate::feed::EventKind;
use crate::journal::{self, Journal, Journaled};
use crate::metrics::{Mark, MetricsActor};
use crate::pool::{Ec2PoolActor, NodeInterrupted, ReleaseNodes};
use crate::settings::RunSettings;
use crate::store::runs;

/// What a step tells its supervisor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StepReport {
    /// The step.
    pub step_id: Uuid,
    /// What happened.
    pub kind: ReportKind,
}

/// The kinds of step report.
#[derive(Debug)]
pub enum ReportKind {
    /// Nodes are ready, with their addresses (or could not be made ready).
    Prepared(Result<Vec<String>, String>),
    /// Something for the live feed.
    Event(EventKind),
    /// None of its containers runs any more; its nodes are being torn down.
    Stopped,
    /// The step is over and its nodes are released.
    Finished(StepOutcome),
}

/// What the database says of a step being carried on after a restart.
#[derive(Clone, Debug)]
pub struct StepResume {
    /// Its recorded state.
    pub state: StepState,
    /// When it started, if it did.
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Everything a step needs to know about its run.
#[derive(Clone)]
pub struct StepContext {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step: StepView,
    /// The plan's env defaults.
    pub plan_env: Env,
    /// The run env.
    pub run_env: Env,
    /// The plan's name.
    pub plan_name: String,
    /// How long the run may last at most, from its start (for the nodes' dead-man's switch).
    pub run_span: Duration,
    /// Shared settings.
    pub settings: RunSettings,
    /// The database.
    pub db: DatabaseConnection,
    /// The run's metrics ingest token.
    pub ingest_token: String,
    /// The metrics collector, to mark a node's interruption on the run's dashboard.
    pub metrics: Addr<MetricsActor>,
    /// Set when a restarted broker carries the step on.
    pub resume: Option<StepResume>,
}

/// Runs one step.
pub struct StepActor {
    ctx: StepContext,
    pool: Addr<Ec2PoolActor>,
    supervisor: Recipient<StepReport>,
    phase: StepPhase,
    /// The state last handed to the journal (a step carried on starts from its recorded one).
    stored: StepState,
    journal: Journal<Self>,
    nodes: Vec<Node>,
    exits: HashMap<String, Option<i64>>,
    pending_starts: Vec<SpawnHandle>,
    lost: Vec<String>,
    /// Of the lost, the nodes that stopped answering (not to be asked anything more).
    silent: Vec<String>,
    hosts: Vec<(String, Vec<String>)>,
}

impl StepActor {
    /// A step of a run, reporting to `supervisor`.
    pub fn new(ctx: StepContext, pool: Addr<Ec2PoolActor>, supervisor: Recipient<StepReport>) -> Self {
        let stored = ctx.resume.as_ref().map_or(StepState::Pending, |r| r.state);
        Self {
            ctx,
            pool,
            supervisor,
            phase: StepPhase::new(),
            stored,
            journal: Journal::default(),
            nodes: Vec::new(),
            exits: HashMap::new(),
            pending_starts: Vec::new(),
            lost: Vec::new(),
            silent: Vec::new(),
            hosts: Vec::new(),
        }
    }

    fn name(&self) -> String {
        self.ctx.step.spec.name.clone()
    }

    fn report(&self, kind: ReportKind) {
        self.supervisor.do_send(StepReport { step_id: self.ctx.step.id, kind });
    }

    fn event(&self, kind: EventKind) {
        self.report(ReportKind::Event(kind));
    }

    /// Moves the step to `next`, checked against its life (`StepPhase::can_become`;
    /// anything else is a bug, logged and refused). A new stored state (running,
    /// stopping, done) is persisted, then published, in order; once done, the
    /// supervisor is told and the actor stops.
    fn transition_to(&mut self, next: StepPhase, ctx: &mut Context<Self>) -> bool {
        if !self.phase.can_become(&next) {
            tracing::error!(run_id = %self.ctx.run_id, step = %self.name(), from = ?self.phase, to = ?next, "refused a step transition its life does not allow");
            return false;
        }
        self.phase = next.clone();
        let state = next.state();
        let worth_storing = matches!(next, StepPhase::Running { .. } | StepPhase::Stopping { .. } | StepPhase::Done(_));
        if !worth_storing || state == self.stored {
            return true;
        }
        self.stored = state;
        let done = match next {
            StepPhase::Done(outcome) => Some(outcome),
            _ => None,
        };
        let reason = match &done {
            Some(StepOutcome::Failed(r)) => Some(r.clone()),
            _ => None,
        };
        let (db, run_id, step_id, stored_reason) = (self.ctx.db.clone(), self.ctx.run_id, self.ctx.step.id, reason.clone());
        let write = async move {
            match runs::transition_step(&db, run_id, step_id, state, stored_reason).await {
                Ok(true) => {}
                Ok(false) => tracing::error!(%run_id, %step_id, ?state, "the stored step state may not become this one"),
                Err(e) => tracing::error!(error = %e, %run_id, %step_id, "could not record a step state"),
            }
        };
        let job = write.into_actor(self).map(move |(), act, ctx| {
            act.event(EventKind::Step { step: act.name(), state, reason });
            if let Some(outcome) = done {
                act.report(ReportKind::Finished(outcome));
                ctx.stop();
            }
        });
        journal::record(self, ctx, Box::pin(job));
        true
    }

    /// Prepares the step's nodes (`prepare`'s stages); it goes on in `after_prepare`.
    fn prepare(&mut self, ctx: &mut Context<Self>) {
        let wiring = prepare::Wiring { pool: self.pool.clone(), step: ctx.address(), supervisor: self.supervisor.clone() };
        ctx.wait(prepare::prepare(self.ctx.clone(), wiring).into_actor(self).map(|prepared, act, ctx| {
            if let Some(failure) = prepared.failure {
                act.phase.note_failure(failure);
            }
            act.nodes = prepared.nodes;
            act.after_prepare(ctx);
        }));
    }

    fn after_prepare(&mut self, ctx: &mut Context<Self>) {
        let StepPhase::Preparing { stop, failure } = self.phase.clone() else { return };
        if let Some(reason) = failure {
            self.report(ReportKind::Prepared(Err(reason.clone())));
            self.finish(StepOutcome::Failed(reason), ctx);
        } else if self.was_running() {
            self.carry_on(stop.is_some(), ctx);
        } else if stop.is_some() {
            self.finish(StepOutcome::Skipped, ctx);
        } else {
            self.transition_to(StepPhase::Ready, ctx);
            self.report(ReportKind::Prepared(Ok(self.nodes.iter().map(|n| n.address.clone()).collect())));
        }
    }

    /// Whether this step was running (or stopping) when the broker restarted.
    fn was_running(&self) -> bool {
        self.ctx.resume.as_ref().is_some_and(|r| matches!(r.state, StepState::Running | StepState::Stopping))
    }

    /// Back to running after a restart: adopted containers count as started, the
    /// other nodes start on the original `node_delay` schedule, and `run_max_time`
    /// counts from the recorded start.
    fn carry_on(&mut self, stop_asked: bool, ctx: &mut Context<Self>) {
        let resume = self.ctx.resume.clone().expect("carry_on is only called for resumed steps");
        self.transition_to(StepPhase::Running { started: 0, failure: None }, ctx);
        self.report(ReportKind::Prepared(Ok(self.nodes.iter().map(|n| n.address.clone()).collect())));
        let started_at = resume.started_at.unwrap_or_else(chrono::Utc::now);
        let since = |seconds: u64| wait_until(started_at, seconds, chrono::Utc::now());
        let delay = self.ctx.step.spec.node_delay;
        for i in 0..self.nodes.len() {
            if self.nodes[i].adopted.is_empty() {
                let handle = ctx.run_later(since(delay * i as u64), move |act, ctx| act.start_node(i, ctx));
                self.pending_starts.push(handle);
            } else {
                if let StepPhase::Running { started, .. } = &mut self.phase {
                    *started += 1;
                }
                for id in self.nodes[i].adopted.clone() {
                    self.exits.entry(id).or_insert(None);
                }
            }
        }
        if let Some((node, code)) = self.exits.iter().find_map(|(id, code)| code.filter(|c| *c != 0).map(|c| (id.clone(), c))) {
            self.phase.note_failure(format!("container {node} exited with code {code} while the broker was away"));
        }
        self.arm_run_max_time(started_at, ctx);
        if resume.state == StepState::Stopping || stop_asked {
            self.begin_stop(None, ctx);
        }
        self.check_done(ctx);
    }

    /// Stops the step `run_max_time` after `started_at` (now, or the recorded start of a
    /// step carried on); a service step stops as no longer needed. Nothing for 0.
    fn arm_run_max_time(&mut self, started_at: chrono::DateTime<chrono::Utc>, ctx: &mut Context<Self>) {
        let max = self.ctx.step.spec.run_max_time;
        if max == 0 {
            return;
        }
        let left = wait_until(started_at, max, chrono::Utc::now());
        let why = self.ctx.step.spec.service.then_some(StopReason::ServiceDone);
        ctx.run_later(left, move |act, ctx| act.begin_stop(why, ctx));
    }

    fn start_node(&mut self, index: usize, ctx: &mut Context<Self>) {
        if !matches!(self.phase, StepPhase::Running { .. }) {
            return;
        }
        let node = &self.nodes[index];
        let Some(launch) = node.launch.clone() else {
            let failure = format!("node {}: its launch was never resolved", node.id);
            self.phase.note_failure(failure);
            return self.begin_stop(None, ctx);
        };
        // Node i of this step reaches node i (mod n) of a step by its dns_name.
        let extra_hosts = self.hosts.iter().map(|(name, addresses)| format!("{name}:{}", addresses[index % addresses.len()])).collect();
        let msg = StartContainer { launch, aliases: self.ctx.step.spec.dns_name.iter().cloned().collect(), extra_hosts };
        let (addr, node_id) = (node.addr.clone(), node.id.clone());
        ctx.spawn(async move { addr.send(msg).await }.into_actor(self).map(move |res, act, ctx| {
            if let StepPhase::Running { started, .. } = &mut act.phase {
                *started += 1;
            }
            match res {
                Ok(Ok(id)) => {
                    act.exits.entry(id.clone()).or_insert(None);
                    act.event(EventKind::Container {
                        step: act.name(),
                        node: node_id,
                        container: id,
                        state: "started".into(),
                        exit_code: None,
                    });
                }
                Ok(Err(e)) => {
                    act.phase.note_failure(format!("node {node_id}: {e}"));
                    act.begin_stop(None, ctx);
                }
                Err(e) => {
                    act.phase.note_failure(format!("node {node_id}: {e}"));
                    act.begin_stop(None, ctx);
                }
            }
            act.check_done(ctx);
        }));
    }

    /// Done when every node started and every container exited.
    fn check_done(&mut self, ctx: &mut Context<Self>) {
        let StepPhase::Running { started, .. } = &self.phase else { return };
        if *started == self.nodes.len() && self.exits.values().all(Option::is_some) {
            let outcome = self.phase.outcome();
            self.finish(outcome, ctx);
        }
    }

    fn begin_stop(&mut self, reason: Option<StopReason>, ctx: &mut Context<Self>) {
        match &mut self.phase {
            StepPhase::Preparing { stop, .. } => {
                if reason.is_some() {
                    *stop = stop.or(reason);
                }
            }
            StepPhase::Ready => self.finish(StepOutcome::Skipped, ctx),
            StepPhase::Running { failure, .. } => {
                let failure = failure.clone();
                self.transition_to(StepPhase::Stopping { failure }, ctx);
                for handle in self.pending_starts.drain(..) {
                    ctx.cancel_future(handle);
                }
                // A node that stopped answering is not asked: its instance goes with its containers.
                let stops: Vec<_> =
                    self.nodes.iter().filter(|n| !self.silent.contains(&n.id)).map(|n| n.addr.send(StopContainers)).collect();
                ctx.spawn(async move { join_all(stops).await }.into_actor(self).map(|_, act, ctx| {
                    let outcome = act.phase.outcome();
                    act.finish(outcome, ctx);
                }));
            }
            StepPhase::Stopping { .. } | StepPhase::Finishing(_) | StepPhase::Done(_) => {}
        }
    }

    /// Tears the nodes down and releases them, then records the outcome, reports it and stops.
    fn finish(&mut self, outcome: StepOutcome, ctx: &mut Context<Self>) {
        if matches!(self.phase, StepPhase::Finishing(_) | StepPhase::Done(_)) {
            return;
        }
        if !self.transition_to(StepPhase::Finishing(outcome.clone()), ctx) {
            return;
        }
        self.report(ReportKind::Stopped);
        let teardowns: Vec<_> =
            self.nodes.iter().map(|n| (n.id.clone(), n.addr.send(TearDown { silent: self.silent.contains(&n.id) }))).collect();
        let pool = self.pool.clone();
        let release = ReleaseNodes { run_id: self.ctx.run_id, step_id: self.ctx.step.id };
        let teardown = async move {
            let mut removed = Vec::new();
            for (node, teardown) in teardowns {
                if let Ok(outcomes) = teardown.await {
                    removed.extend(outcomes.into_iter().map(|o| (node.clone(), o)));
                }
            }
            let _ = pool.send(release).await;
            removed
        };
        let job = teardown.into_actor(self).map(move |removed, act, ctx| {
            for (node, o) in removed {
                act.event(EventKind::Container {
                    step: act.name(),
                    node: node.clone(),
                    container: o.docker_id,
                    state: "removed".into(),
                    exit_code: o.exit_code,
                });
            }
            for node in &act.nodes {
                act.event(EventKind::Node { step: act.name(), node: node.id.clone(), state: "released".into() });
            }
            act.transition_to(StepPhase::Done(outcome), ctx);
        });
        journal::record(self, ctx, Box::pin(job));
    }
}

impl Journaled for StepActor {
    fn journal(&mut self) -> &mut Journal<Self> {
        &mut self.journal
    }
}

impl Actor for StepActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.prepare(ctx);
    }
}

/// How far a download of the step's image has got.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct DownloadProgress {
    url: String,
    bytes: u64,
    total: Option<u64>,
}

impl Handler<DownloadProgress> for StepActor {
    type Result = ();

    fn handle(&mut self, msg: DownloadProgress, _: &mut Context<Self>) {
        self.event(EventKind::Download { step: self.name(), url: msg.url, bytes: msg.bytes, total: msg.total });
    }
}

/// Starts the step's containers now, node after node `node_delay` apart.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct StartStep {
    /// Every `dns_name` of the run with its step's node addresses (used where nodes share no network).
    pub hosts: Vec<(String, Vec<String>)>,
}

impl Handler<StartStep> for StepActor {
    type Result = ();

    fn handle(&mut self, msg: StartStep, ctx: &mut Context<Self>) {
        if self.phase != StepPhase::Ready {
            return;
        }
        self.hosts = msg.hosts;
        self.transition_to(StepPhase::Running { started: 0, failure: None }, ctx);
        let delay = self.ctx.step.spec.node_delay;
        for i in 0..self.nodes.len() {
            if i == 0 || delay == 0 {
                self.start_node(i, ctx);
            } else {
                let handle = ctx.run_later(Duration::from_secs(delay * i as u64), move |act, ctx| act.start_node(i, ctx));
                self.pending_starts.push(handle);
            }
        }
        self.arm_run_max_time(chrono::Utc::now(), ctx);
    }
}

/// Stops the step early.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopStep {
    /// Why.
    pub reason: StopReason,
}

impl Handler<StopStep> for StepActor {
    type Result = ();

    fn handle(&mut self, msg: StopStep, ctx: &mut Context<Self>) {
        self.begin_stop(Some(msg.reason), ctx);
    }
}

impl Handler<ContainerExited> for StepActor {
    type Result = ();

    fn handle(&mut self, msg: ContainerExited, ctx: &mut Context<Self>) {
        self.exits.insert(msg.docker_id.clone(), Some(msg.exit_code));
        if let Some(why) = msg.lost {
            if !self.silent.contains(&msg.node) {
                self.silent.push(msg.node.clone());
            }
            self.node_lost(msg.node, "stopped answering", why, ctx);
            return self.check_done(ctx);
        }
        self.event(EventKind::Container {
            step: self.name(),
            node: msg.node.clone(),
            container: msg.docker_id,
            state: "exited".into(),
            exit_code: Some(msg.exit_code),
        });
        // A node dropped already (an interruption notice) had its container stopped: no failure.
        if msg.exit_code != 0 && matches!(self.phase, StepPhase::Running { .. }) && !self.lost.contains(&msg.node) {
            self.phase.note_failure(format!("the container on node {} exited with code {}", msg.node, msg.exit_code));
        }
        self.check_done(ctx);
    }
}

impl StepActor {
    /// A node is lost (it `stopped answering`, or got a spot interruption notice): with
    /// `prune_running` the step goes on without it (unless it was the last); otherwise the
    /// step fails and stops its other nodes.
    fn node_lost(&mut self, node: String, what: &str, why: String, ctx: &mut Context<Self>) {
        if self.lost.contains(&node) {
            return;
        }
        self.lost.push(node.clone());
        let state = if self.ctx.step.spec.prune_running { "pruned" } else { "lost" };
        self.event(EventKind::Node { step: self.name(), node: node.clone(), state: state.into() });
        let all_lost = self.lost.len() >= self.nodes.len();
        if !matches!(self.phase, StepPhase::Running { .. }) {
            return;
        }
        if !self.ctx.step.spec.prune_running || all_lost {
            let reason = if all_lost && self.ctx.step.spec.prune_running {
                format!("every node is lost (last: {node} {what}: {why})")
            } else {
                format!("node {node} {what}: {why}")
            };
            self.phase.note_failure(reason);
            self.begin_stop(None, ctx);
        } else {
            tracing::warn!(run_id = %self.ctx.run_id, step = %self.name(), %node, reason = %why, "node pruned; the step goes on without it");
        }
    }
}

impl Handler<NodeInterrupted> for StepActor {
    type Result = ();

    /// A spot node is about to go: it is recorded on the step record and marked on the run's
    /// dashboard, its containers are stopped, and the step treats it as lost.
    fn handle(&mut self, msg: NodeInterrupted, ctx: &mut Context<Self>) {
        let why = format!("EC2 will {} instance {} at {}", msg.action, msg.instance, msg.time);
        let notice = InterruptionView {
            node: msg.node.clone(),
            instance: msg.instance,
            action: msg.action,
            time: msg.time,
            noticed_at: msg.noticed_at,
        };
        let (db, run_id, step_id) = (self.ctx.db.clone(), self.ctx.run_id, self.ctx.step.id);
        ctx.spawn(
            async move {
                if let Err(e) = runs::add_interruption(&db, run_id, step_id, &notice).await {
                    tracing::warn!(%run_id, error = %e, "could not record a spot interruption");
                }
            }
            .into_actor(self),
        );
        let text = format!("step {}: node {} got a spot interruption notice: {why}", self.name(), msg.node);
        self.ctx.metrics.do_send(Mark { run_id, at_ms: msg.noticed_at.timestamp_millis(), text, tag: "interruption" });
        if let Some(node) = self.nodes.iter().find(|n| n.id == msg.node) {
            node.addr.do_send(StopContainers);
        }
        self.node_lost(msg.node, "got a spot interruption notice", why, ctx);
        self.check_done(ctx);
    }
}

/// The output of the step's containers that are not removed yet, optionally of one node.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ContainerView>")]
pub struct StepLogs {
    /// Only this node.
    pub node: Option<String>,
    /// Keep only the last lines of each.
    pub tail: Option<usize>,
}

impl Handler<StepLogs> for StepActor {
    type Result = actix::ResponseFuture<Vec<ContainerView>>;

    fn handle(&mut self, msg: StepLogs, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| msg.node.as_ref().is_none_or(|wanted| *wanted == n.id))
            .map(|n| n.addr.send(LiveLogs { step_name: self.name(), tail: msg.tail }))
            .collect();
        Box::pin(async move { join_all(asks).await.into_iter().flatten().flatten().collect() })
    }
}
