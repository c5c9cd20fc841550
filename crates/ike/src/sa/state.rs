//! Per-IKE-SA state (RFC 7296 §2.1-§2.2, §2.14): one type per handshake stage, so keys exist
//! only from IKE_SA_INIT on and never as an `Option` in a grab-bag struct.

pub(crate) use super::child_create::ChildOffer;
use crate::crypto::{
    CryptoError, Encr, IkeSaKeys, Integ, KeyExchange, Prf, SkCipher, check_ike_sa_keys,
    ike_sa_keys, skeyseed,
};
use crate::proposal::{ChildSuite, IkeSuite};
use crate::wire::{Flags, SaPayload, TrafficSelector};
use std::net::SocketAddr;
use std::time::Instant;

/// Which request is outstanding (decides how its response is processed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Init,
    Auth,
    Informational,
    DeleteIke,
    /// CREATE_CHILD_SA rekeying a Child SA (details in `IkeSa::rekey`).
    RekeyChild,
    /// INFORMATIONAL deleting the Child SA with this inbound SPI.
    DeleteChild(u32),
    /// Empty INFORMATIONAL sent by dead peer detection.
    Dpd,
    /// CREATE_CHILD_SA rekeying the IKE SA (details in `IkeSa::ike_rekey`).
    RekeyIke,
    /// CREATE_CHILD_SA creating an additional Child SA (details in `IkeSa::create`).
    CreateChild,
}

/// Where a Child SA is in its life (RFC 7296 §1.3.3, §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildStatus {
    /// In use.
    Active,
    /// Our CREATE_CHILD_SA rekeying it is outstanding.
    Rekeying,
    /// Replaced by a new SA; waiting for its DELETE (ours or the peer's).
    Rekeyed,
    /// Our DELETE for it is queued or outstanding.
    Deleting,
}

/// Per-Child-SA bookkeeping beyond the SPI pair.
#[derive(Debug, Clone)]
pub(crate) struct ChildInfo {
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Soft lifetime deadline (scheduled on the first service after creation).
    pub rekey_at: Option<Instant>,
    /// Hard lifetime deadline.
    pub expire_at: Option<Instant>,
    pub status: ChildStatus,
    /// DH group the peer asked for with INVALID_KE_PAYLOAD.
    pub group: Option<crate::transform::DhId>,
    /// The negotiated ESP algorithms (kept for export, `export`).
    pub suite: ChildSuite,
}

/// Our outstanding CREATE_CHILD_SA rekey.
#[derive(Debug)]
pub(crate) struct PendingRekey {
    pub old_in: u32,
    /// The new Child SA we offered.
    pub child: ChildOffer,
    /// The peer rekeyed the same Child SA at the same time and we answered it (§2.8.1): which
    /// of the two new SAs survives is decided when our own exchange ends.
    pub abandoned: bool,
    /// The peer's colliding rekey we answered, if both exchanges may complete.
    pub collision: Option<Collision>,
}

/// A colliding CREATE_CHILD_SA rekey of the peer that we answered while our own rekey of the
/// same Child SA was outstanding (RFC 7296 §2.8.1). Both exchanges complete; the SA created
/// with the lowest of the four nonces is redundant and closed by the side that started it.
/// Until that is known the peer's new SA is kept from the driver (`event` is held back).
#[derive(Debug)]
pub(crate) struct Collision {
    /// The peer's initiator nonce.
    pub peer_ni: Vec<u8>,
    /// Our responder nonce in the peer's exchange.
    pub our_nr: Vec<u8>,
    /// Our inbound SPI of the SA the peer's exchange created.
    pub new_in: u32,
    /// Its `ChildSaRekeyed` event, released when the peer's SA survives.
    pub event: Option<super::Event>,
}

/// Work waiting for the request window (size 1, §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    RekeyChild(u32),
    DeleteChild(u32),
    DeleteIke,
    RekeyIke,
    /// An additional Child SA (RFC 7296 §1.3.1).
    CreateChild(Box<QueuedCreate>),
}

/// An additional Child SA asked for with `Endpoint::create_child`, waiting for the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueuedCreate {
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// DH group the peer asked for with INVALID_KE_PAYLOAD.
    pub group: Option<crate::transform::DhId>,
    /// Already retried once after INVALID_KE_PAYLOAD.
    pub retried: bool,
}

