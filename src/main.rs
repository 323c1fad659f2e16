//! The `loads` command.

use std::process::ExitCode;

use clap::Parser;

#[actix_web::main]
async fn main() -> ExitCode {
    loads::cli::run(loads::cli::Cli::parse()).await
}
