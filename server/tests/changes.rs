//! The change feed, `GET /todos/changes` (docs/architecture.md §14), over
//! real sockets, in both modes (the embedded default; two distributed
//! servers with the worker, PostgreSQL, Redis and the broker) and through
//! todo-lb:
//!
//! - each change is one event, `id: VERSION-ID`, in position order, the same
//!   positions on every server; anonymous subscribers never get a private
//!   todo, a flip to private is withdrawn by id alone, a flip to public
//!   arrives as a create; the owner's `mine=true` feed has her own;
//! - resuming with `Last-Event-ID` (or `since=`) replays exactly what was
//!   missed, in order; from before the history, one `event: reset`;
//! - heartbeats; a subscriber that does not read is closed at its bound
//!   while another keeps receiving;
//! - a rolling restart of the servers behind todo-lb: a subscriber that
//!   resumes with its last id loses and repeats no event.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::api::request_with;
use common::deploy::{get, runtime, token, Deployment, SECRET, VISIBLE_WITHIN};
use common::read_response;
use sonic_rs::JsonValueTrait;

/// One server-sent event, or a comment line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    Event {
        id: String,
        event: String,
        data: String,
    },
    Comment(String),
    /// The `retry:` field alone.
    Retry(u64),
}

/// A subscriber: one connection reading a stream.
struct Subscriber {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The last event id received.
    last_id: Option<String>,
}

/// What opening a feed gave: a stream, or a refusal's status and body.
enum Opened {
    Stream(Subscriber),
    Refused(u16, String),
}

impl Subscriber {
    fn open(at: SocketAddr, path: &str, token: Option<&str>, last_id: Option<&str>) -> Opened {
        let mut s = TcpStream::connect(at).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut headers = vec![("Accept", "text/event-stream")];
        if let Some(id) = last_id {
            headers.push(("Last-Event-ID", id));
        }
        s.write_all(&request_with("GET", path, token, None, &headers))
            .unwrap();
        // The head, byte by byte up to the blank line: the body never ends.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => panic!("{path}: the head ended early ({other:?}): {head:?}"),
            }
        }
        let head = String::from_utf8(head).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        if status != 200 {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .expect("a refusal has a length");
            let mut body = vec![0u8; length];
            s.read_exact(&mut body).unwrap();
            return Opened::Refused(status, String::from_utf8_lossy(&body).to_string());
        }
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(lower.contains("cache-control: no-store"), "{head}");
        Opened::Stream(Subscriber {
            stream: s,
            buf: Vec::new(),
            last_id: last_id.map(str::to_string),
        })
    }

    fn subscribe(at: SocketAddr, path: &str, token: Option<&str>) -> Subscriber {
        match Subscriber::open(at, path, token, None) {
            Opened::Stream(s) => s,
            Opened::Refused(status, body) => panic!("{path}: {status} {body}"),
        }
    }

    /// The next frame; `None` when the stream ended.
    fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("events are UTF-8");
                let frame = parse_frame(text.trim_end_matches('\n'));
                if let Frame::Event { id, .. } = &frame {
                    self.last_id = Some(id.clone());
                }
                return Some(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }

    /// The next event (comments and `retry:` skipped); `None` at the end.
    fn event(&mut self) -> Option<(String, String, String)> {
        loop {
            match self.next()? {
                Frame::Event { id, event, data } => return Some((id, event, data)),
                Frame::Comment(_) | Frame::Retry(_) => {}
            }
        }
    }

    /// The next `todo` event: its id, op and data.
    fn change(&mut self) -> Change {
        let (id, event, data) = self.event().expect("a change before the stream ends");
        assert_eq!(event, "todo", "{data}");
        let v: sonic_rs::Value = sonic_rs::from_str(&data).unwrap();
        Change {
            position: id,
            op: v["op"].as_str().unwrap().to_string(),
            todo: v["todo"]["id"].as_u64().unwrap(),
            data,
        }
    }
}

#[derive(Debug, Clone)]
struct Change {
    position: String,
    op: String,
    todo: u64,
    data: String,
}

fn parse_frame(text: &str) -> Frame {
    if let Some(comment) = text.strip_prefix(':') {
        return Frame::Comment(comment.trim().to_string());
    }
    let (mut id, mut event, mut data, mut retry) = (None, None, String::new(), None);
    for line in text.lines() {
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push_str(value),
            "retry" => retry = value.parse().ok(),
            other => panic!("unknown field {other:?} in {text:?}"),
        }
    }
    match (id, retry) {
        (None, Some(ms)) => Frame::Retry(ms),
        (Some(id), _) => Frame::Event {
            id,
            event: event.unwrap_or_else(|| "message".into()),
            data,
        },
        (None, None) => panic!("a frame without id: {text:?}"),
    }
}

