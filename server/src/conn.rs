//! The pipelining loop: one task per connection.
//!
//! ```text
//! read into the connection's buffer
//!   -> parse EVERY complete request in it (http1::parse)
//!   -> append each response to one output buffer (routes::dispatch)
//!   -> ONE write for the whole batch -> read again
//! ```
//!
//! Responses leave in request order. A todo write (`Action::Write`) is
//! handed to the backend as it is parsed, so the writes of one batch are
//! made durable together; their responses, and any after them, are appended
//! once confirmed. Responses before a write never wait for it: they are
//! written first. A request that must wait for something else
//! (`Action::Await`: a write the backend checks first, a lookup, a password
//! hash, a search) is answered alone: what is before it is written, then it
//! is awaited.
//!
//! Buffers are bounded: input by the head and body limits, output by
//! `write_buffer` (a full buffer is written before parsing goes on), and at
//! most `max_pipeline` requests are answered per batch, so a client that
//! pipelines without reading gets back-pressure, not memory growth.
//!
//! A connection quiet for `idle_release` (1 s) gives its buffers up and
//! waits for readiness holding none, so an idle keep-alive connection costs
//! its task and socket, not 32 KiB of buffers. A `GET /todos/changes`
//! turns the connection into a change-feed stream (`crate::feed`), with
//! neither the header nor the idle timeout. While the server drains, each
//! connection's next response says `Connection: close` and quiet ones close.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use std::os::fd::AsRawFd;

use crate::access_log;
use crate::backend::Submission;
use crate::feed::{self, Subscription};
use crate::metrics::Route;
use crate::per_core::{Core, Observability};
use crate::routes::{self, todos, Action, Pending, Reply, Routed};
use crate::trace::Trace;
use todo_http::http1::{self, Method, Parsed};
use todo_http::response::{self, Persist};
use todo_http::HttpError;
use todo_runtime::lifecycle;

/// Read buffer growth step, bytes.
const READ_CHUNK: usize = 16 * 1024;
/// Read space kept free before each read, bytes.
const MIN_READ_SPACE: usize = 1024;
/// A buffer filled by one read doubles up to this, bytes: a read this size
/// holds over a thousand pipelined GETs, more than one batch answers
/// (`max_pipeline`). Larger requests grow it up to their limits.
const MAX_READ_GROWTH: usize = 64 * 1024;
/// Output buffers larger than this are freed rather than pooled, bytes.
const MAX_POOLED: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Serve one connection until it closes.
pub async fn serve(core: Rc<Core>, mut stream: TcpStream) {
    // The idle timeout runs from the last answered batch.
    let mut active = Instant::now();
    loop {
        // Quiet: no buffer and no timer, only a readiness wait; the core's
        // sweeper closes the socket at `active + idle_timeout` or on drain.
        let until = active + core.config.idle_timeout;
        if !wait_quietly(&core, &stream, until).await {
            return;
        }
        // Busy: buffers, timers and any backend wait live in this boxed
        // future only until the connection is quiet again.
        match Box::pin(pipeline(&core, &mut stream)).await {
            Ok(Ending::Quiet(last)) => active = last,
            Ok(Ending::Linger) => return Box::pin(lifecycle::linger(&mut stream)).await,
            Ok(Ending::Stream(sub)) => {
                let metrics = core.obs.metrics();
                let stream = feed::stream(&core.feed, &core.reads.date, metrics, stream, *sub);
                return Box::pin(stream).await;
            }
            Err(e) if lifecycle::is_send_timeout(&e) => {
                core.obs.metrics().send_timed_out();
                return;
            }
            Ok(Ending::Close) | Err(_) => return,
        }
    }
}

enum Ending {
    /// Nothing arrived for `idle_release` after the batch answered at this
    /// instant: give the buffers up and wait quietly.
    Quiet(Instant),
    Close,
    /// We closed on a request with input possibly still unread.
    Linger,
    /// The connection is a change-feed subscriber's stream from here on;
    /// what was pipelined after its request is not answered.
    Stream(Box<Subscription>),
}

