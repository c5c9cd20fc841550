//! Fuzz target for HA replication (`ha` crate): the sealed channel's receiver and the plaintext
//! body decoder, then the backup's table and its takeover view.
//!
//! The first input byte picks a mode, the rest is the payload:
//! * `sel & 0x80 != 0`: the payload is a received message. A fresh receiver first accepts a
//!   genuine message (epoch E, counter 0). If `sel & 0x40`, a valid header (magic, version,
//!   type `sel & 7`, the master's id, epoch E, counter from the payload, the right length) is
//!   written over the payload's first 30 bytes, so the input reaches the tag check. Every input
//!   must be refused (nobody here can forge a tag), counted once, and leave the receiver where
//!   it was: the genuine message with counter 1 is accepted afterwards with nothing missed.
//! * otherwise: the payload is a plaintext body of type `MessageType::ALL[sel % 7]` for
//!   `ha::decode_body`. What decodes must re-encode to the same bytes (the encoding is
//!   canonical), seal and open to the same message, and apply to a table holding a small
//!   snapshot; a refused apply changes no SA. The takeover view (interval from `sel` and the
//!   payload's last bytes, taken some milliseconds after the apply) never starts a Child SA at
//!   or below its mark, nor past its sequence space, and ages every IKE SA by the time since
//!   its apply: its timers and its Child SA links' only ever move the way time does.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ha::limits::HEADER_LEN;
use ha::*;
use libfuzzer_sys::fuzz_target;

const MASTER: u32 = 1;
const BACKUP: u32 = 2;
const EPOCH: u64 = 1_767_225_600_000_000_000;

struct World {
    master: ChannelConfig,
    backup: ChannelConfig,
    snapshot: Message,
    first: Vec<u8>,
    second: Vec<u8>,
}

fn ike(i: u64) -> IkeSaReplica {
    IkeSaReplica {
        connection: format!("azure-{i}"),
        initiator: i == 0,
        spis: IkeSpis {
            initiator: 0x100 + i,
            responder: 0x200 + i,
        },
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 4)), 4500),
        remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(20, 1, 2, 3)), 4500),
        nat: NatState::default(),
        transforms: IkeTransforms {
            encr: 20,
            encr_key_bits: 256,
            prf: 5,
            integ: 0,
            dh: 19,
        },
        keys: IkeKeys {
            sk_d: Secret::new(vec![1; 32]),
            sk_ei: Secret::new(vec![2; 36]),
            sk_er: Secret::new(vec![3; 36]),
            sk_pi: Secret::new(vec![4; 32]),
            sk_pr: Secret::new(vec![5; 32]),
            ..IkeKeys::default()
        },
        next_send_msg_id: 3,
        next_recv_msg_id: 4,
        last_response: Some(SentMessage {
            message_id: 3,
            fragments: vec![vec![0x2a; 80]],
        }),
        peer_fragmentation: true,
        initial_contact: i == 0,
        timers: IkeTimers {
            established_for_ms: 60_000,
            idle_for_ms: Some(900),
            rekey_in_ms: Some(24_000_000),
            expire_in_ms: None,
        },
        children: [(0x10, ChildStatus::Active), (0x11, ChildStatus::Rekeyed)]
            .into_iter()
            .map(|(spi, status)| ChildLink {
                inbound_spi: spi + i as u32 * 2,
                status,
                rekey_in_ms: Some(3_000_000),
                expire_in_ms: Some(3_600_000),
                rekey_group: 0,
                reported: true,
            })
            .collect(),
        queue: vec![QueuedWork::DeleteChild { inbound_spi: 0x11 }],
        in_flight: (i == 1).then(|| InFlight {
            kind: RequestKind::Dpd,
            request: SentMessage {
                message_id: 2,
                fragments: vec![vec![0x2b; 80]],
            },
            transmissions: 1,
        }),
        flags: 0,
    }
}

fn child(owner: u64, spi: u32, esn: bool) -> ChildSaReplica {
    let any = TrafficSelector {
        ip_proto: 0,
        start_port: 0,
        end_port: 65535,
        start: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        end: IpAddr::V4(Ipv4Addr::BROADCAST),
    };
    ChildSaReplica {
        ike: ike(owner).spis,
        inbound_spi: spi,
        outbound_spi: spi | 0xc000_0000,
        udp_encap: true,
        encr: 20,
        encr_key_bits: 256,
        integ: 0,
        esn,
        dh: 0,
        initiator: true,
        keys: ChildKeys {
            encr_in: Secret::new(vec![6; 36]),
            encr_out: Secret::new(vec![7; 36]),
            ..ChildKeys::default()
        },
        ts_local: vec![any],
        ts_remote: vec![any],
        lifetime: ChildLifetime::default(),
        counters: TrafficCounters::default(),
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let master = ChannelConfig::new(&[0x5a; 32], MASTER, BACKUP).unwrap();
        let backup = ChannelConfig::new(&[0x5a; 32], BACKUP, MASTER).unwrap();
        let snapshot = Message::Snapshot(Snapshot {
            ike: vec![ike(0), ike(1)],
            child: vec![
                child(0, 0x10, true),
                child(0, 0x11, false),
                child(1, 0x12, false),
            ],
            marks: [
                (0x10, u64::from(u32::MAX) - 3),
                (0x11, 1000),
                (0x12, u64::from(u32::MAX)),
            ]
            .into_iter()
            .map(|(spi, seq)| SeqMark {
                inbound_spi: spi,
                outbound_seq: seq,
                inbound_highest: 500,
                replay_bitmap: vec![u64::MAX],
            })
            .collect(),
        });
        let mut tx = Sender::new(&master, EPOCH).unwrap();
        let first = tx.seal(&Message::Heartbeat).unwrap();
        let second = tx
            .seal(&Message::RemoveChild { inbound_spi: 0x11 })
            .unwrap();
        World {
            master,
            backup,
            snapshot,
            first,
            second,
        }
    })
}

