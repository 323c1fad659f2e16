//! `loads run PLAN_FILE`: the whole loop in one command. Starts the broker's
//! actors in this process (the configured database, SQLite by default; the
//! local Docker engine), builds the images the plan needs when missing,
//! imports the file, runs the plan with live progress, prints a summary with
//! its thresholds and verdict, and exits with the verdict's code (0 passed,
//! 99 thresholds failed, 98 invalid, 1 error, 130 aborted). Ctrl-C aborts the
//! run cleanly. `--baseline` compares it with its plan's baseline at the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use loads_actors::broker::{AbortRun, RunLogs, RunMetrics, StartRun, Subscribe};
use loads_actors::catalog::{CompareRuns, ForkPlan, ImportProject, ProjectTrees, UpdatePlan};
use loads_actors::domain::compare::Comparison;
use loads_actors::domain::judge::shown;
use loads_actors::domain::usage::RunCost;
use loads_actors::domain::views::MetricSummaryView;
use loads_actors::domain::views::{RunView, StepState, ThresholdView, Verdict, SERIES_OVERFLOW};
use loads_actors::domain::{ConflictCode, DomainError};
use loads_actors::feed::{EventKind, RunEvent};
use loads_actors::infra::docker::Engine;
use loads_actors::store::runs::CompareTo;
use serde_json::{json, Value};

use crate::config::Settings;
use crate::images;
use crate::startup::Actors;

/// What `loads run` was asked to do.
pub struct RunArgs<'a> {
    /// The plan or project file.
    pub file: &'a Path,
    /// Which plan of a project file.
    pub plan: Option<&'a str>,
    /// The run env.
    pub env: &'a [String],
    /// Who runs it.
    pub owner: Option<String>,
    /// Compare the run with its plan's baseline at the end.
    pub baseline: bool,
}

