//! `stasis`: the command-line interface of the stasis VM snapshot store.

mod bench;
mod cmd;
#[cfg(feature = "faults")]
mod faults;
mod output;
mod repo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A VM snapshot store: dedup across snapshots, per-block compression, Merkle manifests.
#[derive(Debug, Parser)]
#[command(name = "stasis", version, about, propagate_version = true)]
struct Cli {
    /// Repository directory (default: $XDG_DATA_HOME/stasis, created on first use).
    #[arg(long, global = true, env = "STASIS_REPO")]
    repo: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a repository.
    Init(cmd::init::Args),
    /// Store a snapshot of a VM's files.
    Create(Box<cmd::create::Args>),
    /// List snapshots.
    List(cmd::list::ListArgs),
    /// Show one snapshot.
    Show(cmd::list::ShowArgs),
    /// Draw each VM's snapshot tree (current marked *).
    Tree(cmd::tree::TreeArgs),
    /// Delete a snapshot (children are kept and re-parented), a subtree, or expired leaves.
    Delete(cmd::tree::DeleteArgs),
    /// Make a snapshot its VM's current one.
    Revert(cmd::tree::RevertArgs),
    /// A snapshot's activity timeline.
    Log(cmd::list::LogArgs),
    /// Set or remove a snapshot's tags.
    Tag(cmd::tree::TagArgs),
    /// Mount the repository read-only (FUSE).
    #[command(long_about = cmd::mount::about())]
    Mount(cmd::mount::MountArgs),
    /// Unmount a stasis mount.
    Umount(cmd::mount::UmountArgs),
    /// Clone a VM from a snapshot: qcow2 overlays on the mount's disks (or copies).
    Fork(cmd::fork::Args),
    /// Write a snapshot's files into a directory, byte-identical and sparse.
    Restore(cmd::restore::Args),
    /// Check packs, index and manifests (and every block with --read-data).
    Verify(cmd::verify::Args),
    /// Space used: logical and stored bytes, dedup and compression ratios.
    Du(cmd::du::Args),
    /// This host's cache of an s3:// store: `cache stats`, `cache clear`.
    Cache(cmd::cache::Args),
    /// Measure the store: `bench codecs FILE...` on your data, `bench repo` end to end.
    Bench(cmd::bench::Args),
    /// Remove blocks no snapshot uses; repack packs that became mostly garbage.
    Gc(cmd::gc::Args),
    /// Serve the hypeman-compatible Snapshots HTTP API (bearer tokens, tenants).
    Serve(cmd::serve::ServeArgs),
    /// Create, list or revoke the HTTP API's bearer tokens.
    Token(cmd::serve::TokenArgs),
    /// Register VMs by their files, hypervisor and snapshot hooks: `instance add|list|show|remove`.
    Instance(cmd::instance::Args),
    /// Snapshot instances on a schedule, with retention: `schedule set|show|list|remove|run`.
    Schedule(cmd::schedule::Args),
    /// List the guest's files inside a snapshot's disk: `ls SNAP[:DISK[/pN]]:/PATH [-l]`.
    Ls(cmd::guest::LsArgs),
    /// Write a guest file of a snapshot's disk to stdout.
    Cat(cmd::guest::CatArgs),
    /// Copy a guest file or tree out of a snapshot's disk (modes and mtimes kept).
    Cp(cmd::guest::CpArgs),
    /// Keep some of a VM's snapshots by restic's policy (--keep-last, --keep-daily, ...)
    /// and delete the rest.
    Forget(cmd::schedule::ForgetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server must survive clients that hang up mid-response (Rust ignores SIGPIPE
    // and write gets EPIPE); the other commands die quietly on a closed stdout.
    if !matches!(cli.command, Command::Serve(_)) {
        reset_sigpipe();
    }
    // The server logs requests by default; other commands only errors.
    let filter = match (std::env::var("STASIS_LOG"), &cli.command) {
        (Err(_), Command::Serve(_)) => tracing_subscriber::EnvFilter::new("info"),
        _ => tracing_subscriber::EnvFilter::from_env("STASIS_LOG"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let ctx = repo::Context {
        repo: cli.repo,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(&ctx, a),
        Command::Create(a) => cmd::create::run(&ctx, *a),
        Command::List(a) => cmd::list::list(&ctx, a),
        Command::Show(a) => cmd::list::show(&ctx, a),
        Command::Tree(a) => cmd::tree::tree(&ctx, a),
        Command::Delete(a) => cmd::tree::delete(&ctx, a),
        Command::Revert(a) => cmd::tree::revert(&ctx, a),
        Command::Log(a) => cmd::list::log(&ctx, a),
        Command::Tag(a) => cmd::tree::tag(&ctx, a),
        Command::Mount(a) => cmd::mount::mount(&ctx, a),
        Command::Umount(a) => cmd::mount::umount(&ctx, a),
        Command::Fork(a) => cmd::fork::run(&ctx, a),
        Command::Restore(a) => cmd::restore::run(&ctx, a),
        Command::Verify(a) => cmd::verify::run(&ctx, a),
        Command::Du(a) => cmd::du::run(&ctx, a),
        Command::Cache(a) => cmd::cache::run(&ctx, a),
        Command::Bench(a) => cmd::bench::run(&ctx, a),
        Command::Gc(a) => cmd::gc::run(&ctx, a),
        Command::Serve(a) => cmd::serve::serve(&ctx, a),
        Command::Token(a) => cmd::serve::token(&ctx, a),
        Command::Instance(a) => cmd::instance::run(&ctx, a),
        Command::Schedule(a) => cmd::schedule::run(&ctx, a),
        Command::Forget(a) => cmd::schedule::forget(&ctx, a),
        Command::Ls(a) => cmd::guest::ls(&ctx, a),
        Command::Cat(a) => cmd::guest::cat(&ctx, a),
        Command::Cp(a) => cmd::guest::cp(&ctx, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stasis: error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message
/// already carries (the crates' errors print their source themselves).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Die quietly on a closed stdout (`stasis list | head`) like other Unix tools, instead
/// of panicking inside `println!`.
fn reset_sigpipe() {
    // SAFETY: restoring the default disposition of SIGPIPE at startup, before any
    // thread exists, has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
