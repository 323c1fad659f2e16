//! The web UI in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` over WebDriver): a project imported by upload, a run started
//! from its plan's page and watched live to its verdict, a run aborted from its
//! button, a `read` token that sees no controls and is refused when it forces
//! one, the pages at 400 px, and no console error and no request to any host
//! but the broker. With `LOADS_UI_SCREENSHOTS=DIR`, the run page mid-run and
//! the compare page are saved there (`docs/ui-run.png`, `docs/ui-compare.png`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::{ensure_demo_images, ensure_images, Backend, TestApp};

const OPERATE: &str = "ui-operate-token-0123456789";
const READ: &str = "ui-read-token-0123456789ab";

/// A chromedriver of the test's own, and a headless browser session on it.
pub(crate) struct Browser {
    pub(crate) client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The browser's console messages (chromedriver's log of the session).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

impl Browser {
    /// A browser whose pages are `width` CSS pixels wide (below Chromium's smallest
    /// window, through its device emulation).
    pub(crate) async fn start(width: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/test installs chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        let mut options = json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.path().display()), format!("--window-size={},1500", width.max(800))],
        });
        if width < 800 {
            options["mobileEmulation"] = json!({"deviceMetrics": {"width": width, "height": 800, "pixelRatio": 1.0}});
        }
        caps.insert("goog:chromeOptions".into(), options);
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let url = format!("http://127.0.0.1:{port}");
        let client = crate::helpers::eventually(30, async || {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let session = ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await;
            session.map_err(|e| format!("no WebDriver session: {e}"))
        })
        .await;
        Self { client, driver, _profile: profile }
    }

    /// Console messages at error level.
    pub(crate) async fn console_errors(&self) -> Vec<String> {
        let log = self.client.issue_cmd(BrowserLog).await.expect("the browser's log");
        log.as_array()
            .map(|all| {
                all.iter().filter(|e| e["level"] == "SEVERE").map(|e| e["message"].as_str().unwrap_or_default().to_string()).collect()
            })
            .unwrap_or_default()
    }

    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Waits (bounded) until `script` answers a truthy value, which it answers.
    pub(crate) async fn until(&self, what: &str, seconds: u64, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let value = self.eval(script).await;
            if !(value.is_null() || value == json!(false) || value == json!(0) || value == json!("")) {
                return value;
            }
            if Instant::now() > deadline {
                let text = self.eval("return document.body.innerText").await;
                let console = self.client.issue_cmd(BrowserLog).await.unwrap_or_default();
                panic!("{what}: not within {seconds} s; the page shows:\n{}\nconsole: {console:#}", text.as_str().unwrap_or_default());
            }
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) async fn click(&self, css: &str) {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
    }

    /// Every resource the page loaded, as URLs: all must be the broker's own.
    async fn foreign_requests(&self, base: &str) -> Vec<String> {
        let all = self.eval("return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])").await;
        all.as_array().unwrap().iter().filter_map(|u| u.as_str()).filter(|u| !u.starts_with(base)).map(str::to_string).collect()
    }

    async fn screenshot(&self, name: &str) {
        if let Some(dir) = std::env::var_os("LOADS_UI_SCREENSHOTS") {
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
        }
    }
}

fn demo_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml")
}

/// The state shown in a step's section of the run page.
fn step_state(step: &str) -> String {
    format!("const s = document.querySelector('section.step[data-step=\"{step}\"]'); return s && s.dataset.state")
}

