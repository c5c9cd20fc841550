//! End-to-end test of two data planes in two network namespaces joined by a veth pair
//! (192.0.2.1/24 <-> 192.0.2.2/24), manually keyed (RFC 4303 ESP in UDP, RFC 3948): ping and a TCP
//! transfer cross between 198.18.1.0/24 and 198.19.1.0/24, the counters agree on both sides,
//! IKE on port 4500 reaches the control channel, NAT keepalives are counted, MSS is clamped, and
//! a capture on the veth shows only UDP 4500.
//!
//! Needs root, `ip`, `ping` and `tcpdump` (all present in the project's environment).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use dataplane::{
    Dataplane, DataplaneConfig, DataplaneEvent, Direction, DropReason, OutboundRoute, TunnelConfig,
};
use esp::{Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, SaConfig};
use netns::Netns;

const SPI_AB: u32 = 0x1000_0001; // A -> B, AES-256-GCM
const SPI_BA: u32 = 0x2000_0002; // B -> A, AES-256-CBC + HMAC-SHA2-256-128
const TRANSFER: usize = 2 * 1024 * 1024;

fn sa_ab() -> SaConfig {
    SaConfig::new(
        SPI_AB,
        Cipher::AesGcm16_256,
        Integrity::None,
        KeyMaterial::from_slice(&[0x5a; 36]),
        KeyMaterial::empty(),
    )
}

fn sa_ba() -> SaConfig {
    SaConfig::new(
        SPI_BA,
        Cipher::AesCbc256,
        Integrity::HmacSha256_128,
        KeyMaterial::from_slice(&[0xa5; 32]),
        KeyMaterial::from_slice(&[0x3c; 32]),
    )
}

/// One side: namespace, data plane.
fn start(
    ns: &Netns,
    udp: &str,
    tun_addr: [u8; 4],
    peer_net: &str,
) -> (Dataplane, dataplane::ControlRx) {
    start_with(ns, udp, tun_addr, peer_net, |_| {})
}

/// Like [`start`], with a chance to change the configuration.
fn start_with(
    ns: &Netns,
    udp: &str,
    tun_addr: [u8; 4],
    peer_net: &str,
    tweak: impl FnOnce(&mut DataplaneConfig),
) -> (Dataplane, dataplane::ControlRx) {
    // The test is IPv4 only: keep the kernel's IPv6 chatter (router solicitations) out of the
    // TUN so that every drop counter must stay zero.
    ns.sysctl_set("net.ipv6.conf.default.disable_ipv6", "1")
        .expect("sysctl");
    let mut cfg = DataplaneConfig::new(udp.parse().unwrap());
    let mut t = TunnelConfig::route_based("dptun0");
    t.tun.ipv4 = Some((tun_addr.into(), 24));
    cfg.tunnels.push(t);
    cfg.workers = 2;
    tweak(&mut cfg);
    let r = ns
        .run_in(move || Dataplane::start(cfg))
        .expect("data plane starts in the namespace");
    ns.exec(["ip", "route", "add", peer_net, "dev", "dptun0"])
        .expect("route into the TUN");
    r
}

/// Two manually keyed data planes in two fresh namespaces joined by a veth pair (192.0.2.1/24 and
/// 192.0.2.2/24), SAs installed both ways. Fields drop in order: data planes before namespaces.
struct KeyedPair {
    dp_a: Dataplane,
    dp_b: Dataplane,
    _ctl: (dataplane::ControlRx, dataplane::ControlRx),
    ns_a: Netns,
    _ns_b: Netns,
}

fn keyed_pair(
    prefix: &str,
    names: (&str, &str),
    cpu_affinity: bool,
    tweak_a: impl FnOnce(&mut DataplaneConfig),
) -> KeyedPair {
    keyed_pair_window(
        prefix,
        names,
        cpu_affinity,
        tweak_a,
        |c| c.cpu_affinity = cpu_affinity,
        sa_ab().replay_window,
    )
}

