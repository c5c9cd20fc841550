//! The supervisor (`hybridgw::supervisor`) without root: two appliances, each a supervisor with
//! its own IKE engine, talk over an in-memory network under simulated time; each has a fake
//! data plane that applies the supervisor's commands. After every step the invariants that make
//! a tunnel lossless are checked for every Child SA: an outbound SA is used only once the peer
//! has installed its inbound SA, every configured pair with a Child SA has exactly one outbound
//! SA, and routes exist only while a Child SA covers them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use dataplane::{Direction, TunnelId};
use hybridgw::config::{self, Config};
use hybridgw::control::{ConnectionStatus, Request};
use hybridgw::engine::{Engine, ts_text};
use hybridgw::supervisor::{Command, Supervisor};

const A: &str = "192.0.2.1";
const B: &str = "192.0.2.2";
const PAIRS: [(&str, &str); 4] = [
    ("198.18.0.0/25", "198.19.0.0/25"),
    ("198.18.0.0/25", "198.19.0.128/25"),
    ("198.18.0.128/25", "198.19.0.0/25"),
    ("198.18.0.128/25", "198.19.0.128/25"),
];

fn flip(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(l, r)| (r.to_string(), l.to_string()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(l, r)| (l.to_string(), r.to_string()))
        .collect()
}

/// A policy-based (or, with no pairs, route-based) connection from `local` to `remote`.
fn config(
    local: &str,
    remote: &str,
    behaviour: &str,
    sel: &[(String, String)],
    extra: &str,
) -> Config {
    let mode = if sel.is_empty() {
        "mode = \"route-based\"\nremote_prefixes = [\"198.19.0.0/24\"]\n".to_string()
    } else {
        let s: Vec<String> = sel
            .iter()
            .map(|(l, r)| format!("{{ local = \"{l}\", remote = \"{r}\" }}"))
            .collect();
        format!("mode = \"policy-based\"\nselectors = [{}]\n", s.join(", "))
    };
    let text = format!(
        "[[connection]]\nname = \"azure\"\nlocal_address = \"{local}\"\nremote_address = \"{remote}\"\n\
         psk = \"supervisor-test-psk-0123456789\"\nike_proposals = \"aes256-sha256-modp2048\"\n\
         esp_proposals = \"aes256gcm16\"\nbehaviour = \"{behaviour}\"\ntun_name = \"t{}\"\n{mode}{extra}\n",
        &local[local.len() - 1..]
    );
    config::parse(Path::new("test.toml"), &text, &|_| None).expect("valid test config")
}

/// What the fake data plane holds.
#[derive(Debug, Default)]
struct FakeDp {
    inbound: BTreeSet<u32>,
    /// Outbound SPI by selectors ("local|remote"; "any" for route-based).
    outbound: BTreeMap<String, u32>,
    routes: BTreeMap<String, Vec<TunnelId>>,
}

impl FakeDp {
    fn apply(&mut self, c: Command, policy: bool) {
        match c {
            Command::InstallInbound { child, .. } => {
                assert!(
                    self.inbound.insert(child.inbound_spi),
                    "inbound SPI {:08x} installed twice",
                    child.inbound_spi
                );
            }
            Command::InstallOutbound { child, .. } => {
                let key = if policy {
                    format!(
                        "{}|{}",
                        child
                            .local_ts
                            .iter()
                            .map(ts_text)
                            .collect::<Vec<_>>()
                            .join(","),
                        child
                            .remote_ts
                            .iter()
                            .map(ts_text)
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                } else {
                    "any".into()
                };
                self.outbound.insert(key, child.outbound_spi);
            }
            Command::Remove {
                direction: Direction::Inbound,
                spi,
                ..
            } => {
                self.inbound.remove(&spi);
            }
            Command::Remove {
                direction: Direction::Outbound,
                spi,
                ..
            } => self.outbound.retain(|_, s| *s != spi),
            Command::ClearTunnel { .. } => {
                self.inbound.clear();
                self.outbound.clear();
            }
            Command::NatKeepalive { .. } | Command::Bgp { .. } => {}
            Command::Route {
                prefix,
                metric,
                via,
                ..
            } => {
                let k = format!("{prefix} metric {metric}");
                if via.is_empty() {
                    self.routes.remove(&k);
                } else {
                    self.routes.insert(k, via);
                }
            }
        }
    }
}

struct Side {
    sup: Supervisor,
    dp: FakeDp,
    cfg: Config,
    policy: bool,
    /// Datagrams this side has sent, and has had delivered to it.
    sent: u64,
    delivered: u64,
    /// Outbound SPI -> how many datagrams this side had sent when it started using it: the
    /// peer must have processed that many (the exchange's last message) before any ESP on it
    /// can reach the peer.
    needs: BTreeMap<u32, u64>,
    /// Inbound SPI -> how many datagrams this side had sent when it removed it (a DELETE, or
    /// a teardown): the peer may go on sending on it until it has processed that many.
    closed: BTreeMap<u32, u64>,
}

impl Side {
    fn new(cfg: Config, now: Instant) -> Side {
        let engine = Engine::new(&cfg).expect("engine");
        Self::with_engine(cfg, engine, now)
    }

