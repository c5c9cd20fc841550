//! The IKE endpoint (RFC 7296 §2): owns every IKE SA of a set of configured connections, takes
//! datagrams apart and routes them to the exchange they belong to, retransmits (§2.1) and
//! keeps the timers. Sans-IO in the style of quinn-proto: `handle` / `handle_timeout` in,
//! `poll_transmit` / `poll_event` / `poll_timeout` out. One module per exchange, the way
//! strongSwan splits its tasks: `ike_init` (IKE_SA_INIT, cookies §2.6, NAT-T §2.23), `ike_auth`
//! (IKE_AUTH, §2.15), `child_create` (what every Child SA creation shares, and additional
//! Child SAs, §1.3.1), `child_rekey` (§1.3.3, §2.8), `ike_rekey` (§2.18), `informational`
//! (DELETE and liveness, §1.4), with `lifecycle` running lifetimes and the request window, and
//! `export` carrying established IKE SAs to another endpoint (an HA standby).

mod child_create;
mod child_rekey;
mod event;
mod export;
mod fragment;
mod ike_auth;
mod ike_init;
mod ike_rekey;
mod informational;
mod lifecycle;
mod protect;
mod state;

pub use event::*;
pub use export::{
    ChildSaState, ChildSaStatus, IkeSaState, ImportError, InFlightRequest, NatState, QueuedRequest,
    RequestKind, SentMessage,
};

use crate::config::{ConnectionConfig, ConnectionMode, NATT_PORT};
use crate::crypto::{
    ChildSaKeys, KeyExchange, Rng, SecretBytes, child_sa_keys, psk_auth, verify_psk_auth,
};
use crate::negotiate;
use crate::transform::DhId;
use crate::ts;
use crate::wire::{
    AuthMethod, AuthPayload, DeletePayload, ExchangeType, Flags, Header, KePayload, Message,
    NON_ESP_MARKER, NotifyPayload, NotifyType, Payload, PayloadType, ProtocolId, SaPayload,
    TrafficSelector, WireError,
};
use state::{IkeSa, Outstanding, Request, State};
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
        for s in sa.pending_child_spis() {
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
        // A wildcard socket (unspecified local IP): the message is for the SA's own address.
        let local = if local.ip().is_unspecified() {
            SocketAddr::new(sa.local.ip(), local.port())
        } else {
            local
        };
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
            | Request::RekeyIke
            | Request::CreateChild => {
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
            Request::Auth => self.initiator_auth_response(inner, sa, now),
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
            Request::CreateChild => {
                self.create_response(inner, sa);
                Ok(())
            }
            Request::DeleteChild(spi) => {
                self.delete_child_response(sa, spi);
                Ok(())
            }
            _ => Ok(()),
        }
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