/// Our outstanding CREATE_CHILD_SA for an additional Child SA.
#[derive(Debug)]
pub(crate) struct PendingCreate {
    pub child: ChildOffer,
    pub retried: bool,
}

/// Our outstanding IKE SA rekey (RFC 7296 §2.18).
#[derive(Debug)]
pub(crate) struct PendingIkeRekey {
    pub new_spi: u64,
    pub ni: Vec<u8>,
    pub kx: KeyExchange,
    pub offer: SaPayload,
    /// Lost a collision: a success answer creates a redundant IKE SA we delete at once.
    pub abandoned: bool,
}

/// Our outstanding request (window size 1, §2.3) and its retransmission schedule.
#[derive(Debug)]
pub(crate) struct Outstanding {
    pub msg_id: u32,
    /// The request as sent: one message or its SKF fragments (retransmitted as a whole).
    pub bytes: Vec<Vec<u8>>,
    /// Transmissions so far.
    pub sent: u32,
    pub deadline: Instant,
    pub kind: Request,
}

/// IKE SA keys and the two SK payload ciphers (§2.14, §3.14).
#[derive(Debug)]
pub(crate) struct Keys {
    pub suite: IkeSuite,
    pub prf: Prf,
    pub sk: IkeSaKeys,
    /// Seals what we send.
    pub tx: SkCipher,
    /// Opens what we receive.
    pub rx: SkCipher,
}

impl Keys {
    /// Keys of a rekeyed IKE SA (§2.18): SKEYSEED = prf_old(SK_d old, g^ir | Ni | Nr), then
    /// the new suite's prf+ over Ni | Nr | SPIi | SPIr.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn derive_rekeyed(
        old: &Keys,
        suite: IkeSuite,
        ni: &[u8],
        nr: &[u8],
        ispi: u64,
        rspi: u64,
        g_ir: &[u8],
        initiator: bool,
    ) -> Result<Keys, CryptoError> {
        let seed = crate::crypto::rekey_skeyseed(&old.prf, old.sk.sk_d.as_bytes(), g_ir, ni, nr);
        Self::from_seed(suite, seed.as_bytes(), ni, nr, ispi, rspi, initiator)
    }

    pub(crate) fn derive(
        suite: IkeSuite,
        ni: &[u8],
        nr: &[u8],
        ispi: u64,
        rspi: u64,
        g_ir: &[u8],
        initiator: bool,
    ) -> Result<Keys, CryptoError> {
        let prf = Prf::new(suite.prf)?;
        let seed = skeyseed(&prf, ni, nr, g_ir);
        Self::from_seed(suite, seed.as_bytes(), ni, nr, ispi, rspi, initiator)
    }

    fn from_seed(
        suite: IkeSuite,
        seed: &[u8],
        ni: &[u8],
        nr: &[u8],
        ispi: u64,
        rspi: u64,
        initiator: bool,
    ) -> Result<Keys, CryptoError> {
        let prf = Prf::new(suite.prf)?;
        let integ = crate::negotiate::real_integ(suite.integ);
        let sk = ike_sa_keys(
            &prf,
            seed,
            ni,
            nr,
            &ispi.to_be_bytes(),
            &rspi.to_be_bytes(),
            suite.encr.id,
            suite.encr.key_bits,
            integ,
        )?;
        Self::with_ciphers(suite, prf, sk, initiator)
    }

    /// Keys of an IKE SA continued from its exported raw keys (a standby taking over, see
    /// `export`): nothing is derived, the SK ciphers are rebuilt from SK_e* / SK_a*. Every key
    /// must have the length the suite gives it (RFC 7296 §2.14).
    pub(crate) fn from_raw(
        suite: IkeSuite,
        sk: IkeSaKeys,
        initiator: bool,
    ) -> Result<Keys, CryptoError> {
        let prf = Prf::new(suite.prf)?;
        let integ = crate::negotiate::real_integ(suite.integ);
        check_ike_sa_keys(&prf, &sk, suite.encr.id, suite.encr.key_bits, integ)?;
        Self::with_ciphers(suite, prf, sk, initiator)
    }

    fn with_ciphers(
        suite: IkeSuite,
        prf: Prf,
        sk: IkeSaKeys,
        initiator: bool,
    ) -> Result<Keys, CryptoError> {
        let integ = crate::negotiate::real_integ(suite.integ);
        let mk = |e: &[u8], a: &[u8]| -> Result<SkCipher, CryptoError> {
            let encr = Encr::new(suite.encr.id, suite.encr.key_bits, e)?;
            let integ = match integ {
                Some(i) => Some(Integ::new(i, a)?),
                None => None,
            };
            SkCipher::new(encr, integ)
        };
        let i2r = mk(sk.sk_ei.as_bytes(), sk.sk_ai.as_bytes())?;
        let r2i = mk(sk.sk_er.as_bytes(), sk.sk_ar.as_bytes())?;
        let (tx, rx) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
        Ok(Keys {
            suite,
            prf,
            sk,
            tx,
            rx,
        })
    }
}

