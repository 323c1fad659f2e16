//! A run's results as stored: its metric summaries, thresholds and verdict, its
//! comparison with another run, and its series of merged windows for the charts.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait};
use uuid::Uuid;

use super::super::entities::{metric_summary, run, run_series};
use super::{get, with_step_names};
use crate::domain::views::{MetricSummaryView, ThresholdView};
use crate::domain::{ConflictCode, DomainError};

/// Stores the metric summaries of a run (replacing earlier ones).
pub async fn record_metrics<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    run_id: Uuid,
    rows: &[MetricSummaryView],
) -> Result<(), DomainError> {
    super::super::persist("the metrics summary", || write_metrics(db, run_id, rows)).await
}

/// Summary rows inserted per statement: each row binds 18 values, and SQLite takes
/// at most 32766 per statement (PostgreSQL 65535).
const SUMMARY_ROWS_PER_INSERT: usize = 500;

/// Replaces a run's summary in one transaction, however many rows it has.
async fn write_metrics<C: ConnectionTrait + TransactionTrait>(db: &C, run_id: Uuid, rows: &[MetricSummaryView]) -> Result<(), DomainError> {
    let txn = db.begin().await?;
    metric_summary::Entity::delete_many().filter(metric_summary::Column::RunId.eq(run_id)).exec(&txn).await?;
    let now = Utc::now();
    for chunk in rows.chunks(SUMMARY_ROWS_PER_INSERT) {
        metric_summary::Entity::insert_many(chunk.iter().map(|m| summary_model(run_id, m, now))).exec(&txn).await?;
    }
    txn.commit().await?;
    Ok(())
}

fn summary_model(run_id: Uuid, m: &MetricSummaryView, now: DateTime<Utc>) -> metric_summary::ActiveModel {
    metric_summary::ActiveModel {
        id: Set(Uuid::new_v4()),
        run_id: Set(run_id),
        step_id: Set(m.step_id),
        metric: Set(m.metric.clone()),
        kind: Set(m.kind.clone()),
        count: Set(m.count),
        rate: Set(m.rate),
        min: Set(m.min),
        mean: Set(m.mean),
        p50: Set(m.p50),
        p90: Set(m.p90),
        p95: Set(m.p95),
        p99: Set(m.p99),
        max: Set(m.max),
        unit: Set(m.unit.clone()),
        relative_error: Set(m.relative_error),
        region: Set(m.region.clone()),
        created_at: Set(now),
    }
}

/// The metric summaries of a run, by step and metric.
pub async fn metrics(db: &impl ConnectionTrait, run_id: Uuid) -> Result<Vec<MetricSummaryView>, DomainError> {
    let (run, names) = with_step_names(db, run_id).await?;
    let rows = metric_summary::Entity::find()
        .filter(metric_summary::Column::RunId.eq(run_id))
        .order_by_asc(metric_summary::Column::Metric)
        .all(db)
        .await?;
    let mut out: Vec<MetricSummaryView> = rows
        .into_iter()
        .map(|m| MetricSummaryView {
            step_name: names.get(&m.step_id).cloned().unwrap_or_default(),
            step_id: m.step_id,
            metric: m.metric,
            kind: m.kind,
            count: m.count,
            rate: m.rate,
            min: m.min,
            mean: m.mean,
            p50: m.p50,
            p90: m.p90,
            p95: m.p95,
            p99: m.p99,
            max: m.max,
            unit: m.unit,
            relative_error: m.relative_error,
            region: m.region,
        })
        .collect();
    let order: HashMap<Uuid, usize> = run.step_records.iter().enumerate().map(|(i, r)| (r.step_id, i)).collect();
    out.sort_by_key(|m| order.get(&m.step_id).copied().unwrap_or(usize::MAX));
    Ok(out)
}

/// Records how the run's thresholds stand.
pub async fn set_thresholds(db: &impl ConnectionTrait, id: Uuid, thresholds: &[ThresholdView]) -> Result<(), DomainError> {
    let text = serde_json::to_string(thresholds).unwrap_or_default();
    run::ActiveModel { id: Set(id), thresholds: Set(Some(text)), ..Default::default() }.update(db).await?;
    Ok(())
}

/// Which run another is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareTo {
    /// The plan's baseline.
    Baseline,
    /// This run.
    Run(Uuid),
}

