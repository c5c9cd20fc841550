//! The glue between the appliance and the sans-IO IKEv2 endpoint (RFC 7296): builds the `ike`
//! connection configs from the appliance config, adapts NAT-T framing (RFC 3948 §2.2 non-ESP
//! marker) between the endpoint and the data plane, turns endpoint events into appliance events,
//! and maps negotiated Child SAs onto the `esp` crate's SA configuration (RFC 7296 §2.17 keys).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dataplane::OutboundRoute;
use ike::proposal::{EncrAlg, Proposal as IkeProposal, Protocol};
use ike::transform::{DhId, IntegId, PrfId};
use ike::wire::{ExchangeType, Flags, Message, Payload, TrafficSelector as IkeTs};
use ike::{
    ChildSa, ConnectionConfig, ConnectionMode, Endpoint, Event, FailReason, Identity, IkeSaId,
};

use crate::config::{Behaviour, Config, Connection, Mode};
use crate::supervisor::ChildInfo;

/// UDP port of IKE.
pub const IKE_PORT: u16 = 500;
/// UDP port of NAT-T (IKE with the non-ESP marker, and ESP in UDP).
pub const NATT_PORT: u16 = 4500;
const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// A datagram for the daemon to send. On port 4500 the payload has NO non-ESP marker: the data
/// plane's `send_ike` adds it.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub payload: Vec<u8>,
}

/// The IKE side of the appliance: the sans-IO endpoint plus what the supervisor needs around
/// it (NAT-T framing, the negotiated IKE algorithms by name, established IKE SAs by connection).
#[derive(Debug)]
pub struct Engine {
    ep: Endpoint,
    /// Negotiated IKE algorithms by initiator SPI, learned from IKE_SA_INIT responses.
    suites: HashMap<u64, [String; 4]>,
    /// Established IKE SAs per connection.
    established: HashMap<IkeSaId, String>,
}

fn identity(s: &str) -> Identity {
    if let Ok(ip) = s.parse::<IpAddr>() {
        Identity::from_ip(ip)
    } else if s.contains('@') {
        Identity::Rfc822(s.to_string())
    } else {
        Identity::Fqdn(s.to_string())
    }
}

