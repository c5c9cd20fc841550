//! In-memory IKE network for tests (quinn-proto style): two endpoints, a simulated clock,
//! latency, deterministic loss and reordering. Every datagram is recorded.

#![allow(dead_code)]

use ike::crypto::{Psk, TestRng};
use ike::proposal::Proposal;
use ike::{ConnectionConfig, Endpoint, Event, Transmit};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

pub fn ike(s: &str) -> Vec<Proposal> {
    s.split(',')
        .map(|p| Proposal::parse_ike(p).expect("valid IKE proposal"))
        .collect()
}

pub fn esp(s: &str) -> Vec<Proposal> {
    s.split(',')
        .map(|p| Proposal::parse_esp(p).expect("valid ESP proposal"))
        .collect()
}

/// A connection from `local` to `remote` named "site".
pub fn conn(
    local: Ipv4Addr,
    remote: Ipv4Addr,
    psk: &str,
    ike_p: &str,
    esp_p: &str,
) -> ConnectionConfig {
    ConnectionConfig::new(
        "site",
        addr(local, 500),
        addr(remote, 500),
        Psk::from(psk),
        ike(ike_p),
        esp(esp_p),
    )
}

/// A datagram on the simulated wire.
#[derive(Debug, Clone)]
pub struct Flight {
    pub at: Instant,
    pub seq: u64,
    pub t: Transmit,
}

/// Decides whether datagram number `seq` (in send order) is lost.
pub type LossFn = Box<dyn FnMut(u64, &Transmit) -> bool>;

pub struct Pair {
    pub a: Endpoint,
    pub b: Endpoint,
    pub now: Instant,
    pub start: Instant,
    pub latency: Duration,
    in_flight: Vec<Flight>,
    seq: u64,
    pub lose: LossFn,
    /// Extra delay per datagram (reordering), in milliseconds, from a deterministic generator.
    pub jitter_ms: u64,
    lcg: u64,
    pub a_events: Vec<Event>,
    pub b_events: Vec<Event>,
    /// Every datagram sent (before loss), in order.
    pub sent: Vec<Transmit>,
    pub delivered: u64,
}

impl Pair {
    pub fn new(a: ConnectionConfig, b: ConnectionConfig) -> Self {
        Self::with_seed(a, b, 1)
    }

    pub fn with_seed(a: ConnectionConfig, b: ConnectionConfig, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            a: Endpoint::new(vec![a], Box::new(TestRng::new(seed))),
            b: Endpoint::new(vec![b], Box::new(TestRng::new(seed.wrapping_add(1000)))),
            now,
            start: now,
            latency: Duration::from_millis(10),
            in_flight: Vec::new(),
            seq: 0,
            lose: Box::new(|_, _| false),
            jitter_ms: 0,
            lcg: seed.wrapping_mul(6364136223846793005).wrapping_add(1),
            a_events: Vec::new(),
            b_events: Vec::new(),
            sent: Vec::new(),
            delivered: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        self.lcg = self
            .lcg
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.lcg >> 33
    }

    fn collect(&mut self) {
        let mut out = Vec::new();
        while let Some(t) = self.a.poll_transmit() {
            out.push(t);
        }
        while let Some(t) = self.b.poll_transmit() {
            out.push(t);
        }
        for t in out {
            self.sent.push(t.clone());
            let seq = self.seq;
            self.seq += 1;
            if (self.lose)(seq, &t) {
                continue;
            }
            let jitter = if self.jitter_ms > 0 {
                self.rand() % self.jitter_ms
            } else {
                0
            };
            let at = self.now + self.latency + Duration::from_millis(jitter);
            self.in_flight.push(Flight { at, seq, t });
        }
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    /// Runs until nothing is in flight and no timer is pending, or `limit` of simulated time
    /// passed, or 10 000 steps. Returns the number of steps.
    pub fn drive_for(&mut self, limit: Duration) -> usize {
        let end = self.now + limit;
        for step in 0..10_000 {
            self.collect();
            let next_flight = self.in_flight.iter().map(|f| (f.at, f.seq)).min();
            let next_timer = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let next = match (next_flight, next_timer) {
                (None, None) => return step,
                (Some((f, _)), None) => f,
                (None, Some(t)) => t,
                (Some((f, _)), Some(t)) => f.min(t),
            };
            if next > end {
                return step;
            }
            self.now = self.now.max(next);
            if let Some((at, seq)) = next_flight
                && at <= self.now
            {
                let i = self
                    .in_flight
                    .iter()
                    .position(|f| f.seq == seq)
                    .expect("flight present");
                let f = self.in_flight.remove(i);
                self.delivered += 1;
                let (local, remote) = (f.t.remote, f.t.local);
                if local.ip() == IpAddr::V4(B_IP) {
                    let _ = self.b.handle(self.now, local, remote, &f.t.payload);
                } else {
                    let _ = self.a.handle(self.now, local, remote, &f.t.payload);
                }
            } else {
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
            }
        }
        10_000
    }

    /// Like `drive_for`, but the clock ends exactly `d` later even when nothing happens.
    pub fn advance(&mut self, d: Duration) -> usize {
        let end = self.now + d;
        let steps = self.drive_for(d);
        self.now = self.now.max(end);
        steps
    }

    pub fn drive(&mut self) -> usize {
        self.drive_for(Duration::from_secs(600))
    }

    /// Injects a datagram to A as if sent by B (or to B when `to_b`).
    pub fn inject(
        &mut self,
        to_b: bool,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) -> Result<(), ike::DropReason> {
        if to_b {
            self.b.handle(self.now, local, remote, data)
        } else {
            self.a.handle(self.now, local, remote, data)
        }
    }

    pub fn children(events: &[Event]) -> Vec<&ike::ChildSa> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ChildSaEstablished(c) => Some(&**c),
                _ => None,
            })
            .collect()
    }

    pub fn established(events: &[Event]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Event::IkeSaEstablished { .. }))
            .count()
    }

    pub fn failures(events: &[Event]) -> Vec<ike::FailReason> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::IkeSaFailed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Asserts that two Child SAs are mirror images: SPIs crossed, keys crossed, same algorithms,
