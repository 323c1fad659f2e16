//! The `ec2` provider end to end: instances launched in the moto server with
//! their tags, type, region and user-data; every "instance" reached over SSH
//! at a real sshd on loopback (through `ec2.address_override`, never at an
//! address moto hands out), its host key checked, its Docker engine driven
//! through the SSH connection and its relay's metrics carried back by a
//! reverse forward; instances terminated, or pooled and reused, at the end.

use std::path::PathBuf;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, record, sh_step, Backend, TestApp};
use crate::instances::{client, moto, REGION};
use crate::sshd::{start_sshd, Sshd};

/// An instance as moto shows it.
#[derive(Debug)]
pub(crate) struct Seen {
    pub id: String,
    pub state: String,
    pub instance_type: String,
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Every instance tagged with `broker`, whatever its state.
pub(crate) async fn instances_of(broker: &str) -> Vec<Seen> {
    let out =
        client().describe_instances().filters(Filter::builder().name("tag:loads:broker").values(broker).build()).send().await.unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| Seen {
            id: i.instance_id().unwrap().to_string(),
            state: i.state().unwrap().name().unwrap().as_str().to_string(),
            instance_type: i.instance_type().unwrap().as_str().to_string(),
            tags: i.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap_or_default().to_string())).collect(),
        })
        .collect()
}

/// Waits until no instance of `broker` is pending or running.
pub(crate) async fn until_all_terminated(broker: &str) -> Vec<Seen> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let seen = instances_of(broker).await;
        if seen.iter().all(|i| i.state == "terminated" || i.state == "shutting-down") {
            return seen;
        }
        assert!(std::time::Instant::now() < deadline, "instances still up: {seen:?}");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A broker with `pool.provider = "ec2"` whose instances map, in launch order, to `nodes`.
