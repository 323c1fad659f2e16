//! EC2 instances against the moto server: the broker lists and terminates only
//! its own, and its reaper terminates those of runs that are not live or that
//! have expired. The broker runs as the real binary, with AWS credentials from
//! the standard environment variables.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use serde_json::Value;

pub const REGION: &str = "us-west-2";

pub fn moto() -> String {
    std::env::var("LOADS_TEST_MOTO_URL").expect("LOADS_TEST_MOTO_URL (scripts/test starts the moto server)")
}

pub fn client() -> aws_sdk_ec2::Client {
    client_in(REGION)
}

/// A client of the moto server in `region`.
pub fn client_in(region: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(moto())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// The default VPC's first subnet in [`REGION`]: instances launched into it get
/// Launches one instance in moto with `tags`, as a broker would have; answers its id.
async fn launch(tags: &[(&str, &str)]) -> String {
    let spec = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect()))
        .build();
    let out = client()
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec)
        .send()
        .await
        .expect("moto launches");
    out.instances()[0].instance_id().unwrap().to_string()
}

async fn state(id: &str) -> String {
    let out = client().describe_instances().instance_ids(id).send().await.unwrap();
    out.reservations()[0].instances()[0].state().unwrap().name().unwrap().as_str().to_string()
}

fn serve(broker: &str, port: u16, db: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loads"))
        .arg("serve")
        .env("LOADS__DATABASE__URL", db)
        .env("LOADS__BROKER__ID", broker)
        .env("LOADS__SERVER__PORT", port.to_string())
        .env("LOADS__METRICS__INGEST_PORT", "0")
        .env("LOADS__EC2__ENDPOINT_URL", moto())
        .env("LOADS__EC2__REGIONS__US_WEST_2__AMI", "ami-12c6146b")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("loads serve");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("loads serve exited early").unwrap();
        if line.contains("loads listening") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

async fn until_terminated(ids: &[&str]) {
    crate::helpers::eventually(60, async || {
        for id in ids {
            let s = state(id).await;
            if s != "terminated" && s != "shutting-down" {
                return Err(format!("{id} still {s}"));
            }
        }
        Ok(())
    })
    .await
}

/// At start the reaper terminates this broker's orphaned and expired instances and
/// leaves other brokers' alone; the API lists and terminates only this broker's.
#[actix_web::test]
async fn the_broker_reaps_lists_and_terminates_only_its_own_instances() {
    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let other = format!("{broker}-other");
    let orphan = launch(&[("loads:broker", &broker), ("loads:run", "no-such-run")]).await;
    let expired = launch(&[("loads:broker", &broker), ("loads:run", "r"), ("loads:expires-at", "2020-01-01T00:00:00Z")]).await;
    let untagged = launch(&[("loads:broker", &broker)]).await;
    let foreign = launch(&[("loads:broker", &other), ("loads:run", "no-such-run")]).await;

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("loads.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = serve(&broker, port, &db);
    until_terminated(&[&orphan, &expired, &untagged]).await;
    assert_eq!(state(&foreign).await, "running", "another broker's instance is not touched");

    let fresh = launch(&[("loads:broker", &broker), ("loads:run", "later"), ("Name", "loads-test")]).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = awc::Client::new();
    let mut r = http.get(format!("{base}/api/v1/instances")).send().await.unwrap();
    let listed: Value = r.json().await.unwrap();
    let ids: Vec<&str> = listed["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [fresh.as_str()], "only this broker's live instances: {listed}");
    let one = &listed["instances"][0];
    assert_eq!((one["region"].as_str(), one["instance_type"].as_str()), (Some(REGION), Some("t3.micro")));
    assert_eq!(one["tags"]["Name"], "loads-test");

    let mut r = http.get(format!("{base}/api/instances")).send().await.unwrap();
    let compat: Value = r.json().await.unwrap();
    assert_eq!(compat["success"], true);
    assert_eq!(compat["instances"][fresh.as_str()]["state"], "running");

    let r = http.delete(format!("{base}/api/v1/instances/{foreign}")).send().await.unwrap();
    assert_eq!(r.status(), awc::http::StatusCode::NOT_FOUND, "not this broker's");
    let r = http.delete(format!("{base}/api/v1/instances/{fresh}")).send().await.unwrap();
    assert_eq!(r.status(), awc::http::StatusCode::NO_CONTENT);
    until_terminated(&[&fresh]).await;

    server.kill().unwrap();
    server.wait().unwrap();
    client().terminate_instances().instance_ids(&foreign).send().await.unwrap();
}
