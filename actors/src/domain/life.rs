//! The lives of a run and of a step, as two state machines.
//!
//! Each is one enum whose variants carry what that state knows (why a run is
//! ending, what a step is stopping for, how many nodes have started), and one
//! table of the moves it may make (`can_become`). `RunSupervisor` and
//! `StepActor` change their state only through their `transition_to`, which
//! asks the table first, then persists the state, then publishes it; so the
//! machines themselves are plain values, tested here pair by pair.
//!
//! ```text
//! run:  Pending → Initializing → Running → Terminating(e) → Closing(e) → Ended(e)
//!       any live state → Terminating(e); Terminating(e) → Terminating(e') when e' outranks e
//! step: Preparing → Ready → Running → Stopping → Finishing(o) → Done(o)
//!       Preparing → Running (carried on after a restart); any state before Finishing → Finishing(o)
//! ```

use super::views::{RunState, StepState};

/// Why a run is ending. A later cause replaces an earlier one only when it
/// outranks it: a user's abort outranks a failure, which outranks a plain finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every step is done, or (service steps) being stopped as planned.
    Finished,
    /// A required step failed; why.
    StepFailed(String),
    /// A threshold with `abort_on_fail` failed; which, its value and when.
    Breached(String),
    /// A user aborted the run.
    Aborted,
    /// The run's recorded cost reached a budget cap; which, and the cost.
    OverBudget(String),
    /// No broker can carry the run on (it was left live by one that stopped); why.
    Lost(String),
}

impl Ending {
    /// What the run's steps are told as the run ends for this cause.
    pub fn stop_reason(&self) -> StopReason {
        match self {
            Ending::Finished => StopReason::ServiceDone,
            Ending::StepFailed(_) => StopReason::RunFailing,
            Ending::Breached(_) => StopReason::Breach,
            Ending::Aborted | Ending::OverBudget(_) | Ending::Lost(_) => StopReason::Abort,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Self::Finished => 0,
            Self::StepFailed(_) | Self::Breached(_) => 1,
            Self::Aborted | Self::OverBudget(_) => 2,
            Self::Lost(_) => 3,
        }
    }

    /// Whether the run is being aborted (by a user or by its budget).
    pub fn is_abort(&self) -> bool {
        matches!(self, Self::Aborted | Self::OverBudget(_))
    }

    /// The state the run ends in.
    pub fn final_state(&self) -> RunState {
        match self {
            Self::Finished => RunState::Completed,
            Self::StepFailed(_) | Self::Breached(_) | Self::Lost(_) => RunState::Failed,
            Self::Aborted | Self::OverBudget(_) => RunState::Aborted,
        }
    }

    /// What kind of ending this is, as stored beside its reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::StepFailed(_) => "step_failed",
            Self::Breached(_) => "breached",
            Self::Aborted => "aborted",
            Self::OverBudget(_) => "over_budget",
            Self::Lost(_) => "lost",
        }
    }

    /// The ending stored as `kind` with `reason`. A row of a broker that stored no kind
    /// is read by its abort flag: aborted with a reason is a budget cap, failed with one a
    /// step's failure (a breach then stops the rest as a failure does).
    pub fn from_stored(kind: Option<&str>, aborted: bool, reason: Option<String>) -> Self {
        let reason_or_none = |reason: Option<String>| reason.unwrap_or_default();
        match (kind, aborted, reason) {
            (Some("finished"), _, _) => Self::Finished,
            (Some("breached"), _, reason) => Self::Breached(reason_or_none(reason)),
            (Some("aborted"), _, _) => Self::Aborted,
            (Some("over_budget"), _, reason) => Self::OverBudget(reason_or_none(reason)),
            (Some("lost"), _, reason) => Self::Lost(reason_or_none(reason)),
            (Some(_), _, reason) => Self::StepFailed(reason_or_none(reason)),
            (None, true, Some(reason)) => Self::OverBudget(reason),
            (None, true, None) => Self::Aborted,
            (None, false, Some(reason)) => Self::StepFailed(reason),
            (None, false, None) => Self::Finished,
        }
    }

    /// Why, for a human (failures and budget aborts only).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::StepFailed(r) | Self::Breached(r) | Self::OverBudget(r) | Self::Lost(r) => Some(r),
            Self::Finished | Self::Aborted => None,
        }
    }
}