/// [`keyed_pair`] with B's own configuration and B's inbound replay window (A -> B) of
/// `window` packets.
fn keyed_pair_window(
    prefix: &str,
    (va, vb): (&str, &str),
    cpu_affinity: bool,
    tweak_a: impl FnOnce(&mut DataplaneConfig),
    tweak_b: impl FnOnce(&mut DataplaneConfig),
    window: u32,
) -> KeyedPair {
    let ns_a = Netns::new(prefix).expect("netns a");
    let ns_b = Netns::new(prefix).expect("netns b");
    netns::veth_pair(&ns_a, va, &ns_b, vb).expect("veth");
    ns_a.exec(["ip", "addr", "add", "192.0.2.1/24", "dev", va])
        .unwrap();
    ns_b.exec(["ip", "addr", "add", "192.0.2.2/24", "dev", vb])
        .unwrap();
    let (dp_a, ctl_a) = start_with(
        &ns_a,
        "192.0.2.1:4500",
        [198, 18, 1, 1],
        "198.19.1.0/24",
        |c| {
            c.cpu_affinity = cpu_affinity;
            tweak_a(c)
        },
    );
    let (dp_b, ctl_b) = start_with(
        &ns_b,
        "192.0.2.2:4500",
        [198, 19, 1, 1],
        "198.18.1.0/24",
        tweak_b,
    );
    let (ta, tb) = (
        dp_a.tunnel_id("dptun0").unwrap(),
        dp_b.tunnel_id("dptun0").unwrap(),
    );
    dp_a.install_inbound(ta, InboundSa::new(&sa_ba()).unwrap(), None)
        .unwrap();
    let mut b_in = sa_ab();
    b_in.replay_window = window;
    dp_b.install_inbound(tb, InboundSa::new(&b_in).unwrap(), None)
        .unwrap();
    for (dp, t, sa, to) in [
        (&dp_a, ta, sa_ab(), "192.0.2.2:4500"),
        (&dp_b, tb, sa_ba(), "192.0.2.1:4500"),
    ] {
        dp.install_outbound(
            t,
            OutboundRoute::Any,
            OutboundSa::new(&sa).unwrap(),
            to.parse().unwrap(),
        )
        .unwrap();
    }
    KeyedPair {
        dp_a,
        dp_b,
        _ctl: (ctl_a, ctl_b),
        ns_a,
        _ns_b: ns_b,
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_dataplanes_carry_ping_and_tcp_and_nothing_in_clear() {
    let ns_a = Netns::new("dpt").expect("netns a");
    let ns_b = Netns::new("dpt").expect("netns b");
    netns::veth_pair(&ns_a, "dpva", &ns_b, "dpvb").expect("veth");
    ns_a.exec(["ip", "addr", "add", "192.0.2.1/24", "dev", "dpva"])
        .unwrap();
    ns_b.exec(["ip", "addr", "add", "192.0.2.2/24", "dev", "dpvb"])
        .unwrap();

    // Removed with its log when the test ends, also on failure.
    let dir = tempfile::tempdir().expect("temp dir");
    let pcap = dir.path().join("veth.pcap");
    let dump = ns_a
        .spawn_logged(
            [
                "tcpdump",
                "-i",
                "dpva",
                "-n",
                "-U",
                "-w",
                pcap.to_str().unwrap(),
            ],
            &pcap.with_extension("log"),
        )
        .expect("tcpdump");
    wait_for("tcpdump to listen", Duration::from_secs(10), || {
        std::fs::read_to_string(pcap.with_extension("log"))
            .ok()
            .filter(|l| l.contains("listening"))
            .map(|_| ())
    });

    let (dp_a, mut ctl_a) = start(&ns_a, "192.0.2.1:4500", [198, 18, 1, 1], "198.19.1.0/24");
    let (dp_b, mut ctl_b) = start(&ns_b, "192.0.2.2:4500", [198, 19, 1, 1], "198.18.1.0/24");
    let ta = dp_a.tunnel_id("dptun0").unwrap();
    let tb = dp_b.tunnel_id("dptun0").unwrap();
    let a: SocketAddr = "192.0.2.1:4500".parse().unwrap();
    let b: SocketAddr = "192.0.2.2:4500".parse().unwrap();

    // A route-based tunnel refuses a selector-based outbound SA.
    let wrong = dp_a.install_outbound(
        ta,
        OutboundRoute::Selectors(esp::SelectorPolicy::any()),
        OutboundSa::new(&sa_ab()).unwrap(),
        b,
    );
    assert!(
        matches!(
            wrong,
            Err(dataplane::Error::Table(dataplane::TableError::WrongMode(_)))
        ),
        "{wrong:?}"
    );
    // Manual keys: same keys, swapped SPIs.
    dp_a.install_inbound(ta, InboundSa::new(&sa_ba()).unwrap(), None)
        .unwrap();
    dp_b.install_inbound(tb, InboundSa::new(&sa_ab()).unwrap(), None)
        .unwrap();
    assert_eq!(
        dp_a.install_outbound(
            ta,
            OutboundRoute::Any,
            OutboundSa::new(&sa_ab()).unwrap(),
            b
        )
        .unwrap(),
        None
    );
    assert_eq!(
        dp_b.install_outbound(
            tb,
            OutboundRoute::Any,
            OutboundSa::new(&sa_ba()).unwrap(),
            a
        )
        .unwrap(),
        None
    );

    // Ping across.
    let out = ns_a
        .exec([
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            "198.18.1.1",
            "198.19.1.1",
        ])
        .expect("ping crosses the tunnel");
    assert!(out.contains("5 received"), "{out}");

    // A TCP transfer from A to B, echoed back as a digest.
    let listener: TcpListener = ns_b
        .tcp_listen("198.19.1.1:5001".parse().unwrap())
        .expect("listen");
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = 0usize;
        let mut sum = 0u64;
        let mut buf = vec![0u8; 65536];
        while got < TRANSFER {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "early EOF after {got}");
            sum = buf[..n].iter().fold(sum, |acc, b| {
                acc.wrapping_mul(31).wrapping_add(u64::from(*b))
            });
            got += n;
        }
        s.write_all(&sum.to_be_bytes()).unwrap();
        (peer, got, sum)
    });
    let mut c = ns_a
        .tcp_connect("198.19.1.1:5001".parse().unwrap(), Duration::from_secs(5))
        .expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let data: Vec<u8> = (0..TRANSFER).map(|i| (i * 7 + i / 1000) as u8).collect();
    let expect = data.iter().fold(0u64, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u64::from(*b))
    });
    c.write_all(&data).expect("send");
    let mut digest = [0u8; 8];
    c.read_exact(&mut digest).expect("digest back");
    let (peer, got, sum) = server.join().expect("server");
    assert_eq!(got, TRANSFER);
    assert_eq!(sum, expect);
    assert_eq!(u64::from_be_bytes(digest), expect);
    assert_eq!(peer.ip().to_string(), "198.18.1.1");
    drop(c);

    // IKE on 4500 goes to the control plane, both ways, with the marker handled by the data plane.
    let ike = [0x42u8; 36];
    dp_a.send_ike(b, &ike).unwrap();
    let got = wait_for("IKE at B", Duration::from_secs(10), || {
        ctl_b.ike.try_recv().ok()
    });
    assert_eq!(
        (got.local, got.remote, got.message.as_slice()),
        (b, a, &ike[..])
    );
    dp_b.ike_sender().send(a, &ike[..30]).unwrap();
    let got = wait_for("IKE at A", Duration::from_secs(10), || {
        ctl_a.ike.try_recv().ok()
    });
    assert_eq!((got.remote, got.message.len()), (b, 30));

    // NAT keepalives are sent, counted and dropped.
    dp_a.set_nat_keepalive(ta, Some(Duration::from_secs(1)))
        .unwrap();
    wait_for("a keepalive at B", Duration::from_secs(10), || {
        (dp_b.counters().keepalives_rx >= 1).then_some(())
    });
    dp_a.set_nat_keepalive(ta, None).unwrap();

    // Counters agree: what A sealed, B opened, and back.
    std::thread::sleep(Duration::from_millis(300));
    let (ca, cb) = (dp_a.counters(), dp_b.counters());
    let a_out = ca.sa(SPI_AB, Direction::Outbound).expect("A outbound SA");
    let b_in = cb.sa(SPI_AB, Direction::Inbound).expect("B inbound SA");
    let b_out = cb.sa(SPI_BA, Direction::Outbound).expect("B outbound SA");
    let a_in = ca.sa(SPI_BA, Direction::Inbound).expect("A inbound SA");
    assert!(a_out.packets >= 5 + TRANSFER as u64 / 1400, "{a_out:?}");
    assert!(a_out.bytes >= TRANSFER as u64, "{a_out:?}");
    assert_eq!(
        (a_out.packets, a_out.bytes),
        (b_in.packets, b_in.bytes),
        "A->B"
    );
    assert_eq!(
        (b_out.packets, b_out.bytes),
        (a_in.packets, a_in.bytes),
        "B->A"
    );
    for (side, c) in [("A", &ca), ("B", &cb)] {
        let drops: Vec<_> = c.drops.iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(c.drops.total(), 0, "{side} drops: {drops:?}");
        // The SYN (MSS 1360 from MTU 1400) was clamped to 1350 on its way out of A and the
        // SYN-ACK on its way out of B.
        assert!(c.mss_clamped >= 1, "{side}: no MSS clamped");
    }
    assert_eq!(ca.drops.get(DropReason::Replay), 0);
    assert_eq!(ca.ike_tx, 1);
    assert_eq!(cb.ike_rx, 1);
    assert!(ca.keepalives_tx >= 1);

    // The wire shows only UDP 4500 between the underlay addresses: no inner address in clear.
    // Let tcpdump drain its buffer, then stop it with SIGINT so that it flushes the file.
    std::thread::sleep(Duration::from_millis(1000));
    dump.stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(5))
        .expect("stop tcpdump");
    let count = |filter: &str| -> usize {
        let out = std::process::Command::new("tcpdump")
            .args(["-n", "-r", pcap.to_str().unwrap(), filter])
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // With UDP GSO a captured packet on the veth may carry many ESP datagrams, so compare kinds,
    // not numbers: every IPv4 packet is UDP 4500 between the two underlay addresses.
    let esp = count("udp port 4500 and host 192.0.2.1 and host 192.0.2.2");
    let log = std::fs::read_to_string(pcap.with_extension("log")).unwrap_or_default();
    assert!(esp >= 10, "captured {esp} UDP 4500 packets; tcpdump: {log}");
    assert_eq!(
        count("ip"),
        esp,
        "every captured IPv4 packet is ESP-in-UDP between the gateways"
    );
    assert_eq!(
        count("ip and not udp port 4500"),
        0,
        "IPv4 other than UDP 4500 on the wire"
    );
    assert_eq!(count("net 198.18.0.0/15"), 0, "inner addresses in clear");

    // Graceful shutdown: the TUN disappears with the data plane.
    dp_a.shutdown();
    let links = ns_a.exec(["ip", "-o", "link", "show"]).unwrap();
    assert!(!links.contains("dptun0"), "{links}");
    drop(dp_b);
}

