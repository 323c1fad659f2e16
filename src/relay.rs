//! `loads relay`: the per-node metrics relay (the "heka" role). Listens for
//! statsd on port 8125, UDP and TCP (newline-separated lines), aggregates each
//! flush window (`loads_actors::domain::metrics`), and ships the windows to
//! the broker's ingest endpoint with the run's token.
//!
//! Delivery failures are kept in a bounded buffer and retried every window;
//! when the buffer is full the oldest window is dropped and counted, and the
//! count travels with every later window, so the broker knows what it lost.
//! Malformed lines are counted and skipped; nothing a sender does can crash it.
//! The values of the secrets the node's containers hold (`LOADS_MASK`, a JSON
//! list) are masked in every line before it is aggregated, so a secret that a
//! container writes into a metric's name or tags never leaves the node.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loads_actors::domain::metrics::{Aggregator, HostSample, Window};
use loads_actors::domain::secrets::Masker;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

/// Windows kept for delivery at most by default; older ones are dropped (and counted) past this.
pub const BUFFER_WINDOWS: usize = 600;

/// Where windows go.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Port for statsd, UDP and TCP; 0 picks one free for both.
    pub port: u16,
    /// Address statsd is taken on.
    pub bind: std::net::IpAddr,
    /// Flush window.
    pub flush: Duration,
    /// The broker's ingest URL for this run; none = aggregate and report only.
    pub ingest_url: Option<String>,
    /// The run's ingest token.
    pub ingest_token: String,
    /// PEM certificates trusted for an `https` ingest URL besides the public web's roots.
    pub ingest_ca: Option<String>,
    /// Run, step and node ids stamped on every window.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// The node.
    pub node: String,
    /// Windows kept for delivery at most.
    pub buffer: usize,
    /// Masks secret values in every line received.
    pub mask: Masker,
}

impl RelayConfig {
    /// The configuration the broker gives the relay container through its environment.
    pub fn from_env(port: u16, flush: Duration) -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            port,
            bind: std::net::Ipv4Addr::UNSPECIFIED.into(),
            flush,
            ingest_url: std::env::var("LOADS_INGEST_URL").ok().filter(|u| !u.is_empty()),
            ingest_token: var("LOADS_INGEST_TOKEN"),
            ingest_ca: Some((0..).map_while(|i| std::env::var(ca_var(i)).ok()).collect::<String>()).filter(|p| !p.trim().is_empty()),
            run_id: var("LOADS_RUN"),
            step_id: var("LOADS_STEP"),
            node: var("LOADS_NODE"),
            buffer: var("LOADS_RELAY_BUFFER").parse().ok().filter(|b| *b > 0).unwrap_or(BUFFER_WINDOWS),
            mask: Masker::new(serde_json::from_str::<Vec<String>>(&var("LOADS_MASK")).unwrap_or_default()),
        }
    }
}

/// Reads the host's CPU, memory, network and load from a `/proc` (the host's,
/// mounted into the relay), as rates over the time between two readings.
pub struct HostSampler {
    proc_root: std::path::PathBuf,
    last: Option<(f64, f64, f64, f64, std::time::Instant)>,
}

impl HostSampler {
    /// A sampler of the `/proc` at `proc_root`.
    pub fn new(proc_root: impl Into<std::path::PathBuf>) -> Self {
        Self { proc_root: proc_root.into(), last: None }
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.proc_root.join(path)).ok()
    }

    /// `(busy jiffies, total jiffies, rx bytes, tx bytes)`.
    fn counters(&self) -> Option<(f64, f64, f64, f64)> {
        let stat = self.read("stat")?;
        let cpu: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let total: f64 = cpu.iter().sum();
        let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
        // The host's network namespace is that of its first process.
        let net = self.read("1/net/dev").or_else(|| self.read("net/dev"))?;
        let (mut rx, mut tx) = (0.0, 0.0);
        for line in net.lines().skip(2) {
            let Some((iface, rest)) = line.split_once(':') else { continue };
            if iface.trim() == "lo" {
                continue;
            }
            let fields: Vec<f64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            rx += fields.first().copied().unwrap_or(0.0);
            tx += fields.get(8).copied().unwrap_or(0.0);
        }
        Some((total - idle, total, rx, tx))
    }

    /// The host since the previous call; `None` on the first call or when `/proc` cannot be read.
    pub fn sample(&mut self) -> Option<HostSample> {
        let (busy, total, rx, tx) = self.counters()?;
        let now = std::time::Instant::now();
        let previous = self.last.replace((busy, total, rx, tx, now));
        let (b0, t0, rx0, tx0, then) = previous?;
        let seconds = now.duration_since(then).as_secs_f64().max(0.001);
        let meminfo = self.read("meminfo").unwrap_or_default();
        let field = |name: &str| {
            meminfo.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok())
        };
        let memory_percent = match (field("MemTotal:"), field("MemAvailable:")) {
            (Some(total), Some(available)) if total > 0.0 => 100.0 * (1.0 - available / total),
            _ => 0.0,
        };
        let load1 = self.read("loadavg").and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok())).unwrap_or(0.0);
        Some(HostSample {
            cpu_percent: if total > t0 { 100.0 * (busy - b0) / (total - t0) } else { 0.0 },
            memory_percent,
            net_rx_bytes_per_s: (rx - rx0).max(0.0) / seconds,
            net_tx_bytes_per_s: (tx - tx0).max(0.0) / seconds,
            load1,
        })
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

