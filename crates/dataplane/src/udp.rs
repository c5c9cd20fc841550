//! The UDP port 4500 socket that carries ESP-in-UDP, IKE with the non-ESP marker and NAT keepalives
//! (RFC 3948 section 2); datagrams are told apart by `esp::classify_udp4500` in [`crate::path`].
//!
//! UDP GSO (`UDP_SEGMENT`), GRO (`UDP_GRO`), `IP_PKTINFO` and `sendmsg`/`recvmsg` are written
//! here against libc rather than taken from `quinn-udp` (once a declared, unused dependency):
//! a sealed batch sits in one buffer per packet (each sealed in place where the TUN read put
//! it), and one GSO `sendmsg` takes them as an iovec each, while `quinn_udp::Transmit` wants one
//! contiguous buffer per send, which would mean copying every packet once more. The receive
//! side opens coalesced datagrams in place in the buffer `recvmsg` filled, with the destination
//! address from `IP_PKTINFO`; the few lines of control-message code are tested below.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The 4-byte non-ESP marker that precedes IKE messages on port 4500 (RFC 3948 section 2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// The one-byte NAT keepalive payload (RFC 3948 section 2.3).
pub const NAT_KEEPALIVE: [u8; 1] = [0xff];

/// Default socket buffer size ([`crate::DataplaneConfig::socket_buffer`]).
pub const DEFAULT_SOCKET_BUFFER: usize = 8 << 20;

/// Large buffers absorb bursts between worker wake-ups. `SO_*BUFFORCE` (root, or
/// `CAP_NET_ADMIN`) passes `net.core.rmem_max`, which is only 208 KB by default; without the
/// privilege the normal option gives what the limit allows. Failure is harmless.
fn set_buffers(sock: &Socket, size: usize) {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    for (force, normal) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let fd = sock.as_raw_fd();
        if setsockopt_int(fd, libc::SOL_SOCKET, force, size).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, normal, size);
        }
    }
}

/// Sets an `int`-valued socket option (`setsockopt(2)`).
pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is a descriptor the caller keeps open; pointer and length describe `value`,
    // which the kernel only reads.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The data plane's UDP socket.
#[derive(Debug)]
pub(crate) struct UdpSock {
    sock: Socket,
    local: SocketAddr,
    /// Bound to the wildcard address: the source of each datagram is named per send
    /// (`IP_PKTINFO`), so each tunnel's packets leave from its own local address.
    wildcard: bool,
}

/// `IP_FREEBIND` / `IPV6_FREEBIND` when asked for.
fn set_freebind(sock: &Socket, addr: SocketAddr, on: bool) -> io::Result<()> {
    if !on {
        return Ok(());
    }
    if addr.is_ipv6() {
        sock.set_freebind_v6(true)
    } else {
        sock.set_freebind_v4(true)
    }
}

