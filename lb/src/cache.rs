//! `--cache on`: the edge micro-cache, one per core (no lock, nothing
//! shared), for public GETs.
//!
//! ```text
//! GET without Authorization -> fresh answer held?  -> If-None-Match matches? 304 : 200 (X-Cache: HIT, Age)
//!                              one being fetched?  -> wait for it (coalescing), look again
//!                              else                -> this request fetches (X-Cache: MISS);
//!                                                     held if the answer allows it
//! ```
//!
//! - Held: a 200 to a GET without `Authorization`, whose `Cache-Control`
//!   says `public` and `max-age=N` (or `s-maxage=N`, N > 0) and none of
//!   `private`, `no-store`, `no-cache`; no `Set-Cookie`; not `Vary: *`;
//!   not `Connection: close`. Fresh for N seconds less the upstream's `Age`
//!   (RFC 9111 §4.2). A request that says `Cache-Control: no-cache` or
//!   `no-store`, or `Pragma: no-cache`, goes to the upstream.
//! - Never held: an event stream (`proxy/stream.rs`), whatever its
//!   `Cache-Control`; its target passes ([`EdgeCache::pass`]) as soon as
//!   its head arrives, so the requests that waited for it fetch their own.
//! - `Vary` is honoured: the answer is held under the request's values of
//!   the headers it names, and found only by a request with the same ones.
//! - Coalescing: while one request of a core fetches a key, the others for
//!   it on that core wait for that one answer ([`Flight`]). So an upstream
//!   sees at most one request per key, per core, per expiry.
//! - Bounded: `--cache-bytes` (all cores; each core holds its share),
//!   evicted by CLOCK (a second chance for answers used since the hand
//!   last passed; expired ones go first).
//! - A hit is the held bytes with `X-Cache: HIT` and `Age` put after the
//!   status line; a 304 carries the held `ETag`, `Cache-Control` and `Vary`
//!   (RFC 9110 §15.4.5).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use todo_http::DateCache;

use crate::ring;

/// Headers a response head may have, at most, to be parsed for the cache
/// (the proxy's own limit).
const MAX_HEADERS: usize = todo_http::http1::HEADER_SLOTS;
/// A hit adds `X-Cache` and `Age`: an answer is held only with room for them
/// under [`MAX_HEADERS`], so what the cache answers frames as the upstream's did.
const ADDED_HEADERS: usize = 2;
/// A target whose answer could not be held is forwarded without
/// coalescing for this long (so requests for an answer that is never held
/// do not wait for each other), then tried again.
pub const PASS_FOR: Duration = Duration::from_secs(10);

/// What a request must match to be answered from the cache: its target, and
/// where its head is (for `Vary` and `If-None-Match`).
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// The key of the request target (path and query).
    pub target: u64,
}

impl Probe {
    fn new(target: &[u8]) -> Self {
        Probe {
            target: ring::key(target),
        }
    }
}

/// Whether a request may be answered from the cache: a GET, no
/// `Authorization`, and not asking to skip caches.
pub fn probe(
    method_is_get: bool,
    has_authorization: bool,
    target: &[u8],
    head: &[u8],
) -> Option<Probe> {
    if !method_is_get || has_authorization {
        return None;
    }
    let skip = |name: &[u8]| {
        header(head, name).is_some_and(|v| {
            directives(v).any(|(d, _)| {
                d.eq_ignore_ascii_case(b"no-cache") || d.eq_ignore_ascii_case(b"no-store")
            })
        })
    };
    if skip(b"cache-control") || skip(b"pragma") {
        return None;
    }
    Some(Probe::new(target))
}

/// One held answer.
struct Entry {
    key: u64,
    /// The upstream's response as it came.
    bytes: Vec<u8>,
    /// Where its status line ends (after its CRLF).
    status_end: usize,
    etag: Option<(usize, usize)>,
    cache_control: Option<(usize, usize)>,
    vary: Option<(usize, usize)>,
    stored: Instant,
    expires: Instant,
    /// The upstream's `Age` when stored, seconds.
    age: u64,
    used: Cell<bool>,
}

