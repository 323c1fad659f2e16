//! Plans and their steps: create, read, replace, fork, delete.
//!
//! A plan that has runs keeps its steps and environment forever, so that every
//! run stays a true record of what ran; `fork` gives an editable copy.

use std::collections::HashMap;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::entities::{plan, project, run, step};
use super::{clamp_page, env_from_json, env_to_json, map_from_text, map_to_text, on_unique};
use crate::domain::views::{BaselineView, Page, PlanSummary, PlanView, RunState, StepView};
use crate::domain::{ConflictCode, DomainError, Market, PlanSpec, Regions, StepSpec};

fn step_spec(m: &step::Model) -> StepSpec {
    StepSpec {
        name: m.name.clone(),
        instance_count: u32::try_from(m.instance_count).unwrap_or(0),
        instance_type: m.instance_type.clone(),
        instance_region: Regions::from_text(&m.instance_region),
        market: Market::parse(&m.market).unwrap_or_default(),
        run_delay: u64::try_from(m.run_delay).unwrap_or(0),
        run_max_time: u64::try_from(m.run_max_time).unwrap_or(0),
        node_delay: u64::try_from(m.node_delay).unwrap_or(0),
        container_name: m.container_name.clone(),
        container_url: m.container_url.clone(),
        container_sha256: m.container_sha256.clone(),
        environment_data: env_from_json(&m.environment_data),
        additional_command_args: m.additional_command_args.clone(),
        dns_name: m.dns_name.clone(),
        port_mapping: m.port_mapping.clone(),
        volume_mapping: m.volume_mapping.clone(),
        docker_series: m.docker_series.clone(),
        min_nodes: m.min_nodes.and_then(|n| u32::try_from(n).ok()),
        prune_running: m.prune_running,
        monitor: m.monitor,
        service: m.service,
        required: m.required,
        thresholds: map_from_text(m.thresholds.as_deref()),
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn step_row(plan_id: Uuid, position: usize, s: &StepSpec) -> step::ActiveModel {
    let now = Utc::now();
    step::ActiveModel {
        id: Set(Uuid::new_v4()),
        plan_id: Set(plan_id),
        position: Set(i32::try_from(position).unwrap_or(i32::MAX)),
        name: Set(s.name.clone()),
        instance_count: Set(i32::try_from(s.instance_count).unwrap_or(i32::MAX)),
        instance_type: Set(s.instance_type.clone()),
        instance_region: Set(s.instance_region.to_text()),
        market: Set(s.market.as_str().to_string()),
        run_delay: Set(clamp_i64(s.run_delay)),
        run_max_time: Set(clamp_i64(s.run_max_time)),
        node_delay: Set(clamp_i64(s.node_delay)),
        container_name: Set(s.container_name.clone()),
        container_url: Set(s.container_url.clone()),
        container_sha256: Set(s.container_sha256.clone()),
        environment_data: Set(env_to_json(&s.environment_data)),
        additional_command_args: Set(s.additional_command_args.clone()),
        dns_name: Set(s.dns_name.clone()),
        port_mapping: Set(s.port_mapping.clone()),
        volume_mapping: Set(s.volume_mapping.clone()),
        docker_series: Set(s.docker_series.clone()),
        min_nodes: Set(s.min_nodes.map(|n| i32::try_from(n).unwrap_or(i32::MAX))),
        prune_running: Set(s.prune_running),
        monitor: Set(s.monitor),
        service: Set(s.service),
        required: Set(s.required),
        created_at: Set(now),
        updated_at: Set(now),
        thresholds: Set(map_to_text(&s.thresholds)),
    }
}

async fn insert_steps(db: &impl ConnectionTrait, plan_id: Uuid, steps: &[StepSpec]) -> Result<(), DomainError> {
    if steps.is_empty() {
        return Ok(());
    }
    let rows = steps.iter().enumerate().map(|(i, s)| step_row(plan_id, i, s));
    step::Entity::insert_many(rows).exec(db).await?;
    Ok(())
}

/// Inserts `spec` as a new plan of `project_id`, steps included.
pub(crate) async fn insert(db: &impl ConnectionTrait, project_id: Uuid, spec: &PlanSpec) -> Result<Uuid, DomainError> {
    let now = Utc::now();
    let id = Uuid::new_v4();
    plan::ActiveModel {
        id: Set(id),
        project_id: Set(project_id),
        name: Set(spec.name.clone()),
        description: Set(spec.description.clone()),
        enabled: Set(spec.enabled),
        environment_data: Set(env_to_json(&spec.environment_data)),
        created_at: Set(now),
        updated_at: Set(now),
        dashboard: Set(spec.dashboard.clone()),
        thresholds: Set(map_to_text(&spec.thresholds)),
        compare: Set(map_to_text(&spec.compare)),
        fail_on_regression: Set(spec.fail_on_regression),
        baseline_run_id: Set(None),
        baseline_set_at: Set(None),
    }
    .insert(db)
    .await
    .map_err(|e| on_unique(e, ConflictCode::PlanExists, || format!("the project already has a plan named {:?}", spec.name)))?;
    insert_steps(db, id, &spec.steps).await?;
    Ok(id)
}

pub(crate) async fn steps_of(db: &impl ConnectionTrait, plan_id: Uuid) -> Result<Vec<StepView>, DomainError> {
    let rows = step::Entity::find().filter(step::Column::PlanId.eq(plan_id)).order_by_asc(step::Column::Position).all(db).await?;
    Ok(rows.iter().map(|m| StepView { id: m.id, position: u32::try_from(m.position).unwrap_or(0), spec: step_spec(m) }).collect())
}

/// How many rows of `E` each plan in `ids` has, by the entity's plan column.
async fn count_per_plan<E: EntityTrait>(
    db: &impl ConnectionTrait,
    plan_column: E::Column,
    id_column: E::Column,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, u64>, DomainError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, i64)> = E::find()
        .select_only()
        .column(plan_column)
        .column_as(id_column.count(), "n")
        .filter(plan_column.is_in(ids.iter().copied()))
        .group_by(plan_column)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|(id, n)| (id, u64::try_from(n).unwrap_or(0))).collect())
}

