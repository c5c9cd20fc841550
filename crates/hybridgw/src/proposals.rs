//! Proposals as an operator writes them (RFC 7296 §3.3, RFC 8247 §2-3): strongSwan proposal
//! strings, the `azure-default` preset and Azure custom-policy names, rendered in both syntaxes.
//!
//! A thin layer over `ike::proposal`, the one place that knows the algorithms, their names in both
//! vocabularies, Azure's default policy and which transforms are legacy or not implemented.

use ike::proposal::{self as ip, azure};
use ike::transform::IntegId;

pub use ike::proposal::{Proposal, Protocol};

/// The Azure preset name.
pub const AZURE_DEFAULT: &str = "azure-default";

/// Parse a comma-separated list of strongSwan proposals, where the preset `azure-default` may
/// stand for Azure's default proposals of that protocol.
pub fn parse_list(protocol: Protocol, text: &str) -> Result<Vec<Proposal>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.eq_ignore_ascii_case(AZURE_DEFAULT) {
            let preset = ip::preset(AZURE_DEFAULT).map_err(|e| e.to_string())?;
            out.extend(match protocol {
                Protocol::Ike => preset.ike,
                Protocol::Esp => preset.esp,
            });
        } else {
            out.push(Proposal::parse(protocol, part).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

/// Azure's default proposals of a protocol (the default when a connection names none).
pub fn azure_default(protocol: Protocol) -> Vec<Proposal> {
    match protocol {
        Protocol::Ike => ip::azure_default_ike(),
        Protocol::Esp => ip::azure_default_esp(),
    }
}

/// The Azure name of an IKE PRF: the integrity algorithm it follows.
fn prf_azure_name(prf: ike::transform::PrfId) -> Option<&'static str> {
    [
        IntegId::AUTH_HMAC_SHA2_384_192,
        IntegId::AUTH_HMAC_SHA2_256_128,
        IntegId::AUTH_HMAC_SHA1_96,
        IntegId::AUTH_HMAC_MD5_96,
    ]
    .into_iter()
    .find(|i| ip::prf_for_integ(*i) == Some(prf))
    .and_then(azure::ike_integrity_name)
}

/// Azure's names: `ENCRYPTION/INTEGRITY/DHGROUP` for IKE, `ENCRYPTION/INTEGRITY/PFSGROUP` for ESP;
/// alternatives joined by `|`; `(none: x)` where Azure has no name for `x`.
pub fn azure_names(p: &Proposal) -> String {
    let none = |what: String| format!("(none: {what})");
    let ss = |f: &dyn Fn(&mut Proposal)| {
        let mut q = Proposal::empty(p.protocol);
        f(&mut q);
        q.to_strongswan()
    };
    let encr: Vec<String> = p
        .encr
        .iter()
        .map(|e| {
            let n = match p.protocol {
                Protocol::Ike => azure::ike_encryption_name(*e),
                Protocol::Esp => azure::ipsec_encryption_name(*e),
            };
            n.map(str::to_string)
                .unwrap_or_else(|| none(ss(&|q| q.encr.push(*e))))
        })
        .collect();
    let integ: Vec<String> = match p.protocol {
        Protocol::Ike if p.integ.is_empty() => p
            .prf
            .iter()
            .map(|f| {
                prf_azure_name(*f)
                    .map(str::to_string)
                    .unwrap_or_else(|| none(ss(&|q| q.prf.push(*f))))
            })
            .collect(),
        Protocol::Ike => p
            .integ
            .iter()
            .map(|i| {
                azure::ike_integrity_name(*i)
                    .map(str::to_string)
                    .unwrap_or_else(|| none(ss(&|q| q.integ.push(*i))))
            })
            .collect(),
        Protocol::Esp if p.integ.is_empty() => encr.clone(),
        Protocol::Esp => p
            .integ
            .iter()
            .map(|i| {
                azure::ipsec_integrity_name(*i)
                    .map(str::to_string)
                    .unwrap_or_else(|| none(ss(&|q| q.integ.push(*i))))
            })
            .collect(),
    };
    let dh: Vec<String> = match p.protocol {
        Protocol::Ike => {
            p.dh.iter()
                .map(|d| {
                    azure::dh_group_name(*d)
                        .map(str::to_string)
                        .unwrap_or_else(|| none(ss(&|q| q.dh.push(*d))))
                })
                .collect()
        }
        Protocol::Esp if p.dh.is_empty() => vec!["None".to_string()],
        Protocol::Esp => {
            p.dh.iter()
                .map(|d| {
                    azure::pfs_group_name(*d)
                        .map(str::to_string)
                        .unwrap_or_else(|| none(ss(&|q| q.dh.push(*d))))
                })
                .collect()
        }
    };
    format!("{}/{}/{}", encr.join("|"), integ.join("|"), dh.join("|"))
}

/// Does this ESP proposal accept what Azure offers when Azure initiates (default policy, PFS none)?
pub fn accepts_azure_initiated(p: &Proposal) -> bool {
    ip::select(&ip::azure_default_esp(), core::slice::from_ref(p)).is_some()
}

/// The field of an Azure custom-policy error, as the configuration key.
fn azure_field_key(field: &str) -> &'static str {
    match field {
        "IkeEncryption" => "ike_encryption",
        "IkeIntegrity" => "ike_integrity",
        "DhGroup" => "dh_group",
        "IpsecEncryption" => "ipsec_encryption",
        "IpsecIntegrity" => "ipsec_integrity",
        "PfsGroup" => "pfs_group",
        _ => "ipsec_integrity",
    }
}

