//! Per-core start-up: one named, pinned thread per core, each running its own
//! monoio runtime (io_uring where the kernel allows it, epoll otherwise) and
//! accepting from its own SO_REUSEPORT listener.

use std::net::TcpListener as StdListener;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use todo_model::Snapshot;

use crate::config::Driver;
use crate::core::Core;
use crate::shutdown::Shutdown;

/// io_uring submission queue entries per core.
const URING_ENTRIES: u32 = 4096;

/// The driver `wanted` resolves to on this machine.
pub fn resolve_driver(wanted: Driver) -> Result<Driver, &'static str> {
    let uring = monoio::utils::detect_uring();
    match wanted {
        Driver::Auto if uring => Ok(Driver::Uring),
        Driver::Auto | Driver::Legacy => Ok(Driver::Legacy),
        Driver::Uring if uring => Ok(Driver::Uring),
        Driver::Uring => Err("io_uring was required (TODO_DRIVER=uring) but this kernel or its seccomp profile does not allow it"),
    }
}

/// Ring set-up: COOP_TASKRUN (completions are not pushed with an interrupt to
/// a thread that is busy anyway) and SINGLE_ISSUER (only the core's own thread
/// submits). Measured here at depth 1 with 2000 connections: about a quarter
/// less server CPU per request than a plain ring. Kernels before 6.0 lack
/// them; [`block_on`] then falls back to a plain ring.
fn tuned_ring() -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    b.setup_coop_taskrun().setup_single_issuer();
    b
}

/// Run `core_main` on a runtime of `driver` on the current thread.
pub fn block_on(
    driver: Driver,
    main: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    match driver {
        Driver::Uring => {
            let tuned = RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .uring_builder(tuned_ring())
                .enable_timer()
                .build();
            let mut rt = match tuned {
                Ok(rt) => rt,
                Err(_) => RuntimeBuilder::<IoUringDriver>::new()
                    .with_entries(URING_ENTRIES)
                    .enable_timer()
                    .build()?,
            };
            rt.block_on(main)
        }
        Driver::Auto | Driver::Legacy => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(main),
    }
    Ok(())
}

/// Where a core's snapshot updates come from.
pub enum Refresh {
    /// Snapshots rendered by the embedded apply thread.
    Embedded(flume::Receiver<Arc<Snapshot>>),
    /// The core's own Redis subscription.
    Redis {
        url: String,
        lookups: crate::distributed::lookup::Lookups,
    },
}

/// One core's life: accept until shutdown, serving each connection in its own
/// task; keep the Date header and the snapshot current.
pub async fn core_main(
    core: Rc<Core>,
    listener: StdListener,
    refresh: Refresh,
    shutdown: Shutdown,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("todo-server: core {}: listener: {e}", core.index);
            return;
        }
    };
    let date_core = core.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(Duration::from_secs(1)).await;
            date_core.date.refresh();
        }
    });
    match refresh {
        Refresh::Embedded(updates) => {
            let core = core.clone();
            monoio::spawn(async move {
                while let Ok(mut latest) = updates.recv_async().await {
                    while let Ok(newer) = updates.try_recv() {
                        latest = newer;
                    }
                    core.install(&latest);
                }
            });
        }
        Refresh::Redis { url, lookups } => {
            monoio::spawn(crate::distributed::refresh::run(core.clone(), url, lookups));
        }
    }

    let mut last_accept_error = None::<std::time::Instant>;
    loop {
        let accepted = monoio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let core = core.clone();
                core.metrics().accepted();
                monoio::spawn(async move {
                    let served = AssertUnwindSafe(crate::conn::serve(core.clone(), stream))
                        .catch_unwind()
                        .await;
                    if served.is_err() {
                        // A bug, not an input: count it and keep the core up.
                        core.metrics().panicked();
                    }
                    core.metrics().closed();
                });
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: say so once a second, back off
                // briefly, keep serving the connections we have.
                if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    eprintln!("todo-server: core {}: accept: {e}", core.index);
                    last_accept_error = Some(std::time::Instant::now());
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    core.draining.set(true);
}
