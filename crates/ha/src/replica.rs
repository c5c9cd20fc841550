//! The backup's table of replicated SAs, and what to do with it at takeover (continuing the
//! peer's SAs as in RFC 6311 §3, without its message-ID synchronisation exchange).
//!
//! Rules, in the order messages are applied:
//! * A snapshot replaces everything. An upsert inserts or replaces one SA; a Child SA's IKE SA
//!   must be known, and an updated Child SA keeps its mark. Each IKE SA remembers when (the
//!   `now` given to [`Replica::apply`]) the snapshot or upsert that brought it was applied: its
//!   timers are relative to that moment. A snapshot or IKE SA that breaks a consistency rule
//!   ([`Snapshot::check`](crate::Snapshot::check), [`IkeSaReplica::check`]) is refused
//!   ([`ApplyError::Invalid`]); the decoder refuses them already, so this only guards against
//!   a [`Received`] made otherwise. An IKE SA's [`ChildLink`] whose Child SA the table does not
//!   hold is kept: the Child SA may come later, and the caller matches them by inbound SPI at
//!   takeover. Removing an IKE SA removes the Child SAs still attached to it (as deleting an
//!   IKE SA does, RFC 7296 §1.4.1): on an IKE rekey the master re-upserts the Child SAs under
//!   the new IKE SA first.
//! * Marks only ever move forward: the outbound mark is the larger of the stored and the new
//!   one, the inbound window is taken from whichever has the higher top. A mark for a Child SA
//!   the table does not hold is dropped and counted ([`ReplicaCounters::unknown_marks`]):
//!   marks are sampled by the data plane and may race with a removal, and a kept mark could
//!   attach to a later SA that reuses the SPI. Upserts are sent before an SA carries traffic,
//!   so no mark legitimately precedes its SA.
//! * A message that cannot be applied (unknown SA, full table, inconsistent) changes no SA,
//!   and is counted.
//! * The table is in sync once a snapshot of the sender's current epoch has been applied and
//!   nothing has been missed or refused since. A gap in the counters, a new sender epoch
//!   without its snapshot, or a refused message clears it; the next snapshot sets it again.
//!
//! At takeover, for each Child SA the outbound counter restarts at `mark + interval + 1`: the
//! mark is the next number the master's data plane would have used when it was sampled, and
//! the master may have sent up to `interval` packets after its last mark reached us, so
//! numbers up to `mark + interval - 1` may be used; the `+ 1` is one conservative extra (and
//! starts an SA that sent nothing, mark 0, at 1 or later). A counter that would pass
//! 2^32 - 1 without ESN (or [`ESN_MAX_SEQ`](crate::limits::ESN_MAX_SEQ) with it) makes the SA
//! unusable: the caller rekeys it instead of reusing a sequence number. IKE SAs continue with
//! their replicated message IDs, last response and request in flight (retransmitted byte for
//! byte), so the master must replicate an IKE SA before it sends a message from it; their
//! relative timers are aged by the time since they were applied ([`IkeTakeover::age`],
//! [`IkeTakeover::timers`], [`IkeTakeover::children`]) and re-anchored by the caller.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::channel::Received;
use crate::limits::{MAX_CHILD_SAS, MAX_IKE_SAS};
use crate::message::Message;
use crate::model::{ChildLink, ChildSaReplica, IkeSaReplica, IkeSpis, IkeTimers, SeqMark};
use crate::wire::Problem;

/// Why a message was not applied to the table. Nothing in the table changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// An upsert of a Child SA of, or a removal of, an IKE SA the table does not hold.
    #[error("unknown IKE SA {:016x}/{:016x}", .0.initiator, .0.responder)]
    UnknownIkeSa(IkeSpis),
    /// A removal of a Child SA the table does not hold.
    #[error("unknown Child SA {0:08x}")]
    UnknownChildSa(u32),
    /// An upsert of a new SA into a table at its limit.
    #[error("table full: {what}")]
    TableFull {
        /// Which table.
        what: &'static str,
    },
    /// A snapshot or an IKE SA that breaks a bound or consistency rule
    /// ([`Snapshot::check`](crate::Snapshot::check), [`IkeSaReplica::check`]). The decoder
    /// refuses those already, so a [`Received`] from [`Receiver::open`](crate::Receiver::open)
    /// never gives it: a guard against a message made otherwise.
    #[error("inconsistent message: {0}")]
    Invalid(Problem),
}

/// What the table applied and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaCounters {
    /// Snapshots applied.
    pub snapshots: u64,
    /// Upserts applied.
    pub upserts: u64,
    /// Removals applied.
    pub removes: u64,
    /// Marks messages applied.
    pub marks: u64,
    /// Heartbeats.
    pub heartbeats: u64,
    /// Marks dropped because their Child SA is unknown.
    pub unknown_marks: u64,
    /// Messages not applied ([`ApplyError`]).
    pub refused: u64,
}

