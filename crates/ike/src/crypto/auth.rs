//! Pre-shared key authentication (RFC 7296 §2.15):
//! AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>), where the
//! initiator's signed octets are RealMessage1 | NonceRData | prf(SK_pi, IDi') and the
//! responder's RealMessage2 | NonceIData | prf(SK_pr, IDr').

use super::{CryptoError, Prf, SecretBytes, ct_eq};
use zeroize::Zeroizing;

/// The key pad string of RFC 7296 §2.15 (17 ASCII octets, no terminator).
const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// A pre-shared key: zeroized on drop, `Debug` prints `Psk(<redacted>)`.
#[derive(Clone)]
pub struct Psk(Zeroizing<Vec<u8>>);

impl Psk {
    /// A PSK from raw octets.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    /// The secret octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the key is empty (configuration should refuse that).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Psk {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes())
    }
}

impl From<String> for Psk {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl core::fmt::Debug for Psk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// Computes the AUTH payload data for PSK authentication.
///
/// - `real_message`: the complete first message the signer sent (IKE_SA_INIT request for the
///   initiator, IKE_SA_INIT response for the responder), from the IKE header on, exactly as sent.
/// - `peer_nonce`: the other side's nonce data (Nr for the initiator, Ni for the responder).
/// - `sk_p`: SK_pi for the initiator, SK_pr for the responder.
/// - `id_body`: the signer's ID payload body IDx' (ID type, three reserved octets, data;
///   without the generic payload header).
pub fn psk_auth(
    prf: &Prf,
    psk: &Psk,
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
) -> SecretBytes {
    let id_mac = prf.prf(sk_p, id_body);
    let key = prf.prf(psk.as_bytes(), KEY_PAD);
    prf.prf_parts(
        key.as_bytes(),
        &[real_message, peer_nonce, id_mac.as_bytes()],
    )
}

/// Verifies received AUTH data against the expected value in constant time.
/// Arguments are the peer's view: its first message, our nonce, its SK_p and its ID body.
pub fn verify_psk_auth(
    prf: &Prf,
    psk: &Psk,
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
    received: &[u8],
) -> Result<(), CryptoError> {
    let expected = psk_auth(prf, psk, real_message, peer_nonce, sk_p, id_body);
    if ct_eq(expected.as_bytes(), received) {
        Ok(())
    } else {
        Err(CryptoError::AuthMismatch)
    }
}
