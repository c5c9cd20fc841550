//! Stateful HA, sans-IO (issue #14): what the master of a keepalived pair replicates to its
//! backup and what the backup installs when it takes over, so that the peer (Azure) keeps its
//! IKE SA and Child SAs and never notices the change of appliance.
//!
//! * [`Master`] turns the IKE endpoint's exported state (`ike::IkeSaState`), the Child SAs'
//!   keys (`ike::ChildSa`, seen when they are established) and the data plane's sequence
//!   numbers and replay windows into `ha` messages, sealed for the channel: an upsert of an IKE
//!   SA whenever it changed (sent *before* the IKE datagram that made it change leaves, so the
//!   backup never lags the wire), upserts and removals of Child SAs, sequence-number marks
//!   every `mark_interval`, and a full snapshot every `snapshot_interval` (a backup that
//!   restarted is in sync again within one).
//! * [`Standby`] opens what arrives (authenticated, in order, from the partner only; anything
//!   else is refused and counted), keeps the `ha::Replica` table, and at takeover builds a
//!   [`Plan`]: the IKE SAs to import with their timers re-anchored by the replica's age, and
//!   per Child SA the keys, the outbound sequence number to start at (the last mark plus
//!   `seq_skip`: a forward jump the peer's anti-replay check accepts, RFC 4303 §3.4.3, and
//!   never a number the master may have used, §3.3.3) and the inbound window to continue.
//!
//! The conversions between the `ike` and `ha` types are total in the `ike` -> `ha` direction
//! and checked in the other (an unknown value refuses that SA: it falls back to a fresh IKE
//! SA with INITIAL_CONTACT).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dataplane::{Direction, Snapshot, TunnelId};
use ha::{
    ChildKeys, ChildLifetime, ChildLink, ChildSaReplica, ChildStatus, IkeKeys, IkeSaReplica,
    IkeSpis, IkeTimers, IkeTransforms, InFlight, Message, NatState, Outbound, QueuedWork, Refusal,
    Replica, RequestKind, Secret, SentMessage, SeqMark, TrafficCounters, TrafficSelector,
};
use ike::crypto::{IkeSaKeys, SecretBytes};
use ike::proposal::{ChildSuite, EncrAlg, IkeSuite};
use ike::transform::{DhId, EncrId, EsnId, IntegId, PrfId};
use ike::wire::TrafficSelector as IkeTs;
use ike::{ChildSa, ChildSaState, ChildSaStatus, DirectionKeys, IkeSaId, IkeSaState};
use serde::Serialize;

use crate::config::Ha;

// ------------------------------------------------------------------ conversions

fn secret(s: &SecretBytes) -> Secret {
    Secret::from_slice(s.as_bytes())
}