/// Import by upload, start from the plan's page, watch the run go live to its
/// verdict without a reload (steps running then completed, latency points on the
/// chart), abort a second run from its button, compare the two: all through the
/// API with an `operate` token given once in the token dialog.
#[actix_web::test]
async fn a_run_is_started_watched_and_aborted_from_the_browser() {
    ensure_images();
    ensure_demo_images();
    let mut app = TestApp::spawn(Backend::Sqlite, &[("LOADS__AUTH__TOKENS", OPERATE), ("LOADS__AUTH__READ_TOKENS", READ)]).await;
    app.token = Some(OPERATE.into());
    let browser = Browser::start(1280).await;
    let b = &browser.client;
    b.goto(&format!("{}/", app.base)).await.unwrap();
    // The token is asked for once and kept for the session.
    browser.until("the token dialog", 10, "return document.getElementById('token-dialog').open").await;
    b.find(Locator::Id("token-input")).await.unwrap().send_keys(OPERATE).await.unwrap();
    browser.click("#token-form button[type=submit]").await;
    browser.until("the operate role", 10, "return document.getElementById('role').textContent.includes('operate')").await;

    // A file with problems: each is listed with its path, and nothing is imported.
    let bad = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(bad.path(), "name = \"bad\"\n[[plans]]\nname = \"p\"\n[[plans.steps]]\nname = \"s\"\ninstance_count = 0\n").unwrap();
    b.find(Locator::Id("import-file")).await.unwrap().send_keys(&bad.path().display().to_string()).await.unwrap();
    browser.click("#import-form button[type=submit]").await;
    let problems = browser.until("the import's problems", 10, "return document.getElementById('import-problems').innerText").await;
    let problems = problems.as_str().unwrap();
    assert!(problems.contains("plans[0].steps[0].instance_count: must be at least 1"), "{problems}");
    assert!(problems.contains("plans[0].steps[0].container_name: is required"), "{problems}");
    let refused = browser.console_errors().await;
    assert!(refused.len() == 1 && refused[0].contains("/import") && refused[0].contains("422"), "only the refused import: {refused:?}");
    b.find(Locator::Id("import-file")).await.unwrap().clear().await.unwrap();
    b.find(Locator::Id("import-file")).await.unwrap().send_keys(&demo_file().display().to_string()).await.unwrap();
    browser.click("#import-form button[type=submit]").await;
    let project = browser
        .until("the imported project", 10, "const a = document.querySelector('#projects a'); return a && a.getAttribute('href')")
        .await;
    b.goto(&format!("{}{}", app.base, project.as_str().unwrap())).await.unwrap();
    let plan =
        browser.until("the project's plan", 10, "const a = document.querySelector('#plans a'); return a && a.getAttribute('href')").await;
    b.goto(&format!("{}{}", app.base, plan.as_str().unwrap())).await.unwrap();
    browser.until("the plan's steps", 10, "return document.querySelectorAll('#steps tbody tr').length === 3").await;
    let secret_free = browser.eval("return document.querySelector('#thresholds tbody').innerText").await;
    assert!(secret_free.as_str().unwrap().contains("p(95)<500"), "the plan's thresholds: {secret_free}");

    browser.click("#start-open").await;
    b.find(Locator::Id("start-owner")).await.unwrap().send_keys("browser").await.unwrap();
    browser.click("#start-submit").await;
    let run_url = browser.until("the run's page", 10, "return location.pathname.startsWith('/runs/') && location.pathname").await;
    let run_id = run_url.as_str().unwrap().trim_start_matches("/runs/").to_string();
    browser.until("a generator running", 90, &format!("return ({})() === 'running'", step_state_fn("shell-generator"))).await;
    browser
        .until("latency points on the chart", 60, "const c = document.querySelector('section.step[data-step=\"shell-generator\"] [data-chart=latency]'); return c && Number(c.dataset.points) > 0")
        .await;
    if std::env::var_os("LOADS_UI_SCREENSHOTS").is_some() {
        browser
            .until("a few seconds of points", 60, "const c = document.querySelector('section.step[data-step=\"shell-generator\"] [data-chart=latency]'); return c && Number(c.dataset.points) > 30")
            .await;
        browser.screenshot("ui-run.png").await;
    }
    browser.until("the verdict", 120, "return document.getElementById('run-verdict').textContent.startsWith('verdict: ')").await;
    for step in ["web", "shell-generator", "c-generator"] {
        let state = browser.eval(&step_state(step)).await;
        assert_eq!(state, "completed", "step {step} completed on the page without a reload");
    }
    let navigations = browser.eval("return performance.getEntriesByType('navigation').length").await;
    assert_eq!(navigations, 1, "one page load");
    let (_, stored) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    let shown = browser.eval("return document.getElementById('run-verdict').textContent").await;
    assert_eq!(shown.as_str().unwrap(), format!("verdict: {}", stored["verdict"].as_str().unwrap()), "the stored verdict");
    assert_eq!(stored["owner"], "browser");

    // A second run, aborted from its button.
    b.goto(&format!("{}{}", app.base, plan.as_str().unwrap())).await.unwrap();
    browser.until("the start button", 10, "return !document.body.classList.contains('read-only')").await;
    browser.click("#start-open").await;
    browser.click("#start-submit").await;
    let second = browser
        .until(
            "the second run's page",
            10,
            &format!(
                "return location.pathname.startsWith('/runs/') && location.pathname !== '{}' && location.pathname",
                run_url.as_str().unwrap()
            ),
        )
        .await;
    browser.until("the abort button", 60, "const a = document.getElementById('abort'); return a && !a.hidden").await;
    browser.until("a generator running", 90, &format!("return ({})() === 'running'", step_state_fn("shell-generator"))).await;
    browser.click("#abort").await;
    browser.until("the run aborted", 60, "return document.getElementById('run-state').textContent === 'aborted'").await;
    let second_id = second.as_str().unwrap().trim_start_matches("/runs/").to_string();
    let (_, stored) = app.get(&format!("/api/v1/runs/{second_id}")).await;
    assert_eq!(stored["state"], "aborted");

    // The two side by side.
    b.goto(&format!("{}/compare?a={second_id}&b={run_id}", app.base)).await.unwrap();
    browser.until("the compare table", 20, "return document.querySelectorAll('#compare tbody tr').length > 0").await;
    browser
        .until("overlaid charts", 20, "const c = document.querySelector('section[data-step=\"shell-generator\"] [data-chart=latency]'); return c && Number(c.dataset.points) > 0")
        .await;
    browser.screenshot("ui-compare.png").await;

    assert_eq!(browser.foreign_requests(&app.base).await, Vec::<String>::new(), "nothing but the broker was asked");
    assert_eq!(browser.console_errors().await, Vec::<String>::new(), "the console has no errors");
    let _ = browser.client.clone().close().await;
    app.assert_no_leftovers();
}

