//! Compiles proto/etcd/*.proto with protox (a pure-Rust protobuf compiler: no system protoc)
//! and generates prost types with `bytes::Bytes` for every bytes field, so that keys and values
//! decoded from a request are slices of the received buffer rather than copies.

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
    let descriptors = prost::Message::encode_to_vec(&fds);
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    // JSON for the HTTP gateway, with the mapping etcd's grpc-gateway uses: proto field names,
    // 64-bit integers as strings, bytes as base64, enums by name, default values left out;
    // unknown fields are ignored as Go's jsonpb ignores them.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3electionpb",
            ".v3lockpb",
        ])?;
    Ok(())
}
