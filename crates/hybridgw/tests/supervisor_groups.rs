//! Active-active groups, BGP tunnels and planned drains in the sans-IO supervisor, without root:
//! one on-prem appliance with two tunnels (an active-active pair towards two Azure gateway
//! instances), each instance a supervisor of its own, all on an in-memory network under
//! simulated time. Each side has a fake data plane that applies the supervisor's commands and
//! logs the route and BIRD commands in the order they came.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use dataplane::{Direction, SaStats, Snapshot, TunnelId};
use hybridgw::config::{self, Config};
use hybridgw::control::{ConnectionStatus, Request};
use hybridgw::engine::Engine;
use hybridgw::supervisor::{Command, Supervisor};

const ONPREM: &str = "192.0.2.1";
const AZ0: &str = "192.0.2.11";
const AZ1: &str = "192.0.2.12";
const VNET: &str = "198.19.0.0/24";
const SOCK: &str = "/run/bird/test.ctl";

fn parse(text: &str) -> Config {
    let cfg = config::parse(Path::new("test.toml"), text, &|_| None).expect("valid test config");
    config::cross_check(&cfg, text).expect("cross-checked");
    cfg
}

/// The on-prem appliance: one connection, two remote addresses (two tunnels), BGP to each
/// instance, a static VNet prefix shared by the pair.
fn onprem(extra_conn: &str, top: &str) -> Config {
    parse(&format!(
        "{top}[[connection]]\nname = \"azure\"\nlocal_address = \"{ONPREM}\"\nremote_address = [\"{AZ0}\", \"{AZ1}\"]\n\
         psk = \"supervisor-test-psk-0123456789\"\nike_proposals = \"aes256-sha256-modp2048\"\n\
         esp_proposals = \"aes256gcm16\"\nbehaviour = \"both\"\ntun_name = \"azure\"\n\
         tun_address = [\"169.254.21.1/32\", \"169.254.22.1/32\"]\nremote_prefixes = [\"{VNET}\"]\n\
         {extra_conn}[connection.dpd]\ndelay_seconds = 10\ntimeout_seconds = 30\naction = \"restart\"\n\
         [connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.22.2\"]\nbird_socket = \"{SOCK}\"\n"
    ))
}

/// A single-tunnel on-prem appliance with static routes only.
fn onprem_static(top: &str) -> Config {
    parse(&format!(
        "{top}[[connection]]\nname = \"azure\"\nlocal_address = \"{ONPREM}\"\nremote_address = \"{AZ0}\"\n\
         psk = \"supervisor-test-psk-0123456789\"\nike_proposals = \"aes256-sha256-modp2048\"\n\
         esp_proposals = \"aes256gcm16\"\nbehaviour = \"both\"\ntun_name = \"azure\"\nremote_prefixes = [\"{VNET}\"]\n"
    ))
}

/// One Azure instance: a responder (Azure's gateway also initiates in its Default mode).
fn azure(local: &str) -> Config {
    parse(&format!(
        "[[connection]]\nname = \"onprem\"\nlocal_address = \"{local}\"\nremote_address = \"{ONPREM}\"\n\
         psk = \"supervisor-test-psk-0123456789\"\nike_proposals = \"aes256-sha256-modp2048\"\n\
         esp_proposals = \"aes256gcm16\"\nbehaviour = \"respond\"\ntun_name = \"onprem\"\n\
         remote_prefixes = [\"198.18.0.0/24\"]\n[connection.dpd]\ndelay_seconds = 10\ntimeout_seconds = 30\naction = \"clear\"\n"
    ))
}

/// What one side's fake data plane holds, and the order of its route and BIRD commands.
#[derive(Debug, Default)]
struct FakeDp {
    inbound: BTreeMap<TunnelId, BTreeSet<u32>>,
    outbound: BTreeMap<TunnelId, u32>,
    routes: BTreeMap<(String, u32), Vec<TunnelId>>,
    log: Vec<String>,
}

