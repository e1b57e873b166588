//! Routing: from a parsed request to a response appended to the batch.
//!
//! [`dispatch`] answers everything it can synchronously — above all
//! `GET /todos?limit=N`, straight from the core's snapshot. A todo write
//! that passed its checks comes back as [`Action::Write`], its command: the
//! connection loop hands it to the backend at once and answers it once it
//! is durable, so the writes of a pipelined batch share one wait
//! (`conn.rs`). A request that must wait for something else (a write whose
//! category or `Idempotency-Key` the backend checks first, a lookup outside
//! the snapshot, a password hash, a search) comes back as
//! [`Action::Await`]; the connection loop writes what is before it, awaits
//! [`complete`], and carries on, so responses stay in request order.
//!
//! The router sees the whole [`Core`]; each handler is handed the groups it
//! reads (the read path's [`crate::per_core::Reads`], the backend, the
//! read model, ...) and answers through its [`Reply`]. What a route learns
//! of the request (the subject of its token) comes back in [`Routed`].

pub mod accounts;
pub mod categories;
pub mod changes;
pub mod commands;
pub mod docs;
pub mod health;
pub mod todos;

use std::net::IpAddr;
use std::rc::Rc;

use todo_model::TodoCommand;

use crate::errors;
use crate::metrics::Route;
use crate::per_core::{Auth, Core};
use crate::query::parse_id;
use crate::trace::Trace;
use todo_http::http1::{Method, Request};
use todo_http::response::{self, Persist};
use todo_http::{DateCache, HttpError};

/// What routing made of a request: what was done, and who asked.
pub struct Routed {
    pub action: Action,
    /// The subject of the bearer token a route verified, for the access
    /// log's line (`None`: the route verified none).
    pub user: Option<Rc<str>>,
}

impl From<Action> for Routed {
    /// An action for a request with no verified subject.
    #[inline]
    fn from(action: Action) -> Routed {
        Routed { action, user: None }
    }
}

impl Action {
    /// A request to answer once `pending` is done.
    pub fn wait(pending: Pending) -> Action {
        Action::Await(Box::new(pending))
    }

    /// A checked todo write.
    pub fn write(cmd: TodoCommand) -> Action {
        Action::Write(Box::new(cmd))
    }

    /// This action, for the verified token subject `user`.
    #[inline]
    pub fn by(self, user: Option<Rc<str>>) -> Routed {
        Routed { action: self, user }
    }
}

/// What a route did with a request.
///
/// Small on purpose (two words): every request's `Routed` is moved from
/// the route to the connection loop, so the rare large parts (a command, a
/// pending request) are boxed and the hot path moves 32 bytes, not a
/// command's 200 (a `memcpy` call per request, measured with callgrind).
pub enum Action {
    /// A response was appended.
    Done(Route, u16),
    /// A checked todo write, for the connection loop to hand to the backend
    /// and answer once it is durable ([`todos::accepted`]).
    Write(Box<TodoCommand>),
    /// The response needs an await first.
    Await(Box<Pending>),
    /// A change-feed subscriber: the connection becomes its stream
    /// (`crate::feed::stream`) once what is before it is answered.
    Stream(Box<crate::feed::Subscription>),
}

/// Work that needs the backend (or another thread) before it can be
/// answered.
pub enum Pending {
    /// A todo write naming a category this server's read model cannot vouch
    /// for (see [`crate::backend::Backend::current_model`]), or carrying an
    /// `Idempotency-Key`: `category` is asked of the backend and the key
    /// claimed before the command is submitted.
    SubmitChecked {
        cmd: TodoCommand,
        category: Option<u64>,
    },
    /// `GET /todos/{id}` of a todo the snapshot lacks, for this reader.
    GetTodo(u64, Option<Rc<str>>),
    Outcome(u64),
    /// A `q=` search, and its page cache key.
    Search(crate::query::ListQuery, Box<[u8]>),
    Register(accounts::Credentials),
    Login(accounts::Credentials, Option<IpAddr>),
    Me(Rc<str>),
    Category(categories::Pending),
}

