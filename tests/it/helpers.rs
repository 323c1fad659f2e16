//! The test harness: a broker per test with its own database, and an HTTP client.

use std::path::PathBuf;

use awc::http::StatusCode;
use loads::config::Settings;
use loads::startup::{Application, ServerHandle};
use serde_json::Value;
use uuid::Uuid;

/// Which database a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each test body once against SQLite and once against PostgreSQL, as
/// `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_databases {
    ($(
        $(#[$doc:meta])*
        async fn $name:ident($app:ident $(with $settings:expr)?) $body:block
    )*) => {$(
        $(#[$doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($app: $crate::helpers::TestApp) $body

            fn settings() -> &'static [(&'static str, &'static str)] {
                [$($settings as &'static [(&'static str, &'static str)],)? &[]][0]
            }

            #[actix_web::test]
            async fn sqlite() {
                body($crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite, settings()).await).await
            }

            #[actix_web::test]
            async fn postgres() {
                body($crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres, settings()).await).await
            }
        }
    )*};
}

pub(crate) use on_both_databases;

/// A database created for one test and removed when the test ends, failed or not.
enum TestDatabase {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres {
        admin_url: String,
        name: String,
    },
    /// One the test made and removes itself.
    Given,
}

impl TestDatabase {
    async fn create(backend: Backend) -> (Self, String) {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("loads.db").display());
                (Self::Sqlite(dir), url)
            }
            Backend::Postgres => {
                let admin_url = std::env::var("LOADS_TEST_POSTGRES_URL")
                    .expect("LOADS_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts PostgreSQL");
                let name = format!("loads_test_{}", Uuid::new_v4().simple());
                run_admin_sql(&admin_url, &format!("CREATE DATABASE {name}")).await;
                let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
                let url = format!("{base}/{name}");
                (Self::Postgres { admin_url, name }, url)
            }
        }
    }
}

async fn run_admin_sql(admin_url: &str, sql: &str) {
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(admin_url).await.expect("connect to PostgreSQL as admin");
    db.execute_unprepared(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    db.close().await.ok();
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Self::Postgres { admin_url, name } = self {
            let (admin_url, sql) = (admin_url.clone(), format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
            let cleanup = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(run_admin_sql(&admin_url, &sql));
            });
            let _ = cleanup.join();
        }
    }
}

/// A running broker and a client for it.
pub struct TestApp {
    pub base: String,
    pub database_url: String,
    pub token: Option<String>,
    /// This broker's id: every Docker resource it creates carries it.
    pub broker_id: String,
    /// The metrics ingest listener's port.
    pub ingest_port: u16,
    client: awc::Client,
    servers: [ServerHandle; 2],
    _database: TestDatabase,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Sends the stop command; the server winds down with the test's system.
        for server in &self.servers {
            drop(server.stop(false));
        }
        // Whatever a failing test left behind goes too.
        remove_labelled(&self.broker_id);
    }
}

/// Docker containers and networks labelled with `broker_id`, as `(containers, networks)`.
pub fn leftovers(broker_id: &str) -> (Vec<String>, Vec<String>) {
    let list = |args: &[&str]| -> Vec<String> {
        let out = std::process::Command::new("docker").args(args).output().expect("docker CLI");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
    };
    let filter = format!("label=loads.broker={broker_id}");
    (list(&["ps", "-aq", "--filter", &filter]), list(&["network", "ls", "-q", "--filter", &filter]))
}

/// Removes every container and network labelled with a broker id when dropped,
/// so a test that fails half-way leaves nothing behind either.
pub struct LabelGuard(pub String);

impl Drop for LabelGuard {
    fn drop(&mut self) {
        remove_labelled(&self.0);
    }
}

fn remove_labelled(broker_id: &str) {
    let (containers, networks) = leftovers(broker_id);
    if !containers.is_empty() {
        let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&containers).output();
    }
    if !networks.is_empty() {
        let _ = std::process::Command::new("docker").args(["network", "rm"]).args(&networks).output();
    }
}

/// Builds `tags` on the local engine (again with `rebuild`, else only when missing), off the test's runtime.
fn build_images(tags: &'static [&'static str], rebuild: bool) -> Result<(), String> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
            let engine = loads_actors::infra::docker::Engine::local().await.map_err(|e| e.to_string())?;
            let binary = std::path::Path::new(env!("CARGO_BIN_EXE_loads"));
            if !rebuild {
                return loads::images::ensure(&engine, tags.iter().copied(), binary).await.map(|_| ()).map_err(|e| e.to_string());
            }
            for tag in tags {
                loads::images::build(&engine, tag, binary).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("image build panicked".into()))
}

