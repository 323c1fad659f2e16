//! Judging runs end to end: thresholds over every node's samples, a breach that
//! stops every node, verdicts and `loads run`'s exit codes, baselines and
//! comparisons between runs.

use std::path::Path;
use std::process::{Command, Output};

use awc::http::StatusCode;
use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};

use crate::helpers::{ensure_demo_images, ensure_images, on_both_databases, sh_step, LabelGuard};

/// Tests whose verdict depends on the machine's CPU (every verdict but `error` and
/// `aborted` does: a saturated generator makes a run invalid) take turns, so the
/// burner of one never makes another's generator look saturated.
static CPU_JUDGED: Mutex<()> = Mutex::const_new(());

fn cpu_turn() -> MutexGuard<'static, ()> {
    CPU_JUDGED.blocking_lock()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `loads run` on `plan` (TOML) in `dir` with a database there and a broker id of its own.
fn loads_run(dir: &Path, plan: &str, extra: &[(&str, &str)]) -> (Output, String) {
    loads_run_with(dir, plan, extra, &[])
}

/// `loads ARGS` with `dir`'s database.
fn loads_in(dir: &Path, args: &[&str]) -> Output {
    let url = format!("sqlite://{}", dir.join("run.db").display());
    Command::new(env!("CARGO_BIN_EXE_loads")).args(args).current_dir(dir).env("LOADS__DATABASE__URL", url).output().expect("run loads")
}

fn loads_run_with(dir: &Path, plan: &str, extra: &[(&str, &str)], args: &[&str]) -> (Output, String) {
    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let _cleanup = LabelGuard(broker.clone());
    let file = dir.join("plan.toml");
    std::fs::write(&file, plan).unwrap();
    let url = format!("sqlite://{}", dir.join("run.db").display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loads"));
    cmd.args(["run", file.to_str().unwrap()]).args(args).current_dir(dir).env_remove("RUST_LOG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LOADS__")) {
        cmd.env_remove(k);
    }
    cmd.envs([("LOADS__DATABASE__URL", url.as_str()), ("LOADS__BROKER__ID", broker.as_str()), ("LOADS__DOCKER__STOP_GRACE_SECONDS", "5")]);
    cmd.envs(extra.iter().copied());
    let out = cmd.output().expect("run loads");
    let (containers, networks) = crate::helpers::leftovers(&broker);
    assert!(containers.is_empty() && networks.is_empty(), "left behind: {containers:?} {networks:?}");
    (out, url)
}

/// The run id `loads run` printed.
fn run_id_of(stdout: &str) -> uuid::Uuid {
    let line = stdout.lines().find(|l| l.starts_with("run ") && l.contains(" of plan ")).unwrap_or_else(|| panic!("no run line: {stdout}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The run and its containers as stored in `url`.
fn stored(url: &str, run_id: uuid::Uuid) -> (loads_actors::domain::views::RunView, Vec<loads_actors::domain::views::ContainerView>) {
    let url = url.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let db = loads_actors::store::connect(&url).await.unwrap();
            let run = loads_actors::store::runs::get(&db, run_id).await.unwrap();
            let containers = loads_actors::store::runs::containers(&db, run_id, None, None).await.unwrap();
            (run, containers)
        })
    })
    .join()
    .unwrap()
}

