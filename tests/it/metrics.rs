//! Metrics end to end: statsd from a real client to three nodes' relays, exact
//! merged counts and percentiles, ingest authentication, loss accounting.

use std::process::Command;

use awc::http::StatusCode;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, leftovers, on_both_databases, record, sh_step, LabelGuard, TestApp};

/// The timer values node `i` sends: different distributions per node, so
/// averaging per-node percentiles would be visibly wrong.
fn values(node: usize) -> Vec<f64> {
    (0..500u32).map(|j| f64::from((j * (node as u32 + 1) * 7919) % 5000) / 10.0 + node as f64 * 100.0).collect()
}

fn docker_out(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn relay_addresses(run_id: &str) -> Vec<String> {
    let ids = docker_out(&["ps", "-q", "--filter", &format!("label=loads.run={run_id}"), "--filter", "label=loads.role=relay"]);
    ids.lines().map(|id| docker_out(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id])).collect()
}

/// Sends with PyPI's statsd client (pipelined), plus malformed lines on a raw socket.
fn send_statsd(host: &str, node: usize) {
    let series: Vec<String> = values(node).iter().map(|v| format!("{v}")).collect();
    let script = format!(
        "import socket, statsd\n\
         c = statsd.StatsClient('{host}', 8125)\n\
         with c.pipeline() as p:\n\
         \x20   for v in [{}]:\n\
         \x20       p.timing('lat', v)\n\
         \x20       p.incr('hits')\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto(b'not statsd\\nbad:|c\\nworse:1|zz', ('{host}', 8125))\n",
        series.join(",")
    );
    let status = Command::new("python3").args(["-c", &script]).status().expect("python3 with statsd (scripts/test installs it)");
    assert!(status.success());
}

/// Reads the run's feed until the merged windows have counted `hits` to `total`.
async fn wait_for_hits(app: &TestApp, run_id: &str, total: f64) {
    let url = format!("{}/api/v1/runs/{run_id}/events", app.base.replace("http://", "ws://"));
    let (_, mut socket) = awc::Client::new().ws(url).connect().await.expect("websocket");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = 0.0;
    while seen < total {
        assert!(std::time::Instant::now() < deadline, "the feed counted {seen} of {total} hits");
        match socket.next().await.expect("feed open").expect("frame") {
            awc::ws::Frame::Text(text) => {
                let event: Value = serde_json::from_slice(&text).unwrap();
                if event["type"] == "metrics" {
                    assert_eq!(event["step"], "target");
                    seen += event["counters"]["hits"].as_f64().unwrap_or(0.0);
                }
            }
            awc::ws::Frame::Close(_) => panic!("the feed closed before all hits were counted"),
            _ => {}
        }
    }
    assert_eq!(seen, total, "merged windows count every hit once");
}

/// Asks the test InfluxDB; answers the first series' values.
pub async fn influx_query(database: &str, query: &str) -> Vec<Value> {
    let base = std::env::var("LOADS_TEST_INFLUX_URL").expect("LOADS_TEST_INFLUX_URL (scripts/test starts InfluxDB)");
    let mut r = awc::Client::new().get(format!("{base}/query")).query(&[("db", database), ("q", query)]).unwrap().send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    body["results"][0]["series"][0]["values"].as_array().cloned().unwrap_or_default()
}

