//! ESP Security Associations in tunnel mode: in-place seal and open (RFC 4303 §2, §3.3, §3.4),
//! AES-GCM framing (RFC 4106 §3-§5), AES-CBC framing (RFC 3602 §3) and HMAC ICVs with extended
//! sequence numbers (RFC 4303 §2.2.1, §3.3.2.1, Appendix A; RFC 2404, RFC 4868).
//!
//! Packet layout handled here (outer IP/UDP framing is the caller's):
//!
//! ```text
//! | SPI (4) | Seq (4) | IV (8 GCM / 16 CBC) | payload | padding | PadLen | NextHdr | ICV |
//!                                           ^-------- encrypted --------------------^
//! ```

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use crate::algo::{
    AES_BLOCK_LEN, Cipher, ESP_HEADER_LEN, ESP_TRAILER_LEN, GCM_ICV_LEN, GCM_SALT_LEN, Integrity,
    NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NEXT_HEADER_NONE, Suite,
};
use crate::counters::{
    CounterArray, DropCounts, InboundStats, Lifetime, LifetimeState, Limits, OutboundStats,
    SealErrorCounts,
};
use crate::crypto::{Backend, CbcKey, DefaultBackend, GcmKey, MAX_MAC_LEN, MacKey, ct_eq};
use crate::error::{ConfigError, DropReason, SealError};
use crate::replay::{DEFAULT_WINDOW, MAX_WINDOW, ReplayError, ReplayWindow, WindowState};

/// Secret key bytes, wiped on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyMaterial(Zeroizing<Vec<u8>>);

impl KeyMaterial {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> KeyMaterial {
        KeyMaterial(Zeroizing::new(bytes))
    }
    /// Copies key bytes.
    pub fn from_slice(bytes: &[u8]) -> KeyMaterial {
        KeyMaterial(Zeroizing::new(bytes.to_vec()))
    }
    /// An empty key (integrity key of an AEAD SA).
    pub fn empty() -> KeyMaterial {
        KeyMaterial::default()
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The secret bytes. Handle with care: never log them.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl core::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyMaterial(<{} bytes redacted>)", self.0.len())
    }
}

/// Everything needed to build one direction of a Child SA.
#[derive(Clone, Debug)]
pub struct SaConfig {
    /// The SPI in the packets (chosen by the receiver).
    pub spi: u32,
    /// Encryption algorithm.
    pub cipher: Cipher,
    /// Integrity algorithm (`Integrity::None` for AES-GCM).
    pub integrity: Integrity,
    /// Encryption keying material ([`Cipher::keymat_len`] bytes; key then salt for GCM).
    pub enc_key: KeyMaterial,
    /// Integrity key ([`Integrity::key_len`] bytes; empty for AES-GCM).
    pub integ_key: KeyMaterial,
    /// Extended (64-bit) sequence numbers negotiated.
    pub esn: bool,
    /// Anti-replay window in packets (inbound only; 0 disables the check).
    pub replay_window: u32,
    /// Soft and hard lifetime limits.
    pub limits: Limits,
}

impl SaConfig {
    /// A configuration with 32-bit sequence numbers, the default window and no limits.
    pub fn new(
        spi: u32,
        cipher: Cipher,
        integrity: Integrity,
        enc_key: KeyMaterial,
        integ_key: KeyMaterial,
    ) -> SaConfig {
        SaConfig {
            spi,
            cipher,
            integrity,
            enc_key,
            integ_key,
            esn: false,
            replay_window: DEFAULT_WINDOW,
            limits: Limits::default(),
        }
    }

