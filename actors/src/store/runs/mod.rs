//! Runs and their step records: listing with filters, reading, and creating the
//! record of a new run (one step record per step, all pending).

mod containers;
mod results;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::entities::{metric_summary, plan, run, spend, step, step_record};
use super::{clamp_page, env_from_json, run_env_to_json, unset_from_json};
use crate::domain::life::{Ending, RunPhase};
use crate::domain::usage::RunCost;
use crate::domain::views::{InterruptionView, Page, RunState, RunView, StepRecordView, StepState, Verdict, SERIES_OVERFLOW};
use crate::domain::{ConflictCode, DomainError, Env};

pub use self::containers::{containers, record_container, ContainerRecord};
pub use self::results::{append_series, compare, metrics, record_metrics, series, set_thresholds, CompareTo, SERIES_POINTS};

/// Which runs to list; every filter is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Runs of this plan.
    pub plan_id: Option<Uuid>,
    /// Runs of any plan of this project.
    pub project_id: Option<Uuid>,
    /// Runs in this state.
    pub state: Option<RunState>,
    /// Runs started by this owner.
    pub owner: Option<String>,
}

async fn views(db: &impl ConnectionTrait, runs: Vec<run::Model>) -> Result<Vec<RunView>, DomainError> {
    let plan_ids: Vec<Uuid> = runs.iter().map(|r| r.plan_id).collect();
    let plans: HashMap<Uuid, plan::Model> = plan::Entity::find()
        .filter(plan::Column::Id.is_in(plan_ids.iter().copied()))
        .all(db)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let step_names: HashMap<Uuid, (i32, String)> = step::Entity::find()
        .filter(step::Column::PlanId.is_in(plan_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|s| (s.id, (s.position, s.name)))
        .collect();
    let mut records: HashMap<Uuid, Vec<StepRecordView>> = HashMap::new();
    let record_rows = step_record::Entity::find().filter(step_record::Column::RunId.is_in(runs.iter().map(|r| r.id))).all(db).await?;
    let overflow: HashMap<(Uuid, Uuid), f64> = metric_summary::Entity::find()
        .filter(metric_summary::Column::RunId.is_in(runs.iter().map(|r| r.id)))
        .filter(metric_summary::Column::Metric.eq(SERIES_OVERFLOW))
        .filter(metric_summary::Column::Region.is_null())
        .all(db)
        .await?
        .into_iter()
        .map(|m| ((m.run_id, m.step_id), m.count))
        .collect();
    for r in record_rows {
        let (_, step_name) = step_names.get(&r.step_id).cloned().unwrap_or_default();
        records.entry(r.run_id).or_default().push(StepRecordView {
            id: r.id,
            run_id: r.run_id,
            step_id: r.step_id,
            step_name,
            state: StepState::parse(&r.state).unwrap_or(StepState::Pending),
            failed: r.failed,
            failure_reason: r.failure_reason,
            created_at: r.created_at,
            started_at: r.started_at,
            completed_at: r.completed_at,
            interruptions: r.interruptions.as_deref().and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default(),
            series_overflow: overflow.get(&(r.run_id, r.step_id)).map_or(0, |n| *n as u64),
        });
    }
    for list in records.values_mut() {
        list.sort_by_key(|r| step_names.get(&r.step_id).map_or(i32::MAX, |(pos, _)| *pos));
    }
    Ok(runs
        .into_iter()
        .map(|r| {
            let plan = plans.get(&r.plan_id);
            RunView {
                id: r.id,
                plan_id: r.plan_id,
                plan_name: plan.map(|p| p.name.clone()).unwrap_or_default(),
                project_id: plan.map(|p| p.project_id).unwrap_or_default(),
                state: RunState::parse(&r.state).unwrap_or(RunState::Failed),
                owner: r.owner,
                environment_data: env_from_json(&r.environment_data),
                unset_env: unset_from_json(&r.environment_data),
                aborted: r.aborted,
                failure_reason: r.failure_reason,
                created_at: r.created_at,
                started_at: r.started_at,
                completed_at: r.completed_at,
                dashboard_url: r.dashboard_url,
                verdict: r.verdict.as_deref().and_then(Verdict::parse),
                verdict_reason: r.verdict_reason,
                thresholds: r.thresholds.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default(),
                cost: r.cost.as_deref().and_then(|c| serde_json::from_str(c).ok()),
                step_records: records.remove(&r.id).unwrap_or_default(),
            }
        })
        .collect())
}

/// One run with its step records.
pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> Result<RunView, DomainError> {
    let row = run::Entity::find_by_id(id).one(db).await?.ok_or_else(|| DomainError::not_found("run", id))?;
    Ok(views(db, vec![row]).await?.remove(0))
}

fn newest_first(query: sea_orm::Select<run::Entity>) -> sea_orm::Select<run::Entity> {
    query.order_by_desc(run::Column::CreatedAt).order_by_desc(run::Column::Id)
}

/// Every run matching `filter`, newest first.
pub async fn all(db: &impl ConnectionTrait, filter: &RunFilter) -> Result<Vec<RunView>, DomainError> {
    let rows = newest_first(filtered(db, filter).await?).all(db).await?;
    views(db, rows).await
}

/// One page of runs matching `filter`, newest first.
pub async fn list(db: &impl ConnectionTrait, filter: &RunFilter, limit: u64, offset: u64) -> Result<Page<RunView>, DomainError> {
    let (limit, offset) = clamp_page(limit, offset);
    let query = filtered(db, filter).await?;
    let total = query.clone().count(db).await?;
    let rows = newest_first(query).limit(limit).offset(offset).all(db).await?;
    Ok(Page { items: views(db, rows).await?, total, limit, offset })
}

async fn filtered(db: &impl ConnectionTrait, filter: &RunFilter) -> Result<sea_orm::Select<run::Entity>, DomainError> {
    let mut query = run::Entity::find();
    if let Some(plan_id) = filter.plan_id {
        query = query.filter(run::Column::PlanId.eq(plan_id));
    }
    if let Some(project_id) = filter.project_id {
        let plan_ids: Vec<Uuid> = plan::Entity::find()
            .filter(plan::Column::ProjectId.eq(project_id))
            .select_only()
            .column(plan::Column::Id)
            .into_tuple()
            .all(db)
            .await?;
        query = query.filter(run::Column::PlanId.is_in(plan_ids));
    }
    if let Some(state) = filter.state {
        query = query.filter(run::Column::State.eq(state.as_str()));
    }
    if let Some(owner) = &filter.owner {
        query = query.filter(run::Column::Owner.eq(owner.as_str()));
    }
    Ok(query)
}

/// Records a new pending run of `plan_id` with one pending step record per step
/// (tried again while another writer holds the database).
pub async fn create<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    plan_id: Uuid,
    owner: Option<String>,
    env: &Env,
    unset: &[String],
    ingest_token: &str,
) -> Result<RunView, DomainError> {
    super::persist("a new run", || create_once(db, plan_id, owner.clone(), env, unset, ingest_token)).await
}

