//! Realistic replicas and a master/backup channel pair, shared by the integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ha::*;

pub const SECRET: [u8; 32] = *b"0123456789abcdef0123456789abcdef";
pub const MASTER: u32 = 0x0a00_0001;
pub const BACKUP: u32 = 0x0a00_0002;
pub const EPOCH: u64 = 1_767_225_600_000_000_000;

/// Key bytes that are easy to spot in output: 0xde 0xad 0xbe 0xef repeated, with a tag byte.
pub fn key(len: usize, tag: u8) -> Secret {
    let pattern = [0xde, 0xad, 0xbe, 0xef];
    let mut v: Vec<u8> = (0..len).map(|i| pattern[i % 4]).collect();
    if let Some(b) = v.last_mut() {
        *b = tag;
    }
    Secret::new(v)
}

pub fn spis(i: u32) -> IkeSpis {
    IkeSpis {
        initiator: 0x1111_0000_0000_0000 | u64::from(i),
        responder: 0x2222_0000_0000_0000 | u64::from(i),
    }
}

/// An IKE SA with AES-GCM-256, PRF-HMAC-SHA2-256, ECP-256 and (for odd `i`) a last response
/// in two RFC 7383 fragments; even `i` over IPv4 behind a NAT, odd over IPv6.
pub fn ike_sa(i: u32) -> IkeSaReplica {
    let (local, remote) = if i & 1 == 0 {
        (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 4)), 4500),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(20, 50, 1, (i % 250) as u8)), 4500),
        )
    } else {
        (
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 4)),
                500,
            ),
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2603, 0x1020, 0, 0, 0, 0, 0, i as u16)),
                500,
            ),
        )
    };
    let fragment = |len: usize, n: u8| (0..len).map(|j| (j as u8) ^ n).collect::<Vec<u8>>();
    IkeSaReplica {
        connection: format!("azure-westeurope-{i}"),
        initiator: i % 3 != 1,
        spis: spis(i),
        local,
        remote,
        nat: NatState {
            local_behind_nat: i & 1 == 0,
            peer_behind_nat: false,
            udp_encap: i & 1 == 0,
        },
        transforms: IkeTransforms {
            encr: 20,
            encr_key_bits: 256,
            prf: 5,
            integ: 0,
            dh: 19,
        },
        keys: IkeKeys {
            sk_d: key(32, 1),
            sk_ai: Secret::empty(),
            sk_ar: Secret::empty(),
            sk_ei: key(36, 2),
            sk_er: key(36, 3),
            sk_pi: key(32, 4),
            sk_pr: key(32, 5),
        },
        next_send_msg_id: 7 + i,
        next_recv_msg_id: 12 + i,
        last_response: (i % 2 == 1).then(|| SentMessage {
            message_id: 11 + i,
            fragments: vec![fragment(1232, 1), fragment(655, 2)],
        }),
        peer_fragmentation: true,
        initial_contact: i & 1 == 0,
        timers: IkeTimers {
            established_for_ms: 600_000 + u64::from(i),
            idle_for_ms: (i & 1 == 0).then_some(1_500),
            rekey_in_ms: Some(27_000_000),
            expire_in_ms: (i & 1 == 0).then_some(28_800_000),
        },
        // Links to the Child SAs `snapshot` gives it (a third, not replicated yet, for odd i).
        children: (0..2 + (i & 1))
            .map(|j| ChildLink {
                inbound_spi: child_spi(i, j),
                status: STATUSES[((i + j) % 4) as usize],
                rekey_in_ms: Some(3_000_000 - u64::from(j)),
                expire_in_ms: (j == 0).then_some(3_600_000),
                rekey_group: if j == 1 { 19 } else { 0 },
                reported: j != 2,
            })
            .collect(),
        queue: match i % 3 {
            0 => Vec::new(),
            1 => vec![QueuedWork::RekeyIke],
            _ => every_queued_work(i),
        },
        in_flight: (!i.is_multiple_of(4))
            .then(|| in_flight(REQUEST_KINDS[(i % 7) as usize], 6 + i)),
        flags: 0,
    }
}

pub const STATUSES: [ChildStatus; 4] = [
    ChildStatus::Active,
    ChildStatus::Rekeying,
    ChildStatus::Rekeyed,
    ChildStatus::Deleting,
];

pub const REQUEST_KINDS: [RequestKind; 7] = [
    RequestKind::Liveness,
    RequestKind::Dpd,
    RequestKind::DeleteChild {
        inbound_spi: 0x1001,
    },
    RequestKind::DeleteIke,
    RequestKind::RekeyChild {
        inbound_spi: 0x1002,
    },
    RequestKind::RekeyIke,
    RequestKind::CreateChild,
];

