//! `anytls`: AnyTLS server, client (a local SOCKS5 proxy) and a self-contained
//! demo. The pieces live in the library (`anytls_tokio::{config, socks5}`);
//! this file parses flags, merges them over a config file and runs.

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anytls_tokio::config::{
    self, AnytlsUri, ClientOptions, ConfigNote, ListenOptions, ListenerSetup, NoteKind,
    ServerOptions, User, parse_go_duration,
};
use anytls_tokio::proxy::{Protocols, ProxyConfig, ProxyUser, serve_proxy};
use anytls_tokio::tls::{CertificateProblem, check_server_certificate, hex32, parse_pin};
use anytls_tokio::{Client, RuntimeMode, Server, ServerTls, Verification};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

#[path = "anytls/demo.rs"]
mod demo;
#[path = "anytls/metrics.rs"]
mod metrics;

type BoxError = Box<dyn Error + Send + Sync>;

const AFTER_HELP: &str = "Logging: RUST_LOG (default info), e.g. RUST_LOG=debug, or \
RUST_LOG=info,anytls_core::pool=debug for the pool's maintenance decisions.";

#[derive(Parser)]
#[command(name = "anytls", version, about = "AnyTLS proxy: server, client (local SOCKS5/HTTP proxy) and a demo", after_help = AFTER_HELP)]
struct Cli {
    /// Runtime worker threads (1: everything on one thread, the cheapest per
    /// byte when client, server and applications share a few cores)
    /// [default: one per core].
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// How connections share the threads: `per-core` (every accepted
    /// connection, with its session and its streams, stays on one
    /// single-threaded runtime: no cross-thread wakeups) or `work-stealing`
    /// (tokio's shared pool: one connection's tasks may run on any thread)
    /// [default: per-core for `server`, work-stealing for `client` and `demo`].
    #[arg(long, global = true, value_name = "MODE")]
    runtime: Option<RuntimeMode>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an AnyTLS server.
    Server(ServerArgs),
    /// Run local proxies (SOCKS5, SOCKS4, HTTP) that tunnel through an AnyTLS server.
    Client(ClientArgs),
    /// Show everything working on 127.0.0.1: latency cold/warm/reused, pool
    /// statistics, throughput. Needs no files; takes a few seconds.
    Demo(demo::DemoArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

#[derive(Args)]
struct ServerArgs {
    /// sing-box JSON (an `anytls` inbound, or a whole config: its first anytls
    /// inbound) or mihomo YAML (its first anytls listener). Flags override
    /// its values.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address [default: 0.0.0.0:8443].
    #[arg(short, long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Password (replaces the config's users). Without any, one is generated.
    #[arg(short, long, env = "ANYTLS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Certificate chain (PEM). Without one, a self-signed certificate is made.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Name for the self-signed certificate, and the host/SNI of the printed URI.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Padding scheme file (used byte for byte).
    #[arg(long, value_name = "FILE")]
    padding_scheme: Option<PathBuf>,
    /// Where connections that fail authentication go, e.g. a web server.
    #[arg(long, value_name = "ADDR")]
    fallback: Option<String>,
    /// Serve per-user counters in the Prometheus text format on
    /// http://ADDR/metrics (e.g. 127.0.0.1:9090; no authentication).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Get the certificate for DOMAIN from an ACME CA (Let's Encrypt by
    /// default) and renew it while running; repeatable. Challenges:
    /// TLS-ALPN-01 on the listen port (the CA connects to 443) and HTTP-01
    /// on port 80.
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["cert", "key"])]
    acme: Vec<String>,
    /// Contact address for the ACME account (expiry mail).
    #[arg(long, value_name = "EMAIL")]
    acme_email: Option<String>,
    /// ACME CA: letsencrypt, zerossl, or a directory URL [default: letsencrypt].
    #[arg(long, value_name = "CA")]
    acme_ca: Option<String>,
    /// PEM roots trusted for the ACME directory's HTTPS (a private CA).
    #[arg(long, value_name = "FILE")]
    acme_directory_ca: Option<PathBuf>,
    /// Where the ACME account and certificates are kept [default:
    /// $STATE_DIRECTORY/acme under systemd, else ~/.local/share/anytls/acme].
    #[arg(long, value_name = "DIR")]
    acme_dir: Option<PathBuf>,
    /// HTTP-01 on this port instead of 80 (one port 80 is forwarded to); 0
    /// turns HTTP-01 off.
    #[arg(long, value_name = "PORT")]
    acme_http_port: Option<u16>,
    /// No TLS-ALPN-01 (HTTP-01 only).
    #[arg(long)]
    acme_no_tls_alpn: bool,
    /// External account binding KEY_ID:MAC_KEY (ZeroSSL, some private CAs).
    #[arg(
        long,
        value_name = "KEY_ID:MAC_KEY",
        env = "ANYTLS_ACME_EAB",
        hide_env_values = true
    )]
    acme_eab: Option<String>,
}

