//! The relays' deliveries: each checked against its run's token before it is read,
//! then each window admitted once (its node known, its time within the run), taken
//! into its step's numbers and the run's judge, and written to InfluxDB.

use actix::{Context, Handler, Message};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::MetricsActor;
use crate::domain::aggregate::{admit, take_window, StepMetrics};
use crate::domain::metrics::{Merged, Window};
use crate::domain::windows::Refusal;
use crate::infra::influx::{window_points, Point, PointTags};

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
        // Every window is checked (and its step id read, once) before any is taken.
        let mut steps = Vec::with_capacity(msg.windows.len());
        for w in &msg.windows {
            let step = Uuid::parse_str(&w.step_id).ok().and_then(|id| run.steps.get(&id).map(|s| (id, s)));
            match step {
                Some(_) if w.run_id != run_text => return Err(IngestError::Foreign(w.seq)),
                None => return Err(IngestError::Foreign(w.seq)),
                Some((id, s)) if s.node_regions.is_empty() => return Err(IngestError::NotPlaced(id)),
                Some((id, _)) => steps.push(id),
            }
        }
        let now = Self::now_ms();
        let mut points = Vec::new();
        run.dirty = true;
        for (w, step_id) in msg.windows.iter().zip(steps) {
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
