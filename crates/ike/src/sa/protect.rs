//! Sealing and opening the Encrypted payload (RFC 7296 §3.14): header and SK header are the
//! AAD (AEAD) or lie under the ICV (CBC + HMAC).

use super::state::Keys;
use crate::crypto::{CryptoError, Rng};
use crate::wire::{
    GENERIC_HEADER_LEN, HEADER_LEN, Header, Message, Payload, PayloadType, WireError, encode_inner,
    parse_chain,
};

/// Why an SK payload could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    Integrity,
    Malformed(WireError),
    Critical(PayloadType),
}

/// Builds a protected message: header, SK payload with `inner` inside.
pub(crate) fn seal(
    keys: &Keys,
    rng: &mut dyn Rng,
    mut header: Header,
    inner: &[Payload],
) -> Result<Vec<u8>, SealError> {
    let (first, plain) = encode_inner(inner)?;
    let cipher = &keys.tx;
    let sk_len = GENERIC_HEADER_LEN + cipher.sealed_len(plain.len());
    let total = HEADER_LEN + sk_len;
    header.next_payload = PayloadType::SK;
    header.length = u32::try_from(total).map_err(|_| WireError::TooLong("IKE message"))?;
    let mut msg = Vec::with_capacity(total);
    header.emit(&mut msg);
    msg.push(first.0);
    msg.push(0);
    msg.extend_from_slice(
        &u16::try_from(sk_len)
            .map_err(|_| WireError::TooLong("SK payload"))?
            .to_be_bytes(),
    );
    msg.resize(msg.len() + cipher.iv_len(), 0);
    msg.extend_from_slice(&plain);
    cipher.seal(rng, &mut msg, HEADER_LEN + GENERIC_HEADER_LEN)?;
    Ok(msg)
}

/// Errors while building a protected message (local, never peer-caused).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    #[error("encoding: {0}")]
    Wire(#[from] WireError),
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
}

/// Verifies and decrypts the SK payload of `msg` (parsed from `data`) and parses the inner chain.
pub(crate) fn open(keys: &Keys, data: &[u8], msg: &Message) -> Result<Vec<Payload>, OpenError> {
    let Some(Payload::Encrypted(sk)) = msg.payloads.last() else {
        return Err(OpenError::Malformed(WireError::Malformed(
            "no encrypted payload",
        )));
    };
    let header_len = sk.offset + GENERIC_HEADER_LEN;
    if header_len + sk.body.len() != data.len() {
        return Err(OpenError::Malformed(WireError::BadLength("SK payload")));
    }
    let mut buf = data.to_vec();
    let range = keys.rx.open(&mut buf, header_len).map_err(|e| match e {
        CryptoError::IntegrityCheckFailed => OpenError::Integrity,
        _ => OpenError::Integrity,
    })?;
    let plain = buf.get(range).ok_or(OpenError::Integrity)?;
    parse_chain(sk.inner_next, plain, 0).map_err(|e| match e {
        WireError::UnsupportedCriticalPayload(t) => OpenError::Critical(t),
        e => OpenError::Malformed(e),
    })
}
