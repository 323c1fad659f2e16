//! `loads plan validate`: reads a project or plan file and reports every problem;
//! `loads plan estimate`: what its plans cost on EC2.

use std::path::Path;

use anyhow::Context as _;
use loads_actors::domain::cost::{self, Estimate};
use loads_actors::domain::parse::{parse_document, DocumentFormat};
use loads_actors::domain::validate::{self, Limits};
use loads_actors::domain::Env;
use loads_actors::settings::CostSettings;
use serde_json::Value;

/// Reads `file` as JSON, TOML or YAML by its extension.
pub fn read_document(file: &Path) -> anyhow::Result<Value> {
    let format = DocumentFormat::from_path(file)
        .with_context(|| format!("{}: cannot tell the format; name it .json, .toml, .yaml or .yml", file.display()))?;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    parse_document(&text, format).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

pub fn parse_env(pairs: &[String]) -> Result<Env, String> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("--env {p:?}: must be KEY=VALUE")),
        })
        .collect()
}

/// Validates `file`; exit 0 when valid, 1 when not, 2 when it cannot be read.
pub fn validate(file: &Path, env: &[String], limits: &Limits) -> u8 {
    let document = match read_document(file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let run_env = match parse_env(env) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let is_single_plan = document.get("steps").is_some() && document.get("plans").is_none();
    let checked = if is_single_plan {
        validate::plan_with_run_env(&document, limits, &run_env).map(|v| (format!("plan {:?}", v.value.name), vec![v.value], v.warnings))
    } else {
        validate::project_with_run_env(&document, limits, &run_env)
            .map(|v| (format!("project {:?}", v.value.name), v.value.plans, v.warnings))
    };
    let (what, plans, warnings) = match checked {
        Ok(ok) => ok,
        Err(errors) => {
            eprintln!("{}: {errors}", file.display());
            return 1;
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let steps: usize = plans.iter().map(|p| p.steps.len()).sum();
    println!("{}: ok: {what}, {} plan(s), {steps} step(s)", file.display(), plans.len());
    0
}

/// What to estimate and how to print it.
pub struct EstimateArgs<'a> {
    /// The project or plan file.
    pub file: &'a Path,
    /// Only this plan of a project.
    pub plan: Option<&'a str>,
    /// Print the estimates as JSON.
    pub json: bool,
}

/// Prints what each plan of `file` costs on EC2 at most; exit 0, 1 when a plan is
/// invalid or over this configuration's budget, 2 when the file cannot be read.
pub fn estimate(args: EstimateArgs, limits: &Limits, cost: &CostSettings) -> u8 {
    let document = match read_document(args.file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let is_single_plan = document.get("steps").is_some() && document.get("plans").is_none();
    let plans = if is_single_plan {
        validate::plan(&document, limits).map(|v| vec![v.value])
    } else {
        validate::project(&document, limits).map(|v| v.value.plans)
    };
    let plans = match plans {
        Ok(plans) => plans,
        Err(errors) => {
            eprintln!("{}: {errors}", args.file.display());
            return 1;
        }
    };
    let plans: Vec<_> = plans.into_iter().filter(|p| args.plan.is_none_or(|name| p.name == name)).collect();
    if plans.is_empty() {
        eprintln!("{}: no plan named {:?}", args.file.display(), args.plan.unwrap_or_default());
        return 1;
    }
    let provider = if cost.cloud_regions.is_some() { "ec2" } else { "local" };
    let mut estimates = Vec::new();
    for plan in &plans {
        let mut e = cost::estimate(plan, &cost.prices, &cost::SpotPrices::new(), cost.setup_seconds, provider);
        if cost.cloud_regions.is_some() {
            // Offline, nothing is recorded: the monthly cap is checked against this run alone.
            e.over_budget = cost.budget.refusal(&e, 0.0);
        }
        estimates.push(e);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&estimates).unwrap_or_default());
    } else {
        for e in &estimates {
            print!("{}", render(e));
        }
    }
    u8::from(estimates.iter().any(|e| e.over_budget.is_some()))
}

/// An estimate as a table.
fn render(e: &Estimate) -> String {
    let figure = |x: Option<f64>, digits: usize| x.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"));
    let mut out = format!(
        "plan {:?}: on EC2 at most {} {} over {} instance-hours ({} instances)\n",
        e.plan,
        figure(e.usd, 4),
        e.prices.currency,
        figure(e.instance_hours, 3),
        e.instances
    );
    out += &format!(
        "  {:<20} {:>9} {:<11} {:<14} {:<9} {:>9} {:>10} {:>10}\n",
        "step", "instances", "type", "region", "market", "s/inst", "inst-hours", "usd"
    );
    for s in &e.steps {
        out += &format!(
            "  {:<20} {:>9} {:<11} {:<14} {:<9} {:>9} {:>10} {:>10}\n",
            s.step,
            s.instances,
            s.instance_type,
            s.region,
            s.market.as_str(),
            s.seconds_per_instance.map_or_else(|| "no limit".to_string(), |x| x.to_string()),
            figure(s.instance_hours, 3),
            figure(s.usd, 4)
        );
    }
    for note in &e.notes {
        out += &format!("  note: {note}\n");
    }
    if e.provider == "local" {
        out += "  note: this broker runs nodes on the local Docker engine (pool.provider = \"local\"): a run there costs nothing\n";
    }
    if let Some(why) = &e.over_budget {
        out += &format!("  over budget: {why}\n");
    }
    out += &format!(
        "  prices: {} ({}), each instance charged {} s of setup before its step\n",
        e.prices.source, e.prices.date, e.setup_seconds
    );
    out
}