/// A fetch in progress on this core: the requests waiting for it.
#[derive(Default)]
pub struct Flight {
    done: Cell<bool>,
    waiting: RefCell<Vec<Waker>>,
}

impl Flight {
    /// Wait until the fetch is over (its answer held or not).
    pub fn wait(self: &Rc<Self>) -> impl Future<Output = ()> {
        FlightWait(self.clone())
    }

    fn finish(&self) {
        self.done.set(true);
        for w in self.waiting.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

struct FlightWait(Rc<Flight>);

impl Future for FlightWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.done.get() {
            return Poll::Ready(());
        }
        self.0.waiting.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// The fetch of a key: while it lives, other requests for the key wait;
/// dropped (answered, failed or cancelled), it lets them go.
pub struct Lead<'c> {
    cache: &'c EdgeCache,
    target: u64,
    flight: Rc<Flight>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.cache.flights.borrow_mut().remove(&self.target);
        self.flight.finish();
    }
}

/// What [`EdgeCache::lookup`] found.
pub enum Lookup<'c> {
    /// Answered into `out` (a 200 or a 304 from the cache).
    Answered { not_modified: bool },
    /// Another request of this core is fetching it: wait, then look again.
    Wait(Rc<Flight>),
    /// Its last answer could not be held: forward it, with no waiting,
    /// until [`PASS_FOR`] has passed.
    Pass,
    /// Fetch it: the other requests for it wait for this one.
    Fetch(Lead<'c>),
}

/// One core's cache.
pub struct EdgeCache {
    budget: usize,
    bytes: Cell<usize>,
    /// Variant key -> slot.
    index: RefCell<HashMap<u64, usize>>,
    slots: RefCell<Vec<Option<Entry>>>,
    hand: Cell<usize>,
    /// Target -> the header names its answers vary on (lowercase, comma
    /// separated as the upstream sent them).
    vary: RefCell<HashMap<u64, Vec<u8>>>,
    flights: RefCell<HashMap<u64, Rc<Flight>>>,
    /// Targets whose last answer could not be held, until when.
    pass: RefCell<HashMap<u64, Instant>>,
}

impl EdgeCache {
    /// A core's cache holding at most `budget` bytes of answers.
    pub fn new(budget: usize) -> Self {
        EdgeCache {
            budget,
            bytes: Cell::new(0),
            index: RefCell::new(HashMap::new()),
            slots: RefCell::new(Vec::new()),
            hand: Cell::new(0),
            vary: RefCell::new(HashMap::new()),
            flights: RefCell::new(HashMap::new()),
            pass: RefCell::new(HashMap::new()),
        }
    }

    /// Entries and bytes held now.
    pub fn size(&self) -> (usize, usize) {
        (self.index.borrow().len(), self.bytes.get())
    }

    /// The variant key of a request: its target, and its values of the
    /// headers the target's answers vary on.
    fn variant(&self, target: u64, head: &[u8]) -> u64 {
        match self.vary.borrow().get(&target) {
            None => target,
            Some(names) => {
                let mut key = target;
                for name in names.split(|&b| b == b',') {
                    let name = name.trim_ascii();
                    let value = header(head, name).unwrap_or(b"");
                    key =
                        ring::key(&[&key.to_le_bytes()[..], value].concat()) ^ key.rotate_left(17);
                }
                key
            }
        }
    }

