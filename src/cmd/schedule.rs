//! `stasis schedule set|show|list|remove|run` (hypeman's snapshot schedules; `stasis
//! serve` runs them) and `stasis forget` (restic's keep policy over a VM's snapshots).

use anyhow::{Context as _, Result};
use stasis_catalog::{NewSchedule, Schedule, parse_tag};
use stasis_repo::retention::{self, Policy};

use crate::output::print_json;
use crate::repo::Context;

/// Set, show, list, remove or run snapshot schedules.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Snapshot an instance every INTERVAL, keeping what the retention says.
    Set(SetArgs),
    /// Show an instance's schedule.
    Show {
        /// The instance (VM name or id).
        vm: String,
    },
    /// List every schedule.
    List,
    /// Remove an instance's schedule (the snapshots it made stay).
    Remove {
        /// The instance (VM name or id).
        vm: String,
    },
    /// Run the schedules that are due now, once (what `stasis serve` does on its own;
    /// for hosts that run no server, from cron or a systemd timer).
    Run,
}

#[derive(Debug, clap::Args)]
struct SetArgs {
    /// The instance (VM name or id; see `stasis instance add`).
    vm: String,
    /// How often: a Go duration of at least 1m (15m, 1h, 24h).
    #[arg(long)]
    interval: String,
    /// Keep at most N scheduled snapshots (0: no limit by count).
    #[arg(long, value_name = "N")]
    max_count: Option<u32>,
    /// Delete scheduled snapshots older than this Go duration (168h).
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
    /// Names start with this (default `scheduled`), then -YYYYMMDD-HHMMSS (UTC).
    #[arg(long, value_name = "PREFIX")]
    name_prefix: Option<String>,
    /// A tag of each snapshot it makes (K=V); repeatable.
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
}

/// Keep some of a VM's snapshots, delete the rest (restic's policy).
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// The VM (name or id).
    vm: String,
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the newest N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: u32,
    /// Keep the newest snapshot of each of the newest N days that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the newest N ISO weeks that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the newest N months that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// Keep the newest snapshot of each of the newest N years that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: u32,
    /// Say what would be kept and removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

fn print_schedule(s: &Schedule) {
    println!("schedule of {} ({})", s.vm.name, s.vm.id);
    println!("  every       {}", s.interval);
    match (s.max_count.filter(|n| *n > 0), &s.max_age) {
        (Some(n), Some(a)) => println!("  keeps       the newest {n}, none older than {a}"),
        (Some(n), None) => println!("  keeps       the newest {n}"),
        (None, Some(a)) => println!("  keeps       none older than {a}"),
        (None, None) => println!("  keeps       all"),
    }
    if let Some(p) = &s.name_prefix {
        println!("  names       {p}-YYYYMMDD-HHMMSS");
    }
    for (k, v) in &s.metadata {
        println!("  tag         {k}={v}");
    }
    println!("  next run    {}", s.next_run_at);
    if let Some(t) = &s.last_run_at {
        println!("  last run    {t}");
    }
    if let Some(id) = &s.last_snapshot_id {
        println!("  last made   {id}");
    }
    if let Some(e) = &s.last_error {
        println!("  last error  {e}");
    }
}

/// Run `stasis schedule`.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let mut repo = ctx.open()?;
    match a.command {
        Command::Set(a) => {
            let metadata = a
                .tags
                .iter()
                .map(|t| parse_tag(t))
                .collect::<Result<_, _>>()?;
            let s = repo.catalog_mut().set_schedule(
                &a.vm,
                &NewSchedule {
                    interval: a.interval,
                    max_count: a.max_count,
                    max_age: a.max_age,
                    name_prefix: a.name_prefix,
                    metadata,
                },
                jiff::Timestamp::now(),
            )?;
            if ctx.json {
                return print_json(&s);
            }
            print_schedule(&s);
        }
        Command::Show { vm } => {
            let s = repo
                .catalog()
                .schedule(&vm)?
                .with_context(|| format!("{vm:?} has no schedule (stasis schedule set)"))?;
            if ctx.json {
                return print_json(&s);
            }
            print_schedule(&s);
        }
        Command::List => {
            let all = repo.catalog().schedules()?;
            if ctx.json {
                return print_json(&all);
            }
            println!("{:<24} {:<10} {:<26} LAST", "INSTANCE", "EVERY", "NEXT RUN");
            for s in &all {
                let last = match (&s.last_error, &s.last_snapshot_id) {
                    (Some(e), _) => format!("error: {e}"),
                    (None, Some(id)) => id.clone(),
                    (None, None) => "-".into(),
                };
                println!(
                    "{:<24} {:<10} {:<26} {last}",
                    s.vm.name, s.interval, s.next_run_at
                );
            }
        }
        Command::Remove { vm } => {
            repo.catalog_mut().remove_schedule(&vm)?;
            if ctx.json {
                return print_json(&serde_json::json!({ "removed": vm }));
            }
            println!("removed the schedule of {vm} (its snapshots stay)");
        }
        Command::Run => {
            let (store, cat) = repo.parts();
            let runs = stasis_repo::schedule::run_due(store, cat, None, jiff::Timestamp::now())?;
            let mut failed = 0;
            let mut out = Vec::new();
            for r in &runs {
                match &r.snapshot {
                    Ok(id) if !ctx.json => {
                        println!("{}: made {id}, retention deleted {}", r.vm, r.deleted.len());
                    }
                    Err(e) if !ctx.json => eprintln!("{}: failed: {e}", r.vm),
                    _ => {}
                }
                failed += usize::from(r.snapshot.is_err() || r.retention_error.is_some());
                out.push(serde_json::json!({
                    "vm": r.vm,
                    "snapshot": r.snapshot.as_ref().ok(),
                    "error": r.snapshot.as_ref().err().or(r.retention_error.as_ref()),
                    "deleted": r.deleted,
                }));
            }
            if ctx.json {
                print_json(&out)?;
            } else if runs.is_empty() {
                println!("no schedule is due");
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} scheduled runs failed", runs.len());
            }
        }
    }
    Ok(())
}

/// Run `stasis forget`.
pub fn forget(ctx: &Context, a: ForgetArgs) -> Result<()> {
    let mut repo = ctx.open()?;
    let policy = Policy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
    };
    let (store, cat) = repo.parts();
    let done = retention::forget(store, cat, &a.vm, &policy, a.dry_run, "cli:forget")?;
    if ctx.json {
        return print_json(&done);
    }
    for d in &done.decisions {
        if d.kept() {
            println!("keep    {} {}  ({})", d.id, d.at, d.kept_by.join(", "));
        } else {
            println!("remove  {} {}", d.id, d.at);
        }
    }
    let removed = done.decisions.iter().filter(|d| !d.kept()).count();
    if a.dry_run {
        println!(
            "dry run: would remove {removed} of {}",
            done.decisions.len()
        );
    } else {
        println!(
            "removed {removed} of {} ({} deleted rows; gc frees their blocks)",
            done.decisions.len(),
            done.deleted.len()
        );
    }
    Ok(())
}
