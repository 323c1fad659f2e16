//! Integration tests: the real server on port 0 against a fresh SQLite file
//! and a fresh PostgreSQL database per test, and the real `loads` binary.

mod helpers;
mod hosts;

mod api_input;
mod auth;
mod cli;
mod compat;
mod cost;
mod dashboards;
mod docs;
mod ec2_boot;
mod ec2_hosts;
mod ec2_nodes;
mod faults;
mod feed;
mod floods;
mod hostile;
mod images;
mod immutability;
mod instances;
mod metrics;
mod monitor;
mod openapi;
mod otlp;
mod paging;
mod projects;
mod recovery;
mod runs;
mod runs_api;
mod secrets;
mod security;
mod ssh;
mod sshd;
mod tls;
mod ui;
mod validation;
mod verdicts;
mod vm;
