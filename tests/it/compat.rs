//! The loads v2 API keeps the original's paths and shapes.

use awc::http::StatusCode;
use loads_actors::domain::views::RunState;
use serde_json::{json, Value};

use crate::helpers::{on_both_databases, pushgo_json};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect();
    k.sort();
    k
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

const RUN_KEYS: [&str; 12] = [
    "uuid",
    "state",
    "state_name",
    "aborted",
    "failure_reason",
    "step_records",
    "created_at",
    "started_at",
    "completed_at",
    "plan_id",
    "plan_name",
    "owner",
];

on_both_databases! {
    /// POST /api/project imports a project file; GET /api/project and /api/project/{uuid} return the tree.
    async fn projects_have_the_original_shapes(app) {
        let body: Value = serde_json::from_str(&pushgo_json()).unwrap();
        let (status, created) = app.post("/api/project", &body).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        assert_eq!(created["success"], true);
        assert_eq!(created["status"], 200);
        let project = &created["project"];
        assert_eq!(keys(project), sorted(&["uuid", "name", "home_page", "plans"]));

        let (status, list) = app.get("/api/project").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(keys(&list), sorted(&["success", "status", "projects"]));
        assert_eq!(list["projects"][0], *project);

        let uuid = project["uuid"].as_str().unwrap();
        let (status, one) = app.get(&format!("/api/project/{uuid}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(one["project"], *project);

        let plan = project["plans"].as_array().unwrap().iter().find(|p| p["name"] == "Single Server").unwrap();
        assert_eq!(keys(plan), sorted(&["uuid", "name", "description", "enabled", "runs", "steps"]));
        let step = &plan["steps"][1];
        assert_eq!(step["name"], "PushTester");
        assert_eq!(step["plan_id"], plan["uuid"]);
        assert_eq!(step["run_delay"], 10);
        assert_eq!(step["environment_data"], "CONNECTION_COUNT=20\nNOTIFICATION_DELAY=15\nPING_DELAY=50");
        for key in ["uuid", "instance_count", "instance_type", "instance_region", "run_max_time", "node_delay",
                    "container_name", "container_url", "additional_command_args", "dns_name", "port_mapping",
                    "volume_mapping", "docker_series", "prune_running"] {
            assert!(step.get(key).is_some(), "step has {key}: {step}");
        }

        let (status, deleted) = app.delete(&format!("/api/project/{uuid}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(deleted, json!({"success": true, "status": 200}));
        let (status, missing) = app.get(&format!("/api/project/{uuid}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(missing, json!({"success": false, "status": 404, "message": "No such project"}));
    }

    /// GET /api lists runs with the version; GET /api/run/{uuid} returns one; unknown runs are "No such run".
    async fn runs_have_the_original_shapes(app) {
        let report = app.import_pushgo().await;
        let plan = &report["project"]["plans"][1];
        assert_eq!(plan["name"], "Single Server");
        let plan_id = plan["id"].as_str().unwrap();
        let run_id = app.record_run(plan_id, Some("qa")).await;
        app.set_run_state(run_id, RunState::Running).await;

        let (status, root) = app.get("/api?limit=10&offset=0").await;
        assert_eq!(status, StatusCode::OK, "{root}");
        assert_eq!(keys(&root), sorted(&["success", "status", "version", "runs"]));
        assert_eq!(root["version"], loads::VERSION);
        let run = &root["runs"][0];
        assert_eq!(keys(run), sorted(&RUN_KEYS));
        assert_eq!(run["uuid"], json!(run_id.to_string()));
        assert_eq!(run["state"], 1, "RUNNING in the original's numbering");
        assert_eq!(run["state_name"], "running");
        assert_eq!(run["plan_name"], "Single Server");
        assert_eq!(run["owner"], "qa");
        assert!(run["started_at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()), "{run}");
        let records = run["step_records"].as_array().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(keys(&records[0]), sorted(&["uuid", "run_id", "step_id", "failed", "created_at", "started_at", "completed_at"]));

        let (status, one) = app.get(&format!("/api/run/{run_id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(one["run"], *run);
        assert_eq!(one["success"], true);

        let (status, plans) = app.get("/api/project").await;
        assert_eq!(status, StatusCode::OK);
        let listed = plans["projects"][0]["plans"].as_array().unwrap().iter().find(|p| p["name"] == "Single Server").unwrap().clone();
        assert_eq!(listed["runs"][0], *run, "plans carry their runs");

        let (status, missing) = app.get(&format!("/api/run/{}", uuid::Uuid::new_v4())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(missing, json!({"success": false, "status": 404, "message": "No such run"}));
        let (status, bad) = app.get("/api/run/not-a-uuid").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(bad["success"], false);
        assert_eq!(bad["status"], 400);
    }

    /// The original's example project imports on a local broker with default settings,
    /// through both APIs, with a warning for each volume this broker would not mount; a run
    /// of it is refused at start, naming the step, the field and the setting, and nothing is recorded.
    async fn the_loads_v2_project_imports_here_and_its_run_is_refused_at_start(app) {
        let body: Value = serde_json::from_str(&pushgo_json()).unwrap();
        let (status, created) = app.post("/api/project", &body).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let (status, report) = app.send("POST", "/api/v1/projects/import", Some("application/json"), pushgo_json().into_bytes()).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["unchanged"], json!(["Single Server", "Moar Servers"]), "{report}");
        let warned: Vec<&str> = report["warnings"].as_array().unwrap().iter().filter_map(|w| w["path"].as_str()).collect();
        assert!(warned.contains(&"plans[0].steps[0].volume_mapping"), "{report}");
        assert!(report["warnings"].to_string().contains("docker.volume_root"), "{report}");

        let plan = report["project"]["plans"].as_array().unwrap().iter().find(|p| p["name"] == "Single Server").unwrap().clone();
        let plan_id = plan["id"].as_str().unwrap();
        let (status, refused) = app.post(&format!("/api/v1/plans/{plan_id}/runs"), &json!({})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert_eq!(refused["error"], "validation_failed", "{refused}");
        assert_eq!(refused["details"][0]["path"], "steps[0].volume_mapping", "{refused}");
        let why = refused["details"][0]["message"].as_str().unwrap();
        for part in ["step \"Test Cluster\"", "\"/var/log/$RUN_ID\"", "docker.volume_root"] {
            assert!(why.contains(part), "{part} in {why}");
        }
        let (status, refused) = app.post(&format!("/api/orchestrate/{plan_id}"), &json!({})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert!(refused["message"].as_str().unwrap().contains("docker.volume_root"), "{refused}");
        let (status, root) = app.get("/api").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(root["runs"], json!([]), "a refused start records no run");
    }

    /// Invalid project files get the original's error shape with every problem in the message.
    async fn compat_errors_have_the_original_shape(app) {
        let (status, body) = app.post("/api/project", &json!({"plans": [{"name": "p", "steps": [{"name": "s"}]}]})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(keys(&body), sorted(&["success", "status", "message"]));
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("name: is required") && message.contains("plans[0].steps[0].container_name: is required"), "{message}");
        let (status, body) = app.send("POST", "/api/project", Some("application/json"), b"{oops".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["success"], false);
    }
}
