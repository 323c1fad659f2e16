//! Thresholds and regression rules as a plan writes them, and their parsers.
//!
//! The syntax is k6's, on loads' metric names: a plan (or a step) maps a
//! metric key to a list of expressions, each a string or an object with
//! options:
//!
//! ```toml
//! [plans.thresholds]
//! "demo.c.latency" = ["p(95)<200", { threshold = "p(99)<500", abort_on_fail = true, delay_abort_eval = "10s" }]
//! "demo.c.requests{status:error}" = ["rate<1"]
//! "errors/requests" = ["value<0.01"]
//! ```
//!
//! A key is a metric name with optional filters on its tags (statsd `;k=v`
//! and `|#k:v` tags, plus `step` and `node`), or the ratio of two counters.
//! An expression is an aggregation, a comparison and a number in the
//! metric's unit (milliseconds for timers; `ms` and `s` suffixes allowed).
//! Regression rules (`[plans.compare]`) say how much worse than the baseline
//! an aggregation may get: `"p(95) +10%"`, `"rate -5%"`, `"max +50ms"`.
//!
//! Everything here is parsed when a plan is validated (with the path of the
//! field in every error) and again, from the stored text, when a run is judged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The thresholds of a plan or a step: for each metric key as written, its expressions.
pub type Thresholds = BTreeMap<String, Vec<ThresholdRule>>;

/// The regression rules of a plan: for each metric key, rules such as `p(95) +10%`.
pub type CompareRules = BTreeMap<String, Vec<String>>;

/// One threshold on a metric.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdRule {
    /// The expression, e.g. `p(95)<200`.
    pub threshold: String,
    /// Stop the whole run as soon as it fails (after `delay_abort_eval`).
    #[serde(default)]
    pub abort_on_fail: bool,
    /// How long after the run's first metrics a failure may abort it, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_abort_eval: Option<String>,
    /// Judge over this sliding window (e.g. `30s`) instead of the run so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

impl ThresholdRule {
    /// A plain expression with no options.
    pub fn plain(threshold: impl Into<String>) -> Self {
        Self { threshold: threshold.into(), abort_on_fail: false, delay_abort_eval: None, window: None }
    }
}

/// Which samples a key selects: a metric name, the tags it must carry, and optionally one step, one node and one region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// The metric's name, without tags.
    pub name: String,
    /// Tags the samples must carry, with these values.
    pub tags: BTreeMap<String, String>,
    /// Only samples of this step.
    pub step: Option<String>,
    /// Only samples of this node.
    pub node: Option<String>,
    /// Only samples of nodes in this region.
    pub region: Option<String>,
}

impl Selector {
    /// Whether a stored metric key (`name` or `name;k=v,k2`) is selected, tags aside from step and node.
    pub fn matches_key(&self, key: &str) -> bool {
        let (name, tags) = key.split_once(';').unwrap_or((key, ""));
        if name != self.name {
            return false;
        }
        self.tags.iter().all(|(k, v)| {
            tags.split(',').any(|tag| match tag.split_once('=') {
                Some((tk, tv)) => tk == k && tv == v,
                None => tag == k && v.is_empty(),
            })
        })
    }

    /// Whether samples of `step` on `node`, in `region`, are selected.
    pub fn matches_origin(&self, step: &str, node: &str, region: &str) -> bool {
        self.step.as_deref().is_none_or(|s| s == step)
            && self.node.as_deref().is_none_or(|n| n == node)
            && self.region.as_deref().is_none_or(|r| r == region)
    }
}

/// What a threshold's key measures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricKey {
    /// One metric.
    Single(Selector),
    /// The ratio of two counters, e.g. `errors/requests`.
    Ratio(Selector, Selector),
}

impl MetricKey {
    /// The selectors it reads.
    pub fn selectors(&self) -> Vec<&Selector> {
        match self {
            Self::Single(s) => vec![s],
            Self::Ratio(a, b) => vec![a, b],
        }
    }

