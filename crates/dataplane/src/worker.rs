//! Worker threads: each polls its own queue of every TUN device and the shared UDP 4500 socket,
//! and moves packets between them through [`crate::path`] (ESP tunnel mode, RFC 4303 section 3.1.2;
//! ESP-in-UDP, RFC 3948), in batches: TUN reads may be GSO super-packets split into segments
//! (virtio-net offload), sealed segments leave in one `sendmsg` with `UDP_SEGMENT` (UDP GSO),
//! datagrams arrive coalesced (`UDP_GRO`) and are opened in place, and inner packets are written
//! to the TUN coalesced again (GRO) when offloads are on. Buffers are allocated once per worker;
//! the SA table is read through an atomic snapshot, never a lock.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::DataplaneEvent;
use crate::counters::{Batch, DropReason};
use crate::gro::Coalescer;
use crate::path::{IcmpLimiter, InAction, OutAction, Shared};
use crate::table::TunnelId;
use crate::tun::{TunQueue, VNET_HDR_LEN};
use crate::udp::{MAX_GSO_SEGMENTS, UdpSock};

/// Room kept in front of an inner packet for the ESP header and IV (at most 8 + 16 bytes).
pub(crate) const HEADROOM: usize = 64;
/// Room kept after an inner packet for padding, trailer and ICV.
pub(crate) const TAILROOM: usize = 128;
/// Largest packet a TUN read or UDP receive can deliver.
pub(crate) const MAX_PACKET: usize = 65535;
/// Packets in one batch (slots).
const BATCH: usize = 128;
/// Batches handled per descriptor before polling again (fairness between directions).
const BUDGET: usize = 16;
/// How long a worker sleeps in `poll` before checking the stop flag.
const POLL_MS: i32 = 100;
/// One batch in this many is timed for the latency figures ([`crate::Latency`]).
const SAMPLE_EVERY: u32 = 16;
/// Largest UDP payload one GSO send may carry. The kernel segments in software any GSO skb whose
/// length with link, IP and UDP headers reaches the device's `gso_max_size` (64 KiB), which
/// would undo the batching on the wire: stay well below it.
const MAX_GSO_BYTES: usize = 65000;

pub(crate) struct Worker {
    pub(crate) id: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tuns: Vec<TunQueue>,
    pub(crate) udp: UdpSock,
    /// Largest inner packet a TUN read delivers without offload (the largest TUN MTU).
    pub(crate) max_inner: usize,
    /// Keep polling without sleeping this long after the last packet (see
    /// [`crate::DataplaneConfig::busy_poll`]).
    pub(crate) busy_poll: Duration,
    /// Scheduler slice to ask for (see [`crate::DataplaneConfig::worker_slice`]).
    pub(crate) slice: Duration,
}

/// Buffers of one worker, allocated once.
struct Buffers {
    /// Offload reads (virtio header + super-packet) and UDP GRO receives.
    big: Vec<u8>,
    /// Outbound slots: an inner packet at `HEADROOM`, sealed in place.
    slots: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Per slot: the ESP packet to send and where.
    sends: Vec<(usize, Range<usize>, SocketAddr, Option<std::net::IpAddr>)>,
    /// iovecs of one GSO send (raw pointers into `slots`, rebuilt per send).
    iov: Vec<libc::iovec>,
    /// ICMP replies, at `VNET_HDR_LEN`.
    reply: Vec<u8>,
    /// Inbound TCP segments being coalesced into one TUN write, per tunnel (offload mode).
    coalesce: Vec<Coalescer>,
    /// UDP GSO still believed to work.
    gso: bool,
    /// Batches since the last timed one, per direction.
    tick_out: u32,
    tick_in: u32,
}

impl Worker {
    pub(crate) fn run(self) {
        if let Some(t) = self.shared.worker_tids.get(self.id) {
            // SAFETY: gettid has no preconditions.
            #[allow(unsafe_code)]
            t.store(unsafe { libc::gettid() }, Relaxed);
        }
        if !self.slice.is_zero()
            && let Err(e) = set_slice(self.slice)
        {
            tracing::debug!(worker = self.id, error = %e, "scheduler slice not set");
        }
        if let Err(e) = self.run_inner() {
            tracing::error!(worker = self.id, error = %e, "data plane worker failed");
            let _ = self.shared.events.send(DataplaneEvent::WorkerFailed {
                worker: self.id,
                error: e.to_string(),
            });
        }
    }

