//! Data-plane counters: drops by reason and per-SA traffic (RFC 4303 section 3.4 auditable events,
//! RFC 4301 section 4.4.2.1 SA lifetime byte counts), lock-free atomics written by the workers and
//! read as plain snapshots by the control plane.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Why a packet was dropped. The set is open for additions (`#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// ESP packet for an SPI we do not have (RFC 4303 section 3.4.2).
    UnknownSpi,
    /// Sequence number already seen or left of the window (RFC 4303 section 3.4.3).
    Replay,
    /// Integrity check failed (RFC 4303 section 3.4.4).
    Icv,
    /// Malformed datagram or inner packet (bad lengths, padding, not IP).
    Malformed,
    /// Inner packet from the TUN for which no outbound SA (or selector) exists.
    NoSa,
    /// Inner packet larger than the tunnel can carry (an ICMP error was sent when allowed).
    TooBig,
    /// Decrypted packet whose addresses do not match the SA's traffic selectors (RFC 4301 5.2).
    Policy,
    /// SA reached its hard lifetime or sequence number limit.
    Expired,
    /// Writing to the TUN device failed.
    TunWrite,
    /// Sending on the UDP socket failed.
    UdpSend,
    /// The control plane's IKE queue was full.
    IkeQueueFull,
    /// A TFC dummy packet (RFC 4303 section 2.6): valid, discarded by design.
    Dummy,
    /// Any other reason reported by the ESP layer.
    Other,
}

impl DropReason {
    /// Every reason, in snapshot order.
    pub const ALL: [DropReason; 13] = [
        DropReason::UnknownSpi,
        DropReason::Replay,
        DropReason::Icv,
        DropReason::Malformed,
        DropReason::NoSa,
        DropReason::TooBig,
        DropReason::Policy,
        DropReason::Expired,
        DropReason::TunWrite,
        DropReason::UdpSend,
        DropReason::IkeQueueFull,
        DropReason::Dummy,
        DropReason::Other,
    ];

    fn index(self) -> usize {
        match self {
            DropReason::UnknownSpi => 0,
            DropReason::Replay => 1,
            DropReason::Icv => 2,
            DropReason::Malformed => 3,
            DropReason::NoSa => 4,
            DropReason::TooBig => 5,
            DropReason::Policy => 6,
            DropReason::Expired => 7,
            DropReason::TunWrite => 8,
            DropReason::UdpSend => 9,
            DropReason::IkeQueueFull => 10,
            DropReason::Dummy => 11,
            DropReason::Other => 12,
        }
    }

    /// Short stable name, for status output and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::Replay => "replay",
            DropReason::Icv => "icv",
            DropReason::Malformed => "malformed",
            DropReason::NoSa => "no_sa",
            DropReason::TooBig => "too_big",
            DropReason::Policy => "policy",
            DropReason::Expired => "expired",
            DropReason::TunWrite => "tun_write",
            DropReason::UdpSend => "udp_send",
            DropReason::IkeQueueFull => "ike_queue_full",
            DropReason::Dummy => "dummy",
            DropReason::Other => "other",
        }
    }
}

/// Global counters of one data plane.
#[derive(Debug, Default)]
pub(crate) struct GlobalCounters {
    drops: [AtomicU64; 13],
    pub(crate) keepalives_rx: AtomicU64,
    pub(crate) keepalives_tx: AtomicU64,
    pub(crate) ike_rx: AtomicU64,
    pub(crate) ike_tx: AtomicU64,
    pub(crate) icmp_sent: AtomicU64,
    pub(crate) mss_clamped: AtomicU64,
    pub(crate) batching: [AtomicU64; 9],
    pub(crate) steering_changes: AtomicU64,
    pub(crate) steering_local: AtomicBool,
    /// Sampled time from a TUN read to the last `sendmsg` of its batch.
    pub(crate) latency_out: LatencyHist,
    /// Sampled time from a UDP receive to the TUN write of what it carried.
    pub(crate) latency_in: LatencyHist,
}

