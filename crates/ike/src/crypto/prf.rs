//! The IKEv2 pseudo-random function and prf+ (RFC 7296 §2.13) over HMAC-SHA1
//! (RFC 2104) and HMAC-SHA2-256/384/512 (RFC 4868).

use super::{CryptoError, SecretBytes};
use crate::transform::PrfId;
use aws_lc_rs::hmac;

/// A negotiated PRF transform.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Prf {
    id: PrfId,
    alg: hmac::Algorithm,
}

impl core::fmt::Debug for Prf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Prf({})", self.id)
    }
}

impl Prf {
    /// The PRF for a transform ID; `Unsupported` for anything but HMAC-SHA1/SHA2.
    pub fn new(id: PrfId) -> Result<Self, CryptoError> {
        let alg = match id {
            PrfId::PRF_HMAC_SHA1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            PrfId::PRF_HMAC_SHA2_256 => hmac::HMAC_SHA256,
            PrfId::PRF_HMAC_SHA2_384 => hmac::HMAC_SHA384,
            PrfId::PRF_HMAC_SHA2_512 => hmac::HMAC_SHA512,
            other => return Err(CryptoError::Unsupported(format!("PRF {other}"))),
        };
        Ok(Self { id, alg })
    }

    /// The transform ID.
    pub fn id(&self) -> PrfId {
        self.id
    }

    /// Output length in octets.
    pub fn output_len(&self) -> usize {
        self.alg.digest_algorithm().output_len
    }

    /// Preferred key length (length of SK_d, SK_pi, SK_pr): the output length for HMAC.
    pub fn key_len(&self) -> usize {
        self.output_len()
    }

    /// prf(key, data).
    pub fn prf(&self, key: &[u8], data: &[u8]) -> SecretBytes {
        self.prf_parts(key, &[data])
    }

    /// prf(key, parts[0] | parts[1] | ...) without concatenating the parts.
    pub fn prf_parts(&self, key: &[u8], parts: &[&[u8]]) -> SecretBytes {
        let k = hmac::Key::new(self.alg, key);
        let mut ctx = hmac::Context::with_key(&k);
        for p in parts {
            ctx.update(p);
        }
        SecretBytes::from_slice(ctx.sign().as_ref())
    }

    /// prf+(key, seed) truncated to `len` octets (RFC 7296 §2.13):
    /// T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), at most 255 blocks.
    pub fn prf_plus(
        &self,
        key: &[u8],
        seed: &[u8],
        len: usize,
    ) -> Result<SecretBytes, CryptoError> {
        self.prf_plus_parts(key, &[seed], len)
    }

    /// prf+ with the seed given as parts that are logically concatenated.
    pub fn prf_plus_parts(
        &self,
        key: &[u8],
        seed: &[&[u8]],
        len: usize,
    ) -> Result<SecretBytes, CryptoError> {
        let out_len = self.output_len();
        if len > 255 * out_len {
            return Err(CryptoError::PrfPlusTooLong(len));
        }
        let k = hmac::Key::new(self.alg, key);
        let mut out = SecretBytes::new(Vec::with_capacity(len + out_len));
        let mut counter: u8 = 1;
        while out.len() < len {
            let mut ctx = hmac::Context::with_key(&k);
            let prev_start = out.len().saturating_sub(out_len);
            if counter > 1 {
                ctx.update(&out.as_bytes()[prev_start..]);
            }
            for s in seed {
                ctx.update(s);
            }
            ctx.update(&[counter]);
            out.vec_mut().extend_from_slice(ctx.sign().as_ref());
            counter = counter.wrapping_add(1);
        }
        out.vec_mut().truncate(len);
        Ok(out)
    }
}
