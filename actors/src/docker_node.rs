//! `DockerNodeActor`: one per node. Owns that node's containers on its engine:
//! the relay (the "heka" role: statsd in, aggregated metrics out) and the
//! step's containers. Reports each container's exit to its step.
//!
//! Every container is tracked by id and labels; at tear-down the node keeps
//! each container's exit code and last lines of output in the database, then
//! removes it.

use std::collections::HashMap;

use actix::{Actor, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Message, Recipient, ResponseActFuture, WrapFuture};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::domain::launch::Launch;
use crate::domain::views::ContainerView;
use crate::infra::docker::{labels, ContainerSpec, DockerError, Engine};
use crate::infra::volumes;
use crate::settings::RunSettings;
use crate::store::runs::{self, ContainerRecord};

/// Who a node belongs to.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: Uuid,
    /// The node's name within the run.
    pub node: String,
    /// The run's network on this node's engine (the relay's; the step's too unless `host_network`).
    pub network: String,
    /// The step's containers use the node's network (cloud nodes, one per machine), reaching
    /// other steps by `extra_hosts` rather than network aliases.
    pub host_network: bool,
    /// Where the node's relay delivers its windows, and the run's token.
    pub ingest: Option<(String, String)>,
}

#[derive(Clone, Debug)]
struct Tracked {
    docker_id: String,
    image: String,
    role: &'static str,
    started_at: DateTime<Utc>,
    exit_code: Option<i64>,
}

/// Drives one node's containers.
pub struct DockerNodeActor {
    engine: Engine,
    db: DatabaseConnection,
    settings: RunSettings,
    who: NodeIdentity,
    containers: Vec<Tracked>,
    /// The step image's default command, looked up while preparing so starts need no lookup.
    image_cmd: Vec<String>,
    step: Recipient<ContainerExited>,
}

impl DockerNodeActor {
    /// A node actor reporting container exits to `step`.
    pub fn new(engine: Engine, db: DatabaseConnection, settings: RunSettings, who: NodeIdentity, step: Recipient<ContainerExited>) -> Self {
        Self { engine, db, settings, who, containers: Vec::new(), image_cmd: Vec::new(), step }
    }

    fn labels(&self, role: &str) -> HashMap<String, String> {
        HashMap::from([
            (labels::BROKER.to_string(), self.settings.broker_id.clone()),
            (labels::RUN.to_string(), self.who.run_id.to_string()),
            (labels::STEP.to_string(), self.who.step_id.to_string()),
            (labels::NODE.to_string(), self.who.node.clone()),
            (labels::ROLE.to_string(), role.to_string()),
        ])
    }

    fn container_name(&self, suffix: &str) -> String {
        format!("loads-{}-{}-{suffix}", self.who.run_id.simple(), self.who.node)
    }
}

impl Actor for DockerNodeActor {
    type Context = Context<Self>;
}

/// A container of a node exited.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct ContainerExited {
    /// The node.
    pub node: String,
    /// The engine's container id.
    pub docker_id: String,
    /// Its exit code (-1 when lost).
    pub exit_code: i64,
    /// Set when the node stopped answering, so the exit is unknown: why.
    pub lost: Option<String>,
}

/// A started (or adopted) relay: its id, its address (or why it is unknown), and the
/// step containers adopted with it.
struct Relay {
    id: String,
    ip: Result<RelayAddress, DockerError>,
    adopted: Vec<(String, String)>,
}

/// A node's relay, taking metrics.
#[derive(Debug)]
pub struct RelayReady {
    /// Where the step's containers send statsd: the relay's address on the run network, or
    /// the node's loopback when the relay shares the node's own network (cloud nodes).
    pub relay_ip: String,
    /// The relay's statsd port.
    pub relay_port: u16,
    /// The relay's OTLP/HTTP port.
    pub otlp_port: u16,
    /// The step containers found on the node (when adopting), now watched.
    pub adopted: Vec<String>,
}

/// Starts the node's relay (with `adopt`, takes over a running one and the node's step
/// containers instead); answers where it takes metrics.
#[derive(Debug, Message)]
#[rtype(result = "Result<RelayReady, DockerError>")]
pub struct StartRelay {
    /// Adopt this node's relay and step containers when they exist (a restarted broker carrying a run on).
    pub adopt: bool,
    /// Secret values the step's containers hold: the relay masks them in what it reports.
    pub mask: Vec<String>,
}

