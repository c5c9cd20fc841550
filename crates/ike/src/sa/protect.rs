//! Sealing and opening the Encrypted payload (RFC 7296 §3.14): header and SK header are the
//! AAD (AEAD) or lie under the ICV (CBC + HMAC); SKF fragments (RFC 7383 §2.5) likewise, each
//! sealed on its own.

use super::state::Keys;
use crate::crypto::{CryptoError, Rng};
use crate::wire::{
    EncryptedFragment, GENERIC_HEADER_LEN, HEADER_LEN, Header, Message, Payload, PayloadType,
    WireError, encode_inner, parse_chain,
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

/// Largest padding plus pad-length octet any of our ciphers adds (AES-CBC: 15 + 1).
const MAX_PAD: usize = 16;
/// SKF payload header: generic header plus Fragment Number and Total Fragments.
pub(crate) const SKF_HEADER_LEN: usize = GENERIC_HEADER_LEN + 4;

/// Builds a protected message, split into SKF fragments (RFC 7383 §2.5) when `max` is given
/// and the single message would be longer than `max` octets. Each fragment is sealed on its
/// own and is at most `max` octets long.
pub(crate) fn seal_fragments(
    keys: &Keys,
    rng: &mut dyn Rng,
    header: Header,
    inner: &[Payload],
    max: Option<usize>,
) -> Result<Vec<Vec<u8>>, SealError> {
    let single = seal(keys, rng, header, inner)?;
    let Some(max) = max.filter(|m| single.len() > *m) else {
        return Ok(vec![single]);
    };
    let (first, plain) = encode_inner(inner)?;
    let cipher = &keys.tx;
    let overhead = HEADER_LEN + SKF_HEADER_LEN + cipher.sealed_len(0).saturating_sub(1) + MAX_PAD;
    let chunk = max.saturating_sub(overhead);
    if chunk < 64 {
        return Err(SealError::Wire(WireError::TooLong(
            "fragment size too small",
        )));
    }
    let chunks: Vec<&[u8]> = plain.chunks(chunk).collect();
    let total = u16::try_from(chunks.len()).map_err(|_| WireError::TooLong("fragments"))?;
    let mut out = Vec::with_capacity(chunks.len());
    for (n, part) in (1u16..).zip(chunks) {
        let skf_len = SKF_HEADER_LEN + cipher.sealed_len(part.len());
        let len = HEADER_LEN + skf_len;
        let mut h = header;
        h.next_payload = PayloadType::SKF;
        h.length = u32::try_from(len).map_err(|_| WireError::TooLong("IKE message"))?;
        let mut msg = Vec::with_capacity(len);
        h.emit(&mut msg);
        msg.push(if n == 1 { first.0 } else { 0 });
        msg.push(0);
        msg.extend_from_slice(
            &u16::try_from(skf_len)
                .map_err(|_| WireError::TooLong("SKF payload"))?
                .to_be_bytes(),
        );
        msg.extend_from_slice(&n.to_be_bytes());
        msg.extend_from_slice(&total.to_be_bytes());
        msg.resize(msg.len() + cipher.iv_len(), 0);
        msg.extend_from_slice(part);
        cipher.seal(rng, &mut msg, HEADER_LEN + SKF_HEADER_LEN)?;
        out.push(msg);
    }
    Ok(out)
}

/// Verifies and decrypts one SKF fragment of `data`; returns its plaintext part.
pub(crate) fn open_fragment(
    keys: &Keys,
    data: &[u8],
    frag: &EncryptedFragment,
) -> Result<Vec<u8>, OpenError> {
    let header_len = frag.offset + SKF_HEADER_LEN;
    if header_len + frag.body.len() != data.len() {
        return Err(OpenError::Malformed(WireError::BadLength("SKF payload")));
    }
    let mut buf = data.to_vec();
    let range = keys
        .rx
        .open(&mut buf, header_len)
        .map_err(|_| OpenError::Integrity)?;
    buf.get(range)
        .map(<[u8]>::to_vec)
        .ok_or(OpenError::Integrity)
}