    /// Answer the request from the cache into `out`, or say who fetches it.
    pub fn lookup(
        &self,
        probe: Probe,
        head: &[u8],
        date: &DateCache,
        out: &mut Vec<u8>,
    ) -> Lookup<'_> {
        let now = Instant::now();
        let key = self.variant(probe.target, head);
        let slot = self.index.borrow().get(&key).copied();
        if let Some(slot) = slot {
            let slots = self.slots.borrow();
            if let Some(e) = slots[slot]
                .as_ref()
                .filter(|e| e.key == key && e.expires > now)
            {
                e.used.set(true);
                let age = e.age + now.duration_since(e.stored).as_secs();
                let not_modified = match (e.etag, header(head, b"if-none-match")) {
                    (Some((a, b)), Some(inm)) => etag_matches(inm, &e.bytes[a..b]),
                    _ => false,
                };
                if not_modified {
                    answer_304(e, age, date, out);
                } else {
                    out.extend_from_slice(&e.bytes[..e.status_end]);
                    out.extend_from_slice(b"X-Cache: HIT\r\nAge: ");
                    out.extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&e.bytes[e.status_end..]);
                }
                return Lookup::Answered { not_modified };
            }
        }
        if let Some(flight) = self.flights.borrow().get(&probe.target) {
            return Lookup::Wait(flight.clone());
        }
        if let Some(&until) = self.pass.borrow().get(&probe.target) {
            if until > now {
                return Lookup::Pass;
            }
        }
        let flight = Rc::new(Flight::default());
        self.flights
            .borrow_mut()
            .insert(probe.target, flight.clone());
        Lookup::Fetch(Lead {
            cache: self,
            target: probe.target,
            flight,
        })
    }

    /// Hold `response` (the upstream's answer to the request with `head`)
    /// when it may be held.
    pub fn store(&self, lead: &Lead<'_>, head: &[u8], response: &[u8]) {
        let target = lead.target;
        // Empty lines before a status line are ignored by parsers (RFC 9112
        // §2.2); they are not held.
        let response = skip_empty_lines(response);
        if response.get(9..12) == Some(b"304") {
            // The answer to a conditional request says nothing about
            // whether the full answer may be held.
            return;
        }
        let size = response.len() + 256;
        let Some(parsed) = Cacheable::parse(response).filter(|_| size <= self.budget / 4) else {
            self.pass(lead);
            return;
        };
        self.pass.borrow_mut().remove(&target);
        match parsed.vary {
            Some((a, b)) => {
                let names = response[a..b].to_ascii_lowercase();
                self.vary.borrow_mut().insert(target, names);
            }
            None => {
                self.vary.borrow_mut().remove(&target);
            }
        }
        let key = self.variant(target, head);
        let now = Instant::now();
        let entry = Entry {
            key,
            bytes: response.to_vec(),
            status_end: parsed.status_end,
            etag: parsed.etag,
            cache_control: parsed.cache_control,
            vary: parsed.vary,
            stored: now,
            expires: now + Duration::from_secs(parsed.fresh_for),
            age: parsed.age,
            used: Cell::new(false),
        };
        self.remove(key);
        while self.bytes.get() + size > self.budget && self.evict_one(now) {}
        let mut slots = self.slots.borrow_mut();
        let slot = match slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                slots.push(None);
                slots.len() - 1
            }
        };
        slots[slot] = Some(entry);
        self.index.borrow_mut().insert(key, slot);
        self.bytes.set(self.bytes.get() + size);
    }

    /// The answer `lead` fetched may not be held (what [`EdgeCache::store`]
    /// refuses, or an event stream, which has no end): its target is
    /// forwarded without coalescing for [`PASS_FOR`], so requests for it do
    /// not wait for each other.
    pub fn pass(&self, lead: &Lead<'_>) {
        let mut pass = self.pass.borrow_mut();
        if pass.len() > 10_000 {
            let now = Instant::now();
            pass.retain(|_, until| *until > now);
        }
        pass.insert(lead.target, Instant::now() + PASS_FOR);
    }

    fn remove(&self, key: u64) {
        if let Some(slot) = self.index.borrow_mut().remove(&key) {
            if let Some(e) = self.slots.borrow_mut()[slot].take() {
                self.bytes.set(self.bytes.get() - (e.bytes.len() + 256));
            }
        }
    }

    /// CLOCK: the next entry under the hand that is expired or was not used
    /// since the hand last passed goes; false when nothing is held.
    fn evict_one(&self, now: Instant) -> bool {
        let len = self.slots.borrow().len();
        if self.index.borrow().is_empty() || len == 0 {
            return false;
        }
        // Two turns at most: the first clears the marks.
        for _ in 0..2 * len {
            let at = self.hand.get() % len;
            self.hand.set(at + 1);
            let victim = {
                let slots = self.slots.borrow();
                match &slots[at] {
                    Some(e) if e.expires <= now || !e.used.replace(false) => Some(e.key),
                    _ => None,
                }
            };
            if let Some(key) = victim {
                self.remove(key);
                return true;
            }
        }
        false
    }
}

