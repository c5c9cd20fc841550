//! Test support (not a stable API): the workers' per-packet path (RFC 4303 seal/open as wired in
//! `path.rs`) between two in-memory data plane halves, without devices or sockets, so that
//! tests can count allocations and check behaviour of exactly what a worker runs per packet;
//! and [`Node`], a data plane without devices whose SA table is driven by the same code as
//! [`crate::Dataplane`]'s (tests that need no root).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::counters::GlobalCounters;
use crate::gro::Coalescer;
use crate::path::{IcmpLimiter, InAction, OutAction, Shared, TunnelParams};
use crate::table::{InEntry, OutEntry, SaTable, TunnelId};
use crate::worker::{HEADROOM, MAX_PACKET, TAILROOM};
use crate::{DataplaneEvent, Direction, Error, IkeDatagram, OutboundRoute, Snapshot};

/// Two data plane halves (A and B) with one route-based tunnel each and matching SAs.
#[derive(Debug)]
pub struct Loopback {
    a: Shared,
    b: Shared,
    buf: Vec<u8>,
    reply: Vec<u8>,
    limiter: IcmpLimiter,
    coalescer: Coalescer,
    /// Bytes handed to the (simulated) TUN write by the coalescer.
    pub written: usize,
    _keep: (
        tokio::sync::mpsc::Receiver<IkeDatagram>,
        tokio::sync::mpsc::UnboundedReceiver<DataplaneEvent>,
        tokio::sync::mpsc::Receiver<IkeDatagram>,
        tokio::sync::mpsc::UnboundedReceiver<DataplaneEvent>,
    ),
}

