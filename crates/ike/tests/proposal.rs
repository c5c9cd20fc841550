//! Proposal strings, presets, Azure names and responder selection (RFC 7296 §2.7, §3.3).

use ike::proposal::{
    AzurePolicy, EncrAlg, KEYWORDS, Keyword, Proposal, ProposalError, Protocol, Transform, azure,
    azure_default_esp, azure_default_ike, describe, preset, select, valid_keywords,
};
use ike::transform::{DhId, EncrId, EsnId, IntegId, PrfId, TransformType};

fn ike(s: &str) -> Proposal {
    Proposal::parse_ike(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}
fn esp(s: &str) -> Proposal {
    Proposal::parse_esp(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn strongswan_examples_parse_to_the_right_transforms() {
    let p = ike("aes256-sha256-modp2048");
    assert_eq!(p.encr, [EncrAlg::aes_cbc(256)]);
    assert_eq!(p.integ, [IntegId::AUTH_HMAC_SHA2_256_128]);
    assert_eq!(
        p.prf,
        [PrfId::PRF_HMAC_SHA2_256],
        "sha256 implies prfsha256 in IKE"
    );
    assert_eq!(p.dh, [DhId::MODP_2048]);
    assert!(p.esn.is_empty());

    let p = ike("aes256-sha1-modp1024");
    assert_eq!(
        (p.prf[0], p.integ[0], p.dh[0]),
        (
            PrfId::PRF_HMAC_SHA1,
            IntegId::AUTH_HMAC_SHA1_96,
            DhId::MODP_1024
        )
    );

    let p = ike("aes256gcm16-prfsha384-ecp384");
    assert_eq!(p.encr, [EncrAlg::aes_gcm16(256)]);
    assert!(p.integ.is_empty());
    assert_eq!(p.prf, [PrfId::PRF_HMAC_SHA2_384]);
    assert_eq!(p.dh, [DhId::ECP_384]);

    let p = ike("aes128gcm16-prfsha256-x25519");
    assert_eq!(
        (p.encr[0], p.prf[0], p.dh[0]),
        (
            EncrAlg::aes_gcm16(128),
            PrfId::PRF_HMAC_SHA2_256,
            DhId::CURVE25519
        )
    );

    let p = ike("aes128-aes256-sha1-sha256-modp2048-ecp256");
    assert_eq!(p.encr, [EncrAlg::aes_cbc(128), EncrAlg::aes_cbc(256)]);
    assert_eq!(
        p.integ,
        [IntegId::AUTH_HMAC_SHA1_96, IntegId::AUTH_HMAC_SHA2_256_128]
    );
    assert_eq!(p.prf, [PrfId::PRF_HMAC_SHA1, PrfId::PRF_HMAC_SHA2_256]);
    assert_eq!(p.dh, [DhId::MODP_2048, DhId::ECP_256]);

    // An explicit PRF replaces the implied ones.
    let p = ike("aes256-sha256-prfsha512-ecp256");
    assert_eq!(p.prf, [PrfId::PRF_HMAC_SHA2_512]);
    // Integrity next to an AEAD cipher only implies the PRF (as in strongSwan).
    let p = ike("aes256gcm16-sha384-ecp384");
    assert!(p.integ.is_empty());
    assert_eq!(p.prf, [PrfId::PRF_HMAC_SHA2_384]);

    let p = esp("aes256gcm16");
    assert_eq!(
        (p.encr.as_slice(), p.integ.len(), p.dh.len()),
        ([EncrAlg::aes_gcm16(256)].as_slice(), 0, 0)
    );
    assert_eq!(p.esn, [EsnId::NO], "no esn keyword means noesn");
    assert!(p.prf.is_empty());
    let p = esp("aes256-sha1");
    assert_eq!(
        (p.encr[0], p.integ.as_slice()),
        (
            EncrAlg::aes_cbc(256),
            [IntegId::AUTH_HMAC_SHA1_96].as_slice()
        )
    );
    assert!(p.prf.is_empty(), "ESP never gets a PRF");
    assert_eq!(esp("aes256gcm16-modp2048").dh, [DhId::MODP_2048]);
    assert_eq!(esp("aes256-sha256-esn").esn, [EsnId::YES]);
    assert_eq!(esp("aes128-sha256-noesn").esn, [EsnId::NO]);
    assert_eq!(esp("aes128-sha256-esn-noesn").esn, [EsnId::YES, EsnId::NO]);
    assert_eq!(
        esp("aes256gcm128").encr,
        [EncrAlg::aes_gcm16(256)],
        "gcm128 alias of gcm16"
    );
    assert_eq!(esp("3des-sha1").encr, [EncrAlg::TRIPLE_DES]);
    // Keywords are case-insensitive, whitespace around the string ignored.
    assert_eq!(
        ike(" AES256-SHA256-MODP2048 "),
        ike("aes256-sha256-modp2048")
    );
}

#[test]
fn every_keyword_parses() {
    for (name, kw) in KEYWORDS {
        for protocol in [Protocol::Ike, Protocol::Esp] {
            // Build a minimal valid proposal around the keyword.
            let s = match kw {
                Keyword::Encr(e) if e.id.is_aead() && protocol == Protocol::Esp => {
                    format!("{name}-modp2048")
                }
                Keyword::Encr(e) if e.id.is_aead() => format!("{name}-prfsha256-modp2048"),
                Keyword::Encr(_) => format!("{name}-sha256-modp2048"),
                Keyword::Integ(_) => format!("aes128-{name}-modp2048"),
                Keyword::Prf(_) => format!("aes128gcm16-{name}-modp2048"),
                Keyword::Dh(_) => format!("aes128-sha256-{name}"),
                Keyword::Esn(_) => format!("aes128-sha256-{name}"),
            };
            let r = Proposal::parse(protocol, &s);
            let allowed = !matches!(
                (protocol, kw),
                (Protocol::Esp, Keyword::Prf(_)) | (Protocol::Ike, Keyword::Esn(_))
            );
            if allowed {
                let p = r.unwrap_or_else(|e| panic!("{protocol} {s}: {e}"));
                let t = match kw {
                    Keyword::Encr(e) => p.encr.contains(e),
                    Keyword::Integ(i) => p.integ.contains(i),
                    Keyword::Prf(f) => p.prf.contains(f),
                    Keyword::Dh(d) => p.dh.contains(d),
                    Keyword::Esn(e) => p.esn.contains(e),
                };
                assert!(t, "{protocol} {s}: keyword {name} lost");
                assert!(valid_keywords(protocol).contains(name));
            } else {
                assert!(
                    matches!(r, Err(ProposalError::NotAllowed { ref token, .. }) if token == name),
                    "{s}"
                );
                assert!(!valid_keywords(protocol).contains(name));
            }
        }
    }
}

#[test]
fn render_is_canonical_and_roundtrips() {
    let cases: &[(Protocol, &str, &str)] = &[
        (
            Protocol::Ike,
            "aes256-sha256-modp2048",
            "aes256-sha256-modp2048",
        ),
        (
            Protocol::Ike,
            "aes256-sha1-modp1024",
            "aes256-sha1-modp1024",
        ),
        (
            Protocol::Ike,
            "aes256gcm16-prfsha384-ecp384",
            "aes256gcm16-prfsha384-ecp384",
        ),
        (
            Protocol::Ike,
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16-prfsha256-curve25519",
        ),
        (
            Protocol::Ike,
            "aes128-aes256-sha1-sha256-modp2048-ecp256",
            "aes128-aes256-sha1-sha256-modp2048-ecp256",
        ),
        (
            Protocol::Ike,
            "modp2048-sha256-aes256",
            "aes256-sha256-modp2048",
        ),
        (
            Protocol::Ike,
            "aes256-sha256-prfsha512-ecp256",
            "aes256-sha256-prfsha512-ecp256",
        ),
        (
            Protocol::Ike,
            "aes256gcm16-sha384-ecp384",
            "aes256gcm16-prfsha384-ecp384",
        ),
        (
            Protocol::Ike,
            "aes-sha-modp2048s256",
            "aes128-sha1-modp2048s256",
        ),
        (Protocol::Esp, "aes256gcm16", "aes256gcm16"),
        (Protocol::Esp, "aes256gcm128", "aes256gcm16"),
        (Protocol::Esp, "aes256-sha1", "aes256-sha1"),
        (
            Protocol::Esp,
            "aes256gcm16-modp2048",
            "aes256gcm16-modp2048",
        ),
        (Protocol::Esp, "aes256-sha256-esn", "aes256-sha256-esn"),
        (Protocol::Esp, "aes128-sha256-noesn", "aes128-sha256"),
        (
            Protocol::Esp,
            "aes128-sha256-esn-noesn",
            "aes128-sha256-esn-noesn",
        ),
    ];
    for (protocol, input, canonical) in cases {
        let p = Proposal::parse(*protocol, input).unwrap();
        assert_eq!(p.to_strongswan(), *canonical, "{input}");
        let again = Proposal::parse(*protocol, canonical).unwrap();
        assert_eq!(again, p, "parse(render(p)) == p for {input}");
        assert_eq!(again.to_strongswan(), *canonical);
    }
    assert_eq!(
        ike("aes256-sha256-modp2048").to_string(),
        "IKE:aes256-sha256-modp2048"
    );
}

#[test]
fn invalid_tokens_are_named_in_errors() {
    let e = Proposal::parse_ike("aes256-sha257-modp2048").unwrap_err();
    match &e {
        ProposalError::UnknownToken { token, valid, .. } => {
            assert_eq!(token, "sha257");
            assert!(valid.contains(&"sha256") && valid.contains(&"x25519"));
            assert!(!valid.contains(&"esn"), "esn is not valid in IKE");
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("'sha257'")
            && msg.contains("aes256-sha257-modp2048")
            && msg.contains("modp2048s256"),
        "{msg}"
    );

    let e = Proposal::parse_esp("aes256-prfsha256").unwrap_err();
    assert!(
        matches!(&e, ProposalError::NotAllowed { token, .. } if token == "prfsha256"),
        "{e}"
    );
    let e = Proposal::parse_ike("aes256-sha256-modp2048-esn").unwrap_err();
    assert!(e.to_string().contains("'esn'"), "{e}");
    // Empty token (double dash), empty string, missing parts.
    let e = Proposal::parse_ike("aes256--sha256-modp2048").unwrap_err();
    assert!(
        matches!(&e, ProposalError::UnknownToken { token, .. } if token.is_empty()),
        "{e}"
    );
    for (s, what) in [
        ("", "empty"),
        ("sha256-modp2048", "encryption"),
        ("aes256-modp2048", "integrity"),
        ("aes256-sha256", "key exchange"),
        ("aes256gcm16-ecp256", "PRF"),
        ("aes256-aes256gcm16-sha256-modp2048", "AEAD"),
    ] {
        let e = Proposal::parse_ike(s).unwrap_err();
        assert!(e.to_string().contains(what), "{s}: {e}");
    }
    assert!(
        Proposal::parse_esp("aes256")
            .unwrap_err()
            .to_string()
            .contains("integrity")
    );
    // Unknown tokens are never silently dropped, even with weird bytes.
    let e = Proposal::parse_ike("aes256-sha256-modp2048-\u{fffd}").unwrap_err();
    assert!(e.to_string().contains('\u{fffd}'));
    assert!(
        matches!(preset("azure-custom"), Err(ProposalError::UnknownPreset(n)) if n == "azure-custom")
    );
    assert_eq!(
        Proposal::parse_list(Protocol::Ike, "aes256-sha256-modp2048,aes128-sha1-modp1024")
            .unwrap()
            .len(),
        2
    );
    assert!(Proposal::parse_list(Protocol::Ike, "aes256-sha256-modp2048,bogus").is_err());
}

#[test]
fn transforms_roundtrip_through_wire_form() {
    let p = ike("aes128-aes256-sha1-sha256-modp2048-ecp256");
    let t: Vec<Transform> = p.transforms().collect();
    assert_eq!(
        t[0],
        Transform {
            ty: TransformType::ENCR,
            id: 12,
            key_len: Some(128)
        }
    );
    assert_eq!(
        t[2],
        Transform {
            ty: TransformType::PRF,
            id: 2,
            key_len: None
        }
    );
    assert_eq!(t.iter().filter(|x| x.ty == TransformType::DH).count(), 2);
    assert_eq!(Proposal::from_transforms(Protocol::Ike, t).unwrap(), p);
    let e = esp("aes256gcm16-modp2048-esn");
    assert_eq!(
        Proposal::from_transforms(Protocol::Esp, e.transforms()).unwrap(),
        e
    );
    // Unknown IDs survive (and render with IANA-style names); unknown types are refused.
    let odd = Proposal::from_transforms(
        Protocol::Ike,
        [
            Transform {
                ty: TransformType::ENCR,
                id: 99,
                key_len: None,
            },
            Transform {
                ty: TransformType::PRF,
                id: 5,
                key_len: None,
            },
            Transform {
                ty: TransformType::DH,
                id: 31,
                key_len: None,
            },
        ],
    )
    .unwrap();
    assert_eq!(odd.encr[0].id, EncrId(99));
    assert!(odd.to_string().contains("ENCR(99)"), "{odd}");
    assert!(matches!(
        Proposal::from_transforms(
            Protocol::Ike,
            [Transform {
                ty: TransformType(6),
                id: 1,
                key_len: None
            }]
        ),
        Err(ProposalError::UnknownTransformType(TransformType(6)))
    ));
}

#[test]
fn azure_default_preset_contents() {
    let p = preset("azure-default").unwrap();
    let ike_s: Vec<String> = p.ike.iter().map(|p| p.to_strongswan()).collect();
    assert_eq!(
        ike_s,
        [
            "aes256-sha1-modp1024",
            "aes256-sha256-modp1024",
            "aes128-sha1-modp1024",
            "aes128-sha256-modp1024",
            "3des-sha1-modp1024",
            "3des-sha256-modp1024",
        ]
    );
    for x in &p.ike {
        assert_eq!(x.prf.len(), 1);
        assert_eq!(
            Some(x.prf[0]),
            ike::proposal::prf_for_integ(x.integ[0]),
            "PRF follows integrity"
        );
    }
    let esp_s: Vec<String> = p.esp.iter().map(|p| p.to_strongswan()).collect();
    assert_eq!(
        esp_s,
        [
            "aes256gcm16",
            "aes256-sha1",
            "3des-sha1",
            "aes256-sha256",
            "aes128-sha1",
            "3des-sha256"
        ]
    );
    assert!(
        p.esp
            .iter()
            .all(|x| x.dh.is_empty() && x.esn == [EsnId::NO]),
        "PFS none, no ESN"
    );
    assert_eq!(p.ike, azure_default_ike());
    assert_eq!(p.esp, azure_default_esp());

    // 3DES cannot be executed by this crate: supported_only drops those proposals.
    assert!(ike("3des-sha1-modp1024").supported_only().is_none());
    assert_eq!(p.ike.iter().filter_map(Proposal::supported_only).count(), 4);
    assert_eq!(
        ike("3des-aes256-sha1-modp1024")
            .supported_only()
            .unwrap()
            .encr,
        [EncrAlg::aes_cbc(256)]
    );
    assert_eq!(ike("3des-sha1-modp1024").unsupported_transforms(), ["3des"]);
}

#[test]
fn legacy_warnings_and_azure_default_acceptance() {
    let w = ike("3des-sha1-modp1024").legacy_warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w.iter().any(|m| m.contains("3DES")) && w.iter().any(|m| m.contains("group 2")));
    assert!(
        ike("aes256gcm16-prfsha384-ecp384")
            .legacy_warnings()
            .is_empty()
    );
    assert!(
        ike("aes256-sha1-modp2048").legacy_warnings().is_empty(),
        "SHA1 is not flagged"
    );
    assert!(ike("aes256-sha256-modp768").legacy_warnings()[0].contains("MUST NOT"));
    assert_eq!(ike("aes256-sha256-modp2048s256").legacy_warnings().len(), 1);

    assert!(ike("aes256-sha1-modp1024").azure_default_accepts());
    assert!(ike("aes128-sha256-modp1024").azure_default_accepts());
    assert!(ike("aes256-aes128-sha512-sha256-modp2048-modp1024").azure_default_accepts());
    assert!(
        !ike("aes256-sha256-modp2048").azure_default_accepts(),
        "default policy is group 2 only"
    );
    assert!(!ike("aes256gcm16-prfsha384-ecp384").azure_default_accepts());
    assert!(!ike("aes192-sha256-modp1024").azure_default_accepts());
    assert!(esp("aes256gcm16").azure_default_accepts());
    assert!(esp("aes256-sha256").azure_default_accepts());
    assert!(
        esp("aes256-sha1-modp2048").azure_default_accepts(),
        "Azure as responder accepts PFS 14"
    );
    assert!(esp("aes128-sha1-modp2048s256").azure_default_accepts());
    assert!(!esp("aes256-sha1-ecp384").azure_default_accepts());
    assert!(!esp("aes128gcm16").azure_default_accepts());
    assert!(!esp("aes256-sha256-esn").azure_default_accepts());
}

#[test]
fn azure_names_map_both_ways() {
    assert_eq!(
        azure::parse_ike_encryption("GCMAES256").unwrap(),
        EncrAlg::aes_gcm16(256)
    );
    assert_eq!(
        azure::parse_ike_encryption("aes128").unwrap(),
        EncrAlg::aes_cbc(128)
    );
    assert_eq!(
        azure::parse_ike_encryption("DES3").unwrap(),
        EncrAlg::TRIPLE_DES
    );
    assert_eq!(
        azure::parse_ike_integrity("SHA384").unwrap(),
        IntegId::AUTH_HMAC_SHA2_384_192
    );
    assert_eq!(azure::parse_dh_group("DHGroup14").unwrap(), DhId::MODP_2048);
    assert_eq!(
        azure::parse_dh_group("DHGroup2048").unwrap(),
        DhId::MODP_2048
    );
    assert_eq!(azure::parse_dh_group("DHGroup2").unwrap(), DhId::MODP_1024);
    assert_eq!(
        azure::parse_dh_group("DHGroup24").unwrap(),
        DhId::MODP_2048_256
    );
    assert_eq!(azure::parse_dh_group("ECP384").unwrap(), DhId::ECP_384);
    assert_eq!(azure::dh_group_name(DhId::MODP_2048), Some("DHGroup14"));
    assert_eq!(azure::parse_pfs_group("PFS2048").unwrap(), DhId::MODP_2048);
    assert_eq!(azure::parse_pfs_group("None").unwrap(), DhId::NONE);
    assert_eq!(azure::pfs_group_name(DhId::MODP_2048), Some("PFS2048"));
    assert_eq!(azure::pfs_group_name(DhId::ECP_384), Some("ECP384"));
    assert_eq!(azure::parse_ipsec_integrity("GCMAES256").unwrap(), None);
    assert_eq!(
        azure::parse_ipsec_integrity("SHA256").unwrap(),
        Some(IntegId::AUTH_HMAC_SHA2_256_128)
    );
    let e = azure::parse_dh_group("DHGroup15").unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("DhGroup") && m.contains("'DHGroup15'") && m.contains("ECP384"),
        "{m}"
    );
    assert!(
        azure::parse_ipsec_integrity("SHA512")
            .unwrap_err()
            .to_string()
            .contains("GCMAES128")
    );

    // A GCM policy: IKE GCMAES256/SHA384/ECP384, IPsec GCMAES256/GCMAES256/ECP384.
    let pol = AzurePolicy::parse(
        "GCMAES256",
        "SHA384",
        "ECP384",
        "GCMAES256",
        "GCMAES256",
        "ECP384",
    )
    .unwrap();
    assert_eq!(
        pol.ike_proposal().to_strongswan(),
        "aes256gcm16-prfsha384-ecp384"
    );
    assert_eq!(pol.esp_proposal().to_strongswan(), "aes256gcm16-ecp384");
    let names = pol.names().unwrap();
    assert_eq!(
        [
            names.ike_encryption,
            names.ike_integrity,
            names.dh_group,
            names.ipsec_encryption,
            names.ipsec_integrity,
            names.pfs_group
        ],
        [
            "GCMAES256",
            "SHA384",
            "ECP384",
            "GCMAES256",
            "GCMAES256",
            "ECP384"
        ]
    );
    assert_eq!(
        AzurePolicy::from_proposals(&pol.ike_proposal(), &pol.esp_proposal()).unwrap(),
        pol
    );

    // A CBC policy with PFS2048 and the proposal -> Azure direction.
    let pol = AzurePolicy::from_proposals(
        &ike("aes256-sha256-modp2048"),
        &esp("aes256-sha256-modp2048"),
    )
    .unwrap();
    let n = pol.names().unwrap();
    assert_eq!(
        (n.ike_encryption, n.ike_integrity, n.dh_group),
        ("AES256", "SHA256", "DHGroup14")
    );
    assert_eq!(
        (n.ipsec_encryption, n.ipsec_integrity, n.pfs_group),
        ("AES256", "SHA256", "PFS2048")
    );
    let n = AzurePolicy::from_proposals(&ike("aes128gcm16-prfsha256-ecp256"), &esp("aes128gcm16"))
        .unwrap()
        .names()
        .unwrap();
    assert_eq!(
        (
            n.ike_encryption,
            n.ike_integrity,
            n.pfs_group,
            n.ipsec_integrity
        ),
        ("GCMAES128", "SHA256", "None", "GCMAES128")
    );

    // Azure's rules.
    assert!(
        AzurePolicy::parse(
            "AES256",
            "SHA256",
            "DHGroup14",
            "GCMAES256",
            "SHA256",
            "None"
        )
        .is_err()
    );
    assert!(
        AzurePolicy::parse(
            "AES256",
            "SHA256",
            "DHGroup14",
            "AES256",
            "GCMAES256",
            "None"
        )
        .is_err()
    );
    assert!(
        AzurePolicy::parse(
            "AES256",
            "SHA256",
            "DHGroup14",
            "GCMAES256",
            "GCMAES128",
            "None"
        )
        .is_err()
    );
    assert!(AzurePolicy::parse("AES256", "SHA256", "None", "AES256", "SHA256", "None").is_err());
    assert!(
        AzurePolicy::from_proposals(&ike("aes256-sha256-curve25519"), &esp("aes256-sha256"))
            .is_err()
    );
    assert!(
        AzurePolicy::from_proposals(&ike("aes256-aes128-sha256-modp2048"), &esp("aes256-sha256"))
            .is_err()
    );
    assert!(
        AzurePolicy::from_proposals(
            &ike("aes256-sha256-prfsha384-modp2048"),
            &esp("aes256-sha256")
        )
        .is_err()
    );
}

#[test]
fn selection_follows_the_initiators_order() {
    let ours = vec![ike("aes128-aes256-sha256-sha1-modp2048-ecp256")];
    // Peer prefers aes256 and ecp256: its order wins within our allowed set.
    let peer = vec![ike("aes256-aes128-sha1-sha256-ecp256-modp2048")];
    let s = select(&peer, &ours).unwrap();
    assert_eq!(s.peer_index, 0);
    assert_eq!(s.proposal.to_strongswan(), "aes256-sha1-ecp256");
    assert_eq!(s.proposal.prf, [PrfId::PRF_HMAC_SHA1]);

    // Across proposals: the first peer proposal we can satisfy, even if a later one matches
    // our first preference.
    let peer = vec![
        ike("aes256gcm16-prfsha384-ecp384"),
        ike("aes256-sha256-modp2048"),
        ike("aes128-sha1-ecp256"),
    ];
    let ours = vec![ike("aes128-sha1-ecp256"), ike("aes256-sha256-modp2048")];
    let s = select(&peer, &ours).unwrap();
    assert_eq!((s.peer_index, s.our_index), (1, 1));
    assert_eq!(s.proposal, ike("aes256-sha256-modp2048"));

    // Nothing in common.
    let peer = vec![ike("aes256-sha256-modp2048")];
    let ours = vec![ike("aes256gcm16-prfsha384-ecp384")];
    assert!(select(&peer, &ours).is_none());
    let line = describe(&peer, &ours);
    assert_eq!(
        line,
        "peer offered [IKE:aes256-sha256-modp2048]; we allow [IKE:aes256gcm16-prfsha384-ecp384]"
    );

    // Key lengths must match exactly; protocols never mix.
    assert!(
        select(
            &[ike("aes192-sha256-modp2048")],
            &[ike("aes256-sha256-modp2048")]
        )
        .is_none()
    );
    assert!(select(&[esp("aes256-sha256")], &[ike("aes256-sha256-modp2048")]).is_none());

    // ESP: PFS and ESN. A peer without ESN transform is treated as "no ESN".
    let s = select(&[esp("aes256-sha256-esn-noesn")], &[esp("aes256-sha256")]).unwrap();
    assert_eq!(s.proposal.esn, [EsnId::NO]);
    assert!(select(&[esp("aes256-sha256-esn")], &[esp("aes256-sha256")]).is_none());
    let mut no_esn = esp("aes256gcm16");
    no_esn.esn.clear();
    let s = select(&[no_esn], &[esp("aes256gcm16")]).unwrap();
    assert!(
        s.proposal.esn.is_empty(),
        "a type the peer did not send is not returned"
    );
    assert!(
        select(&[esp("aes256gcm16-modp2048")], &[esp("aes256gcm16")]).is_none(),
        "PFS we do not allow"
    );
    assert!(
        select(&[esp("aes256gcm16")], &[esp("aes256gcm16-modp2048")]).is_none(),
        "PFS we require"
    );
    let s = select(
        &[esp("aes256gcm16-ecp256-modp2048")],
        &[esp("aes256gcm16-modp2048-ecp256")],
    )
    .unwrap();
    assert_eq!(s.proposal.dh, [DhId::ECP_256], "initiator's DH order");

    // The chosen proposal has one transform per type and maps to suites.
    let s = select(
        &[ike("aes256gcm16-prfsha384-ecp384")],
        &[ike(
            "aes128gcm16-aes256gcm16-prfsha256-prfsha384-x25519-ecp384",
        )],
    )
    .unwrap();
    let suite = s.proposal.ike_suite().unwrap();
    assert_eq!(
        (suite.encr, suite.prf, suite.integ, suite.dh),
        (
            EncrAlg::aes_gcm16(256),
            PrfId::PRF_HMAC_SHA2_384,
            None,
            DhId::ECP_384
        )
    );
    let c = select(
        &[esp("aes256-sha256-modp2048")],
        &[esp("aes256-sha256-modp2048")],
    )
    .unwrap()
    .proposal
    .child_suite()
    .unwrap();
    assert_eq!(
        (c.integ, c.dh, c.esn),
        (
            Some(IntegId::AUTH_HMAC_SHA2_256_128),
            Some(DhId::MODP_2048),
            EsnId::NO
        )
    );
    assert!(esp("aes256gcm16").ike_suite().is_none());
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary strings are parsed or rejected with an error, never a panic; anything
        /// that parses renders to a canonical form that parses back to the same proposal.
        #[test]
        fn parse_never_panics(s in "[a-z0-9_-]{0,40}|\\PC{0,40}") {
            for protocol in [Protocol::Ike, Protocol::Esp] {
                if let Ok(p) = Proposal::parse(protocol, &s) {
                    prop_assert_eq!(Proposal::parse(protocol, &p.to_strongswan()).unwrap(), p);
                }
            }
        }

        /// Token soup from the keyword table: parse/render roundtrip holds whenever it parses.
        #[test]
        fn keyword_soup_roundtrips(idx in proptest::collection::vec(0usize..KEYWORDS.len(), 1..6)) {
            let s = idx.iter().map(|i| KEYWORDS[*i].0).collect::<Vec<_>>().join("-");
            for protocol in [Protocol::Ike, Protocol::Esp] {
                if let Ok(p) = Proposal::parse(protocol, &s) {
                    let r = p.to_strongswan();
                    prop_assert_eq!(Proposal::parse(protocol, &r).unwrap(), p, "{} -> {}", s, r);
                }
            }
        }
    }
}
