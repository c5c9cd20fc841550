//! ICMP echo prober (RFC 792 echo / echo reply) pinned to one interface with `SO_BINDTODEVICE`
//! (socket(7)), so probes of the primary path never follow the backup route.
//!
//! Socket choice: an unprivileged ICMP datagram socket (`SOCK_DGRAM`, `IPPROTO_ICMP`, allowed
//! by `net.ipv4.ping_group_range`) when the process may open one; otherwise a raw ICMP socket
//! (`SOCK_RAW`, needs `CAP_NET_RAW`, which the appliance has as root). Both are `connect`ed to the
//! target, so the kernel only delivers packets from it; replies are matched by identifier (raw
//! sockets), sequence number and payload. An echo rather than UDP to a closed port: hosts and
//! Azure VMs answer echo by default, and ICMP errors are rate limited by the kernel (`icmp_ratelimit`).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Where and how to probe.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeConfig {
    /// The interface of the primary path (e.g. the ExpressRoute link); `None` lets routing pick.
    pub interface: Option<String>,
    /// The source address (an on-prem address the far side routes back over the same path).
    pub source: Option<Ipv4Addr>,
    /// The target across the primary path (an Azure VM, or the far edge's address).
    pub target: Ipv4Addr,
}

/// Which socket the prober got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_DGRAM` ICMP ("ping socket"): the kernel owns the identifier and strips the IP header.
    Datagram,
    /// `SOCK_RAW` ICMP: replies come with their IPv4 header.
    Raw,
}

/// The outcome of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The echo reply came back after `rtt`.
    Reply {
        /// Round-trip time.
        rtt: Duration,
    },
    /// No reply within the timeout.
    Timeout,
    /// The probe could not be sent (no route through the interface, link down): a miss.
    SendFailed(io::ErrorKind),
}

impl ProbeOutcome {
    /// Whether the probe succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, ProbeOutcome::Reply { .. })
    }
}

const MAGIC: &[u8; 8] = b"hgw-prob";
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const PACKET_LEN: usize = 8 + 16;

