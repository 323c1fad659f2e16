//! The web UI: pages rendered from the handlebars templates in `templates/ui/`,
//! with small plain-JavaScript modules and CSS embedded in the binary, and
//! plotly.js (from the `plotly` crate) for charts. Pages hold no data: their
//! scripts read everything through the same API the CLI uses, with the token
//! the user gives once (kept in the browser session), so the UI has no back
//! door and hides what the token's role may not do.
//!
//! Paths: `/` (runs), `/projects/{id}`, `/plans/{id}`, `/runs/{id}`,
//! `/compare?a=RUN&b=RUN`; assets under `/ui/`.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use handlebars::Handlebars;
use serde_json::json;

/// Every page's policy: nothing but the broker itself, for scripts, styles, images and connections.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const LAYOUT: &str = include_str!("../../templates/ui/layout.hbs");
const PAGES: [(&str, &str); 5] = [
    ("runs", include_str!("../../templates/ui/runs.hbs")),
    ("project", include_str!("../../templates/ui/project.hbs")),
    ("plan", include_str!("../../templates/ui/plan.hbs")),
    ("run", include_str!("../../templates/ui/run.hbs")),
    ("compare", include_str!("../../templates/ui/compare.hbs")),
];

/// The embedded assets: name, content type, content.
const ASSETS: [(&str, &str, &str); 8] = [
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_str!("assets/charts.js")),
    ("runs.js", "text/javascript; charset=utf-8", include_str!("assets/runs.js")),
    ("project.js", "text/javascript; charset=utf-8", include_str!("assets/project.js")),
    ("plan.js", "text/javascript; charset=utf-8", include_str!("assets/plan.js")),
    ("run.js", "text/javascript; charset=utf-8", include_str!("assets/run.js")),
    ("compare.js", "text/javascript; charset=utf-8", include_str!("assets/compare.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("assets/style.css")),
];

fn registry() -> &'static Handlebars<'static> {
    static REGISTRY: OnceLock<Handlebars<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_partial("layout", LAYOUT).expect("templates/ui/layout.hbs");
        for (name, text) in PAGES {
            hb.register_template_string(name, text).unwrap_or_else(|e| panic!("templates/ui/{name}.hbs: {e}"));
        }
        hb
    })
}

/// plotly.js as the `plotly` crate embeds it (its offline sources, the first script of them).
fn plotly_js() -> &'static str {
    static JS: OnceLock<String> = OnceLock::new();
    JS.get_or_init(|| {
        let sources = plotly::Plot::offline_js_sources();
        let start = sources.find('>').map_or(0, |i| i + 1);
        let end = sources[start..].find("</script>").map_or(sources.len(), |i| start + i);
        sources[start..end].to_string()
    })
}

fn with_headers(mut response: HttpResponse, cache: &'static str) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// Renders `page` with its title and the ids its script needs.
fn page(page: &str, title: &str, data: serde_json::Value) -> HttpResponse {
    let charts = matches!(page, "run" | "compare");
    let context = json!({"title": title, "page": page, "version": crate::VERSION, "data": data.to_string(), "charts": charts});
    match registry().render(page, &context) {
        Ok(html) => with_headers(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(html), "no-cache"),
        Err(e) => {
            tracing::error!(error = %e, page, "a UI page failed to render");
            HttpResponse::InternalServerError().content_type("text/plain; charset=utf-8").body("the page could not be rendered")
        }
    }
}

fn not_found(what: &str) -> HttpResponse {
    let mut response = page("runs", "Not found", json!({"missing": what}));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn runs() -> HttpResponse {
    page("runs", "Runs", json!({}))
}

/// A page about one object named by a UUID in its path.
async fn by_id(req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let kind = req.path().trim_start_matches('/').split('/').next().unwrap_or_default();
    let Ok(id) = uuid::Uuid::parse_str(&path) else {
        return not_found(&format!("{kind} {:?}: not a UUID", path.as_str()));
    };
    match kind {
        "projects" => page("project", "Project", json!({"id": id})),
        "plans" => page("plan", "Plan", json!({"id": id})),
        _ => page("run", "Run", json!({"id": id})),
    }
}

async fn compare(req: HttpRequest) -> HttpResponse {
    let query = web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string()).map(|q| q.into_inner());
    let ids = query.ok().and_then(|q| {
        let id = |k: &str| q.get(k).and_then(|v| uuid::Uuid::parse_str(v).ok());
        Some((id("a")?, id("b")?))
    });
    match ids {
        Some((a, b)) => page("compare", "Compare runs", json!({"a": a, "b": b})),
        None => not_found("compare: `a` and `b` must both be run ids (UUIDs)"),
    }
}

async fn asset(path: web::Path<String>) -> HttpResponse {
    let name = path.as_str();
    if name == "plotly.min.js" {
        let response = HttpResponse::Ok().content_type("text/javascript; charset=utf-8").body(plotly_js());
        return with_headers(response, "public, max-age=86400");
    }
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, text)) => with_headers(HttpResponse::Ok().content_type(*kind).body(*text), "no-cache"),
        None => with_headers(HttpResponse::NotFound().content_type("text/plain; charset=utf-8").body("no such asset"), "no-cache"),
    }
}

/// Whether `path` is one of the UI's pages or assets (public: they hold no data).
pub fn is_page(path: &str) -> bool {
    path == "/" || path == "/compare" || ["/projects/", "/plans/", "/runs/", "/ui/"].iter().any(|p| path.starts_with(p))
}

/// Registers the UI's routes (GET only; the API's other routes are untouched).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(runs))
        .route("/projects/{id}", web::get().to(by_id))
        .route("/plans/{id}", web::get().to(by_id))
        .route("/runs/{id}", web::get().to(by_id))
        .route("/compare", web::get().to(compare))
        .route("/ui/{name}", web::get().to(asset));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_and_names_its_script() {
        for (name, _) in PAGES {
            let html = registry().render(name, &json!({"title": "T", "page": name, "version": "0", "data": "{}", "charts": true})).unwrap();
            assert!(html.contains(&format!("/ui/{name}.js")), "{name}: {html}");
            assert!(html.contains("/ui/app.js") && html.contains("/ui/style.css"), "{name}");
            assert!(!html.contains("http://") && !html.contains("https://"), "{name} refers to another host: {html}");
        }
    }

    #[test]
    fn plotly_is_served_whole_from_the_crate() {
        let js = plotly_js();
        assert!(js.trim_start().starts_with("/**") && js.contains("plotly.js v"), "{}", &js[..200.min(js.len())]);
        assert!(!js.contains("</script>"));
        assert!(js.len() > 1_000_000);
    }
}
