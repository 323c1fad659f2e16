//! How a run closes once every step is over: its metrics stored and judged, what
//! it left swept, its cost closed and its verdict stored, then the run ends.

use actix::{ActorFutureExt, Context, WrapFuture};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::{schedule, RunSupervisor};
use crate::domain::compare;
use crate::domain::judge;
use crate::domain::life::{Ending, RunPhase, StopReason};
use crate::feed::EventKind;
use crate::journal;
use crate::metrics::{FinishRun, RunJudgement};
use crate::pool::CloseRun;
use crate::store::{plans, runs};

impl RunSupervisor {
    /// Stops service steps once every other step is done; closes the run once every step is:
    /// the metrics are stored and what the run left is swept, then it ends.
    pub(super) fn maybe_close(&mut self, ctx: &mut Context<Self>) {
        // Services are stopped as soon as no other step's container runs, before those steps' teardown.
        let schedule::Standing { others_done, all_done } = schedule::standing(self.live_steps().map(|s| (s.view.spec.service, s.stopped)));
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
