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
    /// How the kernel picks a listener for a new connection. Default
    /// [`Steer::Hash`].
    pub steer: Steer,
    /// SO_SNDBUF and SO_RCVBUF of the listener, which accepted sockets
    /// inherit (the kernel doubles the value for its bookkeeping); `None`
    /// leaves the kernel's autotuning (up to `net.ipv4.tcp_wmem` /
    /// `tcp_rmem`'s maximum per socket). Bounds what one connection that
    /// does not read its answers holds in kernel memory.
    pub socket_buffer: Option<usize>,
}

/// Connection steering within the SO_REUSEPORT group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Steer {
    /// The kernel's hash of the 4-tuple (spreads connections evenly).
    #[default]
    Hash,
    /// The listener of the CPU that received the connection's SYN (classic
    /// BPF, SO_ATTACH_REUSEPORT_CBPF): the connection's packets and its core
    /// then share a CPU. Only as even as the NIC's receive queues spread
    /// flows; on loopback the receiving CPU is the client's.
    Cpu,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            backlog: 4096,
            nodelay: true,
            steer: Steer::Hash,
            socket_buffer: None,
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
    if config.steer == Steer::Cpu {
        // The program belongs to the group: attaching it once steers all.
        attach_cpu_steering(&listeners[0], listeners.len())?;
    }
    Ok(listeners)
}

/// Attach `A = cpu % sockets; return A`: the kernel then hands each new
/// connection to the listener whose index in the group is that number (this
/// process's listeners were bound in core order, so index = core).
fn attach_cpu_steering(listener: &TcpListener, sockets: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let code = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        code(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        ),
        code(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, sockets as u32),
        code(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind_one(addr: SocketAddr, config: &ListenerConfig) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if config.nodelay {
        socket.set_nodelay(true)?;
    }
    if let Some(bytes) = config.socket_buffer {
        // Before listen(): the receive window's scale is fixed at the
        // handshake from the buffer then.
        socket.set_send_buffer_size(bytes)?;
        socket.set_recv_buffer_size(bytes)?;
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

    #[test]
    fn cpu_steering_attaches_and_accepts() {
        let config = ListenerConfig {
            steer: Steer::Cpu,
            ..ListenerConfig::default()
        };
        let ls = bind_reuseport("127.0.0.1:0".parse().unwrap(), 2, &config).unwrap();
        // A connection lands on one of the group's listeners.
        let _c = std::net::TcpStream::connect(ls[0].local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let accepted = ls.iter().filter(|l| l.accept().is_ok()).count();
        assert_eq!(accepted, 1);
    }
}