impl FakeDp {
    fn apply(&mut self, c: Command) {
        match c {
            Command::InstallInbound { tunnel, child, .. } => {
                self.inbound
                    .entry(tunnel)
                    .or_default()
                    .insert(child.inbound_spi);
            }
            Command::InstallOutbound { tunnel, child, .. } => {
                self.outbound.insert(tunnel, child.outbound_spi);
            }
            Command::Remove {
                tunnel,
                direction: Direction::Inbound,
                spi,
            } => {
                if let Some(s) = self.inbound.get_mut(&tunnel) {
                    s.remove(&spi);
                }
            }
            Command::Remove {
                tunnel,
                direction: Direction::Outbound,
                spi,
            } => {
                if self.outbound.get(&tunnel) == Some(&spi) {
                    self.outbound.remove(&tunnel);
                }
            }
            Command::ClearTunnel { tunnel } => {
                self.inbound.remove(&tunnel);
                self.outbound.remove(&tunnel);
            }
            Command::NatKeepalive { .. } => {}
            Command::Route {
                prefix,
                metric,
                via,
                ..
            } => {
                let k = (prefix.to_string(), metric);
                self.log.push(format!(
                    "route {} {} {:?}",
                    k.0,
                    k.1,
                    via.iter().map(|t| t.0).collect::<Vec<_>>()
                ));
                if via.is_empty() {
                    self.routes.remove(&k);
                } else {
                    self.routes.insert(k, via);
                }
            }
            Command::Bgp {
                socket,
                protocol,
                enable,
            } => {
                assert_eq!(socket, Path::new(SOCK));
                self.log.push(format!(
                    "bgp {} {protocol}",
                    if enable { "enable" } else { "disable" }
                ));
            }
        }
    }

    /// The tunnels `prefix` is routed over, at any metric, with the metric.
    fn route(&self, prefix: &str) -> Vec<(u32, Vec<usize>)> {
        self.routes
            .iter()
            .filter(|((p, _), _)| p == prefix)
            .map(|((_, m), v)| (*m, v.iter().map(|t| t.0).collect()))
            .collect()
    }
}

struct Side {
    sup: Supervisor,
    dp: FakeDp,
    addr: IpAddr,
    /// Inbound packets counted so far per tunnel (what `traffic` feeds the supervisor).
    rx: BTreeMap<TunnelId, u64>,
}

impl Side {
    fn new(cfg: &Config, now: Instant) -> Side {
        let engine = Engine::new(cfg).expect("engine");
        let tunnels: Vec<TunnelId> = (0..cfg.connections.len()).map(TunnelId).collect();
        Side {
            sup: Supervisor::new(cfg, engine, &tunnels, now),
            dp: FakeDp::default(),
            addr: cfg.connections[0].local_address,
            rx: BTreeMap::new(),
        }
    }

    fn status(&self, now: Instant) -> Vec<ConnectionStatus> {
        self.sup.status(now, &snapshot(Vec::new()))
    }

    fn conn(&self, now: Instant, name: &str) -> ConnectionStatus {
        self.status(now)
            .into_iter()
            .find(|c| c.name == name)
            .expect("connection")
    }
}

fn snapshot(sas: Vec<SaStats>) -> Snapshot {
    Snapshot {
        sas,
        ..Default::default()
    }
}

