//! Server-sent event streams: an upstream answer that is
//! `text/event-stream` and delimited by the upstream's close (no
//! `Content-Length`, not chunked: RFC 9112 §6.3 rule 8), relayed to the
//! client as it comes, for as long as it lasts.
//!
//! ```text
//! forward.rs  frame: a response with no length whose head is an event
//!             stream ([`event_stream`]) -> its head (+ Connection: close)
//!             and what came with it go to the client's output; the
//!             upstream connection becomes a [`Stream`], never pooled
//! conn.rs     -> ONE write of the batch's answers, then [`Stream::relay`]:
//!               upstream readable -> ONE read -> ONE write to the client
//!               client readable   -> its end (or bytes, dropped)
//!               --stream-idle without a byte from the upstream -> the end
//!             -> the client's connection closes with the stream
//! ```
//!
//! - Each upstream read that brings bytes (an event, a heartbeat comment)
//!   restarts the idle clock; `--upstream-timeout` bounds only the wait for
//!   the head. Before the head, the request is an ordinary one: a failure
//!   may send it elsewhere (`retry.rs`); after it, never.
//! - The stream's request is the last on both connections: what the client
//!   pipelined after it is not answered (its connection closes, as after a
//!   `Connection: close`), and the upstream did not read it either.
//! - Both ends are waited on for readiness only, holding no buffer, so no
//!   byte is lost when the other end wakes first (a cancelled io_uring read
//!   would lose what it read). A client that leaves is noticed at once, not
//!   at the next write; so is a drain (it shuts the client's socket for
//!   reading, `state.rs`).
//! - Only the close-delimited form is a stream: a chunked `text/event-stream`
//!   answer is framed as any chunked one (held until its last chunk, within
//!   `--max-body` and `--upstream-timeout`).
//!
//! Counted (`metrics.rs`, `upstream_stats.rs`): streams opened and ended
//! (by whom), in all and per upstream.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use todo_http::http1;

use crate::client_io::ClientIo;
use crate::metrics::{CoreMetrics, StreamEnd};
use crate::pool::{Member, PoolConfig};

use super::state::Connections;
use super::READ_CHUNK;

/// Whether the response head at the start of `buf` opens an event stream: a
/// 200 whose `Content-Type` is `text/event-stream` (any parameters), with
/// neither `Content-Length` nor `Transfer-Encoding`, so its body lasts until
/// the upstream closes. Asked only of a response that cannot be framed by
/// length (`forward.rs`), never on the way of ordinary answers.
pub fn event_stream(buf: &[u8]) -> bool {
    let mut slots = [httparse::EMPTY_HEADER; http1::HEADER_SLOTS];
    let mut head = httparse::Response::new(&mut slots);
    if !matches!(head.parse(buf), Ok(httparse::Status::Complete(_))) || head.code != Some(200) {
        return false;
    }
    let mut events = false;
    for h in head.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            return false;
        }
        if name.eq_ignore_ascii_case(b"content-type") {
            let media = h.value.split(|&b| b == b';').next().unwrap_or_default();
            events = media
                .trim_ascii()
                .eq_ignore_ascii_case(b"text/event-stream");
        }
    }
    events
}

/// An upstream connection given to one event stream for its life: out of
/// the pool, counted as an exchange in flight of its upstream (so
/// least-connections and p2c see it) until it is dropped, then closed.
pub struct Stream {
    upstream: TcpStream,
    member: Rc<Member>,
    pool: PoolConfig,
    /// `--stream-idle`: the longest the upstream may send nothing, and the
    /// longest a write to the client may take.
    idle: Duration,
}

/// What woke a relaying stream.
enum Woke {
    Upstream,
    Client,
    Idle,
}

impl Stream {
    /// `upstream`, whose answer's head has gone to the client's output, now
    /// relays that answer's body.
    pub fn new(upstream: TcpStream, member: Rc<Member>, pool: PoolConfig, idle: Duration) -> Self {
        member.stats().stream_opened();
        Stream {
            upstream,
            member,
            pool,
            idle,
        }
    }

    /// Write `out` (the batch's answers, the stream's head last), then copy
    /// the upstream to the client, one read one write, until either ends or
    /// the upstream is silent for `--stream-idle`. `scratch` takes what the
    /// client sends meanwhile (dropped). Says who ended it; the upstream
    /// connection closes here, the client's is the caller's to close.
    pub async fn relay<S: ClientIo>(
        mut self,
        client: &mut S,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        conns: &Connections,
        metrics: &CoreMetrics,
    ) -> StreamEnd {
        metrics.stream_opened();
        let end = self.pump(client, out, scratch, conns).await;
        metrics.stream_ended(end);
        end
    }

    async fn pump<S: ClientIo>(
        &mut self,
        client: &mut S,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        conns: &Connections,
    ) -> StreamEnd {
        if !self.send(client, out).await {
            return StreamEnd::Client;
        }
        let mut deadline = Instant::now() + self.idle;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let woke = monoio::select! {
                _ = self.upstream.readable(false) => Woke::Upstream,
                _ = client.wait_readable() => Woke::Client,
                _ = monoio::time::sleep(wait) => Woke::Idle,
            };
            match woke {
                Woke::Idle => return StreamEnd::Idle,
                Woke::Upstream => {
                    // Readable: the read returns at once (bytes, the end, or
                    // the error that woke it).
                    out.clear();
                    out.reserve(READ_CHUNK);
                    let read = self.upstream.read(std::mem::take(out));
                    match monoio::time::timeout(self.idle, read).await {
                        Ok((Ok(n), buf)) if n > 0 => *out = buf,
                        Ok((_, buf)) => {
                            *out = buf;
                            return StreamEnd::Upstream;
                        }
                        Err(_) => return StreamEnd::Idle,
                    }
                    deadline = Instant::now() + self.idle;
                    if !self.send(client, out).await {
                        return StreamEnd::Client;
                    }
                }
                Woke::Client => {
                    scratch.clear();
                    scratch.reserve(READ_CHUNK);
                    match monoio::time::timeout(self.idle, client.read_to(scratch)).await {
                        // Sent after a request the connection ends with:
                        // never answered.
                        Ok(Ok(n)) if n > 0 => {}
                        _ if conns.draining() => return StreamEnd::Drain,
                        _ => return StreamEnd::Client,
                    }
                }
            }
        }
    }

    /// Write `out` to the client within `--stream-idle`; false when the
    /// client is gone or does not take it.
    async fn send<S: ClientIo>(&self, client: &mut S, out: &mut Vec<u8>) -> bool {
        matches!(
            monoio::time::timeout(self.idle, client.write_from(out)).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.member.stats().stream_ended();
        // Not pooled: the connection closes as `upstream` is dropped.
        self.member.release(None, &self.pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nretry: 1000\n\n";

    #[test]
    fn a_close_delimited_200_of_text_event_stream_is_a_stream() {
        assert!(event_stream(SSE.as_bytes()));
        assert!(event_stream(
            b"HTTP/1.1 200 OK\r\ncontent-type:  Text/Event-Stream ; charset=utf-8\r\n\r\n"
        ));
        // The head alone is enough: no event has come yet.
        assert!(event_stream(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
        ));
    }

    #[test]
    fn anything_else_is_not() {
        for head in [
            // Not complete yet.
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n",
            // Framed by length: an ordinary answer.
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Not 200 (EventSource fails on any other status).
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/event-stream\r\n\r\n",
            // Another type, or none.
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-streamer\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "NOT HTTP AT ALL\r\n\r\n",
        ] {
            assert!(!event_stream(head.as_bytes()), "{head:?}");
        }
    }
}
