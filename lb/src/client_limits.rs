//! Per-client limits: connections at once and requests per second, keyed by
//! the client's address.
//!
//! Shared by every core (a client's connections land on different cores):
//! a mutex-guarded map is touched once per connection, and each client's
//! token bucket once per batch of pipelined requests, not per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct ClientLimitConfig {
    /// Requests per second per client; 0 means unlimited.
    pub rate: f64,
    /// Bucket size, requests.
    pub burst: f64,
    /// Connections per client; 0 means unlimited.
    pub max_conns: u32,
}

pub struct ClientLimits {
    config: ClientLimitConfig,
    clients: Mutex<HashMap<IpAddr, Arc<Client>>>,
}

pub struct Client {
    conns: AtomicU32,
    /// Tokens and when they were last counted.
    bucket: Mutex<(f64, Instant)>,
}

/// A client's connection, counted until dropped.
pub struct ClientConn {
    client: Option<Arc<Client>>,
    config: ClientLimitConfig,
}

impl ClientLimits {
    pub fn new(config: ClientLimitConfig) -> Self {
        ClientLimits {
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.rate > 0.0 || self.config.max_conns > 0
    }

    /// Count a new connection from `ip`; `None` when the client is at its
    /// connection limit.
    pub fn connect(&self, ip: IpAddr) -> Option<ClientConn> {
        if !self.enabled() {
            return Some(ClientConn {
                client: None,
                config: self.config,
            });
        }
        let mut clients = self.clients.lock().unwrap();
        if clients.len() > 100_000 {
            // Forget clients with no connection and a full bucket: nothing
            // about them is still limiting.
            let now = Instant::now();
            let (rate, burst) = (self.config.rate, self.config.burst);
            clients.retain(|_, c| {
                let (tokens, at) = *c.bucket.lock().unwrap();
                c.conns.load(Ordering::Relaxed) > 0
                    || tokens + now.duration_since(at).as_secs_f64() * rate < burst
            });
        }
        let client = clients
            .entry(ip)
            .or_insert_with(|| {
                Arc::new(Client {
                    conns: AtomicU32::new(0),
                    bucket: Mutex::new((self.config.burst, Instant::now())),
                })
            })
            .clone();
        let before = client.conns.fetch_add(1, Ordering::Relaxed);
        if self.config.max_conns > 0 && before >= self.config.max_conns {
            client.conns.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ClientConn {
            client: Some(client),
            config: self.config,
        })
    }
}

impl ClientConn {
    /// Take up to `n` requests from the client's bucket; how many may go.
    pub fn admit(&self, n: usize) -> usize {
        let Some(client) = &self.client else {
            return n;
        };
        if self.config.rate <= 0.0 {
            return n;
        }
        let mut bucket = client.bucket.lock().unwrap();
        let now = Instant::now();
        let (tokens, at) = *bucket;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.config.rate)
            .min(self.config.burst);
        let granted = (tokens.floor() as usize).min(n);
        *bucket = (tokens - granted as f64, now);
        granted
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if let Some(c) = &self.client {
            c.conns.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_over_the_limit_are_refused_until_one_closes() {
        let limits = ClientLimits::new(ClientLimitConfig {
            rate: 0.0,
            burst: 0.0,
            max_conns: 2,
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = limits.connect(ip).unwrap();
        let _b = limits.connect(ip).unwrap();
        assert!(limits.connect(ip).is_none());
        assert!(limits.connect("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limits.connect(ip).is_some());
    }

    #[test]
    fn the_bucket_grants_its_burst_then_its_rate() {
        // 10 requests a second: a stall of the test thread below 100 ms
        // cannot add a token between the first two calls.
        let limits = ClientLimits::new(ClientLimitConfig {
            rate: 10.0,
            burst: 10.0,
            max_conns: 0,
        });
        let c = limits.connect("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(c.admit(8), 8);
        assert_eq!(c.admit(8), 2);
        std::thread::sleep(std::time::Duration::from_millis(250));
        let later = c.admit(100);
        assert!((2..=10).contains(&later), "{later}");
    }
}
