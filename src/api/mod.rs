//! The HTTP face of the broker: REST API v1, the loads v2 compatibility API,
//! health, and the OpenAPI document.
//!
//! Handlers hold only actor addresses (`ApiState`); each one is a single
//! message away from its answer. This module wires routes and auth.

pub mod auth;
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

use error::ApiError;

/// What every handler may use: actor addresses and request limits.
#[derive(Clone)]
pub struct ApiState {
    /// Projects, plans, steps and run records.
    pub catalog: Addr<CatalogActor>,
    /// The runs.
    pub broker: Addr<BrokerActor>,
    /// Nodes and instances.
    pub pool: Addr<loads_actors::pool::Ec2PoolActor>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::no_route())
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method"))
}

fn resource(path: &str) -> Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health").route(web::get().to(v1::health)))
        .service(resource("/api/v1/openapi.json").route(web::get().to(openapi::serve)))
        .service(
            web::scope("/api/v1")
                .service(resource("/projects").route(web::get().to(v1::list_projects)).route(web::post().to(v1::create_project)))
                .service(resource("/projects/import").route(web::post().to(v1::import_project)))
                .service(
                    resource("/projects/{id}")
                        .route(web::get().to(v1::get_project))
                        .route(web::put().to(v1::update_project))
                        .route(web::delete().to(v1::delete_project)),
                )
                .service(
                    resource("/projects/{id}/plans").route(web::get().to(v1::list_plans)).route(web::post().to(v1::create_plan)),
                )
                .service(
                    resource("/plans/{id}")
                        .route(web::get().to(v1::get_plan))
                        .route(web::put().to(v1::update_plan))
                        .route(web::delete().to(v1::delete_plan)),
                )
                .service(resource("/plans/{id}/fork").route(web::post().to(v1::fork_plan)))
                .service(resource("/plans/{id}/runs").route(web::post().to(v1::start_run)))
                .service(resource("/instances").route(web::get().to(v1::list_instances)))
                .service(resource("/instances/{id}").route(web::delete().to(v1::terminate_instance)))
                .service(resource("/runs").route(web::get().to(v1::list_runs)))
                .service(resource("/runs/{id}").route(web::get().to(v1::get_run)).route(web::delete().to(v1::delete_run)))
                .service(resource("/runs/{id}/abort").route(web::post().to(v1::abort_run)))
                .service(resource("/runs/{id}/logs").route(web::get().to(v1::run_logs)))
                .service(resource("/runs/{id}/metrics").route(web::get().to(v1::run_metrics)))
                .service(resource("/runs/{id}/dashboard").route(web::get().to(v1::run_dashboard)))
                .service(resource("/runs/{id}/events").route(web::get().to(events::run_events)))
                .default_service(web::to(not_found)),
        )
        .service(resource("/api").route(web::get().to(compat::root)))
        .service(resource("/api/project").route(web::get().to(compat::list_projects)).route(web::post().to(compat::create_project)))
        .service(resource("/api/project/{uuid}").route(web::get().to(compat::get_project)).route(web::delete().to(compat::delete_project)))
        .service(resource("/api/instances").route(web::get().to(compat::list_instances)).route(web::delete().to(compat::terminate_instances)))
        .service(
            resource("/api/instances/{id}")
                .route(web::get().to(compat::get_instance))
                .route(web::delete().to(compat::terminate_instance)),
        )
        .service(resource("/api/run/{uuid}").route(web::get().to(compat::get_run)).route(web::delete().to(compat::delete_run)))
        .service(
            resource("/api/orchestrate/{uuid}")
                .route(web::post().to(compat::orchestrate))
                .route(web::delete().to(compat::abort)),
        )
        .default_service(web::to(not_found));
}
