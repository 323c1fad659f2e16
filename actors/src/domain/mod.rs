//! The plan model: what a user writes (project files, plans, steps), how it is
//! checked, and the read models the API returns.

pub mod aggregate;
pub mod compare;
pub mod cost;
pub mod dashboard;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod interpolate;
pub mod judge;
pub mod launch;
pub mod life;
pub use loads_relay::metrics;
pub mod parse;
pub mod regions;
pub mod secrets;
pub mod spec;
pub mod thresholds;
pub mod usage;
pub mod validate;
pub mod views;
pub mod windows;

pub use error::{ConflictCode, DomainError, FieldError, LimitCode, Reach, RefusalCode, ValidationErrors};
pub use parse::DocumentFormat;
pub use regions::Regions;
pub use spec::{Env, Market, PlanSpec, ProjectSpec, StepSpec};
pub use validate::{Limits, Validated};
