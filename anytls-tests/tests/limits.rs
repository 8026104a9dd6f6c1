//! Server-wide limits: `ServerConfig::max_connections` closes connections
//! beyond it at accept, and a freed slot is usable again. Runs with the server
//! on tokio and on smol; the probes are blocking std sockets on 127.0.0.1.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anytls_io::{Identity, Server, ServerConfig};
use anytls_tests::TestRuntime;

const STEP: Duration = Duration::from_secs(5);

/// Waits (bounded) until the server has closed `s`: EOF or a reset.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0) | Err(_)) && {
        // A timeout is not a close.
        let e = s.read(&mut b);
        !matches!(e, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
            || e.kind() == std::io::ErrorKind::TimedOut)
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, STEP).unwrap()
}

async fn connections_beyond_the_limit_are_closed_at_accept<S: TestRuntime>() {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let mut cfg = ServerConfig::new("pw", id);
    cfg.max_connections = 3;
    cfg.tls_handshake_timeout = Duration::from_secs(30);
    let server = Server::<S>::bind("127.0.0.1:0", cfg).await.unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    S::spawn(async move {
        let _ = server.serve().await;
    });
    let blocking = std::thread::spawn(move || {
        // Three connections that never start TLS hold the three slots.
        let mut held: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
        std::thread::sleep(Duration::from_millis(200));
        // A fourth is closed at once.
        let mut extra = connect(addr);
        let t = Instant::now();
        assert!(closed_by_server(&mut extra, STEP), "over the limit: closed");
        assert!(t.elapsed() < Duration::from_secs(2), "closed at accept");
        // The held ones are still open (a read times out).
        held[0]
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 8];
        let e = held[0].read(&mut b).unwrap_err();
        assert!(matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ));
        // Closing one frees its slot (the server sees EOF in the TLS handshake).
        drop(held.pop());
        let mut admitted = None;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(50));
            let mut s = connect(addr);
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut b = [0u8; 8];
            match s.read(&mut b) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    admitted = Some(s);
                    break;
                }
                _ => continue,
            }
        }
        assert!(admitted.is_some(), "a freed slot admits a new connection");
    });
    for _ in 0..400 {
        if blocking.is_finished() {
            break;
        }
        anytls_io::sleep_until::<S>(Instant::now() + Duration::from_millis(50)).await;
    }
    assert!(
        blocking.is_finished(),
        "probe thread did not finish in 20 s"
    );
    blocking.join().unwrap();
    stop.shutdown();
}

mod tokio_server {
    #[test]
    fn connections_beyond_the_limit_are_closed_at_accept() {
        anytls_tests::run::<anytls_tests::Tokio, anytls_tests::Tokio, _>(
            super::connections_beyond_the_limit_are_closed_at_accept::<anytls_tests::Tokio>(),
        )
    }
}

mod smol_server {
    #[test]
    fn connections_beyond_the_limit_are_closed_at_accept() {
        anytls_tests::run::<anytls_tests::Smol, anytls_tests::Smol, _>(
            super::connections_beyond_the_limit_are_closed_at_accept::<anytls_tests::Smol>(),
        )
    }
}
