//! The `ec2` provider's dealings with EC2 (the moto server, through a fault
//! proxy where EC2 misbehaves): caps, retries, capacity, eventual consistency,
//! instance types, public addresses, quotas. Most of these tests end where a
//! node would be reached: their instances are mapped (`ec2.address_override`)
//! to a loopback port nothing listens on, so a step that got its instances
//! fails with "no answer", and they are terminated. Nodes that are reached
//! are hosts of the namespace farm (`ec2_hosts`), or boot as instances do
//! (`ec2_boot`).

use std::path::PathBuf;

use actix_web::http::StatusCode;
use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine as _;
use serde_json::{json, Value};

use loads::config::Settings;
use loads_actors::domain::cost::PriceTable;
use loads_actors::domain::usage::Clock;

use crate::helpers::{ensure_images, record, sh_step, Backend, TestApp};
use crate::instances::{client, client_in, moto, REGION};

/// An instance as moto shows it.
#[derive(Debug)]
pub(crate) struct Seen {
    pub id: String,
    pub state: String,
    pub instance_type: String,
    pub private_ip: String,
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Every instance tagged with `broker`, whatever its state.
pub(crate) async fn instances_of(broker: &str) -> Vec<Seen> {
    instances_in(REGION, broker).await
}

/// Every instance tagged with `broker` in `region`, whatever its state.
pub(crate) async fn instances_in(region: &str, broker: &str) -> Vec<Seen> {
    let out = client_in(region)
        .describe_instances()
        .filters(Filter::builder().name("tag:loads:broker").values(broker).build())
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| Seen {
            id: i.instance_id().unwrap().to_string(),
            state: i.state().unwrap().name().unwrap().as_str().to_string(),
            instance_type: i.instance_type().unwrap().as_str().to_string(),
            private_ip: i.private_ip_address().unwrap_or_default().to_string(),
            tags: i.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap_or_default().to_string())).collect(),
        })
        .collect()
}

/// The user-data `instance` was launched with.
pub(crate) async fn user_data_of(instance: &str) -> String {
    let attr =
        client().describe_instance_attribute().instance_id(instance).attribute(InstanceAttributeName::UserData).send().await.unwrap();
    let user_data = base64::engine::general_purpose::STANDARD.decode(attr.user_data().unwrap().value().unwrap()).unwrap();
    String::from_utf8(user_data).unwrap()
}

/// What `instance` does when it powers itself off.
pub(crate) async fn shutdown_behaviour_of(instance: &str) -> String {
    let attr = client()
        .describe_instance_attribute()
        .instance_id(instance)
        .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .unwrap();
    attr.instance_initiated_shutdown_behavior().and_then(|v| v.value()).unwrap_or_default().to_string()
}

/// Waits until no instance of `broker` is pending or running.
pub(crate) async fn until_all_terminated(broker: &str) -> Vec<Seen> {
    crate::helpers::eventually(60, async || {
        let seen = instances_of(broker).await;
        match seen.iter().all(|i| i.state == "terminated" || i.state == "shutting-down") {
            true => Ok(seen),
            false => Err(format!("instances still up: {seen:?}")),
        }
    })
    .await
}

/// A broker with `pool.provider = "ec2"` whose instances map, in launch order, to `nodes`.
struct Cloud {
    app: TestApp,
    _dir: tempfile::TempDir,
}

/// `nodes`: the SSH address of each node in turn; its settings changed by `tweak` (for what no variable can name).
async fn cloud_tweaked(nodes: &[String], key: PathBuf, extra: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Cloud {
    ensure_images();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
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
    let app = TestApp::spawn_tweaked(Backend::Sqlite, &all, tweak).await;
    Cloud { app, _dir: dir }
}

/// A broker whose instances are mapped to a loopback port nothing listens on:
/// for tests of what happens up to the point where a node would be reached.
async fn launch_only(extra: &[(&str, &str)]) -> Cloud {
    launch_only_tweaked(extra, |_| {}).await
}

/// [`launch_only`], its settings changed by `tweak`.
async fn launch_only_tweaked(extra: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Cloud {
    let nowhere = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let mut settings = vec![("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", "1")];
    settings.extend_from_slice(extra);
    // Never read: nothing answers to ask for it.
    cloud_tweaked(&[nowhere], PathBuf::from("/nonexistent/loads-test-key"), &settings, tweak).await
}

/// Asserts the run's step got its instances and went on to reach them (and found nothing there).
fn assert_reached_for_nodes(run: &Value) {
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("no answer"), "the step got its instances and tried to reach them: {run:#}");
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

/// Caps are checked before anything is launched.
#[actix_web::test]
async fn a_run_over_the_instance_cap_is_refused_before_any_launch() {
    let c = launch_only(&[("LOADS__EC2__MAX_INSTANCES", "2")]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("a", 2, "true"), gen_step("b", 1, "true")]})).await;
    assert_eq!(run["state"], "failed");
    assert!(run["failure_reason"].as_str().unwrap().contains("ec2.max_instances (2)"), "{run:#}");
    assert!(instances_of(&c.app.broker_id).await.is_empty(), "nothing was launched");
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