/// Waits for an event matching `pred` on `rx`.
/// The event receiver of one side, keeping events not yet asked for (they arrive in any order).
struct Events {
    rx: tokio::sync::mpsc::UnboundedReceiver<DataplaneEvent>,
    seen: Vec<DataplaneEvent>,
}

/// Waits for an event matching `pred`, looking first at events received earlier.
fn wait_event(
    what: &str,
    ev: &mut Events,
    pred: impl Fn(&DataplaneEvent) -> bool,
) -> DataplaneEvent {
    wait_for(what, Duration::from_secs(10), || {
        while let Ok(e) = ev.rx.try_recv() {
            ev.seen.push(e);
        }
        let i = ev.seen.iter().position(&pred)?;
        Some(ev.seen.remove(i))
    })
}

fn ping(ns: &Netns, count: &str) -> String {
    ns.exec([
        "ping",
        "-c",
        count,
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "198.18.1.1",
        "198.19.1.1",
    ])
    .expect("ping crosses")
}

#[test]
fn soft_limit_rekey_make_before_break_hard_limit_and_nat_rebinding() {
    const SPI_AB2: u32 = 0x1000_0003;
    const SPI_AB3: u32 = 0x1000_0005;
    let ns_a = Netns::new("dpt").expect("netns a");
    let ns_b = Netns::new("dpt").expect("netns b");
    netns::veth_pair(&ns_a, "dpva", &ns_b, "dpvb").expect("veth");
    ns_a.exec(["ip", "addr", "add", "192.0.2.1/24", "dev", "dpva"])
        .unwrap();
    ns_b.exec(["ip", "addr", "add", "192.0.2.2/24", "dev", "dpvb"])
        .unwrap();
    // A NAT in front of A maps its source port 4500 to 4600: B sees A "rebind".
    ns_a.nft("table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n  udp sport 4500 snat to 192.0.2.1:4600\n }\n}\n")
        .expect("nft SNAT");

    let (dp_a, ctl_a) = start(&ns_a, "192.0.2.1:4500", [198, 18, 1, 1], "198.19.1.0/24");
    let (dp_b, ctl_b) = start(&ns_b, "192.0.2.2:4500", [198, 19, 1, 1], "198.18.1.0/24");
    let mut ev_a = Events {
        rx: ctl_a.events,
        seen: Vec::new(),
    };
    let mut ev_b = Events {
        rx: ctl_b.events,
        seen: Vec::new(),
    };
    let (ta, tb) = (
        dp_a.tunnel_id("dptun0").unwrap(),
        dp_b.tunnel_id("dptun0").unwrap(),
    );
    let a: SocketAddr = "192.0.2.1:4500".parse().unwrap();
    let a_natted: SocketAddr = "192.0.2.1:4600".parse().unwrap();
    let b: SocketAddr = "192.0.2.2:4500".parse().unwrap();

    // SA A->B asks for a rekey after 5 packets.
    let mut ab1 = sa_ab();
    ab1.limits.soft_packets = Some(5);
    dp_a.install_inbound(ta, InboundSa::new(&sa_ba()).unwrap(), None)
        .unwrap();
    dp_b.install_inbound(tb, InboundSa::new(&ab1).unwrap(), None)
        .unwrap();
    dp_a.install_outbound(ta, OutboundRoute::Any, OutboundSa::new(&ab1).unwrap(), b)
        .unwrap();
    dp_b.install_outbound(
        tb,
        OutboundRoute::Any,
        OutboundSa::new(&sa_ba()).unwrap(),
        a,
    )
    .unwrap();

    let out = ping(&ns_a, "8");
    assert!(out.contains("8 received"), "{out}");
    let soft = |dir: Direction| move |e: &DataplaneEvent| matches!(e, DataplaneEvent::Lifetime { spi: SPI_AB, direction, state: esp::LifetimeState::RekeyNeeded, .. } if *direction == dir);
    wait_event("soft limit at A", &mut ev_a, soft(Direction::Outbound));
    wait_event("soft limit at B", &mut ev_b, soft(Direction::Inbound));
    // B saw A's ESP from the NATed port: rebinding event, then B follows it.
    let ev = wait_event("rebinding at B", &mut ev_b, |e| {
        matches!(e, DataplaneEvent::PeerAddressChanged { .. })
    });
    assert_eq!(
        ev,
        DataplaneEvent::PeerAddressChanged {
            tunnel: tb,
            spi: SPI_AB,
            from: a_natted
        }
    );
    dp_b.set_peer(tb, a_natted).unwrap();

    // Make-before-break rekey of A->B: new inbound at B first, then switch A's outbound.
    let ab2 = SaConfig {
        spi: SPI_AB2,
        enc_key: KeyMaterial::from_slice(&[0x77; 36]),
        ..sa_ab()
    };
    dp_b.install_inbound(tb, InboundSa::new(&ab2).unwrap(), None)
        .unwrap();
    let old = dp_a
        .install_outbound(ta, OutboundRoute::Any, OutboundSa::new(&ab2).unwrap(), b)
        .unwrap();
    assert_eq!(old, Some(SPI_AB));
    let out = ping(&ns_a, "3");
    assert!(out.contains("3 received"), "{out}");
    assert_eq!(dp_b.remove(tb, Direction::Inbound, SPI_AB), 1);
    let cb = dp_b.counters();
    assert!(cb.sa(SPI_AB, Direction::Inbound).is_none());
    assert!(cb.sa(SPI_AB2, Direction::Inbound).expect("new SA").packets >= 3);
    assert_eq!(
        dp_a.counters()
            .sa(SPI_AB2, Direction::Outbound)
            .expect("new SA")
            .packets,
        cb.sa(SPI_AB2, Direction::Inbound).unwrap().packets
    );
    assert_eq!(cb.drops.total(), 0, "{:?}", cb.drops);

    // A hard limit stops the SA and is reported once.
    let mut ab3 = SaConfig {
        spi: SPI_AB3,
        enc_key: KeyMaterial::from_slice(&[0x99; 36]),
        ..sa_ab()
    };
    // (Soft limit set too: esp only checks the hard limit once the soft one is crossed.)
    ab3.limits.soft_packets = Some(1);
    ab3.limits.hard_packets = Some(2);
    dp_b.install_inbound(tb, InboundSa::new(&ab3).unwrap(), None)
        .unwrap();
    dp_a.install_outbound(ta, OutboundRoute::Any, OutboundSa::new(&ab3).unwrap(), b)
        .unwrap();
    let out = ns_a
        .exec_output([
            "ping",
            "-c",
            "4",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "198.18.1.1",
            "198.19.1.1",
        ])
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("4 packets transmitted, 2 received"), "{out}");
    wait_event("hard limit at A", &mut ev_a, |e| {
        matches!(
            e,
            DataplaneEvent::Lifetime {
                spi: SPI_AB3,
                direction: Direction::Outbound,
                state: esp::LifetimeState::Expired,
                ..
            }
        )
    });
    assert_eq!(dp_a.counters().drops.get(DropReason::Expired), 2);
}

