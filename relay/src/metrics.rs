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

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cardinality::{Overflow, DEFAULT_MAX_SERIES};
use crate::histogram::{Buckets, Exponential, Mismatch};

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

/// One parsed statsd sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name with its tags, `name` or `name;k=v,k2=v2` (tags sorted).
    pub key: String,
    /// What it is.
    pub value: SampleValue,
}

/// The value of a sample, by statsd type.
#[derive(Clone, Debug, PartialEq)]
pub enum SampleValue {
    /// `c`: added to the counter, already divided by its sample rate.
    Count(f64),
    /// `g`: the gauge's new value.
    Gauge(f64),
    /// `g` with a sign: added to the gauge.
    GaugeDelta(f64),
    /// `ms`, `h`, `d`: a measurement (milliseconds for timers), with how many samples it stands for.
    Timing(f64, f64),
    /// `s`: a member of a set.
    SetMember(String),
}

/// One statsd line taken apart, borrowing from it.
struct Line<'a> {
    name: &'a str,
    raw: &'a [u8],
    kind: &'a [u8],
    rate: f64,
    tags: Option<&'a str>,
}

/// Splits `name:value|type[|@rate][|#tag:value,...]`; `None` when malformed. The
/// name's end is found with `memchr`'s vector search, not byte by byte.
fn split_line(text: &str) -> Option<Line<'_>> {
    let line = text.as_bytes();
    // The name ends at the first colon; a bar or a space before it makes the line malformed.
    let colon = memchr::memchr3(b':', b'|', b' ', line).filter(|c| *c > 0 && line[*c] == b':')?;
    let name = text.get(..colon)?;
    let rest = &line[colon + 1..];
    // The value and the type are a few bytes each: a plain loop beats a vector search.
    let bar = rest.iter().position(|b| *b == b'|')?;
    let (raw, rest) = (&rest[..bar], &rest[bar + 1..]);
    let (kind, extras) = match rest.iter().position(|b| *b == b'|') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (mut rate, mut tags) = (1.0, None);
    for extra in extras.into_iter().flat_map(|e| e.split(|b| *b == b'|')) {
        match extra.split_first() {
            Some((b'@', r)) => rate = number(r).filter(|r| *r > 0.0 && *r <= 1.0)?,
            // Split at ASCII bytes, the tags are whole characters of `text`.
            Some((b'#', list)) => tags = Some(std::str::from_utf8(list).ok()?),
            _ => return None,
        }
    }
    Some(Line { name, raw, kind, rate, tags })
}

/// A timer's value in whole microseconds when it is a plain decimal of milliseconds
/// with at most three decimals (`12`, `3.25`), read exactly from its digits: the
/// value `(ms * 1000).round()` gives, without the float. `None` for anything else.
fn exact_micros(raw: &[u8]) -> Option<u64> {
    const SCALE: [u64; 4] = [1000, 100, 10, 1];
    let (mut micros, mut count, mut decimals) = (0u64, 0usize, None::<usize>);
    for b in raw {
        match b {
            b'0'..=b'9' if count < 15 => {
                micros = micros * 10 + u64::from(b - b'0');
                count += 1;
                decimals = decimals.map(|d| d + 1);
            }
            b'.' if decimals.is_none() => decimals = Some(0),
            _ => return None,
        }
    }
    let decimals = decimals.unwrap_or(0);
    (count > 0 && decimals <= 3 && raw.last() != Some(&b'.')).then(|| (micros * SCALE[decimals]).min(MAX_MICROS))
}