impl ServerArgs {
    /// Puts the `--acme*` flags over the config's `tls.acme`.
    fn apply_acme(&self, tls: &mut config::InboundTls) -> Result<(), BoxError> {
        let any = self.acme_email.is_some()
            || self.acme_ca.is_some()
            || self.acme_directory_ca.is_some()
            || self.acme_dir.is_some()
            || self.acme_http_port.is_some()
            || self.acme_no_tls_alpn
            || self.acme_eab.is_some();
        if self.acme.is_empty() && !any {
            return Ok(());
        }
        if !self.acme.is_empty() {
            // Domains from the command line replace a certificate of the file.
            tls.certificate.clear();
            tls.key.clear();
            tls.certificate_path = None;
            tls.key_path = None;
        }
        let acme = tls.acme.get_or_insert_with(Default::default);
        if !self.acme.is_empty() {
            acme.domain = self.acme.clone();
        }
        if acme.domain.is_empty() {
            return Err(
                "--acme-* flags need --acme DOMAIN (or tls.acme.domain in the config)".into(),
            );
        }
        if let Some(e) = &self.acme_email {
            acme.email = Some(e.clone());
        }
        if let Some(ca) = &self.acme_ca {
            acme.provider = Some(ca.clone());
        }
        if let Some(f) = &self.acme_directory_ca {
            acme.directory_ca = Some(f.clone());
        }
        if let Some(d) = &self.acme_dir {
            acme.data_directory = Some(d.clone());
        }
        match self.acme_http_port {
            Some(0) => acme.disable_http_challenge = Some(true),
            Some(p) => {
                acme.disable_http_challenge = Some(false);
                acme.alternative_http_port = Some(p);
            }
            None => {}
        }
        if self.acme_no_tls_alpn {
            acme.disable_tls_alpn_challenge = Some(true);
        }
        if let Some(eab) = &self.acme_eab {
            let (key_id, mac_key) = eab
                .split_once(':')
                .ok_or("--acme-eab: expected KEY_ID:MAC_KEY")?;
            acme.external_account = Some(config::ExternalAccountOptions {
                key_id: key_id.to_owned(),
                mac_key: mac_key.to_owned(),
            });
        }
        Ok(())
    }
}

