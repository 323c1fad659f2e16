//! Careless and hostile generators against a real `loads serve`: floods that
//! once took the broker's or a relay's memory, answered by caps that count what
//! they did not keep and a verdict that says so.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{ensure_images, leftovers, sh_step};
use crate::recovery::Restartable;

/// The most memory a process has held, from its `VmHWM`, in MiB.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the broker's status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
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

/// A generator that puts a request id in its timer's name (a new series per request)
/// at 100 requests a second for a minute: the step keeps `metrics.max_series_per_step`
/// series, counts the rest under the name's pattern, and its verdict is `invalid`
/// saying so; the broker and the relay stay small.
#[actix_web::test]
async fn a_request_id_in_a_timer_name_is_capped_counted_and_makes_the_run_invalid() {
    ensure_images();
    let b = Restartable::new();
    let mut serve = b.serve(&[]);
    let api = &b.api;
    // Each second, 100 timings, each under a name of its own, over one TCP connection.
    let script = "i=0; while [ $$i -lt 60 ]; do j=0; while [ $$j -lt 100 ]; do echo \"req.$$((i*100+j)).lat:12|ms\"; j=$$((j+1)); done \
                  | nc -w 1 $$STATSD_HOST $$STATSD_PORT; i=$$((i+1)); sleep 1; done; sleep 2";
    let mut gen = sh_step("gen", script);
    gen["run_max_time"] = json!(120);
    let project = api.post("/api/v1/projects", json!({"name": "ids", "plans": [{"name": "p", "steps": [gen]}]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();
    let run_id = api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();

    // The relay, once it runs, and its memory as the run goes.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut relay = None;
    let mut relay_peak: f64 = 0.0;
    let run = loop {
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
        if ["completed", "failed", "aborted"].contains(&run["state"].as_str().unwrap_or("")) {
            break run;
        }
        assert!(Instant::now() < deadline, "the run did not end: {run:#}");
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    };
    let broker_peak = peak_mib(serve.id());
    println!("broker peak {broker_peak:.0} MiB, relay peak {relay_peak:.0} MiB");
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["verdict"], "invalid", "{run:#}");
    let reason = run["verdict_reason"].as_str().unwrap();
    assert!(reason.contains("4000 value(s) of step \"gen\" not kept") && reason.contains("req.*.lat 4000"), "{reason}");

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