impl DockerNodeActor {
    fn relay_spec(&self, mask: &[String]) -> ContainerSpec {
        let mut env = vec![
            format!("LOADS_RUN={}", self.who.run_id),
            format!("LOADS_STEP={}", self.who.step_id),
            format!("LOADS_NODE={}", self.who.node),
            "LOADS_PROC=/host/proc".to_string(),
            format!("LOADS_FLUSH_MS={}", self.settings.flush_ms),
            format!("LOADS_MAX_SERIES={}", self.settings.relay_max_series),
        ];
        if self.who.host_network {
            // On the node's own network: every intake on its loopback, on ports free there.
            env.push("LOADS_RELAY_BIND=127.0.0.1".to_string());
            env.push("LOADS_RELAY_FREE_PORTS=true".to_string());
        }
        if let Some((url, token)) = &self.who.ingest {
            env.push(format!("LOADS_INGEST_URL={url}"));
            env.push(format!("LOADS_INGEST_TOKEN={token}"));
            if let Some(pem) = self.settings.relay_ca.as_ref().filter(|_| url.starts_with("https://")) {
                env.extend(ca_env(pem));
            }
        }
        if !mask.is_empty() {
            env.push(format!("LOADS_MASK={}", serde_json::Value::from(mask.to_vec())));
        }
        ContainerSpec {
            name: self.container_name("relay"),
            image: self.settings.relay_image.clone(),
            env,
            labels: self.labels("relay"),
            // Cloud nodes' relays deliver to a forward on the node's loopback (sshd's stock
            // `GatewayPorts no` binds nothing else), so they share the node's network.
            network: if self.who.host_network { "host".to_string() } else { self.who.network.clone() },
            // The host's /proc, read-only, for the node's CPU, memory, network and load.
            binds: vec!["/proc:/host/proc:ro".to_string()],
            memory_bytes: Some(self.settings.relay_memory_bytes),
            ..Default::default()
        }
    }
}

impl Handler<StartRelay> for DockerNodeActor {
    type Result = ResponseActFuture<Self, Result<RelayReady, DockerError>>;

    fn handle(&mut self, msg: StartRelay, _: &mut Context<Self>) -> Self::Result {
        let relay = self.relay_spec(&msg.mask);
        let filter = [
            (labels::BROKER, self.settings.broker_id.clone()),
            (labels::RUN, self.who.run_id.to_string()),
            (labels::STEP, self.who.step_id.to_string()),
            (labels::NODE, self.who.node.clone()),
        ];
        let engine = self.engine.clone();
        let image = relay.image.clone();
        Box::pin(
            async move {
                let network = relay.network.clone();
                let mut adopted = Vec::new();
                if msg.adopt {
                    let filter = filter.each_ref().map(|(label, value)| (*label, value.as_str()));
                    let found = engine.containers_labelled(&filter, labels::ROLE).await?;
                    adopted = found.iter().filter(|c| c.role == "step").map(|c| (c.id.clone(), c.image.clone())).collect();
                    if let Some(relay) = found.iter().find(|c| c.role == "relay" && c.running) {
                        let ip = relay_address(&engine, &relay.id, &network).await;
                        return Ok(Relay { id: relay.id.clone(), ip, adopted });
                    }
                    // A relay that died while the broker was away is replaced.
                    for dead in found.iter().filter(|c| c.role == "relay") {
                        engine.remove_container(&dead.id).await?;
                    }
                }
                let id = engine.start_container(&relay).await?;
                let ip = relay_address(&engine, &id, &network).await;
                Ok(Relay { id, ip, adopted })
            }
            .into_actor(self)
            .map(move |res: Result<Relay, DockerError>, act, ctx| {
                let relay = res?;
                // Tracked before its address is checked, so a failed lookup still removes it.
                act.containers.push(Tracked { docker_id: relay.id, image, role: "relay", started_at: Utc::now(), exit_code: None });
                let ids: Vec<String> = relay.adopted.iter().map(|(id, _)| id.clone()).collect();
                for (id, image) in relay.adopted {
                    act.containers.push(Tracked { docker_id: id.clone(), image, role: "step", started_at: Utc::now(), exit_code: None });
                    act.watch(id, ctx);
                }
                let address = relay.ip?;
                Ok(RelayReady { relay_ip: address.ip, relay_port: address.statsd, otlp_port: address.otlp_http, adopted: ids })
            }),
        )
    }
}

/// Makes the step's image present on the node within `docker.prepare_timeout_seconds`
/// and looks up its command, so starting a container needs no lookup.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), DockerError>")]
pub struct ReadyImage {
    /// The step's image.
    pub image: String,
    /// A tarball on the broker's disk to load it from, if not present (its step fetched it once for all its nodes).
    pub tarball: Option<std::path::PathBuf>,
    /// An engine holding the image to copy from, if it is neither present nor given a source (the broker's, for cloud nodes).
    pub images_from: Option<Engine>,
}