#[test]
fn too_big_packets_get_icmp_frag_needed_through_the_tun() {
    // A's underlay MTU is 1200: inner packets above about 1130 bytes cannot be carried.
    let pair = keyed_pair("dpt", ("dpva", "dpvb"), false, |c| c.underlay_mtu = 1200);
    let (dp_a, ns_a) = (&pair.dp_a, &pair.ns_a);
    // 1300 bytes of ICMP payload with DF: the data plane answers "fragmentation needed".
    let out = ns_a
        .exec_output([
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1300",
            "-I",
            "198.18.1.1",
            "198.19.1.1",
        ])
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    let c = dp_a.counters();
    assert!(c.icmp_sent >= 1, "no ICMP sent: {text}");
    assert!(c.drops.get(DropReason::TooBig) >= 1);
    // The kernel learnt the path MTU from our ICMP: the route now carries it.
    let route = ns_a
        .exec(["ip", "route", "get", "198.19.1.1", "from", "198.18.1.1"])
        .unwrap();
    assert!(
        route.contains("mtu"),
        "no PMTU in the route cache: {route}\nping: {text}"
    );
    // Packets that fit still cross.
    let out = ping_sized(ns_a, "1000");
    assert!(out.contains("1 received"), "{out}");
}

fn ping_sized(ns: &Netns, size: &str) -> String {
    ns.exec([
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        size,
        "-I",
        "198.18.1.1",
        "198.19.1.1",
    ])
    .expect("ping crosses")
}

