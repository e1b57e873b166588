//! One core's life: accept from its own SO_REUSEPORT listener, serve each
//! connection in its own task, keep the Date header and the snapshot current.
//! Threads, pinning and the io driver come from [`todo_runtime`].

use std::net::TcpListener as StdListener;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use todo_model::Snapshot;

use crate::feed::Changes;

use crate::per_core::Core;
use todo_runtime::{lifecycle, Shutdown};

/// Where a core's snapshot updates come from.
pub enum Refresh {
    /// Snapshots rendered by the embedded apply thread.
    Embedded(flume::Receiver<Arc<Snapshot>>),
    /// The core's own Redis subscription.
    Redis {
        url: String,
        db: crate::distributed::db_thread::DbThread,
    },
}

/// One core's life: accept until shutdown, serving each connection in its own
/// task; keep the Date header and the snapshot current; then drain.
pub async fn run(
    core: Rc<Core>,
    listener: StdListener,
    refresh: Refresh,
    changes: flume::Receiver<Arc<Changes>>,
    shutdown: Shutdown,
) {
    let date_core = core.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(Duration::from_secs(1)).await;
            date_core.reads.date.refresh();
            date_core.conns.sweep_quiet();
            // Lines of a quiet core reach the log within a second.
            date_core.obs.log.flush(date_core.obs.metrics());
        }
    });
    // The change feed: each batch of changes in order, and its heartbeat.
    let feed_core = core.clone();
    monoio::spawn(async move {
        while let Ok(changes) = changes.recv_async().await {
            feed_core.feed.publish(&changes, feed_core.obs.metrics());
        }
    });
    let beat_core = core.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(beat_core.feed.settings().heartbeat).await;
            beat_core.feed.heartbeat(beat_core.obs.metrics());
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
        Refresh::Redis { url, db } => {
            monoio::spawn(crate::distributed::refresh::run(core.clone(), url, db));
        }
    }

    let label = format!("todo-server: core {}", core.index);
    lifecycle::accept_until(listener, &shutdown, &label, |stream, _peer| {
        let core = core.clone();
        core.obs.metrics().accepted();
        core.conns.open.opened();
        monoio::spawn(async move {
            let served = AssertUnwindSafe(crate::conn::serve(core.clone(), stream))
                .catch_unwind()
                .await;
            if served.is_err() {
                // A bug, not an input: count it and keep the core up.
                core.obs.metrics().panicked();
            }
            core.obs.metrics().closed();
            core.conns.open.closed();
        });
    })
    .await;
    // Draining: /readyz says 503, every connection closes after its next
    // response or at once when quiet (conn.rs), every change-feed stream
    // ends so that its client resumes on another server.
    core.conns.drain();
    core.feed.close();
    if !core.conns.open.drained(core.config.drain_timeout).await {
        eprintln!(
            "todo-server: core {}: drain timeout, closing {} connections",
            core.index,
            core.conns.open.count()
        );
    }
}
