//! SA negotiation glue (RFC 7296 §2.7, §3.3): configured [`Proposal`]s to SA payloads and back,
//! responder selection (the `proposal` module's [`select`], the initiator's order), and checking
//! the responder's single choice as initiator.

use crate::crypto::{Integ, KeyExchange, Prf};
use crate::proposal::{ChildSuite, IkeSuite, Proposal, Protocol, Transform, select};
use crate::transform::{DhId, EsnId, IntegId, ProtocolId, TransformType};
use crate::wire::{ATTR_KEY_LENGTH, Attribute, ProposalRepr, SaPayload, TransformRepr};

fn to_repr(p: &Proposal, number: u8, spi: Vec<u8>) -> ProposalRepr {
    let transforms = p
        .transforms()
        .map(|t| TransformRepr {
            ttype: t.ty.0,
            id: t.id,
            attributes: t
                .key_len
                .map(|b| vec![Attribute::Tv(ATTR_KEY_LENGTH, b)])
                .unwrap_or_default(),
        })
        .collect();
    ProposalRepr {
        number,
        protocol: p.protocol.id(),
        spi,
        transforms,
    }
}

/// A received proposal as a [`Proposal`]; transforms with attributes we do not understand are
/// dropped (RFC 7296 §3.3.6), proposals with unknown transform types are unusable (`None`).
fn from_repr(p: &ProposalRepr) -> Option<Proposal> {
    let protocol = Protocol::from_id(p.protocol)?;
    let ts = p
        .transforms
        .iter()
        .filter(|t| t.attributes_understood())
        .map(|t| Transform {
            ty: TransformType(t.ttype),
            id: t.id,
            key_len: t.key_length(),
        });
    Proposal::from_transforms(protocol, ts).ok()
}

/// What we can actually run (drops e.g. 3DES from a preset).
fn runnable(props: &[Proposal]) -> Vec<Proposal> {
    props.iter().filter_map(Proposal::supported_only).collect()
}

/// Our IKE SA offer. Proposal numbers start at 1 (RFC 7296 §3.3.1).
pub(crate) fn ike_offer(props: &[Proposal]) -> SaPayload {
    SaPayload {
        proposals: runnable(props)
            .iter()
            .zip(1u8..)
            .map(|(p, n)| to_repr(p, n, Vec::new()))
            .collect(),
    }
}

fn esp_policy(props: &[Proposal], esn_allowed: bool) -> Vec<Proposal> {
    runnable(props)
        .into_iter()
        .map(|p| {
            // The first Child SA is keyed from the IKE SA: no KE in IKE_AUTH (RFC 7296 §1.2).
            let mut p = p.without_dh();
            if !esn_allowed {
                p.esn.retain(|e| *e == EsnId::NO);
            }
            if p.esn.is_empty() {
                p.esn.push(EsnId::NO);
            }
            p
        })
        .collect()
}

/// Our ESP offer with our inbound SPI.
pub(crate) fn esp_offer(props: &[Proposal], spi: u32, esn_allowed: bool) -> SaPayload {
    let proposals = esp_policy(props, esn_allowed)
        .iter()
        .zip(1u8..)
        .map(|(p, n)| to_repr(p, n, spi.to_be_bytes().to_vec()))
        .collect();
    SaPayload { proposals }
}

fn ike_executable(s: &IkeSuite) -> bool {
    Prf::new(s.prf).is_ok() && s.integ.is_none_or(Integ::supported) && KeyExchange::supported(s.dh)
}

/// Responder selection: the first of the initiator's proposals (in its order) that one of ours
/// matches; returns the reply proposal (one transform per type, the initiator's number).
pub(crate) fn select_ike(offer: &SaPayload, ours: &[Proposal]) -> Option<(ProposalRepr, IkeSuite)> {
    let cands: Vec<&ProposalRepr> = offer
        .proposals
        .iter()
        .filter(|p| p.protocol == ProtocolId::IKE && p.spi.is_empty())
        .collect();
    let peer: Vec<Option<Proposal>> = cands.iter().map(|p| from_repr(p)).collect();
    let ours = runnable(ours);
    for (i, p) in peer.iter().enumerate() {
        let Some(p) = p else { continue };
        let Some(sel) = select(core::slice::from_ref(p), &ours) else {
            continue;
        };
        let Some(suite) = sel.proposal.ike_suite() else {
            continue;
        };
        if !ike_executable(&suite) {
            continue;
        }
        return Some((to_repr(&sel.proposal, cands[i].number, Vec::new()), suite));
    }
    None
}

