//! HTTP/1.1 for both programs that speak it (todo-server and todo-lb), with
//! no I/O and no todo names, so it can be tested and fuzzed alone.
//!
//! ```text
//! read buffer -> http1::parse      one request: Complete(request, used) | Partial | HttpError
//!                http1::parse_response   frame an upstream's response (todo-lb)
//! answer      -> response::append  status line, cached head, Content-Length, body
//!                response::append_error  the JSON error body of an HttpError
//! ```
//!
//! - [`http1`]: request parsing and validation (RFC 9112) on httparse, and
//!   response framing for a proxy.
//! - [`response`]: appending responses to a connection's output buffer.
//! - [`error`]: [`HttpError`], the status, code and message a client is
//!   answered with, and whether the connection closes.
//! - [`conditional`]: `ETag` and `Cache-Control` of a versioned
//!   representation, and whether `If-None-Match` names it (`304`).
//! - [`admin`]: the answer of an admin address (`/metrics`, `/livez`).
//! - [`date`]: the `Date` value and the head of a `200` JSON response,
//!   cached per core and refreshed once a second.

pub mod admin;
pub mod conditional;
pub mod date;
pub mod error;
pub mod http1;
pub mod response;

pub use date::DateCache;
pub use error::HttpError;