struct Cloud {
    app: TestApp,
    node_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// `nodes`: the SSH address of each node in turn; `known`: the sshds whose host keys are on record.
async fn cloud(nodes: &[String], known: &[&Sshd], key: PathBuf, extra: &[(&str, &str)]) -> Cloud {
    ensure_images();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let lines: String = known.iter().map(|s| std::fs::read_to_string(s.known_hosts("kh")).unwrap()).collect();
    std::fs::write(&known_hosts, lines).unwrap();
    let node_dir = dir.path().join("node");
    // The sshd's machine needs no first boot: it says so as an image with Docker baked in would.
    std::fs::create_dir_all(&node_dir).unwrap();
    std::fs::write(node_dir.join("booted"), "0\n").unwrap();
    let (moto, key, known_hosts) = (moto(), key.display().to_string(), known_hosts.display().to_string());
    let tuning = format!("echo tuned >> {}/tuned", dir.path().display());
    let node_dir_text = node_dir.display().to_string();
    let overrides = nodes.join(",");
    let mut all: Vec<(&str, &str)> = vec![
        ("LOADS__POOL__PROVIDER", "ec2"),
        ("LOADS__POOL__LAUNCH_TIMEOUT_SECONDS", "30"),
        ("LOADS__EC2__ENDPOINT_URL", &moto),
        ("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-12c6146b"),
        ("LOADS__EC2__ADDRESS_OVERRIDE", &overrides),
        ("LOADS__EC2__OWNER", "tests"),
        ("LOADS__SSH__USER", "root"),
        ("LOADS__SSH__KEY_PATH", &key),
        ("LOADS__SSH__KNOWN_HOSTS", &known_hosts),
        ("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", "3"),
        ("LOADS__SSH__NODE_DIR", &node_dir_text),
        ("LOADS__SSH__NODE_TUNING", &tuning),
    ];
    all.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    all.extend_from_slice(extra);
    let app = TestApp::spawn(Backend::Sqlite, &all).await;
    Cloud { app, node_dir, _dir: dir }
}

pub(crate) fn gen_step(name: &str, count: u32, script: &str) -> Value {
    let mut step = sh_step(name, script);
    step["instance_count"] = json!(count);
    step["instance_type"] = json!("t3.micro");
    step["instance_region"] = json!(REGION);
    step
}

async fn run_plan(app: &TestApp, plan: Value) -> Value {
    let (_, run_id) = app.start(plan, json!({})).await;
    app.wait_finished(&run_id, 120).await
}

/// A service step and a two-node generator step run on three "instances": tags,
/// types, user-data and shutdown behaviour as asked; SSH with the host key
/// checked; the node tuning applied; the generator reaches the service by its
/// `dns_name` across nodes; its statsd counts reach the broker through the reverse forward;
/// every instance is terminated at the end and nothing is left on the engine.
#[actix_web::test]
async fn a_two_step_plan_runs_on_ec2_nodes_reached_over_ssh() {
    let sshd = start_sshd();
    let c = cloud(&[sshd.addr.to_string()], &[&sshd], sshd.client_key(), &[]).await;
    // A cloud node is a machine of its own: containers use its network, and reach
    // other steps' `dns_name` through /etc/hosts entries with their nodes' addresses.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut web = sh_step("web", "echo ips=$$HOST_IP,$$PRIVATE_IP; mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 127.0.0.1:$WEB_PORT -h /www");
    web["service"] = json!(true);
    web["dns_name"] = json!("web");
    web["instance_type"] = json!("t3.small");
    let gen = gen_step(
        "gen",
        2,
        "i=0; until wget -q -O /tmp/page http://web:$WEB_PORT/; do i=$$((i+1)); [ $$i -gt 100 ] && exit 7; usleep 100000; done; \
         grep -q hello-from-web /tmp/page && printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT",
    );
    let run = run_plan(&c.app, json!({"name": "cloud", "environment_data": {"WEB_PORT": port}, "steps": [web, gen]})).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let run_id = run["id"].as_str().unwrap();

    let seen = until_all_terminated(&c.app.broker_id).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    let web_id = record(&run, "web")["step_id"].as_str().unwrap().to_string();
    let gen_id = record(&run, "gen")["step_id"].as_str().unwrap().to_string();
    let mut types: Vec<(&str, &str)> = seen.iter().map(|i| (i.tags["loads:step"].as_str(), i.instance_type.as_str())).collect();
    types.sort();
    let mut expected = vec![(web_id.as_str(), "t3.small"), (gen_id.as_str(), "t3.micro"), (gen_id.as_str(), "t3.micro")];
    expected.sort();
    assert_eq!(types, expected);
    for i in &seen {
        assert_eq!(i.tags["Name"], format!("loads-{}-cloud", c.app.broker_id));
        assert_eq!(i.tags["Project"], "loads");
        assert_eq!(i.tags["Owner"], "tests");
        assert_eq!(i.tags["loads:run"], run_id);
        let expires = chrono::DateTime::parse_from_rfc3339(&i.tags["loads:expires-at"]).expect("expiry tag");
        assert!(expires > chrono::Utc::now() + chrono::Duration::minutes(10), "run time + grace ahead: {expires}");
        let attr =
            client().describe_instance_attribute().instance_id(&i.id).attribute(InstanceAttributeName::UserData).send().await.unwrap();
        let user_data = base64::engine::general_purpose::STANDARD.decode(attr.user_data().unwrap().value().unwrap()).unwrap();
        let user_data = String::from_utf8(user_data).unwrap();
        assert!(user_data.contains(&format!("echo {} > {}/expires-at", expires.timestamp(), c.node_dir.display())), "{user_data}");
        assert!(user_data.contains("poweroff"), "the dead-man's switch is armed");
        let attr = client()
            .describe_instance_attribute()
            .instance_id(&i.id)
            .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
            .send()
            .await
            .unwrap();
        assert_eq!(attr.instance_initiated_shutdown_behavior().unwrap().value(), Some("terminate"));
    }
    // HOST_IP is the instance's public address, PRIVATE_IP the one its peers reach it at
    // (with the test's address override, the sshd's).
    // (Terminated instances have given their public address back, so it is checked by its shape.)
    let (_, logs) = c.app.get(&format!("/api/v1/runs/{run_id}/logs?step=web")).await;
    let output = logs.to_string();
    let ips = output.split("ips=").nth(1).and_then(|rest| rest.split("\\n").next()).unwrap_or_else(|| panic!("{output}"));
    let (host_ip, private_ip) = ips.split_once(',').unwrap();
    assert_eq!(private_ip, "127.0.0.1", "{output}");
    assert!(host_ip.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()), "HOST_IP is the public address: {output}");
    let tuned = std::fs::read_to_string(c.node_dir.parent().unwrap().join("tuned")).expect("node tuning ran over ssh");
    assert_eq!(tuned.lines().count(), 3, "once per node");
    let deadline: i64 = std::fs::read_to_string(c.node_dir.join("expires-at")).unwrap().trim().parse().unwrap();
    assert!(deadline > chrono::Utc::now().timestamp(), "the switch's deadline is written on the node");

