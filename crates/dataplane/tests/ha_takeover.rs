//! A standby appliance takes over the same SAs (issue #14): the master's inbound window and
//! outbound counter are read from its data plane (counters snapshot and `inbound_window`),
//! the backup installs the same SAs with the window restored and the counter started beyond the
//! mark plus the replication interval (RFC 4303 §3.3.3: never reuse a number; §3.4.3: the
//! peer's anti-replay window takes a forward jump), and the tunnel with the unchanged peer stays
//! up: the peer accepts the jumped numbers, the backup accepts the peer's continuing numbers and
//! refuses replays of what the master had received.
//!
//! Runs the data plane's own table code and per-packet path (`dataplane::testing::Node`)
//! without devices or sockets, so it needs no root.

use std::net::SocketAddr;

use dataplane::testing::Node;
use dataplane::{Direction, DropReason, OutboundRoute, TunnelId};
use esp::{Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, SaConfig};

/// The address the HA pair shares.
const VIP: &str = "192.0.2.1:4500";
const PEER: &str = "198.51.100.9:4500";
/// Appliance -> peer (the peer's inbound SPI) and peer -> appliance (ours).
const SPI_OUT: u32 = 0xc000_0001;
const SPI_IN: u32 = 0xa000_0001;
/// Marks are sent every `INTERVAL` packets.
const INTERVAL: u64 = 64;
const T: TunnelId = TunnelId(0);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

fn sa(spi: u32, esn: bool, fill: u8) -> SaConfig {
    let mut c = SaConfig::new(
        spi,
        Cipher::AesGcm16_256,
        Integrity::None,
        KeyMaterial::from_slice(&[fill; 36]),
        KeyMaterial::empty(),
    );
    c.esn = esn;
    c
}

/// An IPv4 UDP packet 198.18.1.2 -> 198.19.1.2 (or back) carrying `n` in its payload.
fn inner(n: u32, towards_peer: bool) -> Vec<u8> {
    let len = 120usize;
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    let (src, dst) = ([198, 18, 1, 2], [198, 19, 1, 2]);
    let (src, dst) = if towards_peer { (src, dst) } else { (dst, src) };
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = dataplane::wire::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&4500u16.to_be_bytes());
    p[22..24].copy_from_slice(&4501u16.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    p[28..32].copy_from_slice(&n.to_be_bytes());
    p
}

/// The sequence number (low 32 bits) of an ESP packet.
fn seq_low(esp: &[u8]) -> u32 {
    u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]])
}

/// `n` packets from `from` (sealed, to `to`'s address); returns them with their payload.
fn sealed(from: &mut Node, n: u32, first: u32, towards_peer: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    (first..first + n)
        .map(|i| {
            let p = inner(i, towards_peer);
            let (esp, _) = from.send(&p).expect("sealed");
            (esp, p)
        })
        .collect()
}

/// The appliance side of the tunnel (master or backup), both SAs installed as given.
fn appliance(inbound: InboundSa, outbound: OutboundSa) -> Node {
    let n = Node::new(addr(VIP));
    n.install_inbound(T, inbound, None).unwrap();
    let replaced = n
        .install_outbound(T, OutboundRoute::Any, outbound, addr(PEER))
        .unwrap();
    assert_eq!(replaced, None);
    n
}