fn received(w: &World, sel: u8, payload: &[u8]) {
    let mut rx = Receiver::new(&w.backup);
    rx.open(&w.first).unwrap();
    let mut msg = payload.to_vec();
    if sel & 0x40 != 0 && msg.len() >= HEADER_LEN + 16 {
        let counter = u64::from_be_bytes(msg[18..26].try_into().unwrap());
        let header = Header {
            message_type: MessageType::ALL[usize::from(sel & 7) % MessageType::ALL.len()],
            sender_id: MASTER,
            epoch: EPOCH,
            counter: counter.max(1),
            length: (msg.len() - HEADER_LEN) as u32,
        };
        msg[..HEADER_LEN].copy_from_slice(&header.encode());
    }
    if msg == w.second {
        // The genuine message (a corpus could hold it): not a forgery.
        return;
    }
    let before = (rx.position(), rx.counters().clone());
    let refusal = rx
        .open(&msg)
        .expect_err("accepted a message nobody could seal");
    assert_eq!(rx.position(), before.0);
    assert_eq!(rx.counters().refused_total(), before.1.refused_total() + 1);
    assert_eq!(
        rx.counters().refused(refusal.kind()),
        before.1.refused(refusal.kind()) + 1
    );
    let _ = refusal.to_string();
    let next = rx.open(&w.second).expect("a refusal moved the receiver");
    assert_eq!((next.counter, next.missed), (1, 0));
}

type State = (Vec<IkeSaReplica>, Vec<(ChildSaReplica, SeqMark)>);

fn state(t: &Replica) -> State {
    (
        t.ike_sas().cloned().collect(),
        t.child_sas().map(|(c, m)| (c.clone(), m.clone())).collect(),
    )
}

fn body(w: &World, sel: u8, payload: &[u8]) {
    let t = MessageType::ALL[usize::from(sel) % MessageType::ALL.len()];
    let msg = match decode_body(t, payload) {
        Ok(m) => m,
        Err(e) => {
            assert!(e.offset <= payload.len());
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(msg.message_type(), t);
    assert_eq!(
        &encode_body(&msg).unwrap()[..],
        payload,
        "encoding not canonical"
    );

    let now = Instant::now();
    let mut tx = Sender::new(&w.master, EPOCH).unwrap();
    let mut rx = Receiver::new(&w.backup);
    let mut table = Replica::new();
    table
        .apply(now, rx.open(&tx.seal(&w.snapshot).unwrap()).unwrap())
        .unwrap();
    let sealed = tx.seal(&msg).expect("what decodes must seal");
    let got = rx.open(&sealed).expect("what seals must open");
    assert_eq!(got.message, msg);
    let before = state(&table);
    if table.apply(now, got).is_err() {
        assert_eq!(state(&table), before, "a refused apply changed the table");
        assert!(!table.in_sync());
    }

    let mut tail = [0u8; 8];
    let n = payload.len().min(8);
    tail[8 - n..].copy_from_slice(&payload[payload.len() - n..]);
    let interval = u64::from_be_bytes(tail) >> (sel & 63);
    let later = now + Duration::from_millis(u64::from(tail[0]) << (sel & 31));
    let view = table.takeover(later, interval);
    assert_eq!(view.ike.len(), table.ike_sas().count());
    for i in &view.ike {
        // Every IKE SA was applied at `now`.
        assert_eq!(table.ike_sa_updated_at(i.sa.spis), Some(now));
        assert_eq!(i.age, later - now);
        let (t, s) = (i.timers(), i.sa.timers);
        assert!(t.established_for_ms >= s.established_for_ms);
        assert_eq!(t.idle_for_ms.is_some(), s.idle_for_ms.is_some());
        assert!(t.rekey_in_ms <= s.rekey_in_ms && t.expire_in_ms <= s.expire_in_ms);
        assert_eq!(t.rekey_in_ms.is_some(), s.rekey_in_ms.is_some());
        assert_eq!(i.children().count(), i.sa.children.len());
        for (aged, link) in i.children().zip(&i.sa.children) {
            assert_eq!(aged.inbound_spi, link.inbound_spi);
            assert!(aged.rekey_in_ms <= link.rekey_in_ms);
            assert!(aged.expire_in_ms <= link.expire_in_ms);
        }
    }
    assert_eq!(view.child.len(), table.child_sas().count());
    for c in &view.child {
        let (_, mark) = table.child_sa(c.sa.inbound_spi).unwrap();
        let max = if c.sa.esn {
            ha::limits::ESN_MAX_SEQ
        } else {
            u64::from(u32::MAX)
        };
        match c.outbound {
            Outbound::Continue { next_seq } => {
                assert!(next_seq > mark.outbound_seq && next_seq <= max);
                assert_eq!(next_seq - mark.outbound_seq - 1, interval);
            }
            Outbound::Rekey => {
                assert!(u128::from(mark.outbound_seq) + u128::from(interval) + 1 > u128::from(max))
            }
        }
    }
    let _ = format!("{view:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let w = world();
    if sel & 0x80 != 0 {
        received(w, sel, payload);
    } else {
        body(w, sel, payload);
    }
});
