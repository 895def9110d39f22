//! The request body deadline (`http.body_timeout`): a request body (not
//! gRPC) must have fully arrived that long after its headers. Otherwise a
//! client trickling a publish body holds a connection, and a permit, for as
//! long as it likes. A late body is answered `408` with code `bad_request`
//! (the contract's code for a request the server cannot use; the status
//! tells clients that a retry may succeed), and the connection is closed
//! (HTTP/1.1: the rest of the body cannot be told from a next request).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue, Request, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::error::{ApiError, Code};

/// The future of a request whose body has a deadline.
pub(super) type Deadlined = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Routes `req` through `router` with a body that fails once `timeout` has
/// passed; answers 408 when it did.
pub(super) fn deadline(router: &mut Router, req: Request<Incoming>, timeout: Duration) -> Deadlined {
    let timed_out = Arc::new(AtomicBool::new(false));
    let version = req.version();
    let flag = Arc::clone(&timed_out);
    let req = req.map(move |inner| DeadlineBody {
        inner,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        timeout,
        timed_out: flag,
    });
    let fut = tower::Service::call(router, req);
    Box::pin(async move {
        let res = fut.await?;
        if !timed_out.load(Ordering::Acquire) {
            return Ok(res);
        }
        tracing::debug!(?timeout, "request body not received in time");
        let mut res =
            ApiError::new(Code::BadRequest, format!("request body not received within {timeout:?}"))
                .into_response();
        *res.status_mut() = StatusCode::REQUEST_TIMEOUT;
        if version < Version::HTTP_2 {
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(res)
    })
}

/// The body did not arrive within `http.body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub(super) struct BodyTimeout(Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline passed.
struct DeadlineBody {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    timed_out: Arc<AtomicBool>,
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
