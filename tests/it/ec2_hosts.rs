//! EC2 nodes on the namespace farm (`hosts`): every instance a broker launches
//! in the moto server is reached at a host of its own (its own address, sshd,
//! login user who needs `sudo` for Docker, and Docker engine), which the broker
//! copies its images to over SSH and runs its relay and containers on, as on
//! EC2. Nodes are up in about a second, so these tests can afford many nodes,
//! links cut mid-run and several subnets. What only a booting machine shows
//! (cloud-init, Docker installed by the user-data) stays in `ec2_boot`.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use crate::ec2_nodes::{gen_step, instances_in, instances_of, until_all_terminated, Metadata, Seen};
use crate::helpers::{ensure_images, eventually, eventually_every, record, sh_step, Backend, TestApp};
use crate::hosts::{Hosts, USER};
use crate::instances::{moto, REGION};

/// A broker whose instances are `hosts`' nodes in turn, then `unreachable` addresses
/// where nothing answers; host keys recorded on first use; `extra` settings win.
async fn broker_on(hosts: &Hosts, unreachable: &[String], extra: &[(&str, &str)]) -> (TestApp, tempfile::TempDir) {
    ensure_images();
    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(hosts, unreachable, &dir);
    let mut settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.push(("LOADS__BROKER__ID", &broker));
    settings.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    settings.extend_from_slice(extra);
    let app = TestApp::spawn(Backend::Sqlite, &settings).await;
    let regions: Vec<&str> = settings.iter().filter_map(|(k, _)| region_of(k)).collect();
    hosts.watch(&app.broker_id, &regions);
    (app, dir)
}

/// The region a `LOADS__EC2__REGIONS__<REGION>__AMI` setting configures.
fn region_of(key: &str) -> Option<&'static str> {
    ["us-west-2", "eu-west-1"].into_iter().find(|r| key == format!("LOADS__EC2__REGIONS__{}__AMI", r.replace('-', "_").to_uppercase()))
}

/// The settings that point a broker at the farm (and at `unreachable` after it).
fn settings_for(hosts: &Hosts, unreachable: &[String], dir: &tempfile::TempDir) -> Vec<(&'static str, String)> {
    let overrides = hosts.addresses().iter().chain(unreachable).cloned().collect::<Vec<_>>().join(",");
    vec![
        ("LOADS__POOL__PROVIDER", "ec2".into()),
        ("LOADS__EC2__ENDPOINT_URL", moto()),
        ("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-12c6146b".into()),
        ("LOADS__EC2__ADDRESS_OVERRIDE", overrides),
        ("LOADS__SSH__USER", USER.into()),
        ("LOADS__SSH__KEY_PATH", hosts.key.display().to_string()),
        ("LOADS__SSH__KNOWN_HOSTS", dir.path().join("known_hosts").display().to_string()),
        ("LOADS__SSH__RECORD_NEW_HOSTS", "true".into()),
        ("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", "30".into()),
    ]
}

/// The farm's node an instance was mapped to.
fn node_of<'a>(hosts: &'a Hosts, instance: &Seen) -> &'a crate::hosts::Host {
    hosts.at(instance.tags.get("loads:ssh").unwrap_or_else(|| panic!("no loads:ssh tag: {instance:?}")))
}

/// Waits until `run_id`'s step containers (`count` of them) have all started.
async fn until_containers_started(app: &TestApp, run_id: &str, count: usize) {
    eventually(180, async || {
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
        let started = logs["containers"].as_array().map_or(0, |all| all.iter().filter(|c| c["role"] == "step").count());
        if started == count {
            return Ok(());
        }
        let (_, run) = app.get(&format!("/api/v1/runs/{run_id}")).await;
        assert!(run["completed_at"].is_null(), "the run ended before its containers started: {run:#}");
        Err(format!("{started} of {count} of the step's containers started: {run:#}"))
    })
    .await
}

/// Waits until the farm has powered off the nodes of terminated instances.
async fn until_off(hosts: &Hosts) {
    eventually(30, async || match hosts.nodes.iter().any(|n| n.is_on()) {
        false => Ok(()),
        true => Err("a terminated instance's node still runs".to_string()),
    })
    .await
}