/// Builds summaries of `plans`, with their step and run counts.
pub(crate) async fn summaries(db: &impl ConnectionTrait, plans: Vec<plan::Model>) -> Result<Vec<PlanSummary>, DomainError> {
    let ids: Vec<Uuid> = plans.iter().map(|p| p.id).collect();
    let steps = count_per_plan::<step::Entity>(db, step::Column::PlanId, step::Column::Id, &ids).await?;
    let runs = count_per_plan::<run::Entity>(db, run::Column::PlanId, run::Column::Id, &ids).await?;
    Ok(plans
        .into_iter()
        .map(|p| PlanSummary {
            id: p.id,
            project_id: p.project_id,
            step_count: steps.get(&p.id).copied().unwrap_or(0),
            run_count: runs.get(&p.id).copied().unwrap_or(0),
            name: p.name,
            description: p.description,
            enabled: p.enabled,
            created_at: p.created_at,
            updated_at: p.updated_at,
        })
        .collect())
}

async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<plan::Model, DomainError> {
    plan::Entity::find_by_id(id).one(db).await?.ok_or_else(|| DomainError::not_found("plan", id))
}

/// A plan with its steps.
pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> Result<PlanView, DomainError> {
    let model = find(db, id).await?;
    let environment_data = env_from_json(&model.environment_data);
    let dashboard = model.dashboard.clone();
    let thresholds = map_from_text(model.thresholds.as_deref());
    let compare = map_from_text(model.compare.as_deref());
    let (fail_on_regression, baseline_run_id) = (model.fail_on_regression, model.baseline_run_id);
    let steps = steps_of(db, id).await?;
    let plan = summaries(db, vec![model]).await?.remove(0);
    Ok(PlanView { plan, environment_data, dashboard, thresholds, compare, fail_on_regression, baseline_run_id, steps })
}

/// One page of a project's plans, by name.
pub async fn list(db: &impl ConnectionTrait, project_id: Uuid, limit: u64, offset: u64) -> Result<Page<PlanSummary>, DomainError> {
    project::Entity::find_by_id(project_id).one(db).await?.ok_or_else(|| DomainError::not_found("project", project_id))?;
    let (limit, offset) = clamp_page(limit, offset);
    let query = plan::Entity::find().filter(plan::Column::ProjectId.eq(project_id));
    let total = query.clone().count(db).await?;
    let rows = query.order_by_asc(plan::Column::Name).limit(limit).offset(offset).all(db).await?;
    Ok(Page { items: summaries(db, rows).await?, total, limit, offset })
}

