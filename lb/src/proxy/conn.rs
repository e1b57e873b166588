//! One client connection, from its start to its end: the TLS start on
//! `--listen-tls`, the per-client connection limit, then the loop, one
//! batch a turn:
//!
//! ```text
//! read_more  what the client sent next (--idle-timeout between requests,
//!            --header-timeout within one: 408; 413 past the size limit)
//! parse      batch.rs: every complete request into the batch
//! answer     admit them against the client's rate (429 the rest); forward
//!            the admitted ones (forward.rs); the error that ended the parse
//! send       ONE write of the answers, in request order; what follows waits
//!            for the next read, or the connection closes
//! relay      instead, when the batch's last answer is an event stream: the
//!            same write, then the stream (stream.rs) until it ends, and
//!            the connection with it
//! ```
//!
//! This is where the core is taken apart: each step gets the parts it reads.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use todo_http::response::{self, Persist};
use todo_http::{DateCache, HttpError};

use crate::client_io::ClientIo;
use crate::client_limits::ClientConn;
use crate::metrics::{CoreMetrics, Handshake, StreamEnd};
use crate::tls::{self, CoreTls, TlsStream};

use super::batch::{Batch, Cut, Reader};
use super::forward::Forwarding;
use super::state::{Connections, LbCore, Reading};
use super::stream::Stream;
use super::READ_CHUNK;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

static RATE_LIMITED: HttpError = HttpError::new(
    429,
    "rate_limited",
    "too many requests from this client",
    false,
)
.with_retry_after(1);
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
    let within = core.reading.header_timeout;
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
        // Peeked: the byte stays for the TLS library to read.
        match crate::pool::peek_byte(stream) {
            Ok(first) => return first,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
}

/// Serve a connection (plain or TLS; `fd` is its socket) until it closes.
async fn serve_on<S: ClientIo>(core: &LbCore, mut stream: S, fd: RawFd, peer: SocketAddr) {
    let Some(client) = core.limits.clients.connect(peer.ip()) else {
        let mut out = Vec::new();
        response::append_error(&mut out, &TOO_MANY_CONNECTIONS, &core.date, Persist::Close);
        let _ = stream.write_from(&mut out).await;
        stream.close().await;
        return;
    };
    core.conns.enter(fd);
    let linger = matches!(proxy(core, &mut stream, peer, &client).await, Ok(true));
    core.conns.leave(fd);
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
    let mut reader = Reader::new(
        &core.reading,
        &core.ids,
        &core.date,
        core.cache.is_some(),
        peer,
    );
    let mut conn = Conn::new(stream, core);
    let mut batch = Batch::new();
    let forwarding = Forwarding {
        upstreams: &core.upstreams,
        cache: core.cache.as_ref(),
        date: &core.date,
        metrics: core.metrics(),
    };
    loop {
        if let Next::Close { linger } = conn.read_more().await? {
            return Ok(linger);
        }
        let routes = core.limits.routes_now();
        let cut = reader.parse(&conn.input, routes.as_deref().map(Arc::as_ref), &mut batch);
        if let Some(stream) = conn.answer(&forwarding, client, &mut batch, &cut).await {
            return Ok(conn.relay(stream).await);
        }
        if let Next::Close { linger } = conn.send(&batch, &cut).await? {
            return Ok(linger);
        }
    }
}

/// What the loop does next.
enum Next {
    /// Go on: parse what was read, or read again.
    Go,
    /// End the connection; `linger`: drain what the client still sends for
    /// a moment first (it may not have read our last answer yet).
    Close { linger: bool },
}

/// A client connection in the loop: its stream, its buffers, its header
/// clock, and the parts of the core the loop itself reads.
struct Conn<'c, S> {
    stream: &'c mut S,
    conns: &'c Connections,
    reading: &'c Reading,
    date: &'c DateCache,
    metrics: &'c CoreMetrics,
    /// What the client sent that no batch has taken yet.
    input: Vec<u8>,
    /// The answers of a batch, written in one go.
    out: Vec<u8>,
    /// The upstreams' answers as they are read (large enough for a
    /// depth-80 batch of responses in one read).
    upbuf: Vec<u8>,
    /// When the request at the input's start began arriving
    /// (`--header-timeout`); `None` with no request begun.
    started: Option<Instant>,
}

