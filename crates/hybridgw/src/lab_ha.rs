//! `hybridgw lab ha`: Azure's dual-redundancy design in network namespaces — an active-active
//! Azure VPN gateway (two instances, each its own public address and BGP address) and two
//! on-prem hybridgw appliances, four tunnels in a full mesh, BGP over every tunnel (BIRD), an
//! on-prem router spreading flows over both appliances with ECMP and BFD. Under continuous
//! 10 ms probes (16 UDP flows each way) and four TCP flows it takes, in turn and each restored
//! before the next: one Azure instance (killed), one appliance (killed), one appliance's
//! underlay link (cut), one appliance (drained with `hybridgw drain`). A closing table shows,
//! per event and direction, the longest time a flow went without traffic, the probes lost,
//! which tunnels carried traffic before and after, and whether the TCP flows survived; the lab
//! fails when an event misses its target.
//!
//! Topology (documentation and benchmarking ranges only):
//! ```text
//!                          +-- 198.18.2.0/30 -- [apa: hybridgw + BIRD] wan 203.0.113.1 --+                      +-- 198.51.100.2 [az0: hybridgw + BIRD AS65515] 198.19.0.0/30 --+
//! host 198.18.1.10 -- [opr: BIRD router]                                                   [inet]                                                                        [azh: BIRD, host 198.19.1.10]
//!                          +-- 198.18.2.4/30 -- [apb: hybridgw + BIRD] wan 203.0.113.5 --+                      +-- 198.51.100.6 [az1: hybridgw + BIRD AS65515] 198.19.0.4/30 --+
//!  BGP over the tunnels: A 169.254.21.1 and B 169.254.21.5 (one address per appliance, on both its tunnels)
//!  with instance 0 at 169.254.21.2 and instance 1 at 169.254.22.2
//! ```

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns::{Netns, Proc, veth_pair};

use crate::lab::{Scratch, interrupted, spawn_daemon, status, wait_for, write_private};
use crate::lab_failover::{birdc, kernel_route, sh, start_bird};
use crate::lab_probes::{Flows, Probes};
use crate::logging::LogFormat;

const ONPREM_ASN: u32 = 65010;
const AZURE_ASN: u32 = 65515;
const ONPREM_NET: &str = "198.18.1.0/24";
const VNET: &str = "198.19.1.0/24";
const ONPREM_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const AZURE_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
/// BFD between the on-prem router and the appliances, and inside the "VNet": 100 ms x 3.
const BFD_MS: u32 = 100;
const BFD_MULT: u8 = 3;
/// Our side's DPD (hybridgw on the appliances): a probe after 2 s of silence, dead 9 s later.
const OUR_DPD: (u64, u64) = (2, 9);
/// Probe flows per direction and their interval.
const FLOWS: u16 = 16;
const PROBE_MS: u64 = 10;
const PROBE_PORT: u16 = 5301;
const TCP_FLOWS: u16 = 4;
const TCP_PORT: u16 = 5401;

/// The two appliances and the two Azure instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Box_ {
    A,
    B,
}

impl Box_ {
    fn name(self) -> &'static str {
        match self {
            Box_::A => "apa",
            Box_::B => "apb",
        }
    }
    fn wan(self) -> &'static str {
        match self {
            Box_::A => "203.0.113.1",
            Box_::B => "203.0.113.5",
        }
    }
    fn lan(self) -> Ipv4Addr {
        match self {
            Box_::A => Ipv4Addr::new(198, 18, 2, 2),
            Box_::B => Ipv4Addr::new(198, 18, 2, 6),
        }
    }
    /// The appliance's BGP address, on both its tunnels: on Azure each appliance is one local
    /// network gateway, and a local network gateway has one BGP address.
    fn bgp(self) -> Ipv4Addr {
        match self {
            Box_::A => Ipv4Addr::new(169, 254, 21, 1),
            Box_::B => Ipv4Addr::new(169, 254, 21, 5),
        }
    }
}

const AZ_WAN: [&str; 2] = ["198.51.100.2", "198.51.100.6"];
const AZ_BGP: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 21, 2),
    Ipv4Addr::new(169, 254, 22, 2),
];
/// The TUN devices of an appliance: to instance 0 and 1.
const APPLIANCE_TUNS: [&str; 2] = ["hgw-azure", "hgw-azure-2"];

/// Options of `hybridgw lab ha`.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Azure's DPD timeout in seconds (45 is Azure's default, 9 its minimum).
    pub azure_dpd_timeout: u64,
}

/// Entry point.
pub fn main(format: LogFormat, opts: Options) -> ExitCode {
    if !(9..=3600).contains(&opts.azure_dpd_timeout) {
        eprintln!("hybridgw lab ha: --azure-dpd-timeout must be 9-3600 s (Azure's range)");
        return ExitCode::FAILURE;
    }
    crate::lab::as_root("hybridgw lab ha", || run(format, opts))
}

struct Topo {
    oph: Netns,
    opr: Netns,
    ap: [Netns; 2],
    inet: Netns,
    az: [Netns; 2],
    azh: Netns,
}

impl Topo {
    fn ap(&self, b: Box_) -> &Netns {
        &self.ap[b as usize]
    }
}