/// The IKE and ESP proposals of an Azure custom policy written with Azure's names. On error: the
/// configuration key (`dh_group`, ...) and the message.
pub fn from_azure_policy(
    ike_encryption: &str,
    ike_integrity: &str,
    dh_group: &str,
    ipsec_encryption: &str,
    ipsec_integrity: &str,
    pfs_group: &str,
) -> Result<(Proposal, Proposal), (&'static str, String)> {
    match azure::AzurePolicy::parse(
        ike_encryption,
        ike_integrity,
        dh_group,
        ipsec_encryption,
        ipsec_integrity,
        pfs_group,
    ) {
        Ok(pol) => Ok((pol.ike_proposal(), pol.esp_proposal())),
        Err(ip::ProposalError::UnknownAzureName { field, name, valid }) => Err((
            azure_field_key(field),
            format!(
                "unknown Azure name `{name}` (expected one of: {})",
                valid.join(", ")
            ),
        )),
        Err(e) => {
            let key = if e.to_string().contains("DhGroup") {
                "dh_group"
            } else {
                "ipsec_integrity"
            };
            Err((key, e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_syntaxes() {
        let p = Proposal::parse(Protocol::Ike, "aes256-sha256-modp2048").unwrap();
        assert_eq!(p.to_strongswan(), "aes256-sha256-modp2048");
        assert_eq!(azure_names(&p), "AES256/SHA256/DHGroup14");
        assert!(!p.azure_default_accepts());
        let g = Proposal::parse(Protocol::Esp, "aes256gcm16").unwrap();
        assert_eq!(azure_names(&g), "GCMAES256/GCMAES256/None");
        assert!(g.azure_default_accepts());
        assert!(accepts_azure_initiated(&g));
        let gi = Proposal::parse(Protocol::Ike, "aes256gcm16-prfsha384-ecp384").unwrap();
        assert_eq!(azure_names(&gi), "GCMAES256/SHA384/ECP384");
        let x = Proposal::parse(Protocol::Ike, "aes256-sha256-curve25519").unwrap();
        assert_eq!(azure_names(&x), "AES256/SHA256/(none: curve25519)");
    }

    #[test]
    fn preset_expands_and_is_flagged_legacy() {
        let ike = parse_list(Protocol::Ike, "azure-default").unwrap();
        assert_eq!(ike.len(), 6);
        assert!(
            ike.iter()
                .all(|p| p.azure_default_accepts() && !p.legacy_warnings().is_empty())
        );
        let esp = parse_list(Protocol::Esp, "aes128gcm16, azure-default").unwrap();
        assert_eq!(esp.len(), 7);
        assert!(
            parse_list(Protocol::Ike, "aes256-sha256-modp2047")
                .unwrap_err()
                .contains("modp2047")
        );
    }

    #[test]
    fn azure_custom_policy() {
        let (ike, esp) = from_azure_policy(
            "GCMAES256",
            "SHA384",
            "ECP384",
            "GCMAES256",
            "GCMAES256",
            "ECP384",
        )
        .unwrap();
        assert_eq!(ike.to_strongswan(), "aes256gcm16-prfsha384-ecp384");
        assert_eq!(esp.to_strongswan(), "aes256gcm16-ecp384");
        let e = from_azure_policy(
            "GCMAES256",
            "SHA384",
            "ECP385",
            "GCMAES256",
            "GCMAES256",
            "None",
        )
        .unwrap_err();
        assert_eq!(e.0, "dh_group");
        assert!(e.1.contains("ECP385"));
        let e = from_azure_policy(
            "AES256",
            "SHA256",
            "DHGroup14",
            "GCMAES256",
            "SHA256",
            "None",
        )
        .unwrap_err();
        assert_eq!(e.0, "ipsec_integrity");
    }
}
