//! Forwarding a batch: its requests go to the upstreams in runs, and their
//! answers come back into the client's output, in request order.
//!
//! ```text
//! forward   for each request, in turn:
//!             answered here ([[limit]] 429, or poisoned by a failure: 502/504)
//!             the edge cache: a hit answered, a fetch in flight waited for,
//!                             a miss fetched alone (and held when it comes)
//!             else a run: the requests up to the next one answered here
//!                  (hash: with the same key), to one upstream picked by the policy
//! exchange  one run, one upstream: ONE write, then read and frame responses
//!           until all are answered, the upstream closes, fails or times out,
//!           or an answer is an event stream: its head goes out, the forward
//!           ends, and the upstream connection is the stream's (`stream.rs`)
//! ```
//!
//! When an exchange fails, the retry policy (`retry.rs`) says which of the
//! run's unanswered requests may go to another upstream; the loop sends
//! them on, up to `--retries` more upstreams.
//!
//! Counted on the way (`metrics.rs`, `upstream_stats.rs`, this core's
//! slots, no lock): cache results and size; per upstream, requests written,
//! failures by class, and the time from writing a run to each response,
//! taken once per read.

use std::time::Instant;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use todo_http::http1::{self, ParsedResponse};
use todo_http::DateCache;

use crate::cache::{self, EdgeCache, Lead, Lookup};
use crate::failure::Failure;
use crate::metrics::{CacheResult, CoreMetrics};
use crate::pool::Member;

use super::batch::{Batch, Item};
use super::retry::{self, Failover};
use super::state::Upstreams;
use super::stream::{self, Stream};
use super::READ_CHUNK;

/// What forwarding reads of its core.
pub struct Forwarding<'c> {
    pub upstreams: &'c Upstreams,
    /// `--cache on`: the edge cache.
    pub cache: Option<&'c EdgeCache>,
    /// The `Date` of the balancer's own answers and of cache hits.
    pub date: &'c DateCache,
    /// This core's counters (cache results and size).
    pub metrics: &'c CoreMetrics,
}

/// How one exchange with an upstream ended.
#[derive(Debug)]
enum End {
    /// Every request answered; the connection may be reused.
    Done,
    /// The upstream answered some and said `Connection: close`: it did not
    /// read the rest, which may go elsewhere.
    Closed,
    /// The upstream failed; the unanswered requests go by
    /// [`retry::may_resend`].
    Failed(Failure),
    /// The answer after those counted is an event stream, its head in the
    /// client's output; the connection is its own now. The rest of the run
    /// goes unanswered: the stream is the last on both connections.
    Stream(TcpStream),
}

/// A request's turn at the edge cache.
enum Turn<'c> {
    /// Answered from the cache.
    Answered,
    /// A miss this request fetches, alone; the others for it wait.
    Fetch(Lead<'c>),
    /// Not the cache's: forwarded with its run.
    Forward,
}