/// The outbound SA's fate at takeover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Continue with this sequence number (never used by the master).
    Continue {
        /// The first sequence number to send.
        next_seq: u64,
    },
    /// The sequence space would be exhausted: rekey the Child SA instead of continuing.
    Rekey,
}

/// One IKE SA to continue.
#[derive(Clone, Copy, Debug)]
pub struct IkeTakeover<'a> {
    /// The replica.
    pub sa: &'a IkeSaReplica,
    /// Time from when its replica was applied to the takeover's `now` (zero if the clock went
    /// backwards): how much its relative timers have run since.
    pub age: Duration,
    /// Message ID of our next request.
    pub next_request_id: u32,
    /// Message ID of the next request expected from the peer. A retransmitted request with the
    /// ID of [`IkeSaReplica::last_response`] is answered with its bytes.
    pub expected_request_id: u32,
}

impl<'a> IkeTakeover<'a> {
    /// Its timers as of the takeover ([`IkeTimers::aged`] by [`age`](IkeTakeover::age)), to
    /// be re-anchored to the caller's clock.
    pub fn timers(&self) -> IkeTimers {
        self.sa.timers.aged(self.age)
    }

    /// Its Child SA links as of the takeover ([`ChildLink::aged`] by
    /// [`age`](IkeTakeover::age)), in replicated order.
    pub fn children(&self) -> impl Iterator<Item = ChildLink> + 'a {
        let age = self.age;
        self.sa.children.iter().map(move |c| c.aged(age))
    }
}

/// One Child SA to continue.
#[derive(Clone, Copy, Debug)]
pub struct ChildTakeover<'a> {
    /// The replica.
    pub sa: &'a ChildSaReplica,
    /// Where the outbound sequence numbers restart.
    pub outbound: Outbound,
    /// The inbound anti-replay window as last replicated: its top...
    pub inbound_highest: u64,
    /// ...and its bitmap (see [`SeqMark`]).
    pub replay_bitmap: &'a [u64],
}

/// What the backup installs when it takes over.
#[derive(Clone, Debug)]
pub struct Takeover<'a> {
    /// Whether the table was in sync with the master (see the module docs). If not, it may
    /// lack SAs or hold stale ones; the caller should prefer rekeying to continuing.
    pub in_sync: bool,
    /// IKE SAs, by SPIs.
    pub ike: Vec<IkeTakeover<'a>>,
    /// Child SAs, by inbound SPI.
    pub child: Vec<ChildTakeover<'a>>,
}

#[derive(Clone, Debug)]
struct IkeEntry {
    sa: IkeSaReplica,
    /// When the snapshot or upsert that brought it was applied.
    updated: Instant,
}

#[derive(Clone, Debug)]
struct ChildEntry {
    sa: ChildSaReplica,
    mark: SeqMark,
}

/// The backup's replicated state, held in memory only.
#[derive(Clone, Debug, Default)]
pub struct Replica {
    ike: BTreeMap<IkeSpis, IkeEntry>,
    child: BTreeMap<u32, ChildEntry>,
    last_message_at: Option<Instant>,
    in_sync: bool,
    counters: ReplicaCounters,
}

impl Replica {
    /// An empty table, not in sync.
    pub fn new() -> Replica {
        Replica::default()
    }

    /// Applies one accepted message received at `now`.
    pub fn apply(&mut self, now: Instant, received: Received) -> Result<(), ApplyError> {
        self.last_message_at = Some(now);
        let gap = received.new_epoch || received.missed > 0;
        let is_snapshot = matches!(received.message, Message::Snapshot(_));
        let result = self.apply_message(now, received.message);
        match result {
            Ok(()) if is_snapshot => self.in_sync = true,
            Ok(()) if gap => self.in_sync = false,
            Ok(()) => {}
            Err(_) => {
                self.in_sync = false;
                self.counters.refused += 1;
            }
        }
        result
    }

