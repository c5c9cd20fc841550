//! The per-packet work of a worker, without I/O: outbound (TUN -> selector lookup -> MSS clamp ->
//! path MTU check -> ESP seal, RFC 4303 section 3.1.2 tunnel mode, RFC 4301 section 5.1) and
//! inbound (UDP 4500 demux, RFC 3948 section 2 -> SPI lookup -> ESP open with replay check ->
//! selector check, RFC 4301 section 5.2 -> MSS clamp -> TUN).
//!
//! These functions allocate nothing and copy nothing; the worker owns the buffers and the
//! kernel I/O around them.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::counters::{DropReason, GlobalCounters};
use crate::table::{SaTable, Table, TunnelId};
use crate::wire::{NEXT_HEADER_NONE, parse_ip};
use crate::{DataplaneEvent, IkeDatagram, icmp, mss};
use esp::{FlowKey, Udp4500, classify_udp4500};

/// Fixed per-tunnel parameters.
#[derive(Debug)]
pub(crate) struct TunnelParams {
    /// Route-based or policy-based: which outbound routes the tunnel takes.
    pub(crate) mode: crate::TunnelMode,
    pub(crate) mtu: u16,
    pub(crate) mss_clamp: Option<u16>,
    /// Clock second of the last "peer address changed" event (rate limit: one per second).
    pub(crate) last_rebind_event: AtomicU64,
    /// Held by a worker from the first seal of a TUN batch to its last send: sequence numbers
    /// are assigned and sent in one order, so each SA's ESP leaves in sequence-number order
    /// whichever worker read its packets (a peer's small replay window, such as strongSwan's,
    /// never sees one SA's packets interleaved by two workers). Other tunnels stay parallel.
    pub(crate) send_order: std::sync::Mutex<()>,
}

/// State shared by the workers, the housekeeping thread and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: SaTable,
    pub(crate) counters: GlobalCounters,
    pub(crate) tunnels: Vec<TunnelParams>,
    pub(crate) underlay_mtu: usize,
    pub(crate) stop: AtomicBool,
    /// Coarse clock in seconds since start, advanced by the housekeeping thread.
    pub(crate) clock: AtomicU64,
    pub(crate) events: tokio::sync::mpsc::UnboundedSender<DataplaneEvent>,
    pub(crate) ike: tokio::sync::mpsc::Sender<IkeDatagram>,
    pub(crate) local: SocketAddr,
    /// The housekeeping thread, woken when an SA crosses a lifetime limit so the control plane
    /// hears of it at once rather than at the next tick (at 5 Gbit/s a 250 ms tick is 150 MB).
    pub(crate) housekeeping: std::sync::OnceLock<std::thread::Thread>,
    /// Thread id of each worker (0 until it started), for CPU pinning by the housekeeping thread.
    pub(crate) worker_tids: Vec<std::sync::atomic::AtomicI32>,
    /// A worker saw a backlog under CPU-local steering ([`Shared::note_backlog`]).
    pub(crate) spread_now: AtomicBool,
}

/// What to do with a packet read from a TUN device.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OutAction {
    /// Send `buf[esp]` to `to` on the UDP socket.
    Send {
        esp: Range<usize>,
        to: SocketAddr,
        /// The tunnel's local address, on a wildcard-bound socket.
        from: Option<std::net::IpAddr>,
    },
    /// Write `reply[..len]` (an ICMP error) back into the TUN device.
    Reply { len: usize },
    /// Dropped (already counted).
    Drop,
}

/// What to do with a datagram received on the UDP socket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InAction {
    /// Write `buf[pkt]` into the TUN device of `tunnel`.
    Tun { tunnel: TunnelId, pkt: Range<usize> },
    /// An IKE message starts at `buf[offset]`: hand it to the control plane.
    Ike { offset: usize },
    /// Done (keepalive counted, or dropped and counted).
    Done,
}

/// A per-worker ICMP rate limit (RFC 4443 section 2.4 (f)): at most `PER_SECOND` errors per
/// clock second.
#[derive(Debug, Default)]
pub(crate) struct IcmpLimiter {
    second: u64,
    sent: u32,
}

impl IcmpLimiter {
    const PER_SECOND: u32 = 100;

    fn allow(&mut self, now: u64) -> bool {
        if now != self.second {
            self.second = now;
            self.sent = 0;
        }
        if self.sent < Self::PER_SECOND {
            self.sent += 1;
            true
        } else {
            false
        }
    }
}

