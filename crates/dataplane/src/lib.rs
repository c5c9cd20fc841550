//! The hybridgw data plane: Linux TUN devices, the UDP 4500 socket and ESP worker threads that
//! move packets TUN -> selector lookup -> ESP seal -> UDP and UDP -> SPI lookup -> replay check ->
//! ESP open -> TUN (RFC 4303 tunnel mode, RFC 3948 UDP encapsulation, RFC 4301 section 5).
//!
//! # Using it from the control plane
//! ```no_run
//! use dataplane::{Dataplane, DataplaneConfig, TunnelConfig, OutboundRoute};
//! use esp::{Cipher, Integrity, KeyMaterial, SaConfig};
//! # fn keys() -> (esp::InboundSa, esp::OutboundSa) {
//! #     let k = |spi| SaConfig::new(spi, Cipher::AesGcm16_256, Integrity::None,
//! #         KeyMaterial::from_slice(&[7; 36]), KeyMaterial::empty());
//! #     (esp::InboundSa::new(&k(0x1000)).unwrap(), esp::OutboundSa::new(&k(0x2000)).unwrap())
//! # }
//! let mut cfg = DataplaneConfig::new("192.0.2.1:4500".parse().unwrap());
//! cfg.tunnels.push(TunnelConfig::route_based("azure0"));
//! let (dp, mut control) = Dataplane::start(cfg)?;
//! let t = dp.tunnel_id("azure0").unwrap();
//! let (inbound, outbound) = keys();
//! dp.install_inbound(t, inbound, None)?;
//! dp.install_outbound(t, OutboundRoute::Any, outbound, "192.0.2.2:4500".parse().unwrap())?;
//! // IKE on port 4500 arrives on `control.ike`; events (lifetimes, NAT rebinding) on `control.events`.
//! dp.send_ike("192.0.2.2:4500".parse().unwrap(), b"...ike message...")?;
//! # Ok::<(), dataplane::Error>(())
//! ```
//!
//! # Threading
//! [`Dataplane::start`] opens the TUN devices and the socket in the network namespace of the
//! calling thread, then starts `workers` OS threads (not tokio tasks), each with its own queue of
//! every TUN device (`IFF_MULTI_QUEUE`) and a handle on the shared UDP socket, plus one
//! housekeeping thread (NAT keepalives, lifetime events, coarse clock). Workers read the SA table
//! through an atomically swapped snapshot (`arc-swap`): installing or removing an SA never blocks
//! them and they never take a lock per packet. Sequence numbers come from the SA's atomic counter
//! and the replay window is lock-free, so one SA may be used by every worker at once.
//! Dropping the [`Dataplane`] (or [`Dataplane::shutdown`]) stops and joins every thread and
//! closes the TUN devices.
//!
//! # Batching and offloads
//! With [`DataplaneConfig::offload`] (the default) the TUN devices use `IFF_VNET_HDR`: one read
//! returns a TSO/GSO super-packet that is split into segments, each sealed in place in its own
//! slot; the sealed segments to one peer leave in one `sendmsg` with `UDP_SEGMENT` (UDP GSO,
//! falling back to one datagram per call if the kernel refuses). The socket has `UDP_GRO` on, so
//! one `recvmsg` returns many datagrams, each opened in place; in-order TCP segments of a flow are
//! then written to the TUN as one GSO packet (see `gro.rs`), everything else in place behind a
//! zero virtio-net header. [`Snapshot::batching`] shows the syscall-to-packet ratios.
//!
//! # Copies
//! The kernel copies on every read and write. Beyond that: splitting a super-packet read from
//! the TUN copies each segment into its slot (tun-rs `recv_multiple`, as the kernel would when
//! segmenting), and coalescing TCP segments for the TUN write copies their payloads together.
//! Packets are otherwise sealed and opened in place, and the per-packet path allocates nothing
//! (`tests/no_alloc.rs`).
#![allow(unsafe_code)]

pub mod counters;
mod gro;
pub mod icmp;
pub mod mss;
mod path;
mod steer;
pub mod table;
pub mod tun;
mod udp;
pub mod wire;
mod worker;

#[doc(hidden)]
pub mod testing;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use counters::{Batching, Direction, DropReason, Drops, Latency, SaSeq, SaStats, Snapshot};
pub use table::{OutboundRoute, TableError, TunnelId};
pub use tun::{DEFAULT_MSS_CLAMP, DEFAULT_TUN_MTU, DEFAULT_TUN_TX_QUEUE_LEN, TunConfig};
pub use udp::DEFAULT_SOCKET_BUFFER;

use crate::counters::GlobalCounters;
use crate::path::{Shared, TunnelParams};
use crate::table::{InEntry, OutEntry, SaTable};
use crate::udp::{NAT_KEEPALIVE, UdpSock};