    /// Every selector limited to `step` (a step's own thresholds).
    pub fn scoped_to(mut self, step: &str) -> Self {
        match &mut self {
            Self::Single(s) => s.step = Some(step.to_string()),
            Self::Ratio(a, b) => {
                a.step = Some(step.to_string());
                b.step = Some(step.to_string());
            }
        }
        self
    }
}

/// How a metric's samples are summed up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Aggregation {
    /// `p(N)`: the Nth percentile of a timer.
    Percentile(f64),
    /// `avg`: a timer's mean.
    Avg,
    /// `min`: a timer's or a gauge's smallest value.
    Min,
    /// `max`: a timer's or a gauge's largest value.
    Max,
    /// `med`: a timer's median.
    Med,
    /// `count`: a counter's total, or a timer's samples.
    Count,
    /// `rate`: `count` per second.
    Rate,
    /// `value`: a gauge's value (summed over nodes), or a ratio's.
    Value,
}

impl Aggregation {
    /// Whether its values are durations (milliseconds), so `ms`/`s` suffixes apply.
    pub fn is_duration(self) -> bool {
        matches!(self, Self::Percentile(_) | Self::Avg | Self::Min | Self::Max | Self::Med)
    }

    /// How it is written.
    pub fn text(self) -> String {
        match self {
            Self::Percentile(p) => format!("p({})", number_text(p)),
            Self::Avg => "avg".into(),
            Self::Min => "min".into(),
            Self::Max => "max".into(),
            Self::Med => "med".into(),
            Self::Count => "count".into(),
            Self::Rate => "rate".into(),
            Self::Value => "value".into(),
        }
    }
}

/// A number as a person writes it: no trailing `.0`.
pub fn number_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    /// Whether `value` holds against `bound`.
    pub fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Self::Lt => value < bound,
            Self::Le => value <= bound,
            Self::Gt => value > bound,
            Self::Ge => value >= bound,
            Self::Eq => value == bound,
            Self::Ne => value != bound,
        }
    }
}

/// A parsed threshold expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What is computed.
    pub aggregation: Aggregation,
    /// How it is compared.
    pub op: Op,
    /// With what, in the metric's unit.
    pub bound: f64,
}

const AGGREGATIONS: [&str; 8] = ["p(N)", "avg", "min", "max", "med", "count", "rate", "value"];

/// Parses an aggregation name (`p(95)`, `avg`, ...), suggesting the intended one for common slips.
pub fn parse_aggregation(text: &str) -> Result<Aggregation, String> {
    let t = text.trim();
    let simple = match t {
        "avg" => Some(Aggregation::Avg),
        "min" => Some(Aggregation::Min),
        "max" => Some(Aggregation::Max),
        "med" => Some(Aggregation::Med),
        "count" => Some(Aggregation::Count),
        "rate" => Some(Aggregation::Rate),
        "value" => Some(Aggregation::Value),
        _ => None,
    };
    if let Some(a) = simple {
        return Ok(a);
    }
    if let Some(inner) = t.strip_prefix("p(").and_then(|r| r.strip_suffix(')')) {
        let p: f64 = inner.trim().parse().map_err(|_| format!("p({inner}): the percentile must be a number, e.g. p(95) or p(99.9)"))?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(format!("p({inner}): the percentile must be above 0 and at most 100"));
        }
        return Ok(Aggregation::Percentile(p));
    }
    let lower = t.to_ascii_lowercase();
    let suggestion = if let Some(n) = lower.strip_prefix('p').filter(|n| !n.is_empty() && n.parse::<f64>().is_ok()) {
        Some(format!("p({n})"))
    } else {
        match lower.as_str() {
            "mean" | "average" | "avg()" => Some("avg".to_string()),
            "median" | "p50" => Some("med".to_string()),
            "sum" | "total" | "counter" => Some("count".to_string()),
            "gauge" | "last" | "ratio" => Some("value".to_string()),
            "minimum" => Some("min".to_string()),
            "maximum" => Some("max".to_string()),
            "rps" | "per_second" | "throughput" => Some("rate".to_string()),
            other => closest(other, &["avg", "min", "max", "med", "count", "rate", "value"]).map(str::to_string),
        }
    };
    Err(match suggestion {
        Some(s) => format!("unknown aggregation {t:?}; did you mean {s:?}?"),
        None => format!("unknown aggregation {t:?} (expected one of: {})", AGGREGATIONS.join(", ")),
    })
}

