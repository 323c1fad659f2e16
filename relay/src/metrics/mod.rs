//! Statsd and OpenTelemetry in, windows out: parsing, per-window aggregation on
//! a node, and the exact merge of many nodes' windows into a step's.
//!
//! Statsd timers, histograms and distributions go into HDR histograms
//! (microseconds, 3 significant digits) that travel serialized, so a step's
//! percentiles are computed from the union of every node's samples, never by
//! averaging per-node percentiles. OpenTelemetry histograms travel as they
//! were sent ([`crate::histogram`]).
//!
//! The aggregator's hot path takes a datagram's bytes and allocates only for a
//! metric name it has not seen in the window.

mod aggregator;
mod parse;

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::histogram::{Buckets, Exponential};

pub use self::aggregator::Aggregator;
pub use self::parse::{key_of, parse_line, Sample, SampleValue};

/// Largest value a timer histogram holds: one hour, in microseconds.
const MAX_MICROS: u64 = 3_600_000_000;

/// Longest statsd line taken, in bytes; a longer one is malformed.
pub const MAX_LINE: usize = 8192;

/// Samples a timer keeps as they are before it needs a histogram: a series seen a
/// few times in a window (a request id in a name) costs bytes, not a histogram.
const FEW_SAMPLES: usize = 32;

/// Members one set keeps in a window; further new members are counted as overflow.
pub const MAX_SET_MEMBERS: usize = 100_000;

/// Members all sets keep together in a window (about 16 MiB); past it, new members are
/// counted as overflow.
pub const MAX_SET_MEMBERS_PER_WINDOW: usize = 1_000_000;

/// A set member as the window keeps it: a 64-bit hash, so a member costs eight bytes
/// however long its text (two distinct members share one with odds of about 1 in 10^19
/// per pair, far below what a set of [`MAX_SET_MEMBERS`] could notice).
fn member_hash(member: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    member.hash(&mut h);
    h.finish()
}

/// What one node received in one flush window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The run.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// The node.
    pub node: String,
    /// The window's number on this node, from 1.
    pub seq: u64,
    /// The relay that made it: when it started, Unix milliseconds (with `node` and `seq`,
    /// what identifies a window, so a delivery made again counts once).
    #[serde(default)]
    pub epoch: u64,
    /// Start of the window, Unix milliseconds.
    pub start_ms: i64,
    /// Length of the window.
    pub duration_ms: u64,
    /// Counters: the sum of the window's increments.
    pub counters: BTreeMap<String, f64>,
    /// Gauges: the value at the end of the window.
    pub gauges: BTreeMap<String, f64>,
    /// Sets: how many distinct members the window saw.
    pub sets: BTreeMap<String, u64>,
    /// Timers, histograms, distributions: HDR histograms of microseconds, V2-deflate, base64.
    pub timers: BTreeMap<String, String>,
    /// Well-formed statsd lines and OpenTelemetry data points received.
    pub lines: u64,
    /// Malformed lines and refused data points (skipped).
    pub malformed: u64,
    /// Windows this node could not deliver so far (its buffer overflowed).
    pub dropped_windows: u64,
    /// Statsd datagrams the node's kernel dropped so far, before the relay could read them
    /// (its socket's receive queue was full).
    #[serde(default)]
    pub kernel_drops: u64,
    /// OpenTelemetry explicit-bucket histograms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<String, Buckets>,
    /// OpenTelemetry exponential histograms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exponential: BTreeMap<String, Exponential>,
    /// The node's host over the window, when it could be read.
    #[serde(default)]
    pub host: Option<HostSample>,
    /// Samples of series past the relay's cap (`LOADS_MAX_SERIES`), not kept, by name pattern.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overflow: BTreeMap<String, u64>,
}

/// A node's host over one window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// CPU busy, percent of all cores.
    pub cpu_percent: f64,
    /// Memory in use, percent.
    pub memory_percent: f64,
    /// Bytes received per second, all interfaces but loopback.
    pub net_rx_bytes_per_s: f64,
    /// Bytes sent per second, all interfaces but loopback.
    pub net_tx_bytes_per_s: f64,
    /// One-minute load average.
    pub load1: f64,
}