/// Default underlay MTU: outer packets are never larger.
pub const DEFAULT_UNDERLAY_MTU: u16 = 1500;
/// Default interval of NAT keepalives (RFC 3948 section 4: 20 seconds).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);

/// Route-based or policy-based tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// Any-to-any selectors: everything routed into the TUN goes to the tunnel's outbound SA.
    RouteBased,
    /// Outbound packets are matched against the installed selector policies.
    PolicyBased,
}

/// One tunnel (connection): its TUN interface and packet treatment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The TUN interface.
    pub tun: TunConfig,
    /// Route-based or policy-based.
    pub mode: TunnelMode,
    /// Clamp the TCP MSS of SYNs crossing the tunnel (both directions) to this value (IPv4; IPv6
    /// uses 20 less). Default 1350; `None` disables clamping.
    pub mss_clamp: Option<u16>,
}

impl TunnelConfig {
    /// A route-based tunnel on a TUN called `name`, MTU 1400, MSS clamp 1350, no addresses.
    pub fn route_based(name: impl Into<String>) -> Self {
        Self {
            tun: TunConfig::new(name),
            mode: TunnelMode::RouteBased,
            mss_clamp: Some(DEFAULT_MSS_CLAMP),
        }
    }

    /// A policy-based tunnel on a TUN called `name`.
    pub fn policy_based(name: impl Into<String>) -> Self {
        Self {
            mode: TunnelMode::PolicyBased,
            ..Self::route_based(name)
        }
    }
}

/// Configuration of a data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Address of the UDP socket for ESP-in-UDP and IKE on 4500. Bind the specific local address
    /// so that IKE datagrams report it as their local address.
    pub udp_bind: SocketAddr,
    /// The tunnels; [`TunnelId`]s are indices into this list.
    pub tunnels: Vec<TunnelConfig>,
    /// Largest outer (IP + UDP + ESP) packet ever sent.
    pub underlay_mtu: u16,
    /// Worker threads (each gets a queue of every TUN device). At least 1.
    pub workers: usize,
    /// Capacity of the IKE queue towards the control plane.
    pub ike_queue: usize,
    /// Use TUN offloads (`IFF_VNET_HDR`: GSO super-packets in, GRO-coalesced writes out). Falls
    /// back to plain TUN when the kernel refuses. UDP GSO/GRO are used whenever available.
    pub offload: bool,
    /// How long a worker keeps polling its descriptors without sleeping after it last moved a
    /// packet (zero, the default: it always sleeps in `poll` until a descriptor is ready). A
    /// reply usually comes back within a few hundred microseconds, and a worker that is still
    /// running picks it up without a wake-up; the price is up to this much CPU time per burst of
    /// traffic. Measured on a shared 2-vCPU virtual machine (`benches/tunnel/README.md`) a
    /// window of 100 µs made the ping RTT through the tunnel worse (0.29 ms against 0.20 ms):
    /// the spinning worker takes the core the other tunnel end and the kernel need. Worth it only
    /// with cores to spare.
    pub busy_poll: Duration,
    /// Scheduler time slice each worker asks for (`sched_setattr` with `sched_runtime` under
    /// `SCHED_OTHER`, Linux 6.12 and later; older kernels ignore it). Zero, the default, keeps
    /// the kernel's (0.7 ms times 1 + log2 of the CPU count). Under EEVDF a task with a shorter
    /// slice gets an earlier deadline, so a worker woken by a packet preempts a CPU-bound task
    /// sooner instead of waiting for that task's slice to run out; in exchange a contended worker
    /// is also preempted more often. On the shared 2-core benchmark machine 100 µs changed
    /// neither the median nor the p99 ping RTT beyond the noise (`benches/tunnel/README.md`), so
    /// it is off by default.
    pub worker_slice: Duration,
    /// CPU-local steering while traffic is light (with two workers or more, on two CPUs or
    /// more; off by default): worker `i` is pinned to the `i`-th CPU the process may run on and
    /// the kernel hands each packet, from the UDP socket and from the TUN, to the worker of the
    /// CPU already processing it, so that a lone packet never wakes a thread on another, idle CPU
    /// (on a virtual machine the costliest part of its trip). Above 5,000 packets per second, or
    /// when a worker finds 8 packets waiting, the workers are unpinned and hash steering spreads
    /// the work; after a second below 1,000 packets per second steering is CPU-local again
    /// ([`steer`]). Measured on the 2-vCPU benchmark machine: ping RTT through the tunnel 10-20 %
    /// lower (`benches/tunnel/README.md`). Two workers that read one SA's packets no longer
    /// reorder them on the wire (each tunnel's ESP leaves in sequence-number order: see
    /// `TunnelParams::send_order`), but on the receiving side CPU-local steering still opens one
    /// SA's packets on several workers, which our own 1024-packet replay window absorbs. Off by
    /// default until a long run against strongSwan shows it loses nothing more than hash
    /// steering (`benches/tunnel/README.md`). Falls back to hash steering when the kernel
    /// refuses the steering programs.
    pub cpu_affinity: bool,
    /// Bind the UDP socket with `IP_FREEBIND`: its address need not be on this host yet (the
    /// shared address of a stateful HA pair, held by the master only). Default false: a
    /// missing address is an error at start.
    pub freebind: bool,
    /// Send and receive buffer of each UDP socket, bytes (default [`DEFAULT_SOCKET_BUFFER`],
    /// 8 MiB: a burst of 64 GRO receives of 64 KB fits between two worker wake-ups). A smaller
    /// buffer bounds the queueing delay a CPU-bound gateway adds under load (a TCP sender fills
    /// whatever buffer there is), at the price of drops in bursts.
    pub socket_buffer: usize,
}