fn build() -> Result<Topo, String> {
    let mk = || Netns::new("hgwha").map_err(|e| format!("namespace: {e}"));
    let t = Topo {
        oph: mk()?,
        opr: mk()?,
        ap: [mk()?, mk()?],
        inet: mk()?,
        az: [mk()?, mk()?],
        azh: mk()?,
    };
    let v = |a: &Netns, an: &str, b: &Netns, bn: &str| {
        veth_pair(a, an, b, bn).map_err(|e| format!("veth {an}/{bn}: {e}"))
    };
    v(&t.oph, "eth0", &t.opr, "host0")?;
    v(&t.opr, "to-apa", &t.ap[0], "lan0")?;
    v(&t.opr, "to-apb", &t.ap[1], "lan0")?;
    v(&t.ap[0], "wan0", &t.inet, "in-apa")?;
    v(&t.ap[1], "wan0", &t.inet, "in-apb")?;
    v(&t.inet, "in-az0", &t.az[0], "wan0")?;
    v(&t.inet, "in-az1", &t.az[1], "wan0")?;
    v(&t.az[0], "vnet0", &t.azh, "az0")?;
    v(&t.az[1], "vnet0", &t.azh, "az1")?;
    let router = [
        "sysctl -qw net.ipv4.ip_forward=1",
        "sysctl -qw net.ipv4.conf.all.rp_filter=0",
        "sysctl -qw net.ipv4.conf.default.rp_filter=0",
        // Flows spread over the ECMP next hops by their ports, not only their addresses.
        "sysctl -qw net.ipv4.fib_multipath_hash_policy=1",
    ];
    let cmds: Vec<(&Netns, Vec<&str>)> = vec![
        (
            &t.oph,
            vec![
                "ip addr add 198.18.1.10/24 dev eth0",
                "ip link set eth0 mtu 1400",
                "ip link set eth0 up",
                "ip route add default via 198.18.1.1",
            ],
        ),
        (
            &t.opr,
            vec![
                "ip addr add 198.18.1.1/24 dev host0",
                "ip addr add 198.18.2.1/30 dev to-apa",
                "ip addr add 198.18.2.5/30 dev to-apb",
                "ip link set host0 up",
                "ip link set to-apa up",
                "ip link set to-apb up",
            ],
        ),
        (
            &t.ap[0],
            vec![
                "ip addr add 198.18.2.2/30 dev lan0",
                "ip addr add 203.0.113.1/30 dev wan0",
                "ip link set lan0 up",
                "ip link set wan0 up",
                "ip route add 198.51.100.0/24 via 203.0.113.2",
                // The way back to on-prem when BGP has none (a drained appliance still delivers
                // what is in flight): worse than BIRD's route.
                "ip route add 198.18.1.0/24 via 198.18.2.1 metric 500",
            ],
        ),
        (
            &t.ap[1],
            vec![
                "ip addr add 198.18.2.6/30 dev lan0",
                "ip addr add 203.0.113.5/30 dev wan0",
                "ip link set lan0 up",
                "ip link set wan0 up",
                "ip route add 198.51.100.0/24 via 203.0.113.6",
                "ip route add 198.18.1.0/24 via 198.18.2.5 metric 500",
            ],
        ),
        (
            &t.inet,
            vec![
                "ip addr add 203.0.113.2/30 dev in-apa",
                "ip addr add 203.0.113.6/30 dev in-apb",
                "ip addr add 198.51.100.1/30 dev in-az0",
                "ip addr add 198.51.100.5/30 dev in-az1",
                "ip link set in-apa up",
                "ip link set in-apb up",
                "ip link set in-az0 up",
                "ip link set in-az1 up",
                "sysctl -qw net.ipv4.ip_forward=1",
            ],
        ),
        (
            &t.az[0],
            vec![
                "ip addr add 198.51.100.2/30 dev wan0",
                "ip addr add 198.19.0.1/30 dev vnet0",
                "ip link set wan0 up",
                "ip link set vnet0 up",
                "ip route add 203.0.113.0/24 via 198.51.100.1",
            ],
        ),
        (
            &t.az[1],
            vec![
                "ip addr add 198.51.100.6/30 dev wan0",
                "ip addr add 198.19.0.5/30 dev vnet0",
                "ip link set wan0 up",
                "ip link set vnet0 up",
                "ip route add 203.0.113.0/24 via 198.51.100.5",
            ],
        ),
        (
            &t.azh,
            vec![
                "ip addr add 198.19.0.2/30 dev az0",
                "ip addr add 198.19.0.6/30 dev az1",
                "ip link set az0 up",
                "ip link set az1 up",
                // The VNet's host (no dummy devices in this kernel: the loopback carries it).
                "ip addr add 198.19.1.10/32 dev lo",
            ],
        ),
    ];
    for (ns, list) in &cmds {
        for c in list {
            sh(ns, c)?;
        }
    }
    for (k, ns) in [&t.opr, &t.ap[0], &t.ap[1], &t.az[0], &t.az[1], &t.azh]
        .into_iter()
        .enumerate()
    {
        for c in router {
            sh(ns, c)?;
        }
        // Each router its own hash seed, as separate boxes have: with one seed everywhere the
        // appliance would hash each flow the way the router did and always pick the same of
        // its two tunnels (ECMP polarisation).
        sh(
            ns,
            &format!(
                "sysctl -qw net.ipv4.fib_multipath_hash_seed={}",
                0x9e37_79b9u32.wrapping_mul(k as u32 + 1)
            ),
        )?;
    }
    // Pace the on-prem host so the probes are never starved by the TCP flows.
    t.oph
        .rate_limit("eth0", 40_000)
        .map_err(|e| format!("rate limit: {e}"))?;
    Ok(t)
}

// ------------------------------------------------------------------ configurations

fn appliance_config(b: Box_, psk: &Path, bird_sock: &Path) -> String {
    format!(
        r#"# hybridgw lab ha: appliance {name}, two tunnels (one per Azure instance), BGP over each
[drain]
quiet_ms = 500
timeout_seconds = 20

[[connection]]
name = "azure"
local_address = "{wan}"
remote_address = ["{az0}", "{az1}"]
psk_file = "{psk}"
behaviour = "initiate"
ike_proposals = "aes256-sha256-modp2048"
esp_proposals = "aes256gcm16"
tun_address = "{bgp}/32"

[connection.dpd]
delay_seconds = {dd}
timeout_seconds = {dt}
action = "restart"

[connection.retry]
initial_seconds = 1
max_seconds = 4

[connection.bgp]
onprem_asn = {ONPREM_ASN}
azure_peer = ["{p0}", "{p1}"]
bird_socket = "{sock}"
# A drain closes the session to the on-prem router: the router moves to the other appliance,
# and Azure, which then hears the on-prem prefix only from the other appliance, moves too.
drain_protocols = ["onprem_router"]
"#,
        name = b.name(),
        wan = b.wan(),
        az0 = AZ_WAN[0],
        az1 = AZ_WAN[1],
        psk = psk.display(),
        bgp = b.bgp(),
        dd = OUR_DPD.0,
        dt = OUR_DPD.1,
        p0 = AZ_BGP[0],
        p1 = AZ_BGP[1],
        sock = bird_sock.display(),
    )
}

