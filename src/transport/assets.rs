//! Files served from the binary: the JavaScript client at `GET
//! /v1/client.js` (contract §12) and, when `demo.enabled` (or `--demo`),
//! the chat demo at `/demo/`. Each is embedded at compile time and carries
//! an `ETag` computed once (the first request); a matching
//! `If-None-Match` gets 304.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::Digest as _;

use crate::state::AppState;

/// The client library: the committed build of `clients/js`.
pub const CLIENT_JS: &str = include_str!("../../clients/js/dist/rtgate.js");
/// The chat demo's page.
const DEMO_HTML: &str = include_str!("../../examples/chat/index.html");
/// The chat demo's script.
const DEMO_JS: &str = include_str!("../../examples/chat/chat.js");

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// Browsers and proxies may keep a file this long, then revalidate by ETag.
const CACHE: &str = "public, max-age=300";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = sha2::Sha256::digest(body.as_bytes());
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        let etag = HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""));
        Asset { body, content_type, etag }
    }

    /// 200 with the file, or 304 when `If-None-Match` names its ETag.
    fn serve(&self, headers: &HeaderMap) -> Response {
        let matched = headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == self.etag)
            })
        });
        let common =
            [(header::ETAG, self.etag.clone()), (header::CACHE_CONTROL, HeaderValue::from_static(CACHE))];
        if matched {
            return (StatusCode::NOT_MODIFIED, common).into_response();
        }
        let ct = [(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type))];
        (StatusCode::OK, common, ct, self.body).into_response()
    }
}

static CLIENT: LazyLock<Asset> = LazyLock::new(|| Asset::new(CLIENT_JS, JS));
static DEMO_PAGE: LazyLock<Asset> = LazyLock::new(|| Asset::new(DEMO_HTML, HTML));
static DEMO_SCRIPT: LazyLock<Asset> = LazyLock::new(|| Asset::new(DEMO_JS, JS));

/// `GET /v1/client.js`, and the demo's files when `demo` is on.
pub fn routes(demo: bool) -> Router<AppState> {
    let router = Router::new().route("/v1/client.js", get(|h: HeaderMap| async move { CLIENT.serve(&h) }));
    if !demo {
        return router;
    }
    router
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|h: HeaderMap| async move { DEMO_PAGE.serve(&h) }))
        .route("/demo/index.html", get(|h: HeaderMap| async move { DEMO_PAGE.serve(&h) }))
        .route("/demo/chat.js", get(|h: HeaderMap| async move { DEMO_SCRIPT.serve(&h) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matching_etag_is_not_modified() {
        let a = Asset::new("x", JS);
        assert_eq!(a.serve(&HeaderMap::new()).status(), StatusCode::OK);
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, a.etag.clone());
        assert_eq!(a.serve(&h).status(), StatusCode::NOT_MODIFIED);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\", W/\"nope\""));
        assert_eq!(a.serve(&h).status(), StatusCode::OK);
    }
}
