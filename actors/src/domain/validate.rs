//! Turns a parsed document into specs, reporting every problem at once.
//!
//! The walk is done by hand over a JSON value rather than by serde derive,
//! because serde stops at the first error and users want the whole list, each
//! with the path of the field (`plans[0].steps[1].run_max_time: must be >= 0`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::error::{FieldError, ValidationErrors};
use super::interpolate::{self, INJECTED_VARIABLES};
use super::regions::{Regions, MAX_REGIONS};
use super::spec::{defaults, Env, Market, PlanSpec, ProjectSpec, StepSpec};
use super::thresholds::{self, Aggregation, CompareRules, MetricKey, ThresholdRule, Thresholds};

/// Caps that validation enforces, from the broker's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `instance_count` a step may ask for.
    pub max_instance_count: u32,
    /// Most steps a plan may have.
    pub max_steps_per_plan: usize,
    /// Most variables in one environment (a plan's, a step's or a run's).
    pub max_env_vars: usize,
    /// Most bytes (names and values) in one environment.
    pub max_env_bytes: usize,
    /// Where `volume_mapping` host paths must lie: the broker's `docker.volume_root` when
    /// nodes are containers on the broker's own machine; `None` when they are machines of their own.
    pub volume_root: Option<PathBuf>,
    /// The directory `container_url` tarballs on the broker's disk may be read from; `None`: no local paths.
    pub image_root: Option<PathBuf>,
    /// Whether `container_url` may name an http(s) URL on a loopback address (the broker's own).
    pub allow_loopback_image_urls: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_instance_count: 100,
            max_steps_per_plan: 50,
            max_env_vars: 200,
            max_env_bytes: 65_536,
            volume_root: None,
            image_root: None,
            allow_loopback_image_urls: false,
        }
    }
}

/// The name of a monitor step that gives none, as the original broker fixed it.
pub const MONITOR_NAME: &str = "monitor";

/// Longest name of a project, plan or step, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Largest `run_delay`, `run_max_time` and `node_delay`, in seconds (30 days).
pub const MAX_SECONDS: u64 = 30 * 24 * 3600;

/// A validated value, with warnings that do not stop it from being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated<T> {
    /// The value.
    pub value: T,
    /// Things the user should know, each with its path.
    pub warnings: Vec<FieldError>,
}

const PROJECT_FIELDS: &[&str] = &["name", "home_page", "plans"];
const PLAN_FIELDS: &[&str] =
    &["name", "description", "enabled", "environment_data", "dashboard", "thresholds", "compare", "fail_on_regression", "steps"];
const STEP_FIELDS: &[&str] = &[
    "name",
    "instance_count",
    "instance_type",
    "instance_region",
    "market",
    "run_delay",
    "run_max_time",
    "node_delay",
    "container_name",
    "container_url",
    "container_sha256",
    "environment_data",
    "additional_command_args",
    "dns_name",
    "port_mapping",
    "volume_mapping",
    "docker_series",
    "prune_running",
    "min_nodes",
    "monitor",
    "service",
    "required",
    "thresholds",
];

const THRESHOLD_FIELDS: &[&str] = &["threshold", "abort_on_fail", "delay_abort_eval", "window"];

/// Most threshold expressions a plan may have, its steps' included (each is judged every window).
pub const MAX_THRESHOLDS: usize = 200;

/// Longest sliding window a threshold may be judged over, in milliseconds (an hour).
pub const MAX_WINDOW_MS: u64 = 3_600_000;

/// Validates a project file (`{name, home_page?, plans: [...]}`).
pub fn project(value: &Value, limits: &Limits) -> Result<Validated<ProjectSpec>, ValidationErrors> {
    project_with_run_env(value, limits, &Env::new())
}

/// Validates a project file, counting the variables of `run_env` as defined.
pub fn project_with_run_env(value: &Value, limits: &Limits, run_env: &Env) -> Result<Validated<ProjectSpec>, ValidationErrors> {
    let mut w = Walker::new(limits);
    w.run_env = run_env;
    let spec = w.project(value, "");
    w.finish(spec)
}

/// Validates a project's own fields (`{name, home_page?}`), for updates.
pub fn project_header(value: &Value) -> Result<(String, Option<String>), ValidationErrors> {
    let limits = Limits::default();
    let mut w = Walker::new(&limits);
    let header = w.object(value, "", &["name", "home_page"]).map(|m| (w.name(m, ""), w.string(m, "", "home_page", false)));
    w.finish(header.unwrap_or_default()).map(|v| v.value)
}

/// Validates one plan (`{name, description?, enabled?, environment_data?, steps: [...]}`).
pub fn plan(value: &Value, limits: &Limits) -> Result<Validated<PlanSpec>, ValidationErrors> {
    plan_with_run_env(value, limits, &Env::new())
}

/// Validates one plan, counting the variables of `run_env` as defined.
pub fn plan_with_run_env(value: &Value, limits: &Limits, run_env: &Env) -> Result<Validated<PlanSpec>, ValidationErrors> {
    let mut w = Walker::new(limits);
    w.run_env = run_env;
    let spec = w.plan(value, "");
    w.finish(spec)
}

/// Validates the run environment given when a run is started: an object of strings,
/// or a list of `KEY=VALUE` strings.
pub fn run_env(value: &Value, limits: &Limits) -> Result<Env, ValidationErrors> {
    let mut w = Walker::new(limits);
    let env = w.env_value(value, "");
    w.finish(env).map(|v| v.value)
}

