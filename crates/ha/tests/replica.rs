//! The backup's table: snapshots, upserts, removals, marks, sync state, lag, and the takeover
//! arithmetic.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ha::limits::*;
use ha::*;

/// A master and a backup table fed through the real channel.
struct Pair {
    tx: Sender,
    rx: Receiver,
    table: Replica,
    now: Instant,
}

impl Pair {
    fn new() -> Pair {
        let (tx, rx) = pair();
        Pair {
            tx,
            rx,
            table: Replica::new(),
            now: Instant::now(),
        }
    }
    fn send(&mut self, m: Message) -> Result<(), ApplyError> {
        let sealed = self.tx.seal(&m).unwrap();
        self.table.apply(self.now, self.rx.open(&sealed).unwrap())
    }
    fn lose(&mut self, m: Message) {
        self.tx.seal(&m).unwrap();
    }
    fn state(&self) -> (Vec<IkeSaReplica>, Vec<(ChildSaReplica, SeqMark)>) {
        (
            self.table.ike_sas().cloned().collect(),
            self.table
                .child_sas()
                .map(|(c, m)| (c.clone(), m.clone()))
                .collect(),
        )
    }
}

#[test]
fn snapshot_replaces_everything() {
    let mut p = Pair::new();
    assert!(!p.table.in_sync());
    p.send(Message::Snapshot(snapshot(3, 2))).unwrap();
    assert!(p.table.in_sync());
    assert_eq!(
        (p.table.ike_sas().count(), p.table.child_sas().count()),
        (3, 6)
    );
    let (c, m) = p.table.child_sa(child_spi(1, 1)).unwrap();
    assert_eq!(*c, child_sa(spis(1), child_spi(1, 1)));
    assert_eq!(m.outbound_seq, 20_000);
    p.send(Message::UpsertIke(Box::new(ike_sa(50)))).unwrap();
    p.send(Message::Snapshot(snapshot(1, 1))).unwrap();
    assert_eq!(
        (p.table.ike_sas().count(), p.table.child_sas().count()),
        (1, 1)
    );
    assert!(p.table.ike_sa(spis(50)).is_none());
    assert_eq!(p.table.counters().snapshots, 2);
}

#[test]
fn upserts_and_removals() {
    let mut p = Pair::new();
    p.send(Message::Snapshot(Snapshot::default())).unwrap();
    p.send(Message::UpsertIke(Box::new(ike_sa(1)))).unwrap();
    p.send(Message::UpsertIke(Box::new(ike_sa(2)))).unwrap();
    for spi in [10, 11] {
        p.send(Message::UpsertChild(Box::new(child_sa(spis(1), spi))))
            .unwrap();
    }
    p.send(Message::UpsertChild(Box::new(child_sa(spis(2), 20))))
        .unwrap();
    // An update replaces the SA in place.
    let mut changed = ike_sa(1);
    changed.next_send_msg_id = 99;
    p.send(Message::UpsertIke(Box::new(changed.clone())))
        .unwrap();
    assert_eq!(p.table.ike_sa(spis(1)), Some(&changed));
    p.send(Message::RemoveChild { inbound_spi: 11 }).unwrap();
    assert!(p.table.child_sa(11).is_none());
    // Removing an IKE SA removes its remaining Child SAs, not the others'.
    p.send(Message::RemoveIke(spis(1))).unwrap();
    assert!(p.table.ike_sa(spis(1)).is_none());
    assert!(p.table.child_sa(10).is_none());
    assert!(p.table.child_sa(20).is_some());
    assert!(p.table.in_sync());
    let c = p.table.counters();
    assert_eq!((c.upserts, c.removes, c.refused), (6, 2, 0));
}