    fn buffers(&self) -> Buffers {
        let slot = HEADROOM + self.max_inner.max(1500) + TAILROOM;
        Buffers {
            big: vec![0u8; VNET_HDR_LEN + MAX_PACKET + TAILROOM],
            slots: (0..BATCH).map(|_| vec![0u8; slot]).collect(),
            sizes: vec![0; BATCH],
            sends: Vec::with_capacity(BATCH),
            iov: Vec::with_capacity(MAX_GSO_SEGMENTS),
            reply: vec![0u8; VNET_HDR_LEN + 1500],
            coalesce: self.tuns.iter().map(|_| Coalescer::default()).collect(),
            gso: true,
            tick_out: 0,
            tick_in: 0,
        }
    }

    fn run_inner(&self) -> io::Result<()> {
        let mut bufs = self.buffers();
        let mut limiter = IcmpLimiter::default();
        let mut fds: Vec<libc::pollfd> = self
            .tuns
            .iter()
            .map(|t| t.fd())
            .chain(std::iter::once(self.udp.fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let udp_idx = fds.len() - 1;
        // Until this instant the worker polls without sleeping (timeout 0): the answer to what
        // it just sent is usually back within `busy_poll`, and a running worker picks it up
        // without a wake-up. Afterwards it sleeps in `poll` until a descriptor is ready.
        let mut spin_until: Option<Instant> = None;
        while !self.shared.stop.load(Relaxed) {
            let timeout = match spin_until {
                Some(t) if Instant::now() < t => 0,
                _ => {
                    spin_until = None;
                    POLL_MS
                }
            };
            // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
            #[allow(unsafe_code)]
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                if timeout == 0 {
                    std::hint::spin_loop();
                }
                continue;
            }
            for (i, pfd) in fds.iter().enumerate() {
                if pfd.revents & libc::POLLNVAL != 0 {
                    return Err(io::Error::other("descriptor closed under the worker"));
                }
                if pfd.revents & (libc::POLLIN | libc::POLLERR) == 0 {
                    continue;
                }
                if i == udp_idx {
                    self.drain_udp(&mut bufs);
                } else {
                    self.drain_tun(TunnelId(i), &mut bufs, &mut limiter)?;
                }
            }
            if !self.busy_poll.is_zero() {
                spin_until = Some(Instant::now() + self.busy_poll);
            }
        }
        Ok(())
    }

    /// Reads up to one batch from the TUN queue into the slots; returns how many.
    fn read_batch(&self, tun: &TunQueue, bufs: &mut Buffers) -> io::Result<usize> {
        let mut n = 0;
        while n < BATCH {
            let r = if tun.offload() {
                // A super-packet splits into at most 64 KB / MSS segments: keep room for one.
                if BATCH - n < 64 && n > 0 {
                    break;
                }
                tun.recv_multiple(
                    &mut bufs.big,
                    &mut bufs.slots[n..],
                    &mut bufs.sizes[n..],
                    HEADROOM,
                )
            } else {
                let end = bufs.slots[n].len() - TAILROOM;
                tun.recv(&mut bufs.slots[n][HEADROOM..end]).map(|len| {
                    bufs.sizes[n] = len;
                    1
                })
            };
            match r {
                Ok(k) => {
                    n += k;
                    self.shared.counters.batch(Batch::TunReads, 1);
                    self.shared.counters.batch(Batch::TunPackets, k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A malformed offload read (bad virtio header) drops that read only.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput || e.raw_os_error().is_none() => {
                    self.shared.counters.drop(DropReason::Malformed);
                }
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
        }
        Ok(n)
    }

    fn drain_tun(
        &self,
        tunnel: TunnelId,
        bufs: &mut Buffers,
        limiter: &mut IcmpLimiter,
    ) -> io::Result<()> {
        let Some(tun) = self.tuns.get(tunnel.0) else {
            return Ok(());
        };
        for _ in 0..BUDGET {
            let n = self.read_batch(tun, bufs)?;
            if n == 0 {
                return Ok(());
            }
            bufs.tick_out += 1;
            let timed = (bufs.tick_out >= SAMPLE_EVERY).then(|| {
                bufs.tick_out = 0;
                Instant::now()
            });
            self.shared.note_backlog(n);
            // One worker at a time seals and sends this tunnel's packets (see
            // `TunnelParams::send_order`): the batch's sequence numbers are consecutive per SA
            // and reach the socket in that order. The lock is released after the last send.
            let order = self.shared.tunnels.get(tunnel.0).map(|t| {
                t.send_order.try_lock().or_else(|e| match e {
                    std::sync::TryLockError::WouldBlock => {
                        self.shared.counters.batch(Batch::SendOrderWaits, 1);
                        t.send_order.lock()
                    }
                    std::sync::TryLockError::Poisoned(p) => Err(p),
                })
            });
            let _order = order.map(|r| r.unwrap_or_else(|p| p.into_inner()));
            let table = self.shared.table.load();
            bufs.sends.clear();
            for i in 0..n {
                let len = bufs.sizes[i];
                let (slot, reply) = (&mut bufs.slots[i], &mut bufs.reply[VNET_HDR_LEN..]);
                match self.shared.outbound(
                    &table,
                    tunnel,
                    slot,
                    HEADROOM..HEADROOM + len,
                    reply,
                    limiter,
                ) {
                    OutAction::Send { esp, to, from } => bufs.sends.push((i, esp, to, from)),
                    OutAction::Reply { len } => {
                        let start = if tun.offload() {
                            bufs.reply[..VNET_HDR_LEN].fill(0);
                            0
                        } else {
                            VNET_HDR_LEN
                        };
                        if tun.send(&bufs.reply[start..VNET_HDR_LEN + len]).is_err() {
                            self.shared.counters.drop(DropReason::TunWrite);
                        }
                    }
                    OutAction::Drop => {}
                }
            }
            self.flush_sends(bufs);
            if let Some(t0) = timed {
                self.shared.counters.latency_out.record(t0.elapsed());
            }
            // With offload, read on while super-packets keep coming (the next read usually finds
            // what arrived while this batch was sealed). Going back to `poll` instead after a
            // batch that emptied the queue saves one read per wake-up, but did not shorten the
            // ping RTT measurably and looked slower for single-stream TCP.
            if n < BATCH / 2 && !tun.offload() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends the sealed packets of a batch, as few `sendmsg` calls as UDP GSO allows: runs of
    /// packets to the same peer with the same length (the last of a run may be shorter).
    fn flush_sends(&self, bufs: &mut Buffers) {
        let sends = &bufs.sends;
        let mut i = 0;
        while i < sends.len() {
            let (_, first, to, from) = &sends[i];
            let seg = first.len();
            let mut j = i + 1;
            let mut total = seg;
            if bufs.gso {
                while j < sends.len() && j - i < MAX_GSO_SEGMENTS {
                    let (_, r, t, f) = &sends[j];
                    if t != to || f != from || r.len() > seg || total + r.len() > MAX_GSO_BYTES {
                        break;
                    }
                    total += r.len();
                    j += 1;
                    if r.len() < seg {
                        break;
                    }
                }
            }
            bufs.iov.clear();
            for (slot, r, _, _) in &sends[i..j] {
                let p = &bufs.slots[*slot][r.clone()];
                bufs.iov.push(libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                });
            }
            let segment = if j - i > 1 {
                u16::try_from(seg).ok()
            } else {
                None
            };
            match self.udp.send_segments(&bufs.iov, *to, segment, *from) {
                Ok(_) => {
                    self.shared.counters.batch(Batch::UdpSends, 1);
                    self.shared.counters.batch(Batch::UdpDatagramsSent, j - i);
                }
                Err(e)
                    if segment.is_some()
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                        ) =>
                {
                    // The kernel or device refuses GSO: fall back to one datagram per send.
                    tracing::warn!(error = %e, "UDP GSO refused; sending datagrams one by one");
                    bufs.gso = false;
                    for k in 0..bufs.iov.len() {
                        let one = [bufs.iov[k]];
                        if self.udp.send_segments(&one, *to, None, *from).is_err() {
                            self.shared.counters.drop(DropReason::UdpSend);
                        }
                    }
                }
                Err(_) => {
                    for _ in i..j {
                        self.shared.counters.drop(DropReason::UdpSend);
                    }
                }
            }
            i = j;
        }
    }

    fn drain_udp(&self, bufs: &mut Buffers) {
        let mut received = 0;
        let mut timed: Option<Instant> = None;
        for _ in 0..BUDGET * 4 {
            let (n, from, stride) = match self.udp.recv_gro(&mut bufs.big[..MAX_PACKET]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or ICMP errors queued on the socket (port unreachable from a peer
                // that went away): back to poll.
                Err(_) => break,
            };
            self.shared.counters.batch(Batch::UdpReceives, 1);
            bufs.tick_in += 1;
            if timed.is_none() && bufs.tick_in >= SAMPLE_EVERY {
                bufs.tick_in = 0;
                timed = Some(Instant::now());
            }
            received += n.div_ceil(stride);
            self.shared
                .counters
                .batch(Batch::UdpDatagramsReceived, n.div_ceil(stride));
            let table = self.shared.table.load();
            let mut off = 0;
            while off < n {
                let end = (off + stride).min(n);
                let dgram = &mut bufs.big[off..end];
                match self.shared.inbound(&table, dgram, from) {
                    InAction::Tun { tunnel, pkt } => {
                        self.to_tun(tunnel, &mut bufs.big[off..end], pkt, &mut bufs.coalesce)
                    }
                    InAction::Ike { offset } => {
                        if let Some(m) = bufs.big.get(off + offset..end) {
                            self.shared.deliver_ike(m, from);
                        }
                    }
                    InAction::Done => {}
                }
                off = end;
            }
        }
        self.shared.note_backlog(received);
        let counters = &self.shared.counters;
        for (tun, c) in self.tuns.iter().zip(bufs.coalesce.iter_mut()) {
            if c.flush(&mut |b| {
                counters.batch(Batch::TunWrites, 1);
                tun.send(b)
            })
            .is_err()
            {
                self.shared.counters.drop(DropReason::TunWrite);
            }
        }
        if let Some(t0) = timed {
            self.shared.counters.latency_in.record(t0.elapsed());
        }
    }

    /// Delivers a decrypted inner packet: written at once in place without offload, or through
    /// the tunnel's coalescer with offload (TCP segments merged, everything else in place).
    fn to_tun(
        &self,
        tunnel: TunnelId,
        dgram: &mut [u8],
        pkt: Range<usize>,
        coalesce: &mut [Coalescer],
    ) {
        let (Some(tun), Some(c)) = (self.tuns.get(tunnel.0), coalesce.get_mut(tunnel.0)) else {
            self.shared.counters.drop(DropReason::NoSa);
            return;
        };
        let counters = &self.shared.counters;
        counters.batch(Batch::TunPacketsWritten, 1);
        let mut write = |b: &[u8]| {
            counters.batch(Batch::TunWrites, 1);
            tun.send(b)
        };
        let r = if tun.offload() {
            c.push(dgram, pkt, &mut write)
        } else {
            match dgram.get(pkt) {
                Some(p) => write(p).map(drop),
                None => Ok(()),
            }
        };
        if r.is_err() {
            self.shared.counters.drop(DropReason::TunWrite);
        }
    }
}

/// Asks the scheduler for a time slice of `slice` for the calling thread, keeping its policy and
/// nice value (`sched_setattr(2)`: `sched_runtime` is the slice of a `SCHED_OTHER` task since
/// Linux 6.12; the kernel clamps it to 0.1-100 ms and older kernels ignore it).
fn set_slice(slice: Duration) -> io::Result<()> {
    // SAFETY: an all-zero sched_attr is a valid value.
    #[allow(unsafe_code)]
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::sched_attr>() as libc::c_uint;
    // SAFETY: `attr` is a live, exclusively borrowed sched_attr of `size` bytes; pid 0 is the
    // calling thread.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            size,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        // Real-time or idle policies: leave them alone.
        return Ok(());
    }
    attr.size = size;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: as above; the kernel only reads `attr`.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