impl Handler<ReadyImage> for DockerNodeActor {
    type Result = ResponseActFuture<Self, Result<(), DockerError>>;

    fn handle(&mut self, msg: ReadyImage, _: &mut Context<Self>) -> Self::Result {
        let engine = self.engine.clone();
        let limit = std::time::Duration::from_secs(self.settings.prepare_timeout_secs);
        let node = self.who.node.clone();
        let (registries, secrets, copy_stall) = (self.settings.registries.clone(), self.settings.secrets.clone(), self.settings.copy_stall);
        Box::pin(
            async move {
                let get = async {
                    match &msg.images_from {
                        Some(from)
                            if msg.tarball.is_none() && !engine.has_image(&msg.image).await? && from.has_image(&msg.image).await? =>
                        {
                            engine.copy_image_from(from, &msg.image, copy_stall).await
                        }
                        _ => {
                            let pull = msg.tarball.is_none() && !engine.has_image(&msg.image).await?;
                            let credentials = match pull {
                                true => registries
                                    .credentials_for(&msg.image, &secrets)
                                    .await
                                    .map_err(|e| DockerError::Pull { image: msg.image.clone(), message: e.to_string() })?,
                                false => None,
                            };
                            engine.ensure_image(&msg.image, msg.tarball.as_deref(), credentials).await
                        }
                    }
                };
                let ensured = tokio::time::timeout(limit, get).await;
                ensured.map_err(|_| DockerError::Timeout {
                    operation: format!("getting image {} ready on node {node}", msg.image),
                    seconds: limit.as_secs(),
                })??;
                let (_, cmd) = engine.image_command(&msg.image).await?;
                Ok(cmd)
            }
            .into_actor(self)
            .map(|cmd: Result<Vec<String>, DockerError>, act, _| {
                act.image_cmd = cmd?;
                Ok(())
            }),
        )
    }
}

/// Where a relay takes metrics.
struct RelayAddress {
    ip: String,
    statsd: u16,
    otlp_http: u16,
}

