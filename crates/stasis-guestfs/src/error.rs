//! Errors of guest filesystem reads: a kind, and what was being read.

use std::fmt;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such file, directory, partition or filesystem.
    NotFound,
    /// A directory was asked for and this is none (or the other way round).
    NotADirectory,
    /// A regular file's data was asked for and this is a directory or special file.
    NotAFile,
    /// The image is damaged or crafted: its structures contradict themselves.
    Corrupt,
    /// Valid, but using a feature this reader does not read.
    Unsupported,
    /// The bytes beneath could not be read (the store's error is in the message).
    Io,
    /// A path or name given by the caller is not usable.
    Invalid,
}

/// A guest filesystem error.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The same error, said to be about `what`.
    #[must_use]
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// An `ext4-view` error, sorted into a kind.
    pub(crate) fn ext4(e: ext4_view::Ext4Error) -> Error {
        use ext4_view::Ext4Error as E;
        let kind = match &e {
            E::NotFound => ErrorKind::NotFound,
            E::NotADirectory => ErrorKind::NotADirectory,
            E::IsADirectory | E::IsASpecialFile | E::NotASymlink => ErrorKind::NotAFile,
            E::NotAbsolute | E::MalformedPath | E::PathTooLong | E::NotUtf8 => ErrorKind::Invalid,
            E::Incompatible(_) | E::FileTooLarge => ErrorKind::Unsupported,
            E::Io(_) => ErrorKind::Io,
            _ => ErrorKind::Corrupt,
        };
        Error::new(kind, e.to_string())
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
