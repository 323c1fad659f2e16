//! The time series of a run's steps, for the web UI's charts: one row per step
//! and flush window, merged over the step's nodes (counters, timer statistics,
//! each node's CPU), as JSON; written while the run goes, deleted with it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RunSeries {
    Table,
    Id,
    RunId,
    Step,
    StartMs,
    Point,
}

#[derive(DeriveIden)]
enum Run {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RunSeries::Table)
                    .col(ColumnDef::new(RunSeries::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(RunSeries::RunId).uuid().not_null())
                    .col(ColumnDef::new(RunSeries::Step).string().not_null())
                    .col(ColumnDef::new(RunSeries::StartMs).big_integer().not_null())
                    .col(ColumnDef::new(RunSeries::Point).text().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_run_series_run")
                            .from(RunSeries::Table, RunSeries::RunId)
                            .to(Run::Table, Run::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("ix_run_series_run").table(RunSeries::Table).col(RunSeries::RunId).col(RunSeries::StartMs).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RunSeries::Table).to_owned()).await
    }
}
