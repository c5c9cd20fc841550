//! `hybridgw lab failover`: the ExpressRoute-with-VPN-failover reference test (Azure's "ExpressRoute
//! with VPN failover": connect, cut the circuit, reach the VNet over the VPN, restore) automated in
//! network namespaces, IPsec over the internet path (RFC 7296, RFC 3948), in one of two modes:
//! - static: floating routes plus a BFD-like path monitor on both gateways (RFC 5880 section
//!   6.8.4 detection);
//! - BGP (`--bgp`): BIRD 2 on the on-prem router, the ExpressRoute edge and the Azure gateway
//!   (ASN 65515) runs eBGP (RFC 4271) over the circuit with BFD (RFC 5880/5881) and over the
//!   tunnel between the APIPA addresses 169.254.21.1 and 169.254.21.2; the routes come from BGP.
//!
//! Topology (every address from the documentation and benchmarking ranges):
//! ```text
//!  host 198.18.1.10 -- 198.18.1.1 [on-prem router: hybridgw] er0 192.0.2.1 -- 192.0.2.2 [ER edge] 192.0.2.5 -- 192.0.2.6 er0 [Azure gw: hybridgw] 198.19.1.1 -- 198.19.1.10 host
//!                                                         wan 203.0.113.1 -- 203.0.113.2 [internet] 198.51.100.1 -- 198.51.100.2 wan
//!                                  (BGP mode) tunnel 169.254.21.1/30 ==== IPsec over the internet ==== 169.254.21.2/30 tunnel
//! ```

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use netns::{Netns, Proc, veth_pair};

use crate::lab::{Scratch, interrupted, spawn_daemon, status, wait_established, write_private};
use crate::logging::LogFormat;

const AZURE_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
/// The path monitor of the lab: 200 ms x 3, 3 answers and a 3 s hold-down.
const INTERVAL_MS: u64 = 200;
const HOLD_DOWN_S: u64 = 3;

/// BGP mode: BFD on the circuit, 100 ms x 3 (Azure's private peering uses 300 ms x 3).
const BFD_MS: u32 = 100;
const BFD_MULT: u8 = 3;
/// BGP mode: the on-prem ASN (private, RFC 6996) and the tunnel's APIPA BGP addresses.
const ONPREM_ASN: u32 = 65010;
const ONPREM_BGP: Ipv4Addr = Ipv4Addr::new(169, 254, 21, 1);
const AZURE_BGP: Ipv4Addr = Ipv4Addr::new(169, 254, 21, 2);
const VNET: &str = "198.19.1.0/24";
const ONPREM_NET: &str = "198.18.1.0/24";

/// How the routes to the other side are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Floating static routes and path monitors (hybridgw's `[connection.failover]`).
    Static,
    /// BGP sessions run by BIRD over the circuit (with BFD) and over the tunnel.
    Bgp,
}

/// Entry point of `hybridgw lab failover [--bgp]`.
pub fn main(format: LogFormat, bgp: bool) -> ExitCode {
    let name = if bgp {
        "hybridgw lab failover --bgp"
    } else {
        "hybridgw lab failover"
    };
    let mode = if bgp { Mode::Bgp } else { Mode::Static };
    crate::lab::as_root(name, || run(format, mode))
}

struct Topo {
    oph: Netns,
    opr: Netns,
    erx: Netns,
    inet: Netns,
    azg: Netns,
    azh: Netns,
}

pub(crate) fn sh(ns: &Netns, cmd: &str) -> Result<(), String> {
    ns.exec(cmd.split_whitespace())
        .map(drop)
        .map_err(|e| format!("{}: `{cmd}`: {e}", ns.name()))
}

fn build(mode: Mode) -> Result<Topo, String> {
    let mk = |_: &str| Netns::new("hgwfo").map_err(|e| format!("namespace: {e}"));
    let t = Topo {
        oph: mk("oph")?,
        opr: mk("opr")?,
        erx: mk("erx")?,
        inet: mk("inet")?,
        azg: mk("azg")?,
        azh: mk("azh")?,
    };
    let v = |a: &Netns, an: &str, b: &Netns, bn: &str| {
        veth_pair(a, an, b, bn).map_err(|e| format!("veth {an}/{bn}: {e}"))
    };
    v(&t.oph, "eth0", &t.opr, "lan0")?;
    v(&t.opr, "er0", &t.erx, "er-op")?;
    v(&t.erx, "er-az", &t.azg, "er0")?;
    v(&t.opr, "wan0", &t.inet, "in-op")?;
    v(&t.inet, "in-az", &t.azg, "wan0")?;
    v(&t.azg, "lan0", &t.azh, "eth0")?;
    let cmds: &[(&Netns, &[&str])] = &[
        (
            &t.oph,
            &[
                "ip addr add 198.18.1.10/24 dev eth0",
                // The hosts' MTU fits the tunnel: a transfer moved onto the VPN keeps its segments.
                "ip link set eth0 mtu 1400",
                "ip link set eth0 up",
                "ip route add default via 198.18.1.1",
            ],
        ),
        (
            &t.opr,
            &[
                "ip addr add 198.18.1.1/24 dev lan0",
                "ip addr add 192.0.2.1/30 dev er0",
                "ip addr add 203.0.113.1/30 dev wan0",
                "ip link set lan0 up",
                "ip link set er0 up",
                "ip link set wan0 up",
                "ip route add 198.51.100.0/30 via 203.0.113.2 dev wan0",
                "sysctl -qw net.ipv4.ip_forward=1",
                "sysctl -qw net.ipv4.conf.all.rp_filter=0",
                "sysctl -qw net.ipv4.conf.default.rp_filter=0",
            ],
        ),
        (
            &t.erx,
            &[
                "ip addr add 192.0.2.2/30 dev er-op",
                "ip addr add 192.0.2.5/30 dev er-az",
                "ip link set er-op up",
                "ip link set er-az up",
                "sysctl -qw net.ipv4.ip_forward=1",
            ],
        ),
        (
            &t.inet,
            &[
                "ip addr add 203.0.113.2/30 dev in-op",
                "ip addr add 198.51.100.1/30 dev in-az",
                "ip link set in-op up",
                "ip link set in-az up",
                "sysctl -qw net.ipv4.ip_forward=1",
            ],
        ),
        (
            &t.azg,
            &[
                "ip addr add 198.19.1.1/24 dev lan0",
                "ip addr add 192.0.2.6/30 dev er0",
                "ip addr add 198.51.100.2/30 dev wan0",
                "ip link set lan0 up",
                "ip link set er0 up",
                "ip link set wan0 up",
                "ip route add 203.0.113.0/30 via 198.51.100.1 dev wan0",
                "sysctl -qw net.ipv4.ip_forward=1",
                "sysctl -qw net.ipv4.conf.all.rp_filter=0",
                "sysctl -qw net.ipv4.conf.default.rp_filter=0",
            ],
        ),
        (
            &t.azh,
            &[
                "ip addr add 198.19.1.10/24 dev eth0",
                "ip link set eth0 mtu 1400",
                "ip link set eth0 up",
                "ip route add default via 198.19.1.1",
            ],
        ),
    ];
    // Static mode: the ExpressRoute routes are static (what BGP would install, metric 100), and
    // the path monitors reach the far end of the circuit. BGP mode: BIRD installs them.
    let static_routes: &[(&Netns, &[&str])] = &[
        (
            &t.opr,
            &[
                "ip route add 198.19.1.0/24 via 192.0.2.2 dev er0 metric 100",
                "ip route add 192.0.2.4/30 via 192.0.2.2 dev er0",
            ],
        ),
        (
            &t.erx,
            &[
                "ip route add 198.18.1.0/24 via 192.0.2.1",
                "ip route add 198.19.1.0/24 via 192.0.2.6",
            ],
        ),
        (
            &t.azg,
            &[
                "ip route add 198.18.1.0/24 via 192.0.2.5 dev er0 metric 100",
                "ip route add 192.0.2.0/30 via 192.0.2.5 dev er0",
            ],
        ),
    ];
    let routes: &[(&Netns, &[&str])] = match mode {
        Mode::Static => static_routes,
        Mode::Bgp => &[],
    };
    for (ns, list) in cmds.iter().chain(routes) {
        for c in list.iter() {
            sh(ns, c)?;
        }
    }
    // The long transfer runs at 20 Mbit/s: it must not starve the 10 ms pings in the tunnel.
    t.oph
        .rate_limit("eth0", 20_000)
        .map_err(|e| format!("rate limit: {e}"))?;
    Ok(t)
}