/// Sub-buckets per power of two of [`LatencyHist`].
const SUB: u32 = 4;
/// Buckets of [`LatencyHist`]: nanoseconds up to 2^40 (about 18 minutes).
const BUCKETS: usize = 40 * SUB as usize;

/// A lock-free log-linear histogram of durations in nanoseconds: 4 buckets per power of two
/// (a quarter-octave, so a percentile read from it is within 19 % of the true value).
#[derive(Debug)]
pub(crate) struct LatencyHist {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LatencyHist {
    fn default() -> Self {
        LatencyHist {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// The bucket of `ns` (anything under 4 ns counts as 4), and the lower bound of bucket `i`
/// (buckets below `2 * SUB` stay empty).
fn bucket_of(ns: u64) -> usize {
    let ns = ns.max(4);
    let exp = 63 - ns.leading_zeros();
    let sub = ((ns >> (exp - 2)) & u64::from(SUB - 1)) as u32;
    ((exp * SUB + sub) as usize).min(BUCKETS - 1)
}

fn bucket_floor(i: usize) -> u64 {
    let exp = (i as u32 / SUB).max(2);
    let sub = u64::from(i as u32 % SUB);
    (1u64 << exp) | (sub << (exp - 2))
}

impl LatencyHist {
    #[inline]
    pub(crate) fn record(&self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Latency {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let pct = |q: u64| -> u64 {
            if total == 0 {
                return 0;
            }
            // The smallest bucket that holds the q-th percentile; its midpoint.
            let rank = (total * q).div_ceil(100).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    let lo = bucket_floor(i);
                    let hi = if i + 1 < BUCKETS {
                        bucket_floor(i + 1)
                    } else {
                        lo
                    };
                    return lo + (hi - lo) / 2;
                }
            }
            0
        };
        let samples = self.count.load(Relaxed);
        Latency {
            samples,
            mean_ns: self.sum_ns.load(Relaxed).checked_div(samples).unwrap_or(0),
            p50_ns: pct(50),
            p99_ns: pct(99),
            max_ns: self.max_ns.load(Relaxed),
        }
    }
}

/// Sampled latency of one stage of the data plane (one batch in 16 is timed: two reads of
/// the vDSO clock, no system call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Batches timed.
    pub samples: u64,
    /// Their mean, nanoseconds.
    pub mean_ns: u64,
    /// Median (within a quarter-octave), nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile (within a quarter-octave), nanoseconds.
    pub p99_ns: u64,
    /// The longest, nanoseconds.
    pub max_ns: u64,
}

/// Index into the batching counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Batch {
    TunReads = 0,
    TunPackets = 1,
    UdpSends = 2,
    UdpDatagramsSent = 3,
    UdpReceives = 4,
    UdpDatagramsReceived = 5,
    TunWrites = 6,
    TunPacketsWritten = 7,
    SendOrderWaits = 8,
}

impl GlobalCounters {
    #[inline]
    pub(crate) fn batch(&self, b: Batch, calls: usize) {
        self.batching[b as usize].fetch_add(calls as u64, Relaxed);
    }

    pub(crate) fn snapshot_batching(&self) -> Batching {
        let g = |b: Batch| self.batching[b as usize].load(Relaxed);
        Batching {
            tun_reads: g(Batch::TunReads),
            tun_packets: g(Batch::TunPackets),
            udp_sends: g(Batch::UdpSends),
            udp_datagrams_sent: g(Batch::UdpDatagramsSent),
            udp_receives: g(Batch::UdpReceives),
            udp_datagrams_received: g(Batch::UdpDatagramsReceived),
            tun_writes: g(Batch::TunWrites),
            tun_packets_written: g(Batch::TunPacketsWritten),
            send_order_waits: g(Batch::SendOrderWaits),
            steering_changes: self.steering_changes.load(Relaxed),
            cpu_local: self.steering_local.load(Relaxed),
        }
    }

