//! Active-active with BGP against a third-party IKE peer: hybridgw on-prem (initiator, one
//! connection naming two gateway addresses, `[connection.bgp]` with one Azure BGP address per
//! tunnel) next to BIRD rendered by `failover::bird::ApplianceBird`, and two "Azure gateway
//! instances", each a strongSwan responder (charon-systemd, kernel-libipsec, forced UDP
//! encapsulation, one any-to-any Child SA: route-based, as Azure) with a BIRD as AS65515
//! (passive, multihop, 60/180 s, no BFD, the VNet prefix with next hop self).
//!
//! ```text
//!   [onprem] hybridgw: hgw-azure, hgw-azure-2 (169.254.21.1/32 on both) + BIRD AS65010
//!   wan0 192.0.2.1 -- op0 192.0.2.254 [inet] aza0 198.51.100.254 -- wan0 198.51.100.1 [az0]
//!                                            azb0 203.0.113.254  -- wan0 203.0.113.1  [az1]
//!   az0: strongSwan + BIRD at 169.254.21.2 (lo), az1: at 169.254.22.2 (lo); both 198.19.1.1 (lo)
//! ```
//!
//! Checked: both tunnels and both BGP sessions come up and the VNet route is one kernel route
//! with a nexthop per TUN; a peer that dies (SIGKILL, its underlay dropped) leaves the route
//! within hybridgw's dead peer detection (2 s + 9 s), not BGP's 180 s hold time, and comes back
//! when the peer returns; a DELETE from strongSwan takes the route at once; SIGTERM with `[drain]
//! on_shutdown` withdraws and drains before it deletes and exits 0. Each test prints what it
//! measured against its bound.

mod appliance_support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use appliance_support::*;
// The BIRD generator: `failover` must be a dev-dependency of the root package
// (`failover = { path = "crates/failover" }` in Cargo.toml's [dev-dependencies]).
use failover::bird::{ApplianceBird, AzurePeer, BgpTimers, BirdLog, protocol_name_for};
use harness::{Charon, CharonOptions, SwanConn};
use hybridgw::control::{ConnectionStatus, Status};
use netns::{Bird, Netns, Proc, veth_pair};
use nix::sys::signal::Signal;

/// The scenarios share the 2 cores (two charons, three BIRDs, hybridgw): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const ONPREM_WAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const INET_ONPREM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The two Azure instances' public addresses and the internet router's address on their links.
const AZ_WAN: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(203, 0, 113, 1),
];
const INET_AZ: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 254),
    Ipv4Addr::new(203, 0, 113, 254),
];
const AZ_NETS: [&str; 2] = ["198.51.100.0/24", "203.0.113.0/24"];
const INET_AZ_IF: [&str; 2] = ["aza0", "azb0"];
/// The on-prem BGP address (one local network gateway: one address on both tunnels) and each
/// Azure instance's.
const ONPREM_BGP: Ipv4Addr = Ipv4Addr::new(169, 254, 21, 1);
const AZ_BGP: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 21, 2),
    Ipv4Addr::new(169, 254, 22, 2),
];
const ONPREM_ASN: u32 = 65010;
const AZURE_ASN: u32 = 65515;
/// What the on-prem BIRD originates, and a host inside it (on the on-prem namespace's lo).
const ONPREM_NET: &str = "198.18.1.0/24";
const ONPREM_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// What both Azure instances advertise, and a host inside it (on each instance's lo).
const VNET: &str = "198.19.1.0/24";
const VNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
/// The members of the active-active connection and their TUNs (hybridgw's defaults).
const CONN: [&str; 2] = ["azure", "azure-2"];
const TUN: [&str; 2] = ["hgw-azure", "hgw-azure-2"];
/// hybridgw's dead peer detection: a check after 2 s without a sign of life, dead 9 s later.
const DPD_DELAY_S: u64 = 2;
const DPD_TIMEOUT_S: u64 = 9;
/// BGP's hold time (Azure's 180 s): what would withdraw a dead tunnel's routes without hybridgw.
const HOLD_S: u64 = 180;
/// The longest a dead peer may keep its route: DPD delay + timeout, the once-a-second counter
/// check, and a margin for a loaded 2-core machine.
const DPD_BOUND: Duration = Duration::from_secs(DPD_DELAY_S + DPD_TIMEOUT_S + 5);
/// strongSwan's proposals: AES-GCM, what hybridgw is configured to offer.
const IKE_PROPOSAL: &str = "aes256gcm16-prfsha384-ecp384";
const ESP_PROPOSAL: &str = "aes256gcm16";
/// Drops everything on an Azure instance's underlay: nothing answers, not even ICMP.
const DEAD_UNDERLAY: &str = "table inet dead {\n\
    chain i { type filter hook input priority -10; iifname \"wan0\" drop; }\n\
    chain o { type filter hook output priority -10; oifname \"wan0\" drop; }\n\
    }\n";

