//! The write path's unit of work: one [`TodoCommand`] per accepted write, and
//! [`decide`], the rule that turns a command and the current row into a
//! [`Change`] or a [`Rejection`].
//!
//! Every applier (the embedded store, the Kafka worker) calls [`decide`], so
//! ownership and existence are enforced in one place. Applying the same
//! command twice is prevented by the applier recording `command_id`; [`decide`]
//! itself is a pure function of its inputs, which makes replay deterministic.

use serde::{Deserialize, Serialize};

use crate::todo::{check_description, check_title, FieldError, Todo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// The client-supplied fields of a write. Unknown fields are refused when the
/// body is parsed (`deny_unknown_fields`), so a typo is a 422, not a no-op.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
}

impl Fields {
    /// Field rules for `op`: a create needs a title; an update needs at least
    /// one field; a delete takes none (its body, if any, is ignored upstream).
    pub fn validate(&self, op: Op) -> Result<(), FieldError> {
        match op {
            Op::Create if self.title.is_none() => return Err(FieldError::TitleMissing),
            Op::Update
                if self.title.is_none()
                    && self.description.is_none()
                    && self.completed.is_none() =>
            {
                return Err(FieldError::NothingToChange)
            }
            _ => {}
        }
        if let Some(title) = &self.title {
            check_title(title)?;
        }
        if let Some(description) = &self.description {
            check_description(description)?;
        }
        Ok(())
    }
}

/// One accepted write, as produced to Kafka (JSON) and as kept in the embedded
/// store's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TodoCommand {
    /// Unique per command; the applier's idempotency key.
    pub command_id: u64,
    pub op: Op,
    /// Chosen by the server for a create, so the client knows it at once.
    pub todo_id: u64,
    /// The token's `sub`: the owner of a created todo, the caller otherwise.
    pub user: String,
    #[serde(default)]
    pub fields: Fields,
    /// Milliseconds since the Unix epoch; becomes `created_at`/`updated_at`.
    pub issued_at: u64,
}

/// What applying a command does to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert(Todo),
    Update(Todo),
    Delete(u64),
}

/// Why a command changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// Update or delete of a todo that does not exist (or no longer does).
    NotFound,
    /// Update or delete by someone other than the todo's owner.
    NotOwner,
    /// A create whose id is already taken (only a replayed or forged command).
    AlreadyExists,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::NotOwner => "not_owner",
            Rejection::AlreadyExists => "already_exists",
        }
    }
}

/// The recorded result of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Rejected(Rejection),
}

/// The one apply rule. `existing` is the current row for `cmd.todo_id`.
pub fn decide(existing: Option<&Todo>, cmd: &TodoCommand) -> Result<Change, Rejection> {
    match (cmd.op, existing) {
        (Op::Create, Some(_)) => Err(Rejection::AlreadyExists),
        (Op::Create, None) => Ok(Change::Insert(Todo {
            id: cmd.todo_id,
            owner: cmd.user.clone(),
            title: cmd.fields.title.clone().unwrap_or_default(),
            description: cmd.fields.description.clone().unwrap_or_default(),
            completed: cmd.fields.completed.unwrap_or(false),
            created_at: cmd.issued_at,
            updated_at: cmd.issued_at,
        })),
        (Op::Update | Op::Delete, None) => Err(Rejection::NotFound),
        (_, Some(todo)) if todo.owner != cmd.user => Err(Rejection::NotOwner),
        (Op::Delete, Some(todo)) => Ok(Change::Delete(todo.id)),
        (Op::Update, Some(todo)) => {
            let mut next = todo.clone();
            if let Some(title) = &cmd.fields.title {
                next.title = title.clone();
            }
            if let Some(description) = &cmd.fields.description {
                next.description = description.clone();
            }
            if let Some(completed) = cmd.fields.completed {
                next.completed = completed;
            }
            // Never move time backwards, even if a command was issued by a
            // server whose clock is behind the one that created the row.
            next.updated_at = cmd.issued_at.max(todo.updated_at);
            Ok(Change::Update(next))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(op: Op, user: &str, fields: Fields) -> TodoCommand {
        TodoCommand {
            command_id: 1,
            op,
            todo_id: 7,
            user: user.into(),
            fields,
            issued_at: 1_000,
        }
    }

    fn title(t: &str) -> Fields {
        Fields {
            title: Some(t.into()),
            ..Fields::default()
        }
    }

    #[test]
    fn create_then_owner_rules() {
        let Ok(Change::Insert(todo)) = decide(None, &cmd(Op::Create, "alice", title("a"))) else {
            panic!("create must insert")
        };
        assert_eq!(todo.owner, "alice");
        assert_eq!(
            decide(Some(&todo), &cmd(Op::Update, "bob", title("b"))),
            Err(Rejection::NotOwner)
        );
        assert_eq!(
            decide(Some(&todo), &cmd(Op::Delete, "bob", Fields::default())),
            Err(Rejection::NotOwner)
        );
        assert_eq!(
            decide(Some(&todo), &cmd(Op::Delete, "alice", Fields::default())),
            Ok(Change::Delete(7))
        );
        let Ok(Change::Update(next)) = decide(Some(&todo), &cmd(Op::Update, "alice", title("b")))
        else {
            panic!("owner update must apply")
        };
        assert_eq!(next.title, "b");
        assert_eq!(
            decide(Some(&todo), &cmd(Op::Create, "alice", title("a"))),
            Err(Rejection::AlreadyExists)
        );
        assert_eq!(
            decide(None, &cmd(Op::Update, "alice", title("a"))),
            Err(Rejection::NotFound)
        );
    }

    #[test]
    fn field_rules() {
        assert_eq!(
            Fields::default().validate(Op::Create),
            Err(FieldError::TitleMissing)
        );
        assert_eq!(
            Fields::default().validate(Op::Update),
            Err(FieldError::NothingToChange)
        );
        assert_eq!(
            title("  ").validate(Op::Create),
            Err(FieldError::TitleBlank)
        );
        assert_eq!(
            title(&"x".repeat(201)).validate(Op::Create),
            Err(FieldError::TitleTooLong)
        );
        assert_eq!(
            title("a\u{7}").validate(Op::Create),
            Err(FieldError::ControlCharacter)
        );
        assert_eq!(title("ok").validate(Op::Create), Ok(()));
        assert_eq!(Fields::default().validate(Op::Delete), Ok(()));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let parsed: Result<Fields, _> = sonic_rs::from_str(r#"{"title":"a","titel":"b"}"#);
        assert!(parsed.is_err());
    }
}