    let (_, metrics) = c.app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits" && m["step_name"] == "gen");
    assert_eq!(hits.map(|m| m["count"].as_f64()), Some(Some(2.0)), "both nodes' counts came through the forward: {metrics:#}");
    c.app.assert_no_leftovers();
}

/// A node whose host key is not on record is refused: the run fails saying so, and its instance is terminated.
#[actix_web::test]
async fn an_unknown_host_key_fails_the_run_and_terminates_its_instances() {
    let sshd = start_sshd();
    let c = cloud(&[sshd.addr.to_string()], &[], sshd.client_key(), &[]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_eq!(run["state"], "failed");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("unknown host key"), "{run:#}");
    assert_eq!(until_all_terminated(&c.app.broker_id).await.len(), 1);
}

/// Caps are checked before anything is launched.
#[actix_web::test]
async fn a_run_over_the_instance_cap_is_refused_before_any_launch() {
    let sshd = start_sshd();
    let c = cloud(&[sshd.addr.to_string()], &[&sshd], sshd.client_key(), &[("LOADS__EC2__MAX_INSTANCES", "2")]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("a", 2, "true"), gen_step("b", 1, "true")]})).await;
    assert_eq!(run["state"], "failed");
    assert!(run["failure_reason"].as_str().unwrap().contains("ec2.max_instances (2)"), "{run:#}");
    assert!(instances_of(&c.app.broker_id).await.is_empty(), "nothing was launched");
}

/// Of two nodes one never answers: with `min_nodes = 1` the step runs on the
/// other; with the default (all) the run fails naming the missing node. Either
/// way every instance is terminated.
#[actix_web::test]
async fn partial_capacity_follows_the_steps_min_nodes() {
    let sshd = start_sshd();
    let dead = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let c = cloud(&[sshd.addr.to_string(), dead], &[&sshd], sshd.client_key(), &[]).await;
    let mut step = gen_step("gen", 2, "echo ran");
    step["min_nodes"] = json!(1);
    let run = run_plan(&c.app, json!({"name": "p", "steps": [step]})).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let (_, logs) = c.app.get(&format!("/api/v1/runs/{}/logs", run["id"].as_str().unwrap())).await;
    let steps = logs["containers"].as_array().unwrap().iter().filter(|c| c["role"] == "step").count();
    assert_eq!(steps, 1, "the step ran on the node that answered: {logs:#}");
    assert_eq!(until_all_terminated(&c.app.broker_id).await.len(), 2);

    let run = run_plan(&c.app, json!({"name": "q", "steps": [gen_step("gen", 2, "echo ran")]})).await;
    assert_eq!(run["state"], "failed");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("only 1 of 2 nodes became ready (min_nodes 2)") && reason.contains("no answer"), "{run:#}");
    assert_eq!(until_all_terminated(&c.app.broker_id).await.len(), 4);
    c.app.assert_no_leftovers();
}

