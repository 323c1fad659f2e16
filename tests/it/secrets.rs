//! Secrets by reference: `secret:NAME` env values reach containers as the
//! broker's secret, and the value is never stored, returned, or shown in the
//! containers' output the broker keeps and serves.

use awc::http::StatusCode;
use serde_json::json;

use crate::helpers::{ensure_images, record, sh_step, Backend, TestApp};

const API_KEY: &str = "sk-live-7d1f0c2e9a";
const DB_PASS: &str = "correct horse battery";

/// md5 of a value, as busybox prints it, so a container can prove what it got without printing it.
fn md5_hex(value: &str) -> String {
    let out = std::process::Command::new("sh").arg("-c").arg(format!("printf %s '{value}' | md5sum")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[actix_web::test]
async fn secret_references_are_resolved_for_containers_and_masked_everywhere() {
    ensure_images();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets");
    std::fs::write(&file, format!("# the broker's secrets\nAPI_KEY={API_KEY}\nDB_PASS={DB_PASS}\n")).unwrap();
    let file = file.display().to_string();
    let app = TestApp::spawn(Backend::Sqlite, &[("LOADS__SECRETS__FILE", &file)]).await;

    let mut step = sh_step("use", "printf %s \"$$KEY\" | md5sum; printf %s \"$$PASS\" | md5sum; echo \"leak: $$KEY / $$PASS\"");
    step["environment_data"] = json!({"PASS": "secret:DB_PASS"});
    let (plan, run_id) = app.start(json!({"name": "s", "steps": [step]}), json!({"env": {"KEY": "secret:API_KEY"}})).await;
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["environment_data"]["KEY"], "secret:API_KEY", "the reference, not the value");
    assert_eq!(plan["steps"][0]["environment_data"]["PASS"], "secret:DB_PASS");

    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
    let output = logs["containers"].as_array().unwrap().iter().find(|c| c["role"] == "step").unwrap()["logs"].as_str().unwrap().to_string();
    assert!(output.contains(&md5_hex(API_KEY)) && output.contains(&md5_hex(DB_PASS)), "the container got both values: {output}");
    assert!(output.contains("leak: ******** / ********"), "{output}");
    assert!(!output.contains(API_KEY) && !output.contains(DB_PASS));
    let (_, whole) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    assert!(!whole.to_string().contains(API_KEY));
    assert_eq!(record(&whole, "use")["state"], "completed");

    // Nothing in the database file holds a value.
    let db_path = app.database_url.trim_start_matches("sqlite://").to_string();
    let bytes = std::fs::read(&db_path).unwrap();
    let wal = std::fs::read(format!("{db_path}-wal")).unwrap_or_default();
    for value in [API_KEY, DB_PASS] {
        let found = |hay: &[u8]| hay.windows(value.len()).any(|w| w == value.as_bytes());
        assert!(!found(&bytes) && !found(&wal), "{value} is in the database");
    }

    // A reference to a secret the broker does not have is refused when the run starts, with its path.
    let plan_id = plan["id"].as_str().unwrap();
    let (status, body) = app.post(&format!("/api/v1/plans/{plan_id}/runs"), &json!({"env": {"KEY": "secret:NOPE"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["path"], "env.KEY");
    assert!(body["details"][0]["message"].as_str().unwrap().contains("secret `NOPE` is not configured"), "{body}");
}
