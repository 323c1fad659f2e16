//! The `loads` command line: `serve`, `run`, `compare`, `baseline`, `plan validate`, `plan estimate`, `import`, `config show`.

mod plan;
mod run;

use std::path::PathBuf;

use actix::Actor;
use clap::{Parser, Subcommand};
use loads_actors::catalog::{CompareRuns, GetRun, ImportProject, SetBaseline};
use loads_actors::store::runs::CompareTo;
use loads_actors::{store, CatalogActor};

use crate::config::{LogFormat, Settings};
use crate::startup::Application;
use crate::telemetry;

const EXAMPLES: &str = "\
Examples:
  loads serve                                  serve the API on 127.0.0.1:8080 with ./loads.db
  LOADS__SERVER__PORT=9000 loads serve         any setting can come from LOADS__SECTION__KEY
  loads plan validate examples/quickstart.toml check a project or plan file
  loads plan estimate examples/demo.toml       what its plans cost on EC2
  loads import examples/quickstart.toml        load a project file into the database
  loads config show                            print the effective configuration (secrets masked)";

/// loads: run Docker load generators on many machines, with honest numbers.
#[derive(Debug, Parser)]
#[command(name = "loads", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Configuration file (TOML); default ./loads.toml when present.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format; overrides log.format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log at `log.level` in one-shot commands (`run`, `import`) too; they log only warnings otherwise.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the REST API (v1 and loads v2 compatibility).
    #[command(after_help = "Examples:\n  loads serve\n  LOADS__SERVER__PORT=0 LOADS__DATABASE__URL=sqlite:///tmp/x.db loads serve")]
    Serve,
    /// Work with plan files.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Import a project file (JSON, TOML or YAML) into the configured database.
    #[command(after_help = "Examples:\n  loads import examples/quickstart.toml\n  loads import pushgo.json\n\n\
        Plans are created, or replaced when they changed; a plan that has runs keeps its steps.")]
    Import {
        /// The project file.
        file: PathBuf,
    },
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a plan now, on this machine's Docker engine, with live progress.
    #[command(after_help = "Examples:\n  loads run examples/demo.toml\n  \
        loads run project.json --plan \"Single Server\" --env TARGET=http://web:8080\n\n\
        Builds the images the plan needs when missing, imports the file into the configured \
        database, runs it and prints its verdict. Exit status: 0 passed, 99 thresholds failed \
        (or a regression with fail_on_regression), 98 invalid (a generator saturated its CPU), \
        1 the run failed, 130 aborted. Ctrl-C aborts the run and removes everything it started.")]
    Run {
        /// A project file or a single plan (.json, .toml, .yaml or .yml).
        file: PathBuf,
        /// The plan to run, when the file has several.
        #[arg(long)]
        plan: Option<String>,
        /// A run environment variable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Who runs it (recorded on the run).
        #[arg(long)]
        owner: Option<String>,
        /// At the end, compare the run with its plan's baseline (`loads baseline RUN_ID` sets it).
        #[arg(long)]
        baseline: bool,
    },
    /// Compare two finished runs (or a run and its plan's baseline), step by step.
    #[command(after_help = "Examples:\n  loads compare 3f1c... baseline\n  loads compare RUN_A RUN_B\n\n\
        Reads the configured database. Exit status: 0, or 99 when RUN breaks a regression rule of its plan.")]
    Compare {
        /// The run.
        run: uuid::Uuid,
        /// The run to compare it with, or `baseline`.
        other: String,
    },
    /// Make a finished run its plan's baseline, which later runs are compared with.
    #[command(after_help = "Examples:\n  loads baseline 3f1c...")]
    Baseline {
        /// The run.
        run: uuid::Uuid,
    },
    /// Manage the images loads builds locally.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Run the metrics relay on this machine: point a generator at it (statsd on 8125, OTLP on
    /// 4318 and 4317) to see what it reports before writing a plan. The relay image runs the same.
    #[command(after_help = "Examples:\n  loads relay --print --json\n  loads relay --statsd-port 9125 --otlp-grpc-port 0 --print\n\n\
        With no ingest URL (LOADS_INGEST_URL) it reports to no broker: --print shows each window,\n\
        --json the totals at exit (Ctrl-C).")]
    Relay(loads_relay::run::Args),
}