/// One Azure gateway instance: strongSwan (restartable) and BIRD in their namespace.
struct Instance {
    charon: Option<Charon>,
    bird: Bird,
    conn: SwanConn,
    ns: Netns,
}

/// The whole site. Fields drop in order: hybridgw first, then the daemons, the namespaces
/// (which stop anything left inside) and the scratch directory last.
struct Site {
    hgw: Daemon,
    onprem_bird: Bird,
    az: [Instance; 2],
    onprem: Netns,
    _inet: Netns,
    dir: hybridgw::lab::Scratch,
}

/// The on-prem BIRD: the shipped generator, no LAN peers (this box originates the on-prem
/// prefix), one multihop session per tunnel, log to stderr, quick reconnects.
fn onprem_bird_conf() -> String {
    let azure = (0..2)
        .map(|i| AzurePeer {
            protocol: protocol_name_for(CONN[i]),
            address: AZ_BGP[i],
            asn: AZURE_ASN,
            local_address: ONPREM_BGP,
            interface: TUN[i].into(),
            multihop: 2,
        })
        .collect();
    let d = ApplianceBird {
        router_id: ONPREM_HOST,
        local_asn: ONPREM_ASN,
        onprem_prefixes: vec![ONPREM_NET.parse().expect("prefix")],
        azure,
        expressroute: None,
        lan: Vec::new(),
        timers: BgpTimers {
            keepalive: 60,
            hold: HOLD_S as u32,
            connect_retry: 2,
            connect_delay: 1,
            error_wait: (1, 4),
        },
        log: BirdLog::Stderr,
    };
    d.render().expect("ApplianceBird renders")
}

/// An Azure instance's BIRD (AS65515): passive (Azure does not open APIPA sessions), multihop,
/// 60/180 s, no BFD, the VNet prefix with next hop self; it accepts the on-prem prefix.
fn azure_bird_conf(i: usize) -> String {
    let me = AZ_BGP[i];
    format!(
        "log stderr all;\nrouter id {me};\n\
         protocol device {{ scan time 10; }}\n\
         protocol static vnet {{ ipv4; route {VNET} blackhole; }}\n\
         protocol bgp onprem {{\n  local {me} as {AZURE_ASN};\n  neighbor {ONPREM_BGP} as {ONPREM_ASN};\n\
         \x20 multihop 2;\n  passive on;\n  hold time {HOLD_S};\n  keepalive time 60;\n\
         \x20 connect retry time 2;\n  error wait time 1, 4;\n\
         \x20 ipv4 {{ import where net = {ONPREM_NET}; export where proto = \"vnet\"; next hop self; }};\n}}\n"
    )
}

fn hgw_conf(psk: &Path, bird_socket: &Path, drain_on_shutdown: bool) -> String {
    let drain = if drain_on_shutdown {
        "[drain]\non_shutdown = true\nquiet_ms = 500\ntimeout_seconds = 10\n\n"
    } else {
        ""
    };
    format!(
        "{drain}[[connection]]\nname = \"azure\"\nlocal_address = \"{ONPREM_WAN}\"\n\
         remote_address = [\"{}\", \"{}\"]\npsk_file = \"{}\"\nbehaviour = \"initiate\"\n\
         ike_proposals = \"{IKE_PROPOSAL}\"\nesp_proposals = \"{ESP_PROPOSAL}\"\n\
         tun_address = \"{ONPREM_BGP}/32\"\n\n\
         [connection.dpd]\ndelay_seconds = {DPD_DELAY_S}\ntimeout_seconds = {DPD_TIMEOUT_S}\naction = \"restart\"\n\n\
         [connection.retry]\ninitial_seconds = 1\nmax_seconds = 2\n\n\
         [connection.bgp]\nonprem_asn = {ONPREM_ASN}\nazure_peer = [\"{}\", \"{}\"]\nbird_socket = \"{}\"\n",
        AZ_WAN[0],
        AZ_WAN[1],
        psk.display(),
        AZ_BGP[0],
        AZ_BGP[1],
        bird_socket.display()
    )
}

