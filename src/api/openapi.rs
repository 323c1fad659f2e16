//! The OpenAPI 3 document of API v1, generated from the handlers' annotations.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::v1;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "loads", description = "Load-test orchestrator: REST API v1. Errors share one shape, ErrorBody."),
    paths(
        v1::health,
        v1::list_projects,
        v1::create_project,
        v1::import_project,
        v1::get_project,
        v1::update_project,
        v1::delete_project,
        v1::list_plans,
        v1::create_plan,
        v1::get_plan,
        v1::update_plan,
        v1::delete_plan,
        v1::fork_plan,
        v1::start_run,
        v1::list_instances,
        v1::terminate_instance,
        v1::list_runs,
        v1::get_run,
        v1::abort_run,
        v1::delete_run,
        v1::run_logs,
        v1::run_metrics,
        v1::run_dashboard,
        super::events::run_events,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness"),
        (name = "projects", description = "Projects and project files"),
        (name = "plans", description = "Plans and their steps"),
        (name = "runs", description = "Runs and step records"),
        (name = "instances", description = "This broker's EC2 instances"),
    )
)]
pub struct ApiDoc;

/// The document, with this build's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = crate::VERSION.to_string();
    doc
}

/// Serves the document as JSON.
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}