/// Runs the plan; answers the exit code of its verdict.
pub async fn run(settings: &Settings, args: RunArgs<'_>) -> anyhow::Result<u8> {
    let mut document = super::plan::read_document(args.file)?;
    if document.get("steps").is_some() && document.get("plans").is_none() {
        let name = args.file.file_stem().map_or("plans".into(), |s| s.to_string_lossy().into_owned());
        document = json!({"name": name, "plans": [document]});
    }
    let env: BTreeMap<String, String> = super::plan::parse_env(args.env).map_err(|e| anyhow!(e))?;

    let engine = Engine::local().await.context("loads run needs a Docker engine")?;
    let binary = std::env::current_exe().context("cannot find this program's path")?;
    let wanted: Vec<String> = document["plans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["steps"].as_array().into_iter().flatten())
        .filter_map(|s| s["container_name"].as_str().map(str::to_string))
        .collect();
    let tags = std::iter::once(images::RELAY).chain(wanted.iter().map(String::as_str));
    for tag in images::ensure(&engine, tags, &binary).await? {
        eprintln!("built image {tag}");
    }

    let actors = Actors::start(settings).await?;
    let plan_id = import_plan(&actors, document, args.plan).await?;
    let env = (!env.is_empty()).then(|| json!(env));
    let run = match actors.broker.send(StartRun { plan_id, owner: args.owner, env, null_is_unset: false }).await? {
        Ok(run) => run,
        Err(DomainError::Invalid(e)) => bail!("{}: {e}", args.file.display()),
        Err(e) => return Err(e.into()),
    };
    println!("run {} of plan {:?}", run.id, run.plan_name);
    let final_run = follow(&actors, &run).await?;
    summary(&actors, &final_run).await?;
    if args.baseline {
        match actors.catalog.send(CompareRuns { run_id: final_run.id, to: CompareTo::Baseline }).await? {
            Ok(comparison) => print_comparison(&comparison),
            Err(DomainError::Conflict { code: ConflictCode::NoBaseline, .. }) => {
                println!(
                    "\nplan {:?} has no baseline yet: `loads baseline {}` makes this run its baseline",
                    final_run.plan_name, final_run.id
                );
            }
            Err(e) => eprintln!("warning: cannot compare with the baseline: {e}"),
        }
    }
    Ok(final_run.verdict.map_or(1, Verdict::exit_code))
}

/// Imports the file and answers the plan to run: the named one, or the only one.
/// A plan that already ran and has changed since is forked, so history stays true.
async fn import_plan(actors: &Actors, document: Value, wanted: Option<&str>) -> anyhow::Result<uuid::Uuid> {
    let plans: Vec<Value> = document["plans"].as_array().cloned().unwrap_or_default();
    let name = match wanted {
        Some(n) => n.to_string(),
        None if plans.len() == 1 => plans[0]["name"].as_str().unwrap_or_default().to_string(),
        None => {
            let names: Vec<&str> = plans.iter().filter_map(|p| p["name"].as_str()).collect();
            bail!("the file has {} plans ({}); choose one with --plan", names.len(), names.join(", "))
        }
    };
    let plan_doc =
        plans.iter().find(|p| p["name"] == name.as_str()).cloned().ok_or_else(|| anyhow!("no plan named {name:?} in the file"))?;
    let project_name = document["name"].as_str().unwrap_or_default().to_string();
    match actors.catalog.send(ImportProject { document }).await? {
        Ok(report) => {
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            report.project.plans.iter().find(|p| p.name == name).map(|p| p.id).ok_or_else(|| anyhow!("plan {name:?} vanished"))
        }
        Err(DomainError::Conflict { code: ConflictCode::PlanImmutable, .. }) => {
            let trees = actors.catalog.send(ProjectTrees { id: None }).await??;
            let current = trees
                .iter()
                .filter(|t| t.project.name == project_name)
                .flat_map(|t| &t.plans)
                .find(|p| p.plan.plan.name == name)
                .ok_or_else(|| anyhow!("plan {name:?} not found"))?;
            let fork = actors.catalog.send(ForkPlan { id: current.plan.plan.id, name: None }).await??;
            let mut doc = plan_doc;
            doc["name"] = json!(fork.plan.name);
            let updated = actors.catalog.send(UpdatePlan { id: fork.plan.id, document: doc }).await??;
            eprintln!("plan {name:?} has runs and changed since; running the changed copy {:?}", updated.plan.name);
            Ok(updated.plan.id)
        }
        Err(DomainError::Invalid(e)) => bail!("{e}"),
        Err(e) => Err(e.into()),
    }
}

struct StepLine {
    bar: ProgressBar,
    state: StepState,
    running: usize,
    exited: Vec<i64>,
    /// The last merged window's numbers: statsd lines per second and a timer's p95.
    last_window: Option<String>,
}

impl StepLine {
    fn render(&self) {
        let exits = if self.exited.is_empty() { String::new() } else { format!(", exit codes {:?}", self.exited) };
        let window = self.last_window.as_ref().map(|w| format!(" · {w}")).unwrap_or_default();
        self.bar.set_message(format!("{} ({} running{exits}){window}", self.state.as_str(), self.running));
    }
}

/// Shows the run's progress until it ends; Ctrl-C aborts it. Answers the final run.
async fn follow(actors: &Actors, run: &RunView) -> anyhow::Result<RunView> {
    let sub = actors.broker.send(Subscribe { run_id: run.id, since: 0 }).await??;
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{spinner} {prefix:>24} {elapsed:>4} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut lines: BTreeMap<String, StepLine> = BTreeMap::new();
    for record in &run.step_records {
        let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(record.step_name.clone()));
        bar.enable_steady_tick(Duration::from_millis(200));
        let line = StepLine { bar, state: record.state, running: 0, exited: Vec::new(), last_window: None };
        line.render();
        lines.insert(record.step_name.clone(), line);
    }
    // Off a terminal the bars are hidden, so every event is a plain line instead.
    let plain = multi.is_hidden();
    let say = move |multi: &MultiProgress, line: String| {
        if plain {
            eprintln!("{line}");
        } else {
            let _ = multi.println(line);
        }
    };
    let mut apply = |event: &RunEvent, multi: &MultiProgress| match &event.kind {
        EventKind::Run { state, reason } => {
            say(multi, format!("run {}{}", state.as_str(), reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()));
        }
        EventKind::Step { step, state, reason } => {
            if let Some(line) = lines.get_mut(step) {
                line.state = *state;
                line.render();
                if matches!(state, StepState::Completed | StepState::Failed | StepState::Skipped) {
                    line.bar.finish();
                }
            }
            match reason {
                Some(reason) => say(multi, format!("step {step}: {}: {reason}", state.as_str())),
                None if plain => say(multi, format!("step {step}: {}", state.as_str())),
                None => {}
            }
        }
        EventKind::Container { step, node, state, exit_code, .. } => {
            if plain && state != "removed" {
                let code = exit_code.map(|c| format!(" with code {c}")).unwrap_or_default();
                say(multi, format!("step {step}: node {node}: container {state}{code}"));
            }
            if let Some(line) = lines.get_mut(step) {
                match state.as_str() {
                    "started" => line.running += 1,
                    "exited" => {
                        line.running = line.running.saturating_sub(1);
                        line.exited.extend(*exit_code);
                    }
                    _ => {}
                }
                line.render();
            }
        }
        EventKind::Metrics { step, counters, timers, nodes, .. } => {
            if let Some(line) = lines.get_mut(step) {
                let count: f64 = counters.values().sum();
                let p95 = timers.iter().next().map(|(k, t)| format!(", {k} p95 {:.1} ms", t.p95)).unwrap_or_default();
                line.last_window = Some(format!("{count:.0} counted/s over {nodes} node(s){p95}"));
                line.render();
            }
        }
        EventKind::Dashboard { url } => say(multi, format!("dashboard: {url}")),
        EventKind::Cost { cost } if !cost.complete => {
            say(multi, format!("cost so far: ${:.4} for {:.3} instance-hours", cost.usd, cost.instance_hours()))
        }
        EventKind::Threshold { threshold } => say(multi, format!("threshold {}", threshold_line(threshold))),
        EventKind::Verdict { verdict, reason } => say(multi, format!("verdict {}: {reason}", verdict.as_str())),
        EventKind::Download { step, url, bytes, total } => {
            let mib = |b: u64| b as f64 / 1_048_576.0;
            let of = total.map(|t| format!(" of {:.1} MiB", mib(t))).unwrap_or_default();
            say(multi, format!("step {step}: image from {url}: {:.1} MiB{of}", mib(*bytes)));
        }
        EventKind::Node { .. } | EventKind::Cost { .. } => {}
    };
    for event in &sub.backlog {
        apply(&event.event, &multi);
    }
    if let Some(mut live) = sub.live {
        let mut aborted = false;
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Some(event) => {
                        apply(&event.event, &multi);
                        if matches!(&event.event.kind, EventKind::Run { state, .. } if state.is_finished()) {
                            break;
                        }
                    }
                    None => break,
                },
                _ = tokio::signal::ctrl_c(), if !aborted => {
                    aborted = true;
                    say(&multi, "aborting the run (its containers are being stopped and removed)...".to_string());
                    actors.broker.send(AbortRun { run_id: run.id }).await??;
                }
            }
        }
    }
    for line in lines.values() {
        line.bar.finish();
    }
    wait_until_finished(actors, run.id).await
}

