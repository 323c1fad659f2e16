//! The relay: statsd (UDP and TCP, port 8125) and OpenTelemetry (OTLP/HTTP on
//! 4318, OTLP/gRPC on 4317) in, one merged window per flush out, shipped to the
//! broker's ingest endpoint with the run's token, or printed.
//!
//! Delivery failures are kept in a bounded buffer and retried every window;
//! when the buffer is full the oldest window is dropped and counted, and the
//! count travels with every later window, so the broker knows what it lost.
//! So does the kernel's count of statsd datagrams it dropped. Malformed lines
//! and refused points are counted and skipped; nothing a sender does can crash
//! it. The values of the secrets the node's containers hold (`LOADS_MASK`, a
//! JSON list) are masked in every metric name and tag before aggregation, so a
//! secret that a container writes there never leaves the node.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

use crate::deliver::{IngestClient, Outbox};
use crate::host::HostSampler;
use crate::mask::Masker;
use crate::metrics::{Aggregator, Merged, TimerStats, Window, MAX_LINE};
use crate::otlp::Intake;

/// Windows kept for delivery at most by default; older ones are dropped (and counted) past this.
pub const BUFFER_WINDOWS: usize = 600;
pub use crate::OTLP_LISTENING;

/// The relay's command line (also `loads relay`); each flag may come from its variable.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The statsd port, UDP and TCP; 0 disables statsd.
    #[arg(long, alias = "port", default_value_t = 8125, env = "LOADS_RELAY_PORT")]
    pub statsd_port: u16,
    /// The OTLP/HTTP port (`POST /v1/metrics`); 0 disables it.
    #[arg(long, default_value_t = 4318, env = "LOADS_RELAY_OTLP_HTTP_PORT")]
    pub otlp_http_port: u16,
    /// The OTLP/gRPC port; 0 disables it.
    #[arg(long, default_value_t = 4317, env = "LOADS_RELAY_OTLP_GRPC_PORT")]
    pub otlp_grpc_port: u16,
    /// Every intake that is not disabled on a free port instead, each printed at start (a relay
    /// on a node's own network, whose ports other programs may hold).
    #[arg(long, env = "LOADS_RELAY_FREE_PORTS")]
    pub free_ports: bool,
    /// The address every intake listens on: a relay on a node's own network takes loopback only.
    #[arg(long, default_value = "0.0.0.0", env = "LOADS_RELAY_BIND")]
    pub bind: IpAddr,
    /// The flush window, in milliseconds.
    #[arg(long, default_value_t = 1000, env = "LOADS_FLUSH_MS")]
    pub flush_ms: u64,
    /// The kernel receive queue asked for statsd's UDP socket, in bytes.
    #[arg(long, default_value_t = crate::udp::RECEIVE_BUFFER, env = "LOADS_RELAY_UDP_QUEUE")]
    pub udp_queue: usize,
    /// Print each window's merged summary (what the relay received in it).
    #[arg(long)]
    pub print: bool,
    /// At exit, print the totals of everything received as JSON.
    #[arg(long)]
    pub json: bool,
    /// Distinct series one window keeps at most (and gauges kept); the samples of any
    /// further series are counted by name pattern, not kept.
    #[arg(long, default_value_t = crate::cardinality::DEFAULT_MAX_SERIES, env = "LOADS_MAX_SERIES")]
    pub max_series: usize,
}

/// Where windows go and what they are stamped with: the relay container's environment.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// The broker's ingest URL for this run; none = aggregate and report only.
    pub ingest_url: Option<String>,
    /// The run's ingest token.
    pub ingest_token: String,
    /// PEM certificates trusted for an `https` ingest URL besides the public web's roots.
    pub ingest_ca: Option<String>,
    /// The run stamped on every window.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// The node.
    pub node: String,
    /// Windows kept for delivery at most.
    pub buffer: usize,
    /// Masks secret values in every metric received.
    pub mask: Masker,
    /// The `/proc` the host is read from.
    pub proc_root: String,
}

