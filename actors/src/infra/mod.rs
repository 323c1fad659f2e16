//! Adapters: the only code that talks to the outside world's engines.
//! `docker` drives a Docker engine through bollard; `images` builds the
//! images loads needs from files on this machine (no registry is needed);
//! `ec2` manages instances by tag; `ssh` reaches a node and its Docker engine
//! through SSH; `forward` carries a local run network's metrics to the
//! broker; `volumes` resolves bind-mount paths on this machine's disk;
//! `influx` and `grafana` publish metrics and dashboards.

pub mod docker;
pub mod download;
pub mod ec2;
pub mod forward;
pub mod grafana;
pub mod images;
pub mod influx;
pub mod registry;
pub mod ssh;
pub mod tls;
pub mod volumes;

/// A background task serving a node (its Docker bridge, a forward); dropping it stops the task.
pub struct Task(tokio::task::JoinHandle<()>);

impl Task {
    /// Runs `future` until the task is dropped.
    pub fn spawn(future: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}