pub(crate) fn half(
    local: SocketAddr,
) -> (
    Shared,
    tokio::sync::mpsc::Receiver<IkeDatagram>,
    tokio::sync::mpsc::UnboundedReceiver<DataplaneEvent>,
) {
    let (ike, ike_rx) = tokio::sync::mpsc::channel(8);
    let (events, ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Shared {
        table: SaTable::new(1),
        counters: GlobalCounters::default(),
        tunnels: vec![TunnelParams {
            mode: crate::TunnelMode::RouteBased,
            mtu: 1400,
            mss_clamp: Some(1350),
            last_rebind_event: AtomicU64::new(0),
            send_order: std::sync::Mutex::new(()),
        }],
        underlay_mtu: 1500,
        stop: AtomicBool::new(false),
        clock: AtomicU64::new(0),
        events,
        ike,
        local,
        housekeeping: std::sync::OnceLock::new(),
        worker_tids: Vec::new(),
        spread_now: AtomicBool::new(false),
    };
    (shared, ike_rx, ev_rx)
}

impl Loopback {
    /// A sends with `a_to_b` (B receives with it); route-based tunnel 0 on both sides.
    pub fn new(a_to_b: &esp::SaConfig) -> Result<Self, esp::ConfigError> {
        let a_addr: SocketAddr = "192.0.2.1:4500".parse().expect("literal");
        let b_addr: SocketAddr = "192.0.2.2:4500".parse().expect("literal");
        let (a, a_ike, a_ev) = half(a_addr);
        let (b, b_ike, b_ev) = half(b_addr);
        let out = Arc::new(esp::OutboundSa::new(a_to_b)?);
        let inb = Arc::new(esp::InboundSa::new(a_to_b)?);
        let _ = a.table.update(|t| {
            t.tunnels[0].route = Some(OutEntry { sa: out });
            t.tunnels[0].peer = Some(b_addr);
            Ok(())
        });
        let _ = b.table.update(|t| {
            t.inbound.insert(
                a_to_b.spi,
                InEntry {
                    sa: inb,
                    tunnel: TunnelId(0),
                    selectors: None,
                },
            );
            t.tunnels[0].peer = Some(a_addr);
            Ok(())
        });
        Ok(Self {
            a,
            b,
            buf: vec![0; HEADROOM + MAX_PACKET + TAILROOM],
            reply: vec![0; 1500],
            limiter: IcmpLimiter::default(),
            coalescer: Coalescer::default(),
            written: 0,
            _keep: (a_ike, a_ev, b_ike, b_ev),
        })
    }

    /// Places `inner` where a TUN read would (this copy stands in for the kernel's), runs A's
    /// outbound path and B's inbound path on the same buffer, and returns the inner packet B
    /// would write to its TUN, if any.
    pub fn roundtrip(&mut self, inner: &[u8]) -> Option<&[u8]> {
        let n = inner.len();
        self.buf
            .get_mut(HEADROOM..HEADROOM + n)?
            .copy_from_slice(inner);
        let ta = self.a.table.load();
        let esp = match self.a.outbound(
            &ta,
            TunnelId(0),
            &mut self.buf,
            HEADROOM..HEADROOM + n,
            &mut self.reply,
            &mut self.limiter,
        ) {
            OutAction::Send { esp, .. } => esp,
            _ => return None,
        };
        let from: SocketAddr = self.a.local;
        let tb = self.b.table.load();
        let dgram = self.buf.get_mut(esp.clone())?;
        match self.b.inbound(&tb, dgram, from) {
            InAction::Tun { pkt, .. } => self.buf.get(esp.start + pkt.start..esp.start + pkt.end),
            _ => None,
        }
    }

    /// Like [`Loopback::roundtrip`], then hands the delivered packet to the offload-mode TUN
    /// writer (TCP coalescing, or an in-place write behind a virtio-net header) with a writer
    /// that only counts bytes; flushes every `flush_every` packets. Returns whether delivered.
    pub fn roundtrip_coalesced(&mut self, inner: &[u8], flush_every: usize, i: usize) -> bool {
        let n = inner.len();
        let Some(dst) = self.buf.get_mut(HEADROOM..HEADROOM + n) else {
            return false;
        };
        dst.copy_from_slice(inner);
        let ta = self.a.table.load();
        let esp = match self.a.outbound(
            &ta,
            TunnelId(0),
            &mut self.buf,
            HEADROOM..HEADROOM + n,
            &mut self.reply,
            &mut self.limiter,
        ) {
            OutAction::Send { esp, .. } => esp,
            _ => return false,
        };
        let from: SocketAddr = self.a.local;
        let tb = self.b.table.load();
        let Some(dgram) = self.buf.get_mut(esp) else {
            return false;
        };
        let InAction::Tun { pkt, .. } = self.b.inbound(&tb, dgram, from) else {
            return false;
        };
        let mut written = 0usize;
        let mut w = |b: &[u8]| {
            written += b.len();
            Ok(b.len())
        };
        let ok = self.coalescer.push(dgram, pkt, &mut w).is_ok();
        if flush_every > 0 && i % flush_every == flush_every - 1 {
            let _ = self.coalescer.flush(&mut w);
        }
        self.written += written;
        ok
    }

    /// Total drops recorded on either side.
    pub fn drops(&self) -> u64 {
        self.a.counters.snapshot_drops().total() + self.b.counters.snapshot_drops().total()
    }
}

/// A data plane without devices or sockets: one route-based tunnel ([`TunnelId`] 0) whose SA
/// table is installed, read and snapshotted by the same functions as [`crate::Dataplane`]'s,
/// and a worker's per-packet path run for one packet at a time (with a copy in and out: this is
/// for behaviour, not for counting allocations).
#[derive(Debug)]
pub struct Node {
    shared: Shared,
    buf: Vec<u8>,
    reply: Vec<u8>,
    limiter: IcmpLimiter,
    _keep: (
        tokio::sync::mpsc::Receiver<IkeDatagram>,
        tokio::sync::mpsc::UnboundedReceiver<DataplaneEvent>,
    ),
}

impl Node {
    /// A node whose UDP 4500 socket would be bound to `local`.
    pub fn new(local: SocketAddr) -> Self {
        let (shared, ike, ev) = half(local);
        Self {
            shared,
            buf: vec![0; HEADROOM + MAX_PACKET + TAILROOM],
            reply: vec![0; 1500],
            limiter: IcmpLimiter::default(),
            _keep: (ike, ev),
        }
    }

    /// See [`crate::Dataplane::install_inbound`].
    pub fn install_inbound(
        &self,
        tunnel: TunnelId,
        sa: esp::InboundSa,
        selectors: Option<esp::SelectorPolicy>,
    ) -> Result<(), Error> {
        self.shared.install_inbound(tunnel, sa, selectors)
    }

    /// See [`crate::Dataplane::install_outbound`].
    pub fn install_outbound(
        &self,
        tunnel: TunnelId,
        route: OutboundRoute,
        sa: esp::OutboundSa,
        remote: SocketAddr,
    ) -> Result<Option<u32>, Error> {
        self.shared.install_outbound(tunnel, route, sa, remote)
    }

    /// See [`crate::Dataplane::remove`].
    pub fn remove(&self, tunnel: TunnelId, direction: Direction, spi: u32) -> usize {
        self.shared.remove(tunnel, direction, spi)
    }

    /// See [`crate::Dataplane::counters`].
    pub fn counters(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// See [`crate::Dataplane::inbound_window`].
    pub fn inbound_window(&self, tunnel: TunnelId, spi: u32) -> Option<esp::WindowState> {
        self.shared.inbound_window(tunnel, spi)
    }

    /// An inner packet read from tunnel 0's TUN: the outbound path. Returns the UDP payload
    /// (the ESP packet) and where it would be sent, or `None` when it was dropped or answered.
    pub fn send(&mut self, inner: &[u8]) -> Option<(Vec<u8>, SocketAddr)> {
        let n = inner.len();
        self.buf
            .get_mut(HEADROOM..HEADROOM + n)?
            .copy_from_slice(inner);
        let table = self.shared.table.load();
        match self.shared.outbound(
            &table,
            TunnelId(0),
            &mut self.buf,
            HEADROOM..HEADROOM + n,
            &mut self.reply,
            &mut self.limiter,
        ) {
            OutAction::Send { esp, to, .. } => Some((self.buf.get(esp)?.to_vec(), to)),
            _ => None,
        }
    }

    /// A datagram received from `from` on UDP 4500: the inbound path. Returns the inner packet
    /// written to the TUN, or `None` (IKE, keepalive or a drop, counted in [`Self::counters`]).
    pub fn receive(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let d = self.buf.get_mut(..datagram.len())?;
        d.copy_from_slice(datagram);
        let table = self.shared.table.load();
        match self.shared.inbound(&table, d, from) {
            InAction::Tun { pkt, .. } => Some(d.get(pkt)?.to_vec()),
            _ => None,
        }
    }
}
