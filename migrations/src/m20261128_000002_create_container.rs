//! Containers a run started: where, from which image, how they exited, and
//! their output, kept after the containers themselves are removed.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Container {
    Table,
    Id,
    RunId,
    StepId,
    Node,
    Role,
    DockerId,
    Image,
    ExitCode,
    Logs,
    CreatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum Run {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Step {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Container::Table)
                    .col(ColumnDef::new(Container::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Container::RunId).uuid().not_null())
                    .col(ColumnDef::new(Container::StepId).uuid().not_null())
                    .col(ColumnDef::new(Container::Node).string().not_null())
                    .col(ColumnDef::new(Container::Role).string().not_null())
                    .col(ColumnDef::new(Container::DockerId).string().not_null())
                    .col(ColumnDef::new(Container::Image).string().not_null())
                    .col(ColumnDef::new(Container::ExitCode).big_integer().null())
                    .col(ColumnDef::new(Container::Logs).text().not_null())
                    .col(ColumnDef::new(Container::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Container::FinishedAt).timestamp_with_time_zone().null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_container_run")
                            .from(Container::Table, Container::RunId)
                            .to(Run::Table, Run::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_container_step")
                            .from(Container::Table, Container::StepId)
                            .to(Step::Table, Step::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("ix_container_run").table(Container::Table).col(Container::RunId).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Container::Table).to_owned()).await
    }
}
