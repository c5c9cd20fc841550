//! Shared helpers for the ESP integration tests: suites, keys and inner packets.
#![allow(dead_code)]

use esp::{Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, SaConfig};

/// Every cipher/integrity combination the crate supports.
pub fn all_suites() -> Vec<(Cipher, Integrity)> {
    let mut v = Vec::new();
    for c in Cipher::ALL {
        if c.is_aead() {
            v.push((c, Integrity::None));
        } else {
            for i in Integrity::ALL_HMAC {
                v.push((c, i));
            }
        }
    }
    v
}

/// A config with deterministic keys derived from `seed`.
pub fn config(spi: u32, cipher: Cipher, integ: Integrity, esn: bool, seed: u8) -> SaConfig {
    let ek: Vec<u8> = (0..cipher.keymat_len())
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    let ik: Vec<u8> = (0..integ.key_len())
        .map(|i| seed.wrapping_add(0x55).wrapping_add(i as u8 * 3))
        .collect();
    let mut c = SaConfig::new(
        spi,
        cipher,
        integ,
        KeyMaterial::new(ek),
        KeyMaterial::new(ik),
    );
    c.esn = esn;
    c
}

/// Outbound and inbound SA built from the same config.
pub fn pair(cfg: &SaConfig) -> (OutboundSa, InboundSa) {
    (OutboundSa::new(cfg).unwrap(), InboundSa::new(cfg).unwrap())
}

/// An IPv4 packet of exactly `len` (>= 20) bytes from 198.18.0.1 to 198.19.0.1, protocol 253
/// (experimental), payload bytes from `fill`.
pub fn ipv4_packet(len: usize, fill: u8) -> Vec<u8> {
    assert!(len >= 20);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&[198, 18, 0, 1]);
    p[16..20].copy_from_slice(&[198, 19, 0, 1]);
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = fill.wrapping_add(i as u8);
    }
    p
}

/// A buffer with `inner` placed after the SA's headroom and enough tailroom; returns the
/// buffer and the payload range.
pub fn framed(sa: &OutboundSa, inner: &[u8]) -> (Vec<u8>, core::ops::Range<usize>) {
    let h = sa.headroom();
    let mut buf = vec![0u8; h + inner.len() + sa.max_tailroom()];
    buf[h..h + inner.len()].copy_from_slice(inner);
    (buf, h..h + inner.len())
}

/// Seals `inner` and returns the ESP packet bytes.
pub fn seal_packet(sa: &OutboundSa, inner: &[u8], nh: u8) -> Vec<u8> {
    let (mut buf, range) = framed(sa, inner);
    let r = sa.seal(&mut buf, range, nh).unwrap();
    buf[r].to_vec()
}
