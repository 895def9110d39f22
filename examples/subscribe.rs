//! Subscribe to topics over WebSocket and print every frame.
//!
//! `cargo run --example subscribe -- ws://127.0.0.1:8080/v1/ws?topic=chat`
#![allow(clippy::print_stdout)]
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/v1/ws?topic=chat".into());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    eprintln!("connected to {url}");
    while let Some(frame) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame? {
            println!("{text}"); // {"op":"message","topic":…,"id":…,"data":…,"cursor":…}
        }
    }
    Ok(())
}
