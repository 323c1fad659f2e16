//! EC2 nodes as they really boot (`vm`): a virtual machine per instance, with
//! the stock sshd, a default user who needs `sudo` for Docker, no Docker until
//! the launch's user-data installs it, and cloud-init running that user-data
//! only after sshd already answers. These tests are slow (software emulation):
//! each reaches its node only through what a real instance offers.

use std::time::Instant;

use serde_json::{json, Value};

use crate::ec2_nodes::{gen_step, instances_of, until_all_terminated};
use crate::helpers::{ensure_images, record, sh_step, Backend, TestApp};
use crate::instances::moto;
use crate::vm::{Boot, Farm};

/// Seconds a booting node may take at each stage here (software emulation, 2 cores shared with the suite).
const SLOW: &str = "900";

/// A broker whose instances are the farm's VMs, reached as the image's default user
/// with host keys recorded on first use (a fresh instance's keys are made at its first boot).
async fn broker_for(farm_nodes: usize, boot: Boot) -> (TestApp, Farm, tempfile::TempDir) {
    broker_with(farm_nodes, boot, &[]).await
}

async fn broker_with(farm_nodes: usize, boot: Boot, extra: &[(&str, &str)]) -> (TestApp, Farm, tempfile::TempDir) {
    broker_reaching(farm_nodes, boot, &[], extra).await
}

/// [`broker_with`], whose instances are also reached, in turn after the farm's, at
/// `unreachable` addresses where nothing answers.
async fn broker_reaching(
    farm_nodes: usize,
    boot: Boot,
    unreachable: &[String],
    extra: &[(&str, &str)],
) -> (TestApp, Farm, tempfile::TempDir) {
    ensure_images();
    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let farm = Farm::start(&broker, farm_nodes, boot);
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts").display().to_string();
    let overrides = farm.addresses.iter().chain(unreachable).cloned().collect::<Vec<_>>().join(",");
    let (moto, key) = (moto(), farm.key.display().to_string());
    let settings = [
        ("LOADS__BROKER__ID", broker.as_str()),
        ("LOADS__POOL__PROVIDER", "ec2"),
        ("LOADS__POOL__LAUNCH_TIMEOUT_SECONDS", SLOW),
        ("LOADS__DOCKER__PREPARE_TIMEOUT_SECONDS", SLOW),
        ("LOADS__EC2__ENDPOINT_URL", &moto),
        ("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-12c6146b"),
        ("LOADS__EC2__ADDRESS_OVERRIDE", &overrides),
        ("LOADS__SSH__USER", "debian"),
        ("LOADS__SSH__KEY_PATH", &key),
        ("LOADS__SSH__KNOWN_HOSTS", &known_hosts),
        ("LOADS__SSH__RECORD_NEW_HOSTS", "true"),
        ("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", SLOW),
    ];
    let mut settings = settings.to_vec();
    settings.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    settings.extend_from_slice(extra);
    let app = TestApp::spawn(Backend::Sqlite, &settings).await;
    assert_eq!(app.broker_id, broker);
    (app, farm, dir)
}

/// A first run on a node that boots as a stock instance does: the broker waits for
/// the user-data to finish, drives Docker through `sudo`, and the relay's counts
/// come back through a forward on the node's loopback (its sshd binds nothing else).
/// The host key is recorded under the instance's id and forgotten once it is terminated.
#[actix_web::test]
async fn a_first_run_on_a_node_that_boots_like_an_instance_works() {
    let (app, farm, dir) = broker_for(1, Boot::Stock).await;
    let started = Instant::now();
    let step = gen_step("gen", 1, "printf 'hits:1|c\\nhits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT; sleep 5");
    let (_, run_id) = app.start(json!({"name": "first-boot", "steps": [step]}), json!({})).await;
    let running = app
        .wait_for_run(&run_id, 900, |r| ["running", "completed", "failed"].contains(&record(r, "gen")["state"].as_str().unwrap_or("")))
        .await;
    let instance = instances_of(&app.broker_id).await.first().map(|i| i.id.clone()).expect("an instance was launched");
    let known = std::fs::read_to_string(dir.path().join("known_hosts")).unwrap_or_default();
    assert!(known.lines().any(|l| l.starts_with(&format!("{instance} "))), "recorded under the instance id: {known:?}\n{running:#}");
    let run = app.wait_finished(&run_id, 900).await;
    assert_eq!(run["state"], "completed", "{run:#}\n{running:#}\nconsole:\n{}", farm.console(&instance));
    eprintln!("first run on a booting node: {:.0} s", started.elapsed().as_secs_f64());

    let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits").map(|m| m["count"].clone());
    assert_eq!(hits, Some(json!(2.0)), "the counts came through the node's loopback forward: {metrics:#}");
    let seen = until_all_terminated(&app.broker_id).await;
    assert_eq!(seen.len(), 1);
    let known = std::fs::read_to_string(dir.path().join("known_hosts")).unwrap_or_default();
    assert!(!known.contains(&instance), "a terminated instance's key is forgotten: {known}");
    app.assert_no_leftovers();
}

