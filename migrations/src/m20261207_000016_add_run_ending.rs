//! A run records how it is ending as a value (`finished`, `step_failed`, `breached`,
//! `aborted`, `over_budget`) beside its reason, so a restarted broker ends it the
//! same way without reading the reason's words.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Run {
    Table,
    Ending,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Run::Table).add_column(ColumnDef::new(Run::Ending).string().null()).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Run::Table).drop_column(Run::Ending).to_owned()).await
    }
}
