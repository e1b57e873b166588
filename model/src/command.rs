//! The write path's unit of work: one [`TodoCommand`] per accepted write, and
//! [`decide`], the rule that turns a command and the facts it depends on into
//! a [`Change`] or a [`Rejection`].
//!
//! Every applier (the embedded store, the Kafka worker) asks the command
//! which facts it [`needs`](TodoCommand::needs), looks them up in its own
//! storage, and calls [`decide`], so ownership, existence, uniqueness and the
//! category rules are enforced in one place. Applying the same command twice
//! is prevented by the applier recording `command_id`; [`decide`] itself is a
//! pure function of its inputs, which makes replay deterministic.

use serde::{Deserialize, Deserializer, Serialize};

use crate::account::{Category, User};
use crate::todo::{check_description, check_title, FieldError, Todo};

/// What a command does. The first three act on todos; the rest on accounts
/// and categories (docs/architecture.md §9), through the same log and worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Update,
    Delete,
    CreateUser,
    CreateCategory,
    UpdateCategory,
    DeleteCategory,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::CreateUser => "create_user",
            Op::CreateCategory => "create_category",
            Op::UpdateCategory => "update_category",
            Op::DeleteCategory => "delete_category",
        }
    }
}

/// The client-supplied fields of a todo write. Unknown fields are refused when
/// the body is parsed (`deny_unknown_fields`), so a typo is a 422, not a no-op.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// Absent: unchanged. `null`: no category. A number: that category,
    /// which must be one of the writer's own.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub category_id: Option<Option<u64>>,
    /// Whether others see the todo. A create without it is private: the
    /// server writes `Some(false)` into the command it accepts, so a create
    /// command without the field was logged before visibility existed (and
    /// made a todo every reader saw): [`decide`] keeps such todos public.
    /// An update without it leaves the todo as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
}

/// A field that is present deserializes to `Some`, even when it is `null`
/// (absent fields take the `default`, `None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Fields {
    /// Field rules for a todo `op`: a create needs a title; an update needs
    /// at least one field; a delete takes none (its body, if any, is ignored
    /// upstream).
    pub fn validate(&self, op: Op) -> Result<(), FieldError> {
        match op {
            Op::Create if self.title.is_none() => return Err(FieldError::TitleMissing),
            Op::Update
                if self.title.is_none()
                    && self.description.is_none()
                    && self.completed.is_none()
                    && self.category_id.is_none()
                    && self.public.is_none() =>
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
    /// The id the command acts on, chosen by the server for a create so the
    /// client knows it at once: a todo's, or for the account ops the new
    /// user's or the category's. (The name is the wire format's.)
    pub todo_id: u64,
    /// The token's `sub`: the owner of a created todo or category, the
    /// caller otherwise; for [`Op::CreateUser`], the username registered.
    pub user: String,
    #[serde(default)]
    pub fields: Fields,
    /// Milliseconds since the Unix epoch; becomes `created_at`/`updated_at`.
    pub issued_at: u64,
    /// A category's name ([`Op::CreateCategory`], [`Op::UpdateCategory`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The argon2id PHC string of a new user's password ([`Op::CreateUser`]);
    /// the password itself is never written anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// The client's `Idempotency-Key` for this write, with the request's
    /// fingerprint: a retry with the same key answers this command again.
    /// Boxed: rare, and commands travel through queues by value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Box<Idempotency>>,
}

/// How long an `Idempotency-Key` is remembered, milliseconds (24 h).
pub const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// An `Idempotency-Key` as a write carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    /// As the client sent it (1-255 visible ASCII characters).
    pub key: String,
    /// SHA-256 (hex) of the method, path and body: the same key with
    /// another request is refused.
    pub fingerprint: String,
}

/// What an applier must look up before calling [`decide`] for a command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs<'a> {
    /// The todo row with this id.
    pub todo: Option<u64>,
    /// The category row with this id.
    pub category: Option<u64>,
    /// Whether `owner` has a category called `name` other than `except`.
    pub category_name: Option<(&'a str, &'a str, u64)>,
    /// Whether this username is registered.
    pub username: Option<&'a str>,
    /// How many todos are in this category.
    pub category_todos: Option<u64>,
}

/// The answers to [`Needs`], as the applier found them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub todo: Option<&'a Todo>,
    pub category: Option<&'a Category>,
    pub name_taken: bool,
    pub username_taken: bool,
    pub category_todos: u64,
}

