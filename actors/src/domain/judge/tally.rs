//! What a threshold reads: a tally of the samples it selects (counters summed,
//! timers' and OpenTelemetry histograms merged, gauges per node), and a watch that
//! keeps one tally for the run so far or a sliding window of them, shared by every
//! threshold that selects the same samples over the same window.

use std::borrow::Cow;
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use loads_relay::histogram::{Buckets, Exponential};

use crate::domain::metrics::{decode_histogram, encode_histogram, new_histogram, Window};
use crate::domain::thresholds::{Aggregation, MetricKey, Selector};

/// What one threshold has seen of its metric (or, for a ratio, of its two counters).
#[derive(Clone, Debug, Default)]
pub(super) struct Tally {
    /// Counter sum (a ratio's numerator).
    pub(super) count: f64,
    /// A ratio's denominator.
    pub(super) denominator: f64,
    /// Whether a selected counter was seen.
    pub(super) counted: bool,
    /// Selected timers, merged.
    pub(super) timer: Option<Histogram<u64>>,
    /// Selected OpenTelemetry exponential histograms, merged.
    pub(super) exponential: Option<Exponential>,
    /// Selected OpenTelemetry explicit-bucket histograms, merged.
    pub(super) buckets: Option<Buckets>,
    /// Each node's last value of each selected gauge (`node|key`).
    pub(super) gauges: BTreeMap<String, f64>,
    /// The smallest and largest gauge value seen.
    pub(super) gauge_range: Option<(f64, f64)>,
}

/// A tally as saved with the run's metrics, for a restarted broker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct SavedTally {
    pub(super) count: f64,
    pub(super) denominator: f64,
    pub(super) counted: bool,
    pub(super) timer: Option<String>,
    #[serde(default)]
    pub(super) exponential: Option<Exponential>,
    #[serde(default)]
    pub(super) buckets: Option<Buckets>,
    pub(super) gauges: BTreeMap<String, f64>,
    pub(super) gauge_range: Option<(f64, f64)>,
}

/// What one of `unit` is in a threshold's terms: durations in milliseconds, as timers; the rest as they are.
pub(super) fn in_threshold_unit(unit: &str) -> f64 {
    match unit {
        "ns" => 1e-6,
        "us" => 1e-3,
        "s" => 1e3,
        "min" => 6e4,
        "h" => 3.6e6,
        _ => 1.0,
    }
}

/// An OpenTelemetry histogram as a threshold reads it, in the threshold's unit.
pub(super) struct Otel {
    pub(super) count: u64,
    pub(super) sum: f64,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
    pub(super) quantile: Box<dyn Fn(f64) -> Option<f64>>,
}

impl Tally {
    pub(super) fn add_counters(&mut self, selector: &Selector, w: &Window, denominator: bool) {
        for v in w.counters.iter().filter(|(k, _)| selector.matches_key(k)).map(|(_, v)| v) {
            if denominator {
                self.denominator += v;
            } else {
                self.count += v;
                self.counted = true;
            }
        }
    }

    pub(super) fn add(&mut self, selector: &Selector, w: &Window) {
        self.add_counters(selector, w, false);
        for encoded in w.timers.iter().filter(|(k, _)| selector.matches_key(k)).map(|(_, v)| v) {
            if let Some(h) = decode_histogram(encoded) {
                let _ = self.timer.get_or_insert_with(new_histogram).add(&h);
            }
        }
        for h in w.exponential.iter().filter(|(k, _)| selector.matches_key(k)).map(|(_, h)| h) {
            let _ = self.exponential.get_or_insert_with(Exponential::default).add(h);
        }
        for h in w.buckets.iter().filter(|(k, _)| selector.matches_key(k)).map(|(_, h)| h) {
            // Histograms of another set of bounds cannot be merged: the first seen is judged.
            let _ = self.buckets.get_or_insert_with(Buckets::default).add(h);
        }
        for (key, v) in w.gauges.iter().filter(|(k, _)| selector.matches_key(k)) {
            self.gauges.insert(format!("{}|{key}", w.node), *v);
            let (lo, hi) = self.gauge_range.unwrap_or((*v, *v));
            self.gauge_range = Some((lo.min(*v), hi.max(*v)));
        }
    }

    /// Adds `part`'s counts and histograms (not its gauges: see `merge_gauges`).
    pub(super) fn absorb(&mut self, part: &Tally) {
        self.count += part.count;
        self.denominator += part.denominator;
        self.counted |= part.counted;
        if let Some(h) = &part.timer {
            let _ = self.timer.get_or_insert_with(new_histogram).add(h);
        }
        if let Some(h) = &part.exponential {
            let _ = self.exponential.get_or_insert_with(Exponential::default).add(h);
        }
        if let Some(h) = &part.buckets {
            let _ = self.buckets.get_or_insert_with(Buckets::default).add(h);
        }
    }

