//! The change feed, `GET /todos/changes` (docs/architecture.md §14): every
//! change to a todo, as server-sent events, to the subscribers of each core.
//!
//! ```text
//! embedded:     apply thread --Changes (one per batch)--> Fanout
//! distributed:  follower (todo-db thread) --Changes (one per catch-up)--> Fanout
//! Fanout --Arc<Changes>--> each core: Feed::publish
//!     -> encodes each change ONCE into its event bytes (Event)
//!     -> appends them to the core's history, evicts by size and age
//!     -> closes subscribers too far behind, sends the others what is new
//!        for them inline (waking a task only for what the socket left)
//! each subscriber's task (stream): writes the head and any replay, then
//!     what the core could not send inline (a catch-up, the rest of a
//!     partial send); ends when the client goes, is cut, or the core drains
//! heartbeat tick: a comment to every stream, the same way
//! ```
//!
//! A position is `version-id`: the state version that made the change and
//! the todo's id, so positions are ordered and the same on every server of
//! the distributed path (each server's follower may see versions grouped
//! differently, never the stamps differently). `version` alone is the end of
//! that version. A subscriber is given every event after its position,
//! none twice: resuming (`Last-Event-ID`, `since=`) from a position the
//! history still covers replays exactly what followed it; from before the
//! history it gets one `event: reset`.
//!
//! Nothing here is shared between cores: each core holds its own history
//! and its own subscribers, encodes what it sends, and needs no lock.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use todo_model::Todo;

use crate::config::ServeConfig;
use crate::metrics::CoreMetrics;
use todo_http::DateCache;

/// Where an event is in the feed: the version that made it, and the todo's
/// id within that version. Ordered as the feed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub version: u64,
    pub id: u64,
}

impl Position {
    /// The end of `version`: after each of its changes.
    pub fn end_of(version: u64) -> Position {
        Position {
            version,
            id: u64::MAX,
        }
    }

    /// `V-ID`, or `V` for the end of version `V`.
    pub fn parse(text: &str) -> Option<Position> {
        let number = |s: &str| {
            let digits = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| s.parse().ok()).flatten()
        };
        match text.split_once('-') {
            Some((v, id)) => Some(Position {
                version: number(v)?,
                id: number(id).filter(|&id| id != u64::MAX)?,
            }),
            None => Some(Position::end_of(number(text)?)),
        }
    }

    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(self.version).as_bytes());
        if self.id != u64::MAX {
            out.push(b'-');
            out.extend_from_slice(itoa::Buffer::new().format(self.id).as_bytes());
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = Vec::new();
        self.write(&mut out);
        f.write_str(std::str::from_utf8(&out).expect("digits and a dash"))
    }
}

/// One todo's change: the todo before and after it (`None`: it did not
/// exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TodoChange {
    pub at: Position,
    pub before: Option<Todo>,
    pub after: Option<Todo>,
}

/// What took the state from version `from` to version `to`, in position
/// order. `from == to` with no change says where a feed starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub from: u64,
    pub to: u64,
    pub todos: Vec<TodoChange>,
}

impl Changes {
    /// Where a feed starts: the state at `version`, nothing before it known.
    pub fn start(version: u64) -> Changes {
        Changes {
            from: version,
            to: version,
            todos: Vec::new(),
        }
    }
}

/// The sending side of every core's feed.
#[derive(Clone, Default)]
pub struct Fanout {
    cores: Vec<flume::Sender<Arc<Changes>>>,
}

impl Fanout {
    /// A fanout to `cores` cores, and each core's receiver.
    pub fn new(cores: usize) -> (Fanout, Vec<flume::Receiver<Arc<Changes>>>) {
        let (cores, receivers) = (0..cores).map(|_| flume::unbounded()).unzip();
        (Fanout { cores }, receivers)
    }

    /// Hand `changes` to every core.
    pub fn send(&self, changes: Changes) {
        let changes = Arc::new(changes);
        for core in &self.cores {
            let _ = core.send(changes.clone());
        }
    }
}

