//! Bearer tokens: required when configured, and never optional off loopback.

use awc::http::StatusCode;
use serde_json::json;

use crate::helpers::{settings, Backend, TestApp};

const TOKEN: &str = "test-token-0123456789";

/// With tokens configured, every API route needs one; health and the API description stay public.
#[actix_web::test]
async fn with_tokens_the_api_needs_a_valid_bearer_token() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let mut app = TestApp::spawn(backend, &[("LOADS__AUTH__TOKENS", &format!("other-token-abcdefgh,{TOKEN}"))]).await;

        let (status, body) = app.get("/api/v1/projects").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"], "unauthorized");
        let (status, body) = app.get("/api").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, json!({"success": false, "status": 401, "message": "this API needs an `Authorization: Bearer <token>` header"}));
        let (status, _) = app.post("/api/v1/projects", &json!({"name": "x"})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        for public in ["/health", "/api/v1/openapi.json"] {
            let (status, _) = app.get(public).await;
            assert_eq!(status, StatusCode::OK, "{public} is public");
        }

        app.token = Some("wrong-token-0123456789".into());
        let (status, body) = app.get("/api/v1/projects").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["message"], "the bearer token is not valid");

        app.token = Some(TOKEN.into());
        let (status, _) = app.post("/api/v1/projects", &json!({"name": "x"})).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = app.get("/api/v1/projects").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["total"], 1);
    }
}

/// The challenge header tells clients which scheme to use.
#[actix_web::test]
async fn unauthorized_answers_carry_a_bearer_challenge() {
    let app = TestApp::spawn(Backend::Sqlite, &[("LOADS__AUTH__TOKENS", TOKEN)]).await;
    let response = awc::Client::new().get(format!("{}/api/v1/runs", app.base)).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer realm=\"loads\""));
    let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id");
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
}

/// Without tokens the API is open, on loopback.
#[actix_web::test]
async fn without_tokens_the_api_is_open_on_loopback() {
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    assert!(app.base.starts_with("http://127.0.0.1:"));
    let (status, _) = app.get("/api/v1/projects").await;
    assert_eq!(status, StatusCode::OK);
}

/// Binding a non-loopback address without tokens is refused before anything is bound.
#[actix_web::test]
async fn serving_beyond_loopback_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let settings = settings(&url, &[("LOADS__SERVER__HOST", "0.0.0.0")]);
    let err = loads::startup::Application::build(&settings).await.err().expect("refused");
    let message = err.to_string();
    assert!(message.contains("refusing to serve on 0.0.0.0 without authentication"), "{message}");
    assert!(message.contains("auth.tokens"), "{message}");
    assert!(!dir.path().join("x.db").exists(), "refused before touching the database");
}

/// Short tokens are a configuration error naming the key.
#[test]
fn short_tokens_are_refused() {
    let err = loads::config::Settings::load_from(None, vec![("LOADS__AUTH__TOKENS".into(), "short".into())]).unwrap_err();
    assert!(err.to_string().contains("auth.tokens"), "{err}");
}

/// A `read` token may read everything, the live feed included, and nothing else:
/// every change answers 403 naming the role it needs; an `operate` token may do it.
#[actix_web::test]
async fn read_tokens_read_and_operate_tokens_change() {
    const READER: &str = "reader-token-0123456789";
    let mut app = TestApp::spawn(Backend::Sqlite, &[("LOADS__AUTH__TOKENS", TOKEN), ("LOADS__AUTH__READ_TOKENS", READER)]).await;
    app.token = Some(TOKEN.into());
    let plan = app.create_plan(json!({"name": "p", "enabled": false, "steps": [{"name": "s", "container_name": "x"}]})).await;
    let plan_id = plan["id"].as_str().unwrap().to_string();

    app.token = Some(READER.into());
    for path in ["/api/v1/projects", "/api/v1/runs", &format!("/api/v1/plans/{plan_id}"), "/api"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let writes: Vec<(&str, String)> = vec![
        ("POST", "/api/v1/projects".into()),
        ("POST", format!("/api/v1/plans/{plan_id}/runs")),
        ("DELETE", format!("/api/v1/plans/{plan_id}")),
        ("POST", format!("/api/v1/runs/{}/abort", uuid::Uuid::new_v4())),
        ("DELETE", "/api/v1/instances/i-0123456789abcdef0".into()),
    ];
    for (method, path) in &writes {
        let (status, body) = app.send(method, path, Some("application/json"), b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"], "forbidden");
        assert!(body["message"].as_str().unwrap().contains("needs an `operate` token"), "{body}");
    }
    let (status, body) = app.send("DELETE", "/api/instances", None, Vec::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the compat API too: {body}");
    assert_eq!(body["status"], 403);

    app.token = Some(TOKEN.into());
    let (status, body) = app.send("DELETE", &format!("/api/v1/plans/{plan_id}"), None, Vec::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}
