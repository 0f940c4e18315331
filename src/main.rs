//! The `berth` command line: `serve`, `check-config`, `version`. Loads and validates the
//! config before binding any port; a bad config exits 78 (EX_CONFIG).

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use berth::cli::{self, CliError};
use berth::config::{Config, LoadError, LogFormat, Severity};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// jemalloc: fewer cycles per allocation than glibc's malloc on the request path, and with
/// its background thread (`.cargo/config.toml` builds it in) freed memory goes back to the
/// system within seconds of a load ending, instead of staying in per-thread arenas.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// EX_CONFIG: systemd's `RestartPreventExitStatus=78` keeps a bad config from crash-looping.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "berth", version, about = "Pull-through caching OCI registry proxy")]
struct Cli {
    /// Config file.
    #[arg(long, short, global = true, env = "BERTH_CONFIG", default_value = "config.toml")]
    config: PathBuf,
    /// Log format; overrides `[log] format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Validate the config, print every problem, exit 78 if any is an error.
    CheckConfig,
    /// Print the version.
    Version,
    /// Inspect and edit the cache (safe while the server runs).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Remove expired tags and content nothing references.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pull images into the cache through a running berth.
    Warm {
        /// Image references (`alpine:3.20`, `ghcr.io/org/app:v1`, `repo@sha256:...`).
        refs: Vec<String>,
        /// Read more references from a file, one per line (`#` starts a comment).
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// `os/arch[/variant]` of index children to fetch; all platforms when unset.
        #[arg(long)]
        platform: Option<String>,
        /// berth's URL; default: `[server] listen` on loopback.
        #[arg(long)]
        server: Option<String>,
    },
    /// Exit 0 if berth answers `/livez` (for Docker HEALTHCHECK in images without curl).
    Healthcheck {
        /// URL to check; default: `[server] listen` on loopback + `/livez`.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Objects, bytes, limit, free space, tags and bytes per upstream, hit ratio.
    Stats {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Cached tags with digests, sizes and last use.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove tags or objects (`alpine:3.20`, `repo@sha256:...`, `sha256:...`); refuses what
    /// a tag or pin that stays still needs.
    Rm {
        /// References to remove.
        #[arg(required = true)]
        refs: Vec<String>,
        /// Remove even what other tagged or pinned images need (they break).
        #[arg(long)]
        force: bool,
    },
    /// Exempt an image and everything it references from eviction.
    Pin {
        /// The image reference.
        reference: String,
    },
    /// Remove a pin.
    Unpin {
        /// The pinned reference or its digest.
        reference: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match load(&cli) {
            Ok(config) => match check_shared_tier(&config) {
                Ok(()) => {
                    println!("{}: ok", cli.config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    eprintln!("berth: {} is not valid", cli.config.display());
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Err(code) => code,
        },
        Command::Cache(_) | Command::Gc { .. } | Command::Warm { .. } | Command::Healthcheck { .. } => {
            let config = match load(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berth: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(admin(&config, cli.command)) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth: {e}");
                    ExitCode::from(e.code)
                }
            }
        }
        Command::Serve => {
            let config = match load(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(&config, cli.log_format);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berth: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(serve(config))
        }
    }
}

async fn admin(config: &Config, command: Command) -> Result<String, CliError> {
    match command {
        Command::Cache(CacheCommand::Stats { json }) => cli::cache::stats(config, json).await,
        Command::Cache(CacheCommand::Ls { json }) => cli::cache::ls(config, json).await,
        Command::Cache(CacheCommand::Rm { refs, force }) => cli::cache::rm(config, &refs, force).await,
        Command::Cache(CacheCommand::Pin { reference }) => cli::cache::pin(config, &reference).await,
        Command::Cache(CacheCommand::Unpin { reference }) => cli::cache::unpin(config, &reference),
        Command::Gc { dry_run } => cli::gc::run(config, dry_run).await,
        Command::Warm {
            mut refs,
            file,
            platform,
            server,
        } => {
            if let Some(f) = file {
                let text = std::fs::read_to_string(&f).map_err(|e| CliError::new(format!("{}: {e}", f.display())))?;
                refs.extend(
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            if refs.is_empty() {
                return Err(CliError {
                    code: 64,
                    message: "warm: no image references given".into(),
                });
            }
            let server = server.unwrap_or_else(|| cli::warm::default_server(config));
            let platform = platform.filter(|p| p != "all");
            cli::warm::run(config, server.trim_end_matches('/'), &refs, platform.as_deref()).await
        }
        Command::Healthcheck { url } => {
            let url = url.unwrap_or_else(|| format!("{}/livez", cli::warm::default_server(config)));
            cli::warm::fetch_text(config, &url)
                .await
                .map(|_| String::new())
                .map_err(CliError::new)
        }
        Command::Serve | Command::CheckConfig | Command::Version => Err(CliError::new("not an admin command")),
    }
}

/// Load, override from the environment, validate; print every problem.
/// With `[storage.s3]`: ask the object store whether the bucket exists and the credentials
/// may use it. A store that cannot be reached now is a warning, not an error.
fn check_shared_tier(config: &Config) -> Result<(), String> {
    let Some(s3) = &config.storage.s3 else {
        return Ok(());
    };
    let shared = berth::store::SharedStore::new(s3, Arc::new(berth::metrics::Metrics::new()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    match rt.block_on(shared.check()) {
        Ok(()) => Ok(()),
        Err(berth::store::CheckError::Refused(e)) => Err(format!("storage.s3: {e}")),
        Err(berth::store::CheckError::Unreachable(e)) => {
            eprintln!("warning: storage.s3: not reachable now: {e}");
            Ok(())
        }
    }
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    let config = Config::load(&cli.config, std::env::vars()).map_err(|e| {
        match e {
            // Each names its file and line, or the variable that set it.
            LoadError::Invalid(problems) => {
                for p in problems {
                    eprintln!("error: {p}");
                }
                eprintln!("berth: {} is not valid", cli.config.display());
            }
            e => eprintln!("berth: {}: {e}", cli.config.display()),
        }
        ExitCode::from(EXIT_CONFIG)
    })?;
    let problems = config.validate();
    for p in &problems {
        let level = if p.severity == Severity::Error {
            "error"
        } else {
            "warning"
        };
        eprintln!("{level}: {}", p.message);
    }
    if problems.iter().any(|p| p.severity == Severity::Error) {
        eprintln!("berth: {} is not valid", cli.config.display());
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(config)
}

fn init_tracing(config: &Config, flag: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let json = match flag.unwrap_or(config.log.format) {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Colours only for a person at a terminal: escape codes in a log file or journal are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn serve(config: Config) -> ExitCode {
    let config = Arc::new(config);
    // Before binding: a second server on this store fails at once, whatever its ports.
    let _lock = match berth::store::StoreLock::acquire(&config.storage.path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.server.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let metrics_listener = match config.metrics.listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "cannot listen for metrics");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    tracing::info!(listen = %config.server.listen, metrics = ?config.metrics.listen, "listening");
    // Secrets are only ever file paths or variable names here; `Secret` values print as ***.
    tracing::info!(config = ?config, "effective configuration");
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    match berth::run(config, listener, metrics_listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            ExitCode::FAILURE
        }
    }
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once.
async fn signal_shutdown(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    token.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(1);
}