/// Builds the images tests run (the relay from the real `loads` binary, busybox) once per test process.
pub fn ensure_images() {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    if let Err(e) = BUILT.get_or_init(|| build_images(&[loads::images::RELAY, loads::images::BUSYBOX], true)) {
        panic!("cannot build the test images: {e}");
    }
}

/// Builds the demo's images (its service and generators) when missing, once per test process.
pub fn ensure_demo_images() {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let demo = &[loads::images::DEMO_HTTPD, loads::images::DEMO_SHELL_GEN, loads::images::DEMO_C_GEN];
    if let Err(e) = BUILT.get_or_init(|| build_images(demo, false)) {
        panic!("cannot build the demo's images: {e}");
    }
}

/// Settings for a test broker: port 0, the given database, then `LOADS__...`-style overrides.
pub fn settings(database_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut env =
        vec![("LOADS__SERVER__PORT".to_string(), "0".to_string()), ("LOADS__DATABASE__URL".to_string(), database_url.to_string())];
    env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_from(None, env).expect("test settings")
}

impl TestApp {
    /// Starts a broker on a fresh database with `overrides` applied to its settings.
    pub async fn spawn(backend: Backend, overrides: &[(&str, &str)]) -> Self {
        let (database, database_url) = TestDatabase::create(backend).await;
        Self::spawn_with(database, database_url, overrides).await
    }

    /// Starts a broker on a database the test made (and removes).
    pub async fn spawn_on(database_url: &str, overrides: &[(&str, &str)]) -> Self {
        Self::spawn_with(TestDatabase::Given, database_url.to_string(), overrides).await
    }

