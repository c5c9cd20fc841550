//! INFORMATIONAL exchanges (RFC 7296 §1.4, §1.4.1, §2.4): DELETE of IKE and Child SAs in both
//! roles and liveness checks.

use super::state::{Action, ChildStatus, IkeSa, Request, State};
use super::*;
use crate::config::DpdAction;

impl Endpoint {
    pub(super) fn informational_request(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        req: Header,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
    ) {
        let conn = self.conns[sa.conn].name.clone();
        let mut reply = Vec::new();
        let mut delete_ike = false;
        let mut deleted_in = Vec::new();
        for p in &inner {
            if let Payload::Delete(d) = p {
                if d.protocol == ProtocolId::IKE {
                    delete_ike = true;
                } else if d.protocol == ProtocolId::ESP {
                    for spi in &d.spis {
                        let Ok(b) = <[u8; 4]>::try_from(spi.as_slice()) else {
                            continue;
                        };
                        let out = u32::from_be_bytes(b);
                        if let Some(&(i, _)) = sa.children.iter().find(|c| c.1 == out) {
                            deleted_in.push(i.to_be_bytes().to_vec());
                            // The peer deletes the SA both sides were rekeying: its rekey won
                            // the collision (§2.8.1), report its new SA before the old one goes.
                            if let Some(c) = sa
                                .rekey
                                .as_mut()
                                .filter(|p| p.old_in == i)
                                .and_then(|p| p.collision.take())
                            {
                                self.release_collision(sa, c);
                            }
                            self.child_gone(sa, i);
                        }
                    }
                }
            }
        }
        if delete_ike {
            self.respond(sa, req, local, remote, Vec::new());
            self.delete_all_children(sa);
            if sa.superseded {
                debug!(conn = %conn, "rekeyed IKE SA deleted by peer");
            } else {
                info!(conn = %conn, "IKE SA deleted by peer");
                self.events.push_back(Event::IkeSaDeleted {
                    conn,
                    id: IkeSaId(sa.our_spi()),
                });
            }
            sa.state = State::Dead;
            return;
        }
        if !deleted_in.is_empty() {
            reply.push(Payload::Delete(DeletePayload {
                protocol: ProtocolId::ESP,
                spis: deleted_in,
            }));
        }
        // Empty request = liveness check (§1.4): an empty response.
        self.respond(sa, req, local, remote, reply);
    }

    pub(super) fn delete_all_children(&mut self, sa: &mut IkeSa) {
        let conn = self.conns[sa.conn].name.clone();
        sa.child_info.clear();
        self.drop_queue(sa, FailReason::IkeSaClosed);
        for (i, o) in std::mem::take(&mut sa.children) {
            self.inbound_spis.remove(&i);
            self.events.push_back(Event::ChildSaDeleted {
                conn: conn.clone(),
                id: IkeSaId(sa.our_spi()),
                inbound_spi: i,
                outbound_spi: o,
            });
        }
    }

    // ---------------------------------------------------------------- our INFORMATIONAL requests

    pub(super) fn send_informational(
        &mut self,
        sa: &mut IkeSa,
        payloads: Vec<Payload>,
        kind: Request,
        now: Instant,
    ) -> bool {
        self.send_protected(sa, ExchangeType::INFORMATIONAL, payloads, kind, now)
    }

    /// Deletes an established IKE SA (and its Child SAs): sends INFORMATIONAL with a Delete
    /// payload; `IkeSaDeleted` follows on the response or after the retransmissions.
    pub fn delete_ike_sa(&mut self, id: IkeSaId, now: Instant) -> bool {
        let Some(mut sa) = self.sas.remove(&id.0) else {
            return false;
        };
        let ok = matches!(sa.state, State::Established(_))
            && self.send_informational(
                &mut sa,
                vec![Payload::Delete(DeletePayload {
                    protocol: ProtocolId::IKE,
                    spis: vec![],
                })],
                Request::DeleteIke,
                now,
            );
        self.sas.insert(id.0, sa);
        ok
    }

    /// Sends an empty INFORMATIONAL request (liveness check, RFC 7296 §1.4); a missing answer
    /// ends in `IkeSaFailed { reason: Timeout }`.
    pub fn send_liveness_check(&mut self, id: IkeSaId, now: Instant) -> bool {
        let Some(mut sa) = self.sas.remove(&id.0) else {
            return false;
        };
        let ok = matches!(sa.state, State::Established(_))
            && self.send_informational(&mut sa, vec![], Request::Informational, now);
        self.sas.insert(id.0, sa);
        ok
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

    /// The answer to our Child SA DELETE.
    pub(super) fn delete_child_response(&mut self, sa: &mut IkeSa, inbound: u32) {
        self.child_gone(sa, inbound);
    }
}
