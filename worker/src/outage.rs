//! Riding out a dependency that is away (the broker, PostgreSQL): wait with
//! a growing backoff and try again, for as long as it takes. What a restart
//! could not fix (a malformed URL, an invalid topic) is an error instead.
//!
//! The log says when an outage begins, every [`REMIND_EVERY`] while it
//! lasts, and how long it lasted when it ends, so a long outage is a few
//! lines, not one per attempt; the metrics say it too
//! (`todo_worker_dependency_up`, `todo_worker_outages_total`).

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{Dependency, Metrics};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// One dependency's state as this worker sees it.
pub struct Outage {
    what: Dependency,
    metrics: Arc<Metrics>,
    since: Option<Instant>,
    said: Instant,
    backoff: Duration,
}

impl Outage {
    pub fn new(what: Dependency, metrics: &Arc<Metrics>) -> Self {
        Outage {
            what,
            metrics: metrics.clone(),
            since: None,
            said: Instant::now(),
            backoff: BACKOFF_MIN,
        }
    }

    /// An attempt failed with `err`: say so when due, then wait the backoff.
    pub async fn failed(&mut self, doing: &str, err: &(dyn Display + Sync)) {
        self.seen(doing, err);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// A failure reported by a client that retries by itself (librdkafka
    /// reconnects with its own backoff): say so when due, wait nothing.
    pub fn seen(&mut self, doing: &str, err: &dyn Display) {
        let now = Instant::now();
        match self.since {
            None => {
                self.since = Some(now);
                self.said = now;
                self.metrics.away(self.what);
                eprintln!(
                    "todo-worker: {} is away ({doing}: {err}); waiting for it (retries back off up to {BACKOFF_MAX:?})",
                    self.what.name()
                );
            }
            Some(since) if now.duration_since(self.said) >= REMIND_EVERY => {
                self.said = now;
                eprintln!(
                    "todo-worker: {} still away after {:.0?} ({doing}: {err})",
                    self.what.name(),
                    now.duration_since(since)
                );
            }
            Some(_) => {}
        }
    }

    /// An attempt succeeded: say so if it had been away.
    pub fn ok(&mut self) {
        if let Some(since) = self.since.take() {
            self.metrics.back(self.what);
            eprintln!(
                "todo-worker: {} is back after {:.1?}",
                self.what.name(),
                since.elapsed()
            );
        }
        self.backoff = BACKOFF_MIN;
    }
}
