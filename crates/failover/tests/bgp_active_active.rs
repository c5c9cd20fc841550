//! Azure's dual redundancy with real BIRD 2: an active-active Azure VPN gateway (two instances,
//! AS65515 at 169.254.21.2 and 169.254.22.2, each a BIRD advertising the VNet prefix), two
//! hybridgw appliances with a tunnel to each instance (veths stand in for the TUNs; the test adds
//! and removes the host routes to Azure's BGP addresses as hybridgw does) and the on-prem router
//! with an ExpressRoute circuit (an edge BIRD, AS12076). Every BIRD but Azure's and the edge's
//! runs the configuration `failover::bird` renders for `appliance-config/bird/ha-*.conf`, with
//! test timers.
//!
//! ```text
//!                 [az0 169.254.21.2]          [az1 169.254.22.2]
//!                  to-a |    | to-b            to-a |    | to-b
//!             azure     |    |  azure        azure-2|    | azure-2
//!   [appliance A 192.0.2.2]  [appliance B 192.0.2.3]   (BGP: A 169.254.21.1, B .21.5, on both tunnels)
//!             lan0 \          / lan0
//!          lan-a    \        /    lan-b
//!              [router: bridge lan0 192.0.2.1/28] er0 192.0.2.17 -- er0 192.0.2.18 [edge]
//! ```
//!
//! Checked: the VNet route goes over ExpressRoute while it is up (local preference 150, not
//! merged with the VPN routes); without it the router spreads it over both appliances (two
//! nexthops) and each appliance over both tunnels (two nexthops); a tunnel whose host route goes
//! leaves its appliance's multipath route within seconds (not the 180 s hold time) and comes back;
//! an appliance with no tunnel left installs no `unreachable` route and leaves the router's
//! route; an appliance whose LAN link goes down, or whose LAN stays up but carries nothing
//! (BFD), leaves the router's route in under 2 s and withdraws the on-prem prefixes from Azure.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use failover::bird::{self, ApplianceBird, BgpTimers, BirdLog, RouterBird};
use failover::birdctl::BirdControl;
use netns::{Netns, veth_pair};

const VNET: &str = "198.19.1.0/24";
const ONPREM_NET: &str = "198.18.0.0/22";
const BFD_MS: u32 = 100;

