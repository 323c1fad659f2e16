//! `loads relay`: the per-node metrics relay (the "heka" role). Listens for
//! statsd on port 8125, UDP and TCP (newline-separated lines), aggregates each
//! flush window (`loads_actors::domain::metrics`), and ships the windows to
//! the broker's ingest endpoint with the run's token.
//!
//! Delivery failures are kept in a bounded buffer and retried every window;
//! when the buffer is full the oldest window is dropped and counted, and the
//! count travels with every later window, so the broker knows what it lost.
//! Malformed lines are counted and skipped; nothing a sender does can crash it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loads_actors::domain::metrics::{Aggregator, Window};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

/// Windows kept for delivery at most by default; older ones are dropped (and counted) past this.
pub const BUFFER_WINDOWS: usize = 600;

/// Where windows go.
#[derive(Clone, Debug, Default)]
pub struct RelayConfig {
    /// Port for statsd, UDP and TCP.
    pub port: u16,
    /// Flush window.
    pub flush: Duration,
    /// The broker's ingest URL for this run; none = aggregate and report only.
    pub ingest_url: Option<String>,
    /// The run's ingest token.
    pub ingest_token: String,
    /// Run, step and node ids stamped on every window.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// The node.
    pub node: String,
    /// Windows kept for delivery at most.
    pub buffer: usize,
}

impl RelayConfig {
    /// The configuration the broker gives the relay container through its environment.
    pub fn from_env(port: u16, flush: Duration) -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            port,
            flush,
            ingest_url: std::env::var("LOADS_INGEST_URL").ok().filter(|u| !u.is_empty()),
            ingest_token: var("LOADS_INGEST_TOKEN"),
            run_id: var("LOADS_RUN"),
            step_id: var("LOADS_STEP"),
            node: var("LOADS_NODE"),
            buffer: var("LOADS_RELAY_BUFFER").parse().ok().filter(|b| *b > 0).unwrap_or(BUFFER_WINDOWS),
        }
    }
}

struct Outbox {
    pending: VecDeque<Window>,
    capacity: usize,
    dropped: u64,
    sent: u64,
}

impl Outbox {
    fn push(&mut self, mut w: Window) {
        if self.pending.len() >= self.capacity {
            self.pending.pop_front();
            self.dropped += 1;
        }
        w.dropped_windows = self.dropped;
        self.pending.push_back(w);
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Sends what is pending, oldest first, in batches; stops at the first failure.
async fn deliver(config: &RelayConfig, client: &awc::Client, outbox: &mut Outbox) {
    let Some(url) = &config.ingest_url else {
        outbox.pending.clear();
        return;
    };
    while !outbox.pending.is_empty() {
        let batch: Vec<Window> = outbox.pending.iter().take(50).cloned().collect();
        let answer = client.post(url).bearer_auth(&config.ingest_token).send_json(&batch).await;
        match answer {
            Ok(r) if r.status().is_success() => {
                outbox.pending.drain(..batch.len());
                outbox.sent += batch.len() as u64;
            }
            Ok(r) => {
                eprintln!("ingest refused {} window(s): HTTP {}", batch.len(), r.status());
                return;
            }
            Err(e) => {
                eprintln!("ingest unreachable, keeping {} window(s): {e}", outbox.pending.len());
                return;
            }
        }
    }
}

/// Runs the relay until SIGTERM or SIGINT; then flushes, delivers what it can and reports.
pub async fn run(config: RelayConfig) -> std::io::Result<()> {
    let aggregator = Arc::new(Mutex::new(Aggregator::default()));
    let udp = UdpSocket::bind(("0.0.0.0", config.port)).await?;
    let tcp = TcpListener::bind(("0.0.0.0", config.port)).await?;
    println!("relay listening for statsd on udp and tcp port {}", config.port);

    let agg = aggregator.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = udp.recv_from(&mut buf).await {
            if let Ok(mut a) = agg.lock() {
                a.take(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let agg = aggregator.clone();
    let tcp_task = tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let agg = agg.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut a) = agg.lock() {
                        a.take(&line);
                    }
                }
            });
        }
    });

    let client = awc::Client::builder().timeout(Duration::from_secs(2)).finish();
    let mut outbox = Outbox { pending: VecDeque::new(), capacity: config.buffer, dropped: 0, sent: 0 };
    let (mut seq, mut lines, mut malformed) = (0u64, 0u64, 0u64);
    let mut window_start = now_ms();
    let mut flush = |outbox: &mut Outbox| {
        let end = now_ms();
        seq += 1;
        let mut w = match aggregator.lock() {
            Ok(mut a) => a.flush(seq, window_start, u64::try_from(end - window_start).unwrap_or(0)),
            Err(_) => Window::default(),
        };
        lines += w.lines;
        malformed += w.malformed;
        w.run_id.clone_from(&config.run_id);
        w.step_id.clone_from(&config.step_id);
        w.node.clone_from(&config.node);
        window_start = end;
        outbox.push(w);
        (lines, malformed)
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(config.flush);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                flush(&mut outbox);
                deliver(&config, &client, &mut outbox).await;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    udp_task.abort();
    tcp_task.abort();
    let (lines, malformed) = flush(&mut outbox);
    deliver(&config, &client, &mut outbox).await;
    println!(
        "statsd lines={lines} malformed={malformed} windows_sent={} windows_dropped={} windows_undelivered={}",
        outbox.sent,
        outbox.dropped,
        outbox.pending.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it_on_later_windows() {
        let mut outbox = Outbox { pending: VecDeque::new(), capacity: 3, dropped: 0, sent: 0 };
        for seq in 1..=5 {
            outbox.push(Window { seq, ..Window::default() });
        }
        assert_eq!(outbox.dropped, 2);
        let kept: Vec<(u64, u64)> = outbox.pending.iter().map(|w| (w.seq, w.dropped_windows)).collect();
        assert_eq!(kept, [(3, 0), (4, 1), (5, 2)], "each window carries the losses so far");
    }
}
