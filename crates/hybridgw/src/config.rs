//! The appliance configuration: one TOML file, parsed with spans and validated into typed values;
//! every error names the file, line, column and key (RFC 7296 §2.15 PSK, RFC 4301 §4.4.1 selectors).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

use crate::proposals::{self, Proposal, Protocol};

/// Azure's IKE SA lifetime (fixed on Azure's side).
pub const DEFAULT_IKE_LIFETIME_S: u64 = 28_800;
/// Azure's default Child SA lifetime in seconds.
pub const DEFAULT_CHILD_LIFETIME_S: u64 = 27_000;
/// Azure's default Child SA lifetime in kilobytes.
pub const DEFAULT_CHILD_LIFETIME_KB: u64 = 102_400_000;
/// Microsoft's recommended tunnel MTU.
pub const DEFAULT_MTU: u16 = 1400;
/// Microsoft's recommended TCP MSS clamp.
pub const DEFAULT_MSS: u16 = 1350;
/// Azure's DPD timeout default.
pub const DEFAULT_DPD_TIMEOUT_S: u64 = 45;
/// Default metric of routes installed into a tunnel.
pub const DEFAULT_ROUTE_METRIC: u32 = 100;
/// Largest unfragmented IKE message: 1248 octets fit the IPv4 minimum MTU of 1280 with the IP,
/// UDP and non-ESP marker headers (RFC 7383 §2.5.1).
pub const DEFAULT_IKE_FRAGMENT_SIZE: u64 = 1248;
/// NAT keepalive interval (RFC 3948 §4 suggests 20 s).
pub const DEFAULT_NAT_KEEPALIVE_S: u64 = 20;
/// PSKs shorter than this draw a warning.
pub const PSK_WARN_LEN: usize = 20;

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: ", self.file.display())?;
        } else {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A pre-shared key. Zeroized on drop; `Debug` prints nothing secret.
#[derive(Clone)]
pub struct Psk(Zeroizing<Vec<u8>>);

impl Psk {
    pub fn new(bytes: Vec<u8>) -> Self {
        Psk(Zeroizing::new(bytes))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Constant-time comparison (configurations are compared on reload).
impl PartialEq for Psk {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_slice(), other.0.as_slice());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Psk {}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// An IP prefix (`198.18.0.0/24`) with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| {
            format!("`{s}` is not a prefix: expected ADDRESS/LENGTH such as 198.18.0.0/24")
        })?;
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{a}` is not an IP address (in prefix `{s}`)"))?;
        let len: u8 = l
            .trim()
            .parse()
            .map_err(|_| format!("`{l}` is not a prefix length (in prefix `{s}`)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!(
                "prefix length {len} is larger than {max} (in prefix `{s}`)"
            ));
        }
        let p = Prefix { addr, len };
        if p.network() != addr {
            return Err(format!(
                "`{s}` has host bits set: did you mean {}/{len}?",
                p.network()
            ));
        }
        Ok(p)
    }
}

impl Prefix {
    /// The address with host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        Prefix {
            addr: ip,
            len: self.len,
        }
        .network()
            == self.addr
            && ip.is_ipv4() == self.addr.is_ipv4()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A route into the tunnel: RRAS's "prefix:metric".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RoutePrefix {
    pub prefix: Prefix,
    pub metric: u32,
}

/// Who starts the IKE SA (Azure: Default / InitiatorOnly / ResponderOnly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Behaviour {
    Initiate,
    Respond,
    Both,
}

impl Behaviour {
    pub fn initiates(self) -> bool {
        matches!(self, Behaviour::Initiate | Behaviour::Both)
    }
    pub fn responds(self) -> bool {
        matches!(self, Behaviour::Respond | Behaviour::Both)
    }
}

/// Action when the peer stops answering DPD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DpdAction {
    Restart,
    Clear,
    Hold,
}

/// Uniqueness policy (strongSwan's `unique`): what a new IKE SA authenticated with the same
/// identities as an established one does to it. Two IKE SAs whose setups crossed (both sides
/// initiating at the same moment) are settled by a rule both sides apply instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unique {
    /// The new IKE SA replaces the older ones (they are deleted with DELETE).
    Replace,
    /// The established IKE SA stays; the new one is deleted.
    Keep,
    /// Both stay.
    Never,
}

/// A traffic selector pair (policy-based mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SelectorPair {
    pub local: Prefix,
    pub remote: Prefix,
}

/// How traffic enters the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Any-to-any selectors; remote prefixes routed into the TUN.
    RouteBased { remote_prefixes: Vec<RoutePrefix> },
    /// Configured selector pairs; their remote sides routed into the TUN.
    PolicyBased {
        selectors: Vec<SelectorPair>,
        metric: u32,
    },
}

impl Mode {
    /// Routes to install into the TUN while the tunnel is up.
    pub fn routes(&self) -> Vec<RoutePrefix> {
        match self {
            Mode::RouteBased { remote_prefixes } => remote_prefixes.clone(),
            Mode::PolicyBased { selectors, metric } => {
                let mut v: Vec<RoutePrefix> = Vec::new();
                for s in selectors {
                    if !v.iter().any(|r| r.prefix == s.remote) {
                        v.push(RoutePrefix {
                            prefix: s.remote,
                            metric: *metric,
                        });
                    }
                }
                v
            }
        }
    }
}

/// Lifetimes (RFC 7296 §2.8): local timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Lifetimes {
    /// Hard lifetimes: the SA is gone at this point.
    pub ike_seconds: u64,
    pub child_seconds: u64,
    pub child_kilobytes: u64,
    /// Soft lifetimes: the rekey starts here (minus jitter for the time-based ones); `None`
    /// means 90 % of the hard one.
    pub ike_rekey_seconds: Option<u64>,
    pub child_rekey_seconds: Option<u64>,
    pub child_rekey_kilobytes: Option<u64>,
}

/// Dead peer detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Dpd {
    pub delay_seconds: u64,
    pub timeout_seconds: u64,
    pub action: DpdAction,
}

/// Retry with exponential backoff, forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Retry {
    pub initial_seconds: u64,
    pub max_seconds: u64,
}

/// Default probe interval of the path monitor (Azure's BFD on private peering: 300 ms x 3).
pub const DEFAULT_FAILOVER_INTERVAL_MS: u64 = 300;
/// Default hold-down before traffic is handed back to a recovered primary path.
pub const DEFAULT_FAILOVER_HOLD_DOWN_S: u64 = 10;

/// ExpressRoute failover for a route-based connection (`[connection.failover]`): the tunnel
/// routes float at `backup_metric` under the ExpressRoute route and are forced on top (at
/// `override_metric`) while the path monitor declares the primary path dead.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failover {
    /// The ExpressRoute (primary) interface: probes leave through it, status names it.
    pub primary_interface: String,
    /// Source address of the probes (an address whose return path stays on the primary).
    pub probe_source: Option<std::net::Ipv4Addr>,
    /// The probe target across the primary path.
    pub probe_target: std::net::Ipv4Addr,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub down_after: u32,
    pub up_after: u32,
    pub hold_down_seconds: u64,
    /// Metric of the always-installed tunnel routes (worse than the ExpressRoute route).
    pub backup_metric: u32,
    /// Metric of the tunnel routes installed while the primary path is dead.
    pub override_metric: u32,
}

impl Failover {
    /// The path monitor's timers.
    pub fn monitor(&self) -> failover::monitor::MonitorConfig {
        failover::monitor::MonitorConfig {
            interval: std::time::Duration::from_millis(self.interval_ms),
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            down_after: self.down_after,
            up_after: self.up_after,
            hold_down: std::time::Duration::from_secs(self.hold_down_seconds),
        }
    }
}

/// BGP over the tunnel (`[connection.bgp]`): checked here, and Azure's peer address gets a host
/// route through the tunnel; BIRD runs the sessions. In an active-active pair each member has
/// its own Azure peer (one BGP address per gateway instance).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bgp {
    /// The on-prem ASN (never one Azure or IANA reserves).
    pub onprem_asn: u32,
    /// The Azure gateway's ASN (65515 unless changed on the gateway).
    pub azure_asn: u32,
    /// Azure's BGP peer address of this tunnel (reached through it).
    pub azure_peer: Option<IpAddr>,
    /// BIRD's control socket (`bird_socket`): where `drain` withdraws this tunnel's routes.
    pub bird_socket: Option<PathBuf>,
    /// The BIRD protocol of this tunnel's session with Azure (`failover::bird::protocol_name_for`
    /// of the tunnel's connection name, the name the shipped generator gives it).
    pub bird_protocol: String,
    /// The BIRD protocols `drain` disables before the tunnel goes (`drain_protocols`; default:
    /// the tunnel's own Azure session). The dual-redundancy appliance names its sessions to the
    /// on-prem router here: the router moves to the other appliance and Azure, which then hears
    /// the on-prem prefixes only from the other appliance, moves too.
    pub drain_protocols: Vec<String>,
}

/// A planned drain (`hybridgw drain NAME`, and on SIGTERM with `[drain] on_shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Drain {
    /// Drain every connection on SIGTERM before the DELETEs (default false: stop at once).
    pub on_shutdown: bool,
    /// Longest wait for the tunnels to go quiet before the DELETE.
    pub timeout: std::time::Duration,
    /// A tunnel that received nothing for this long is quiet.
    pub quiet: std::time::Duration,
    /// Added to the metric of a draining tunnel's static routes (so another path, if any, wins).
    pub metric_penalty: u32,
}

/// The Prometheus endpoint (`[metrics]`): off unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Metrics {
    /// Where `GET /metrics` is served (`listen`, address:port).
    pub listen: SocketAddr,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            on_shutdown: false,
            timeout: std::time::Duration::from_secs(30),
            quiet: std::time::Duration::from_millis(1000),
            metric_penalty: 1000,
        }
    }
}

/// Azure's custom APIPA BGP range is 169.254.21.0-169.254.22.255; any other link-local address
/// is refused by the gateway.
pub fn apipa_ok(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            !(o[0] == 169 && o[1] == 254) || o[2] == 21 || o[2] == 22
        }
        IpAddr::V6(_) => true,
    }
}

/// One validated connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub name: String,
    pub local_address: IpAddr,
    pub remote_address: IpAddr,
    pub local_id: String,
    pub remote_id: String,
    pub psk: Psk,
    /// Where the PSK came from (for messages; never the value).
    pub psk_source: String,
    pub ike_proposals: Vec<Proposal>,
    pub esp_proposals: Vec<Proposal>,
    /// True when the proposals came from an Azure custom policy.
    pub azure_custom_policy: bool,
    pub mode: Mode,
    pub tun_name: String,
    /// Optional address on the tunnel interface (e.g. an APIPA BGP address).
    pub tun_address: Option<Prefix>,
    pub local_prefixes: Vec<Prefix>,
    pub mtu: u16,
    pub mss_clamp: u16,
    pub behaviour: Behaviour,
    pub lifetimes: Lifetimes,
    pub dpd: Dpd,
    pub force_encap: bool,
    /// Policy-based: every selector pair its own Child SA (Azure's policy-based gateways, one SA
    /// per on-prem x VNet prefix pair); false puts all pairs in one Child SA.
    pub child_sa_per_pair: bool,
    /// What happens when a second IKE SA with the same identities comes up (strongSwan's
    /// `unique`).
    pub unique: Unique,
    /// NAT keepalive interval while ESP is UDP-encapsulated (RFC 3948 §4); `None` = off.
    pub nat_keepalive: Option<std::time::Duration>,
    /// IKE fragmentation (RFC 7383): announced and used when true.
    pub ike_fragmentation: bool,
    /// Largest IKE message sent unfragmented, in octets of the IKE message.
    pub ike_fragment_size: usize,
    pub retry: Retry,
    /// ExpressRoute failover of the remote prefixes (route-based only).
    pub failover: Option<Failover>,
    /// BGP settings (validated for `check-config`).
    pub bgp: Option<Bgp>,
    /// Set when this connection is one tunnel of an active-active pair (two Azure gateway
    /// instances named in one `remote_address = ["a", "b"]`).
    pub group: Option<Group>,
}

/// How the routes of an active-active pair use its two tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Multipath {
    /// One multipath route over every tunnel that is up: the kernel spreads flows by hash
    /// (`net.ipv4.fib_multipath_hash_policy` picks L3 or L4 hashing).
    Ecmp,
    /// The first tunnel that is up carries everything; the other stands by.
    Backup,
}

/// Membership of an active-active pair (`remote_address = ["a", "b"]`): the configured
/// connection becomes two, `NAME` towards the first address and `NAME-2` towards the second,
/// each with its own IKE SA and TUN; their routes are managed together.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Group {
    /// The configured connection name (the first member's name).
    pub name: String,
    /// 0 for the first address, 1 for the second (backup order).
    pub member: usize,
    pub multipath: Multipath,
}