/// The statsd sockets, UDP and TCP on one port; with port 0 a port free for both.
async fn bind_statsd(bind: std::net::IpAddr, port: u16) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind((bind, port)).await?;
        let chosen = udp.local_addr()?.port();
        match TcpListener::bind((bind, chosen)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if port == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The `i`th variable holding the broker's PEM certificates (`LOADS_INGEST_CA`, `LOADS_INGEST_CA_1`, …).
fn ca_var(i: usize) -> String {
    if i == 0 {
        "LOADS_INGEST_CA".into()
    } else {
        format!("LOADS_INGEST_CA_{i}")
    }
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
    let (udp, tcp) = bind_statsd(config.bind, config.port).await?;
    println!("{}{}", loads_actors::docker_node::RELAY_LISTENING, udp.local_addr()?.port());

    let (agg, mask) = (aggregator.clone(), config.mask.clone());
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = udp.recv_from(&mut buf).await {
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Ok(mut a) = agg.lock() {
                a.take(&mask.mask(&text));
            }
        }
    });
    let (agg, mask) = (aggregator.clone(), config.mask.clone());
    let tcp_task = tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let (agg, mask) = (agg.clone(), mask.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut a) = agg.lock() {
                        a.take(&mask.mask(&line));
                    }
                }
            });
        }
    });

    let tls = loads_actors::infra::tls::Tls::for_relay(config.ingest_ca.as_deref()).map_err(std::io::Error::other)?;
    let client = tls.client(Duration::from_secs(2));
    let mut outbox = Outbox { pending: VecDeque::new(), capacity: config.buffer, dropped: 0, sent: 0 };
    let (mut seq, mut lines, mut malformed) = (0u64, 0u64, 0u64);
    let mut window_start = now_ms();
    let mut host = HostSampler::new(std::env::var("LOADS_PROC").unwrap_or_else(|_| "/proc".into()));
    host.sample();
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
        w.host = host.sample();
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
    fn host_samples_are_rates_between_two_readings() {
        let dir = std::env::temp_dir().join(format!("loads-proc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("1/net")).unwrap();
        let write = |stat: &str, rx: u64, tx: u64| {
            std::fs::write(dir.join("stat"), format!("cpu  {stat}\ncpu0 1 2 3 4\n")).unwrap();
            let dev = format!("h1\nh2\n    lo: 999 0 0 0 0 0 0 0 999 0 0 0 0 0 0 0\n  eth0: {rx} 0 0 0 0 0 0 0 {tx} 0 0 0 0 0 0 0\n");
            std::fs::write(dir.join("1/net/dev"), dev).unwrap();
        };
        std::fs::write(dir.join("meminfo"), "MemTotal:       1000 kB\nMemFree: 1 kB\nMemAvailable:    250 kB\n").unwrap();
        std::fs::write(dir.join("loadavg"), "1.50 1.00 0.50 1/100 42\n").unwrap();
        let mut sampler = HostSampler::new(&dir);
        write("100 0 100 700 100 0 0 0 0 0", 1000, 500);
        assert!(sampler.sample().is_none(), "the first reading only sets the baseline");
        write("190 0 110 740 110 0 0 0 0 0", 3000, 1500);
        let s = sampler.sample().unwrap();
        assert!((s.cpu_percent - 100.0 * 100.0 / 150.0).abs() < 1e-9, "{s:?}");
        assert!((s.memory_percent - 75.0).abs() < 1e-9);
        assert_eq!(s.load1, 1.5);
        assert!(s.net_rx_bytes_per_s > 0.0 && s.net_tx_bytes_per_s > 0.0);
        let _ = std::fs::remove_dir_all(&dir);
    }

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
