//! Projects: create (with plans), read, rename, delete, and import of project files.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::entities::{plan, project};
use super::plans::{self, Replaced};
use super::runs::{self, RunFilter};
use super::{clamp_page, on_unique};
use crate::domain::views::{ImportReport, Page, PlanTree, ProjectDetail, ProjectTree, ProjectView};
use crate::domain::{ConflictCode, DomainError, FieldError, ProjectSpec};

async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<project::Model, DomainError> {
    project::Entity::find_by_id(id).one(db).await?.ok_or_else(|| DomainError::not_found("project", id))
}

async fn view(db: &impl ConnectionTrait, p: project::Model) -> Result<ProjectView, DomainError> {
    let plan_count = plan::Entity::find().filter(plan::Column::ProjectId.eq(p.id)).count(db).await?;
    Ok(ProjectView { id: p.id, name: p.name, home_page: p.home_page, plan_count, created_at: p.created_at, updated_at: p.updated_at })
}

/// A project with a summary of each of its plans.
pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> Result<ProjectDetail, DomainError> {
    let model = find(db, id).await?;
    let plan_rows = plan::Entity::find().filter(plan::Column::ProjectId.eq(id)).order_by_asc(plan::Column::Name).all(db).await?;
    Ok(ProjectDetail { project: view(db, model).await?, plans: plans::summaries(db, plan_rows).await? })
}

/// One page of projects, by name.
pub async fn list(db: &impl ConnectionTrait, limit: u64, offset: u64) -> Result<Page<ProjectView>, DomainError> {
    let (limit, offset) = clamp_page(limit, offset);
    let total = project::Entity::find().count(db).await?;
    let rows = project::Entity::find().order_by_asc(project::Column::Name).limit(limit).offset(offset).all(db).await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(view(db, row).await?);
    }
    Ok(Page { items, total, limit, offset })
}

fn name_taken(name: &str) -> String {
    format!("a project named {name:?} already exists; import the file to add or update its plans")
}

async fn insert(db: &impl ConnectionTrait, name: &str, home_page: Option<&str>) -> Result<Uuid, DomainError> {
    let now = Utc::now();
    let id = Uuid::new_v4();
    project::ActiveModel {
        id: Set(id),
        name: Set(name.to_string()),
        home_page: Set(home_page.map(str::to_string)),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .map_err(|e| on_unique(e, ConflictCode::ProjectExists, || name_taken(name)))?;
    Ok(id)
}

/// Creates a project with its plans; a project of the same name is a conflict.
pub async fn create<C: ConnectionTrait + TransactionTrait>(db: &C, spec: &ProjectSpec) -> Result<ProjectDetail, DomainError> {
    let txn = db.begin().await?;
    if project::Entity::find().filter(project::Column::Name.eq(&spec.name)).count(&txn).await? > 0 {
        return Err(DomainError::conflict(ConflictCode::ProjectExists, name_taken(&spec.name)));
    }
    let id = insert(&txn, &spec.name, spec.home_page.as_deref()).await?;
    for plan in &spec.plans {
        plans::insert(&txn, id, plan).await?;
    }
    txn.commit().await?;
    get(db, id).await
}

/// Renames a project or changes its home page.
pub async fn update(db: &impl ConnectionTrait, id: Uuid, name: &str, home_page: Option<&str>) -> Result<ProjectDetail, DomainError> {
    find(db, id).await?;
    project::ActiveModel {
        id: Set(id),
        name: Set(name.to_string()),
        home_page: Set(home_page.map(str::to_string)),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .update(db)
    .await
    .map_err(|e| on_unique(e, ConflictCode::ProjectExists, || name_taken(name)))?;
    get(db, id).await
}

/// Deletes a project with its plans, steps and finished runs; refused while a run is live.
pub async fn delete<C: ConnectionTrait + TransactionTrait>(db: &C, id: Uuid) -> Result<(), DomainError> {
    let txn = db.begin().await?;
    let model = find(&txn, id).await?;
    let plan_ids: Vec<Uuid> =
        plan::Entity::find().filter(plan::Column::ProjectId.eq(id)).select_only().column(plan::Column::Id).into_tuple().all(&txn).await?;
    plans::refuse_live_runs(&txn, &plan_ids, &format!("project {:?}", model.name)).await?;
    project::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Imports a project file: the project is created when missing, each plan is
/// created, replaced or left alone. All or nothing: one refused plan (it has
/// runs and its steps differ) leaves the database as it was.
pub async fn import<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    spec: &ProjectSpec,
    warnings: Vec<FieldError>,
) -> Result<ImportReport, DomainError> {
    let txn = db.begin().await?;
    let existing = project::Entity::find().filter(project::Column::Name.eq(&spec.name)).one(&txn).await?;
    let project_created = existing.is_none();
    let id = match existing {
        Some(p) => {
            if spec.home_page.is_some() && spec.home_page != p.home_page {
                project::ActiveModel {
                    id: Set(p.id),
                    home_page: Set(spec.home_page.clone()),
                    updated_at: Set(Utc::now()),
                    ..Default::default()
                }
                .update(&txn)
                .await?;
            }
            p.id
        }
        None => insert(&txn, &spec.name, spec.home_page.as_deref()).await?,
    };
    let (mut created, mut updated, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
    for plan in &spec.plans {
        let current =
            plan::Entity::find().filter(plan::Column::ProjectId.eq(id)).filter(plan::Column::Name.eq(&plan.name)).one(&txn).await?;
        match current {
            None => {
                plans::insert(&txn, id, plan).await?;
                created.push(plan.name.clone());
            }
            Some(current) => match plans::replace_in(&txn, current.id, plan).await? {
                Replaced::Unchanged => unchanged.push(plan.name.clone()),
                Replaced::Updated => updated.push(plan.name.clone()),
            },
        }
    }
    txn.commit().await?;
    Ok(ImportReport { project: get(db, id).await?, project_created, created, updated, unchanged, warnings })
}

/// Projects (all, or the one with `id`) with every plan, step and run.
pub async fn trees(db: &impl ConnectionTrait, id: Option<Uuid>) -> Result<Vec<ProjectTree>, DomainError> {
    let mut query = project::Entity::find().order_by_asc(project::Column::Name);
    if let Some(id) = id {
        query = query.filter(project::Column::Id.eq(id));
    }
    let rows = query.all(db).await?;
    if let (Some(id), true) = (id, rows.is_empty()) {
        return Err(DomainError::not_found("project", id));
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let plan_ids: Vec<Uuid> = plan::Entity::find()
            .filter(plan::Column::ProjectId.eq(row.id))
            .order_by_asc(plan::Column::Name)
            .select_only()
            .column(plan::Column::Id)
            .into_tuple()
            .all(db)
            .await?;
        let mut plans_out = Vec::with_capacity(plan_ids.len());
        for plan_id in plan_ids {
            let filter = RunFilter { plan_id: Some(plan_id), ..RunFilter::default() };
            let runs = runs::all(db, &filter).await?;
            plans_out.push(PlanTree { plan: plans::get(db, plan_id).await?, runs });
        }
        out.push(ProjectTree { project: view(db, row).await?, plans: plans_out });
    }
    Ok(out)
}
