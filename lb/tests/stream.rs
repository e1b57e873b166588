//! Server-sent event streams through todo-lb over real sockets: an upstream
//! answering `text/event-stream` with no length (its end is its close, as
//! todo-server's `GET /todos/changes`), whose events the test sends one by
//! one (`common::stream_peer`). Each event is read at the client before the
//! next is sent, so nothing passes unless it is relayed as it comes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{lb, peer, stream_peer, Behaviour, StreamPeer, RETRY, STREAM_HEAD};
use todo_lb::config::{Admin, Balance, Switch};
use todo_testkit::http::scrape;
use todo_testkit::process::wait_until;

const EVENT_1: &str =
    "id: 17-7269863457890123\nevent: todo\ndata: {\"op\":\"created\",\"todo\":{\"id\":17}}\n\n";
const EVENT_2: &str =
    "id: 18-7269863457890124\nevent: todo\ndata: {\"op\":\"deleted\",\"todo\":{\"id\":17}}\n\n";
const HEARTBEAT: &str = ": keep-alive\n\n";

/// What an EventSource sends when it reconnects.
const RECONNECT: &str = "GET /todos/changes HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2ln\r\nLast-Event-ID: 17-7269863457890123\r\n\r\n";

/// A request the edge cache may answer: no `Authorization`, no
/// `Cache-Control`.
const PUBLIC: &str = "GET /todos/changes HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n";

/// A client of a stream through the balancer: its connection and what it
/// read that the test has not looked at yet.
struct Client {
    s: TcpStream,
    /// The answer's head, up to its blank line.
    head: String,
    unread: Vec<u8>,
}

impl Client {
    /// Send `request` to `at` and read the answer's head.
    fn open(at: SocketAddr, request: &str) -> Client {
        let mut s = TcpStream::connect(at).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut client = Client {
            s,
            head: String::new(),
            unread: Vec::new(),
        };
        let end = client.read_until(b"\r\n\r\n");
        client.head = String::from_utf8(client.unread[..end].to_vec()).unwrap();
        client.unread.drain(..end + 4);
        client
    }

    /// Where `needle` is in what is unread, reading until it comes.
    fn read_until(&mut self, needle: &[u8]) -> usize {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(at) = self.unread.windows(needle.len()).position(|w| w == needle) {
                return at;
            }
            match self.s.read(&mut chunk) {
                Ok(0) => panic!(
                    "closed before {:?}; unread {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.unread)
                ),
                Ok(n) => self.unread.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("{e} before {:?}", String::from_utf8_lossy(needle)),
            }
        }
    }

    /// Read `text`: it must be exactly what comes next.
    fn expect(&mut self, text: &str) {
        let at = self.read_until(text.as_bytes());
        assert_eq!(
            at,
            0,
            "before {text:?}: {:?}",
            String::from_utf8_lossy(&self.unread[..at])
        );
        self.unread.drain(..text.len());
    }

    /// Read until the balancer ends the connection (10 s at most); what
    /// came before its end.
    fn read_to_end(&mut self) -> String {
        let mut chunk = [0u8; 4096];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.unread.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("not closed: {e}"),
            }
        }
        String::from_utf8(std::mem::take(&mut self.unread)).unwrap()
    }

    /// The value of header `name` in the answer's head.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A client's stream and its upstream side, both open, the retry line read.
fn open_stream(
    at: SocketAddr,
    upstream: &StreamPeer,
    request: &str,
) -> (Client, common::UpstreamStream) {
    let mut client = Client::open(at, request);
    let up = upstream.next();
    client.expect(RETRY);
    (client, up)
}

