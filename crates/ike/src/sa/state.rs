//! Per-IKE-SA state (RFC 7296 §2.1-§2.2, §2.14): one type per handshake stage, so keys exist
//! only from IKE_SA_INIT on and never as an `Option` in a grab-bag struct.

use crate::crypto::{
    CryptoError, Encr, IkeSaKeys, Integ, KeyExchange, Prf, SkCipher, ike_sa_keys, skeyseed,
};
use crate::proposal::IkeSuite;
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
}

/// Our outstanding request (window size 1, §2.3) and its retransmission schedule.
#[derive(Debug)]
pub(crate) struct Outstanding {
    pub msg_id: u32,
    pub bytes: Vec<u8>,
    /// Transmissions so far.
    pub sent: u32,
    pub deadline: Instant,
    pub kind: Request,
}

/// IKE SA keys and the two SK payload ciphers (§2.14, §3.14).
#[derive(Debug)]
pub(crate) struct Keys {
    #[allow(dead_code)]
    pub suite: IkeSuite,
    pub prf: Prf,
    pub sk: IkeSaKeys,
    /// Seals what we send.
    pub tx: SkCipher,
    /// Opens what we receive.
    pub rx: SkCipher,
}

impl Keys {
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
        let integ = crate::negotiate::real_integ(suite.integ);
        let sk = ike_sa_keys(
            &prf,
            seed.as_bytes(),
            ni,
            nr,
            &ispi.to_be_bytes(),
            &rspi.to_be_bytes(),
            suite.encr.id,
            suite.encr.key_bits,
            integ,
        )?;
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
    pub child_spi: u32,
    pub esp_offer: SaPayload,
    pub tsi: Vec<TrafficSelector>,
    pub tsr: Vec<TrafficSelector>,
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
    pub state: State,
    pub next_msg_id: u32,
    pub outstanding: Option<Outstanding>,
    /// Next request ID expected from the peer.
    pub peer_msg_id: u32,
    /// Last response sent (message ID, bytes) for retransmitted requests.
    pub cached: Option<(u32, Vec<u8>)>,
    /// Child SAs: (our inbound SPI, our outbound SPI).
    pub children: Vec<(u32, u32)>,
    /// Half-open expiry.
    pub expires: Option<Instant>,
}

impl IkeSa {
    pub(crate) fn new(
        conn: usize,
        initiator: bool,
        ispi: u64,
        rspi: u64,
        local: SocketAddr,
        remote: SocketAddr,
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
            state: State::Dead,
            next_msg_id: 0,
            outstanding: None,
            peer_msg_id: 0,
            cached: None,
            children: Vec::new(),
            expires: None,
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

    /// The inbound Child SA SPI reserved while IKE_AUTH is outstanding.
    pub(crate) fn pending_child_spi(&self) -> Option<u32> {
        match &self.state {
            State::AuthSent(s) => Some(s.child_spi),
            _ => None,
        }
    }
}