/// selectors crossed. Returns nothing; panics with a description otherwise.
pub fn assert_mirror(x: &ike::ChildSa, y: &ike::ChildSa) {
    assert_eq!(x.inbound_spi, y.outbound_spi, "SPI mirror");
    assert_eq!(x.outbound_spi, y.inbound_spi, "SPI mirror");
    assert_eq!(x.inbound, y.outbound, "key mirror");
    assert_eq!(x.outbound, y.inbound, "key mirror");
    assert_ne!(x.inbound, x.outbound, "directions must differ");
    assert_eq!(
        (x.encr, x.encr_key_bits, x.integ, x.esn),
        (y.encr, y.encr_key_bits, y.integ, y.esn)
    );
    assert_eq!(x.local_ts, y.remote_ts);
    assert_eq!(x.remote_ts, y.local_ts);
    assert_eq!(x.udp_encap, y.udp_encap);
    assert_eq!(x.local, y.remote);
    assert_eq!(x.remote, y.local);
    assert_ne!(x.initiator, y.initiator);
}

/// The Child SAs (inbound SPI, outbound SPI) alive after replaying `events` in order:
/// established and rekeyed SAs are added, deleted ones (and all of a deleted or failed IKE SA)
/// removed.
pub fn survivors(events: &[Event]) -> std::collections::BTreeMap<u32, (u32, ike::IkeSaId)> {
    let mut alive = std::collections::BTreeMap::new();
    for e in events {
        match e {
            Event::ChildSaEstablished(c) => {
                alive.insert(c.inbound_spi, (c.outbound_spi, c.ike_sa));
            }
            Event::ChildSaRekeyed { new, .. } => {
                alive.insert(new.inbound_spi, (new.outbound_spi, new.ike_sa));
            }
            Event::ChildSaDeleted { inbound_spi, .. } => {
                alive.remove(inbound_spi);
            }
            Event::IkeSaDeleted { id, .. } | Event::IkeSaFailed { id, .. } => {
                alive.retain(|_, v| v.1 != *id);
            }
            Event::IkeSaRekeyed { old, new, .. } => {
                for v in alive.values_mut() {
                    if v.1 == *old {
                        v.1 = *new;
                    }
                }
            }
            _ => {}
        }
    }
    alive
}

/// Every Child SA (new or rekeyed) reported in `events`, by inbound SPI.
pub fn all_children(events: &[Event]) -> std::collections::HashMap<u32, ike::ChildSa> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaEstablished(c) => Some((c.inbound_spi, (**c).clone())),
            Event::ChildSaRekeyed { new, .. } => Some((new.inbound_spi, (**new).clone())),
            _ => None,
        })
        .collect()
}

/// Asserts that both sides hold exactly the same `n` Child SAs (SPIs crossed, keys mirrored)
/// and returns A's view (inbound SPI -> outbound SPI).
pub fn assert_survivors(p: &Pair, n: usize) -> Vec<(u32, u32)> {
    let sa = survivors(&p.a_events);
    let sb = survivors(&p.b_events);
    let va: Vec<(u32, u32)> = sa.iter().map(|(i, (o, _))| (*i, *o)).collect();
    let mut vb: Vec<(u32, u32)> = sb.iter().map(|(i, (o, _))| (*o, *i)).collect();
    vb.sort();
    assert_eq!(
        va, vb,
        "survivor sets differ: a={:?} b={:?}",
        p.a_events, p.b_events
    );
    assert_eq!(
        va.len(),
        n,
        "survivors {va:?}; a={:?} b={:?}",
        p.a_events,
        p.b_events
    );
    let (ca, cb) = (all_children(&p.a_events), all_children(&p.b_events));
    for (i, o) in &va {
        assert!(*i > 255 && *o > 255, "both directions present");
        assert_mirror(&ca[i], &cb[o]);
    }
    va
}

/// Count of `ChildSaRekeyed` events.
pub fn rekeyed(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::ChildSaRekeyed { .. }))
        .count()
}

/// Count of `ChildSaDeleted` events.
pub fn child_deleted(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::ChildSaDeleted { .. }))
        .count()
}

/// The current IKE SA id of one side (following rekeys), if any.
pub fn current_ike(events: &[Event]) -> Option<ike::IkeSaId> {
    let mut cur = None;
    for e in events {
        match e {
            Event::IkeSaEstablished { id, .. } => cur = Some(*id),
            Event::IkeSaRekeyed { old, new, .. } if cur == Some(*old) => cur = Some(*new),
            Event::IkeSaDeleted { id, .. } | Event::IkeSaFailed { id, .. } if cur == Some(*id) => {
                cur = None
            }
            _ => {}
        }
    }
    cur
}

/// The (ispi, rspi) of every `IkeSaRekeyed` event.
pub fn ike_rekeys(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaRekeyed { ispi, rspi, .. } => Some((*ispi, *rspi)),
            _ => None,
        })
        .collect()
}
