//! Attacks on the broker, each reproduced as an outsider would make it and
//! answered safely: a link out of the volume root, a document nested to hang
//! the parser, a flood of bogus metrics deliveries, a web page driving the
//! API, a secret written into a metric's name, NUL characters, a start that
//! cannot bind, and values that used to be changed or accepted silently.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{ensure_images, on_both_databases, record, sh_step, Backend, TestApp};
use crate::recovery::Restartable;

/// Sends `request` as it is on a new connection and answers what comes back
/// until the server closes it or 10 seconds pass.
pub async fn raw_request(address: (&str, u16), request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn merged(mut step: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        step[k] = v.clone();
    }
    step
}

/// A step mounting the volume root read-write leaves a link to the host's
/// `/etc` in it; a later step mounting that link is refused, and nothing is
/// written to the host's `/etc`. A host path outside the root is refused at import.
#[actix_web::test]
async fn a_link_left_in_the_volume_root_leads_nowhere_outside_it() {
    ensure_images();
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_str().unwrap().to_string();
    let app = TestApp::spawn(Backend::Sqlite, &[("LOADS__DOCKER__VOLUME_ROOT", &root_path)]).await;

    let linker = merged(sh_step("linker", "ln -s /etc /v/etc-link"), json!({"volume_mapping": format!("/v:{root_path}:rw")}));
    let (_, run_id) = app.start(json!({"name": "plant", "steps": [linker]}), json!({})).await;
    assert_eq!(app.wait_finished(&run_id, 60).await["state"], "completed");
    let link = root.path().join("etc-link");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink(), "the first step left its link");

    let marker = format!("loads-escape-{}", uuid::Uuid::new_v4().simple());
    let reader = merged(
        sh_step("reader", &format!("cat /x/hostname; touch /x/{marker}")),
        json!({"volume_mapping": format!("/x:{root_path}/etc-link:rw")}),
    );
    let (_, run_id) = app.start(json!({"name": "escape", "steps": [reader]}), json!({})).await;
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "reader")["failure_reason"].as_str().or(run["failure_reason"].as_str()).unwrap_or_default().to_string();
    assert!(reason.contains("symbolic link") && reason.contains("etc-link"), "{run:#}");
    assert!(!std::path::Path::new("/etc").join(&marker).exists(), "the step wrote into the host's /etc");

    // Outside the root: a plan for nodes of their own imports with a warning, and a run of
    // it here is refused before anything starts; climbing with `..` is no plan at all.
    let project = |mapping: &str| json!({"name": "p", "plans": [{"name": "outside", "steps": [{"name": "s", "container_name": "x", "volume_mapping": mapping}]}]});
    for mapping in ["/x:/etc:rw", "/x:/etc"] {
        let (status, body) = app.post("/api/v1/projects/import", &project(mapping)).await;
        assert!(status.is_success(), "{mapping}: {body}");
        assert_eq!(body["warnings"][0]["path"], "plans[0].steps[0].volume_mapping", "{body}");
        let plan_id = body["project"]["plans"][0]["id"].as_str().unwrap();
        let (status, body) = app.post(&format!("/api/v1/plans/{plan_id}/runs"), &json!({})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{mapping}: {body}");
        assert_eq!(body["details"][0]["path"], "steps[0].volume_mapping", "{body}");
    }
    let (status, body) = app.post("/api/v1/projects/import", &project(&format!("/x:{root_path}/../../etc"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["path"], "plans[0].steps[0].volume_mapping", "{body}");
    app.assert_no_leftovers();
}

/// Documents nested 100 000 deep are refused with a 400 in well under a
/// second, in YAML, JSON and TOML, while the server goes on answering.
#[actix_web::test]
async fn deeply_nested_documents_are_refused_at_once() {
    let app = TestApp::spawn(Backend::Sqlite, &[]).await;
    let depth = 100_000;
    let bombs = [
        ("application/yaml", format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth))),
        ("application/yaml", format!("{}x\n", "- ".repeat(depth))),
        ("application/json", format!("{}1{}", "[".repeat(depth), "]".repeat(depth))),
        ("application/toml", format!("a = {}1{}", "[".repeat(depth), "]".repeat(depth))),
        ("application/toml", format!("{} = 1\n", vec!["a"; depth].join("."))),
    ];
    for (content_type, bomb) in bombs {
        assert!(bomb.len() < 1_048_576, "under the body limit");
        let started = Instant::now();
        let (answer, health) =
            futures_util::join!(app.send("POST", "/api/v1/projects/import", Some(content_type), bomb.into_bytes()), app.get("/health"));
        let elapsed = started.elapsed();
        assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{content_type}: {}", answer.1);
        assert!(answer.1["message"].as_str().unwrap().contains("nested deeper than 64 levels"), "{}", answer.1);
        assert!(elapsed < Duration::from_secs(1), "{content_type} took {elapsed:?}");
        assert_eq!(health.0, StatusCode::OK);
    }
}