/// With pooling, a node used for one run is kept for the next: released, its own
/// dead-man's switch file (root's, written through `sudo`) moves with its idle
/// tag, so it does not power off while pooled; the next run reuses it (no launch,
/// no second tuning) and moves the deadline again; idle too long, it is terminated.
#[actix_web::test]
async fn a_pooled_node_keeps_its_switch_in_step_with_its_tags_and_is_reused() {
    let hosts = Hosts::start(1);
    let tuning = ("LOADS__SSH__NODE_TUNING", "echo tuned >> /var/lib/loads/tuned");
    let settings = [("LOADS__POOL__POOLING", "true"), ("LOADS__POOL__IDLE_SECONDS", "30"), tuning];
    let (app, _dir) = broker_on(&hosts, &[], &settings).await;
    let address = hosts.nodes[0].address.clone();
    let plan = json!({"name": "pooled", "steps": [gen_step("gen", 1, "true")]});
    let (_, run_id) = app.start(plan.clone(), json!({})).await;
    let first = app.wait_finished(&run_id, 300).await;
    let seen = instances_of(&app.broker_id).await;
    assert_eq!(first["state"], "completed", "{first:#}\n{}", hosts.nodes[0].logs());
    assert_eq!((seen.len(), seen[0].state.as_str()), (1, "running"), "kept for reuse");
    assert!(seen[0].tags.contains_key("loads:idle-since") && !seen[0].tags.contains_key("loads:run"), "tagged idle: {seen:?}");
    let tagged = chrono::DateTime::parse_from_rfc3339(&seen[0].tags["loads:expires-at"]).unwrap().timestamp();
    let on_node = hosts.ssh(&address, "cat /var/lib/loads/expires-at");
    assert_eq!(on_node.trim(), tagged.to_string(), "the switch's file moved with the idle tag");

    let (_, run_id) = app.start(plan, json!({})).await;
    let second = app.wait_finished(&run_id, 300).await;
    assert_eq!(second["state"], "completed", "{second:#}");
    let again = instances_of(&app.broker_id).await;
    assert_eq!(again.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [seen[0].id.as_str()], "reused, not launched");
    let rearmed: i64 = hosts.ssh(&address, "cat /var/lib/loads/expires-at").trim().parse().unwrap_or(0);
    let retagged = chrono::DateTime::parse_from_rfc3339(&again[0].tags["loads:expires-at"]).unwrap().timestamp();
    assert_eq!(rearmed, retagged, "released again: the file follows the tag");
    assert_eq!(hosts.ssh(&address, "cat /var/lib/loads/tuned"), "tuned\n", "tuned once per instance, not once per run");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 1);
}

