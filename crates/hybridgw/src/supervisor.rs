//! The appliance's decisions, sans-IO (RFC 7296 §1.3 Child SAs, §2.8 rekeying, §2.9 selectors;
//! RFC 4301 §4.4.1 the SPD): per connection, which IKE and Child SAs exist, which SA carries each
//! selector pair outbound, which routes are installed, when to retry, and which of two duplicate
//! IKE SAs goes. Events come in (datagrams, timers, control requests, data-plane counters and
//! lifetimes); commands go out (install inbound, install outbound, remove, routes, keepalives) and
//! the daemon only carries them out. No sockets, no clock: every call is handed `now`, so the
//! tests drive two supervisors and a fake data plane under simulated time.
//!
//! The rules it keeps, for every Child SA of every connection:
//! - an inbound SA is installed as soon as the Child SA exists (before the peer can use it);
//! - an outbound SA carries traffic only once its exchange is complete: a Child SA created while
//!   another one already carries the same selectors stands by (its keys kept, its sequence
//!   numbers unused) and takes over when that one goes (a duplicate from a crossing setup, or a
//!   rekey the peer started, RFC 7296 §2.8);
//! - an SA is removed only when its Child SA is gone, and by (tunnel, direction, SPI);
//! - a route is installed only while a Child SA that covers it carries traffic; a configured
//!   selector pair without one is reported (`partial`, `missing_pairs`), never blackholed in
//!   silence.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dataplane::{Direction, Snapshot, TunnelId};
use ike::wire::TrafficSelector as Ts;
use ike::{ChildSa, Event, FailReason, IkeSaId};
use tracing::{debug, info, warn};

use crate::config::{self, Config, Connection, DpdAction, Mode, Prefix, Unique};
use crate::control::{
    ActiveActiveStatus, BgpStatus, ChildSaStatus, ConnectionStatus, IkeSaStatus, Request, Response,
    RouteStatus, Status,
};
use crate::engine::{self, Datagram, Engine};

/// How long the responder of an IKE SA leaves it to the initiator to create the Child SAs that
/// are missing before it asks for them itself (so both sides do not create the same pair).
pub const RESPONDER_GRACE: Duration = Duration::from_secs(2);
/// How long two Child SAs with the same selectors on one IKE SA both stay before the redundant
/// one is deleted: a DELETE sent right after the peer's CREATE_CHILD_SA was answered can reach
/// strongSwan before it has installed that Child SA (its worker threads take the two messages
/// in either order), which then stays there alone, with nothing behind it on our side.
pub const DEDUPE_DELAY: Duration = Duration::from_secs(1);
/// How long a duplicate IKE SA is kept, at most, while its survivor brings up the Child SAs the
/// duplicate carries (make-before-break), before it is deleted anyway.
pub const REPLACE_WAIT: Duration = Duration::from_secs(10);

/// What the daemon carries out.
#[derive(Debug)]
pub enum Command {
    /// Install the inbound SA of a Child SA (keys from `child`).
    InstallInbound {
        conn: usize,
        tunnel: TunnelId,
        child: Box<ChildSa>,
        /// A takeover continues the master's anti-replay window (`None`: a new SA).
        window: Option<esp::WindowState>,
    },
    /// Make the outbound SA of `child` the one that carries its selectors (replacing the one
    /// installed for the same selectors, if any).
    InstallOutbound {
        conn: usize,
        tunnel: TunnelId,
        child: Box<ChildSa>,
        /// A takeover starts beyond the master's last mark (`None`: a new SA, from 1).
        next_seq: Option<u64>,
    },
    /// Remove one SA.
    Remove {
        tunnel: TunnelId,
        direction: Direction,
        spi: u32,
    },
    /// Remove every SA of the tunnel and forget its peer (the connection is down).
    ClearTunnel { tunnel: TunnelId },
    /// NAT keepalives on the tunnel (RFC 3948 §2.3), or off.
    NatKeepalive {
        tunnel: TunnelId,
        interval: Option<Duration>,
    },
    /// Route `prefix` at `metric` over these tunnels (one route, a multipath route, or none).
    /// `was` is what the previous command for the same route installed. Within one batch every
    /// route that is added or changed comes before every route that is removed (a route that
    /// moves to another metric is never missing in between).
    Route {
        prefix: Prefix,
        metric: u32,
        via: Vec<TunnelId>,
        was: Vec<TunnelId>,
    },
    /// Enable or disable a BIRD protocol over BIRD's control socket (a drain withdraws the
    /// tunnel's BGP routes this way; `up` and start-up enable them again).
    Bgp {
        socket: PathBuf,
        protocol: String,
        enable: bool,
    },
}

/// Where a planned drain of a connection stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DrainPhase {
    None,
    /// Routes withdrawn or de-preferred; the DELETE comes once nothing arrived for
    /// `Drain::quiet`, or at `deadline`.
    Draining {
        started: Instant,
        deadline: Instant,
        last_rx: Instant,
        rx: u64,
    },
    /// Done: the connection is stopped until `up`.
    Drained {
        took: Duration,
        quiet: bool,
    },
}

/// An installed Child SA as the appliance shows it (names, no keys).
#[derive(Debug, Clone)]
pub struct ChildInfo {
    pub inbound_spi: u32,
    pub outbound_spi: u32,
    pub encryption: String,
    pub integrity: String,
    pub pfs: String,
    pub encap: bool,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub since: Instant,
}

/// One configured selector pair a Child SA has to cover (policy-based), or "everything"
/// (route-based).
#[derive(Debug, Clone)]
struct Pair {
    local: Vec<Ts>,
    remote: Vec<Ts>,
    /// The remote prefix routed for it (policy-based).
    remote_prefix: Option<Prefix>,
    label: String,
}

/// How a Child SA's outbound SA is used.
#[derive(Debug)]
enum Out {
    /// Carries its selectors now.
    Current,
    /// Installed only inbound; takes over when the current SA for its selectors goes. Its keys
    /// are kept for that (zeroized when dropped).
    Standby(Box<ChildSa>),
    /// Replaced by a rekey: waits for its DELETE.
    Retired,
}

#[derive(Debug)]
struct Child {
    ike: IkeSaId,
    in_spi: u32,
    out_spi: u32,
    local_ts: Vec<Ts>,
    remote_ts: Vec<Ts>,
    info: ChildInfo,
    out: Out,
    /// Inbound SPI of the Child SA whose traffic this one takes over when it goes (a rekey the
    /// peer started).
    replaces: Option<u32>,
    /// Our DELETE for it is out.
    deleting: bool,
    /// Inbound packets at the last counter reading (dead peer detection).
    seen_packets: u64,
    /// Taken over from the HA partner: the first outbound sequence number its outbound SA
    /// may use whenever it is installed (never from 1: the partner used those).
    first_seq: Option<u64>,
}

impl Child {
    fn covers(&self, p: &Pair) -> bool {
        let within = |want: &[Ts], have: &[Ts]| {
            want.iter()
                .all(|w| have.iter().any(|h| ike::ts::contains(h, w)))
        };
        within(&p.local, &self.local_ts) && within(&p.remote, &self.remote_ts)
    }

    fn live(&self) -> bool {
        !self.deleting && !matches!(self.out, Out::Retired)
    }

    /// Symmetric: both sides compute the same value for the same Child SA.
    fn score(&self) -> u32 {
        self.in_spi.min(self.out_spi)
    }
}

#[derive(Debug)]
struct Ike {
    id: IkeSaId,
    initiator: bool,
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
    algs: [String; 4],
    /// Established at.
    since: Instant,
    /// Its IKE_SA_INIT was sent or received at.
    started: Instant,
    /// Its IKE_AUTH carried INITIAL_CONTACT.
    initial_contact: bool,
    /// Child SAs missing on it are asked for from this time on.
    requests_after: Instant,
    /// A duplicate to delete once `survivor` covers what it covers, or at the deadline.
    redundant: Option<(IkeSaId, Instant, &'static str)>,
    deleting: bool,
}

impl Ike {
    /// Symmetric: both sides compute the same value for the same IKE SA.
    fn score(&self) -> u64 {
        self.spi_i.min(self.spi_r)
    }

    /// Of two IKE SAs whose setups crossed (opposite roles), whether `self` is the one that
    /// goes. Both sides know which IKE_AUTH carried INITIAL_CONTACT and both SPI pairs:
    /// - exactly one carried it: that one stays (a peer such as strongSwan destroys its own
    ///   crossing IKE SA when our INITIAL_CONTACT reaches it after that SA is up, RFC 7296
    ///   §3.10.1, so the other one may already be gone there);
    /// - both did (a peer that sends it while our setup is half-open, as strongSwan does): the
    ///   one we initiated stays, since only ours is sure to be alive at the peer (two hybridgw
    ///   cannot both send it: each sees the other's setup before its IKE_AUTH);
    /// - neither: the one with the lower SPI goes.
    fn loses_crossing_to(&self, other: &Ike) -> bool {
        match (self.initial_contact, other.initial_contact) {
            (true, false) => false,
            (false, true) => true,
            (true, true) => !self.initiator,
            (false, false) => self.score() < other.score(),
        }
    }
}

/// A Child SA we asked for and have no answer to yet.
#[derive(Debug)]
struct ChildRequest {
    ike: IkeSaId,
    pairs: Vec<usize>,
    local: Vec<Ts>,
    remote: Vec<Ts>,
}

#[derive(Debug)]
struct Conn {
    cfg: Connection,
    tunnel: TunnelId,
    pairs: Vec<Pair>,
    ike: Vec<Ike>,
    /// Our IKE_SA_INIT / IKE_AUTH in flight.
    connecting: Option<IkeSaId>,
    children: Vec<Child>,
    requests: Vec<ChildRequest>,
    /// Per pair: not asked for again before this time (retry backoff), and the next backoff.
    pair_next: Vec<Option<Instant>>,
    pair_backoff: Vec<Duration>,
    stopped: bool,
    attempts: u64,
    last_error: Option<String>,
    next_attempt: Option<Instant>,
    backoff: Duration,
    keepalive_on: bool,
    /// Active-active: this member carries traffic now.
    carrying: bool,
    drain: DrainPhase,
}

impl Conn {
    fn initial_backoff(&self) -> Duration {
        Duration::from_secs(self.cfg.retry.initial_seconds.max(1))
    }

    fn max_backoff(&self) -> Duration {
        Duration::from_secs(self.cfg.retry.max_seconds.max(1))
    }

    fn policy_based(&self) -> bool {
        matches!(self.cfg.mode, Mode::PolicyBased { .. })
    }

    fn per_pair(&self) -> bool {
        self.policy_based() && self.cfg.child_sa_per_pair
    }

    fn ike_mut(&mut self, id: IkeSaId) -> Option<&mut Ike> {
        self.ike.iter_mut().find(|i| i.id == id)
    }

    /// The IKE SA new Child SAs go to: the newest that is neither a duplicate nor being deleted.
    fn primary(&self) -> Option<&Ike> {
        self.ike
            .iter()
            .filter(|i| !i.deleting && i.redundant.is_none())
            .max_by_key(|i| i.since)
    }

    /// Whether Child SA `x` carries pair `p` (route-based: every Child SA carries everything).
    fn child_covers(&self, x: &Child, p: usize) -> bool {
        !self.policy_based() || x.covers(&self.pairs[p])
    }

