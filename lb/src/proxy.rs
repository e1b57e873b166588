//! todo-lb's connection loop: one task per client connection.
//!
//! ```text
//! read from the client
//!   -> parse EVERY complete request (todo_http::http1::parse, the server's parser)
//!   -> admit them against the client's rate; rewrite each into one
//!      forward buffer (+ X-Forwarded-For, + X-Request-Id unless sent)
//!   -> pick an upstream (`--balance`, p2c by default), take a pooled connection,
//!      ONE write of the whole batch, read back as many responses
//!   -> ONE write of the responses to the client, in request order
//! ```
//!
//! When an upstream fails before answering, the unanswered requests go to
//! another upstream if they may be sent again: idempotent ones (RFC 9110
//! §9.2.2), or any that were never written. A request that was written and
//! cannot be sent again gets 502 (504 on timeout). An upstream that ends its
//! connection with `Connection: close` did not read what followed, so that
//! is sent elsewhere too: this is what makes an upstream's rolling restart
//! invisible through the balancer.
//!
//! Counted on the way (`metrics.rs`, this core's slots, no lock): client
//! requests per batch; per upstream, requests written, failures by kind,
//! and the time from writing a batch to each response, taken once per read.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use todo_http::http1::{self, Method, Parsed, ParsedResponse};
use todo_http::response::{self, Persist};
use todo_http::{DateCache, HttpError};

use crate::cache::{self, EdgeCache, Lead, Lookup};
use crate::client_io::ClientIo;
use crate::client_limits::{ClientConn, ClientLimits};
use crate::config::{Balance, HashKey, LbConfig, Switch};
use crate::failure::Failure;
use crate::metrics::{CacheResult, CoreMetrics, Handshake};
use crate::pool::{Member, Pool, PoolConfig};
use crate::ring;
use crate::route_limits::{CoreLimits, RouteLimits};
use crate::tls::{self, CoreTls, TlsStream};
use crate::upstream::UpstreamSet;

/// Read buffer growth step, bytes.
const READ_CHUNK: usize = 16 * 1024;
/// Most requests forwarded as one batch.
const MAX_BATCH: usize = 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

// The balancer's own answers.
static BAD_GATEWAY: HttpError = HttpError::new(
    502,
    "bad_gateway",
    "the upstream failed before answering and the request cannot be sent again safely",
    false,
);
static GATEWAY_TIMEOUT: HttpError = HttpError::new(
    504,
    "gateway_timeout",
    "the upstream did not answer in time",
    false,
);
static NO_UPSTREAM: HttpError = HttpError::new(
    503,
    "no_upstream",
    "no healthy upstream is available",
    false,
)
.with_retry_after(1);
static RATE_LIMITED: HttpError = HttpError::new(
    429,
    "rate_limited",
    "too many requests from this client",
    false,
)
.with_retry_after(1);
static ROUTE_LIMITED: HttpError = HttpError::new(
    429,
    "rate_limited",
    "too many requests to this route from this user or client; see RateLimit and Retry-After",
    false,
);
static TLS_REQUIRED: HttpError = HttpError::new(
    400,
    "tls_required",
    "this port speaks TLS: use https:// (plain HTTP is served on --listen)",
    true,
);
static TOO_MANY_CONNECTIONS: HttpError = HttpError::new(
    429,
    "too_many_connections",
    "too many connections from this client",
    true,
)
.with_retry_after(1);

/// One core's state, `!Send`, in one place.
pub struct LbCore {
    pub index: usize,
    pub config: Arc<LbConfig>,
    pub pool_config: PoolConfig,
    pub set: Arc<UpstreamSet>,
    pub client_limits: Arc<ClientLimits>,
    pub pool: Pool,
    /// `--config`'s `[[limit]]` rules (`None` in tests that build a core
    /// without them).
    pub route_limits: Option<CoreLimits>,
    /// `--cache on`: this core's edge cache.
    pub cache: Option<EdgeCache>,
    pub date: DateCache,
    pub draining: Cell<bool>,
    pub open: Cell<usize>,
    /// Every core's client totals; this core writes only its own (the
    /// admin listener reads them all).
    pub all_metrics: Arc<[CoreMetrics]>,
    /// Client sockets open on this core, so a drain can wake the ones
    /// waiting for a request (see [`LbCore::drain`]).
    clients: RefCell<HashSet<RawFd>>,
    /// Request ids: a per-process prefix, the core, a counter.
    id_prefix: u32,
    ids: Cell<u64>,
}

