//! Dashboards: the template a plan asks for, and the URL of a run's dashboard once pushed.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Plan {
    Table,
    Dashboard,
}

#[derive(DeriveIden)]
enum Run {
    Table,
    DashboardUrl,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Plan::Table).add_column(ColumnDef::new(Plan::Dashboard).string().null()).to_owned())
            .await?;
        manager.alter_table(Table::alter().table(Run::Table).add_column(ColumnDef::new(Run::DashboardUrl).string().null()).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Run::Table).drop_column(Run::DashboardUrl).to_owned()).await?;
        manager.alter_table(Table::alter().table(Plan::Table).drop_column(Plan::Dashboard).to_owned()).await
    }
}
