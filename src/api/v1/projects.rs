//! Projects: listed, created (with plans), imported from a file, read, renamed and deleted.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use loads_actors::catalog::{CreateProject, DeleteProject, GetProject, ImportProject, ListProjects, UpdateProject};
use loads_actors::domain::views::{ImportReport, Page, ProjectDetail, ProjectView};
use loads_actors::domain::ProjectSpec;
use serde::Deserialize;
use utoipa::ToSchema;

use super::super::error::ErrorBody;
use super::super::input::{self, Query};
use super::super::ApiState;
use super::{PageParams, Reply};

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
