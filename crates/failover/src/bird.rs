//! The on-prem BIRD 2 configurations, generated from small typed descriptions: BGP (RFC 4271)
//! with BFD (RFC 5880/5881), ECMP through BIRD's `merge paths`.
//!
//! - [`ApplianceBird`]: the BIRD next to hybridgw. eBGP to the Azure VPN gateway through each
//!   tunnel (one session per tunnel: two for an active-active gateway), optionally eBGP to the
//!   ExpressRoute edge with BFD, optionally iBGP with BFD to the on-prem router over the LAN.
//!   [`OnpremBird`] is its single-tunnel shape (ExpressRoute with VPN failover on one router).
//! - [`RouterBird`]: the on-prem router of Azure's dual redundancy, iBGP with BFD to several
//!   appliances, ECMP over them, optionally ExpressRoute preferred over all of them.
//!
//! Every choice is explained in `appliance-config/bird/README.md`.

mod keywords;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::asn::{AZURE_GATEWAY_ASN, AsnError, check_onprem_asn};
use crate::prefix::Ipv4Prefix;

/// The most prefixes an Azure VPN gateway accepts from on-prem over BGP.
pub const AZURE_MAX_ONPREM_PREFIXES: usize = 4000;
/// The ASN of Microsoft's ExpressRoute edge routers (MSEE) on private peering.
pub const MSEE_ASN: u32 = 12076;
/// The most Azure sessions (tunnels) one appliance's BIRD runs.
pub const MAX_AZURE_PEERS: usize = 16;
/// The most LAN peers in one configuration (routers of an appliance, appliances of a router).
pub const MAX_LAN_PEERS: usize = 16;
/// The longest protocol name the generator accepts (BIRD itself takes 64).
pub const MAX_PROTOCOL_NAME: usize = 32;
/// The protocol name of the ExpressRoute session.
pub const EXPRESSROUTE_PROTOCOL: &str = "expressroute";
/// The protocol that originates the on-prem prefixes (`protocol static`).
pub const ONPREM_PROTOCOL: &str = "onprem";

/// Symbols a rendered file defines itself (protocols, filters, functions, and the names BIRD
/// gives its unnamed `device`, `kernel` and `bfd` protocols): no peer may take one.
const GENERATED_SYMBOLS: &[&str] = &[
    ONPREM_PROTOCOL,
    EXPRESSROUTE_PROTOCOL,
    "vnet_route_ok",
    "expressroute_in",
    "vpn_in",
    "lan_in",
    "appliance_in",
    "onprem_out",
    "vnet_to_lan",
    "device1",
    "kernel1",
    "bfd1",
];

/// The BIRD protocol name of the Azure session of tunnel (or connection) `tunnel`: `azure_`
/// followed by the name with ASCII letters lower-cased and every other character that is not
/// `[a-z0-9]` replaced by `_` (`azure-2` gives `azure_azure_2`). hybridgw finds a tunnel's
/// protocol with this same function, so it is a contract: change both or neither. The result is
/// checked like any other name ([`check_protocol_name`]): a name over 26 characters gives a
/// protocol name that is too long.
pub fn protocol_name_for(tunnel: &str) -> String {
    let mut s = String::with_capacity(6 + tunnel.len());
    s.push_str("azure_");
    s.extend(tunnel.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '_'
        }
    }));
    s
}

/// Checks a protocol name: a BIRD symbol `[a-z_][a-z0-9_]*` of 1 to [`MAX_PROTOCOL_NAME`]
/// characters that is not one of BIRD 2.0.12's keywords (`router`, `bgp`, `table`, ... which
/// BIRD refuses as names). Such a name can be written into a configuration or a control-socket
/// command as it is: it cannot end a statement or a command.
pub fn check_protocol_name(name: &str) -> Result<(), BirdError> {
    let bad = |reason| {
        Err(BirdError::Protocol {
            name: shown(name),
            reason,
        })
    };
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return bad("empty"),
        Some(b) if !(b.is_ascii_lowercase() || b == b'_') => {
            return bad("must start with a-z or _");
        }
        Some(_) => {}
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return bad("only a-z, 0-9 and _ may follow the first character");
    }
    if name.len() > MAX_PROTOCOL_NAME {
        return bad("longer than 32 characters");
    }
    if keywords::RESERVED.binary_search(&name).is_ok() {
        return bad("a BIRD keyword (BIRD refuses it as a name)");
    }
    Ok(())
}

/// At most 40 characters of a rejected value, control characters escaped (values are hostile).
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    let escaped = format!("{cut:?}");
    escaped
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(&escaped)
        .to_string()
}

/// One of the Azure VPN gateway's BGP peers (one instance of an active-active gateway), reached
/// through one IPsec tunnel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AzurePeer {
    /// The BIRD protocol name of the session ([`protocol_name_for`] of the tunnel, unless it is
    /// the single-tunnel example's `azure_azure_hub`); a BIRD symbol, unique in the configuration.
    pub protocol: String,
    /// Azure's BGP peer address: an APIPA address (169.254.21.0-169.254.22.255) or one from the
    /// GatewaySubnet, routed through the tunnel.
    pub address: Ipv4Addr,
    /// Azure's ASN (65515 unless changed on the gateway).
    pub asn: u32,
    /// The on-prem BGP address, configured on the tunnel interface (`tun_address`).
    pub local_address: Ipv4Addr,
    /// The tunnel interface (the TUN of the hybridgw connection).
    pub interface: String,
    /// The TTL of the session's packets (BIRD `multihop`): Azure's peer is not on a shared subnet.
    pub multihop: u8,
}

/// The ExpressRoute edge (Microsoft's MSEE or the provider's edge) over the circuit link.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExpressRoutePeer {
    /// The edge's address on the circuit link (the second address of the /30).
    pub address: Ipv4Addr,
    /// The edge's ASN (12076 for the MSEE, or the layer-3 provider's).
    pub asn: u32,
    /// The on-prem address on the circuit link.
    pub local_address: Ipv4Addr,
    /// The interface of the circuit link.
    pub interface: String,
    /// BFD transmit/receive interval in milliseconds (Azure: 300).
    pub bfd_interval_ms: u32,
    /// BFD detect multiplier (Azure: 3).
    pub bfd_multiplier: u8,
}

/// A BGP peer on the on-prem LAN: the on-prem router (seen from an appliance) or an appliance
/// (seen from the router). The session is iBGP (the same ASN on both ends), direct (the peer is on
/// the LAN's subnet) and watched by BFD.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LanPeer {
    /// The BIRD protocol name of the session; a BIRD symbol, unique in the configuration.
    pub protocol: String,
    /// The peer's address on the LAN.
    pub address: Ipv4Addr,
    /// The peer's ASN: the on-prem ASN (iBGP).
    pub asn: u32,
    /// This side's address on the LAN.
    pub local_address: Ipv4Addr,
    /// The LAN interface.
    pub interface: String,
    /// BFD transmit/receive interval in milliseconds.
    pub bfd_interval_ms: u32,
    /// BFD detect multiplier.
    pub bfd_multiplier: u8,
}

/// BGP timers shared by all sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BgpTimers {
    /// Keepalive interval in seconds (Azure: 60).
    pub keepalive: u32,
    /// Hold time in seconds (Azure: 180).
    pub hold: u32,
    /// Seconds between connection attempts while a session is down (BIRD's default is 120).
    pub connect_retry: u32,
    /// Seconds before the first connection attempt after a session (re)starts (BIRD's default
    /// is 5).
    pub connect_delay: u32,
    /// Minimum and maximum wait after a session failure before restarting it (doubled on each
    /// failure in a row, so a flapping circuit is held off).
    pub error_wait: (u32, u32),
}