/// Default [`DataplaneConfig::worker_slice`]: the kernel's.
pub const DEFAULT_WORKER_SLICE: Duration = Duration::ZERO;

/// Default [`DataplaneConfig::busy_poll`]: none.
pub const DEFAULT_BUSY_POLL: Duration = Duration::ZERO;

impl DataplaneConfig {
    /// One worker, underlay MTU 1500, no tunnels yet.
    pub fn new(udp_bind: SocketAddr) -> Self {
        Self {
            udp_bind,
            tunnels: Vec::new(),
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
            workers: 1,
            ike_queue: 256,
            offload: true,
            busy_poll: DEFAULT_BUSY_POLL,
            worker_slice: DEFAULT_WORKER_SLICE,
            cpu_affinity: false,
            freebind: false,
            socket_buffer: DEFAULT_SOCKET_BUFFER,
        }
    }
}

/// An IKE message received on the data plane's UDP 4500 socket (non-ESP marker removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeDatagram {
    /// The socket's local address.
    pub local: SocketAddr,
    /// Who sent it.
    pub remote: SocketAddr,
    /// The IKE message, starting at the IKE header.
    pub message: Vec<u8>,
}

/// Something the control plane should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataplaneEvent {
    /// An SA crossed its soft limit (rekey now) or its hard limit (it carries no more traffic).
    Lifetime {
        /// Tunnel of the SA.
        tunnel: TunnelId,
        /// SPI of the SA.
        spi: u32,
        /// Direction of the SA.
        direction: Direction,
        /// The state reached.
        state: esp::LifetimeState,
    },
    /// Authenticated ESP arrived from another address than the tunnel's peer (NAT rebinding,
    /// RFC 3948 section 2.1 / RFC 7296 section 2.23). Sent at most once per second per tunnel;
    /// call [`Dataplane::set_peer`] to follow it.
    PeerAddressChanged {
        /// The tunnel.
        tunnel: TunnelId,
        /// SPI of the SA that authenticated the packet.
        spi: u32,
        /// The new source address.
        from: SocketAddr,
    },
    /// A worker stopped on an I/O error.
    WorkerFailed {
        /// Worker index.
        worker: usize,
        /// What failed.
        error: String,
    },
}

/// The receiving ends for the control plane (tokio channels; usable from any runtime).
#[derive(Debug)]
pub struct ControlRx {
    /// IKE messages that arrived on UDP 4500.
    pub ike: tokio::sync::mpsc::Receiver<IkeDatagram>,
    /// Lifetime, rebinding and failure events.
    pub events: tokio::sync::mpsc::UnboundedReceiver<DataplaneEvent>,
}

/// The name the task brief uses for [`ControlRx`].
pub type IkeRx = ControlRx;