/// An empty histogram of microseconds that grows to the values it takes (to an hour at
/// most, as values are clamped there), so a small one stays small.
pub fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 2, 3).expect("valid histogram bounds");
    h.auto(true);
    h
}

/// Encodes a histogram for transport.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    let _ = V2DeflateSerializer::new().serialize(h, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Longest encoded timer histogram taken (a full one of 1 µs to an hour is a few KiB).
const MAX_ENCODED_HISTOGRAM: usize = 64 * 1024;

/// Largest size a timer histogram may inflate to before it is read: its counts, each at
/// most nine bytes, for the bounds below.
const MAX_INFLATED_HISTOGRAM: u64 = 512 * 1024;

/// The highest value a timer histogram may declare it tracks: twice the hour timers are
/// clamped to (an auto-resized histogram rounds its top up to a power of two).
const MAX_TRACKED_MICROS: u64 = 2 * MAX_MICROS.next_power_of_two();

/// Decodes a histogram from transport, or `None` for one no relay sends: too long,
/// inflating past [`MAX_INFLATED_HISTOGRAM`], more than 3 significant digits, or
/// bounds beyond [`MAX_TRACKED_MICROS`] (each of which could make its counts array
/// gigabytes before a single count is read).
pub fn decode_histogram(text: &str) -> Option<Histogram<u64>> {
    use std::io::Read as _;
    if text.len() > MAX_ENCODED_HISTOGRAM {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    // A V2 deflate encoding: its cookie, the compressed length, a zlib stream of the V2
    // encoding, inflated here under a bound.
    let compressed = match bytes.get(..8) {
        Some([0x1c, 0x84, 0x93, 0x14, len @ ..]) => bytes.get(8..8 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)?,
        _ => return None,
    };
    let mut plain = Vec::new();
    flate2::read::ZlibDecoder::new(compressed).take(MAX_INFLATED_HISTOGRAM + 1).read_to_end(&mut plain).ok()?;
    if plain.len() as u64 > MAX_INFLATED_HISTOGRAM {
        return None;
    }
    // The V2 header: cookie, payload length, normalizing offset, significant digits,
    // lowest and highest trackable values, the integer-to-double ratio.
    let be_u32 = |at: usize| plain.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let be_u64 = |at: usize| plain.get(at..at + 8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
    let (payload, digits, lowest, highest) = (be_u32(4)?, be_u32(12)?, be_u64(16)?, be_u64(24)?);
    if payload as usize > plain.len().saturating_sub(40) || digits > 3 || lowest == 0 || lowest > highest || highest > MAX_TRACKED_MICROS {
        return None;
    }
    Deserializer::new().deserialize(&mut plain.as_slice()).ok()
}

/// Statistics of a timer, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TimerStats {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl TimerStats {
    /// The statistics of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// Many windows merged exactly: counters and sets summed, gauges summed across
/// nodes, histograms added sample for sample.
#[derive(Clone, Debug, Default)]
pub struct Merged {
    /// Counter sums.
    pub counters: BTreeMap<String, f64>,
    /// Gauge sums across nodes (each node's last value).
    pub gauges: BTreeMap<String, f64>,
    /// Distinct members seen per node, summed (an upper bound of the union).
    pub sets: BTreeMap<String, u64>,
    /// Merged histograms.
    pub timers: BTreeMap<String, Histogram<u64>>,
    /// Merged OpenTelemetry explicit-bucket histograms.
    pub buckets: BTreeMap<String, Buckets>,
    /// Merged OpenTelemetry exponential histograms.
    pub exponential: BTreeMap<String, Exponential>,
    /// Lines and malformed lines.
    pub lines: u64,
    /// Malformed lines.
    pub malformed: u64,
    /// The summed lengths of the windows added.
    pub duration_ms: u64,
}

impl Merged {
    /// The statistics of every OpenTelemetry histogram, explicit and exponential, by key.
    pub fn histogram_stats(&self) -> BTreeMap<String, crate::histogram::HistogramStats> {
        let buckets = self.buckets.iter().map(|(k, h)| (k.clone(), crate::histogram::HistogramStats::of_buckets(h)));
        let exponential = self.exponential.iter().map(|(k, h)| (k.clone(), crate::histogram::HistogramStats::of_exponential(h)));
        buckets.chain(exponential).collect()
    }

    /// The totals as one window (histograms encoded), which `add` turns back into the same totals.
    pub fn to_window(&self) -> Window {
        Window {
            counters: self.counters.clone(),
            gauges: self.gauges.clone(),
            sets: self.sets.clone(),
            timers: self.timers.iter().map(|(k, h)| (k.clone(), encode_histogram(h))).collect(),
            buckets: self.buckets.clone(),
            exponential: self.exponential.clone(),
            lines: self.lines,
            malformed: self.malformed,
            duration_ms: self.duration_ms,
            ..Window::default()
        }
    }

    /// Adds one window; an undecodable histogram is skipped and counted as malformed.
    pub fn add(&mut self, w: &Window) {
        // Sums across nodes saturate rather than become infinite, which JSON cannot carry.
        let add = |slot: &mut f64, v: f64| *slot = (*slot + v).clamp(f64::MIN, f64::MAX);
        for (k, v) in &w.counters {
            add(self.counters.entry(k.clone()).or_default(), *v);
        }
        for (k, v) in &w.gauges {
            add(self.gauges.entry(k.clone()).or_default(), *v);
        }
        for (k, v) in &w.sets {
            let n = self.sets.entry(k.clone()).or_default();
            *n = n.saturating_add(*v);
        }
        for (k, encoded) in &w.timers {
            match decode_histogram(encoded) {
                Some(h) => {
                    let _ = self.timers.entry(k.clone()).or_insert_with(new_histogram).add(&h);
                }
                None => self.malformed += 1,
            }
        }
        // A histogram that is not one a sender may give (too many buckets, buckets beyond
        // what a number can hold, counts that do not add up) is skipped and counted.
        for (k, h) in &w.buckets {
            if h.check().is_err() || self.buckets.entry(k.clone()).or_default().add(h).is_err() {
                self.malformed = self.malformed.saturating_add(1);
            }
        }
        for (k, h) in &w.exponential {
            if h.check().is_err() || self.exponential.entry(k.clone()).or_default().add(h).is_err() {
                self.malformed = self.malformed.saturating_add(1);
            }
        }
        self.lines = self.lines.saturating_add(w.lines);
        self.malformed = self.malformed.saturating_add(w.malformed);
        self.duration_ms = self.duration_ms.saturating_add(w.duration_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::parse::{exact_micros, number};
    use super::*;

    #[test]
    fn timer_micros_read_from_digits_are_those_of_the_rounded_float() {
        let mut cases: Vec<String> =
            ["0", "7", "12.5", "0.001", ".5", "5.", "1.2345", "1e3", "-1", "+1", "", ".", "3600000", "3600000.001", "99999999999999"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let mut x = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let decimals = (x >> 62) as usize;
            cases.push(format!("{:.*}", decimals, (x % 100_000_000_000) as f64 / 10f64.powi(decimals as i32)));
        }
        for case in &cases {
            let float = number(case.as_bytes()).filter(|v| *v >= 0.0).map(|ms| ((ms * 1000.0).round() as u64).min(MAX_MICROS));
            match exact_micros(case.as_bytes()) {
                Some(micros) => assert_eq!(Some(micros), float, "{case:?}"),
                None => assert!(
                    case.is_empty()
                        || case.contains(['e', '-', '+'])
                        || case.ends_with('.')
                        || case.split('.').nth(1).is_some_and(|d| d.len() > 3),
                    "{case:?} is a plain decimal"
                ),
            }
        }
    }

    #[test]
    fn numbers_read_directly_are_those_rust_reads() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "+7",
            "12.5",
            "0.1",
            "-3.25",
            "999999999999999",
            "1234567890.12345",
            "1e3",
            "1.5E-7",
            "inf",
            "NaN",
            ".5",
            "5.",
            "1.2.3",
            "",
            "-",
            "+",
            "12a",
            "0000000000000000012",
            "1234567890123456789",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut x = 0x2545f4914f6cdd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 10_000_000_000_000_000) as f64;
            let decimals = (x >> 60) as i32;
            cases.push(format!("{}{:.*}", if x & 1 == 1 { "-" } else { "" }, decimals as usize, digits / 10f64.powi(decimals)));
        }
        for case in &cases {
            let expected = case.parse::<f64>().ok().filter(|v| v.is_finite());
            assert_eq!(number(case.as_bytes()).map(f64::to_bits), expected.map(f64::to_bits), "{case:?}");
        }
    }

    #[test]
    fn totals_survive_their_trip_through_a_window() {
        let mut a = Aggregator::default();
        a.take("hits:3|c\nlat:12|ms\nlat:40|ms\ng:7|g\nu:x|s");
        let mut merged = Merged::default();
        merged.add(&a.flush(1, 0, 1000));
        let mut back = Merged::default();
        back.add(&merged.to_window());
        assert_eq!(
            (back.counters.clone(), back.gauges.clone(), back.sets.clone()),
            (merged.counters.clone(), merged.gauges.clone(), merged.sets.clone())
        );
        assert_eq!(back.timers["lat"], merged.timers["lat"]);
        assert_eq!((back.lines, back.duration_ms), (merged.lines, merged.duration_ms));
    }

    #[test]
    fn a_counter_is_never_taken_beyond_a_finite_number() {
        let mut a = Aggregator::default();
        a.take("big:1e308|c\nbig:1e308|c\nbig:1e300|c|@0.000000001");
        let w = a.flush(1, 0, 1000);
        assert_eq!((w.counters["big"], w.lines, w.malformed), (1e308, 1, 2), "the overflowing lines are counted malformed");
        assert!(serde_json::from_str::<Window>(&serde_json::to_string(&w).unwrap()).is_ok());
    }

    #[test]
    fn parses_every_statsd_type_with_rates_and_tags() {
        assert_eq!(parse_line("hits:3|c|@0.5").unwrap().value, SampleValue::Count(6.0));
        assert_eq!(parse_line("temp:-2|g").unwrap().value, SampleValue::GaugeDelta(-2.0));
        assert_eq!(parse_line("temp:20|g").unwrap().value, SampleValue::Gauge(20.0));
        assert_eq!(parse_line("t:12.5|ms").unwrap().value, SampleValue::Timing(12.5, 1.0));
        assert_eq!(parse_line("t:1|h|@0.25").unwrap().value, SampleValue::Timing(1.0, 4.0));
        assert_eq!(parse_line("u:alice|s").unwrap().value, SampleValue::SetMember("alice".into()));
        let tagged = parse_line("req:1|c|#status:ok,az:b,canary").unwrap();
        assert_eq!(tagged.key, "req;az=b,canary,status=ok");
        for bad in ["", "x", "a:|c", "a:1|q", "a:1|c|@0", "a:1|c|@2", "a:-1|ms", "a:x|c", ":1|c", "a b:1|c", "a:1|c|junk"] {
            assert!(parse_line(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_window_counts_lines_and_keeps_gauges() {
        let mut a = Aggregator::default();
        a.take("hits:1|c\nhits:2|c\ng:5|g\ng:+1|g\nu:x|s\nu:x|s\nu:y|s\nt:10|ms\nbogus\n");
        let w = a.flush(1, 0, 1000);
        assert_eq!(w.counters["hits"], 3.0);
        assert_eq!(w.gauges["g"], 6.0);
        assert_eq!(w.sets["u"], 2);
        assert_eq!((w.lines, w.malformed), (8, 1));
        assert_eq!(TimerStats::of(&decode_histogram(&w.timers["t"]).unwrap()).count, 1);
        let next = a.flush(2, 1000, 1000);
        assert!(next.counters.is_empty() && next.timers.is_empty());
        assert!(next.gauges.is_empty(), "a window carries the gauges set in it");
        a.take("g:+1|g");
        assert_eq!(a.flush(3, 2000, 1000).gauges["g"], 7.0, "gauges hold their value");
    }

    #[test]
    fn series_past_the_cap_are_counted_by_pattern_not_kept() {
        let mut a = Aggregator::new(10);
        for id in 0..100 {
            a.take(&format!("req.{id:08x}.lat:12|ms\nhits:1|c"));
        }
        for id in 0..30 {
            a.take(&format!("queue.{id}:1|g"));
        }
        a.take(&format!("long:{}|c", "1".repeat(MAX_LINE)));
        let w = a.flush(1, 0, 1000);
        assert_eq!(w.timers.len() + w.counters.len() + w.gauges.len(), 10, "{w:?}");
        assert_eq!(w.counters["hits"], 100.0, "a series kept takes every sample");
        assert_eq!(w.overflow["req.*.lat"], 91);
        assert_eq!(w.overflow["queue.*"], 30);
        assert_eq!((w.lines, w.malformed), (230, 1), "a line over {MAX_LINE} bytes is malformed");
        // The next window starts empty: its first series are kept again.
        a.take("queue.1:+1|g\nreq.x.lat:5|ms");
        let next = a.flush(2, 1000, 1000);
        assert!(next.overflow.is_empty() && next.timers.contains_key("req.x.lat"));
    }

    #[test]
    fn histograms_no_relay_sends_are_refused_before_they_are_allocated() {
        use std::io::Write as _;
        let mut h = new_histogram();
        h.record(MAX_MICROS).unwrap();
        h.record(1).unwrap();
        let back = decode_histogram(&encode_histogram(&h)).expect("an hour-long timer is taken");
        assert_eq!((back.len(), back.max(), back.high() <= MAX_TRACKED_MICROS), (2, h.max(), true));

        // A V2 encoding with the given header, deflated and wrapped as a relay would.
        let wrap = |digits: u32, low: u64, high: u64, payload: u32, counts: &[u8]| {
            let mut plain = Vec::new();
            for word in [0x1c84_9313u32, payload, 0, digits] {
                plain.extend(word.to_be_bytes());
            }
            plain.extend(low.to_be_bytes());
            plain.extend(high.to_be_bytes());
            plain.extend(1.0f64.to_be_bytes());
            plain.extend(counts);
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(&plain).unwrap();
            let z = z.finish().unwrap();
            let mut bytes = 0x1c84_9314u32.to_be_bytes().to_vec();
            bytes.extend((z.len() as u32).to_be_bytes());
            bytes.extend(z);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        assert!(decode_histogram(&wrap(3, 1, 1 << 20, 2, &[2, 2])).is_some(), "a sound one is read");
        // Five digits over the whole u64 range: a 50 MB counts array from 60 bytes.
        assert!(decode_histogram(&wrap(5, 1, u64::MAX / 2, 0, &[])).is_none());
        assert!(decode_histogram(&wrap(3, 1, 1 << 40, 0, &[])).is_none(), "beyond an hour");
        assert!(decode_histogram(&wrap(3, 0, 1 << 20, 0, &[])).is_none());
        // A payload length of 4 GB (once allocated as it was read).
        assert!(decode_histogram(&wrap(3, 1, 1 << 20, u32::MAX, &[])).is_none());
        // A deflate bomb: 16 MiB of zero counts in about 30 KiB.
        let bomb = wrap(3, 1, 1 << 20, 16 << 20, &vec![0; 16 << 20]);
        assert!(bomb.len() < MAX_ENCODED_HISTOGRAM, "{}", bomb.len());
        assert!(decode_histogram(&bomb).is_none());
        assert!(decode_histogram(&"A".repeat(MAX_ENCODED_HISTOGRAM + 4)).is_none());
        assert!(decode_histogram("not base64!").is_none());
    }

    #[test]
    fn set_members_cost_eight_bytes_and_past_their_caps_are_counted() {
        let mut a = Aggregator::default();
        let long = "m".repeat(1000);
        for i in 0..MAX_SET_MEMBERS + 10 {
            a.take(&format!("users:{long}{i}|s"));
        }
        a.take(&format!("users:{long}0|s"));
        let w = a.flush(1, 0, 1000);
        assert_eq!(w.sets["users"], MAX_SET_MEMBERS as u64, "members past the cap are not kept");
        assert_eq!(w.overflow["users"], 10, "they are counted, a member seen again is not");
        // The window-wide cap: many sets together keep at most MAX_SET_MEMBERS_PER_WINDOW.
        let per_set = MAX_SET_MEMBERS;
        let sets = MAX_SET_MEMBERS_PER_WINDOW / per_set + 1;
        for s in 0..sets {
            for i in 0..per_set {
                a.take(&format!("s{s}:{i}|s"));
            }
        }
        let w = a.flush(2, 1000, 1000);
        assert_eq!(w.sets.values().sum::<u64>(), MAX_SET_MEMBERS_PER_WINDOW as u64);
        assert_eq!(w.overflow.values().sum::<u64>(), per_set as u64);
        a.take("users:x|s");
        assert_eq!(a.flush(3, 2000, 1000).sets["users"], 1, "the next window starts again");
    }

    #[test]
    fn a_timer_with_few_samples_encodes_the_same_values() {
        let mut a = Aggregator::default();
        a.take("few:1.5|ms\nfew:250|ms\nfew:3600001|ms");
        for v in 0..100 {
            a.take(&format!("many:{v}|ms"));
        }
        let w = a.flush(1, 0, 1000);
        let mut expected = Histogram::<u64>::new_with_bounds(1, MAX_MICROS, 3).unwrap();
        for micros in [1500, 250_000, MAX_MICROS] {
            expected.record(micros).unwrap();
        }
        let few = TimerStats::of(&decode_histogram(&w.timers["few"]).unwrap());
        assert_eq!(few, TimerStats::of(&expected));
        let many = TimerStats::of(&decode_histogram(&w.timers["many"]).unwrap());
        assert_eq!(many.count, 100);
        assert!((many.max - 99.0).abs() < 0.1, "{many:?}");
        // A histogram that started small takes any other's values.
        let mut merged = Merged::default();
        merged.add(&w);
        merged.add(&w);
        expected.add(expected.clone()).unwrap();
        assert_eq!(TimerStats::of(&merged.timers["few"]), TimerStats::of(&expected));
    }

    #[test]
    fn merged_percentiles_are_those_of_the_union_of_samples() {
        let mut all: Vec<f64> = Vec::new();
        let mut merged = Merged::default();
        for node in 0..3u32 {
            let mut a = Aggregator::default();
            for i in 0..1000u32 {
                // Different distributions per node, so averaging per-node percentiles would be wrong.
                let ms = f64::from((i * (node + 1) * 7919) % 5000) / 10.0 + f64::from(node) * 100.0;
                all.push(ms);
                a.take(&format!("lat:{ms}|ms"));
            }
            merged.add(&a.flush(1, 0, 1000));
        }
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let stats = TimerStats::of(&merged.timers["lat"]);
        assert_eq!(stats.count, 3000);
        for (q, got) in [(0.50, stats.p50), (0.95, stats.p95), (0.99, stats.p99)] {
            let exact = all[((q * all.len() as f64).ceil() as usize).saturating_sub(1)];
            assert!((got - exact).abs() <= exact * 0.001 + 0.001, "p{q}: {got} vs exact {exact}");
        }
    }
}
