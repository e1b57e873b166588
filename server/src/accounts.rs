//! Passwords: argon2id hashing and login checks, off the cores.
//!
//! ```text
//! core: POST /users    -> Accounts::hash     -> todo-auth thread -> PHC string
//! core: POST /sessions -> Accounts::login    -> todo-auth thread: limiter, verify
//! ```
//!
//! A hash costs tens of milliseconds by design (OWASP's argon2id parameters:
//! 19 MiB, 2 passes, 1 lane), which would stall every connection of a core,
//! so the work runs on its own threads (`todo-auth`, `--auth-threads`).
//!
//! A wrong password and an unknown username take the same path: an unknown
//! user is checked against a hash made at start-up, so both cost one argon2
//! verification and answer the same 401 ([`Accounts::hashes`] counts every
//! argon2 run, which is how the tests hold this). Failures are counted per
//! username and per client address; past the limit, a login is answered 429
//! with `Retry-After` before any hashing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use todo_model::User;

/// Failed logins allowed per username, and per client address, in one
/// [`FAILURE_WINDOW`].
pub const FAILURES_PER_USERNAME: u32 = 5;
pub const FAILURES_PER_ADDRESS: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failure counters kept at most; expired ones are dropped past this.
const COUNTERS_MAX: usize = 100_000;
const QUEUE_DEPTH: usize = 1024;

/// OWASP's argon2id recommendation: m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// What a login attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The password matches: the user's id.
    Ok(u64),
    /// Unknown username or wrong password: one answer for both.
    Refused,
    /// Too many recent failures: retry after this many seconds.
    Limited(u64),
}

enum Job {
    Hash(String, flume::Sender<Option<String>>),
    Login {
        user: Option<User>,
        username: String,
        password: String,
        peer: Option<IpAddr>,
        reply: flume::Sender<Login>,
    },
}

/// The cores' handle on the `todo-auth` threads.
#[derive(Clone)]
pub struct Accounts {
    tx: flume::Sender<Job>,
    hashes: Arc<AtomicU64>,
}

#[derive(Default)]
struct Limiter {
    /// Key -> (window start, failures in it).
    counts: HashMap<Key, (Instant, u32)>,
}

#[derive(Hash, PartialEq, Eq)]
enum Key {
    Username(String),
    Address(IpAddr),
}

impl Limiter {
    /// Seconds to wait before `key` may try again, if it is over `limit`.
    fn blocked(&self, key: &Key, limit: u32, now: Instant) -> Option<u64> {
        let (start, n) = self.counts.get(key)?;
        let ends = *start + FAILURE_WINDOW;
        (*n >= limit && ends > now).then(|| (ends - now).as_secs().max(1))
    }

    fn fail(&mut self, key: Key, now: Instant) {
        if self.counts.len() >= COUNTERS_MAX {
            self.counts
                .retain(|_, (start, _)| *start + FAILURE_WINDOW > now);
        }
        let entry = self.counts.entry(key).or_insert((now, 0));
        if entry.0 + FAILURE_WINDOW <= now {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

impl Accounts {
    /// Start `threads` hashing threads.
    pub fn start(threads: usize) -> std::io::Result<Accounts> {
        let (tx, rx) = flume::bounded::<Job>(QUEUE_DEPTH);
        let hashes = Arc::new(AtomicU64::new(0));
        // The stand-in for unknown users: a real hash of a random password,
        // so checking it costs what checking a user's does.
        let decoy = hash_password(&random_password()).expect("hashing a random password");
        let limiter = Arc::new(Mutex::new(Limiter::default()));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let hashes = hashes.clone();
            let decoy = decoy.clone();
            let limiter = limiter.clone();
            thread::Builder::new()
                .name(format!("todo-auth-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        run(job, &hashes, &decoy, &limiter);
                    }
                })?;
        }
        Ok(Accounts { tx, hashes })
    }

    /// Argon2 runs so far (hashes and verifications).
    pub fn hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    /// The PHC string of `password`; `None` if the threads are gone.
    pub async fn hash(&self, password: String) -> Option<String> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send_async(Job::Hash(password, tx)).await.ok()?;
        rx.recv_async().await.ok().flatten()
    }

    /// Check a login; `user` is the account found for `username`, if any.
    pub async fn login(
        &self,
        user: Option<User>,
        username: String,
        password: String,
        peer: Option<IpAddr>,
    ) -> Option<Login> {
        let (reply, rx) = flume::bounded(1);
        let job = Job::Login {
            user,
            username,
            password,
            peer,
            reply,
        };
        self.tx.send_async(job).await.ok()?;
        rx.recv_async().await.ok()
    }
}

fn run(job: Job, hashes: &AtomicU64, decoy: &str, limiter: &Mutex<Limiter>) {
    match job {
        Job::Hash(password, reply) => {
            hashes.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(hash_password(&password));
        }
        Job::Login {
            user,
            username,
            password,
            peer,
            reply,
        } => {
            let now = Instant::now();
            let by_name = Key::Username(username);
            let by_peer = peer.map(Key::Address);
            {
                let l = limiter.lock().unwrap_or_else(|e| e.into_inner());
                let wait = l.blocked(&by_name, FAILURES_PER_USERNAME, now).or_else(|| {
                    by_peer
                        .as_ref()
                        .and_then(|k| l.blocked(k, FAILURES_PER_ADDRESS, now))
                });
                if let Some(secs) = wait {
                    let _ = reply.send(Login::Limited(secs));
                    return;
                }
            }
            // One verification whether or not the user exists.
            let phc = user.as_ref().map_or(decoy, |u| u.password_hash.as_str());
            hashes.fetch_add(1, Ordering::Relaxed);
            let matches = verify_password(phc, &password);
            let answer = match user {
                Some(u) if matches => Login::Ok(u.id),
                _ => Login::Refused,
            };
            let mut l = limiter.lock().unwrap_or_else(|e| e.into_inner());
            if answer == Login::Refused {
                l.fail(by_name, now);
                if let Some(k) = by_peer {
                    l.fail(k, now);
                }
            } else {
                // A user who got in starts with a clean slate; the address
                // keeps its count (it may be guessing other names).
                l.counts.remove(&by_name);
            }
            let _ = reply.send(answer);
        }
    }
}

pub fn hash_password(password: &str) -> Option<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .ok()
        .map(|h| h.to_string())
}

fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

fn random_password() -> String {
    SaltString::generate(&mut OsRng).as_str().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_argon2id() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "wrong horse"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn the_limiter_blocks_past_the_limit_and_forgets_after_the_window() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let key = || Key::Username("alice".into());
        for _ in 0..FAILURES_PER_USERNAME {
            assert_eq!(l.blocked(&key(), FAILURES_PER_USERNAME, t0), None);
            l.fail(key(), t0);
        }
        let wait = l.blocked(&key(), FAILURES_PER_USERNAME, t0).unwrap();
        assert!(wait >= 59, "{wait}");
        let later = t0 + FAILURE_WINDOW + Duration::from_millis(1);
        assert_eq!(l.blocked(&key(), FAILURES_PER_USERNAME, later), None);
    }
}