/// Responder ESP selection; returns the reply proposal carrying `our_spi`, the suite and the
/// initiator's SPI.
pub(crate) fn select_esp(
    offer: &SaPayload,
    ours: &[Proposal],
    esn_allowed: bool,
    our_spi: u32,
) -> Option<(ProposalRepr, ChildSuite, u32)> {
    let policy = esp_policy(ours, esn_allowed);
    for p in offer
        .proposals
        .iter()
        .filter(|p| p.protocol == ProtocolId::ESP)
    {
        let Ok(spi) = <[u8; 4]>::try_from(p.spi.as_slice()) else {
            continue;
        };
        let Some(peer) = from_repr(p) else { continue };
        let peer = peer.without_dh();
        let Some(sel) = select(core::slice::from_ref(&peer), &policy) else {
            continue;
        };
        let Some(suite) = sel.proposal.child_suite() else {
            continue;
        };
        return Some((
            to_repr(&sel.proposal, p.number, our_spi.to_be_bytes().to_vec()),
            suite,
            u32::from_be_bytes(spi),
        ));
    }
    None
}

fn is_single(p: &Proposal) -> bool {
    p.encr.len() == 1
        && p.prf.len() <= 1
        && p.integ.len() <= 1
        && p.dh.len() <= 1
        && p.esn.len() <= 1
}

/// Initiator: the responder must return exactly one proposal with one transform per type,
/// taken from the proposal of ours with the same number (RFC 7296 §2.7).
pub(crate) fn accept_ike_reply(reply: &SaPayload, ours: &SaPayload) -> Option<IkeSuite> {
    let [p] = reply.proposals.as_slice() else {
        return None;
    };
    let mine = ours
        .proposals
        .iter()
        .find(|m| m.number == p.number && m.protocol == ProtocolId::IKE)?;
    let theirs = from_repr(p)?;
    if !is_single(&theirs) || !p.spi.is_empty() {
        return None;
    }
    let sel = select(
        core::slice::from_ref(&theirs),
        core::slice::from_ref(&from_repr(mine)?),
    )?;
    let suite = sel.proposal.ike_suite()?;
    ike_executable(&suite).then_some(suite)
}

/// Initiator: check the responder's ESP choice; returns the suite and the responder's SPI.
pub(crate) fn accept_esp_reply(reply: &SaPayload, ours: &SaPayload) -> Option<(ChildSuite, u32)> {
    let [p] = reply.proposals.as_slice() else {
        return None;
    };
    let mine = ours
        .proposals
        .iter()
        .find(|m| m.number == p.number && m.protocol == ProtocolId::ESP)?;
    let spi = u32::from_be_bytes(<[u8; 4]>::try_from(p.spi.as_slice()).ok()?);
    let theirs = from_repr(p)?;
    if !is_single(&theirs) {
        return None;
    }
    let sel = select(
        core::slice::from_ref(&theirs),
        core::slice::from_ref(&from_repr(mine)?),
    )?;
    Some((sel.proposal.child_suite()?, spi))
}

/// The first DH group we offer (the KE payload of our first IKE_SA_INIT).
pub(crate) fn first_group(props: &[Proposal]) -> Option<DhId> {
    runnable(props).iter().find_map(|p| p.dh.first().copied())
}

/// Whether any of our runnable IKE proposals allows `group`.
pub(crate) fn group_offered(props: &[Proposal], group: DhId) -> bool {
    runnable(props).iter().any(|p| p.dh.contains(&group))
}

/// "peer offered [...]; we allow [...]" for NO_PROPOSAL_CHOSEN log lines.
pub(crate) fn describe_mismatch(offer: &SaPayload, ours: &[Proposal]) -> String {
    let peer: Vec<Proposal> = offer.proposals.iter().filter_map(from_repr).collect();
    crate::proposal::describe(&peer, ours)
}

/// Whether an integrity transform is a real one (not NONE).
pub(crate) fn real_integ(i: Option<IntegId>) -> Option<IntegId> {
    i.filter(|i| *i != IntegId::NONE)
}

/// ESP policy for CREATE_CHILD_SA (RFC 7296 §1.3.1): like the IKE_AUTH one but keeping the
/// configured DH groups (PFS).
fn esp_rekey_policy(props: &[Proposal], esn_allowed: bool) -> Vec<Proposal> {
    runnable(props)
        .into_iter()
        .map(|mut p| {
            if !esn_allowed {
                p.esn.retain(|e| *e == EsnId::NO);
            }
            if p.esn.is_empty() {
                p.esn.push(EsnId::NO);
            }
            p
        })
        .collect()
}

/// Our CREATE_CHILD_SA ESP offer (with DH groups when configured).
pub(crate) fn esp_rekey_offer(props: &[Proposal], spi: u32, esn_allowed: bool) -> SaPayload {
    let proposals = esp_rekey_policy(props, esn_allowed)
        .iter()
        .zip(1u8..)
        .map(|(p, n)| to_repr(p, n, spi.to_be_bytes().to_vec()))
        .collect();
    SaPayload { proposals }
}

/// The DH group of our first rekey proposal (the KE payload we send), if PFS is configured.
pub(crate) fn esp_rekey_group(props: &[Proposal]) -> Option<DhId> {
    runnable(props)
        .first()
        .and_then(|p| p.dh.first().copied())
        .filter(|g| *g != DhId::NONE)
}

