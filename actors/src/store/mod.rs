//! The only code that speaks SQL: sea-orm entities and the queries the actors use.
//!
//! Functions take a connection and return read models from `domain::views`,
//! so callers never see rows. They answer `DomainError`s: what a query finds
//! (not found, a conflict), or the database's own failure (`StoreError`).

pub mod entities;
pub mod plans;
pub mod projects;
pub mod runs;

use std::time::Duration;

use loads_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, SqlErr};

use crate::domain::{ConflictCode, DomainError, Env, Reach};

/// The database failed: the only error this module makes. What a query finds
/// (nothing there, a name taken) is a [`DomainError`], which this converts into.
#[derive(Debug, thiserror::Error)]
#[error("database error: {0}")]
pub struct StoreError(#[from] pub DbErr);

impl StoreError {
    /// Whether the database could not be reached at all, or a query was cut short
    /// (trying again may succeed), or the query itself failed.
    pub fn reach(&self) -> Reach {
        if matches!(self.0, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) {
            return Reach::Unreachable;
        }
        let text = self.0.to_string();
        // SQLite's "database is locked" (SQLITE_BUSY, and BUSY_SNAPSHOT when another writer committed
        // after a transaction's first read) passes once the other writer is done.
        let interrupted = [
            "Io(",
            "connection",
            "Connection",
            "PoolTimedOut",
            "PoolClosed",
            "terminating connection",
            "the database system is",
            "database is locked",
        ]
        .iter()
        .any(|needle| text.contains(needle));
        if interrupted {
            Reach::Interrupted
        } else {
            Reach::Failed
        }
    }
}

impl From<StoreError> for DomainError {
    fn from(err: StoreError) -> Self {
        Self::Store { reach: err.reach(), source: Box::new(err) }
    }
}

impl From<DbErr> for DomainError {
    fn from(err: DbErr) -> Self {
        StoreError(err).into()
    }
}

/// How long a state write keeps trying while the database is away.
const PERSIST_FOR: Duration = Duration::from_secs(120);

/// Runs a write, trying again every half second while the database cannot be
/// reached (up to two minutes), so a brief outage (a restart) loses no state.
pub async fn persist<T, F, Fut>(what: &str, mut write: F) -> Result<T, DomainError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DomainError>>,
{
    let deadline = tokio::time::Instant::now() + PERSIST_FOR;
    let mut warned = false;
    loop {
        match write().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(error = %e, "the database is not answering; {what} is tried again until it does");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// Maps a unique-constraint violation to a conflict with `message`; other errors pass through.
pub(crate) fn on_unique(err: DbErr, code: ConflictCode, message: impl FnOnce() -> String) -> DomainError {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => DomainError::conflict(code, message()),
        _ => err.into(),
    }
}

/// Adds `mode=rwc` to a SQLite URL so the file is created when missing.
fn with_create_mode(url: &str) -> String {
    if !url.starts_with("sqlite:") || url.contains("mode=") || url.contains(":memory:") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}

/// Connects to `url` (SQLite or PostgreSQL) and applies every pending migration.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(with_create_mode(url));
    options
        .max_connections(if url.starts_with("sqlite:") { 4 } else { 16 })
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if url.starts_with("sqlite:") && !url.contains(":memory:") {
        // WAL lets readers proceed while a writer commits; it persists in the file.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Answers whether the database responds.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.ping().await
}

pub(crate) fn env_to_json(env: &Env) -> serde_json::Value {
    serde_json::Value::Object(env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect())
}

/// A run's env as stored: its variables, and `null` for each one given as not set.
pub(crate) fn run_env_to_json(env: &Env, unset: &[String]) -> serde_json::Value {
    let mut value = env_to_json(env);
    if let serde_json::Value::Object(map) = &mut value {
        for key in unset.iter().filter(|k| !env.contains_key(*k)) {
            map.insert(key.clone(), serde_json::Value::Null);
        }
    }
    value
}

/// The variables of a stored env; `null` entries (not set) are left out.
/// A map stored as JSON text; an empty one is stored as NULL.
pub(crate) fn map_to_text<K: serde::Serialize, V: serde::Serialize>(map: &std::collections::BTreeMap<K, V>) -> Option<String> {
    (!map.is_empty()).then(|| serde_json::to_string(map).unwrap_or_default())
}

/// A map stored by `map_to_text`; NULL (or text that no longer reads) is an empty one.
pub(crate) fn map_from_text<K: serde::de::DeserializeOwned + Ord, V: serde::de::DeserializeOwned>(
    text: Option<&str>,
) -> std::collections::BTreeMap<K, V> {
    text.and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default()
}

pub(crate) fn env_from_json(value: &serde_json::Value) -> Env {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect(),
        _ => Env::new(),
    }
}

/// The names a stored env records as given but not set.
pub(crate) fn unset_from_json(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::Object(map) => map.iter().filter(|(_, v)| v.is_null()).map(|(k, _)| k.clone()).collect(),
        _ => Vec::new(),
    }
}

/// Clamps paging parameters to what the store serves.
pub(crate) fn clamp_page(limit: u64, offset: u64) -> (u64, u64) {
    (limit.clamp(1, 1000), offset)
}