/// Azure instance `i`: one connection per appliance (each on-prem device is its own local
/// network gateway and connection on Azure), the instance's BGP address on both tunnels, the
/// appliance's BGP address routed into its tunnel. Azure's DPD: 45 s by default, 9 s minimum.
fn azure_config(i: usize, psk: &Path, dpd_timeout: u64) -> String {
    let mut s = format!("# hybridgw lab ha: Azure gateway instance {i}\n");
    for b in [Box_::A, Box_::B] {
        s.push_str(&format!(
            r#"
[[connection]]
name = "onprem-{n}"
local_address = "{wan}"
remote_address = "{peer}"
psk_file = "{psk}"
behaviour = "ResponderOnly"
ike_proposals = "aes256-sha256-modp2048"
esp_proposals = "aes256gcm16"
tun_name = "hgw-{n}"
tun_address = "{mine}/32"
remote_prefixes = ["{theirs}/32"]

[connection.dpd]
delay_seconds = 3
timeout_seconds = {dpd_timeout}
action = "clear"
"#,
            n = &b.name()[2..],
            wan = AZ_WAN[i],
            peer = b.wan(),
            psk = psk.display(),
            mine = AZ_BGP[i],
            theirs = b.bgp(),
        ));
    }
    s
}

fn timers() -> String {
    // Azure's 60/180 s keepalive/hold; quick reconnects in the lab.
    "  hold time 180;\n  keepalive time 60;\n  connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 5;\n".to_string()
}

fn bfd(ifpattern: &str) -> String {
    format!(
        "protocol bfd {{\n  interface \"{ifpattern}\" {{\n    min rx interval {BFD_MS} ms;\n    min tx interval {BFD_MS} ms;\n    idle tx interval 1000 ms;\n    multiplier {BFD_MULT};\n  }};\n}}\n"
    )
}

/// Azure instance `i`'s BGP (AS65515): eBGP over each tunnel (passive: with APIPA addresses
/// Azure does not initiate; no BFD, 60/180 s, as Azure), iBGP with BFD to the "VNet" (standing
/// for Azure's own fabric, which moves traffic off a dead instance), ECMP over both appliances.
fn azure_bird(i: usize) -> String {
    let me = AZ_BGP[i];
    let vnet_local = if i == 0 { "198.19.0.1" } else { "198.19.0.5" };
    let vnet_peer = if i == 0 { "198.19.0.2" } else { "198.19.0.6" };
    let mut s = format!(
        "# Azure VPN gateway instance {i} (AS{AZURE_ASN}): hybridgw lab ha\n\
         log stderr all;\nrouter id {vnet_local};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{\n  learn;\n  merge paths on;\n  ipv4 {{\n    import where source = RTS_INHERIT && net ~ [ {a}/32, {b}/32 ];\n    export where source = RTS_BGP && dest != RTD_UNREACHABLE;\n  }};\n}}\n\
         {bfd}\
         function onprem_ok() {{\n  if net.len = 0 then return false;\n  if net ~ [ 198.19.0.0/16+, 169.254.0.0/16+ ] then return false;\n  return true;\n}}\n\
         filter from_vpn {{ if !onprem_ok() then reject; accept; }}\n\
         filter to_vpn {{ if net ~ [ {VNET} ] then accept; reject; }}\n\
         protocol bgp vnet {{\n  local {vnet_local} as {AZURE_ASN};\n  neighbor {vnet_peer} as {AZURE_ASN};\n  direct;\n  bfd on;\n{t}\
         \x20 ipv4 {{ import where net ~ [ {VNET} ]; export where source = RTS_BGP && dest != RTD_UNREACHABLE; next hop self; }};\n}}\n",
        a = Box_::A.bgp(),
        b = Box_::B.bgp(),
        bfd = bfd("vnet0"),
        t = timers(),
    );
    for b in [Box_::A, Box_::B] {
        s.push_str(&format!(
            "protocol bgp onprem_{n} {{\n  local {me} as {AZURE_ASN};\n  neighbor {peer} as {ONPREM_ASN};\n  multihop 2;\n  passive on;\n{t}\
             \x20 ipv4 {{ import filter from_vpn; export filter to_vpn; next hop self; }};\n}}\n",
            n = &b.name()[2..],
            peer = b.bgp(),
            t = timers(),
        ));
    }
    s
}

/// The VNet (AS65515, Azure's fabric): originates the VNet prefix, learns the on-prem prefix
/// from both instances with BFD, ECMP over them.
fn vnet_bird() -> String {
    format!(
        "# The VNet (AS{AZURE_ASN}): hybridgw lab ha\n\
         log stderr all;\nrouter id 198.19.1.10;\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{\n  merge paths on;\n  ipv4 {{ import none; export where source = RTS_BGP; }};\n}}\n\
         protocol static vm {{ ipv4; route {VNET} blackhole; }}\n\
         {bfd}\
         template bgp az_instance {{\n  direct;\n  bfd on;\n{t}\
         \x20 ipv4 {{ import where net ~ [ {ONPREM_NET} ]; export where proto = \"vm\"; next hop self; }};\n}}\n\
         protocol bgp az0 from az_instance {{ local 198.19.0.2 as {AZURE_ASN}; neighbor 198.19.0.1 as {AZURE_ASN}; }}\n\
         protocol bgp az1 from az_instance {{ local 198.19.0.6 as {AZURE_ASN}; neighbor 198.19.0.5 as {AZURE_ASN}; }}\n",
        bfd = bfd("az*"),
        t = timers(),
    )
}

fn lab_timers() -> failover::bird::BgpTimers {
    failover::bird::BgpTimers {
        keepalive: 60,
        hold: 180,
        connect_retry: 2,
        connect_delay: 1,
        error_wait: (1, 5),
    }
}

