//! The TUN device of a tunnel (Linux `tun(4)`, layer 3, no packet information header): name,
//! addresses, MTU, up, and one queue per worker (`IFF_MULTI_QUEUE`). Inner packets are IPv4
//! (RFC 791) or IPv6 (RFC 8200) as carried in ESP tunnel mode (RFC 4303 section 3.1.2).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, SyncDevice};

/// Length of the virtio-net header in front of every packet when offloads are on.
pub(crate) const VNET_HDR_LEN: usize = tun_rs::VIRTIO_NET_HDR_LEN;

/// Default tunnel MTU (what Microsoft recommends for Azure VPN gateways).
pub const DEFAULT_TUN_MTU: u16 = 1400;
/// Default TCP MSS clamp for packets crossing the tunnel.
pub const DEFAULT_MSS_CLAMP: u16 = 1350;
/// Default transmit queue length of a TUN queue, in packets (the kernel's default is 500). The
/// kernel drops packets routed into the TUN when the queue is full, which happens while a worker
/// is not scheduled: with 500, 1400-byte UDP at 400 Mbit/s lost 0.44 % there on a loaded 2-core
/// machine, with 2048 nothing (`benches/tunnel/README.md`).
pub const DEFAULT_TUN_TX_QUEUE_LEN: u32 = 2048;

/// Configuration of one TUN interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// IPv4 address and prefix length, e.g. an APIPA-style 169.254.21.1/30, or none.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// IPv6 address and prefix length, or none.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// Interface MTU (default 1400).
    pub mtu: u16,
    /// Transmit queue length in packets (default [`DEFAULT_TUN_TX_QUEUE_LEN`]).
    pub tx_queue_len: u32,
}

impl TunConfig {
    /// A TUN called `name` without addresses, with the default MTU and transmit queue length.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ipv4: None,
            ipv6: None,
            mtu: DEFAULT_TUN_MTU,
            tx_queue_len: DEFAULT_TUN_TX_QUEUE_LEN,
        }
    }
}

/// One opened queue of a TUN device.
pub(crate) struct TunQueue {
    dev: SyncDevice,
    /// `IFF_VNET_HDR` with TSO/USO: reads may be GSO super-packets, writes carry a virtio-net
    /// header and may be coalesced (GRO).
    offload: bool,
}

impl std::fmt::Debug for TunQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunQueue")
            .field("fd", &self.dev.as_raw_fd())
            .finish()
    }
}

impl TunQueue {
    #[inline]
    pub(crate) fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    /// Non-blocking read of one packet.
    #[inline]
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf)
    }

    /// Writes one packet (with offload, `buf` starts with a virtio-net header).
    #[inline]
    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.dev.send(buf)
    }

    pub(crate) fn offload(&self) -> bool {
        self.offload
    }

    /// Offload mode: reads one (super-)packet into `scratch` and splits it into `slots`, each
    /// segment at `offset`; returns how many slots were filled.
    #[inline]
    pub(crate) fn recv_multiple(
        &self,
        scratch: &mut [u8],
        slots: &mut [Vec<u8>],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.recv_multiple(scratch, slots, sizes, offset)
    }
}

/// Opens the TUN device described by `cfg` with `queues` queues (at least one), in the network
/// namespace of the calling thread, with or without offloads (`IFF_VNET_HDR`, TSO/USO), brings
/// it up and returns the queues.
pub(crate) fn open(cfg: &TunConfig, queues: usize, offload: bool) -> io::Result<Vec<TunQueue>> {
    if cfg.name.is_empty() || cfg.name.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TUN name must be 1 to 15 bytes",
        ));
    }
    let mut b = DeviceBuilder::new()
        .name(cfg.name.clone())
        .mtu(cfg.mtu)
        .tx_queue_len(cfg.tx_queue_len)
        .multi_queue(queues > 1)
        .offload(offload);
    if let Some((a, p)) = cfg.ipv4 {
        b = b.ipv4(a, p, None);
    }
    if let Some((a, p)) = cfg.ipv6 {
        b = b.ipv6(a, p);
    }
    let first = b.enable(true).build_sync()?;
    let mut out = Vec::with_capacity(queues.max(1));
    for _ in 1..queues.max(1) {
        let q = first.try_clone()?;
        q.set_nonblocking(true)?;
        out.push(TunQueue { dev: q, offload });
    }
    first.set_nonblocking(true)?;
    out.insert(
        0,
        TunQueue {
            dev: first,
            offload,
        },
    );
    Ok(out)
}
