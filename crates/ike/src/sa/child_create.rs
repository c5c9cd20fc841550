//! Child SA creation (RFC 7296 §1.3.1, §2.9, §2.17): what every exchange that creates a Child SA
//! shares (IKE_AUTH, CREATE_CHILD_SA for an additional Child SA and for a Child SA rekey): the
//! initiator's SA / Nonce / KE / TS payloads, the responder's proposal selection, selector
//! narrowing against the connection's policies, key exchange and reply, the initiator's check
//! of that reply, and key derivation into the `ChildSa` the driver installs. Also the
//! CREATE_CHILD_SA exchange that adds a Child SA to an established IKE SA, in both roles.

use super::state::{Action, IkeSa, Keys, PendingCreate, QueuedCreate, Request, State};
use super::*;
use crate::crypto::CryptoError;
use crate::proposal::ChildSuite;
use crate::wire::ProposalRepr;

/// The Child SA payloads of a CREATE_CHILD_SA request (RFC 7296 §1.3.1, §1.3.3): SA, Ni,
/// TSi, TSr required, KEi optional.
pub(super) struct ChildRequest<'a> {
    pub offer: &'a SaPayload,
    pub ni: &'a [u8],
    pub ke: Option<&'a KePayload>,
    pub tsi: &'a [TrafficSelector],
    pub tsr: &'a [TrafficSelector],
}

impl<'a> ChildRequest<'a> {
    /// `None` when a required payload is missing.
    pub(super) fn parse(inner: &'a [Payload]) -> Option<Self> {
        let find = |t: PayloadType| inner.iter().find(|p| p.payload_type() == t);
        let (
            Some(Payload::Sa(offer)),
            Some(Payload::Nonce(ni)),
            Some(Payload::TsI(tsi)),
            Some(Payload::TsR(tsr)),
        ) = (
            find(PayloadType::SA),
            find(PayloadType::NONCE),
            find(PayloadType::TSI),
            find(PayloadType::TSR),
        )
        else {
            return None;
        };
        let ke = match find(PayloadType::KE) {
            Some(Payload::Ke(k)) => Some(k),
            _ => None,
        };
        Some(Self {
            offer,
            ni,
            ke,
            tsi,
            tsr,
        })
    }
}

/// Our half of an exchange that creates a Child SA, kept until its reply arrives.
#[derive(Debug)]
pub(crate) struct ChildOffer {
    /// Our inbound SPI (reserved in the endpoint's SPI table).
    pub spi: u32,
    /// Our nonce: the IKE SA's Ni in IKE_AUTH, a fresh one in CREATE_CHILD_SA.
    pub ni: Vec<u8>,
    /// Our PFS key exchange, if the offer asks for one.
    pub kx: Option<KeyExchange>,
    /// The SA payload as sent.
    pub offer: SaPayload,
    /// Our selectors (TSi) and the peer's (TSr), as proposed.
    pub tsi: Vec<TrafficSelector>,
    pub tsr: Vec<TrafficSelector>,
}

impl ChildOffer {
    /// The request's Child SA payloads in RFC 7296 order: SA, then (CREATE_CHILD_SA only: IKE_AUTH
    /// takes its nonces from IKE_SA_INIT) Ni and KEi, then TSi, TSr.
    pub(crate) fn payloads(&self, create_child_sa: bool) -> Vec<Payload> {
        let mut out = vec![Payload::Sa(self.offer.clone())];
        if create_child_sa {
            out.push(Payload::Nonce(self.ni.clone()));
            if let Some(k) = &self.kx {
                out.push(Payload::Ke(KePayload {
                    group: k.group().0,
                    data: k.public_value().to_vec(),
                }));
            }
        }
        out.push(Payload::TsI(self.tsi.clone()));
        out.push(Payload::TsR(self.tsr.clone()));
        out
    }
}

/// A reply the initiator accepted: the negotiated suite, the responder's SPI, the keys and the
/// selectors the Child SA carries.
pub(super) struct Accepted {
    pub suite: ChildSuite,
    pub peer_spi: u32,
    pub km: ChildSaKeys,
    pub tsi: Vec<TrafficSelector>,
    pub tsr: Vec<TrafficSelector>,
    pub nr: Vec<u8>,
}

