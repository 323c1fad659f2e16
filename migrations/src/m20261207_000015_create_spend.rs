//! The spend ledger: what each run's instances cost, by the run's creation time,
//! kept when the run is deleted, so a month's spend (`budget.max_usd_per_month`)
//! is what was spent, not what is still listed. Filled from the runs there are.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Spend {
    Table,
    RunId,
    CreatedAt,
    Usd,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Spend::Table)
                    .col(ColumnDef::new(Spend::RunId).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Spend::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Spend::Usd).double().not_null())
                    .to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("ix_spend_created_at").table(Spend::Table).col(Spend::CreatedAt).to_owned()).await?;
        manager
            .get_connection()
            .execute_unprepared("INSERT INTO spend (run_id, created_at, usd) SELECT id, created_at, cost_usd FROM run WHERE cost_usd > 0")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Spend::Table).to_owned()).await
    }
}