#[test]
fn events_reach_the_client_as_they_are_sent() {
    let up = stream_peer(STREAM_HEAD);
    let lb = lb(&[up.addr], |_| {});
    let (mut client, mut upstream) = open_stream(lb.addr, &up, RECONNECT);
    assert!(
        client.head.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        client.head
    );
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    assert_eq!(client.header("connection"), Some("close"));
    assert_eq!(client.header("cache-control"), Some("no-store"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    assert_eq!(client.header("content-length"), None);
    assert_eq!(client.header("transfer-encoding"), None);
    // The upstream keeps its connection open throughout: each event must
    // come through on its own.
    upstream.send(EVENT_1);
    client.expect(EVENT_1);
    upstream.send(HEARTBEAT);
    client.expect(HEARTBEAT);
    // An event split across writes comes as it is written.
    let (first, rest) = EVENT_2.split_at(20);
    upstream.send(first);
    client.expect(first);
    upstream.send(rest);
    client.expect(rest);
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn the_request_reaches_the_upstream_with_its_headers_unchanged() {
    let up = stream_peer(STREAM_HEAD);
    let lb = lb(&[up.addr], |_| {});
    let (_client, upstream) = open_stream(lb.addr, &up, RECONNECT);
    let sent = RECONNECT.trim_end_matches("\r\n");
    assert!(
        upstream.request.starts_with(sent),
        "every header as the client sent it, in its order:\n{}",
        upstream.request
    );
    assert!(upstream
        .request
        .contains("\r\nX-Forwarded-For: 127.0.0.1\r\n"));
    assert!(upstream.request.contains("\r\nX-Request-Id: "));
}

#[test]
fn with_the_cache_on_each_client_gets_a_stream_of_its_own() {
    // Even an upstream that calls its stream cacheable: a stream has no end
    // to hold.
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: public, max-age=60\r\n\r\n";
    let up = stream_peer(head);
    let lb = lb(&[up.addr], |c| c.cache = Switch::On);
    let (mut a, mut up_a) = open_stream(lb.addr, &up, PUBLIC);
    assert_eq!(a.header("x-cache"), Some("MISS"));
    assert_eq!(a.header("connection"), Some("close"));
    // A second client while the first stream is open, on either core.
    let (mut b, mut up_b) = open_stream(lb.addr, &up, PUBLIC);
    up_a.send(EVENT_1);
    up_b.send(EVENT_2);
    a.expect(EVENT_1);
    b.expect(EVENT_2);
    // And one after the first has ended.
    drop(up_a);
    assert_eq!(a.read_to_end(), "");
    let (mut c, mut up_c) = open_stream(lb.addr, &up, PUBLIC);
    up_c.send(EVENT_1);
    c.expect(EVENT_1);
    assert_eq!(up.requests.load(Ordering::SeqCst), 3, "none from the cache");
    drop(up_b);
    assert_eq!(b.read_to_end(), "");
}

#[test]
fn heartbeats_keep_a_stream_past_the_upstream_timeout_and_silence_ends_it() {
    let up = stream_peer(STREAM_HEAD);
    let idle = Duration::from_millis(1000);
    let lb = lb(&[up.addr], |c| {
        c.upstream_timeout = Duration::from_millis(100);
        c.stream_idle = idle;
    });
    let (mut client, mut upstream) = open_stream(lb.addr, &up, RECONNECT);
    // Heartbeats 2.5 upstream time-outs apart, 15 of them in all: the pace
    // of the stream under test, not a wait for anything.
    let mut last = Instant::now();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(250));
        upstream.send(HEARTBEAT);
        client.expect(HEARTBEAT);
        last = Instant::now();
    }
    upstream.send(EVENT_1);
    client.expect(EVENT_1);
    // Then silence: the stream ends after --stream-idle, not before.
    assert_eq!(client.read_to_end(), "");
    let silent = last.elapsed();
    assert!(
        silent >= idle - Duration::from_millis(200),
        "ended after {silent:?}"
    );
    assert!(silent < Duration::from_secs(8), "ended after {silent:?}");
    assert!(upstream.closed(), "its upstream connection closes with it");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1, "never sent again");
}