/// How to answer one request: whether the connection persists, whether it
/// was `HEAD`, and the core's Date cache every head copies.
#[derive(Clone, Copy)]
pub struct Reply<'a> {
    pub persist: Persist,
    pub head_only: bool,
    pub date: &'a DateCache,
}

impl Reply<'_> {
    pub fn json(self, out: &mut Vec<u8>, status: u16, parts: &[&[u8]]) {
        self.with_headers(out, status, b"", parts);
    }

    /// A JSON answer no cache may keep (`Cache-Control: no-store`): a
    /// token, a status that is polled.
    pub fn no_store(self, out: &mut Vec<u8>, status: u16, body: &[u8]) {
        self.with_headers(out, status, b"\r\nCache-Control: no-store", &[body]);
    }

    pub fn with_headers(self, out: &mut Vec<u8>, status: u16, extra: &[u8], parts: &[&[u8]]) {
        response::append(
            out,
            response::Head {
                status,
                date: self.date,
                persist: self.persist,
                head_only: self.head_only,
                text: false,
                extra,
            },
            parts,
        );
    }

    pub fn error(self, out: &mut Vec<u8>, err: &HttpError) -> u16 {
        response::append_error_to(out, err, self.date, self.persist, self.head_only);
        err.status
    }
}

const TODOS_ALLOW: &str = "GET, HEAD, POST";
const TODO_ALLOW: &str = "GET, HEAD, PUT, DELETE";
const READ_ALLOW: &str = "GET, HEAD";
const POST_ALLOW: &str = "POST";

/// Route one request. `GET /todos` is decided here, inlined into the
/// connection loop; everything else goes through [`dispatch_other`], kept
/// out of line so the hot path's code stays small as routes are added.
#[inline(always)]
pub fn dispatch(core: &Core, req: &Request<'_>, out: &mut Vec<u8>, persist: Persist) -> Routed {
    if req.method == Method::Get && req.path == "/todos" {
        let reply = Reply {
            persist,
            head_only: false,
            date: &core.reads.date,
        };
        return todos::list(&core.reads, &core.auth, req, out, reply);
    }
    dispatch_other(core, req, out, persist)
}