/// Appliance `b`'s BIRD: the shipped generator (`failover::bird::ApplianceBird`, the one behind
/// `appliance-config/bird/ha-appliance-*.conf`) with the lab's names and timers.
fn appliance_bird(b: Box_) -> Result<String, String> {
    use failover::bird::{ApplianceBird, AzurePeer, BirdLog, LanPeer, protocol_name_for};
    let router_lan = match b {
        Box_::A => Ipv4Addr::new(198, 18, 2, 1),
        Box_::B => Ipv4Addr::new(198, 18, 2, 5),
    };
    let d = ApplianceBird {
        router_id: b.lan(),
        local_asn: ONPREM_ASN,
        onprem_prefixes: vec![ONPREM_NET.parse().map_err(|e| format!("{e}"))?],
        azure: (0..2)
            .map(|i| {
                let conn = if i == 0 { "azure" } else { "azure-2" };
                AzurePeer {
                    protocol: protocol_name_for(conn),
                    address: AZ_BGP[i],
                    asn: AZURE_ASN,
                    local_address: b.bgp(),
                    interface: APPLIANCE_TUNS[i].into(),
                    multihop: 2,
                }
            })
            .collect(),
        expressroute: None,
        lan: vec![LanPeer {
            protocol: "onprem_router".into(),
            address: router_lan,
            asn: ONPREM_ASN,
            local_address: b.lan(),
            interface: "lan0".into(),
            bfd_interval_ms: BFD_MS,
            bfd_multiplier: BFD_MULT,
        }],
        timers: lab_timers(),
        log: BirdLog::Stderr,
    };
    d.render()
        .map_err(|e| format!("appliance {} BIRD configuration: {e}", b.name()))
}

/// The on-prem router's BIRD (`failover::bird::RouterBird`, behind `ha-router.conf`): both
/// appliances with BFD, ECMP over them; no ExpressRoute in this lab.
fn router_bird() -> Result<String, String> {
    use failover::bird::{BirdLog, LanPeer, RouterBird};
    let peer = |name: &str, b: Box_, local: Ipv4Addr, ifname: &str| LanPeer {
        protocol: name.into(),
        address: b.lan(),
        asn: ONPREM_ASN,
        local_address: local,
        interface: ifname.into(),
        bfd_interval_ms: BFD_MS,
        bfd_multiplier: BFD_MULT,
    };
    let d = RouterBird {
        router_id: Ipv4Addr::new(198, 18, 1, 1),
        local_asn: ONPREM_ASN,
        onprem_prefixes: vec![ONPREM_NET.parse().map_err(|e| format!("{e}"))?],
        appliances: vec![
            peer(
                "appliance_a",
                Box_::A,
                Ipv4Addr::new(198, 18, 2, 1),
                "to-apa",
            ),
            peer(
                "appliance_b",
                Box_::B,
                Ipv4Addr::new(198, 18, 2, 5),
                "to-apb",
            ),
        ],
        expressroute: None,
        timers: lab_timers(),
        log: BirdLog::Stderr,
    };
    d.render()
        .map_err(|e| format!("router BIRD configuration: {e}"))
}

/// Long-lived TCP flows on-prem -> Azure, paced, checked byte by byte.
struct TcpFlows {
    stop: Arc<AtomicBool>,
    received: Vec<Arc<AtomicU64>>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl TcpFlows {
    fn start(from: &Netns, to: &Netns) -> Result<TcpFlows, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut received = Vec::new();
        let mut threads = Vec::new();
        for f in 0..TCP_FLOWS {
            let addr = SocketAddr::from((AZURE_HOST, TCP_PORT + f));
            let listener = to.tcp_listen(addr).map_err(|e| e.to_string())?;
            let count = Arc::new(AtomicU64::new(0));
            received.push(count.clone());
            let (stop_r, errs) = (stop.clone(), errors.clone());
            threads.push(std::thread::spawn(move || {
                let r = (|| -> Result<(), String> {
                    let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
                    // Longer than any outage an event may cause (Azure's DPD at its default).
                    s.set_read_timeout(Some(Duration::from_secs(120)))
                        .map_err(|e| e.to_string())?;
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total: u64 = 0;
                    loop {
                        let n = s
                            .read(&mut buf)
                            .map_err(|e| format!("flow {f}: receive after {total} bytes: {e}"))?;
                        if n == 0 {
                            return if stop_r.load(Ordering::Relaxed) {
                                Ok(())
                            } else {
                                Err(format!("flow {f}: closed early after {total} bytes"))
                            };
                        }
                        for (i, b) in buf[..n].iter().enumerate() {
                            if *b != ((total + i as u64) % 251) as u8 {
                                return Err(format!("flow {f}: corrupted at {}", total + i as u64));
                            }
                        }
                        total += n as u64;
                        count.store(total, Ordering::Relaxed);
                    }
                })();
                if let Err(e) = r {
                    errs.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                }
            }));
            let mut s: TcpStream = from
                .tcp_connect(addr, Duration::from_secs(5))
                .map_err(|e| format!("TCP flow {f}: {e}"))?;
            let (stop_s, errs) = (stop.clone(), errors.clone());
            threads.push(std::thread::spawn(move || {
                // 1 Mbit/s each: 12.5 kB every 100 ms, the pattern continuing across writes.
                let _ = s.set_write_timeout(Some(Duration::from_secs(120)));
                let mut off: u64 = 0;
                let until = Instant::now() + Duration::from_secs(7200);
                while !stop_s.load(Ordering::Relaxed) && Instant::now() < until {
                    let chunk: Vec<u8> = (0..12_500u64).map(|i| ((off + i) % 251) as u8).collect();
                    if let Err(e) = s.write_all(&chunk) {
                        errs.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("flow {f}: send: {e}"));
                        return;
                    }
                    off += chunk.len() as u64;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }));
        }
        Ok(TcpFlows {
            stop,
            received,
            errors,
            threads,
        })
    }

