//! What a restarted broker does with the runs the database still calls live: a run
//! running or terminating is carried on (its token recorded), a run pending or
//! initializing is swept and initialized again, and one that cannot be carried on
//! ends as lost.

use actix::Addr;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::domain::views::{PlanView, RunState, RunView};
use crate::domain::DomainError;
use crate::pool::Ec2PoolActor;
use crate::store::{plans, runs};

/// What becomes of a run found live at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resumption {
    /// Taken over by a resuming supervisor: its nodes and containers adopted.
    CarryOn,
    /// Swept, then initialized again from the start.
    StartOver,
    /// Running without the token its relays present: it cannot be carried on.
    Unrecorded,
    /// Not live after all.
    Ended,
}

/// What becomes of a run the database calls `state`, whose relays' token was (or was not) recorded.
pub(super) fn resumption(state: RunState, token_recorded: bool) -> Resumption {
    match state {
        RunState::Running | RunState::Terminating if token_recorded => Resumption::CarryOn,
        RunState::Running | RunState::Terminating => Resumption::Unrecorded,
        RunState::Pending | RunState::Initializing => Resumption::StartOver,
        RunState::Completed | RunState::Failed | RunState::Aborted => Resumption::Ended,
    }
}

/// A run found live, read back, with what becomes of it.
pub(super) struct Found {
    pub(super) run: RunView,
    pub(super) plan: PlanView,
    pub(super) recovery: runs::Recovery,
    pub(super) how: Resumption,
}

/// Why a run left live by a previous broker cannot be carried on.
#[derive(Debug, thiserror::Error)]
pub(super) enum ResumeError {
    /// Reading it back failed.
    #[error("reading the run back: {0}")]
    Read(#[from] DomainError),
    /// It was started by a broker that did not record what carrying it on needs.
    #[error("the run was started by a broker that did not record what carrying it on needs")]
    Unrecorded,
    /// It ended while the database was being read.
    #[error("it has ended already")]
    Ended,
    /// Its resources could not be swept before starting over.
    #[error("sweeping the run's resources: {0}")]
    Sweep(#[from] crate::pool::PoolError),
    /// The pool did not answer.
    #[error("the node pool did not answer: {0}")]
    Pool(#[from] actix::MailboxError),
}

/// What is needed to carry on run `id`; a run still pending or initializing is swept first, to start over.
pub(super) async fn carry_on(db: &DatabaseConnection, pool: &Addr<Ec2PoolActor>, id: Uuid) -> Result<Found, ResumeError> {
    let run = runs::get(db, id).await?;
    let plan = plans::get(db, run.plan_id).await?;
    let recovery = runs::recovery(db, id).await?;
    let how = resumption(run.state, recovery.ingest_token.is_some());
    match how {
        Resumption::CarryOn => {}
        Resumption::StartOver => drop(pool.send(crate::pool::CloseRun { run_id: id }).await??),
        Resumption::Unrecorded => return Err(ResumeError::Unrecorded),
        Resumption::Ended => return Err(ResumeError::Ended),
    }
    Ok(Found { run, plan, recovery, how })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_run_is_carried_on_started_over_or_lost_by_its_state() {
        assert_eq!(resumption(RunState::Running, true), Resumption::CarryOn);
        assert_eq!(resumption(RunState::Terminating, true), Resumption::CarryOn);
        assert_eq!(resumption(RunState::Running, false), Resumption::Unrecorded, "its relays' token is unknown");
        assert_eq!(resumption(RunState::Pending, false), Resumption::StartOver);
        assert_eq!(resumption(RunState::Initializing, true), Resumption::StartOver);
        for ended in [RunState::Completed, RunState::Failed, RunState::Aborted] {
            assert_eq!(resumption(ended, true), Resumption::Ended, "{ended:?}");
        }
    }
}
