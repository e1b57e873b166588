//! `/todos` and `/todos/{id}`: the read hot path and the write entry point.

use std::rc::Rc;

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use todo_model::{Fields, Idempotency, Op, TodoCommand, SNAPSHOT_MAX};

use super::{Action, Pending, Reply, Routed};
use crate::backend::Backend;
use crate::cache::{page_key, CachedPage};
use crate::errors;
use crate::metrics::Route;
use crate::per_core::{Auth, Reads, Writes};
use crate::query::ListQuery;
use crate::read_model::Shared;
use crate::search::{render_page, Rendered};
use crate::trace::Trace;
use todo_http::conditional::{not_modified, version_headers};
use todo_http::http1::{Method, Request};
use todo_http::response::Persist;
use todo_http::HttpError;

/// `GET /todos`: the hot path when the query is empty or only `limit=N`,
/// the read model otherwise ([`query`]).
#[inline]
pub fn list(
    reads: &Reads,
    auth: &Auth,
    req: &Request<'_>,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> Routed {
    match hot_limit(req.query, reads.default_limit) {
        Some(limit) => hot(reads, req, limit, out, reply).into(),
        None => query(reads, auth, req, out, reply),
    }
}

/// The limit of a hot-path query string: empty (the default), or
/// `limit=` and one to four digits, alone. Anything else is a query.
#[inline]
fn hot_limit(query: &str, default: usize) -> Option<usize> {
    if query.is_empty() {
        return Some(default);
    }
    let digits = query.as_bytes().strip_prefix(b"limit=")?;
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    let mut n = 0usize;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + usize::from(b - b'0');
    }
    Some(n)
}

