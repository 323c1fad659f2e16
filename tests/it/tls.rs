//! Every outgoing connection over TLS: InfluxDB, the Grafana API and
//! `container_url` downloads, each behind a TLS front (`tests/tls_proxy.py`)
//! whose certificate was signed by a CA the test made. The CA is trusted
//! through `tls.ca_file`, and through `SSL_CERT_FILE` as curl would take it;
//! without either, the connection is refused.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::dashboards::{next, recording_grafana};
use crate::helpers::{ensure_images, record, Backend, TestApp};
use crate::recovery::Restartable;

/// A CA and a certificate for `localhost`, 127.0.0.1 and any further addresses, that it signed.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (scripts/test installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn make_pki() -> Pki {
    make_pki_for(&[])
}

fn make_pki_for(addresses: &[&str]) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        d,
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=loads test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(d, &[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat());
    let extra: String = addresses.iter().map(|a| format!(",IP:{a}")).collect();
    std::fs::write(
        d.join("ext.cnf"),
        format!("subjectAltName=DNS:localhost,IP:127.0.0.1{extra}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    Pki { ca: d.join("ca.pem"), cert: d.join("server.pem"), key: d.join("server.key"), _dir: dir }
}

/// A TLS front on a free loopback port for the plain server on `target`; stopped when dropped.
struct Front {
    child: Child,
    port: u16,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn front(pki: &Pki, target: u16) -> Front {
    front_on(pki, target, "127.0.0.1")
}

/// A TLS front listening on `host` (a free port) for the plain server on loopback port `target`.
fn front_on(pki: &Pki, target: u16, host: &str) -> Front {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_proxy.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([pki.cert.to_str().unwrap(), pki.key.to_str().unwrap(), &target.to_string(), host])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("tls_proxy said {line:?}"));
    Front { child, port }
}

fn influx_port() -> u16 {
    let url = std::env::var("LOADS_TEST_INFLUX_URL").expect("LOADS_TEST_INFLUX_URL (scripts/test starts InfluxDB)");
    url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

async fn influx_hits(database: &str, run_id: &str) -> Value {
    let base = std::env::var("LOADS_TEST_INFLUX_URL").unwrap();
    let q = format!("SELECT sum(\"value\") FROM \"counter\" WHERE \"run\" = '{run_id}' AND \"metric\" = 'hits' AND \"node\" = 'all'");
    let mut r =
        awc::Client::new().get(format!("{base}/query")).query(&[("db", database), ("q", q.as_str())]).unwrap().send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    body["results"][0]["series"][0]["values"][0][1].clone()
}

async fn drop_database(database: &str) {
    let base = std::env::var("LOADS_TEST_INFLUX_URL").unwrap();
    let _ = awc::Client::new().post(format!("{base}/query")).query(&[("q", format!("DROP DATABASE \"{database}\""))]).unwrap().send().await;
}

/// A plan whose one step's image comes over TLS and which counts two hits.
fn tls_plan(tag: &str, image_port: u16) -> Value {
    json!({"name": "over-tls", "steps": [{
        "name": "gen", "container_name": tag, "container_url": format!("https://localhost:{image_port}/image.tar.gz"),
        "additional_command_args": "-c 'printf \"hits:1|c\\nhits:1|c\\n\" | nc $STATSD_HOST $STATSD_PORT; sleep 2'"}]})
}

fn remove_image(tag: &str) {
    let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
}

/// InfluxDB, a stand-in Grafana and an image server, each behind a TLS front
/// with a certificate of the test's CA.
struct Fronted {
    pki: Pki,
    _fronts: [Front; 2],
    image_front: Front,
    grafana: std::sync::mpsc::Receiver<crate::dashboards::Recorded>,
    tag: String,
    database: String,
    influx_url: String,
    grafana_url: String,
}

impl Fronted {
    fn new() -> Self {
        let pki = make_pki();
        let influx_front = front(&pki, influx_port());
        let (grafana_port, grafana) = recording_grafana(2);
        let grafana_front = front(&pki, grafana_port);
        let (tag, bytes) = crate::images::tarball("gzip");
        let (image_port, _) = crate::images::serve(bytes);
        let image_front = front(&pki, image_port);
        let database = format!("loads_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let influx_url = format!("https://localhost:{}", influx_front.port);
        let grafana_url = format!("https://localhost:{}", grafana_front.port);
        Self { pki, _fronts: [influx_front, grafana_front], image_front, grafana, tag, database, influx_url, grafana_url }
    }

    /// Settings that send InfluxDB writes and Grafana pushes through their fronts.
    fn settings(&self) -> Vec<(&str, &str)> {
        vec![
            ("LOADS__INFLUX__URL", &self.influx_url),
            ("LOADS__INFLUX__DATABASE", &self.database),
            ("LOADS__GRAFANA__URL", &self.grafana_url),
            ("LOADS__GRAFANA__TOKEN", "glsa_tls_test_token_0123456789"),
            ("LOADS__DOCKER__ALLOW_LOOPBACK_IMAGE_URLS", "true"),
        ]
    }

    fn plan(&self) -> Value {
        tls_plan(&self.tag, self.image_front.port)
    }
}

/// With the test's CA in `tls.ca_file`: the image is downloaded, the points are
/// written and the dashboard is pushed, all over TLS. Without it, the download is refused.
#[actix_web::test]
async fn influxdb_grafana_and_image_downloads_work_over_tls_with_a_private_ca() {
    ensure_images();
    let f = Fronted::new();
    let ca = f.pki.ca.display().to_string();
    let mut settings = f.settings();
    settings.push(("LOADS__TLS__CA_FILE", &ca));
    let app = TestApp::spawn(Backend::Sqlite, &settings).await;

    let (_, run_id) = app.start(f.plan(), json!({})).await;
    let run = app.wait_finished(&run_id, 90).await;
    assert_eq!(run["state"], "completed", "the image came over TLS: {run:#}");
    let pushed = next(&f.grafana).await;
    assert_eq!(pushed.request_line, "POST /api/dashboards/db HTTP/1.1", "the dashboard was pushed over TLS");
    assert_eq!(run["dashboard_url"].as_str().map(|u| u.starts_with(&f.grafana_url)), Some(true), "{run:#}");
    assert_eq!(influx_hits(&f.database, &run_id).await, 2.0, "the points were written over TLS");

    // A broker that does not trust the CA refuses the download.
    let untrusting = TestApp::spawn(Backend::Sqlite, &[("LOADS__DOCKER__ALLOW_LOOPBACK_IMAGE_URLS", "true")]).await;
    remove_image(&f.tag);
    let mut plan = f.plan();
    plan["name"] = json!("untrusted");
    let (_, run_id) = untrusting.start(plan, json!({})).await;
    let run = untrusting.wait_finished(&run_id, 90).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = record(&run, "gen")["failure_reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(reason.contains("certificate") || reason.contains("unknownissuer") || reason.contains("tls"), "{reason}");
    drop_database(&f.database).await;
    remove_image(&f.tag);
    app.assert_no_leftovers();
    untrusting.assert_no_leftovers();
}

/// The real `loads serve` with the test's CA in `SSL_CERT_FILE` and no `tls.ca_file`:
/// the same three connections work, as they would for curl.
#[actix_web::test]
async fn ssl_cert_file_is_honoured_like_curl_does() {
    ensure_images();
    let f = Fronted::new();
    let ca = f.pki.ca.display().to_string();
    let mut settings = f.settings();
    settings.push(("SSL_CERT_FILE", &ca));
    let broker = Restartable::new();
    let mut child = broker.serve(&settings);

    let project = broker.api.post("/api/v1/projects", json!({"name": "tls"})).await;
    let plan = broker.api.post(&format!("/api/v1/projects/{}/plans", project["id"].as_str().unwrap()), f.plan()).await;
    let run = broker.api.post(&format!("/api/v1/plans/{}/runs", plan["id"].as_str().unwrap()), json!({})).await;
    let run_id = run["id"].as_str().unwrap().to_string();
    let run = broker
        .api
        .wait_run(&run_id, "the run finishes", |r| ["completed", "failed", "aborted"].contains(&r["state"].as_str().unwrap_or("")))
        .await;
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(next(&f.grafana).await.request_line, "POST /api/dashboards/db HTTP/1.1");
    assert_eq!(influx_hits(&f.database, &run_id).await, 2.0);
    let _ = child.kill();
    let _ = child.wait();
    drop_database(&f.database).await;
    remove_image(&f.tag);
}

/// A Docker network of the test's own: its gateway is where a TLS front listens
/// for relays, as a TLS terminator in front of the broker would. Removed when dropped.
pub(crate) struct OwnNetwork {
    _guard: crate::helpers::LabelGuard,
    pub(crate) gateway: String,
}

impl OwnNetwork {
    pub(crate) fn new() -> Self {
        let owner = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let name = format!("loads-tls-{owner}");
        let docker = |args: &[&str]| {
            let out = Command::new("docker").args(args).output().expect("docker CLI");
            assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let guard = crate::helpers::LabelGuard(owner.clone());
        docker(&["network", "create", "--label", &format!("loads.broker={owner}"), &name]);
        let gateway = docker(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", &name]);
        assert!(gateway.parse::<std::net::Ipv4Addr>().is_ok(), "gateway {gateway:?}");
        Self { _guard: guard, gateway }
    }
}

/// How many `hits` a run's metrics counted (0 when none arrived).
async fn counted_hits(app: &TestApp, run_id: &str) -> f64 {
    let (_, body) = app.get(&format!("/api/v1/runs/{run_id}/metrics")).await;
    body["metrics"].as_array().into_iter().flatten().find(|m| m["metric"] == "hits").and_then(|m| m["count"].as_f64()).unwrap_or(0.0)
}

/// With `metrics.relay_url` an https URL, relays deliver there (here a TLS front on a
/// network of the test's own, in front of the ingest listener) trusting the CA of
/// `tls.ca_file`; a broker that does not trust it gets no window through.
#[actix_web::test]
async fn relays_deliver_over_https_to_a_tls_front_with_a_private_ca() {
    ensure_images();
    let network = OwnNetwork::new();
    let pki = make_pki_for(&[&network.gateway]);
    let ca = pki.ca.display().to_string();
    let plan = json!({"name": "relay-tls", "steps": [crate::helpers::sh_step(
        "gen", "printf \"hits:1|c\\nhits:1|c\\n\" | nc $STATSD_HOST $STATSD_PORT; sleep 2")]});
    // Each broker gets a front of its own in front of its own ingest port.
    let mut hits = Vec::new();
    for trusted in [true, false] {
        let ingest_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let front = front_on(&pki, ingest_port, &network.gateway);
        let relay_url = format!("https://{}:{}", network.gateway, front.port);
        let ingest_port = ingest_port.to_string();
        let mut settings = vec![("LOADS__METRICS__RELAY_URL", relay_url.as_str()), ("LOADS__METRICS__INGEST_PORT", &ingest_port)];
        if trusted {
            settings.push(("LOADS__TLS__CA_FILE", &ca));
        }
        let app = TestApp::spawn(Backend::Sqlite, &settings).await;
        let (_, run_id) = app.start(plan.clone(), json!({})).await;
        let run = app.wait_finished(&run_id, 90).await;
        assert_eq!(run["state"], "completed", "undelivered metrics do not fail a run: {run:#}");
        let (_, logs) = app.get(&format!("/api/v1/runs/{run_id}/logs")).await;
        hits.push((counted_hits(&app, &run_id).await, logs.to_string()));
        app.assert_no_leftovers();
    }
    assert_eq!(hits[0].0, 2.0, "both hits came through the trusted front: {}", hits[0].1);
    assert_eq!(hits[1].0, 0.0, "no window passed a certificate the relay does not trust: {}", hits[1].1);
}
