//! Image tarballs from `container_url`: fetched once per step (not once per
//! node) onto the broker's disk and streamed, checked against
//! `container_sha256`, in every compression the original's S3 tarballs came
//! in, with the download's progress on the feed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{ensure_images, record, Backend, TestApp};

/// The test's image servers are on loopback, which image URLs may name only when allowed.
const LOOPBACK_IMAGES: &[(&str, &str)] = &[("LOADS__DOCKER__ALLOW_LOOPBACK_IMAGE_URLS", "true")];

/// Busybox under a new tag, saved as a tarball compressed with `compress` (`cat`, `gzip`, `bzip2`); answers the tag and bytes.
pub fn tarball(compress: &str) -> (String, Vec<u8>) {
    let tag = format!("loads/url-test:{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    assert!(Command::new("docker").args(["tag", loads::images::BUSYBOX, &tag]).status().unwrap().success());
    let out = Command::new("sh").arg("-c").arg(format!("docker save {tag} | {compress}")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    (tag, out.stdout)
}

/// Serves `bytes` to every request (at most 20), counting them.
pub fn serve(bytes: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for _ in 0..20 {
            let Ok((mut stream, _)) = listener.accept() else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut request = [0u8; 2048];
            let _ = stream.read(&mut request);
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", bytes.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&bytes);
        }
    });
    (port, count)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t");
    std::fs::write(&file, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&file).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn step(tag: &str, port: u16, nodes: u32) -> Value {
    json!({"name": "loaded", "container_name": tag, "container_url": format!("http://127.0.0.1:{port}/image.tar"),
           "instance_count": nodes, "additional_command_args": "-c 'echo from-the-tarball'"})
}

/// A three-node step downloads its gzipped tarball once, reports the download
/// on the feed, and every node runs the image; nothing is left in the download directory.
#[actix_web::test]
async fn a_tarball_is_downloaded_once_for_all_the_nodes_of_a_step() {
    ensure_images();
    let downloads = tempfile::tempdir().unwrap();
    let dir = downloads.path().display().to_string();
    let mut settings = LOOPBACK_IMAGES.to_vec();
    settings.push(("LOADS__DOCKER__DOWNLOAD_DIR", &dir));
    let app = TestApp::spawn(Backend::Sqlite, &settings).await;
    let (tag, bytes) = tarball("gzip");
    let size = bytes.len() as u64;
    let (port, requests) = serve(bytes);
    let (_, run_id) = app.start(json!({"name": "once", "steps": [step(&tag, port, 3)]}), json!({})).await;
    let url = format!("{}/api/v1/runs/{run_id}/events", app.base.replace("http://", "ws://"));
    let (_, mut socket) = awc::Client::new().ws(url).connect().await.expect("websocket");
    let mut done = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while done.is_none() {
        assert!(std::time::Instant::now() < deadline, "the download was not reported");
        if let Ok(Some(Ok(awc::ws::Frame::Text(text)))) = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next()).await {
            let event: Value = serde_json::from_slice(&text).unwrap();
            if event["type"] == "download" && event["bytes"] == json!(size) {
                done = Some(event);
            }
        }
    }
    let event = done.unwrap();
    assert_eq!((event["step"].as_str(), event["total"].as_u64()), (Some("loaded"), Some(size)));
    let run = app.wait_finished(&run_id, 90).await;
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one download for three nodes");
    let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs?step=loaded")).await;
    let outputs: Vec<&str> =
        logs["containers"].as_array().unwrap().iter().filter(|c| c["role"] == "step").map(|c| c["logs"].as_str().unwrap().trim()).collect();
    assert_eq!(outputs, ["from-the-tarball"; 3]);
    assert_eq!(std::fs::read_dir(downloads.path()).unwrap().count(), 0, "the downloaded tarball is removed once loaded");
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    app.assert_no_leftovers();
}

/// Plain and bzip2 tarballs load; `container_sha256` is checked: the right digest
/// passes, another fails the step naming both; a malformed one is a 422.
#[actix_web::test]
async fn tarballs_load_in_every_compression_and_are_checked_against_their_digest() {
    ensure_images();
    let app = TestApp::spawn(Backend::Sqlite, LOOPBACK_IMAGES).await;
    for compress in ["cat", "bzip2"] {
        let (tag, bytes) = tarball(compress);
        let digest = sha256_hex(&bytes);
        let (port, _) = serve(bytes);
        let mut good = step(&tag, port, 1);
        good["container_sha256"] = json!(digest.to_uppercase());
        let (_, run_id) = app.start(json!({"name": format!("{compress}-good"), "steps": [good]}), json!({})).await;
        let run = app.wait_finished(&run_id, 90).await;
        assert_eq!(run["state"], "completed", "{compress}: {run:#}");
        let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();

        let mut bad = step(&tag, port, 1);
        bad["container_sha256"] = json!("0".repeat(64));
        let (_, run_id) = app.start(json!({"name": format!("{compress}-bad"), "steps": [bad]}), json!({})).await;
        let run = app.wait_finished(&run_id, 90).await;
        assert_eq!(run["state"], "failed", "{compress}: {run:#}");
        let reason = record(&run, "loaded")["failure_reason"].as_str().unwrap_or_default().to_string();
        assert!(reason.contains(&digest) && reason.contains("container_sha256"), "{reason}");
    }
    let plan = json!({"name": "p", "steps": [{"name": "s", "container_name": "x", "container_url": "https://h/x.tar", "container_sha256": "abc"}]});
    let (status, body) = app.post("/api/v1/projects", &json!({"name": "sha"})).await;
    assert_eq!(status, awc::http::StatusCode::CREATED);
    let (status, body) = app.post(&format!("/api/v1/projects/{}/plans", body["id"].as_str().unwrap()), &plan).await;
    assert_eq!(status, awc::http::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["path"], "steps[0].container_sha256");
    app.assert_no_leftovers();
}

