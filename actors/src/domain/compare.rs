//! Comparing two runs: each step's metrics side by side, with absolute and
//! relative deltas, and the plan's regression rules checked against them.
//!
//! Runs are compared from their stored summaries (exact over every node), step
//! by step and metric by metric, matched by name, so a run of a plan compares
//! with a run of its fork. A step's error ratio is its `errors` (counters whose
//! name or tags say error) over its busiest counter (summed over its tags),
//! e.g. `requests` with `status:ok` and `status:error`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::judge::shown;
use super::thresholds::{self, Aggregation, CompareRules, Direction, MetricKey};
use super::views::MetricSummaryView;

/// The figures of one metric in one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Figures {
    /// Counters: the total; timers: the samples; gauges: the value.
    pub count: f64,
    /// Per second.
    pub rate: Option<f64>,
    /// Timers: median, ms.
    pub p50: Option<f64>,
    /// Timers: 95th percentile, ms.
    pub p95: Option<f64>,
    /// Timers: 99th percentile, ms.
    pub p99: Option<f64>,
    /// Timers: largest, ms.
    pub max: Option<f64>,
}

/// How a figure moved from the other run to this one.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Delta {
    /// This run's minus the other's.
    pub absolute: f64,
    /// The change relative to the other run's (0.1 = 10% more); none when that was 0.
    pub relative: Option<f64>,
}

/// One metric of one step in both runs.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct MetricComparison {
    /// The metric, with its tags.
    pub metric: String,
    /// `counter`, `timer`, `gauge`, `set` or `errors`.
    pub kind: String,
    /// In this run; none when it has no such metric.
    pub run: Option<Figures>,
    /// In the other run.
    pub other: Option<Figures>,
    /// For each figure both runs have: `count`, `rate`, `p50`, `p95`, `p99`, `max`.
    #[schema(value_type = Object)]
    pub delta: BTreeMap<String, Delta>,
}

/// One step in both runs.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StepComparison {
    /// The step's name.
    pub step: String,
    /// Its error ratio in this run.
    pub error_ratio: Option<f64>,
    /// In the other run.
    pub other_error_ratio: Option<f64>,
    /// Its metrics.
    pub metrics: Vec<MetricComparison>,
}

/// A regression rule checked on one step's metric.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct RuleCheck {
    /// The step.
    pub step: String,
    /// The metric, with its tags.
    pub metric: String,
    /// The rule as written, e.g. `p(95) +10%`.
    pub rule: String,
    /// This run's value.
    pub value: Option<f64>,
    /// The other run's.
    pub other_value: Option<f64>,
    /// Whether the rule broke: the value got worse by more than it allows.
    pub regressed: bool,
    /// What happened, for a human.
    pub summary: String,
}

/// Two runs compared.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Comparison {
    /// The run.
    pub run_id: Uuid,
    /// The run it is compared with.
    pub other_run_id: Uuid,
    /// Whether that is the plan's baseline.
    pub against_baseline: bool,
    /// Step by step.
    pub steps: Vec<StepComparison>,
    /// The plan's regression rules, checked.
    pub rules: Vec<RuleCheck>,
    /// Whether any rule broke.
    pub regressed: bool,
}

/// The kinds of summary rows worth comparing (not the relay's or the host's bookkeeping).
fn compared(kind: &str) -> bool {
    matches!(kind, "counter" | "timer" | "gauge" | "set" | "errors")
}

fn figures(m: &MetricSummaryView) -> Figures {
    Figures { count: m.count, rate: m.rate, p50: m.p50, p95: m.p95, p99: m.p99, max: m.max }
}

fn delta(now: f64, then: f64) -> Delta {
    Delta { absolute: now - then, relative: (then != 0.0).then(|| (now - then) / then.abs()) }
}

fn error_ratio(rows: &[&MetricSummaryView]) -> Option<f64> {
    let errors = rows.iter().find(|m| m.kind == "errors")?.count;
    let mut per_name: BTreeMap<&str, f64> = BTreeMap::new();
    for m in rows.iter().filter(|m| m.kind == "counter") {
        *per_name.entry(m.metric.split(';').next().unwrap_or_default()).or_default() += m.count;
    }
    let busiest = per_name.values().copied().fold(0.0, f64::max);
    (busiest > 0.0).then(|| errors / busiest)
}

