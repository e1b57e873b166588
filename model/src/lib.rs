//! Shared types of the Todo API, used by the server (read and write path) and
//! by whatever applies commands (the embedded store today, the Kafka worker on
//! the distributed path).
//!
//! - [`todo`]: [`Todo`], the stored row, and its field rules.
//! - [`account`]: [`User`] and [`Category`], their field rules and JSON.
//! - [`command`]: [`TodoCommand`], the write path's wire format (one command per
//!   accepted write: todos, registrations, categories), and [`decide`], the
//!   ONE apply rule (ownership, existence, uniqueness, categories) every
//!   applier calls.
//! - [`envelope`]: many commands in one Kafka record, and the partition of
//!   a todo's commands.
//! - [`snapshot`]: [`Snapshot`], the ONE renderer of the served JSON bytes: the
//!   newest [`SNAPSHOT_MAX`] todos rendered once, sliced per `limit=N`.
//! - [`ids`]: [`IdGenerator`], time-ordered ids made without coordination.
//! - [`seed`]: the 10,000 todos an empty store starts with.
//!
//! Pure types and rules: no I/O and no wire code beyond the command's JSON
//! (how snapshots are stored in Redis and rows in PostgreSQL is
//! `todo-store`'s).

pub mod account;
pub mod command;
pub mod envelope;
pub mod ids;
pub mod seed;
pub mod snapshot;
pub mod todo;

pub use account::{Category, User};
pub use command::{
    decide, Change, Facts, Fields, Idempotency, Needs, Op, Outcome, Rejection, TodoCommand,
    IDEMPOTENCY_WINDOW_MS,
};
pub use ids::IdGenerator;
pub use snapshot::{Snapshot, SNAPSHOT_MAX};
pub use todo::{FieldError, Todo};

/// Kafka topic carrying [`TodoCommand`]s, packed in envelopes per partition
/// ([`envelope`]); a todo's commands share a partition (per-todo order).
pub const COMMANDS_TOPIC: &str = "todo-commands";

/// Milliseconds since the Unix epoch, the unit of every timestamp here.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