/// Starts strongSwan in instance `i`'s namespace, loads the connection and routes the on-prem
/// BGP address and prefix into kernel-libipsec's `ipsec0` (main table first: with any-to-any
/// selectors, table 220's `default dev ipsec0` would swallow the underlay too).
fn start_charon(ns: &Netns, i: usize, conn: &SwanConn) -> Charon {
    let c = Charon::start(ns, CharonOptions::default()).expect("charon-systemd");
    let made = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        ns.link_exists("ipsec0")
    });
    assert!(
        made.is_some(),
        "kernel-libipsec created no ipsec0 in {}",
        ns.name()
    );
    c.load(&conn.render().expect("swanctl.conf"))
        .expect("swanctl --load-all");
    Charon::route_into_tunnel(ns, &format!("{ONPREM_BGP}/32"), Some(AZ_BGP[i]))
        .expect("route to the on-prem BGP address");
    Charon::route_into_tunnel(ns, ONPREM_NET, Some(VNET_HOST)).expect("route to on-prem");
    c
}

fn start(tag: &str, drain_on_shutdown: bool) -> Site {
    for p in ["inet", "op", "az0", "az1"] {
        let _ = netns::cleanup_stale(&format!("{tag}-{p}"));
    }
    let dir = scratch(tag);
    let (pskf, secret) = psk(&dir.0);
    let inet = Netns::new(&format!("{tag}-inet")).expect("netns");
    let onprem = Netns::new(&format!("{tag}-op")).expect("netns");
    let az_ns = [
        Netns::new(&format!("{tag}-az0")).expect("netns"),
        Netns::new(&format!("{tag}-az1")).expect("netns"),
    ];

    // The internet: a router between the on-prem box and both instances. The on-prem box has
    // no default route: a BGP packet whose tunnel is down has no way out in clear.
    inet.set_forwarding(true).expect("forwarding");
    veth_pair(&inet, "op0", &onprem, "wan0").expect("veth");
    inet.add_addr("op0", &format!("{INET_ONPREM}/24"))
        .expect("addr");
    onprem
        .add_addr("wan0", &format!("{ONPREM_WAN}/24"))
        .expect("addr");
    onprem
        .add_addr("lo", &format!("{ONPREM_HOST}/32"))
        .expect("addr");
    for i in 0..2 {
        let ns = &az_ns[i];
        veth_pair(&inet, INET_AZ_IF[i], ns, "wan0").expect("veth");
        inet.add_addr(INET_AZ_IF[i], &format!("{}/24", INET_AZ[i]))
            .expect("addr");
        ns.add_addr("wan0", &format!("{}/24", AZ_WAN[i]))
            .expect("addr");
        ns.add_route("192.0.2.0/24", INET_AZ[i]).expect("route");
        onprem.add_route(AZ_NETS[i], INET_ONPREM).expect("route");
        // The instance's BGP address and a VNet host, on lo (this kernel has no dummy module).
        ns.add_addr("lo", &format!("{}/32", AZ_BGP[i]))
            .expect("addr");
        ns.add_addr("lo", &format!("{VNET_HOST}/32")).expect("addr");
    }

    let mut az: Vec<Instance> = Vec::new();
    for (i, ns) in az_ns.into_iter().enumerate() {
        let mut conn = SwanConn::new("hgw", AZ_WAN[i].into(), ONPREM_WAN.into(), &secret)
            .proposals(IKE_PROPOSAL, ESP_PROPOSAL);
        conn.dpd_delay = Some(Duration::from_secs(9));
        let charon = start_charon(&ns, i, &conn);
        let bird =
            Bird::start(&ns, &dir.0, &format!("az{i}"), &azure_bird_conf(i)).expect("Azure BIRD");
        az.push(Instance {
            charon: Some(charon),
            bird,
            conn,
            ns,
        });
    }
    let az: [Instance; 2] = az.try_into().ok().expect("two instances");
    // BIRD first: hybridgw enables its protocols over the control socket when it starts.
    let onprem_bird =
        Bird::start(&onprem, &dir.0, "onprem", &onprem_bird_conf()).expect("on-prem BIRD");
    let hgw = Daemon::start(
        &onprem,
        &dir.0,
        "onprem",
        &hgw_conf(&pskf, onprem_bird.socket(), drain_on_shutdown),
    );
    Site {
        hgw,
        onprem_bird,
        az,
        onprem,
        _inet: inet,
        dir,
    }
}