/// Runs a two-node step whose nodes are two sshds and stops one of them (with its
/// sessions) once both containers run; answers the finished run.
async fn lose_a_node_mid_run(prune_running: bool) -> (Value, String) {
    let (a, mut b) = (start_sshd(), start_sshd());
    let key_b = b.dir.path().join("authorized_keys");
    // Both sshds accept the same client key.
    std::fs::copy(a.dir.path().join("client_key.pub"), key_b).unwrap();
    let c = cloud(&[a.addr.to_string(), b.addr.to_string()], &[&a, &b], a.client_key(), &[]).await;
    let mut step = gen_step("gen", 2, "sleep 6");
    step["prune_running"] = json!(prune_running);
    let (_, run_id) = c.app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    // Once the broker has seen both containers start (its live logs list them), node b goes away.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, logs) = c.app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
        let started = logs["containers"].as_array().map_or(0, |all| all.iter().filter(|c| c["role"] == "step").count());
        if started == 2 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let (_, run) = c.app.get(&format!("/api/v1/runs/{run_id}")).await;
            panic!("the step's containers did not start: {run:#}");
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    b.kill_with_sessions();
    let run = c.app.wait_finished(&run_id, 60).await;
    assert_eq!(until_all_terminated(&c.app.broker_id).await.len(), 2);
    c.app.assert_no_leftovers();
    (run, run_id)
}

/// With `prune_running`, a node that stops answering is dropped and the step finishes on the others.
#[actix_web::test]
async fn a_node_lost_mid_run_is_pruned_when_the_step_allows_it() {
    let (run, _) = lose_a_node_mid_run(true).await;
    assert_eq!(run["state"], "completed", "{run:#}");
}

/// Without `prune_running`, a node that stops answering fails the step and the run.
#[actix_web::test]
async fn a_node_lost_mid_run_fails_the_step_without_prune_running() {
    let (run, _) = lose_a_node_mid_run(false).await;
    assert_eq!(run["state"], "failed");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("stopped answering"), "{run:#}");
}

/// With pooling on, the second run reuses the first one's instance (kept idle,
/// tagged as such, between them), and it is terminated once idle too long.
#[actix_web::test]
async fn pooled_instances_are_reused_then_terminated_when_idle() {
    let sshd = start_sshd();
    let c = cloud(
        &[sshd.addr.to_string()],
        &[&sshd],
        sshd.client_key(),
        &[("LOADS__POOL__POOLING", "true"), ("LOADS__POOL__IDLE_SECONDS", "5")],
    )
    .await;
    let plan = json!({"name": "p", "steps": [gen_step("gen", 1, "echo ran")]});
    let first = run_plan(&c.app, plan.clone()).await;
    assert_eq!(first["state"], "completed", "{first:#}");
    let seen = instances_of(&c.app.broker_id).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].state, "running", "kept for reuse");
    assert!(seen[0].tags.contains_key("loads:idle-since") && !seen[0].tags.contains_key("loads:run"), "{seen:?}");
    // The node's own switch moved with the tag: it does not power off while pooled.
    let tagged = chrono::DateTime::parse_from_rfc3339(&seen[0].tags["loads:expires-at"]).unwrap().timestamp();
    let on_node: i64 = std::fs::read_to_string(c.node_dir.join("expires-at")).unwrap().trim().parse().unwrap();
    assert_eq!(on_node, tagged, "the switch's file says what the tag says");

    let second = run_plan(&c.app, plan).await;
    assert_eq!(second["state"], "completed", "{second:#}");
    let again = instances_of(&c.app.broker_id).await;
    assert_eq!(again.len(), 1, "no new instance: {again:?}");
    assert_eq!(again[0].id, seen[0].id);

    let gone = until_all_terminated(&c.app.broker_id).await;
    assert_eq!(gone.len(), 1);
    c.app.assert_no_leftovers();
}

/// `DELETE /api/run/{id}?terminate=1` (the original client's `abort --terminate`)
/// on a live run: with pooling on, its instance is terminated, not kept for reuse.
#[actix_web::test]
async fn abort_with_terminate_terminates_instances_pooling_would_keep() {
    let sshd = start_sshd();
    let c = cloud(&[sshd.addr.to_string()], &[&sshd], sshd.client_key(), &[("LOADS__POOL__POOLING", "true")]).await;
    let (_, run_id) = c.app.start(json!({"name": "p", "steps": [gen_step("gen", 1, "sleep 300")]}), json!({})).await;
    c.app.wait_for_run(&run_id, 120, |r| crate::helpers::record(r, "gen")["state"] == "running").await;
    let (status, body) = c.app.delete(&format!("/api/run/{run_id}?terminate=1")).await;
    assert_eq!(status, awc::http::StatusCode::OK, "{body}");
    assert_eq!(c.app.wait_finished(&run_id, 120).await["state"], "aborted");
    let gone = until_all_terminated(&c.app.broker_id).await;
    assert_eq!(gone.len(), 1, "the run's one instance, terminated: {gone:?}");
    c.app.assert_no_leftovers();
}

