//! A first end-to-end check on 127.0.0.1: echo through client -> server -> target.

use std::time::Duration;

use anytls_tokio::{Client, ClientConfig, Identity, Server, ServerConfig, SocksAddr, Verification};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn echo_target() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Our server (self-signed, relaying to TCP) and a client pinned to it.
async fn server_and_client() -> Client {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let server = Server::bind("127.0.0.1:0", ServerConfig::new("pw", id))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    let mut cfg = ClientConfig::new(addr.to_string(), "pw");
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    Client::new(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_1k_and_reuse() {
    let target = echo_target().await;
    let client = server_and_client().await;
    for round in 0..3 {
        let mut s = tokio::time::timeout(
            Duration::from_secs(5),
            client.connect(SocksAddr::from(target)),
        )
        .await
        .unwrap()
        .unwrap();
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + round) as u8).collect();
        s.write_all(&data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, data);
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = client.stats();
    assert_eq!(st.dials, 1, "one session reused: {st:?}");
    assert_eq!(st.reused, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_reports_the_servers_verdict() {
    let target = echo_target().await;
    // A port with nothing listening: the server's dial is refused.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let client = server_and_client().await;
    let limit = Duration::from_secs(5);
    let mut ok = client.connect(SocksAddr::from(target)).await.unwrap();
    tokio::time::timeout(limit, ok.established())
        .await
        .unwrap()
        .unwrap();
    drop(ok);
    let mut refused = client.connect(SocksAddr::from(closed)).await.unwrap();
    let err = tokio::time::timeout(limit, refused.established())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(err.to_string().contains("dial tcp"), "{err}");
}

#[test]
fn secrets_stay_out_of_debug() {
    let secret = "hunter2-very-secret";
    let client = ClientConfig::new("127.0.0.1:1", secret);
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let server = ServerConfig::new(secret, id);
    let uri: anytls_tokio::config::AnytlsUri = format!("anytls://{secret}@127.0.0.1:8443/?sni=a")
        .parse()
        .unwrap();
    for dbg in [
        format!("{client:?}"),
        format!("{server:?}"),
        format!("{uri:?}"),
    ] {
        assert!(!dbg.contains(secret), "{dbg}");
    }
}