/// Where a run is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunPhase {
    /// Recorded, not picked up yet.
    Pending,
    /// Nodes are being acquired and prepared.
    Initializing,
    /// Steps are started and stopped on schedule.
    Running,
    /// What is left is being stopped, for this reason.
    Terminating(Ending),
    /// Every step is over: the metrics are judged and whatever the run left is swept.
    Closing(Ending),
    /// Over.
    Ended(Ending),
}

impl RunPhase {
    /// The state stored and shown for this phase.
    pub fn state(&self) -> RunState {
        match self {
            Self::Pending => RunState::Pending,
            Self::Initializing => RunState::Initializing,
            Self::Running => RunState::Running,
            Self::Terminating(_) | Self::Closing(_) => RunState::Terminating,
            Self::Ended(e) => e.final_state(),
        }
    }

    /// The phase a run stored as `state` (with how it is ending: `ending`'s kind, the abort
    /// flag and the reason) is in. A terminating run is read back as terminating for its
    /// cause, so that a restarted broker ends it the same way; a finished one as ended.
    pub fn from_stored(state: RunState, ending: Option<&str>, aborted: bool, reason: Option<String>) -> Self {
        match state {
            RunState::Pending => Self::Pending,
            RunState::Initializing => Self::Initializing,
            RunState::Running => Self::Running,
            RunState::Terminating => Self::Terminating(Ending::from_stored(ending, aborted, reason)),
            RunState::Completed => Self::Ended(Ending::Finished),
            RunState::Failed | RunState::Aborted => Self::Ended(Ending::from_stored(ending, aborted, reason)),
        }
    }

    /// Why the run is ending, once it is.
    pub fn ending(&self) -> Option<&Ending> {
        match self {
            Self::Terminating(e) | Self::Closing(e) | Self::Ended(e) => Some(e),
            Self::Pending | Self::Initializing | Self::Running => None,
        }
    }

    /// Whether the run still starts and stops steps (it has not begun to end).
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Pending | Self::Initializing | Self::Running)
    }

    /// Whether a run in this phase may move to `next`: forward through its life;
    /// to terminating from any live phase; from terminating to a cause that
    /// outranks the one it has; and closing and ending only for the cause it
    /// terminated with; a run no broker can carry on ends lost from wherever it is.
    /// An ended run changes no more.
    pub fn can_become(&self, next: &RunPhase) -> bool {
        use RunPhase::*;
        match (self, next) {
            (Ended(_), _) => false,
            (_, Ended(Ending::Lost(_))) => true,
            (Pending, Initializing) | (Initializing, Running) => true,
            (Pending | Initializing | Running, Terminating(_)) => true,
            (Terminating(now), Terminating(then)) => then.rank() > now.rank(),
            (Terminating(now), Closing(then)) | (Closing(now), Ended(then)) => now == then,
            _ => false,
        }
    }
}

/// Why a step is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The run was aborted.
    Abort,
    /// Every other step finished; a service step is no longer needed.
    ServiceDone,
    /// A required step failed, so the run is ending.
    RunFailing,
    /// A threshold with `abort_on_fail` failed, so the run is ending.
    Breach,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Ran as planned.
    Completed,
    /// Failed, with why.
    Failed(String),
    /// Never started its containers.
    Skipped,
}

impl StepOutcome {
    /// The state stored for it.
    pub fn state(&self) -> StepState {
        match self {
            Self::Completed => StepState::Completed,
            Self::Failed(_) => StepState::Failed,
            Self::Skipped => StepState::Skipped,
        }
    }
}

/// Where a step is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepPhase {
    /// Getting nodes and images ready. A stop asked for meanwhile, and the first
    /// failure, are kept until preparation returns, so nothing being made is left.
    Preparing {
        /// A stop asked for while preparing.
        stop: Option<StopReason>,
        /// The first failure.
        failure: Option<String>,
    },
    /// Every node is ready; waiting for the start.
    Ready,
    /// Containers are being started and run.
    Running {
        /// Nodes whose start has returned.
        started: usize,
        /// The first failure (the step goes on, or stops, as the failure says).
        failure: Option<String>,
    },
    /// Containers are being stopped.
    Stopping {
        /// The first failure.
        failure: Option<String>,
    },
    /// Nodes are being torn down and released, then the outcome is recorded.
    Finishing(StepOutcome),
    /// Over.
    Done(StepOutcome),
}

impl StepPhase {
    /// A step that has just been made.
    pub fn new() -> Self {
        Self::Preparing { stop: None, failure: None }
    }

    /// The state stored and shown for this phase.
    pub fn state(&self) -> StepState {
        match self {
            Self::Preparing { .. } | Self::Ready => StepState::Pending,
            Self::Running { .. } => StepState::Running,
            Self::Stopping { .. } => StepState::Stopping,
            Self::Finishing(o) | Self::Done(o) => o.state(),
        }
    }

