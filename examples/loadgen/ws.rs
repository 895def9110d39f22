//! WebSocket subscriber (rtgate or Nchan).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::args::Flavour;
use crate::payload::seq_t;
use crate::stats::{SeqCheck, Shared};

/// Returns Some((seq,t,publisher)) for a data message, None for anything else.
fn decode(flavour: Flavour, text: &[u8]) -> Option<(u64, u64, usize)> {
    let v: Value = serde_json::from_slice(text).ok()?;
    match flavour {
        Flavour::Nchan => seq_t(&v),
        Flavour::Rtgate => {
            if v.get("op")?.as_str()? != "message" {
                return None;
            }
            seq_t(v.get("data")?)
        }
    }
}

pub(crate) async fn subscriber(
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    flavour: Flavour,
    addr: String,
    ws_url: String,
    topic_idx: usize,
) {
    let permit = sem.acquire_owned().await;
    let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let conn = async {
        let tcp = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio_tungstenite::client_async_with_config(ws_url.as_str(), tcp, Some(cfg))
            .await
            .map_err(|e| e.to_string())
    };
    let Some((mut ws, _resp)) = sh.attempt("ws", topic_idx, conn).await else { return };
    drop(permit);

    let mut seqs = SeqCheck::default();
    // The process exits when the run is over; this loop ends only if the server closes.
    while let Some(msg) = ws.next().await {
        let bytes: &[u8] = match &msg {
            Ok(Message::Text(t)) => t.as_bytes(),
            Ok(Message::Binary(b)) => b,
            Ok(_) => continue, // ping/pong handled by tungstenite
            Err(_) => break,
        };
        sh.payload(&mut seqs, sh.now_ns(), decode(flavour, bytes));
    }
    sh.closed_early.fetch_add(1, Relaxed);
}
