//! The histograms OpenTelemetry sends, kept as they are sent so that merging
//! them loses nothing: explicit-bucket histograms add bucket by bucket, and
//! exponential histograms add at the coarser of their two scales.
//!
//! Their percentiles say how exact they are. An explicit-bucket percentile is
//! the upper bound of the bucket its rank falls in (the true value is at most
//! that, and above the bucket's lower bound). An exponential percentile is a
//! point inside its bucket, `(base^i, base^(i+1)]` with `base = 2^(2^-scale)`,
//! chosen so that the relative error is at most `(base - 1) / (base + 1)`
//! (0.27 % at scale 8, 2.7 % at scale 5).

use serde::{Deserialize, Serialize};

/// Buckets an exponential histogram keeps at most on each side; past this it is
/// downscaled, and a sender's point with more is refused.
const MAX_EXPONENTIAL_BUCKETS: usize = 4096;

/// Bounds an explicit-bucket histogram may have at most.
const MAX_EXPLICIT_BOUNDS: usize = 4096;

/// Checks that a histogram's sum and extremes are finite numbers (JSON carries no other).
fn finite(sum: f64, min: Option<f64>, max: Option<f64>) -> Result<(), Mismatch> {
    if sum.is_finite() && min.is_none_or(f64::is_finite) && max.is_none_or(f64::is_finite) {
        Ok(())
    } else {
        Err(Mismatch("the sum, min and max must be finite numbers".into()))
    }
}

/// An explicit-bucket histogram: `counts[i]` values in `(bounds[i-1], bounds[i]]`, the last bucket above every bound.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// The unit the sender gave (`ms`, `s`, `By`…), empty when none.
    #[serde(default)]
    pub unit: String,
    /// The buckets' upper bounds, increasing.
    pub bounds: Vec<f64>,
    /// Values per bucket: one more than the bounds.
    pub counts: Vec<u64>,
    /// Values in all.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The smallest, when the sender measured it.
    #[serde(default)]
    pub min: Option<f64>,
    /// The largest, when the sender measured it.
    #[serde(default)]
    pub max: Option<f64>,
}

/// Why two histograms cannot be added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch(pub String);

fn min_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl Buckets {
    /// Checks what a sender gave: increasing finite bounds, one count per bucket, a total that adds up.
    pub fn check(&self) -> Result<(), Mismatch> {
        if self.bounds.len() > MAX_EXPLICIT_BOUNDS {
            return Err(Mismatch(format!("{} bounds (at most {MAX_EXPLICIT_BOUNDS})", self.bounds.len())));
        }
        finite(self.sum, self.min, self.max)?;
        if self.counts.len() != self.bounds.len() + 1 {
            return Err(Mismatch(format!("{} bucket counts for {} bounds (needs one more)", self.counts.len(), self.bounds.len())));
        }
        if self.bounds.iter().any(|b| !b.is_finite()) || self.bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Mismatch("bounds must be finite and increasing".into()));
        }
        if self.counts.iter().try_fold(0u64, |a, c| a.checked_add(*c)) != Some(self.count) {
            return Err(Mismatch("the bucket counts do not add up to the count".into()));
        }
        Ok(())
    }

    /// Adds `other`, which must pass [`check`](Self::check) and have the same bounds.
    pub fn add(&mut self, other: &Buckets) -> Result<(), Mismatch> {
        other.check()?;
        if self.counts.is_empty() {
            *self = other.clone();
            return Ok(());
        }
        if self.bounds != other.bounds {
            return Err(Mismatch(format!("bounds {:?} differ from the {:?} seen first", other.bounds, self.bounds)));
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum = (self.sum + other.sum).clamp(f64::MIN, f64::MAX);
        self.min = min_of(self.min, other.min);
        self.max = max_of(self.max, other.max);
        Ok(())
    }

    /// `self - earlier`, for a cumulative stream; `None` when `earlier` is not a prefix of it (a reset).
    pub fn since(&self, earlier: &Buckets) -> Option<Buckets> {
        if self.bounds != earlier.bounds || self.count < earlier.count {
            return None;
        }
        let counts: Option<Vec<u64>> = self.counts.iter().zip(&earlier.counts).map(|(a, b)| a.checked_sub(*b)).collect();
        Some(Buckets {
            unit: self.unit.clone(),
            bounds: self.bounds.clone(),
            counts: counts?,
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
            // The stream's extremes so far bound the increase's values; merged with the
            // earlier points' they are the stream's own (a percentile is clamped to them).
            min: self.min,
            max: self.max,
        })
    }

    /// The upper bound of the bucket the `q` quantile falls in; the largest value (when known)
    /// for the last bucket, which has no bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let rank = rank_of(q, self.count)?;
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                let bound = self.bounds.get(i).copied().or(self.max).or(self.bounds.last().copied());
                return bound.map(|b| self.max.map_or(b, |m| b.min(m)));
            }
        }
        None
    }
}