/// Our request in flight: two datagrams whose bytes look like keys (Debug must print neither).
pub fn in_flight(kind: RequestKind, message_id: u32) -> InFlight {
    InFlight {
        kind,
        request: SentMessage {
            message_id,
            fragments: vec![
                key(600, 0xaa).expose_secret().to_vec(),
                key(77, 0xbb).expose_secret().to_vec(),
            ],
        },
        transmissions: 1 + message_id % 3,
    }
}

/// One queued work item of every kind.
pub fn every_queued_work(i: u32) -> Vec<QueuedWork> {
    let ts = |a: u8, proto: u8| TrafficSelector {
        ip_proto: proto,
        start_port: 0,
        end_port: 65535,
        start: IpAddr::V4(Ipv4Addr::new(10, a, 0, 0)),
        end: IpAddr::V4(Ipv4Addr::new(10, a, 255, 255)),
    };
    vec![
        QueuedWork::RekeyChild {
            inbound_spi: child_spi(i, 0),
        },
        QueuedWork::DeleteChild {
            inbound_spi: child_spi(i, 1),
        },
        QueuedWork::RekeyIke,
        QueuedWork::DeleteIke,
        QueuedWork::CreateChild {
            local_ts: vec![ts(1, 0), ts(2, 17)],
            remote_ts: vec![TrafficSelector {
                ip_proto: 6,
                start_port: 22,
                end_port: 22,
                start: IpAddr::V6(Ipv6Addr::LOCALHOST),
                end: IpAddr::V6(Ipv6Addr::LOCALHOST),
            }],
            group: 31,
            retried: true,
        },
        QueuedWork::CreateChild {
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            group: 0,
            retried: false,
        },
    ]
}

/// An IKE SA with every optional part present: every Child SA status, every kind of queued
/// work, a request in flight of `kind`.
pub fn full_ike_sa(i: u32, kind: RequestKind) -> IkeSaReplica {
    let mut sa = ike_sa(i | 1);
    sa.spis = spis(i);
    sa.initial_contact = true;
    sa.timers.idle_for_ms = Some(12);
    sa.timers.expire_in_ms = Some(u64::MAX);
    sa.children = STATUSES
        .iter()
        .enumerate()
        .map(|(j, &status)| ChildLink {
            inbound_spi: child_spi(i, j as u32),
            status,
            rekey_in_ms: (j % 2 == 0).then_some(j as u64),
            expire_in_ms: (j < 2).then_some(u64::MAX - j as u64),
            rekey_group: j as u16 * 7,
            reported: j % 2 == 1,
        })
        .collect();
    sa.queue = every_queued_work(i);
    sa.in_flight = Some(in_flight(kind, sa.next_send_msg_id - 1));
    sa.flags = 0xa5a5_0001;
    sa
}

/// A Child SA of `ike`: AES-GCM-256 with ESN for even `spi`, AES-CBC-256 with
/// HMAC-SHA2-256-128 without ESN for odd; IPv4 and IPv6 selectors.
pub fn child_sa(ike: IkeSpis, spi: u32) -> ChildSaReplica {
    let gcm = spi & 1 == 0;
    let v4 = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
    ChildSaReplica {
        ike,
        inbound_spi: spi,
        outbound_spi: 0xc000_0000 | spi,
        udp_encap: true,
        encr: if gcm { 20 } else { 12 },
        encr_key_bits: 256,
        integ: if gcm { 0 } else { 12 },
        esn: gcm,
        dh: if gcm { 0 } else { 31 },
        initiator: spi.is_multiple_of(3),
        keys: if gcm {
            ChildKeys {
                encr_in: key(36, 10),
                integ_in: Secret::empty(),
                encr_out: key(36, 11),
                integ_out: Secret::empty(),
            }
        } else {
            ChildKeys {
                encr_in: key(32, 12),
                integ_in: key(32, 13),
                encr_out: key(32, 14),
                integ_out: key(32, 15),
            }
        },
        ts_local: vec![
            TrafficSelector {
                ip_proto: 0,
                start_port: 0,
                end_port: 65535,
                start: v4([10, 1, 0, 0]),
                end: v4([10, 1, 255, 255]),
            },
            TrafficSelector {
                ip_proto: 6,
                start_port: 443,
                end_port: 443,
                start: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)),
                end: IpAddr::V6(Ipv6Addr::new(
                    0xfd00, 0, 0, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
                )),
            },
        ],
        ts_remote: vec![TrafficSelector {
            ip_proto: 0,
            start_port: 0,
            end_port: 65535,
            start: v4([172, 16, 0, 0]),
            end: v4([172, 16, 255, 255]),
        }],
        lifetime: ChildLifetime {
            soft_bytes: None,
            hard_bytes: Some(1 << 40),
            soft_packets: None,
            hard_packets: Some(1 << 31),
        },
        counters: TrafficCounters {
            bytes_in: 123_456_789,
            bytes_out: 987_654_321,
            packets_in: 100_000 + u64::from(spi),
            packets_out: 200_000,
        },
    }
}