fn secret_bytes(s: &Secret) -> SecretBytes {
    SecretBytes::from_slice(s.expose_secret())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ts_out(t: &IkeTs) -> TrafficSelector {
    TrafficSelector {
        ip_proto: t.ip_proto,
        start_port: t.start_port,
        end_port: t.end_port,
        start: t.start,
        end: t.end,
    }
}

fn ts_in(t: &TrafficSelector) -> IkeTs {
    IkeTs {
        ip_proto: t.ip_proto,
        start_port: t.start_port,
        end_port: t.end_port,
        start: t.start,
        end: t.end,
    }
}

fn kind_out(k: ike::RequestKind) -> Option<RequestKind> {
    Some(match k {
        ike::RequestKind::Liveness => RequestKind::Liveness,
        ike::RequestKind::Dpd => RequestKind::Dpd,
        ike::RequestKind::DeleteChild { inbound_spi } => RequestKind::DeleteChild { inbound_spi },
        ike::RequestKind::DeleteIke => RequestKind::DeleteIke,
        ike::RequestKind::RekeyChild { inbound_spi } => RequestKind::RekeyChild { inbound_spi },
        ike::RequestKind::RekeyIke => RequestKind::RekeyIke,
        ike::RequestKind::CreateChild => RequestKind::CreateChild,
        _ => return None,
    })
}

fn kind_in(k: RequestKind) -> ike::RequestKind {
    match k {
        RequestKind::Liveness => ike::RequestKind::Liveness,
        RequestKind::Dpd => ike::RequestKind::Dpd,
        RequestKind::DeleteChild { inbound_spi } => ike::RequestKind::DeleteChild { inbound_spi },
        RequestKind::DeleteIke => ike::RequestKind::DeleteIke,
        RequestKind::RekeyChild { inbound_spi } => ike::RequestKind::RekeyChild { inbound_spi },
        RequestKind::RekeyIke => ike::RequestKind::RekeyIke,
        RequestKind::CreateChild => ike::RequestKind::CreateChild,
    }
}

fn status_out(s: ChildSaStatus) -> ChildStatus {
    match s {
        ChildSaStatus::Active => ChildStatus::Active,
        ChildSaStatus::Rekeying => ChildStatus::Rekeying,
        ChildSaStatus::Rekeyed => ChildStatus::Rekeyed,
        _ => ChildStatus::Deleting,
    }
}

fn status_in(s: ChildStatus) -> ChildSaStatus {
    match s {
        ChildStatus::Active => ChildSaStatus::Active,
        ChildStatus::Rekeying => ChildSaStatus::Rekeying,
        ChildStatus::Rekeyed => ChildSaStatus::Rekeyed,
        ChildStatus::Deleting => ChildSaStatus::Deleting,
    }
}

/// The replica of an exported IKE SA. `None` for a state this build cannot replicate (an
/// unknown request kind in flight or queued): the backup then has nothing for it and falls
/// back to a fresh IKE SA.
pub fn ike_replica(st: &IkeSaState) -> Option<IkeSaReplica> {
    let in_flight = match &st.in_flight {
        None => None,
        Some(r) => Some(InFlight {
            kind: kind_out(r.kind)?,
            request: SentMessage {
                message_id: r.request.message_id,
                fragments: r.request.datagrams.clone(),
            },
            transmissions: r.transmissions,
        }),
    };
    let mut queue = Vec::with_capacity(st.queue.len());
    for q in &st.queue {
        queue.push(match q {
            ike::QueuedRequest::RekeyChild { inbound_spi } => QueuedWork::RekeyChild {
                inbound_spi: *inbound_spi,
            },
            ike::QueuedRequest::DeleteChild { inbound_spi } => QueuedWork::DeleteChild {
                inbound_spi: *inbound_spi,
            },
            ike::QueuedRequest::RekeyIke => QueuedWork::RekeyIke,
            ike::QueuedRequest::DeleteIke => QueuedWork::DeleteIke,
            ike::QueuedRequest::CreateChild {
                local_ts,
                remote_ts,
                group,
                retried,
            } => QueuedWork::CreateChild {
                local_ts: local_ts.iter().map(ts_out).collect(),
                remote_ts: remote_ts.iter().map(ts_out).collect(),
                group: group.map_or(0, |g| g.0),
                retried: *retried,
            },
            _ => return None,
        });
    }
    Some(IkeSaReplica {
        connection: st.conn.clone(),
        initiator: st.initiator,
        spis: IkeSpis {
            initiator: st.ispi,
            responder: st.rspi,
        },
        local: st.local,
        remote: st.remote,
        nat: NatState {
            local_behind_nat: st.nat.local_behind_nat,
            peer_behind_nat: st.nat.peer_behind_nat,
            udp_encap: st.nat.udp_encap,
        },
        transforms: IkeTransforms {
            encr: st.suite.encr.id.0,
            encr_key_bits: st.suite.encr.key_bits.unwrap_or(0),
            prf: st.suite.prf.0,
            integ: st.suite.integ.map_or(0, |i| i.0),
            dh: st.suite.dh.0,
        },
        keys: IkeKeys {
            sk_d: secret(&st.keys.sk_d),
            sk_ai: secret(&st.keys.sk_ai),
            sk_ar: secret(&st.keys.sk_ar),
            sk_ei: secret(&st.keys.sk_ei),
            sk_er: secret(&st.keys.sk_er),
            sk_pi: secret(&st.keys.sk_pi),
            sk_pr: secret(&st.keys.sk_pr),
        },
        next_send_msg_id: st.next_msg_id,
        next_recv_msg_id: st.peer_msg_id,
        last_response: st.last_response.as_ref().map(|m| SentMessage {
            message_id: m.message_id,
            fragments: m.datagrams.clone(),
        }),
        peer_fragmentation: st.fragmentation,
        initial_contact: st.initial_contact,
        timers: IkeTimers {
            established_for_ms: ms(st.established_for),
            idle_for_ms: st.idle_for.map(ms),
            rekey_in_ms: st.rekey_in.map(ms),
            expire_in_ms: st.expire_in.map(ms),
        },
        children: st
            .children
            .iter()
            .map(|c| ChildLink {
                inbound_spi: c.inbound_spi,
                status: status_out(c.status),
                rekey_in_ms: c.rekey_in.map(ms),
                expire_in_ms: c.expire_in.map(ms),
                rekey_group: c.rekey_group.map_or(0, |g| g.0),
                reported: c.reported,
            })
            .collect(),
        queue,
        in_flight,
        flags: 0,
    })
}

/// The replica of a Child SA of the IKE SA `spis`, as established.
pub fn child_replica(sa: &ChildSa, spis: IkeSpis, dh: Option<DhId>) -> ChildSaReplica {
    ChildSaReplica {
        ike: spis,
        inbound_spi: sa.inbound_spi,
        outbound_spi: sa.outbound_spi,
        udp_encap: sa.udp_encap,
        encr: sa.encr.0,
        encr_key_bits: sa.encr_key_bits,
        integ: sa.integ.map_or(0, |i| i.0),
        esn: sa.esn,
        dh: dh.map_or(0, |g| g.0),
        initiator: sa.initiator,
        keys: ChildKeys {
            encr_in: secret(&sa.inbound.encr),
            integ_in: secret(&sa.inbound.integ),
            encr_out: secret(&sa.outbound.encr),
            integ_out: secret(&sa.outbound.integ),
        },
        ts_local: sa.local_ts.iter().map(ts_out).collect(),
        ts_remote: sa.remote_ts.iter().map(ts_out).collect(),
        lifetime: ChildLifetime::default(),
        counters: TrafficCounters::default(),
    }
}

fn aged(d: Option<u64>, age: Duration, grow: bool) -> Option<Duration> {
    d.map(|v| {
        let v = Duration::from_millis(v);
        if grow {
            v.saturating_add(age)
        } else {
            v.saturating_sub(age)
        }
    })
}

/// The cipher suite of a Child SA replica as the `ike` crate names it.
fn child_suite(c: &ChildSaReplica) -> ChildSuite {
    let id = EncrId(c.encr);
    ChildSuite {
        encr: EncrAlg::new(
            id,
            (id.needs_key_length() || c.encr_key_bits != 0).then_some(c.encr_key_bits),
        ),
        integ: (c.integ != 0).then_some(IntegId(c.integ)),
        dh: (c.dh != 0).then_some(DhId(c.dh)),
        esn: if c.esn { EsnId::YES } else { EsnId::NO },
    }
}

/// The IKE SA state to import for a replica `age` old, with the Child SAs of `children`
/// (by inbound SPI) that its links name; a link without its Child SA replica is left out
/// (the IKE SA then neither rekeys nor deletes it: the peer's lifetime ends it).
pub fn ike_state(
    r: &IkeSaReplica,
    age: Duration,
    children: &BTreeMap<u32, &ChildSaReplica>,
) -> IkeSaState {
    let encr = EncrId(r.transforms.encr);
    let suite = IkeSuite {
        encr: EncrAlg::new(
            encr,
            (encr.needs_key_length() || r.transforms.encr_key_bits != 0)
                .then_some(r.transforms.encr_key_bits),
        ),
        prf: PrfId(r.transforms.prf),
        integ: (r.transforms.integ != 0).then_some(IntegId(r.transforms.integ)),
        dh: DhId(r.transforms.dh),
    };
    let t = &r.timers;
    IkeSaState {
        conn: r.connection.clone(),
        initiator: r.initiator,
        ispi: r.spis.initiator,
        rspi: r.spis.responder,
        local: r.local,
        remote: r.remote,
        nat: ike::NatState {
            local_behind_nat: r.nat.local_behind_nat,
            peer_behind_nat: r.nat.peer_behind_nat,
            udp_encap: r.nat.udp_encap,
        },
        suite,
        keys: IkeSaKeys {
            sk_d: secret_bytes(&r.keys.sk_d),
            sk_ai: secret_bytes(&r.keys.sk_ai),
            sk_ar: secret_bytes(&r.keys.sk_ar),
            sk_ei: secret_bytes(&r.keys.sk_ei),
            sk_er: secret_bytes(&r.keys.sk_er),
            sk_pi: secret_bytes(&r.keys.sk_pi),
            sk_pr: secret_bytes(&r.keys.sk_pr),
        },
        next_msg_id: r.next_send_msg_id,
        peer_msg_id: r.next_recv_msg_id,
        last_response: r.last_response.as_ref().map(|m| ike::SentMessage {
            message_id: m.message_id,
            datagrams: m.fragments.clone(),
        }),
        fragmentation: r.peer_fragmentation,
        initial_contact: r.initial_contact,
        established_for: Duration::from_millis(t.established_for_ms).saturating_add(age),
        idle_for: aged(t.idle_for_ms, age, true),
        rekey_in: aged(t.rekey_in_ms, age, false),
        expire_in: aged(t.expire_in_ms, age, false),
        children: r
            .children
            .iter()
            .filter_map(|l| {
                let c = children.get(&l.inbound_spi)?;
                Some(ChildSaState {
                    inbound_spi: l.inbound_spi,
                    outbound_spi: c.outbound_spi,
                    suite: child_suite(c),
                    local_ts: c.ts_local.iter().map(ts_in).collect(),
                    remote_ts: c.ts_remote.iter().map(ts_in).collect(),
                    status: status_in(l.status),
                    rekey_in: aged(l.rekey_in_ms, age, false),
                    expire_in: aged(l.expire_in_ms, age, false),
                    rekey_group: (l.rekey_group != 0).then_some(DhId(l.rekey_group)),
                    reported: l.reported,
                })
            })
            .collect(),
        queue: r
            .queue
            .iter()
            .map(|q| match q {
                QueuedWork::RekeyChild { inbound_spi } => ike::QueuedRequest::RekeyChild {
                    inbound_spi: *inbound_spi,
                },
                QueuedWork::DeleteChild { inbound_spi } => ike::QueuedRequest::DeleteChild {
                    inbound_spi: *inbound_spi,
                },
                QueuedWork::RekeyIke => ike::QueuedRequest::RekeyIke,
                QueuedWork::DeleteIke => ike::QueuedRequest::DeleteIke,
                QueuedWork::CreateChild {
                    local_ts,
                    remote_ts,
                    group,
                    retried,
                } => ike::QueuedRequest::CreateChild {
                    local_ts: local_ts.iter().map(ts_in).collect(),
                    remote_ts: remote_ts.iter().map(ts_in).collect(),
                    group: (*group != 0).then_some(DhId(*group)),
                    retried: *retried,
                },
            })
            .collect(),
        in_flight: r.in_flight.as_ref().map(|f| ike::InFlightRequest {
            kind: kind_in(f.kind),
            request: ike::SentMessage {
                message_id: f.request.message_id,
                datagrams: f.request.fragments.clone(),
            },
            transmissions: f.transmissions,
        }),
    }
}

/// The Child SA (keys, selectors, addresses) to install for a replica of the IKE SA `ike`.
pub fn child_sa(c: &ChildSaReplica, ike: &IkeSaReplica, id: IkeSaId) -> ChildSa {
    let local = if c.udp_encap && ike.local.port() != crate::engine::NATT_PORT {
        SocketAddr::new(ike.local.ip(), crate::engine::NATT_PORT)
    } else {
        ike.local
    };
    let remote = if c.udp_encap && ike.remote.port() == crate::engine::IKE_PORT {
        SocketAddr::new(ike.remote.ip(), crate::engine::NATT_PORT)
    } else {
        ike.remote
    };
    ChildSa {
        conn: ike.connection.clone(),
        ike_sa: id,
        initiator: c.initiator,
        inbound_spi: c.inbound_spi,
        outbound_spi: c.outbound_spi,
        encr: EncrId(c.encr),
        encr_key_bits: c.encr_key_bits,
        integ: (c.integ != 0).then_some(IntegId(c.integ)),
        esn: c.esn,
        inbound: DirectionKeys {
            encr: secret_bytes(&c.keys.encr_in),
            integ: secret_bytes(&c.keys.integ_in),
        },
        outbound: DirectionKeys {
            encr: secret_bytes(&c.keys.encr_out),
            integ: secret_bytes(&c.keys.integ_out),
        },
        local_ts: c.ts_local.iter().map(ts_in).collect(),
        remote_ts: c.ts_remote.iter().map(ts_in).collect(),
        local,
        remote,
        udp_encap: c.udp_encap,
    }
}

/// An IKE SA replica with its ever-changing times cleared: equal when nothing the backup
/// needs has changed (times are re-sent with the next change or snapshot).
fn timeless(r: &IkeSaReplica) -> IkeSaReplica {
    let mut r = r.clone();
    r.timers = IkeTimers::default();
    for l in &mut r.children {
        l.rekey_in_ms = None;
        l.expire_in_ms = None;
    }
    r
}

// ------------------------------------------------------------------ the master

/// Largest replication datagram sent (a UDP payload over IPv4 is at most 65,507 bytes).
pub const MAX_DATAGRAM: usize = 65_000;

/// What the master has sent, for `status`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct MasterCounters {
    /// Datagrams sealed for the backup.
    pub datagrams: u64,
    /// Full snapshots.
    pub snapshots: u64,
    /// IKE SA upserts.
    pub ike_upserts: u64,
    /// Child SA upserts.
    pub child_upserts: u64,
    /// Removals of IKE or Child SAs.
    pub removals: u64,
    /// Marks messages.
    pub marks: u64,
    /// Messages that could not be sealed (too large: logged).
    pub seal_errors: u64,
}