/// The `ike` proposals for a connection (only what this build can execute); errors name the key.
pub fn ike_proposals(c: &Connection) -> Result<(Vec<IkeProposal>, Vec<IkeProposal>), String> {
    let conv = |all: &[IkeProposal], key: &str| -> Result<Vec<IkeProposal>, String> {
        let ok: Vec<IkeProposal> = all.iter().filter_map(IkeProposal::supported_only).collect();
        if ok.is_empty() {
            return Err(format!(
                "connection `{}`: key `{key}`: none of the proposals `{}` can be executed by this build (3DES, DES and MD5 are not implemented)",
                c.name,
                all.iter()
                    .map(IkeProposal::to_strongswan)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        Ok(ok)
    };
    Ok((
        conv(&c.ike_proposals, "ike_proposals")?,
        conv(&c.esp_proposals, "esp_proposals")?,
    ))
}

/// The `ike` connection config of one appliance connection.
pub fn connection_config(c: &Connection) -> Result<ConnectionConfig, String> {
    let (ike, esp) = ike_proposals(c)?;
    let mut cc = ConnectionConfig::new(
        c.name.clone(),
        SocketAddr::new(c.local_address, IKE_PORT),
        SocketAddr::new(c.remote_address, IKE_PORT),
        ike::crypto::Psk::new(c.psk.expose().to_vec()),
        ike,
        esp,
    );
    cc.local_id = identity(&c.local_id);
    cc.remote_id = Some(identity(&c.remote_id));
    cc.force_encap = c.force_encap;
    cc.fragmentation = c.ike_fragmentation;
    cc.fragment_size = c.ike_fragment_size;
    cc.mode = match c.behaviour {
        Behaviour::Both => ConnectionMode::Both,
        Behaviour::Initiate => ConnectionMode::InitiatorOnly,
        Behaviour::Respond => ConnectionMode::ResponderOnly,
    };
    // strongSwan kernel-libipsec and Azure use no ESN.
    cc.esn_allowed = false;
    // Retransmissions (also of DPD liveness checks) give up after about the DPD timeout.
    cc.retransmit = retransmit_for(c.dpd.timeout_seconds);
    // Dead peer detection runs in the Endpoint: a liveness check after `delay_seconds` without
    // any IKE message or ESP packet from the peer (the daemon reports ESP with `note_inbound`).
    // The daemon carries out the action itself when the IKE SA is lost (IkeLost), so the
    // Endpoint only clears.
    cc.dpd = Some(ike::DpdConfig {
        delay: Duration::from_secs(c.dpd.delay_seconds.max(1)),
        action: ike::DpdAction::Clear,
    });
    // Rekeying in place (CREATE_CHILD_SA) at 90 % of each lifetime, minus a random part of
    // up to 1/30 of it so that two peers with the same settings do not fire together.
    cc.child_lifetime = lifetime(c.lifetimes.child_seconds, c.lifetimes.child_rekey_seconds);
    cc.ike_lifetime = lifetime(c.lifetimes.ike_seconds, c.lifetimes.ike_rekey_seconds);
    if let Mode::PolicyBased { selectors, .. } = &c.mode {
        let pairs: Vec<ike::ChildPolicy> = if c.child_sa_per_pair {
            // One Child SA per pair (Azure policy-based): IKE_AUTH proposes the first pair, the
            // supervisor asks for the others with CREATE_CHILD_SA; as responder each pair is a
            // policy of its own.
            selectors
                .iter()
                .map(|s| ike::ChildPolicy {
                    local_ts: vec![IkeTs::from_prefix(s.local.addr, s.local.len)],
                    remote_ts: vec![IkeTs::from_prefix(s.remote.addr, s.remote.len)],
                })
                .collect()
        } else {
            vec![all_pairs(selectors)]
        };
        if let Some(first) = pairs.first() {
            cc.local_ts = first.local_ts.clone();
            cc.remote_ts = first.remote_ts.clone();
        }
        cc.policies = pairs;
    }
    Ok(cc)
}

/// One Child SA policy carrying every selector pair: the union of the local sides and of the
/// remote sides (a Child SA's selector lists mean their cross product, RFC 7296 §2.9).
pub fn all_pairs(selectors: &[crate::config::SelectorPair]) -> ike::ChildPolicy {
    let mut l: Vec<IkeTs> = Vec::new();
    let mut r: Vec<IkeTs> = Vec::new();
    for s in selectors {
        let lt = IkeTs::from_prefix(s.local.addr, s.local.len);
        let rt = IkeTs::from_prefix(s.remote.addr, s.remote.len);
        if !l.contains(&lt) {
            l.push(lt);
        }
        if !r.contains(&rt) {
            r.push(rt);
        }
    }
    ike::ChildPolicy {
        local_ts: l,
        remote_ts: r,
    }
}

/// Soft and hard lifetime for a configured hard lifetime in seconds and an optional soft one
/// (90 % of the hard one when not given); the rekey fires up to 1/30 of the lifetime early at
/// random so that two peers with the same settings do not fire together.
pub fn lifetime(seconds: u64, rekey_seconds: Option<u64>) -> ike::Lifetime {
    let life = Duration::from_secs(seconds.max(1));
    let rekey = rekey_seconds.map_or(life.mul_f64(0.9), Duration::from_secs);
    ike::Lifetime {
        rekey_time: rekey.min(life),
        life_time: life,
        jitter: (life / 30).min(rekey / 2),
    }
}

/// Retransmission schedule for a DPD timeout of `timeout_s` seconds (RFC 7296 §2.1, §2.4):
/// exponential backoff (each wait twice the one before) with as many sends as keep the first
/// wait at one second or more, scaled so the waits add up to the timeout exactly. A dead peer is
/// declared `timeout_s` after the first unanswered request, not at the next step of a fixed
/// ladder: 9 s gives waits of 1.3 + 2.6 + 5.1 s, Azure's 45 s gives 1.5, 2.9, ... 23.2 s.
pub fn retransmit_for(timeout_s: u64) -> ike::RetransmitConfig {
    let total = Duration::from_secs(timeout_s.max(1));
    let mut tries = 1u32;
    while tries < 10 && total.as_secs_f64() / f64::from((1u32 << (tries + 1)) - 1) >= 1.0 {
        tries += 1;
    }
    ike::RetransmitConfig {
        initial: total.div_f64(f64::from((1u32 << tries) - 1)),
        max: total,
        tries,
    }
}

fn name_of(p: IkeProposal) -> String {
    p.to_strongswan()
}

/// strongSwan-style name of an encryption transform.
pub fn encr_name(proto: Protocol, e: EncrAlg) -> String {
    let mut p = IkeProposal::empty(proto);
    p.encr.push(e);
    name_of(p)
}

/// strongSwan-style name of an integrity transform.
pub fn integ_name(i: IntegId) -> String {
    let mut p = IkeProposal::empty(Protocol::Esp);
    p.integ.push(i);
    name_of(p)
}

fn prf_name(f: PrfId) -> String {
    let mut p = IkeProposal::empty(Protocol::Ike);
    p.prf.push(f);
    name_of(p)
}

fn dh_name(d: DhId) -> String {
    let mut p = IkeProposal::empty(Protocol::Esp);
    p.dh.push(d);
    name_of(p)
}

/// Readable traffic selector: `198.18.1.0/24`, `0.0.0.0/0`, or `a-b` for non-prefix ranges.
pub fn ts_text(t: &IkeTs) -> String {
    let (bits, s, e): (u32, u128, u128) = match (t.start, t.end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (32, u32::from(s).into(), u32::from(e).into()),
        (IpAddr::V6(s), IpAddr::V6(e)) => (128, u128::from(s), u128::from(e)),
        _ => return format!("{}-{}", t.start, t.end),
    };
    let span = e.wrapping_sub(s).wrapping_add(1);
    let mut out = if e >= s && (span == 0 || span.is_power_of_two()) && (span == 0 || s % span == 0)
    {
        let host_bits = if span == 0 {
            bits
        } else {
            span.trailing_zeros()
        };
        format!("{}/{}", t.start, bits.saturating_sub(host_bits))
    } else {
        format!("{}-{}", t.start, t.end)
    };
    if t.ip_proto != 0 {
        out.push_str(&format!("[proto {}]", t.ip_proto));
    }
    if !(t.start_port == 0 && t.end_port == 65535) {
        out.push_str(&format!("[ports {}-{}]", t.start_port, t.end_port));
    }
    out
}

/// Readable text of a failure reason.
pub fn fail_text(r: &FailReason) -> String {
    match r {
        FailReason::NoProposalChosen => "no proposal chosen (the peer and we share no algorithms: check the proposals on both sides)".into(),
        FailReason::InvalidKePayload => "invalid KE payload (no common DH group)".into(),
        FailReason::AuthenticationFailed => "authentication failed (pre-shared key mismatch?)".into(),
        FailReason::IdentityMismatch => "peer identity does not match remote_id".into(),
        FailReason::TsUnacceptable => "traffic selectors unacceptable (check selectors / policy-based settings on both sides)".into(),
        FailReason::Timeout => "peer did not answer (timeout after retransmissions)".into(),
        FailReason::HalfOpenExpired => "half-open IKE SA expired (IKE_AUTH never arrived)".into(),
        FailReason::PeerError(n) => format!("peer sent error notify {n}"),
        FailReason::Protocol(what) => format!("protocol error: {what}"),
        other => format!("{other:?}"),
    }
}

impl Engine {
    /// Build the endpoint for every connection of `cfg`. Touches no network.
    pub fn new(cfg: &Config) -> Result<Engine, String> {
        Self::with_rng(cfg, Box::new(ike::crypto::SystemRng::new()))
    }

    /// The same with the given source of randomness (tests).
    pub fn with_rng(cfg: &Config, rng: Box<dyn ike::crypto::Rng + Send>) -> Result<Engine, String> {
        let mut conns = Vec::new();
        for c in &cfg.connections {
            conns.push(connection_config(c)?);
        }
        Ok(Self::from_connections(conns, rng))
    }

    /// An engine for `ike` connection configs as given (tests that change what the appliance's
    /// config cannot express, such as a peer that omits INITIAL_CONTACT).
    pub fn from_connections(
        conns: Vec<ConnectionConfig>,
        rng: Box<dyn ike::crypto::Rng + Send>,
    ) -> Engine {
        Engine {
            ep: Endpoint::new(conns, rng),
            suites: HashMap::new(),
            established: HashMap::new(),
        }
    }

    /// Remember the IKE algorithms of an IKE_SA_INIT response (sent or received).
    fn snoop(&mut self, msg: &[u8]) {
        let Ok(m) = Message::parse(msg) else { return };
        if m.header.exchange != ExchangeType::IKE_SA_INIT
            || !m.header.flags.contains(Flags::RESPONSE)
        {
            return;
        }
        let Some(Payload::Sa(sa)) = m.find(ike::wire::PayloadType::SA) else {
            return;
        };
        let Some(p) = sa.proposals.first() else {
            return;
        };
        let transforms = p.transforms.iter().map(|t| ike::proposal::Transform {
            ty: ike::transform::TransformType(t.ttype),
            id: t.id,
            key_len: t.key_length(),
        });
        let Ok(prop) = IkeProposal::from_transforms(Protocol::Ike, transforms) else {
            return;
        };
        let Some(s) = prop.ike_suite() else { return };
        let names = [
            encr_name(Protocol::Ike, s.encr),
            s.integ.map(integ_name).unwrap_or_default(),
            prf_name(s.prf),
            dh_name(s.dh),
        ];
        if self.suites.len() > 1024 {
            self.suites.clear();
        }
        self.suites.insert(m.header.ispi, names);
    }

    /// An IKE datagram from UDP 500.
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        self.snoop(data);
        let _ = self.ep.handle(now, local, remote, data);
    }

    /// An IKE datagram from the data plane's UDP 4500 socket (marker already removed). `local`
    /// may be the wildcard address: the endpoint then takes the IKE SA's own local address.
    pub fn handle_natt(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        self.snoop(data);
        let mut buf = Vec::with_capacity(data.len() + 4);
        buf.extend_from_slice(&NON_ESP_MARKER);
        buf.extend_from_slice(data);
        let _ = self.ep.handle(now, local, remote, &buf);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ep.poll_timeout()
    }

    /// Start IKE_SA_INIT for `conn`; the IKE SA's id.
    pub fn initiate(&mut self, now: Instant, conn: &str) -> Result<IkeSaId, String> {
        self.ep.initiate(conn, now).map_err(|e| e.to_string())
    }

    /// Delete one IKE SA (and its Child SAs) with DELETE.
    pub fn close_ike(&mut self, now: Instant, id: IkeSaId) -> bool {
        self.ep.delete_ike_sa(id, now)
    }

    /// Delete every established IKE SA of `conn` (DELETE sent to the peer).
    pub fn close(&mut self, now: Instant, conn: &str) {
        for id in self.ike_sas(conn) {
            self.ep.delete_ike_sa(id, now);
        }
    }

    /// The established IKE SAs of `conn`.
    pub fn ike_sas(&self, conn: &str) -> Vec<IkeSaId> {
        let mut v: Vec<IkeSaId> = self
            .established
            .iter()
            .filter(|(_, c)| c.as_str() == conn)
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    }

    /// Ask for a new Child SA with these selectors on the IKE SA `id` (CREATE_CHILD_SA, RFC 7296
    /// §1.3.1).
    pub fn create_child(
        &mut self,
        now: Instant,
        id: IkeSaId,
        local_ts: Vec<IkeTs>,
        remote_ts: Vec<IkeTs>,
    ) -> bool {
        self.ep.create_child(id, local_ts, remote_ts, now)
    }

    /// Delete the Child SA with this inbound SPI (INFORMATIONAL DELETE).
    pub fn delete_child(&mut self, now: Instant, inbound_spi: u32) -> bool {
        self.ep.delete_child_sa(inbound_spi, now)
    }

    /// Rekey every Child SA of `conn` now (CREATE_CHILD_SA, RFC 7296 §1.3.3); false when the
    /// connection has no established IKE SA or a rekey is already under way.
    pub fn rekey(&mut self, now: Instant, conn: &str) -> bool {
        let mut started = false;
        for id in self.ike_sas(conn) {
            started |= self.ep.rekey_child(id, now);
        }
        started
    }

    /// Rekey the Child SA with this inbound SPI now (a byte/packet limit, or on request).
    pub fn rekey_spi(&mut self, now: Instant, inbound_spi: u32) -> bool {
        self.ep.rekey_child_spi(inbound_spi, now)
    }

    /// ESP received on the Child SA with this inbound SPI: a sign of life that postpones the
    /// next DPD liveness check (RFC 7296 §2.4: checks are sent only when nothing arrives).
    pub fn note_inbound(&mut self, now: Instant, inbound_spi: u32) {
        self.ep.note_inbound_traffic(inbound_spi, now);
    }

    /// Graceful shutdown: DELETE for every IKE SA (RFC 7296 §1.4.1).
    pub fn shutdown(&mut self, now: Instant) {
        self.ep.shutdown(now);
    }

    /// IKE SAs of any state (for the shutdown loop).
    pub fn ike_sa_count(&self) -> usize {
        self.ep.ike_sa_count()
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        let t = self.ep.poll_transmit()?;
        let mut payload = t.payload;
        if (t.local.port() == NATT_PORT || t.remote.port() == NATT_PORT)
            && payload.get(..4) == Some(&NON_ESP_MARKER)
        {
            payload.drain(..4);
        }
        self.snoop(&payload);
        Some(Datagram {
            local: t.local,
            remote: t.remote,
            payload,
        })
    }

    /// The next endpoint event, with the IKE algorithm names of an established IKE SA.
    pub fn poll_event(&mut self) -> Option<(Event, Option<[String; 4]>)> {
        let ev = self.ep.poll_event()?;
        let mut algs = None;
        match &ev {
            Event::IkeSaEstablished { conn, id, ispi, .. } => {
                self.established.insert(*id, conn.clone());
                algs = Some(self.suites.remove(ispi).unwrap_or_default());
            }
            Event::IkeSaImported { conn, id, ispi, .. } => {
                self.established.insert(*id, conn.clone());
                algs = Some(self.suites.remove(ispi).unwrap_or_default());
            }
            Event::IkeSaFailed { id, .. } | Event::IkeSaDeleted { id, .. } => {
                self.established.remove(id);
            }
            Event::IkeSaRekeyed { conn, old, new, .. } => {
                self.established.remove(old);
                self.established.insert(*new, conn.clone());
            }
            _ => {}
        }
        Some((ev, algs))
    }

    /// The current (local, remote) addresses of an IKE SA (they follow the peer when its NAT
    /// rebinds).
    pub fn addresses(&self, id: IkeSaId) -> Option<(SocketAddr, SocketAddr)> {
        self.ep.addresses(id)
    }

    /// Half-open responder IKE SAs (waiting for IKE_AUTH) right now.
    pub fn half_open(&self) -> usize {
        self.ep.half_open_count()
    }

    /// Counters of the IKE endpoint.
    pub fn counters(&self) -> &ike::Counters {
        self.ep.counters()
    }

    /// Every established IKE SA's state, for the HA backup.
    pub fn export_ike_sas(&self, now: Instant) -> Vec<ike::IkeSaState> {
        self.ep.export_ike_sas(now)
    }

    /// Continues an IKE SA exported by the HA partner (nothing is sent;
    /// `Event::IkeSaImported` follows).
    pub fn import_ike_sa(
        &mut self,
        now: Instant,
        state: ike::IkeSaState,
    ) -> Result<IkeSaId, ike::ImportError> {
        let s = state.suite;
        let names = [
            encr_name(Protocol::Ike, s.encr),
            s.integ.map(integ_name).unwrap_or_default(),
            prf_name(s.prf),
            dh_name(s.dh),
        ];
        let ispi = state.ispi;
        let id = self.ep.import_ike_sa(now, state)?;
        if self.suites.len() > 1024 {
            self.suites.clear();
        }
        self.suites.insert(ispi, names);
        Ok(id)
    }

    /// Drops an IKE SA and its Child SAs without a DELETE (the HA partner continues them).
    pub fn forget_ike_sa(&mut self, id: IkeSaId) -> bool {
        self.established.remove(&id);
        self.ep.forget_ike_sa(id)
    }
}

/// The names the daemon shows for a Child SA (no keys).
pub fn child_info(c: &ChildSa) -> ChildInfo {
    ChildInfo {
        inbound_spi: c.inbound_spi,
        outbound_spi: c.outbound_spi,
        encryption: encr_name(Protocol::Esp, EncrAlg::new(c.encr, Some(c.encr_key_bits))),
        integrity: c.integ.map(integ_name).unwrap_or_default(),
        pfs: String::new(),
        encap: c.udp_encap,
        local_ts: c.local_ts.iter().map(ts_text).collect(),
        remote_ts: c.remote_ts.iter().map(ts_text).collect(),
        since: Instant::now(),
    }
}

/// The esp crate's cipher for the negotiated transform (esp owns the mapping).
fn cipher(c: &ChildSa) -> Result<esp::Cipher, String> {
    esp::Cipher::from_ike(c.encr.0, c.encr_key_bits).ok_or_else(|| {
        format!(
            "ESP cipher {} with {}-bit key is not supported by the data plane",
            c.encr, c.encr_key_bits
        )
    })
}

/// The esp crate's integrity algorithm for the negotiated transform (`None` for AEAD).
fn integrity(c: &ChildSa) -> Result<esp::Integrity, String> {
    match c.integ {
        None => Ok(esp::Integrity::None),
        Some(i) => esp::Integrity::from_ike(i.0)
            .ok_or_else(|| format!("ESP integrity {i} is not supported by the data plane")),
    }
}

fn esp_ts(t: &IkeTs) -> esp::TrafficSelector {
    esp::TrafficSelector {
        start: t.start,
        end: t.end,
        protocol: t.ip_proto,
        start_port: t.start_port,
        end_port: t.end_port,
    }
}

/// Both directions of a negotiated Child SA, ready for the data plane.
pub struct ChildSas {
    pub inbound: esp::InboundSa,
    pub outbound: esp::OutboundSa,
    /// Inbound policy (policy-based mode only).
    pub selectors: Option<esp::SelectorPolicy>,
    pub route: OutboundRoute,
    /// Outer address of the peer.
    pub remote: SocketAddr,
}

impl std::fmt::Debug for ChildSas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSas")
            .field("inbound_spi", &self.inbound.spi())
            .field("outbound_spi", &self.outbound.spi())
            .finish_non_exhaustive()
    }
}