    #[inline]
    pub(crate) fn drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot_drops(&self) -> Drops {
        let mut d = Drops::default();
        for r in DropReason::ALL {
            d.counts[r.index()] = self.drops[r.index()].load(Relaxed);
        }
        d
    }
}

/// Drop counts by reason, a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    counts: [u64; 13],
}

impl Drops {
    /// Number of packets dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Total drops.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(reason, count)` for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.counts[r.index()]))
    }
}

/// Direction of an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Decrypts what the peer sends.
    Inbound,
    /// Encrypts what we send.
    Outbound,
}

/// One SA's counters in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaStats {
    /// SPI in host order.
    pub spi: u32,
    /// Direction.
    pub direction: Direction,
    /// Tunnel the SA belongs to.
    pub tunnel: crate::TunnelId,
    /// Packets carried.
    pub packets: u64,
    /// Inner (plaintext) bytes carried.
    pub bytes: u64,
}

/// One SA's sequence number state in a snapshot: what a standby appliance needs to take the SA
/// over (with the inbound bitmap from [`crate::Dataplane::inbound_window`]). Read from the SA's
/// atomics like the other counters: no lock and no work on the packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaSeq {
    /// SPI in host order.
    pub spi: u32,
    /// Direction.
    pub direction: Direction,
    /// Tunnel the SA belongs to.
    pub tunnel: crate::TunnelId,
    /// Outbound: the next sequence number the SA will use ([`esp::OutboundSa::next_seq`]: every
    /// number below it has been used, and more may be by the time it is read; a standby starts
    /// beyond it by the replication interval). Inbound: the highest number accepted (0: none).
    pub seq: u64,
}

/// A snapshot of all counters of a data plane (`Default`: nothing counted yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Per SA counters (installed SAs only).
    pub sas: Vec<SaStats>,
    /// Per SA sequence number state (installed SAs only, in the order of `sas`).
    pub seqs: Vec<SaSeq>,
    /// Drops by reason.
    pub drops: Drops,
    /// NAT keepalives received (counted, then dropped: RFC 3948 section 2.3).
    pub keepalives_rx: u64,
    /// NAT keepalives sent.
    pub keepalives_tx: u64,
    /// IKE datagrams received on the ESP socket and handed to the control plane.
    pub ike_rx: u64,
    /// IKE datagrams sent for the control plane.
    pub ike_tx: u64,
    /// ICMP "too big" errors sent back to inner senders.
    pub icmp_sent: u64,
    /// TCP SYNs whose MSS was clamped.
    pub mss_clamped: u64,
    /// How well I/O is batched (offloads, GSO, GRO).
    pub batching: Batching,
    /// Sampled time a batch spends in the data plane from its TUN read to its last UDP send.
    pub latency_out: Latency,
    /// Sampled time from a UDP receive to the TUN write of what it carried (coalescing
    /// included).
    pub latency_in: Latency,
}

/// System calls versus packets on each side of the worker: the ratio shows how much TUN
/// offload, UDP GSO/GRO and TCP coalescing save.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batching {
    /// Successful TUN reads.
    pub tun_reads: u64,
    /// Inner packets (segments) they yielded.
    pub tun_packets: u64,
    /// `sendmsg` calls on the UDP socket (ESP).
    pub udp_sends: u64,
    /// ESP datagrams they carried.
    pub udp_datagrams_sent: u64,
    /// Successful `recvmsg` calls.
    pub udp_receives: u64,
    /// Datagrams they returned.
    pub udp_datagrams_received: u64,
    /// TUN writes (inbound).
    pub tun_writes: u64,
    /// Inner packets they carried.
    pub tun_packets_written: u64,
    /// TUN batches whose worker waited for another worker to finish sending on the same
    /// tunnel (each tunnel's ESP leaves in sequence-number order: one worker at a time seals
    /// and sends it).
    pub send_order_waits: u64,
    /// Switches between CPU-local and hash steering (`DataplaneConfig::cpu_affinity`).
    pub steering_changes: u64,
    /// Steering is CPU-local now (workers pinned, packets to the current CPU's worker).
    pub cpu_local: bool,
}

