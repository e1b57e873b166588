//! A connection's life at both ends, for any program on these cores:
//! the accept loop of one core, the one write per batch, the wait for open
//! connections to finish when draining, and the lingering close that keeps a last response from
//! being destroyed by a reset.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

/// After an error that closes the connection, unread input is drained for
/// at most this long (and [`LINGER_BYTES`]).
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Connections taken straight from the accept queue after each accept
/// through io_uring, at most.
const ACCEPT_BURST: usize = 1024;

/// Accept on `listener` until `shutdown` fires, handing each connection to
/// `on_conn`; then close the listener. Accept errors (EMFILE and friends)
/// are said once a second as `{label}: accept: ...` and retried after a
/// short pause, so the connections already open keep being served.
///
/// On io_uring every accept through the ring costs a full pass of the
/// core's run queue before the next one is submitted, so under load a core
/// took a few connections a second while its accept queue held hundreds,
/// each with a request batch waiting (docs/front-tier.md, "io_uring and the
/// accept queue"). So after each ring accept, the queue is emptied with
/// plain non-blocking `accept4` calls (the listener is non-blocking and
/// this core its only reader), as epoll does.
pub async fn accept_until(
    listener: std::net::TcpListener,
    shutdown: &Shutdown,
    label: &str,
    mut on_conn: impl FnMut(TcpStream, SocketAddr),
) {
    // The queue is emptied without waiting only on a non-blocking socket.
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("{label}: listener: {e}");
        return;
    }
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{label}: listener: {e}");
            return;
        }
    };
    let mut last_error = None::<Instant>;
    loop {
        let accepted = monoio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                on_conn(stream, peer);
                if !monoio::utils::is_legacy() {
                    for _ in 0..ACCEPT_BURST {
                        match accept_queued(&listener) {
                            Ok(Some((stream, peer))) => on_conn(stream, peer),
                            Ok(None) => break,
                            // Said by the ring accept that meets it next.
                            Err(_) => break,
                        }
                    }
                }
            }
            Err(e) => {
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    eprintln!("{label}: accept: {e}");
                    last_error = Some(Instant::now());
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Closing the listener hands connections still in its accept queue to
    // another process on the same port when net.ipv4.tcp_migrate_req is 1;
    // otherwise the kernel resets them.
    drop(listener);
}

/// One connection from the accept queue of the non-blocking `listener`,
/// without waiting: `None` when the queue is empty. The socket is blocking,
/// as io_uring's own accept makes it.
fn accept_queued(listener: &TcpListener) -> io::Result<Option<(TcpStream, SocketAddr)>> {
    // SAFETY: the listener outlives this borrow of its descriptor.
    let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
    let (socket, peer) = match socket2::SockRef::from(&fd).accept() {
        Ok(accepted) => accepted,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    let peer = peer
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP peer"))?;
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    Ok(Some((stream, peer)))
}

/// A core's count of open connections, which the drain waits on (per core,
/// so a `Cell`; todo-server and todo-lb each keep one).
#[derive(Debug, Default)]
pub struct OpenCount(Cell<usize>);

impl OpenCount {
    /// A connection was accepted.
    pub fn opened(&self) {
        self.0.set(self.0.get() + 1);
    }

    /// A connection ended.
    pub fn closed(&self) {
        self.0.set(self.0.get() - 1);
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.0.get()
    }

    /// Wait until none is open or `timeout` has passed; false on time-out.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        self.count() == 0
    }
}

/// The error of [`flush_within`] when the client did not take its answers.
#[derive(Debug, thiserror::Error)]
#[error("the client did not take its answers in time")]
pub struct SendTimedOut;

/// Whether `e` is [`flush_within`]'s time-out (not a socket's own ETIMEDOUT).
pub fn is_send_timeout(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SendTimedOut>())
}

/// [`flush`], or a [`SendTimedOut`] error when the client has not taken it
/// all within `timeout` (it does not read its answers): the caller closes.
pub async fn flush_within<S: AsyncWriteRent>(
    stream: &mut S,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> io::Result<()> {
    match monoio::time::timeout(timeout, flush(stream, out)).await {
        Ok(done) => done,
        // The buffer went with the cancelled write; the connection closes.
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, SendTimedOut)),
    }
}

/// Write and clear `out`, keeping its allocation for the next batch.
pub async fn flush<S: AsyncWriteRent>(stream: &mut S, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let (res, mut buf) = stream.write_all(std::mem::take(out)).await;
    buf.clear();
    *out = buf;
    res.map(|_| ())
}

/// Half-close, then drain what the client still sends for a short while, so
/// the kernel does not answer unread input with a reset that could destroy
/// the last response in flight.
pub async fn linger<S: AsyncReadRent + AsyncWriteRent>(stream: &mut S) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = Vec::with_capacity(4096);
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let wait = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                drained += n;
                buf = b;
                buf.clear();
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cores::{block_on, resolve_driver, Driver};
    use crate::listener::{bind_reuseport, ListenerConfig};
    use std::cell::RefCell;

    /// Both drivers; without io_uring the test fails unless
    /// `TODO_TEST_SKIP` names it (todo_testkit::capability).
    fn drivers() -> Vec<Driver> {
        let mut drivers = vec![Driver::Legacy];
        let probe = resolve_driver(Driver::Uring)
            .map(|_| ())
            .map_err(|e| e.to_string());
        if todo_testkit::capability::available("io_uring", probe) {
            drivers.push(Driver::Uring);
        }
        drivers
    }

    /// `count` connections waiting in the accept queue of a new listener.
    fn queued(count: usize) -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
        let addr = "127.0.0.1:0".parse().expect("address");
        let listener = bind_reuseport(addr, 1, &ListenerConfig::default())
            .expect("bind")
            .remove(0);
        let at = listener.local_addr().expect("local address");
        let clients = (0..count)
            .map(|_| std::net::TcpStream::connect(at).expect("connect"))
            .collect();
        (listener, clients)
    }

    #[test]
    fn accept_queued_takes_each_queued_connection_and_never_waits() {
        for driver in drivers() {
            let (listener, clients) = queued(5);
            let mut expected: Vec<SocketAddr> = clients
                .iter()
                .map(|c| c.local_addr().expect("addr"))
                .collect();
            block_on(driver, async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                let mut peers = Vec::new();
                while let Some((_, peer)) = accept_queued(&listener).expect("accept") {
                    peers.push(peer);
                }
                peers.sort();
                expected.sort();
                assert_eq!(peers, expected, "{driver:?}");
                // Empty now: None at once, not a wait.
                assert!(accept_queued(&listener).expect("accept").is_none());
            })
            .expect("runtime");
        }
    }

    #[test]
    fn a_full_accept_queue_is_taken_whole_on_every_driver() {
        for driver in drivers() {
            let (listener, clients) = queued(300);
            let (trigger, shutdown) = crate::shutdown::channel();
            let trigger = RefCell::new(trigger);
            let accepted = Cell::new(0);
            block_on(driver, async {
                accept_until(listener, &shutdown, "test", |_stream, _peer| {
                    accepted.set(accepted.get() + 1);
                    if accepted.get() == clients.len() {
                        trigger.borrow_mut().fire();
                    }
                })
                .await;
            })
            .expect("runtime");
            assert_eq!(accepted.get(), clients.len(), "{driver:?}");
        }
    }
}
