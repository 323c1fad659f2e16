//! OpenTelemetry metrics from the official Python SDK and its OTLP exporters
//! (`tests/otlp_sender.py`), over HTTP and gRPC: to `loads relay` on its own,
//! and through a run to the summary, the feed and InfluxDB. And a relay whose
//! kernel queue overflows: the drops are counted in the run's summary.

use std::io::BufRead as _;
use std::process::{Command, Stdio};

use awc::http::StatusCode;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, record, TestApp};
use crate::metrics::influx_query;

/// The SDK's default explicit bucket bounds (`http.duration` uses them).
const SDK_BOUNDS: [f64; 15] = [0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0];

/// What the sender says it sent.
struct Sent {
    orders_ok: f64,
    orders_error: f64,
    inflight: f64,
    durations: Vec<f64>,
}

impl Sent {
    fn sorted(&self) -> Vec<f64> {
        let mut all = self.durations.clone();
        all.sort_by(f64::total_cmp);
        all
    }

    /// The exact `q` quantile of what was sent (the rank the relay uses: ⌈q·n⌉).
    fn exact(&self, q: f64) -> f64 {
        let all = self.sorted();
        all[((q * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1]
    }

    /// What an explicit-bucket percentile must be: the upper bound of the bucket the exact
    /// value falls in (`(lower, upper]`), or the largest value past the last bound.
    fn bucket_bound(&self, q: f64) -> f64 {
        let (exact, max) = (self.exact(q), self.sorted()[self.durations.len() - 1]);
        SDK_BOUNDS.iter().copied().find(|b| exact <= *b).unwrap_or(max).min(max)
    }
}

/// Runs the sender with the standard exporter variables `env` (and none of this process's).
fn send_otlp(env: &[(String, String)], service: &str) -> Sent {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_sender.py");
    let mut command = Command::new("python3");
    command.arg(script).args(["--service", service]);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        command.env_remove(key);
    }
    let out = command.envs(env.iter().cloned()).output().expect("python3 with the OpenTelemetry SDK (scripts/test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the sender failed: {stderr}");
    assert!(!stderr.contains("Failed to export"), "an export failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    Sent {
        orders_ok: sent["orders_ok"].as_f64().unwrap(),
        orders_error: sent["orders_error"].as_f64().unwrap(),
        inflight: sent["inflight"].as_f64().unwrap(),
        durations: sent["durations"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
    }
}

fn otel_env(endpoint: &str, protocol: &str, temporality: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE".into(), temporality.into()),
    ]
}

/// `loads relay` on loopback, on free ports; answers it and its OTLP/HTTP and OTLP/gRPC ports.
fn start_relay() -> (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>, u16, u16) {
    let mut relay = Command::new(env!("CARGO_BIN_EXE_loads"))
        .args(["relay", "--free-ports", "--bind", "127.0.0.1", "--print", "--json"])
        .env_remove("LOADS_INGEST_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("loads relay");
    let mut lines = std::io::BufReader::new(relay.stdout.take().unwrap()).lines();
    let (mut http, mut grpc) = (None, None);
    while http.is_none() || grpc.is_none() {
        let line = lines.next().expect("the relay printed its ports").unwrap();
        let port = |protocol: &str| {
            line.strip_prefix(&format!("{}{protocol} ", loads_relay::run::OTLP_LISTENING)).map(|p| p.trim().parse::<u16>().unwrap())
        };
        http = http.or(port("http"));
        grpc = grpc.or(port("grpc"));
    }
    (relay, lines, http.unwrap(), grpc.unwrap())
}

/// The Python SDK's counters, up-down counter, gauge, explicit and exponential histograms
/// reach a relay over OTLP/HTTP (cumulative) and OTLP/gRPC (delta) exactly: counts to the
/// unit, explicit percentiles the bucket bound of the exact value, exponential ones
/// within the relative error their scale states.
#[test]
fn the_relay_takes_the_python_sdks_metrics_over_http_and_grpc() {
    let (mut relay, mut lines, http, grpc) = start_relay();
    let over_http = send_otlp(&otel_env(&format!("http://127.0.0.1:{http}"), "http/protobuf", "cumulative"), "gen-http");
    let over_grpc = send_otlp(&otel_env(&format!("http://127.0.0.1:{grpc}"), "grpc", "delta"), "gen-grpc");
    assert!(Command::new("kill").args(["-INT", &relay.id().to_string()]).status().unwrap().success());
    let printed: Vec<String> = lines.by_ref().map_while(Result::ok).collect();
    assert!(relay.wait().unwrap().success());
    assert!(printed.iter().any(|l| l.starts_with("window ")), "--print shows windows: {printed:?}");
    let totals: Value = serde_json::from_str(printed.last().expect("the --json totals")).unwrap();

    for (service, sent) in [("gen-http", &over_http), ("gen-grpc", &over_grpc)] {
        let tags = format!("service.name={service}");
        assert_eq!(totals["counters"][format!("orders;{tags},status=ok")], sent.orders_ok, "{service}: {totals:#}");
        assert_eq!(totals["counters"][format!("orders;{tags},status=error")], sent.orders_error, "{service}");
        assert_eq!(totals["gauges"][format!("inflight;{tags}")], sent.inflight, "{service}: the up-down counter's value");
        assert_eq!(totals["gauges"][format!("queue.depth;{tags}")], 7.0, "{service}");

        let explicit: loads_relay::histogram::Buckets =
            serde_json::from_value(totals["buckets"][format!("http.duration;{tags}")].clone()).expect("explicit buckets");
        assert_eq!((explicit.count, explicit.unit.as_str()), (sent.durations.len() as u64, "ms"), "{service}");
        assert_eq!(explicit.bounds, SDK_BOUNDS);
        for q in [0.5, 0.9, 0.95, 0.99] {
            assert_eq!(explicit.quantile(q), Some(sent.bucket_bound(q)), "{service}: p{q} is its bucket's bound");
        }
        let sum: f64 = sent.durations.iter().sum();
        assert!((explicit.sum - sum).abs() <= sum * 1e-9, "{service}: sum {} vs {sum}", explicit.sum);

        let exponential: loads_relay::histogram::Exponential =
            serde_json::from_value(totals["exponential"][format!("rpc.duration;{tags}")].clone()).expect("an exponential histogram");
        assert_eq!(exponential.count, sent.durations.len() as u64, "{service}");
        let error = exponential.relative_error();
        assert!(error > 0.0 && error < 0.05, "{service}: scale {} states ±{error}", exponential.scale);
        for q in [0.01, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let (got, exact) = (exponential.quantile(q).unwrap(), sent.exact(q));
            assert!((got - exact).abs() <= exact * error * (1.0 + 1e-9), "{service}: p{q} = {got}, exact {exact}, ±{error}");
        }
    }
    assert_eq!(totals["malformed"], 0, "{totals:#}");
}

/// Exponential histograms no SDK sends, from anything on a run network: far-apart
/// bucket offsets at scale -10 (408 bytes once took a relay to 3.7 GB) and offsets at
/// the ends of an i32 (once a panic holding the relay's lock). Posted to a real relay
/// over OTLP/HTTP, each such point is refused and counted malformed, the relay stays
/// small, a sound point of the same metric is kept, and SIGINT still stops it.
#[actix_web::test]
async fn exponential_histogram_bombs_are_counted_malformed_and_the_relay_stays_small() {
    let (mut relay, mut lines, http, _) = start_relay();
    let point = |offset: i64| {
        json!({"startTimeUnixNano": "1", "timeUnixNano": "2", "count": "1", "sum": 1.0, "scale": -10, "zeroCount": "0",
               "positive": {"offset": offset, "bucketCounts": ["1"]}})
    };
    let export = |offsets: &[i64]| {
        json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "bomb", "exponentialHistogram":
            {"aggregationTemporality": 1, "dataPoints": offsets.iter().map(|o| point(*o)).collect::<Vec<_>>()}}]}]}]})
    };
    let client = awc::Client::new();
    let url = format!("http://127.0.0.1:{http}/v1/metrics");
    for body in [export(&[0, -2_000_000_000]), export(&[i64::from(i32::MIN), i64::from(i32::MAX)]), export(&[0])] {
        let mut response = client.post(&url).send_json(&body).await.expect("the relay answers");
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(response.status(), StatusCode::OK, "{answer}");
    }
    let peak_mib = std::fs::read_to_string(format!("/proc/{}/status", relay.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().unwrap() / 1024.0))
        .unwrap();
    assert!(Command::new("kill").args(["-INT", &relay.id().to_string()]).status().unwrap().success());
    let printed: Vec<String> = lines.by_ref().map_while(Result::ok).collect();
    assert!(relay.wait().unwrap().success(), "the relay stops when told");
    println!("relay peak {peak_mib:.1} MiB");
    assert!(peak_mib < 64.0, "the relay held {peak_mib:.0} MiB");
    let totals: Value = serde_json::from_str(printed.last().expect("the --json totals")).unwrap();
    assert_eq!(totals["malformed"], 3, "the impossible points are counted: {totals:#}");
    assert_eq!(totals["exponential"]["bomb"]["count"], 2, "the sound points are kept: {totals:#}");
}