/// EC2 throttling the first launches: the broker backs off and tries again, and the step gets its instance.
#[actix_web::test]
async fn throttled_launches_are_retried_with_backoff() {
    let proxy = fault_proxy(&["--fail", "RequestLimitExceeded:2"]);
    let c = launch_only(&[("LOADS__EC2__ENDPOINT_URL", &proxy.url), ("LOADS__EC2__BACKOFF_MS", "50")]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_reached_for_nodes(&run);
    let answers: Vec<String> = proxy.log.lock().unwrap().iter().map(|l| l["answer"].as_str().unwrap().to_string()).collect();
    assert_eq!(answers, ["RequestLimitExceeded", "RequestLimitExceeded", "passed"]);
    until_all_terminated(&c.app.broker_id).await;
}

/// EC2 lacking capacity for every node: after the retries the broker asks for at
/// least the step's `min_nodes`, and the step goes on with what it got.
#[actix_web::test]
async fn short_capacity_falls_back_to_min_nodes() {
    let proxy = fault_proxy(&["--capacity", "1"]);
    let extra = [("LOADS__EC2__ENDPOINT_URL", proxy.url.as_str()), ("LOADS__EC2__BACKOFF_MS", "20"), ("LOADS__EC2__LAUNCH_ATTEMPTS", "3")];
    let c = launch_only(&extra).await;
    let mut step = gen_step("gen", 3, "true");
    step["min_nodes"] = json!(1);
    let run = run_plan(&c.app, json!({"name": "p", "steps": [step]})).await;
    assert_reached_for_nodes(&run);
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
    let proxy = fault_proxy(&["--delay", "1:8"]);
    let extra =
        [("LOADS__EC2__ENDPOINT_URL", proxy.url.as_str()), ("LOADS__EC2__REQUEST_TIMEOUT_SECONDS", "2"), ("LOADS__EC2__BACKOFF_MS", "50")];
    let c = launch_only(&extra).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_reached_for_nodes(&run);
    let answers: Vec<String> = proxy.log.lock().unwrap().iter().map(|l| l["answer"].as_str().unwrap().to_string()).collect();
    assert_eq!(answers, ["hung", "passed"]);
    until_all_terminated(&c.app.broker_id).await;
}

/// EC2 not knowing its new instances for a while (`InvalidInstanceID.NotFound`, its
/// eventual consistency) is waited out: the step goes on to reach its node.
#[actix_web::test]
async fn instances_ec2_does_not_know_yet_are_waited_for() {
    let proxy = fault_proxy(&["--not-found", "2"]);
    let c = launch_only(&[("LOADS__EC2__ENDPOINT_URL", &proxy.url)]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_reached_for_nodes(&run);
    let described: Vec<String> =
        proxy.log.lock().unwrap().iter().filter_map(|l| l["describe"].as_str().map(str::to_string)).take(3).collect();
    assert_eq!(described, ["InvalidInstanceID.NotFound", "InvalidInstanceID.NotFound", "passed"]);
    until_all_terminated(&c.app.broker_id).await;
}

/// A type that cannot run loads' nodes is refused before anything is launched, naming
/// why (an arm64-only type: the relay is x86_64); a step that names no type gets a current one.
#[actix_web::test]
async fn instance_types_are_checked_against_the_relay_and_the_ami() {
    let c = launch_only(&[]).await;
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
    assert_reached_for_nodes(&run);
    let seen = until_all_terminated(&c.app.broker_id).await;
    assert_eq!(seen.iter().map(|i| i.instance_type.as_str()).collect::<Vec<_>>(), ["t3.micro"], "an HVM x86_64 type by default");
}

/// In a subnet that gives no public address, a broker that reaches nodes at their
/// public address asks for one (on the network interface); in one that does, it does not.
#[actix_web::test]
async fn a_public_address_is_asked_for_where_the_subnet_gives_none() {
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
    let c = launch_only(&[("LOADS__EC2__ENDPOINT_URL", &proxy.url), ("LOADS__EC2__REGIONS__US_WEST_2__SUBNET_ID", &subnet)]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "true")]})).await;
    assert_reached_for_nodes(&run);
    let asked: Vec<bool> = proxy.log.lock().unwrap().iter().filter_map(|l| l["public_ip"].as_bool()).collect();
    assert_eq!(asked, [true]);
    until_all_terminated(&c.app.broker_id).await;
    let _ = client().delete_subnet().subnet_id(&subnet).send().await;
}