fn rank_of(q: f64, count: u64) -> Option<u64> {
    (count > 0).then(|| ((q * count as f64).ceil() as u64).clamp(1, count))
}

/// One side of an exponential histogram: `counts[k]` values in bucket `offset + k`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExpBuckets {
    /// The index of the first bucket.
    pub offset: i32,
    /// Values per bucket from `offset`.
    pub counts: Vec<u64>,
}

/// The bucket indexes at `scale` that can hold a finite value, give or take one:
/// bucket `i` holds `(2^(i·2^-scale), 2^((i+1)·2^-scale)]`, and doubles lie between
/// the smallest subnormal (2^-1074) and 2^1024.
fn index_range(scale: i32) -> (i64, i64) {
    if scale >= 0 {
        (-1075 << scale, (1024 << scale) - 1)
    } else {
        (-1075 >> -scale, 1024 >> -scale)
    }
}

impl ExpBuckets {
    /// One past the last bucket's index.
    fn end(&self) -> i64 {
        i64::from(self.offset) + self.counts.len() as i64
    }

    /// Checks a side a sender gave at `scale`: at most `MAX_EXPONENTIAL_BUCKETS`
    /// buckets, every one of them able to hold a finite value.
    fn check(&self, scale: i32, side: &str) -> Result<(), Mismatch> {
        if self.counts.is_empty() {
            return Ok(());
        }
        if self.counts.len() > MAX_EXPONENTIAL_BUCKETS {
            return Err(Mismatch(format!("{} {side} buckets (at most {MAX_EXPONENTIAL_BUCKETS})", self.counts.len())));
        }
        let (lowest, highest) = index_range(scale);
        if i64::from(self.offset) < lowest || self.end() - 1 > highest {
            return Err(Mismatch(format!(
                "{side} buckets {}..{} hold no finite value at scale {scale} (indexes {lowest}..={highest})",
                self.offset,
                self.end()
            )));
        }
        Ok(())
    }

    fn downscale(&self, by: u32) -> ExpBuckets {
        if by == 0 || self.counts.is_empty() {
            return self.clone();
        }
        let by = by.min(62);
        let first = i64::from(self.offset) >> by;
        let last = (self.end() - 1) >> by;
        // Never more buckets than before: each index moves towards zero.
        let mut counts = vec![0u64; usize::try_from(last - first + 1).unwrap_or(0).min(self.counts.len())];
        for (k, c) in self.counts.iter().enumerate() {
            let index = (i64::from(self.offset) + k as i64) >> by;
            if let Some(slot) = usize::try_from(index - first).ok().and_then(|at| counts.get_mut(at)) {
                *slot = slot.saturating_add(*c);
            }
        }
        ExpBuckets { offset: i32::try_from(first).unwrap_or(self.offset), counts }
    }

    /// How many buckets `self` and `other` span together.
    fn span_with(&self, other: &ExpBuckets) -> u64 {
        match (self.counts.is_empty(), other.counts.is_empty()) {
            (true, _) => other.counts.len() as u64,
            (_, true) => self.counts.len() as u64,
            _ => {
                let first = i64::from(self.offset.min(other.offset));
                u64::try_from(self.end().max(other.end()) - first).unwrap_or(u64::MAX)
            }
        }
    }

