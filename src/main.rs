//! The `stevedore` binary: `stevedore serve [--config FILE] [--listen ADDR] [--data-dir DIR]`,
//! `stevedore hash-token` (token on stdin → the SHA-256 for `tokens`),
//! `stevedore reseal` (offline: seal plaintext secrets, purge old copies) and
//! `stevedore migrate` (offline: an embedded data directory into a cluster).

use std::{
    io::{Read, Write},
    path::PathBuf,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use stevedore::config::{Config, LogFormat};
use tokio::sync::oneshot;

/// mimalloc: the broker allocates a protobuf tree per event it reads and a
/// JSON tree per webhook body; see BENCHMARKS.md for what this changed.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "A gRPC event broker for warehouse and commerce webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// gRPC listen address (config key `listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (config key `data_dir`).
        #[arg(long)]
        data_dir: Option<String>,
        /// Metrics listen address, or `off` (config key `metrics_listen`).
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Console (webhook maintenance page) listen address, or `off`
        /// (config key `console_listen`).
        #[arg(long)]
        console_listen: Option<String>,
    },
    /// Read a bearer token from stdin and print its SHA-256 (hex), the form
    /// the `tokens` config key stores.
    ///
    /// Example: `head -c 32 /dev/urandom | base64 | tr -d '\n' > ops.token;
    /// stevedore hash-token < ops.token`.
    HashToken,
    /// With the broker stopped: seal every endpoint secret still stored in
    /// the clear with the master key, and rewrite the state store into
    /// fresh files so that no old plaintext copy remains in the data
    /// directory. Run it once after turning a master key on.
    Reseal {
        /// TOML config file (for `data_dir` and the master key).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (config key `data_dir`).
        #[arg(long)]
        data_dir: Option<String>,
    },
    /// With the embedded broker stopped: copy its data directory (events,
    /// endpoints with their sealed secrets, consumer positions, delivery
    /// records, audit trail) into an empty cluster installation
    /// (`backend = "jetstream"`, `nats_url`, `nats_prefix`, ... as for the
    /// cluster's brokers), keeping every event's offset.
    Migrate {
        /// TOML config file (the cluster's options; `data_dir`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The embedded data directory to copy (config key `data_dir`).
        #[arg(long)]
        data_dir: Option<String>,
    },
}

/// Shortest token `hash-token` accepts: the hash is only as strong as the
/// token's randomness.
const MIN_TOKEN_BYTES: usize = 16;

fn main() -> anyhow::Result<()> {
    let (config, listen, data_dir, metrics_listen, console_listen) = match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            data_dir,
            metrics_listen,
            console_listen,
        } => (config, listen, data_dir, metrics_listen, console_listen),
        Command::HashToken => return hash_token(),
        Command::Reseal { config, data_dir } => return reseal(config, data_dir),
        Command::Migrate { config, data_dir } => return migrate(config, data_dir),
    };
    let flags: Vec<(&str, String)> = [
        ("listen", listen),
        ("data_dir", data_dir),
        ("metrics_listen", metrics_listen),
        ("console_listen", console_listen),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let config = Config::load(config.as_deref(), std::env::vars(), &flags)?;
    init_tracing(config.log_format)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))
}

fn reseal(config: Option<PathBuf>, data_dir: Option<String>) -> anyhow::Result<()> {
    let flags: Vec<(&str, String)> = data_dir.map(|d| ("data_dir", d)).into_iter().collect();
    let config = Config::load(config.as_deref(), std::env::vars(), &flags)?;
    init_tracing(config.log_format)?;
    let (sealed, entries) = stevedore::reseal(&config)?;
    println!(
        "stevedore reseal: sealed {sealed} endpoint record(s); rewrote {entries} state entries \
         into fresh files in {}",
        config.data_dir.display()
    );
    Ok(())
}

