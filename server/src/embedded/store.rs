//! The embedded default's in-memory store: every todo, the recent outcomes,
//! and the snapshot version. Changes go through [`todo_model::decide`], the
//! same rule the Kafka worker applies in PostgreSQL.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use todo_model::{decide, Change, Outcome, Snapshot, Todo, TodoCommand};

/// How many command outcomes are remembered for `GET /commands/{id}`.
pub const OUTCOMES_KEPT: usize = 100_000;

#[derive(Debug, Default)]
pub struct Store {
    todos: BTreeMap<u64, Todo>,
    outcomes: HashMap<u64, Outcome>,
    outcome_order: VecDeque<u64>,
    version: u64,
}

/// The durable form of a [`Store`] (the state file).
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreImage {
    pub version: u64,
    pub todos: Vec<Todo>,
}

impl Store {
    pub fn from_image(image: StoreImage) -> Self {
        Store {
            todos: image.todos.into_iter().map(|t| (t.id, t)).collect(),
            version: image.version,
            ..Store::default()
        }
    }

    pub fn image(&self) -> StoreImage {
        StoreImage {
            version: self.version,
            todos: self.todos.values().cloned().collect(),
        }
    }

    /// Apply one command once; a command id seen before keeps its first
    /// outcome and changes nothing.
    pub fn apply(&mut self, cmd: &TodoCommand) -> Outcome {
        if let Some(outcome) = self.outcomes.get(&cmd.command_id) {
            return *outcome;
        }
        let outcome = match decide(self.todos.get(&cmd.todo_id), cmd) {
            Ok(Change::Insert(todo) | Change::Update(todo)) => {
                self.todos.insert(todo.id, todo);
                Outcome::Applied
            }
            Ok(Change::Delete(id)) => {
                self.todos.remove(&id);
                Outcome::Applied
            }
            Err(rejection) => Outcome::Rejected(rejection),
        };
        self.remember(cmd.command_id, outcome);
        outcome
    }

    fn remember(&mut self, command_id: u64, outcome: Outcome) {
        self.outcomes.insert(command_id, outcome);
        self.outcome_order.push_back(command_id);
        while self.outcome_order.len() > OUTCOMES_KEPT {
            if let Some(old) = self.outcome_order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
    }

    pub fn outcome(&self, command_id: u64) -> Option<Outcome> {
        self.outcomes.get(&command_id).copied()
    }

    pub fn get(&self, id: u64) -> Option<&Todo> {
        self.todos.get(&id)
    }

    pub fn len(&self) -> usize {
        self.todos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.todos.is_empty()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Advance the version and render the newest todos (ids are
    /// time-ordered, so the largest ids are the newest).
    pub fn next_snapshot(&mut self) -> Snapshot {
        self.version += 1;
        self.snapshot()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::render(self.version, self.todos.values().rev())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use todo_model::{Fields, Op, Rejection};

    fn create(command_id: u64, todo_id: u64, user: &str) -> TodoCommand {
        TodoCommand {
            command_id,
            op: Op::Create,
            todo_id,
            user: user.into(),
            fields: Fields {
                title: Some(format!("t{todo_id}")),
                ..Fields::default()
            },
            issued_at: 1,
        }
    }

    #[test]
    fn a_command_applies_once() {
        let mut s = Store::default();
        assert_eq!(s.apply(&create(1, 10, "a")), Outcome::Applied);
        assert_eq!(s.apply(&create(1, 10, "a")), Outcome::Applied);
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.apply(&create(2, 10, "a")),
            Outcome::Rejected(Rejection::AlreadyExists)
        );
    }

    #[test]
    fn snapshot_is_newest_first() {
        let mut s = Store::default();
        for i in 1..=5 {
            s.apply(&create(i, i * 100, "a"));
        }
        let snap = s.next_snapshot();
        assert_eq!(snap.version(), 1);
        let v: Vec<sonic_rs::Value> = sonic_rs::from_slice(snap.body()).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(v[0]["id"].as_u64(), Some(500));
        assert_eq!(v[4]["id"].as_u64(), Some(100));
    }
}
