//! Whether the database takes writes, as [`Db::health`](crate::Db::health)
//! reports it to whoever has to act on it (a server's readiness probe, an
//! operator).

use std::fmt;

/// Whether writes are accepted, and if not, whether they will come back by
/// themselves. Reads are served in every state.
///
/// ```
/// use strata_engine::{Db, Health};
/// # let dir = tempfile::tempdir()?;
/// let db = Db::open(dir.path(), Default::default())?;
/// match db.health() {
///     Health::Ok => db.put(b"k", b"v")?,
///     // A full disk, say: the database retries with backoff and takes
///     // writes again once the retry succeeds; shed writes meanwhile.
///     Health::Retrying { reason } => eprintln!("read-only for now: {reason}"),
///     // Needs an operator: writes come back only with a reopen.
///     Health::Fatal { reason } => eprintln!("read-only until reopened: {reason}"),
///     _ => {}
/// }
/// assert_eq!(db.health(), Health::Ok);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Writes are accepted.
    #[default]
    Ok,
    /// A background job failed with a transient error (full disk, no file
    /// descriptors: see [`Error::is_retryable`](crate::Error::is_retryable)).
    /// Writes fail with [`Error::Retrying`](crate::Error::Retrying) until the
    /// database's own retry of the job succeeds.
    Retrying {
        /// The failure of the latest attempt.
        reason: String,
    },
    /// A background job failed with an error that retrying cannot fix.
    /// Writes fail with [`Error::Background`](crate::Error::Background) until
    /// the database is reopened.
    Fatal {
        /// The failure that stopped writes.
        reason: String,
    },
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Ok => f.write_str("ok"),
            Health::Retrying { reason } => write!(f, "retrying: {reason}"),
            Health::Fatal { reason } => write!(f, "fatal: {reason}"),
        }
    }
}
