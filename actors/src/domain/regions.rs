//! Where a step's machines run: one region, or several, each with a share of
//! the step's nodes.
//!
//! A plan writes `instance_region` as a region name, a list of names (equal
//! shares) or a map of names to percentages summing to 100. Nodes are split by
//! largest remainder: each region gets the whole part of its share of the
//! count, and the nodes left over go one each to the regions with the largest
//! fractional parts (ties to the region written first; a map's regions are in
//! alphabetical order).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most regions one step may spread over.
pub const MAX_REGIONS: usize = 10;

/// A step's regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Regions {
    /// Every node in one region.
    One(String),
    /// Equal shares, in the order written.
    Equal(Vec<String>),
    /// Percentages summing to 100, by region.
    Shares(BTreeMap<String, u32>),
}

/// How a plan may write them (`serde`'s form).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Written {
    One(String),
    Equal(Vec<String>),
    Shares(BTreeMap<String, u32>),
}

impl Regions {
    /// One region.
    pub fn one(name: impl Into<String>) -> Self {
        Self::One(name.into())
    }

    /// Each region and its weight, in split order.
    fn weights(&self) -> Vec<(&str, u64)> {
        match self {
            Self::One(r) => vec![(r.as_str(), 1)],
            Self::Equal(names) => names.iter().map(|r| (r.as_str(), 1)).collect(),
            Self::Shares(shares) => shares.iter().map(|(r, p)| (r.as_str(), u64::from(*p))).collect(),
        }
    }

    /// The region names, in split order.
    pub fn names(&self) -> Vec<String> {
        self.weights().into_iter().map(|(r, _)| r.to_string()).collect()
    }

    /// The first region (where a step's single-region figures go).
    pub fn first(&self) -> String {
        self.names().into_iter().next().unwrap_or_default()
    }

    /// Whether the nodes spread over more than one region.
    pub fn is_several(&self) -> bool {
        self.weights().len() > 1
    }

    /// How many of `count` nodes each region gets, by largest remainder; regions given
    /// none are left out.
    pub fn split(&self, count: u32) -> Vec<(String, u32)> {
        let weights = self.weights();
        let total: u64 = weights.iter().map(|(_, w)| w).sum::<u64>().max(1);
        let count = u64::from(count);
        let mut parts: Vec<(usize, u64, u64)> =
            weights.iter().enumerate().map(|(i, (_, w))| (i, count * w / total, count * w % total)).collect();
        let mut left = count - parts.iter().map(|(_, whole, _)| whole).sum::<u64>();
        let mut by_remainder: Vec<usize> = (0..parts.len()).collect();
        by_remainder.sort_by(|a, b| parts[*b].2.cmp(&parts[*a].2).then(a.cmp(b)));
        for i in by_remainder {
            if left == 0 {
                break;
            }
            parts[i].1 += 1;
            left -= 1;
        }
        parts
            .into_iter()
            .filter(|(_, n, _)| *n > 0)
            .map(|(i, n, _)| (weights[i].0.to_string(), u32::try_from(n).unwrap_or(u32::MAX)))
            .collect()
    }

    /// As stored: the name alone for one region, else the JSON the plan wrote.
    pub fn to_text(&self) -> String {
        match self {
            Self::One(r) => r.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        }
    }

    /// Back from `to_text`.
    pub fn from_text(text: &str) -> Self {
        if text.starts_with(['[', '{']) {
            if let Ok(regions) = serde_json::from_str(text) {
                return regions;
            }
        }
        Self::One(text.to_string())
    }
}

impl fmt::Display for Regions {
    /// `us-east-1`, or `us-east-1 60%, eu-west-1 40%`, or `us-east-1, eu-west-1` (equal shares).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(r) => f.write_str(r),
            Self::Equal(names) => f.write_str(&names.join(", ")),
            Self::Shares(shares) => {
                let parts: Vec<String> = shares.iter().map(|(r, p)| format!("{r} {p}%")).collect();
                f.write_str(&parts.join(", "))
            }
        }
    }
}

impl Serialize for Regions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::One(r) => Written::One(r.clone()),
            Self::Equal(names) => Written::Equal(names.clone()),
            Self::Shares(shares) => Written::Shares(shares.clone()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Regions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Written::deserialize(d)? {
            Written::One(r) => Self::One(r),
            Written::Equal(names) => Self::Equal(names),
            Written::Shares(shares) => Self::Shares(shares),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(pairs: &[(&str, u32)]) -> Regions {
        Regions::Shares(pairs.iter().map(|(r, p)| (r.to_string(), *p)).collect())
    }

    fn split(regions: &Regions, count: u32) -> Vec<(String, u32)> {
        regions.split(count)
    }

    fn nodes(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    }

    #[test]
    fn nodes_are_split_by_largest_remainder() {
        let sixty_forty = shares(&[("us-east-1", 60), ("eu-west-1", 40)]);
        assert_eq!(split(&sixty_forty, 5), nodes(&[("eu-west-1", 2), ("us-east-1", 3)]));
        // 0.6 and 0.4 of one node: the larger remainder gets it.
        assert_eq!(split(&sixty_forty, 1), nodes(&[("us-east-1", 1)]));
        // 4.2 and 2.8: the whole parts, then the 0.8 remainder.
        assert_eq!(split(&sixty_forty, 7), nodes(&[("eu-west-1", 3), ("us-east-1", 4)]));
        let thirds = Regions::Equal(vec!["c".into(), "a".into(), "b".into()]);
        // Equal remainders: the regions written first get the leftover nodes.
        assert_eq!(split(&thirds, 4), nodes(&[("c", 2), ("a", 1), ("b", 1)]));
        assert_eq!(split(&thirds, 2), nodes(&[("c", 1), ("a", 1)]));
        assert_eq!(split(&Regions::one("us-west-2"), 3), nodes(&[("us-west-2", 3)]));
        for count in 0..50 {
            let total: u32 = shares(&[("a", 33), ("b", 33), ("c", 34)]).split(count).iter().map(|(_, n)| n).sum();
            assert_eq!(total, count);
        }
    }

    #[test]
    fn regions_round_trip_through_their_stored_text_and_json() {
        for regions in [Regions::one("us-west-2"), Regions::Equal(vec!["b".into(), "a".into()]), shares(&[("a", 60), ("b", 40)])] {
            assert_eq!(Regions::from_text(&regions.to_text()), regions);
            let json = serde_json::to_value(&regions).unwrap();
            assert_eq!(serde_json::from_value::<Regions>(json).unwrap(), regions);
        }
        assert_eq!(Regions::one("us-west-2").to_text(), "us-west-2");
        assert_eq!(shares(&[("us-east-1", 60), ("eu-west-1", 40)]).to_string(), "eu-west-1 40%, us-east-1 60%");
    }
}
