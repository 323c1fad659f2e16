//! The Docker engine, through bollard: images, networks, containers, logs,
//! and the label sweep that guarantees nothing of a run is left behind.
//!
//! Every resource loads creates carries labels (`loads.broker`, `loads.run`,
//! `loads.step`, `loads.node`, `loads.role`) and is found by id or by those
//! labels, never by image name.

mod images;

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

/// Label keys put on every resource.
pub mod labels {
    /// The broker that created the resource.
    pub const BROKER: &str = "loads.broker";
    /// The run it belongs to.
    pub const RUN: &str = "loads.run";
    /// The step it belongs to.
    pub const STEP: &str = "loads.step";
    /// The node it belongs to.
    pub const NODE: &str = "loads.node";
    /// `relay` or `step`.
    pub const ROLE: &str = "loads.role";
}

/// What went wrong talking to a Docker engine; every variant names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine could not be reached.
    #[error("cannot reach the Docker engine: {0}")]
    Connect(#[source] bollard::errors::Error),
    /// An image is missing and could not be pulled.
    #[error("image {image} is not on the engine and could not be pulled: {message}")]
    Pull {
        /// The image.
        image: String,
        /// The engine's message.
        message: String,
    },
    /// An image could not be streamed from the broker's engine to a node's.
    #[error("cannot copy image {image} to the node: {message}")]
    Copy {
        /// The image.
        image: String,
        /// Why it failed.
        message: String,
    },
    /// A `container_url` tarball could not be fetched or loaded.
    #[error("cannot load image {image} from {source_url}: {message}")]
    Load {
        /// The image.
        image: String,
        /// Where it was to come from.
        source_url: String,
        /// Why it failed.
        message: String,
    },
    /// An image build failed.
    #[error("cannot build image {image}: {message}")]
    Build {
        /// The image.
        image: String,
        /// The engine's message.
        message: String,
    },
    /// A network could not be created.
    #[error("cannot create network {name}: {source}")]
    CreateNetwork {
        /// The network.
        name: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A bind mount's host path was refused.
    #[error("cannot mount a volume into container {name}: {message}")]
    Volume {
        /// The container's name.
        name: String,
        /// Why.
        message: String,
    },
    /// A container could not be created or started.
    #[error("cannot start container {name} ({image}): {message}")]
    StartContainer {
        /// The container's name.
        name: String,
        /// Its image.
        image: String,
        /// The engine's message.
        message: String,
    },
    /// Another operation on a container failed.
    #[error("{operation} container {id}: {source}")]
    Container {
        /// What was being done.
        operation: &'static str,
        /// The container.
        id: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// An operation took longer than allowed.
    #[error("{operation} took longer than {seconds} s (docker.prepare_timeout_seconds)")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The limit.
        seconds: u64,
    },
    /// Listing or removing labelled resources failed.
    #[error("cannot {operation}: {source}")]
    Sweep {
        /// What was being done.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
}

/// The engine's own message for an error, without bollard's wrapping.
pub fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Whether the engine said the thing does not exist.
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// A container to create and start.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// Unique name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// The command; `None` keeps the image's.
    pub cmd: Option<Vec<String>>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// The network to join.
    pub network: String,
    /// DNS aliases on that network.
    pub aliases: Vec<String>,
    /// `(container port, host port)` pairs, bound on 127.0.0.1.
    pub ports: Vec<(u16, u16)>,
    /// Bind mounts, `host:container[:ro|rw]`.
    pub binds: Vec<String>,
    /// `name:address` lines added to the container's /etc/hosts.
    pub extra_hosts: Vec<String>,
    /// Most memory the container may use, in bytes; `None` for no limit.
    pub memory_bytes: Option<u64>,
}

/// A container found by its labels.
#[derive(Clone, Debug)]
pub struct LabelledContainer {
    /// The engine's id.
    pub id: String,
    /// Its image.
    pub image: String,
    /// The value of the label asked for.
    pub role: String,
    /// Whether it is running.
    pub running: bool,
}

/// A connection to one Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

impl Engine {
    /// The engine of this machine (`DOCKER_HOST` or the local socket), API version negotiated.
    pub async fn local() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults().map_err(DockerError::Connect)?;
        let docker = docker.negotiate_version().await.map_err(DockerError::Connect)?;
        Ok(Self { docker })
    }

    /// The engine at a `tcp://host:port` address (an SSH bridge), API version negotiated.
    pub async fn at(address: &str) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_http(address, 120, bollard::API_DEFAULT_VERSION).map_err(DockerError::Connect)?;
        let docker = docker.negotiate_version().await.map_err(DockerError::Connect)?;
        Ok(Self { docker })
    }

    /// The engine's version, e.g. `20.10.24`.
    pub async fn version(&self) -> Result<String, DockerError> {
        let v = self.docker.version().await.map_err(DockerError::Connect)?;
        Ok(v.version.unwrap_or_default())
    }

    /// Creates a bridge network with `labels`; answers its id and gateway address.
    pub async fn create_network(&self, name: &str, labels: HashMap<String, String>) -> Result<(String, String), DockerError> {
        let request =
            NetworkCreateRequest { name: name.to_string(), driver: Some("bridge".into()), labels: Some(labels), ..Default::default() };
        let created =
            self.docker.create_network(request).await.map_err(|source| DockerError::CreateNetwork { name: name.into(), source })?;
        let inspect = self
            .docker
            .inspect_network(&created.id, None::<bollard::query_parameters::InspectNetworkOptions>)
            .await
            .map_err(|source| DockerError::CreateNetwork { name: name.into(), source })?;
        let gateway =
            inspect.ipam.and_then(|ipam| ipam.config).and_then(|configs| configs.into_iter().find_map(|c| c.gateway)).unwrap_or_default();
        Ok((created.id, gateway))
    }

    /// The network `name`, created with `labels` unless it exists; answers its id and gateway.
    /// Several nodes may share one engine (a test double of a cluster) and create it at the same
    /// moment (the engine allows equal names): every racer settles on the oldest and removes its
    /// own, so callers must refer to the network by the id answered.
    pub async fn ensure_network(&self, name: &str, labels: HashMap<String, String>) -> Result<(String, String), DockerError> {
        let chosen = match self.oldest_network(name).await? {
            Some(found) => found,
            None => {
                let (id, gateway) = self.create_network(name, labels).await?;
                match self.oldest_network(name).await? {
                    Some((oldest, gateway)) if oldest != id => {
                        self.docker.remove_network(&id).await.map_err(|source| DockerError::CreateNetwork { name: name.into(), source })?;
                        (oldest, gateway)
                    }
                    _ => (id, gateway),
                }
            }
        };
        // Another user of the engine may have made a duplicate a moment ago; it removes
        // its own, and until it has, the engine refuses containers on that name.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.networks_named(name).await?.len() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(chosen)
    }

    /// The networks named exactly `name`.
    async fn networks_named(&self, name: &str) -> Result<Vec<bollard::models::Network>, DockerError> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        Ok(self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: Some(filters) }))
            .await
            .map_err(|source| DockerError::CreateNetwork { name: name.into(), source })?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .collect())
    }

    /// The oldest network named exactly `name`, with its gateway.
    async fn oldest_network(&self, name: &str) -> Result<Option<(String, String)>, DockerError> {
        let mut same = self.networks_named(name).await?;
        same.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(same.into_iter().next().map(|n| {
            let gateway = n.ipam.and_then(|ipam| ipam.config).and_then(|configs| configs.into_iter().find_map(|c| c.gateway));
            (n.id.unwrap_or_default(), gateway.unwrap_or_default())
        }))
    }

    /// Creates and starts a container; answers its id. A container that was
    /// created but failed to start is removed again.
    pub async fn start_container(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let fail = |message: String| DockerError::StartContainer { name: spec.name.clone(), image: spec.image.clone(), message };
        let port_bindings = (!spec.ports.is_empty()).then(|| {
            spec.ports
                .iter()
                .map(|(container, host)| {
                    let binding = PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(host.to_string()) };
                    (format!("{container}/tcp"), Some(vec![binding]))
                })
                .collect()
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            cmd: spec.cmd.clone(),
            labels: Some(spec.labels.clone()),
            exposed_ports: (!spec.ports.is_empty()).then(|| spec.ports.iter().map(|(c, _)| format!("{c}/tcp")).collect()),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.clone()),
                port_bindings,
                binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
                extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
                init: Some(true),
                memory: spec.memory_bytes.and_then(|b| i64::try_from(b).ok()),
                // No swap beyond the limit: a relay over it is stopped, not slowed to a crawl.
                memory_swap: spec.memory_bytes.and_then(|b| i64::try_from(b).ok()),
                ..Default::default()
            }),
            // The host's network has no endpoint settings (and no aliases).
            networking_config: (spec.network != "host").then(|| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    spec.network.clone(),
                    EndpointSettings { aliases: Some(spec.aliases.clone()), ..Default::default() },
                )])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() };
        let created = self.docker.create_container(Some(options), body).await.map_err(|e| fail(engine_message(&e)))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove_container(&created.id).await;
            return Err(fail(engine_message(&e)));
        }
        Ok(created.id)
    }

    /// The container's address on `network`.
    pub async fn container_ip(&self, id: &str, network: &str) -> Result<String, DockerError> {
        let inspect = self.docker.inspect_container(id, None).await.map_err(|source| DockerError::Container {
            operation: "inspect",
            id: id.into(),
            source,
        })?;
        // `network` is a name or an id; the engine keys its answer by name.
        Ok(inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.into_iter().find(|(key, e)| key == network || e.network_id.as_deref() == Some(network)))
            .and_then(|(_, e)| e.ip_address)
            .unwrap_or_default())
    }

    /// When the container exited, as the engine recorded it; `None` while it runs.
    pub async fn exited_at(&self, id: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, DockerError> {
        let inspect = self.docker.inspect_container(id, None).await.map_err(|source| DockerError::Container {
            operation: "inspect",
            id: id.into(),
            source,
        })?;
        let state = inspect.state.unwrap_or_default();
        if state.running.unwrap_or(false) {
            return Ok(None);
        }
        // A container that never ran has the zero time, year 1.
        Ok(state
            .finished_at
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .filter(|t| chrono::Datelike::year(t) > 1))
    }

    /// Waits for the container to exit; answers its exit code.
    pub async fn wait(&self, id: &str) -> Result<i64, DockerError> {
        let mut stream = self.docker.wait_container(id, None::<WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(source)) => Err(DockerError::Container { operation: "wait for", id: id.into(), source }),
            None => Err(DockerError::Container {
                operation: "wait for",
                id: id.into(),
                source: bollard::errors::Error::IOError { err: std::io::Error::other("the wait stream ended") },
            }),
        }
    }

    /// Stops the container: SIGTERM, then SIGKILL after `grace_secs`. A container already gone is fine.
    pub async fn stop(&self, id: &str, grace_secs: u32) -> Result<(), DockerError> {
        let options = StopContainerOptions { t: Some(i32::try_from(grace_secs).unwrap_or(i32::MAX)), ..Default::default() };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(source) => Err(DockerError::Container { operation: "stop", id: id.into(), source }),
        }
    }

    /// The container's output (stdout and stderr), the last `tail` lines or all.
    pub async fn logs(&self, id: &str, tail: Option<usize>) -> Result<String, DockerError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.logs(id, Some(options));
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => out.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
                Err(source) => return Err(DockerError::Container { operation: "read logs of", id: id.into(), source }),
            }
        }
        Ok(out)
    }

    /// Removes a container, running or not. Already gone is fine.
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(DockerError::Container { operation: "remove", id: id.into(), source }),
        }
    }

    /// Containers (stopped ones too) carrying all of `filter`'s labels, with their `key` label.
    pub async fn containers_labelled(&self, filter: &[(&str, &str)], key: &str) -> Result<Vec<LabelledContainer>, DockerError> {
        let (containers, _) = self.list_labelled(filter).await?;
        Ok(containers
            .into_iter()
            .map(|c| LabelledContainer {
                id: c.id.unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                role: c.labels.and_then(|mut l| l.remove(key)).unwrap_or_default(),
                running: c.state.is_some_and(|s| s.to_string() == "running"),
            })
            .collect())
    }

    /// Containers (stopped ones too) and networks carrying all of `filter`'s labels.
    async fn list_labelled(
        &self,
        filter: &[(&str, &str)],
    ) -> Result<(Vec<bollard::models::ContainerSummary>, Vec<bollard::models::Network>), DockerError> {
        let label_filter: Vec<String> = filter.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters = HashMap::from([("label".to_string(), label_filter)]);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions { all: true, filters: Some(filters.clone()), ..Default::default() }))
            .await
            .map_err(|source| DockerError::Sweep { operation: "list containers", source })?;
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: Some(filters) }))
            .await
            .map_err(|source| DockerError::Sweep { operation: "list networks", source })?;
        Ok((containers, networks))
    }

    /// Removes every container and then every network carrying all of
    /// `filter`'s labels; answers how many of each were removed.
    pub async fn sweep(&self, filter: &[(&str, &str)]) -> Result<(usize, usize), DockerError> {
        let (containers, networks) = self.list_labelled(filter).await?;
        for id in containers.iter().filter_map(|c| c.id.as_deref()) {
            self.remove_container(id).await?;
        }
        for id in networks.iter().filter_map(|n| n.id.as_deref()) {
            match self.docker.remove_network(id).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(DockerError::Sweep { operation: "remove a network", source }),
            }
        }
        Ok((containers.len(), networks.len()))
    }

    /// The values of label `key` on containers and networks carrying all of `filter`'s labels.
    pub async fn labelled(&self, filter: &[(&str, &str)], key: &str) -> Result<Vec<String>, DockerError> {
        let (containers, networks) = self.list_labelled(filter).await?;
        let mut values: Vec<String> = containers
            .into_iter()
            .filter_map(|c| c.labels.and_then(|mut l| l.remove(key)))
            .chain(networks.into_iter().filter_map(|n| n.labels.and_then(|mut l| l.remove(key))))
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }
}
