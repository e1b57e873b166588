//! SO_REUSEPORT listeners: one per core on one address.
//!
//! Each core accepts from its own socket; the kernel hashes each new
//! connection's 4-tuple to one of the sockets in the group. Other processes
//! that bind the same address with SO_REUSEPORT (and the same user) join the
//! group, which is what lets a new server process start beside an old one.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Listening socket settings.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Accept queue length per socket; the kernel caps it at
    /// `net.core.somaxconn`. Default 4096.
    pub backlog: i32,
    /// Set TCP_NODELAY on the listener so accepted sockets inherit it.
    /// Default true: responses are written once per batch, so Nagle only adds
    /// delay.
    pub nodelay: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            backlog: 4096,
            nodelay: true,
        }
    }
}

/// Bind `count` non-blocking SO_REUSEPORT listeners on `addr`. With port 0 the
/// first socket picks a free port and the others join it.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    config: &ListenerConfig,
) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let listener = bind_one(addr, config)?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr, config: &ListenerConfig) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if config.nodelay {
        socket.set_nodelay(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(config.backlog)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_port() {
        let ls = bind_reuseport(
            "127.0.0.1:0".parse().unwrap(),
            3,
            &ListenerConfig::default(),
        )
        .unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        // Another group member can join later (a second process would too).
        let more =
            bind_reuseport(ls[0].local_addr().unwrap(), 1, &ListenerConfig::default()).unwrap();
        assert_eq!(more[0].local_addr().unwrap().port(), port);
    }
}
