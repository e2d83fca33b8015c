//! The `walhook` binary: parses the command line, loads configuration, sets up logging and
//! calls the library. No logic lives here.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use walhook::change::CaptureMessage;
use walhook::config::{Config, LogFormat, LogSection, TableSection};

/// mimalloc: the delivery path allocates and frees small buffers across threads, where glibc
/// malloc spent a third of walhook's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// walhook: row changes in PostgreSQL, delivered as webhooks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (must exist); default `walhook.toml` when present.
    #[arg(long, global = true, env = "WALHOOK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: capture, route, deliver, acknowledge (SIGTERM/Ctrl-C to stop).
    Run,
    /// A working end-to-end example on a throwaway local PostgreSQL (needs the PostgreSQL
    /// server binaries installed; no configuration).
    Demo,
    /// Create or upgrade walhook's schema (diesel migrations, then sql/walhook.sql); safe to
    /// run repeatedly and from several processes at once.
    Migrate,
    /// Capture state, slot lag, retained WAL, queue depths, failing subscriptions and the
    /// preflight checks, from the database alone (works with no daemon running). Exit code
    /// 0 healthy, 1 warning, 2 failing.
    Status {
        /// Print JSON (every field is described in docs/operations.md).
        #[arg(long)]
        json: bool,
    },
    /// Manage REST API tokens.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Replication slot maintenance.
    Slot {
        #[command(subcommand)]
        action: SlotCommand,
    },
    /// Stream captured row changes to stdout as JSON lines, acknowledging each commit once
    /// printed (a debugging and inspection tool).
    Tail {
        /// Add a table (`table` or `schema.table`) to the publication.
        #[arg(long = "table")]
        tables: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SlotCommand {
    /// Accept the gap of a lost (invalidated) or missing slot: drop it if present, create a
    /// fresh one and record the gap in walhook.gaps. Run with every `walhook run` stopped.
    Reset,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for OWNER allowed to subscribe to the --scope patterns; prints the
    /// token once on stdout (only its hash is stored).
    Create {
        /// The account whose subscriptions the token manages (default with --admin: admin).
        #[arg(long, required_unless_present = "admin")]
        owner: Option<String>,
        /// An event pattern the token may subscribe to (repeat): orders.*, invoices.created, *
        /// (default with --admin: *).
        #[arg(long = "scope", required_unless_present = "admin")]
        scopes: Vec<String>,
        /// An admin token: the console at /console shows it every subscription, every event
        /// type, the overview and the watched tables.
        #[arg(long)]
        admin: bool,
    },
    /// List tokens (id, owner, scopes, created, last used, revoked); never secrets.
    List,
    /// Revoke a token by id.
    Revoke {
        /// The token's id (from `walhook token list`).
        id: uuid::Uuid,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json_logs = std::sync::atomic::AtomicBool::new(false);
    // The configuration is read first: it sizes the runtime (`runtime.worker_threads`).
    let config = (!matches!(cli.command, Command::Demo)).then(|| {
        let config = load(cli.config.as_deref())?;
        json_logs.store(
            config.log.format == LogFormat::Json,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(config)
    });
    let threads = match &config {
        Some(Ok(config)) => config.runtime.worker_threads()?,
        _ => walhook::config::default_worker_threads(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let result = runtime.block_on(command(cli, config));
    match result {
        // With JSON logs, even the final error is a JSON line.
        Err(e) if json_logs.load(std::sync::atomic::Ordering::Relaxed) => {
            tracing::error!(error = format!("{e:#}"), "walhook failed");
            std::process::exit(1)
        }
        other => other,
    }
}

/// Sets up logging on stderr: `WALHOOK_LOG` when set (a tracing filter), else `log.level`;
/// `log.format` text or JSON (one object per line, event fields at the top level). Without a
/// configuration (it failed to load, or the command needs none): text at `walhook=info`.
fn init_logging(log: Option<&LogSection>) {
    let configured = log.map_or_else(|| "walhook=info".to_owned(), LogSection::filter);
    let filter = tracing_subscriber::EnvFilter::try_from_env("WALHOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(configured));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.map(|l| l.format) {
        Some(LogFormat::Json) => builder.json().flatten_event(true).init(),
        _ => builder.init(),
    }
}

/// Runs `cli`'s command; `config` is the loaded configuration (`None` for `demo`, which
/// needs none).
async fn command(cli: Cli, config: Option<anyhow::Result<Config>>) -> anyhow::Result<()> {
    let loaded = || -> anyhow::Result<Config> {
        config.ok_or_else(|| anyhow::anyhow!("no configuration was loaded"))?
    };
    match cli.command {
        Command::Demo => {
            init_logging(None);
            walhook::demo::run(std::io::stdout()).await
        }
        Command::Status { json } => {
            let config = loaded()?;
            match walhook::ops::status::Status::read(&config).await {
                Ok(status) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&status)?);
                    } else {
                        print!("{}", status.to_table());
                    }
                    std::io::stdout().flush()?;
                    std::process::exit(status.exit_code)
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"health": "failing", "exit_code": 2, "error": e.to_string()})
                        );
                    }
                    eprintln!("walhook status: {e}");
                    std::process::exit(2)
                }
            }
        }
        Command::Run => {
            let config = loaded()?;
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                stop.cancel();
                Ok::<_, std::io::Error>(())
            });
            walhook::app::run(config, shutdown).await?;
            Ok(())
        }
        Command::Migrate => {
            let config = loaded()?;
            migrated(&config).await?;
            eprintln!("walhook schema is up to date");
            Ok(())
        }
        Command::Token { action } => {
            let config = loaded()?;
            token(&config, action).await
        }
        Command::Slot {
            action: SlotCommand::Reset,
        } => {
            let config = loaded()?;
            let database = migrated(&config).await?;
            let gap = walhook::capture::progress::reset(
                &database,
                &config.capture.slot,
                &config.capture.publication,
            )
            .await?;
            let from_time = gap
                .from_time
                .map_or("unknown".to_owned(), |t| t.to_rfc3339());
            println!(
                "slot {:?} ({}) reset: gap {} recorded from {} ({from_time}) to {} ({}); tables: {}",
                gap.slot,
                gap.reason,
                gap.id,
                gap.from_lsn,
                gap.to_lsn,
                gap.to_time.to_rfc3339(),
                gap.tables.join(", ")
            );
            Ok(())
        }
        Command::Tail { tables } => {
            let mut config = loaded()?;
            config
                .tables
                .extend(tables.into_iter().map(|name| TableSection {
                    name,
                    ..TableSection::default()
                }));
            tail(config).await
        }
    }
}

