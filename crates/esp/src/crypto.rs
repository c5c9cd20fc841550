//! The crypto backend trait and its aws-lc-rs implementation: AES-GCM (RFC 4106 §3, GCM spec),
//! AES-CBC (RFC 3602 §2) and HMAC (RFC 2104, RFC 2404, RFC 4868).
//!
//! The ESP code only sees the three key traits below; [`DefaultBackend`] is the one place where
//! the implementation is chosen (see `benches/README.md` for why aws-lc-rs). Keys are expanded
//! once when the SA is built, never per packet, and every operation works in place on caller
//! memory without allocating.

use crate::algo::{AES_BLOCK_LEN, GCM_ICV_LEN, Integrity};

/// Errors from the backend. Carries no detail on purpose (no oracle for attackers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The key had the wrong length or was refused by the backend.
    #[error("key rejected")]
    BadKey,
    /// Authentication (tag or ICV) failed.
    #[error("authentication failed")]
    AuthFailed,
    /// Input length was invalid for the operation (for example, not block aligned).
    #[error("invalid input length")]
    BadLength,
}

/// Largest full HMAC output (SHA-512).
pub const MAX_MAC_LEN: usize = 64;

/// An expanded AES-GCM key with a 16-byte tag.
pub trait GcmKey: Send + Sync {
    /// Encrypts `in_out` in place and writes the tag to `tag` (straight into the packet: a
    /// tag returned by value inside a `Result` costs store-forwarding stalls per packet).
    fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; GCM_ICV_LEN],
    ) -> Result<(), CryptoError>;
    /// Checks the tag (the last 16 bytes of `ciphertext_and_tag`) and decrypts the rest in place.
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext_and_tag: &mut [u8],
    ) -> Result<(), CryptoError>;
}

/// An expanded AES key for CBC mode without padding.
pub trait CbcKey: Send + Sync {
    /// CBC-encrypts `data` (a multiple of 16 bytes) in place.
    fn encrypt(&self, iv: &[u8; AES_BLOCK_LEN], data: &mut [u8]) -> Result<(), CryptoError>;
    /// CBC-decrypts `data` (a multiple of 16 bytes) in place.
    fn decrypt(&self, iv: &[u8; AES_BLOCK_LEN], data: &mut [u8]) -> Result<(), CryptoError>;
    /// Encrypts one block with the raw block cipher (used to derive unpredictable CBC IVs from a
    /// nonce, NIST SP 800-38A Appendix C).
    fn encrypt_block(&self, block: &mut [u8; AES_BLOCK_LEN]) -> Result<(), CryptoError>;
}

/// An HMAC key with its inner and outer pad state precomputed.
pub trait MacKey: Send + Sync {
    /// Computes the full (untruncated) HMAC over the concatenation of `parts` into `out` and
    /// returns its length.
    fn mac(&self, parts: &[&[u8]], out: &mut [u8; MAX_MAC_LEN]) -> usize;
}

/// A crypto backend: constructors for the three key types.
pub trait Backend {
    /// AES-GCM key type.
    type Gcm: GcmKey + 'static;
    /// AES-CBC key type.
    type Cbc: CbcKey + 'static;
    /// HMAC key type.
    type Mac: MacKey + 'static;
    /// Expands an AES-GCM key of 16, 24 or 32 bytes (salt excluded).
    fn gcm(key: &[u8]) -> Result<Self::Gcm, CryptoError>;
    /// Expands an AES key of 16, 24 or 32 bytes for CBC.
    fn cbc(key: &[u8]) -> Result<Self::Cbc, CryptoError>;
    /// Builds an HMAC key for one of the HMAC integrity algorithms.
    fn mac(alg: Integrity, key: &[u8]) -> Result<Self::Mac, CryptoError>;
}

/// Compares two byte strings in constant time (for ICVs).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// The backend the SAs use.
pub type DefaultBackend = AwsLc;

/// The aws-lc-rs backend.
#[derive(Debug, Clone, Copy)]
pub struct AwsLc;

/// aws-lc-rs AES-GCM key.
pub struct AwsLcGcm(aws_lc_rs::aead::LessSafeKey);

impl core::fmt::Debug for AwsLcGcm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AwsLcGcm(..)")
    }
}

impl GcmKey for AwsLcGcm {
    #[inline]
    fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag_out: &mut [u8; GCM_ICV_LEN],
    ) -> Result<(), CryptoError> {
        use aws_lc_rs::aead::{Aad, Nonce};
        // A plain match: no intermediate `Result<Tag, _>` is materialised and moved.
        match self.0.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            in_out,
        ) {
            Ok(tag) => {
                tag_out.copy_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => Err(CryptoError::BadLength),
        }
    }

    #[inline]
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext_and_tag: &mut [u8],
    ) -> Result<(), CryptoError> {
        use aws_lc_rs::aead::{Aad, Nonce};
        if ciphertext_and_tag.len() < GCM_ICV_LEN {
            return Err(CryptoError::BadLength);
        }
        self.0
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                ciphertext_and_tag,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::AuthFailed)
    }
}

