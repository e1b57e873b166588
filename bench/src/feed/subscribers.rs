//! Every subscriber, on one thread pinned to the client's CPU: opened in
//! batches (connect and request `BATCH` at once, then read their heads, so
//! a listen backlog of a few thousand is never flooded), then read from
//! one epoll loop until `stop`.
//!
//! Why epoll and not the glommio executor the rest runs on: glommio arms
//! one io_uring poll per read, and each completion from the server's CPU
//! reaches this one as task work with an inter-processor interrupt; perf
//! put the client at ~14 us of CPU per delivery that way (5,000
//! subscribers, nchan), so draining 10,000 subscribers would have taken
//! the client ~140 ms a round, longer than the servers measured. An epoll
//! loop that is awake takes readiness without being interrupted and reads
//! each socket with one `recv`.
//!
//! Deliveries are collected per `epoll_wait` batch and booked in the
//! ledger under one lock.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::ledger::{lock, Ledger};
use crate::sse::{Feed, Subscriber, Tally};

/// Subscribers connecting at once.
const BATCH: usize = 256;
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// How long `epoll_wait` sleeps before looking at `stop` again, ms.
const WAKE_MS: i32 = 50;

/// The subscribers' counts, shared with the executor.
#[derive(Default)]
pub struct Counts {
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    /// Ready subscribers whose stream ended (the server closed it, or reset).
    pub closed: AtomicU64,
    /// Comment lines (heartbeats, nchan's `: hi`).
    pub comments: AtomicU64,
    /// Why subscribers failed or ended, by reason.
    pub reasons: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    fn note(&self, reason: String) {
        *self
            .reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// Start `n` subscribers on a thread pinned to `cpu`.
pub fn spawn(
    feed: Arc<Feed>,
    n: usize,
    cpu: usize,
    ledger: Arc<Mutex<Ledger>>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    std::thread::Builder::new()
        .name("todo-feed-subscribers".into())
        .spawn(move || {
            pin(cpu)?;
            run(&feed, n, &ledger, &counts, &stop)
        })
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain bits, zeroed is the empty set; CPU_SET
    // bounds-checks `cpu`; sched_setaffinity reads the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn run(
    feed: &Feed,
    n: usize,
    ledger: &Mutex<Ledger>,
    counts: &Counts,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    // SAFETY: epoll_create1 takes no pointer; the result is checked.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut subscribers: Vec<Option<Subscriber>> = Vec::with_capacity(n);
    let mut opened = 0;
    while opened < n {
        let batch = BATCH.min(n - opened);
        opened += batch;
        let started: Vec<Subscriber> = (0..batch)
            .filter_map(|_| {
                Subscriber::start(feed)
                    .map_err(|why| {
                        counts.failed.fetch_add(1, Relaxed);
                        counts.note(why);
                    })
                    .ok()
            })
            .collect();
        for mut s in started {
            if let Err(why) = s.ready(feed) {
                counts.failed.fetch_add(1, Relaxed);
                counts.note(why);
                continue;
            }
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32,
                u64: subscribers.len() as u64,
            };
            // SAFETY: `event` outlives the call; the fd is the open socket
            // `s` owns, which stays open until it is deleted from the set.
            if unsafe {
                libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.stream.as_raw_fd(), &mut event)
            } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            subscribers.push(Some(s));
            counts.ready.fetch_add(1, Relaxed);
        }
    }

    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut tally = Tally::default();
    while !stop.load(Relaxed) {
        // SAFETY: `events` has room for EVENTS entries, which the kernel
        // fills up to the count it returns.
        let k = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), EVENTS as i32, WAKE_MS) };
        if k < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for e in &events[..k as usize] {
            let at = e.u64 as usize;
            let Some(s) = subscribers[at].as_mut() else {
                continue;
            };
            if let Err(why) = s.read(&feed.marker, &mut tally) {
                // SAFETY: the fd is still open (`s` owns it); a null event
                // is allowed for EPOLL_CTL_DEL.
                unsafe {
                    libc::epoll_ctl(
                        epoll,
                        libc::EPOLL_CTL_DEL,
                        s.stream.as_raw_fd(),
                        std::ptr::null_mut(),
                    );
                }
                subscribers[at] = None;
                counts.closed.fetch_add(1, Relaxed);
                counts.note(why);
            }
        }
        if !tally.deliveries.is_empty() || tally.duplicates + tally.foreign > 0 {
            let mut l = lock(ledger);
            for (index, when, len) in tally.deliveries.drain(..) {
                l.deliver(index, when, len);
            }
            l.duplicates += std::mem::take(&mut tally.duplicates);
            l.foreign += std::mem::take(&mut tally.foreign);
        }
        counts
            .comments
            .fetch_add(std::mem::take(&mut tally.comments), Relaxed);
    }
    // SAFETY: the epoll fd is ours and closed once.
    unsafe { libc::close(epoll) };
    Ok(())
}
