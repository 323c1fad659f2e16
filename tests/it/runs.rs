//! The run engine against the real Docker engine: schedule, stops, failures,
//! aborts, environment, service steps and cleanup.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, on_both_databases, record, seconds_between, sh_step};

fn plan(name: &str, steps: Vec<Value>) -> Value {
    json!({"name": name, "steps": steps})
}

fn with(mut step: Value, fields: Value) -> Value {
    for (k, v) in fields.as_object().unwrap() {
        step[k] = v.clone();
    }
    step
}

on_both_databases! {
    /// Steps start `run_delay` after the run's start and nodes `node_delay` apart; every transition is recorded.
    async fn steps_start_in_order_after_their_delays(app) {
        ensure_images();
        let (_, run_id) = app.start(plan("schedule", vec![
            sh_step("first", "sleep 1"),
            with(sh_step("second", "sleep 1"), json!({"run_delay": 2})),
            with(sh_step("third", "sleep 1"), json!({"run_delay": 4, "instance_count": 2, "node_delay": 1})),
        ]), json!({})).await;
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "completed", "{run:#}");
        assert!(run["failure_reason"].is_null());
        let started = &run["started_at"];
        for (step, delay) in [("first", 0.0), ("second", 2.0), ("third", 4.0)] {
            let r = record(&run, step);
            assert_eq!(r["state"], "completed", "{r}");
            let offset = seconds_between(started, &r["started_at"]);
            assert!((offset - delay).abs() < 1.0, "{step} started {offset:.2}s after the run, expected {delay}s");
        }
        assert!(seconds_between(&run["created_at"], started) >= 0.0);
        assert!(seconds_between(started, &run["completed_at"]) >= 5.0);

        let (status, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=third")).await;
        assert_eq!(status, StatusCode::OK);
        let starts: Vec<&Value> = logs["containers"].as_array().unwrap().iter().filter(|c| c["role"] == "step").map(|c| &c["created_at"]).collect();
        assert_eq!(starts.len(), 2);
        let spread = seconds_between(starts[0], starts[1]).abs();
        assert!((spread - 1.0).abs() < 0.6, "nodes of one step started {spread:.2}s apart, expected 1s");
        app.assert_no_leftovers();
    }

    /// `run_max_time` stops a step that would run for minutes; the run completes.
    async fn run_max_time_stops_a_step(app) {
        ensure_images();
        let (_, run_id) = app.start(plan("max time", vec![with(sh_step("long", "sleep 300"), json!({"run_max_time": 2}))]), json!({})).await;
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "completed", "{run:#}");
        let r = record(&run, "long");
        assert_eq!(r["state"], "completed");
        let ran = seconds_between(&r["started_at"], &r["completed_at"]);
        assert!((2.0..10.0).contains(&ran), "ran {ran:.2}s");
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=long")).await;
        let step = logs["containers"].as_array().unwrap().iter().find(|c| c["role"] == "step").unwrap().clone();
        assert_ne!(step["exit_code"], 0, "it was stopped, not finished: {step}");
        app.assert_no_leftovers();
    }

    /// A generator that exits ends its step at once; a required step exiting non-zero fails the run with why.
    async fn exits_end_steps_and_required_failures_fail_the_run(app) {
        ensure_images();
        let (_, run_id) = app.start(plan("exits", vec![
            with(sh_step("quick", "echo done"), json!({"run_max_time": 600})),
            with(sh_step("optional", "exit 4"), json!({"required": false})),
        ]), json!({})).await;
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "completed", "an optional step's failure does not fail the run: {run:#}");
        assert_eq!(record(&run, "quick")["state"], "completed");
        let optional = record(&run, "optional");
        assert_eq!(optional["state"], "failed");
        assert_eq!(optional["failed"], true);
        assert_eq!(optional["failure_reason"], "the container on node s1n0 exited with code 4");
        assert!(seconds_between(&record(&run, "quick")["started_at"], &record(&run, "quick")["completed_at"]) < 10.0);

        let (_, run_id) = app.start(plan("required exit", vec![
            sh_step("broken", "exit 3"),
            with(sh_step("bystander", "sleep 300"), json!({"run_max_time": 0})),
        ]), json!({})).await;
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "failed", "{run:#}");
        assert_eq!(run["failure_reason"], "step \"broken\" failed: the container on node s0n0 exited with code 3");
        assert_eq!(record(&run, "bystander")["state"], "completed", "stopped because the run failed");
        app.assert_no_leftovers();
    }

    /// A missing image fails its step with the engine's message; nothing is swallowed.
    async fn a_bad_image_fails_the_step_with_a_readable_reason(app) {
        ensure_images();
        let (_, run_id) = app.start(plan("bad image", vec![
            json!({"name": "ghost", "container_name": "loads/no-such-image:1"}),
            sh_step("other", "sleep 1"),
        ]), json!({})).await;
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "failed", "{run:#}");
        let reason = run["failure_reason"].as_str().unwrap();
        assert!(reason.starts_with("step \"ghost\" failed: node s0n0: image loads/no-such-image:1 is not on the engine and could not be pulled"), "{reason}");
        assert_eq!(record(&run, "ghost")["state"], "failed");
        assert_eq!(record(&run, "other")["state"], "skipped", "never started: the run failed while initializing");
        assert!(run["started_at"].is_null());
        app.assert_no_leftovers();
    }

    /// Abort while running stops and removes everything; a second abort changes nothing.
    async fn abort_during_running_removes_everything(app) {
        ensure_images();
        let (_, run_id) = app.start(plan("abort", vec![with(sh_step("forever", "sleep 300"), json!({"run_max_time": 0, "instance_count": 2}))]), json!({})).await;
        app.wait_for_run(&run_id, 60, |r| record(r, "forever")["state"] == "running").await;
        let (status, aborted) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{aborted}");
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "aborted");
        assert_eq!(run["aborted"], true);
        let (status, again) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(again["state"], "aborted", "idempotent");
        app.assert_no_leftovers();
    }

    /// Env precedence: plan defaults < run env < step env < injected; `$VAR`s resolved; nothing leaks between steps.
    async fn containers_get_the_environment_in_order_of_precedence(app) {
        ensure_images();
        let plan_doc = json!({
            "name": "env",
            "environment_data": {"A": "plan", "B": "plan", "C": "plan"},
            "steps": [
                with(sh_step("first", "env | sort"), json!({"environment_data": {"C": "step", "ONLY_FIRST": "1", "D": "$A-$B-$C-${RUN_ID}", "PRICE": "$$5"}})),
                with(sh_step("second", "env | sort"), json!({"environment_data": {"E": "$STATSD_HOST:$STATSD_PORT"}})),
            ]
        });
        let (plan, run_id) = app.start(plan_doc, json!({"env": {"B": "run", "C": "run"}, "owner": "qa"})).await;
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "completed", "{run:#}");
        assert_eq!(run["owner"], "qa");
        assert_eq!(run["environment_data"], json!({"B": "run", "C": "run"}));
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
        let env_of = |step: &str| -> std::collections::BTreeMap<String, String> {
            let c = logs["containers"].as_array().unwrap().iter().find(|c| c["step_name"] == step && c["role"] == "step").unwrap();
            c["logs"].as_str().unwrap().lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let first = env_of("first");
        assert_eq!(first["A"], "plan");
        assert_eq!(first["B"], "run");
        assert_eq!(first["C"], "step");
        assert_eq!(first["D"], format!("plan-run-step-{run_id}"));
        assert_eq!(first["PRICE"], "$5");
        assert_eq!(first["RUN_ID"], run_id);
        assert_eq!(first["BROKER_ID"], app.broker_id);
        assert_eq!(first["BROKER_VERSION"], loads::VERSION);
        assert_eq!(first["CONTAINER_ID"], plan["steps"][0]["id"].as_str().unwrap());
        assert_eq!(first["STATSD_PORT"], "8125");
        assert!(first["STATSD_HOST"].parse::<std::net::Ipv4Addr>().is_ok(), "{}", first["STATSD_HOST"]);
        assert!(first["HOST_IP"].parse::<std::net::Ipv4Addr>().is_ok());
        let second = env_of("second");
        assert!(!second.contains_key("ONLY_FIRST") && !second.contains_key("D"), "step env does not leak: {second:?}");
        assert_eq!(second["C"], "run");
        assert_eq!(second["E"], format!("{}:8125", second["STATSD_HOST"]));
        assert_ne!(second["STATSD_HOST"], first["STATSD_HOST"], "each node has its own relay");
        app.assert_no_leftovers();
    }

    /// A later step reaches an earlier service step by its dns_name; the service stops when the others are done.
    async fn a_service_step_is_reached_by_its_dns_name(app) {
        ensure_images();
        let (_, run_id) = app.start(plan("service", vec![
            with(sh_step("svc", "mkdir -p /w && echo hello-from-svc > /w/index.html && exec httpd -f -p 8080 -h /w"),
                 json!({"service": true, "dns_name": "svc.test", "run_max_time": 0})),
            with(sh_step("client", "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://svc.test:8080/ && exit 0; sleep 1; done; exit 1"),
                 json!({"run_delay": 1})),
        ]), json!({})).await;
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "completed", "{run:#}");
        assert_eq!(record(&run, "svc")["state"], "completed");
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=client&tail=5")).await;
        let client = logs["containers"].as_array().unwrap().iter().find(|c| c["role"] == "step").unwrap().clone();
        assert_eq!(client["exit_code"], 0);
        assert!(client["logs"].as_str().unwrap().contains("hello-from-svc"), "{client}");
        app.assert_no_leftovers();
    }
}