    /// Adds `other`; the caller has checked that the two span at most `MAX_EXPONENTIAL_BUCKETS`.
    fn add(&mut self, other: &ExpBuckets) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        let first = self.offset.min(other.offset);
        let span = usize::try_from(self.span_with(other)).unwrap_or(0).min(MAX_EXPONENTIAL_BUCKETS);
        let mut counts = vec![0u64; span];
        for side in [&*self, other] {
            let from = usize::try_from(i64::from(side.offset) - i64::from(first)).unwrap_or(0);
            for (slot, c) in counts.iter_mut().skip(from).zip(&side.counts) {
                *slot = slot.saturating_add(*c);
            }
        }
        *self = ExpBuckets { offset: first, counts };
    }

    #[cfg(test)]
    fn span(&self) -> usize {
        self.counts.len()
    }

    fn total(&self) -> Option<u64> {
        self.counts.iter().try_fold(0u64, |a, c| a.checked_add(*c))
    }

    /// `self - earlier` bucket by bucket; `None` if any would go below zero.
    fn since(&self, earlier: &ExpBuckets) -> Option<ExpBuckets> {
        let mut out = self.clone();
        for (k, c) in earlier.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let at = usize::try_from(i64::from(earlier.offset) + k as i64 - i64::from(self.offset)).ok()?;
            let slot = out.counts.get_mut(at)?;
            *slot = slot.checked_sub(*c)?;
        }
        Some(out)
    }
}

/// An exponential histogram (base-2 exponential buckets at `scale`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Exponential {
    /// The unit the sender gave, empty when none.
    #[serde(default)]
    pub unit: String,
    /// Resolution: `base = 2^(2^-scale)`.
    pub scale: i32,
    /// Values at zero (within the sender's zero threshold).
    pub zero_count: u64,
    /// Values above zero.
    pub positive: ExpBuckets,
    /// Values below zero (bucket `i` holds `-(base^(i+1))..-(base^i)`).
    pub negative: ExpBuckets,
    /// Values in all.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The smallest, when measured.
    #[serde(default)]
    pub min: Option<f64>,
    /// The largest, when measured.
    #[serde(default)]
    pub max: Option<f64>,
}

impl Exponential {
    /// Checks what a sender gave: a scale OpenTelemetry allows, buckets that hold finite
    /// values and are not too many, finite sum and extremes, and counts that add up.
    pub fn check(&self) -> Result<(), Mismatch> {
        if !(-10..=20).contains(&self.scale) {
            return Err(Mismatch(format!("scale {} is outside -10..=20", self.scale)));
        }
        self.positive.check(self.scale, "positive")?;
        self.negative.check(self.scale, "negative")?;
        finite(self.sum, self.min, self.max)?;
        let total = self.positive.total().zip(self.negative.total()).and_then(|(p, n)| self.zero_count.checked_add(p)?.checked_add(n));
        if total != Some(self.count) {
            return Err(Mismatch("the bucket counts do not add up to the count".into()));
        }
        Ok(())
    }

    /// The same values at a coarser `scale` (exact: each bucket falls whole into one).
    pub fn at_scale(&self, scale: i32) -> Exponential {
        let by = u32::try_from(self.scale - scale).unwrap_or(0);
        Exponential {
            scale: self.scale.min(scale),
            positive: self.positive.downscale(by),
            negative: self.negative.downscale(by),
            ..self.clone()
        }
    }

