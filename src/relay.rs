//! `loads relay`: the per-node metrics relay (the "heka" role). Listens for
//! statsd on port 8125, UDP and TCP (newline-separated lines), checks each
//! line's shape, and reports what it received. Malformed lines are counted
//! and skipped; nothing a sender does can crash it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

/// Counters of what the relay received.
#[derive(Default)]
pub struct Counts {
    /// Well-formed statsd lines.
    pub lines: AtomicU64,
    /// Lines that are not statsd.
    pub malformed: AtomicU64,
}

impl Counts {
    fn take(&self, text: &str) {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let counter = if is_statsd_line(line) { &self.lines } else { &self.malformed };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether `line` has the shape `name:value|type[|@rate][|#tags]`.
pub fn is_statsd_line(line: &str) -> bool {
    let Some((name, rest)) = line.split_once(':') else { return false };
    let mut fields = rest.split('|');
    let (Some(value), Some(kind)) = (fields.next(), fields.next()) else { return false };
    let value_ok = match kind {
        "s" => !value.is_empty(),
        "c" | "ms" | "h" | "d" | "g" => value.trim_start_matches(['+', '-']).parse::<f64>().is_ok_and(f64::is_finite),
        _ => false,
    };
    let extras_ok = fields.all(|f| {
        f.strip_prefix('@').is_some_and(|r| r.parse::<f64>().is_ok_and(|r| r > 0.0 && r <= 1.0)) || f.starts_with('#')
    });
    !name.is_empty() && value_ok && extras_ok
}

/// Runs the relay on `port` until SIGTERM or SIGINT, printing totals every `every`.
pub async fn run(port: u16, every: Duration) -> std::io::Result<()> {
    let counts = Arc::new(Counts::default());
    let udp = UdpSocket::bind(("0.0.0.0", port)).await?;
    let tcp = TcpListener::bind(("0.0.0.0", port)).await?;
    println!("relay listening for statsd on udp and tcp port {port}");

    let c = counts.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = udp.recv_from(&mut buf).await {
            c.take(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let c = counts.clone();
    let tcp_task = tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    c.take(&line);
                }
            });
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => report(&counts),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    udp_task.abort();
    tcp_task.abort();
    report(&counts);
    Ok(())
}

fn report(counts: &Counts) {
    println!(
        "statsd lines={} malformed={}",
        counts.lines.load(Ordering::Relaxed),
        counts.malformed.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::is_statsd_line;

    #[test]
    fn recognises_statsd_lines() {
        for ok in ["a.b:1|c", "t:12.5|ms|@0.5", "g:-3|g", "s:user1|s", "d:4|d|#env:prod,az:b", "h:7|h"] {
            assert!(is_statsd_line(ok), "{ok}");
        }
        for bad in ["", "novalue", "a:|c", "a:1", "a:1|x", "a:x|c", ":1|c", "a:1|c|@2", "a:NaN|ms"] {
            assert!(!is_statsd_line(bad), "{bad}");
        }
    }
}
