//! Connection configuration for the IKE endpoint: peers, identities (RFC 7296 §3.5), PSK,
//! proposals, traffic selectors (§2.9), NAT-T forcing (§2.23), retransmission (§2.1), cookies (§2.6).

use crate::crypto::Psk;
use crate::proposal::Proposal;
use crate::wire::{IdPayload, IdType, TrafficSelector};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The IKE port (RFC 7296 §2).
pub const IKE_PORT: u16 = 500;
/// The NAT-T port (RFC 3948, RFC 7296 §2.23).
pub const NATT_PORT: u16 = 4500;

/// An IKE identity (RFC 7296 §3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Identity {
    /// ID_IPV4_ADDR.
    Ipv4(Ipv4Addr),
    /// ID_IPV6_ADDR.
    Ipv6(Ipv6Addr),
    /// ID_FQDN (compared case-insensitively).
    Fqdn(String),
    /// ID_RFC822_ADDR.
    Rfc822(String),
    /// ID_KEY_ID (opaque octets).
    KeyId(Vec<u8>),
    /// Any other type, kept raw (matched byte for byte).
    Other(IdType, Vec<u8>),
}

impl Identity {
    /// The identity of an address.
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Identity::Ipv4(a),
            IpAddr::V6(a) => Identity::Ipv6(a),
        }
    }

    /// Encodes as an ID payload body.
    pub fn to_payload(&self) -> IdPayload {
        let (id_type, data) = match self {
            Identity::Ipv4(a) => (IdType::IPV4_ADDR, a.octets().to_vec()),
            Identity::Ipv6(a) => (IdType::IPV6_ADDR, a.octets().to_vec()),
            Identity::Fqdn(s) => (IdType::FQDN, s.as_bytes().to_vec()),
            Identity::Rfc822(s) => (IdType::RFC822_ADDR, s.as_bytes().to_vec()),
            Identity::KeyId(k) => (IdType::KEY_ID, k.clone()),
            Identity::Other(t, d) => (*t, d.clone()),
        };
        IdPayload { id_type, data }
    }

    /// Decodes a received ID payload; malformed addresses and non-UTF-8 names stay `Other`.
    pub fn from_payload(p: &IdPayload) -> Self {
        match p.id_type {
            IdType::IPV4_ADDR => match <[u8; 4]>::try_from(p.data.as_slice()) {
                Ok(a) => Identity::Ipv4(a.into()),
                Err(_) => Identity::Other(p.id_type, p.data.clone()),
            },
            IdType::IPV6_ADDR => match <[u8; 16]>::try_from(p.data.as_slice()) {
                Ok(a) => Identity::Ipv6(a.into()),
                Err(_) => Identity::Other(p.id_type, p.data.clone()),
            },
            IdType::FQDN => match std::str::from_utf8(&p.data) {
                Ok(s) => Identity::Fqdn(s.to_owned()),
                Err(_) => Identity::Other(p.id_type, p.data.clone()),
            },
            IdType::RFC822_ADDR => match std::str::from_utf8(&p.data) {
                Ok(s) => Identity::Rfc822(s.to_owned()),
                Err(_) => Identity::Other(p.id_type, p.data.clone()),
            },
            IdType::KEY_ID => Identity::KeyId(p.data.clone()),
            t => Identity::Other(t, p.data.clone()),
        }
    }

    /// Whether a received identity is this configured one.
    pub fn matches(&self, other: &Identity) -> bool {
        match (self, other) {
            (Identity::Fqdn(a), Identity::Fqdn(b)) => a.eq_ignore_ascii_case(b),
            (Identity::Rfc822(a), Identity::Rfc822(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        }
    }
}

impl core::fmt::Display for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(s) => write!(f, "{s}"),
            Identity::Rfc822(s) => write!(f, "{s}"),
            Identity::KeyId(k) => write!(f, "keyid:{}", hex::encode(k)),
            Identity::Other(t, d) => write!(f, "{t}:{}", hex::encode(d)),
        }
    }
}

/// Which side may start the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionMode {
    /// Only we initiate; IKE_SA_INIT requests from the peer are refused.
    InitiatorOnly,
    /// Only the peer initiates.
    ResponderOnly,
    /// Either side (Azure's "Default").
    #[default]
    Both,
}