/// The appliance (side 0) and the two Azure instances (sides 1 and 2).
struct Sim {
    now: Instant,
    sides: Vec<Side>,
    wire: VecDeque<(IpAddr, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Sides whose link is cut: nothing reaches or leaves them.
    cut: BTreeSet<usize>,
}

impl Sim {
    fn new(onprem: Config) -> Sim {
        let now = Instant::now();
        let sides = vec![
            Side::new(&onprem, now),
            Side::new(&azure(AZ0), now),
            Side::new(&azure(AZ1), now),
        ];
        let mut s = Sim {
            now,
            sides,
            wire: VecDeque::new(),
            cut: BTreeSet::new(),
        };
        s.pump();
        s
    }

    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for i in 0..self.sides.len() {
                let side = &mut self.sides[i];
                while let Some(c) = side.sup.poll_command() {
                    progress = true;
                    side.dp.apply(c);
                }
                while let Some(t) = side.sup.poll_transmit() {
                    progress = true;
                    if !self.cut.contains(&i) {
                        self.wire
                            .push_back((t.remote.ip(), t.remote, t.local, t.payload));
                    }
                }
            }
            if let Some((to, local, remote, data)) = self.wire.pop_front() {
                progress = true;
                let now = self.now;
                if let Some(j) = self.sides.iter().position(|s| s.addr == to)
                    && !self.cut.contains(&j)
                {
                    let sup = &mut self.sides[j].sup;
                    if local.port() == 4500 {
                        sup.handle_natt(now, local, remote, &data);
                    } else {
                        sup.handle_ike(now, local, remote, &data);
                    }
                }
            }
            if !progress {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    /// Runs for `d` of simulated time; `busy` tunnels of the appliance receive ESP all along
    /// (their inbound counters grow every 100 ms, as the daemon reads them while draining).
    fn run(&mut self, d: Duration, busy: &[usize]) {
        let end = self.now + d;
        let tick = Duration::from_millis(100);
        let mut next_tick = self.now + tick;
        for _ in 0..200_000 {
            self.pump();
            let next = self
                .sides
                .iter()
                .filter_map(|s| s.sup.poll_timeout())
                .chain(std::iter::once(next_tick))
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    if now >= next_tick {
                        next_tick = now + tick;
                        self.counters(busy);
                    }
                    for s in &mut self.sides {
                        if s.sup.poll_timeout().is_some_and(|x| x <= now) {
                            s.sup.handle_timeout(now);
                        }
                    }
                }
                _ => {
                    self.now = end;
                    self.pump();
                    return;
                }
            }
        }
        panic!("too many timer steps");
    }

    /// Feeds the appliance its inbound counters: `busy` tunnels received 10 more packets.
    fn counters(&mut self, busy: &[usize]) {
        let a = &mut self.sides[0];
        let mut sas = Vec::new();
        for (t, spis) in &a.dp.inbound {
            let n = a.rx.entry(*t).or_default();
            if busy.contains(&t.0) {
                *n += 10;
            }
            for spi in spis {
                sas.push(SaStats {
                    spi: *spi,
                    direction: Direction::Inbound,
                    tunnel: *t,
                    packets: *n,
                    bytes: *n * 100,
                });
            }
        }
        let now = self.now;
        a.sup.note_counters(now, &snapshot(sas));
    }

    fn appliance(&self) -> &Side {
        &self.sides[0]
    }

    fn control(&mut self, req: Request) -> String {
        let now = self.now;
        let r = self.sides[0].sup.control(now, &req);
        assert!(r.ok, "{req:?}: {:?}", r.message);
        self.pump();
        r.message.unwrap_or_default()
    }

    /// The appliance's route and BIRD commands from `from` on.
    fn log_since(&self, from: usize) -> Vec<String> {
        self.appliance().dp.log[from..].to_vec()
    }

    fn states(&self) -> Vec<String> {
        self.appliance()
            .status(self.now)
            .into_iter()
            .map(|c| c.state)
            .collect()
    }
}

