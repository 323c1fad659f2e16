//! Bounds on how many series a window and a step may hold. A generator that
//! puts a request id in a metric name makes a new series per request; each
//! costs a histogram on the relay and on the broker, so past a cap new series
//! are not kept: their samples are counted under the name's pattern (the name
//! with its numbers and ids as `*`), which says what went wrong and how much.

use std::collections::BTreeMap;

/// Distinct series a relay keeps in one window by default (`LOADS_MAX_SERIES`).
pub const DEFAULT_MAX_SERIES: usize = 2000;

/// Patterns an overflow count keeps; the samples of any further pattern are counted under [`OTHER`].
pub const MAX_PATTERNS: usize = 100;

/// The pattern samples of patterns past [`MAX_PATTERNS`] are counted under.
pub const OTHER: &str = "(other patterns)";

/// Longest pattern kept; a longer one is cut at a character boundary.
const MAX_PATTERN_LEN: usize = 200;

/// Whether a word of a name is an id: all digits, or hexadecimal of four or more
/// characters with a digit among them (`8f3a2b`, the parts of a UUID).
fn is_id(word: &str) -> bool {
    let digits = word.bytes().any(|b| b.is_ascii_digit());
    digits && (word.bytes().all(|b| b.is_ascii_digit()) || (word.len() >= 4 && word.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// The pattern of a series key (`name` or `name;k=v,k2=v2`): the name with each id word
/// as `*`, and each tag's value as `*` (`req.8f3a2b1c.lat;user=42` is `req.*.lat;user=*`).
pub fn pattern_of(key: &str) -> String {
    let (name, tags) = key.split_once(';').unwrap_or((key, ""));
    let mut out = String::with_capacity(key.len().min(MAX_PATTERN_LEN));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(if is_id(word) { "*" } else { word });
        word.clear();
    };
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    if !tags.is_empty() {
        out.push(';');
        let keys: Vec<&str> = tags.split(',').map(|t| t.split_once('=').map_or(t, |(k, _)| k)).collect();
        out.push_str(&keys.iter().map(|k| format!("{k}=*")).collect::<Vec<_>>().join(","));
    }
    if out.len() > MAX_PATTERN_LEN {
        let mut end = MAX_PATTERN_LEN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// Samples not kept because their series came past a cap, by pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overflow(pub BTreeMap<String, u64>);

impl Overflow {
    /// Counts `n` samples of `key`'s pattern.
    pub fn count(&mut self, key: &str, n: u64) {
        self.add_pattern(pattern_of(key), n);
    }

    /// Counts `n` samples under `pattern`, or under [`OTHER`] once [`MAX_PATTERNS`] are kept.
    pub fn add_pattern(&mut self, pattern: String, n: u64) {
        let pattern = if self.0.contains_key(&pattern) || self.0.len() < MAX_PATTERNS { pattern } else { OTHER.to_string() };
        let slot = self.0.entry(pattern).or_default();
        *slot = slot.saturating_add(n);
    }

    /// Adds another count of overflows (a window's) into this one.
    pub fn add(&mut self, other: &BTreeMap<String, u64>) {
        for (pattern, n) in other.iter().take(MAX_PATTERNS + 1) {
            self.add_pattern(pattern.chars().take(MAX_PATTERN_LEN).collect(), *n);
        }
    }

    /// Samples counted in all.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0, |a, n| a.saturating_add(*n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tag_values_become_stars() {
        assert_eq!(pattern_of("req.8f3a2b1c.lat"), "req.*.lat");
        assert_eq!(pattern_of("user_12345.login"), "user_*.login");
        assert_eq!(pattern_of("GET /orders/3f2c9a10-77b1-4c2e-9d3a-0a1b2c3d4e5f"), "GET /orders/*-*-*-*-*");
        assert_eq!(pattern_of("http2.p99.latency"), "http2.p99.latency", "words that are not ids stay");
        assert_eq!(pattern_of("lat;id=991,zone=a"), "lat;id=*,zone=*");
        assert_eq!(pattern_of(&"é".repeat(300)).len(), 200);
    }

    #[test]
    fn patterns_are_bounded_and_the_rest_counted_together() {
        let mut overflow = Overflow::default();
        for i in 0..(MAX_PATTERNS + 50) {
            overflow.count(&format!("name{}x.{i}", "y".repeat(i)), 2);
        }
        assert_eq!(overflow.0.len(), MAX_PATTERNS + 1);
        assert_eq!(overflow.0[OTHER], 100);
        assert_eq!(overflow.total(), 2 * (MAX_PATTERNS as u64 + 50));
    }
}
