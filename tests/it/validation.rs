//! Every validation rule, reported through the API with the path of the field.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{on_both_databases, Backend, TestApp};

fn details(body: &Value) -> Vec<(String, String)> {
    body["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details in {body}"))
        .iter()
        .map(|d| (d["path"].as_str().unwrap().to_string(), d["message"].as_str().unwrap().to_string()))
        .collect()
}

fn paths(body: &Value) -> Vec<String> {
    details(body).into_iter().map(|(p, _)| p).collect()
}

on_both_databases! {
    /// One request with many problems gets all of them back, each with its path, and stores nothing.
    async fn a_bad_project_file_reports_every_problem_with_its_path(app) {
        let doc = json!({
            "name": "bad",
            "homepage": "typo",
            "plans": [
                {
                    "name": "p",
                    "steps": [
                        {"name": "a", "container_name": "x", "run_max_time": -1, "run_delay": -5, "node_delay": -2},
                        {"name": "a", "container_name": "x", "instance_count": 0},
                        {"container_name": "x", "port_mapping": "80:80,http:8080", "volume_mapping": "data:/srv"},
                        {"name": "d", "container_name": "img:$TAG", "environment_data": {"URL": "${UNDEFINED}"}, "colour": "red"},
                        {"name": "e"}
                    ]
                },
                {"steps": []},
                {"name": "p", "steps": "none"}
            ]
        });
        let (status, body) = app.post("/api/v1/projects/import", &doc).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"], "validation_failed");
        assert_eq!(
            paths(&body),
            vec![
                "homepage",
                "plans[0].steps[0].run_delay",
                "plans[0].steps[0].run_max_time",
                "plans[0].steps[0].node_delay",
                "plans[0].steps[1].instance_count",
                "plans[0].steps[1].name",
                "plans[0].steps[2].name",
                "plans[0].steps[2].port_mapping",
                "plans[0].steps[2].volume_mapping",
                "plans[0].steps[3].colour",
                "plans[0].steps[3].container_name",
                "plans[0].steps[3].environment_data.URL",
                "plans[0].steps[4].container_name",
                "plans[1].name",
                "plans[1].steps",
                "plans[2].steps",
                "plans[2].name",
            ]
        );
        let all = details(&body);
        let message = |path: &str| all.iter().find(|(p, _)| p == path).map(|(_, m)| m.clone()).unwrap();
        assert_eq!(message("plans[0].steps[0].run_max_time"), "must be >= 0");
        assert_eq!(message("plans[0].steps[1].instance_count"), "must be at least 1");
        assert_eq!(message("plans[0].steps[1].name"), "duplicate step name \"a\" (also steps[0])");
        assert_eq!(message("plans[0].steps[2].name"), "is required");
        assert!(message("plans[0].steps[2].port_mapping").contains("\"http:8080\""));
        assert!(message("plans[0].steps[2].volume_mapping").contains("\"data:/srv\""));
        assert!(message("plans[0].steps[3].container_name").starts_with("unknown variable `$TAG`"));
        assert!(message("plans[0].steps[3].environment_data.URL").starts_with("unknown variable `$UNDEFINED`"));
        assert!(message("plans[0].steps[3].colour").starts_with("unknown field"));
        assert_eq!(message("plans[1].steps"), "must have at least one step");
        assert_eq!(message("plans[2].name"), "duplicate plan name \"p\" (also plans[0])");
        assert_eq!(message("homepage"), "unknown field (expected one of: name, home_page, plans)");

        let (_, list) = app.get("/api/v1/projects").await;
        assert_eq!(list["total"], 0, "nothing stored");
    }

    /// Fields of the wrong type are 422 with the path, not 400 or 500.
    async fn wrong_types_name_the_field(app) {
        let plan = json!({
            "name": 7,
            "enabled": "yes",
            "steps": [{"name": "s", "container_name": ["x"], "instance_count": 1.5, "prune_running": 1,
                       "environment_data": "A=1"}]
        });
        let (status, project) = app.post("/api/v1/projects", &json!({"name": "types"})).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = app.post(&format!("/api/v1/projects/{}/plans", project["id"].as_str().unwrap()), &plan).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            details(&body),
            vec![
                ("name".into(), "must be a string, not a number".into()),
                ("enabled".into(), "must be true or false, not a string".into()),
                ("steps[0].prune_running".into(), "must be true or false, not a number".into()),
                ("steps[0].instance_count".into(), "must be a whole number".into()),
                ("steps[0].container_name".into(), "must be a string, not a list".into()),
                (
                    "steps[0].environment_data".into(),
                    "must be an object or a list of \"KEY=VALUE\" strings, not a string".into()
                ),
            ]
        );
    }

    /// Variables from the step env, the plan env and the injected set are all defined.
    async fn defined_variables_pass_validation(app with &[("LOADS__DOCKER__VOLUME_ROOT", "/srv")]) {
        let plan = app.create_plan(json!({
            "name": "vars",
            "environment_data": ["TARGET=http://svc:8080"],
            "steps": [{
                "name": "gen",
                "container_name": "gen:${TAG}",
                "container_url": "https://images.example/gen-$TAG.tar.gz",
                "environment_data": {"TAG": "1.0", "URL": "$TARGET/run/$RUN_ID", "PRICE": "$$5"},
                "additional_command_args": "--statsd $STATSD_HOST:$STATSD_PORT --id ${CONTAINER_ID}",
                "volume_mapping": "/data:/srv/$RUN_ID:rw"
            }]
        })).await;
        assert_eq!(plan["environment_data"], json!({"TARGET": "http://svc:8080"}));
        assert_eq!(plan["steps"][0]["environment_data"]["PRICE"], "$$5", "stored as written, rendered at run time");
    }

    /// A malformed `$` reference is an error at the field that holds it.
    async fn malformed_variable_references_are_errors(app) {
        let (status, body) = app.post("/api/v1/projects", &json!({"name": "x", "plans": [{"name": "p", "steps": [
            {"name": "s", "container_name": "img", "additional_command_args": "--cost $5", "environment_data": {"A": "${B"}}
        ]}]})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let all = details(&body);
        assert_eq!(all[0].0, "plans[0].steps[0].additional_command_args");
        assert!(all[0].1.contains("write `$$` for a literal `$`"), "{all:?}");
        assert_eq!(all[1].0, "plans[0].steps[0].environment_data.A");
        assert!(all[1].1.starts_with("unclosed `${`"), "{all:?}");
    }

    /// Updating a project validates its fields too.
    async fn project_updates_are_validated(app) {
        let (_, project) = app.post("/api/v1/projects", &json!({"name": "v"})).await;
        let (status, body) = app.put(&format!("/api/v1/projects/{}", project["id"].as_str().unwrap()), &json!({"name": "", "plans": []})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(paths(&body), vec!["plans", "name"]);
    }
}

/// The instance count cap comes from configuration.
#[actix_web::test]
async fn instance_count_above_the_configured_cap_is_refused() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn(backend, &[("LOADS__LIMITS__MAX_INSTANCE_COUNT", "10"), ("LOADS__LIMITS__MAX_STEPS_PER_PLAN", "2")]).await;
        let (status, body) = app
            .post(
                "/api/v1/projects",
                &json!({"name": "cap", "plans": [{"name": "p", "steps": [
                    {"name": "a", "container_name": "i", "instance_count": 11},
                    {"name": "b", "container_name": "i", "instance_count": 10},
                    {"name": "c", "container_name": "i"}
                ]}]}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend:?}: {body}");
        assert_eq!(
            details(&body),
            vec![
                ("plans[0].steps".into(), "has 3 steps, at most 2 are allowed".into()),
                ("plans[0].steps[0].instance_count".into(), "must be at most 10 (limits.max_instance_count)".into()),
            ]
        );
    }
}