/// Bytes the outer IP and UDP headers take for a peer at `peer`.
#[inline]
fn outer_overhead(peer: SocketAddr) -> usize {
    (if peer.is_ipv4() { 20 } else { 40 }) + 8
}

impl Shared {
    /// A worker found a backlog of `packets` in one wake-up. Under CPU-local steering one SA's
    /// packets are spread over the workers by the CPU they arrive on; with a backlog one worker
    /// can fall so far behind another that its packets land left of the peer's (or our) replay
    /// window. So a backlog asks the housekeeping thread to switch to hash steering at once
    /// rather than at its next rate measurement.
    #[inline]
    pub(crate) fn note_backlog(&self, packets: usize) {
        if packets >= crate::steer::BACKLOG_SPREAD
            && self.counters.steering_local.load(Relaxed)
            && !self.spread_now.swap(true, Relaxed)
        {
            self.wake_housekeeping();
        }
    }

    /// Wakes the housekeeping thread (a lifetime signal or a steering request is waiting).
    #[cold]
    fn wake_housekeeping(&self) {
        if let Some(t) = self.housekeeping.get() {
            t.unpark();
        }
    }

    /// Outbound: the inner packet is `buf[pkt]`; `buf` has room before and after it.
    #[inline]
    pub(crate) fn outbound(
        &self,
        table: &Table,
        tunnel: TunnelId,
        buf: &mut [u8],
        pkt: Range<usize>,
        reply: &mut [u8],
        limiter: &mut IcmpLimiter,
    ) -> OutAction {
        let Some(inner) = buf.get(pkt.clone()) else {
            self.counters.drop(DropReason::Malformed);
            return OutAction::Drop;
        };
        let Some(info) = parse_ip(inner) else {
            self.counters.drop(DropReason::Malformed);
            return OutAction::Drop;
        };
        let (Some(tt), Some(params)) = (table.tunnels.get(tunnel.0), self.tunnels.get(tunnel.0))
        else {
            self.counters.drop(DropReason::NoSa);
            return OutAction::Drop;
        };
        let (Some(peer), Some(entry)) = (tt.peer, tt.lookup(inner)) else {
            self.counters.drop(DropReason::NoSa);
            return OutAction::Drop;
        };
        let sa = &entry.sa;
        let len = info.total_len;
        let overhead = outer_overhead(peer);
        if sa.sealed_len(len) + overhead > self.underlay_mtu {
            self.counters.drop(DropReason::TooBig);
            let limit = self
                .underlay_mtu
                .saturating_sub(overhead + sa.headroom() + sa.max_tailroom());
            let limit = limit.min(usize::from(params.mtu)) as u32;
            // The error enters the host through the TUN, so its source must not be one of the
            // host's own addresses (the TUN's included): Linux drops such packets as martians.
            // It is sent from the original destination, which routes back into the tunnel.
            if let Some(n) = icmp::too_big(inner, &info, limit, None, reply)
                && limiter.allow(self.clock.load(Relaxed))
            {
                self.counters.icmp_sent.fetch_add(1, Relaxed);
                return OutAction::Reply { len: n };
            }
            return OutAction::Drop;
        }
        let payload = pkt.start..pkt.start + len;
        if let Some(max) = params.mss_clamp
            && let Some(p) = buf.get_mut(payload.clone())
            && mss::clamp_mss(p, &info, max)
        {
            self.counters.mss_clamped.fetch_add(1, Relaxed);
        }
        match sa.seal(buf, payload, info.next_header()) {
            Ok(esp) => {
                if sa.rekey_signal_pending() {
                    self.wake_housekeeping();
                }
                OutAction::Send {
                    esp,
                    to: peer,
                    from: tt.local,
                }
            }
            Err(e) => {
                self.counters.drop(e.into());
                OutAction::Drop
            }
        }
    }