/// One gateway's configuration; `ends` is (local, remote) outer address, `probe` (source, target).
fn config(
    name: &str,
    ends: (&str, &str),
    psk: &Path,
    tun: &str,
    prefix: &str,
    probe: (&str, &str),
    behaviour: &str,
) -> String {
    format!(
        r#"# hybridgw lab failover: {name}
[[connection]]
name = "{name}"
local_address = "{local}"
remote_address = "{remote}"
psk_file = "{psk}"
behaviour = "{behaviour}"
ike_proposals = "aes256-sha256-modp1024"
esp_proposals = "aes256gcm16"
tun_name = "{tun}"
remote_prefixes = ["{prefix}"]

[connection.failover]
primary_interface = "er0"
probe_source = "{src}"
probe_target = "{dst}"
interval_ms = {INTERVAL_MS}
timeout_ms = 100
down_after = 3
up_after = 3
hold_down_seconds = {HOLD_DOWN_S}
backup_metric = 200
"#,
        local = ends.0,
        remote = ends.1,
        psk = psk.display(),
        src = probe.0,
        dst = probe.1,
    )
}

/// One gateway's configuration in BGP mode: the tunnel carries the BGP address (`tun_address`)
/// and routes only the peer's BGP address; the VNet / on-prem prefixes come from BIRD.
/// `bgp` is the `[connection.bgp]` section (on-prem only: the Azure side stands for Azure).
fn bgp_config(
    name: &str,
    ends: (&str, &str),
    psk: &Path,
    tun: &str,
    addrs: (Ipv4Addr, Ipv4Addr),
    behaviour: &str,
    bgp: &str,
) -> String {
    format!(
        r#"# hybridgw lab failover --bgp: {name}
[[connection]]
name = "{name}"
local_address = "{local}"
remote_address = "{remote}"
psk_file = "{psk}"
behaviour = "{behaviour}"
ike_proposals = "aes256-sha256-modp1024"
esp_proposals = "aes256gcm16"
tun_name = "{tun}"
# The BGP address of this side (APIPA, as on Azure) and the peer's, routed into the tunnel while
# the Child SA is up; BIRD learns that host route and resolves the peer's routes through it.
tun_address = "{mine}/32"
remote_prefixes = ["{peer}/32"]
{bgp}"#,
        local = ends.0,
        remote = ends.1,
        psk = psk.display(),
        mine = addrs.0,
        peer = addrs.1,
    )
}

/// The BGP timers of the lab: Azure's 60/180 s keepalive/hold (detection is BFD's or the
/// link's), but a quick restart once the circuit returns (1 s delay, 2 s retry, 1-5 s wait).
fn lab_timers() -> failover::bird::BgpTimers {
    failover::bird::BgpTimers {
        keepalive: 60,
        hold: 180,
        connect_retry: 2,
        connect_delay: 1,
        error_wait: (1, 5),
    }
}

fn bird_timers() -> String {
    let t = lab_timers();
    format!(
        "  hold time {};\n  keepalive time {};\n  connect delay time {};\n  connect retry time {};\n  error wait time {}, {};\n",
        t.hold, t.keepalive, t.connect_delay, t.connect_retry, t.error_wait.0, t.error_wait.1
    )
}

/// The on-prem router's BIRD: the shipped generator (`failover::bird`, the configuration of
/// `appliance-config/bird/`) with the lab's names, BFD timers and restart timers.
fn onprem_bird() -> Result<String, String> {
    let mut d = failover::bird::example();
    d.router_id = Ipv4Addr::new(198, 18, 1, 1);
    d.local_asn = ONPREM_ASN;
    d.onprem_prefixes = vec![ONPREM_NET.parse().map_err(|e| format!("{e}"))?];
    d.azure.address = AZURE_BGP;
    d.azure.local_address = ONPREM_BGP;
    d.azure.interface = "hgw-azure".into();
    d.expressroute.address = Ipv4Addr::new(192, 0, 2, 2);
    d.expressroute.local_address = Ipv4Addr::new(192, 0, 2, 1);
    d.expressroute.interface = "er0".into();
    d.expressroute.bfd_interval_ms = BFD_MS;
    d.expressroute.bfd_multiplier = BFD_MULT;
    d.timers = lab_timers();
    d.log = failover::bird::BirdLog::Stderr;
    d.render()
        .map_err(|e| format!("on-prem BIRD configuration: {e}"))
}