/// A broker killed while a step runs on a node, and started again: it reaches the
/// node afresh (its recorded host key, `sudo` for Docker), takes the relay back,
/// opens the metrics forward again on the node's loopback at the same port, and
/// every count arrives once; nothing is launched anew.
#[actix_web::test]
async fn a_run_on_a_node_is_carried_on_after_a_broker_restart() {
    ensure_images();
    let hosts = Hosts::start(1);
    let b = crate::recovery::Restartable::new();
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&hosts, &[], &dir);
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    hosts.watch(&b.broker, &[REGION]);
    let mut first = b.serve(&settings);
    let report = "printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT";
    let mut step = gen_step("gen", 1, &format!("{report}; sleep 20; {report}; sleep 600"));
    step["run_max_time"] = json!(60);
    let project = b.api.post("/api/v1/projects", json!({"name": "node-crash", "plans": [{"name": "p", "steps": [step]}]})).await;
    let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();
    let run_id = b.api.post(&format!("/api/v1/plans/{plan_id}/runs"), json!({})).await["id"].as_str().unwrap().to_string();
    let store = loads_actors::store::connect(&b.db).await.unwrap();
    let id = uuid::Uuid::parse_str(&run_id).unwrap();
    // Killed once the first count is stored and the node is tagged with its forward.
    eventually_every(300, Duration::from_millis(500), async || {
        let counted =
            loads_actors::store::runs::recovery(&store, id).await.unwrap().metrics_state.unwrap_or_default().contains("\"hits\":1");
        let tagged = instances_of(&b.broker).await.iter().all(|i| i.tags.contains_key("loads:forward"));
        if counted && tagged {
            return Ok(());
        }
        let run = b.api.get(&format!("/api/v1/runs/{run_id}")).await;
        assert!(run["completed_at"].is_null(), "the run ended before the restart: {run:#}");
        Err(format!("the first count was not stored (counted: {counted}, tagged: {tagged}): {run:#}"))
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = b.serve(&settings);
    let run = eventually_every(300, Duration::from_millis(500), async || {
        let run = b.api.get(&format!("/api/v1/runs/{run_id}")).await;
        match run["completed_at"].is_string() {
            true => Ok(run),
            false => Err(format!("the run did not finish after the restart: {run:#}")),
        }
    })
    .await;
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

/// A VPC and subnet in moto inside the farm's first subnet (10.231.K.128/25), so the
/// private addresses EC2 gives the instances are the farm's own.
async fn farm_vpc_subnet(hosts: &Hosts) -> String {
    let base = hosts.nodes[0].ip.octets();
    let client = crate::instances::client();
    let vpc = client.create_vpc().cidr_block(format!("10.231.{}.0/24", base[2])).send().await.expect("moto creates a VPC");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_string();
    let subnet = client
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block(format!("10.231.{}.128/25", base[2]))
        .availability_zone(format!("{REGION}a"))
        .send()
        .await
        .expect("moto creates a subnet");
    subnet.subnet().and_then(|s| s.subnet_id()).unwrap().to_string()
}

/// A service step and a generator step on two nodes: tags, types, user-data and
/// shutdown behaviour as asked; the node tuning applied once on each node, as root
/// (it writes where only root may), and the switch's deadline written there; the
/// generator reaches the service by its `dns_name` at its node's private address
/// (the subnet between the nodes); its counts come through its node's forward;
/// every instance is terminated. The nodes are launched into a subnet, as in a VPC,
/// whose block is the farm's, so their private addresses are on the nodes' network.
#[actix_web::test]
async fn a_two_step_plan_runs_across_nodes_that_reach_each_other() {
    let hosts = Hosts::start(2);
    let tuning = ("LOADS__SSH__NODE_TUNING", "echo tuned >> /var/lib/loads/tuned");
    let subnet = farm_vpc_subnet(&hosts).await;
    let settings = [("LOADS__EC2__OWNER", "tests"), tuning, ("LOADS__EC2__REGIONS__US_WEST_2__SUBNET_ID", subnet.as_str())];
    let (app, _dir) = broker_on(&hosts, &[], &settings).await;
    let mut web = sh_step(
        "web",
        "echo ips=$$HOST_IP,$$PRIVATE_IP; mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p $WEB_PORT -h /www",
    );
    web["service"] = json!(true);
    web["dns_name"] = json!("web");
    web["instance_type"] = json!("t3.small");
    web["instance_region"] = json!(REGION);
    // Bounded: a minute of tries for the service to answer, then 20 s to look at the nodes.
    let gen = gen_step(
        "gen",
        1,
        "i=0; until wget -q -O /tmp/page http://web:$WEB_PORT/; do i=$$((i+1)); [ $$i -gt 600 ] && { cat /etc/hosts; ip route; exit 7; }; usleep 100000; done; \
         grep -q hello-from-web /tmp/page && printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT; sleep 20",
    );
    let plan = json!({"name": "cloud", "environment_data": {"WEB_PORT": "8080"}, "steps": [web, gen]});
    let (_, run_id) = app.start(plan, json!({})).await;
    let running = app.wait_for_run(&run_id, 300, |r| record(r, "gen")["state"] == "running" || r["completed_at"].is_string()).await;
    for address in hosts.addresses() {
        assert_eq!(hosts.ssh(&address, "cat /var/lib/loads/tuned"), "tuned\n", "tuned once on {address}: {running:#}");
        let deadline: i64 = hosts.ssh(&address, "cat /var/lib/loads/expires-at").trim().parse().unwrap_or(0);
        assert!(deadline > chrono::Utc::now().timestamp(), "the switch's deadline is written on {address}");
    }
    let live = instances_of(&app.broker_id).await;
    let run = app.wait_finished(&run_id, 300).await;
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
/// `min_nodes = 1` the step runs on the node that answered; with the default (all) the run
/// fails naming the missing node. Either way every instance is terminated.
#[actix_web::test]
async fn partial_capacity_follows_the_steps_min_nodes() {
    let hosts = Hosts::start(1);
    let dead = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let (app, _dir) = broker_on(&hosts, &[dead], &[("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", "5")]).await;
    let mut step = gen_step("gen", 2, "echo ran");
    step["min_nodes"] = json!(1);
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    let run = app.wait_finished(&run_id, 300).await;
    assert_eq!(run["state"], "completed", "{run:#}\n{}", hosts.nodes[0].logs());
    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
    let ran: Vec<&Value> = logs["containers"].as_array().unwrap().iter().filter(|c| c["role"] == "step").collect();
    assert_eq!(ran.len(), 1, "the step ran on the node that answered: {logs:#}");
    assert_eq!(ran[0]["logs"].as_str().map(str::trim), Some("ran"), "{logs:#}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 2);

    let (_, run_id) = app.start(json!({"name": "q", "steps": [gen_step("gen", 2, "echo ran")]}), json!({})).await;
    let run = app.wait_finished(&run_id, 300).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("only 1 of 2 nodes became ready (min_nodes 2)") && reason.contains("no answer"), "{run:#}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 4);
}

/// A node whose host key is not on record (and recording is off) is refused: the
/// run fails saying so, and its instance is terminated.
#[actix_web::test]
async fn an_unknown_host_key_fails_the_run_and_terminates_its_instance() {
    let hosts = Hosts::start(1);
    let (app, _dir) = broker_on(&hosts, &[], &[("LOADS__SSH__RECORD_NEW_HOSTS", "false")]).await;
    let (_, run_id) = app.start(json!({"name": "p", "steps": [gen_step("gen", 1, "true")]}), json!({})).await;
    let run = app.wait_finished(&run_id, 300).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("unknown host key"), "{run:#}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 1);
}

/// Runs a two-node step and, once both containers run, powers one node off (every
/// process on it killed, its sessions end); answers the finished run.
async fn lose_a_node_mid_run(prune_running: bool) -> Value {
    let hosts = Hosts::start(2);
    let (app, _dir) = broker_on(&hosts, &[], &[]).await;
    let mut step = gen_step("gen", 2, "sleep 30");
    step["prune_running"] = json!(prune_running);
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    // Once the broker has seen both containers start (its live logs list them), one node goes away.
    until_containers_started(&app, &run_id, 2).await;
    let lost = instances_of(&app.broker_id).await.pop().expect("two instances");
    node_of(&hosts, &lost).power_off();
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
/// on a live run: with pooling on, its instance is terminated, not kept for reuse.
#[actix_web::test]
async fn abort_with_terminate_terminates_a_node_pooling_would_keep() {
    let hosts = Hosts::start(1);
    let (app, _dir) = broker_on(&hosts, &[], &[("LOADS__POOL__POOLING", "true")]).await;
    let (_, run_id) = app.start(json!({"name": "p", "steps": [gen_step("gen", 1, "sleep 300")]}), json!({})).await;
    app.wait_for_run(&run_id, 300, |r| ["running", "failed"].contains(&record(r, "gen")["state"].as_str().unwrap_or(""))).await;
    let (status, body) = app.delete(&format!("/api/run/{run_id}?terminate=1")).await;
    assert_eq!(status, awc::http::StatusCode::OK, "{body}");
    assert_eq!(app.wait_finished(&run_id, 300).await["state"], "aborted");
    let gone = until_all_terminated(&app.broker_id).await;
    assert_eq!(gone.len(), 1, "the run's one instance, terminated: {gone:?}");
}

/// A spot node that gets an interruption notice mid-run (read from the metadata service over
/// the node's SSH connection) is dropped under `prune_running`: its container is stopped, the
/// step completes on the other node, and the notice is recorded on the step record and marked
/// on the run's dashboard.
#[actix_web::test]
async fn a_spot_interruption_notice_drops_that_node_and_is_recorded() {
    let hosts = Hosts::start(2);
    // The stand-in metadata service listens on this machine's address in the farm's subnet.
    let metadata = Metadata::start(hosts.gateway(0));
    let (grafana_port, grafana) = crate::dashboards::recording_grafana(3);
    let grafana_url = format!("http://127.0.0.1:{grafana_port}");
    let settings = [
        ("LOADS__EC2__METADATA_URL", metadata.url.as_str()),
        ("LOADS__EC2__SPOT_NOTICE_SECONDS", "1"),
        ("LOADS__GRAFANA__URL", grafana_url.as_str()),
        ("LOADS__GRAFANA__TOKEN", "t"),
    ];
    let (app, _dir) = broker_on(&hosts, &[], &settings).await;
    let mut step = gen_step("gen", 2, "trap 'exit 0' TERM; sleep 20 & wait");
    step["market"] = json!("spot");
    step["prune_running"] = json!(true);
    step["run_max_time"] = json!(60);
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    app.wait_for_run(&run_id, 120, |r| record(r, "gen")["state"] == "running").await;
    metadata.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let run = app.wait_finished(&run_id, 120).await;

    assert_eq!(run["state"], "completed", "the step went on without the interrupted node: {run:#}");
    let notices = record(&run, "gen")["interruptions"].as_array().unwrap().clone();
    assert_eq!(notices.len(), 1, "{run:#}");
    let notice = &notices[0];
    assert_eq!((notice["action"].as_str(), notice["time"].as_str()), (Some("terminate"), Some("2026-12-03T12:00:00Z")));
    let node = notice["node"].as_str().unwrap().to_string();
    let line = &run["cost"]["lines"][0];
    assert_eq!((line["market"].as_str(), line["instances"].as_u64()), (Some("spot"), Some(2)), "{run:#}");
    let instances = instances_of(&app.broker_id).await;
    assert!(
        instances.iter().any(|i| i.id == notice["instance"] && i.tags.get("loads:market").map(String::as_str) == Some("spot")),
        "{instances:?}"
    );
    // The interrupted node's container was stopped (trapped: exit 0); the other ran its course.
    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
    let steps: Vec<&Value> = logs["containers"].as_array().unwrap().iter().filter(|c| c["role"] == "step").collect();
    assert_eq!(steps.len(), 2, "{logs:#}");
    assert!(steps.iter().all(|c| c["exit_code"] == 0), "{logs:#}");
    // Marked on the dashboard.
    let mut annotation = None;
    for _ in 0..3 {
        let request = crate::dashboards::next(&grafana).await;
        if request.request_line.contains("/api/annotations") {
            annotation = Some(request.body);
        }
    }
    let annotation = annotation.expect("an annotation was posted");
    assert_eq!(annotation["tags"], json!(["loads", "interruption"]), "{annotation}");
    let text = annotation["text"].as_str().unwrap();
    assert!(text.contains(&format!("node {node} got a spot interruption notice")) && text.contains("terminate"), "{text}");
    until_all_terminated(&app.broker_id).await;
}

/// A step over two regions at 60/40, each region's nodes in a subnet of its own: 5
/// nodes split 3 + 2, each share launched in its own region (with that region's AMI)
/// at once and reached in its subnet; the run completes, its metrics are split by
/// region and merged over every node, and its cost is recorded per region.
#[actix_web::test]
async fn a_step_over_two_regions_in_two_subnets_launches_each_share_there_and_completes() {
    // Regions are provisioned in name order: eu-west-1's two, then us-west-2's three.
    let hosts = Hosts::start_in(&[2, 3]);
    let settings = [("LOADS__EC2__REGIONS__EU_WEST_1__AMI", "ami-12c6146b")];
    let (app, _dir) = broker_on(&hosts, &[], &settings).await;
    let script = "i=0; while [ $i -lt 10 ]; do echo \"hits:1|c\"; i=$((i+1)); done | nc $STATSD_HOST $STATSD_PORT; sleep 2";
    let mut step = gen_step("gen", 5, &script.replace('$', "$$"));
    step["instance_region"] = json!({"us-west-2": 60, "eu-west-1": 40});
    let plan = app.create_plan(json!({"name": "p", "steps": [step]})).await;
    let (_, estimate) = app.get(&format!("/api/v1/plans/{}/estimate", plan["id"].as_str().unwrap())).await;
    let lines: Vec<(&str, u64)> =
        estimate["steps"].as_array().unwrap().iter().map(|s| (s["region"].as_str().unwrap(), s["instances"].as_u64().unwrap())).collect();
    assert_eq!(lines, [("eu-west-1", 2), ("us-west-2", 3)], "{estimate:#}");
    let (status, run) = app.post(&format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run_id = run["id"].as_str().unwrap().to_string();
    let run = app.wait_finished(&run_id, 300).await;
    assert_eq!(run["state"], "completed", "{run:#}");

    // Each region launched its share, tagged with the run, reached in its own subnet; each node named once.
    let mut nodes = Vec::new();
    for (region, share, subnet) in [("us-west-2", 3, 1), ("eu-west-1", 2, 0)] {
        let mine: Vec<Seen> =
            instances_in(region, &app.broker_id).await.into_iter().filter(|i| i.tags.get("loads:run") == Some(&run_id)).collect();
        assert_eq!(mine.len(), share, "{region}: {mine:?}");
        let subnets: Vec<usize> = mine.iter().map(|i| hosts.subnet_of(node_of(&hosts, i))).collect();
        assert_eq!(subnets, vec![subnet; share], "{region}'s nodes sit in its subnet");
        nodes.extend(mine.iter().map(|i| (i.tags["loads:node"].clone(), region)));
    }
    nodes.sort();
    assert_eq!(nodes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["s0n0", "s0n1", "s0n2", "s0n3", "s0n4"]);

    // Metrics: every node's hits over all, and each region's nodes' alone.
    let (_, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits: Vec<(Option<&str>, f64)> = body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["metric"] == "hits")
        .map(|m| (m["region"].as_str(), m["count"].as_f64().unwrap()))
        .collect();
    assert_eq!(hits, [(None, 50.0), (Some("eu-west-1"), 20.0), (Some("us-west-2"), 30.0)], "{body:#}");

    // Cost: a line per region, with its share of the instances.
    let cost: Vec<(&str, u64)> = run["cost"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["region"].as_str().unwrap(), l["instances"].as_u64().unwrap()))
        .collect();
    assert_eq!(cost, [("eu-west-1", 2), ("us-west-2", 3)], "{run:#}");
    for region in ["us-west-2", "eu-west-1"] {
        eventually(60, async || {
            let seen = instances_in(region, &app.broker_id).await;
            match seen.iter().all(|i| i.state == "terminated" || i.state == "shutting-down") {
                true => Ok(()),
                false => Err(format!("instances still up in {region}: {seen:?}")),
            }
        })
        .await;
    }
    until_off(&hosts).await;
}

/// A node cut off mid-run (its link down: every packet dropped, nothing said) for
/// longer than `ssh.silence_seconds`: the broker notices while the link is still
/// down (it does not wait the quarter of an hour TCP takes to give up), fails the
/// step naming the node (`prune_running` off), stops the other node's container and terminates both
/// instances; once its link is back, nothing runs on the node.
#[actix_web::test]
async fn a_node_cut_off_mid_run_is_noticed_while_still_cut_off() {
    let hosts = Hosts::start(2);
    let (app, _dir) = broker_on(&hosts, &[], &[("LOADS__SSH__SILENCE_SECONDS", "4")]).await;
    let mut step = gen_step("gen", 2, "sleep 300");
    step["run_max_time"] = json!(400);
    step["prune_running"] = json!(false);
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    until_containers_started(&app, &run_id, 2).await;
    let cut = instances_of(&app.broker_id).await.pop().expect("two instances");
    let node = node_of(&hosts, &cut);
    node.set_link(false);
    let cut_at = Instant::now();
    // The link stays down for as long as this wait may take (well past the 4 s allowed).
    let (ended, run) = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, run) = app.get(&format!("/api/v1/runs/{run_id}")).await;
            if run["completed_at"].is_string() {
                break (true, run);
            }
            if Instant::now() > deadline {
                break (false, run);
            }
            actix_web::rt::time::sleep(Duration::from_millis(250)).await;
        }
    };
    node.set_link(true);
    assert!(ended, "the run did not end while the node was cut off: {run:#}");
    eprintln!("a node cut off with ssh.silence_seconds = 4: the run ended {:.1} s later", cut_at.elapsed().as_secs_f64());
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    let name = cut.tags["loads:node"].as_str();
    assert!(reason.contains(&format!("node {name} stopped answering")), "{reason}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 2);
    until_off(&hosts).await;
    assert!(node.processes().is_empty(), "nothing is left on the node");
}

/// A node whose link drops for 8 s mid-run (longer than a relay waits for a delivery's
/// answer, shorter than `ssh.silence_seconds`) and comes back: the run goes on, and
/// every count its relay took arrives, none lost and none counted twice (the windows
/// delivered again after the outage are recognised).
#[actix_web::test]
async fn a_link_that_drops_for_seconds_loses_no_count_and_counts_none_twice() {
    let hosts = Hosts::start(1);
    let (app, _dir) = broker_on(&hosts, &[], &[("LOADS__SSH__SILENCE_SECONDS", "30")]).await;
    // 300 counts over 30 s, on one connection to the node's relay.
    let script = "i=0; while [ $i -lt 300 ]; do echo \"hits:1|c\"; usleep 100000; i=$((i+1)); done | nc $STATSD_HOST $STATSD_PORT; sleep 3";
    let step = gen_step("gen", 1, &script.replace('$', "$$"));
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    until_containers_started(&app, &run_id, 1).await;
    actix_web::rt::time::sleep(Duration::from_secs(5)).await;
    hosts.nodes[0].set_link(false);
    actix_web::rt::time::sleep(Duration::from_secs(8)).await;
    hosts.nodes[0].set_link(true);
    let run = app.wait_finished(&run_id, 300).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    // Nothing is missing (a busy machine may still make the verdict invalid for the generator's CPU).
    let reason = run["verdict_reason"].as_str().unwrap_or_default();
    assert!(!reason.contains("numbers are missing"), "{run:#}");
    let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits").map(|m| m["count"].clone());
    assert_eq!(hits, Some(json!(300.0)), "{metrics:#}");
    until_all_terminated(&app.broker_id).await;
}

/// A step of 20 nodes, each its own engine: the broker copies the images to each,
/// starts 20 relays and 20 containers, and every node's count arrives.
#[actix_web::test]
async fn a_step_of_twenty_nodes_runs_on_twenty_engines() {
    let hosts = Hosts::start(20);
    let (app, _dir) = broker_on(&hosts, &[], &[]).await;
    let step = gen_step("gen", 20, "printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT; echo on $$(hostname)");
    let (_, run_id) = app.start(json!({"name": "twenty", "steps": [step]}), json!({})).await;
    let run = app.wait_finished(&run_id, 600).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let seen = instances_of(&app.broker_id).await;
    let mut reached: Vec<&str> = seen.iter().map(|i| i.tags["loads:ssh"].as_str()).collect();
    reached.sort();
    reached.dedup();
    assert_eq!(reached.len(), 20, "each instance on a node of its own: {seen:?}");
    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
    let ran: Vec<&Value> = logs["containers"].as_array().unwrap().iter().filter(|c| c["role"] == "step").collect();
    assert_eq!(ran.len(), 20, "{logs:#}");
    let mut hostnames: Vec<String> =
        ran.iter().filter_map(|c| c["logs"].as_str()?.trim().strip_prefix("on ").map(str::to_string)).collect();
    hostnames.sort();
    hostnames.dedup();
    assert_eq!(hostnames.len(), 20, "each container ran on its own node's engine: {hostnames:?}");
    assert!(hostnames.iter().all(|h| h.starts_with("ip-10-231-")), "{hostnames:?}");
    let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits").map(|m| m["count"].clone());
    assert_eq!(hits, Some(json!(20.0)), "{metrics:#}");
    assert_eq!(until_all_terminated(&app.broker_id).await.len(), 20);
    until_off(&hosts).await;
}