/// Initiator: IKE_SA_INIT sent.
#[derive(Debug)]
pub(crate) struct InitSent {
    pub ni: Vec<u8>,
    pub kx: KeyExchange,
    pub offer: SaPayload,
    /// The request as sent (signed by our AUTH).
    pub request: Vec<u8>,
    pub cookie: Option<Vec<u8>>,
    pub retries: u32,
}

/// Initiator: IKE_AUTH sent.
#[derive(Debug)]
pub(crate) struct AuthSent {
    pub keys: Keys,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    /// The responder's IKE_SA_INIT response as received (signed by its AUTH).
    pub init_response: Vec<u8>,
    /// The first Child SA we offered.
    pub child: ChildOffer,
}

/// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH (half-open).
#[derive(Debug)]
pub(crate) struct ExpectAuth {
    pub keys: Keys,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub init_request: Vec<u8>,
    pub init_response: Vec<u8>,
}

/// Authenticated.
#[derive(Debug)]
pub(crate) struct Established {
    pub keys: Keys,
}

#[derive(Debug)]
pub(crate) enum State {
    InitSent(Box<InitSent>),
    AuthSent(Box<AuthSent>),
    ExpectAuth(Box<ExpectAuth>),
    Established(Box<Established>),
    /// Failed or deleted: dropped from the tables after the current step.
    Dead,
}

impl State {
    pub(crate) fn keys(&self) -> Option<&Keys> {
        match self {
            State::AuthSent(s) => Some(&s.keys),
            State::ExpectAuth(s) => Some(&s.keys),
            State::Established(s) => Some(&s.keys),
            State::InitSent(_) | State::Dead => None,
        }
    }
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self, State::Dead)
    }
}

