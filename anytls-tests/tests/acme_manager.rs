//! The ACME manager's life and its failure modes (found in review; each
//! test failed before its fix): a manager shared by two servers, restarted
//! or swapped back by a reload keeps running while one server uses it; an
//! account the CA forgot is registered again; an unwritable data directory
//! does not register an account per attempt; a CA's error page and a cut
//! response are reported as such; `renew_now` during an order orders once.
//! Most need no CA (a directory nobody serves, or a fake one on a std
//! thread, observed through `Acme::status`); the others run pebble.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use anytls_io::acme::{Acme, AcmeConfig};
use anytls_io::{Server, ServerConfig, ServerTls, ShutdownHandle};
use anytls_tests::TestRuntime;
use anytls_tests::fixture::{acme_issued, acme_server, serve_acme};
use anytls_tests::pebble::{Pebble, PebbleOptions, free_port};
use anytls_tests::peers::temp_dir;
use anytls_tests::targets::{sleep, within};

const DOMAIN: &str = "anytls.test";
const LIMIT: Duration = Duration::from_secs(60);

anytls_tests::one_runtime_suite!(
    a_server_stopping_does_not_stop_the_manager_of_another_server,
    a_server_restarted_with_the_same_manager_runs_it_again,
    a_reload_back_to_an_earlier_manager_runs_it_again,
    an_account_the_ca_does_not_know_is_registered_again,
    a_ca_error_page_is_reported_with_its_status,
    a_truncated_response_is_reported_as_truncated,
    an_unwritable_data_directory_does_not_register_an_account_per_attempt,
    renew_now_during_an_order_orders_once,
);

/// A manager for a CA that refuses connections: each attempt fails at once
/// and the next one is due 50-100 ms later.
fn dead_ca_acme(dir: &Path) -> Acme {
    let port = free_port();
    acme_for(dir, &format!("http://127.0.0.1:{port}/dir"))
}

fn acme_for(dir: &Path, directory: &str) -> Acme {
    let mut cfg = AcmeConfig::new(vec![DOMAIN.into()], dir.join("acme"));
    cfg.directory_url = directory.into();
    cfg.http_addr = None;
    cfg.retry_min = Duration::from_millis(50);
    cfg.retry_max = Duration::from_millis(100);
    cfg.request_timeout = Duration::from_secs(5);
    Acme::new(cfg).unwrap()
}

fn serve<R: TestRuntime>(acme: &Acme) -> (Server<R>, ShutdownHandle, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = acme_server::<R>(listener, "pw", acme);
    let stop = server.shutdown_handle();
    (server, stop, addr)
}

/// Whether `acme`'s manager is running: it makes attempts (its next attempt
/// moves) within 2 s.
async fn is_running<R: TestRuntime>(acme: &Acme) -> bool {
    // Let an attempt in flight settle first.
    sleep::<R>(Duration::from_millis(300)).await;
    let before = acme.status().next_attempt;
    for _ in 0..20 {
        sleep::<R>(Duration::from_millis(100)).await;
        if acme.status().next_attempt != before {
            return true;
        }
    }
    false
}

