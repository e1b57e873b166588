//! The per-core machinery both servers run on (todo-server and todo-lb):
//!
//! ```text
//! open_files   raise RLIMIT_NOFILE, say what caps connections
//! listener     one SO_REUSEPORT socket per core on one address (+ CPU steering)
//! cores        one named, pinned thread per core running its own monoio
//!              runtime: io_uring where the kernel allows it, epoll otherwise
//! lifecycle    the accept loop of a core, one write per batch, the wait for
//!              open connections when draining, the lingering close
//! shutdown     a trigger fired by SIGTERM/SIGINT (or a test), seen by every core
//! counter      single-writer per-core counters for the metrics renderers
//! ```
//!
//! Nothing here knows about todos or HTTP; a program hands each accepted
//! connection to its own handler.

pub mod alloc;
pub mod cores;
pub mod counter;
pub mod lifecycle;
pub mod listener;
pub mod open_files;
pub mod shutdown;

pub use cores::{resolve_driver, spawn_core, Driver, DriverError};
pub use listener::{bind_reuseport, ListenerConfig, Steer};
pub use open_files::OpenFiles;
pub use shutdown::{Shutdown, Trigger};
