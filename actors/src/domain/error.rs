//! Validation problems, each tied to the path of the field it concerns, and the
//! one error the actors answer (`DomainError`), with a code per kind.

use std::fmt;

use serde::Serialize;
use utoipa::ToSchema;

/// One problem with one field of a document, e.g. `plans[0].steps[1].run_max_time`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Where the problem is, in `a.b[0].c` notation; empty for the whole document.
    pub path: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a document, reported together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// A single problem.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError::new(path, message)])
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{}", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Why the broker refuses a request or cannot answer it, whichever layer found it:
/// the one error the actors answer, mapped to HTTP in one place (`src/api/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The thing asked for does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// `project`, `plan`, `run`…
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The input is not valid.
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// The request conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// Which conflict.
        code: ConflictCode,
        /// What conflicts and what to do, for a human.
        message: String,
    },
    /// A configured limit refuses the request for now.
    #[error("{message}")]
    Limit {
        /// Which limit.
        code: LimitCode,
        /// Which limit and when to try again, for a human.
        message: String,
    },
    /// The request is well formed but what it asks for is refused.
    #[error("{message}")]
    Refused {
        /// Which refusal.
        code: RefusalCode,
        /// What refuses it and why, for a human.
        message: String,
    },
    /// A part of the broker did not answer (stopped, or starting again).
    #[error("{what} did not answer")]
    Unavailable {
        /// Which part.
        what: &'static str,
    },
    /// The database failed; the cause is kept for the log, never shown to a client.
    #[error("the database failed ({reach:?})")]
    Store {
        /// Whether it could be reached, and whether trying again may help.
        reach: Reach,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How a database failure happened, which decides what a caller does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// It could not be reached at all: the broker answers 503, writes are tried again.
    Unreachable,
    /// A connection broke mid-query, or another writer held a lock: trying again may succeed.
    Interrupted,
    /// The query itself failed.
    Failed,
}

impl DomainError {
    /// A thing that does not exist.
    pub fn not_found(what: &'static str, id: impl ToString) -> Self {
        Self::NotFound { what, id: id.to_string() }
    }

    /// A conflict with the current state.
    pub fn conflict(code: ConflictCode, message: impl Into<String>) -> Self {
        Self::Conflict { code, message: message.into() }
    }

    /// Whether the database could not be reached at all (as opposed to a failed query).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Store { reach: Reach::Unreachable, .. })
    }

    /// Whether trying again may succeed: the database could not be reached, or a connection broke mid-query.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store { reach: Reach::Unreachable | Reach::Interrupted, .. })
    }
}

impl From<ValidationErrors> for DomainError {
    fn from(errors: ValidationErrors) -> Self {
        Self::Invalid(errors)
    }
}

/// The conflicts a request can meet, each with its stable snake_case code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictCode {
    /// A project of that name exists.
    ProjectExists,
    /// The project has a plan of that name.
    PlanExists,
    /// A run is still live, or is not finished where a finished one is needed.
    RunLive,
    /// The plan has runs, so its steps and env can no longer change.
    PlanImmutable,
    /// The plan is disabled.
    PlanDisabled,
    /// The plan has no baseline to compare with.
    NoBaseline,
}

/// The limits that refuse a request for now, each with its stable snake_case code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitCode {
    /// `limits.max_live_runs` live runs already.
    TooManyLiveRuns,
    /// `limits.max_subscribers_per_run` subscribers already.
    TooManySubscribers,
}

/// The refusals of well-formed requests, each with its stable snake_case code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The run's estimate passes a `budget.*` cap.
    OverBudget,
}
