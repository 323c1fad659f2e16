//! The runs API around the engine: bad requests, deletes, logs, the loads v2 routes,
//! abort during initialization.

use std::io::{Read, Write};
use std::net::TcpListener;

use awc::http::StatusCode;
use serde_json::json;

use crate::helpers::{ensure_images, on_both_databases, plan_doc, record, sh_step};

/// The tests' image servers are on loopback, which image URLs may name only when allowed.
const LOOPBACK_IMAGES: &[(&str, &str)] = &[("LOADS__DOCKER__ALLOW_LOOPBACK_IMAGE_URLS", "true")];

on_both_databases! {
    /// Bad run requests are 4xx naming the field; a disabled plan is 409.
    async fn bad_run_requests_are_refused_clearly(app) {
        let plan = app.create_plan(plan_doc("p")).await;
        let runs = format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap());
        for (body, path) in [
            (json!([]), ""),
            (json!({"env": "A=1"}), "env"),
            (json!({"env": {"A": [1]}}), "env.A"),
            (json!({"owner": ""}), "owner"),
            (json!({"colour": "red"}), "colour"),
        ] {
            let (status, answer) = app.post(&runs, &body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
            assert_eq!(answer["details"][0]["path"], path, "{body}: {answer}");
        }
        let (status, _) = app.post(&format!("/api/v1/plans/{}/runs", uuid::Uuid::new_v4()), &json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = app.post("/api/v1/plans/nope/runs", &json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let mut disabled = plan_doc("off");
        disabled["enabled"] = json!(false);
        let off = app.create_plan(disabled).await;
        let (status, answer) = app.post(&format!("/api/v1/plans/{}/runs", off["id"].as_str().unwrap()), &json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(answer["error"], "plan_disabled");
        let (_, list) = app.get("/api/v1/runs").await;
        assert_eq!(list["total"], 0, "no run recorded for refused requests");
    }

    /// Live runs cannot be deleted; finished ones can. Logs filter by step, node and tail.
    async fn runs_are_deleted_once_finished_and_logs_can_be_filtered(app) {
        ensure_images();
        let (_, run_id) = app.start(json!({"name": "logs", "steps": [
            {"name": "talk", "container_name": loads::images::BUSYBOX, "instance_count": 2,
             "additional_command_args": "-c 'for i in 1 2 3 4 5; do echo line-$$i; done; sleep 1'"}
        ]}), json!({})).await;
        let (status, answer) = app.delete(&format!("/api/v1/runs/{run_id}")).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert_eq!(answer["error"], "run_live");
        app.wait_finished(&run_id, 60).await;

        let (status, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=talk&node=s0n1&tail=2")).await;
        assert_eq!(status, StatusCode::OK, "{logs}");
        let containers = logs["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2, "the node's step container and its relay: {logs}");
        let step = containers.iter().find(|c| c["role"] == "step").unwrap();
        assert_eq!(step["logs"], "line-4\nline-5");
        assert_eq!(step["node"], "s0n1");
        assert_eq!(step["exit_code"], 0);
        assert_eq!(step["image"], loads::images::BUSYBOX);
        let (status, _) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = app.get(&format!("/api/v1/runs/{run_id}/logs?tail=0")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _) = app.delete(&format!("/api/v1/runs/{run_id}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.get(&format!("/api/v1/runs/{run_id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        app.assert_no_leftovers();
    }

    /// POST/DELETE /api/orchestrate and DELETE /api/run keep the original's behaviour.
    async fn the_loads_v2_run_routes_start_abort_and_purge(app) {
        ensure_images();
        let plan = app.create_plan(json!({"name": "v2", "steps": [sh_step("s", "sleep 300")]})).await;
        let plan_id = plan["id"].as_str().unwrap();
        let (status, started) = app.post(&format!("/api/orchestrate/{plan_id}?owner=ops"), &json!({"TARGET": "x"})).await;
        assert_eq!(status, StatusCode::OK, "{started}");
        assert_eq!(started["success"], true);
        let run_id = started["run_id"].as_str().unwrap().to_string();
        let run = app.wait_for_run(&run_id, 60, |r| record(r, "s")["state"] == "running").await;
        assert_eq!(run["owner"], "ops");
        assert_eq!(run["environment_data"], json!({"TARGET": "x"}));

        let (status, aborted) = app.delete(&format!("/api/orchestrate/{run_id}")).await;
        assert_eq!(status, StatusCode::OK, "{aborted}");
        assert_eq!(aborted["success"], true);
        assert_eq!(app.wait_finished(&run_id, 60).await["state"], "aborted");

        let (status, refused) = app.delete(&format!("/api/run/{run_id}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(refused, json!({"success": false, "status": 400, "message": "Already terminated"}));
        let (status, purged) = app.delete(&format!("/api/run/{run_id}?purge=1&terminate=1")).await;
        assert_eq!(status, StatusCode::OK, "{purged}");
        let (status, gone) = app.get(&format!("/api/run/{run_id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(gone["message"], "No such run");
        let (status, missing) = app.post(&format!("/api/orchestrate/{}", uuid::Uuid::new_v4()), &json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(missing["message"], "No such plan");
        app.assert_no_leftovers();
    }

    /// The original client's `run` request, every option it knows with `null` for
    /// those not given: the run starts and completes, the nulls are left out of the
    /// containers' environment (never "None" or "null") and recorded as unset.
    async fn the_loads_v2_clients_run_body_with_nulls_starts_a_run(app) {
        ensure_images();
        let probe = "env | grep -ci -e image_url -e cset_name -e user_data -e image_name || true; env | grep -c -e =None -e =null || true; echo nodes=$$nodes";
        let plan = app.create_plan(json!({"name": "v2-client", "steps": [sh_step("s", probe)]})).await;
        let plan_id = plan["id"].as_str().unwrap();
        let body = json!({"strategy_id": plan_id, "nodes": 1, "image_url": null, "image_name": null, "cset_name": null, "user_data": null});
        let (status, started) = app.post(&format!("/api/orchestrate/{plan_id}"), &body).await;
        assert_eq!(status, StatusCode::OK, "{started}");
        let run_id = started["run_id"].as_str().unwrap().to_string();
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "completed", "{run:#}");
        assert_eq!(run["environment_data"], json!({"strategy_id": plan_id, "nodes": "1"}));
        assert_eq!(run["unset_env"], json!(["cset_name", "image_name", "image_url", "user_data"]));
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=s")).await;
        let output = logs["containers"].as_array().unwrap().iter().find(|c| c["role"] == "step").unwrap()["logs"].as_str().unwrap().to_string();
        assert_eq!(output.lines().collect::<Vec<_>>(), ["0", "0", "nodes=1"], "{output}");
        let (status, shown) = app.get(&format!("/api/run/{run_id}")).await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        // The v1 API keeps refusing a null, naming it.
        let (status, refused) = app.post(&format!("/api/v1/plans/{plan_id}/runs"), &json!({"env": {"image_url": null}})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert_eq!(refused["details"][0]["path"], "env.image_url");
        app.assert_no_leftovers();
    }

    /// Abort while nodes are still being prepared: the run ends aborted once preparation returns,
    /// and what was already created (another step's relay) is removed.
    async fn abort_during_initialization_releases_nodes(app with LOOPBACK_IMAGES) {
        ensure_images();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = released.recv_timeout(std::time::Duration::from_secs(60));
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        });
        let (_, run_id) = app.start(json!({"name": "slow init", "steps": [
            sh_step("ready", "sleep 1"),
            {"name": "slow", "container_name": "loads/never-built:1", "container_url": format!("http://127.0.0.1:{port}/image.tar")}
        ]}), json!({})).await;
        let run = app.wait_for_run(&run_id, 60, |r| r["state"] == "initializing").await;
        assert!(run["started_at"].is_null());
        let (status, _) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        app.wait_for_run(&run_id, 30, |r| r["state"] == "terminating").await;
        release.send(()).unwrap();
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "aborted", "{run:#}");
        assert!(run["started_at"].is_null(), "it never started");
        assert_eq!(record(&run, "ready")["state"], "skipped");
        server.join().unwrap();
        app.assert_no_leftovers();
    }
}

/// An image download that never answers fails its step after `docker.prepare_timeout_seconds`
/// with a reason saying so, instead of holding the run forever.
#[actix_web::test]
async fn a_hung_image_download_times_out_with_a_clear_reason() {
    ensure_images();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (_stream, _) = listener.accept().unwrap();
        let _ = finished.recv_timeout(std::time::Duration::from_secs(60));
    });
    let app = crate::helpers::TestApp::spawn(
        crate::helpers::Backend::Sqlite,
        &[("LOADS__DOCKER__PREPARE_TIMEOUT_SECONDS", "2"), LOOPBACK_IMAGES[0]],
    )
    .await;
    let (_, run_id) = app
        .start(
            json!({"name": "hung", "steps": [
                {"name": "stuck", "container_name": "loads/never-built:2", "container_url": format!("http://127.0.0.1:{port}/image.tar")}
            ]}),
            json!({}),
        )
        .await;
    let run = app.wait_finished(&run_id, 60).await;
    done.send(()).unwrap();
    server.join().unwrap();
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = run["failure_reason"].as_str().unwrap();
    assert!(reason.contains("cannot load image loads/never-built:2 from http://127.0.0.1:"), "{reason}");
    assert!(reason.contains("not downloaded within 2 s (docker.prepare_timeout_seconds)"), "{reason}");
    app.assert_no_leftovers();
}

/// While a run is live, its containers' output is served from their engines, filtered like the rest.
#[actix_web::test]
async fn logs_of_running_containers_are_served_while_the_run_is_live() {
    ensure_images();
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite, &[]).await;
    let (_, run_id) = app
        .start(
            json!({"name": "live logs", "steps": [
                {"name": "talker", "container_name": loads::images::BUSYBOX, "instance_count": 2, "run_max_time": 0,
                 "additional_command_args": "-c 'echo first-line; echo second-line; sleep 300'"}
            ]}),
            json!({}),
        )
        .await;
    let step = crate::helpers::eventually(60, async || {
        let (status, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=talker&node=s0n1&tail=1")).await;
        assert_eq!(status, StatusCode::OK, "{logs}");
        let step = logs["containers"].as_array().unwrap().iter().find(|c| c["role"] == "step").cloned();
        step.filter(|s| s["logs"].as_str().is_some_and(|l| l.contains("second-line"))).ok_or_else(|| format!("no live output: {logs}"))
    })
    .await;
    assert_eq!(step["logs"].as_str().unwrap().trim(), "second-line", "tail applies to live output");
    assert_eq!(step["node"], "s0n1");
    assert!(step["finished_at"].is_null() && step["exit_code"].is_null(), "still running: {step}");
    let (_, run) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(run["state"], "running");
    let (status, _) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.wait_finished(&run_id, 60).await;
    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=talker")).await;
    let recorded = logs["containers"].as_array().unwrap();
    assert_eq!(recorded.len(), 4, "after the run: each container once, as recorded: {logs}");
    assert!(recorded.iter().all(|c| c["finished_at"].is_string()));
    app.assert_no_leftovers();
}

/// Runs started at once on SQLite are all recorded (a writer that finds the
/// database locked waits its turn instead of answering 500).
#[actix_web::test]
async fn runs_started_at_once_are_all_recorded() {
    ensure_images();
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite, &[]).await;
    let plan = app.create_plan(json!({"name": "burst", "steps": [sh_step("a", "true"), sh_step("b", "true"), sh_step("c", "true")]})).await;
    let path = format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap());
    let empty = json!({});
    let starts = (0..8).map(|_| app.post(&path, &empty));
    let answers = futures_util::future::join_all(starts).await;
    let mut ids = Vec::new();
    for (status, body) in answers {
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    for id in ids {
        let run = app.wait_finished(&id, 180).await;
        assert_eq!(run["state"], "completed", "{run:#}");
    }
    app.assert_no_leftovers();
}