impl LbCore {
    pub fn new(
        index: usize,
        config: Arc<LbConfig>,
        set: Arc<UpstreamSet>,
        client_limits: Arc<ClientLimits>,
        all_metrics: Arc<[CoreMetrics]>,
        id_prefix: u32,
    ) -> Self {
        let pool_config = PoolConfig {
            max_idle: config.pool_idle,
            idle_timeout: config.pool_idle_timeout,
            connect_timeout: config.connect_timeout,
            eject_after: config.eject_after.max(1),
            eject_for: config.eject_for,
        };
        LbCore {
            index,
            pool: Pool::new(&set, index, config.balance),
            route_limits: None,
            cache: (config.cache == Switch::On)
                .then(|| EdgeCache::new(config.cache_bytes / config.core_count().max(1))),
            config,
            pool_config,
            set,
            client_limits,
            date: DateCache::default(),
            draining: Cell::new(false),
            open: Cell::new(0),
            all_metrics,
            clients: RefCell::new(HashSet::new()),
            id_prefix,
            ids: Cell::new(0),
        }
    }

    /// This core's client totals.
    #[inline]
    pub fn metrics(&self) -> &CoreMetrics {
        &self.all_metrics[self.index]
    }

    /// Start draining: every client connection closes after the batch it is
    /// in; those waiting for a request are shut for reading, so their read
    /// ends at once (what the client sent and we did not read gets no
    /// answer, and a client sends it again on a new connection).
    pub fn drain(&self) {
        self.draining.set(true);
        for &fd in self.clients.borrow().iter() {
            // SAFETY: `fd` belongs to a live client connection on this core:
            // it is removed before the connection's socket is closed.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }

    /// Append `X-Request-Id: <prefix><core><counter>\r\n` (hex, 24 digits).
    /// On every forwarded request: the line is made on the stack and
    /// appended in one copy (a push per digit cost ~200 instructions a
    /// request, callgrind).
    #[inline]
    fn append_request_id(&self, out: &mut Vec<u8>) {
        let n = self.ids.get();
        self.ids.set(n + 1);
        const HEAD: &[u8] = b"X-Request-Id: ";
        let mut line = [0u8; HEAD.len() + 24 + 2];
        line[..HEAD.len()].copy_from_slice(HEAD);
        let digits = &mut line[HEAD.len()..HEAD.len() + 24];
        hex(&mut digits[..8], u64::from(self.id_prefix));
        hex(&mut digits[8..12], self.index as u64);
        hex(&mut digits[12..], n);
        line[HEAD.len() + 24..].copy_from_slice(b"\r\n");
        out.extend_from_slice(&line);
    }
}

/// `v` as lowercase hex filling `into` (its low `into.len()` digits).
#[inline]
fn hex(into: &mut [u8], v: u64) {
    let len = into.len();
    for (i, d) in into.iter_mut().enumerate() {
        *d = b"0123456789abcdef"[((v >> ((len - 1 - i) * 4)) & 0xf) as usize];
    }
}

/// A request of the batch: where its forwarded bytes are, and how it may be
/// treated when its upstream fails. Kept small (48 bytes: offsets as u32; a
/// batch is at most a few MiB): a batch of 80 is walked several times.
struct Item {
    /// Its forwarded bytes, `fwd[start..end]`; when `local`, its answer,
    /// `local[start..end]` of the batch.
    start: u32,
    end: u32,
    /// Answered here, not forwarded (a 429 of a `[[limit]]`).
    local: bool,
    idempotent: bool,
    head: bool,
    /// Written to an upstream that failed this way, and not idempotent:
    /// never sent again, answered by the failure.
    poisoned: Option<Failure>,
    /// The client asked to close after this one (`Connection: close`).
    closes: bool,
    /// `--balance hash`: the request's key (0 under other policies).
    key: u64,
    /// `--cache on` and a request the cache may answer; its head is
    /// `input[span.0..span.1]`.
    cache: Option<cache::Probe>,
    span: (u32, u32),
}

const _: () = assert!(std::mem::size_of::<Item>() <= 48);

impl Item {
    /// Its head in the client's bytes.
    fn head_in<'i>(&self, input: &'i [u8]) -> &'i [u8] {
        &input[self.span.0 as usize..self.span.1 as usize]
    }
}