fn answer_304(e: &Entry, age: u64, date: &DateCache, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nDate: ");
    out.extend_from_slice(&date.get());
    for (name, range) in [
        (&b"\r\nETag: "[..], e.etag),
        (b"\r\nCache-Control: ", e.cache_control),
        (b"\r\nVary: ", e.vary),
    ] {
        if let Some((a, b)) = range {
            out.extend_from_slice(name);
            out.extend_from_slice(&e.bytes[a..b]);
        }
    }
    out.extend_from_slice(b"\r\nX-Cache: HIT\r\nAge: ");
    out.extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// What makes an answer holdable, and where its parts are.
struct Cacheable {
    status_end: usize,
    etag: Option<(usize, usize)>,
    cache_control: Option<(usize, usize)>,
    vary: Option<(usize, usize)>,
    fresh_for: u64,
    age: u64,
}

impl Cacheable {
    fn parse(response: &[u8]) -> Option<Self> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(_) = r.parse(response).ok()? else {
            return None;
        };
        if r.code != Some(200) || r.headers.len() > MAX_HEADERS - ADDED_HEADERS {
            return None;
        }
        // The status line ends at its LF (a CR before it is optional to a
        // parser, RFC 9112 §2.2).
        let status_end = response.iter().position(|&b| b == b'\n')? + 1;
        let range = |v: &[u8]| {
            let a = v.as_ptr() as usize - response.as_ptr() as usize;
            (a, a + v.len())
        };
        let (mut etag, mut cache_control, mut vary) = (None, None, None);
        let (mut public, mut max_age, mut s_maxage, mut age) = (false, None, None, 0u64);
        for h in r.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"etag") {
                etag = Some(range(h.value));
            } else if name.eq_ignore_ascii_case(b"cache-control") {
                cache_control = Some(range(h.value));
                for (d, arg) in directives(h.value) {
                    let is = |s: &[u8]| d.eq_ignore_ascii_case(s);
                    if is(b"public") {
                        public = true;
                    } else if is(b"private") || is(b"no-store") || is(b"no-cache") {
                        return None;
                    } else if is(b"max-age") {
                        max_age = arg.and_then(number);
                    } else if is(b"s-maxage") {
                        s_maxage = arg.and_then(number);
                    }
                }
            } else if name.eq_ignore_ascii_case(b"vary") {
                if h.value.trim_ascii() == b"*" {
                    return None;
                }
                vary = Some(range(h.value));
            } else if name.eq_ignore_ascii_case(b"set-cookie") {
                return None;
            } else if name.eq_ignore_ascii_case(b"age") {
                age = number(h.value)?;
            } else if name.eq_ignore_ascii_case(b"connection")
                && h.value.trim_ascii().eq_ignore_ascii_case(b"close")
            {
                return None;
            }
        }
        let lifetime = s_maxage.or(max_age)?;
        if !public || lifetime <= age {
            return None;
        }
        Some(Cacheable {
            status_end,
            etag,
            cache_control,
            vary,
            fresh_for: lifetime - age,
            age,
        })
    }
}

/// `bytes` from its first byte that is not CR or LF.
pub fn skip_empty_lines(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// A delta-seconds value, at most 2^31 (RFC 9111 §1.2.2: a larger one is
/// taken as 2^31), so freshness and ages never overflow.
fn number(v: &[u8]) -> Option<u64> {
    let digits = std::str::from_utf8(v.trim_ascii()).ok()?.trim_matches('"');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Too many digits for a u64 is more than 2^31 too.
    Some(
        digits
            .parse::<u64>()
            .map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)),
    )
}

/// The largest delta-seconds taken (RFC 9111 §1.2.2).
const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// `Cache-Control`-style directives: `name` or `name=value`, comma separated.
fn directives(v: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    v.split(|&b| b == b',').filter_map(|d| {
        let d = d.trim_ascii();
        if d.is_empty() {
            return None;
        }
        Some(match d.iter().position(|&b| b == b'=') {
            Some(eq) => (d[..eq].trim_ascii(), Some(d[eq + 1..].trim_ascii())),
            None => (d, None),
        })
    })
}