async fn create_once<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    plan_id: Uuid,
    owner: Option<String>,
    env: &Env,
    unset: &[String],
    ingest_token: &str,
) -> Result<RunView, DomainError> {
    let txn = db.begin().await?;
    plan::Entity::find_by_id(plan_id).one(&txn).await?.ok_or_else(|| DomainError::not_found("plan", plan_id))?;
    let now = Utc::now();
    let id = Uuid::new_v4();
    run::ActiveModel {
        id: Set(id),
        plan_id: Set(plan_id),
        state: Set(RunState::Pending.as_str().to_string()),
        owner: Set(owner),
        environment_data: Set(run_env_to_json(env, unset)),
        aborted: Set(false),
        failure_reason: Set(None),
        created_at: Set(now),
        started_at: Set(None),
        completed_at: Set(None),
        updated_at: Set(now),
        dashboard_url: Set(None),
        ingest_token: Set(Some(ingest_token.to_string())),
        feed_seq: Set(0),
        metrics_state: Set(None),
        thresholds: Set(None),
        verdict: Set(None),
        verdict_reason: Set(None),
        ending: Set(None),
        cost: Set(None),
        cost_usd: Set(0.0),
    }
    .insert(&txn)
    .await?;
    let step_ids: Vec<Uuid> = step::Entity::find()
        .filter(step::Column::PlanId.eq(plan_id))
        .order_by_asc(step::Column::Position)
        .select_only()
        .column(step::Column::Id)
        .into_tuple()
        .all(&txn)
        .await?;
    if !step_ids.is_empty() {
        let records = step_ids.into_iter().map(|step_id| step_record::ActiveModel {
            id: Set(Uuid::new_v4()),
            run_id: Set(id),
            step_id: Set(step_id),
            state: Set(StepState::Pending.as_str().to_string()),
            failed: Set(false),
            failure_reason: Set(None),
            created_at: Set(now),
            started_at: Set(None),
            completed_at: Set(None),
            updated_at: Set(now),
            interruptions: Set(None),
        });
        step_record::Entity::insert_many(records).exec(&txn).await?;
    }
    txn.commit().await?;
    get(db, id).await
}

