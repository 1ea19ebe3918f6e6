//! Compiles the etcd v3 wire-format `.proto` files into Rust types, clients and servers.

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
    ];
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&files, &[root, "proto"])?;
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
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
