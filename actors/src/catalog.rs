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
use crate::domain::DomainError;
use crate::store::runs::{CompareTo, RunFilter};
use crate::store::{self, plans, projects, runs};

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
pub type CatalogResult<T> = Result<T, DomainError>;

fn invalid(e: crate::domain::ValidationErrors) -> DomainError {
    DomainError::Invalid(e)
}

/// Checks that the database answers.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<()>")]
pub struct Ping;

impl Handler<Ping> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<()>>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { store::ping(&db).await.map_err(DomainError::from) })
    }
}

/// Lists projects, by name.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<Page<ProjectView>>")]
pub struct ListProjects {
    /// Most items to answer.
    pub limit: u64,
    /// Items to skip first.
    pub offset: u64,
}

impl Handler<ListProjects> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<Page<ProjectView>>>;

    fn handle(&mut self, msg: ListProjects, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { projects::list(&db, msg.limit, msg.offset).await })
    }
}

/// Creates a project (and its plans) from a project document.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<ProjectDetail>")]
pub struct CreateProject {
    /// The document, as sent.
    pub document: Value,
}

impl Handler<CreateProject> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<ProjectDetail>>;

    fn handle(&mut self, msg: CreateProject, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            let spec = validate::project(&msg.document, &limits).map_err(invalid)?;
            projects::create(&db, &spec.value).await
        })
    }
}

/// Reads one project with its plan summaries.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<ProjectDetail>")]
pub struct GetProject {
    /// The project.
    pub id: Uuid,
}

impl Handler<GetProject> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<ProjectDetail>>;

    fn handle(&mut self, msg: GetProject, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { projects::get(&db, msg.id).await })
    }
}

/// Renames a project or changes its home page (`{name, home_page?}`).
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<ProjectDetail>")]
pub struct UpdateProject {
    /// The project.
    pub id: Uuid,
    /// The document, as sent.
    pub document: Value,
}

impl Handler<UpdateProject> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<ProjectDetail>>;

    fn handle(&mut self, msg: UpdateProject, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            let (name, home_page) = validate::project_header(&msg.document).map_err(invalid)?;
            projects::update(&db, msg.id, &name, home_page.as_deref()).await
        })
    }
}

/// Deletes a project with everything in it; refused while one of its runs is live.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<()>")]
pub struct DeleteProject {
    /// The project.
    pub id: Uuid,
}

impl Handler<DeleteProject> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<()>>;

    fn handle(&mut self, msg: DeleteProject, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { projects::delete(&db, msg.id).await })
    }
}

/// Imports a project document: creates or updates the project and its plans.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<ImportReport>")]
pub struct ImportProject {
    /// The document, as sent.
    pub document: Value,
}

impl Handler<ImportProject> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<ImportReport>>;

    fn handle(&mut self, msg: ImportProject, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            let spec = validate::project(&msg.document, &limits).map_err(invalid)?;
            projects::import(&db, &spec.value, spec.warnings).await
        })
    }
}

/// Lists a project's plans, by name.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<Page<PlanSummary>>")]
pub struct ListPlans {
    /// The project.
    pub project_id: Uuid,
    /// Most items to answer.
    pub limit: u64,
    /// Items to skip first.
    pub offset: u64,
}

impl Handler<ListPlans> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<Page<PlanSummary>>>;

    fn handle(&mut self, msg: ListPlans, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { plans::list(&db, msg.project_id, msg.limit, msg.offset).await })
    }
}

/// Creates a plan with its steps in a project.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<PlanView>")]
pub struct CreatePlan {
    /// The project.
    pub project_id: Uuid,
    /// The document, as sent.
    pub document: Value,
}

impl Handler<CreatePlan> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<PlanView>>;

    fn handle(&mut self, msg: CreatePlan, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            let spec = validate::plan(&msg.document, &limits).map_err(invalid)?;
            plans::create(&db, msg.project_id, &spec.value).await
        })
    }
}

/// Reads one plan with its steps.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<PlanView>")]
pub struct GetPlan {
    /// The plan.
    pub id: Uuid,
}

impl Handler<GetPlan> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<PlanView>>;

    fn handle(&mut self, msg: GetPlan, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { plans::get(&db, msg.id).await })
    }
}

/// Replaces a plan; its steps and env cannot change once it has runs.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<PlanView>")]
pub struct UpdatePlan {
    /// The plan.
    pub id: Uuid,
    /// The document, as sent.
    pub document: Value,
}