/// Moves run `id` to `state`, stamping `started_at`/`completed_at` as the state implies;
/// waits out a brief database outage rather than losing the transition. For records
/// made outside a run's life (tests); a run's own changes go through [`transition`]
/// or its supervisor's `RunPhase`.
pub async fn set_state(db: &impl ConnectionTrait, id: Uuid, state: RunState, failure_reason: Option<String>) -> Result<(), DomainError> {
    let ending = match state {
        RunState::Aborted => Some(Ending::Aborted),
        RunState::Failed | RunState::Completed => failure_reason.map(Ending::StepFailed).or(Some(Ending::Finished)),
        _ => None,
    };
    super::persist("a run state", || write_state(db, id, state, ending.as_ref())).await
}

/// Moves run `id` from the phase it has stored to `next`, if the run's life allows it
/// (`RunPhase::can_become`); answers whether it did.
pub async fn transition(db: &impl ConnectionTrait, id: Uuid, next: &RunPhase) -> Result<bool, DomainError> {
    let stored = recovery(db, id).await?.phase;
    if !stored.can_become(next) {
        return Ok(false);
    }
    set_phase(db, id, next).await?;
    Ok(true)
}

/// Records the run's phase: its state, and once it is ending, why (so a restarted
/// broker ends it the same way); waits out a brief database outage.
pub async fn set_phase(db: &impl ConnectionTrait, id: Uuid, phase: &RunPhase) -> Result<(), DomainError> {
    super::persist("a run state", || write_state(db, id, phase.state(), phase.ending())).await
}

async fn write_state(db: &impl ConnectionTrait, id: Uuid, state: RunState, ending: Option<&Ending>) -> Result<(), DomainError> {
    let now = Utc::now();
    let mut row = run::ActiveModel { id: Set(id), state: Set(state.as_str().to_string()), updated_at: Set(now), ..Default::default() };
    if state == RunState::Running {
        row.started_at = Set(Some(now));
    }
    if state.is_finished() {
        row.completed_at = Set(Some(now));
    }
    if let Some(ending) = ending {
        row.aborted = Set(ending.is_abort());
        row.failure_reason = Set(ending.reason().map(str::to_string));
        row.ending = Set(Some(ending.kind().to_string()));
    }
    row.update(db).await.map_err(|e| match e {
        sea_orm::DbErr::RecordNotUpdated => DomainError::not_found("run", id),
        other => other.into(),
    })?;
    Ok(())
}

/// Moves one step of a run to `next` if its stored state may become it
/// (`StepState::can_become`), stamping `started_at`/`completed_at` as the state implies;
/// answers whether it did. Waits out a brief database outage rather than losing it.
pub async fn transition_step(
    db: &impl ConnectionTrait,
    run_id: Uuid,
    step_id: Uuid,
    next: StepState,
    failure_reason: Option<String>,
) -> Result<bool, DomainError> {
    super::persist("a step state", || write_step_state(db, run_id, step_id, next, failure_reason.clone())).await
}