impl Default for BgpTimers {
    /// Azure's 60/180 s, a 10 s connect retry, BIRD's 5 s connect delay and a 10-120 s error
    /// wait.
    fn default() -> Self {
        BgpTimers {
            keepalive: 60,
            hold: 180,
            connect_retry: 10,
            connect_delay: 5,
            error_wait: (10, 120),
        }
    }
}

/// Where BIRD logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BirdLog {
    /// syslog (a service).
    Syslog,
    /// standard error (a foreground process under a supervisor or a test).
    Stderr,
}

/// The BIRD of a hybridgw appliance: one eBGP session to Azure per tunnel, optionally
/// ExpressRoute, optionally iBGP to the on-prem router.
///
/// What it advertises to Azure (and ExpressRoute) is derived from `lan`: without LAN peers it
/// originates `onprem_prefixes` itself (`protocol static onprem`, the appliance is the on-prem
/// router); with LAN peers it re-advertises exactly those of `onprem_prefixes` it learns from
/// them, so an appliance cut off from the router withdraws them and stops attracting Azure's
/// traffic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplianceBird {
    /// BGP router ID (an address of this box, distinct from every iBGP peer's).
    pub router_id: Ipv4Addr,
    /// The on-prem ASN (checked by [`check_onprem_asn`]).
    pub local_asn: u32,
    /// The on-prem prefixes, advertised identically on every session to Azure.
    pub onprem_prefixes: Vec<Ipv4Prefix>,
    /// The Azure VPN gateway's peers, one per tunnel (1 to [`MAX_AZURE_PEERS`]).
    pub azure: Vec<AzurePeer>,
    /// The ExpressRoute edge over the circuit, if this box has the circuit.
    pub expressroute: Option<ExpressRoutePeer>,
    /// The on-prem router(s) over the LAN (none: this box is the on-prem router).
    pub lan: Vec<LanPeer>,
    /// BGP timers.
    pub timers: BgpTimers,
    /// Logging.
    pub log: BirdLog,
}

/// The on-prem router's side of ExpressRoute with VPN failover, on one box with one tunnel: the
/// shape of `appliance-config/bird/onprem-bird.conf`. It renders as the [`ApplianceBird`] it
/// converts into.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnpremBird {
    /// BGP router ID (an on-prem address of the router).
    pub router_id: Ipv4Addr,
    /// The on-prem ASN (checked by [`check_onprem_asn`]).
    pub local_asn: u32,
    /// The on-prem prefixes, advertised identically on both sessions.
    pub onprem_prefixes: Vec<Ipv4Prefix>,
    /// The Azure VPN gateway over the tunnel.
    pub azure: AzurePeer,
    /// The ExpressRoute edge over the circuit.
    pub expressroute: ExpressRoutePeer,
    /// BGP timers.
    pub timers: BgpTimers,
    /// Logging.
    pub log: BirdLog,
}

/// The on-prem router of Azure's dual redundancy: originates the on-prem prefixes, peers (iBGP,
/// BFD) with the hybridgw appliances over the LAN and spreads the VNet traffic over them (ECMP);
/// optionally ExpressRoute, preferred over all of them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouterBird {
    /// BGP router ID (distinct from every appliance's).
    pub router_id: Ipv4Addr,
    /// The on-prem ASN (checked by [`check_onprem_asn`]), the appliances' too.
    pub local_asn: u32,
    /// The on-prem prefixes, originated here.
    pub onprem_prefixes: Vec<Ipv4Prefix>,
    /// The appliances over the LAN (1 to [`MAX_LAN_PEERS`]).
    pub appliances: Vec<LanPeer>,
    /// The ExpressRoute edge over the circuit, if the router has one.
    pub expressroute: Option<ExpressRoutePeer>,
    /// BGP timers.
    pub timers: BgpTimers,
    /// Logging.
    pub log: BirdLog,
}

