//! Export and import of established IKE SAs, for a standby appliance that takes over the same
//! SAs (RFC 7296 §2.1-§2.3: message IDs, the response cache and retransmissions; §2.8 and
//! §2.18: lifetimes and rekeys). [`IkeSaState`] is plain data: the connection by name, the
//! SPIs, addresses and NAT state, the suite and the seven raw keys, both message ID counters,
//! the last response as sent, lifetimes as durations relative to the export `now`, and the
//! Child SAs as the IKE SA knows them. The importer rebuilds the SK ciphers from the raw keys
//! (no derivation), registers the SA in every table and re-anchors its timers to its own
//! clock; it sends nothing. From then on the imported SA behaves as the original would have.
//!
//! # A request of ours in flight at export time
//! The peer keeps its own view of our request window (§2.3, window size 1): whether it got our
//! request N or not, the only message that keeps both sides in step is request N itself, byte
//! for byte: a peer that processed it answers the retransmission from its cache (§2.1), one
//! that never saw it processes it now. Abandoning N and going on with N + 1 is not safe: a
//! peer that never saw N silently drops N + 1 (outside its window, §2.3) and every later
//! request, nobody retransmits N, and the IKE SA dies at its next exchange; a peer that did
//! see N holds whatever N created (a new Child SA or IKE SA) waiting for us.
//!
//! So an in-flight request is carried ([`IkeSaState::in_flight`]: message ID, the datagrams as
//! sent, transmissions so far) and:
//! - a **liveness check** (DPD or [`Endpoint::send_liveness_check`]) or a **DELETE** (of a
//!   Child SA or of the IKE SA) is continued: the importer holds the same outstanding request
//!   and retransmits the same bytes on the connection's schedule (the first retransmission one
//!   timeout after the import), and handles the answer as the original would have;
//! - a **CREATE_CHILD_SA** (Child SA rekey, IKE SA rekey, additional Child SA) is refused with
//!   [`ImportError::ExchangeInFlight`]: its answer can only be used with the ephemeral key
//!   exchange secret and nonce of the original process, which are never exported. The
//!   replicator exports again once the exchange has ended (its `ChildSaRekeyed`,
//!   `IkeSaRekeyed`, `ChildSaEstablished` or `ChildSaFailed` event) and keeps that state; a
//!   standby left with only the in-flight state falls back to a fresh IKE SA with
//!   INITIAL_CONTACT (§3.10.1), which makes the peer drop the old one.
//!
//! Not carried: IKE SAs not yet established and IKE SAs replaced by a rekey (only their DELETE
//! remains; a peer whose DELETE of a replaced SA goes unanswered gives it up after its
//! retransmissions, the new SA is not affected), a reassembly of fragments in progress (the
//! peer retransmits the whole message), the cookie secret.

use super::state::{
    Action, ChildInfo, ChildStatus, Established, IkeSa, Keys, Outstanding, QueuedCreate, Request,
    State,
};
use super::*;
use crate::crypto::{CryptoError, IkeSaKeys};
use crate::proposal::{ChildSuite, IkeSuite};
use crate::transform::DhId;
use std::time::Duration;

/// Most datagrams (SKF fragments, RFC 7383) one carried message may have.
const MAX_DATAGRAMS: usize = super::fragment::MAX_FRAGMENTS as usize;
/// Longest carried datagram (an IKE message length is 32 bits, a UDP payload 16).
const MAX_DATAGRAM_LEN: usize = 65_535;

/// What NAT detection (RFC 7296 §2.23) found for an IKE SA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatState {
    /// We are behind a NAT (the peer's NAT_DETECTION_DESTINATION_IP did not match us).
    pub local_behind_nat: bool,
    /// The peer is behind a NAT (none of its NAT_DETECTION_SOURCE_IP matched its address).
    pub peer_behind_nat: bool,
    /// UDP encapsulation because a NAT was detected or forced (`force_encap`): the IKE SA
    /// follows the peer's address on NAT rebinding. Its Child SAs are encapsulated when this
    /// is set or the SA runs on port 4500.
    pub udp_encap: bool,
}

/// A message we sent, carried as the datagrams that went on the wire: IKE messages (one, or
/// its SKF fragments), without the non-ESP marker of port 4500. `Debug` prints only lengths.
#[derive(Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// Its message ID.
    pub message_id: u32,
    /// The IKE messages as sent (ciphertext: header, SK or SKF payload).
    pub datagrams: Vec<Vec<u8>>,
}