    /// The first failure so far.
    pub fn failure(&self) -> Option<&str> {
        match self {
            Self::Preparing { failure, .. } | Self::Running { failure, .. } | Self::Stopping { failure } => failure.as_deref(),
            Self::Ready | Self::Finishing(_) | Self::Done(_) => None,
        }
    }

    /// Keeps `reason` as the step's failure unless it already has one (the first is the cause).
    pub fn note_failure(&mut self, reason: impl Into<String>) {
        if let Self::Preparing { failure, .. } | Self::Running { failure, .. } | Self::Stopping { failure } = self {
            failure.get_or_insert_with(|| reason.into());
        }
    }

    /// How the step ends if it ends now: failed with its first failure, else completed.
    pub fn outcome(&self) -> StepOutcome {
        match self.failure() {
            Some(reason) => StepOutcome::Failed(reason.to_string()),
            None => StepOutcome::Completed,
        }
    }

    /// Whether a step in this phase may move to `next`: forward through its life
    /// (straight to running when carried on after a restart); a step that never
    /// ran ends failed or skipped, one that ran ends completed or failed; the
    /// outcome it finishes with is the one it is done with. A done step changes no more.
    pub fn can_become(&self, next: &StepPhase) -> bool {
        use StepOutcome::*;
        use StepPhase::*;
        match (self, next) {
            (Preparing { .. }, Ready | Running { .. }) | (Ready, Running { .. }) | (Running { .. }, Stopping { .. }) => true,
            (Preparing { .. }, Finishing(Failed(_) | Skipped)) | (Ready, Finishing(Skipped)) => true,
            (Running { .. } | Stopping { .. }, Finishing(Completed | Failed(_))) => true,
            (Finishing(now), Done(then)) => now == then,
            _ => false,
        }
    }
}

/// The stored life of a step: pending, running, stopping, then one final state; a state
/// may be skipped (a monitor step completes without running, a write that was lost is
/// overtaken) but never gone back to.
impl StepState {
    fn rank(self) -> u8 {
        match self {
            StepState::Pending => 0,
            StepState::Running => 1,
            StepState::Stopping => 2,
            StepState::Completed | StepState::Failed | StepState::Skipped => 3,
        }
    }

    /// Whether a step stored in this state may be stored as `next`.
    pub fn can_become(self, next: StepState) -> bool {
        next.rank() > self.rank()
    }
}

/// How long from `now` until `after_secs` past `start` (nothing when that has passed):
/// when a step carried on starts or stops, counted from what was recorded.
pub fn wait_until(start: chrono::DateTime<chrono::Utc>, after_secs: u64, now: chrono::DateTime<chrono::Utc>) -> std::time::Duration {
    let after = chrono::Duration::seconds(i64::try_from(after_secs).unwrap_or(i64::MAX).min(i64::MAX / 1000));
    match start.checked_add_signed(after) {
        Some(due) => (due - now).to_std().unwrap_or_default(),
        None => std::time::Duration::from_secs(after_secs),
    }
}

impl Default for StepPhase {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_counts_from_the_recorded_start_and_is_never_negative() {
        let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let at = |secs: i64| start + chrono::Duration::seconds(secs);
        assert_eq!(wait_until(start, 30, at(10)), std::time::Duration::from_secs(20));
        assert_eq!(wait_until(start, 30, at(45)), std::time::Duration::ZERO, "overdue: at once");
        assert_eq!(wait_until(start, 0, at(0)), std::time::Duration::ZERO);
        assert!(wait_until(start, u64::MAX, at(0)) > std::time::Duration::from_secs(86_400 * 365), "no overflow");
    }

    #[test]
    fn steps_are_told_why_the_run_ends() {
        assert_eq!(Ending::Finished.stop_reason(), StopReason::ServiceDone);
        assert_eq!(Ending::StepFailed("x".into()).stop_reason(), StopReason::RunFailing);
        assert_eq!(Ending::Breached("x".into()).stop_reason(), StopReason::Breach);
        for abort in [Ending::Aborted, Ending::OverBudget("x".into()), Ending::Lost("x".into())] {
            assert_eq!(abort.stop_reason(), StopReason::Abort, "{abort:?}");
        }
    }

