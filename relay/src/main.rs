//! `loads-relay`: the per-node metrics relay, the binary the relay image runs.
//! Every flag may also come from its variable, as the broker starts it
//! (`loads-relay --help`); the run it reports to comes from `LOADS_INGEST_URL`
//! and the other variables of [`loads_relay::run::Target`].

use clap::Parser;

#[derive(Parser)]
#[command(name = "loads-relay", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LOADS_RELAY_PROFILE"), ")"))]
#[command(about = "Takes statsd and OpenTelemetry metrics, merges them per window, and reports them to a loads broker or prints them")]
struct Cli {
    #[command(flatten)]
    args: loads_relay::run::Args,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = runtime.and_then(|r| r.block_on(loads_relay::run::run(cli.args, loads_relay::run::Target::from_env())));
    if let Err(e) = result {
        eprintln!("error: relay: {e}");
        std::process::exit(1);
    }
}
