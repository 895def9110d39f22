//! rtgate's gRPC API (`rtgate.v1.Gateway`) from Rust: `Subscribe`, `Publish`
//! (once with an idempotency key), resuming by cursor, and one `Connect`
//! round trip (subscribe, publish, ack, message).
//!
//! ```text
//! cargo run --release                          # a gateway on 127.0.0.1:8080
//! cargo run --example grpc_client -- --url http://127.0.0.1:8080 --topic demo
//! ```
#![allow(clippy::print_stdout)]
use clap::Parser;
use rtgate::proto::client_frame::Op;
use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::server_frame::Frame;
use rtgate::proto::{ClientFrame, Message, PublishOp, PublishRequest, SubscribeOp, SubscribeRequest};
use tokio_stream::StreamExt;

#[derive(Parser)]
struct Args {
    /// The gateway's base URL (gRPC shares the HTTP port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The topic to use.
    #[arg(long, default_value = "demo")]
    topic: String,
}

fn show(m: &Message) {
    println!("  {} id {} data {} cursor {}", m.topic, m.id, String::from_utf8_lossy(&m.data), m.cursor);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args { url, topic } = Args::parse();
    // One HTTP/2 connection; clones of the client share it. (There is no
    // `GatewayClient::connect(url)`: that name is the Connect rpc.)
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut client = GatewayClient::new(channel);
    let publish = |text: &str, key: &str| PublishRequest {
        topic: topic.clone(),
        data: format!(r#"{{"text":"{text}"}}"#).into_bytes(),
        idempotency_key: key.into(),
        ..Default::default()
    };

    // Subscribe from now: the call returns once the subscription is in place.
    let req = SubscribeRequest { topics: vec![topic.clone()], cursor: String::new() };
    let mut live = client.subscribe(req).await?.into_inner();
    for text in ["one", "two"] {
        println!("published {}", client.publish(publish(text, "")).await?.into_inner().id);
    }
    // A retry with the same idempotency key answers the first id again.
    let key = format!("demo-{}", std::process::id());
    let first = client.publish(publish("three", &key)).await?.into_inner().id;
    let again = client.publish(publish("three", &key)).await?.into_inner().id;
    println!("published {first} with key {key}; the retry answered {again}");

    println!("subscribe:");
    let mut cursor = String::new();
    for _ in 0..3 {
        let m = live.message().await?.ok_or("stream ended")?;
        show(&m);
        cursor = m.cursor;
    }
    drop(live); // cancels the stream

    // Missed while away, then read back by resuming from the last cursor.
    client.publish(publish("four", "")).await?;
    client.publish(publish("five", "")).await?;
    println!("resume from {cursor}:");
    let mut resumed =
        client.subscribe(SubscribeRequest { topics: vec![topic.clone()], cursor }).await?.into_inner();
    for _ in 0..2 {
        show(&resumed.message().await?.ok_or("stream ended")?);
    }
    drop(resumed);

    // Connect: the WebSocket protocol as one bidirectional stream.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let frame = |r: &str, op| ClientFrame { r#ref: r.into(), op: Some(op) };
    tx.send(frame(
        "s1",
        Op::Subscribe(SubscribeOp { topic: topic.clone(), after: None, ..Default::default() }),
    ))
    .await?;
    let mut frames = client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    println!("connect:");
    let (mut acked, mut received) = (false, false);
    while !(acked && received) {
        let f = frames.next().await.ok_or("stream ended")?;
        match f?.frame {
            Some(Frame::Ack(a)) if a.r#ref == "s1" => {
                println!("  ack s1 (subscribed)");
                let data = br#"{"text":"over Connect"}"#.to_vec();
                let op = Op::Publish(PublishOp {
                    topic: topic.clone(),
                    data,
                    idempotency_key: String::new(),
                    ..Default::default()
                });
                tx.send(frame("p1", op)).await?;
            }
            Some(Frame::Ack(a)) => {
                println!("  ack {} id {}", a.r#ref, a.id);
                acked = true;
            }
            Some(Frame::Message(m)) => {
                show(&m);
                received = true;
            }
            other => println!("  {other:?}"),
        }
    }
    Ok(())
}
