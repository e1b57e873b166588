//! The embedded default (docs/architecture.md §7): the whole write path in one
//! process, with no external service.
//!
//! ```text
//! core k --ApplyRequest--> apply thread: append batch to the log, fdatasync
//!                                        -> Store::apply each (todo_model::decide)
//!                                        -> render the snapshot ONCE
//!                                        -> send it to every core, and the
//!                                           batch's changes to every feed,
//!                                           then reply
//! ```
//!
//! One thread owns the [`store::Store`] and the [`command_log::CommandLog`]; cores talk
//! to it over bounded channels. The apply and render code is the shared model
//! code the Kafka worker uses too; only where commands come from and where the
//! result is kept differ.

pub mod command_log;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::thread;

use todo_model::{Outcome, Snapshot, Todo, TodoCommand};

use crate::errors::Unavailable;
use crate::feed::Fanout;

use self::store::{Claim, Store, StoreImage};

/// Longest queue of requests waiting for the apply thread; a full queue makes
/// cores wait (back-pressure), it never drops an accepted write.
pub const QUEUE_DEPTH: usize = 16 * 1024;
/// Most commands made durable by one fdatasync.
pub const MAX_BATCH: usize = 4096;

/// Why a write could not be accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error("the command log could not be written")]
    Durability,
    #[error("the apply thread has stopped")]
    Stopped,
    #[error("the Idempotency-Key was used for another request")]
    KeyReused,
}

/// What became of a submitted command: its ids (a keyed retry's are the
/// first command's) and its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub command_id: u64,
    pub todo_id: u64,
    pub outcome: Outcome,
}

pub enum ApplyRequest {
    /// Make durable, apply, answer with the outcome.
    Submit(TodoCommand, flume::Sender<Result<Receipt, ApplyError>>),
    /// The rendered JSON of one todo.
    Get(u64, flume::Sender<Option<Todo>>),
    /// The recorded outcome of one command.
    Outcome(u64, flume::Sender<Option<Outcome>>),
    /// Make what came before durable, then stop (the server is exiting).
    Stop,
}

/// A core's handle on the apply thread.
#[derive(Clone)]
pub struct Handle {
    tx: flume::Sender<ApplyRequest>,
}

/// A command handed to the apply thread (or waiting for room in its queue).
pub struct Submission {
    unsent: Option<ApplyRequest>,
    reply: flume::Receiver<Result<Receipt, ApplyError>>,
}

impl Handle {
    /// Ask the apply thread to finish what it was given and stop. Needed
    /// because a connection task still open when a core stops may keep a
    /// handle alive.
    pub fn stop(&self) {
        let _ = self.tx.send(ApplyRequest::Stop);
    }

    /// Hand `cmd` over now if the queue has room; [`Handle::finish`] waits.
    pub fn start(&self, cmd: TodoCommand) -> Submission {
        let (tx, rx) = flume::bounded(1);
        let unsent = match self.tx.try_send(ApplyRequest::Submit(cmd, tx)) {
            Ok(()) => None,
            Err(flume::TrySendError::Full(req) | flume::TrySendError::Disconnected(req)) => {
                Some(req)
            }
        };
        Submission { unsent, reply: rx }
    }

    /// Wait until the command is durable and applied.
    pub async fn finish(&self, sub: Submission) -> Result<Receipt, ApplyError> {
        if let Some(req) = sub.unsent {
            self.tx
                .send_async(req)
                .await
                .map_err(|_| ApplyError::Stopped)?;
        }
        sub.reply
            .recv_async()
            .await
            .map_err(|_| ApplyError::Stopped)?
    }

    pub async fn get(&self, id: u64) -> Result<Option<Todo>, Unavailable> {
        let (tx, rx) = flume::bounded(1);
        let asked = self.tx.send_async(ApplyRequest::Get(id, tx)).await;
        asked.map_err(|_| Unavailable)?;
        rx.recv_async().await.map_err(|_| Unavailable)
    }

    pub async fn outcome(&self, command_id: u64) -> Result<Option<Outcome>, Unavailable> {
        let (tx, rx) = flume::bounded(1);
        let asked = self
            .tx
            .send_async(ApplyRequest::Outcome(command_id, tx))
            .await;
        asked.map_err(|_| Unavailable)?;
        rx.recv_async().await.map_err(|_| Unavailable)
    }
}