/// The function `step_state` is the body of, for use inside a larger script.
fn step_state_fn(step: &str) -> String {
    format!("() => {{ {} }}", step_state(step))
}

/// A `read` token sees the pages but none of the controls its role may not use
/// (no Start, Fork, Import, Abort, baseline buttons), and a request it forces is 403.
/// The pages hold at 400 px: no sideways scrolling, and the controls reachable by keyboard.
#[actix_web::test]
async fn a_read_token_sees_no_controls_and_a_forced_request_is_refused() {
    ensure_images();
    let mut app = TestApp::spawn(Backend::Sqlite, &[("LOADS__AUTH__TOKENS", OPERATE), ("LOADS__AUTH__READ_TOKENS", READ)]).await;
    app.token = Some(OPERATE.into());
    let mut step = crate::helpers::sh_step("wait", "sleep 120");
    step["run_max_time"] = json!(120);
    let (plan, run_id) = app.start(json!({"name": "ui-read", "steps": [step]}), json!({})).await;
    let plan_id = plan["id"].as_str().unwrap().to_string();
    app.wait_for_run(&run_id, 60, |r| crate::helpers::record(r, "wait")["state"] == "running").await;

    let browser = Browser::start(400).await;
    let b = &browser.client;
    b.goto(&format!("{}/plans/{plan_id}", app.base)).await.unwrap();
    browser.until("the token dialog", 10, "return document.getElementById('token-dialog').open").await;
    b.find(Locator::Id("token-input")).await.unwrap().send_keys(READ).await.unwrap();
    browser.click("#token-form button[type=submit]").await;
    browser.until("the plan", 10, "return document.getElementById('plan-name').textContent === 'ui-read'").await;
    browser.until("the read role", 10, "return document.getElementById('role').textContent.includes('read')").await;
    for control in ["#start-open", "#fork"] {
        let shown = b.find(Locator::Css(control)).await.unwrap().is_displayed().await.unwrap();
        assert!(!shown, "{control} is hidden from a read token");
    }
    let wide = browser.eval("return [window.innerWidth, document.documentElement.scrollWidth]").await;
    assert_eq!(wide, json!([400, 400]), "400 px wide, no sideways scrolling");

    b.goto(&format!("{}/runs/{run_id}", app.base)).await.unwrap();
    browser.until("the run live", 20, "return document.getElementById('live').textContent === 'live'").await;
    let abort = b.find(Locator::Id("abort")).await.unwrap().is_displayed().await.unwrap();
    assert!(!abort, "no Abort button for a read token");
    let wide = browser.eval("return [window.innerWidth, document.documentElement.scrollWidth]").await;
    assert_eq!(wide, json!([400, 400]), "the run page at 400 px, no sideways scrolling");
    assert_eq!(browser.console_errors().await, Vec::<String>::new(), "the console has no errors");
    // Forced: the same request the button would make, with the session's token.
    let status = b
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch('/api/v1/runs/' + arguments[0] + '/abort', {method: 'POST', \
             headers: {Authorization: 'Bearer ' + sessionStorage.getItem('loads.token')}}).then(r => done(r.status));",
            vec![json!(run_id)],
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "a read token may not abort");
    let refused = browser.console_errors().await;
    assert!(refused.len() == 1 && refused[0].contains("/abort") && refused[0].contains("403"), "only the forced request: {refused:?}");
    // Keyboard: Tab reaches the first link of the header from the page's start.
    b.goto(&format!("{}/", app.base)).await.unwrap();
    browser.until("the runs", 10, "return document.querySelectorAll('#runs tbody tr').length > 0").await;
    let import = b.find(Locator::Id("import-form")).await.unwrap().is_displayed().await.unwrap();
    assert!(!import, "no Import for a read token");
    let mut reached = Vec::new();
    for _ in 0..12 {
        b.active_element().await.unwrap().send_keys("\u{E004}").await.unwrap();
        let at = browser.eval("const a = document.activeElement; return a.id || a.getAttribute('href') || a.tagName").await;
        reached.push(at.as_str().unwrap_or_default().to_string());
    }
    assert!(
        reached.iter().any(|r| r == "filter-state") && reached.iter().any(|r| r.starts_with("/runs/")),
        "Tab reaches the filters and the runs: {reached:?}"
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new(), "the console has no errors");
    let _ = browser.client.clone().close().await;

    let (status, _) = app.post(&format!("/api/v1/runs/{run_id}/abort"), &json!({})).await;
    assert!(status.is_success(), "{status}");
    app.wait_finished(&run_id, 60).await;
    app.assert_no_leftovers();
}

