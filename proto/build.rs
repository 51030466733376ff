//! Compiles proto/etcd/*.proto with protox (a pure-Rust protobuf compiler: no system protoc)
//! and generates prost types with `bytes::Bytes` for every bytes field, so that keys and values
//! decoded from a request are slices of the received buffer rather than copies.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "etcd/v3electionpb/v3election.proto",
    "etcd/v3lockpb/v3lock.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=etcd");
    let fds = protox::compile(FILES, ["etcd"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
