//! Where accepted writes go and where reads outside the snapshot come from:
//! the embedded apply thread, or the distributed path (Kafka producer,
//! PostgreSQL lookups). Routes do not know which.

use todo_model::{Outcome, TodoCommand};

use crate::distributed::{lookup::Lookups, producer::Producer};
use crate::embedded;
use crate::error::HttpError;

#[derive(Clone)]
pub enum Backend {
    Embedded(embedded::Handle),
    Distributed {
        producer: Producer,
        lookups: Lookups,
    },
}

impl Backend {
    /// Accept a command durably. `Ok` means it will take effect (or be
    /// recorded as rejected) exactly once.
    pub async fn submit(&self, cmd: TodoCommand) -> Result<(), HttpError> {
        match self {
            Backend::Embedded(h) => h.submit(cmd).await.map(|_| ()).map_err(|e| match e {
                embedded::ApplyError::Durability => {
                    HttpError::unavailable("the command log cannot be written", 1)
                }
                embedded::ApplyError::Stopped => HttpError::unavailable("shutting down", 1),
            }),
            Backend::Distributed { producer, .. } => producer.send(&cmd).await,
        }
    }

    /// The rendered JSON of one todo, if it exists.
    pub async fn get(&self, id: u64) -> Option<Vec<u8>> {
        match self {
            Backend::Embedded(h) => h.get(id).await,
            Backend::Distributed { lookups, .. } => lookups.get(id).await,
        }
    }

    pub async fn outcome(&self, command_id: u64) -> Option<Outcome> {
        match self {
            Backend::Embedded(h) => h.outcome(command_id).await,
            Backend::Distributed { lookups, .. } => lookups.outcome(command_id).await,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Distributed { .. } => "distributed",
        }
    }
}
