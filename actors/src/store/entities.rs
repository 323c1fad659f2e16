//! sea-orm entities, one module per table (see the migrations crate for the schema).

macro_rules! no_relations {
    () => {
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    };
}

/// A project: one per service under test.
pub mod project {
    use sea_orm::entity::prelude::*;

    /// A project row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "project")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
        pub home_page: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    no_relations!();
}

/// A plan: ordered steps of one load test.
pub mod plan {
    use sea_orm::entity::prelude::*;

    /// A plan row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "plan")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub project_id: Uuid,
        pub name: String,
        pub description: Option<String>,
        pub enabled: bool,
        pub environment_data: Json,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub dashboard: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub thresholds: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub compare: Option<String>,
        pub fail_on_regression: bool,
        pub baseline_run_id: Option<Uuid>,
        pub baseline_set_at: Option<DateTimeUtc>,
    }

    no_relations!();
}

/// A step: one container image on N machines.
pub mod step {
    use sea_orm::entity::prelude::*;

    /// A step row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "step")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub plan_id: Uuid,
        pub position: i32,
        pub name: String,
        pub instance_count: i32,
        pub instance_type: String,
        pub instance_region: String,
        pub run_delay: i64,
        pub run_max_time: i64,
        pub node_delay: i64,
        pub container_name: String,
        pub container_url: Option<String>,
        pub container_sha256: Option<String>,
        pub environment_data: Json,
        pub additional_command_args: Option<String>,
        pub dns_name: Option<String>,
        pub port_mapping: Option<String>,
        pub volume_mapping: Option<String>,
        pub docker_series: Option<String>,
        pub prune_running: bool,
        pub min_nodes: Option<i32>,
        pub monitor: bool,
        pub service: bool,
        pub required: bool,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        #[sea_orm(column_type = "Text", nullable)]
        pub thresholds: Option<String>,
        pub market: String,
    }

    no_relations!();
}

/// A run: one execution of a plan.
pub mod run {
    use sea_orm::entity::prelude::*;

    /// A run row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "run")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub plan_id: Uuid,
        pub state: String,
        pub owner: Option<String>,
        pub environment_data: Json,
        pub aborted: bool,
        pub failure_reason: Option<String>,
        pub created_at: DateTimeUtc,
        pub started_at: Option<DateTimeUtc>,
        pub completed_at: Option<DateTimeUtc>,
        pub updated_at: DateTimeUtc,
        pub dashboard_url: Option<String>,
        pub ingest_token: Option<String>,
        pub feed_seq: i64,
        #[sea_orm(column_type = "Text", nullable)]
        pub metrics_state: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub thresholds: Option<String>,
        pub verdict: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub verdict_reason: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub cost: Option<String>,
        #[sea_orm(column_type = "Double")]
        pub cost_usd: f64,
        /// How the run is ending (`domain::life::Ending::kind`), once it is.
        pub ending: Option<String>,
    }

    no_relations!();
}

/// A step record: one step within one run.
pub mod step_record {
    use sea_orm::entity::prelude::*;

    /// A step record row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "step_record")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub run_id: Uuid,
        pub step_id: Uuid,
        pub state: String,
        pub failed: bool,
        pub failure_reason: Option<String>,
        pub created_at: DateTimeUtc,
        pub started_at: Option<DateTimeUtc>,
        pub completed_at: Option<DateTimeUtc>,
        pub updated_at: DateTimeUtc,
        #[sea_orm(column_type = "Text", nullable)]
        pub interruptions: Option<String>,
    }

    no_relations!();
}

/// A container a run started, with its exit code and output.
pub mod container {
    use sea_orm::entity::prelude::*;

    /// A container row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "container")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub run_id: Uuid,
        pub step_id: Uuid,
        pub node: String,
        pub role: String,
        pub docker_id: String,
        pub image: String,
        pub exit_code: Option<i64>,
        #[sea_orm(column_type = "Text")]
        pub logs: String,
        pub created_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        pub exited_at: Option<DateTimeUtc>,
    }

    no_relations!();
}

/// One metric of one step of a run, summarised when the run ended.
pub mod metric_summary {
    use sea_orm::entity::prelude::*;

    /// A metric summary row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "metric_summary")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub run_id: Uuid,
        pub step_id: Uuid,
        pub metric: String,
        pub kind: String,
        pub count: f64,
        pub rate: Option<f64>,
        pub min: Option<f64>,
        pub mean: Option<f64>,
        pub p50: Option<f64>,
        pub p90: Option<f64>,
        pub p95: Option<f64>,
        pub p99: Option<f64>,
        pub max: Option<f64>,
        pub unit: Option<String>,
        pub relative_error: Option<f64>,
        pub region: Option<String>,
        pub created_at: DateTimeUtc,
    }

    no_relations!();
}

/// One flush window of a step of a run, merged over its nodes, for charts.
pub mod run_series {
    use sea_orm::entity::prelude::*;

    /// A series row: the point is JSON (`SeriesPoint`).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "run_series")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub run_id: Uuid,
        pub step: String,
        pub start_ms: i64,
        #[sea_orm(column_type = "Text")]
        pub point: String,
    }

    no_relations!();
}

/// The spend ledger: each run's recorded cost, kept when the run is deleted.
pub mod spend {
    use sea_orm::entity::prelude::*;

    /// What one run's instances cost, by when the run was created.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "spend")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub run_id: Uuid,
        pub created_at: DateTimeUtc,
        pub usd: f64,
    }

    no_relations!();
}
