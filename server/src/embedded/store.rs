//! The embedded default's store: the read model (every todo, user and
//! category, see [`crate::read_model`]), the recent outcomes, and the
//! snapshot version. Changes go through [`todo_model::decide`], the same
//! rule the Kafka worker applies in PostgreSQL, over facts read from the
//! model.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use todo_model::{
    decide, Category, Change, Outcome, Snapshot, Todo, TodoCommand, User, IDEMPOTENCY_WINDOW_MS,
};

use crate::feed::{Changes, Position, TodoChange};
use crate::read_model::{ReadModel, Shared};

/// How many command outcomes are remembered for `GET /commands/{id}`.
pub const OUTCOMES_KEPT: usize = 100_000;

pub struct Store {
    /// Shared with the cores, which answer queries from it.
    model: Shared,
    outcomes: HashMap<u64, Outcome>,
    outcome_order: VecDeque<u64>,
    /// `Idempotency-Key`s seen within the window, by (user, key).
    keys: HashMap<(String, String), KeyRecord>,
    /// Claims since expired keys were last pruned.
    claims: usize,
}

/// What an `Idempotency-Key` was first used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub user: String,
    pub key: String,
    pub fingerprint: String,
    pub command_id: u64,
    pub todo_id: u64,
    /// When the first command was issued, Unix milliseconds.
    pub at_ms: u64,
}

/// What [`Store::claim`] found for a keyed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No live record: the command goes ahead and is now the key's.
    New,
    /// The key's first command, with the same request: answer it again.
    Repeat { command_id: u64, todo_id: u64 },
    /// The key was used for another request.
    Reused,
}

/// Prune expired keys after this many claims.
const PRUNE_EVERY: usize = 10_000;

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
    /// Live `Idempotency-Key` records (absent in older state files).
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

impl StoreImage {
    pub fn seeded(todos: Vec<Todo>) -> Self {
        StoreImage {
            version: 1,
            todos,
            users: Vec::new(),
            categories: Vec::new(),
            keys: Vec::new(),
        }
    }
}

impl Store {
    pub fn from_image(image: StoreImage) -> Self {
        let model = ReadModel::from_rows(image.version, image.categories, image.users, image.todos);
        let keys = image
            .keys
            .into_iter()
            .map(|r| ((r.user.clone(), r.key.clone()), r))
            .collect();
        Store {
            model: Shared::new(model, true),
            outcomes: HashMap::new(),
            outcome_order: VecDeque::new(),
            keys,
            claims: 0,
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
            keys: self.keys.values().cloned().collect(),
        }
    }

    /// Check a keyed command against the key's record, and make it the
    /// key's first when there is none live (expired after
    /// [`IDEMPOTENCY_WINDOW_MS`]). Unkeyed commands are always `New`.
    pub fn claim(&mut self, cmd: &TodoCommand) -> Claim {
        let Some(idem) = &cmd.idempotency else {
            return Claim::New;
        };
        self.claims += 1;
        if self.claims >= PRUNE_EVERY {
            self.claims = 0;
            let now = todo_model::now_ms();
            self.keys
                .retain(|_, r| now.saturating_sub(r.at_ms) < IDEMPOTENCY_WINDOW_MS);
        }
        let slot = (cmd.user.clone(), idem.key.clone());
        match self.keys.get(&slot) {
            Some(r) if cmd.issued_at.saturating_sub(r.at_ms) < IDEMPOTENCY_WINDOW_MS => {
                if r.fingerprint == idem.fingerprint {
                    Claim::Repeat {
                        command_id: r.command_id,
                        todo_id: r.todo_id,
                    }
                } else {
                    Claim::Reused
                }
            }
            _ => {
                remember_key(&mut self.keys, cmd);
                Claim::New
            }
        }
    }