    /// Adds `other` at the coarser of the two scales (coarser still if the buckets would
    /// exceed the limit); refused, changing nothing, when `other` does not pass [`check`](Self::check).
    pub fn add(&mut self, other: &Exponential) -> Result<(), Mismatch> {
        other.check()?;
        if self.count == 0 && self.positive.counts.is_empty() && self.negative.counts.is_empty() {
            let unit = std::mem::take(&mut self.unit);
            *self = other.clone();
            if self.unit.is_empty() {
                self.unit = unit;
            }
            return Ok(());
        }
        // Checked buckets hold finite values, so at scale 0 every side spans at most
        // 2099 buckets: the loop ends there at the latest. Spans are measured before
        // anything is allocated.
        let mut scale = self.scale.min(other.scale);
        let (mut mine, mut theirs) = (self.at_scale(scale), other.at_scale(scale));
        let fits = |a: &Exponential, b: &Exponential| {
            a.positive.span_with(&b.positive).max(a.negative.span_with(&b.negative)) <= MAX_EXPONENTIAL_BUCKETS as u64
        };
        while !fits(&mine, &theirs) && scale > -10 {
            scale -= 1;
            mine = mine.at_scale(scale);
            theirs = theirs.at_scale(scale);
        }
        let mut merged = mine;
        merged.positive.add(&theirs.positive);
        merged.negative.add(&theirs.negative);
        merged.zero_count = merged.zero_count.saturating_add(theirs.zero_count);
        merged.count = merged.count.saturating_add(theirs.count);
        merged.sum = (merged.sum + theirs.sum).clamp(f64::MIN, f64::MAX);
        merged.min = min_of(merged.min, theirs.min);
        merged.max = max_of(merged.max, theirs.max);
        *self = merged;
        Ok(())
    }

    /// `self - earlier`, for a cumulative stream; `None` on a reset.
    pub fn since(&self, earlier: &Exponential) -> Option<Exponential> {
        if earlier.scale < self.scale || earlier.count > self.count || earlier.zero_count > self.zero_count {
            return None;
        }
        let earlier = earlier.at_scale(self.scale);
        Some(Exponential {
            unit: self.unit.clone(),
            scale: self.scale,
            zero_count: self.zero_count - earlier.zero_count,
            positive: self.positive.since(&earlier.positive)?,
            negative: self.negative.since(&earlier.negative)?,
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
            // The stream's extremes so far bound the increase's values; merged with the
            // earlier points' they are the stream's own (a percentile is clamped to them).
            min: self.min,
            max: self.max,
        })
    }

    /// The bucket base, `2^(2^-scale)`.
    pub fn base(&self) -> f64 {
        2f64.powf(2f64.powi(-self.scale))
    }

    /// The largest relative error of a quantile at this scale: `(base - 1) / (base + 1)`.
    pub fn relative_error(&self) -> f64 {
        let base = self.base();
        if base.is_finite() {
            (base - 1.0) / (base + 1.0)
        } else {
            1.0
        }
    }

    /// The `q` quantile: the point of its bucket whose relative error is at most
    /// [`relative_error`](Self::relative_error), kept within the measured min and max.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let rank = rank_of(q, self.count)?;
        let width = 2f64.powi(-self.scale);
        // The point of (lo, hi] no further than (base-1)/(base+1) from any value in it,
        // 2·lo·hi/(lo+hi), written so that bounds beyond what a double holds give the largest.
        let point = |index: i64| {
            let lo = (index as f64 * width).exp2();
            let hi = ((index + 1) as f64 * width).exp2();
            (2.0 / (1.0 / lo + 1.0 / hi)).min(f64::MAX)
        };
        let clamp = |v: f64| {
            let v = self.max.map_or(v, |m| v.min(m));
            self.min.map_or(v, |m| v.max(m))
        };
        let mut seen = 0u64;
        let negative = &self.negative;
        for (k, c) in negative.counts.iter().enumerate().rev() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return Some(clamp(-point(i64::from(negative.offset) + k as i64)));
            }
        }
        seen = seen.saturating_add(self.zero_count);
        if seen >= rank {
            return Some(clamp(0.0));
        }
        for (k, c) in self.positive.counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return Some(clamp(point(i64::from(self.positive.offset) + k as i64)));
            }
        }
        self.max
    }
}