#[test]
fn ike_rekey_moves_child_sas_first() {
    let mut p = Pair::new();
    p.send(Message::Snapshot(snapshot(1, 2))).unwrap();
    p.send(Message::Marks(vec![mark(child_spi(0, 0), 777_777, 9)]))
        .unwrap();
    let mut new = ike_sa(0);
    new.spis = spis(100);
    p.send(Message::UpsertIke(Box::new(new))).unwrap();
    for j in 0..2 {
        let c = child_sa(spis(100), child_spi(0, j));
        p.send(Message::UpsertChild(Box::new(c))).unwrap();
    }
    p.send(Message::RemoveIke(spis(0))).unwrap();
    assert_eq!(p.table.child_sas().count(), 2);
    let (c, m) = p.table.child_sa(child_spi(0, 0)).unwrap();
    assert_eq!(c.ike, spis(100));
    assert_eq!(m.outbound_seq, 777_777, "an upsert keeps the mark");
}

#[test]
fn messages_that_do_not_apply_change_no_sa() {
    let mut p = Pair::new();
    p.send(Message::Snapshot(snapshot(2, 1))).unwrap();
    let before = p.state();
    let cases = [
        (
            Message::UpsertChild(Box::new(child_sa(spis(7), 0x99))),
            ApplyError::UnknownIkeSa(spis(7)),
        ),
        (
            Message::RemoveIke(spis(7)),
            ApplyError::UnknownIkeSa(spis(7)),
        ),
        (
            Message::RemoveChild { inbound_spi: 0x99 },
            ApplyError::UnknownChildSa(0x99),
        ),
    ];
    for (m, err) in cases {
        assert_eq!(p.send(m), Err(err));
        assert_eq!(p.state(), before);
        assert!(!p.table.in_sync(), "master and backup disagree");
    }
    assert_eq!(p.table.counters().refused, 3);
    p.send(Message::Snapshot(snapshot(2, 1))).unwrap();
    assert!(p.table.in_sync());
}

#[test]
fn marks_only_move_forward() {
    let mut p = Pair::new();
    p.send(Message::Snapshot(snapshot(1, 1))).unwrap();
    let spi = child_spi(0, 0);
    let get = |p: &Pair| p.table.child_sa(spi).unwrap().1.clone();
    assert_eq!(get(&p).outbound_seq, 10_000);
    p.send(Message::Marks(vec![mark(spi, 50_000, 6_000)]))
        .unwrap();
    assert_eq!(
        (get(&p).outbound_seq, get(&p).inbound_highest),
        (50_000, 6_000)
    );
    // Lower marks (a data plane sample that raced a newer one) do not move them back.
    let mut low = mark(spi, 40_000, 5_999);
    low.replay_bitmap = vec![1];
    p.send(Message::Marks(vec![low])).unwrap();
    let m = get(&p);
    assert_eq!((m.outbound_seq, m.inbound_highest), (50_000, 6_000));
    assert_eq!(m.replay_bitmap, mark(spi, 0, 0).replay_bitmap);
    // The same inbound top with a newer bitmap replaces it.
    let mut same = mark(spi, 50_001, 6_000);
    same.replay_bitmap = vec![3];
    p.send(Message::Marks(vec![same])).unwrap();
    assert_eq!(get(&p).replay_bitmap, vec![3]);
    assert_eq!(get(&p).outbound_seq, 50_001);
}

#[test]
fn marks_for_unknown_child_sas_are_dropped_and_counted() {
    let mut p = Pair::new();
    p.send(Message::Snapshot(snapshot(1, 1))).unwrap();
    let known = child_spi(0, 0);
    p.send(Message::Marks(vec![
        mark(0x7777, 1, 1),
        mark(known, 99_999, 1),
        mark(0x7778, 1, 1),
    ]))
    .unwrap();
    assert_eq!(p.table.counters().unknown_marks, 2);
    assert!(p.table.child_sa(0x7777).is_none());
    assert_eq!(p.table.child_sa(known).unwrap().1.outbound_seq, 99_999);
    assert!(
        p.table.in_sync(),
        "a mark racing a removal is not a divergence"
    );
    // A later SA with that SPI starts from its own marks, not from the dropped one.
    p.send(Message::UpsertChild(Box::new(child_sa(spis(0), 0x7777))))
        .unwrap();
    assert_eq!(p.table.child_sa(0x7777).unwrap().1.outbound_seq, 0);
    // Removing an SA drops its mark with it.
    p.send(Message::RemoveChild { inbound_spi: known }).unwrap();
    p.send(Message::UpsertChild(Box::new(child_sa(spis(0), known))))
        .unwrap();
    assert_eq!(p.table.child_sa(known).unwrap().1.outbound_seq, 0);
}

