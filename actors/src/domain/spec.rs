//! What a user writes: a project with plans, each plan an ordered list of steps.
//!
//! These are the validated forms. They are built only by `validate`, which
//! applies the defaults of the original broker and checks every field, so a
//! `StepSpec` in hand is always one the run engine can execute.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::regions::Regions;
use super::thresholds::{CompareRules, Thresholds};

/// Environment variables, by name.
pub type Env = BTreeMap<String, String>;

/// Step defaults of the original broker.
pub mod defaults {
    /// Machines per step.
    pub const INSTANCE_COUNT: u32 = 1;
    /// EC2 instance type.
    pub const INSTANCE_TYPE: &str = "t3.micro";
    /// EC2 region.
    pub const INSTANCE_REGION: &str = "us-west-2";
    /// Seconds after the run's start before the step starts.
    pub const RUN_DELAY: u64 = 0;
    /// Seconds after the step's start before it is stopped; 0 = no limit.
    pub const RUN_MAX_TIME: u64 = 600;
    /// Seconds between container starts on successive nodes.
    pub const NODE_DELAY: u64 = 0;
}

/// How a step's EC2 instances are bought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Market {
    /// On-demand instances.
    #[default]
    OnDemand,
    /// Spot instances only: a shortage of spot capacity is the step's shortage.
    Spot,
    /// Spot instances, and on-demand ones for whatever spot cannot give.
    SpotFallback,
}

impl Market {
    /// Every market, as written in plans.
    pub const NAMES: &'static str = "\"on_demand\", \"spot\" or \"spot_fallback\"";

    /// The name as written in plans.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on_demand",
            Self::Spot => "spot",
            Self::SpotFallback => "spot_fallback",
        }
    }

    /// The market named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::OnDemand, Self::Spot, Self::SpotFallback].into_iter().find(|m| m.as_str() == name)
    }
}

/// A project file: a project and its plans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectSpec {
    /// Project name, unique in the broker.
    pub name: String,
    /// Home page of the service under test.
    pub home_page: Option<String>,
    /// The project's plans.
    #[serde(default)]
    pub plans: Vec<PlanSpec>,
}

/// A plan: ordered steps that make one load test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanSpec {
    /// Plan name, unique within its project.
    pub name: String,
    /// What the plan tests.
    pub description: Option<String>,
    /// Whether the plan may be run.
    pub enabled: bool,
    /// Defaults for the run environment; the env given when a run is started wins.
    #[schema(value_type = Object)]
    pub environment_data: Env,
    /// The dashboard template for its runs (a file of `grafana.templates_dir`); none = the built-in one.
    pub dashboard: Option<String>,
    /// Thresholds judged over every step's nodes, by metric key.
    #[schema(value_type = Object)]
    pub thresholds: Thresholds,
    /// Regression rules against the plan's baseline run, by metric key (`p(95) +10%`).
    #[schema(value_type = Object)]
    pub compare: CompareRules,
    /// Whether breaking a regression rule fails a run's verdict.
    pub fail_on_regression: bool,
    /// The steps, in order.
    pub steps: Vec<StepSpec>,
}

/// A step: one container image run on `instance_count` machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepSpec {
    /// Step name, unique within its plan.
    pub name: String,
    /// How many machines run this step.
    pub instance_count: u32,
    /// Machine type (EC2 instance type).
    pub instance_type: String,
    /// Region of the machines: one, or several with shares of the nodes
    /// (`{"us-east-1": 60, "eu-west-1": 40}`, or a list for equal shares).
    #[schema(value_type = serde_json::Value)]
    pub instance_region: Regions,
    /// How the machines are bought on EC2: `on_demand` (default), `spot`, `spot_fallback`.
    pub market: Market,
    /// Seconds after the run's start before this step starts.
    pub run_delay: u64,
    /// Seconds after this step's start before it is stopped; 0 = no limit.
    pub run_max_time: u64,
    /// Seconds between container starts on successive nodes.
    pub node_delay: u64,
    /// Docker image to run, e.g. `bbangert/pushgo:1.5rc4`.
    pub container_name: String,
    /// A `docker save` tarball (optionally gzip/bzip2/xz) to load instead of pulling.
    pub container_url: Option<String>,
    /// The SHA-256 (hex) the `container_url` tarball must have.
    pub container_sha256: Option<String>,
    /// Environment of the step's containers; wins over the run environment.
    #[schema(value_type = Object)]
    pub environment_data: Env,
    /// Arguments appended to the container's command.
    pub additional_command_args: Option<String>,
    /// A name later steps resolve to this step's containers.
    pub dns_name: Option<String>,
    /// `container:host` port pairs, comma separated.
    pub port_mapping: Option<String>,
    /// `container:host[:rw]` volume mappings, comma separated; read-only unless `rw`.
    pub volume_mapping: Option<String>,
    /// Metrics `type` tag of this step.
    pub docker_series: Option<String>,
    /// Fewer ready nodes than this and the step fails; with more it runs on those it got. `None` = all.
    pub min_nodes: Option<u32>,
    /// A node that stops answering during the run is dropped and the step goes on (else the step fails).
    pub prune_running: bool,
    /// The original broker's monitoring step (InfluxDB + Grafana); accepted, not needed.
    pub monitor: bool,
    /// A service under test: runs until every other step has finished.
    pub service: bool,
    /// Whether the run fails when this step fails.
    pub required: bool,
    /// Thresholds judged over this step's nodes only, by metric key.
    #[schema(value_type = Object)]
    pub thresholds: Thresholds,
}

impl StepSpec {
    /// A step with the given name and image and every other field at its default.
    pub fn new(name: impl Into<String>, container_name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            instance_count: defaults::INSTANCE_COUNT,
            instance_type: defaults::INSTANCE_TYPE.to_string(),
            instance_region: Regions::one(defaults::INSTANCE_REGION),
            market: Market::OnDemand,
            run_delay: defaults::RUN_DELAY,
            run_max_time: defaults::RUN_MAX_TIME,
            node_delay: defaults::NODE_DELAY,
            container_name: container_name.into(),
            container_url: None,
            container_sha256: None,
            environment_data: Env::new(),
            additional_command_args: None,
            dns_name: None,
            port_mapping: None,
            volume_mapping: None,
            docker_series: None,
            min_nodes: None,
            prune_running: true,
            monitor: false,
            service: false,
            required: true,
            thresholds: Thresholds::new(),
        }
    }
}
