//! REST API v1 under `/api/v1`: projects, plans, runs and project import.
//!
//! Every handler reads its input, sends one message to the catalog actor and
//! returns the answer. The `#[utoipa::path]` attributes are the OpenAPI
//! document, so the document cannot drift from the routes.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use loads_actors::broker::{AbortRun, DeleteRun, DryRun, EstimatePlan, RunDashboard, RunLogs, RunMetrics, RunSeries, StartRun};
use loads_actors::catalog::{
    ClearBaseline, CompareRuns, CreatePlan, CreateProject, DeletePlan, DeleteProject, ForkPlan, GetBaseline, GetPlan, GetProject, GetRun,
    ImportProject, ListPlans, ListProjects, ListRuns, Ping, SetBaseline, UpdatePlan, UpdateProject,
};
use loads_actors::domain::compare::Comparison;
use loads_actors::domain::cost::Estimate;
use loads_actors::domain::views::{
    BaselineView, ContainerView, ImportReport, MetricSummaryView, Page, PlanSummary, PlanView, ProjectDetail, ProjectView, RunState,
    RunView,
};
use loads_actors::domain::{PlanSpec, ProjectSpec};
use loads_actors::metrics::PingMetrics;
use loads_actors::store::runs::{CompareTo, RunFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, RequestCode};
use super::input::{self, Query};
use super::ApiState;

/// Paging parameters of every list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<u64>,
}

/// Filters and paging of the run list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunParams {
    /// Runs of this plan.
    pub plan_id: Option<uuid::Uuid>,
    /// Runs of any plan of this project.
    pub project_id: Option<uuid::Uuid>,
    /// Runs in this state.
    pub state: Option<RunState>,
    /// Runs started by this owner.
    pub owner: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<u64>,
}

/// Body of a fork request; all optional.
#[derive(Deserialize, ToSchema)]
pub struct ForkRequest {
    /// Name of the copy; default `<name> (fork)`.
    pub name: Option<String>,
}

/// The health answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    /// The broker's version.
    pub version: &'static str,
}

type Reply = Result<HttpResponse, ApiError>;

/// Answers 200 when the database and the metrics collector answer.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn health(state: web::Data<ApiState>) -> Reply {
    state.catalog.send(Ping).await?.map_err(|e| {
        tracing::warn!(error = %e, "health check failed");
        ApiError::unavailable()
    })?;
    // A collector starting again after a failure answers once the runs' totals are back.
    state.metrics.send(PingMetrics).timeout(std::time::Duration::from_secs(5)).await.map_err(|e| {
        tracing::error!(error = %e, "health check failed: the metrics collector is not answering");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            RequestCode::Unavailable,
            "the metrics collector is not answering: runs' numbers are not being taken",
        )
    })?;
    Ok(HttpResponse::Ok().json(Health { status: "ok", version: crate::VERSION }))
}

