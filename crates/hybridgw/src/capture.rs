//! Underlay capture audit: parses a pcap file (as written by `tcpdump -w`) and classifies every IPv4
//! packet as IKE (UDP 500, RFC 7296), ESP-in-UDP / NAT-T IKE (UDP 4500, RFC 3948) or a leak.
//!
//! The audit proves that nothing crosses the underlay in clear: every IPv4 packet must be UDP to or
//! from port 500 or 4500, no outer header may carry a protected (inner) address, and no ESP payload
//! may start with a readable IPv4 header of a protected address.

use std::net::Ipv4Addr;

/// What the audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Packets in the file.
    pub packets: u64,
    /// IKE on UDP 500.
    pub ike_500: u64,
    /// IKE on UDP 4500 (non-ESP marker).
    pub ike_4500: u64,
    /// ESP in UDP on 4500.
    pub esp: u64,
    /// NAT-T keepalives (one 0xff byte).
    pub keepalives: u64,
    /// Non-IPv4 frames (ARP, IPv6 neighbour discovery): not tunnel traffic, reported only.
    pub non_ipv4: u64,
    /// Descriptions of packets that are not IKE or ESP-in-UDP, or that show an inner address.
    pub leaks: Vec<String>,
}

impl Audit {
    /// True when there was tunnel traffic and nothing in clear.
    pub fn clean(&self) -> bool {
        self.leaks.is_empty() && self.esp > 0
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ip4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

/// Audit a pcap file's bytes. `inner` are the protected addresses that must never appear in clear.
pub fn audit_pcap(data: &[u8], inner: &[Ipv4Addr]) -> Result<Audit, String> {
    let magic = data.get(0..4).ok_or("pcap file too short")?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            return Err("pcapng is not supported: capture with tcpdump -w (pcap)".into());
        }
        _ => return Err("not a pcap file".into()),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let s: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        })
    };
    let linktype = u32_at(20).ok_or("pcap header truncated")?;
    let mut a = Audit::default();
    let mut off = 24usize;
    while off < data.len() {
        let incl = u32_at(off + 8).ok_or("record header truncated")? as usize;
        let start = off + 16;
        let frame = data.get(start..start + incl).ok_or("record truncated")?;
        off = start + incl;
        a.packets += 1;
        let (ethertype, l3) = match linktype {
            1 => (be16(frame, 12), 14),
            113 => (be16(frame, 14), 16),
            276 => (be16(frame, 0), 20),
            101 | 228 => (Some(0x0800), 0),
            other => return Err(format!("unsupported pcap link type {other}")),
        };
        if ethertype != Some(0x0800) {
            a.non_ipv4 += 1;
            continue;
        }
        let ip = frame.get(l3..).unwrap_or(&[]);
        classify(ip, inner, a.packets, &mut a);
    }
    Ok(a)
}

/// Audit Ethernet frames (as a live capture delivers them).
pub fn audit_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>, inner: &[Ipv4Addr]) -> Audit {
    let mut a = Audit::default();
    for frame in frames {
        a.packets += 1;
        if be16(frame, 12) != Some(0x0800) {
            a.non_ipv4 += 1;
            continue;
        }
        classify(frame.get(14..).unwrap_or(&[]), inner, a.packets, &mut a);
    }
    a
}

/// A live capture of every frame on every interface of a network namespace (an `AF_PACKET`
/// socket created inside it), audited as the frames arrive (nothing is stored). Needs no capture
/// tool: `hybridgw lab` runs it on the router that carries only the underlay.
#[derive(Debug)]
pub struct LiveCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Audit>>,
}

