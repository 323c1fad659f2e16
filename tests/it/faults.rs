//! Faults with defined outcomes: what the engine refuses, what is killed from
//! outside, what is down. Each ends in a state a user can read in the API.

use serde_json::json;

use crate::helpers::{ensure_images, record, sh_step, Backend, TestApp};

/// A step container killed from outside (`docker kill`) fails its step with the
/// exit code, fails the run (the step is required), and everything is removed.
#[actix_web::test]
async fn a_container_killed_from_outside_fails_its_step_with_the_exit_code() {
    ensure_images();
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let (_, run_id) = app.start(json!({"name": "p", "steps": [sh_step("victim", "sleep 300")]}), json!({})).await;
    let id = loop {
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
        if let Some(c) = logs["containers"].as_array().and_then(|all| all.iter().find(|c| c["role"] == "step").cloned()) {
            break c["docker_id"].as_str().unwrap().to_string();
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let out = std::process::Command::new("docker").args(["kill", &id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "victim")["failure_reason"].as_str().unwrap().to_string();
    assert!(reason.contains("exited with code 137"), "{reason}");
    app.assert_no_leftovers();
}

/// The engine refusing to start a container (its host port is taken) fails the
/// step with the engine's message, naming the container and image.
#[actix_web::test]
async fn a_container_the_engine_refuses_fails_its_step_with_the_engines_message() {
    ensure_images();
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut step = sh_step("blocked", "sleep 1");
    step["port_mapping"] = json!(format!("8080:{port}"));
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "blocked")["failure_reason"].as_str().unwrap().to_string();
    assert!(reason.contains("cannot start container") && reason.contains(loads::images::BUSYBOX), "{reason}");
    assert!(reason.contains("address already in use") || reason.contains("port is already allocated"), "{reason}");
    drop(taken);
    app.assert_no_leftovers();
}

/// With InfluxDB down the run is unaffected: it completes and its metrics summary is stored and served.
#[actix_web::test]
async fn influxdb_down_leaves_the_run_and_its_summary_unaffected() {
    ensure_images();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{closed}");
    let app = TestApp::spawn(Backend::Sqlite, &[("LOADS__INFLUX__URL", &url)]).await;
    let script = "for i in 1 2 3; do printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT; done; sleep 2";
    let (_, run_id) = app.start(json!({"name": "p", "steps": [sh_step("load", script)]}), json!({})).await;
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits").map(|m| m["count"].clone());
    assert_eq!(hits, Some(json!(3.0)), "{metrics:#}");
    app.assert_no_leftovers();
}
