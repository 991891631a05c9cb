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
    /// A background flush failed earlier; the database refuses writes so that no
    /// acknowledged write can be lost. Reopen the database to recover from the WAL.
    #[error("a background job failed earlier, the database is read-only until reopened: {0}")]
    Background(String),
    /// Another process (or another `Db` in this process) holds the database's lock file.
    #[error("database at {0} is locked by another user")]
    Locked(PathBuf),
}

impl Clone for Error {
    // Group commit hands one failure to every writer of the group; io::Error
    // is not Clone, so the copy keeps its kind and message.
    fn clone(&self) -> Self {
        match self {
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
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