impl TodoCommand {
    /// The facts [`decide`] reads for this command.
    pub fn needs(&self) -> Needs<'_> {
        let mut needs = Needs::default();
        match self.op {
            Op::Create | Op::Update | Op::Delete => {
                needs.todo = Some(self.todo_id);
                needs.category = self.fields.category_id.flatten();
            }
            Op::CreateUser => needs.username = Some(&self.user),
            Op::CreateCategory | Op::UpdateCategory => {
                needs.category = Some(self.todo_id);
                let name = self.name.as_deref().unwrap_or("");
                needs.category_name = Some((&self.user, name, self.todo_id));
            }
            Op::DeleteCategory => {
                needs.category = Some(self.todo_id);
                needs.category_todos = Some(self.todo_id);
            }
        }
        needs
    }
}

/// What applying a command does to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert(Todo),
    Update(Todo),
    Delete(u64),
    InsertUser(User),
    /// A category created or renamed.
    PutCategory(Category),
    DeleteCategory(u64),
}

/// Why a command changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// Update or delete of a todo or category that does not exist (or no
    /// longer does), or of another user's todo.
    NotFound,
    /// Update or delete of a category by someone other than its owner. (A
    /// todo of someone else's is [`Rejection::NotFound`].)
    NotOwner,
    /// A create whose id is already taken (only a replayed or forged command).
    AlreadyExists,
    /// The username is registered already.
    UsernameTaken,
    /// The writer has another category with that name.
    NameTaken,
    /// `category_id` names no category of the writer's.
    UnknownCategory,
    /// The category still holds todos (safe delete).
    CategoryNotEmpty,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::NotFound,
        Rejection::NotOwner,
        Rejection::AlreadyExists,
        Rejection::UsernameTaken,
        Rejection::NameTaken,
        Rejection::UnknownCategory,
        Rejection::CategoryNotEmpty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::NotOwner => "not_owner",
            Rejection::AlreadyExists => "already_exists",
            Rejection::UsernameTaken => "username_taken",
            Rejection::NameTaken => "name_taken",
            Rejection::UnknownCategory => "unknown_category",
            Rejection::CategoryNotEmpty => "category_not_empty",
        }
    }

    /// The inverse of [`Rejection::as_str`] (a reason read back from storage).
    pub fn parse(reason: &str) -> Option<Rejection> {
        Rejection::ALL.into_iter().find(|r| r.as_str() == reason)
    }
}

/// The recorded result of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Rejected(Rejection),
}