/// Why a description cannot become a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BirdError {
    /// The on-prem ASN is reserved.
    #[error("local ASN: {0}")]
    Asn(#[from] AsnError),
    /// An eBGP peer has the on-prem ASN.
    #[error("the {0} peer has the on-prem ASN: that session must be eBGP")]
    SameAsn(&'static str),
    /// A peer ASN is 0 or 4294967295... or otherwise invalid.
    #[error("the {0} peer's ASN is invalid")]
    PeerAsn(&'static str),
    /// An interface name BIRD could not take safely.
    #[error("interface name `{0}` must be 1-15 of [A-Za-z0-9_.-]")]
    Interface(String),
    /// An APIPA BGP address outside Azure's range.
    #[error("Azure accepts APIPA BGP addresses only in 169.254.21.0-169.254.22.255, not {0}")]
    Apipa(Ipv4Addr),
    /// No on-prem prefix, too many, a default route, or a duplicate.
    #[error("on-prem prefixes: {0}")]
    Prefixes(String),
    /// Timers out of range.
    #[error("timers: {0}")]
    Timers(&'static str),
    /// A bad address (unspecified, the same on both ends of a session, ...).
    #[error("addresses: {0}")]
    Address(&'static str),
    /// A protocol name that is not a BIRD symbol, a keyword, or taken.
    #[error("protocol name `{name}`: {reason}")]
    Protocol {
        /// The name (at most 40 characters of it, escaped).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Too few or too many peers, two peers sharing what they must not, a LAN peer that is not
    /// iBGP.
    #[error("peers: {0}")]
    Peers(String),
    /// The configurations of one site do not fit together ([`check_site`]).
    #[error("site: {0}")]
    Site(String),
}

fn check_ifname(name: &str) -> Result<(), BirdError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BirdError::Interface(shown(name)))
    }
}

fn is_apipa(a: Ipv4Addr) -> bool {
    a.octets()[0] == 169 && a.octets()[1] == 254
}

fn check_apipa(a: Ipv4Addr) -> Result<(), BirdError> {
    if is_apipa(a) && !(a.octets()[2] == 21 || a.octets()[2] == 22) {
        return Err(BirdError::Apipa(a));
    }
    Ok(())
}

fn check_usable(addrs: &[Ipv4Addr]) -> Result<(), BirdError> {
    if addrs
        .iter()
        .any(|a| a.is_unspecified() || a.is_broadcast() || a.is_multicast())
    {
        return Err(BirdError::Address(
            "unspecified, broadcast or multicast address",
        ));
    }
    Ok(())
}

fn check_ends(address: Ipv4Addr, local: Ipv4Addr) -> Result<(), BirdError> {
    if address == local {
        return Err(BirdError::Address(
            "a session's two ends have the same address",
        ));
    }
    Ok(())
}

fn check_ebgp(who: &'static str, asn: u32, local_asn: u32) -> Result<(), BirdError> {
    if asn == 0 || asn == u32::MAX || asn == 23456 {
        return Err(BirdError::PeerAsn(who));
    }
    if asn == local_asn {
        return Err(BirdError::SameAsn(who));
    }
    Ok(())
}

fn check_bfd(interval_ms: u32, multiplier: u8) -> Result<(), BirdError> {
    if !(10..=10_000).contains(&interval_ms) || multiplier == 0 {
        return Err(BirdError::Timers(
            "BFD interval must be 10-10000 ms, multiplier 1-255",
        ));
    }
    Ok(())
}

fn check_prefixes(prefixes: &[Ipv4Prefix]) -> Result<(), BirdError> {
    let n = prefixes.len();
    if n == 0 {
        return Err(BirdError::Prefixes(
            "at least one on-prem prefix is needed".into(),
        ));
    }
    if n > AZURE_MAX_ONPREM_PREFIXES {
        return Err(BirdError::Prefixes(format!(
            "{n} prefixes: Azure accepts at most {AZURE_MAX_ONPREM_PREFIXES}"
        )));
    }
    let mut seen = BTreeSet::new();
    for p in prefixes {
        if p.is_default() {
            return Err(BirdError::Prefixes(
                "0.0.0.0/0 must not be advertised to Azure".into(),
            ));
        }
        if !seen.insert(*p) {
            return Err(BirdError::Prefixes(format!("{p} is listed twice")));
        }
    }
    Ok(())
}

fn check_timers(t: &BgpTimers) -> Result<(), BirdError> {
    if t.hold != 0 && !(3..=65535).contains(&t.hold) {
        return Err(BirdError::Timers(
            "hold time must be 0 or 3-65535 s (RFC 4271 4.2)",
        ));
    }
    if t.keepalive == 0 || (t.hold != 0 && u64::from(t.keepalive) * 3 > u64::from(t.hold)) {
        return Err(BirdError::Timers(
            "keepalive must be 1 s to a third of the hold time",
        ));
    }
    if !(1..=3600).contains(&t.connect_retry) {
        return Err(BirdError::Timers("connect retry must be 1-3600 s"));
    }
    if !(1..=3600).contains(&t.connect_delay) {
        return Err(BirdError::Timers("connect delay must be 1-3600 s"));
    }
    if t.error_wait.0 == 0 || t.error_wait.0 > t.error_wait.1 || t.error_wait.1 > 86_400 {
        return Err(BirdError::Timers(
            "error wait must be 1 <= min <= max <= 86400 s",
        ));
    }
    Ok(())
}

/// The protocol names of one configuration: each a valid symbol, none taken twice, none of the
/// generator's own.
#[derive(Default)]
struct Names(BTreeSet<String>);

impl Names {
    fn take(&mut self, name: &str) -> Result<(), BirdError> {
        check_protocol_name(name)?;
        if GENERATED_SYMBOLS.contains(&name) {
            return Err(BirdError::Protocol {
                name: name.to_string(),
                reason: "the generated configuration uses this name itself",
            });
        }
        if !self.0.insert(name.to_string()) {
            return Err(BirdError::Protocol {
                name: name.to_string(),
                reason: "used by two sessions",
            });
        }
        Ok(())
    }
}

fn check_expressroute(
    er: &ExpressRoutePeer,
    local_asn: u32,
    taken_ifs: &[&str],
) -> Result<(), BirdError> {
    check_ebgp("ExpressRoute", er.asn, local_asn)?;
    check_ifname(&er.interface)?;
    if taken_ifs.contains(&er.interface.as_str()) {
        return Err(BirdError::Address(
            "the tunnel and the circuit use the same interface",
        ));
    }
    check_usable(&[er.address, er.local_address])?;
    check_ends(er.address, er.local_address)?;
    check_bfd(er.bfd_interval_ms, er.bfd_multiplier)
}

/// Checks LAN peers: iBGP, valid names and addresses, no shared address, one BFD setting per
/// interface, no interface of a tunnel or of the circuit.
fn check_lan(
    peers: &[LanPeer],
    local_asn: u32,
    names: &mut Names,
    foreign_ifs: &[&str],
    foreign_addrs: &[Ipv4Addr],
) -> Result<(), BirdError> {
    if peers.len() > MAX_LAN_PEERS {
        return Err(BirdError::Peers(format!(
            "{} LAN peers: at most {MAX_LAN_PEERS}",
            peers.len()
        )));
    }
    for (i, p) in peers.iter().enumerate() {
        names.take(&p.protocol)?;
        if p.asn != local_asn {
            return Err(BirdError::Peers(format!(
                "LAN peer {} has AS{}: LAN sessions are iBGP, give the on-prem ASN {local_asn}",
                p.protocol, p.asn
            )));
        }
        check_ifname(&p.interface)?;
        if foreign_ifs.contains(&p.interface.as_str()) {
            return Err(BirdError::Peers(format!(
                "LAN peer {} uses interface {}, which is a tunnel's or the circuit's",
                p.protocol, p.interface
            )));
        }
        check_usable(&[p.address, p.local_address])?;
        check_ends(p.address, p.local_address)?;
        if is_apipa(p.address) || is_apipa(p.local_address) {
            return Err(BirdError::Peers(format!(
                "LAN peer {}: link-local (169.254.0.0/16) addresses are for the tunnels",
                p.protocol
            )));
        }
        check_bfd(p.bfd_interval_ms, p.bfd_multiplier)?;
        if foreign_addrs.contains(&p.address) {
            return Err(BirdError::Peers(format!(
                "LAN peer {} has the address of another session's peer",
                p.protocol
            )));
        }
        for q in &peers[..i] {
            if q.address == p.address {
                return Err(BirdError::Peers(format!(
                    "LAN peers {} and {} share the address {}",
                    q.protocol, p.protocol, p.address
                )));
            }
            if q.interface == p.interface
                && (q.bfd_interval_ms, q.bfd_multiplier) != (p.bfd_interval_ms, p.bfd_multiplier)
            {
                return Err(BirdError::Peers(format!(
                    "LAN peers {} and {} share interface {} with different BFD timers (BIRD sets \
                     BFD per interface)",
                    q.protocol, p.protocol, p.interface
                )));
            }
        }
    }
    Ok(())
}

/// `write!` to a String cannot fail; the results are ignored on purpose throughout.
fn push_header(s: &mut String, title: &str, sessions: &[String]) {
    let _ = writeln!(
        s,
        "# {title}\n# Generated by hybridgw (failover::bird); every choice is explained in README.md."
    );
    let _ = writeln!(s, "# {}.\n", sessions.join(";\n# "));
}

fn push_prelude(s: &mut String, log: BirdLog, router_id: Ipv4Addr, prefixes: &[Ipv4Prefix]) {
    let list = |plus: &str| {
        prefixes
            .iter()
            .map(|p| format!("{p}{plus}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "log {};\nrouter id {};\n",
        match log {
            BirdLog::Syslog => "syslog all",
            BirdLog::Stderr => "stderr all",
        },
        router_id
    );
    let _ = writeln!(
        s,
        "# The on-prem prefixes: advertised exactly (never a more-specific) on every session to Azure.\n\
         define ONPREM = [ {} ];\n\
         # The same prefixes and everything inside them: never accepted back from Azure.\n\
         define ONPREM_ANY = [ {} ];\n",
        list(""),
        list("+")
    );
    let _ = writeln!(
        s,
        "# Interface states, so sessions over a link that goes down are torn down at once.\n\
         protocol device {{\n\
         \x20 scan time 10;\n\
         }}\n"
    );
}

fn push_static_onprem(s: &mut String, prefixes: &[Ipv4Prefix]) {
    let _ = writeln!(
        s,
        "# Originates the on-prem prefixes into BGP (never exported to the kernel)."
    );
    let _ = writeln!(s, "protocol static {ONPREM_PROTOCOL} {{\n  ipv4;");
    for p in prefixes {
        let _ = writeln!(s, "  route {p} blackhole;");
    }
    let _ = writeln!(s, "}}\n");
}

/// One `interface` block of `protocol bfd`.
struct BfdIf<'a> {
    comment: String,
    interface: &'a str,
    interval_ms: u32,
    multiplier: u8,
}

fn push_bfd(s: &mut String, ifs: &[BfdIf<'_>]) {
    if ifs.is_empty() {
        return;
    }
    for i in ifs {
        let _ = writeln!(s, "# {}", i.comment);
    }
    let _ = writeln!(s, "protocol bfd {{");
    for i in ifs {
        let _ = writeln!(
            s,
            "  interface \"{ifname}\" {{\n\
             \x20   min rx interval {ms} ms;\n\
             \x20   min tx interval {ms} ms;\n\
             \x20   idle tx interval 1000 ms;\n\
             \x20   multiplier {mult};\n\
             \x20 }};",
            ifname = i.interface,
            ms = i.interval_ms,
            mult = i.multiplier,
        );
    }
    let _ = writeln!(s, "}}\n");
}

/// BFD blocks for LAN peers: one per interface (validation made their timers agree).
fn lan_bfd<'a>(peers: &'a [LanPeer], whom: &str) -> Vec<BfdIf<'a>> {
    let mut v: Vec<BfdIf<'a>> = Vec::new();
    for p in peers {
        if v.iter().any(|b| b.interface == p.interface) {
            continue;
        }
        v.push(BfdIf {
            comment: format!(
                "BFD on the LAN to {whom} ({} ms x {}).",
                p.bfd_interval_ms, p.bfd_multiplier
            ),
            interface: &p.interface,
            interval_ms: p.bfd_interval_ms,
            multiplier: p.bfd_multiplier,
        });
    }
    v
}

fn er_bfd(er: &ExpressRoutePeer) -> BfdIf<'_> {
    BfdIf {
        comment: format!(
            "BFD on the circuit link ({} ms x {}, as Azure's private peering).",
            er.bfd_interval_ms, er.bfd_multiplier
        ),
        interface: &er.interface,
        interval_ms: er.bfd_interval_ms,
        multiplier: er.bfd_multiplier,
    }
}

fn push_vnet_route_ok(s: &mut String) {
    let _ = writeln!(
        s,
        "# What may come from Azure (any path): VNet prefixes only.\n\
         function vnet_route_ok()\n\
         {{\n\
         \x20 if net.len = 0 then return false;          # Azure never sends a default; refuse one\n\
         \x20 if net ~ ONPREM_ANY then return false;     # our own prefixes coming back\n\
         \x20 if net ~ [ 169.254.0.0/16+ ] then return false; # link-local / APIPA BGP addresses\n\
         \x20 return true;\n\
         }}\n"
    );
}

fn push_expressroute_in(s: &mut String) {
    let _ = writeln!(
        s,
        "filter expressroute_in\n\
         {{\n\
         \x20 if !vnet_route_ok() then reject;\n\
         \x20 bgp_local_pref = 150;                      # ExpressRoute wins\n\
         \x20 accept;\n\
         }}\n"
    );
}

fn timers_block(t: &BgpTimers) -> String {
    format!(
        "  hold time {};\n  keepalive time {};\n  connect delay time {};\n  connect retry time {};\n  error wait time {}, {};\n",
        t.hold, t.keepalive, t.connect_delay, t.connect_retry, t.error_wait.0, t.error_wait.1
    )
}

fn push_expressroute(s: &mut String, er: &ExpressRoutePeer, local_asn: u32, timers: &str) {
    let _ = writeln!(
        s,
        "protocol bgp {EXPRESSROUTE_PROTOCOL} {{\n\
         \x20 description \"ExpressRoute private peering\";\n\
         \x20 local {er_local} as {local_asn};\n\
         \x20 neighbor {er_addr} as {er_asn};\n\
         \x20 direct;\n\
         \x20 bfd on;\n\
         {timers}\
         \x20 ipv4 {{\n\
         \x20   import filter expressroute_in;\n\
         \x20   export filter onprem_out;\n\
         \x20   next hop self;\n\
         \x20 }};\n\
         }}\n",
        er_local = er.local_address,
        er_addr = er.address,
        er_asn = er.asn,
    );
}

fn push_lan_session(
    s: &mut String,
    p: &LanPeer,
    description: &str,
    import: &str,
    export: &str,
    timers: &str,
) {
    let _ = writeln!(
        s,
        "protocol bgp {name} {{\n\
         \x20 description \"{description}\";\n\
         \x20 local {local} as {asn};\n\
         \x20 neighbor {addr} as {asn};\n\
         \x20 direct;\n\
         \x20 bfd on;\n\
         {timers}\
         \x20 ipv4 {{\n\
         \x20   import filter {import};\n\
         \x20   export filter {export};\n\
         \x20   next hop self;\n\
         \x20 }};\n\
         }}\n",
        name = p.protocol,
        local = p.local_address,
        asn = p.asn,
        addr = p.address,
    );
}

/// `proto = "a" || proto = "b"`: the routes learned over one of these sessions.
fn from_protocols<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("proto = \"{n}\"")).collect();
    if v.len() == 1 {
        v.concat()
    } else {
        format!("({})", v.join(" || "))
    }
}

