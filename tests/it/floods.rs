//! Careless and hostile generators against a real `loads serve`: floods that
//! once took the broker's or a relay's memory, answered by caps that count what
//! they did not keep and a verdict that says so.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{ensure_images, eventually_every, leftovers, sh_step};
use crate::recovery::Restartable;

/// Waits (asking every half second, at most `seconds`) until the run has ended; answers it.
async fn until_ended(api: &crate::recovery::Api, run_id: &str, seconds: u64) -> Value {
    eventually_every(seconds, Duration::from_millis(500), async || {
        let run = api.get(&format!("/api/v1/runs/{run_id}")).await;
        match ["completed", "failed", "aborted"].contains(&run["state"].as_str().unwrap_or("")) {
            true => Ok(run),
            false => Err(format!("the run did not end: {run:#}")),
        }
    })
    .await
}

/// A memory figure of a process from its status (`VmHWM:` the most it held, `VmRSS:` now), in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the broker's status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"));
    kib / 1024.0
}

/// The most memory a container has used (its cgroup's high-water mark), in MiB.
fn container_peak_mib(id: &str) -> Option<f64> {
    let full = String::from_utf8(std::process::Command::new("docker").args(["inspect", "-f", "{{.Id}}", id]).output().ok()?.stdout).ok()?;
    let full = full.trim();
    let paths = [
        format!("/sys/fs/cgroup/memory/docker/{full}/memory.max_usage_in_bytes"),
        format!("/sys/fs/cgroup/system.slice/docker-{full}.scope/memory.peak"),
    ];
    paths.iter().find_map(|p| std::fs::read_to_string(p).ok()).and_then(|v| v.trim().parse::<f64>().ok()).map(|b| b / 1048576.0)
}

