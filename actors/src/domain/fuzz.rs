//! Property tests of the parsers that take outside input: statsd lines (from
//! any process on a node), plan documents (from any API client) and `$VAR`
//! templates. None may panic, whatever the input; what they accept must be
//! usable downstream (windows survive their JSON trip to the broker).

use proptest::prelude::*;
use serde_json::Value;

use super::metrics::{parse_line, Aggregator, Merged, Window};
use super::parse::{parse_document, DocumentFormat};
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
        any::<String>(),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
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
}