impl UdpSock {
    /// Binds `addr` (normally port 4500) in the network namespace of the calling thread.
    #[cfg(test)]
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, false, DEFAULT_SOCKET_BUFFER)
    }

    fn bind_with(addr: SocketAddr, freebind: bool, buffer: usize) -> io::Result<Self> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        set_freebind(&sock, addr, freebind)?;
        set_buffers(&sock, buffer);
        sock.bind(&addr.into())?;
        let local = sock.local_addr()?.as_socket().unwrap_or(addr);
        Ok(Self::new(sock, local))
    }

    /// Binds `n` sockets to `addr` in one `SO_REUSEPORT` group (one per worker): the kernel
    /// steers each peer's 4-tuple to one of them, so the packets of one flow stay in order on
    /// one worker. With `n == 1`, a plain socket.
    pub(crate) fn bind_group(
        addr: SocketAddr,
        n: usize,
        freebind: bool,
        buffer: usize,
    ) -> io::Result<Vec<Self>> {
        if n <= 1 {
            return Ok(vec![Self::bind_with(addr, freebind, buffer)?]);
        }
        let mut out: Vec<Self> = Vec::with_capacity(n);
        let mut at = addr;
        for _ in 0..n {
            let sock = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))?;
            if at.is_ipv6() {
                sock.set_only_v6(true)?;
            }
            sock.set_reuse_port(true)?;
            set_freebind(&sock, at, freebind)?;
            set_buffers(&sock, buffer);
            sock.bind(&at.into())?;
            let local = sock.local_addr()?.as_socket().unwrap_or(at);
            // With port 0 the first bind picks the port; the others join it.
            at = local;
            out.push(Self::new(sock, local));
        }
        Ok(out)
    }

    fn new(sock: Socket, local: SocketAddr) -> Self {
        Self {
            sock,
            local,
            wildcard: local.ip().is_unspecified(),
        }
    }

    pub(crate) fn local(&self) -> SocketAddr {
        self.local
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            sock: self.sock.try_clone()?,
            local: self.local,
            wildcard: self.wildcard,
        })
    }

    /// Non-blocking receive of one datagram into `buf` (tests; workers use [`Self::recv_gro`]).
    #[cfg(test)]
    pub(crate) fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and the kernel only writes
        // initialised bytes into the buffer; we never write uninitialised values into it.
        #[allow(unsafe_code)]
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        let (n, from) = self.sock.recv_from_with_flags(uninit, libc::MSG_DONTWAIT)?;
        let from = from
            .as_socket()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok((n, from))
    }

    /// Sends one datagram from `from` (see [`UdpSock::send_segments`]).
    #[inline]
    pub(crate) fn send_to(
        &self,
        buf: &[u8],
        to: SocketAddr,
        from: Option<IpAddr>,
    ) -> io::Result<usize> {
        let iov = [libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        }];
        self.send_segments(&iov, to, None, from)
    }

    /// Sends an IKE message with the non-ESP marker in front, without copying it.
    pub(crate) fn send_ike(
        &self,
        msg: &[u8],
        to: SocketAddr,
        from: Option<IpAddr>,
    ) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: NON_ESP_MARKER.as_ptr() as *mut libc::c_void,
                iov_len: NON_ESP_MARKER.len(),
            },
            libc::iovec {
                iov_base: msg.as_ptr() as *mut libc::c_void,
                iov_len: msg.len(),
            },
        ];
        self.send_segments(&iov, to, None, from)
    }
}