/// `GET /todos?limit=N`: head plus a prefix of the snapshot and one `]`.
/// No rendering, no allocation: memcpys and an itoa. The extra headers
/// (`ETag`, `Cache-Control`, `Link` to the next page, whose cursor is the
/// last row's id) are made once per snapshot and limit.
#[inline]
fn hot(
    reads: &Reads,
    req: &Request<'_>,
    limit: usize,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> Action {
    if !(1..=SNAPSHOT_MAX).contains(&limit) {
        return Action::Done(Route::TodosList, reply.error(out, &errors::BAD_LIMIT));
    }
    let snapshot = reads.snapshot();
    if req.if_none_match.is_none() && reply.persist == Persist::KeepAlive && !reply.head_only {
        // The common case: one copy of the head made for this limit.
        let head = reads.hot_head(&snapshot, limit);
        let body = snapshot.prefix(limit);
        // One allocation of the right size for a fresh buffer, not three.
        out.reserve(head.len() + body.len() + 1);
        out.extend_from_slice(&head);
        out.extend_from_slice(body);
        out.push(b']');
        return Action::Done(Route::TodosList, 200);
    }
    let extra = reads.hot_extra(&snapshot, limit);
    if not_modified(req.if_none_match, snapshot.version()) {
        reply.with_headers(out, 304, &extra, &[]);
        return Action::Done(Route::TodosList, 304);
    }
    reply.with_headers(out, 200, &extra, &[snapshot.prefix(limit), b"]"]);
    Action::Done(Route::TodosList, 200)
}

/// `GET /todos` with filters, a sort or a cursor: from the core's page
/// cache when the model has not changed since the page was rendered, else
/// rendered from the read model (searches on the search thread).
pub fn query(
    reads: &Reads,
    auth: &Auth,
    req: &Request<'_>,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> Routed {
    // A token that does not verify leaves a public query public; `mine`
    // below says 401.
    let subject = auth.viewer(req.authorization);
    let done = |status, subject| Action::Done(Route::TodosQuery, status).by(subject);
    let version = reads.model.version();
    {
        // Built in the core's scratch buffer: a hit allocates nothing.
        let mut key = reads.scratch.borrow_mut();
        page_key(&mut key, req.query, subject.as_deref());
        if let Some(page) = reads.pages.borrow().get(&key, version) {
            return done(answer_page(req, page, out, reply), subject);
        }
    }
    if !reads.model.loaded() {
        return done(reply.error(out, &errors::NOT_READY), subject);
    }
    let mut q = match ListQuery::parse(req.query, None, reads.default_limit) {
        Ok(q) => q,
        Err(e) => return done(reply.error(out, &e), subject),
    };
    if q.mine {
        match &subject {
            Some(s) => q.owner = Some(s.to_string()),
            None => {
                let e = errors::unauthorized(auth.refusal(req.authorization));
                return done(reply.error(out, &e), None);
            }
        }
    }
    // The key the lookup above built, kept for the page about to be made.
    let key: Box<[u8]> = reads.scratch.borrow().as_slice().into();
    if q.is_search() {
        return Action::wait(super::Pending::Search(q, key)).by(subject);
    }
    let rendered = render_page(&reads.model.read(), &q);
    let page = cache_page(reads, key, rendered, !q.mine);
    done(answer_page(req, &page, out, reply), subject)
}

/// Keep a rendered page in the core's cache; returns what to answer with.
pub fn cache_page(reads: &Reads, key: Box<[u8]>, r: Rendered, public: bool) -> Rc<CachedPage> {
    let mut headers = version_headers(r.version, public);
    if let Some(link) = &r.link {
        headers.extend_from_slice(b"\r\nLink: ");
        headers.extend_from_slice(link.as_bytes());
    }
    let page = Rc::new(CachedPage {
        version: r.version,
        body: r.body.into(),
        headers: headers.into(),
    });
    if reads.page_cache {
        reads.pages.borrow_mut().put(key, page.clone());
    }
    page
}

/// 200 with the page, or 304 when the client holds this version.
pub fn answer_page(
    req: &Request<'_>,
    page: &CachedPage,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> u16 {
    if not_modified(req.if_none_match, page.version) {
        reply.with_headers(out, 304, &page.headers, &[]);
        return 304;
    }
    reply.with_headers(out, 200, &page.headers, &[&page.body]);
    200
}

/// `GET /todos/{id}` from the snapshot when it holds the todo (a public
/// one, which any reader sees); otherwise from the backend, for the reader
/// the token names.
pub fn get(
    reads: &Reads,
    auth: &Auth,
    req: &Request<'_>,
    id: u64,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> Routed {
    let snapshot = reads.snapshot();
    match snapshot.row_by_id(id) {
        Some(row) => {
            reply.json(out, 200, &[row]);
            Action::Done(Route::TodosGet, 200).into()
        }
        None => {
            let viewer = auth.viewer(req.authorization);
            Action::wait(super::Pending::GetTodo(id, viewer.clone())).by(viewer)
        }
    }
}

/// `GET /todos/{id}` for a todo the snapshot does not hold: an older one,
/// or a private one. A todo `viewer` may not see answers exactly as one
/// that does not exist (docs/architecture.md §13); her own private todo
/// answers `Cache-Control: private`.
pub async fn get_slow(
    backend: &Backend,
    id: u64,
    viewer: Option<&str>,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> u16 {
    match backend.get(id).await {
        Ok(Some(todo)) if todo.visible_to(viewer) => {
            let mut row = Vec::with_capacity(256);
            todo_model::snapshot::render_todo(&todo, &mut row);
            let headers: &[u8] = if todo.public {
                b""
            } else {
                b"\r\nCache-Control: private\r\nVary: Authorization"
            };
            reply.with_headers(out, 200, headers, &[&row]);
            200
        }
        Ok(_) => reply.error(out, &errors::TODO_NOT_FOUND),
        Err(unavailable) => reply.error(out, &unavailable.answer()),
    }
}

/// Check a write: body framing, media type, JSON, field rules, the
/// category. Returns the command for the connection loop to hand to the
/// backend ([`Action::Write`]), or, when the backend must check it first,
/// what to await. `user` is the token's subject, checked by the caller;
/// `id` is `None` for a create.
pub fn write(
    writes: &Writes,
    model: &Shared,
    req: &Request<'_>,
    user: &str,
    id: Option<u64>,
) -> Result<Action, HttpError> {
    let op = match (req.method, id) {
        (Method::Post, None) => Op::Create,
        (Method::Put, Some(_)) => Op::Update,
        (Method::Delete, Some(_)) => Op::Delete,
        _ => return Err(HttpError::internal("unroutable write")),
    };
    let mut fields = if op == Op::Delete {
        // A DELETE body has no defined meaning (RFC 9110 §9.3.5); ignore it.
        Fields::default()
    } else {
        super::json_body(req, "a todo")?
    };
    fields
        .validate(op)
        .map_err(|e| errors::invalid_field(e.to_string()))?;
    if op == Op::Create {
        // Private unless the writer publishes it, said in the command so
        // that appliers tell it from a create logged before visibility
        // existed (see `Fields::public`).
        fields.public.get_or_insert(false);
    }
    let todo_id = match id {
        Some(id) => id,
        None => writes.next_id(),
    };
    let category = fields.category_id.flatten();
    let idempotency = idempotency(req)?;
    let cmd = TodoCommand {
        command_id: writes.next_id(),
        op,
        todo_id,
        user: user.to_string(),
        fields,
        issued_at: todo_model::now_ms(),
        name: None,
        password_hash: None,
        idempotency,
    };
    // A keyed write's key is claimed before it is submitted.
    let keyed = cmd.idempotency.is_some();
    let checked = |cmd, category| Action::wait(Pending::SubmitChecked { cmd, category });
    let Some(category) = category else {
        return Ok(if keyed {
            checked(cmd, None)
        } else {
            Action::write(cmd)
        });
    };
    // The category must be one of the writer's own: 422 now; the apply
    // rule holds it either way. A model that may lag (made or deleted on
    // another server a moment ago) defers to PostgreSQL.
    let Some(model) = writes.backend.current_model(model) else {
        return Ok(checked(cmd, Some(category)));
    };
    match model.category(category) {
        Some(c) if c.owner == cmd.user && keyed => Ok(checked(cmd, None)),
        Some(c) if c.owner == cmd.user => Ok(Action::write(cmd)),
        _ => Err(UNKNOWN_CATEGORY),
    }
}

/// The write's `Idempotency-Key` (1-255 visible ASCII characters; 400
/// otherwise) with the request's fingerprint: SHA-256 of the method, the
/// path and the body (a DELETE's body is ignored, as above).
fn idempotency(req: &Request<'_>) -> Result<Option<Box<Idempotency>>, HttpError> {
    let Some(key) = req.idempotency_key else {
        return Ok(None);
    };
    let key = key.trim_ascii();
    if key.is_empty() || key.len() > 255 || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(errors::INVALID_IDEMPOTENCY_KEY);
    }
    let mut hash = Sha256::new();
    hash.update(req.method.as_str());
    hash.update(b" ");
    hash.update(req.path);
    hash.update(b"\n");
    if req.method != Method::Delete {
        hash.update(req.body.bytes());
    }
    let fingerprint = hash
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
    Ok(Some(Box::new(Idempotency {
        // Checked above: visible ASCII.
        key: String::from_utf8_lossy(key).into_owned(),
        fingerprint,
    })))
}

pub const UNKNOWN_CATEGORY: HttpError = HttpError::new(
    422,
    "invalid_field",
    "category_id must be the id of one of your categories",
    false,
);

/// Submit a todo write once the backend confirmed `category` is the
/// writer's (`None`: no category, or one confirmed from the read model)
/// and, for a keyed write, claimed its `Idempotency-Key`.
pub async fn submit_checked(
    backend: &Backend,
    model: &Shared,
    cmd: TodoCommand,
    category: Option<u64>,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
    trace: &Trace,
) -> u16 {
    if let Some(category) = category {
        match backend.category(model, category).await {
            Ok(Some(c)) if c.owner == cmd.user => {}
            Ok(_) => return reply.error(out, &UNKNOWN_CATEGORY),
            Err(unavailable) => return reply.error(out, &unavailable.answer()),
        }
    }
    let result = backend.submit(cmd, Some(trace)).await;
    accepted(result, out, reply)
}

/// A `q=` search, rendered on the search thread.
pub async fn search(
    reads: &Reads,
    query: ListQuery,
    key: Box<[u8]>,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> u16 {
    let public = !query.mine;
    let Some(rendered) = reads.search.page(query).await else {
        return reply.error(out, &HttpError::unavailable("search stopped", 1));
    };
    let page = cache_page(reads, key, rendered, public);
    // The request's If-None-Match was checked against the cache; a search
    // answers the page in full.
    reply.with_headers(out, 200, &page.headers, &[&page.body]);
    200
}

/// The fields of a write's JSON body (the media type already checked).
pub fn parse_body(body: &[u8]) -> Result<Fields, HttpError> {
    super::json_object(body, "a todo")
}

/// Answer a finished write: 202 `{"command_id","todo_id"}` once it is
/// durable, the backend's error otherwise.
pub fn accepted(result: Result<(u64, u64), HttpError>, out: &mut Vec<u8>, reply: Reply<'_>) -> u16 {
    match result {
        Ok((command_id, todo_id)) => {
            let mut body = Vec::with_capacity(64);
            body.extend_from_slice(b"{\"command_id\":");
            body.extend_from_slice(itoa::Buffer::new().format(command_id).as_bytes());
            body.extend_from_slice(b",\"todo_id\":");
            body.extend_from_slice(itoa::Buffer::new().format(todo_id).as_bytes());
            body.push(b'}');
            let mut location = Vec::with_capacity(48);
            location.extend_from_slice(b"\r\nLocation: /commands/");
            location.extend_from_slice(itoa::Buffer::new().format(command_id).as_bytes());
            reply.with_headers(out, 202, &location, &[&body]);
            202
        }
        Err(e) => reply.error(out, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::hot_limit;

    #[test]
    fn hot_path_limits() {
        assert_eq!(hot_limit("", 20), Some(20));
        assert_eq!(hot_limit("limit=1", 20), Some(1));
        assert_eq!(hot_limit("limit=1000", 20), Some(1000));
        // Out of range: still the hot path's, which answers 400.
        assert_eq!(hot_limit("limit=0", 20), Some(0));
        assert_eq!(hot_limit("limit=9999", 20), Some(9999));
        // Anything else is a query (which checks every parameter).
        for other in [
            "x=1",
            "a=b&limit=1000",
            "limit=1&sort=title",
            "limit=",
            "limit=-1",
            "limit=1e3",
            "limit=99999",
            "limit=%31",
        ] {
            assert_eq!(hot_limit(other, 20), None, "{other}");
        }
    }
}
