//! Adapters: the only code that talks to the outside world's engines.
//! `docker` drives a Docker engine through bollard; `images` builds the
//! images loads needs from files on this machine (no registry is needed);
//! `ec2` manages instances by tag; `ssh` reaches a node and its Docker engine
//! through SSH; `influx` and `grafana` publish metrics and dashboards.

pub mod docker;
pub mod ec2;
pub mod images;
pub mod grafana;
pub mod influx;
pub mod ssh;