/// An ICMP echo prober bound to one interface. Create it inside a tokio runtime, in the network
/// namespace it must probe from.
#[derive(Debug)]
pub struct IcmpProber {
    /// The ICMP socket, driven through tokio's datagram socket type (it only uses
    /// `send`/`recv` on the connected descriptor, which is what an ICMP socket offers).
    sock: tokio::net::UdpSocket,
    kind: SocketKind,
    ident: u16,
    seq: u16,
    nonce: u32,
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

fn open(kind: SocketKind) -> io::Result<Socket> {
    let ty = match kind {
        SocketKind::Datagram => Type::DGRAM,
        SocketKind::Raw => Type::RAW,
    };
    Socket::new(Domain::IPV4, ty, Some(Protocol::ICMPV4))
}

impl IcmpProber {
    /// Opens the socket (datagram ICMP if permitted, raw otherwise), binds it to the interface
    /// and source address, and connects it to the target.
    pub fn new(cfg: &ProbeConfig) -> io::Result<Self> {
        let (sock, kind) = match open(SocketKind::Datagram) {
            Ok(s) => (s, SocketKind::Datagram),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EPROTONOSUPPORT)
                ) =>
            {
                (open(SocketKind::Raw)?, SocketKind::Raw)
            }
            Err(e) => return Err(e),
        };
        if let Some(ifname) = &cfg.interface {
            sock.bind_device(Some(ifname.as_bytes()))?;
        }
        if let Some(src) = cfg.source {
            sock.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
        }
        sock.connect(&SockAddr::from(SocketAddrV4::new(cfg.target, 0)))?;
        sock.set_nonblocking(true)?;
        // The identifier and nonce only need to differ between probers; the monotonic clock and
        // the PID are enough (this is not a security boundary: the socket is connected).
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let salt = wall
            ^ std::process::id().rotate_left(16)
            ^ COUNT.fetch_add(0x0101_0101, std::sync::atomic::Ordering::Relaxed);
        let addr_bits = u32::from(cfg.target);
        let nonce = salt ^ addr_bits ^ 0x9e37_79b9;
        let ident = u16::try_from(nonce & 0xffff).unwrap_or(0x4847);
        Ok(IcmpProber {
            sock: tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock))?,
            kind,
            ident,
            seq: 0,
            nonce,
        })
    }

    /// Which kind of socket is in use.
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    fn request(&self, seq: u16) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = ECHO_REQUEST;
        p[4..6].copy_from_slice(&self.ident.to_be_bytes());
        p[6..8].copy_from_slice(&seq.to_be_bytes());
        p[8..16].copy_from_slice(MAGIC);
        p[16..20].copy_from_slice(&self.nonce.to_be_bytes());
        p[20..22].copy_from_slice(&seq.to_be_bytes());
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Whether `pkt` (as read from the socket) is the reply to probe `seq`.
    fn is_reply(&self, pkt: &[u8], seq: u16) -> bool {
        let icmp = match self.kind {
            SocketKind::Datagram => pkt,
            SocketKind::Raw => {
                let Some(&vihl) = pkt.first() else {
                    return false;
                };
                if vihl >> 4 != 4 || pkt.get(9) != Some(&1) {
                    return false;
                }
                match pkt.get(usize::from(vihl & 0x0f) * 4..) {
                    Some(rest) => rest,
                    None => return false,
                }
            }
        };
        let Some(hdr) = icmp.get(..PACKET_LEN) else {
            return false;
        };
        let ident_ok = self.kind == SocketKind::Datagram || hdr[4..6] == self.ident.to_be_bytes();
        hdr[0] == ECHO_REPLY
            && ident_ok
            && hdr[6..8] == seq.to_be_bytes()
            && &hdr[8..16] == MAGIC
            && hdr[16..20] == self.nonce.to_be_bytes()
            && hdr[20..22] == seq.to_be_bytes()
    }

    /// Sends one echo request and waits up to `timeout` for its reply.
    pub async fn probe(&mut self, timeout: Duration) -> ProbeOutcome {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = self.request(seq);
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + timeout);
        match tokio::time::timeout_at(deadline, self.sock.send(&req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return ProbeOutcome::SendFailed(e.kind()),
            Err(_) => return ProbeOutcome::SendFailed(io::ErrorKind::TimedOut),
        }
        let mut buf = [0u8; 1500];
        // Bounded: each pass reads one datagram or ends at the deadline.
        for _ in 0..10_000 {
            match tokio::time::timeout_at(deadline, self.sock.recv(&mut buf)).await {
                Err(_) => return ProbeOutcome::Timeout,
                Ok(Ok(n)) => {
                    if self.is_reply(buf.get(..n).unwrap_or(&[]), seq) {
                        return ProbeOutcome::Reply {
                            rtt: start.elapsed(),
                        };
                    }
                }
                // An ICMP error for a probe (e.g. host unreachable) arrives as a socket error on
                // a connected socket: not a reply; keep waiting until the deadline.
                Ok(Err(_)) => {}
            }
        }
        ProbeOutcome::Timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_echo() {
        // An echo request id 1 seq 1 with no payload: 08 00 f7 fd 00 01 00 01.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), 0xf7fd);
        assert_eq!(checksum(&[8, 0, 0xf7, 0xfd, 0, 1, 0, 1]), 0);
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[tokio::test]
    async fn loopback_echo_and_reply_matching() {
        let mut p = IcmpProber::new(&ProbeConfig {
            interface: Some("lo".into()),
            source: Some(Ipv4Addr::LOCALHOST),
            target: Ipv4Addr::LOCALHOST,
        })
        .expect("an ICMP socket (root or ping_group_range)");
        let out = p.probe(Duration::from_secs(2)).await;
        assert!(out.is_ok(), "{out:?} with {:?}", p.kind());
        // Replies to another sequence number, truncated or garbage packets never match.
        let mut reply = p.request(7);
        reply[0] = ECHO_REPLY;
        let as_read = |r: &[u8]| match p.kind {
            SocketKind::Datagram => r.to_vec(),
            SocketKind::Raw => {
                let mut v = vec![
                    0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
                ];
                v.extend_from_slice(r);
                v
            }
        };
        assert!(p.is_reply(&as_read(&reply), 7));
        assert!(!p.is_reply(&as_read(&reply), 8));
        assert!(!p.is_reply(&as_read(&reply[..10]), 7));
        assert!(!p.is_reply(&[], 7));
        assert!(!p.is_reply(&[0x4f; 3], 7));
        let mut other = reply;
        other[16] ^= 1;
        assert!(!p.is_reply(&as_read(&other), 7));
    }
}