/// The replicating side of the channel (this appliance is master).
#[derive(Debug)]
pub struct Master {
    sender: ha::Sender,
    /// What the backup holds, as last sent (times cleared).
    ike: BTreeMap<IkeSpis, IkeSaReplica>,
    child: BTreeMap<u32, (ChildSaReplica, TunnelId)>,
    /// Child SAs whose IKE SA has not been replicated yet (sent right after it).
    pending_child: Vec<(ChildSaReplica, TunnelId)>,
    /// The marks last sent, by inbound SPI.
    last_marks: BTreeMap<u32, SeqMark>,
    out: std::collections::VecDeque<Vec<u8>>,
    next_marks: Instant,
    next_snapshot: Instant,
    mark_interval: Duration,
    snapshot_interval: Duration,
    counters: MasterCounters,
}

impl Master {
    /// A master sending under `epoch` (larger at every start: wall-clock nanoseconds); its
    /// first message is a snapshot (at the first [`Master::sync`]).
    pub fn new(cfg: &Ha, epoch: u64, now: Instant) -> Result<Master, String> {
        let cc = ha::ChannelConfig::new(cfg.secret.expose(), cfg.local_id, cfg.peer_id)
            .map_err(|e| format!("HA channel: {e}"))?;
        Ok(Master {
            sender: ha::Sender::new(&cc, epoch).map_err(|e| format!("HA channel: {e}"))?,
            ike: BTreeMap::new(),
            child: BTreeMap::new(),
            pending_child: Vec::new(),
            last_marks: BTreeMap::new(),
            out: Default::default(),
            next_marks: now,
            next_snapshot: now,
            mark_interval: cfg.mark_interval,
            snapshot_interval: cfg.snapshot_interval,
            counters: MasterCounters::default(),
        })
    }