fn bfd_block(ifpattern: &str) -> String {
    format!(
        "protocol bfd {{\n  interface \"{ifpattern}\" {{\n    min rx interval {BFD_MS} ms;\n    min tx interval {BFD_MS} ms;\n    idle tx interval 1000 ms;\n    multiplier {BFD_MULT};\n  }};\n}}\n"
    )
}

/// The ExpressRoute edge (provider edge and Microsoft's edge in one router, AS12076): eBGP with
/// BFD to the on-prem router and to Azure's gateway, passing routes between them.
fn edge_bird() -> String {
    format!(
        "# ExpressRoute edge (AS{msee}): hybridgw lab failover --bgp\n\
         log stderr all;\nrouter id 192.0.2.2;\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}\n\
         {bfd}\
         template bgp er_link {{\n  direct;\n  bfd on;\n{timers}\
         \x20 ipv4 {{ import all; export where source = RTS_BGP; next hop self; }};\n}}\n\
         protocol bgp customer from er_link {{ local 192.0.2.2 as {msee}; neighbor 192.0.2.1 as {ONPREM_ASN}; }}\n\
         protocol bgp azure_gw from er_link {{ local 192.0.2.5 as {msee}; neighbor 192.0.2.6 as {az}; }}\n",
        msee = failover::bird::MSEE_ASN,
        az = failover::asn::AZURE_GATEWAY_ASN,
        bfd = bfd_block("er-*"),
        timers = bird_timers(),
    )
}

/// Azure's side (AS65515, the ExpressRoute and VPN gateways of the VNet in one): advertises the
/// VNet prefix on both paths and, as Azure does for equal prefixes, prefers ExpressRoute for the
/// return path (local preference 150 vs 100). With APIPA addresses Azure does not initiate the
/// tunnel's session (`passive`): the on-prem side must.
fn azure_bird() -> String {
    format!(
        "# Azure gateway (AS{az}): hybridgw lab failover --bgp\n\
         log stderr all;\nrouter id 198.19.1.1;\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{\n  learn;\n  ipv4 {{\n    import where net = {ONPREM_BGP}/32 && source = RTS_INHERIT;\n    export where source = RTS_BGP;\n  }};\n}}\n\
         protocol static vnet {{ ipv4; route {VNET} blackhole; }}\n\
         {bfd}\
         function onprem_ok() {{\n  if net.len = 0 then return false;\n  if net ~ [ 198.19.1.0/24+, 169.254.0.0/16+ ] then return false;\n  return true;\n}}\n\
         filter from_expressroute {{ if !onprem_ok() then reject; bgp_local_pref = 150; accept; }}\n\
         filter from_vpn {{ if !onprem_ok() then reject; bgp_local_pref = 100; accept; }}\n\
         filter vnet_out {{ if proto = \"vnet\" then accept; reject; }}\n\
         protocol bgp expressroute {{\n  local 192.0.2.6 as {az};\n  neighbor 192.0.2.5 as {msee};\n  direct;\n  bfd on;\n{timers}\
         \x20 ipv4 {{ import filter from_expressroute; export filter vnet_out; next hop self; }};\n}}\n\
         protocol bgp onprem_vpn {{\n  local {AZURE_BGP} as {az};\n  neighbor {ONPREM_BGP} as {ONPREM_ASN};\n  multihop 2;\n  passive on;\n{timers}\
         \x20 ipv4 {{ import filter from_vpn; export filter vnet_out; next hop self; }};\n}}\n",
        msee = failover::bird::MSEE_ASN,
        az = failover::asn::AZURE_GATEWAY_ASN,
        bfd = bfd_block("er0"),
        timers = bird_timers(),
    )
}

/// Starts `bird -f` in `ns` with `conf` (`netns::Bird`); waits (bounded) for its control socket.
pub(crate) fn start_bird(
    ns: &Netns,
    dir: &Path,
    name: &str,
    conf: &str,
) -> Result<(Proc, PathBuf), String> {
    netns::Bird::start(ns, dir, name, conf)
        .map(netns::Bird::into_parts)
        .map_err(|e| format!("starting bird ({name}): {e}"))
}

pub(crate) use netns::bird::birdc;

