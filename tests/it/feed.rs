//! The websocket live feed: snapshot, order, late joins and reconnects with `since`.

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, on_both_databases, sh_step, TestApp};

/// Reads the feed until the server ends it; answers every JSON message.
async fn read_feed(app: &TestApp, run_id: &str, since: u64) -> Vec<Value> {
    let url = format!("{}/api/v1/runs/{run_id}/events?since={since}", app.base.replace("http://", "ws://"));
    let (_, mut socket) = awc::Client::new().ws(url).connect().await.expect("websocket connects");
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Some(frame) = socket.next().await {
        assert!(std::time::Instant::now() < deadline, "the feed did not end: {messages:#?}");
        match frame.expect("frame") {
            awc::ws::Frame::Text(text) => {
                let message: Value = serde_json::from_slice(&text).unwrap();
                let end = message["type"] == "end";
                messages.push(message);
                if end {
                    break;
                }
            }
            awc::ws::Frame::Close(_) => break,
            _ => {}
        }
    }
    messages
}

fn events(messages: &[Value]) -> Vec<Value> {
    messages.iter().filter(|m| !["snapshot", "end"].contains(&m["type"].as_str().unwrap())).cloned().collect()
}

on_both_databases! {
    /// A subscriber that joins a live run gets the snapshot, the backlog and the rest, in order, with no gaps;
    /// one that reconnects later with `since` gets exactly what it missed.
    async fn the_feed_misses_nothing_for_late_and_returning_subscribers(app) {
        ensure_images();
        let (_, run_id) = app.start(json!({"name": "feed", "steps": [
            sh_step("a", "sleep 2"),
            {"name": "b", "container_name": loads::images::BUSYBOX, "additional_command_args": "-c 'sleep 1'", "run_delay": 1, "instance_count": 2}
        ]}), json!({})).await;
        app.wait_for_run(&run_id, 60, |r| r["state"] == "running").await;

        let live = read_feed(&app, &run_id, 0).await;
        assert_eq!(live[0]["type"], "snapshot");
        assert_eq!(live[0]["run"]["id"], json!(run_id));
        assert_eq!(live.last().unwrap()["type"], "end");
        let all = events(&live);
        let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "numbered from 1 with no gap");
        assert!(all.iter().all(|e| e["at"].as_str().is_some()));
        let run_states: Vec<&str> = all.iter().filter(|e| e["type"] == "run").map(|e| e["state"].as_str().unwrap()).collect();
        assert_eq!(run_states, ["pending", "initializing", "running", "terminating", "completed"]);
        let b_states: Vec<&str> = all.iter().filter(|e| e["type"] == "step" && e["step"] == "b").map(|e| e["state"].as_str().unwrap()).collect();
        assert_eq!(b_states, ["running", "completed"]);
        let containers = |state: &str| all.iter().filter(|e| e["type"] == "container" && e["state"] == state).count();
        assert_eq!((containers("started"), containers("exited"), containers("removed")), (3, 3, 6), "3 step containers and 3 relays");
        let nodes_ready = all.iter().filter(|e| e["type"] == "node" && e["state"] == "ready").count();
        assert_eq!(nodes_ready, 3);

        let again = read_feed(&app, &run_id, 5).await;
        assert_eq!(again[0]["type"], "snapshot");
        assert_eq!(again[0]["run"]["state"], "completed");
        assert_eq!(events(&again), all[5..].to_vec(), "a reconnect with since=5 gets events 6.. exactly");
        let none_missed = read_feed(&app, &run_id, seqs.len() as u64).await;
        assert_eq!(events(&none_missed), Vec::<Value>::new());
        app.assert_no_leftovers();
    }
}

/// The feed of an unknown run is a 404, and a plain HTTP request to it is a clear 400.
#[actix_web::test]
async fn the_feed_refuses_unknown_runs_and_non_websocket_requests() {
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite, &[]).await;
    let (status, body) = app.get(&format!("/api/v1/runs/{}/events", uuid::Uuid::new_v4())).await;
    assert_eq!(status, awc::http::StatusCode::NOT_FOUND, "{body}");
    let plan = app.create_plan(crate::helpers::plan_doc("p")).await;
    let run = app.record_run(plan["id"].as_str().unwrap(), None).await;
    app.set_run_state(run, loads_actors::domain::views::RunState::Completed).await;
    let (status, body) = app.get(&format!("/api/v1/runs/{run}/events")).await;
    assert_eq!(status, awc::http::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "not_websocket");
}

