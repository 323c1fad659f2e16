//! A run records what its instances cost: the lines per instance type, region and market
//! (JSON), and the dollars in all, which the monthly budget sums.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Run {
    Table,
    Cost,
    CostUsd,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        manager.alter_table(Table::alter().table(Run::Table).add_column(ColumnDef::new(Run::Cost).text().null()).to_owned()).await?;
        manager
            .alter_table(
                Table::alter().table(Run::Table).add_column(ColumnDef::new(Run::CostUsd).double().not_null().default(0.0)).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Run::Table).drop_column(Run::CostUsd).to_owned()).await?;
        manager.alter_table(Table::alter().table(Run::Table).drop_column(Run::Cost).to_owned()).await
    }
}