/// `loads images ...`.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build (again) every image loads needs: the relay, busybox, and the demo's images.
    #[command(after_help = "Examples:\n  loads images build\n\n\
        Needs a Docker engine, a static busybox (apt-get install busybox-static) and a C compiler.")]
    Build,
}

/// `loads plan ...`.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Check a project file or a single plan and print every problem with its path.
    #[command(after_help = "Examples:\n  loads plan validate examples/quickstart.toml\n  \
        loads plan validate plan.yaml --env TARGET=http://svc:8080\n\n\
        Exit status: 0 when valid, 1 when not, 2 when the file cannot be read.")]
    Validate {
        /// A project file ({name, plans}) or a plan ({name, steps}); .json, .toml, .yaml or .yml.
        file: PathBuf,
        /// A run environment variable, so `$KEY` in the plan counts as defined.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// What each plan of a file costs on EC2 at most, per step and in all, from the price table.
    #[command(after_help = "Examples:\n  loads plan estimate examples/demo.toml\n  \
        loads plan estimate project.json --plan \"Single Server\" --json\n\n\
        Prices come from the table shipped with loads, or `pricing.file`; each instance is charged \
        `pricing.setup_seconds` before its step. Exit status: 0, 1 when a plan is invalid or passes a \
        `budget.*` cap (with pool.provider = \"ec2\"), 2 when the file cannot be read.")]
    Estimate {
        /// A project file or a single plan; .json, .toml, .yaml or .yml.
        file: PathBuf,
        /// Only this plan of a project.
        #[arg(long)]
        plan: Option<String>,
        /// Print JSON (a list, one estimate per plan) instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// `loads config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML, secrets masked.
    #[command(after_help = "Examples:\n  loads config show\n  LOADS__SERVER__PORT=9000 loads config show")]
    Show,
}