impl<'c, S: ClientIo> Conn<'c, S> {
    fn new(stream: &'c mut S, core: &'c LbCore) -> Self {
        Conn {
            stream,
            conns: &core.conns,
            reading: &core.reading,
            date: &core.date,
            metrics: core.metrics(),
            input: Vec::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(READ_CHUNK),
            upbuf: Vec::with_capacity(64 * 1024),
            started: None,
        }
    }

    /// Read what the client sent next onto the input. Close at its end,
    /// after a time-out (408 within a request), past the size limit (413),
    /// or in a drain with nothing left to answer.
    async fn read_more(&mut self) -> io::Result<Next> {
        if self.conns.draining() && self.input.is_empty() {
            return Ok(Next::Close { linger: false });
        }
        if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
            if self.input.len() >= self.reading.read_max {
                self.refuse(&HttpError::PAYLOAD_TOO_LARGE).await?;
                return Ok(Next::Close { linger: true });
            }
            self.input.reserve(self.input.capacity().max(READ_CHUNK));
        }
        let wait = read_wait(self.reading, self.started);
        let res = match monoio::time::timeout(wait, self.stream.read_to(&mut self.input)).await {
            Ok(r) => r,
            Err(_) if self.started.is_some() => {
                self.refuse(&HttpError::HEADER_TIMEOUT).await?;
                return Ok(Next::Close { linger: false });
            }
            Err(_) => return Ok(Next::Close { linger: false }),
        };
        if res? == 0 {
            return Ok(Next::Close { linger: false });
        }
        Ok(Next::Go)
    }

    /// The balancer's last answer on the connection, `err` (counted as a
    /// request), written at once.
    async fn refuse(&mut self, err: &HttpError) -> io::Result<()> {
        self.metrics.requests(1);
        response::append_error(&mut self.out, err, self.date, Persist::Close);
        self.stream.write_from(&mut self.out).await
    }

    /// Answer a parsed batch into the output: the `100 Continue` the next
    /// request waits for, the requests the client's rate admits (forwarded
    /// or answered here), 429 for the others, and the error that ended the
    /// parse. When an answer is an event stream, the output ends with its
    /// head and nothing after it is answered: the stream is returned.
    async fn answer(
        &mut self,
        forwarding: &Forwarding<'_>,
        client: &ClientConn,
        batch: &mut Batch,
        cut: &Cut,
    ) -> Option<Stream> {
        if cut.send_continue {
            self.out.extend_from_slice(CONTINUE);
        }
        self.metrics
            .requests(batch.items.len() + usize::from(cut.ending.is_some()));
        let admitted = client.admit(batch.items.len());
        if admitted > 0 {
            let stream = forwarding
                .forward(batch, admitted, &self.input, &mut self.upbuf, &mut self.out)
                .await;
            if stream.is_some() {
                return stream;
            }
        }
        for item in &batch.items[admitted..] {
            item.answer(&mut self.out, &RATE_LIMITED, self.date);
        }
        if let Some(err) = &cut.ending {
            response::append_error(&mut self.out, err, self.date, Persist::Close);
        }
        None
    }

    /// The output ends with an event stream's head: write it, relay the
    /// stream until it ends (stream.rs), and end the connection with it
    /// (the head said `Connection: close`). Whether to linger: when the
    /// client is still there to read the end.
    async fn relay(&mut self, stream: Stream) -> bool {
        // What the client sent after the stream's request is never answered;
        // the input takes what it sends meanwhile.
        self.input.clear();
        let end = stream
            .relay(
                self.stream,
                &mut self.out,
                &mut self.input,
                self.conns,
                self.metrics,
            )
            .await;
        matches!(end, StreamEnd::Upstream | StreamEnd::Idle)
    }

    /// ONE write of the batch's answers; then its requests leave the input,
    /// or the connection closes (after an error, a `Connection: close`, or
    /// in a drain).
    async fn send(&mut self, batch: &Batch, cut: &Cut) -> io::Result<Next> {
        self.stream.write_from(&mut self.out).await?;
        if cut.ending.is_some() || cut.closes {
            return Ok(Next::Close { linger: true });
        }
        self.input.drain(..cut.used);
        self.started = header_clock(
            self.input.is_empty(),
            !batch.items.is_empty(),
            self.started,
            Instant::now,
        );
        if self.conns.draining() {
            // Every answer of this batch is out; what the client sends next
            // goes to a balancer that is staying.
            return Ok(Next::Close { linger: false });
        }
        Ok(Next::Go)
    }
}

