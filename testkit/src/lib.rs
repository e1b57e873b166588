//! What the tests of every crate share (dev-only; todo-bench uses [`http`]):
//!
//! - [`capability`]: what a test needs from the machine (io_uring,
//!   network namespaces, a tmpfs): missing, the test fails unless
//!   `TODO_TEST_SKIP` names it, and the run lists the skip.
//! - [`http`]: ONE HTTP/1.1 response reader, written apart from the
//!   servers' own parser (`todo-http`) so that a parser bug cannot hide
//!   itself: framing for todo-bench's checks, whole responses for tests.
//! - [`process`]: the workspace's binaries as child processes that are
//!   ready when they say so (the `listening on ADDR` line), stopped with
//!   SIGTERM or SIGKILL, killed when dropped; [`process::wait_until`] for
//!   states a test can only observe.
//! - `services` (feature `services`): one test's slice of the real
//!   PostgreSQL, Redis and Kafka-protocol broker that `scripts/services.sh`
//!   started, a test's own broker or Redis to kill, and commands made the
//!   way a server makes them.

pub mod capability;
pub mod http;
pub mod process;
#[cfg(feature = "services")]
pub mod services;
