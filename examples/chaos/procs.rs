//! The processes under test: one `redis-server` with append-only
//! persistence and the `rtgate` gateways, each on a fixed loopback port so
//! a restart comes back where clients look for it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A port free right now on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn log_file(path: &Path) -> Result<(File, File), String> {
    let f = OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{path:?}: {e}"))?;
    let g = f.try_clone().map_err(|e| e.to_string())?;
    Ok((f, g))
}

/// Waits (bounded) for `check` to succeed.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a process coming up, bounded
    }
    Err(format!("{what} not up within {within:?}"))
}

/// Sends `sig` (e.g. "TERM", "KILL") to `child`.
fn signal(child: &Child, sig: &str) -> Result<(), String> {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if ok.success() {
        Ok(())
    } else {
        Err(format!("kill -{sig} {} failed", child.id()))
    }
}

/// Waits (bounded) for `child` to exit.
async fn exited(child: &mut Child, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("pid {} still running after {within:?}", child.id()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the child, bounded
    }
}

/// `redis-server` on a fixed port and directory, `appendfsync always`: a
/// write it acknowledged survives SIGTERM and a restart.
pub(crate) struct Redis {
    pub(crate) port: u16,
    bin: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub(crate) async fn start(bin: &str, dir: &Path) -> Result<Redis, String> {
        let mut r = Redis { port: free_port()?, bin: bin.to_owned(), dir: dir.to_owned(), child: None };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let (out, err) = log_file(&self.dir.join("redis.log"))?;
        let child = Command::new(&self.bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.bin))?;
        self.child = Some(child);
        let port = self.port;
        wait_for("redis-server", Duration::from_secs(30), || ping(port)).await
    }

    /// SIGTERM (Redis fsyncs its AOF and exits), then the same server again
    /// on the same port and directory.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        if let Some(mut c) = self.child.take() {
            signal(&c, "TERM")?;
            exited(&mut c, Duration::from_secs(30)).await?;
        }
        self.spawn().await
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `PING` answered `+PONG` (a loading Redis answers `-LOADING`).
async fn ping(port: u16) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(("127.0.0.1", port))).await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
}

/// One `rtgate` process on a fixed port with a config file.
pub(crate) struct Gateway {
    pub(crate) name: &'static str,
    pub(crate) port: u16,
    bin: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Gateway {
    pub(crate) async fn start(
        name: &'static str,
        bin: &str,
        config: &Path,
        dir: &Path,
        http: reqwest::Client,
    ) -> Result<Gateway, String> {
        let mut g = Gateway {
            name,
            port: free_port()?,
            bin: bin.to_owned(),
            config: config.to_owned(),
            log: dir.join(format!("gateway-{name}.log")),
            child: None,
            http,
        };
        g.spawn().await?;
        Ok(g)
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (out, err) = log_file(&self.log)?;
            let mut child = Command::new(&self.bin)
                .arg("--listen")
                .arg(self.addr())
                .arg("--config")
                .arg(&self.config)
                .env_remove("RTGATE_CONFIG")
                .env_remove("RTGATE_LISTEN")
                // info: one line per connection close, with its reason (counted at the end).
                .env("RUST_LOG", std::env::var("CHAOS_GATEWAY_LOG").unwrap_or_else(|_| "info".into()))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("{}: {e}", self.bin))?;
            let url = format!("http://{}/healthz", self.addr());
            let http = self.http.clone();
            let up = wait_for("rtgate", Duration::from_secs(5), || {
                let (http, url) = (http.clone(), url.clone());
                async move { http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) }
            })
            .await;
            match up {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    // Most likely the port is not free yet after a kill: retry, bounded.
                    let _ = child.kill();
                    let _ = child.wait();
                    if Instant::now() >= deadline {
                        return Err(format!("gateway {}: {e} (see {:?})", self.name, self.log));
                    }
                }
            }
        }
    }

    /// `kill -9`: no drain, no goodbye to clients.
    pub(crate) async fn kill9(&mut self) -> Result<(), String> {
        if let Some(mut c) = self.child.take() {
            signal(&c, "KILL")?;
            exited(&mut c, Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// Starts again on the same port.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        self.spawn().await
    }

    /// Server-side closes for `reason` per transport, from the log of
    /// every process that ran on this gateway (lines
    /// `connection closed transport="ws" ... reason="slow_consumer"`).
    pub(crate) fn closes(&self, reason: &str) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let want = format!("reason=\"{reason}\"");
        for line in text.lines().filter(|l| l.contains("connection closed") && l.contains(&want)) {
            if let Some(t) = line.split("transport=\"").nth(1).and_then(|r| r.split('"').next()) {
                *out.entry(t.to_owned()).or_default() += 1;
            }
        }
        out
    }

    /// True while the process runs.
    pub(crate) fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