/// Who reads a feed: what narrows it, and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `mine=true`: the subscriber's own todos, private ones included.
    pub mine: bool,
    /// `owner=`, or the token's subject with `mine=true`.
    pub owner: Option<String>,
    pub category: Option<u64>,
    /// `Last-Event-ID`, else `since=`: the last event the subscriber has.
    pub since: Option<Position>,
}

impl Subscription {
    /// Whether the subscriber sees a todo in this state.
    fn sees(&self, todo: &Seen) -> bool {
        (todo.public || self.mine)
            && self.owner.as_deref().is_none_or(|o| *todo.owner == *o)
            && self.category.is_none_or(|c| todo.category == Some(c))
    }
}

/// The feed's settings (`--feed-*`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max: usize,
    pub heartbeat: Duration,
    pub history: usize,
    pub history_age: Duration,
    pub pending: usize,
    pub retry: Duration,
}

impl Settings {
    pub fn of(config: &ServeConfig) -> Settings {
        Settings {
            max: config.feed_max,
            heartbeat: config.feed_heartbeat,
            history: config.feed_history.max(1),
            history_age: config.feed_history_age,
            pending: config.feed_pending,
            retry: config.feed_retry,
        }
    }
}

/// What a subscriber's filter asks of a todo's state.
struct Seen {
    owner: Box<str>,
    public: bool,
    category: Option<u64>,
}

impl Seen {
    fn of(todo: &Todo) -> Seen {
        Seen {
            owner: todo.owner.as_str().into(),
            public: todo.public,
            category: todo.category_id,
        }
    }
}

/// One change as this core sends it: its event in each form a subscriber
/// may be sent, encoded once.
struct Event {
    at: Position,
    arrived: Instant,
    before: Option<Seen>,
    after: Option<Seen>,
    /// The todo came into the subscriber's view (or into being).
    created: Bytes,
    /// It changed in view.
    updated: Bytes,
    /// It left the view (or was deleted): its id only.
    deleted: Bytes,
    /// Bytes of the history up to this event, counted in `updated`'s size:
    /// how far behind a subscriber is.
    end: u64,
}

impl Event {
    fn encode(change: &TodoChange, arrived: Instant, end: u64) -> Event {
        let frame = |op: &str, todo: &[u8]| {
            let mut out = Vec::with_capacity(todo.len() + 80);
            out.extend_from_slice(b"id: ");
            change.at.write(&mut out);
            out.extend_from_slice(b"\nevent: todo\ndata: {\"op\":\"");
            out.extend_from_slice(op.as_bytes());
            out.extend_from_slice(b"\",\"todo\":");
            out.extend_from_slice(todo);
            out.extend_from_slice(b"}\n\n");
            Bytes::from(out)
        };
        let mut json = Vec::new();
        if let Some(todo) = &change.after {
            todo_model::snapshot::render_todo(todo, &mut json);
        }
        let mut id = Vec::with_capacity(32);
        id.extend_from_slice(b"{\"id\":");
        id.extend_from_slice(itoa::Buffer::new().format(change.at.id).as_bytes());
        id.push(b'}');
        let updated = frame("updated", &json);
        Event {
            at: change.at,
            arrived,
            before: change.before.as_ref().map(Seen::of),
            after: change.after.as_ref().map(Seen::of),
            created: frame("created", &json),
            end: end + updated.len() as u64,
            updated,
            deleted: frame("deleted", &id),
        }
    }

    /// This event as `sub` is sent it, if it sees the change at all: a
    /// todo entering its view is created, one leaving it deleted.
    fn for_subscriber(&self, sub: &Subscription) -> Option<&Bytes> {
        let was = self.before.as_ref().is_some_and(|s| sub.sees(s));
        let is = self.after.as_ref().is_some_and(|s| sub.sees(s));
        match (was, is) {
            (false, true) => Some(&self.created),
            (true, true) => Some(&self.updated),
            (true, false) => Some(&self.deleted),
            (false, false) => None,
        }
    }
}

