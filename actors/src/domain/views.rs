//! What the system answers with: read models of projects, plans, steps and runs.
//!
//! Built by the store from database rows; serialised as is by the v1 API and
//! reshaped by the loads v2 compatibility layer.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::FieldError;
use super::spec::{Env, PlanSpec, StepSpec};
use super::thresholds::{CompareRules, Thresholds};

/// The life of a run. Finished states are `completed`, `failed` and `aborted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created, not yet picked up.
    Pending,
    /// Acquiring nodes and preparing images.
    Initializing,
    /// Steps are being started and stopped on schedule.
    Running,
    /// Stopping what is left and releasing nodes.
    Terminating,
    /// Every step finished as planned.
    Completed,
    /// Something the run needed failed; see `failure_reason`.
    Failed,
    /// Stopped on request.
    Aborted,
}

impl RunState {
    /// All states, in life order.
    pub const ALL: [RunState; 7] =
        [Self::Pending, Self::Initializing, Self::Running, Self::Terminating, Self::Completed, Self::Failed, Self::Aborted];

    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Initializing => "initializing",
            Self::Running => "running",
            Self::Terminating => "terminating",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the run is over.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Aborted)
    }

    /// The original broker's numeric state (INITIALIZING 0 … COMPLETED 3).
    pub fn legacy_code(self) -> u8 {
        match self {
            Self::Pending | Self::Initializing => 0,
            Self::Running => 1,
            Self::Terminating => 2,
            Self::Completed | Self::Failed | Self::Aborted => 3,
        }
    }
}

/// What a finished run says of the service: whether its numbers held, and whether they can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every threshold held (or the plan has none) and the run completed.
    Passed,
    /// A threshold failed (or, with `fail_on_regression`, a regression rule broke).
    Failed,
    /// A generator node saturated its CPU while it ran: the numbers are the generator's, not the service's.
    Invalid,
    /// The run itself failed: a node, a container or the infrastructure.
    Error,
    /// A user stopped it.
    Aborted,
}

impl Verdict {
    /// All verdicts.
    pub const ALL: [Verdict; 5] = [Self::Passed, Self::Failed, Self::Invalid, Self::Error, Self::Aborted];

    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Invalid => "invalid",
            Self::Error => "error",
            Self::Aborted => "aborted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The exit code `loads run` answers with: 0, 99 for failed thresholds (k6's), 98 invalid, 1 error, 130 aborted.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Passed => 0,
            Self::Failed => 99,
            Self::Invalid => 98,
            Self::Error => 1,
            Self::Aborted => 130,
        }
    }
}

/// How a threshold stands: while the run is live, then once it is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdState {
    /// No samples yet.
    Pending,
    /// Holding so far.
    Ok,
    /// Not holding now.
    Failing,
    /// Held, judged at the end of the run.
    Passed,
    /// Did not hold, judged at the end of the run.
    Failed,
}

/// One threshold of a run: what it says and how it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdView {
    /// The metric key as written, e.g. `demo.c.latency{status:ok}`.
    pub metric: String,
    /// The expression, e.g. `p(95)<200`.
    pub threshold: String,
    /// The step it belongs to, for a step's own thresholds.
    pub step: Option<String>,
    /// Whether failing stops the run.
    pub abort_on_fail: bool,
    /// The sliding window it is judged over; none: the run so far.
    pub window: Option<String>,
    /// How it stands.
    pub state: ThresholdState,
    /// The aggregation's value now (or at the end), in the metric's unit.
    pub value: Option<f64>,
    /// When it first failed.
    pub first_breach_at: Option<DateTime<Utc>>,
    /// Why it has no value, or how it was judged.
    pub note: Option<String>,
}

/// The life of one step within one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for its start time.
    Pending,
    /// Containers are running.
    Running,
    /// Containers are being stopped.
    Stopping,
    /// Finished as planned.
    Completed,
    /// Failed; see `failure_reason`.
    Failed,
    /// Never started (the run ended first, or it is a monitor step).
    Skipped,
}

impl StepState {
    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Running, Self::Stopping, Self::Completed, Self::Failed, Self::Skipped].into_iter().find(|st| st.as_str() == s)
    }
}

/// A project, without its plans.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ProjectView {
    /// Project id.
    pub id: Uuid,
    /// Project name.
    pub name: String,
    /// Home page of the service under test.
    pub home_page: Option<String>,
    /// How many plans it has.
    pub plan_count: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A project with a summary of each plan.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ProjectDetail {
    /// The project.
    #[serde(flatten)]
    pub project: ProjectView,
    /// Its plans, by name.
    pub plans: Vec<PlanSummary>,
}