/// The devices a route text (`ip route show` or `ip monitor` output) sends through, sorted:
/// one per nexthop. (BIRD installs the VNet route as `nexthop dev TUN`, without a gateway: the
/// TUNs are point-to-point.)
fn devs_of(text: &str) -> Vec<String> {
    let t: Vec<&str> = text.split_whitespace().collect();
    let mut v: Vec<String> = t
        .windows(2)
        .filter(|w| w[0] == "dev")
        .map(|w| w[1].to_string())
        .collect();
    v.sort();
    v
}

/// The kernel's route to `net`: its text and the devices of its nexthops.
fn kernel_route(ns: &Netns, net: &str) -> (String, Vec<String>) {
    let out = ns
        .exec_output(["ip", "route", "show", net])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let devs = devs_of(&out);
    (out.trim().to_string(), devs)
}

/// The TUNs of these members, sorted (what a VNet route over exactly them goes through).
fn tuns(members: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = members.iter().map(|&i| TUN[i].to_string()).collect();
    v.sort();
    v
}

/// The device of the host route to instance `i`'s BGP address, if there is one.
fn host_route_dev(ns: &Netns, i: usize) -> Option<String> {
    kernel_route(ns, &format!("{}/32", AZ_BGP[i]))
        .1
        .into_iter()
        .next()
}

/// BIRD's state of `protocol` (`Established`, `Active`, `Connect`, ... or "" if unknown).
fn bgp_state(ns: &Netns, bird: &Bird, protocol: &str) -> String {
    let out = bird.birdc(ns, &format!("show protocols {protocol}"));
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(protocol))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or_default()
        .to_string()
}

fn member(st: &Status, i: usize) -> Option<&ConnectionStatus> {
    st.connections.iter().find(|c| c.name == CONN[i])
}

/// Member `i` is established and BGP's routes over it are usable.
fn member_up(st: &Status, i: usize) -> bool {
    member(st, i).is_some_and(|c| {
        c.state == "established" && c.bgp.as_ref().is_some_and(|b| b.routes_in_use)
    })
}

/// Polls every `every` until `pred` holds, at most `within` and 5,000 times; the time it took.
fn wait_for(within: Duration, every: Duration, mut pred: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    for _ in 0..5_000 {
        if pred() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= within {
            return None;
        }
        std::thread::sleep(every);
    }
    None
}