/// How long the next read may wait: `--idle-timeout` with no request begun,
/// else what is left of `--header-timeout` since it began.
fn read_wait(reading: &Reading, started: Option<Instant>) -> Duration {
    match started {
        None => reading.idle_timeout,
        Some(t) => reading.header_timeout.saturating_sub(t.elapsed()),
    }
}

/// The header clock after a batch: stopped when the input is empty;
/// restarted (`now`) when the batch took requests and left bytes of the next
/// one, or when bytes came with no request begun; else the request still
/// incomplete keeps the time it began, so a client sending a byte at a time
/// gets no longer than `--header-timeout`.
fn header_clock(
    input_empty: bool,
    took_requests: bool,
    started: Option<Instant>,
    now: impl FnOnce() -> Instant,
) -> Option<Instant> {
    match (input_empty, took_requests, started) {
        (true, _, _) => None,
        (false, true, _) | (false, false, None) => Some(now()),
        (false, false, Some(t)) => Some(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use todo_testkit::http::Response;

    use crate::client_limits::{ClientLimitConfig, ClientLimits};
    use crate::config::LbConfig;
    use crate::upstream::UpstreamSet;

    const GET: &str = "GET /todos HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A client that sends `reads`, one per read, then ends its side (or,
    /// `hang`, sends nothing more and stays), and keeps each write.
    #[derive(Default)]
    struct Client {
        reads: VecDeque<Vec<u8>>,
        hang: bool,
        writes: Vec<Vec<u8>>,
    }

    impl Client {
        fn sending(reads: &[&[u8]]) -> Self {
            Client {
                reads: reads.iter().map(|r| r.to_vec()).collect(),
                ..Client::default()
            }
        }

        /// The status of every response written, in order.
        fn statuses(&self) -> Vec<u16> {
            let all = self.writes.concat();
            let mut at = 0;
            let mut statuses = Vec::new();
            while let Some((response, used)) = Response::parse(&all[at..], false).unwrap() {
                statuses.push(response.status);
                at += used;
            }
            assert_eq!(at, all.len(), "every byte written frames");
            statuses
        }
    }

    impl ClientIo for Client {
        async fn read_to(&mut self, input: &mut Vec<u8>) -> io::Result<usize> {
            match self.reads.pop_front() {
                Some(chunk) => {
                    input.extend_from_slice(&chunk);
                    Ok(chunk.len())
                }
                None if self.hang => std::future::pending().await,
                None => Ok(0),
            }
        }

        async fn write_from(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
            self.writes.push(out.clone());
            out.clear();
            Ok(())
        }

        async fn wait_readable(&self) -> io::Result<()> {
            if self.hang && self.reads.is_empty() {
                std::future::pending().await
            }
            Ok(())
        }

        async fn close(&mut self) {}
    }

    /// A core with no upstream at all: every request forwarded is answered
    /// 503 here, so what a test sees is the loop's own doing.
    fn core(tune: impl FnOnce(&mut LbConfig)) -> LbCore {
        let mut config = LbConfig::for_tests(&[]);
        config.cores = 1;
        tune(&mut config);
        let clients = Arc::new(ClientLimits::new(ClientLimitConfig {
            rate: config.rate,
            burst: config.burst.unwrap_or(config.rate).max(1.0),
            max_conns: config.max_conns_per_client,
        }));
        let set = Arc::new(UpstreamSet::new(Vec::new(), 1));
        let metrics: Arc<[CoreMetrics]> = Arc::new([CoreMetrics::default()]);
        LbCore::new(0, &config, set, clients, metrics, 1)
    }

    /// The loop on `client` until it ends: whether it lingers.
    fn run(core: &LbCore, client: &mut Client) -> bool {
        let peer: SocketAddr = "10.0.0.7:5555".parse().unwrap();
        let limit = core.limits.clients.connect(peer.ip()).unwrap();
        let mut result = None;
        todo_runtime::cores::block_on(todo_runtime::Driver::Legacy, async {
            result = Some(proxy(core, client, peer, &limit).await);
        })
        .unwrap();
        result.unwrap().unwrap()
    }

    #[test]
    fn a_pipelined_batch_is_answered_in_one_write_in_order() {
        let core = core(|_| {});
        let mut client = Client::sending(&[format!("{GET}{GET}BAD\r\n\r\n").as_bytes()]);
        let linger = run(&core, &mut client);
        assert_eq!(client.writes.len(), 1);
        assert_eq!(
            client.statuses(),
            [503, 503, 400],
            "the error that ended it last"
        );
        assert!(linger, "closed after the 400: let the client read it");
    }

    #[test]
    fn requests_split_at_every_byte_are_each_answered_once() {
        let core = core(|_| {});
        let input = format!("{GET}{GET}");
        for cut in 1..input.len() {
            let (a, b) = input.as_bytes().split_at(cut);
            let mut client = Client::sending(&[a, b]);
            assert!(!run(&core, &mut client));
            assert_eq!(client.statuses(), [503, 503], "split at {cut}");
        }
    }

    #[test]
    fn continue_goes_out_before_the_body_is_sent() {
        let core = core(|_| {});
        let head =
            "POST /todos HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
        let mut client = Client::sending(&[head.as_bytes(), b"hi"]);
        run(&core, &mut client);
        assert_eq!(client.writes[0], CONTINUE);
        assert_eq!(client.statuses(), [100, 503]);
    }

    #[test]
    fn requests_over_the_clients_rate_are_answered_429() {
        let core = core(|c| {
            c.rate = 1.0;
            c.burst = Some(2.0);
        });
        let mut client = Client::sending(&[GET.repeat(3).as_bytes()]);
        run(&core, &mut client);
        assert_eq!(client.statuses(), [503, 503, 429]);
    }

    #[test]
    fn connection_close_is_answered_and_what_follows_is_not() {
        let core = core(|_| {});
        let close = "GET /todos HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut client = Client::sending(&[format!("{close}{GET}").as_bytes()]);
        assert!(run(&core, &mut client));
        assert_eq!(client.statuses(), [503]);
    }

    #[test]
    fn a_draining_core_takes_no_new_batch() {
        let core = core(|_| {});
        core.conns.drain();
        let mut client = Client::sending(&[GET.as_bytes()]);
        assert!(!run(&core, &mut client));
        assert!(client.writes.is_empty());
        assert_eq!(client.reads.len(), 1, "not even read");
    }

    #[test]
    fn a_request_not_complete_within_the_header_timeout_is_408() {
        let core = core(|c| c.header_timeout = Duration::from_millis(50));
        let mut client = Client {
            hang: true,
            ..Client::sending(&[b"GET /todos HT"])
        };
        assert!(!run(&core, &mut client));
        assert_eq!(client.statuses(), [408]);
    }

    #[test]
    fn an_idle_connection_closes_without_a_word() {
        let core = core(|c| c.idle_timeout = Duration::from_millis(50));
        let mut client = Client {
            hang: true,
            ..Client::default()
        };
        assert!(!run(&core, &mut client));
        assert!(client.writes.is_empty());
    }

    #[test]
    fn the_header_clock_runs_from_the_first_byte_of_a_request() {
        let (t0, now) = (Instant::now(), Instant::now() + Duration::from_secs(3));
        let clock = |empty, took, started| header_clock(empty, took, started, || now);
        assert_eq!(clock(true, true, Some(t0)), None, "nothing left: stopped");
        assert_eq!(clock(true, false, Some(t0)), None);
        assert_eq!(
            clock(false, true, Some(t0)),
            Some(now),
            "the next request began"
        );
        assert_eq!(clock(false, false, None), Some(now), "a request began");
        assert_eq!(
            clock(false, false, Some(t0)),
            Some(t0),
            "still the same request: a byte at a time gains nothing"
        );
    }

    #[test]
    fn a_read_waits_the_idle_time_or_what_is_left_of_the_header_time() {
        let reading = Reading::new(&LbConfig::for_tests(&[]));
        assert_eq!(read_wait(&reading, None), reading.idle_timeout);
        let begun = Instant::now() - Duration::from_secs(3);
        let left = read_wait(&reading, Some(begun));
        assert!(left <= reading.header_timeout - Duration::from_secs(3));
        assert!(left > reading.header_timeout - Duration::from_secs(4));
        let long_ago = Instant::now() - reading.header_timeout * 2;
        assert_eq!(read_wait(&reading, Some(long_ago)), Duration::ZERO);
    }
}