/// The fault-injecting proxy (`tests/ec2_fault_proxy.py`) in front of moto; its log is one JSON line per RunInstances.
struct FaultProxy {
    child: std::process::Child,
    url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fault_proxy(args: &[&str]) -> FaultProxy {
    use std::io::BufRead;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ec2_fault_proxy.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .args(["--upstream", &moto()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the proxy starts").unwrap();
    let port = first.strip_prefix("listening ").expect("listening PORT").to_string();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(serde_json::from_str(&line).unwrap());
        }
    });
    FaultProxy { child, url: format!("http://127.0.0.1:{port}"), log }
}

/// EC2 throttling the first launches: the broker backs off and tries again, and the run completes.
#[actix_web::test]
async fn throttled_launches_are_retried_with_backoff() {
    let sshd = start_sshd();
    let proxy = fault_proxy(&["--fail", "RequestLimitExceeded:2"]);
    let c = cloud(
        &[sshd.addr.to_string()],
        &[&sshd],
        sshd.client_key(),
        &[("LOADS__EC2__ENDPOINT_URL", &proxy.url), ("LOADS__EC2__BACKOFF_MS", "50")],
    )
    .await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let answers: Vec<String> = proxy.log.lock().unwrap().iter().map(|l| l["answer"].as_str().unwrap().to_string()).collect();
    assert_eq!(answers, ["RequestLimitExceeded", "RequestLimitExceeded", "passed"]);
    until_all_terminated(&c.app.broker_id).await;
}

/// EC2 lacking capacity for every node: after the retries the broker asks for at
/// least the step's `min_nodes`, and the step runs on what it got.
#[actix_web::test]
async fn short_capacity_falls_back_to_min_nodes() {
    let sshd = start_sshd();
    let proxy = fault_proxy(&["--capacity", "1"]);
    let extra = [("LOADS__EC2__ENDPOINT_URL", proxy.url.as_str()), ("LOADS__EC2__BACKOFF_MS", "20"), ("LOADS__EC2__LAUNCH_ATTEMPTS", "3")];
    let c = cloud(&[sshd.addr.to_string()], &[&sshd], sshd.client_key(), &extra).await;
    let mut step = gen_step("gen", 3, "true");
    step["min_nodes"] = json!(1);
    let run = run_plan(&c.app, json!({"name": "p", "steps": [step]})).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let asked: Vec<(u64, String)> =
        proxy.log.lock().unwrap().iter().map(|l| (l["min"].as_u64().unwrap(), l["answer"].as_str().unwrap().to_string())).collect();
    let short = "InsufficientInstanceCapacity".to_string();
    assert_eq!(asked, [(3, short.clone()), (3, short.clone()), (3, short), (1, "passed".into())]);
    assert!(!instances_of(&c.app.broker_id).await.is_empty());
    until_all_terminated(&c.app.broker_id).await;
}

/// A launch request EC2 never answers is abandoned after `ec2.request_timeout_seconds` and tried again.
#[actix_web::test]
async fn a_hung_launch_request_times_out_and_is_tried_again() {
    let sshd = start_sshd();
    let proxy = fault_proxy(&["--delay", "1:8"]);
    let extra =
        [("LOADS__EC2__ENDPOINT_URL", proxy.url.as_str()), ("LOADS__EC2__REQUEST_TIMEOUT_SECONDS", "2"), ("LOADS__EC2__BACKOFF_MS", "50")];
    let c = cloud(&[sshd.addr.to_string()], &[&sshd], sshd.client_key(), &extra).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let answers: Vec<String> = proxy.log.lock().unwrap().iter().map(|l| l["answer"].as_str().unwrap().to_string()).collect();
    assert_eq!(answers, ["hung", "passed"]);
    until_all_terminated(&c.app.broker_id).await;
}

