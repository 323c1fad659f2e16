//! The metrics ingest endpoint, `POST /ingest/{run_id}`, on its own listener:
//! relays deliver their windows here with the run's token. It is reachable
//! from the nodes (on the local provider, through each run network's gateway),
//! so it accepts nothing but windows, and only with the token of a live run.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use loads_actors::domain::metrics::Window;
use loads_actors::metrics::{Ingest, IngestError, MetricsActor};
use serde_json::json;

use super::error::ApiError;
use super::input;

/// Largest delivery accepted.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the ingest handler uses.
#[derive(Clone)]
pub struct IngestState {
    /// The metrics collector.
    pub metrics: actix::Addr<MetricsActor>,
}

/// Takes a batch of windows from a relay.
pub async fn ingest(state: web::Data<IngestState>, req: HttpRequest, path: web::Path<String>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let run_id = input::id(&path, "run_id")?;
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the run's ingest token is required"))?;
    let bytes = input::body(&req, payload, MAX_BODY).await?;
    let windows: Vec<Window> =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("invalid_json", format!("not a list of windows: {e}")))?;
    match state.metrics.send(Ingest { run_id, token, windows }).await? {
        Ok(accepted) => Ok(HttpResponse::Ok().json(json!({"accepted": accepted}))),
        Err(e @ IngestError::UnknownRun(_)) => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())),
        Err(e @ IngestError::Unauthorized) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())),
        Err(e @ IngestError::Foreign(_)) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())),
    }
}
