//! EC2 nodes as they really boot (`vm`): a virtual machine per instance, with
//! the stock sshd, a default user who needs `sudo` for Docker, no Docker until
//! the launch's user-data installs it, and cloud-init running that user-data
//! only after sshd already answers. These tests are slow (software emulation):
//! each reaches its node only through what a real instance offers. Only what a
//! booting machine shows is tested here; everything else that reaches a node
//! runs on the namespace farm (`ec2_hosts`), in seconds.

use std::time::Instant;

use serde_json::json;

use crate::ec2_nodes::{gen_step, instances_of, until_all_terminated};
use crate::helpers::{ensure_images, record, Backend, TestApp};
use crate::instances::moto;
use crate::vm::{Boot, Farm};

/// Seconds a booting node may take at each stage here (software emulation, 2 cores shared with the suite).
const SLOW: &str = "900";

/// A broker whose instances are the farm's VMs, reached as the image's default user
/// with host keys recorded on first use (a fresh instance's keys are made at its first boot).
async fn broker_for(farm_nodes: usize, boot: Boot) -> (TestApp, Farm, tempfile::TempDir) {
    ensure_images();
    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let farm = Farm::start(&broker, farm_nodes, boot);
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts").display().to_string();
    let overrides = farm.addresses.join(",");
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
    crate::helpers::eventually(30, async || match farm.running() {
        running if running.is_empty() => Ok(()),
        _ => Err("the terminated instance's VM is still running".to_string()),
    })
    .await;
}