/// The limit the engine holds a container's memory to, in MiB.
fn container_limit_mib(id: &str) -> f64 {
    let out = std::process::Command::new("docker").args(["inspect", "-f", "{{.HostConfig.Memory}}", id]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().unwrap() / 1048576.0
}

/// A generator that puts a request id in its timer's name (a new series per request),
/// 6000 of them in 20 bursts a second apart: the step keeps `metrics.max_series_per_step`
/// series, counts the rest under the name's pattern, and its verdict is `invalid`
/// saying so; the broker and the relay stay small.
#[actix_web::test]
async fn a_request_id_in_a_timer_name_is_capped_counted_and_makes_the_run_invalid() {
    ensure_images();
    let b = Restartable::new();
    let mut serve = b.serve(&[]);
    let api = &b.api;
    // Each burst, 300 timings, each under a name of its own, over one TCP connection.
    let script = "i=0; while [ $$i -lt 20 ]; do j=0; while [ $$j -lt 300 ]; do echo \"req.$$((i*300+j)).lat:12|ms\"; j=$$((j+1)); done \
                  | nc -w 1 $$STATSD_HOST $$STATSD_PORT; i=$$((i+1)); sleep 1; done; sleep 2";
    let mut gen = sh_step("gen", script);
    gen["run_max_time"] = json!(120);
    let project = api.post("/api/v1/projects", json!({"name": "ids", "plans": [{"name": "p", "steps": [gen]}]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();
    let run_id = api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();

    // The relay, once it runs, and its memory as the run goes.
    let mut relay = None;
    let mut relay_peak: f64 = 0.0;
    let run = eventually_every(400, Duration::from_millis(500), async || {
        let run: Value = api.get(&format!("/api/v1/runs/{run_id}")).await;
        if relay.is_none() {
            let out = std::process::Command::new("docker")
                .args(["ps", "-q", "--filter", &format!("label=loads.run={run_id}"), "--filter", "label=loads.role=relay"])
                .output()
                .unwrap();
            relay = Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|id| !id.is_empty());
            if let Some(id) = &relay {
                assert_eq!(container_limit_mib(id), 512.0, "the relay runs under metrics.relay_memory_mb");
            }
        }
        if let Some(peak) = relay.as_deref().and_then(container_peak_mib) {
            relay_peak = relay_peak.max(peak);
        }
        match ["completed", "failed", "aborted"].contains(&run["state"].as_str().unwrap_or("")) {
            true => Ok(run),
            false => Err(format!("the run did not end: {run:#}")),
        }
    })
    .await;
    let broker_peak = status_mib(serve.id(), "VmHWM:");
    println!("broker peak {broker_peak:.0} MiB, relay peak {relay_peak:.0} MiB");
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["verdict"], "invalid", "{run:#}");
    let reason = run["verdict_reason"].as_str().unwrap();
    assert!(reason.contains("4000 value(s) of step \"gen\" not kept") && reason.contains("req.*.lat 4000"), "{reason}");
    assert_eq!(run["step_records"][0]["series_overflow"], 4000, "on the step record too");

    let body = api.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let rows = body["metrics"].as_array().unwrap();
    let count = |name: &str| rows.iter().find(|m| m["metric"] == name).map(|m| m["count"].as_f64().unwrap());
    assert_eq!(count("series.overflow"), Some(4000.0), "{body:#}");
    assert_eq!(count("series.overflow;pattern=req.*.lat"), Some(4000.0));
    let kept = rows.iter().filter(|m| m["kind"] == "timer" && m["metric"].as_str().unwrap().starts_with("req.")).count();
    assert_eq!(kept, 2000, "the step keeps metrics.max_series_per_step series");
    assert!(broker_peak < 300.0, "the broker held {broker_peak:.0} MiB");
    assert!(relay_peak > 0.0 && relay_peak < 512.0, "the relay held {relay_peak:.0} MiB");
    serve.kill().unwrap();
    serve.wait().unwrap();
    let (containers, networks) = leftovers(&b.broker);
    assert!(containers.is_empty() && networks.is_empty(), "{containers:?} {networks:?}");
}

/// Each live run holds a network on the engine, whose address pools are finite:
/// past `limits.max_live_runs` a start is refused (429, naming the setting) before
/// anything is made, and a start is taken again once a run has ended.
#[actix_web::test]
async fn starts_past_the_live_run_cap_are_refused_until_a_run_ends() {
    ensure_images();
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite, &[("LOADS__LIMITS__MAX_LIVE_RUNS", "2")]).await;
    let plan = app.create_plan(json!({"name": "p", "steps": [sh_step("s", "sleep 300")]})).await;
    let start = format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap());
    let mut live = Vec::new();
    for _ in 0..2 {
        let (status, run) = app.post(&start, &json!({})).await;
        assert_eq!(status, awc::http::StatusCode::CREATED, "{run}");
        live.push(run["id"].as_str().unwrap().to_string());
    }
    let (status, refused) = app.post(&start, &json!({})).await;
    assert_eq!(status, awc::http::StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["error"], "too_many_live_runs");
    assert!(refused["message"].as_str().unwrap().contains("limits.max_live_runs"), "{refused}");
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(2), "nothing was recorded for the refused start: {runs}");
    let (status, _) = app.post(&format!("/api/v1/runs/{}/abort", live[0]), &json!({})).await;
    assert_eq!(status, awc::http::StatusCode::ACCEPTED);
    app.wait_finished(&live[0], 60).await;
    let (status, run) = app.post(&start, &json!({})).await;
    assert_eq!(status, awc::http::StatusCode::CREATED, "a place is free again: {run}");
    for id in [live[1].clone(), run["id"].as_str().unwrap().to_string()] {
        app.post(&format!("/api/v1/runs/{id}/abort"), &json!({})).await;
        app.wait_finished(&id, 60).await;
    }
    app.assert_no_leftovers();
}