/// `port_mapping` publishes on 127.0.0.1; `volume_mapping` mounts from under the volume root
/// (read-write when asked); a host path outside the root is refused with the plan.
#[actix_web::test]
async fn ports_and_volumes_are_mapped_within_their_bounds() {
    ensure_images();
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_str().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite, &[("LOADS__DOCKER__VOLUME_ROOT", &root_path)]).await;
    let (_, run_id) = app
        .start(
            plan(
                "mappings",
                vec![
                    with(
                        sh_step("web", "mkdir -p /w && echo mapped > /w/index.html && exec httpd -f -p 8080 -h /w"),
                        json!({"service": true, "run_max_time": 0, "port_mapping": format!("8080:{port}")}),
                    ),
                    with(
                        sh_step("writer", "echo written-by-$$HOSTNAME > /data/out.txt && sleep 3"),
                        json!({"volume_mapping": format!("/data:{root_path}/$RUN_ID:rw")}),
                    ),
                ],
            ),
            json!({}),
        )
        .await;
    app.wait_for_run(&run_id, 60, |r| record(r, "writer")["state"] == "running").await;
    let body = crate::helpers::eventually(30, async || match awc::Client::new().get(format!("http://127.0.0.1:{port}/")).send().await {
        Ok(mut response) => Ok(response.body().await.unwrap()),
        Err(e) => Err(format!("the mapped port does not answer: {e}")),
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&body).trim(), "mapped");
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let written = std::fs::read_to_string(root.path().join(&run_id).join("out.txt")).unwrap();
    assert!(written.starts_with("written-by-"), "{written}");

    let escape = plan("escape", vec![with(sh_step("escaper", "true"), json!({"volume_mapping": "/data:/etc"}))]);
    let (status, body) = app.post("/api/v1/projects", &json!({"name": "escape"})).await;
    assert_eq!(status, awc::http::StatusCode::CREATED, "{body}");
    let (status, body) = app.post(&format!("/api/v1/projects/{}/plans", body["id"].as_str().unwrap()), &escape).await;
    assert_eq!(status, awc::http::StatusCode::CREATED, "a plan for nodes of their own is a plan: {body}");
    let (status, body) = app.post(&format!("/api/v1/plans/{}/runs", body["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(status, awc::http::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["path"], "steps[0].volume_mapping", "{body}");
    assert!(body["details"][0]["message"].as_str().unwrap().contains("host path \"/etc\" is outside the volume root"), "{body}");
    app.assert_no_leftovers();
}

/// Each node's relay is its STATSD_HOST and counts the lines it gets, malformed ones apart.
#[actix_web::test]
async fn the_relay_receives_the_nodes_statsd() {
    ensure_images();
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite, &[]).await;
    let (_, run_id) = app
        .start(
            plan("statsd", vec![sh_step("sender", "printf \"hits:1|c\\nlatency:12|ms\\nnot statsd\\n\" | nc $$STATSD_HOST $$STATSD_PORT")]),
            json!({}),
        )
        .await;
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
    let relay = logs["containers"].as_array().unwrap().iter().find(|c| c["role"] == "relay").unwrap().clone();
    let last = relay["logs"].as_str().unwrap().lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("lines=2 malformed=1 kernel_drops=0 windows_sent="), "{relay}");
    assert!(last.ends_with("windows_dropped=0 windows_undelivered=0"), "{relay}");
    app.assert_no_leftovers();
}