/// What starting the embedded store gives the server.
pub struct Started {
    pub handle: Handle,
    /// The read model the apply thread keeps and the cores query.
    pub model: crate::read_model::Shared,
    /// The snapshot every core starts with.
    pub snapshot: Arc<Snapshot>,
    /// One receiver per core for newer snapshots.
    pub updates: Vec<flume::Receiver<Arc<Snapshot>>>,
    pub thread: thread::JoinHandle<()>,
    pub todos: usize,
    pub replayed: usize,
}

/// Open `data_dir` (seeding `seed_count` todos into a new one) and start the
/// apply thread. It stops when every [`Handle`] is dropped.
pub fn start(
    data_dir: &Path,
    cores: usize,
    seed_count: usize,
    feeds: Fanout,
) -> Result<Started, command_log::LogError> {
    let lock = command_log::lock(data_dir)?;
    let (mut store, mut log, replayed) = command_log::open(data_dir, || {
        StoreImage::seeded(todo_model::seed::seed(seed_count, todo_model::now_ms()))
    })?;
    let snapshot = Arc::new(store.snapshot());
    let todos = store.len();
    let model = store.shared().clone();
    let (tx, rx) = flume::bounded(QUEUE_DEPTH);
    let (senders, updates): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::unbounded()).unzip();
    let thread = thread::Builder::new()
        .name("todo-apply".into())
        .spawn(move || {
            apply_loop(&rx, &mut store, &mut log, &senders, &feeds);
            // Released once the last command is durable.
            drop(lock);
        })
        .expect("spawning the apply thread");
    Ok(Started {
        handle: Handle { tx },
        model,
        snapshot,
        updates,
        thread,
        todos,
        replayed,
    })
}

fn apply_loop(
    rx: &flume::Receiver<ApplyRequest>,
    store: &mut Store,
    log: &mut command_log::CommandLog,
    cores: &[flume::Sender<Arc<Snapshot>>],
    feeds: &Fanout,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        // Reads are answered at once; writes are gathered for one fsync.
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                ApplyRequest::Submit(mut cmd, reply) => match store.claim(&cmd) {
                    Claim::New => batch.push((cmd, reply)),
                    Claim::Reused => {
                        let _ = reply.send(Err(ApplyError::KeyReused));
                    }
                    Claim::Repeat {
                        command_id,
                        todo_id,
                    } => {
                        if batch.iter().any(|(c, _)| c.command_id == command_id) {
                            // The first is in this batch, not yet durable:
                            // this one rides along with its ids, and
                            // applying dedups it.
                            cmd.command_id = command_id;
                            cmd.todo_id = todo_id;
                            batch.push((cmd, reply));
                        } else {
                            // Durable already: answered again, nothing
                            // logged. (An outcome older than those kept
                            // was an applied or rejected one; `Applied`
                            // stands for "taken".)
                            let outcome = store.outcome(command_id).unwrap_or(Outcome::Applied);
                            let _ = reply.send(Ok(Receipt {
                                command_id,
                                todo_id,
                                outcome,
                            }));
                        }
                    }
                },
                ApplyRequest::Get(id, reply) => {
                    let _ = reply.send(store.todo(id));
                }
                ApplyRequest::Outcome(id, reply) => {
                    let _ = reply.send(store.outcome(id));
                }
                ApplyRequest::Stop => stop = true,
            }
            if batch.len() < MAX_BATCH && !stop {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let cmds: Vec<&TodoCommand> = batch.iter().map(|(c, _)| c).collect();
        if let Err(e) = log.append(&cmds) {
            eprintln!("todo-apply: {e}; answering the batch with 503");
            for (cmd, reply) in batch.drain(..) {
                store.unclaim(&cmd);
                let _ = reply.send(Err(ApplyError::Durability));
            }
            continue;
        }
        let (outcomes, changes) = store.apply_batch_with_changes(&cmds);
        if outcomes.contains(&Outcome::Applied) {
            let snapshot = Arc::new(store.snapshot());
            for core in cores {
                let _ = core.send(snapshot.clone());
            }
        }
        if changes.to != changes.from {
            feeds.send(changes);
        }
        for ((cmd, reply), outcome) in batch.drain(..).zip(outcomes) {
            let _ = reply.send(Ok(Receipt {
                command_id: cmd.command_id,
                todo_id: cmd.todo_id,
                outcome,
            }));
        }
    }
}
