//! Masking of secret values in what nodes send: a secret a container writes
//! into a metric's name or tags never leaves the node.

use std::fmt;

/// What a secret's value is replaced with in output.
pub const MASK: &str = "********";

/// Replaces known secret values in text: the values of 4 characters or longer
/// (shorter ones would mask everything), longest first.
#[derive(Clone, Default)]
pub struct Masker(Vec<String>);

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Masker({} values)", self.0.len())
    }
}

impl Masker {
    /// A masker of `values`.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.len() >= 4).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self(values)
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every value replaced by `MASK`; borrowed when there is nothing to mask.
    pub fn mask<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        for value in &self.0 {
            if out.contains(value.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(value.as_str(), MASK));
            }
        }
        out
    }
}