/// Retransmission of requests (RFC 7296 §2.1): timeout `initial * 2^n`, capped at `max`, at most
/// `tries` transmissions in all before the IKE SA is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// First timeout.
    pub initial: Duration,
    /// Largest timeout.
    pub max: Duration,
    /// Transmissions (first send plus retransmissions) before giving up.
    pub tries: u32,
}

impl Default for RetransmitConfig {
    /// strongSwan-like: 4 s, doubling, 5 transmissions (about 2 minutes in all).
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(4),
            max: Duration::from_secs(64),
            tries: 5,
        }
    }
}

impl RetransmitConfig {
    /// The timeout after transmission number `n` (0-based).
    pub fn timeout(&self, n: u32) -> Duration {
        let t = self
            .initial
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX));
        t.min(self.max)
    }
}

/// Lifetime of an SA (RFC 7296 §2.8): the Endpoint starts a rekey at `rekey_time` minus a
/// random part of `jitter` (so two peers with equal settings do not fire together) and deletes
/// the SA at `life_time` if it was not replaced by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Soft lifetime: when to start the rekey (before jitter is subtracted).
    pub rekey_time: Duration,
    /// Hard lifetime: when the SA is deleted.
    pub life_time: Duration,
    /// Up to this much is subtracted at random from `rekey_time`.
    pub jitter: Duration,
}

impl Lifetime {
    /// Azure's Child SA lifetime: 27 000 s; rekey at 90 % (24 300 s) minus up to 900 s.
    pub const fn azure_child() -> Self {
        Self {
            rekey_time: Duration::from_secs(24_300),
            life_time: Duration::from_secs(27_000),
            jitter: Duration::from_secs(900),
        }
    }

    /// Azure's IKE SA lifetime: 28 800 s; rekey at 90 % (25 920 s) minus up to 960 s.
    pub const fn azure_ike() -> Self {
        Self {
            rekey_time: Duration::from_secs(25_920),
            life_time: Duration::from_secs(28_800),
            jitter: Duration::from_secs(960),
        }
    }
}

/// What to do when dead peer detection gives up (RFC 7296 §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpdAction {
    /// Re-initiate the connection at once (the default for a site link).
    #[default]
    Restart,
    /// Drop the SAs and do nothing.
    Clear,
    /// Drop the SAs and wait for the peer to initiate (the driver keeps its routes).
    Hold,
}

/// Dead peer detection scheduled by the Endpoint (RFC 7296 §1.4, §2.4): after `delay` without
/// any authenticated IKE message from the peer (or ESP traffic reported with
/// `Endpoint::note_inbound_traffic`), an empty INFORMATIONAL is sent with the connection's
/// retransmission schedule; when it goes unanswered the IKE SA fails (`IkeSaFailed` with
/// `Timeout`) and `action` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpdConfig {
    /// Idle time before a liveness check.
    pub delay: Duration,
    /// What to do when the peer is dead.
    pub action: DpdAction,
}

impl DpdConfig {
    /// Azure's default: 45 s, restart.
    pub const fn azure() -> Self {
        Self {
            delay: Duration::from_secs(45),
            action: DpdAction::Restart,
        }
    }
}

/// One selector pair set a Child SA may carry (RFC 7296 §2.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPolicy {
    /// Our protected side; empty = any.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's protected side; empty = any.
    pub remote_ts: Vec<TrafficSelector>,
}

