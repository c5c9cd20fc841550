//! Stateful HA without root (issue #14): two appliances of a keepalived pair (each a
//! supervisor with its own IKE engine and a fake data plane) and one peer standing in for
//! Azure, under simulated time. The master replicates over an in-memory HA link; the test
//! plays keepalived (who holds the shared address, `set_ha_role`). After a takeover the peer
//! must keep the very same IKE SA and Child SA (same SPIs, no new IKE_SA_INIT), its requests
//! must be answered by the new master with the right message IDs and keys, the new master's
//! outbound SA must start beyond the old master's last mark plus `seq_skip`, and its inbound
//! SA must continue the replicated replay window. Without a usable replica the new master
//! starts a fresh IKE SA with INITIAL_CONTACT and the peer ends with that one alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use dataplane::{Direction, SaSeq, Snapshot, TunnelId};
use hybridgw::config::{self, Config};
use hybridgw::control::{ConnectionStatus, Request};
use hybridgw::engine::Engine;
use hybridgw::supervisor::{Command, HaRole, Supervisor};

const VIP: &str = "192.0.2.10";
const PEER: &str = "198.51.100.1";
const HA: [&str; 2] = ["203.0.113.1:4510", "203.0.113.2:4510"];
const SECRET: &str = "0123456789abcdef0123456789abcdef-ha-test";
const SKIP: u64 = 4096;

fn appliance(i: usize) -> Config {
    let text = format!(
        "[[connection]]\nname = \"azure\"\nlocal_address = \"{VIP}\"\nremote_address = \"{PEER}\"\n\
         psk = \"ha-takeover-test-psk-0123456789\"\nike_proposals = \"aes256-sha256-modp2048\"\n\
         esp_proposals = \"aes256gcm16\"\nbehaviour = \"both\"\ntun_name = \"t0\"\n\
         mode = \"route-based\"\nremote_prefixes = [\"198.19.0.0/24\"]\n\
         [ha]\nlocal_id = {}\npeer_id = {}\nlisten = \"{}\"\npeer = \"{}\"\nsecret_env = \"HA_SECRET\"\n\
         seq_skip = {SKIP}\n",
        i + 1,
        2 - i,
        HA[i],
        HA[1 - i]
    );
    config::parse(Path::new("ha.toml"), &text, &|k| {
        (k == "HA_SECRET").then(|| SECRET.to_string())
    })
    .expect("valid appliance config")
}

fn peer_config() -> Config {
    let text = format!(
        "[[connection]]\nname = \"onprem\"\nlocal_address = \"{PEER}\"\nremote_address = \"{VIP}\"\n\
         psk = \"ha-takeover-test-psk-0123456789\"\nike_proposals = \"aes256-sha256-modp2048\"\n\
         esp_proposals = \"aes256gcm16\"\nbehaviour = \"respond\"\ntun_name = \"t1\"\n\
         mode = \"route-based\"\nremote_prefixes = [\"198.18.0.0/24\"]\n"
    );
    config::parse(Path::new("peer.toml"), &text, &|_| None).expect("valid peer config")
}

/// What a fake data plane holds: SAs with the start state a takeover gave them.
#[derive(Debug, Default)]
struct FakeDp {
    /// Inbound SPI -> restored window top (0 for a new SA).
    inbound: BTreeMap<u32, u64>,
    /// The outbound SPI in use and its next sequence number.
    outbound: Option<(u32, u64)>,
    /// Every outbound install: (SPI, first sequence number).
    installs: Vec<(u32, u64)>,
    routes: usize,
}

impl FakeDp {
    fn apply(&mut self, c: Command) {
        match c {
            Command::InstallInbound { child, window, .. } => {
                self.inbound
                    .insert(child.inbound_spi, window.map_or(0, |w| w.highest));
            }
            Command::InstallOutbound {
                child, next_seq, ..
            } => {
                let first = next_seq.unwrap_or(1);
                self.outbound = Some((child.outbound_spi, first));
                self.installs.push((child.outbound_spi, first));
            }
            Command::Remove { direction, spi, .. } => match direction {
                Direction::Inbound => {
                    self.inbound.remove(&spi);
                }
                Direction::Outbound => {
                    if self.outbound.is_some_and(|(s, _)| s == spi) {
                        self.outbound = None;
                    }
                }
            },
            Command::ClearTunnel { .. } => {
                self.inbound.clear();
                self.outbound = None;
            }
            Command::Route { via, .. } => {
                if via.is_empty() {
                    self.routes = self.routes.saturating_sub(1);
                } else {
                    self.routes += 1;
                }
            }
            Command::NatKeepalive { .. } | Command::Bgp { .. } => {}
        }
    }