/// Where a relay takes metrics: its address on the run network and the standard ports, or,
/// on the node's own network, the node's loopback and the ports it printed when it chose them.
async fn relay_address(engine: &Engine, id: &str, network: &str) -> Result<RelayAddress, DockerError> {
    if network != "host" {
        return Ok(RelayAddress { ip: engine.container_ip(id, network).await?, statsd: STATSD_PORT, otlp_http: OTLP_HTTP_PORT });
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let otlp_http = format!("{OTLP_LISTENING}http ");
    loop {
        let logs = engine.logs(id, None).await?;
        let port = |prefix: &str| logs.lines().find_map(|l| l.trim().strip_prefix(prefix)).and_then(|p| p.trim().parse().ok());
        if let (Some(statsd), Some(otlp_http)) = (port(RELAY_LISTENING), port(&otlp_http)) {
            return Ok(RelayAddress { ip: "127.0.0.1".to_string(), statsd, otlp_http });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DockerError::Timeout { operation: format!("the relay {id} reporting its ports"), seconds: 30 });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// PEM certificates as `LOADS_INGEST_CA`, `LOADS_INGEST_CA_1`, …: whole certificates,
/// each variable under the kernel's limit on one (128 KiB), as a system bundle is larger.
fn ca_env(pem: &str) -> Vec<String> {
    const MAX_VALUE: usize = 96 * 1024;
    let mut chunks = vec![String::new()];
    for cert in pem.split_inclusive("-----END CERTIFICATE-----") {
        let last = chunks.last_mut().expect("one chunk at least");
        if !last.is_empty() && last.len() + cert.len() > MAX_VALUE {
            chunks.push(String::new());
        }
        chunks.last_mut().expect("one chunk at least").push_str(cert);
    }
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| if i == 0 { format!("LOADS_INGEST_CA={c}") } else { format!("LOADS_INGEST_CA_{i}={c}") })
        .collect()
}

/// The statsd port of relays on a run network.
pub const STATSD_PORT: u16 = 8125;

/// The OTLP/HTTP port of relays on a run network.
pub const OTLP_HTTP_PORT: u16 = 4318;

/// What a relay prints first, before its statsd port (`loads relay`).
pub use loads_relay::LISTENING as RELAY_LISTENING;
pub use loads_relay::OTLP_LISTENING;

impl DockerNodeActor {
    /// Waits for a step container to exit and reports it to the step (lost, if the node stops answering).
    fn watch(&mut self, id: String, ctx: &mut Context<Self>) {
        let engine = self.engine.clone();
        let waited = id.clone();
        ctx.spawn(async move { engine.wait(&waited).await }.into_actor(self).map(move |exit, act, _| {
            let (exit_code, lost) = match exit {
                Ok(code) => (code, None),
                Err(e) => {
                    tracing::warn!(error = %e, container = %id, node = %act.who.node, "lost track of a container: the node stopped answering");
                    (-1, Some(e.to_string()))
                }
            };
            if let Some(t) = act.containers.iter_mut().find(|t| t.docker_id == id) {
                t.exit_code = Some(exit_code);
            }
            act.step.do_send(ContainerExited { node: act.who.node.clone(), docker_id: id, exit_code, lost });
        }));
    }
}

/// Starts the step's container on this node; answers its id.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, DockerError>")]
pub struct StartContainer {
    /// What to run.
    pub launch: Launch,
    /// DNS names on the run network (the step's `dns_name`).
    pub aliases: Vec<String>,
    /// `name:address` entries for the container's /etc/hosts (other steps' `dns_name` on host-network nodes).
    pub extra_hosts: Vec<String>,
}

impl Handler<StartContainer> for DockerNodeActor {
    // Atomic: a stop or a tear-down that arrives while the container is being made waits
    // for it, so it stops and records that container too rather than leaving it behind.
    type Result = AtomicResponse<Self, Result<String, DockerError>>;

    fn handle(&mut self, msg: StartContainer, _: &mut Context<Self>) -> Self::Result {
        let engine = self.engine.clone();
        let launch = msg.launch;
        let cmd = (!launch.args.is_empty()).then(|| self.image_cmd.iter().chain(&launch.args).cloned().collect());
        let mut spec = ContainerSpec {
            name: self.container_name("step"),
            image: launch.image.clone(),
            env: launch.env.clone(),
            cmd,
            labels: self.labels("step"),
            network: if self.who.host_network { "host".to_string() } else { self.who.network.clone() },
            aliases: if self.who.host_network { Vec::new() } else { msg.aliases },
            extra_hosts: if self.who.host_network { msg.extra_hosts } else { Vec::new() },
            ports: if self.who.host_network { Vec::new() } else { launch.ports.clone() },
            binds: launch.binds.clone(),
            memory_bytes: None,
        };
        // On this machine's disk, host paths are resolved right before the container is made.
        let volume_root = self.settings.limits.volume_root.clone().filter(|_| !spec.binds.is_empty());
        AtomicResponse::new(Box::pin(
            async move {
                if let Some(root) = volume_root {
                    let (binds, name) = (spec.binds.clone(), spec.name.clone());
                    let confined = tokio::task::spawn_blocking(move || volumes::confine(&binds, &root))
                        .await
                        .unwrap_or_else(|stopped| Err(format!("the check of the host paths stopped: {stopped}")));
                    spec.binds = confined.map_err(|message| DockerError::Volume { name, message })?;
                }
                engine.start_container(&spec).await
            }
            .into_actor(self)
            .map(move |res: Result<String, DockerError>, act, ctx| {
                let id = res?;
                act.containers.push(Tracked {
                    docker_id: id.clone(),
                    image: launch.image,
                    role: "step",
                    started_at: Utc::now(),
                    exit_code: None,
                });
                let answer = id.clone();
                act.watch(id, ctx);
                Ok(answer)
            }),
        ))
    }
}

/// Stops the step's containers (SIGTERM, then SIGKILL after the grace period).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopContainers;

impl Handler<StopContainers> for DockerNodeActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopContainers, _: &mut Context<Self>) -> Self::Result {
        let engine = self.engine.clone();
        let grace = self.settings.stop_grace_secs;
        let ids: Vec<String> =
            self.containers.iter().filter(|t| t.role == "step" && t.exit_code.is_none()).map(|t| t.docker_id.clone()).collect();
        Box::pin(
            async move {
                for result in join_all(ids.iter().map(|id| engine.stop(id, grace))).await {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "stopping a container failed; it is removed at tear-down");
                    }
                }
            }
            .into_actor(self),
        )
    }
}

/// What became of one container.
#[derive(Clone, Debug)]
pub struct ContainerOutcome {
    /// The engine's id.
    pub docker_id: String,
    /// `relay` or `step`.
    pub role: &'static str,
    /// How it exited, if it did before removal.
    pub exit_code: Option<i64>,
}

/// Keeps every container's output and exit code, then removes them all. A node
/// that stopped answering is not asked: its containers are recorded as they were
/// last seen (its instance goes with them).
#[derive(Debug, Message)]
#[rtype(result = "Vec<ContainerOutcome>")]
pub struct TearDown {
    /// The node stopped answering.
    pub silent: bool,
}

