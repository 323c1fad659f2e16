//! A step's preparation, in named stages: nodes from the pool, one `DockerNodeActor`
//! each, each node's relay started, each node's launch resolved (once, with the relay's
//! address among its variables), every http(s) image source fetched once for all the
//! nodes that lack the image, and each node's image made ready.
//!
//! The stages are plain async functions over the step's context, so a node that joins
//! later (a replacement) goes through the same ones. What a node could not do is kept
//! as its failure; the nodes are handed back either way, so each one is torn down.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix::{Actor, Addr, Recipient};
use futures_util::future::join_all;

use super::{DownloadProgress, ReportKind, StepActor, StepContext, StepReport};
use crate::docker_node::{ContainerExited, DockerNodeActor, NodeIdentity, ReadyImage, RelayReady, StartRelay};
use crate::domain::launch::{self, Launch};
use crate::domain::Env;
use crate::feed::EventKind;
use crate::infra::docker::{DockerError, Engine};
use crate::infra::download::{self, DownloadError};
use crate::metrics::PlaceNodes;
use crate::pool::{AcquireNodes, Ec2PoolActor, NodeGrant, NodeInterrupted};

/// Why a step could not get its nodes or ready one of them.
#[derive(Debug, thiserror::Error)]
pub(super) enum PrepareError {
    /// The pool could not give the nodes.
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    /// A node's engine could not be readied (images, the relay).
    #[error(transparent)]
    Node(#[from] DockerError),
    /// The step's launch does not resolve on this node (a variable, a secret, a limit).
    #[error("{0}")]
    Launch(String),
    /// The step's image could not be downloaded (the same error for every node that needed it).
    #[error("cannot load image {image} from {shown}: {source}")]
    Image {
        /// The image.
        image: String,
        /// Its source, as it may be shown.
        shown: String,
        /// Why.
        #[source]
        source: std::sync::Arc<DownloadError>,
    },
    /// An actor stopped before it answered.
    #[error("{what} did not answer: {source}")]
    Gone {
        /// Which actor.
        what: &'static str,
        /// How the message was lost.
        #[source]
        source: actix::MailboxError,
    },
}

/// A node of the step, as preparation left it.
pub(super) struct Node {
    pub(super) id: String,
    pub(super) addr: Addr<DockerNodeActor>,
    pub(super) address: String,
    /// What its container runs; `None` when preparation failed before it was resolved.
    pub(super) launch: Option<Launch>,
    /// The step containers found on the node when carried on.
    pub(super) adopted: Vec<String>,
}

/// What preparation made: every node it got (each to be torn down) and the first failure.
pub(super) struct Prepared {
    pub(super) nodes: Vec<Node>,
    pub(super) failure: Option<String>,
}

/// Where preparation's news and each node's container exits go.
pub(super) struct Wiring {
    pub(super) pool: Addr<Ec2PoolActor>,
    pub(super) step: Addr<StepActor>,
    pub(super) supervisor: Recipient<StepReport>,
}

impl Wiring {
    fn node_event(&self, c: &StepContext, node: &str, state: &str) {
        let kind = EventKind::Node { step: c.step.spec.name.clone(), node: node.to_string(), state: state.to_string() };
        self.supervisor.do_send(StepReport { step_id: c.step.id, kind: ReportKind::Event(kind) });
    }
}

/// Prepares the whole step: its nodes from the pool, then every node through the stages.
pub(super) async fn prepare(c: StepContext, wiring: Wiring) -> Prepared {
    let grants = match acquire(&c, &wiring).await {
        Ok(grants) => grants,
        Err(e) => return Prepared { nodes: Vec::new(), failure: Some(e.to_string()) },
    };
    let nodes = spawn_nodes(&c, &wiring, grants);
    let adopt = c.resume.is_some();
    let mask = launch::secret_values(&c.step.spec, &c.plan_env, &c.run_env, &c.settings.secrets);
    let relays = join_all(nodes.iter().map(|(_, addr)| start_relay(addr, adopt, mask.clone()))).await;
    let mut failures: Vec<Option<String>> = vec![None; nodes.len()];
    let mut launches: Vec<Option<Launch>> = vec![None; nodes.len()];
    let mut adopted: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    for (i, ((grant, _), relay)) in nodes.iter().zip(relays).enumerate() {
        match relay.and_then(|relay| Ok((resolve(&c, grant, &relay)?, relay.adopted))) {
            Ok((launch, found)) => (launches[i], adopted[i]) = (Some(launch), found),
            Err(e) => failures[i] = Some(e.to_string()),
        }
    }
    let engines: Vec<&Engine> = nodes.iter().map(|(g, _)| &g.engine).collect();
    let tarballs = fetch_sources(&c, &wiring, &launches, &engines).await;
    let readies = nodes.iter().zip(&launches).zip(&failures).map(|(((grant, addr), launch), failure)| {
        let tarballs = &tarballs;
        async move {
            match (launch, failure) {
                (Some(launch), None) => ready_image(addr, grant, launch, tarballs).await,
                _ => Ok(()),
            }
        }
    });
    for (i, ready) in join_all(readies).await.into_iter().enumerate() {
        if let Err(e) = ready {
            failures[i].get_or_insert(e.to_string());
        }
    }
    for path in tarballs.into_values().flatten() {
        let _ = tokio::fs::remove_file(path).await;
    }
    let _ = tokio::fs::remove_dir(fetch_dir(&c)).await;
    let mut first = None;
    let mut prepared = Vec::new();
    for ((((grant, addr), launch), found), failure) in nodes.into_iter().zip(launches).zip(adopted).zip(failures) {
        match failure {
            Some(e) => {
                first.get_or_insert(format!("node {}: {e}", grant.id));
            }
            None => wiring.node_event(&c, &grant.id, "ready"),
        }
        prepared.push(Node { id: grant.id, addr, address: grant.address, launch, adopted: found });
    }
    Prepared { nodes: prepared, failure: first }
}

/// Stage 1: the step's nodes from the pool (adopted ones when carried on).
async fn acquire(c: &StepContext, wiring: &Wiring) -> Result<Vec<NodeGrant>, PrepareError> {
    let spec = &c.step.spec;
    let interruptions: Recipient<NodeInterrupted> = wiring.step.clone().recipient();
    let acquire = AcquireNodes {
        run_id: c.run_id,
        step_id: c.step.id,
        plan: c.plan_name.clone(),
        step_position: c.step.position,
        count: spec.instance_count,
        min_nodes: spec.min_nodes.unwrap_or(spec.instance_count),
        instance_type: spec.instance_type.clone(),
        regions: spec.instance_region.split(spec.instance_count),
        market: spec.market,
        needed_for: c.run_span + Duration::from_secs(c.settings.prepare_timeout_secs),
        adopt: c.resume.is_some(),
        interruptions: Some(interruptions),
    };
    let answer = wiring.pool.send(acquire).await.map_err(|source| PrepareError::Gone { what: "the node pool", source })?;
    Ok(answer?)
}

/// Stage 2: one `DockerNodeActor` per node, each node announced, and the nodes' regions
/// handed to the metrics collector before any relay can deliver.
fn spawn_nodes(c: &StepContext, wiring: &Wiring, grants: Vec<NodeGrant>) -> Vec<(NodeGrant, Addr<DockerNodeActor>)> {
    let exits: Recipient<ContainerExited> = wiring.step.clone().recipient();
    let nodes: Vec<_> = grants
        .into_iter()
        .map(|g| {
            let base = c.settings.relay_url.as_deref().unwrap_or(&g.ingest_base);
            let ingest = Some((format!("{base}/ingest/{}", c.run_id), c.ingest_token.clone()));
            let who = NodeIdentity {
                run_id: c.run_id,
                step_id: c.step.id,
                node: g.id.clone(),
                network: g.network.clone(),
                host_network: g.host_network,
                ingest,
            };
            let addr = DockerNodeActor::new(g.engine.clone(), c.db.clone(), c.settings.clone(), who, exits.clone()).start();
            (g, addr)
        })
        .collect();
    for (g, _) in &nodes {
        wiring.node_event(c, &g.id, "acquired");
    }
    let regions = nodes.iter().map(|(g, _)| (g.id.clone(), g.region.clone())).collect();
    c.metrics.do_send(PlaceNodes { run_id: c.run_id, step_id: c.step.id, regions });
    nodes
}

/// Stage 3: the node's relay, masking `mask`, the secret values the step's containers hold.
async fn start_relay(addr: &Addr<DockerNodeActor>, adopt: bool, mask: Vec<String>) -> Result<RelayReady, PrepareError> {
    let answer = addr.send(StartRelay { adopt, mask }).await.map_err(|source| PrepareError::Gone { what: "the node's actor", source })?;
    Ok(answer?)
}

/// Stage 4: what the node's container runs, its variables resolved with the node's own.
fn resolve(c: &StepContext, grant: &NodeGrant, relay: &RelayReady) -> Result<Launch, PrepareError> {
    let injected = injected(c, grant, relay);
    launch::resolve(&c.step.spec, &c.plan_env, &c.run_env, &injected, &c.settings.limits, &c.settings.secrets).map_err(PrepareError::Launch)
}

/// The broker's variables for a container on `grant`'s node whose relay is `relay`: the
/// relay's address both as statsd's `STATSD_HOST` and as OpenTelemetry's standard exporter
/// settings, so an unmodified OpenTelemetry generator reports to it; one export a second
/// (the relay's window) unless the plan says otherwise.
pub(super) fn injected(c: &StepContext, grant: &NodeGrant, relay: &RelayReady) -> Env {
    let s = &c.settings;
    let mut env = BTreeMap::from([
        ("RUN_ID".into(), c.run_id.to_string()),
        ("BROKER_ID".into(), s.broker_id.clone()),
        ("BROKER_VERSION".into(), s.broker_version.clone()),
        ("CONTAINER_ID".into(), c.step.id.to_string()),
        ("HOST_IP".into(), grant.public_address.clone()),
        ("PRIVATE_IP".into(), grant.address.clone()),
        ("STATSD_HOST".into(), relay.relay_ip.clone()),
        ("STATSD_PORT".into(), relay.relay_port.to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://{}:{}", relay.relay_ip, relay.otlp_port)),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
    ]);
    let interval = "OTEL_METRIC_EXPORT_INTERVAL";
    if ![&c.plan_env, &c.run_env, &c.step.spec.environment_data].iter().any(|e| e.contains_key(interval)) {
        env.insert(interval.into(), "1000".into());
    }
    env
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn fetch_dir(c: &StepContext) -> std::path::PathBuf {
    c.settings.download_dir.join(c.run_id.simple().to_string())
}

/// Downloaded image tarballs by source URL.
type Tarballs = HashMap<String, Result<std::path::PathBuf, std::sync::Arc<DownloadError>>>;

/// Stage 5: each distinct http(s) image source, fetched once onto the broker's disk when
/// some node lacks the image (loopback refused unless allowed, the digest checked,
/// progress as `download` events). Only resolved launches are looked at.
async fn fetch_sources(c: &StepContext, wiring: &Wiring, launches: &[Option<Launch>], engines: &[&Engine]) -> Tarballs {
    let (dir, limit) = (fetch_dir(c), Duration::from_secs(c.settings.prepare_timeout_secs));
    let mut fetched = Tarballs::new();
    for (launch, engine) in launches.iter().zip(engines) {
        let Some(launch) = launch else { continue };
        let Some(url) = launch.image_source.as_deref().filter(|u| is_http(u)) else { continue };
        if fetched.contains_key(url) || engine.has_image(&launch.image).await.unwrap_or(false) {
            continue;
        }
        let shown = download::shown(url).to_string();
        let got = async {
            if !c.settings.limits.allow_loopback_image_urls {
                download::refuse_loopback_url(url).await?;
            }
            let me = wiring.step.clone();
            let report = |bytes, total| me.do_send(DownloadProgress { url: shown.clone(), bytes, total });
            let downloading = download::to_file(url, &dir, &c.settings.tls, c.step.spec.container_sha256.as_deref(), report);
            match tokio::time::timeout(limit, downloading).await {
                Ok(done) => done,
                Err(_) => Err(DownloadError::TooSlow(limit.as_secs())),
            }
        };
        fetched.insert(url.to_string(), got.await.map_err(std::sync::Arc::new));
    }
    fetched
}

/// Stage 6: the node's image, from the fetched tarball, a local file, the broker's engine
/// or its registry.
async fn ready_image(addr: &Addr<DockerNodeActor>, grant: &NodeGrant, launch: &Launch, tarballs: &Tarballs) -> Result<(), PrepareError> {
    let tarball = match launch.image_source.as_deref() {
        None => None,
        Some(url) if is_http(url) => match tarballs.get(url) {
            Some(Ok(path)) => Some(path.clone()),
            Some(Err(e)) => {
                let shown = download::shown(url).to_string();
                return Err(PrepareError::Image { image: launch.image.clone(), shown, source: e.clone() });
            }
            None => None,
        },
        Some(local) => Some(std::path::PathBuf::from(local.strip_prefix("file://").unwrap_or(local))),
    };
    let msg = ReadyImage { image: launch.image.clone(), tarball, images_from: grant.images_from.clone() };
    let answer = addr.send(msg).await.map_err(|source| PrepareError::Gone { what: "the node's actor", source })?;
    Ok(answer?)
}
