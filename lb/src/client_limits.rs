//! Per-client limits: connections at once and requests per second, keyed by
//! the client's address.
//!
//! Shared by every core (a client's connections land on different cores):
//! - the rate is governor's keyed GCRA limiter (a sharded map of atomic
//!   cells; no lock of ours), asked once per batch of pipelined requests, and
//!   once per request only for a batch that does not fit whole;
//! - connections are counted in a mutex-guarded map touched once when a
//!   connection opens and once when it closes; a client's entry goes with its
//!   last connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Clients remembered by the rate limiter before those with a full allowance
/// (nothing about them still limits) are forgotten.
const RATE_KEYS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct ClientLimitConfig {
    /// Requests per second per client; 0 means unlimited.
    pub rate: f64,
    /// Requests a client may send at once after a quiet spell.
    pub burst: f64,
    /// Connections per client; 0 means unlimited.
    pub max_conns: u32,
}

pub struct ClientLimits {
    config: ClientLimitConfig,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    conns: Mutex<HashMap<IpAddr, u32>>,
}

/// A client's connection, counted until dropped.
pub struct ClientConn {
    ip: IpAddr,
    limits: Arc<ClientLimits>,
}

impl ClientLimits {
    pub fn new(config: ClientLimitConfig) -> Self {
        let rate = (config.rate > 0.0).then(|| {
            let burst = NonZeroU32::new(config.burst.round().clamp(1.0, u32::MAX as f64) as u32)
                .expect("clamped to at least 1");
            let every = Duration::from_secs_f64(1.0 / config.rate);
            let quota = Quota::with_period(every)
                .expect("a positive rate has a positive period")
                .allow_burst(burst);
            RateLimiter::keyed(quota)
        });
        ClientLimits {
            config,
            rate,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Count a new connection from `ip`; `None` when the client is at its
    /// connection limit.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<ClientConn> {
        if self.config.max_conns > 0 {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            let n = conns.entry(ip).or_insert(0);
            if *n >= self.config.max_conns {
                return None;
            }
            *n += 1;
        }
        if let Some(rate) = &self.rate {
            if rate.len() > RATE_KEYS_MAX {
                rate.retain_recent();
            }
        }
        Some(ClientConn {
            ip,
            limits: self.clone(),
        })
    }
}

impl ClientConn {
    /// Take up to `n` requests from the client's allowance; how many may go
    /// (the first that many of the batch).
    pub fn admit(&self, n: usize) -> usize {
        let Some(rate) = &self.limits.rate else {
            return n;
        };
        let whole = NonZeroU32::new(n.min(u32::MAX as usize) as u32);
        if let Some(whole) = whole {
            if let Ok(Ok(())) = rate.check_key_n(&self.ip, whole) {
                return n;
            }
        }
        // Not all of it: as many as the allowance holds now.
        (0..n)
            .take_while(|_| rate.check_key(&self.ip).is_ok())
            .count()
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if self.limits.config.max_conns == 0 {
            return;
        }
        let mut conns = self.limits.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = conns.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_over_the_limit_are_refused_until_one_closes() {
        let limits = Arc::new(ClientLimits::new(ClientLimitConfig {
            rate: 0.0,
            burst: 0.0,
            max_conns: 2,
        }));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = limits.connect(ip).unwrap();
        let _b = limits.connect(ip).unwrap();
        assert!(limits.connect(ip).is_none());
        assert!(limits.connect("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limits.connect(ip).is_some());
    }

    #[test]
    fn the_last_connection_takes_its_entry_along() {
        let limits = Arc::new(ClientLimits::new(ClientLimitConfig {
            rate: 0.0,
            burst: 0.0,
            max_conns: 5,
        }));
        let conns: Vec<_> = (1..=50u8)
            .map(|i| limits.connect(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(limits.conns.lock().unwrap().len(), 50);
        drop(conns);
        assert!(limits.conns.lock().unwrap().is_empty());
    }

    #[test]
    fn the_allowance_grants_its_burst_and_no_more_at_once() {
        // 10 requests a second: a stall of the test thread below 100 ms
        // cannot add one between the calls. (Refilling is governor's.)
        let limits = Arc::new(ClientLimits::new(ClientLimitConfig {
            rate: 10.0,
            burst: 10.0,
            max_conns: 0,
        }));
        let c = limits.connect("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(c.admit(8), 8);
        assert_eq!(c.admit(8), 2);
        assert_eq!(c.admit(1), 0);
        // Another client has its own allowance.
        let other = limits.connect("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(other.admit(10), 10);
    }
}