/// A summary figure by aggregation.
fn figure(m: &MetricSummaryView, aggregation: Aggregation) -> Option<f64> {
    match aggregation {
        Aggregation::Count => Some(m.count),
        Aggregation::Rate => m.rate,
        Aggregation::Avg => m.mean,
        Aggregation::Min => m.min,
        Aggregation::Max => m.max,
        Aggregation::Med => m.p50,
        Aggregation::Percentile(50.0) => m.p50,
        Aggregation::Percentile(90.0) => m.p90,
        Aggregation::Percentile(95.0) => m.p95,
        Aggregation::Percentile(99.0) => m.p99,
        Aggregation::Percentile(_) | Aggregation::Value => None,
    }
}

/// Compares `run` (its summary rows) with `other`, checking `rules`.
pub fn compare(
    run_id: Uuid,
    run: &[MetricSummaryView],
    other_run_id: Uuid,
    other: &[MetricSummaryView],
    rules: &CompareRules,
    against_baseline: bool,
) -> Comparison {
    let mut step_names: Vec<String> = Vec::new();
    for m in run.iter().chain(other) {
        if !step_names.contains(&m.step_name) {
            step_names.push(m.step_name.clone());
        }
    }
    let mut steps = Vec::new();
    for step in &step_names {
        // A step's figures over every node (a region's share is not compared).
        let mine: Vec<&MetricSummaryView> = run.iter().filter(|m| &m.step_name == step && m.region.is_none()).collect();
        let theirs: Vec<&MetricSummaryView> = other.iter().filter(|m| &m.step_name == step && m.region.is_none()).collect();
        let keys: BTreeSet<(String, String)> =
            mine.iter().chain(&theirs).filter(|m| compared(&m.kind)).map(|m| (m.metric.clone(), m.kind.clone())).collect();
        let metrics = keys
            .into_iter()
            .map(|(metric, kind)| {
                let find = |rows: &[&MetricSummaryView]| rows.iter().find(|m| m.metric == metric && m.kind == kind).map(|m| figures(m));
                let (a, b) = (find(&mine), find(&theirs));
                let mut deltas = BTreeMap::new();
                if let (Some(a), Some(b)) = (&a, &b) {
                    deltas.insert("count".to_string(), delta(a.count, b.count));
                    let pairs = [
                        ("rate", a.rate, b.rate),
                        ("p50", a.p50, b.p50),
                        ("p95", a.p95, b.p95),
                        ("p99", a.p99, b.p99),
                        ("max", a.max, b.max),
                    ];
                    for (name, x, y) in pairs {
                        if let (Some(x), Some(y)) = (x, y) {
                            deltas.insert(name.to_string(), delta(x, y));
                        }
                    }
                }
                MetricComparison { metric, kind, run: a, other: b, delta: deltas }
            })
            .collect();
        steps.push(StepComparison {
            step: step.clone(),
            error_ratio: error_ratio(&mine),
            other_error_ratio: error_ratio(&theirs),
            metrics,
        });
    }
    let checks = check_rules(run, other, rules);
    let regressed = checks.iter().any(|c| c.regressed);
    Comparison { run_id, other_run_id, against_baseline, steps, rules: checks, regressed }
}