#[test]
fn snapshots_must_be_consistent() {
    let (mut tx, _) = pair();
    let refuse = |tx: &mut Sender, s: Snapshot| match tx.seal(&Message::Snapshot(s)) {
        Err(SealError::Invalid(p)) => p,
        other => panic!("{other:?}"),
    };
    let mut s = snapshot(2, 1);
    s.ike.push(ike_sa(1));
    assert!(matches!(refuse(&mut tx, s), Problem::Duplicate { .. }));
    let mut s = snapshot(2, 1);
    s.child.push(child_sa(spis(0), child_spi(0, 0)));
    assert!(matches!(refuse(&mut tx, s), Problem::Duplicate { .. }));
    let mut s = snapshot(2, 1);
    s.child.push(child_sa(spis(5), 0x5555));
    assert!(matches!(refuse(&mut tx, s), Problem::Dangling { .. }));
    let mut s = snapshot(2, 1);
    s.marks.push(mark(0x5555, 0, 0));
    assert!(matches!(refuse(&mut tx, s), Problem::Dangling { .. }));
    let mut s = snapshot(2, 1);
    s.marks.push(s.marks[0].clone());
    assert!(matches!(refuse(&mut tx, s), Problem::Duplicate { .. }));
    // Every Child SA needs a mark: a snapshot never makes the backup forget one.
    let mut s = snapshot(2, 1);
    s.marks.pop();
    assert!(matches!(refuse(&mut tx, s), Problem::Missing { .. }));
    assert_eq!(tx.next_counter(), 0);
}

#[test]
fn sync_is_lost_on_a_gap_or_a_new_epoch_and_regained_by_a_snapshot() {
    let mut p = Pair::new();
    p.send(Message::Heartbeat).unwrap();
    assert!(!p.table.in_sync(), "no snapshot yet");
    p.send(Message::Snapshot(snapshot(1, 1))).unwrap();
    assert!(p.table.in_sync());
    p.lose(Message::UpsertIke(Box::new(ike_sa(5))));
    p.send(Message::Heartbeat).unwrap();
    assert!(!p.table.in_sync(), "a message was missed");
    p.send(Message::Heartbeat).unwrap();
    assert!(!p.table.in_sync());
    p.send(Message::Snapshot(snapshot(1, 1))).unwrap();
    assert!(p.table.in_sync());
    // The master restarts: its first message is not a snapshot.
    p.tx = Sender::new(&master_config(), EPOCH + 1).unwrap();
    p.send(Message::UpsertIke(Box::new(ike_sa(6)))).unwrap();
    assert!(!p.table.in_sync());
    p.send(Message::Snapshot(snapshot(1, 1))).unwrap();
    assert!(p.table.in_sync());
    assert!(p.table.takeover(p.now, 0).in_sync);
}

#[test]
fn lag_is_the_time_since_the_last_message() {
    let mut p = Pair::new();
    assert_eq!(p.table.lag(p.now), None);
    let t0 = p.now;
    p.send(Message::Heartbeat).unwrap();
    assert_eq!(p.table.last_message_at(), Some(t0));
    assert_eq!(
        p.table.lag(t0 + Duration::from_millis(1500)),
        Some(Duration::from_millis(1500))
    );
    // A clock that went backwards gives zero, not a panic.
    assert_eq!(p.table.lag(t0), Some(Duration::ZERO));
    p.now = t0 + Duration::from_secs(3);
    p.send(Message::Heartbeat).unwrap();
    assert_eq!(
        p.table.lag(t0 + Duration::from_secs(4)),
        Some(Duration::from_secs(1))
    );
    assert_eq!(p.table.counters().heartbeats, 2);
}

