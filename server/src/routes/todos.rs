//! `/todos` and `/todos/{id}`: the read hot path and the write entry point.

use todo_model::{Fields, Op, TodoCommand, SNAPSHOT_MAX};

use super::{Action, Reply};
use crate::errors;
use crate::metrics::Route;
use crate::per_core::Core;
use todo_http::http1::{Method, Request};
use todo_http::HttpError;

/// `GET /todos?limit=N`: head plus a prefix of the snapshot and one `]`.
/// No rendering, no allocation: two memcpys and an itoa.
#[inline]
pub fn list(core: &Core, query: &str, out: &mut Vec<u8>, reply: Reply) -> Action {
    let limit = match parse_limit(query, core.config.default_limit) {
        Some(n) => n,
        None => return Action::Done(Route::TodosList, reply.error(core, out, &errors::BAD_LIMIT)),
    };
    let snapshot = core.snapshot();
    reply.json(core, out, 200, &[snapshot.prefix(limit), b"]"]);
    Action::Done(Route::TodosList, 200)
}

/// `limit` from a query string: absent means `default`; present must be an
/// integer in 1..=SNAPSHOT_MAX. Other parameters are ignored.
pub fn parse_limit(query: &str, default: usize) -> Option<usize> {
    // Byte-wise on purpose: this runs for every read request.
    let Some(value) = query
        .as_bytes()
        .split(|&b| b == b'&')
        .find_map(|kv| kv.strip_prefix(b"limit="))
    else {
        return Some(default);
    };
    if value.is_empty() || value.len() > 4 {
        return None;
    }
    let mut n = 0usize;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + usize::from(b - b'0');
    }
    (1..=SNAPSHOT_MAX).contains(&n).then_some(n)
}

/// `GET /todos/{id}` from the snapshot when it holds the todo.
pub fn get(core: &Core, id: u64, out: &mut Vec<u8>, reply: Reply) -> Action {
    let snapshot = core.snapshot();
    match snapshot.row_by_id(id) {
        Some(row) => {
            reply.json(core, out, 200, &[row]);
            Action::Done(Route::TodosGet, 200)
        }
        None => Action::Await(super::Pending::GetTodo(id)),
    }
}

/// `GET /todos/{id}` for a todo older than the snapshot.
pub async fn get_slow(core: &Core, id: u64, out: &mut Vec<u8>, reply: Reply) -> u16 {
    match core.backend.get(id).await {
        Ok(Some(row)) => {
            reply.json(core, out, 200, &[&row]);
            200
        }
        Ok(None) => reply.error(core, out, &errors::TODO_NOT_FOUND),
        Err(unavailable) => reply.error(core, out, &unavailable.answer()),
    }
}

/// Check a write: token, body framing, media type, JSON, field rules. Returns
/// the command to submit. `id` is `None` for a create.
pub fn write(core: &Core, req: &Request<'_>, id: Option<u64>) -> Result<TodoCommand, HttpError> {
    let user = core
        .verifier
        .verify(req.authorization)
        .map_err(|e| errors::unauthorized(e.to_string()))?;
    let op = match (req.method, id) {
        (Method::Post, None) => Op::Create,
        (Method::Put, Some(_)) => Op::Update,
        (Method::Delete, Some(_)) => Op::Delete,
        _ => return Err(HttpError::internal("unroutable write")),
    };
    let fields = if op == Op::Delete {
        // A DELETE body has no defined meaning (RFC 9110 §9.3.5); ignore it.
        Fields::default()
    } else {
        parse_fields(req)?
    };
    fields
        .validate(op)
        .map_err(|e| errors::invalid_field(e.to_string()))?;
    let todo_id = match id {
        Some(id) => id,
        None => core.next_id(),
    };
    Ok(TodoCommand {
        command_id: core.next_id(),
        op,
        todo_id,
        user,
        fields,
        issued_at: todo_model::now_ms(),
    })
}

fn parse_fields(req: &Request<'_>) -> Result<Fields, HttpError> {
    if !req.body.is_present() {
        return Err(HttpError::LENGTH_REQUIRED);
    }
    let json = req.content_type.is_some_and(|ct| {
        let essence = ct.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
        essence.eq_ignore_ascii_case(b"application/json")
    });
    if !json {
        return Err(errors::UNSUPPORTED_MEDIA_TYPE);
    }
    parse_body(req.body.bytes())
}

/// The fields of a write's JSON body (the media type already checked).
pub fn parse_body(body: &[u8]) -> Result<Fields, HttpError> {
    if body.trim_ascii().is_empty() {
        return Err(errors::BODY_REQUIRED);
    }
    // serde would also read a struct from a JSON array; only objects are todos.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return match sonic_rs::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(errors::invalid_field("body must be a JSON object".into())),
            Err(e) => Err(errors::bad_json(format!("body is not valid JSON: {e}"))),
        };
    }
    sonic_rs::from_slice::<Fields>(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            errors::bad_json(format!("body is not valid JSON: {e}"))
        } else {
            errors::invalid_field(format!("body does not match the todo fields: {e}"))
        }
    })
}

/// Answer a finished write: 202 `{"command_id","todo_id"}` once it is
/// durable, the backend's error otherwise.
pub fn accepted(
    core: &Core,
    (command_id, todo_id): (u64, u64),
    result: Result<(), HttpError>,
    out: &mut Vec<u8>,
    reply: Reply,
) -> u16 {
    match result {
        Ok(()) => {
            let mut body = Vec::with_capacity(64);
            body.extend_from_slice(b"{\"command_id\":");
            body.extend_from_slice(itoa::Buffer::new().format(command_id).as_bytes());
            body.extend_from_slice(b",\"todo_id\":");
            body.extend_from_slice(itoa::Buffer::new().format(todo_id).as_bytes());
            body.push(b'}');
            let mut location = Vec::with_capacity(48);
            location.extend_from_slice(b"\r\nLocation: /commands/");
            location.extend_from_slice(itoa::Buffer::new().format(command_id).as_bytes());
            reply.with_headers(core, out, 202, &location, &[&body]);
            202
        }
        Err(e) => reply.error(core, out, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_limit;

    #[test]
    fn limits() {
        assert_eq!(parse_limit("", 20), Some(20));
        assert_eq!(parse_limit("x=1", 20), Some(20));
        assert_eq!(parse_limit("limit=1", 20), Some(1));
        assert_eq!(parse_limit("a=b&limit=1000", 20), Some(1000));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=",
            "limit=-1",
            "limit=1e3",
            "limit=99999",
            "limit=%31",
        ] {
            assert_eq!(parse_limit(bad, 20), None, "{bad}");
        }
    }
}