    fn seal(&mut self, m: &Message) {
        match self.sender.seal(m) {
            Ok(d) => {
                self.counters.datagrams += 1;
                self.out.push_back(d);
            }
            Err(e) => {
                self.counters.seal_errors += 1;
                tracing::error!("HA: cannot seal a {:?} message: {e}", m.message_type());
            }
        }
    }

    /// A Child SA was established (or rekeyed) on tunnel `tunnel`; it is replicated at the
    /// next [`Master::sync`], after the IKE SA that lists it.
    pub fn child_up(&mut self, sa: &ChildSa, tunnel: TunnelId) {
        self.pending_child
            .retain(|(c, _)| c.inbound_spi != sa.inbound_spi);
        if self.pending_child.len() < ha::limits::MAX_CHILD_SAS {
            let spis = IkeSpis {
                initiator: 0,
                responder: 0,
            };
            self.pending_child
                .push((child_replica(sa, spis, None), tunnel));
        }
    }

    /// The endpoint's established IKE SAs after a step: changed IKE SAs are upserted, then the
    /// Child SAs they list that the backup lacks (or holds under another IKE SA, after an IKE
    /// SA rekey, or with another PFS group), then vanished Child SAs and IKE SAs are removed.
    /// Call before the step's IKE datagrams are sent. A snapshot replaces all of it when one
    /// is due.
    pub fn sync(&mut self, now: Instant, states: &[IkeSaState]) {
        let mut current: BTreeMap<IkeSpis, IkeSaReplica> = BTreeMap::new();
        // Where each listed Child SA belongs: (IKE SA, PFS group).
        let mut listed: BTreeMap<u32, (IkeSpis, u16)> = BTreeMap::new();
        for st in states {
            if let Some(r) = ike_replica(st) {
                for cs in &st.children {
                    listed.insert(cs.inbound_spi, (r.spis, cs.suite.dh.map_or(0, |g| g.0)));
                }
                current.insert(r.spis, r);
            }
        }
        // Child SAs to (re)send: pending ones now listed, and moved or changed ones.
        let mut send: Vec<(ChildSaReplica, TunnelId)> = Vec::new();
        let pending = std::mem::take(&mut self.pending_child);
        for (mut c, t) in pending {
            match listed.get(&c.inbound_spi) {
                Some(&(spis, dh)) => {
                    c.ike = spis;
                    c.dh = dh;
                    send.push((c, t));
                }
                // Not (yet) listed by an established IKE SA: kept for the next step.
                None => self.pending_child.push((c, t)),
            }
        }
        for (spi, (c, t)) in &self.child {
            if let Some(&(spis, dh)) = listed.get(spi)
                && (c.ike != spis || c.dh != dh)
                && !send.iter().any(|(x, _)| x.inbound_spi == *spi)
            {
                let mut c = c.clone();
                c.ike = spis;
                c.dh = dh;
                send.push((c, *t));
            }
        }
        if now >= self.next_snapshot {
            self.next_snapshot = now + self.snapshot_interval;
            for (c, t) in send {
                self.child.insert(c.inbound_spi, (c, t));
            }
            self.child.retain(|spi, _| listed.contains_key(spi));
            self.snapshot_of(current);
            return;
        }
        let mut upserted = Vec::new();
        for (spis, r) in &current {
            let t = timeless(r);
            if self.ike.get(spis) != Some(&t) {
                self.counters.ike_upserts += 1;
                upserted.push(*spis);
                self.seal(&Message::UpsertIke(Box::new(r.clone())));
                self.ike.insert(*spis, t);
            }
        }
        for (c, t) in send {
            self.counters.child_upserts += 1;
            self.seal(&Message::UpsertChild(Box::new(c.clone())));
            self.child.insert(c.inbound_spi, (c, t));
        }
        let gone_children: Vec<u32> = self
            .child
            .keys()
            .filter(|spi| !listed.contains_key(spi))
            .copied()
            .collect();
        for inbound_spi in gone_children {
            self.child.remove(&inbound_spi);
            self.counters.removals += 1;
            self.seal(&Message::RemoveChild { inbound_spi });
        }
        let gone: Vec<IkeSpis> = self
            .ike
            .keys()
            .filter(|k| !current.contains_key(k))
            .copied()
            .collect();
        for spis in gone {
            self.ike.remove(&spis);
            self.counters.removals += 1;
            self.seal(&Message::RemoveIke(spis));
        }
    }

