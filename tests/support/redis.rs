//! Real `redis-server` processes for tests: one per test, on a free port,
//! in a fresh directory; a three-node Cluster on demand. Missing
//! `redis-server` fails the test with an install hint (never skips).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::disallowed_types)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::TestServer;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn require(bin: &str) {
    let ok = Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(
        ok,
        "`{bin}` not found: install it (Debian: apt-get install -y redis-server); scripts/test does this"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port `p` with `p + 10000` also free (Cluster bus port).
fn free_cluster_port() -> u16 {
    for _ in 0..200 {
        let p = 20000 + (rand_u32() % 20000) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    t ^ (std::process::id() << 8) ^ NEXT.fetch_add(7919, Ordering::Relaxed).wrapping_mul(2654435761)
}

/// Runs `redis-cli` against `port`, returning stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `[engine] kind = "redis"` on `url`, then `rest`: more `[redis]` keys,
/// other tables, or both.
pub fn redis_cfg(url: &str, rest: &str) -> String {
    format!("[engine]\nkind = \"redis\"\n[redis]\nurl = \"{url}\"\n{rest}\n")
}

/// One `redis-server` child.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a fresh server with append-only persistence (`appendfsync
    /// always`: an acknowledged write survives a restart).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        require("redis-server");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("rtgate-redis-{}-{n}-{}", std::process::id(), rand_u32()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port =
                if extra.iter().any(|a| a.contains("cluster")) { free_cluster_port() } else { free_port() };
            let mut s = RedisServer {
                port,
                dir: dir.clone(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cli(self.port, &["ping"]).trim() == "PONG" {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("no PONG within 10 s".into())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A server config on the Redis engine on this server: [`redis_cfg`].
    pub fn config(&self, rest: &str) -> String {
        redis_cfg(&self.url(), rest)
    }

    /// Two in-process gateways (A, then B) sharing this Redis, both
    /// configured with [`RedisServer::config`]`(rest)`.
    pub async fn two_servers(&self, rest: &str) -> (TestServer, TestServer) {
        let cfg = self.config(rest);
        (TestServer::start(&cfg).await, TestServer::start(&cfg).await)
    }

    /// Stops the server (SIGTERM: it writes its append-only file) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it, deletes its data directory's contents and starts it again
    /// on the same port: Redis restarted without its data.
    pub fn restart_empty(&mut self) {
        self.stop();
        for entry in std::fs::read_dir(&self.dir).expect("redis data dir") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).expect("remove dir");
            } else {
                std::fs::remove_file(&p).expect("remove file");
            }
        }
        self.restart();
    }

    /// Starts it again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters created with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        require("redis-cli");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                if cli(n.port, &["cluster", "info"]).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// Redis refusing writes (`CLIENT PAUSE .. WRITE`) until dropped or
/// [`Paused::end`]: a publish sent meanwhile is held in flight.
pub struct Paused(u16);

impl Paused {
    pub fn writes(redis: &RedisServer) -> Paused {
        assert_eq!(cli(redis.port, &["client", "pause", "60000", "write"]).trim(), "OK");
        Paused(redis.port)
    }

    /// Waits (bounded) until a script (the publish) is held by the pause.
    pub async fn until_held(&self) {
        let deadline = Instant::now() + super::WAIT;
        loop {
            let list = cli(self.0, &["client", "list"]);
            let held = list.lines().any(|l| {
                let field = |k: &str| l.split(' ').find_map(|f| f.strip_prefix(k)).unwrap_or("");
                matches!(field("cmd="), "evalsha" | "eval") && field("flags=").contains('b')
            });
            if held {
                return;
            }
            assert!(Instant::now() < deadline, "no script held by the pause: {list}");
            tokio::time::sleep(Duration::from_millis(20)).await; // polling CLIENT LIST, bounded
        }
    }

    /// Lets writes through again.
    pub fn end(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        cli(self.0, &["client", "unpause"]);
    }
}