async fn pipeline(core: &Core, stream: &mut TcpStream) -> io::Result<Ending> {
    let config = &core.config;
    let limits = config.request_limits();
    // Chunked framing may take more bytes than the body it carries.
    let read_max = limits.max_head + 2 * limits.max_body + READ_CHUNK;
    let mut active = Instant::now();
    // Cancels a read that waited too long, without losing what it read.
    let mut canceller = Canceller::new();
    let mut input: Vec<u8> = core
        .conns
        .take_buffer(config.read_buffer.max(MIN_READ_SPACE));
    // Grows to fit the batch's responses; pooled buffers already have.
    let mut out: Vec<u8> = core.conns.take_buffer(0);
    // When the request still incomplete in `input` began arriving.
    let mut started: Option<Instant> = None;
    let mut sent_continue = false;
    // Writes started in this batch, and the responses queued behind them.
    let mut queued: VecDeque<Queued<'_>> = VecDeque::new();

    loop {
        if input.capacity() - input.len() < MIN_READ_SPACE {
            if input.len() >= read_max {
                let persist = Persist::Close;
                response::append_error(
                    &mut out,
                    &HttpError::PAYLOAD_TOO_LARGE,
                    &core.reads.date,
                    persist,
                );
                core.obs.metrics().request(Route::Other, 413);
                lifecycle::flush_within(stream, &mut out, config.send_timeout).await?;
                return Ok(Ending::Linger);
            }
            input.reserve(input.capacity().max(READ_CHUNK));
        }
        let idle_until = active + config.idle_timeout;
        let wait = match started {
            None => config
                .idle_release
                .min(idle_until.saturating_duration_since(Instant::now())),
            Some(t) => config.header_timeout.saturating_sub(t.elapsed()),
        };
        let len = input.len();
        let (res, slice) = read_within(stream, input.slice_mut(len..), wait, &mut canceller).await;
        let res = match res {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                input = slice.into_inner();
                if started.is_some() {
                    response::append_error(
                        &mut out,
                        &HttpError::HEADER_TIMEOUT,
                        &core.reads.date,
                        Persist::Close,
                    );
                    core.obs.metrics().request(Route::Other, 408);
                    lifecycle::flush_within(stream, &mut out, config.send_timeout).await?;
                    return Ok(Ending::Close);
                }
                if Instant::now() >= idle_until {
                    return Ok(Ending::Close);
                }
                // Quiet: both buffers go back to the pool.
                core.conns.put_buffer(input, MAX_POOLED);
                core.conns.put_buffer(out, MAX_POOLED);
                return Ok(Ending::Quiet(active));
            }
            other => other,
        };
        input = slice.into_inner();
        let n = res?;
        if n == 0 {
            return Ok(Ending::Close);
        }
        if input.len() == input.capacity() && input.capacity() < MAX_READ_GROWTH {
            // The read filled the buffer: this client sends more at once
            // than it holds, so double it for the next batch (a pipelining
            // client's whole batch then arrives in one read), up to a
            // bound: a client that sends without end must not grow it.
            input.reserve(input.capacity());
        }

        let t0 = Instant::now();
        let mut at = 0;
        let mut served = 0u64;
        let mut batch = 0usize;
        let mut ending = None;
        loop {
            if batch >= config.max_pipeline {
                settle(core, stream, &mut out, &mut queued, t0).await?;
                lifecycle::flush_within(stream, &mut out, config.send_timeout).await?;
                batch = 0;
            }
            match http1::parse(&input[at..], &limits) {
                Ok(Parsed::Complete(req, used)) => {
                    // Draining: this response is the connection's last; the
                    // client sends what follows it on a new connection
                    // (RFC 9112 §9.3.2), which reaches a server still running.
                    let persist = match (req.keep_alive && !core.conns.draining(), req.http10) {
                        (false, _) => Persist::Close,
                        (true, true) => Persist::KeepAlive10,
                        (true, false) => Persist::KeepAlive,
                    };
                    let reply = Reply {
                        persist,
                        head_only: req.method == Method::Head,
                        date: &core.reads.date,
                    };
                    // Behind a write in flight, a response waits its turn.
                    let behind = !queued.is_empty();
                    let logged = core.obs.log.on && core.obs.log.wants();
                    let mut later = Vec::new();
                    let target = if behind { &mut later } else { &mut out };
                    let start = target.len();
                    let Routed { action, user } = routes::dispatch(core, &req, target, persist);
                    match action {
                        Action::Done(route, status) => {
                            core.obs.metrics().request(route, status);
                            // Ids only where they are used: the hot path
                            // makes none unless asked or logging.
                            if logged || req.request_id.is_some() {
                                let log_as = logged.then_some(user.as_deref());
                                identify(&core.obs, &req, target, start, log_as, status, t0);
                            }
                            if behind {
                                queued.push_back(Queued::Ready(later));
                            }
                        }
                        Action::Write(cmd) => {
                            let trace = core.obs.ids.trace(req.request_id, req.traceparent);
                            let info = logged.then(|| LogInfo::of(&req, user));
                            let sub = core.writes.backend.start(*cmd, Some(&trace));
                            queued.push_back(Queued::Write {
                                sub,
                                reply,
                                trace,
                                info,
                            });
                        }
                        Action::Stream(sub) => {
                            core.obs.metrics().request(Route::Changes, 200);
                            ending = Some(Ending::Stream(sub));
                            break;
                        }
                        Action::Await(mut pending) => {
                            if let Pending::Login(_, peer) = &mut *pending {
                                // Asked of the kernel only here: login
                                // limits count per address, and nothing
                                // else needs it.
                                *peer = stream.peer_addr().ok().map(|a| a.ip());
                            }
                            let trace = core.obs.ids.trace(req.request_id, req.traceparent);
                            let info = logged.then(|| LogInfo::of(&req, user));
                            settle(core, stream, &mut out, &mut queued, t0).await?;
                            lifecycle::flush_within(stream, &mut out, config.send_timeout).await?;
                            let start = out.len();
                            let (route, status) =
                                // Boxed: a rare wait whose state need not
                                // be in every connection's future.
                                Box::pin(routes::complete(core, *pending, &mut out, reply, &trace)).await;
                            core.obs.metrics().request(route, status);
                            answered(
                                &core.obs,
                                &mut out,
                                start,
                                &trace,
                                info.as_ref().map(LogInfo::line),
                                status,
                                t0,
                            );
                        }
                    }
                    at += used;
                    served += 1;
                    batch += 1;
                    sent_continue = false;
                    if persist == Persist::Close {
                        ending = Some(Ending::Linger);
                        break;
                    }
                    if out.len() >= config.write_buffer {
                        lifecycle::flush_within(stream, &mut out, config.send_timeout).await?;
                    }
                }
                Ok(Parsed::Partial { expect_continue }) => {
                    if expect_continue && !sent_continue {
                        settle(core, stream, &mut out, &mut queued, t0).await?;
                        out.extend_from_slice(CONTINUE);
                        sent_continue = true;
                    }
                    break;
                }
                Err(err) => {
                    settle(core, stream, &mut out, &mut queued, t0).await?;
                    core.obs.metrics().request(Route::Other, err.status);
                    response::append_error(&mut out, &err, &core.reads.date, Persist::Close);
                    ending = Some(Ending::Linger);
                    break;
                }
            }
        }
        settle(core, stream, &mut out, &mut queued, t0).await?;
        lifecycle::flush_within(stream, &mut out, config.send_timeout).await?;
        if served > 0 {
            core.obs
                .metrics()
                .batch(served, t0.elapsed().as_micros() as u64);
        }
        if let Some(ending) = ending {
            return Ok(ending);
        }
        input.drain(..at);
        active = Instant::now();
        started = match (input.is_empty(), served > 0, started) {
            (true, _, _) => None,
            (false, true, _) | (false, false, None) => Some(Instant::now()),
            (false, false, Some(t)) => Some(t),
        };
    }
}

