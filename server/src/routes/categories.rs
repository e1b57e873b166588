//! `/categories` and `/categories/{id}`: each user's own (docs/architecture.md §9).
//!
//! Changes are commands (`Op::CreateCategory`, `UpdateCategory`,
//! `DeleteCategory`) applied once by the one rule, and their answers wait
//! for the outcome, so a name taken or a category still in use is a 409
//! the client sees. Another user's category answers 404, as one that does
//! not exist: ids do not reveal what others keep.

use serde::Deserialize;
use todo_model::account::{check_category_name, render_category};
use todo_model::{Category, Fields, Op, Outcome, Rejection, TodoCommand};

use super::{json_body, Reply};
use crate::backend::Backend;
use crate::errors;
use crate::per_core::Writes;
use crate::read_model::Shared;
use todo_http::http1::{Method, Request};
use todo_http::HttpError;

pub const CATEGORY_NOT_FOUND: HttpError =
    HttpError::new(404, "not_found", "no category of yours has that id", false);
pub const NAME_TAKEN: HttpError = HttpError::new(
    409,
    "name_taken",
    "you have a category with that name",
    false,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

/// What a category request needs from the backend.
pub enum Pending {
    /// A change; answer with its outcome.
    Apply(TodoCommand),
    /// `GET /categories/{id}`.
    Get(String, u64),
}

/// `GET /categories`: the caller's categories, oldest first.
pub fn list(model: &Shared, subject: &str, out: &mut Vec<u8>, reply: Reply<'_>) -> u16 {
    let mut body = Vec::with_capacity(256);
    body.push(b'[');
    for (i, c) in model.read().categories_of(subject).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        render_category(c, &mut body);
    }
    body.push(b']');
    reply.with_headers(out, 200, b"\r\nCache-Control: private, no-cache", &[&body]);
    200
}

/// Check a category request and say what it needs.
pub fn request(
    writes: &Writes,
    model: &Shared,
    req: &Request<'_>,
    subject: &str,
    id: Option<u64>,
) -> Result<Pending, HttpError> {
    let named = |req: &Request<'_>| -> Result<String, HttpError> {
        let b: NameBody = json_body(req, "a category")?;
        check_category_name(&b.name).map_err(|e| errors::invalid_field(e.to_string()))?;
        Ok(b.name)
    };
    let command = |op, todo_id, name| TodoCommand {
        command_id: writes.next_id(),
        op,
        todo_id,
        user: subject.to_string(),
        fields: Fields::default(),
        issued_at: todo_model::now_ms(),
        name,
        password_hash: None,
        idempotency: None,
    };
    match (req.method, id) {
        (Method::Post, None) => {
            let name = named(req)?;
            // A model that may lag could hold a name freed a moment ago:
            // then the apply rule alone decides.
            let taken = writes
                .backend
                .current_model(model)
                .is_some_and(|m| m.categories_of(subject).any(|c| c.name == name));
            if taken {
                return Err(NAME_TAKEN);
            }
            Ok(Pending::Apply(command(
                Op::CreateCategory,
                writes.next_id(),
                Some(name),
            )))
        }
        (Method::Get | Method::Head, Some(id)) => Ok(Pending::Get(subject.to_string(), id)),
        (Method::Put, Some(id)) => {
            let name = named(req)?;
            Ok(Pending::Apply(command(Op::UpdateCategory, id, Some(name))))
        }
        (Method::Delete, Some(id)) => {
            // Refused here when this server already sees todos in it; the
            // apply rule refuses it anyway if some landed meanwhile.
            if let Some(m) = writes.backend.current_model(model) {
                if m.category(id).is_some_and(|c| c.owner == subject) {
                    let n = m.category_todos(id);
                    if n > 0 {
                        return Err(not_empty(n));
                    }
                }
            }
            Ok(Pending::Apply(command(Op::DeleteCategory, id, None)))
        }
        _ => Err(HttpError::internal("unroutable category request")),
    }
}

fn not_empty(todos: usize) -> HttpError {
    HttpError::with_message(
        409,
        "category_not_empty",
        format!("the category still has {todos} todos; move or delete them first"),
    )
}

pub async fn complete(
    backend: &Backend,
    model: &Shared,
    pending: Pending,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
    trace: &crate::trace::Trace,
) -> u16 {
    let (cmd, subject, id) = match pending {
        Pending::Get(subject, id) => {
            return match backend.category(model, id).await {
                Ok(Some(c)) if c.owner == subject => answer(&c, 200, out, reply),
                Ok(_) => reply.error(out, &CATEGORY_NOT_FOUND),
                Err(unavailable) => reply.error(out, &unavailable.answer()),
            };
        }
        Pending::Apply(cmd) => {
            let (subject, id) = (cmd.user.clone(), cmd.todo_id);
            (cmd, subject, id)
        }
    };
    let op = cmd.op;
    let (command_id, name, issued_at) = (cmd.command_id, cmd.name.clone(), cmd.issued_at);
    let outcome = match backend.apply(cmd, Some(trace)).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => return super::todos::accepted(Ok((command_id, id)), out, reply),
        Err(e) => return reply.error(out, &e),
    };
    match (op, outcome) {
        (Op::CreateCategory, Outcome::Applied) => {
            let c = Category {
                id,
                owner: subject,
                name: name.unwrap_or_default(),
                created_at: issued_at,
                updated_at: issued_at,
            };
            answer(&c, 201, out, reply)
        }
        (Op::UpdateCategory, Outcome::Applied) => {
            match backend.category(model, id).await {
                // What the apply rule made of it, whether or not this
                // server's model has caught up.
                Ok(Some(mut c)) => {
                    c.name = name.unwrap_or_default();
                    c.updated_at = c.updated_at.max(issued_at);
                    answer(&c, 200, out, reply)
                }
                Ok(None) => reply.error(out, &CATEGORY_NOT_FOUND),
                Err(unavailable) => reply.error(out, &unavailable.answer()),
            }
        }
        (_, Outcome::Applied) => {
            reply.with_headers(out, 204, b"", &[]);
            204
        }
        (_, Outcome::Rejected(r)) => {
            let e = match r {
                Rejection::NameTaken => NAME_TAKEN,
                Rejection::CategoryNotEmpty => not_empty(model.read().category_todos(id).max(1)),
                Rejection::AlreadyExists => {
                    HttpError::new(409, "conflict", "that category id is taken", false)
                }
                _ => CATEGORY_NOT_FOUND,
            };
            reply.error(out, &e)
        }
    }
}

fn answer(c: &Category, status: u16, out: &mut Vec<u8>, reply: Reply<'_>) -> u16 {
    let mut body = Vec::with_capacity(128);
    render_category(c, &mut body);
    let mut location = Vec::with_capacity(40);
    if status == 201 {
        location.extend_from_slice(b"\r\nLocation: /categories/");
        location.extend_from_slice(itoa::Buffer::new().format(c.id).as_bytes());
    }
    reply.with_headers(out, status, &location, &[&body]);
    status
}