impl Connection {
    /// The routes this connection installs through its tunnel while its Child SA is up: the
    /// remote prefixes (route-based) or the selectors' remote sides (policy-based), plus, with
    /// BGP, a host route to Azure's BGP peer address so the BGP daemon can reach it through the
    /// tunnel (what Azure's device guides configure).
    pub fn routes(&self) -> Vec<RoutePrefix> {
        let mut v = self.mode.routes();
        for r in self.own_routes() {
            if !v.iter().any(|x| x.prefix == r.prefix) {
                v.push(r);
            }
        }
        v
    }

    /// The routes that belong to this tunnel alone, even in an active-active pair: the host
    /// route to its own Azure BGP peer.
    pub fn own_routes(&self) -> Vec<RoutePrefix> {
        self.bgp
            .as_ref()
            .and_then(|b| b.azure_peer)
            .map(|peer| RoutePrefix {
                prefix: Prefix {
                    addr: peer,
                    len: if peer.is_ipv4() { 32 } else { 128 },
                },
                metric: DEFAULT_ROUTE_METRIC,
            })
            .into_iter()
            .collect()
    }

    /// The routes an active-active pair shares (every member routes them).
    pub fn shared_routes(&self) -> Vec<RoutePrefix> {
        let own = self.own_routes();
        self.mode
            .routes()
            .into_iter()
            .filter(|r| !own.iter().any(|o| o.prefix == r.prefix))
            .collect()
    }
}

/// Daemon-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// UDP port for IKE (500, RFC 7296 §2).
    pub ike_port: u16,
    /// UDP port for ESP-in-UDP and IKE after NAT-T (4500, RFC 3948).
    pub natt_port: u16,
    /// Data-plane worker threads (`[dataplane] workers`); `None`: one per core, at most 4.
    pub workers: Option<usize>,
    /// CPU-local packet steering while traffic is light (`[dataplane] cpu_affinity`, default
    /// false; see `dataplane::DataplaneConfig::cpu_affinity`).
    pub cpu_affinity: bool,
    /// Each UDP socket's send and receive buffer (`[dataplane] socket_buffer_kb`), bytes.
    pub socket_buffer: usize,
    /// Each TUN device's transmit queue, packets (`[dataplane] tun_queue_len`).
    pub tun_queue_len: u32,
    /// Planned drains (`[drain]`).
    pub drain: Drain,
    /// Stateful HA with a standby appliance (`[ha]`), if configured.
    pub ha: Option<Ha>,
    /// The Prometheus endpoint (`[metrics]`), if configured.
    pub metrics: Option<Metrics>,
}

/// Stateful HA (`[ha]`): this appliance and its partner share the public address through
/// keepalived (VRRP); the master replicates its SAs to the backup over a dedicated link, and
/// the backup continues the same SAs when keepalived makes it master (`hybridgw ha master`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ha {
    /// This appliance's id on the replication channel (`local_id`).
    pub local_id: u32,
    /// The partner's id (`peer_id`).
    pub peer_id: u32,
    /// Where replication is received (`listen`: an address of the dedicated link, port).
    pub listen: SocketAddr,
    /// The partner's `listen` (`peer`).
    pub peer: SocketAddr,
    /// The channel secret (`secret_file` or `secret_env`; at least 32 bytes).
    pub secret: Psk,
    /// Where the secret came from (never the value).
    pub secret_source: String,
    /// Sequence-number marks of every Child SA this often (`mark_interval_ms`).
    pub mark_interval: std::time::Duration,
    /// Outbound sequence numbers a takeover skips beyond the last mark (`seq_skip`): more
    /// than an SA sends in a few mark intervals.
    pub seq_skip: u64,
    /// A full snapshot this often (`snapshot_interval_ms`), for a backup that (re)started.
    pub snapshot_interval: std::time::Duration,
}

/// A validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub daemon: Daemon,
    pub connections: Vec<Connection>,
    /// Warnings to print (PSK file permissions, short PSKs, legacy algorithms).
    pub warnings: Vec<String>,
}

// ---------- raw, spanned form ----------

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "connection")]
    connections: Option<S<Vec<S<RawConnection>>>>,
    dataplane: Option<RawDataplane>,
    drain: Option<RawDrain>,
    ha: Option<S<RawHa>>,
    metrics: Option<S<RawMetrics>>,
}

/// The optional `[metrics]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<S<String>>,
}

/// The optional `[ha]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHa {
    local_id: Option<S<i64>>,
    peer_id: Option<S<i64>>,
    listen: Option<S<String>>,
    peer: Option<S<String>>,
    secret_file: Option<S<String>>,
    secret_env: Option<S<String>>,
    mark_interval_ms: Option<S<i64>>,
    seq_skip: Option<S<i64>>,
    snapshot_interval_ms: Option<S<i64>>,
}

/// `[metrics]`: `listen` is required, an address:port with a port.
fn metrics_table(
    loc: &Locator,
    m: &S<RawMetrics>,
    warnings: &mut Vec<String>,
) -> Result<Metrics, ConfigError> {
    let Some(raw) = &m.get_ref().listen else {
        return Err(loc.err(
            m.span(),
            "metrics.listen",
            "`listen` is required in [metrics] (for example \"127.0.0.1:9817\")",
        ));
    };
    let listen = raw.get_ref().trim().parse::<SocketAddr>().map_err(|_| {
        loc.err(
            raw.span(),
            "metrics.listen",
            format!("`{}` is not an address:port", raw.get_ref()),
        )
    })?;
    if listen.port() == 0 {
        return Err(loc.err(
            raw.span(),
            "metrics.listen",
            "`listen` needs a port (9817 is the usual one)",
        ));
    }
    if !listen.ip().is_loopback() {
        warnings.push(format!(
            "{}: key `metrics.listen`: {listen} is not a loopback address: the endpoint has no authentication, keep it on a management network",
            loc.file.display()
        ));
    }
    Ok(Metrics { listen })
}

/// The optional `[drain]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    on_shutdown: Option<bool>,
    timeout_seconds: Option<S<i64>>,
    quiet_ms: Option<S<i64>>,
    metric_penalty: Option<S<i64>>,
}

/// The optional `[dataplane]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    workers: Option<S<i64>>,
    cpu_affinity: Option<bool>,
    socket_buffer_kb: Option<S<i64>>,
    tun_queue_len: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn joined(&self) -> String {
        match self {
            OneOrMany::One(s) => s.clone(),
            OneOrMany::Many(v) => v.join(","),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    name: S<String>,
    local_address: S<String>,
    remote_address: S<OneOrMany>,
    active_active: Option<S<String>>,
    local_id: Option<S<String>>,
    remote_id: Option<S<String>>,
    psk: Option<S<String>>,
    psk_file: Option<S<String>>,
    psk_env: Option<S<String>>,
    ike_proposals: Option<S<OneOrMany>>,
    esp_proposals: Option<S<OneOrMany>>,
    azure_policy: Option<S<RawAzurePolicy>>,
    mode: Option<S<String>>,
    tun_name: Option<S<String>>,
    tun_address: Option<S<OneOrMany>>,
    remote_prefixes: Option<S<Vec<S<String>>>>,
    local_prefixes: Option<S<Vec<S<String>>>>,
    route_metric: Option<S<i64>>,
    selectors: Option<S<Vec<S<RawSelector>>>>,
    mtu: Option<S<i64>>,
    mss_clamp: Option<S<i64>>,
    behaviour: Option<S<String>>,
    lifetimes: Option<S<RawLifetimes>>,
    dpd: Option<S<RawDpd>>,
    force_encap: Option<S<bool>>,
    child_sa_per_pair: Option<S<bool>>,
    unique: Option<S<String>>,
    nat_keepalive_seconds: Option<S<i64>>,
    ike_fragmentation: Option<S<bool>>,
    ike_fragment_size: Option<S<i64>>,
    retry: Option<S<RawRetry>>,
    failover: Option<S<RawFailover>>,
    bgp: Option<S<RawBgp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    primary_interface: S<String>,
    probe_source: Option<S<String>>,
    probe_target: S<String>,
    interval_ms: Option<S<i64>>,
    timeout_ms: Option<S<i64>>,
    down_after: Option<S<i64>>,
    up_after: Option<S<i64>>,
    hold_down_seconds: Option<S<i64>>,
    backup_metric: Option<S<i64>>,
    override_metric: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBgp {
    onprem_asn: S<i64>,
    azure_asn: Option<S<i64>>,
    azure_peer: Option<S<OneOrMany>>,
    bird_socket: Option<S<String>>,
    drain_protocols: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzurePolicy {
    ike_encryption: S<String>,
    ike_integrity: S<String>,
    dh_group: S<String>,
    ipsec_encryption: S<String>,
    ipsec_integrity: S<String>,
    pfs_group: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    local: S<String>,
    remote: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifetimes {
    ike_seconds: Option<S<i64>>,
    child_seconds: Option<S<i64>>,
    child_kilobytes: Option<S<i64>>,
    ike_rekey_seconds: Option<S<i64>>,
    child_rekey_seconds: Option<S<i64>>,
    child_rekey_kilobytes: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDpd {
    delay_seconds: Option<S<i64>>,
    timeout_seconds: Option<S<i64>>,
    action: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial_seconds: Option<S<i64>>,
    max_seconds: Option<S<i64>>,
}

/// Turns byte spans into located errors.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
        (line, col)
    }
    fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Read and validate a configuration file. Reads PSK files and environment variables; touches no network.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    // The text may hold an inline PSK: zeroize it once parsed.
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read the configuration file: {e}"),
    })?);
    parse(path, &text, &|k| std::env::var(k).ok())
}

/// Validate configuration text. `env` looks up environment variables (for `psk_env`).
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let loc = Locator { file: path, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().to_string();
        let key = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field"))
            .unwrap_or("")
            .to_string();
        let mut ce = loc.err(span, key, msg);
        if e.span().is_none() {
            ce.line = 0;
        }
        ce
    })?;
    let mut warnings = Vec::new();

    let (workers, cpu_affinity) = match &raw.dataplane {
        None => (None, false),
        Some(d) => (
            d.workers
                .as_ref()
                .map(|w| int_in(&loc, "dataplane.workers", Some(w), 1, 1, 64).map(|n| n as usize))
                .transpose()?,
            d.cpu_affinity.unwrap_or(false),
        ),
    };
    let socket_buffer = int_in(
        &loc,
        "dataplane.socket_buffer_kb",
        raw.dataplane
            .as_ref()
            .and_then(|d| d.socket_buffer_kb.as_ref()),
        (dataplane::DEFAULT_SOCKET_BUFFER / 1024) as u64,
        64,
        1 << 20,
    )? as usize
        * 1024;
    let tun_queue_len = int_in(
        &loc,
        "dataplane.tun_queue_len",
        raw.dataplane
            .as_ref()
            .and_then(|d| d.tun_queue_len.as_ref()),
        u64::from(dataplane::DEFAULT_TUN_TX_QUEUE_LEN),
        16,
        100_000,
    )? as u32;
    let drain = match &raw.drain {
        None => Drain::default(),
        Some(d) => {
            let def = Drain::default();
            Drain {
                on_shutdown: d.on_shutdown.unwrap_or(def.on_shutdown),
                timeout: std::time::Duration::from_secs(int_in(
                    &loc,
                    "drain.timeout_seconds",
                    d.timeout_seconds.as_ref(),
                    def.timeout.as_secs(),
                    1,
                    3600,
                )?),
                quiet: std::time::Duration::from_millis(int_in(
                    &loc,
                    "drain.quiet_ms",
                    d.quiet_ms.as_ref(),
                    def.quiet.as_millis() as u64,
                    50,
                    600_000,
                )?),
                metric_penalty: int_in(
                    &loc,
                    "drain.metric_penalty",
                    d.metric_penalty.as_ref(),
                    def.metric_penalty.into(),
                    1,
                    1_000_000,
                )? as u32,
            }
        }
    };
    let mut daemon = Daemon {
        ike_port: 500,
        natt_port: 4500,
        workers,
        cpu_affinity,
        socket_buffer,
        tun_queue_len,
        drain,
        ha: None,
        metrics: match &raw.metrics {
            None => None,
            Some(m) => Some(metrics_table(&loc, m, &mut warnings)?),
        },
    };
    let Some(conns) = raw.connections else {
        return Err(loc.err(
            0..0,
            "connection",
            "no [[connection]] defined: nothing to do",
        ));
    };
    let conns_span = conns.span();
    let conns = conns.into_inner();
    if conns.is_empty() {
        return Err(loc.err(
            conns_span,
            "connection",
            "no [[connection]] defined: nothing to do",
        ));
    }
    let mut out: Vec<Connection> = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        let (conn, second) = connection(&loc, i, c, env, &mut warnings)?;
        out.push(conn);
        out.extend(second);
    }
    if let Some(h) = &raw.ha {
        daemon.ha = Some(ha_table(&loc, h, &out, env, &mut warnings)?);
    }
    Ok(Config {
        file: path.to_path_buf(),
        daemon,
        connections: out,
        warnings,
    })
}

