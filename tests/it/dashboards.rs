//! Per-run dashboards: rendered from handlebars templates, pushed to Grafana's HTTP API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, Backend, TestApp};

/// One HTTP request as a recording server saw it.
pub struct Recorded {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

/// Reads one request from `stream`, records it, answers like Grafana does.
fn record_one(stream: std::net::TcpStream) -> Recorded {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let length: usize = headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.parse().unwrap()).unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let uid = body["dashboard"]["uid"].as_str().unwrap_or_default().to_string();
    let answer = json!({"id": 7, "uid": uid, "url": format!("/d/{uid}/loads-run"), "status": "success", "version": 1}).to_string();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    )
    .unwrap();
    Recorded { request_line: request_line.trim_end().to_string(), headers, body }
}

/// A stand-in Grafana: records `count` requests, each sent on `seen` as it arrives.
pub fn recording_grafana(count: usize) -> (u16, std::sync::mpsc::Receiver<Recorded>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, recorded) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..count {
            let Ok((stream, _)) = listener.accept() else { return };
            if seen.send(record_one(stream)).is_err() {
                return;
            }
        }
    });
    (port, recorded)
}

/// The next request the stand-in Grafana recorded, polled for at most a minute
/// (without blocking the broker, which runs on this test's thread).
pub async fn next(recorded: &std::sync::mpsc::Receiver<Recorded>) -> Recorded {
    crate::helpers::eventually(60, async || recorded.try_recv().map_err(|_| "no request reached Grafana".to_string())).await
}

fn statsd_plan(dashboard: Option<&str>) -> Value {
    let mut plan = json!({"name": "dash", "steps": [
        {"name": "web", "container_name": loads::images::BUSYBOX, "service": true, "run_max_time": 0,
         "additional_command_args": "-c 'sleep 300'"},
        {"name": "gen", "container_name": loads::images::BUSYBOX, "docker_series": "gen_series", "run_delay": 1,
         "additional_command_args": "-c 'printf \"hits:1|c\\nfail:1|c|#status:error\\nlat:5|ms\\n\" | nc $$STATSD_HOST $$STATSD_PORT && sleep 2'"}
    ]});
    if let Some(name) = dashboard {
        plan["dashboard"] = json!(name);
    }
    plan
}

