//! Which snapshots `list` returns, and in what order.

use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};
use crate::fields::{Hypervisor, Kind};
use crate::record::Status;

/// A field to sort by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortField {
    /// Oldest first (the default).
    #[default]
    CreatedAt,
    /// By name.
    Name,
    /// Largest first.
    SizeBytes,
    /// Largest first: what to delete for space.
    AddedBytes,
    /// Soonest first.
    ExpiresAt,
}

impl FromStr for SortField {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "created_at" | "created" => Ok(SortField::CreatedAt),
            "name" => Ok(SortField::Name),
            "size_bytes" | "size" => Ok(SortField::SizeBytes),
            "added_bytes" | "added" => Ok(SortField::AddedBytes),
            "expires_at" | "expires" => Ok(SortField::ExpiresAt),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "cannot sort by {s:?} (use created_at, name, size_bytes, added_bytes or expires_at)"
                ),
            )),
        }
    }
}

impl SortField {
    pub(crate) fn order_by(self) -> &'static str {
        match self {
            SortField::CreatedAt => "s.created_at, s.rowid",
            SortField::Name => "v.name, s.name",
            SortField::SizeBytes => "s.size_bytes DESC, s.created_at",
            SortField::AddedBytes => "s.added_bytes DESC, s.created_at",
            SortField::ExpiresAt => "s.expires_at IS NULL, s.expires_at, s.created_at",
        }
    }
}

/// Filters of `list`; all given ones must hold.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this VM (name or id).
    pub vm: Option<String>,
    /// Only this tenant's VMs.
    pub tenant: Option<String>,
    /// Only snapshots with this name.
    pub name: Option<String>,
    /// Only snapshots with all these tags.
    pub tags: Vec<(String, String)>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Only this hypervisor.
    pub hypervisor: Option<Hypervisor>,
    /// Only the expired ones (`expires_at` not after now).
    pub expired: bool,
    /// Only this parent.
    pub parent_id: Option<String>,
    /// Include deleted snapshots (hidden otherwise).
    pub all: bool,
    /// Order.
    pub sort: SortField,
    /// At most this many.
    pub limit: Option<u64>,
    /// Only snapshots after this one (its id) in the [`SortField::CreatedAt`] order: the
    /// next page of a list. Other orders refuse it.
    pub after: Option<String>,
}