/// CPUs thread `tid` of this process may run on, from `/proc/self/task/<tid>/status`.
fn cpus_allowed(tid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .unwrap_or_else(|e| panic!("status of thread {tid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .expect("Cpus_allowed_list")
}

/// Each worker of `dp` pinned to a CPU of its own (CPU-local steering), or none pinned.
fn pinned(dp: &Dataplane) -> Option<Vec<String>> {
    let cpus: Vec<String> = dp
        .worker_thread_ids()
        .into_iter()
        .map(cpus_allowed)
        .collect();
    let single = cpus.iter().all(|c| c.parse::<usize>().is_ok());
    let distinct = cpus.iter().collect::<std::collections::HashSet<_>>().len() == cpus.len();
    (single && distinct).then_some(cpus)
}

#[test]
fn steering_is_cpu_local_when_quiet_and_spreads_under_load() {
    let process_cpus = cpus_allowed(nix::unistd::gettid().as_raw());
    let pair = keyed_pair("dps", ("dpsa", "dpsb"), true, |_| {});
    let (dp_a, dp_b, ns_a) = (&pair.dp_a, &pair.dp_b, &pair.ns_a);
    let ncpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("process may run on CPUs {process_cpus} ({ncpus})");
    if ncpus < 2 {
        // Nothing to steer between: hash steering, workers free.
        let b = dp_a.counters().batching;
        assert!(!b.cpu_local && b.steering_changes == 0, "{b:?}");
        assert!(pinned(dp_a).is_none());
        return;
    }

    // Quiet: each worker pinned to a CPU of its own, packets to the current CPU's worker, and
    // traffic crosses.
    for dp in [&dp_a, &dp_b] {
        let b = dp.counters().batching;
        assert!(b.cpu_local && b.steering_changes == 1, "{b:?}");
        let cpus = pinned(dp).expect("workers pinned while quiet");
        println!("quiet: workers on CPUs {cpus:?}");
    }
    let out = ping(ns_a, "5");
    assert!(out.contains("5 received"), "{out}");

    // Load: UDP through the tunnel well above 5,000 packets per second for up to 6 s, until
    // both sides have spread out.
    let sock = ns_a
        .udp_bind("198.18.1.1:0".parse().unwrap())
        .expect("udp in A");
    let to: SocketAddr = "198.19.1.1:9".parse().unwrap();
    let payload = [0x55u8; 64];
    // The load comes from one thread on one CPU. Left free, the scheduler may move it to the
    // other CPU mid-flood, before the switch to hash steering: CPU-local steering then splits
    // the one SA over both workers of each side and B's replay window drops what arrives too
    // late (seen in about 1 run of 12, before and after this session). That reordering is the
    // subject of issue #15 (strict per-SA order with parallel workers); this test is about
    // the steering switches and drops nothing else.
    let mut one = nix::sched::CpuSet::new();
    let first = process_cpus
        .split([',', '-'])
        .next()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .unwrap_or(0);
    one.set(first).expect("cpu set");
    let me = nix::unistd::Pid::from_raw(0);
    let before = nix::sched::sched_getaffinity(me).expect("affinity");
    nix::sched::sched_setaffinity(me, &one).expect("pin the load thread");
    let end = Instant::now() + Duration::from_secs(6);
    let mut sent = 0u64;
    let mut spread = false;
    while Instant::now() < end && !spread {
        for _ in 0..2000 {
            if sock.send_to(&payload, to).is_ok() {
                sent += 1;
            }
        }
        spread = [&dp_a, &dp_b]
            .iter()
            .all(|dp| !dp.counters().batching.cpu_local);
    }
    nix::sched::sched_setaffinity(me, &before).expect("unpin the load thread");
    assert!(spread, "still CPU-local after {sent} packets in 6 s");
    for dp in [&dp_a, &dp_b] {
        let b = dp.counters().batching;
        assert_eq!(b.steering_changes, 2, "{b:?}");
        for tid in dp.worker_thread_ids() {
            assert_eq!(
                cpus_allowed(tid),
                process_cpus,
                "worker {tid} unpinned under load"
            );
        }
    }
    println!("spread after {sent} packets");
    // Traffic still crosses, and nothing was dropped by the data planes on the way.
    let out = ping(ns_a, "5");
    assert!(out.contains("5 received"), "{out}");

    // Quiet again: back to CPU-local within a few seconds.
    wait_for("CPU-local steering again", Duration::from_secs(10), || {
        [&dp_a, &dp_b]
            .iter()
            .all(|dp| dp.counters().batching.cpu_local && pinned(dp).is_some())
            .then_some(())
    });
    let out = ping(ns_a, "5");
    assert!(out.contains("5 received"), "{out}");
    for (side, dp) in [("A", &dp_a), ("B", &dp_b)] {
        let c = dp.counters();
        assert_eq!(c.batching.steering_changes, 3, "{side}: {:?}", c.batching);
        let drops: Vec<_> = c.drops.iter().filter(|(_, n)| *n > 0).collect();
        // UDP beyond what a TUN queue holds may be refused by the kernel before the data plane
        // sees it; the data plane itself drops nothing, except (B, receiving) replays while
        // the flood was still CPU-local: the receive side opens one SA's packets on the worker
        // of the CPU each arrives on, and one worker can fall more than the 1024-packet window
        // behind the other before the backlog rule switches to hash steering (seen in about 1
        // CI run of 10; the send side is ordered since issue #15, the receive side is not).
        let replay = c.drops.get(DropReason::Replay);
        println!("{side}: drops {drops:?}");
        if side == "A" {
            assert_eq!(c.drops.total(), 0, "{side} drops: {drops:?}");
        } else {
            assert_eq!(c.drops.total(), replay, "{side} drops: {drops:?}");
            assert!(
                replay * 20 <= sent,
                "{side}: {replay} replay drops of {sent} packets: more than the flood's steering switch explains"
            );
        }
    }
}

/// ESP sequence numbers per SPI, in capture order, from a pcap of Ethernet frames carrying
/// IPv4 ESP-in-UDP on port 4500 (RFC 3948: the SPI right after the UDP header; IKE's non-ESP
/// marker is SPI 0 and a NAT keepalive one byte). Each captured frame is one datagram (the
/// sender's UDP GSO is segmented before the capture point).
fn esp_sequences(pcap: &[u8]) -> std::collections::BTreeMap<u32, Vec<u32>> {
    let mut out: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    let u32at = |b: &[u8], i: usize, le: bool| -> Option<u32> {
        let w: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        })
    };
    let Some(magic) = u32at(pcap, 0, true) else {
        return out;
    };
    let le = magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d;
    let mut at = 24;
    while let Some(caplen) = u32at(pcap, at + 8, le) {
        let start = at + 16;
        let Some(frame) = pcap.get(start..start + caplen as usize) else {
            break;
        };
        at = start + caplen as usize;
        // Ethernet, IPv4, UDP 4500.
        if frame.get(12..14) != Some(&[0x08, 0x00]) {
            continue;
        }
        let ip = &frame[14..];
        let Some(&vihl) = ip.first() else { continue };
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ip.get(9) != Some(&17) {
            continue;
        }
        let Some(udp) = ip.get(ihl..) else { continue };
        if udp.get(2..4) != Some(&4500u16.to_be_bytes()) {
            continue;
        }
        let (Some(spi), Some(seq)) = (u32at(udp, 8, false), u32at(udp, 12, false)) else {
            continue;
        };
        if spi != 0 {
            out.entry(spi).or_default().push(seq);
        }
    }
    out
}

