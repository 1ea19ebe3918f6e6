//! How the listeners treat connections: silent ones are closed after `--handshake-timeout`,
//! and running out of file descriptors makes the accept loop pause rather than spin.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::Server;

/// Reads until the server closes the connection; `None` if it is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match s.read(&mut buf) {
            // The gRPC servers send their SETTINGS frame first.
            Ok(n) if n > 0 => continue,
            Ok(_) => return Some(start.elapsed()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

#[test]
fn connections_that_send_nothing_are_closed_after_the_handshake_timeout() {
    let srv = Server::start_with(&["--handshake-timeout", "1s"]);
    let peer = srv.peer_url().trim_start_matches("http://").to_string();
    let addrs = [
        ("client", srv.client_addr.clone()),
        ("peer", peer),
        ("HTTP", srv.http_addr.clone()),
    ];
    let mut silent: Vec<_> = addrs
        .iter()
        .map(|(what, a)| (*what, TcpStream::connect(a).expect("connect")))
        .collect();
    // A connection that sent the HTTP/2 preface is past the handshake and stays open.
    let mut greeted = TcpStream::connect(&srv.client_addr).expect("connect");
    greeted
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("preface");
    for (what, s) in &mut silent {
        let took = closed_within(s, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the {what} listener kept a silent connection for 10 s"));
        assert!(
            took < Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
    }
    assert_eq!(
        closed_within(&mut greeted, Duration::from_millis(500)),
        None,
        "a connection that sent its preface was closed"
    );
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which is in parentheses and may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .expect("field")
    };
    n(14) + n(15)
}

#[test]
fn out_of_file_descriptors_the_accept_loop_pauses_instead_of_spinning() {
    let prlimit_works = Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ticks_per_s: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0.0);
    if !prlimit_works || ticks_per_s <= 0.0 || !std::path::Path::new("/proc/self/fd").exists() {
        eprintln!("skipped: needs prlimit, getconf and /proc");
        return;
    }
    let srv = Server::start();
    let pid = srv.pid().expect("running");
    // The readiness check's connection closes on the server's side shortly after.
    std::thread::sleep(Duration::from_millis(300));
    let open: BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).expect("a free number");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the open files limit")
        .to_string();
    // The kernel hands out the lowest free descriptor; none below the soft limit is left.
    let set_soft = |limit: &str| {
        let ok = Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={limit}:"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "prlimit --nofile={limit}: failed");
    };
    set_soft(&lowest_free.to_string());
    // This connection waits in the accept queue: every accept of it fails with EMFILE.
    let _waiting = TcpStream::connect(&srv.client_addr).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(2));
    let used = (cpu_ticks(pid) - c0) as f64 / ticks_per_s / t0.elapsed().as_secs_f64();
    set_soft(&soft);
    assert!(
        used < 0.2,
        "the server used {:.0}% of a core while out of descriptors",
        used * 100.0
    );
    // With descriptors again, it accepts again (within the longest pause, 1 s).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = srv.client().await;
        tokio::time::timeout(Duration::from_secs(5), c.put("after", "1", None))
            .await
            .expect("answered in time")
            .expect("put");
    });
}