    /// `packets` sent on the outbound SA and received on every inbound one.
    fn traffic(&mut self, packets: u64) {
        if let Some((_, n)) = &mut self.outbound {
            *n += packets;
        }
        for top in self.inbound.values_mut() {
            *top += packets;
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        if let Some((spi, next)) = self.outbound {
            s.seqs.push(SaSeq {
                spi,
                direction: Direction::Outbound,
                tunnel: TunnelId(0),
                seq: next,
            });
        }
        s
    }

    fn window(&self, spi: u32) -> Option<esp::WindowState> {
        self.inbound.get(&spi).map(|&highest| esp::WindowState {
            highest,
            bitmap: vec![u64::MAX; 2],
        })
    }
}

struct Node {
    sup: Supervisor,
    dp: FakeDp,
    alive: bool,
}

impl Node {
    fn new(cfg: &Config, now: Instant) -> Node {
        let engine = Engine::new(cfg).expect("engine");
        Node {
            sup: Supervisor::new(cfg, engine, &[TunnelId(0)], now),
            dp: FakeDp::default(),
            alive: true,
        }
    }

    fn status(&self, now: Instant) -> ConnectionStatus {
        self.sup.status(now, &Snapshot::default()).remove(0)
    }
}

/// IKE SPIs and Child SA SPIs of a status.
fn spis(s: &ConnectionStatus) -> (Vec<String>, Vec<(String, String)>) {
    (
        s.ike_sas
            .iter()
            .map(|i| format!("{}/{}", i.spi_i, i.spi_r))
            .collect(),
        s.child_sas
            .iter()
            .filter(|c| c.state == "installed")
            .map(|c| (c.spi_in.clone(), c.spi_out.clone()))
            .collect(),
    )
}

struct Sim {
    now: Instant,
    app: [Node; 2],
    peer: Node,
    /// Which appliance holds the shared address.
    vip: Option<usize>,
    /// Replication datagrams delivered, per direction (0 -> 1, 1 -> 0).
    replicated: [u64; 2],
    /// Drop replication while true.
    ha_cut: bool,
    /// Drop IKE datagrams towards the peer while true (a request lost on the way).
    to_peer_cut: bool,
}

impl Sim {
    fn new() -> Sim {
        let now = Instant::now();
        let mut s = Sim {
            now,
            app: [Node::new(&appliance(0), now), Node::new(&appliance(1), now)],
            peer: Node::new(&peer_config(), now),
            vip: None,
            replicated: [0; 2],
            ha_cut: false,
            to_peer_cut: false,
        };
        s.pump();
        s
    }

    fn epoch(&self) -> u64 {
        // Grows with simulated time, like the daemon's wall-clock nanoseconds.
        1_000_000_000 + self.now.elapsed().as_nanos() as u64 + self.replicated.iter().sum::<u64>()
    }

    /// keepalived: appliance `i` takes the address and becomes master; the other, if alive,
    /// becomes backup first.
    fn master(&mut self, i: usize) -> String {
        let o = 1 - i;
        if self.app[o].alive {
            let r = self.app[o]
                .sup
                .set_ha_role(self.now, HaRole::Backup, self.epoch());
            assert!(r.ok, "{r:?}");
        }
        self.vip = Some(i);
        let epoch = self.epoch();
        let r = self.app[i].sup.set_ha_role(self.now, HaRole::Master, epoch);
        assert!(r.ok, "{r:?}");
        self.pump();
        r.message.unwrap_or_default()
    }

    /// Power off appliance `i`: it sends and receives nothing from now on.
    fn kill(&mut self, i: usize) {
        self.app[i].alive = false;
        if self.vip == Some(i) {
            self.vip = None;
        }
    }

    /// A fresh appliance `i` (restarted: an empty backup).
    fn restart(&mut self, i: usize) {
        self.app[i] = Node::new(&appliance(i), self.now);
        self.pump();
    }