/// A broker on `backend` writing to a fresh database of the test InfluxDB; answers the database's name.
pub async fn with_influx(backend: crate::helpers::Backend) -> (TestApp, String) {
    ensure_images();
    let influx_db = format!("loads_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let influx_url = std::env::var("LOADS_TEST_INFLUX_URL").expect("LOADS_TEST_INFLUX_URL (scripts/test starts InfluxDB)");
    let app = TestApp::spawn(backend, &[("LOADS__INFLUX__URL", &influx_url), ("LOADS__INFLUX__DATABASE", &influx_db)]).await;
    (app, influx_db)
}

pub async fn influx_admin(query: &str) {
    let base = std::env::var("LOADS_TEST_INFLUX_URL").unwrap();
    let _ = awc::Client::new().post(format!("{base}/query")).query(&[("q", query)]).unwrap().send().await;
}

/// Three nodes' statsd arrives with exact counts, in the API and in InfluxDB; merged
/// percentiles are those of the union of all samples.
#[actix_web::test]
async fn three_nodes_merge_into_exact_step_metrics() {
    for backend in [crate::helpers::Backend::Sqlite, crate::helpers::Backend::Postgres] {
        let (app, influx_db) = with_influx(backend).await;
        let step = json!({"name": "target", "container_name": loads::images::BUSYBOX, "instance_count": 3,
                          "run_max_time": 0, "additional_command_args": "-c 'sleep 300'"});
        let (_, run_id) = app.start(json!({"name": "metrics", "steps": [step]}), json!({})).await;
        app.wait_for_run(&run_id, 60, |r| record(r, "target")["state"] == "running").await;
        let relays = relay_addresses(&run_id);
        assert_eq!(relays.len(), 3);
        for (i, host) in relays.iter().enumerate() {
            send_statsd(host, i);
        }
        wait_for_hits(&app, &run_id, 1500.0).await;
        let (status, _) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(app.wait_finished(&run_id, 60).await["state"], "aborted");

        let (status, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let metric = |name: &str| {
            body["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["metric"] == name)
                .unwrap_or_else(|| panic!("no {name}: {body:#}"))
                .clone()
        };
        let hits = metric("hits");
        assert_eq!((hits["kind"].as_str(), hits["count"].as_f64()), (Some("counter"), Some(1500.0)));
        assert!(hits["rate"].as_f64().unwrap() > 0.0);
        let lat = metric("lat");
        assert_eq!(lat["count"], 1500.0);
        let mut union: Vec<f64> = (0..3).flat_map(values).collect();
        union.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for (q, key) in [(0.50, "p50"), (0.95, "p95"), (0.99, "p99")] {
            let exact = union[((q * union.len() as f64).ceil() as usize) - 1];
            let got = lat[key].as_f64().unwrap();
            assert!((got - exact).abs() <= exact * 0.001 + 0.001, "{key}: {got} ms, exact {exact} ms");
        }
        assert_eq!(lat["min"].as_f64().unwrap(), union[0]);
        assert!((lat["max"].as_f64().unwrap() - union[union.len() - 1]).abs() <= union[union.len() - 1] * 0.001);
        assert_eq!(metric("relay.lines")["count"], 3000.0);
        assert_eq!(metric("relay.malformed")["count"], 9.0, "three malformed lines on each of three nodes");
        assert_eq!(metric("relay.windows_dropped")["count"], 0.0);
        let cpu = metric("host.cpu_percent");
        assert!(cpu["count"].as_f64().unwrap() >= 3.0 && (0.0..=100.0).contains(&cpu["mean"].as_f64().unwrap()), "{cpu}");
        assert_eq!(metric("generator_saturated")["kind"], "flag");

        let step_hits = influx_query(
            &influx_db,
            &format!("SELECT sum(\"value\") FROM \"counter\" WHERE \"run\" = '{run_id}' AND \"metric\" = 'hits' AND \"node\" = 'all'"),
        )
        .await;
        assert_eq!(step_hits[0][1], 1500.0, "merged windows in InfluxDB: {step_hits:?}");
        let node_hits = influx_query(&influx_db, &format!("SELECT sum(\"value\") FROM \"counter\" WHERE \"run\" = '{run_id}' AND \"metric\" = 'hits' AND \"node\" != 'all' GROUP BY \"node\"")).await;
        assert!(!node_hits.is_empty());
        let per_node =
            influx_query(&influx_db, &format!("SELECT sum(\"count\") FROM \"timer\" WHERE \"run\" = '{run_id}' AND \"node\" != 'all'"))
                .await;
        assert_eq!(per_node[0][1], 1500.0, "node-level timer samples add up");
        let tagged = influx_query(
            &influx_db,
            &format!(
                "SELECT \"p99\", \"type\", \"plan\", \"region\" FROM \"timer\" WHERE \"run\" = '{run_id}' AND \"node\" = 'all' LIMIT 1"
            ),
        )
        .await;
        assert_eq!((&tagged[0][2], &tagged[0][3], &tagged[0][4]), (&json!("target"), &json!("metrics"), &json!("us-west-2")), "{tagged:?}");
        let hosts = influx_query(&influx_db, &format!("SELECT count(\"cpu_percent\") FROM \"host\" WHERE \"run\" = '{run_id}'")).await;
        assert!(hosts[0][1].as_f64().unwrap() >= 3.0, "{hosts:?}");
        influx_admin(&format!("DROP DATABASE \"{influx_db}\"")).await;
        app.assert_no_leftovers();
    }
}

/// The ingest endpoint takes windows only with a live run's own token; a
/// wrong token and an unknown run get the same answer; a body that does not
/// arrive in time is refused.
#[actix_web::test]
async fn ingest_accepts_only_the_runs_own_token() {
    ensure_images();
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite, &[("LOADS__METRICS__INGEST_BODY_TIMEOUT_SECONDS", "1")]).await;
    let (_, run_id) = app.start(json!({"name": "auth", "steps": [sh_step("s", "sleep 300")]}), json!({})).await;
    app.wait_for_run(&run_id, 60, |r| r["state"] == "running").await;
    let url = |run: &str| format!("http://127.0.0.1:{}/ingest/{run}", app.ingest_port);
    let client = awc::Client::new();
    let window = json!([{"run_id": run_id, "step_id": uuid::Uuid::new_v4().to_string(), "node": "x", "seq": 1, "start_ms": 0, "duration_ms": 1000,
                         "counters": {}, "gauges": {}, "sets": {}, "timers": {}, "lines": 0, "malformed": 0, "dropped_windows": 0}]);
    let r = client.post(url(&run_id)).send_json(&window).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no token");
    let mut wrong = client.post(url(&run_id)).bearer_auth("guess").send_json(&window).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "wrong token");
    let wrong_body = wrong.body().await.unwrap();
    let mut unknown = client.post(url(&uuid::Uuid::new_v4().to_string())).bearer_auth("guess").send_json(&window).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED, "no such run");
    assert_eq!(unknown.body().await.unwrap(), wrong_body, "an unknown run and a wrong token look the same");
    let r = client.post(url("nope")).bearer_auth("guess").send_json(&window).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The run's own token, but windows that are not the run's: an unknown step, another run.
    let store = loads_actors::store::connect(&app.database_url).await.unwrap();
    let token = loads_actors::store::runs::recovery(&store, uuid::Uuid::parse_str(&run_id).unwrap()).await.unwrap().ingest_token.unwrap();
    let r = client.post(url(&run_id)).bearer_auth(&token).send_json(&window).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a step the run does not have");
    let (_, run) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    let mut foreign = window.clone();
    foreign[0]["step_id"] = run["step_records"][0]["step_id"].clone();
    foreign[0]["run_id"] = json!(uuid::Uuid::new_v4().to_string());
    let r = client.post(url(&run_id)).bearer_auth(&token).send_json(&foreign).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a window of another run");
    // The run's own token with a body that never comes: refused after the body timeout.
    let answer = crate::security::raw_request(
        ("127.0.0.1", app.ingest_port),
        &format!("POST /ingest/{run_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n["),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (status, _) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.wait_finished(&run_id, 60).await;
    app.assert_no_leftovers();
}

/// A window is its node's, its relay's and its number: delivered again it counts
/// once; from a node the step was not granted, dated outside the run, or holding
/// an exponential histogram no sender may give (buckets beyond any number, the
/// ends of an i32) it changes nothing but the counts of what was refused, and
/// the verdict cannot be `passed`.
#[actix_web::test]
async fn a_replayed_spoofed_or_out_of_time_window_changes_nothing() {
    ensure_images();
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite, &[]).await;
    let mut gen = sh_step("gen", "sleep 300");
    gen["instance_count"] = json!(2);
    gen["run_max_time"] = json!(8);
    let (_, run_id) = app.start(json!({"name": "replay", "steps": [gen]}), json!({})).await;
    let run = app.wait_for_run(&run_id, 60, |r| r["state"] == "running").await;
    let step_id = run["step_records"][0]["step_id"].clone();
    let store = loads_actors::store::connect(&app.database_url).await.unwrap();
    let token = loads_actors::store::runs::recovery(&store, uuid::Uuid::parse_str(&run_id).unwrap()).await.unwrap().ingest_token.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let window = |node: &str, seq: u64, start_ms: i64| {
        json!({"run_id": run_id, "step_id": step_id, "node": node, "epoch": 7, "seq": seq, "start_ms": start_ms, "duration_ms": 1000,
               "counters": {"replay.c": 1.0}, "gauges": {}, "sets": {}, "timers": {}, "lines": 1, "malformed": 0, "dropped_windows": 0})
    };
    let client = awc::Client::new();
    let url = format!("http://127.0.0.1:{}/ingest/{run_id}", app.ingest_port);
    let post = |body: Value| {
        let request = client.post(&url).bearer_auth(&token);
        async move {
            let response = request.send_json(&body).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "a retry is answered as delivered");
        }
    };
    // Once, once more, then ten times in one delivery: one window.
    post(json!([window("s0n0", 1, now)])).await;
    post(json!([window("s0n0", 1, now)])).await;
    post(Value::Array(vec![window("s0n0", 1, now); 10])).await;
    // Nodes the step never had, a start a year ahead and one before 1970.
    post(json!([window("s9n9", 2, now), window("<b>n</b>", 3, now)])).await;
    post(json!([window("s0n0", 4, now + 365 * 24 * 3600 * 1000), window("s0n0", 5, -1000)])).await;
    // Exponential histograms no sender may give, on both nodes: far-apart offsets at
    // scale -10 (once two billion buckets), the ends of an i32 (once an overflow).
    let bomb = |node: &str, seq: u64, offset: i64| {
        let mut w = window(node, seq, now);
        w["counters"] = json!({});
        w["exponential"] = json!({"bomb": {"scale": -10, "zero_count": 0, "positive": {"offset": offset, "counts": [1]},
                                            "negative": {"offset": 0, "counts": []}, "count": 1, "sum": 1.0}});
        w
    };
    post(json!([
        bomb("s0n0", 6, 0),
        bomb("s0n1", 1, -2_000_000_000),
        bomb("s0n0", 7, i64::from(i32::MIN)),
        bomb("s0n1", 2, i64::from(i32::MAX))
    ]))
    .await;
    // The metrics actor is still there: a later window of the other node is taken.
    post(json!([window("s0n1", 3, now)])).await;
    let (status, _) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);

    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["verdict"], "invalid", "{run:#}");
    let reason = run["verdict_reason"].as_str().unwrap();
    assert!(reason.contains("4 window(s) of step \"gen\" refused (2 from nodes it was not granted, 2 dated outside the run)"), "{reason}");
    let (_, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let count = |name: &str| body["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == name).map(|m| m["count"].as_f64().unwrap());
    assert_eq!(count("replay.c"), Some(2.0), "one window of each node: {body:#}");
    assert_eq!(count("relay.windows_refused"), Some(4.0));
    assert_eq!(count("relay.windows_duplicate"), Some(11.0));
    assert!(count("relay.malformed").is_some_and(|n| n >= 3.0), "the impossible histograms are counted: {body:#}");
    let bomb = body["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "bomb").cloned();
    assert_eq!(bomb.map(|m| m["count"].clone()), Some(json!(1.0)), "only the sound point is kept");
    app.assert_no_leftovers();
}

on_both_databases! {
    /// A step with 10 000 metric names (under a series cap raised to take them) has its
    /// whole summary stored (one statement would bind more values than SQLite takes), and
    /// its verdict stands.
    async fn a_summary_of_ten_thousand_metrics_is_stored_whole(app with &[("LOADS__METRICS__MAX_SERIES_PER_STEP", "20000")]) {
        ensure_images();
        let mut gen = sh_step("gen", "sleep 300");
        gen["run_max_time"] = json!(5);
        let (_, run_id) = app.start(json!({"name": "wide", "steps": [gen]}), json!({})).await;
        let run = app.wait_for_run(&run_id, 60, |r| r["state"] == "running").await;
        let store = loads_actors::store::connect(&app.database_url).await.unwrap();
        let token = loads_actors::store::runs::recovery(&store, uuid::Uuid::parse_str(&run_id).unwrap()).await.unwrap().ingest_token.unwrap();
        let counters: serde_json::Map<String, Value> = (0..10_000).map(|i| (format!("name.{i}"), json!(f64::from(i)))).collect();
        let window = json!([{"run_id": run_id, "step_id": run["step_records"][0]["step_id"], "node": "s0n0", "epoch": 1, "seq": 1,
                             "start_ms": chrono::Utc::now().timestamp_millis(), "duration_ms": 1000, "counters": counters, "gauges": {},
                             "sets": {}, "timers": {}, "lines": 10_000, "malformed": 0, "dropped_windows": 0}]);
        let url = format!("http://127.0.0.1:{}/ingest/{run_id}", app.ingest_port);
        let response = awc::Client::new().post(url).bearer_auth(&token).send_json(&window).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let run = app.wait_finished(&run_id, 60).await;
        assert_eq!((&run["state"], &run["verdict"]), (&json!("completed"), &json!("passed")), "{run:#}");
        let (_, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
        let names: Vec<&Value> = body["metrics"].as_array().unwrap().iter().filter(|m| m["metric"].as_str().unwrap().starts_with("name.")).collect();
        assert_eq!(names.len(), 10_000);
        assert!(names.iter().any(|m| m["metric"] == "name.9999" && m["count"] == 9999.0));
        app.assert_no_leftovers();
    }
}

/// A relay whose broker cannot be reached keeps a bounded buffer, drops the
/// oldest windows, and says exactly how many it lost and how many are undelivered.
#[test]
fn an_unreachable_broker_makes_the_relay_count_its_losses() {
    ensure_images();
    let tag = format!("loss{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let _cleanup = LabelGuard(tag.clone());
    let network = format!("loads-test-{tag}");
    assert!(Command::new("docker")
        .args(["network", "create", "--label", &format!("loads.broker={tag}"), &network])
        .output()
        .unwrap()
        .status
        .success());
    let gateway = docker_out(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", &network]);
    let closed = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let id = docker_out(&[
        "run",
        "-d",
        "--network",
        &network,
        "--label",
        &format!("loads.broker={tag}"),
        "-e",
        &format!("LOADS_INGEST_URL=http://{gateway}:{closed}/ingest/x"),
        "-e",
        "LOADS_INGEST_TOKEN=t",
        "-e",
        "LOADS_RELAY_BUFFER=3",
        "-e",
        "LOADS_FLUSH_MS=50",
        loads::images::RELAY,
    ]);
    crate::helpers::eventually_blocking(30, || {
        let logs = Command::new("docker").args(["logs", &id]).output().unwrap();
        match String::from_utf8_lossy(&logs.stderr).matches("ingest unreachable").count() {
            failures if failures >= 10 => Ok(()),
            failures => Err(format!("the relay tried to deliver {failures} times")),
        }
    });
    assert!(Command::new("docker").args(["stop", "-t", "5", &id]).output().unwrap().status.success());
    let out = Command::new("docker").args(["logs", &id]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    let number = |key: &str| -> u64 {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {last:?}"))
    };
    assert_eq!(number("windows_sent"), 0);
    assert_eq!(number("windows_undelivered"), 3, "the buffer holds 3");
    assert!(number("windows_dropped") >= 8, "{last}");
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    let _ = Command::new("docker").args(["network", "rm", &network]).output();
    let (containers, networks) = leftovers(&tag);
    assert!(containers.is_empty() && networks.is_empty());
}

/// A step over two regions: each node's points carry its region, every merged window is
/// split by region as well as merged over all (summary, feed, InfluxDB), thresholds filter
/// by region, and the dashboard has a region variable. On the local provider regions are
/// only names, so this checks the metrics; `ec2_nodes` launches a split step for real.
#[actix_web::test]
async fn a_step_over_two_regions_has_its_metrics_by_region_and_over_all() {
    let (app, influx_db) = with_influx(crate::helpers::Backend::Sqlite).await;
    // Each node sends 60 timings; 3 nodes at 34/66: eu-west-1 1.02 → 1, us-west-2 1.98 → 2.
    let script = "i=0; while [ $i -lt 60 ]; do echo \"lat:$((i % 7 + 1))|ms\"; echo \"hits:1|c\"; i=$((i+1)); done | nc $STATSD_HOST $STATSD_PORT; sleep 2";
    let mut step = sh_step("gen", &script.replace('$', "$$"));
    step["instance_count"] = json!(3);
    step["instance_region"] = json!({"us-west-2": 66, "eu-west-1": 34});
    let thresholds = json!({"hits{region:eu-west-1}": ["count<100"], "hits{region:us-west-2}": ["count>100"], "hits": ["count>150"]});
    let (_, run_id) = app.start(json!({"name": "spread", "thresholds": thresholds, "steps": [step]}), json!({})).await;
    let run = app.wait_finished(&run_id, 90).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let (_, plan) = app.get(&format!("/api/v1/plans/{}", run["plan_id"].as_str().unwrap())).await;
    assert_eq!(plan["steps"][0]["instance_region"], json!({"eu-west-1": 34, "us-west-2": 66}), "stored as written");

    // Thresholds: each region's hits alone; the step's over every node.
    let judged: Vec<(String, String, Value)> = run["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["metric"].as_str().unwrap().to_string(), t["state"].as_str().unwrap().to_string(), t["value"].clone()))
        .collect();
    assert_eq!(
        judged,
        [
            ("hits".to_string(), "passed".to_string(), json!(180.0)),
            ("hits{region:eu-west-1}".to_string(), "passed".to_string(), json!(60.0)),
            ("hits{region:us-west-2}".to_string(), "passed".to_string(), json!(120.0)),
        ],
        "{run:#}"
    );

    // The summary: the step over all nodes, then each region's share.
    let (_, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let row = |metric: &str, region: Option<&str>| {
        body["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == metric && m["region"].as_str() == region)
            .unwrap_or_else(|| panic!("no {metric} in {region:?}: {body:#}"))
            .clone()
    };
    assert_eq!(row("lat", None)["count"], 180.0);
    assert_eq!(row("lat", Some("us-west-2"))["count"], 120.0);
    assert_eq!(row("lat", Some("eu-west-1"))["count"], 60.0);
    assert_eq!(row("hits", Some("eu-west-1"))["count"], 60.0);
    // Every node sent the same values: each region's percentiles are the step's.
    assert_eq!(row("lat", Some("eu-west-1"))["p95"], row("lat", None)["p95"]);

    // The feed: each merged window also by region, adding up to the whole.
    let url = format!("{}/api/v1/runs/{run_id}/events", app.base.replace("http://", "ws://"));
    let (_, mut socket) = awc::Client::new().ws(url).connect().await.expect("websocket");
    let (mut all, mut by_region) = (0.0, std::collections::BTreeMap::<String, f64>::new());
    while let Some(Ok(frame)) = socket.next().await {
        let awc::ws::Frame::Text(bytes) = frame else { continue };
        let event: Value = serde_json::from_slice(&bytes).unwrap();
        if event["type"] == "end" {
            break;
        }
        if event["type"] == "metrics" {
            all += event["counters"]["hits"].as_f64().unwrap_or(0.0);
            for (region, window) in event["regions"].as_object().into_iter().flatten() {
                *by_region.entry(region.clone()).or_default() += window["counters"]["hits"].as_f64().unwrap_or(0.0);
            }
        }
    }
    assert_eq!(all, 180.0);
    assert_eq!(by_region, std::collections::BTreeMap::from([("eu-west-1".to_string(), 60.0), ("us-west-2".to_string(), 120.0)]));

    // InfluxDB: each node's points with its region; merges per region and over all (`all`).
    let sum = |filter: &str| {
        let query = format!("SELECT sum(\"value\") FROM \"counter\" WHERE \"run\" = '{run_id}' AND \"metric\" = 'hits' AND {filter}");
        let db = influx_db.clone();
        async move { influx_query(&db, &query).await.first().and_then(|v| v[1].as_f64()) }
    };
    assert_eq!(sum("\"node\" != 'all' AND \"region\" = 'eu-west-1'").await, Some(60.0));
    assert_eq!(sum("\"node\" != 'all' AND \"region\" = 'us-west-2'").await, Some(120.0));
    assert_eq!(sum("\"node\" = 'all' AND \"region\" = 'eu-west-1'").await, Some(60.0));
    assert_eq!(sum("\"node\" = 'all' AND \"region\" = 'all'").await, Some(180.0));

    // The dashboard: a region variable, and the step's panels read the region it picks.
    let (_, dashboard) = app.get(&format!("/api/v1/runs/{run_id}/dashboard")).await;
    let variable = &dashboard["templating"]["list"][0];
    assert_eq!(variable["name"], "region", "{dashboard:#}");
    let choices: Vec<&str> = variable["options"].as_array().unwrap().iter().map(|o| o["value"].as_str().unwrap()).collect();
    assert_eq!(choices, ["all", "eu-west-1", "us-west-2"]);
    let queries: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["title"] == "gen: lat latency" || p["title"] == "gen: throughput")
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["query"].as_str().unwrap()))
        .collect();
    assert!(!queries.is_empty() && queries.iter().all(|q| q.contains("\"region\" = '$region'")), "{queries:?}");
    influx_admin(&format!("DROP DATABASE \"{influx_db}\"")).await;
    app.assert_no_leftovers();
}
