//! Fuzz target for the ESP inbound path: RFC 3948 UDP-4500 demux, SA lookup by SPI and RFC 4303
//! open (replay check, ICV, decryption, trailer and inner packet checks) on arbitrary bytes.
//!
//! The database holds one SA per suite whose SPIs are 0x100..; the first input byte picks an
//! SPI to write over the packet's SPI field (so lookups hit an SA as often as they miss), the
//! rest is the UDP payload. A second phase seals the input as a payload and opens it again, so
//! the success path is exercised too.
#![no_main]

use std::sync::{Arc, OnceLock};

use esp::algo::{NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use esp::{
    Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, Received, SaConfig, SaDatabase,
    classify_udp4500,
};
use libfuzzer_sys::fuzz_target;

struct World {
    db: SaDatabase,
    tx: Vec<OutboundSa>,
}

fn suites() -> Vec<(Cipher, Integrity, bool)> {
    vec![
        (Cipher::AesGcm16_256, Integrity::None, false),
        (Cipher::AesGcm16_128, Integrity::None, true),
        (Cipher::AesCbc256, Integrity::HmacSha256_128, false),
        (Cipher::AesCbc128, Integrity::HmacSha1_96, true),
        (Cipher::AesCbc192, Integrity::HmacSha512_256, false),
    ]
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut db = SaDatabase::new();
        let mut tx = Vec::new();
        for (i, (c, integ, esn)) in suites().into_iter().enumerate() {
            let mut cfg = SaConfig::new(
                0x100 + i as u32,
                c,
                integ,
                KeyMaterial::new(vec![i as u8; c.keymat_len()]),
                KeyMaterial::new(vec![0x40 + i as u8; integ.key_len()]),
            );
            cfg.esn = esn;
            cfg.replay_window = 64;
            db.insert_inbound(Arc::new(InboundSa::new(&cfg).unwrap()), None);
            tx.push(OutboundSa::new(&cfg).unwrap());
        }
        World { db, tx }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Phase 1: hostile bytes through demux + lookup + open.
    let mut pkt = rest.to_vec();
    if sel & 0x80 != 0 && pkt.len() >= 4 {
        let spi = 0x100 + u32::from(sel & 0x7f) % w.tx.len() as u32;
        pkt[..4].copy_from_slice(&spi.to_be_bytes());
    }
    let _ = classify_udp4500(&pkt);
    if let Ok(Received::Esp { opened, .. }) = w.db.receive_udp4500(&mut pkt) {
        assert!(opened.inner.end <= pkt.len());
    }

    // Phase 2: the input as a payload, sealed and opened by the same SA pair.
    let Some(tx) = w.tx.get(usize::from(sel) % w.tx.len()) else {
        return;
    };
    let h = tx.headroom();
    let mut buf = vec![0u8; h + rest.len() + tx.max_tailroom()];
    buf[h..h + rest.len()].copy_from_slice(rest);
    let nh = if sel & 1 == 0 { NEXT_HEADER_IPV4 } else { NEXT_HEADER_IPV6 };
    if let Ok(r) = tx.seal(&mut buf, h..h + rest.len(), nh) {
        let p = &mut buf[r];
        if let Ok(Received::Esp { opened, .. }) = w.db.receive_udp4500(p) {
            assert_eq!(opened.next_header, nh);
            assert!(rest.starts_with(&p[opened.inner]));
        }
    }
});