/// Checks that every `$VARIABLE` of `plan` is defined once `run_env` is known.
pub fn plan_variables(plan: &PlanSpec, run_env: &Env) -> Result<(), ValidationErrors> {
    let limits = Limits::default();
    let mut w = Walker::new(&limits);
    for (i, step) in plan.steps.iter().enumerate() {
        w.step_variables(step, &plan.environment_data, run_env, &format!("steps[{i}]"));
    }
    w.finish(()).map(|_| ())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_') && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Where thresholds are written: on the plan (with its step names) or on a step.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Plan(&'a [&'a str]),
    Step,
}

struct Walker<'l> {
    limits: &'l Limits,
    run_env: &'l Env,
    errors: Vec<FieldError>,
    warnings: Vec<FieldError>,
}

static NO_ENV: Env = Env::new();

impl<'l> Walker<'l> {
    fn new(limits: &'l Limits) -> Self {
        Self { limits, run_env: &NO_ENV, errors: Vec::new(), warnings: Vec::new() }
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn finish<T>(self, value: T) -> Result<Validated<T>, ValidationErrors> {
        if self.errors.is_empty() {
            Ok(Validated { value, warnings: self.warnings })
        } else {
            Err(ValidationErrors(self.errors))
        }
    }

    fn object<'v>(&mut self, v: &'v Value, path: &str, allowed: &[&str]) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = v else {
            self.error(path, format!("must be an object, not {}", kind(v)));
            return None;
        };
        for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
            self.error(join(path, key), format!("unknown field (expected one of: {})", allowed.join(", ")));
        }
        Some(map)
    }

    fn string(&mut self, m: &Map<String, Value>, path: &str, key: &str, required: bool) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.error(join(path, key), "is required");
                }
                None
            }
            Some(Value::String(s)) if required && s.trim().is_empty() => {
                self.error(join(path, key), "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.error(join(path, key), format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    /// A required name: at most `MAX_NAME_CHARS` characters, none of them control characters.
    fn name(&mut self, m: &Map<String, Value>, path: &str) -> String {
        let name = self.string(m, path, "name", true).unwrap_or_default();
        if name.chars().any(char::is_control) {
            self.error(join(path, "name"), "must not contain control characters (tabs, newlines, NUL...)");
        } else if name.chars().count() > MAX_NAME_CHARS {
            self.error(join(path, "name"), format!("must be at most {MAX_NAME_CHARS} characters"));
        }
        name
    }

    /// A duration in seconds, from 0 to `MAX_SECONDS`.
    fn seconds(&mut self, m: &Map<String, Value>, path: &str, key: &str, default: u64) -> u64 {
        let value = self.whole(m, path, key, default);
        if value > MAX_SECONDS {
            self.error(join(path, key), format!("must be at most {MAX_SECONDS} seconds (30 days)"));
            return default;
        }
        value
    }

    fn boolean(&mut self, m: &Map<String, Value>, path: &str, key: &str, default: bool) -> bool {
        match m.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.error(join(path, key), format!("must be true or false, not {}", kind(other)));
                default
            }
        }
    }

    /// A non-negative whole number (seconds, counts).
    /// A step's regions: a name, a list of names (equal shares), or names with percentages summing to 100.
    fn regions(&mut self, v: &Value, path: &str) -> Option<Regions> {
        let shape = "must be a region such as \"us-west-2\", a list of regions (equal shares), \
                     or regions with percentages summing to 100 ({\"us-east-1\": 60, \"eu-west-1\": 40})";
        let count = match v {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 1,
        };
        if count == 0 || count > MAX_REGIONS {
            self.error(path, format!("must name from 1 to {MAX_REGIONS} regions, not {count}"));
            return None;
        }
        let named = |me: &mut Self, name: &str, at: String| {
            let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.len() <= 32
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                me.error(at, format!("{name:?} is not a region such as \"us-west-2\""));
            }
            ok
        };
        match v {
            Value::String(r) => named(self, r, path.to_string()).then(|| Regions::one(r.clone())),
            Value::Array(items) => {
                let mut names = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    match item {
                        Value::String(r) if names.contains(r) => self.error(at, format!("{r:?} is listed twice")),
                        Value::String(r) => {
                            if named(self, r, at) {
                                names.push(r.clone());
                            }
                        }
                        other => self.error(at, format!("must be a region name, not {}", kind(other))),
                    }
                }
                (names.len() == items.len()).then(|| if names.len() == 1 { Regions::One(names.remove(0)) } else { Regions::Equal(names) })
            }
            Value::Object(shares) => {
                let mut parsed = BTreeMap::new();
                for (r, share) in shares {
                    let at = join(path, r);
                    let ok = named(self, r, at.clone());
                    match share.as_u64().filter(|p| (1..=100).contains(p)) {
                        Some(p) if ok => {
                            parsed.insert(r.clone(), p as u32);
                        }
                        Some(_) => {}
                        None => self.error(at, format!("must be a whole percentage from 1 to 100, not {share}")),
                    }
                }
                if parsed.len() != shares.len() {
                    return None;
                }
                let total: u32 = parsed.values().sum();
                if total != 100 {
                    self.error(path, format!("the shares must sum to 100, not {total}"));
                    return None;
                }
                Some(if parsed.len() == 1 { Regions::One(parsed.into_keys().next().unwrap_or_default()) } else { Regions::Shares(parsed) })
            }
            other => {
                self.error(path, format!("{shape}, not {}", kind(other)));
                None
            }
        }
    }

    fn whole(&mut self, m: &Map<String, Value>, path: &str, key: &str, default: u64) -> u64 {
        let v = match m.get(key) {
            None | Some(Value::Null) => return default,
            Some(v) => v,
        };
        let path = join(path, key);
        match v {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    u
                } else if n.as_i64().is_some_and(|i| i < 0) || n.as_f64().is_some_and(|f| f < 0.0) {
                    self.error(path, "must be >= 0");
                    default
                } else {
                    self.error(path, "must be a whole number");
                    default
                }
            }
            other => {
                self.error(path, format!("must be a whole number, not {}", kind(other)));
                default
            }
        }
    }

    fn env(&mut self, m: &Map<String, Value>, path: &str) -> Env {
        match m.get("environment_data") {
            None | Some(Value::Null) => Env::new(),
            Some(v) => self.env_value(v, &join(path, "environment_data")),
        }
    }

    fn env_value(&mut self, v: &Value, path: &str) -> Env {
        let mut env = Env::new();
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    let item = join(path, key);
                    if !is_env_name(key) {
                        self.error(&item, "not a valid variable name (letters, digits and _, not starting with a digit)");
                    }
                    let value = match value {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => {
                            self.error(&item, format!("must be a string, number or boolean, not {}", kind(other)));
                            continue;
                        }
                    };
                    env.insert(key.clone(), value);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let Value::String(s) = item else {
                        self.error(item_path, format!("must be a \"KEY=VALUE\" string, not {}", kind(item)));
                        continue;
                    };
                    let Some((key, value)) = s.split_once('=') else {
                        self.error(item_path, format!("must be KEY=VALUE, got {s:?}"));
                        continue;
                    };
                    if !is_env_name(key) {
                        self.error(item_path, format!("{key:?} is not a valid variable name"));
                    } else if env.insert(key.to_string(), value.to_string()).is_some() {
                        self.error(item_path, format!("{key} is set more than once"));
                    }
                }
            }
            other => self.error(path, format!("must be an object or a list of \"KEY=VALUE\" strings, not {}", kind(other))),
        }
        let at = path;
        if env.len() > self.limits.max_env_vars {
            self.error(at, format!("has {} variables; at most {} (limits.max_env_vars)", env.len(), self.limits.max_env_vars));
        }
        let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > self.limits.max_env_bytes {
            self.error(at, format!("is {bytes} bytes; at most {} (limits.max_env_bytes)", self.limits.max_env_bytes));
        }
        env
    }

    fn project(&mut self, v: &Value, path: &str) -> ProjectSpec {
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

    fn plan(&mut self, v: &Value, path: &str) -> PlanSpec {
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
    fn thresholds(&mut self, m: &Map<String, Value>, path: &str, scope: Scope<'_>) -> Thresholds {
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
    fn check_scope(&mut self, metric: &MetricKey, path: &str, scope: Scope<'_>) {
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

    fn threshold_rule(&mut self, item: &Value, path: &str, metric: Option<&MetricKey>) -> Option<ThresholdRule> {
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
    fn duration(&mut self, m: &Map<String, Value>, path: &str, key: &str, max_ms: u64) -> Option<String> {
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
    fn compare_rules(&mut self, m: &Map<String, Value>, path: &str, step_names: &[&str]) -> CompareRules {
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

    fn step(&mut self, v: &Value, path: &str) -> Option<StepSpec> {
        let m = self.object(v, path, STEP_FIELDS)?;
        let mut step = StepSpec::new(String::new(), String::new());
        step.monitor = self.boolean(m, path, "monitor", false);
        // The original fixed its monitor step's name (and image, ports, timings): loads v2 files give none.
        step.name = if step.monitor && m.get("name").is_none_or(Value::is_null) { MONITOR_NAME.to_string() } else { self.name(m, path) };
        step.service = self.boolean(m, path, "service", false);
        step.thresholds = self.thresholds(m, path, Scope::Step);
        step.required = self.boolean(m, path, "required", true);
        step.prune_running = self.boolean(m, path, "prune_running", true);

        let count = self.whole(m, path, "instance_count", u64::from(defaults::INSTANCE_COUNT));
        let cap = u64::from(self.limits.max_instance_count);
        if count == 0 {
            self.error(join(path, "instance_count"), "must be at least 1");
        } else if count > cap {
            self.error(join(path, "instance_count"), format!("must be at most {cap} (limits.max_instance_count)"));
        }
        step.instance_count = u32::try_from(count.min(cap)).unwrap_or(defaults::INSTANCE_COUNT);
        if m.get("min_nodes").is_some_and(|v| !v.is_null()) {
            let min = self.whole(m, path, "min_nodes", count);
            if min == 0 || min > count {
                self.error(join(path, "min_nodes"), format!("must be from 1 to instance_count ({count})"));
            }
            step.min_nodes = u32::try_from(min.clamp(1, count.max(1))).ok();
        }

        if let Some(t) = self.string(m, path, "instance_type", false) {
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                self.error(join(path, "instance_type"), "must be a machine type such as \"t3.micro\"");
            }
            step.instance_type = t;
        }
        if let Some(regions) = m.get("instance_region").filter(|v| !v.is_null()) {
            if let Some(regions) = self.regions(regions, &join(path, "instance_region")) {
                step.instance_region = regions;
            }
        }
        if let Some(market) = self.string(m, path, "market", false) {
            match Market::parse(&market) {
                Some(known) => step.market = known,
                None => self.error(join(path, "market"), format!("must be {}, not {market:?}", Market::NAMES)),
            }
        }
        step.run_delay = self.seconds(m, path, "run_delay", defaults::RUN_DELAY);
        step.run_max_time = self.seconds(m, path, "run_max_time", defaults::RUN_MAX_TIME);
        step.node_delay = self.seconds(m, path, "node_delay", defaults::NODE_DELAY);
        let last_start = step.node_delay.saturating_mul(u64::from(step.instance_count.saturating_sub(1)));
        if step.run_max_time > 0 && step.node_delay > 0 && last_start >= step.run_max_time {
            self.error(
                join(path, "node_delay"),
                format!(
                    "the last of {} nodes would start {last_start} s after the first, at or past run_max_time ({} s), \
                     so it would never run: shorten node_delay or lengthen run_max_time",
                    step.instance_count, step.run_max_time
                ),
            );
        }

        step.container_name = self.string(m, path, "container_name", !step.monitor).unwrap_or_default();
        step.container_url = self.string(m, path, "container_url", false);
        step.container_sha256 = self.string(m, path, "container_sha256", false).map(|s| s.to_ascii_lowercase());
        if let Some(sha) = &step.container_sha256 {
            if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                self.error(join(path, "container_sha256"), "must be a SHA-256 digest: 64 hexadecimal digits");
            } else if step.container_url.is_none() {
                self.error(join(path, "container_sha256"), "checks the container_url tarball; give container_url too");
            }
        }
        if let Some(url) = &step.container_url {
            if let Err(why) = check_image_url(url, self.limits) {
                self.error(join(path, "container_url"), why);
            }
        }
        step.environment_data = self.env(m, path);
        step.additional_command_args = self.string(m, path, "additional_command_args", false);
        step.docker_series = self.string(m, path, "docker_series", false);

        step.dns_name = self.string(m, path, "dns_name", false);
        if let Some(name) = &step.dns_name {
            if let Err(why) = check_dns_name(name) {
                self.error(join(path, "dns_name"), why);
            }
        }
        step.port_mapping = self.string(m, path, "port_mapping", false);
        if let Some(ports) = &step.port_mapping {
            for why in check_port_mapping(ports) {
                self.error(join(path, "port_mapping"), why);
            }
        }
        step.volume_mapping = self.string(m, path, "volume_mapping", false);
        if let Some(volumes) = &step.volume_mapping {
            for why in check_volume_mapping(volumes, None) {
                self.error(join(path, "volume_mapping"), why);
            }
            // Where a volume may come from is this broker's to say, not the plan's: a plan
            // written for nodes of their own imports here, and its runs are refused at start.
            if let Some(root) = self.limits.volume_root.as_deref() {
                for why in check_volume_mapping(volumes, Some(root)) {
                    self.warnings.push(FieldError::new(join(path, "volume_mapping"), format!("{why}; a run of it is refused here")));
                }
            }
        }
        if step.monitor {
            self.warnings.push(FieldError::new(
                join(path, "monitor"),
                "a monitor step runs no container: the run's metrics go to an InfluxDB database of its own (loads<run id>), \
                 which its dashboard reads; without influx.url the step is skipped",
            ));
        }
        if step.service && step.run_max_time != 0 {
            self.warnings.push(FieldError::new(
                join(path, "run_max_time"),
                "a service step runs until every other step has finished; run_max_time still stops it early",
            ));
        }
        Some(step)
    }

    /// Every `$VAR` in the interpolated fields of `step` must be defined.
    fn step_variables(&mut self, step: &StepSpec, plan_env: &Env, run_env: &Env, path: &str) {
        let known: BTreeSet<&str> = INJECTED_VARIABLES
            .iter()
            .copied()
            .chain(step.environment_data.keys().map(String::as_str))
            .chain(plan_env.keys().map(String::as_str))
            .chain(run_env.keys().map(String::as_str))
            .collect();
        let fields = [
            ("container_name", Some(&step.container_name)),
            ("container_url", step.container_url.as_ref()),
            ("additional_command_args", step.additional_command_args.as_ref()),
            ("volume_mapping", step.volume_mapping.as_ref()),
        ];
        let env_fields = step.environment_data.iter().map(|(k, v)| (format!("environment_data.{k}"), Some(v)));
        let all = fields.into_iter().map(|(k, v)| (k.to_string(), v)).chain(env_fields);
        for (field, template) in all {
            let Some(template) = template else { continue };
            match interpolate::variables(template) {
                Err(e) => self.error(join(path, &field), e.to_string()),
                Ok(vars) => {
                    for var in vars.into_iter().filter(|v| !known.contains(v)) {
                        self.error(
                            join(path, &field),
                            format!(
                                "unknown variable `${var}`: define it in the step's or the plan's environment_data, \
                                 pass it in the run env, or use one of {}",
                                INJECTED_VARIABLES.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn check_dns_name(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{name:?} is not a valid host name (labels of letters, digits and -, separated by dots)"));
    }
    Ok(())
}

fn check_port_mapping(ports: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut host_ports = BTreeSet::new();
    for pair in ports.split(',').map(str::trim) {
        let parsed = pair
            .split_once(':')
            .and_then(|(c, h)| Some((c.trim().parse::<u16>().ok()?, h.trim().parse::<u16>().ok()?)))
            .filter(|(c, h)| *c > 0 && *h > 0);
        match parsed {
            None => problems.push(format!("{pair:?} must be container_port:host_port with ports 1-65535")),
            Some((_, host)) if !host_ports.insert(host) => problems.push(format!("host port {host} is mapped twice")),
            Some(_) => {}
        }
    }
    problems
}

/// Whether this broker can run a valid plan, apart from what the plan itself is: every
/// volume's host path under `docker.volume_root` where nodes share the broker's disk.
/// Checked when a run starts; import only warns.
pub fn runnable(plan: &PlanSpec, limits: &Limits) -> Result<(), ValidationErrors> {
    let Some(root) = limits.volume_root.as_deref() else { return Ok(()) };
    let problems: Vec<FieldError> = plan
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| Some((i, step, step.volume_mapping.as_deref()?)))
        .flat_map(|(i, step, volumes)| {
            check_volume_mapping(volumes, Some(root))
                .into_iter()
                .map(move |why| FieldError::new(format!("steps[{i}].volume_mapping"), format!("step {:?}: {why}", step.name)))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(problems))
    }
}

fn check_volume_mapping(volumes: &str, root: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    for mapping in volumes.split(',').map(str::trim) {
        let parts: Vec<&str> = mapping.split(':').collect();
        let host = match parts.as_slice() {
            [c, h] | [c, h, "rw" | "ro"] if c.starts_with('/') && (h.starts_with('/') || h.starts_with('$')) => *h,
            _ => {
                problems.push(format!("{mapping:?} must be /container/path:/host/path with an optional :rw or :ro"));
                continue;
            }
        };
        if let Err(why) = check_host_path(host, root) {
            problems.push(why);
        }
    }
    problems
}

/// A volume's host path may not climb with `..`, and where the broker's own
/// disk is mounted from, its literal part (up to the first `$VARIABLE`) must
/// lie under the volume root (or lead to it). Symbolic links are followed at
/// run time, when the path is resolved on the disk itself.
pub fn check_host_path(host: &str, root: Option<&Path>) -> Result<(), String> {
    let path = Path::new(host);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("host path {host:?} must not contain `..`"));
    }
    let Some(root) = root else { return Ok(()) };
    let literal: PathBuf = path.components().take_while(|c| !c.as_os_str().to_string_lossy().contains('$')).collect();
    let complete = !host.contains('$');
    let inside = literal.starts_with(root) || (!complete && root.starts_with(&literal));
    if host.starts_with('/') && !inside {
        return Err(format!(
            "host path {host:?} is outside the volume root {} (docker.volume_root): nodes on this broker's machine mount only from there",
            root.display()
        ));
    }
    Ok(())
}

/// `container_url`: an http(s) URL (not on a loopback address unless allowed), or
/// a `file://` URL or absolute path under the image root.
pub fn check_image_url(url: &str, limits: &Limits) -> Result<(), String> {
    if let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if host.starts_with('[') {
            host.split(']').next().unwrap_or_default().trim_start_matches('[')
        } else {
            host.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        if !limits.allow_loopback_image_urls && is_loopback_name(host) {
            return Err(format!("{url:?} is on a loopback address, the broker's own; allowed only with docker.allow_loopback_image_urls"));
        }
        return Ok(());
    }
    let local = url.strip_prefix("file://").unwrap_or(url);
    if local.starts_with('/') || local.starts_with('$') || url.starts_with("file://") {
        let Some(root) = &limits.image_root else {
            return Err(format!("{url:?} is on the broker's disk; set docker.image_root to the directory image tarballs may be read from"));
        };
        if !local.starts_with('$')
            && (Path::new(local).components().any(|c| matches!(c, Component::ParentDir)) || !Path::new(local).starts_with(root))
        {
            return Err(format!("{url:?} is outside the image root {} (docker.image_root)", root.display()));
        }
        return Ok(());
    }
    if url.starts_with('$') {
        return Ok(());
    }
    Err(format!("{url:?} must be an http:// or https:// URL, or a file under docker.image_root"))
}

/// Whether a host name or address is this machine's loopback.
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: Value) -> Vec<String> {
        plan(&v, &Limits::default()).unwrap_err().0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_are_those_of_the_original_broker() {
        let v = plan(&json!({"name": "p", "steps": [{"name": "s", "container_name": "img"}]}), &Limits::default()).unwrap();
        assert_eq!(v.value.steps[0], StepSpec::new("s", "img"));
        assert!(v.value.enabled);
    }

    #[test]
    fn nodes_that_would_start_past_the_run_max_time_are_refused_naming_both_fields() {
        let step = |count: u32, delay: u64, max: u64| json!({"name": "p", "steps": [{"name": "s", "container_name": "x", "instance_count": count, "node_delay": delay, "run_max_time": max}]});
        let errs = errors(step(5, 15, 60));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("steps[0].node_delay: the last of 5 nodes would start 60 s after the first"), "{errs:?}");
        assert!(errs[0].contains("run_max_time (60 s)"), "{errs:?}");
        assert!(plan(&step(5, 14, 60), &Limits::default()).is_ok(), "the last node starts 4 s before the end");
        assert!(plan(&step(5, 15, 0), &Limits::default()).is_ok(), "no run_max_time: no end to pass");
        assert!(plan(&step(1, 600, 60), &Limits::default()).is_ok(), "one node waits for none");
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let errs = errors(json!({
            "name": "",
            "bogus": 1,
            "steps": [
                {"name": "a", "container_name": "x", "run_max_time": -1, "instance_count": 0},
                {"name": "a", "container_name": "x", "port_mapping": "80", "volume_mapping": "rel:/x:zz"},
                {"container_name": "x", "run_delay": "soon", "environment_data": ["NOEQUALS"]}
            ]
        }));
        assert_eq!(
            errs,
            vec![
                "bogus: unknown field (expected one of: name, description, enabled, environment_data, dashboard, thresholds, compare, fail_on_regression, steps)",
                "name: must not be empty",
                "steps[0].instance_count: must be at least 1",
                "steps[0].run_max_time: must be >= 0",
                "steps[1].port_mapping: \"80\" must be container_port:host_port with ports 1-65535",
                "steps[1].volume_mapping: \"rel:/x:zz\" must be /container/path:/host/path with an optional :rw or :ro",
                "steps[1].name: duplicate step name \"a\" (also steps[0])",
                "steps[2].name: is required",
                "steps[2].run_delay: must be a whole number, not a string",
                "steps[2].environment_data[0]: must be KEY=VALUE, got \"NOEQUALS\"",
            ]
        );
    }

    #[test]
    fn unknown_variables_are_errors_and_defined_ones_are_not() {
        let errs = errors(json!({
            "name": "p",
            "environment_data": {"TARGET": "http://svc"},
            "steps": [{
                "name": "s",
                "container_name": "img:$TAG",
                "environment_data": {"TAG": "1", "URL": "$TARGET/$RUN_ID", "BAD": "${NOPE}"},
                "additional_command_args": "$$literal $STATSD_HOST"
            }]
        }));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("steps[0].environment_data.BAD: unknown variable `$NOPE`"), "{errs:?}");
    }

    #[test]
    fn environments_are_capped_in_variables_and_bytes() {
        let limits = Limits { max_env_vars: 2, max_env_bytes: 10, ..Limits::default() };
        let err = plan(
            &json!({"name": "p", "environment_data": {"A": "1", "B": "2", "C": "3"}, "steps": [{"name": "s", "container_name": "i"}]}),
            &limits,
        )
        .unwrap_err();
        assert_eq!(err.0[0].to_string(), "environment_data: has 3 variables; at most 2 (limits.max_env_vars)");
        let err = run_env(&json!({"A": "0123456789"}), &limits).unwrap_err();
        assert_eq!((err.0[0].path.as_str(), err.0[0].message.as_str()), ("", "is 11 bytes; at most 10 (limits.max_env_bytes)"));
    }

    #[test]
    fn min_nodes_is_between_one_and_instance_count() {
        let ok = plan(
            &json!({"name": "p", "steps": [{"name": "s", "container_name": "i", "instance_count": 3, "min_nodes": 2}]}),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(ok.value.steps[0].min_nodes, Some(2));
        let default = plan(&json!({"name": "p", "steps": [{"name": "s", "container_name": "i"}]}), &Limits::default()).unwrap();
        assert_eq!(default.value.steps[0].min_nodes, None, "all nodes");
        for bad in [0, 4] {
            let err = plan(
                &json!({"name": "p", "steps": [{"name": "s", "container_name": "i", "instance_count": 3, "min_nodes": bad}]}),
                &Limits::default(),
            )
            .unwrap_err();
            assert_eq!(err.0[0].to_string(), "steps[0].min_nodes: must be from 1 to instance_count (3)");
        }
    }

    #[test]
    fn a_step_takes_one_region_a_list_or_shares_summing_to_100() {
        let regions = |v: Value| {
            plan(&json!({"name": "p", "steps": [{"name": "s", "container_name": "i", "instance_region": v}]}), &Limits::default())
                .map(|p| p.value.steps[0].instance_region.clone())
                .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(regions(json!("eu-west-1")), Ok(Regions::one("eu-west-1")));
        assert_eq!(regions(json!(["us-east-1", "eu-west-1"])), Ok(Regions::Equal(vec!["us-east-1".into(), "eu-west-1".into()])));
        assert_eq!(
            regions(json!({"us-east-1": 60, "eu-west-1": 40})),
            Ok(Regions::Shares(BTreeMap::from([("us-east-1".into(), 60), ("eu-west-1".into(), 40)])))
        );
        assert_eq!(regions(json!({"us-east-1": 100})), Ok(Regions::one("us-east-1")), "one region with every node");
        let err = |v: Value| regions(v).unwrap_err();
        assert_eq!(err(json!({"us-east-1": 60, "eu-west-1": 30})), ["steps[0].instance_region: the shares must sum to 100, not 90"]);
        assert_eq!(
            err(json!({"us-east-1": 0, "eu-west-1": 100})),
            ["steps[0].instance_region.us-east-1: must be a whole percentage from 1 to 100, not 0"]
        );
        assert_eq!(err(json!({"us-east-1": 50.5, "eu-west-1": 49.5})).len(), 2, "a fraction of a percent is refused, each region named");
        assert_eq!(err(json!({"US East": 100})), ["steps[0].instance_region.US East: \"US East\" is not a region such as \"us-west-2\""]);
        assert_eq!(err(json!(["a-1", "a-1"])), ["steps[0].instance_region[1]: \"a-1\" is listed twice"]);
        assert_eq!(err(json!([])), ["steps[0].instance_region: must name from 1 to 10 regions, not 0"]);
        assert_eq!(err(json!([1])), ["steps[0].instance_region[0]: must be a region name, not a number"]);
        assert!(err(json!(true))[0].starts_with("steps[0].instance_region: must be a region such as"));
        let many: serde_json::Map<String, Value> = (0..11).map(|i| (format!("r-{i}"), json!(1))).collect();
        assert_eq!(err(Value::Object(many)), ["steps[0].instance_region: must name from 1 to 10 regions, not 11"]);
    }

    #[test]
    fn instance_count_is_capped_by_configuration() {
        let limits = Limits { max_instance_count: 5, ..Limits::default() };
        let err = plan(&json!({"name": "p", "steps": [{"name": "s", "container_name": "i", "instance_count": 6}]}), &limits).unwrap_err();
        assert_eq!(err.0[0].to_string(), "steps[0].instance_count: must be at most 5 (limits.max_instance_count)");
    }

    #[test]
    fn monitor_steps_need_no_image_and_warn() {
        let v = plan(&json!({"name": "p", "steps": [{"name": "m", "monitor": true}]}), &Limits::default()).unwrap();
        assert_eq!(v.warnings.len(), 1);
        assert_eq!(v.warnings[0].path, "steps[0].monitor");
    }

    #[test]
    fn a_monitor_step_without_a_name_is_named_monitor() {
        let step = json!({"monitor": true, "instance_type": "m3.medium", "instance_region": "us-west-2", "dns_name": "monitor.example"});
        let v = plan(&json!({"name": "p", "steps": [step]}), &Limits::default()).unwrap();
        assert_eq!(v.value.steps[0].name, MONITOR_NAME);
        let errs = errors(json!({"name": "p", "steps": [{"container_name": "x"}]}));
        assert_eq!(errs, ["steps[0].name: is required"], "other steps still need a name");
    }

    #[test]
    fn run_env_accepts_objects_and_lists() {
        let limits = Limits::default();
        assert_eq!(run_env(&json!({"A": 1, "B": "x"}), &limits).unwrap().get("A").map(String::as_str), Some("1"));
        assert_eq!(run_env(&json!(["A=1=2"]), &limits).unwrap().get("A").map(String::as_str), Some("1=2"));
        assert!(run_env(&json!("A=1"), &limits).is_err());
    }

    #[test]
    fn names_refuse_control_characters_and_great_lengths() {
        let long = "n".repeat(MAX_NAME_CHARS + 1);
        let errs = errors(json!({"name": "a\tb", "steps": [{"name": long, "container_name": "x"}]}));
        assert_eq!(
            errs,
            ["name: must not contain control characters (tabs, newlines, NUL...)", "steps[0].name: must be at most 200 characters"]
        );
    }

    #[test]
    fn durations_past_thirty_days_are_refused_not_truncated() {
        let errs = errors(
            json!({"name": "p", "steps": [{"name": "s", "container_name": "x", "run_delay": u64::MAX, "run_max_time": MAX_SECONDS + 1}]}),
        );
        assert_eq!(
            errs,
            [
                "steps[0].run_delay: must be at most 2592000 seconds (30 days)",
                "steps[0].run_max_time: must be at most 2592000 seconds (30 days)"
            ]
        );
    }

    #[test]
    fn image_urls_are_http_or_files_under_the_image_root() {
        let limits = Limits { image_root: Some("/srv/images".into()), ..Limits::default() };
        for ok in [
            "https://s3.amazonaws.com/b/i.tar.bz2",
            "http://images.example:8080/i.tar",
            "/srv/images/i.tar",
            "file:///srv/images/i.tar",
            "https://h/$TAG.tar",
        ] {
            assert_eq!(check_image_url(ok, &limits), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "gopher://h/i",
            "ftp://h/i.tar",
            "/etc/shadow",
            "file:///etc/passwd",
            "/srv/images/../../etc/passwd",
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://[::1]/x",
            "http://0.0.0.0/x",
            "https:///x",
        ] {
            assert!(check_image_url(bad, &limits).is_err(), "{bad}");
        }
        assert!(check_image_url("/srv/images/i.tar", &Limits::default()).unwrap_err().contains("docker.image_root"));
        let open = Limits { allow_loopback_image_urls: true, ..Limits::default() };
        assert_eq!(check_image_url("http://127.0.0.1:9/x", &open), Ok(()));
    }

    #[test]
    fn host_paths_outside_the_volume_root_import_with_a_warning_and_are_refused_at_run_start() {
        let local = Limits { volume_root: Some("/var/tmp/loads/volumes".into()), ..Limits::default() };
        let plan = |mapping: &str| json!({"name": "p", "steps": [{"name": "s", "container_name": "x", "volume_mapping": mapping}]});
        for ok in ["/d:/var/tmp/loads/volumes/$RUN_ID:rw", "/d:/var/tmp/loads/volumes/a", "/d:$RUN_ID", "/d:/var/tmp/$RUN_ID"] {
            let v = super::plan(&plan(ok), &local).unwrap();
            assert!(v.warnings.is_empty(), "{ok}: {:?}", v.warnings);
            assert_eq!(runnable(&v.value, &local), Ok(()), "{ok}");
        }
        for outside in ["/x:/etc", "/x:/var/log/$RUN_ID:rw"] {
            let v = super::plan(&plan(outside), &local).unwrap();
            assert_eq!(v.warnings[0].path, "steps[0].volume_mapping", "{outside}");
            assert!(v.warnings[0].message.contains("outside the volume root"), "{:?}", v.warnings);
            let refused = runnable(&v.value, &local).unwrap_err();
            assert_eq!(refused.0[0].path, "steps[0].volume_mapping");
            assert!(refused.0[0].message.starts_with("step \"s\": host path"), "{:?}", refused.0);
            assert!(refused.0[0].message.contains("docker.volume_root"), "{:?}", refused.0);
            assert_eq!(runnable(&v.value, &Limits::default()), Ok(()));
        }
        let climbing = super::plan(&plan("/x:/var/tmp/loads/volumes/../../../etc"), &local).unwrap_err();
        assert_eq!(climbing.0[0].path, "steps[0].volume_mapping");
        // Nodes that are machines of their own mount from their own disk; `..` is still refused.
        assert!(super::plan(&plan("/x:/var/log/$RUN_ID:rw"), &Limits::default()).is_ok());
        assert!(super::plan(&plan("/x:/a/../etc"), &Limits::default()).is_err());
    }

    fn thresholds_plan(thresholds: Value) -> Value {
        json!({"name": "p", "thresholds": thresholds, "steps": [{"name": "c-generator", "container_name": "x"}]})
    }

    #[test]
    fn thresholds_take_k6_syntax_in_strings_and_objects() {
        let v = plan(
            &thresholds_plan(json!({
                "demo.c.latency": ["p(95)<200", {"threshold": "p(99)<500", "abort_on_fail": true, "delay_abort_eval": "10s"}],
                "demo.c.requests{status:error}": ["rate<1"],
                "demo.c.latency{step:c-generator}": [{"threshold": "avg<50", "window": "30s"}],
                "errors/requests": "value<0.01"
            })),
            &Limits::default(),
        )
        .unwrap()
        .value;
        assert_eq!(v.thresholds.len(), 4);
        let latency = &v.thresholds["demo.c.latency"];
        assert_eq!(latency[0], ThresholdRule::plain("p(95)<200"));
        assert!(latency[1].abort_on_fail && latency[1].delay_abort_eval.as_deref() == Some("10s"));
        assert_eq!(v.thresholds["demo.c.latency{step:c-generator}"][0].window.as_deref(), Some("30s"));
        assert_eq!(v.thresholds["errors/requests"], vec![ThresholdRule::plain("value<0.01")]);
    }

    #[test]
    fn bad_thresholds_are_refused_at_their_path() {
        let project = json!({"name": "demo", "plans": [thresholds_plan(json!({
            "demo.c.latency": ["p(95)<200", {"threshold": "p95<500", "abort_on_fail": true}],
            "a/b": ["p(95)<1"],
            "lat{step:nope}": ["avg<1"],
            "lat": [{"threshold": "avg<1", "window": "500ms", "colour": "red"}, 7]
        }))]});
        let errs: Vec<String> = super::project(&project, &Limits::default()).unwrap_err().0.iter().map(ToString::to_string).collect();
        assert_eq!(
            errs,
            [
                "plans[0].thresholds[\"a/b\"][0]: a ratio of two counters is judged by its value, e.g. \"value<0.01\", not p(95)",
                "plans[0].thresholds[\"demo.c.latency\"][1].threshold: unknown aggregation \"p95\"; did you mean \"p(95)\"?",
                "plans[0].thresholds[\"lat\"][0].colour: unknown field (expected one of: threshold, abort_on_fail, delay_abort_eval, window)",
                "plans[0].thresholds[\"lat\"][0].window: must be at least 1s (metrics arrive in one-second windows)",
                "plans[0].thresholds[\"lat\"][1]: must be an expression such as \"p(95)<200\", or an object with threshold, not a number",
                "plans[0].thresholds[\"lat{step:nope}\"]: no step named \"nope\" in this plan (steps: c-generator)",
            ]
        );
        let step = json!({"name": "p", "steps": [{"name": "s", "container_name": "x", "thresholds": {"lat{step:s}": ["avg<1"]}}]});
        assert_eq!(
            errors(step),
            ["steps[0].thresholds[\"lat{step:s}\"]: a step's thresholds are judged on that step only; leave out the step filter"]
        );
        let many: serde_json::Map<String, Value> = (0..=MAX_THRESHOLDS).map(|i| (format!("m{i}"), json!(["count>0"]))).collect();
        assert!(errors(thresholds_plan(Value::Object(many)))[0].contains("at most 200"));
    }

    #[test]
    fn regression_rules_are_checked_and_fail_on_regression_warns_alone() {
        let v = plan(
            &json!({"name": "p", "compare": {"lat": ["p(95) +10%", "max +50ms"], "req": "rate -5%"}, "fail_on_regression": true,
            "steps": [{"name": "s", "container_name": "x"}]}),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(v.value.compare["lat"], ["p(95) +10%", "max +50ms"]);
        assert!(v.value.fail_on_regression && v.warnings.is_empty());
        let lonely =
            plan(&json!({"name": "p", "fail_on_regression": true, "steps": [{"name": "s", "container_name": "x"}]}), &Limits::default())
                .unwrap();
        assert_eq!(lonely.warnings[0].path, "fail_on_regression");
        let errs = errors(
            json!({"name": "p", "compare": {"a/b": ["value +1"], "lat": ["p95 +10%", 3]}, "steps": [{"name": "s", "container_name": "x"}]}),
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].starts_with("compare[\"a/b\"]: compare a metric, not a ratio"), "{errs:?}");
        assert!(errs[2].starts_with("compare[\"lat\"][0]: unknown aggregation \"p95\""), "{errs:?}");
    }
}