/// The kernel's route to `prefix` in `ns` (one line per route).
pub(crate) fn kernel_route(ns: &Netns, prefix: &str) -> String {
    ns.exec(["ip", "route", "show", prefix])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// BGP mode: do both gateways route the other side's prefix through `dev`s (on-prem, Azure)?
fn routed(t: &Topo, dev: (&str, &str)) -> bool {
    kernel_route(&t.opr, VNET).contains(&format!("dev {} ", dev.0))
        && kernel_route(&t.azg, ONPREM_NET).contains(&format!("dev {} ", dev.1))
}

/// The three BIRDs of BGP mode, with their control sockets.
struct Birds {
    onprem: (Proc, PathBuf),
    edge: (Proc, PathBuf),
    azure: (Proc, PathBuf),
}

impl Birds {
    fn start(t: &Topo, dir: &Path) -> Result<Birds, String> {
        Ok(Birds {
            onprem: start_bird(&t.opr, dir, "onprem", &onprem_bird()?)?,
            edge: start_bird(&t.erx, dir, "edge", &edge_bird())?,
            azure: start_bird(&t.azg, dir, "azure", &azure_bird())?,
        })
    }

    /// One line per BGP session of `ns`'s BIRD: `name state since info`.
    fn sessions(ns: &Netns, sock: &Path) -> Vec<String> {
        birdc(ns, sock, "show protocols")
            .lines()
            .filter(|l| l.contains(" BGP "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// The BIRD best route (`show route for P primary`) in one line.
    fn best(ns: &Netns, sock: &Path, prefix: &str) -> String {
        birdc(ns, sock, &format!("show route for {prefix} primary all"))
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                l.contains("unicast")
                    || l.starts_with("via ")
                    || l.starts_with("dev ")
                    || l.contains("local_pref")
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn print(&self, t: &Topo, what: &str) {
        println!(
            "lab:   {what}: on-prem BIRD best route {}",
            Self::best(&t.opr, &self.onprem.1, VNET)
        );
        println!(
            "lab:   {what}: Azure BIRD best route {}",
            Self::best(&t.azg, &self.azure.1, ONPREM_NET)
        );
        println!(
            "lab:   {what}: kernel routes: on-prem `{}`, Azure `{}`",
            kernel_route(&t.opr, VNET),
            kernel_route(&t.azg, ONPREM_NET)
        );
        let bfd = birdc(&t.opr, &self.onprem.1, "show bfd sessions");
        let bfd = bfd
            .lines()
            .filter(|l| l.contains("192.0.2."))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("; ");
        println!(
            "lab:   {what}: on-prem BFD {}",
            if bfd.is_empty() { "no session" } else { &bfd }
        );
    }

    fn logs(&self) -> Vec<(&'static str, PathBuf)> {
        [
            ("on-prem bird", &self.onprem.1),
            ("edge bird", &self.edge.1),
            ("azure bird", &self.azure.1),
        ]
        .into_iter()
        .map(|(n, s)| (n, s.with_extension("log")))
        .collect()
    }
}

fn counter(ns: &Netns, dev: &str) -> u64 {
    ns.exec([
        "cat",
        &format!("/sys/class/net/{dev}/statistics/tx_packets"),
    ])
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

/// Which path carries traffic, from tx counters over one second on both gateways:
/// (on-prem er0, on-prem tunnel, Azure er0, Azure tunnel) packets.
fn carried(t: &Topo) -> (u64, u64, u64, u64) {
    let read = || {
        (
            counter(&t.opr, "er0"),
            counter(&t.opr, "hgw-azure"),
            counter(&t.azg, "er0"),
            counter(&t.azg, "hgw-onprem"),
        )
    };
    let a = read();
    std::thread::sleep(Duration::from_secs(1));
    let b = read();
    (
        b.0.saturating_sub(a.0),
        b.1.saturating_sub(a.1),
        b.2.saturating_sub(a.2),
        b.3.saturating_sub(a.3),
    )
}

/// Checks the carrying path from the counters (the pings are ~100/s; probes are 5/s).
fn check_path(t: &Topo, want_er: bool, step: &str, fails: &mut Vec<String>) -> &'static str {
    let (oe, ot, ae, at) = carried(t);
    let (path, ok) = if want_er {
        ("ExpressRoute", oe >= 40 && ot <= 10 && ae >= 40 && at <= 10)
    } else {
        ("VPN", ot >= 40 && oe <= 15 && at >= 40 && ae <= 15)
    };
    println!(
        "lab:   {step}: 1 s of counters: on-prem er0 {oe} / tunnel {ot} packets out, Azure er0 {ae} / tunnel {at} packets out -> {}",
        if ok { path } else { "NOT the expected path" }
    );
    if !ok {
        fails.push(format!(
            "{step}: traffic not on {path} (on-prem er0 {oe}, tun {ot}; Azure er0 {ae}, tun {at})"
        ));
    }
    if ok { path } else { "unexpected" }
}

/// Loss figures of one transition, from `ping -D -i 0.01` output.
struct Loss {
    sent: u32,
    lost: u32,
    gap_ms: f64,
    /// The first unanswered sequence numbers (at most 8) and, for the first, about when it was
    /// sent (seconds since the epoch: the answer time of the last answered one before it plus
    /// 10 ms a sequence number).
    missing: Vec<u32>,
    first_missing_at: Option<f64>,
}

/// With `cut_tail`, pings after the last answered one were still in flight when the ping was
/// interrupted: they are not counted as sent.
fn measure(out: &str, cut_tail: bool) -> Loss {
    let mut ts: Vec<f64> = Vec::new();
    let mut stamps: Vec<(u32, f64)> = Vec::new();
    let mut seqs: Vec<u32> = Vec::new();
    let mut sent = 0;
    for line in out.lines() {
        if let Some(n) = line
            .split(" packets transmitted")
            .next()
            .filter(|_| line.contains("packets transmitted"))
        {
            sent = n.trim().parse().unwrap_or(0);
        }
        if !line.contains("bytes from") {
            continue;
        }
        let Some(seq) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if seqs.contains(&seq) {
            continue; // a duplicate
        }
        seqs.push(seq);
        if let Some(t) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
            .and_then(|(t, _)| t.parse::<f64>().ok())
        {
            ts.push(t);
            stamps.push((seq, t));
        }
    }
    if cut_tail {
        sent = sent.min(seqs.iter().copied().max().unwrap_or(0));
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    let gap = ts
        .windows(2)
        .map(|w| match w {
            [a, b] => b - a,
            _ => 0.0,
        })
        .fold(0.0, f64::max);
    let missing: Vec<u32> = (1..=sent).filter(|q| !seqs.contains(q)).take(8).collect();
    let first_missing_at = missing.first().and_then(|m| {
        stamps
            .iter()
            .filter(|(q, _)| q < m)
            .max_by_key(|(q, _)| *q)
            .map(|(q, t)| t + f64::from(m - q) * 0.01)
    });
    Loss {
        sent,
        lost: sent.saturating_sub(seqs.len() as u32),
        gap_ms: (gap * 1000.0 - 10.0).max(0.0),
        missing,
        first_missing_at,
    }
}

/// Runs `action` one second into a `ping -i 0.01` of `secs` seconds and returns its loss figures.
fn transition(
    t: &Topo,
    secs: u32,
    action: impl FnOnce() -> Result<(), String>,
) -> Result<Loss, String> {
    let count = (secs * 100).to_string();
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| {
            t.oph.exec_output([
                "ping",
                "-D",
                "-n",
                "-i",
                "0.01",
                "-W",
                "1",
                "-c",
                &count,
                "198.19.1.10",
            ])
        });
        std::thread::sleep(Duration::from_secs(1));
        let r = action();
        let o = h.join().map_err(|_| "ping thread panicked".to_string())?;
        r?;
        o.map_err(|e| format!("ping: {e}"))
    })?;
    Ok(measure(&String::from_utf8_lossy(&out.stdout), false))
}

fn primary_states(sock_a: &Path, sock_b: &Path) -> (String, String) {
    let f = |s: &Path| {
        status(s)
            .ok()
            .and_then(|st| {
                st.connections
                    .first()
                    .and_then(|c| c.failover.as_ref().map(|f| f.primary_path.clone()))
            })
            .unwrap_or_else(|| "?".into())
    };
    (f(sock_a), f(sock_b))
}

/// Like [`transition`], but the ping stops early: `settled` is polled (every 100 ms, at most
/// `max_secs`) after `action`, and the ping runs on for 1.5 s once it holds, then is interrupted
/// (SIGINT: it prints its summary). Returns the loss figures and how long settling took.
fn transition_until(
    t: &Topo,
    max_secs: u32,
    action: impl FnOnce() -> Result<(), String>,
    settled: impl Fn() -> bool,
) -> Result<(Loss, Option<Duration>), String> {
    let count = ((max_secs + 3) * 100).to_string();
    let mut cmd = t.oph.command("ping");
    cmd.args([
        "-D",
        "-n",
        "-i",
        "0.01",
        "-W",
        "1",
        "-c",
        &count,
        "198.19.1.10",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut ping = t.oph.spawn_command(cmd).map_err(|e| format!("ping: {e}"))?;
    let mut stdout = ping.take_stdout().ok_or("ping: no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    std::thread::sleep(Duration::from_secs(1));
    let acted_at = epoch();
    let acted = action();
    let t0 = Instant::now();
    let mut took = None;
    if acted.is_ok() {
        while t0.elapsed() < Duration::from_secs(u64::from(max_secs)) && !interrupted() {
            if settled() {
                took = Some(t0.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let _ = ping.signal(nix::sys::signal::Signal::SIGINT);
    let _ = ping.wait_timeout(Duration::from_secs(5));
    let _ = ping.stop();
    let out = reader
        .join()
        .map_err(|_| "ping reader panicked".to_string())?;
    acted?;
    let l = measure(&out, true);
    if let Some(at) = l.first_missing_at {
        println!(
            "lab:   unanswered pings {:?}{}: the first sent {:+.0} ms from the change; routes moved at {}",
            l.missing,
            if l.lost as usize > l.missing.len() {
                " ..."
            } else {
                ""
            },
            (at - acted_at) * 1000.0,
            took.map(|d| format!("{:+.0} ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok((l, took))
}

/// Seconds since the epoch (the clock of `ping -D`).
fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn run(format: LogFormat, mode: Mode) -> Result<(), String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find my own binary: {e}"))?;
    let t_start = Instant::now();
    let scratch = Scratch::new(match mode {
        Mode::Static => "labfo",
        Mode::Bgp => "labfo-bgp",
    })
    .map_err(|e| format!("scratch directory: {e}"))?;
    let dir = scratch.0.clone();
    println!(
        "lab: {} mode; building namespaces (on-prem host, on-prem router, ExpressRoute edge, internet, Azure VPN gateway, Azure host)",
        match mode {
            Mode::Static => "static",
            Mode::Bgp => "BGP",
        }
    );
    let t = build(mode)?;
    println!(
        "lab: {} 198.18.1.10 -- {} (hybridgw) == ExpressRoute er0 192.0.2.1 <-> {} <-> 192.0.2.6 er0 == {} (hybridgw) -- {} 198.19.1.10; VPN over {} (203.0.113.0/30, 198.51.100.0/30)",
        t.oph.name(),
        t.opr.name(),
        t.erx.name(),
        t.azg.name(),
        t.azh.name(),
        t.inet.name()
    );
    let psk_file = dir.join("lab.psk");
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("random PSK: {e}"))?;
    write_private(&psk_file, hex::encode(b).as_bytes()).map_err(|e| e.to_string())?;
    let (onprem_cfg, azure_cfg) = match mode {
        Mode::Static => (
            config(
                "azure",
                ("203.0.113.1", "198.51.100.2"),
                &psk_file,
                "hgw-azure",
                "198.19.1.0/24",
                ("192.0.2.1", "192.0.2.6"),
                "initiate",
            ),
            config(
                "onprem",
                ("198.51.100.2", "203.0.113.1"),
                &psk_file,
                "hgw-onprem",
                "198.18.1.0/24",
                ("192.0.2.6", "192.0.2.1"),
                "ResponderOnly",
            ),
        ),
        Mode::Bgp => (
            bgp_config(
                "azure",
                ("203.0.113.1", "198.51.100.2"),
                &psk_file,
                "hgw-azure",
                (ONPREM_BGP, AZURE_BGP),
                "initiate",
                &format!(
                    "\n[connection.bgp]\nonprem_asn = {ONPREM_ASN}\nazure_peer = \"{AZURE_BGP}\"\n"
                ),
            ),
            bgp_config(
                "onprem",
                ("198.51.100.2", "203.0.113.1"),
                &psk_file,
                "hgw-onprem",
                (AZURE_BGP, ONPREM_BGP),
                "ResponderOnly",
                "",
            ),
        ),
    };
    let (onprem_conf, azure_conf) = (dir.join("onprem.toml"), dir.join("azure.toml"));
    write_private(&onprem_conf, onprem_cfg.as_bytes()).map_err(|e| e.to_string())?;
    write_private(&azure_conf, azure_cfg.as_bytes()).map_err(|e| e.to_string())?;
    let (onprem_sock, azure_sock) = (dir.join("onprem.sock"), dir.join("azure.sock"));
    let (onprem_log, azure_log) = (dir.join("onprem.log"), dir.join("azure.log"));
    let birds = match mode {
        Mode::Static => None,
        Mode::Bgp => Some(Birds::start(&t, &dir)?),
    };
    if let Some(b) = &birds {
        println!(
            "lab: BIRD on the on-prem router pid {} (AS{ONPREM_ASN}), the ExpressRoute edge pid {} (AS{}), the Azure gateway pid {} (AS{}); BFD {BFD_MS} ms x {BFD_MULT} on the circuit",
            b.onprem.0.pid(),
            b.edge.0.pid(),
            failover::bird::MSEE_ASN,
            b.azure.0.pid(),
            failover::asn::AZURE_GATEWAY_ASN
        );
    }
    let azure: Proc = spawn_daemon(&t.azg, &exe, &azure_conf, &azure_sock, &azure_log, format)
        .map_err(|e| e.to_string())?;
    crate::lab::wait_for(
        || status(&azure_sock).is_ok() || !azure.is_running(),
        Duration::from_secs(20),
    );
    let onprem: Proc = spawn_daemon(
        &t.opr,
        &exe,
        &onprem_conf,
        &onprem_sock,
        &onprem_log,
        format,
    )
    .map_err(|e| e.to_string())?;
    match mode {
        Mode::Static => println!(
            "lab: hybridgw on-prem (initiator) pid {}, Azure side (responder) pid {}, both with [connection.failover] on er0 ({INTERVAL_MS} ms x 3, {HOLD_DOWN_S} s hold-down, tunnel routes at metric 200)",
            onprem.pid(),
            azure.pid()
        ),
        Mode::Bgp => println!(
            "lab: hybridgw on-prem (initiator) pid {}, Azure side (responder) pid {}; tunnel addresses {ONPREM_BGP}/32 and {AZURE_BGP}/32, each routing the peer's BGP address into the tunnel",
            onprem.pid(),
            azure.pid()
        ),
    }
    let mut logs: Vec<(&str, PathBuf)> = vec![
        ("on-prem", onprem_log.clone()),
        ("azure", azure_log.clone()),
    ];
    if let Some(b) = &birds {
        logs.extend(b.logs());
    }
    let dump_logs = || {
        for (n, p) in &logs {
            eprintln!(
                "---- {n} log ({}) ----\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            );
        }
    };
    wait_established(&onprem_sock, &[&onprem, &azure], Duration::from_secs(30))
        .inspect_err(|_| dump_logs())?;
    wait_established(&azure_sock, &[&azure], Duration::from_secs(10))
        .inspect_err(|_| dump_logs())?;
    match &birds {
        None => {
            let up = crate::lab::wait_for(
                || primary_states(&onprem_sock, &azure_sock) == ("up".into(), "up".into()),
                Duration::from_secs(15),
            );
            if !up {
                dump_logs();
                return Err(format!(
                    "the path monitors did not declare ExpressRoute up: {:?}",
                    primary_states(&onprem_sock, &azure_sock)
                ));
            }
            println!(
                "lab: tunnel established (standing by on the internet path), both path monitors say ExpressRoute is up"
            );
        }
        Some(b) => {
            // Every session up, the VPN routes learned as backups, the ExpressRoute ones in use.
            let t0 = Instant::now();
            let converged = crate::lab::wait_for(
                || {
                    let s = Birds::sessions(&t.opr, &b.onprem.1);
                    s.len() == 2
                        && s.iter().all(|l| l.contains("Established"))
                        && birdc(&t.opr, &b.onprem.1, &format!("show route for {VNET} all"))
                            .contains("azure_azure_hub")
                        && birdc(
                            &t.azg,
                            &b.azure.1,
                            &format!("show route for {ONPREM_NET} all"),
                        )
                        .contains("onprem_vpn")
                        && routed(&t, ("er0", "er0"))
                },
                Duration::from_secs(60),
            );
            if !converged {
                for (ns, sock) in [(&t.opr, &b.onprem.1), (&t.azg, &b.azure.1)] {
                    eprintln!("{}", birdc(ns, sock, "show protocols"));
                    eprintln!("{}", birdc(ns, sock, "show route all"));
                }
                dump_logs();
                return Err("BGP did not converge within 60 s".into());
            }
            println!(
                "lab: tunnel established; BGP converged {:.1} s later:",
                t0.elapsed().as_secs_f64()
            );
            for (who, ns, sock) in [
                ("on-prem", &t.opr, &b.onprem.1),
                ("edge", &t.erx, &b.edge.1),
                ("Azure", &t.azg, &b.azure.1),
            ] {
                for l in Birds::sessions(ns, sock) {
                    println!("lab:   {who} BIRD session: {l}");
                }
            }
            b.print(&t, "converged");
        }
    }

    // The long TCP transfer runs through every step.
    let total = match mode {
        Mode::Static => Duration::from_secs(48),
        Mode::Bgp => Duration::from_secs(35),
    };
    let tcp_start = Instant::now();
    let mut steps_done = Duration::ZERO;
    let mut fails: Vec<String> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let tcp = std::thread::scope(
        |s| -> Result<Result<crate::lab::TcpResult, String>, String> {
            let tcp = s.spawn(|| {
                crate::lab::tcp_transfer(
                    &t.oph,
                    &t.azh,
                    SocketAddr::from((AZURE_HOST, 5201)),
                    total,
                )
            });
            std::thread::sleep(Duration::from_millis(500));
            let r = match &birds {
                None => steps(&t, &onprem_sock, &azure_sock, &mut fails, &mut rows),
                Some(b) => bgp_steps(&t, b, &mut fails, &mut rows),
            };
            steps_done = tcp_start.elapsed();
            let tr = tcp.join().map_err(|_| "TCP thread panicked".to_string())?;
            r?;
            Ok(tr)
        },
    );
    let tcp = match tcp {
        Ok(r) => r,
        Err(e) => {
            dump_logs();
            return Err(e);
        }
    };
    println!(
        "lab: the steps took {:.1} s of the {} s TCP transfer",
        steps_done.as_secs_f64(),
        total.as_secs()
    );
    if steps_done >= total {
        // The transfer must span every transition for "survived" to mean anything.
        fails.push(format!(
            "the steps took {:.1} s, longer than the {} s TCP transfer",
            steps_done.as_secs_f64(),
            total.as_secs()
        ));
    }
    let tcp_ok = match &tcp {
        Ok(r) => {
            println!(
                "lab: TCP transfer survived every transition: {} MB checked in {:.1} s ({:.1} Mbit/s)",
                r.bytes / 1_000_000,
                r.seconds,
                r.mbit_per_s()
            );
            true
        }
        Err(e) => {
            println!("lab: TCP transfer FAILED: {e}");
            fails.push(format!("TCP transfer: {e}"));
            false
        }
    };
    // What `hybridgw status` shows on both gateways (the failover lines; the tunnel's routes).
    for (side, sock) in [("on-prem", &onprem_sock), ("Azure", &azure_sock)] {
        match status(sock) {
            Ok(st) => {
                for line in crate::control::render(&st)
                    .lines()
                    .filter(|l| l.contains("failover") || l.contains(" via "))
                {
                    println!("lab: {side} `hybridgw status`: {}", line.trim());
                }
                if mode == Mode::Static && st.connections.iter().any(|c| c.failover.is_none()) {
                    fails.push(format!("{side}: status has no failover block"));
                }
            }
            Err(e) => fails.push(format!("{side}: status: {e}")),
        }
    }
    print_table(mode, &rows, tcp_ok);
    let on_exit = onprem.stop().map_err(|e| e.to_string())?;
    let az_exit = azure.stop().map_err(|e| e.to_string())?;
    println!("lab: daemons stopped ({on_exit}, {az_exit})");
    if let Some(b) = birds {
        let exits: Vec<String> = [b.onprem.0, b.edge.0, b.azure.0]
            .iter()
            .map(|p| {
                p.stop()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string())
            })
            .collect();
        println!("lab: BIRDs stopped ({})", exits.join(", "));
    }
    drop(t);
    println!(
        "lab: namespaces removed; total {:.1} s",
        t_start.elapsed().as_secs_f64()
    );
    if fails.is_empty() {
        println!("lab: PASS: failover and failback held in both cases (link down, blackhole)");
        Ok(())
    } else {
        dump_logs();
        Err(fails.join("; "))
    }
}

/// One transition's figures, for the closing table.
struct Row {
    what: &'static str,
    loss: Loss,
    path: &'static str,
    /// How long until both gateways routed through the new path (BGP mode).
    settled: Option<Duration>,
}

/// The closing table: one line per transition, with the targets of the reference architecture
/// (failover under 1 s of lost traffic, failback without loss).
fn print_table(mode: Mode, rows: &[Row], tcp_ok: bool) {
    println!(
        "lab: SUMMARY ({} mode)",
        match mode {
            Mode::Static => "static",
            Mode::Bgp => "BGP",
        }
    );
    println!(
        "lab: | transition                | without traffic | lost    | of   | path after   | routes moved | TCP       | target |"
    );
    for r in rows {
        let failback = r.what.starts_with("failback");
        let met = if failback {
            r.loss.lost == 0
        } else {
            r.loss.gap_ms < 1000.0
        };
        println!(
            "lab: | {:<25} | {:>12.0} ms | {:>7} | {:>4} | {:<12} | {:>12} | {:<9} | {:<6} |",
            r.what,
            r.loss.gap_ms,
            r.loss.lost,
            r.loss.sent,
            r.path,
            r.settled
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            if tcp_ok { "survived" } else { "BROKEN" },
            if met { "met" } else { "missed" },
        );
    }
    println!(
        "lab: targets: failover under 1000 ms without traffic, failback 0 packets lost, the TCP transfer survives"
    );
}

/// Prints one transition's figures and checks them: a failover loses under 2 s of traffic, a
/// failback (almost) nothing.
fn report(
    what: &'static str,
    l: Loss,
    path: &'static str,
    settled: Option<Duration>,
    fails: &mut Vec<String>,
    rows: &mut Vec<Row>,
) {
    println!(
        "lab: RESULT {what}: time without traffic {:.0} ms, packets lost {} of {}, path now {path}",
        l.gap_ms, l.lost, l.sent
    );
    let failback = what.starts_with("failback");
    let ok = if failback {
        l.lost <= 20 && l.gap_ms < 500.0
    } else {
        l.gap_ms < 2000.0 && l.lost <= 200
    };
    if l.sent == 0 || !ok {
        fails.push(format!(
            "{what}: {:.0} ms without traffic, {} of {} pings lost",
            l.gap_ms, l.lost, l.sent
        ));
    }
    rows.push(Row {
        what,
        loss: l,
        path,
        settled,
    });
}

fn check_int() -> Result<(), String> {
    if interrupted() {
        Err("interrupted".to_string())
    } else {
        Ok(())
    }
}

fn steps(
    t: &Topo,
    onprem_sock: &Path,
    azure_sock: &Path,
    fails: &mut Vec<String>,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    println!("lab: step 1: connectivity over ExpressRoute");
    check_path(t, true, "step 1", fails);
    check_int()?;
    let settle = (HOLD_DOWN_S + 4) as u32;

    println!("lab: step 2a: the circuit is cut (link down on the ExpressRoute edge)");
    let l = transition(t, 4, || {
        sh(&t.erx, "ip link set er-op down")?;
        sh(&t.erx, "ip link set er-az down")
    })?;
    let p = check_path(t, false, "step 3 (after link down)", fails);
    report("failover/link-down", l, p, None, fails, rows);
    println!(
        "lab:   path monitors: {:?}",
        primary_states(onprem_sock, azure_sock)
    );
    check_int()?;

    println!("lab: step 4a: the circuit is restored (link up)");
    let l = transition(t, settle, || {
        sh(&t.erx, "ip link set er-op up")?;
        sh(&t.erx, "ip link set er-az up")?;
        // The edge relearns its routes (the kernel flushed them with the links), as its BGP would.
        sh(&t.erx, "ip route replace 198.18.1.0/24 via 192.0.2.1")?;
        sh(&t.erx, "ip route replace 198.19.1.0/24 via 192.0.2.6")
    })?;
    let p = check_path(t, true, "step 4 (after link up)", fails);
    report("failback/link-up", l, p, None, fails, rows);
    check_int()?;

    println!(
        "lab: step 2b: the circuit is up but blackholes (forwarding dropped on the ExpressRoute edge)"
    );
    let l = transition(t, 5, || {
        t.erx
            .nft("table inet hgwbh {\n chain cut {\n  type filter hook forward priority 0; policy drop;\n }\n}\n")
            .map_err(|e| format!("nft: {e}"))
    })?;
    let p = check_path(t, false, "step 3 (blackhole)", fails);
    report("failover/blackhole", l, p, None, fails, rows);
    println!(
        "lab:   path monitors: {:?}",
        primary_states(onprem_sock, azure_sock)
    );
    check_int()?;

    println!("lab: step 4b: forwarding restored");
    let l = transition(t, settle, || sh(&t.erx, "nft delete table inet hgwbh"))?;
    let p = check_path(t, true, "step 4 (blackhole healed)", fails);
    report("failback/blackhole-healed", l, p, None, fails, rows);
    check_int()?;
    Ok(())
}

/// BGP mode's steps: the same cuts, but the routes move because BIRD's sessions (and BFD) say
/// so. The blackhole here is the circuit carrying nothing with its carrier up (the edge drops
/// every packet on both circuit links, BFD included): BFD is a per-hop liveness check (RFC 5881),
/// so that is what it can detect; a router that keeps answering BFD but forwards nothing is only
/// caught by an end-to-end probe (static mode's path monitor).
fn bgp_steps(
    t: &Topo,
    b: &Birds,
    fails: &mut Vec<String>,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let on_vpn = || routed(t, ("hgw-azure", "hgw-onprem"));
    let on_er = || routed(t, ("er0", "er0"));
    let not_settled = |what: &str, fails: &mut Vec<String>| {
        fails.push(format!("{what}: the routes did not move"));
        println!("lab:   {what}: the routes did NOT move in time");
    };
    println!("lab: step 1: connectivity over ExpressRoute");
    check_path(t, true, "step 1", fails);
    check_int()?;

    println!("lab: step 2a: the circuit is cut (link down on the ExpressRoute edge)");
    let (l, took) = transition_until(
        t,
        10,
        || {
            sh(&t.erx, "ip link set er-op down")?;
            sh(&t.erx, "ip link set er-az down")
        },
        on_vpn,
    )?;
    if took.is_none() {
        not_settled("failover/link-down", fails);
    }
    let p = check_path(t, false, "step 3 (after link down)", fails);
    b.print(t, "after link down");
    report("failover/link-down", l, p, took, fails, rows);
    check_int()?;

    println!(
        "lab: step 4a: the circuit is restored (link up; BGP re-establishes, BIRD moves the routes back)"
    );
    let (l, took) = transition_until(
        t,
        30,
        || {
            sh(&t.erx, "ip link set er-op up")?;
            sh(&t.erx, "ip link set er-az up")
        },
        on_er,
    )?;
    if took.is_none() {
        not_settled("failback/link-up", fails);
    }
    let p = check_path(t, true, "step 4 (after link up)", fails);
    b.print(t, "after link up");
    report("failback/link-up", l, p, took, fails, rows);
    check_int()?;
    // BFD back up on the circuit before it is cut again.
    crate::lab::wait_for(
        || {
            birdc(&t.opr, &b.onprem.1, "show bfd sessions")
                .lines()
                .any(|l| l.contains("192.0.2.2") && l.contains(" Up "))
        },
        Duration::from_secs(10),
    );

    println!(
        "lab: step 2b: the circuit is up but blackholes (the edge drops everything on both circuit links, carrier up: only BFD can tell)"
    );
    let (l, took) = transition_until(
        t,
        10,
        || {
            t.erx
                .nft(
                    "table inet hgwbh {\n\
                     chain i { type filter hook input priority -10; policy drop; }\n\
                     chain f { type filter hook forward priority -10; policy drop; }\n\
                     chain o { type filter hook output priority -10; policy drop; }\n\
                     }\n",
                )
                .map_err(|e| format!("nft: {e}"))
        },
        on_vpn,
    )?;
    if took.is_none() {
        not_settled("failover/blackhole", fails);
    }
    let p = check_path(t, false, "step 3 (blackhole)", fails);
    b.print(t, "blackhole");
    let carrier = t
        .opr
        .exec(["ip", "link", "show", "er0"])
        .unwrap_or_default()
        .contains("LOWER_UP");
    println!(
        "lab:   blackhole: on-prem er0 carrier {} (so link state could not tell)",
        if carrier { "up" } else { "DOWN" }
    );
    if !carrier {
        fails.push("blackhole: the circuit link lost its carrier".into());
    }
    report("failover/blackhole", l, p, took, fails, rows);
    check_int()?;

    println!("lab: step 4b: forwarding restored");
    let (l, took) = transition_until(t, 30, || sh(&t.erx, "nft delete table inet hgwbh"), on_er)?;
    if took.is_none() {
        not_settled("failback/blackhole-healed", fails);
    }
    let p = check_path(t, true, "step 4 (blackhole healed)", fails);
    b.print(t, "blackhole healed");
    report("failback/blackhole-healed", l, p, took, fails, rows);
    check_int()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping_output(answered: &[u32], sent: u32) -> String {
        let mut s = String::from("PING 198.19.1.10 (198.19.1.10) 56(84) bytes of data.\n");
        for q in answered {
            s.push_str(&format!(
                "[1700000000.{:06}] 64 bytes from 198.19.1.10: icmp_seq={q} ttl=62 time=0.2 ms\n",
                q * 10_000
            ));
        }
        s.push_str(&format!(
            "\n--- 198.19.1.10 ping statistics ---\n{sent} packets transmitted, {} received\n",
            answered.len()
        ));
        s
    }

    #[test]
    fn measure_counts_losses_gap_and_the_first_missing() {
        // 1..=20 sent, 8..=10 unanswered: 3 lost, a 40 ms hole minus the 10 ms interval.
        let answered: Vec<u32> = (1..=20).filter(|q| !(8..=10).contains(q)).collect();
        let l = measure(&ping_output(&answered, 20), false);
        assert_eq!((l.sent, l.lost), (20, 3));
        assert_eq!(l.missing, vec![8, 9, 10]);
        assert!((l.gap_ms - 30.0).abs() < 0.5, "{}", l.gap_ms);
        let at = l.first_missing_at.expect("a first missing ping");
        assert!((at - 1_700_000_000.08).abs() < 1e-6, "{at}");
    }

    #[test]
    fn measure_ignores_the_pings_in_flight_when_interrupted() {
        let answered: Vec<u32> = (1..=18).collect();
        let cut = measure(&ping_output(&answered, 20), true);
        assert_eq!((cut.sent, cut.lost), (18, 0));
        assert!(cut.missing.is_empty());
        let full = measure(&ping_output(&answered, 20), false);
        assert_eq!((full.sent, full.lost), (20, 2));
        let none = measure("garbage\n", true);
        assert_eq!((none.sent, none.lost), (0, 0));
    }
}
