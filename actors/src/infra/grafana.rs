//! Grafana: rendering a run's dashboard from a handlebars template, and
//! pushing it through Grafana's HTTP API (`POST /api/dashboards/db`).

use std::path::PathBuf;

use handlebars::Handlebars;
use serde_json::{json, Value};

use crate::domain::dashboard::DashboardModel;

/// The built-in template.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../dashboards/default.json.hbs");

/// Why a dashboard could not be made or published.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The plan names a template that is not there.
    #[error("no dashboard template named {0:?} (looked for {0}.json.hbs in grafana.templates_dir)")]
    NoTemplate(String),
    /// The template does not render, or not to JSON.
    #[error("dashboard template {name:?}: {message}")]
    Template {
        /// The template.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Grafana refused or could not be reached.
    #[error("Grafana at {url}: {message}")]
    Push {
        /// Where.
        url: String,
        /// What happened.
        message: String,
    },
}

/// Escapes a value for a JSON string (the templates write JSON, not HTML).
fn json_escape(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_string()
}

/// Renders dashboards: the built-in template, or a plan's own from a directory.
#[derive(Clone)]
pub struct Dashboards {
    templates_dir: Option<PathBuf>,
}

impl Dashboards {
    /// Templates from `templates_dir` (`NAME.json.hbs`) besides the built-in `default`.
    pub fn new(templates_dir: Option<PathBuf>) -> Self {
        Self { templates_dir }
    }

    fn source(&self, name: &str) -> Result<String, DashboardError> {
        if let Some(dir) = &self.templates_dir {
            let path = dir.join(format!("{name}.json.hbs"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Ok(text);
            }
        }
        if name == "default" {
            return Ok(DEFAULT_TEMPLATE.to_string());
        }
        Err(DashboardError::NoTemplate(name.to_string()))
    }

    /// The dashboard JSON of `model`, from template `name` (`None` = `default`).
    pub fn render(&self, name: Option<&str>, model: &DashboardModel) -> Result<Value, DashboardError> {
        let name = name.unwrap_or("default");
        let fail = |message: String| DashboardError::Template { name: name.to_string(), message };
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(json_escape);
        registry.register_template_string(name, self.source(name)?).map_err(|e| fail(e.to_string()))?;
        let text = registry.render(name, model).map_err(|e| fail(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| fail(format!("does not render to JSON: {e}")))
    }
}

/// A Grafana server to publish dashboards on.
#[derive(Clone, Debug)]
pub struct Grafana {
    /// Its base URL.
    pub url: String,
    /// An API token (service account) allowed to write dashboards.
    pub token: String,
    /// The folder to put dashboards in, by uid; none = General.
    pub folder_uid: Option<String>,
    /// Whom its HTTPS certificate is trusted by.
    pub tls: super::tls::Tls,
}

impl Grafana {
    /// Creates or overwrites the dashboard; answers its full URL.
    pub async fn push(&self, dashboard: &Value) -> Result<String, DashboardError> {
        let base = self.url.trim_end_matches('/');
        let fail = |message: String| DashboardError::Push { url: base.to_string(), message };
        let mut body = json!({"dashboard": dashboard, "overwrite": true, "message": "loads run"});
        if let Some(folder) = &self.folder_uid {
            body["folderUid"] = json!(folder);
        }
        let client = self.tls.client(std::time::Duration::from_secs(15));
        let mut response = client
            .post(format!("{base}/api/dashboards/db"))
            .bearer_auth(&self.token)
            .send_json(&body)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let answer: Value = response.json().await.map_err(|e| fail(format!("HTTP {}: {e}", response.status())))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}: {}", response.status(), answer["message"].as_str().unwrap_or_default())));
        }
        let path = answer["url"].as_str().ok_or_else(|| fail("the answer has no url".into()))?;
        Ok(format!("{base}{path}"))
    }

    /// Marks a moment on a dashboard (`POST /api/annotations`): `at_ms` Unix milliseconds.
    pub async fn annotate(&self, dashboard_uid: &str, at_ms: i64, text: &str, tags: &[&str]) -> Result<(), DashboardError> {
        let base = self.url.trim_end_matches('/');
        let fail = |message: String| DashboardError::Push { url: base.to_string(), message };
        let body = json!({"dashboardUID": dashboard_uid, "time": at_ms, "timeEnd": at_ms, "tags": tags, "text": text});
        let client = self.tls.client(std::time::Duration::from_secs(15));
        let response = client
            .post(format!("{base}/api/annotations"))
            .bearer_auth(&self.token)
            .send_json(&body)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {} for the annotation", response.status())));
        }
        Ok(())
    }
}