/// The ranges this test may put on an interface or a route (the project's documentation,
/// benchmarking and APIPA BGP ranges; `netns` itself allows only the first APIPA /24).
fn allowed(cidr: &str) -> bool {
    let (a, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let (Ok(a), Ok(len)) = (a.parse::<Ipv4Addr>(), len.parse::<u8>()) else {
        return false;
    };
    let inside = |net: [u8; 4], plen: u8| {
        let mask = u32::MAX << (32 - u32::from(plen));
        len >= plen && u32::from(a) & mask == u32::from(Ipv4Addr::from(net))
    };
    [
        ([192, 0, 2, 0], 24),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([198, 18, 0, 0], 15),
        ([169, 254, 21, 0], 24),
        ([169, 254, 22, 0], 24),
    ]
    .into_iter()
    .any(|(n, l)| inside(n, l))
}

fn ip(ns: &Netns, args: &[&str]) {
    for a in args {
        if a.contains('.')
            && a.bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
        {
            assert!(allowed(a), "{a} is outside the ranges tests may use");
        }
    }
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    ns.exec(argv).unwrap();
}

/// What hybridgw installs while a tunnel's Child SA is up (`[connection.bgp] azure_peer`).
fn add_host_route(ns: &Netns, peer: &str, dev: &str) {
    ip(
        ns,
        &[
            "route",
            "add",
            &format!("{peer}/32"),
            "dev",
            dev,
            "proto",
            "static",
        ],
    );
}

fn del_host_route(ns: &Netns, peer: &str, dev: &str) {
    ip(ns, &["route", "del", &format!("{peer}/32"), "dev", dev]);
}

struct Bird {
    sock: PathBuf,
    _proc: netns::Bird,
}

fn start_bird(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Bird {
    let b = netns::Bird::start(ns, dir, name, conf).unwrap();
    Bird {
        sock: b.socket().to_path_buf(),
        _proc: b,
    }
}

impl Bird {
    /// A command's reply text through the control socket (this crate's client, not `birdc`);
    /// an error becomes its message, so a poll just sees "not yet".
    fn cmd(&self, cmd: &str) -> String {
        match BirdControl::connect(&self.sock, Duration::from_secs(2))
            .and_then(|mut c| c.command(cmd))
        {
            Ok(r) => r.text(),
            Err(e) => format!("error: {e}"),
        }
    }

    /// The protocols that have a route to `net` in BIRD's table (reachable or not).
    fn route_protocols(&self, net: &str) -> String {
        self.cmd(&format!("show route for {net} all"))
    }
}

/// The kernel's route to `net`: its raw text and its (gateway, device) nexthops.
fn kernel_route(ns: &Netns, net: &str) -> (String, Vec<(String, String)>) {
    let out = ns.exec(["ip", "route", "show", net]).unwrap();
    let mut hops = Vec::new();
    for line in out.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let after = |k: &str| t.iter().position(|w| *w == k).and_then(|i| t.get(i + 1));
        if let (Some(via), Some(dev)) = (after("via"), after("dev")) {
            hops.push((via.to_string(), dev.to_string()));
        }
    }
    hops.sort();
    (out.trim().to_string(), hops)
}

fn hops(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// Polls (every 20 ms, at most `within` and 10,000 times) until `pred` holds; returns the time
/// it took.
fn wait_until(within: Duration, what: &str, mut pred: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    for _ in 0..10_000 {
        if pred() {
            return start.elapsed();
        }
        if start.elapsed() >= within {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within {within:?}");
}

fn test_timers() -> BgpTimers {
    BgpTimers {
        keepalive: 60,
        hold: 180,
        connect_retry: 2,
        connect_delay: 1,
        error_wait: (1, 5),
    }
}

fn appliance(mut d: ApplianceBird) -> ApplianceBird {
    d.log = BirdLog::Stderr;
    d.timers = test_timers();
    for l in &mut d.lan {
        l.bfd_interval_ms = BFD_MS;
    }
    d
}

fn router() -> RouterBird {
    let mut d = bird::ha_router();
    d.log = BirdLog::Stderr;
    d.timers = test_timers();
    for l in &mut d.appliances {
        l.bfd_interval_ms = BFD_MS;
    }
    if let Some(er) = &mut d.expressroute {
        er.bfd_interval_ms = BFD_MS;
    }
    d
}

/// An Azure gateway instance: AS65515 at `addr`, passive (Azure does not open APIPA sessions),
/// one multihop session per appliance, advertising the VNet prefix.
fn azure_conf(addr: &str, appliances: [(&str, &str); 2]) -> String {
    let mut s = format!(
        "log stderr all;\nrouter id {addr};\n\
         protocol device {{ scan time 10; }}\n\
         protocol static vnet {{ ipv4; route {VNET} blackhole; }}\n\
         template bgp onprem {{\n  local {addr} as 65515;\n  multihop 2;\n  passive on;\n\
         \x20 hold time 180;\n  keepalive time 60;\n  connect retry time 2;\n  error wait time 1, 5;\n\
         \x20 ipv4 {{ import all; export where proto = \"vnet\"; next hop self; }};\n}}\n"
    );
    for (name, peer) in appliances {
        s.push_str(&format!(
            "protocol bgp {name} from onprem {{ neighbor {peer} as 65010; }}\n"
        ));
    }
    s
}

fn edge_conf() -> String {
    format!(
        "log stderr all;\nrouter id 192.0.2.18;\n\
         protocol device {{ scan time 10; }}\n\
         protocol bfd {{ interface \"er0\" {{ min rx interval {BFD_MS} ms; min tx interval {BFD_MS} ms; multiplier 3; }}; }}\n\
         protocol static vnet {{ ipv4; route {VNET} blackhole; }}\n\
         protocol bgp onprem {{\n  local 192.0.2.18 as 12076;\n  neighbor 192.0.2.17 as 65010;\n  direct;\n  bfd on;\n\
         \x20 hold time 180;\n  keepalive time 60;\n  connect retry time 2;\n  error wait time 1, 5;\n\
         \x20 ipv4 {{ import all; export where proto = \"vnet\"; next hop self; }};\n}}\n"
    )
}

#[test]
fn dual_redundancy_spreads_over_tunnels_and_appliances_and_fails_over() {
    let rt = Netns::new("fo-aa-rt").unwrap();
    let app_a = Netns::new("fo-aa-a").unwrap();
    let app_b = Netns::new("fo-aa-b").unwrap();
    let az0 = Netns::new("fo-aa-az0").unwrap();
    let az1 = Netns::new("fo-aa-az1").unwrap();
    let edge = Netns::new("fo-aa-edge").unwrap();

    // The on-prem LAN: a bridge on the router, one port per appliance.
    ip(&rt, &["link", "add", "lan0", "type", "bridge"]);
    veth_pair(&rt, "lan-a", &app_a, "lan0").unwrap();
    veth_pair(&rt, "lan-b", &app_b, "lan0").unwrap();
    for port in ["lan-a", "lan-b"] {
        ip(&rt, &["link", "set", port, "master", "lan0"]);
    }
    ip(&rt, &["link", "set", "lan0", "up"]);
    ip(&rt, &["addr", "add", "192.0.2.1/28", "dev", "lan0"]);
    ip(&app_a, &["addr", "add", "192.0.2.2/28", "dev", "lan0"]);
    ip(&app_b, &["addr", "add", "192.0.2.3/28", "dev", "lan0"]);
    // The ExpressRoute circuit.
    veth_pair(&rt, "er0", &edge, "er0").unwrap();
    ip(&rt, &["addr", "add", "192.0.2.17/30", "dev", "er0"]);
    ip(&edge, &["addr", "add", "192.0.2.18/30", "dev", "er0"]);
    // Four tunnels in a full mesh. Both tunnels of an appliance carry its one on-prem BGP address
    // (a /32, as hybridgw's `tun_address`: on Azure an appliance is one local network gateway,
    // with one BGP address); each Azure instance has one BGP address (on lo).
    ip(&az0, &["addr", "add", "169.254.21.2/32", "dev", "lo"]);
    ip(&az1, &["addr", "add", "169.254.22.2/32", "dev", "lo"]);
    for (app, own, az_if) in [(&app_a, 1u8, "to-a"), (&app_b, 5u8, "to-b")] {
        veth_pair(app, "azure", &az0, az_if).unwrap();
        veth_pair(app, "azure-2", &az1, az_if).unwrap();
        let mine = format!("169.254.21.{own}");
        ip(app, &["addr", "add", &format!("{mine}/32"), "dev", "azure"]);
        ip(
            app,
            &["addr", "add", &format!("{mine}/32"), "dev", "azure-2"],
        );
        ip(&az0, &["route", "add", &format!("{mine}/32"), "dev", az_if]);
        ip(&az1, &["route", "add", &format!("{mine}/32"), "dev", az_if]);
        add_host_route(app, "169.254.21.2", "azure");
        add_host_route(app, "169.254.22.2", "azure-2");
    }

    let a_desc = appliance(bird::ha_appliance_a());
    let b_desc = appliance(bird::ha_appliance_b());
    let r_desc = router();
    bird::check_site(&r_desc, &[&a_desc, &b_desc]).unwrap();
    let (pa0, pa1) = (
        a_desc.azure[0].protocol.clone(),
        a_desc.azure[1].protocol.clone(),
    );
    assert_eq!(
        (pa0.as_str(), pa1.as_str()),
        ("azure_azure", "azure_azure_2")
    );

    let dir = tempfile::tempdir().unwrap();
    let _b_edge = start_bird(&edge, dir.path(), "edge", &edge_conf());
    let b_az0 = start_bird(
        &az0,
        dir.path(),
        "az0",
        &azure_conf(
            "169.254.21.2",
            [("onprem_a", "169.254.21.1"), ("onprem_b", "169.254.21.5")],
        ),
    );
    let b_az1 = start_bird(
        &az1,
        dir.path(),
        "az1",
        &azure_conf(
            "169.254.22.2",
            [("onprem_a", "169.254.21.1"), ("onprem_b", "169.254.21.5")],
        ),
    );
    let b_rt = start_bird(&rt, dir.path(), "router", &r_desc.render().unwrap());
    let b_a = start_bird(&app_a, dir.path(), "a", &a_desc.render().unwrap());
    let b_b = start_bird(&app_b, dir.path(), "b", &b_desc.render().unwrap());

    let tunnels = hops(&[("169.254.21.2", "azure"), ("169.254.22.2", "azure-2")]);
    let both_appliances = hops(&[("192.0.2.2", "lan0"), ("192.0.2.3", "lan0")]);
    let via_er = hops(&[("192.0.2.18", "er0")]);

    // 1. Everything up: each appliance spreads the VNet route over its two tunnels, the router
    //    has it from ExpressRoute and from both appliances and uses ExpressRoute alone.
    let t = wait_until(
        Duration::from_secs(60),
        "all sessions up, routes in place",
        || {
            kernel_route(&app_a, VNET).1 == tunnels
                && kernel_route(&app_b, VNET).1 == tunnels
                && kernel_route(&rt, VNET).1 == via_er
                && {
                    let r = b_rt.route_protocols(VNET);
                    r.contains("appliance_a") && r.contains("appliance_b")
                }
        },
    );
    println!("sessions up and routes installed after {t:?}");
    println!("appliance A: {}", kernel_route(&app_a, VNET).0);
    println!("router:\n{}", b_rt.route_protocols(VNET));
    let best = b_rt.cmd(&format!("show route for {VNET} primary all"));
    assert!(best.contains("BGP.local_pref: 150"), "{best}");
    // Both Azure instances hear the on-prem prefixes from both appliances (learned from the
    // router over iBGP), and the appliances route the return traffic to the router.
    for az in [&b_az0, &b_az1] {
        wait_until(Duration::from_secs(10), "on-prem prefix at Azure", || {
            let r = az.route_protocols(ONPREM_NET);
            r.contains("onprem_a") && r.contains("onprem_b")
        });
        // Exactly the on-prem prefixes: no VNet route and nothing more specific comes back.
        for from in ["onprem_a", "onprem_b"] {
            let r = az.cmd(&format!("show route protocol {from}"));
            let mut nets: Vec<&str> = r
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|w| w.starts_with(|c: char| c.is_ascii_digit()))
                .collect();
            nets.sort_unstable();
            assert_eq!(nets, ["198.18.0.0/22", "198.18.8.0/24"], "{from}: {r}");
        }
    }
    wait_until(
        Duration::from_secs(5),
        "A's return route to the router",
        || kernel_route(&app_a, ONPREM_NET).1 == hops(&[("192.0.2.1", "lan0")]),
    );
    // The control socket reports the generated protocol names.
    for app in [&b_a, &b_b] {
        let mut ctl = BirdControl::connect(&app.sock, Duration::from_secs(2)).unwrap();
        for p in [pa0.as_str(), pa1.as_str(), "onprem_router"] {
            assert!(ctl.protocol_state(p).unwrap().is_established(), "{p}");
        }
    }

    // 2. The circuit goes: the router spreads the VNet route over both appliances (ECMP).
    edge.link_down("er0").unwrap();
    let t = wait_until(
        Duration::from_secs(10),
        "router ECMP over the appliances",
        || kernel_route(&rt, VNET).1 == both_appliances,
    );
    println!("circuit down: router ECMP over both appliances after {t:?}");
    println!("router: {}", kernel_route(&rt, VNET).0);

    // 3. One of A's tunnels goes (hybridgw removes its host route): A keeps the other, at once.
    del_host_route(&app_a, "169.254.21.2", "azure");
    let t = wait_until(Duration::from_secs(5), "A on one tunnel", || {
        kernel_route(&app_a, VNET).1 == hops(&[("169.254.22.2", "azure-2")])
    });
    println!("A lost tunnel azure: one nexthop after {t:?}");
    assert!(
        b_a.cmd(&format!("show route for {VNET} protocol {pa0}"))
            .contains("unreachable")
    );
    assert_eq!(kernel_route(&rt, VNET).1, both_appliances);
    add_host_route(&app_a, "169.254.21.2", "azure");
    let t = wait_until(Duration::from_secs(5), "A on two tunnels again", || {
        kernel_route(&app_a, VNET).1 == tunnels
    });
    println!("A's tunnel back: two nexthops after {t:?}");

    // 4. Both of A's tunnels go: A installs nothing (no `unreachable` route) and stops
    //    advertising the VNet to the router, which keeps B only.
    del_host_route(&app_a, "169.254.21.2", "azure");
    del_host_route(&app_a, "169.254.22.2", "azure-2");
    let t = wait_until(Duration::from_secs(5), "router on B only", || {
        kernel_route(&rt, VNET).1 == hops(&[("192.0.2.3", "lan0")])
    });
    println!("A without tunnels: router on B alone after {t:?}");
    wait_until(Duration::from_secs(5), "A's kernel route gone", || {
        kernel_route(&app_a, VNET).0.is_empty()
    });
    let in_bird = b_a.cmd(&format!("show route for {VNET} all"));
    assert!(
        in_bird.contains(&pa0) && in_bird.contains(&pa1) && in_bird.contains("unreachable"),
        "A's BIRD still has both routes, unresolvable:\n{in_bird}"
    );
    assert!(!in_bird.contains(" unicast "), "{in_bird}");
    add_host_route(&app_a, "169.254.21.2", "azure");
    add_host_route(&app_a, "169.254.22.2", "azure-2");
    wait_until(Duration::from_secs(5), "router ECMP again", || {
        kernel_route(&rt, VNET).1 == both_appliances && kernel_route(&app_a, VNET).1 == tunnels
    });

    // 5. A's LAN link goes down (the router's bridge stays up: only BFD tells the router).
    app_a.link_down("lan0").unwrap();
    let t = wait_until(
        Duration::from_secs(5),
        "router on B only (A's link down)",
        || kernel_route(&rt, VNET).1 == hops(&[("192.0.2.3", "lan0")]),
    );
    println!("A's LAN link down: router on B alone after {t:?}");
    assert!(t < Duration::from_secs(2), "{t:?}");
    // Cut off from the router, A withdraws the on-prem prefixes from both Azure instances.
    for az in [&b_az0, &b_az1] {
        wait_until(
            Duration::from_secs(5),
            "A's on-prem prefix withdrawn",
            || {
                let r = az.route_protocols(ONPREM_NET);
                !r.contains("onprem_a") && r.contains("onprem_b")
            },
        );
    }
    app_a.link_up("lan0").unwrap();
    let t = wait_until(
        Duration::from_secs(30),
        "router ECMP after A's link",
        || kernel_route(&rt, VNET).1 == both_appliances,
    );
    println!("A's LAN link up: router ECMP again after {t:?}");
    for az in [&b_az0, &b_az1] {
        wait_until(Duration::from_secs(10), "A's on-prem prefix back", || {
            az.route_protocols(ONPREM_NET).contains("onprem_a")
        });
    }

    // 6. B's LAN link stays up but carries nothing (nftables): BFD, not the 180 s hold time.
    wait_until(Duration::from_secs(10), "BFD up with B", || {
        let s = b_rt.cmd("show bfd sessions");
        s.lines()
            .any(|l| l.contains("192.0.2.3") && l.contains("Up"))
    });
    app_b
        .nft(
            "table inet blackhole {\n\
             chain i { type filter hook input priority -10; iifname \"lan0\" drop; }\n\
             chain o { type filter hook output priority -10; oifname \"lan0\" drop; }\n\
             }\n",
        )
        .unwrap();
    let t = wait_until(
        Duration::from_secs(5),
        "router on A only (B blackholed)",
        || kernel_route(&rt, VNET).1 == hops(&[("192.0.2.2", "lan0")]),
    );
    println!("B's LAN blackholed: router on A alone after {t:?}");
    assert!(t < Duration::from_secs(2), "{t:?}");
    for az in [&b_az0, &b_az1] {
        wait_until(
            Duration::from_secs(5),
            "B's on-prem prefix withdrawn",
            || !az.route_protocols(ONPREM_NET).contains("onprem_b"),
        );
    }
    app_b.nft("delete table inet blackhole\n").unwrap();
    let t = wait_until(
        Duration::from_secs(30),
        "router ECMP after B's blackhole",
        || kernel_route(&rt, VNET).1 == both_appliances,
    );
    println!("B's LAN back: router ECMP again after {t:?}");

    // 7. The circuit returns: ExpressRoute alone again.
    edge.link_up("er0").unwrap();
    let t = wait_until(
        Duration::from_secs(30),
        "router back on ExpressRoute",
        || kernel_route(&rt, VNET).1 == via_er,
    );
    println!("circuit up: router back on ExpressRoute after {t:?}");
}
