//! Steps may run on fewer nodes than they asked for: `min_nodes`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Step {
    Table,
    MinNodes,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Step::Table).add_column(ColumnDef::new(Step::MinNodes).integer().null()).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Step::Table).drop_column(Step::MinNodes).to_owned()).await
    }
}
