//! A first cross-runtime check: one byte-exact echo through each pair.

use std::time::Duration;

use anytls_io::{Client, ClientConfig, Identity, Server, ServerConfig, Verification, relay_tcp};
use anytls_tests::TestRuntime;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

async fn echo_through_the_proxy<C: TestRuntime, S: TestRuntime>() {
    // Runtime-free echo target on a thread.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taddr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = target.accept() {
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
        }
    });
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let pin = id.leaf_sha256().unwrap();
    let server = Server::<S>::bind("127.0.0.1:0", ServerConfig::new("pw", id))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_handle();
    S::spawn(async move {
        let _ = server
            .serve_with(Duration::ZERO, |r| relay_tcp(r, Duration::from_secs(5)))
            .await;
    });
    let mut cfg = ClientConfig::new(addr.to_string(), "pw");
    cfg.sni = Some("localhost".into());
    cfg.verification = Verification::Pin(pin);
    let client = Client::<C>::new(cfg).unwrap();
    let fut = async {
        let mut s = client.connect(taddr).await?;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).await?;
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await?;
        assert_eq!(back, data);
        std::io::Result::Ok(())
    };
    anytls_io::timeout::<C, _>(Duration::from_secs(20), fut)
        .await
        .expect("timed out")
        .unwrap();
    client.close();
    stop.shutdown();
}

anytls_tests::suite!(echo_through_the_proxy);