/// A first boot whose package install fails (no Docker packages, no network) fails
/// the node as soon as the user-data stops, with the last lines of its log in the
/// step's reason, rather than after the launch timeout.
#[actix_web::test]
async fn a_boot_that_breaks_fails_the_node_with_the_last_lines_of_its_log() {
    let (app, farm, _dir) = broker_for(1, Boot::BrokenPackages).await;
    let step = gen_step("gen", 1, "true");
    let (_, run_id) = app.start(json!({"name": "broken-boot", "steps": [step]}), json!({})).await;
    let run = app.wait_finished(&run_id, 900).await;
    let instance = instances_of(&app.broker_id).await.first().map(|i| i.id.clone()).unwrap_or_default();
    assert_eq!(run["state"], "failed", "{run:#}\nconsole:\n{}", farm.console(&instance));
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("the boot script failed"), "{reason}");
    assert!(reason.contains("docker.io"), "the log's last lines name what failed: {reason}");
    assert!(reason.contains("boot failed (exit"), "{reason}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 1);
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !farm.running().is_empty() {
        assert!(Instant::now() < deadline, "the terminated instance's VM is still running");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// With pooling, a node that booted for one run is kept for the next: released, its
/// own dead-man's switch file (root's, written through `sudo`) moves with its idle
/// tag, so it does not power off while pooled; the next run reuses it (no launch,
/// no second boot, no second tuning) and moves the deadline again; idle too long,
/// it is terminated.
#[actix_web::test]
async fn a_pooled_node_keeps_its_switch_in_step_with_its_tags_and_is_reused() {
    let tuning = ("LOADS__SSH__NODE_TUNING", "echo tuned >> /var/lib/loads/tuned");
    let settings = [("LOADS__POOL__POOLING", "true"), ("LOADS__POOL__IDLE_SECONDS", "30"), tuning];
    let (app, farm, _dir) = broker_with(1, Boot::Stock, &settings).await;
    let plan = json!({"name": "pooled", "steps": [gen_step("gen", 1, "true")]});
    let (_, run_id) = app.start(plan.clone(), json!({})).await;
    let first = app.wait_finished(&run_id, 900).await;
    let seen = instances_of(&app.broker_id).await;
    assert_eq!(first["state"], "completed", "{first:#}\nconsole:\n{}", farm.console(&seen[0].id));
    assert_eq!((seen.len(), seen[0].state.as_str()), (1, "running"), "kept for reuse");
    assert!(seen[0].tags.contains_key("loads:idle-since") && !seen[0].tags.contains_key("loads:run"), "tagged idle: {seen:?}");
    let tagged = chrono::DateTime::parse_from_rfc3339(&seen[0].tags["loads:expires-at"]).unwrap().timestamp();
    let on_node = farm.ssh(&farm.addresses[0], "cat /var/lib/loads/expires-at");
    assert_eq!(on_node.trim(), tagged.to_string(), "the switch's file moved with the idle tag");

    let (_, run_id) = app.start(plan, json!({})).await;
    let second = app.wait_finished(&run_id, 300).await;
    assert_eq!(second["state"], "completed", "{second:#}");
    let again = instances_of(&app.broker_id).await;
    assert_eq!(again.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [seen[0].id.as_str()], "reused, not launched");
    let rearmed: i64 = farm.ssh(&farm.addresses[0], "cat /var/lib/loads/expires-at").trim().parse().unwrap_or(0);
    let retagged = chrono::DateTime::parse_from_rfc3339(&again[0].tags["loads:expires-at"]).unwrap().timestamp();
    assert_eq!(rearmed, retagged, "released again: the file follows the tag");
    assert_eq!(farm.ssh(&farm.addresses[0], "cat /var/lib/loads/tuned"), "tuned\n", "tuned once per instance, not once per run");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 1);
}

/// A broker killed while a step runs on a node that booted as an instance does, and
/// started again: it reaches the node afresh (its recorded host key, `sudo` for
/// Docker), takes the relay back, opens the metrics forward again on the node's
/// loopback at the same port, and every count arrives once; nothing is launched anew.
#[actix_web::test]
async fn a_run_on_a_booted_node_is_carried_on_after_a_broker_restart() {
    ensure_images();
    let b = crate::recovery::Restartable::new();
    let farm = Farm::start(&b.broker, 1, Boot::Stock);
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts").display().to_string();
    let (moto, key, overrides) = (moto(), farm.key.display().to_string(), farm.addresses.join(","));
    let settings = [
        ("LOADS__POOL__PROVIDER", "ec2"),
        ("LOADS__POOL__LAUNCH_TIMEOUT_SECONDS", SLOW),
        ("LOADS__DOCKER__PREPARE_TIMEOUT_SECONDS", SLOW),
        ("LOADS__EC2__ENDPOINT_URL", moto.as_str()),
        ("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-12c6146b"),
        ("LOADS__EC2__ADDRESS_OVERRIDE", overrides.as_str()),
        ("LOADS__SSH__USER", "debian"),
        ("LOADS__SSH__KEY_PATH", key.as_str()),
        ("LOADS__SSH__KNOWN_HOSTS", known_hosts.as_str()),
        ("LOADS__SSH__RECORD_NEW_HOSTS", "true"),
        ("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", SLOW),
    ];
    let mut first = b.serve(&settings);
    let report = "printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT";
    let mut step = gen_step("gen", 1, &format!("{report}; sleep 20; {report}; sleep 600"));
    step["run_max_time"] = json!(60);
    let project = b.api.post("/api/v1/projects", json!({"name": "vm-crash", "plans": [{"name": "p", "steps": [step]}]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();
    let run_id = b.api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();
    let store = loads_actors::store::connect(&b.db).await.unwrap();
    let id = uuid::Uuid::parse_str(&run_id).unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(900);
    // Killed once the first count is stored and the node is tagged with its forward.
    loop {
        let counted =
            loads_actors::store::runs::recovery(&store, id).await.unwrap().metrics_state.unwrap_or_default().contains("\"hits\":1");
        let tagged = instances_of(&b.broker).await.iter().all(|i| i.tags.contains_key("loads:forward"));
        if counted && tagged {
            break;
        }
        let run = b.api.get(&format!("/api/v1/runs/{run_id}")).await;
        assert!(run["completed_at"].is_null(), "the run ended before the restart: {run:#}");
        assert!(Instant::now() < deadline, "the first count was not stored: {run:#}");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = b.serve(&settings);
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    let run = loop {
        let run = b.api.get(&format!("/api/v1/runs/{run_id}")).await;
        if run["completed_at"].is_string() {
            break run;
        }
        assert!(Instant::now() < deadline, "the run did not finish after the restart: {run:#}");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(run["state"], "completed", "{run:#}");
    let gen = record(&run, "gen");
    let ran_for = crate::helpers::seconds_between(&gen["started_at"], &gen["completed_at"]);
    assert!((59.0..75.0).contains(&ran_for), "stopped at run_max_time (60 s) from the recorded start: {ran_for}s");
    let metrics = b.api.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits").map(|m| m["count"].clone());
    assert_eq!(hits, Some(json!(2.0)), "one count before the restart, one after, through the forward opened again: {metrics:#}");
    let seen = until_all_terminated(&b.broker).await;
    assert_eq!(seen.len(), 1, "taken back, not replaced: {seen:?}");
    second.kill().unwrap();
    second.wait().unwrap();
}

/// A service step and a generator step on two booted nodes: tags, types,
/// user-data and shutdown behaviour as asked; the node tuning applied once on each
/// node, as root (it writes where only root may), and the switch's deadline written
/// there; the generator reaches the service by its `dns_name` at its node's private
/// address (the VPC between the VMs); its counts come through its node's forward;
/// every instance is terminated. The nodes are launched into a subnet, as in a VPC,
/// so their private addresses share its block and the VMs' private network.
#[actix_web::test]
async fn a_two_step_plan_runs_across_booted_nodes_that_reach_each_other() {
    let tuning = ("LOADS__SSH__NODE_TUNING", "echo tuned >> /var/lib/loads/tuned");
    let subnet = crate::instances::default_subnet().await;
    let settings = [("LOADS__EC2__OWNER", "tests"), tuning, ("LOADS__EC2__REGIONS__US_WEST_2__SUBNET_ID", subnet.as_str())];
    let (app, farm, _dir) = broker_with(2, Boot::Stock, &settings).await;
    let mut web = sh_step(
        "web",
        "echo ips=$$HOST_IP,$$PRIVATE_IP; mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p $WEB_PORT -h /www",
    );
    web["service"] = json!(true);
    web["dns_name"] = json!("web");
    web["instance_type"] = json!("t3.small");
    web["instance_region"] = json!(crate::instances::REGION);
    // Bounded: a minute of tries for the service to answer, then 20 s to look at the nodes.
    let gen = gen_step(
        "gen",
        1,
        "i=0; until wget -q -O /tmp/page http://web:$WEB_PORT/; do i=$$((i+1)); [ $$i -gt 600 ] && { cat /etc/hosts; ip route; exit 7; }; usleep 100000; done; \
         grep -q hello-from-web /tmp/page && printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT; sleep 20",
    );
    let plan = json!({"name": "cloud", "environment_data": {"WEB_PORT": "8080"}, "steps": [web, gen]});
    let (_, run_id) = app.start(plan, json!({})).await;
    let running = app.wait_for_run(&run_id, 900, |r| record(r, "gen")["state"] == "running" || r["completed_at"].is_string()).await;
    for address in &farm.addresses {
        assert_eq!(farm.ssh(address, "cat /var/lib/loads/tuned"), "tuned\n", "tuned once on {address}: {running:#}");
        let deadline: i64 = farm.ssh(address, "cat /var/lib/loads/expires-at").trim().parse().unwrap_or(0);
        assert!(deadline > chrono::Utc::now().timestamp(), "the switch's deadline is written on {address}");
    }
    let live = instances_of(&app.broker_id).await;
    let run = app.wait_finished(&run_id, 600).await;
    let (_, all_logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
    assert_eq!(run["state"], "completed", "{run:#}\n{all_logs:#}");

    let seen = until_all_terminated(&app.broker_id).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (web_id, gen_id) = (record(&run, "web")["step_id"].as_str().unwrap(), record(&run, "gen")["step_id"].as_str().unwrap());
    let mut types: Vec<(&str, &str)> = seen.iter().map(|i| (i.tags["loads:step"].as_str(), i.instance_type.as_str())).collect();
    types.sort();
    let mut expected = vec![(web_id, "t3.small"), (gen_id, "t3.micro")];
    expected.sort();
    assert_eq!(types, expected);
    for i in &seen {
        assert_eq!(i.tags["Name"], format!("loads-{}-cloud", app.broker_id));
        assert_eq!(
            (i.tags["Project"].as_str(), i.tags["Owner"].as_str(), i.tags["loads:run"].as_str()),
            ("loads", "tests", run_id.as_str())
        );
        let expires = chrono::DateTime::parse_from_rfc3339(&i.tags["loads:expires-at"]).expect("expiry tag");
        assert!(expires > chrono::Utc::now() + chrono::Duration::minutes(10), "run time + grace ahead: {expires}");
        let user_data = crate::ec2_nodes::user_data_of(&i.id).await;
        assert!(user_data.contains(&format!("echo {} > /var/lib/loads/expires-at", expires.timestamp())), "{user_data}");
        assert!(user_data.contains("poweroff"), "the dead-man's switch is armed");
        assert_eq!(crate::ec2_nodes::shutdown_behaviour_of(&i.id).await, "terminate");
    }
    // HOST_IP is the instance's public address, PRIVATE_IP the one its peers reach it at.
    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=web")).await;
    let output = logs.to_string();
    let ips = output.split("ips=").nth(1).and_then(|rest| rest.split("\\n").next()).unwrap_or_else(|| panic!("{output}"));
    let (host_ip, private_ip) = ips.split_once(',').unwrap();
    let web_instance = live.iter().find(|i| i.tags["loads:step"] == web_id).expect("the web step's instance");
    assert_eq!(private_ip, web_instance.private_ip, "{output}");
    assert!(host_ip.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback() && ip.to_string() != private_ip), "{output}");

    let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits" && m["step_name"] == "gen");
    assert_eq!(hits.map(|m| m["count"].as_f64()), Some(Some(1.0)), "the count came through the forward: {metrics:#}");
}

/// Of two nodes one never answers (nothing listens where the broker reaches it): with
/// `min_nodes = 1` the step runs on the node that booted; with the default (all) the run
/// fails naming the missing node. Either way every instance is terminated.
#[actix_web::test]
async fn partial_capacity_follows_the_steps_min_nodes() {
    let dead = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    // Long enough for the booting node's sshd to answer (55 to 120 s here), short enough for two runs.
    let (app, farm, _dir) = broker_reaching(1, Boot::Stock, &[dead], &[("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", "240")]).await;
    let mut step = gen_step("gen", 2, "echo ran");
    step["min_nodes"] = json!(1);
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    let run = app.wait_finished(&run_id, 900).await;
    let consoles: Vec<String> = instances_of(&app.broker_id).await.iter().map(|i| farm.console(&i.id)).collect();
    assert_eq!(run["state"], "completed", "{run:#}\n{consoles:?}");
    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
    let ran: Vec<&Value> = logs["containers"].as_array().unwrap().iter().filter(|c| c["role"] == "step").collect();
    assert_eq!(ran.len(), 1, "the step ran on the node that answered: {logs:#}");
    assert_eq!(ran[0]["logs"].as_str().map(str::trim), Some("ran"), "{logs:#}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 2);

    let (_, run_id) = app.start(json!({"name": "q", "steps": [gen_step("gen", 2, "echo ran")]}), json!({})).await;
    let run = app.wait_finished(&run_id, 900).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("only 1 of 2 nodes became ready (min_nodes 2)") && reason.contains("no answer"), "{run:#}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 4);
}

/// A node whose host key is not on record (and recording is off) is refused: the
/// run fails saying so, and its instance is terminated.
#[actix_web::test]
async fn an_unknown_host_key_fails_the_run_and_terminates_its_instance() {
    let (app, _farm, _dir) = broker_with(1, Boot::Stock, &[("LOADS__SSH__RECORD_NEW_HOSTS", "false")]).await;
    let (_, run_id) = app.start(json!({"name": "p", "steps": [gen_step("gen", 1, "true")]}), json!({})).await;
    let run = app.wait_finished(&run_id, 900).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("unknown host key"), "{run:#}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 1);
}

/// Runs a two-node step on booted nodes and, once both containers run, cuts one
/// node's power (its VM stops, its sessions end); answers the finished run.
async fn lose_a_node_mid_run(prune_running: bool) -> Value {
    let (app, farm, _dir) = broker_for(2, Boot::Stock).await;
    let mut step = gen_step("gen", 2, "sleep 30");
    step["prune_running"] = json!(prune_running);
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    // Once the broker has seen both containers start (its live logs list them), one node goes away.
    let deadline = Instant::now() + std::time::Duration::from_secs(900);
    loop {
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
        let started = logs["containers"].as_array().map_or(0, |all| all.iter().filter(|c| c["role"] == "step").count());
        if started == 2 {
            break;
        }
        let (_, run) = app.get(&format!("/api/v1/runs/{run_id}")).await;
        assert!(Instant::now() < deadline && run["completed_at"].is_null(), "the step's containers did not start: {run:#}");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let lost = instances_of(&app.broker_id).await.last().map(|i| i.id.clone()).expect("two instances");
    farm.pull_the_plug(&lost);
    let run = app.wait_finished(&run_id, 300).await;
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 2);
    run
}

/// With `prune_running`, a node that stops answering is dropped and the step finishes on the other.
#[actix_web::test]
async fn a_node_lost_mid_run_is_pruned_when_the_step_allows_it() {
    let run = lose_a_node_mid_run(true).await;
    assert_eq!(run["state"], "completed", "{run:#}");
}

/// Without `prune_running`, a node that stops answering fails the step and the run.
#[actix_web::test]
async fn a_node_lost_mid_run_fails_the_step_without_prune_running() {
    let run = lose_a_node_mid_run(false).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("stopped answering"), "{run:#}");
}

/// `DELETE /api/run/{id}?terminate=1` (the original client's `abort --terminate`)
/// on a live run: with pooling on, its booted instance is terminated, not kept for reuse.
#[actix_web::test]
async fn abort_with_terminate_terminates_a_node_pooling_would_keep() {
    let (app, _farm, _dir) = broker_with(1, Boot::Stock, &[("LOADS__POOL__POOLING", "true")]).await;
    let (_, run_id) = app.start(json!({"name": "p", "steps": [gen_step("gen", 1, "sleep 300")]}), json!({})).await;
    app.wait_for_run(&run_id, 900, |r| ["running", "failed"].contains(&record(r, "gen")["state"].as_str().unwrap_or(""))).await;
    let (status, body) = app.delete(&format!("/api/run/{run_id}?terminate=1")).await;
    assert_eq!(status, awc::http::StatusCode::OK, "{body}");
    assert_eq!(app.wait_finished(&run_id, 300).await["state"], "aborted");
    let gone = until_all_terminated(&app.broker_id).await;
    assert_eq!(gone.len(), 1, "the run's one instance, terminated: {gone:?}");
}
