//! The database schema of loads, as sea-orm migrations applied at start.
//!
//! The same migrations serve SQLite (the embedded default) and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_catalog;
mod m20261128_000002_create_container;
mod m20261128_000003_create_metric_summary;
mod m20261128_000004_add_dashboards;
mod m20261128_000005_add_min_nodes;
mod m20261128_000006_add_run_recovery;
mod m20261201_000007_add_container_sha256;
mod m20261202_000008_add_verdicts;
mod m20261202_000009_create_run_series;
mod m20261203_000010_add_metric_units;
mod m20261203_000011_add_step_market;
mod m20261203_000012_add_run_cost;
mod m20261203_000013_add_step_interruptions;
mod m20261206_000014_add_metric_region;
mod m20261207_000015_create_spend;
mod m20261207_000016_add_run_ending;

/// Applies every migration in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_catalog::Migration),
            Box::new(m20261128_000002_create_container::Migration),
            Box::new(m20261128_000003_create_metric_summary::Migration),
            Box::new(m20261128_000004_add_dashboards::Migration),
            Box::new(m20261128_000005_add_min_nodes::Migration),
            Box::new(m20261128_000006_add_run_recovery::Migration),
            Box::new(m20261201_000007_add_container_sha256::Migration),
            Box::new(m20261202_000008_add_verdicts::Migration),
            Box::new(m20261202_000009_create_run_series::Migration),
            Box::new(m20261203_000010_add_metric_units::Migration),
            Box::new(m20261203_000011_add_step_market::Migration),
            Box::new(m20261203_000012_add_run_cost::Migration),
            Box::new(m20261203_000013_add_step_interruptions::Migration),
            Box::new(m20261206_000014_add_metric_region::Migration),
            Box::new(m20261207_000015_create_spend::Migration),
            Box::new(m20261207_000016_add_run_ending::Migration),
        ]
    }
}
