//! The `rtgate` binary: parse flags, load config, log, bind, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use rtgate::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

/// rtgate: a realtime gateway (WebSocket, SSE, long polling, gRPC and an HTTP API) over one topic bus.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); see gateway.toml for every key.
    #[arg(long, short = 'c', env = "RTGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Log format (overrides `log.format`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), no backtrace: this is what an operator sees.
            eprintln!("rtgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Binds with a deep accept queue (4096; the kernel caps it at
/// `net.core.somaxconn`): connection bursts of thousands of clients are
/// normal for a gateway, and tokio's default of 1024 overflows.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let loaded = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    let mut config = loaded.config;
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(f) = cli.log_format {
        config.log.format = f;
    }
    if cli.print_config {
        #[allow(clippy::print_stdout)]
        {
            print!("{}", config.to_toml());
        }
        return Ok(());
    }
    let _telemetry = rtgate::telemetry::init(&config.log).context("invalid configuration")?;
    if !loaded.ignored_env.is_empty() {
        tracing::warn!(
            variables = %loaded.ignored_env.join(" "),
            "environment variables with the RTGATE_ prefix name no configuration key; ignored"
        );
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open file limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let token = CancellationToken::new();
        let signal_token = token.clone();
        tokio::spawn(async move {
            rtgate::shutdown::signal().await;
            signal_token.cancel();
        });
        rtgate::run(listener, config, token).await.context("server failed")
    })
}
