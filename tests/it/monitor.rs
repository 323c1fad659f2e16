//! Monitor steps, as the original loads v2 files give them (`"monitor": true`,
//! no name, no image): imported by every route, and in a run the run's own
//! InfluxDB database, which its dashboard reads.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, record, sh_step, Backend, TestApp};

/// A project file in the original's shape, with a nameless monitor step.
fn v2_file(name: &str) -> Value {
    json!({
        "name": name,
        "home_page": "https://example.test/",
        "plans": [{
            "name": "With monitor",
            "description": "a generator and the original's monitor step",
            "enabled": true,
            "steps": [
                {"monitor": true, "instance_count": 1, "instance_type": "t2.medium", "instance_region": "us-west-2",
                 "dns_name": "monitor.example.test", "environment_data": ["RETENTION=7d"]},
                {"name": "gen", "instance_count": 1, "instance_type": "t2.small", "instance_region": "us-west-2",
                 "run_max_time": 60, "container_name": loads::images::BUSYBOX,
                 "additional_command_args": "-c 'printf \"hits:1|c\\n\" | nc $STATSD_HOST $STATSD_PORT; sleep 2'"}
            ]
        }]
    })
}

async fn influx_query(database: &str, query: &str) -> Value {
    let base = std::env::var("LOADS_TEST_INFLUX_URL").expect("LOADS_TEST_INFLUX_URL (scripts/test starts InfluxDB)");
    let mut r = awc::Client::new().get(format!("{base}/query")).query(&[("db", database), ("q", query)]).unwrap().send().await.unwrap();
    r.json().await.unwrap()
}

/// The file imports through API v1, the loads v2 API and `loads import`; the step is named `monitor`.
#[actix_web::test]
async fn a_nameless_monitor_step_imports_through_every_route() {
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let (status, report) = app.post("/api/v1/projects/import", &v2_file("v1 import")).await;
    assert_eq!(status, StatusCode::CREATED, "{report}");
    let plan_id = report["project"]["plans"][0]["id"].as_str().unwrap().to_string();
    let (_, plan) = app.get(&format!("/api/v1/plans/{plan_id}")).await;
    assert_eq!(plan["steps"][0]["name"], "monitor");
    assert_eq!(plan["steps"][0]["monitor"], true);
    assert!(report["warnings"].to_string().contains("InfluxDB database of its own"), "{report}");

    let (status, body) = app.post("/api/project", &v2_file("v2 import")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true, "{body}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("project.json");
    std::fs::write(&file, v2_file("cli import").to_string()).unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loads"))
        .args(["import", file.to_str().unwrap()])
        .env("LOADS__DATABASE__URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("plan \"With monitor\""));
}

/// With InfluxDB, a run of a plan with a monitor step writes its points to a
/// database of its own, `loads<run id without dashes>`, and its dashboard reads
/// from it; without InfluxDB the step is skipped, saying why.
#[actix_web::test]
async fn a_run_with_a_monitor_step_has_its_own_influx_database() {
    ensure_images();
    let shared = format!("loads_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let influx_url = std::env::var("LOADS_TEST_INFLUX_URL").expect("LOADS_TEST_INFLUX_URL (scripts/test starts InfluxDB)");
    let app = TestApp::spawn(Backend::Sqlite, &[("LOADS__INFLUX__URL", &influx_url), ("LOADS__INFLUX__DATABASE", &shared)]).await;
    let plan = json!({"name": "monitored", "steps": [
        {"monitor": true},
        sh_step("gen", "printf \"hits:1|c\\nhits:1|c\\n\" | nc $$STATSD_HOST $$STATSD_PORT; sleep 2"),
    ]});
    let (_, run_id) = app.start(plan, json!({})).await;
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let own = format!("loads{}", uuid::Uuid::parse_str(&run_id).unwrap().simple());
    assert_eq!(record(&run, "monitor")["state"], "completed", "{run:#}");
    assert!(record(&run, "monitor")["failure_reason"].as_str().unwrap_or_default().contains(&own), "{run:#}");

    let hits = influx_query(
        &own,
        &format!("SELECT sum(\"value\") FROM \"counter\" WHERE \"run\" = '{run_id}' AND \"metric\" = 'hits' AND \"node\" = 'all'"),
    )
    .await;
    assert_eq!(hits["results"][0]["series"][0]["values"][0][1], 2.0, "the run's points are in its own database: {hits}");
    let events = influx_query(&own, "SELECT count(\"text\") FROM \"events\"").await;
    assert!(events["results"][0]["series"][0]["values"][0][1].as_f64().unwrap() >= 2.0, "{events}");
    let elsewhere = influx_query(&shared, &format!("SELECT count(\"value\") FROM \"counter\" WHERE \"run\" = '{run_id}'")).await;
    assert!(elsewhere["results"][0]["series"].is_null(), "nothing in the shared database: {elsewhere}");

    let (status, dashboard) = app.get(&format!("/api/v1/runs/{run_id}/dashboard")).await;
    assert_eq!(status, StatusCode::OK, "{dashboard}");
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["query"].as_str().unwrap().to_string())
        .collect();
    assert!(!queries.is_empty());
    for q in &queries {
        assert!(q.contains(&format!("FROM \"{own}\"..")), "{q}");
    }
    assert!(dashboard["annotations"]["list"][0]["query"].as_str().unwrap().contains(&format!("\"{own}\"..\"events\"")));
    for db in [own, shared] {
        let _ =
            awc::Client::new().post(format!("{influx_url}/query")).query(&[("q", format!("DROP DATABASE \"{db}\""))]).unwrap().send().await;
    }

    let bare = TestApp::spawn(Backend::Sqlite, &[]).await;
    let (_, run_id) = bare.start(json!({"name": "unmonitored", "steps": [{"monitor": true}, sh_step("gen", "true")]}), json!({})).await;
    let run = bare.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(record(&run, "monitor")["state"], "skipped");
    assert!(record(&run, "monitor")["failure_reason"].as_str().unwrap().contains("no InfluxDB is configured"), "{run:#}");
    app.assert_no_leftovers();
    bare.assert_no_leftovers();
}
