//! The Security Association Database (RFC 4301 §4.4.2) and the outbound selector lookup
//! (RFC 4301 §4.4.1, §5.1): inbound SAs by SPI, outbound SAs by traffic selectors.
//!
//! The database is read on the packet path through `&self` and changed with `&mut self`. The
//! data plane publishes a new version by cloning (SAs are `Arc`s, so a clone is cheap) and
//! swapping it atomically; drop counters that belong to no SA live behind an `Arc` and survive
//! the clone.

use core::hash::{BuildHasher, Hasher};
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::sync::Arc;

use crate::error::DropReason;
use crate::sa::{InboundSa, Opened, OutboundSa};
use crate::selector::{FlowKey, SelectorPolicy};
use crate::udp::{NON_ESP_MARKER_LEN, Udp4500, classify_udp4500};

/// Hasher for SPIs: one multiply. The table only holds our own SPIs, and lookups of foreign
/// SPIs cannot grow it, so a keyed hash buys nothing here.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpiHasher(u64);

impl Hasher for SpiHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Builds [`SpiHasher`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpiHash;

impl BuildHasher for SpiHash {
    type Hasher = SpiHasher;
    fn build_hasher(&self) -> SpiHasher {
        SpiHasher(0)
    }
}

/// Drops that happen before an SA is known.
#[derive(Debug, Default)]
struct DbCounters {
    unknown_spi: AtomicU64,
    malformed: AtomicU64,
}

/// Snapshot of the database-level drop counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbStats {
    /// ESP packets whose SPI matched no inbound SA.
    pub unknown_spi: u64,
    /// UDP payloads that were neither ESP, IKE nor keepalive, or too short for an SPI.
    pub malformed: u64,
}

#[derive(Clone, Debug)]
struct InboundEntry {
    sa: Arc<InboundSa>,
    policy: Option<SelectorPolicy>,
}

/// An outbound policy: packets matching `policy` go through `sa` to `peer`.
#[derive(Clone, Debug)]
pub struct OutboundEntry<P> {
    /// Selectors.
    pub policy: SelectorPolicy,
    /// The SA.
    pub sa: Arc<OutboundSa>,
    /// Caller data for the outer framing (peer address, tunnel ID, ...).
    pub peer: P,
}

/// What a datagram received on UDP port 4500 turned out to be.
#[derive(Debug)]
pub enum Received<'a> {
    /// An ESP packet opened by `sa`: the inner packet is at `payload[opened.inner]`.
    Esp {
        /// The SA that opened it.
        sa: &'a Arc<InboundSa>,
        /// Where the inner packet lies.
        opened: Opened,
    },
    /// An IKE message at `payload[NON_ESP_MARKER_LEN..]`: hand it to the control plane.
    Ike,
    /// A NAT keepalive: nothing to do.
    Keepalive,
}

/// The SA database. `P` is caller data stored with each outbound policy.
#[derive(Clone, Debug)]
pub struct SaDatabase<P = ()> {
    inbound: HashMap<u32, InboundEntry, SpiHash>,
    outbound: Vec<OutboundEntry<P>>,
    counters: Arc<DbCounters>,
}

impl<P> Default for SaDatabase<P> {
    fn default() -> Self {
        SaDatabase {
            inbound: HashMap::with_hasher(SpiHash),
            outbound: Vec::new(),
            counters: Arc::default(),
        }
    }
}

impl<P> SaDatabase<P> {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an inbound SA. With `policy`, decrypted packets must match it
    /// (RFC 4301 §5.2), otherwise they are dropped as [`DropReason::PolicyMismatch`].
    pub fn insert_inbound(
        &mut self,
        sa: Arc<InboundSa>,
        policy: Option<SelectorPolicy>,
    ) -> Option<Arc<InboundSa>> {
        self.inbound
            .insert(sa.spi(), InboundEntry { sa, policy })
            .map(|e| e.sa)
    }

    /// Removes an inbound SA.
    pub fn remove_inbound(&mut self, spi: u32) -> Option<Arc<InboundSa>> {
        self.inbound.remove(&spi).map(|e| e.sa)
    }