    /// Forget the claims of commands that were not made durable.
    pub fn unclaim(&mut self, cmd: &TodoCommand) {
        if let Some(idem) = &cmd.idempotency {
            let slot = (cmd.user.clone(), idem.key.clone());
            if self.keys.get(&slot).map(|r| r.command_id) == Some(cmd.command_id) {
                self.keys.remove(&slot);
            }
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
        self.apply_batch_noting(cmds, advance, None)
    }

    /// [`Store::apply_batch`], advancing the version, and what it changed
    /// for the change feed: each todo it touched, before and after, at the
    /// new version (a todo changed twice in the batch is one change).
    pub fn apply_batch_with_changes(&mut self, cmds: &[&TodoCommand]) -> (Vec<Outcome>, Changes) {
        let from = self.version();
        let mut before = BTreeMap::new();
        let outcomes = self.apply_batch_noting(cmds, true, Some(&mut before));
        let model = self.model.read();
        let to = model.version();
        let todos = before
            .into_iter()
            .filter_map(|(id, before)| {
                let after = model.todo(id).cloned();
                (before != after).then_some(TodoChange {
                    at: Position { version: to, id },
                    before,
                    after,
                })
            })
            .collect();
        (outcomes, Changes { from, to, todos })
    }

    fn apply_batch_noting(
        &mut self,
        cmds: &[&TodoCommand],
        advance: bool,
        mut before: Option<&mut BTreeMap<u64, Option<Todo>>>,
    ) -> Vec<Outcome> {
        let mut model = self.model.write();
        let mut outcomes = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            if let Some(outcome) = self.outcomes.get(&cmd.command_id) {
                outcomes.push(*outcome);
                continue;
            }
            // A replayed log rebuilds the key records.
            if let Some(idem) = &cmd.idempotency {
                let slot = (cmd.user.clone(), idem.key.clone());
                let live = self
                    .keys
                    .get(&slot)
                    .is_some_and(|r| cmd.issued_at.saturating_sub(r.at_ms) < IDEMPOTENCY_WINDOW_MS);
                if !live {
                    remember_key(&mut self.keys, cmd);
                }
            }
            let decided = decide(&model.facts(cmd), cmd);
            let outcome = match decided {
                Ok(change) => {
                    if let (Some(before), Some(id)) = (before.as_deref_mut(), todo_of(&change)) {
                        before.entry(id).or_insert_with(|| model.todo(id).cloned());
                    }
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

    /// One todo, whoever may see it.
    pub fn todo(&self, id: u64) -> Option<Todo> {
        self.model.read().todo(id).cloned()
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
        Snapshot::render(m.version(), m.newest_public())
    }
}

/// The todo a change is to, if it is to one.
fn todo_of(change: &Change) -> Option<u64> {
    match change {
        Change::Insert(t) | Change::Update(t) => Some(t.id),
        Change::Delete(id) => Some(*id),
        Change::InsertUser(_) | Change::PutCategory(_) | Change::DeleteCategory(_) => None,
    }
}

fn remember_key(keys: &mut HashMap<(String, String), KeyRecord>, cmd: &TodoCommand) {
    if let Some(idem) = &cmd.idempotency {
        keys.insert(
            (cmd.user.clone(), idem.key.clone()),
            KeyRecord {
                user: cmd.user.clone(),
                key: idem.key.clone(),
                fingerprint: idem.fingerprint.clone(),
                command_id: cmd.command_id,
                todo_id: cmd.todo_id,
                at_ms: cmd.issued_at,
            },
        );
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
            idempotency: None,
        }
    }

    #[test]
    fn a_command_applies_once() {
        let mut s = Store::from_image(StoreImage {
            version: 0,
            todos: vec![],
            users: vec![],
            categories: vec![],
            keys: vec![],
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
            keys: vec![],
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

    #[test]
    fn a_key_stands_for_its_first_command_and_survives_the_image() {
        let mut s = Store::from_image(StoreImage::seeded(vec![]));
        let keyed = |command_id, todo_id, fingerprint: &str| TodoCommand {
            idempotency: Some(Box::new(todo_model::Idempotency {
                key: "k1".into(),
                fingerprint: fingerprint.into(),
            })),
            ..create(command_id, todo_id, "a")
        };
        let first = keyed(1, 10, "f");
        assert_eq!(s.claim(&first), Claim::New);
        s.apply(&first);
        assert_eq!(
            s.claim(&keyed(2, 20, "f")),
            Claim::Repeat {
                command_id: 1,
                todo_id: 10
            }
        );
        assert_eq!(s.claim(&keyed(3, 30, "g")), Claim::Reused);
        // Another user's key of the same name is another key.
        let other = TodoCommand {
            user: "b".into(),
            ..keyed(4, 40, "g")
        };
        assert_eq!(s.claim(&other), Claim::New);
        // The state file keeps the records; so does a replayed log.
        let mut again = Store::from_image(s.image());
        assert_eq!(again.claim(&keyed(5, 50, "g")), Claim::Reused);
        let mut replayed = Store::from_image(StoreImage::seeded(vec![]));
        replayed.apply(&first);
        assert_eq!(
            replayed.claim(&keyed(6, 60, "f")),
            Claim::Repeat {
                command_id: 1,
                todo_id: 10
            }
        );
        // Past the window the key is free again.
        let late = TodoCommand {
            issued_at: first.issued_at + IDEMPOTENCY_WINDOW_MS,
            ..keyed(7, 70, "g")
        };
        assert_eq!(s.claim(&late), Claim::New);
    }
}
