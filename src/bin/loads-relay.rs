//! `loads-relay`: the per-node metrics relay on its own, the binary the relay
//! image runs (a small one: it holds the relay and nothing of the broker).
//! Configured through its environment, as the broker starts it:
//! `LOADS_RELAY_PORT` (8125; 0 picks a free one), `LOADS_RELAY_BIND`
//! (0.0.0.0), `LOADS_FLUSH_MS` (1000), and the variables `loads::relay` reads.

use std::time::Duration;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text.trim().parse().map_err(|_| format!("{name}: cannot read {text:?}")),
        _ => Ok(default),
    }
}

fn config() -> Result<loads::relay::RelayConfig, String> {
    let port = setting("LOADS_RELAY_PORT", 8125u16)?;
    let bind = setting("LOADS_RELAY_BIND", std::net::IpAddr::from([0, 0, 0, 0]))?;
    let flush_ms = setting("LOADS_FLUSH_MS", 1000u64)?;
    let mut config = loads::relay::RelayConfig::from_env(port, Duration::from_millis(flush_ms.max(10)));
    config.bind = bind;
    Ok(config)
}

fn main() {
    let config = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: relay: {e}");
            std::process::exit(2);
        }
    };
    let result = actix_rt::System::new().block_on(loads::relay::run(config));
    if let Err(e) = result {
        eprintln!("error: relay: {e}");
        std::process::exit(1);
    }
}
