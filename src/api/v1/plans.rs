//! Plans: listed, created, read, replaced, deleted and forked; their baseline run; and
//! starting a run of one (or checking it with `dry_run`) and its estimate.

use actix_web::{web, HttpRequest, HttpResponse};
use loads_actors::broker::{DryRun, EstimatePlan, StartRun};
use loads_actors::catalog::{ClearBaseline, CreatePlan, DeletePlan, ForkPlan, GetBaseline, GetPlan, ListPlans, SetBaseline, UpdatePlan};
use loads_actors::domain::cost::Estimate;
use loads_actors::domain::views::{BaselineView, Page, PlanSummary, PlanView, RunView};
use loads_actors::domain::PlanSpec;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::super::error::{ApiError, ErrorBody};
use super::super::input::{self, Query};
use super::super::ApiState;
use super::{PageParams, Reply};

/// Body of a fork request; all optional.
#[derive(Deserialize, ToSchema)]
pub struct ForkRequest {
    /// Name of the copy; default `<name> (fork)`.
    pub name: Option<String>,
}

/// Lists a project's plans by name.
#[utoipa::path(get, path = "/api/v1/projects/{id}/plans", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Project id"), PageParams),
    responses((status = 200, body = Page<PlanSummary>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_plans(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>) -> Reply {
    let project_id = input::id(&path, "id")?;
    let (limit, offset) = Query::of(&req)?.page()?;
    Ok(HttpResponse::Ok().json(state.catalog.send(ListPlans { project_id, limit, offset }).await??))
}

/// Creates a plan with its steps.
#[utoipa::path(post, path = "/api/v1/projects/{id}/plans", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    request_body = PlanSpec,
    responses((status = 201, body = PlanView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_plan(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>, payload: web::Payload) -> Reply {
    let project_id = input::id(&path, "id")?;
    let document = input::required(&req, payload, state.max_body_bytes, true).await?;
    Ok(HttpResponse::Created().json(state.catalog.send(CreatePlan { project_id, document }).await??))
}

/// Reads a plan with its steps.
#[utoipa::path(get, path = "/api/v1/plans/{id}", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    responses((status = 200, body = PlanView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_plan(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = input::id(&path, "id")?;
    Ok(HttpResponse::Ok().json(state.catalog.send(GetPlan { id }).await??))
}

/// Replaces a plan. Once a plan has runs only its name, description and
/// `enabled` may change (409 `plan_immutable` otherwise; fork it instead).
#[utoipa::path(put, path = "/api/v1/plans/{id}", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    request_body = PlanSpec,
    responses((status = 200, body = PlanView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_plan(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>, payload: web::Payload) -> Reply {
    let id = input::id(&path, "id")?;
    let document = input::required(&req, payload, state.max_body_bytes, true).await?;
    Ok(HttpResponse::Ok().json(state.catalog.send(UpdatePlan { id, document }).await??))
}

/// Deletes a plan with its steps and finished runs.
#[utoipa::path(delete, path = "/api/v1/plans/{id}", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_plan(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = input::id(&path, "id")?;
    state.catalog.send(DeletePlan { id }).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Copies a plan into a new editable plan of the same project.
#[utoipa::path(post, path = "/api/v1/plans/{id}/fork", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    request_body(content = Option<ForkRequest>, description = "Optional; the copy's name"),
    responses((status = 201, body = PlanView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn fork_plan(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>, payload: web::Payload) -> Reply {
    let id = input::id(&path, "id")?;
    let name = match input::optional_json(&req, payload, state.max_body_bytes).await? {
        None => None,
        Some(body) => fork_name(&body)?,
    };
    Ok(HttpResponse::Created().json(state.catalog.send(ForkPlan { id, name }).await??))
}

fn fork_name(body: &Value) -> Result<Option<String>, ApiError> {
    let unprocessable = |path: &str, message: &str| ApiError::invalid_field(path, message);
    let Value::Object(map) = body else { return Err(unprocessable("", "must be an object")) };
    if let Some(key) = map.keys().find(|k| k.as_str() != "name") {
        return Err(unprocessable(key, "unknown field (expected: name)"));
    }
    match map.get("name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(unprocessable("name", "must be a non-empty string")),
    }
}

/// Body of a baseline request.
#[derive(Deserialize, ToSchema)]
pub struct BaselineRequest {
    /// A finished run of the plan.
    pub run_id: uuid::Uuid,
}

fn baseline_run(body: &Value) -> Result<uuid::Uuid, ApiError> {
    let unprocessable = |path: &str, message: &str| ApiError::invalid_field(path, message);
    let Value::Object(map) = body else { return Err(unprocessable("", "must be an object with run_id")) };
    if let Some(key) = map.keys().find(|k| k.as_str() != "run_id") {
        return Err(unprocessable(key, "unknown field (expected: run_id)"));
    }
    match map.get("run_id") {
        Some(Value::String(s)) => uuid::Uuid::parse_str(s).map_err(|_| unprocessable("run_id", "must be a run id (a UUID)")),
        None | Some(Value::Null) => Err(unprocessable("run_id", "is required")),
        Some(_) => Err(unprocessable("run_id", "must be a run id (a UUID)")),
    }
}

/// Makes a finished run of the plan its baseline (replacing any other): later runs are
/// compared with it (`GET /api/v1/runs/{id}/compare?to=baseline`) and its regression rules checked.
#[utoipa::path(post, path = "/api/v1/plans/{id}/baseline", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    request_body = BaselineRequest,
    responses((status = 200, body = BaselineView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_baseline(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>, payload: web::Payload) -> Reply {
    let plan_id = input::id(&path, "id")?;
    let run_id = baseline_run(&input::required(&req, payload, state.max_body_bytes, true).await?)?;
    Ok(HttpResponse::Ok().json(state.catalog.send(SetBaseline { plan_id, run_id }).await??))
}

/// The plan's baseline run; 404 when it has none.
#[utoipa::path(get, path = "/api/v1/plans/{id}/baseline", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    responses((status = 200, body = BaselineView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_baseline(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let plan_id = input::id(&path, "id")?;
    Ok(HttpResponse::Ok().json(state.catalog.send(GetBaseline { plan_id }).await??))
}

/// Removes the plan's baseline.
#[utoipa::path(delete, path = "/api/v1/plans/{id}/baseline", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn clear_baseline(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let plan_id = input::id(&path, "id")?;
    state.catalog.send(ClearBaseline { plan_id }).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Body of a run request; all optional.
#[derive(Deserialize, ToSchema)]
pub struct RunRequest {
    /// The run env: an object of strings, or a list of `KEY=VALUE`; wins over the plan's env defaults.
    #[schema(value_type = Option<Object>)]
    pub env: Option<Value>,
    /// Who starts the run.
    pub owner: Option<String>,
    /// Check everything starting the run checks, and answer its estimate (200) instead of starting it.
    pub dry_run: Option<bool>,
}

fn run_request(body: Option<Value>) -> Result<(StartRun, bool), ApiError> {
    let unprocessable = |path: &str, message: &str| ApiError::invalid_field(path, message);
    let mut start = StartRun { plan_id: uuid::Uuid::nil(), owner: None, env: None, null_is_unset: false };
    let Some(body) = body else { return Ok((start, false)) };
    let Value::Object(map) = body else { return Err(unprocessable("", "must be an object")) };
    if let Some(key) = map.keys().find(|k| !["env", "owner", "dry_run"].contains(&k.as_str())) {
        return Err(unprocessable(key, "unknown field (expected: env, owner, dry_run)"));
    }
    start.owner = match map.get("owner") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => Some(s.clone()),
        Some(_) => return Err(unprocessable("owner", "must be a non-empty string of at most 200 characters")),
    };
    let dry_run = match map.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(unprocessable("dry_run", "must be true or false")),
    };
    start.env = map.get("env").cloned();
    Ok((start, dry_run))
}

/// Starts a run of a plan; answers the recorded run (state `pending`). Follow
/// it with `GET /api/v1/runs/{id}` or the websocket feed. With `dry_run`, every
/// check a start makes is made (env, regions, budget) and the run's estimate is
/// answered instead; nothing is recorded or launched.
#[utoipa::path(post, path = "/api/v1/plans/{id}/runs", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    request_body(content = Option<RunRequest>, description = "Optional run env, owner and dry_run"),
    responses((status = 201, body = RunView), (status = 200, body = Estimate, description = "dry_run: the estimate; nothing started"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody, description = "Invalid, a region not configured, or over_budget"),
              (status = 429, body = ErrorBody, description = "too_many_live_runs: the broker has limits.max_live_runs live runs")),
    security(("bearer" = [])))]
pub async fn start_run(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>, payload: web::Payload) -> Reply {
    let plan_id = input::id(&path, "id")?;
    let (mut start, dry_run) = run_request(input::optional_json(&req, payload, state.max_body_bytes).await?)?;
    start.plan_id = plan_id;
    if dry_run {
        return Ok(HttpResponse::Ok().json(state.broker.send(DryRun(start)).await??));
    }
    let run = state.broker.send(start).await??;
    Ok(HttpResponse::Created().json(run))
}

/// What a run of the plan costs on EC2 at most: instances by type, region and
/// market, instance-hours and dollars per step and in all, from the price table
/// (its source and date included); `null` figures say why in `notes`. With the
/// `local` provider, what the run would cost on EC2. `over_budget` names the cap
/// a run would pass.
#[utoipa::path(get, path = "/api/v1/plans/{id}/estimate", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    responses((status = 200, body = Estimate), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn estimate_plan(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let plan_id = input::id(&path, "id")?;
    Ok(HttpResponse::Ok().json(state.broker.send(EstimatePlan { plan_id }).await??))
}