pub fn mark(spi: u32, outbound: u64, inbound: u64) -> SeqMark {
    SeqMark {
        inbound_spi: spi,
        outbound_seq: outbound,
        inbound_highest: inbound,
        replay_bitmap: vec![u64::MAX, 0x0f0f_0f0f_0f0f_0f0f],
    }
}

pub fn child_spi(ike: u32, j: u32) -> u32 {
    0x1000 + ike * 16 + j
}

/// `n_ike` IKE SAs with `children` Child SAs each, every Child SA marked.
pub fn snapshot(n_ike: u32, children: u32) -> Snapshot {
    let mut s = Snapshot::default();
    for i in 0..n_ike {
        s.ike.push(ike_sa(i));
        for j in 0..children {
            let spi = child_spi(i, j);
            s.child.push(child_sa(spis(i), spi));
            s.marks.push(mark(spi, 10_000 * u64::from(j + 1), 5_000));
        }
    }
    s
}

/// One message of every type.
pub fn every_message() -> Vec<Message> {
    vec![
        Message::Snapshot(snapshot(3, 2)),
        Message::Snapshot(Snapshot::default()),
        Message::UpsertIke(Box::new(ike_sa(1))),
        Message::UpsertIke(Box::new(ike_sa(2))),
        Message::UpsertIke(Box::new(full_ike_sa(
            4,
            RequestKind::RekeyChild { inbound_spi: 9 },
        ))),
        Message::UpsertChild(Box::new(child_sa(spis(1), 0x1234))),
        Message::UpsertChild(Box::new(child_sa(spis(1), 0x1235))),
        Message::RemoveIke(spis(9)),
        Message::RemoveChild {
            inbound_spi: 0xdead_0001,
        },
        Message::Marks(vec![mark(0x1234, 1 << 33, 77), mark(0x1235, 5, 0)]),
        Message::Marks(Vec::new()),
        Message::Heartbeat,
    ]
}

pub fn master_config() -> ChannelConfig {
    ChannelConfig::new(&SECRET, MASTER, BACKUP).unwrap()
}

pub fn backup_config() -> ChannelConfig {
    ChannelConfig::new(&SECRET, BACKUP, MASTER).unwrap()
}

/// The master's sender at [`EPOCH`] and the backup's receiver.
pub fn pair() -> (Sender, Receiver) {
    (
        Sender::new(&master_config(), EPOCH).unwrap(),
        Receiver::new(&backup_config()),
    )
}

/// A tiny deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Opens a message with ring, following the derivation in the `channel` module docs.
pub fn ring_open(sealed: &[u8], from: u32, to: u32) -> Vec<u8> {
    use ring::{aead, hkdf};
    let h = ha::Header::parse(sealed).unwrap();
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"hybridgw ha replication").extract(&SECRET);
    let (f, t, e) = (from.to_be_bytes(), to.to_be_bytes(), h.epoch.to_be_bytes());
    let info: [&[u8]; 4] = [b"hybridgw ha v1 aes-256-gcm", &f, &t, &e];
    let okm = prk.expand(&info, &aead::AES_256_GCM).unwrap();
    let key = aead::LessSafeKey::new(aead::UnboundKey::from(okm));
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&h.counter.to_be_bytes());
    let mut body = sealed[ha::limits::HEADER_LEN..].to_vec();
    let plain = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&sealed[..ha::limits::HEADER_LEN]),
            &mut body,
        )
        .unwrap();
    plain.to_vec()
}

/// Seals a body with ring (to build authentic messages our sender would never produce).
pub fn ring_seal(message_type: u8, counter: u64, body: &[u8]) -> Vec<u8> {
    use ring::{aead, hkdf};
    let mut out = Vec::new();
    out.extend_from_slice(b"HGHA");
    out.push(1);
    out.push(message_type);
    out.extend_from_slice(&MASTER.to_be_bytes());
    out.extend_from_slice(&EPOCH.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(&((body.len() + 16) as u32).to_be_bytes());
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"hybridgw ha replication").extract(&SECRET);
    let (f, t, e) = (
        MASTER.to_be_bytes(),
        BACKUP.to_be_bytes(),
        EPOCH.to_be_bytes(),
    );
    let info: [&[u8]; 4] = [b"hybridgw ha v1 aes-256-gcm", &f, &t, &e];
    let key = aead::LessSafeKey::new(aead::UnboundKey::from(
        prk.expand(&info, &aead::AES_256_GCM).unwrap(),
    ));
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    let mut sealed = body.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(out.clone()),
        &mut sealed,
    )
    .unwrap();
    out.extend_from_slice(&sealed);
    out
}