/// Map a negotiated Child SA onto the esp crate's SAs (keys per RFC 7296 §2.17).
pub fn child_sas(cfg: &Connection, c: &ChildSa) -> Result<ChildSas, String> {
    let cipher = cipher(c)?;
    let integ = integrity(c)?;
    let hard = cfg.lifetimes.child_kilobytes.saturating_mul(1024);
    let soft = cfg
        .lifetimes
        .child_rekey_kilobytes
        .map_or(hard - hard / 10, |k| k.saturating_mul(1024).min(hard));
    let limits = esp::Limits {
        soft_bytes: Some(soft),
        hard_bytes: Some(hard),
        ..Default::default()
    };
    let mk = |spi: u32, k: &ike::DirectionKeys| {
        let mut s = esp::SaConfig::new(
            spi,
            cipher,
            integ,
            esp::KeyMaterial::from_slice(k.encr.as_bytes()),
            esp::KeyMaterial::from_slice(k.integ.as_bytes()),
        );
        s.esn = c.esn;
        s.limits = limits;
        s
    };
    let inbound = esp::InboundSa::new(&mk(c.inbound_spi, &c.inbound))
        .map_err(|e| format!("inbound SA: {e}"))?;
    let outbound = esp::OutboundSa::new(&mk(c.outbound_spi, &c.outbound))
        .map_err(|e| format!("outbound SA: {e}"))?;
    let (selectors, route) = match cfg.mode {
        Mode::RouteBased { .. } => (None, OutboundRoute::Any),
        Mode::PolicyBased { .. } => {
            let pol = esp::SelectorPolicy {
                local: c.local_ts.iter().map(esp_ts).collect(),
                remote: c.remote_ts.iter().map(esp_ts).collect(),
            };
            (Some(pol.clone()), OutboundRoute::Selectors(pol))
        }
    };
    Ok(ChildSas {
        inbound,
        outbound,
        selectors,
        route,
        remote: c.remote,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmissions_follow_the_dpd_timeout() {
        for t in [9u64, 10, 30, 45, 120, 3600] {
            let rc = retransmit_for(t);
            let total: Duration = (0..rc.tries).map(|n| rc.timeout(n)).sum();
            let want = Duration::from_secs(t);
            assert!(
                total + Duration::from_millis(5) >= want
                    && total <= want + Duration::from_millis(5),
                "{t}: {rc:?} {total:?}"
            );
            assert!(rc.initial >= Duration::from_secs(1), "{t}: {rc:?}");
            assert!(rc.tries >= 3, "{t}: {rc:?}");
        }
        assert_eq!(retransmit_for(9).tries, 3);
        assert_eq!(retransmit_for(45).tries, 5);
    }

    #[test]
    fn soft_lifetime_defaults_to_ninety_percent_and_follows_the_config() {
        let l = lifetime(1000, None);
        assert_eq!(
            (l.rekey_time, l.life_time),
            (Duration::from_secs(900), Duration::from_secs(1000))
        );
        assert_eq!(l.jitter, Duration::from_secs(1000) / 30);
        let l = lifetime(1000, Some(40));
        assert_eq!(l.rekey_time, Duration::from_secs(40));
        assert!(l.jitter <= Duration::from_secs(20), "{l:?}");
    }

    #[test]
    fn traffic_selectors_render_as_prefixes() {
        let t = IkeTs::from_prefix("198.18.1.0".parse().unwrap(), 24);
        assert_eq!(ts_text(&t), "198.18.1.0/24");
        assert_eq!(ts_text(&IkeTs::any_v4()), "0.0.0.0/0");
        let mut r = IkeTs::from_prefix("198.18.1.0".parse().unwrap(), 24);
        r.end = "198.18.1.9".parse().unwrap();
        assert_eq!(ts_text(&r), "198.18.1.0-198.18.1.9");
    }

    #[test]
    fn algorithm_names_are_strongswan_names() {
        assert_eq!(
            encr_name(Protocol::Esp, EncrAlg::aes_gcm16(256)),
            "aes256gcm16"
        );
        assert_eq!(encr_name(Protocol::Ike, EncrAlg::aes_cbc(128)), "aes128");
        assert_eq!(integ_name(IntegId::AUTH_HMAC_SHA2_256_128), "sha256");
        assert_eq!(dh_name(DhId::MODP_1024), "modp1024");
        assert_eq!(prf_name(PrfId::PRF_HMAC_SHA2_384), "prfsha384");
    }
}
