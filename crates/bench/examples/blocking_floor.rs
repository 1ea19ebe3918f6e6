//! The machine's floor for `berth bench consul-watch`: a server that answers the bench's
//! blocking queries with fixed bytes written straight to each socket (no HTTP library, no
//! store, one thread), so the bench's latency against it is what the kernel's loopback and
//! the bench's own reading cost on this machine, whatever server is measured.
//!
//! It speaks just enough of the bench's requests: `PUT /v1/agent/service/register` (a body
//! naming the watched service is a change: the index moves and every blocked watcher of it
//! is answered), and `GET /v1/health/service/<s>[?index=N…]` (answered at once unless `N` is
//! the current index; only the watched service's queries are woken). After each change it
//! prints how long writing every woken answer took.
//!
//! ```sh
//! cargo build --release -p berth-bench --example blocking_floor
//! taskset -c 0 target/release/examples/blocking_floor 127.0.0.1:25850 &
//! taskset -c 1 target/release/berth bench consul-watch --watchers 10000 --others 100 \
//!   --changes 5 --stale --consul-addr 127.0.0.1:25850
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A JSON body of the size of one instance's health entry.
const BODY: &str = r#"[{"Node":{"Node":"floor","Address":"127.0.0.1"},"Service":{"ID":"watched-0","Service":"bench-watched","Tags":["change"],"Address":"10.0.0.1","Port":8080},"Checks":[{"CheckID":"service:watched-0","Status":"passing"}]}]"#;

/// What the connections share.
struct Floor {
    /// The watched service's index; each change moves it, and the channel wakes watchers.
    index: watch::Sender<u64>,
    /// When the last change came, and how many woken answers were written since.
    changed: Mutex<Option<Instant>>,
    written: AtomicU64,
    /// Watchers blocked when the last change came.
    blocked: AtomicU64,
    woken_at_change: AtomicU64,
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:25850".into());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&addr).await?;
            eprintln!("blocking_floor: listening on {addr}");
            let floor = Arc::new(Floor {
                index: watch::channel(1).0,
                changed: Mutex::new(None),
                written: AtomicU64::new(0),
                blocked: AtomicU64::new(0),
                woken_at_change: AtomicU64::new(0),
            });
            loop {
                let (socket, _) = listener.accept().await?;
                socket.set_nodelay(true)?;
                tokio::spawn(serve(socket, floor.clone()));
            }
        })
}

/// One request: its first line and its body.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some((head.lines().next().unwrap_or_default().to_string(), body))
}

async fn serve(mut socket: TcpStream, floor: Arc<Floor>) {
    let mut buf = Vec::with_capacity(4096);
    let mut changes = floor.index.subscribe();
    while let Some((line, body)) = read_request(&mut socket, &mut buf).await {
        if line.starts_with("PUT ") {
            if body.windows(7).any(|w| w == b"watched") {
                let blocked = floor.blocked.load(Ordering::SeqCst);
                floor.woken_at_change.store(blocked, Ordering::SeqCst);
                floor.written.store(0, Ordering::SeqCst);
                *floor.changed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                floor.index.send_modify(|i| *i += 1);
            }
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrue";
            if socket.write_all(ok).await.is_err() {
                return;
            }
            continue;
        }
        let asked: u64 = line
            .split(['?', '&', ' '])
            .find_map(|p| p.strip_prefix("index="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let watched = line.contains("watched");
        let mut woken = false;
        if asked != 0 && asked >= *changes.borrow_and_update() {
            if !watched {
                // Other services never change here: held for the bench's whole run.
                std::future::pending::<()>().await;
            }
            floor.blocked.fetch_add(1, Ordering::SeqCst);
            while *changes.borrow_and_update() <= asked {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            floor.blocked.fetch_sub(1, Ordering::SeqCst);
            woken = true;
        }
        let index = *changes.borrow();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-consul-index: {index}\r\n\
             x-consul-knownleader: true\r\nx-consul-lastcontact: 0\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        if socket.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if woken {
            let n = floor.written.fetch_add(1, Ordering::SeqCst) + 1;
            if n == floor.woken_at_change.load(Ordering::SeqCst) {
                let since = floor.changed.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = *since {
                    eprintln!(
                        "blocking_floor: {n} woken answers written in {:?}",
                        t.elapsed()
                    );
                }
            }
        }
    }
}
