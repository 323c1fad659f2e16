//! The metrics ingest endpoint, `POST /ingest/{run_id}`, on its own listener:
//! relays deliver their windows here with the run's token. It is reachable
//! from the nodes (on the local provider through a forward on each run
//! network's gateway, on EC2 through each node's SSH forward), so it accepts
//! nothing but windows, and only with the token of a live run.
//!
//! The token is checked from the headers before a byte of the body is read;
//! a wrong token and an unknown run get the same answer, so an outsider
//! cannot tell which runs are live. Bodies are read within a deadline, and
//! only a few at once, so slow or bogus senders cannot hold the broker's memory.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use loads_actors::domain::metrics::Window;
use loads_actors::metrics::{AuthorizeIngest, Ingest, IngestError, MetricsActor};
use serde_json::json;
use tokio::sync::Semaphore;

use super::error::{ApiError, RequestCode};
use super::input;

/// Largest delivery accepted.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the ingest handler uses.
#[derive(Clone)]
pub struct IngestState {
    /// The metrics collector.
    pub metrics: actix::Addr<MetricsActor>,
    /// Bodies being read at once, at most; a delivery waits `body_timeout` for a place.
    pub bodies: Arc<Semaphore>,
    /// Longest a body may take to arrive.
    pub body_timeout: Duration,
}

impl IngestState {
    /// State for `metrics`, reading at most `bodies` bodies at once, each within `body_timeout`.
    pub fn new(metrics: actix::Addr<MetricsActor>, bodies: usize, body_timeout: Duration) -> Self {
        Self { metrics, bodies: Arc::new(Semaphore::new(bodies.max(1))), body_timeout }
    }
}

/// Takes a batch of windows from a relay.
pub async fn ingest(
    state: web::Data<IngestState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let run_id = uuid::Uuid::parse_str(&path).map_err(|_| ApiError::from(IngestError::Unauthorized))?;
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or(IngestError::Unauthorized)?;
    state.metrics.send(AuthorizeIngest { run_id, token: token.clone() }).await??;

    let too_slow = || ApiError::new(StatusCode::REQUEST_TIMEOUT, RequestCode::RequestTimeout, "the delivery did not arrive in time");
    let read = async {
        let _place = state.bodies.acquire().await.map_err(|_| ApiError::unavailable())?;
        input::body(&req, payload, MAX_BODY).await
    };
    let bytes = tokio::time::timeout(state.body_timeout, read).await.map_err(|_| too_slow())??;
    let windows: Vec<Window> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(RequestCode::InvalidJson, format!("not a list of windows: {e}")))?;
    let accepted = state.metrics.send(Ingest { run_id, token, windows }).await??;
    Ok(HttpResponse::Ok().json(json!({"accepted": accepted})))
}
