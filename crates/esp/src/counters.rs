//! Per-SA counters and lifetime limits (RFC 4301 §4.4.2.1: soft and hard lifetimes in bytes and
//! packets; RFC 4303 §3.3.3: the sequence counter must not cycle).
//!
//! All counters are relaxed atomics so that several worker threads can share one SA. Hard limits
//! are checked before each packet and crossed after it, so concurrent workers may overshoot a
//! hard limit by at most one packet each.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::error::{DropReason, SealError};

/// Soft and hard lifetime limits. `None` means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes (of inner packets) after which the SA asks to be rekeyed.
    pub soft_bytes: Option<u64>,
    /// Bytes after which the SA refuses traffic.
    pub hard_bytes: Option<u64>,
    /// Packets after which the SA asks to be rekeyed.
    pub soft_packets: Option<u64>,
    /// Packets after which the SA refuses traffic.
    pub hard_packets: Option<u64>,
}

/// Where an SA stands in its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LifetimeState {
    /// Below every soft limit.
    Active = 0,
    /// A soft limit was reached (or the sequence space is running out): rekey now.
    RekeyNeeded = 1,
    /// A hard limit was reached: the SA carries no more traffic.
    Expired = 2,
}

impl LifetimeState {
    fn from_u8(v: u8) -> LifetimeState {
        match v {
            0 => LifetimeState::Active,
            1 => LifetimeState::RekeyNeeded,
            _ => LifetimeState::Expired,
        }
    }
}

/// Packet and byte counters with lifetime tracking, shared by inbound and outbound SAs.
#[derive(Debug)]
pub(crate) struct Lifetime {
    packets: AtomicU64,
    bytes: AtomicU64,
    state: AtomicU8,
    signal: AtomicBool,
    soft_bytes: u64,
    hard_bytes: u64,
    soft_packets: u64,
    hard_packets: u64,
}

impl Lifetime {
    pub(crate) fn new(l: Limits) -> Lifetime {
        let hard_bytes = l.hard_bytes.unwrap_or(u64::MAX);
        let hard_packets = l.hard_packets.unwrap_or(u64::MAX);
        Lifetime {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            state: AtomicU8::new(0),
            signal: AtomicBool::new(false),
            // A soft limit never lies beyond its hard one: `account_nth` checks the hard limit
            // only once a soft one is crossed, so a hard limit alone must still expire the SA.
            soft_bytes: l.soft_bytes.unwrap_or(u64::MAX).min(hard_bytes),
            hard_bytes,
            soft_packets: l.soft_packets.unwrap_or(u64::MAX).min(hard_packets),
            hard_packets,
        }
    }

    #[inline]
    pub(crate) fn is_expired(&self) -> bool {
        self.state.load(Ordering::Relaxed) >= LifetimeState::Expired as u8
    }

    #[inline]
    pub(crate) fn raise(&self, to: LifetimeState) {
        let prev = self.state.fetch_max(to as u8, Ordering::AcqRel);
        if prev == LifetimeState::Active as u8 {
            self.signal.store(true, Ordering::Release);
        }
    }

    /// Counts one packet of `bytes` bytes and moves the state when a limit is crossed.
    #[inline]
    pub(crate) fn account(&self, bytes: u64) {
        let p = self.packets.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.account_nth(p, bytes);
    }

    /// Counts bytes of the `p`-th packet whose number the caller already knows (the outbound
    /// SA derives it from its sequence counter and saves an atomic operation per packet).
    #[inline]
    pub(crate) fn account_nth(&self, p: u64, bytes: u64) {
        let b = self
            .bytes
            .fetch_add(bytes, Ordering::Relaxed)
            .wrapping_add(bytes);
        if p >= self.soft_packets || b >= self.soft_bytes {
            if p >= self.hard_packets || b >= self.hard_bytes {
                self.raise(LifetimeState::Expired);
            } else {
                self.raise(LifetimeState::RekeyNeeded);
            }
        }
    }

    pub(crate) fn state(&self) -> LifetimeState {
        LifetimeState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn take_signal(&self) -> bool {
        self.signal.swap(false, Ordering::AcqRel)
    }

    #[inline]
    pub(crate) fn signal_pending(&self) -> bool {
        self.signal.load(Ordering::Relaxed)
    }

    pub(crate) fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Counts per drop reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts(pub [u64; DropReason::COUNT]);

impl DropCounts {
    /// Count for one reason.
    pub fn get(&self, r: DropReason) -> u64 {
        self.0.get(r.index()).copied().unwrap_or(0)
    }
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// `(reason, count)` pairs, including zero counts.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().copied().zip(self.0.iter().copied())
    }
}

/// Counts per seal error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealErrorCounts(pub [u64; SealError::COUNT]);

impl SealErrorCounts {
    /// Count for one error.
    pub fn get(&self, e: SealError) -> u64 {
        self.0.get(e.index()).copied().unwrap_or(0)
    }
    /// Sum over all errors.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// `(error, count)` pairs, including zero counts.
    pub fn iter(&self) -> impl Iterator<Item = (SealError, u64)> + '_ {
        SealError::ALL.iter().copied().zip(self.0.iter().copied())
    }
}

/// A snapshot of an inbound SA's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundStats {
    /// Packets opened and handed back (inner packets).
    pub packets: u64,
    /// Bytes of inner packets handed back.
    pub bytes: u64,
    /// Drops by reason.
    pub drops: DropCounts,
    /// Highest sequence number accepted.
    pub highest_seq: u64,
    /// Lifetime state.
    pub lifetime: LifetimeState,
}

/// A snapshot of an outbound SA's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundStats {
    /// Packets sealed.
    pub packets: u64,
    /// Payload bytes sealed.
    pub bytes: u64,
    /// Refusals by reason.
    pub errors: SealErrorCounts,
    /// The next sequence number to be used.
    pub next_seq: u64,
    /// Lifetime state.
    pub lifetime: LifetimeState,
}

/// An array of atomic counters indexed by an enum's `index()`.
#[derive(Debug)]
pub(crate) struct CounterArray<const N: usize>([AtomicU64; N]);

impl<const N: usize> CounterArray<N> {
    pub(crate) fn new() -> Self {
        CounterArray(core::array::from_fn(|_| AtomicU64::new(0)))
    }
    #[inline]
    pub(crate) fn bump(&self, i: usize) {
        if let Some(c) = self.0.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    pub(crate) fn snapshot(&self) -> [u64; N] {
        core::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}
