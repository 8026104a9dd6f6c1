//! What the bench binaries (`e2e`, `flood`, `soak`) share about their child
//! processes: the runtime, starting `--role` children of the same binary,
//! the line protocol they speak over stdin/stdout and their memory figures
//! from `/proc`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anytls_tokio::tls::Identity;
use anytls_tokio::{AppRuntime, RuntimeMode, Server, ServerConfig};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// The error type of the bench binaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The result type of the bench binaries.
pub type Res<T> = Result<T, BoxError>;

/// The runtime of a bench process, as `anytls_tokio::runtime` makes it
/// (`threads`: `None` for one per core); on failure prints why (as `prog`)
/// and exits with `code`. Child roles run as the `anytls` program would
/// (servers per core, clients on the work-stealing pool), parents that
/// drive the load on the work-stealing pool.
pub fn runtime(prog: &str, code: i32, threads: Option<usize>, mode: RuntimeMode) -> AppRuntime {
    match anytls_tokio::runtime(threads, mode) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{prog}: cannot start the runtime: {e}");
            std::process::exit(code);
        }
    }
}

/// Starts this binary again with `args`: stdin and stdout piped (the control
/// channel), stderr inherited, killed when dropped.
pub fn spawn_self(args: Vec<OsString>) -> io::Result<Child> {
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}

/// The next answer line of child `name`, waiting at most `step`; an `ERR`
/// answer, an exit or a timeout is an error.
pub async fn answer_line(
    name: &str,
    lines: &mut Lines<BufReader<ChildStdout>>,
    step: Duration,
) -> Res<String> {
    match timeout(step, lines.next_line()).await {
        Err(_) => Err(format!("{name}: no answer within {step:?}").into()),
        Ok(Err(e)) => Err(format!("{name}: {e}").into()),
        Ok(Ok(None)) => Err(format!("{name} exited").into()),
        Ok(Ok(Some(l))) if l.starts_with("ERR ") => Err(format!("{name}: {l}").into()),
        Ok(Ok(Some(l))) => Ok(l),
    }
}

/// A child's control loop: answers each stdin line with `answer`'s result
/// (`ERR <error>` on failure) until stdin closes.
pub async fn control_loop<F>(mut answer: F) -> Res<()>
where
    F: AsyncFnMut(&str) -> Res<String>,
{
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match answer(line.trim()).await {
            Ok(r) => r,
            Err(e) => format!("ERR {e}"),
        };
        println!("{reply}");
    }
    Ok(())
}

/// The value of a `--role` child's required option `--what`.
pub fn need<'a, T>(v: &'a Option<T>, what: &str) -> Res<&'a T> {
    v.as_ref()
        .ok_or_else(|| format!("--role needs --{what}").into())
}

/// Arguments of mixed types as `OsString`s.
pub fn os(args: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}

/// A `kB` field of `/proc/<pid>/status` (`"VmRSS:"`, `"VmHWM:"`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time of process `pid`, all its threads, user + system, in clock ticks
/// (USER_HZ, 100 on Linux): `utime + stime` of `/proc/<pid>/stat`. Children
/// the process started are not included.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything;
    // the fields after its closing one start with field 3, the state.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resets the peak RSS (VmHWM) of `pid` to its current RSS.
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The `key=value` pairs of a child's `STATS ...` answer, the values as
/// numbers (pairs that are not numbers are left out).
pub fn parse_stats(name: &str, line: &str) -> Res<HashMap<String, u64>> {
    let body = line
        .strip_prefix("STATS")
        .ok_or_else(|| format!("{name}: unexpected answer {line:?}"))?;
    Ok(body
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect())
}

/// The hidden options `e2e` and `flood` pass to their `--role` children.
#[derive(clap::Args, Debug, Default)]
pub struct ChildArgs {
    /// Server certificate (PEM).
    #[arg(long, hide = true)]
    pub cert: Option<PathBuf>,
    /// Server key (PEM).
    #[arg(long, hide = true)]
    pub key: Option<PathBuf>,
    /// Where a client or tunnel connects.
    #[arg(long, hide = true)]
    pub server: Option<String>,
    /// Pinned server certificate (hex SHA-256).
    #[arg(long, hide = true)]
    pub pin: Option<String>,
    /// Worker threads of this child's runtime (the parent's `--threads`).
    #[arg(long, hide = true)]
    pub child_threads: Option<usize>,
    /// How this child's connections share its threads (the parent's
    /// `--runtime`; else the `anytls` program's default for the role).
    #[arg(long, hide = true, value_enum)]
    pub child_runtime: Option<RuntimeMode>,
    /// Listen on this address and serve until killed, without the control
    /// channel on stdin/stdout: to run a role as a stand-alone program (for
    /// e2e, our own binary as a `--compare-*` peer).
    #[arg(long, hide = true)]
    pub listen: Option<String>,
}

impl ChildArgs {
    /// The server identity from `--cert` and `--key`.
    pub fn identity(&self) -> Res<Identity> {
        Ok(Identity::from_pem_files(
            need(&self.cert, "cert")?,
            need(&self.key, "key")?,
        )?)
    }
}

/// `--role server`: our AnyTLS server with the built-in TCP relay and
/// default settings on an ephemeral port of 127.0.0.1 (or `--listen`).
/// Prints `READY <addr>`, then answers `stats` with `STATS active=<sessions>`
/// (with `--listen`: serves until killed).
pub async fn role_server(child: &ChildArgs, password: &str) -> Res<()> {
    let bind = child.listen.as_deref().unwrap_or("127.0.0.1:0");
    let server = Server::bind(bind, ServerConfig::new(password, child.identity()?)).await?;
    let addr = server.local_addr()?;
    let handle = server.shutdown_handle();
    tokio::spawn(server.serve());
    println!("READY {addr}");
    if child.listen.is_some() {
        return std::future::pending().await;
    }
    control_loop(async |cmd| match cmd {
        "stats" => Ok(format!("STATS active={}", handle.active_sessions())),
        _ => Err(format!("unknown command {cmd:?}").into()),
    })
    .await
}