/// A TCP proxy in front of the broker whose connections the test can cut, and
/// which then refuses new ones for a while: a dropped network, as a page sees it.
struct Cuttable {
    port: u16,
    cut: tokio::sync::watch::Sender<u64>,
    down_until: std::sync::Arc<std::sync::Mutex<Instant>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Cuttable {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, watch) = tokio::sync::watch::channel(0u64);
        let down_until = std::sync::Arc::new(std::sync::Mutex::new(Instant::now()));
        let down = down_until.clone();
        let accept = actix_web::rt::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if Instant::now() < *down.lock().unwrap() {
                    continue;
                }
                let (upstream, mut watch) = (upstream.clone(), watch.clone());
                actix_web::rt::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    watch.borrow_and_update();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.changed() => {}
                    }
                });
            }
        });
        Self { port, cut, down_until, accept }
    }

    /// Ends every open connection and refuses new ones for `down`.
    fn cut_for(&self, down: Duration) {
        *self.down_until.lock().unwrap() = Instant::now() + down;
        self.cut.send_modify(|n| *n += 1);
    }
}

/// The stored windows of a run's first step that carry `lat` samples: the ones the
/// latency chart draws (a window with only the node's CPU draws none there).
fn with_latency(series: &Value) -> u64 {
    let points = series["steps"][0]["points"].as_array().map_or(&[][..], |p| p.as_slice());
    points.iter().filter(|p| p["timers"]["lat"]["count"].as_u64().unwrap_or(0) > 0).count() as u64
}

