//! `stasis init`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use stasis_repo::{CatalogUrl, Initialised, RepoConfig, StoreUrl};
use stasis_store::{Algorithm, Compression, Role, StoreConfig};

use crate::output::{human, parse_size, print_json};
use crate::repo::Context;

/// Create a repository.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Block size, for every role (`64KiB`) or one role (`memory=4KiB`); repeatable.
    #[arg(long = "block-size", value_name = "[ROLE=]SIZE")]
    block_size: Vec<String>,
    /// Default compression: zstd (the default), lz4 or none.
    #[arg(long)]
    compression: Option<String>,
    /// Compression level (zstd 1-19, default 1; lz4 0-9, default 0).
    #[arg(long)]
    level: Option<i32>,
    /// Target size of pack files (1MiB-1GiB; default 32MiB). Smaller packs make gc
    /// repack less at a time; larger ones mean fewer files.
    #[arg(long, value_name = "SIZE")]
    pack_size: Option<String>,
    /// zstd compresses the new blocks of a write together in frames of up to this size
    /// (0 or 0-16MiB; default 256KiB; 0 compresses each block alone). Larger frames
    /// compress a little better; a random read decodes a whole frame.
    #[arg(long, value_name = "SIZE")]
    frame_size: Option<String>,
    /// Where the blocks go: a directory (`file:///PATH`, default `REPO/store`) or an
    /// S3-compatible bucket (`s3://BUCKET/PREFIX`; endpoint and credentials from
    /// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Where the catalog goes: a SQLite file (`sqlite:///PATH`, default
    /// `REPO/catalog.db`) or a PostgreSQL database every host shares
    /// (`postgres://USER[:PASSWORD]@HOST:PORT/DB`, or PGPASSWORD). With a shared catalog,
    /// a store that already holds a repository is joined as it is.
    #[arg(long, value_name = "URL")]
    catalog: Option<String>,
    /// For an s3:// store: this host's cache of its pieces (default `REPO/cache`).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// For an s3:// store: the cache's budget (default 10GiB).
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
}

/// Parse `--block-size` values into `config`: plain sizes first, then per-role ones.
pub fn apply_block_sizes(config: &mut StoreConfig, specs: &[String]) -> Result<()> {
    for spec in specs.iter().filter(|s| !s.contains('=')) {
        let size = parse_size(spec)?;
        for r in Role::ALL {
            config.block_sizes.set(r, size)?;
        }
    }
    for spec in specs.iter().filter(|s| s.contains('=')) {
        let (role, size) = spec.split_once('=').unwrap_or_default();
        config.block_sizes.set(role.parse()?, parse_size(size)?)?;
    }
    Ok(())
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let mut config = StoreConfig::default();
    apply_block_sizes(&mut config, &a.block_size)?;
    let algo: Algorithm = a.compression.as_deref().unwrap_or("zstd").parse()?;
    if algo == Algorithm::None && a.level.is_some() {
        bail!("--level makes no sense with --compression none");
    }
    config.compression = Compression::new(algo, a.level)?;
    if let Some(p) = &a.pack_size {
        config.pack_size = parse_size(p)?;
        if !(1 << 20..=1 << 30).contains(&config.pack_size) {
            bail!("--pack-size must be between 1MiB and 1GiB, not {p}");
        }
    }
    if let Some(f) = &a.frame_size {
        let max = stasis_store::MAX_FRAME_BYTES as u64;
        config.frame_size = match parse_size(f)? {
            n if n <= max => n as u32,
            _ => bail!("--frame-size must be at most 16MiB, not {f}"),
        };
    }
    // Whether any setting of the store was given (a host joining takes the store's).
    let explicit = !a.block_size.is_empty()
        || a.compression.is_some()
        || a.level.is_some()
        || a.pack_size.is_some()
        || a.frame_size.is_some();
    let path = ctx.path()?;
    let (repo, how) = if a.store.is_none()
        && a.catalog.is_none()
        && a.cache_dir.is_none()
        && a.cache_size.is_none()
    {
        (ctx.init(config)?, Initialised::Created)
    } else {
        let dir = std::path::absolute(&path)?;
        let store: StoreUrl = match &a.store {
            Some(s) => s.parse()?,
            None => StoreUrl::Dir(dir.join("store")),
        };
        let catalog: Option<CatalogUrl> = a.catalog.as_deref().map(str::parse).transpose()?;
        let cache_size = a.cache_size.as_deref().map(parse_size).transpose()?;
        let repo_config = RepoConfig::new(&dir, store, catalog, a.cache_dir.clone(), cache_size)?;
        ctx.init_at(&repo_config, explicit.then_some(config))?
    };
    let c = repo.store().config();
    let (store, catalog) = (
        repo.config().store.to_string(),
        repo.config().catalog.to_string(),
    );
    if ctx.json {
        return print_json(&serde_json::json!({
            "path": path, "store": store, "catalog": catalog, "config": c,
            "joined": how == Initialised::Joined,
        }));
    }
    match how {
        Initialised::Created => println!(
            "initialised {} (store {store}, catalog {catalog})",
            path.display()
        ),
        Initialised::Joined => println!(
            "joined the repository in {store} (catalog {catalog}) at {}; its settings:",
            path.display()
        ),
    }
    println!(
        "  blocks disk {} memory {} state {}, compression {}, frames {}",
        human(c.block_sizes.disk.into()),
        human(c.block_sizes.memory.into()),
        human(c.block_sizes.state.into()),
        c.compression,
        match c.frame_size {
            0 => "off".to_string(),
            n => human(n.into()),
        }
    );
    Ok(())
}
