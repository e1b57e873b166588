//! One core's life: accept from its own SO_REUSEPORT listener, serve each
//! connection in its own task, keep the Date header and the snapshot current.
//! Threads, pinning and the io driver come from [`todo_lb::runtime`].

use std::net::TcpListener as StdListener;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use todo_model::Snapshot;

use crate::core::Core;
use crate::shutdown::Shutdown;

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
/// task; keep the Date header and the snapshot current; then drain.
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
            date_core.sweep_quiet();
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
                core.open.set(core.open.get() + 1);
                monoio::spawn(async move {
                    let served = AssertUnwindSafe(crate::conn::serve(core.clone(), stream))
                        .catch_unwind()
                        .await;
                    if served.is_err() {
                        // A bug, not an input: count it and keep the core up.
                        core.metrics().panicked();
                    }
                    core.metrics().closed();
                    core.open.set(core.open.get() - 1);
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
    // Draining: /readyz says 503, every connection closes after its next
    // response or at once when quiet (conn.rs). Closing the listener hands
    // connections still in its accept queue to another process on the same
    // port when net.ipv4.tcp_migrate_req is 1; otherwise the kernel resets them.
    core.draining.set(true);
    core.sweep_quiet();
    drop(listener);
    let deadline = std::time::Instant::now() + core.config.drain_timeout;
    while core.open.get() > 0 && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if core.open.get() > 0 {
        eprintln!(
            "todo-server: core {}: drain timeout, closing {} connections",
            core.index,
            core.open.get()
        );
    }
}
