//! Stateful fuzz target for the IKEv2 endpoint (RFC 7296 §1.2, §2.1, §2.6, §2.23; RFC 7383):
//! the input is a script of operations run against two endpoints under test that hold the
//! real PSK, a responder `R` and an initiator `I` (which has sent IKE_SA_INIT), together with
//! two honest-looking peers that hold a *wrong* PSK (`P` initiates towards `R`, `Q` answers
//! `I`), so the fuzzer drives complete, correctly encrypted exchanges that must still fail
//! authentication. Operations (first byte `op`, `op & 7` selects):
//!
//! - 0 / 1: a raw datagram to `R` / `I`: length `((op >> 4) << 8) | next byte` (at most 4095),
//!   port 4500 (non-ESP marker expected) when `op & 8`, else 500;
//! - 2..=5: the head of one of the four wire queues (`P→R`, `R→P`, `Q→I`, `I→Q`): delivered, or
//!   dropped (`op & 0x20`), kept for a later duplicate (`op & 0x10`), one byte flipped
//!   (`op & 0x08`: two more bytes, position and XOR mask), delivered from another source port
//!   (`op & 0x40`: NAT rebinding attempt);
//! - 6: a message of a genuine handshake recorded between two endpoints that both had the PSK
//!   (replayed at `R` or `I`, `op & 8`), optionally with its SPIs replaced by those of the last
//!   datagram `R`/`I` sent (`op & 0x10`) and one byte flipped (`op & 0x20`);
//! - 7: time advances by `next byte * 250 ms` and every endpoint's `handle_timeout` runs.
//!
//! After every operation the target asserts: no panic; no `IkeSaEstablished`,
//! `ChildSaEstablished`, `ChildSaRekeyed` or `IkeSaRekeyed` event from any endpoint and zero
//! `ike_established`/`child_established` counters (nobody in this world can prove the PSK to
//! anybody else: the wrong-PSK peers fail, the recorded genuine messages are bound to other
//! nonces and DH values); half-open SAs at most the cookie threshold and IKE SAs at most the
//! threshold plus the one initiated, each plus the number of datagrams the endpoint received
//! from its peer through the wire queues (only a party that receives the COOKIE notify can
//! echo it: raw and replayed datagrams, which spoof the peer's address, never raise the
//! bound); after `handle_timeout(now)` no deadline is at or before `now` (a driver would spin);
//! live heap growth during one input below 16 MiB (fragment reassembly, half-open state and
//! queues are bounded), measured by `stats_alloc` as the global allocator.
//!
//! Run: `cargo fuzz run --sanitizer none ike_endpoint -- -max_total_time=300`
#![no_main]

use std::alloc::System;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ike::crypto::{Psk, TestRng};
use ike::proposal::Proposal;
use ike::{ConnectionConfig, Endpoint, Event, Transmit};
use libfuzzer_sys::fuzz_target;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// Counts heap bytes (Rust allocations only; libFuzzer's own C++ allocations are not seen).
#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live Rust heap bytes.
fn live() -> usize {
    let s = ALLOC.stats();
    s.bytes_allocated.saturating_sub(s.bytes_deallocated)
}

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const PSK: &str = "fuzz-psk-the-fuzzer-cannot-know";
const WRONG_PSK: &str = "a-wrong-psk-of-the-same-length";
const COOKIE_THRESHOLD: usize = 4;
const MAX_OPS: usize = 200;
const QUEUE_CAP: usize = 64;
const HEAP_BOUND: usize = 16 << 20;

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// The fixed connection: x25519 and ECP-256 IKE proposals, GCM and CBC ESP, fragmentation on
/// with small fragments (so IKE_AUTH is fragmented), cookies from `COOKIE_THRESHOLD` half-open
/// SAs, NAT-T forced every other endpoint.
fn conn(local: Ipv4Addr, remote: Ipv4Addr, psk: &str, encap: bool) -> ConnectionConfig {
    let ike = ["aes128gcm16-prfsha256-x25519", "aes256-sha256-ecp256"]
        .iter()
        .map(|p| Proposal::parse_ike(p).expect("valid"))
        .collect();
    let esp = ["aes256gcm16", "aes128-sha1-esn"]
        .iter()
        .map(|p| Proposal::parse_esp(p).expect("valid"))
        .collect();
    let mut c = ConnectionConfig::new(
        "fuzz",
        sa(local, 500),
        sa(remote, 500),
        Psk::from(psk),
        ike,
        esp,
    );
    c.cookie_threshold = COOKIE_THRESHOLD;
    c.fragment_size = 200;
    c.force_encap = encap;
    c
}

