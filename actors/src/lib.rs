//! The system behind loads' messages.
//!
//! `domain` holds the plan model, its validation and `$VAR` interpolation, so
//! that the actors and the web layer share one definition of a valid plan.
//! `store` is the only code that speaks SQL (through sea-orm). The actors own
//! the state and are the only way the web layer reaches it.

pub mod catalog;
pub mod domain;
pub mod store;

pub use catalog::CatalogActor;