/// `text` without ANSI escape sequences (hybridgw's text log colours its fields even in a file).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' && it.peek() == Some(&'[') {
            // CSI: parameters and intermediates up to the final byte (0x40-0x7e).
            it.next();
            for d in it.by_ref() {
                if ('\x40'..='\x7e').contains(&d) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Site {
    fn status(&self) -> Status {
        hybridgw::lab::status(&self.hgw.socket).unwrap_or_default()
    }

    fn vnet(&self) -> (String, Vec<String>) {
        kernel_route(&self.onprem, VNET)
    }

    fn session(&self, i: usize) -> String {
        bgp_state(&self.onprem, &self.onprem_bird, &protocol_name_for(CONN[i]))
    }

    fn charon(&self, i: usize) -> &Charon {
        self.az[i].charon.as_ref().expect("charon running")
    }

    /// Everything worth seeing when an assertion fails.
    fn dump(&self) -> String {
        let mut s = format!(
            "---- on-prem routes ----\n{}\n---- on-prem BIRD ----\n{}\n{}\n",
            self.onprem
                .exec(["ip", "route", "show"])
                .unwrap_or_default(),
            self.onprem_bird.birdc(&self.onprem, "show protocols"),
            self.onprem_bird
                .birdc(&self.onprem, &format!("show route for {VNET} all")),
        );
        s.push_str(&format!(
            "---- hybridgw status ----\n{}\n",
            serde_json::to_string_pretty(&self.status()).unwrap_or_default()
        ));
        s.push_str(&format!(
            "---- hybridgw log (tail) ----\n{}\n",
            tail(&self.hgw.log_text(), 80)
        ));
        for (i, a) in self.az.iter().enumerate() {
            s.push_str(&format!(
                "---- az{i} BIRD ----\n{}\n{}\n",
                a.bird.birdc(&a.ns, "show protocols"),
                tail(
                    &std::fs::read_to_string(a.bird.log_path()).unwrap_or_default(),
                    15
                )
            ));
            if let Some(c) = &a.charon {
                s.push_str(&format!(
                    "---- az{i} charon (tail) ----\n{}\n",
                    c.log_tail(25)
                ));
            }
        }
        s
    }

    /// Step 1 and 2: both tunnels, both sessions, the VNet route over both TUNs. Returns the
    /// time it took.
    fn wait_both_up(&self, within: Duration) -> Duration {
        let took = wait_for(within, Duration::from_millis(200), || {
            let st = self.status();
            member_up(&st, 0)
                && member_up(&st, 1)
                && self.session(0) == "Established"
                && self.session(1) == "Established"
                && self.vnet().1 == tuns(&[0, 1])
        });
        match took {
            Some(t) => t,
            None => panic!(
                "tunnels, BGP sessions and ECMP not all up within {within:?}\n{}",
                self.dump()
            ),
        }
    }

    /// The assertions of an all-up site: each member's status names its own peer and BIRD
    /// protocol, each host route goes through its own TUN, the VNet route has one nexthop per
    /// TUN and both Azure instances hear the on-prem prefix; traffic crosses.
    fn check_both_up(&self) {
        let st = self.status();
        for i in 0..2 {
            let c = member(&st, i).expect("member in status");
            let bgp = c.bgp.as_ref().expect("bgp status");
            let aa = c.active_active.as_ref().expect("active_active status");
            assert_eq!(c.state, "established", "{}", self.dump());
            assert_eq!(c.tun, TUN[i]);
            assert_eq!(bgp.peer.as_deref(), Some(AZ_BGP[i].to_string().as_str()));
            assert_eq!(bgp.protocol, protocol_name_for(CONN[i]));
            assert!(bgp.routes_in_use, "{}", self.dump());
            assert_eq!((aa.group.as_str(), aa.member), ("azure", i));
            assert_eq!(
                host_route_dev(&self.onprem, i).as_deref(),
                Some(TUN[i]),
                "host route to {} not through {}\n{}",
                AZ_BGP[i],
                TUN[i],
                self.dump()
            );
            assert_eq!(self.session(i), "Established");
        }
        let (text, h) = self.vnet();
        assert_eq!(
            h,
            tuns(&[0, 1]),
            "no multipath route over both TUNs:\n{text}"
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.trim().starts_with("nexthop"))
                .count(),
            2,
            "{text}"
        );
        for (i, a) in self.az.iter().enumerate() {
            let ok = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
                a.bird
                    .birdc(
                        &a.ns,
                        &format!("show route for {ONPREM_NET} protocol onprem"),
                    )
                    .contains(ONPREM_NET)
            });
            assert!(
                ok.is_some(),
                "az{i} never heard {ONPREM_NET}\n{}",
                self.dump()
            );
        }
        self.ping_vnet("both tunnels up");
    }

    /// A VNet host answers an on-prem host over whatever path the kernel route gives.
    fn ping_vnet(&self, when: &str) {
        let out = self
            .onprem
            .exec_output([
                "ping",
                "-n",
                "-q",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                &ONPREM_HOST.to_string(),
                &VNET_HOST.to_string(),
            ])
            .expect("ping ran");
        assert!(
            out.status.success(),
            "{when}: {ONPREM_HOST} -> {VNET_HOST} unanswered: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            self.dump()
        );
    }

    /// Kills instance `i`'s strongSwan (SIGKILL: no DELETE) with its underlay dropped first.
    fn kill_instance(&mut self, i: usize) {
        self.az[i].ns.nft(DEAD_UNDERLAY).expect("nft drop");
        if let Some(c) = self.az[i].charon.take() {
            let st = c
                .proc()
                .stop_with(Signal::SIGKILL, Duration::from_secs(2))
                .expect("SIGKILL charon");
            assert!(!st.success(), "charon was not killed: {st}");
        }
    }

    /// Brings instance `i` back: underlay open, a fresh strongSwan with the same connection.
    fn restart_instance(&mut self, i: usize) {
        self.az[i]
            .ns
            .nft("delete table inet dead\n")
            .expect("nft delete");
        let c = start_charon(&self.az[i].ns, i, &self.az[i].conn);
        self.az[i].charon = Some(c);
    }
}

/// `ip monitor route` in a namespace, logged to a file.
struct RouteMonitor {
    _proc: Proc,
    file: std::path::PathBuf,
}

impl RouteMonitor {
    fn start(ns: &Netns, dir: &Path) -> RouteMonitor {
        let file = dir.join("ip-monitor.log");
        let proc = ns
            .spawn_logged(["ip", "monitor", "route"], &file)
            .expect("ip monitor");
        // It subscribes within milliseconds; give it a moment on a loaded machine.
        std::thread::sleep(Duration::from_millis(300));
        RouteMonitor { _proc: proc, file }
    }