    fn bytes(&self) -> Vec<u64> {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Flows that broke (a send or receive error, or an early close) so far.
    fn broken(&self) -> usize {
        let errors = self.errors();
        (0..TCP_FLOWS)
            .filter(|f| errors.iter().any(|e| e.starts_with(&format!("flow {f}:"))))
            .count()
    }

    fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every flow alive and moving: bytes grew on each over `wait` (bounded).
    fn all_moving(&self, wait: Duration) -> usize {
        let before = self.bytes();
        std::thread::sleep(wait);
        let after = self.bytes();
        before.iter().zip(&after).filter(|(b, a)| a > b).count()
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

// ------------------------------------------------------------------ the running lab

struct Lab {
    t: Topo,
    dir: PathBuf,
    exe: PathBuf,
    format: LogFormat,
    opts: Options,
    psk: PathBuf,
    appliances: BTreeMap<Box_, (Proc, Proc, PathBuf, PathBuf)>,
    azure: [Option<(Proc, Proc, PathBuf, PathBuf)>; 2],
    router: (Proc, PathBuf),
    vnet: (Proc, PathBuf),
}

impl Lab {
    fn hgw_sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    fn start_appliance(&mut self, b: Box_) -> Result<(), String> {
        let name = b.name();
        let bird_conf = appliance_bird(b)?;
        let (bird, bird_sock) = start_bird(self.t.ap(b), &self.dir, name, &bird_conf)?;
        let conf = self.dir.join(format!("{name}.toml"));
        write_private(&conf, appliance_config(b, &self.psk, &bird_sock).as_bytes())
            .map_err(|e| e.to_string())?;
        let sock = self.hgw_sock(name);
        let log = self.dir.join(format!("{name}.log"));
        let p = spawn_daemon(self.t.ap(b), &self.exe, &conf, &sock, &log, self.format)
            .map_err(|e| e.to_string())?;
        self.appliances.insert(b, (p, bird, sock, bird_sock));
        Ok(())
    }

    fn start_azure(&mut self, i: usize) -> Result<(), String> {
        let name = format!("az{i}");
        let (bird, bird_sock) = start_bird(&self.t.az[i], &self.dir, &name, &azure_bird(i))?;
        let conf = self.dir.join(format!("{name}.toml"));
        write_private(
            &conf,
            azure_config(i, &self.psk, self.opts.azure_dpd_timeout).as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let sock = self.hgw_sock(&name);
        let log = self.dir.join(format!("{name}.log"));
        let p = spawn_daemon(&self.t.az[i], &self.exe, &conf, &sock, &log, self.format)
            .map_err(|e| e.to_string())?;
        wait_for(
            || status(&sock).is_ok() || !p.is_running(),
            Duration::from_secs(20),
        );
        self.azure[i] = Some((p, bird, sock, bird_sock));
        Ok(())
    }

    /// SIGKILL: what a crash or a power cut leaves (no DELETE, no BGP notification).
    fn kill(p: &Proc) {
        let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = p.wait_timeout(Duration::from_secs(5));
    }

    /// `hybridgw VERB NAME` against appliance `b`'s daemon: its output, or an error with its
    /// message when it exits non-zero.
    fn cli(&self, b: Box_, verb: &str, name: &str) -> Result<String, String> {
        let sock = &self
            .appliances
            .get(&b)
            .ok_or_else(|| format!("appliance {} is not running", b.name()))?
            .2;
        let out = self
            .t
            .ap(b)
            .exec_output([
                self.exe.as_os_str(),
                "--socket".as_ref(),
                sock.as_os_str(),
                verb.as_ref(),
                name.as_ref(),
            ])
            .map_err(|e| format!("hybridgw {verb}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "hybridgw {verb} {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A box that dies (power, kernel panic) sends nothing more: not even the TCP FIN or RST
    /// its killed BGP daemon's sockets would. Everything in and out of `ns` is dropped first.
    fn isolate(ns: &Netns) -> Result<(), String> {
        ns.nft(
            "table inet hgwha_dead {\n chain pre { type filter hook prerouting priority -300; policy drop; }\n chain out { type filter hook output priority -300; policy drop; }\n}\n",
        )
        .map_err(|e| format!("{}: nft: {e}", ns.name()))
    }

    fn revive(ns: &Netns) -> Result<(), String> {
        sh(ns, "nft delete table inet hgwha_dead")
    }

    fn kill_appliance(&mut self, b: Box_) -> Result<(), String> {
        Self::isolate(self.t.ap(b))?;
        if let Some((p, bird, _, _)) = self.appliances.remove(&b) {
            Self::kill(&p);
            Self::kill(&bird);
        }
        Ok(())
    }

    fn kill_azure(&mut self, i: usize) -> Result<(), String> {
        Self::isolate(&self.t.az[i])?;
        if let Some((p, bird, _, _)) = self.azure[i].take() {
            Self::kill(&p);
            Self::kill(&bird);
        }
        Ok(())
    }

    /// Established tunnels, by (appliance, instance).
    fn tunnels_up(&self) -> Vec<(Box_, usize)> {
        let mut v = Vec::new();
        for (b, (_, _, sock, _)) in &self.appliances {
            if let Ok(st) = status(sock) {
                for c in &st.connections {
                    let i = usize::from(c.name.ends_with("-2"));
                    if c.state == "established" && c.bgp.as_ref().is_some_and(|g| g.routes_in_use) {
                        v.push((*b, i));
                    }
                }
            }
        }
        v
    }

    /// Next hops of the kernel route to `prefix` in `ns` (devices, or gateways).
    fn nexthops(ns: &Netns, prefix: &str) -> Vec<String> {
        let r = kernel_route(ns, prefix);
        let mut v: Vec<String> = Vec::new();
        let words: Vec<&str> = r.split_whitespace().collect();
        for (k, w) in words.iter().enumerate() {
            if (*w == "via" || *w == "dev") && k + 1 < words.len() {
                let x = words[k + 1].to_string();
                if *w == "dev" && v.last().is_some_and(|l| l.starts_with("via ")) {
                    continue;
                }
                v.push(format!("{w} {x}"));
            }
        }
        v
    }

    /// The full mesh carries traffic: 4 tunnels up, ECMP everywhere it should be.
    fn converged(&self) -> bool {
        self.tunnels_up().len() == 4
            && Self::nexthops(&self.t.opr, VNET).len() == 2
            && self
                .t
                .ap
                .iter()
                .all(|ns| Self::nexthops(ns, VNET).len() == 2)
            && self
                .t
                .az
                .iter()
                .all(|ns| Self::nexthops(ns, ONPREM_NET).len() == 2)
            && Self::nexthops(&self.t.azh, ONPREM_NET).len() == 2
    }

    fn wait_converged(&self, what: &str, bound: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        if wait_for(|| self.converged() || interrupted(), bound) && !interrupted() {
            return Ok(t0.elapsed());
        }
        self.dump();
        Err(format!(
            "{what}: not converged within {} s (tunnels up {:?}; router {:?}; appliances {:?} {:?}; Azure {:?} {:?}; VNet {:?})",
            bound.as_secs(),
            self.tunnels_up(),
            Self::nexthops(&self.t.opr, VNET),
            Self::nexthops(&self.t.ap[0], VNET),
            Self::nexthops(&self.t.ap[1], VNET),
            Self::nexthops(&self.t.az[0], ONPREM_NET),
            Self::nexthops(&self.t.az[1], ONPREM_NET),
            Self::nexthops(&self.t.azh, ONPREM_NET),
        ))
    }

    fn dump(&self) {
        for (ns, sock) in [(&self.t.opr, &self.router.1), (&self.t.azh, &self.vnet.1)]
            .into_iter()
            .chain(self.appliances.iter().map(|(b, x)| (self.t.ap(*b), &x.3)))
            .chain(
                self.azure
                    .iter()
                    .enumerate()
                    .filter_map(|(i, x)| x.as_ref().map(|x| (&self.t.az[i], &x.3))),
            )
        {
            eprintln!(
                "---- {} BIRD ----\n{}",
                ns.name(),
                birdc(ns, sock, "show protocols")
            );
        }
        for f in ["apa", "apb", "az0", "az1"] {
            let p = self.dir.join(format!("{f}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "---- {f} hybridgw log (last lines) ----\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// Packets each appliance tunnel carried (both directions), per (appliance, instance).
    fn tun_counters(&self) -> BTreeMap<(Box_, usize), u64> {
        let mut m = BTreeMap::new();
        for b in [Box_::A, Box_::B] {
            for (i, dev) in APPLIANCE_TUNS.iter().enumerate() {
                let read = |what: &str| -> u64 {
                    self.t
                        .ap(b)
                        .exec(["cat", &format!("/sys/class/net/{dev}/statistics/{what}")])
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0)
                };
                m.insert((b, i), read("tx_packets") + read("rx_packets"));
            }
        }
        m
    }

    /// Which tunnels carry traffic: those that moved more than a few packets over `d`.
    fn carrying(&self, d: Duration) -> String {
        let a = self.tun_counters();
        std::thread::sleep(d);
        let b = self.tun_counters();
        let mut v: Vec<String> = Vec::new();
        for (k, n) in &b {
            if n.saturating_sub(a.get(k).copied().unwrap_or(0)) > 20 {
                v.push(format!(
                    "{}-az{}",
                    match k.0 {
                        Box_::A => "A",
                        Box_::B => "B",
                    },
                    k.1
                ));
            }
        }
        if v.is_empty() {
            "none".into()
        } else {
            v.join(" ")
        }
    }
}

/// One event's figures.
struct Row {
    event: &'static str,
    detection: String,
    up: Flows,
    down: Flows,
    before: String,
    after: String,
    tcp: String,
    tcp_alive: usize,
    tcp_moving: usize,
    target_up: Duration,
    target_down: Duration,
    zero_loss: bool,
}

impl Row {
    fn met(&self) -> (bool, bool) {
        if self.zero_loss {
            (self.up.lost == 0, self.down.lost == 0)
        } else {
            (
                self.up.worst_gap <= self.target_up,
                self.down.worst_gap <= self.target_down,
            )
        }
    }
}

fn run(format: LogFormat, opts: Options) -> Result<(), String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find my own binary: {e}"))?;
    let t_start = Instant::now();
    let scratch = Scratch::new("labha").map_err(|e| format!("scratch directory: {e}"))?;
    let dir = scratch.0.clone();
    println!(
        "lab: dual redundancy: on-prem host, BIRD router, appliances A and B (hybridgw + BIRD), internet, Azure instances 0 and 1 (hybridgw + BIRD AS{AZURE_ASN}), VNet; Azure's DPD {} s",
        opts.azure_dpd_timeout
    );
    let t = build()?;
    println!(
        "lab: namespaces: host {}, router {}, A {}, B {}, internet {}, Azure-0 {}, Azure-1 {}, VNet {}",
        t.oph.name(),
        t.opr.name(),
        t.ap[0].name(),
        t.ap[1].name(),
        t.inet.name(),
        t.az[0].name(),
        t.az[1].name(),
        t.azh.name()
    );
    let psk = dir.join("lab.psk");
    let mut key = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| format!("random PSK: {e}"))?;
    write_private(&psk, hex::encode(key).as_bytes()).map_err(|e| e.to_string())?;

    let router = start_bird(&t.opr, &dir, "router", &router_bird()?)?;
    let vnet = start_bird(&t.azh, &dir, "vnet", &vnet_bird())?;
    let mut lab = Lab {
        t,
        dir,
        exe,
        format,
        opts,
        psk,
        appliances: BTreeMap::new(),
        azure: [None, None],
        router,
        vnet,
    };
    lab.start_azure(0)?;
    lab.start_azure(1)?;
    lab.start_appliance(Box_::A)?;
    lab.start_appliance(Box_::B)?;
    let took = lab.wait_converged("start", Duration::from_secs(90))?;
    println!(
        "lab: four tunnels up and BGP converged in {:.1} s: router ECMP {:?}, A {:?}, B {:?}, Azure-0 {:?}, Azure-1 {:?}, VNet {:?}",
        took.as_secs_f64(),
        Lab::nexthops(&lab.t.opr, VNET),
        Lab::nexthops(&lab.t.ap[0], VNET),
        Lab::nexthops(&lab.t.ap[1], VNET),
        Lab::nexthops(&lab.t.az[0], ONPREM_NET),
        Lab::nexthops(&lab.t.az[1], ONPREM_NET),
        Lab::nexthops(&lab.t.azh, ONPREM_NET),
    );
    let every = Duration::from_millis(PROBE_MS);
    let up = Probes::start(
        &lab.t.oph,
        ONPREM_HOST,
        &lab.t.azh,
        AZURE_HOST,
        PROBE_PORT,
        FLOWS,
        every,
    )?;
    let down = Probes::start(
        &lab.t.azh,
        AZURE_HOST,
        &lab.t.oph,
        ONPREM_HOST,
        PROBE_PORT,
        FLOWS,
        every,
    )?;
    let tcp = TcpFlows::start(&lab.t.oph, &lab.t.azh)?;
    std::thread::sleep(Duration::from_secs(2));

    let mut rows: Vec<Row> = Vec::new();
    let result = events(&mut lab, &up, &down, &tcp, &mut rows);
    up.stop();
    down.stop();
    let tcp_errors = tcp.stop();
    print_table(&rows);
    let mut fails: Vec<String> = Vec::new();
    if let Err(e) = result {
        fails.push(e);
    }
    for r in &rows {
        let (u, d) = r.met();
        if !u {
            fails.push(format!("{}: on-prem -> Azure missed its target", r.event));
        }
        if !d {
            fails.push(format!("{}: Azure -> on-prem missed its target", r.event));
        }
        if r.tcp_alive < usize::from(TCP_FLOWS)
            || (r.zero_loss && r.tcp_moving < usize::from(TCP_FLOWS))
        {
            fails.push(format!("{}: TCP flows {}", r.event, r.tcp));
        }
    }
    for e in &tcp_errors {
        println!("lab: TCP: {e}");
    }
    // Everything started here stops here (by PID), the namespaces go with `lab`.
    for (_, (p, bird, _, _)) in std::mem::take(&mut lab.appliances) {
        let _ = p.stop();
        let _ = bird.stop();
    }
    for x in lab.azure.iter_mut() {
        if let Some((p, bird, _, _)) = x.take() {
            let _ = p.stop();
            let _ = bird.stop();
        }
    }
    let _ = lab.router.0.stop();
    let _ = lab.vnet.0.stop();
    if !fails.is_empty() {
        lab.dump();
    }
    drop(lab);
    drop(scratch);
    println!(
        "lab: namespaces removed; total {:.1} s",
        t_start.elapsed().as_secs_f64()
    );
    if fails.is_empty() {
        println!("lab: PASS: every event met its target");
        Ok(())
    } else {
        Err(fails.join("; "))
    }
}

/// Runs one event: `act` under the probes, until `settled` (bounded), then `restore` and a
/// full reconvergence.
#[allow(clippy::too_many_arguments)]
fn event(
    lab: &mut Lab,
    up: &Probes,
    down: &Probes,
    tcp: &TcpFlows,
    rows: &mut Vec<Row>,
    mut row: Row,
    act: &mut dyn FnMut(&mut Lab) -> Result<(), String>,
    settled: &dyn Fn(&Lab) -> bool,
    restore: &mut dyn FnMut(&mut Lab) -> Result<(), String>,
    bound: Duration,
) -> Result<(), String> {
    println!("lab: EVENT {}", row.event);
    row.before = lab.carrying(Duration::from_secs(1));
    let (u0, d0) = (up.mark(), down.mark());
    let t0 = Instant::now();
    act(lab)?;
    let ok = wait_for(|| settled(lab) || interrupted(), bound);
    let took = t0.elapsed();
    println!(
        "lab:   {} after {:.1} s",
        if ok { "settled" } else { "NOT settled" },
        took.as_secs_f64()
    );
    // Probes still in flight or late get a second; the tail is judged with the rest.
    std::thread::sleep(Duration::from_secs(2));
    row.after = lab.carrying(Duration::from_secs(1));
    let (u1, d1) = (up.mark(), down.mark());
    std::thread::sleep(Duration::from_millis(500));
    row.up = up.figures(u0, u1);
    row.down = down.figures(d0, d1);
    // Alive: no flow broke. Moving: bytes arrived on it in the next 2 s (a flow that was cut
    // for long is alive but waits for its next retransmission, TCP's backoff doubling each time).
    row.tcp_moving = tcp.all_moving(Duration::from_secs(2));
    row.tcp_alive = usize::from(TCP_FLOWS) - tcp.broken();
    row.tcp = format!(
        "{}/{TCP_FLOWS} alive, {} moving",
        row.tcp_alive, row.tcp_moving
    );
    println!(
        "lab: RESULT {}: on-prem->Azure {:.0} ms without traffic (worst flow), {} of {} probes lost ({} flows hit); Azure->on-prem {:.0} ms, {} of {} lost ({} flows hit); tunnels {} -> {}; TCP {}",
        row.event,
        row.up.worst_gap.as_secs_f64() * 1000.0,
        row.up.lost,
        row.up.sent,
        row.up.flows_hit,
        row.down.worst_gap.as_secs_f64() * 1000.0,
        row.down.lost,
        row.down.sent,
        row.down.flows_hit,
        row.before,
        row.after,
        row.tcp
    );
    println!(
        "lab:   probes lost per flow: on-prem->Azure {:?}, Azure->on-prem {:?}",
        row.up.per_flow, row.down.per_flow
    );
    rows.push(row);
    if !ok {
        return Err(format!(
            "{}: did not settle within {} s",
            rows.last().map_or("", |r| r.event),
            bound.as_secs()
        ));
    }
    restore(lab)?;
    let took = lab.wait_converged("restore", Duration::from_secs(120))?;
    println!(
        "lab:   restored; full mesh again after {:.1} s",
        took.as_secs_f64()
    );
    // Let the restored paths carry traffic a moment before the next event.
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

fn events(
    lab: &mut Lab,
    up: &Probes,
    down: &Probes,
    tcp: &TcpFlows,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let ours = Duration::from_secs(OUR_DPD.0 + OUR_DPD.1);
    let azure_dpd = Duration::from_secs(3 + lab.opts.azure_dpd_timeout);
    let bfd = Duration::from_millis(u64::from(BFD_MS) * u64::from(BFD_MULT));
    // Slack for the probe interval, BGP and kernel updates, and a loaded 2-core machine.
    let slack = Duration::from_millis(1500);
    let blank = |event, detection: String, up_t, down_t, zero| Row {
        event,
        detection,
        up: Flows::default(),
        down: Flows::default(),
        before: String::new(),
        after: String::new(),
        tcp: String::new(),
        tcp_alive: 0,
        tcp_moving: 0,
        target_up: up_t,
        target_down: down_t,
        zero_loss: zero,
    };

    // 1. An Azure instance dies.
    event(
        lab,
        up,
        down,
        tcp,
        rows,
        blank(
            "Azure instance 0 killed",
            format!("our DPD {} s / VNet BFD", ours.as_secs()),
            ours + slack,
            bfd + slack,
            false,
        ),
        &mut |l| l.kill_azure(0),
        &|l| {
            let t = l.tunnels_up();
            t.len() == 2
                && t.iter().all(|(_, i)| *i == 1)
                && l.t.ap.iter().all(|ns| Lab::nexthops(ns, VNET).len() == 1)
                && Lab::nexthops(&l.t.azh, ONPREM_NET).len() == 1
        },
        &mut |l| {
            Lab::revive(&l.t.az[0])?;
            l.start_azure(0)
        },
        ours + Duration::from_secs(20),
    )?;

    // 2. An appliance dies.
    event(
        lab,
        up,
        down,
        tcp,
        rows,
        blank(
            "appliance A killed",
            format!(
                "router BFD {} ms / Azure DPD {} s",
                bfd.as_millis(),
                azure_dpd.as_secs()
            ),
            bfd + slack,
            azure_dpd + slack,
            false,
        ),
        &mut |l| l.kill_appliance(Box_::A),
        &|l| {
            Lab::nexthops(&l.t.opr, VNET).len() == 1
                && l.t
                    .az
                    .iter()
                    .all(|ns| Lab::nexthops(ns, ONPREM_NET).len() == 1)
        },
        &mut |l| {
            Lab::revive(l.t.ap(Box_::A))?;
            l.start_appliance(Box_::A)
        },
        azure_dpd + Duration::from_secs(20),
    )?;

    // 3. An appliance's underlay link is cut (carrier lost on the internet side).
    event(
        lab,
        up,
        down,
        tcp,
        rows,
        blank(
            "appliance A underlay cut",
            format!(
                "our DPD {} s / Azure DPD {} s",
                ours.as_secs(),
                azure_dpd.as_secs()
            ),
            ours + slack,
            azure_dpd + slack,
            false,
        ),
        &mut |l| sh(&l.t.inet, "ip link set in-apa down"),
        &|l| {
            Lab::nexthops(&l.t.opr, VNET).len() == 1
                && l.t
                    .az
                    .iter()
                    .all(|ns| Lab::nexthops(ns, ONPREM_NET).len() == 1)
                && Lab::nexthops(&l.t.ap[0], VNET).is_empty()
        },
        &mut |l| sh(&l.t.inet, "ip link set in-apa up"),
        azure_dpd.max(ours) + Duration::from_secs(20),
    )?;

    // 4. An appliance is drained for maintenance.
    event(
        lab,
        up,
        down,
        tcp,
        rows,
        blank(
            "appliance A drained",
            "planned: BGP withdrawn first".into(),
            Duration::ZERO,
            Duration::ZERO,
            true,
        ),
        &mut |l| {
            let out = l.cli(Box_::A, "drain", "azure")?;
            println!("lab:   `hybridgw drain azure`: {}", out.replace('\n', "; "));
            Ok(())
        },
        &|l| l.tunnels_up().iter().all(|(b, _)| *b == Box_::B),
        &mut |l| l.cli(Box_::A, "up", "azure").map(drop),
        Duration::from_secs(30),
    )?;
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "lab: SUMMARY (dual redundancy: 2 appliances x 2 Azure instances, 4 tunnels; {FLOWS} probe flows each way every {PROBE_MS} ms, {TCP_FLOWS} TCP flows)"
    );
    println!(
        "lab: | event                    | direction        | without traffic | lost          | flows hit | tunnels before -> after                | TCP flows           | detection                          | target        |"
    );
    for r in rows {
        let (mu, md) = r.met();
        for (dir, f, target, met) in [
            ("on-prem -> Azure", &r.up, r.target_up, mu),
            ("Azure -> on-prem", &r.down, r.target_down, md),
        ] {
            let t = if r.zero_loss {
                "0 lost".to_string()
            } else {
                format!("<= {:.1} s", target.as_secs_f64())
            };
            println!(
                "lab: | {:<24} | {:<16} | {:>12.0} ms | {:>5} / {:<5} | {:>2} / {:<5} | {:<38} | {:<19} | {:<34} | {:<13} |",
                r.event,
                dir,
                f.worst_gap.as_secs_f64() * 1000.0,
                f.lost,
                f.sent,
                f.flows_hit,
                FLOWS,
                format!("{} -> {}", r.before, r.after),
                r.tcp,
                r.detection,
                format!("{} {}", t, if met { "met" } else { "MISSED" }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BIRD itself parses every configuration the lab writes (`bird -p`).
    #[test]
    fn bird_parses_the_lab_configurations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let confs = [
            ("vnet", vnet_bird()),
            ("az0", azure_bird(0)),
            ("az1", azure_bird(1)),
            ("apa", appliance_bird(Box_::A).expect("appliance A")),
            ("apb", appliance_bird(Box_::B).expect("appliance B")),
            ("router", router_bird().expect("router")),
        ];
        for (name, text) in confs {
            let p = dir.path().join(format!("{name}.conf"));
            std::fs::write(&p, &text).expect("write");
            let out = std::process::Command::new("bird")
                .arg("-p")
                .arg("-c")
                .arg(&p)
                .output()
                .expect("bird (bird2) must be installed");
            assert!(
                out.status.success(),
                "{name}: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
