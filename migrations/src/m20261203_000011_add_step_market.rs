//! A step says how its EC2 instances are bought: `on_demand`, `spot` or `spot_fallback`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Step {
    Table,
    Market,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Step::Table)
                    .add_column(ColumnDef::new(Step::Market).string().not_null().default("on_demand"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Step::Table).drop_column(Step::Market).to_owned()).await
    }
}