/// The `i`th variable holding the broker's PEM certificates (`LOADS_INGEST_CA`, `LOADS_INGEST_CA_1`, …).
fn ca_var(i: usize) -> String {
    if i == 0 {
        "LOADS_INGEST_CA".into()
    } else {
        format!("LOADS_INGEST_CA_{i}")
    }
}

impl Target {
    /// What the broker gives the relay container through its environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            ingest_url: std::env::var("LOADS_INGEST_URL").ok().filter(|u| !u.is_empty()),
            ingest_token: var("LOADS_INGEST_TOKEN"),
            ingest_ca: Some((0..).map_while(|i| std::env::var(ca_var(i)).ok()).collect::<String>()).filter(|p| !p.trim().is_empty()),
            run_id: var("LOADS_RUN"),
            step_id: var("LOADS_STEP"),
            node: var("LOADS_NODE"),
            buffer: var("LOADS_RELAY_BUFFER").parse().ok().filter(|b| *b > 0).unwrap_or(BUFFER_WINDOWS),
            mask: Masker::new(serde_json::from_str::<Vec<String>>(&var("LOADS_MASK")).unwrap_or_default()),
            proc_root: std::env::var("LOADS_PROC").unwrap_or_else(|_| "/proc".into()),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The statsd sockets, UDP and TCP on one port; with port 0 a port free for both.
async fn bind_statsd(bind: IpAddr, port: u16, queue: usize) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut attempts = 0;
    loop {
        let udp = crate::udp::bind(SocketAddr::new(bind, port), queue)?;
        let chosen = udp.local_addr()?.port();
        match TcpListener::bind((bind, chosen)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if port == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Takes statsd over TCP, a line at a time, until the task is dropped. A line is
/// buffered up to `MAX_LINE` bytes: past that it is read to its end, not kept, and
/// counted as malformed, so a sender that never ends a line holds no memory.
async fn serve_statsd_tcp(tcp: TcpListener, aggregator: Arc<Mutex<Aggregator>>, mask: Masker) {
    while let Ok((stream, _)) = tcp.accept().await {
        let (aggregator, mask) = (aggregator.clone(), mask.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line: Vec<u8> = Vec::new();
            let mut too_long = false;
            loop {
                let (used, ended) = match reader.fill_buf().await {
                    Ok(buf) if !buf.is_empty() => {
                        let (part, ended) = match memchr::memchr(b'\n', buf) {
                            Some(at) => (&buf[..at], true),
                            None => (buf, false),
                        };
                        if line.len() + part.len() > MAX_LINE {
                            too_long = true;
                            line.clear();
                        } else if !too_long {
                            line.extend_from_slice(part);
                        }
                        (part.len() + usize::from(ended), ended)
                    }
                    _ => (0, true),
                };
                reader.consume(used);
                if ended {
                    let mut a = aggregator.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if too_long {
                        a.count(0, 1);
                    } else if !line.is_empty() {
                        a.take(&mask.mask(&String::from_utf8_lossy(&line)));
                    }
                    line.clear();
                    too_long = false;
                }
                if used == 0 {
                    break;
                }
            }
        });
    }
}

/// A window as a person reads it: one line per metric.
pub fn describe(w: &Window) -> String {
    let mut merged = Merged::default();
    merged.add(w);
    let mut out = format!("window {} ({} ms): {} lines/points, {} malformed", w.seq, w.duration_ms, w.lines, w.malformed);
    if w.kernel_drops > 0 {
        out.push_str(&format!(", {} datagrams dropped by the kernel so far", w.kernel_drops));
    }
    for (k, v) in &merged.counters {
        out.push_str(&format!("\n  counter  {k} = {v}"));
    }
    for (k, v) in &merged.gauges {
        out.push_str(&format!("\n  gauge    {k} = {v}"));
    }
    for (k, v) in &merged.sets {
        out.push_str(&format!("\n  set      {k} = {v} distinct"));
    }
    for (k, h) in &merged.timers {
        let s = TimerStats::of(h);
        out.push_str(&format!("\n  timer    {k}: n={} p50={} p95={} p99={} max={} ms", s.count, s.p50, s.p95, s.p99, s.max));
    }
    let q = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v}"));
    for (k, h) in &merged.buckets {
        let (p50, p95, p99) = (q(h.quantile(0.5)), q(h.quantile(0.95)), q(h.quantile(0.99)));
        out.push_str(&format!("\n  buckets  {k}: n={} p50<={p50} p95<={p95} p99<={p99} {} (bucket bounds)", h.count, h.unit));
    }
    for (k, h) in &merged.exponential {
        let (p50, p95, p99) = (q(h.quantile(0.5)), q(h.quantile(0.95)), q(h.quantile(0.99)));
        let error = 100.0 * h.relative_error();
        out.push_str(&format!(
            "\n  exp      {k}: n={} p50={p50} p95={p95} p99={p99} {} (±{error:.3} %, scale {})",
            h.count, h.unit, h.scale
        ));
    }
    out
}

async fn deliver(ingest: Option<&IngestClient>, outbox: &mut Outbox) {
    match ingest {
        Some(ingest) => ingest.deliver(outbox).await,
        None => outbox.pending.clear(),
    }
}

/// Runs the relay until SIGTERM or SIGINT; then flushes, delivers what it can and reports.
pub async fn run(args: Args, target: Target) -> std::io::Result<()> {
    // A port of 0 disables its intake; with `free_ports` the others take any free port.
    let port = |p: u16| Some(p).filter(|p| *p != 0).map(|p| if args.free_ports { 0 } else { p });
    if [args.statsd_port, args.otlp_http_port, args.otlp_grpc_port].iter().all(|p| *p == 0) {
        return Err(std::io::Error::other("every intake is disabled (--statsd-port, --otlp-http-port and --otlp-grpc-port are 0)"));
    }
    let aggregator = Arc::new(Mutex::new(Aggregator::new(args.max_series.max(1))));
    let mut tasks = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (mut udp_socket, mut udp_thread) = (None, None);
    if let Some(wanted) = port(args.statsd_port) {
        let (udp, tcp) = bind_statsd(args.bind, wanted, args.udp_queue).await?;
        let udp = Arc::new(udp);
        eprintln!("statsd receive queue: {} bytes", crate::udp::queue_bytes(&udp));
        println!("{}{}", crate::LISTENING, udp.local_addr()?.port());
        let thread = crate::udp::spawn(udp.clone(), aggregator.clone(), target.mask.clone(), stop.clone());
        tasks.push(tokio::spawn(serve_statsd_tcp(tcp, aggregator.clone(), target.mask.clone())));
        (udp_socket, udp_thread) = (Some(udp), Some(thread));
    }
    let intake = Intake::new(aggregator.clone(), target.mask.clone());
    for (protocol, port) in [("http", port(args.otlp_http_port)), ("grpc", port(args.otlp_grpc_port))] {
        let Some(port) = port else { continue };
        let listener = crate::otlp::bind(SocketAddr::new(args.bind, port)).await?;
        println!("{OTLP_LISTENING}{protocol} {}", listener.local_addr()?.port());
        let intake = intake.clone();
        tasks.push(match protocol {
            "http" => tokio::spawn(intake.serve_http(listener)),
            _ => tokio::spawn(intake.serve_grpc(listener)),
        });
    }

    let ingest = match &target.ingest_url {
        Some(url) => Some(IngestClient::new(url, &target.ingest_token, target.ingest_ca.as_deref()).map_err(std::io::Error::other)?),
        None => None,
    };
    let mut outbox = Outbox::new(target.buffer);
    let mut totals = Merged::default();
    let mut seq = 0u64;
    let mut window_start = now_ms();
    let epoch = u64::try_from(window_start).unwrap_or(0);
    let mut host = HostSampler::new(&target.proc_root);
    host.sample();
    let mut flush = |outbox: &mut Outbox, totals: &mut Merged| {
        let end = now_ms();
        seq += 1;
        let mut w = aggregator.lock().unwrap_or_else(std::sync::PoisonError::into_inner).flush(
            seq,
            window_start,
            u64::try_from(end - window_start).unwrap_or(0),
        );
        w.kernel_drops = udp_socket.as_deref().map_or(0, crate::udp::kernel_drops);
        w.run_id.clone_from(&target.run_id);
        w.step_id.clone_from(&target.step_id);
        w.node.clone_from(&target.node);
        w.epoch = epoch;
        w.host = host.sample();
        window_start = end;
        if args.print {
            println!("{}", describe(&w));
        }
        // Everything received is kept only to be printed at exit: a relay that delivers
        // keeps nothing of a window once it is sent.
        if args.json {
            let gauges = std::mem::take(&mut totals.gauges);
            totals.add(&w);
            // A window carries the gauges set in it: the totals keep each one's last value, not a sum.
            totals.gauges = gauges;
            totals.gauges.extend(w.gauges.iter().map(|(k, v)| (k.clone(), *v)));
        } else {
            totals.lines += w.lines;
            totals.malformed += w.malformed;
        }
        let drops = w.kernel_drops;
        outbox.push(w);
        drops
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(Duration::from_millis(args.flush_ms.max(10)));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                flush(&mut outbox, &mut totals);
                deliver(ingest.as_ref(), &mut outbox).await;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    if let Some(thread) = udp_thread.take() {
        let _ = thread.join();
    }
    let drops = flush(&mut outbox, &mut totals);
    deliver(ingest.as_ref(), &mut outbox).await;
    if args.json {
        println!("{}", serde_json::to_string(&Totals::of(&totals, drops)).unwrap_or_default());
    }
    eprintln!(
        "lines={} malformed={} kernel_drops={drops} windows_sent={} windows_dropped={} windows_undelivered={}",
        totals.lines,
        totals.malformed,
        outbox.sent,
        outbox.dropped,
        outbox.pending.len()
    );
    Ok(())
}

/// Everything a relay received, as `--json` prints it at exit.
#[derive(Debug, serde::Serialize)]
pub struct Totals {
    /// Counter sums.
    pub counters: std::collections::BTreeMap<String, f64>,
    /// Gauges' last values.
    pub gauges: std::collections::BTreeMap<String, f64>,
    /// Distinct members per window, summed.
    pub sets: std::collections::BTreeMap<String, u64>,
    /// Statsd timers' statistics, in milliseconds.
    pub timers: std::collections::BTreeMap<String, TimerStats>,
    /// OpenTelemetry explicit-bucket histograms as merged.
    pub buckets: std::collections::BTreeMap<String, crate::histogram::Buckets>,
    /// OpenTelemetry exponential histograms as merged.
    pub exponential: std::collections::BTreeMap<String, crate::histogram::Exponential>,
    /// Lines and points taken.
    pub lines: u64,
    /// Malformed lines and refused points.
    pub malformed: u64,
    /// Statsd datagrams the kernel dropped.
    pub kernel_drops: u64,
}

impl Totals {
    fn of(m: &Merged, kernel_drops: u64) -> Self {
        Self {
            counters: m.counters.clone(),
            gauges: m.gauges.clone(),
            sets: m.sets.clone(),
            timers: m.timers.iter().map(|(k, h)| (k.clone(), TimerStats::of(h))).collect(),
            buckets: m.buckets.clone(),
            exponential: m.exponential.clone(),
            lines: m.lines,
            malformed: m.malformed,
            kernel_drops,
        }
    }
}