impl ApplianceBird {
    /// Checks the description (it may come from a config file).
    pub fn validate(&self) -> Result<(), BirdError> {
        check_onprem_asn(self.local_asn)?;
        check_prefixes(&self.onprem_prefixes)?;
        check_timers(&self.timers)?;
        check_usable(&[self.router_id])?;
        if self.azure.is_empty() || self.azure.len() > MAX_AZURE_PEERS {
            return Err(BirdError::Peers(format!(
                "{} Azure peers: give 1 to {MAX_AZURE_PEERS} (one per tunnel)",
                self.azure.len()
            )));
        }
        let mut names = Names::default();
        for (i, az) in self.azure.iter().enumerate() {
            names.take(&az.protocol)?;
            check_ebgp("Azure", az.asn, self.local_asn)?;
            check_ifname(&az.interface)?;
            check_apipa(az.address)?;
            check_apipa(az.local_address)?;
            check_usable(&[az.address, az.local_address])?;
            check_ends(az.address, az.local_address)?;
            if az.multihop == 0 {
                return Err(BirdError::Timers("multihop TTL must be 1-255"));
            }
            for prev in &self.azure[..i] {
                if prev.address == az.address {
                    return Err(BirdError::Peers(format!(
                        "Azure peers {} and {} share the address {}: each gateway instance has \
                         its own",
                        prev.protocol, az.protocol, az.address
                    )));
                }
                if prev.interface == az.interface {
                    return Err(BirdError::Peers(format!(
                        "Azure peers {} and {} share the interface {}: each tunnel has its own",
                        prev.protocol, az.protocol, az.interface
                    )));
                }
            }
            if self.azure.iter().any(|o| o.address == az.local_address) {
                return Err(BirdError::Address(
                    "an on-prem BGP address is also an Azure peer's address",
                ));
            }
        }
        let tunnel_ifs: Vec<&str> = self.azure.iter().map(|a| a.interface.as_str()).collect();
        let mut foreign_ifs = tunnel_ifs.clone();
        if let Some(er) = &self.expressroute {
            check_expressroute(er, self.local_asn, &tunnel_ifs)?;
            foreign_ifs.push(&er.interface);
        }
        let mut peer_addrs: Vec<Ipv4Addr> = self.azure.iter().map(|a| a.address).collect();
        peer_addrs.extend(self.expressroute.as_ref().map(|e| e.address));
        check_lan(
            &self.lan,
            self.local_asn,
            &mut names,
            &foreign_ifs,
            &peer_addrs,
        )?;
        Ok(())
    }

    /// The Azure peers' ASN is normally [`AZURE_GATEWAY_ASN`]; a different one is allowed (a
    /// gateway configured with a custom ASN) but worth a warning.
    pub fn azure_asn_is_default(&self) -> bool {
        self.azure.iter().all(|a| a.asn == AZURE_GATEWAY_ASN)
    }

