//! Which delivered windows a step takes. A relay that gets no answer in time
//! delivers its pending windows again, and anything holding a run's token can
//! post windows, so each window is identified by its node, the relay that made
//! it (its start time, `epoch`) and its number (`seq`), taken once, and only
//! from a node the step was granted and dated within the run.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How far a window's start may lie before the run began or after the broker's
/// now: nodes' clocks differ from the broker's, and relays start while a step
/// is still being prepared.
pub const CLOCK_MARGIN_MS: i64 = 10 * 60 * 1000;

/// Numbers above the lowest missing one a relay remembers; past this the oldest
/// gap is given up (a window that late counts as a duplicate).
const MAX_AHEAD: usize = 4096;

/// Relays of one node remembered at once (a relay restarted on its node starts a new one).
const MAX_RELAYS: usize = 4;

/// The windows of one relay already taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    /// Every window numbered below this was taken.
    below: u64,
    /// Windows numbered `below` or more that were taken.
    ahead: BTreeSet<u64>,
}

impl Taken {
    /// Records window `seq`; false when it was taken before.
    fn first(&mut self, seq: u64) -> bool {
        if seq < self.below || !self.ahead.insert(seq) {
            return false;
        }
        while self.ahead.remove(&self.below) {
            self.below += 1;
        }
        if self.ahead.len() > MAX_AHEAD {
            // Gaps this old are windows the relay dropped: give up waiting for them.
            if let Some(lowest) = self.ahead.pop_first() {
                self.below = lowest + 1;
                while self.ahead.remove(&self.below) {
                    self.below += 1;
                }
            }
        }
        true
    }
}

/// The windows of one node already taken, by relay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWindows {
    relays: BTreeMap<u64, Taken>,
}

impl NodeWindows {
    /// Records window `seq` of relay `epoch`; false when it was taken before (or belongs
    /// to a relay older than every one remembered).
    pub fn first(&mut self, epoch: u64, seq: u64) -> bool {
        if !self.relays.contains_key(&epoch) && self.relays.len() >= MAX_RELAYS {
            if self.relays.keys().next().is_some_and(|oldest| epoch < *oldest) {
                return false;
            }
            self.relays.pop_first();
        }
        self.relays.entry(epoch).or_default().first(seq)
    }
}

/// Why a window was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It was taken before: a retry, harmless.
    Duplicate,
    /// Its node is not one the step was granted.
    UnknownNode,
    /// It starts outside the run's time.
    OutOfTime,
}

/// Whether a window starting at `start_ms` lies within a run that began at
/// `since_ms`, the broker's clock reading `now_ms`.
pub fn within_run(start_ms: i64, since_ms: i64, now_ms: i64) -> bool {
    start_ms >= since_ms.saturating_sub(CLOCK_MARGIN_MS) && start_ms <= now_ms.saturating_add(CLOCK_MARGIN_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_is_taken_once_whatever_the_order() {
        let mut node = NodeWindows::default();
        for seq in [1, 2, 4, 3] {
            assert!(node.first(7, seq), "window {seq}");
        }
        for seq in [1, 2, 3, 4] {
            assert!(!node.first(7, seq), "window {seq} again");
        }
        assert!(node.first(7, 6));
        assert!(node.first(7, 5), "a gap is filled once");
        assert!(!node.first(7, 5));
        assert!(node.first(8, 1), "a restarted relay numbers from 1 again");
    }

    #[test]
    fn memory_stays_bounded_when_windows_never_arrive() {
        let mut node = NodeWindows::default();
        // Every other window is lost: the gaps are given up, not kept for ever.
        for seq in (1..=40_000).step_by(2) {
            assert!(node.first(1, seq));
        }
        let taken = &node.relays[&1];
        assert!(taken.ahead.len() <= MAX_AHEAD + 1, "{} remembered", taken.ahead.len());
        assert!(!node.first(1, 39_999), "still a duplicate");
        // Relays come and go: only the newest few are remembered.
        for epoch in 2..20 {
            node.first(epoch, 1);
        }
        assert_eq!(node.relays.len(), MAX_RELAYS);
        assert!(!node.first(1, 1), "a relay older than every one remembered is refused");
    }

    #[test]
    fn a_window_must_start_within_the_run() {
        let (since, now) = (1_000_000_000_000, 1_000_000_600_000);
        assert!(within_run(since, since, now));
        assert!(within_run(since - CLOCK_MARGIN_MS, since, now));
        assert!(!within_run(since - CLOCK_MARGIN_MS - 1, since, now));
        assert!(!within_run(now + CLOCK_MARGIN_MS + 1, since, now), "a start ahead of the broker's clock");
        assert!(!within_run(-1, since, now), "before 1970");
        assert!(!within_run(i64::MAX, since, now));
        assert!(within_run(0, i64::MIN, i64::MAX), "no overflow at the extremes");
    }
}