    /// The cipher/integrity pair.
    pub fn suite(&self) -> Suite {
        Suite {
            cipher: self.cipher,
            integrity: self.integrity,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let suite = self.suite();
        if !suite.is_valid() {
            return Err(ConfigError::InvalidSuite {
                cipher: self.cipher.name(),
                integrity: self.integrity.name(),
            });
        }
        if self.spi < 256 {
            return Err(ConfigError::ReservedSpi(self.spi));
        }
        if self.enc_key.len() != self.cipher.keymat_len() {
            return Err(ConfigError::EncKeyLength {
                expected: self.cipher.keymat_len(),
                got: self.enc_key.len(),
            });
        }
        if self.integ_key.len() != self.integrity.key_len() {
            return Err(ConfigError::IntegKeyLength {
                expected: self.integrity.key_len(),
                got: self.integ_key.len(),
            });
        }
        if self.replay_window > MAX_WINDOW {
            return Err(ConfigError::ReplayWindow(self.replay_window));
        }
        Ok(())
    }
}

type B = DefaultBackend;

// One per SA, never moved on the packet path: boxing the larger variant would only add a
// pointer chase per packet.
#[allow(clippy::large_enum_variant)]
enum Transform {
    Gcm {
        key: <B as Backend>::Gcm,
        salt: Zeroizing<[u8; GCM_SALT_LEN]>,
    },
    Cbc {
        key: <B as Backend>::Cbc,
        mac: <B as Backend>::Mac,
        icv_len: usize,
    },
}

impl Transform {
    fn new(cfg: &SaConfig) -> Result<Transform, ConfigError> {
        cfg.validate()?;
        let ek = cfg.enc_key.expose_secret();
        if cfg.cipher.is_aead() {
            let (k, s) = ek.split_at(cfg.cipher.aes_key_len());
            let mut salt = Zeroizing::new([0u8; GCM_SALT_LEN]);
            salt.copy_from_slice(s);
            Ok(Transform::Gcm {
                key: B::gcm(k).map_err(|_| ConfigError::Crypto)?,
                salt,
            })
        } else {
            Ok(Transform::Cbc {
                key: B::cbc(ek).map_err(|_| ConfigError::Crypto)?,
                mac: B::mac(cfg.integrity, cfg.integ_key.expose_secret())
                    .map_err(|_| ConfigError::Crypto)?,
                icv_len: cfg.integrity.icv_len(),
            })
        }
    }
}

impl core::fmt::Debug for Transform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Transform::Gcm { .. } => f.write_str("Gcm(..)"),
            Transform::Cbc { icv_len, .. } => write!(f, "CbcHmac(icv {icv_len})"),
        }
    }
}

#[inline]
fn gcm_nonce(salt: &[u8; GCM_SALT_LEN], iv: u64) -> [u8; 12] {
    // RFC 4106 §4: salt || IV. Written as an 8-byte and a 4-byte store that line up with how
    // the backend reads the nonce, so the reads are forwarded from the stores without a stall.
    let hi = (u64::from(u32::from_be_bytes(*salt)) << 32) | (iv >> 32);
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&hi.to_be_bytes());
    n[8..].copy_from_slice(&(iv as u32).to_be_bytes());
    n
}

/// AAD of RFC 4106 §5: SPI and the 32-bit sequence number, or SPI and the 64-bit ESN.
#[inline]
fn gcm_aad(spi: u32, seq: u64, esn: bool) -> ([u8; 12], usize) {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        aad[4..].copy_from_slice(&seq.to_be_bytes());
        (aad, 12)
    } else {
        aad[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        (aad, 8)
    }
}

/// Framing sizes of a suite, computed once per SA (the packet path reads plain fields).
#[derive(Clone, Copy, Debug)]
struct Framing {
    hdr_len: usize,
    icv_len: usize,
    block_mask: usize,
}

impl Framing {
    fn new(s: Suite) -> Framing {
        Framing {
            hdr_len: s.headroom(),
            icv_len: s.icv_len(),
            block_mask: s.cipher.block_len() - 1,
        }
    }

    #[inline]
    fn pad_len(&self, len: usize) -> usize {
        (len + ESP_TRAILER_LEN).wrapping_neg() & self.block_mask
    }
}

/// The outbound half of a Child SA. Share it between threads behind an `Arc`.
#[derive(Debug)]
pub struct OutboundSa {
    spi: u32,
    suite: Suite,
    framing: Framing,
    esn: bool,
    transform: Transform,
    next_seq: AtomicU64,
    /// The first sequence number: packets sealed = sequence numbers consumed since.
    first_seq: u64,
    max_seq: u64,
    soft_seq: u64,
    life: Lifetime,
    errors: CounterArray<{ SealError::COUNT }>,
}

/// Headroom kept between the last usable ESN and the end of the counter so that failed
/// increments by racing threads can never wrap the atomic counter.
const ESN_MAX_SEQ: u64 = (1 << 63) - 1;