/// The candidate within two edits of `word`, if one is.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates.iter().map(|c| (edit_distance(word, c), *c)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Parses a number with an optional `ms` or `s` suffix (answered in milliseconds).
fn parse_amount(text: &str, durations: bool) -> Result<f64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("a number is missing after the comparison".into());
    }
    let (digits, factor, suffix) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0, true)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0, true)
    } else {
        (t, 1.0, false)
    };
    if suffix && !durations {
        return Err(format!("{t:?}: a duration suffix (ms, s) applies only to timer values: p(N), avg, min, max, med"));
    }
    let n: f64 = digits.trim().parse().map_err(|_| format!("{t:?} is not a number"))?;
    if !n.is_finite() {
        return Err(format!("{t:?} is not a finite number"));
    }
    Ok(n * factor)
}

/// Parses a threshold expression such as `p(95)<200`, `rate < 1` or `avg<=1.5s`.
pub fn parse_expr(text: &str) -> Result<Expr, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("is empty; write an aggregation, a comparison and a number, e.g. \"p(95)<200\"".into());
    }
    let ops = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];
    let found = t.char_indices().find_map(|(i, _)| ops.iter().find(|(s, _)| t[i..].starts_with(s)).map(|(s, op)| (i, *s, *op)));
    let Some((at, sign, op)) = found else {
        if t.contains('=') {
            return Err(format!("{t:?}: use == to compare for equality"));
        }
        return Err(format!("{t:?} has no comparison (<, <=, >, >=, ==, !=), e.g. \"p(95)<200\""));
    };
    let aggregation = parse_aggregation(&t[..at])?;
    let bound = parse_amount(&t[at + sign.len()..], aggregation.is_duration())?;
    Ok(Expr { aggregation, op, bound })
}

/// Parses a duration: `500ms`, `10s`, `2m`, `1h`, `1m30s`, or a number of seconds; answers milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(seconds) = t.parse::<u64>() {
        return seconds.checked_mul(1000).ok_or_else(|| format!("{t:?} is too long"));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    if rest.is_empty() {
        return Err("is empty; write a duration such as \"10s\" or \"1m\"".into());
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!("{t:?} is not a duration (e.g. 500ms, 10s, 2m, 1h, 1m30s)"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{t:?} is too long"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(format!("{t:?}: each number needs a unit (ms, s, m or h)"));
        };
        rest = &rest[len..];
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("{t:?} is too long"))?;
    }
    Ok(total)
}

fn is_name_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !matches!(c, '{' | '}' | '/' | '|' | ':' | ';' | ',' | '#' | '@' | '"')
}

fn parse_selector(text: &str) -> Result<Selector, String> {
    let t = text.trim();
    let (name, filters) = match t.split_once('{') {
        Some((name, rest)) => {
            let Some(inner) = rest.strip_suffix('}') else {
                return Err(format!("{t:?}: the filters must end with }}"));
            };
            (name.trim(), Some(inner))
        }
        None => (t, None),
    };
    if name.is_empty() {
        return Err(format!("{t:?} has no metric name"));
    }
    if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(format!("{name:?}: {bad:?} cannot be part of a metric name"));
    }
    let mut selector = Selector { name: name.to_string(), ..Selector::default() };
    for filter in filters.into_iter().flat_map(|f| f.split(',')).map(str::trim) {
        let Some((k, v)) = filter.split_once(':') else {
            return Err(format!("filter {filter:?} must be tag:value, e.g. {{status:error}}"));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.chars().all(is_name_char) || !v.chars().all(|c| is_name_char(c) || c == ':') {
            return Err(format!("filter {filter:?} must be tag:value with a tag name and a value"));
        }
        let slot = match k {
            "step" => &mut selector.step,
            "node" => &mut selector.node,
            "region" => &mut selector.region,
            _ => {
                if selector.tags.insert(k.to_string(), v.to_string()).is_some() {
                    return Err(format!("tag {k:?} is filtered twice"));
                }
                continue;
            }
        };
        if slot.replace(v.to_string()).is_some() {
            return Err(format!("{k:?} is filtered twice"));
        }
    }
    Ok(selector)
}

