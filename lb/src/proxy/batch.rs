//! Reading a client's input into a batch: parse EVERY complete request
//! (todo_http::http1::parse, the server's parser), answer here those a
//! `[[limit]]` refuses (429 with RateLimit fields), and rewrite each other
//! into the one forward buffer, with what it needs on the way: its hash key
//! (`--balance hash`), its cache probe (`--cache on`), whether it may be sent
//! twice.
//!
//! ```text
//! input:  GET /a ...\r\n\r\n POST /b ...\r\n\r\nhi GET /c ...(partial)
//! fwd:    GET /a ... X-Forwarded-For X-Request-Id \r\n\r\n POST /b ... \r\n\r\nhi
//! items:  [fwd 0..n, idempotent]  [fwd n..m, not]        (Cut: used = up to /c)
//! ```
//!
//! A batch ends at the input's end or a partial request (read again), a
//! request that asks to close, an error (answered last, then the connection
//! closes), or [`MAX_BATCH`] requests. No I/O here: the connection loop
//! (`conn.rs`) reads, `forward.rs` sends.

use std::net::SocketAddr;

use todo_http::http1::{self, Method, Parsed};
use todo_http::response::{self, Persist};
use todo_http::{DateCache, HttpError};

use crate::cache::{self, Probe};
use crate::config::HashKey;
use crate::failure::Failure;
use crate::ring;
use crate::route_limits::RouteLimits;

use super::retry;
use super::state::{Reading, RequestIds};
use super::READ_CHUNK;

/// Most requests forwarded as one batch.
pub const MAX_BATCH: usize = 1024;

static ROUTE_LIMITED: HttpError = HttpError::new(
    429,
    "rate_limited",
    "too many requests to this route from this user or client; see RateLimit and Retry-After",
    false,
);

/// A request of the batch: where its forwarded bytes are, and how it may be
/// treated when its upstream fails. Kept small (48 bytes: offsets as u32; a
/// batch is at most a few MiB): a batch of 80 is walked several times.
pub struct Item {
    /// Its forwarded bytes, `fwd[start..end]`; when `local`, its answer,
    /// `local[start..end]` of the batch.
    pub start: u32,
    pub end: u32,
    /// Answered here, not forwarded (a 429 of a `[[limit]]`).
    pub local: bool,
    pub idempotent: bool,
    pub head: bool,
    /// Written to an upstream that failed this way, and not idempotent:
    /// never sent again, answered by the failure.
    pub poisoned: Option<Failure>,
    /// The client asked to close after this one (`Connection: close`).
    pub closes: bool,
    /// `--balance hash`: the request's key (0 under other policies).
    pub key: u64,
    /// `--cache on` and a request the cache may answer; its head is
    /// `input[span.0..span.1]`.
    pub cache: Option<Probe>,
    pub span: (u32, u32),
}

const _: () = assert!(std::mem::size_of::<Item>() <= 48);

impl Item {
    /// Its head in the client's bytes.
    #[inline]
    pub fn head_in<'i>(&self, input: &'i [u8]) -> &'i [u8] {
        &input[self.span.0 as usize..self.span.1 as usize]
    }

    /// It was written to an upstream that failed with `failure` before
    /// answering it: unless it may be sent again ([`retry::may_resend`]),
    /// it is answered by that failure. The first such failure stays.
    #[inline]
    pub fn failed(&mut self, failure: Failure) {
        if !retry::may_resend(failure, self.idempotent) {
            self.poisoned.get_or_insert(failure);
        }
    }

    /// The balancer's own answer to it: `err`, without a body when it was a
    /// HEAD (RFC 9110 §9.3.2), so the next response on the connection is
    /// read where it starts; the connection stays open.
    pub fn answer(&self, out: &mut Vec<u8>, err: &HttpError, date: &DateCache) {
        response::append_error_to(out, err, date, Persist::KeepAlive, self.head);
    }
}

/// A batch's requests, in buffers the connection keeps from one batch to
/// the next.
pub struct Batch {
    pub items: Vec<Item>,
    /// The forwarded requests' bytes.
    pub fwd: Vec<u8>,
    /// The answers made here (`[[limit]]` 429s).
    pub local: Vec<u8>,
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            items: Vec::new(),
            fwd: Vec::with_capacity(READ_CHUNK),
            local: Vec::new(),
        }
    }
}

