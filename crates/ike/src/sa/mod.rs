//! The IKE endpoint (RFC 7296 §2): owns every IKE SA of a set of configured connections and
//! drives IKE_SA_INIT, IKE_AUTH (PSK, §2.15), the first Child SA (§2.17), INFORMATIONAL
//! (DELETE and liveness), retransmission (§2.1), cookies (§2.6) and NAT-T (§2.23). Sans-IO in
//! the style of quinn-proto: `handle` / `handle_timeout` in, `poll_transmit` / `poll_event` /
//! `poll_timeout` out.

mod event;
mod fragment;
mod ike_rekey;
mod lifecycle;
mod protect;
mod state;

pub use event::*;

use crate::config::{ConnectionConfig, ConnectionMode, NATT_PORT};
use crate::crypto::{
    ChildSaKeys, KeyExchange, Rng, SecretBytes, child_sa_keys, psk_auth, verify_psk_auth,
};
use crate::negotiate;
use crate::proposal::ChildSuite;
use crate::transform::DhId;
use crate::ts;
use crate::wire::{
    AuthMethod, AuthPayload, DeletePayload, ExchangeType, Flags, Header, KePayload, Message,
    NON_ESP_MARKER, NotifyPayload, NotifyType, Payload, PayloadType, ProtocolId, SaPayload,
    TrafficSelector, WireError,
};
use state::{AuthSent, ExpectAuth, IkeSa, InitSent, Keys, Outstanding, Request, State};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{debug, info, warn};

/// Nonce length we send (RFC 7296 §2.10: at least half the PRF key size, at least 16).
const NONCE_LEN: usize = 32;
/// How often an initiator follows COOKIE or INVALID_KE_PAYLOAD before giving up.
const MAX_INIT_RETRIES: u32 = 4;

/// Why `initiate` could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InitiateError {
    /// No connection of that name.
    #[error("no connection named {0}")]
    UnknownConnection(String),
    /// The connection is responder-only.
    #[error("connection {0} is responder-only")]
    ResponderOnly(String),
    /// No runnable IKE proposal (or unsupported group).
    #[error("connection {0} has no usable IKE proposal")]
    NoProposal(String),
}