/// The run once its final state is stored (the feed may end a moment before).
async fn wait_until_finished(actors: &Actors, run_id: uuid::Uuid) -> anyhow::Result<RunView> {
    for _ in 0..600 {
        let run = actors.catalog.send(loads_actors::catalog::GetRun { id: run_id }).await??;
        if run.state.is_finished() {
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("run {run_id} did not reach a final state")
}

async fn summary(actors: &Actors, run: &RunView) -> anyhow::Result<()> {
    let containers = actors.broker.send(RunLogs { run_id: run.id, step: None, node: None, tail: Some(1) }).await??;
    let metrics = actors.broker.send(RunMetrics { run_id: run.id }).await??;
    let elapsed = |a: Option<chrono::DateTime<chrono::Utc>>, b: Option<chrono::DateTime<chrono::Utc>>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}s", (b - a).num_milliseconds() as f64 / 1000.0),
        _ => "-".into(),
    };
    println!();
    println!("{:<24} {:<10} {:>8}  {:<16} last output", "step", "state", "ran", "exit codes");
    for r in &run.step_records {
        let mine: Vec<_> = containers.iter().filter(|c| c.step_id == r.step_id && c.role == "step").collect();
        let codes: Vec<String> = mine.iter().map(|c| c.exit_code.map_or("-".into(), |x| x.to_string())).collect();
        let last = mine.first().map(|c| c.logs.trim().to_string()).unwrap_or_default();
        println!(
            "{:<24} {:<10} {:>8}  {:<16} {}",
            r.step_name,
            r.state.as_str(),
            elapsed(r.started_at, r.completed_at),
            codes.join(","),
            last
        );
        if let Some(reason) = &r.failure_reason {
            println!("{:<24} {reason}", "");
        }
        for i in &r.interruptions {
            println!(
                "{:<24} node {} got a spot interruption notice at {}: {} at {}",
                "",
                i.node,
                i.noticed_at.format("%H:%M:%S"),
                i.action,
                i.time
            );
        }
    }
    print_metrics(&metrics);
    print_thresholds(&run.thresholds);
    if let Some(cost) = &run.cost {
        print_cost(cost);
    }
    println!();
    if let (Some(verdict), Some(reason)) = (run.verdict, &run.verdict_reason) {
        println!("verdict: {} ({reason})", verdict.as_str());
    }
    let took = elapsed(Some(run.created_at), run.completed_at);
    match &run.failure_reason {
        Some(reason) => println!("run {} {} after {took}: {reason}", run.id, run.state.as_str()),
        None => println!("run {} {} after {took}", run.id, run.state.as_str()),
    }
    Ok(())
}