    fn snapshot_of(&mut self, current: BTreeMap<IkeSpis, IkeSaReplica>) {
        let snap = ha::Snapshot {
            ike: current.values().cloned().collect(),
            child: self.child.values().map(|(c, _)| c.clone()).collect(),
            // The last marks read (a snapshot replaces the backup's marks: never with less
            // than it had); zeros for a Child SA not marked yet.
            marks: self
                .child
                .keys()
                .map(|&inbound_spi| {
                    self.last_marks
                        .get(&inbound_spi)
                        .cloned()
                        .unwrap_or(SeqMark {
                            inbound_spi,
                            ..SeqMark::default()
                        })
                })
                .collect(),
        };
        self.ike = current.iter().map(|(k, r)| (*k, timeless(r))).collect();
        self.counters.snapshots += 1;
        match self.sender.seal(&Message::Snapshot(snap.clone())) {
            Ok(d) if d.len() <= MAX_DATAGRAM => {
                self.counters.datagrams += 1;
                self.out.push_back(d);
            }
            // Too large for one datagram: an empty snapshot, then every SA on its own (the
            // counter consumed by the unsent one is a gap the empty snapshot heals).
            _ => {
                self.seal(&Message::Snapshot(ha::Snapshot::default()));
                for r in snap.ike {
                    self.counters.ike_upserts += 1;
                    self.seal(&Message::UpsertIke(Box::new(r)));
                }
                for c in snap.child {
                    self.counters.child_upserts += 1;
                    self.seal(&Message::UpsertChild(Box::new(c)));
                }
                self.seal_marks(snap.marks);
            }
        }
    }