    /// The inbound SA with this SPI.
    #[inline]
    pub fn inbound(&self, spi: u32) -> Option<&Arc<InboundSa>> {
        self.inbound.get(&spi).map(|e| &e.sa)
    }

    /// Iterates over the inbound SAs.
    pub fn inbound_sas(&self) -> impl Iterator<Item = &Arc<InboundSa>> {
        self.inbound.values().map(|e| &e.sa)
    }

    /// Appends an outbound policy. Lookups take the first policy that matches, so add the more
    /// specific ones first.
    pub fn push_outbound(&mut self, policy: SelectorPolicy, sa: Arc<OutboundSa>, peer: P) {
        self.outbound.push(OutboundEntry { policy, sa, peer });
    }

    /// Points every policy that used the SA `old_spi` at `sa` instead (rekey). Returns how many
    /// policies changed.
    pub fn replace_outbound_sa(&mut self, old_spi: u32, sa: &Arc<OutboundSa>) -> usize {
        let mut n = 0;
        for e in self.outbound.iter_mut().filter(|e| e.sa.spi() == old_spi) {
            e.sa = Arc::clone(sa);
            n += 1;
        }
        n
    }

    /// Removes every policy that uses the SA `spi`. Returns how many were removed.
    pub fn remove_outbound(&mut self, spi: u32) -> usize {
        let before = self.outbound.len();
        self.outbound.retain(|e| e.sa.spi() != spi);
        before - self.outbound.len()
    }

    /// The outbound policies in lookup order.
    pub fn outbound_entries(&self) -> &[OutboundEntry<P>] {
        &self.outbound
    }

    /// Finds the policy for an outbound inner IP packet.
    #[inline]
    pub fn lookup_outbound(&self, packet: &[u8]) -> Option<&OutboundEntry<P>> {
        let key = FlowKey::parse(packet)?;
        self.lookup_flow(&key)
    }

    /// Finds the policy for an outbound flow.
    pub fn lookup_flow(&self, key: &FlowKey) -> Option<&OutboundEntry<P>> {
        self.outbound
            .iter()
            .find(|e| e.policy.matches_outbound(key))
    }

    /// Finds the SA by the packet's SPI and opens the ESP packet `packet` (SPI through ICV) in
    /// place; checks the inner packet against the SA's selectors if it has any.
    #[inline]
    pub fn open(&self, packet: &mut [u8]) -> Result<(&Arc<InboundSa>, Opened), DropReason> {
        let spi = match packet {
            [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
            _ => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                return Err(DropReason::Truncated);
            }
        };
        let Some(entry) = self.inbound.get(&spi) else {
            self.counters.unknown_spi.fetch_add(1, Ordering::Relaxed);
            return Err(DropReason::UnknownSpi);
        };
        let opened = entry.sa.open(packet)?;
        if let Some(policy) = &entry.policy {
            let ok = packet
                .get(opened.inner.clone())
                .and_then(FlowKey::parse)
                .is_some_and(|k| policy.matches_inbound(&k));
            if !ok {
                entry.sa.count_drop(DropReason::PolicyMismatch);
                return Err(DropReason::PolicyMismatch);
            }
        }
        Ok((&entry.sa, opened))
    }

    /// Handles one UDP payload received on port 4500 (RFC 3948): opens ESP, passes IKE and
    /// keepalives back to the caller.
    #[inline]
    pub fn receive_udp4500<'s>(&'s self, payload: &mut [u8]) -> Result<Received<'s>, DropReason> {
        match classify_udp4500(payload) {
            Udp4500::Esp => {
                let (sa, opened) = self.open(payload)?;
                Ok(Received::Esp { sa, opened })
            }
            Udp4500::Ike => {
                debug_assert!(payload.len() >= NON_ESP_MARKER_LEN);
                Ok(Received::Ike)
            }
            Udp4500::Keepalive => Ok(Received::Keepalive),
            Udp4500::Malformed => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                Err(DropReason::NotEsp)
            }
        }
    }

    /// Database-level drop counters.
    pub fn stats(&self) -> DbStats {
        DbStats {
            unknown_spi: self.counters.unknown_spi.load(Ordering::Relaxed),
            malformed: self.counters.malformed.load(Ordering::Relaxed),
        }
    }
}