/// The environment of the run's step container on its node (once it runs): what an unmodified generator gets.
async fn container_env(run_id: &str) -> Vec<(String, String)> {
    let id = crate::helpers::eventually(30, async || {
        let out = Command::new("docker")
            .args(["ps", "-q", "--filter", &format!("label=loads.run={run_id}"), "--filter", "label=loads.role=step"])
            .output()
            .unwrap();
        let first = String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_string);
        first.ok_or_else(|| format!("no step container of run {run_id} runs"))
    })
    .await;
    let out = Command::new("docker").args(["inspect", "-f", "{{json .Config.Env}}", &id]).output().unwrap();
    let env: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    env.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Through a run: the container's own `OTEL_EXPORTER_OTLP_*` variables point the SDK at its
/// node's relay, and the metrics reach the summary (exact counts, stated percentiles), the
/// feed and InfluxDB, tagged with the run.
#[actix_web::test]
async fn otlp_metrics_reach_the_summary_the_feed_and_influxdb_of_a_run() {
    let (app, influx_db) = crate::metrics::with_influx(crate::helpers::Backend::Sqlite).await;
    let step = json!({"name": "gen", "container_name": loads::images::BUSYBOX, "run_max_time": 0,
                      "additional_command_args": "-c 'sleep 300'"});
    let (_, run_id) = app.start(json!({"name": "otlp", "steps": [step]}), json!({})).await;
    app.wait_for_run(&run_id, 60, |r| record(r, "gen")["state"] == "running").await;
    let env = container_env(&run_id).await;
    let endpoint = env.iter().find(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT").map(|(_, v)| v.clone()).expect("the endpoint variable");
    assert!(env.contains(&("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into())), "{env:?}");
    assert!(env.contains(&("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into())), "{env:?}");
    let otel: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("OTEL_")).collect();

    let url = format!("{}/api/v1/runs/{run_id}/events", app.base.replace("http://", "ws://"));
    let (_, mut feed) = awc::Client::new().ws(url).connect().await.expect("websocket");
    let sent = actix_web::rt::task::spawn_blocking(move || send_otlp(&otel, "shop")).await.unwrap();
    let key = "orders;service.name=shop,status=ok";
    let (mut seen, mut histogram_seen) = (0.0, false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen < sent.orders_ok || !histogram_seen {
        assert!(std::time::Instant::now() < deadline, "the feed counted {seen} of {} orders from {endpoint}", sent.orders_ok);
        if let awc::ws::Frame::Text(text) = feed.next().await.expect("feed open").expect("frame") {
            let event: Value = serde_json::from_slice(&text).unwrap();
            if event["type"] == "metrics" {
                seen += event["counters"][key].as_f64().unwrap_or(0.0);
                let h = &event["histograms"]["http.duration;service.name=shop"];
                if h.is_object() {
                    assert_eq!((h["kind"].as_str(), h["unit"].as_str()), (Some("buckets"), Some("ms")), "{event}");
                    histogram_seen = true;
                }
            }
        }
    }
    assert_eq!(seen, sent.orders_ok, "the feed's windows count every order once");
    let (status, _) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.wait_finished(&run_id, 60).await;

    let (status, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metric = |name: &str| {
        body["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == name).unwrap_or_else(|| panic!("no {name}: {body:#}")).clone()
    };
    assert_eq!(metric(key)["count"], sent.orders_ok);
    assert_eq!(metric("orders;service.name=shop,status=error")["count"], sent.orders_error);
    assert_eq!(metric("inflight;service.name=shop")["count"], sent.inflight);
    assert_eq!(metric("queue.depth;service.name=shop")["count"], 7.0, "a gauge is its last value, not a sum over windows");
    let explicit = metric("http.duration;service.name=shop");
    assert_eq!((explicit["kind"].as_str(), explicit["unit"].as_str()), (Some("histogram"), Some("ms")));
    assert_eq!(explicit["count"], sent.durations.len() as f64);
    for (q, field) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
        assert_eq!(explicit[field], sent.bucket_bound(q), "{field} is the bound of its bucket");
    }
    let exponential = metric("rpc.duration;service.name=shop");
    assert_eq!(exponential["kind"], "exponential_histogram");
    assert_eq!(exponential["count"], sent.durations.len() as f64);
    let error = exponential["relative_error"].as_f64().expect("the stated error");
    for (q, field) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
        let (got, exact) = (exponential[field].as_f64().unwrap(), sent.exact(q));
        assert!((got - exact).abs() <= exact * error * (1.0 + 1e-9), "{field} = {got}, exact {exact}, ±{error}");
    }

    let counted = influx_query(
        &influx_db,
        &format!("SELECT sum(\"value\") FROM \"counter\" WHERE \"run\" = '{run_id}' AND \"metric\" = '{key}' AND \"node\" = 'all'"),
    )
    .await;
    assert_eq!(counted[0][1], sent.orders_ok, "{counted:?}");
    let histograms = influx_query(
        &influx_db,
        &format!(
            "SELECT sum(\"count\") FROM \"histogram\" WHERE \"run\" = '{run_id}' AND \"node\" = 'all' AND \"kind\" = 'exponential' AND \"unit\" = 'ms'"
        ),
    )
    .await;
    assert_eq!(histograms[0][1], sent.durations.len() as f64, "{histograms:?}");
    crate::metrics::influx_admin(&format!("DROP DATABASE \"{influx_db}\"")).await;
    app.assert_no_leftovers();
}

/// A relay that cannot keep up (frozen here, so that its kernel queue overflows) loses
/// datagrams, and the run's summary says how many, on which node.
#[actix_web::test]
async fn datagrams_the_kernel_drops_are_counted_in_the_runs_summary() {
    ensure_images();
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite, &[]).await;
    let step = json!({"name": "gen", "container_name": loads::images::BUSYBOX, "run_max_time": 0,
                      "additional_command_args": "-c 'sleep 300'"});
    let (_, run_id) = app.start(json!({"name": "flood", "steps": [step]}), json!({})).await;
    app.wait_for_run(&run_id, 60, |r| record(r, "gen")["state"] == "running").await;
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let relay = docker(&["ps", "-q", "--filter", &format!("label=loads.run={run_id}"), "--filter", "label=loads.role=relay"]);
    let address = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &relay]);
    // Frozen, the relay reads nothing: 200 000 datagrams of 1 KiB are far more than any
    // receive queue it could get (32 MiB asked), so the kernel must drop some.
    docker(&["pause", &relay]);
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let line = format!("flood:1|c\n{}", "pad:1|c\n".repeat(127));
    let mut sent = 0u64;
    for _ in 0..200_000 {
        if socket.send_to(line.as_bytes(), (address.as_str(), 8125)).is_ok() {
            sent += 1;
        }
    }
    docker(&["unpause", &relay]);
    let (status, _) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.wait_finished(&run_id, 60).await;

    let (_, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let metrics = body["metrics"].as_array().unwrap();
    let count = |name: &str| metrics.iter().find(|m| m["metric"] == name).map(|m| m["count"].as_f64().unwrap());
    let drops = count("relay.kernel_drops").expect("relay.kernel_drops");
    let received = count("flood").unwrap_or(0.0);
    assert!(drops > 0.0, "{body:#}");
    assert_eq!(received + drops, sent as f64, "every datagram sent was either counted or counted as dropped: {body:#}");
    let per_node: Vec<&Value> = metrics.iter().filter(|m| m["metric"].as_str().unwrap().starts_with("relay.kernel_drops;node=")).collect();
    assert_eq!(per_node.len(), 1, "{body:#}");
    assert_eq!(per_node[0]["count"].as_f64(), Some(drops));
    app.assert_no_leftovers();
}