#[test]
fn outbound_start_arithmetic() {
    let go = |next_seq| Outbound::Continue { next_seq };
    let max32 = u64::from(u32::MAX);
    // Nothing sent yet: the master may have sent up to `interval` packets.
    assert_eq!(outbound_start(0, 0, false), go(1));
    assert_eq!(outbound_start(0, 1024, false), go(1025));
    assert_eq!(outbound_start(1_000_000, 4096, false), go(1_004_097));
    // Without ESN the counter must not pass 2^32 - 1.
    assert_eq!(outbound_start(max32 - 11, 10, false), go(max32));
    assert_eq!(outbound_start(max32 - 10, 10, false), Outbound::Rekey);
    assert_eq!(outbound_start(max32, 0, false), Outbound::Rekey);
    assert_eq!(outbound_start(max32 + 5, 0, false), Outbound::Rekey);
    // With ESN it continues past 2^32...
    assert_eq!(outbound_start(max32 - 10, 10, true), go(max32 + 1));
    assert_eq!(
        outbound_start(max32, 1 << 20, true),
        go(max32 + (1 << 20) + 1)
    );
    // ...up to 2^64 - 1, and never wraps.
    let max64 = ha::limits::ESN_MAX_SEQ;
    assert_eq!(max64, (1 << 63) - 1);
    assert_eq!(outbound_start(max64 - 2, 1, true), go(max64));
    assert_eq!(outbound_start(max64 - 1, 1, true), Outbound::Rekey);
    assert_eq!(outbound_start(u64::MAX - 1, 1, true), Outbound::Rekey);
    assert_eq!(outbound_start(u64::MAX, 0, true), Outbound::Rekey);
    assert_eq!(outbound_start(5, u64::MAX, true), Outbound::Rekey);
}

#[test]
fn takeover_view() {
    let mut p = Pair::new();
    p.send(Message::Snapshot(snapshot(2, 2))).unwrap();
    let (esn, plain) = (child_spi(1, 0), child_spi(1, 1));
    assert!(p.table.child_sa(esn).unwrap().0.esn);
    assert!(!p.table.child_sa(plain).unwrap().0.esn);
    let mut near = mark(plain, u64::from(u32::MAX) - 100, 6_042);
    near.replay_bitmap = vec![0b1011];
    p.send(Message::Marks(vec![
        mark(esn, u64::from(u32::MAX) - 100, 7),
        near,
    ]))
    .unwrap();
    let t = p.table.takeover(p.now, 1000);
    assert!(t.in_sync);
    assert_eq!(t.ike.len(), 2);
    let ike = t.ike.iter().find(|i| i.sa.spis == spis(1)).unwrap();
    assert_eq!((ike.next_request_id, ike.expected_request_id), (8, 13));
    assert_eq!(ike.age, Duration::ZERO);
    assert_eq!(ike.timers(), ike.sa.timers);
    assert!(ike.children().eq(ike.sa.children.iter().copied()));
    assert_eq!(ike.sa.last_response.as_ref().unwrap().message_id, 12);
    let find = |spi| t.child.iter().find(|c| c.sa.inbound_spi == spi).unwrap();
    assert_eq!(
        find(esn).outbound,
        Outbound::Continue {
            next_seq: u64::from(u32::MAX) + 901
        }
    );
    assert_eq!(find(plain).outbound, Outbound::Rekey);
    assert_eq!(
        (find(plain).inbound_highest, find(plain).replay_bitmap),
        (6_042, &[0b1011][..])
    );
    assert_eq!(
        find(child_spi(0, 0)).outbound,
        Outbound::Continue {
            next_seq: 10_000 + 1000 + 1
        }
    );
    // A small interval keeps the 32-bit SA usable.
    let t = p.table.takeover(p.now, 99);
    let find = |spi| t.child.iter().find(|c| c.sa.inbound_spi == spi).unwrap();
    assert_eq!(
        find(plain).outbound,
        Outbound::Continue {
            next_seq: u64::from(u32::MAX)
        }
    );
}