/// One IKE SA.
#[derive(Debug)]
pub(crate) struct IkeSa {
    pub conn: usize,
    pub initiator: bool,
    pub ispi: u64,
    pub rspi: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The peer address of the IKE_SA_INIT exchange (responder index key).
    pub init_remote: SocketAddr,
    /// UDP encapsulation (NAT detected or forced).
    pub nat: bool,
    /// NAT detection found us behind a NAT (our NAT_DETECTION_DESTINATION_IP did not match).
    pub nat_local: bool,
    /// NAT detection found the peer behind a NAT (no NAT_DETECTION_SOURCE_IP matched).
    pub nat_peer: bool,
    pub state: State,
    pub next_msg_id: u32,
    pub outstanding: Option<Outstanding>,
    /// Next request ID expected from the peer.
    pub peer_msg_id: u32,
    /// Last response sent (message ID, bytes) for retransmitted requests.
    pub cached: Option<(u32, Vec<Vec<u8>>)>,
    /// Child SAs: (our inbound SPI, our outbound SPI).
    pub children: Vec<(u32, u32)>,
    /// Half-open expiry.
    pub expires: Option<Instant>,
    /// Lifetimes and status of each Child SA, by inbound SPI.
    pub child_info: std::collections::HashMap<u32, ChildInfo>,
    /// Our outstanding Child SA rekey.
    pub rekey: Option<PendingRekey>,
    /// Child SAs (by inbound SPI) negotiated but not reported to the driver: redundant ones of a
    /// rekey collision (§2.8.1), deleted without events.
    pub hidden: std::collections::HashSet<u32>,
    /// Requests waiting for the window.
    pub queue: std::collections::VecDeque<Action>,
    /// Last sign of life from the peer (authenticated IKE message or reported ESP traffic).
    pub last_inbound: Option<Instant>,
    /// Our outstanding IKE SA rekey.
    pub ike_rekey: Option<PendingIkeRekey>,
    /// IKE SA soft and hard lifetime deadlines (scheduled on the first service).
    pub ike_rekey_at: Option<Instant>,
    pub ike_expire_at: Option<Instant>,
    /// Replaced by a rekeyed IKE SA: only its DELETE remains; it vanishes without events.
    pub superseded: bool,
    /// Both sides announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 §2.3).
    pub frag: bool,
    /// Fragments of one incoming message being reassembled (RFC 7383 §2.6).
    pub reassembly: Option<Reassembly>,
    /// Our outstanding CREATE_CHILD_SA for an additional Child SA.
    pub create: Option<PendingCreate>,
    /// The IKE SA that replaced this one (set when `superseded` by a rekey).
    pub successor: Option<u64>,
    /// When IKE_SA_INIT was sent (initiator) or received (responder); for a rekeyed IKE SA,
    /// when the rekey completed.
    pub started: Instant,
    /// When the IKE SA was authenticated (or its rekey completed).
    pub established_at: Option<Instant>,
    /// Its IKE_AUTH carried INITIAL_CONTACT (sent by us as initiator, or received).
    pub initial_contact: bool,
    /// Run `service` at this time (an imported SA with queued work and a free window).
    pub wake_at: Option<Instant>,
}

/// Verified, decrypted fragments of one message (RFC 7383 §2.6), bounded in count, size and
/// time by the endpoint.
#[derive(Debug)]
pub(crate) struct Reassembly {
    pub msg_id: u32,
    pub response: bool,
    pub total: u16,
    pub first_next: Option<crate::wire::PayloadType>,
    pub parts: std::collections::BTreeMap<u16, Vec<u8>>,
    pub bytes: usize,
    pub started: Instant,
}

impl IkeSa {
    pub(crate) fn new(
        conn: usize,
        initiator: bool,
        ispi: u64,
        rspi: u64,
        local: SocketAddr,
        remote: SocketAddr,
        started: Instant,
    ) -> Self {
        Self {
            conn,
            initiator,
            ispi,
            rspi,
            local,
            remote,
            init_remote: remote,
            nat: false,
            nat_local: false,
            nat_peer: false,
            state: State::Dead,
            next_msg_id: 0,
            outstanding: None,
            peer_msg_id: 0,
            cached: None,
            children: Vec::new(),
            expires: None,
            child_info: std::collections::HashMap::new(),
            rekey: None,
            hidden: std::collections::HashSet::new(),
            queue: std::collections::VecDeque::new(),
            last_inbound: None,
            ike_rekey: None,
            ike_rekey_at: None,
            ike_expire_at: None,
            superseded: false,
            frag: false,
            reassembly: None,
            create: None,
            successor: None,
            started,
            initial_contact: false,
            established_at: None,
            wake_at: None,
        }
    }

    pub(crate) fn our_spi(&self) -> u64 {
        if self.initiator { self.ispi } else { self.rspi }
    }

    /// Header flags for a message we send.
    pub(crate) fn flags(&self, response: bool) -> Flags {
        let mut f = if self.initiator {
            Flags::INITIATOR
        } else {
            Flags(0)
        };
        if response {
            f = f | Flags::RESPONSE;
        }
        f
    }

    /// The inbound Child SA SPIs reserved by our outstanding exchanges (IKE_AUTH, a Child SA
    /// rekey, an additional Child SA).
    pub(crate) fn pending_child_spis(&self) -> Vec<u32> {
        let auth = match &self.state {
            State::AuthSent(s) => Some(s.child.spi),
            _ => None,
        };
        [
            auth,
            self.rekey.as_ref().map(|r| r.child.spi),
            self.create.as_ref().map(|c| c.child.spi),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