    /// Marks in messages that fit a datagram.
    fn seal_marks(&mut self, marks: Vec<SeqMark>) {
        let mut chunk: Vec<SeqMark> = Vec::new();
        let mut size = 0usize;
        for m in marks {
            let len = 32 + 8 * m.replay_bitmap.len();
            if !chunk.is_empty()
                && (size + len > MAX_DATAGRAM / 2 || chunk.len() >= ha::limits::MAX_MARKS)
            {
                self.counters.marks += 1;
                self.seal(&Message::Marks(std::mem::take(&mut chunk)));
                size = 0;
            }
            size += len;
            chunk.push(m);
        }
        if !chunk.is_empty() {
            self.counters.marks += 1;
            self.seal(&Message::Marks(chunk));
        }
    }

    /// Whether marks are due.
    pub fn marks_due(&self, now: Instant) -> bool {
        now >= self.next_marks
    }

    /// Sequence-number marks of every replicated Child SA from the data plane's counters and
    /// its inbound windows (`window(tunnel, inbound_spi)`).
    pub fn marks(
        &mut self,
        now: Instant,
        snap: &Snapshot,
        window: &dyn Fn(TunnelId, u32) -> Option<esp::WindowState>,
    ) {
        self.next_marks = now + self.mark_interval;
        let mut marks = Vec::with_capacity(self.child.len());
        for (c, tunnel) in self.child.values() {
            let outbound_seq = snap
                .seqs
                .iter()
                .find(|s| {
                    s.tunnel == *tunnel
                        && s.spi == c.outbound_spi
                        && s.direction == Direction::Outbound
                })
                .map_or(0, |s| s.seq);
            let w = window(*tunnel, c.inbound_spi).unwrap_or_default();
            let mut bitmap = w.bitmap;
            bitmap.truncate(ha::limits::MAX_REPLAY_WORDS);
            marks.push(SeqMark {
                inbound_spi: c.inbound_spi,
                outbound_seq,
                inbound_highest: w.highest,
                replay_bitmap: bitmap,
            });
        }
        self.last_marks = marks.iter().map(|m| (m.inbound_spi, m.clone())).collect();
        if marks.is_empty() {
            self.seal(&Message::Heartbeat);
        } else {
            self.seal_marks(marks);
        }
    }

