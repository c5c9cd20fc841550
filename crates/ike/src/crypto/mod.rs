//! Cryptographic primitives for IKEv2: PRF and prf+, SK payload integrity and encryption,
//! key exchange, key derivation and PSK authentication (RFC 7296 §2.13-§2.18, §3.14;
//! RFC 5282; RFC 5903; RFC 8031). Everything goes through aws-lc-rs except the MODP groups,
//! which use constant-time `crypto-bigint`.
//!
//! Secrets live in [`SecretBytes`] (zeroized on drop, `Debug` prints only the length).

mod auth;
mod dh;
mod encr;
mod integ;
mod keys;
mod prf;
mod rng;

pub use auth::{Psk, psk_auth, verify_psk_auth};
pub use dh::{KeyExchange, ModpGroup, SharedSecret};
pub use encr::{Encr, SkCipher};
pub use integ::Integ;
pub use keys::{
    ChildSaKeys, IkeSaKeys, check_ike_sa_keys, child_sa_keys, ike_sa_keys, rekey_skeyseed, skeyseed,
};
pub use prf::Prf;
pub use rng::{Rng, SystemRng, TestRng};

use core::fmt;
use zeroize::Zeroizing;

/// Errors of the crypto layer. Peer-caused errors (bad ICV, bad public value) are separate
/// from configuration errors (unsupported algorithm).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The algorithm (or key length) is not implemented by this crate.
    #[error("{0} is not supported")]
    Unsupported(String),
    /// A key of the wrong length was given (local programming or negotiation error).
    #[error("invalid key length {got} for {what} (expected {expected})")]
    InvalidKeyLength {
        /// Which algorithm.
        what: &'static str,
        /// Length given.
        got: usize,
        /// Length expected.
        expected: usize,
    },
    /// The peer's key exchange value is malformed or outside the valid range/group.
    #[error("invalid peer public value: {0}")]
    InvalidPublicValue(&'static str),
    /// The key exchange produced an unacceptable shared secret (for example all zero).
    #[error("key exchange failed: {0}")]
    KeyExchangeFailed(&'static str),
    /// ICV or AEAD tag verification failed.
    #[error("integrity check failed")]
    IntegrityCheckFailed,
    /// Encrypted payload too short or not a multiple of the block size.
    #[error("malformed encrypted payload: {0}")]
    Malformed(&'static str),
    /// The pad length byte points outside the plaintext.
    #[error("invalid padding")]
    InvalidPadding,
    /// prf+ asked for more than 255 blocks (RFC 7296 §2.13).
    #[error("prf+ output of {0} octets exceeds 255 PRF blocks")]
    PrfPlusTooLong(usize),
    /// AUTH payload data does not match.
    #[error("AUTH value mismatch")]
    AuthMismatch,
    /// Internal failure of the crypto library.
    #[error("crypto library failure")]
    Internal,
}

/// Secret octets (keys, SKEYSEED, g^ir): zeroized on drop, `Debug` shows only the length,
/// equality is constant time.
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps `v`; it will be zeroized on drop.
    pub fn new(v: Vec<u8>) -> Self {
        Self(Zeroizing::new(v))
    }

    /// Copies `s` into a new secret buffer.
    pub fn from_slice(s: &[u8]) -> Self {
        Self::new(s.to_vec())
    }

    /// The secret octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in octets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Mutable access to the owned vector (still zeroized on drop).
    pub(crate) fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl core::ops::Deref for SecretBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}
impl Eq for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} octets redacted>)", self.0.len())
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