/// The status lines of `/proc/net/tcp{,6}` sockets listening on `port`: their local addresses.
fn listening_addresses(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
            let Some((address, hex_port)) = local.split_once(':') else { continue };
            if *state == "0A" && u16::from_str_radix(hex_port, 16).ok() == Some(port) {
                found.push(address.to_string());
            }
        }
    }
    found
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap()
}

/// The ingest listener binds loopback only; 20 connections that announce
/// 16 MB bodies with a bogus token, and keep sending, are refused from their
/// headers alone, the broker stays under 100 MB, and SIGTERM still stops it
/// after a burst of depth bombs.
#[actix_web::test]
async fn bogus_deliveries_are_refused_before_their_bodies_are_read() {
    let broker = Restartable::new();
    let mut child = broker.serve(&[]);
    let ingest = broker.ingest;
    let addresses = listening_addresses(ingest);
    assert!(!addresses.is_empty(), "the ingest listener is not listening on {ingest}");
    assert!(addresses.iter().all(|a| a == "0100007F"), "the ingest listener binds loopback only: {addresses:?}");

    let run = uuid::Uuid::new_v4();
    let flood = (0..20).map(|_| async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", ingest)).await.expect("connect");
        let (mut from_broker, mut to_broker) = stream.split();
        let head = format!(
            "POST /ingest/{run} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer bogus\r\nContent-Type: application/json\r\nContent-Length: 16000000\r\n\r\n"
        );
        to_broker.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b' '; 256 * 1024];
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        // Keep sending body, 256 KiB at a time (at most 16 MB), until the broker answers.
        for _ in 0..64 {
            tokio::select! {
                read = from_broker.read(&mut buf) => {
                    match read {
                        Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                written = to_broker.write_all(&chunk) => if written.is_err() { break },
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    });
    let answers = futures_util::future::join_all(flood).await;
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    }
    let rss = rss_kib(child.id());
    assert!(rss < 100 * 1024, "the broker holds {rss} KiB after the flood");

    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let bombs = (0..4).map(|_| {
        let bomb = format!("{}1{}", "{a: ".repeat(100_000), "}".repeat(100_000));
        client
            .post(format!("{}/api/v1/projects/import", broker.api.base))
            .insert_header(("content-type", "application/yaml"))
            .send_body(bomb)
    });
    for answer in futures_util::future::join_all(bombs).await {
        assert_eq!(answer.expect("answered").status(), StatusCode::BAD_REQUEST);
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    crate::helpers::eventually(20, async || match child.try_wait().unwrap() {
        Some(_) => Ok(()),
        None => Err("SIGTERM did not stop the broker".to_string()),
    })
    .await;
}

on_both_databases! {
    /// A page on another site cannot drive the API of a broker without tokens:
    /// a body without a JSON type, a request from another origin, a rebound
    /// host name, a preflight and a websocket from another origin are all
    /// refused, and nothing is created.
    async fn web_pages_of_other_sites_cannot_drive_the_api(app) {
        let project = br#"{"name": "made-by-a-web-page"}"#.to_vec();
        for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x")] {
            let (status, body) = app.send("POST", "/api/v1/projects", content_type, project.clone()).await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}: {body}");
        }
        let port = app.base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let body = String::from_utf8(project.clone()).unwrap();
        let cross_site = format!(
            "POST /api/v1/projects HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://attacker.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_request(("127.0.0.1", port), &cross_site).await;
        assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("origin_not_allowed"), "{answer}");
        let rebound = format!(
            "POST /api/v1/projects HTTP/1.1\r\nHost: attacker.example:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_request(("127.0.0.1", port), &rebound).await;
        assert!(answer.starts_with("HTTP/1.1 421") && answer.contains("host_not_allowed"), "{answer}");
        let answer = raw_request(("127.0.0.1", port), "GET /api/v1/projects HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 421"), "reading through a rebound name is refused too: {answer}");
        let preflight = format!(
            "OPTIONS /api/v1/projects HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://attacker.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_request(("127.0.0.1", port), &preflight).await;
        assert!(answer.starts_with("HTTP/1.1 403") && !answer.to_ascii_lowercase().contains("access-control-allow-origin"), "{answer}");
        let socket = format!(
            "GET /api/v1/runs/{}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://attacker.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            uuid::Uuid::new_v4()
        );
        let answer = raw_request(("127.0.0.1", port), &socket).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

        // The broker's own pages, and clients that send no Origin, still may.
        let same_origin = format!(
            "POST /api/v1/projects HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_request(("127.0.0.1", port), &same_origin).await;
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        let (_, list) = app.get("/api/v1/projects").await;
        assert_eq!(list["total"], 1, "only the same-origin request created a project: {list}");
    }

    /// NUL characters anywhere, control characters and great lengths in names:
    /// a 422 naming the field on both databases, never a 500.
    async fn nul_and_control_characters_are_refused_with_the_field(app) {
        let cases = [
            (json!({"name": "a\u{0}b"}), "name"),
            (json!({"name": "tab\there"}), "name"),
            (json!({"name": "n".repeat(100_000)}), "name"),
            (json!({"name": "ok", "home_page": "http://x/\u{0}"}), "home_page"),
        ];
        for (body, path) in cases {
            let (status, answer) = app.post("/api/v1/projects", &body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
            assert_eq!(answer["details"][0]["path"], path, "{answer}");
        }
        let plan = app.create_plan(crate::helpers::plan_doc("nul")).await;
        let plan_id = plan["id"].as_str().unwrap();
        for (body, path) in [
            (json!({"env": {"X": "a\u{0}"}}), "env.X"),
            (json!({"owner": "me\u{0}"}), "owner"),
        ] {
            let (status, answer) = app.post(&format!("/api/v1/plans/{plan_id}/runs"), &body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
            assert_eq!(answer["details"][0]["path"], path, "{answer}");
        }
        let (status, answer) = app.get("/api/v1/runs?owner=a%00b").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["details"][0]["path"], "owner", "{answer}");
        let (status, answer) = app.send("POST", "/api/project", Some("application/json"), br#"{"name": "a\u0000", "plans": []}"#.to_vec()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the loads v2 API too: {answer}");
        let (_, list) = app.get("/api/v1/projects").await;
        assert_eq!(list["total"], 1, "only the plan's project was stored: {list}");
    }

    /// Values that used to be changed or accepted without a word: a 422 naming the field.
    async fn values_out_of_range_or_ambiguous_are_refused(app) {
        let step = |extra: Value| {
            let mut s = json!({"name": "s", "container_name": "x"});
            for (k, v) in extra.as_object().unwrap() {
                s[k] = v.clone();
            }
            json!({"name": "p", "plans": [{"name": "a", "steps": [s]}]})
        };
        let path = |field: &str| format!("plans[0].steps[0].{field}");
        for (extra, field) in [
            (json!({"run_delay": u64::MAX}), "run_delay"),
            (json!({"run_max_time": 2_592_001}), "run_max_time"),
            (json!({"container_url": "gopher://images.example/x"}), "container_url"),
            (json!({"container_url": "ftp://images.example/x.tar"}), "container_url"),
            (json!({"container_url": ""}), "container_url"),
            (json!({"container_url": "/etc/passwd"}), "container_url"),
            (json!({"container_url": "file:///etc/passwd"}), "container_url"),
            (json!({"container_url": format!("http://127.0.0.1:{}/x.tar", 9)}), "container_url"),
            (json!({"container_url": "http://localhost/x.tar"}), "container_url"),
        ] {
            let (status, body) = app.post("/api/v1/projects/import", &step(extra.clone())).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{extra}: {body}");
            assert_eq!(body["details"][0]["path"], path(field), "{extra}: {body}");
        }
        let documents = [
            ("application/toml", "name = \"p\"\n[[plans]]\nname = \"a\"\n[[plans.steps]]\nname = \"s\"\ncontainer_name = \"x\"\nrun_delay = nan\n", "plans[0].steps[0].run_delay"),
            ("application/toml", "name = \"p\"\n[[plans]]\nname = \"a\"\n[[plans.steps]]\nname = \"s\"\ncontainer_name = \"x\"\nrun_max_time = inf\n", "plans[0].steps[0].run_max_time"),
            ("application/yaml", "name: p\nplans:\n  - name: a\n    steps:\n      - name: s\n        container_name: x\n        run_delay: .nan\n", "plans[0].steps[0].run_delay"),
            ("application/yaml", "name: p\nname: q\nplans: []\n", "name"),
            ("application/json", r#"{"name": "p", "plans": [{"name": "a", "name": "b", "steps": []}]}"#, "plans[0].name"),
        ];
        for (content_type, text, field) in documents {
            let (status, body) = app.send("POST", "/api/v1/projects/import", Some(content_type), text.as_bytes().to_vec()).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}: {body}");
            assert_eq!(body["details"][0]["path"], field, "{text}: {body}");
        }
        let (_, list) = app.get("/api/v1/projects").await;
        assert_eq!(list["total"], 0, "nothing was stored: {list}");
    }
}

/// A container that writes a secret's value into a statsd metric name: the
/// value is masked by the node's relay, so the summary, the feed, the
/// dashboard and InfluxDB only ever see the mask.
#[actix_web::test]
async fn a_secret_written_into_a_metric_name_never_leaves_the_node() {
    ensure_images();
    const VALUE: &str = "tok-9f8e7d6c5b";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets");
    std::fs::write(&file, format!("FOO={VALUE}\n")).unwrap();
    let file = file.display().to_string();
    let influx_db = format!("loads_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let influx_url = std::env::var("LOADS_TEST_INFLUX_URL").expect("LOADS_TEST_INFLUX_URL (scripts/test starts InfluxDB)");
    let app = TestApp::spawn(
        Backend::Sqlite,
        &[("LOADS__SECRETS__FILE", &file), ("LOADS__INFLUX__URL", &influx_url), ("LOADS__INFLUX__DATABASE", &influx_db)],
    )
    .await;
    let mut step = sh_step("leaker", "printf \"leak_$$X:1|c\\nplain.lat:5|ms|#who:$$X\\n\" | nc $$STATSD_HOST $$STATSD_PORT; sleep 3");
    step["environment_data"] = json!({"X": "secret:FOO"});
    let (_, run_id) = app.start(json!({"name": "leak", "steps": [step]}), json!({})).await;

    let url = format!("{}/api/v1/runs/{run_id}/events", app.base.replace("http://", "ws://"));
    let (_, mut socket) = awc::Client::new().ws(url).connect().await.expect("websocket");
    let mut feed = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(feed.contains("leak_") && feed.contains("who=")) {
        assert!(Instant::now() < deadline, "the feed never showed the metrics: {feed}");
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(awc::ws::Frame::Text(text)))) => feed.push_str(&String::from_utf8_lossy(&text)),
            Ok(Some(Ok(awc::ws::Frame::Close(_)))) | Ok(None) => panic!("the feed closed before the metrics came: {feed}"),
            _ => {}
        }
    }
    let run = app.wait_finished(&run_id, 60).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    assert!(feed.contains("leak_********"), "the feed shows the masked name: {feed}");

    let (_, metrics) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    let summary = metrics.to_string();
    assert!(summary.contains("leak_********"), "{summary}");
    let (_, dashboard) = app.get(&format!("/api/v1/runs/{run_id}/dashboard")).await;
    let base = influx_url.clone();
    let mut r = awc::Client::new()
        .get(format!("{base}/query"))
        .query(&[("db", influx_db.as_str()), ("q", "SHOW TAG VALUES WITH KEY = \"metric\"")])
        .unwrap()
        .send()
        .await
        .unwrap();
    let tags: Value = r.json().await.unwrap();
    let tags = tags.to_string();
    assert!(tags.contains("leak_********"), "{tags}");
    for (what, text) in [("feed", &feed), ("summary", &summary), ("dashboard", &dashboard.to_string()), ("InfluxDB", &tags)] {
        assert!(!text.contains(VALUE), "the secret is in the {what}: {text}");
    }
    let _ =
        awc::Client::new().post(format!("{base}/query")).query(&[("q", format!("DROP DATABASE \"{influx_db}\""))]).unwrap().send().await;
    app.assert_no_leftovers();
}

/// A port that is taken, and `server.host = "[::1]"`: the first exits with
/// the bind error and no panic, the second serves on IPv6 loopback.
#[test]
fn a_start_that_cannot_bind_exits_cleanly_and_ipv6_loopback_serves() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let cases = [
        ("LOADS__SERVER__PORT", format!("cannot bind 127.0.0.1:{port}")),
        ("LOADS__METRICS__INGEST_PORT", format!("cannot bind the metrics ingest listener 127.0.0.1:{port}")),
    ];
    for (key, message) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_loads"))
            .arg("serve")
            .env("LOADS__DATABASE__URL", format!("sqlite://{}", dir.path().join("a.db").display()))
            .env("LOADS__SERVER__PORT", "0")
            .env("LOADS__METRICS__INGEST_PORT", "0")
            .env(key, &port)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {stderr}");
        assert!(stderr.contains(&message), "{key}: {stderr}");
        assert!(!stderr.contains("panicked"), "{key}: {stderr}");
    }

    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; the [::1] half is not run");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_loads"))
        .arg("serve")
        .env("LOADS__DATABASE__URL", format!("sqlite://{}", dir.path().join("b.db").display()))
        .env("LOADS__SERVER__HOST", "[::1]")
        .env("LOADS__SERVER__PORT", "0")
        .env("LOADS__METRICS__INGEST_PORT", "0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("loads serve exited early").unwrap();
        if line.contains("loads listening") {
            let at = line.find("[::1]:").unwrap_or_else(|| panic!("not on [::1]: {line}"));
            let port: String = line[at + 6..].chars().take_while(char::is_ascii_digit).collect();
            break format!("[::1]:{port}");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let mut stream = std::net::TcpStream::connect(address.as_str()).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /health HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
