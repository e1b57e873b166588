//! Where accepted writes go and where reads outside the snapshot come from:
//! the embedded apply thread, or the distributed path (Kafka producer, the
//! `todo-db` thread's PostgreSQL lookups). Routes do not know which runs:
//! they ask [`Backend`] for what they need (a write made durable, a todo,
//! user or category outside the snapshot, a command's status, the read
//! model when a refusal may be made from it: [`Backend::current_model`]),
//! and `/metrics` and `/readyz` ask it for its counters and its name.

use std::sync::RwLockReadGuard;
use std::time::{Duration, Instant};

use todo_model::{Category, Outcome, Todo, TodoCommand, User};

use crate::distributed::db_thread::{DbThread, KeyArgs};
use crate::distributed::producer::Producer;
use crate::embedded;
use crate::errors::Unavailable;
use crate::read_model::{ReadModel, Shared};
use crate::trace::Trace;
use todo_http::HttpError;

/// Longest wait for the outcome of a command whose answer depends on it
/// (registrations, categories) on the distributed path; past it the
/// answer is 202 with the command's link.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(10);

/// A command's state for `GET /commands/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Done(Outcome),
}

#[derive(Clone)]
pub enum Backend {
    Embedded(embedded::Handle),
    Distributed { producer: Producer, db: DbThread },
}

/// A write handed to the backend and not yet confirmed.
pub enum Submission {
    Embedded(embedded::Submission),
    Kafka {
        delivery: crate::distributed::producer::Ticket,
        /// Redis's answer to the command's accepted mark.
        mark: flume::Receiver<bool>,
        ids: (u64, u64),
    },
    Refused(HttpError),
}

/// Longest wait, after the broker's ack, for Redis to take a command's
/// accepted mark (a 202 never waits on Redis longer; the mark's absence
/// only means other servers answer `GET /commands/{id}` 503 meanwhile).
const MARK_WAIT: Duration = Duration::from_millis(200);

/// 422: an `Idempotency-Key` reused for another request.
pub const KEY_REUSED: HttpError = HttpError::new(
    422,
    "idempotency_key_reused",
    "this Idempotency-Key was used for another request (method, path or body) in the last 24 h",
    false,
);

impl From<embedded::ApplyError> for HttpError {
    fn from(e: embedded::ApplyError) -> HttpError {
        match e {
            embedded::ApplyError::Durability => {
                HttpError::unavailable("the command log cannot be written", 1)
            }
            embedded::ApplyError::Stopped => HttpError::unavailable("shutting down", 1),
            embedded::ApplyError::KeyReused => KEY_REUSED,
        }
    }
}

impl Backend {
    /// Hand a command over now; [`Backend::finish`] says whether it was
    /// accepted. Starting several before finishing any lets one
    /// connection's pipelined writes share the wait.
    /// `trace` travels with the command in its Kafka envelope.
    pub fn start(&self, cmd: TodoCommand, trace: Option<&Trace>) -> Submission {
        match self {
            Backend::Embedded(h) => Submission::Embedded(h.start(cmd)),
            Backend::Distributed { producer, db } => {
                let ids = (cmd.command_id, cmd.todo_id);
                match producer.start(cmd, trace) {
                    Ok(delivery) => Submission::Kafka {
                        delivery,
                        // Marked while the broker takes the record.
                        mark: db.mark(ids.0),
                        ids,
                    },
                    Err(e) => Submission::Refused(e),
                }
            }
        }
    }

    /// `Ok` with the ids to answer with (a keyed retry's are its first
    /// command's) means the command is durable and will take effect (or
    /// be recorded as rejected) exactly once.
    pub async fn finish(&self, sub: Submission) -> Result<(u64, u64), HttpError> {
        match (self, sub) {
            (_, Submission::Refused(e)) => Err(e),
            (Backend::Embedded(h), Submission::Embedded(sub)) => {
                let receipt = h.finish(sub).await?;
                Ok((receipt.command_id, receipt.todo_id))
            }
            (
                Backend::Distributed { producer, .. },
                Submission::Kafka {
                    delivery,
                    mark,
                    ids,
                },
            ) => {
                producer.finish(delivery).await?;
                // Usually long done: Redis answers before the broker does.
                let _ = monoio::time::timeout(MARK_WAIT, mark.recv_async()).await;
                Ok(ids)
            }
            _ => Err(HttpError::internal(
                "submission finished on another backend",
            )),
        }
    }

