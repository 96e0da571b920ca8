//! Handshake slots per source address, so that one address that opens connections and
//! never finishes a TLS handshake (a flood of idle TCP connections) cannot take the
//! connection slots every other client needs.
//!
//! A connection holds a slot of its address from its accept until its handshake ends
//! (done, failed or timed out). While the server is crowded (see
//! [`crate::tls::accept_loop`]), a connection past its source's cap is closed at once,
//! before the TLS handshake; otherwise every connection is let in, so that a burst of
//! clients on one host (a CI runner starting 200 jobc) is not turned away from an idle
//! server. IPv4 addresses count one by one; IPv6 addresses count by their /64,
//! the block one host or customer usually gets (one host can pick any address in it);
//! IPv4-mapped IPv6 addresses count as the IPv4 address they map.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Where a connection comes from, as far as the cap is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    /// The first 64 bits of the address.
    V6Prefix([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Source::V6Prefix(prefix)
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(o) => std::net::Ipv4Addr::from(*o).fmt(f),
            Source::V6Prefix(p) => {
                let mut full = [0; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    handshaking: usize,
    /// Connections refused since the source last had no handshake in flight.
    refused: u64,
}

/// The handshakes in flight, per source.
#[derive(Debug)]
pub struct Handshakes {
    per_source: usize,
    entries: Mutex<HashMap<Source, Entry>>,
}

impl Handshakes {
    pub fn new(per_source: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            per_source,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Source, Entry>> {
        // Each update is one step under the lock: a panicked holder left it consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one handshake from `ip`, or `None` if `crowded` and its source is at the
    /// cap. A flood is logged twice: at its first refusal, and with a count once its source
    /// has no handshake left in flight, so that it cannot flood the log too.
    pub fn try_begin(self: &Arc<Self>, ip: IpAddr, crowded: bool) -> Option<HandshakeSlot> {
        let source = Source::of(ip);
        let mut entries = self.entries();
        let entry = entries.entry(source).or_default();
        if crowded && entry.handshaking >= self.per_source {
            if entry.refused == 0 {
                tracing::warn!(%source, limit = self.per_source, "connection refused before the TLS handshake: too many handshakes in flight from this address; further refusals are counted");
            }
            entry.refused += 1;
            return None;
        }
        entry.handshaking += 1;
        Some(HandshakeSlot {
            handshakes: Arc::clone(self),
            source,
        })
    }

    fn end(&self, source: Source) {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&source) else {
            return;
        };
        entry.handshaking = entry.handshaking.saturating_sub(1);
        if entry.handshaking == 0 {
            let refused = entry.refused;
            entries.remove(&source);
            if refused > 0 {
                tracing::warn!(%source, refused, limit = self.per_source, "connections were refused before the TLS handshake: too many handshakes in flight from this address");
            }
        }
    }

    /// Handshakes in flight from `ip`'s source.
    pub fn in_flight(&self, ip: IpAddr) -> usize {
        self.entries()
            .get(&Source::of(ip))
            .map_or(0, |e| e.handshaking)
    }
}

/// One handshake in flight; dropping it (the handshake ended, however) frees the slot.
#[derive(Debug)]
pub struct HandshakeSlot {
    handshakes: Arc<Handshakes>,
    source: Source,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.handshakes.end(self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_are_v4_addresses_and_v6_prefixes() {
        assert_eq!(Source::of(ip("127.0.0.2")), Source::V4([127, 0, 0, 2]));
        assert_eq!(
            Source::of(ip("::ffff:127.0.0.2")),
            Source::V4([127, 0, 0, 2])
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:ffff:1:2:3"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn each_source_has_its_own_cap_and_slots_come_back() {
        let h = Handshakes::new(2);
        let a = h.try_begin(ip("127.0.0.2"), true).unwrap();
        let b = h.try_begin(ip("127.0.0.2"), true).unwrap();
        assert!(h.try_begin(ip("127.0.0.2"), true).is_none());
        assert!(h.try_begin(ip("::ffff:127.0.0.2"), true).is_none());
        let other = h.try_begin(ip("127.0.0.1"), true).unwrap();
        // An uncrowded server lets the source past its cap, and counts it.
        let extra = h.try_begin(ip("127.0.0.2"), false).unwrap();
        assert_eq!(h.in_flight(ip("127.0.0.2")), 3);
        drop((a, extra));
        assert_eq!(h.in_flight(ip("127.0.0.2")), 1);
        let c = h.try_begin(ip("127.0.0.2"), true).unwrap();
        drop((b, c, other));
        assert_eq!(h.in_flight(ip("127.0.0.2")), 0);
        assert!(
            h.entries().is_empty(),
            "sources without handshakes are forgotten"
        );
    }
}
