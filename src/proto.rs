//! Client-side types of `proto/rtgate/v1/gateway.proto` (package
//! `rtgate.v1`): plain message structs and the tonic client
//! [`gateway_client::GatewayClient`], for Rust services, the tests and the
//! examples.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rtgate::proto::{gateway_client::GatewayClient, PublishRequest};
//! // `GatewayClient::new(channel)`: tonic's usual `GatewayClient::connect(url)`
//! // constructor is not generated, its name is taken by the `Connect` rpc.
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:8080").connect().await?;
//! let mut client = GatewayClient::new(channel);
//! let reply = client
//!     .publish(PublishRequest { topic: "chat".into(), data: b"{\"text\":\"hi\"}".to_vec(), ..Default::default() })
//!     .await?
//!     .into_inner();
//! println!("published {}", reply.id);
//! # Ok(()) }
//! ```

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/client/rtgate.v1.rs"));
}

pub use generated::*;
