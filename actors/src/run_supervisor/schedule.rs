//! The supervisor's decisions about its steps, as plain functions of what it knows:
//! what a step recorded before a restart means now, when steps carried on start, and
//! where the steps stand for the run to close.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::life::{wait_until, StepOutcome};
use crate::domain::views::StepState;

/// What a step's state recorded before a restart means now: a final state is kept as its
/// outcome (its actor is not started again); any other state is carried on.
pub(super) fn carried_outcome(state: StepState) -> Option<StepOutcome> {
    match state {
        StepState::Completed => Some(StepOutcome::Completed),
        StepState::Skipped => Some(StepOutcome::Skipped),
        StepState::Failed => Some(StepOutcome::Failed("failed before the broker restarted".into())),
        StepState::Pending | StepState::Running | StepState::Stopping => None,
    }
}

/// Of a run carried on, the steps that had not started (`(id, recorded state, run_delay)`),
/// each with how long until it starts: the run's recorded start plus its delay.
pub(super) fn resumed_starts(
    steps: impl IntoIterator<Item = (Uuid, StepState, u64)>,
    started_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<(Uuid, Duration)> {
    let mut starts: Vec<_> = steps
        .into_iter()
        .filter(|(_, state, _)| *state == StepState::Pending)
        .map(|(id, _, delay)| (id, wait_until(started_at, delay, now)))
        .collect();
    starts.sort_by_key(|(_, wait)| *wait);
    starts
}

/// Where a run's steps stand for it to close.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Standing {
    /// No step but the services has a container running: the services may stop.
    pub(super) others_done: bool,
    /// Every step is over.
    pub(super) all_done: bool,
}

/// Where the run's live steps (`(service, stopped)` of each step not over) stand.
pub(super) fn standing(live: impl IntoIterator<Item = (bool, bool)>) -> Standing {
    let mut standing = Standing { others_done: true, all_done: true };
    for (service, stopped) in live {
        standing.all_done = false;
        standing.others_done &= service || stopped;
    }
    standing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_ended_before_a_restart_keeps_its_outcome_and_a_live_one_is_carried_on() {
        assert_eq!(carried_outcome(StepState::Completed), Some(StepOutcome::Completed));
        assert_eq!(carried_outcome(StepState::Skipped), Some(StepOutcome::Skipped));
        assert!(matches!(carried_outcome(StepState::Failed), Some(StepOutcome::Failed(_))));
        for live in [StepState::Pending, StepState::Running, StepState::Stopping] {
            assert_eq!(carried_outcome(live), None, "{live:?} is carried on");
        }
    }

    #[test]
    fn steps_not_started_before_a_restart_start_at_the_recorded_start_plus_their_delay() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let now = start + chrono::Duration::seconds(20);
        let (a, b, c, d) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let steps = [(a, StepState::Pending, 60), (b, StepState::Pending, 5), (c, StepState::Running, 0), (d, StepState::Completed, 90)];
        let starts = resumed_starts(steps, start, now);
        assert_eq!(starts, vec![(b, Duration::ZERO), (a, Duration::from_secs(40))], "overdue at once, the other on time, no started step");
    }

    #[test]
    fn services_stop_once_every_other_step_has_stopped_and_the_run_closes_once_all_are_over() {
        assert_eq!(standing([]), Standing { others_done: true, all_done: true });
        assert_eq!(standing([(true, false)]), Standing { others_done: true, all_done: false }, "only a service runs");
        assert_eq!(standing([(true, false), (false, false)]), Standing { others_done: false, all_done: false });
        assert_eq!(standing([(true, false), (false, true)]), Standing { others_done: true, all_done: false }, "a generator tearing down");
    }
}
