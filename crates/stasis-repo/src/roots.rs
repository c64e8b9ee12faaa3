//! Where each tenant may name files from, and opening a named file beneath its root
//! without a race.
//!
//! A server confines every tenant to its own directories: the roots given for it
//! (`--payload-root TENANT=DIR`) and its own instances directory (`INSTANCES/TENANT`,
//! where its forks are written), and keeps server-wide roots (`--payload-root DIR`)
//! for admin tokens. [`Roots::new`] refuses a layout in which one tenant could reach
//! another's files: roots of two tenants that overlap, or a tenant root that overlaps
//! the repository or the instances directory.
//!
//! [`Roots::open`] takes the path a client sent, picks the root it is lexically
//! under, and opens the rest of it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` relative to a descriptor of that root held since startup
//! (for tenants also `RESOLVE_NO_XDEV`, so a mount inside a root, such as a stasis
//! mount that shows every tenant's snapshots, is never crossed). Symlinks are followed
//! only while they stay beneath the root; `..` out of it, absolute symlinks and magic
//! links fail in the kernel, so a symlink swapped in during the request cannot escape.
//! The file is then checked through its descriptor (a regular file; for tenants one
//! with a single link, since a hard link may name another tenant's file) and ingested
//! from that descriptor: its name is never opened again.
//!
//! Every refusal is one [`Refused`], whose reason is for the server's log only: the
//! client is told nothing about what exists on the host.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// One `--payload-root`: a directory, for one tenant or (without one) for admin tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootSpec {
    /// The tenant it belongs to; `None`: a server-wide root, for admin tokens only.
    pub tenant: Option<String>,
    /// The directory.
    pub dir: PathBuf,
}

impl FromStr for RootSpec {
    type Err = Error;

    /// `TENANT=DIR` or `DIR`. A directory whose name holds `=` can be given as
    /// `TENANT=DIR` or as `./DIR`.
    fn from_str(s: &str) -> Result<RootSpec> {
        let (tenant, dir) = match s.split_once('=') {
            Some((t, d)) if !t.contains('/') => (Some(t.to_string()), d),
            _ => (None, s),
        };
        if let Some(t) = &tenant {
            stasis_catalog::validate_name(t)
                .map_err(|e| Error::Invalid(format!("payload root {s:?}: tenant: {e}")))?;
        }
        if dir.is_empty() {
            return Err(Error::Invalid(format!(
                "payload root {s:?} names no directory"
            )));
        }
        Ok(RootSpec {
            tenant,
            dir: PathBuf::from(dir),
        })
    }
}

impl fmt::Display for RootSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "{t}={}", self.dir.display()),
            None => write!(f, "{}", self.dir.display()),
        }
    }
}

/// Who names a file: a tenant, with or without the admin scope.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Whether the server-wide roots are open to it too.
    pub admin: bool,
}

/// A path that may not be used. The reason is for the operator's log; clients get
/// one answer for every refusal.
#[derive(Debug)]
pub struct Refused {
    /// Why, for the log.
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}", self.reason)
    }
}

fn refused(reason: impl Into<String>) -> Refused {
    Refused {
        reason: reason.into(),
    }
}

/// A file opened beneath a root, checked, ready to ingest.
#[derive(Debug)]
pub struct Opened {
    /// The open file; it is read through this descriptor only.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
    /// The path as the client gave it (for messages and logs).
    pub shown: PathBuf,
}

/// A root directory, held open since startup.
#[derive(Debug)]
struct Root {
    /// As configured, made absolute.
    given: PathBuf,
    /// Resolved.
    real: PathBuf,
    /// An `O_PATH` descriptor of it.
    dir: OwnedFd,
}

impl Root {
    fn open(dir: &Path) -> Result<Root> {
        let real = std::fs::canonicalize(dir)
            .map_err(|e| Error::io(format!("payload root {}", dir.display()), e))?;
        let fd = rustix::fs::open(
            &real,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(format!("payload root {}", dir.display()), e.into()))?;
        let given = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            real.clone()
        };
        Ok(Root {
            given,
            real,
            dir: fd,
        })
    }

    /// What of `path` lies beneath this root, if `path` is lexically under it.
    fn rest<'p>(&self, path: &'p Path) -> Option<&'p Path> {
        path.strip_prefix(&self.real)
            .or_else(|_| path.strip_prefix(&self.given))
            .ok()
    }
}