    #[test]
    fn a_stored_step_state_goes_forward_only() {
        use StepState::*;
        let all = [Pending, Running, Stopping, Completed, Failed, Skipped];
        assert!(Pending.can_become(Running) && Running.can_become(Stopping) && Stopping.can_become(Completed));
        assert!(Pending.can_become(Completed), "a monitor step completes without running");
        assert!(Pending.can_become(Stopping), "a lost write of running is overtaken");
        for done in [Completed, Failed, Skipped] {
            assert!(all.iter().all(|next| !done.can_become(*next)), "{done:?} is final");
        }
        assert!(all.iter().all(|s| !s.can_become(*s)), "no state becomes itself");
        assert!(!Stopping.can_become(Running) && !Running.can_become(Pending));
    }

    fn endings() -> Vec<Ending> {
        vec![
            Ending::Finished,
            Ending::StepFailed("s".into()),
            Ending::Breached("t".into()),
            Ending::Aborted,
            Ending::OverBudget("b".into()),
        ]
    }

    fn run_phases() -> Vec<RunPhase> {
        let mut all = vec![RunPhase::Pending, RunPhase::Initializing, RunPhase::Running];
        for e in endings() {
            all.extend([RunPhase::Terminating(e.clone()), RunPhase::Closing(e.clone()), RunPhase::Ended(e)]);
        }
        all
    }

    /// The legal run moves, written out one by one.
    fn legal_run_move(from: &RunPhase, to: &RunPhase) -> bool {
        use Ending::*;
        use RunPhase::*;
        match (from, to) {
            (Pending, Initializing) => true,
            (Initializing, Running) => true,
            (Pending, Terminating(_)) | (Initializing, Terminating(_)) | (Running, Terminating(_)) => true,
            (Terminating(Finished), Terminating(StepFailed(_) | Breached(_) | Aborted | OverBudget(_))) => true,
            (Terminating(StepFailed(_) | Breached(_)), Terminating(Aborted | OverBudget(_))) => true,
            (Terminating(a), Closing(b)) => a == b,
            (Closing(a), Ended(b)) => a == b,
            _ => false,
        }
    }

    #[test]
    fn every_legal_run_move_and_no_other() {
        let all = run_phases();
        let mut legal = 0;
        for from in &all {
            for to in &all {
                let expected = legal_run_move(from, to);
                assert_eq!(from.can_become(to), expected, "{from:?} -> {to:?}");
                legal += usize::from(expected);
            }
        }
        // 2 forward, 3 live × 5 endings to terminating, 4 + 2 × 2 escalations, 5 closings, 5 endings.
        assert_eq!(legal, 2 + 15 + 8 + 5 + 5);
    }

    #[test]
    fn a_run_ends_only_through_terminating_and_closing_and_then_changes_no_more() {
        for from in run_phases() {
            for e in endings() {
                let ended = RunPhase::Ended(e.clone());
                assert_eq!(from.can_become(&ended), from == RunPhase::Closing(e.clone()), "{from:?} -> {ended:?}");
                assert!(run_phases().iter().all(|next| !ended.can_become(next)), "{ended:?} moved");
            }
        }
    }

    #[test]
    fn the_first_failure_is_the_runs_cause_and_only_an_abort_replaces_it() {
        let failing = RunPhase::Terminating(Ending::StepFailed("step \"a\" failed".into()));
        assert!(!failing.can_become(&RunPhase::Terminating(Ending::Breached("later".into()))));
        assert!(!failing.can_become(&RunPhase::Terminating(Ending::StepFailed("another".into()))));
        assert!(!failing.can_become(&RunPhase::Terminating(Ending::Finished)));
        assert!(failing.can_become(&RunPhase::Terminating(Ending::Aborted)));
        assert!(!RunPhase::Terminating(Ending::Aborted).can_become(&failing));
    }

    #[test]
    fn a_run_no_broker_can_carry_on_ends_lost_from_any_phase_but_ended() {
        let lost = RunPhase::Ended(Ending::Lost("gone".into()));
        for from in run_phases() {
            assert_eq!(from.can_become(&lost), !matches!(from, RunPhase::Ended(_)), "{from:?}");
        }
        assert_eq!((lost.state(), lost.ending().and_then(Ending::reason)), (RunState::Failed, Some("gone")));
        assert!(run_phases().iter().all(|next| !lost.can_become(next)));
    }

