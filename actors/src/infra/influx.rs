//! InfluxDB: where every window goes, per node and merged per step, with the
//! run's tags (`run`, `plan`, `step`, `node` — `all` for a step's merge —
//! `type` = the step's `docker_series`, `region`, and `metric`).
//!
//! Measurements: `counter` (value, rate), `timer` (count, rate, min, mean,
//! p50, p90, p95, p99, max, in ms), `histogram` (OpenTelemetry's: the same
//! fields and `sum` in the sender's unit, tagged `kind` = `buckets` or
//! `exponential` and `unit`; exponential ones with their `relative_error`),
//! `gauge` (value), `host` (cpu_percent,
//! memory_percent, net_rx_bytes_per_s, net_tx_bytes_per_s, load1).
//!
//! Points are built with the `influxdb` crate and sent with the broker's own
//! HTTP client (`infra::tls`), so `https://` InfluxDB works with the same
//! trust as every other connection.

use influxdb::{Query, Timestamp, WriteQuery};

use super::tls::Tls;

use crate::domain::metrics::{HostSample, Merged, TimerStats};

/// Why InfluxDB refused.
#[derive(Debug, thiserror::Error)]
#[error("InfluxDB at {url}: {message}")]
pub struct InfluxError {
    /// Where.
    pub url: String,
    /// What it said.
    pub message: String,
}

/// A connection to one InfluxDB database.
#[derive(Clone)]
pub struct Influx {
    client: awc::Client,
    url: String,
    database: String,
    credentials: Option<(String, String)>,
    tls: Tls,
}

/// The tags of a run's points.
#[derive(Clone, Debug)]
pub struct PointTags {
    /// The run.
    pub run: String,
    /// The plan's name.
    pub plan: String,
    /// The step's name.
    pub step: String,
    /// The node, or `all` for a step's merge.
    pub node: String,
    /// The step's `docker_series` (or its name).
    pub series: String,
    /// The node's region; a step's merge has its region, or `all` (and one merge per
    /// region) for a step over several.
    pub region: String,
}

impl Influx {
    /// A client of `database` at `url` (http or https), with credentials when given.
    pub fn new(url: &str, database: &str, credentials: Option<(&str, &str)>, tls: &Tls) -> Self {
        Self {
            client: tls.client(std::time::Duration::from_secs(10)),
            url: url.trim_end_matches('/').to_string(),
            database: database.to_string(),
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            tls: tls.clone(),
        }
    }

    /// A client of another database on the same server, with the same credentials.
    pub fn for_database(&self, database: &str) -> Self {
        Self::new(&self.url, database, self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())), &self.tls)
    }

    fn error(&self, e: impl ToString) -> InfluxError {
        InfluxError { url: self.url.clone(), message: e.to_string() }
    }

    /// `u` and `p` when credentials are configured (InfluxDB 1.x's query-string authentication).
    fn auth(&self) -> Vec<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| vec![("u", u.as_str()), ("p", p.as_str())]).unwrap_or_default()
    }

    async fn check<S>(&self, response: Result<awc::ClientResponse<S>, awc::error::SendRequestError>) -> Result<(), InfluxError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
    {
        let mut response = response.map_err(|e| self.error(e))?;
        if response.status().is_success() {
            return Ok(());
        }
        let body = response.body().limit(64 * 1024).await.unwrap_or_default();
        Err(self.error(format!("HTTP {}: {}", response.status(), String::from_utf8_lossy(&body).trim())))
    }

    /// Creates the database if it is missing.
    pub async fn ensure_database(&self) -> Result<(), InfluxError> {
        let name = self.database.replace('"', "");
        let mut params = self.auth();
        let q = format!("CREATE DATABASE \"{name}\"");
        params.push(("q", q.as_str()));
        let request = self.client.post(format!("{}/query", self.url)).query(&params).map_err(|e| self.error(e))?;
        self.check(request.send().await).await
    }

    /// Writes points.
    pub async fn write(&self, points: Vec<WriteQuery>) -> Result<(), InfluxError> {
        let Some(first) = points.first() else { return Ok(()) };
        let precision = first.get_precision();
        let lines = points.build().map_err(|e| self.error(e))?.get();
        let mut params = self.auth();
        params.extend([("db", self.database.as_str()), ("precision", precision.as_str())]);
        let request = self.client.post(format!("{}/write", self.url)).query(&params).map_err(|e| self.error(e))?;
        self.check(request.send_body(lines).await).await
    }
}