    /// Whether Child SA `x` has these selectors, i.e. shares one outbound entry with a Child SA
    /// that has them (route-based: a tunnel has one outbound entry).
    fn same_selectors(&self, x: &Child, local: &[Ts], remote: &[Ts]) -> bool {
        !self.policy_based() || (x.local_ts == local && x.remote_ts == remote)
    }

    /// Whether pair `p` has a Child SA carrying it (any IKE SA).
    fn carried(&self, p: usize) -> bool {
        self.children
            .iter()
            .any(|c| !c.deleting && matches!(c.out, Out::Current) && self.child_covers(c, p))
    }

    /// Whether pair `p` has a live Child SA on the IKE SA `ike`.
    fn covered_on(&self, ike: IkeSaId, p: usize) -> bool {
        self.children
            .iter()
            .any(|c| c.ike == ike && c.live() && self.child_covers(c, p))
    }

    /// The selectors of one Child SA carrying `pairs`: the union of their local sides and of
    /// their remote sides, in configuration order (RFC 7296 §2.9: the lists mean their cross
    /// product).
    fn selectors_of(&self, pairs: &[usize]) -> (Vec<Ts>, Vec<Ts>) {
        let mut local: Vec<Ts> = Vec::new();
        let mut remote: Vec<Ts> = Vec::new();
        for &k in pairs {
            let Some(p) = self.pairs.get(k) else { continue };
            for t in &p.local {
                if !local.contains(t) {
                    local.push(*t);
                }
            }
            for t in &p.remote {
                if !remote.contains(t) {
                    remote.push(*t);
                }
            }
        }
        (local, remote)
    }

    fn missing(&self) -> Vec<usize> {
        (0..self.pairs.len())
            .filter(|&p| !self.carried(p))
            .collect()
    }

    fn any_carried(&self) -> bool {
        self.children
            .iter()
            .any(|c| !c.deleting && matches!(c.out, Out::Current))
    }

    /// Whether route `prefix` has a Child SA behind it.
    fn route_covered(&self, prefix: Prefix) -> bool {
        if self.stopped {
            return false;
        }
        let pairs: Vec<usize> = (0..self.pairs.len())
            .filter(|&p| self.pairs[p].remote_prefix == Some(prefix))
            .collect();
        if pairs.is_empty() {
            // Route-based, or a route no selector names (the BGP peer's host route).
            return self.any_carried();
        }
        pairs.into_iter().any(|p| self.carried(p))
    }

    /// Draining or drained: its routes are worse than any other path's.
    fn withdrawn(&self) -> bool {
        self.drain != DrainPhase::None
    }

    fn state_name(&self) -> &'static str {
        if matches!(self.drain, DrainPhase::Draining { .. }) {
            "draining"
        } else if self.stopped && matches!(self.drain, DrainPhase::Drained { .. }) {
            "drained"
        } else if self.stopped {
            "stopped"
        } else if self.any_carried() {
            if self.missing().is_empty() {
                "established"
            } else {
                "partial"
            }
        } else if !self.ike.is_empty() || self.connecting.is_some() {
            "connecting"
        } else if self.next_attempt.is_some() {
            "retrying"
        } else {
            "down"
        }
    }
}

fn pairs_of(c: &Connection) -> Vec<Pair> {
    let ts = |p: &Prefix| Ts::from_prefix(p.addr, p.len);
    match &c.mode {
        Mode::RouteBased { .. } => vec![Pair {
            local: vec![Ts::any_v4()],
            remote: vec![Ts::any_v4()],
            remote_prefix: None,
            label: "0.0.0.0/0 === 0.0.0.0/0".into(),
        }],
        Mode::PolicyBased { selectors, .. } => selectors
            .iter()
            .map(|s| Pair {
                local: vec![ts(&s.local)],
                remote: vec![ts(&s.remote)],
                remote_prefix: Some(s.remote),
                label: format!("{} === {}", s.local, s.remote),
            })
            .collect(),
    }
}

/// The (BIRD socket, protocol) pairs a drain of `c` disables (none without `bird_socket`).
fn drain_protocols(c: &Connection) -> Vec<(PathBuf, String)> {
    match &c.bgp {
        Some(b) => match &b.bird_socket {
            Some(sock) => b
                .drain_protocols
                .iter()
                .map(|p| (sock.clone(), p.clone()))
                .collect(),
            None => Vec::new(),
        },
        None => Vec::new(),
    }
}

fn ts_list(v: &[Ts]) -> String {
    v.iter().map(engine::ts_text).collect::<Vec<_>>().join(",")
}

/// Stateful HA role (keepalived's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaRole {
    /// The partner runs the tunnels; this appliance holds their state warm.
    Backup,
    /// This appliance runs the tunnels and replicates them.
    Master,
    /// keepalived found a fault: like backup, and not a takeover candidate.
    Fault,
}

impl HaRole {
    /// The role named `s` (keepalived's notify words).
    pub fn parse(s: &str) -> Option<HaRole> {
        match s.to_ascii_lowercase().as_str() {
            "master" => Some(HaRole::Master),
            "backup" => Some(HaRole::Backup),
            "fault" | "stop" => Some(HaRole::Fault),
            _ => None,
        }
    }

    /// Its name in `status`.
    pub fn name(self) -> &'static str {
        match self {
            HaRole::Backup => "backup",
            HaRole::Master => "master",
            HaRole::Fault => "fault",
        }
    }
}

#[derive(Debug)]
struct Takeover {
    at: Instant,
    in_sync: bool,
    lag: Option<Duration>,
    ike_continued: usize,
    child_installed: usize,
    fresh: Vec<String>,
}

#[derive(Debug)]
struct HaState {
    cfg: config::Ha,
    role: HaRole,
    since: Instant,
    master: Option<crate::replication::Master>,
    standby: crate::replication::Standby,
    /// Replication datagrams from another address than the partner's (refused).
    wrong_source: u64,
    /// IKE datagrams that reached this appliance while not master (dropped).
    ike_ignored: u64,
    last_takeover: Option<Takeover>,
}

/// Key of a route: (owner connection, prefix, metric).
type RouteKey = (usize, Prefix, u32);

/// The appliance's connections and the IKE engine that serves them.
#[derive(Debug)]
pub struct Supervisor {
    engine: Engine,
    conns: Vec<Conn>,
    commands: VecDeque<Command>,
    /// Routes as last commanded.
    routes: BTreeMap<RouteKey, Vec<TunnelId>>,
    now: Instant,
    drain_cfg: config::Drain,
    /// BIRD protocols a drain has disabled.
    bgp_off: BTreeSet<(PathBuf, String)>,
    /// SIGTERM with `[drain] on_shutdown`: stop once drained, at the latest at this time.
    stop_by: Option<Instant>,
    /// Stateful HA (`[ha]`).
    ha: Option<HaState>,
}

impl Supervisor {
    /// A supervisor for `cfg`'s connections, connection `i` on data-plane tunnel `tunnels[i]`.
    /// Initiating connections start at once.
    pub fn new(cfg: &Config, engine: Engine, tunnels: &[TunnelId], now: Instant) -> Self {
        let conns = cfg
            .connections
            .iter()
            .zip(tunnels)
            .map(|(c, &tunnel)| {
                let pairs = pairs_of(c);
                let initial = Duration::from_secs(c.retry.initial_seconds.max(1));
                Conn {
                    tunnel,
                    pair_next: vec![None; pairs.len()],
                    pair_backoff: vec![initial; pairs.len()],
                    pairs,
                    ike: Vec::new(),
                    connecting: None,
                    children: Vec::new(),
                    requests: Vec::new(),
                    stopped: false,
                    attempts: 0,
                    last_error: None,
                    next_attempt: c.behaviour.initiates().then_some(now),
                    backoff: initial,
                    keepalive_on: false,
                    carrying: false,
                    drain: DrainPhase::None,
                    cfg: c.clone(),
                }
            })
            .collect();
        let mut s = Supervisor {
            engine,
            conns,
            commands: VecDeque::new(),
            routes: BTreeMap::new(),
            now,
            drain_cfg: cfg.daemon.drain,
            bgp_off: BTreeSet::new(),
            stop_by: None,
            ha: None,
        };
        // With `[ha]` the appliance starts as backup: it initiates nothing until keepalived
        // makes it master (`hybridgw ha master`).
        if let Some(h) = &cfg.daemon.ha {
            match crate::replication::Standby::new(h) {
                Ok(standby) => {
                    for c in &mut s.conns {
                        c.next_attempt = None;
                    }
                    s.ha = Some(HaState {
                        cfg: h.clone(),
                        role: HaRole::Backup,
                        since: now,
                        master: None,
                        standby,
                        wrong_source: 0,
                        ike_ignored: 0,
                        last_takeover: None,
                    });
                }
                Err(e) => warn!("stateful HA disabled: {e}"),
            }
        }
        // hybridgw owns the enabled state of the protocols its drains disable: a daemon that
        // starts (again) after a drain attracts traffic again.
        let mut seen = BTreeSet::new();
        for c in &s.conns {
            for (sock, proto) in drain_protocols(&c.cfg) {
                if seen.insert((sock.clone(), proto.clone())) {
                    s.commands.push_back(Command::Bgp {
                        socket: sock,
                        protocol: proto,
                        enable: true,
                    });
                }
            }
        }
        s.settle(now);
        s
    }

    /// The configuration of connection `i`.
    pub fn connection(&self, i: usize) -> Option<&Connection> {
        self.conns.get(i).map(|c| &c.cfg)
    }

    /// The IKE engine (counters, addresses).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    // ------------------------------------------------------------------ inputs

    /// An IKE datagram from UDP 500.
    pub fn handle_ike(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        if self.ha_passive() {
            if let Some(h) = self.ha.as_mut() {
                h.ike_ignored += 1;
            }
            return;
        }
        self.engine.handle(now, local, remote, data);
        self.settle(now);
    }

    /// An IKE datagram from UDP 4500 (non-ESP marker removed).
    pub fn handle_natt(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        if self.ha_passive() {
            if let Some(h) = self.ha.as_mut() {
                h.ike_ignored += 1;
            }
            return;
        }
        self.engine.handle_natt(now, local, remote, data);
        self.settle(now);
    }

