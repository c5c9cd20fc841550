//! IKE_AUTH (RFC 7296 §1.2, §2.15, §2.16): PSK authentication in both roles, the responder's
//! choice of connection (addresses, then identities), INITIAL_CONTACT (§3.10.1), and the first
//! Child SA, created with the shared code of `child_create`.

use super::child_create::{Exchange, Refusal, ReplyError, ReplyTs, accept_reply};
use super::state::{AuthSent, IkeSa, InitSent, Keys, Request, State};
use super::*;
use crate::config::Identity;

impl Endpoint {
    /// Initiator: the IKE_AUTH request (RFC 7296 §1.2): IDi, INITIAL_CONTACT, [IDr], AUTH and the
    /// first Child SA's SA, TSi, TSr.
    pub(super) fn send_auth_request(
        &mut self,
        sa: &mut IkeSa,
        keys: Keys,
        init: &InitSent,
        nr: &[u8],
        init_response: Vec<u8>,
        now: Instant,
    ) {
        let child = self.auth_child_offer(sa.conn, &init.ni);
        let conn = &self.conns[sa.conn];
        let idi = conn.local_id.to_payload();
        let auth = psk_auth(
            &keys.prf,
            &conn.psk,
            &init.request,
            nr,
            keys.sk.sk_pi.as_bytes(),
            &idi.body(),
        );
        let mut payloads = vec![Payload::IdI(idi)];
        // INITIAL_CONTACT asserts that this IKE SA is the only one between the two identities
        // (RFC 7296 §3.10.1): not while another IKE SA of the connection exists or is being set
        // up (both sides initiating at once). Sent then, it made strongSwan destroy its own
        // crossing IKE SA at the moment we kept that one, and delete the other.
        let alone = !self
            .sas
            .values()
            .any(|s| s.conn == sa.conn && s.our_spi() != sa.our_spi() && !s.state.is_dead());
        sa.initial_contact = conn.initial_contact && alone;
        if sa.initial_contact {
            payloads.push(Payload::Notify(NotifyPayload::new(
                NotifyType::INITIAL_CONTACT,
                vec![],
            )));
        }
        if let Some(r) = &conn.remote_id {
            payloads.push(Payload::IdR(r.to_payload()));
        }
        payloads.push(Payload::Auth(AuthPayload {
            method: AuthMethod::SHARED_KEY_MIC,
            data: auth.as_bytes().to_vec(),
        }));
        payloads.extend(child.payloads(false));
        let header = Header {
            ispi: sa.ispi,
            rspi: sa.rspi,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::IKE_AUTH,
            flags: Flags::INITIATOR,
            message_id: 1,
            length: 0,
        };
        let max = sa.frag.then_some(conn.fragment_size);
        let bytes = match protect::seal_fragments(&keys, &mut *self.rng, header, &payloads, max) {
            Ok(b) => b,
            Err(_) => {
                self.inbound_spis.remove(&child.spi);
                self.fail(sa, FailReason::Protocol("cannot seal IKE_AUTH"));
                return;
            }
        };
        sa.state = State::AuthSent(Box::new(AuthSent {
            keys,
            ni: init.ni.clone(),
            nr: nr.to_vec(),
            init_response,
            child,
        }));
        sa.next_msg_id = 2;
        self.send_request_set(sa, 1, bytes, Request::Auth, now);
    }