    #[test]
    fn a_phase_is_read_back_as_it_was_stored() {
        for e in endings().into_iter().chain([Ending::Lost("gone".into())]) {
            for phase in [RunPhase::Terminating(e.clone()), RunPhase::Ended(e.clone())] {
                let reason = phase.ending().and_then(Ending::reason).map(str::to_string);
                assert_eq!(RunPhase::from_stored(phase.state(), Some(e.kind()), e.is_abort(), reason), phase);
            }
        }
        for phase in [RunPhase::Pending, RunPhase::Initializing, RunPhase::Running] {
            assert_eq!(RunPhase::from_stored(phase.state(), None, false, None), phase);
        }
        // A row of a broker that stored no kind is read by its abort flag and reason.
        let old = |aborted, reason: Option<&str>| RunPhase::from_stored(RunState::Terminating, None, aborted, reason.map(str::to_string));
        assert_eq!(old(true, Some("cap")), RunPhase::Terminating(Ending::OverBudget("cap".into())));
        assert_eq!(old(true, None), RunPhase::Terminating(Ending::Aborted));
        assert_eq!(old(false, Some("step \"a\" failed")), RunPhase::Terminating(Ending::StepFailed("step \"a\" failed".into())));
        assert_eq!(old(false, None), RunPhase::Terminating(Ending::Finished));
    }

    #[test]
    fn phases_show_as_the_stored_states() {
        assert_eq!(RunPhase::Closing(Ending::Aborted).state(), RunState::Terminating);
        assert_eq!(RunPhase::Ended(Ending::Finished).state(), RunState::Completed);
        assert_eq!(RunPhase::Ended(Ending::Breached("x".into())).state(), RunState::Failed);
        assert_eq!(RunPhase::Ended(Ending::Aborted).state(), RunState::Aborted);
        assert_eq!(RunPhase::Ended(Ending::StepFailed("why".into())).ending().and_then(Ending::reason), Some("why"));
        // A run its budget stopped is aborted, and says which cap.
        let over = RunPhase::Ended(Ending::OverBudget("budget.max_usd_per_run".into()));
        assert_eq!((over.state(), over.ending().and_then(Ending::reason)), (RunState::Aborted, Some("budget.max_usd_per_run")));
        assert!(RunPhase::Running.is_live() && !RunPhase::Terminating(Ending::Finished).is_live());
    }

    fn outcomes() -> Vec<StepOutcome> {
        vec![StepOutcome::Completed, StepOutcome::Failed("f".into()), StepOutcome::Skipped]
    }

    fn step_phases() -> Vec<StepPhase> {
        let mut all = vec![
            StepPhase::new(),
            StepPhase::Preparing { stop: Some(StopReason::Abort), failure: Some("x".into()) },
            StepPhase::Ready,
            StepPhase::Running { started: 0, failure: None },
            StepPhase::Running { started: 2, failure: Some("y".into()) },
            StepPhase::Stopping { failure: None },
        ];
        for o in outcomes() {
            all.extend([StepPhase::Finishing(o.clone()), StepPhase::Done(o)]);
        }
        all
    }

    fn legal_step_move(from: &StepPhase, to: &StepPhase) -> bool {
        use StepOutcome::*;
        use StepPhase::*;
        match (from, to) {
            (Preparing { .. }, Ready) => true,
            (Preparing { .. }, Running { .. }) => true,
            (Preparing { .. }, Finishing(Failed(_))) | (Preparing { .. }, Finishing(Skipped)) => true,
            (Ready, Running { .. }) => true,
            (Ready, Finishing(Skipped)) => true,
            (Running { .. }, Stopping { .. }) => true,
            (Running { .. }, Finishing(Completed)) | (Running { .. }, Finishing(Failed(_))) => true,
            (Stopping { .. }, Finishing(Completed)) | (Stopping { .. }, Finishing(Failed(_))) => true,
            (Finishing(a), Done(b)) => a == b,
            _ => false,
        }
    }

    #[test]
    fn every_legal_step_move_and_no_other() {
        let all = step_phases();
        for from in &all {
            for to in &all {
                assert_eq!(from.can_become(to), legal_step_move(from, to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn a_step_keeps_its_first_failure_and_ends_with_it() {
        let mut phase = StepPhase::Running { started: 1, failure: None };
        assert_eq!(phase.outcome(), StepOutcome::Completed);
        phase.note_failure("node s0n1: refused");
        phase.note_failure("later");
        assert_eq!(phase.outcome(), StepOutcome::Failed("node s0n1: refused".into()));
        let mut done = StepPhase::Done(StepOutcome::Completed);
        done.note_failure("too late");
        assert_eq!(done.failure(), None, "a done step changes no more");
        assert_eq!(StepPhase::Ready.state(), StepState::Pending);
        assert_eq!(StepPhase::Finishing(StepOutcome::Skipped).state(), StepState::Skipped);
    }
}
