//! JetStream streams against a real berth process: nats-py's JetStream API (streams, acks,
//! deduplication, expected headers, message get/delete, purges, limits, KV buckets), the wire
//! of direct gets and errors over a raw socket, and acknowledged publishes surviving kill -9.

use std::process::Command;

use crate::harness::{run, Server};

#[test]
fn nats_py_manages_streams_publishes_and_uses_kv() {
    let py =
        crate::harness::python_with("BERTH_TEST_PYTHON", "nats", "pip install nats-py==2.16.0");
    let srv = Server::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/jetstream_client.py"
    );
    let (ok, out, err) = run(Command::new(py)
        .arg(script)
        .arg(format!("nats://{}", srv.nats_addr)));
    println!("{out}");
    assert!(ok, "nats-py JetStream script failed:\n{out}\n{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}
