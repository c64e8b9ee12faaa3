//! `stasis serve` and `stasis token`: the HTTP API and its bearer tokens.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use stasis_catalog::Token;

use crate::output::{parse_size, print_json};
use crate::repo::Context;

/// Serve the Snapshots HTTP API.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Payload paths of new snapshots must lie under this directory; repeatable.
    /// Without one, creating snapshots over HTTP is refused.
    #[arg(long, value_name = "DIR")]
    payload_root: Vec<PathBuf>,
    /// Where forked instances' files go (default: REPO/instances).
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
    let repo = ctx.open()?;
    let path = std::fs::canonicalize(&repo.path)
        .with_context(|| format!("resolving {}", repo.path.display()))?;
    drop(repo);
    let mut payload_roots = Vec::new();
    for r in &a.payload_root {
        payload_roots.push(
            std::fs::canonicalize(r).with_context(|| format!("--payload-root {}", r.display()))?,
        );
    }
    let config = stasis_server::Config {
        instances_dir: a.instances_dir.unwrap_or_else(|| path.join("instances")),
        repo: path,
        listen: a.listen,
        payload_roots,
        max_body_bytes: usize::try_from(a.max_body).context("--max-body is too large")?,
        max_ingests: a.max_ingests,
    };
    stasis_server::run(config)?;
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
        #[arg(long)]
        read_only: bool,
    },
    /// List tokens (never their text).
    List,
    /// Revoke a token by id.
    Revoke {
        /// The token's id (from `token list`).
        id: String,
    },
}

fn row(t: &Token) {
    println!(
        "{:<24} {:<20} {:<10} {:<27} {}",
        t.id,
        t.tenant,
        if t.read_only {
            "read-only"
        } else {
            "read-write"
        },
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
        TokenCommand::Create { tenant, read_only } => {
            let (t, secret) = repo.catalog.create_token(&tenant, read_only)?;
            if ctx.json {
                return print_json(&serde_json::json!({ "token": secret, "record": t }));
            }
            println!("{secret}");
            eprintln!(
                "token {} for tenant {} ({}); it is shown only now",
                t.id,
                t.tenant,
                if t.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            );
        }
        TokenCommand::List => {
            let all = repo.catalog.tokens()?;
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
            let t = repo.catalog.revoke_token(&id)?;
            if ctx.json {
                return print_json(&t);
            }
            println!("revoked {}", t.id);
        }
    }
    Ok(())
}
