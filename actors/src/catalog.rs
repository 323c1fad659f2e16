//! `CatalogActor`: owns projects, plans, steps and the run records, and is
//! the web layer's only way to them.
//!
//! Each message is answered by a future over a pooled database connection, so
//! slow queries do not hold the actor's mailbox: the actor's state is only the
//! pool and the validation limits, both immutable after start.

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use sea_orm::DatabaseConnection;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::compare::Comparison;
use crate::domain::validate::{self, Limits};
use crate::domain::views::{BaselineView, ImportReport, Page, PlanSummary, PlanView, ProjectDetail, ProjectTree, ProjectView, RunView};
use crate::store::runs::{CompareTo, RunFilter};
use crate::store::{self, plans, projects, runs, StoreError};

/// Owns the catalog: projects, plans, steps, and run records.
pub struct CatalogActor {
    db: DatabaseConnection,
    limits: Limits,
}

impl CatalogActor {
    /// A catalog over `db`, validating plans against `limits`.
    pub fn new(db: DatabaseConnection, limits: Limits) -> Self {
        Self { db, limits }
    }
}

impl Actor for CatalogActor {
    type Context = Context<Self>;
}

/// Result of every catalog request.
pub type CatalogResult<T> = Result<T, StoreError>;

fn invalid(e: crate::domain::ValidationErrors) -> StoreError {
    StoreError::Invalid(e)
}

/// Declares a message and its handler: the body runs as a future with a pool
/// handle `$db`, the limits `$limits` and the message `$msg`.
macro_rules! catalog_message {
    ($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? } -> $out:ty,
     |$db:ident, $limits:ident, $msg:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name { $(#[allow(missing_docs)] pub $field: $ty),* }

        impl Message for $name {
            type Result = CatalogResult<$out>;
        }

        impl Handler<$name> for CatalogActor {
            type Result = ResponseFuture<CatalogResult<$out>>;

            #[allow(unused_variables)]
            fn handle(&mut self, $msg: $name, _: &mut Context<Self>) -> Self::Result {
                let $db = self.db.clone();
                let $limits = self.limits.clone();
                Box::pin(async move { $body })
            }
        }
    };
}

catalog_message!(
    /// Checks that the database answers.
    Ping {} -> (),
    |db, limits, msg| store::ping(&db).await.map_err(StoreError::from)
);

catalog_message!(
    /// Lists projects, by name.
    ListProjects { limit: u64, offset: u64 } -> Page<ProjectView>,
    |db, limits, msg| projects::list(&db, msg.limit, msg.offset).await
);

catalog_message!(
    /// Creates a project (and its plans) from a project document.
    CreateProject { document: Value } -> ProjectDetail,
    |db, limits, msg| {
        let spec = validate::project(&msg.document, &limits).map_err(invalid)?;
        projects::create(&db, &spec.value).await
    }
);

catalog_message!(
    /// Reads one project with its plan summaries.
    GetProject { id: Uuid } -> ProjectDetail,
    |db, limits, msg| projects::get(&db, msg.id).await
);

catalog_message!(
    /// Renames a project or changes its home page (`{name, home_page?}`).
    UpdateProject { id: Uuid, document: Value } -> ProjectDetail,
    |db, limits, msg| {
        let (name, home_page) = validate::project_header(&msg.document).map_err(invalid)?;
        projects::update(&db, msg.id, &name, home_page.as_deref()).await
    }
);

catalog_message!(
    /// Deletes a project with everything in it; refused while one of its runs is live.
    DeleteProject { id: Uuid } -> (),
    |db, limits, msg| projects::delete(&db, msg.id).await
);

catalog_message!(
    /// Imports a project document: creates or updates the project and its plans.
    ImportProject { document: Value } -> ImportReport,
    |db, limits, msg| {
        let spec = validate::project(&msg.document, &limits).map_err(invalid)?;
        projects::import(&db, &spec.value, spec.warnings).await
    }
);

catalog_message!(
    /// Lists a project's plans, by name.
    ListPlans { project_id: Uuid, limit: u64, offset: u64 } -> Page<PlanSummary>,
    |db, limits, msg| plans::list(&db, msg.project_id, msg.limit, msg.offset).await
);

catalog_message!(
    /// Creates a plan with its steps in a project.
    CreatePlan { project_id: Uuid, document: Value } -> PlanView,
    |db, limits, msg| {
        let spec = validate::plan(&msg.document, &limits).map_err(invalid)?;
        plans::create(&db, msg.project_id, &spec.value).await
    }
);

catalog_message!(
    /// Reads one plan with its steps.
    GetPlan { id: Uuid } -> PlanView,
    |db, limits, msg| plans::get(&db, msg.id).await
);

catalog_message!(
    /// Replaces a plan; its steps and env cannot change once it has runs.
    UpdatePlan { id: Uuid, document: Value } -> PlanView,
    |db, limits, msg| {
        let spec = validate::plan(&msg.document, &limits).map_err(invalid)?;
        plans::replace(&db, msg.id, &spec.value).await
    }
);

catalog_message!(
    /// Deletes a plan with its steps and runs; refused while one of its runs is live.
    DeletePlan { id: Uuid } -> (),
    |db, limits, msg| plans::delete(&db, msg.id).await
);

catalog_message!(
    /// Copies a plan into a new, editable plan of the same project.
    ForkPlan { id: Uuid, name: Option<String> } -> PlanView,
    |db, limits, msg| plans::fork(&db, msg.id, msg.name).await
);

catalog_message!(
    /// Lists runs matching a filter, newest first.
    ListRuns { filter: RunFilter, limit: u64, offset: u64 } -> Page<RunView>,
    |db, limits, msg| runs::list(&db, &msg.filter, msg.limit, msg.offset).await
);

catalog_message!(
    /// Reads one run with its step records.
    GetRun { id: Uuid } -> RunView,
    |db, limits, msg| runs::get(&db, msg.id).await
);

catalog_message!(
    /// Reads projects (all, or one) with every plan, step and run, for the loads v2 API.
    ProjectTrees { id: Option<Uuid> } -> Vec<ProjectTree>,
    |db, limits, msg| projects::trees(&db, msg.id).await
);

catalog_message!(
    /// Imports a project document and answers the project's whole tree (the loads v2 `POST /api/project`).
    ImportProjectTree { document: Value } -> ProjectTree,
    |db, limits, msg| {
        let spec = validate::project(&msg.document, &limits).map_err(invalid)?;
        let report = projects::import(&db, &spec.value, spec.warnings).await?;
        let mut trees = projects::trees(&db, Some(report.project.project.id)).await?;
        Ok(trees.remove(0))
    }
);

catalog_message!(
    /// Makes a finished run of a plan its baseline, replacing any other.
    SetBaseline { plan_id: Uuid, run_id: Uuid } -> BaselineView,
    |db, limits, msg| plans::set_baseline(&db, msg.plan_id, msg.run_id).await
);

catalog_message!(
    /// Reads a plan's baseline.
    GetBaseline { plan_id: Uuid } -> BaselineView,
    |db, limits, msg| plans::baseline(&db, msg.plan_id).await
);

catalog_message!(
    /// Removes a plan's baseline.
    ClearBaseline { plan_id: Uuid } -> (),
    |db, limits, msg| plans::clear_baseline(&db, msg.plan_id).await
);

catalog_message!(
    /// Compares a finished run with its plan's baseline or another finished run.
    CompareRuns { run_id: Uuid, to: CompareTo } -> Comparison,
    |db, limits, msg| runs::compare(&db, msg.run_id, msg.to).await
);