/// A response slot behind a write in flight.
// Most slots are writes (a pipelined batch of them) and live in this deque
// only; boxing each here would allocate per write to make the rarer ready
// responses smaller. (The command itself arrives boxed in `Action::Write`,
// because every request's `Routed` moves through the hot path: see
// `routes::Action`.)
#[allow(clippy::large_enum_variant)]
enum Queued<'a> {
    /// A write handed to the backend; its response is known once it finishes.
    Write {
        sub: Submission,
        reply: Reply<'a>,
        trace: Trace,
        /// What the access log line says, when the request is logged.
        info: Option<LogInfo>,
    },
    /// A response ready to go once the writes before it are answered.
    Ready(Vec<u8>),
}

/// Answer every queued write, in order, with what follows each. Pipelined
/// writes were all handed over before the first wait, so they share it.
/// The wait is boxed, and only when there is one: its state (a backend
/// delivery) then is not part of every connection's future, which is what
/// an idle connection costs.
async fn settle(
    core: &Core,
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    queued: &mut VecDeque<Queued<'_>>,
    started: Instant,
) -> io::Result<()> {
    if queued.is_empty() {
        return Ok(());
    }
    Box::pin(settle_queued(core, stream, out, queued, started)).await
}

async fn settle_queued(
    core: &Core,
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    queued: &mut VecDeque<Queued<'_>>,
    started: Instant,
) -> io::Result<()> {
    // What is answered already leaves before the wait.
    lifecycle::flush_within(stream, out, core.config.send_timeout).await?;
    while let Some(slot) = queued.pop_front() {
        match slot {
            Queued::Write {
                sub,
                reply,
                trace,
                info,
            } => {
                let result = core.writes.backend.finish(sub).await;
                let start = out.len();
                let status = todos::accepted(result, out, reply);
                core.obs.metrics().request(Route::TodosWrite, status);
                answered(
                    &core.obs,
                    out,
                    start,
                    &trace,
                    info.as_ref().map(LogInfo::line),
                    status,
                    started,
                );
            }
            Queued::Ready(bytes) => out.extend_from_slice(&bytes),
        }
    }
    Ok(())
}