/// Loads the configuration, sets up logging from it, and logs its warnings. When it cannot be
/// loaded, logging is set up with the defaults and the error returned (main prints it).
fn load(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let (config, warnings) = match Config::load(file) {
        Ok(loaded) => loaded,
        Err(e) => {
            init_logging(None);
            return Err(e.into());
        }
    };
    init_logging(Some(&config.log));
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

/// The configured database, its walhook schema brought up to date.
async fn migrated(config: &Config) -> anyhow::Result<walhook::database::Database> {
    let database = config.database()?;
    walhook::subscriptions::store::migrate(
        &database,
        &config.capture.publication,
        config.delivery.allow_private_targets,
    )
    .await?;
    Ok(database)
}

async fn token(config: &Config, action: TokenCommand) -> anyhow::Result<()> {
    use walhook::api::auth;
    let database = migrated(config).await?;
    let mut conn = walhook::subscriptions::store::connect(&database).await?;
    match action {
        TokenCommand::Create {
            owner,
            mut scopes,
            admin,
        } => {
            let owner = owner.unwrap_or_else(|| "admin".to_owned());
            if admin && scopes.is_empty() {
                scopes.push("*".to_owned());
            }
            let (id, token) = auth::create_with(&mut conn, &owner, &scopes, admin).await?;
            let kind = if admin { "admin token" } else { "token" };
            eprintln!("{kind} {id} for owner {owner:?}, scopes {scopes:?} (shown only now):");
            println!("{token}");
        }
        TokenCommand::List => {
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_owned(), |t| {
                    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                })
            };
            println!("id\towner\tscopes\tcreated\tlast_used\trevoked\tadmin");
            for t in auth::list(&mut conn).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.owner,
                    t.scopes.join(","),
                    when(Some(t.created_at)),
                    when(t.last_used_at),
                    when(t.revoked_at),
                    t.admin
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !auth::revoke(&mut conn, id).await? {
                anyhow::bail!("no unrevoked token {id}");
            }
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

async fn tail(config: Config) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut capture =
        walhook::capture::start(config.capture_config(config.database()?)?, cancel.clone())?;
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(message) = capture.changes.recv().await {
        match message {
            CaptureMessage::Change(change) => {
                serde_json::to_writer(&mut out, &change.to_json())?;
                out.write_all(b"\n")?;
            }
            CaptureMessage::Commit(commit) => {
                out.flush()?;
                capture.ack.acknowledge(commit.end_lsn);
            }
            CaptureMessage::Begin(_) => {}
            CaptureMessage::Settled(settled) => settled.set(),
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    out.flush()?;
    cancel.cancel();
    capture.task.await.context("capture task panicked")??;
    Ok(())
}
