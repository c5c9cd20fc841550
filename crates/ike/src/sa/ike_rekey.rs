//! IKE SA rekeying (RFC 7296 §1.3.2, §2.18): a CREATE_CHILD_SA exchange on the old IKE SA
//! creates a new one with new SPIs, nonces and a fresh Diffie-Hellman exchange; the Child SAs
//! move to it and the rekey initiator deletes the old IKE SA. Collisions (§2.8.1, §2.25): the
//! exchange with the higher initiator nonce wins, the other is answered with TEMPORARY_FAILURE;
//! a Child SA rekey request during our IKE rekey is answered with TEMPORARY_FAILURE.

use super::state::{Action, Established, IkeSa, Keys, PendingIkeRekey, Request, State};
use super::{DropReason, Endpoint, Event, FailReason, IkeSaId};
use crate::crypto::KeyExchange;
use crate::negotiate;
use crate::wire::{
    ExchangeType, Header, KePayload, NotifyPayload, NotifyType, Payload, PayloadType, SaPayload,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long a replaced IKE SA waits for its DELETE before it is dropped silently.
const SUPERSEDED_LINGER: Duration = Duration::from_secs(300);

impl Endpoint {
    /// Rekeys the IKE SA `id` now (on demand). `IkeSaRekeyed` follows.
    pub fn rekey_ike(&mut self, id: IkeSaId, now: Instant) -> bool {
        let Some(mut sa) = self.sas.remove(&id.0) else {
            return false;
        };
        let ok = matches!(sa.state, State::Established(_)) && !sa.superseded;
        if ok && !sa.queue.contains(&Action::RekeyIke) && sa.ike_rekey.is_none() {
            sa.queue.push_back(Action::RekeyIke);
        }
        self.service(&mut sa, now);
        self.sas.insert(id.0, sa);
        ok
    }

    /// Schedules the IKE SA lifetime and queues the rekey or delete when due.
    pub(super) fn ike_lifetime(&mut self, sa: &mut IkeSa, now: Instant) {
        if sa.superseded {
            return;
        }
        let lt = self.conns[sa.conn].ike_lifetime;
        if sa.ike_expire_at.is_none() {
            sa.ike_expire_at = Some(now + lt.life_time);
        }
        if sa.ike_rekey_at.is_none() && sa.ike_rekey.is_none() {
            let jitter_ms = u64::try_from(lt.jitter.as_millis()).unwrap_or(u64::MAX);
            let jitter = Duration::from_millis(self.random_ms(jitter_ms));
            sa.ike_rekey_at = Some(now + lt.rekey_time.saturating_sub(jitter).min(lt.life_time));
        }
        if sa.ike_expire_at.is_some_and(|e| e <= now) {
            sa.ike_expire_at = None;
            if !sa.queue.contains(&Action::DeleteIke) {
                info!(conn = %self.conns[sa.conn].name, "IKE SA hard lifetime reached, deleting");
                self.drop_queue(sa, FailReason::IkeSaClosed);
                sa.queue.push_back(Action::DeleteIke);
            }
        } else if sa.ike_rekey_at.is_some_and(|r| r <= now) {
            sa.ike_rekey_at = Some(now + Duration::from_secs(3600 * 24 * 365));
            if !sa.queue.contains(&Action::RekeyIke) {
                sa.queue.push_back(Action::RekeyIke);
            }
        }
    }

    pub(super) fn start_ike_rekey(&mut self, sa: &mut IkeSa, now: Instant) -> bool {
        if sa.superseded || sa.ike_rekey.is_some() {
            return false;
        }
        let props = self.conns[sa.conn].ike_proposals.clone();
        let group = match sa.state.keys() {
            Some(k) => k.suite.dh,
            None => return false,
        };
        let Ok(kx) = KeyExchange::generate(group, &mut *self.rng) else {
            return false;
        };
        let new_spi = self.new_ike_spi();
        let ni = self.nonce();
        let offer = negotiate::ike_rekey_offer(&props, new_spi);
        let payloads = vec![
            Payload::Sa(offer.clone()),
            Payload::Nonce(ni.clone()),
            Payload::Ke(KePayload {
                group: group.0,
                data: kx.public_value().to_vec(),
            }),
        ];
        sa.ike_rekey = Some(PendingIkeRekey {
            new_spi,
            ni,
            kx,
            offer,
            abandoned: false,
        });
        if !self.send_protected(
            sa,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::RekeyIke,
            now,
        ) {
            sa.ike_rekey = None;
            return false;
        }
        info!(conn = %self.conns[sa.conn].name, new_spi = %format_args!("{new_spi:016x}"), "rekeying IKE SA");
        true
    }

    /// Builds the new IKE SA and moves the Child SAs (and pending work) of `old` to it.
    #[allow(clippy::too_many_arguments)]
    fn install_rekeyed(
        &mut self,
        old: &mut IkeSa,
        initiator: bool,
        ispi: u64,
        rspi: u64,
        keys: Keys,
        move_children: bool,
        now: Instant,
    ) -> u64 {
        let mut new = IkeSa::new(old.conn, initiator, ispi, rspi, old.local, old.remote, now);
        new.established_at = Some(now);
        new.init_remote = old.init_remote;
        new.nat = old.nat;
        new.nat_local = old.nat_local;
        new.nat_peer = old.nat_peer;
        new.state = State::Established(Box::new(Established { keys }));
        new.last_inbound = Some(now);
        if move_children {
            new.children = std::mem::take(&mut old.children);
            new.child_info = std::mem::take(&mut old.child_info);
            new.hidden = std::mem::take(&mut old.hidden);
            new.queue = std::mem::take(&mut old.queue);
            new.queue
                .retain(|a| !matches!(a, Action::RekeyIke | Action::DeleteIke));
            old.superseded = true;
            old.successor = Some(new.our_spi());
            // Should the DELETE of the old SA never come, it goes anyway.
            old.expires = Some(now + SUPERSEDED_LINGER);
        } else {
            // Redundant SA from a lost collision: delete it at once, silently.
            new.superseded = true;
            new.queue.push_back(Action::DeleteIke);
        }
        let id = new.our_spi();
        if move_children {
            let conn = self.conns[old.conn].name.clone();
            info!(conn = %conn, old = %format_args!("{:016x}", old.our_spi()), new = %format_args!("{id:016x}"), "IKE SA rekeyed");
            self.counters.ike_rekeyed += 1;
            self.events.push_back(Event::IkeSaRekeyed {
                conn,
                old: IkeSaId(old.our_spi()),
                new: IkeSaId(id),
                ispi,
                rspi,
            });
        }
        self.service(&mut new, now);
        self.sas.insert(id, new);
        id
    }

    /// The peer's CREATE_CHILD_SA rekeying this IKE SA.
    pub(super) fn ike_rekey_request(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        req: Header,
        inner: &[Payload],
        sa: &mut IkeSa,
        now: Instant,
    ) -> Result<(), DropReason> {
        let find = |t: PayloadType| inner.iter().find(|p| p.payload_type() == t);
        let (Some(Payload::Sa(offer)), Some(Payload::Nonce(ni)), Some(Payload::Ke(ke))) = (
            find(PayloadType::SA),
            find(PayloadType::NONCE),
            find(PayloadType::KE),
        ) else {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::INVALID_SYNTAX,
                DropReason::Invalid("IKE rekey without SA/Nonce/KE"),
            );
        };
        let busy = sa.superseded || (sa.outstanding.is_some() && sa.ike_rekey.is_none());
        let lost = match sa.ike_rekey.as_mut() {
            Some(p) if !p.abandoned => {
                if p.ni.as_slice() > ni.as_slice() {
                    true
                } else {
                    debug!("IKE SA rekey collision lost; answering the peer's rekey");
                    p.abandoned = true;
                    false
                }
            }
            _ => false,
        };
        if busy || lost {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::TEMPORARY_FAILURE,
                DropReason::Refused(NotifyType::TEMPORARY_FAILURE),
            );
        }
        let props = self.conns[sa.conn].ike_proposals.clone();
        let our_spi = self.new_ike_spi();
        let Some((reply, suite, peer_spi)) = negotiate::select_ike_rekey(offer, &props, our_spi)
        else {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::NO_PROPOSAL_CHOSEN,
                DropReason::Refused(NotifyType::NO_PROPOSAL_CHOSEN),
            );
        };
        if ke.group != suite.dh.0 {
            self.respond(
                sa,
                req,
                local,
                remote,
                vec![Payload::Notify(NotifyPayload::new(
                    NotifyType::INVALID_KE_PAYLOAD,
                    suite.dh.0.to_be_bytes().to_vec(),
                ))],
            );
            return Err(DropReason::Refused(NotifyType::INVALID_KE_PAYLOAD));
        }
        let kx = KeyExchange::generate(suite.dh, &mut *self.rng);
        let shared = kx.as_ref().ok().and_then(|k| k.agree(&ke.data).ok());
        let (Ok(kx), Some(shared)) = (kx, shared) else {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::INVALID_SYNTAX,
                DropReason::Invalid("bad KE in IKE rekey"),
            );
        };
        let nr = self.nonce();
        let Some(old_keys) = sa.state.keys() else {
            return Err(DropReason::Unexpected);
        };
        let Ok(keys) = Keys::derive_rekeyed(
            old_keys,
            suite,
            ni,
            &nr,
            peer_spi,
            our_spi,
            shared.as_bytes(),
            false,
        ) else {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::NO_PROPOSAL_CHOSEN,
                DropReason::Invalid("IKE rekey key derivation"),
            );
        };
        let out = vec![
            Payload::Sa(SaPayload {
                proposals: vec![reply],
            }),
            Payload::Nonce(nr),
            Payload::Ke(KePayload {
                group: suite.dh.0,
                data: kx.public_value().to_vec(),
            }),
        ];
        self.respond(sa, req, local, remote, out);
        self.install_rekeyed(sa, false, peer_spi, our_spi, keys, true, now);
        Ok(())
    }

    /// The answer to our IKE SA rekey.
    pub(super) fn ike_rekey_response(&mut self, inner: Vec<Payload>, sa: &mut IkeSa, now: Instant) {
        let Some(p) = sa.ike_rekey.take() else { return };
        let conn = self.conns[sa.conn].name.clone();
        if let Some(n) = inner.iter().find_map(|x| match x {
            Payload::Notify(n) if n.ty.is_error() => Some(n.clone()),
            _ => None,
        }) {
            if !p.abandoned && !sa.superseded {
                let delay = Duration::from_millis(2_000 + self.random_ms(8_000));
                debug!(conn = %conn, notify = %n.ty, "IKE SA rekey refused; retrying later");
                sa.ike_rekey_at = Some(now + delay);
            }
            return;
        }
        let find = |t: PayloadType| inner.iter().find(|x| x.payload_type() == t);
        let (Some(Payload::Sa(reply)), Some(Payload::Nonce(nr)), Some(Payload::Ke(ke))) = (
            find(PayloadType::SA),
            find(PayloadType::NONCE),
            find(PayloadType::KE),
        ) else {
            warn!(conn = %conn, "IKE SA rekey response lacks SA/Nonce/KE");
            sa.ike_rekey_at = Some(now + Duration::from_secs(60));
            return;
        };
        let Some((suite, peer_spi)) = negotiate::accept_ike_rekey_reply(reply, &p.offer) else {
            warn!(conn = %conn, "IKE SA rekey: responder chose a proposal we did not offer");
            sa.ike_rekey_at = Some(now + Duration::from_secs(60));
            return;
        };
        let shared = if ke.group == p.kx.group().0 && suite.dh == p.kx.group() {
            p.kx.agree(&ke.data).ok()
        } else {
            None
        };
        let Some(shared) = shared else {
            warn!(conn = %conn, "IKE SA rekey: bad KE");
            sa.ike_rekey_at = Some(now + Duration::from_secs(60));
            return;
        };
        let Some(old_keys) = sa.state.keys() else {
            return;
        };
        let Ok(keys) = Keys::derive_rekeyed(
            old_keys,
            suite,
            &p.ni,
            nr,
            p.new_spi,
            peer_spi,
            shared.as_bytes(),
            true,
        ) else {
            return;
        };
        let winner = !p.abandoned && !sa.superseded;
        self.install_rekeyed(sa, true, p.new_spi, peer_spi, keys, winner, now);
        if winner {
            self.drop_queue(sa, FailReason::IkeSaClosed);
            sa.queue.push_back(Action::DeleteIke);
        }
    }
}