impl Handler<TearDown> for DockerNodeActor {
    type Result = ResponseActFuture<Self, Vec<ContainerOutcome>>;

    fn handle(&mut self, msg: TearDown, _: &mut Context<Self>) -> Self::Result {
        let silent = msg.silent;
        let engine = self.engine.clone();
        let db = self.db.clone();
        let who = self.who.clone();
        let tail = self.settings.log_tail;
        let grace = self.settings.stop_grace_secs;
        let containers = std::mem::take(&mut self.containers);
        let secrets = self.settings.secrets.clone();
        Box::pin(
            async move {
                let mut outcomes = Vec::with_capacity(containers.len());
                for c in containers {
                    let (logs, exited_at) = if silent {
                        ("(logs unavailable: the node stopped answering)".to_string(), None)
                    } else {
                        if c.role == "relay" {
                            // Stopped, not killed, so it can report its final counts.
                            if let Err(e) = engine.stop(&c.docker_id, grace).await {
                                tracing::warn!(error = %e, "stopping a relay failed");
                            }
                        }
                        let logs = engine.logs(&c.docker_id, Some(tail)).await.unwrap_or_else(|e| format!("(logs unavailable: {e})"));
                        let exited_at = engine.exited_at(&c.docker_id).await.ok().flatten();
                        if let Err(e) = engine.remove_container(&c.docker_id).await {
                            tracing::warn!(error = %e, "removing a container failed; the run's sweep removes it");
                        }
                        (secrets.mask(&logs), exited_at)
                    };
                    let record = ContainerRecord {
                        run_id: who.run_id,
                        step_id: who.step_id,
                        node: who.node.clone(),
                        role: c.role.to_string(),
                        docker_id: c.docker_id.clone(),
                        image: c.image.clone(),
                        exit_code: c.exit_code,
                        logs,
                        started_at: c.started_at,
                        exited_at,
                    };
                    if let Err(e) = runs::record_container(&db, record).await {
                        tracing::warn!(error = %e, "could not record a container");
                    }
                    outcomes.push(ContainerOutcome { docker_id: c.docker_id, role: c.role, exit_code: c.exit_code });
                }
                outcomes
            }
            .into_actor(self),
        )
    }
}

/// The output of the node's containers as they are now (running or not yet removed).
#[derive(Debug, Message)]
#[rtype(result = "Vec<ContainerView>")]
pub struct LiveLogs {
    /// The step's name, for the answer.
    pub step_name: String,
    /// Keep only the last lines of each.
    pub tail: Option<usize>,
}

impl Handler<LiveLogs> for DockerNodeActor {
    type Result = ResponseActFuture<Self, Vec<ContainerView>>;

    fn handle(&mut self, msg: LiveLogs, _: &mut Context<Self>) -> Self::Result {
        let engine = self.engine.clone();
        let who = self.who.clone();
        let tail = msg.tail.unwrap_or(self.settings.log_tail);
        let containers = self.containers.clone();
        let secrets = self.settings.secrets.clone();
        Box::pin(
            async move {
                let mut out = Vec::with_capacity(containers.len());
                for c in containers {
                    let logs = engine.logs(&c.docker_id, Some(tail)).await.unwrap_or_else(|e| format!("(logs unavailable: {e})"));
                    let logs = secrets.mask(&logs);
                    out.push(ContainerView {
                        step_id: who.step_id,
                        step_name: msg.step_name.clone(),
                        node: who.node.clone(),
                        role: c.role.to_string(),
                        docker_id: c.docker_id,
                        image: c.image,
                        exit_code: c.exit_code,
                        logs,
                        created_at: c.started_at,
                        exited_at: None,
                        finished_at: None,
                    });
                }
                out
            }
            .into_actor(self),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_system_sized_bundle_is_split_into_variables_of_whole_certificates() {
        let cert = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", "A".repeat(1900));
        let bundle = cert.repeat(115);
        let vars = super::ca_env(&bundle);
        assert_eq!(vars.len(), 3, "220 KB in three variables");
        let mut joined = String::new();
        for (i, var) in vars.iter().enumerate() {
            assert!(var.len() < 128 * 1024, "variable {i} is {} bytes", var.len());
            let (name, value) = var.split_once('=').unwrap();
            assert_eq!(name, if i == 0 { "LOADS_INGEST_CA".to_string() } else { format!("LOADS_INGEST_CA_{i}") });
            assert!(i + 1 == vars.len() || value.trim_end().ends_with("-----END CERTIFICATE-----"), "whole certificates only");
            joined.push_str(value);
        }
        assert_eq!(joined, bundle);
    }
}
