//! Webhooks on the Redis engine: several processes share one outbox, each
//! message reaches each endpoint once, and a process killed with
//! SIGKILL mid-delivery loses nothing (its deliveries are taken over after
//! the visibility timeout).

use std::sync::Arc;
use std::time::Duration;

use crate::receiver::{always, Receiver, Reply};
use crate::support::binary::Gateway;
use crate::support::redis::{cli, RedisServer};
use crate::{endpoint, publish, secret, WAIT};

/// Deliveries pending in every outbox of `endpoint` (2 key groups).
fn pending(port: u16, endpoint: &str) -> u64 {
    (0..2)
        .map(|g| {
            let out = cli(port, &["XPENDING", &format!("rtgate:{{s{g}}}:o"), &format!("wh:{endpoint}")]);
            out.lines().next().and_then(|l| l.trim().parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

/// Polls (bounded) until nothing is pending for `endpoint`.
async fn wait_settled(port: u16, endpoint: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while pending(port, endpoint) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "deliveries of {endpoint} still pending");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling Redis, bounded
    }
}

#[tokio::test]
async fn two_processes_deliver_each_message_once_per_endpoint() {
    let redis = RedisServer::start();
    let secrets = [secret("r")];
    let a = Receiver::start(&secrets, always(200)).await;
    let b = Receiver::start(&secrets, always(200)).await;
    let rest = format!(
        "shards = 2\n{}{}",
        endpoint("a", &a.url, &secrets, "*", ""),
        endpoint("b", &b.url, &secrets, "news.*", "")
    );
    let (s1, s2) = redis.two_servers(&rest).await;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..60 {
        let s = if i % 2 == 0 { &s1 } else { &s2 };
        let topic = if i % 3 == 0 { "other" } else { "news.x" };
        let id = publish(&s.http, &s.url(""), topic, &i.to_string(), None).await;
        ids.insert(format!("{topic}:{id}"));
    }
    let news: std::collections::BTreeSet<String> =
        ids.iter().filter(|i| i.starts_with("news.")).cloned().collect();
    a.wait_for(WAIT, "every message at a", |r| r.len() >= 60).await;
    b.wait_for(WAIT, "the news messages at b", |r| r.len() >= news.len()).await;
    wait_settled(redis.port, "a").await;
    wait_settled(redis.port, "b").await;
    // Nothing pending any more: no delivery is still on its way.
    assert_eq!(a.received().len(), 60, "each message once at a");
    assert_eq!(a.distinct(), ids);
    assert_eq!(b.received().len(), news.len(), "each matching message once at b");
    assert_eq!(b.distinct(), news);
    assert!(a.received().iter().all(|r| r.verified));
    s1.stop().await;
    s2.stop().await;
}

#[tokio::test]
async fn a_killed_process_loses_no_delivery() {
    let redis = RedisServer::start();
    let secrets = [secret("k")];
    // Slow answers: many deliveries are in flight when the kill comes.
    let rx =
        Receiver::start(&secrets, Arc::new(|_: &str, _| Reply::After(Duration::from_millis(100), 200))).await;
    let cfg = format!(
        "[engine]\nkind = \"redis\"\n[redis]\nurl = {:?}\nshards = 2\n[webhook_queue]\nvisibility_timeout = \"1s\"\n\
         poll_interval = \"50ms\"\n{}",
        redis.url(),
        endpoint("k", &rx.url, &secrets, "*", "concurrency = 4")
    );
    let dir = std::env::temp_dir().join(format!("rtgate-wh-{}-{}", std::process::id(), redis.port));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, cfg).unwrap();
    let path = path.to_str().unwrap();
    let mut victim = Gateway::spawn(&["--config", path], &[]).await;
    let survivor = Gateway::spawn(&["--config", path], &[]).await;
    let http = reqwest::Client::new();
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..60 {
        let g = if i % 2 == 0 { &victim } else { &survivor };
        let id = publish(&http, &g.url(""), "jobs", &i.to_string(), None).await;
        ids.insert(format!("jobs:{id}"));
    }
    rx.wait_for(WAIT, "some deliveries before the kill", |r| r.len() >= 5).await;
    victim.child.kill().unwrap(); // SIGKILL
    victim.exited(WAIT).await;
    // Published after the kill: only the survivor's own reads deliver these.
    for i in 0..10 {
        let id = publish(&http, &survivor.url(""), "jobs", &format!("\"after-{i}\""), None).await;
        ids.insert(format!("jobs:{id}"));
    }
    let all = |r: &[crate::receiver::Received]| {
        r.iter().map(|x| &x.id).collect::<std::collections::BTreeSet<_>>().len() >= ids.len()
    };
    let Some(got) = rx.try_wait_for(Duration::from_secs(20), all).await else {
        let seen = rx.distinct();
        let missing: Vec<&String> = ids.difference(&seen).collect();
        let pel: Vec<String> = (0..2)
            .map(|g| cli(redis.port, &["XPENDING", &format!("rtgate:{{s{g}}}:o"), "wh:k", "-", "+", "100"]))
            .collect();
        let groups: Vec<String> =
            (0..2).map(|g| cli(redis.port, &["XINFO", "GROUPS", &format!("rtgate:{{s{g}}}:o")])).collect();
        panic!(
            "missing after the kill: {missing:?}\npending: {pel:?}\ngroups: {groups:?}\nsurvivor logs:\n{}",
            survivor.logs()
        );
    };
    wait_settled(redis.port, "k").await;
    let distinct = rx.distinct();
    assert_eq!(
        distinct, ids,
        "every message delivered at least once; after de-duplication exactly the published set"
    );
    assert!(got.iter().all(|r| r.verified));
    drop(survivor);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis restarted empty (its consumer groups gone): workers recreate their
/// groups and deliver what is published afterwards.
#[tokio::test]
async fn deliveries_resume_after_redis_lost_its_data() {
    let mut redis = RedisServer::start();
    let secrets = [secret("l")];
    let rx = Receiver::start(&secrets, always(200)).await;
    let s =
        crate::support::TestServer::start(&redis.config(&endpoint("lost", &rx.url, &secrets, "*", ""))).await;
    let before = publish(&s.http, &s.url(""), "t", "1", None).await;
    rx.wait_for(WAIT, "the first delivery", |r| r.len() == 1).await;
    redis.restart_empty();
    // Publishes answer 503 until the process has reconnected (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let (status, v) = s.publish_raw("t", "2", None).await;
        if status == 200 {
            break v["id"].as_str().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "publishes refused after the restart: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the reconnect, bounded
    };
    let got = rx.wait_for(WAIT, "the delivery after the restart", |r| r.len() >= 2).await;
    assert_eq!(got[0].id, format!("t:{before}"));
    assert_eq!(got[1].id, format!("t:{after}"));
    s.stop().await;
}

/// On a Redis Cluster every outbox, dead-letter and lease command stays in
/// one slot: deliveries, a dead letter and its redrive work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_work_on_a_redis_cluster() {
    let cluster = tokio::task::block_in_place(crate::support::redis::RedisCluster::start);
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let secrets = [secret("cl")];
    let script =
        Arc::new(|id: &str, n: usize| Reply::Status(if id.starts_with("bad") && n == 1 { 400 } else { 200 }));
    let rx = Receiver::start(&secrets, script).await;
    let toml = format!(
        "[engine]\nkind = \"redis\"\n[redis]\ncluster_urls = [{}]\n{}",
        urls.join(", "),
        endpoint("cl", &rx.url, &secrets, "*", "ordered = true")
    );
    let s = crate::support::TestServer::start(&toml).await;
    crate::support::wait_status(&s, "/readyz", 200, WAIT).await;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..20 {
        let topic = format!("cl.{i}");
        ids.insert(format!("{topic}:{}", publish(&s.http, &s.url(""), &topic, "1", None).await));
    }
    let bad = publish(&s.http, &s.url(""), "bad", "1", None).await;
    rx.wait_for(WAIT, "20 deliveries and a refusal", |r| r.len() >= 21).await;
    let items = crate::wait_dead_letters(&s.http, &s.url(""), None, 1).await;
    assert_eq!(items[0]["id"], format!("cl:bad:{bad}"));
    let res =
        s.http.post(s.url(&format!("/v1/webhooks/dead-letters/cl:bad:{bad}/redrive"))).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 202);
    rx.wait_for(WAIT, "the redriven delivery", |r| r.len() >= 22).await;
    ids.insert(format!("bad:{bad}"));
    assert_eq!(rx.distinct(), ids);
    s.stop().await;
}
