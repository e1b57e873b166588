//! Routing: from a parsed request to a response appended to the batch.
//!
//! [`dispatch`] answers everything it can synchronously — above all
//! `GET /todos?limit=N`, straight from the core's snapshot. A request that
//! must wait (a write being made durable, a lookup outside the snapshot) comes
//! back as [`Action::Await`]; the connection loop flushes what it has, awaits
//! [`complete`], and carries on, so responses stay in request order.

pub mod commands;
pub mod health;
pub mod todos;

use todo_model::TodoCommand;

use crate::errors;
use crate::metrics::Route;
use crate::per_core::Core;
use todo_http::http1::{Method, Request};
use todo_http::response::{self, Persist};
use todo_http::HttpError;

/// What a route did with a request.
pub enum Action {
    /// A response was appended.
    Done(Route, u16),
    /// The response needs an await first.
    Await(Pending),
}

/// Work that needs the backend before it can be answered.
pub enum Pending {
    Submit(TodoCommand),
    GetTodo(u64),
    Outcome(u64),
}

/// Per-request response options.
#[derive(Clone, Copy)]
pub struct Reply {
    pub persist: Persist,
    pub head_only: bool,
}

impl Reply {
    pub fn json(self, core: &Core, out: &mut Vec<u8>, status: u16, parts: &[&[u8]]) {
        self.with_headers(core, out, status, b"", parts);
    }

    pub fn with_headers(
        self,
        core: &Core,
        out: &mut Vec<u8>,
        status: u16,
        extra: &[u8],
        parts: &[&[u8]],
    ) {
        response::append(
            out,
            response::Head {
                status,
                date: &core.date,
                persist: self.persist,
                head_only: self.head_only,
                text: false,
                extra,
            },
            parts,
        );
    }

    pub fn error(self, core: &Core, out: &mut Vec<u8>, err: &HttpError) -> u16 {
        response::append_error(out, err, &core.date, self.persist);
        err.status
    }
}

const TODOS_ALLOW: &str = "GET, HEAD, POST";
const TODO_ALLOW: &str = "GET, HEAD, PUT, DELETE";
const READ_ALLOW: &str = "GET, HEAD";

pub fn dispatch(core: &Core, req: &Request<'_>, out: &mut Vec<u8>, persist: Persist) -> Action {
    let reply = Reply {
        persist,
        head_only: req.method == Method::Head,
    };
    let read = matches!(req.method, Method::Get | Method::Head);
    let done = |route, err: HttpError, out: &mut Vec<u8>| {
        Action::Done(route, reply.error(core, out, &err))
    };

    // The hot route first.
    if req.path == "/todos" {
        return match req.method {
            Method::Get | Method::Head => todos::list(core, req.query, out, reply),
            Method::Post => match todos::write(core, req, None) {
                Ok(cmd) => Action::Await(Pending::Submit(cmd)),
                Err(e) => done(Route::TodosWrite, e, out),
            },
            _ => done(
                Route::Other,
                HttpError::method_not_allowed(TODOS_ALLOW),
                out,
            ),
        };
    }
    if let Some(id) = req.path.strip_prefix("/todos/") {
        let Some(id) = parse_id(id) else {
            return done(Route::TodosGet, errors::TODO_NOT_FOUND, out);
        };
        return match req.method {
            Method::Get | Method::Head => todos::get(core, id, out, reply),
            Method::Put | Method::Delete => match todos::write(core, req, Some(id)) {
                Ok(cmd) => Action::Await(Pending::Submit(cmd)),
                Err(e) => done(Route::TodosWrite, e, out),
            },
            _ => done(Route::Other, HttpError::method_not_allowed(TODO_ALLOW), out),
        };
    }
    if let Some(id) = req.path.strip_prefix("/commands/") {
        return match (read, parse_id(id)) {
            (false, _) => done(Route::Other, HttpError::method_not_allowed(READ_ALLOW), out),
            (true, None) => done(Route::Commands, errors::COMMAND_NOT_FOUND, out),
            (true, Some(id)) => Action::Await(Pending::Outcome(id)),
        };
    }
    let route = match req.path {
        "/livez" | "/readyz" => Route::Health,
        "/metrics" => Route::Metrics,
        _ => return done(Route::Other, HttpError::NOT_FOUND, out),
    };
    if !read {
        return done(Route::Other, HttpError::method_not_allowed(READ_ALLOW), out);
    }
    let status = match req.path {
        "/livez" => health::livez(core, out, reply),
        "/readyz" => health::readyz(core, out, reply),
        _ => health::metrics(core, out, reply),
    };
    Action::Done(route, status)
}

/// Answer a [`Pending`] request once the backend has replied.
pub async fn complete(
    core: &Core,
    pending: Pending,
    out: &mut Vec<u8>,
    reply: Reply,
) -> (Route, u16) {
    match pending {
        Pending::Submit(cmd) => {
            let ids = (cmd.command_id, cmd.todo_id);
            let result = core.backend.finish(core.backend.start(cmd)).await;
            (
                Route::TodosWrite,
                todos::accepted(core, ids, result, out, reply),
            )
        }
        Pending::GetTodo(id) => (Route::TodosGet, todos::get_slow(core, id, out, reply).await),
        Pending::Outcome(id) => (
            Route::Commands,
            commands::outcome(core, id, out, reply).await,
        ),
    }
}

/// Ids are plain decimal u64s; anything else names no resource (404).
pub fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
