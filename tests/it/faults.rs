//! Faults with defined outcomes: what the engine refuses, what is killed from
//! outside, what is down. Each ends in a state a user can read in the API.

use serde_json::json;

use crate::helpers::{ensure_images, eventually, record, sh_step, Backend, TestApp};

/// A step container killed from outside (`docker kill`) fails its step with the
/// exit code, fails the run (the step is required), and everything is removed.
#[actix_web::test]
async fn a_container_killed_from_outside_fails_its_step_with_the_exit_code() {
    ensure_images();
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let (_, run_id) = app.start(json!({"name": "p", "steps": [sh_step("victim", "sleep 300")]}), json!({})).await;
    let id = eventually(60, async || {
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
        match logs["containers"].as_array().and_then(|all| all.iter().find(|c| c["role"] == "step").cloned()) {
            Some(c) => Ok(c["docker_id"].as_str().unwrap().to_string()),
            None => Err(format!("no step container yet: {logs}")),
        }
    })
    .await;
    let out = std::process::Command::new("docker").args(["kill", &id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "victim")["failure_reason"].as_str().unwrap().to_string();
    assert!(reason.contains("exited with code 137"), "{reason}");
    app.assert_no_leftovers();
}

/// The engine refusing to start a container (its host port is taken) fails the
/// step with the engine's message, naming the container and image.
#[actix_web::test]
async fn a_container_the_engine_refuses_fails_its_step_with_the_engines_message() {
    ensure_images();
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut step = sh_step("blocked", "sleep 1");
    step["port_mapping"] = json!(format!("8080:{port}"));
    let (_, run_id) = app.start(json!({"name": "p", "steps": [step]}), json!({})).await;
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "blocked")["failure_reason"].as_str().unwrap().to_string();
    assert!(reason.contains("cannot start container") && reason.contains(loads::images::BUSYBOX), "{reason}");
    assert!(reason.contains("address already in use") || reason.contains("port is already allocated"), "{reason}");
    drop(taken);
    app.assert_no_leftovers();
}

/// With InfluxDB down the run is unaffected: it completes and its metrics summary is stored and served.
#[actix_web::test]
async fn influxdb_down_leaves_the_run_and_its_summary_unaffected() {
    ensure_images();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{closed}");
    let app = TestApp::spawn(Backend::Sqlite, &[("LOADS__INFLUX__URL", &url)]).await;
    let script = "for i in 1 2 3; do printf 'hits:1|c\\n' | nc -w 2 $$STATSD_HOST $$STATSD_PORT; done; sleep 2";
    let (_, run_id) = app.start(json!({"name": "p", "steps": [sh_step("load", script)]}), json!({})).await;
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let hits = metrics["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "hits").map(|m| m["count"].clone());
    assert_eq!(hits, Some(json!(3.0)), "{metrics:#}");
    let lost = metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "influx.points_unwritten")
        .map(|m| m["count"].as_f64().unwrap());
    assert!(lost.is_some_and(|n| n > 0.0), "the points InfluxDB did not take are reported: {metrics:#}");
    app.assert_no_leftovers();
}

/// A PostgreSQL server of the test's own (initdb as the `postgres` user, on a free loopback port).
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn as_postgres(args: &[&str]) -> std::process::Output {
        std::process::Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().expect("runuser")
    }

    fn bin(tool: &str) -> String {
        let dir = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .max()
            .expect("PostgreSQL is installed");
        dir.join("bin").join(tool).display().to_string()
    }

    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::process::Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status().unwrap();
        let data = dir.path().join("data").display().to_string();
        let out = Self::as_postgres(&[&Self::bin("initdb"), "-D", &data, "-A", "trust", "-U", "loads"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Self { dir, port };
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn up(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let out = Self::as_postgres(&[
            &Self::bin("pg_ctl"),
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &format!("{}/log", self.data()),
            "-w",
            "start",
        ]);
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn down(&self) {
        let out = Self::as_postgres(&[&Self::bin("pg_ctl"), "-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://loads@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Self::as_postgres(&[&Self::bin("pg_ctl"), "-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }
}

/// PostgreSQL going away in the middle of a run (and coming back) loses no state:
/// the transitions made meanwhile are written once it answers, and the run completes.
#[actix_web::test]
async fn the_database_restarting_mid_run_loses_no_state() {
    use sea_orm::ConnectionTrait;
    ensure_images();
    let pg = PrivatePostgres::start();
    let admin = sea_orm::Database::connect(pg.url("postgres")).await.unwrap();
    admin.execute_unprepared("CREATE DATABASE loads_fault").await.unwrap();
    drop(admin);
    let app = TestApp::spawn_on(&pg.url("loads_fault"), &[]).await;
    let mut late = sh_step("late", "sleep 2");
    late["run_delay"] = json!(3);
    let (_, run_id) = app.start(json!({"name": "p", "steps": [sh_step("short", "sleep 1"), late]}), json!({})).await;
    app.wait_for_run(&run_id, 60, |r| r["state"] == "running").await;

    // Down while `short` finishes and `late` starts: both transitions happen with no database.
    pg.down();
    let filter = format!("label=loads.broker={}", app.broker_id);
    eventually(60, async || {
        let out = std::process::Command::new("docker")
            .args(["ps", "-a", "--filter", &filter, "--filter", "label=loads.role=step", "--format", "{{.Status}}"])
            .output()
            .unwrap();
        let statuses = String::from_utf8_lossy(&out.stdout).to_string();
        // `late` has started (its container exists) and `short`'s is gone (torn down).
        match statuses.lines().count() == 1 && statuses.starts_with("Up") {
            true => Ok(()),
            false => Err(format!("the run did not go on without its database: {statuses}")),
        }
    })
    .await;
    pg.up();

    let run = app.wait_finished(&run_id, 120).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    for step in ["short", "late"] {
        let r = record(&run, step);
        assert_eq!(r["state"], "completed", "{step}: {run:#}");
        assert!(r["started_at"].is_string() && r["completed_at"].is_string(), "{step}: {run:#}");
    }
    app.assert_no_leftovers();
}
