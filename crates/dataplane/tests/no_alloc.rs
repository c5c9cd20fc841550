//! Proves that the per-packet functions the workers call (outbound: selector lookup, MSS clamp,
//! path MTU check, ESP seal; inbound: demux, SPI lookup, replay check, ESP open, selector check)
//! allocate nothing in the steady state (RFC 4303 data path), with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use dataplane::testing::Loopback;
use esp::{Cipher, Integrity, KeyMaterial, SaConfig};

struct Counting;

thread_local! {
    /// Whether this thread is being counted, and its count (per thread, so that tests running in
    /// parallel do not see each other).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    if COUNTING.with(|c| c.get()) {
        ALLOCS.with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: delegates every operation to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn count(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(|a| a.get());
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(|a| a.get()) - before
}

/// A TCP SYN 198.18.1.2 -> 198.19.1.2 with MSS 1460 (which gets clamped) and a 1300-byte UDP
/// packet.
fn packets() -> (Vec<u8>, Vec<u8>) {
    let mut syn = vec![0u8; 44];
    syn[0] = 0x45;
    syn[3] = 44;
    syn[6] = 0x40;
    syn[8] = 64;
    syn[9] = 6;
    syn[12..16].copy_from_slice(&[198, 18, 1, 2]);
    syn[16..20].copy_from_slice(&[198, 19, 1, 2]);
    syn[32] = 6 << 4;
    syn[33] = 0x02;
    syn[40..44].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut udp = vec![0x77u8; 1300];
    udp[0] = 0x45;
    udp[1] = 0;
    udp[2..4].copy_from_slice(&1300u16.to_be_bytes());
    udp[4..10].copy_from_slice(&[0, 0, 0x40, 0, 64, 17]);
    udp[12..16].copy_from_slice(&[198, 18, 1, 2]);
    udp[16..20].copy_from_slice(&[198, 19, 1, 2]);
    (syn, udp)
}

fn steady_state_allocations(cfg: &SaConfig) -> u64 {
    let mut lo = Loopback::new(cfg).expect("SA config");
    let (syn, udp) = packets();
    // Warm up (first use of lazily initialised state, if any).
    for _ in 0..100 {
        assert!(lo.roundtrip(&udp).is_some());
    }
    let n = count(|| {
        for _ in 0..10_000 {
            let out = lo.roundtrip(&udp).expect("delivered");
            assert_eq!(out.len(), udp.len());
            let out = lo.roundtrip(&syn).expect("SYN delivered");
            // MSS clamped to 1350 on the way.
            assert_eq!(&out[42..44], &1350u16.to_be_bytes());
        }
    });
    assert_eq!(lo.drops(), 0);
    n
}

/// In-order TCP segments of one flow (valid checksums), as a bulk transfer delivers them.
fn tcp_segments(count: u32, payload: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let total = 20 + 20 + payload;
            let mut p = vec![0u8; total];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[6] = 0x40;
            p[8] = 64;
            p[9] = 6;
            p[12..16].copy_from_slice(&[198, 18, 1, 2]);
            p[16..20].copy_from_slice(&[198, 19, 1, 2]);
            let c = dataplane::wire::checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p[20..22].copy_from_slice(&40000u16.to_be_bytes());
            p[22..24].copy_from_slice(&5201u16.to_be_bytes());
            p[24..28].copy_from_slice(&(1 + i * payload as u32).to_be_bytes());
            p[32] = 5 << 4;
            p[33] = 0x10;
            p[34..36].copy_from_slice(&1000u16.to_be_bytes());
            for (k, b) in p[40..].iter_mut().enumerate() {
                *b = (k as u8).wrapping_add(i as u8);
            }
            let src = "198.18.1.2".parse().unwrap();
            let dst = "198.19.1.2".parse().unwrap();
            let acc = dataplane::wire::pseudo_header_sum(src, dst, 6, total - 20);
            let c = dataplane::wire::fold(dataplane::wire::sum16(acc, &p[20..]));
            p[36..38].copy_from_slice(&c.to_be_bytes());
            p
        })
        .collect()
}

#[test]
fn no_allocation_per_packet_with_tcp_coalescing() {
    let cfg = SaConfig::new(
        0x4321,
        Cipher::AesGcm16_256,
        Integrity::None,
        KeyMaterial::from_slice(&[4; 36]),
        KeyMaterial::empty(),
    );
    let mut lo = Loopback::new(&cfg).expect("SA config");
    let segs = tcp_segments(64, 1300);
    let (_, udp) = packets();
    for (i, s) in segs.iter().enumerate() {
        assert!(lo.roundtrip_coalesced(s, 16, i));
    }
    let n = count(|| {
        for round in 0..100usize {
            for (i, s) in segs.iter().enumerate() {
                assert!(lo.roundtrip_coalesced(s, 16, round * 64 + i));
            }
            // Something that is not coalesced goes out in place.
            assert!(lo.roundtrip_coalesced(&udp, 16, 0));
        }
    });
    assert_eq!(n, 0);
    assert_eq!(lo.drops(), 0);
    assert!(lo.written > 0);
}

#[test]
fn no_allocation_per_packet_aes_gcm() {
    let cfg = SaConfig::new(
        0x1234,
        Cipher::AesGcm16_256,
        Integrity::None,
        KeyMaterial::from_slice(&[1; 36]),
        KeyMaterial::empty(),
    );
    assert_eq!(steady_state_allocations(&cfg), 0);
}

#[test]
fn no_allocation_per_packet_aes_cbc_hmac_sha256() {
    let cfg = SaConfig::new(
        0x5678,
        Cipher::AesCbc256,
        Integrity::HmacSha256_128,
        KeyMaterial::from_slice(&[2; 32]),
        KeyMaterial::from_slice(&[3; 32]),
    );
    assert_eq!(steady_state_allocations(&cfg), 0);
}

#[test]
fn counting_allocator_sees_allocations() {
    // The instrument works: an allocation inside `count` is seen.
    let n = count(|| {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}
