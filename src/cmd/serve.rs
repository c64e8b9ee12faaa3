//! `stasis serve` and `stasis token`: the HTTP API and its bearer tokens.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use anyhow::{Context as _, Result};
use stasis_catalog::{Token, TokenMode};
use stasis_repo::roots::{RootSpec, Roots};

use crate::output::{parse_size, print_json};
use crate::repo::Context;

/// Serve the Snapshots HTTP API.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// A directory whose files one tenant's tokens may snapshot: `TENANT=DIR`; or,
    /// as a bare `DIR`, a server-wide root that only admin tokens may use. Repeatable.
    /// A tenant may also name the files of its own forks (INSTANCES/TENANT/...).
    /// Roots of two tenants must not overlap, nor overlap the repository or the
    /// instances directory.
    #[arg(long, value_name = "[TENANT=]DIR")]
    payload_root: Vec<RootSpec>,
    /// Where forked instances' files go, as INSTANCES/TENANT/NAME/ (default:
    /// REPO/instances).
    #[arg(long, value_name = "DIR")]
    instances_dir: Option<PathBuf>,
    /// Largest request body accepted.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_body: u64,
    /// Snapshot creates and forks running at once; more are answered 429.
    #[arg(long, default_value_t = 2)]
    max_ingests: usize,
}

/// Run `serve` until SIGTERM or SIGINT.
pub fn serve(ctx: &Context, a: ServeArgs) -> Result<()> {
    // Opening creates the default repository on first use, and migrates the catalog.
    let mut repo = ctx.open()?;
    let path = std::fs::canonicalize(&repo.config().dir)
        .with_context(|| format!("resolving {}", repo.config().dir.display()))?;
    if path != repo.config().dir {
        // Made just now: opened again by the path it resolves to.
        repo = ctx.open()?;
    }
    let instances = a
        .instances_dir
        .unwrap_or_else(|| repo.config().instances_dir());
    // Refuses a layout in which one tenant could reach another's files.
    let roots = Roots::new(&a.payload_root, &instances, &path)
        .context("refusing to serve with these --payload-root and --instances-dir")?;
    for r in roots.describe() {
        tracing::info!("payload root {r}");
    }
    let config = stasis_server::Config {
        repo: repo.config().clone(),
        listen: a.listen,
        roots: Arc::new(roots),
        max_body_bytes: usize::try_from(a.max_body).context("--max-body is too large")?,
        max_ingests: a.max_ingests,
    };
    stasis_server::run(config, repo)?;
    Ok(())
}

/// Manage the API's bearer tokens.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Make a token and print it (once: only its hash is stored).
    Create {
        /// The tenant whose VMs and snapshots it sees (the CLI's VMs are `default`'s).
        #[arg(long)]
        tenant: String,
        /// Reads only: writes are answered 403.
        #[arg(long, conflicts_with = "admin")]
        read_only: bool,
        /// The admin scope: it may also snapshot files under the server-wide payload
        /// roots (bare `--payload-root DIR`). It still sees only its tenant's VMs and
        /// snapshots.
        #[arg(long)]
        admin: bool,
    },
    /// List tokens (never their text).
    List,
    /// Revoke a token by id.
    Revoke {
        /// The token's id (from `token list`).
        id: String,
    },
}

fn mode(t: &Token) -> &'static str {
    match (t.read_only, t.admin) {
        (true, _) => "read-only",
        (false, true) => "admin",
        (false, false) => "read-write",
    }
}

fn row(t: &Token) {
    println!(
        "{:<24} {:<20} {:<10} {:<27} {}",
        t.id,
        t.tenant,
        mode(t),
        t.created_at,
        t.revoked_at
            .as_ref()
            .map(|r| format!("revoked {r}"))
            .unwrap_or_else(|| "live".into())
    );
}

/// Run `token`.
pub fn token(ctx: &Context, a: TokenArgs) -> Result<()> {
    let mut repo = ctx.open()?;
    match a.command {
        TokenCommand::Create {
            tenant,
            read_only,
            admin,
        } => {
            let m = match (read_only, admin) {
                (true, _) => TokenMode::ReadOnly,
                (false, true) => TokenMode::Admin,
                (false, false) => TokenMode::ReadWrite,
            };
            let (t, secret) = repo.catalog_mut().create_token(&tenant, m)?;
            if ctx.json {
                return print_json(&serde_json::json!({ "token": secret, "record": t }));
            }
            println!("{secret}");
            eprintln!(
                "token {} for tenant {} ({}); it is shown only now",
                t.id,
                t.tenant,
                mode(&t)
            );
        }
        TokenCommand::List => {
            let all = repo.catalog().tokens()?;
            if ctx.json {
                return print_json(&all);
            }
            println!(
                "{:<24} {:<20} {:<10} {:<27} STATE",
                "ID", "TENANT", "MODE", "CREATED"
            );
            all.iter().for_each(row);
        }
        TokenCommand::Revoke { id } => {
            let t = repo.catalog_mut().revoke_token(&id)?;
            if ctx.json {
                return print_json(&t);
            }
            println!("revoked {}", t.id);
        }
    }
    Ok(())
}