/// Runs the command; answers the process exit code (0 success, 1 failure, 2 unreadable input).
pub async fn run(cli: Cli) -> u8 {
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if let Command::Plan(PlanCommand::Validate { file, env }) = &cli.command {
        return plan::validate(file, env, &settings.limits());
    }
    if let Command::Plan(PlanCommand::Estimate { file, plan: name, json }) = &cli.command {
        let cost = match settings.cost() {
            Ok(cost) => cost,
            Err(e) => {
                eprintln!("error: {e:#}");
                return 2;
            }
        };
        let args = plan::EstimateArgs { file, plan: name.as_deref(), json: *json };
        // An estimate mounts nothing: host paths are checked by the broker that runs the plan.
        let limits = loads_actors::domain::Limits { volume_root: None, ..settings.limits() };
        return plan::estimate(args, &limits, &cost);
    }
    if let Command::Relay(args) = cli.command {
        return match loads_relay::run::run(args, loads_relay::run::Target::from_env()).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: relay: {e}");
                1
            }
        };
    }
    // One-shot commands print their own results; their logs (migrations...) only when asked.
    let quiet = matches!(cli.command, Command::Run { .. } | Command::Import { .. } | Command::Compare { .. } | Command::Baseline { .. })
        && !cli.verbose;
    telemetry::init(cli.log_format.unwrap_or(settings.log_format()), if quiet { "warn" } else { &settings.log.level });
    let result = match cli.command {
        Command::Serve => serve(&settings).await,
        Command::Import { file } => import(&settings, &file).await,
        Command::Config(ConfigCommand::Show) => {
            print!("{}", settings.to_masked_toml());
            Ok(())
        }
        Command::Run { file, plan, env, owner, baseline } => {
            let args = run::RunArgs { file: &file, plan: plan.as_deref(), env: &env, owner, baseline };
            // The run lives and dies with this process: any free port does for its relays.
            let mut settings = settings.clone();
            settings.metrics.ingest_port = 0;
            match run::run(&settings, args).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Compare { run, other } => match compare(&settings, run, &other).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Baseline { run } => baseline(&settings, run).await,
        Command::Images(ImagesCommand::Build) => build_images().await,
        Command::Plan(_) | Command::Relay(_) => unreachable!("handled above"),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// `loads compare RUN OTHER`: prints the comparison; answers 99 when a rule broke.
async fn compare(settings: &Settings, run: uuid::Uuid, other: &str) -> anyhow::Result<u8> {
    let to = if other == "baseline" {
        CompareTo::Baseline
    } else {
        CompareTo::Run(other.parse().map_err(|_| anyhow::anyhow!("{other:?} is neither a run id nor `baseline`"))?)
    };
    let db = store::connect(settings.database.url.expose()).await?;
    let catalog = CatalogActor::new(db, settings.limits()).start();
    let comparison = catalog.send(CompareRuns { run_id: run, to }).await??;
    run::print_comparison(&comparison);
    Ok(if comparison.regressed { 99 } else { 0 })
}

/// `loads baseline RUN`: makes the run its plan's baseline.
async fn baseline(settings: &Settings, run_id: uuid::Uuid) -> anyhow::Result<()> {
    let db = store::connect(settings.database.url.expose()).await?;
    let catalog = CatalogActor::new(db, settings.limits()).start();
    let run = catalog.send(GetRun { id: run_id }).await??;
    let set = catalog.send(SetBaseline { plan_id: run.plan_id, run_id }).await??;
    println!("run {} is now the baseline of plan {:?} ({})", set.run_id, run.plan_name, set.plan_id);
    Ok(())
}

async fn build_images() -> anyhow::Result<()> {
    let engine = loads_actors::infra::docker::Engine::local().await?;
    let binary = std::env::current_exe()?;
    for tag in crate::images::ALL {
        crate::images::build(&engine, tag, &binary).await?;
        println!("built {tag}");
    }
    Ok(())
}

/// Builds the relay image when missing, so runs can start; a failure is logged, not fatal.
async fn ensure_relay_image() {
    let result = async {
        let engine = loads_actors::infra::docker::Engine::local().await?;
        let binary = std::env::current_exe()?;
        crate::images::ensure(&engine, [crate::images::RELAY], &binary).await?;
        anyhow::Ok(())
    };
    if let Err(e) = result.await {
        tracing::warn!(error = %e, "the relay image is not available; runs will fail until `loads images build` succeeds");
    }
}

async fn serve(settings: &Settings) -> anyhow::Result<()> {
    ensure_relay_image().await;
    let app = Application::build(settings).await?;
    app.run_until_stopped().await?;
    Ok(())
}

async fn import(settings: &Settings, file: &std::path::Path) -> anyhow::Result<()> {
    let document = plan::read_document(file)?;
    let db = store::connect(settings.database.url.expose()).await?;
    let catalog = CatalogActor::new(db, settings.limits()).start();
    let report = match catalog.send(ImportProject { document }).await? {
        Ok(report) => report,
        Err(loads_actors::domain::DomainError::Invalid(errors)) => anyhow::bail!("{}: {errors}", file.display()),
        Err(e) => return Err(e.into()),
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let project = &report.project.project;
    println!("{} project {:?} ({})", if report.project_created { "created" } else { "updated" }, project.name, project.id);
    for plan in &report.project.plans {
        let what = if report.created.contains(&plan.name) {
            "created"
        } else if report.updated.contains(&plan.name) {
            "updated"
        } else {
            "unchanged"
        };
        println!("  plan {:?} {} ({} steps): {what}", plan.name, plan.id, plan.step_count);
    }
    Ok(())
}