/// A quota error is not retried: the step fails at once with AWS's code and message.
#[actix_web::test]
async fn a_quota_error_fails_the_step_with_the_aws_message() {
    let proxy = fault_proxy(&["--fail", "VcpuLimitExceeded:5"]);
    let c = launch_only(&[("LOADS__EC2__ENDPOINT_URL", &proxy.url)]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 1, "echo quota")]})).await;
    assert_eq!(run["state"], "failed");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("VcpuLimitExceeded: You have requested more vCPU capacity"), "{reason}");
    assert_eq!(proxy.log.lock().unwrap().len(), 1, "not retried");
    assert!(instances_of(&c.app.broker_id).await.is_empty());
}

/// A run whose estimate passes a budget cap is refused with `over_budget`, the cap and the
/// estimate named, before anything is recorded or launched; a dry run says the same.
#[actix_web::test]
async fn a_run_over_budget_is_refused_before_any_launch() {
    let c = launch_only(&[("LOADS__BUDGET__MAX_USD_PER_RUN", "0.001"), ("LOADS__PRICING__SETUP_SECONDS", "300")]).await;
    // 3 × t3.micro × (300 + 600) s = 0.75 h at $0.0104/h = $0.0078.
    let mut gen = gen_step("gen", 3, "true");
    gen["run_max_time"] = json!(600);
    let plan = c.app.create_plan(json!({"name": "p", "steps": [gen]})).await;
    let plan_id = plan["id"].as_str().unwrap();
    for body in [json!({}), json!({"dry_run": true})] {
        let (status, err) = c.app.post(&format!("/api/v1/plans/{plan_id}/runs"), &body).await;
        assert_eq!((status, err["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("over_budget")), "{err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains("estimated at $0.0078, over budget.max_usd_per_run ($0.001)"), "{message}");
    }
    let (_, e) = c.app.get(&format!("/api/v1/plans/{plan_id}/estimate")).await;
    assert_eq!(e["provider"], "ec2");
    assert!(e["over_budget"].as_str().unwrap().contains("budget.max_usd_per_run"), "{e:#}");
    let (_, listed) = c.app.get(&format!("/api/v1/runs?plan_id={plan_id}")).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0), "no run recorded: {listed}");
    assert!(instances_of(&c.app.broker_id).await.is_empty(), "nothing was launched");

    // An unbounded step cannot be held to a cap: refused too, with the step named.
    let mut forever = gen_step("forever", 1, "true");
    forever["run_max_time"] = json!(0);
    let plan = c.app.create_plan(json!({"name": "q", "steps": [forever]})).await;
    let (status, err) = c.app.post(&format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!((status, err["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("over_budget")), "{err}");
    assert!(err["message"].as_str().unwrap().contains("step \"forever\" has no upper bound"), "{err}");
    assert!(instances_of(&c.app.broker_id).await.is_empty(), "nothing was launched");
}

/// A step in a region this broker has no settings for is a 422 naming the step and the
/// region, before anything is launched.
#[actix_web::test]
async fn a_step_in_a_region_not_configured_is_refused_before_any_launch() {
    let c = launch_only(&[]).await;
    let mut eu = gen_step("eu", 1, "true");
    eu["instance_region"] = json!("eu-west-1");
    let mut spread = gen_step("spread", 4, "true");
    spread["instance_region"] = json!({"us-west-2": 50, "ap-south-1": 50});
    let plan = c.app.create_plan(json!({"name": "p", "steps": [gen_step("gen", 1, "true"), eu, spread]})).await;
    let (status, err) = c.app.post(&format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!((status, err["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")), "{err}");
    assert_eq!(err["details"][0]["path"], "steps[1].instance_region", "{err}");
    let message = err["details"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("step \"eu\": region \"eu-west-1\" is not configured on this broker (ec2.regions has: us-west-2)"),
        "{message}"
    );
    // A step over several regions: the one not configured is named.
    assert_eq!(err["details"][1]["path"], "steps[2].instance_region", "{err}");
    let message = err["details"][1]["message"].as_str().unwrap();
    assert!(message.contains("step \"spread\": region \"ap-south-1\" is not configured"), "{message}");
    assert_eq!(err["details"].as_array().unwrap().len(), 2, "{err}");
    assert!(instances_of(&c.app.broker_id).await.is_empty(), "nothing was launched");
}

/// A `spot` step's launch asks for spot instances, and they say so in their `loads:market` tag;
/// its estimate is priced at the spot price EC2 answers now.
#[actix_web::test]
async fn spot_launches_carry_the_spot_market_option() {
    let proxy = fault_proxy(&[]);
    let c = launch_only(&[("LOADS__EC2__ENDPOINT_URL", proxy.url.as_str())]).await;
    let mut step = gen_step("gen", 2, "true");
    step["market"] = json!("spot");
    let plan = c.app.create_plan(json!({"name": "p", "steps": [step]})).await;
    let (_, e) = c.app.get(&format!("/api/v1/plans/{}/estimate", plan["id"].as_str().unwrap())).await;
    let history = client()
        .describe_spot_price_history()
        .instance_types(aws_sdk_ec2::types::InstanceType::T3Micro)
        .product_descriptions("Linux/UNIX")
        .send()
        .await
        .unwrap();
    let spot_prices: Vec<f64> = history.spot_price_history().iter().filter_map(|p| p.spot_price()?.parse().ok()).collect();
    assert!(!spot_prices.is_empty(), "the double answers spot prices");
    let quoted = e["steps"][0]["usd_per_instance_hour"].as_f64().unwrap();
    assert!(spot_prices.contains(&quoted) && quoted < 0.0104, "priced at a spot price EC2 gave ({spot_prices:?}): {e:#}");
    assert_eq!(e["steps"][0]["market"], "spot");

    let (status, run) = c.app.post(&format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run = c.app.wait_finished(run["id"].as_str().unwrap(), 120).await;
    assert_reached_for_nodes(&run);
    let markets: Vec<String> = proxy.log.lock().unwrap().iter().map(|l| l["market"].as_str().unwrap().to_string()).collect();
    assert_eq!(markets, ["spot"]);
    let seen = instances_of(&c.app.broker_id).await;
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|i| i.tags.get("loads:market").map(String::as_str) == Some("spot")), "{seen:?}");
    until_all_terminated(&c.app.broker_id).await;
}

/// `spot_fallback` with no spot capacity: the spot request is not retried, and the
/// shortfall (here every node) is launched on demand; the step goes on with them.
#[actix_web::test]
async fn spot_fallback_launches_the_shortfall_on_demand() {
    let proxy = fault_proxy(&["--spot-short", "InsufficientInstanceCapacity"]);
    let c = launch_only(&[("LOADS__EC2__ENDPOINT_URL", proxy.url.as_str())]).await;
    let mut step = gen_step("gen", 2, "true");
    step["market"] = json!("spot_fallback");
    let run = run_plan(&c.app, json!({"name": "p", "steps": [step]})).await;
    assert_reached_for_nodes(&run);
    let asked: Vec<(String, u64, u64, String)> = proxy
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["market"].as_str().unwrap().into(),
                l["min"].as_u64().unwrap(),
                l["max"].as_u64().unwrap(),
                l["answer"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        asked,
        [("spot".into(), 1, 2, "InsufficientInstanceCapacity".into()), ("on_demand".into(), 2, 2, "passed".into())],
        "spot once, then the shortfall on demand"
    );
    let seen = instances_of(&c.app.broker_id).await;
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|i| i.tags.get("loads:market").map(String::as_str) == Some("on_demand")), "{seen:?}");
    until_all_terminated(&c.app.broker_id).await;
}

/// The estimate checks the plan's instances per region against the account's instance
/// limit, as EC2 gives it (the double's `max-instances` is 20), and names the shortfall.
#[actix_web::test]
async fn an_estimate_names_a_region_over_the_account_instance_limit() {
    let c = launch_only(&[]).await;
    let plan = c.app.create_plan(json!({"name": "p", "steps": [gen_step("a", 12, "true"), gen_step("b", 9, "true")]})).await;
    let (status, e) = c.app.get(&format!("/api/v1/plans/{}/estimate", plan["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(
        e["quota"],
        json!([{"region": REGION, "instances": 21, "vcpus": 42, "on_demand_standard_vcpus": 42, "spot_standard_vcpus": 0,
        "max_instances": 20, "on_demand_vcpu_quota": null, "spot_vcpu_quota": null,
        "shortfall": "us-west-2: the plan runs 21 instances at once; the account allows 20 there (max-instances)"}])
    );
    assert!(e["notes"].to_string().contains("the account allows 20 there"), "{e:#}");
    let plan = c.app.create_plan(json!({"name": "q", "steps": [gen_step("a", 2, "true")]})).await;
    let (_, e) = c.app.get(&format!("/api/v1/plans/{}/estimate", plan["id"].as_str().unwrap())).await;
    assert_eq!(e["quota"][0]["shortfall"], Value::Null, "{e:#}");
    assert!(instances_of(&c.app.broker_id).await.is_empty(), "an estimate launches nothing");
}

/// Estimates may be asked for by anyone with a read token: EC2 is asked for a spot price and
/// an instance limit once, not once per estimate.
#[actix_web::test]
async fn estimates_ask_ec2_once_for_prices_and_limits() {
    let proxy = fault_proxy(&["--log-actions", "DescribeSpotPriceHistory,DescribeAccountAttributes,GetServiceQuota"]);
    let c = launch_only(&[("LOADS__EC2__ENDPOINT_URL", proxy.url.as_str())]).await;
    let mut step = gen_step("gen", 1, "true");
    step["market"] = json!("spot");
    let plan = c.app.create_plan(json!({"name": "p", "steps": [step]})).await;
    let mut quoted = Vec::new();
    for _ in 0..3 {
        let (status, e) = c.app.get(&format!("/api/v1/plans/{}/estimate", plan["id"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::OK, "{e}");
        quoted.push((e["steps"][0]["usd_per_instance_hour"].clone(), e["quota"][0]["max_instances"].clone()));
    }
    assert!(quoted.iter().all(|q| *q == quoted[0]) && quoted[0].1 == 20, "the same answers each time: {quoted:?}");
    let actions: Vec<String> = proxy.log.lock().unwrap().iter().filter_map(|l| Some(l["action"].as_str()?.to_string())).collect();
    assert_eq!(actions, ["DescribeSpotPriceHistory", "DescribeAccountAttributes", "GetServiceQuota", "GetServiceQuota"]);
}

/// An estimate checks the plan's standard vCPUs per region against the account's vCPU quotas
/// (Service Quotas, answered by the fault proxy: moto has only VPC quotas), on demand and spot
/// apart, and names each shortfall.
#[actix_web::test]
async fn an_estimate_names_each_vcpu_quota_the_plan_passes() {
    let proxy = fault_proxy(&["--quota", "L-1216C47A=4", "--quota", "L-34B43A08=8"]);
    let c = launch_only(&[("LOADS__EC2__ENDPOINT_URL", proxy.url.as_str())]).await;
    let mut spot = gen_step("spot", 2, "true");
    spot["market"] = json!("spot");
    let plan = c.app.create_plan(json!({"name": "p", "steps": [gen_step("od", 3, "true"), spot]})).await;
    let (status, e) = c.app.get(&format!("/api/v1/plans/{}/estimate", plan["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK, "{e}");
    let q = &e["quota"][0];
    // t3.micro: 2 vCPUs. 3 on demand = 6 > 4; 2 spot = 4 <= 8.
    assert_eq!((q["on_demand_standard_vcpus"].as_u64(), q["spot_standard_vcpus"].as_u64()), (Some(6), Some(4)), "{e:#}");
    assert_eq!((q["on_demand_vcpu_quota"].as_u64(), q["spot_vcpu_quota"].as_u64()), (Some(4), Some(8)), "{e:#}");
    let why = "us-west-2: the plan runs 6 on-demand standard vCPUs at once; the account's quota there is 4 (L-1216C47A)";
    assert_eq!(q["shortfall"], why, "{e:#}");
    assert!(e["notes"].as_array().unwrap().iter().any(|n| n == why), "{e:#}");
    assert!(instances_of(&c.app.broker_id).await.is_empty(), "an estimate launches nothing");
}

/// Every run records what its instances cost: the seconds they were held per instance type,
/// region and market (each billed at least a minute, from the launch until they were given up
/// or terminated), priced from the table; complete once the run is over.
#[actix_web::test]
async fn a_run_records_what_its_instances_cost() {
    let c = launch_only(&[]).await;
    let run = run_plan(&c.app, json!({"name": "p", "steps": [gen_step("gen", 2, "true")]})).await;
    assert_reached_for_nodes(&run);
    let cost = &run["cost"];
    assert_eq!(cost["complete"], true, "{run:#}");
    let lines = cost["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{cost:#}");
    let line = &lines[0];
    assert_eq!(
        (line["instance_type"].as_str(), line["region"].as_str(), line["market"].as_str()),
        (Some("t3.micro"), Some(REGION), Some("on_demand"))
    );
    assert_eq!(line["instances"], 2);
    let seconds = line["instance_seconds"].as_f64().unwrap();
    assert!((120.0..600.0).contains(&seconds), "two instances, a minute each at least, held for seconds: {seconds}");
    let hourly = PriceTable::shipped().on_demand(REGION, "t3.micro").unwrap();
    assert_eq!(line["usd_per_instance_hour"].as_f64(), Some(hourly));
    let usd = cost["usd"].as_f64().unwrap();
    assert!((usd - seconds * hourly / 3600.0).abs() < 1e-6, "{cost:#}");
    assert_eq!(cost["instance_seconds"].as_f64(), Some(seconds));
    until_all_terminated(&c.app.broker_id).await;

    // The run's page shows it.
    let browser = crate::ui::Browser::start(1000).await;
    browser.client.goto(&format!("{}/runs/{}", c.app.base, run["id"].as_str().unwrap())).await.unwrap();
    let row = browser
        .until(
            "the cost table",
            20,
            "const c = document.getElementById('cost'); return !c.hidden && document.querySelector('#cost-lines tbody tr')?.innerText",
        )
        .await;
    let cells: Vec<&str> = row.as_str().unwrap().split('\t').map(str::trim).collect();
    assert_eq!(cells[..4], ["t3.micro", REGION, "on_demand", "2"], "{row}");
    assert_eq!(cells[6], format!("${usd:.4}"), "{row}");
    let total = browser.eval("return document.getElementById('cost-total').textContent").await;
    assert!(total.as_str().unwrap().starts_with(&format!("Cost: ${usd:.4} for {:.3} instance-hours", seconds / 3600.0)), "{total}");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

/// `loads run` on EC2 ends its summary with what the run's instances cost.
#[actix_web::test]
async fn loads_run_prints_what_the_run_cost() {
    ensure_images();
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (db, moto) = (format!("sqlite://{}", dir.path().join("run.db").display()), moto());
    let known_hosts = dir.path().join("known_hosts").display().to_string();
    let env = [
        ("LOADS__DATABASE__URL", db.as_str()),
        ("LOADS__BROKER__ID", broker.as_str()),
        ("LOADS__POOL__PROVIDER", "ec2"),
        ("LOADS__EC2__ENDPOINT_URL", moto.as_str()),
        ("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-12c6146b"),
        ("LOADS__EC2__ADDRESS_OVERRIDE", nowhere.as_str()),
        ("LOADS__EC2__OWNER", "tests"),
        ("LOADS__SSH__USER", "root"),
        ("LOADS__SSH__KEY_PATH", "/nonexistent/loads-test-key"),
        ("LOADS__SSH__KNOWN_HOSTS", known_hosts.as_str()),
        ("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", "1"),
    ];
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "name = \"p\"\n[[steps]]\nname = \"gen\"\ncontainer_name = \"loads/busybox:1\"\ninstance_type = \"t3.micro\"\ninstance_region = \"us-west-2\"\n").unwrap();
    let out = crate::cli::loads(&["run", plan.to_str().unwrap()], &env, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "the run failed: its node never answered\n{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("t3.micro")).unwrap_or_else(|| panic!("no cost table: {stdout}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[..4], ["t3.micro", REGION, "on_demand", "1"], "{line}");
    assert!(stdout.lines().any(|l| l.starts_with("cost: $") && l.ends_with("instance-hours")), "{stdout}");
    until_all_terminated(&broker).await;
}

/// A live run whose recorded cost reaches `budget.max_usd_per_run` is aborted with that reason
/// (the meter reads a clock of the test's own, 10 hours to the real second); then this month's
/// recorded cost refuses the next run against `budget.max_usd_per_month` before any launch.
#[actix_web::test]
async fn a_run_whose_recorded_cost_reaches_its_cap_is_aborted() {
    let t0 = chrono::Utc::now();
    let fast = Clock::new(move || t0 + (chrono::Utc::now() - t0) * 36_000);
    let caps = [
        ("LOADS__BUDGET__MAX_USD_PER_RUN", "0.001"),
        ("LOADS__BUDGET__MAX_USD_PER_MONTH", "0.01"),
        ("LOADS__BUDGET__CHECK_SECONDS", "0.05"),
        ("LOADS__PRICING__SETUP_SECONDS", "0"),
        ("LOADS__SSH__CONNECT_TIMEOUT_SECONDS", "5"),
    ];
    let c = launch_only_tweaked(&caps, |s| s.budget.clock = fast).await;
    let mut gen = gen_step("gen", 1, "true");
    gen["run_max_time"] = json!(10);
    let plan = c.app.create_plan(json!({"name": "p", "steps": [gen]})).await;
    let plan_id = plan["id"].as_str().unwrap().to_string();
    // Estimated at a minute of a t3.micro ($0.0002): under every cap.
    let (_, estimate) = c.app.get(&format!("/api/v1/plans/{plan_id}/estimate")).await;
    assert!(estimate["over_budget"].is_null(), "{estimate:#}");
    let (status, run) = c.app.post(&format!("/api/v1/plans/{plan_id}/runs"), &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run = c.app.wait_finished(run["id"].as_str().unwrap(), 120).await;
    assert_eq!((run["state"].as_str(), run["aborted"].as_bool()), (Some("aborted"), Some(true)), "{run:#}");
    let reason = run["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the run's recorded cost reached $") && reason.contains("budget.max_usd_per_run is $0.001"), "{run:#}");
    assert_eq!(run["verdict"], "aborted");
    assert!(run["verdict_reason"].as_str().unwrap().contains("budget.max_usd_per_run"), "{run:#}");
    let spent = run["cost"]["usd"].as_f64().unwrap();
    assert!(spent >= 0.001 && run["cost"]["complete"] == true, "{run:#}");
    until_all_terminated(&c.app.broker_id).await;

    // What it cost counts against the month.
    let launched = instances_of(&c.app.broker_id).await.len();
    let (status, err) = c.app.post(&format!("/api/v1/plans/{plan_id}/runs"), &json!({})).await;
    assert_eq!((status, err["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("over_budget")), "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("with ${spent:.4} recorded this month")) && message.contains("budget.max_usd_per_month ($0.01)"),
        "{message}"
    );
    assert_eq!(instances_of(&c.app.broker_id).await.len(), launched, "nothing more was launched");
}

/// A stand-in for the instance metadata service (the real one's link-local address is never
/// reached), listening on `ip` (an address of this machine the nodes reach): IMDSv2 tokens,
/// and `spot/instance-action` answering 404 until `arm`ed, then one notice, to whichever node
/// asks first, and 404 again.
pub(crate) struct Metadata {
    pub url: String,
    pub armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Metadata {
    pub fn start(ip: std::net::Ipv4Addr) -> Self {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let url = format!("http://{ip}:{}", listener.local_addr().unwrap().port());
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (is_armed, count) = (armed.clone(), std::sync::atomic::AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut token = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    token |= line.to_ascii_lowercase().starts_with("x-aws-ec2-metadata-token: tok");
                }
                let (status, body) = if request.starts_with("PUT /latest/api/token ") {
                    ("200 OK", "tok".to_string())
                } else if request.starts_with("GET /latest/meta-data/spot/instance-action ")
                    && token
                    && is_armed.load(Ordering::SeqCst)
                    && count.fetch_add(1, Ordering::SeqCst) == 0
                {
                    ("200 OK", r#"{"action": "terminate", "time": "2026-12-03T12:00:00Z"}"#.to_string())
                } else {
                    ("404 Not Found", String::new())
                };
                let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            }
        });
        Self { url, armed }
    }
}
