//! The `rtgate` binary: parse flags, load config, log, bind, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rtgate::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

/// jemalloc, not the platform's `malloc`: with glibc, 19,900 idle
/// WebSockets left the heap 43 % free fragments (each handshake's
/// short-lived buffers between connections' long-lived state); jemalloc's
/// size classes keep them apart. RSS per idle connection 4,260 → ~2,400 B.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// rtgate: a realtime gateway (WebSocket, SSE, long polling, gRPC and an HTTP API) over one topic bus.
///
/// Without a subcommand: runs the server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML); see gateway.toml for every key.
    #[arg(long, short = 'c', env = "RTGATE_CONFIG", global = true)]
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
    /// Serve the chat demo at /demo/ (sets `demo.enabled`; adds a `chat.*`
    /// topic policy with presence when no rule matches the demo's topics).
    #[arg(long)]
    demo: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a token for trying rtgate out: HS256 with --secret, RS256 or
    /// ES256 with --key (production tokens come from your own auth service).
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The HS256 secret; default: the first `auth.hmac_secrets` entry of
    /// the configuration (--config).
    #[arg(long, conflicts_with = "key")]
    secret: Option<String>,
    /// Sign with this PEM private key instead: RS256 (RSA) or ES256 (EC
    /// P-256), e.g. to try `auth.rsa_public_keys` / `ec_public_keys`.
    #[arg(long, value_name = "PEM_FILE")]
    key: Option<std::path::PathBuf>,
    /// The `kid` header (with --key), naming the key in a JWKS file.
    #[arg(long, requires = "key")]
    kid: Option<String>,
    /// The user id (`sub`).
    #[arg(long)]
    sub: Option<String>,
    /// A topic pattern the token may subscribe to (`*` matches any run of
    /// characters); repeat for more.
    #[arg(long, value_name = "PATTERN")]
    subscribe: Vec<String>,
    /// A topic pattern the token may publish to; repeat for more.
    #[arg(long, value_name = "PATTERN")]
    publish: Vec<String>,
    /// Lifetime (`exp` = now + this), e.g. 30m, 1h, 7d; 0 for no `exp` (a
    /// token that never expires).
    #[arg(long, default_value = "1h", value_parser = humantime_serde::re::humantime::parse_duration)]
    ttl: std::time::Duration,
    /// The `info` claim presence shows: JSON, e.g. '{"name":"Alice"}'.
    #[arg(long, value_parser = parse_json)]
    info: Option<serde_json::Value>,
    /// The `iss` claim.
    #[arg(long)]
    iss: Option<String>,
    /// The `aud` claim.
    #[arg(long)]
    aud: Option<String>,
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

/// `rtgate token`: mints and prints a token.
fn token(args: TokenArgs, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let spec = rtgate::auth::TokenSpec {
        sub: args.sub,
        subscribe: args.subscribe,
        publish: args.publish,
        ttl: Some(args.ttl).filter(|t| !t.is_zero()),
        info: args.info,
        issuer: args.iss,
        audience: args.aud,
    };
    if let Some(path) = &args.key {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let token = rtgate::auth::mint_pem(&pem, args.kid.as_deref(), &spec)?;
        #[allow(clippy::print_stdout)]
        {
            println!("{token}");
        }
        return Ok(());
    }
    let secret = match args.secret {
        Some(s) => s,
        None => {
            let loaded = Config::load(config).context("invalid configuration")?;
            loaded.config.auth.hmac_secrets.into_iter().next().context(
                "no --secret and no auth.hmac_secrets in the configuration (--config, RTGATE_AUTH__HMAC_SECRETS)",
            )?
        }
    };
    let token = rtgate::auth::mint(secret.as_bytes(), &spec)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{token}");
    }
    Ok(())
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
    if let Some(Command::Token(args)) = cli.command {
        return token(args, cli.config.as_deref());
    }
    let loaded = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    let mut config = loaded.config;
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(f) = cli.log_format {
        config.log.format = f;
    }
    if cli.demo {
        config.demo.enabled = true;
    }
    config.apply_demo();
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
    let retired = config.retired_keys();
    if !retired.is_empty() {
        tracing::warn!(keys = %retired.join(" "), "configuration keys that no longer have an effect; ignored");
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
