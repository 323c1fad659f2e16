//! A metrics summary row may be one region's share of a step spread over several regions
//! (`null`: the step over every node).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum MetricSummary {
    Table,
    Region,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(MetricSummary::Table).add_column(ColumnDef::new(MetricSummary::Region).text().null()).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(MetricSummary::Table).drop_column(MetricSummary::Region).to_owned()).await
    }
}