    /// Inbound: `buf` is exactly the UDP payload received from `from`.
    #[inline]
    pub(crate) fn inbound(&self, table: &Table, buf: &mut [u8], from: SocketAddr) -> InAction {
        match classify_udp4500(buf) {
            Udp4500::Esp => {}
            Udp4500::Ike => {
                return InAction::Ike {
                    offset: esp::NON_ESP_MARKER_LEN,
                };
            }
            Udp4500::Keepalive => {
                self.counters.keepalives_rx.fetch_add(1, Relaxed);
                return InAction::Done;
            }
            _ => {
                self.counters.drop(DropReason::Malformed);
                return InAction::Done;
            }
        }
        let Some(spi) = buf
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            self.counters.drop(DropReason::Malformed);
            return InAction::Done;
        };
        let Some(entry) = table.inbound.get(&spi) else {
            self.counters.drop(DropReason::UnknownSpi);
            return InAction::Done;
        };
        let (nh, inner) = match entry.sa.open(buf) {
            Ok(o) => {
                if entry.sa.rekey_signal_pending() {
                    self.wake_housekeeping();
                }
                (o.next_header, o.inner)
            }
            Err(esp::DropReason::Dummy) => {
                self.counters.drop(DropReason::Dummy);
                return InAction::Done;
            }
            Err(r) => {
                self.counters.drop(r.into());
                return InAction::Done;
            }
        };
        if nh == NEXT_HEADER_NONE {
            // TFC dummy packet (RFC 4303 section 2.6): valid, discarded.
            self.counters.drop(DropReason::Dummy);
            return InAction::Done;
        }
        let Some(info) = buf.get(inner.clone()).and_then(parse_ip) else {
            self.counters.drop(DropReason::Malformed);
            return InAction::Done;
        };
        if info.next_header() != nh {
            self.counters.drop(DropReason::Malformed);
            return InAction::Done;
        }
        let pkt = inner.start..inner.start + info.total_len;
        if let Some(policy) = &entry.selectors {
            let ok = buf
                .get(pkt.clone())
                .and_then(FlowKey::parse)
                .is_some_and(|k| policy.matches_inbound(&k));
            if !ok {
                entry.sa.count_drop(esp::DropReason::PolicyMismatch);
                self.counters.drop(DropReason::Policy);
                return InAction::Done;
            }
        }
        let tunnel = entry.tunnel;
        if let Some(params) = self.tunnels.get(tunnel.0) {
            if let Some(max) = params.mss_clamp
                && let Some(p) = buf.get_mut(pkt.clone())
                && mss::clamp_mss(p, &info, max)
            {
                self.counters.mss_clamped.fetch_add(1, Relaxed);
            }
            let peer = table.tunnels.get(tunnel.0).and_then(|t| t.peer);
            if peer != Some(from) {
                self.peer_moved(params, tunnel, spi, from);
            }
        }
        InAction::Tun { tunnel, pkt }
    }

    /// An authenticated ESP packet came from another address than the tunnel's peer: tell the
    /// control plane (at most once per second per tunnel), which may call `set_peer`.
    #[cold]
    fn peer_moved(&self, params: &TunnelParams, tunnel: TunnelId, spi: u32, from: SocketAddr) {
        let now = self.clock.load(Relaxed) + 1;
        let last = params.last_rebind_event.load(Relaxed);
        if last != now
            && params
                .last_rebind_event
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let _ = self
                .events
                .send(DataplaneEvent::PeerAddressChanged { tunnel, spi, from });
        }
    }

    /// Hands an IKE message to the control plane (this allocates: IKE is not the packet path).
    pub(crate) fn deliver_ike(&self, msg: &[u8], from: SocketAddr) {
        let d = IkeDatagram {
            local: self.local,
            remote: from,
            message: msg.to_vec(),
        };
        match self.ike.try_send(d) {
            Ok(()) => {
                self.counters.ike_rx.fetch_add(1, Relaxed);
            }
            Err(_) => self.counters.drop(DropReason::IkeQueueFull),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{InEntry, OutEntry};
    use crate::testing::half;
    use crate::worker::{HEADROOM, MAX_PACKET, TAILROOM};
    use esp::{Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, SaConfig};
    use std::sync::Arc;

    const A: &str = "192.0.2.1:4500";
    const B: &str = "192.0.2.2:4500";

    fn gcm(spi: u32) -> SaConfig {
        SaConfig::new(
            spi,
            Cipher::AesGcm16_256,
            Integrity::None,
            KeyMaterial::from_slice(&[0x11; 36]),
            KeyMaterial::empty(),
        )
    }

    /// A (sender) and B (receiver) halves with SPI 0x1001 from A to B.
    fn pair(underlay_mtu: usize) -> (Shared, Shared) {
        let (mut a, _, _) = half(A.parse().unwrap());
        let (b, _, _) = half(B.parse().unwrap());
        a.underlay_mtu = underlay_mtu;
        let cfg = gcm(0x1001);
        let out = Arc::new(OutboundSa::new(&cfg).unwrap());
        let inb = Arc::new(InboundSa::new(&cfg).unwrap());
        a.table
            .update(|t| {
                t.tunnels[0].route = Some(OutEntry { sa: out });
                t.tunnels[0].peer = Some(B.parse().unwrap());
                Ok(())
            })
            .unwrap();
        b.table
            .update(|t| {
                t.inbound.insert(
                    0x1001,
                    InEntry {
                        sa: inb,
                        tunnel: TunnelId(0),
                        selectors: None,
                    },
                );
                t.tunnels[0].peer = Some(A.parse().unwrap());
                Ok(())
            })
            .unwrap();
        (a, b)
    }

    fn udp_packet(len: usize) -> Vec<u8> {
        let mut p = vec![0x33u8; len];
        p[0] = 0x45;
        p[1] = 0;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..8].copy_from_slice(&[0, 1, 0x40, 0]);
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[198, 18, 1, 2]);
        p[16..20].copy_from_slice(&[198, 19, 1, 2]);
        let c = crate::wire::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Seals `inner` on A; returns the buffer and the ESP range.
    fn seal(a: &Shared, inner: &[u8]) -> (Vec<u8>, OutAction, Vec<u8>) {
        let mut buf = vec![0u8; HEADROOM + MAX_PACKET + TAILROOM];
        buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
        let mut reply = vec![0u8; 1500];
        let t = a.table.load();
        let act = a.outbound(
            &t,
            TunnelId(0),
            &mut buf,
            HEADROOM..HEADROOM + inner.len(),
            &mut reply,
            &mut IcmpLimiter::default(),
        );
        (buf, act, reply)
    }

    #[test]
    fn esp_roundtrip_replay_and_tamper() {
        let (a, b) = pair(1500);
        let inner = udp_packet(300);
        let (buf, act, _) = seal(&a, &inner);
        let OutAction::Send { esp, to, .. } = act else {
            panic!("expected send, got {act:?}")
        };
        assert_eq!(to, B.parse().unwrap());
        let wire = buf[esp].to_vec();
        assert!(
            !wire.windows(4).any(|w| w == [198, 19, 1, 2]),
            "inner address not in clear"
        );
        let tb = b.table.load();
        let mut d = wire.clone();
        let InAction::Tun { tunnel, pkt } = b.inbound(&tb, &mut d, A.parse().unwrap()) else {
            panic!("not delivered")
        };
        assert_eq!(tunnel, TunnelId(0));
        assert_eq!(&d[pkt], &inner[..]);
        // The same packet again is a replay.
        let mut d = wire.clone();
        assert_eq!(b.inbound(&tb, &mut d, A.parse().unwrap()), InAction::Done);
        assert_eq!(b.counters.snapshot_drops().get(DropReason::Replay), 1);
        // A flipped bit fails the ICV.
        let (buf, act, _) = seal(&a, &inner);
        let OutAction::Send { esp, .. } = act else {
            panic!()
        };
        let mut d = buf[esp].to_vec();
        let last = d.len() - 1;
        d[last] ^= 1;
        assert_eq!(b.inbound(&tb, &mut d, A.parse().unwrap()), InAction::Done);
        assert_eq!(b.counters.snapshot_drops().get(DropReason::Icv), 1);
        // Unknown SPI.
        let mut d = wire.clone();
        d[0] ^= 0x80;
        assert_eq!(b.inbound(&tb, &mut d, A.parse().unwrap()), InAction::Done);
        assert_eq!(b.counters.snapshot_drops().get(DropReason::UnknownSpi), 1);
    }

    #[test]
    fn demux_ike_keepalive_and_garbage() {
        let (_, b) = pair(1500);
        let (b, mut ike_rx, _ev) = {
            // A fresh half whose IKE receiver we hold.
            let (mut h, rx, ev) = half(B.parse().unwrap());
            h.table = b.table;
            (h, rx, ev)
        };
        let tb = b.table.load();
        let from: SocketAddr = "198.51.100.7:4500".parse().unwrap();
        let mut ike = vec![0u8; 4 + 28];
        ike[4..12].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let act = b.inbound(&tb, &mut ike, from);
        assert_eq!(act, InAction::Ike { offset: 4 });
        b.deliver_ike(&ike[4..], from);
        let got = ike_rx.try_recv().unwrap();
        assert_eq!(got.remote, from);
        assert_eq!(got.local, B.parse().unwrap());
        assert_eq!(got.message, ike[4..].to_vec());
        assert_eq!(b.inbound(&tb, &mut [0xff], from), InAction::Done);
        assert_eq!(b.counters.keepalives_rx.load(Relaxed), 1);
        assert_eq!(b.inbound(&tb, &mut [1, 2, 3], from), InAction::Done);
        assert_eq!(b.counters.snapshot_drops().get(DropReason::Malformed), 1);
    }

    #[test]
    fn too_big_gets_icmp_and_no_sa_is_counted() {
        let (a, _) = pair(1000);
        let inner = udp_packet(1400);
        let (_, act, reply) = seal(&a, &inner);
        let OutAction::Reply { len } = act else {
            panic!("expected ICMP, got {act:?}")
        };
        let r = &reply[..len];
        assert_eq!((r[20], r[21]), (3, 4));
        let mtu = u16::from_be_bytes([r[26], r[27]]);
        // 1000 - 20 (IP) - 8 (UDP) - 16 (ESP header + GCM IV) - max tailroom.
        assert!(mtu < 1000 - 28 - 16 && mtu > 900, "advertised {mtu}");
        assert_eq!(a.counters.snapshot_drops().get(DropReason::TooBig), 1);
        // A packet of exactly the advertised size fits.
        let (_, act, _) = seal(&a, &udp_packet(usize::from(mtu)));
        let OutAction::Send { esp, .. } = act else {
            panic!("advertised MTU must fit, got {act:?}")
        };
        assert!(esp.len() + 28 <= 1000);
        // No SA: a tunnel without outbound SA drops.
        let (empty, _, _) = half(A.parse().unwrap());
        let (_, act, _) = seal(&empty, &inner);
        assert_eq!(act, OutAction::Drop);
        assert_eq!(empty.counters.snapshot_drops().get(DropReason::NoSa), 1);
    }

    #[test]
    fn policy_based_lookup_and_inbound_selector_check() {
        use esp::{SelectorPolicy, TrafficSelector};
        let policy = |l: &str, r: &str| SelectorPolicy {
            local: vec![TrafficSelector::prefix(l.parse().unwrap(), 24)],
            remote: vec![TrafficSelector::prefix(r.parse().unwrap(), 24)],
        };
        let (a, _, _) = half(A.parse().unwrap());
        let (b, _, _) = half(B.parse().unwrap());
        // A: 198.18.1.0/24 -> 198.19.1.0/24 uses SPI 0x1001; 198.18.1.0/24 -> 198.19.2.0/24 none.
        let cfg = gcm(0x1001);
        a.table
            .update(|t| {
                let sa = Arc::new(OutboundSa::new(&cfg).unwrap());
                t.tunnels[0].policies.push((
                    Arc::new(policy("198.18.1.0", "198.19.1.0")),
                    OutEntry { sa },
                ));
                t.tunnels[0].peer = Some(B.parse().unwrap());
                Ok(())
            })
            .unwrap();
        // B accepts SPI 0x1001 only for 198.18.1.0/24 -> 198.19.9.0/24 (a mismatch on purpose).
        b.table
            .update(|t| {
                let sa = Arc::new(InboundSa::new(&cfg).unwrap());
                let sel = Some(Arc::new(policy("198.19.9.0", "198.18.1.0")));
                t.inbound.insert(
                    0x1001,
                    InEntry {
                        sa,
                        tunnel: TunnelId(0),
                        selectors: sel,
                    },
                );
                Ok(())
            })
            .unwrap();
        let inner = udp_packet(200); // 198.18.1.2 -> 198.19.1.2
        let (buf, act, _) = seal(&a, &inner);
        let OutAction::Send { esp, .. } = act else {
            panic!("selector must match, got {act:?}")
        };
        let mut other = inner.clone();
        other[18] = 2; // 198.19.2.2: no policy
        let (_, act, _) = seal(&a, &other);
        assert_eq!(act, OutAction::Drop);
        assert_eq!(a.counters.snapshot_drops().get(DropReason::NoSa), 1);
        // B decrypts it, but its selectors do not cover 198.19.1.2: dropped by policy.
        let mut d = buf[esp].to_vec();
        assert_eq!(
            b.inbound(&b.table.load(), &mut d, A.parse().unwrap()),
            InAction::Done
        );
        assert_eq!(b.counters.snapshot_drops().get(DropReason::Policy), 1);
    }
}
