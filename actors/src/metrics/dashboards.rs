//! A run's Grafana dashboard: rendered from its plan's template (`domain::dashboard`
//! builds the model, `infra::grafana` renders and talks to Grafana), published as the
//! run starts and again, closed on its time range, as it ends; moments of the run are
//! annotations on it.

use actix::{Context, Handler, Message, ResponseFuture};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::MetricsActor;
use crate::domain::dashboard;
use crate::domain::{DomainError, ValidationErrors};
use crate::infra::grafana::{DashboardError, Dashboards, Grafana};
use crate::store::{plans, runs};

/// How run dashboards are made and published.
#[derive(Clone)]
pub struct DashboardSettings {
    /// The templates.
    pub templates: Dashboards,
    /// The Grafana data source name of the InfluxDB database.
    pub datasource: String,
    /// Where to publish them, if anywhere.
    pub grafana: Option<Grafana>,
}

fn problem(e: DashboardError) -> DomainError {
    DomainError::Invalid(ValidationErrors::one("dashboard", e.to_string()))
}

/// Renders the dashboard of a stored run (its plan's template), closed at `until` when given;
/// with InfluxDB configured, a run with a monitor step reads its own database.
pub(super) async fn render(
    db: &DatabaseConnection,
    settings: &DashboardSettings,
    run_id: Uuid,
    until: Option<chrono::DateTime<chrono::Utc>>,
    influx_configured: bool,
) -> Result<serde_json::Value, DomainError> {
    let run = runs::get(db, run_id).await?;
    let plan = plans::get(db, run.plan_id).await?;
    let own = (influx_configured && plan.steps.iter().any(|s| s.spec.monitor)).then(|| dashboard::monitor_database(run_id));
    let metrics = runs::metrics(db, run_id).await?;
    let mut model = dashboard::model(&run, &metrics, &settings.datasource, own.as_deref());
    if let Some(until) = until {
        model.from = dashboard::rfc3339(run.started_at.unwrap_or(run.created_at));
        model.to = dashboard::rfc3339(until);
        model.refresh = String::new();
    }
    settings.templates.render(plan.dashboard.as_deref(), &model).map_err(problem)
}

/// Renders the run's dashboard (see `render`), pushes it to `grafana` and records its
/// URL; answers the URL.
pub(super) async fn publish(
    db: &DatabaseConnection,
    settings: &DashboardSettings,
    grafana: &Grafana,
    run_id: Uuid,
    until: Option<chrono::DateTime<chrono::Utc>>,
    influx_configured: bool,
) -> Result<String, DomainError> {
    let json = render(db, settings, run_id, until, influx_configured).await?;
    let url = grafana.push(&json).await.map_err(problem)?;
    runs::set_dashboard_url(db, run_id, &url).await?;
    Ok(url)
}

/// Marks a moment on the run's dashboard (tags `loads` and `tag`); a failure is logged.
pub(super) async fn annotate(grafana: &Grafana, run_id: Uuid, at_ms: i64, text: &str, tag: &str) {
    if let Err(e) = grafana.annotate(&dashboard::uid_of(run_id), at_ms, text, &["loads", tag]).await {
        tracing::warn!(%run_id, error = %e, "a {tag} was not marked on the dashboard");
    }
}

/// Publishes a live run's dashboard to Grafana (time range the last 15 minutes,
/// refreshing) and records its URL; answers it, or `None` without Grafana.
/// `FinishRun` publishes it again with the run's time range.
#[derive(Debug, Message)]
#[rtype(result = "Option<String>")]
pub struct PublishDashboard {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<PublishDashboard> for MetricsActor {
    type Result = ResponseFuture<Option<String>>;

    fn handle(&mut self, msg: PublishDashboard, _: &mut Context<Self>) -> Self::Result {
        let (db, dashboards, configured) = (self.db.clone(), self.dashboards.clone(), self.influx.is_some());
        Box::pin(async move {
            let grafana = dashboards.grafana.as_ref()?;
            match publish(&db, &dashboards, grafana, msg.run_id, None, configured).await {
                Ok(url) => {
                    tracing::info!(run_id = %msg.run_id, %url, "live dashboard published");
                    Some(url)
                }
                Err(e) => {
                    tracing::warn!(run_id = %msg.run_id, error = %e, "live dashboard not published");
                    None
                }
            }
        })
    }
}

/// The run's dashboard JSON (whether or not Grafana is configured).
#[derive(Debug, Message)]
#[rtype(result = "Result<serde_json::Value, DomainError>")]
pub struct RenderDashboard {
    /// The run.
    pub run_id: Uuid,
}

impl Handler<RenderDashboard> for MetricsActor {
    type Result = ResponseFuture<Result<serde_json::Value, DomainError>>;

    fn handle(&mut self, msg: RenderDashboard, _: &mut Context<Self>) -> Self::Result {
        let (db, settings, configured) = (self.db.clone(), self.dashboards.clone(), self.influx.is_some());
        Box::pin(async move { render(&db, &settings, msg.run_id, None, configured).await })
    }
}
