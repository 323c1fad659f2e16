//! A broker killed with SIGKILL in the middle of a run, and started again:
//! the run is carried on (containers adopted by their labels, the schedule
//! kept from the recorded times, the feed's numbers continuing, the metrics
//! totals kept) and finishes as it would have, leaving nothing behind.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, eventually, leftovers, record, seconds_between, sh_step, LabelGuard};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A broker to kill and start again: its database file, id, ports and API. What it
/// leaves on the engine is removed when this is dropped.
pub struct Restartable {
    _dir: tempfile::TempDir,
    pub db: String,
    pub broker: String,
    pub port: u16,
    pub ingest: u16,
    pub api: Api,
    _cleanup: LabelGuard,
}

impl Restartable {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("loads.db").display());
        let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (port, ingest) = (free_port(), free_port());
        let api = Api { base: format!("http://127.0.0.1:{port}") };
        Self { _dir: dir, db, _cleanup: LabelGuard(broker.clone()), broker, port, ingest, api }
    }

    /// Starts `loads serve` on this broker's database and ports, with more `LOADS__...` settings.
    pub fn serve(&self, extra: &[(&str, &str)]) -> Child {
        serve_with(&self.db, &self.broker, self.port, self.ingest, extra)
    }
}

/// The real `loads serve`, with a fixed ingest port so the relays of a carried-on run reach the new process.
fn serve_with(db: &str, broker: &str, port: u16, ingest_port: u16, extra: &[(&str, &str)]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loads"))
        .arg("serve")
        .envs(extra.iter().copied())
        .env("LOADS__DATABASE__URL", db)
        .env("LOADS__BROKER__ID", broker)
        .env("LOADS__SERVER__PORT", port.to_string())
        .env("LOADS__METRICS__INGEST_PORT", ingest_port.to_string())
        .env("LOADS__DOCKER__STOP_GRACE_SECONDS", "1")
        .env("LOADS__LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loads serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines.next().expect("loads serve exited early").unwrap();
        if line.contains("loads listening") {
            break;
        }
        assert!(Instant::now() < deadline, "loads serve did not start");
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

/// The API of a broker that is killed and started again: a new connection for every request.
pub struct Api {
    pub base: String,
}

impl Api {
    fn client(&self) -> awc::Client {
        awc::Client::builder().disable_timeout().finish()
    }

    pub async fn get(&self, path: &str) -> Value {
        let mut r = self.client().get(format!("{}{path}", self.base)).send().await.expect("request");
        serde_json::from_slice(&r.body().limit(4 << 20).await.unwrap()).unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let mut r = self.client().post(format!("{}{path}", self.base)).send_json(&body).await.expect("request");
        serde_json::from_slice(&r.body().await.unwrap()).unwrap()
    }

    /// Polls the run until `done` holds, at most a minute.
    pub async fn wait_run(&self, run_id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        eventually(60, async || {
            let run = self.get(&format!("/api/v1/runs/{run_id}")).await;
            match done(&run) {
                true => Ok(run),
                false => Err(format!("{what}: {run:#}")),
            }
        })
        .await
    }
}

/// Three steps: one over before the crash, one running across it on two nodes
/// (reporting to statsd before and after), one due only after it. Killed and
/// started again, the broker carries the run on: the running step's containers
/// are adopted, not started again, and stop at their `run_max_time` counted from
/// the recorded start; the late step starts at the run's start plus its delay;
/// the feed's numbers go on from where they were; every count arrives once.
#[actix_web::test]
async fn a_broker_killed_mid_run_carries_the_run_on_when_it_starts_again() {
    ensure_images();
    let b = Restartable::new();
    let (db, broker, port, api) = (b.db.clone(), b.broker.clone(), b.port, &b.api);

    let mut first = b.serve(&[]);
    let report = "printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT";
    let mut long = sh_step("long", &format!("{report}; sleep 6; {report}; sleep 300"));
    long["instance_count"] = json!(2);
    long["run_max_time"] = json!(12);
    let mut late = sh_step("late", "echo late");
    late["run_delay"] = json!(9);
    let plan = json!({"name": "p", "steps": [sh_step("early", "echo early"), long, late]});
    let project = api.post("/api/v1/projects", json!({"name": "crash", "plans": [plan]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();
    let run_id = api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();

    // Before the crash: `early` over, `long` running on both nodes, its first counts stored.
    api.wait_run(&run_id, "early did not finish", |r| {
        record(r, "early")["state"] == "completed" && record(r, "long")["state"] == "running"
    })
    .await;
    let store = loads_actors::store::connect(&db).await.unwrap();
    let id = uuid::Uuid::parse_str(&run_id).unwrap();
    eventually(30, async || {
        let saved = loads_actors::store::runs::recovery(&store, id).await.unwrap();
        let text = saved.metrics_state.unwrap_or_default();
        match text.contains("\"hits\":2") {
            true => Ok(()),
            false => Err(format!("the first counts were not stored: {text}")),
        }
    })
    .await;
    let url = format!("ws://127.0.0.1:{port}/api/v1/runs/{run_id}/events");
    let (_, mut socket) = awc::Client::new().ws(url.clone()).connect().await.expect("feed");
    let mut seen = 0;
    while let Ok(Some(Ok(awc::ws::Frame::Text(text)))) = tokio::time::timeout(Duration::from_millis(500), socket.next()).await {
        let event: Value = serde_json::from_slice(&text).unwrap();
        seen = seen.max(event["seq"].as_u64().unwrap_or(0));
    }
    assert!(seen > 0);
    first.kill().unwrap();
    first.wait().unwrap();
    drop(socket);
    assert_eq!(leftovers(&broker).0.len(), 5, "long's two relays and step containers and late's relay outlive the broker");

    let mut second = b.serve(&[]);
    let (_, mut socket) = awc::Client::new().ws(format!("{url}?since={seen}")).connect().await.expect("feed after the restart");
    let mut next = Vec::new();
    while next.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await {
            Ok(Some(Ok(awc::ws::Frame::Text(text)))) => {
                let event: Value = serde_json::from_slice(&text).unwrap();
                if event["type"] != "snapshot" {
                    next.push(event);
                }
            }
            other => panic!("the feed of the carried-on run stopped: {other:?}"),
        }
    }
    assert!(next.iter().all(|e| e["seq"].as_u64().unwrap() > seen), "numbers go on after {seen}: {next:?}");
    assert!(next.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("carried on"))), "{next:?}");

    let run = api.wait_run(&run_id, "the run did not finish", |r| r["completed_at"].is_string()).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let (long, late) = (record(&run, "long"), record(&run, "late"));
    let ran_for = seconds_between(&long["started_at"], &long["completed_at"]);
    assert!((11.0..16.0).contains(&ran_for), "long stopped at its run_max_time from its recorded start: {ran_for}s");
    let late_after = seconds_between(&run["started_at"], &late["started_at"]);
    assert!((8.5..11.0).contains(&late_after), "late started at the run's start + run_delay: {late_after}s");
    let logs = api.get(&format!("/api/v1/runs/{run_id}/logs?step=long")).await;
    let steps = logs["containers"].as_array().unwrap().iter().filter(|c| c["role"] == "step").count();
    assert_eq!(steps, 2, "adopted, not started again: {logs:#}");
    let metrics = api.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits").map(|m| m["count"].clone());
    assert_eq!(hits, Some(json!(4.0)), "two counts per node, before and after the restart, each once: {metrics:#}");
    let (containers, networks) = leftovers(&broker);
    assert!(containers.is_empty() && networks.is_empty(), "left behind: {containers:?} {networks:?}");
    second.kill().unwrap();
    second.wait().unwrap();
}

/// A small deterministic random number generator (xorshift64*), so the chaos test's kill points repeat.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Chaos: a run with a service step and a delayed generator, the broker killed
/// with SIGKILL at a random moment (fixed seed, six times, anywhere from just
/// after the run is asked for to its end) and started again. After each, the
/// run ends completed, or failed with a reason, and nothing of it is left.
#[actix_web::test]
async fn runs_survive_a_broker_killed_at_random_moments() {
    ensure_images();
    let b = Restartable::new();
    let (broker, api) = (b.broker.clone(), &b.api);
    let mut service = sh_step("service", "sleep 300");
    service["service"] = json!(true);
    let mut load = sh_step("load", "sleep 3");
    load["run_delay"] = json!(1);
    load["instance_count"] = json!(2);
    let mut broker_process = b.serve(&[]);
    let project = api.post("/api/v1/projects", json!({"name": "chaos", "plans": [{"name": "p", "steps": [service, load]}]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();

    let mut rng = Rng(0x5eed_1234_abcd_0042);
    for round in 0..6 {
        // Every third round early (pending or initializing), the others anywhere in the run.
        let kill_after = Duration::from_millis(if round % 3 == 0 { rng.below(400) } else { rng.below(7000) });
        let run_id = api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();
        actix_web::rt::time::sleep(kill_after).await;
        broker_process.kill().unwrap();
        broker_process.wait().unwrap();
        broker_process = b.serve(&[]);
        let run = api.wait_run(&run_id, &format!("round {round} (killed after {kill_after:?})"), |r| r["completed_at"].is_string()).await;
        eprintln!("round {round}: killed after {kill_after:?}; the run ended {} {}", run["state"], run["failure_reason"]);
        match run["state"].as_str() {
            Some("completed") => {}
            Some("failed") => assert!(run["failure_reason"].as_str().is_some_and(|r| !r.is_empty()), "{run:#}"),
            other => panic!("round {round}: the run ended {other:?}: {run:#}"),
        }
        let filter = format!("label=loads.run={run_id}");
        let left = |args: &[&str]| {
            let out = Command::new("docker").args(args).args(["--filter", &filter]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        eventually(10, async || match left(&["ps", "-aq"]) + left(&["network", "ls", "-q"]) {
            0 => Ok(()),
            n => Err(format!("round {round}: {n} of the run's containers and networks remain")),
        })
        .await;
    }
    broker_process.kill().unwrap();
    broker_process.wait().unwrap();
    let (containers, networks) = leftovers(&broker);
    assert!(containers.is_empty() && networks.is_empty(), "left behind: {containers:?} {networks:?}");
}