    /// Takes `other` (an older bucket) back out of a running window.
    pub(super) fn subtract(&mut self, other: &Tally) {
        self.count -= other.count;
        self.denominator -= other.denominator;
        if let (Some(mine), Some(theirs)) = (&mut self.timer, &other.timer) {
            let _ = mine.subtract(theirs);
        }
        if let (Some(mine), Some(theirs)) = (&mut self.exponential, &other.exponential) {
            if let Some(rest) = mine.since(theirs) {
                *mine = rest;
            }
        }
        if let (Some(mine), Some(theirs)) = (&mut self.buckets, &other.buckets) {
            if let Some(rest) = mine.since(theirs) {
                *mine = rest;
            }
        }
    }

    /// The selected OpenTelemetry histogram with values (an exponential one first).
    pub(super) fn otel(&self) -> Option<Otel> {
        if let Some(h) = self.exponential.clone().filter(|h| h.count > 0) {
            let k = in_threshold_unit(&h.unit);
            let (count, sum, min, max) = (h.count, h.sum * k, h.min.map(|v| v * k), h.max.map(|v| v * k));
            return Some(Otel { count, sum, min, max, quantile: Box::new(move |q| h.quantile(q).map(|v| v * k)) });
        }
        let h = self.buckets.clone().filter(|h| h.count > 0)?;
        let k = in_threshold_unit(&h.unit);
        let (count, sum, min, max) = (h.count, h.sum * k, h.min.map(|v| v * k), h.max.map(|v| v * k));
        Some(Otel { count, sum, min, max, quantile: Box::new(move |q| h.quantile(q).map(|v| v * k)) })
    }

    pub(super) fn merge_gauges(&mut self, other: &Tally) {
        self.gauges.extend(other.gauges.iter().map(|(k, v)| (k.clone(), *v)));
        if let Some((lo, hi)) = other.gauge_range {
            let (a, b) = self.gauge_range.unwrap_or((lo, hi));
            self.gauge_range = Some((a.min(lo), b.max(hi)));
        }
    }

    pub(super) fn saved(&self) -> SavedTally {
        SavedTally {
            count: self.count,
            denominator: self.denominator,
            counted: self.counted,
            timer: self.timer.as_ref().map(encode_histogram),
            exponential: self.exponential.clone(),
            buckets: self.buckets.clone(),
            gauges: self.gauges.clone(),
            gauge_range: self.gauge_range,
        }
    }

    pub(super) fn restored(s: SavedTally) -> Self {
        Self {
            count: s.count,
            denominator: s.denominator,
            counted: s.counted,
            timer: s.timer.as_deref().and_then(decode_histogram),
            exponential: s.exponential,
            buckets: s.buckets,
            gauges: s.gauges,
            gauge_range: s.gauge_range,
        }
    }

    /// The aggregation's value over `seconds`, or why there is none.
    pub(super) fn value(&self, metric: &MetricKey, aggregation: Aggregation, seconds: f64) -> Result<f64, String> {
        let name = metric.selectors()[0].name.clone();
        if let MetricKey::Ratio(_, below) = metric {
            return if self.denominator > 0.0 {
                Ok(self.count / self.denominator)
            } else {
                Err(format!("no samples of {} yet (the ratio's denominator)", below.name))
            };
        }
        let timer = self.timer.as_ref().filter(|h| !h.is_empty());
        let otel = if timer.is_none() { self.otel() } else { None };
        let ms = |v: u64| v as f64 / 1000.0;
        let not_a_timer = || {
            if self.counted {
                format!("{name} is a counter: {} applies to timers and histograms (use count or rate)", aggregation.text())
            } else {
                format!("no samples of {name}")
            }
        };
        let quantile = |q: f64| match (timer, &otel) {
            (Some(h), _) => Some(ms(h.value_at_quantile(q))),
            (None, Some(o)) => (o.quantile)(q),
            _ => None,
        };
        match aggregation {
            Aggregation::Percentile(p) => quantile(p / 100.0).ok_or_else(not_a_timer),
            Aggregation::Med => quantile(0.5).ok_or_else(not_a_timer),
            Aggregation::Avg => match (timer, &otel) {
                (Some(h), _) => Ok(h.mean() / 1000.0),
                (None, Some(o)) => Ok(o.sum / o.count as f64),
                _ => Err(not_a_timer()),
            },
            Aggregation::Min => match (timer, otel.as_ref().and_then(|o| o.min.or_else(|| (o.quantile)(0.0))), self.gauge_range) {
                (Some(h), _, _) => Ok(ms(h.min())),
                (None, Some(min), _) => Ok(min),
                (None, None, Some((lo, _))) => Ok(lo),
                _ => Err(not_a_timer()),
            },
            Aggregation::Max => match (timer, otel.as_ref().and_then(|o| o.max.or_else(|| (o.quantile)(1.0))), self.gauge_range) {
                (Some(h), _, _) => Ok(ms(h.max())),
                (None, Some(max), _) => Ok(max),
                (None, None, Some((_, hi))) => Ok(hi),
                _ => Err(not_a_timer()),
            },
            Aggregation::Count => Ok(self.total()),
            Aggregation::Rate if seconds > 0.0 => Ok(self.total() / seconds),
            Aggregation::Rate => Err("no window of metrics yet".into()),
            Aggregation::Value if !self.gauges.is_empty() => Ok(self.gauges.values().sum()),
            Aggregation::Value if self.counted => {
                Err(format!("{name} is a counter: value applies to gauges and ratios (use count or rate)"))
            }
            Aggregation::Value => Err(format!("no samples of {name}")),
        }
    }

