//! Paging and filters of the lists.

use awc::http::StatusCode;
use loads_actors::domain::views::RunState;
use serde_json::{json, Value};

use crate::helpers::{on_both_databases, plan_doc};

fn names(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

on_both_databases! {
    /// Pages of projects by name, with the total across pages.
    async fn projects_are_paged_by_name_with_a_total(app) {
        for name in ["e", "c", "a", "d", "b"] {
            let (status, _) = app.post("/api/v1/projects", &json!({"name": name})).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (_, first) = app.get("/api/v1/projects?limit=2").await;
        assert_eq!((first["total"].as_u64(), first["limit"].as_u64(), first["offset"].as_u64()), (Some(5), Some(2), Some(0)));
        assert_eq!(names(&first), ["a", "b"]);
        let (_, second) = app.get("/api/v1/projects?limit=2&offset=2").await;
        assert_eq!(names(&second), ["c", "d"]);
        let (_, last) = app.get("/api/v1/projects?limit=2&offset=4").await;
        assert_eq!(names(&last), ["e"]);
        let (_, past) = app.get("/api/v1/projects?offset=10").await;
        assert_eq!(names(&past), Vec::<String>::new());
        assert_eq!(past["total"], 5);
        assert_eq!(past["limit"], 50, "default page size");
    }

    /// Runs are listed newest first and filtered by plan, project, state and owner.
    async fn runs_are_filtered_and_paged(app) {
        let a = app.create_plan(plan_doc("a")).await;
        let b = app.create_plan(plan_doc("b")).await;
        let (a_id, b_id) = (a["id"].as_str().unwrap().to_string(), b["id"].as_str().unwrap().to_string());
        let r1 = app.record_run(&a_id, Some("alice")).await;
        let r2 = app.record_run(&a_id, Some("bob")).await;
        let r3 = app.record_run(&a_id, Some("alice")).await;
        let r4 = app.record_run(&b_id, None).await;
        app.set_run_state(r2, RunState::Running).await;

        let ids = |page: &Value| -> Vec<String> {
            page["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
        };
        let s = |id: uuid::Uuid| id.to_string();

        let (status, all) = app.get("/api/v1/runs").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&all), [s(r4), s(r3), s(r2), s(r1)]);
        let (_, of_a) = app.get(&format!("/api/v1/runs?plan_id={a_id}")).await;
        assert_eq!(of_a["total"], 3);
        let (_, of_project) = app.get(&format!("/api/v1/runs?project_id={}", b["project_id"].as_str().unwrap())).await;
        assert_eq!(ids(&of_project), [s(r4)]);
        let (_, alice) = app.get(&format!("/api/v1/runs?plan_id={a_id}&owner=alice&limit=1")).await;
        assert_eq!((alice["total"].as_u64(), ids(&alice)), (Some(2), vec![s(r3)]));
        let (_, alice_2) = app.get("/api/v1/runs?owner=alice&limit=1&offset=1").await;
        assert_eq!(ids(&alice_2), [s(r1)]);
        let (_, running) = app.get("/api/v1/runs?state=running").await;
        assert_eq!(ids(&running), [s(r2)]);

        let (status, run) = app.get(&format!("/api/v1/runs/{r1}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(run["state"], "pending");
        assert_eq!(run["plan_name"], "a");
        assert_eq!(run["owner"], "alice");
        let records = run["step_records"].as_array().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["step_name"], "service");
        assert_eq!(records[1]["step_name"], "load");
        assert_eq!(records[0]["state"], "pending");
        assert_eq!(records[0]["run_id"], json!(s(r1)));
    }

    /// Bad paging and filter values name the parameter.
    async fn bad_query_parameters_are_400_with_the_parameter(app) {
        for (query, param) in [
            ("/api/v1/projects?limit=abc", "limit"),
            ("/api/v1/projects?limit=0", "limit"),
            ("/api/v1/projects?limit=1001", "limit"),
            ("/api/v1/projects?offset=-1", "offset"),
            ("/api/v1/runs?state=sleeping", "state"),
            ("/api/v1/runs?plan_id=42", "plan_id"),
        ] {
            let (status, body) = app.get(query).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert_eq!(body["details"][0]["path"], param, "{query}: {body}");
        }
    }
}