/// EC2 not knowing its new instances for a while (`InvalidInstanceID.NotFound`, its
/// eventual consistency) is waited out: the run completes.
#[actix_web::test]
async fn instances_ec2_does_not_know_yet_are_waited_for() {
    let sshd = start_sshd();
    let proxy = fault_proxy(&["--not-found", "2"]);
    let c = cloud(&[sshd.addr.to_string()], &[&sshd], sshd.client_key(), &[("LOADS__EC2__ENDPOINT_URL", &proxy.url)]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let described: Vec<String> =
        proxy.log.lock().unwrap().iter().filter_map(|l| l["describe"].as_str().map(str::to_string)).take(3).collect();
    assert_eq!(described, ["InvalidInstanceID.NotFound", "InvalidInstanceID.NotFound", "passed"]);
    until_all_terminated(&c.app.broker_id).await;
}

/// A type that cannot run loads' nodes is refused before anything is launched, naming
/// why (an arm64-only type: the relay is x86_64); a step that names no type gets a current one.
#[actix_web::test]
async fn instance_types_are_checked_against_the_relay_and_the_ami() {
    let sshd = start_sshd();
    let c = cloud(&[sshd.addr.to_string()], &[&sshd], sshd.client_key(), &[]).await;
    let mut graviton = gen_step("gen", 1, "true");
    graviton["instance_type"] = json!("t4g.micro");
    let run = run_plan(&c.app, json!({"name": "arm", "steps": [graviton]})).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("\"t4g.micro\" is arm64 only") && reason.contains("x86_64"), "{reason}");
    assert!(instances_of(&c.app.broker_id).await.is_empty(), "nothing launched");

    let mut default = gen_step("gen", 1, "true");
    default.as_object_mut().unwrap().remove("instance_type");
    let run = run_plan(&c.app, json!({"name": "default-type", "steps": [default]})).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let seen = until_all_terminated(&c.app.broker_id).await;
    assert_eq!(seen.iter().map(|i| i.instance_type.as_str()).collect::<Vec<_>>(), ["t3.micro"], "an HVM x86_64 type by default");
}

/// In a subnet that gives no public address, a broker that reaches nodes at their
/// public address asks for one (on the network interface); in one that does, it does not.
#[actix_web::test]
async fn a_public_address_is_asked_for_where_the_subnet_gives_none() {
    let sshd = start_sshd();
    let vpc = client()
        .describe_vpcs()
        .send()
        .await
        .unwrap()
        .vpcs()
        .iter()
        .find(|v| v.is_default() == Some(true))
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let third = 100 + (uuid::Uuid::new_v4().as_u128() % 150) as u8;
    let private = client().create_subnet().vpc_id(&vpc).cidr_block(format!("172.31.{third}.0/24")).send().await.unwrap();
    let subnet = private.subnet().unwrap().subnet_id().unwrap().to_string();
    let proxy = fault_proxy(&[]);
    let c = cloud(
        &[sshd.addr.to_string()],
        &[&sshd],
        sshd.client_key(),
        &[("LOADS__EC2__ENDPOINT_URL", &proxy.url), ("LOADS__EC2__REGIONS__US_WEST_2__SUBNET_ID", &subnet)],
    )
    .await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let asked: Vec<bool> = proxy.log.lock().unwrap().iter().filter_map(|l| l["public_ip"].as_bool()).collect();
    assert_eq!(asked, [true]);
    until_all_terminated(&c.app.broker_id).await;
    let _ = client().delete_subnet().subnet_id(&subnet).send().await;
}