impl OutboundSa {
    /// Builds the SA; keys are expanded here, once.
    pub fn new(cfg: &SaConfig) -> Result<OutboundSa, ConfigError> {
        let max_seq = if cfg.esn {
            ESN_MAX_SEQ
        } else {
            u64::from(u32::MAX)
        };
        Ok(OutboundSa {
            spi: cfg.spi,
            suite: cfg.suite(),
            framing: Framing::new(cfg.suite()),
            esn: cfg.esn,
            transform: Transform::new(cfg)?,
            next_seq: AtomicU64::new(1),
            first_seq: 1,
            max_seq,
            // Ask for a rekey when 1/16 of the sequence space is left.
            soft_seq: max_seq - max_seq / 16,
            life: Lifetime::new(cfg.limits),
            errors: CounterArray::new(),
        })
    }

    /// Starts the sequence counter at `next` instead of 1 (taking over an SA from another
    /// appliance, tests, benchmarks). Never reuse a sequence number under the same key: with
    /// AES-GCM that reveals plaintext.
    pub fn with_next_seq(mut self, next: u64) -> OutboundSa {
        let next = next.max(1);
        self.next_seq.store(next, Ordering::Relaxed);
        self.first_seq = next;
        self
    }

    /// The sequence number the next `seal` will use (one relaxed atomic load).
    ///
    /// Under concurrent sealing this is a lower bound: every number below the value returned
    /// had been taken by a `seal` when it was read (that packet may still be in encryption),
    /// and other threads may have taken more since, so the highest number used is at least
    /// `next_seq() - 1` and grows from there. It never decreases. A standby that takes the SA
    /// over must therefore start beyond it by the most that can be sealed between two reads
    /// (see [`Self::with_next_seq`]). After the sequence space ran out it counts the refused
    /// attempts too, so it may exceed the last usable number + 1.
    #[inline]
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// Cipher and integrity algorithm.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Bytes `seal` needs before the payload.
    pub fn headroom(&self) -> usize {
        self.suite.headroom()
    }

    /// Bytes `seal` needs after a payload of any length.
    pub fn max_tailroom(&self) -> usize {
        self.suite.max_tailroom()
    }

    /// Bytes `seal` needs after a payload of `len` bytes.
    pub fn tailroom(&self, len: usize) -> usize {
        self.suite.tailroom(len)
    }

    /// Length of the ESP packet for a payload of `len` bytes.
    pub fn sealed_len(&self, len: usize) -> usize {
        self.suite.sealed_len(len)
    }

    /// Lifetime state (soft and hard limits, sequence space).
    pub fn lifetime(&self) -> LifetimeState {
        self.life.state()
    }

    /// True exactly once after the SA first left [`LifetimeState::Active`]: tell the control
    /// plane to rekey.
    pub fn take_rekey_signal(&self) -> bool {
        self.life.take_signal()
    }