#[inline(never)]
fn dispatch_other(core: &Core, req: &Request<'_>, out: &mut Vec<u8>, persist: Persist) -> Routed {
    let reply = Reply {
        persist,
        head_only: req.method == Method::Head,
        date: &core.reads.date,
    };
    let read = matches!(req.method, Method::Get | Method::Head);
    let (model, writes) = (&core.reads.model, &core.writes);
    let done =
        |route, err: HttpError, out: &mut Vec<u8>| Action::Done(route, reply.error(out, &err));

    if req.path == "/todos" {
        return match req.method {
            Method::Get | Method::Head => todos::list(&core.reads, &core.auth, req, out, reply),
            Method::Post => todo_write(core, req, None, out, reply),
            _ => done(
                Route::Other,
                HttpError::method_not_allowed(TODOS_ALLOW),
                out,
            )
            .into(),
        };
    }
    if req.path == "/todos/changes" {
        return changes::subscribe(core, req, out, reply);
    }
    if let Some(id) = req.path.strip_prefix("/todos/") {
        let Some(id) = parse_id(id) else {
            return done(Route::TodosGet, errors::TODO_NOT_FOUND, out).into();
        };
        return match req.method {
            Method::Get | Method::Head => todos::get(&core.reads, &core.auth, req, id, out, reply),
            Method::Put | Method::Delete => todo_write(core, req, Some(id), out, reply),
            _ => done(Route::Other, HttpError::method_not_allowed(TODO_ALLOW), out).into(),
        };
    }
    if let Some(id) = req.path.strip_prefix("/commands/") {
        return match (read, parse_id(id)) {
            (false, _) => done(Route::Other, HttpError::method_not_allowed(READ_ALLOW), out),
            (true, None) => done(Route::Commands, errors::COMMAND_NOT_FOUND, out),
            (true, Some(id)) => Action::wait(Pending::Outcome(id)),
        }
        .into();
    }
    match req.path {
        "/users" => {
            return match req.method {
                Method::Post => match accounts::register(model, req) {
                    Ok(c) => Action::wait(Pending::Register(c)),
                    Err(e) => done(Route::Users, e, out),
                },
                _ => done(Route::Users, HttpError::method_not_allowed(POST_ALLOW), out),
            }
            .into()
        }
        "/sessions" => {
            return match req.method {
                Method::Post => match accounts::login(req) {
                    // The connection loop fills in the client's address.
                    Ok(c) => Action::wait(Pending::Login(c, None)),
                    Err(e) => done(Route::Sessions, e, out),
                },
                _ => done(
                    Route::Sessions,
                    HttpError::method_not_allowed(POST_ALLOW),
                    out,
                ),
            }
            .into();
        }
        "/users/me" => {
            if !read {
                return done(Route::Users, HttpError::method_not_allowed(READ_ALLOW), out).into();
            }
            return match subject(&core.auth, req) {
                Ok(s) => Action::wait(Pending::Me(s.clone())).by(Some(s)),
                Err(e) => done(Route::Users, e, out).into(),
            };
        }
        "/categories" => {
            let subject = match subject(&core.auth, req) {
                Ok(s) => s,
                Err(e) => return done(Route::Categories, e, out).into(),
            };
            return match req.method {
                Method::Get | Method::Head => Action::Done(
                    Route::Categories,
                    categories::list(model, &subject, out, reply),
                ),
                Method::Post => match categories::request(writes, model, req, &subject, None) {
                    Ok(p) => Action::wait(Pending::Category(p)),
                    Err(e) => done(Route::Categories, e, out),
                },
                _ => done(
                    Route::Categories,
                    HttpError::method_not_allowed(TODOS_ALLOW),
                    out,
                ),
            }
            .by(Some(subject));
        }
        _ => {}
    }
    if let Some(id) = req.path.strip_prefix("/categories/") {
        if !matches!(
            req.method,
            Method::Get | Method::Head | Method::Put | Method::Delete
        ) {
            return done(
                Route::Categories,
                HttpError::method_not_allowed(TODO_ALLOW),
                out,
            )
            .into();
        }
        let subject = match subject(&core.auth, req) {
            Ok(s) => s,
            Err(e) => return done(Route::Categories, e, out).into(),
        };
        let Some(id) = parse_id(id) else {
            return done(Route::Categories, categories::CATEGORY_NOT_FOUND, out).by(Some(subject));
        };
        return match categories::request(writes, model, req, &subject, Some(id)) {
            Ok(p) => Action::wait(Pending::Category(p)),
            Err(e) => done(Route::Categories, e, out),
        }
        .by(Some(subject));
    }
    if docs::owns(req.path) {
        return Action::Done(Route::Docs, docs::serve(req, out, reply)).into();
    }
    let route = match req.path {
        "/livez" | "/readyz" => Route::Health,
        "/metrics" => Route::Metrics,
        _ => return done(Route::Other, HttpError::NOT_FOUND, out).into(),
    };
    if !read {
        return done(Route::Other, HttpError::method_not_allowed(READ_ALLOW), out).into();
    }
    let status = match req.path {
        "/livez" => health::livez(out, reply),
        "/readyz" => health::readyz(core, out, reply),
        _ => health::metrics(core, out, reply),
    };
    Action::Done(route, status).into()
}