    /// The next sealed datagram for the backup.
    pub fn poll_datagram(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// When the next snapshot is due (taken at the next [`Master::sync`]).
    pub fn poll_timeout(&self) -> Instant {
        self.next_snapshot
    }

    /// When the next marks are due ([`Master::marks`]; no IKE state is involved).
    pub fn marks_at(&self) -> Instant {
        self.next_marks
    }

    /// Counters for `status`.
    pub fn counters(&self) -> MasterCounters {
        self.counters
    }

    /// The channel epoch.
    pub fn epoch(&self) -> u64 {
        self.sender.epoch()
    }
}

// ------------------------------------------------------------------ the backup

/// One Child SA to install at takeover.
#[derive(Debug)]
pub struct ChildPlan {
    /// Keys, selectors, addresses.
    pub sa: Box<ChildSa>,
    /// Where its IKE SA has it in its life.
    pub status: ChildSaStatus,
    /// Reported by the IKE SA (false for a collision's redundant SA).
    pub reported: bool,
    /// The first outbound sequence number, or `None`: its sequence space is used up (it is
    /// installed inbound only and rekeyed).
    pub next_seq: Option<u64>,
    /// The inbound anti-replay window to continue.
    pub window: esp::WindowState,
}

/// One IKE SA to import at takeover.
#[derive(Debug)]
pub struct IkePlan {
    /// The state for `Endpoint::import_ike_sa`.
    pub state: IkeSaState,
    /// Its Child SAs.
    pub children: Vec<ChildPlan>,
}

/// What the backup installs when it takes over.
#[derive(Debug, Default)]
pub struct Plan {
    /// Whether the replica was in sync with the master (else nothing is continued).
    pub in_sync: bool,
    /// The IKE SAs to continue.
    pub ike: Vec<IkePlan>,
    /// How old the newest replicated message was.
    pub lag: Option<Duration>,
}

/// What the backup received, for `status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StandbyStatus {
    /// The replica was in sync with the master at the last message.
    pub in_sync: bool,
    /// Milliseconds since the last accepted message (`None`: none yet).
    pub lag_ms: Option<u64>,
    /// IKE SAs held warm.
    pub ike_sas: usize,
    /// Child SAs held warm.
    pub child_sas: usize,
    /// Messages accepted.
    pub accepted: u64,
    /// Messages refused, by reason (a replica from anyone but the partner, tampered,
    /// replayed, ...).
    pub refused: BTreeMap<String, u64>,
    /// Accepted messages that could not be applied (inconsistent with the table).
    pub not_applied: u64,
}