/// Where a batch's parse stopped.
#[derive(Debug)]
pub struct Cut {
    /// Input bytes its requests took (what follows stays for the next read).
    pub used: usize,
    /// A request that could not be parsed: answered after the batch, and
    /// the connection closes (what follows cannot be framed).
    pub ending: Option<HttpError>,
    /// Its last request asked to close the connection.
    pub closes: bool,
    /// The request that follows asked for `100 Continue` before its body
    /// and has not had it: send it before the batch's answers.
    pub send_continue: bool,
}

/// A connection's reading of its requests into batches: what is fixed for
/// the connection, and what it remembers from one batch to the next.
pub struct Reader<'c> {
    reading: &'c Reading,
    ids: &'c RequestIds,
    /// The `Date` of a `[[limit]]`'s 429.
    date: &'c DateCache,
    /// `--cache on`: a request the cache may answer gets its probe.
    cache: bool,
    peer: SocketAddr,
    /// `X-Forwarded-For: <peer>\r\n`, made once per connection.
    xff: Vec<u8>,
    /// A `100 Continue` went out for the request not yet complete.
    sent_continue: bool,
    /// `--hash-key jwt-sub`: the connection's last bearer token and its
    /// key (a client sends the same token request after request).
    last_token: Option<(Vec<u8>, u64)>,
    /// `per = "user"` limits: the connection's last token and its verified
    /// subject's key (its expiry is checked when it is first seen).
    last_user: Option<(Vec<u8>, Option<u64>)>,
}

impl<'c> Reader<'c> {
    pub fn new(
        reading: &'c Reading,
        ids: &'c RequestIds,
        date: &'c DateCache,
        cache: bool,
        peer: SocketAddr,
    ) -> Self {
        Reader {
            reading,
            ids,
            date,
            cache,
            peer,
            xff: format!("X-Forwarded-For: {}\r\n", peer.ip()).into_bytes(),
            sent_continue: false,
            last_token: None,
            last_user: None,
        }
    }

    /// Parse every complete request at the start of `input` into `batch`
    /// (emptied first), checking each against `routes`, the `[[limit]]`
    /// rules in force.
    pub fn parse(&mut self, input: &[u8], routes: Option<&RouteLimits>, batch: &mut Batch) -> Cut {
        batch.fwd.clear();
        batch.items.clear();
        batch.local.clear();
        let mut cut = Cut {
            used: 0,
            ending: None,
            closes: false,
            send_continue: false,
        };
        while batch.items.len() < MAX_BATCH {
            match http1::parse(&input[cut.used..], &self.reading.limits) {
                Ok(Parsed::Complete(req, used)) => {
                    let item = match self.refused(&req, routes, &mut batch.local) {
                        Some(item) => item,
                        None => self.rewrite(&req, input, cut.used, used, &mut batch.fwd),
                    };
                    batch.items.push(item);
                    cut.used += used;
                    self.sent_continue = false;
                    if !req.keep_alive {
                        cut.closes = true;
                        break;
                    }
                }
                Ok(Parsed::Partial { expect_continue }) => {
                    if expect_continue && !self.sent_continue {
                        cut.send_continue = true;
                        self.sent_continue = true;
                    }
                    break;
                }
                Err(err) => {
                    cut.ending = Some(err);
                    break;
                }
            }
        }
        cut
    }

    /// When a `[[limit]]` refuses `req`: its 429, appended to `local`.
    fn refused(
        &mut self,
        req: &http1::Request<'_>,
        routes: Option<&RouteLimits>,
        local: &mut Vec<u8>,
    ) -> Option<Item> {
        let limits = routes?;
        let last_user = &mut self.last_user;
        let refusal = limits.check(req.method, req.path, self.peer.ip(), &mut |l| {
            verified_user(l, req.authorization, last_user)
        })?;
        let from = local.len();
        let mut extra = Vec::new();
        limits.refusal_headers(refusal, &mut extra);
        let head = req.method == Method::Head;
        response::append_error_with(
            local,
            &ROUTE_LIMITED,
            self.date,
            if req.keep_alive {
                Persist::KeepAlive
            } else {
                Persist::Close
            },
            head,
            &extra,
        );
        Some(Item {
            key: 0,
            start: from as u32,
            end: local.len() as u32,
            local: true,
            idempotent: true,
            head,
            poisoned: None,
            closes: !req.keep_alive,
            cache: None,
            span: (0, 0),
        })
    }