/// Every rule on every step row it selects (by name, tags and `step` filter).
fn check_rules(run: &[MetricSummaryView], other: &[MetricSummaryView], rules: &CompareRules) -> Vec<RuleCheck> {
    let mut out = Vec::new();
    for (key, texts) in rules {
        let Ok(MetricKey::Single(selector)) = thresholds::parse_key(key) else { continue };
        let selected = |m: &&MetricSummaryView| {
            compared(&m.kind)
                && m.kind != "errors"
                && selector.matches_key(&m.metric)
                && selector.step.as_deref().is_none_or(|s| s == m.step_name)
        };
        for text in texts {
            let Ok(rule) = thresholds::parse_rule(text) else { continue };
            for mine in run.iter().filter(selected) {
                let theirs = other.iter().find(|m| m.step_name == mine.step_name && m.metric == mine.metric && m.kind == mine.kind);
                let (value, other_value) = (figure(mine, rule.aggregation), theirs.and_then(|m| figure(m, rule.aggregation)));
                let (regressed, summary) = match (value, other_value) {
                    (Some(now), Some(then)) => {
                        let worse = match rule.direction {
                            Direction::Up => now - then,
                            Direction::Down => then - now,
                        };
                        let allowed = if rule.relative { rule.allowed * then.abs() } else { rule.allowed };
                        let change = if then != 0.0 {
                            format!("{:+.1}%", (now - then) / then.abs() * 100.0)
                        } else {
                            format!("{:+}", shown(now - then))
                        };
                        let regressed = worse > allowed;
                        let verb = if regressed { "regressed" } else { "within" };
                        (
                            regressed,
                            format!(
                                "{} {} {}: {} → {} ({change}), {verb} {}",
                                mine.step_name,
                                mine.metric,
                                rule.aggregation.text(),
                                shown(then),
                                shown(now),
                                text
                            ),
                        )
                    }
                    (_, None) => (false, format!("{} {}: not in the other run", mine.step_name, mine.metric)),
                    (None, Some(_)) => (false, format!("{} {}: no {} in this run", mine.step_name, mine.metric, rule.aggregation.text())),
                };
                out.push(RuleCheck {
                    step: mine.step_name.clone(),
                    metric: mine.metric.clone(),
                    rule: text.clone(),
                    value,
                    other_value,
                    regressed,
                    summary,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: &str, metric: &str, kind: &str, count: f64, p95: Option<f64>) -> MetricSummaryView {
        MetricSummaryView {
            step_id: Uuid::nil(),
            step_name: step.into(),
            metric: metric.into(),
            kind: kind.into(),
            count,
            rate: Some(count / 10.0),
            min: p95.map(|_| 1.0),
            mean: p95.map(|p| p / 2.0),
            p50: p95.map(|p| p / 2.0),
            p90: p95,
            p95,
            p99: p95.map(|p| p * 1.5),
            max: p95.map(|p| p * 2.0),
            unit: None,
            relative_error: None,
            region: None,
        }
    }

    #[test]
    fn runs_compare_step_by_step_with_deltas_and_error_ratios() {
        let a = [
            row("gen", "lat", "timer", 100.0, Some(110.0)),
            row("gen", "req;status=ok", "counter", 90.0, None),
            row("gen", "req;status=error", "counter", 10.0, None),
            row("gen", "errors", "errors", 10.0, None),
            row("gen", "relay.lines", "relay", 200.0, None),
        ];
        let b = [
            row("gen", "lat", "timer", 100.0, Some(100.0)),
            row("gen", "req;status=ok", "counter", 100.0, None),
            row("gen", "errors", "errors", 0.0, None),
        ];
        let c = compare(Uuid::nil(), &a, Uuid::max(), &b, &CompareRules::new(), true);
        assert_eq!(c.steps.len(), 1);
        let gen = &c.steps[0];
        assert_eq!((gen.error_ratio, gen.other_error_ratio), (Some(0.1), Some(0.0)));
        let metrics: Vec<&str> = gen.metrics.iter().map(|m| m.metric.as_str()).collect();
        assert_eq!(metrics, ["errors", "lat", "req;status=error", "req;status=ok"], "relay bookkeeping is left out");
        let lat = &gen.metrics[1];
        assert_eq!(lat.delta["p95"], Delta { absolute: 10.0, relative: Some(0.1) });
        assert!(gen.metrics[2].other.is_none() && gen.metrics[2].delta.is_empty());
        assert!(!c.regressed && c.rules.is_empty());
    }

    #[test]
    fn rules_break_only_past_what_they_allow_in_their_direction() {
        let rules = CompareRules::from([
            ("lat".to_string(), vec!["p(95) +10%".to_string(), "max +5ms".to_string()]),
            ("req{step:gen}".to_string(), vec!["rate -5%".to_string()]),
        ]);
        let base = [row("gen", "lat", "timer", 100.0, Some(100.0)), row("gen", "req", "counter", 100.0, None)];
        let same = compare(Uuid::nil(), &base, Uuid::max(), &base, &rules, true);
        assert_eq!((same.regressed, same.rules.len()), (false, 3));
        let slower = [row("gen", "lat", "timer", 100.0, Some(111.0)), row("gen", "req", "counter", 94.0, None)];
        let c = compare(Uuid::nil(), &slower, Uuid::max(), &base, &rules, true);
        let broke: Vec<&str> = c.rules.iter().filter(|r| r.regressed).map(|r| r.rule.as_str()).collect();
        assert_eq!(broke, ["p(95) +10%", "max +5ms", "rate -5%"]);
        assert!(c.rules[0].summary.starts_with("gen lat p(95): 100 → 111 (+11.0%), regressed p(95) +10%"), "{}", c.rules[0].summary);
        let faster = [row("gen", "lat", "timer", 100.0, Some(50.0)), row("gen", "req", "counter", 200.0, None)];
        assert!(!compare(Uuid::nil(), &faster, Uuid::max(), &base, &rules, true).regressed, "better is never a regression");
    }
}