/// Shortest HA channel secret (the `ha` crate's minimum).
pub const HA_SECRET_MIN: usize = ha::limits::MIN_SECRET_LEN;

fn ha_table(
    loc: &Locator,
    h: &S<RawHa>,
    conns: &[Connection],
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Ha, ConfigError> {
    let span = h.span();
    let h = h.get_ref();
    let need = |v: &Option<S<String>>, key: &str| -> Result<S<String>, ConfigError> {
        v.clone().ok_or_else(|| {
            loc.err(
                span.clone(),
                format!("ha.{key}"),
                format!("`{key}` is required in [ha]"),
            )
        })
    };
    let id = |v: &Option<S<i64>>, key: &str| -> Result<u32, ConfigError> {
        match v {
            None => Err(loc.err(
                span.clone(),
                format!("ha.{key}"),
                format!("`{key}` is required in [ha]"),
            )),
            Some(_) => int_in(
                loc,
                &format!("ha.{key}"),
                v.as_ref(),
                0,
                1,
                u64::from(u32::MAX),
            )
            .map(|n| n as u32),
        }
    };
    let local_id = id(&h.local_id, "local_id")?;
    let peer_id = id(&h.peer_id, "peer_id")?;
    if local_id == peer_id {
        let at = h.peer_id.as_ref().map(|s| s.span()).unwrap_or(span.clone());
        return Err(loc.err(
            at,
            "ha.peer_id",
            "`peer_id` must differ from `local_id`: each appliance has its own id",
        ));
    }
    let sock = |v: &S<String>, key: &str| -> Result<SocketAddr, ConfigError> {
        v.get_ref().trim().parse::<SocketAddr>().map_err(|_| {
            loc.err(
                v.span(),
                format!("ha.{key}"),
                format!("`{}` is not an address:port", v.get_ref()),
            )
        })
    };
    let listen_raw = need(&h.listen, "listen")?;
    let peer_raw = need(&h.peer, "peer")?;
    let listen = sock(&listen_raw, "listen")?;
    let peer = sock(&peer_raw, "peer")?;
    if listen.ip().is_unspecified() || listen.port() == 0 {
        return Err(loc.err(
            listen_raw.span(),
            "ha.listen",
            "`listen` needs the address of the dedicated HA link and a port (not a wildcard)",
        ));
    }
    if peer.ip().is_unspecified() || peer.port() == 0 || peer == listen {
        return Err(loc.err(
            peer_raw.span(),
            "ha.peer",
            "`peer` is the partner's `listen` address:port",
        ));
    }
    // Keys cross this channel: never on the underlay towards Azure.
    for c in conns {
        if c.local_address == listen.ip() || c.local_address == peer.ip() {
            let at = if c.local_address == listen.ip() {
                &listen_raw
            } else {
                &peer_raw
            };
            return Err(loc.err(at.span(), if c.local_address == listen.ip() { "ha.listen" } else { "ha.peer" },
                format!("replication carries keys: use a dedicated link, not connection `{}`'s local address {}", c.name, c.local_address)));
        }
        if c.remote_address == peer.ip() || c.remote_address == listen.ip() {
            return Err(loc.err(
                peer_raw.span(),
                "ha.peer",
                format!(
                    "replication carries keys: {} is connection `{}`'s remote gateway",
                    c.remote_address, c.name
                ),
            ));
        }
    }
    let (secret, secret_source, key) = match (&h.secret_file, &h.secret_env) {
        (Some(_), Some(e)) => {
            return Err(loc.err(
                e.span(),
                "ha.secret_env",
                "set only one of `secret_file` and `secret_env`",
            ));
        }
        (None, None) => {
            return Err(loc.err(
                span.clone(),
                "ha.secret_file",
                "the replication channel needs a secret: set `secret_file` or `secret_env`",
            ));
        }
        (Some(f), None) => {
            let rel = Path::new(f.get_ref().trim());
            let full = if rel.is_absolute() {
                rel.to_path_buf()
            } else {
                loc.file.parent().unwrap_or(Path::new(".")).join(rel)
            };
            let (mut data, md) = read_psk_file(&full).map_err(|e| {
                loc.err(
                    f.span(),
                    "ha.secret_file",
                    format!("cannot read the HA secret file {}: {e}", full.display()),
                )
            })?;
            use std::os::unix::fs::PermissionsExt;
            if md.permissions().mode() & 0o077 != 0 {
                warnings.push(format!(
                    "{}: key `ha.secret_file`: {} is readable by others (mode {:o}); run: chmod 600 {}",
                    loc.file.display(), full.display(), md.permissions().mode() & 0o777, full.display()
                ));
            }
            while data.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                data.pop();
            }
            (
                data,
                format!("file {}", full.display()),
                (f.span(), "ha.secret_file"),
            )
        }
        (None, Some(e)) => {
            let var = e.get_ref().trim();
            let v = env(var).ok_or_else(|| {
                loc.err(
                    e.span(),
                    "ha.secret_env",
                    format!("environment variable `{var}` is not set"),
                )
            })?;
            (
                Zeroizing::new(v.into_bytes()),
                format!("environment variable {var}"),
                (e.span(), "ha.secret_env"),
            )
        }
    };
    if secret.len() < HA_SECRET_MIN {
        return Err(loc.err(key.0, key.1, format!(
            "the HA secret has {} bytes; at least {HA_SECRET_MIN} are needed (e.g. `openssl rand -hex 32`)", secret.len())));
    }
    let mark_interval = std::time::Duration::from_millis(int_in(
        loc,
        "ha.mark_interval_ms",
        h.mark_interval_ms.as_ref(),
        20,
        1,
        1000,
    )?);
    let seq_skip = int_in(
        loc,
        "ha.seq_skip",
        h.seq_skip.as_ref(),
        1 << 20,
        1024,
        1 << 31,
    )?;
    let snapshot_interval = std::time::Duration::from_millis(int_in(
        loc,
        "ha.snapshot_interval_ms",
        h.snapshot_interval_ms.as_ref(),
        1000,
        100,
        60_000,
    )?);
    Ok(Ha {
        local_id,
        peer_id,
        listen,
        peer,
        secret: Psk(secret),
        secret_source,
        mark_interval,
        seq_skip,
        snapshot_interval,
    })
}

fn int_in(
    loc: &Locator,
    key: &str,
    v: Option<&S<i64>>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => {
            let n = *v.get_ref();
            u64::try_from(n)
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| loc.err(v.span(), key, format!("{n} is out of range ({min}-{max})")))
        }
    }
}

fn ip(loc: &Locator, key: &str, v: &S<String>) -> Result<IpAddr, ConfigError> {
    v.get_ref().trim().parse().map_err(|_| {
        loc.err(
            v.span(),
            key,
            format!("`{}` is not an IP address", v.get_ref()),
        )
    })
}

fn prefix(loc: &Locator, key: &str, v: &S<String>) -> Result<Prefix, ConfigError> {
    v.get_ref()
        .trim()
        .parse()
        .map_err(|m: String| loc.err(v.span(), key, m))
}