    /// Append `req` (`used` bytes of `input` from `at`) to `fwd` with our
    /// fields: the head without its blank line, `X-Forwarded-For`,
    /// `X-Request-Id` unless the client sent one, the blank line, the body
    /// as it came (chunked stays chunked).
    fn rewrite(
        &mut self,
        req: &http1::Request<'_>,
        input: &[u8],
        at: usize,
        used: usize,
        fwd: &mut Vec<u8>,
    ) -> Item {
        let start = fwd.len();
        let raw = &input[at..at + used];
        let head = &raw[..req.head_len];
        let cut = if head.ends_with(b"\r\n\r\n") { 2 } else { 1 };
        fwd.extend_from_slice(&head[..head.len() - cut]);
        fwd.extend_from_slice(&self.xff);
        if req.request_id.is_none() {
            self.ids.append(fwd);
        }
        fwd.extend_from_slice(b"\r\n");
        fwd.extend_from_slice(&raw[req.head_len..]);
        let key = match &self.reading.hash_key {
            Some(how) => hash_key(how, req, head, self.peer, &mut self.last_token),
            None => 0,
        };
        Item {
            key,
            start: start as u32,
            end: fwd.len() as u32,
            idempotent: retry::idempotent(req.method),
            head: req.method == Method::Head,
            poisoned: None,
            closes: !req.keep_alive,
            local: false,
            cache: if self.cache {
                cache::probe(
                    req.method == Method::Get,
                    req.authorization.is_some(),
                    target_of(head),
                    head,
                )
            } else {
                None
            },
            span: (at as u32, (at + req.head_len) as u32),
        }
    }
}

/// `--balance hash`: the key of a request, by `--hash-key`; the client's
/// address when the request does not carry it. `last_token` is the
/// connection's last bearer token and its key: a client sends the same token
/// request after request, so it is decoded once, not per request.
fn hash_key(
    how: &HashKey,
    req: &http1::Request<'_>,
    head: &[u8],
    peer: SocketAddr,
    last_token: &mut Option<(Vec<u8>, u64)>,
) -> u64 {
    let by_client = || ring::ip_key(peer.ip());
    match how {
        HashKey::ClientIp => by_client(),
        HashKey::JwtSub => {
            let Some(token) = req.authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
                return by_client();
            };
            if let Some((last, key)) = last_token.as_ref() {
                if last.as_slice() == token {
                    return *key;
                }
            }
            let key = jsonwebtoken::dangerous::insecure_decode::<Subject>(token)
                .map_or_else(|_| by_client(), |t| ring::key(t.claims.sub.as_bytes()));
            *last_token = Some((token.to_vec(), key));
            key
        }
        HashKey::Header(name) => {
            cache::header(head, name.as_bytes()).map_or_else(by_client, ring::key)
        }
    }
}

/// The claim `--hash-key jwt-sub` reads.
#[derive(serde::Deserialize)]
struct Subject {
    sub: String,
}

/// The request target (path and query) of a request head.
fn target_of(head: &[u8]) -> &[u8] {
    let mut parts = head.splitn(3, |&b| b == b' ');
    parts.next();
    parts.next().unwrap_or(b"")
}