/// Serve one plain client connection until it closes.
pub async fn serve(core: Rc<LbCore>, stream: TcpStream, peer: SocketAddr) {
    let fd = stream.as_raw_fd();
    serve_on(&core, stream, fd, peer).await;
}

/// Serve one connection accepted on `--listen-tls`: refuse plain HTTP with a
/// 400 that says why, else the handshake (both within `--header-timeout`),
/// then the same loop as plain.
pub async fn serve_tls(core: Rc<LbCore>, tls: &CoreTls, stream: TcpStream, peer: SocketAddr) {
    let fd = stream.as_raw_fd();
    let within = core.config.header_timeout;
    match monoio::time::timeout(within, first_byte(&stream)).await {
        Ok(Some(tls::HANDSHAKE_RECORD)) => {}
        Ok(Some(_)) => {
            core.metrics().handshake(Handshake::PlainHttp);
            let mut stream = stream;
            let mut out = Vec::new();
            response::append_error(&mut out, &TLS_REQUIRED, &core.date, Persist::Close);
            let _ = stream.write_from(&mut out).await;
            stream.close().await;
            return;
        }
        Ok(None) | Err(_) => {
            core.metrics().handshake(Handshake::Failed);
            return;
        }
    }
    match monoio::time::timeout(within, TlsStream::accept(stream, tls.config(), tls.spare())).await
    {
        Ok(Ok(stream)) => {
            core.metrics().handshake(Handshake::Ok);
            serve_on(&core, stream, fd, peer).await;
        }
        Ok(Err(_)) | Err(_) => core.metrics().handshake(Handshake::Failed),
    }
}

/// The first byte the client sent, left in the socket; `None` at its end.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    loop {
        stream.readable(false).await.ok()?;
        let mut byte = 0u8;
        // SAFETY: `stream` owns the descriptor for this call, and `byte` is a
        // valid one-byte buffer that outlives it. MSG_PEEK leaves the byte
        // for the TLS library to read.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            1 => return Some(byte),
            0 => return None,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => continue,
            _ => return None,
        }
    }
}

/// Serve a connection (plain or TLS; `fd` is its socket) until it closes.
async fn serve_on<S: ClientIo>(core: &LbCore, mut stream: S, fd: RawFd, peer: SocketAddr) {
    let Some(client) = core.client_limits.connect(peer.ip()) else {
        let mut out = Vec::new();
        response::append_error(&mut out, &TOO_MANY_CONNECTIONS, &core.date, Persist::Close);
        let _ = stream.write_from(&mut out).await;
        stream.close().await;
        return;
    };
    core.clients.borrow_mut().insert(fd);
    let linger = matches!(proxy(core, &mut stream, peer, &client).await, Ok(true));
    core.clients.borrow_mut().remove(&fd);
    if linger {
        stream.close().await;
    }
}