/// Responder selection for CREATE_CHILD_SA (keeps DH, RFC 7296 §1.3.1).
pub(crate) fn select_esp_rekey(
    offer: &SaPayload,
    ours: &[Proposal],
    esn_allowed: bool,
    our_spi: u32,
) -> Option<(ProposalRepr, ChildSuite, u32)> {
    let policy = esp_rekey_policy(ours, esn_allowed);
    for p in offer
        .proposals
        .iter()
        .filter(|p| p.protocol == ProtocolId::ESP)
    {
        let Ok(spi) = <[u8; 4]>::try_from(p.spi.as_slice()) else {
            continue;
        };
        let Some(peer) = from_repr(p) else { continue };
        let Some(sel) = select(core::slice::from_ref(&peer), &policy) else {
            continue;
        };
        let Some(suite) = sel.proposal.child_suite() else {
            continue;
        };
        if suite
            .dh
            .is_some_and(|g| g != DhId::NONE && !KeyExchange::supported(g))
        {
            continue;
        }
        return Some((
            to_repr(&sel.proposal, p.number, our_spi.to_be_bytes().to_vec()),
            suite,
            u32::from_be_bytes(spi),
        ));
    }
    None
}

fn ike_spi(p: &ProposalRepr) -> Option<u64> {
    <[u8; 8]>::try_from(p.spi.as_slice())
        .ok()
        .map(u64::from_be_bytes)
}

fn strip_spis(sa: &SaPayload) -> SaPayload {
    SaPayload {
        proposals: sa
            .proposals
            .iter()
            .map(|p| ProposalRepr {
                spi: Vec::new(),
                ..p.clone()
            })
            .collect(),
    }
}

/// Our IKE SA rekey offer (RFC 7296 §1.3.2): every proposal carries our new 8-octet SPI.
pub(crate) fn ike_rekey_offer(props: &[Proposal], spi: u64) -> SaPayload {
    let mut offer = ike_offer(props);
    for p in &mut offer.proposals {
        p.spi = spi.to_be_bytes().to_vec();
    }
    offer
}

/// Responder selection for an IKE SA rekey: the reply (with `our_spi`), the suite and the
/// initiator's new SPI.
pub(crate) fn select_ike_rekey(
    offer: &SaPayload,
    ours: &[Proposal],
    our_spi: u64,
) -> Option<(ProposalRepr, IkeSuite, u64)> {
    let valid = SaPayload {
        proposals: offer
            .proposals
            .iter()
            .filter(|p| ike_spi(p).is_some_and(|s| s != 0))
            .cloned()
            .collect(),
    };
    let (mut reply, suite) = select_ike(&strip_spis(&valid), ours)?;
    let peer = valid
        .proposals
        .iter()
        .find(|p| p.number == reply.number)
        .and_then(ike_spi)?;
    reply.spi = our_spi.to_be_bytes().to_vec();
    Some((reply, suite, peer))
}

/// Initiator: the responder's IKE SA rekey choice; returns the suite and its new SPI.
pub(crate) fn accept_ike_rekey_reply(
    reply: &SaPayload,
    ours: &SaPayload,
) -> Option<(IkeSuite, u64)> {
    let [p] = reply.proposals.as_slice() else {
        return None;
    };
    let spi = ike_spi(p).filter(|s| *s != 0)?;
    let suite = accept_ike_reply(&strip_spis(reply), &strip_spis(ours))?;
    Some((suite, spi))
}

/// Whether `suite` is what responder selection could choose from `ours` for an initiator
/// offering exactly it, and we can run it: an imported IKE SA's suite fits its connection.
pub(crate) fn ike_suite_allowed(suite: &IkeSuite, ours: &[Proposal]) -> bool {
    let p = Proposal {
        protocol: Protocol::Ike,
        encr: vec![suite.encr],
        prf: vec![suite.prf],
        integ: suite.integ.into_iter().collect(),
        dh: vec![suite.dh],
        esn: Vec::new(),
    };
    ike_executable(suite)
        && crate::crypto::Encr::supported(suite.encr.id, suite.encr.key_bits)
        && select(core::slice::from_ref(&p), &runnable(ours))
            .and_then(|s| s.proposal.ike_suite())
            .is_some_and(|s| s == *suite)
}

/// Whether a Child SA suite is one the connection's ESP proposals allow, in IKE_AUTH (no
/// key exchange) or in CREATE_CHILD_SA (with the configured PFS groups).
pub(crate) fn child_suite_allowed(
    suite: &ChildSuite,
    ours: &[Proposal],
    esn_allowed: bool,
) -> bool {
    let p = Proposal {
        protocol: Protocol::Esp,
        encr: vec![suite.encr],
        prf: Vec::new(),
        integ: suite.integ.into_iter().collect(),
        dh: suite.dh.into_iter().collect(),
        esn: vec![suite.esn],
    };
    [
        esp_policy(ours, esn_allowed),
        esp_rekey_policy(ours, esn_allowed),
    ]
    .iter()
    .any(|policy| {
        select(core::slice::from_ref(&p), policy)
            .and_then(|s| s.proposal.child_suite())
            .is_some_and(|s| s == *suite)
    })
}