    fn apply_message(&mut self, now: Instant, message: Message) -> Result<(), ApplyError> {
        let c = &mut self.counters;
        match message {
            Message::Snapshot(s) => {
                // The decoder checked it; a `Received` made by hand may not be.
                s.check().map_err(ApplyError::Invalid)?;
                let mut marks: BTreeMap<u32, SeqMark> =
                    s.marks.into_iter().map(|m| (m.inbound_spi, m)).collect();
                self.ike = s
                    .ike
                    .into_iter()
                    .map(|sa| (sa.spis, IkeEntry { sa, updated: now }))
                    .collect();
                // A mark never goes back, whatever sent it: the numbers it covers were used
                // on that SA (a snapshot's marks may be older than a marks message's).
                let old = std::mem::take(&mut self.child);
                self.child = s
                    .child
                    .into_iter()
                    .map(|sa| {
                        let spi = sa.inbound_spi;
                        let mut mark = marks.remove(&spi).unwrap_or_else(|| zero_mark(spi));
                        if let Some(prev) = old.get(&spi)
                            && prev.sa.outbound_spi == sa.outbound_spi
                        {
                            let newer = std::mem::replace(&mut mark, prev.mark.clone());
                            merge_mark(&mut mark, newer);
                        }
                        (spi, ChildEntry { sa, mark })
                    })
                    .collect();
                c.snapshots += 1;
            }
            Message::UpsertIke(sa) => {
                sa.check().map_err(ApplyError::Invalid)?;
                if !self.ike.contains_key(&sa.spis) && self.ike.len() >= MAX_IKE_SAS {
                    return Err(ApplyError::TableFull { what: "IKE SAs" });
                }
                let entry = IkeEntry {
                    sa: *sa,
                    updated: now,
                };
                self.ike.insert(entry.sa.spis, entry);
                c.upserts += 1;
            }
            Message::UpsertChild(sa) => {
                if !self.ike.contains_key(&sa.ike) {
                    return Err(ApplyError::UnknownIkeSa(sa.ike));
                }
                let spi = sa.inbound_spi;
                if let Some(e) = self.child.get_mut(&spi) {
                    e.sa = *sa;
                } else if self.child.len() >= MAX_CHILD_SAS {
                    return Err(ApplyError::TableFull { what: "Child SAs" });
                } else {
                    let mark = zero_mark(spi);
                    self.child.insert(spi, ChildEntry { sa: *sa, mark });
                }
                c.upserts += 1;
            }
            Message::RemoveIke(spis) => {
                if self.ike.remove(&spis).is_none() {
                    return Err(ApplyError::UnknownIkeSa(spis));
                }
                self.child.retain(|_, e| e.sa.ike != spis);
                c.removes += 1;
            }
            Message::RemoveChild { inbound_spi } => {
                if self.child.remove(&inbound_spi).is_none() {
                    return Err(ApplyError::UnknownChildSa(inbound_spi));
                }
                c.removes += 1;
            }
            Message::Marks(marks) => {
                for m in marks {
                    match self.child.get_mut(&m.inbound_spi) {
                        Some(e) => merge_mark(&mut e.mark, m),
                        None => c.unknown_marks += 1,
                    }
                }
                c.marks += 1;
            }
            Message::Heartbeat => c.heartbeats += 1,
        }
        Ok(())
    }

    /// Whether the table mirrors the master (see the module docs).
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// When the last message was applied.
    pub fn last_message_at(&self) -> Option<Instant> {
        self.last_message_at
    }

    /// How long ago that was (`None` before the first message).
    pub fn lag(&self, now: Instant) -> Option<Duration> {
        self.last_message_at
            .map(|t| now.saturating_duration_since(t))
    }

    /// Applied and dropped messages.
    pub fn counters(&self) -> &ReplicaCounters {
        &self.counters
    }

    /// The IKE SAs, by SPIs.
    pub fn ike_sas(&self) -> impl Iterator<Item = &IkeSaReplica> {
        self.ike.values().map(|e| &e.sa)
    }

    /// The Child SAs with their marks, by inbound SPI.
    pub fn child_sas(&self) -> impl Iterator<Item = (&ChildSaReplica, &SeqMark)> {
        self.child.values().map(|e| (&e.sa, &e.mark))
    }

    /// One IKE SA.
    pub fn ike_sa(&self, spis: IkeSpis) -> Option<&IkeSaReplica> {
        self.ike.get(&spis).map(|e| &e.sa)
    }

    /// When the snapshot or upsert that brought this IKE SA was applied (the instant its
    /// relative timers count from).
    pub fn ike_sa_updated_at(&self, spis: IkeSpis) -> Option<Instant> {
        self.ike.get(&spis).map(|e| e.updated)
    }

    /// One Child SA and its mark.
    pub fn child_sa(&self, inbound_spi: u32) -> Option<(&ChildSaReplica, &SeqMark)> {
        self.child.get(&inbound_spi).map(|e| (&e.sa, &e.mark))
    }

