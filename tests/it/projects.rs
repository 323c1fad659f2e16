//! Projects, plans and project-file import through API v1.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{on_both_databases, plan_doc, pushgo_json};

fn plan_named<'a>(project: &'a Value, name: &str) -> &'a Value {
    project["plans"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no plan {name}"))
}

on_both_databases! {
    /// Every field of pushgo.json, defaults applied and env lists turned into maps.
    async fn import_keeps_every_field_of_the_loads_v2_project_file(app) {
        let report = app.import_pushgo().await;
        assert_eq!(report["project_created"], true);
        assert_eq!(report["created"], json!(["Single Server", "Moar Servers"]));
        let project = &report["project"];
        assert_eq!(project["name"], "Push Testing");
        assert_eq!(project["plan_count"], 2);

        let single = plan_named(project, "Single Server");
        assert_eq!(single["step_count"], 2);
        let (status, plan) = app.get(&format!("/api/v1/plans/{}", single["id"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::OK, "{plan}");
        assert_eq!(plan["description"], "10 Server cluster with 1.6 million clients");
        assert_eq!(plan["enabled"], true);
        let steps = plan["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2);

        let cluster = &steps[0];
        assert_eq!(cluster["position"], 0);
        assert_eq!(cluster["name"], "Test Cluster");
        assert_eq!(cluster["instance_count"], 10);
        assert_eq!(cluster["instance_region"], "us-east-1");
        assert_eq!(cluster["instance_type"], "m3.large");
        assert_eq!(cluster["run_max_time"], 3600);
        assert_eq!(cluster["run_delay"], 0, "default");
        assert_eq!(cluster["node_delay"], 0, "default");
        assert_eq!(cluster["container_name"], "bbangert/pushgo:1.5rc4");
        assert_eq!(cluster["container_url"], "https://s3.amazonaws.com/loads-docker-images/pushgo-1.5rc4.tar.bz2");
        assert_eq!(cluster["prune_running"], false);
        assert_eq!(cluster["dns_name"], "testcluster.mozilla.org");
        assert_eq!(cluster["port_mapping"], "8080:8090,8081:8081,3000:3000");
        assert_eq!(cluster["volume_mapping"], "/var/log:/var/log/$RUN_ID:rw");
        assert_eq!(cluster["docker_series"], "pushgo");
        assert_eq!(cluster["additional_command_args"], Value::Null);
        let env = cluster["environment_data"].as_object().unwrap();
        assert_eq!(env.len(), 20);
        assert_eq!(env["PUSHGO_METRICS_STATSD_SERVER"], "$STATSD_HOST:$STATSD_PORT");
        assert_eq!(env["PUSHGO_METRICS_PREFIX"], "", "empty values survive");
        assert_eq!(env["PUSHGO_DEFAULT_PUSH_ENDPOINT_TEMPLATE"], "http://testcluster.mozilla.org:8081/update/{{.Token}}");

        let tester = &steps[1];
        assert_eq!(tester["name"], "PushTester");
        assert_eq!(tester["instance_count"], 5);
        assert_eq!(tester["instance_type"], "t2.medium");
        assert_eq!(tester["run_delay"], 10);
        assert_eq!(tester["run_max_time"], 3590);
        assert_eq!(tester["prune_running"], true, "default");
        assert_eq!(tester["additional_command_args"], "testcluster.mozilla.org 8090 10000 ping $STATSD_HOST:$STATSD_PORT +RTS -N2");
        assert_eq!(tester["docker_series"], "push_tester");
        assert_eq!(tester["environment_data"], json!({"CONNECTION_COUNT": "20", "NOTIFICATION_DELAY": "15", "PING_DELAY": "50"}));

        let moar = plan_named(project, "Moar Servers");
        let (_, plan) = app.get(&format!("/api/v1/plans/{}", moar["id"].as_str().unwrap())).await;
        let third = &plan["steps"][0];
        assert_eq!(third["name"], "Test Cluster");
        assert_eq!(third["instance_count"], 3);
        assert_eq!(third["instance_type"], "m3.large");
        assert_eq!(third["instance_region"], "us-east-1");
        assert_eq!(third["container_name"], "bbangert/pushgo:1.5rc3");
        assert_eq!(third["container_url"], "https://s3.amazonaws.com/loads-docker-images/pushgo-1.5rc3.tar.bz2");
        assert_eq!(third["run_max_time"], 840);
        assert_eq!(third["prune_running"], true, "default");
        assert_eq!(third["dns_name"], "testcluster.mozilla.org");
        assert_eq!(third["port_mapping"], "8080:8090,8081:8081,3000:3000");
        assert_eq!(third["volume_mapping"], "/var/log:/var/log/$RUN_ID:rw");
        assert_eq!(third["docker_series"], "pushgo");
        assert_eq!(third["environment_data"].as_object().unwrap().len(), 18);
        assert_eq!(third["environment_data"]["PUSHGO_DEFAULT_PUSH_ENDPOINT_TEMPLATE"], "http://$HOST_IP:8081/update/{{.Token}}");
        for flag in ["monitor", "service"] {
            assert_eq!(third[flag], false);
        }
    }

    /// Importing the same file again reports every plan unchanged and creates nothing.
    async fn importing_the_same_file_twice_changes_nothing(app) {
        let first = app.import_pushgo().await;
        let (status, second) = app.send("POST", "/api/v1/projects/import", Some("application/json"), pushgo_json().into_bytes()).await;
        assert_eq!(status, StatusCode::OK, "{second}");
        assert_eq!(second["project_created"], false);
        assert_eq!(second["unchanged"], json!(["Single Server", "Moar Servers"]));
        assert_eq!(second["project"]["id"], first["project"]["id"]);
        let (_, list) = app.get("/api/v1/projects").await;
        assert_eq!(list["total"], 1);
    }

    /// TOML and YAML project files, told apart by Content-Type, give the same plan as JSON.
    async fn import_accepts_toml_and_yaml(app) {
        let toml = r#"
name = "formats"
[[plans]]
name = "toml plan"
[[plans.steps]]
name = "gen"
container_name = "gen:1"
instance_count = 2
environment_data = ["A=1", "B=$RUN_ID"]
"#;
        let yaml = "name: formats\nplans:\n  - name: yaml plan\n    steps:\n      - name: gen\n        container_name: gen:1\n        instance_count: 2\n        environment_data:\n          A: 1\n          B: $RUN_ID\n";
        let (status, t) = app.send("POST", "/api/v1/projects/import", Some("application/toml"), toml.into()).await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        let (status, y) = app.send("POST", "/api/v1/projects/import", Some("application/yaml"), yaml.into()).await;
        assert_eq!(status, StatusCode::OK, "{y}");
        assert_eq!(y["created"], json!(["yaml plan"]));
        let project = &y["project"];
        let mut steps = Vec::new();
        for name in ["toml plan", "yaml plan"] {
            let (_, plan) = app.get(&format!("/api/v1/plans/{}", plan_named(project, name)["id"].as_str().unwrap())).await;
            let mut step = plan["steps"][0].clone();
            step.as_object_mut().unwrap().remove("id");
            steps.push(step);
        }
        assert_eq!(steps[0], steps[1]);
        assert_eq!(steps[0]["environment_data"], json!({"A": "1", "B": "$RUN_ID"}));
    }

    /// Re-importing a changed plan that has no runs replaces its steps.
    async fn import_replaces_a_changed_plan_without_runs(app) {
        app.import_pushgo().await;
        let mut doc: Value = serde_json::from_str(&pushgo_json()).unwrap();
        doc["plans"][1]["steps"][0]["instance_count"] = json!(4);
        let (status, report) = app.post("/api/v1/projects/import", &doc).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["updated"], json!(["Moar Servers"]));
        assert_eq!(report["unchanged"], json!(["Single Server"]));
        let moar = plan_named(&report["project"], "Moar Servers");
        let (_, plan) = app.get(&format!("/api/v1/plans/{}", moar["id"].as_str().unwrap())).await;
        assert_eq!(plan["steps"][0]["instance_count"], 4);
    }

    /// Create, read, rename and delete a project; a duplicate name is a conflict.
    async fn projects_can_be_created_renamed_and_deleted(app) {
        let (status, created) = app.post("/api/v1/projects", &json!({"name": "shop", "home_page": "https://shop.example"})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["plans"], json!([]));
        let id = created["id"].as_str().unwrap().to_string();

        let (status, dup) = app.post("/api/v1/projects", &json!({"name": "shop"})).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(dup["error"], "project_exists");

        let (status, renamed) = app.put(&format!("/api/v1/projects/{id}"), &json!({"name": "store"})).await;
        assert_eq!(status, StatusCode::OK, "{renamed}");
        assert_eq!(renamed["name"], "store");
        assert_eq!(renamed["home_page"], Value::Null);

        let (status, got) = app.get(&format!("/api/v1/projects/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["name"], "store");

        let (status, _) = app.delete(&format!("/api/v1/projects/{id}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, gone) = app.get(&format!("/api/v1/projects/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(gone["error"], "not_found");
    }

    /// A project created with plans lists them; deleting it removes its plans too.
    async fn deleting_a_project_removes_its_plans(app) {
        let (status, project) = app.post("/api/v1/projects", &json!({"name": "with plans", "plans": [plan_doc("a"), plan_doc("b")]})).await;
        assert_eq!(status, StatusCode::CREATED, "{project}");
        let plan_id = project["plans"][0]["id"].as_str().unwrap().to_string();
        let (status, plans) = app.get(&format!("/api/v1/projects/{}/plans", project["id"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(plans["total"], 2);
        let (status, _) = app.delete(&format!("/api/v1/projects/{}", project["id"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.get(&format!("/api/v1/plans/{plan_id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// A plan is created with its steps in order, replaced, and deleted.
    async fn plans_can_be_created_replaced_and_deleted(app) {
        let plan = app.create_plan(plan_doc("smoke")).await;
        let id = plan["id"].as_str().unwrap().to_string();
        assert_eq!(plan["run_count"], 0);
        assert_eq!(plan["steps"][0]["name"], "service");
        assert_eq!(plan["steps"][0]["service"], true);
        assert_eq!(plan["steps"][1]["run_delay"], 5);
        assert_eq!(plan["steps"][1]["required"], true);

        let mut doc = plan_doc("smoke v2");
        doc["steps"].as_array_mut().unwrap().reverse();
        let (status, replaced) = app.put(&format!("/api/v1/plans/{id}"), &doc).await;
        assert_eq!(status, StatusCode::OK, "{replaced}");
        assert_eq!(replaced["name"], "smoke v2");
        assert_eq!(replaced["steps"][0]["name"], "load");

        let project_id = plan["project_id"].as_str().unwrap();
        let (status, dup) = app.post(&format!("/api/v1/projects/{project_id}/plans"), &plan_doc("smoke v2")).await;
        assert_eq!(status, StatusCode::CONFLICT, "{dup}");
        assert_eq!(dup["error"], "plan_exists");

        let (status, _) = app.delete(&format!("/api/v1/plans/{id}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.delete(&format!("/api/v1/plans/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// Health is 200 while the database answers.
    async fn health_answers_when_the_database_does(app) {
        let (status, body) = app.get("/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
    }
}