fn takeover(esn: bool) {
    let what = if esn { "ESN" } else { "32-bit" };
    // With ESN both directions are long-lived and cross 2^32 around the mark.
    let (peer_start, our_start) = if esn {
        ((1u64 << 32) - 300, (1u64 << 32) - 200)
    } else {
        (1, 1)
    };
    let peer = {
        let n = Node::new(addr(PEER));
        let inb = InboundSa::new(&sa(SPI_OUT, esn, 1))
            .unwrap()
            .with_highest_seq(our_start - 1);
        let out = OutboundSa::new(&sa(SPI_IN, esn, 2))
            .unwrap()
            .with_next_seq(peer_start);
        n.install_inbound(T, inb, None).unwrap();
        n.install_outbound(T, OutboundRoute::Any, out, addr(VIP))
            .unwrap();
        n
    };
    let mut peer = peer;
    let mut master = appliance(
        InboundSa::new(&sa(SPI_IN, esn, 2))
            .unwrap()
            .with_highest_seq(peer_start - 1),
        OutboundSa::new(&sa(SPI_OUT, esn, 1))
            .unwrap()
            .with_next_seq(our_start),
    );

    // Before the mark: 500 each way. The master loses every 9th packet from the peer and gets
    // some late (reordered by 30).
    for (esp, p) in sealed(&mut master, 500, 0, true) {
        assert_eq!(peer.receive(&esp, addr(VIP)), Some(p), "{what}");
    }
    let from_peer = sealed(&mut peer, 500, 0, false);
    let mut order: Vec<usize> = (0..500).filter(|i| i % 9 != 4).collect();
    for i in (0..order.len() - 30).step_by(11) {
        order.swap(i, i + 30);
    }
    for &i in &order {
        let (esp, p) = &from_peer[i];
        assert_eq!(master.receive(esp, addr(PEER)).as_ref(), Some(p), "{what}");
    }
    let lost: Vec<usize> = (0..500).filter(|i| i % 9 == 4).collect();

    // The mark: read from the counters snapshot and the window, no lock on the packet path.
    let snap = master.counters();
    let out_next = snap.seq_of(T, SPI_OUT, Direction::Outbound).unwrap();
    assert_eq!(out_next, our_start + 500, "{what}");
    let window = master.inbound_window(T, SPI_IN).unwrap();
    assert_eq!(window.highest, peer_start + 498, "{what}: 499 was lost");
    assert_eq!(
        snap.seq_of(T, SPI_IN, Direction::Inbound),
        Some(window.highest),
        "{what}"
    );
    assert_eq!(
        window.bitmap.len(),
        16,
        "{what}: the default window of 1024"
    );
    assert_eq!(master.inbound_window(TunnelId(1), SPI_IN), None);
    assert_eq!(
        master.inbound_window(T, SPI_OUT),
        None,
        "not an inbound SPI"
    );
    for k in 0..499u64 {
        let i = 498 - k as usize;
        assert_eq!(window.received(k), !lost.contains(&i), "{what}: packet {i}");
    }

    // After the mark, fewer than the interval each way; then the master fails. The backup
    // never hears of these.
    for (esp, p) in sealed(&mut master, 40, 500, true) {
        assert_eq!(peer.receive(&esp, addr(VIP)), Some(p), "{what}");
    }
    for (esp, p) in sealed(&mut peer, 40, 500, false) {
        assert_eq!(master.receive(&esp, addr(PEER)), Some(p), "{what}");
    }
    drop(master);

    // The backup: the same SAs, the counter beyond the mark plus the interval, the window as
    // marked. Installing keeps both.
    let start = out_next + INTERVAL;
    let mut backup = appliance(
        InboundSa::new(&sa(SPI_IN, esn, 2))
            .unwrap()
            .with_window(&window),
        OutboundSa::new(&sa(SPI_OUT, esn, 1))
            .unwrap()
            .with_next_seq(start),
    );
    let snap = backup.counters();
    assert_eq!(snap.seq_of(T, SPI_OUT, Direction::Outbound), Some(start));
    assert_eq!(
        snap.seq_of(T, SPI_IN, Direction::Inbound),
        Some(window.highest)
    );
    assert_eq!(backup.inbound_window(T, SPI_IN).as_ref(), Some(&window));
    assert_eq!(snap.seqs.len(), snap.sas.len());

    // Replays of what the master had received before the mark: refused.
    for &i in &order {
        assert_eq!(backup.receive(&from_peer[i].0, addr(PEER)), None, "{what}");
    }
    let replays = order.len() as u64;
    assert_eq!(backup.counters().drops.get(DropReason::Replay), replays);

    // The peer's unchanged inbound SA takes the backup's jump forward.
    let jumped = sealed(&mut backup, 100, 1000, true);
    assert_eq!(
        u64::from(seq_low(&jumped[0].0)),
        start & 0xffff_ffff,
        "{what}"
    );
    for (esp, p) in jumped {
        assert_eq!(peer.receive(&esp, addr(VIP)), Some(p), "{what}");
    }
    let ps = peer.counters();
    assert_eq!(ps.drops.total(), 0, "{what}: the peer refused nothing");
    assert_eq!(
        ps.seq_of(T, SPI_OUT, Direction::Inbound),
        Some(start + 99),
        "{what}"
    );

    // The peer goes on with its own numbers: the backup accepts them, and the packets the
    // master never got (still inside the window) once each.
    for (esp, p) in sealed(&mut peer, 100, 540, false) {
        assert_eq!(backup.receive(&esp, addr(PEER)), Some(p), "{what}");
    }
    for &i in &lost {
        let (esp, p) = &from_peer[i];
        assert_eq!(
            backup.receive(esp, addr(PEER)).as_ref(),
            Some(p),
            "{what}: late {i}"
        );
        assert_eq!(
            backup.receive(esp, addr(PEER)),
            None,
            "{what}: late {i} again"
        );
    }
    // And still refuses the old ones.
    for (esp, _) in &from_peer {
        assert_eq!(backup.receive(esp, addr(PEER)), None, "{what}");
    }
    let snap = backup.counters();
    assert_eq!(
        snap.drops.get(DropReason::Replay),
        replays + lost.len() as u64 + 500,
        "{what}"
    );
    assert_eq!(snap.drops.total(), snap.drops.get(DropReason::Replay));
    assert_eq!(
        snap.seq_of(T, SPI_IN, Direction::Inbound),
        Some(peer_start + 639),
        "{what}"
    );
    assert_eq!(
        snap.seq_of(T, SPI_OUT, Direction::Outbound),
        Some(start + 100)
    );
    let stats = snap.sa_of(T, SPI_IN, Direction::Inbound).unwrap();
    assert_eq!(stats.packets, 100 + lost.len() as u64, "{what}");
}