    /// Renders `bird.conf` (validating first).
    pub fn render(&self) -> Result<String, BirdError> {
        self.validate()?;
        let mut s = String::new();
        let t = timers_block(&self.timers);
        let title = match (self.lan.is_empty(), &self.expressroute) {
            (true, Some(_)) => "On-prem router: ExpressRoute with VPN failover (BIRD 2).",
            (true, None) => "On-prem router: BGP with Azure through the VPN (BIRD 2).",
            (false, _) => {
                "hybridgw appliance: BGP with Azure through its tunnels, iBGP with the on-prem router (BIRD 2)."
            }
        };
        let mut sessions = Vec::new();
        if let Some(er) = &self.expressroute {
            sessions.push(format!(
                "eBGP to the ExpressRoute edge {} (AS{}) over {}, with BFD",
                er.address, er.asn, er.interface
            ));
        }
        for az in &self.azure {
            sessions.push(format!(
                "eBGP to the Azure VPN gateway {} (AS{}) through the tunnel {}",
                az.address, az.asn, az.interface
            ));
        }
        for p in &self.lan {
            sessions.push(format!(
                "iBGP to the on-prem router {} over {}, with BFD",
                p.address, p.interface
            ));
        }
        push_header(&mut s, title, &sessions);
        push_prelude(&mut s, self.log, self.router_id, &self.onprem_prefixes);
        if self.lan.is_empty() {
            push_static_onprem(&mut s, &self.onprem_prefixes);
        }
        let import = match self.azure.as_slice() {
            [one] => format!("net = {}/32", one.address),
            all => format!(
                "net ~ [ {} ]",
                all.iter()
                    .map(|a| format!("{}/32", a.address))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let _ = writeln!(
            s,
            "# The kernel table. Exported: only BGP-learned routes whose next hop resolves (connected\n\
             # and static ones are there already, or must not be; BIRD would install a route whose\n\
             # next hop does not resolve as an `unreachable` route, dropping the traffic). Routes that\n\
             # BGP finds equal (local preference, AS path length, origin, ...) from several sessions\n\
             # become one multipath route (`merge paths`): ECMP over the tunnels. Imported (`learn`):\n\
             # only the host route to each Azure BGP address, which hybridgw installs through the\n\
             # tunnel while its Child SA is up. The Azure sessions are multihop, so the next hop of\n\
             # their routes resolves through that route: they are usable exactly while their tunnel\n\
             # is, not until the 180 s hold time runs out.\n\
             protocol kernel {{\n\
             \x20 learn;\n\
             \x20 merge paths on;\n\
             \x20 ipv4 {{\n\
             \x20   import where {import} && source = RTS_INHERIT;\n\
             \x20   export where source = RTS_BGP && dest != RTD_UNREACHABLE;\n\
             \x20 }};\n\
             }}\n"
        );
        let mut bfd = Vec::new();
        bfd.extend(self.expressroute.as_ref().map(er_bfd));
        bfd.extend(lan_bfd(&self.lan, "the on-prem router"));
        push_bfd(&mut s, &bfd);
        push_vnet_route_ok(&mut s);
        if self.expressroute.is_some() {
            push_expressroute_in(&mut s);
        }
        let why = if self.expressroute.is_some() {
            "the VPN is the backup"
        } else {
            "the same on every tunnel: ECMP"
        };
        let _ = writeln!(
            s,
            "filter vpn_in\n\
             {{\n\
             \x20 if !vnet_route_ok() then reject;\n\
             \x20 bgp_local_pref = 100;                      # {why}\n\
             \x20 accept;\n\
             }}\n"
        );
        if self.lan.is_empty() {
            let _ = writeln!(
                s,
                "# Every session advertises exactly the on-prem prefixes of `protocol static onprem`.\n\
                 filter onprem_out\n\
                 {{\n\
                 \x20 if proto = \"{ONPREM_PROTOCOL}\" && net ~ ONPREM then accept;\n\
                 \x20 reject;\n\
                 }}\n"
            );
        } else {
            let lan = from_protocols(self.lan.iter().map(|p| p.protocol.as_str()));
            let _ = writeln!(
                s,
                "# From the on-prem router: exactly the on-prem prefixes, nothing else.\n\
                 filter lan_in\n\
                 {{\n\
                 \x20 if net ~ ONPREM then accept;\n\
                 \x20 reject;\n\
                 }}\n\n\
                 # To Azure: exactly the on-prem prefixes learned from the on-prem router, so an appliance\n\
                 # cut off from the router (BFD) withdraws them and stops attracting Azure's traffic.\n\
                 filter onprem_out\n\
                 {{\n\
                 \x20 if dest = RTD_UNREACHABLE then reject;\n\
                 \x20 if {lan} && net ~ ONPREM then accept;\n\
                 \x20 reject;\n\
                 }}\n\n\
                 # To the on-prem router: the VNet routes this appliance can forward now. A route whose\n\
                 # next hop does not resolve (its tunnel is down) is withdrawn, not advertised into a\n\
                 # black hole (BIRD would advertise it, with this appliance as the next hop).\n\
                 filter vnet_to_lan\n\
                 {{\n\
                 \x20 if dest = RTD_UNREACHABLE then reject;\n\
                 \x20 if source = RTS_BGP && vnet_route_ok() then accept;\n\
                 \x20 reject;\n\
                 }}\n"
            );
        }
        if let Some(er) = &self.expressroute {
            push_expressroute(&mut s, er, self.local_asn, &t);
        }
        for az in &self.azure {
            let _ = writeln!(
                s,
                "protocol bgp {name} {{\n\
                 \x20 description \"Azure VPN gateway through the IPsec tunnel\";\n\
                 \x20 local {az_local} as {asn};\n\
                 \x20 neighbor {az_addr} as {az_asn};\n\
                 \x20 multihop {ttl};\n\
                 {t}\
                 \x20 ipv4 {{\n\
                 \x20   import filter vpn_in;\n\
                 \x20   export filter onprem_out;\n\
                 \x20   next hop self;\n\
                 \x20 }};\n\
                 }}\n",
                name = az.protocol,
                az_local = az.local_address,
                asn = self.local_asn,
                az_addr = az.address,
                az_asn = az.asn,
                ttl = az.multihop,
            );
        }
        for p in &self.lan {
            push_lan_session(
                &mut s,
                p,
                "the on-prem router over the LAN (iBGP)",
                "lan_in",
                "vnet_to_lan",
                &t,
            );
        }
        // One blank line between blocks, none at the end.
        s.truncate(s.trim_end().len());
        s.push('\n');
        Ok(s)
    }
}

impl From<&OnpremBird> for ApplianceBird {
    fn from(d: &OnpremBird) -> Self {
        ApplianceBird {
            router_id: d.router_id,
            local_asn: d.local_asn,
            onprem_prefixes: d.onprem_prefixes.clone(),
            azure: vec![d.azure.clone()],
            expressroute: Some(d.expressroute.clone()),
            lan: Vec::new(),
            timers: d.timers,
            log: d.log,
        }
    }
}

impl OnpremBird {
    /// Checks the description (it may come from a config file).
    pub fn validate(&self) -> Result<(), BirdError> {
        ApplianceBird::from(self).validate()
    }

    /// The Azure peer's ASN is normally [`AZURE_GATEWAY_ASN`]; a different one is allowed (a
    /// gateway configured with a custom ASN) but worth a warning.
    pub fn azure_asn_is_default(&self) -> bool {
        self.azure.asn == AZURE_GATEWAY_ASN
    }

    /// Renders `bird.conf` (validating first).
    pub fn render(&self) -> Result<String, BirdError> {
        ApplianceBird::from(self).render()
    }
}

impl RouterBird {
    /// Checks the description (it may come from a config file).
    pub fn validate(&self) -> Result<(), BirdError> {
        check_onprem_asn(self.local_asn)?;
        check_prefixes(&self.onprem_prefixes)?;
        check_timers(&self.timers)?;
        check_usable(&[self.router_id])?;
        if self.appliances.is_empty() {
            return Err(BirdError::Peers(
                "the router needs at least one appliance".into(),
            ));
        }
        let mut foreign_ifs = Vec::new();
        let mut foreign_addrs = Vec::new();
        if let Some(er) = &self.expressroute {
            check_expressroute(er, self.local_asn, &[])?;
            foreign_ifs.push(er.interface.as_str());
            foreign_addrs.push(er.address);
        }
        let mut names = Names::default();
        check_lan(
            &self.appliances,
            self.local_asn,
            &mut names,
            &foreign_ifs,
            &foreign_addrs,
        )
    }

    /// Renders `bird.conf` (validating first).
    pub fn render(&self) -> Result<String, BirdError> {
        self.validate()?;
        let mut s = String::new();
        let t = timers_block(&self.timers);
        let mut sessions = Vec::new();
        if let Some(er) = &self.expressroute {
            sessions.push(format!(
                "eBGP to the ExpressRoute edge {} (AS{}) over {}, with BFD",
                er.address, er.asn, er.interface
            ));
        }
        for p in &self.appliances {
            sessions.push(format!(
                "iBGP to the hybridgw appliance {} over {}, with BFD",
                p.address, p.interface
            ));
        }
        push_header(
            &mut s,
            "On-prem router of Azure's dual redundancy: ECMP over the hybridgw appliances (BIRD 2).",
            &sessions,
        );
        push_prelude(&mut s, self.log, self.router_id, &self.onprem_prefixes);
        push_static_onprem(&mut s, &self.onprem_prefixes);
        let _ = writeln!(
            s,
            "# The kernel table. Exported: only BGP-learned routes whose next hop resolves. The routes\n\
             # the appliances advertise are equal in BGP's eyes (local preference 100, Azure's AS path)\n\
             # and become one multipath route (`merge paths`): ECMP over the appliances. A route over\n\
             # ExpressRoute (local preference 150) wins over all of them and is not merged with them.\n\
             # Nothing is learned from the kernel: every session is direct.\n\
             protocol kernel {{\n\
             \x20 merge paths on;\n\
             \x20 ipv4 {{\n\
             \x20   import none;\n\
             \x20   export where source = RTS_BGP && dest != RTD_UNREACHABLE;\n\
             \x20 }};\n\
             }}\n"
        );
        let mut bfd = Vec::new();
        bfd.extend(self.expressroute.as_ref().map(er_bfd));
        bfd.extend(lan_bfd(&self.appliances, "the appliances"));
        push_bfd(&mut s, &bfd);
        push_vnet_route_ok(&mut s);
        if self.expressroute.is_some() {
            push_expressroute_in(&mut s);
        }
        let _ = writeln!(
            s,
            "# From the appliances (iBGP): the VNet routes they can forward now, with the local\n\
             # preference they set (100 for a tunnel, 150 for a circuit of their own).\n\
             filter appliance_in\n\
             {{\n\
             \x20 if !vnet_route_ok() then reject;\n\
             \x20 accept;\n\
             }}\n\n\
             # Every session advertises exactly the on-prem prefixes of `protocol static onprem`.\n\
             filter onprem_out\n\
             {{\n\
             \x20 if proto = \"{ONPREM_PROTOCOL}\" && net ~ ONPREM then accept;\n\
             \x20 reject;\n\
             }}\n"
        );
        if let Some(er) = &self.expressroute {
            push_expressroute(&mut s, er, self.local_asn, &t);
        }
        for p in &self.appliances {
            push_lan_session(
                &mut s,
                p,
                "hybridgw appliance over the LAN (iBGP)",
                "appliance_in",
                "onprem_out",
                &t,
            );
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        Ok(s)
    }
}

/// Checks that a dual-redundancy site's configurations fit together: one ASN and one list of
/// on-prem prefixes, distinct router IDs (iBGP refuses a peer with its own), every session of the
/// router matched by the appliance at its other end (addresses mirrored, the same BFD timers) and
/// the other way round, and no on-prem BGP address used by two appliances (Azure tells the
/// connections apart by it).
pub fn check_site(router: &RouterBird, appliances: &[&ApplianceBird]) -> Result<(), BirdError> {
    router.validate()?;
    let want: BTreeSet<_> = router.onprem_prefixes.iter().collect();
    let mut ids = BTreeSet::from([router.router_id]);
    let mut azure_locals = BTreeSet::new();
    for a in appliances {
        a.validate()?;
        if a.local_asn != router.local_asn {
            return Err(BirdError::Site(format!(
                "appliance {} has AS{}, the router AS{}: one on-prem ASN (iBGP)",
                a.router_id, a.local_asn, router.local_asn
            )));
        }
        if a.onprem_prefixes.iter().collect::<BTreeSet<_>>() != want {
            return Err(BirdError::Site(format!(
                "appliance {} lists other on-prem prefixes than the router",
                a.router_id
            )));
        }
        if !ids.insert(a.router_id) {
            return Err(BirdError::Site(format!(
                "router ID {} is used twice",
                a.router_id
            )));
        }
        // One appliance may use one BGP address on all its tunnels (Azure's local network
        // gateway has one BGP address per device); two appliances never share one.
        let mine: BTreeSet<Ipv4Addr> = a.azure.iter().map(|az| az.local_address).collect();
        for addr in mine {
            if !azure_locals.insert(addr) {
                return Err(BirdError::Site(format!(
                    "on-prem BGP address {addr} is used by two appliances"
                )));
            }
        }
        if a.lan.is_empty() {
            return Err(BirdError::Site(format!(
                "appliance {} has no LAN peer",
                a.router_id
            )));
        }
        for l in &a.lan {
            let mirrored = router.appliances.iter().any(|r| {
                r.address == l.local_address
                    && r.local_address == l.address
                    && r.interface_timers() == l.interface_timers()
            });
            if !mirrored {
                return Err(BirdError::Site(format!(
                    "appliance {}'s session to {} has no matching session on the router",
                    a.router_id, l.address
                )));
            }
        }
    }
    for r in &router.appliances {
        let found = appliances.iter().any(|a| {
            a.lan
                .iter()
                .any(|l| l.local_address == r.address && l.address == r.local_address)
        });
        if !found {
            return Err(BirdError::Site(format!(
                "the router's session {} to {} has no appliance at its other end",
                r.protocol, r.address
            )));
        }
    }
    Ok(())
}

impl LanPeer {
    fn interface_timers(&self) -> (u32, u8) {
        (self.bfd_interval_ms, self.bfd_multiplier)
    }
}

fn prefix(a: [u8; 4], len: u8) -> Ipv4Prefix {
    Ipv4Prefix::new(Ipv4Addr::from(a), len).expect("constant prefix")
}

fn example_prefixes() -> Vec<Ipv4Prefix> {
    vec![prefix([198, 18, 0, 0], 22), prefix([198, 18, 8, 0], 24)]
}

fn example_expressroute() -> ExpressRoutePeer {
    ExpressRoutePeer {
        address: Ipv4Addr::new(192, 0, 2, 18),
        asn: MSEE_ASN,
        local_address: Ipv4Addr::new(192, 0, 2, 17),
        interface: "er0".into(),
        bfd_interval_ms: 300,
        bfd_multiplier: 3,
    }
}

/// The description behind `appliance-config/bird/onprem-bird.conf` (a test keeps them identical).
pub fn example() -> OnpremBird {
    OnpremBird {
        router_id: Ipv4Addr::new(198, 18, 0, 1),
        local_asn: 65010,
        onprem_prefixes: example_prefixes(),
        azure: AzurePeer {
            protocol: protocol_name_for("azure-hub"),
            address: Ipv4Addr::new(169, 254, 21, 2),
            asn: AZURE_GATEWAY_ASN,
            local_address: Ipv4Addr::new(169, 254, 21, 1),
            interface: "azure-hub".into(),
            multihop: 2,
        },
        expressroute: example_expressroute(),
        timers: BgpTimers::default(),
        log: BirdLog::Syslog,
    }
}

/// The dual-redundancy LAN: 192.0.2.0/28 on `lan0`, the router at .1, the appliances at .2 and .3.
const HA_ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HA_LAN_IF: &str = "lan0";
const HA_BFD_MS: u32 = 300;
const HA_BFD_MULT: u8 = 3;

/// Appliance `n` (0 for A, 1 for B) of the dual-redundancy example: tunnels `azure` (to gateway
/// instance 0, 169.254.21.2) and `azure-2` (to instance 1, 169.254.22.2), one on-prem BGP address
/// on both (169.254.21.1 for A, 169.254.21.5 for B: each appliance is one Azure local network
/// gateway, which has one BGP address), iBGP to the router.
fn ha_appliance(n: u8) -> ApplianceBird {
    let own = [1u8, 5][usize::from(n.min(1))];
    let lan = Ipv4Addr::new(192, 0, 2, 2 + n);
    let azure = [("azure", 21u8), ("azure-2", 22u8)]
        .into_iter()
        .map(|(tun, third)| AzurePeer {
            protocol: protocol_name_for(tun),
            address: Ipv4Addr::new(169, 254, third, 2),
            asn: AZURE_GATEWAY_ASN,
            local_address: Ipv4Addr::new(169, 254, 21, own),
            interface: tun.into(),
            multihop: 2,
        })
        .collect();
    ApplianceBird {
        router_id: lan,
        local_asn: 65010,
        onprem_prefixes: example_prefixes(),
        azure,
        expressroute: None,
        lan: vec![LanPeer {
            protocol: "onprem_router".into(),
            address: HA_ROUTER_LAN,
            asn: 65010,
            local_address: lan,
            interface: HA_LAN_IF.into(),
            bfd_interval_ms: HA_BFD_MS,
            bfd_multiplier: HA_BFD_MULT,
        }],
        timers: BgpTimers::default(),
        log: BirdLog::Syslog,
    }
}

/// Appliance A of Azure's dual redundancy (`appliance-config/bird/ha-appliance-a.conf`).
pub fn ha_appliance_a() -> ApplianceBird {
    ha_appliance(0)
}

/// Appliance B of Azure's dual redundancy (`appliance-config/bird/ha-appliance-b.conf`).
pub fn ha_appliance_b() -> ApplianceBird {
    ha_appliance(1)
}

/// The on-prem router of Azure's dual redundancy (`appliance-config/bird/ha-router.conf`): both
/// appliances over `lan0`, and the ExpressRoute circuit of [`example`], preferred.
pub fn ha_router() -> RouterBird {
    let appliance = |name: &str, n: u8| LanPeer {
        protocol: name.into(),
        address: Ipv4Addr::new(192, 0, 2, 2 + n),
        asn: 65010,
        local_address: HA_ROUTER_LAN,
        interface: HA_LAN_IF.into(),
        bfd_interval_ms: HA_BFD_MS,
        bfd_multiplier: HA_BFD_MULT,
    };
    RouterBird {
        router_id: Ipv4Addr::new(198, 18, 0, 1),
        local_asn: 65010,
        onprem_prefixes: example_prefixes(),
        appliances: vec![appliance("appliance_a", 0), appliance("appliance_b", 1)],
        expressroute: Some(example_expressroute()),
        timers: BgpTimers::default(),
        log: BirdLog::Syslog,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_renders_with_the_required_pieces() {
        let c = example().render().unwrap();
        for needle in [
            "router id 198.18.0.1;",
            "define ONPREM = [ 198.18.0.0/22, 198.18.8.0/24 ];",
            "neighbor 169.254.21.2 as 65515;",
            "local 169.254.21.1 as 65010;",
            "neighbor 192.0.2.18 as 12076;",
            "protocol bgp azure_azure_hub {",
            "bfd on;",
            "min rx interval 300 ms;",
            "multiplier 3;",
            "bgp_local_pref = 150;",
            "bgp_local_pref = 100;",
            "if net.len = 0 then return false;",
            "hold time 180;",
            "keepalive time 60;",
            "multihop 2;",
            "merge paths on;",
            "import where net = 169.254.21.2/32 && source = RTS_INHERIT;",
            "export where source = RTS_BGP && dest != RTD_UNREACHABLE;",
            "protocol static onprem {",
        ] {
            assert!(c.contains(needle), "missing `{needle}` in\n{c}");
        }
        assert!(!c.contains("ONPREM = [ 198.18.0.0/22+"));
        assert!(!c.contains("vnet_to_lan"));
    }

    #[test]
    fn bad_descriptions_are_refused() {
        let mut d = example();
        d.local_asn = 65515;
        assert!(matches!(d.render(), Err(BirdError::Asn(_))));
        let mut d = example();
        d.expressroute.asn = d.local_asn;
        assert_eq!(d.validate(), Err(BirdError::SameAsn("ExpressRoute")));
        let mut d = example();
        d.azure.interface = "tun0\"; }".into();
        assert!(matches!(d.validate(), Err(BirdError::Interface(_))));
        let mut d = example();
        d.azure.address = Ipv4Addr::new(169, 254, 30, 1);
        assert!(matches!(d.validate(), Err(BirdError::Apipa(_))));
        let mut d = example();
        d.onprem_prefixes.push("0.0.0.0/0".parse().unwrap());
        assert!(matches!(d.validate(), Err(BirdError::Prefixes(_))));
        let mut d = example();
        d.onprem_prefixes.push("198.18.8.0/24".parse().unwrap());
        assert!(matches!(d.validate(), Err(BirdError::Prefixes(_))));
        let mut d = example();
        d.onprem_prefixes.clear();
        assert!(matches!(d.validate(), Err(BirdError::Prefixes(_))));
        let mut d = example();
        d.onprem_prefixes = (0..4001u32)
            .map(|i| Ipv4Prefix::new(Ipv4Addr::from(0xc612_0000 + (i << 8)), 24).unwrap())
            .collect();
        assert!(matches!(d.validate(), Err(BirdError::Prefixes(_))));
        let mut d = example();
        d.timers.keepalive = 61;
        assert!(matches!(d.validate(), Err(BirdError::Timers(_))));
        let mut d = example();
        d.timers.keepalive = u32::MAX;
        d.timers.hold = 65535;
        assert!(matches!(d.validate(), Err(BirdError::Timers(_))));
        let mut d = example();
        d.expressroute.bfd_interval_ms = 5;
        assert!(matches!(d.validate(), Err(BirdError::Timers(_))));
        let mut d = example();
        d.expressroute.local_address = d.expressroute.address;
        assert!(matches!(d.validate(), Err(BirdError::Address(_))));
        let mut d = example();
        d.azure.protocol = "router".into();
        assert!(matches!(d.validate(), Err(BirdError::Protocol { .. })));
        assert!(example().azure_asn_is_default());
    }

    #[test]
    fn protocol_names() {
        assert_eq!(protocol_name_for("azure"), "azure_azure");
        assert_eq!(protocol_name_for("azure-2"), "azure_azure_2");
        assert_eq!(protocol_name_for("Hub.West-1"), "azure_hub_west_1");
        assert_eq!(protocol_name_for("a b\"c;"), "azure_a_b_c_");
        assert_eq!(protocol_name_for("É1"), "azure__1");
        assert_eq!(protocol_name_for(""), "azure_");
        for ok in [
            "azure_vpn",
            "_x",
            "appliance_a",
            "peer",
            "a234567890123456789012345678901",
        ] {
            assert_eq!(check_protocol_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Azure",
            "a-b",
            "a b",
            "a\"",
            "a;b",
            "a\n",
            "router",
            "bgp",
            "table",
            "master4",
            "bgp_path",
            "a2345678901234567890123456789012x",
        ] {
            assert!(
                matches!(check_protocol_name(bad), Err(BirdError::Protocol { .. })),
                "{bad:?}"
            );
        }
        // Every protocol_name_for output of a short name is a valid name.
        for t in ["azure", "azure-2", "hgw-azure-aa-2", "x.y_z", "UPPER"] {
            assert_eq!(check_protocol_name(&protocol_name_for(t)), Ok(()), "{t}");
        }
        assert!(check_protocol_name(&protocol_name_for("a-very-long-connection-name-x")).is_err());
        // A hostile name is shown escaped and cut.
        let e = check_protocol_name(&format!("x\n{}", "y".repeat(100))).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n') && msg.len() < 120, "{msg}");
    }

    #[test]
    fn dual_redundancy_examples() {
        let a = ha_appliance_a();
        let b = ha_appliance_b();
        let r = ha_router();
        check_site(&r, &[&a, &b]).unwrap();
        let ca = a.render().unwrap();
        for needle in [
            "protocol bgp azure_azure {",
            "protocol bgp azure_azure_2 {",
            "local 169.254.21.1 as 65010;",
            "local 169.254.21.1 as 65010;\n  neighbor 169.254.22.2 as 65515;",
            "neighbor 169.254.21.2 as 65515;",
            "neighbor 169.254.22.2 as 65515;",
            "import where net ~ [ 169.254.21.2/32, 169.254.22.2/32 ] && source = RTS_INHERIT;",
            "merge paths on;",
            "protocol bgp onprem_router {",
            "neighbor 192.0.2.1 as 65010;",
            "if proto = \"onprem_router\" && net ~ ONPREM then accept;",
            "export filter vnet_to_lan;",
            "interface \"lan0\"",
        ] {
            assert!(ca.contains(needle), "missing `{needle}` in\n{ca}");
        }
        assert!(!ca.contains("protocol static"), "{ca}");
        assert!(!ca.contains("expressroute"), "{ca}");
        let cb = b.render().unwrap();
        assert!(cb.contains("local 169.254.21.5 as 65010;"), "{cb}");
        assert_eq!(
            cb.matches("local 169.254.21.5 as 65010;").count(),
            2,
            "{cb}"
        );
        assert!(cb.contains("router id 192.0.2.3;"), "{cb}");
        let cr = r.render().unwrap();
        for needle in [
            "protocol bgp appliance_a {",
            "protocol bgp appliance_b {",
            "neighbor 192.0.2.2 as 65010;",
            "neighbor 192.0.2.3 as 65010;",
            "protocol bgp expressroute {",
            "bgp_local_pref = 150;",
            "merge paths on;",
            "protocol static onprem {",
        ] {
            assert!(cr.contains(needle), "missing `{needle}` in\n{cr}");
        }
        // One BFD interface block per LAN interface, however many peers use it.
        assert_eq!(cr.matches("interface \"lan0\"").count(), 1, "{cr}");
    }

    #[test]
    fn bad_dual_redundancy_descriptions_are_refused() {
        let peers = |d: &ApplianceBird| matches!(d.validate(), Err(BirdError::Peers(_)));
        let mut d = ha_appliance_a();
        d.azure[1].address = d.azure[0].address;
        assert!(peers(&d));
        let mut d = ha_appliance_a();
        d.azure[1].interface = d.azure[0].interface.clone();
        assert!(peers(&d));
        let mut d = ha_appliance_a();
        d.azure[1].protocol = d.azure[0].protocol.clone();
        assert!(matches!(d.validate(), Err(BirdError::Protocol { .. })));
        let mut d = ha_appliance_a();
        d.azure[1].protocol = "onprem_out".into();
        assert!(matches!(d.validate(), Err(BirdError::Protocol { .. })));
        let mut d = ha_appliance_a();
        d.lan[0].protocol = d.azure[0].protocol.clone();
        assert!(matches!(d.validate(), Err(BirdError::Protocol { .. })));
        let mut d = ha_appliance_a();
        d.azure[1].local_address = Ipv4Addr::new(169, 254, 23, 1);
        assert_eq!(
            d.validate(),
            Err(BirdError::Apipa(Ipv4Addr::new(169, 254, 23, 1)))
        );
        let mut d = ha_appliance_a();
        d.azure.clear();
        assert!(peers(&d));
        let mut d = ha_appliance_a();
        d.azure = (0..17u8)
            .map(|i| AzurePeer {
                protocol: format!("azure_{i}"),
                address: Ipv4Addr::new(169, 254, 21, 100 + i),
                asn: 65515,
                local_address: Ipv4Addr::new(169, 254, 22, 100 + i),
                interface: format!("t{i}"),
                multihop: 2,
            })
            .collect();
        assert!(peers(&d));
        d.azure.truncate(16);
        assert_eq!(d.validate(), Ok(()));
        let mut d = ha_appliance_a();
        d.lan[0].asn = 65011;
        assert!(peers(&d));
        let mut d = ha_appliance_a();
        d.lan[0].interface = "azure".into();
        assert!(peers(&d));
        let mut d = ha_appliance_a();
        let mut second = d.lan[0].clone();
        second.protocol = "onprem_router_2".into();
        d.lan.push(second.clone());
        assert!(peers(&d), "same address twice");
        second.address = Ipv4Addr::new(192, 0, 2, 4);
        second.bfd_interval_ms = 100;
        d.lan[1] = second;
        assert!(peers(&d), "one interface, two BFD settings");
        d.lan[1].bfd_interval_ms = HA_BFD_MS;
        assert_eq!(d.validate(), Ok(()));
        let mut d = ha_appliance_a();
        d.lan[0].address = Ipv4Addr::new(169, 254, 21, 9);
        assert!(peers(&d));

        let mut r = ha_router();
        r.appliances.clear();
        assert!(matches!(r.validate(), Err(BirdError::Peers(_))));
        let mut r = ha_router();
        r.appliances[1].address = r.appliances[0].address;
        assert!(matches!(r.validate(), Err(BirdError::Peers(_))));
        let mut r = ha_router();
        r.appliances[0].interface = "er0".into();
        assert!(matches!(r.validate(), Err(BirdError::Peers(_))));
        let mut r = ha_router();
        r.expressroute = None;
        assert_eq!(r.validate(), Ok(()));
        assert!(!r.render().unwrap().contains("expressroute"));

        let (a, b, r) = (ha_appliance_a(), ha_appliance_b(), ha_router());
        let site = |r: &RouterBird, a: &ApplianceBird, b: &ApplianceBird| {
            matches!(check_site(r, &[a, b]), Err(BirdError::Site(_)))
        };
        let mut b2 = b.clone();
        b2.router_id = a.router_id;
        assert!(site(&r, &a, &b2));
        let mut b2 = b.clone();
        b2.azure[0].local_address = a.azure[0].local_address;
        assert!(site(&r, &a, &b2));
        let mut b2 = b.clone();
        b2.onprem_prefixes.pop();
        assert!(site(&r, &a, &b2));
        let mut b2 = b.clone();
        b2.lan[0].bfd_interval_ms = 100;
        assert!(site(&r, &a, &b2));
        assert!(matches!(check_site(&r, &[&a]), Err(BirdError::Site(_))));
    }
}
