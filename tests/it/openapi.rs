//! The OpenAPI document covers every v1 route and is valid OpenAPI 3.

use std::collections::BTreeSet;

use awc::http::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, TestApp};

const ROUTES: [(&str, &str); 31] = [
    ("get", "/health"),
    ("get", "/api/v1/projects"),
    ("post", "/api/v1/projects"),
    ("post", "/api/v1/projects/import"),
    ("get", "/api/v1/projects/{id}"),
    ("put", "/api/v1/projects/{id}"),
    ("delete", "/api/v1/projects/{id}"),
    ("get", "/api/v1/projects/{id}/plans"),
    ("post", "/api/v1/projects/{id}/plans"),
    ("get", "/api/v1/plans/{id}"),
    ("put", "/api/v1/plans/{id}"),
    ("delete", "/api/v1/plans/{id}"),
    ("post", "/api/v1/plans/{id}/fork"),
    ("post", "/api/v1/plans/{id}/runs"),
    ("get", "/api/v1/instances"),
    ("delete", "/api/v1/instances/{id}"),
    ("get", "/api/v1/runs"),
    ("get", "/api/v1/runs/{id}"),
    ("delete", "/api/v1/runs/{id}"),
    ("post", "/api/v1/runs/{id}/abort"),
    ("get", "/api/v1/runs/{id}/logs"),
    ("get", "/api/v1/runs/{id}/metrics"),
    ("get", "/api/v1/runs/{id}/series"),
    ("get", "/api/v1/whoami"),
    ("get", "/api/v1/runs/{id}/dashboard"),
    ("get", "/api/v1/runs/{id}/events"),
    ("get", "/api/v1/runs/{id}/compare"),
    ("get", "/api/v1/plans/{id}/baseline"),
    ("get", "/api/v1/plans/{id}/estimate"),
    ("post", "/api/v1/plans/{id}/baseline"),
    ("delete", "/api/v1/plans/{id}/baseline"),
];

async fn document() -> Value {
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let (status, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    doc
}

/// Every route the server answers is in the document, and nothing else.
#[actix_web::test]
async fn the_document_lists_every_v1_route() {
    let doc = document().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["version"], loads::VERSION);
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |m| (m.clone(), path.clone())))
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, expected);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    // What a browser's request may get: 421 anywhere, 403 for changes and the feed.
    for (method, path) in ROUTES {
        let responses = &doc["paths"][path][method]["responses"];
        assert!(responses["421"].is_object(), "{method} {path}: {responses}");
        if method != "get" || path.ends_with("/events") {
            assert!(responses["403"].is_object(), "{method} {path}: {responses}");
        }
    }
}

/// The document passes a real OpenAPI validator (PyPI `openapi-spec-validator`, installed by scripts/test).
#[actix_web::test]
async fn the_document_is_valid_openapi() {
    let doc = document().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&path)
        .output()
        .expect("python3 runs (install it, and `pip install openapi-spec-validator`, or use scripts/test)");
    assert!(
        output.status.success(),
        "the OpenAPI document is not valid:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