/// The request's parts an access log line names, owned: a line may be
/// written after the input buffer moved on.
struct LogInfo {
    method: &'static str,
    path: String,
    query: String,
    /// The token subject the route verified.
    user: Option<Rc<str>>,
}

/// What one access log line names about the request.
struct LogLine<'a> {
    method: &'static str,
    path: &'a str,
    query: &'a str,
    user: Option<&'a str>,
}

impl LogInfo {
    fn line(&self) -> LogLine<'_> {
        LogLine {
            method: self.method,
            path: &self.path,
            query: &self.query,
            user: self.user.as_deref(),
        }
    }

    fn of(req: &http1::Request<'_>, user: Option<Rc<str>>) -> LogInfo {
        LogInfo {
            method: req.method.as_str(),
            path: req.path.to_string(),
            query: req.query.to_string(),
            user,
        }
    }
}

/// A request answered at once that is logged or sent an id: its id in the
/// response, its line in the log (`log_as`: `Some` when it is logged, with
/// the token subject its route verified). Out of line: the hot path's
/// common case is neither.
#[cold]
#[inline(never)]
fn identify(
    obs: &Observability,
    req: &http1::Request<'_>,
    out: &mut Vec<u8>,
    start: usize,
    log_as: Option<Option<&str>>,
    status: u16,
    started: Instant,
) {
    let trace = Trace {
        request_id: obs.ids.request_id(req.request_id),
        traceparent: None,
    };
    let line = log_as.map(|user| LogLine {
        method: req.method.as_str(),
        path: req.path,
        query: req.query,
        user,
    });
    answered(obs, out, start, &trace, line, status, started);
}

/// After a response was appended at `out[start..]`: put the request's ids
/// in its head and, when it is logged, write its access log line.
fn answered(
    obs: &Observability,
    out: &mut Vec<u8>,
    start: usize,
    trace: &Trace,
    line: Option<LogLine<'_>>,
    status: u16,
    started: Instant,
) {
    crate::trace::stamp(out, start, trace);
    if let Some(line) = line {
        obs.log.write(
            obs.metrics(),
            &access_log::Entry {
                method: line.method,
                path: line.path,
                query: line.query,
                status,
                bytes: out.len() - start,
                started,
                request_id: &trace.request_id,
                user: line.user,
            },
        );
    }
}

/// Read into `buf` for at most `wait`. On time-out the read is cancelled and
/// awaited, so bytes that arrived as it was cancelled are kept (a dropped
/// io_uring read would lose them with its buffer): `TimedOut` only when
/// nothing was read.
async fn read_within<T: monoio::buf::IoBufMut>(
    stream: &mut TcpStream,
    buf: T,
    wait: Duration,
    canceller: &mut Canceller,
) -> (io::Result<usize>, T) {
    let read = stream.cancelable_read(buf, canceller.handle());
    let mut read = std::pin::pin!(read);
    monoio::select! {
        done = &mut read => return done,
        _ = monoio::time::sleep(wait) => {}
    }
    *canceller = std::mem::take(canceller).cancel();
    match read.await {
        (Ok(n), buf) if n > 0 => (Ok(n), buf),
        (Err(e), buf)
            if e.kind() != io::ErrorKind::Interrupted
                && e.raw_os_error() != Some(libc::ECANCELED) =>
        {
            (Err(e), buf)
        }
        (_, buf) => (Err(io::ErrorKind::TimedOut.into()), buf),
    }
}

/// Wait, holding no buffer, until the connection is readable (true), or it
/// is closed for being idle too long or for the drain (false).
async fn wait_quietly(core: &Core, stream: &TcpStream, until: Instant) -> bool {
    if core.conns.draining() {
        return false;
    }
    let fd = stream.as_raw_fd();
    core.obs.metrics().quiet(core.conns.go_quiet(fd, until));
    let ready = stream.readable(false).await;
    core.obs.metrics().quiet(core.conns.wake(fd));
    // When the sweeper shut the socket down, the read that follows sees the
    // end of stream; input that arrived as the drain began is still answered
    // (with `Connection: close`).
    ready.is_ok() && Instant::now() < until
}

#[cfg(test)]
mod tests {
    /// What an idle connection costs is mostly its task: this future's size.
    /// Its busy part is boxed and its quiet part holds no timer (see
    /// `wait_quietly`), so it stays small.
    #[test]
    fn a_connection_task_is_small() {
        fn size<F, Fut>(_: F) -> usize
        where
            F: Fn(std::rc::Rc<super::Core>, super::TcpStream) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let bytes = size(super::serve);
        assert!(bytes <= 512, "serve's future is {bytes} bytes");
    }
}