/// What the run's instances cost: per instance type, region and market, then in all.
fn print_cost(cost: &RunCost) {
    let usd = |x: Option<f64>| x.map_or("-".into(), |x| format!("${x:.4}"));
    println!();
    println!(
        "{:<14} {:<14} {:<10} {:>9} {:>12} {:>10} {:>10}",
        "instance type", "region", "market", "instances", "inst-hours", "$/hour", "cost"
    );
    for l in &cost.lines {
        println!(
            "{:<14} {:<14} {:<10} {:>9} {:>12.3} {:>10} {:>10}",
            l.instance_type,
            l.region,
            l.market.as_str(),
            l.instances,
            l.instance_seconds / 3600.0,
            usd(l.usd_per_instance_hour),
            usd(l.usd)
        );
    }
    let so_far = if cost.complete { "" } else { " so far" };
    println!("cost{so_far}: ${:.4} for {:.3} instance-hours", cost.usd, cost.instance_hours());
    for note in &cost.notes {
        println!("  {note}");
    }
}

/// The metrics table: per step, counters with total and rate, timers with exact percentiles.
fn print_metrics(metrics: &[MetricSummaryView]) {
    // The relays' and the caps' own counts are shown when they counted something.
    let counts = |m: &MetricSummaryView| matches!(m.kind.as_str(), "relay" | "overflow");
    let shown: Vec<&MetricSummaryView> =
        metrics.iter().filter(|m| !matches!(m.kind.as_str(), "host" | "flag") && (!counts(m) || m.count > 0.0)).collect();
    let shown: Vec<&MetricSummaryView> = shown.into_iter().filter(|m| m.kind != "errors" || m.count > 0.0).collect();
    if shown.iter().all(|m| counts(m)) {
        return;
    }
    println!();
    println!(
        "{:<20} {:<32} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "step", "metric", "count", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for m in shown {
        let rate = m.rate.map_or("-".to_string(), |r| format!("{r:.1}"));
        // OpenTelemetry histograms are in their own unit, and say how exact their percentiles are.
        let unit = m.unit.as_deref().filter(|u| !u.is_empty()).unwrap_or("no unit");
        let metric = match (m.kind.as_str(), m.relative_error) {
            ("histogram", _) => format!("{} [{unit}, bucket bounds]", m.metric),
            ("exponential_histogram", Some(e)) => format!("{} [{unit}, ±{:.2}%]", m.metric, e * 100.0),
            _ => m.metric.clone(),
        };
        // A step over several regions: each region's rows after the step's own.
        let step = match &m.region {
            Some(region) => format!("{} @{region}", m.step_name),
            None => m.step_name.clone(),
        };
        println!(
            "{:<20} {:<32} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            step,
            metric,
            m.count,
            rate,
            ms(m.p50),
            ms(m.p95),
            ms(m.p99),
            ms(m.max)
        );
    }
    for m in metrics.iter().filter(|m| m.metric == "host.cpu_percent") {
        println!("{:<20} node CPU mean {:.0}%, max {:.0}%", m.step_name, m.mean.unwrap_or(0.0), m.max.unwrap_or(0.0));
    }
    for m in metrics.iter().filter(|m| m.count > 0.0) {
        if let Some(node) = m.metric.strip_prefix("relay.kernel_drops;node=") {
            println!(
                "{:<20} warning: {} statsd datagrams dropped by the kernel on node {node} before its relay read them: counts are low",
                m.step_name, m.count
            );
        }
        if let Some(pattern) = m.metric.strip_prefix(SERIES_OVERFLOW).and_then(|rest| rest.strip_prefix(";pattern=")) {
            println!(
                "{:<20} warning: {} values of series like {pattern:?} not kept, past the cap of distinct series \
                 (does a metric name hold an id?)",
                m.step_name, m.count
            );
        }
    }
    for m in metrics.iter().filter(|m| m.metric == "generator_saturated" && m.count > 0.0) {
        println!(
            "{:<20} warning: its generator nodes ran above 90% CPU for more than 10% of the step: the numbers may show the generator's limits, not the service's",
            m.step_name
        );
    }
}

