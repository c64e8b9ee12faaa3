//! `stasis cache stats|clear`: this host's cache of an object store's pieces.

use anyhow::{Result, bail};

use crate::output::{human, print_json};
use crate::repo::Context;

/// This host's cache of an s3:// store.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// What the cache holds and how it has served (every process of this host).
    Stats,
    /// Remove every cached piece (reads fetch them again).
    Clear,
}

/// Print one cache's figures (also for `stasis du`).
pub fn print(s: &stasis_repo::CacheStats) {
    println!(
        "cache              {} of {}  ({} pieces in {})",
        human(s.bytes),
        human(s.budget),
        s.pieces,
        s.dir.display()
    );
    let reads = s.hits + s.misses;
    let rate = if reads == 0 {
        0.0
    } else {
        s.hits as f64 / reads as f64 * 100.0
    };
    println!(
        "  hits {}  misses {}  ({rate:.1}% hits)  damaged and dropped {}",
        s.hits, s.misses, s.dropped
    );
    println!("  fetched {} in {} requests", human(s.fetched), s.requests);
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let config = ctx.config()?;
    if !config.exists()? {
        bail!("no repository at {}", config.dir.display());
    }
    match a.what {
        What::Stats => match config.cache_stats()? {
            Some(s) if ctx.json => print_json(&s),
            Some(s) => {
                print(&s);
                Ok(())
            }
            None => bail!(
                "the repository at {} keeps its blocks in a local directory and has no cache",
                config.dir.display()
            ),
        },
        What::Clear => {
            if !config.clear_cache()? {
                bail!(
                    "the repository at {} keeps its blocks in a local directory and has no cache",
                    config.dir.display()
                );
            }
            if !ctx.json {
                println!("cache cleared");
            }
            Ok(())
        }
    }
}