#[derive(Args)]
struct ClientArgs {
    /// sing-box JSON (an `anytls` outbound, or a whole config: its anytls
    /// outbound and its mixed/socks/http inbounds as listeners) or mihomo YAML
    /// (an anytls proxy, and its ports and listeners). Flags override its values.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Which anytls outbound (sing-box tag) or proxy (mihomo name) of the
    /// config to use [default: the first].
    #[arg(long, value_name = "NAME")]
    proxy: Option<String>,
    #[arg(
        value_name = "URI",
        help = "anytls://[password@]host[:port]/?sni=NAME&insecure=1 (instead of --server and --password)"
    )]
    uri: Option<String>,
    /// Server HOST:PORT (or an anytls:// URI).
    #[arg(short, long, value_name = "HOST:PORT")]
    server: Option<String>,
    /// Password.
    #[arg(short, long, env = "ANYTLS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// TLS server name (an IP address sends no SNI).
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,
    /// Accept any server certificate.
    #[arg(long, conflicts_with_all = ["pin", "ca"])]
    insecure: bool,
    /// Accept only the certificate with this SHA-256 (64 hex digits).
    #[arg(long, value_name = "SHA256", conflicts_with = "ca")]
    pin: Option<String>,
    /// Trust the CA certificates of this PEM file (instead of the built-in
    /// Mozilla roots).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Local mixed (SOCKS5, SOCKS4, HTTP) proxy listener (repeatable; replaces the config's listeners)
    /// [default: 127.0.0.1:1080].
    #[arg(short, long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// USER:PASS for the local listeners that have no users of their own
    /// (repeatable).
    #[arg(long, value_name = "USER:PASS")]
    auth: Vec<String>,
    /// Pool maintenance interval [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    idle_session_check_interval: Option<Duration>,
    /// Idle sessions older than this are closed [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    idle_session_timeout: Option<Duration>,
    /// The newest N idle sessions survive the idle sweep [default: 0].
    #[arg(long, value_name = "N")]
    min_idle_session: Option<usize>,
    /// Keep N sessions pre-warmed and idle [default: 0].
    #[arg(long, value_name = "N")]
    ensure_idle_session: Option<usize>,
    /// At most N pre-warm dials per check (0 = no cap).
    #[arg(long, value_name = "N")]
    ensure_idle_session_create_rate: Option<usize>,
    /// Heartbeat interval on every session (0s = off) [default: off].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    heartbeat: Option<Duration>,
    /// Close a session whose heartbeat is not answered in time (0s = never) [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    heartbeat_timeout: Option<Duration>,
    /// Close sessions older than this (0s = never).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    max_connection_lifetime: Option<Duration>,
    /// Wait this long for the server's verdict (SYNACK) on a destination before
    /// the SOCKS5 reply, so that refused destinations get a failure reply
    /// (costs one round trip to the server and its dial time; 0s = reply at once).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "0s")]
    socks_verdict_wait: Duration,
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match anytls_tokio::runtime(
        cli.threads.map(usize::from),
        cli.runtime.unwrap_or(match cli.cmd {
            Cmd::Server(_) => RuntimeMode::PerCore,
            Cmd::Client(_) | Cmd::Demo(_) => RuntimeMode::WorkStealing,
        }),
    ) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("anytls: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Server(a) => run_server(a).await,
            Cmd::Client(a) => run_client(a).await,
            Cmd::Demo(a) => demo::run(a).await,
        }
    });
    // Relay tasks may still hold sockets; do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = res {
        eprintln!("anytls: {e}");
        std::process::exit(1);
    }
}