/// A pull from a private registry carries the login `docker.registry_auth` gives for
/// its host (the password a `secret:NAME`): the registry (a stand-in that wants a
/// login and holds no image) sees the credentials, and the step fails saying the
/// image is not there, not that it was refused.
#[actix_web::test]
async fn pulls_from_a_private_registry_carry_its_login() {
    use std::io::BufRead;
    ensure_images();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_registry.py");
    let mut registry = Command::new("python3")
        .args([script, "ci-bot", "registry-password-1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = std::io::BufReader::new(registry.stdout.take().unwrap()).lines();
    let port = lines.next().unwrap().unwrap().strip_prefix("listening ").unwrap().to_string();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(serde_json::from_str(&line).unwrap());
        }
    });
    let host = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, "REGISTRY=registry-password-1\n").unwrap();
    let secrets = secrets.display().to_string();
    let app = TestApp::spawn_tweaked(Backend::Sqlite, &[("LOADS__SECRETS__FILE", &secrets)], |s| {
        let login =
            loads::config::RegistryLogin { username: "ci-bot".into(), password: serde_json::from_value(json!("secret:REGISTRY")).unwrap() };
        s.docker.registry_auth.insert(host.clone(), login);
    })
    .await;
    let plan = json!({"name": "private", "steps": [{"name": "gen", "container_name": format!("{host}/team/gen:1")}]});
    let (_, run_id) = app.start(plan, json!({})).await;
    let run = app.wait_finished(&run_id, 60).await;
    let _ = registry.kill();
    let _ = registry.wait();
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(reason.contains("manifest unknown") || reason.contains("not found"), "logged in, then no such image: {reason}");
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|r| r["authorized"] == true && r["path"].as_str().unwrap_or("").contains("/team/gen/")), "{seen:?}");
    app.assert_no_leftovers();
}

/// An Amazon ECR image needs no configured login: the broker's AWS credentials fetch
/// an authorization token (here from the moto server), which is kept for later pulls.
#[actix_web::test]
async fn ecr_pulls_get_a_token_with_the_brokers_aws_credentials() {
    use loads_actors::infra::registry::Registries;
    let registries = Registries::new(Default::default(), Some(crate::instances::moto()));
    let secrets = loads_actors::domain::secrets::Secrets::default();
    let image = "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/gen:1";
    let first = registries.credentials_for(image, &secrets).await.expect("a token").expect("credentials for ECR");
    assert_eq!(first.username.as_deref(), Some("AWS"));
    assert!(first.password.as_deref().is_some_and(|p| !p.is_empty()));
    assert_eq!(first.serveraddress.as_deref(), Some("123456789012.dkr.ecr.us-west-2.amazonaws.com"));
    let again = registries.credentials_for(image, &secrets).await.unwrap().unwrap();
    assert_eq!(again.password, first.password, "kept until shortly before it expires");
    assert!(registries.credentials_for("registry.example.com/gen:1", &secrets).await.unwrap().is_none());
}

/// Image copies to nodes are gzip-compressed on the way and last as long as bytes
/// move: a copy between two engines works (the engine takes the compressed stream),
/// and a copy whose source stops sending fails after the stall limit, naming it and
/// how far it got, rather than hanging on or ending at a fixed timeout.
#[actix_web::test]
async fn image_copies_are_compressed_and_end_only_when_they_stop_moving() {
    use loads_actors::infra::docker::Engine;
    use std::io::BufRead;
    use std::time::Duration;
    ensure_images();
    let local = Engine::local().await.unwrap();
    local.copy_image_from(&local, loads::images::BUSYBOX, Duration::from_secs(30)).await.expect("a compressed copy loads");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stalling_engine.py");
    let mut engine = Command::new("python3").arg(script).stdout(std::process::Stdio::piped()).spawn().expect("python3");
    let mut lines = std::io::BufReader::new(engine.stdout.take().unwrap()).lines();
    let port = lines.next().unwrap().unwrap().strip_prefix("listening ").unwrap().to_string();
    let stalled = Engine::at(&format!("tcp://127.0.0.1:{port}")).await.expect("the stand-in answers /version");
    let started = std::time::Instant::now();
    let err = local.copy_image_from(&stalled, "loads-test/stalled:1", Duration::from_secs(2)).await.expect_err("the copy stalls");
    let waited = started.elapsed();
    let _ = engine.kill();
    let _ = engine.wait();
    let message = err.to_string();
    assert!(message.contains("no progress for 2 s after 0.0 MiB"), "{message}");
    assert!(waited < Duration::from_secs(60), "ended by the stall limit, not a request timeout: {waited:?}");
}
