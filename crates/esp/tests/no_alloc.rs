//! Proves the packet path allocates nothing: a counting global allocator around 10,000
//! seal+open calls per suite (the design rule "the packet path allocates nothing").
//! Lives in its own test binary (without the libtest harness, whose threads would allocate
//! concurrently) so the allocator does not affect other tests.

mod common;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

use common::{config, framed, ipv4_packet, pair};
use esp::algo::NEXT_HEADER_IPV4;
use esp::{Cipher, Integrity, SaDatabase};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    ten_thousand_seal_open_calls_allocate_nothing();
    println!("no_alloc: 10,000 seal+open calls per suite, 0 allocations");
}

fn ten_thousand_seal_open_calls_allocate_nothing() {
    // The counter works: one deliberate allocation is seen.
    let probe = Region::new(GLOBAL);
    let v: Vec<u8> = Vec::with_capacity(16);
    assert_eq!(probe.change().allocations, 1);
    drop(v);

    let suites = [
        (Cipher::AesGcm16_256, Integrity::None),
        (Cipher::AesGcm16_128, Integrity::None),
        (Cipher::AesCbc256, Integrity::HmacSha256_128),
        (Cipher::AesCbc128, Integrity::HmacSha1_96),
        (Cipher::AesCbc192, Integrity::HmacSha512_256),
    ];
    for (cipher, integ) in suites {
        for esn in [false, true] {
            let cfg = config(0x4242_0000, cipher, integ, esn, 1);
            let (tx, rx) = pair(&cfg);
            let mut db: SaDatabase = SaDatabase::new();
            db.insert_inbound(std::sync::Arc::new(rx), None);
            let inner = ipv4_packet(1400, 7);
            let (mut buf, range) = framed(&tx, &inner);
            let template = buf.clone();
            // Warm up once outside the counted region (lazy CPU feature detection and the like).
            let r = tx.seal(&mut buf, range.clone(), NEXT_HEADER_IPV4).unwrap();
            assert!(db.receive_udp4500(&mut buf[r]).is_ok());

            let region = Region::new(GLOBAL);
            let mut ok = 0u32;
            for _ in 0..10_000 {
                buf.copy_from_slice(&template);
                let r = tx.seal(&mut buf, range.clone(), NEXT_HEADER_IPV4).unwrap();
                if db.receive_udp4500(&mut buf[r]).is_ok() {
                    ok += 1;
                }
            }
            let stats = region.change();
            assert_eq!(ok, 10_000);
            assert_eq!(
                (stats.allocations, stats.reallocations),
                (0, 0),
                "{cipher:?}/{integ:?} esn={esn} allocated: {stats:?}"
            );
        }
    }
}
