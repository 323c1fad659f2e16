//! The HTTP face of the broker: REST API v1, the loads v2 compatibility API,
//! health, the OpenAPI document, and the web UI's pages (`crate::ui`).
//!
//! Handlers hold only actor addresses (`ApiState`); each one is a single
//! message away from its answer. This module wires routes and auth.

pub mod auth;
pub mod browser;
pub mod compat;
pub mod error;
pub mod events;
pub mod ingest;
pub mod input;
pub mod openapi;
pub mod v1;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, Resource};
use loads_actors::broker::BrokerActor;
use loads_actors::CatalogActor;

use error::{ApiError, RequestCode};

/// What every handler may use: actor addresses and request limits.
#[derive(Clone)]
pub struct ApiState {
    /// Projects, plans, steps and run records.
    pub catalog: Addr<CatalogActor>,
    /// The runs.
    pub broker: Addr<BrokerActor>,
    /// Nodes and instances.
    pub pool: Addr<loads_actors::pool::Ec2PoolActor>,
    /// The runs' metrics (for `/health`).
    pub metrics: Addr<loads_actors::metrics::MetricsActor>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::no_route())
}

/// A route's resource; any other method answers 405 with the `Allow` header listing `allow`.
fn resource(path: &str, allow: &'static str) -> Resource {
    web::resource(path).default_service(web::to(move || async move {
        let error =
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, RequestCode::MethodNotAllowed, format!("this route accepts {allow} only"));
        let mut response = actix_web::ResponseError::error_response(&error);
        response.headers_mut().insert(actix_web::http::header::ALLOW, actix_web::http::header::HeaderValue::from_static(allow));
        response
    }))
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    crate::ui::configure(cfg);
    cfg.service(resource("/health", "GET").route(web::get().to(v1::health)))
        .service(resource("/api/v1/openapi.json", "GET").route(web::get().to(openapi::serve)))
        .service(
            web::scope("/api/v1")
                .service(
                    resource("/projects", "GET, POST").route(web::get().to(v1::list_projects)).route(web::post().to(v1::create_project)),
                )
                .service(resource("/projects/import", "POST").route(web::post().to(v1::import_project)))
                .service(
                    resource("/projects/{id}", "GET, PUT, DELETE")
                        .route(web::get().to(v1::get_project))
                        .route(web::put().to(v1::update_project))
                        .route(web::delete().to(v1::delete_project)),
                )
                .service(
                    resource("/projects/{id}/plans", "GET, POST")
                        .route(web::get().to(v1::list_plans))
                        .route(web::post().to(v1::create_plan)),
                )
                .service(
                    resource("/plans/{id}", "GET, PUT, DELETE")
                        .route(web::get().to(v1::get_plan))
                        .route(web::put().to(v1::update_plan))
                        .route(web::delete().to(v1::delete_plan)),
                )
                .service(resource("/plans/{id}/fork", "POST").route(web::post().to(v1::fork_plan)))
                .service(
                    resource("/plans/{id}/baseline", "GET, POST, DELETE")
                        .route(web::get().to(v1::get_baseline))
                        .route(web::post().to(v1::set_baseline))
                        .route(web::delete().to(v1::clear_baseline)),
                )
                .service(resource("/plans/{id}/runs", "POST").route(web::post().to(v1::start_run)))
                .service(resource("/plans/{id}/estimate", "GET").route(web::get().to(v1::estimate_plan)))
                .service(resource("/instances", "GET").route(web::get().to(v1::list_instances)))
                .service(resource("/instances/{id}", "DELETE").route(web::delete().to(v1::terminate_instance)))
                .service(resource("/runs", "GET").route(web::get().to(v1::list_runs)))
                .service(resource("/runs/{id}", "GET, DELETE").route(web::get().to(v1::get_run)).route(web::delete().to(v1::delete_run)))
                .service(resource("/runs/{id}/abort", "POST").route(web::post().to(v1::abort_run)))
                .service(resource("/runs/{id}/logs", "GET").route(web::get().to(v1::run_logs)))
                .service(resource("/runs/{id}/metrics", "GET").route(web::get().to(v1::run_metrics)))
                .service(resource("/runs/{id}/series", "GET").route(web::get().to(v1::run_series)))
                .service(resource("/runs/{id}/dashboard", "GET").route(web::get().to(v1::run_dashboard)))
                .service(resource("/runs/{id}/compare", "GET").route(web::get().to(v1::compare_runs)))
                .service(resource("/runs/{id}/events", "GET").route(web::get().to(events::run_events)))
                .service(resource("/whoami", "GET").route(web::get().to(v1::whoami)))
                .default_service(web::to(not_found)),
        )
        .service(resource("/api", "GET").route(web::get().to(compat::root)))
        .service(
            resource("/api/project", "GET, POST").route(web::get().to(compat::list_projects)).route(web::post().to(compat::create_project)),
        )
        .service(
            resource("/api/project/{uuid}", "GET, DELETE")
                .route(web::get().to(compat::get_project))
                .route(web::delete().to(compat::delete_project)),
        )
        .service(
            resource("/api/instances", "GET, DELETE")
                .route(web::get().to(compat::list_instances))
                .route(web::delete().to(compat::terminate_instances)),
        )
        .service(
            resource("/api/instances/{id}", "GET, DELETE")
                .route(web::get().to(compat::get_instance))
                .route(web::delete().to(compat::terminate_instance)),
        )
        .service(
            resource("/api/run/{uuid}", "GET, DELETE").route(web::get().to(compat::get_run)).route(web::delete().to(compat::delete_run)),
        )
        .service(
            resource("/api/orchestrate/{uuid}", "POST, DELETE")
                .route(web::post().to(compat::orchestrate))
                .route(web::delete().to(compat::abort)),
        )
        .default_service(web::to(not_found));
}
