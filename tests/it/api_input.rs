//! Malformed input of every kind gets a 4xx in the documented shape, never a 500.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{on_both_databases, Backend, TestApp};

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["details"].is_array(), "{body}");
}

on_both_databases! {
    /// Syntax errors, wrong shapes, bad media types and bad ids are each a clear 4xx.
    async fn malformed_requests_get_clear_client_errors(app) {
        let (status, body) = app.send("POST", "/api/v1/projects", Some("application/json"), b"{\"name\": ".to_vec()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_json");
        assert!(body["message"].as_str().unwrap().contains("line 1"), "{body}");

        let (status, body) = app.send("POST", "/api/v1/projects", Some("application/json"), Vec::new()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");

        let (status, body) = app.send("POST", "/api/v1/projects", Some("application/json"), vec![0xff, 0xfe, b'{']).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_body");

        let (status, body) = app.post("/api/v1/projects", &json!(["not", "an", "object"])).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(body["details"][0]["message"], "must be an object, not a list");

        let (status, body) = app.send("POST", "/api/v1/projects", Some("text/plain"), b"name=x".to_vec()).await;
        assert_error(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
        let (status, body) = app.send("POST", "/api/v1/projects", Some("application/toml"), b"name = \"x\"".to_vec()).await;
        assert_error(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

        let (status, body) = app.send("POST", "/api/v1/projects/import", Some("application/yaml"), b"name: [unclosed".to_vec()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_document");
        assert!(body["message"].as_str().unwrap().starts_with("not valid YAML"), "{body}");
        let (status, body) = app.send("POST", "/api/v1/projects/import", Some("application/toml"), b"name = ".to_vec()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_document");

        let deep = "[".repeat(100_000);
        let (status, body) = app.send("POST", "/api/v1/projects/import", Some("application/json"), deep.into_bytes()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_json");

        for path in ["/api/v1/projects/not-a-uuid", "/api/v1/plans/123", "/api/v1/runs/%20", "/api/v1/projects/zz/plans"] {
            let (status, body) = app.get(path).await;
            assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_id");
            assert_eq!(body["details"][0]["path"], "id");
        }
        let unknown = uuid::Uuid::new_v4();
        for path in ["projects", "plans", "runs"] {
            let (status, body) = app.get(&format!("/api/v1/{path}/{unknown}")).await;
            assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        }
        let (status, body) = app.send("POST", &format!("/api/v1/projects/{unknown}/plans"), Some("application/json"),
            crate::helpers::plan_doc("p").to_string().into_bytes()).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

        let (status, body) = app.get("/api/v1/nothing-here").await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        let (status, body) = app.get("/elsewhere").await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        let (status, body) = app.send("PATCH", "/api/v1/projects", None, Vec::new()).await;
        assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let (status, body) = app.send("POST", &format!("/api/v1/runs/{unknown}"), None, Vec::new()).await;
        assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
}

/// Bodies over `server.max_body_bytes` are 413, whether declared or streamed.
#[actix_web::test]
async fn oversized_bodies_are_413() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn(backend, &[("LOADS__SERVER__MAX_BODY_BYTES", "2048")]).await;
        let big = json!({"name": "x".repeat(4096)});
        let (status, body) = app.post("/api/v1/projects", &big).await;
        assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        let (status, body) =
            app.send("POST", "/api/v1/projects/import", Some("application/json"), crate::helpers::pushgo_json().into_bytes()).await;
        assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        let (status, _) = app.post("/api/v1/projects", &json!({"name": "small"})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
}
