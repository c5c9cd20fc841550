//! Static-routing failover with real routes and real traffic: a router namespace with two paths
//! to a "VNet" prefix (a veth standing for ExpressRoute, one standing for the tunnel), the route
//! manager and path monitor running on both ends, a host pinging every 10 ms through it. The
//! primary link goes down (and comes back), then stays up but is blackholed (and is healed);
//! which path carries the traffic is read from interface counters at each step, and the loss and
//! the time without traffic of each transition are printed.

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use failover::driver::{PathEvent, run_failover};
use failover::monitor::{MonitorConfig, PathState};
use failover::probe::{IcmpProber, ProbeConfig};
use failover::routes::{
    Carrier, RouteConfig, RouteManager, StatusHandle, ignore_routes_with_linkdown,
};
use netns::{Netns, veth_pair};

const VNET_HOST: &str = "198.19.1.10";

fn monitor_cfg() -> MonitorConfig {
    MonitorConfig {
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(50),
        down_after: 3,
        up_after: 3,
        hold_down: Duration::from_secs(2),
    }
}

/// One end's failover task, running on its own thread inside a namespace.
struct Side {
    name: &'static str,
    events: tokio::sync::mpsc::UnboundedReceiver<PathEvent>,
    status: StatusHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    seen: Vec<PathEvent>,
}

impl Side {
    /// Waits (bounded) for a change to `to`; returns it.
    fn wait_for(&mut self, to: PathState, within: Duration) -> PathEvent {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.events.try_recv() {
                Ok(e) => {
                    println!(
                        "  [{}] {} -> {} ({} in a row)",
                        self.name, e.change.from, e.change.to, e.change.streak
                    );
                    self.seen.push(e);
                    if e.change.to == to {
                        return e;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        panic!(
            "{}: no change to {to} within {within:?}; seen {:?}",
            self.name, self.seen
        );
    }

    /// Any changes that arrived without waiting.
    fn drain(&mut self) -> Vec<PathEvent> {
        let mut v = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            println!("  [{}] {} -> {}", self.name, e.change.from, e.change.to);
            v.push(e);
        }
        self.seen.extend(v.iter().copied());
        v
    }
}

struct SideCfg {
    routes: RouteConfig,
    probe: ProbeConfig,
}

/// Starts the failover task of one end inside `ns` (a thread that lives until `Side::stop`).
fn start_side<'s, 'e>(
    scope: &'s std::thread::Scope<'s, 'e>,
    ns: &'e Netns,
    name: &'static str,
    cfg: SideCfg,
) -> (Side, std::thread::ScopedJoinHandle<'s, ()>) {
    let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (st_tx, st_rx) = mpsc::channel::<StatusHandle>();
    let h = scope.spawn(move || {
        ns.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().expect("rtnetlink");
                tokio::spawn(conn);
                ignore_routes_with_linkdown(&cfg.routes.primary_interface).expect("sysctl");
                let mut rm = RouteManager::new(handle, cfg.routes)
                    .await
                    .expect("route manager");
                rm.install_backup().await.expect("backup routes");
                st_tx.send(rm.status_handle()).expect("status handle");
                let prober = IcmpProber::new(&cfg.probe).expect("prober");
                tokio::select! {
                    r = run_failover(monitor_cfg(), prober, Some(&mut rm), ev_tx) => {
                        r.expect("monitor config");
                    }
                    _ = stop_rx => {}
                }
                rm.remove_all().await.expect("removing routes");
            });
        });
    });
    let status = st_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{name}: failover task did not start: {e}"));
    (
        Side {
            name,
            events: ev_rx,
            status,
            stop: Some(stop_tx),
            seen: Vec::new(),
        },
        h,
    )
}

fn counter(ns: &Netns, dev: &str, what: &str) -> u64 {
    ns.exec(["cat", &format!("/sys/class/net/{dev}/statistics/{what}")])
        .unwrap_or_else(|e| panic!("{dev} {what}: {e}"))
        .trim()
        .parse()
        .expect("a counter")
}

