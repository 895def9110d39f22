//! Compiles `proto/rtgate/v1/gateway.proto` with protox (pure Rust, no system
//! `protoc`) into two sets of Rust types:
//!
//! - `server/`: the service, with `rtgate.v1.Message` mapped to
//!   `crate::transport::grpc::wire::EncodedMessage`, so fan-out writes bytes
//!   encoded once per message instead of encoding a struct per subscriber;
//! - `client/`: plain types and the client, exported as `rtgate::proto`.
//!
//! The encoded descriptor set is written for server reflection.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["rtgate/v1/gateway.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("rtgate_descriptor.bin"), fds.encode_to_vec())?;

    let server = out.join("server");
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .extern_path(".rtgate.v1.Message", "crate::transport::grpc::wire::EncodedMessage")
        .out_dir(&server)
        .compile_fds(fds.clone())?;

    let client = out.join("client");
    std::fs::create_dir_all(&client)?;
    // No transport constructor: tonic's generated `GatewayClient::connect(dst)`
    // would collide with the `Connect` rpc's method. Clients build a channel
    // and call `GatewayClient::new(channel)`.
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir(&client)
        .compile_fds(fds)?;
    Ok(())
}
