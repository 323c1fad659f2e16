//! What a restarted broker needs to carry on a live run: the run's metrics
//! token (its relays present it), the last feed sequence number handed out,
//! and its metrics totals so far.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Run {
    Table,
    IngestToken,
    FeedSeq,
    MetricsState,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Run::Table).add_column(ColumnDef::new(Run::IngestToken).string().null()).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter().table(Run::Table).add_column(ColumnDef::new(Run::FeedSeq).big_integer().not_null().default(0)).to_owned(),
            )
            .await?;
        manager.alter_table(Table::alter().table(Run::Table).add_column(ColumnDef::new(Run::MetricsState).text().null()).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Run::MetricsState, Run::FeedSeq, Run::IngestToken] {
            manager.alter_table(Table::alter().table(Run::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