/// Errors of the data plane handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or configuring a TUN device failed.
    #[error("TUN device {name}: {source}")]
    Tun {
        /// Interface name.
        name: String,
        /// Cause.
        source: io::Error,
    },
    /// Binding the UDP socket failed.
    #[error("UDP socket {addr}: {source}")]
    Udp {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// Starting a thread failed.
    #[error("starting a thread: {0}")]
    Thread(io::Error),
    /// Invalid configuration.
    #[error("invalid data plane configuration: {0}")]
    Config(&'static str),
    /// A table update was refused.
    #[error(transparent)]
    Table(#[from] TableError),
    /// Sending failed.
    #[error("sending: {0}")]
    Io(#[from] io::Error),
}

/// A cloneable handle for sending IKE messages on the data plane's UDP 4500 socket (same 4-tuple
/// as the ESP traffic).
#[derive(Debug, Clone)]
pub struct IkeSender {
    udp: Arc<UdpSock>,
    shared: Arc<Shared>,
}

impl IkeSender {
    /// Sends `message` (an IKE message, without marker) to `remote`, prefixed with the non-ESP
    /// marker (RFC 3948 section 2.2).
    pub fn send(&self, remote: SocketAddr, message: &[u8]) -> io::Result<()> {
        self.send_from(remote, None, message)
    }

    /// The same from local address `local` (meaningful on a wildcard-bound socket: see
    /// [`Dataplane::set_source`]).
    pub fn send_from(
        &self,
        remote: SocketAddr,
        local: Option<std::net::IpAddr>,
        message: &[u8],
    ) -> io::Result<()> {
        self.udp.send_ike(message, remote, local)?;
        self.shared.counters.ike_tx.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// Per-tunnel NAT keepalive settings, read by the housekeeping thread.
#[derive(Debug, Default)]
struct Keepalives {
    interval: Vec<Option<Duration>>,
}

/// The running data plane. Dropping it stops every thread and closes the TUN devices.
#[derive(Debug)]
pub struct Dataplane {
    shared: Arc<Shared>,
    udp: Arc<UdpSock>,
    names: Vec<String>,
    keepalives: Arc<Mutex<Keepalives>>,
    threads: Vec<JoinHandle<()>>,
    housekeeping: Option<JoinHandle<()>>,
}

/// Prepares [`DataplaneConfig::cpu_affinity`] (programs loaded, nothing attached yet), or nothing
/// when it is off, pointless (one worker or one CPU) or refused.
fn cpu_steering(
    config: &DataplaneConfig,
    socks: &[UdpSock],
    queues: &[Vec<tun::TunQueue>],
) -> Option<steer::Steering> {
    if !config.cpu_affinity || config.workers < 2 {
        return None;
    }
    let tuns: Vec<_> = queues
        .iter()
        .filter_map(|q| q.first().map(|t| t.fd()))
        .collect();
    match steer::Steering::new(config.workers, socks.first()?.fd(), &tuns) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "CPU-local steering unavailable; hash steering only");
            None
        }
    }
}

/// Applies a steering mode; on failure falls back to hash steering for good (returns `None`).
fn switch_steering(
    mut steering: steer::Steering,
    mode: steer::Mode,
    shared: &Shared,
) -> Option<steer::Steering> {
    let tids = &shared.worker_tids;
    let r = match mode {
        steer::Mode::Local => steering.go_local(tids),
        steer::Mode::Spread => steering.go_spread(tids),
    };
    match r {
        Ok(()) => {
            tracing::debug!(?mode, "data plane steering");
            let c = &shared.counters;
            c.steering_changes.fetch_add(1, Relaxed);
            c.steering_local.store(mode == steer::Mode::Local, Relaxed);
            Some(steering)
        }
        Err(e) => {
            tracing::warn!(error = %e, ?mode, "steering change refused; hash steering from now on");
            if let Err(e) = steering.go_spread(tids) {
                tracing::warn!(error = %e, "hash steering not fully restored");
            }
            shared.counters.steering_local.store(false, Relaxed);
            None
        }
    }
}

impl Dataplane {
    /// Opens the TUN devices and the UDP socket in the calling thread's network namespace and
    /// starts the workers and the housekeeping thread.
    pub fn start(config: DataplaneConfig) -> Result<(Dataplane, ControlRx), Error> {
        if config.workers == 0 || config.workers > 64 {
            return Err(Error::Config("workers must be 1..=64"));
        }
        if config.underlay_mtu < 576 {
            return Err(Error::Config("underlay MTU below 576"));
        }
        if config.ike_queue == 0 {
            return Err(Error::Config("IKE queue capacity must be at least 1"));
        }
        let mut names = Vec::with_capacity(config.tunnels.len());
        for t in &config.tunnels {
            if names.contains(&t.tun.name) {
                return Err(Error::Config("duplicate TUN name"));
            }
            names.push(t.tun.name.clone());
        }
        let mut socks = UdpSock::bind_group(
            config.udp_bind,
            config.workers,
            config.freebind,
            config.socket_buffer,
        )
        .map_err(|source| Error::Udp {
            addr: config.udp_bind,
            source,
        })?;
        // Coalesced receives need UDP_GRO (best effort).
        for s in &socks {
            let _ = s.enable_gro();
        }
        let udp = socks[0].try_clone()?;
        // queues[tunnel][worker]
        let mut queues = Vec::with_capacity(config.tunnels.len());
        for t in &config.tunnels {
            let q = match tun::open(&t.tun, config.workers, config.offload) {
                Ok(q) => q,
                Err(e) if config.offload => {
                    tracing::warn!(tun = %t.tun.name, error = %e, "TUN offloads refused; using plain TUN");
                    tun::open(&t.tun, config.workers, false).map_err(|source| Error::Tun {
                        name: t.tun.name.clone(),
                        source,
                    })?
                }
                Err(source) => {
                    return Err(Error::Tun {
                        name: t.tun.name.clone(),
                        source,
                    });
                }
            };
            queues.push(q);
        }
        let steering = cpu_steering(&config, &socks, &queues);
        let (ike_tx, ike_rx) = tokio::sync::mpsc::channel(config.ike_queue);
        let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
        let tunnels = config
            .tunnels
            .iter()
            .map(|t| TunnelParams {
                mode: t.mode,
                mtu: t.tun.mtu,
                mss_clamp: t.mss_clamp,
                last_rebind_event: AtomicU64::new(0),
                send_order: std::sync::Mutex::new(()),
            })
            .collect();
        let shared = Arc::new(Shared {
            table: SaTable::new(config.tunnels.len()),
            counters: GlobalCounters::default(),
            tunnels,
            underlay_mtu: usize::from(config.underlay_mtu),
            stop: AtomicBool::new(false),
            clock: AtomicU64::new(0),
            events: ev_tx,
            ike: ike_tx,
            local: udp.local(),
            housekeeping: std::sync::OnceLock::new(),
            worker_tids: (0..config.workers)
                .map(|_| std::sync::atomic::AtomicI32::new(0))
                .collect(),
            spread_now: AtomicBool::new(false),
        });
        let keepalives = Arc::new(Mutex::new(Keepalives {
            interval: vec![None; config.tunnels.len()],
        }));
        let mut dp = Dataplane {
            shared: shared.clone(),
            udp: Arc::new(udp),
            names,
            keepalives: keepalives.clone(),
            threads: Vec::new(),
            housekeeping: None,
        };
        for id in (0..config.workers).rev() {
            let tuns = queues
                .iter_mut()
                .map(|q| q.pop().expect("one queue per worker"))
                .collect();
            let max_inner = config
                .tunnels
                .iter()
                .map(|t| usize::from(t.tun.mtu))
                .max()
                .unwrap_or(1500);
            let w = worker::Worker {
                id,
                shared: shared.clone(),
                tuns,
                udp: socks.pop().expect("one socket per worker"),
                max_inner,
                busy_poll: config.busy_poll,
                slice: config.worker_slice,
            };
            let h = std::thread::Builder::new()
                .name(format!("dp-worker-{id}"))
                .spawn(move || w.run())
                .map_err(Error::Thread)?;
            dp.threads.push(h);
        }
        // Pin the workers once they have reported their thread ids (they do so first thing).
        let steering = steering.and_then(|s| {
            let deadline = Instant::now() + Duration::from_secs(2);
            while shared.worker_tids.iter().any(|t| t.load(Relaxed) == 0)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            switch_steering(s, steer::Mode::Local, &shared)
        });
        let hk = Housekeeping {
            shared: shared.clone(),
            udp: dp.udp.clone(),
            keepalives,
            steering,
        };
        dp.housekeeping = Some(
            std::thread::Builder::new()
                .name("dp-housekeeping".into())
                .spawn(move || hk.run())
                .map_err(Error::Thread)?,
        );
        if let Some(h) = &dp.housekeeping {
            let _ = shared.housekeeping.set(h.thread().clone());
        }
        Ok((
            dp,
            ControlRx {
                ike: ike_rx,
                events: ev_rx,
            },
        ))
    }

    /// The id of the tunnel whose TUN is called `name`.
    pub fn tunnel_id(&self, name: &str) -> Option<TunnelId> {
        self.names.iter().position(|n| n == name).map(TunnelId)
    }

    /// The local address of the UDP 4500 socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    fn check_tunnel(&self, tunnel: TunnelId) -> Result<(), TableError> {
        self.shared.check_tunnel(tunnel)
    }

    /// Installs an inbound SA for `tunnel`. `selectors` restricts which decrypted packets are
    /// accepted (policy-based, RFC 4301 section 5.2); `None` accepts any (route-based). Several
    /// inbound SAs may be installed per tunnel (the old one stays valid during a rekey until
    /// [`Dataplane::remove`]). The SA is installed as built: a window restored with
    /// [`esp::InboundSa::with_window`] (a standby taking the SA over) is kept, not reset.
    pub fn install_inbound(
        &self,
        tunnel: TunnelId,
        sa: esp::InboundSa,
        selectors: Option<esp::SelectorPolicy>,
    ) -> Result<(), Error> {
        self.shared.install_inbound(tunnel, sa, selectors)
    }

    /// Installs the outbound SA of `tunnel` (route-based: [`OutboundRoute::Any`]) or of one
    /// selector policy, and sets the tunnel's peer to `remote`. An existing outbound SA for the
    /// same route is replaced atomically (make-before-break rekey: install the new inbound SA
    /// first, then switch outbound here, then remove the old inbound SA). Returns the SPI of the
    /// replaced SA, if any. The SA keeps its sequence counter: one started beyond a replicated
    /// mark with [`esp::OutboundSa::with_next_seq`] continues from there.
    pub fn install_outbound(
        &self,
        tunnel: TunnelId,
        route: OutboundRoute,
        sa: esp::OutboundSa,
        remote: SocketAddr,
    ) -> Result<Option<u32>, Error> {
        self.shared.install_outbound(tunnel, route, sa, remote)
    }

    /// The anti-replay window of the inbound SA named by (tunnel, SPI), for replication to a
    /// standby appliance (which restores it with [`esp::InboundSa::with_window`]); `None` when
    /// no such SA is installed. Lock-free towards the workers, which may keep opening packets
    /// of the SA meanwhile (see [`esp::InboundSa::window_state`]); allocates the bitmap.
    pub fn inbound_window(&self, tunnel: TunnelId, spi: u32) -> Option<esp::WindowState> {
        self.shared.inbound_window(tunnel, spi)
    }

    /// Removes the SA named by (tunnel, direction, SPI): an SA is never named by its SPI alone,
    /// since outbound SPIs are chosen by the peers and two tunnels may share one. Returns how
    /// many table entries were removed (0 when no such SA is installed).
    pub fn remove(&self, tunnel: TunnelId, direction: Direction, spi: u32) -> usize {
        self.shared.remove(tunnel, direction, spi)
    }

    /// Removes every SA of `tunnel` and forgets its peer (tunnel down).
    pub fn clear_tunnel(&self, tunnel: TunnelId) -> Result<(), Error> {
        self.check_tunnel(tunnel)?;
        self.shared.table.update(|t| {
            t.inbound.retain(|_, e| e.tunnel != tunnel);
            if let Some(tt) = t.tunnels.get_mut(tunnel.0) {
                *tt = Default::default();
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Changes the peer's address/port of `tunnel` (NAT rebinding, MOBIKE-style updates).
    pub fn set_peer(&self, tunnel: TunnelId, remote: SocketAddr) -> Result<(), Error> {
        self.check_tunnel(tunnel)?;
        self.shared.table.update(|t| {
            if let Some(tt) = t.tunnels.get_mut(tunnel.0) {
                tt.peer = Some(remote);
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The local address `tunnel`'s ESP and keepalives leave from when the UDP 4500 socket is
    /// bound to the wildcard address (several local addresses, one per connection): the
    /// address the peer knows this tunnel by. `None` leaves the choice to the kernel's routing.
    pub fn set_source(
        &self,
        tunnel: TunnelId,
        local: Option<std::net::IpAddr>,
    ) -> Result<(), Error> {
        self.check_tunnel(tunnel)?;
        let local = local.filter(|a| !a.is_unspecified());
        // Called on every outbound install: publish a new table only when it changes.
        if self
            .shared
            .table
            .load()
            .tunnels
            .get(tunnel.0)
            .map(|t| t.local)
            == Some(local)
        {
            return Ok(());
        }
        self.shared.table.update(|t| {
            if let Some(tt) = t.tunnels.get_mut(tunnel.0) {
                tt.local = local;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Sends a NAT keepalive (RFC 3948 section 2.3) to the tunnel's peer every `interval`
    /// (typically [`DEFAULT_KEEPALIVE`]) while `Some`; `None` stops them.
    pub fn set_nat_keepalive(
        &self,
        tunnel: TunnelId,
        interval: Option<Duration>,
    ) -> Result<(), Error> {
        self.check_tunnel(tunnel)?;
        let mut k = self.keepalives.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = k.interval.get_mut(tunnel.0) {
            *slot = interval.map(|i| i.max(Duration::from_secs(1)));
        }
        Ok(())
    }

    /// Sends an IKE message (without marker) on the UDP 4500 socket.
    pub fn send_ike(&self, remote: SocketAddr, message: &[u8]) -> Result<(), Error> {
        self.ike_sender().send(remote, message)?;
        Ok(())
    }

    /// The same from local address `local` (the IKE SA's own, on a wildcard-bound socket).
    pub fn send_ike_from(
        &self,
        remote: SocketAddr,
        local: Option<std::net::IpAddr>,
        message: &[u8],
    ) -> Result<(), Error> {
        self.ike_sender().send_from(remote, local, message)?;
        Ok(())
    }

    /// A cloneable, `Send` handle for sending IKE from another task or thread.
    pub fn ike_sender(&self) -> IkeSender {
        IkeSender {
            udp: self.udp.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Thread ids of the workers (`gettid`), in worker order, 0 for a worker not started yet:
    /// for diagnostics (which CPUs they may run on, `/proc/self/task/<tid>/status`).
    pub fn worker_thread_ids(&self) -> Vec<i32> {
        self.shared
            .worker_tids
            .iter()
            .map(|t| t.load(Relaxed))
            .collect()
    }

    /// A snapshot of every counter, with each SA's sequence number state
    /// ([`Snapshot::seqs`]).
    pub fn counters(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Stops the workers and the housekeeping thread, waits for them and closes the TUN devices.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(h) = self.housekeeping.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control plane's side of the shared state: table updates and snapshots (never called by
/// the workers; each update clones the table and publishes it whole).
impl Shared {
    pub(crate) fn check_tunnel(&self, tunnel: TunnelId) -> Result<(), TableError> {
        if tunnel.0 < self.tunnels.len() {
            Ok(())
        } else {
            Err(TableError::NoTunnel(tunnel))
        }
    }

    /// See [`Dataplane::install_inbound`].
    pub(crate) fn install_inbound(
        &self,
        tunnel: TunnelId,
        sa: esp::InboundSa,
        selectors: Option<esp::SelectorPolicy>,
    ) -> Result<(), Error> {
        self.check_tunnel(tunnel)?;
        let spi = sa.spi();
        let entry = InEntry {
            sa: Arc::new(sa),
            tunnel,
            selectors: selectors.map(Arc::new),
        };
        self.table.update(|t| {
            if t.inbound.contains_key(&spi) {
                return Err(TableError::DuplicateSpi(spi));
            }
            t.inbound.insert(spi, entry);
            Ok(())
        })?;
        Ok(())
    }

    /// See [`Dataplane::install_outbound`].
    pub(crate) fn install_outbound(
        &self,
        tunnel: TunnelId,
        route: OutboundRoute,
        sa: esp::OutboundSa,
        remote: SocketAddr,
    ) -> Result<Option<u32>, Error> {
        self.check_tunnel(tunnel)?;
        let fits = matches!(
            (self.tunnels.get(tunnel.0).map(|t| t.mode), &route),
            (Some(TunnelMode::RouteBased), OutboundRoute::Any)
                | (Some(TunnelMode::PolicyBased), OutboundRoute::Selectors(_))
        );
        if !fits {
            return Err(TableError::WrongMode(tunnel).into());
        }
        let entry = OutEntry { sa: Arc::new(sa) };
        let replaced = self.table.update(|t| {
            let tt = t
                .tunnels
                .get_mut(tunnel.0)
                .ok_or(TableError::NoTunnel(tunnel))?;
            tt.peer = Some(remote);
            Ok(match route {
                OutboundRoute::Any => tt.route.replace(entry).map(|o| o.sa.spi()),
                OutboundRoute::Selectors(policy) => {
                    if let Some(slot) = tt.policies.iter_mut().find(|(p, _)| **p == policy) {
                        Some(std::mem::replace(&mut slot.1, entry).sa.spi())
                    } else {
                        tt.policies.push((Arc::new(policy), entry));
                        None
                    }
                }
            })
        })?;
        Ok(replaced)
    }

    /// See [`Dataplane::remove`].
    pub(crate) fn remove(&self, tunnel: TunnelId, direction: Direction, spi: u32) -> usize {
        self.table
            .update(|t| Ok(t.remove_sa(tunnel, direction, spi)))
            .unwrap_or(0)
    }

    /// See [`Dataplane::inbound_window`].
    pub(crate) fn inbound_window(&self, tunnel: TunnelId, spi: u32) -> Option<esp::WindowState> {
        let table = self.table.load();
        let e = table.inbound.get(&spi).filter(|e| e.tunnel == tunnel)?;
        Some(e.sa.window_state())
    }

    /// See [`Dataplane::counters`].
    pub(crate) fn snapshot(&self) -> Snapshot {
        let table = self.table.load_full();
        let mut sas = Vec::new();
        let mut seqs = Vec::new();
        let mut inbound: Vec<_> = table.inbound.values().collect();
        inbound.sort_by_key(|e| e.sa.spi());
        for e in inbound {
            let s = e.sa.stats();
            sas.push(SaStats {
                spi: e.sa.spi(),
                direction: Direction::Inbound,
                tunnel: e.tunnel,
                packets: s.packets,
                bytes: s.bytes,
            });
            seqs.push(SaSeq {
                spi: e.sa.spi(),
                direction: Direction::Inbound,
                tunnel: e.tunnel,
                seq: s.highest_seq,
            });
        }
        for (i, tt) in table.tunnels.iter().enumerate() {
            for e in tt.route.iter().chain(tt.policies.iter().map(|(_, e)| e)) {
                let s = e.sa.stats();
                sas.push(SaStats {
                    spi: e.sa.spi(),
                    direction: Direction::Outbound,
                    tunnel: TunnelId(i),
                    packets: s.packets,
                    bytes: s.bytes,
                });
                seqs.push(SaSeq {
                    spi: e.sa.spi(),
                    direction: Direction::Outbound,
                    tunnel: TunnelId(i),
                    seq: s.next_seq,
                });
            }
        }
        let c = &self.counters;
        Snapshot {
            sas,
            seqs,
            drops: c.snapshot_drops(),
            keepalives_rx: c.keepalives_rx.load(Relaxed),
            keepalives_tx: c.keepalives_tx.load(Relaxed),
            ike_rx: c.ike_rx.load(Relaxed),
            ike_tx: c.ike_tx.load(Relaxed),
            icmp_sent: c.icmp_sent.load(Relaxed),
            mss_clamped: c.mss_clamped.load(Relaxed),
            batching: c.snapshot_batching(),
            latency_out: c.latency_out.snapshot(),
            latency_in: c.latency_in.snapshot(),
        }
    }
}

/// The housekeeping thread: coarse clock, NAT keepalives, lifetime events.
struct Housekeeping {
    shared: Arc<Shared>,
    udp: Arc<UdpSock>,
    keepalives: Arc<Mutex<Keepalives>>,
    /// CPU-local or hash steering by packet rate ([`DataplaneConfig::cpu_affinity`]).
    steering: Option<steer::Steering>,
}

impl Housekeeping {
    fn run(mut self) {
        let start = Instant::now();
        let mut last_keepalive: HashMap<usize, Instant> = HashMap::new();
        let mut reported_expired: HashSet<(u32, Direction)> = HashSet::new();
        while !self.shared.stop.load(Relaxed) {
            std::thread::park_timeout(Duration::from_millis(250));
            if self.shared.stop.load(Relaxed) {
                break;
            }
            let now = Instant::now();
            self.shared
                .clock
                .store(now.duration_since(start).as_secs(), Relaxed);
            if let Some(mut st) = self.steering.take() {
                let b = self.shared.counters.snapshot_batching();
                let packets = b.tun_packets.wrapping_add(b.udp_datagrams_received);
                let urgent = self.shared.spread_now.swap(false, Relaxed);
                self.steering = match st.decide(now, packets, urgent) {
                    Some(mode) => switch_steering(st, mode, &self.shared),
                    None => Some(st),
                };
            }
            let table = self.shared.table.load_full();
            // NAT keepalives.
            let intervals = {
                let k = self.keepalives.lock().unwrap_or_else(|p| p.into_inner());
                k.interval.clone()
            };
            for (i, interval) in intervals.iter().enumerate() {
                let tt = table.tunnels.get(i);
                let (Some(interval), Some(peer)) = (interval, tt.and_then(|t| t.peer)) else {
                    last_keepalive.remove(&i);
                    continue;
                };
                let due = last_keepalive
                    .get(&i)
                    .is_none_or(|t| now.duration_since(*t) >= *interval);
                if due {
                    last_keepalive.insert(i, now);
                    let from = tt.and_then(|t| t.local);
                    if self.udp.send_to(&NAT_KEEPALIVE, peer, from).is_ok() {
                        self.shared.counters.keepalives_tx.fetch_add(1, Relaxed);
                    } else {
                        self.shared.counters.drop(DropReason::UdpSend);
                    }
                }
            }
            // Lifetime signals.
            let mut report = |tunnel, spi, direction, signal: bool, state: esp::LifetimeState| {
                // Soft limit: once (the SA's own one-shot signal). Hard limit: once per SA.
                let send = if state == esp::LifetimeState::Expired {
                    reported_expired.insert((spi, direction))
                } else {
                    signal
                };
                if send {
                    let _ = self.shared.events.send(DataplaneEvent::Lifetime {
                        tunnel,
                        spi,
                        direction,
                        state,
                    });
                }
            };
            for e in table.inbound.values() {
                report(
                    e.tunnel,
                    e.sa.spi(),
                    Direction::Inbound,
                    e.sa.take_rekey_signal(),
                    e.sa.lifetime(),
                );
            }
            for (i, tt) in table.tunnels.iter().enumerate() {
                for e in tt.route.iter().chain(tt.policies.iter().map(|(_, e)| e)) {
                    report(
                        TunnelId(i),
                        e.sa.spi(),
                        Direction::Outbound,
                        e.sa.take_rekey_signal(),
                        e.sa.lifetime(),
                    );
                }
            }
        }
    }
}