    /// Timers: retransmissions, lifetimes, DPD, retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
        self.settle(now);
    }

    /// The earliest time `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let engine_due = self.engine.poll_timeout();
        let mut t: Vec<Instant> = engine_due.into_iter().collect();
        for c in &self.conns {
            t.extend(c.next_attempt);
            if let Some(p) = c.primary() {
                t.push(p.requests_after);
                t.extend(c.pair_next.iter().flatten());
            }
            t.extend(c.ike.iter().filter_map(|i| i.redundant.map(|r| r.1)));
            t.extend(c.children.iter().map(|x| x.info.since + DEDUPE_DELAY));
            if let DrainPhase::Draining {
                deadline, last_rx, ..
            } = c.drain
            {
                t.push(deadline.min(last_rx + self.drain_cfg.quiet));
            }
        }
        if let Some(m) = self.ha.as_ref().and_then(|h| h.master.as_ref()) {
            t.push(m.poll_timeout());
        }
        t.into_iter()
            .filter(|x| *x > self.now || Some(*x) == engine_due)
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.engine.poll_transmit()
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Data-plane counters (about once a second): received ESP is a sign of life for dead peer
    /// detection.
    pub fn note_counters(&mut self, now: Instant, snap: &Snapshot) {
        for c in &mut self.conns {
            let mut rx = 0u64;
            for ch in &mut c.children {
                if let Some(s) = snap.sa_of(c.tunnel, ch.in_spi, Direction::Inbound) {
                    rx = rx.wrapping_add(s.packets);
                    if s.packets != ch.seen_packets {
                        ch.seen_packets = s.packets;
                        self.engine.note_inbound(now, ch.in_spi);
                    }
                }
            }
            if let DrainPhase::Draining {
                last_rx, rx: seen, ..
            } = &mut c.drain
                && *seen != rx
            {
                *seen = rx;
                *last_rx = now;
            }
        }
        self.settle(now);
    }

    /// A planned drain of every connection (SIGTERM with `[drain] on_shutdown`); the daemon
    /// waits while `draining()` and then shuts down.
    pub fn drain_all(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            self.start_drain(i, now, self.drain_cfg.timeout);
        }
        self.settle(now);
    }

    /// How often the daemon should read the data-plane counters: once a second (dead peer
    /// detection), ten times a second while a drain waits for quiet.
    pub fn counters_interval(&self) -> Duration {
        if self.draining() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        }
    }

    /// SIGTERM: with `[drain] on_shutdown` (and not asked before) every connection drains
    /// first and this returns true (keep running until [`Supervisor::stop_due`]); otherwise
    /// false: stop now.
    pub fn request_stop(&mut self, now: Instant) -> bool {
        // Stateful HA: a drain would end in DELETEs; the partner continues the SAs instead.
        if !self.drain_cfg.on_shutdown || self.stop_by.is_some() || self.ha.is_some() {
            return false;
        }
        self.stop_by = Some(now + self.drain_cfg.timeout + Duration::from_secs(2));
        self.drain_all(now);
        true
    }

    /// After [`Supervisor::request_stop`]: the drains are over (or out of time).
    pub fn stop_due(&self, now: Instant) -> bool {
        self.stop_by
            .is_some_and(|until| !self.draining() || now >= until)
    }

    /// Some connection is still draining.
    pub fn draining(&self) -> bool {
        self.conns
            .iter()
            .any(|c| matches!(c.drain, DrainPhase::Draining { .. }))
    }

    /// Starts draining connection `i`: its BGP protocols are disabled and its static routes
    /// de-preferred now (with the next route sync); the DELETE waits for quiet or `timeout`.
    /// A connection that carries nothing is taken down at once.
    fn start_drain(&mut self, i: usize, now: Instant, timeout: Duration) {
        if matches!(self.conns[i].drain, DrainPhase::Draining { .. }) {
            return;
        }
        if !self.conns[i].any_carried() {
            self.take_down(i, now);
            self.conns[i].drain = DrainPhase::Drained {
                took: Duration::ZERO,
                quiet: true,
            };
            return;
        }
        let c = &mut self.conns[i];
        c.drain = DrainPhase::Draining {
            started: now,
            deadline: now + timeout,
            last_rx: now,
            rx: u64::MAX,
        };
        c.next_attempt = None;
        let name = c.cfg.name.clone();
        for (sock, proto) in drain_protocols(&c.cfg) {
            if self.bgp_off.insert((sock.clone(), proto.clone())) {
                info!(conn = %name, protocol = %proto, "drain: disabling the BGP session (its routes are withdrawn)");
                self.commands.push_back(Command::Bgp {
                    socket: sock,
                    protocol: proto,
                    enable: false,
                });
            }
        }
        info!(conn = %name, timeout_s = timeout.as_secs(), "draining: routes withdrawn or de-preferred; DELETE once nothing arrives");
    }

    /// Draining connections whose tunnel is quiet (or out of time) go down.
    fn drain_step(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let DrainPhase::Draining {
                started,
                deadline,
                last_rx,
                ..
            } = self.conns[i].drain
            else {
                continue;
            };
            let quiet = now.saturating_duration_since(last_rx) >= self.drain_cfg.quiet;
            let gone = !self.conns[i].any_carried();
            if quiet || gone || now >= deadline {
                let took = now.saturating_duration_since(started);
                let name = self.conns[i].cfg.name.clone();
                if quiet || gone {
                    info!(conn = %name, took_ms = took.as_millis() as u64, "drained: nothing arrived any more; deleting the tunnel");
                } else {
                    warn!(conn = %name, took_ms = took.as_millis() as u64, "drain timed out with traffic still arriving; deleting the tunnel");
                }
                self.take_down(i, now);
                self.conns[i].drain = DrainPhase::Drained {
                    took,
                    quiet: quiet || gone,
                };
            }
        }
    }

    /// `up` after a drain: the BGP protocols the drain disabled (and no other drained
    /// connection still needs disabled) are enabled again.
    fn undrain(&mut self, i: usize) {
        if self.conns[i].drain == DrainPhase::None {
            return;
        }
        self.conns[i].drain = DrainPhase::None;
        let still: BTreeSet<(PathBuf, String)> = self
            .conns
            .iter()
            .filter(|c| c.withdrawn())
            .flat_map(|c| drain_protocols(&c.cfg))
            .collect();
        for key in drain_protocols(&self.conns[i].cfg) {
            if !still.contains(&key) && self.bgp_off.remove(&key) {
                self.commands.push_back(Command::Bgp {
                    socket: key.0,
                    protocol: key.1,
                    enable: true,
                });
            }
        }
    }

    /// An SA of `tunnel` reached its soft or hard byte/packet limit: rekey its Child SA.
    pub fn on_lifetime(
        &mut self,
        now: Instant,
        tunnel: TunnelId,
        spi: u32,
        direction: Direction,
        state: esp::LifetimeState,
    ) {
        let Some(c) = self.conns.iter().find(|c| c.tunnel == tunnel) else {
            return;
        };
        let Some(ch) = c.children.iter().find(|ch| match direction {
            Direction::Inbound => ch.in_spi == spi,
            Direction::Outbound => ch.out_spi == spi,
        }) else {
            return;
        };
        let (name, in_spi) = (c.cfg.name.clone(), ch.in_spi);
        info!(conn = %name, spi = %format!("{spi:08x}"), ?direction, ?state, "Child SA byte/packet limit reached: rekeying");
        if !self.engine.rekey_spi(now, in_spi) && state == esp::LifetimeState::Expired {
            warn!(conn = %name, spi_in = %format!("{in_spi:08x}"), "Child SA expired and cannot be rekeyed: deleting it (it is created again)");
            self.engine.delete_child(now, in_spi);
        }
        self.settle(now);
    }

    /// The daemon could not install an SA of connection `conn`: the Child SA is deleted (and
    /// created again), so `status` never shows an SA that carries nothing.
    pub fn install_failed(&mut self, now: Instant, conn: usize, in_spi: u32, error: &str) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.last_error = Some(format!("installing a Child SA: {error}"));
            if let Some(ch) = c.children.iter_mut().find(|ch| ch.in_spi == in_spi) {
                ch.deleting = true;
            }
        }
        self.engine.delete_child(now, in_spi);
        self.settle(now);
    }

    /// A control request other than `status`.
    pub fn control(&mut self, now: Instant, req: &Request) -> Response {
        let r = self.control_inner(now, req);
        self.settle(now);
        r
    }

    fn control_inner(&mut self, now: Instant, req: &Request) -> Response {
        let find = |name: &str| self.conns.iter().position(|c| c.cfg.name == name);
        match req {
            Request::Status => Response::err("status is answered by the daemon"),
            Request::Ha { .. } => Response::err("the HA role is set by the daemon"),
            Request::Up { name } => {
                // A connection, and with the name of an active-active group every member of
                // it (the inverse of `drain`).
                let members = self.named(name);
                if members.is_empty() {
                    return Response::err(format!("no connection named `{name}`"));
                }
                let msgs: Vec<String> = members.into_iter().map(|i| self.up(i, now)).collect();
                Response::ok(msgs.join("; "))
            }
            Request::Drain {
                name,
                timeout_seconds,
            } => {
                let members = self.named(name);
                if members.is_empty() {
                    return Response::err(format!("no connection named `{name}`"));
                }
                let timeout = timeout_seconds
                    .map(|s| Duration::from_secs(s.clamp(1, 3600)))
                    .unwrap_or(self.drain_cfg.timeout);
                let mut names = Vec::new();
                for &i in &members {
                    names.push(self.conns[i].cfg.name.clone());
                    self.start_drain(i, now, timeout);
                }
                let bgp: Vec<String> = members
                    .iter()
                    .flat_map(|&i| drain_protocols(&self.conns[i].cfg))
                    .map(|(_, p)| p)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                Response::ok(format!(
                    "draining {}: {}static routes de-preferred; DELETE once nothing arrives for {} ms (at most {} s); `hybridgw up NAME` brings it back",
                    names.join(", "),
                    if bgp.is_empty() {
                        String::new()
                    } else {
                        format!("BGP protocol(s) {} disabled, ", bgp.join(", "))
                    },
                    self.drain_cfg.quiet.as_millis(),
                    timeout.as_secs()
                ))
            }
            Request::Down { name } => {
                let Some(i) = find(name) else {
                    return Response::err(format!("no connection named `{name}`"));
                };
                info!(conn = %name, "down requested");
                self.take_down(i, now);
                Response::ok(format!(
                    "{name}: down (SAs deleted, routes removed; `hybridgw up {name}` brings it back)"
                ))
            }
            Request::Rekey { name, child } => {
                let Some(i) = find(name) else {
                    return Response::err(format!("no connection named `{name}`"));
                };
                if let Some(spi) = child {
                    let Ok(spi) = u32::from_str_radix(spi.trim_start_matches("0x"), 16) else {
                        return Response::err(format!(
                            "`{spi}` is not an SPI (the hexadecimal spi_in of `hybridgw status`)"
                        ));
                    };
                    let c = &self.conns[i];
                    if !c.children.iter().any(|ch| ch.in_spi == spi && ch.live()) {
                        return Response::err(format!(
                            "{name}: no Child SA with inbound SPI {spi:08x}"
                        ));
                    }
                    if !self.engine.rekey_spi(now, spi) {
                        return Response::err(format!(
                            "{name}: Child SA {spi:08x} cannot be rekeyed now (a rekey is under way)"
                        ));
                    }
                    info!(conn = %name, spi_in = %format!("{spi:08x}"), "rekey requested");
                    return Response::ok(format!(
                        "{name}: rekeying Child SA {spi:08x} (CREATE_CHILD_SA)"
                    ));
                }
                if !self.engine.rekey(now, name) {
                    return Response::err(format!(
                        "{name}: nothing to rekey (no established Child SA, or a rekey is already under way)"
                    ));
                }
                info!(conn = %name, "rekey requested");
                Response::ok(format!("{name}: rekeying the Child SAs (CREATE_CHILD_SA)"))
            }
        }
    }

    /// The connection named `name`, or every member of the active-active group of that name
    /// (its first member has the group's name, so both are found by it).
    fn named(&self, name: &str) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| {
                let c = &self.conns[i].cfg;
                c.name == name || c.group.as_ref().is_some_and(|g| g.name == name)
            })
            .collect()
    }

    /// `up` for connection `i`: a drain is over, and an initiator initiates now.
    fn up(&mut self, i: usize, now: Instant) -> String {
        if let Some(h) = &self.ha
            && h.role != HaRole::Master
        {
            return format!(
                "{}: this appliance is the HA {}: the partner runs the tunnels (`hybridgw ha master` takes over)",
                self.conns[i].cfg.name,
                h.role.name()
            );
        }
        self.undrain(i);
        let c = &mut self.conns[i];
        let name = c.cfg.name.clone();
        c.stopped = false;
        match c.state_name() {
            "established" | "partial" => {
                return format!("{name} is already {}", c.state_name());
            }
            "connecting" => return format!("{name} is already connecting"),
            _ => {}
        }
        if !c.cfg.behaviour.initiates() {
            return format!("{name} is responder-only: waiting for the peer to initiate");
        }
        c.backoff = c.initial_backoff();
        c.next_attempt = Some(now);
        info!(conn = %name, "up requested");
        format!("{name}: initiating")
    }

    /// Deletes one Child SA (INFORMATIONAL DELETE) of any connection by its inbound SPI; it is
    /// created again after the retry delay while its selectors are configured.
    pub fn delete_child(&mut self, now: Instant, in_spi: u32) -> bool {
        let Some(i) = self
            .conns
            .iter()
            .position(|c| c.children.iter().any(|x| x.in_spi == in_spi && !x.deleting))
        else {
            return false;
        };
        if !self.engine.delete_child(now, in_spi) {
            return false;
        }
        self.retire_child(i, in_spi);
        self.settle(now);
        true
    }

    /// SIGTERM: DELETE for every IKE SA; keep driving until `ike_sa_count()` is 0 (bounded by
    /// the retransmissions), then `finish`.
    ///
    /// With stateful HA no DELETE is sent: the SAs are the pair's, and the partner (master
    /// once keepalived moves the shared address) continues them; they are forgotten here.
    pub fn shutdown(&mut self, now: Instant) {
        if self.ha.is_some() {
            if self.ha_role() == Some(HaRole::Master) {
                info!("stateful HA: stopping without DELETE: the partner continues the SAs");
            }
            self.become_passive(now);
            for c in &mut self.conns {
                c.stopped = true;
            }
            return;
        }
        for c in &mut self.conns {
            c.stopped = true;
            c.next_attempt = None;
        }
        self.engine.shutdown(now);
        self.settle(now);
    }

    /// IKE SAs of any state left in the engine.
    pub fn ike_sa_count(&self) -> usize {
        self.engine.ike_sa_count()
    }

    /// After `shutdown`: every SA, keepalive and route goes.
    pub fn finish(&mut self) {
        for i in 0..self.conns.len() {
            self.stop_conn(i);
        }
        self.sync_routes();
    }

    /// Connection `i` holds nothing any more and does not initiate: every SA goes (its routes
    /// with the next route sync).
    fn stop_conn(&mut self, i: usize) {
        self.drop_all_children(i);
        let c = &mut self.conns[i];
        c.ike.clear();
        c.connecting = None;
        c.requests.clear();
        c.stopped = true;
        c.next_attempt = None;
        let tunnel = c.tunnel;
        self.commands.push_back(Command::ClearTunnel { tunnel });
    }

    // ------------------------------------------------------------------ the work

    /// Takes every event the engine has, then brings each connection to what it should be.
    fn settle(&mut self, now: Instant) {
        self.now = now;
        for _ in 0..64 {
            let mut progress = false;
            while let Some((ev, algs)) = self.engine.poll_event() {
                progress = true;
                self.on_event(now, ev, algs);
            }
            self.reconcile(now);
            if !progress {
                break;
            }
        }
        // The IKE SAs' state goes to the backup before the datagrams this step produced
        // leave (the daemon sends replication first).
        if let Some(m) = self.ha.as_mut().and_then(|h| h.master.as_mut()) {
            let states = self.engine.export_ike_sas(now);
            m.sync(now, &states);
        }
    }

    fn conn_index(&self, name: &str) -> Option<usize> {
        self.conns.iter().position(|c| c.cfg.name == name)
    }

    fn on_event(&mut self, now: Instant, ev: Event, algs: Option<[String; 4]>) {
        match ev {
            Event::IkeSaEstablished {
                conn,
                id,
                initiator,
                ispi,
                rspi,
                local,
                remote,
                started,
                initial_contact,
            } => {
                let Some(i) = self.conn_index(&conn) else {
                    return;
                };
                let algs = algs.unwrap_or_default();
                info!(
                    conn = %conn,
                    role = if initiator { "initiator" } else { "responder" },
                    spi_i = %format!("{ispi:016x}"),
                    spi_r = %format!("{rspi:016x}"),
                    alg = %algs.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join("/"),
                    %remote,
                    "IKE SA established"
                );
                let c = &mut self.conns[i];
                if c.connecting == Some(id) {
                    c.connecting = None;
                }
                if c.stopped {
                    // `down` stops our side from initiating; a peer that initiates again is
                    // answered, and the connection is up again (as with strongSwan's
                    // `--terminate`).
                    info!(conn = %conn, "the peer initiated: the connection is up again");
                    c.stopped = false;
                }
                c.next_attempt = None;
                c.backoff = c.initial_backoff();
                let mut new = Ike {
                    id,
                    initiator,
                    spi_i: ispi,
                    spi_r: rspi,
                    local,
                    remote,
                    algs,
                    since: now,
                    started,
                    initial_contact,
                    requests_after: if initiator {
                        now
                    } else {
                        now + RESPONDER_GRACE
                    },
                    redundant: None,
                    deleting: false,
                };
                let c = &mut self.conns[i];
                Self::uniqueness(c, &mut new, now);
                c.ike.push(new);
            }
            Event::IkeSaFailed { conn, id, reason } => {
                let text = engine::fail_text(&reason);
                let Some(i) = self.conn_index(&conn) else {
                    warn!("IKE negotiation failed: {text}");
                    return;
                };
                let c = &mut self.conns[i];
                let was_up = c.ike.iter().any(|x| x.id == id);
                let ours = c.connecting == Some(id);
                if !was_up && !ours {
                    // A half-open or refused setup started by the peer.
                    warn!(conn = %conn, "IKE SA setup by the peer failed: {text}");
                    c.last_error = Some(text);
                    return;
                }
                if ours {
                    c.connecting = None;
                }
                c.requests.retain(|r| r.ike != id);
                if was_up {
                    warn!(conn = %conn, "IKE SA lost: {text}");
                    c.last_error = Some(format!("IKE SA lost: {text}"));
                    self.ike_gone(i, id, now, true);
                } else {
                    warn!(conn = %conn, attempt = c.attempts, "connection failed: {text}");
                    c.last_error = Some(text);
                    if c.ike.is_empty() {
                        self.schedule_retry(i, now);
                    }
                }
            }
            Event::IkeSaDeleted { conn, id } => {
                let Some(i) = self.conn_index(&conn) else {
                    return;
                };
                let c = &mut self.conns[i];
                if c.connecting == Some(id) {
                    c.connecting = None;
                }
                c.requests.retain(|r| r.ike != id);
                if c.ike.iter().any(|x| x.id == id) {
                    info!(conn = %conn, spi = %format!("{:016x}", id.0), "IKE SA deleted");
                    self.ike_gone(i, id, now, false);
                }
            }
            Event::IkeSaRekeyed {
                conn,
                old,
                new,
                ispi,
                rspi,
            } => {
                let Some(i) = self.conn_index(&conn) else {
                    return;
                };
                info!(conn = %conn, spi_i = %format!("{ispi:016x}"), spi_r = %format!("{rspi:016x}"), "IKE SA rekeyed");
                let c = &mut self.conns[i];
                if let Some(x) = c.ike_mut(old) {
                    x.id = new;
                    x.spi_i = ispi;
                    x.spi_r = rspi;
                    x.since = now;
                }
                for ch in &mut c.children {
                    if ch.ike == old {
                        ch.ike = new;
                    }
                }
                for r in &mut c.requests {
                    if r.ike == old {
                        r.ike = new;
                    }
                }
                for x in &mut c.ike {
                    if let Some(r) = x.redundant.as_mut()
                        && r.0 == old
                    {
                        r.0 = new;
                    }
                }
            }
            Event::ChildSaEstablished(child) => self.child_up(now, child, None, false),
            Event::ChildSaRekeyed {
                old_inbound_spi,
                new,
                outbound_now,
                ..
            } => self.child_up(now, new, Some(old_inbound_spi), outbound_now),
            Event::ChildSaFailed {
                conn,
                id,
                reason,
                initiator,
                local_ts,
                remote_ts,
            } => {
                let Some(i) = self.conn_index(&conn) else {
                    return;
                };
                let text = engine::fail_text(&reason);
                let c = &mut self.conns[i];
                if !initiator {
                    warn!(conn = %conn, local_ts = %ts_list(&local_ts), remote_ts = %ts_list(&remote_ts), "refused the peer's Child SA: {text}");
                    c.last_error = Some(format!("refused the peer's Child SA: {text}"));
                    return;
                }
                let pos = c
                    .requests
                    .iter()
                    .position(|r| r.ike == id && r.local == local_ts && r.remote == remote_ts)
                    .or_else(|| c.requests.iter().position(|r| r.ike == id));
                let pairs = pos.map(|p| c.requests.remove(p).pairs).unwrap_or_default();
                let temporary = matches!(reason, FailReason::PeerError(n) if n == ike::wire::NotifyType::TEMPORARY_FAILURE);
                let mut next = None;
                for p in pairs {
                    let wait = if temporary {
                        c.initial_backoff()
                    } else {
                        let b = c.pair_backoff[p];
                        c.pair_backoff[p] = (b * 2).min(c.max_backoff());
                        b
                    };
                    c.pair_next[p] = Some(now + wait);
                    next = Some(wait);
                }
                let wait = next.map_or(String::new(), |w| {
                    format!("; next attempt in {} s", w.as_secs())
                });
                warn!(conn = %conn, local_ts = %ts_list(&local_ts), remote_ts = %ts_list(&remote_ts), "Child SA not established: {text}{wait}");
                c.last_error = Some(format!(
                    "Child SA {} === {} refused: {text}",
                    ts_list(&local_ts),
                    ts_list(&remote_ts)
                ));
            }
            Event::ChildSaDeleted {
                conn,
                inbound_spi,
                outbound_spi,
                ..
            } => {
                let Some(i) = self.conn_index(&conn) else {
                    return;
                };
                if self.remove_child(i, inbound_spi) {
                    info!(conn = %conn, spi_in = %format!("{inbound_spi:08x}"), spi_out = %format!("{outbound_spi:08x}"), "Child SA deleted");
                    // Pairs it left uncovered are asked for again after the retry delay.
                    let c = &mut self.conns[i];
                    for p in 0..c.pairs.len() {
                        if !c.carried(p) && c.pair_next[p].is_none() {
                            c.pair_next[p] = Some(now + c.pair_backoff[p]);
                        }
                    }
                }
            }
            Event::IkeSaImported {
                conn,
                id,
                initiator,
                ispi,
                rspi,
                local,
                remote,
                started,
                initial_contact,
                ..
            } => {
                let Some(i) = self.conn_index(&conn) else {
                    return;
                };
                let c = &mut self.conns[i];
                c.connecting = None;
                c.stopped = false;
                c.next_attempt = None;
                c.backoff = c.initial_backoff();
                c.ike.push(Ike {
                    id,
                    initiator,
                    spi_i: ispi,
                    spi_r: rspi,
                    local,
                    remote,
                    algs: algs.unwrap_or_default(),
                    since: now,
                    started,
                    initial_contact,
                    requests_after: now + RESPONDER_GRACE,
                    redundant: None,
                    deleting: false,
                });
            }
            other => debug!("IKE event not handled: {other:?}"),
        }
    }

    // ------------------------------------------------------------------ stateful HA

    /// Not master of an HA pair: IKE is ignored and nothing is initiated.
    fn ha_passive(&self) -> bool {
        self.ha.as_ref().is_some_and(|h| h.role != HaRole::Master)
    }

    /// The HA role, if `[ha]` is configured.
    pub fn ha_role(&self) -> Option<HaRole> {
        self.ha.as_ref().map(|h| h.role)
    }

    /// The partner's replication address.
    pub fn ha_peer(&self) -> Option<SocketAddr> {
        self.ha.as_ref().map(|h| h.cfg.peer)
    }

    /// A datagram on the replication socket from `from`. As backup it is opened and applied
    /// (refusals are counted); as master it is ignored (a partner that is master too sends
    /// replication until keepalived settles).
    pub fn ha_receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(h) = self.ha.as_mut() else { return };
        if from.ip() != h.cfg.peer.ip() {
            h.wrong_source += 1;
            return;
        }
        if h.role == HaRole::Master {
            return;
        }
        if let Err(e) = h.standby.receive(now, data) {
            debug!("HA: replication datagram refused: {e}");
        }
    }

    /// The next sealed datagram for the partner (send these before `poll_transmit`'s).
    pub fn poll_ha_datagram(&mut self) -> Option<Vec<u8>> {
        self.ha.as_mut()?.master.as_mut()?.poll_datagram()
    }

    /// As master: when sequence-number marks are next due. Not part of
    /// [`Supervisor::poll_timeout`]: marks read only the data plane, so their 20 ms cadence
    /// must not run the engine's timers and export every IKE SA each time.
    pub fn ha_marks_at(&self) -> Option<Instant> {
        self.ha
            .as_ref()
            .and_then(|h| h.master.as_ref())
            .map(|m| m.marks_at())
    }

    /// As master: whether sequence-number marks are due.
    pub fn ha_marks_due(&self, now: Instant) -> bool {
        self.ha
            .as_ref()
            .and_then(|h| h.master.as_ref())
            .is_some_and(|m| m.marks_due(now))
    }

    /// As master: marks from the data plane's counters and inbound windows.
    pub fn ha_marks(
        &mut self,
        now: Instant,
        snap: &Snapshot,
        window: &dyn Fn(TunnelId, u32) -> Option<esp::WindowState>,
    ) {
        if let Some(m) = self.ha.as_mut().and_then(|h| h.master.as_mut()) {
            m.marks(now, snap, window);
        }
    }

    /// keepalived's notify (or an operator): become `role`. To master: the replicated SAs
    /// are continued (imported into the IKE endpoint and installed with their sequence numbers
    /// and windows); a connection without a usable replica starts a fresh IKE SA (with
    /// INITIAL_CONTACT, so the peer drops the old one); replication to the partner starts
    /// under `epoch` (larger at every start). To backup or fault: every SA is forgotten
    /// without a DELETE (the partner continues them) and its routes go. The answer says what
    /// was done.
    pub fn set_ha_role(&mut self, now: Instant, role: HaRole, epoch: u64) -> Response {
        let Some(h) = self.ha.as_ref() else {
            return Response::err("stateful HA is not configured ([ha])");
        };
        let was = h.role;
        if was == role {
            return Response::ok(format!("already {}", role.name()));
        }
        let r = match role {
            HaRole::Master => self.become_master(now, epoch),
            HaRole::Backup | HaRole::Fault => {
                self.become_passive(now);
                Response::ok(format!(
                    "{}: SAs left to the partner, replication received",
                    role.name()
                ))
            }
        };
        if let Some(h) = self.ha.as_mut() {
            h.role = role;
            h.since = now;
        }
        info!(from = was.name(), to = role.name(), "HA role changed");
        self.settle(now);
        r
    }

    fn become_passive(&mut self, _now: Instant) {
        let ids: Vec<IkeSaId> = self
            .conns
            .iter()
            .flat_map(|c| c.ike.iter().map(|x| x.id).chain(c.connecting))
            .collect();
        for id in ids {
            self.engine.forget_ike_sa(id);
        }
        for i in 0..self.conns.len() {
            self.drop_all_children(i);
            let c = &mut self.conns[i];
            c.ike.clear();
            c.connecting = None;
            c.requests.clear();
            c.next_attempt = None;
            let tunnel = c.tunnel;
            self.commands.push_back(Command::ClearTunnel { tunnel });
        }
        if let Some(h) = self.ha.as_mut() {
            h.master = None;
            h.standby.clear();
        }
        self.sync_routes();
    }

    fn become_master(&mut self, now: Instant, epoch: u64) -> Response {
        let Some(h) = self.ha.as_mut() else {
            return Response::err("stateful HA is not configured ([ha])");
        };
        let plan = h.standby.plan(now, h.cfg.seq_skip);
        h.standby.clear();
        let master = match crate::replication::Master::new(&h.cfg, epoch, now) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("HA: replication to the partner not started: {e}");
                None
            }
        };
        h.master = master;
        let mut report = Takeover {
            at: now,
            in_sync: plan.in_sync,
            lag: plan.lag,
            ike_continued: 0,
            child_installed: 0,
            fresh: Vec::new(),
        };
        if !plan.in_sync {
            warn!(
                lag_ms = plan.lag.map(|l| l.as_millis() as u64),
                "HA takeover: the replica is not in sync with the former master: every connection starts a fresh IKE SA (INITIAL_CONTACT)"
            );
        }
        let mut continued: BTreeSet<usize> = BTreeSet::new();
        for ip in plan.ike {
            let name = ip.state.conn.clone();
            let Some(i) = self.conn_index(&name) else {
                report.fresh.push(format!("{name}: not configured here"));
                continue;
            };
            let spi = ip.state.id();
            match self.engine.import_ike_sa(now, ip.state) {
                Ok(id) => {
                    report.ike_continued += 1;
                    continued.insert(i);
                    info!(conn = %name, spi = %format!("{:016x}", spi.0), children = ip.children.len(), "HA takeover: IKE SA continued");
                    for ch in ip.children {
                        if self.import_child(now, i, id, ch) {
                            report.child_installed += 1;
                        }
                    }
                }
                Err(e) => {
                    warn!(conn = %name, "HA takeover: IKE SA not continued ({e}): a fresh IKE SA with INITIAL_CONTACT follows");
                    report.fresh.push(format!("{name}: {e}"));
                }
            }
        }
        for i in 0..self.conns.len() {
            if continued.contains(&i) {
                continue;
            }
            let c = &mut self.conns[i];
            if c.cfg.behaviour.initiates() && !c.stopped {
                if plan.in_sync
                    && !report
                        .fresh
                        .iter()
                        .any(|f| f.starts_with(&format!("{}:", c.cfg.name)))
                {
                    report
                        .fresh
                        .push(format!("{}: no replicated IKE SA", c.cfg.name));
                }
                c.next_attempt = Some(now);
            }
        }
        if !plan.in_sync {
            report.fresh = self
                .conns
                .iter()
                .map(|c| format!("{}: replica not in sync", c.cfg.name))
                .collect();
        }
        let msg = format!(
            "master: {} IKE SA(s) and {} Child SA(s) continued{}",
            report.ike_continued,
            report.child_installed,
            if report.fresh.is_empty() {
                String::new()
            } else {
                format!("; fresh IKE SA for {}", report.fresh.join("; "))
            }
        );
        info!("HA takeover: {msg}");
        if let Some(h) = self.ha.as_mut() {
            h.last_takeover = Some(report);
        }
        Response::ok(msg)
    }

    /// Installs one Child SA taken over from the partner; false if it was not.
    fn import_child(
        &mut self,
        now: Instant,
        i: usize,
        ike: IkeSaId,
        ch: crate::replication::ChildPlan,
    ) -> bool {
        let c = &mut self.conns[i];
        let tunnel = c.tunnel;
        let sa = ch.sa;
        let mut info = engine::child_info(&sa);
        info.since = now;
        // The new master replicates it on to the partner in turn.
        if let Some(m) = self.ha.as_mut().and_then(|h| h.master.as_mut()) {
            m.child_up(&sa, tunnel);
        }
        self.commands.push_back(Command::InstallInbound {
            conn: i,
            tunnel,
            child: sa.clone(),
            window: Some(ch.window),
        });
        let c = &mut self.conns[i];
        let taken = c.children.iter().any(|x| {
            matches!(x.out, Out::Current)
                && x.live()
                && c.same_selectors(x, &sa.local_ts, &sa.remote_ts)
        });
        let active = matches!(ch.status, ike::ChildSaStatus::Active) && ch.reported;
        let out = match ch.next_seq {
            Some(n) if active && !taken => {
                self.commands.push_back(Command::InstallOutbound {
                    conn: i,
                    tunnel,
                    child: sa.clone(),
                    next_seq: Some(n),
                });
                Out::Current
            }
            Some(_) if active => Out::Standby(sa.clone()),
            _ => Out::Retired,
        };
        if ch.next_seq.is_none() {
            warn!(conn = %sa.conn, spi_in = %format!("{:08x}", sa.inbound_spi), "HA takeover: the Child SA's sequence numbers are used up: rekeying it");
            self.engine.rekey_spi(now, sa.inbound_spi);
        }
        let c = &mut self.conns[i];
        let child = Child {
            ike,
            in_spi: sa.inbound_spi,
            out_spi: sa.outbound_spi,
            local_ts: sa.local_ts.clone(),
            remote_ts: sa.remote_ts.clone(),
            info,
            out,
            replaces: None,
            deleting: matches!(ch.status, ike::ChildSaStatus::Deleting),
            seen_packets: 0,
            first_seq: ch.next_seq,
        };
        for p in 0..c.pairs.len() {
            if c.child_covers(&child, p) {
                c.pair_next[p] = None;
            }
        }
        c.children.push(child);
        if sa.udp_encap {
            c.keepalive_on = false;
        }
        true
    }

    /// `status` of stateful HA.
    pub fn ha_status(&self, now: Instant) -> Option<crate::control::HaStatus> {
        let h = self.ha.as_ref()?;
        let st = h.standby.status(now);
        let mut refused = st.refused.clone();
        if h.wrong_source > 0 {
            refused.insert("wrong_source".into(), h.wrong_source);
        }
        let sent = h
            .master
            .as_ref()
            .map(|m| {
                let c = m.counters();
                [
                    ("datagrams", c.datagrams),
                    ("snapshots", c.snapshots),
                    ("ike_upserts", c.ike_upserts),
                    ("child_upserts", c.child_upserts),
                    ("removals", c.removals),
                    ("marks", c.marks),
                    ("seal_errors", c.seal_errors),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            })
            .unwrap_or_default();
        Some(crate::control::HaStatus {
            role: h.role.name().into(),
            role_seconds: now.saturating_duration_since(h.since).as_secs(),
            peer: h.cfg.peer.to_string(),
            in_sync: st.in_sync,
            lag_ms: st.lag_ms,
            standby_ike_sas: st.ike_sas,
            standby_child_sas: st.child_sas,
            accepted: st.accepted,
            refused,
            not_applied: st.not_applied,
            ike_ignored: h.ike_ignored,
            sent,
            last_takeover: h
                .last_takeover
                .as_ref()
                .map(|t| crate::control::TakeoverStatus {
                    seconds_ago: now.saturating_duration_since(t.at).as_secs(),
                    in_sync: t.in_sync,
                    lag_ms: t.lag.map(|l| l.as_millis() as u64),
                    ike_continued: t.ike_continued,
                    child_installed: t.child_installed,
                    fresh: t.fresh.clone(),
                }),
        })
    }

    /// A new Child SA (`replaces`: the one a rekey replaces; `outbound_now`: we completed that
    /// rekey ourselves, so traffic moves at once).
    fn child_up(
        &mut self,
        now: Instant,
        sa: Box<ChildSa>,
        replaces: Option<u32>,
        outbound_now: bool,
    ) {
        let Some(i) = self.conn_index(&sa.conn) else {
            warn!(conn = %sa.conn, "Child SA for an unknown connection ignored");
            return;
        };
        let mut info = engine::child_info(&sa);
        info.since = now;
        let c = &mut self.conns[i];
        if c.stopped {
            return;
        }
        let tunnel = c.tunnel;
        if let Some(m) = self.ha.as_mut().and_then(|h| h.master.as_mut()) {
            m.child_up(&sa, tunnel);
        }
        let c = &mut self.conns[i];
        self.commands.push_back(Command::InstallInbound {
            conn: i,
            tunnel,
            child: sa.clone(),
            window: None,
        });
        // Who carries these selectors now.
        let current = c.children.iter().position(|x| {
            matches!(x.out, Out::Current)
                && x.live()
                && c.same_selectors(x, &sa.local_ts, &sa.remote_ts)
        });
        let old = replaces.and_then(|r| c.children.iter().position(|x| x.in_spi == r));
        let old_carries = old.map(|o| matches!(c.children[o].out, Out::Current));
        let carry = match (replaces, outbound_now) {
            (Some(r), true) => {
                // Our own rekey of `r` completed: traffic moves now (unless `r` was only standing
                // by). A new SA still waiting from the peer's colliding rekey of the same SA
                // belongs to the redundant pair (RFC 7296 §2.8.1) and must never take over.
                for x in c.children.iter_mut() {
                    if x.replaces == Some(r) && matches!(x.out, Out::Standby(_)) {
                        x.out = Out::Retired;
                    }
                }
                let was_standby = old.is_some_and(|o| matches!(c.children[o].out, Out::Standby(_)));
                if let Some(o) = old {
                    c.children[o].out = Out::Retired;
                }
                !was_standby
            }
            // The peer rekeyed an SA that carries traffic: it moves when the peer deletes it.
            (Some(_), false) if old_carries == Some(true) => false,
            _ => {
                if let Some(o) = old {
                    c.children[o].out = Out::Retired;
                }
                current.is_none()
            }
        };
        let out = if carry {
            self.commands.push_back(Command::InstallOutbound {
                conn: i,
                tunnel,
                child: sa.clone(),
                next_seq: None,
            });
            Out::Current
        } else {
            Out::Standby(sa.clone())
        };
        let state = match &out {
            Out::Current => "carrying traffic",
            Out::Standby(_) => "standing by",
            Out::Retired => "retired",
        };
        let alg = [info.encryption.as_str(), &info.integrity]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        match replaces {
            Some(old) => info!(
                conn = %sa.conn,
                old_spi_in = %format!("{old:08x}"),
                spi_in = %format!("{:08x}", sa.inbound_spi),
                spi_out = %format!("{:08x}", sa.outbound_spi),
                outbound = if outbound_now { "now" } else { "after the peer deletes the old SA" },
                "Child SA rekeyed"
            ),
            None => info!(
                conn = %sa.conn,
                spi_in = %format!("{:08x}", sa.inbound_spi),
                spi_out = %format!("{:08x}", sa.outbound_spi),
                %alg,
                encap = info.encap,
                local_ts = %info.local_ts.join(","),
                remote_ts = %info.remote_ts.join(","),
                "Child SA established and installed, {state}"
            ),
        }
        let child = Child {
            ike: sa.ike_sa,
            in_spi: sa.inbound_spi,
            out_spi: sa.outbound_spi,
            local_ts: sa.local_ts.clone(),
            remote_ts: sa.remote_ts.clone(),
            info,
            out,
            replaces: if outbound_now { None } else { replaces },
            deleting: false,
            seen_packets: 0,
            first_seq: None,
        };
        // An answer to one of our requests.
        if sa.initiator && replaces.is_none() {
            let pos = c.requests.iter().position(|r| {
                r.ike == sa.ike_sa
                    && ike::ts::acceptable_reply(&ike::ts::proposed(&r.local), &sa.local_ts)
                    && ike::ts::acceptable_reply(&ike::ts::proposed(&r.remote), &sa.remote_ts)
            });
            if let Some(p) = pos {
                c.requests.remove(p);
            }
        }
        for p in 0..c.pairs.len() {
            if c.child_covers(&child, p) {
                c.pair_next[p] = None;
                c.pair_backoff[p] = c.initial_backoff();
            }
        }
        c.children.push(child);
        if c.missing().is_empty() {
            c.last_error = None;
        }
    }

    /// The stand-by that takes over the selectors of `gone` (the SA replacing it in a rekey the
    /// peer started first, else the newest duplicate).
    fn successor(c: &Conn, gone: &Child) -> Option<usize> {
        let same = |x: &Child| {
            x.in_spi != gone.in_spi
                && !x.deleting
                && matches!(x.out, Out::Standby(_))
                && c.same_selectors(x, &gone.local_ts, &gone.remote_ts)
        };
        c.children
            .iter()
            .position(|x| same(x) && x.replaces == Some(gone.in_spi))
            .or_else(|| {
                c.children
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| same(x))
                    .max_by_key(|(_, x)| x.info.since)
                    .map(|(k, _)| k)
            })
    }

    /// Makes stand-by `k` carry its selectors (installed over the current entry: no gap).
    fn promote(&mut self, i: usize, k: usize) -> Option<u32> {
        let c = &mut self.conns[i];
        let tunnel = c.tunnel;
        let Out::Standby(sa) = std::mem::replace(&mut c.children[k].out, Out::Current) else {
            return None;
        };
        let rekeyed = c.children[k].replaces.take().is_some();
        info!(
            conn = %c.cfg.name,
            spi_in = %format!("{:08x}", sa.inbound_spi),
            spi_out = %format!("{:08x}", sa.outbound_spi),
            "outbound traffic moved to the {} Child SA",
            if rekeyed { "rekeyed" } else { "stand-by" }
        );
        let out = sa.outbound_spi;
        let next_seq = c.children[k].first_seq;
        self.commands.push_back(Command::InstallOutbound {
            conn: i,
            tunnel,
            child: sa,
            next_seq,
        });
        Some(out)
    }

    /// Our DELETE for this Child SA (or its IKE SA) is out: traffic leaves it now if a stand-by
    /// can take it; its inbound SA stays until the DELETE completes.
    fn retire_child(&mut self, i: usize, in_spi: u32) {
        let c = &mut self.conns[i];
        let Some(pos) = c.children.iter().position(|x| x.in_spi == in_spi) else {
            return;
        };
        c.children[pos].deleting = true;
        if !matches!(c.children[pos].out, Out::Current) {
            return;
        }
        let tunnel = c.tunnel;
        let out_spi = c.children[pos].out_spi;
        match Self::successor(c, &c.children[pos]) {
            Some(k) => {
                self.promote(i, k);
            }
            // Nothing takes over: stop sending on it (the peer closes it on our DELETE, RFC
            // 7296 §1.4.1, so what we sent would be dropped there).
            None => self.commands.push_back(Command::Remove {
                tunnel,
                direction: Direction::Outbound,
                spi: out_spi,
            }),
        }
        self.conns[i].children[pos].out = Out::Retired;
    }

    /// Forgets a Child SA: its SAs go, and a stand-by takes over its selectors. False if unknown.
    fn remove_child(&mut self, i: usize, in_spi: u32) -> bool {
        let c = &mut self.conns[i];
        let Some(pos) = c.children.iter().position(|x| x.in_spi == in_spi) else {
            return false;
        };
        let gone = c.children.remove(pos);
        let tunnel = c.tunnel;
        self.commands.push_back(Command::Remove {
            tunnel,
            direction: Direction::Inbound,
            spi: gone.in_spi,
        });
        if matches!(gone.out, Out::Current) {
            let next = Self::successor(&self.conns[i], &gone).and_then(|k| self.promote(i, k));
            // Removal is by SPI: after a takeover with another SPI the old entry is gone
            // already (replaced) and this removes nothing.
            if next != Some(gone.out_spi) {
                self.commands.push_back(Command::Remove {
                    tunnel,
                    direction: Direction::Outbound,
                    spi: gone.out_spi,
                });
            }
        }
        for x in self.conns[i].children.iter_mut() {
            if x.replaces == Some(gone.in_spi) {
                x.replaces = None;
            }
        }
        true
    }

    fn drop_all_children(&mut self, i: usize) {
        let spis: Vec<u32> = self.conns[i].children.iter().map(|c| c.in_spi).collect();
        for s in spis {
            self.remove_child(i, s);
        }
    }

    /// Inbound SPIs of the Child SAs of IKE SA `id`.
    fn children_of(&self, i: usize, id: IkeSaId) -> Vec<u32> {
        self.conns[i]
            .children
            .iter()
            .filter(|c| c.ike == id)
            .map(|c| c.in_spi)
            .collect()
    }

    /// An IKE SA is gone (lost: `lost` true; deleted otherwise) with its Child SAs.
    fn ike_gone(&mut self, i: usize, id: IkeSaId, now: Instant, lost: bool) {
        for s in self.children_of(i, id) {
            self.remove_child(i, s);
        }
        let c = &mut self.conns[i];
        c.ike.retain(|x| x.id != id);
        for x in &mut c.ike {
            if x.redundant.is_some_and(|r| r.0 == id) {
                x.redundant = None;
            }
        }
        if !c.ike.is_empty() || c.connecting.is_some() {
            return;
        }
        // The connection is down.
        let tunnel = c.tunnel;
        self.commands.push_back(Command::ClearTunnel { tunnel });
        c.keepalive_on = false;
        c.requests.clear();
        if c.stopped {
            return;
        }
        if lost {
            match c.cfg.dpd.action {
                DpdAction::Restart => {
                    c.backoff = c.initial_backoff();
                    self.schedule_retry(i, now);
                }
                DpdAction::Clear | DpdAction::Hold => {
                    info!(conn = %c.cfg.name, action = ?c.cfg.dpd.action, "peer dead: waiting for the peer (or `hybridgw up`)");
                    c.next_attempt = None;
                }
            }
        } else {
            self.schedule_retry(i, now);
        }
    }

    /// One failure, one schedule: the next IKE attempt after the current backoff, which then
    /// doubles (up to `retry.max_seconds`). Responder-only connections wait for the peer.
    fn schedule_retry(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        if !c.cfg.behaviour.initiates() || c.stopped {
            c.next_attempt = None;
            return;
        }
        let wait = c.backoff;
        c.next_attempt = Some(now + wait);
        c.backoff = (c.backoff * 2).min(c.max_backoff());
        info!(conn = %c.cfg.name, "next attempt in {} s", wait.as_secs());
    }

    /// A second IKE SA of the connection comes up (`new`, not yet in the list): which goes.
    fn uniqueness(c: &mut Conn, new: &mut Ike, now: Instant) {
        let unique = c.cfg.unique;
        let name = c.cfg.name.clone();
        for old in c.ike.iter_mut().filter(|x| !x.deleting) {
            // Setups that crossed: both sides initiated at the same moment (Azure's "Default"
            // connection mode does so whenever both start together). `loses_crossing_to` is a
            // rule both sides apply with what both know.
            let crossed = old.initiator != new.initiator && new.started <= old.since;
            if crossed {
                let why = "duplicate of a crossing setup";
                if old.loses_crossing_to(new) {
                    info!(conn = %name, spi = %format!("{:016x}", old.id.0), "IKE SA setups crossed: the older one is the duplicate");
                    old.redundant = Some((new.id, now + REPLACE_WAIT, why));
                } else if new.redundant.is_none() {
                    info!(conn = %name, spi = %format!("{:016x}", new.id.0), "IKE SA setups crossed: the new one is the duplicate");
                    new.redundant = Some((old.id, now + REPLACE_WAIT, why));
                }
                continue;
            }
            match unique {
                Unique::Replace => {
                    info!(conn = %name, old = %format!("{:016x}", old.id.0), new = %format!("{:016x}", new.id.0), "a new IKE SA with the same identities replaces the old one (unique = replace)");
                    old.redundant =
                        Some((new.id, now + REPLACE_WAIT, "replaced (unique = replace)"));
                }
                Unique::Keep => {
                    if new.redundant.is_none() {
                        info!(conn = %name, spi = %format!("{:016x}", new.id.0), "an IKE SA with these identities exists: the new one goes (unique = keep)");
                        new.redundant = Some((
                            old.id,
                            now,
                            "an IKE SA with these identities exists (unique = keep)",
                        ));
                    }
                }
                Unique::Never => {}
            }
        }
    }

    /// Everything each connection should do now, given what is known.
    fn reconcile(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            self.start_due(i, now);
            self.delete_redundant(i, now);
            self.dedupe_children(i, now);
            self.request_missing(i, now);
            self.keepalive(i);
        }
        self.drain_step(now);
        self.sync_routes();
    }

    fn start_due(&mut self, i: usize, now: Instant) {
        if self.ha_passive() {
            return;
        }
        let c = &mut self.conns[i];
        let Some(t) = c.next_attempt else { return };
        if t > now || c.stopped || c.connecting.is_some() {
            return;
        }
        c.next_attempt = None;
        c.attempts += 1;
        info!(conn = %c.cfg.name, attempt = c.attempts, peer = %c.cfg.remote_address, "initiating");
        let name = c.cfg.name.clone();
        match self.engine.initiate(now, &name) {
            Ok(id) => {
                let c = &mut self.conns[i];
                c.connecting = Some(id);
                // IKE_AUTH carries the first Child SA: the first pair (or all of them), as
                // `engine::connection_config` proposes it.
                let pairs: Vec<usize> = if c.per_pair() {
                    vec![0]
                } else {
                    (0..c.pairs.len()).collect()
                };
                let (local, remote) = c.selectors_of(&pairs);
                c.requests.push(ChildRequest {
                    ike: id,
                    pairs,
                    local,
                    remote,
                });
            }
            Err(e) => {
                warn!(conn = %name, "cannot initiate: {e}");
                self.conns[i].last_error = Some(e);
                self.schedule_retry(i, now);
            }
        }
    }

    /// Deletes duplicate IKE SAs whose survivor now covers what they covered (or at their
    /// deadline).
    fn delete_redundant(&mut self, i: usize, now: Instant) {
        let c = &self.conns[i];
        let mut go = Vec::new();
        for x in c.ike.iter().filter(|x| !x.deleting) {
            let Some((survivor, deadline, why)) = x.redundant else {
                continue;
            };
            if !c.ike.iter().any(|s| s.id == survivor && !s.deleting) {
                continue;
            }
            let covered = (0..c.pairs.len())
                .filter(|&p| c.covered_on(x.id, p))
                .all(|p| c.covered_on(survivor, p));
            if covered || deadline <= now {
                go.push((x.id, why));
            }
        }
        for (id, why) in go {
            let name = self.conns[i].cfg.name.clone();
            if self.engine.close_ike(now, id) {
                info!(conn = %name, spi = %format!("{:016x}", id.0), "deleting IKE SA: {why}");
                if let Some(x) = self.conns[i].ike_mut(id) {
                    x.deleting = true;
                }
                self.conns[i].requests.retain(|r| r.ike != id);
                // Traffic leaves its Child SAs now (the survivor's stand-bys take over); their
                // inbound SAs stay until the DELETE completes.
                for s in self.children_of(i, id) {
                    self.retire_child(i, s);
                }
            } else if let Some(x) = self.conns[i].ike_mut(id)
                && let Some(r) = x.redundant.as_mut()
            {
                // Its request window is busy: try again shortly.
                r.1 = now + Duration::from_secs(1);
            }
        }
    }

    /// Two Child SAs of one IKE SA with the same selectors and no rekey between them (both
    /// sides asked for the same pair at once): the one with the lower SPI goes, a rule both
    /// sides apply.
    fn dedupe_children(&mut self, i: usize, now: Instant) {
        let c = &self.conns[i];
        let settled = |x: &Child| now.saturating_duration_since(x.info.since) >= DEDUPE_DELAY;
        let mut go = Vec::new();
        for a in c.children.iter().filter(|x| x.live() && settled(x)) {
            let related =
                |x: &Child, y: &Child| x.replaces == Some(y.in_spi) || y.replaces == Some(x.in_spi);
            let dup = c.children.iter().any(|b| {
                b.in_spi != a.in_spi
                    && b.live()
                    && settled(b)
                    && b.ike == a.ike
                    && c.same_selectors(b, &a.local_ts, &a.remote_ts)
                    && !related(a, b)
                    && b.score() > a.score()
            });
            if dup {
                go.push(a.in_spi);
            }
        }
        for spi in go {
            if self.engine.delete_child(now, spi) {
                info!(conn = %self.conns[i].cfg.name, spi_in = %format!("{spi:08x}"), "deleting a duplicate Child SA");
                self.retire_child(i, spi);
            }
        }
    }

    /// Asks for every configured pair that has no Child SA on the primary IKE SA.
    fn request_missing(&mut self, i: usize, now: Instant) {
        let c = &self.conns[i];
        if c.stopped {
            return;
        }
        let Some(p) = c.primary() else { return };
        if p.requests_after > now {
            return;
        }
        let ike = p.id;
        let requested = |k: usize| c.requests.iter().any(|r| r.pairs.contains(&k));
        // A pair whose Child SA we are deleting is asked for again once the DELETE is done
        // (after the retry delay), not while it goes.
        let going = |k: usize| {
            c.children
                .iter()
                .any(|x| x.deleting && c.child_covers(x, k))
        };
        let want: Vec<usize> = (0..c.pairs.len())
            .filter(|&k| {
                !c.covered_on(ike, k)
                    && !requested(k)
                    && !going(k)
                    && c.pair_next[k].is_none_or(|t| t <= now)
            })
            .collect();
        if want.is_empty() {
            return;
        }
        let batches: Vec<Vec<usize>> = if c.per_pair() || !c.policy_based() {
            want.into_iter().map(|k| vec![k]).collect()
        } else {
            vec![want]
        };
        for pairs in batches {
            let c = &self.conns[i];
            let (local, remote) = c.selectors_of(&pairs);
            let labels: Vec<&str> = pairs.iter().map(|&k| c.pairs[k].label.as_str()).collect();
            info!(conn = %c.cfg.name, pairs = %labels.join(", "), "asking for a Child SA (CREATE_CHILD_SA)");
            if self
                .engine
                .create_child(now, ike, local.clone(), remote.clone())
            {
                let c = &mut self.conns[i];
                for &k in &pairs {
                    c.pair_next[k] = None;
                }
                c.requests.push(ChildRequest {
                    ike,
                    pairs,
                    local,
                    remote,
                });
            }
        }
    }

    fn keepalive(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let want = c
            .children
            .iter()
            .any(|x| !x.deleting && matches!(x.out, Out::Current) && x.info.encap);
        if want != c.keepalive_on {
            c.keepalive_on = want;
            let interval = c.cfg.nat_keepalive.filter(|_| want);
            self.commands.push_back(Command::NatKeepalive {
                tunnel: c.tunnel,
                interval,
            });
        }
    }

    /// Routes: each connection's prefixes through its tunnel while covered; an active-active
    /// pair's over every member that covers them (ECMP) or the first (backup); a member's own
    /// routes (its BGP peer's host route) through itself only. Draining members leave a pair's
    /// routes while another member can carry them; a draining tunnel's other static routes move
    /// to a worse metric (`[drain] metric_penalty`). Connections with ExpressRoute failover
    /// leave their routes to the failover task.
    fn sync_routes(&mut self) {
        let penalty = self.drain_cfg.metric_penalty;
        let mut want: BTreeMap<RouteKey, Vec<TunnelId>> = BTreeMap::new();
        let mut groups: Vec<String> = Vec::new();
        for (i, c) in self.conns.iter().enumerate() {
            if c.cfg.failover.is_some() {
                continue;
            }
            let own = c.cfg.own_routes();
            let mine = match &c.cfg.group {
                None => c.cfg.routes(),
                Some(g) => {
                    if !groups.contains(&g.name) {
                        groups.push(g.name.clone());
                    }
                    own.clone()
                }
            };
            for r in mine {
                if !c.route_covered(r.prefix) {
                    continue;
                }
                let is_own = own.iter().any(|o| o.prefix == r.prefix);
                let metric = if c.withdrawn() && !is_own {
                    r.metric.saturating_add(penalty)
                } else {
                    r.metric
                };
                want.insert((i, r.prefix, metric), vec![c.tunnel]);
            }
        }
        for g in groups {
            let mut members: Vec<usize> = (0..self.conns.len())
                .filter(|&i| {
                    self.conns[i]
                        .cfg
                        .group
                        .as_ref()
                        .is_some_and(|x| x.name == g)
                })
                .collect();
            members.sort_by_key(|&i| self.conns[i].cfg.group.as_ref().map_or(0, |x| x.member));
            let Some(&lead) = members.first() else {
                continue;
            };
            let multipath = self.conns[lead]
                .cfg
                .group
                .as_ref()
                .map_or(config::Multipath::Ecmp, |x| x.multipath);
            let mut carrying = vec![false; members.len()];
            for r in self.conns[lead].cfg.shared_routes() {
                let up: Vec<usize> = (0..members.len())
                    .filter(|&k| self.conns[members[k]].route_covered(r.prefix))
                    .collect();
                let active: Vec<usize> = up
                    .iter()
                    .copied()
                    .filter(|&k| !self.conns[members[k]].withdrawn())
                    .collect();
                let (pool, metric) = if active.is_empty() {
                    (up, r.metric.saturating_add(penalty))
                } else {
                    (active, r.metric)
                };
                let chosen: Vec<usize> = match multipath {
                    config::Multipath::Ecmp => pool,
                    config::Multipath::Backup => pool.into_iter().take(1).collect(),
                };
                if chosen.is_empty() {
                    continue;
                }
                for &k in &chosen {
                    carrying[k] = true;
                }
                let via = chosen
                    .iter()
                    .map(|&k| self.conns[members[k]].tunnel)
                    .collect();
                want.insert((lead, r.prefix, metric), via);
            }
            for (k, &m) in members.iter().enumerate() {
                // A member also carries traffic through its own routes (its BGP peer's host
                // route, and with it the routes BGP learns over it).
                let tunnel = self.conns[m].tunnel;
                carrying[k] |= want.values().any(|v| v.contains(&tunnel));
                if self.conns[m].carrying != carrying[k] {
                    info!(group = %g, member = %self.conns[m].cfg.name, carrying = carrying[k], "active-active member {}", if carrying[k] { "carries traffic" } else { "stands by" });
                }
                self.conns[m].carrying = carrying[k];
            }
        }
        // Make before break: additions and changes first, removals last.
        let mut removals = Vec::new();
        let keys: BTreeSet<RouteKey> = want.keys().chain(self.routes.keys()).copied().collect();
        for k in keys {
            let via = want.get(&k).cloned().unwrap_or_default();
            let was = self.routes.get(&k).cloned().unwrap_or_default();
            if via == was {
                continue;
            }
            let cmd = Command::Route {
                prefix: k.1,
                metric: k.2,
                via: via.clone(),
                was,
            };
            if via.is_empty() {
                self.routes.remove(&k);
                removals.push(cmd);
            } else {
                self.routes.insert(k, via);
                self.commands.push_back(cmd);
            }
        }
        self.commands.extend(removals);
    }

    /// `down`: DELETE for every IKE SA, every SA and route goes at once.
    fn take_down(&mut self, i: usize, now: Instant) {
        let name = self.conns[i].cfg.name.clone();
        self.engine.close(now, &name);
        self.stop_conn(i);
    }

    // ------------------------------------------------------------------ status

    /// The state of every connection (the failover fields are the daemon's to fill in).
    pub fn status(&self, now: Instant, snap: &Snapshot) -> Vec<ConnectionStatus> {
        let mut drops: BTreeMap<String, u64> = BTreeMap::new();
        for (reason, n) in snap.drops.iter() {
            drops.insert(reason.name().to_string(), n);
        }
        self.conns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ike_status = |x: &Ike| {
                    let (local, remote) =
                        self.engine.addresses(x.id).unwrap_or((x.local, x.remote));
                    IkeSaStatus {
                        state: if x.deleting {
                            "deleting".into()
                        } else if x.redundant.is_some() {
                            "duplicate".into()
                        } else {
                            "established".into()
                        },
                        initiator: x.initiator,
                        spi_i: format!("{:016x}", x.spi_i),
                        spi_r: format!("{:016x}", x.spi_r),
                        local: local.to_string(),
                        remote: remote.to_string(),
                        encryption: x.algs[0].clone(),
                        integrity: x.algs[1].clone(),
                        prf: x.algs[2].clone(),
                        dh_group: x.algs[3].clone(),
                        established_seconds: now.saturating_duration_since(x.since).as_secs(),
                    }
                };
                let spi_of = |id: IkeSaId| {
                    c.ike
                        .iter()
                        .find(|x| x.id == id)
                        .map(|x| format!("{:016x}_i {:016x}_r", x.spi_i, x.spi_r))
                        .unwrap_or_default()
                };
                ConnectionStatus {
                    name: c.cfg.name.clone(),
                    state: c.state_name().to_string(),
                    local_address: c.cfg.local_address.to_string(),
                    remote_address: c.cfg.remote_address.to_string(),
                    local_id: c.cfg.local_id.clone(),
                    remote_id: c.cfg.remote_id.clone(),
                    behaviour: format!("{:?}", c.cfg.behaviour).to_lowercase(),
                    mode: match c.cfg.mode {
                        Mode::RouteBased { .. } => "route-based".into(),
                        Mode::PolicyBased { .. } => "policy-based".into(),
                    },
                    tun: c.cfg.tun_name.clone(),
                    routes: c
                        .cfg
                        .routes()
                        .iter()
                        .map(|r| {
                            // What is installed through this tunnel (an active-active pair's
                            // shared routes are owned by its first member; a drain changes the
                            // metric).
                            let here = self
                                .routes
                                .iter()
                                .find(|(k, v)| k.1 == r.prefix && v.contains(&c.tunnel));
                            match &c.cfg.failover {
                                Some(f) => RouteStatus {
                                    prefix: r.prefix.to_string(),
                                    metric: f.backup_metric,
                                    installed: true,
                                },
                                None => RouteStatus {
                                    prefix: r.prefix.to_string(),
                                    metric: here.map_or(r.metric, |(k, _)| k.2),
                                    installed: here.is_some(),
                                },
                            }
                        })
                        .collect(),
                    ike_sa: c.primary().or(c.ike.first()).map(ike_status),
                    ike_sas: c.ike.iter().map(ike_status).collect(),
                    child_sas: c
                        .children
                        .iter()
                        .map(|ch| {
                            let inb = snap.sa_of(c.tunnel, ch.in_spi, Direction::Inbound);
                            let out = snap
                                .sa_of(c.tunnel, ch.out_spi, Direction::Outbound)
                                .filter(|_| matches!(ch.out, Out::Current));
                            ChildSaStatus {
                                state: if ch.deleting {
                                    "deleting".into()
                                } else {
                                    match ch.out {
                                        Out::Current => "installed".into(),
                                        Out::Standby(_) => "standby".into(),
                                        Out::Retired => "rekeyed".into(),
                                    }
                                },
                                ike_sa: spi_of(ch.ike),
                                spi_in: format!("{:08x}", ch.in_spi),
                                spi_out: format!("{:08x}", ch.out_spi),
                                encryption: ch.info.encryption.clone(),
                                integrity: ch.info.integrity.clone(),
                                pfs: ch.info.pfs.clone(),
                                encap: ch.info.encap,
                                local_ts: ch.info.local_ts.clone(),
                                remote_ts: ch.info.remote_ts.clone(),
                                established_seconds: now
                                    .saturating_duration_since(ch.info.since)
                                    .as_secs(),
                                bytes_in: inb.map(|s| s.bytes).unwrap_or(0),
                                packets_in: inb.map(|s| s.packets).unwrap_or(0),
                                bytes_out: out.map(|s| s.bytes).unwrap_or(0),
                                packets_out: out.map(|s| s.packets).unwrap_or(0),
                                drops: drops.clone(),
                            }
                        })
                        .collect(),
                    missing_pairs: if c.stopped {
                        Vec::new()
                    } else {
                        c.missing()
                            .into_iter()
                            .map(|p| c.pairs[p].label.clone())
                            .collect()
                    },
                    attempts: c.attempts,
                    last_error: c.last_error.clone(),
                    next_retry_seconds: c
                        .next_attempt
                        .map(|t| t.saturating_duration_since(now).as_secs()),
                    failover: None,
                    active_active: c.cfg.group.as_ref().map(|g| ActiveActiveStatus {
                        group: g.name.clone(),
                        member: g.member,
                        multipath: match g.multipath {
                            config::Multipath::Ecmp => "ecmp".into(),
                            config::Multipath::Backup => "backup".into(),
                        },
                        carrying: c.carrying,
                    }),
                    bgp: c.cfg.bgp.as_ref().map(|b| {
                        let host = c.cfg.own_routes();
                        let installed = host.iter().any(|r| {
                            self.routes
                                .iter()
                                .any(|(k, v)| k.0 == i && k.1 == r.prefix && v.contains(&c.tunnel))
                        });
                        let disabled: Vec<String> = drain_protocols(&c.cfg)
                            .into_iter()
                            .filter(|k| self.bgp_off.contains(k))
                            .map(|k| k.1)
                            .collect();
                        BgpStatus {
                            peer: b.azure_peer.map(|p| p.to_string()),
                            protocol: b.bird_protocol.clone(),
                            routes_in_use: installed && !c.withdrawn(),
                            disabled,
                        }
                    }),
                    drain: match c.drain {
                        DrainPhase::None => None,
                        DrainPhase::Draining {
                            started, last_rx, ..
                        } => Some(format!(
                            "draining ({} ms, inbound quiet for {} ms)",
                            now.saturating_duration_since(started).as_millis(),
                            now.saturating_duration_since(last_rx).as_millis()
                        )),
                        DrainPhase::Drained { took, quiet: true } => {
                            Some(format!("drained after {} ms", took.as_millis()))
                        }
                        DrainPhase::Drained { took, quiet: false } => Some(format!(
                            "drained after {} ms (timed out, traffic still arriving)",
                            took.as_millis()
                        )),
                    },
                }
            })
            .collect()
    }

    /// The daemon-wide part of `status`.
    pub fn status_document(
        &self,
        cfg: &Config,
        started: Instant,
        now: Instant,
        snap: &Snapshot,
    ) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            config: cfg.file.display().to_string(),
            uptime_seconds: now.saturating_duration_since(started).as_secs(),
            ike: {
                let mut m = ike_counters(self.engine.counters());
                // A gauge, not a counter: responder IKE SAs waiting for IKE_AUTH now (§2.6).
                m.insert("half_open".into(), self.engine.half_open() as u64);
                m
            },
            dataplane: {
                let b = snap.batching;
                [
                    ("tun_reads", b.tun_reads),
                    ("tun_packets", b.tun_packets),
                    ("udp_sends", b.udp_sends),
                    ("udp_datagrams_sent", b.udp_datagrams_sent),
                    ("udp_receives", b.udp_receives),
                    ("udp_datagrams_received", b.udp_datagrams_received),
                    ("tun_writes", b.tun_writes),
                    ("tun_packets_written", b.tun_packets_written),
                    ("send_order_waits", b.send_order_waits),
                    ("latency_out_samples", snap.latency_out.samples),
                    ("latency_out_p50_ns", snap.latency_out.p50_ns),
                    ("latency_out_p99_ns", snap.latency_out.p99_ns),
                    ("latency_out_max_ns", snap.latency_out.max_ns),
                    ("latency_in_samples", snap.latency_in.samples),
                    ("latency_in_p50_ns", snap.latency_in.p50_ns),
                    ("latency_in_p99_ns", snap.latency_in.p99_ns),
                    ("latency_in_max_ns", snap.latency_in.max_ns),
                    ("steering_changes", b.steering_changes),
                    ("cpu_local", u64::from(b.cpu_local)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            },
            connections: self.status(now, snap),
            ha: self.ha_status(now),
        }
    }
}

/// The IKE endpoint's counters under stable names.
fn ike_counters(c: &ike::Counters) -> BTreeMap<String, u64> {
    [
        ("received", c.received),
        ("sent", c.sent),
        ("retransmits", c.retransmits),
        ("cached_responses", c.cached_responses),
        ("malformed", c.malformed),
        ("not_ike", c.not_ike),
        ("unknown_spi", c.unknown_spi),
        ("no_connection", c.no_connection),
        ("unexpected", c.unexpected),
        ("bad_message_id", c.bad_message_id),
        ("integrity", c.integrity),
        ("invalid", c.invalid),
        ("cookies_sent", c.cookies_sent),
        ("refused", c.refused),
        ("half_open_expired", c.half_open_expired),
        ("half_open_limit", c.half_open_limit),
        ("ike_failed", c.ike_failed),
        ("ike_established", c.ike_established),
        ("child_established", c.child_established),
        ("child_rekeyed", c.child_rekeyed),
        ("ike_rekeyed", c.ike_rekeyed),
        ("peer_moved", c.peer_moved),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
