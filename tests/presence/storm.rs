//! 1,000 clients reconnecting at once into one room: the frames one
//! presence subscriber gets are bounded by the batch window, not by the
//! number of clients (numbers recorded in docs/presence.md).

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::support::{TestServer, WsClient};
use crate::*;

const N: usize = 1000;

async fn connect_all(s: &TestServer, tokens: &[Option<String>]) -> Vec<WsClient> {
    join_all(tokens.iter().map(|t| member(s, "room.storm", t.as_deref()))).await
}

/// Auth off: every connection is its own user, so a reconnect is N leaves
/// and N joins; they come as a few `presence_diff` frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_costs_a_bounded_number_of_frames() {
    let s = TestServer::start(&presence_cfg(300, 5000)).await;
    let mut w = Watcher::open(&s, "room.storm", None).await;
    let anon = vec![None; N];
    let at = Instant::now();
    let first = connect_all(&s, &anon).await;
    w.until(|w| w.joins.len() == N + 1).await;
    let join_frames = w.frames - 1;
    let join_time = at.elapsed();
    let at = Instant::now();
    drop(first);
    let _second = connect_all(&s, &anon).await;
    w.until(|w| w.joins.len() == 2 * N + 1 && w.leaves.len() == N).await;
    let storm_frames = w.frames - 1 - join_frames;
    eprintln!(
        "presence storm: {N} joins in {join_frames} frames ({join_time:?}); \
         {N} reconnects (new users) in {storm_frames} frames ({:?})",
        at.elapsed()
    );
    assert!(join_frames <= 100, "{join_frames} frames for {N} joins");
    assert!(storm_frames <= 150, "{storm_frames} frames for {N} reconnects");
    let v = wait_list(&s, "room.storm", |v| v["users"].as_u64() == Some(N as u64 + 1)).await;
    assert_eq!(v["clients"].as_array().unwrap().len(), N + 1);
    s.stop().await;
}

/// Auth on: the same N users reconnect within grace: not one frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_the_same_users_is_silent() {
    let s = TestServer::start(&format!("{}{}", presence_cfg(5000, 10000), auth_cfg())).await;
    let topics = ["room.*"];
    let mut w = Watcher::open(&s, "room.storm", Some(&token("watcher", None, &topics))).await;
    let tokens: Vec<Option<String>> =
        (0..N).map(|i| Some(token(&format!("user-{i}"), None, &topics))).collect();
    let first = connect_all(&s, &tokens).await;
    w.until(|w| w.joins.len() == N + 1).await;
    let join_frames = w.frames - 1;
    let at = Instant::now();
    drop(first);
    let _second = connect_all(&s, &tokens).await;
    let took = at.elapsed();
    assert!(took.as_millis() < 5000, "the reconnect took {took:?}, longer than grace");
    // Every old connection's entry gone (grace over)...
    let lister = token("lister", None, &topics);
    wait_list_as(&s, "room.storm", Some(&lister), |v| v["clients"].as_array().unwrap().len() == N + 1).await;
    // ...and the next frame is a newcomer's join: the storm sent none.
    let _late = member(&s, "room.storm", Some(&token("late", None, &topics))).await;
    let f = w.frame().await;
    assert_eq!((f["op"].as_str(), f["user"].as_str()), (Some("join"), Some("late")), "{f}");
    eprintln!("presence storm (same users): {N} joins in {join_frames} frames; {N} reconnects ({took:?}) in 0 frames");
    s.stop().await;
}
