//! Command-line arguments and the choices they name.

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Transport {
    Ws,
    Sse,
    Poll,
    /// `Subscribe` streams over HTTP/2.
    Grpc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Flavour {
    Rtgate,
    Nchan,
}

/// Fan-out load generator (rtgate over WebSocket, SSE or long polling; Nchan over WebSocket).
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
pub(crate) struct Args {
    /// Server protocol flavour.
    #[arg(long, value_enum, default_value = "rtgate")]
    pub(crate) server: Flavour,
    /// Server base URL, http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// Topic / channel name (default: a fresh one per run).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Server base URL for the subscribers (default: --url).
    #[arg(long)]
    pub(crate) sub_url: Option<String>,
    /// Number of WebSocket subscriber connections (fan-out: all on one topic;
    /// default 1000, throughput mode: default 0).
    #[arg(long)]
    pub(crate) subscribers: Option<usize>,
    /// Connections opened concurrently.
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// Messages published per second.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Publishing time in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Size of each published JSON body in bytes.
    #[arg(long, default_value_t = 128)]
    pub(crate) payload: usize,
    /// Seconds to wait for in-flight deliveries after the last publish.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) drain: f64,
    /// Seconds to wait after all subscribers connected, before publishing / measuring.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) settle: f64,
    /// Idle mode: open the connections, report, hold them, exit.
    #[arg(long)]
    pub(crate) idle: bool,
    /// Idle mode: seconds to hold the connections after reporting.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) hold: f64,
    /// Server PIDs to sample (comma separated): CPU over the window, RSS at the end.
    #[arg(long, value_delimiter = ',')]
    pub(crate) server_pid: Vec<u32>,
    /// Runtime worker threads; 1 = current-thread runtime (pin with taskset -c 0).
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Also print one JSON line with all figures.
    #[arg(long)]
    pub(crate) json: bool,
    /// Free-form label copied into the JSON line.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
    /// Publish-throughput mode (rtgate): publishers send as fast as they can.
    #[arg(long)]
    pub(crate) throughput: bool,
    /// Throughput mode: concurrent publishers (connections).
    #[arg(long, default_value_t = 16)]
    pub(crate) publishers: usize,
    /// How publishes are sent (fan-out mode: http or grpc only).
    #[arg(long, value_enum, default_value = "http")]
    pub(crate) via: Via,
    /// Throughput mode: unacknowledged publishes per connection (--via ws and
    /// grpc-connect) or concurrent calls per connection (--via grpc-publish).
    #[arg(long, default_value_t = 32)]
    pub(crate) inflight: usize,
    /// Throughput mode: topics the publishes are spread over (TOPIC-0 .. TOPIC-{M-1} when M > 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) topics: usize,
    /// Throughput mode: stop after this many publishes in all (0 = run for --duration).
    #[arg(long, default_value_t = 0)]
    pub(crate) count: u64,
    /// Shell command run right before the first publish (after connecting and settling).
    #[arg(long)]
    pub(crate) before_publish: Option<String>,
    /// Shell command run after the last publish and the delivery drain.
    #[arg(long)]
    pub(crate) after_publish: Option<String>,
    /// Subscriber transport (sse, poll and grpc: --server rtgate only).
    #[arg(long, value_enum, default_value = "ws")]
    pub(crate) transport: Transport,
    /// --transport grpc: HTTP/2 connections the Subscribe streams are spread
    /// over (default: one per 100 streams).
    #[arg(long)]
    pub(crate) grpc_conns: Option<usize>,
    /// --transport poll: seconds each poll may be held (default 30; 60 with --idle).
    #[arg(long)]
    pub(crate) poll_timeout: Option<f64>,
    /// Replay-speed mode (rtgate): publish N messages to a fresh topic
    /// (--publishers HTTP connections), then time one SSE client resuming from
    /// before the first of them.
    #[arg(long, default_value_t = 0)]
    pub(crate) replay: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Via {
    /// POST /v1/publish/{topic}, one request in flight per connection.
    Http,
    /// WebSocket `publish` frames.
    Ws,
    /// The unary `Publish` rpc.
    #[value(alias = "grpc")]
    GrpcPublish,
    /// Publish ops on `Connect` streams.
    GrpcConnect,
}

/// The command-line name of a value (`grpc-publish`).
pub(crate) fn name(v: impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// HTTP/2 connections for `n` gRPC subscribers: --grpc-conns, or one per 100 streams.
pub(crate) fn grpc_conns(args: &Args, n: usize) -> usize {
    args.grpc_conns.unwrap_or(n.div_ceil(100)).max(1)
}

/// Seconds a poll subscriber's polls may be held.
pub(crate) fn poll_timeout(args: &Args) -> f64 {
    args.poll_timeout.unwrap_or(if args.idle { 60.0 } else { 30.0 })
}