/// Why the initiator cannot use a reply.
#[derive(Debug)]
pub(super) enum ReplyError {
    /// The responder refused with this error notify.
    Notify(NotifyPayload),
    /// The reply breaks the protocol.
    Unusable(&'static str),
    /// The responder's selectors are not within what we proposed.
    TsUnacceptable,
}

impl ReplyError {
    pub(super) fn reason(&self) -> FailReason {
        match self {
            ReplyError::Notify(n) => match n.ty {
                NotifyType::NO_PROPOSAL_CHOSEN => FailReason::NoProposalChosen,
                NotifyType::TS_UNACCEPTABLE => FailReason::TsUnacceptable,
                NotifyType::INVALID_KE_PAYLOAD => FailReason::InvalidKePayload,
                t => FailReason::PeerError(t),
            },
            ReplyError::Unusable(why) => FailReason::Protocol(why),
            ReplyError::TsUnacceptable => FailReason::TsUnacceptable,
        }
    }
}

/// How the initiator treats the selectors of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyTs {
    /// A new Child SA: the reply's TSi/TSr (narrowed by the responder, §2.9) are required and
    /// must lie within what we proposed.
    Narrowed,
    /// A rekey: the Child SA keeps the selectors it had (§2.8).
    Kept,
}

/// KEYMAT for a Child SA (RFC 7296 §2.17): prf+(SK_d, [g^ir (new) |] Ni | Nr).
pub(super) fn child_keys(
    keys: &Keys,
    g_ir: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    suite: &ChildSuite,
) -> Result<ChildSaKeys, CryptoError> {
    child_sa_keys(
        &keys.prf,
        keys.sk.sk_d.as_bytes(),
        g_ir,
        ni,
        nr,
        suite.encr.id,
        suite.encr.key_bits,
        negotiate::real_integ(suite.integ),
    )
}

/// Initiator: checks the reply to our Child SA offer (one proposal of ours, the KE of the
/// chosen group, selectors within ours) and derives the keys. `ike_nr` is the IKE SA's Nr for
/// IKE_AUTH (whose reply carries no nonce).
pub(super) fn accept_reply(
    keys: &Keys,
    offer: &ChildOffer,
    ike_nr: Option<&[u8]>,
    inner: &[Payload],
    ts_rule: ReplyTs,
) -> Result<Accepted, ReplyError> {
    if let Some(n) = inner.iter().find_map(|x| match x {
        Payload::Notify(n) if n.ty.is_error() => Some(n),
        _ => None,
    }) {
        return Err(ReplyError::Notify(n.clone()));
    }
    let find = |t: PayloadType| inner.iter().find(|x| x.payload_type() == t);
    let nr = match (ike_nr, find(PayloadType::NONCE)) {
        (Some(n), _) => n,
        (None, Some(Payload::Nonce(n))) => n.as_slice(),
        _ => return Err(ReplyError::Unusable("missing SA or Nonce")),
    };
    let Some(Payload::Sa(sa_p)) = find(PayloadType::SA) else {
        return Err(ReplyError::Unusable(if ike_nr.is_some() {
            "IKE_AUTH response without Child SA"
        } else {
            "missing SA or Nonce"
        }));
    };
    let Some((suite, peer_spi)) = negotiate::accept_esp_reply(sa_p, &offer.offer) else {
        return Err(ReplyError::Unusable(
            "responder chose an ESP proposal we did not offer",
        ));
    };
    let g_ir = match (suite.dh.filter(|g| *g != DhId::NONE), &offer.kx) {
        (None, _) => None,
        (Some(g), Some(kx)) if kx.group() == g => match find(PayloadType::KE) {
            Some(Payload::Ke(k)) if k.group == g.0 => match kx.agree(&k.data) {
                Ok(s) => Some(s),
                Err(_) => return Err(ReplyError::Unusable("invalid KE value")),
            },
            _ => return Err(ReplyError::Unusable("missing KE")),
        },
        _ => return Err(ReplyError::Unusable("DH group mismatch")),
    };
    let (tsi, tsr) = match ts_rule {
        ReplyTs::Kept => (offer.tsi.clone(), offer.tsr.clone()),
        ReplyTs::Narrowed => match (find(PayloadType::TSI), find(PayloadType::TSR)) {
            (Some(Payload::TsI(tsi)), Some(Payload::TsR(tsr))) => {
                if !ts::acceptable_reply(&offer.tsi, tsi) || !ts::acceptable_reply(&offer.tsr, tsr)
                {
                    return Err(ReplyError::TsUnacceptable);
                }
                (tsi.clone(), tsr.clone())
            }
            _ => return Err(ReplyError::Unusable("Child SA reply without TSi/TSr")),
        },
    };
    let km = child_keys(
        keys,
        g_ir.as_ref().map(|s| s.as_bytes()),
        &offer.ni,
        nr,
        &suite,
    )
    .map_err(|_| ReplyError::Unusable("child key derivation"))?;
    Ok(Accepted {
        suite,
        peer_spi,
        km,
        tsi,
        tsr,
        nr: nr.to_vec(),
    })
}

