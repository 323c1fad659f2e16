//! What a run's dashboard shows: a row per step with its throughput, latency
//! percentiles, errors, and its nodes' CPU, memory and network, each panel an
//! InfluxQL query on the run's tags. The layout is built here; the JSON is a
//! handlebars template of `dashboards/`, so users can restyle it.

use serde::Serialize;

use super::views::{MetricSummaryView, RunView};

/// One query of a panel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    /// Grafana's query id: A, B, ...
    pub ref_id: String,
    /// The series' legend.
    pub alias: String,
    /// InfluxQL.
    pub query: String,
}

/// A panel or a row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Panel {
    /// Unique in the dashboard.
    pub id: u32,
    /// `row` or `timeseries`.
    pub kind: &'static str,
    /// Its title.
    pub title: String,
    /// Grafana unit of its values.
    pub unit: &'static str,
    /// Grid position and size.
    pub x: u32,
    /// Grid row.
    pub y: u32,
    /// Width (of 24).
    pub w: u32,
    /// Height.
    pub h: u32,
    /// Its queries (none for a row).
    pub targets: Vec<Target>,
}

/// The template's context.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DashboardModel {
    /// Grafana uid, derived from the run (so pushing again overwrites).
    pub uid: String,
    /// Title.
    pub title: String,
    /// The plan's name.
    pub plan: String,
    /// The run's id, the `run` tag of its points.
    pub run: String,
    /// Start of the time range (RFC 3339).
    pub from: String,
    /// End of the time range (RFC 3339, or `now` while live).
    pub to: String,
    /// Refresh period while live, empty once over.
    pub refresh: String,
    /// The Grafana data source of the InfluxDB database.
    pub datasource: String,
    /// The measurement of step start and end events, as a query names it (in the run's own database when it has one).
    pub events: String,
    /// Rows and panels, in order.
    pub panels: Vec<Panel>,
    /// The regions of the run's steps spread over several (the `region` variable's choices
    /// after `all`); empty when no step is.
    pub regions: Vec<String>,
}

/// A time as the API writes it (RFC 3339, UTC as `Z`).
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The dashboard uid of a run: `loads-` and 32 hex digits (Grafana allows 40 characters).
pub fn uid(run: &RunView) -> String {
    uid_of(run.id)
}

/// The dashboard uid of run `id`.
pub fn uid_of(id: uuid::Uuid) -> String {
    format!("loads-{}", id.simple())
}

