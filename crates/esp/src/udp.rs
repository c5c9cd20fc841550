//! UDP encapsulation of ESP on port 4500 (RFC 3948 §2): telling ESP from IKE (non-ESP marker)
//! and NAT keepalives with one look at the first four bytes.

/// Length of the non-ESP marker (four zero bytes) in front of IKE messages on port 4500.
pub const NON_ESP_MARKER_LEN: usize = 4;
/// The UDP port for IKE and ESP-in-UDP after NAT traversal (RFC 3948 §2).
pub const NAT_T_PORT: u16 = 4500;

/// What a UDP datagram on port 4500 carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Udp4500 {
    /// An ESP packet (the whole datagram, starting with its non-zero SPI).
    Esp,
    /// An IKE message starting after the non-ESP marker, at offset [`NON_ESP_MARKER_LEN`].
    Ike,
    /// A NAT keepalive (a single 0xFF byte, RFC 3948 §2.3): ignore.
    Keepalive,
    /// Too short to be any of them: drop.
    Malformed,
}

/// Classifies a UDP payload received on port 4500.
#[inline]
pub fn classify_udp4500(payload: &[u8]) -> Udp4500 {
    match payload {
        [a, b, c, d, rest @ ..] => {
            if u32::from_ne_bytes([*a, *b, *c, *d]) == 0 {
                Udp4500::Ike
            } else if rest.len() >= 4 {
                // SPI (non-zero) and sequence number at least.
                Udp4500::Esp
            } else {
                Udp4500::Malformed
            }
        }
        [0xff] => Udp4500::Keepalive,
        _ => Udp4500::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify_udp4500(&[0xff]), Udp4500::Keepalive);
        assert_eq!(classify_udp4500(&[0xfe]), Udp4500::Malformed);
        assert_eq!(classify_udp4500(&[]), Udp4500::Malformed);
        assert_eq!(classify_udp4500(&[0, 0, 0, 0]), Udp4500::Ike);
        assert_eq!(classify_udp4500(&[0, 0, 0, 0, 1, 2, 3]), Udp4500::Ike);
        assert_eq!(classify_udp4500(&[0, 0, 1, 0, 0, 0, 0, 1]), Udp4500::Esp);
        assert_eq!(classify_udp4500(&[0, 0, 1, 0, 0, 0, 0]), Udp4500::Malformed);
    }
}
