//! The `loads` binary: plan validation, import, configuration, help.

use std::path::Path;
use std::process::{Command, Output};

use crate::helpers::fixtures;

/// Runs the `loads` binary in `dir` with `env` and none of the caller's `LOADS__` settings.
pub(crate) fn loads(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loads"));
    cmd.args(args).current_dir(dir).env_remove("RUST_LOG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LOADS__")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run loads")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The loads v2 fixture validates as it is; on a local broker, whose nodes mount only
/// from under the volume root, its `/var/log` mounts are warned about, not refused.
#[test]
fn plan_validate_accepts_the_loads_v2_project_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixtures().join("loads-broker/pushgo.json");
    let out = loads(&["plan", "validate", file.to_str().unwrap()], &[], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout) + &text(&out.stderr);
    assert!(printed.contains("ok: project \"Push Testing\", 2 plan(s), 3 step(s)"), "{printed}");
    assert!(printed.contains("plans[0].steps[0].volume_mapping: host path \"/var/log/$RUN_ID\" is outside the volume root"), "{printed}");
    assert!(printed.contains("a run of it is refused here"), "{printed}");
}

/// Every problem is printed with its path, and the exit status is 1.
#[test]
fn plan_validate_prints_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.toml");
    std::fs::write(
        &file,
        r#"
name = "broken"
[[steps]]
name = "a"
container_name = "gen"
run_max_time = -1
port_mapping = "80"
[[steps]]
name = "a"
container_name = "gen:$VERSION"
"#,
    )
    .unwrap();
    let out = loads(&["plan", "validate", file.to_str().unwrap()], &[], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for line in [
        "4 problems",
        "steps[0].run_max_time: must be >= 0",
        "steps[0].port_mapping: \"80\" must be container_port:host_port",
        "steps[1].name: duplicate step name \"a\" (also steps[0])",
        "steps[1].container_name: unknown variable `$VERSION`",
    ] {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }
}

/// `--env` defines run variables, YAML works, and an unreadable file is exit status 2.
#[test]
fn plan_validate_takes_run_env_and_reports_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, "name: p\nsteps:\n  - name: gen\n    container_name: gen\n    additional_command_args: $TARGET\n").unwrap();
    let out = loads(&["plan", "validate", file.to_str().unwrap()], &[], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = loads(&["plan", "validate", file.to_str().unwrap(), "--env", "TARGET=http://svc"], &[], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: plan \"p\""));

    let out = loads(&["plan", "validate", "missing.json"], &[], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read missing.json"), "{}", text(&out.stderr));
    let out = loads(&["plan", "validate", "plan.txt"], &[], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("name it .json, .toml, .yaml or .yml"), "{}", text(&out.stderr));
}

/// `import` loads a project file into the configured database, idempotently.
#[test]
fn import_loads_a_project_file_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let file = fixtures().join("loads-broker/pushgo.json");
    let env = [("LOADS__DATABASE__URL", url.as_str())];
    let out = loads(&["import", file.to_str().unwrap()], &env, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("migration"), "a one-shot command logs only when asked: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("created project \"Push Testing\""), "{stdout}");
    assert!(stdout.contains("plan \"Single Server\"") && stdout.contains("(2 steps): created"), "{stdout}");
    let again = loads(&["import", file.to_str().unwrap()], &env, dir.path());
    assert!(again.status.success());
    assert!(text(&again.stdout).contains("(2 steps): unchanged"), "{}", text(&again.stdout));
    let verbose = loads(&["import", "-v", file.to_str().unwrap()], &env, dir.path());
    assert!(text(&verbose.stderr).contains("migration"), "-v logs at log.level: {}", text(&verbose.stderr));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "x", "plans": [{"name": "p", "steps": [{"name": "s", "instance_count": 0}]}]}"#).unwrap();
    let out = loads(&["import", bad.to_str().unwrap()], &env, dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("plans[0].steps[0].instance_count: must be at least 1"), "{err}");
    assert!(err.contains("plans[0].steps[0].container_name: is required"), "{err}");
}

/// `config show` prints the layered configuration with secrets masked.
#[test]
fn config_show_layers_file_and_environment_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("loads.toml"), "[server]\nport = 9000\n[broker]\nid = \"from-file\"\n").unwrap();
    let env = [
        ("LOADS__BROKER__ID", "from-env"),
        ("LOADS__DATABASE__URL", "postgres://loads:s3cret-pw@127.0.0.1/loads"),
        ("LOADS__AUTH__TOKENS", "abcdefghijklmnop-secret"),
    ];
    let out = loads(&["config", "show"], &env, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: toml::Value = toml::from_str(&text(&out.stdout)).expect("TOML output");
    assert_eq!(shown["server"]["port"].as_integer(), Some(9000), "from loads.toml");
    assert_eq!(shown["server"]["host"].as_str(), Some("127.0.0.1"), "built-in default");
    assert_eq!(shown["broker"]["id"].as_str(), Some("from-env"), "environment wins over the file");
    assert_eq!(shown["database"]["url"].as_str(), Some("postgres://loads:********@127.0.0.1/loads"));
    assert_eq!(shown["auth"]["tokens"].as_array().unwrap()[0].as_str(), Some("********"));
    let all = text(&out.stdout);
    assert!(!all.contains("s3cret-pw") && !all.contains("abcdefghijklmnop-secret"));

    let explicit = dir.path().join("other.toml");
    std::fs::write(&explicit, "[server]\nport = 9100\n").unwrap();
    let out = loads(&["--config", explicit.to_str().unwrap(), "config", "show"], &[], dir.path());
    let shown: toml::Value = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(shown["server"]["port"].as_integer(), Some(9100), "--config replaces ./loads.toml");
}