impl core::fmt::Debug for SentMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let lens: Vec<usize> = self.datagrams.iter().map(Vec::len).collect();
        f.debug_struct("SentMessage")
            .field("message_id", &self.message_id)
            .field("datagram_lens", &lens)
            .finish()
    }
}

/// Which of our requests was outstanding at export time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// An empty INFORMATIONAL asked for with `send_liveness_check`.
    Liveness,
    /// An empty INFORMATIONAL of dead peer detection.
    Dpd,
    /// An INFORMATIONAL deleting the Child SA with this inbound SPI.
    DeleteChild {
        /// Our inbound SPI of the Child SA.
        inbound_spi: u32,
    },
    /// An INFORMATIONAL deleting the IKE SA.
    DeleteIke,
    /// A CREATE_CHILD_SA rekeying the Child SA with this inbound SPI.
    RekeyChild {
        /// Our inbound SPI of the Child SA being rekeyed.
        inbound_spi: u32,
    },
    /// A CREATE_CHILD_SA rekeying the IKE SA.
    RekeyIke,
    /// A CREATE_CHILD_SA for an additional Child SA.
    CreateChild,
}

impl RequestKind {
    /// Whether an import continues this request (its answer needs no secret beyond the IKE SA
    /// keys); otherwise the import is refused (see the module documentation).
    pub fn continues_after_import(self) -> bool {
        matches!(
            self,
            RequestKind::Liveness
                | RequestKind::Dpd
                | RequestKind::DeleteChild { .. }
                | RequestKind::DeleteIke
        )
    }

    fn from_request(r: Request) -> Option<Self> {
        Some(match r {
            Request::Informational => RequestKind::Liveness,
            Request::Dpd => RequestKind::Dpd,
            Request::DeleteChild(s) => RequestKind::DeleteChild { inbound_spi: s },
            Request::DeleteIke => RequestKind::DeleteIke,
            Request::RekeyChild => return None,
            Request::RekeyIke => RequestKind::RekeyIke,
            Request::CreateChild => RequestKind::CreateChild,
            Request::Init | Request::Auth => return None,
        })
    }

    fn to_request(self) -> Option<Request> {
        match self {
            RequestKind::Liveness => Some(Request::Informational),
            RequestKind::Dpd => Some(Request::Dpd),
            RequestKind::DeleteChild { inbound_spi } => Some(Request::DeleteChild(inbound_spi)),
            RequestKind::DeleteIke => Some(Request::DeleteIke),
            RequestKind::RekeyChild { .. } | RequestKind::RekeyIke | RequestKind::CreateChild => {
                None
            }
        }
    }
}

/// Our request outstanding at export time (RFC 7296 §2.1). `Debug` prints only lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightRequest {
    /// What it is.
    pub kind: RequestKind,
    /// The request as sent.
    pub request: SentMessage,
    /// Transmissions so far (the first one included); the importer's retransmission budget
    /// is the connection's `retransmit.tries` minus these.
    pub transmissions: u32,
}

/// Work of an IKE SA waiting for the request window (RFC 7296 §2.3) at export time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueuedRequest {
    /// Rekey the Child SA with this inbound SPI.
    RekeyChild {
        /// Our inbound SPI.
        inbound_spi: u32,
    },
    /// Delete the Child SA with this inbound SPI.
    DeleteChild {
        /// Our inbound SPI.
        inbound_spi: u32,
    },
    /// Rekey the IKE SA.
    RekeyIke,
    /// Delete the IKE SA.
    DeleteIke,
    /// Create an additional Child SA (asked for with `Endpoint::create_child`).
    CreateChild {
        /// Our selectors as proposed.
        local_ts: Vec<TrafficSelector>,
        /// The peer's selectors as proposed.
        remote_ts: Vec<TrafficSelector>,
        /// The DH group the peer asked for with INVALID_KE_PAYLOAD.
        group: Option<DhId>,
        /// Already retried once after INVALID_KE_PAYLOAD.
        retried: bool,
    },
}