/// The record of step `step_id` in run `run_id`.
async fn step_record_of(db: &impl ConnectionTrait, run_id: Uuid, step_id: Uuid) -> Result<step_record::Model, DomainError> {
    step_record::Entity::find()
        .filter(step_record::Column::RunId.eq(run_id))
        .filter(step_record::Column::StepId.eq(step_id))
        .one(db)
        .await?
        .ok_or_else(|| DomainError::not_found("step record", format!("{run_id}/{step_id}")))
}

async fn write_step_state(
    db: &impl ConnectionTrait,
    run_id: Uuid,
    step_id: Uuid,
    state: StepState,
    failure_reason: Option<String>,
) -> Result<bool, DomainError> {
    let now = Utc::now();
    let record = step_record_of(db, run_id, step_id).await?;
    let stored = StepState::parse(&record.state).unwrap_or(StepState::Pending);
    if !stored.can_become(state) {
        return Ok(false);
    }
    let mut row =
        step_record::ActiveModel { id: Set(record.id), state: Set(state.as_str().to_string()), updated_at: Set(now), ..Default::default() };
    if state == StepState::Running {
        row.started_at = Set(Some(now));
    }
    if matches!(state, StepState::Completed | StepState::Failed | StepState::Skipped) {
        row.completed_at = Set(Some(now));
        row.failed = Set(state == StepState::Failed);
        row.failure_reason = Set(failure_reason);
    }
    row.update(db).await?;
    Ok(true)
}

