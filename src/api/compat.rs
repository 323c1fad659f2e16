//! The loads v2 API, kept so that existing clients keep working: same paths,
//! same shapes, `{"success": ..., "status": ...}` in every body.
//!
//! Each handler sends one message to the catalog actor and reshapes the v1
//! read models into the original's JSON. Extra fields (`state_name`,
//! `failure_reason`) are additions old clients ignore.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use loads_actors::broker::{AbortRun as BrokerAbort, StartRun, StopRun, Stopped};
use loads_actors::catalog::{DeleteProject, GetRun, ImportProjectTree, ListRuns, ProjectTrees};
use loads_actors::domain::views::{PlanTree, ProjectTree, RunView, StepView};
use loads_actors::domain::DomainError;
use loads_actors::store::runs::RunFilter;
use serde_json::{json, Map, Value};

use super::error::{ApiError, RequestCode};
use super::input::{self, Query};
use super::ApiState;

/// An error in the original's shape: `{"success": false, "status": N, "message": "..."}`.
#[derive(Debug)]
pub struct CompatError(ApiError);

impl std::fmt::Display for CompatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for CompatError {
    fn status_code(&self) -> StatusCode {
        self.0.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut message = self.0.message.clone();
        for d in &self.0.details {
            message.push_str(&format!("; {d}"));
        }
        HttpResponse::build(self.0.status).json(json!({"success": false, "status": self.0.status.as_u16(), "message": message}))
    }
}

impl<E: Into<ApiError>> From<E> for CompatError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

type Reply = Result<HttpResponse, CompatError>;

fn ok(mut body: Map<String, Value>) -> HttpResponse {
    body.insert("success".into(), json!(true));
    body.insert("status".into(), json!(200));
    HttpResponse::Ok().json(Value::Object(body))
}

fn with(key: &str, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_string(), value);
    m
}

fn run_json(r: &RunView) -> Value {
    json!({
        "uuid": r.id,
        "state": r.state.legacy_code(),
        "state_name": r.state.as_str(),
        "aborted": r.aborted,
        "failure_reason": r.failure_reason,
        "step_records": r.step_records.iter().map(|s| json!({
            "uuid": s.id,
            "run_id": s.run_id,
            "step_id": s.step_id,
            "failed": s.failed,
            "created_at": s.created_at,
            "started_at": s.started_at,
            "completed_at": s.completed_at,
        })).collect::<Vec<_>>(),
        "created_at": r.created_at,
        "started_at": r.started_at,
        "completed_at": r.completed_at,
        "plan_id": r.plan_id,
        "plan_name": r.plan_name,
        "owner": r.owner,
    })
}

fn step_json(s: &StepView, plan_id: uuid::Uuid) -> Value {
    let mut v = serde_json::to_value(&s.spec).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        let env: Vec<String> = s.spec.environment_data.iter().map(|(k, v)| format!("{k}={v}")).collect();
        m.insert("environment_data".into(), json!(env.join("\n")));
        m.insert("uuid".into(), json!(s.id));
        m.insert("plan_id".into(), json!(plan_id));
    }
    v
}

fn plan_json(p: &PlanTree) -> Value {
    json!({
        "uuid": p.plan.plan.id,
        "name": p.plan.plan.name,
        "description": p.plan.plan.description,
        "enabled": p.plan.plan.enabled,
        "runs": p.runs.iter().map(run_json).collect::<Vec<_>>(),
        "steps": p.plan.steps.iter().map(|s| step_json(s, p.plan.plan.id)).collect::<Vec<_>>(),
    })
}

fn project_json(p: &ProjectTree) -> Value {
    json!({
        "uuid": p.project.id,
        "name": p.project.name,
        "home_page": p.project.home_page,
        "plans": p.plans.iter().map(plan_json).collect::<Vec<_>>(),
    })
}

fn no_such(what: &str) -> impl Fn(DomainError) -> CompatError + '_ {
    move |e| match e {
        DomainError::NotFound { .. } => CompatError(ApiError::new(StatusCode::NOT_FOUND, RequestCode::NotFound, format!("No such {what}"))),
        other => other.into(),
    }
}

/// `GET /api?limit=&offset=`: the version and the runs, newest first.
pub async fn root(state: web::Data<ApiState>, req: HttpRequest) -> Reply {
    let (limit, offset) = Query::of(&req)?.page()?;
    let page = state.catalog.send(ListRuns { filter: RunFilter::default(), limit, offset }).await??;
    let mut body = with("version", json!(crate::VERSION));
    body.insert("runs".into(), page.items.iter().map(run_json).collect());
    Ok(ok(body))
}

/// `GET /api/project`: every project with its plans, steps and runs.
pub async fn list_projects(state: web::Data<ApiState>) -> Reply {
    let trees = state.catalog.send(ProjectTrees { id: None }).await??;
    Ok(ok(with("projects", trees.iter().map(project_json).collect())))
}

