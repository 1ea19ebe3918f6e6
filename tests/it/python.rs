//! A Python etcd client (aetcd, asyncio, gRPC) against berth: `tests/python/aetcd_client.py`.
//! `.ci/run` installs aetcd into a virtualenv and points `BERTH_TEST_PYTHON` at it.

use std::process::Command;

use crate::harness::{run, Server};

fn python() -> String {
    crate::harness::python_with("BERTH_TEST_PYTHON", "aetcd", "pip install aetcd==1.0.0")
}

#[test]
fn aetcd_client_suite_passes() {
    let py = python();
    let srv = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/aetcd_client.py");
    let (ok, out, err) = run(Command::new(py).arg(script).arg(&srv.client_addr));
    assert!(ok, "aetcd suite failed:\n{out}\n{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

/// aetcd with a user and password against berth with auth on.
#[tokio::test]
async fn aetcd_logs_in_and_is_held_to_its_roles() {
    let py = python();
    let srv = Server::start_with(&["--bcrypt-cost", "4"]);
    let mut c = srv.client().await;
    crate::auth::setup(&mut c).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/aetcd_auth.py");
    let (ok, out, err) = run(Command::new(py).arg(script).arg(&srv.client_addr));
    assert!(ok, "aetcd auth script failed:\n{out}\n{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}