/// A threshold as it stands, on one line: `demo.c.latency p(95)<200: ok (12.3)`.
fn threshold_line(t: &ThresholdView) -> String {
    let scope = t.step.as_ref().map(|s| format!(" [step {s}]")).unwrap_or_default();
    let value = t.value.map(|v| format!(" ({})", shown(v))).unwrap_or_default();
    let note = t.note.as_ref().map(|n| format!(": {n}")).unwrap_or_default();
    let state = serde_json::to_value(t.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    format!("{} {}{scope}: {state}{value}{note}", t.metric, t.threshold)
}

/// The thresholds table: expression, value, result.
fn print_thresholds(thresholds: &[ThresholdView]) {
    if thresholds.is_empty() {
        return;
    }
    let rows: Vec<(String, String, String)> = thresholds
        .iter()
        .map(|t| {
            let scope = t.step.as_ref().map(|s| format!(" [step {s}]")).unwrap_or_default();
            let window = t.window.as_ref().map(|w| format!(" over {w}")).unwrap_or_default();
            let state = serde_json::to_value(t.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let note = t.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            (format!("{} {}{scope}{window}", t.metric, t.threshold), t.value.map_or("-".to_string(), shown), format!("{state}{note}"))
        })
        .collect();
    let width = rows.iter().map(|(name, _, _)| name.len()).max().unwrap_or(0).max(9);
    println!();
    println!("{:<width$} {:>12}  result", "threshold", "value");
    for (name, value, result) in rows {
        println!("{name:<width$} {value:>12}  {result}");
    }
}

/// Two runs side by side, step by step: each figure of each metric, its delta, then the rules checked.
pub fn print_comparison(c: &Comparison) {
    let other = if c.against_baseline { "baseline" } else { "other" };
    println!();
    println!("run {} compared with {} ({other})", c.run_id, c.other_run_id);
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0));
    for step in &c.steps {
        println!();
        println!("step {}: error ratio {} ({other} {})", step.step, ratio(step.error_ratio), ratio(step.other_error_ratio));
        println!("  {:<36} {:<6} {:>12} {:>12} {:>12} {:>9}", "metric", "figure", "this run", other, "delta", "change");
        for m in &step.metrics {
            let figures = |f: &Option<loads_actors::domain::compare::Figures>| {
                f.as_ref().map(|f| {
                    vec![("count", Some(f.count)), ("rate", f.rate), ("p50", f.p50), ("p95", f.p95), ("p99", f.p99), ("max", f.max)]
                })
            };
            let (mine, theirs) = (figures(&m.run), figures(&m.other));
            for (i, name) in ["count", "rate", "p50", "p95", "p99", "max"].into_iter().enumerate() {
                let a = mine.as_ref().and_then(|f| f[i].1);
                let b = theirs.as_ref().and_then(|f| f[i].1);
                if a.is_none() && b.is_none() {
                    continue;
                }
                let cell = |v: Option<f64>| v.map_or("-".to_string(), shown);
                let d = m.delta.get(name);
                let change = d.and_then(|d| d.relative).map_or("-".to_string(), |r| format!("{:+.1}%", r * 100.0));
                println!(
                    "  {:<36} {:<6} {:>12} {:>12} {:>12} {:>9}",
                    m.metric,
                    name,
                    cell(a),
                    cell(b),
                    cell(d.map(|d| d.absolute)),
                    change
                );
            }
        }
    }
    if !c.rules.is_empty() {
        println!();
        for rule in &c.rules {
            println!("{} {}", if rule.regressed { "REGRESSED" } else { "ok" }, rule.summary);
        }
    }
    println!();
    println!("{}", if c.regressed { "regressed: a rule broke" } else { "no regression" });
}