/// Datagrams of a genuine handshake (both sides with `PSK`) between `A` (initiator) and `B`,
/// from other RNG seeds than the endpoints under test.
fn recorded() -> &'static Vec<Transmit> {
    static R: OnceLock<Vec<Transmit>> = OnceLock::new();
    R.get_or_init(|| {
        let now = epoch();
        let mut a = Endpoint::new(vec![conn(A, B, PSK, true)], Box::new(TestRng::new(901)));
        let mut b = Endpoint::new(vec![conn(B, A, PSK, false)], Box::new(TestRng::new(902)));
        a.initiate("fuzz", now).expect("initiate");
        let mut all = Vec::new();
        let mut up = false;
        for _ in 0..32 {
            let mut moved = false;
            while let Some(t) = a.poll_transmit() {
                moved = true;
                let _ = b.handle(now, t.remote, t.local, &t.payload);
                all.push(t);
            }
            while let Some(t) = b.poll_transmit() {
                moved = true;
                let _ = a.handle(now, t.remote, t.local, &t.payload);
                all.push(t);
            }
            while let Some(e) = a.poll_event() {
                up |= matches!(e, Event::ChildSaEstablished(_));
            }
            while b.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
        assert!(up, "the recorded handshake completes");
        all
    })
}

fn epoch() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

/// The four parties and the wire between them.
struct World {
    /// Under test, responder, real PSK.
    r: Endpoint,
    /// Under test, initiator, real PSK.
    i: Endpoint,
    /// Wrong-PSK initiator towards `r`.
    p: Endpoint,
    /// Wrong-PSK responder for `i`.
    q: Endpoint,
    /// `P→R`, `R→P`, `Q→I`, `I→Q`.
    queues: [VecDeque<Transmit>; 4],
    /// Last datagram `r` / `i` sent (for SPI patching).
    last_r: Vec<u8>,
    last_i: Vec<u8>,
    /// Datagrams delivered from the wire queues to `r`, `i`, `p`, `q`: only a party that
    /// receives the responder's COOKIE notify can echo it (RFC 7296 §2.6), so each such
    /// delivery may legitimately open one more half-open SA above the threshold.
    echoes: [usize; 4],
    now: Instant,
}

impl World {
    fn new() -> Self {
        let now = epoch();
        let r = Endpoint::new(vec![conn(B, A, PSK, false)], Box::new(TestRng::new(101)));
        let mut i = Endpoint::new(vec![conn(A, B, PSK, true)], Box::new(TestRng::new(102)));
        let mut p = Endpoint::new(
            vec![conn(A, B, WRONG_PSK, false)],
            Box::new(TestRng::new(103)),
        );
        let q = Endpoint::new(
            vec![conn(B, A, WRONG_PSK, true)],
            Box::new(TestRng::new(104)),
        );
        i.initiate("fuzz", now).expect("initiate");
        p.initiate("fuzz", now).expect("initiate");
        let mut w = Self {
            r,
            i,
            p,
            q,
            queues: Default::default(),
            last_r: Vec::new(),
            last_i: Vec::new(),
            echoes: [0; 4],
            now,
        };
        w.collect();
        w
    }

    fn push(q: &mut VecDeque<Transmit>, t: Transmit) {
        if q.len() >= QUEUE_CAP {
            q.pop_front();
        }
        q.push_back(t);
    }

    /// Moves every endpoint's output onto the wire and checks every event.
    fn collect(&mut self) {
        while let Some(t) = self.p.poll_transmit() {
            Self::push(&mut self.queues[0], t);
        }
        while let Some(t) = self.r.poll_transmit() {
            self.last_r = t.payload.clone();
            Self::push(&mut self.queues[1], t);
        }
        while let Some(t) = self.q.poll_transmit() {
            Self::push(&mut self.queues[2], t);
        }
        while let Some(t) = self.i.poll_transmit() {
            self.last_i = t.payload.clone();
            Self::push(&mut self.queues[3], t);
        }
        let e = self.echoes;
        for (name, ep, echoes) in [
            ("R", &mut self.r, e[0]),
            ("I", &mut self.i, e[1]),
            ("P", &mut self.p, e[2]),
            ("Q", &mut self.q, e[3]),
        ] {
            while let Some(e) = ep.poll_event() {
                assert!(
                    !matches!(
                        e,
                        Event::IkeSaEstablished { .. }
                            | Event::ChildSaEstablished(_)
                            | Event::ChildSaRekeyed { .. }
                            | Event::IkeSaRekeyed { .. }
                    ),
                    "{name} authenticated without the PSK: {e:?}"
                );
            }
            let c = ep.counters();
            assert_eq!(c.ike_established, 0, "{name}: {c:?}");
            assert_eq!(c.child_established, 0, "{name}: {c:?}");
            assert!(
                ep.half_open_count() <= COOKIE_THRESHOLD + echoes,
                "{name}: {} half-open SAs, {echoes} datagrams from its peer",
                ep.half_open_count()
            );
            assert!(
                ep.ike_sa_count() <= COOKIE_THRESHOLD + 1 + echoes,
                "{name}: {} IKE SAs, {echoes} datagrams from its peer",
                ep.ike_sa_count()
            );
        }
    }

