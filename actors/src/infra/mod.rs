//! Adapters: the only code that talks to the outside world's engines.
//! `docker` drives a Docker engine through bollard; `images` builds the
//! images loads needs from files on this machine (no registry is needed).

pub mod docker;
pub mod ec2;
pub mod images;
pub mod grafana;
pub mod influx;