/// The loop; `Ok(true)` when the connection should linger before closing.
async fn proxy<S: ClientIo>(
    core: &LbCore,
    stream: &mut S,
    peer: SocketAddr,
    client: &ClientConn,
) -> io::Result<bool> {
    let config = &core.config;
    let request_limits = http1::RequestLimits {
        max_body: config.max_body,
        ..http1::RequestLimits::default()
    };
    let read_max = request_limits.max_head + 2 * request_limits.max_body + READ_CHUNK;
    let xff = format!("X-Forwarded-For: {}\r\n", peer.ip()).into_bytes();
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut fwd: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // Large enough for a depth-80 batch of responses in one read.
    let mut upbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut items: Vec<Item> = Vec::new();
    let mut started: Option<Instant> = None;
    let mut sent_continue = false;
    let mut last_token: Option<(Vec<u8>, u64)> = None;
    // `[[limit]]` answers of a batch, and the connection's last verified
    // token (a client sends the same one request after request; its expiry
    // is checked when it is first seen).
    let mut local: Vec<u8> = Vec::new();
    let mut last_user: Option<(Vec<u8>, Option<u64>)> = None;
    loop {
        if core.draining.get() && input.is_empty() {
            return Ok(false);
        }
        if input.capacity() - input.len() < READ_CHUNK / 4 {
            if input.len() >= read_max {
                core.metrics().requests(1);
                response::append_error(
                    &mut out,
                    &HttpError::PAYLOAD_TOO_LARGE,
                    &core.date,
                    Persist::Close,
                );
                stream.write_from(&mut out).await?;
                return Ok(true);
            }
            input.reserve(input.capacity().max(READ_CHUNK));
        }
        let wait = match started {
            None => config.idle_timeout,
            Some(t) => config.header_timeout.saturating_sub(t.elapsed()),
        };
        let res = match monoio::time::timeout(wait, stream.read_to(&mut input)).await {
            Ok(r) => r,
            Err(_) if started.is_some() => {
                core.metrics().requests(1);
                response::append_error(
                    &mut out,
                    &HttpError::HEADER_TIMEOUT,
                    &core.date,
                    Persist::Close,
                );
                stream.write_from(&mut out).await?;
                return Ok(false);
            }
            Err(_) => return Ok(false),
        };
        if res? == 0 {
            return Ok(false);
        }

        // Parse every complete request; rewrite each into `fwd`.
        fwd.clear();
        items.clear();
        local.clear();
        let route_limits = core
            .route_limits
            .as_ref()
            .map(CoreLimits::now)
            .filter(|l| !l.is_empty());
        let mut at = 0;
        let mut ending = None::<HttpError>;
        let mut last_closes = false;
        while items.len() < MAX_BATCH {
            match http1::parse(&input[at..], &request_limits) {
                Ok(Parsed::Complete(req, used)) => {
                    let refused = route_limits.as_ref().and_then(|limits| {
                        limits.check(req.method, req.path, peer.ip(), &mut |l| {
                            verified_user(l, req.authorization, &mut last_user)
                        })
                    });
                    if let (Some(refusal), Some(limits)) = (refused, &route_limits) {
                        let from = local.len();
                        let mut extra = Vec::new();
                        limits.refusal_headers(refusal, &mut extra);
                        response::append_error_with(
                            &mut local,
                            &ROUTE_LIMITED,
                            &core.date,
                            if req.keep_alive {
                                Persist::KeepAlive
                            } else {
                                Persist::Close
                            },
                            req.method == Method::Head,
                            &extra,
                        );
                        items.push(Item {
                            key: 0,
                            start: from as u32,
                            end: local.len() as u32,
                            local: true,
                            idempotent: true,
                            head: req.method == Method::Head,
                            poisoned: None,
                            closes: !req.keep_alive,
                            cache: None,
                            span: (0, 0),
                        });
                        at += used;
                        sent_continue = false;
                        if !req.keep_alive {
                            last_closes = true;
                            break;
                        }
                        continue;
                    }
                    let start = fwd.len();
                    let raw = &input[at..at + used];
                    let head = &raw[..req.head_len];
                    // The head without its blank line, our fields, the blank
                    // line, the body as it came (chunked stays chunked).
                    let cut = if head.ends_with(b"\r\n\r\n") { 2 } else { 1 };
                    fwd.extend_from_slice(&head[..head.len() - cut]);
                    fwd.extend_from_slice(&xff);
                    if req.request_id.is_none() {
                        core.append_request_id(&mut fwd);
                    }
                    fwd.extend_from_slice(b"\r\n");
                    fwd.extend_from_slice(&raw[req.head_len..]);
                    let key = match config.balance {
                        Balance::Hash => {
                            hash_key(&config.hash_key, &req, head, peer, &mut last_token)
                        }
                        _ => 0,
                    };
                    items.push(Item {
                        key,
                        start: start as u32,
                        end: fwd.len() as u32,
                        idempotent: matches!(
                            req.method,
                            Method::Get | Method::Head | Method::Put | Method::Delete
                        ),
                        head: req.method == Method::Head,
                        poisoned: None,
                        closes: !req.keep_alive,
                        local: false,
                        cache: core.cache.as_ref().and_then(|_| {
                            cache::probe(
                                req.method == Method::Get,
                                req.authorization.is_some(),
                                target_of(head),
                                head,
                            )
                        }),
                        span: (at as u32, (at + req.head_len) as u32),
                    });
                    at += used;
                    sent_continue = false;
                    if !req.keep_alive {
                        last_closes = true;
                        break;
                    }
                }
                Ok(Parsed::Partial { expect_continue }) => {
                    if expect_continue && !sent_continue {
                        out.extend_from_slice(CONTINUE);
                        sent_continue = true;
                    }
                    break;
                }
                Err(err) => {
                    ending = Some(err);
                    break;
                }
            }
        }

        core.metrics()
            .requests(items.len() + usize::from(ending.is_some()));
        let admitted = client.admit(items.len());
        if admitted > 0 {
            let batch = Batch {
                items: &mut items[..admitted],
                local: &local,
                input: &input,
            };
            forward(core, &mut fwd, batch, &mut upbuf, &mut out).await;
        }
        answer_all(core, &mut out, &RATE_LIMITED, &items[admitted..]);
        if let Some(err) = &ending {
            response::append_error(&mut out, err, &core.date, Persist::Close);
        }
        stream.write_from(&mut out).await?;
        if ending.is_some() || last_closes {
            return Ok(true);
        }
        input.drain(..at);
        started = match (input.is_empty(), items.is_empty(), started) {
            (true, _, _) => None,
            (false, false, _) | (false, true, None) => Some(Instant::now()),
            (false, true, Some(t)) => Some(t),
        };
        if core.draining.get() {
            // Every answer of this batch is out; what the client sends next
            // goes to a balancer that is staying.
            return Ok(false);
        }
    }
}

