//! A plan that has runs keeps its steps; fork gives an editable copy.

use awc::http::StatusCode;
use loads_actors::domain::views::RunState;
use serde_json::json;

use crate::helpers::{on_both_databases, plan_doc};

on_both_databases! {
    /// Changing the steps of a plan with runs is a 409 that says what to do; the steps stay.
    async fn a_plan_with_runs_refuses_step_changes(app) {
        let plan = app.create_plan(plan_doc("frozen")).await;
        let id = plan["id"].as_str().unwrap().to_string();
        app.record_run(&id, None).await;

        let mut changed = plan_doc("frozen");
        changed["steps"][1]["instance_count"] = json!(3);
        let (status, body) = app.put(&format!("/api/v1/plans/{id}"), &changed).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], "plan_immutable");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("has 1 run(s)") && message.contains(&format!("/api/v1/plans/{id}/fork")), "{message}");

        let mut env_changed = plan_doc("frozen");
        env_changed["environment_data"] = json!({"EXTRA": "1"});
        let (status, _) = app.put(&format!("/api/v1/plans/{id}"), &env_changed).await;
        assert_eq!(status, StatusCode::CONFLICT, "the plan env is part of what ran");

        let (_, unchanged) = app.get(&format!("/api/v1/plans/{id}")).await;
        assert_eq!(unchanged["steps"], plan["steps"]);
        assert_eq!(unchanged["run_count"], 1);
    }

    /// Name, description and `enabled` may still change on a plan with runs.
    async fn a_plan_with_runs_may_be_renamed_and_disabled(app) {
        let plan = app.create_plan(plan_doc("frozen")).await;
        let id = plan["id"].as_str().unwrap().to_string();
        app.record_run(&id, None).await;
        let mut doc = plan_doc("renamed");
        doc["description"] = json!("kept for the record");
        doc["enabled"] = json!(false);
        let (status, body) = app.put(&format!("/api/v1/plans/{id}"), &doc).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["name"], "renamed");
        assert_eq!(body["enabled"], false);
        assert_eq!(body["steps"], plan["steps"], "same step ids and fields");
    }

    /// A fork copies steps and env, has no runs, and can be edited.
    async fn a_fork_is_an_editable_copy(app) {
        let mut doc = plan_doc("base");
        doc["environment_data"] = json!({"TARGET": "http://svc"});
        let plan = app.create_plan(doc).await;
        let id = plan["id"].as_str().unwrap().to_string();
        app.record_run(&id, None).await;

        let (status, fork) = app.send("POST", &format!("/api/v1/plans/{id}/fork"), None, Vec::new()).await;
        assert_eq!(status, StatusCode::CREATED, "{fork}");
        assert_eq!(fork["name"], "base (fork)");
        assert_eq!(fork["run_count"], 0);
        assert_eq!(fork["project_id"], plan["project_id"]);
        assert_eq!(fork["environment_data"], json!({"TARGET": "http://svc"}));
        assert_ne!(fork["id"], plan["id"]);
        let strip = |steps: &serde_json::Value| {
            steps.as_array().unwrap().iter().map(|s| {
                let mut s = s.clone();
                s.as_object_mut().unwrap().remove("id");
                s
            }).collect::<Vec<_>>()
        };
        assert_eq!(strip(&fork["steps"]), strip(&plan["steps"]));

        let (status, second) = app.post(&format!("/api/v1/plans/{id}/fork"), &json!({})).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(second["name"], "base (fork 2)");
        let (status, named) = app.post(&format!("/api/v1/plans/{id}/fork"), &json!({"name": "base v2"})).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(named["name"], "base v2");
        let (status, dup) = app.post(&format!("/api/v1/plans/{id}/fork"), &json!({"name": "base v2"})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{dup}");
        let (status, bad) = app.post(&format!("/api/v1/plans/{id}/fork"), &json!({"name": 3, "x": 1})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");

        let fork_id = fork["id"].as_str().unwrap();
        let mut edited = plan_doc("base (fork)");
        edited["steps"][1]["instance_count"] = json!(7);
        let (status, body) = app.put(&format!("/api/v1/plans/{fork_id}"), &edited).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["steps"][1]["instance_count"], 7);
    }

    /// Importing a changed plan that has runs is refused as a whole: nothing changes.
    async fn import_refuses_changing_a_plan_with_runs(app) {
        let report = app.import_pushgo().await;
        let plan_id = report["project"]["plans"][0]["id"].as_str().unwrap().to_string();
        app.record_run(&plan_id, None).await;
        let mut doc: serde_json::Value = serde_json::from_str(&crate::helpers::pushgo_json()).unwrap();
        for plan in doc["plans"].as_array_mut().unwrap() {
            plan["steps"][0]["instance_count"] = json!(2);
        }
        let (status, body) = app.post("/api/v1/projects/import", &doc).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], "plan_immutable");
        for plan in report["project"]["plans"].as_array().unwrap() {
            let (_, stored) = app.get(&format!("/api/v1/plans/{}", plan["id"].as_str().unwrap())).await;
            assert_ne!(stored["steps"][0]["instance_count"], 2, "the import was all or nothing");
        }
    }

    /// Plans and projects with a live run cannot be deleted; once it has finished they can, runs included.
    async fn deleting_waits_for_live_runs(app) {
        let plan = app.create_plan(plan_doc("busy")).await;
        let id = plan["id"].as_str().unwrap().to_string();
        let run = app.record_run(&id, None).await;
        app.set_run_state(run, RunState::Running).await;

        let (status, body) = app.delete(&format!("/api/v1/plans/{id}")).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], "run_live");
        let (status, _) = app.delete(&format!("/api/v1/projects/{}", plan["project_id"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::CONFLICT);

        app.set_run_state(run, RunState::Completed).await;
        let (status, _) = app.delete(&format!("/api/v1/plans/{id}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.get(&format!("/api/v1/runs/{run}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the plan's runs went with it");
    }
}