/// The run page's feed drops for 3 s while windows keep arriving: the page says the
/// connection is lost, reconnects with `since`, and ends with every window the run
/// stored on its chart and the run's final state, without a reload.
#[actix_web::test]
async fn the_run_page_reconnects_after_a_dropped_feed_and_misses_nothing() {
    ensure_images();
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let report = "i=0; while [ $$i -lt 300 ]; do printf \"lat:$$((i % 7 + 1))|ms\\n\" | nc $$STATSD_HOST $$STATSD_PORT; usleep 100000; i=$$((i+1)); done";
    let mut step = crate::helpers::sh_step("gen", report);
    step["run_max_time"] = json!(60);
    let (_, run_id) = app.start(json!({"name": "ui-reconnect", "steps": [step]}), json!({})).await;
    let proxy = Cuttable::start(app.base.trim_start_matches("http://").to_string()).await;
    let browser = Browser::start(1280).await;
    let b = &browser.client;
    b.goto(&format!("http://127.0.0.1:{}/runs/{run_id}", proxy.port)).await.unwrap();
    let points = "(() => { const c = document.querySelector('section.step[data-step=\"gen\"] [data-chart=latency]'); return c ? Number(c.dataset.points || 0) : 0; })()";
    browser.until("live", 30, "return document.getElementById('live').textContent === 'live'").await;
    browser.until("points on the chart", 60, &format!("return {points} > 0")).await;
    proxy.cut_for(Duration::from_secs(3));
    browser.until("the drop shown", 5, "return document.getElementById('live').textContent.startsWith('connection lost')").await;
    browser.until("live again", 30, "return document.getElementById('live').textContent === 'live'").await;
    // Caught up through the feed alone (the page reads the stored series again only once
    // the run has ended): the windows of the outage came with the reconnection's backlog.
    crate::helpers::eventually(10, async || {
        let (_, series) = app.get(&format!("/api/v1/runs/{run_id}/series")).await;
        let stored = with_latency(&series);
        let shown = browser.eval(&format!("return {points}")).await.as_u64().unwrap_or(0);
        let state = browser.eval("return document.getElementById('run-state').textContent").await;
        assert_eq!(state, "running", "the run is still live while the page catches up");
        match shown >= 3 * stored.saturating_sub(1) {
            true => Ok(()),
            false => Err(format!("the page has {shown} points of {stored} stored windows (3 each) after reconnecting")),
        }
    })
    .await;
    browser.until("the run's end", 90, "return document.getElementById('run-state').textContent === 'completed'").await;
    let navigations = browser.eval("return performance.getEntriesByType('navigation').length").await;
    assert_eq!(navigations, 1, "no reload");
    let (_, series) = app.get(&format!("/api/v1/runs/{run_id}/series")).await;
    let stored = with_latency(&series);
    assert!(stored > 5, "the run stored its windows: {series}");
    // The page shows the end at once, then reads the stored series again and redraws.
    crate::helpers::eventually(10, async || match browser.eval(&format!("return {points}")).await.as_u64() {
        Some(shown) if shown == 3 * stored => Ok(()),
        shown => Err(format!("p50, p95 and p99 of every stored window are on the chart: {shown:?} of {} points", 3 * stored)),
    })
    .await;
    // The cut itself is logged (the socket's close, requests that found no broker); nothing else.
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !e.contains("WebSocket") && !e.contains("net::ERR_") && !e.contains("Failed to load resource"))
        .collect();
    assert_eq!(errors, Vec::<String>::new(), "no script error");
    let _ = browser.client.clone().close().await;
    app.assert_no_leftovers();
}