#[test]
fn an_upstreams_end_ends_the_clients_connection_after_its_last_event() {
    let up = stream_peer(STREAM_HEAD);
    let other = stream_peer(STREAM_HEAD);
    let lb = lb(&[up.addr, other.addr], |c| c.balance = Balance::RoundRobin);
    let (mut client, mut upstream) = {
        let mut client = Client::open(lb.addr, RECONNECT);
        // Whichever upstream took it.
        let upstream = wait_until("a stream opened", Duration::from_secs(10), || {
            up.opened_now().or_else(|| other.opened_now())
        });
        client.expect(RETRY);
        (client, upstream)
    };
    upstream.send(EVENT_1);
    upstream.send(EVENT_2);
    drop(upstream);
    client.expect(EVENT_1);
    assert_eq!(
        client.read_to_end(),
        EVENT_2,
        "the last event, then the end"
    );
    let total = up.requests.load(Ordering::SeqCst) + other.requests.load(Ordering::SeqCst);
    assert_eq!(
        total, 1,
        "an ended stream is not sent again: the client reconnects"
    );
}

#[test]
fn a_client_that_leaves_ends_its_upstream_connection_at_once() {
    let up = stream_peer(STREAM_HEAD);
    let lb = lb(&[up.addr], |c| {
        c.admin = Admin(Some("127.0.0.1:0".parse().unwrap()));
    });
    let admin = lb.admin.unwrap();
    let label = format!("upstream=\"{}\"", up.addr);
    let (client, mut upstream) = open_stream(lb.addr, &up, RECONNECT);
    let open = format!("todo_lb_upstream_streams_open{{{label}}}");
    wait_until("one stream open", Duration::from_secs(10), || {
        (scrape(admin, "todo_lb_streams_open") == Some(1) && scrape(admin, &open) == Some(1))
            .then_some(())
    });
    // No event comes (--stream-idle is a minute): the balancer notices the
    // client's end by itself, not at its next write.
    drop(client);
    assert!(upstream.closed(), "the upstream sees the end within 10 s");
    wait_until("the stream counted ended", Duration::from_secs(10), || {
        (scrape(admin, "todo_lb_streams_open") == Some(0)
            && scrape(admin, &open) == Some(0)
            && scrape(admin, "todo_lb_streams_ended_total{by=\"client\"}") == Some(1))
        .then_some(())
    });
    assert_eq!(scrape(admin, "todo_lb_streams_total"), Some(1));
    assert_eq!(
        scrape(admin, &format!("todo_lb_upstream_streams_total{{{label}}}")),
        Some(1)
    );
}

#[test]
fn a_stream_goes_to_another_upstream_when_one_fails_before_its_head() {
    let bad = peer(Behaviour::HangUp);
    let up = stream_peer(STREAM_HEAD);
    // Round robin from the first member on each core: the first request of
    // each core goes to the one that hangs up.
    let lb = lb(&[bad.addr, up.addr], |c| {
        c.balance = Balance::RoundRobin;
        c.eject_after = 100;
    });
    let mut open = Vec::new();
    for _ in 0..4 {
        let (mut client, mut upstream) = open_stream(lb.addr, &up, RECONNECT);
        upstream.send(EVENT_1);
        client.expect(EVENT_1);
        open.push((client, upstream));
    }
    assert!(
        bad.requests.load(Ordering::SeqCst) > 0,
        "some went to it first"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 4);
}

#[test]
fn a_drain_ends_open_streams_at_once() {
    let up = stream_peer(STREAM_HEAD);
    let lb = lb(&[up.addr], |c| c.drain_timeout = Duration::from_secs(60));
    let (mut client, mut upstream) = open_stream(lb.addr, &up, RECONNECT);
    let mut lb = lb;
    lb.trigger.fire();
    // Within the 10 s read time-out, not after the 60 s drain.
    assert_eq!(client.read_to_end(), "");
    assert!(upstream.closed());
    lb.thread.join().unwrap();
}