    #[allow(clippy::needless_range_loop)]
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for i in 0..2 {
                while let Some(d) = self.app[i].sup.poll_ha_datagram() {
                    progress = true;
                    if self.app[i].alive && self.app[1 - i].alive && !self.ha_cut {
                        self.replicated[i] += 1;
                        let from: SocketAddr = HA[i].parse().expect("literal");
                        let now = self.now;
                        self.app[1 - i].sup.ha_receive(now, from, &d);
                    }
                }
                while let Some(t) = self.app[i].sup.poll_transmit() {
                    progress = true;
                    if self.app[i].alive && self.vip == Some(i) && !self.to_peer_cut {
                        let now = self.now;
                        if t.local.port() == 4500 || t.remote.port() == 4500 {
                            self.peer
                                .sup
                                .handle_natt(now, t.remote, t.local, &t.payload);
                        } else {
                            self.peer.sup.handle_ike(now, t.remote, t.local, &t.payload);
                        }
                    }
                }
                while let Some(c) = self.app[i].sup.poll_command() {
                    progress = true;
                    self.app[i].dp.apply(c);
                }
            }
            while let Some(t) = self.peer.sup.poll_transmit() {
                progress = true;
                if let Some(i) = self.vip
                    && self.app[i].alive
                {
                    let now = self.now;
                    if t.local.port() == 4500 || t.remote.port() == 4500 {
                        self.app[i]
                            .sup
                            .handle_natt(now, t.remote, t.local, &t.payload);
                    } else {
                        self.app[i]
                            .sup
                            .handle_ike(now, t.remote, t.local, &t.payload);
                    }
                }
            }
            while let Some(c) = self.peer.sup.poll_command() {
                progress = true;
                self.peer.dp.apply(c);
            }
            if !progress {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    /// Advances simulated time in 10 ms steps, with marks and traffic (100 packets a step).
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            let now = self.now;
            for n in self.app.iter_mut().chain(std::iter::once(&mut self.peer)) {
                if n.alive {
                    n.dp.traffic(100);
                    if n.sup.poll_timeout().is_some_and(|t| t <= now) {
                        n.sup.handle_timeout(now);
                    }
                }
            }
            for i in 0..2 {
                if self.app[i].alive && self.app[i].sup.ha_marks_due(now) {
                    let snap = self.app[i].dp.snapshot();
                    let dp = &self.app[i].dp;
                    let windows: BTreeMap<u32, esp::WindowState> = dp
                        .inbound
                        .keys()
                        .filter_map(|s| dp.window(*s).map(|w| (*s, w)))
                        .collect();
                    self.app[i]
                        .sup
                        .ha_marks(now, &snap, &|_, spi| windows.get(&spi).cloned());
                }
            }
            self.pump();
        }
    }

    fn ha(&self, i: usize) -> hybridgw::control::HaStatus {
        self.app[i]
            .sup
            .ha_status(self.now)
            .expect("[ha] configured")
    }
}

/// Both appliances up, A master with its tunnel established and replicated to B.
fn steady() -> Sim {
    let mut s = Sim::new();
    assert_eq!(s.ha(0).role, "backup");
    assert_eq!(
        s.app[0].status(s.now).state,
        "down",
        "a backup initiates nothing"
    );
    s.master(0);
    s.run(Duration::from_secs(3));
    assert_eq!(s.app[0].status(s.now).state, "established");
    assert_eq!(s.peer.status(s.now).state, "established");
    let b = s.ha(1);
    assert!(b.in_sync, "{b:?}");
    assert_eq!((b.standby_ike_sas, b.standby_child_sas), (1, 1), "{b:?}");
    assert!(b.lag_ms.is_some_and(|l| l <= 1000), "{b:?}");
    s
}

