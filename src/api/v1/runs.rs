//! Runs: listed, read, aborted and deleted; their logs, metrics, series, dashboard and
//! comparison with another run; and this broker's EC2 instances.

use actix_web::{web, HttpRequest, HttpResponse};
use loads_actors::broker::{AbortRun, DeleteRun, RunDashboard, RunLogs, RunMetrics, RunSeries};
use loads_actors::catalog::{CompareRuns, GetRun, ListRuns};
use loads_actors::domain::compare::Comparison;
use loads_actors::domain::views::{ContainerView, MetricSummaryView, Page, RunState, RunView};
use loads_actors::store::runs::{CompareTo, RunFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::super::error::{ApiError, ErrorBody, RequestCode};
use super::super::input::{self, Query};
use super::super::ApiState;
use super::{Reply, RunParams};

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