/// The key of the request's user for a `per = "user"` limit: the bearer
/// token's subject when it verifies; `last` remembers the connection's last
/// token and its answer.
fn verified_user(
    limits: &RouteLimits,
    authorization: Option<&[u8]>,
    last: &mut Option<(Vec<u8>, Option<u64>)>,
) -> Option<u64> {
    let token = authorization?.strip_prefix(b"Bearer ")?;
    if let Some((seen, key)) = last.as_ref() {
        if seen.as_slice() == token {
            return *key;
        }
    }
    let key = limits.verified_subject(token);
    *last = Some((token.to_vec(), key));
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use todo_http::http1::RequestLimits;

    const PEER: &str = "10.0.0.7:5555";
    const GET: &str = "GET /todos HTTP/1.1\r\nHost: x\r\n\r\n";

    fn reading(hash_key: Option<HashKey>) -> Reading {
        Reading {
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            limits: RequestLimits::default(),
            read_max: 1 << 20,
            hash_key,
        }
    }

    /// `input` parsed as one batch: by a fresh connection from [`PEER`] on
    /// core 0 of a process whose id prefix is 1.
    fn parse(input: &str, hash_key: Option<HashKey>, cache: bool) -> (Batch, Cut) {
        let (reading, ids, date) = (
            reading(hash_key),
            RequestIds::new(1, 0),
            DateCache::default(),
        );
        let mut reader = Reader::new(&reading, &ids, &date, cache, PEER.parse().unwrap());
        let mut batch = Batch::new();
        let cut = reader.parse(input.as_bytes(), None, &mut batch);
        (batch, cut)
    }

    fn forwarded(batch: &Batch, i: usize) -> &str {
        let item = &batch.items[i];
        std::str::from_utf8(&batch.fwd[item.start as usize..item.end as usize]).unwrap()
    }

    fn item(idempotent: bool) -> Item {
        Item {
            start: 0,
            end: 0,
            local: false,
            idempotent,
            head: false,
            poisoned: None,
            closes: false,
            key: 0,
            cache: None,
            span: (0, 0),
        }
    }

    #[test]
    fn every_complete_request_is_rewritten_and_a_partial_one_waits() {
        let first = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let second = "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        let input = format!("{first}{second}GET /c HTTP/1.1\r\nHo");
        let (batch, cut) = parse(&input, None, false);
        assert_eq!(batch.items.len(), 2);
        assert_eq!(
            cut.used,
            first.len() + second.len(),
            "the partial one stays"
        );
        assert!(cut.ending.is_none() && !cut.closes && !cut.send_continue);
        assert_eq!(
            forwarded(&batch, 0),
            "GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.7\r\n\
             X-Request-Id: 000000010000000000000000\r\n\r\n"
        );
        assert_eq!(
            forwarded(&batch, 1),
            "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Forwarded-For: 10.0.0.7\r\n\
             X-Request-Id: 000000010000000000000001\r\n\r\nhi",
            "the body follows the blank line as it came"
        );
        assert!(batch.items[0].idempotent && !batch.items[1].idempotent);
        assert_eq!(
            batch.items[1].head_in(input.as_bytes()),
            &second.as_bytes()[..second.len() - 2]
        );
        assert!(batch
            .items
            .iter()
            .all(|i| !i.local && i.key == 0 && i.cache.is_none()));
    }

    #[test]
    fn a_request_id_the_client_sent_is_kept() {
        let (batch, _) = parse(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\n\r\n",
            None,
            false,
        );
        assert_eq!(
            forwarded(&batch, 0),
            "GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\nX-Forwarded-For: 10.0.0.7\r\n\r\n"
        );
    }

    #[test]
    fn connection_close_ends_the_batch_at_its_request() {
        let close = "GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let (batch, cut) = parse(&format!("{close}{GET}"), None, false);
        assert_eq!(batch.items.len(), 1);
        assert!(cut.closes && batch.items[0].closes);
        assert_eq!(cut.used, close.len());
    }

    #[test]
    fn a_request_that_cannot_be_parsed_ends_the_batch_after_the_good_ones() {
        let (batch, cut) = parse(&format!("{GET}{GET}BAD\r\n\r\n{GET}"), None, false);
        assert_eq!(batch.items.len(), 2);
        assert_eq!(cut.used, 2 * GET.len());
        assert_eq!(cut.ending.map(|e| e.status), Some(400));
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_requests() {
        let (batch, cut) = parse(&GET.repeat(MAX_BATCH + 7), None, false);
        assert_eq!(batch.items.len(), MAX_BATCH);
        assert_eq!(
            cut.used,
            MAX_BATCH * GET.len(),
            "the rest waits for the next turn"
        );
        assert!(cut.ending.is_none() && !cut.closes);
    }

    #[test]
    fn continue_is_asked_for_once_per_request_that_waits_for_it() {
        let head =
            "POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
        let (reading, ids, date) = (reading(None), RequestIds::new(1, 0), DateCache::default());
        let mut reader = Reader::new(&reading, &ids, &date, false, PEER.parse().unwrap());
        let mut batch = Batch::new();
        let cut = reader.parse(head.as_bytes(), None, &mut batch);
        assert!(cut.send_continue && batch.items.is_empty() && cut.used == 0);
        // More of the same request: the 100 went out already.
        let cut = reader.parse(head.as_bytes(), None, &mut batch);
        assert!(!cut.send_continue);
        // It completes, and the next one asks again.
        let cut = reader.parse(format!("{head}hi{head}").as_bytes(), None, &mut batch);
        assert_eq!(batch.items.len(), 1);
        assert!(cut.send_continue);
    }

    #[test]
    fn hash_keys_follow_hash_key_and_fall_back_to_the_client() {
        let client = ring::ip_key(PEER.parse::<SocketAddr>().unwrap().ip());
        let key = |input: &str, how: Option<HashKey>| parse(input, how, false).0.items[0].key;
        assert_eq!(key(GET, None), 0, "other policies key nothing");
        assert_eq!(key(GET, Some(HashKey::ClientIp)), client);

        let user = Some(HashKey::Header("x-user".into()));
        assert_eq!(
            key(
                "GET / HTTP/1.1\r\nHost: x\r\nX-User: ann\r\n\r\n",
                user.clone()
            ),
            ring::key(b"ann")
        );
        assert_eq!(key(GET, user), client);

        #[derive(serde::Serialize)]
        struct Claims {
            sub: &'static str,
        }
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &Claims { sub: "bob" },
            &jsonwebtoken::EncodingKey::from_secret(b"any"),
        )
        .unwrap();
        let jwt = Some(HashKey::JwtSub);
        let bearer = format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
        assert_eq!(key(&bearer, jwt.clone()), ring::key(b"bob"));
        let garbage = "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not.a.token\r\n\r\n";
        assert_eq!(key(garbage, jwt.clone()), client);
        assert_eq!(key(GET, jwt), client);
    }

    #[test]
    fn only_public_gets_get_a_cache_probe_and_only_with_the_cache_on() {
        let probe = |input: &str, cache: bool| parse(input, None, cache).0.items[0].cache;
        assert_eq!(
            probe(GET, true).map(|p| p.target),
            Some(ring::key(b"/todos"))
        );
        assert!(probe(GET, false).is_none());
        let authorized = "GET /todos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\r\n";
        assert!(probe(authorized, true).is_none());
        assert!(probe(
            "POST /todos HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            true
        )
        .is_none());
    }

    #[test]
    fn a_limit_refusal_is_answered_here_in_its_turn() {
        let path = std::env::temp_dir().join(format!("todo-lb-batch-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[[limit]]\nroute = \"POST /todos\"\nper = \"client\"\nrate = 1\nburst = 1\n",
        )
        .unwrap();
        let shared = crate::route_limits::SharedLimits::load(Some(path.clone()), None).unwrap();
        std::fs::remove_file(&path).unwrap();
        let routes = shared.current();

        let post = "POST /todos HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        let input = format!("{post}{post}{GET}");
        let (reading, ids, date) = (reading(None), RequestIds::new(1, 0), DateCache::default());
        let mut reader = Reader::new(&reading, &ids, &date, false, PEER.parse().unwrap());
        let mut batch = Batch::new();
        let cut = reader.parse(input.as_bytes(), Some(&routes), &mut batch);

        assert_eq!(cut.used, input.len());
        let local: Vec<bool> = batch.items.iter().map(|i| i.local).collect();
        assert_eq!(
            local,
            [false, true, false],
            "the second POST is over the burst"
        );
        let refused = &batch.items[1];
        let answer = &batch.local[refused.start as usize..refused.end as usize];
        let text = std::str::from_utf8(answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
        assert!(text.contains("RateLimit-Policy: \"POST /todos\""), "{text}");
        // Only the admitted ones are forwarded: a POST and the GET.
        assert_eq!(batch.fwd.windows(4).filter(|w| w == b"POST").count(), 1);
        assert_eq!(batch.fwd.windows(3).filter(|w| w == b"GET").count(), 1);
    }

    #[test]
    fn a_failure_poisons_only_what_may_not_be_sent_again() {
        let mut post = item(false);
        post.failed(Failure::Connect);
        assert_eq!(post.poisoned, None, "never written: it may go elsewhere");
        post.failed(Failure::Broken);
        post.failed(Failure::TimedOut);
        assert_eq!(
            post.poisoned,
            Some(Failure::Broken),
            "the first failure answers"
        );
        let mut get = item(true);
        get.failed(Failure::TimedOut);
        assert_eq!(get.poisoned, None);
    }

    #[test]
    fn the_balancers_answer_to_a_head_has_no_body() {
        let date = DateCache::default();
        let err = HttpError::new(502, "bad_gateway", "gone", false);
        let (mut get, mut head) = (Vec::new(), Vec::new());
        item(true).answer(&mut get, &err, &date);
        Item {
            head: true,
            ..item(true)
        }
        .answer(&mut head, &err, &date);
        assert!(get.starts_with(b"HTTP/1.1 502 ") && head.starts_with(b"HTTP/1.1 502 "));
        assert!(head.ends_with(b"\r\n\r\n"), "no body after the head");
        assert!(get.len() > head.len());
        assert!(get.windows(11).any(|w| w == b"bad_gateway"));
    }
}
