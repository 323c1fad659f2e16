//! What starting a run checks before anything is recorded or launched, and what a
//! plan's run is estimated to cost with this broker's prices.

use actix::Addr;
use sea_orm::DatabaseConnection;
use serde_json::Value;
use uuid::Uuid;

use super::StartRun;
use crate::domain::cost::{self, Estimate};
use crate::domain::validate;
use crate::domain::{ConflictCode, DomainError, RefusalCode};
use crate::domain::{Env, PlanSpec};
use crate::domain::{FieldError, ValidationErrors};
use crate::pool::{Ec2PoolActor, InstanceLimits, SpotPrices};
use crate::settings::{CostSettings, RunSettings};
use crate::store::{plans, runs};

/// The dollars this broker's runs recorded this month, when a monthly cap needs them.
pub(super) async fn month_to_date(db: &DatabaseConnection, cost: &CostSettings) -> Result<f64, DomainError> {
    match cost.budget.max_usd_per_month {
        Some(_) => runs::cost_since(db, crate::run_cost::month_start(), Uuid::nil()).await,
        None => Ok(0.0),
    }
}

/// A plan's estimate with this broker's prices and provider; on EC2, spot steps at the current spot prices.
pub(super) async fn estimate(spec: &crate::domain::PlanSpec, cost: &CostSettings, pool: &Addr<Ec2PoolActor>) -> Estimate {
    let provider = if cost.cloud_regions.is_some() { "ec2" } else { "local" };
    let wanted: Vec<(String, String)> = spec
        .steps
        .iter()
        .filter(|s| !s.monitor && s.market != crate::domain::Market::OnDemand)
        .flat_map(|s| s.instance_region.names().into_iter().map(|r| (r, s.instance_type.clone())))
        .collect();
    let spot = if cost.cloud_regions.is_some() && !wanted.is_empty() {
        pool.send(SpotPrices { wanted }).await.unwrap_or_default()
    } else {
        cost::SpotPrices::new()
    };
    let mut estimate = cost::estimate(spec, &cost.prices, &spot, cost.setup_seconds, provider);
    if cost.cloud_regions.is_some() {
        let regions: std::collections::BTreeSet<String> = estimate.steps.iter().map(|s| s.region.clone()).collect();
        let limits = pool.send(InstanceLimits { regions: regions.into_iter().collect() }).await.unwrap_or_default();
        estimate.check_quotas(&limits);
    }
    estimate
}

/// A run that passed every check before it is recorded.
pub(super) struct Checked {
    pub(super) plan: crate::domain::views::PlanView,
    pub(super) run_env: Env,
    pub(super) unset: Vec<String>,
    pub(super) estimate: Estimate,
}

/// Everything starting a run checks before anything is recorded or launched: the run env,
/// the plan enabled, its variables and secrets defined, its volumes ones this broker mounts, on EC2 every step's region
/// configured and the estimate within the budget.
pub(super) async fn preflight(
    db: &DatabaseConnection,
    pool: &Addr<Ec2PoolActor>,
    settings: &RunSettings,
    msg: &StartRun,
) -> Result<Checked, DomainError> {
    let mut env = msg.env.clone();
    let mut unset = Vec::new();
    if let (true, Some(Value::Object(map))) = (msg.null_is_unset, env.as_mut()) {
        unset = map.iter().filter(|(_, v)| v.is_null()).map(|(k, _)| k.clone()).collect();
        map.retain(|_, v| !v.is_null());
    }
    let run_env: Env = match &env {
        None | Some(Value::Null) => Env::new(),
        Some(v) => validate::run_env(v, &settings.limits).map_err(|mut e| {
            for f in &mut e.0 {
                f.path = if f.path.is_empty() { "env".into() } else { format!("env.{}", f.path) };
            }
            DomainError::Invalid(e)
        })?,
    };
    let plan = plans::get(db, msg.plan_id).await?;
    if !plan.plan.enabled {
        return Err(DomainError::conflict(
            ConflictCode::PlanDisabled,
            format!("plan {:?} is disabled; enable it to run it", plan.plan.name),
        ));
    }
    let spec = plan.spec();
    validate::plan_variables(&spec, &run_env).map_err(DomainError::Invalid)?;
    validate::runnable(&spec, &settings.limits).map_err(DomainError::Invalid)?;
    settings.secrets.check(&spec, &run_env).map_err(DomainError::Invalid)?;
    let cost = &settings.cost;
    if let Some(regions) = &cost.cloud_regions {
        let unconfigured = unconfigured_regions(&spec, regions);
        if !unconfigured.is_empty() {
            return Err(DomainError::Invalid(ValidationErrors(unconfigured)));
        }
    }
    let estimate = estimate(&spec, cost, pool).await;
    if cost.cloud_regions.is_some() {
        if let Some(why) = cost.budget.refusal(&estimate, month_to_date(db, cost).await?) {
            return Err(DomainError::Refused { code: RefusalCode::OverBudget, message: format!("plan {:?}: {why}", plan.plan.name) });
        }
    }
    Ok(Checked { plan, run_env, unset, estimate })
}

/// Of a plan's steps (monitor steps aside), each region this broker has not configured,
/// as an error on that step's `instance_region`.
fn unconfigured_regions(spec: &PlanSpec, regions: &[String]) -> Vec<FieldError> {
    let steps = spec.steps.iter().enumerate().filter(|(_, s)| !s.monitor);
    steps
        .flat_map(|(i, s)| {
            let missing = s.instance_region.names().into_iter().filter(|r| !regions.contains(r));
            missing.map(move |r| {
                let message =
                    format!("step {:?}: region {r:?} is not configured on this broker (ec2.regions has: {})", s.name, regions.join(", "));
                FieldError::new(format!("steps[{i}].instance_region"), message)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Limits;

    #[test]
    fn a_step_in_a_region_this_broker_lacks_is_an_error_on_its_instance_region() {
        let plan = serde_json::json!({"name": "p", "steps": [
            {"name": "a", "container_name": "x", "instance_region": "us-west-2"},
            {"name": "b", "container_name": "x", "instance_region": "eu-west-1"},
        ]});
        let spec = validate::plan(&plan, &Limits::default()).unwrap().value;
        let errors = unconfigured_regions(&spec, &["us-west-2".to_string()]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "steps[1].instance_region");
        assert!(errors[0].message.contains("\"eu-west-1\"") && errors[0].message.contains("ec2.regions has: us-west-2"), "{errors:?}");
        assert!(unconfigured_regions(&spec, &["us-west-2".to_string(), "eu-west-1".to_string()]).is_empty());
    }
}