fn literal(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

fn where_clause(run: &RunView, step: &str) -> String {
    format!("\"run\" = '{}' AND \"step\" = '{}'", literal(&run.id.to_string()), literal(step))
}

/// The InfluxDB database of a run with a monitor step: its own, as the original broker named them.
pub fn monitor_database(run_id: uuid::Uuid) -> String {
    format!("loads{}", run_id.simple())
}

/// A measurement, in `database` when given (InfluxQL `"db".."measurement"`), else in the data source's.
fn measurement_in(database: Option<&str>, measurement: &str) -> String {
    match database {
        Some(db) => format!("\"{db}\"..\"{measurement}\""),
        None => format!("\"{measurement}\""),
    }
}

/// The model of `run`'s dashboard, with a panel for every metric it saw; its
/// queries read `database` when given (a run with a monitor step), else the data source's.
pub fn model(run: &RunView, metrics: &[MetricSummaryView], datasource: &str, database: Option<&str>) -> DashboardModel {
    let select = |field: &str, measurement: &str, filter: &str, group: &str| {
        let from = measurement_in(database, measurement);
        format!("SELECT mean(\"{field}\") FROM {from} WHERE {filter} AND $timeFilter GROUP BY time($__interval){group} fill(none)")
    };
    let mut panels = Vec::new();
    let mut next_id = 1;
    let mut y = 0;
    let mut add = |panels: &mut Vec<Panel>, kind: &'static str, title: String, unit: &'static str, targets: Vec<Target>, slot: &mut u32| {
        let (w, h) = if kind == "row" { (24, 1) } else { (12, 8) };
        let x = if kind == "row" { 0 } else { (*slot % 2) * 12 };
        if kind == "row" {
            if *slot % 2 == 1 {
                y += 8;
            }
            *slot = 0;
        }
        panels.push(Panel { id: next_id, kind, title, unit, x, y, w, h, targets });
        next_id += 1;
        if kind == "row" {
            y += 1;
        } else {
            *slot += 1;
            if (*slot).is_multiple_of(2) {
                y += 8;
            }
        }
    };
    let letters = |i: usize| ((b'A' + (i % 26) as u8) as char).to_string() + &"A".repeat(i / 26);
    let mut all_regions = std::collections::BTreeSet::new();
    for record in &run.step_records {
        let step = record.step_name.as_str();
        let of_step = || metrics.iter().filter(|m| m.step_id == record.step_id);
        let mine: Vec<&MetricSummaryView> = of_step().filter(|m| m.region.is_none()).collect();
        let regions: std::collections::BTreeSet<&str> = of_step().filter_map(|m| m.region.as_deref()).collect();
        all_regions.extend(regions.iter().map(|r| r.to_string()));
        let filter = where_clause(run, step);
        // A step over several regions has a merge per region and one over all (`all`): the
        // dashboard's `region` variable picks which.
        let all_nodes = if regions.is_empty() {
            format!("{filter} AND \"node\" = 'all'")
        } else {
            format!("{filter} AND \"node\" = 'all' AND \"region\" = '$region'")
        };
        let mut slot = 0;
        add(&mut panels, "row", step.to_string(), "none", Vec::new(), &mut slot);

        let counters: Vec<&&MetricSummaryView> = mine.iter().filter(|m| m.kind == "counter").collect();
        if !counters.is_empty() {
            let targets = counters
                .iter()
                .enumerate()
                .map(|(i, m)| Target {
                    ref_id: letters(i),
                    alias: m.metric.clone(),
                    query: select("rate", "counter", &format!("{all_nodes} AND \"metric\" = '{}'", literal(&m.metric)), ""),
                })
                .collect();
            add(&mut panels, "timeseries", format!("{step}: throughput"), "reqps", targets, &mut slot);
            let errors = vec![Target {
                ref_id: "A".into(),
                alias: "errors".into(),
                query: format!(
                    "SELECT sum(\"rate\") FROM {} WHERE {all_nodes} AND \"metric\" =~ /error/ AND $timeFilter GROUP BY time($__interval) fill(none)",
                    measurement_in(database, "counter")
                ),
            }];
            add(&mut panels, "timeseries", format!("{step}: errors"), "reqps", errors, &mut slot);
        }
        for m in mine.iter().filter(|m| m.kind == "timer") {
            let metric_filter = format!("{all_nodes} AND \"metric\" = '{}'", literal(&m.metric));
            let targets = ["p50", "p95", "p99"]
                .iter()
                .enumerate()
                .map(|(i, p)| Target { ref_id: letters(i), alias: (*p).to_string(), query: select(p, "timer", &metric_filter, "") })
                .collect();
            add(&mut panels, "timeseries", format!("{step}: {} latency", m.metric), "ms", targets, &mut slot);
        }
        if mine.iter().any(|m| m.kind == "host") {
            let by_node = ", \"node\"";
            let host =
                |field: &str| Target { ref_id: "A".into(), alias: "$tag_node".into(), query: select(field, "host", &filter, by_node) };
            add(&mut panels, "timeseries", format!("{step}: node CPU"), "percent", vec![host("cpu_percent")], &mut slot);
            add(&mut panels, "timeseries", format!("{step}: node memory"), "percent", vec![host("memory_percent")], &mut slot);
            let net = vec![
                Target { ref_id: "A".into(), alias: "$tag_node in".into(), query: select("net_rx_bytes_per_s", "host", &filter, by_node) },
                Target { ref_id: "B".into(), alias: "$tag_node out".into(), query: select("net_tx_bytes_per_s", "host", &filter, by_node) },
            ];
            add(&mut panels, "timeseries", format!("{step}: node network"), "Bps", net, &mut slot);
        }
    }
    let live = run.completed_at.is_none();
    DashboardModel {
        uid: uid(run),
        title: format!("loads: {} ({})", run.plan_name, &run.id.simple().to_string()[..8]),
        plan: run.plan_name.clone(),
        run: run.id.to_string(),
        // Live: the last quarter hour, refreshing; once over: the run's own time range.
        from: if live { "now-15m".to_string() } else { rfc3339(run.started_at.unwrap_or(run.created_at)) },
        to: run.completed_at.map_or_else(|| "now".to_string(), rfc3339),
        refresh: if live { "5s".into() } else { String::new() },
        datasource: datasource.to_string(),
        events: measurement_in(database, "events"),
        panels,
        regions: all_regions.into_iter().collect(),
    }
}
