//! Error and drop-reason types of the ESP data path (RFC 4303 §3.4: every inbound check that
//! fails is an auditable, counted event).

macro_rules! counted_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $short:literal, $msg:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
        #[non_exhaustive]
        pub enum $name { $( $(#[$vmeta])* #[error($msg)] $variant ),+ }

        impl $name {
            /// Every value, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Number of values (length of a counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// A short, stable name for counters and logs.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $short),+ }
            }

            /// Position in [`Self::ALL`] (index into a counter array).
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

counted_enum! {
    /// Why an inbound packet was dropped.
    pub enum DropReason {
        /// Shorter than header, IV, minimal ciphertext and ICV.
        Truncated => "truncated", "packet truncated",
        /// Ciphertext length is not a multiple of the cipher's block size.
        Misaligned => "misaligned", "ciphertext not block aligned",
        /// No inbound SA has this SPI.
        UnknownSpi => "unknown_spi", "unknown SPI",
        /// The packet's SPI is not the SA's (caller routed it wrongly).
        WrongSpi => "wrong_spi", "SPI does not belong to this SA",
        /// Sequence number invalid (zero).
        BadSequence => "bad_sequence", "invalid sequence number",
        /// Sequence number already received.
        Replayed => "replayed", "replayed sequence number",
        /// Sequence number left of the anti-replay window.
        TooOld => "too_old", "sequence number left of the replay window",
        /// ICV or AEAD tag did not verify.
        AuthFailed => "auth_failed", "integrity check failed",
        /// Pad Length larger than the decrypted data.
        BadTrailer => "bad_trailer", "invalid ESP trailer",
        /// Padding bytes are not 1, 2, 3, ... (RFC 4303 §2.4).
        BadPadding => "bad_padding", "invalid padding bytes",
        /// A traffic flow confidentiality dummy packet (Next Header 59): valid, discarded.
        Dummy => "dummy", "TFC dummy packet",
        /// Next Header is neither IPv4 (4) nor IPv6 (41).
        UnsupportedNextHeader => "unsupported_next_header", "unsupported next header",
        /// The inner packet's IP version or length does not match.
        BadInnerPacket => "bad_inner_packet", "malformed inner packet",
        /// The inner packet does not match the SA's traffic selectors (RFC 4301 §5.2).
        PolicyMismatch => "policy_mismatch", "inner packet outside the SA's traffic selectors",
        /// The SA reached its hard lifetime.
        Expired => "expired", "SA expired",
        /// The UDP payload is neither ESP, IKE nor NAT keepalive (RFC 3948 §2).
        NotEsp => "not_esp", "UDP payload is not ESP",
        /// The crypto backend failed unexpectedly.
        CryptoError => "crypto_error", "crypto backend error",
    }
}

counted_enum! {
    /// Why an outbound packet could not be sealed.
    pub enum SealError {
        /// `payload` is not a valid range of `buf`.
        BadRange => "bad_range", "payload range outside the buffer",
        /// Not enough room before the payload for ESP header and IV.
        NoHeadroom => "no_headroom", "not enough headroom",
        /// Not enough room after the payload for padding, trailer and ICV.
        NoTailroom => "no_tailroom", "not enough tailroom",
        /// The sequence number would wrap: the SA must be rekeyed (RFC 4303 §3.3.3).
        SequenceExhausted => "sequence_exhausted", "sequence number space exhausted",
        /// The SA reached its hard lifetime.
        Expired => "expired", "SA expired",
        /// The crypto backend failed unexpectedly.
        CryptoError => "crypto_error", "crypto backend error",
    }
}

/// Errors building an SA from a [`crate::SaConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// AEAD cipher with an integrity algorithm, or CBC without one.
    #[error("cipher {cipher} cannot be combined with integrity {integrity}")]
    InvalidSuite {
        /// Cipher name.
        cipher: &'static str,
        /// Integrity name.
        integrity: &'static str,
    },
    /// Encryption key material has the wrong length.
    #[error("encryption key must be {expected} bytes, got {got}")]
    EncKeyLength {
        /// Required length.
        expected: usize,
        /// Supplied length.
        got: usize,
    },
    /// Integrity key has the wrong length.
    #[error("integrity key must be {expected} bytes, got {got}")]
    IntegKeyLength {
        /// Required length.
        expected: usize,
        /// Supplied length.
        got: usize,
    },
    /// SPI 0..=255 is reserved (RFC 4303 §2.1).
    #[error("SPI {0:#x} is reserved")]
    ReservedSpi(u32),
    /// Replay window larger than supported.
    #[error("replay window {0} exceeds the maximum")]
    ReplayWindow(u32),
    /// The backend refused the key.
    #[error("crypto backend refused the key")]
    Crypto,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indices_dense() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(
                DropReason::ALL
                    .iter()
                    .filter(|o| o.name() == r.name())
                    .count(),
                1
            );
        }
        for (i, r) in SealError::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(DropReason::Replayed.name(), "replayed");
    }
}
