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
///
/// An inbound SA counts each packet with one atomic add to `recent`, which holds the packets
/// (upper 32 bits) and bytes (lower 32 bits) counted since the last fold; whoever sees either
/// half reach [`FOLD_AT`] moves it into `packets` and `bytes`. One locked instruction per packet
/// instead of two: on x86 each is a full barrier of about 20 cycles, a few percent of the raw
/// AES-GCM open of a small packet. An outbound SA derives its packet number from the sequence
/// counter and only adds to `bytes`.
#[derive(Debug)]
pub(crate) struct Lifetime {
    packets: AtomicU64,
    bytes: AtomicU64,
    recent: AtomicU64,
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
            recent: AtomicU64::new(0),
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
        if bytes >= MAX_RECENT_BYTES {
            return self.account_slow(bytes);
        }
        // The folded counts first: if a fold by another thread is seen here, the add below
        // comes after that fold's swap, so nothing is counted twice. A fold between the two
        // can only make these totals fall short, for this packet's limit check alone (never
        // expire an SA early).
        let (p0, b0) = (
            self.packets.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        );
        let inc = RECENT_PACKET | bytes;
        let now = self
            .recent
            .fetch_add(inc, Ordering::AcqRel)
            .wrapping_add(inc);
        if now & FOLD_MASK != 0 {
            self.fold();
        }
        let p = p0.wrapping_add(now >> 32);
        let b = b0.wrapping_add(now & RECENT_BYTES);
        self.check_limits(p, b);
    }

    /// A packet too large for `recent` (never on the ESP path: inner packets are < 64 KiB).
    #[cold]
    fn account_slow(&self, bytes: u64) {
        let p = self.packets.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let b = self
            .bytes
            .fetch_add(bytes, Ordering::AcqRel)
            .wrapping_add(bytes);
        let now = self.recent.load(Ordering::Acquire);
        self.check_limits(
            p.wrapping_add(now >> 32),
            b.wrapping_add(now & RECENT_BYTES),
        );
    }

    /// Moves what `recent` holds into `packets` and `bytes` (every 2^31 bytes or packets).
    #[cold]
    fn fold(&self) {
        let v = self.recent.swap(0, Ordering::AcqRel);
        self.packets.fetch_add(v >> 32, Ordering::Release);
        self.bytes.fetch_add(v & RECENT_BYTES, Ordering::Release);
    }

    /// Counts bytes of the `p`-th packet whose number the caller already knows (the outbound
    /// SA derives it from its sequence counter and saves an atomic operation per packet).
    #[inline]
    pub(crate) fn account_nth(&self, p: u64, bytes: u64) {
        let b = self
            .bytes
            .fetch_add(bytes, Ordering::Relaxed)
            .wrapping_add(bytes);
        self.check_limits(p, b);
    }

    #[inline]
    fn check_limits(&self, p: u64, b: u64) {
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

    /// Packets counted (by [`Self::account`]; while another thread folds, may fall short).
    pub(crate) fn packets(&self) -> u64 {
        let p = self.packets.load(Ordering::Acquire);
        p.wrapping_add(self.recent.load(Ordering::Acquire) >> 32)
    }

    /// Bytes counted (while another thread folds, may fall short).
    pub(crate) fn bytes(&self) -> u64 {
        let b = self.bytes.load(Ordering::Acquire);
        b.wrapping_add(self.recent.load(Ordering::Acquire) & RECENT_BYTES)
    }
}

/// One packet in [`Lifetime::recent`].
const RECENT_PACKET: u64 = 1 << 32;
/// The bytes half of [`Lifetime::recent`].
const RECENT_BYTES: u64 = (1 << 32) - 1;
/// Either half of [`Lifetime::recent`] at or above this is folded (`FOLD_MASK` tests both).
const FOLD_AT: u64 = 1 << 31;
const FOLD_MASK: u64 = FOLD_AT | (FOLD_AT << 32);
/// Larger packets bypass `recent`, so that what threads add between one crossing [`FOLD_AT`]
/// and its fold cannot carry the bytes into the packets half.
const MAX_RECENT_BYTES: u64 = 1 << 24;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_counts_fold_exactly_and_limits_see_the_totals() {
        // Packets of almost MAX_RECENT_BYTES cross FOLD_AT after 128: several folds.
        let big = MAX_RECENT_BYTES - 1;
        let l = Lifetime::new(Limits {
            hard_bytes: Some(300 * big + 1),
            ..Limits::default()
        });
        for i in 1..=300u64 {
            l.account(big);
            assert_eq!((l.packets(), l.bytes()), (i, i * big));
            assert_eq!(l.state(), LifetimeState::Active, "after {i}");
        }
        // The slow path (too large for `recent`) adds to the same totals.
        l.account(MAX_RECENT_BYTES);
        assert_eq!(l.packets(), 301);
        assert_eq!(l.bytes(), 300 * big + MAX_RECENT_BYTES);
        assert_eq!(l.state(), LifetimeState::Expired);
    }

    #[test]
    fn recent_counts_from_threads_add_up() {
        let l = std::sync::Arc::new(Lifetime::new(Limits::default()));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        // Some of them large, so that folds happen while others add.
                        l.account(if i % 7 == 0 { 1 << 23 } else { t + i % 1500 });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let want: u64 = (0..4u64)
            .flat_map(|t| {
                (0..20_000u64).map(move |i| if i % 7 == 0 { 1 << 23 } else { t + i % 1500 })
            })
            .sum();
        assert_eq!((l.packets(), l.bytes()), (80_000, want));
        assert_eq!(l.state(), LifetimeState::Active);
    }
}