/// The core's recent events.
struct History {
    /// Set by the first [`Changes`]: a distributed server's follower has
    /// not loaded the state before.
    started: bool,
    /// The state version the feed has reached.
    version: u64,
    /// Every change after this position is in `events`.
    floor: Position,
    events: VecDeque<Rc<Event>>,
    /// The number of `events[0]` in the core's sequence of events.
    first_seq: u64,
    /// `end` of the last event evicted.
    base: u64,
}

impl History {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }

    fn end(&self) -> u64 {
        self.events.back().map_or(self.base, |e| e.end)
    }

    /// Bytes of the history before event `seq`; `None` when events before
    /// it were evicted.
    fn end_before(&self, seq: u64) -> Option<u64> {
        match seq.checked_sub(self.first_seq)? {
            0 => Some(self.base),
            n => self.events.get(n as usize - 1).map(|e| e.end),
        }
    }

    fn evict_one(&mut self) {
        if let Some(e) = self.events.pop_front() {
            self.floor = e.at;
            self.base = e.end;
            self.first_seq += 1;
        }
    }

    /// Start over at `version`, knowing nothing of what came before it.
    fn restart(&mut self, version: u64) {
        self.base = self.end();
        self.first_seq = self.next_seq();
        self.events.clear();
        self.version = version;
        self.floor = Position::end_of(version);
        self.started = true;
    }
}

/// A subscriber as the core sees it: its view and how far it has been
/// sent, kept here so the core can send to it without waking its task.
struct Slot {
    waker: Option<Waker>,
    view: Subscription,
    /// The next event of the history to look at.
    next_seq: u64,
    /// The position the subscriber has: only events after it are sent.
    at: Position,
    /// The heartbeat tick last answered.
    tick: u64,
    /// Bytes an inline send could not finish: the task writes them first.
    unsent: Option<Bytes>,
    /// The heartbeat tick at which the task's write under way began.
    writing_since: Option<u64>,
    /// Shut down by the core (slow, or the feed restarted).
    cut: bool,
}

impl Slot {
    /// What to write next: the events after `at` this subscriber sees (up
    /// to a chunk), else a heartbeat if one is due. `Err` when events it
    /// needs were evicted (it fell too far behind).
    fn gather(&mut self, h: &History, tick: u64) -> Result<Option<(Bytes, u64)>, ()> {
        if self.next_seq < h.first_seq {
            return Err(());
        }
        let mut one: Option<Bytes> = None;
        let mut many: Vec<u8> = Vec::new();
        let mut events = 0;
        let start = (self.next_seq - h.first_seq) as usize;
        for e in h.events.range(start..) {
            self.next_seq += 1;
            if e.at <= self.at {
                continue;
            }
            self.at = e.at;
            let Some(bytes) = e.for_subscriber(&self.view) else {
                continue;
            };
            events += 1;
            match one.take() {
                None if many.is_empty() => one = Some(bytes.clone()),
                first => {
                    if let Some(first) = first {
                        many.extend_from_slice(&first);
                    }
                    many.extend_from_slice(bytes);
                }
            }
            if many.len() >= WRITE_CHUNK {
                break;
            }
        }
        let beat = tick != self.tick;
        self.tick = tick;
        Ok(match (one, many.is_empty()) {
            (Some(b), _) => Some((b, 1)),
            (None, false) => Some((Bytes::from(many), events)),
            (None, true) if beat => Some((Bytes::from_static(HEARTBEAT), 0)),
            (None, true) => None,
        })
    }

    /// Whether the core may send to it inline: its task is not writing and
    /// has nothing left over.
    fn idle(&self) -> bool {
        !self.cut && self.writing_since.is_none() && self.unsent.is_none()
    }
}