#[test]
fn one_sas_packets_leave_in_sequence_order_from_two_workers_in_both_steering_modes() {
    // Issue #15: two workers that read packets of one SA from two TUN queues must not interleave
    // their sequence numbers on the wire. Four UDP flows from two threads, each pinned to its
    // own CPU (so CPU-local steering hands them to different workers, and hash steering spreads
    // the flows over both queues), plus a ping, through one SA into a receiver that stands for
    // strongSwan (one worker reading one datagram at a time, a replay window of 32 packets):
    // the capture on the sender's veth must show the SA's numbers only increasing, and the
    // receiver must drop nothing as a replay. (A receiver with two workers and CPU-local
    // steering opens one SA's packets on both and can itself see them out of order; the data
    // plane's own replay window, 1024 packets by default, absorbs that.)
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for cpu_affinity in [false, true] {
        let pair = keyed_pair_window(
            "dpo",
            ("dpoa", "dpob"),
            cpu_affinity,
            |c| c.workers = 2,
            |c| {
                c.workers = 1;
                c.offload = false;
            },
            32,
        );
        let ns_a = &pair.ns_a;
        // Software segmentation before the capture point: one frame per ESP datagram.
        ns_a.exec(["ethtool", "-K", "dpoa", "tx-udp-segmentation", "off"])
            .expect("ethtool");
        let dir = tempfile::tempdir().expect("temp dir");
        let pcap = dir.path().join("order.pcap");
        let dump = ns_a
            .spawn_logged(
                [
                    "tcpdump",
                    "-i",
                    "dpoa",
                    "-n",
                    "-U",
                    "-s",
                    "64",
                    "-w",
                    pcap.to_str().unwrap(),
                    "udp port 4500 and src host 192.0.2.1",
                ],
                &pcap.with_extension("log"),
            )
            .expect("tcpdump");
        wait_for("tcpdump to listen", Duration::from_secs(10), || {
            std::fs::read_to_string(pcap.with_extension("log"))
                .ok()
                .filter(|l| l.contains("listening"))
                .map(|_| ())
        });
        let to: SocketAddr = "198.19.1.1:9".parse().unwrap();
        let pinger = ns_a
            .spawn(["ping", "-q", "-i", "0.01", "-c", "300", "198.19.1.1"])
            .expect("ping");
        let sent: u64 = std::thread::scope(|sc| {
            let threads: Vec<_> = (0..2usize)
                .map(|t| {
                    let socks: Vec<_> = (0..2u16)
                        .map(|f| {
                            ns_a.udp_bind(
                                format!("198.18.1.1:{}", 42000 + 2 * t as u16 + f)
                                    .parse()
                                    .unwrap(),
                            )
                            .expect("udp in A")
                        })
                        .collect();
                    sc.spawn(move || {
                        let mut one = nix::sched::CpuSet::new();
                        let _ = one.set(t % cpus);
                        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one);
                        let payload = [0x66u8; 400];
                        let mut n = 0u64;
                        let end = Instant::now() + Duration::from_secs(3);
                        while Instant::now() < end {
                            for s in &socks {
                                for _ in 0..32 {
                                    if s.send_to(&payload, to).is_ok() {
                                        n += 1;
                                    }
                                }
                            }
                        }
                        n
                    })
                })
                .collect();
            threads.into_iter().map(|h| h.join().expect("sender")).sum()
        });
        let _ = pinger.wait_timeout(Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(500));
        dump.stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(5))
            .expect("stop tcpdump");
        let seqs = esp_sequences(&std::fs::read(&pcap).expect("pcap"));
        let ours = seqs.get(&SPI_AB).cloned().unwrap_or_default();
        let backwards = ours.windows(2).filter(|w| w[1] <= w[0]).count();
        let a = pair.dp_a.counters();
        let b = pair.dp_b.counters();
        println!(
            "cpu_affinity {cpu_affinity}: {sent} UDP packets offered, {} ESP datagrams captured, {backwards} out of order; A: {} TUN packets, send_order_waits {}, steering changes {}; B replay drops {}",
            ours.len(),
            a.batching.tun_packets,
            a.batching.send_order_waits,
            a.batching.steering_changes,
            b.drops.get(DropReason::Replay)
        );
        assert!(
            ours.len() > 1000,
            "only {} ESP datagrams captured",
            ours.len()
        );
        assert_eq!(
            backwards,
            0,
            "sequence numbers went backwards on the wire (first at {:?})",
            ours.windows(2).position(|w| w[1] <= w[0])
        );
        assert_eq!(b.drops.get(DropReason::Replay), 0, "replay drops at B");
        // The sampled per-stage latency figures are collected on both paths.
        println!(
            "latency: A TUN->UDP {:?}; B UDP->TUN {:?}",
            a.latency_out, b.latency_in
        );
        for l in [a.latency_out, b.latency_in] {
            assert!(
                l.samples > 0 && l.p50_ns > 0 && l.p50_ns <= l.p99_ns && l.p99_ns <= l.max_ns * 2,
                "{l:?}"
            );
        }
    }
}
