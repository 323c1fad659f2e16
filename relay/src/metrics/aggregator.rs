//! A node's aggregator: every sample of a flush window taken into counters, gauges,
//! sets, timers and histograms, within the series caps, and the window it sends.

use std::collections::{BTreeMap, HashSet};

use hdrhistogram::Histogram;

use super::parse::{exact_micros, key_of, number, split_line};
use super::{
    encode_histogram, member_hash, new_histogram, Window, FEW_SAMPLES, MAX_LINE, MAX_MICROS, MAX_SET_MEMBERS, MAX_SET_MEMBERS_PER_WINDOW,
};
use crate::cardinality::{Overflow, DEFAULT_MAX_SERIES};
use crate::histogram::{Buckets, Exponential, Mismatch};

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