/// Owns all IKE SAs for a set of connections. Deterministic given its `Rng` and the `now`
/// values it is handed.
pub struct Endpoint {
    conns: Vec<ConnectionConfig>,
    sas: HashMap<u64, IkeSa>,
    /// (peer address, initiator SPI) -> our SPI, for responder SAs (IKE_SA_INIT retransmissions).
    responder_index: HashMap<(SocketAddr, u64), u64>,
    inbound_spis: HashSet<u32>,
    rng: Box<dyn Rng + Send>,
    cookie_secret: SecretBytes,
    /// The previous cookie secret, still accepted for one lifetime after a rotation (§2.6).
    cookie_prev: Option<SecretBytes>,
    /// Version byte of `cookie_secret` (the first octet of every cookie).
    cookie_version: u8,
    /// When `cookie_secret` was drawn (set at the first IKE_SA_INIT request seen).
    cookie_since: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("connections", &self.conns.len())
            .field("ike_sas", &self.sas.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// How long a cookie secret is used before a new one is drawn (the previous one stays valid
/// for as long again): RFC 7296 §2.6 asks for periodic regeneration.
pub const COOKIE_SECRET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (RFC 7296 §2.23).
fn nat_hash(ispi: u64, rspi: u64, addr: SocketAddr) -> Vec<u8> {
    use aws_lc_rs::digest;
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&ispi.to_be_bytes());
    ctx.update(&rspi.to_be_bytes());
    match addr.ip() {
        std::net::IpAddr::V4(a) => ctx.update(&a.octets()),
        std::net::IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

fn with_port(mut a: SocketAddr, port: u16) -> SocketAddr {
    a.set_port(port);
    a
}

impl Endpoint {
    /// An endpoint for `conns`, drawing every random value (SPIs, nonces, IVs, DH secrets,
    /// the cookie secret) from `rng`.
    pub fn new(conns: Vec<ConnectionConfig>, mut rng: Box<dyn Rng + Send>) -> Self {
        let mut secret = vec![0u8; 32];
        rng.fill(&mut secret);
        for c in &conns {
            for p in c.ike_proposals.iter().chain(&c.esp_proposals) {
                for w in p.legacy_warnings() {
                    warn!(conn = %c.name, "{w}");
                }
            }
        }
        Self {
            conns,
            sas: HashMap::new(),
            responder_index: HashMap::new(),
            inbound_spis: HashSet::new(),
            rng,
            cookie_secret: SecretBytes::new(secret),
            cookie_prev: None,
            cookie_version: 1,
            cookie_since: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The configured connections.
    pub fn connections(&self) -> &[ConnectionConfig] {
        &self.conns
    }

    /// Counters of everything received, sent and dropped.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Number of IKE SAs (any state).
    pub fn ike_sa_count(&self) -> usize {
        self.sas.len()
    }

    /// The current (local, remote) addresses of an IKE SA: where its messages go, which moves
    /// with NAT rebinding (RFC 7296 §2.23).
    pub fn addresses(&self, id: IkeSaId) -> Option<(SocketAddr, SocketAddr)> {
        self.sas.get(&id.0).map(|s| (s.local, s.remote))
    }

    /// Number of half-open responder SAs.
    pub fn half_open_count(&self) -> usize {
        self.sas
            .values()
            .filter(|s| matches!(s.state, State::ExpectAuth(_)))
            .count()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest deadline (retransmission or half-open expiry).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sas
            .values()
            .flat_map(|s| {
                [
                    s.outstanding.as_ref().map(|o| o.deadline),
                    s.expires,
                    self.lifecycle_deadline(s),
                ]
            })
            .flatten()
            .min()
    }

    fn new_ike_spi(&mut self) -> u64 {
        loop {
            let mut b = [0u8; 8];
            self.rng.fill(&mut b);
            let spi = u64::from_be_bytes(b);
            if spi != 0 && !self.sas.contains_key(&spi) {
                return spi;
            }
        }
    }

    fn new_child_spi(&mut self) -> u32 {
        loop {
            let mut b = [0u8; 4];
            self.rng.fill(&mut b);
            let spi = u32::from_be_bytes(b);
            // SPIs 0-255 are reserved (RFC 4303 §2.1).
            if spi > 255 && self.inbound_spis.insert(spi) {
                return spi;
            }
        }
    }

    fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; NONCE_LEN];
        self.rng.fill(&mut n);
        n
    }

    fn send(&mut self, local: SocketAddr, remote: SocketAddr, msg: &[u8]) {
        let mut payload = Vec::with_capacity(msg.len() + 4);
        if local.port() == NATT_PORT {
            payload.extend_from_slice(&NON_ESP_MARKER);
        }
        payload.extend_from_slice(msg);
        self.counters.sent += 1;
        self.transmits.push_back(Transmit {
            local,
            remote,
            payload,
        });
    }

    fn send_request(
        &mut self,
        sa: &mut IkeSa,
        msg_id: u32,
        bytes: Vec<u8>,
        kind: Request,
        now: Instant,
    ) {
        self.send_request_set(sa, msg_id, vec![bytes], kind, now);
    }

    /// Sends a request (one message or a set of SKF fragments, RFC 7383 §2.6) and schedules
    /// its retransmission as a whole.
    fn send_request_set(
        &mut self,
        sa: &mut IkeSa,
        msg_id: u32,
        bytes: Vec<Vec<u8>>,
        kind: Request,
        now: Instant,
    ) {
        let conn = &self.conns[sa.conn];
        let deadline = now + conn.retransmit.timeout(0);
        for b in &bytes {
            self.send(sa.local, sa.remote, b.as_slice());
        }
        sa.outstanding = Some(Outstanding {
            msg_id,
            bytes,
            sent: 1,
            deadline,
            kind,
        });
    }

    fn remove_sa(&mut self, sa: &IkeSa) {
        if !sa.initiator && self.responder_index.get(&(sa.init_remote, sa.ispi)) == Some(&sa.rspi) {
            self.responder_index.remove(&(sa.init_remote, sa.ispi));
        }
        for c in &sa.children {
            self.inbound_spis.remove(&c.0);
        }
        if let Some(s) = sa.pending_child_spi() {
            self.inbound_spis.remove(&s);
        }
    }

    /// Marks the SA dead (the caller drops it from the tables) and reports why.
    fn fail(&mut self, sa: &mut IkeSa, reason: FailReason) {
        let conn = self.conns[sa.conn].name.clone();
        warn!(conn = %conn, spi = %format_args!("{:016x}", sa.our_spi()), ?reason, "IKE SA failed");
        self.counters.ike_failed += 1;
        sa.state = State::Dead;
        self.events.push_back(Event::IkeSaFailed {
            conn,
            id: IkeSaId(sa.our_spi()),
            reason,
        });
    }

    // ---------------------------------------------------------------- initiator start

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
        let mut sa = IkeSa::new(idx, true, ispi, 0, local, remote);
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

    fn send_init_request(&mut self, sa: &mut IkeSa, mut init: InitSent, now: Instant) {
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

    // ---------------------------------------------------------------- input

    /// Handles one received UDP payload. `local` is the address it arrived on (port 4500 means
    /// it must start with the non-ESP marker), `remote` its source. Errors are counted drops or
    /// refusals (the refusal, where the RFC asks for one, is already queued for sending).
    pub fn handle(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), DropReason> {
        self.counters.received += 1;
        let r = self.handle_inner(now, local, remote, datagram);
        if let Err(e) = &r {
            self.counters.count(e);
            debug!(%remote, reason = %e, "IKE datagram not processed");
        }
        r
    }

    fn handle_inner(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), DropReason> {
        let data = if local.port() == NATT_PORT {
            match datagram.split_first_chunk::<4>() {
                Some((m, rest)) if *m == NON_ESP_MARKER => rest,
                _ => return Err(DropReason::NotIke),
            }
        } else {
            datagram
        };
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(WireError::UnsupportedCriticalPayload(t)) => {
                return self.refuse_critical(local, remote, data, t);
            }
            Err(WireError::UnsupportedVersion(v)) => {
                return self.refuse_version(local, remote, data, v);
            }
            Err(e) => return Err(DropReason::Malformed(e)),
        };
        let h = msg.header;
        if h.exchange == ExchangeType::IKE_SA_INIT && !h.is_response() && h.is_from_initiator() {
            if h.rspi != 0 || h.message_id != 0 {
                return Err(DropReason::Invalid(
                    "IKE_SA_INIT request with responder SPI or message ID",
                ));
            }
            return self.handle_init_request(now, local, remote, data, msg);
        }
        let our_spi = if h.is_from_initiator() {
            h.rspi
        } else {
            h.ispi
        };
        let mut sa = self.sas.remove(&our_spi).ok_or(DropReason::UnknownSpi)?;
        // The I flag tells which role sent it; it must be the peer's role.
        let peer_spi_ok = if sa.initiator {
            // Before the responder's SPI is known any value passes (COOKIE, INVALID_KE_PAYLOAD
            // and NO_PROPOSAL_CHOSEN answers carry zero).
            !h.is_from_initiator() && (matches!(sa.state, State::InitSent(_)) || h.rspi == sa.rspi)
        } else {
            h.is_from_initiator() && h.ispi == sa.ispi
        };
        if !peer_spi_ok {
            self.sas.insert(our_spi, sa);
            return Err(DropReason::UnknownSpi);
        }
        let is_fragment = matches!(msg.payloads.last(), Some(Payload::EncryptedFragment(_)));
        let result = if is_fragment {
            self.handle_fragment(now, local, remote, data, msg, &mut sa)
        } else if h.is_response() {
            self.handle_response(now, data, msg, &mut sa)
        } else {
            self.handle_request(now, local, remote, data, msg, &mut sa)
        };
        if sa.state.is_dead() {
            self.remove_sa(&sa);
        } else {
            if matches!(
                result,
                Ok(()) | Err(DropReason::Retransmission | DropReason::Refused(_))
            ) && sa.state.keys().is_some()
            {
                sa.last_inbound = Some(now);
            }
            // NAT rebinding (RFC 7296 §2.23): while UDP-encapsulated, a fresh authenticated
            // message from a new address or port moves the SA there (the peer's NAT changed its
            // mapping). Retransmissions and refused messages do not count: only a message that
            // decrypted, verified and advanced the exchange can move the SA.
            if result.is_ok()
                && sa.nat
                && matches!(sa.state, State::Established(_))
                && (sa.remote != remote || sa.local != local)
            {
                info!(from = %sa.remote, to = %remote, "peer address changed (NAT rebinding)");
                self.counters.peer_moved += 1;
                sa.remote = remote;
                sa.local = local;
            }
            self.service(&mut sa, now);
            self.sas.insert(our_spi, sa);
        }
        result
    }

    fn refuse_critical(
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

    fn refuse_version(
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

    fn send_init_error(
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
    fn cookie(&self, ni: &[u8], remote: SocketAddr, ispi: u64) -> Vec<u8> {
        Self::cookie_with(&self.cookie_secret, self.cookie_version, ni, remote, ispi)
    }

    /// Whether `echoed` is the cookie of this request under the current secret, or under the
    /// previous one (a peer that got its cookie just before a rotation, §2.6).
    fn cookie_valid(&self, echoed: &[u8], ni: &[u8], remote: SocketAddr, ispi: u64) -> bool {
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
    fn rotate_cookie_secret(&mut self, now: Instant) {
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

    fn cookie_with(
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

    fn handle_init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) -> Result<(), DropReason> {
        let h = msg.header;
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
        let mut nat = false;
        if natt_supported {
            let peer_behind = !nat_src
                .iter()
                .any(|n| n.data == nat_hash(h.ispi, 0, remote));
            let we_behind = nat_dst.is_some_and(|n| n.data != nat_hash(h.ispi, 0, local));
            nat = peer_behind || we_behind || force_encap;
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
        let mut sa = IkeSa::new(idx, false, h.ispi, rspi, local, remote);
        sa.nat = nat;
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

    // ---------------------------------------------------------------- requests on an SA

    fn handle_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
        sa: &mut IkeSa,
    ) -> Result<(), DropReason> {
        let id = msg.header.message_id;
        if id.wrapping_add(1) == sa.peer_msg_id
            && let Some((cid, resp)) = &sa.cached
            && *cid == id
        {
            // Only answer from cache if the retransmission authenticates (no reflection).
            if sa
                .state
                .keys()
                .is_some_and(|k| protect::open(k, data, &msg).is_ok())
            {
                for r in resp.clone() {
                    self.send(local, remote, &r);
                }
                return Err(DropReason::Retransmission);
            }
            return Err(DropReason::Integrity);
        }
        if id != sa.peer_msg_id {
            return Err(DropReason::BadMessageId);
        }
        let keys = sa.state.keys().ok_or(DropReason::Unexpected)?;
        let inner = match protect::open(keys, data, &msg) {
            Ok(p) => p,
            Err(protect::OpenError::Integrity) => return Err(DropReason::Integrity),
            Err(protect::OpenError::Malformed(e)) => return Err(DropReason::Malformed(e)),
            Err(protect::OpenError::Critical(t)) => {
                // Authenticated request with an unknown critical payload: answer (§2.5).
                let payloads = vec![Payload::Notify(NotifyPayload::new(
                    NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                    vec![t.0],
                ))];
                self.respond(sa, msg.header, local, remote, payloads);
                return Err(DropReason::Refused(
                    NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                ));
            }
        };
        self.request_payloads(now, local, remote, msg.header, inner, sa)
    }

    /// A request's decrypted payloads (from one SK message or reassembled SKF fragments).
    fn request_payloads(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        header: Header,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
    ) -> Result<(), DropReason> {
        let msg_header = header;
        match (msg_header.exchange, &sa.state) {
            (ExchangeType::IKE_AUTH, State::ExpectAuth(_)) => {
                self.responder_auth(now, local, remote, msg_header, inner, sa)
            }
            (ExchangeType::INFORMATIONAL, State::Established(_)) => {
                self.informational_request(local, remote, msg_header, inner, sa);
                Ok(())
            }
            (ExchangeType::CREATE_CHILD_SA, State::Established(_)) => {
                self.create_child_request(now, local, remote, msg_header, inner, sa)
            }
            _ => Err(DropReason::Unexpected),
        }
    }

    /// Seals and sends a response to request `req`, caching it for retransmissions.
    /// Answers request `req` with a single error notification without data (RFC 7296 §2.21.2)
    /// and returns `why` for the caller's drop accounting.
    fn refuse(
        &mut self,
        sa: &mut IkeSa,
        req: Header,
        local: SocketAddr,
        remote: SocketAddr,
        ty: NotifyType,
        why: DropReason,
    ) -> Result<(), DropReason> {
        self.respond(
            sa,
            req,
            local,
            remote,
            vec![Payload::Notify(NotifyPayload::new(ty, Vec::new()))],
        );
        Err(why)
    }

    fn respond(
        &mut self,
        sa: &mut IkeSa,
        req: Header,
        local: SocketAddr,
        remote: SocketAddr,
        payloads: Vec<Payload>,
    ) {
        let header = Header {
            ispi: sa.ispi,
            rspi: sa.rspi,
            next_payload: PayloadType::NONE,
            exchange: req.exchange,
            flags: sa.flags(true),
            message_id: req.message_id,
            length: 0,
        };
        match self.seal_for(sa, header, &payloads) {
            Ok(set) => {
                for b in &set {
                    self.send(local, remote, b.as_slice());
                }
                sa.cached = Some((req.message_id, set));
                sa.peer_msg_id = req.message_id.wrapping_add(1);
            }
            Err(e) => warn!(error = %e, "cannot seal response"),
        }
    }

    fn responder_auth(
        &mut self,
        _now: Instant,
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
        // The authenticated message's addresses become the SA's (NAT-T float, §2.23).
        sa.local = local;
        sa.remote = remote;
        let peer_id = crate::config::Identity::from_payload(idi);
        // Connection by peer address first, then by IDi among those.
        let cand = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.remote_addr.ip() == sa.init_remote.ip() && c.mode != ConnectionMode::InitiatorOnly
            })
            .find(|(_, c)| c.remote_id.as_ref().is_none_or(|r| r.matches(&peer_id)))
            .map(|(i, _)| i);
        let verified = cand.filter(|&i| {
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
        info!(conn = %conn.name, peer_id = %peer_id, %remote, "IKE SA established (responder)");
        self.events.push_back(Event::IkeSaEstablished {
            conn: conn.name.clone(),
            id: IkeSaId(sa.our_spi()),
            initiator: false,
            ispi: sa.ispi,
            rspi: sa.rspi,
            local: sa.local,
            remote: sa.remote,
        });
        // The first Child SA.
        let child = match (
            find(PayloadType::SA),
            find(PayloadType::TSI),
            find(PayloadType::TSR),
        ) {
            (Some(Payload::Sa(sa_p)), Some(Payload::TsI(tsi)), Some(Payload::TsR(tsr))) => {
                let our_spi = self.new_child_spi();
                let conn = &self.conns[idx];
                match negotiate::select_esp(sa_p, &conn.esp_proposals, conn.esn_allowed, our_spi) {
                    None => {
                        warn!(conn = %conn.name, "NO_PROPOSAL_CHOSEN for Child SA: {}", negotiate::describe_mismatch(sa_p, &conn.esp_proposals));
                        self.inbound_spis.remove(&our_spi);
                        Err((NotifyType::NO_PROPOSAL_CHOSEN, FailReason::NoProposalChosen))
                    }
                    Some((reply, suite, peer_spi)) => {
                        let n_tsi = ts::narrow(tsi, &conn.remote_ts);
                        let n_tsr = ts::narrow(tsr, &conn.local_ts);
                        if n_tsi.is_empty() || n_tsr.is_empty() {
                            warn!(
                                conn = %conn.name,
                                "TS_UNACCEPTABLE: peer proposed TSi {} TSr {}; we allow remote {} local {}",
                                ts::display(tsi), ts::display(tsr), ts::display(&conn.remote_ts), ts::display(&conn.local_ts)
                            );
                            self.inbound_spis.remove(&our_spi);
                            Err((NotifyType::TS_UNACCEPTABLE, FailReason::TsUnacceptable))
                        } else {
                            Ok((reply, suite, peer_spi, our_spi, n_tsi, n_tsr))
                        }
                    }
                }
            }
            _ => Err((
                NotifyType::INVALID_SYNTAX,
                FailReason::Protocol("IKE_AUTH without SA/TSi/TSr"),
            )),
        };
        if find_notify(&inner, NotifyType::INITIAL_CONTACT) {
            self.initial_contact(sa);
        }
        match child {
            Ok((reply, suite, peer_spi, our_spi, n_tsi, n_tsr)) => {
                let State::Established(est) = &sa.state else {
                    return Err(DropReason::Unexpected);
                };
                let km = child_sa_keys(
                    &est.keys.prf,
                    est.keys.sk.sk_d.as_bytes(),
                    None,
                    &st.ni,
                    &st.nr,
                    suite.encr.id,
                    suite.encr.key_bits,
                    negotiate::real_integ(suite.integ),
                );
                let km = match km {
                    Ok(k) => k,
                    Err(_) => {
                        self.inbound_spis.remove(&our_spi);
                        return Err(DropReason::Invalid("child key derivation"));
                    }
                };
                payloads.push(Payload::Sa(SaPayload {
                    proposals: vec![reply],
                }));
                payloads.push(Payload::TsI(n_tsi.clone()));
                payloads.push(Payload::TsR(n_tsr.clone()));
                self.respond(sa, req, local, remote, payloads);
                // Responder: inbound = initiator-to-responder keys.
                self.child_established(sa, false, our_spi, peer_spi, suite, km, n_tsr, n_tsi, None);
            }
            Err((notify, reason)) => {
                payloads.push(Payload::Notify(NotifyPayload::new(notify, vec![])));
                self.respond(sa, req, local, remote, payloads);
                self.events.push_back(Event::ChildSaFailed {
                    conn: self.conns[idx].name.clone(),
                    id: IkeSaId(sa.our_spi()),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// INITIAL_CONTACT (RFC 7296 §3.10.1): the peer has no other state with us, so our other IKE
    /// SAs of this connection are stale; they are dropped without notifying the peer.
    fn initial_contact(&mut self, current: &IkeSa) {
        let stale: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, s)| s.conn == current.conn && matches!(s.state, State::Established(_)))
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

    #[allow(clippy::too_many_arguments)]
    fn child_established(
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
        self.register_child(sa, inbound_spi, local_ts.clone(), remote_ts.clone());
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

    fn informational_request(
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

    fn delete_all_children(&mut self, sa: &mut IkeSa) {
        let conn = self.conns[sa.conn].name.clone();
        sa.child_info.clear();
        sa.queue.clear();
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

    // ---------------------------------------------------------------- responses to our requests

    fn handle_response(
        &mut self,
        now: Instant,
        data: &[u8],
        msg: Message,
        sa: &mut IkeSa,
    ) -> Result<(), DropReason> {
        let Some(out) = &sa.outstanding else {
            return Err(DropReason::Unexpected);
        };
        if out.msg_id != msg.header.message_id {
            return Err(DropReason::BadMessageId);
        }
        let kind = out.kind;
        match kind {
            Request::Init => self.initiator_init_response(now, data, msg, sa),
            Request::Auth
            | Request::Informational
            | Request::DeleteIke
            | Request::RekeyChild
            | Request::DeleteChild(_)
            | Request::Dpd
            | Request::RekeyIke => {
                let keys = sa.state.keys().ok_or(DropReason::Unexpected)?;
                let inner = match protect::open(keys, data, &msg) {
                    Ok(p) => p,
                    Err(protect::OpenError::Integrity) => return Err(DropReason::Integrity),
                    Err(protect::OpenError::Malformed(e)) => return Err(DropReason::Malformed(e)),
                    Err(protect::OpenError::Critical(t)) => {
                        return Err(DropReason::Malformed(
                            WireError::UnsupportedCriticalPayload(t),
                        ));
                    }
                };
                self.response_payloads(now, kind, inner, sa)
            }
        }
    }

    /// A response's decrypted payloads (from one SK message or reassembled SKF fragments).
    fn response_payloads(
        &mut self,
        now: Instant,
        kind: Request,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
    ) -> Result<(), DropReason> {
        if kind == Request::Init {
            return Err(DropReason::Unexpected);
        }
        sa.outstanding = None;
        match kind {
            Request::Auth => self.initiator_auth_response(inner, sa),
            Request::DeleteIke => {
                let conn = self.conns[sa.conn].name.clone();
                self.delete_all_children(sa);
                if !sa.superseded {
                    self.events.push_back(Event::IkeSaDeleted {
                        conn,
                        id: IkeSaId(sa.our_spi()),
                    });
                }
                sa.state = State::Dead;
                Ok(())
            }
            Request::RekeyChild => {
                self.rekey_response(inner, sa, now);
                Ok(())
            }
            Request::RekeyIke => {
                self.ike_rekey_response(inner, sa, now);
                Ok(())
            }
            Request::DeleteChild(spi) => {
                self.delete_child_response(sa, spi);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn initiator_init_response(
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
        let conn = &self.conns[sa.conn];
        let (esp_props, esn_allowed, local_ts, remote_ts) = (
            conn.esp_proposals.clone(),
            conn.esn_allowed,
            conn.local_ts.clone(),
            conn.remote_ts.clone(),
        );
        let child_spi = self.new_child_spi();
        let conn = &self.conns[sa.conn];
        let esp_offer = negotiate::esp_offer(&esp_props, child_spi, esn_allowed);
        let tsi = ts::proposed(&local_ts);
        let tsr = ts::proposed(&remote_ts);
        let idi = conn.local_id.to_payload();
        let auth = psk_auth(
            &keys.prf,
            &conn.psk,
            &init.request,
            nr,
            keys.sk.sk_pi.as_bytes(),
            &idi.body(),
        );
        let mut payloads = vec![
            Payload::IdI(idi),
            Payload::Notify(NotifyPayload::new(NotifyType::INITIAL_CONTACT, vec![])),
        ];
        if let Some(r) = &conn.remote_id {
            payloads.push(Payload::IdR(r.to_payload()));
        }
        payloads.push(Payload::Auth(AuthPayload {
            method: AuthMethod::SHARED_KEY_MIC,
            data: auth.as_bytes().to_vec(),
        }));
        payloads.push(Payload::Sa(esp_offer.clone()));
        payloads.push(Payload::TsI(tsi.clone()));
        payloads.push(Payload::TsR(tsr.clone()));
        let header = Header {
            ispi: sa.ispi,
            rspi: sa.rspi,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::IKE_AUTH,
            flags: Flags::INITIATOR,
            message_id: 1,
            length: 0,
        };
        sa.frag = conn.fragmentation
            && msg
                .notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
                .is_some();
        let max = sa.frag.then_some(conn.fragment_size);
        let bytes = match protect::seal_fragments(&keys, &mut *self.rng, header, &payloads, max) {
            Ok(b) => b,
            Err(_) => {
                self.inbound_spis.remove(&child_spi);
                self.fail(sa, FailReason::Protocol("cannot seal IKE_AUTH"));
                return Ok(());
            }
        };
        info!(conn = %conn.name, rspi = %format_args!("{:016x}", sa.rspi), ?suite, nat = sa.nat, "IKE_SA_INIT done, sending IKE_AUTH");
        sa.state = State::AuthSent(Box::new(AuthSent {
            keys,
            ni: init.ni.clone(),
            nr: nr.clone(),
            init_response: data.to_vec(),
            child_spi,
            esp_offer,
            tsi,
            tsr,
        }));
        sa.next_msg_id = 2;
        self.send_request_set(sa, 1, bytes, Request::Auth, now);
        Ok(())
    }

    fn initiator_auth_response(
        &mut self,
        inner: Vec<Payload>,
        sa: &mut IkeSa,
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
            self.inbound_spis.remove(&st.child_spi);
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
            self.inbound_spis.remove(&st.child_spi);
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
            self.inbound_spis.remove(&st.child_spi);
            self.fail(sa, FailReason::AuthenticationFailed);
            return Ok(());
        }
        let st = *st;
        sa.state = State::Established(Box::new(state::Established { keys: st.keys }));
        self.counters.ike_established += 1;
        info!(conn = %conn.name, peer_id = %peer_id, remote = %sa.remote, "IKE SA established (initiator)");
        self.events.push_back(Event::IkeSaEstablished {
            conn: conn.name.clone(),
            id: IkeSaId(sa.our_spi()),
            initiator: true,
            ispi: sa.ispi,
            rspi: sa.rspi,
            local: sa.local,
            remote: sa.remote,
        });
        let child_fail = |this: &mut Self, sa: &IkeSa, reason: FailReason| {
            this.inbound_spis.remove(&st.child_spi);
            let conn = this.conns[sa.conn].name.clone();
            warn!(conn = %conn, ?reason, "Child SA not established");
            this.events.push_back(Event::ChildSaFailed {
                conn,
                id: IkeSaId(sa.our_spi()),
                reason,
            });
        };
        match (
            find(PayloadType::SA),
            find(PayloadType::TSI),
            find(PayloadType::TSR),
        ) {
            (Some(Payload::Sa(sa_p)), Some(Payload::TsI(tsi)), Some(Payload::TsR(tsr))) => {
                let Some((suite, peer_spi)) = negotiate::accept_esp_reply(sa_p, &st.esp_offer)
                else {
                    child_fail(
                        self,
                        sa,
                        FailReason::Protocol("responder chose an ESP proposal we did not offer"),
                    );
                    return Ok(());
                };
                if !ts::acceptable_reply(&st.tsi, tsi) || !ts::acceptable_reply(&st.tsr, tsr) {
                    child_fail(self, sa, FailReason::TsUnacceptable);
                    return Ok(());
                }
                let State::Established(est) = &sa.state else {
                    return Err(DropReason::Unexpected);
                };
                let Ok(km) = child_sa_keys(
                    &est.keys.prf,
                    est.keys.sk.sk_d.as_bytes(),
                    None,
                    &st.ni,
                    &st.nr,
                    suite.encr.id,
                    suite.encr.key_bits,
                    negotiate::real_integ(suite.integ),
                ) else {
                    child_fail(self, sa, FailReason::Protocol("child key derivation"));
                    return Ok(());
                };
                let (tsi, tsr) = (tsi.clone(), tsr.clone());
                self.child_established(sa, true, st.child_spi, peer_spi, suite, km, tsi, tsr, None);
            }
            _ => {
                let reason = if notify(NotifyType::NO_PROPOSAL_CHOSEN) {
                    warn!(
                        conn = %conn.name,
                        "peer answered NO_PROPOSAL_CHOSEN to our ESP proposals [{}]",
                        conn.esp_proposals.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    );
                    FailReason::NoProposalChosen
                } else if notify(NotifyType::TS_UNACCEPTABLE) {
                    warn!(
                        conn = %conn.name,
                        "peer answered TS_UNACCEPTABLE to our TSi {} TSr {}",
                        ts::display(&st.tsi), ts::display(&st.tsr)
                    );
                    FailReason::TsUnacceptable
                } else if let Some(Payload::Notify(n)) = inner
                    .iter()
                    .find(|p| matches!(p, Payload::Notify(n) if n.ty.is_error()))
                {
                    FailReason::PeerError(n.ty)
                } else {
                    FailReason::Protocol("IKE_AUTH response without Child SA")
                };
                child_fail(self, sa, reason);
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- our INFORMATIONAL requests

    fn send_informational(
        &mut self,
        sa: &mut IkeSa,
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
            exchange: ExchangeType::INFORMATIONAL,
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

    // ---------------------------------------------------------------- timers

    /// Retransmits due requests, gives up on exhausted ones, expires half-open SAs.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, s)| {
                s.outstanding.as_ref().is_some_and(|o| o.deadline <= now)
                    || s.expires.is_some_and(|e| e <= now)
                    || self.lifecycle_deadline(s).is_some_and(|d| d <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for spi in due {
            let Some(mut sa) = self.sas.remove(&spi) else {
                continue;
            };
            if sa.expires.is_some_and(|e| e <= now) && sa.superseded {
                debug!(spi = %format_args!("{spi:016x}"), "replaced IKE SA never deleted; dropping it");
                self.delete_all_children(&mut sa);
                self.remove_sa(&sa);
                continue;
            }
            if sa.expires.is_some_and(|e| e <= now) {
                self.counters.half_open_expired += 1;
                let conn = self.conns[sa.conn].name.clone();
                debug!(conn = %conn, "half-open IKE SA expired");
                self.remove_sa(&sa);
                self.events.push_back(Event::IkeSaFailed {
                    conn,
                    id: IkeSaId(spi),
                    reason: FailReason::HalfOpenExpired,
                });
                continue;
            }
            let retransmit = self.conns[sa.conn].retransmit;
            let Some(out) = sa.outstanding.as_mut().filter(|o| o.deadline <= now) else {
                self.service(&mut sa, now);
                self.sas.insert(spi, sa);
                continue;
            };
            if out.sent >= retransmit.tries {
                if matches!(out.kind, Request::DeleteIke) {
                    let conn = self.conns[sa.conn].name.clone();
                    self.delete_all_children(&mut sa);
                    self.remove_sa(&sa);
                    if !sa.superseded {
                        self.events.push_back(Event::IkeSaDeleted {
                            conn,
                            id: IkeSaId(spi),
                        });
                    }
                } else {
                    let was_up = matches!(sa.state, State::Established(_));
                    self.delete_all_children(&mut sa);
                    self.fail(&mut sa, FailReason::Timeout);
                    self.remove_sa(&sa);
                    if was_up {
                        self.dpd_give_up(sa.conn, now);
                    }
                }
                continue;
            }
            out.deadline = now + retransmit.timeout(out.sent);
            out.sent += 1;
            let bytes = out.bytes.clone();
            self.counters.retransmits += 1;
            debug!(spi = %format_args!("{spi:016x}"), "retransmitting request");
            for b in &bytes {
                self.send(sa.local, sa.remote, b.as_slice());
            }
            self.sas.insert(spi, sa);
        }
    }
}

fn find_notify(payloads: &[Payload], ty: NotifyType) -> bool {
    payloads
        .iter()
        .any(|p| matches!(p, Payload::Notify(n) if n.ty == ty))
}