/// The month's spend is a ledger: deleting a run that cost money does not give the
/// money back to `budget.max_usd_per_month`, which is checked against this sum.
#[actix_web::test]
async fn deleting_runs_does_not_free_the_months_budget() {
    ensure_images();
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite, &[]).await;
    let (_, run_id) = app.start(json!({"name": "p", "steps": [sh_step("s", "true")]}), json!({})).await;
    app.wait_finished(&run_id, 60).await;
    // What an EC2 run's instances would have recorded.
    let store = loads_actors::store::connect(&app.database_url).await.unwrap();
    let cost = loads_actors::domain::usage::RunCost {
        lines: Vec::new(),
        instance_seconds: 36_000.0,
        usd: 5.0,
        as_of: chrono::Utc::now(),
        complete: true,
        notes: Vec::new(),
    };
    let id = uuid::Uuid::parse_str(&run_id).unwrap();
    loads_actors::store::runs::set_cost(&store, id, &cost).await.unwrap();
    let later = loads_actors::domain::usage::RunCost { usd: 6.0, ..cost.clone() };
    loads_actors::store::runs::set_cost(&store, id, &later).await.unwrap();
    let month = loads_actors::run_cost::month_start();
    let spent = || loads_actors::store::runs::cost_since(&store, month, uuid::Uuid::nil());
    assert_eq!(spent().await.unwrap(), 6.0, "a run's cost recorded again replaces its entry");
    let (status, _) = app.delete(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, awc::http::StatusCode::NO_CONTENT);
    let (status, _) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, awc::http::StatusCode::NOT_FOUND);
    assert_eq!(spent().await.unwrap(), 6.0, "the month keeps what the deleted run cost");
    app.assert_no_leftovers();
}