/// How one exchange with an upstream ended.
#[derive(Clone, Copy)]
enum End {
    /// Every request answered; the connection may be reused.
    Done,
    /// The upstream answered `answered` and said `Connection: close`: it did
    /// not read the rest, which may go elsewhere.
    Closed,
    /// The upstream failed; the unanswered requests go by [`may_resend`].
    Failed(Failure),
}

/// THE retry rule: a request that never reached the upstream may go to
/// another one; one that did may only if it is idempotent (RFC 9110
/// §9.2.2), since the upstream may have acted on it.
fn may_resend(failure: Failure, idempotent: bool) -> bool {
    failure == Failure::Connect || idempotent
}

/// THE answer for a request that will not be forwarded (again): 503 when
/// the upstream could not be reached (nothing was sent; the client may
/// retry), 504 after a time-out, 502 otherwise.
fn failure_answer(failure: Failure) -> &'static HttpError {
    match failure {
        Failure::Connect => &NO_UPSTREAM,
        Failure::TimedOut => &GATEWAY_TIMEOUT,
        Failure::Broken => &BAD_GATEWAY,
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

/// `X-Cache: MISS` after the status line of the response at `out[from..]`.
fn mark_miss(out: &mut Vec<u8>, from: usize) {
    // After the status line, past any empty lines before it.
    let status = from + (out.len() - from - cache::skip_empty_lines(&out[from..]).len());
    if let Some(eol) = out[status..].iter().position(|&b| b == b'\n') {
        let at = status + eol + 1;
        out.splice(at..at, b"X-Cache: MISS\r\n".iter().copied());
    }
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

/// The claim `--hash-key jwt-sub` reads.
#[derive(serde::Deserialize)]
struct Subject {
    sub: String,
}

/// A batch as `forward` takes it: the requests, the answers made here
/// (`local`), and the client's bytes they were parsed from (`input`).
struct Batch<'b> {
    items: &'b mut [Item],
    local: &'b [u8],
    input: &'b [u8],
}

/// Send the batch's requests (their bytes in `fwd`) and append their answers
/// to `out`, in order, retrying on other upstreams as the module doc says;
/// with `--cache on`, answering from the cache what it holds.
async fn forward(
    core: &LbCore,
    fwd: &mut Vec<u8>,
    batch: Batch<'_>,
    upbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let Batch {
        items,
        local,
        input,
    } = batch;
    let mut next = 0;
    let mut failed: Vec<SocketAddr> = Vec::new();
    let mut last: Option<Failure> = None;
    while next < items.len() {
        // Requests answered at the edge are answered in their turn.
        if items[next].local {
            let item = &items[next];
            out.extend_from_slice(&local[item.start as usize..item.end as usize]);
            next += 1;
            continue;
        }
        // Requests that must not be sent again are answered here, in turn.
        if let Some(failure) = items[next].poisoned {
            own_answer(core, out, failure_answer(failure), &items[next]);
            next += 1;
            continue;
        }
        // The cache: a hit is answered here; a key another request of this
        // core is fetching is waited for; a miss is fetched alone, so the
        // answer is held before the requests after it look.
        let mut lead: Option<Lead<'_>> = None;
        if let (Some(probe), Some(edge)) = (items[next].cache, &core.cache) {
            let head = items[next].head_in(input);
            loop {
                match edge.lookup(probe, head, &core.date, out) {
                    Lookup::Answered { not_modified } => {
                        core.metrics().cache(if not_modified {
                            CacheResult::NotModified
                        } else {
                            CacheResult::Hit
                        });
                        break;
                    }
                    Lookup::Wait(flight) => flight.wait().await,
                    Lookup::Pass => {
                        core.metrics().cache(CacheResult::Miss);
                        items[next].cache = None;
                        break;
                    }
                    Lookup::Fetch(fetch) => {
                        core.metrics().cache(CacheResult::Miss);
                        lead = Some(fetch);
                        break;
                    }
                }
            }
            if lead.is_none() && items[next].cache.is_some() {
                next += 1;
                continue;
            }
        }
        let key = items[next].key;
        // A run goes to one upstream: it ends before a request answered
        // here, or (hash) at the first request with another key; a cache
        // fetch goes alone.
        let upto = if lead.is_some() {
            next + 1
        } else {
            items[next + 1..]
                .iter()
                .position(|i| i.poisoned.is_some() || i.local || i.cache.is_some() || i.key != key)
                .map_or(items.len(), |p| next + 1 + p)
        };
        let Some(member) = core.pool.pick(&core.set, &failed, key) else {
            answer_rest(core, out, &items[next..], last);
            return;
        };
        let store = lead.as_ref().map(|l| (l, items[next].head_in(input)));
        let (answered, end) =
            exchange(core, &member, fwd, &items[next..upto], store, upbuf, out).await;
        drop(lead);
        next += answered;
        match end {
            End::Done | End::Closed => member.succeeded(),
            End::Failed(failure) => {
                last = Some(failure);
                member.stats().failed(failure);
                member.failed(&core.pool_config);
                failed.push(member.addr());
                for item in &mut items[next..upto] {
                    if !may_resend(failure, item.idempotent) {
                        item.poisoned.get_or_insert(failure);
                    }
                }
                if failed.len() > core.config.retries as usize {
                    answer_rest(core, out, &items[next..], last);
                    return;
                }
            }
        }
    }
}

/// Answer requests no upstream will take: each that was poisoned by its
/// failure, the others by the last failure, or 503 when no upstream was
/// healthy to begin with.
fn answer_rest(core: &LbCore, out: &mut Vec<u8>, items: &[Item], last: Option<Failure>) {
    for item in items {
        let err = item.poisoned.or(last).map_or(&NO_UPSTREAM, failure_answer);
        own_answer(core, out, err, item);
    }
}

/// Answer each of `items` with `err` (the connection stays open).
fn answer_all(core: &LbCore, out: &mut Vec<u8>, err: &HttpError, items: &[Item]) {
    for item in items {
        own_answer(core, out, err, item);
    }
}

/// The balancer's own answer to a request: an error, without a body when
/// the request was a HEAD (RFC 9110 §9.3.2), so the next response on the
/// connection is read where it starts.
fn own_answer(core: &LbCore, out: &mut Vec<u8>, err: &HttpError, item: &Item) {
    response::append_error_to(out, err, &core.date, Persist::KeepAlive, item.head);
}

/// One batch to one upstream: write it, read its answers into `out`.
/// Returns how many were answered and how it ended.
async fn exchange(
    core: &LbCore,
    member: &Member,
    fwd: &mut Vec<u8>,
    items: &[Item],
    store: Option<(&Lead<'_>, &[u8])>,
    upbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> (usize, End) {
    let pool = &core.pool_config;
    let mut conn = match member.checkout(pool).await {
        Ok(c) => c,
        Err(_) => {
            member.release(None, pool);
            return (0, End::Failed(Failure::Connect));
        }
    };
    let (start, end) = (items[0].start as usize, items[items.len() - 1].end as usize);
    // The upstream's time is counted from here: the write, its work, the
    // way back; the deadline too.
    let sent = Instant::now();
    let (res, slice) = conn.write_all(std::mem::take(fwd).slice(start..end)).await;
    *fwd = slice.into_inner();
    if res.is_err() {
        member.release(None, pool);
        return (0, End::Failed(Failure::Broken));
    }
    let stats = member.stats();
    stats.sent(items.len());
    upbuf.clear();
    let deadline = sent + core.config.upstream_timeout;
    let mut answered = 0;
    let mut at = 0;
    // Microseconds from `sent` to the last read's completion: every
    // response framed from that read arrived by then.
    let mut waited_us = 0;
    let max_body = core.config.max_body;
    // `p2c` learns each upstream's latency from the answers.
    let observe = core.config.balance == Balance::P2c;
    loop {
        // Frame every complete response in the buffer.
        let before = answered;
        while answered < items.len() {
            match http1::parse_response(&upbuf[at..], items[answered].head, max_body) {
                Ok(ParsedResponse::Complete { status, len, close }) => {
                    if !(100..200).contains(&status) {
                        // Interim responses are not forwarded: a 100 was
                        // already sent to the client by us.
                        let response = &upbuf[at..at + len];
                        if let (Some((lead, head)), Some(edge)) = (store, &core.cache) {
                            edge.store(lead, head, response);
                            let (entries, bytes) = edge.size();
                            core.metrics().cache_size(entries, bytes);
                        }
                        let from = out.len();
                        if close && !items[answered].closes {
                            // The upstream closes its connection, not the
                            // client's (a draining server, an HTTP/1.0 one).
                            http1::append_without_connection(out, response);
                        } else {
                            out.extend_from_slice(response);
                        }
                        if core.cache.is_some() {
                            mark_miss(out, from);
                        }
                        answered += 1;
                    }
                    at += len;
                    if close {
                        stats.answered(answered - before, waited_us);
                        member.release(None, pool);
                        let end = if answered == items.len() {
                            End::Done
                        } else {
                            End::Closed
                        };
                        return (answered, end);
                    }
                }
                Ok(ParsedResponse::Partial) => break,
                Err(_) => {
                    stats.answered(answered - before, waited_us);
                    member.release(None, pool);
                    return (answered, End::Failed(Failure::Broken));
                }
            }
        }
        stats.answered(answered - before, waited_us);
        if observe && answered > before {
            member.observe(waited_us);
        }
        if answered == items.len() {
            // Anything more is a response nobody asked for: do not reuse.
            let keep = at == upbuf.len();
            member.release(keep.then_some(conn), pool);
            return (answered, End::Done);
        }
        upbuf.drain(..at);
        at = 0;
        if upbuf.capacity() - upbuf.len() < READ_CHUNK / 4 {
            upbuf.reserve(upbuf.capacity().max(READ_CHUNK));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let len = upbuf.len();
        let read =
            monoio::time::timeout(wait, conn.read(std::mem::take(upbuf).slice_mut(len..))).await;
        let (res, slice) = match read {
            Ok(r) => r,
            Err(_) => {
                // The cancelled read took the buffer; start a new one.
                *upbuf = Vec::with_capacity(READ_CHUNK);
                member.release(None, pool);
                return (answered, End::Failed(Failure::TimedOut));
            }
        };
        *upbuf = slice.into_inner();
        waited_us = sent.elapsed().as_micros() as u64;
        match res {
            Ok(n) if n > 0 => {}
            _ => {
                member.release(None, pool);
                return (answered, End::Failed(Failure::Broken));
            }
        }
    }
}
