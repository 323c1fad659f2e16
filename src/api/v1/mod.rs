//! REST API v1 under `/api/v1`: projects, plans, runs and project import.
//!
//! Every handler reads its input, sends one message to the catalog actor and
//! returns the answer. The `#[utoipa::path]` attributes are the OpenAPI
//! document, so the document cannot drift from the routes.

mod plans;
mod projects;
mod runs;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use loads_actors::catalog::Ping;
use loads_actors::domain::views::RunState;
use loads_actors::metrics::PingMetrics;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, RequestCode};
use super::ApiState;

pub use self::plans::*;
pub use self::projects::*;
pub use self::runs::*;

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

/// The health answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    /// The broker's version.
    pub version: &'static str,
}

pub(super) type Reply = Result<HttpResponse, ApiError>;

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
