//! Total and per-address connection caps, checked at accept before any
//! byte is read.
//!
//! Why both: the total cap keeps a listener below the process's file
//! descriptor limit (at that limit `accept` fails for everyone, the store
//! cannot open a file, and honest requests time out); the per-address cap
//! keeps one client (or one attacker) from taking the whole total. IPv6
//! peers are counted by their /64, the block one subscriber usually gets,
//! or a single host could walk through addresses and never hit its cap.
//! IPv4-mapped IPv6 addresses count as the IPv4 address.
//!
//! The cheap check goes first: the total is one atomic add, the
//! per-address count one short-lived map lock, so a flood is refused at
//! the cost of an `accept` and a `close`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::{ConnMetrics, ShedReason};

/// The address a per-address cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl From<IpAddr> for PeerKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(u32::from(v4)),
                None => PeerKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<PeerKey, usize>>,
    metrics: ConnMetrics,
}

/// Caps on open connections, shared by the accept loop and the permits it
/// hands out. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Inner>,
}

impl ConnectionLimiter {
    /// At most `max_total` connections, at most `max_per_ip` from one
    /// address; both at least 1. Open connections are reported on
    /// `metrics`' gauge; refusals are returned, not counted (the caller
    /// counts what it sheds, once).
    pub fn new(max_total: usize, max_per_ip: usize, metrics: ConnMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total: max_total.max(1),
                max_per_ip: max_per_ip.max(1),
                open: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// A permit for one connection from `peer`, or why not. The permit
    /// frees its place when dropped.
    pub fn try_acquire(&self, peer: IpAddr) -> Result<ConnectionPermit, ShedReason> {
        let inner = &self.inner;
        if inner.open.fetch_add(1, Ordering::AcqRel) >= inner.max_total {
            inner.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ShedReason::MaxConnections);
        }
        let key = PeerKey::from(peer);
        {
            // A panic while holding this lock cannot leave the counts
            // half-updated (each update is one statement), so a poisoned
            // lock is still consistent.
            let mut per_ip = inner.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = per_ip.entry(key).or_insert(0);
            if *count >= inner.max_per_ip {
                drop(per_ip);
                inner.open.fetch_sub(1, Ordering::AcqRel);
                return Err(ShedReason::PerIp);
            }
            *count += 1;
        }
        inner.metrics.opened();
        Ok(ConnectionPermit {
            limiter: self.inner.clone(),
            key,
        })
    }

    /// Connections holding a permit now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// The metrics this limiter reports open connections on.
    pub fn metrics(&self) -> &ConnMetrics {
        &self.inner.metrics
    }
}

/// One connection's place under the caps; released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<Inner>,
    key: PeerKey,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let inner = &self.limiter;
        {
            let mut per_ip = inner.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&self.key) {
                *count -= 1;
                if *count == 0 {
                    // Keeps the map as small as the set of connected peers.
                    per_ip.remove(&self.key);
                }
            }
        }
        inner.open.fetch_sub(1, Ordering::AcqRel);
        inner.metrics.closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_total_and_per_address_and_releases_on_drop() {
        let metrics = ConnMetrics::new();
        let limiter = ConnectionLimiter::new(3, 2, metrics.clone());
        let a1 = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        let _a2 = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("10.0.0.1")).unwrap_err(),
            ShedReason::PerIp
        );
        let _b = limiter.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("10.0.0.3")).unwrap_err(),
            ShedReason::MaxConnections
        );
        assert_eq!(limiter.open(), 3);
        assert_eq!(metrics.open(), 3);
        drop(a1);
        assert_eq!(limiter.open(), 2);
        let _a3 = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(metrics.open(), 3);
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_as_ipv4() {
        let limiter = ConnectionLimiter::new(10, 1, ConnMetrics::new());
        let _a = limiter.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            ShedReason::PerIp
        );
        let _b = limiter.try_acquire(ip("2001:db8:1:3::1")).unwrap();
        let _c = limiter.try_acquire(ip("192.0.2.7")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("::ffff:192.0.2.7")).unwrap_err(),
            ShedReason::PerIp
        );
    }
}
