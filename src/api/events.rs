//! The websocket live feed of a run, `GET /api/v1/runs/{id}/events?since=SEQ`.
//!
//! On connect: a `snapshot` message (the run as stored, and the number of the
//! last event it reflects), then every event after `since`, then events as
//! they happen, each with its `seq`. Pings every 10 s keep the connection
//! alive. When the run ends the server sends `end` and closes; a subscriber
//! that fell too far behind gets `closed` with the last `seq` it was sent and
//! reconnects with `?since=` that number, missing nothing.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use futures_util::StreamExt;
use loads_actors::broker::Subscribe;
use loads_actors::run_supervisor::Subscription;
use serde_json::json;

use super::error::{ApiError, RequestCode};
use super::input::{self, Query};
use super::ApiState;

const HEARTBEAT: Duration = Duration::from_secs(10);

/// Opens the feed of one run.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "Run id"),
           ("since" = Option<u64>, Query, description = "Send only events after this seq")),
    responses((status = 101, description = "Switching to the websocket protocol"), (status = 400, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 429, description = "The run has `limits.max_subscribers_per_run` subscribers already", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_events(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let run_id = input::id(&path, "id")?;
    let since = Query::of(&req)?.whole("since", 0..=u64::MAX)?.unwrap_or(0);
    let subscription = state.broker.send(Subscribe { run_id, since }).await??;
    let (mut response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request(RequestCode::NotWebsocket, format!("this route speaks websocket only: {e}")))?;
    // A browser that sent its token as a subprotocol offered `loads` too; the answer must name one it offered.
    let offered = req.headers().get(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if offered.split(',').any(|p| p.trim() == "loads") {
        let loads = actix_web::http::header::HeaderValue::from_static("loads");
        response.headers_mut().insert(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL, loads);
    }
    actix_web::rt::spawn(serve(session, stream.aggregate_continuations(), subscription));
    Ok(response)
}

async fn send(session: &mut Session, value: serde_json::Value) -> bool {
    session.text(value.to_string()).await.is_ok()
}

async fn serve(mut session: Session, mut incoming: actix_ws::AggregatedMessageStream, sub: Subscription) {
    let Subscription { snapshot, seq, kept_from, backlog, live } = sub;
    if !send(&mut session, json!({"type": "snapshot", "seq": seq, "kept_from": kept_from, "run": snapshot})).await {
        return;
    }
    let mut last = seq;
    for event in backlog {
        last = last.max(event.event.seq);
        if session.text(event.json.clone()).await.is_err() {
            return;
        }
    }
    let Some(mut live) = live else {
        let _ = send(&mut session, json!({"type": "end", "seq": last})).await;
        let _ = session.close(Some(CloseCode::Normal.into())).await;
        return;
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            event = live.recv() => match event {
                Some(event) => {
                    last = last.max(event.event.seq);
                    let ended = matches!(&event.event.kind, loads_actors::feed::EventKind::Run { state, .. } if state.is_finished());
                    if session.text(event.json.clone()).await.is_err() {
                        return;
                    }
                    if ended {
                        let _ = send(&mut session, json!({"type": "end", "seq": last})).await;
                        let _ = session.close(Some(CloseCode::Normal.into())).await;
                        return;
                    }
                }
                None => {
                    let reason = format!("reconnect with ?since={last}");
                    let _ = send(&mut session, json!({"type": "closed", "seq": last, "reason": reason})).await;
                    let _ = session.close(Some(CloseReason { code: CloseCode::Again, description: Some(reason) })).await;
                    return;
                }
            },
            message = incoming.next() => match message {
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(AggregatedMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                if session.ping(b"").await.is_err() {
                    return;
                }
            }
        }
    }
}