/// A quota error is not retried: the step fails at once with AWS's code and message.
#[actix_web::test]
async fn a_quota_error_fails_the_step_with_the_aws_message() {
    let sshd = start_sshd();
    let proxy = fault_proxy(&["--fail", "VcpuLimitExceeded:5"]);
    let c = cloud(&[sshd.addr.to_string()], &[&sshd], sshd.client_key(), &[("LOADS__EC2__ENDPOINT_URL", &proxy.url)]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "echo quota")]})).await;
    assert_eq!(run["state"], "failed");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("VcpuLimitExceeded: You have requested more vCPU capacity"), "{reason}");
    assert_eq!(proxy.log.lock().unwrap().len(), 1, "not retried");
    assert!(instances_of(&c.app.broker_id).await.is_empty());
}

/// A broker killed (SIGKILL) while a step runs on an EC2 node, and started again:
/// it takes the instance back by its tags (SSH again, the metrics forward again
/// on the same port), the step ends at its `run_max_time` from the recorded
/// start, every count arrives once, and the instance is terminated; none is launched anew.
#[actix_web::test]
async fn a_run_on_ec2_nodes_is_carried_on_after_a_broker_restart() {
    ensure_images();
    let sshd = start_sshd();
    let dir = tempfile::tempdir().unwrap();
    let known = sshd.known_hosts("kh");
    let b = crate::recovery::Restartable::new();
    let (db, broker, api) = (b.db.clone(), b.broker.clone(), &b.api);
    let (moto, key, known, addr) = (moto(), sshd.client_key().display().to_string(), known.display().to_string(), sshd.addr.to_string());
    std::fs::create_dir_all(dir.path().join("node")).unwrap();
    std::fs::write(dir.path().join("node/booted"), "0\n").unwrap();
    let node_dir = dir.path().join("node").display().to_string();
    let settings = [
        ("LOADS__POOL__PROVIDER", "ec2"),
        ("LOADS__EC2__ENDPOINT_URL", moto.as_str()),
        ("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-12c6146b"),
        ("LOADS__EC2__ADDRESS_OVERRIDE", addr.as_str()),
        ("LOADS__SSH__USER", "root"),
        ("LOADS__SSH__KEY_PATH", key.as_str()),
        ("LOADS__SSH__KNOWN_HOSTS", known.as_str()),
        ("LOADS__SSH__NODE_DIR", node_dir.as_str()),
        ("LOADS__SSH__NODE_TUNING", "echo tuned"),
    ];
    let mut first = b.serve(&settings);
    let report = "printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT";
    let mut step = gen_step("gen", 1, &format!("{report}; sleep 6; {report}; sleep 300"));
    step["run_max_time"] = json!(12);
    let project = api.post("/api/v1/projects", json!({"name": "cloud-crash", "plans": [{"name": "p", "steps": [step]}]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();
    let run_id = api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();
    api.wait_run(&run_id, "gen did not start", |r| record(r, "gen")["state"] == "running").await;
    let store = loads_actors::store::connect(&db).await.unwrap();
    let id = uuid::Uuid::parse_str(&run_id).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let counted =
            loads_actors::store::runs::recovery(&store, id).await.unwrap().metrics_state.unwrap_or_default().contains("\"hits\":1");
        let tagged = instances_of(&broker).await.iter().all(|i| i.tags.contains_key("loads:forward"));
        if counted && tagged {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the first count was not stored or the node not tagged");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = b.serve(&settings);
    let run = api.wait_run(&run_id, "the run did not finish", |r| r["completed_at"].is_string()).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let gen = record(&run, "gen");
    let ran_for = crate::helpers::seconds_between(&gen["started_at"], &gen["completed_at"]);
    assert!((11.0..17.0).contains(&ran_for), "stopped at run_max_time from the recorded start: {ran_for}s");
    let metrics = api.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits").map(|m| m["count"].clone());
    assert_eq!(hits, Some(json!(2.0)), "one count before the restart, one after, through the forward opened again: {metrics:#}");
    let seen = until_all_terminated(&broker).await;
    assert_eq!(seen.len(), 1, "the instance was taken back, not replaced: {seen:?}");
    second.kill().unwrap();
    second.wait().unwrap();
    let (containers, networks) = crate::helpers::leftovers(&broker);
    assert!(containers.is_empty() && networks.is_empty(), "left behind: {containers:?} {networks:?}");
}