/// Metric names are a generator's text: one holding markup is shown as that text in
/// the legend (no bold, no live link), and a step with more series than a chart can
/// hold draws its busiest and says how many more there are; values a relay did not
/// keep (past its series cap) are on the step record and named on the step's section.
#[actix_web::test]
async fn a_metric_name_holding_markup_shows_as_text_and_charts_are_capped() {
    ensure_images();
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let mut step = crate::helpers::sh_step("gen", "sleep 300");
    step["run_max_time"] = json!(5);
    let (_, run_id) = app.start(json!({"name": "ui-markup", "steps": [step]}), json!({})).await;
    let run = app.wait_for_run(&run_id, 60, |r| r["state"] == "running").await;
    let store = loads_actors::store::connect(&app.database_url).await.unwrap();
    let token = loads_actors::store::runs::recovery(&store, uuid::Uuid::parse_str(&run_id).unwrap()).await.unwrap().ingest_token.unwrap();
    let markup = "<b>BOLD</b> <a href=https://example.invalid/login>click here to re-login</a>";
    let mut counters = serde_json::Map::from_iter([(markup.to_string(), json!(1000.0))]);
    counters.extend((0..60).map(|i| (format!("name.{i}"), json!(f64::from(i)))));
    let window = json!([{"run_id": run_id, "step_id": run["step_records"][0]["step_id"], "node": "s0n0", "epoch": 1, "seq": 1,
                         "start_ms": chrono::Utc::now().timestamp_millis(), "duration_ms": 1000, "counters": counters, "gauges": {},
                         "sets": {}, "timers": {}, "lines": 61, "malformed": 0, "dropped_windows": 0,
                         "overflow": {"req.*.lat": 40}}]);
    let url = format!("http://127.0.0.1:{}/ingest/{run_id}", app.ingest_port);
    let response = awc::Client::new().post(url).bearer_auth(&token).send_json(&window).await.unwrap();
    assert_eq!(response.status(), awc::http::StatusCode::OK);
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["step_records"][0]["series_overflow"], 40, "the relay's overflow is on the step record: {run:#}");

    let browser = Browser::start(1280).await;
    browser.client.goto(&format!("{}/runs/{run_id}", app.base)).await.unwrap();
    // The values the step did not keep are named on its section of the page.
    let overflow = "document.querySelector('section.step[data-step=\"gen\"] [data-overflow]')";
    browser.until("the step's overflow", 30, &format!("const o = {overflow}; return o && !o.hidden")).await;
    let text = browser.eval(&format!("return {overflow}.textContent")).await;
    assert!(text.as_str().unwrap().starts_with("40 value(s) not kept"), "{text}");
    let chart = "document.querySelector('section.step[data-step=\"gen\"] [data-chart=rate]')";
    browser.until("the rate chart", 30, &format!("const c = {chart}; return c && c.querySelectorAll('.legendtext').length > 0")).await;
    let legend = browser.eval(&format!("return [...{chart}.querySelectorAll('.legendtext')].map(t => t.textContent)")).await;
    let legend: Vec<&str> = legend.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(legend.contains(&markup), "the name as it was sent: {legend:?}");
    let links = browser.eval(&format!("return {chart}.querySelectorAll('a').length")).await;
    assert_eq!(links, json!(0), "no link in the chart");
    let bold = browser
        .eval(&format!(
            "return [...{chart}.querySelectorAll('tspan')].filter(t => (t.getAttribute('style') || '').includes('bold')).length"
        ))
        .await;
    assert_eq!(bold, json!(0), "nothing bold");
    // 61 series: the 20 busiest are drawn (the markup name, the largest, among them).
    assert_eq!(legend.len(), 20, "{legend:?}");
    let omitted = browser.eval(&format!("return {chart}.dataset.omitted")).await;
    assert_eq!(omitted, json!("41"));
    let title = browser.eval(&format!("return {chart}.querySelector('.gtitle').textContent")).await;
    assert!(title.as_str().unwrap().contains("41 more not drawn"), "{title}");
    let _ = browser.client.clone().close().await;
    app.assert_no_leftovers();
}
