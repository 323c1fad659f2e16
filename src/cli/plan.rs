//! `loads plan validate`: reads a project or plan file and reports every problem.

use std::path::Path;

use anyhow::Context as _;
use loads_actors::domain::parse::{parse_document, DocumentFormat};
use loads_actors::domain::validate::{self, Limits};
use loads_actors::domain::Env;
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
