//! Child SA rekeying (RFC 7296 §1.3.3, §2.8, §2.8.1, §2.25): scheduled and on-demand rekeys with
//! CREATE_CHILD_SA (with or without PFS) in both roles, make-before-break events, collisions.
//!
//! Collisions (§2.8.1) are resolved without creating redundant SAs where possible: when a rekey
//! request arrives for a Child SA we are rekeying ourselves, the exchange whose initiator nonce
//! is higher wins; the loser's request is answered with TEMPORARY_FAILURE by the winner, and the
//! winner's request is answered normally by the loser. Both sides see both nonces, so they agree.
//! If a losing exchange still completes, the redundant SA is deleted by its initiator.

use super::child_create::{ChildRequest, Exchange, ReplyError, ReplyTs, accept_reply};
use super::state::{Action, ChildStatus, Collision, IkeSa, PendingRekey, Request, State};
use super::*;
use std::time::Duration;

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
    pub(super) fn start_rekey(&mut self, sa: &mut IkeSa, old_in: u32, now: Instant) -> bool {
        let Some(info) = sa.child_info.get(&old_in) else {
            return false;
        };
        if info.status != ChildStatus::Active || sa.rekey.is_some() {
            return false;
        }
        let (tsi, tsr, forced_group) = (info.local_ts.clone(), info.remote_ts.clone(), info.group);
        let group =
            forced_group.or_else(|| negotiate::esp_rekey_group(&self.conns[sa.conn].esp_proposals));
        let Some(child) = self.child_offer(sa.conn, tsi, tsr, group) else {
            return false;
        };
        let new_spi = child.spi;
        let mut payloads = vec![rekey_notify(old_in)];
        payloads.extend(child.payloads(true));
        sa.rekey = Some(PendingRekey {
            old_in,
            child,
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

    // ------------------------------------------------------------------ responder

    /// The peer's CREATE_CHILD_SA rekeying the Child SA it sends on with `old_out` (REKEY_SA).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn child_rekey_request(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        req: Header,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
        old_out: u32,
    ) -> Result<(), DropReason> {
        let Some(&(old_in, _)) = sa.children.iter().find(|c| c.1 == old_out) else {
            if sa.rekey.is_some() || sa.create.is_some() {
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
        let Some(ChildRequest { offer, ni, ke, .. }) = ChildRequest::parse(&inner) else {
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
                    if refuse && p.child.ni.as_slice() > ni {
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
        let peer_ni = ni.to_vec();
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
        let Some(info) = sa.child_info.get(&old_in).cloned() else {
            return Err(DropReason::Unexpected);
        };
        let ex = Exchange::Rekey {
            local_ts: &info.local_ts,
            remote_ts: &info.remote_ts,
        };
        let answer = match self.answer_child(sa, ex, offer, ni, ke, &[], &[]) {
            Ok(a) => a,
            Err(r) => {
                self.respond(sa, req, local, remote, vec![r.payload()]);
                return Err(r.drop);
            }
        };
        self.respond(sa, req, local, remote, answer.payloads());
        if let Some(c) = sa.child_info.get_mut(&old_in) {
            c.status = ChildStatus::Rekeyed;
        }
        sa.queue.retain(|a| *a != Action::RekeyChild(old_in));
        let (new_spi, our_nr) = (answer.spi, answer.nr.clone());
        self.answer_established(sa, answer, Some((old_in, old_out, false)));
        if collided && let Some(p) = sa.rekey.as_mut() {
            // Hold the peer's SA back from the driver until our exchange decides (§2.8.1).
            let event = self.events.pop_back();
            sa.hidden.insert(new_spi);
            p.collision = Some(Collision {
                peer_ni,
                our_nr,
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

    pub(super) fn rekey_response_inner(
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
            self.inbound_spis.remove(&p.child.spi);
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
        let fail = |this: &mut Self, sa: &mut IkeSa, why: &str| {
            this.inbound_spis.remove(&p.child.spi);
            warn!(conn = %conn, why, "Child SA rekey response unusable");
            if let Some(c) = sa.child_info.get_mut(&p.old_in)
                && c.status == ChildStatus::Rekeying
            {
                c.status = ChildStatus::Active;
                c.rekey_at = None;
            }
        };
        let Some(keys) = sa.state.keys() else {
            return;
        };
        let a = match accept_reply(keys, &p.child, None, &inner, ReplyTs::Kept) {
            Ok(a) => a,
            Err(e) => {
                let why = match e {
                    ReplyError::Unusable(why) => why,
                    ReplyError::Notify(_) => "error notify",
                    ReplyError::TsUnacceptable => "selectors",
                };
                fail(self, sa, why);
                return;
            }
        };
        // A collision where both exchanges completed (§2.8.1): the SA created with the lowest
        // of the four nonces is redundant and closed by its initiator.
        let ours_redundant = match collision.as_ref() {
            Some(c) => {
                let ours = p.child.ni.as_slice().min(a.nr.as_slice());
                let theirs = c.peer_ni.as_slice().min(c.our_nr.as_slice());
                ours < theirs
            }
            None => p.abandoned,
        };
        let replaces = match old {
            Some((i, o)) if !ours_redundant => Some((i, o, true)),
            _ => None,
        };
        let new_spi = p.child.spi;
        self.child_established(
            sa, true, new_spi, a.peer_spi, a.suite, a.km, a.tsi, a.tsr, replaces,
        );
        if ours_redundant {
            // Redundant: never reported to the driver, deleted at once; the peer's SA replaces
            // the old one (the peer deletes the old SA).
            debug!(conn = %conn, "Child SA rekey collision: our SA is redundant, deleting it");
            let _ = self.events.pop_back();
            sa.hidden.insert(p.child.spi);
            if let Some(c) = sa.child_info.get_mut(&p.child.spi) {
                c.status = ChildStatus::Deleting;
            }
            sa.queue.push_front(Action::DeleteChild(p.child.spi));
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
}