/// A finite number, as Rust reads it. Plain decimals of up to 15 digits (`12`, `-3.25`),
/// nearly every statsd value, are read directly: their digits and the power of ten are
/// both exact in an `f64`, so one division gives the correctly rounded value.
fn number(raw: &[u8]) -> Option<f64> {
    const POWERS: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    let (negative, digits) = match raw.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, raw),
    };
    let (mut mantissa, mut count, mut point, mut fast) = (0u64, 0usize, None, !digits.is_empty());
    for (i, b) in digits.iter().enumerate() {
        match b {
            b'0'..=b'9' if count < 15 => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                count += 1;
            }
            b'.' if point.is_none() && i + 1 < digits.len() => point = Some(i),
            _ => {
                fast = false;
                break;
            }
        }
    }
    if fast && count > 0 {
        let value = match point {
            Some(p) => mantissa as f64 / POWERS[digits.len() - p - 1],
            None => mantissa as f64,
        };
        return Some(if negative { -value } else { value });
    }
    std::str::from_utf8(raw).ok()?.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Line<'_> {
    fn value(&self) -> Option<SampleValue> {
        let raw = self.raw;
        let number = || number(raw);
        Some(match self.kind {
            b"c" => SampleValue::Count(Some(number()? / self.rate).filter(|v| v.is_finite())?),
            b"g" if raw.starts_with(b"+") || raw.starts_with(b"-") => SampleValue::GaugeDelta(number()?),
            b"g" => SampleValue::Gauge(number()?),
            b"ms" | b"h" | b"d" => SampleValue::Timing(number().filter(|v| *v >= 0.0)?, 1.0 / self.rate),
            b"s" if !raw.is_empty() => SampleValue::SetMember(std::str::from_utf8(raw).ok()?.to_string()),
            _ => return None,
        })
    }
}

/// The key of a metric with tags: `name` alone, or `name;k=v,k2` with tags sorted by
/// key (the last of a repeated key wins). Tags that come sorted are written into
/// `scratch` without any other allocation.
pub fn key_of<'a>(name: &'a str, tags: Option<&str>, scratch: &'a mut String) -> &'a str {
    let Some(list) = tags.filter(|t| t.split(',').any(|t| !t.is_empty())) else { return name };
    scratch.clear();
    scratch.push_str(name);
    let mut previous: Option<&str> = None;
    let mut sorted = true;
    for tag in list.split(',').filter(|t| !t.is_empty()) {
        let (k, v) = tag.split_once(':').unwrap_or((tag, ""));
        if previous.is_some_and(|p| p >= k) {
            sorted = false;
            break;
        }
        previous = Some(k);
        scratch.push(if scratch.len() == name.len() { ';' } else { ',' });
        scratch.push_str(k);
        if !v.is_empty() {
            scratch.push('=');
            scratch.push_str(v);
        }
    }
    if !sorted {
        let tags: BTreeMap<&str, &str> =
            list.split(',').filter(|t| !t.is_empty()).map(|tag| tag.split_once(':').unwrap_or((tag, ""))).collect();
        scratch.truncate(name.len());
        for (i, (k, v)) in tags.iter().enumerate() {
            scratch.push(if i == 0 { ';' } else { ',' });
            scratch.push_str(k);
            if !v.is_empty() {
                scratch.push('=');
                scratch.push_str(v);
            }
        }
    }
    scratch
}

/// Parses one statsd line: `name:value|type[|@rate][|#tag:value,...]`.
pub fn parse_line(line: &str) -> Option<Sample> {
    let parsed = split_line(line.trim())?;
    let value = parsed.value()?;
    let mut scratch = String::new();
    Some(Sample { key: key_of(parsed.name, parsed.tags, &mut scratch).to_string(), value })
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

/// A window's samples of one timer: kept as they are while few, then a histogram.
enum Timer {
    Few(Vec<u64>),
    Many(Histogram<u64>),
}

impl Timer {
    fn record(&mut self, micros: u64, times: u64) {
        match self {
            Timer::Few(values) if values.len() as u64 + times <= FEW_SAMPLES as u64 => {
                values.extend(std::iter::repeat_n(micros, times as usize));
            }
            Timer::Few(values) => {
                let mut h = new_histogram();
                for v in values.drain(..) {
                    let _ = h.record(v);
                }
                let _ = h.record_n(micros, times);
                *self = Timer::Many(h);
            }
            Timer::Many(h) => {
                let _ = h.record_n(micros, times);
            }
        }
    }

    fn encode(&self) -> String {
        match self {
            Timer::Few(values) => {
                let mut h = new_histogram();
                for v in values {
                    let _ = h.record(*v);
                }
                encode_histogram(&h)
            }
            Timer::Many(h) => encode_histogram(h),
        }
    }
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

/// A window's values by key, hashed once per line (`entry_ref`).
type Map<V> = hashbrown::HashMap<Box<str>, V, rustc_hash::FxBuildHasher>;

/// Aggregates a node's metrics into windows, keeping at most `max_series` series in one.
pub struct Aggregator {
    counters: Map<f64>,
    /// Each gauge's value, and whether it was set in this window (only those are sent).
    gauges: Map<(f64, bool)>,
    /// Gauges set in this window.
    gauges_set: usize,
    /// Each set's members ([`member_hash`]).
    sets: Map<HashSet<u64, rustc_hash::FxBuildHasher>>,
    /// Members of all sets in this window.
    set_members: usize,
    timers: Map<Timer>,
    buckets: BTreeMap<String, Buckets>,
    exponential: BTreeMap<String, Exponential>,
    lines: u64,
    malformed: u64,
    scratch: String,
    max_series: usize,
    overflow: Overflow,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SERIES)
    }
}