impl Handler<UpdatePlan> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<PlanView>>;

    fn handle(&mut self, msg: UpdatePlan, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            let spec = validate::plan(&msg.document, &limits).map_err(invalid)?;
            plans::replace(&db, msg.id, &spec.value).await
        })
    }
}

/// Deletes a plan with its steps and runs; refused while one of its runs is live.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<()>")]
pub struct DeletePlan {
    /// The plan.
    pub id: Uuid,
}

impl Handler<DeletePlan> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<()>>;

    fn handle(&mut self, msg: DeletePlan, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { plans::delete(&db, msg.id).await })
    }
}

/// Copies a plan into a new, editable plan of the same project.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<PlanView>")]
pub struct ForkPlan {
    /// The plan.
    pub id: Uuid,
    /// The new plan's name; `None`: one made from the original's.
    pub name: Option<String>,
}

impl Handler<ForkPlan> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<PlanView>>;

    fn handle(&mut self, msg: ForkPlan, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { plans::fork(&db, msg.id, msg.name).await })
    }
}

/// Lists runs matching a filter, newest first.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<Page<RunView>>")]
pub struct ListRuns {
    /// Which runs.
    pub filter: RunFilter,
    /// Most items to answer.
    pub limit: u64,
    /// Items to skip first.
    pub offset: u64,
}

impl Handler<ListRuns> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<Page<RunView>>>;

    fn handle(&mut self, msg: ListRuns, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { runs::list(&db, &msg.filter, msg.limit, msg.offset).await })
    }
}

/// Reads one run with its step records.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<RunView>")]
pub struct GetRun {
    /// The run.
    pub id: Uuid,
}

impl Handler<GetRun> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<RunView>>;

    fn handle(&mut self, msg: GetRun, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { runs::get(&db, msg.id).await })
    }
}

/// Reads projects (all, or one) with every plan, step and run, for the loads v2 API.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<Vec<ProjectTree>>")]
pub struct ProjectTrees {
    /// One project, or every one when `None`.
    pub id: Option<Uuid>,
}

impl Handler<ProjectTrees> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<Vec<ProjectTree>>>;

    fn handle(&mut self, msg: ProjectTrees, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { projects::trees(&db, msg.id).await })
    }
}

/// Imports a project document and answers the project's whole tree (the loads v2 `POST /api/project`).
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<ProjectTree>")]
pub struct ImportProjectTree {
    /// The document, as sent.
    pub document: Value,
}

impl Handler<ImportProjectTree> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<ProjectTree>>;

    fn handle(&mut self, msg: ImportProjectTree, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            let spec = validate::project(&msg.document, &limits).map_err(invalid)?;
            let report = projects::import(&db, &spec.value, spec.warnings).await?;
            let mut trees = projects::trees(&db, Some(report.project.project.id)).await?;
            Ok(trees.remove(0))
        })
    }
}

/// Makes a finished run of a plan its baseline, replacing any other.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<BaselineView>")]
pub struct SetBaseline {
    /// The plan.
    pub plan_id: Uuid,
    /// The finished run to make the baseline.
    pub run_id: Uuid,
}

impl Handler<SetBaseline> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<BaselineView>>;

    fn handle(&mut self, msg: SetBaseline, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { plans::set_baseline(&db, msg.plan_id, msg.run_id).await })
    }
}

/// Reads a plan's baseline.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<BaselineView>")]
pub struct GetBaseline {
    /// The plan.
    pub plan_id: Uuid,
}

impl Handler<GetBaseline> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<BaselineView>>;

    fn handle(&mut self, msg: GetBaseline, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { plans::baseline(&db, msg.plan_id).await })
    }
}

/// Removes a plan's baseline.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<()>")]
pub struct ClearBaseline {
    /// The plan.
    pub plan_id: Uuid,
}

impl Handler<ClearBaseline> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<()>>;

    fn handle(&mut self, msg: ClearBaseline, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { plans::clear_baseline(&db, msg.plan_id).await })
    }
}

/// Compares a finished run with its plan's baseline or another finished run.
#[derive(Debug, Message)]
#[rtype(result = "CatalogResult<Comparison>")]
pub struct CompareRuns {
    /// The finished run.
    pub run_id: Uuid,
    /// What to compare the run with.
    pub to: CompareTo,
}

impl Handler<CompareRuns> for CatalogActor {
    type Result = ResponseFuture<CatalogResult<Comparison>>;

    fn handle(&mut self, msg: CompareRuns, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { runs::compare(&db, msg.run_id, msg.to).await })
    }
}
