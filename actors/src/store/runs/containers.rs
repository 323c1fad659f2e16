//! The records of a run's containers: each one's exit and last output, kept when it
//! is removed, and read back with the live ones.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use uuid::Uuid;

use super::super::entities::container;
use super::with_step_names;
use crate::domain::views::ContainerView;
use crate::domain::DomainError;

/// What to record of a container when it is removed.
#[derive(Clone, Debug)]
pub struct ContainerRecord {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: Uuid,
    /// The node.
    pub node: String,
    /// `relay` or `step`.
    pub role: String,
    /// The engine's id.
    pub docker_id: String,
    /// The image.
    pub image: String,
    /// How it exited.
    pub exit_code: Option<i64>,
    /// Its output.
    pub logs: String,
    /// When it started.
    pub started_at: chrono::DateTime<Utc>,
    /// When it exited, as its engine recorded it.
    pub exited_at: Option<chrono::DateTime<Utc>>,
}

/// Records a removed container.
pub async fn record_container(db: &impl ConnectionTrait, c: ContainerRecord) -> Result<(), DomainError> {
    super::super::persist("a container record", || write_container(db, c.clone())).await
}

async fn write_container(db: &impl ConnectionTrait, c: ContainerRecord) -> Result<(), DomainError> {
    container::ActiveModel {
        id: Set(Uuid::new_v4()),
        run_id: Set(c.run_id),
        step_id: Set(c.step_id),
        node: Set(c.node),
        role: Set(c.role),
        docker_id: Set(c.docker_id),
        image: Set(c.image),
        exit_code: Set(c.exit_code),
        logs: Set(c.logs),
        created_at: Set(c.started_at),
        exited_at: Set(c.exited_at),
        finished_at: Set(Some(Utc::now())),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// The recorded containers of a run, optionally of one step (by name) and one node.
pub async fn containers(
    db: &impl ConnectionTrait,
    run_id: Uuid,
    step: Option<&str>,
    node: Option<&str>,
) -> Result<Vec<ContainerView>, DomainError> {
    let (_, names) = with_step_names(db, run_id).await?;
    let mut query = container::Entity::find().filter(container::Column::RunId.eq(run_id));
    if let Some(step) = step {
        let ids: Vec<Uuid> = names.iter().filter(|(_, n)| n.as_str() == step).map(|(id, _)| *id).collect();
        if ids.is_empty() {
            return Err(DomainError::not_found("step", step));
        }
        query = query.filter(container::Column::StepId.is_in(ids));
    }
    if let Some(node) = node {
        query = query.filter(container::Column::Node.eq(node));
    }
    let rows = query.order_by_asc(container::Column::CreatedAt).order_by_asc(container::Column::Node).all(db).await?;
    Ok(rows
        .into_iter()
        .map(|c| ContainerView {
            step_name: names.get(&c.step_id).cloned().unwrap_or_default(),
            step_id: c.step_id,
            node: c.node,
            role: c.role,
            docker_id: c.docker_id,
            image: c.image,
            exit_code: c.exit_code,
            logs: c.logs,
            created_at: c.created_at,
            exited_at: c.exited_at,
            finished_at: c.finished_at,
        })
        .collect())
}