/// Compares finished run `id` with its plan's baseline or another run, checking its plan's regression rules.
pub async fn compare(db: &impl ConnectionTrait, id: Uuid, to: CompareTo) -> Result<crate::domain::compare::Comparison, DomainError> {
    let run = get(db, id).await?;
    let plan = super::super::plans::get(db, run.plan_id).await?;
    let other = match to {
        CompareTo::Run(other) => other,
        CompareTo::Baseline => plan.baseline_run_id.ok_or_else(|| {
            DomainError::conflict(
                ConflictCode::NoBaseline,
                format!("plan {:?} has no baseline; set one with POST /api/v1/plans/{}/baseline", plan.plan.name, plan.plan.id),
            )
        })?,
    };
    let other_run = get(db, other).await?;
    for r in [&run, &other_run] {
        if !r.state.is_finished() {
            return Err(DomainError::conflict(
                ConflictCode::RunLive,
                format!("run {} is {}; runs are compared once finished", r.id, r.state.as_str()),
            ));
        }
    }
    let (now, then) = (metrics(db, id).await?, metrics(db, other).await?);
    let against_baseline = plan.baseline_run_id == Some(other);
    Ok(crate::domain::compare::compare(id, &now, other, &then, &plan.compare, against_baseline))
}

/// Adds windows to the runs' series: (run, step name, window start in Unix ms, the point as JSON).
pub async fn append_series(db: &impl ConnectionTrait, rows: Vec<(Uuid, String, i64, String)>) -> Result<(), DomainError> {
    if rows.is_empty() {
        return Ok(());
    }
    let models = rows.into_iter().map(|(run_id, step, start_ms, point)| run_series::ActiveModel {
        id: Set(Uuid::new_v4()),
        run_id: Set(run_id),
        step: Set(step),
        start_ms: Set(start_ms),
        point: Set(point),
    });
    run_series::Entity::insert_many(models).exec(db).await?;
    Ok(())
}

/// At most this many points of one step are answered; longer series keep every n-th window.
pub const SERIES_POINTS: usize = 3600;

/// The run's series, per step in the run's step order, each point as stored (JSON), oldest first.
pub async fn series(db: &impl ConnectionTrait, run_id: Uuid) -> Result<Vec<(String, Vec<serde_json::Value>)>, DomainError> {
    let (run, _) = with_step_names(db, run_id).await?;
    let rows =
        run_series::Entity::find().filter(run_series::Column::RunId.eq(run_id)).order_by_asc(run_series::Column::StartMs).all(db).await?;
    let mut steps: Vec<(String, Vec<serde_json::Value>)> = run.step_records.iter().map(|r| (r.step_name.clone(), Vec::new())).collect();
    for row in rows {
        let Ok(point) = serde_json::from_str::<serde_json::Value>(&row.point) else { continue };
        match steps.iter_mut().find(|(name, _)| *name == row.step) {
            Some((_, points)) => points.push(point),
            None => steps.push((row.step, vec![point])),
        }
    }
    for (_, points) in &mut steps {
        thin(points, SERIES_POINTS);
    }
    Ok(steps)
}

/// Keeps every n-th of `points` (the first among them), n the least that leaves at most `max`.
fn thin<T>(points: &mut Vec<T>, max: usize) {
    let every = points.len().div_ceil(max.max(1)).max(1);
    if every > 1 {
        let mut i = 0;
        points.retain(|_| {
            let keep = i % every == 0;
            i += 1;
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_series_keeps_every_nth_window_from_the_first_and_a_short_one_all() {
        let mut short: Vec<u32> = (0..10).collect();
        thin(&mut short, 10);
        assert_eq!(short.len(), 10);
        let mut long: Vec<u32> = (0..10).collect();
        thin(&mut long, 4);
        assert_eq!(long, vec![0, 3, 6, 9], "every third, from the first");
        let mut twice: Vec<u32> = (0..7201).collect();
        thin(&mut twice, 3600);
        assert!(twice.len() <= 3600 && twice[0] == 0 && twice[1] == 3, "{}", twice.len());
        let mut none: Vec<u32> = Vec::new();
        thin(&mut none, 0);
        assert!(none.is_empty());
    }
}
