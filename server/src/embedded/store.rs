//! The embedded default's store: the read model (every todo, user and
//! category, see [`crate::read_model`]), the recent outcomes, and the
//! snapshot version. Changes go through [`todo_model::decide`], the same
//! rule the Kafka worker applies in PostgreSQL, over facts read from the
//! model.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use todo_model::{decide, Category, Outcome, Snapshot, Todo, TodoCommand, User};

use crate::read_model::{ReadModel, Shared};

/// How many command outcomes are remembered for `GET /commands/{id}`.
pub const OUTCOMES_KEPT: usize = 100_000;

pub struct Store {
    /// Shared with the cores, which answer queries from it.
    model: Shared,
    outcomes: HashMap<u64, Outcome>,
    outcome_order: VecDeque<u64>,
}

/// The durable form of a [`Store`] (the state file). Users and categories
/// are absent from state files written before they existed.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreImage {
    pub version: u64,
    pub todos: Vec<Todo>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub categories: Vec<Category>,
}

impl StoreImage {
    pub fn seeded(todos: Vec<Todo>) -> Self {
        StoreImage {
            version: 1,
            todos,
            users: Vec::new(),
            categories: Vec::new(),
        }
    }
}

impl Store {
    pub fn from_image(image: StoreImage) -> Self {
        let model = ReadModel::from_rows(image.version, image.categories, image.users, image.todos);
        Store {
            model: Shared::new(model, true),
            outcomes: HashMap::new(),
            outcome_order: VecDeque::new(),
        }
    }

    /// The model the cores read.
    pub fn shared(&self) -> &Shared {
        &self.model
    }

    pub fn image(&self) -> StoreImage {
        let m = self.model.read();
        StoreImage {
            version: m.version(),
            todos: m.todos().cloned().collect(),
            users: m.users().cloned().collect(),
            categories: m.categories().cloned().collect(),
        }
    }

    /// Apply one command once; a command id seen before keeps its first
    /// outcome and changes nothing.
    pub fn apply(&mut self, cmd: &TodoCommand) -> Outcome {
        self.apply_batch(&[cmd], false)[0]
    }

    /// Apply `cmds` in order under one write lock; with `advance`, a batch
    /// that changed anything moves the version on before the lock is given
    /// back, so readers never see the new state under the old version.
    pub fn apply_batch(&mut self, cmds: &[&TodoCommand], advance: bool) -> Vec<Outcome> {
        let mut model = self.model.write();
        let mut outcomes = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            if let Some(outcome) = self.outcomes.get(&cmd.command_id) {
                outcomes.push(*outcome);
                continue;
            }
            let decided = decide(&model.facts(cmd), cmd);
            let outcome = match decided {
                Ok(change) => {
                    model.apply(change);
                    Outcome::Applied
                }
                Err(rejection) => Outcome::Rejected(rejection),
            };
            remember(
                &mut self.outcomes,
                &mut self.outcome_order,
                cmd.command_id,
                outcome,
            );
            outcomes.push(outcome);
        }
        if advance && outcomes.contains(&Outcome::Applied) {
            let next = model.version() + 1;
            model.set_version(next);
        }
        outcomes
    }

    pub fn outcome(&self, command_id: u64) -> Option<Outcome> {
        self.outcomes.get(&command_id).copied()
    }

    /// The rendered JSON of one todo.
    pub fn render(&self, id: u64) -> Option<Vec<u8>> {
        let m = self.model.read();
        m.todo(id).map(|t| {
            let mut out = Vec::with_capacity(256);
            todo_model::snapshot::render_todo(t, &mut out);
            out
        })
    }

    pub fn len(&self) -> usize {
        self.model.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn version(&self) -> u64 {
        self.model.read().version()
    }

    /// Advance the version and render the newest todos.
    pub fn next_snapshot(&mut self) -> Snapshot {
        {
            let mut m = self.model.write();
            let next = m.version() + 1;
            m.set_version(next);
        }
        self.snapshot()
    }

    /// Render the newest todos at the current version.
    pub fn snapshot(&self) -> Snapshot {
        let m = self.model.read();
        Snapshot::render(m.version(), m.newest())
    }
}

fn remember(
    outcomes: &mut HashMap<u64, Outcome>,
    order: &mut VecDeque<u64>,
    command_id: u64,
    outcome: Outcome,
) {
    outcomes.insert(command_id, outcome);
    order.push_back(command_id);
    while order.len() > OUTCOMES_KEPT {
        if let Some(old) = order.pop_front() {
            outcomes.remove(&old);
        }
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
            name: None,
            password_hash: None,
        }
    }

    #[test]
    fn a_command_applies_once() {
        let mut s = Store::from_image(StoreImage {
            version: 0,
            todos: vec![],
            users: vec![],
            categories: vec![],
        });
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
        let mut s = Store::from_image(StoreImage {
            version: 0,
            todos: vec![],
            users: vec![],
            categories: vec![],
        });
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
