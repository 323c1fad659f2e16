//! Turns a parsed document into specs, reporting every problem at once.
//!
//! The walk is done by hand over a JSON value rather than by serde derive,
//! because serde stops at the first error and users want the whole list, each
//! with the path of the field (`plans[0].steps[1].run_max_time: must be >= 0`).

mod plan;
mod step;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::error::{FieldError, ValidationErrors};
use super::regions::{Regions, MAX_REGIONS};
use super::spec::{Env, PlanSpec, ProjectSpec};

pub use self::step::{check_host_path, check_image_url, is_loopback_name, runnable};

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::spec::StepSpec;
    use crate::domain::thresholds::ThresholdRule;
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
