//! Statsd lines parsed from bytes: a sample's name, tags, value, type and rate, and the
//! key its series is kept under.

use std::collections::BTreeMap;

use super::MAX_MICROS;

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
pub(super) struct Line<'a> {
    pub(super) name: &'a str,
    pub(super) raw: &'a [u8],
    pub(super) kind: &'a [u8],
    pub(super) rate: f64,
    pub(super) tags: Option<&'a str>,
}

/// Splits `name:value|type[|@rate][|#tag:value,...]`; `None` when malformed. The
/// name's end is found with `memchr`'s vector search, not byte by byte.
pub(super) fn split_line(text: &str) -> Option<Line<'_>> {
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
pub(super) fn exact_micros(raw: &[u8]) -> Option<u64> {
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
pub(super) fn number(raw: &[u8]) -> Option<f64> {
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
