//! The system behind loads' messages.
//!
//! `domain` holds the plan model, its validation and `$VAR` interpolation, so
//! that the actors and the web layer share one definition of a valid plan.
//! `store` is the only code that speaks SQL (through sea-orm). The actors own
//! the state and are the only way the web layer reaches it.

pub mod broker;
pub mod catalog;
pub mod docker_node;
pub mod domain;
pub mod feed;
pub mod infra;
pub mod journal;
pub mod metrics;
pub mod pool;
pub mod run_cost;
pub mod run_supervisor;
pub mod settings;
pub mod step;
pub mod store;

pub use catalog::CatalogActor;