/// Deletes a finished run with its step and container records.
pub async fn delete<C: ConnectionTrait + TransactionTrait>(db: &C, id: Uuid) -> Result<(), DomainError> {
    let txn = db.begin().await?;
    let row = run::Entity::find_by_id(id).one(&txn).await?.ok_or_else(|| DomainError::not_found("run", id))?;
    if !RunState::parse(&row.state).is_some_and(RunState::is_finished) {
        return Err(DomainError::conflict(ConflictCode::RunLive, format!("run {id} is {}; abort it first", row.state)));
    }
    run::Entity::delete_by_id(id).exec(&txn).await?;
    // A plan whose baseline this was has none now.
    plan::Entity::update_many()
        .col_expr(plan::Column::BaselineRunId, sea_orm::sea_query::Expr::value(Option::<Uuid>::None))
        .col_expr(plan::Column::BaselineSetAt, sea_orm::sea_query::Expr::value(Option::<chrono::DateTime<Utc>>::None))
        .filter(plan::Column::BaselineRunId.eq(id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// The ids of runs that have not finished.
pub async fn unfinished(db: &impl ConnectionTrait) -> Result<Vec<Uuid>, DomainError> {
    let finished: Vec<&str> = [RunState::Completed, RunState::Failed, RunState::Aborted].map(RunState::as_str).to_vec();
    Ok(run::Entity::find()
        .filter(run::Column::State.is_not_in(finished))
        .select_only()
        .column(run::Column::Id)
        .into_tuple()
        .all(db)
        .await?)
}

/// A run (404 when missing) and the names of its steps by id.
async fn with_step_names(db: &impl ConnectionTrait, run_id: Uuid) -> Result<(RunView, HashMap<Uuid, String>), DomainError> {
    let run = get(db, run_id).await?;
    let names = run.step_records.iter().map(|r| (r.step_id, r.step_name.clone())).collect();
    Ok((run, names))
}

/// What a restarted broker needs to carry on a live run.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// Where the run is in its life, as stored (how it is ending included).
    pub phase: RunPhase,
    /// The token the run's relays present.
    pub ingest_token: Option<String>,
    /// The last feed sequence number recorded.
    pub feed_seq: u64,
    /// The metrics totals so far (the metrics actor's own format).
    pub metrics_state: Option<String>,
}

/// The recovery record of run `id`.
pub async fn recovery(db: &impl ConnectionTrait, id: Uuid) -> Result<Recovery, DomainError> {
    let row = run::Entity::find_by_id(id).one(db).await?.ok_or_else(|| DomainError::not_found("run", id))?;
    let state = RunState::parse(&row.state).unwrap_or(RunState::Failed);
    let phase = RunPhase::from_stored(state, row.ending.as_deref(), row.aborted, row.failure_reason);
    Ok(Recovery {
        phase,
        ingest_token: row.ingest_token,
        feed_seq: u64::try_from(row.feed_seq).unwrap_or(0),
        metrics_state: row.metrics_state,
    })
}

/// Records the last feed sequence number handed out for run `id`.
pub async fn set_feed_seq(db: &impl ConnectionTrait, id: Uuid, seq: u64) -> Result<(), DomainError> {
    run::ActiveModel { id: Set(id), feed_seq: Set(i64::try_from(seq).unwrap_or(i64::MAX)), ..Default::default() }.update(db).await?;
    Ok(())
}

/// Adds a spot interruption notice to a step's record.
pub async fn add_interruption(
    db: &impl ConnectionTrait,
    run_id: Uuid,
    step_id: Uuid,
    notice: &InterruptionView,
) -> Result<(), DomainError> {
    let row = step_record_of(db, run_id, step_id).await?;
    let mut all: Vec<InterruptionView> = row.interruptions.as_deref().and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default();
    all.push(notice.clone());
    let json = serde_json::to_string(&all).map_err(|e| DbErr::Custom(format!("the step's interruptions: {e}")))?;
    step_record::ActiveModel { id: Set(row.id), interruptions: Set(Some(json)), ..Default::default() }.update(db).await?;
    Ok(())
}

/// Records what run `id`'s instances have cost, on the run and in the spend ledger.
pub async fn set_cost(db: &impl ConnectionTrait, id: Uuid, cost: &RunCost) -> Result<(), DomainError> {
    let json = serde_json::to_string(cost).map_err(|e| DbErr::Custom(format!("the run's cost: {e}")))?;
    let row = run::ActiveModel { id: Set(id), cost: Set(Some(json)), cost_usd: Set(cost.usd), ..Default::default() }.update(db).await?;
    let entry = spend::ActiveModel { run_id: Set(id), created_at: Set(row.created_at), usd: Set(cost.usd) };
    spend::Entity::insert(entry)
        .on_conflict(OnConflict::column(spend::Column::RunId).update_column(spend::Column::Usd).to_owned())
        .exec(db)
        .await?;
    Ok(())
}

/// Dollars recorded by the runs created since `since`, but `except`, deleted runs included (the spend ledger).
pub async fn cost_since(db: &impl ConnectionTrait, since: DateTime<Utc>, except: Uuid) -> Result<f64, DomainError> {
    let costs: Vec<f64> = spend::Entity::find()
        .filter(spend::Column::CreatedAt.gte(since))
        .filter(spend::Column::RunId.ne(except))
        .select_only()
        .column(spend::Column::Usd)
        .into_tuple()
        .all(db)
        .await?;
    Ok(costs.into_iter().sum())
}

/// Records the metrics totals of run `id` so far.
pub async fn set_metrics_state(db: &impl ConnectionTrait, id: Uuid, state: String) -> Result<(), DomainError> {
    run::ActiveModel { id: Set(id), metrics_state: Set(Some(state)), ..Default::default() }.update(db).await?;
    Ok(())
}

/// Records where a run's dashboard was published.
pub async fn set_dashboard_url(db: &impl ConnectionTrait, id: Uuid, url: &str) -> Result<(), DomainError> {
    run::ActiveModel { id: Set(id), dashboard_url: Set(Some(url.to_string())), ..Default::default() }.update(db).await?;
    Ok(())
}

/// Records a finished run's verdict and why.
pub async fn set_verdict(db: &impl ConnectionTrait, id: Uuid, verdict: Verdict, reason: &str) -> Result<(), DomainError> {
    super::persist("a run's verdict", || async {
        run::ActiveModel {
            id: Set(id),
            verdict: Set(Some(verdict.as_str().to_string())),
            verdict_reason: Set(Some(reason.to_string())),
            ..Default::default()
        }
        .update(db)
        .await?;
        Ok(())
    })
    .await
}