/// A run's live feed takes at most `limits.max_subscribers_per_run` subscribers; the next one is told so (429).
#[actix_web::test]
async fn subscribers_beyond_the_limit_are_refused_clearly() {
    crate::helpers::ensure_images();
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite, &[("LOADS__LIMITS__MAX_SUBSCRIBERS_PER_RUN", "2")]).await;
    let (_, run_id) =
        app.start(serde_json::json!({"name": "p", "steps": [crate::helpers::sh_step("s", "sleep 30")]}), serde_json::json!({})).await;
    let url = format!("{}/api/v1/runs/{run_id}/events", app.base.replace("http://", "ws://"));
    let (_, first) = awc::Client::new().ws(url.clone()).connect().await.expect("first subscriber");
    let (_, second) = awc::Client::new().ws(url.clone()).connect().await.expect("second subscriber");
    let refused = awc::Client::new().ws(url.clone()).connect().await.err().expect("a third is refused");
    assert!(
        matches!(refused, awc::error::WsClientError::InvalidResponseStatus(s) if s == awc::http::StatusCode::TOO_MANY_REQUESTS),
        "{refused:?}"
    );
    let (status, body) = app.get(&format!("/api/v1/runs/{run_id}/events")).await;
    assert_eq!(status, awc::http::StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "too_many_subscribers");
    assert!(body["message"].as_str().unwrap().contains("limits.max_subscribers_per_run"), "{body}");
    drop((first, second));
    let (status, _) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &serde_json::json!({})).await;
    assert!(status.is_success());
    app.wait_finished(&run_id, 60).await;
    app.assert_no_leftovers();
}

/// Every run state and step state a subscriber is shown is already stored: reading the run
/// back the moment an event arrives finds that state or a later one, never an earlier one.
#[actix_web::test]
async fn states_on_the_feed_are_already_stored() {
    crate::helpers::ensure_images();
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite, &[]).await;
    let (_, run_id) = app
        .start(
            json!({"name": "p", "steps": [sh_step("a", "sleep 1"), {"name": "svc", "container_name": loads::images::BUSYBOX,
            "service": true, "run_max_time": 0, "additional_command_args": "-c 'sleep 300'"}]}),
            json!({}),
        )
        .await;
    let life = ["pending", "initializing", "running", "terminating", "completed"];
    let steps = ["pending", "running", "stopping", "completed"];
    let url = format!("{}/api/v1/runs/{run_id}/events", app.base.replace("http://", "ws://"));
    let (_, mut socket) = awc::Client::new().ws(url).connect().await.expect("websocket connects");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut checked = Vec::new();
    while let Some(frame) = socket.next().await {
        assert!(std::time::Instant::now() < deadline, "the feed did not end: {checked:?}");
        let awc::ws::Frame::Text(text) = frame.expect("frame") else { continue };
        let event: Value = serde_json::from_slice(&text).unwrap();
        let kind = event["type"].as_str().unwrap().to_string();
        if kind == "end" {
            break;
        }
        if kind != "run" && kind != "step" {
            continue;
        }
        let (_, run) = app.get(&format!("/api/v1/runs/{run_id}")).await;
        let (order, shown, stored): (&[&str], &str, &str) = if kind == "run" {
            (&life, event["state"].as_str().unwrap(), run["state"].as_str().unwrap())
        } else {
            let step = event["step"].as_str().unwrap();
            (&steps, event["state"].as_str().unwrap(), crate::helpers::record(&run, step)["state"].as_str().unwrap())
        };
        let at = |s: &str| order.iter().position(|o| *o == s).unwrap_or_else(|| panic!("{s} not in {order:?}"));
        assert!(at(stored) >= at(shown), "{kind} {shown} was published while the database said {stored}");
        let who = if kind == "step" { format!(" {}", event["step"].as_str().unwrap()) } else { String::new() };
        checked.push(format!("{kind}{who} {shown}"));
    }
    assert!(checked.contains(&"run terminating".to_string()) && checked.contains(&"step svc stopping".to_string()), "{checked:?}");
    app.assert_no_leftovers();
}