/// Which exchange the responder answers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Exchange<'a> {
    /// IKE_AUTH: no PFS, the IKE SA's nonces (`nr` is ours).
    IkeAuth { nr: &'a [u8] },
    /// CREATE_CHILD_SA for an additional Child SA.
    NewChild,
    /// CREATE_CHILD_SA rekeying a Child SA with these selectors (ours, the peer's).
    Rekey {
        local_ts: &'a [TrafficSelector],
        remote_ts: &'a [TrafficSelector],
    },
}

/// The responder's accepted Child SA: the reply payloads and what `child_established` needs.
pub(super) struct Answer {
    pub spi: u32,
    pub peer_spi: u32,
    pub suite: ChildSuite,
    pub km: ChildSaKeys,
    reply: ProposalRepr,
    /// Our nonce (a fresh one in CREATE_CHILD_SA).
    pub nr: Vec<u8>,
    /// Whether the reply carries Nr (CREATE_CHILD_SA).
    with_nonce: bool,
    ke: Option<KePayload>,
    /// Our selectors (the reply's TSr) and the peer's (its TSi).
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
}

impl Answer {
    /// SA, [Nr, [KEr]], TSi, TSr.
    pub(super) fn payloads(&self) -> Vec<Payload> {
        let mut out = vec![Payload::Sa(SaPayload {
            proposals: vec![self.reply.clone()],
        })];
        if self.with_nonce {
            out.push(Payload::Nonce(self.nr.clone()));
        }
        if let Some(k) = &self.ke {
            out.push(Payload::Ke(k.clone()));
        }
        out.push(Payload::TsI(self.remote_ts.clone()));
        out.push(Payload::TsR(self.local_ts.clone()));
        out
    }
}

/// The responder refuses the Child SA: the notify to answer with and what to report.
#[derive(Debug)]
pub(super) struct Refusal {
    pub notify: NotifyType,
    pub data: Vec<u8>,
    pub reason: FailReason,
    pub drop: DropReason,
}

impl Refusal {
    pub(super) fn new(notify: NotifyType, reason: FailReason, drop: DropReason) -> Self {
        Self {
            notify,
            data: Vec::new(),
            reason,
            drop,
        }
    }

    pub(super) fn payload(&self) -> Payload {
        Payload::Notify(NotifyPayload::new(self.notify, self.data.clone()))
    }

    /// Whether the peer should not simply try again (it gets a `ChildSaFailed`).
    pub(super) fn is_final(&self) -> bool {
        !matches!(
            self.notify,
            NotifyType::INVALID_KE_PAYLOAD | NotifyType::TEMPORARY_FAILURE
        )
    }
}

