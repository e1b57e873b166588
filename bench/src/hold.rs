//! `--hold N`: open N keep-alive connections, send one request on each and
//! check its answer, keep them all open and quiet for the duration, then
//! send one more request on each to show the server kept them. For tests and
//! benchmarks of many idle connections; several processes with different
//! `--source` addresses get past one process's open-files limit and one
//! source address's ephemeral ports.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

pub struct Held {
    pub held: usize,
    pub failed: usize,
    /// Connections that answered again at the end.
    pub answered_after: usize,
    pub connect_seconds: f64,
}

fn open(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

/// Read one response (framed by todo-testkit's reader, apart from the
/// servers' parser); true when it is a 200.
fn answered(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match todo_testkit::http::frame(&buf, false) {
            Ok(Some(framed)) => return framed.status == 200,
            Ok(None) => {}
            Err(_) => return false,
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

pub fn hold(
    addr: SocketAddr,
    request: &[u8],
    count: usize,
    source: Option<IpAddr>,
    duration: Duration,
) -> Held {
    let started = Instant::now();
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        if let Ok(s) = open(addr, source) {
            conns.push(s);
        }
    }
    // Send on all, then read all: the server sees a burst, as it would.
    conns.retain_mut(|s| s.write_all(request).is_ok());
    conns.retain_mut(answered);
    let held = conns.len();
    let failed = count - held;
    let connect_seconds = started.elapsed().as_secs_f64();
    eprintln!("todo-bench: holding {held} connections ({failed} failed)");
    std::thread::sleep(duration);
    conns.retain_mut(|s| s.write_all(request).is_ok());
    let answered_after = conns.iter_mut().map(answered).filter(|&ok| ok).count();
    Held {
        held,
        failed,
        answered_after,
        connect_seconds,
    }
}