/// Where a Child SA is in its life (RFC 7296 §1.3.3, §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChildSaStatus {
    /// In use.
    Active,
    /// Our CREATE_CHILD_SA rekeying it is outstanding (never importable: see
    /// [`RequestKind::continues_after_import`]).
    Rekeying,
    /// Replaced by a new Child SA; waiting for its DELETE (ours, queued or in flight, when we
    /// started the rekey; the peer's otherwise).
    Rekeyed,
    /// Our DELETE for it is queued or in flight.
    Deleting,
}

/// A Child SA as its IKE SA knows it: what a later rekey or DELETE needs. Its keys and
/// sequence numbers are the data plane's (the `ChildSa` of its establishment) and are not
/// part of this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSaState {
    /// SPI the peer puts on packets to us (names the Child SA here).
    pub inbound_spi: u32,
    /// SPI we put on packets to the peer.
    pub outbound_spi: u32,
    /// The negotiated ESP algorithms (encryption and key length, integrity, PFS group of its
    /// exchange, ESN).
    pub suite: ChildSuite,
    /// Narrowed selectors of our side.
    pub local_ts: Vec<TrafficSelector>,
    /// Narrowed selectors of the peer's side.
    pub remote_ts: Vec<TrafficSelector>,
    /// Where it is in its life.
    pub status: ChildSaStatus,
    /// Time left until its soft lifetime (our rekey); `None` if not scheduled (the importer
    /// schedules it from the connection's lifetime, as for a new Child SA).
    pub rekey_in: Option<Duration>,
    /// Time left until its hard lifetime (our DELETE); `None` if not scheduled.
    pub expire_in: Option<Duration>,
    /// The PFS group the peer asked for with INVALID_KE_PAYLOAD in an earlier rekey.
    pub rekey_group: Option<DhId>,
    /// Reported to the driver. False for the redundant SA of a rekey collision (RFC 7296
    /// §2.8.1), which is deleted without events.
    pub reported: bool,
}

/// Everything needed to continue an established IKE SA in another [`Endpoint`] with the same
/// configuration (RFC 7296 §2.1-§2.3, §2.8, §2.18). Plain data; the keys are
/// [`crate::crypto::SecretBytes`] (zeroized on drop) and `Debug` prints none of them, nor
/// any carried message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSaState {
    /// The connection it belongs to (its configured name).
    pub conn: String,
    /// We are the original initiator (of IKE_SA_INIT, or of the rekey that created it).
    pub initiator: bool,
    /// Initiator's SPI.
    pub ispi: u64,
    /// Responder's SPI.
    pub rspi: u64,
    /// Our address and port (port 4500 once floated).
    pub local: SocketAddr,
    /// The peer's address and port, as last seen (NAT rebinding moves it).
    pub remote: SocketAddr,
    /// NAT detection and encapsulation.
    pub nat: NatState,
    /// The negotiated IKE SA algorithms.
    pub suite: IkeSuite,
    /// SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr (RFC 7296 §2.14).
    pub keys: IkeSaKeys,
    /// Message ID of our next request.
    pub next_msg_id: u32,
    /// Message ID of the next request expected from the peer.
    pub peer_msg_id: u32,
    /// Our last response (message ID `peer_msg_id - 1`), sent again for a retransmitted request.
    pub last_response: Option<SentMessage>,
    /// Both sides support IKE fragmentation (RFC 7383).
    pub fragmentation: bool,
    /// Its IKE_AUTH carried INITIAL_CONTACT.
    pub initial_contact: bool,
    /// Time since it was established (or its rekey completed).
    pub established_for: Duration,
    /// Time since the last sign of life from the peer (dead peer detection counts from it).
    pub idle_for: Option<Duration>,
    /// Time left until its soft lifetime (our IKE SA rekey); `None` if not scheduled.
    pub rekey_in: Option<Duration>,
    /// Time left until its hard lifetime (our DELETE); `None` if not scheduled.
    pub expire_in: Option<Duration>,
    /// Its Child SAs.
    pub children: Vec<ChildSaState>,
    /// Work waiting for the request window.
    pub queue: Vec<QueuedRequest>,
    /// Our request outstanding at export time, if any (see the module documentation).
    pub in_flight: Option<InFlightRequest>,
}

impl IkeSaState {
    /// The id the IKE SA has in an endpoint: our SPI.
    pub fn id(&self) -> IkeSaId {
        IkeSaId(if self.initiator { self.ispi } else { self.rspi })
    }

