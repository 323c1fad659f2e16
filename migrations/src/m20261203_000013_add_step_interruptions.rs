//! A step record keeps the spot interruption notices its nodes got (JSON), so the results
//! say which part of the load went missing and when.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum StepRecord {
    Table,
    Interruptions,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(StepRecord::Table).add_column(ColumnDef::new(StepRecord::Interruptions).text().null()).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(StepRecord::Table).drop_column(StepRecord::Interruptions).to_owned()).await
    }
}