/// The slot of `key` in `map`, inserted with `new` when missing; allocates only then.
fn slot<'m, V>(map: &'m mut Map<V>, key: &str, new: impl FnOnce() -> V) -> &'m mut V {
    map.entry_ref(key).or_insert_with(new)
}

/// Adds `v` to `slot` unless the sum would not be a finite number.
fn add_finite(slot: &mut f64, v: f64) -> bool {
    let sum = *slot + v;
    sum.is_finite() && {
        *slot = sum;
        true
    }
}

impl Aggregator {
    /// An aggregator keeping at most `max_series` series in a window (and as many gauges).
    pub fn new(max_series: usize) -> Self {
        Self {
            counters: Map::default(),
            gauges: Map::default(),
            gauges_set: 0,
            sets: Map::default(),
            set_members: 0,
            timers: Map::default(),
            buckets: BTreeMap::new(),
            exponential: BTreeMap::new(),
            lines: 0,
            malformed: 0,
            scratch: String::new(),
            max_series,
            overflow: Overflow::default(),
        }
    }

    /// Series in the window so far.
    fn series(&self) -> usize {
        self.counters.len() + self.gauges_set + self.sets.len() + self.timers.len() + self.buckets.len() + self.exponential.len()
    }

    /// Whether a series not yet in the window may start; if not, its `n` samples are counted as overflow.
    fn room_for(&mut self, key: &str, n: u64) -> bool {
        if self.series() < self.max_series {
            return true;
        }
        self.overflow.count(key, n);
        false
    }