    /// Starts a broker whose settings `tweak` changes after the overrides (for settings no variable can name).
    pub async fn spawn_tweaked(backend: Backend, overrides: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Self {
        let (database, database_url) = TestDatabase::create(backend).await;
        Self::build(database, database_url, overrides, tweak).await
    }

    async fn spawn_with(database: TestDatabase, database_url: String, overrides: &[(&str, &str)]) -> Self {
        Self::build(database, database_url, overrides, |_| {}).await
    }

    async fn build(database: TestDatabase, database_url: String, overrides: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Self {
        // A test that must know the id before the broker starts gives it.
        let broker_id = overrides
            .iter()
            .find(|(k, _)| *k == "LOADS__BROKER__ID")
            .map_or_else(|| format!("t{}", &Uuid::new_v4().simple().to_string()[..12]), |(_, v)| v.to_string());
        let mut all = vec![
            ("LOADS__BROKER__ID", broker_id.as_str()),
            ("LOADS__DOCKER__STOP_GRACE_SECONDS", "2"),
            ("LOADS__METRICS__INGEST_PORT", "0"),
        ];
        all.extend_from_slice(overrides);
        // `LOADS_TEST_LOG=info` (a tracing filter) shows the brokers' logs on stderr (with `--nocapture`).
        if let Ok(level) = std::env::var("LOADS_TEST_LOG") {
            loads::telemetry::init(loads::config::LogFormat::Human, &level);
        }
        let mut settings = settings(&database_url, &all);
        tweak(&mut settings);
        let app = Application::build(&settings).await.expect("build the broker");
        let base = format!("http://127.0.0.1:{}", app.port());
        let servers = app.handles();
        let ingest_port = app.ingest_port();
        actix_web::rt::spawn(app.run_until_stopped());
        Self {
            base,
            database_url,
            token: None,
            broker_id,
            ingest_port,
            client: awc::Client::builder().disable_timeout().finish(),
            servers,
            _database: database,
        }
    }

    fn request(&self, method: awc::http::Method, path: &str) -> awc::ClientRequest {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    /// Sends a request with a raw body and returns the status and the JSON body (Null when empty).
    pub async fn send(&self, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.request(method, path);
        if let Some(ct) = content_type {
            req = req.insert_header(("content-type", ct));
        }
        let mut response = req.send_body(body).await.expect("request sent");
        let bytes = response.body().limit(16 * 1024 * 1024).await.expect("response body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("non-JSON body ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (response.status(), json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send("GET", path, None, Vec::new()).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send("DELETE", path, None, Vec::new()).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send("POST", path, Some("application/json"), body.to_string().into_bytes()).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send("PUT", path, Some("application/json"), body.to_string().into_bytes()).await
    }

    /// Imports the loads v2 fixture and returns the import report.
    pub async fn import_pushgo(&self) -> Value {
        let (status, body) = self.send("POST", "/api/v1/projects/import", Some("application/json"), pushgo_json().into_bytes()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Creates a project with one plan from `plan` and returns the plan as the API shows it.
    pub async fn create_plan(&self, plan: Value) -> Value {
        let (status, project) = self.post("/api/v1/projects", &serde_json::json!({"name": format!("p-{}", Uuid::new_v4())})).await;
        assert_eq!(status, StatusCode::CREATED, "{project}");
        let (status, plan) = self.post(&format!("/api/v1/projects/{}/plans", project["id"].as_str().unwrap()), &plan).await;
        assert_eq!(status, StatusCode::CREATED, "{plan}");
        plan
    }

    /// Records a run of `plan_id` straight in the database, as the run engine does, and returns its id.
    pub async fn record_run(&self, plan_id: &str, owner: Option<&str>) -> Uuid {
        let db = loads_actors::store::connect(&self.database_url).await.expect("connect");
        let plan_id = Uuid::parse_str(plan_id).expect("plan id");
        let run =
            loads_actors::store::runs::create(&db, plan_id, owner.map(str::to_string), &Default::default(), &[], "recorded-by-a-test")
                .await
                .expect("record run");
        run.id
    }

    /// Moves a recorded run to `state`.
    pub async fn set_run_state(&self, run_id: Uuid, state: loads_actors::domain::views::RunState) {
        let db = loads_actors::store::connect(&self.database_url).await.expect("connect");
        loads_actors::store::runs::set_state(&db, run_id, state, None).await.expect("set state");
    }
}

/// The shared fixtures directory (`../shared/fixtures` beside the repository).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// The loads v2 project file of the original broker.
pub fn pushgo_json() -> String {
    let path = fixtures().join("loads-broker/pushgo.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A minimal valid plan document.
pub fn plan_doc(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "steps": [
            {"name": "service", "container_name": "svc:1", "service": true, "dns_name": "svc"},
            {"name": "load", "container_name": "gen:1", "run_delay": 5, "environment_data": {"TARGET": "http://svc"}}
        ]
    })
}

impl TestApp {
    /// Polls the run until `done` holds for it, at most `seconds`; answers the run.
    pub async fn wait_for_run(&self, run_id: &str, seconds: u64, done: impl Fn(&Value) -> bool) -> Value {
        eventually(seconds, async || {
            let (status, run) = self.get(&format!("/api/v1/runs/{run_id}")).await;
            assert_eq!(status, StatusCode::OK, "{run}");
            if done(&run) {
                Ok(run)
            } else {
                Err(format!("run {run_id}: {run:#}"))
            }
        })
        .await
    }

    /// Polls until the run has finished; answers it.
    pub async fn wait_finished(&self, run_id: &str, seconds: u64) -> Value {
        self.wait_for_run(run_id, seconds, |r| ["completed", "failed", "aborted"].contains(&r["state"].as_str().unwrap_or(""))).await
    }

    /// Creates a plan from `plan` and starts a run of it with `body`; answers the run id.
    pub async fn start(&self, plan: Value, body: Value) -> (Value, String) {
        let plan = self.create_plan(plan).await;
        let (status, run) = self.post(&format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap()), &body).await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        assert_eq!(run["state"], "pending");
        (plan, run["id"].as_str().unwrap().to_string())
    }

    /// Asserts that nothing labelled with this broker is left on the engine.
    pub fn assert_no_leftovers(&self) {
        let (containers, networks) = leftovers(&self.broker_id);
        assert!(containers.is_empty() && networks.is_empty(), "left behind: containers {containers:?}, networks {networks:?}");
    }
}

/// A busybox step running `script` with `sh -c`.
pub fn sh_step(name: &str, script: &str) -> Value {
    serde_json::json!({
        "name": name,
        "container_name": loads::images::BUSYBOX,
        "additional_command_args": format!("-c {}", shell_quote(script)),
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The step record of `name` in a run.
pub fn record<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["step_records"].as_array().unwrap().iter().find(|r| r["step_name"] == name).unwrap_or_else(|| panic!("no step {name}: {run}"))
}

/// Seconds between two RFC 3339 timestamps.
pub fn seconds_between(a: &Value, b: &Value) -> f64 {
    let parse = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap();
    (parse(b) - parse(a)).num_milliseconds() as f64 / 1000.0
}

/// Asks `probe` every 100 ms until it answers `Ok`, for at most `seconds`; each
/// `Err` says where things stand, and the last one is the failure message.
pub async fn eventually<T>(seconds: u64, probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    eventually_every(seconds, std::time::Duration::from_millis(100), probe).await
}

/// [`eventually`], asking every `every` (for probes that are costly to ask).
pub async fn eventually_every<T>(seconds: u64, every: std::time::Duration, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(state) => assert!(std::time::Instant::now() < deadline, "not so within {seconds} s: {state}"),
        }
        actix_web::rt::time::sleep(every).await;
    }
}

/// [`eventually`] for code that is not async: asks every 50 ms, blocking the thread.
pub fn eventually_blocking<T>(seconds: u64, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        match probe() {
            Ok(value) => return value,
            Err(state) => assert!(std::time::Instant::now() < deadline, "not so within {seconds} s: {state}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