#[test]
fn the_table_is_bounded() {
    let mut p = Pair::new();
    p.send(Message::Snapshot(Snapshot::default())).unwrap();
    let mut s = Snapshot::default();
    for i in 0..MAX_IKE_SAS as u32 {
        let mut sa = ike_sa(i);
        sa.last_response = None;
        s.ike.push(sa);
    }
    for j in 0..MAX_CHILD_SAS as u32 {
        s.child.push(child_sa(spis(0), 0x10_0000 + j));
        s.marks.push(mark(0x10_0000 + j, 0, 0));
    }
    p.send(Message::Snapshot(s)).unwrap();
    let extra = ike_sa(MAX_IKE_SAS as u32);
    assert_eq!(
        p.send(Message::UpsertIke(Box::new(extra))),
        Err(ApplyError::TableFull { what: "IKE SAs" })
    );
    assert_eq!(
        p.send(Message::UpsertChild(Box::new(child_sa(spis(0), 0x20_0000)))),
        Err(ApplyError::TableFull { what: "Child SAs" })
    );
    // Updates of SAs already held are still applied.
    p.send(Message::UpsertIke(Box::new(ike_sa(3)))).unwrap();
    p.send(Message::UpsertChild(Box::new(child_sa(spis(1), 0x10_0000))))
        .unwrap();
    assert_eq!(p.table.child_sa(0x10_0000).unwrap().0.ike, spis(1));
}

#[test]
fn takeover_ages_each_ike_sa_from_its_last_update() {
    let mut p = Pair::new();
    let t0 = p.now;
    p.send(Message::Snapshot(snapshot(2, 2))).unwrap();
    assert_eq!(p.table.ike_sa_updated_at(spis(0)), Some(t0));
    // 2 s later IKE SA 1 is upserted again; marks and Child SA upserts do not touch its age.
    p.now = t0 + Duration::from_secs(2);
    let mut fresh = full_ike_sa(1, RequestKind::Dpd);
    fresh.timers = IkeTimers {
        established_for_ms: 10_000,
        idle_for_ms: Some(0),
        rekey_in_ms: Some(5_000),
        expire_in_ms: Some(1_000_000),
    };
    p.send(Message::UpsertIke(Box::new(fresh.clone()))).unwrap();
    p.now = t0 + Duration::from_secs(3);
    p.send(Message::UpsertChild(Box::new(child_sa(
        spis(0),
        child_spi(0, 0),
    ))))
    .unwrap();
    p.send(Message::Marks(vec![mark(child_spi(0, 0), 5, 5)]))
        .unwrap();
    assert_eq!(p.table.ike_sa_updated_at(spis(0)), Some(t0));
    assert_eq!(
        p.table.ike_sa_updated_at(spis(1)),
        Some(t0 + Duration::from_secs(2))
    );
    assert_eq!(p.table.ike_sa_updated_at(spis(9)), None);

    let at = t0 + Duration::from_millis(7_500);
    let t = p.table.takeover(at, 0);
    let find = |s| t.ike.iter().find(|i| i.sa.spis == s).unwrap();
    let (old, new) = (find(spis(0)), find(spis(1)));
    assert_eq!(old.age, Duration::from_millis(7_500));
    assert_eq!(new.age, Duration::from_millis(5_500));
    assert_eq!(
        new.timers(),
        IkeTimers {
            established_for_ms: 15_500,
            idle_for_ms: Some(5_500),
            rekey_in_ms: Some(0),
            expire_in_ms: Some(994_500),
        }
    );
    let s0 = &old.sa.timers;
    assert_eq!(
        old.timers(),
        IkeTimers {
            established_for_ms: s0.established_for_ms + 7_500,
            idle_for_ms: Some(1_500 + 7_500),
            rekey_in_ms: Some(27_000_000 - 7_500),
            expire_in_ms: Some(28_800_000 - 7_500),
        }
    );
    // Children: rekey_in/expire_in shrink (saturating), the rest is as replicated.
    let links: Vec<ChildLink> = new.children().collect();
    assert_eq!(links.len(), fresh.children.len());
    for (aged, orig) in links.iter().zip(&fresh.children) {
        assert_eq!(
            aged.rekey_in_ms,
            orig.rekey_in_ms.map(|t| t.saturating_sub(5_500))
        );
        assert_eq!(
            aged.expire_in_ms,
            orig.expire_in_ms.map(|t| t.saturating_sub(5_500))
        );
        assert_eq!(
            (
                aged.inbound_spi,
                aged.status,
                aged.rekey_group,
                aged.reported
            ),
            (
                orig.inbound_spi,
                orig.status,
                orig.rekey_group,
                orig.reported
            )
        );
        assert_eq!(*aged, orig.aged(Duration::from_millis(5_500)));
    }
    // A link whose Child SA the table does not hold (it may come later) is kept.
    assert!(
        old.sa
            .children
            .iter()
            .any(|l| p.table.child_sa(l.inbound_spi).is_none())
            || new
                .sa
                .children
                .iter()
                .any(|l| p.table.child_sa(l.inbound_spi).is_none())
    );
    // The in-flight request and the queue are carried as replicated.
    assert_eq!(new.sa.in_flight, fresh.in_flight);
    assert_eq!(new.sa.queue, fresh.queue);
    // A clock that went backwards gives age zero, not a panic.
    let t = p.table.takeover(t0, 0);
    assert!(
        t.ike
            .iter()
            .all(|i| i.age == Duration::ZERO && i.timers() == i.sa.timers)
    );
}