/// One InfluxDB point, as the broker writes it.
pub type Point = WriteQuery;

/// An annotation event of run `run_id` (of one of its steps, when given) at `at_ms`.
pub fn event_point(run_id: uuid::Uuid, step: Option<&str>, at_ms: i64, text: &str) -> Point {
    let point = WriteQuery::new(Timestamp::Milliseconds(u128::try_from(at_ms).unwrap_or(0)), "events").add_tag("run", run_id.to_string());
    let point = match step {
        Some(step) => point.add_tag("step", step.to_string()),
        None => point,
    };
    point.add_field("text", text.to_string())
}

/// A run's step starts and ends, as annotation events.
pub fn step_event_points(run: &crate::domain::views::RunView) -> Vec<Point> {
    let mut points = Vec::new();
    for r in &run.step_records {
        let event = |t: chrono::DateTime<chrono::Utc>, text: String| event_point(run.id, Some(&r.step_name), t.timestamp_millis(), &text);
        if let Some(t) = r.started_at {
            points.push(event(t, format!("{} started", r.step_name)));
        }
        if let Some(t) = r.completed_at {
            points.push(event(t, format!("{} {}", r.step_name, r.state.as_str())));
        }
    }
    points
}

fn point(measurement: &str, start_ms: i64, tags: &PointTags, metric: &str) -> WriteQuery {
    WriteQuery::new(Timestamp::Milliseconds(u128::try_from(start_ms).unwrap_or(0)), measurement)
        .add_tag("run", tags.run.clone())
        .add_tag("plan", tags.plan.clone())
        .add_tag("step", tags.step.clone())
        .add_tag("node", tags.node.clone())
        .add_tag("type", tags.series.clone())
        .add_tag("region", tags.region.clone())
        .add_tag("metric", metric.to_string())
}

/// The points of one window (a node's, or a step's merge) starting at `start_ms` and lasting `seconds`.
pub fn window_points(tags: &PointTags, start_ms: i64, merged: &Merged, seconds: f64, host: Option<&HostSample>) -> Vec<WriteQuery> {
    let seconds = seconds.max(0.001);
    let mut points = Vec::new();
    for (metric, value) in &merged.counters {
        points.push(point("counter", start_ms, tags, metric).add_field("value", *value).add_field("rate", value / seconds));
    }
    for (metric, h) in &merged.timers {
        let s = TimerStats::of(h);
        points.push(
            point("timer", start_ms, tags, metric)
                .add_field("count", s.count as f64)
                .add_field("rate", s.count as f64 / seconds)
                .add_field("min", s.min)
                .add_field("mean", s.mean)
                .add_field("p50", s.p50)
                .add_field("p90", s.p90)
                .add_field("p95", s.p95)
                .add_field("p99", s.p99)
                .add_field("max", s.max),
        );
    }
    for (metric, h) in merged.histogram_stats() {
        let mut p = point("histogram", start_ms, tags, &metric)
            .add_tag("kind", h.kind.clone())
            .add_tag("unit", h.unit.clone())
            .add_field("count", h.count as f64)
            .add_field("rate", h.count as f64 / seconds)
            .add_field("sum", h.sum);
        let fields = [("mean", h.mean), ("min", h.min), ("p50", h.p50), ("p90", h.p90), ("p95", h.p95), ("p99", h.p99), ("max", h.max)];
        for (name, value) in fields.into_iter().chain([("relative_error", h.relative_error)]) {
            if let Some(v) = value.filter(|v| v.is_finite()) {
                p = p.add_field(name, v);
            }
        }
        points.push(p);
    }
    for (metric, value) in &merged.gauges {
        points.push(point("gauge", start_ms, tags, metric).add_field("value", *value));
    }
    if let Some(h) = host {
        points.push(
            point("host", start_ms, tags, "host")
                .add_field("cpu_percent", h.cpu_percent)
                .add_field("memory_percent", h.memory_percent)
                .add_field("net_rx_bytes_per_s", h.net_rx_bytes_per_s)
                .add_field("net_tx_bytes_per_s", h.net_tx_bytes_per_s)
                .add_field("load1", h.load1),
        );
    }
    points
}