    /// Whether a rekey signal is waiting to be taken (one relaxed load: cheap enough to check
    /// after every packet, so the packet path can wake whoever takes the signal at once).
    #[inline]
    pub fn rekey_signal_pending(&self) -> bool {
        self.life.signal_pending()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> OutboundStats {
        let next = self.next_seq.load(Ordering::Relaxed);
        let consumed = next
            .min(self.max_seq.saturating_add(1))
            .saturating_sub(self.first_seq);
        OutboundStats {
            // Every consumed sequence number is a sealed packet, except backend failures.
            packets: consumed.saturating_sub(self.errors.get(SealError::CryptoError.index())),
            bytes: self.life.bytes(),
            errors: SealErrorCounts(self.errors.snapshot()),
            next_seq: next,
            lifetime: self.life.state(),
        }
    }

    /// Seals the payload `buf[payload]` in place into an ESP packet with Next Header
    /// `next_header` (4 for IPv4, 41 for IPv6, 59 for a dummy) and returns where the packet
    /// (SPI through ICV) lies in `buf`. `buf` must have [`Self::headroom`] bytes before and
    /// [`Self::tailroom`] bytes after the payload. Never allocates.
    #[inline]
    pub fn seal(
        &self,
        buf: &mut [u8],
        payload: Range<usize>,
        next_header: u8,
    ) -> Result<Range<usize>, SealError> {
        let r = self.seal_inner(buf, payload, next_header);
        if let Err(e) = r {
            self.errors.bump(e.index());
        }
        r
    }

    #[inline]
    fn seal_inner(
        &self,
        buf: &mut [u8],
        payload: Range<usize>,
        next_header: u8,
    ) -> Result<Range<usize>, SealError> {
        if payload.start > payload.end || payload.end > buf.len() {
            return Err(SealError::BadRange);
        }
        let Framing {
            hdr_len, icv_len, ..
        } = self.framing;
        let start = payload
            .start
            .checked_sub(hdr_len)
            .ok_or(SealError::NoHeadroom)?;
        let plen = payload.end - payload.start;
        let pad = self.framing.pad_len(plen);
        let ct_len = plen + pad + ESP_TRAILER_LEN;
        let end = payload.start + ct_len + icv_len;
        if end > buf.len() {
            return Err(SealError::NoTailroom);
        }
        if self.life.is_expired() {
            return Err(SealError::Expired);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if seq > self.max_seq {
            self.life.raise(LifetimeState::Expired);
            return Err(SealError::SequenceExhausted);
        }
        if seq >= self.soft_seq {
            self.life.raise(LifetimeState::RekeyNeeded);
        }

        let pkt = buf.get_mut(start..end).ok_or(SealError::BadRange)?;
        let (hdr, rest) = pkt.split_at_mut(hdr_len);
        let (ct, icv) = rest.split_at_mut(ct_len);
        hdr[..4].copy_from_slice(&self.spi.to_be_bytes());
        hdr[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        // RFC 4303 §2.4: padding bytes 1, 2, 3, ...
        let tail = &mut ct[plen..];
        for (i, b) in tail[..pad].iter_mut().enumerate() {
            *b = (i + 1) as u8;
        }
        tail[pad] = pad as u8;
        tail[pad + 1] = next_header;

        match &self.transform {
            Transform::Gcm { key, salt } => {
                // RFC 4106 §3.1: the sequence number is a unique 8-byte IV.
                let iv = seq.to_be_bytes();
                hdr[ESP_HEADER_LEN..].copy_from_slice(&iv);
                let (aad, aad_len) = gcm_aad(self.spi, seq, self.esn);
                let icv: &mut [u8; GCM_ICV_LEN] =
                    icv.try_into().map_err(|_| SealError::BadRange)?;
                key.seal(&gcm_nonce(salt, seq), &aad[..aad_len], ct, icv)
                    .map_err(|_| SealError::CryptoError)?;
            }
            Transform::Cbc { key, mac, icv_len } => {
                // RFC 3602 §3 wants an unpredictable IV: encrypt a unique nonce (the sequence
                // number) under the SA key, as NIST SP 800-38A Appendix C recommends.
                let mut iv = [0u8; AES_BLOCK_LEN];
                iv[..8].copy_from_slice(&seq.to_be_bytes());
                iv[8..12].copy_from_slice(&self.spi.to_be_bytes());
                iv[12..].copy_from_slice(b"IV\x00\x01");
                key.encrypt_block(&mut iv)
                    .map_err(|_| SealError::CryptoError)?;
                hdr[ESP_HEADER_LEN..].copy_from_slice(&iv);
                key.encrypt(&iv, ct).map_err(|_| SealError::CryptoError)?;
                let mut full = [0u8; MAX_MAC_LEN];
                let hi = ((seq >> 32) as u32).to_be_bytes();
                let hi: &[u8] = if self.esn { &hi } else { &[] };
                let authed = pkt.get(..hdr_len + ct_len).ok_or(SealError::BadRange)?;
                mac.mac(&[authed, hi], &mut full);
                let icv = pkt.get_mut(hdr_len + ct_len..).ok_or(SealError::BadRange)?;
                icv.copy_from_slice(&full[..*icv_len]);
            }
        }
        self.life.account_nth(seq - self.first_seq + 1, plen as u64);
        Ok(start..end)
    }
}

/// A successfully opened packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Next Header of the payload (4 or 41).
    pub next_header: u8,
    /// Where the inner packet lies in the buffer given to `open` (TFC padding trimmed).
    pub inner: Range<usize>,
    /// The full (64-bit when ESN) sequence number.
    pub seq: u64,
}

/// The inbound half of a Child SA. Share it between threads behind an `Arc`.
#[derive(Debug)]
pub struct InboundSa {
    spi: u32,
    suite: Suite,
    framing: Framing,
    esn: bool,
    replay_check: bool,
    transform: Transform,
    window: ReplayWindow,
    life: Lifetime,
    drops: CounterArray<{ DropReason::COUNT }>,
}

impl InboundSa {
    /// Builds the SA; keys are expanded here, once.
    pub fn new(cfg: &SaConfig) -> Result<InboundSa, ConfigError> {
        Ok(InboundSa {
            spi: cfg.spi,
            suite: cfg.suite(),
            framing: Framing::new(cfg.suite()),
            esn: cfg.esn,
            replay_check: cfg.replay_window != 0,
            transform: Transform::new(cfg)?,
            window: ReplayWindow::new(cfg.replay_window.max(32)),
            life: Lifetime::new(cfg.limits),
            drops: CounterArray::new(),
        })
    }

    /// Starts the window as if `highest_seq` had been the last number received (restoring
    /// state, tests): needed with ESN to accept numbers beyond the first 2^32.
    pub fn with_highest_seq(mut self, highest_seq: u64) -> InboundSa {
        self.window.set_top(highest_seq);
        self
    }

    /// Starts the window in `state` (exported by [`Self::window_state`] from the same SA on
    /// another appliance): the highest number and which numbers below it were received. Bits
    /// beyond this SA's window are ignored; a bitmap shorter than the window leaves the older
    /// numbers unmarked. With ESN the high-order bits are then inferred from `state.highest`.
    pub fn with_window(mut self, state: &WindowState) -> InboundSa {
        self.window.restore(state);
        self
    }

    /// The anti-replay window as plain data (see [`WindowState`]), for replication to a
    /// standby. Safe while other threads open packets: a number accepted before the call is
    /// never reported as missing (see [`ReplayWindow::state`]). Allocates: call it from the
    /// control plane, not per packet.
    pub fn window_state(&self) -> WindowState {
        self.window.state()
    }

    /// The size of the anti-replay window in packets (a multiple of 32).
    pub fn replay_window_size(&self) -> u64 {
        self.window.size()
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// Cipher and integrity algorithm.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Lifetime state.
    pub fn lifetime(&self) -> LifetimeState {
        self.life.state()
    }

    /// True exactly once after the SA first left [`LifetimeState::Active`].
    pub fn take_rekey_signal(&self) -> bool {
        self.life.take_signal()
    }

    /// Whether a rekey signal is waiting to be taken (see [`OutboundSa::rekey_signal_pending`]).
    #[inline]
    pub fn rekey_signal_pending(&self) -> bool {
        self.life.signal_pending()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> InboundStats {
        InboundStats {
            packets: self.life.packets(),
            bytes: self.life.bytes(),
            drops: DropCounts(self.drops.snapshot()),
            highest_seq: self.window.top(),
            lifetime: self.life.state(),
        }
    }

    /// Counts a drop decided outside `open` (for example a selector mismatch).
    pub fn count_drop(&self, reason: DropReason) {
        self.drops.bump(reason.index());
    }

    /// Verifies and decrypts the ESP packet `packet` (SPI through ICV) in place. On success
    /// the inner packet lies at `packet[opened.inner]`. Every failure is counted.
    #[inline]
    pub fn open(&self, packet: &mut [u8]) -> Result<Opened, DropReason> {
        let r = self.open_inner(packet);
        if let Err(e) = r {
            self.drops.bump(e.index());
        }
        r
    }

    #[inline]
    fn open_inner(&self, packet: &mut [u8]) -> Result<Opened, DropReason> {
        let Framing {
            hdr_len,
            icv_len,
            block_mask,
        } = self.framing;
        let block = block_mask + 1;
        let ct_len = packet
            .len()
            .checked_sub(hdr_len + icv_len)
            .filter(|&n| n >= block.max(ESP_TRAILER_LEN))
            .ok_or(DropReason::Truncated)?;
        if ct_len & block_mask != 0 {
            return Err(DropReason::Misaligned);
        }
        let (hdr, rest) = packet.split_at_mut(hdr_len);
        let spi = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        if spi != self.spi {
            return Err(DropReason::WrongSpi);
        }
        if self.life.is_expired() {
            return Err(DropReason::Expired);
        }
        let seq_low = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let seq = if self.esn {
            self.window.infer_esn(seq_low).ok_or(DropReason::TooOld)?
        } else {
            u64::from(seq_low)
        };
        if seq == 0 {
            return Err(DropReason::BadSequence);
        }
        if self.replay_check {
            self.window.check(seq).map_err(replay_drop)?;
        }

        match &self.transform {
            Transform::Gcm { key, salt } => {
                let mut iv = [0u8; 8];
                iv.copy_from_slice(&hdr[ESP_HEADER_LEN..]);
                let nonce = gcm_nonce(salt, u64::from_be_bytes(iv));
                let (aad, aad_len) = gcm_aad(self.spi, seq, self.esn);
                key.open(&nonce, &aad[..aad_len], rest)
                    .map_err(|_| DropReason::AuthFailed)?;
            }
            Transform::Cbc { key, mac, icv_len } => {
                let (ct, icv) = rest.split_at_mut(ct_len);
                let mut full = [0u8; MAX_MAC_LEN];
                let hi = ((seq >> 32) as u32).to_be_bytes();
                let hi: &[u8] = if self.esn { &hi } else { &[] };
                mac.mac(&[hdr, ct, hi], &mut full);
                if !ct_eq(&full[..*icv_len], icv) {
                    return Err(DropReason::AuthFailed);
                }
                let mut iv = [0u8; AES_BLOCK_LEN];
                iv.copy_from_slice(&hdr[ESP_HEADER_LEN..]);
                key.decrypt(&iv, ct).map_err(|_| DropReason::CryptoError)?;
            }
        }
        // Authentic: now (and only now) move the window.
        match self.window.mark(seq) {
            Ok(()) => {}
            Err(e) if self.replay_check => return Err(replay_drop(e)),
            Err(_) => {}
        }

        let ct = rest.get(..ct_len).ok_or(DropReason::Truncated)?;
        let next_header = ct[ct_len - 1];
        let pad = usize::from(ct[ct_len - 2]);
        let payload_len = ct_len
            .checked_sub(ESP_TRAILER_LEN + pad)
            .ok_or(DropReason::BadTrailer)?;
        let padding = &ct[payload_len..payload_len + pad];
        if padding
            .iter()
            .enumerate()
            .any(|(i, &b)| usize::from(b) != i + 1)
        {
            return Err(DropReason::BadPadding);
        }
        let payload = &ct[..payload_len];
        let inner_len = match next_header {
            NEXT_HEADER_IPV4 => ipv4_len(payload)?,
            NEXT_HEADER_IPV6 => ipv6_len(payload)?,
            NEXT_HEADER_NONE => {
                self.life.account(payload_len as u64);
                return Err(DropReason::Dummy);
            }
            _ => return Err(DropReason::UnsupportedNextHeader),
        };
        self.life.account(inner_len as u64);
        Ok(Opened {
            next_header,
            inner: hdr_len..hdr_len + inner_len,
            seq,
        })
    }
}

fn replay_drop(e: ReplayError) -> DropReason {
    match e {
        ReplayError::Duplicate => DropReason::Replayed,
        ReplayError::TooOld => DropReason::TooOld,
    }
}

/// Length of an inner IPv4 packet from its header, checked against what was received.
fn ipv4_len(p: &[u8]) -> Result<usize, DropReason> {
    let h = p.get(..20).ok_or(DropReason::BadInnerPacket)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] >> 4 != 4 || ihl < 20 || total < ihl || total > p.len() {
        return Err(DropReason::BadInnerPacket);
    }
    Ok(total)
}

/// Length of an inner IPv6 packet from its header (jumbograms are refused).
fn ipv6_len(p: &[u8]) -> Result<usize, DropReason> {
    let h = p.get(..40).ok_or(DropReason::BadInnerPacket)?;
    let total = 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    if h[0] >> 4 != 6 || total > p.len() {
        return Err(DropReason::BadInnerPacket);
    }
    Ok(total)
}
