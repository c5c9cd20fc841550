//! Known-answer tests through the crypto backend trait: AES-GCM (McGrew & Viega, "The Galois/
//! Counter Mode of Operation", test cases with 96-bit IVs), AES-CBC (RFC 3602 §4), HMAC-SHA1
//! (RFC 2202 §3) and HMAC-SHA2 (RFC 4231 §4).

use esp::Integrity;
use esp::crypto::{AwsLc, Backend, CbcKey, DefaultBackend, GcmKey, MAX_MAC_LEN, MacKey};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

const P60: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
const P64: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const K128: &str = "feffe9928665731c6d6a8f9467308308";
const AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
const IV: &str = "cafebabefacedbaddecaf888";
const Z12: &str = "000000000000000000000000";

/// (name, key, iv, aad, plaintext, ciphertext, tag)
fn gcm_cases() -> Vec<(
    &'static str,
    String,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
)> {
    let k256 = format!("{K128}{K128}");
    vec![
        (
            "TC1",
            "0".repeat(32),
            Z12,
            "",
            "",
            "",
            "58e2fccefa7e3061367f1d57a4e7455a",
        ),
        (
            "TC2",
            "0".repeat(32),
            Z12,
            "",
            "00000000000000000000000000000000",
            "0388dace60b6a392f328c2b971b2fe78",
            "ab6e47d42cec13bdf53a67b21257bddf",
        ),
        (
            "TC3",
            K128.into(),
            IV,
            "",
            P64,
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
            "4d5c2af327cd64a62cf35abd2ba6fab4",
        ),
        (
            "TC4",
            K128.into(),
            IV,
            AAD,
            P60,
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            "5bc94fbc3221a5db94fae95ae7121a47",
        ),
        (
            "TC7",
            "0".repeat(48),
            Z12,
            "",
            "",
            "",
            "cd33b28ac773f74ba00ed1f312572435",
        ),
        (
            "TC8",
            "0".repeat(48),
            Z12,
            "",
            "00000000000000000000000000000000",
            "98e7247c07f0fe411c267e4384b0f600",
            "2ff58d80033927ab8ef4d4587514f0fb",
        ),
        (
            "TC13",
            "0".repeat(64),
            Z12,
            "",
            "",
            "",
            "530f8afbc74536b9a963b4f1c4cb738b",
        ),
        (
            "TC14",
            "0".repeat(64),
            Z12,
            "",
            "00000000000000000000000000000000",
            "cea7403d4d606b6e074ec5d3baf39d18",
            "d0d1c8a799996bf0265b98b5d48ab919",
        ),
        (
            "TC15",
            k256.clone(),
            IV,
            "",
            P64,
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            "b094dac5d93471bdec1a502270e3cc6c",
        ),
        (
            "TC16",
            k256,
            IV,
            AAD,
            P60,
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b",
        ),
    ]
}

#[test]
fn aes_gcm_spec_vectors() {
    for (name, key, iv, aad, pt, ct, tag) in gcm_cases() {
        let k = <DefaultBackend as Backend>::gcm(&h(&key)).unwrap();
        let nonce: [u8; 12] = h(iv).try_into().unwrap();
        let mut buf = h(pt);
        let mut t = [0u8; 16];
        k.seal(&nonce, &h(aad), &mut buf, &mut t).unwrap();
        assert_eq!(hex::encode(&buf), ct, "{name} ciphertext");
        assert_eq!(hex::encode(t), tag, "{name} tag");
        // And back, in place with the tag appended.
        buf.extend_from_slice(&t);
        k.open(&nonce, &h(aad), &mut buf).unwrap();
        assert_eq!(hex::encode(&buf[..buf.len() - 16]), pt, "{name} plaintext");
        // A flipped tag bit is refused.
        let mut bad = h(ct);
        let mut t2 = t;
        t2[15] ^= 1;
        bad.extend_from_slice(&t2);
        assert!(
            k.open(&nonce, &h(aad), &mut bad).is_err(),
            "{name} forged tag accepted"
        );
    }
}