/// The receiving side of the channel (this appliance is backup). Nothing is written to disk.
#[derive(Debug)]
pub struct Standby {
    rx: ha::Receiver,
    table: Replica,
    not_applied: u64,
}

impl Standby {
    /// A backup for the partner configured in `cfg`.
    pub fn new(cfg: &Ha) -> Result<Standby, String> {
        let cc = ha::ChannelConfig::new(cfg.secret.expose(), cfg.local_id, cfg.peer_id)
            .map_err(|e| format!("HA channel: {e}"))?;
        Ok(Standby {
            rx: ha::Receiver::new(&cc),
            table: Replica::new(),
            not_applied: 0,
        })
    }

    /// A datagram from the replication socket.
    pub fn receive(&mut self, now: Instant, datagram: &[u8]) -> Result<(), Refusal> {
        let r = self.rx.open(datagram)?;
        if let Err(e) = self.table.apply(now, r) {
            self.not_applied += 1;
            tracing::warn!("HA: replica message not applied: {e}");
        }
        Ok(())
    }

    /// Forgets everything held (this appliance became master, or the partner restarted).
    pub fn clear(&mut self) {
        self.table = Replica::new();
    }

    /// For `status`.
    pub fn status(&self, now: Instant) -> StandbyStatus {
        let c = self.rx.counters();
        StandbyStatus {
            in_sync: self.table.in_sync(),
            lag_ms: self.table.lag(now).map(ms),
            ike_sas: self.table.ike_sas().count(),
            child_sas: self.table.child_sas().count(),
            accepted: c.accepted,
            refused: c
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            not_applied: self.not_applied,
        }
    }

    /// The takeover plan, Child SAs starting `seq_skip` beyond their last marks. Our SPI
    /// names an IKE SA in the endpoint, so `id` is the initiator's SPI when we initiated.
    pub fn plan(&self, now: Instant, seq_skip: u64) -> Plan {
        let lag = self.table.lag(now);
        if !self.table.in_sync() {
            return Plan {
                in_sync: false,
                ike: Vec::new(),
                lag,
            };
        }
        let t = self.table.takeover(now, seq_skip);
        let by_spi: BTreeMap<u32, &ChildSaReplica> =
            t.child.iter().map(|c| (c.sa.inbound_spi, c.sa)).collect();
        let mut ike = Vec::new();
        for it in &t.ike {
            let r = it.sa;
            let state = ike_state(r, it.age, &by_spi);
            let id = state.id();
            let mut children = Vec::new();
            for ct in t.child.iter().filter(|c| c.sa.ike == r.spis) {
                let Some(link) = r
                    .children
                    .iter()
                    .find(|l| l.inbound_spi == ct.sa.inbound_spi)
                else {
                    continue;
                };
                children.push(ChildPlan {
                    sa: Box::new(child_sa(ct.sa, r, id)),
                    status: status_in(link.status),
                    reported: link.reported,
                    next_seq: match ct.outbound {
                        Outbound::Continue { next_seq } => Some(next_seq),
                        Outbound::Rekey => None,
                    },
                    window: esp::WindowState {
                        highest: ct.inbound_highest,
                        bitmap: ct.replay_bitmap.to_vec(),
                    },
                });
            }
            ike.push(IkePlan { state, children });
        }
        Plan {
            in_sync: true,
            ike,
            lag,
        }
    }
}