fn panel_titles(dashboard: &Value) -> Vec<String> {
    dashboard["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap().to_string()).collect()
}

/// The run's dashboard has a row per step, panels for every metric seen with queries on the
/// run's tags, the run's time range and step annotations; it is pushed to Grafana as the run
/// starts (live) and again at the end.
#[actix_web::test]
async fn a_runs_dashboard_is_rendered_and_pushed_to_grafana() {
    ensure_images();
    let (port, grafana) = recording_grafana(2);
    let grafana_url = format!("http://127.0.0.1:{port}");
    let app = TestApp::spawn(
        Backend::Sqlite,
        &[
            ("LOADS__GRAFANA__URL", &grafana_url),
            ("LOADS__GRAFANA__TOKEN", "glsa_test_token_0123456789"),
            ("LOADS__GRAFANA__FOLDER_UID", "load-tests"),
            ("LOADS__GRAFANA__DATASOURCE", "loads-influx"),
        ],
    )
    .await;
    let (_, run_id) = app.start(statsd_plan(None), json!({})).await;
    // The dashboard is published as the run starts, to be watched live: the last quarter hour, refreshing.
    let live = next(&grafana).await;
    let (_, during) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    assert!(!["completed", "failed", "aborted"].contains(&during["state"].as_str().unwrap()), "published while live: {during:#}");
    assert_eq!(live.body["dashboard"]["time"], json!({"from": "now-15m", "to": "now"}));
    assert_eq!(live.body["dashboard"]["refresh"], "5s");
    let uid = format!("loads-{}", run_id.replace('-', ""));
    let live_url = app.wait_for_run(&run_id, 30, |r| r["dashboard_url"].is_string()).await["dashboard_url"].clone();
    assert_eq!(live_url, json!(format!("{grafana_url}/d/{uid}/loads-run")), "the API has the URL during the run");
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");

    let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let errors =
        metrics["metrics"].as_array().unwrap().iter().find(|m| m["step_name"] == "gen" && m["metric"] == "errors").unwrap().clone();
    assert_eq!((errors["kind"].as_str(), errors["count"].as_f64()), (Some("errors"), Some(1.0)), "the failed request is an error");
    // And again at the end, with the run's own time range.
    let pushed = next(&grafana).await;
    assert_eq!(pushed.body["dashboard"]["time"]["from"], run["started_at"]);
    assert_eq!(pushed.body["dashboard"]["refresh"], "");
    assert_eq!(pushed.request_line, "POST /api/dashboards/db HTTP/1.1");
    let header = |k: &str| pushed.headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
    assert_eq!(header("authorization").as_deref(), Some("Bearer glsa_test_token_0123456789"));
    assert_eq!(pushed.body["overwrite"], true);
    assert_eq!(pushed.body["folderUid"], "load-tests");
    assert_eq!(pushed.body["dashboard"]["uid"], json!(uid));
    assert_eq!(run["dashboard_url"], json!(format!("{grafana_url}/d/{uid}/loads-run")), "the run keeps its dashboard's URL");

    let (status, dashboard) = app.get(&format!("/api/v1/runs/{run_id}/dashboard")).await;
    assert_eq!(status, StatusCode::OK, "{dashboard}");
    assert_eq!(dashboard["uid"], json!(uid));
    assert_eq!(dashboard["time"]["from"], run["started_at"]);
    assert_eq!(dashboard["time"]["to"], run["completed_at"]);
    let annotation = &dashboard["annotations"]["list"][0];
    assert!(annotation["query"].as_str().unwrap().contains(&format!("\"run\" = '{run_id}'")));
    assert_eq!(annotation["datasource"], "loads-influx");
    let titles = panel_titles(&dashboard);
    for expected in
        ["web", "gen", "gen: throughput", "gen: errors", "gen: lat latency", "gen: node CPU", "gen: node memory", "gen: node network"]
    {
        assert!(titles.contains(&expected.to_string()), "no panel {expected:?} in {titles:?}");
    }
    let panels = dashboard["panels"].as_array().unwrap();
    let rows: Vec<&Value> = panels.iter().filter(|p| p["type"] == "row").collect();
    assert_eq!(rows.len(), 2, "a row per step");
    let throughput = panels.iter().find(|p| p["title"] == "gen: throughput").unwrap();
    let aliases: Vec<&str> = throughput["targets"].as_array().unwrap().iter().map(|t| t["alias"].as_str().unwrap()).collect();
    assert_eq!(aliases, ["fail;status=error", "hits"], "one series per counter seen");
    let latency = panels.iter().find(|p| p["title"] == "gen: lat latency").unwrap();
    let targets = latency["targets"].as_array().unwrap();
    assert_eq!(targets.iter().map(|t| t["alias"].as_str().unwrap()).collect::<Vec<_>>(), ["p50", "p95", "p99"]);
    for t in targets {
        let q = t["query"].as_str().unwrap();
        assert!(q.contains(&format!("\"run\" = '{run_id}'")) && q.contains("\"step\" = 'gen'") && q.contains("\"metric\" = 'lat'"), "{q}");
        assert!(q.contains("FROM \"timer\"") && q.contains("$timeFilter"), "{q}");
    }
    let ids: std::collections::BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    app.assert_no_leftovers();
}

/// A plan can name its own template from `grafana.templates_dir`; an unknown one is a clear 422.
#[actix_web::test]
async fn plans_choose_their_dashboard_template() {
    ensure_images();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compact.json.hbs"), "{\"uid\": \"{{uid}}\", \"title\": \"compact {{plan}}\", \"panels\": [{{#each panels}}\"{{title}}\"{{#unless @last}},{{/unless}}{{/each}}]}").unwrap();
    let app = TestApp::spawn(Backend::Sqlite, &[("LOADS__GRAFANA__TEMPLATES_DIR", dir.path().to_str().unwrap())]).await;
    let (_, run_id) = app.start(statsd_plan(Some("compact")), json!({})).await;
    app.wait_finished(&run_id, 60).await;
    let (status, dashboard) = app.get(&format!("/api/v1/runs/{run_id}/dashboard")).await;
    assert_eq!(status, StatusCode::OK, "{dashboard}");
    assert_eq!(dashboard["title"], "compact dash");
    assert!(dashboard["panels"].as_array().unwrap().contains(&json!("gen: throughput")), "{dashboard}");

    let mut plan = statsd_plan(Some("missing"));
    plan["name"] = json!("dash2");
    let (_, run_id) = app.start(plan, json!({})).await;
    app.wait_finished(&run_id, 60).await;
    let (status, body) = app.get(&format!("/api/v1/runs/{run_id}/dashboard")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["path"], "dashboard");
    assert!(body["details"][0]["message"].as_str().unwrap().contains("no dashboard template named \"missing\""));
    app.assert_no_leftovers();
}