/// SIGHUP, listened to when there is a file to reload (elsewhere, or
/// without `-c`, SIGHUP keeps its default action).
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new(enabled: bool) -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = enabled.then(|| signal(SignalKind::hangup())).and_then(|r| {
                r.map_err(|e| tracing::warn!("cannot listen for SIGHUP (no reload): {e}"))
                    .ok()
            });
            Hangup { signal }
        }
        #[cfg(not(unix))]
        {
            let _ = enabled;
            Hangup {}
        }
    }

    fn is_listening(&self) -> bool {
        #[cfg(unix)]
        {
            self.signal.is_some()
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// The next SIGHUP (never, when not listening).
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal {
            if s.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending::<()>().await
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Reads the config file (if any) and puts the flags over it: at start and
/// again on every reload. `generated`: the password made at start when
/// neither the file nor `--password` gave a user (kept across reloads).
fn load_server_setup(
    a: &ServerArgs,
    generated: Option<&str>,
) -> Result<(config::ServerSetup, Option<String>), BoxError> {
    let mut file = match &a.config {
        Some(p) => config::load_server_config(p, None)?,
        None => ServerOptions::default(),
    };
    let opts = &mut file.inbound;
    if let Some(l) = a.listen {
        opts.listen = Some(l.ip().to_string());
        opts.listen_port = Some(l.port());
    }
    if let (Some(c), Some(k)) = (&a.cert, &a.key) {
        let tls = opts.tls_mut();
        tls.certificate.clear();
        tls.key.clear();
        tls.certificate_path = Some(c.clone());
        tls.key_path = Some(k.clone());
        // A certificate from the command line replaces the file's ACME.
        tls.acme = None;
    }
    a.apply_acme(opts.tls_mut())?;
    if let Some(n) = &a.server_name {
        opts.tls_mut().server_name = Some(n.clone());
    }
    if let Some(p) = &a.padding_scheme {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        opts.padding_scheme = vec![text];
    }
    if let Some(f) = &a.fallback {
        opts.fallback = Some(f.clone());
    }
    let mut made = None;
    if let Some(pw) = &a.password {
        if !opts.users.is_empty() {
            tracing::warn!(
                "--password (or ANYTLS_PASSWORD in the environment) replaces the config's {} user(s) with one user, \"default\"",
                opts.users.len()
            );
        }
        opts.users = vec![user("default", pw.clone())];
    } else if opts.users.is_empty() {
        let pw = match generated {
            Some(pw) => pw.to_owned(),
            None => config::generate_password()?,
        };
        opts.users = vec![user("default", pw.clone())];
        made = Some(pw);
    }
    Ok((file.to_server_setup()?, made))
}

/// Logs what is wrong with a configured certificate (expired, not yet
/// valid, expiring soon, not covering the server name).
fn check_certificate(setup: &config::ServerSetup) {
    if let (None, ServerTls::Identity(id)) = (&setup.self_signed, &setup.config.tls) {
        if let Some(leaf) = id.certs.first() {
            let name = setup.server_name.as_deref();
            for p in check_server_certificate(leaf, name, std::time::SystemTime::now()) {
                match p {
                    CertificateProblem::ExpiresSoon { .. } => tracing::warn!("{p}"),
                    _ => tracing::error!("{p}"),
                }
            }
        }
    }
}

/// SIGHUP: reads the file again and, if it is valid, serves new connections
/// with it; returns the configuration now served. A file that fails to
/// load leaves the old configuration serving.
fn reload_server(
    a: &ServerArgs,
    old: config::ServerSetup,
    generated: Option<&str>,
    handle: &anytls_tokio::ReloadHandle,
) -> config::ServerSetup {
    let path = a.config.as_deref().map(|p| p.display().to_string());
    let path = path.as_deref().unwrap_or("(no file)");
    tracing::info!("SIGHUP: reloading {path}");
    let mut new = match load_server_setup(a, generated) {
        Ok((setup, _)) => setup,
        Err(e) => {
            tracing::error!("reload failed: {e}; the old configuration keeps serving");
            return old;
        }
    };
    // A generated certificate is made anew on every load: keep the one
    // clients pinned while its names stay the same.
    if new.self_signed.is_some() && new.self_signed == old.self_signed {
        new.config.tls = old.config.tls.clone();
    }
    // The same ACME settings: keep the running manager (and any order in
    // flight) rather than start another.
    if let (ServerTls::Acme(o), ServerTls::Acme(n)) = (&old.config.tls, &new.config.tls) {
        if o.config() == n.config() {
            new.config.tls = old.config.tls.clone();
        }
    }
    log_notes(&new.notes);
    check_certificate(&new);
    let closed = match handle.reload(new.config.clone()) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("reload failed: {e}; the old configuration keeps serving");
            return old;
        }
    };
    for change in describe_changes(&old, &new) {
        tracing::info!("reload: {change}");
    }
    if closed > 0 {
        tracing::info!("reload: closed {closed} session(s) of removed users or changed passwords");
    }
    tracing::info!("reloaded {path}: {} user(s)", new.config.users.len());
    new
}

/// What a reload changed, one line each.
fn describe_changes(old: &config::ServerSetup, new: &config::ServerSetup) -> Vec<String> {
    let (o, n) = (&old.config, &new.config);
    let find = |users: &[(String, String)], name: &str| {
        users
            .iter()
            .find(|(u, _)| u == name)
            .map(|(_, p)| p.clone())
    };
    let mut out = Vec::new();
    let added: Vec<&str> = n
        .users
        .iter()
        .filter(|(u, _)| find(&o.users, u).is_none())
        .map(|(u, _)| u.as_str())
        .collect();
    let removed: Vec<&str> = o
        .users
        .iter()
        .filter(|(u, _)| find(&n.users, u).is_none())
        .map(|(u, _)| u.as_str())
        .collect();
    let changed: Vec<&str> = n
        .users
        .iter()
        .filter(|(u, p)| find(&o.users, u).is_some_and(|q| &q != p))
        .map(|(u, _)| u.as_str())
        .collect();
    for (what, list) in [
        ("users added", added),
        ("users removed", removed),
        ("passwords changed", changed),
    ] {
        if !list.is_empty() {
            out.push(format!("{what}: {}", list.join(", ")));
        }
    }
    if o.padding != n.padding {
        out.push(format!(
            "padding scheme changed (md5 {})",
            n.padding.md5_hex()
        ));
    }
    let pin = |c: &anytls_tokio::ServerConfig| c.tls.leaf_sha256();
    match (&o.tls, &n.tls) {
        (ServerTls::Acme(a), ServerTls::Acme(b)) if a.ptr_eq(b) => {}
        (_, ServerTls::Acme(a)) => out.push(format!(
            "ACME settings changed: a new manager for {}",
            a.config().domains.join(", ")
        )),
        _ if pin(o) != pin(n) || pin(n).is_none() => out.push(match pin(n) {
            Some(p) => format!("certificate changed (SHA-256 pin {})", hex32(&p)),
            None => "TLS configuration reloaded".to_owned(),
        }),
        _ => {}
    }
    if o.alpn != n.alpn || format!("{:?}", o.tls_options) != format!("{:?}", n.tls_options) {
        out.push("ALPN or TLS options changed".to_owned());
    }
    if o.fallback != n.fallback {
        out.push(format!(
            "fallback changed: {}",
            n.fallback.map_or("none".to_owned(), |f| f.to_string())
        ));
    }
    if old.listen != new.listen {
        out.push(format!(
            "listen address {} not applied (still {}): restart to change it",
            new.listen, old.listen
        ));
    }
    if out.is_empty() {
        out.push("nothing changed".to_owned());
    }
    out
}

async fn run_server(a: ServerArgs) -> Result<(), BoxError> {
    let (setup, made) = load_server_setup(&a, None)?;
    let generated = made.is_some();
    log_notes(&setup.notes);
    let pin = setup.config.tls.leaf_sha256();
    check_certificate(&setup);
    let listener = setup
        .socket
        .bind(setup.listen)
        .map_err(|e| format!("listen {}: {e}", setup.listen))?;
    let server = Server::from_std(listener, setup.config.clone())?;
    let addr = server.local_addr()?;
    if let ServerTls::Acme(acme) = &setup.config.tls {
        let c = acme.config();
        tracing::info!(
            "certificate: ACME for {} from {} (account and certificates in {}){}",
            c.domains.join(", "),
            c.directory_url,
            c.data_directory.display(),
            if acme.certificate().is_some() {
                ""
            } else {
                "; TLS handshakes are refused until the first certificate is issued"
            }
        );
    }
    tracing::info!(
        "anytls server listening on {addr} ({} user(s), fallback {})",
        setup.config.users.len(),
        setup
            .config
            .fallback
            .map_or("none".to_owned(), |f| f.to_string())
    );
    // What a user needs to connect: on stdout, not in the logs.
    if generated {
        println!("generated password: {}", setup.config.users[0].1);
    }
    if let Some(names) = &setup.self_signed {
        println!("self-signed certificate for {}", names.join(", "));
        if let Some(pin) = pin {
            println!("certificate SHA-256 pin: {}", hex32(&pin));
        }
    }
    let host = match (&setup.server_name, addr.ip().is_unspecified()) {
        (Some(n), _) => n.clone(),
        (None, false) => addr.ip().to_string(),
        (None, true) => {
            tracing::info!(
                "listening on all interfaces: put this server's public address in place of 127.0.0.1 below"
            );
            "127.0.0.1".to_owned()
        }
    };
    let sni = setup
        .server_name
        .clone()
        .or_else(|| setup.self_signed.as_ref().and_then(|n| n.first().cloned()));
    for (name, password) in &setup.config.users {
        let uri = AnytlsUri {
            password: Some(password.clone()),
            host: host.clone(),
            port: addr.port(),
            sni: sni.clone(),
            insecure: setup.self_signed.is_some(),
            ..AnytlsUri::default()
        };
        let who = if setup.config.users.len() > 1 {
            format!(" ({name})")
        } else {
            String::new()
        };
        println!("share URI{who}: {uri}");
        if let (Some(_), Some(pin)) = (&setup.self_signed, pin) {
            let mut cmd = format!(
                "anytls client --server {} --password {} --pin {}",
                config::join_host_port(&host, addr.port()),
                shell_quote(password),
                hex32(&pin)
            );
            if let Some(s) = &sni {
                cmd.push_str(&format!(" --sni {}", shell_quote(s)));
            }
            println!("pinned client{who}: {cmd}");
        }
    }

    let stats = server.stats_handle();
    if let Some(m) = a.metrics {
        let l = TcpListener::bind(m)
            .await
            .map_err(|e| format!("metrics listen {m}: {e}"))?;
        let bound = l.local_addr()?;
        if !bound.ip().is_loopback() {
            tracing::warn!(
                "metrics on {bound}: anyone who can reach it sees user names and traffic counts"
            );
        }
        println!("metrics: http://{bound}/metrics");
        tokio::spawn(metrics::serve(l, stats.clone()));
    }
    tokio::spawn(metrics::log_summaries(stats));

    let handle = server.shutdown_handle();
    let reload = server.reload_handle();
    let mut serve = tokio::spawn(server.serve());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut hangup = Hangup::new(a.config.is_some());
    if let (Some(p), true) = (&a.config, hangup.is_listening()) {
        tracing::info!("SIGHUP reloads {}", p.display());
    }
    let mut current = setup;
    loop {
        tokio::select! {
            r = &mut serve => return Ok(r??),
            _ = &mut shutdown => break,
            _ = hangup.recv() => {
                current = reload_server(&a, current, made.as_deref(), &reload);
            }
        }
    }
    tracing::info!(
        "shutting down: no new connections; open sessions get up to 5 s (Ctrl-C again to quit now)"
    );
    handle.shutdown();
    tokio::select! {
        r = serve => r??,
        _ = shutdown_signal() => tracing::warn!("second signal: quitting now"),
    }
    Ok(())
}

fn user(name: &str, password: String) -> User {
    User {
        name: name.to_owned(),
        password,
    }
}

/// Quotes for a POSIX shell when needed.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/=@%+,".contains(&c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

async fn run_client(a: ClientArgs) -> Result<(), BoxError> {
    let mut file = match &a.config {
        Some(p) => config::load_client_config(p, a.proxy.as_deref())?,
        None if a.proxy.is_some() => {
            return Err("--proxy NAME chooses from a config file (-c)".into());
        }
        None => ClientOptions::default(),
    };
    let opts = &mut file.outbound;
    // Config file < URI < flags.
    let is_uri = |s: &str| s.to_ascii_lowercase().starts_with("anytls://");
    let (uri, server) = match a.server {
        Some(s) if is_uri(&s) => {
            if a.uri.is_some() {
                return Err("give the anytls:// URI only once".into());
            }
            (Some(s), None)
        }
        s => (a.uri, s),
    };
    if let Some(u) = uri {
        opts.apply_uri(&AnytlsUri::parse(&u)?);
    }
    if let Some(s) = server {
        let (host, port) = config::split_host_port(&s)
            .ok_or_else(|| format!("--server {s:?}: expected HOST:PORT or an anytls:// URI"))?;
        opts.server = Some(host);
        opts.server_port = Some(port);
    }
    if let Some(p) = a.password {
        if opts.password.is_some() {
            tracing::info!("--password (or ANYTLS_PASSWORD) replaces the config's password");
        }
        opts.password = Some(p);
    }
    if let Some(s) = a.sni {
        opts.tls_mut().server_name = Some(s);
    }
    if a.insecure {
        opts.set_verification(Verification::Insecure);
    } else if let Some(p) = a.pin {
        opts.set_verification(Verification::Pin(parse_pin(&p)?));
    } else if let Some(ca) = a.ca {
        opts.set_verification(Verification::CaFile(ca));
    }
    macro_rules! set {
        ($($field:ident),*) => { $( if a.$field.is_some() { opts.$field = a.$field; } )* };
    }
    set!(
        idle_session_check_interval,
        idle_session_timeout,
        min_idle_session,
        ensure_idle_session,
        ensure_idle_session_create_rate,
        heartbeat,
        heartbeat_timeout,
        max_connection_lifetime
    );
    let mut setup = file.to_client_setup()?;
    log_notes(&setup.notes);
    let listeners = local_listeners(&mut setup.listeners, &a.listen, &a.auth)?;
    let client = Client::new(setup.config.clone())?;
    let p = &setup.config.pool;
    tracing::info!(
        "anytls server {} ({:?}; ensure_idle_session {}, min_idle_session {}, heartbeat {})",
        setup.config.server,
        setup.config.verification,
        p.ensure_idle,
        p.min_idle,
        p.heartbeat
            .map_or("off".to_owned(), config::format_go_duration),
    );
    let mut serving = tokio::task::JoinSet::new();
    for l in listeners {
        let tcp = l
            .socket
            .bind(l.addr)
            .and_then(TcpListener::from_std)
            .map_err(|e| {
                format!(
                    "{} listen {}: {e}",
                    config::protocols_name(l.protocols),
                    l.addr
                )
            })?;
        let local = tcp.local_addr()?;
        if l.users.is_empty() && !local.ip().is_loopback() {
            tracing::warn!(
                "the proxy on {local} takes connections from other machines without \
                 authentication: anyone who reaches it can use your AnyTLS server; add \
                 --auth USER:PASS (or users in the config) or listen on 127.0.0.1"
            );
        }
        // What a user needs to connect: on stdout. A mixed port speaks both.
        if l.protocols != Protocols::Http {
            println!("SOCKS5 proxy listening on {local}");
        }
        if l.protocols != Protocols::Socks {
            println!("HTTP proxy listening on {local}");
        }
        tracing::info!(
            "{} proxy on {local}{}{}",
            config::protocols_name(l.protocols),
            match l.users.len() {
                0 => " without authentication".to_owned(),
                n => format!(" for {n} user(s)"),
            },
            l.tag
                .as_deref()
                .map_or(String::new(), |t| format!(" ({t})")),
        );
        let mut cfg = ProxyConfig::default()
            .with_protocols(l.protocols)
            .with_users(l.users);
        cfg.verdict_wait = a.socks_verdict_wait;
        serving.spawn(serve_proxy(tcp, client.clone(), cfg));
    }
    tokio::select! {
        r = serving.join_next() => match r {
            Some(Ok(r)) => r?,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        },
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    serving.abort_all();
    tracing::info!("pool statistics: {:?}", client.stats());
    client.close();
    Ok(())
}

/// The startup summary: what the config gave (info), what was ignored
/// (info) and warnings (warn).
fn log_notes(notes: &[ConfigNote]) {
    for n in notes {
        match n.kind {
            NoteKind::Warning => tracing::warn!("config: {n}"),
            _ => tracing::info!("config: {n}"),
        }
    }
}

/// The listeners to serve: `--listen` flags (mixed, replacing the config's)
/// or the config's, else 127.0.0.1:1080; `--auth` users go to every listener
/// without users of its own.
fn local_listeners(
    from_config: &mut Vec<ListenerSetup>,
    flags: &[SocketAddr],
    auth: &[String],
) -> Result<Vec<ListenerSetup>, BoxError> {
    let mixed = |addr| ListenerSetup {
        addr,
        protocols: Protocols::Mixed,
        users: Vec::new(),
        tag: None,
        socket: ListenOptions::default(),
    };
    let mut list = if !flags.is_empty() {
        flags.iter().copied().map(mixed).collect()
    } else if !from_config.is_empty() {
        std::mem::take(from_config)
    } else {
        vec![mixed(config::DEFAULT_SOCKS_LISTEN)]
    };
    let users = auth
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.split_once(':')
                .map(|(u, p)| ProxyUser::new(u, p))
                // Without a colon it may be just a password: not echoed.
                .ok_or_else(|| format!("--auth number {}: expected USER:PASS", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for l in list.iter_mut().filter(|l| l.users.is_empty()) {
        l.users = users.clone();
    }
    Ok(list)
}