/// The one apply rule, over the facts [`TodoCommand::needs`] asked for.
pub fn decide(facts: &Facts<'_>, cmd: &TodoCommand) -> Result<Change, Rejection> {
    // A todo may only be put in one of its writer's own categories.
    let category_ok = || match cmd.fields.category_id {
        Some(Some(_)) => facts
            .category
            .is_some_and(|c| c.owner == cmd.user)
            .then_some(())
            .ok_or(Rejection::UnknownCategory),
        _ => Ok(()),
    };
    match (cmd.op, facts.todo) {
        (Op::Create, Some(_)) => Err(Rejection::AlreadyExists),
        (Op::Create, None) => {
            category_ok()?;
            Ok(Change::Insert(Todo {
                id: cmd.todo_id,
                owner: cmd.user.clone(),
                title: cmd.fields.title.clone().unwrap_or_default(),
                description: cmd.fields.description.clone().unwrap_or_default(),
                completed: cmd.fields.completed.unwrap_or(false),
                created_at: cmd.issued_at,
                updated_at: cmd.issued_at,
                category_id: cmd.fields.category_id.flatten(),
                public: cmd.fields.public.unwrap_or(true),
            }))
        }
        // Another's todo answers as one that does not exist, so an outcome
        // never tells a writer which ids are taken (docs/architecture.md §13).
        (Op::Update | Op::Delete, None) => Err(Rejection::NotFound),
        (Op::Update | Op::Delete, Some(todo)) if todo.owner != cmd.user => Err(Rejection::NotFound),
        (Op::Delete, Some(todo)) => Ok(Change::Delete(todo.id)),
        (Op::Update, Some(todo)) => {
            category_ok()?;
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
            if let Some(category) = cmd.fields.category_id {
                next.category_id = category;
            }
            if let Some(public) = cmd.fields.public {
                next.public = public;
            }
            // Never move time backwards, even if a command was issued by a
            // server whose clock is behind the one that created the row.
            next.updated_at = cmd.issued_at.max(todo.updated_at);
            Ok(Change::Update(next))
        }
        (Op::CreateUser, _) => {
            if facts.username_taken {
                return Err(Rejection::UsernameTaken);
            }
            Ok(Change::InsertUser(User {
                id: cmd.todo_id,
                username: cmd.user.clone(),
                password_hash: cmd.password_hash.clone().unwrap_or_default(),
                created_at: cmd.issued_at,
            }))
        }
        (Op::CreateCategory, _) => {
            if facts.category.is_some() {
                return Err(Rejection::AlreadyExists);
            }
            if facts.name_taken {
                return Err(Rejection::NameTaken);
            }
            Ok(Change::PutCategory(Category {
                id: cmd.todo_id,
                owner: cmd.user.clone(),
                name: cmd.name.clone().unwrap_or_default(),
                created_at: cmd.issued_at,
                updated_at: cmd.issued_at,
            }))
        }
        (Op::UpdateCategory | Op::DeleteCategory, _) => {
            let Some(category) = facts.category else {
                return Err(Rejection::NotFound);
            };
            if category.owner != cmd.user {
                return Err(Rejection::NotOwner);
            }
            if cmd.op == Op::DeleteCategory {
                return if facts.category_todos > 0 {
                    Err(Rejection::CategoryNotEmpty)
                } else {
                    Ok(Change::DeleteCategory(category.id))
                };
            }
            if facts.name_taken {
                return Err(Rejection::NameTaken);
            }
            let mut next = category.clone();
            next.name = cmd.name.clone().unwrap_or_default();
            next.updated_at = cmd.issued_at.max(category.updated_at);
            Ok(Change::PutCategory(next))
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
            name: None,
            password_hash: None,
            idempotency: None,
        }
    }

    fn with_todo(todo: &Todo) -> Facts<'_> {
        Facts {
            todo: Some(todo),
            ..Facts::default()
        }
    }

    fn title(t: &str) -> Fields {
        Fields {
            title: Some(t.into()),
            ..Fields::default()
        }
    }

    #[test]
    fn visibility_defaults_and_flips() {
        let created = |public| {
            let fields = Fields {
                public,
                ..title("a")
            };
            match decide(&Facts::default(), &cmd(Op::Create, "alice", fields)) {
                Ok(Change::Insert(todo)) => todo,
                other => panic!("create must insert: {other:?}"),
            }
        };
        assert!(!created(Some(false)).public);
        assert!(created(Some(true)).public);
        // A create logged before the field existed was published then.
        assert!(created(None).public);

        let private = created(Some(false));
        let flip = |todo: &Todo, public| {
            let fields = Fields {
                public,
                ..Fields::default()
            };
            match decide(&with_todo(todo), &cmd(Op::Update, "alice", fields)) {
                Ok(Change::Update(next)) => next,
                other => panic!("owner update must apply: {other:?}"),
            }
        };
        let public = flip(&private, Some(true));
        assert!(public.public);
        assert!(!flip(&public, Some(false)).public);
        // An update without the field leaves it.
        let renamed = match decide(&with_todo(&private), &cmd(Op::Update, "alice", title("b"))) {
            Ok(Change::Update(next)) => next,
            other => panic!("{other:?}"),
        };
        assert!(!renamed.public);
        assert_eq!(
            Fields {
                public: Some(true),
                ..Fields::default()
            }
            .validate(Op::Update),
            Ok(())
        );

        assert!(private.visible_to(Some("alice")));
        assert!(!private.visible_to(Some("bob")));
        assert!(!private.visible_to(None));
        assert!(public.visible_to(None) && public.visible_to(Some("bob")));
    }

    #[test]
    fn a_todo_without_the_field_reads_back_public() {
        let old = r#"{"id":1,"owner":"a","title":"t","description":"","completed":false,"created_at":1,"updated_at":1}"#;
        let todo: Todo = sonic_rs::from_str(old).unwrap();
        assert!(todo.public, "rows stored before visibility were published");
    }

    #[test]
    fn create_then_owner_rules() {
        let Ok(Change::Insert(todo)) =
            decide(&Facts::default(), &cmd(Op::Create, "alice", title("a")))
        else {
            panic!("create must insert")
        };
        assert_eq!(todo.owner, "alice");
        // Another's todo is rejected exactly as a missing one.
        assert_eq!(
            decide(&with_todo(&todo), &cmd(Op::Update, "bob", title("b"))),
            decide(&Facts::default(), &cmd(Op::Update, "bob", title("b")))
        );
        assert_eq!(
            decide(&with_todo(&todo), &cmd(Op::Update, "bob", title("b"))),
            Err(Rejection::NotFound)
        );
        assert_eq!(
            decide(
                &with_todo(&todo),
                &cmd(Op::Delete, "bob", Fields::default())
            ),
            Err(Rejection::NotFound)
        );
        assert_eq!(
            decide(
                &with_todo(&todo),
                &cmd(Op::Delete, "alice", Fields::default())
            ),
            Ok(Change::Delete(7))
        );
        let Ok(Change::Update(next)) =
            decide(&with_todo(&todo), &cmd(Op::Update, "alice", title("b")))
        else {
            panic!("owner update must apply")
        };
        assert_eq!(next.title, "b");
        assert_eq!(
            decide(&with_todo(&todo), &cmd(Op::Create, "alice", title("a"))),
            Err(Rejection::AlreadyExists)
        );
        assert_eq!(
            decide(&Facts::default(), &cmd(Op::Update, "alice", title("a"))),
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

    fn category(id: u64, owner: &str) -> Category {
        Category {
            id,
            owner: owner.into(),
            name: "work".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn category_rules() {
        let mine = category(5, "alice");
        let theirs = category(6, "bob");
        let mut create = cmd(Op::Create, "alice", title("a"));
        create.fields.category_id = Some(Some(5));
        assert_eq!(create.needs().category, Some(5));
        let in_mine = Facts {
            category: Some(&mine),
            ..Facts::default()
        };
        let Ok(Change::Insert(todo)) = decide(&in_mine, &create) else {
            panic!("a todo in one's own category is created")
        };
        assert_eq!(todo.category_id, Some(5));
        let in_theirs = Facts {
            category: Some(&theirs),
            ..Facts::default()
        };
        assert_eq!(decide(&in_theirs, &create), Err(Rejection::UnknownCategory));
        assert_eq!(
            decide(&Facts::default(), &create),
            Err(Rejection::UnknownCategory)
        );

        let mut delete = cmd(Op::DeleteCategory, "alice", Fields::default());
        delete.todo_id = 5;
        let busy = Facts {
            category: Some(&mine),
            category_todos: 3,
            ..Facts::default()
        };
        assert_eq!(decide(&busy, &delete), Err(Rejection::CategoryNotEmpty));
        let empty = Facts {
            category_todos: 0,
            ..busy
        };
        assert_eq!(decide(&empty, &delete), Ok(Change::DeleteCategory(5)));
        delete.user = "bob".into();
        assert_eq!(decide(&empty, &delete), Err(Rejection::NotOwner));

        let mut rename = cmd(Op::UpdateCategory, "alice", Fields::default());
        rename.todo_id = 5;
        rename.name = Some("home".into());
        let taken = Facts {
            category: Some(&mine),
            name_taken: true,
            ..Facts::default()
        };
        assert_eq!(decide(&taken, &rename), Err(Rejection::NameTaken));
        let Ok(Change::PutCategory(renamed)) = decide(
            &Facts {
                name_taken: false,
                ..taken
            },
            &rename,
        ) else {
            panic!("rename applies")
        };
        assert_eq!(renamed.name, "home");
    }

    #[test]
    fn usernames_are_unique() {
        let mut register = cmd(Op::CreateUser, "carol", Fields::default());
        register.password_hash = Some("$argon2id$...".into());
        let taken = Facts {
            username_taken: true,
            ..Facts::default()
        };
        assert_eq!(decide(&taken, &register), Err(Rejection::UsernameTaken));
        let Ok(Change::InsertUser(user)) = decide(&Facts::default(), &register) else {
            panic!("a free username registers")
        };
        assert_eq!(user.username, "carol");
        for r in Rejection::ALL {
            assert_eq!(Rejection::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn category_id_absent_null_and_set_differ() {
        let absent: Fields = sonic_rs::from_str(r#"{"title":"a"}"#).unwrap();
        let null: Fields = sonic_rs::from_str(r#"{"category_id":null}"#).unwrap();
        let set: Fields = sonic_rs::from_str(r#"{"category_id":7}"#).unwrap();
        assert_eq!(absent.category_id, None);
        assert_eq!(null.category_id, Some(None));
        assert_eq!(set.category_id, Some(Some(7)));
        let back: Fields = sonic_rs::from_str(&sonic_rs::to_string(&null).unwrap()).unwrap();
        assert_eq!(back, null);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let parsed: Result<Fields, _> = sonic_rs::from_str(r#"{"title":"a","titel":"b"}"#);
        assert!(parsed.is_err());
    }
}
