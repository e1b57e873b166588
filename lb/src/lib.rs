//! The front tier.
//!
//! - [`listener`]: SO_REUSEPORT sharding — one listening socket per core on the
//!   same address, so the kernel spreads connections across cores with no
//!   proxy hop and no shared accept queue. `todo-server` embeds it (the
//!   "embedded balancer" of the one-box deployment).

pub mod listener;

pub use listener::{bind_reuseport, ListenerConfig};