    /// Takes a datagram: several newline-separated statsd lines (invalid UTF-8 is replaced).
    pub fn take_bytes(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.take(text),
            Err(_) => self.take(&String::from_utf8_lossy(bytes)),
        }
    }

    /// Takes a packet or a TCP line: several newline-separated statsd lines.
    pub fn take(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', bytes).chain([bytes.len()]) {
            // `\n` is a character of its own: both ends are character boundaries.
            let line = text.get(start..end).unwrap_or_default().trim_ascii();
            start = end + 1;
            if line.is_empty() {
                continue;
            }
            if line.len() <= MAX_LINE && self.take_line(line) {
                self.lines += 1;
            } else {
                self.malformed += 1;
            }
        }
    }

    fn take_line(&mut self, line: &str) -> bool {
        let Some(parsed) = split_line(line) else { return false };
        let mut scratch = std::mem::take(&mut self.scratch);
        let key = key_of(parsed.name, parsed.tags, &mut scratch);
        let value = || number(parsed.raw);
        let taken = match parsed.kind {
            [b'c'] => value()
                .map(|v| if parsed.rate == 1.0 { v } else { v / parsed.rate })
                .is_some_and(|v| v.is_finite() && self.add_count(key, v)),
            [b'g'] => match value() {
                Some(v) if matches!(parsed.raw.first(), Some(b'+' | b'-')) => self.add_gauge(key, v),
                Some(v) => {
                    self.set_gauge(key, v);
                    true
                }
                None => false,
            },
            [b'm', b's'] | [b'h'] | [b'd'] => {
                let micros = exact_micros(parsed.raw)
                    .or_else(|| value().filter(|v| *v >= 0.0).map(|ms| ((ms * 1000.0).round() as u64).min(MAX_MICROS)));
                match micros {
                    Some(micros) => {
                        let times = if parsed.rate == 1.0 { 1 } else { (1.0 / parsed.rate).round().max(1.0) as u64 };
                        if self.timers.contains_key(key) || self.room_for(key, times) {
                            slot(&mut self.timers, key, || Timer::Few(Vec::new())).record(micros, times);
                        }
                        true
                    }
                    None => false,
                }
            }
            [b's'] => match std::str::from_utf8(parsed.raw) {
                Ok(member) if !member.is_empty() => {
                    if !self.sets.contains_key(key) && !self.room_for(key, 1) {
                        self.scratch = scratch;
                        return true;
                    }
                    let full = self.set_members >= MAX_SET_MEMBERS_PER_WINDOW;
                    let members = slot(&mut self.sets, key, HashSet::default);
                    let hash = member_hash(member);
                    if !members.contains(&hash) {
                        if full || members.len() >= MAX_SET_MEMBERS {
                            self.overflow.count(key, 1);
                        } else {
                            members.insert(hash);
                            self.set_members += 1;
                        }
                    }
                    true
                }
                _ => false,
            },
            _ => false,
        };
        self.scratch = scratch;
        taken
    }

    /// Adds to a counter; refused (false) if it would go beyond what a number can hold.
    pub fn add_count(&mut self, key: &str, v: f64) -> bool {
        if !self.counters.contains_key(key) && !self.room_for(key, 1) {
            return v.is_finite();
        }
        add_finite(slot(&mut self.counters, key, || 0.0), v)
    }

    /// The slot of gauge `key`, marked as set in this window; `None` (counted as overflow)
    /// when the window or the gauges kept are full.
    fn gauge(&mut self, key: &str) -> Option<&mut f64> {
        match self.gauges.get(key).map(|(_, set)| *set) {
            Some(true) => {}
            Some(false) if !self.room_for(key, 1) => return None,
            Some(false) => {}
            None if self.gauges.len() >= self.max_series => {
                self.overflow.count(key, 1);
                return None;
            }
            None if !self.room_for(key, 1) => return None,
            None => {}
        }
        let (value, set) = slot(&mut self.gauges, key, || (0.0, false));
        if !*set {
            *set = true;
            self.gauges_set += 1;
        }
        Some(value)
    }

    /// Sets a gauge.
    pub fn set_gauge(&mut self, key: &str, v: f64) {
        if let Some(value) = self.gauge(key) {
            *value = v;
        }
    }

    /// Adds to a gauge; refused (false) if it would go beyond what a number can hold.
    pub fn add_gauge(&mut self, key: &str, v: f64) -> bool {
        match self.gauge(key) {
            Some(value) => add_finite(value, v),
            None => v.is_finite(),
        }
    }

    /// Adds an explicit-bucket histogram's values.
    pub fn add_buckets(&mut self, key: &str, h: &Buckets) -> Result<(), Mismatch> {
        h.check()?;
        if !self.buckets.contains_key(key) && !self.room_for(key, h.count) {
            return Ok(());
        }
        self.buckets.entry(key.to_string()).or_default().add(h)
    }

    /// Adds an exponential histogram's values; refused when `h` is not one a sender may give.
    pub fn add_exponential(&mut self, key: &str, h: &Exponential) -> Result<(), Mismatch> {
        h.check()?;
        if !self.exponential.contains_key(key) && !self.room_for(key, h.count) {
            return Ok(());
        }
        self.exponential.entry(key.to_string()).or_default().add(h)
    }

    /// Counts data points taken and refused by another intake than statsd.
    pub fn count(&mut self, taken: u64, refused: u64) {
        self.lines += taken;
        self.malformed += refused;
    }

    /// Closes the window: counters, sets and histograms start again; gauges keep their
    /// value, and the window carries those set in it.
    pub fn flush(&mut self, seq: u64, start_ms: i64, duration_ms: u64) -> Window {
        let owned = |k: Box<str>| String::from(k);
        let mut gauges = BTreeMap::new();
        for (k, (v, set)) in self.gauges.iter_mut().filter(|(_, (_, set))| *set) {
            gauges.insert(k.to_string(), *v);
            *set = false;
        }
        self.gauges_set = 0;
        self.set_members = 0;
        Window {
            seq,
            start_ms,
            duration_ms,
            counters: self.counters.drain().map(|(k, v)| (owned(k), v)).collect(),
            gauges,
            sets: self.sets.drain().map(|(k, v)| (owned(k), v.len() as u64)).collect(),
            timers: self.timers.drain().map(|(k, t)| (owned(k), t.encode())).collect(),
            overflow: std::mem::take(&mut self.overflow).0,
            buckets: std::mem::take(&mut self.buckets),
            exponential: std::mem::take(&mut self.exponential),
            lines: std::mem::take(&mut self.lines),
            malformed: std::mem::take(&mut self.malformed),
            ..Window::default()
        }
    }
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