    /// The route messages so far, one string per message (multipath nexthops joined).
    fn events(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut v: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with(char::is_whitespace) {
                if let Some(last) = v.last_mut() {
                    last.push(' ');
                    last.push_str(line.trim());
                }
            } else {
                v.push(line.trim().to_string());
            }
        }
        v
    }
}

/// A dead peer (SIGKILL, underlay dropped) leaves the ECMP route within hybridgw's DPD bound
/// while BGP's session is still up (hold time 180 s), traffic takes the other tunnel, and the
/// route gets its second nexthop back when the peer returns.
#[test]
fn strongswan_peers_ecmp_over_bgp_dead_peer_leaves_within_dpd_and_comes_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = Instant::now();
    let mut site = start("aabsk", false);
    println!(
        "site (4 namespaces, 2 charons, 3 BIRDs, hybridgw) started in {:?}",
        run.elapsed()
    );

    // 1 + 2: both tunnels, both sessions, ECMP.
    let up = site.wait_both_up(Duration::from_secs(45));
    site.check_both_up();
    println!(
        "both tunnels established, both BGP sessions Established, ECMP after {up:?}: {}",
        site.vnet().0.replace('\n', " ")
    );
    // What status says about the host routes it has installed: what the kernel has.
    let st = site.status();
    for i in 0..2 {
        let c = member(&st, i).expect("both members in status");
        println!(
            "status of {}: routes {:?}, active_active.carrying {:?} (kernel: host route via {:?})",
            c.name,
            c.routes
                .iter()
                .map(|r| format!("{} installed={}", r.prefix, r.installed))
                .collect::<Vec<_>>(),
            c.active_active.as_ref().map(|a| a.carrying),
            host_route_dev(&site.onprem, i)
        );
        assert!(
            !c.routes.is_empty() && c.routes.iter().all(|r| r.installed),
            "{}: status says its host route is not installed: {:?}",
            c.name,
            c.routes
        );
        assert_eq!(c.active_active.as_ref().map(|a| a.carrying), Some(true));
    }

    // 3: instance 0 dies without a word.
    let t0 = Instant::now();
    site.kill_instance(0);
    let (mut t_host, mut t_route, mut t_status) = (None, None, None);
    let mut session_during = String::new();
    let done = wait_for(
        DPD_BOUND + Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            if t_host.is_none() && host_route_dev(&site.onprem, 0).is_none() {
                t_host = Some(t0.elapsed());
            }
            if t_route.is_none() && site.vnet().1 == tuns(&[1]) {
                t_route = Some(t0.elapsed());
                // Is BGP still up over the dead tunnel? (It is, for up to 180 s.)
                session_during = site.session(0);
            }
            if t_status.is_none() {
                let st = site.status();
                if member(&st, 0).is_some_and(|c| {
                    c.state != "established" && c.bgp.as_ref().is_some_and(|b| !b.routes_in_use)
                }) && member_up(&st, 1)
                {
                    t_status = Some(t0.elapsed());
                }
            }
            t_host.is_some() && t_route.is_some() && t_status.is_some()
        },
    );
    let st = site.status();
    let m0 = member(&st, 0).cloned().unwrap_or_default();
    println!(
        "instance 0 killed: host route gone after {t_host:?}, VNet route on one nexthop after \
         {t_route:?}, status after {t_status:?} (member 0 `{}`, routes_in_use {}); bound \
         {DPD_BOUND:?} (DPD {DPD_DELAY_S} s + {DPD_TIMEOUT_S} s); BGP hold time {HOLD_S} s; \
         on-prem session to the dead peer meanwhile: {session_during}",
        m0.state,
        m0.bgp.as_ref().is_some_and(|b| b.routes_in_use)
    );
    assert!(
        done.is_some(),
        "dead tunnel not withdrawn: host route {t_host:?}, route {t_route:?}, status {t_status:?}\n{}",
        site.dump()
    );
    for (what, t) in [
        ("host route", t_host),
        ("VNet route", t_route),
        ("status", t_status),
    ] {
        let t = t.unwrap_or(Duration::MAX);
        assert!(
            t <= DPD_BOUND,
            "{what} took {t:?} > {DPD_BOUND:?}\n{}",
            site.dump()
        );
    }
    let t = t_route.unwrap_or_default();
    println!(
        "withdrawal took {:.0} % of the DPD bound and {:.1} % of the hold time",
        100.0 * t.as_secs_f64() / DPD_BOUND.as_secs_f64(),
        100.0 * t.as_secs_f64() / HOLD_S as f64
    );
    assert_eq!(
        session_during,
        "Established",
        "the BGP session over the dead tunnel should still be up (hold time), so the route moved \
         because hybridgw withdrew the host route\n{}",
        site.dump()
    );
    let (text, devs) = site.vnet();
    assert_eq!(devs, tuns(&[1]), "{text}");
    assert!(!text.contains("nexthop"), "{text}");
    assert!(
        member_up(&site.status(), 1),
        "the surviving member is not up\n{}",
        site.dump()
    );
    // BIRD keeps the dead session's route, unresolvable, out of the kernel.
    let in_bird = site
        .onprem_bird
        .birdc(&site.onprem, &format!("show route for {VNET} all"));
    assert!(in_bird.contains("unreachable"), "{in_bird}");
    site.ping_vnet("over the surviving tunnel");

    // The instance comes back: both nexthops again.
    let t1 = Instant::now();
    site.restart_instance(0);
    let back = site.wait_both_up(Duration::from_secs(40));
    let t_back = t1.elapsed();
    site.check_both_up();
    println!(
        "instance 0 restarted: both tunnels and ECMP back after {t_back:?} ({back:?} after charon \
         was up); checks and pings done after {:?}",
        t1.elapsed()
    );
    println!("run time {:?}", run.elapsed());
}