/// Packets sent towards the VNet on each path of the router during one second: (er0, tun0).
fn carried(rtr: &Netns) -> (u64, u64) {
    let a = (
        counter(rtr, "er0", "tx_packets"),
        counter(rtr, "tun0", "tx_packets"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let b = (
        counter(rtr, "er0", "tx_packets"),
        counter(rtr, "tun0", "tx_packets"),
    );
    (b.0 - a.0, b.1 - a.1)
}

fn assert_path(rtr: &Netns, side: &Side, want: Carrier, step: &str) {
    let (er, tun) = carried(rtr);
    println!("  {step}: 1 s of traffic: er0 tx {er} packets, tun0 tx {tun} packets");
    // ~60-100 pings/s on the carrying path (ping -i 0.01 on a busy machine); the other sees
    // only the monitor's probes (3/s) and ARP.
    let (on, off) = match want {
        Carrier::Primary => (er, tun),
        Carrier::Tunnel => (tun, er),
        other => panic!("unexpected {other:?}"),
    };
    assert!(
        on >= 30 && off <= 15,
        "{step}: expected traffic on {want}: er0 {er}, tun0 {tun}"
    );
    let st = side.status.snapshot();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].carrier, want, "{step}: status {st:?}");
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Replies (seq, epoch seconds) from `ping -D` output, and the highest sequence number sent.
fn parse_ping(out: &str) -> (Vec<(u32, f64)>, u32) {
    let mut replies = Vec::new();
    let mut max_seq = 0;
    for line in out.lines() {
        let Some(seq) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        max_seq = max_seq.max(seq);
        if !line.contains("bytes from") {
            continue;
        }
        let ts = line
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
            .and_then(|(t, _)| t.parse::<f64>().ok());
        if let Some(ts) = ts {
            replies.push((seq, ts));
        }
    }
    (replies, max_seq)
}

/// Loss and the longest time without a reply for the traffic that resumed in `[from, to)`
/// (epoch seconds): a silence is counted in the window where it ends.
fn window(replies: &[(u32, f64)], from: f64, to: f64) -> (u32, f64) {
    let mut lost = 0u32;
    let mut gap = 0.0f64;
    for w in replies.windows(2) {
        let (s0, t0) = w[0];
        let (s1, t1) = w[1];
        if t1 >= from && t1 < to {
            gap = gap.max(t1 - t0);
            lost += s1.saturating_sub(s0).saturating_sub(1);
        }
    }
    (lost, gap)
}

#[test]
fn traffic_moves_to_the_tunnel_and_back_link_down_and_blackhole() {
    let host = Netns::new("fo-host").unwrap();
    let rtr = Netns::new("fo-rtr").unwrap();
    let az = Netns::new("fo-az").unwrap();
    veth_pair(&host, "lan0", &rtr, "lan0").unwrap();
    veth_pair(&rtr, "er0", &az, "er0").unwrap();
    veth_pair(&rtr, "tun0", &az, "tun0").unwrap();
    host.add_addr("lan0", "198.18.1.10/24").unwrap();
    host.exec(["ip", "route", "add", "default", "via", "198.18.1.1"])
        .unwrap();
    rtr.add_addr("lan0", "198.18.1.1/24").unwrap();
    rtr.add_addr("er0", "192.0.2.1/30").unwrap();
    rtr.add_addr("tun0", "169.254.21.1/30").unwrap();
    az.add_addr("er0", "192.0.2.2/30").unwrap();
    az.add_addr("tun0", "169.254.21.2/30").unwrap();
    // The "VNet" host: an address of the Azure namespace (no dummy driver on this kernel).
    az.add_addr("lo", "198.19.1.10/32").unwrap();
    for ns in [&rtr, &az] {
        ns.set_forwarding(true).unwrap();
        ns.sysctl_set("net.ipv4.conf.all.rp_filter", "0").unwrap();
        ns.sysctl_set("net.ipv4.conf.default.rp_filter", "0")
            .unwrap();
    }
    // The ExpressRoute routes (what BGP or the operator installs; not the route manager's).
    let er_route_rtr = [
        "ip",
        "route",
        "replace",
        "198.19.1.0/24",
        "via",
        "192.0.2.2",
        "dev",
        "er0",
        "metric",
        "100",
    ];
    rtr.exec(er_route_rtr).unwrap();
    az.exec([
        "ip",
        "route",
        "replace",
        "198.18.1.0/24",
        "via",
        "192.0.2.1",
        "dev",
        "er0",
        "metric",
        "100",
    ])
    .unwrap();

    let side = |prefix: &str, gw: &str, src: &str, target: &str| SideCfg {
        routes: {
            let mut r = RouteConfig::new(vec![prefix.parse().unwrap()], "tun0", "er0");
            r.tunnel_gateway = Some(gw.parse().unwrap());
            r
        },
        // The probe's source is the circuit link address: the far end answers it over its
        // connected route, which no failover ever overrides.
        probe: ProbeConfig {
            interface: Some("er0".into()),
            source: Some(src.parse::<Ipv4Addr>().unwrap()),
            target: target.parse().unwrap(),
        },
    };

    let ping_log = tempfile::NamedTempFile::new().unwrap();
    let mut marks: Vec<(&str, f64, bool)> = Vec::new();
    std::thread::scope(|s| {
        let (mut r, rh) = start_side(
            s,
            &rtr,
            "rtr",
            side("198.19.1.0/24", "169.254.21.2", "192.0.2.1", VNET_HOST),
        );
        let (mut a, ah) = start_side(
            s,
            &az,
            "az",
            side("198.18.1.0/24", "169.254.21.1", "192.0.2.2", "198.18.1.1"),
        );
        let ping = host
            .spawn_logged(
                ["ping", "-n", "-D", "-i", "0.01", "-W", "2", VNET_HOST],
                ping_log.path(),
            )
            .unwrap();

        println!("step 1: ExpressRoute carries the traffic");
        r.wait_for(PathState::Up, Duration::from_secs(5));
        a.wait_for(PathState::Up, Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(300));
        assert_path(&rtr, &r, Carrier::Primary, "step 1");

        println!("step 2: the circuit link goes down");
        marks.push(("link down (failover)", epoch(SystemTime::now()), true));
        rtr.link_down("er0").unwrap();
        r.wait_for(PathState::Down, Duration::from_secs(5));
        a.wait_for(PathState::Down, Duration::from_secs(5));
        assert_path(&rtr, &r, Carrier::Tunnel, "step 2");
        assert!(r.status.snapshot()[0].overridden);

        println!("step 3: the link comes back (and its route with it)");
        marks.push(("link restored (failback)", epoch(SystemTime::now()), false));
        rtr.link_up("er0").unwrap();
        // An administratively downed link loses its routes: re-add, as BGP or networkd would.
        for _ in 0..50 {
            if rtr.exec(er_route_rtr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let up_r = r.wait_for(PathState::Up, Duration::from_secs(10));
        a.wait_for(PathState::Up, Duration::from_secs(10));
        // Hold-down: not before 3 successes + 2 s after the restore.
        assert!(
            epoch(up_r.wall) - marks[1].1 >= 2.0,
            "failback before the hold-down"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_path(&rtr, &r, Carrier::Primary, "step 3");

        println!("step 4: the link stays up but the far end blackholes it");
        marks.push(("blackhole (failover)", epoch(SystemTime::now()), true));
        az.nft(
            "table inet blackhole {\n\
             chain i { type filter hook input priority -10; iifname \"er0\" drop; }\n\
             chain o { type filter hook output priority -10; oifname \"er0\" drop; }\n\
             chain f { type filter hook forward priority -10; iifname \"er0\" drop; oifname \"er0\" drop; }\n\
             }\n",
        )
        .unwrap();
        r.wait_for(PathState::Down, Duration::from_secs(5));
        a.wait_for(PathState::Down, Duration::from_secs(5));
        assert_path(&rtr, &r, Carrier::Tunnel, "step 4");
        // The ExpressRoute route is still there (link up): only the override moved the traffic.
        let routes = rtr.exec(["ip", "route", "show", "198.19.1.0/24"]).unwrap();
        assert!(routes.contains("via 192.0.2.2 dev er0"), "{routes}");

        println!("step 5: the blackhole is lifted");
        marks.push((
            "blackhole lifted (failback)",
            epoch(SystemTime::now()),
            false,
        ));
        az.nft("delete table inet blackhole\n").unwrap();
        r.wait_for(PathState::Up, Duration::from_secs(10));
        a.wait_for(PathState::Up, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        assert_path(&rtr, &r, Carrier::Primary, "step 5");
        marks.push(("end", epoch(SystemTime::now()), false));
        assert!(r.drain().is_empty() && a.drain().is_empty(), "flapping");

        ping.stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(3))
            .unwrap();
        for side in [&mut r, &mut a] {
            if let Some(tx) = side.stop.take() {
                let _ = tx.send(());
            }
        }
        rh.join().unwrap();
        ah.join().unwrap();
    });

    let out = std::fs::read_to_string(ping_log.path()).unwrap();
    let (replies, sent) = parse_ping(&out);
    assert!(replies.len() > 500, "too few replies: {}", replies.len());
    println!("ping every 10 ms: {sent} sent, {} answered", replies.len());
    println!(
        "{:<30} {:>8} {:>18}",
        "transition", "lost", "without traffic"
    );
    for w in marks.windows(2) {
        let (name, from, failover) = w[0];
        let (lost, gap) = window(&replies, from, w[1].1);
        println!("{name:<30} {lost:>8} {:>16.0}ms", gap * 1000.0);
        if failover {
            // 300 ms x 3 with a 50 ms probe timeout: at most ~1 s; asserted loosely.
            assert!(gap < 1.3, "{name}: {gap:.3} s without traffic");
        } else {
            assert!(lost <= 3, "{name}: {lost} packets lost on failback");
        }
    }
    // The routes the managers installed are gone again.
    let left = rtr.exec(["ip", "route", "show", "dev", "tun0"]).unwrap();
    assert!(!left.contains("198.19.1.0/24"), "{left}");
}