/// 300 subscribers that never read, on a step whose every window holds 200 names:
/// each event is shared, not copied per subscriber, and a subscriber's queue is
/// bounded, so the broker holds little more, and every one of them is let in.
#[actix_web::test]
async fn three_hundred_silent_subscribers_cost_the_broker_little() {
    ensure_images();
    let b = Restartable::new();
    let mut serve = b.serve(&[]);
    let api = &b.api;
    let script = "i=0; while [ $$i -lt 70 ]; do j=0; while [ $$j -lt 200 ]; do echo \"c$$j.requests:1|c\"; j=$$((j+1)); done \
                  | nc -w 1 $$STATSD_HOST $$STATSD_PORT; i=$$((i+1)); sleep 1; done";
    let mut gen = sh_step("gen", script);
    gen["run_max_time"] = json!(120);
    let project = api.post("/api/v1/projects", json!({"name": "silent", "plans": [{"name": "p", "steps": [gen]}]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();
    let run_id = api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();
    // Ten windows in, so that the backlog each subscriber gets is a real one.
    eventually_every(300, Duration::from_millis(500), async || {
        let series = api.get(&format!("/api/v1/runs/{run_id}/series")).await;
        match series["steps"][0]["points"].as_array().is_some_and(|p| p.len() >= 10) {
            true => Ok(()),
            false => Err(format!("fewer than ten windows: {series}")),
        }
    })
    .await;
    let before = status_mib(serve.id(), "VmRSS:");
    let url = format!("{}/api/v1/runs/{run_id}/events", api.base.replace("http://", "ws://"));
    let mut silent = Vec::new();
    for i in 0..300 {
        let connected = awc::Client::new().ws(url.as_str()).connect().await;
        let (_, socket) = connected.unwrap_or_else(|e| panic!("subscriber {i} was not let in: {e}"));
        silent.push(socket);
    }
    // A minute of windows while none of them reads.
    let until = Instant::now() + Duration::from_secs(45);
    let mut peak = before;
    while Instant::now() < until {
        peak = peak.max(status_mib(serve.id(), "VmRSS:"));
        let health = awc::Client::new().get(format!("{}/health", api.base)).send().await.expect("the broker answers");
        assert!(health.status().is_success());
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    }
    println!("broker {before:.0} MiB before the subscribers, {peak:.0} MiB at most with them");
    assert!(peak - before < 50.0, "300 silent subscribers added {:.0} MiB", peak - before);
    drop(silent);
    let run = until_ended(api, &run_id, 300).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    serve.kill().unwrap();
    serve.wait().unwrap();
    let (containers, networks) = leftovers(&b.broker);
    assert!(containers.is_empty() && networks.is_empty(), "{containers:?} {networks:?}");
}

/// 200 thresholds over a one-hour window on one timer (a plan generated by a
/// script, say) at 10 samples a second: they share one tally of at most 61
/// buckets, so the broker stays small and every threshold is judged.
#[actix_web::test]
async fn two_hundred_one_hour_threshold_windows_stay_small() {
    ensure_images();
    let b = Restartable::new();
    let mut serve = b.serve(&[]);
    let api = &b.api;
    let script =
        "i=0; while [ $$i -lt 45 ]; do j=0; while [ $$j -lt 10 ]; do echo \"lat:$$((100 + (i * 10 + j) % 100))|ms\"; j=$$((j+1)); done \
                  | nc -w 1 $$STATSD_HOST $$STATSD_PORT; i=$$((i+1)); sleep 1; done";
    let mut gen = sh_step("gen", script);
    gen["run_max_time"] = json!(120);
    let rules: Vec<Value> = (0..200).map(|i| json!({"threshold": format!("p(95)<{}", 100 + i), "window": "1h"})).collect();
    let plan = json!({"name": "p", "steps": [gen], "thresholds": {"lat": rules}});
    let project = api.post("/api/v1/projects", json!({"name": "hourly", "plans": [plan]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap_or_else(|| panic!("{project}")).to_string();
    let run_id = api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();
    let run = until_ended(api, &run_id, 400).await;
    let peak = status_mib(serve.id(), "VmHWM:");
    println!("broker peak {peak:.0} MiB");
    assert_eq!(run["state"], "completed", "{run:#}");
    let thresholds = run["thresholds"].as_array().unwrap();
    assert_eq!(thresholds.len(), 200);
    // Values 100..199 ms: p(95) is about 195, the same for every threshold; those whose
    // bound is above it pass, the rest fail.
    let value = thresholds[0]["value"].as_f64().unwrap();
    assert!((190.0..=199.0).contains(&value), "p(95) {value}");
    for (i, t) in thresholds.iter().enumerate() {
        let bound = 100.0 + i as f64;
        let expected = if value < bound { "passed" } else { "failed" };
        assert_eq!((t["value"].as_f64(), t["state"].as_str()), (Some(value), Some(expected)), "p(95)<{bound}");
    }
    assert_eq!(run["verdict"], "failed");
    assert!(peak < 300.0, "the broker held {peak:.0} MiB");
    serve.kill().unwrap();
    serve.wait().unwrap();
    let (containers, networks) = leftovers(&b.broker);
    assert!(containers.is_empty() && networks.is_empty(), "{containers:?} {networks:?}");
}

/// A process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broker too busy to answer in time: its first answers come after the relay has
/// given up (2 s), so the relay delivers the same windows again while the broker has
/// taken them. Every window counts once: the step counts exactly the lines sent.
#[actix_web::test]
async fn windows_a_relay_delivers_again_to_a_slow_broker_count_once() {
    use std::io::BufRead;
    ensure_images();
    let network = crate::tls::OwnNetwork::new();
    let ingest_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slow_ingest.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .args([&ingest_port.to_string(), &network.gateway, "8", "2.5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _proxy = Killed(child);
    let port = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("slow_ingest said {line:?}"));
    let relay_url = format!("http://{}:{port}", network.gateway);
    let ingest = ingest_port.to_string();
    let settings = [("LOADS__METRICS__RELAY_URL", relay_url.as_str()), ("LOADS__METRICS__INGEST_PORT", ingest.as_str())];
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite, &settings).await;
    // 4000 lines, 400 a second.
    let script = "i=0; while [ $$i -lt 10 ]; do j=0; while [ $$j -lt 400 ]; do echo \"sent:1|c\"; j=$$((j+1)); done \
                  | nc -w 1 $$STATSD_HOST $$STATSD_PORT; i=$$((i+1)); sleep 1; done; sleep 2";
    let (_, run_id) = app.start(json!({"name": "slow", "steps": [sh_step("gen", script)]}), json!({})).await;
    let run = app.wait_finished(&run_id, 300).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let (_, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let count = |name: &str| body["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == name).map(|m| m["count"].as_f64().unwrap());
    assert_eq!(count("sent"), Some(4000.0), "{body:#}");
    assert!(count("relay.windows_duplicate").is_some_and(|n| n > 0.0), "the relay did deliver again: {body:#}");
    assert_eq!(count("relay.windows_dropped"), Some(0.0));
    assert_eq!(run["verdict"], "passed", "deliveries made again lose nothing: {run:#}");
    app.assert_no_leftovers();
}