/// What a person reads of an OpenTelemetry histogram, in the metric's own unit, with how
/// exact its percentiles are: the summary, the live feed and InfluxDB all show this.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HistogramStats {
    /// `buckets` (explicit bounds: a percentile is the upper bound of its bucket) or
    /// `exponential` (a percentile within `relative_error` of the true value).
    pub kind: String,
    /// The unit the sender gave, empty when none.
    pub unit: String,
    /// Values.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Their mean.
    pub mean: Option<f64>,
    /// The smallest, when the sender measured it.
    pub min: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// The largest, when the sender measured it.
    pub max: Option<f64>,
    /// For `exponential`: the largest relative error of its percentiles at its scale.
    pub relative_error: Option<f64>,
}

impl HistogramStats {
    fn new(
        kind: &str,
        unit: &str,
        (count, sum): (u64, f64),
        (min, max): (Option<f64>, Option<f64>),
        q: impl Fn(f64) -> Option<f64>,
    ) -> Self {
        Self {
            kind: kind.into(),
            unit: unit.into(),
            count,
            sum,
            mean: (count > 0).then(|| sum / count as f64),
            min,
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            max,
            relative_error: None,
        }
    }

    /// The statistics of an explicit-bucket histogram.
    pub fn of_buckets(h: &Buckets) -> Self {
        Self::new("buckets", &h.unit, (h.count, h.sum), (h.min, h.max), |q| h.quantile(q))
    }