#[test]
fn each_tunnel_routes_its_own_bgp_peer_and_the_pair_shares_the_rest() {
    let mut s = Sim::new(onprem("", ""));
    s.run(Duration::from_secs(10), &[]);
    assert_eq!(s.states(), ["established", "established"]);
    let dp = &s.appliance().dp;
    assert_eq!(dp.route("169.254.21.2/32"), [(100, vec![0])]);
    assert_eq!(dp.route("169.254.22.2/32"), [(100, vec![1])]);
    assert_eq!(dp.route(VNET), [(100, vec![0, 1])]);
    // hybridgw owns the enabled state of the protocols its drains disable.
    assert_eq!(
        &dp.log[..2],
        ["bgp enable azure_azure", "bgp enable azure_azure_2"]
    );
    for (name, peer, proto) in [
        ("azure", "169.254.21.2", "azure_azure"),
        ("azure-2", "169.254.22.2", "azure_azure_2"),
    ] {
        let b = s.appliance().conn(s.now, name).bgp.expect("bgp status");
        assert_eq!(b.peer.as_deref(), Some(peer));
        assert_eq!(b.protocol, proto);
        assert!(b.routes_in_use, "{name}: {b:?}");
        assert!(b.disabled.is_empty());
        let st = s.appliance().conn(s.now, name);
        assert!(
            st.routes.iter().all(|r| r.installed),
            "{name}: {:?}",
            st.routes
        );
        assert!(st.active_active.expect("group").carrying, "{name}");
    }

    // Instance 1 dies: DPD takes its tunnel, with its BGP peer's host route (and so the BGP
    // routes resolved through it) and its share of the pair's routes.
    s.cut.insert(2);
    s.run(Duration::from_secs(90), &[]);
    let dp = &s.appliance().dp;
    assert_eq!(dp.route("169.254.22.2/32"), []);
    assert_eq!(dp.route("169.254.21.2/32"), [(100, vec![0])]);
    assert_eq!(dp.route(VNET), [(100, vec![0])]);
    let b = s
        .appliance()
        .conn(s.now, "azure-2")
        .bgp
        .expect("bgp status");
    assert!(!b.routes_in_use);
    let st = s.appliance().conn(s.now, "azure-2");
    assert_ne!(st.state, "established");
    assert!(st.routes.iter().all(|r| !r.installed), "{:?}", st.routes);
    assert!(!st.active_active.expect("group").carrying);

    // It comes back: both again.
    s.cut.clear();
    s.run(Duration::from_secs(120), &[]);
    assert_eq!(s.states(), ["established", "established"]);
    assert_eq!(s.appliance().dp.route(VNET), [(100, vec![0, 1])]);
}

#[test]
fn draining_one_tunnel_moves_traffic_first_and_deletes_once_quiet() {
    let mut s = Sim::new(onprem("", ""));
    s.run(Duration::from_secs(10), &[]);
    let mark = s.appliance().dp.log.len();
    let msg = s.control(Request::Drain {
        name: "azure-2".into(),
        timeout_seconds: None,
    });
    assert!(msg.contains("azure_azure_2"), "{msg}");
    // At once: the BGP session is disabled and the shared route leaves the tunnel; the host
    // route stays (BIRD closes the session through it), so does the Child SA.
    assert_eq!(
        s.log_since(mark),
        ["bgp disable azure_azure_2", "route 198.19.0.0/24 100 [0]"]
    );
    assert_eq!(s.appliance().dp.route("169.254.22.2/32"), [(100, vec![1])]);
    assert_eq!(s.states(), ["established", "draining"]);
    let st = s.appliance().conn(s.now, "azure-2");
    assert_eq!(st.bgp.expect("bgp").disabled, ["azure_azure_2"]);
    // While Azure still sends into it, the tunnel stays.
    s.run(Duration::from_secs(5), &[1]);
    assert_eq!(s.states(), ["established", "draining"]);
    assert!(s.appliance().dp.outbound.contains_key(&TunnelId(1)));
    // Quiet for a second: DELETE, everything of that tunnel goes, the instance learns it.
    s.run(Duration::from_secs(3), &[]);
    assert_eq!(s.states(), ["established", "drained"]);
    let st = s.appliance().conn(s.now, "azure-2");
    let d = st.drain.expect("drain status");
    assert!(d.starts_with("drained after "), "{d}");
    assert!(!d.contains("timed out"), "{d}");
    assert_eq!(s.appliance().dp.route("169.254.22.2/32"), []);
    assert!(!s.appliance().dp.outbound.contains_key(&TunnelId(1)));
    assert!(s.sides[2].status(s.now)[0].child_sas.is_empty());
    // A drained tunnel stays down (no re-initiation) until `up`.
    s.run(Duration::from_secs(60), &[]);
    assert_eq!(s.states(), ["established", "drained"]);
    let mark = s.appliance().dp.log.len();
    s.control(Request::Up {
        name: "azure-2".into(),
    });
    s.run(Duration::from_secs(10), &[]);
    assert_eq!(s.states(), ["established", "established"]);
    let log = s.log_since(mark);
    assert_eq!(log[0], "bgp enable azure_azure_2", "{log:?}");
    assert_eq!(s.appliance().dp.route(VNET), [(100, vec![0, 1])]);
    assert!(s.appliance().conn(s.now, "azure-2").drain.is_none());
}

