//! A step's image tarball may be checked against its SHA-256: `container_sha256`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Step {
    Table,
    ContainerSha256,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Step::Table).add_column(ColumnDef::new(Step::ContainerSha256).string().null()).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Step::Table).drop_column(Step::ContainerSha256).to_owned()).await
    }
}
