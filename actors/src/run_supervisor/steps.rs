//! The run's steps: one `StepActor` each (or an outcome carried over from before a
//! restart), started on the run's schedule once all are prepared, and stopped
//! (services last) as the run ends.

use std::time::Duration;

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, WrapFuture};
use chrono::Utc;
use uuid::Uuid;

use super::schedule;
use super::{RunSupervisor, StepSlot};
use crate::domain::judge;
use crate::domain::life::{RunPhase, StepOutcome, StopReason};
use crate::domain::views::StepState;
use crate::feed::EventKind;
use crate::journal;
use crate::metrics::{PublishDashboard, TrackRun, TrackedStep};
use crate::pool::AdoptRun;
use crate::step::{StartStep, StepActor, StepContext, StepReport, StopStep};
use crate::store::runs;

impl RunSupervisor {
    pub(super) fn step_name(&self, id: Uuid) -> String {
        self.steps.get(&id).map(|s| s.view.spec.name.clone()).unwrap_or_default()
    }

    pub(super) fn live_steps(&self) -> impl Iterator<Item = &StepSlot> {
        self.steps.values().filter(|s| s.outcome.is_none())
    }

    /// Stops the live steps that are not services; service steps are stopped once
    /// every other step is over (`maybe_close`), so generators never outlive what they test.
    pub(super) fn stop_steps(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        for handle in self.start_timers.drain(..) {
            ctx.cancel_future(handle);
        }
        self.send_stops(reason, false);
    }

    pub(super) fn send_stops(&mut self, reason: StopReason, services: bool) {
        for slot in self.steps.values_mut().filter(|s| s.outcome.is_none() && !s.stop_sent && s.view.spec.service == services) {
            if let Some(addr) = &slot.addr {
                addr.do_send(StopStep { reason });
                slot.stop_sent = true;
            }
        }
    }

    /// Has the metrics actor track the run, and starts one `StepActor` per step still to run.
    pub(super) fn spawn_steps(&mut self, run_span: u64, ctx: &mut Context<Self>) {
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
            if let Some(outcome) = resume.as_ref().and_then(|r| schedule::carried_outcome(r.state)) {
                if matches!(outcome, StepOutcome::Failed(_)) && slot.view.spec.required {
                    failed_before.push(slot.view.spec.name.clone());
                }
                slot.outcome = Some(outcome);
                continue;
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
    pub(super) fn adopt(&mut self, ctx: &mut Context<Self>) {
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

    /// Records the final state of a step that has no actor (a monitor step), with why, in
    /// the database (through the stored step life), then on the feed.
    pub(super) fn record_step(&mut self, step_id: Uuid, state: StepState, why: &str, ctx: &mut Context<Self>) {
        let (db, run_id, reason) = (self.db.clone(), self.run_id, why.to_string());
        let step = self.step_name(step_id);
        let write = async move {
            match runs::transition_step(&db, run_id, step_id, state, Some(reason)).await {
                Ok(true) => {}
                Ok(false) => tracing::error!(%run_id, %step_id, ?state, "the stored step state may not become this one"),
                Err(e) => tracing::error!(error = %e, "could not record a step's state"),
            }
        };
        let why = why.to_string();
        let job = write.into_actor(self).map(move |(), act, _| {
            act.feed.publish(EventKind::Step { step, state, reason: Some(why) });
        });
        journal::record(self, ctx, Box::pin(job));
    }

    /// Each `dns_name` and the addresses of its step's nodes, for nodes that share no network.
    pub(super) fn hosts(&self) -> Vec<(String, Vec<String>)> {
        self.steps
            .values()
            .filter_map(|s| Some((s.view.spec.dns_name.clone()?, s.addresses.clone())))
            .filter(|(_, addresses)| !addresses.is_empty())
            .collect()
    }

    /// Once every step is prepared: running, and each step started after its delay.
    pub(super) fn maybe_start(&mut self, ctx: &mut Context<Self>) {
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
            let recorded = resumed.steps.iter().filter_map(|(id, r)| self.steps.get(id).map(|s| (*id, r.state, s.view.spec.run_delay)));
            for (id, wait) in schedule::resumed_starts(recorded, started_at, Utc::now()) {
                let Some(addr) = self.steps.get(&id).and_then(|s| s.addr.clone()) else { continue };
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
}
