//! Compiles the etcd v3 (and Nacos 2.x) wire-format `.proto` files into Rust types, clients
//! and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable; the vendored binary means no system protoc.
    std::env::set_var("PROTOC", protoc);
    let root = "proto/etcd";
    let files = [
        "proto/etcd/mvccpb/kv.proto",
        "proto/etcd/authpb/auth.proto",
        "proto/etcd/etcdserverpb/rpc.proto",
        "proto/berth/raft.proto",
        "proto/berth/store.proto",
        "proto/berth/lease.proto",
        "proto/berth/nats.proto",
        "proto/berth/gateway.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("descriptors.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Forwarded NATS messages are handed on without a copy.
        .bytes(".berth.nats.Forward")
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&files, &[root, "proto"])?;
    // proto3 JSON for etcd's messages, as etcd's JSON gateway speaks it (grpc-gateway v1's
    // default marshaler: proto field names, int64 as strings, bytes as base64, enum names,
    // defaults omitted).
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .build(&[".etcdserverpb", ".mvccpb", ".authpb"])?;
    // The Watch service once more, for the server: same route and request type, but responses
    // are `WatchFrame`s (pre-encoded parts shared between watchers) with their own codec.
    let watch = tonic_prost_build::manual::Service::builder()
        .name("Watch")
        .package("etcdserverpb")
        .method(
            tonic_prost_build::manual::Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::etcdserverpb::WatchRequest")
                .output_type("crate::watch_frame::WatchFrame")
                .codec_path("crate::watch_frame::WatchFrameCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    tonic_prost_build::manual::Builder::new()
        .build_client(false)
        .compile(&[watch]);
    // Nacos's proto has no package (pbjson's descriptor pass needs one): compiled apart, into
    // `_.rs` (the client is for `berth bench`).
    let nacos = "proto/nacos/nacos_grpc_service.proto";
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[nacos], &["proto/nacos"])?;
    for f in files.iter().chain([&nacos]) {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