#[test]
fn draining_the_whole_pair_keeps_its_routes_at_a_worse_metric_until_the_delete() {
    let mut s = Sim::new(onprem("", "[drain]\nquiet_ms = 500\n"));
    s.run(Duration::from_secs(10), &[]);
    let mark = s.appliance().dp.log.len();
    s.control(Request::Drain {
        name: "azure".into(),
        timeout_seconds: Some(20),
    });
    // Nothing better exists here, so the routes stay, one metric worse: added before the
    // old one is removed, never missing in between.
    assert_eq!(
        s.log_since(mark),
        [
            "bgp disable azure_azure",
            "bgp disable azure_azure_2",
            "route 198.19.0.0/24 1100 [0, 1]",
            "route 198.19.0.0/24 100 []",
        ]
    );
    assert_eq!(s.states(), ["draining", "draining"]);
    // Tunnel 0 still receives; tunnel 1 is quiet and goes first.
    s.run(Duration::from_secs(2), &[0]);
    assert_eq!(s.states(), ["draining", "drained"]);
    assert_eq!(s.appliance().dp.route(VNET), [(1100, vec![0])]);
    s.run(Duration::from_secs(2), &[]);
    assert_eq!(s.states(), ["drained", "drained"]);
    assert!(
        s.appliance().dp.routes.is_empty(),
        "{:?}",
        s.appliance().dp.routes
    );
}

#[test]
fn a_drain_that_never_goes_quiet_ends_at_its_timeout_and_says_so() {
    let mut s = Sim::new(onprem("", ""));
    s.run(Duration::from_secs(10), &[]);
    s.control(Request::Drain {
        name: "azure".into(),
        timeout_seconds: Some(3),
    });
    s.run(Duration::from_millis(2500), &[0, 1]);
    assert_eq!(s.states(), ["draining", "draining"]);
    s.run(Duration::from_secs(1), &[0, 1]);
    assert_eq!(s.states(), ["drained", "drained"]);
    let d = s.appliance().conn(s.now, "azure").drain.expect("drain");
    assert!(d.contains("timed out"), "{d}");
}

#[test]
fn explicit_drain_protocols_are_disabled_once_and_enabled_when_the_last_comes_back() {
    let cfg = parse(&format!(
        "[[connection]]\nname = \"azure\"\nlocal_address = \"{ONPREM}\"\nremote_address = [\"{AZ0}\", \"{AZ1}\"]\n\
         psk = \"supervisor-test-psk-0123456789\"\nike_proposals = \"aes256-sha256-modp2048\"\n\
         esp_proposals = \"aes256gcm16\"\nbehaviour = \"both\"\ntun_name = \"azure\"\n\
         tun_address = [\"169.254.21.1/32\", \"169.254.22.1/32\"]\n\
         [connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.22.2\"]\nbird_socket = \"{SOCK}\"\ndrain_protocols = [\"onprem_router\"]\n"
    ));
    let mut s = Sim::new(cfg);
    s.run(Duration::from_secs(10), &[]);
    assert_eq!(s.appliance().dp.log[..1], ["bgp enable onprem_router"]);
    let mark = s.appliance().dp.log.len();
    s.control(Request::Drain {
        name: "azure".into(),
        timeout_seconds: None,
    });
    assert_eq!(s.log_since(mark), ["bgp disable onprem_router"]);
    s.run(Duration::from_secs(3), &[]);
    assert_eq!(s.states(), ["drained", "drained"]);
    let mark = s.appliance().dp.log.len();
    s.control(Request::Up {
        name: "azure-2".into(),
    });
    // One member back is not enough: the other is still drained and needs the protocol off.
    assert!(
        !s.log_since(mark).iter().any(|l| l.starts_with("bgp")),
        "{:?}",
        s.log_since(mark)
    );
    s.run(Duration::from_secs(10), &[]);
    assert_eq!(s.states(), ["drained", "established"]);
    // The group's name brings back every member (the inverse of `drain NAME`).
    s.control(Request::Up {
        name: "azure".into(),
    });
    assert!(
        s.log_since(mark)
            .contains(&"bgp enable onprem_router".to_string()),
        "{:?}",
        s.log_since(mark)
    );
    s.run(Duration::from_secs(10), &[]);
    assert_eq!(s.states(), ["established", "established"]);
}