#[test]
fn backup_takes_over_the_sas_with_32_bit_sequence_numbers() {
    takeover(false);
}

#[test]
fn backup_takes_over_the_sas_with_esn_across_the_32_bit_wrap() {
    takeover(true);
}

/// Installing does not reset what the SA was built with, and removing and reinstalling on the
/// same node (a backup that became master, then backup again) starts from the new state.
#[test]
fn install_keeps_a_restored_window_and_counter() {
    let node = Node::new(addr(VIP));
    let window = esp::WindowState {
        highest: 5000,
        bitmap: vec![0b1011, 0, 1 << 63],
    };
    let inb = InboundSa::new(&sa(SPI_IN, false, 2))
        .unwrap()
        .with_window(&window);
    node.install_inbound(T, inb, None).unwrap();
    let out = OutboundSa::new(&sa(SPI_OUT, false, 1))
        .unwrap()
        .with_next_seq(77_777);
    node.install_outbound(T, OutboundRoute::Any, out, addr(PEER))
        .unwrap();
    let mut expect = window.clone();
    expect.bitmap.resize(16, 0);
    assert_eq!(node.inbound_window(T, SPI_IN), Some(expect));
    let snap = node.counters();
    assert_eq!(snap.seq_of(T, SPI_OUT, Direction::Outbound), Some(77_777));
    assert_eq!(snap.seq_of(T, SPI_IN, Direction::Inbound), Some(5000));
    assert_eq!(snap.seq_of(TunnelId(1), SPI_IN, Direction::Inbound), None);
    assert_eq!(snap.seq_of(T, SPI_IN, Direction::Outbound), None);
    // A newer mark: remove and install again.
    assert_eq!(node.remove(T, Direction::Inbound, SPI_IN), 1);
    assert_eq!(node.inbound_window(T, SPI_IN), None);
    let newer = esp::WindowState {
        highest: 9000,
        bitmap: vec![1; 16],
    };
    let inb = InboundSa::new(&sa(SPI_IN, false, 2))
        .unwrap()
        .with_window(&newer);
    node.install_inbound(T, inb, None).unwrap();
    assert_eq!(node.inbound_window(T, SPI_IN), Some(newer));
    let out = OutboundSa::new(&sa(SPI_OUT, false, 1))
        .unwrap()
        .with_next_seq(90_000);
    assert_eq!(
        node.install_outbound(T, OutboundRoute::Any, out, addr(PEER))
            .unwrap(),
        Some(SPI_OUT)
    );
    assert_eq!(
        node.counters().seq_of(T, SPI_OUT, Direction::Outbound),
        Some(90_000)
    );
}
