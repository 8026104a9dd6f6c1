//! Runtime-free targets (std threads) and the bounded waits the suites share.

use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::TestRuntime;

/// Sleeps `d` on runtime `R`.
pub async fn sleep<R: TestRuntime>(d: Duration) {
    anytls_io::sleep_until::<R>(Instant::now() + d).await;
}

/// Runs `fut` for at most `limit`, panicking with `what` when it runs out.
pub async fn within<R: TestRuntime, F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    anytls_io::timeout::<R, _>(limit, fut)
        .await
        .unwrap_or_else(|| panic!("{what} timed out ({})", R::NAME))
}

/// Waits for a std thread without blocking the runtime; its panic becomes ours.
pub async fn join<R: TestRuntime, T>(h: JoinHandle<T>, limit: Duration, what: &str) -> T {
    let start = Instant::now();
    while !h.is_finished() {
        assert!(
            start.elapsed() < limit,
            "{what} did not finish in {limit:?}"
        );
        sleep::<R>(Duration::from_millis(20)).await;
    }
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Datagrams a [`udp_echo`] target answers at most before its thread ends.
pub const ECHO_MAX: usize = 100_000;

/// A UDP echo target on 127.0.0.1 served by a std thread, which ends after
/// [`ECHO_MAX`] datagrams, its `silence` without one, or when dropped.
pub struct UdpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts a [`UdpEcho`] that ends after `silence` without a datagram.
pub fn udp_echo(silence: Duration) -> UdpEcho {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = s.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut last = Instant::now();
        let mut answered = 0;
        while answered < ECHO_MAX && !flag.load(Ordering::Acquire) && last.elapsed() < silence {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
                answered += 1;
                last = Instant::now();
            }
        }
    });
    UdpEcho { addr, stop }
}

/// Payload `i`: its index, then bytes derived from it; `size` long (at
/// least 4).
pub fn payload(i: u32, size: usize) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v.truncate(size.max(4));
    v
}

/// Size of datagram `i`: pseudo-random in 4..=`max`.
pub fn size_of(i: u32, max: usize) -> usize {
    let x = (u64::from(i) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
    4 + (x as usize) % (max - 3)
}

/// Checks an echoed payload made by [`payload`]`(i, size_of(i, max))`
/// and records its index; returns the index.
pub fn check(data: &[u8], max: usize, seen: &mut HashSet<u32>) -> u32 {
    assert!(data.len() >= 4, "short datagram of {} bytes", data.len());
    let i = u32::from_be_bytes(data[..4].try_into().unwrap());
    assert!(
        data == payload(i, size_of(i, max)).as_slice(),
        "datagram {i} corrupted ({} bytes)",
        data.len()
    );
    assert!(seen.insert(i), "datagram {i} twice");
    i
}

/// How long a [`tcp_echo`] connection waits for bytes before it ends.
pub const TARGET_SILENCE: Duration = Duration::from_secs(10);

/// Connections an echo target serves at most before its thread ends.
pub const ECHO_MAX_CONNS: usize = 16;

/// A runtime-free echo target: a thread accepting up to [`ECHO_MAX_CONNS`]
/// connections, each echoed on its own thread until EOF or [`TARGET_SILENCE`] of silence.
pub fn tcp_echo() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..ECHO_MAX_CONNS {
            let Ok((mut s, _)) = l.accept() else {
                return;
            };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(TARGET_SILENCE));
                let _ = s.set_write_timeout(Some(TARGET_SILENCE));
                let mut buf = [0u8; 16 * 1024];
                // At most a few MiB per connection; the tests send ~1 KiB.
                for _ in 0..1024 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A port on 127.0.0.1 that nothing listens on.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