    /// A counter's sum, else a timer's samples, else a histogram's values.
    pub(super) fn total(&self) -> f64 {
        if self.counted {
            self.count
        } else if let Some(h) = self.timer.as_ref().filter(|h| !h.is_empty()) {
            h.len() as f64
        } else {
            self.otel().map_or(0.0, |o| o.count as f64)
        }
    }
}

/// What the thresholds that select the same samples over the same window share:
/// the tallies, kept once however many thresholds read them.
#[derive(Clone, Debug)]
pub(super) struct Watch {
    pub(super) metric: MetricKey,
    /// A sliding window: its length and its buckets' width, in milliseconds.
    pub(super) window: Option<(i64, i64)>,
    /// Everything so far.
    pub(super) total: Tally,
    /// A sliding window's buckets, by start, and their running sum.
    pub(super) buckets: BTreeMap<i64, Tally>,
    pub(super) running: Tally,
    /// The selected steps' time with metrics: first window start, last window end.
    pub(super) span: Option<(i64, i64)>,
}

/// Buckets a sliding window keeps at most: a bucket is a second, or a 60th of a
/// longer window, so an hour's window holds 60 tallies, not 3600.
pub(super) const WINDOW_BUCKETS: i64 = 60;

impl Watch {
    pub(super) fn new(metric: MetricKey, window_ms: Option<u64>) -> Self {
        let window = window_ms.map(|ms| {
            let ms = i64::try_from(ms).unwrap_or(i64::MAX);
            (ms, (ms / WINDOW_BUCKETS / 1000 * 1000).max(1000))
        });
        Self { metric, window, total: Tally::default(), buckets: BTreeMap::new(), running: Tally::default(), span: None }
    }

    /// The tally to judge at `latest`, and the seconds it covers: everything so far, or
    /// the window ending at `latest` (its expired buckets dropped first).
    pub(super) fn current(&mut self, latest: i64) -> (Cow<'_, Tally>, f64) {
        let Some((window_ms, _)) = self.window else {
            let seconds = self.span.map_or(0.0, |(a, b)| (b - a) as f64 / 1000.0);
            return (Cow::Borrowed(&self.total), seconds);
        };
        let cutoff = latest.saturating_sub(window_ms);
        let expired: Vec<i64> = self.buckets.range(..cutoff).map(|(k, _)| *k).collect();
        for key in expired {
            if let Some(old) = self.buckets.remove(&key) {
                self.running.subtract(&old);
            }
        }
        let mut tally = self.running.clone();
        tally.gauges.clear();
        tally.gauge_range = None;
        for bucket in self.buckets.values() {
            tally.merge_gauges(bucket);
        }
        let from = self.buckets.keys().next().copied().unwrap_or(cutoff).max(cutoff);
        let covered = self.span.map_or(0, |(a, _)| latest - a.max(from));
        (Cow::Owned(tally), covered.max(0) as f64 / 1000.0)
    }

    pub(super) fn saved(&self) -> SavedWatch {
        SavedWatch { total: self.total.saved(), buckets: self.buckets.iter().map(|(k, t)| (*k, t.saved())).collect(), span: self.span }
    }

    pub(super) fn restore(&mut self, saved: SavedWatch) {
        self.total = Tally::restored(saved.total);
        self.buckets = saved.buckets.into_iter().map(|(k, t)| (k, Tally::restored(t))).collect();
        self.running = Tally::default();
        for bucket in self.buckets.values() {
            self.running.absorb(bucket);
        }
        self.span = saved.span;
    }
}

/// A watch as saved with the run's metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct SavedWatch {
    pub(super) total: SavedTally,
    pub(super) buckets: BTreeMap<i64, SavedTally>,
    pub(super) span: Option<(i64, i64)>,
}