/// Whether one of two resolved directories contains the other.
fn overlap(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The directories a server lets each tenant name files from.
#[derive(Debug)]
pub struct Roots {
    tenants: BTreeMap<String, Vec<Root>>,
    admin: Vec<Root>,
    /// Where forks are written: tenant T's into `instances/T/<vm>/`.
    instances: Root,
}

/// `openat2` beneath `dir`, retried when the kernel reports a rename racing the
/// lookup (EAGAIN), as its manual asks.
fn open_beneath(
    dir: &OwnedFd,
    rest: &Path,
    flags: OFlags,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, rest, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

impl Roots {
    /// The roots of `specs` and the instances directory (created if missing), checked
    /// so that no tenant can reach another's files nor the repository at `repo`.
    pub fn new(specs: &[RootSpec], instances: &Path, repo: &Path) -> Result<Roots> {
        std::fs::create_dir_all(instances)
            .map_err(|e| Error::io(format!("creating {}", instances.display()), e))?;
        let instances = Root::open(instances)?;
        let repo = std::fs::canonicalize(repo)
            .map_err(|e| Error::io(format!("resolving {}", repo.display()), e))?;
        let mut tenants: BTreeMap<String, Vec<Root>> = BTreeMap::new();
        let mut admin = Vec::new();
        for spec in specs {
            let root = Root::open(&spec.dir)?;
            match &spec.tenant {
                None => admin.push(root),
                Some(t) => tenants.entry(t.clone()).or_default().push(root),
            }
        }
        let bad = |msg: String| Err(Error::Invalid(msg));
        for (t, roots) in &tenants {
            for r in roots {
                let shown = || format!("--payload-root {t}={}", r.given.display());
                if overlap(&r.real, &repo) {
                    return bad(format!(
                        "{} overlaps the repository {}: a tenant could read every tenant's blocks and tokens; give it a directory outside the repository",
                        shown(),
                        repo.display()
                    ));
                }
                if overlap(&r.real, &instances.real) {
                    return bad(format!(
                        "{} overlaps the instances directory {}, where every tenant's forks are written (each tenant reaches its own forks there already); give it a directory outside it, or move the instances with --instances-dir",
                        shown(),
                        instances.real.display()
                    ));
                }
                for (u, others) in tenants.range::<String, _>((
                    std::ops::Bound::Excluded(t.clone()),
                    std::ops::Bound::Unbounded,
                )) {
                    if let Some(o) = others.iter().find(|o| overlap(&r.real, &o.real)) {
                        return bad(format!(
                            "{} and --payload-root {u}={} overlap: one tenant would reach the other's files; give each tenant a directory of its own",
                            shown(),
                            o.given.display()
                        ));
                    }
                }
            }
        }
        Ok(Roots {
            tenants,
            admin,
            instances,
        })
    }

    /// The instances directory.
    pub fn instances(&self) -> &Path {
        &self.instances.real
    }

    /// Where the forks of `tenant` are written (`INSTANCES/TENANT`).
    pub fn instance_dir(&self, tenant: &str) -> PathBuf {
        self.instances.real.join(tenant)
    }

    /// The configured roots, as `TENANT=DIR` or `DIR` (admin).
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .tenants
            .iter()
            .flat_map(|(t, rs)| rs.iter().map(move |r| format!("{t}={}", r.real.display())))
            .collect();
        out.extend(
            self.admin
                .iter()
                .map(|r| format!("{} (admin)", r.real.display())),
        );
        out
    }

    /// Open `path` for `scope`: beneath one of the tenant's roots or its instances
    /// directory (or, for an admin, a server-wide root), checked to be a regular file
    /// (for an admin also a block device) that a tenant alone can name.
    pub fn open(&self, scope: Scope<'_>, path: &str) -> Result<Opened, Refused> {
        let p = Path::new(path);
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = self.open_beneath_root(scope, p, flags, false)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| refused(format!("{path:?}: fstat: {e}")))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let size = match ft {
            FileType::RegularFile => u64::try_from(st.st_size)
                .map_err(|_| refused(format!("{path:?}: negative size")))?,
            FileType::BlockDevice if scope.admin => {
                rustix::fs::seek(&fd, rustix::fs::SeekFrom::End(0))
                    .map_err(|e| refused(format!("{path:?}: sizing: {e}")))?
            }
            other => {
                return Err(refused(format!(
                    "{path:?} is a {other:?}, not a regular file"
                )));
            }
        };
        if !scope.admin && st.st_nlink != 1 {
            return Err(refused(format!(
                "{path:?} has {} links: another name of it may be another tenant's",
                st.st_nlink
            )));
        }
        // Reads block as usual from here on.
        rustix::fs::fcntl_setfl(&fd, OFlags::empty())
            .map_err(|e| refused(format!("{path:?}: fcntl: {e}")))?;
        Ok(Opened {
            file: File::from(fd),
            size,
            shown: p.to_path_buf(),
        })
    }

    /// The directory `path` (absolute) beneath one of `scope`'s roots, as
    /// [`Roots::open`] finds a file, opened `O_RDONLY | O_DIRECTORY`: files are then made
    /// in it with `openat` and `renameat`, never by name. A root itself may be named.
    pub fn open_dir(&self, scope: Scope<'_>, path: &Path) -> Result<OwnedFd, Refused> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        self.open_beneath_root(scope, path, flags, true)
    }

    /// `p` opened with `flags` beneath the root of `scope` it is under (the most specific),
    /// or beneath the tenant's instances directory; `root_itself`: `p` may be a root.
    fn open_beneath_root(
        &self,
        scope: Scope<'_>,
        p: &Path,
        flags: OFlags,
        root_itself: bool,
    ) -> Result<OwnedFd, Refused> {
        let path = p.display();
        if !p.is_absolute() {
            return Err(refused(format!("{path:?} is not absolute")));
        }
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            // The kernel would refuse a `..` out of the root; one that stays inside is
            // refused too, as a lexical match of the root could not be trusted.
            return Err(refused(format!("{path:?} holds '..'")));
        }
        let tenant_resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
        // The most specific root wins: roots of one tenant may nest.
        let mut candidates: Vec<(&Root, &Path, bool)> = Vec::new();
        for r in self.tenants.get(scope.tenant).into_iter().flatten() {
            if let Some(rest) = r.rest(p) {
                candidates.push((r, rest, false));
            }
        }
        if scope.admin {
            for r in &self.admin {
                if let Some(rest) = r.rest(p) {
                    candidates.push((r, rest, true));
                }
            }
        }
        let fd = if let Some((root, rest, admin)) = candidates
            .into_iter()
            .max_by_key(|(_, rest, _)| std::cmp::Reverse(rest.components().count()))
        {
            let rest = match (rest.as_os_str().is_empty(), root_itself) {
                (false, _) => rest,
                (true, true) => Path::new("."),
                (true, false) => return Err(refused(format!("{path:?} is a root itself"))),
            };
            let resolve = if admin {
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
            } else {
                tenant_resolve
            };
            open_beneath(&root.dir, rest, flags, resolve)
                .map_err(|e| refused(format!("{path:?} beneath {}: {e}", root.real.display())))?
        } else if let Some(rest) = self.instance_rest(scope.tenant, p, root_itself) {
            // The tenant's instances directory: opened first (it may not exist yet,
            // and must itself be no link), then the rest beneath it.
            let dir = open_beneath(
                &self.instances.dir,
                Path::new(scope.tenant),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                tenant_resolve | ResolveFlags::NO_SYMLINKS,
            )
            .map_err(|e| refused(format!("{path:?}: instances of {}: {e}", scope.tenant)))?;
            open_beneath(&dir, rest, flags, tenant_resolve)
                .map_err(|e| refused(format!("{path:?}: {e}")))?
        } else {
            return Err(refused(format!(
                "{path:?} is under no root of tenant {}{}",
                scope.tenant,
                if scope.admin {
                    " nor a server-wide one"
                } else {
                    ""
                }
            )));
        };
        Ok(fd)
    }

    /// What of `path` lies beneath `INSTANCES/TENANT`, if it is lexically there.
    fn instance_rest<'p>(
        &self,
        tenant: &str,
        path: &'p Path,
        root_itself: bool,
    ) -> Option<&'p Path> {
        let rest = self.instances.rest(path)?;
        let mut c = rest.components();
        match c.next() {
            Some(Component::Normal(t)) if t == tenant => {
                let r = c.as_path();
                match (r.as_os_str().is_empty(), root_itself) {
                    (false, _) => Some(r),
                    (true, true) => Some(Path::new(".")),
                    (true, false) => None,
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s: RootSpec = "acme=/srv/vms/acme".parse().expect("spec");
        assert_eq!(s.tenant.as_deref(), Some("acme"));
        assert_eq!(s.dir, PathBuf::from("/srv/vms/acme"));
        let s: RootSpec = "/srv/vms".parse().expect("spec");
        assert_eq!(s.tenant, None);
        let s: RootSpec = "/srv/a=b".parse().expect("spec");
        assert_eq!((s.tenant, s.dir), (None, PathBuf::from("/srv/a=b")));
        assert!(
            "Acme=/x".parse::<RootSpec>().is_err(),
            "tenant names are checked"
        );
        assert!("acme=".parse::<RootSpec>().is_err());
    }

    fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let repo = d.path().join("repo");
        let inst = repo.join("instances");
        std::fs::create_dir_all(&repo).expect("repo");
        for t in ["acme", "globex"] {
            std::fs::create_dir_all(d.path().join("vms").join(t)).expect("root");
        }
        (d, repo, inst)
    }

    fn spec(s: String) -> RootSpec {
        s.parse().expect("spec")
    }

    #[test]
    fn overlapping_layouts_are_refused() {
        let (d, repo, inst) = layout();
        let vms = d.path().join("vms");
        let ok = [
            spec(format!("acme={}", vms.join("acme").display())),
            spec(format!("globex={}", vms.join("globex").display())),
            spec(format!("{}", vms.display())),
        ];
        Roots::new(&ok, &inst, &repo).expect("disjoint tenants, an admin root over both");
        for bad in [
            vec![
                spec(format!("acme={}", vms.display())),
                spec(format!("globex={}", vms.join("globex").display())),
            ],
            vec![spec(format!("acme={}", d.path().display()))],
            vec![spec(format!("acme={}", inst.display()))],
        ] {
            let e = Roots::new(&bad, &inst, &repo).expect_err("overlap");
            assert!(e.to_string().contains("overlap"), "{e}");
        }
    }

    #[test]
    fn opens_only_beneath_the_tenants_roots() {
        let (d, repo, inst) = layout();
        let vms = d.path().join("vms");
        std::fs::write(vms.join("acme/disk"), b"acme").expect("write");
        std::fs::write(vms.join("globex/disk"), b"globex").expect("write");
        std::os::unix::fs::symlink("disk", vms.join("acme/inside")).expect("link");
        std::os::unix::fs::symlink("../globex/disk", vms.join("acme/out")).expect("link");
        let roots = Roots::new(
            &[
                spec(format!("acme={}", vms.join("acme").display())),
                spec(format!("globex={}", vms.join("globex").display())),
            ],
            &inst,
            &repo,
        )
        .expect("roots");
        let acme = Scope {
            tenant: "acme",
            admin: false,
        };
        let at = |p: &Path| p.display().to_string();
        let f = roots
            .open(acme, &at(&vms.join("acme/disk")))
            .expect("own file");
        assert_eq!(f.size, 4);
        roots
            .open(acme, &at(&vms.join("acme/inside")))
            .expect("a link that stays inside");
        for p in [
            vms.join("globex/disk"),
            vms.join("acme/out"),
            vms.join("acme/../globex/disk"),
            vms.join("acme"),
            vms.join("acme/missing"),
            PathBuf::from("relative"),
            PathBuf::from("/proc/self/environ"),
        ] {
            roots.open(acme, &at(&p)).expect_err("refused");
        }
        // Its own instances directory, once a fork has made it.
        std::fs::create_dir_all(inst.join("acme/web")).expect("mkdir");
        std::fs::write(inst.join("acme/web/root"), b"fork").expect("write");
        std::fs::create_dir_all(inst.join("globex/db")).expect("mkdir");
        std::fs::write(inst.join("globex/db/root"), b"fork").expect("write");
        roots
            .open(acme, &at(&inst.join("acme/web/root")))
            .expect("own fork");
        roots
            .open(acme, &at(&inst.join("globex/db/root")))
            .expect_err("another tenant's fork");
    }
}