/// Lists projects by name.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(PageParams),
    responses((status = 200, body = Page<ProjectView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_projects(state: web::Data<ApiState>, req: HttpRequest) -> Reply {
    let (limit, offset) = Query::of(&req)?.page()?;
    Ok(HttpResponse::Ok().json(state.catalog.send(ListProjects { limit, offset }).await??))
}

/// Creates a project, with plans if the body has them.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = ProjectSpec,
    responses((status = 201, body = ProjectDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_project(state: web::Data<ApiState>, req: HttpRequest, payload: web::Payload) -> Reply {
    let document = input::required(&req, payload, state.max_body_bytes, true).await?;
    Ok(HttpResponse::Created().json(state.catalog.send(CreateProject { document }).await??))
}

/// Imports a project file (JSON, TOML or YAML by `Content-Type`): creates the
/// project when missing, creates or replaces its plans.
#[utoipa::path(post, path = "/api/v1/projects/import", tag = "projects",
    request_body(content((ProjectSpec = "application/json"), (String = "application/toml"), (String = "application/yaml"))),
    responses((status = 200, description = "Existing project updated", body = ImportReport),
              (status = 201, description = "Project created", body = ImportReport),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn import_project(state: web::Data<ApiState>, req: HttpRequest, payload: web::Payload) -> Reply {
    let document = input::required(&req, payload, state.max_body_bytes, false).await?;
    let report: ImportReport = state.catalog.send(ImportProject { document }).await??;
    let status = if report.project_created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(HttpResponse::build(status).json(report))
}

/// Reads a project with its plan summaries.
#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses((status = 200, body = ProjectDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_project(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = input::id(&path, "id")?;
    Ok(HttpResponse::Ok().json(state.catalog.send(GetProject { id }).await??))
}

/// Renames a project or changes its home page (`{name, home_page?}`).
#[utoipa::path(put, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    request_body = ProjectHeader,
    responses((status = 200, body = ProjectDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_project(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>, payload: web::Payload) -> Reply {
    let id = input::id(&path, "id")?;
    let document = input::required(&req, payload, state.max_body_bytes, true).await?;
    Ok(HttpResponse::Ok().json(state.catalog.send(UpdateProject { id, document }).await??))
}

/// The fields of a project itself.
#[derive(Deserialize, ToSchema)]
pub struct ProjectHeader {
    /// Project name.
    pub name: String,
    /// Home page of the service under test.
    pub home_page: Option<String>,
}

/// Deletes a project with its plans and finished runs.
#[utoipa::path(delete, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_project(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = input::id(&path, "id")?;
    state.catalog.send(DeleteProject { id }).await??;
    Ok(HttpResponse::NoContent().finish())
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

/// What a run is compared with.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CompareParams {
    /// `baseline` (the plan's baseline) or the id of another finished run.
    pub to: String,
}

/// Compares a finished run with its plan's baseline or another finished run, step by step
/// and metric by metric (count, rate, p50, p95, p99, max, error ratio) with absolute and
/// relative deltas, and checks its plan's regression rules (`regressed`).
#[utoipa::path(get, path = "/api/v1/runs/{id}/compare", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id"), CompareParams),
    responses((status = 200, body = Comparison), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn compare_runs(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "id")?;
    let query = Query::of(&req)?;
    let to = match query.text("to") {
        Some("baseline") => CompareTo::Baseline,
        Some(other) => CompareTo::Run(
            uuid::Uuid::parse_str(other)
                .map_err(|_| ApiError::bad_request(RequestCode::InvalidQuery, "to must be `baseline` or a run id (a UUID)").at("to"))?,
        ),
        None => return Err(ApiError::bad_request(RequestCode::InvalidQuery, "to is required: `baseline` or a run id").at("to")),
    };
    Ok(HttpResponse::Ok().json(state.catalog.send(CompareRuns { run_id, to }).await??))
}

/// Lists runs, newest first, with optional filters.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunParams),
    responses((status = 200, body = Page<RunView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_runs(state: web::Data<ApiState>, req: HttpRequest) -> Reply {
    let query = Query::of(&req)?;
    let (limit, offset) = query.page()?;
    let state_filter = match query.text("state") {
        None => None,
        Some(raw) => Some(RunState::parse(raw).ok_or_else(|| {
            let names: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(RequestCode::InvalidQuery, format!("state must be one of {}, got {raw:?}", names.join(", "))).at("state")
        })?),
    };
    let filter = RunFilter {
        plan_id: query.uuid("plan_id")?,
        project_id: query.uuid("project_id")?,
        state: state_filter,
        owner: query.text("owner").map(str::to_string),
    };
    Ok(HttpResponse::Ok().json(state.catalog.send(ListRuns { filter, limit, offset }).await??))
}

/// Reads a run with its step records.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id")),
    responses((status = 200, body = RunView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_run(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = input::id(&path, "id")?;
    Ok(HttpResponse::Ok().json(state.catalog.send(GetRun { id }).await??))
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

/// Aborts a run in any state; idempotent. Answers the run as it is now.
#[utoipa::path(post, path = "/api/v1/runs/{id}/abort", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id")),
    responses((status = 202, body = RunView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn abort_run(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "id")?;
    Ok(HttpResponse::Accepted().json(state.broker.send(AbortRun { run_id }).await??))
}

/// Deletes a finished run and its records; a live run is a 409.
#[utoipa::path(delete, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_run(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "id")?;
    state.broker.send(DeleteRun { run_id }).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Filters of the logs route.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Only this step (by name).
    pub step: Option<String>,
    /// Only this node (e.g. `s1n0`).
    pub node: Option<String>,
    /// Only the last lines of each container, 1 to 100000.
    #[param(minimum = 1, maximum = 100000)]
    pub tail: Option<u64>,
}

/// The run's containers: exit codes and output.
#[derive(Serialize, ToSchema)]
pub struct RunLogsView {
    /// One entry per container, relays included.
    pub containers: Vec<ContainerView>,
}

/// The output and exit code of each container of a run, recorded when it was removed.
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id"), LogParams),
    responses((status = 200, body = RunLogsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_logs(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "id")?;
    let query = Query::of(&req)?;
    let tail = query.whole("tail", 1..=100_000)?.map(|t| t as usize);
    let msg = RunLogs { run_id, step: query.text("step").map(str::to_string), node: query.text("node").map(str::to_string), tail };
    let containers = state.broker.send(msg).await??;
    Ok(HttpResponse::Ok().json(RunLogsView { containers }))
}

/// The run's metrics, per step.
#[derive(Serialize, ToSchema)]
pub struct RunMetricsView {
    /// One entry per step and metric, stored when the run ended.
    pub metrics: Vec<MetricSummaryView>,
}

/// Every step's metrics over the whole run: counters with totals and rates,
/// timers with percentiles over every node's samples, and the relays' own counts.
#[utoipa::path(get, path = "/api/v1/runs/{id}/metrics", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id")),
    responses((status = 200, body = RunMetricsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_metrics(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "id")?;
    Ok(HttpResponse::Ok().json(RunMetricsView { metrics: state.broker.send(RunMetrics { run_id }).await?? }))
}

/// Every step's series over the run: each flush window merged over the step's
/// nodes (counter sums, timer statistics, each node's CPU), as the web UI charts
/// them. Written while the run goes, so a live run answers what arrived so far.
#[utoipa::path(get, path = "/api/v1/runs/{id}/series", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id")),
    responses((status = 200, body = loads_actors::domain::views::RunSeriesView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_series(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "id")?;
    let steps = state.broker.send(RunSeries { run_id }).await??;
    Ok(HttpResponse::Ok().json(loads_actors::domain::views::RunSeriesView { steps }))
}

/// Who the caller is to this broker.
#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// Whether the broker requires tokens (`auth.tokens`).
    pub auth: bool,
    /// What the caller's token may do: `operate` (everything) or `read` (GET only); `operate` without auth;
    /// none when tokens are required and the caller gave no valid one.
    pub role: Option<String>,
}

/// Whether this broker needs a token, and the role of the caller's: a client (the
/// web UI) asks for a token only when needed and shows only what it may do. Public.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "health",
    responses((status = 200, body = WhoAmI)),
    security((), ("bearer" = [])))]
pub async fn whoami(req: HttpRequest) -> HttpResponse {
    let tokens = req.app_data::<web::Data<super::auth::Tokens>>().map(|t| t.get_ref().clone()).unwrap_or_default();
    let role = match (tokens.enabled(), super::auth::token_of(&req).and_then(|t| tokens.role(&t))) {
        (false, _) | (true, Some(super::auth::Role::Operate)) => Some("operate"),
        (true, Some(super::auth::Role::Read)) => Some("read"),
        (true, None) => None,
    };
    HttpResponse::Ok().json(WhoAmI { auth: tokens.enabled(), role: role.map(str::to_string) })
}

/// The run's Grafana dashboard JSON: a row per step with throughput, latency
/// percentiles, errors and node CPU, memory and network panels on the run's
/// InfluxDB tags, over the run's time range.
#[utoipa::path(get, path = "/api/v1/runs/{id}/dashboard", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id")),
    responses((status = 200, description = "Grafana dashboard JSON", body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_dashboard(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "id")?;
    Ok(HttpResponse::Ok().json(state.broker.send(RunDashboard { run_id }).await??))
}

/// This broker's EC2 instances.
#[derive(Serialize, ToSchema)]
pub struct InstancesView {
    /// Instances not terminated, in every configured region.
    pub instances: Vec<loads_actors::infra::ec2::InstanceView>,
}

/// Lists this broker's EC2 instances (found by its `loads:broker` tag) in `ec2.regions`.
#[utoipa::path(get, path = "/api/v1/instances", tag = "instances",
    responses((status = 200, body = InstancesView), (status = 401, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_instances(state: web::Data<ApiState>) -> Reply {
    let instances = state.pool.send(loads_actors::pool::ListInstances).await??;
    Ok(HttpResponse::Ok().json(InstancesView { instances }))
}

/// Terminates one of this broker's instances; others are 404.
#[utoipa::path(delete, path = "/api/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 204, description = "Terminating"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn terminate_instance(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = path.into_inner();
    state.pool.send(loads_actors::pool::TerminateInstances { id: Some(id) }).await??;
    Ok(HttpResponse::NoContent().finish())
}