impl<'c> Forwarding<'c> {
    /// Send the first `admitted` requests of `batch` and append their
    /// answers to `out`, in order, retrying on other upstreams as the
    /// module doc says; with `--cache on`, answering from the cache what it
    /// holds. `input` is the client's bytes the batch was parsed from.
    ///
    /// An answer that is an event stream ends it: `out` ends with the
    /// stream's head, the requests after it are not answered, and the
    /// stream to relay is returned.
    pub async fn forward(
        &self,
        batch: &mut Batch,
        admitted: usize,
        input: &[u8],
        upbuf: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Option<Stream> {
        let Batch { items, fwd, local } = batch;
        let items = &mut items[..admitted];
        let mut next = 0;
        let mut failover = Failover::new(self.upstreams.retries);
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
                items[next].answer(out, retry::answer(failure), self.date);
                next += 1;
                continue;
            }
            let lead = match self.consult_cache(&mut items[next], input, out).await {
                Turn::Answered => {
                    next += 1;
                    continue;
                }
                Turn::Fetch(lead) => Some(lead),
                Turn::Forward => None,
            };
            let upto = run_end(items, next, lead.is_some());
            let Some(member) = self.upstreams.pick(failover.failed(), items[next].key) else {
                self.answer_unsent(out, &items[next..], failover.last());
                return None;
            };
            let store = lead.as_ref().map(|l| (l, items[next].head_in(input)));
            let (answered, end) = self
                .exchange(&member, fwd, &items[next..upto], store, upbuf, out)
                .await;
            drop(lead);
            next += answered;
            match end {
                End::Done | End::Closed => member.succeeded(),
                End::Stream(conn) => {
                    member.succeeded();
                    let up = self.upstreams;
                    return Some(Stream::new(conn, member, up.pool_config, up.stream_idle));
                }
                End::Failed(failure) => {
                    member.stats().failed(failure);
                    member.failed(&self.upstreams.pool_config);
                    let again = failover.record(member.addr(), failure);
                    for item in &mut items[next..upto] {
                        item.failed(failure);
                    }
                    if !again {
                        self.answer_unsent(out, &items[next..], failover.last());
                        return None;
                    }
                }
            }
        }
        None
    }

    /// The cache's turn for `item`: a hit is answered here; a key another
    /// request of this core is fetching is waited for; a miss is fetched
    /// alone, so the answer is held before the requests after it look.
    async fn consult_cache(&self, item: &mut Item, input: &[u8], out: &mut Vec<u8>) -> Turn<'c> {
        let (Some(probe), Some(edge)) = (item.cache, self.cache) else {
            return Turn::Forward;
        };
        let head = item.head_in(input);
        loop {
            match edge.lookup(probe, head, self.date, out) {
                Lookup::Answered { not_modified } => {
                    self.metrics.cache(if not_modified {
                        CacheResult::NotModified
                    } else {
                        CacheResult::Hit
                    });
                    return Turn::Answered;
                }
                Lookup::Wait(flight) => flight.wait().await,
                Lookup::Pass => {
                    self.metrics.cache(CacheResult::Miss);
                    item.cache = None;
                    return Turn::Forward;
                }
                Lookup::Fetch(fetch) => {
                    self.metrics.cache(CacheResult::Miss);
                    return Turn::Fetch(fetch);
                }
            }
        }
    }

    /// Answer requests no upstream will take ([`retry::answer_unsent`]).
    fn answer_unsent(&self, out: &mut Vec<u8>, items: &[Item], last: Option<Failure>) {
        for item in items {
            item.answer(out, retry::answer_unsent(item.poisoned, last), self.date);
        }
    }

    /// One run to one upstream: write it, read its answers into `out`
    /// (holding the answer of a cache fetch, `store`). Returns how many were
    /// answered and how it ended.
    async fn exchange(
        &self,
        member: &Member,
        fwd: &mut Vec<u8>,
        items: &[Item],
        store: Option<(&Lead<'_>, &[u8])>,
        upbuf: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> (usize, End) {
        let up = self.upstreams;
        let pool = &up.pool_config;
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
        let deadline = sent + up.timeout;
        let mut answered = 0;
        // Microseconds from `sent` to the last read's completion: every
        // response framed from that read arrived by then.
        let mut waited_us = 0;
        let hold = |response: &[u8]| {
            if let (Some((lead, head)), Some(edge)) = (store, self.cache) {
                edge.store(lead, head, response);
                let (entries, bytes) = edge.size();
                self.metrics.cache_size(entries, bytes);
            }
        };
        loop {
            let framed = frame(
                upbuf,
                &items[answered..],
                up.max_body,
                self.cache.is_some(),
                out,
                &hold,
            );
            answered += framed.answered;
            stats.answered(framed.answered, waited_us);
            match framed.end {
                Framing::Closed => {
                    member.release(None, pool);
                    let end = if answered == items.len() {
                        End::Done
                    } else {
                        End::Closed
                    };
                    return (answered, end);
                }
                Framing::Broken => {
                    member.release(None, pool);
                    return (answered, End::Failed(Failure::Broken));
                }
                Framing::Stream => {
                    // Still in flight: the stream releases it when it ends.
                    stats.answered(1, waited_us);
                    if up.observe_latency {
                        member.observe(waited_us);
                    }
                    stream_head(&upbuf[framed.used..], self.cache.is_some(), out);
                    if let (Some((lead, _)), Some(edge)) = (store, self.cache) {
                        edge.pass(lead);
                    }
                    upbuf.clear();
                    return (answered, End::Stream(conn));
                }
                Framing::Open => {}
            }
            if up.observe_latency && framed.answered > 0 {
                member.observe(waited_us);
            }
            if answered == items.len() {
                // Anything more is a response nobody asked for: do not reuse.
                let keep = framed.used == upbuf.len();
                member.release(keep.then_some(conn), pool);
                return (answered, End::Done);
            }
            upbuf.drain(..framed.used);
            if let Err(failure) = read_upstream(&mut conn, upbuf, deadline).await {
                member.release(None, pool);
                return (answered, End::Failed(failure));
            }
            waited_us = sent.elapsed().as_micros() as u64;
        }
    }
}

/// Where the run of requests from `next` ends (exclusive). A run goes to
/// one upstream: it ends before a request answered here (at the edge,
/// poisoned, or the cache's) or, under hash, at the first request with
/// another key; a cache fetch goes `alone`.
fn run_end(items: &[Item], next: usize, alone: bool) -> usize {
    if alone {
        return next + 1;
    }
    let key = items[next].key;
    items[next + 1..]
        .iter()
        .position(|i| i.poisoned.is_some() || i.local || i.cache.is_some() || i.key != key)
        .map_or(items.len(), |p| next + 1 + p)
}

/// What one pass of [`frame`] found in the upstream's bytes.
struct Framed {
    /// Bytes framed: the final responses and any interim ones before them.
    used: usize,
    /// Final responses appended to the client's output.
    answered: usize,
    end: Framing,
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// Every complete response is framed; the rest, if any are waiting, is
    /// still to be read.
    Open,
    /// The upstream closes its connection after the last one framed.
    Closed,
    /// A response that cannot be framed: the connection is broken.
    Broken,
    /// The next response is an event stream whose head is complete: its
    /// body lasts until the upstream closes (`stream.rs`).
    Stream,
}

/// Frame every complete response at the start of `buf`, one per request of
/// `waiting` in order, appending each final one to `out` (and giving it to
/// `hold`, the cache's keeper). Interim responses (1xx) are not forwarded: a
/// 100 was already sent to the client by us. With `--cache on` (`marks`),
/// each carries `X-Cache: MISS`.
fn frame(
    buf: &[u8],
    waiting: &[Item],
    max_body: usize,
    marks: bool,
    out: &mut Vec<u8>,
    mut hold: impl FnMut(&[u8]),
) -> Framed {
    let mut framed = Framed {
        used: 0,
        answered: 0,
        end: Framing::Open,
    };
    while framed.answered < waiting.len() {
        let item = &waiting[framed.answered];
        match http1::parse_response(&buf[framed.used..], item.head, max_body) {
            Ok(ParsedResponse::Complete { status, len, close }) => {
                if !(100..200).contains(&status) {
                    let response = &buf[framed.used..framed.used + len];
                    hold(response);
                    let from = out.len();
                    if close && !item.closes {
                        // The upstream closes its connection, not the
                        // client's (a draining server, an HTTP/1.0 one).
                        http1::append_without_connection(out, response);
                    } else {
                        out.extend_from_slice(response);
                    }
                    if marks {
                        mark_miss(out, from);
                    }
                    framed.answered += 1;
                }
                framed.used += len;
                if close {
                    framed.end = Framing::Closed;
                    return framed;
                }
            }
            Ok(ParsedResponse::Partial) => break,
            // Only a response that cannot be framed by length is asked.
            Err(_) if stream::event_stream(&buf[framed.used..]) => {
                framed.end = Framing::Stream;
                return framed;
            }
            Err(_) => {
                framed.end = Framing::Broken;
                return framed;
            }
        }
    }
    framed
}

/// Read what the upstream sends next onto `upbuf`, by `deadline`.
async fn read_upstream(
    conn: &mut TcpStream,
    upbuf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), Failure> {
    if upbuf.capacity() - upbuf.len() < READ_CHUNK / 4 {
        upbuf.reserve(upbuf.capacity().max(READ_CHUNK));
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    let len = upbuf.len();
    let read = monoio::time::timeout(wait, conn.read(std::mem::take(upbuf).slice_mut(len..))).await;
    let (res, slice) = match read {
        Ok(r) => r,
        Err(_) => {
            // The cancelled read took the buffer; start a new one.
            *upbuf = Vec::with_capacity(READ_CHUNK);
            return Err(Failure::TimedOut);
        }
    };
    *upbuf = slice.into_inner();
    match res {
        Ok(n) if n > 0 => Ok(()),
        _ => Err(Failure::Broken),
    }
}

/// An event stream's head and the bytes of it that came with it, to the
/// client's output: the upstream's `Connection` fields replaced by
/// `Connection: close` (the client's connection ends with the stream, RFC
/// 9112 §9.6); with `--cache on` (`marks`), `X-Cache: MISS` as on every
/// answer forwarded.
fn stream_head(response: &[u8], marks: bool, out: &mut Vec<u8>) {
    let from = out.len();
    http1::append_without_connection(out, response);
    after_status_line(out, from, b"Connection: close\r\n");
    if marks {
        mark_miss(out, from);
    }
}

/// `X-Cache: MISS` after the status line of the response at `out[from..]`.
fn mark_miss(out: &mut Vec<u8>, from: usize) {
    after_status_line(out, from, b"X-Cache: MISS\r\n");
}

/// `line` after the status line of the response at `out[from..]`, past any
/// empty lines before it.
fn after_status_line(out: &mut Vec<u8>, from: usize, line: &[u8]) {
    let status = from + (out.len() - from - cache::skip_empty_lines(&out[from..]).len());
    if let Some(eol) = out[status..].iter().position(|&b| b == b'\n') {
        let at = status + eol + 1;
        out.splice(at..at, line.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const EMPTY: &str = "HTTP/1.1 204 No Content\r\n\r\n";

    fn item() -> Item {
        Item {
            start: 0,
            end: 0,
            local: false,
            idempotent: true,
            head: false,
            poisoned: None,
            closes: false,
            key: 7,
            cache: None,
            span: (0, 0),
        }
    }

    /// `buf` framed for `waiting`, without the cache; what reached the client.
    fn frame_plain(buf: &str, waiting: &[Item]) -> (Framed, String) {
        let mut out = Vec::new();
        let framed = frame(buf.as_bytes(), waiting, 1 << 20, false, &mut out, |_| {});
        (framed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_run_goes_to_one_upstream_up_to_what_is_answered_here() {
        let run = |items: &[Item], next| run_end(items, next, false);
        let four = [item(), item(), item(), item()];
        assert_eq!(run(&four, 0), 4);
        assert_eq!(run(&four, 2), 4);

        let mut local = [item(), item(), item(), item()];
        local[2].local = true;
        assert_eq!(run(&local, 0), 2, "a [[limit]] 429 is answered in its turn");

        let mut poisoned = [item(), item(), item()];
        poisoned[1].poisoned = Some(Failure::Broken);
        assert_eq!(run(&poisoned, 0), 1);

        let mut cached = [item(), item(), item()];
        cached[1].cache = Some(cache::probe(true, false, b"/", b"GET / HTTP/1.1\r\n\r\n").unwrap());
        assert_eq!(run(&cached, 0), 1, "the cache looks at it first");

        let mut keys = [item(), item(), item()];
        keys[2].key = 8;
        assert_eq!(
            run(&keys, 0),
            2,
            "hash: another key, maybe another upstream"
        );

        assert_eq!(run_end(&four, 1, true), 2, "a cache fetch goes alone");
    }

    #[test]
    fn complete_responses_are_framed_and_a_partial_one_waits() {
        let buf = format!("{OK}{EMPTY}HTTP/1.1 200 OK\r\nContent-Le");
        let (framed, out) = frame_plain(&buf, &[item(), item(), item()]);
        assert_eq!((framed.answered, framed.used), (2, OK.len() + EMPTY.len()));
        assert_eq!(framed.end, Framing::Open);
        assert_eq!(out, format!("{OK}{EMPTY}"));
    }

    #[test]
    fn an_interim_response_is_not_forwarded() {
        let buf = format!("HTTP/1.1 100 Continue\r\n\r\n{OK}");
        let (framed, out) = frame_plain(&buf, &[item()]);
        assert_eq!((framed.answered, framed.used), (1, buf.len()));
        assert_eq!(out, OK, "we sent the client its 100 ourselves");
    }

    #[test]
    fn an_upstreams_close_is_not_passed_to_a_client_that_stays() {
        let closing = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        let buf = format!("{closing}{OK}");
        let (framed, out) = frame_plain(&buf, &[item(), item()]);
        assert_eq!(framed.end, Framing::Closed);
        assert_eq!(
            (framed.answered, framed.used),
            (1, closing.len()),
            "nothing after it is read"
        );
        assert!(!out.to_ascii_lowercase().contains("connection"), "{out}");
        assert!(out.ends_with("\r\n\r\nok"));

        // The client asked to close itself: the answer says so.
        let (_, out) = frame_plain(
            closing,
            &[Item {
                closes: true,
                ..item()
            }],
        );
        assert_eq!(out, closing);
    }

    #[test]
    fn the_answer_to_a_head_is_framed_without_its_body() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let buf = format!("{head}{OK}");
        let (framed, out) = frame_plain(
            &buf,
            &[
                Item {
                    head: true,
                    ..item()
                },
                item(),
            ],
        );
        assert_eq!((framed.answered, framed.used), (2, buf.len()));
        assert_eq!(out, buf);
    }

    #[test]
    fn an_unframable_response_breaks_the_exchange_after_those_before_it() {
        let buf = format!("{OK}NOT HTTP AT ALL\r\n\r\n");
        let (framed, out) = frame_plain(&buf, &[item(), item()]);
        assert_eq!(framed.end, Framing::Broken);
        assert_eq!(framed.answered, 1);
        assert_eq!(out, OK);
    }

    #[test]
    fn an_event_stream_is_handed_over_after_the_answers_before_it() {
        let sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nretry: 1000\n\n";
        let buf = format!("{OK}{sse}");
        let (framed, out) = frame_plain(&buf, &[item(), item(), item()]);
        assert_eq!(framed.end, Framing::Stream);
        assert_eq!(
            (framed.answered, framed.used),
            (1, OK.len()),
            "the stream is not counted: the exchange hands it over"
        );
        assert_eq!(out, OK, "its head is not framed here");

        // Its head alone is enough: no event has come yet.
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        let (framed, _) = frame_plain(head, &[item()]);
        assert_eq!(framed.end, Framing::Stream);
    }

    #[test]
    fn an_answer_without_a_length_that_is_no_event_stream_is_still_broken() {
        let buf = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close";
        assert_eq!(frame_plain(buf, &[item()]).0.end, Framing::Broken);
    }

    #[test]
    fn a_streams_head_says_the_connection_closes_and_is_marked_with_the_cache() {
        let mut out = b"before".to_vec();
        stream_head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n\r\ndata: 1\n\n",
            true,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "beforeHTTP/1.1 200 OK\r\nX-Cache: MISS\r\nConnection: close\r\n\
             Content-Type: text/event-stream\r\n\r\ndata: 1\n\n"
        );
        let mut out = Vec::new();
        let head =
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/event-stream\r\n\r\n";
        stream_head(head.as_bytes(), false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            head,
            "the upstream's close, as it said it"
        );
    }

    #[test]
    fn bytes_past_the_last_answer_are_left_unframed() {
        // A response nobody asked for: the exchange sees `used` short of the
        // buffer and does not pool the connection.
        let buf = format!("{OK}{OK}");
        let (framed, _) = frame_plain(&buf, &[item()]);
        assert_eq!((framed.answered, framed.used), (1, OK.len()));
        assert!(framed.used < buf.len());
    }

    #[test]
    fn with_the_cache_on_each_answer_is_marked_a_miss_and_held_as_it_came() {
        let mut out = Vec::new();
        let mut held = Vec::new();
        let framed = frame(
            OK.as_bytes(),
            &[item()],
            1 << 20,
            true,
            &mut out,
            |r: &[u8]| held.push(r.to_vec()),
        );
        assert_eq!(framed.answered, 1);
        assert_eq!(held, [OK.as_bytes()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX-Cache: MISS\r\nContent-Length: 2\r\n\r\nok"
        );
    }

    #[test]
    fn the_miss_mark_goes_after_the_status_line_past_empty_lines() {
        let mut out = b"before".to_vec();
        out.extend_from_slice(b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
        mark_miss(&mut out, 6);
        assert_eq!(
            out,
            b"before\r\n\r\nHTTP/1.1 200 OK\r\nX-Cache: MISS\r\n\r\n"
        );
    }
}
