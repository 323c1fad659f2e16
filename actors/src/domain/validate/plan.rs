//! Projects and plans: their fields, their steps (each walked by `step.rs`), the
//! plan's thresholds and its regression rules against a baseline.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{join, kind, Scope, Walker, MAX_SECONDS, MAX_THRESHOLDS, MAX_WINDOW_MS, PLAN_FIELDS, PROJECT_FIELDS, THRESHOLD_FIELDS};
use crate::domain::error::FieldError;
use crate::domain::spec::{Env, PlanSpec, ProjectSpec};
use crate::domain::thresholds::{self, Aggregation, CompareRules, MetricKey, ThresholdRule, Thresholds};

impl Walker<'_> {
    pub(super) fn project(&mut self, v: &Value, path: &str) -> ProjectSpec {
        let mut spec = ProjectSpec { name: String::new(), home_page: None, plans: Vec::new() };
        let Some(m) = self.object(v, path, PROJECT_FIELDS) else { return spec };
        spec.name = self.name(m, path);
        spec.home_page = self.string(m, path, "home_page", false);
        match m.get("plans") {
            None | Some(Value::Null) => {}
            Some(Value::Array(plans)) => {
                let mut seen = BTreeMap::new();
                for (i, p) in plans.iter().enumerate() {
                    let plan_path = format!("{}[{i}]", join(path, "plans"));
                    let plan = self.plan(p, &plan_path);
                    if !plan.name.is_empty() {
                        if let Some(first) = seen.insert(plan.name.clone(), i) {
                            self.error(join(&plan_path, "name"), format!("duplicate plan name {:?} (also plans[{first}])", plan.name));
                        }
                    }
                    spec.plans.push(plan);
                }
            }
            Some(other) => self.error(join(path, "plans"), format!("must be a list, not {}", kind(other))),
        }
        spec
    }

    pub(super) fn plan(&mut self, v: &Value, path: &str) -> PlanSpec {
        let mut spec = PlanSpec {
            name: String::new(),
            description: None,
            enabled: true,
            environment_data: Env::new(),
            dashboard: None,
            thresholds: Thresholds::new(),
            compare: CompareRules::new(),
            fail_on_regression: false,
            steps: Vec::new(),
        };
        let Some(m) = self.object(v, path, PLAN_FIELDS) else { return spec };
        spec.dashboard = self.string(m, path, "dashboard", false);
        if let Some(name) = &spec.dashboard {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                self.error(join(path, "dashboard"), "must be a template name: letters, digits, - and _");
            }
        }
        spec.name = self.name(m, path);
        spec.description = self.string(m, path, "description", false);
        spec.enabled = self.boolean(m, path, "enabled", true);
        spec.environment_data = self.env(m, path);
        let steps_path = join(path, "steps");
        match m.get("steps") {
            None | Some(Value::Null) => self.error(&steps_path, "is required"),
            Some(Value::Array(steps)) if steps.is_empty() => self.error(&steps_path, "must have at least one step"),
            Some(Value::Array(steps)) => {
                if steps.len() > self.limits.max_steps_per_plan {
                    self.error(&steps_path, format!("has {} steps, at most {} are allowed", steps.len(), self.limits.max_steps_per_plan));
                }
                let mut seen = BTreeMap::new();
                for (i, s) in steps.iter().enumerate() {
                    let step_path = format!("{steps_path}[{i}]");
                    let Some(step) = self.step(s, &step_path) else { continue };
                    if !step.name.is_empty() {
                        if let Some(first) = seen.insert(step.name.clone(), i) {
                            self.error(join(&step_path, "name"), format!("duplicate step name {:?} (also steps[{first}])", step.name));
                        }
                    }
                    self.step_variables(&step, &spec.environment_data, self.run_env, &step_path);
                    spec.steps.push(step);
                }
            }
            Some(other) => self.error(&steps_path, format!("must be a list, not {}", kind(other))),
        }
        let step_names: Vec<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
        spec.thresholds = self.thresholds(m, path, Scope::Plan(&step_names));
        spec.compare = self.compare_rules(m, path, &step_names);
        spec.fail_on_regression = self.boolean(m, path, "fail_on_regression", false);
        if spec.fail_on_regression && spec.compare.is_empty() {
            self.warnings.push(FieldError::new(
                join(path, "fail_on_regression"),
                "has no effect without regression rules in compare (e.g. \"demo.c.latency\" = [\"p(95) +10%\"])",
            ));
        }
        let count = spec.thresholds.values().map(Vec::len).sum::<usize>()
            + spec.steps.iter().flat_map(|s| s.thresholds.values()).map(Vec::len).sum::<usize>();
        if count > MAX_THRESHOLDS {
            self.error(
                join(path, "thresholds"),
                format!("the plan has {count} thresholds (its steps' included); at most {MAX_THRESHOLDS}"),
            );
        }
        spec
    }

    /// A `thresholds` map: metric keys to lists of expressions (strings or objects with options).
    pub(super) fn thresholds(&mut self, m: &Map<String, Value>, path: &str, scope: Scope<'_>) -> Thresholds {
        let mut out = Thresholds::new();
        let at = join(path, "thresholds");
        let map = match m.get("thresholds") {
            None | Some(Value::Null) => return out,
            Some(Value::Object(map)) => map,
            Some(other) => {
                self.error(&at, format!("must be an object of metric keys to lists of thresholds, not {}", kind(other)));
                return out;
            }
        };
        for (key, rules) in map {
            let key_path = format!("{at}[{key:?}]");
            let metric = match thresholds::parse_key(key) {
                Ok(metric) => Some(metric),
                Err(why) => {
                    self.error(&key_path, why);
                    None
                }
            };
            if let Some(metric) = &metric {
                self.check_scope(metric, &key_path, scope);
            }
            let items: Vec<&Value> = match rules {
                Value::Array(items) => items.iter().collect(),
                Value::String(_) | Value::Object(_) => vec![rules],
                other => {
                    self.error(&key_path, format!("must be a list of thresholds, not {}", kind(other)));
                    continue;
                }
            };
            let mut list = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let item_path = if rules.is_array() { format!("{key_path}[{i}]") } else { key_path.clone() };
                if let Some(rule) = self.threshold_rule(item, &item_path, metric.as_ref()) {
                    list.push(rule);
                }
            }
            out.insert(key.clone(), list);
        }
        out
    }

    /// `step` filters name steps of the plan, and a step's own thresholds need none.
    pub(super) fn check_scope(&mut self, metric: &MetricKey, path: &str, scope: Scope<'_>) {
        for selector in metric.selectors() {
            match (scope, &selector.step) {
                (Scope::Step, Some(_)) => self.error(path, "a step's thresholds are judged on that step only; leave out the step filter"),
                (Scope::Plan(names), Some(step)) if !names.contains(&step.as_str()) => {
                    self.error(path, format!("no step named {step:?} in this plan (steps: {})", names.join(", ")))
                }
                _ => {}
            }
        }
    }

    pub(super) fn threshold_rule(&mut self, item: &Value, path: &str, metric: Option<&MetricKey>) -> Option<ThresholdRule> {
        let (rule, expr_path) = match item {
            Value::String(text) => (ThresholdRule::plain(text.trim()), path.to_string()),
            Value::Object(_) => {
                let m = self.object(item, path, THRESHOLD_FIELDS)?;
                let text = self.string(m, path, "threshold", true)?;
                let mut rule = ThresholdRule::plain(text.trim());
                rule.abort_on_fail = self.boolean(m, path, "abort_on_fail", false);
                rule.delay_abort_eval = self.duration(m, path, "delay_abort_eval", MAX_SECONDS * 1000);
                rule.window = self.duration(m, path, "window", MAX_WINDOW_MS);
                if rule.window.as_deref().and_then(|w| thresholds::parse_duration(w).ok()).is_some_and(|ms| ms < 1000) {
                    self.error(join(path, "window"), "must be at least 1s (metrics arrive in one-second windows)");
                }
                if rule.delay_abort_eval.is_some() && !rule.abort_on_fail {
                    self.warnings.push(FieldError::new(join(path, "delay_abort_eval"), "has no effect without abort_on_fail = true"));
                }
                (rule, join(path, "threshold"))
            }
            other => {
                self.error(path, format!("must be an expression such as \"p(95)<200\", or an object with threshold, not {}", kind(other)));
                return None;
            }
        };
        match thresholds::parse_expr(&rule.threshold) {
            Err(why) => self.error(&expr_path, why),
            Ok(expr) if matches!(metric, Some(MetricKey::Ratio(..))) && expr.aggregation != Aggregation::Value => self.error(
                &expr_path,
                format!("a ratio of two counters is judged by its value, e.g. \"value<0.01\", not {}", expr.aggregation.text()),
            ),
            Ok(_) => {}
        }
        Some(rule)
    }

    /// A duration written as `10s`, `1m30s`, `500ms` or a number of seconds, at most `max_ms`.
    pub(super) fn duration(&mut self, m: &Map<String, Value>, path: &str, key: &str, max_ms: u64) -> Option<String> {
        let text = match m.get(key) {
            None | Some(Value::Null) => return None,
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) if n.as_u64().is_some() => format!("{n}s"),
            Some(other) => {
                self.error(join(path, key), format!("must be a duration such as \"10s\", not {}", kind(other)));
                return None;
            }
        };
        match thresholds::parse_duration(&text) {
            Ok(ms) if ms > max_ms => {
                self.error(join(path, key), format!("must be at most {} s", max_ms / 1000));
                None
            }
            Ok(_) => Some(text),
            Err(why) => {
                self.error(join(path, key), why);
                None
            }
        }
    }

    /// A `compare` map: metric keys to regression rules such as `p(95) +10%`.
    pub(super) fn compare_rules(&mut self, m: &Map<String, Value>, path: &str, step_names: &[&str]) -> CompareRules {
        let mut out = CompareRules::new();
        let at = join(path, "compare");
        let map = match m.get("compare") {
            None | Some(Value::Null) => return out,
            Some(Value::Object(map)) => map,
            Some(other) => {
                self.error(&at, format!("must be an object of metric keys to lists of rules, not {}", kind(other)));
                return out;
            }
        };
        for (key, rules) in map {
            let key_path = format!("{at}[{key:?}]");
            match thresholds::parse_key(key) {
                Ok(MetricKey::Ratio(..)) => self.error(&key_path, "compare a metric, not a ratio: its summary is compared step by step"),
                Ok(metric @ MetricKey::Single(_)) => self.check_scope(&metric, &key_path, Scope::Plan(step_names)),
                Err(why) => self.error(&key_path, why),
            }
            let items: Vec<(String, &Value)> = match rules {
                Value::Array(items) => items.iter().enumerate().map(|(i, v)| (format!("{key_path}[{i}]"), v)).collect(),
                Value::String(_) => vec![(key_path.clone(), rules)],
                other => {
                    self.error(&key_path, format!("must be a list of rules such as \"p(95) +10%\", not {}", kind(other)));
                    continue;
                }
            };
            let mut list = Vec::new();
            for (item_path, item) in items {
                let Value::String(text) = item else {
                    self.error(&item_path, format!("must be a rule such as \"p(95) +10%\", not {}", kind(item)));
                    continue;
                };
                match thresholds::parse_rule(text) {
                    Ok(_) => list.push(text.trim().to_string()),
                    Err(why) => self.error(&item_path, why),
                }
            }
            out.insert(key.clone(), list);
        }
        out
    }
}
