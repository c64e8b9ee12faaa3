//! Errors of repository operations.

use std::fmt;

/// What went wrong, in a form callers (the CLI, the HTTP server) can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request or one of its input files is invalid.
    InvalidInput,
    /// A named snapshot or VM does not exist.
    NotFound,
    /// It clashes with something that exists (a name, a file).
    Conflict,
    /// A path the caller may not use (see [`crate::roots`]); answered as "refused",
    /// with no more said.
    Refused,
    /// The repository or the machine failed (storage, database, a tool).
    Failed,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Refused => "refused",
            ErrorKind::Failed => "failed",
        })
    }
}

/// An error of a repository operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the block store.
    #[error(transparent)]
    Store(#[from] stasis_store::Error),
    /// From the catalog.
    #[error(transparent)]
    Catalog(#[from] stasis_catalog::Error),
    /// An input file cannot be used (missing, unreadable, not an image, ...).
    #[error("{0}")]
    Input(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A file the caller may not name or make stasis open; the text is for logs.
    #[error("refused: {0}")]
    Refused(String),
    /// Something it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It clashes with something that exists.
    #[error("{0}")]
    Conflict(String),
    /// An instance's snapshot hook failed (see [`crate::instance`]).
    #[error("{0}")]
    Hook(String),
    /// An OS call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        use stasis_catalog::ErrorKind as C;
        use stasis_store::ErrorKind as S;
        match self {
            Error::Store(e) => match e.kind() {
                S::InvalidInput => ErrorKind::InvalidInput,
                _ => ErrorKind::Failed,
            },
            Error::Catalog(e) => match e.kind() {
                C::InvalidInput => ErrorKind::InvalidInput,
                C::NotFound => ErrorKind::NotFound,
                C::Conflict => ErrorKind::Conflict,
                _ => ErrorKind::Failed,
            },
            Error::Input(_) | Error::Invalid(_) => ErrorKind::InvalidInput,
            Error::Refused(_) => ErrorKind::Refused,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Io { .. } | Error::Hook(_) => ErrorKind::Failed,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