/// Send `bytes` on `fd` now if the socket takes them: how many it took,
/// or `Err` when the connection is gone. Never blocks.
fn send_now(fd: RawFd, bytes: &[u8]) -> Result<usize, ()> {
    // SAFETY: `fd` is the socket of a live subscriber task on this core
    // (its slot is removed before the socket is closed), and `bytes` is
    // valid for its length.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    match io::Error::last_os_error().kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
        _ => Err(()),
    }
}

/// One core's change feed.
pub struct Feed {
    settings: Settings,
    history: RefCell<History>,
    subscribers: RefCell<HashMap<RawFd, Slot>>,
    /// Heartbeats so far.
    tick: Cell<u64>,
    closing: Cell<bool>,
}

/// Why a subscription is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The follower has not loaded the state yet.
    Starting,
    /// `--feed-max` subscribers on this core.
    Full,
}

const HEARTBEAT: &[u8] = b": keep-alive\n\n";
/// Most bytes of events gathered into one write.
const WRITE_CHUNK: usize = 64 * 1024;

impl Feed {
    /// A feed at `version` (`None`: not started; the first [`Changes`]
    /// starts it).
    pub fn new(settings: Settings, version: Option<u64>) -> Feed {
        let mut history = History {
            started: false,
            version: 0,
            floor: Position::end_of(0),
            events: VecDeque::new(),
            first_seq: 0,
            base: 0,
        };
        if let Some(v) = version {
            history.restart(v);
        }
        Feed {
            settings,
            history: RefCell::new(history),
            subscribers: RefCell::default(),
            tick: Cell::new(0),
            closing: Cell::new(false),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether one more subscriber may start now.
    pub fn admit(&self) -> Result<(), Refusal> {
        if !self.history.borrow().started {
            return Err(Refusal::Starting);
        }
        if self.subscribers.borrow().len() >= self.settings.max {
            return Err(Refusal::Full);
        }
        Ok(())
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.borrow().len()
    }

    /// Take in the changes of one batch or catch-up: encode, keep, wake.
    pub fn publish(&self, changes: &Changes, metrics: &CoreMetrics) {
        let now = Instant::now();
        {
            let mut h = self.history.borrow_mut();
            if !h.started || changes.from != h.version {
                // The first changes, or a gap (a follower that reloaded):
                // nothing before `from` can be replayed. Subscribers resume
                // and are told to reset.
                if h.started {
                    self.cut_all();
                }
                h.restart(changes.from);
            }
            for change in &changes.todos {
                if change.at <= h.floor || h.events.back().is_some_and(|e| change.at <= e.at) {
                    // Positions only go forward; one that does not is a bug
                    // upstream, and replaying it would break the order.
                    continue;
                }
                let end = h.end();
                h.events.push_back(Rc::new(Event::encode(change, now, end)));
            }
            h.version = changes.to;
            while h.events.len() > self.settings.history {
                h.evict_one();
            }
        }
        self.evict_old(now);
        self.deliver_all(metrics);
    }

    fn evict_old(&self, now: Instant) {
        let mut h = self.history.borrow_mut();
        while h
            .events
            .front()
            .is_some_and(|e| now.duration_since(e.arrived) > self.settings.history_age)
        {
            h.evict_one();
        }
    }

    /// Send every subscriber what is new for it (a heartbeat when one is
    /// due), inline where its socket takes it: no task wakes for what it is
    /// sent whole. Wake those with more to write; close those that do not
    /// read: their unsent events are past `--feed-pending` or were evicted,
    /// or their write has not finished since the heartbeat before.
    fn deliver_all(&self, metrics: &CoreMetrics) {
        let h = self.history.borrow();
        let end = h.end();
        let tick = self.tick.get();
        for (&fd, slot) in self.subscribers.borrow_mut().iter_mut() {
            if slot.cut {
                continue;
            }
            let behind = h
                .end_before(slot.next_seq)
                .is_none_or(|done| end - done > self.settings.pending as u64);
            let stuck = slot.writing_since.is_some_and(|t| t + 1 < tick);
            if behind || stuck {
                cut(fd, slot);
                metrics.feed_slow_closed();
            } else if slot.idle() {
                deliver(fd, slot, &h, tick, metrics);
            } else if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    /// One heartbeat: a comment on every stream that is not writing.
    pub fn heartbeat(&self, metrics: &CoreMetrics) {
        self.tick.set(self.tick.get() + 1);
        self.evict_old(Instant::now());
        self.deliver_all(metrics);
    }

    /// The server drains: every stream ends after what it is writing, so
    /// its client resumes elsewhere.
    pub fn close(&self) {
        self.closing.set(true);
        for (&fd, slot) in self.subscribers.borrow_mut().iter_mut() {
            if slot.writing_since.is_some() {
                // A write the client is not taking would hold the drain.
                cut(fd, slot);
            } else if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    fn cut_all(&self) {
        for (&fd, slot) in self.subscribers.borrow_mut().iter_mut() {
            if !slot.cut {
                cut(fd, slot);
            }
        }
    }

    /// Where `sub` starts: the first event to look at, the position it has,
    /// and whether it must reset.
    fn start(&self, sub: &Subscription) -> (u64, Position, Option<Position>) {
        let h = self.history.borrow();
        let now = Position::end_of(h.version);
        match sub.since {
            None => (h.next_seq(), now, None),
            Some(since) if since < h.floor => (h.next_seq(), now, Some(now)),
            Some(since) => {
                let skip = h.events.partition_point(|e| e.at <= since);
                (h.first_seq + skip as u64, since, None)
            }
        }
    }
}

/// Shut a subscriber's socket down: its task sees the end and closes.
fn cut(fd: RawFd, slot: &mut Slot) {
    slot.cut = true;
    // SAFETY: `fd` is the socket of a live subscriber task on this core: it
    // removes its slot before its socket can be closed, and nothing else
    // runs on this thread meanwhile.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    if let Some(w) = slot.waker.take() {
        w.wake();
    }
}

/// Send an idle subscriber what is new for it, inline; what the socket
/// does not take now is left to its task, which is woken.
fn deliver(fd: RawFd, slot: &mut Slot, h: &History, tick: u64, metrics: &CoreMetrics) {
    let wake = match slot.gather(h, tick) {
        Err(()) => {
            cut(fd, slot);
            metrics.feed_slow_closed();
            return;
        }
        Ok(None) => false,
        Ok(Some((bytes, events))) => match send_now(fd, &bytes) {
            Ok(n) if n == bytes.len() => {
                metrics.feed_sent(events);
                false
            }
            Ok(n) => {
                // The task counts the events once the rest is written.
                slot.unsent = Some(bytes.slice(n..));
                metrics.feed_sent(events);
                true
            }
            Err(()) => {
                cut(fd, slot);
                return;
            }
        },
    };
    if wake {
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

/// The head of every stream (its body ends when the connection does).
fn head(date: &DateCache, retry: Duration, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nDate: ");
    out.extend_from_slice(&date.get());
    out.extend_from_slice(
        b"\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\nretry: ",
    );
    out.extend_from_slice(itoa::Buffer::new().format(retry.as_millis()).as_bytes());
    out.extend_from_slice(b"\n\n");
}

fn reset(at: Position, out: &mut Vec<u8>) {
    out.extend_from_slice(b"id: ");
    at.write(out);
    out.extend_from_slice(b"\nevent: reset\ndata: {\"position\":\"");
    at.write(out);
    out.extend_from_slice(b"\"}\n\n");
}

/// Removes a subscriber's slot however its task ends.
struct Registered<'a> {
    feed: &'a Feed,
    fd: RawFd,
    metrics: &'a CoreMetrics,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut subs = self.feed.subscribers.borrow_mut();
        subs.remove(&self.fd);
        self.metrics.feed_subscribers(subs.len());
    }
}

/// Serve one subscriber on `stream` until the client goes, the core cuts
/// it, or the server drains.
pub async fn stream(
    feed: &Feed,
    date: &DateCache,
    metrics: &CoreMetrics,
    stream: TcpStream,
    sub: Subscription,
) {
    let fd = stream.as_raw_fd();
    let (seq, at, reset_to) = feed.start(&sub);
    let since = sub.since;
    feed.subscribers.borrow_mut().insert(
        fd,
        Slot {
            waker: None,
            view: sub,
            next_seq: seq,
            at,
            tick: feed.tick.get(),
            unsent: None,
            // The head is written by the task first.
            writing_since: Some(feed.tick.get()),
            cut: false,
        },
    );
    let _registered = Registered { feed, fd, metrics };
    metrics.feed_subscribers(feed.subscribers());
    match (reset_to, since) {
        (Some(_), _) => metrics.feed_reset(),
        (None, Some(_)) => metrics.feed_resumed(),
        (None, None) => {}
    }
    let mut first = Vec::with_capacity(256);
    head(date, feed.settings.retry, &mut first);
    if let Some(at) = reset_to {
        reset(at, &mut first);
    }
    let (reader, mut writer) = stream.into_split();
    let follower = Follower { feed, fd };
    futures_lite::future::or(
        until_gone(reader),
        follower.run(&mut writer, first, metrics),
    )
    .await;
}

/// Reads (and drops) what the client sends until it closes.
async fn until_gone(mut reader: OwnedReadHalf<TcpStream>) {
    let mut buf = Vec::with_capacity(64);
    loop {
        let (res, b) = reader.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => buf.clear(),
        }
    }
}

/// A subscriber's task: writes what the core could not send inline (the
/// head and replay, a catch-up, the rest of a partial send).
struct Follower<'a> {
    feed: &'a Feed,
    fd: RawFd,
}

impl Follower<'_> {
    async fn run(
        self,
        writer: &mut OwnedWriteHalf<TcpStream>,
        first: Vec<u8>,
        metrics: &CoreMetrics,
    ) {
        if self
            .write(writer, Bytes::from(first), 0, metrics)
            .await
            .is_err()
        {
            return;
        }
        loop {
            let next = std::future::poll_fn(|cx| {
                if self.feed.closing.get() {
                    return Poll::Ready(None);
                }
                let h = self.feed.history.borrow();
                let mut subs = self.feed.subscribers.borrow_mut();
                let Some(slot) = subs.get_mut(&self.fd) else {
                    return Poll::Ready(None);
                };
                if slot.cut {
                    return Poll::Ready(None);
                }
                if let Some(rest) = slot.unsent.take() {
                    // Counted when the core sent its start.
                    return Poll::Ready(Some((rest, 0)));
                }
                match slot.gather(&h, self.feed.tick.get()) {
                    Err(()) => Poll::Ready(None),
                    Ok(Some(out)) => Poll::Ready(Some(out)),
                    Ok(None) => {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await;
            let Some((bytes, events)) = next else { return };
            if self.write(writer, bytes, events, metrics).await.is_err() {
                return;
            }
        }
    }

    /// Write `bytes`, marking the slot busy meanwhile (the core sends
    /// nothing inline then, and the heartbeat closes a stream whose write
    /// does not finish), and count the events sent.
    async fn write(
        &self,
        writer: &mut OwnedWriteHalf<TcpStream>,
        bytes: Bytes,
        events: u64,
        metrics: &CoreMetrics,
    ) -> io::Result<()> {
        self.busy(Some(self.feed.tick.get()));
        let res = writer.write_all(bytes).await.0;
        self.busy(None);
        res?;
        metrics.feed_sent(events);
        Ok(())
    }

    fn busy(&self, since: Option<u64>) {
        if let Some(slot) = self.feed.subscribers.borrow_mut().get_mut(&self.fd) {
            slot.writing_since = since;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn todo(id: u64, owner: &str, public: bool) -> Todo {
        Todo {
            id,
            owner: owner.into(),
            title: format!("t{id}"),
            description: String::new(),
            completed: false,
            created_at: 1,
            updated_at: 1,
            category_id: None,
            public,
        }
    }

    #[test]
    fn positions_parse_print_and_order() {
        let p = Position::parse("17-42").unwrap();
        assert_eq!(
            p,
            Position {
                version: 17,
                id: 42
            }
        );
        assert_eq!(p.to_string(), "17-42");
        assert_eq!(Position::parse("17").unwrap(), Position::end_of(17));
        assert_eq!(Position::end_of(17).to_string(), "17");
        assert!(Position::end_of(16) < p && p < Position::end_of(17));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a",
            "1-2-3",
            "1 ",
            "99999999999999999999999",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_change_is_created_updated_or_deleted_as_each_subscriber_sees_it() {
        let anon = Subscription {
            mine: false,
            owner: None,
            category: None,
            since: None,
        };
        let mine = Subscription {
            mine: true,
            owner: Some("ann".into()),
            ..anon.clone()
        };
        let change = |before, after| {
            Event::encode(
                &TodoChange {
                    at: Position { version: 2, id: 7 },
                    before,
                    after,
                },
                Instant::now(),
                0,
            )
        };
        let op = |e: &Event, s: &Subscription| {
            e.for_subscriber(s).map(|b| {
                let text = std::str::from_utf8(b).unwrap();
                text.split("\"op\":\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_string()
            })
        };
        let private = change(None, Some(todo(7, "ann", false)));
        assert_eq!(op(&private, &anon), None);
        assert_eq!(op(&private, &mine).as_deref(), Some("created"));
        let made_private = change(Some(todo(7, "ann", true)), Some(todo(7, "ann", false)));
        assert_eq!(op(&made_private, &anon).as_deref(), Some("deleted"));
        assert_eq!(op(&made_private, &mine).as_deref(), Some("updated"));
        let withdrawn = std::str::from_utf8(made_private.for_subscriber(&anon).unwrap()).unwrap();
        assert_eq!(
            withdrawn,
            "id: 2-7\nevent: todo\ndata: {\"op\":\"deleted\",\"todo\":{\"id\":7}}\n\n"
        );
        let made_public = change(Some(todo(7, "ann", false)), Some(todo(7, "ann", true)));
        assert_eq!(op(&made_public, &anon).as_deref(), Some("created"));
        let others = Subscription {
            owner: Some("bob".into()),
            ..anon.clone()
        };
        assert_eq!(op(&made_public, &others), None);
    }

    #[test]
    fn a_resume_from_before_the_history_resets_and_from_within_it_replays() {
        let settings = Settings {
            max: 10,
            heartbeat: Duration::from_secs(15),
            history: 2,
            history_age: Duration::from_secs(600),
            pending: 1 << 20,
            retry: Duration::from_secs(1),
        };
        let feed = Feed::new(settings, Some(5));
        let metrics = CoreMetrics::default();
        for v in 6..=8 {
            feed.publish(
                &Changes {
                    from: v - 1,
                    to: v,
                    todos: vec![TodoChange {
                        at: Position { version: v, id: 1 },
                        before: None,
                        after: Some(todo(1, "ann", true)),
                    }],
                },
                &metrics,
            );
        }
        let sub = |since: &str| Subscription {
            mine: false,
            owner: None,
            category: None,
            since: Position::parse(since),
        };
        // History holds 7-1 and 8-1; 6-1 was evicted.
        assert!(feed.start(&sub("5")).2.is_some());
        assert!(feed.start(&sub("6-0")).2.is_some());
        let (seq, at, reset) = feed.start(&sub("6-1"));
        assert_eq!((reset, at), (None, Position { version: 6, id: 1 }));
        assert_eq!(seq, 1, "replays from 7-1");
        assert_eq!(feed.start(&sub("8")).0, 3, "nothing to replay");
    }
}
