//! todo-lb's proxy: one task per client connection, answering batches of
//! pipelined requests through the upstreams.
//!
//! ```text
//! conn.rs     serve, serve_tls: the TLS start and the per-client connection
//!             limit, then the loop, one batch a turn:
//!               read from the client
//!   batch.rs    -> parse EVERY complete request (todo_http::http1::parse, the
//!                  server's parser); a [[limit]] refusal is answered here (429);
//!                  rewrite each other into one forward buffer (+ X-Forwarded-For,
//!                  + X-Request-Id unless sent), with its hash key and cache probe
//!   conn.rs     -> admit them against the client's rate (429 the rest)
//!   forward.rs  -> the edge cache answers what it holds; the rest in runs: pick
//!                  an upstream (`--balance`, p2c by default), take a pooled
//!                  connection, ONE write of the run, read back as many responses
//!   retry.rs    -> a failed run: what may go to another upstream, what is 502/504
//!   conn.rs     -> ONE write of the responses to the client, in request order
//!   stream.rs   -> an answer that is an event stream (text/event-stream, ended
//!                  by the upstream's close) ends the batch: its upstream
//!                  connection is relayed to the client, read by read, until
//!                  either closes or --stream-idle passes; then the client's
//!                  connection closes too
//! state.rs    LbCore, a core's state in parts: connections, reading, request
//!             ids, limits, upstreams, edge cache
//! ```
//!
//! Data flows one way: `conn.rs` takes the core apart and hands each step
//! the parts it reads; `forward.rs` uses `batch.rs`, `retry.rs`,
//! `stream.rs` and `state.rs`; `batch.rs` uses `retry.rs` and `state.rs`;
//! `stream.rs` uses `state.rs`; `retry.rs` and `state.rs` use no other part.
//!
//! When an upstream fails before answering, the unanswered requests go to
//! another upstream if they may be sent again: idempotent ones (RFC 9110
//! §9.2.2), or any that were never written. A request that was written and
//! cannot be sent again gets 502 (504 on timeout). An upstream that ends its
//! connection with `Connection: close` did not read what followed, so that
//! is sent elsewhere too: this is what makes an upstream's rolling restart
//! invisible through the balancer. An event stream is retried so only until
//! its head arrives; once that is forwarded, the upstream's end is the
//! stream's end, and the client (EventSource) reconnects with
//! `Last-Event-ID` through the balancer to another upstream.
//!
//! Counted on the way (`metrics.rs`, `upstream_stats.rs`, this core's slots,
//! no lock): client requests per batch; per upstream, requests written,
//! failures by class, and the time from writing a run to each response,
//! taken once per read.

mod batch;
mod conn;
mod forward;
mod retry;
mod state;
mod stream;

pub use self::conn::{serve, serve_tls};
pub use self::state::{Connections, LbCore, Limits, Reading, RequestIds, Upstreams};

/// Read buffer growth step, bytes (the client's input, the upstreams'
/// answers, the forward buffer's start).
const READ_CHUNK: usize = 16 * 1024;
