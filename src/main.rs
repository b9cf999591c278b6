//! The `stevedore` binary: `stevedore serve [--config FILE] [--listen ADDR] [--data-dir DIR]`.

use std::{io::Write, path::PathBuf};

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
    },
}

fn main() -> anyhow::Result<()> {
    let Command::Serve {
        config,
        listen,
        data_dir,
    } = Cli::parse().command;
    let flags: Vec<(&str, String)> = [("listen", listen), ("data_dir", data_dir)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let config = Config::load(config.as_deref(), std::env::vars(), &flags)?;
    init_tracing(config.log_format);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    // One machine-readable line for scripts and tests (port 0 picks a port).
    println!("stevedore listening on {addr}");
    std::io::stdout().flush()?;

    let deadline = config.shutdown_timeout;
    let (signalled_tx, signalled_rx) = oneshot::channel();
    let shutdown = async move {
        wait_for_signal().await;
        let _ = signalled_tx.send(());
    };
    let mut server = tokio::spawn(stevedore::run(config, listener, shutdown));
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

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEVEDORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
