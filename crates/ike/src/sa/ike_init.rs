//! IKE_SA_INIT (RFC 7296 §1.2, §2.6, §2.23): the initiator's request and its retries (COOKIE,
//! INVALID_KE_PAYLOAD), the responder's answer with cookies under load, NAT detection, and the
//! unauthenticated refusals (§2.5).

use super::state::{ExpectAuth, IkeSa, InitSent, Keys, Request, State};
use super::*;

impl Endpoint {
    /// Starts IKE_SA_INIT for the named connection as initiator.
    pub fn initiate(&mut self, conn: &str, now: Instant) -> Result<IkeSaId, InitiateError> {
        let idx = self
            .conns
            .iter()
            .position(|c| c.name == conn)
            .ok_or_else(|| InitiateError::UnknownConnection(conn.into()))?;
        let c = &self.conns[idx];
        if c.mode == ConnectionMode::ResponderOnly {
            return Err(InitiateError::ResponderOnly(conn.into()));
        }
        let group = negotiate::first_group(&c.ike_proposals)
            .ok_or_else(|| InitiateError::NoProposal(conn.into()))?;
        let offer = negotiate::ike_offer(&c.ike_proposals);
        let (local, remote) = (c.local_addr, c.remote_addr);
        let ispi = self.new_ike_spi();
        let kx = KeyExchange::generate(group, &mut *self.rng)
            .map_err(|_| InitiateError::NoProposal(conn.into()))?;
        let ni = self.nonce();
        let mut sa = IkeSa::new(idx, true, ispi, 0, local, remote, now);
        let init = InitSent {
            ni,
            kx,
            offer,
            request: Vec::new(),
            cookie: None,
            retries: 0,
        };
        info!(conn = %conn, ispi = %format_args!("{ispi:016x}"), %group, "initiating IKE_SA_INIT");
        self.send_init_request(&mut sa, init, now);
        self.sas.insert(ispi, sa);
        Ok(IkeSaId(ispi))
    }

