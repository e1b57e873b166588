//! The load itself: connection loops on one executor.
//!
//! Closed loop (default): each connection keeps `-p` requests in flight; every
//! response counted is answered by one new request in the same write.
//! Open loop (`--rate`): each connection sends its share of the rate on a
//! fixed schedule whatever the server does, and latency is measured from when
//! a request was due, so a stalled server shows as latency, not as fewer
//! samples (no coordinated omission).
//!
//! Every response is framed by todo-testkit's reader (apart from the servers'
//! parser): its status must be the one its request expects and its body must
//! be complete per Content-Length or chunked framing, or it counts as an
//! error, not as a response.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;

use crate::mix::Mix;

#[derive(Clone)]
pub struct Plan {
    /// Where the URL points, then any `--also` addresses serving the same
    /// URL: connections are spread over them, and with `reconnect` a
    /// connection that cannot reach its own address moves to the next.
    pub addrs: Vec<SocketAddr>,
    pub mix: Mix,
    pub connections: usize,
    pub executors: usize,
    pub pipelining: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub rate: Option<f64>,
    /// Reopen closed connections and resend unanswered idempotent requests.
    pub reconnect: bool,
}

/// What one executor measured.
pub struct ShardResult {
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    /// Per connection, the longest any of its requests waited for its answer
    /// (microseconds): one stalled connection among thousands shows here even
    /// when the latency percentiles hide it.
    pub longest_waits: Histogram<u64>,
    /// Connections whose longest wait was over a second.
    pub waited_over_1s: u64,
    pub responses: u64,
    pub bytes: u64,
    /// Responses whose status was not the expected one, by status.
    pub wrong_status: BTreeMap<u16, u64>,
    /// Responses that could not be framed (unparsable, no Content-Length).
    pub framing_errors: u64,
    pub connect_errors: u64,
    /// Connections the server closed or reset while requests were in flight
    /// (with --reconnect: unanswered requests that could not be resent).
    pub io_errors: u64,
    pub reconnects: u64,
    pub resent: u64,
    /// The measured phase: from every connection of this executor being
    /// established to the last one finishing.
    pub elapsed: Duration,
}

impl ShardResult {
    fn new() -> Self {
        ShardResult {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            longest_waits: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            waited_over_1s: 0,
            responses: 0,
            bytes: 0,
            wrong_status: BTreeMap::new(),
            framing_errors: 0,
            connect_errors: 0,
            io_errors: 0,
            reconnects: 0,
            resent: 0,
            elapsed: Duration::ZERO,
        }
    }
}

