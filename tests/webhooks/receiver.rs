//! A real webhook receiver: a small hyper server on a free port that
//! records every request, checks its signatures with an independent
//! Standard Webhooks implementation (the `standardwebhooks` crate) and
//! answers as the test scripts it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::watch;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// This status at once.
    Status(u16),
    /// This status with `Retry-After: N` (seconds).
    RetryAfter(u16, u64),
    /// This status after a delay.
    After(Duration, u16),
}

/// Picks the reply from the webhook-id and how many times that id came
/// (1 for the first).
pub(crate) type Script = Arc<dyn Fn(&str, usize) -> Reply + Send + Sync>;

/// One request as received.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) at: Instant,
    pub(crate) id: String,
    pub(crate) body: Value,
    /// Every configured secret's signature verified (by `standardwebhooks`).
    pub(crate) verified: bool,
    /// Number of `v1,` signatures in the header.
    pub(crate) signatures: usize,
}

pub(crate) struct Receiver {
    pub(crate) url: String,
    log: Arc<Mutex<Vec<Received>>>,
    changed: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts a receiver that verifies with every one of `secrets`.
    pub(crate) async fn start(secrets: &[String], script: Script) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let verifiers: Arc<Vec<standardwebhooks::Webhook>> =
            Arc::new(secrets.iter().map(|s| standardwebhooks::Webhook::new(s).unwrap()).collect());
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let state = (Arc::clone(&log), counts, verifiers, script, tx);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (log, counts, verifiers, script, tx) = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (log, counts, verifiers, script, tx) =
                            (log.clone(), counts.clone(), verifiers.clone(), script.clone(), tx.clone());
                        async move {
                            let at = Instant::now();
                            let headers = req.headers().clone();
                            let body =
                                req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let id = headers
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let signatures = headers
                                .get("webhook-signature")
                                .and_then(|v| v.to_str().ok())
                                .map(|s| s.split(' ').filter(|p| p.starts_with("v1,")).count())
                                .unwrap_or(0);
                            let verified = !verifiers.is_empty()
                                && verifiers.iter().all(|v| v.verify(&body, &headers).is_ok());
                            let n = {
                                let mut c = counts.lock().unwrap();
                                let n = c.entry(id.clone()).or_default();
                                *n += 1;
                                *n
                            };
                            let reply = script(&id, n);
                            let received = Received {
                                at,
                                id: id.clone(),
                                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                                verified,
                                signatures,
                            };
                            let len = {
                                let mut log = log.lock().unwrap();
                                log.push(received);
                                log.len()
                            };
                            tx.send_replace(len);
                            let mut res = Response::new(Full::new(Bytes::new()));
                            let status = match reply {
                                Reply::Status(s) => s,
                                Reply::RetryAfter(s, secs) => {
                                    res.headers_mut()
                                        .insert("retry-after", secs.to_string().parse().unwrap());
                                    s
                                }
                                Reply::After(d, s) => {
                                    tokio::time::sleep(d).await; // the scripted slow answer itself
                                    s
                                }
                            };
                            *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Receiver { url, log, changed, task }
    }

    /// Every request so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded by `within`) until `done` holds for the requests.
    pub(crate) async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        match self.try_wait_for(within, done).await {
            Some(v) => v,
            None => {
                let got = self.received();
                let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
                panic!("receiver: {what} not seen within {within:?}; got {} requests: {ids:?}", got.len())
            }
        }
    }

    /// Waits (bounded by `within`) until `done` holds; `None` on timeout.
    pub(crate) async fn try_wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Option<Vec<Received>> {
        let mut changed = self.changed.clone();
        let wait = async {
            loop {
                {
                    let log = self.log.lock().unwrap();
                    if done(&log) {
                        return log.clone();
                    }
                }
                changed.changed().await.unwrap();
            }
        };
        tokio::time::timeout(within, wait).await.ok()
    }

    /// Distinct webhook-ids received.
    pub(crate) fn distinct(&self) -> std::collections::BTreeSet<String> {
        self.received().into_iter().map(|r| r.id).collect()
    }
}

/// A script answering `status` to everything.
pub(crate) fn always(status: u16) -> Script {
    Arc::new(move |_, _| Reply::Status(status))
}