/// Parses a metric key: `name`, `name{tag:value,step:s,node:n,region:r}`, or `counter/counter` (each side with filters).
pub fn parse_key(text: &str) -> Result<MetricKey, String> {
    let mut depth = 0;
    let mut split = None;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                if split.is_some() {
                    return Err(format!("{text:?}: a ratio has one / between two counters"));
                }
                split = Some(i);
            }
            _ => {}
        }
    }
    match split {
        None => parse_selector(text).map(MetricKey::Single),
        Some(i) => Ok(MetricKey::Ratio(parse_selector(&text[..i])?, parse_selector(&text[i + 1..])?)),
    }
}

/// Which way a regression goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Higher is worse (latency, errors).
    Up,
    /// Lower is worse (throughput).
    Down,
}

/// A regression rule: `p(95) +10%` is a regression when p(95) rose by more than 10%.
#[derive(Clone, Debug, PartialEq)]
pub struct RegressionRule {
    /// What is compared.
    pub aggregation: Aggregation,
    /// Which way is worse.
    pub direction: Direction,
    /// How much worse is allowed: a fraction (relative) or an amount in the metric's unit.
    pub allowed: f64,
    /// Whether `allowed` is relative to the baseline.
    pub relative: bool,
}

/// Parses a regression rule: an aggregation, then `+` or `-` and an amount (`10%`, `50ms`, `3`).
pub fn parse_rule(text: &str) -> Result<RegressionRule, String> {
    let t = text.trim();
    let Some(at) = t.rfind(['+', '-']) else {
        return Err(format!("{t:?} must be an aggregation and how much worse is allowed, e.g. \"p(95) +10%\" or \"rate -5%\""));
    };
    let aggregation = parse_aggregation(&t[..at])?;
    if matches!(aggregation, Aggregation::Percentile(p) if ![50.0, 90.0, 95.0, 99.0].contains(&p)) {
        return Err(format!("{t:?}: runs keep p(50), p(90), p(95) and p(99) to compare"));
    }
    if aggregation == Aggregation::Value {
        return Err(format!("{t:?}: compare a counter's count or rate, or a timer's percentiles, avg, min, max"));
    }
    let direction = if t[at..].starts_with('+') { Direction::Up } else { Direction::Down };
    let amount = t[at + 1..].trim();
    let (allowed, relative) = match amount.strip_suffix('%') {
        Some(p) => (p.trim().parse::<f64>().map_err(|_| format!("{amount:?} is not a percentage"))? / 100.0, true),
        None => (parse_amount(amount, aggregation.is_duration())?, false),
    };
    if !allowed.is_finite() || allowed < 0.0 {
        return Err(format!("{amount:?} must be a positive amount"));
    }
    Ok(RegressionRule { aggregation, direction, allowed, relative })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_parse_with_units_and_spaces() {
        let e = parse_expr("p(95)<200").unwrap();
        assert_eq!((e.aggregation, e.op, e.bound), (Aggregation::Percentile(95.0), Op::Lt, 200.0));
        let e = parse_expr(" p( 99.9 ) <= 1.5s ").unwrap();
        assert_eq!((e.aggregation, e.op, e.bound), (Aggregation::Percentile(99.9), Op::Le, 1500.0));
        assert_eq!(parse_expr("avg<50ms").unwrap().bound, 50.0);
        assert_eq!(parse_expr("rate<1").unwrap().aggregation, Aggregation::Rate);
        assert_eq!(parse_expr("count>=10").unwrap().op, Op::Ge);
        assert_eq!(parse_expr("value!=0").unwrap().op, Op::Ne);
        assert_eq!(parse_expr("value<-1").unwrap().bound, -1.0);
    }

    #[test]
    fn bad_expressions_say_what_to_write() {
        let err = |t: &str| parse_expr(t).unwrap_err();
        assert_eq!(err("p95<200"), "unknown aggregation \"p95\"; did you mean \"p(95)\"?");
        assert_eq!(err("mean<3"), "unknown aggregation \"mean\"; did you mean \"avg\"?");
        assert_eq!(err("rte<1"), "unknown aggregation \"rte\"; did you mean \"rate\"?");
        assert!(err("p(0)<1").contains("above 0 and at most 100"));
        assert!(err("p(x)<1").contains("must be a number"));
        assert!(err("avg 200").contains("has no comparison"));
        assert!(err("avg=200").contains("use =="));
        assert!(err("avg<").contains("number is missing"));
        assert!(err("avg<fast").contains("is not a number"));
        assert!(err("rate<1s").contains("applies only to timer values"));
        assert!(err("").contains("is empty"));
        assert!(err("bogus<1").contains("expected one of"));
    }

    #[test]
    fn keys_select_names_tags_steps_nodes_and_ratios() {
        let MetricKey::Single(s) = parse_key("demo.c.requests{status:error, step:c-generator}").unwrap() else { panic!() };
        assert_eq!(s.name, "demo.c.requests");
        assert_eq!(s.tags, BTreeMap::from([("status".into(), "error".into())]));
        assert_eq!(s.step.as_deref(), Some("c-generator"));
        assert!(s.matches_key("demo.c.requests;az=b,status=error"));
        assert!(!s.matches_key("demo.c.requests;status=ok"));
        assert!(!s.matches_key("demo.c.requests"));
        assert!(!s.matches_key("demo.c.requests.more;status=error"));
        assert!(s.matches_origin("c-generator", "s2n0", "us-west-2") && !s.matches_origin("shell", "s2n0", "us-west-2"));
        let MetricKey::Single(s) = parse_key("lat{region:eu-west-1}").unwrap() else { panic!() };
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert!(s.matches_origin("gen", "s0n0", "eu-west-1") && !s.matches_origin("gen", "s0n1", "us-east-1"));
        let MetricKey::Ratio(a, b) = parse_key("errors{step:x}/requests").unwrap() else { panic!() };
        assert_eq!((a.name.as_str(), a.step.as_deref(), b.name.as_str()), ("errors", Some("x"), "requests"));
        for bad in ["", "{a:b}", "a{b}", "a{b:c", "a/b/c", "a b", "a{step:x,step:y}", "a{k:v,k:w}", "a{:v}"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("10s"), Ok(10_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("15"), Ok(15_000));
        for bad in ["", "s", "10x", "1.5s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regression_rules_are_relative_or_absolute_either_way() {
        let r = parse_rule("p(95) +10%").unwrap();
        assert_eq!((r.aggregation, r.direction, r.relative), (Aggregation::Percentile(95.0), Direction::Up, true));
        assert!((r.allowed - 0.1).abs() < 1e-12);
        let r = parse_rule("rate -5%").unwrap();
        assert_eq!(r.direction, Direction::Down);
        let r = parse_rule("max +50ms").unwrap();
        assert_eq!((r.allowed, r.relative), (50.0, false));
        assert!(parse_rule("p(97) +1%").unwrap_err().contains("p(50), p(90), p(95) and p(99)"));
        assert!(parse_rule("p(95)").is_err());
        assert!(parse_rule("p95 +10%").unwrap_err().contains("did you mean \"p(95)\""));
        assert!(parse_rule("count +x%").is_err());
    }
}