/// The demo's service and its C generator on two nodes, with thresholds the demo holds:
/// `passed`, exit 0, and the thresholds table in the summary. Made the baseline, the run is
/// what the next `loads run --baseline` compares with.
#[test]
fn a_plan_whose_thresholds_hold_passes_and_exits_0() {
    ensure_images();
    ensure_demo_images();
    let _turn = cpu_turn();
    let dir = tempfile::tempdir().unwrap();
    let plan = r#"
name = "held"
[thresholds]
"demo.c.latency" = ["p(95)<2s", "count>0"]
"demo.c.requests{status:error}" = ["count<1"]
"demo.c.requests{status:error}/demo.c.requests" = ["value<0.5"]
[[steps]]
name = "web"
service = true
container_name = "loads/demo-httpd:1"
dns_name = "web"
run_max_time = 0
[[steps]]
name = "c-generator"
container_name = "loads/demo-c-gen:1"
instance_count = 2
run_delay = 1
additional_command_args = "web 8080 / 10 3"
[steps.thresholds]
"demo.c.latency" = [{ threshold = "max<5000", window = "10s" }]
"#;
    let (out, url) = loads_run(dir.path(), plan, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("verdict: passed (all 5 thresholds held)"), "{stdout}");
    for line in ["demo.c.latency p(95)<2s", "demo.c.requests{status:error} count<1", "demo.c.latency max<5000 [step c-generator] over 10s"]
    {
        let row = stdout.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no row {line:?}: {stdout}"));
        assert!(row.ends_with("passed"), "{row}");
    }
    assert!(stderr.contains("verdict passed"), "the verdict is on the feed: {stderr}");
    let first = run_id_of(&stdout);
    let (run, _) = stored(&url, first);
    let count = run.thresholds.iter().find(|t| t.threshold == "count>0").unwrap();
    assert_eq!(count.value, Some(60.0), "two nodes, 10 requests a second for 3 s, judged together: {count:?}");

    let out = loads_in(dir.path(), &["baseline", &first.to_string()]);
    assert!(
        out.status.success() && text(&out.stdout).contains(&format!("run {first} is now the baseline of plan \"held\"")),
        "{}",
        text(&out.stderr)
    );
    let (out, _) = loads_run_with(dir.path(), plan, &[], &["--baseline"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains(&format!("compared with {first} (baseline)")), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("demo.c.latency") && l.contains(" count "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(row.split_whitespace().collect::<Vec<_>>()[2..5], ["60", "60", "0"], "same requests as the baseline: {row}");
    assert!(stdout.contains("no regression"), "{stdout}");
}

/// A generator on three nodes breaches an `abort_on_fail` threshold mid-run: every
/// generator container stops within two flush windows of the breaching window's end,
/// the service after them; the run fails naming the threshold; `loads run` exits 99; the
/// moment is marked on the Grafana dashboard.
#[test]
fn a_breach_stops_every_node_within_two_windows_and_exits_99() {
    ensure_images();
    let _turn = cpu_turn();
    let dir = tempfile::tempdir().unwrap();
    let (grafana_port, recorded) = crate::dashboards::recording_grafana(3);
    let grafana = format!("http://127.0.0.1:{grafana_port}");
    let plan = r#"
name = "breach"
[thresholds]
"lat" = [{ threshold = "max<500", abort_on_fail = true }]
[[steps]]
name = "svc"
service = true
container_name = "loads/busybox:1"
run_max_time = 0
additional_command_args = "-c 'trap \"exit 0\" TERM; while :; do usleep 100000; done'"
[[steps]]
name = "gen"
container_name = "loads/busybox:1"
instance_count = 3
run_delay = 1
run_max_time = 60
additional_command_args = "-c 'trap \"exit 0\" TERM; i=0; while [ $$i -lt 400 ]; do v=10; [ $$i -ge 30 ] && v=900; printf \"lat:$$v|ms\\n\" | nc $$STATSD_HOST $$STATSD_PORT; usleep 100000; i=$$((i+1)); done'"
"#;
    let (out, url) = loads_run(dir.path(), plan, &[("LOADS__GRAFANA__URL", &grafana), ("LOADS__GRAFANA__TOKEN", "t")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(99), "{stdout}\n{stderr}");
    assert!(stdout.contains("verdict: failed (threshold lat max<500 failed: 9"), "{stdout}");
    let (run, containers) = stored(&url, run_id_of(&stdout));
    assert_eq!(run.state, loads_actors::domain::views::RunState::Failed);
    let reason = run.failure_reason.clone().unwrap();
    assert!(reason.starts_with("threshold lat max<500 failed: 9") && reason.ends_with("UTC"), "{reason}");
    let breach = run.thresholds[0].first_breach_at.expect("the breach is recorded");
    let exited = |step: &str| -> Vec<chrono::DateTime<chrono::Utc>> {
        containers.iter().filter(|c| c.step_name == step && c.role == "step").map(|c| c.exited_at.expect("an exit time")).collect()
    };
    let generators = exited("gen");
    assert_eq!(generators.len(), 3);
    for at in &generators {
        let after = (*at - breach).num_milliseconds();
        assert!((0..=2000).contains(&after), "a generator stopped {after} ms after the breach at {breach}");
    }
    let service = exited("svc");
    assert!(service[0] >= *generators.iter().max().unwrap(), "the service stops last: {service:?} vs {generators:?}");
    let last = (service[0] - breach).num_milliseconds();
    assert!(last <= 2000, "the service stopped {last} ms after the breach, more than two windows");
    // Grafana saw the live dashboard, then the breach, then the final dashboard.
    let mut requests = Vec::new();
    while requests.len() < 3 {
        requests.push(recorded.recv_timeout(std::time::Duration::from_secs(10)).expect("three requests reached Grafana"));
    }
    let annotation = requests.iter().find(|r| r.request_line.starts_with("POST /api/annotations ")).expect("an annotation");
    assert_eq!(annotation.body["dashboardUID"], json!(format!("loads-{}", run.id.simple())));
    assert_eq!(annotation.body["time"].as_i64(), Some(breach.timestamp_millis()));
    assert!(annotation.body["text"].as_str().unwrap().starts_with("threshold lat max<500 failed"), "{}", annotation.body);
    assert!(annotation.body["tags"].as_array().unwrap().contains(&json!("breach")));
}

/// A generator that runs its node's CPU flat out gives numbers that cannot be trusted:
/// the verdict is `invalid`, naming the node, and `loads run` exits 98.
#[test]
fn a_saturated_generator_makes_the_run_invalid_and_exits_98() {
    ensure_images();
    let _turn = cpu_turn();
    let dir = tempfile::tempdir().unwrap();
    // Two busy loops (both cores) for 6 s, while the generator reports to its relay every 200 ms.
    let plan = r#"
name = "burn"
[thresholds]
"req" = ["count>0"]
[[steps]]
name = "burn"
container_name = "loads/busybox:1"
run_max_time = 60
additional_command_args = "-c 'sh -c \"while :; do :; done\" & a=$$!; sh -c \"while :; do :; done\" & b=$$!; i=0; while [ $$i -lt 30 ]; do printf \"req:1|c\\n\" | nc $$STATSD_HOST $$STATSD_PORT; usleep 200000; i=$$((i+1)); done; kill $$a $$b'"
"#;
    let (out, _) = loads_run(dir.path(), plan, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(98), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("verdict: invalid (generator node s0n0 of step \"burn\" ran its CPU above 90% for "), "{stdout}");
}

on_both_databases! {
    /// Two nodes each send 60 timings: judged alone (by node) each holds `count<100`; judged
    /// over the step, as every threshold without a node filter is, the union of 120 fails.
    /// The feed carries each threshold's changes and the verdict before the run's end.
    async fn a_threshold_over_two_nodes_is_judged_on_their_union(app) {
        ensure_images();
        let _turn = CPU_JUDGED.lock().await;
        let script = "i=0; while [ $i -lt 60 ]; do echo \"lat:$((i % 7 + 1))|ms\"; i=$((i+1)); done | nc $STATSD_HOST $STATSD_PORT; sleep 2";
        let mut step = sh_step("gen", &script.replace('$', "$$"));
        step["instance_count"] = json!(2);
        let thresholds = json!({
            "lat{node:s0n0}": ["count<100"],
            "lat{node:s0n1}": ["count<100"],
            "lat": ["count<100", "p(95)<1000"],
        });
        let (_, run_id) = app.start(json!({"name": "union", "thresholds": thresholds, "steps": [step]}), json!({})).await;
        let run = app.wait_finished(&run_id, 90).await;
        assert_eq!(run["state"], "completed", "{run:#}");
        let judged: Vec<(String, String, Value)> = run["thresholds"].as_array().unwrap().iter()
            .map(|t| (format!("{} {}", t["metric"].as_str().unwrap(), t["threshold"].as_str().unwrap()), t["state"].as_str().unwrap().to_string(), t["value"].clone()))
            .collect();
        assert_eq!(judged, [
            ("lat count<100".to_string(), "failed".to_string(), json!(120.0)),
            ("lat p(95)<1000".to_string(), "passed".to_string(), run["thresholds"][1]["value"].clone()),
            ("lat{node:s0n0} count<100".to_string(), "passed".to_string(), json!(60.0)),
            ("lat{node:s0n1} count<100".to_string(), "passed".to_string(), json!(60.0)),
        ]);
        assert_eq!(run["verdict"], "failed");
        assert_eq!(run["verdict_reason"], "thresholds failed: lat count<100: value 120");
        let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
        let lat = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "lat").unwrap().clone();
        assert_eq!(lat["count"], 120.0, "the threshold's count is the summary's");
        assert_eq!(lat["p95"], run["thresholds"][1]["value"], "and so is its p(95)");

        let url = format!("{}/api/v1/runs/{run_id}/events", app.base.replace("http://", "ws://"));
        let (_, mut socket) = awc::Client::new().ws(url).connect().await.expect("websocket");
        let mut kinds = Vec::new();
        use futures_util::StreamExt;
        while let Some(Ok(frame)) = socket.next().await {
            let awc::ws::Frame::Text(bytes) = frame else { continue };
            let event: Value = serde_json::from_slice(&bytes).unwrap();
            if event["type"] == "end" {
                break;
            }
            match event["type"].as_str().unwrap() {
                "threshold" => kinds.push(format!("threshold {} {}", event["threshold"]["metric"].as_str().unwrap(), event["threshold"]["state"].as_str().unwrap())),
                "verdict" => kinds.push(format!("verdict {}", event["verdict"].as_str().unwrap())),
                "run" if event["state"] == "failed" || event["state"] == "completed" => kinds.push(format!("run {}", event["state"].as_str().unwrap())),
                _ => {}
            }
        }
        assert!(kinds.contains(&"threshold lat ok".to_string()) || kinds.contains(&"threshold lat failing".to_string()), "{kinds:?}");
        let tail: Vec<&String> = kinds.iter().rev().take(2).collect();
        assert_eq!(tail, [&"run completed".to_string(), &"verdict failed".to_string()], "{kinds:?}");
        assert!(kinds.contains(&"threshold lat failed".to_string()), "{kinds:?}");
        app.assert_no_leftovers();
    }

    /// Bad thresholds and rules are refused with the path of each, and plans without any are as before.
    async fn bad_thresholds_are_422_with_their_paths(app) {
        let (status, project) = app.post("/api/v1/projects", &json!({"name": "t"})).await;
        assert_eq!(status, StatusCode::CREATED);
        let plan = json!({"name": "p", "steps": [{"name": "s", "container_name": "x"}],
            "thresholds": {"demo.c.latency": ["p(95)<200", {"threshold": "p95<500", "abort_on_fail": true}], "x{step:nope}": ["avg<1"]},
            "compare": {"demo.c.latency": ["p(95) 10%"]}});
        let (status, body) = app.post(&format!("/api/v1/projects/{}/plans", project["id"].as_str().unwrap()), &plan).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let fields: Vec<String> = body["details"].as_array().unwrap().iter().map(|d| format!("{}: {}", d["path"].as_str().unwrap(), d["message"].as_str().unwrap())).collect();
        assert_eq!(fields.len(), 3, "{fields:?}");
        assert!(fields.contains(&"thresholds[\"demo.c.latency\"][1].threshold: unknown aggregation \"p95\"; did you mean \"p(95)\"?".to_string()), "{fields:?}");
        assert!(fields.iter().any(|f| f.starts_with("thresholds[\"x{step:nope}\"]: no step named \"nope\"")), "{fields:?}");
        assert!(fields.iter().any(|f| f.starts_with("compare[\"demo.c.latency\"][0]: ")), "{fields:?}");
        let yaml = "name: y\nplans:\n  - name: p\n    thresholds:\n      lat{status:ok}:\n        - p(95)<200\n        - {threshold: avg<1s, window: 30s}\n    steps:\n      - name: s\n        container_name: x\n        thresholds: {errors: [count<1]}\n";
        let (status, report) = app.send("POST", "/api/v1/projects/import", Some("application/yaml"), yaml.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::CREATED, "{report}");
        let (_, imported) = app.get(&format!("/api/v1/plans/{}", report["project"]["plans"][0]["id"].as_str().unwrap())).await;
        assert_eq!(imported["thresholds"], json!({"lat{status:ok}": [{"threshold": "p(95)<200", "abort_on_fail": false}, {"threshold": "avg<1s", "abort_on_fail": false, "window": "30s"}]}));
        assert_eq!(imported["steps"][0]["thresholds"], json!({"errors": [{"threshold": "count<1", "abort_on_fail": false}]}));
        let plain = app.create_plan(crate::helpers::plan_doc("plain")).await;
        assert_eq!((plain["thresholds"].clone(), plain["compare"].clone(), plain["baseline_run_id"].clone()), (json!({}), json!({}), Value::Null));
    }

    /// Two demo runs, the second with its shell generator slowed on purpose: compared with
    /// the first (the baseline) it regressed, and with `fail_on_regression` its verdict is
    /// failed. The baseline is set, read and replaced; a fork starts without one; `loads
    /// compare` prints the table and exits 99.
    async fn a_slowed_run_regresses_against_the_baseline(app) {
        ensure_images();
        ensure_demo_images();
        let _turn = CPU_JUDGED.lock().await;
        let plan = app.create_plan(json!({
            "name": "cmp",
            "environment_data": {"DELAY_MS": "0"},
            "compare": {"demo.shell.latency": ["p(95) +50%"], "demo.shell.requests{status:ok}": ["count -50%"]},
            "fail_on_regression": true,
            "steps": [
                {"name": "web", "service": true, "container_name": loads::images::DEMO_HTTPD, "dns_name": "web", "run_max_time": 0},
                {"name": "gen", "container_name": loads::images::DEMO_SHELL_GEN, "run_delay": 1, "additional_command_args": "http://web:8080/ 5 3"}
            ]
        })).await;
        let plan_id = plan["id"].as_str().unwrap().to_string();
        let run_once = |env: Value| {
            let (app, plan_id) = (&app, plan_id.clone());
            async move {
                let (status, run) = app.post(&format!("/api/v1/plans/{plan_id}/runs"), &json!({"env": env})).await;
                assert_eq!(status, StatusCode::CREATED, "{run}");
                let run = app.wait_finished(run["id"].as_str().unwrap(), 120).await;
                assert_eq!(run["state"], "completed", "{run:#}");
                run
            }
        };
        let (status, body) = app.get(&format!("/api/v1/plans/{plan_id}/baseline")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let fast = run_once(json!({})).await;
        assert_eq!(fast["verdict"], "passed", "no baseline yet: nothing to regress from");
        let fast_id = fast["id"].as_str().unwrap().to_string();
        let (status, set) = app.post(&format!("/api/v1/plans/{plan_id}/baseline"), &json!({"run_id": fast_id})).await;
        assert_eq!(status, StatusCode::OK, "{set}");
        let (_, read) = app.get(&format!("/api/v1/plans/{plan_id}/baseline")).await;
        assert_eq!(read["run_id"], json!(fast_id));
        assert_eq!(app.get(&format!("/api/v1/plans/{plan_id}")).await.1["baseline_run_id"], json!(fast_id));

        let slow = run_once(json!({"DELAY_MS": "300"})).await;
        let slow_id = slow["id"].as_str().unwrap().to_string();
        assert_eq!(slow["verdict"], "failed", "{slow:#}");
        assert!(slow["verdict_reason"].as_str().unwrap().starts_with("regressed against the baseline: gen demo.shell.latency p(95): "), "{}", slow["verdict_reason"]);

        let (status, cmp) = app.get(&format!("/api/v1/runs/{slow_id}/compare?to=baseline")).await;
        assert_eq!(status, StatusCode::OK, "{cmp}");
        assert_eq!((cmp["regressed"].clone(), cmp["against_baseline"].clone(), cmp["other_run_id"].clone()), (json!(true), json!(true), json!(fast_id)));
        let gen = cmp["steps"].as_array().unwrap().iter().find(|s| s["step"] == "gen").unwrap();
        let latency = gen["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "demo.shell.latency").unwrap();
        let p95 = &latency["delta"]["p95"];
        assert!(p95["absolute"].as_f64().unwrap() >= 250.0 && p95["relative"].as_f64().unwrap() > 0.5, "{latency}");
        assert!(latency["run"]["count"].as_f64().unwrap() > 0.0 && latency["other"]["count"].as_f64().unwrap() > 0.0, "{latency}");
        assert_eq!(gen["error_ratio"], 0.0);
        let broke: Vec<&str> = cmp["rules"].as_array().unwrap().iter().filter(|r| r["regressed"] == true).map(|r| r["rule"].as_str().unwrap()).collect();
        assert_eq!(broke, ["p(95) +50%"], "{cmp:#}");

        // Replaced: the slow run is the baseline now, so the fast one did not regress from it.
        let (status, _) = app.post(&format!("/api/v1/plans/{plan_id}/baseline"), &json!({"run_id": slow_id})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(app.get(&format!("/api/v1/plans/{plan_id}/baseline")).await.1["run_id"], json!(slow_id));
        let (_, back) = app.get(&format!("/api/v1/runs/{fast_id}/compare?to=baseline")).await;
        assert_eq!(back["regressed"], false, "{back:#}");
        let (_, direct) = app.get(&format!("/api/v1/runs/{slow_id}/compare?to={fast_id}")).await;
        assert_eq!((direct["regressed"].clone(), direct["against_baseline"].clone()), (json!(true), json!(false)));

        let (status, fork) = app.post(&format!("/api/v1/plans/{plan_id}/fork"), &json!({})).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(fork["baseline_run_id"], Value::Null, "a fork starts without a baseline");
        let (status, body) = app.post(&format!("/api/v1/plans/{}/baseline", fork["id"].as_str().unwrap()), &json!({"run_id": fast_id})).await;
        assert_eq!((status, body["details"][0]["path"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("run_id")), "{body}");
        let pending = app.record_run(&plan_id, None).await;
        let (status, body) = app.post(&format!("/api/v1/plans/{plan_id}/baseline"), &json!({"run_id": pending})).await;
        assert_eq!((status, body["error"].clone()), (StatusCode::CONFLICT, json!("run_live")), "{body}");
        let (status, body) = app.get(&format!("/api/v1/runs/{slow_id}/compare?to=soon")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        let out = Command::new(env!("CARGO_BIN_EXE_loads"))
            .args(["compare", &slow_id, &fast_id])
            .env("LOADS__DATABASE__URL", &app.database_url)
            .output()
            .unwrap();
        let printed = text(&out.stdout);
        assert_eq!(out.status.code(), Some(99), "{printed}\n{}", text(&out.stderr));
        assert!(printed.contains("REGRESSED gen demo.shell.latency p(95): "), "{printed}");
        let row = printed.lines().find(|l| l.trim_start().starts_with("demo.shell.latency") && l.contains(" p95 ")).unwrap_or_else(|| panic!("{printed}"));
        assert!(row.trim_end().ends_with('%'), "{row}");
        app.assert_no_leftovers();
    }
}