/// One `[[connection]]`; with two remote addresses (active-active) also its second member.
fn connection(
    loc: &Locator,
    i: usize,
    sc: S<RawConnection>,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(Connection, Option<Connection>), ConfigError> {
    let c = sc.into_inner();
    let name = c.name.get_ref().trim().to_string();
    let k = |f: &str| format!("connection[{i}].{f}");
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.')
    {
        return Err(loc.err(
            c.name.span(),
            k("name"),
            format!("`{name}` is not a valid name: use 1-64 letters, digits, '-', '_' or '.'"),
        ));
    }
    let k = |f: &str| format!("connection[{name}].{f}");
    let local_address = ip(loc, &k("local_address"), &c.local_address)?;
    let ra_span = c.remote_address.span();
    let remote_texts: Vec<String> = match c.remote_address.get_ref() {
        OneOrMany::One(a) => vec![a.clone()],
        OneOrMany::Many(v) => v.clone(),
    };
    if remote_texts.is_empty() || remote_texts.len() > 2 {
        return Err(loc.err(
            ra_span,
            k("remote_address"),
            "give one address, or two for an active-active Azure gateway",
        ));
    }
    let mut remotes: Vec<IpAddr> = Vec::new();
    for t in &remote_texts {
        let a: IpAddr = t.trim().parse().map_err(|_| {
            loc.err(
                ra_span.clone(),
                k("remote_address"),
                format!("`{t}` is not an IP address"),
            )
        })?;
        if local_address.is_ipv4() != a.is_ipv4() {
            return Err(loc.err(
                ra_span.clone(),
                k("remote_address"),
                "local and remote addresses are of different IP versions",
            ));
        }
        if local_address == a {
            return Err(loc.err(
                ra_span.clone(),
                k("remote_address"),
                "the remote address equals the local address",
            ));
        }
        if remotes.contains(&a) {
            return Err(loc.err(
                ra_span.clone(),
                k("remote_address"),
                format!("{a} is named twice"),
            ));
        }
        remotes.push(a);
    }
    let remote_address = remotes[0];
    let multipath = match &c.active_active {
        None => Multipath::Ecmp,
        Some(_) if remotes.len() < 2 => {
            let span = c.active_active.as_ref().map_or(0..0, |a| a.span());
            return Err(loc.err(
                span,
                k("active_active"),
                "active_active needs two remote addresses (remote_address = [\"a\", \"b\"])",
            ));
        }
        Some(m) => match m.get_ref().trim().to_ascii_lowercase().as_str() {
            "ecmp" => Multipath::Ecmp,
            "backup" => Multipath::Backup,
            other => {
                return Err(loc.err(
                    m.span(),
                    k("active_active"),
                    format!("unknown mode `{other}` (expected ecmp or backup)"),
                ));
            }
        },
    };
    let id = |v: &Option<S<String>>, key: &str, default: IpAddr| -> Result<String, ConfigError> {
        match v {
            None => Ok(default.to_string()),
            Some(s) if s.get_ref().trim().is_empty() => {
                Err(loc.err(s.span(), k(key), "empty identity"))
            }
            Some(s) => Ok(s.get_ref().trim().to_string()),
        }
    };
    let local_id = id(&c.local_id, "local_id", local_address)?;
    let remote_id = id(&c.remote_id, "remote_id", remote_address)?;

    // PSK: exactly one source.
    let sources = [c.psk.is_some(), c.psk_file.is_some(), c.psk_env.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if sources == 0 {
        return Err(loc.err(
            c.name.span(),
            k("psk"),
            "missing pre-shared key: set one of `psk`, `psk_file` or `psk_env`",
        ));
    }
    if sources > 1 {
        let span = c
            .psk_file
            .as_ref()
            .or(c.psk_env.as_ref())
            .map(|s| s.span())
            .unwrap_or(0..0);
        return Err(loc.err(
            span,
            k("psk"),
            "set only one of `psk`, `psk_file` and `psk_env`",
        ));
    }
    let (psk_bytes, psk_source, psk_key): (Zeroizing<Vec<u8>>, String, String) = if let Some(p) =
        &c.psk
    {
        (
            Zeroizing::new(p.get_ref().as_bytes().to_vec()),
            "inline".into(),
            k("psk"),
        )
    } else if let Some(pf) = &c.psk_file {
        let rel = Path::new(pf.get_ref().trim());
        let full = if rel.is_absolute() {
            rel.to_path_buf()
        } else {
            loc.file.parent().unwrap_or(Path::new(".")).join(rel)
        };
        let (data, md) = read_psk_file(&full).map_err(|e| {
            loc.err(
                pf.span(),
                k("psk_file"),
                format!("cannot read PSK file {}: {e}", full.display()),
            )
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            if md.permissions().mode() & 0o077 != 0 {
                warnings.push(format!(
                    "{}: key `{}`: PSK file {} is readable by others (mode {:o}); run: chmod 600 {}",
                    loc.file.display(),
                    k("psk_file"),
                    full.display(),
                    md.permissions().mode() & 0o777,
                    full.display()
                ));
            }
        }
        let mut data = data;
        while data.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            data.pop();
        }
        (data, format!("file {}", full.display()), k("psk_file"))
    } else if let Some(pe) = &c.psk_env {
        let var = pe.get_ref().trim();
        let v = env(var).ok_or_else(|| {
            loc.err(
                pe.span(),
                k("psk_env"),
                format!("environment variable `{var}` is not set"),
            )
        })?;
        (
            Zeroizing::new(v.into_bytes()),
            format!("environment variable {var}"),
            k("psk_env"),
        )
    } else {
        unreachable!("one PSK source is set (counted above)")
    };
    if psk_bytes.is_empty() {
        let span = c
            .psk
            .as_ref()
            .or(c.psk_file.as_ref())
            .or(c.psk_env.as_ref())
            .map(|s| s.span())
            .unwrap_or(0..0);
        return Err(loc.err(span, psk_key, "the pre-shared key is empty"));
    }
    if psk_bytes.len() < PSK_WARN_LEN {
        warnings.push(format!(
            "{}: key `{psk_key}`: the PSK of connection `{name}` is shorter than {PSK_WARN_LEN} characters; use a long random key",
            loc.file.display()
        ));
    }
    if c.psk.is_some() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(md) = std::fs::metadata(loc.file)
                && md.permissions().mode() & 0o077 != 0
            {
                warnings.push(format!(
                    "{}: key `{psk_key}`: inline PSK in a file readable by others (mode {:o}); chmod 600 it or use psk_file/psk_env",
                    loc.file.display(),
                    md.permissions().mode() & 0o777
                ));
            }
        }
    }

    // Proposals.
    let (ike_proposals, esp_proposals, azure_custom_policy) = if let Some(ap) = &c.azure_policy {
        if let Some(x) = c.ike_proposals.as_ref().or(c.esp_proposals.as_ref()) {
            return Err(loc.err(
                x.span(),
                k("azure_policy"),
                "use either `azure_policy` or `ike_proposals`/`esp_proposals`, not both",
            ));
        }
        let r = ap.get_ref();
        let (ike, esp) = proposals::from_azure_policy(
            r.ike_encryption.get_ref(),
            r.ike_integrity.get_ref(),
            r.dh_group.get_ref(),
            r.ipsec_encryption.get_ref(),
            r.ipsec_integrity.get_ref(),
            r.pfs_group.get_ref(),
        )
        .map_err(|(field, msg)| {
            let span = match field {
                "ike_encryption" => r.ike_encryption.span(),
                "ike_integrity" => r.ike_integrity.span(),
                "dh_group" => r.dh_group.span(),
                "ipsec_encryption" => r.ipsec_encryption.span(),
                "pfs_group" => r.pfs_group.span(),
                _ => r.ipsec_integrity.span(),
            };
            loc.err(span, k(&format!("azure_policy.{field}")), msg)
        })?;
        (vec![ike], vec![esp], true)
    } else {
        let parse = |v: &Option<S<OneOrMany>>,
                     protocol: Protocol,
                     key: &str|
         -> Result<Vec<Proposal>, ConfigError> {
            match v {
                None => Ok(proposals::azure_default(protocol)),
                Some(s) => proposals::parse_list(protocol, &s.get_ref().joined())
                    .map_err(|e| loc.err(s.span(), k(key), e)),
            }
        };
        (
            parse(&c.ike_proposals, Protocol::Ike, "ike_proposals")?,
            parse(&c.esp_proposals, Protocol::Esp, "esp_proposals")?,
            false,
        )
    };

    // Mode, TUN, prefixes.
    let metric = int_in(
        loc,
        &k("route_metric"),
        c.route_metric.as_ref(),
        DEFAULT_ROUTE_METRIC.into(),
        0,
        u32::MAX.into(),
    )? as u32;
    let mode_name = c
        .mode
        .as_ref()
        .map(|m| m.get_ref().trim().to_ascii_lowercase())
        .unwrap_or_else(|| "route-based".into());
    let mode = match mode_name.as_str() {
        "route-based" | "route" | "routebased" => {
            if let Some(s) = &c.selectors {
                return Err(loc.err(s.span(), k("selectors"), "`selectors` is for mode = \"policy-based\"; route-based tunnels use any-to-any selectors and `remote_prefixes`"));
            }
            // With BGP the prefixes come from the BGP daemon: only the route to Azure's BGP
            // address is ours (`Connection::routes`), so `remote_prefixes` may be left out.
            let bgp_peer = c
                .bgp
                .as_ref()
                .is_some_and(|b| b.get_ref().azure_peer.is_some());
            let none: Vec<S<String>> = Vec::new();
            let (rp_span, rp_list) = match &c.remote_prefixes {
                Some(rp) => (rp.span(), rp.get_ref()),
                None if bgp_peer => (0..0, &none),
                None => return Err(loc.err(c.name.span(), k("remote_prefixes"), "missing key: a route-based connection needs `remote_prefixes` (e.g. [\"198.18.2.0/24:100\"]), or [connection.bgp] with `azure_peer`")),
            };
            let mut v: Vec<RoutePrefix> = Vec::new();
            for (j, s) in rp_list.iter().enumerate() {
                let key = k(&format!("remote_prefixes[{j}]"));
                let text = s.get_ref().trim();
                let (p, m) = match text.rsplit_once(':') {
                    Some((p, m)) if !p.contains(':') || p.contains('/') && !m.contains('/') => {
                        let m: u32 = m.trim().parse().map_err(|_| loc.err(s.span(), &key, format!("`{m}` is not a route metric (in `{text}`, expected PREFIX or PREFIX:METRIC)")))?;
                        (p, m)
                    }
                    _ => (text, metric),
                };
                let prefix: Prefix = p
                    .trim()
                    .parse()
                    .map_err(|e: String| loc.err(s.span(), &key, e))?;
                if v.iter().any(|r| r.prefix == prefix) {
                    return Err(loc.err(s.span(), &key, format!("duplicate prefix {prefix}")));
                }
                if prefix.contains(local_address) || prefix.contains(remote_address) {
                    return Err(loc.err(s.span(), &key, format!("{prefix} contains a tunnel endpoint address: routing it into the tunnel would loop")));
                }
                v.push(RoutePrefix { prefix, metric: m });
            }
            if v.is_empty() && !bgp_peer {
                return Err(loc.err(
                    rp_span,
                    k("remote_prefixes"),
                    "empty: list at least one remote prefix (or set [connection.bgp] azure_peer)",
                ));
            }
            Mode::RouteBased { remote_prefixes: v }
        }
        "policy-based" | "policy" | "policybased" => {
            let Some(sel) = &c.selectors else {
                return Err(loc.err(c.name.span(), k("selectors"), "missing key: a policy-based connection needs `selectors` ([{ local = \"...\", remote = \"...\" }])"));
            };
            if let Some(rp) = &c.remote_prefixes {
                return Err(loc.err(rp.span(), k("remote_prefixes"), "`remote_prefixes` is for route-based mode; policy-based mode routes the remote side of each selector"));
            }
            let mut v = Vec::new();
            for (j, s) in sel.get_ref().iter().enumerate() {
                let r = s.get_ref();
                let local = prefix(loc, &k(&format!("selectors[{j}].local")), &r.local)?;
                let remote = prefix(loc, &k(&format!("selectors[{j}].remote")), &r.remote)?;
                if remote.contains(remote_address) || remote.contains(local_address) {
                    return Err(loc.err(r.remote.span(), k(&format!("selectors[{j}].remote")), format!("{remote} contains a tunnel endpoint address: routing it into the tunnel would loop")));
                }
                v.push(SelectorPair { local, remote });
            }
            if v.is_empty() {
                return Err(loc.err(
                    sel.span(),
                    k("selectors"),
                    "empty: list at least one selector pair",
                ));
            }
            Mode::PolicyBased {
                selectors: v,
                metric,
            }
        }
        other => {
            let span = c.mode.as_ref().map(|m| m.span()).unwrap_or(0..0);
            return Err(loc.err(
                span,
                k("mode"),
                format!("unknown mode `{other}` (expected \"route-based\" or \"policy-based\")"),
            ));
        }
    };
    let mut local_prefixes = Vec::new();
    if let Some(lp) = &c.local_prefixes {
        for (j, s) in lp.get_ref().iter().enumerate() {
            local_prefixes.push(prefix(loc, &k(&format!("local_prefixes[{j}]")), s)?);
        }
    }
    let tun_name = match &c.tun_name {
        None => {
            let mut n = format!("hgw-{name}");
            n.truncate(15);
            n
        }
        Some(t) => {
            let n = t.get_ref().trim();
            if n.is_empty()
                || n.len() > 15
                || !n
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.')
            {
                return Err(loc.err(t.span(), k("tun_name"), format!("`{n}` is not a valid interface name (1-15 characters: letters, digits, '-', '_', '.')")));
            }
            n.to_string()
        }
    };
    // One address, or with two remote addresses one per tunnel (a single one is then shared).
    let mut tun_addresses: Vec<Prefix> = Vec::new();
    let ta_span = c.tun_address.as_ref().map_or(0..0, |t| t.span());
    if let Some(s) = &c.tun_address {
        let texts: Vec<String> = match s.get_ref() {
            OneOrMany::One(a) => vec![a.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        if texts.is_empty() || texts.len() > remotes.len() {
            return Err(loc.err(
                s.span(),
                k("tun_address"),
                if remotes.len() == 1 {
                    "give one ADDRESS/LENGTH (a list of two goes with two remote addresses)"
                } else {
                    "give one ADDRESS/LENGTH for both tunnels, or one per remote address"
                },
            ));
        }
        for text in &texts {
            let text = text.trim();
            let (a, l) = text.split_once('/').unwrap_or((text, "32"));
            let addr: IpAddr = a.parse().map_err(|_| {
                loc.err(
                    s.span(),
                    k("tun_address"),
                    format!("`{text}` is not ADDRESS/LENGTH"),
                )
            })?;
            let len: u8 = l
                .parse()
                .ok()
                .filter(|l| *l <= if addr.is_ipv4() { 32 } else { 128 })
                .ok_or_else(|| {
                    loc.err(
                        s.span(),
                        k("tun_address"),
                        format!("bad prefix length in `{text}`"),
                    )
                })?;
            if !apipa_ok(addr) {
                return Err(loc.err(
                    s.span(),
                    k("tun_address"),
                    format!("{addr} is link-local but outside Azure's APIPA BGP range 169.254.21.0-169.254.22.255"),
                ));
            }
            if tun_addresses.iter().any(|p| p.addr == addr) {
                return Err(loc.err(
                    s.span(),
                    k("tun_address"),
                    format!("{addr} is named twice: give one address to share it"),
                ));
            }
            tun_addresses.push(Prefix { addr, len });
        }
    }
    let tun_address = tun_addresses.first().copied();
    let mtu = int_in(
        loc,
        &k("mtu"),
        c.mtu.as_ref(),
        DEFAULT_MTU.into(),
        576,
        9000,
    )? as u16;
    let mss_clamp = int_in(
        loc,
        &k("mss_clamp"),
        c.mss_clamp.as_ref(),
        DEFAULT_MSS.into(),
        0,
        65535,
    )? as u16;
    if mss_clamp != 0 && u32::from(mss_clamp) + 40 > u32::from(mtu) {
        let span = c
            .mss_clamp
            .as_ref()
            .map(|m| m.span())
            .unwrap_or(c.name.span());
        return Err(loc.err(
            span,
            k("mss_clamp"),
            format!("MSS {mss_clamp} + 40 bytes of headers exceeds the tunnel MTU {mtu}"),
        ));
    }
    let behaviour = match &c.behaviour {
        None => Behaviour::Both,
        Some(b) => match b.get_ref().trim().to_ascii_lowercase().as_str() {
            "both" | "default" => Behaviour::Both,
            "initiate" | "initiatoronly" | "initiator" => Behaviour::Initiate,
            "respond" | "responderonly" | "responder" => Behaviour::Respond,
            other => {
                return Err(loc.err(b.span(), k("behaviour"), format!("unknown behaviour `{other}` (expected initiate, respond, both; or Azure's InitiatorOnly, ResponderOnly, Default)")));
            }
        },
    };
    let lifetimes = match &c.lifetimes {
        None => Lifetimes {
            ike_seconds: DEFAULT_IKE_LIFETIME_S,
            child_seconds: DEFAULT_CHILD_LIFETIME_S,
            child_kilobytes: DEFAULT_CHILD_LIFETIME_KB,
            ike_rekey_seconds: None,
            child_rekey_seconds: None,
            child_rekey_kilobytes: None,
        },
        Some(l) => {
            let l = l.get_ref();
            let mut lt = Lifetimes {
                ike_seconds: int_in(
                    loc,
                    &k("lifetimes.ike_seconds"),
                    l.ike_seconds.as_ref(),
                    DEFAULT_IKE_LIFETIME_S,
                    60,
                    172_800,
                )?,
                child_seconds: int_in(
                    loc,
                    &k("lifetimes.child_seconds"),
                    l.child_seconds.as_ref(),
                    DEFAULT_CHILD_LIFETIME_S,
                    10,
                    172_800,
                )?,
                child_kilobytes: int_in(
                    loc,
                    &k("lifetimes.child_kilobytes"),
                    l.child_kilobytes.as_ref(),
                    DEFAULT_CHILD_LIFETIME_KB,
                    1024,
                    u64::MAX >> 11,
                )?,
                ike_rekey_seconds: None,
                child_rekey_seconds: None,
                child_rekey_kilobytes: None,
            };
            // A soft lifetime must come before its hard one (RFC 4301 §4.4.2.1).
            let soft =
                |key: &str, v: Option<&S<i64>>, hard: u64| -> Result<Option<u64>, ConfigError> {
                    let Some(v) = v else { return Ok(None) };
                    let n = int_in(
                        loc,
                        &k(&format!("lifetimes.{key}")),
                        Some(v),
                        0,
                        1,
                        hard.saturating_sub(1).max(1),
                    )?;
                    if n >= hard {
                        return Err(loc.err(
                            v.span(),
                            k(&format!("lifetimes.{key}")),
                            format!("{n} is not below the hard lifetime {hard}"),
                        ));
                    }
                    Ok(Some(n))
                };
            lt.ike_rekey_seconds = soft(
                "ike_rekey_seconds",
                l.ike_rekey_seconds.as_ref(),
                lt.ike_seconds,
            )?;
            lt.child_rekey_seconds = soft(
                "child_rekey_seconds",
                l.child_rekey_seconds.as_ref(),
                lt.child_seconds,
            )?;
            lt.child_rekey_kilobytes = soft(
                "child_rekey_kilobytes",
                l.child_rekey_kilobytes.as_ref(),
                lt.child_kilobytes,
            )?;
            lt
        }
    };
    let dpd =
        match &c.dpd {
            None => Dpd {
                delay_seconds: 30,
                timeout_seconds: DEFAULT_DPD_TIMEOUT_S,
                action: DpdAction::Restart,
            },
            Some(d) => {
                let d = d.get_ref();
                Dpd {
                    delay_seconds: int_in(
                        loc,
                        &k("dpd.delay_seconds"),
                        d.delay_seconds.as_ref(),
                        30,
                        1,
                        3600,
                    )?,
                    timeout_seconds: int_in(
                        loc,
                        &k("dpd.timeout_seconds"),
                        d.timeout_seconds.as_ref(),
                        DEFAULT_DPD_TIMEOUT_S,
                        9,
                        3600,
                    )?,
                    action: match &d.action {
                        None => DpdAction::Restart,
                        Some(a) => match a.get_ref().trim().to_ascii_lowercase().as_str() {
                            "restart" => DpdAction::Restart,
                            "clear" => DpdAction::Clear,
                            "hold" | "trap" => DpdAction::Hold,
                            other => return Err(loc.err(
                                a.span(),
                                k("dpd.action"),
                                format!(
                                    "unknown DPD action `{other}` (expected restart, clear or hold)"
                                ),
                            )),
                        },
                    },
                }
            }
        };
    let force_encap = c.force_encap.as_ref().map(|b| *b.get_ref()).unwrap_or(true);
    let child_sa_per_pair = c
        .child_sa_per_pair
        .as_ref()
        .map(|b| *b.get_ref())
        .unwrap_or(true);
    let unique = match &c.unique {
        None => Unique::Replace,
        Some(u) => match u.get_ref().trim().to_ascii_lowercase().as_str() {
            "replace" => Unique::Replace,
            "keep" => Unique::Keep,
            "never" | "no" => Unique::Never,
            other => {
                return Err(loc.err(
                    u.span(),
                    k("unique"),
                    format!(
                        "unknown uniqueness policy `{other}` (expected replace, keep or never)"
                    ),
                ));
            }
        },
    };
    let nat_keepalive = match int_in(
        loc,
        &k("nat_keepalive_seconds"),
        c.nat_keepalive_seconds.as_ref(),
        DEFAULT_NAT_KEEPALIVE_S,
        0,
        3600,
    )? {
        0 => None,
        n => Some(std::time::Duration::from_secs(n)),
    };
    let ike_fragmentation = c
        .ike_fragmentation
        .as_ref()
        .map(|b| *b.get_ref())
        .unwrap_or(true);
    let ike_fragment_size = int_in(
        loc,
        &k("ike_fragment_size"),
        c.ike_fragment_size.as_ref(),
        DEFAULT_IKE_FRAGMENT_SIZE,
        256,
        65_000,
    )? as usize;
    let retry = match &c.retry {
        None => Retry {
            initial_seconds: 1,
            max_seconds: 60,
        },
        Some(r) => {
            let r = r.get_ref();
            let initial = int_in(
                loc,
                &k("retry.initial_seconds"),
                r.initial_seconds.as_ref(),
                1,
                1,
                3600,
            )?;
            let max = int_in(
                loc,
                &k("retry.max_seconds"),
                r.max_seconds.as_ref(),
                60,
                1,
                86_400,
            )?;
            if max < initial {
                let span = r.max_seconds.as_ref().map(|m| m.span()).unwrap_or(0..0);
                return Err(loc.err(
                    span,
                    k("retry.max_seconds"),
                    "smaller than retry.initial_seconds",
                ));
            }
            Retry {
                initial_seconds: initial,
                max_seconds: max,
            }
        }
    };
    let failover = match &c.failover {
        None => None,
        Some(f) => Some(failover_section(loc, &k, f, &mode, &tun_name)?),
    };
    let (bgp, peers) = match &c.bgp {
        None => (None, Vec::new()),
        Some(b) => {
            let (bgp, peers) = bgp_section(loc, &k, b, &name, remotes.len())?;
            for p in &peers {
                if tun_addresses.iter().any(|m| m.addr == *p) {
                    let span = b
                        .get_ref()
                        .azure_peer
                        .as_ref()
                        .map_or(b.span(), |x| x.span());
                    return Err(loc.err(
                        span,
                        k("bgp.azure_peer"),
                        format!("{p} is also this side's tun_address: the two ends of a BGP session need two addresses"),
                    ));
                }
            }
            (Some(bgp), peers)
        }
    };
    let active_active = remotes.get(1).copied();
    if active_active.is_some() {
        let clash = [
            (failover.is_some(), "failover"),
            (!matches!(mode, Mode::RouteBased { .. }), "mode"),
        ];
        if let Some((_, key)) = clash.iter().find(|(b, _)| *b) {
            return Err(loc.err(
                ra_span,
                k("remote_address"),
                format!(
                    "two remote addresses (active-active) work with route-based tunnels (static routes or [connection.bgp]); `{key}` cannot be combined with them yet"
                ),
            ));
        }
    } else if tun_addresses.len() > 1 {
        return Err(loc.err(
            ta_span,
            k("tun_address"),
            "two tunnel addresses need two remote addresses (active-active)",
        ));
    }
    let group = active_active.map(|_| Group {
        name: name.clone(),
        member: 0,
        multipath,
    });
    let remote_id_explicit = c.remote_id.is_some();
    let bgp_drain_explicit = c
        .bgp
        .as_ref()
        .is_some_and(|b| b.get_ref().drain_protocols.is_some());
    let first = Connection {
        name: name.clone(),
        local_address,
        remote_address,
        local_id,
        remote_id,
        psk: Psk(psk_bytes),
        psk_source,
        ike_proposals,
        esp_proposals,
        azure_custom_policy,
        mode,
        tun_name,
        tun_address,
        local_prefixes,
        mtu,
        mss_clamp,
        behaviour,
        lifetimes,
        dpd,
        force_encap,
        child_sa_per_pair,
        unique,
        nat_keepalive,
        ike_fragmentation,
        ike_fragment_size,
        retry,
        failover,
        bgp,
        group,
    };
    let second = match active_active {
        None => None,
        Some(addr) => {
            let name2 = format!("{}-2", first.name);
            if name2.len() > 64 {
                return Err(loc.err(
                    c.name.span(),
                    k("name"),
                    "too long for an active-active pair (NAME-2 must fit in 64 characters)",
                ));
            }
            let mut tun2 = first.tun_name.clone();
            tun2.truncate(13);
            tun2.push_str("-2");
            let mut b = first.clone();
            b.name = name2;
            b.remote_address = addr;
            if !remote_id_explicit {
                b.remote_id = addr.to_string();
            }
            b.tun_name = tun2;
            if let Some(t) = tun_addresses.get(1) {
                b.tun_address = Some(*t);
            }
            if let Some(bgp) = &mut b.bgp {
                bgp.azure_peer = peers.get(1).copied();
                bgp.bird_protocol = bird_protocol_for(&b.name);
                if !bgp_drain_explicit {
                    bgp.drain_protocols = vec![bgp.bird_protocol.clone()];
                }
            }
            b.group = Some(Group {
                name: first.name.clone(),
                member: 1,
                multipath,
            });
            Some(b)
        }
    };
    Ok((first, second))
}

/// Longest PSK file accepted: a PSK is a line of text, 4 KiB is far beyond any real one.
const MAX_PSK_FILE: u64 = 4096;

/// Reads a PSK file that must be a small regular file: opened without blocking (a FIFO would
/// otherwise hang start-up until a writer appears), checked on the opened descriptor (no race
/// with a swapped path), and read at most `MAX_PSK_FILE` bytes (`/dev/zero` never ends).
fn read_psk_file(full: &Path) -> std::io::Result<(Zeroizing<Vec<u8>>, std::fs::Metadata)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(full)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut data = Zeroizing::new(Vec::new());
    f.take(MAX_PSK_FILE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_PSK_FILE {
        return Err(std::io::Error::other(format!(
            "longer than {MAX_PSK_FILE} bytes: not a PSK"
        )));
    }
    Ok((data, md))
}

fn ifname_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.')
        && n != "."
        && n != ".."
}

fn ipv4(loc: &Locator, key: &str, v: &S<String>) -> Result<std::net::Ipv4Addr, ConfigError> {
    v.get_ref().trim().parse().map_err(|_| {
        loc.err(
            v.span(),
            key,
            format!("`{}` is not an IPv4 address", v.get_ref()),
        )
    })
}

fn failover_section(
    loc: &Locator,
    k: &dyn Fn(&str) -> String,
    sf: &S<RawFailover>,
    mode: &Mode,
    tun_name: &str,
) -> Result<Failover, ConfigError> {
    let f = sf.get_ref();
    let Mode::RouteBased { remote_prefixes } = mode else {
        return Err(loc.err(
            sf.span(),
            k("failover"),
            "failover needs mode = \"route-based\" (the remote prefixes float through the TUN)",
        ));
    };
    if let Some(r) = remote_prefixes.iter().find(|r| !r.prefix.addr.is_ipv4()) {
        return Err(loc.err(
            sf.span(),
            k("failover"),
            format!("failover handles IPv4 prefixes only ({} is IPv6)", r.prefix),
        ));
    }
    let pi = f.primary_interface.get_ref().trim();
    if !ifname_ok(pi) {
        return Err(loc.err(
            f.primary_interface.span(),
            k("failover.primary_interface"),
            format!("`{pi}` is not a valid interface name (1-15 characters: letters, digits, '-', '_', '.')"),
        ));
    }
    if pi == tun_name {
        return Err(loc.err(
            f.primary_interface.span(),
            k("failover.primary_interface"),
            format!("`{pi}` is the tunnel's own interface: name the ExpressRoute interface"),
        ));
    }
    let probe_target = ipv4(loc, &k("failover.probe_target"), &f.probe_target)?;
    if probe_target.is_unspecified() || probe_target.is_broadcast() || probe_target.is_multicast() {
        return Err(loc.err(
            f.probe_target.span(),
            k("failover.probe_target"),
            format!(
                "{probe_target} cannot be probed: use a unicast address across the primary path"
            ),
        ));
    }
    let probe_source = match &f.probe_source {
        None => None,
        Some(s) => {
            let a = ipv4(loc, &k("failover.probe_source"), s)?;
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
                return Err(loc.err(
                    s.span(),
                    k("failover.probe_source"),
                    format!("{a} is not a unicast address"),
                ));
            }
            Some(a)
        }
    };
    let interval_ms = int_in(
        loc,
        &k("failover.interval_ms"),
        f.interval_ms.as_ref(),
        DEFAULT_FAILOVER_INTERVAL_MS,
        10,
        60_000,
    )?;
    let timeout_ms = int_in(
        loc,
        &k("failover.timeout_ms"),
        f.timeout_ms.as_ref(),
        interval_ms,
        1,
        60_000,
    )?;
    if timeout_ms > interval_ms {
        let span = f.timeout_ms.as_ref().map(|t| t.span()).unwrap_or(0..0);
        return Err(loc.err(
            span,
            k("failover.timeout_ms"),
            format!(
                "{timeout_ms} ms is longer than interval_ms ({interval_ms} ms): one probe at a time"
            ),
        ));
    }
    let down_after = int_in(
        loc,
        &k("failover.down_after"),
        f.down_after.as_ref(),
        3,
        1,
        255,
    )? as u32;
    let up_after = int_in(loc, &k("failover.up_after"), f.up_after.as_ref(), 3, 1, 255)? as u32;
    let hold_down_seconds = int_in(
        loc,
        &k("failover.hold_down_seconds"),
        f.hold_down_seconds.as_ref(),
        DEFAULT_FAILOVER_HOLD_DOWN_S,
        0,
        3600,
    )?;
    let override_metric = int_in(
        loc,
        &k("failover.override_metric"),
        f.override_metric.as_ref(),
        failover::routes::DEFAULT_OVERRIDE_METRIC.into(),
        0,
        u32::MAX.into(),
    )? as u32;
    let backup_metric = int_in(
        loc,
        &k("failover.backup_metric"),
        f.backup_metric.as_ref(),
        failover::routes::DEFAULT_BACKUP_METRIC.into(),
        1,
        u32::MAX.into(),
    )? as u32;
    if backup_metric <= override_metric {
        let span = f
            .backup_metric
            .as_ref()
            .or(f.override_metric.as_ref())
            .map(|m| m.span())
            .unwrap_or(sf.span());
        return Err(loc.err(
            span,
            k("failover.backup_metric"),
            format!(
                "{backup_metric} must be worse (higher) than override_metric {override_metric}"
            ),
        ));
    }
    Ok(Failover {
        primary_interface: pi.to_string(),
        probe_source,
        probe_target,
        interval_ms,
        timeout_ms,
        down_after,
        up_after,
        hold_down_seconds,
        backup_metric,
        override_metric,
    })
}