/// A plan without its steps.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct PlanSummary {
    /// Plan id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Plan name.
    pub name: String,
    /// What the plan tests.
    pub description: Option<String>,
    /// Whether it may be run.
    pub enabled: bool,
    /// How many steps it has.
    pub step_count: u64,
    /// How many runs it has had; a plan with runs cannot change its steps.
    pub run_count: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A plan with its steps.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct PlanView {
    /// The plan.
    #[serde(flatten)]
    pub plan: PlanSummary,
    /// Defaults for the run environment.
    #[schema(value_type = Object)]
    pub environment_data: Env,
    /// The dashboard template its runs use; none = the built-in one.
    pub dashboard: Option<String>,
    /// Thresholds judged over every step's nodes, by metric key.
    #[schema(value_type = Object)]
    pub thresholds: Thresholds,
    /// Regression rules against the baseline, by metric key.
    #[schema(value_type = Object)]
    pub compare: CompareRules,
    /// Whether breaking a regression rule fails a run's verdict.
    pub fail_on_regression: bool,
    /// The run later runs are compared with (`POST /api/v1/plans/{id}/baseline`).
    pub baseline_run_id: Option<Uuid>,
    /// The steps, in order.
    pub steps: Vec<StepView>,
}

impl PlanView {
    /// The plan's definition, as a document would give it.
    pub fn spec(&self) -> PlanSpec {
        PlanSpec {
            name: self.plan.name.clone(),
            description: self.plan.description.clone(),
            enabled: self.plan.enabled,
            environment_data: self.environment_data.clone(),
            dashboard: self.dashboard.clone(),
            thresholds: self.thresholds.clone(),
            compare: self.compare.clone(),
            fail_on_regression: self.fail_on_regression,
            steps: self.steps.iter().map(|s| s.spec.clone()).collect(),
        }
    }
}

/// A plan's baseline: the run its later runs are compared with.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct BaselineView {
    /// The plan.
    pub plan_id: Uuid,
    /// The baseline run.
    pub run_id: Uuid,
    /// When it was made the baseline.
    pub set_at: DateTime<Utc>,
}

/// A stored step.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StepView {
    /// Step id.
    pub id: Uuid,
    /// Position in the plan, from 0.
    pub position: u32,
    /// The step's fields.
    #[serde(flatten)]
    pub spec: StepSpec,
}

/// One run of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct RunView {
    /// Run id.
    pub id: Uuid,
    /// The plan run.
    pub plan_id: Uuid,
    /// The plan's name.
    pub plan_name: String,
    /// The plan's project.
    pub project_id: Uuid,
    /// Where the run is in its life.
    pub state: RunState,
    /// Who started it.
    pub owner: Option<String>,
    /// The run environment given at start.
    #[schema(value_type = Object)]
    pub environment_data: Env,
    /// Variables given as `null` when the run was started through the loads v2 API
    /// (options its client leaves unset): not set, left out of the environment.
    pub unset_env: Vec<String>,
    /// Whether it was aborted.
    pub aborted: bool,
    /// Why it failed, for a human.
    pub failure_reason: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When all nodes were ready and the schedule began.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub completed_at: Option<DateTime<Utc>>,
    /// The run's Grafana dashboard, once pushed.
    pub dashboard_url: Option<String>,
    /// The verdict, once the run is over.
    pub verdict: Option<Verdict>,
    /// Why that verdict, for a human.
    pub verdict_reason: Option<String>,
    /// Its thresholds (the plan's and its steps'), as they stand.
    pub thresholds: Vec<ThresholdView>,
    /// What its EC2 instances have cost, as last metered (`complete` once the run is over);
    /// `null` on the local provider and before the first metering.
    pub cost: Option<crate::domain::usage::RunCost>,
    /// One record per step.
    pub step_records: Vec<StepRecordView>,
}

/// One step within one run.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StepRecordView {
    /// Record id.
    pub id: Uuid,
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: Uuid,
    /// The step's name.
    pub step_name: String,
    /// Where the step is in its life.
    pub state: StepState,
    /// Whether the step failed.
    pub failed: bool,
    /// Why it failed, for a human.
    pub failure_reason: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its containers started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub completed_at: Option<DateTime<Utc>>,
    /// Spot interruption notices its nodes got, in the order read.
    pub interruptions: Vec<InterruptionView>,
    /// Values its generators sent that were not kept because their series came past a
    /// cap (`metrics.max_series_per_window`, `metrics.max_series_per_step`), as of the
    /// step's last stored summary; the summary's `series.overflow;pattern=…` rows say
    /// which names.
    #[serde(default)]
    pub series_overflow: u64,
}