/// `POST /api/project`: imports a project file (JSON body).
pub async fn create_project(state: web::Data<ApiState>, req: HttpRequest, payload: web::Payload) -> Reply {
    let document = input::required(&req, payload, state.max_body_bytes, true).await?;
    let tree = state.catalog.send(ImportProjectTree { document }).await??;
    Ok(ok(with("project", project_json(&tree))))
}

/// `GET /api/project/{uuid}`.
pub async fn get_project(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = input::id(&path, "uuid")?;
    let trees = state.catalog.send(ProjectTrees { id: Some(id) }).await?.map_err(no_such("project"))?;
    Ok(ok(with("project", trees.first().map(project_json).unwrap_or(Value::Null))))
}

/// `DELETE /api/project/{uuid}`.
pub async fn delete_project(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = input::id(&path, "uuid")?;
    state.catalog.send(DeleteProject { id }).await?.map_err(no_such("project"))?;
    Ok(ok(Map::new()))
}

/// `GET /api/run/{uuid}`; 404 `No such run`.
pub async fn get_run(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = input::id(&path, "uuid")?;
    let run = state.catalog.send(GetRun { id }).await?.map_err(no_such("run"))?;
    Ok(ok(with("run", run_json(&run))))
}

/// `POST /api/orchestrate/{plan_uuid}?owner=`: starts a run; the body is the run env. `{run_id}`.
pub async fn orchestrate(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>, payload: web::Payload) -> Reply {
    let plan_id = input::id(&path, "uuid")?;
    let owner = Query::of(&req)?.text("owner").map(str::to_string);
    let env = input::optional_json(&req, payload, state.max_body_bytes).await?;
    let run = state.broker.send(StartRun { plan_id, owner, env, null_is_unset: true }).await?.map_err(no_such("plan"))?;
    Ok(ok(with("run_id", json!(run.id))))
}

/// `DELETE /api/orchestrate/{run_uuid}`: aborts a run.
pub async fn abort(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "uuid")?;
    state.broker.send(BrokerAbort { run_id }).await?.map_err(no_such("run"))?;
    Ok(ok(Map::new()))
}

/// `DELETE /api/run/{uuid}?purge=1&terminate=1`: stops a live run (with
/// `terminate`, its instances are terminated, not kept for reuse); with
/// `purge`, deletes a finished run's record. A finished run without `purge`
/// is 400 `Already terminated`, as in the original.
pub async fn delete_run(state: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>) -> Reply {
    let run_id = input::id(&path, "uuid")?;
    let query = Query::of(&req)?;
    let purge = query.flag("purge")?;
    let terminate = query.flag("terminate")?;
    match state.broker.send(StopRun { run_id, purge, terminate }).await?.map_err(no_such("run"))? {
        Stopped::Aborting => {
            let message = if purge { "aborting; purge the run once it has ended" } else { "aborting" };
            Ok(ok(with("message", json!(message))))
        }
        Stopped::AlreadyFinished => Err(CompatError(ApiError::bad_request(RequestCode::AlreadyTerminated, "Already terminated"))),
        Stopped::Purged => Ok(ok(Map::new())),
    }
}

fn instance_json(i: &loads_actors::infra::ec2::InstanceView) -> Value {
    json!({
        "id": i.id,
        "tags": i.tags,
        "state": i.state,
        "instance_type": i.instance_type,
        "ip_address": i.ip_address,
        "placement": i.placement,
    })
}

/// `GET /api/instances`: `{instances: {id: {id, tags, state, instance_type, ip_address, placement}}}`.
pub async fn list_instances(state: web::Data<ApiState>) -> Reply {
    let instances = state.pool.send(loads_actors::pool::ListInstances).await??;
    let map: Map<String, Value> = instances.iter().map(|i| (i.id.clone(), instance_json(i))).collect();
    Ok(ok(with("instances", Value::Object(map))))
}

/// `DELETE /api/instances`: terminates all of this broker's instances.
pub async fn terminate_instances(state: web::Data<ApiState>) -> Reply {
    let ids = state.pool.send(loads_actors::pool::TerminateInstances { id: None }).await??;
    Ok(ok(with("terminated", json!(ids))))
}

/// `GET /api/instances/{id}`.
pub async fn get_instance(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let instances = state.pool.send(loads_actors::pool::ListInstances).await??;
    let one = instances
        .iter()
        .find(|i| i.id == *path)
        .ok_or_else(|| CompatError(ApiError::new(StatusCode::NOT_FOUND, RequestCode::NotFound, "No such instance")))?;
    Ok(ok(with("instance", instance_json(one))))
}

/// `DELETE /api/instances/{id}`.
pub async fn terminate_instance(state: web::Data<ApiState>, path: web::Path<String>) -> Reply {
    let id = path.into_inner();
    state.pool.send(loads_actors::pool::TerminateInstances { id: Some(id) }).await?.map_err(|e| match e {
        loads_actors::pool::PoolError::NoInstance(_) => {
            CompatError(ApiError::new(StatusCode::NOT_FOUND, RequestCode::NotFound, "No such instance"))
        }
        other => other.into(),
    })?;
    Ok(ok(Map::new()))
}