impl Endpoint {
    /// Initiator of CREATE_CHILD_SA: a new inbound SPI, a nonce and (with PFS, `group`) a key
    /// exchange, with our ESP proposals (DH groups kept, §1.3.1).
    pub(super) fn child_offer(
        &mut self,
        conn: usize,
        tsi: Vec<TrafficSelector>,
        tsr: Vec<TrafficSelector>,
        group: Option<DhId>,
    ) -> Option<ChildOffer> {
        let kx = match group {
            Some(g) => match KeyExchange::generate(g, &mut *self.rng) {
                Ok(k) => Some(k),
                Err(_) => {
                    warn!(%g, "cannot generate KE for CREATE_CHILD_SA");
                    return None;
                }
            },
            None => None,
        };
        let c = &self.conns[conn];
        let (props, esn) = (c.esp_proposals.clone(), c.esn_allowed);
        let spi = self.new_child_spi();
        let ni = self.nonce();
        let offer = negotiate::esp_rekey_offer(&props, spi, esn);
        Some(ChildOffer {
            spi,
            ni,
            kx,
            offer,
            tsi,
            tsr,
        })
    }

    /// Initiator of IKE_AUTH: the first Child SA with the configured selectors, keyed from the
    /// IKE SA (no KE, the IKE_SA_INIT nonces).
    pub(super) fn auth_child_offer(&mut self, conn: usize, ni: &[u8]) -> ChildOffer {
        let spi = self.new_child_spi();
        let c = &self.conns[conn];
        ChildOffer {
            spi,
            ni: ni.to_vec(),
            kx: None,
            offer: negotiate::esp_offer(&c.esp_proposals, spi, c.esn_allowed),
            tsi: ts::proposed(&c.local_ts),
            tsr: ts::proposed(&c.remote_ts),
        }
    }

