//! What a plan costs before it runs: the estimate endpoint, `dry_run`, and
//! `loads plan estimate`, checked against figures computed by hand from the
//! shipped price table. The EC2 side (budgets refusing a run before any launch,
//! regions not configured) is in `ec2_nodes`.

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use crate::cli::loads;
use crate::helpers::{Backend, TestApp};

fn close(v: &Value, expected: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - expected).abs() < 5e-6)
}

/// Two steps in two regions: 3 × m5.large in us-east-1 from 10 s for 600 s, a service of
/// 2 × c5.large in eu-west-1 that lives until the other step is over.
fn two_region_plan() -> Value {
    json!({"name": "regions", "steps": [
        {"name": "svc", "container_name": "svc:1", "service": true, "instance_count": 2,
         "instance_type": "c5.large", "instance_region": "eu-west-1", "run_max_time": 0},
        {"name": "east", "container_name": "gen:1", "instance_count": 3, "instance_type": "m5.large",
         "instance_region": "us-east-1", "run_delay": 10, "run_max_time": 600}
    ]})
}

#[actix_web::test]
async fn a_plan_estimate_matches_the_figures_computed_by_hand() {
    let app = TestApp::spawn(Backend::Sqlite, &[("LOADS__PRICING__SETUP_SECONDS", "120")]).await;
    let plan = app.create_plan(two_region_plan()).await;
    let (status, e) = app.get(&format!("/api/v1/plans/{}/estimate", plan["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK, "{e}");
    // svc: 2 × (120 + 10 + 600) s = 1460 s at $0.096/h (c5.large, eu-west-1) = $0.038933.
    // east: 3 × (120 + 10 + 600) s = 2190 s at $0.096/h (m5.large, us-east-1) = $0.0584.
    assert_eq!(e["steps"][0]["seconds_per_instance"], 730);
    assert!(close(&e["steps"][0]["usd"], 1460.0 / 3600.0 * 0.096), "{e:#}");
    assert!(close(&e["steps"][1]["usd"], 2190.0 / 3600.0 * 0.096), "{e:#}");
    assert!(close(&e["usd"], 3650.0 / 3600.0 * 0.096), "{e:#}");
    assert!(close(&e["instance_hours"], 3650.0 / 3600.0), "{e:#}");
    assert_eq!(e["steps"][1]["region"], "us-east-1");
    assert_eq!(e["steps"][1]["market"], "on_demand");
    assert_eq!(e["vcpus_by_region"], json!({"eu-west-1": 4, "us-east-1": 6}));
    assert_eq!((e["provider"].as_str(), e["bounded"].as_bool(), &e["over_budget"]), (Some("local"), Some(true), &Value::Null));
    assert!(e["prices"]["source"].as_str().unwrap().contains("aws.amazon.com"), "{e:#}");
    assert_eq!(e["prices"]["date"].as_str().unwrap().len(), 10);

    let (status, missing) = app.get(&format!("/api/v1/plans/{}/estimate", uuid::Uuid::new_v4())).await;
    assert_eq!((status, missing["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{missing}");
}

/// An unbounded step leaves the total unbounded, named; nothing is invented.
#[actix_web::test]
async fn a_step_with_no_time_limit_has_no_upper_bound_and_says_so() {
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let mut doc = two_region_plan();
    doc["steps"][1]["run_max_time"] = json!(0);
    let plan = app.create_plan(doc).await;
    let (_, e) = app.get(&format!("/api/v1/plans/{}/estimate", plan["id"].as_str().unwrap())).await;
    assert_eq!((&e["usd"], &e["instance_hours"], &e["bounded"]), (&Value::Null, &Value::Null, &json!(false)), "{e:#}");
    let notes = e["notes"].to_string();
    assert!(notes.contains("step \\\"east\\\" has no upper bound: its run_max_time is 0"), "{notes}");
}

/// `dry_run` makes every check a start makes and answers the estimate; nothing is recorded.
#[actix_web::test]
async fn a_dry_run_checks_and_estimates_without_starting() {
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let plan = app.create_plan(two_region_plan()).await;
    let runs = format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap());
    let (status, e) = app.post(&runs, &json!({"dry_run": true, "env": {"TARGET": "http://svc"}, "owner": "ci"})).await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(e["plan"], "regions");
    assert_eq!(e["instances"], 5);
    let (status, err) = app.post(&runs, &json!({"dry_run": true, "env": ["NOEQUALS"]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the same refusal a start gives: {err}");
    assert_eq!(err["details"][0]["path"].as_str().map(|p| p.starts_with("env")), Some(true), "{err}");
    let (status, err) = app.post(&runs, &json!({"dry_run": "yes"})).await;
    assert_eq!((status, err["details"][0]["path"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("dry_run")), "{err}");
    let (_, listed) = app.get(&format!("/api/v1/runs?plan_id={}", plan["id"].as_str().unwrap())).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0), "nothing was started: {listed}");
}

/// The demo plan: the service until the last generator ends (5 + 60 s), 2 shell generators
/// from 2 s for 60 s, one C generator from 5 s for 60 s, each after 300 s of setup:
/// 365 + 2 × 362 + 365 = 1454 instance-seconds of t3.micro in us-west-2 at $0.0104/h.
#[test]
fn loads_plan_estimate_prices_the_demo_by_hand_and_holds_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml");
    let out = loads(&["plan", "estimate", demo], &[], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("plan \"demo\": on EC2 at most 0.0042 USD over 0.404 instance-hours (4 instances)"), "{stdout}");
    assert!(stdout.contains("a run there costs nothing"), "{stdout}");

    let out = loads(&["plan", "estimate", demo, "--json"], &[], dir.path());
    let e: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(close(&e[0]["usd"], 1454.0 / 3600.0 * 0.0104), "{e:#}");
    assert_eq!(e[0]["steps"].as_array().unwrap().iter().map(|s| s["seconds_per_instance"].clone()).collect::<Vec<_>>(), [365, 362, 365]);

    // A price table of its own: t3.micro at $1/h.
    let table = dir.path().join("prices.toml");
    std::fs::write(&table, "source = \"our contract\"\ndate = \"2026-01-01\"\n[regions.us-west-2]\n\"t3.micro\" = 1.0\n").unwrap();
    let out = loads(&["plan", "estimate", demo, "--json"], &[("LOADS__PRICING__FILE", table.to_str().unwrap())], dir.path());
    let e: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(close(&e[0]["usd"], 1454.0 / 3600.0), "{e:#}");
    assert_eq!(e[0]["prices"]["source"], "our contract");

    // On EC2, over a cap: exit 1, the cap and the estimate named.
    let ec2 = [
        ("LOADS__POOL__PROVIDER", "ec2"),
        ("LOADS__SSH__KEY_PATH", "/nonexistent/key"),
        ("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-12c6146b"),
        ("LOADS__BUDGET__MAX_USD_PER_RUN", "0.001"),
    ];
    let out = loads(&["plan", "estimate", demo], &ec2, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("over budget: the run is estimated at $0.0042, over budget.max_usd_per_run ($0.001)"), "{stdout}");

    let out = loads(&["plan", "estimate", demo], &[("LOADS__BUDGET__MAX_USD_PER_RUN", "-1")], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("budget.max_usd_per_run"), "{out:?}");
}

/// `market` is one of three names; anything else is refused at the field, and the market is kept.
#[actix_web::test]
async fn a_step_market_is_checked_and_kept() {
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let (status, project) = app.post("/api/v1/projects", &json!({"name": "markets"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let plans = format!("/api/v1/projects/{}/plans", project["id"].as_str().unwrap());
    let mut doc = two_region_plan();
    doc["steps"][1]["market"] = json!("reserved");
    let (status, err) = app.post(&plans, &doc).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["details"][0]["path"], "steps[1].market");
    assert_eq!(err["details"][0]["message"], "must be \"on_demand\", \"spot\" or \"spot_fallback\", not \"reserved\"");
    doc["steps"][1]["market"] = json!("spot_fallback");
    let (status, plan) = app.post(&plans, &doc).await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    let (_, read) = app.get(&format!("/api/v1/plans/{}", plan["id"].as_str().unwrap())).await;
    assert_eq!((read["steps"][0]["market"].as_str(), read["steps"][1]["market"].as_str()), (Some("on_demand"), Some("spot_fallback")));
}

/// The loads v2 project file is estimated as it is (its `/var/log` volumes are the running
/// broker's concern, not the estimate's): "Single Server" is 10 × m3.large for 300 + 3600 s
/// and 5 × t2.medium for 300 + 10 + 3590 s in us-east-1, at $0.133/h and $0.0464/h.
#[test]
fn loads_plan_estimate_prices_the_loads_v2_project_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::helpers::fixtures().join("loads-broker/pushgo.json");
    let out = loads(&["plan", "estimate", file.to_str().unwrap(), "--plan", "Single Server", "--json"], &[], dir.path());
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let e: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(e.as_array().map(Vec::len), Some(1), "only the plan asked for");
    assert!(close(&e[0]["usd"], 39_000.0 / 3600.0 * 0.133 + 19_500.0 / 3600.0 * 0.0464), "{e:#}");
    assert_eq!(e[0]["instances"], 15);
}