    /// A side whose IKE_AUTH carries no INITIAL_CONTACT (a peer such as libreswan re-initiating
    /// after a failed install).
    fn without_initial_contact(cfg: Config, now: Instant) -> Side {
        let mut cc = hybridgw::engine::connection_config(&cfg.connections[0]).expect("ike config");
        cc.initial_contact = false;
        let engine = Engine::from_connections(vec![cc], Box::new(ike::crypto::SystemRng::new()));
        Self::with_engine(cfg, engine, now)
    }

    fn with_engine(cfg: Config, engine: Engine, now: Instant) -> Side {
        let sup = Supervisor::new(&cfg, engine, &[TunnelId(0)], now);
        let policy = matches!(
            cfg.connections[0].mode,
            hybridgw::config::Mode::PolicyBased { .. }
        );
        Side {
            sup,
            dp: FakeDp::default(),
            cfg,
            policy,
            sent: 0,
            delivered: 0,
            needs: BTreeMap::new(),
            closed: BTreeMap::new(),
        }
    }

    fn status(&self, now: Instant) -> ConnectionStatus {
        let snap = empty_snapshot();
        self.sup.status(now, &snap).remove(0)
    }

    /// Installed Child SAs by state.
    fn children(&self, now: Instant, state: &str) -> Vec<(String, String)> {
        self.status(now)
            .child_sas
            .into_iter()
            .filter(|c| c.state == state)
            .map(|c| (c.spi_in, c.spi_out))
            .collect()
    }
}

fn empty_snapshot() -> dataplane::Snapshot {
    dataplane::Snapshot::default()
}

/// Two appliances and the wire between them.
struct Sim {
    now: Instant,
    a: Side,
    b: Side,
    /// Datagrams in flight: (to side b?, local, remote, payload, natt).
    wire: VecDeque<(bool, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Drop every datagram while true.
    cut: bool,
    steps: u64,
    /// Outbound SPIs whose receiver was restarted and forgot them: traffic on them is lost by
    /// construction until the sender learns.
    forgotten: BTreeSet<u32>,
}

impl Sim {
    fn new(a: Config, b: Config) -> Sim {
        Self::build(a, b, false)
    }

    /// The same with the wire cut from the start.
    fn cut(a: Config, b: Config) -> Sim {
        Self::build(a, b, true)
    }

    fn build(a: Config, b: Config, cut: bool) -> Sim {
        let now = Instant::now();
        let mut s = Sim {
            now,
            a: Side::new(a, now),
            b: Side::new(b, now),
            wire: VecDeque::new(),
            cut,
            steps: 0,
            forgotten: BTreeSet::new(),
        };
        s.pump();
        s
    }

    fn side(&mut self, to_b: bool) -> &mut Side {
        if to_b { &mut self.b } else { &mut self.a }
    }