/// A step's image is loaded from its `container_url` (a gzipped `docker save`
/// tarball, by path under `docker.image_root` and over HTTP) when the engine does not have it.
#[actix_web::test]
async fn images_are_loaded_from_container_url_tarballs() {
    ensure_images();
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("loads/tarball-test:{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let tarball = dir.path().join("image.tar.gz");
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker").args(args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    docker(&["tag", loads::images::BUSYBOX, &tag]);
    let save =
        std::process::Command::new("sh").arg("-c").arg(format!("docker save {tag} | gzip > {}", tarball.display())).status().unwrap();
    assert!(save.success());
    let bytes = std::fs::read(&tarball).unwrap();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = std::io::Read::read(&mut stream, &mut request);
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", bytes.len());
        let _ = std::io::Write::write_all(&mut stream, head.as_bytes());
        let _ = std::io::Write::write_all(&mut stream, &bytes);
    });

    // The test's own server is on loopback, which image URLs may name only when allowed.
    let image_root = dir.path().display().to_string();
    let settings = [("LOADS__DOCKER__IMAGE_ROOT", image_root.as_str()), ("LOADS__DOCKER__ALLOW_LOOPBACK_IMAGE_URLS", "true")];
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite, &settings).await;
    for url in [format!("http://127.0.0.1:{port}/image.tar.gz"), tarball.display().to_string()] {
        docker(&["rmi", &tag]);
        let step =
            json!({"name": "loaded", "container_name": tag, "container_url": url, "additional_command_args": "-c 'echo from-tarball'"});
        let (_, run_id) = app.start(plan("tarball", vec![step]), json!({})).await;
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!(run["state"], "completed", "{url}: {run:#}");
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=loaded")).await;
        let step = logs["containers"].as_array().unwrap().iter().find(|c| c["role"] == "step").unwrap().clone();
        assert_eq!(step["logs"].as_str().unwrap().trim(), "from-tarball");
    }
    server.join().unwrap();
    docker(&["rmi", &tag]);
    app.assert_no_leftovers();
}