/// Read buffer per connection, bytes.
const READ_BUF: usize = 256 * 1024;
/// A response must arrive within this long or the connection counts an error.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run_shard(plan: &Plan, shard: usize) -> ShardResult {
    let result = Rc::new(RefCell::new(ShardResult::new()));
    let per = plan.connections / plan.executors;
    let extra = usize::from(shard < plan.connections % plan.executors);
    let conns = per + extra;
    // Connect everything first, so the measured phase has no handshakes in it.
    let mut streams = Vec::with_capacity(conns);
    for i in 0..conns {
        let addr = plan.addrs[(shard + i * plan.executors) % plan.addrs.len()];
        streams.push(glommio::spawn_local(Conn::connect(addr)));
    }
    let mut connected = Vec::with_capacity(conns);
    for s in streams {
        connected.push(s.await);
    }
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut tasks = Vec::with_capacity(conns);
    for (i, stream) in connected.into_iter().enumerate() {
        let conn_index = shard + i * plan.executors;
        // Each connection's share of a fixed request count.
        let quota = plan.requests.map(|n| {
            let n = n as usize;
            (n / plan.connections + usize::from(conn_index < n % plan.connections)) as u64
        });
        let plan = plan.clone();
        let result = result.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut conn = Conn::new(&plan, conn_index as u64);
            let outcome = match stream {
                Err(e) => Err(e),
                Ok(stream) => match plan.rate {
                    Some(rate) => {
                        let interval = Duration::from_secs_f64(plan.connections as f64 / rate);
                        // Spread the connections' schedules over one interval.
                        let offset = interval.mul_f64(conn_index as f64 / plan.connections as f64);
                        conn.open_loop(
                            stream,
                            &plan,
                            start + offset,
                            interval,
                            deadline,
                            quota,
                            &result,
                        )
                        .await
                    }
                    None => {
                        conn.closed_loop(stream, &plan, deadline, quota, &result)
                            .await
                    }
                },
            };
            let mut r = result.borrow_mut();
            // A connection that never connected waited for nothing.
            if !matches!(outcome, Err(Failure::Connect)) {
                // Requests never answered waited until now.
                let now = Instant::now();
                let unanswered = conn.inflight.front().map(|(due, ..)| wait_us(now, *due));
                let longest = conn.longest_wait_us.max(unanswered.unwrap_or(0));
                let _ = r.longest_waits.record(longest.clamp(1, 60_000_000));
                r.waited_over_1s += u64::from(longest > 1_000_000);
            }
            if let Err(kind) = outcome {
                match kind {
                    Failure::Connect => r.connect_errors += 1,
                    Failure::Io => r.io_errors += 1,
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let mut result = Rc::try_unwrap(result)
        .ok()
        .expect("every connection task has finished")
        .into_inner();
    result.elapsed = start.elapsed();
    result
}

enum Failure {
    Connect,
    Io,
}

struct Conn {
    rng: u64,
    /// Due time (send or schedule), expected status and kind of each request
    /// in flight.
    inflight: VecDeque<(Instant, u16, usize)>,
    /// The server said `Connection: close`: no response follows.
    closing: bool,
    out: Vec<u8>,
    rbuf: Vec<u8>,
    filled: usize,
    sent: u64,
    /// The longest wait for an answer seen on this connection, microseconds.
    longest_wait_us: u64,
    /// Which of the plan's addresses this connection uses.
    target: usize,
}

fn wait_us(now: Instant, due: Instant) -> u64 {
    now.saturating_duration_since(due).as_micros() as u64
}

impl Conn {
    fn new(plan: &Plan, index: u64) -> Self {
        Conn {
            rng: 0x9e37_79b9_7f4a_7c15 ^ (index + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            inflight: VecDeque::with_capacity(plan.pipelining * 2),
            out: Vec::with_capacity(64 * 1024),
            rbuf: vec![0; READ_BUF],
            filled: 0,
            sent: 0,
            closing: false,
            longest_wait_us: 0,
            target: index as usize % plan.addrs.len(),
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Queue one request due at `at`.
    fn push(&mut self, mix: &Mix, at: Instant) {
        let index = mix.pick(self.next_random());
        let kind = &mix.kinds[index];
        self.out.extend_from_slice(&kind.bytes);
        self.inflight.push_back((at, kind.expect, index));
        self.sent += 1;
    }

    async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        Ok(stream)
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> Result<(), Failure> {
        if !self.out.is_empty() {
            stream.write_all(&self.out).await.map_err(|_| Failure::Io)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Read once and account every complete response. Returns how many
    /// responses were counted.
    async fn read_responses(
        &mut self,
        stream: &mut TcpStream,
        result: &RefCell<ShardResult>,
    ) -> Result<usize, Failure> {
        if self.filled == self.rbuf.len() {
            // One response larger than the buffer: grow.
            self.rbuf.resize(self.rbuf.len() * 2, 0);
        }
        let n = stream
            .read(&mut self.rbuf[self.filled..])
            .await
            .map_err(|_| Failure::Io)?;
        if n == 0 {
            return Err(Failure::Io);
        }
        self.filled += n;
        let now = Instant::now();
        let mut at = 0;
        let mut counted = 0;
        let mut r = result.borrow_mut();
        while at < self.filled {
            let framed = match todo_testkit::http::frame(&self.rbuf[at..self.filled], false) {
                Ok(Some(framed)) => framed,
                Ok(None) => break,
                Err(_) => {
                    r.framing_errors += 1;
                    return Err(Failure::Io);
                }
            };
            let (status, length, closes) = (framed.status, framed.len, framed.close);
            let Some((due, expect, _)) = self.inflight.pop_front() else {
                // A response nobody asked for.
                r.framing_errors += 1;
                return Err(Failure::Io);
            };
            // Any answer ends a wait, a wrong one included.
            let us = wait_us(now, due);
            self.longest_wait_us = self.longest_wait_us.max(us);
            if status == expect {
                r.responses += 1;
                r.bytes += length as u64;
                let _ = r.latency.record(us.clamp(1, 60_000_000));
                counted += 1;
            } else {
                *r.wrong_status.entry(status).or_default() += 1;
            }
            at += length;
            if closes {
                self.closing = true;
                break;
            }
        }
        self.rbuf.copy_within(at..self.filled, 0);
        self.filled -= at;
        Ok(counted)
    }

    async fn closed_loop(
        &mut self,
        mut stream: TcpStream,
        plan: &Plan,
        deadline: Instant,
        quota: Option<u64>,
        result: &RefCell<ShardResult>,
    ) -> Result<(), Failure> {
        let more = |sent: u64| quota.is_none_or(|q| sent < q);
        let now = Instant::now();
        for _ in 0..plan.pipelining {
            if !more(self.sent) {
                break;
            }
            self.push(&plan.mix, now);
        }
        self.flush(&mut stream).await?;
        while !self.inflight.is_empty() {
            let before = self.inflight.len();
            let read = self.read_responses(&mut stream, result).await;
            let answered = before - self.inflight.len();
            match read {
                Ok(_) if !self.closing => {}
                // Closed by the server, cleanly or not.
                Ok(_) | Err(Failure::Io) if plan.reconnect => {
                    stream = self.reopen(plan, result).await?;
                }
                Ok(_) => return Err(Failure::Io),
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= deadline && quota.is_none() {
                break;
            }
            for _ in 0..answered {
                if !more(self.sent) {
                    break;
                }
                self.push(&plan.mix, now);
            }
            self.flush(&mut stream).await?;
        }
        Ok(())
    }

    /// The server closed the connection: open a new one (to the next of the
    /// plan's addresses that takes it, this one first) and queue again the
    /// unanswered requests that are idempotent; the others count as errors.
    async fn reopen(
        &mut self,
        plan: &Plan,
        result: &RefCell<ShardResult>,
    ) -> Result<TcpStream, Failure> {
        let mut stream = Err(Failure::Connect);
        for _ in 0..plan.addrs.len() {
            stream = Self::connect(plan.addrs[self.target]).await;
            if stream.is_ok() {
                break;
            }
            self.target = (self.target + 1) % plan.addrs.len();
        }
        let stream = stream?;
        self.closing = false;
        self.filled = 0;
        self.out.clear();
        let unanswered = std::mem::take(&mut self.inflight);
        let mut r = result.borrow_mut();
        r.reconnects += 1;
        for (due, expect, index) in unanswered {
            let kind = &plan.mix.kinds[index];
            if kind.idempotent {
                self.out.extend_from_slice(&kind.bytes);
                self.inflight.push_back((due, expect, index));
                r.resent += 1;
            } else {
                r.io_errors += 1;
            }
        }
        Ok(stream)
    }

    #[allow(clippy::too_many_arguments)]
    async fn open_loop(
        &mut self,
        mut stream: TcpStream,
        plan: &Plan,
        first_due: Instant,
        interval: Duration,
        deadline: Instant,
        quota: Option<u64>,
        result: &RefCell<ShardResult>,
    ) -> Result<(), Failure> {
        let mut next_due = first_due;
        loop {
            let now = Instant::now();
            while next_due <= now && next_due < deadline && quota.is_none_or(|q| self.sent < q) {
                self.push(&plan.mix, next_due);
                next_due += interval;
            }
            self.flush(&mut stream).await?;
            let done_sending = next_due >= deadline || quota.is_some_and(|q| self.sent >= q);
            if done_sending && self.inflight.is_empty() {
                return Ok(());
            }
            if self.inflight.is_empty() {
                glommio::timer::sleep(next_due.saturating_duration_since(Instant::now())).await;
                continue;
            }
            // Read until the next request is due.
            let wait = if done_sending {
                READ_TIMEOUT
            } else {
                next_due.saturating_duration_since(Instant::now())
            };
            let read = self.read_responses(&mut stream, result);
            let timer = async {
                glommio::timer::sleep(wait).await;
                Ok(usize::MAX)
            };
            match futures_lite::future::or(read, timer).await {
                Ok(usize::MAX) if done_sending => return Err(Failure::Io),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }
}