/// Unknown keys and bad values stop the command with the key named.
#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (env, key) in [
        (("LOADS__SERVER__PROT", "1"), "unknown key `server.prot`"),
        (("LOADS__SERVER__PORT", "http"), "server.port"),
        (("LOADS__LOG__FORMAT", "xml"), "log.format"),
        (("LOADS__DATABASE__URL", "mysql://db"), "database.url"),
    ] {
        let out = loads(&["config", "show"], &[env], dir.path());
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let err = text(&out.stderr);
        assert!(err.contains(key), "{env:?}: {err}");
    }
    std::fs::write(dir.path().join("loads.toml"), "[sever]\nport = 1\n").unwrap();
    let out = loads(&["config", "show"], &[], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown key `sever`"), "{}", text(&out.stderr));
}

/// Help text has examples for the top level and each command.
#[test]
fn help_has_examples() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["plan", "validate", "--help"],
        vec!["import", "--help"],
        vec!["config", "show", "--help"],
    ] {
        let out = loads(&args, &[], dir.path());
        assert!(out.status.success(), "{args:?}");
        assert!(text(&out.stdout).contains("Examples:"), "{args:?}: {}", text(&out.stdout));
    }
}

fn run_plan_file(dir: &Path, body: &str) -> std::path::PathBuf {
    let file = dir.join("plan.toml");
    std::fs::write(&file, body).unwrap();
    file
}

fn run_env(dir: &Path, broker: &str) -> Vec<(String, String)> {
    vec![
        ("LOADS__DATABASE__URL".into(), format!("sqlite://{}", dir.join("run.db").display())),
        ("LOADS__BROKER__ID".into(), broker.into()),
        ("LOADS__DOCKER__STOP_GRACE_SECONDS".into(), "1".into()),
    ]
}

/// `loads run` runs a plan file, prints a summary, and exits 0 only when its verdict is passed (1 when the run failed).
#[test]
fn loads_run_exits_with_the_runs_outcome() {
    crate::helpers::ensure_images();
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let _cleanup = crate::helpers::LabelGuard(broker.clone());
    let env = run_env(dir.path(), &broker);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ok = run_plan_file(dir.path(), "name = \"ok\"\n[[steps]]\nname = \"hello\"\ncontainer_name = \"loads/busybox:1\"\ninstance_count = 2\nadditional_command_args = \"-c 'printf \\\"req:1|c\\\\nlat:3|ms\\\\n\\\" | nc $$STATSD_HOST $$STATSD_PORT; echo hello-from-$$HOSTNAME'\"\n");
    let out = loads(&["run", ok.to_str().unwrap()], &env, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("completed after"), "{stdout}");
    assert!(stdout.contains("hello") && stdout.contains("0,0"), "the summary shows both exit codes: {stdout}");
    let req = stdout.lines().find(|l| l.split_whitespace().nth(1) == Some("req")).unwrap_or_else(|| panic!("no metrics table: {stdout}"));
    assert_eq!(req.split_whitespace().nth(2), Some("2"), "one request from each of the two nodes: {req}");
    assert!(stdout.lines().any(|l| l.split_whitespace().nth(1) == Some("lat")), "{stdout}");
    assert!(stderr.contains("run running") && stderr.contains("run completed"), "progress is shown: {stderr}");

    let failing = run_plan_file(
        dir.path(),
        "name = \"bad\"\n[[steps]]\nname = \"oops\"\ncontainer_name = \"loads/busybox:1\"\nadditional_command_args = \"-c 'exit 7'\"\n",
    );
    let out = loads(&["run", failing.to_str().unwrap()], &env, dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("exited with code 7"), "{}", text(&out.stdout));
    let (containers, networks) = crate::helpers::leftovers(&broker);
    assert!(containers.is_empty() && networks.is_empty());
}

/// Ctrl-C (SIGINT) aborts the run: the command exits 130 and leaves nothing behind.
#[test]
fn ctrl_c_aborts_loads_run_and_leaves_nothing() {
    use std::io::BufRead;
    crate::helpers::ensure_images();
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let _cleanup = crate::helpers::LabelGuard(broker.clone());
    let file = run_plan_file(dir.path(), "name = \"long\"\n[[steps]]\nname = \"sleeper\"\ncontainer_name = \"loads/busybox:1\"\nrun_max_time = 0\nadditional_command_args = \"-c 'sleep 300'\"\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loads"))
        .args(["run", file.to_str().unwrap()])
        .current_dir(dir.path())
        .envs(run_env(dir.path(), &broker))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let line = lines.next().expect("loads run ended early").unwrap();
        if line.contains("container started") {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
    let (containers, _) = crate::helpers::leftovers(&broker);
    assert_eq!(containers.len(), 2, "the step's container and its relay are running");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an aborted run exits 130: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("run aborted")), "{rest:?}");
    let (containers, networks) = crate::helpers::leftovers(&broker);
    assert!(containers.is_empty() && networks.is_empty(), "left: {containers:?} {networks:?}");
}
