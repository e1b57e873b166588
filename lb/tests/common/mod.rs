//! The peers and the balancer the lb tests run: small upstreams whose
//! behaviour the test chooses (answer, echo the head, hang up without
//! answering, never answer), an upstream answering event streams whose
//! events the test sends ([`stream_peer`]), and todo-lb in-process on
//! `127.0.0.1:0`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use todo_lb::config::LbConfig;
use todo_runtime::shutdown::{self, Trigger};
use todo_runtime::{bind_reuseport, ListenerConfig};
use todo_testkit::http::read_response;

/// What a peer does with each request it reads.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// 200 with the peer's name, the request line and the head in the body.
    Echo(&'static str),
    /// Read one request, then close without answering.
    HangUp,
    /// Read requests and never answer, keeping the connection open.
    Silent,
    /// As `Echo`, each answer this many milliseconds late.
    Slow(&'static str, u64),
}

pub struct Peer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    /// While set, the peer is down: it closes every connection, new or open,
    /// without answering (health checks fail too).
    pub down: Arc<AtomicBool>,
}

pub fn peer(behaviour: Behaviour) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let down = Arc::new(AtomicBool::new(false));
    let is_down = down.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            if is_down.load(Ordering::SeqCst) {
                continue;
            }
            let counted = counted.clone();
            let is_down = is_down.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let n = match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if is_down.load(Ordering::SeqCst) {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = Vec::new();
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        // Active health checks are not counted.
                        if !head.starts_with("GET /health ") {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Behaviour::Slow(_, ms) = behaviour {
                            std::thread::sleep(Duration::from_millis(ms));
                        }
                        match behaviour {
                            Behaviour::Echo(name) | Behaviour::Slow(name, _) => {
                                let body = format!("{name}\n{head}");
                                out.extend_from_slice(
                                    format!(
                                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                        body.len()
                                    )
                                    .as_bytes(),
                                );
                            }
                            Behaviour::HangUp => return,
                            Behaviour::Silent => {}
                        }
                    }
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Peer {
        addr,
        requests,
        down,
    }
}

/// The head todo-server answers `GET /todos/changes` with: an event stream
/// whose end is the server's close.
pub const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n";

/// The first bytes of every stream [`stream_peer`] answers.
pub const RETRY: &str = "retry: 1000\n\n";

/// An upstream answering every request but its health checks with `head`
/// and [`RETRY`], then handing the connection to the test
/// ([`StreamPeer::next`]), which sends the events and closes it.
pub struct StreamPeer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    opened: mpsc::Receiver<UpstreamStream>,
}

/// One stream as its upstream sees it: the request that opened it and the
/// connection to send events on.
pub struct UpstreamStream {
    /// The request's head as the upstream read it (without the blank line).
    pub request: String,
    conn: TcpStream,
}

impl StreamPeer {
    /// The stream the next request opened (10 s at most).
    pub fn next(&self) -> UpstreamStream {
        self.opened
            .recv_timeout(Duration::from_secs(10))
            .expect("a request for a stream within 10 s")
    }

    /// The stream a request opened, if one has not been taken yet.
    pub fn opened_now(&self) -> Option<UpstreamStream> {
        self.opened.try_recv().ok()
    }
}

impl UpstreamStream {
    /// Send `text` (events, comments) on the stream at once.
    pub fn send(&mut self, text: &str) {
        self.conn.write_all(text.as_bytes()).unwrap();
    }

    /// True when the balancer closes the connection within 10 s (end of
    /// stream or reset), after whatever it still sends.
    pub fn closed(&mut self) -> bool {
        self.conn
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut b = [0u8; 1024];
        loop {
            match self.conn.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

pub fn stream_peer(head: &'static str) -> StreamPeer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let (tx, opened) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (counted, tx) = (counted.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end;
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let request = String::from_utf8_lossy(&buf[..end]).into_owned();
                if request.starts_with("GET /health ") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                counted.fetch_add(1, Ordering::SeqCst);
                if conn.write_all(format!("{head}{RETRY}").as_bytes()).is_ok() {
                    let _ = tx.send(UpstreamStream { request, conn });
                }
            });
        }
    });
    StreamPeer {
        addr,
        requests,
        opened,
    }
}

pub struct Lb {
    pub addr: SocketAddr,
    /// The admin listener's address, when the test asked for one
    /// (`config.admin`).
    pub admin: Option<SocketAddr>,
    /// The TLS listener's address, when the test asked for one
    /// (`config.listen_tls`).
    pub tls: Option<SocketAddr>,
    pub trigger: Trigger,
    pub thread: std::thread::JoinHandle<()>,
}

/// todo-lb on two cores in front of `upstreams`, checking health every
/// 200 ms at `/health`; `tune` changes the rest.
pub fn lb(upstreams: &[SocketAddr], tune: impl FnOnce(&mut LbConfig)) -> Lb {
    let mut config = LbConfig::for_tests(upstreams);
    config.cores = 2;
    config.pin = false;
    config.health_path = "/health".into();
    config.health_interval = Duration::from_millis(200);
    tune(&mut config);
    let listeners = bind_reuseport(config.listen, 2, &ListenerConfig::default()).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let tls = match config.listen_tls {
        Some(at) => bind_reuseport(at, 2, &ListenerConfig::default()).unwrap(),
        None => Vec::new(),
    };
    let tls_addr = tls.first().map(|l| l.local_addr().unwrap());
    let admin = config.admin.0.map(|a| TcpListener::bind(a).unwrap());
    let admin_addr = admin.as_ref().map(|l| l.local_addr().unwrap());
    let (trigger, shutdown) = shutdown::channel();
    let listeners = todo_lb::Listeners {
        plain: listeners,
        tls,
    };
    let thread =
        std::thread::spawn(move || todo_lb::run(config, listeners, admin, shutdown).unwrap());
    Lb {
        addr,
        admin: admin_addr,
        tls: tls_addr,
        trigger,
        thread,
    }
}

/// Responses read from `s` until `n` are complete: (status, body) each.
pub fn read_responses(s: &mut TcpStream, n: usize) -> Vec<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    (0..n)
        .map(|i| read_response(s, &mut buf).unwrap_or_else(|| panic!("closed after {i} responses")))
        .map(|r| (r.status, r.text()))
        .collect()
}

pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}