#[test]
fn aged_timers_saturate_and_round_up() {
    let t = IkeTimers {
        established_for_ms: u64::MAX - 1,
        idle_for_ms: None,
        rekey_in_ms: Some(3),
        expire_in_ms: Some(u64::MAX),
    };
    assert_eq!(t.aged(Duration::ZERO), t);
    assert_eq!(
        t.aged(Duration::from_millis(2)),
        IkeTimers {
            established_for_ms: u64::MAX,
            idle_for_ms: None,
            rekey_in_ms: Some(1),
            expire_in_ms: Some(u64::MAX - 2),
        }
    );
    // Sub-millisecond ages count as a whole millisecond: deadlines never move later.
    let a = t.aged(Duration::from_nanos(1));
    assert_eq!(
        (a.rekey_in_ms, a.expire_in_ms),
        (Some(2), Some(u64::MAX - 1))
    );
    assert_eq!(t.aged(Duration::from_micros(2_001)).rekey_in_ms, Some(0));
    // An age beyond u64 milliseconds saturates everything.
    let a = t.aged(Duration::MAX);
    assert_eq!(
        a,
        IkeTimers {
            established_for_ms: u64::MAX,
            idle_for_ms: None,
            rekey_in_ms: Some(0),
            expire_in_ms: Some(0),
        }
    );
    let idle = IkeTimers {
        idle_for_ms: Some(10),
        ..IkeTimers::default()
    };
    assert_eq!(idle.aged(Duration::from_secs(1)).idle_for_ms, Some(1_010));
    let link = ChildLink {
        inbound_spi: 9,
        status: ChildStatus::Rekeying,
        rekey_in_ms: Some(100),
        expire_in_ms: None,
        rekey_group: 31,
        reported: true,
    };
    assert_eq!(
        link.aged(Duration::from_millis(40)),
        ChildLink {
            rekey_in_ms: Some(60),
            ..link
        }
    );
    assert_eq!(link.aged(Duration::MAX).rekey_in_ms, Some(0));
}

#[test]
fn a_snapshot_never_moves_a_mark_back() {
    let mut p = Pair::new();
    p.send(Message::Snapshot(snapshot(1, 1))).unwrap();
    let spi = child_spi(0, 0);
    p.send(Message::Marks(vec![mark(spi, 900_000, 800_000)]))
        .unwrap();
    // The next snapshot carries an older mark (read before the marks message was sent).
    p.send(Message::Snapshot(snapshot(1, 1))).unwrap();
    let (_, m) = p.table.child_sa(spi).unwrap();
    assert_eq!(m.outbound_seq, 900_000, "outbound mark kept");
    assert_eq!(m.inbound_highest, 800_000, "inbound window kept");
    // A Child SA that is another SA under the same inbound SPI (new outbound SPI) starts over.
    let mut s = snapshot(1, 1);
    s.child[0].outbound_spi ^= 1;
    p.send(Message::Snapshot(s.clone())).unwrap();
    let (_, m) = p.table.child_sa(spi).unwrap();
    assert_eq!(m.outbound_seq, s.marks[0].outbound_seq);
}