/// One configured site-to-site connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Name used in events and logs.
    pub name: String,
    /// Our IKE address (port 500 normally).
    pub local_addr: SocketAddr,
    /// The peer's IKE address (port 500 normally).
    pub remote_addr: SocketAddr,
    /// Our identity (IDi/IDr).
    pub local_id: Identity,
    /// The peer's identity; `None` accepts any identity that proves the PSK.
    pub remote_id: Option<Identity>,
    /// The pre-shared key.
    pub psk: Psk,
    /// IKE SA proposals in preference order.
    pub ike_proposals: Vec<Proposal>,
    /// Child SA (ESP) proposals in preference order.
    pub esp_proposals: Vec<Proposal>,
    /// Our protected side; empty = any (route-based).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's protected side; empty = any.
    pub remote_ts: Vec<TrafficSelector>,
    /// What a Child SA of this connection may carry, in order of preference; empty means one
    /// policy made of `local_ts` / `remote_ts`. `local_ts` / `remote_ts` stay what our IKE_AUTH
    /// proposes. As responder (IKE_AUTH and CREATE_CHILD_SA) the peer's selectors are narrowed
    /// against the first policy they overlap on both sides (RFC 7296 §2.9).
    pub policies: Vec<ChildPolicy>,
    /// Pretend a NAT is present so both sides use UDP encapsulation on port 4500
    /// (strongSwan `encap = yes`).
    pub force_encap: bool,
    /// Who initiates.
    pub mode: ConnectionMode,
    /// Request retransmission.
    pub retransmit: RetransmitConfig,
    /// From this many half-open responder SAs (for this connection) on, demand a COOKIE.
    pub cookie_threshold: usize,
    /// How long a half-open responder SA waits for IKE_AUTH.
    pub half_open_timeout: Duration,
    /// Whether extended sequence numbers may be negotiated for the Child SA.
    pub esn_allowed: bool,
    /// Child SA soft/hard lifetime (rekeyed with CREATE_CHILD_SA, RFC 7296 §1.3.3).
    pub child_lifetime: Lifetime,
    /// IKE SA lifetime: rekeyed with CREATE_CHILD_SA (RFC 7296 §2.18), deleted at `life_time`.
    pub ike_lifetime: Lifetime,
    /// Dead peer detection; `None` (the default) sends no liveness checks of its own.
    pub dpd: Option<DpdConfig>,
    /// Announce and use IKE fragmentation (RFC 7383).
    pub fragmentation: bool,
    /// When the peer rekeys a Child SA we are rekeying ourselves (RFC 7296 §2.8.1) and our
    /// nonce is the higher one, refuse its request with TEMPORARY_FAILURE so that only one
    /// exchange completes. Off by default: every colliding request is answered, both exchanges
    /// complete and the SA with the lowest of the four nonces is closed by its initiator, as
    /// strongSwan does. strongSwan 5.9 answered with TEMPORARY_FAILURE in a collision never
    /// installs the outbound SA of our rekey (it keeps only the inbound one), which left the
    /// tunnel one-way until its next rekey (found by `tests/lifecycle_stress.rs`).
    pub refuse_colliding_rekey: bool,
    /// Send INITIAL_CONTACT in our IKE_AUTH (RFC 7296 §3.10.1): we hold no other state with the
    /// peer, so its older IKE SAs with us are stale. On by default; off only to act as a peer that
    /// re-initiates without it (tests of the uniqueness policy).
    pub initial_contact: bool,
    /// Largest IKE message we send before splitting it into SKF fragments, in octets of the
    /// IKE message (the default 1248 fits IPv4 minimum MTU 1280 minus IP, UDP and non-ESP
    /// marker).
    pub fragment_size: usize,
}

impl ConnectionConfig {
    /// A connection with defaults for everything but the essentials: IP identities, any-to-any
    /// selectors, both modes, no forced encapsulation, cookies from 10 half-open SAs.
    pub fn new(
        name: impl Into<String>,
        local_addr: SocketAddr,
        remote_addr: SocketAddr,
        psk: Psk,
        ike_proposals: Vec<Proposal>,
        esp_proposals: Vec<Proposal>,
    ) -> Self {
        Self {
            name: name.into(),
            local_addr,
            remote_addr,
            local_id: Identity::from_ip(local_addr.ip()),
            remote_id: None,
            psk,
            ike_proposals,
            esp_proposals,
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            policies: Vec::new(),
            force_encap: false,
            mode: ConnectionMode::Both,
            retransmit: RetransmitConfig::default(),
            cookie_threshold: 10,
            half_open_timeout: Duration::from_secs(30),
            esn_allowed: true,
            child_lifetime: Lifetime::azure_child(),
            ike_lifetime: Lifetime::azure_ike(),
            dpd: None,
            fragmentation: true,
            fragment_size: 1248,
            refuse_colliding_rekey: false,
            initial_contact: true,
        }
    }

    /// The effective Child SA policies: `policies`, or one made of `local_ts` / `remote_ts`
    /// when that is empty.
    pub fn child_policies(&self) -> Vec<ChildPolicy> {
        if self.policies.is_empty() {
            vec![ChildPolicy {
                local_ts: self.local_ts.clone(),
                remote_ts: self.remote_ts.clone(),
            }]
        } else {
            self.policies.clone()
        }
    }
}