#[test]
fn a_single_static_tunnel_drains_to_a_worse_metric() {
    let mut s = Sim::new(onprem_static("[drain]\nmetric_penalty = 50\n"));
    s.run(Duration::from_secs(10), &[]);
    assert_eq!(s.states(), ["established"]);
    assert_eq!(s.appliance().dp.route(VNET), [(100, vec![0])]);
    let mark = s.appliance().dp.log.len();
    s.control(Request::Drain {
        name: "azure".into(),
        timeout_seconds: None,
    });
    assert_eq!(
        s.log_since(mark),
        ["route 198.19.0.0/24 150 [0]", "route 198.19.0.0/24 100 []"]
    );
    s.run(Duration::from_secs(3), &[]);
    assert_eq!(s.states(), ["drained"]);
    assert!(s.appliance().dp.routes.is_empty());
    // An unknown name is refused.
    let r = s.sides[0].sup.control(
        s.now,
        &Request::Drain {
            name: "nope".into(),
            timeout_seconds: None,
        },
    );
    assert!(!r.ok);
}

#[test]
fn bgp_only_members_show_their_host_routes_installed_and_carry() {
    // No static prefixes at all: the routes come from BGP, hybridgw owns only the host routes.
    let cfg = parse(&format!(
        "[[connection]]\nname = \"azure\"\nlocal_address = \"{ONPREM}\"\nremote_address = [\"{AZ0}\", \"{AZ1}\"]\n\
         psk = \"supervisor-test-psk-0123456789\"\nike_proposals = \"aes256-sha256-modp2048\"\n\
         esp_proposals = \"aes256gcm16\"\nbehaviour = \"both\"\ntun_name = \"azure\"\ntun_address = \"169.254.21.1/32\"\n\
         [connection.bgp]\nonprem_asn = 65010\nazure_peer = [\"169.254.21.2\", \"169.254.22.2\"]\n"
    ));
    let mut s = Sim::new(cfg);
    s.run(Duration::from_secs(10), &[]);
    assert_eq!(s.states(), ["established", "established"]);
    for name in ["azure", "azure-2"] {
        let st = s.appliance().conn(s.now, name);
        assert_eq!(st.routes.len(), 1, "{:?}", st.routes);
        assert!(st.routes[0].installed, "{name}: {:?}", st.routes);
        assert!(st.active_active.expect("group").carrying, "{name}");
        // Without bird_socket nothing is sent to BIRD.
        assert!(st.bgp.expect("bgp").routes_in_use);
    }
    assert!(!s.appliance().dp.log.iter().any(|l| l.starts_with("bgp")));
}

#[test]
fn sigterm_with_on_shutdown_drains_first_and_stops_when_drained_or_at_the_bound() {
    let mut s = Sim::new(onprem(
        "",
        "[drain]\non_shutdown = true\nquiet_ms = 300\ntimeout_seconds = 5\n",
    ));
    s.run(Duration::from_secs(10), &[]);
    assert_eq!(
        s.appliance().sup.counters_interval(),
        Duration::from_secs(1)
    );
    assert!(!s.appliance().sup.stop_due(s.now));
    let now = s.now;
    assert!(s.sides[0].sup.request_stop(now), "drains first");
    s.pump();
    assert_eq!(s.states(), ["draining", "draining"]);
    assert_eq!(
        s.appliance().sup.counters_interval(),
        Duration::from_millis(100)
    );
    assert!(!s.appliance().sup.stop_due(s.now));
    // A second SIGTERM stops at once.
    let now = s.now;
    assert!(!s.sides[0].sup.request_stop(now));
    // Traffic keeps one tunnel busy: the stop waits for it, bounded by the timeout.
    s.run(Duration::from_secs(2), &[0]);
    assert_eq!(s.states(), ["draining", "drained"]);
    assert!(!s.appliance().sup.stop_due(s.now));
    s.run(Duration::from_secs(4), &[0]);
    assert!(s.appliance().sup.stop_due(s.now));
    // Without on_shutdown, SIGTERM stops at once.
    let mut s = Sim::new(onprem("", ""));
    s.run(Duration::from_secs(10), &[]);
    let now = s.now;
    assert!(!s.sides[0].sup.request_stop(now));
}