async fn first_failure<R: TestRuntime>(acme: &Acme) {
    within::<R, _>(LIMIT, "a first attempt", async {
        while acme.status().last_error.is_none() {
            sleep::<R>(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Two listeners (e.g. IPv4 and IPv6) sharing one certificate: stopping one
/// stops the manager the other still depends on; its certificate is never
/// renewed.
async fn a_server_stopping_does_not_stop_the_manager_of_another_server<R: TestRuntime>() {
    let dir = temp_dir::<R>("acme-review", "shared");
    let acme = dead_ca_acme(&dir);
    let (a, stop_a, _) = serve::<R>(&acme);
    let (b, stop_b, _) = serve::<R>(&acme);
    R::spawn(async move {
        let _ = a.serve().await;
    });
    R::spawn(async move {
        let _ = b.serve().await;
    });
    first_failure::<R>(&acme).await;
    assert!(is_running::<R>(&acme).await);
    stop_a.shutdown();
    let running = is_running::<R>(&acme).await;
    stop_b.shutdown();
    assert!(
        running,
        "server B still serves with this manager, but A's shutdown stopped it"
    );
}

/// `Acme::stop` is final: a server started again with the same manager
/// (an embedder restarting its listener) serves without one.
async fn a_server_restarted_with_the_same_manager_runs_it_again<R: TestRuntime>() {
    let dir = temp_dir::<R>("acme-review", "restart");
    let acme = dead_ca_acme(&dir);
    let (a, stop_a, _) = serve::<R>(&acme);
    R::spawn(async move {
        let _ = a.serve().await;
    });
    first_failure::<R>(&acme).await;
    stop_a.shutdown();
    sleep::<R>(Duration::from_millis(300)).await;
    let (b, stop_b, _) = serve::<R>(&acme);
    R::spawn(async move {
        let _ = b.serve().await;
    });
    let running = is_running::<R>(&acme).await;
    stop_b.shutdown();
    assert!(running, "the second server serves with a stopped manager");
}

/// Reload to manager B, then back to A: A was stopped by the first reload
/// and is not started by the second.
async fn a_reload_back_to_an_earlier_manager_runs_it_again<R: TestRuntime>() {
    let dir = temp_dir::<R>("acme-review", "reload-back");
    let a = dead_ca_acme(&dir);
    let b = dead_ca_acme(&dir);
    let (server, stop, _) = serve::<R>(&a);
    let reload = server.reload_handle();
    R::spawn(async move {
        let _ = server.serve().await;
    });
    first_failure::<R>(&a).await;
    reload
        .reload(ServerConfig::with_tls("pw", ServerTls::Acme(b.clone())))
        .unwrap();
    first_failure::<R>(&b).await;
    reload
        .reload(ServerConfig::with_tls("pw", ServerTls::Acme(a.clone())))
        .unwrap();
    let running = is_running::<R>(&a).await;
    stop.shutdown();
    assert!(
        running,
        "the server serves with manager A again, but A no longer runs"
    );
}

/// account.json names an account the CA does not know (a private CA
/// reinstalled, pebble restarted, an account deactivated): the manager
/// should register a new one; it retries the dead account forever.
async fn an_account_the_ca_does_not_know_is_registered_again<R: TestRuntime>() {
    let dir = temp_dir::<R>("acme-review", "account");
    let _ = std::fs::remove_dir_all(dir.join("acme"));
    let Some((_pebble, listener, mut cfg)) = pebble_and_config(&dir) else {
        return;
    };
    let addr = listener.local_addr().unwrap();
    cfg.retry_max = Duration::from_millis(500);
    // A first manager registers the account; then the CA "forgets" it.
    {
        let acme = Acme::new(cfg.clone()).unwrap();
        let (stop, _) = serve_acme::<R>(listener, "pw", &acme);
        within::<R, _>(LIMIT, "first certificate", async {
            while acme.status().issued < 1 {
                sleep::<R>(Duration::from_millis(100)).await;
            }
        })
        .await;
        stop.shutdown();
        sleep::<R>(Duration::from_millis(300)).await;
    }
    let ca_dir = std::fs::read_dir(dir.join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let account = ca_dir.join("account.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&account).unwrap()).unwrap();
    let id = json["id"].as_str().unwrap().to_owned();
    let (base, _) = id.rsplit_once('/').unwrap();
    json["id"] = format!("{base}/0123456789abcdef").into();
    std::fs::write(&account, json.to_string()).unwrap();
    std::fs::remove_dir_all(ca_dir.join(DOMAIN)).unwrap();

    let acme = Acme::new(cfg).unwrap();
    let listener = TcpListener::bind(addr).unwrap();
    let (stop, _) = serve_acme::<R>(listener, "pw", &acme);
    let got = acme_issued::<R>(&acme, 1, Duration::from_secs(20)).await;
    stop.shutdown();
    assert!(
        got.is_some(),
        "no certificate in 20 s; last error: {:?}",
        acme.status().last_error
    );
}

/// A fake directory on a std thread answering every connection with
/// `response` and closing.
fn fake_ca(response: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().take(50) {
            let Ok(mut c) = c else { continue };
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(response);
        }
    });
    addr
}

async fn last_error_with<R: TestRuntime>(response: &'static [u8], name: &str) -> String {
    let dir = temp_dir::<R>("acme-review", name);
    let addr = fake_ca(response);
    let acme = acme_for(&dir, &format!("http://{addr}/directory"));
    let me = acme.clone();
    R::spawn(async move { me.run::<R>().await });
    first_failure::<R>(&acme).await;
    acme.stop();
    acme.status().last_error.unwrap()
}

/// A wrong directory URL (a typo, a CA's HTML error page) is reported as a
/// JSON syntax error; the operator is not told the CA answered 404.
async fn a_ca_error_page_is_reported_with_its_status<R: TestRuntime>() {
    let e = last_error_with::<R>(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 23\r\n\r\n<html>Not Found</html>\n",
        "404",
    )
    .await;
    assert!(e.contains("404"), "the operator sees: {e}");
}

/// A response cut short (Content-Length not reached, connection closed) is
/// handed to instant-acme as a complete response with an empty body.
async fn a_truncated_response_is_reported_as_truncated<R: TestRuntime>() {
    let e = last_error_with::<R>(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"newNonce\": \"http://x/nonce\",",
        "truncated",
    )
    .await;
    assert!(
        e.contains("complete") || e.contains("closed"),
        "the operator sees: {e}"
    );
}

/// A pebble for TLS-ALPN-01 on a fresh server port, and a config for it.
fn pebble_and_config(dir: &Path) -> Option<(Pebble, TcpListener, AcmeConfig)> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = PebbleOptions {
        tls_port: listener.local_addr().unwrap().port(),
        http_port: free_port(),
        validity: Duration::from_secs(3600),
        eab: None,
    };
    let pebble = Pebble::start(dir, &opts)?;
    let mut cfg = AcmeConfig::new(vec![DOMAIN.into()], dir.join("acme"));
    cfg.directory_url = pebble.directory.clone();
    cfg.directory_ca = Some(pebble.directory_ca.clone());
    cfg.http_addr = None;
    cfg.retry_min = Duration::from_millis(200);
    cfg.retry_max = Duration::from_millis(400);
    cfg.request_timeout = Duration::from_secs(10);
    Some((pebble, listener, cfg))
}

fn accounts_at_pebble(dir: &Path) -> usize {
    let log = std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| l.split("There are now ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// `data_directory` not writable (ProtectSystem=strict without
/// ReadWritePaths, a wrong owner): the account is registered at the CA, its
/// save fails, the attempt is abandoned, and the next attempt registers
/// another account; no certificate is ever obtained (the certificate's own
/// save failure is tolerated, the account's is not). Let's Encrypt allows
/// 10 new accounts per IP per 3 hours.
#[cfg(target_os = "linux")]
async fn an_unwritable_data_directory_does_not_register_an_account_per_attempt<R: TestRuntime>() {
    let dir = temp_dir::<R>("acme-review", "readonly");
    let Some((_pebble, listener, mut cfg)) = pebble_and_config(&dir) else {
        return;
    };
    // Reads find nothing, writes fail, even as root.
    cfg.data_directory = "/proc/self/anytls-review-acme".into();
    let acme = Acme::new(cfg).unwrap();
    let (stop, _) = serve_acme::<R>(listener, "pw", &acme);
    let got = acme_issued::<R>(&acme, 1, Duration::from_secs(8)).await;
    stop.shutdown();
    let accounts = accounts_at_pebble(&dir);
    assert!(
        got.is_some() && accounts <= 1,
        "{accounts} accounts registered, certificate: {}; last error: {:?}",
        got.is_some(),
        acme.status().last_error
    );
}

#[cfg(not(target_os = "linux"))]
async fn an_unwritable_data_directory_does_not_register_an_account_per_attempt<R: TestRuntime>() {}

/// `renew_now` while an order runs or is about to (an operator pressing
/// twice, or calling it at start-up): the flag was kept, and a second
/// certificate was ordered right after the first, counting against the CA's duplicate-certificate
/// limit (Let's Encrypt: 5 per week).
async fn renew_now_during_an_order_orders_once<R: TestRuntime>() {
    let dir = temp_dir::<R>("acme-review", "renew-now");
    let _ = std::fs::remove_dir_all(dir.join("acme"));
    let Some((_pebble, listener, cfg)) = pebble_and_config(&dir) else {
        return;
    };
    let acme = Acme::new(cfg).unwrap();
    let (stop, _) = serve_acme::<R>(listener, "pw", &acme);
    // At once: before or while the first order runs (pebble can issue in
    // under 100 ms, so a later call could come after it, and rightly order
    // again).
    acme.renew_now();
    within::<R, _>(LIMIT, "first certificate", async {
        while acme.status().issued < 1 {
            sleep::<R>(Duration::from_millis(100)).await;
        }
    })
    .await;
    sleep::<R>(Duration::from_secs(5)).await;
    let issued = acme.status().issued;
    stop.shutdown();
    assert_eq!(issued, 1, "one renew_now, during the first order");
}
