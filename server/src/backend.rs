//! Where accepted writes go and where reads outside the snapshot come from:
//! the embedded apply thread, or the distributed path (Kafka producer,
//! PostgreSQL lookups). Routes do not know which.

use std::time::{Duration, Instant};

use todo_model::{Category, Outcome, TodoCommand, User};

use crate::distributed::{lookup::Lookups, producer::Producer};
use crate::embedded;
use crate::read_model::Shared;
use todo_http::HttpError;

/// Longest wait for the outcome of a command whose answer depends on it
/// (registrations, categories) on the distributed path; past it the
/// answer is 202 with the command's link.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(10);

/// A read the backend could not answer now (PostgreSQL away, the apply
/// thread stopping): 503, never a false 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl Unavailable {
    pub fn answer(self) -> HttpError {
        HttpError::unavailable("the store cannot be read now", 1)
    }
}

#[derive(Clone)]
pub enum Backend {
    Embedded(embedded::Handle),
    Distributed {
        producer: Producer,
        lookups: Lookups,
    },
}

/// A write handed to the backend and not yet confirmed.
pub enum Submission {
    Embedded(embedded::Submission),
    Kafka(rdkafka::producer::DeliveryFuture),
    Refused(HttpError),
}

impl Backend {
    /// Hand a command over now; [`Backend::finish`] says whether it was
    /// accepted. Starting several before finishing any lets one
    /// connection's pipelined writes share the wait.
    pub fn start(&self, cmd: TodoCommand) -> Submission {
        match self {
            Backend::Embedded(h) => Submission::Embedded(h.start(cmd)),
            Backend::Distributed { producer, .. } => match producer.start(&cmd) {
                Ok(delivery) => Submission::Kafka(delivery),
                Err(e) => Submission::Refused(e),
            },
        }
    }

    /// `Ok` means the command is durable and will take effect (or be
    /// recorded as rejected) exactly once.
    pub async fn finish(&self, sub: Submission) -> Result<(), HttpError> {
        match (self, sub) {
            (_, Submission::Refused(e)) => Err(e),
            (Backend::Embedded(h), Submission::Embedded(sub)) => {
                h.finish(sub).await.map(|_| ()).map_err(|e| match e {
                    embedded::ApplyError::Durability => {
                        HttpError::unavailable("the command log cannot be written", 1)
                    }
                    embedded::ApplyError::Stopped => HttpError::unavailable("shutting down", 1),
                })
            }
            (Backend::Distributed { producer, .. }, Submission::Kafka(delivery)) => {
                producer.finish(delivery).await
            }
            _ => Err(HttpError::internal(
                "submission finished on another backend",
            )),
        }
    }

    /// Submit `cmd` and wait for its outcome: `None` when it is durable but
    /// not applied within [`OUTCOME_WAIT`] (the worker is behind or away).
    pub async fn apply(&self, cmd: TodoCommand) -> Result<Option<Outcome>, HttpError> {
        let command_id = cmd.command_id;
        match (self, self.start(cmd)) {
            (_, Submission::Refused(e)) => Err(e),
            (Backend::Embedded(h), Submission::Embedded(sub)) => {
                h.finish(sub).await.map(Some).map_err(|e| match e {
                    embedded::ApplyError::Durability => {
                        HttpError::unavailable("the command log cannot be written", 1)
                    }
                    embedded::ApplyError::Stopped => HttpError::unavailable("shutting down", 1),
                })
            }
            (Backend::Distributed { producer, lookups }, Submission::Kafka(delivery)) => {
                producer.finish(delivery).await?;
                let until = Instant::now() + OUTCOME_WAIT;
                let mut pause = Duration::from_millis(2);
                while Instant::now() < until {
                    if let Ok(Some(outcome)) = lookups.outcome(command_id).await {
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
            Backend::Distributed { lookups, .. } => lookups.user(username.to_string()).await,
        }
    }

    /// Category `id`: from the read model, or on the distributed path from
    /// PostgreSQL (a category can be renamed or deleted, and the model may
    /// not have caught up; categories are read rarely).
    pub async fn category(&self, model: &Shared, id: u64) -> Result<Option<Category>, Unavailable> {
        match self {
            Backend::Embedded(_) => Ok(model.read().category(id).cloned()),
            Backend::Distributed { lookups, .. } => lookups.category(id).await,
        }
    }

    /// The rendered JSON of one todo, if it exists.
    pub async fn get(&self, id: u64) -> Result<Option<Vec<u8>>, Unavailable> {
        match self {
            Backend::Embedded(h) => h.get(id).await,
            Backend::Distributed { lookups, .. } => lookups.get(id).await,
        }
    }

    pub async fn outcome(&self, command_id: u64) -> Result<Option<Outcome>, Unavailable> {
        match self {
            Backend::Embedded(h) => h.outcome(command_id).await,
            Backend::Distributed { lookups, .. } => lookups.outcome(command_id).await,
        }
    }

    /// Whether this server's read model may lag the applied state (the
    /// distributed path): then only the backend's answer is trusted for a
    /// refusal that depends on state.
    pub fn lags(&self) -> bool {
        matches!(self, Backend::Distributed { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Distributed { .. } => "distributed",
        }
    }
}