    /// The endpoint that receives what queue `k` carries (counted in `echoes`).
    fn receiver(&mut self, k: usize) -> &mut Endpoint {
        match k {
            0 => {
                self.echoes[0] += 1;
                &mut self.r
            }
            1 => {
                self.echoes[2] += 1;
                &mut self.p
            }
            2 => {
                self.echoes[1] += 1;
                &mut self.i
            }
            _ => {
                self.echoes[3] += 1;
                &mut self.q
            }
        }
    }
}

/// Reads input bytes.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn flip(buf: &mut [u8], pos: u8, mask: u8) {
    if !buf.is_empty() {
        let at = usize::from(pos) * buf.len() / 256;
        buf[at] ^= mask;
    }
}

/// Replaces the IKE SPIs of `msg` with those of `from` (both may carry a non-ESP marker).
fn patch_spis(msg: &mut [u8], from: &[u8]) {
    let skip = |m: &[u8]| if m.starts_with(&[0, 0, 0, 0]) { 4 } else { 0 };
    let (ms, fs) = (skip(msg), skip(from));
    if let (Some(dst), Some(src)) = (msg.get_mut(ms..ms + 16), from.get(fs..fs + 16)) {
        dst.copy_from_slice(src);
    }
}

/// `IKE_ENDPOINT_TRACE=1` prints every endpoint's counters after each input (to check what a
/// seed reaches, e.g. `cargo fuzz run ... ike_endpoint seeds/ike_endpoint -- -runs=0`).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("IKE_ENDPOINT_TRACE").is_some())
}

fuzz_target!(|data: &[u8]| {
    let records = recorded();
    let base = live();
    let mut w = World::new();
    let mut c = Cursor(data);
    for _ in 0..MAX_OPS {
        let Some(op) = c.byte() else {
            break;
        };
        match op & 7 {
            0 | 1 => {
                let len = (usize::from(op >> 4) << 8) | usize::from(c.byte().unwrap_or(0));
                let body = c.take(len).to_vec();
                let port = if op & 8 != 0 { 4500 } else { 500 };
                let now = w.now;
                if op & 7 == 0 {
                    let _ = w.r.handle(now, sa(B, port), sa(A, port), &body);
                } else {
                    let _ = w.i.handle(now, sa(A, port), sa(B, port), &body);
                }
            }
            k @ 2..=5 => {
                let k = usize::from(k - 2);
                let mutation = if op & 0x08 != 0 {
                    Some((c.byte().unwrap_or(0), c.byte().unwrap_or(0)))
                } else {
                    None
                };
                let Some(t) = w.queues[k].pop_front() else {
                    continue;
                };
                if op & 0x10 != 0 {
                    w.queues[k].push_back(t.clone());
                }
                if op & 0x20 != 0 {
                    continue;
                }
                let mut payload = t.payload;
                if let Some((pos, mask)) = mutation {
                    flip(&mut payload, pos, mask);
                }
                let mut from = t.local;
                if op & 0x40 != 0 {
                    from.set_port(from.port().wrapping_add(1000));
                }
                let now = w.now;
                let _ = w.receiver(k).handle(now, t.remote, from, &payload);
            }
            6 => {
                let idx = usize::from(c.byte().unwrap_or(0)) % records.len();
                let mutation = (c.byte().unwrap_or(0), c.byte().unwrap_or(0));
                let t = &records[idx];
                let mut payload = t.payload.clone();
                let to_r = op & 8 == 0;
                if op & 0x10 != 0 {
                    let from = if to_r { &w.last_r } else { &w.last_i };
                    patch_spis(&mut payload, from);
                }
                if op & 0x20 != 0 {
                    flip(&mut payload, mutation.0, mutation.1);
                }
                let port = t.local.port();
                let now = w.now;
                if to_r {
                    let _ = w.r.handle(now, sa(B, port), sa(A, port), &payload);
                } else {
                    let _ = w.i.handle(now, sa(A, port), sa(B, port), &payload);
                }
            }
            _ => {
                let step = Duration::from_millis(250 * u64::from(c.byte().unwrap_or(0)));
                w.now += step;
                let now = w.now;
                for (name, ep) in [
                    ("R", &mut w.r),
                    ("I", &mut w.i),
                    ("P", &mut w.p),
                    ("Q", &mut w.q),
                ] {
                    ep.handle_timeout(now);
                    if let Some(t) = ep.poll_timeout() {
                        assert!(
                            t > now,
                            "{name}: a deadline {:?} at or before now after handle_timeout",
                            now.saturating_duration_since(t)
                        );
                    }
                }
            }
        }
        w.collect();
        let grown = live().saturating_sub(base);
        assert!(
            grown < HEAP_BOUND,
            "heap grew by {grown} bytes in one input"
        );
    }
    if trace() {
        eprintln!(
            "R {:?}\nI {:?}\nP {:?}\nQ {:?}",
            w.r.counters(),
            w.i.counters(),
            w.p.counters(),
            w.q.counters()
        );
    }
});