#[test]
fn a_backup_continues_the_same_sas_and_the_peer_notices_nothing() {
    let mut s = steady();
    let before = spis(&s.peer.status(s.now));
    let a_before = spis(&s.app[0].status(s.now));
    let inits_before = s.peer.sup.engine().counters().received;
    let (out_spi, master_next) = s.app[0].dp.outbound.expect("A sends");
    let master_in: BTreeMap<u32, u64> = s.app[0].dp.inbound.clone();
    s.run(Duration::from_millis(100));
    let master_next_now = s.app[0].dp.outbound.expect("A sends").1;
    assert!(master_next_now > master_next);

    s.kill(0);
    let msg = s.master(1);
    assert!(
        msg.contains("1 IKE SA(s) and 1 Child SA(s) continued"),
        "{msg}"
    );
    let b = s.ha(1);
    let t = b.last_takeover.as_ref().expect("takeover recorded");
    assert!(t.in_sync && t.fresh.is_empty(), "{t:?}");
    // The same SAs, installed with sequence numbers beyond everything A may have used.
    let (spi, first) = s.app[1].dp.outbound.expect("B sends");
    assert_eq!(spi, out_spi, "B sends on A's outbound SA");
    assert!(
        first > master_next_now && first <= master_next_now + SKIP + 1,
        "B starts at {first}, A had reached {master_next_now} (skip {SKIP})"
    );
    for (spi, top) in &s.app[1].dp.inbound {
        let a_top = master_in.get(spi).copied().unwrap_or(0);
        assert!(
            *top >= a_top,
            "inbound {spi:08x}: window {top} < A's {a_top} at the earlier mark"
        );
    }
    assert_eq!(s.app[1].status(s.now).state, "established");
    assert_eq!(spis(&s.app[1].status(s.now)), a_before, "B holds A's SAs");

    // The peer's requests reach B: a Child SA rekey from the peer, then one from B, then
    // dead peer detection; the IKE SA stays the same throughout.
    let r = s.peer.sup.control(
        s.now,
        &Request::Rekey {
            name: "onprem".into(),
            child: None,
        },
    );
    assert!(r.ok, "{r:?}");
    s.run(Duration::from_secs(3));
    let after_peer_rekey = spis(&s.peer.status(s.now));
    assert_eq!(after_peer_rekey.0, before.0, "same IKE SA at the peer");
    assert_ne!(
        after_peer_rekey.1, before.1,
        "the peer's rekey completed with B"
    );
    let mirrored = |x: &(Vec<String>, Vec<(String, String)>)| {
        (
            x.0.clone(),
            x.1.iter()
                .map(|(i, o)| (o.clone(), i.clone()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(spis(&s.app[1].status(s.now)), mirrored(&after_peer_rekey));
    let r = s.app[1].sup.control(
        s.now,
        &Request::Rekey {
            name: "azure".into(),
            child: None,
        },
    );
    assert!(r.ok, "{r:?}");
    s.run(Duration::from_secs(3));
    let after_our_rekey = spis(&s.peer.status(s.now));
    assert_eq!(after_our_rekey.0, before.0);
    assert_ne!(after_our_rekey.1, after_peer_rekey.1, "B's rekey completed");
    assert_eq!(spis(&s.app[1].status(s.now)), mirrored(&after_our_rekey));
    // Quiet for a minute: liveness checks both ways keep the SA (no DPD failure).
    s.run(Duration::from_secs(60));
    assert_eq!(spis(&s.peer.status(s.now)).0, before.0);
    assert_eq!(s.peer.status(s.now).state, "established");
    let c = s.peer.sup.engine().counters();
    assert!(c.received > inits_before);
    assert_eq!(
        s.peer.status(s.now).ike_sas.len(),
        1,
        "no second IKE SA at the peer"
    );
}

#[test]
fn the_role_moves_back_to_a_restarted_appliance_without_a_new_ike_sa() {
    let mut s = steady();
    let before = spis(&s.peer.status(s.now));
    s.kill(0);
    s.master(1);
    s.run(Duration::from_secs(2));
    s.restart(0);
    assert_eq!(s.ha(0).role, "backup");
    s.run(Duration::from_millis(1500));
    let a = s.ha(0);
    assert!(a.in_sync && a.standby_child_sas == 1, "{a:?}");
    let b_next = s.app[1].dp.outbound.expect("B sends").1;
    let msg = s.master(0);
    assert!(
        msg.contains("1 IKE SA(s) and 1 Child SA(s) continued"),
        "{msg}"
    );
    assert_eq!(s.ha(1).role, "backup");
    assert!(s.app[1].dp.outbound.is_none(), "B stopped sending");
    assert!(s.app[1].dp.inbound.is_empty(), "B forgot its SAs");
    let first = s.app[0].dp.outbound.expect("A sends").1;
    assert!(first > b_next, "A starts at {first}, beyond B's {b_next}");
    s.run(Duration::from_secs(5));
    assert_eq!(spis(&s.peer.status(s.now)), before);
    assert_eq!(s.app[0].status(s.now).state, "established");
    // B went quietly: no DELETE reached the peer.
    assert_eq!(s.peer.status(s.now).ike_sas.len(), 1);
}

#[test]
fn without_a_replica_the_new_master_starts_a_fresh_ike_sa_with_initial_contact() {
    let mut s = Sim::new();
    s.ha_cut = true;
    s.master(0);
    s.run(Duration::from_secs(3));
    let old = spis(&s.peer.status(s.now));
    assert!(!s.ha(1).in_sync);
    s.kill(0);
    let msg = s.master(1);
    assert!(msg.contains("0 IKE SA(s)"), "{msg}");
    let t = s.ha(1).last_takeover.expect("takeover");
    assert!(!t.in_sync && !t.fresh.is_empty(), "{t:?}");
    s.run(Duration::from_secs(5));
    let st = s.peer.status(s.now);
    assert_eq!(st.state, "established");
    assert_eq!(
        st.ike_sas.len(),
        1,
        "INITIAL_CONTACT made the peer drop the old IKE SA"
    );
    assert_ne!(spis(&st).0, old.0, "a new IKE SA");
    assert_eq!(s.app[1].status(s.now).state, "established");
}

#[test]
fn an_exchange_in_flight_at_takeover_falls_back_to_a_fresh_ike_sa() {
    let mut s = steady();
    let old = spis(&s.peer.status(s.now));
    // A's CREATE_CHILD_SA never reaches the peer, and A dies with it outstanding.
    s.to_peer_cut = true;
    let r = s.app[0].sup.control(
        s.now,
        &Request::Rekey {
            name: "azure".into(),
            child: None,
        },
    );
    assert!(r.ok, "{r:?}");
    s.run(Duration::from_millis(50));
    s.kill(0);
    s.to_peer_cut = false;
    let msg = s.master(1);
    assert!(msg.contains("fresh IKE SA"), "{msg}");
    s.run(Duration::from_secs(5));
    let st = s.peer.status(s.now);
    assert_eq!(st.state, "established");
    assert_eq!(st.ike_sas.len(), 1);
    assert_ne!(spis(&st).0, old.0);
}

#[test]
fn replication_from_another_address_or_with_another_secret_is_refused_and_counted() {
    let mut s = steady();
    let before = s.ha(1);
    // A datagram A really sealed, replayed from another address, and a forged one.
    s.app[0].sup.control(
        s.now,
        &Request::Rekey {
            name: "azure".into(),
            child: None,
        },
    );
    let mut sealed = Vec::new();
    while let Some(d) = s.app[0].sup.poll_ha_datagram() {
        sealed.push(d);
    }
    assert!(!sealed.is_empty());
    let stranger: SocketAddr = "203.0.113.9:4510".parse().expect("literal");
    let now = s.now;
    s.app[1].sup.ha_receive(now, stranger, &sealed[0]);
    let mut forged = sealed[0].clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let from: SocketAddr = HA[0].parse().expect("literal");
    s.app[1].sup.ha_receive(now, from, &forged);
    let after = s.ha(1);
    assert_eq!(after.refused.get("wrong_source"), Some(&1), "{after:?}");
    let refused = |h: &hybridgw::control::HaStatus| h.refused.values().sum::<u64>();
    assert_eq!(refused(&after), refused(&before) + 2, "{after:?}");
    assert_eq!(after.accepted, before.accepted);
    assert_eq!(after.standby_ike_sas, 1, "the replica is untouched");
    // A backup never answers IKE: the shared address is not its.
    assert_eq!(after.role, "backup");
}

#[test]
fn a_master_that_stops_sends_no_delete_and_the_backup_continues() {
    let mut s = steady();
    let before = spis(&s.peer.status(s.now));
    let received = s.peer.sup.engine().counters().received;
    // systemctl stop on the master: SIGTERM.
    assert!(
        !s.app[0].sup.request_stop(s.now),
        "no drain with stateful HA"
    );
    s.app[0].sup.shutdown(s.now);
    s.pump();
    assert_eq!(s.app[0].sup.ike_sa_count(), 0, "nothing left to wait for");
    assert_eq!(
        s.peer.sup.engine().counters().received,
        received,
        "no DELETE reached the peer"
    );
    s.kill(0);
    s.master(1);
    s.run(Duration::from_secs(5));
    assert_eq!(spis(&s.peer.status(s.now)).0, before.0);
    assert_eq!(s.app[1].status(s.now).state, "established");
}