/// Creates a plan in `project_id`.
pub async fn create<C: ConnectionTrait + TransactionTrait>(db: &C, project_id: Uuid, spec: &PlanSpec) -> Result<PlanView, DomainError> {
    let txn = db.begin().await?;
    project::Entity::find_by_id(project_id).one(&txn).await?.ok_or_else(|| DomainError::not_found("project", project_id))?;
    let id = insert(&txn, project_id, spec).await?;
    txn.commit().await?;
    get(db, id).await
}

/// What replacing a plan did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// Nothing differed.
    Unchanged,
    /// Fields or steps were replaced.
    Updated,
}

/// Whether the plan's header (name, description, ..., how runs are judged) and its
/// steps and env (what runs) are as `spec` has them. Thresholds and rules judge runs
/// rather than make them, so a step's thresholds are part of the header.
fn same_content(current: &PlanView, spec: &PlanSpec) -> (bool, bool) {
    let without_thresholds = |s: &StepSpec| StepSpec { thresholds: Default::default(), ..s.clone() };
    let steps_same = current.steps.len() == spec.steps.len()
        && current.steps.iter().zip(&spec.steps).all(|(a, b)| without_thresholds(&a.spec) == without_thresholds(b))
        && current.environment_data == spec.environment_data;
    let header_same = current.plan.name == spec.name
        && current.plan.description == spec.description
        && current.plan.enabled == spec.enabled
        && current.dashboard == spec.dashboard
        && current.thresholds == spec.thresholds
        && current.compare == spec.compare
        && current.fail_on_regression == spec.fail_on_regression
        && current.steps.iter().zip(&spec.steps).all(|(a, b)| a.spec.thresholds == b.thresholds);
    (header_same, steps_same)
}