/// The next `n` changes, checked to be in strictly rising positions.
fn take(s: &mut Subscriber, n: usize, name: &str) -> Vec<Change> {
    let got: Vec<Change> = (0..n).map(|_| s.change()).collect();
    let p: Vec<(u64, u64)> = got.iter().map(|c| position(&c.position)).collect();
    assert!(
        p.windows(2).all(|w| w[0] < w[1]),
        "{name}: positions in order: {p:?}"
    );
    got
}

/// The todos of `changes`, sorted: writes to different todos may be
/// applied in any order on the distributed path (they travel in different
/// partitions), so the feed's order is the order they were applied in.
fn ids(changes: &[Change]) -> Vec<u64> {
    sorted(changes.iter().map(|c| c.todo))
}

fn sorted(ids: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = ids.into_iter().collect();
    v.sort_unstable();
    v
}

/// `VERSION-ID` as numbers.
fn position(text: &str) -> (u64, u64) {
    let (v, id) = text.split_once('-').expect("VERSION-ID");
    (v.parse().unwrap(), id.parse().unwrap())
}

/// Write through server `n`: the todo id of its 202.
fn write(d: &Deployment, n: usize, method: &str, path: &str, who: &str, body: &str) -> u64 {
    let token = token(SECRET, who, 3600);
    d.write(n, method, path, &token, Some(body)).1
}

fn create(d: &Deployment, n: usize, who: &str, title: &str, public: bool) -> u64 {
    let body = format!(r#"{{"title":"{title}","public":{public}}}"#);
    write(d, n, "POST", "/todos", who, &body)
}

/// Every address a subscriber may come through, with a name.
fn entrances(d: &Deployment) -> Vec<(String, SocketAddr)> {
    let mut at: Vec<(String, SocketAddr)> = d
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("server {i}"), s.addr))
        .collect();
    at.push(("todo-lb".into(), d.lb));
    at
}

