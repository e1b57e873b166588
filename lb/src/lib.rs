//! The front tier, and the HTTP/1.1 code both binaries are built on.
//!
//! - [`listener`]: SO_REUSEPORT sharding — one listening socket per core on the
//!   same address, so the kernel spreads connections across cores with no
//!   proxy hop and no shared accept queue. `todo-server` embeds it (the
//!   "embedded balancer" of the one-box deployment).
//! - [`limits`]: what caps the connections a process can hold (logged at
//!   start-up).
//! - [`runtime`]: one pinned monoio thread per core, io_uring or epoll.
//! - [`http1`]: request parsing and validation (RFC 9112) on httparse, and
//!   response framing for the proxy; [`response`], [`error`], [`date`]: the
//!   bytes written back.

pub mod date;
pub mod error;
pub mod http1;
pub mod limits;
pub mod listener;
pub mod response;
pub mod runtime;

pub use listener::{bind_reuseport, ListenerConfig, Steer};
