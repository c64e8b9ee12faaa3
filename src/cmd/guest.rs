//! `stasis ls|cat|cp SNAP[:DISK[/pN]]:/PATH`: the guest's files inside a snapshot's
//! disk, without root (`stasis_repo::guest`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use stasis_guestfs::{Entry, Kind};
use stasis_repo::guest::{self, GuestPath};

use crate::output::print_json;
use crate::repo::Context;

/// List a directory (or show one entry) inside a snapshot's disk.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// SNAP[:DISK[/pN]]:/PATH, e.g. web/day3:/etc or web/day3:root/p2:/var/log.
    at: String,
    /// Long format: mode, owner, size, mtime, link target.
    #[arg(short = 'l', long)]
    long: bool,
}

/// Write a file of a snapshot's disk to stdout.
#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// SNAP[:DISK[/pN]]:/PATH of a regular file.
    at: String,
}

/// Copy a file or a tree out of a snapshot's disk, keeping modes and mtimes.
#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// SNAP[:DISK[/pN]]:/PATH.
    at: String,
    /// Where to: a new path, or a directory to copy into.
    dest: PathBuf,
}

fn open(ctx: &Context, at: &str) -> Result<(GuestPath, guest::Opened)> {
    let gp: GuestPath = at.parse()?;
    let repo = ctx.open()?;
    let opened = guest::open(&repo.shared_store(), repo.catalog(), &gp)?;
    Ok((gp, opened))
}

fn mtime(e: &Entry) -> String {
    jiff::Timestamp::new(e.mtime, e.mtime_nsec as i32)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| e.mtime.to_string())
}

/// Run `ls`.
pub fn ls(ctx: &Context, a: LsArgs) -> Result<()> {
    let (gp, o) = open(ctx, &a.at)?;
    let top = o.volume.fs.stat(&gp.path).map_err(guest::guest)?;
    let entries = if top.kind == Kind::Dir {
        o.volume.fs.list(&gp.path).map_err(guest::guest)?
    } else {
        vec![top]
    };
    if ctx.json {
        return print_json(&entries);
    }
    let mut out = std::io::stdout().lock();
    for e in &entries {
        if a.long {
            let target = match &e.target {
                Some(t) => format!(" -> {}", String::from_utf8_lossy(t)),
                None => String::new(),
            };
            writeln!(
                out,
                "{} {:>5} {:>5} {:>12} {} {}{target}",
                guest::mode_string(e),
                e.uid,
                e.gid,
                e.size,
                mtime(e),
                e.name_lossy()
            )?;
        } else {
            writeln!(out, "{}", e.name_lossy())?;
        }
    }
    Ok(())
}

/// Run `cat`.
pub fn cat(ctx: &Context, a: CatArgs) -> Result<()> {
    let (gp, o) = open(ctx, &a.at)?;
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    let read = o.volume.fs.read_file(&gp.path, &mut |b| {
        out.write_all(b).map_err(|e| {
            failed = Some(e);
            stasis_guestfs::Error::new(stasis_guestfs::ErrorKind::Io, "writing stdout")
        })
    });
    if let Some(e) = failed {
        return Err(e).context("writing stdout");
    }
    read.map_err(guest::guest)?;
    out.flush()?;
    Ok(())
}

/// Run `cp`.
pub fn cp(ctx: &Context, a: CpArgs) -> Result<()> {
    let (gp, o) = open(ctx, &a.at)?;
    let done = guest::copy_out(&o.volume, &gp.path, &a.dest)?;
    if ctx.json {
        return print_json(&done);
    }
    println!(
        "copied {} files ({} bytes), {} directories, {} symlinks to {}",
        done.files,
        done.bytes,
        done.dirs,
        done.symlinks,
        a.dest.display()
    );
    for s in &done.skipped {
        eprintln!("stasis: left out {s} (a device or socket)");
    }
    Ok(())
}