/// `UDP_SEGMENT` socket option / control message (Linux uapi `linux/udp.h`).
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` socket option / control message.
const UDP_GRO: libc::c_int = 104;
/// Most segments one GSO send may carry (kernel `UDP_MAX_SEGMENTS` is 64 or 128).
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;

/// Converts a socket address written by the kernel.
fn storage_to_addr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says this storage holds a sockaddr_in, which fits in it.
            #[allow(unsafe_code)]
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            #[allow(unsafe_code)]
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

impl UdpSock {
    /// Turns on UDP receive offload: the kernel may hand several datagrams of one flow to one
    /// `recvmsg`, all `stride` bytes long but the last. Returns whether the kernel accepted it.
    pub(crate) fn enable_gro(&self) -> bool {
        setsockopt_int(self.sock.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1).is_ok()
    }

    /// Non-blocking receive of one datagram or one GRO batch into `buf`; returns the length, the
    /// sender and the segment stride (equal to the length when not coalesced).
    pub(crate) fn recv_gro(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
        // SAFETY: an all-zero sockaddr_storage is a valid value.
        #[allow(unsafe_code)]
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut cmsg = CmsgBuf([0; 64]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is a valid value; we fill the fields below.
        #[allow(unsafe_code)]
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg.0.len() as _;
        // SAFETY: every pointer in `msg` refers to live, exclusively borrowed memory of the
        // stated length for the duration of the call.
        #[allow(unsafe_code)]
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut stride = n;
        // SAFETY: the kernel filled `msg_control` with well-formed control messages within
        // `msg_controllen`; the CMSG_* macros stay inside that buffer.
        #[allow(unsafe_code)]
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                    if v > 0 {
                        stride = v as usize;
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let from = storage_to_addr(&addr, msg.msg_namelen)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok((n, from, stride.max(1)))
    }

    /// Sends the concatenation of `iov` to `to` in one `sendmsg`; with `segment` set, the kernel
    /// splits it into datagrams of that size (UDP GSO; every part but the last must be exactly
    /// `segment` bytes). On a wildcard-bound socket `from` names the source address
    /// (`IP_PKTINFO` / `IPV6_PKTINFO`, ip(7)): a tunnel's ESP, IKE and keepalives leave from
    /// the address its peer knows, whichever of the host's addresses that is. Ignored on a
    /// socket bound to one address (the kernel uses that one).
    pub(crate) fn send_segments(
        &self,
        iov: &[libc::iovec],
        to: SocketAddr,
        segment: Option<u16>,
        from: Option<IpAddr>,
    ) -> io::Result<usize> {
        let from =
            from.filter(|f| self.wildcard && !f.is_unspecified() && f.is_ipv4() == to.is_ipv4());
        let to = SockAddr::from(to);
        let mut cmsg = CmsgBuf([0; 64]);
        // SAFETY: an all-zero msghdr is a valid value; we fill the fields below.
        #[allow(unsafe_code)]
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = to.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = to.len();
        // The kernel only reads through the iovecs of a send.
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        let seg_len = std::mem::size_of::<u16>() as u32;
        let info_len = match from {
            Some(IpAddr::V4(_)) => std::mem::size_of::<libc::in_pktinfo>() as u32,
            Some(IpAddr::V6(_)) => std::mem::size_of::<libc::in6_pktinfo>() as u32,
            None => 0,
        };
        // SAFETY: CMSG_SPACE only computes sizes.
        #[allow(unsafe_code)]
        let space = unsafe {
            segment.map_or(0, |_| libc::CMSG_SPACE(seg_len))
                + from.map_or(0, |_| libc::CMSG_SPACE(info_len))
        } as usize;
        if space > cmsg.0.len() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        if space > 0 {
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer is 64 bytes, aligned for cmsghdr and at least `space`
            // long (one u16 and one in6_pktinfo message take 24 + 40); CMSG_FIRSTHDR/NXTHDR
            // walk it within `msg_controllen`, each header is written before its data.
            #[allow(unsafe_code)]
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                if let Some(seg) = segment {
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(seg_len) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
                match from {
                    Some(IpAddr::V4(a)) if !c.is_null() => {
                        (*c).cmsg_level = libc::IPPROTO_IP;
                        (*c).cmsg_type = libc::IP_PKTINFO;
                        (*c).cmsg_len = libc::CMSG_LEN(info_len) as _;
                        let info = libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from_ne_bytes(a.octets()),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        };
                        std::ptr::write_unaligned(
                            libc::CMSG_DATA(c) as *mut libc::in_pktinfo,
                            info,
                        );
                    }
                    Some(IpAddr::V6(a)) if !c.is_null() => {
                        (*c).cmsg_level = libc::IPPROTO_IPV6;
                        (*c).cmsg_type = libc::IPV6_PKTINFO;
                        (*c).cmsg_len = libc::CMSG_LEN(info_len) as _;
                        let info = libc::in6_pktinfo {
                            ipi6_addr: libc::in6_addr {
                                s6_addr: a.octets(),
                            },
                            ipi6_ifindex: 0,
                        };
                        std::ptr::write_unaligned(
                            libc::CMSG_DATA(c) as *mut libc::in6_pktinfo,
                            info,
                        );
                    }
                    _ => {}
                }
            }
        }
        // SAFETY: `msg` points at live memory (address, iovecs, control buffer) for the call.
        #[allow(unsafe_code)]
        let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_socket_sends_from_the_named_address() {
        // 127.0.0.0/8 is all local: a socket on 0.0.0.0 can send from 127.0.0.2 or 127.0.0.3.
        let a = UdpSock::bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let b = UdpSock::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = a.local().port();
        let mut buf = [0u8; 64];
        for (from, want) in [
            (Some("127.0.0.2"), "127.0.0.2"),
            (Some("127.0.0.3"), "127.0.0.3"),
            (None, "127.0.0.1"),
        ] {
            let from = from.map(|f| f.parse::<IpAddr>().unwrap());
            a.send_ike(&[1, 2, 3], b.local(), from).unwrap();
            let (n, src, _) = recv_within(&b, &mut buf);
            assert_eq!(n, 7);
            assert_eq!(
                src,
                SocketAddr::new(want.parse().unwrap(), port),
                "{from:?}"
            );
            // GSO and the source together: two 50-byte datagrams, both from `from`.
            let data = [9u8; 100];
            let iov2 = [libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            }];
            a.send_segments(&iov2, b.local(), Some(50), from).unwrap();
            let mut big = [0u8; 256];
            let (n, src, _) = recv_within(&b, &mut big);
            assert!(n == 50 || n == 100, "{n}");
            assert_eq!(src.ip(), want.parse::<IpAddr>().unwrap());
            if n == 50 {
                let (_, src, _) = recv_within(&b, &mut big);
                assert_eq!(src.ip(), want.parse::<IpAddr>().unwrap());
            }
        }
        // A socket bound to one address ignores the request.
        let c = UdpSock::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        c.send_ike(&[1], b.local(), Some("127.0.0.2".parse().unwrap()))
            .unwrap();
        let (_, src, _) = recv_within(&b, &mut buf);
        assert_eq!(src, c.local());
    }

    #[test]
    fn ike_marker_on_the_wire() {
        let a = UdpSock::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpSock::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let msg = [7u8; 40];
        a.send_ike(&msg, b.local(), None).unwrap();
        let mut buf = [0u8; 100];
        let mut got = None;
        for _ in 0..200 {
            match b.recv_from(&mut buf) {
                Ok(r) => {
                    got = Some(r);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        let (n, from) = got.expect("datagram within 1 s");
        assert_eq!(from, a.local());
        assert_eq!(n, 44);
        assert_eq!(&buf[..4], &NON_ESP_MARKER);
        assert_eq!(&buf[4..44], &msg);
        assert_eq!(esp::classify_udp4500(&buf[..n]), esp::Udp4500::Ike);
    }

    fn recv_within(s: &UdpSock, buf: &mut [u8]) -> (usize, SocketAddr, usize) {
        for _ in 0..200 {
            match s.recv_gro(buf) {
                Ok(r) => return r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("nothing received within 1 s");
    }

    #[test]
    fn gso_send_and_gro_receive_on_loopback() {
        let a = UdpSock::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpSock::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(b.enable_gro(), "UDP_GRO accepted");
        // Three segments of 100 bytes and a last one of 40, from four separate slices.
        let parts: Vec<Vec<u8>> = vec![vec![1; 100], vec![2; 100], vec![3; 100], vec![4; 40]];
        let iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        let sent = a
            .send_segments(&iov, b.local(), Some(100), None)
            .expect("GSO send");
        assert_eq!(sent, 340);
        // Whether the kernel coalesces them again or not, the bytes and their boundaries must
        // come out as sent.
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while got.len() < 340 {
            let (n, from, stride) = recv_within(&b, &mut buf);
            assert_eq!(from, a.local());
            for seg in buf[..n].chunks(stride) {
                assert!(
                    seg.len() == 100 || seg.len() == 40,
                    "segment of {}",
                    seg.len()
                );
                got.extend_from_slice(seg);
            }
        }
        let want: Vec<u8> = parts.concat();
        assert_eq!(got, want);
        // Without a segment size the iovecs form one datagram.
        a.send_segments(&iov[..2], b.local(), None, None).unwrap();
        let (n, _, stride) = recv_within(&b, &mut buf);
        assert_eq!((n, stride), (200, 200));
    }
}