    pub(super) fn responder_auth(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        req: Header,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
    ) -> Result<(), DropReason> {
        let find = |t: PayloadType| inner.iter().find(|p| p.payload_type() == t);
        let (Some(Payload::IdI(idi)), Some(Payload::Auth(auth))) =
            (find(PayloadType::IDI), find(PayloadType::AUTH))
        else {
            return Err(DropReason::Invalid("IKE_AUTH request lacks IDi or AUTH"));
        };
        let State::ExpectAuth(st) = std::mem::replace(&mut sa.state, State::Dead) else {
            return Err(DropReason::Unexpected);
        };
        let init_local = sa.local;
        // The authenticated message's addresses become the SA's (NAT-T float, §2.23).
        sa.local = local;
        sa.remote = remote;
        let peer_id = Identity::from_payload(idi);
        let wanted_id = match find(PayloadType::IDR) {
            Some(Payload::IdR(r)) => Some(Identity::from_payload(r)),
            _ => None,
        };
        // The connection: the (local, peer) address pair of IKE_SA_INIT first, then the
        // identities among those (IDi must be the peer's, IDr if sent ours); the connection
        // chosen at IKE_SA_INIT first if it still fits, then the first whose PSK verifies.
        let mut cands: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.mode != ConnectionMode::InitiatorOnly
                    && c.remote_addr.ip() == sa.init_remote.ip()
                    && (c.local_addr.ip().is_unspecified() || c.local_addr.ip() == init_local.ip())
                    && c.remote_id.as_ref().is_none_or(|r| r.matches(&peer_id))
                    && wanted_id.as_ref().is_none_or(|w| c.local_id.matches(w))
            })
            .map(|(i, _)| i)
            .collect();
        if let Some(pos) = cands.iter().position(|&i| i == sa.conn) {
            let first = cands.remove(pos);
            cands.insert(0, first);
        }
        let verified = cands.into_iter().find(|&i| {
            auth.method == AuthMethod::SHARED_KEY_MIC
                && verify_psk_auth(
                    &st.keys.prf,
                    &self.conns[i].psk,
                    &st.init_request,
                    &st.nr,
                    st.keys.sk.sk_pi.as_bytes(),
                    &idi.body(),
                    &auth.data,
                )
                .is_ok()
        });
        sa.state = State::Established(Box::new(state::Established { keys: st.keys }));
        let Some(idx) = verified else {
            warn!(conn = %self.conns[sa.conn].name, %remote, peer_id = %peer_id, "AUTHENTICATION_FAILED: peer AUTH or identity does not verify");
            let payloads = vec![Payload::Notify(NotifyPayload::new(
                NotifyType::AUTHENTICATION_FAILED,
                vec![],
            ))];
            self.respond(sa, req, local, remote, payloads);
            let reason = FailReason::AuthenticationFailed;
            sa.state = State::Dead;
            self.counters.ike_failed += 1;
            self.events.push_back(Event::IkeSaFailed {
                conn: self.conns[sa.conn].name.clone(),
                id: IkeSaId(sa.our_spi()),
                reason,
            });
            return Err(DropReason::Refused(NotifyType::AUTHENTICATION_FAILED));
        };
        sa.conn = idx;
        sa.expires = None;
        sa.established_at = Some(now);
        let State::Established(est) = &sa.state else {
            return Err(DropReason::Unexpected);
        };
        let conn = &self.conns[idx];
        let idr = conn.local_id.to_payload();
        let our_auth = psk_auth(
            &est.keys.prf,
            &conn.psk,
            &st.init_response,
            &st.ni,
            est.keys.sk.sk_pr.as_bytes(),
            &idr.body(),
        );
        let mut payloads = vec![
            Payload::IdR(idr),
            Payload::Auth(AuthPayload {
                method: AuthMethod::SHARED_KEY_MIC,
                data: our_auth.as_bytes().to_vec(),
            }),
        ];
        self.counters.ike_established += 1;
        sa.initial_contact = find_notify(&inner, NotifyType::INITIAL_CONTACT);
        info!(conn = %conn.name, peer_id = %peer_id, %remote, "IKE SA established (responder)");
        self.events.push_back(Event::IkeSaEstablished {
            conn: conn.name.clone(),
            id: IkeSaId(sa.our_spi()),
            initiator: false,
            ispi: sa.ispi,
            rspi: sa.rspi,
            local: sa.local,
            remote: sa.remote,
            started: sa.started,
            initial_contact: sa.initial_contact,
        });
        // The first Child SA.
        let (child, req_tsi, req_tsr) = match (
            find(PayloadType::SA),
            find(PayloadType::TSI),
            find(PayloadType::TSR),
        ) {
            (Some(Payload::Sa(sa_p)), Some(Payload::TsI(tsi)), Some(Payload::TsR(tsr))) => {
                let ex = Exchange::IkeAuth { nr: &st.nr };
                let child = self.answer_child(sa, ex, sa_p, &st.ni, None, tsi, tsr);
                (child, tsi.clone(), tsr.clone())
            }
            _ => (
                Err(Refusal::new(
                    NotifyType::INVALID_SYNTAX,
                    FailReason::Protocol("IKE_AUTH without SA/TSi/TSr"),
                    DropReason::Invalid("IKE_AUTH without SA/TSi/TSr"),
                )),
                Vec::new(),
                Vec::new(),
            ),
        };
        if sa.initial_contact {
            self.initial_contact(sa);
        }
        match child {
            Ok(a) => {
                payloads.extend(a.payloads());
                self.respond(sa, req, local, remote, payloads);
                self.answer_established(sa, a, None);
            }
            Err(r) => {
                payloads.push(r.payload());
                self.respond(sa, req, local, remote, payloads);
                self.child_failed(sa, false, r.reason, req_tsr, req_tsi);
            }
        }
        Ok(())
    }

    /// INITIAL_CONTACT (RFC 7296 §3.10.1): the peer has no other state with us, so our IKE SAs of
    /// this connection that were established before this one's IKE_SA_INIT arrived are stale;
    /// they are dropped without notifying the peer. An IKE SA whose setup overlapped this one
    /// (both sides initiating at once, each IKE_AUTH with INITIAL_CONTACT) stays: the driver
    /// picks one of the two by a rule both sides apply.
    pub(super) fn initial_contact(&mut self, current: &IkeSa) {
        let stale: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, s)| {
                s.conn == current.conn
                    && matches!(s.state, State::Established(_))
                    && s.established_at.is_some_and(|e| e < current.started)
            })
            .map(|(k, _)| *k)
            .collect();
        for spi in stale {
            if let Some(mut old) = self.sas.remove(&spi) {
                let conn = self.conns[old.conn].name.clone();
                info!(conn = %conn, spi = %format_args!("{spi:016x}"), "INITIAL_CONTACT: dropping stale IKE SA");
                self.delete_all_children(&mut old);
                self.remove_sa(&old);
                self.events.push_back(Event::IkeSaDeleted {
                    conn,
                    id: IkeSaId(spi),
                });
            }
        }
    }

    pub(super) fn initiator_auth_response(
        &mut self,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
        now: Instant,
    ) -> Result<(), DropReason> {
        let State::AuthSent(st) = std::mem::replace(&mut sa.state, State::Dead) else {
            return Err(DropReason::Unexpected);
        };
        let find = |t: PayloadType| inner.iter().find(|p| p.payload_type() == t);
        let notify = |t: NotifyType| {
            inner
                .iter()
                .any(|p| matches!(p, Payload::Notify(n) if n.ty == t))
        };
        let conn = &self.conns[sa.conn];
        let (Some(Payload::IdR(idr)), Some(Payload::Auth(auth))) =
            (find(PayloadType::IDR), find(PayloadType::AUTH))
        else {
            self.inbound_spis.remove(&st.child.spi);
            let reason = if notify(NotifyType::AUTHENTICATION_FAILED) {
                warn!(conn = %conn.name, "peer answered AUTHENTICATION_FAILED (PSK or identity mismatch)");
                FailReason::AuthenticationFailed
            } else if let Some(Payload::Notify(n)) = inner
                .iter()
                .find(|p| matches!(p, Payload::Notify(n) if n.ty.is_error()))
            {
                FailReason::PeerError(n.ty)
            } else {
                FailReason::Protocol("IKE_AUTH response lacks IDr or AUTH")
            };
            self.fail(sa, reason);
            return Ok(());
        };
        let peer_id = crate::config::Identity::from_payload(idr);
        if conn
            .remote_id
            .as_ref()
            .is_some_and(|r| !r.matches(&peer_id))
        {
            warn!(conn = %conn.name, peer_id = %peer_id, "responder identity does not match the configured remote id");
            self.inbound_spis.remove(&st.child.spi);
            self.fail(sa, FailReason::IdentityMismatch);
            return Ok(());
        }
        let ok = auth.method == AuthMethod::SHARED_KEY_MIC
            && verify_psk_auth(
                &st.keys.prf,
                &conn.psk,
                &st.init_response,
                &st.ni,
                st.keys.sk.sk_pr.as_bytes(),
                &idr.body(),
                &auth.data,
            )
            .is_ok();
        if !ok {
            warn!(conn = %conn.name, "responder AUTH does not verify (PSK mismatch)");
            self.inbound_spis.remove(&st.child.spi);
            self.fail(sa, FailReason::AuthenticationFailed);
            return Ok(());
        }
        let AuthSent {
            keys, nr, child, ..
        } = *st;
        sa.state = State::Established(Box::new(state::Established { keys }));
        sa.established_at = Some(now);
        self.counters.ike_established += 1;
        let conn = &self.conns[sa.conn];
        info!(conn = %conn.name, peer_id = %peer_id, remote = %sa.remote, "IKE SA established (initiator)");
        self.events.push_back(Event::IkeSaEstablished {
            conn: conn.name.clone(),
            id: IkeSaId(sa.our_spi()),
            initiator: true,
            ispi: sa.ispi,
            rspi: sa.rspi,
            local: sa.local,
            remote: sa.remote,
            started: sa.started,
            initial_contact: sa.initial_contact,
        });
        let Some(keys) = sa.state.keys() else {
            return Err(DropReason::Unexpected);
        };
        match accept_reply(keys, &child, Some(&nr), &inner, ReplyTs::Narrowed) {
            Ok(a) => {
                self.child_established(
                    sa, true, child.spi, a.peer_spi, a.suite, a.km, a.tsi, a.tsr, None,
                );
            }
            Err(e) => {
                self.inbound_spis.remove(&child.spi);
                let conn = &self.conns[sa.conn];
                match &e {
                    ReplyError::Notify(n) if n.ty == NotifyType::NO_PROPOSAL_CHOSEN => warn!(
                        conn = %conn.name,
                        "peer answered NO_PROPOSAL_CHOSEN to our ESP proposals [{}]",
                        conn.esp_proposals.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    ReplyError::Notify(n) if n.ty == NotifyType::TS_UNACCEPTABLE => warn!(
                        conn = %conn.name,
                        "peer answered TS_UNACCEPTABLE to our TSi {} TSr {}",
                        ts::display(&child.tsi), ts::display(&child.tsr)
                    ),
                    _ => {}
                }
                self.child_failed(sa, true, e.reason(), child.tsi, child.tsr);
            }
        }
        Ok(())
    }
}
