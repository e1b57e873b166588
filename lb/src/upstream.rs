//! The upstream set, shared by every core: addresses and their health.
//!
//! This is the one piece of todo-lb state that crosses cores, because one
//! health checker serves them all: each [`Upstream`] carries an atomic
//! `healthy` flag written by the checker thread and read by the cores when
//! they pick an upstream (one relaxed load). The set itself changes only
//! when the upstreams file does; cores notice by a generation number and
//! take the new set under a mutex, off the per-request path.
//!
//! Passive health (failures seen by the cores while forwarding) stays per
//! core, in `pool.rs`. Each upstream also carries its counters
//! ([`UpstreamStats`], `upstream_stats.rs`: one per core, each written by its
//! core only), so they live as long as the upstream stays in the set.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::reloadable::{stamp, FileStamp};
use crate::upstream_stats::UpstreamStats;

/// One upstream server.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// The active check's verdict.
    healthy: AtomicBool,
    /// Its counters, one slot per core (core `i` writes `stats[i]` only).
    pub stats: Box<[UpstreamStats]>,
}

impl Upstream {
    /// An upstream seen by `cores` cores.
    pub fn new(addr: SocketAddr, cores: usize) -> Self {
        Upstream {
            addr,
            // Until the first check says otherwise.
            healthy: AtomicBool::new(true),
            stats: (0..cores).map(|_| UpstreamStats::default()).collect(),
        }
    }

    #[inline]
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// The current upstreams, replaced whole when the file changes.
pub struct UpstreamSet {
    current: Mutex<Arc<[Arc<Upstream>]>>,
    generation: AtomicU64,
    /// Cores that keep counters for each upstream.
    cores: usize,
}

impl UpstreamSet {
    pub fn new(addrs: Vec<SocketAddr>, cores: usize) -> Self {
        UpstreamSet {
            current: Mutex::new(
                addrs
                    .into_iter()
                    .map(|a| Arc::new(Upstream::new(a, cores)))
                    .collect(),
            ),
            generation: AtomicU64::new(0),
            cores,
        }
    }

    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<[Arc<Upstream>]> {
        self.current.lock().unwrap().clone()
    }

    /// Replace the set with `addrs`, keeping the health and counters of
    /// those that stay.
    /// Returns false when nothing changed.
    pub fn replace(&self, addrs: &[SocketAddr]) -> bool {
        let mut current = self.current.lock().unwrap();
        let same =
            current.len() == addrs.len() && current.iter().zip(addrs).all(|(u, a)| u.addr == *a);
        if same {
            return false;
        }
        let next: Arc<[Arc<Upstream>]> = addrs
            .iter()
            .map(|a| match current.iter().find(|u| u.addr == *a) {
                Some(u) => u.clone(),
                None => Arc::new(Upstream::new(*a, self.cores)),
            })
            .collect();
        *current = next;
        self.generation.fetch_add(1, Ordering::Release);
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0:?}: not HOST:PORT or does not resolve")]
    Address(String),
    #[error("no upstream given: use --upstream HOST:PORT, TODO_LB_UPSTREAMS or --upstreams-file")]
    None,
    #[error("upstreams file {0}: {1}")]
    File(PathBuf, std::io::Error),
}

/// Resolve `HOST:PORT` strings.
pub fn resolve(specs: &[String]) -> Result<Vec<SocketAddr>, UpstreamError> {
    let mut out = Vec::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let addr = spec
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| UpstreamError::Address(spec.to_string()))?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Read an upstreams file: one HOST:PORT per line, `#` starts a comment.
pub fn read_file(path: &Path) -> Result<Vec<SocketAddr>, UpstreamError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| UpstreamError::File(path.to_path_buf(), e))?;
    let specs: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    resolve(&specs)
}

/// Settings of the checker thread.
#[derive(Debug, Clone)]
pub struct Checks {
    pub path: String,
    pub interval: Duration,
    pub unhealthy_after: u32,
    pub timeout: Duration,
    pub file: Option<PathBuf>,
    /// The file's stamp taken before the set was read from it, so a change
    /// made while the balancer starts is not missed.
    pub file_read_at: Option<FileStamp>,
}

/// The checker thread: every interval, look at the upstreams file (re-read
/// it when its modification time or length changed) and send each upstream
/// `GET <path>`; 200 is healthy, `unhealthy_after` failures in a row are not.
pub fn spawn_checker(
    set: Arc<UpstreamSet>,
    checks: Checks,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("todo-lb-health".into())
        .spawn(move || {
            let mut seen = checks.file_read_at;
            let mut failures: Vec<(SocketAddr, u32)> = Vec::new();
            loop {
                if let Some(path) = &checks.file {
                    let now = stamp(path);
                    if now != seen {
                        seen = now;
                        match read_file(path) {
                            Ok(addrs) if !addrs.is_empty() => {
                                if set.replace(&addrs) {
                                    eprintln!("todo-lb: upstreams now {addrs:?}");
                                }
                            }
                            Ok(_) => eprintln!(
                                "todo-lb: {} lists no upstream; keeping the current ones",
                                path.display()
                            ),
                            Err(e) => eprintln!("todo-lb: {e}; keeping the current upstreams"),
                        }
                    }
                }
                for up in set.current().iter() {
                    let ok = check(up.addr, &checks.path, checks.timeout);
                    let slot = match failures.iter().position(|(a, _)| *a == up.addr) {
                        Some(i) => i,
                        None => {
                            failures.push((up.addr, 0));
                            failures.len() - 1
                        }
                    };
                    let count = &mut failures[slot].1;
                    *count = if ok { 0 } else { *count + 1 };
                    let healthy = *count < checks.unhealthy_after;
                    if up.healthy.swap(healthy, Ordering::Relaxed) != healthy {
                        eprintln!(
                            "todo-lb: upstream {} is {}",
                            up.addr,
                            if healthy {
                                "healthy again"
                            } else {
                                "unhealthy"
                            }
                        );
                    }
                }
                std::thread::sleep(checks.interval);
            }
        })
}

/// One active check: a fresh connection, `GET path`, status 200.
fn check(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_set_keeps_the_health_of_those_that_stay() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let set = UpstreamSet::new(vec![a], 1);
        set.current()[0].healthy.store(false, Ordering::Relaxed);
        assert!(!set.replace(&[a]));
        assert_eq!(set.generation(), 0);
        assert!(set.replace(&[a, b]));
        assert_eq!(set.generation(), 1);
        let now = set.current();
        assert!(!now[0].healthy() && now[1].healthy());
    }

    #[test]
    fn upstreams_file_lines_and_comments() {
        let path = std::env::temp_dir().join(format!("todo-lb-ups-{}", std::process::id()));
        std::fs::write(
            &path,
            "# servers\n127.0.0.1:8081\n\n127.0.0.1:8082 # second\n",
        )
        .unwrap();
        let addrs = read_file(&path).unwrap();
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[1].port(), 8082);
        std::fs::write(&path, "not an address\n").unwrap();
        assert!(read_file(&path).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