    /// Whether an import can continue it as far as the state itself goes (no CREATE_CHILD_SA of
    /// ours in flight); the importer checks the rest.
    pub fn continuable(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_none_or(|r| r.kind.continues_after_import())
    }
}

/// Why an [`IkeSaState`] was not imported. Nothing changed in the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// No connection of that name.
    #[error("no connection named {0}")]
    UnknownConnection(String),
    /// An IKE SA with our SPI of this state exists already.
    #[error("an IKE SA with SPI {0:016x} exists")]
    Duplicate(u64),
    /// One of its Child SAs' inbound SPIs is in use here.
    #[error("inbound Child SA SPI {0:08x} in use")]
    ChildSpiInUse(u32),
    /// The state does not fit the connection's configuration.
    #[error("state does not fit the connection: {0}")]
    ConfigMismatch(&'static str),
    /// The keys do not fit the suite (lengths) or the suite cannot be keyed.
    #[error("keys: {0}")]
    Keys(CryptoError),
    /// The state is inconsistent.
    #[error("malformed state: {0}")]
    Malformed(&'static str),
    /// A CREATE_CHILD_SA of ours was in flight: its answer needs secrets that are not exported
    /// (see the module documentation). Fall back to a fresh IKE SA.
    #[error("our {0:?} request was in flight")]
    ExchangeInFlight(RequestKind),
}

fn remaining(now: Instant, at: Option<Instant>) -> Option<Duration> {
    at.map(|t| t.saturating_duration_since(now))
}

fn anchor(now: Instant, d: Option<Duration>) -> Result<Option<Instant>, ImportError> {
    d.map(|d| {
        now.checked_add(d)
            .ok_or(ImportError::Malformed("lifetime out of range"))
    })
    .transpose()
}

fn status_out(s: ChildStatus) -> ChildSaStatus {
    match s {
        ChildStatus::Active => ChildSaStatus::Active,
        ChildStatus::Rekeying => ChildSaStatus::Rekeying,
        ChildStatus::Rekeyed => ChildSaStatus::Rekeyed,
        ChildStatus::Deleting => ChildSaStatus::Deleting,
    }
}

/// Checks carried datagrams: bounded, and IKE messages of this SA with this message ID, sent
/// by us (our role's I flag) as a request or response.
fn check_sent(
    m: &SentMessage,
    st: &IkeSaState,
    response: bool,
    what: &'static str,
) -> Result<(), ImportError> {
    if m.datagrams.is_empty() || m.datagrams.len() > MAX_DATAGRAMS {
        return Err(ImportError::Malformed(what));
    }
    for d in &m.datagrams {
        if d.len() > MAX_DATAGRAM_LEN {
            return Err(ImportError::Malformed(what));
        }
        let Ok(h) = Header::parse(d) else {
            return Err(ImportError::Malformed(what));
        };
        if h.ispi != st.ispi
            || h.rspi != st.rspi
            || h.message_id != m.message_id
            || h.is_response() != response
            || h.is_from_initiator() != st.initiator
            || h.length as usize != d.len()
        {
            return Err(ImportError::Malformed(what));
        }
    }
    Ok(())
}

impl Endpoint {
    /// Every established IKE SA that is not replaced by a rekey, as of `now`, in the order of
    /// their ids. See [`IkeSaState`] and the `export` module documentation for what is carried.
    pub fn export_ike_sas(&self, now: Instant) -> Vec<IkeSaState> {
        let mut ids: Vec<u64> = self.sas.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|k| self.sas.get(&k))
            .filter_map(|sa| self.export_sa(sa, now))
            .collect()
    }

    /// The IKE SA `id` as of `now`, if it is established and not replaced by a rekey.
    pub fn export_ike_sa(&self, id: IkeSaId, now: Instant) -> Option<IkeSaState> {
        self.sas.get(&id.0).and_then(|sa| self.export_sa(sa, now))
    }

    fn export_sa(&self, sa: &IkeSa, now: Instant) -> Option<IkeSaState> {
        let State::Established(est) = &sa.state else {
            return None;
        };
        if sa.superseded {
            return None;
        }
        let children = sa
            .children
            .iter()
            .filter_map(|&(inbound_spi, outbound_spi)| {
                let c = sa.child_info.get(&inbound_spi)?;
                Some(ChildSaState {
                    inbound_spi,
                    outbound_spi,
                    suite: c.suite,
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    status: status_out(c.status),
                    rekey_in: remaining(now, c.rekey_at),
                    expire_in: remaining(now, c.expire_at),
                    rekey_group: c.group,
                    reported: !sa.hidden.contains(&inbound_spi),
                })
            })
            .collect();
        let queue = sa
            .queue
            .iter()
            .map(|a| match a {
                Action::RekeyChild(s) => QueuedRequest::RekeyChild { inbound_spi: *s },
                Action::DeleteChild(s) => QueuedRequest::DeleteChild { inbound_spi: *s },
                Action::DeleteIke => QueuedRequest::DeleteIke,
                Action::RekeyIke => QueuedRequest::RekeyIke,
                Action::CreateChild(q) => QueuedRequest::CreateChild {
                    local_ts: q.local_ts.clone(),
                    remote_ts: q.remote_ts.clone(),
                    group: q.group,
                    retried: q.retried,
                },
            })
            .collect();
        let in_flight = sa.outstanding.as_ref().and_then(|o| {
            let kind = match o.kind {
                Request::RekeyChild => RequestKind::RekeyChild {
                    inbound_spi: sa.rekey.as_ref().map_or(0, |r| r.old_in),
                },
                k => RequestKind::from_request(k)?,
            };
            Some(InFlightRequest {
                kind,
                request: SentMessage {
                    message_id: o.msg_id,
                    datagrams: o.bytes.clone(),
                },
                transmissions: o.sent,
            })
        });
        Some(IkeSaState {
            conn: self.conns[sa.conn].name.clone(),
            initiator: sa.initiator,
            ispi: sa.ispi,
            rspi: sa.rspi,
            local: sa.local,
            remote: sa.remote,
            nat: NatState {
                local_behind_nat: sa.nat_local,
                peer_behind_nat: sa.nat_peer,
                udp_encap: sa.nat,
            },
            suite: est.keys.suite,
            keys: est.keys.sk.clone(),
            next_msg_id: sa.next_msg_id,
            peer_msg_id: sa.peer_msg_id,
            last_response: sa.cached.as_ref().map(|(id, set)| SentMessage {
                message_id: *id,
                datagrams: set.clone(),
            }),
            fragmentation: sa.frag,
            initial_contact: sa.initial_contact,
            established_for: now.saturating_duration_since(sa.established_at.unwrap_or(sa.started)),
            idle_for: sa.last_inbound.map(|l| now.saturating_duration_since(l)),
            rekey_in: remaining(now, sa.ike_rekey_at),
            expire_in: remaining(now, sa.ike_expire_at),
            children,
            queue,
            in_flight,
        })
    }

    /// Imports an IKE SA exported by another endpoint with the same configuration (the master
    /// of an HA pair) and runs it from now on as if it had been established here: timers are
    /// re-anchored to `now`, the SA is in every table (IKE SPI, responder index, inbound Child
    /// SA SPIs), nothing is sent. `Event::IkeSaImported` reports it. Refused, with nothing
    /// changed, when the connection is unknown, the state does not fit its configuration (IKE
    /// or ESP suite, local address), an IKE SA with its SPI or one of its inbound Child SA
    /// SPIs exists here, the keys do not fit the suite, the state is inconsistent, or a
    /// CREATE_CHILD_SA of ours was in flight (see the `export` module documentation).
    pub fn import_ike_sa(
        &mut self,
        now: Instant,
        state: IkeSaState,
    ) -> Result<IkeSaId, ImportError> {
        let idx = self
            .conns
            .iter()
            .position(|c| c.name == state.conn)
            .ok_or_else(|| ImportError::UnknownConnection(state.conn.clone()))?;
        let sa = self.build_imported(idx, now, &state)?;
        let id = sa.our_spi();
        for &(i, _) in &sa.children {
            self.inbound_spis.insert(i);
        }
        if !sa.initiator {
            self.responder_index
                .entry((sa.init_remote, sa.ispi))
                .or_insert(sa.rspi);
        }
        let conn = self.conns[idx].name.clone();
        info!(
            conn = %conn,
            spi = %format_args!("{id:016x}"),
            initiator = sa.initiator,
            children = sa.children.len(),
            next_msg_id = sa.next_msg_id,
            peer_msg_id = sa.peer_msg_id,
            in_flight = ?state.in_flight.as_ref().map(|r| r.kind),
            "IKE SA imported"
        );
        self.events.push_back(Event::IkeSaImported {
            conn,
            id: IkeSaId(id),
            initiator: sa.initiator,
            ispi: sa.ispi,
            rspi: sa.rspi,
            local: sa.local,
            remote: sa.remote,
            udp_encap: sa.nat || sa.local.port() == NATT_PORT,
            started: sa.started,
            initial_contact: sa.initial_contact,
            children: sa
                .children
                .iter()
                .filter(|c| !sa.hidden.contains(&c.0))
                .copied()
                .collect(),
        });
        self.sas.insert(id, sa);
        Ok(IkeSaId(id))
    }

    /// Checks `st` against connection `idx` and the endpoint's tables and builds the IKE SA
    /// (without registering it).
    fn build_imported(
        &self,
        idx: usize,
        now: Instant,
        st: &IkeSaState,
    ) -> Result<IkeSa, ImportError> {
        let conn = &self.conns[idx];
        if st.ispi == 0 || st.rspi == 0 {
            return Err(ImportError::Malformed("zero IKE SPI"));
        }
        let our_spi = st.id().0;
        if self.sas.contains_key(&our_spi) {
            return Err(ImportError::Duplicate(our_spi));
        }
        if st.local.is_ipv4() != st.remote.is_ipv4() {
            return Err(ImportError::Malformed("address families differ"));
        }
        if !(conn.local_addr.ip().is_unspecified() || conn.local_addr.ip() == st.local.ip()) {
            return Err(ImportError::ConfigMismatch(
                "local address is not the connection's",
            ));
        }
        if !negotiate::ike_suite_allowed(&st.suite, &conn.ike_proposals) {
            return Err(ImportError::ConfigMismatch(
                "IKE suite not allowed by the connection's proposals",
            ));
        }
        let keys =
            Keys::from_raw(st.suite, st.keys.clone(), st.initiator).map_err(ImportError::Keys)?;
        if let Some(r) = &st.last_response {
            if r.message_id.wrapping_add(1) != st.peer_msg_id {
                return Err(ImportError::Malformed(
                    "last response is not for the peer's last request",
                ));
            }
            check_sent(r, st, true, "last response")?;
        }
        let outstanding = match &st.in_flight {
            None => None,
            Some(f) => {
                let Some(kind) = f.kind.to_request() else {
                    return Err(ImportError::ExchangeInFlight(f.kind));
                };
                if f.request.message_id.wrapping_add(1) != st.next_msg_id {
                    return Err(ImportError::Malformed(
                        "in-flight request is not our last request",
                    ));
                }
                check_sent(&f.request, st, false, "in-flight request")?;
                let sent = f.transmissions.max(1);
                Some(Outstanding {
                    msg_id: f.request.message_id,
                    bytes: f.request.datagrams.clone(),
                    sent,
                    deadline: now
                        .checked_add(conn.retransmit.timeout(sent - 1))
                        .unwrap_or(now),
                    kind,
                })
            }
        };
        let mut children = Vec::with_capacity(st.children.len());
        let mut child_info = HashMap::with_capacity(st.children.len());
        let mut hidden = HashSet::new();
        for c in &st.children {
            if c.inbound_spi <= 255 {
                return Err(ImportError::Malformed("reserved inbound Child SA SPI"));
            }
            if self.inbound_spis.contains(&c.inbound_spi) {
                return Err(ImportError::ChildSpiInUse(c.inbound_spi));
            }
            if child_info.contains_key(&c.inbound_spi) {
                return Err(ImportError::Malformed("inbound Child SA SPI twice"));
            }
            if !negotiate::child_suite_allowed(&c.suite, &conn.esp_proposals, conn.esn_allowed) {
                return Err(ImportError::ConfigMismatch(
                    "Child SA suite not allowed by the connection's ESP proposals",
                ));
            }
            let status = match c.status {
                ChildSaStatus::Active => ChildStatus::Active,
                ChildSaStatus::Rekeyed => ChildStatus::Rekeyed,
                ChildSaStatus::Deleting => ChildStatus::Deleting,
                ChildSaStatus::Rekeying => {
                    return Err(ImportError::Malformed(
                        "Child SA being rekeyed without its exchange",
                    ));
                }
            };
            children.push((c.inbound_spi, c.outbound_spi));
            child_info.insert(
                c.inbound_spi,
                ChildInfo {
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    rekey_at: anchor(now, c.rekey_in)?,
                    expire_at: anchor(now, c.expire_in)?,
                    status,
                    group: c.rekey_group,
                    suite: c.suite,
                },
            );
            if !c.reported {
                hidden.insert(c.inbound_spi);
            }
        }
        let known = |s: u32| child_info.contains_key(&s);
        let mut queue = VecDeque::with_capacity(st.queue.len());
        for q in &st.queue {
            queue.push_back(match q {
                QueuedRequest::RekeyChild { inbound_spi } if known(*inbound_spi) => {
                    Action::RekeyChild(*inbound_spi)
                }
                QueuedRequest::DeleteChild { inbound_spi } if known(*inbound_spi) => {
                    Action::DeleteChild(*inbound_spi)
                }
                QueuedRequest::RekeyChild { .. } | QueuedRequest::DeleteChild { .. } => {
                    return Err(ImportError::Malformed(
                        "queued work for an unknown Child SA",
                    ));
                }
                QueuedRequest::RekeyIke => Action::RekeyIke,
                QueuedRequest::DeleteIke => Action::DeleteIke,
                QueuedRequest::CreateChild {
                    local_ts,
                    remote_ts,
                    group,
                    retried,
                } => Action::CreateChild(Box::new(QueuedCreate {
                    local_ts: local_ts.clone(),
                    remote_ts: remote_ts.clone(),
                    group: *group,
                    retried: *retried,
                })),
            });
        }
        if let Some(Request::DeleteChild(s)) = outstanding.as_ref().map(|o| o.kind)
            && !known(s)
        {
            return Err(ImportError::Malformed(
                "in-flight DELETE of an unknown Child SA",
            ));
        }
        // A Child SA being deleted has its DELETE queued or in flight; a state that lost it
        // (mapped from a replica that does not carry the queue) gets it back.
        for &(i, _) in &children {
            let deleting = child_info
                .get(&i)
                .is_some_and(|c| c.status == ChildStatus::Deleting);
            let pending = queue.contains(&Action::DeleteChild(i))
                || outstanding
                    .as_ref()
                    .is_some_and(|o| o.kind == Request::DeleteChild(i));
            if deleting && !pending {
                queue.push_back(Action::DeleteChild(i));
            }
        }
        let established = now.checked_sub(st.established_for).unwrap_or(now);
        let mut sa = IkeSa::new(
            idx,
            st.initiator,
            st.ispi,
            st.rspi,
            st.local,
            st.remote,
            established,
        );
        sa.established_at = Some(established);
        sa.nat = st.nat.udp_encap;
        sa.nat_local = st.nat.local_behind_nat;
        sa.nat_peer = st.nat.peer_behind_nat;
        sa.state = State::Established(Box::new(Established { keys }));
        sa.next_msg_id = st.next_msg_id;
        sa.peer_msg_id = st.peer_msg_id;
        sa.cached = st
            .last_response
            .as_ref()
            .map(|r| (r.message_id, r.datagrams.clone()));
        sa.outstanding = outstanding;
        sa.children = children;
        sa.child_info = child_info;
        sa.hidden = hidden;
        if sa.outstanding.is_none() && !queue.is_empty() {
            // The original would have started it already: at the first timeout, not now.
            sa.wake_at = Some(now);
        }
        sa.queue = queue;
        sa.last_inbound = Some(st.idle_for.and_then(|d| now.checked_sub(d)).unwrap_or(now));
        sa.ike_rekey_at = anchor(now, st.rekey_in)?;
        sa.ike_expire_at = anchor(now, st.expire_in)?;
        sa.frag = st.fragmentation;
        sa.initial_contact = st.initial_contact;
        Ok(sa)
    }

    /// Drops the IKE SA `id` and its Child SAs silently: no DELETE, no events (an HA master
    /// handing its SAs over, a standby discarding an imported SA). Returns whether it existed.
    pub fn forget_ike_sa(&mut self, id: IkeSaId) -> bool {
        let Some(sa) = self.sas.remove(&id.0) else {
            return false;
        };
        debug!(conn = %self.conns[sa.conn].name, spi = %format_args!("{:016x}", id.0), "IKE SA forgotten");
        self.remove_sa(&sa);
        true
    }
}