impl LiveCapture {
    /// Start auditing what `socket` (an `AF_PACKET`/`SOCK_RAW` socket, see [`packet_socket`])
    /// receives; `inner` are the protected addresses that must never appear in clear.
    pub fn start(socket: socket2::Socket, inner: Vec<Ipv4Addr>) -> std::io::Result<LiveCapture> {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        socket.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
        // A large buffer so bursts are not lost (root may exceed rmem_max); best effort.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &(64 << 20),
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let mut a = Audit::default();
                let mut buf = vec![0u8; 65536];
                let mut s = &socket;
                while !flag.load(Ordering::Relaxed) {
                    match s.read(&mut buf) {
                        Ok(n) => {
                            let frame = buf.get(..n).unwrap_or(&[]);
                            a.packets += 1;
                            if be16(frame, 12) != Some(0x0800) {
                                a.non_ipv4 += 1;
                            } else {
                                let n = a.packets;
                                classify(frame.get(14..).unwrap_or(&[]), &inner, n, &mut a);
                                a.leaks.truncate(1000);
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock
                                    | std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::Interrupted
                            ) => {}
                        Err(_) => break,
                    }
                }
                a
            })?;
        Ok(LiveCapture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop and return the audit.
    pub fn finish(mut self) -> Audit {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for LiveCapture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An `AF_PACKET` raw socket receiving every protocol on every interface of the calling thread's
/// network namespace (`ETH_P_ALL`).
pub fn packet_socket() -> std::io::Result<socket2::Socket> {
    let all = i32::from((libc::ETH_P_ALL as u16).to_be());
    socket2::Socket::new(
        socket2::Domain::PACKET,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(all)),
    )
}

fn classify(ip: &[u8], inner: &[Ipv4Addr], n: u64, a: &mut Audit) {
    let Some(&vihl) = ip.first() else {
        a.leaks.push(format!("packet {n}: empty IPv4 frame"));
        return;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let (Some(src), Some(dst), Some(&proto)) = (ip4(ip, 12), ip4(ip, 16), ip.get(9)) else {
        a.leaks.push(format!("packet {n}: truncated IPv4 header"));
        return;
    };
    if inner.contains(&src) || inner.contains(&dst) {
        a.leaks.push(format!(
            "packet {n}: inner address in clear: {src} -> {dst} proto {proto}"
        ));
        return;
    }
    if proto != 17 {
        a.leaks.push(format!(
            "packet {n}: {src} -> {dst} IP protocol {proto} (not UDP)"
        ));
        return;
    }
    let udp = ip.get(ihl..).unwrap_or(&[]);
    let (Some(sp), Some(dp)) = (be16(udp, 0), be16(udp, 2)) else {
        a.leaks.push(format!("packet {n}: truncated UDP header"));
        return;
    };
    let payload = udp.get(8..).unwrap_or(&[]);
    if sp == 500 || dp == 500 {
        a.ike_500 += 1;
    } else if sp == 4500 || dp == 4500 {
        if payload == [0xff] {
            a.keepalives += 1;
        } else if payload.get(0..4) == Some(&[0, 0, 0, 0]) {
            a.ike_4500 += 1;
        } else {
            a.esp += 1;
            // ESP header (SPI, sequence) then the payload, perhaps behind an IV: an inner IPv4 header
            // in clear would show up at one of these offsets.
            for iv in [0usize, 8, 16] {
                let p = payload.get(8 + iv..).unwrap_or(&[]);
                if p.first().is_some_and(|b| b >> 4 == 4)
                    && let (Some(s), Some(d)) = (ip4(p, 12), ip4(p, 16))
                    && (inner.contains(&s) || inner.contains(&d))
                {
                    a.leaks.push(format!(
                        "packet {n}: ESP payload carries a readable IPv4 header {s} -> {d}"
                    ));
                }
            }
        }
    } else {
        a.leaks.push(format!(
            "packet {n}: {src}:{sp} -> {dst}:{dp} UDP outside IKE/NAT-T ports"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        v.extend([0u8; 8]);
        v.extend(65535u32.to_le_bytes());
        v.extend(1u32.to_le_bytes());
        for f in frames {
            v.extend([0u8; 8]);
            v.extend((f.len() as u32).to_le_bytes());
            v.extend((f.len() as u32).to_le_bytes());
            v.extend(f);
        }
        v
    }

    fn eth_ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        ip.extend(src);
        ip.extend(dst);
        f.extend(ip);
        f.extend(l4);
        f
    }

    fn udp(sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = sp.to_be_bytes().to_vec();
        u.extend(dp.to_be_bytes());
        u.extend([0, 0, 0, 0]);
        u.extend(payload);
        u
    }

    const INNER: [Ipv4Addr; 1] = [Ipv4Addr::new(198, 18, 1, 10)];

    #[test]
    fn counts_ike_and_esp() {
        let f = [
            eth_ipv4([192, 0, 2, 1], [192, 0, 2, 2], 17, &udp(500, 500, &[1; 40])),
            eth_ipv4(
                [192, 0, 2, 1],
                [192, 0, 2, 2],
                17,
                &udp(4500, 4500, &[0, 0, 0, 0, 1, 2]),
            ),
            eth_ipv4(
                [192, 0, 2, 1],
                [192, 0, 2, 2],
                17,
                &udp(4500, 4500, &[0xc1; 100]),
            ),
        ];
        let a = audit_pcap(&pcap(&f), &INNER).unwrap();
        assert_eq!((a.ike_500, a.ike_4500, a.esp), (1, 1, 1));
        assert!(a.clean(), "{a:?}");
    }

    #[test]
    fn flags_clear_traffic() {
        let f = [
            eth_ipv4(
                [192, 0, 2, 1],
                [192, 0, 2, 2],
                17,
                &udp(4500, 4500, &[0xc1; 100]),
            ),
            eth_ipv4([198, 18, 1, 10], [198, 19, 1, 10], 1, &[8, 0, 0, 0]),
            eth_ipv4([192, 0, 2, 1], [192, 0, 2, 2], 6, &[0; 20]),
        ];
        let a = audit_pcap(&pcap(&f), &INNER).unwrap();
        assert_eq!(a.leaks.len(), 2, "{a:?}");
        assert!(!a.clean());
    }

    #[test]
    fn flags_readable_inner_header_in_esp() {
        let mut esp = vec![0u8, 0, 0, 1, 0, 0, 0, 1];
        esp.extend(&eth_ipv4([198, 18, 1, 10], [198, 19, 1, 10], 1, &[])[14..]);
        let f = [eth_ipv4(
            [192, 0, 2, 1],
            [192, 0, 2, 2],
            17,
            &udp(4500, 4500, &esp),
        )];
        let a = audit_pcap(&pcap(&f), &INNER).unwrap();
        assert_eq!(a.leaks.len(), 1, "{a:?}");
    }

    #[test]
    fn audits_raw_frames() {
        let f = [
            eth_ipv4(
                [192, 0, 2, 1],
                [198, 51, 100, 2],
                17,
                &udp(4500, 4500, &[0xc1; 100]),
            ),
            eth_ipv4([198, 18, 1, 10], [198, 19, 1, 10], 6, &[0; 20]),
            vec![0u8; 10],
        ];
        let a = audit_frames(f.iter().map(|v| v.as_slice()), &INNER);
        assert_eq!(
            (a.packets, a.esp, a.non_ipv4, a.leaks.len()),
            (3, 1, 1, 1),
            "{a:?}"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(audit_pcap(b"garbage!", &INNER).is_err());
        assert!(audit_pcap(&[], &INNER).is_err());
        let mut p = pcap(&[vec![0u8; 30]]);
        p.truncate(p.len() - 5);
        assert!(audit_pcap(&p, &INNER).is_err());
    }
}