/// The BIRD protocol name of a tunnel's Azure session: what the shipped generator calls it.
pub fn bird_protocol_for(conn: &str) -> String {
    failover::bird::protocol_name_for(conn)
}

/// `[connection.bgp]`; the second value is Azure's peer address of each tunnel (one per remote
/// address, or none).
fn bgp_section(
    loc: &Locator,
    k: &dyn Fn(&str) -> String,
    sb: &S<RawBgp>,
    conn: &str,
    tunnels: usize,
) -> Result<(Bgp, Vec<IpAddr>), ConfigError> {
    let b = sb.get_ref();
    let asn = |v: &S<i64>, key: &str| -> Result<u32, ConfigError> {
        u32::try_from(*v.get_ref()).map_err(|_| {
            loc.err(
                v.span(),
                k(key),
                format!("{} is not an ASN (1-4294967294)", v.get_ref()),
            )
        })
    };
    let onprem_asn = asn(&b.onprem_asn, "bgp.onprem_asn")?;
    failover::asn::check_onprem_asn(onprem_asn).map_err(|e| {
        loc.err(
            b.onprem_asn.span(),
            k("bgp.onprem_asn"),
            format!(
                "{e}: choose a private ASN such as 65010 (64512-65534, not 65515 or 65517-65520)"
            ),
        )
    })?;
    let azure_asn = match &b.azure_asn {
        None => failover::asn::AZURE_GATEWAY_ASN,
        Some(v) => {
            let a = asn(v, "bgp.azure_asn")?;
            if a == 0 || a == u32::MAX {
                return Err(loc.err(
                    v.span(),
                    k("bgp.azure_asn"),
                    format!("{a} is not a usable ASN"),
                ));
            }
            a
        }
    };
    if azure_asn == onprem_asn {
        let span = b
            .azure_asn
            .as_ref()
            .map(|v| v.span())
            .unwrap_or(b.onprem_asn.span());
        return Err(loc.err(
            span,
            k("bgp.onprem_asn"),
            format!("the on-prem ASN equals the Azure ASN {azure_asn}: eBGP needs two ASNs"),
        ));
    }
    let mut peers: Vec<IpAddr> = Vec::new();
    if let Some(p) = &b.azure_peer {
        let key = k("bgp.azure_peer");
        let texts: Vec<String> = match p.get_ref() {
            OneOrMany::One(a) => vec![a.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        if texts.len() != tunnels {
            return Err(loc.err(
                p.span(),
                &key,
                if tunnels == 2 {
                    format!("two remote addresses but {} BGP peer address(es): an active-active gateway has one BGP address per instance, give both (azure_peer = [\"169.254.21.2\", \"169.254.22.2\"])", texts.len())
                } else {
                    format!("one remote address but {} BGP peer addresses: give one", texts.len())
                },
            ));
        }
        for t in &texts {
            let a: IpAddr = t
                .trim()
                .parse()
                .map_err(|_| loc.err(p.span(), &key, format!("`{t}` is not an IP address")))?;
            if !apipa_ok(a) {
                return Err(loc.err(
                    p.span(),
                    &key,
                    format!("{a} is outside Azure's APIPA BGP range 169.254.21.0-169.254.22.255 (or use the gateway's GatewaySubnet address)"),
                ));
            }
            if a.is_unspecified()
                || a.is_multicast()
                || a == IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
            {
                return Err(loc.err(p.span(), &key, format!("{a} cannot be a BGP peer")));
            }
            if peers.contains(&a) {
                return Err(loc.err(
                    p.span(),
                    &key,
                    format!(
                        "{a} is the BGP address of both tunnels: each Azure instance has its own"
                    ),
                ));
            }
            peers.push(a);
        }
    } else if tunnels == 2 {
        return Err(loc.err(
            sb.span(),
            k("bgp.azure_peer"),
            "missing key: with two remote addresses give each Azure instance's BGP address (azure_peer = [\"169.254.21.2\", \"169.254.22.2\"])",
        ));
    }
    let bird_socket = match &b.bird_socket {
        None => None,
        Some(p) => {
            let t = p.get_ref().trim();
            if t.is_empty() || !t.starts_with('/') {
                return Err(loc.err(
                    p.span(),
                    k("bgp.bird_socket"),
                    "give the absolute path of BIRD's control socket (e.g. /run/bird/bird.ctl)",
                ));
            }
            Some(PathBuf::from(t))
        }
    };
    let bird_protocol = bird_protocol_for(conn);
    // The second member's name is one `-2` longer: both must fit.
    for name in [
        bird_protocol.clone(),
        bird_protocol_for(&format!("{conn}-2")),
    ]
    .iter()
    .take(tunnels)
    {
        if let Err(e) = failover::bird::check_protocol_name(name) {
            return Err(loc.err(
                sb.span(),
                k("bgp"),
                format!("the tunnel's BIRD protocol would be `{name}`: {e} (use a shorter connection name)"),
            ));
        }
    }
    let drain_protocols = match &b.drain_protocols {
        None => vec![bird_protocol.clone()],
        Some(list) => {
            let mut v: Vec<String> = Vec::new();
            for (j, p) in list.get_ref().iter().enumerate() {
                let name = p.get_ref().trim();
                if let Err(e) = failover::bird::check_protocol_name(name) {
                    return Err(loc.err(
                        p.span(),
                        k(&format!("bgp.drain_protocols[{j}]")),
                        format!("not a BIRD protocol name: {e}"),
                    ));
                }
                if !v.iter().any(|x| x == name) {
                    v.push(name.to_string());
                }
            }
            v
        }
    };
    Ok((
        Bgp {
            onprem_asn,
            azure_asn,
            azure_peer: peers.first().copied(),
            bird_socket,
            bird_protocol,
            drain_protocols,
        },
        peers,
    ))
}

/// Whole-file checks across connections (duplicate names and TUN devices).
pub fn cross_check(cfg: &Config, text: &str) -> Result<(), ConfigError> {
    let loc = Locator {
        file: &cfg.file,
        text,
    };
    for (i, a) in cfg.connections.iter().enumerate() {
        for b in cfg.connections.iter().skip(i + 1) {
            let find = |needle: &str| text.find(needle).unwrap_or(0);
            if a.name == b.name {
                let at = text.rfind(&format!("\"{}\"", b.name)).unwrap_or(0);
                return Err(loc.err(
                    at..at,
                    format!("connection[{}].name", b.name),
                    format!("duplicate connection name `{}`", b.name),
                ));
            }
            let pa = a.bgp.as_ref().and_then(|x| x.azure_peer);
            if pa.is_some() && pa == b.bgp.as_ref().and_then(|x| x.azure_peer) {
                let peer = pa.map(|p| p.to_string()).unwrap_or_default();
                let at = text.rfind(&format!("\"{peer}\"")).unwrap_or(0);
                return Err(loc.err(
                    at..at,
                    format!("connection[{}].bgp.azure_peer", b.name),
                    format!(
                        "BGP peer {peer} is on two tunnels (`{}` and `{}`): each tunnel needs its own Azure BGP address",
                        a.name, b.name
                    ),
                ));
            }
            if a.tun_name == b.tun_name {
                let at = find(&b.tun_name);
                return Err(loc.err(
                    at..at,
                    format!("connection[{}].tun_name", b.name),
                    format!(
                        "TUN device `{}` is used by connections `{}` and `{}`",
                        b.tun_name, a.name, b.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Load, validate and cross-check a file.
pub fn load_checked(path: &Path) -> Result<Config, ConfigError> {
    let cfg = load(path)?;
    let text = Zeroizing::new(std::fs::read_to_string(path).unwrap_or_default());
    cross_check(&cfg, &text)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        let cfg = parse(Path::new("test.toml"), text, &|k| {
            (k == "PSK").then(|| "an-environment-psk-of-good-length".to_string())
        })?;
        cross_check(&cfg, text)?;
        Ok(cfg)
    }

    const GOOD: &str = r#"
[[connection]]
name = "azure"
local_address = "192.0.2.1"
remote_address = "198.51.100.1"
psk_env = "PSK"
remote_prefixes = ["198.18.2.0/24:50", "198.18.3.0/24"]
"#;

    #[test]
    fn psk_file_must_be_a_small_regular_file() {
        // Found by the `config` fuzz target's author: a FIFO hung start-up, /dev/zero ate memory.
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("psk.fifo");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(st.success());
        let big = dir.path().join("big.psk");
        std::fs::write(&big, vec![b'k'; 1 << 20]).expect("write");
        for target in [
            fifo.display().to_string(),
            "/dev/zero".into(),
            big.display().to_string(),
        ] {
            let text = GOOD.replace("psk_env = \"PSK\"", &format!("psk_file = \"{target}\""));
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(p(&text).map(|_| ()));
            });
            let r = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("reading psk_file {target} did not return"));
            let e = r.expect_err("must be refused");
            assert_eq!(e.key, "connection[azure].psk_file", "{e}");
            assert_eq!(e.line, 6, "{e}");
        }
        // A small regular file still works.
        let ok = dir.path().join("ok.psk");
        std::fs::write(&ok, b"a-long-enough-pre-shared-key-in-a-file\n").expect("write");
        let text = GOOD.replace(
            "psk_env = \"PSK\"",
            &format!("psk_file = \"{}\"", ok.display()),
        );
        assert!(p(&text).is_ok());
    }

    #[test]
    fn child_sa_per_pair_and_unique() {
        let c = p(GOOD).unwrap();
        assert!(c.connections[0].child_sa_per_pair);
        assert_eq!(c.connections[0].unique, Unique::Replace);
        let text = GOOD.replace(
            "psk_env = \"PSK\"",
            "psk_env = \"PSK\"\nchild_sa_per_pair = false\nunique = \"never\"",
        );
        let c = p(&text).unwrap();
        assert!(!c.connections[0].child_sa_per_pair);
        assert_eq!(c.connections[0].unique, Unique::Never);
        let text = GOOD.replace(
            "psk_env = \"PSK\"",
            "psk_env = \"PSK\"\nunique = \"sometimes\"",
        );
        let e = p(&text).expect_err("unknown policy");
        assert_eq!(e.key, "connection[azure].unique", "{e}");
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("replace, keep or never"), "{e}");
    }

    #[test]
    fn defaults_are_azures() {
        let c = p(GOOD).unwrap();
        let c = &c.connections[0];
        assert_eq!(c.mtu, 1400);
        assert_eq!(c.mss_clamp, 1350);
        assert!(c.force_encap);
        assert_eq!(
            c.lifetimes,
            Lifetimes {
                ike_seconds: 28_800,
                child_seconds: 27_000,
                child_kilobytes: 102_400_000,
                ike_rekey_seconds: None,
                child_rekey_seconds: None,
                child_rekey_kilobytes: None,
            }
        );
        assert_eq!(c.behaviour, Behaviour::Both);
        assert_eq!(c.mode.routes()[0].metric, 50);
        assert_eq!(c.mode.routes()[1].metric, DEFAULT_ROUTE_METRIC);
        assert_eq!(c.tun_name, "hgw-azure");
        assert_eq!(format!("{:?}", c.psk), "Psk(<redacted>)");
    }

    #[test]
    fn missing_key_names_key_and_line() {
        let e = p("[[connection]]\nname = \"x\"\nlocal_address = \"192.0.2.1\"\n").unwrap_err();
        assert!(e.to_string().contains("remote_address"), "{e}");
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn bad_prefix_points_at_it() {
        let e = p(&GOOD.replace("198.18.3.0/24\"", "198.18.3.1/24\"")).unwrap_err();
        assert_eq!(e.key, "connection[azure].remote_prefixes[1]");
        assert_eq!(e.line, 7);
        assert!(e.message.contains("host bits"), "{e}");
    }

    #[test]
    fn unknown_algorithm_is_refused() {
        let e = p(&format!(
            "{GOOD}ike_proposals = \"aes256-sha256-modp2047\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "connection[azure].ike_proposals");
        assert_eq!(e.line, 8);
        assert!(e.message.contains("modp2047"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = p(&format!("{GOOD}mtuu = 1400\n")).unwrap_err();
        assert!(e.to_string().contains("mtuu"), "{e}");
        assert_eq!(e.line, 8);
    }

    #[test]
    fn unset_env_and_unreadable_file() {
        let e = p(&GOOD.replace("psk_env = \"PSK\"", "psk_env = \"NOPE\"")).unwrap_err();
        assert_eq!(e.key, "connection[azure].psk_env");
        let e =
            p(&GOOD.replace("psk_env = \"PSK\"", "psk_file = \"/nonexistent/psk\"")).unwrap_err();
        assert_eq!(e.key, "connection[azure].psk_file");
        assert!(e.message.contains("cannot read PSK file"), "{e}");
    }

    #[test]
    fn short_psk_warns() {
        let c = p(&GOOD.replace("psk_env = \"PSK\"", "psk = \"short\"")).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("shorter than 20")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn duplicate_names_refused() {
        let two = format!("{GOOD}\n{}", GOOD.replace("azure0", "azure1"));
        let e = p(&two).unwrap_err();
        assert!(e.message.contains("duplicate connection name"), "{e}");
    }

    #[test]
    fn mutated_files_never_panic() {
        // Every byte of a valid file replaced by characters that upset TOML and our parsers: each
        // variant is either accepted or refused with a located error, never a panic.
        let base =
            format!("{GOOD}mtu = 1400\nselectors = []\n[connection.dpd]\naction = \"clear\"\n");
        for i in 0..base.len() {
            for c in ['"', '[', '=', '\n', '/', ':', '9', 'x', '\u{e9}'] {
                let mut v: Vec<char> = base.chars().collect();
                if let Some(slot) = v.get_mut(i) {
                    *slot = c;
                }
                let text: String = v.into_iter().collect();
                if let Err(e) = p(&text) {
                    assert!(!e.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn policy_based_routes_remote_selectors() {
        let t = r#"
[[connection]]
name = "pb"
local_address = "192.0.2.1"
remote_address = "198.51.100.1"
psk_env = "PSK"
mode = "policy-based"
route_metric = 7
selectors = [ { local = "198.18.0.0/24", remote = "198.18.2.0/24" }, { local = "198.18.1.0/24", remote = "198.18.2.0/24" } ]
"#;
        let c = p(t).unwrap();
        assert_eq!(c.connections[0].mode.routes().len(), 1);
        assert_eq!(c.connections[0].mode.routes()[0].metric, 7);
    }

    #[test]
    fn azure_policy_errors_point_at_field() {
        let t = format!(
            "{GOOD}[connection.azure_policy]\nike_encryption = \"GCMAES256\"\nike_integrity = \"SHA384\"\ndh_group = \"ECP385\"\nipsec_encryption = \"GCMAES256\"\nipsec_integrity = \"GCMAES256\"\npfs_group = \"None\"\n"
        );
        let e = p(&t).unwrap_err();
        assert_eq!(e.key, "connection[azure].azure_policy.dh_group");
        assert_eq!(e.line, 11);
    }
}

#[cfg(test)]
mod failover_tests {
    use super::*;

    const BASE: &str = "[[connection]]\nname = \"azure\"\nlocal_address = \"192.0.2.1\"\nremote_address = \"198.51.100.1\"\npsk = \"a-long-enough-inline-pre-shared-key\"\nremote_prefixes = [\"198.19.0.0/16\"]\n";

    fn p(extra: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), &format!("{BASE}{extra}"), &|_| None)
    }

    #[test]
    fn soft_lifetimes_come_before_hard_ones() {
        let c = p("[connection.lifetimes]\nchild_seconds = 3600\nchild_rekey_seconds = 3000\nike_rekey_seconds = 20000\nchild_kilobytes = 2048\nchild_rekey_kilobytes = 1024\n").expect("valid");
        let l = c.connections[0].lifetimes;
        assert_eq!(
            (
                l.child_rekey_seconds,
                l.ike_rekey_seconds,
                l.child_rekey_kilobytes
            ),
            (Some(3000), Some(20000), Some(1024))
        );
        let e = p("[connection.lifetimes]\nchild_seconds = 3600\nchild_rekey_seconds = 3600\n")
            .expect_err("soft = hard");
        assert!(e.key.ends_with("lifetimes.child_rekey_seconds"), "{e}");
        assert_eq!(e.line, 9, "{e}");
        let e = p("[connection.lifetimes]\nike_rekey_seconds = 0\n").expect_err("zero");
        assert!(e.key.ends_with("lifetimes.ike_rekey_seconds"), "{e}");
    }

    #[test]
    fn ike_fragmentation_keys() {
        let c = p("").expect("valid");
        assert!(c.connections[0].ike_fragmentation);
        assert_eq!(c.connections[0].ike_fragment_size, 1248);
        let c = p("ike_fragmentation = false\nike_fragment_size = 576\n").expect("valid");
        assert!(!c.connections[0].ike_fragmentation);
        assert_eq!(c.connections[0].ike_fragment_size, 576);
        let e = p("ike_fragment_size = 100\n").expect_err("too small");
        assert!(e.key.ends_with("ike_fragment_size"), "{e}");
        assert_eq!(e.line, 7, "{e}");
    }

    #[test]
    fn dataplane_table() {
        let c = p("").expect("valid");
        assert_eq!((c.daemon.workers, c.daemon.cpu_affinity), (None, false));
        let c = parse(
            Path::new("t.toml"),
            &format!("[dataplane]\nworkers = 3\ncpu_affinity = true\n{BASE}"),
            &|_| None,
        )
        .expect("valid");
        assert_eq!((c.daemon.workers, c.daemon.cpu_affinity), (Some(3), true));
        for bad in ["workers = 0", "workers = 65", "workers = -1"] {
            let e = parse(
                Path::new("t.toml"),
                &format!("[dataplane]\n{bad}\n{BASE}"),
                &|_| None,
            )
            .expect_err(bad);
            assert_eq!((e.key.as_str(), e.line), ("dataplane.workers", 2), "{e}");
        }
        let e = parse(
            Path::new("t.toml"),
            &format!("[dataplane]\nbusy = 1\n{BASE}"),
            &|_| None,
        )
        .expect_err("unknown key");
        assert!(e.message.contains("busy"), "{e}");
    }

    #[test]
    fn nat_keepalive_interval_default_value_and_off() {
        let secs = |c: &Config| c.connections[0].nat_keepalive.map(|d| d.as_secs());
        assert_eq!(secs(&p("").expect("valid")), Some(20));
        assert_eq!(
            secs(&p("nat_keepalive_seconds = 5\n").expect("valid")),
            Some(5)
        );
        assert_eq!(
            secs(&p("nat_keepalive_seconds = 0\n").expect("valid")),
            None
        );
        let e = p("nat_keepalive_seconds = -3\n").expect_err("negative");
        assert!(e.key.ends_with("nat_keepalive_seconds"), "{e}");
        assert_eq!(e.line, 7, "{e}");
        let e = p("nat_keepalive_seconds = 99999\n").expect_err("too long");
        assert!(e.key.ends_with("nat_keepalive_seconds"), "{e}");
    }

    #[test]
    fn failover_defaults_and_values() {
        let c = p(
            "[connection.failover]\nprimary_interface = \"er0\"\nprobe_target = \"198.19.1.10\"\n",
        )
        .expect("valid");
        let f = c.connections[0].failover.clone().expect("failover");
        assert_eq!(
            (f.interval_ms, f.timeout_ms, f.down_after, f.up_after),
            (300, 300, 3, 3)
        );
        assert_eq!(
            (f.backup_metric, f.override_metric, f.hold_down_seconds),
            (200, 10, 10)
        );
        assert_eq!(f.probe_source, None);
        let c = p("[connection.failover]\nprimary_interface = \"er0\"\nprobe_source = \"192.0.2.17\"\nprobe_target = \"198.19.1.10\"\ninterval_ms = 100\ndown_after = 5\nup_after = 2\nhold_down_seconds = 3\nbackup_metric = 500\n")
            .expect("valid");
        let f = c.connections[0].failover.clone().expect("failover");
        assert_eq!(f.probe_source, Some("192.0.2.17".parse().expect("ip")));
        assert_eq!(
            (
                f.interval_ms,
                f.timeout_ms,
                f.down_after,
                f.up_after,
                f.hold_down_seconds,
                f.backup_metric
            ),
            (100, 100, 5, 2, 3, 500)
        );
    }

    #[test]
    fn failover_errors_are_located() {
        for (extra, key, line) in [
            (
                "[connection.failover]\nprimary_interface = \"er0\"\nprobe_target = \"198.19.1.300\"\n",
                "failover.probe_target",
                9,
            ),
            (
                "[connection.failover]\nprimary_interface = \"er0/x\"\nprobe_target = \"198.19.1.10\"\n",
                "failover.primary_interface",
                8,
            ),
            (
                "[connection.failover]\nprimary_interface = \"er0\"\nprobe_target = \"198.19.1.10\"\ninterval_ms = 5\n",
                "failover.interval_ms",
                10,
            ),
            (
                "[connection.failover]\nprimary_interface = \"er0\"\nprobe_target = \"198.19.1.10\"\ndown_after = 0\n",
                "failover.down_after",
                10,
            ),
            (
                "[connection.failover]\nprimary_interface = \"er0\"\nprobe_target = \"198.19.1.10\"\nbackup_metric = 5\n",
                "failover.backup_metric",
                10,
            ),
            (
                "[connection.failover]\nprimary_interface = \"hgw-azure\"\nprobe_target = \"198.19.1.10\"\n",
                "failover.primary_interface",
                8,
            ),
            (
                "[connection.bgp]\nonprem_asn = 65515\n",
                "bgp.onprem_asn",
                8,
            ),
            (
                "[connection.bgp]\nonprem_asn = 12076\n",
                "bgp.onprem_asn",
                8,
            ),
            (
                "[connection.bgp]\nonprem_asn = 65518\n",
                "bgp.onprem_asn",
                8,
            ),
            (
                "[connection.bgp]\nonprem_asn = 23456\n",
                "bgp.onprem_asn",
                8,
            ),
            ("[connection.bgp]\nonprem_asn = -1\n", "bgp.onprem_asn", 8),
        ] {
            let e = p(extra).expect_err(extra);
            assert!(e.key.ends_with(key), "{extra}: {e}");
            assert_eq!(e.line, line, "{extra}: {e}");
        }
        let e = p("[connection.bgp]\nonprem_asn = 65515\n").expect_err("reserved");
        assert!(e.message.contains("reserved"), "{e}");
    }

    #[test]
    fn bgp_peer_alone_is_enough_for_a_route_based_connection() {
        let text = "[[connection]]\nname = \"azure\"\nlocal_address = \"192.0.2.1\"\nremote_address = \"198.51.100.1\"\npsk = \"a-long-enough-inline-pre-shared-key\"\ntun_address = \"169.254.21.1/32\"\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = \"169.254.21.2\"\n";
        let c = parse(Path::new("t.toml"), text, &|_| None).expect("valid without remote_prefixes");
        let routes = c.connections[0].routes();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0].prefix.to_string(), "169.254.21.2/32");
        // Without azure_peer the prefixes are still required.
        let e = parse(
            Path::new("t.toml"),
            &text.replace("azure_peer = \"169.254.21.2\"\n", ""),
            &|_| None,
        )
        .expect_err("no routes at all");
        assert!(e.key.ends_with("remote_prefixes"), "{e}");
    }

    #[test]
    fn bgp_accepts_private_asn() {
        let c = p("[connection.bgp]\nonprem_asn = 65010\nazure_peer = \"169.254.21.1\"\n")
            .expect("valid");
        let b = c.connections[0].bgp.clone().expect("bgp");
        assert_eq!((b.onprem_asn, b.azure_asn), (65010, 65515));
        // The BGP peer gets a host route through the tunnel, beside the remote prefixes.
        let routes = c.connections[0].routes();
        assert!(
            routes
                .iter()
                .any(|r| r.prefix.to_string() == "169.254.21.1/32"),
            "{routes:?}"
        );
        assert_eq!(routes.len(), c.connections[0].mode.routes().len() + 1);
    }
}

#[cfg(test)]
mod active_active_tests {
    use super::*;

    const HEAD: &str = "[[connection]]\nname = \"azure\"\nlocal_address = \"192.0.2.1\"\npsk = \"a-long-enough-inline-pre-shared-key\"\nremote_prefixes = [\"198.19.0.0/16\"]\n";

    fn p(extra: &str) -> Result<Config, ConfigError> {
        let text = format!("{HEAD}{extra}");
        let cfg = parse(Path::new("aa.toml"), &text, &|_| None)?;
        cross_check(&cfg, &text)?;
        Ok(cfg)
    }

    #[test]
    fn two_addresses_make_a_pair_of_connections() {
        let c = p("remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\n").expect("valid");
        assert_eq!(c.connections.len(), 2);
        let (a, b) = (&c.connections[0], &c.connections[1]);
        assert_eq!((a.name.as_str(), b.name.as_str()), ("azure", "azure-2"));
        assert_eq!(
            (a.tun_name.as_str(), b.tun_name.as_str()),
            ("hgw-azure", "hgw-azure-2")
        );
        assert_eq!(a.remote_address.to_string(), "198.51.100.1");
        assert_eq!(b.remote_address.to_string(), "198.51.100.2");
        assert_eq!(
            (a.remote_id.as_str(), b.remote_id.as_str()),
            ("198.51.100.1", "198.51.100.2")
        );
        let (ga, gb) = (
            a.group.clone().expect("group"),
            b.group.clone().expect("group"),
        );
        assert_eq!((ga.member, gb.member), (0, 1));
        assert_eq!(ga.name, "azure");
        assert_eq!(gb.name, "azure");
        assert_eq!(ga.multipath, Multipath::Ecmp);
        assert_eq!(a.routes(), b.routes());
        // One address stays one connection without a group.
        let c = p("remote_address = \"198.51.100.1\"\n").expect("valid");
        assert_eq!(c.connections.len(), 1);
        assert!(c.connections[0].group.is_none());
        let c = p("remote_address = [\"198.51.100.1\"]\n").expect("valid");
        assert_eq!(c.connections.len(), 1);
    }

    #[test]
    fn backup_mode_and_long_tun_names() {
        let c = p("remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\nactive_active = \"backup\"\ntun_name = \"tunnel-to-azure\"\n")
            .expect("valid");
        assert_eq!(
            c.connections[1].group.clone().expect("group").multipath,
            Multipath::Backup
        );
        assert_eq!(c.connections[1].tun_name, "tunnel-to-azu-2");
        assert!(c.connections[1].tun_name.len() <= 15);
    }

    #[test]
    fn bad_active_active_settings_are_refused_with_their_line() {
        for (extra, needle) in [
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\", \"198.51.100.3\"]\n",
                "two",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.1\"]\n",
                "twice",
            ),
            ("remote_address = []\n", "one address"),
            (
                "remote_address = [\"198.51.100.1\", \"not-an-ip\"]\n",
                "not an IP",
            ),
            (
                "remote_address = \"198.51.100.1\"\nactive_active = \"ecmp\"\n",
                "two remote addresses",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\nactive_active = \"sometimes\"\n",
                "unknown mode",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\n[connection.bgp]\nonprem_asn = 65010\n",
                "azure_peer",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = \"169.254.21.2\"\n",
                "one BGP address per instance",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.21.2\"]\n",
                "both tunnels",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.30.2\"]\n",
                "APIPA",
            ),
            (
                "remote_address = \"198.51.100.1\"\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.22.2\"]\n",
                "one remote address",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\ntun_address = \"169.254.23.1/32\"\n",
                "APIPA",
            ),
            (
                "remote_address = \"198.51.100.1\"\ntun_address = [\"169.254.21.1/32\", \"169.254.22.1/32\"]\n",
                "ADDRESS/LENGTH",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\ntun_address = [\"169.254.21.1/32\", \"169.254.22.1/32\"]\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.22.1\", \"169.254.21.2\"]\n",
                "tun_address",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.22.2\"]\ndrain_protocols = [\"2bad\"]\n",
                "BIRD protocol name",
            ),
            (
                "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.22.2\"]\nbird_socket = \"bird.ctl\"\n",
                "absolute path",
            ),
        ] {
            let e = p(extra).expect_err(extra);
            assert!(e.message.contains(needle), "{extra}: {e}");
            assert!(e.line >= 6, "{extra}: {e}");
        }
    }

    const AA_BGP: &str = "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\ntun_address = [\"169.254.21.1/32\", \"169.254.22.1/32\"]\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.22.2\"]\nbird_socket = \"/run/bird/bird.ctl\"\n";

    #[test]
    fn active_active_with_bgp_gives_each_tunnel_its_own_peer() {
        let c = p(AA_BGP).expect("valid");
        let (a, b) = (&c.connections[0], &c.connections[1]);
        let (ba, bb) = (a.bgp.clone().expect("bgp"), b.bgp.clone().expect("bgp"));
        assert_eq!(
            ba.azure_peer.map(|x| x.to_string()).as_deref(),
            Some("169.254.21.2")
        );
        assert_eq!(
            bb.azure_peer.map(|x| x.to_string()).as_deref(),
            Some("169.254.22.2")
        );
        assert_eq!(
            a.tun_address.map(|x| x.to_string()).as_deref(),
            Some("169.254.21.1/32")
        );
        assert_eq!(
            b.tun_address.map(|x| x.to_string()).as_deref(),
            Some("169.254.22.1/32")
        );
        assert_eq!(
            (ba.bird_protocol.as_str(), bb.bird_protocol.as_str()),
            ("azure_azure", "azure_azure_2")
        );
        assert_eq!(ba.drain_protocols, vec!["azure_azure".to_string()]);
        assert_eq!(bb.drain_protocols, vec!["azure_azure_2".to_string()]);
        assert_eq!(
            ba.bird_socket.as_deref(),
            Some(Path::new("/run/bird/bird.ctl"))
        );
        // Each member routes the shared prefixes plus only its own peer's host route.
        let ra: Vec<String> = a.routes().iter().map(|r| r.prefix.to_string()).collect();
        let rb: Vec<String> = b.routes().iter().map(|r| r.prefix.to_string()).collect();
        assert_eq!(ra, ["198.19.0.0/16", "169.254.21.2/32"]);
        assert_eq!(rb, ["198.19.0.0/16", "169.254.22.2/32"]);
        assert_eq!(a.own_routes().len(), 1);
        // One tunnel address is shared by both tunnels; explicit drain protocols are kept.
        let c = p("remote_address = [\"198.51.100.1\", \"198.51.100.2\"]\ntun_address = \"169.254.21.1/32\"\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.22.2\"]\ndrain_protocols = [\"onprem_router\"]\n").expect("valid");
        assert_eq!(c.connections[1].tun_address, c.connections[0].tun_address);
        for m in &c.connections {
            assert_eq!(
                m.bgp.as_ref().expect("bgp").drain_protocols,
                vec!["onprem_router".to_string()]
            );
        }
    }

    #[test]
    fn the_same_bgp_address_on_two_connections_is_refused() {
        let text = format!(
            "{HEAD}{AA_BGP}[[connection]]\nname = \"other\"\nlocal_address = \"192.0.2.1\"\npsk = \"a-long-enough-inline-pre-shared-key\"\nremote_address = \"198.51.100.9\"\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = \"169.254.22.2\"\n"
        );
        let cfg = parse(Path::new("aa.toml"), &text, &|_| None).expect("each valid alone");
        let e = cross_check(&cfg, &text).expect_err("same peer");
        assert!(e.message.contains("169.254.22.2"), "{e}");
        assert!(e.line > 10, "{e}");
    }

    #[test]
    fn ha_table() {
        let env = |k: &str| match k {
            "HA" => Some("0123456789abcdef0123456789abcdef".to_string()),
            "SHORT" => Some("too-short".to_string()),
            _ => None,
        };
        let parse_ha = |ha: &str| {
            let text = format!("{HEAD}remote_address = \"198.51.100.1\"\n[ha]\n{ha}");
            parse(Path::new("ha.toml"), &text, &env)
        };
        let ok = "local_id = 1\npeer_id = 2\nlisten = \"203.0.113.1:4510\"\npeer = \"203.0.113.2:4510\"\nsecret_env = \"HA\"\n";
        let cfg = parse_ha(ok).expect("valid");
        let h = cfg.daemon.ha.expect("[ha]");
        assert_eq!((h.local_id, h.peer_id), (1, 2));
        assert_eq!(h.mark_interval.as_millis(), 20);
        assert_eq!(h.seq_skip, 1 << 20);
        assert_eq!(h.snapshot_interval.as_millis(), 1000);
        assert!(
            !format!("{h:?}").contains("0123456789abcdef"),
            "the secret is never printed"
        );
        let bad = [
            (
                ok.replace("peer_id = 2", "peer_id = 1"),
                "ha.peer_id",
                "differ",
            ),
            (
                ok.replace("203.0.113.1:4510", "192.0.2.1:4510"),
                "ha.listen",
                "dedicated link",
            ),
            (
                ok.replace("203.0.113.2:4510", "198.51.100.1:4510"),
                "ha.peer",
                "remote gateway",
            ),
            (
                ok.replace("203.0.113.1:4510", "0.0.0.0:4510"),
                "ha.listen",
                "wildcard",
            ),
            (
                ok.replace("203.0.113.2:4510", "203.0.113.2"),
                "ha.peer",
                "address:port",
            ),
            (
                ok.replace("\"HA\"", "\"SHORT\""),
                "ha.secret_env",
                "at least 32",
            ),
            (
                ok.replace("secret_env = \"HA\"\n", ""),
                "ha.secret_file",
                "needs a secret",
            ),
            (ok.replace("local_id = 1\n", ""), "ha.local_id", "required"),
            (
                format!("{ok}seq_skip = 10\n"),
                "ha.seq_skip",
                "out of range",
            ),
            (
                format!("{ok}mark_interval_ms = 0\n"),
                "ha.mark_interval_ms",
                "out of range",
            ),
            (
                format!("{ok}secret_file = \"x\"\n"),
                "ha.secret_env",
                "only one",
            ),
        ];
        for (text, key, needle) in bad {
            let e = parse_ha(&text).expect_err(&text);
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.line > 0, "{e}");
        }
    }

    #[test]
    fn drain_table() {
        let text = format!(
            "[drain]\non_shutdown = true\ntimeout_seconds = 20\nquiet_ms = 300\n{HEAD}remote_address = \"198.51.100.1\"\n"
        );
        let cfg = parse(Path::new("d.toml"), &text, &|_| None).expect("valid");
        assert!(cfg.daemon.drain.on_shutdown);
        assert_eq!(cfg.daemon.drain.timeout.as_secs(), 20);
        assert_eq!(cfg.daemon.drain.quiet.as_millis(), 300);
        let text =
            format!("[drain]\ntimeout_seconds = 0\n{HEAD}remote_address = \"198.51.100.1\"\n");
        let e = parse(Path::new("d.toml"), &text, &|_| None).expect_err("0 s");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn metrics_table() {
        let conn = format!("{HEAD}remote_address = \"198.51.100.1\"\n");
        let cfg = parse(Path::new("m.toml"), &conn, &|_| None).expect("valid");
        assert_eq!(cfg.daemon.metrics, None, "off by default");
        let text = format!("[metrics]\nlisten = \"127.0.0.1:9817\"\n{conn}");
        let cfg = parse(Path::new("m.toml"), &text, &|_| None).expect("valid");
        let m = cfg.daemon.metrics.expect("[metrics]");
        assert_eq!(m.listen, "127.0.0.1:9817".parse().expect("addr"));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let text = format!("[metrics]\nlisten = \"[::]:9817\"\n{conn}");
        let cfg = parse(Path::new("m.toml"), &text, &|_| None).expect("valid");
        assert!(
            cfg.warnings.iter().any(|w| w.contains("not a loopback")),
            "{:?}",
            cfg.warnings
        );
        let bad = [
            ("[metrics]\nlisten = \"127.0.0.1\"\n", 2, 10, "address:port"),
            (
                "[metrics]\nlisten = \"127.0.0.1:0\"\n",
                2,
                10,
                "needs a port",
            ),
            ("[metrics]\n", 1, 1, "required"),
            (
                "[metrics]\nlisten = \"127.0.0.1:9817\"\nport = 1\n",
                3,
                1,
                "unknown field",
            ),
        ];
        for (table, line, column, needle) in bad {
            let text = format!("{table}{conn}");
            let e = parse(Path::new("m.toml"), &text, &|_| None).expect_err(table);
            assert_eq!((e.line, e.column), (line, column), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().starts_with("m.toml:"), "{e}");
        }
    }
}
