//! ESP seal/open (RFC 4303, RFC 4106, RFC 3602 + RFC 4868) against the raw cipher on the same
//! lengths, side by side in one criterion group per suite and payload length.
//!
//! Run: `cargo bench --bench esp -- --warm-up-time 1 --measurement-time 3`
//! (see benches/README.md for the measured ratios).
//!
//! Open is measured with `iter_batched`: each timed call gets a freshly sealed packet with a new
//! sequence number (sealing happens in the untimed setup), so the anti-replay check runs for
//! real; the raw baselines are measured the same way.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use esp::algo::NEXT_HEADER_IPV4;
use esp::{Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, SaConfig};

const SIZES: [usize; 4] = [64, 512, 1400, 8900];
const KEY: [u8; 32] = [0x42; 32];
const SALT: [u8; 4] = [1, 2, 3, 4];
const HMAC_KEY: [u8; 32] = [0x17; 32];

fn nonce_from(counter: &AtomicU64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&SALT);
    n[4..].copy_from_slice(&counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    n
}

/// A payload that is a plausible IPv4 packet of `len` bytes (the open path checks it).
fn inner(len: usize) -> Vec<u8> {
    let mut p = vec![0xa5u8; len];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

fn esp_pair(cipher: Cipher, integ: Integrity) -> (OutboundSa, InboundSa) {
    let mut ek = KEY[..cipher.aes_key_len()].to_vec();
    if cipher.is_aead() {
        ek.extend_from_slice(&SALT);
    }
    let ik = if integ == Integrity::None {
        Vec::new()
    } else {
        HMAC_KEY.to_vec()
    };
    let cfg = SaConfig::new(
        0x1000_0001,
        cipher,
        integ,
        KeyMaterial::new(ek),
        KeyMaterial::new(ik),
    );
    (
        OutboundSa::new(&cfg).unwrap(),
        InboundSa::new(&cfg).unwrap(),
    )
}

fn bench_esp(c: &mut Criterion, name: &str, cipher: Cipher, integ: Integrity) {
    let (tx, rx) = esp_pair(cipher, integ);
    for &size in &SIZES {
        let mut g = c.benchmark_group(format!("{name}/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let h = tx.headroom();
        let mut buf = vec![0u8; h + size + tx.max_tailroom()];
        buf[h..h + size].copy_from_slice(&inner(size));
        g.bench_function(BenchmarkId::new("esp_seal", size), |b| {
            b.iter(|| {
                black_box(
                    tx.seal(black_box(&mut buf), h..h + size, NEXT_HEADER_IPV4)
                        .unwrap(),
                )
            })
        });
        let payload = inner(size);
        g.bench_function(BenchmarkId::new("esp_open", size), |b| {
            b.iter_batched(
                || {
                    let mut v = vec![0u8; h + size + tx.max_tailroom()];
                    v[h..h + size].copy_from_slice(&payload);
                    let r = tx.seal(&mut v, h..h + size, NEXT_HEADER_IPV4).unwrap();
                    v.truncate(r.end);
                    v
                },
                |mut p| {
                    let _ = black_box(rx.open(&mut p).unwrap());
                    p
                },
                BatchSize::SmallInput,
            )
        });
        match cipher {
            Cipher::AesGcm16_256 => raw_gcm(&mut g, size),
            _ => raw_cbc_hmac(&mut g, size),
        }
        g.finish();
    }
}

fn raw_gcm(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, size: usize) {
    let aad = [0u8; 8];
    // aws-lc-rs
    {
        use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
        let ctr = AtomicU64::new(0);
        let mut buf = vec![0u8; size];
        g.bench_function(BenchmarkId::new("raw_awslc_seal", size), |b| {
            b.iter(|| {
                let n = Nonce::assume_unique_for_key(nonce_from(&ctr));
                black_box(
                    key.seal_in_place_separate_tag(n, Aad::from(&aad), black_box(&mut buf))
                        .unwrap(),
                )
            })
        });
        g.bench_function(BenchmarkId::new("raw_awslc_open", size), |b| {
            b.iter_batched(
                || {
                    let n = nonce_from(&ctr);
                    let mut v = vec![0u8; size];
                    let t = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(n),
                            Aad::from(&aad),
                            &mut v,
                        )
                        .unwrap();
                    v.extend_from_slice(t.as_ref());
                    (n, v)
                },
                |(n, mut v)| {
                    let _ = black_box(
                        key.open_in_place(Nonce::assume_unique_for_key(n), Aad::from(&aad), &mut v)
                            .unwrap(),
                    );
                    v
                },
                BatchSize::SmallInput,
            )
        });
    }
    // ring
    {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
        let ctr = AtomicU64::new(0);
        let mut buf = vec![0u8; size];
        g.bench_function(BenchmarkId::new("raw_ring_seal", size), |b| {
            b.iter(|| {
                let n = Nonce::assume_unique_for_key(nonce_from(&ctr));
                black_box(
                    key.seal_in_place_separate_tag(n, Aad::from(&aad), black_box(&mut buf))
                        .unwrap(),
                )
            })
        });
    }
    // RustCrypto aes-gcm
    {
        use aes_gcm::aead::AeadInPlace;
        use aes_gcm::{Aes256Gcm, KeyInit};
        let key = Aes256Gcm::new_from_slice(&KEY).unwrap();
        let ctr = AtomicU64::new(0);
        let mut buf = vec![0u8; size];
        g.bench_function(BenchmarkId::new("raw_rustcrypto_seal", size), |b| {
            b.iter(|| {
                let n = nonce_from(&ctr);
                black_box(
                    key.encrypt_in_place_detached((&n).into(), &aad, black_box(&mut buf))
                        .unwrap(),
                )
            })
        });
    }
}

/// AES-256-CBC then HMAC-SHA-256 over the same length, straight through aws-lc-rs.
fn raw_cbc_hmac(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    size: usize,
) {
    use aws_lc_rs::cipher::{
        AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
        UnboundCipherKey,
    };
    use aws_lc_rs::hmac;
    use aws_lc_rs::iv::FixedLength;
    let enc = EncryptingKey::cbc(UnboundCipherKey::new(&AES_256, &KEY).unwrap()).unwrap();
    let dec = DecryptingKey::cbc(UnboundCipherKey::new(&AES_256, &KEY).unwrap()).unwrap();
    let mac = hmac::Key::new(hmac::HMAC_SHA256, &HMAC_KEY);
    // The same number of blocks ESP encrypts: payload + 2-byte trailer, padded to 16.
    let len = (size + 2).div_ceil(16) * 16;
    let iv = [7u8; 16];
    let mut buf = vec![0u8; len];
    g.bench_function(BenchmarkId::new("raw_awslc_seal", size), |b| {
        b.iter(|| {
            enc.less_safe_encrypt(
                black_box(&mut buf),
                EncryptionContext::Iv128(FixedLength::from(&iv)),
            )
            .unwrap();
            black_box(hmac::sign(&mac, &buf))
        })
    });
    g.bench_function(BenchmarkId::new("raw_awslc_open", size), |b| {
        b.iter_batched(
            || {
                let mut v = vec![0u8; len];
                enc.less_safe_encrypt(&mut v, EncryptionContext::Iv128(FixedLength::from(&iv)))
                    .unwrap();
                let t = hmac::sign(&mac, &v);
                (v, t)
            },
            |(mut v, t)| {
                hmac::verify(&mac, &v, t.as_ref()).unwrap();
                let _ = black_box(
                    dec.decrypt(&mut v, DecryptionContext::Iv128(FixedLength::from(&iv)))
                        .unwrap(),
                );
                v
            },
            BatchSize::SmallInput,
        )
    });
}

/// Paired, interleaved measurement for the ratio table: for each variant, many short batches
/// alternate with the other variants and the fastest batch counts. On a shared, loaded machine
/// the minimum of short interleaved batches is far more stable than means taken one after the
/// other, and both sides of a ratio see the same conditions.
mod paired {
    use std::time::Instant;

    /// Prepares a batch of `n` items (untimed).
    pub type Setup<'a> = Box<dyn FnMut(usize) -> Vec<Vec<u8>> + 'a>;
    /// One timed operation on one prepared item.
    pub type Run<'a> = Box<dyn FnMut(&mut Vec<u8>) + 'a>;

    pub struct Variant<'a> {
        pub name: &'static str,
        /// Prepares a batch (untimed), returns its state.
        pub setup: Setup<'a>,
        /// Runs one operation on one prepared item (timed).
        pub run: Run<'a>,
    }

    /// Returns the best ns per operation for each variant.
    pub fn measure(variants: &mut [Variant<'_>], batch: usize, rounds: usize) -> Vec<f64> {
        let mut best = vec![f64::INFINITY; variants.len()];
        for _ in 0..rounds {
            for (i, v) in variants.iter_mut().enumerate() {
                let mut items = (v.setup)(batch);
                let t = Instant::now();
                for it in items.iter_mut() {
                    (v.run)(it);
                }
                let ns = t.elapsed().as_nanos() as f64 / batch as f64;
                best[i] = best[i].min(ns);
                std::hint::black_box(&items);
            }
        }
        best
    }
}

fn paired_table() {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use paired::Variant;
    let rounds: usize = std::env::var("ESP_PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    println!(
        "\n## paired ratio table (min of {rounds} interleaved batches; ours / raw aws-lc-rs)\n"
    );
    println!(
        "| suite | payload | ESP seal GB/s | raw seal GB/s | seal ratio | ESP open GB/s | raw open GB/s | open ratio | ring seal GB/s | RustCrypto seal GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let aad = [0u8; 8];
    for (name, cipher, integ) in [
        ("AES-256-GCM-16", Cipher::AesGcm16_256, Integrity::None),
        (
            "AES-256-CBC + HMAC-SHA2-256-128",
            Cipher::AesCbc256,
            Integrity::HmacSha256_128,
        ),
    ] {
        for &size in &SIZES {
            let (tx, rx) = esp_pair(cipher, integ);
            let h = tx.headroom();
            let payload = inner(size);
            let frame = {
                let mut v = vec![0u8; h + size + tx.max_tailroom()];
                v[h..h + size].copy_from_slice(&payload);
                v
            };
            let batch = (16_000 / (size + 64)).clamp(4, 64);
            let ctr = AtomicU64::new(0);
            let gcm = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
            let ring_key = ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &KEY).unwrap(),
            );
            let rc = {
                use aes_gcm::KeyInit;
                aes_gcm::Aes256Gcm::new_from_slice(&KEY).unwrap()
            };
            use aws_lc_rs::cipher::{
                AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
                UnboundCipherKey,
            };
            use aws_lc_rs::iv::FixedLength;
            let enc = EncryptingKey::cbc(UnboundCipherKey::new(&AES_256, &KEY).unwrap()).unwrap();
            let dec = DecryptingKey::cbc(UnboundCipherKey::new(&AES_256, &KEY).unwrap()).unwrap();
            let mac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &HMAC_KEY);
            let cbc_len = (size + 2).div_ceil(16) * 16;
            let iv = [7u8; 16];
            let gcm_nonce = |v: &[u8]| -> [u8; 12] { v[v.len() - 12..].try_into().unwrap() };
            let mut vs: Vec<Variant<'_>> = vec![
                Variant {
                    name: "esp_seal",
                    setup: Box::new(|n| vec![frame.clone(); n]),
                    run: Box::new(|b| {
                        let _ = black_box(tx.seal(b, h..h + size, NEXT_HEADER_IPV4).unwrap());
                    }),
                },
                Variant {
                    name: "esp_open",
                    setup: Box::new(|n| {
                        (0..n)
                            .map(|_| {
                                let mut v = frame.clone();
                                let r = tx.seal(&mut v, h..h + size, NEXT_HEADER_IPV4).unwrap();
                                v.truncate(r.end);
                                v
                            })
                            .collect()
                    }),
                    run: Box::new(|p| {
                        let _ = black_box(rx.open(p).unwrap());
                    }),
                },
            ];
            if cipher.is_aead() {
                vs.push(Variant {
                    name: "raw_seal",
                    setup: Box::new(|n| (0..n).map(|_| vec![0u8; size]).collect()),
                    run: Box::new(|b| {
                        let nn = Nonce::assume_unique_for_key(nonce_from(&ctr));
                        let _ = black_box(
                            gcm.seal_in_place_separate_tag(nn, Aad::from(&aad), b)
                                .unwrap(),
                        );
                    }),
                });
                vs.push(Variant {
                    name: "raw_open",
                    setup: Box::new(|n| {
                        (0..n)
                            .map(|_| {
                                let nn = nonce_from(&ctr);
                                let mut v = vec![0u8; size];
                                let t = gcm
                                    .seal_in_place_separate_tag(
                                        Nonce::assume_unique_for_key(nn),
                                        Aad::from(&aad),
                                        &mut v,
                                    )
                                    .unwrap();
                                v.extend_from_slice(t.as_ref());
                                v.extend_from_slice(&nn); // carried at the end, stripped below
                                v
                            })
                            .collect()
                    }),
                    run: Box::new(|v| {
                        let nn = gcm_nonce(v);
                        let l = v.len() - 12;
                        let _ = black_box(
                            gcm.open_in_place(
                                Nonce::assume_unique_for_key(nn),
                                Aad::from(&aad),
                                &mut v[..l],
                            )
                            .unwrap(),
                        );
                    }),
                });
                vs.push(Variant {
                    name: "ring_seal",
                    setup: Box::new(|n| (0..n).map(|_| vec![0u8; size]).collect()),
                    run: Box::new(|b| {
                        let nn = ring::aead::Nonce::assume_unique_for_key(nonce_from(&ctr));
                        let _ = black_box(
                            ring_key
                                .seal_in_place_separate_tag(nn, ring::aead::Aad::from(&aad), b)
                                .unwrap(),
                        );
                    }),
                });
                vs.push(Variant {
                    name: "rustcrypto_seal",
                    setup: Box::new(|n| (0..n).map(|_| vec![0u8; size]).collect()),
                    run: Box::new(|b| {
                        use aes_gcm::aead::AeadInPlace;
                        let nn = nonce_from(&ctr);
                        let _ =
                            black_box(rc.encrypt_in_place_detached((&nn).into(), &aad, b).unwrap());
                    }),
                });
            } else {
                vs.push(Variant {
                    name: "raw_seal",
                    setup: Box::new(|n| (0..n).map(|_| vec![0u8; cbc_len]).collect()),
                    run: Box::new(|b| {
                        enc.less_safe_encrypt(b, EncryptionContext::Iv128(FixedLength::from(&iv)))
                            .unwrap();
                        let _ = black_box(aws_lc_rs::hmac::sign(&mac, b));
                    }),
                });
                vs.push(Variant {
                    name: "raw_open",
                    setup: Box::new(|n| {
                        (0..n)
                            .map(|_| {
                                let mut v = vec![0u8; cbc_len];
                                enc.less_safe_encrypt(
                                    &mut v,
                                    EncryptionContext::Iv128(FixedLength::from(&iv)),
                                )
                                .unwrap();
                                let t = aws_lc_rs::hmac::sign(&mac, &v);
                                v.extend_from_slice(&t.as_ref()[..16]);
                                v
                            })
                            .collect()
                    }),
                    run: Box::new(|v| {
                        let (ct, tag) = v.split_at_mut(cbc_len);
                        let t = aws_lc_rs::hmac::sign(&mac, ct);
                        assert!(
                            aws_lc_rs::constant_time::verify_slices_are_equal(
                                &t.as_ref()[..16],
                                tag
                            )
                            .is_ok()
                        );
                        let _ = black_box(
                            dec.decrypt(ct, DecryptionContext::Iv128(FixedLength::from(&iv)))
                                .unwrap(),
                        );
                    }),
                });
            }
            let best = paired::measure(&mut vs, batch, rounds);
            let g = |n: &str| {
                vs.iter()
                    .position(|v| v.name == n)
                    .map(|i| size as f64 / best[i])
                    .unwrap_or(f64::NAN)
            };
            let (es, rs, eo, ro) = (g("esp_seal"), g("raw_seal"), g("esp_open"), g("raw_open"));
            let opt = |x: f64| {
                if x.is_nan() {
                    "-".to_string()
                } else {
                    format!("{x:.2}")
                }
            };
            println!(
                "| {name} | {size} | {es:.2} | {rs:.2} | {:.2} | {eo:.2} | {ro:.2} | {:.2} | {} | {} |",
                es / rs,
                eo / ro,
                opt(g("ring_seal")),
                opt(g("rustcrypto_seal"))
            );
        }
    }
    println!();
}

fn benches(c: &mut Criterion) {
    // Only under `cargo bench` (which passes `--bench`), not when `cargo test --all-targets`
    // runs each benchmark once as a smoke test.
    if std::env::args().any(|a| a == "--bench") {
        paired_table();
    }
    bench_esp(c, "aes256gcm16", Cipher::AesGcm16_256, Integrity::None);
    bench_esp(
        c,
        "aes256cbc-sha256",
        Cipher::AesCbc256,
        Integrity::HmacSha256_128,
    );
}

criterion_group!(esp_benches, benches);
criterion_main!(esp_benches);
