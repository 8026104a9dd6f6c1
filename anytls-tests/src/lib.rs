//! Test kit shared by the suites in `tests/`: every suite is written once as
//! `async fn name<C: TestRuntime, S: TestRuntime>()` (C runs the client, S the
//! server) and instantiated by [`suite!`] for tokio, smol and both mixes.
//!
//! Only what a test needs from a runtime beyond [`Runtime`] is here:
//! running the test's top-level future.

use std::future::Future;

pub mod fixture;
pub mod pebble;
pub mod peers;
pub mod targets;

pub use anytls_io::Runtime;
pub use anytls_smol::Smol;
pub use anytls_tokio::Tokio;

/// A runtime a test can run on.
pub trait TestRuntime: Runtime {
    /// For messages.
    const NAME: &'static str;
    /// Whether the runtime needs a tokio context (so `tokio::spawn` works).
    const NEEDS_TOKIO: bool;
}

impl TestRuntime for Tokio {
    const NAME: &'static str = "tokio";
    const NEEDS_TOKIO: bool = true;
}

impl TestRuntime for Smol {
    const NAME: &'static str = "smol";
    const NEEDS_TOKIO: bool = false;
}

/// Runs a test future with client runtime `C` and server runtime `S`: inside a
/// two-worker tokio runtime when either of them is tokio, else on
/// `smol::block_on` alone (so a smol-only test proves no tokio context is
/// needed).
pub fn run<C: TestRuntime, S: TestRuntime, F: Future>(fut: F) -> F::Output {
    if C::NEEDS_TOKIO || S::NEEDS_TOKIO {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(fut)
    } else {
        smol::block_on(fut)
    }
}

/// Runs a test future inside a two-thread [`anytls_tokio::ThreadPerCore`]:
/// the client's and the server's connections are pinned to its threads and
/// moved between them (the `anytls` server's default runtime, the client's
/// `--runtime per-core`).
pub fn run_per_core<F: Future>(fut: F) -> F::Output {
    let rt = anytls_tokio::ThreadPerCore::new(2).expect("thread-per-core runtime");
    let out = rt.block_on(fut);
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    out
}

/// Instantiates generic test functions `async fn f<C, S>()` for every client
/// and server runtime pair: `tokio_tokio`, `smol_smol`, `smol_client_tokio_server`
/// and `tokio_client_smol_server`, and tokio for both on a thread-per-core
/// runtime, `tokio_per_core` (modules of `#[test]`s).
#[macro_export]
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        $crate::suite!(@pair tokio_tokio, $crate::Tokio, $crate::Tokio; $($name),*);
        $crate::suite!(@pair smol_smol, $crate::Smol, $crate::Smol; $($name),*);
        $crate::suite!(@pair smol_client_tokio_server, $crate::Smol, $crate::Tokio; $($name),*);
        $crate::suite!(@pair tokio_client_smol_server, $crate::Tokio, $crate::Smol; $($name),*);
        mod tokio_per_core {
            $(
                #[test]
                fn $name() {
                    $crate::run_per_core(super::$name::<$crate::Tokio, $crate::Tokio>())
                }
            )*
        }
    };
    (@pair $module:ident, $c:ty, $s:ty; $($name:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    $crate::run::<$c, $s, _>(super::$name::<$c, $s>())
                }
            )*
        }
    };
}

/// Instantiates generic test functions `async fn f<R>()` whose side of the
/// test runs on one runtime `R`: modules `tokio` and `smol` of `#[test]`s
/// (the interop suites, where the other side is a peer process).
#[macro_export]
macro_rules! one_runtime_suite {
    ($($name:ident),* $(,)?) => {
        $crate::one_runtime_suite!(@runtime tokio, $crate::Tokio; $($name),*);
        $crate::one_runtime_suite!(@runtime smol, $crate::Smol; $($name),*);
    };
    (@runtime $module:ident, $rt:ty; $($name:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    $crate::run::<$rt, $rt, _>(super::$name::<$rt>())
                }
            )*
        }
    };
}