impl Snapshot {
    /// Counters of the SA named by (tunnel, direction, SPI), if installed.
    pub fn sa_of(
        &self,
        tunnel: crate::TunnelId,
        spi: u32,
        direction: Direction,
    ) -> Option<&SaStats> {
        self.sas
            .iter()
            .find(|s| s.tunnel == tunnel && s.spi == spi && s.direction == direction)
    }

    /// Sequence number state of the SA named by (tunnel, direction, SPI), if installed (see
    /// [`SaSeq::seq`]).
    pub fn seq_of(&self, tunnel: crate::TunnelId, spi: u32, direction: Direction) -> Option<u64> {
        self.seqs
            .iter()
            .find(|s| s.tunnel == tunnel && s.spi == spi && s.direction == direction)
            .map(|s| s.seq)
    }

    /// Counters of the SA with this SPI and direction, if installed (the first of any tunnel).
    pub fn sa(&self, spi: u32, direction: Direction) -> Option<&SaStats> {
        self.sas
            .iter()
            .find(|s| s.spi == spi && s.direction == direction)
    }
}

impl From<esp::DropReason> for DropReason {
    fn from(r: esp::DropReason) -> Self {
        use esp::DropReason as E;
        match r {
            E::UnknownSpi | E::WrongSpi => DropReason::UnknownSpi,
            E::BadSequence | E::Replayed | E::TooOld => DropReason::Replay,
            E::AuthFailed => DropReason::Icv,
            E::Truncated
            | E::Misaligned
            | E::BadTrailer
            | E::BadPadding
            | E::UnsupportedNextHeader
            | E::BadInnerPacket
            | E::NotEsp => DropReason::Malformed,
            E::PolicyMismatch => DropReason::Policy,
            E::Dummy => DropReason::Dummy,
            E::Expired => DropReason::Expired,
            _ => DropReason::Other,
        }
    }
}

impl From<esp::SealError> for DropReason {
    fn from(e: esp::SealError) -> Self {
        match e {
            esp::SealError::Expired | esp::SealError::SequenceExhausted => DropReason::Expired,
            _ => DropReason::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_cover_every_duration_in_order() {
        let mut last = 0;
        for i in 2 * SUB as usize..BUCKETS {
            let lo = bucket_floor(i);
            assert!(lo >= last, "bucket {i} starts at {lo}, before {last}");
            assert_eq!(bucket_of(lo), i, "{lo} ns");
            last = lo;
        }
        assert_eq!(bucket_of(1), bucket_of(4));
        for ns in [4u64, 5, 7, 100, 999, 1_000, 1_234_567, 1 << 39] {
            let i = bucket_of(ns);
            assert!(bucket_floor(i) <= ns, "{ns} below its bucket");
            if i + 1 < BUCKETS {
                assert!(ns < bucket_floor(i + 1), "{ns} beyond its bucket");
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_within_a_quarter_octave() {
        let h = LatencyHist::default();
        assert_eq!(h.snapshot(), Latency::default());
        // 98 fast batches of 20 us, two slow ones of 3 ms.
        for _ in 0..98 {
            h.record(Duration::from_micros(20));
        }
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(3));
        let l = h.snapshot();
        assert_eq!(l.samples, 100);
        assert_eq!(l.max_ns, 3_000_000);
        assert_eq!(l.mean_ns, (98 * 20_000 + 2 * 3_000_000) / 100);
        let near = |got: u64, want: u64| got.abs_diff(want) * 100 <= want * 19;
        assert!(near(l.p50_ns, 20_000), "{l:?}");
        assert!(near(l.p99_ns, 3_000_000), "{l:?}");
    }
}