/// `If-None-Match` against an entity tag, by the weak comparison
/// (RFC 9110 §13.1.2): `*`, or any listed tag equal without its `W/`.
fn etag_matches(if_none_match: &[u8], etag: &[u8]) -> bool {
    let bare = |t: &[u8]| -> Vec<u8> {
        t.trim_ascii()
            .strip_prefix(b"W/")
            .unwrap_or(t.trim_ascii())
            .to_vec()
    };
    let ours = bare(etag);
    if_none_match.trim_ascii() == b"*"
        || if_none_match.split(|&b| b == b',').any(|t| bare(t) == ours)
}

/// The value of header `name` (lowercase) in a request head, trimmed.
pub fn header<'h>(head: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (field, value) = line.split_at(colon);
        field
            .eq_ignore_ascii_case(name)
            .then(|| value[1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: W/\"7\"\r\nCache-Control: public, max-age=5\r\n\r\n[]";

    fn get(head: &str) -> (Probe, Vec<u8>) {
        let head = format!("GET /todos HTTP/1.1\r\nHost: t\r\n{head}\r\n").into_bytes();
        (probe(true, false, b"/todos", &head).unwrap(), head)
    }

    /// Fetch (as the first request for it) and hold `response`.
    fn hold(cache: &EdgeCache, p: Probe, head: &[u8], response: &[u8]) {
        let lead = fetch(cache, p, head);
        cache.store(&lead, head, response);
    }

    /// What the cache answers now: (a 304?, the bytes), or None for a miss.
    fn answer(cache: &EdgeCache, p: Probe, head: &[u8]) -> Option<(bool, String)> {
        let mut out = Vec::new();
        match cache.lookup(p, head, &DateCache::default(), &mut out) {
            Lookup::Answered { not_modified } => {
                Some((not_modified, String::from_utf8(out).unwrap()))
            }
            _ => None,
        }
    }

    fn fetch<'c>(cache: &'c EdgeCache, p: Probe, head: &[u8]) -> Lead<'c> {
        let mut out = Vec::new();
        match cache.lookup(p, head, &DateCache::default(), &mut out) {
            Lookup::Fetch(lead) => lead,
            _ => panic!("expected a fetch"),
        }
    }

    #[test]
    fn a_public_answer_is_held_and_served_with_x_cache_and_304() {
        let cache = EdgeCache::new(1 << 20);
        let (p, head) = get("");
        let lead = fetch(&cache, p, &head);
        // A second request for the key while it is fetched waits.
        assert!(matches!(
            cache.lookup(p, &head, &DateCache::default(), &mut Vec::new()),
            Lookup::Wait(_)
        ));
        cache.store(&lead, &head, PUBLIC);
        drop(lead);
        let (not_modified, text) = answer(&cache, p, &head).expect("held");
        assert!(!not_modified);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nX-Cache: HIT\r\nAge: 0\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n[]"), "{text}");
        let (p, head) = get("If-None-Match: \"7\"\r\n");
        let (not_modified, text) = answer(&cache, p, &head).expect("held");
        assert!(not_modified);
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{text}");
        assert!(
            text.contains("\r\nETag: W/\"7\"\r\nCache-Control: public, max-age=5\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn private_or_unbounded_answers_and_skipping_requests_are_not_held() {
        for response in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: private, max-age=5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: public\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: public, max-age=5, no-store\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: public, max-age=5\r\nSet-Cookie: a=b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: public, max-age=5\r\nVary: *\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: public, max-age=5\r\nAge: 9\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nCache-Control: public, max-age=5\r\n\r\n",
        ] {
            let cache = EdgeCache::new(1 << 20);
            let (p, head) = get("");
            hold(&cache, p, &head, response);
            assert_eq!(cache.size().0, 0, "{}", String::from_utf8_lossy(response));
        }
        let head = b"GET /x HTTP/1.1\r\nCache-Control: no-cache\r\n\r\n";
        assert!(probe(true, false, b"/x", head).is_none());
        assert!(probe(true, true, b"/x", b"GET /x HTTP/1.1\r\n\r\n").is_none());
        assert!(probe(false, false, b"/x", b"POST /x HTTP/1.1\r\n\r\n").is_none());
    }

    #[test]
    fn a_head_of_bare_lf_lines_gets_x_cache_after_its_status_line() {
        let cache = EdgeCache::new(1 << 20);
        let (p, head) = get("");
        let bare =
            b"HTTP/1.1 200 OK\nCache-Control: public, max-age=5\nContent-Length: 4\n\nab\r\n";
        hold(&cache, p, &head, bare);
        let (_, text) = answer(&cache, p, &head).expect("held");
        assert!(
            text.starts_with("HTTP/1.1 200 OK\nX-Cache: HIT\r\nAge: 0\r\nCache-Control"),
            "{text:?}"
        );
        assert!(text.ends_with("\n\nab\r\n"), "{text:?}");
    }

    #[test]
    fn empty_lines_before_the_status_line_are_not_held() {
        let cache = EdgeCache::new(1 << 20);
        let (p, head) = get("");
        let mut leading = b"\r\n".to_vec();
        leading.extend_from_slice(PUBLIC);
        hold(&cache, p, &head, &leading);
        let (_, text) = answer(&cache, p, &head).expect("held");
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nX-Cache: HIT\r\n"),
            "{text:?}"
        );
    }

    #[test]
    fn a_huge_max_age_is_taken_as_2_pow_31() {
        let (p, head) = get("");
        // As old as it may be fresh: not held.
        let cache = EdgeCache::new(1 << 20);
        hold(
            &cache,
            p,
            &head,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: public, max-age=99999999999999999999\r\nAge: 18446744073709551615\r\n\r\n",
        );
        assert_eq!(cache.size().0, 0);
        let cache = EdgeCache::new(1 << 20);
        hold(
            &cache,
            p,
            &head,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: public, max-age=18446744073709551615\r\n\r\n",
        );
        assert!(answer(&cache, p, &head).is_some());
    }

    #[test]
    fn an_answer_without_room_for_x_cache_and_age_is_not_held() {
        let many = |n: usize| {
            let mut r =
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: public, max-age=5\r\n"
                    .to_vec();
            for i in 0..n {
                r.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            r.extend_from_slice(b"\r\n");
            r
        };
        let (p, head) = get("");
        let cache = EdgeCache::new(1 << 20);
        hold(&cache, p, &head, &many(MAX_HEADERS - ADDED_HEADERS - 2));
        assert_eq!(cache.size().0, 1);
        let cache = EdgeCache::new(1 << 20);
        hold(&cache, p, &head, &many(MAX_HEADERS - ADDED_HEADERS - 1));
        assert_eq!(cache.size().0, 0);
    }

    #[test]
    fn vary_keeps_answers_apart_by_the_named_headers() {
        let cache = EdgeCache::new(1 << 20);
        let varying = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: public, max-age=5\r\nVary: Accept-Language\r\n\r\nen";
        let (p, en) = get("Accept-Language: en\r\n");
        hold(&cache, p, &en, varying);
        assert!(answer(&cache, p, &en).is_some());
        let (p, fr) = get("Accept-Language: fr\r\n");
        assert!(matches!(
            cache.lookup(p, &fr, &DateCache::default(), &mut Vec::new()),
            Lookup::Fetch(_)
        ));
    }

    #[test]
    fn the_budget_holds_and_clock_evicts_the_unused_first() {
        let one = PUBLIC.len() + 256;
        let cache = EdgeCache::new(one * 8);
        let date = DateCache::default();
        for i in 0..40u32 {
            let target = format!("/t/{i}");
            let head = format!("GET {target} HTTP/1.1\r\n\r\n").into_bytes();
            let p = probe(true, false, target.as_bytes(), &head).unwrap();
            hold(&cache, p, &head, PUBLIC);
            // /t/0 is used after every store: it keeps its place.
            let head0 = b"GET /t/0 HTTP/1.1\r\n\r\n";
            let p0 = probe(true, false, b"/t/0", head0).unwrap();
            assert!(
                matches!(
                    cache.lookup(p0, head0, &date, &mut Vec::new()),
                    Lookup::Answered { .. }
                ),
                "{i}"
            );
            assert!(cache.size().1 <= one * 8);
        }
        assert_eq!(cache.size().0, 8);
    }
}
