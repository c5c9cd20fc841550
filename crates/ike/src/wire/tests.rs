//! Unit tests of the IKEv2 codec (RFC 7296 §3): round trips, critical-bit handling, and
//! hostile-input robustness.

use super::*;
use std::net::{IpAddr, Ipv4Addr};

fn sample() -> Message {
    Message {
        header: Header {
            ispi: 0x0102030405060708,
            rspi: 0,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: Flags::INITIATOR,
            message_id: 0,
            length: 0,
        },
        payloads: vec![
            Payload::Sa(SaPayload {
                proposals: vec![ProposalRepr {
                    number: 1,
                    protocol: ProtocolId::IKE,
                    spi: vec![],
                    transforms: vec![
                        TransformRepr {
                            ttype: 1,
                            id: 12,
                            attributes: vec![Attribute::Tv(ATTR_KEY_LENGTH, 256)],
                        },
                        TransformRepr {
                            ttype: 2,
                            id: 5,
                            attributes: vec![],
                        },
                        TransformRepr {
                            ttype: 3,
                            id: 12,
                            attributes: vec![],
                        },
                        TransformRepr {
                            ttype: 4,
                            id: 14,
                            attributes: vec![],
                        },
                    ],
                }],
            }),
            Payload::Ke(KePayload {
                group: 14,
                data: vec![7; 256],
            }),
            Payload::Nonce(vec![9; 32]),
            Payload::Notify(NotifyPayload::new(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                vec![1; 20],
            )),
            Payload::TsI(vec![
                TrafficSelector::any_v4(),
                TrafficSelector::from_prefix(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 7)), 24),
                TrafficSelector::any_v6(),
            ]),
            Payload::Delete(DeletePayload {
                protocol: ProtocolId::ESP,
                spis: vec![vec![1, 2, 3, 4]],
            }),
            Payload::IdI(IdPayload {
                id_type: IdType::FQDN,
                data: b"gw.example".to_vec(),
            }),
            Payload::Auth(AuthPayload {
                method: AuthMethod::SHARED_KEY_MIC,
                data: vec![3; 32],
            }),
            Payload::VendorId(b"hybridgw".to_vec()),
        ],
    }
}

#[test]
fn round_trip() {
    let m = sample();
    let bytes = m.emit().unwrap();
    let back = Message::parse(&bytes).unwrap();
    assert_eq!(back.header.length as usize, bytes.len());
    assert_eq!(back.payloads, m.payloads);
    assert_eq!(back.emit().unwrap(), bytes);
    let ts = TrafficSelector::from_prefix(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 7)), 24);
    assert_eq!(ts.start, IpAddr::V4(Ipv4Addr::new(198, 18, 1, 0)));
    assert_eq!(ts.end, IpAddr::V4(Ipv4Addr::new(198, 18, 1, 255)));
}

#[test]
fn unknown_payloads() {
    let m = Message {
        payloads: vec![Payload::Nonce(vec![1; 16])],
        ..sample()
    };
    let mut bytes = m.emit().unwrap();
    // Insert an unknown payload type 200 before the nonce.
    let unknown = [40u8, 0, 0, 6, 0xaa, 0xbb];
    bytes[16] = 200;
    bytes.splice(28..28, unknown);
    let len = bytes.len() as u32;
    bytes[24..28].copy_from_slice(&len.to_be_bytes());
    let back = Message::parse(&bytes).unwrap();
    assert_eq!(back.payloads, vec![Payload::Nonce(vec![1; 16])]);
    bytes[29] = 0x80;
    assert_eq!(
        Message::parse(&bytes),
        Err(WireError::UnsupportedCriticalPayload(PayloadType(200)))
    );
}

#[test]
fn truncations_and_corruptions_never_panic() {
    let bytes = sample().emit().unwrap();
    for cut in 0..bytes.len() {
        let mut b = bytes[..cut].to_vec();
        if b.len() >= 28 {
            let len = b.len() as u32;
            b[24..28].copy_from_slice(&len.to_be_bytes());
        }
        assert!(Message::parse(&b).is_err(), "cut at {cut} parsed");
    }
    // Flip every byte to a few values; it must never panic (result may be Ok or Err).
    let mut parsed_ok = 0;
    for i in 0..bytes.len() {
        for v in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            if Message::parse(&b).is_ok() {
                parsed_ok += 1;
            }
        }
    }
    assert!(parsed_ok > 0);
}

#[test]
fn bad_version_and_length() {
    let mut bytes = sample().emit().unwrap();
    bytes[17] = 0x30;
    assert_eq!(
        Message::parse(&bytes),
        Err(WireError::UnsupportedVersion(3))
    );
    bytes[17] = 0x20;
    bytes.push(0);
    assert_eq!(
        Message::parse(&bytes),
        Err(WireError::BadLength("IKE datagram"))
    );
}

mod prop {
    use super::super::*;
    use proptest::prelude::*;
    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Message::parse(&data);
        }
        #[test]
        fn parse_never_panics_with_valid_header(mut data in proptest::collection::vec(any::<u8>(), 28..600), first in 33u8..54) {
            data[16] = first;
            data[17] = 0x20;
            let len = data.len() as u32;
            data[24..28].copy_from_slice(&len.to_be_bytes());
            if let Ok(m) = Message::parse(&data) {
                // What parses re-encodes to something that parses the same way.
                if let Ok(b) = m.emit() {
                    let again = Message::parse(&b).map(|a| a.payloads.iter().map(Payload::payload_type).collect::<Vec<_>>());
                    prop_assert_eq!(again, Ok(m.payloads.iter().map(Payload::payload_type).collect::<Vec<_>>()));
                }
            }
        }
    }
}
