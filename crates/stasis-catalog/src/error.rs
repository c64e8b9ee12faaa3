//! Errors of the catalog: a small stable kind plus context.

use std::fmt;

/// What went wrong, in a form callers can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The database failed (I/O, locking, SQL, a lost connection).
    Database,
    /// The named snapshot or VM does not exist.
    NotFound,
    /// The request is invalid (bad name, parent in another VM, ...).
    InvalidInput,
    /// It clashes with something that exists (duplicate name).
    Conflict,
    /// The database holds something it should not.
    Corrupt,
}

/// A catalog error.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl Error {
    /// A new error.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// A database error while doing `what`.
    pub fn db(
        what: impl Into<String>,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            kind: ErrorKind::Database,
            context: what.into(),
            source: Some(e.into()),
        }
    }

    /// The same error as another kind.
    #[must_use]
    pub(crate) fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The database holds an invalid value.
    pub fn corrupt(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupt, context)
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// More context in front.
    #[must_use]
    pub fn context(mut self, outer: impl fmt::Display) -> Self {
        self.context = format!("{outer}: {}", self.context);
        self
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
