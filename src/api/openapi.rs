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

/// Answers every route may give a browser's request (`api::browser`): 421 for a
/// `Host` that is not the broker's, 403 for a change or the feed from another origin.
struct BrowserRules;

impl Modify for BrowserRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let feed = path.ends_with("/events");
            let operations = [
                (&mut item.get, feed),
                (&mut item.head, false),
                (&mut item.post, true),
                (&mut item.put, true),
                (&mut item.patch, true),
                (&mut item.delete, true),
            ];
            for (operation, changes) in operations {
                let Some(operation) = operation else { continue };
                let responses = &mut operation.responses.responses;
                responses.entry("421".into()).or_insert_with(|| error("The Host header does not name this broker").into());
                if changes {
                    responses.entry("403".into()).or_insert_with(|| error("Forbidden (another origin, or a read token)").into());
                }
            }
        }
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
        v1::set_baseline,
        v1::get_baseline,
        v1::clear_baseline,
        v1::start_run,
        v1::estimate_plan,
        v1::list_instances,
        v1::terminate_instance,
        v1::list_runs,
        v1::get_run,
        v1::abort_run,
        v1::delete_run,
        v1::run_logs,
        v1::run_metrics,
        v1::run_series,
        v1::run_dashboard,
        v1::compare_runs,
        super::events::run_events,
        v1::whoami,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth, &BrowserRules),
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