    /// Responder: selects the peer's ESP proposal, narrows its selectors against the
    /// connection's policies (not for a rekey, which keeps the Child SA's), answers its key
    /// exchange and derives the keys. On refusal nothing stays reserved.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_child(
        &mut self,
        sa: &IkeSa,
        ex: Exchange<'_>,
        offer: &SaPayload,
        ni: &[u8],
        ke: Option<&KePayload>,
        tsi: &[TrafficSelector],
        tsr: &[TrafficSelector],
    ) -> Result<Answer, Refusal> {
        let spi = self.new_child_spi();
        let r = self.answer_child_inner(sa, ex, offer, ni, ke, tsi, tsr, spi);
        if r.is_err() {
            self.inbound_spis.remove(&spi);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn answer_child_inner(
        &mut self,
        sa: &IkeSa,
        ex: Exchange<'_>,
        offer: &SaPayload,
        ni: &[u8],
        ke: Option<&KePayload>,
        tsi: &[TrafficSelector],
        tsr: &[TrafficSelector],
        spi: u32,
    ) -> Result<Answer, Refusal> {
        let conn = &self.conns[sa.conn];
        let selected = match ex {
            Exchange::IkeAuth { .. } => {
                negotiate::select_esp(offer, &conn.esp_proposals, conn.esn_allowed, spi)
            }
            _ => negotiate::select_esp_rekey(offer, &conn.esp_proposals, conn.esn_allowed, spi),
        };
        let Some((reply, suite, peer_spi)) = selected else {
            warn!(conn = %conn.name, "NO_PROPOSAL_CHOSEN for Child SA: {}", negotiate::describe_mismatch(offer, &conn.esp_proposals));
            return Err(Refusal::new(
                NotifyType::NO_PROPOSAL_CHOSEN,
                FailReason::NoProposalChosen,
                DropReason::Refused(NotifyType::NO_PROPOSAL_CHOSEN),
            ));
        };
        let (local_ts, remote_ts) = match ex {
            Exchange::Rekey {
                local_ts,
                remote_ts,
            } => (local_ts.to_vec(), remote_ts.to_vec()),
            Exchange::IkeAuth { .. } | Exchange::NewChild => {
                let policies = conn.child_policies();
                match ts::narrow_policies(tsi, tsr, &policies) {
                    Some((_, n_tsi, n_tsr)) => (n_tsr, n_tsi),
                    None => {
                        warn!(
                            conn = %conn.name,
                            "TS_UNACCEPTABLE: peer proposed TSi {} TSr {}; no policy allows it ({})",
                            ts::display(tsi), ts::display(tsr),
                            policies.iter().map(|p| format!("local {} remote {}", ts::display(&p.local_ts), ts::display(&p.remote_ts))).collect::<Vec<_>>().join("; ")
                        );
                        return Err(Refusal::new(
                            NotifyType::TS_UNACCEPTABLE,
                            FailReason::TsUnacceptable,
                            DropReason::Refused(NotifyType::TS_UNACCEPTABLE),
                        ));
                    }
                }
            }
        };
        let (nr, with_nonce) = match ex {
            Exchange::IkeAuth { nr } => (nr.to_vec(), false),
            _ => (self.nonce(), true),
        };
        let mut ke_out = None;
        let mut g_ir = None;
        if let Some(g) = suite.dh.filter(|g| *g != DhId::NONE && with_nonce) {
            let Some(peer_ke) = ke.filter(|k| k.group == g.0) else {
                let mut r = Refusal::new(
                    NotifyType::INVALID_KE_PAYLOAD,
                    FailReason::InvalidKePayload,
                    DropReason::Refused(NotifyType::INVALID_KE_PAYLOAD),
                );
                r.data = g.0.to_be_bytes().to_vec();
                return Err(r);
            };
            let kx = KeyExchange::generate(g, &mut *self.rng);
            let shared = kx.as_ref().ok().and_then(|k| k.agree(&peer_ke.data).ok());
            let (Ok(kx), Some(shared)) = (kx, shared) else {
                return Err(Refusal::new(
                    NotifyType::INVALID_SYNTAX,
                    FailReason::Protocol("bad KE in CREATE_CHILD_SA"),
                    DropReason::Invalid("bad KE in CREATE_CHILD_SA"),
                ));
            };
            ke_out = Some(KePayload {
                group: g.0,
                data: kx.public_value().to_vec(),
            });
            g_ir = Some(shared);
        }
        let km = sa
            .state
            .keys()
            .map(|k| child_keys(k, g_ir.as_ref().map(|s| s.as_bytes()), ni, &nr, &suite));
        let Some(Ok(km)) = km else {
            return Err(Refusal::new(
                NotifyType::NO_PROPOSAL_CHOSEN,
                FailReason::Protocol("child key derivation"),
                DropReason::Invalid("child key derivation"),
            ));
        };
        Ok(Answer {
            spi,
            peer_spi,
            suite,
            km,
            reply,
            nr,
            with_nonce,
            ke: ke_out,
            local_ts,
            remote_ts,
        })
    }

    /// Reports a Child SA that was not created.
    pub(super) fn child_failed(
        &mut self,
        sa: &IkeSa,
        initiator: bool,
        reason: FailReason,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) {
        let conn = self.conns[sa.conn].name.clone();
        warn!(
            conn = %conn, ?reason, initiator,
            local_ts = %ts::display(&local_ts), remote_ts = %ts::display(&remote_ts),
            "Child SA not established"
        );
        self.events.push_back(Event::ChildSaFailed {
            conn,
            id: IkeSaId(sa.our_spi()),
            reason,
            initiator,
            local_ts,
            remote_ts,
        });
    }

    /// Empties the request queue of an IKE SA that is going away; additional Child SAs still
    /// waiting in it (or outstanding) fail with `reason`.
    pub(super) fn drop_queue(&mut self, sa: &mut IkeSa, reason: FailReason) {
        if let Some(p) = sa.create.take() {
            self.inbound_spis.remove(&p.child.spi);
            self.child_failed(sa, true, reason.clone(), p.child.tsi, p.child.tsr);
        }
        for a in std::mem::take(&mut sa.queue) {
            if let Action::CreateChild(q) = a {
                let q = *q;
                self.child_failed(sa, true, reason.clone(), q.local_ts, q.remote_ts);
            }
        }
    }

    // ------------------------------------------------------------------ initiator

    /// Queues a new Child SA with these selectors on the established IKE SA `id` (sent when the
    /// request window is free, RFC 7296 §1.3.1). `Event::ChildSaEstablished` (initiator: true,
    /// narrowed selectors) or `Event::ChildSaFailed` (initiator: true, these selectors)
    /// follows. False if `id` is not an established IKE SA. Empty selector lists mean any
    /// (IPv4). On an IKE SA replaced by a rekey the Child SA is created on its successor.
    pub fn create_child(
        &mut self,
        id: IkeSaId,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        now: Instant,
    ) -> bool {
        let mut key = id.0;
        // Follow rekeys (bounded: each successor is a newer SA).
        for _ in 0..16 {
            match self.sas.get(&key) {
                Some(s) if s.superseded => match s.successor {
                    Some(next) => key = next,
                    None => return false,
                },
                Some(_) => break,
                None => return false,
            }
        }
        let Some(mut sa) = self.sas.remove(&key) else {
            return false;
        };
        let ok = matches!(sa.state, State::Established(_)) && !sa.superseded;
        if ok {
            sa.queue
                .push_back(Action::CreateChild(Box::new(QueuedCreate {
                    local_ts: ts::proposed(&local_ts),
                    remote_ts: ts::proposed(&remote_ts),
                    group: None,
                    retried: false,
                })));
            self.service(&mut sa, now);
        }
        self.sas.insert(key, sa);
        ok
    }

    /// Sends a queued CREATE_CHILD_SA for an additional Child SA: SA, Ni, [KEi], TSi, TSr.
    pub(super) fn start_create(&mut self, sa: &mut IkeSa, q: QueuedCreate, now: Instant) {
        let group = q
            .group
            .or_else(|| negotiate::esp_rekey_group(&self.conns[sa.conn].esp_proposals));
        let Some(child) = self.child_offer(sa.conn, q.local_ts.clone(), q.remote_ts.clone(), group)
        else {
            self.child_failed(
                sa,
                true,
                FailReason::Protocol("cannot generate KE"),
                q.local_ts,
                q.remote_ts,
            );
            return;
        };
        let payloads = child.payloads(true);
        let spi = child.spi;
        info!(
            conn = %self.conns[sa.conn].name,
            inbound_spi = %format_args!("{spi:08x}"),
            local_ts = %ts::display(&child.tsi), remote_ts = %ts::display(&child.tsr),
            pfs = ?group,
            "creating additional Child SA"
        );
        sa.create = Some(PendingCreate {
            child,
            retried: q.retried,
        });
        if !self.send_protected(
            sa,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::CreateChild,
            now,
        ) {
            self.inbound_spis.remove(&spi);
            sa.create = None;
            self.child_failed(
                sa,
                true,
                FailReason::Protocol("cannot send CREATE_CHILD_SA"),
                q.local_ts,
                q.remote_ts,
            );
        }
    }

    /// The answer to our CREATE_CHILD_SA for an additional Child SA.
    pub(super) fn create_response(&mut self, inner: Vec<Payload>, sa: &mut IkeSa) {
        let Some(p) = sa.create.take() else { return };
        let Some(keys) = sa.state.keys() else {
            self.inbound_spis.remove(&p.child.spi);
            return;
        };
        match accept_reply(keys, &p.child, None, &inner, ReplyTs::Narrowed) {
            Ok(a) => {
                self.child_established(
                    sa,
                    true,
                    p.child.spi,
                    a.peer_spi,
                    a.suite,
                    a.km,
                    a.tsi,
                    a.tsr,
                    None,
                );
            }
            Err(e) => {
                self.inbound_spis.remove(&p.child.spi);
                if let ReplyError::Notify(n) = &e
                    && n.ty == NotifyType::INVALID_KE_PAYLOAD
                    && !p.retried
                    && let Ok(b) = <[u8; 2]>::try_from(n.data.as_slice())
                {
                    let g = DhId(u16::from_be_bytes(b));
                    let ours = p.child.kx.as_ref().map(KeyExchange::group);
                    if g != DhId::NONE
                        && Some(g) != ours
                        && KeyExchange::supported(g)
                        && negotiate::group_offered(&self.conns[sa.conn].esp_proposals, g)
                    {
                        info!(conn = %self.conns[sa.conn].name, %g, "CREATE_CHILD_SA: peer asks for another DH group; retrying");
                        sa.queue
                            .push_front(Action::CreateChild(Box::new(QueuedCreate {
                                local_ts: p.child.tsi,
                                remote_ts: p.child.tsr,
                                group: Some(g),
                                retried: true,
                            })));
                        return;
                    }
                }
                self.child_failed(sa, true, e.reason(), p.child.tsi, p.child.tsr);
            }
        }
    }

    // ------------------------------------------------------------------ responder

    /// The peer's CREATE_CHILD_SA for an additional Child SA (no REKEY_SA, no IKE proposal;
    /// RFC 7296 §1.3.1): answered with SA, Nr, [KEr], TSi, TSr narrowed against our policies.
    pub(super) fn new_child_request(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        req: Header,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
    ) -> Result<(), DropReason> {
        let Some(r) = ChildRequest::parse(&inner) else {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::INVALID_SYNTAX,
                DropReason::Invalid("CREATE_CHILD_SA without SA/Nonce/TS"),
            );
        };
        let (tsi, tsr) = (r.tsi, r.tsr);
        match self.answer_child(sa, Exchange::NewChild, r.offer, r.ni, r.ke, tsi, tsr) {
            Ok(a) => {
                self.respond(sa, req, local, remote, a.payloads());
                self.answer_established(sa, a, None);
                Ok(())
            }
            Err(r) => {
                self.respond(sa, req, local, remote, vec![r.payload()]);
                if r.is_final() {
                    self.child_failed(sa, false, r.reason.clone(), tsr.to_vec(), tsi.to_vec());
                }
                Err(r.drop)
            }
        }
    }

    /// Responder: the Child SA of an answer we sent is established (inbound uses the
    /// initiator-to-responder keys); `replaces` as for [`Self::child_established`].
    pub(super) fn answer_established(
        &mut self,
        sa: &mut IkeSa,
        a: Answer,
        replaces: Option<(u32, u32, bool)>,
    ) {
        self.child_established(
            sa,
            false,
            a.spi,
            a.peer_spi,
            a.suite,
            a.km,
            a.local_ts,
            a.remote_ts,
            replaces,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn child_established(
        &mut self,
        sa: &mut IkeSa,
        initiator: bool,
        inbound_spi: u32,
        outbound_spi: u32,
        suite: ChildSuite,
        km: ChildSaKeys,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        replaces: Option<(u32, u32, bool)>,
    ) {
        self.register_child(sa, inbound_spi, local_ts.clone(), remote_ts.clone(), suite);
        let i2r = DirectionKeys {
            encr: km.encr_i.clone(),
            integ: km.integ_i.clone(),
        };
        let r2i = DirectionKeys {
            encr: km.encr_r.clone(),
            integ: km.integ_r.clone(),
        };
        let (inbound, outbound) = if initiator { (r2i, i2r) } else { (i2r, r2i) };
        let encr_key_bits = suite.encr.key_bits.unwrap_or_else(|| {
            suite
                .encr
                .id
                .allowed_key_bits()
                .first()
                .copied()
                .unwrap_or(0)
        });
        let conn = &self.conns[sa.conn];
        let child = ChildSa {
            conn: conn.name.clone(),
            ike_sa: IkeSaId(sa.our_spi()),
            initiator,
            inbound_spi,
            outbound_spi,
            encr: suite.encr.id,
            encr_key_bits,
            integ: negotiate::real_integ(suite.integ),
            esn: suite.esn == crate::transform::EsnId::YES,
            inbound,
            outbound,
            local_ts,
            remote_ts,
            local: sa.local,
            remote: sa.remote,
            udp_encap: sa.nat || sa.local.port() == NATT_PORT,
        };
        info!(
            conn = %conn.name,
            inbound_spi = %format_args!("{inbound_spi:08x}"),
            outbound_spi = %format_args!("{outbound_spi:08x}"),
            encr = %child.encr, bits = encr_key_bits, integ = ?child.integ, esn = child.esn,
            local_ts = %ts::display(&child.local_ts), remote_ts = %ts::display(&child.remote_ts),
            udp_encap = child.udp_encap,
            "Child SA established"
        );
        sa.children.push((inbound_spi, outbound_spi));
        self.counters.child_established += 1;
        match replaces {
            Some((old_in, old_out, outbound_now)) => {
                self.counters.child_rekeyed += 1;
                self.events.push_back(Event::ChildSaRekeyed {
                    conn: child.conn.clone(),
                    id: child.ike_sa,
                    old_inbound_spi: old_in,
                    old_outbound_spi: old_out,
                    new: Box::new(child),
                    outbound_now,
                });
            }
            None => self
                .events
                .push_back(Event::ChildSaEstablished(Box::new(child))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Psk, TestRng};
    use crate::proposal::Proposal;

    fn endpoint(local: [u8; 4], remote: [u8; 4], seed: u64) -> Endpoint {
        let c = ConnectionConfig::new(
            "site",
            SocketAddr::from((local, 500)),
            SocketAddr::from((remote, 500)),
            Psk::from("k"),
            vec![Proposal::parse_ike("aes256-sha256-modp2048").expect("proposal")],
            vec![Proposal::parse_esp("aes256gcm16-x25519").expect("proposal")],
        );
        Endpoint::new(vec![c], Box::new(TestRng::new(seed)))
    }

    /// Two endpoints with one established IKE SA; returns each side's SA (out of its table).
    fn established() -> (Endpoint, IkeSa, Endpoint, IkeSa) {
        let (mut a, mut b) = (
            endpoint([192, 0, 2, 1], [192, 0, 2, 2], 1),
            endpoint([192, 0, 2, 2], [192, 0, 2, 1], 2),
        );
        let now = Instant::now();
        a.initiate("site", now).expect("initiate");
        for _ in 0..10 {
            while let Some(t) = a.poll_transmit() {
                let _ = b.handle(now, t.remote, t.local, &t.payload);
            }
            while let Some(t) = b.poll_transmit() {
                let _ = a.handle(now, t.remote, t.local, &t.payload);
            }
        }
        let take = |ep: &mut Endpoint| {
            let k = *ep.sas.keys().next().expect("one IKE SA");
            let sa = ep.sas.remove(&k).expect("present");
            assert!(matches!(sa.state, State::Established(_)));
            sa
        };
        let (sa, sb) = (take(&mut a), take(&mut b));
        (a, sa, b, sb)
    }

    #[test]
    fn pfs_keys_include_the_key_exchange() {
        let (mut a, sa, mut b, sb) = established();
        let ts = vec![TrafficSelector::any_v4()];
        let group = negotiate::esp_rekey_group(&a.conns[0].esp_proposals);
        assert_eq!(group, Some(DhId::CURVE25519));
        let offer = a
            .child_offer(sa.conn, ts.clone(), ts.clone(), group)
            .expect("offer");
        let req = offer.payloads(true);
        let ke = req.iter().find_map(|p| match p {
            Payload::Ke(k) => Some(k.clone()),
            _ => None,
        });
        assert!(ke.is_some(), "KEi in the request");
        let answer = b
            .answer_child(
                &sb,
                Exchange::NewChild,
                &offer.offer,
                &offer.ni,
                ke.as_ref(),
                &ts,
                &ts,
            )
            .expect("accepted");
        let reply = answer.payloads();
        assert!(reply.iter().any(|p| matches!(p, Payload::Ke(_))), "KEr");
        let keys = sa.state.keys().expect("keys");
        let got = accept_reply(keys, &offer, None, &reply, ReplyTs::Narrowed).expect("reply ok");
        // Both sides agree.
        assert_eq!(got.km.encr_i, answer.km.encr_i);
        assert_eq!(got.km.encr_r, answer.km.encr_r);
        assert_eq!(got.suite.dh, Some(DhId::CURVE25519));
        // KEYMAT = prf+(SK_d, g^ir | Ni | Nr), not prf+(SK_d, Ni | Nr).
        let no_pfs = child_keys(keys, None, &offer.ni, &got.nr, &got.suite).expect("keys");
        assert_ne!(no_pfs.encr_i, got.km.encr_i);
        assert_ne!(no_pfs.encr_r, got.km.encr_r);
        let kr = reply
            .iter()
            .find_map(|p| match p {
                Payload::Ke(k) => Some(k.data.clone()),
                _ => None,
            })
            .expect("KEr");
        let g_ir = offer.kx.as_ref().expect("kx").agree(&kr).expect("agree");
        let pfs =
            child_keys(keys, Some(g_ir.as_bytes()), &offer.ni, &got.nr, &got.suite).expect("keys");
        assert_eq!(pfs.encr_i, got.km.encr_i);
        assert_eq!(pfs.encr_r, got.km.encr_r);
    }
}
