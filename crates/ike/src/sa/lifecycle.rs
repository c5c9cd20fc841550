//! Child and IKE SA lifecycle (RFC 7296 §2.8, §2.3): lifetimes turned into queued work, the
//! request window (one outstanding request, §2.3) that runs the queue, the dispatch of the
//! peer's CREATE_CHILD_SA requests (§1.3), and graceful shutdown.

use super::state::{Action, ChildInfo, ChildStatus, IkeSa, Request, State};
use super::*;
use std::time::Duration;

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
        suite: crate::proposal::ChildSuite,
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
                suite,
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
        [dpd, child, ike, sa.wake_at].into_iter().flatten().min()
    }

    /// Schedules lifetimes, turns due ones into queued work, and starts queued work when the
    /// request window is free.
    pub(super) fn service(&mut self, sa: &mut IkeSa, now: Instant) {
        if !matches!(sa.state, State::Established(_)) {
            return;
        }
        sa.wake_at = None;
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
                Action::CreateChild(q) => {
                    self.start_create(sa, *q, now);
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
                self.drop_queue(&mut sa, FailReason::IkeSaClosed);
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

    pub(super) fn ike_of_child(&self, inbound_spi: u32) -> Option<u64> {
        self.sas
            .iter()
            .find(|(_, s)| s.children.iter().any(|c| c.0 == inbound_spi))
            .map(|(k, _)| *k)
    }

    // ------------------------------------------------------------------ responder

    /// A CREATE_CHILD_SA request (RFC 7296 §1.3): an IKE SA rekey (an IKE proposal, no REKEY_SA),
    /// a Child SA rekey (REKEY_SA) or a new Child SA (neither).
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
        match rekey {
            Some(old_out) => self.child_rekey_request(local, remote, req, inner, sa, old_out),
            None => self.new_child_request(local, remote, req, inner, sa),
        }
    }
}
