//! WebSocket fan-out load generator for rtgate and for the Nchan peer.
//!
//! N WebSocket subscribers on one topic, one HTTP/1.1 keep-alive publisher at a
//! fixed rate. Every payload carries a sequence number and its send time, so each
//! subscriber measures publish→deliver latency and checks that it sees every
//! sequence number once, in order. Optionally samples the server's CPU and RSS
//! from /proc. `--idle` opens the connections and holds them (RSS per connection).
//! `--sub-url` connects the subscribers to another server than the publisher
//! (two rtgate processes sharing one Redis).
//!
//! `--transport sse|poll` (rtgate only) subscribes over Server-Sent Events (one
//! raw HTTP/1.1 connection per subscriber, events parsed here) or long polling
//! (each subscriber polls on its own keep-alive connection, passing each
//! answer's cursor back); the same latency and sequence checks apply. With
//! `--idle --transport poll` every subscriber holds one poll open
//! (`--poll-timeout`, default 60 s idle) and RSS is sampled once all are sent.
//! `--replay N` publishes N messages to a fresh topic (`--publishers` HTTP
//! connections), then times one SSE client resuming (`lastEventId`) from a
//! cursor taken before the first publish (messages/s, order, loss).
//!
//! `--transport grpc` (rtgate only) opens N `rtgate.v1.Gateway/Subscribe`
//! streams multiplexed over `--grpc-conns` HTTP/2 connections (default: one
//! per 100 streams, the usual MAX_CONCURRENT_STREAMS of gRPC servers and
//! proxies); the publisher uses HTTP, or the unary `Publish` rpc with
//! `--via grpc`.
//!
//! `--throughput` (rtgate only): `--publishers N` publish as fast as they can for
//! `--duration` seconds (or `--count` publishes in all), over HTTP keep-alive
//! (one request in flight per connection), WebSocket (`publish` frames, up to
//! `--inflight` unacknowledged per connection), gRPC `Publish` (`--via
//! grpc-publish`: `--inflight` concurrent calls per HTTP/2 connection) or gRPC
//! `Connect` (`--via grpc-connect`: publish ops on one stream per connection,
//! up to `--inflight` unacknowledged), spread over `--topics` topics.
//! Optional subscribers (subscriber i on topic i % topics) count deliveries.
//! `--before-publish` / `--after-publish` run a shell command right before the
//! first publish and after the last delivery (e.g. to snapshot Redis stats).
//!
//! ```text
//! taskset -c 0 loadgen --server nchan --url http://127.0.0.1:8081 \
//!     --subscribers 1000 --rate 100 --duration 20 --server-pid 123,124 --json
//! taskset -c 0 loadgen --throughput --via ws --publishers 4 --inflight 32 \
//!     --duration 10 --url http://127.0.0.1:8091 --server-pid 123,124,125 --json
//! taskset -c 0 loadgen --transport grpc --subscribers 1000 --rate 100 --duration 20
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_types)]

mod args;
mod fanout;
mod grpc;
mod http;
mod payload;
mod poll;
mod procfs;
mod publishers;
mod replay;
mod sse;
mod stats;
mod subs;
mod throughput;
mod ws;

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

use args::{Args, Flavour, Transport, Via};
use fanout::fanout;
use http::parse_url;
use replay::replay;
use throughput::throughput;

fn main() {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(run(args));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Do not wait for thousands of connection tasks to be torn down.
    std::process::exit(code);
}

/// Runs a --before-publish / --after-publish shell command (its output goes to stderr).
fn hook(cmd: &Option<String>) {
    let Some(cmd) = cmd else { return };
    match std::process::Command::new("sh").arg("-c").arg(cmd).stdout(std::process::Stdio::inherit()).status()
    {
        Ok(s) if s.success() => {}
        other => eprintln!("hook {cmd:?}: {other:?}"),
    }
}

/// Checks the URLs and flags and picks the topic, then runs the replay,
/// throughput or fan-out mode; returns the exit code.
async fn run(args: Args) -> i32 {
    let addrs = parse_url(&args.url)
        .and_then(|a| parse_url(args.sub_url.as_deref().unwrap_or(&args.url)).map(|s| (a, s)));
    let (addr, sub_addr) = match addrs {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let topic = args.topic.clone().unwrap_or_else(|| format!("lg-{unix_ms}-{}", std::process::id()));
    if args.server == Flavour::Nchan
        && (args.transport != Transport::Ws || args.replay > 0 || args.via != Via::Http)
    {
        eprintln!(
            "--transport sse|poll|grpc, --replay and --via other than http support --server rtgate only"
        );
        return 2;
    }
    if args.replay > 0 {
        return replay(args, addr, sub_addr, topic).await;
    }
    if args.throughput {
        return throughput(args, addr, sub_addr, topic).await;
    }
    fanout(args, addr, sub_addr, topic).await
}