/// A spot interruption notice one of a step's nodes got: from then on the step went on
/// without that node (`prune_running`), or failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterruptionView {
    /// The node's name in the run.
    pub node: String,
    /// Its EC2 instance.
    pub instance: String,
    /// What EC2 announced: `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// When, as the notice says.
    pub time: String,
    /// When the broker read the notice and dropped the node.
    pub noticed_at: DateTime<Utc>,
}

/// One page of a list, with the total across all pages.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// How many items there are in all.
    pub total: u64,
    /// The page size asked for.
    pub limit: u64,
    /// How many items were skipped.
    pub offset: u64,
}

/// What importing a project file did.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ImportReport {
    /// The project after the import.
    pub project: ProjectDetail,
    /// Whether the project itself was created by this import.
    pub project_created: bool,
    /// Plans created, by name.
    pub created: Vec<String>,
    /// Plans whose fields or steps were replaced, by name.
    pub updated: Vec<String>,
    /// Plans already identical, by name.
    pub unchanged: Vec<String>,
    /// Warnings from validation.
    pub warnings: Vec<FieldError>,
}

/// A project with every plan, its steps and its runs (the loads v2 project shape).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ProjectTree {
    /// The project.
    pub project: ProjectView,
    /// Its plans, by name.
    pub plans: Vec<PlanTree>,
}

/// A plan with its steps and runs.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct PlanTree {
    /// The plan and its steps.
    pub plan: PlanView,
    /// Its runs, newest first.
    pub runs: Vec<RunView>,
}

/// A container a run started, as recorded when it was removed.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ContainerView {
    /// The step it ran for.
    pub step_id: Uuid,
    /// The step's name.
    pub step_name: String,
    /// The node it ran on.
    pub node: String,
    /// `relay` or `step`.
    pub role: String,
    /// The engine's container id.
    pub docker_id: String,
    /// Its image.
    pub image: String,
    /// How it exited; null if it never exited on its own before removal.
    pub exit_code: Option<i64>,
    /// Its output (stdout and stderr), possibly only the last lines.
    pub logs: String,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When it exited, as its engine recorded it.
    pub exited_at: Option<DateTime<Utc>>,
    /// When it was removed.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The summary row counting a step's values not kept because their series came past a
/// cap; rows named `series.overflow;pattern=<pattern>` count them by name pattern.
pub const SERIES_OVERFLOW: &str = "series.overflow";

/// One metric of one step, over the whole step: counters with their total and
/// rate, timers with exact percentiles (milliseconds) over every node's samples,
/// OpenTelemetry histograms in their own unit with how exact their percentiles are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricSummaryView {
    /// The step.
    pub step_id: Uuid,
    /// The step's name.
    pub step_name: String,
    /// The metric, with its tags: `name` or `name;k=v,...`; the relay's own are `relay.*`.
    pub metric: String,
    /// `counter`, `timer`, `gauge`, `set`, `relay`, `host`, `errors`, `flag`; OpenTelemetry's
    /// `histogram` (explicit buckets: each percentile is the upper bound of the bucket it falls in)
    /// and `exponential_histogram` (each percentile within `relative_error` of the true value).
    pub kind: String,
    /// Counters: the total; timers: the samples; gauges: the last value summed over nodes.
    pub count: f64,
    /// Per second over the step's windows (counters and timers).
    pub rate: Option<f64>,
    /// Timers: smallest.
    pub min: Option<f64>,
    /// Timers: mean.
    pub mean: Option<f64>,
    /// Timers: median.
    pub p50: Option<f64>,
    /// Timers: 90th percentile.
    pub p90: Option<f64>,
    /// Timers: 95th percentile.
    pub p95: Option<f64>,
    /// Timers: 99th percentile.
    pub p99: Option<f64>,
    /// Timers: largest.
    pub max: Option<f64>,
    /// Histograms: the unit their sender gave (timers are always milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Exponential histograms: the largest relative error of their percentiles (0.0027 = 0.27 %),
    /// which their scale implies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_error: Option<f64>,
    /// A step spread over several regions also has its counters, timers and histograms
    /// per region: the region of such a row (absent: the step over every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// One step's series: its flush windows merged over its nodes, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StepSeriesView {
    /// The step's name.
    pub step: String,
    /// `{t: window start (Unix ms), nodes, counters: {name: sum}, timers: {name: {count, min, mean, p50, p90, p95, p99, max}}, cpu: {node: percent}}`;
    /// at most `SERIES_POINTS` (3600), every n-th window of a longer run.
    #[schema(value_type = Vec<Object>)]
    pub points: Vec<serde_json::Value>,
}

/// A run's series, per step.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct RunSeriesView {
    /// In the run's step order.
    pub steps: Vec<StepSeriesView>,
}
