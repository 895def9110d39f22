//! `grpc.health.v1.Health`, reflecting readiness exactly as `/readyz` does:
//! `SERVING` while the engine is reachable and the process is not draining.
//!
//! Ours rather than tonic-health's reporter so that `Check` answers from the
//! live state and `Watch` streams end at shutdown (after saying
//! `NOT_SERVING`) instead of holding their HTTP/2 connection open through
//! the drain.

use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::service::BoxStream;
use crate::state::AppState;

/// How often readiness is sampled for `Watch` streams.
const SAMPLE: Duration = Duration::from_millis(250);

/// The health service, and the task feeding `Watch` streams.
pub(super) fn service(state: AppState) -> HealthServer<HealthService> {
    let (tx, rx) = watch::channel(state.is_ready());
    state.shutdown.spawn(sample(state.clone(), tx));
    HealthServer::new(HealthService { state, ready: rx })
}

/// The health service.
pub(crate) struct HealthService {
    state: AppState,
    ready: watch::Receiver<bool>,
}

/// Services this health service knows: the server as a whole and the gateway.
fn known(service: &str) -> bool {
    service.is_empty() || service == super::SERVICE
}

fn response(serving: bool) -> HealthCheckResponse {
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    HealthCheckResponse { status: status as i32 }
}

/// Publishes readiness changes until shutdown; the last value sent is
/// "not serving", and dropping the sender then ends every `Watch` stream.
async fn sample(state: AppState, tx: watch::Sender<bool>) {
    let mut tick = tokio::time::interval(SAMPLE);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.token().cancelled() => {}
        }
        tx.send_if_modified(|last| {
            let now = state.is_ready();
            std::mem::replace(last, now) != now
        });
        if state.shutdown.is_shutting_down() {
            return;
        }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !known(&request.get_ref().service) {
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(response(self.state.is_ready())))
    }

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let known = known(&request.get_ref().service);
        let mut rx = self.ready.clone();
        let stream = async_stream::stream! {
            if !known {
                yield Ok(HealthCheckResponse { status: ServingStatus::ServiceUnknown as i32 });
                // Nothing will change: wait for shutdown only.
                while rx.changed().await.is_ok() {}
                return;
            }
            let mut serving = *rx.borrow_and_update();
            yield Ok(response(serving));
            while rx.changed().await.is_ok() {
                let now = *rx.borrow_and_update();
                if now != serving {
                    serving = now;
                    yield Ok(response(serving));
                }
            }
            if serving {
                yield Ok(response(false));
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