/// `POST /todos`, `PUT` and `DELETE /todos/{id}`: the token's subject
/// first (401 without one), then the write's own checks.
fn todo_write(
    core: &Core,
    req: &Request<'_>,
    id: Option<u64>,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> Routed {
    let refused =
        |err: HttpError, out: &mut Vec<u8>| Action::Done(Route::TodosWrite, reply.error(out, &err));
    let user = match subject(&core.auth, req) {
        Ok(user) => user,
        Err(e) => return refused(e, out).into(),
    };
    match todos::write(&core.writes, &core.reads.model, req, &user, id) {
        Ok(action) => action,
        Err(e) => refused(e, out),
    }
    .by(Some(user))
}

/// Answer a [`Pending`] request once the backend has replied.
pub async fn complete(
    core: &Core,
    pending: Pending,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
    trace: &Trace,
) -> (Route, u16) {
    let (backend, model) = (&core.writes.backend, &core.reads.model);
    match pending {
        Pending::SubmitChecked { cmd, category } => (
            Route::TodosWrite,
            todos::submit_checked(backend, model, cmd, category, out, reply, trace).await,
        ),
        Pending::GetTodo(id, viewer) => (
            Route::TodosGet,
            todos::get_slow(backend, id, viewer.as_deref(), out, reply).await,
        ),
        Pending::Search(query, key) => (
            Route::TodosQuery,
            todos::search(&core.reads, query, key, out, reply).await,
        ),
        Pending::Register(c) => (
            Route::Users,
            accounts::complete_register(&core.auth, &core.writes, c, out, reply, trace).await,
        ),
        Pending::Login(c, peer) => (
            Route::Sessions,
            accounts::complete_login(&core.auth, backend, model, c, peer, out, reply).await,
        ),
        Pending::Me(subject) => (
            Route::Users,
            accounts::me(backend, model, subject, out, reply).await,
        ),
        Pending::Category(p) => (
            Route::Categories,
            categories::complete(backend, model, p, out, reply, trace).await,
        ),
        Pending::Outcome(id) => (
            Route::Commands,
            commands::outcome(backend, id, out, reply).await,
        ),
    }
}

/// The subject of the request's bearer token (401 without a valid one).
pub fn subject(auth: &Auth, req: &Request<'_>) -> Result<Rc<str>, HttpError> {
    auth.subject(req.authorization)
        .map_err(|e| errors::unauthorized(e.to_string()))
}

/// A JSON object body of type `T` (`what` names it in errors): 411
/// without a body, 415 unless `application/json`, then [`json_object`].
pub fn json_body<T: serde::de::DeserializeOwned>(
    req: &Request<'_>,
    what: &str,
) -> Result<T, HttpError> {
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
    json_object(req.body.bytes(), what)
}

/// `body` as a JSON object of type `T` (the media type already checked):
/// 400 when empty or not JSON, 422 when not an object or the fields do not
/// fit.
pub fn json_object<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, HttpError> {
    if body.trim_ascii().is_empty() {
        return Err(errors::BODY_REQUIRED);
    }
    // serde would also read a struct from a JSON array; only objects are
    // accepted.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return match sonic_rs::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(errors::invalid_field("body must be a JSON object".into())),
            Err(e) => Err(errors::bad_json(format!("body is not valid JSON: {e}"))),
        };
    }
    sonic_rs::from_slice::<T>(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            errors::bad_json(format!("body is not valid JSON: {e}"))
        } else {
            errors::invalid_field(format!("body does not match the fields of {what}: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's `Routed` is moved from the route to the connection
    /// loop: kept at four words, it moves in registers and plain stores. At
    /// 216 bytes (a command inline) it cost a `memcpy` call per request.
    #[test]
    fn what_a_route_returns_stays_small() {
        assert!(
            std::mem::size_of::<Action>() <= 16,
            "{}",
            std::mem::size_of::<Action>()
        );
        assert!(
            std::mem::size_of::<Routed>() <= 32,
            "{}",
            std::mem::size_of::<Routed>()
        );
    }
}