/// Replaces plan `id` with `spec`; refused when the plan has runs and its steps or env would change.
pub(crate) async fn replace_in(db: &impl ConnectionTrait, id: Uuid, spec: &PlanSpec) -> Result<Replaced, DomainError> {
    let current = get(db, id).await?;
    let (header_same, steps_same) = same_content(&current, spec);
    if header_same && steps_same {
        return Ok(Replaced::Unchanged);
    }
    if !steps_same && current.plan.run_count > 0 {
        return Err(DomainError::conflict(
            ConflictCode::PlanImmutable,
            format!(
                "plan {:?} has {} run(s), so its steps and environment can no longer change; \
                 fork it (POST /api/v1/plans/{id}/fork) and edit the copy",
                current.plan.name, current.plan.run_count
            ),
        ));
    }
    plan::ActiveModel {
        id: Set(id),
        name: Set(spec.name.clone()),
        description: Set(spec.description.clone()),
        enabled: Set(spec.enabled),
        environment_data: Set(env_to_json(&spec.environment_data)),
        dashboard: Set(spec.dashboard.clone()),
        thresholds: Set(map_to_text(&spec.thresholds)),
        compare: Set(map_to_text(&spec.compare)),
        fail_on_regression: Set(spec.fail_on_regression),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .update(db)
    .await
    .map_err(|e| on_unique(e, ConflictCode::PlanExists, || format!("the project already has a plan named {:?}", spec.name)))?;
    if !steps_same {
        step::Entity::delete_many().filter(step::Column::PlanId.eq(id)).exec(db).await?;
        insert_steps(db, id, &spec.steps).await?;
    } else {
        for (current, wanted) in current.steps.iter().zip(&spec.steps).filter(|(a, b)| a.spec.thresholds != b.thresholds) {
            step::ActiveModel { id: Set(current.id), thresholds: Set(map_to_text(&wanted.thresholds)), ..Default::default() }
                .update(db)
                .await?;
        }
    }
    Ok(Replaced::Updated)
}

/// Replaces plan `id` with `spec` (see `replace_in`).
pub async fn replace<C: ConnectionTrait + TransactionTrait>(db: &C, id: Uuid, spec: &PlanSpec) -> Result<PlanView, DomainError> {
    let txn = db.begin().await?;
    replace_in(&txn, id, spec).await?;
    txn.commit().await?;
    get(db, id).await
}

/// Fails with a conflict when any plan in `plan_ids` has a run that has not finished.
pub(crate) async fn refuse_live_runs(db: &impl ConnectionTrait, plan_ids: &[Uuid], what: &str) -> Result<(), DomainError> {
    let finished: Vec<&str> = [RunState::Completed, RunState::Failed, RunState::Aborted].map(RunState::as_str).to_vec();
    let live = run::Entity::find()
        .filter(run::Column::PlanId.is_in(plan_ids.iter().copied()))
        .filter(run::Column::State.is_not_in(finished))
        .count(db)
        .await?;
    if live > 0 {
        return Err(DomainError::conflict(
            ConflictCode::RunLive,
            format!("{what} has {live} run(s) still live; abort them or wait for them to finish"),
        ));
    }
    Ok(())
}

/// Deletes plan `id` with its steps and finished runs; refused while a run is live.
pub async fn delete<C: ConnectionTrait + TransactionTrait>(db: &C, id: Uuid) -> Result<(), DomainError> {
    let txn = db.begin().await?;
    let model = find(&txn, id).await?;
    refuse_live_runs(&txn, &[id], &format!("plan {:?}", model.name)).await?;
    plan::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Copies plan `id` (steps and env, no runs) into a new plan named `name`,
/// or `<name> (fork N)` with the first free N.
pub async fn fork<C: ConnectionTrait + TransactionTrait>(db: &C, id: Uuid, name: Option<String>) -> Result<PlanView, DomainError> {
    let txn = db.begin().await?;
    let source = get(&txn, id).await?;
    let taken: Vec<String> = plan::Entity::find()
        .filter(plan::Column::ProjectId.eq(source.plan.project_id))
        .select_only()
        .column(plan::Column::Name)
        .into_tuple()
        .all(&txn)
        .await?;
    let name = match name {
        Some(n) => n,
        None => (1..)
            .map(|n| if n == 1 { format!("{} (fork)", source.plan.name) } else { format!("{} (fork {n})", source.plan.name) })
            .find(|candidate| !taken.contains(candidate))
            .unwrap_or_default(),
    };
    // A fork starts without a baseline: its runs are its own.
    let spec = PlanSpec { name, ..source.spec() };
    let new_id = insert(&txn, source.plan.project_id, &spec).await?;
    txn.commit().await?;
    get(db, new_id).await
}

/// Makes finished run `run_id` of plan `plan_id` its baseline (replacing any other).
pub async fn set_baseline(db: &impl ConnectionTrait, plan_id: Uuid, run_id: Uuid) -> Result<BaselineView, DomainError> {
    let plan = find(db, plan_id).await?;
    let run = run::Entity::find_by_id(run_id).one(db).await?.ok_or_else(|| DomainError::not_found("run", run_id))?;
    if run.plan_id != plan_id {
        let why = format!("run {run_id} is a run of another plan; a baseline is a finished run of plan {:?}", plan.name);
        return Err(DomainError::Invalid(crate::domain::ValidationErrors::one("run_id", why)));
    }
    if !RunState::parse(&run.state).is_some_and(RunState::is_finished) {
        return Err(DomainError::conflict(ConflictCode::RunLive, format!("run {run_id} is {}; a baseline is a finished run", run.state)));
    }
    let now = Utc::now();
    plan::ActiveModel { id: Set(plan_id), baseline_run_id: Set(Some(run_id)), baseline_set_at: Set(Some(now)), ..Default::default() }
        .update(db)
        .await?;
    Ok(BaselineView { plan_id, run_id, set_at: now })
}

/// The baseline of plan `plan_id`.
pub async fn baseline(db: &impl ConnectionTrait, plan_id: Uuid) -> Result<BaselineView, DomainError> {
    let plan = find(db, plan_id).await?;
    match (plan.baseline_run_id, plan.baseline_set_at) {
        (Some(run_id), Some(set_at)) => Ok(BaselineView { plan_id, run_id, set_at }),
        _ => Err(DomainError::not_found("baseline for the plan", plan_id)),
    }
}

/// Removes plan `plan_id`'s baseline, if it has one.
pub async fn clear_baseline(db: &impl ConnectionTrait, plan_id: Uuid) -> Result<(), DomainError> {
    find(db, plan_id).await?;
    plan::ActiveModel { id: Set(plan_id), baseline_run_id: Set(None), baseline_set_at: Set(None), ..Default::default() }.update(db).await?;
    Ok(())
}
