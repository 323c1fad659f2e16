//! OpenTelemetry histograms in a run's summary carry their unit and, for
//! exponential ones, the relative error of their percentiles.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum MetricSummary {
    Table,
    Unit,
    RelativeError,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter().table(MetricSummary::Table).add_column(ColumnDef::new(MetricSummary::Unit).string().null()).to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(MetricSummary::Table)
                    .add_column(ColumnDef::new(MetricSummary::RelativeError).double().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(MetricSummary::Table).drop_column(MetricSummary::RelativeError).to_owned()).await?;
        manager.alter_table(Table::alter().table(MetricSummary::Table).drop_column(MetricSummary::Unit).to_owned()).await
    }
}
