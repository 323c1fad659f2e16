//! Property tests of the parsers that take outside input: statsd lines (from
//! any process on a node), plan documents (from any API client) and `$VAR`
//! templates, threshold expressions and keys. None may panic, whatever the
//! input; what they accept must be usable downstream (windows survive their
//! JSON trip to the broker; a threshold written out reads back the same).

use proptest::prelude::*;
use serde_json::Value;

use super::judge::{Judge, Threshold};
use super::metrics::{parse_line, Aggregator, Merged, Window};
use super::parse::{parse_document, DocumentFormat};
use super::thresholds::{self, number_text, Aggregation, Op};
use super::{interpolate, validate, Limits};

/// Statsd-looking text: valid lines, their pieces recombined, and noise.
fn statsd_text() -> impl Strategy<Value = String> {
    let name = "[a-z._;=#@|:-]{0,12}";
    let number = prop_oneof![
        Just("1e308".to_string()),
        Just("-1e308".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("0".to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[0-9.eE+-]{0,10}",
    ];
    let kind = prop_oneof!["c", "g", "ms", "h", "d", "s", "[a-z]{0,3}"];
    let extra = prop_oneof![Just(String::new()), "\\|@[0-9.eE-]{0,6}", "\\|#[a-z:,=]{0,10}", "\\|[^\n]{0,6}"];
    let line = (name, number, kind, extra).prop_map(|(n, v, k, e)| format!("{n}:{v}|{k}{e}"));
    prop_oneof![prop::collection::vec(line, 0..20).prop_map(|lines| lines.join("\n")), any::<String>(),]
}

/// Arbitrary JSON values, nested a few levels, biased towards plan-like keys.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "\\$\\{?[A-Z_]{0,4}\\}?\\$?".prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("name".to_string()),
        Just("steps".to_string()),
        Just("plans".to_string()),
        Just("environment_data".to_string()),
        Just("instance_count".to_string()),
        Just("min_nodes".to_string()),
        Just("container_name".to_string()),
        Just("port_mapping".to_string()),
        Just("volume_mapping".to_string()),
        Just("dns_name".to_string()),
        Just("run_max_time".to_string()),
        Just("thresholds".to_string()),
        Just("compare".to_string()),
        Just("threshold".to_string()),
        Just("window".to_string()),
        "[a-z.]{1,6}(\\{[a-z]{1,3}:[a-z]{0,3}\\})?".prop_map(|k| k),
        any::<String>(),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Threshold-looking text: aggregations, comparisons, numbers and units, recombined, and noise.
fn threshold_text() -> impl Strategy<Value = String> {
    let agg = prop_oneof!["p\\([0-9.]{0,5}\\)", "avg|min|max|med|count|rate|value", "p[0-9]{1,3}", "[a-z()]{0,6}"];
    let op = prop_oneof!["<|<=|>|>=|==|!=", "[=<>!]{0,3}"];
    let amount = prop_oneof![any::<f64>().prop_map(|f| f.to_string()), "-?[0-9.e]{0,8}(ms|s|%|m|h)?", "[ +-][0-9]{0,4}%?"];
    prop_oneof![(agg, op, amount).prop_map(|(a, o, n)| format!("{a}{o}{n}")), any::<String>()]
}

/// An aggregation, a comparison and a bound, as a writer of plans would put them.
fn expression() -> impl Strategy<Value = (Aggregation, Op, f64, &'static str)> {
    let agg = prop_oneof![
        (1u32..=1000).prop_map(|p| Aggregation::Percentile(f64::from(p) / 10.0)),
        Just(Aggregation::Avg),
        Just(Aggregation::Min),
        Just(Aggregation::Max),
        Just(Aggregation::Med),
        Just(Aggregation::Count),
        Just(Aggregation::Rate),
        Just(Aggregation::Value),
    ];
    let op = prop_oneof![Just(Op::Lt), Just(Op::Le), Just(Op::Gt), Just(Op::Ge), Just(Op::Eq), Just(Op::Ne)];
    let unit = prop_oneof![Just(""), Just("ms"), Just("s")];
    (agg, op, -1.0e6f64..1.0e6, unit).prop_map(|(a, o, n, u)| (a, o, (n * 1000.0).round() / 1000.0, if a.is_duration() { u } else { "" }))
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Eq => "==",
        Op::Ne => "!=",
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn statsd_input_never_panics_and_windows_survive_their_trip(text in statsd_text()) {
        for line in text.lines() {
            let _ = parse_line(line);
        }
        let mut aggregator = Aggregator::default();
        aggregator.take(&text);
        aggregator.take(&text);
        let window = aggregator.flush(1, 0, 1000);
        let json = serde_json::to_string(&window).expect("a window serializes");
        let back: Window = serde_json::from_str(&json).expect("and reads back");
        prop_assert!(back.counters.values().chain(back.gauges.values()).all(|v| v.is_finite()));
        let mut merged = Merged::default();
        for _ in 0..3 {
            merged.add(&back);
        }
        prop_assert!(merged.counters.values().chain(merged.gauges.values()).all(|v| v.is_finite()));
    }

    #[test]
    fn plan_documents_never_panic(value in json_value()) {
        let limits = Limits::default();
        let _ = validate::plan(&value, &limits);
        let _ = validate::project(&value, &limits);
        let _ = validate::run_env(&value, &limits);
        let wrapped = serde_json::json!({"name": "p", "steps": [value.clone()]});
        let _ = validate::plan(&wrapped, &limits);
    }

    #[test]
    fn documents_in_any_format_never_panic(text in any::<String>()) {
        for format in [DocumentFormat::Json, DocumentFormat::Toml, DocumentFormat::Yaml] {
            if let Ok(value) = parse_document(&text, format) {
                let _ = validate::project(&value, &Limits::default());
            }
        }
    }

    #[test]
    fn templates_never_panic(text in "[$a-zA-Z_{}0-9 ]{0,40}") {
        let _ = interpolate::parse(&text);
        let _ = interpolate::variables(&text);
    }

    #[test]
    fn threshold_parsers_never_panic(text in threshold_text(), key in any::<String>()) {
        let _ = thresholds::parse_expr(&text);
        let _ = thresholds::parse_rule(&text);
        let _ = thresholds::parse_duration(&text);
        let _ = thresholds::parse_aggregation(&text);
        let _ = thresholds::parse_key(&key);
        let _ = thresholds::parse_key(&text);
    }

    #[test]
    fn a_threshold_written_out_reads_back_the_same((aggregation, op, bound, unit) in expression(), spaced in any::<bool>()) {
        let gap = if spaced { " " } else { "" };
        let text = format!("{}{gap}{}{gap}{}{unit}", aggregation.text(), op_text(op), number_text(bound));
        let expr = thresholds::parse_expr(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let factor = if unit == "s" { 1000.0 } else { 1.0 };
        prop_assert_eq!(expr.aggregation, aggregation);
        prop_assert_eq!(expr.op, op);
        prop_assert!((expr.bound - bound * factor).abs() <= 1e-9 * (bound * factor).abs().max(1.0), "{} read as {}", text, expr.bound);
    }
}

proptest! {
    // Each case judges four windows with histograms: fewer cases keep the suite quick.
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn judging_any_statsd_never_panics_and_values_are_numbers(text in statsd_text(), (aggregation, op, bound, _) in expression()) {
        let key = if aggregation == Aggregation::Value { "a/b" } else { "a" };
        let expr = thresholds::Expr { aggregation, op, bound };
        let t = Threshold { key: key.into(), metric: thresholds::parse_key(key).unwrap(), text: String::new(), expr, step: None,
            abort_on_fail: true, delay_abort_ms: 0, window: Some(("2s".into(), 2000)) };
        let mut judge = Judge::new(vec![t.clone(), Threshold { window: None, ..t }]);
        let mut aggregator = Aggregator::default();
        for second in 0..4 {
            aggregator.take(&text);
            aggregator.take("a:1|c\nb:2|c\na:3|ms\na:4|g");
            let mut w = aggregator.flush(second, i64::from(second as u32) * 1000, 1000);
            w.node = "n".into();
            judge.add("s", "r", &w);
            judge.evaluate();
        }
        for view in judge.finish() {
            prop_assert!(view.value.is_none_or(|v| !v.is_nan()), "{view:?}");
        }
    }
}