/// aws-lc-rs AES-CBC key (with an ECB key of the same AES key for IV derivation).
pub struct AwsLcCbc {
    enc: aws_lc_rs::cipher::EncryptingKey,
    dec: aws_lc_rs::cipher::DecryptingKey,
    ecb: aws_lc_rs::cipher::EncryptingKey,
}

impl core::fmt::Debug for AwsLcCbc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AwsLcCbc(..)")
    }
}

impl CbcKey for AwsLcCbc {
    #[inline]
    fn encrypt(&self, iv: &[u8; AES_BLOCK_LEN], data: &mut [u8]) -> Result<(), CryptoError> {
        use aws_lc_rs::cipher::EncryptionContext;
        use aws_lc_rs::iv::FixedLength;
        if !data.len().is_multiple_of(AES_BLOCK_LEN) {
            return Err(CryptoError::BadLength);
        }
        self.enc
            .less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(iv)))
            .map(|_| ())
            .map_err(|_| CryptoError::BadLength)
    }

    #[inline]
    fn decrypt(&self, iv: &[u8; AES_BLOCK_LEN], data: &mut [u8]) -> Result<(), CryptoError> {
        use aws_lc_rs::cipher::DecryptionContext;
        use aws_lc_rs::iv::FixedLength;
        if !data.len().is_multiple_of(AES_BLOCK_LEN) {
            return Err(CryptoError::BadLength);
        }
        self.dec
            .decrypt(data, DecryptionContext::Iv128(FixedLength::from(iv)))
            .map(|_| ())
            .map_err(|_| CryptoError::BadLength)
    }

    #[inline]
    fn encrypt_block(&self, block: &mut [u8; AES_BLOCK_LEN]) -> Result<(), CryptoError> {
        use aws_lc_rs::cipher::EncryptionContext;
        self.ecb
            .less_safe_encrypt(block, EncryptionContext::None)
            .map(|_| ())
            .map_err(|_| CryptoError::BadLength)
    }
}

/// aws-lc-rs HMAC key.
pub struct AwsLcMac(aws_lc_rs::hmac::Key);

impl core::fmt::Debug for AwsLcMac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AwsLcMac(..)")
    }
}

impl MacKey for AwsLcMac {
    #[inline]
    fn mac(&self, parts: &[&[u8]], out: &mut [u8; MAX_MAC_LEN]) -> usize {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(p);
        }
        let tag = ctx.sign();
        let t = tag.as_ref();
        let n = t.len().min(MAX_MAC_LEN);
        if let (Some(dst), Some(src)) = (out.get_mut(..n), t.get(..n)) {
            dst.copy_from_slice(src);
        }
        n
    }
}

fn aes_alg(key: &[u8]) -> Result<&'static aws_lc_rs::cipher::Algorithm, CryptoError> {
    match key.len() {
        16 => Ok(&aws_lc_rs::cipher::AES_128),
        24 => Ok(&aws_lc_rs::cipher::AES_192),
        32 => Ok(&aws_lc_rs::cipher::AES_256),
        _ => Err(CryptoError::BadKey),
    }
}

impl Backend for AwsLc {
    type Gcm = AwsLcGcm;
    type Cbc = AwsLcCbc;
    type Mac = AwsLcMac;

    fn gcm(key: &[u8]) -> Result<AwsLcGcm, CryptoError> {
        use aws_lc_rs::aead::{AES_128_GCM, AES_192_GCM, AES_256_GCM, LessSafeKey, UnboundKey};
        let alg = match key.len() {
            16 => &AES_128_GCM,
            24 => &AES_192_GCM,
            32 => &AES_256_GCM,
            _ => return Err(CryptoError::BadKey),
        };
        let k = UnboundKey::new(alg, key).map_err(|_| CryptoError::BadKey)?;
        Ok(AwsLcGcm(LessSafeKey::new(k)))
    }

    fn cbc(key: &[u8]) -> Result<AwsLcCbc, CryptoError> {
        use aws_lc_rs::cipher::{DecryptingKey, EncryptingKey, UnboundCipherKey};
        let alg = aes_alg(key)?;
        let k = |_: ()| UnboundCipherKey::new(alg, key).map_err(|_| CryptoError::BadKey);
        Ok(AwsLcCbc {
            enc: EncryptingKey::cbc(k(())?).map_err(|_| CryptoError::BadKey)?,
            dec: DecryptingKey::cbc(k(())?).map_err(|_| CryptoError::BadKey)?,
            ecb: EncryptingKey::ecb(k(())?).map_err(|_| CryptoError::BadKey)?,
        })
    }

    fn mac(alg: Integrity, key: &[u8]) -> Result<AwsLcMac, CryptoError> {
        use aws_lc_rs::hmac;
        let a = match alg {
            Integrity::HmacSha1_96 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Integrity::HmacSha256_128 => hmac::HMAC_SHA256,
            Integrity::HmacSha384_192 => hmac::HMAC_SHA384,
            Integrity::HmacSha512_256 => hmac::HMAC_SHA512,
            Integrity::None => return Err(CryptoError::BadKey),
        };
        Ok(AwsLcMac(hmac::Key::new(a, key)))
    }
}