    /// Moves datagrams and commands until nothing is left to do at `now`.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for to_b in [true, false] {
                let from = self.side(!to_b);
                let policy = from.policy;
                let mut started = Vec::new();
                let before = from.dp.inbound.clone();
                while let Some(c) = from.sup.poll_command() {
                    progress = true;
                    if let Command::InstallOutbound { child, .. } = &c {
                        started.push(child.outbound_spi);
                    }
                    from.dp.apply(c, policy);
                }
                let closed: Vec<u32> = before.difference(&from.dp.inbound).copied().collect();
                let mut out = Vec::new();
                while let Some(t) = from.sup.poll_transmit() {
                    out.push(t);
                }
                from.sent += out.len() as u64;
                for spi in started {
                    let n = from.sent;
                    from.needs.insert(spi, n);
                }
                for spi in closed {
                    let n = from.sent;
                    from.closed.insert(spi, n);
                }
                for t in out {
                    progress = true;
                    if !self.cut {
                        self.wire.push_back((to_b, t.remote, t.local, t.payload));
                    }
                }
            }
            // Every command is applied: the data planes are what the supervisors decided.
            self.check();
            if let Some((to_b, local, remote, data)) = self.wire.pop_front() {
                progress = true;
                let now = self.now;
                let side = self.side(to_b);
                side.delivered += 1;
                if local.port() == 4500 {
                    side.sup.handle_natt(now, local, remote, &data);
                } else {
                    side.sup.handle_ike(now, local, remote, &data);
                }
            }
            if !progress {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    /// Runs for `d` of simulated time, firing timers as they come due.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..100_000 {
            self.pump();
            let next = [self.a.sup.poll_timeout(), self.b.sup.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    if self.a.sup.poll_timeout().is_some_and(|x| x <= now) {
                        self.a.sup.handle_timeout(now);
                    }
                    if self.b.sup.poll_timeout().is_some_and(|x| x <= now) {
                        self.b.sup.handle_timeout(now);
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

    /// The invariants, after every step.
    fn check(&mut self) {
        self.steps += 1;
        if self.cut {
            return;
        }
        let forgotten = &self.forgotten;
        for (x, y, nx, ny) in [(&self.a, &self.b, "A", "B"), (&self.b, &self.a, "B", "A")] {
            for (key, spi) in &x.dp.outbound {
                let in_flight = y.delivered < x.needs.get(spi).copied().unwrap_or(0)
                    || x.delivered < y.closed.get(spi).copied().unwrap_or(0)
                    || forgotten.contains(spi);
                assert!(
                    y.dp.inbound.contains(spi) || in_flight,
                    "{nx} sends {key} on SPI {spi:08x}, which {ny} has not installed inbound (step {})",
                    self.steps
                );
            }
            if !x.dp.routes.is_empty() {
                assert!(
                    !x.dp.outbound.is_empty(),
                    "{nx} routes {:?} with no outbound SA",
                    x.dp.routes
                );
            }
            if x.policy {
                for r in x.dp.routes.keys() {
                    let prefix = r.split(' ').next().unwrap_or_default();
                    assert!(
                        x.dp.outbound
                            .keys()
                            .any(|k| k.split('|').nth(1).is_some_and(|rem| rem.contains(prefix))),
                        "{nx} routes {prefix} but no outbound SA carries it: {:?}",
                        x.dp.outbound
                    );
                }
            }
        }
    }

    /// Side A (`a`) or B restarts with nothing of its old state.
    fn restart(&mut self, a: bool, side: Side) {
        let peer = if a { &self.b } else { &self.a };
        self.forgotten.extend(peer.dp.outbound.values().copied());
        if a {
            self.a = side;
        } else {
            self.b = side;
        }
    }

    /// Both sides carry every pair on one IKE SA with matching SPIs.
    fn assert_converged(&self, n: usize) {
        let now = self.now;
        for (x, y, name) in [(&self.a, &self.b, "A"), (&self.b, &self.a, "B")] {
            let st = x.status(now);
            assert_eq!(st.state, "established", "{name}: {st:#?}");
            assert!(
                st.missing_pairs.is_empty(),
                "{name}: {:?}",
                st.missing_pairs
            );
            assert_eq!(st.ike_sas.len(), 1, "{name}: {:#?}", st.ike_sas);
            assert_eq!(
                x.dp.outbound.len(),
                n,
                "{name} outbound {:?}",
                x.dp.outbound
            );
            assert_eq!(x.dp.inbound.len(), n, "{name} inbound {:?}", x.dp.inbound);
            let out: BTreeSet<u32> = x.dp.outbound.values().copied().collect();
            assert_eq!(
                &out, &y.dp.inbound,
                "{name} outbound SPIs are the peer's inbound SPIs"
            );
            assert_eq!(
                x.children(now, "installed").len(),
                n,
                "{name}: {:#?}",
                st.child_sas
            );
        }
    }
}

fn pb(local: &str, remote: &str, behaviour: &str, sel: &[(String, String)]) -> Config {
    config(local, remote, behaviour, sel, "")
}

#[test]
fn every_selector_pair_gets_its_own_child_sa_under_one_ike_sa() {
    let mut s = Sim::new(
        pb(A, B, "initiate", &pairs(&PAIRS)),
        pb(B, A, "respond", &flip(&PAIRS)),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
    // Two remote prefixes, each routed once its pairs are up.
    assert_eq!(s.a.dp.routes.len(), 2, "{:?}", s.a.dp.routes);
    assert_eq!(s.b.dp.routes.len(), 2, "{:?}", s.b.dp.routes);
    let st = s.a.status(s.now);
    let mut ts: Vec<(String, String)> = st
        .child_sas
        .iter()
        .map(|c| (c.local_ts.join(","), c.remote_ts.join(",")))
        .collect();
    ts.sort();
    let mut want = pairs(&PAIRS);
    want.sort();
    assert_eq!(
        ts, want,
        "one Child SA per configured pair, with exactly its selectors"
    );
    // `down` removes every SA and route at once.
    let r = s.a.sup.control(
        s.now,
        &Request::Down {
            name: "azure".into(),
        },
    );
    assert!(r.ok);
    s.pump();
    assert!(s.a.dp.outbound.is_empty() && s.a.dp.inbound.is_empty() && s.a.dp.routes.is_empty());
    s.run(Duration::from_secs(3));
    assert!(
        s.b.dp.outbound.is_empty() && s.b.dp.routes.is_empty(),
        "{:?}",
        s.b.dp
    );
    assert_eq!(s.b.status(s.now).state, "down");
}

#[test]
fn all_pairs_in_one_child_sa_when_asked() {
    let mut s = Sim::new(
        config(
            A,
            B,
            "initiate",
            &pairs(&PAIRS),
            "child_sa_per_pair = false\n",
        ),
        config(
            B,
            A,
            "respond",
            &flip(&PAIRS),
            "child_sa_per_pair = false\n",
        ),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(1);
    let st = s.a.status(s.now);
    assert_eq!(st.child_sas[0].local_ts.len(), 2, "{:?}", st.child_sas);
    assert_eq!(st.child_sas[0].remote_ts.len(), 2, "{:?}", st.child_sas);
}

#[test]
fn a_peer_with_one_policy_per_pair_narrows_and_the_rest_is_asked_for() {
    // We offer all pairs in one Child SA; the peer has one policy per pair and narrows to the
    // first: the three pairs it left out come in three more Child SAs.
    let mut s = Sim::new(
        config(
            A,
            B,
            "initiate",
            &pairs(&PAIRS),
            "child_sa_per_pair = false\n",
        ),
        pb(B, A, "respond", &flip(&PAIRS)),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
}

#[test]
fn each_child_sa_is_rekeyed_on_its_own_by_either_side() {
    let mut s = Sim::new(
        pb(A, B, "initiate", &pairs(&PAIRS)),
        pb(B, A, "respond", &flip(&PAIRS)),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
    let before: BTreeMap<String, u32> = s.a.dp.outbound.clone();
    let keys: Vec<String> = before.keys().cloned().collect();
    // A rekeys the first pair's Child SA, B the third's.
    let a_in = s.b.dp.outbound[&flip_key(&keys[0])];
    let b_in = s.a.dp.outbound[&keys[2]];
    let r = s.a.sup.control(
        s.now,
        &Request::Rekey {
            name: "azure".into(),
            child: Some(format!("{a_in:08x}")),
        },
    );
    assert!(r.ok, "{r:?}");
    let r = s.b.sup.control(
        s.now,
        &Request::Rekey {
            name: "azure".into(),
            child: Some(format!("{b_in:08x}")),
        },
    );
    assert!(r.ok, "{r:?}");
    // Every step of the exchanges keeps all four pairs carried.
    for _ in 0..50 {
        s.run(Duration::from_millis(100));
        assert_eq!(s.a.dp.outbound.len(), 4);
        assert_eq!(s.b.dp.outbound.len(), 4);
    }
    s.assert_converged(4);
    let after = s.a.dp.outbound.clone();
    for (k, spi) in &before {
        let changed = after[k] != *spi;
        let rekeyed = *k == keys[0] || *k == keys[2];
        assert_eq!(
            changed, rekeyed,
            "{k}: before {spi:08x}, after {:08x}",
            after[k]
        );
    }
    // An unknown SPI is refused.
    let r = s.a.sup.control(
        s.now,
        &Request::Rekey {
            name: "azure".into(),
            child: Some("00000001".into()),
        },
    );
    assert!(!r.ok);
}

/// The peer's key for the pair `k` (local and remote swapped).
fn flip_key(k: &str) -> String {
    let (l, r) = k.split_once('|').unwrap_or_default();
    format!("{r}|{l}")
}

#[test]
fn both_sides_rekeying_one_child_sa_at_once_leave_one_pair() {
    let mut s = Sim::new(
        pb(A, B, "initiate", &pairs(&PAIRS)),
        pb(B, A, "respond", &flip(&PAIRS)),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
    let k = s.a.dp.outbound.keys().next().cloned().unwrap_or_default();
    let a_in = s.b.dp.outbound[&flip_key(&k)];
    let b_in = s.a.dp.outbound[&k];
    let now = s.now;
    assert!(
        s.a.sup
            .control(
                now,
                &Request::Rekey {
                    name: "azure".into(),
                    child: Some(format!("{a_in:08x}"))
                }
            )
            .ok
    );
    assert!(
        s.b.sup
            .control(
                now,
                &Request::Rekey {
                    name: "azure".into(),
                    child: Some(format!("{b_in:08x}"))
                }
            )
            .ok
    );
    s.run(Duration::from_secs(10));
    s.assert_converged(4);
    assert!(s.a.children(s.now, "standby").is_empty() && s.b.children(s.now, "standby").is_empty());
}

#[test]
fn a_child_sa_deleted_by_the_peer_comes_back_alone() {
    let mut s = Sim::new(
        pb(A, B, "initiate", &pairs(&PAIRS)),
        pb(B, A, "respond", &flip(&PAIRS)),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
    let ike_before = s.a.status(s.now).ike_sas[0].spi_i.clone();
    let before = s.a.dp.outbound.clone();
    let k = before.keys().nth(1).cloned().unwrap_or_default();
    let victim = s.a.dp.outbound[&k]; // B's inbound SPI of that pair
    assert!(s.b.sup.delete_child(s.now, victim));
    s.run(Duration::from_millis(200));
    // Gone on both sides, the other three untouched.
    assert_eq!(s.a.dp.outbound.len(), 3, "{:?}", s.a.dp.outbound);
    assert_eq!(s.a.status(s.now).state, "partial");
    assert_eq!(s.a.status(s.now).missing_pairs.len(), 1);
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
    let after = s.a.dp.outbound.clone();
    for (key, spi) in &before {
        assert_eq!(after[key] != *spi, *key == k, "{key}");
    }
    assert_eq!(
        s.a.status(s.now).ike_sas[0].spi_i,
        ike_before,
        "same IKE SA"
    );
}

#[test]
fn a_refused_pair_is_retried_with_backoff_once_per_failure() {
    // The peer allows only three of the four pairs.
    let mut s = Sim::new(
        pb(A, B, "initiate", &pairs(&PAIRS)),
        pb(B, A, "respond", &flip(&PAIRS[..3])),
    );
    let mut refusals = Vec::new();
    let mut last = 0;
    let start = s.now;
    for _ in 0..(40 * 20) {
        s.run(Duration::from_millis(50));
        let n = s.b.sup.engine().counters().refused;
        if n != last {
            last = n;
            refusals.push(s.now.duration_since(start));
        }
    }
    // 1 s, 2 s, 4 s, 8 s, 16 s apart (retry.initial_seconds 1, doubling).
    let gaps: Vec<u64> = refusals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    assert!(gaps.len() >= 4, "{refusals:?}");
    for (g, want) in gaps.iter().zip([1000u64, 2000, 4000, 8000, 16000]) {
        assert!(g.abs_diff(want) <= 60, "gaps {gaps:?}");
    }
    let st = s.a.status(s.now);
    assert_eq!(st.state, "partial");
    assert_eq!(
        st.missing_pairs,
        vec!["198.18.0.128/25 === 198.19.0.128/25".to_string()]
    );
    assert_eq!(st.ike_sas.len(), 1, "the IKE SA stays up");
    assert_eq!(s.a.dp.outbound.len(), 3);
    assert!(st.last_error.unwrap_or_default().contains("refused"));
}

#[test]
fn a_refused_first_pair_keeps_the_ike_sa_and_the_others() {
    // The peer refuses the pair IKE_AUTH carries: the IKE SA stays, the others come up.
    let mut s = Sim::new(
        pb(A, B, "initiate", &pairs(&PAIRS)),
        pb(B, A, "respond", &flip(&PAIRS[1..])),
    );
    s.run(Duration::from_secs(5));
    let st = s.a.status(s.now);
    assert_eq!(st.state, "partial", "{st:#?}");
    assert_eq!(
        st.missing_pairs,
        vec!["198.18.0.0/25 === 198.19.0.0/25".to_string()]
    );
    assert_eq!(s.a.dp.outbound.len(), 3);
    assert_eq!(st.ike_sas.len(), 1);
}

#[test]
fn simultaneous_start_ends_with_one_ike_sa_and_one_child_sa_per_pair() {
    for round in 0..10 {
        let mut s = Sim::new(
            pb(A, B, "both", &pairs(&PAIRS)),
            pb(B, A, "both", &flip(&PAIRS)),
        );
        s.run(Duration::from_secs(30));
        s.assert_converged(4);
        for side in [&s.a, &s.b] {
            assert!(side.children(s.now, "standby").is_empty(), "round {round}");
        }
    }
}

#[test]
fn simultaneous_start_route_based() {
    for _ in 0..5 {
        let mut s = Sim::new(config(A, B, "both", &[], ""), config(B, A, "both", &[], ""));
        s.run(Duration::from_secs(30));
        s.assert_converged(1);
        assert_eq!(s.a.dp.routes.len(), 1);
    }
}

#[test]
fn a_restarted_peer_replaces_the_old_ike_sa() {
    let mut s = Sim::new(
        pb(A, B, "initiate", &pairs(&PAIRS)),
        pb(B, A, "respond", &flip(&PAIRS)),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
    // A reboots: a new appliance with nothing of the old state initiates (INITIAL_CONTACT).
    let cfg = s.a.cfg.clone();
    let fresh = Side::new(cfg, s.now);
    s.restart(true, fresh);
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
}

#[test]
fn route_based_child_sa_deleted_by_the_peer_comes_back_on_the_same_ike_sa() {
    let mut s = Sim::new(
        config(A, B, "initiate", &[], ""),
        config(B, A, "respond", &[], ""),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(1);
    let ike = s.a.status(s.now).ike_sas[0].spi_i.clone();
    let victim = s.a.dp.outbound["any"];
    assert!(s.b.sup.delete_child(s.now, victim));
    s.run(Duration::from_millis(300));
    assert!(
        s.a.dp.routes.is_empty(),
        "no route without a Child SA: {:?}",
        s.a.dp.routes
    );
    assert_eq!(s.a.status(s.now).state, "connecting");
    s.run(Duration::from_secs(5));
    s.assert_converged(1);
    assert_eq!(s.a.status(s.now).ike_sas[0].spi_i, ike);
    assert_eq!(s.a.dp.routes.len(), 1);
}

#[test]
fn a_lost_peer_takes_routes_and_sas_and_the_initiator_retries() {
    let mut s = Sim::new(
        config(
            A,
            B,
            "initiate",
            &[],
            "dpd = { delay_seconds = 2, timeout_seconds = 9 }\n",
        ),
        config(B, A, "respond", &[], ""),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(1);
    s.cut = true;
    s.run(Duration::from_secs(15));
    assert!(
        s.a.dp.routes.is_empty() && s.a.dp.outbound.is_empty(),
        "{:?}",
        s.a.dp
    );
    let st = s.a.status(s.now);
    assert!(
        matches!(st.state.as_str(), "retrying" | "connecting"),
        "{st:#?}"
    );
    assert!(st.attempts >= 2, "{st:#?}");
}

/// A peer re-initiates (a new IKE SA with the same identities, no DELETE, no INITIAL_CONTACT)
/// while the old IKE SA is still up on our side: what stays depends on `unique`.
fn reinitiation(unique: &str) -> Sim {
    let extra = format!("unique = \"{unique}\"\n");
    let mut s = Sim::new(
        config(A, B, "respond", &pairs(&PAIRS), &extra),
        config(B, A, "initiate", &flip(&PAIRS), ""),
    );
    s.run(Duration::from_secs(5));
    s.assert_converged(4);
    let cfg = s.b.cfg.clone();
    let fresh = Side::without_initial_contact(cfg, s.now);
    s.restart(false, fresh);
    s.pump();
    s.run(Duration::from_secs(60));
    s
}

#[test]
fn unique_replace_deletes_the_older_ike_sa_of_a_re_initiating_peer() {
    let s = reinitiation("replace");
    // The old IKE SA went (its DELETE unanswered: the peer forgot it), the new one carries all.
    s.assert_converged(4);
}

#[test]
fn unique_keep_keeps_the_established_ike_sa() {
    let s = reinitiation("keep");
    let st = s.a.status(s.now);
    // The new IKE SA was deleted at once; the old one stays (and carries nothing the new peer
    // knows, which is what `keep` means).
    assert_eq!(st.ike_sas.len(), 1, "{:#?}", st.ike_sas);
    assert!(s.b.status(s.now).ike_sas.is_empty() || s.b.status(s.now).state != "established");
}

#[test]
fn unique_never_keeps_both_ike_sas() {
    let s = reinitiation("never");
    let st = s.a.status(s.now);
    assert_eq!(st.ike_sas.len(), 2, "{:#?}", st.ike_sas);
    // Traffic goes on the new peer's Child SAs once the old ones are gone on its side... the
    // old ones still stand here, so each pair has one SA carrying it and one standing by.
    assert_eq!(s.a.dp.outbound.len(), 4);
}

#[test]
fn ike_attempts_follow_the_backoff_once_per_failure() {
    // No responder at all: each attempt fails after the retransmissions (9 s), then waits 1, 2,
    // 4, 8 s (retry.initial_seconds 1, doubling), exactly as logged.
    let mut s = Sim::cut(
        config(
            A,
            B,
            "initiate",
            &[],
            "dpd = { delay_seconds = 2, timeout_seconds = 9 }\n",
        ),
        config(B, A, "respond", &[], ""),
    );
    let start = s.now;
    let mut starts = Vec::new();
    let mut last = 0;
    for _ in 0..(80 * 10) {
        let st = s.a.status(s.now);
        if st.attempts != last {
            last = st.attempts;
            starts.push(s.now.duration_since(start).as_millis() as u64);
        }
        s.run(Duration::from_millis(100));
    }
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 4, "{starts:?}");
    for (g, wait) in gaps.iter().zip([1000u64, 2000, 4000, 8000]) {
        assert!(
            g.abs_diff(9000 + wait) <= 150,
            "attempts at {starts:?} (gaps {gaps:?})"
        );
    }
}

#[test]
fn after_down_a_peer_that_initiates_again_brings_the_connection_up() {
    // `down` stops our side from initiating; the peer (Azure's "Default" mode initiates too)
    // may start again, and its Child SAs are then installed, not ignored.
    let mut s = Sim::new(
        pb(A, B, "both", &pairs(&PAIRS)),
        pb(B, A, "both", &flip(&PAIRS)),
    );
    s.run(Duration::from_secs(30));
    s.assert_converged(4);
    let r = s.a.sup.control(
        s.now,
        &Request::Down {
            name: "azure".into(),
        },
    );
    assert!(r.ok);
    s.run(Duration::from_secs(10));
    s.assert_converged(4);
}
