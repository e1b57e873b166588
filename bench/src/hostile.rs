//! `--slow N` and `--unread M`: clients that cost a server without asking
//! much of it, for measuring what they take from the others.
//!
//! - slow: each of N connections sends its request one byte a second. The
//!   server's header timeout ends it (408, close); the connection is then
//!   opened again and starts over, so N stay open all along.
//! - unread: each of M connections sends pipelined requests as fast as the
//!   server takes them and never reads an answer: the server must stop
//!   reading it (back-pressure) rather than buffer without bound.
//!
//! Runs on one glommio executor for the duration, then reports what
//! happened to them. Each connection's own socket buffers are kept small
//! (16 KiB): what a client holds in its kernel is the client machine's
//! memory, and on one test machine it would otherwise count against the
//! server's share of the kernel's TCP memory.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use socket2::{Domain, Socket, Type};

/// SO_SNDBUF and SO_RCVBUF of each hostile connection, bytes.
const CLIENT_BUFFER: usize = 16 * 1024;

/// A connection with small kernel buffers (connect on loopback does not
/// wait long enough to matter to the executor).
fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_send_buffer_size(CLIENT_BUFFER)?;
    socket.set_recv_buffer_size(CLIENT_BUFFER)?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    // SAFETY: the descriptor is a connected socket this function owns and
    // hands over whole (glommio takes a socket2 of another version).
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

#[derive(Default)]
pub struct Hostile {
    /// Slow connections opened in all (first opens and reopens).
    pub slow_opened: u64,
    /// Slow connections the server ended (408 or a close).
    pub slow_ended_by_server: u64,
    /// Bytes the slow connections sent.
    pub slow_bytes: u64,
    /// Slow connections open at the end.
    pub slow_open_at_end: u64,
    /// Unread connections opened in all (first opens and reopens).
    pub unread_opened: u64,
    /// Unread connections the server closed (its send timeout).
    pub unread_ended_by_server: u64,
    /// Unread connections open at the end (still connected, not reset).
    pub unread_open_at_end: u64,
    /// Request bytes the unread connections got the server to take.
    pub unread_bytes: u64,
    pub connect_errors: u64,
}

struct Counts {
    slow_opened: Cell<u64>,
    slow_ended: Cell<u64>,
    slow_bytes: Cell<u64>,
    slow_open: Cell<u64>,
    unread_open: Cell<u64>,
    unread_opened: Cell<u64>,
    unread_ended: Cell<u64>,
    unread_bytes: Cell<u64>,
    connect_errors: Cell<u64>,
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

fn sub(c: &Cell<u64>, n: u64) {
    c.set(c.get() - n);
}

/// Run `slow` and `unread` connections against `addr` for `duration`.
pub fn run(
    addr: SocketAddr,
    request: &[u8],
    slow: usize,
    unread: usize,
    duration: Duration,
) -> Hostile {
    let request = request.to_vec();
    let handle = glommio::LocalExecutorBuilder::default()
        .name("todo-bench-hostile")
        .spawn(move || async move {
            let counts = Rc::new(Counts {
                slow_opened: Cell::new(0),
                slow_ended: Cell::new(0),
                slow_bytes: Cell::new(0),
                slow_open: Cell::new(0),
                unread_open: Cell::new(0),
                unread_opened: Cell::new(0),
                unread_ended: Cell::new(0),
                unread_bytes: Cell::new(0),
                connect_errors: Cell::new(0),
            });
            let until = Instant::now() + duration;
            let mut tasks = Vec::with_capacity(slow + unread);
            for i in 0..slow {
                let (counts, request) = (counts.clone(), request.clone());
                // Spread the byte schedules over one second.
                let offset = Duration::from_secs(1).mul_f64(i as f64 / slow.max(1) as f64);
                tasks.push(glommio::spawn_local(async move {
                    sleep(offset).await;
                    slow_one(addr, &request, until, &counts).await
                }));
            }
            for _ in 0..unread {
                let (counts, request) = (counts.clone(), request.clone());
                tasks.push(glommio::spawn_local(async move {
                    unread_one(addr, &request, until, &counts).await
                }));
            }
            sleep(until.saturating_duration_since(Instant::now())).await;
            let report = Hostile {
                slow_opened: counts.slow_opened.get(),
                slow_ended_by_server: counts.slow_ended.get(),
                slow_bytes: counts.slow_bytes.get(),
                slow_open_at_end: counts.slow_open.get(),
                unread_opened: counts.unread_opened.get(),
                unread_ended_by_server: counts.unread_ended.get(),
                unread_open_at_end: counts.unread_open.get(),
                unread_bytes: counts.unread_bytes.get(),
                connect_errors: counts.connect_errors.get(),
            };
            for t in tasks {
                drop(t.cancel());
            }
            report
        })
        .expect("starting the executor");
    handle.join().expect("the executor ran")
}

/// One slow client: a byte a second; when the server ends the connection,
/// another.
async fn slow_one(addr: SocketAddr, request: &[u8], until: Instant, counts: &Counts) {
    while Instant::now() < until {
        let Ok(mut stream) = connect(addr) else {
            add(&counts.connect_errors, 1);
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        add(&counts.slow_opened, 1);
        add(&counts.slow_open, 1);
        let mut at = 0;
        let ended = loop {
            if Instant::now() >= until {
                break false;
            }
            if stream.write_all(&request[at..=at]).await.is_err() {
                break true;
            }
            add(&counts.slow_bytes, 1);
            at = (at + 1) % request.len();
            // An answer (a 408) or a close ends this connection.
            let mut byte = [0u8; 1];
            let read =
                futures_lite::future::or(async { Some(stream.read(&mut byte).await) }, async {
                    sleep(Duration::from_secs(1)).await;
                    None
                })
                .await;
            if read.is_some() {
                break true;
            }
        };
        if !ended {
            // Still open at the end, where it is counted.
            return;
        }
        sub(&counts.slow_open, 1);
        add(&counts.slow_ended, 1);
    }
}

/// One client that sends and never reads; when the server closes it,
/// another.
async fn unread_one(addr: SocketAddr, request: &[u8], until: Instant, counts: &Counts) {
    let batch = request.repeat(64);
    while Instant::now() < until {
        let Ok(mut stream) = connect(addr) else {
            add(&counts.connect_errors, 1);
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        add(&counts.unread_opened, 1);
        add(&counts.unread_open, 1);
        loop {
            if Instant::now() >= until {
                // Still open at the end, where it is counted.
                return;
            }
            // Blocks once the server stops reading: that is the point.
            if stream.write_all(&batch).await.is_err() {
                break;
            }
            add(&counts.unread_bytes, batch.len() as u64);
        }
        sub(&counts.unread_open, 1);
        add(&counts.unread_ended, 1);
    }
}