fn migrate(config: Option<PathBuf>, data_dir: Option<String>) -> anyhow::Result<()> {
    let flags: Vec<(&str, String)> = data_dir.map(|d| ("data_dir", d)).into_iter().collect();
    let config = Config::load(config.as_deref(), std::env::vars(), &flags)?;
    init_tracing(config.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let done = runtime.block_on(stevedore::migrate(&config))?;
    let last = if done.events == 0 {
        "none".to_owned()
    } else {
        format!("{}..={}", done.first, done.head.get() - 1)
    };
    println!(
        "stevedore migrate: copied {} event record(s) (offsets {last}) into stream {}; next \
         offset {}",
        done.events, done.stream, done.head
    );
    let tables: Vec<String> = done
        .tables
        .iter()
        .map(|(table, n)| format!("{table} {n}"))
        .collect();
    println!(
        "stevedore migrate: copied state records into bucket {}: {}",
        done.state_bucket,
        tables.join(", ")
    );
    Ok(())
}

fn hash_token() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the token from stdin")?;
    // One trailing newline (from echo or a file) is not part of the token.
    let token = input
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&input);
    if token.len() < MIN_TOKEN_BYTES || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "a token must be at least {MIN_TOKEN_BYTES} characters without spaces or control \
             characters (e.g. `head -c 32 /dev/urandom | base64`)"
        );
    }
    let hash = stevedore::auth::to_hex(&stevedore::auth::hash_token(token.as_bytes()));
    println!("{hash}");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    survive_file_size_limits()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen {addr}"))?,
        ),
        None => None,
    };
    // Machine-readable lines for scripts and tests (port 0 picks a port),
    // printed once the broker serves: after the data directory, TLS files
    // and master key have been checked.
    let mut lines = format!("stevedore listening on {}\n", listener.local_addr()?);
    if let Some(m) = &metrics_listener {
        lines.push_str(&format!("stevedore metrics on {}\n", m.local_addr()?));
    }
    let console_listener = stevedore::bind_console(&config).await?;
    let ready = move |started: &stevedore::Started| {
        if let Some(url) = &started.console_url {
            lines.push_str(&format!("stevedore console on {url}\n"));
            if let Some(login) = &started.console_login {
                lines.push_str(&format!(
                    "stevedore console one-time login {url}{login} (authentication is off; \
                     the link works once)\n"
                ));
            }
        }
        let mut out = std::io::stdout().lock();
        // A closed stdout (a supervisor that does not read it) is no
        // reason to stop serving.
        let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
    };

    let deadline = config.shutdown_timeout;
    let (signalled_tx, signalled_rx) = oneshot::channel();
    let shutdown = async move {
        wait_for_signal().await;
        let _ = signalled_tx.send(());
    };
    let listeners = stevedore::Listeners {
        grpc: listener,
        metrics: metrics_listener,
        console: console_listener,
    };
    let mut server = tokio::spawn(stevedore::serve(config, listeners, shutdown, ready));
    tokio::select! {
        result = &mut server => return result?,
        _ = signalled_rx => {}
    }
    match tokio::time::timeout(deadline, &mut server).await {
        Ok(result) => result?,
        Err(_) => {
            tracing::error!(?deadline, "graceful shutdown timed out; exiting");
            std::process::exit(1);
        }
    }
}

/// A write past the process's file-size limit (`RLIMIT_FSIZE`) raises
/// SIGXFSZ, which by default kills the process: take it instead, so such a
/// write fails with EFBIG like a full disk, and is reported and healed as
/// one (see README "Durability").
fn survive_file_size_limits() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let xfsz = SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
        // Once registered, the runtime's handler stays for the process's
        // life; the stream itself is not needed.
        drop(signal(xfsz).context("taking SIGXFSZ")?);
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Sets up logging from `STEVEDORE_LOG` (default `info`). A filter that
/// would silently log nothing useful is a startup error, not a surprise.
fn init_tracing(format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("STEVEDORE_LOG") {
        Ok(spec) => log_filter(&spec)?,
        Err(std::env::VarError::NotPresent) => tracing_subscriber::EnvFilter::new("info"),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("STEVEDORE_LOG: not valid UTF-8")
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr a file on a full disk)
        // is lost: by default the subscriber reports it with `eprintln!`,
        // which panics the thread that logged, the store's writers among
        // them.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Parses a `STEVEDORE_LOG` filter. Besides the syntax, a directive
/// without `=` must be a level: `EnvFilter` would take a misspelt level
/// (`debugg`) as a target name and log nothing else, including the
/// warnings that authentication is off. A target alone is written
/// `target=trace`.
fn log_filter(spec: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            let hint = stevedore::suggest::hint(&directive.to_ascii_lowercase(), LEVELS);
            anyhow::bail!(
                "STEVEDORE_LOG: `{directive}` is not a level{hint}; use one of {} or \
                 target=level directives, e.g. `info,stevedore=debug`",
                LEVELS.join(", ")
            );
        }
    }
    tracing_subscriber::EnvFilter::try_new(spec).map_err(|e| anyhow::anyhow!("STEVEDORE_LOG: {e}"))
}
