//! The engine's one error type.

use std::path::PathBuf;

/// Every fallible engine call returns this error.
///
/// Corruption always names the file and the byte offset where bad data was
/// found, so an operator can inspect or restore it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes read back from disk are not what was written.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged record or block within `file`.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The caller passed something the engine cannot accept (oversized key, bad option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A background job (WAL append, flush, compaction) failed earlier with an
    /// error that retrying cannot fix; the database refuses writes so that no
    /// acknowledged write can be lost. Reopen the database to recover from the WAL.
    #[error("a background job failed earlier, the database is read-only until reopened: {0}")]
    Background(String),
    /// A background job failed earlier with a transient error (see
    /// [`Error::is_retryable`]): writes are refused, reads go on, and the
    /// database retries the job by itself and takes writes again once it
    /// succeeds, with no reopen. [`Db::health`](crate::Db::health) tells when.
    #[error("writes are suspended until a failed background job succeeds on retry: {0}")]
    Retrying(String),
    /// Another process (or another `Db` in this process) holds the database's lock file.
    #[error("database at {0} is locked by another user")]
    Locked(PathBuf),
}

impl Clone for Error {
    // Group commit hands one failure to every writer of the group; io::Error
    // is not Clone, so the copy keeps its OS error code (which
    // `is_retryable` reads, and whose message is the same) or else its kind
    // and message.
    fn clone(&self) -> Self {
        match self {
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(source.kind(), source.to_string()),
                },
            },
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::Background(m) => Error::Background(m.clone()),
            Error::Retrying(m) => Error::Retrying(m.clone()),
            Error::Locked(p) => Error::Locked(p.clone()),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for [`Error::Corruption`].
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }

    /// True when the same operation can succeed later without anyone
    /// repairing anything: [`Error::Retrying`], and I/O that failed for lack
    /// of a resource that comes back by itself once something is freed:
    /// disk space (`ENOSPC`), quota (`EDQUOT`), or file descriptors of the
    /// process (`EMFILE`) or of the system (`ENFILE`). The database's
    /// background-error handling uses this one classification: a retryable
    /// failure suspends writes until a retry succeeds, anything else stops
    /// them until a reopen.
    ///
    /// `EIO` is *not* retryable: the device failed to read or write, and
    /// after a failed write-back the kernel may have dropped the dirty pages
    /// and marked them clean, so a later `fsync` can report success for data
    /// that never reached the disk. Only a reopen, which replays what is
    /// really on disk, is safe then. Corruption, bad arguments and a held
    /// lock are not fixed by waiting either.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Retrying(_) => true,
            Error::Io { source, .. } => {
                matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) || matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE)
                )
            }
            Error::Corruption { .. }
            | Error::InvalidArgument(_)
            | Error::Background(_)
            | Error::Locked(_) => false,
        }
    }
}

/// A decoding failure inside an in-memory buffer, before the caller knows
/// which file and offset the buffer came from. Callers turn it into
/// [`Error::Corruption`] with [`DecodeError::at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) &'static str);

impl DecodeError {
    pub(crate) fn at(self, file: impl Into<PathBuf>, offset: u64) -> Error {
        Error::corruption(file, offset, self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> Error {
        Error::io("x", std::io::Error::from_raw_os_error(code))
    }

    #[test]
    fn only_exhausted_resources_are_retryable() {
        for code in [libc::ENOSPC, libc::EDQUOT, libc::EMFILE, libc::ENFILE] {
            assert!(os(code).is_retryable(), "{}", os(code));
            // Group commit hands clones to the writers: they classify alike.
            assert!(os(code).clone().is_retryable(), "{}", os(code));
        }
        for code in [
            libc::EIO,
            libc::EEXIST,
            libc::EISDIR,
            libc::EACCES,
            libc::EROFS,
        ] {
            assert!(!os(code).is_retryable(), "{}", os(code));
            assert!(!os(code).clone().is_retryable(), "{}", os(code));
        }
        assert!(Error::Retrying("full".into()).is_retryable());
        assert!(!Error::Background("broken".into()).is_retryable());
        assert!(!Error::corruption("x", 0, "bad").is_retryable());
        assert!(!Error::InvalidArgument("big".into()).is_retryable());
    }
}