    /// The statistics of an exponential histogram.
    pub fn of_exponential(h: &Exponential) -> Self {
        Self {
            relative_error: Some(h.relative_error()),
            ..Self::new("exponential", &h.unit, (h.count, h.sum), (h.min, h.max), |q| h.quantile(q))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exponential histogram of `values` at `scale`, bucketed as the OpenTelemetry SDKs do.
    fn exponential(values: &[f64], scale: i32) -> Exponential {
        let mut h = Exponential { scale, ..Exponential::default() };
        let base: f64 = 2f64.powf(2f64.powi(-scale));
        for v in values {
            // Bucket i holds (base^i, base^(i+1)].
            let index = (v.ln() / base.ln()).ceil() as i32 - 1;
            let single = Exponential {
                scale,
                positive: ExpBuckets { offset: index, counts: vec![1] },
                count: 1,
                sum: *v,
                min: Some(*v),
                max: Some(*v),
                ..Exponential::default()
            };
            h.add(&single).unwrap();
        }
        h
    }

    #[test]
    fn exponential_quantiles_are_within_the_stated_error_after_merging_scales() {
        let a: Vec<f64> = (1..=1000).map(|i| f64::from(i) * 0.37).collect();
        let b: Vec<f64> = (1..=1000).map(|i| 100.0 + f64::from(i) * 1.3).collect();
        let mut merged = exponential(&a, 8);
        merged.add(&exponential(&b, 6)).unwrap();
        assert_eq!((merged.scale, merged.count), (6, 2000), "merged at the coarser scale");
        let mut all: Vec<f64> = a.iter().chain(&b).copied().collect();
        all.sort_by(f64::total_cmp);
        let error = merged.relative_error();
        assert!((error - 0.00542).abs() < 1e-4, "scale 6: {error}");
        for q in [0.01, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let exact = all[((q * 2000.0_f64).ceil() as usize).max(1) - 1];
            let got = merged.quantile(q).unwrap();
            assert!((got - exact).abs() <= exact * error * (1.0 + 1e-9), "p{q}: {got} vs {exact} (±{error})");
        }
    }

    #[test]
    fn downscaling_keeps_every_count() {
        let h = exponential(&[0.1, 0.2, 3.0, 3.1, 900.0], 10);
        let coarse = h.at_scale(2);
        assert_eq!(coarse.positive.total(), Some(5));
        assert!(coarse.positive.span() < h.positive.span());
    }

    #[test]
    fn explicit_quantiles_are_bucket_bounds_and_mismatched_bounds_are_refused() {
        let bounds = vec![10.0, 50.0, 100.0];
        let mut h = Buckets { bounds: bounds.clone(), counts: vec![5, 80, 10, 5], count: 100, max: Some(250.0), ..Buckets::default() };
        h.check().unwrap();
        assert_eq!(h.quantile(0.5), Some(50.0));
        assert_eq!(h.quantile(0.95), Some(100.0));
        assert_eq!(h.quantile(0.99), Some(250.0), "the last bucket answers the largest value");
        h.add(&h.clone()).unwrap();
        assert_eq!((h.count, h.counts[1]), (200, 160));
        let other = Buckets { bounds: vec![1.0], counts: vec![1, 0], count: 1, ..Buckets::default() };
        assert!(h.add(&other).is_err());
        let later = Buckets { counts: vec![6, 90, 10, 5], count: 111, ..h.clone() };
        let first = Buckets { counts: vec![5, 80, 10, 5], count: 100, ..later.clone() };
        assert_eq!(later.since(&first).unwrap().counts, vec![1, 10, 0, 0]);
        assert!(first.since(&later).is_none(), "a smaller cumulative is a reset");
    }

    fn point(scale: i32, offset: i32, counts: Vec<u64>) -> Exponential {
        let count = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
        Exponential { scale, positive: ExpBuckets { offset, counts }, count, ..Exponential::default() }
    }

    #[test]
    fn points_whose_buckets_hold_no_finite_value_are_refused_and_change_nothing() {
        // Far-apart offsets at scale -10 once asked for two billion buckets; the extremes
        // of an i32 overflowed the index arithmetic.
        for (scale, offset) in [(-10, -2_000_000_000), (-10, i32::MIN), (-10, i32::MAX), (20, i32::MAX), (0, 1024), (0, -1077)] {
            let bad = point(scale, offset, vec![1]);
            assert!(bad.check().is_err(), "scale {scale} offset {offset} passed");
            let mut h = point(scale.max(-10), 0, vec![1]);
            let before = h.clone();
            assert!(h.add(&bad).is_err());
            assert_eq!(h, before, "a refused point changes nothing");
        }
        let too_many = point(0, 0, vec![1; MAX_EXPONENTIAL_BUCKETS + 1]);
        assert!(too_many.check().is_err());
        let infinite = Exponential { sum: f64::INFINITY, ..point(0, 0, vec![1]) };
        assert!(infinite.check().is_err());
        let overflowing = Exponential { count: 0, ..point(0, 0, vec![u64::MAX, 2]) };
        assert!(overflowing.check().is_err(), "counts that overflow do not add up");
        assert!(Buckets { bounds: vec![0.0; MAX_EXPLICIT_BOUNDS + 1], ..Buckets::default() }.check().is_err());
    }

    #[test]
    fn the_widest_valid_points_merge_within_the_bucket_limit() {
        // The lowest and highest buckets that hold doubles at the finest scale: merged,
        // they are downscaled until both fit, never allocated at full width.
        let (lowest, highest) = index_range(20);
        let low = point(20, i32::try_from(lowest).unwrap(), vec![3]);
        let high = point(20, i32::try_from(highest).unwrap(), vec![4]);
        low.check().unwrap();
        high.check().unwrap();
        let mut merged = low.clone();
        merged.add(&high).unwrap();
        assert!(merged.positive.span() <= MAX_EXPONENTIAL_BUCKETS, "{} buckets", merged.positive.span());
        assert_eq!((merged.count, merged.positive.total()), (7, Some(7)));
        assert!(merged.scale <= 0, "merged at scale {}", merged.scale);
        for scale in -10..=20 {
            let (lowest, highest) = index_range(scale);
            let edge = point(scale, i32::try_from(highest).unwrap(), vec![1]);
            let mut h = point(scale, i32::try_from(lowest).unwrap(), vec![1]);
            h.add(&edge).unwrap();
            assert!(h.positive.span() <= MAX_EXPONENTIAL_BUCKETS);
            assert!(h.quantile(1.0).is_some_and(|v| v > 0.0), "scale {scale}");
        }
    }
}
