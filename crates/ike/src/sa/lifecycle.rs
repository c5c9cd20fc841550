//! Child SA lifecycle (RFC 7296 §1.3.3, §2.8, §2.8.1, §2.25): scheduled and on-demand rekeying
//! with CREATE_CHILD_SA (with or without PFS), make-before-break events, hard expiry, Child SA
//! DELETE from our side, collision handling, and graceful shutdown.
//!
//! Collisions (§2.8.1) are resolved without creating redundant SAs where possible: when a rekey
//! request arrives for a Child SA we are rekeying ourselves, the exchange whose initiator nonce
//! is higher wins; the loser's request is answered with TEMPORARY_FAILURE by the winner, and the
//! winner's request is answered normally by the loser. Both sides see both nonces, so they agree.
//! If a losing exchange still completes, the redundant SA is deleted by its initiator.

use super::state::{
    Action, ChildInfo, ChildStatus, Collision, IkeSa, PendingRekey, Request, State,
};
use super::{Endpoint, Event, IkeSaId};
use crate::config::DpdAction;
use crate::crypto::{KeyExchange, child_sa_keys};
use crate::negotiate;
use crate::transform::DhId;
use crate::wire::{
    DeletePayload, ExchangeType, Header, KePayload, NotifyPayload, NotifyType, Payload,
    PayloadType, ProtocolId, SaPayload,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Retry delay range after TEMPORARY_FAILURE (§2.25), in milliseconds: 2 s plus up to 8 s.
const RETRY_BASE_MS: u64 = 2_000;
const RETRY_SPREAD_MS: u64 = 8_000;

fn rekey_notify(in_spi: u32) -> Payload {
    Payload::Notify(NotifyPayload {
        protocol: ProtocolId::ESP,
        spi: in_spi.to_be_bytes().to_vec(),
        ty: NotifyType::REKEY_SA,
        data: Vec::new(),
    })
}

impl Endpoint {
    pub(super) fn random_ms(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut b = [0u8; 8];
        self.rng.fill(&mut b);
        u64::from_be_bytes(b) % max
    }

    /// Sends a protected request of any exchange type if the window is free.
    pub(super) fn send_protected(
        &mut self,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        kind: Request,
        now: Instant,
    ) -> bool {
        if sa.outstanding.is_some() {
            return false;
        }
        let msg_id = sa.next_msg_id;
        let header = Header {
            ispi: sa.ispi,
            rspi: sa.rspi,
            next_payload: PayloadType::NONE,
            exchange,
            flags: sa.flags(false),
            message_id: msg_id,
            length: 0,
        };
        let Ok(bytes) = self.seal_for(sa, header, &payloads) else {
            return false;
        };
        sa.next_msg_id = msg_id.wrapping_add(1);
        self.send_request_set(sa, msg_id, bytes, kind, now);
        true
    }

    /// Records a new Child SA's bookkeeping (lifetimes are scheduled by `service`).
    pub(super) fn register_child(
        &mut self,
        sa: &mut IkeSa,
        inbound: u32,
        local_ts: Vec<crate::wire::TrafficSelector>,
        remote_ts: Vec<crate::wire::TrafficSelector>,
    ) {
        sa.child_info.insert(
            inbound,
            ChildInfo {
                local_ts,
                remote_ts,
                rekey_at: None,
                expire_at: None,
                status: ChildStatus::Active,
                group: None,
            },
        );
    }

    /// Earliest lifetime or DPD deadline of one IKE SA.
    pub(super) fn lifecycle_deadline(&self, sa: &IkeSa) -> Option<Instant> {
        if !matches!(sa.state, State::Established(_)) {
            return None;
        }
        let dpd = match (self.conns[sa.conn].dpd, sa.last_inbound) {
            (Some(d), Some(last)) if sa.outstanding.is_none() && sa.queue.is_empty() => {
                Some(last + d.delay)
            }
            _ => None,
        };
        let child = sa
            .child_info
            .values()
            .flat_map(|c| {
                let soft = match c.status {
                    ChildStatus::Active => c.rekey_at,
                    _ => None,
                };
                [soft, c.expire_at]
            })
            .flatten()
            .min();
        let ike = if sa.superseded {
            None
        } else {
            [sa.ike_rekey_at, sa.ike_expire_at]
                .into_iter()
                .flatten()
                .min()
        };
        [dpd, child, ike].into_iter().flatten().min()
    }

    /// After an established IKE SA died of a timeout: the connection's DPD action.
    pub(super) fn dpd_give_up(&mut self, conn: usize, now: Instant) {
        let Some(d) = self.conns[conn].dpd else {
            return;
        };
        let name = self.conns[conn].name.clone();
        match d.action {
            DpdAction::Restart => {
                let still_up = self.sas.values().any(|s| {
                    s.conn == conn && !matches!(s.state, State::Dead | State::ExpectAuth(_))
                });
                if still_up {
                    return;
                }
                match self.initiate(&name, now) {
                    Ok(id) => {
                        info!(conn = %name, id = %format_args!("{:016x}", id.0), "peer dead: re-initiating")
                    }
                    Err(e) => warn!(conn = %name, error = %e, "peer dead: cannot re-initiate"),
                }
            }
            DpdAction::Clear | DpdAction::Hold => {
                info!(conn = %name, action = ?d.action, "peer dead: SAs cleared");
            }
        }
    }

    /// Reports ESP traffic received on the Child SA with this inbound SPI: it counts as a sign
    /// of life for dead peer detection (call it at most about once a second per SA).
    pub fn note_inbound_traffic(&mut self, inbound_spi: u32, now: Instant) -> bool {
        let Some(key) = self.ike_of_child(inbound_spi) else {
            return false;
        };
        if let Some(sa) = self.sas.get_mut(&key) {
            sa.last_inbound = Some(sa.last_inbound.map_or(now, |l| l.max(now)));
        }
        true
    }

    /// Schedules lifetimes, turns due ones into queued work, and starts queued work when the
    /// request window is free.
    pub(super) fn service(&mut self, sa: &mut IkeSa, now: Instant) {
        if !matches!(sa.state, State::Established(_)) {
            return;
        }
        if !sa.superseded {
            self.ike_lifetime(sa, now);
        }
        let lt = self.conns[sa.conn].child_lifetime;
        if sa.last_inbound.is_none() {
            sa.last_inbound = Some(now);
        }
        let ids: Vec<u32> = sa.child_info.keys().copied().collect();
        for spi in ids {
            let jitter_ms = u64::try_from(lt.jitter.as_millis()).unwrap_or(u64::MAX);
            let jitter = Duration::from_millis(self.random_ms(jitter_ms));
            let Some(c) = sa.child_info.get_mut(&spi) else {
                continue;
            };
            if c.expire_at.is_none() {
                c.expire_at = Some(now + lt.life_time);
            }
            if c.rekey_at.is_none() && c.status == ChildStatus::Active {
                let soft = lt.rekey_time.saturating_sub(jitter).min(lt.life_time);
                c.rekey_at = Some(now + soft);
            }
            if c.expire_at.is_some_and(|e| e <= now) && c.status != ChildStatus::Deleting {
                info!(inbound_spi = %format_args!("{spi:08x}"), "Child SA hard lifetime reached, deleting");
                c.status = ChildStatus::Deleting;
                c.expire_at = None;
                sa.queue.retain(|a| *a != Action::RekeyChild(spi));
                sa.queue.push_front(Action::DeleteChild(spi));
            } else if c.status == ChildStatus::Active && c.rekey_at.is_some_and(|r| r <= now) {
                c.rekey_at = None;
                if !sa.queue.contains(&Action::RekeyChild(spi)) {
                    sa.queue.push_back(Action::RekeyChild(spi));
                }
            }
        }
        if let Some(d) = self.conns[sa.conn].dpd
            && !sa.superseded
            && sa.outstanding.is_none()
            && sa.queue.is_empty()
            && sa.last_inbound.is_some_and(|l| l + d.delay <= now)
        {
            debug!(conn = %self.conns[sa.conn].name, "idle: sending DPD liveness check");
            self.send_protected(sa, ExchangeType::INFORMATIONAL, vec![], Request::Dpd, now);
        }
        while sa.outstanding.is_none() {
            let Some(action) = sa.queue.pop_front() else {
                break;
            };
            match action {
                Action::RekeyChild(spi) => {
                    self.start_rekey(sa, spi, now);
                }
                Action::DeleteChild(spi) => {
                    if sa.children.iter().any(|c| c.0 == spi) {
                        self.send_protected(
                            sa,
                            ExchangeType::INFORMATIONAL,
                            vec![Payload::Delete(DeletePayload {
                                protocol: ProtocolId::ESP,
                                spis: vec![spi.to_be_bytes().to_vec()],
                            })],
                            Request::DeleteChild(spi),
                            now,
                        );
                    }
                }
                Action::RekeyIke => {
                    self.start_ike_rekey(sa, now);
                }
                Action::DeleteIke => {
                    self.send_protected(
                        sa,
                        ExchangeType::INFORMATIONAL,
                        vec![Payload::Delete(DeletePayload {
                            protocol: ProtocolId::IKE,
                            spis: vec![],
                        })],
                        Request::DeleteIke,
                        now,
                    );
                }
            }
        }
    }

    fn start_rekey(&mut self, sa: &mut IkeSa, old_in: u32, now: Instant) -> bool {
        let Some(info) = sa.child_info.get(&old_in) else {
            return false;
        };
        if info.status != ChildStatus::Active || sa.rekey.is_some() {
            return false;
        }
        let (tsi, tsr, forced_group) = (info.local_ts.clone(), info.remote_ts.clone(), info.group);
        let conn = &self.conns[sa.conn];
        let props = conn.esp_proposals.clone();
        let esn = conn.esn_allowed;
        let group = forced_group.or_else(|| negotiate::esp_rekey_group(&props));
        let kx = match group {
            Some(g) => match KeyExchange::generate(g, &mut *self.rng) {
                Ok(k) => Some(k),
                Err(_) => {
                    warn!(%g, "cannot generate KE for Child SA rekey");
                    return false;
                }
            },
            None => None,
        };
        let new_spi = self.new_child_spi();
        let ni = self.nonce();
        let offer = negotiate::esp_rekey_offer(&props, new_spi, esn);
        let mut payloads = vec![
            rekey_notify(old_in),
            Payload::Sa(offer.clone()),
            Payload::Nonce(ni.clone()),
        ];
        if let Some(k) = &kx {
            payloads.push(Payload::Ke(KePayload {
                group: k.group().0,
                data: k.public_value().to_vec(),
            }));
        }
        payloads.push(Payload::TsI(tsi.clone()));
        payloads.push(Payload::TsR(tsr.clone()));
        sa.rekey = Some(PendingRekey {
            old_in,
            new_spi,
            ni,
            kx,
            offer,
            tsi,
            tsr,
            abandoned: false,
            collision: None,
        });
        if !self.send_protected(
            sa,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::RekeyChild,
            now,
        ) {
            sa.rekey = None;
            self.inbound_spis.remove(&new_spi);
            return false;
        }
        if let Some(c) = sa.child_info.get_mut(&old_in) {
            c.status = ChildStatus::Rekeying;
        }
        info!(
            conn = %self.conns[sa.conn].name,
            old_inbound_spi = %format_args!("{old_in:08x}"),
            new_inbound_spi = %format_args!("{new_spi:08x}"),
            pfs = ?group,
            "rekeying Child SA"
        );
        true
    }

    // ------------------------------------------------------------------ public API

    /// Rekeys every active Child SA of the IKE SA `id` now (on demand). Returns whether any
    /// rekey was queued. `ChildSaRekeyed` follows.
    pub fn rekey_child(&mut self, id: IkeSaId, now: Instant) -> bool {
        let Some(mut sa) = self.sas.remove(&id.0) else {
            return false;
        };
        let mut any = false;
        if matches!(sa.state, State::Established(_)) {
            let spis: Vec<u32> = sa
                .child_info
                .iter()
                .filter(|(_, c)| c.status == ChildStatus::Active)
                .map(|(s, _)| *s)
                .collect();
            for s in spis {
                if !sa.queue.contains(&Action::RekeyChild(s)) {
                    sa.queue.push_back(Action::RekeyChild(s));
                }
                any = true;
            }
            self.service(&mut sa, now);
        }
        self.sas.insert(id.0, sa);
        any
    }

    /// Rekeys the Child SA with this inbound SPI now (the data plane's byte/packet soft limit
    /// for either direction of that SA). Returns whether a rekey was queued or is under way.
    pub fn rekey_child_spi(&mut self, inbound_spi: u32, now: Instant) -> bool {
        let Some(key) = self.ike_of_child(inbound_spi) else {
            return false;
        };
        let Some(mut sa) = self.sas.remove(&key) else {
            return false;
        };
        let ok = match sa.child_info.get(&inbound_spi).map(|c| c.status) {
            Some(ChildStatus::Active) => {
                if !sa.queue.contains(&Action::RekeyChild(inbound_spi)) {
                    sa.queue.push_back(Action::RekeyChild(inbound_spi));
                }
                true
            }
            Some(ChildStatus::Rekeying) => true,
            _ => false,
        };
        self.service(&mut sa, now);
        self.sas.insert(key, sa);
        ok
    }

    /// Deletes the Child SA with this inbound SPI (INFORMATIONAL with a Delete payload);
    /// `ChildSaDeleted` follows when the peer answers (or the IKE SA fails).
    pub fn delete_child_sa(&mut self, inbound_spi: u32, now: Instant) -> bool {
        let Some(key) = self.ike_of_child(inbound_spi) else {
            return false;
        };
        let Some(mut sa) = self.sas.remove(&key) else {
            return false;
        };
        let ok = match sa.child_info.get_mut(&inbound_spi) {
            Some(c) if c.status != ChildStatus::Deleting => {
                c.status = ChildStatus::Deleting;
                sa.queue.retain(|a| *a != Action::RekeyChild(inbound_spi));
                sa.queue.push_back(Action::DeleteChild(inbound_spi));
                true
            }
            _ => false,
        };
        self.service(&mut sa, now);
        self.sas.insert(key, sa);
        ok
    }

    /// Graceful shutdown (SIGTERM): every established IKE SA is deleted with a DELETE (after
    /// any outstanding request), SAs not yet established are dropped at once (`IkeSaDeleted`
    /// for each). Keep driving the endpoint until `ike_sa_count()` is 0 (at most the
    /// retransmission schedule).
    pub fn shutdown(&mut self, now: Instant) {
        let keys: Vec<u64> = self.sas.keys().copied().collect();
        for k in keys {
            let Some(mut sa) = self.sas.remove(&k) else {
                continue;
            };
            if matches!(sa.state, State::Established(_)) {
                let deleting = sa
                    .outstanding
                    .as_ref()
                    .is_some_and(|o| o.kind == Request::DeleteIke);
                sa.queue.clear();
                if !deleting {
                    sa.queue.push_back(Action::DeleteIke);
                }
                self.service(&mut sa, now);
                self.sas.insert(k, sa);
            } else {
                let conn = self.conns[sa.conn].name.clone();
                self.delete_all_children(&mut sa);
                self.remove_sa(&sa);
                self.events.push_back(Event::IkeSaDeleted {
                    conn,
                    id: IkeSaId(k),
                });
            }
        }
    }

    fn ike_of_child(&self, inbound_spi: u32) -> Option<u64> {
        self.sas
            .iter()
            .find(|(_, s)| s.children.iter().any(|c| c.0 == inbound_spi))
            .map(|(k, _)| *k)
    }

    /// Removes a Child SA from our tables and reports it.
    pub(super) fn child_gone(&mut self, sa: &mut IkeSa, inbound: u32) {
        sa.child_info.remove(&inbound);
        sa.queue
            .retain(|a| *a != Action::RekeyChild(inbound) && *a != Action::DeleteChild(inbound));
        if let Some(pos) = sa.children.iter().position(|c| c.0 == inbound) {
            let (i, o) = sa.children.remove(pos);
            self.inbound_spis.remove(&i);
            if sa.hidden.remove(&i) {
                // Never reported to the driver (a redundant SA of a collision).
                return;
            }
            self.events.push_back(Event::ChildSaDeleted {
                conn: self.conns[sa.conn].name.clone(),
                id: IkeSaId(sa.our_spi()),
                inbound_spi: i,
                outbound_spi: o,
            });
        }
    }

    // ------------------------------------------------------------------ responder

    /// A CREATE_CHILD_SA request. Only Child SA rekeys are accepted (REKEY_SA); new Child SAs
    /// and IKE SA rekeys are refused with NO_ADDITIONAL_SAS.
    pub(super) fn create_child_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        req: Header,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
    ) -> Result<(), super::DropReason> {
        use super::DropReason;
        let rekey = inner.iter().find_map(|p| match p {
            Payload::Notify(n) if n.ty == NotifyType::REKEY_SA && n.protocol == ProtocolId::ESP => {
                <[u8; 4]>::try_from(n.spi.as_slice())
                    .ok()
                    .map(u32::from_be_bytes)
            }
            _ => None,
        });
        let ike_offer = inner.iter().any(|p| {
            matches!(p, Payload::Sa(o) if o.proposals.iter().any(|x| x.protocol == ProtocolId::IKE))
        });
        if rekey.is_none() && ike_offer {
            return self.ike_rekey_request(local, remote, req, &inner, sa, now);
        }
        if sa.superseded || sa.ike_rekey.as_ref().is_some_and(|p| !p.abandoned) {
            // The IKE SA is being rekeyed or was replaced (§2.25): try again later.
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::TEMPORARY_FAILURE,
                DropReason::Refused(NotifyType::TEMPORARY_FAILURE),
            );
        }
        let Some(old_out) = rekey else {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::NO_ADDITIONAL_SAS,
                DropReason::Refused(NotifyType::NO_ADDITIONAL_SAS),
            );
        };
        let Some(&(old_in, _)) = sa.children.iter().find(|c| c.1 == old_out) else {
            if sa.rekey.is_some() {
                // Our own CREATE_CHILD_SA is still waiting for its answer: the SA the peer wants
                // to rekey may be the one that exchange is creating (the peer's next request
                // overtook its response on the wire). Not "not found" (the peer would drop it,
                // RFC 7296 §2.25) but "try again" (§2.25, TEMPORARY_FAILURE).
                return self.refuse(
                    sa,
                    req,
                    local,
                    remote,
                    NotifyType::TEMPORARY_FAILURE,
                    DropReason::Refused(NotifyType::TEMPORARY_FAILURE),
                );
            }
            self.respond(
                sa,
                req,
                local,
                remote,
                vec![Payload::Notify(NotifyPayload {
                    protocol: ProtocolId::ESP,
                    spi: old_out.to_be_bytes().to_vec(),
                    ty: NotifyType::CHILD_SA_NOT_FOUND,
                    data: Vec::new(),
                })],
            );
            return Err(DropReason::Refused(NotifyType::CHILD_SA_NOT_FOUND));
        };
        let find = |t: PayloadType| inner.iter().find(|p| p.payload_type() == t);
        let (
            Some(Payload::Sa(offer)),
            Some(Payload::Nonce(ni)),
            Some(Payload::TsI(_)),
            Some(Payload::TsR(_)),
        ) = (
            find(PayloadType::SA),
            find(PayloadType::NONCE),
            find(PayloadType::TSI),
            find(PayloadType::TSR),
        )
        else {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::INVALID_SYNTAX,
                DropReason::Invalid("CREATE_CHILD_SA without SA/Nonce/TS"),
            );
        };
        let status = sa.child_info.get(&old_in).map(|c| c.status);
        let refuse = self.conns[sa.conn].refuse_colliding_rekey;
        let mut collided = false;
        let temp_fail = match status {
            Some(ChildStatus::Rekeyed | ChildStatus::Deleting) | None => true,
            Some(ChildStatus::Rekeying) => match sa.rekey.as_mut() {
                Some(p) if p.old_in == old_in && !p.abandoned => {
                    // Collision (§2.8.1). With the higher initiator nonce we refuse the peer's
                    // request (one exchange completes); otherwise both may complete and the
                    // four nonces decide when ours ends (see `rekey_response`).
                    if refuse && p.ni.as_slice() > ni.as_slice() {
                        true
                    } else {
                        debug!("Child SA rekey collision; answering the peer's rekey too");
                        p.abandoned = true;
                        collided = true;
                        false
                    }
                }
                _ => false,
            },
            Some(ChildStatus::Active) => false,
        };
        let peer_ni = ni.clone();
        if temp_fail {
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::TEMPORARY_FAILURE,
                DropReason::Refused(NotifyType::TEMPORARY_FAILURE),
            );
        }
        let conn = &self.conns[sa.conn];
        let (props, esn) = (conn.esp_proposals.clone(), conn.esn_allowed);
        let new_spi = self.new_child_spi();
        let Some((reply, suite, peer_spi)) =
            negotiate::select_esp_rekey(offer, &props, esn, new_spi)
        else {
            self.inbound_spis.remove(&new_spi);
            warn!(conn = %self.conns[sa.conn].name, "Child SA rekey: no acceptable proposal");
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::NO_PROPOSAL_CHOSEN,
                DropReason::Refused(NotifyType::NO_PROPOSAL_CHOSEN),
            );
        };
        let mut out = vec![Payload::Sa(SaPayload {
            proposals: vec![reply],
        })];
        let nr = self.nonce();
        out.push(Payload::Nonce(nr.clone()));
        let mut g_ir = None;
        if let Some(g) = suite.dh.filter(|g| *g != DhId::NONE) {
            let ke = match find(PayloadType::KE) {
                Some(Payload::Ke(k)) if k.group == g.0 => k,
                _ => {
                    self.inbound_spis.remove(&new_spi);
                    self.respond(
                        sa,
                        req,
                        local,
                        remote,
                        vec![Payload::Notify(NotifyPayload::new(
                            NotifyType::INVALID_KE_PAYLOAD,
                            g.0.to_be_bytes().to_vec(),
                        ))],
                    );
                    return Err(DropReason::Refused(NotifyType::INVALID_KE_PAYLOAD));
                }
            };
            let kx = KeyExchange::generate(g, &mut *self.rng);
            let shared = kx.as_ref().ok().and_then(|k| k.agree(&ke.data).ok());
            let (Ok(kx), Some(shared)) = (kx, shared) else {
                self.inbound_spis.remove(&new_spi);
                return self.refuse(
                    sa,
                    req,
                    local,
                    remote,
                    NotifyType::INVALID_SYNTAX,
                    DropReason::Invalid("bad KE in CREATE_CHILD_SA"),
                );
            };
            out.push(Payload::Ke(KePayload {
                group: g.0,
                data: kx.public_value().to_vec(),
            }));
            g_ir = Some(shared);
        }
        let Some(info) = sa.child_info.get(&old_in).cloned() else {
            self.inbound_spis.remove(&new_spi);
            return Err(DropReason::Unexpected);
        };
        let State::Established(est) = &sa.state else {
            self.inbound_spis.remove(&new_spi);
            return Err(DropReason::Unexpected);
        };
        let km = child_sa_keys(
            &est.keys.prf,
            est.keys.sk.sk_d.as_bytes(),
            g_ir.as_ref().map(|s| s.as_bytes()),
            ni,
            &nr,
            suite.encr.id,
            suite.encr.key_bits,
            negotiate::real_integ(suite.integ),
        );
        let Ok(km) = km else {
            self.inbound_spis.remove(&new_spi);
            return self.refuse(
                sa,
                req,
                local,
                remote,
                NotifyType::NO_PROPOSAL_CHOSEN,
                DropReason::Invalid("child key derivation"),
            );
        };
        // The peer's TSi is its side: our remote selectors.
        out.push(Payload::TsI(info.remote_ts.clone()));
        out.push(Payload::TsR(info.local_ts.clone()));
        self.respond(sa, req, local, remote, out);
        if let Some(c) = sa.child_info.get_mut(&old_in) {
            c.status = ChildStatus::Rekeyed;
        }
        sa.queue.retain(|a| *a != Action::RekeyChild(old_in));
        self.child_established(
            sa,
            false,
            new_spi,
            peer_spi,
            suite,
            km,
            info.local_ts,
            info.remote_ts,
            Some((old_in, old_out, false)),
        );
        if collided && let Some(p) = sa.rekey.as_mut() {
            // Hold the peer's SA back from the driver until our exchange decides (§2.8.1).
            let event = self.events.pop_back();
            sa.hidden.insert(new_spi);
            p.collision = Some(Collision {
                peer_ni,
                our_nr: nr,
                new_in: new_spi,
                event,
            });
        }
        Ok(())
    }

    /// Reports the peer's SA of a collision to the driver after all (it survives), if it still
    /// exists.
    pub(super) fn release_collision(&mut self, sa: &mut IkeSa, c: Collision) {
        if sa.hidden.remove(&c.new_in)
            && sa.children.iter().any(|x| x.0 == c.new_in)
            && let Some(ev) = c.event
        {
            self.events.push_back(ev);
        }
    }

    // ------------------------------------------------------------------ initiator responses

    /// The answer to our CREATE_CHILD_SA rekey.
    pub(super) fn rekey_response(&mut self, inner: Vec<Payload>, sa: &mut IkeSa, now: Instant) {
        let Some(mut p) = sa.rekey.take() else { return };
        let mut collision = p.collision.take();
        self.rekey_response_inner(inner, sa, now, p, &mut collision);
        // Our exchange failed or was unusable: the peer's colliding rekey stands.
        if let Some(c) = collision {
            self.release_collision(sa, c);
        }
    }

    fn rekey_response_inner(
        &mut self,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
        now: Instant,
        p: PendingRekey,
        collision: &mut Option<Collision>,
    ) {
        let conn = self.conns[sa.conn].name.clone();
        let old = sa.children.iter().find(|c| c.0 == p.old_in).copied();
        let restore = |sa: &mut IkeSa, retry: Option<Instant>| {
            if let Some(c) = sa.child_info.get_mut(&p.old_in)
                && c.status == ChildStatus::Rekeying
            {
                c.status = ChildStatus::Active;
                c.rekey_at = retry;
            }
        };
        let error = inner.iter().find_map(|x| match x {
            Payload::Notify(n) if n.ty.is_error() => Some(n.clone()),
            _ => None,
        });
        if let Some(n) = error {
            self.inbound_spis.remove(&p.new_spi);
            if n.ty == NotifyType::INVALID_KE_PAYLOAD
                && let Ok(b) = <[u8; 2]>::try_from(n.data.as_slice())
            {
                let g = DhId(u16::from_be_bytes(b));
                info!(conn = %conn, %g, "Child SA rekey: peer asks for another DH group; retrying");
                if let Some(c) = sa.child_info.get_mut(&p.old_in) {
                    c.group = Some(g);
                }
                restore(sa, Some(now));
                return;
            }
            let delay = Duration::from_millis(RETRY_BASE_MS + self.random_ms(RETRY_SPREAD_MS));
            if old.is_none() {
                // The Child SA moved to the IKE SA that replaced this one while our request was
                // out (RFC 7296 §2.8.2): the answer (CHILD_SA_NOT_FOUND from a peer that already
                // moved it, or any other) says nothing about the Child SA itself. Rekey it again
                // there a little later.
                if let Some(key) = self.ike_of_child(p.old_in)
                    && let Some(other) = self.sas.get_mut(&key)
                    && let Some(c) = other.child_info.get_mut(&p.old_in)
                    && c.status == ChildStatus::Rekeying
                {
                    c.status = ChildStatus::Active;
                    c.rekey_at = Some(now + delay);
                }
                debug!(conn = %conn, notify = %n.ty, "Child SA rekey on a replaced IKE SA refused; retrying on its successor");
                return;
            }
            if n.ty == NotifyType::CHILD_SA_NOT_FOUND && !p.abandoned {
                // RFC 7296 §2.25: the peer no longer has this Child SA, so traffic on it goes
                // nowhere. Delete it here too (silently: the peer has nothing to delete); the
                // driver sees `ChildSaDeleted` and brings a new one up.
                warn!(conn = %conn, old_spi = %format_args!("{:08x}", p.old_in), "Child SA rekey: peer has no such Child SA (CHILD_SA_NOT_FOUND); deleting ours");
                self.child_gone(sa, p.old_in);
                return;
            }
            if n.ty == NotifyType::TEMPORARY_FAILURE {
                debug!(conn = %conn, "Child SA rekey: TEMPORARY_FAILURE; retrying later");
            } else {
                warn!(conn = %conn, notify = %n.ty, "Child SA rekey refused; keeping the old SA until its hard lifetime");
            }
            let retry = if n.ty == NotifyType::TEMPORARY_FAILURE && !p.abandoned {
                Some(now + delay)
            } else if p.abandoned {
                // The peer's rekey won; its replacement is (or will be) in place.
                None
            } else {
                None
            };
            restore(sa, retry);
            return;
        }
        let find = |t: PayloadType| inner.iter().find(|x| x.payload_type() == t);
        let fail = |this: &mut Self, sa: &mut IkeSa, why: &str| {
            this.inbound_spis.remove(&p.new_spi);
            warn!(conn = %conn, why, "Child SA rekey response unusable");
            if let Some(c) = sa.child_info.get_mut(&p.old_in)
                && c.status == ChildStatus::Rekeying
            {
                c.status = ChildStatus::Active;
                c.rekey_at = None;
            }
        };
        let (Some(Payload::Sa(sa_p)), Some(Payload::Nonce(nr))) =
            (find(PayloadType::SA), find(PayloadType::NONCE))
        else {
            fail(self, sa, "missing SA or Nonce");
            return;
        };
        let Some((suite, peer_spi)) = negotiate::accept_esp_reply(sa_p, &p.offer) else {
            fail(self, sa, "responder chose a proposal we did not offer");
            return;
        };
        let g_ir = match (suite.dh.filter(|g| *g != DhId::NONE), &p.kx) {
            (None, _) => None,
            (Some(g), Some(kx)) if kx.group() == g => match find(PayloadType::KE) {
                Some(Payload::Ke(k)) if k.group == g.0 => match kx.agree(&k.data) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        fail(self, sa, "invalid KE value");
                        return;
                    }
                },
                _ => {
                    fail(self, sa, "missing KE");
                    return;
                }
            },
            _ => {
                fail(self, sa, "DH group mismatch");
                return;
            }
        };
        let State::Established(est) = &sa.state else {
            return;
        };
        let Ok(km) = child_sa_keys(
            &est.keys.prf,
            est.keys.sk.sk_d.as_bytes(),
            g_ir.as_ref().map(|s| s.as_bytes()),
            &p.ni,
            nr,
            suite.encr.id,
            suite.encr.key_bits,
            negotiate::real_integ(suite.integ),
        ) else {
            fail(self, sa, "child key derivation");
            return;
        };
        // A collision where both exchanges completed (§2.8.1): the SA created with the lowest
        // of the four nonces is redundant and closed by its initiator.
        let ours_redundant = match collision.as_ref() {
            Some(c) => {
                let ours = p.ni.as_slice().min(nr.as_slice());
                let theirs = c.peer_ni.as_slice().min(c.our_nr.as_slice());
                ours < theirs
            }
            None => p.abandoned,
        };
        let replaces = match old {
            Some((i, o)) if !ours_redundant => Some((i, o, true)),
            _ => None,
        };
        self.child_established(
            sa, true, p.new_spi, peer_spi, suite, km, p.tsi, p.tsr, replaces,
        );
        if ours_redundant {
            // Redundant: never reported to the driver, deleted at once; the peer's SA replaces
            // the old one (the peer deletes the old SA).
            debug!(conn = %conn, "Child SA rekey collision: our SA is redundant, deleting it");
            let _ = self.events.pop_back();
            sa.hidden.insert(p.new_spi);
            if let Some(c) = sa.child_info.get_mut(&p.new_spi) {
                c.status = ChildStatus::Deleting;
            }
            sa.queue.push_front(Action::DeleteChild(p.new_spi));
            if let Some(c) = collision.take() {
                self.release_collision(sa, c);
            }
        } else if old.is_some() {
            if collision.take().is_some() {
                // The peer's SA is the redundant one: it stays hidden until the peer deletes it.
                debug!(conn = %conn, "Child SA rekey collision: ours survives");
            }
            if let Some(c) = sa.child_info.get_mut(&p.old_in) {
                c.status = ChildStatus::Rekeyed;
            }
            sa.queue.retain(|a| *a != Action::RekeyChild(p.old_in));
            sa.queue.push_front(Action::DeleteChild(p.old_in));
        }
    }

    /// The answer to our Child SA DELETE.
    pub(super) fn delete_child_response(&mut self, sa: &mut IkeSa, inbound: u32) {
        self.child_gone(sa, inbound);
    }
}
