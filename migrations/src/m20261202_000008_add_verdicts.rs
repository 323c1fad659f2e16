//! Judging runs: thresholds and regression rules on plans and steps, a plan's
//! baseline run, each run's threshold states and verdict, and when each
//! container exited (a breach's stop is measured by it). Thresholds and rules
//! are JSON text (NULL when a plan has none, as every older plan).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Plan {
    Table,
    Thresholds,
    Compare,
    FailOnRegression,
    BaselineRunId,
    BaselineSetAt,
}

#[derive(DeriveIden)]
enum Step {
    Table,
    Thresholds,
}

#[derive(DeriveIden)]
enum Run {
    Table,
    Thresholds,
    Verdict,
    VerdictReason,
}

#[derive(DeriveIden)]
enum Container {
    Table,
    ExitedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let columns = [
            (Plan::Table.into_iden(), ColumnDef::new(Plan::Thresholds).text().null().to_owned()),
            (Plan::Table.into_iden(), ColumnDef::new(Plan::Compare).text().null().to_owned()),
            (Plan::Table.into_iden(), ColumnDef::new(Plan::FailOnRegression).boolean().not_null().default(false).to_owned()),
            (Plan::Table.into_iden(), ColumnDef::new(Plan::BaselineRunId).uuid().null().to_owned()),
            (Plan::Table.into_iden(), ColumnDef::new(Plan::BaselineSetAt).timestamp_with_time_zone().null().to_owned()),
            (Step::Table.into_iden(), ColumnDef::new(Step::Thresholds).text().null().to_owned()),
            (Run::Table.into_iden(), ColumnDef::new(Run::Thresholds).text().null().to_owned()),
            (Run::Table.into_iden(), ColumnDef::new(Run::Verdict).string().null().to_owned()),
            (Run::Table.into_iden(), ColumnDef::new(Run::VerdictReason).text().null().to_owned()),
            (Container::Table.into_iden(), ColumnDef::new(Container::ExitedAt).timestamp_with_time_zone().null().to_owned()),
        ];
        // SQLite alters one column at a time.
        for (table, mut column) in columns {
            manager.alter_table(Table::alter().table(table).add_column(&mut column).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Container::Table).drop_column(Container::ExitedAt).to_owned()).await?;
        for column in [Run::VerdictReason, Run::Verdict, Run::Thresholds] {
            manager.alter_table(Table::alter().table(Run::Table).drop_column(column).to_owned()).await?;
        }
        manager.alter_table(Table::alter().table(Step::Table).drop_column(Step::Thresholds).to_owned()).await?;
        for column in [Plan::BaselineSetAt, Plan::BaselineRunId, Plan::FailOnRegression, Plan::Compare, Plan::Thresholds] {
            manager.alter_table(Table::alter().table(Plan::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