#[test]
fn aes_cbc_rfc3602_vectors() {
    // RFC 3602 §4, cases #1 and #2 (AES-128-CBC).
    let cases = [
        (
            "06a9214036b8a15b512e03d534120006",
            "3dafba429d9eb430b422da802c9fac41",
            hex::encode(b"Single block msg"),
            "e353779c1079aeb82708942dbe77181a",
        ),
        (
            "c286696d887c9aa0611bbb3e2025a45a",
            "562e17996d093d28ddb3ba695a2e6f58",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".to_string(),
            "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
        ),
    ];
    for (key, iv, pt, ct) in cases {
        let k = AwsLc::cbc(&h(key)).unwrap();
        let iv: [u8; 16] = h(iv).try_into().unwrap();
        let mut buf = h(&pt);
        k.encrypt(&iv, &mut buf).unwrap();
        assert_eq!(hex::encode(&buf), ct);
        k.decrypt(&iv, &mut buf).unwrap();
        assert_eq!(hex::encode(&buf), pt);
        // Unaligned input is an error, not a panic.
        assert!(k.encrypt(&iv, &mut [0u8; 15]).is_err());
    }
}

fn mac(alg: Integrity, key: &[u8], data: &[u8]) -> String {
    let k = <DefaultBackend as Backend>::mac(alg, key).unwrap();
    let mut out = [0u8; MAX_MAC_LEN];
    // Split the message to exercise the multi-part interface.
    let (a, b) = data.split_at(data.len() / 2);
    let n = k.mac(&[a, b], &mut out);
    hex::encode(&out[..n])
}

#[test]
fn hmac_sha1_rfc2202_vectors() {
    let s = Integrity::HmacSha1_96;
    assert_eq!(
        mac(s, &[0x0b; 20], b"Hi There"),
        "b617318655057264e28bc0b6fb378c8ef146be00"
    );
    assert_eq!(
        mac(s, b"Jefe", b"what do ya want for nothing?"),
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    );
    assert_eq!(
        mac(s, &[0xaa; 20], &[0xdd; 50]),
        "125d7342b9ac11cd91a39af48aa17b4f63f175d3"
    );
    assert_eq!(
        mac(
            s,
            &[0xaa; 80],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        ),
        "aa4ae5e15272d00e95705637ce8a3b55ed402112"
    );
}

#[test]
fn hmac_sha2_rfc4231_vectors() {
    let (s256, s384, s512) = (
        Integrity::HmacSha256_128,
        Integrity::HmacSha384_192,
        Integrity::HmacSha512_256,
    );
    // Test case 1.
    assert_eq!(
        mac(s256, &[0x0b; 20], b"Hi There"),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    assert_eq!(
        mac(s384, &[0x0b; 20], b"Hi There"),
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"
    );
    assert_eq!(
        mac(s512, &[0x0b; 20], b"Hi There"),
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
    );
    // Test case 2.
    let (k, d) = (b"Jefe", b"what do ya want for nothing?");
    assert_eq!(
        mac(s256, k, d),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        mac(s384, k, d),
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"
    );
    assert_eq!(
        mac(s512, k, d),
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    );
    // Test case 3.
    assert_eq!(
        mac(s256, &[0xaa; 20], &[0xdd; 50]),
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"
    );
    assert_eq!(
        mac(s384, &[0xaa; 20], &[0xdd; 50]),
        "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27"
    );
    assert_eq!(
        mac(s512, &[0xaa; 20], &[0xdd; 50]),
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb"
    );
    // Test case 5 (truncation to 128 bits is what ESP does with SHA-256).
    assert!(
        mac(s256, &[0x0c; 20], b"Test With Truncation")
            .starts_with("a3b6167473100ee06e0c796c2955552b")
    );
    // Test case 6 (key longer than the block).
    let d6 = b"Test Using Larger Than Block-Size Key - Hash Key First";
    assert_eq!(
        mac(s256, &[0xaa; 131], d6),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
    assert_eq!(
        mac(s384, &[0xaa; 131], d6),
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952"
    );
    assert_eq!(
        mac(s512, &[0xaa; 131], d6),
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"
    );
}