/// strongSwan deleting its IKE SA takes that tunnel's route at once (not after the hold time)
/// and hybridgw brings it back; SIGTERM with `[drain] on_shutdown` withdraws the routes (BIRD
/// protocols disabled), waits for quiet, deletes both tunnels and exits 0 within its bound.
#[test]
fn strongswan_delete_withdraws_at_once_and_sigterm_drains_before_exit() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = Instant::now();
    let site = start("aabsd", true);
    println!(
        "site (4 namespaces, 2 charons, 3 BIRDs, hybridgw) started in {:?}",
        run.elapsed()
    );
    let up = site.wait_both_up(Duration::from_secs(45));
    site.check_both_up();
    println!("both tunnels, sessions and ECMP up after {up:?}");

    // 4: instance 1 deletes its IKE SA (and the Child SA with it).
    let mon = RouteMonitor::start(&site.onprem, &site.dir.0);
    let before = mon.events().len();
    let t0 = Instant::now();
    site.charon(1)
        .terminate_ike("hgw")
        .expect("swanctl --terminate --ike hgw");
    let t_swanctl = t0.elapsed();
    let host = format!("{}", AZ_BGP[1]);
    let gone = |ev: &String| {
        ev.split_whitespace().take(2).collect::<Vec<_>>() == ["Deleted", host.as_str()]
    };
    let single = |ev: &String| ev.starts_with(VNET) && devs_of(ev) == tuns(&[0]);
    let (mut t_host, mut t_route) = (None, None);
    wait_for(Duration::from_secs(10), Duration::from_millis(10), || {
        let ev = mon.events();
        let new = &ev[before.min(ev.len())..];
        if t_host.is_none() && new.iter().any(gone) {
            t_host = Some(t0.elapsed());
        }
        if t_route.is_none() && new.iter().any(single) {
            t_route = Some(t0.elapsed());
        }
        t_host.is_some() && t_route.is_some()
    });
    println!(
        "instance 1 sent DELETE (swanctl returned after {t_swanctl:?}): host route gone after \
         {t_host:?}, VNet route on tunnel 1 alone after {t_route:?} (bound 3 s; hold time {HOLD_S} s)"
    );
    let bound = Duration::from_secs(3);
    assert!(
        t_host.is_some_and(|t| t <= bound) && t_route.is_some_and(|t| t <= bound),
        "route through the deleted tunnel not withdrawn within {bound:?}\nmonitor: {:#?}\n{}",
        mon.events(),
        site.dump()
    );
    // hybridgw asks again (retry 1 s): the tunnel and its nexthop come back.
    let back = site.wait_both_up(Duration::from_secs(30));
    site.check_both_up();
    println!(
        "tunnel 2 re-established and ECMP back {:?} after the DELETE ({back:?} after the withdrawal \
         was seen)",
        t0.elapsed()
    );
    // hybridgw's own account: the DELETE, the route removed at once, the retry, the route back.
    let log = plain(&site.hgw.log_text());
    let from = log
        .find("IKE SA deleted by peer conn=azure-2")
        .unwrap_or_else(|| {
            panic!(
                "no DELETE from instance 1 in hybridgw's log:\n{}",
                tail(&log, 40)
            )
        });
    let host_added = format!("route added prefix={}/32", AZ_BGP[1]);
    let story: Vec<&str> = log[from..]
        .lines()
        .filter(|l| {
            l.contains("conn=azure-2") && !l.contains("IKE_SA_INIT")
                || l.contains(&format!("prefix={}/32", AZ_BGP[1]))
        })
        .take(12)
        .collect();
    println!("hybridgw after the DELETE:\n{}", story.join("\n"));
    assert!(
        log[from..]
            .lines()
            .take(8)
            .any(|l| l.contains(&format!("route removed prefix={}/32", AZ_BGP[1]))),
        "the host route was not removed right after the DELETE:\n{}",
        tail(&log, 40)
    );
    assert!(log[from..].contains(&host_added), "{}", tail(&log, 40));

    // 5: SIGTERM drains first: the routes go (BIRD protocols disabled), then DELETE, exit 0.
    let t0 = Instant::now();
    site.hgw.proc.signal(Signal::SIGTERM).expect("SIGTERM");
    let (mut t_withdrawn, mut t_tunnels_gone) = (None, None);
    let mut exit = None;
    let drain_bound = Duration::from_secs(10 + 2 + 6);
    wait_for(drain_bound, Duration::from_millis(20), || {
        if t_withdrawn.is_none() && site.vnet().0.is_empty() {
            t_withdrawn = Some(t0.elapsed());
        }
        // The host routes go with the Child SAs: when the tunnels are deleted.
        if t_tunnels_gone.is_none() && (0..2).any(|i| host_route_dev(&site.onprem, i).is_none()) {
            t_tunnels_gone = Some(t0.elapsed());
        }
        if let Ok(Some(st)) = site.hgw.proc.try_wait() {
            exit = Some((st, t0.elapsed()));
        }
        exit.is_some()
    });
    let log = plain(&site.hgw.log_text());
    println!(
        "SIGTERM: VNet route withdrawn after {t_withdrawn:?}, first tunnel deleted after \
         {t_tunnels_gone:?}, hybridgw exited {:?} (bound {drain_bound:?}: drain timeout 10 s + \
         2 s + margin)",
        exit
    );
    let Some((status, t_exit)) = exit else {
        panic!(
            "hybridgw still running {drain_bound:?} after SIGTERM\n{}",
            site.dump()
        );
    };
    assert!(
        status.success(),
        "hybridgw exit {status}\n{}",
        tail(&log, 60)
    );
    assert!(
        t_withdrawn.is_some_and(|w| t_tunnels_gone.is_some_and(|g| w < g) && w <= t_exit),
        "the VNet route was not withdrawn before the tunnels went\n{}",
        tail(&log, 60)
    );
    assert_eq!(
        log.matches("drained: nothing arrived any more").count(),
        2,
        "both tunnels should drain to quiet before their DELETE:\n{}",
        tail(&log, 60)
    );
    let pos = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in hybridgw's log:\n{}", tail(&log, 60)))
    };
    let sigterm = pos("SIGTERM: draining every connection first");
    let disabled = [0, 1].map(|i| {
        let p = protocol_name_for(CONN[i]);
        log.match_indices("BIRD: disable")
            .map(|(k, _)| k)
            .find(|&k| log[k..].lines().next().is_some_and(|l| l.contains(&p)))
            .unwrap_or_else(|| panic!("no BIRD disable of {p} in the log:\n{}", tail(&log, 60)))
    });
    let finished = pos("drain finished: shutting down");
    let stopped = pos("hybridgw stopped");
    assert!(
        sigterm < disabled[0]
            && sigterm < disabled[1]
            && disabled[0].max(disabled[1]) < finished
            && finished < stopped,
        "drain steps out of order (SIGTERM {sigterm}, disable {disabled:?}, finished {finished}, \
         stopped {stopped}):\n{}",
        tail(&log, 60)
    );
    // Both instances got DELETE: strongSwan holds no IKE SA, and the on-prem sessions are down.
    for i in 0..2 {
        let c = site.charon(i);
        let gone = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
            c.list_sas().is_ok_and(|s| s.is_empty())
        });
        assert!(
            gone.is_some(),
            "instance {i} still holds an IKE SA after hybridgw exited\n{}",
            c.log_tail(30)
        );
        let state = site.session(i);
        assert_ne!(state, "Established", "session {i} still up after the drain");
    }
    let drain_lines: Vec<&str> = log[sigterm..]
        .lines()
        .filter(|l| l.contains("drain") || l.contains("BIRD:") || l.contains("SIGTERM"))
        .collect();
    println!(
        "drain log:\n{}\nexit 0 after {t_exit:?}; run time {:?}",
        drain_lines.join("\n"),
        run.elapsed()
    );
}
