//! Projects, plans, steps, runs and step records.
//!
//! Every row is identified by a UUID primary key. Deleting a project removes
//! its plans, a plan its steps and runs, a run its step records; the catalog
//! refuses such deletes while a run is live.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Project {
    Table,
    Id,
    Name,
    HomePage,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Plan {
    Table,
    Id,
    ProjectId,
    Name,
    Description,
    Enabled,
    EnvironmentData,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Step {
    Table,
    Id,
    PlanId,
    Position,
    Name,
    InstanceCount,
    InstanceType,
    InstanceRegion,
    RunDelay,
    RunMaxTime,
    NodeDelay,
    ContainerName,
    ContainerUrl,
    EnvironmentData,
    AdditionalCommandArgs,
    DnsName,
    PortMapping,
    VolumeMapping,
    DockerSeries,
    PruneRunning,
    Monitor,
    Service,
    Required,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Run {
    Table,
    Id,
    PlanId,
    State,
    Owner,
    EnvironmentData,
    Aborted,
    FailureReason,
    CreatedAt,
    StartedAt,
    CompletedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StepRecord {
    Table,
    Id,
    RunId,
    StepId,
    State,
    Failed,
    FailureReason,
    CreatedAt,
    StartedAt,
    CompletedAt,
    UpdatedAt,
}

fn id(col: impl IntoIden + 'static) -> ColumnDef {
    ColumnDef::new(col).uuid().not_null().primary_key().to_owned()
}

fn stamp(col: impl IntoIden + 'static) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().not_null().to_owned()
}

fn optional_stamp(col: impl IntoIden + 'static) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().null().to_owned()
}

fn text(col: impl IntoIden + 'static) -> ColumnDef {
    ColumnDef::new(col).string().not_null().to_owned()
}

fn optional_text(col: impl IntoIden + 'static) -> ColumnDef {
    ColumnDef::new(col).string().null().to_owned()
}

fn flag(col: impl IntoIden + 'static) -> ColumnDef {
    ColumnDef::new(col).boolean().not_null().to_owned()
}

fn json(col: impl IntoIden + 'static) -> ColumnDef {
    ColumnDef::new(col).json().not_null().to_owned()
}

fn cascade(
    name: &str,
    from: (impl IntoIden + 'static, impl IntoIden + 'static),
    to: (impl IntoIden + 'static, impl IntoIden + 'static),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(ForeignKeyAction::Cascade)
        .on_update(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Project::Table)
                    .col(id(Project::Id))
                    .col(text(Project::Name))
                    .col(optional_text(Project::HomePage))
                    .col(stamp(Project::CreatedAt))
                    .col(stamp(Project::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("ux_project_name").table(Project::Table).col(Project::Name).unique().to_owned()).await?;

        manager
            .create_table(
                Table::create()
                    .table(Plan::Table)
                    .col(id(Plan::Id))
                    .col(ColumnDef::new(Plan::ProjectId).uuid().not_null())
                    .col(text(Plan::Name))
                    .col(optional_text(Plan::Description))
                    .col(flag(Plan::Enabled))
                    .col(json(Plan::EnvironmentData))
                    .col(stamp(Plan::CreatedAt))
                    .col(stamp(Plan::UpdatedAt))
                    .foreign_key(&mut cascade("fk_plan_project", (Plan::Table, Plan::ProjectId), (Project::Table, Project::Id)))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("ux_plan_project_name").table(Plan::Table).col(Plan::ProjectId).col(Plan::Name).unique().to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Step::Table)
                    .col(id(Step::Id))
                    .col(ColumnDef::new(Step::PlanId).uuid().not_null())
                    .col(ColumnDef::new(Step::Position).integer().not_null())
                    .col(text(Step::Name))
                    .col(ColumnDef::new(Step::InstanceCount).integer().not_null())
                    .col(text(Step::InstanceType))
                    .col(text(Step::InstanceRegion))
                    .col(ColumnDef::new(Step::RunDelay).big_integer().not_null())
                    .col(ColumnDef::new(Step::RunMaxTime).big_integer().not_null())
                    .col(ColumnDef::new(Step::NodeDelay).big_integer().not_null())
                    .col(text(Step::ContainerName))
                    .col(optional_text(Step::ContainerUrl))
                    .col(json(Step::EnvironmentData))
                    .col(optional_text(Step::AdditionalCommandArgs))
                    .col(optional_text(Step::DnsName))
                    .col(optional_text(Step::PortMapping))
                    .col(optional_text(Step::VolumeMapping))
                    .col(optional_text(Step::DockerSeries))
                    .col(flag(Step::PruneRunning))
                    .col(flag(Step::Monitor))
                    .col(flag(Step::Service))
                    .col(flag(Step::Required))
                    .col(stamp(Step::CreatedAt))
                    .col(stamp(Step::UpdatedAt))
                    .foreign_key(&mut cascade("fk_step_plan", (Step::Table, Step::PlanId), (Plan::Table, Plan::Id)))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("ux_step_plan_name").table(Step::Table).col(Step::PlanId).col(Step::Name).unique().to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Run::Table)
                    .col(id(Run::Id))
                    .col(ColumnDef::new(Run::PlanId).uuid().not_null())
                    .col(text(Run::State))
                    .col(optional_text(Run::Owner))
                    .col(json(Run::EnvironmentData))
                    .col(flag(Run::Aborted))
                    .col(ColumnDef::new(Run::FailureReason).text().null())
                    .col(stamp(Run::CreatedAt))
                    .col(optional_stamp(Run::StartedAt))
                    .col(optional_stamp(Run::CompletedAt))
                    .col(stamp(Run::UpdatedAt))
                    .foreign_key(&mut cascade("fk_run_plan", (Run::Table, Run::PlanId), (Plan::Table, Plan::Id)))
                    .to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("ix_run_plan").table(Run::Table).col(Run::PlanId).to_owned()).await?;
        manager.create_index(Index::create().name("ix_run_state").table(Run::Table).col(Run::State).to_owned()).await?;
        manager.create_index(Index::create().name("ix_run_created").table(Run::Table).col(Run::CreatedAt).to_owned()).await?;

        manager
            .create_table(
                Table::create()
                    .table(StepRecord::Table)
                    .col(id(StepRecord::Id))
                    .col(ColumnDef::new(StepRecord::RunId).uuid().not_null())
                    .col(ColumnDef::new(StepRecord::StepId).uuid().not_null())
                    .col(text(StepRecord::State))
                    .col(flag(StepRecord::Failed))
                    .col(ColumnDef::new(StepRecord::FailureReason).text().null())
                    .col(stamp(StepRecord::CreatedAt))
                    .col(optional_stamp(StepRecord::StartedAt))
                    .col(optional_stamp(StepRecord::CompletedAt))
                    .col(stamp(StepRecord::UpdatedAt))
                    .foreign_key(&mut cascade("fk_step_record_run", (StepRecord::Table, StepRecord::RunId), (Run::Table, Run::Id)))
                    .foreign_key(&mut cascade("fk_step_record_step", (StepRecord::Table, StepRecord::StepId), (Step::Table, Step::Id)))
                    .to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("ix_step_record_run").table(StepRecord::Table).col(StepRecord::RunId).to_owned()).await?;
        manager
            .create_index(Index::create().name("ix_step_record_step").table(StepRecord::Table).col(StepRecord::StepId).to_owned())
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            StepRecord::Table.into_iden(),
            Run::Table.into_iden(),
            Step::Table.into_iden(),
            Plan::Table.into_iden(),
            Project::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