    pub(super) fn send_init_request(&mut self, sa: &mut IkeSa, mut init: InitSent, now: Instant) {
        let c = &self.conns[sa.conn];
        let mut payloads = Vec::new();
        if let Some(cookie) = &init.cookie {
            payloads.push(Payload::Notify(NotifyPayload::new(
                NotifyType::COOKIE,
                cookie.clone(),
            )));
        }
        payloads.push(Payload::Sa(init.offer.clone()));
        payloads.push(Payload::Ke(KePayload {
            group: init.kx.group().0,
            data: init.kx.public_value().to_vec(),
        }));
        payloads.push(Payload::Nonce(init.ni.clone()));
        if c.fragmentation {
            payloads.push(Payload::Notify(NotifyPayload::new(
                NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )));
        }
        let src = if c.force_encap {
            // A hash that cannot match makes the peer believe we are behind a NAT.
            let mut b = vec![0u8; 20];
            self.rng.fill(&mut b);
            b
        } else {
            nat_hash(sa.ispi, 0, sa.local)
        };
        payloads.push(Payload::Notify(NotifyPayload::new(
            NotifyType::NAT_DETECTION_SOURCE_IP,
            src,
        )));
        payloads.push(Payload::Notify(NotifyPayload::new(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            nat_hash(sa.ispi, 0, sa.remote),
        )));
        let header = Header {
            ispi: sa.ispi,
            rspi: 0,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: Flags::INITIATOR,
            message_id: 0,
            length: 0,
        };
        let bytes = match (Message { header, payloads }).emit() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode IKE_SA_INIT");
                return;
            }
        };
        init.request = bytes.clone();
        sa.state = State::InitSent(Box::new(init));
        sa.next_msg_id = 1;
        self.send_request(sa, 0, bytes, Request::Init, now);
    }

    pub(super) fn refuse_critical(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        t: PayloadType,
    ) -> Result<(), DropReason> {
        // Only an unprotected IKE_SA_INIT request can be answered without keys (RFC 7296 §2.5).
        if let Ok(h) = Header::parse(data)
            && h.exchange == ExchangeType::IKE_SA_INIT
            && !h.is_response()
            && h.rspi == 0
            && self.conns.iter().any(|c| c.remote_addr.ip() == remote.ip())
        {
            self.send_init_error(
                local,
                remote,
                &h,
                NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                vec![t.0],
            );
            return Err(DropReason::Refused(
                NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
            ));
        }
        Err(DropReason::Malformed(
            WireError::UnsupportedCriticalPayload(t),
        ))
    }

    pub(super) fn refuse_version(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        v: u8,
    ) -> Result<(), DropReason> {
        // RFC 7296 §2.5: answer a higher major version with INVALID_MAJOR_VERSION (our version),
        // unauthenticated; only for IKE_SA_INIT requests from configured peers (no reflection).
        let err = DropReason::Malformed(WireError::UnsupportedVersion(v));
        let Ok(view) = crate::wire::HeaderView::new_checked(data) else {
            return Err(err);
        };
        if v > crate::wire::IKE_MAJOR_VERSION
            && view.exchange() == ExchangeType::IKE_SA_INIT
            && !view.flags().contains(Flags::RESPONSE)
            && view.rspi() == 0
            && self.conns.iter().any(|c| c.remote_addr.ip() == remote.ip())
        {
            let req = Header {
                ispi: view.ispi(),
                rspi: 0,
                next_payload: PayloadType::NONE,
                exchange: ExchangeType::IKE_SA_INIT,
                flags: Flags(0),
                message_id: view.message_id(),
                length: 0,
            };
            let version = vec![crate::wire::IKE_MAJOR_VERSION << 4];
            self.send_init_error(
                local,
                remote,
                &req,
                NotifyType::INVALID_MAJOR_VERSION,
                version,
            );
            return Err(DropReason::Refused(NotifyType::INVALID_MAJOR_VERSION));
        }
        Err(err)
    }

    pub(super) fn send_init_error(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        req: &Header,
        ty: NotifyType,
        data: Vec<u8>,
    ) {
        let header = Header {
            ispi: req.ispi,
            rspi: 0,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: Flags::RESPONSE,
            message_id: 0,
            length: 0,
        };
        let m = Message {
            header,
            payloads: vec![Payload::Notify(NotifyPayload::new(ty, data))],
        };
        if let Ok(b) = m.emit() {
            self.send(local, remote, &b);
        }
    }

    // ---------------------------------------------------------------- cookies (§2.6)

    /// The cookie for a request under the current secret.
    pub(super) fn cookie(&self, ni: &[u8], remote: SocketAddr, ispi: u64) -> Vec<u8> {
        Self::cookie_with(&self.cookie_secret, self.cookie_version, ni, remote, ispi)
    }

    /// Whether `echoed` is the cookie of this request under the current secret, or under the
    /// previous one (a peer that got its cookie just before a rotation, §2.6).
    pub(super) fn cookie_valid(
        &self,
        echoed: &[u8],
        ni: &[u8],
        remote: SocketAddr,
        ispi: u64,
    ) -> bool {
        let Some(&version) = echoed.first() else {
            return false;
        };
        let secret = if version == self.cookie_version {
            &self.cookie_secret
        } else if version == self.cookie_version.wrapping_sub(1)
            && let Some(prev) = &self.cookie_prev
        {
            prev
        } else {
            return false;
        };
        crate::crypto::ct_eq(
            echoed,
            &Self::cookie_with(secret, version, ni, remote, ispi),
        )
    }

    /// Draws a new cookie secret every [`COOKIE_SECRET_LIFETIME`], keeping the previous one
    /// for one more lifetime, so a cookie cannot be replayed for ever (RFC 7296 §2.6).
    pub(super) fn rotate_cookie_secret(&mut self, now: Instant) {
        let since = *self.cookie_since.get_or_insert(now);
        if now.saturating_duration_since(since) < COOKIE_SECRET_LIFETIME {
            return;
        }
        let mut fresh = vec![0u8; 32];
        self.rng.fill(&mut fresh);
        let old = std::mem::replace(&mut self.cookie_secret, SecretBytes::new(fresh));
        self.cookie_prev = Some(old);
        self.cookie_version = self.cookie_version.wrapping_add(1);
        self.cookie_since = Some(now);
    }

    pub(super) fn cookie_with(
        secret: &SecretBytes,
        version: u8,
        ni: &[u8],
        remote: SocketAddr,
        ispi: u64,
    ) -> Vec<u8> {
        use aws_lc_rs::digest;
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(ni);
        match remote.ip() {
            std::net::IpAddr::V4(a) => ctx.update(&a.octets()),
            std::net::IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&ispi.to_be_bytes());
        ctx.update(secret.as_bytes());
        let mut c = vec![version];
        c.extend_from_slice(ctx.finish().as_ref());
        c
    }

    // ---------------------------------------------------------------- responder: IKE_SA_INIT

    pub(super) fn handle_init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) -> Result<(), DropReason> {
        let h = msg.header;
        // A wildcard socket: our address is the one of the connection configured for this peer.
        let local = if local.ip().is_unspecified() {
            self.conns
                .iter()
                .find(|c| {
                    c.remote_addr.ip() == remote.ip() && c.mode != ConnectionMode::InitiatorOnly
                })
                .map(|c| SocketAddr::new(c.local_addr.ip(), local.port()))
                .ok_or(DropReason::NoConnection)?
        } else {
            local
        };
        if let Some(spi) = self.responder_index.get(&(remote, h.ispi)).copied()
            && let Some(sa) = self.sas.get(&spi)
        {
            match &sa.state {
                // The same request again: the cached response (RFC 7296 §2.1).
                State::ExpectAuth(st) if st.init_request == data => {
                    if let Some((0, resp)) = &sa.cached {
                        for r in resp.clone() {
                            self.send(local, remote, &r);
                        }
                    }
                    return Err(DropReason::Retransmission);
                }
                // A different request with the same SPI while half-open (a changed or forged
                // copy): handled as a new half-open SA, so it cannot pin the genuine one; the
                // hard half-open maximum below bounds how many such copies hold state.
                State::ExpectAuth(_) => {}
                _ => return Err(DropReason::Unexpected),
            }
        }
        let idx = self
            .conns
            .iter()
            .position(|c| {
                c.remote_addr.ip() == remote.ip()
                    && c.mode != ConnectionMode::InitiatorOnly
                    && (c.local_addr.ip().is_unspecified() || c.local_addr.ip() == local.ip())
            })
            .ok_or(DropReason::NoConnection)?;
        let (Some(Payload::Sa(sa_p)), Some(Payload::Ke(ke)), Some(Payload::Nonce(ni))) = (
            msg.find(PayloadType::SA),
            msg.find(PayloadType::KE),
            msg.find(PayloadType::NONCE),
        ) else {
            return Err(DropReason::Invalid(
                "IKE_SA_INIT request lacks SA, KE or Nonce",
            ));
        };
        if !(16..=256).contains(&ni.len()) {
            return Err(DropReason::Invalid("nonce length"));
        }
        // Cookies above the half-open threshold (§2.6): no state until the peer echoes one.
        let half_open = self
            .sas
            .values()
            .filter(|s| s.conn == idx && matches!(s.state, State::ExpectAuth(_)))
            .count();
        if half_open >= self.conns[idx].cookie_threshold {
            self.rotate_cookie_secret(now);
            let echoed = match msg.payloads.first() {
                Some(Payload::Notify(n)) if n.ty == NotifyType::COOKIE => Some(&n.data),
                _ => None,
            };
            if echoed.is_none_or(|c| !self.cookie_valid(c, ni, remote, h.ispi)) {
                let expected = self.cookie(ni, remote, h.ispi);
                self.send_init_error(local, remote, &h, NotifyType::COOKIE, expected);
                return Err(DropReason::CookieRequired);
            }
            // A cookie proves only that the sender receives at its address: past a hard
            // maximum (four times the cookie threshold) even cookie-bearing requests are
            // dropped, so no single address can pile up half-open state (and DH work).
            if half_open >= self.conns[idx].cookie_threshold.saturating_mul(4).max(1) {
                // At the maximum a request may only take the place of the oldest half-open SA
                // of its own initiator SPI (the cookie is bound to it): copies of one request
                // cannot grow the table, and the genuine request still gets through them.
                let victim = self
                    .sas
                    .iter()
                    .filter(|(_, s)| {
                        s.conn == idx
                            && s.ispi == h.ispi
                            && s.init_remote == remote
                            && matches!(s.state, State::ExpectAuth(_))
                    })
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| *k);
                let Some(victim) = victim else {
                    return Err(DropReason::HalfOpenLimit);
                };
                if let Some(old) = self.sas.remove(&victim) {
                    self.remove_sa(&old);
                }
            }
        }
        let conn = &self.conns[idx];
        let Some((reply, suite)) = negotiate::select_ike(sa_p, &conn.ike_proposals) else {
            warn!(
                conn = %conn.name, %remote,
                "NO_PROPOSAL_CHOSEN for IKE SA: {}",
                negotiate::describe_mismatch(sa_p, &conn.ike_proposals)
            );
            self.send_init_error(
                local,
                remote,
                &h,
                NotifyType::NO_PROPOSAL_CHOSEN,
                Vec::new(),
            );
            return Err(DropReason::Refused(NotifyType::NO_PROPOSAL_CHOSEN));
        };
        if DhId(ke.group) != suite.dh {
            info!(conn = %conn.name, %remote, offered = ke.group, wanted = %suite.dh, "asking for another KE group");
            self.send_init_error(
                local,
                remote,
                &h,
                NotifyType::INVALID_KE_PAYLOAD,
                suite.dh.0.to_be_bytes().to_vec(),
            );
            return Err(DropReason::Refused(NotifyType::INVALID_KE_PAYLOAD));
        }
        let force_encap = conn.force_encap;
        let kx = KeyExchange::generate(suite.dh, &mut *self.rng)
            .map_err(|_| DropReason::Invalid("key exchange"))?;
        let g_ir = kx
            .agree(&ke.data)
            .map_err(|_| DropReason::Invalid("peer key exchange value"))?;
        let rspi = self.new_ike_spi();
        let nr = self.nonce();
        // NAT detection: the request's hashes use SPIr = 0.
        let nat_src: Vec<&NotifyPayload> = msg
            .notifies()
            .filter(|n| n.ty == NotifyType::NAT_DETECTION_SOURCE_IP)
            .collect();
        let nat_dst = msg.notify(NotifyType::NAT_DETECTION_DESTINATION_IP);
        let natt_supported = !nat_src.is_empty() && nat_dst.is_some();
        let (mut nat, mut nat_peer, mut nat_local) = (false, false, false);
        if natt_supported {
            nat_peer = !nat_src
                .iter()
                .any(|n| n.data == nat_hash(h.ispi, 0, remote));
            nat_local = nat_dst.is_some_and(|n| n.data != nat_hash(h.ispi, 0, local));
            nat = nat_peer || nat_local || force_encap;
        }
        let mut payloads = vec![
            Payload::Sa(SaPayload {
                proposals: vec![reply],
            }),
            Payload::Ke(KePayload {
                group: suite.dh.0,
                data: kx.public_value().to_vec(),
            }),
            Payload::Nonce(nr.clone()),
        ];
        let frag = self.conns[idx].fragmentation
            && msg
                .notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
                .is_some();
        if frag {
            payloads.push(Payload::Notify(NotifyPayload::new(
                NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )));
        }
        if natt_supported {
            let src = if force_encap {
                let mut b = vec![0u8; 20];
                self.rng.fill(&mut b);
                b
            } else {
                nat_hash(h.ispi, rspi, local)
            };
            payloads.push(Payload::Notify(NotifyPayload::new(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                src,
            )));
            payloads.push(Payload::Notify(NotifyPayload::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                nat_hash(h.ispi, rspi, remote),
            )));
        }
        let header = Header {
            ispi: h.ispi,
            rspi,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: Flags::RESPONSE,
            message_id: 0,
            length: 0,
        };
        let response = (Message { header, payloads })
            .emit()
            .map_err(DropReason::Malformed)?;
        let keys = Keys::derive(suite, ni, &nr, h.ispi, rspi, g_ir.as_bytes(), false)
            .map_err(|_| DropReason::Invalid("key derivation"))?;
        let mut sa = IkeSa::new(idx, false, h.ispi, rspi, local, remote, now);
        sa.nat = nat;
        sa.nat_peer = nat_peer;
        sa.nat_local = nat_local;
        sa.peer_msg_id = 1;
        sa.expires = Some(now + self.conns[idx].half_open_timeout);
        sa.state = State::ExpectAuth(Box::new(ExpectAuth {
            keys,
            ni: ni.clone(),
            nr,
            init_request: data.to_vec(),
            init_response: response.clone(),
        }));
        sa.frag = frag;
        sa.cached = Some((0, vec![response.clone()]));
        info!(conn = %self.conns[idx].name, %remote, rspi = %format_args!("{rspi:016x}"), ?suite, nat, "IKE_SA_INIT answered");
        self.send(local, remote, &response);
        self.responder_index.insert((remote, h.ispi), rspi);
        self.sas.insert(rspi, sa);
        Ok(())
    }

    pub(super) fn initiator_init_response(
        &mut self,
        now: Instant,
        data: &[u8],
        msg: Message,
        sa: &mut IkeSa,
    ) -> Result<(), DropReason> {
        let State::InitSent(mut init) = std::mem::replace(&mut sa.state, State::Dead) else {
            return Err(DropReason::Unexpected);
        };
        let h = msg.header;
        if h.exchange != ExchangeType::IKE_SA_INIT {
            sa.state = State::InitSent(init);
            return Err(DropReason::Unexpected);
        }
        // COOKIE and INVALID_KE_PAYLOAD come with a zero responder SPI (RFC 7296 §2.6, §1.2).
        if let Some(c) = msg.notify(NotifyType::COOKIE).filter(|_| h.rspi == 0) {
            if c.data.is_empty() || c.data.len() > 64 || init.retries >= MAX_INIT_RETRIES {
                sa.state = State::InitSent(init);
                return Err(DropReason::Invalid("COOKIE"));
            }
            debug!("responder demands a cookie; retrying");
            init.cookie = Some(c.data.clone());
            init.retries += 1;
            self.send_init_request(sa, *init, now);
            return Ok(());
        }
        if let Some(n) = msg
            .notify(NotifyType::INVALID_KE_PAYLOAD)
            .filter(|_| h.rspi == 0)
        {
            let conn = &self.conns[sa.conn];
            let group = <[u8; 2]>::try_from(n.data.as_slice()).map(|b| DhId(u16::from_be_bytes(b)));
            match group {
                Ok(g)
                    if init.retries < MAX_INIT_RETRIES
                        && g != init.kx.group()
                        && negotiate::group_offered(&conn.ike_proposals, g) =>
                {
                    info!(conn = %conn.name, group = %g, "peer wants another KE group; retrying");
                    let Ok(kx) = KeyExchange::generate(g, &mut *self.rng) else {
                        self.fail(sa, FailReason::InvalidKePayload);
                        return Ok(());
                    };
                    init.kx = kx;
                    init.cookie = None;
                    init.retries += 1;
                    self.send_init_request(sa, *init, now);
                    return Ok(());
                }
                _ => {
                    self.fail(sa, FailReason::InvalidKePayload);
                    return Ok(());
                }
            }
        }
        if let Some(n) = msg.notifies().find(|n| n.ty.is_error()) {
            let conn = &self.conns[sa.conn];
            let reason = if n.ty == NotifyType::NO_PROPOSAL_CHOSEN {
                warn!(
                    conn = %conn.name,
                    "peer answered NO_PROPOSAL_CHOSEN to our IKE proposals [{}]",
                    conn.ike_proposals.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
                FailReason::NoProposalChosen
            } else {
                FailReason::PeerError(n.ty)
            };
            self.fail(sa, reason);
            return Ok(());
        }
        let (Some(Payload::Sa(sa_p)), Some(Payload::Ke(ke)), Some(Payload::Nonce(nr))) = (
            msg.find(PayloadType::SA),
            msg.find(PayloadType::KE),
            msg.find(PayloadType::NONCE),
        ) else {
            sa.state = State::InitSent(init);
            return Err(DropReason::Invalid(
                "IKE_SA_INIT response lacks SA, KE or Nonce",
            ));
        };
        if h.rspi == 0 || !(16..=256).contains(&nr.len()) {
            sa.state = State::InitSent(init);
            return Err(DropReason::Invalid("IKE_SA_INIT response SPI or nonce"));
        }
        let Some(suite) = negotiate::accept_ike_reply(sa_p, &init.offer) else {
            self.fail(
                sa,
                FailReason::Protocol("responder chose a proposal we did not offer"),
            );
            return Ok(());
        };
        if suite.dh != init.kx.group() || DhId(ke.group) != suite.dh {
            self.fail(
                sa,
                FailReason::Protocol("KE group differs from the chosen one"),
            );
            return Ok(());
        }
        let g_ir = match init.kx.agree(&ke.data) {
            Ok(g) => g,
            Err(_) => {
                self.fail(sa, FailReason::Protocol("invalid responder KE value"));
                return Ok(());
            }
        };
        sa.rspi = h.rspi;
        let conn = &self.conns[sa.conn];
        // NAT detection (§2.23); the response's hashes use both SPIs.
        let nat_src: Vec<&NotifyPayload> = msg
            .notifies()
            .filter(|n| n.ty == NotifyType::NAT_DETECTION_SOURCE_IP)
            .collect();
        let nat_dst = msg.notify(NotifyType::NAT_DETECTION_DESTINATION_IP);
        if !nat_src.is_empty() && nat_dst.is_some() {
            let peer_behind = !nat_src
                .iter()
                .any(|n| n.data == nat_hash(sa.ispi, sa.rspi, sa.remote));
            let we_behind = nat_dst.is_some_and(|n| n.data != nat_hash(sa.ispi, sa.rspi, sa.local));
            sa.nat = peer_behind || we_behind || conn.force_encap;
            sa.nat_peer = peer_behind;
            sa.nat_local = we_behind;
        }
        if sa.nat {
            sa.local = with_port(sa.local, NATT_PORT);
            sa.remote = with_port(sa.remote, NATT_PORT);
        }
        let keys = match Keys::derive(suite, &init.ni, nr, sa.ispi, sa.rspi, g_ir.as_bytes(), true)
        {
            Ok(k) => k,
            Err(_) => {
                self.fail(sa, FailReason::Protocol("key derivation"));
                return Ok(());
            }
        };
        sa.frag = self.conns[sa.conn].fragmentation
            && msg
                .notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
                .is_some();
        info!(conn = %self.conns[sa.conn].name, rspi = %format_args!("{:016x}", sa.rspi), ?suite, nat = sa.nat, "IKE_SA_INIT done, sending IKE_AUTH");
        self.send_auth_request(sa, keys, &init, nr, data.to_vec(), now);
        Ok(())
    }
}
