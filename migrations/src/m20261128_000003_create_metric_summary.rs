//! Per-step metric summaries of a run, written when the run ends.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum MetricSummary {
    Table,
    Id,
    RunId,
    StepId,
    Metric,
    Kind,
    Count,
    Rate,
    Min,
    Mean,
    P50,
    P90,
    P95,
    P99,
    Max,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Run {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let number = |c: MetricSummary| ColumnDef::new(c).double().null().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(MetricSummary::Table)
                    .col(ColumnDef::new(MetricSummary::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(MetricSummary::RunId).uuid().not_null())
                    .col(ColumnDef::new(MetricSummary::StepId).uuid().not_null())
                    .col(ColumnDef::new(MetricSummary::Metric).string().not_null())
                    .col(ColumnDef::new(MetricSummary::Kind).string().not_null())
                    .col(ColumnDef::new(MetricSummary::Count).double().not_null())
                    .col(number(MetricSummary::Rate))
                    .col(number(MetricSummary::Min))
                    .col(number(MetricSummary::Mean))
                    .col(number(MetricSummary::P50))
                    .col(number(MetricSummary::P90))
                    .col(number(MetricSummary::P95))
                    .col(number(MetricSummary::P99))
                    .col(number(MetricSummary::Max))
                    .col(ColumnDef::new(MetricSummary::CreatedAt).timestamp_with_time_zone().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_metric_summary_run")
                            .from(MetricSummary::Table, MetricSummary::RunId)
                            .to(Run::Table, Run::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("ix_metric_summary_run").table(MetricSummary::Table).col(MetricSummary::RunId).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(MetricSummary::Table).to_owned()).await
    }
}