    /// Submit a command that may carry an `Idempotency-Key`: on the
    /// distributed path the key is claimed in PostgreSQL first, and a key
    /// that stands for an earlier command with the same request sends
    /// that command again (same ids; the worker applies it once), so a
    /// retry after any failure, on any server, ends in one command. The
    /// embedded apply thread does the same against its own records.
    pub async fn submit(
        &self,
        mut cmd: TodoCommand,
        trace: Option<&Trace>,
    ) -> Result<(u64, u64), HttpError> {
        if let (Backend::Distributed { db, .. }, Some(idem)) = (self, &cmd.idempotency) {
            let claim = db
                .claim(KeyArgs {
                    user: cmd.user.clone(),
                    key: idem.key.clone(),
                    fingerprint: idem.fingerprint.clone(),
                    command_id: cmd.command_id,
                    todo_id: cmd.todo_id,
                })
                .await
                .map_err(Unavailable::answer)?;
            if claim.fingerprint != idem.fingerprint {
                return Err(KEY_REUSED);
            }
            cmd.command_id = claim.command_id;
            cmd.todo_id = claim.todo_id;
        }
        self.finish(self.start(cmd, trace)).await
    }

    /// Submit `cmd` and wait for its outcome: `None` when it is durable but
    /// not applied within [`OUTCOME_WAIT`] (the worker is behind or away).
    pub async fn apply(
        &self,
        cmd: TodoCommand,
        trace: Option<&Trace>,
    ) -> Result<Option<Outcome>, HttpError> {
        let command_id = cmd.command_id;
        match (self, self.start(cmd, trace)) {
            (_, Submission::Refused(e)) => Err(e),
            (Backend::Embedded(h), Submission::Embedded(sub)) => {
                Ok(Some(h.finish(sub).await?.outcome))
            }
            (Backend::Distributed { db, .. }, sub @ Submission::Kafka { .. }) => {
                self.finish(sub).await?;
                let until = Instant::now() + OUTCOME_WAIT;
                let mut pause = Duration::from_millis(2);
                while Instant::now() < until {
                    if let Ok(Some(outcome)) = db.outcome(command_id).await {
                        return Ok(Some(outcome));
                    }
                    monoio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Ok(None)
            }
            _ => Err(HttpError::internal(
                "submission finished on another backend",
            )),
        }
    }

    /// The account `username`, from the read model, or on the distributed
    /// path from PostgreSQL when the model has not seen it yet (a user
    /// registered a moment ago on another server can log in at once).
    pub async fn user(&self, model: &Shared, username: &str) -> Result<Option<User>, Unavailable> {
        if let Some(u) = model.read().user(username) {
            return Ok(Some(u.clone()));
        }
        match self {
            Backend::Embedded(_) => Ok(None),
            Backend::Distributed { db, .. } => db.user(username.to_string()).await,
        }
    }

    /// Category `id`: from the read model, or on the distributed path from
    /// PostgreSQL (a category can be renamed or deleted, and the model may
    /// not have caught up; categories are read rarely).
    pub async fn category(&self, model: &Shared, id: u64) -> Result<Option<Category>, Unavailable> {
        match self {
            Backend::Embedded(_) => Ok(model.read().category(id).cloned()),
            Backend::Distributed { db, .. } => db.category(id).await,
        }
    }

    /// The rendered JSON of one todo, if it exists.
    /// The todo `id`, whoever may see it (the route asks
    /// [`todo_model::Todo::visible_to`]).
    pub async fn get(&self, id: u64) -> Result<Option<Todo>, Unavailable> {
        match self {
            Backend::Embedded(h) => h.get(id).await,
            Backend::Distributed { db, .. } => db.get(id).await,
        }
    }

    /// What became of a command: its outcome, `Pending` when it was
    /// accepted (by any server) and is not applied yet, `None` when it was
    /// never accepted (or is older than what is kept).
    pub async fn status(&self, command_id: u64) -> Result<Option<Status>, Unavailable> {
        match self {
            // The embedded 202 follows the apply: nothing accepted is ever
            // pending to a reader.
            Backend::Embedded(h) => Ok(h.outcome(command_id).await?.map(Status::Done)),
            Backend::Distributed { db, .. } => {
                if let Some(outcome) = db.outcome(command_id).await? {
                    return Ok(Some(Status::Done(outcome)));
                }
                if db.accepted(command_id).await? {
                    // Applied in the meantime? Then say so, not pending.
                    return Ok(Some(match db.outcome(command_id).await? {
                        Some(outcome) => Status::Done(outcome),
                        None => Status::Pending,
                    }));
                }
                Ok(None)
            }
        }
    }

    /// The read model when it holds every applied change (the embedded
    /// path, where it is the store), so a refusal that depends on state
    /// (a category not the writer's, a name taken) may be made from it at
    /// once. `None` where it may trail the applied state (the distributed
    /// path): there only the apply rule, or PostgreSQL, refuses.
    pub fn current_model<'m>(&self, model: &'m Shared) -> Option<RwLockReadGuard<'m, ReadModel>> {
        match self {
            Backend::Embedded(_) => Some(model.read()),
            Backend::Distributed { .. } => None,
        }
    }

    /// The backend's own metrics, Prometheus text (the Kafka producer's
    /// deliveries; the embedded path has none of its own).
    pub fn render_metrics(&self, out: &mut String) {
        if let Backend::Distributed { producer, .. } = self {
            producer.render_metrics(out);
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Distributed { .. } => "distributed",
        }
    }
}