    /// What to install at takeover at `now`, given the number of packets the master may send
    /// on an SA between two marks that reach us (its marking interval, times one plus the
    /// number of marks messages that may be lost in a row).
    pub fn takeover(&self, now: Instant, interval_packets: u64) -> Takeover<'_> {
        Takeover {
            in_sync: self.in_sync,
            ike: self
                .ike
                .values()
                .map(|IkeEntry { sa, updated }| IkeTakeover {
                    sa,
                    age: now.saturating_duration_since(*updated),
                    next_request_id: sa.next_send_msg_id,
                    expected_request_id: sa.next_recv_msg_id,
                })
                .collect(),
            child: self
                .child
                .values()
                .map(|e| ChildTakeover {
                    sa: &e.sa,
                    outbound: outbound_start(e.mark.outbound_seq, interval_packets, e.sa.esn),
                    inbound_highest: e.mark.inbound_highest,
                    replay_bitmap: &e.mark.replay_bitmap,
                })
                .collect(),
        }
    }
}

/// The first outbound sequence number the backup may use: `mark + interval + 1` (the mark
/// being the master's next number, see [`SeqMark`]: one more than strictly needed), within the
/// 32-bit space without ESN (RFC 4303 §3.3.3: never wrap) or, with ESN, within what the data
/// plane can use ([`crate::limits::ESN_MAX_SEQ`]); otherwise [`Outbound::Rekey`].
pub fn outbound_start(mark: u64, interval_packets: u64, esn: bool) -> Outbound {
    let max = if esn {
        crate::limits::ESN_MAX_SEQ
    } else {
        u64::from(u32::MAX)
    };
    match mark
        .checked_add(interval_packets)
        .and_then(|s| s.checked_add(1))
    {
        Some(next_seq) if next_seq <= max => Outbound::Continue { next_seq },
        _ => Outbound::Rekey,
    }
}

fn zero_mark(inbound_spi: u32) -> SeqMark {
    SeqMark {
        inbound_spi,
        ..SeqMark::default()
    }
}

fn merge_mark(stored: &mut SeqMark, new: SeqMark) {
    stored.outbound_seq = stored.outbound_seq.max(new.outbound_seq);
    if new.inbound_highest >= stored.inbound_highest {
        stored.inbound_highest = new.inbound_highest;
        stored.replay_bitmap = new.replay_bitmap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChildLink;
    use crate::wire::Problem;

    fn sa(links: &[u32]) -> IkeSaReplica {
        IkeSaReplica {
            connection: "c".into(),
            initiator: true,
            spis: IkeSpis {
                initiator: 1,
                responder: 2,
            },
            local: "192.0.2.1:500".parse().unwrap(),
            remote: "192.0.2.2:500".parse().unwrap(),
            nat: Default::default(),
            transforms: Default::default(),
            keys: Default::default(),
            next_send_msg_id: 0,
            next_recv_msg_id: 0,
            last_response: None,
            peer_fragmentation: false,
            initial_contact: false,
            timers: Default::default(),
            children: links
                .iter()
                .map(|&inbound_spi| ChildLink {
                    inbound_spi,
                    ..ChildLink::default()
                })
                .collect(),
            queue: Vec::new(),
            in_flight: None,
            flags: 0,
        }
    }

    fn received(message: Message) -> Received {
        Received {
            epoch: 1,
            counter: 0,
            new_epoch: false,
            missed: 0,
            message,
        }
    }

    #[test]
    fn apply_refuses_what_the_decoder_would() {
        let now = Instant::now();
        let mut table = Replica::new();
        let good = crate::Snapshot {
            ike: vec![sa(&[5, 6])],
            ..Default::default()
        };
        table.apply(now, received(Message::Snapshot(good))).unwrap();
        let dup = Problem::Duplicate {
            what: "Child SA link",
        };
        let bad = crate::Snapshot {
            ike: vec![sa(&[5, 6, 5])],
            ..Default::default()
        };
        assert_eq!(
            table.apply(now, received(Message::Snapshot(bad))),
            Err(ApplyError::Invalid(dup))
        );
        assert_eq!(
            table.apply(now, received(Message::UpsertIke(Box::new(sa(&[7, 7]))))),
            Err(ApplyError::Invalid(dup))
        );
        let many = crate::Snapshot {
            ike: (0..=crate::limits::MAX_IKE_SAS as u64)
                .map(|i| {
                    let mut s = sa(&[]);
                    s.spis.initiator = i;
                    s
                })
                .collect(),
            ..Default::default()
        };
        assert!(matches!(
            table.apply(now, received(Message::Snapshot(many))),
            Err(ApplyError::Invalid(Problem::TooLong {
                what: "IKE SAs",
                ..
            }))
        ));
        assert_eq!(table.ike_sa(sa(&[]).spis).unwrap().children.len(), 2);
        assert_eq!(table.counters().refused, 3);
        assert!(!table.in_sync());
    }
}