/// The shape of events, their positions, and who gets what, on every
/// entrance at once (a write on any server reaches subscribers of all).
fn who_gets_what(d: &Deployment) {
    let ann = token(SECRET, "ann", 3600);
    let mut anon: Vec<(String, Subscriber)> = entrances(d)
        .into_iter()
        .map(|(name, at)| (name, Subscriber::subscribe(at, "/todos/changes", None)))
        .collect();
    let mut mine: Vec<(String, Subscriber)> = entrances(d)
        .into_iter()
        .map(|(name, at)| {
            let s = Subscriber::subscribe(at, "/todos/changes?mine=true", Some(&ann));
            (name, s)
        })
        .collect();
    let bens: Vec<(String, Subscriber)> = entrances(d)
        .into_iter()
        .map(|(name, at)| {
            (
                name,
                Subscriber::subscribe(at, "/todos/changes?owner=ben", None),
            )
        })
        .collect();
    let mut bens = bens;

    // Public, by ann on the first server.
    let public = create(d, 0, "ann", "FeedPublic", true);
    // Private, by ann on the last: anonymous subscribers must never get it.
    let private = create(d, d.servers.len() - 1, "ann", "FeedSecret", false);
    // Public again, so an anonymous subscriber's next event after the
    // first is this one, not the private one.
    let marker = create(d, 0, "ann", "FeedMarker", true);
    let by_ben = create(d, 0, "ben", "BensOwn", true);

    let mut positions: Option<Vec<String>> = None;
    for (name, s) in &mut anon {
        let got = take(s, 3, name);
        assert_eq!(
            ids(&got),
            sorted([public, marker, by_ben]),
            "{name}: anonymous sees the public creates only"
        );
        assert!(got.iter().all(|c| c.op == "created"), "{name}: {got:?}");
        let first = got.iter().find(|c| c.todo == public).unwrap();
        assert!(
            first.data.contains("\"title\":\"FeedPublic\""),
            "{name}: {}",
            first.data
        );
        assert!(
            first.data.contains("\"public\":true"),
            "{name}: {}",
            first.data
        );
        assert_eq!(
            position(&first.position).1,
            public,
            "{name}: a position's index is the todo's id"
        );
        let texts: Vec<String> = got.iter().map(|c| c.position.clone()).collect();
        match &positions {
            None => positions = Some(texts),
            Some(first) => assert_eq!(first, &texts, "{name}: the same positions everywhere"),
        }
    }
    for (name, s) in &mut mine {
        let got = take(s, 3, name);
        assert_eq!(
            ids(&got),
            sorted([public, private, marker]),
            "{name}: the owner sees her own, private too"
        );
        let secret = got.iter().find(|c| c.todo == private).unwrap();
        assert!(secret.data.contains("FeedSecret") && secret.data.contains("\"public\":false"));
    }
    for (name, s) in &mut bens {
        let c = s.change();
        assert_eq!(
            (c.todo, c.op.as_str()),
            (by_ben, "created"),
            "{name}: owner=ben narrows"
        );
    }

    // ann makes the public one private: withdrawn from anonymous
    // subscribers by id alone; her own feed has the update. And the
    // private one public: it arrives as a create.
    write(
        d,
        1 % d.servers.len(),
        "PUT",
        &format!("/todos/{public}"),
        "ann",
        r#"{"public":false,"title":"NowHidden"}"#,
    );
    write(
        d,
        0,
        "PUT",
        &format!("/todos/{private}"),
        "ann",
        r#"{"public":true}"#,
    );
    for (name, s) in &mut anon {
        let got = take(s, 2, name);
        let hidden = got
            .iter()
            .find(|c| c.todo == public)
            .expect("the flip to private");
        assert_eq!(hidden.op, "deleted", "{name}");
        let withdrawn = format!(r#"{{"op":"deleted","todo":{{"id":{public}}}}}"#);
        assert_eq!(hidden.data, withdrawn, "{name}: the id and nothing else");
        let shown = got
            .iter()
            .find(|c| c.todo == private)
            .expect("the flip to public");
        assert_eq!(shown.op, "created", "{name}");
        assert!(shown.data.contains("FeedSecret"), "{name}: {}", shown.data);
    }
    for (name, s) in &mut mine {
        let got = take(s, 2, name);
        let hidden = got
            .iter()
            .find(|c| c.todo == public)
            .expect("the flip to private");
        assert_eq!(hidden.op, "updated", "{name}");
        assert!(hidden.data.contains("NowHidden"), "{name}: {}", hidden.data);
        let shown = got
            .iter()
            .find(|c| c.todo == private)
            .expect("the flip to public");
        assert_eq!(shown.op, "updated", "{name}");
    }
    // A delete is an id alone for everyone who saw the todo.
    write(d, 0, "DELETE", &format!("/todos/{marker}"), "ann", "");
    for (name, s) in anon.iter_mut().chain(mine.iter_mut()) {
        let gone = s.change();
        assert_eq!((gone.todo, gone.op.as_str()), (marker, "deleted"), "{name}");
        assert!(!gone.data.contains("FeedMarker"), "{name}: {}", gone.data);
    }
    // Bad requests are refused as lists refuse them.
    let refused = |path: &str, token: Option<&str>| match Subscriber::open(d.lb, path, token, None)
    {
        Opened::Refused(status, _) => status,
        Opened::Stream(_) => panic!("{path}: a stream"),
    };
    assert_eq!(refused("/todos/changes?limit=3", None), 400);
    assert_eq!(refused("/todos/changes?since=yesterday", None), 400);
    assert_eq!(refused("/todos/changes?mine=true", None), 401);
    assert_eq!(
        refused("/todos/changes?mine=true&owner=ann", Some(&ann)),
        400
    );
}

/// Resume after a disconnect: exactly the missed changes, in order, then
/// live ones; with `since=` too; and one reset from before the history.
fn resume_replays_exactly_what_was_missed(d: &Deployment, history: usize) {
    for (name, at) in entrances(d) {
        let mut s = Subscriber::subscribe(at, "/todos/changes", None);
        let first = create(d, 0, "ann", "BeforeTheBreak", true);
        // A server whose follower was behind may still bring earlier
        // writes: they were applied after this subscriber began there.
        while s.change().todo != first {}
        let last = s.last_id.clone().unwrap();
        drop(s);
        let missed: Vec<u64> = (0..3)
            .map(|i| create(d, i % d.servers.len(), "ann", "WhileAway", true))
            .collect();
        // Hidden from anonymous readers: not replayed to them.
        create(d, 0, "ann", "PrivateWhileAway", false);
        let Opened::Stream(mut back) = Subscriber::open(at, "/todos/changes", None, Some(&last))
        else {
            panic!("{name}: resume refused");
        };
        let replayed = take(&mut back, 3, &name);
        assert_eq!(
            ids(&replayed),
            sorted(missed.clone()),
            "{name}: the missed changes, once"
        );
        let live = create(d, 0, "ann", "AfterTheBreak", true);
        assert_eq!(
            back.change().todo,
            live,
            "{name}: then live ones, none twice"
        );
        // The same with since= (as a client that stored the id would).
        let mut since = Subscriber::subscribe(at, &format!("/todos/changes?since={last}"), None);
        let again = take(&mut since, 4, &name);
        let same: Vec<&str> = again.iter().map(|c| c.position.as_str()).collect();
        let before: Vec<&str> = replayed.iter().map(|c| c.position.as_str()).collect();
        assert_eq!(same[..3], before[..], "{name}: since= replays alike");
        assert_eq!(again[3].todo, live, "{name}");
    }
    // Past the history: one reset, at a position from which the feed goes
    // on. Each server is asked once its feed has every write (on the
    // distributed path a 202 comes before the apply).
    let mut watchers: Vec<Subscriber> = d
        .servers
        .iter()
        .map(|srv| Subscriber::subscribe(srv.addr, "/todos/changes", None))
        .collect();
    let first = create(d, 0, "ann", "Old", true);
    let old = watchers[0].change();
    assert_eq!(old.todo, first);
    let mut last = 0;
    for _ in 0..history + 1 {
        last = create(d, 0, "ann", "Pushes the old one out", true);
    }
    for (srv, w) in d.servers.iter().zip(&mut watchers) {
        while w.change().todo != last {}
        let since = format!("/todos/changes?since={}", old.position);
        let mut late = Subscriber::subscribe(srv.addr, &since, None);
        let (id, event, data) = late.event().unwrap();
        assert_eq!(event, "reset", "{data}");
        assert_eq!(data, format!(r#"{{"position":"{id}"}}"#));
        // After the reset, the feed goes on from its position (bringing
        // what this server applies after it, the last server's own
        // `AfterReset` included).
        let next = create(d, 0, "ann", "AfterReset", true);
        loop {
            let c = late.change();
            assert!(position(&c.position).0 > id.parse::<u64>().unwrap());
            if c.todo == next {
                break;
            }
        }
    }
}

/// Small enough for a test to pass it in a few writes.
const HISTORY: &str = "20";

#[test]
fn the_feed_embedded() {
    let d = Deployment::embedded_with(&["--feed-history", HISTORY]);
    who_gets_what(&d);
    resume_replays_exactly_what_was_missed(&d, 20);
}

#[test]
fn the_feed_on_two_servers() {
    let rt = runtime();
    let d = Deployment::distributed_with(&rt, &["--feed-history", HISTORY]);
    who_gets_what(&d);
    resume_replays_exactly_what_was_missed(&d, 20);
}

#[test]
fn heartbeats_keep_an_idle_stream_and_a_stream_outlives_the_idle_timeout() {
    let d = Deployment::embedded_with(&[
        "--feed-heartbeat",
        "200ms",
        "--idle-timeout",
        "1s",
        "--header-timeout",
        "1s",
    ]);
    for (name, at) in entrances(&d) {
        let mut s = Subscriber::subscribe(at, "/todos/changes", None);
        assert_eq!(s.next(), Some(Frame::Retry(1000)), "{name}: retry first");
        let started = Instant::now();
        let mut beats = 0;
        while started.elapsed() < Duration::from_millis(2500) {
            match s.next() {
                Some(Frame::Comment(c)) => {
                    assert_eq!(c, "keep-alive");
                    beats += 1;
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(beats >= 5, "{name}: {beats} heartbeats in 2.5 s at 200 ms");
        let live = create(&d, 0, "ann", "StillThere", true);
        assert_eq!(
            s.change().todo,
            live,
            "{name}: past the idle timeout, still a stream"
        );
    }
}

#[test]
fn a_subscriber_that_does_not_read_is_closed_and_others_keep_receiving() {
    let d = Deployment::embedded_with(&["--feed-pending", "65536", "--socket-buffer", "4096"]);
    let server = d.servers[0].addr;
    let mut reader = Subscriber::subscribe(server, "/todos/changes", None);
    let Opened::Stream(mut sleeper) = Subscriber::open(server, "/todos/changes", None, None) else {
        panic!("refused");
    };
    // ~2.3 KB events, pipelined on one connection: far more than the bound
    // and both sockets' buffers hold.
    let ann = token(SECRET, "ann", 3600);
    let description = "x".repeat(2000);
    let body = format!(r#"{{"title":"Bulk","description":"{description}","public":true}}"#);
    let n = 400;
    let mut w = TcpStream::connect(server).unwrap();
    let one = request_with("POST", "/todos", Some(&ann), Some(&body), &[]);
    let mut created = Vec::new();
    let mut buf = Vec::new();
    for chunk in 0..n / 50 {
        for _ in 0..50 {
            w.write_all(&one).unwrap();
        }
        for _ in 0..50 {
            let r = read_response(&mut w, &mut buf).expect("an answer");
            assert_eq!(r.status, 202, "write {chunk}: {}", r.text());
            created.push(r.json()["todo_id"].as_u64().unwrap());
        }
        // The reader keeps up as it goes.
        for &id in &created[created.len() - 50..] {
            assert_eq!(reader.change().todo, id);
        }
    }
    assert_eq!(created.len(), n);
    let slow = common::poll_until(VISIBLE_WITHIN, || {
        let n = todo_testkit::http::scrape(server, "todo_feed_slow_closed_total").unwrap_or(0);
        (n >= 1).then_some(n)
    });
    assert_eq!(slow, Some(1), "the one that does not read is closed, once");
    // Its stream ends (what was in the buffers, then the end).
    sleeper
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0;
    while let Some(frame) = sleeper.next() {
        if matches!(frame, Frame::Event { .. }) {
            got += 1;
        }
    }
    assert!(got < n, "the sleeper was cut before all {n} events ({got})");
    // It resumes with its last id and gets the rest.
    let last = sleeper.last_id.clone();
    let Opened::Stream(mut back) =
        Subscriber::open(server, "/todos/changes", None, last.as_deref())
    else {
        panic!("resume refused");
    };
    let rest: Vec<u64> = (got..n).map(|_| back.change().todo).collect();
    assert_eq!(rest[..], created[got..], "the rest, in order");
    let open = todo_testkit::http::scrape(server, "todo_feed_subscribers").unwrap();
    assert_eq!(open, 2, "the reader and the resumed one");
}

#[test]
fn a_rolling_restart_behind_todo_lb_loses_and_repeats_nothing() {
    let rt = runtime();
    let mut d = Deployment::distributed_with(&rt, &[]);
    let lb = d.lb;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Change>>();
    // The subscriber: through todo-lb, resuming with its last id whenever
    // its stream ends, until it has `expected` changes.
    let expected = 12;
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut last: Option<String> = None;
        let mut resumes = 0;
        while got.len() < expected {
            let opened = Subscriber::open(lb, "/todos/changes", None, last.as_deref());
            let mut s = match opened {
                Opened::Stream(s) => s,
                // No server ready behind todo-lb for a moment.
                Opened::Refused(status, _) if status >= 500 => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Opened::Refused(status, body) => panic!("{status}: {body}"),
            };
            while got.len() < expected {
                match s.event() {
                    Some((id, event, data)) => {
                        assert_eq!(event, "todo", "no reset: the history covers the restart");
                        let v: sonic_rs::Value = sonic_rs::from_str(&data).unwrap();
                        got.push(Change {
                            position: id.clone(),
                            op: v["op"].as_str().unwrap().into(),
                            todo: v["todo"]["id"].as_u64().unwrap(),
                            data,
                        });
                        last = Some(id);
                    }
                    None => {
                        resumes += 1;
                        break;
                    }
                }
            }
        }
        tx.send(got).unwrap();
        resumes
    });
    // Writes go to the server that is up; each server restarts in turn.
    let mut written = Vec::new();
    for round in 0..2 {
        for _ in 0..3 {
            written.push(create(&d, 1 - round, "ann", "Rolling", true));
        }
        d.restart(round);
        for _ in 0..3 {
            written.push(create(&d, 1 - round, "ann", "Rolling", true));
        }
        // Each server is back behind todo-lb before the other goes.
        common::wait_until("todo-lb sees both servers", VISIBLE_WITHIN, || {
            d.servers
                .iter()
                .all(|s| get(s.addr, "/readyz", None).status == 200)
                .then_some(())
        });
    }
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("every change arrives");
    let resumes = reader.join().unwrap();
    assert_eq!(
        ids(&got),
        sorted(written),
        "every change once, across {resumes} resumes"
    );
    assert!(
        resumes >= 1,
        "the subscriber's server restarted at least once"
    );
    let p: Vec<(u64, u64)> = got.iter().map(|c| position(&c.position)).collect();
    assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
}
