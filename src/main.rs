//! The `loads` command.

use std::io::Write;

use clap::Parser;

#[actix_web::main]
async fn main() {
    let code = loads::cli::run(loads::cli::Cli::parse()).await;
    // Leave from inside the runtime: tasks still spawned when a command ends
    // early (a listener that started beside one that failed to bind) must not
    // be dropped after the runtime's reactor is gone.
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code))
}
