//! The node's host as the relay sees it through the host's `/proc`.

use crate::metrics::HostSample;

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
}
