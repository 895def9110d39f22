//! Opens the subscribers over `--transport`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::args::{grpc_conns, poll_timeout, Args, Flavour, Transport};
use crate::grpc::{grpc_client, grpc_subscriber};
use crate::poll::poll_subscriber;
use crate::sse::sse_subscriber;
use crate::stats::Shared;
use crate::ws::subscriber;

/// Opens the subscribers over `--transport` (subscriber i on topic i % topics.len())
/// and waits until each is connected or failed. Returns (connected, failed, seconds).
pub(crate) async fn connect_subs(
    sh: &Arc<Shared>,
    args: &Args,
    n: usize,
    addr: &str,
    topics: &[String],
) -> (u64, u64, f64) {
    let t_conn = Instant::now();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let urls: Vec<String> = topics
        .iter()
        .map(|t| match (args.transport, args.server) {
            (Transport::Ws, Flavour::Rtgate) => format!("ws://{addr}/v1/ws?topic={t}"),
            (Transport::Ws, Flavour::Nchan) => format!("ws://{addr}/sub/{t}"),
            (Transport::Sse, _) => format!("http://{addr}/v1/sse?topic={t}"),
            (Transport::Poll, _) => format!("http://{addr}/v1/poll?topic={t}"),
            (Transport::Grpc, _) => format!("http://{addr} rtgate.v1.Gateway/Subscribe {t}"),
        })
        .collect();
    let grpc: Vec<_> = match args.transport {
        Transport::Grpc => match (0..grpc_conns(args, n)).map(|_| grpc_client(addr)).collect() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return (0, n as u64, 0.0);
            }
        },
        _ => Vec::new(),
    };
    for i in 0..n {
        let ti = i % topics.len().max(1);
        let (sh, sem, addr, topic) = (sh.clone(), sem.clone(), addr.to_string(), topics[ti].clone());
        match args.transport {
            Transport::Ws => tokio::spawn(subscriber(sh, sem, args.server, addr, urls[ti].clone(), ti)),
            Transport::Sse => tokio::spawn(sse_subscriber(sh, sem, addr, topic, ti, None)),
            Transport::Poll => tokio::spawn(poll_subscriber(sh, sem, addr, topic, ti, poll_timeout(args))),
            Transport::Grpc => {
                tokio::spawn(grpc_subscriber(sh, sem, grpc[i % grpc.len()].clone(), topic, ti))
            }
        };
    }
    let n = n as u64;
    let conn_deadline = Instant::now() + Duration::from_secs(60 + n / 50);
    loop {
        let done = sh.connected.load(Relaxed) + sh.connect_failed.load(Relaxed);
        if done >= n || Instant::now() > conn_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t_conn.elapsed().as_secs_f64();
    let connected = sh.connected.load(Relaxed);
    let failed = sh.connect_failed.load(Relaxed);
    if n > 0 {
        eprintln!(
            "{connected}/{n} connected ({failed} failed) in {connect_s:.2}s to {}{}{}",
            urls[0],
            if urls.len() > 1 { " ..." } else { "" },
            if grpc.is_empty() { String::new() } else { format!(" over {} HTTP/2 connections", grpc.len()) }
        );
    }
    (connected, failed, connect_s)
}
