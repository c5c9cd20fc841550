//! IKE and Child SA state as reported by strongSwan's vici `list-sas` (printed by
//! `swanctl --list-sas --raw`), parsed into typed values (RFC 7296 SPIs, RFC 4303 SPIs and counters).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

/// One node of a vici message: a key/value, a list, or a section.
#[derive(Clone, Debug, PartialEq)]
pub enum Vici {
    /// `key=value`
    Value(String),
    /// `key=[a b c]`
    List(Vec<String>),
    /// `name { ... }` (keys in order)
    Section(Vec<(String, Vici)>),
}

impl Vici {
    /// The entries of a section (empty for other nodes).
    pub fn entries(&self) -> &[(String, Vici)] {
        match self {
            Vici::Section(e) => e,
            _ => &[],
        }
    }
    /// The value of `key` in a section.
    pub fn get(&self, key: &str) -> Option<&Vici> {
        self.entries()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
    /// The string value of `key` in a section.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Vici::Value(v)) => Some(v),
            _ => None,
        }
    }
    /// The list value of `key` in a section.
    pub fn list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Vici::List(v)) => v.clone(),
            Some(Vici::Value(v)) => vec![v.clone()],
            _ => Vec::new(),
        }
    }
    fn flat(&self) -> BTreeMap<String, String> {
        self.entries()
            .iter()
            .filter_map(|(k, v)| match v {
                Vici::Value(s) => Some((k.clone(), s.clone())),
                Vici::List(l) => Some((k.clone(), l.join(" "))),
                Vici::Section(_) => None,
            })
            .collect()
    }
}

fn is_key_start(rest: &str) -> bool {
    if rest.starts_with('}') {
        return true;
    }
    // vici keys are lowercase (`local-id`, `child-sas`); values such as DNs (`C=CH, O=x`) are not.
    let end = rest
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c)))
        .unwrap_or(rest.len());
    end > 0 && (rest[end..].starts_with('=') || rest[end..].starts_with(" {"))
}

/// Parses the body of one raw vici message (`k=v k2=[a b] sec {k=v}`, outer braces included).
pub fn parse_raw(s: &str) -> Result<Vici> {
    let s = s.trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .with_context(|| format!("raw vici message not in braces: {s:.80}"))?;
    let (v, rest) = parse_section(inner)?;
    if !rest.trim().is_empty() {
        bail!("unbalanced braces in raw vici message near `{:.40}`", rest);
    }
    Ok(v)
}

fn parse_section(mut s: &str) -> Result<(Vici, &str)> {
    let mut entries = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() || s.starts_with('}') {
            return Ok((Vici::Section(entries), s));
        }
        let end = s
            .find(['=', ' ', '{'])
            .with_context(|| format!("truncated vici text `{s:.40}`"))?;
        let key = s[..end].to_string();
        let after = s[end..].trim_start();
        if let Some(body) = after.strip_prefix('{') {
            let (sec, rest) = parse_section(body)?;
            s = rest
                .strip_prefix('}')
                .with_context(|| format!("section `{key}` not closed"))?;
            entries.push((key, sec));
        } else if let Some(v) = after.strip_prefix('=') {
            if let Some(list) = v.strip_prefix('[') {
                let close = list
                    .find(']')
                    .with_context(|| format!("list `{key}` not closed"))?;
                entries.push((
                    key,
                    Vici::List(list[..close].split_whitespace().map(String::from).collect()),
                ));
                s = &list[close + 1..];
            } else {
                // A value runs until a space that starts the next key, or a closing brace.
                let mut cut = v.len();
                for (i, c) in v.char_indices() {
                    if c == '}' || (c == ' ' && is_key_start(&v[i + 1..])) {
                        cut = i;
                        break;
                    }
                }
                entries.push((key, Vici::Value(v[..cut].to_string())));
                s = &v[cut..];
            }
        } else {
            bail!("unexpected vici text after `{key}`: `{after:.40}`");
        }
    }
}

/// A Child SA (ESP) as reported by `list-sas`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildSa {
    /// Configured child name.
    pub name: String,
    /// Unique ID (`{N}` in charon's log).
    pub uniqueid: u32,
    /// `INSTALLED`, `REKEYED`, ...
    pub state: String,
    /// `ESP`.
    pub protocol: String,
    /// UDP encapsulation in use.
    pub encap: bool,
    /// Inbound SPI (the one the peer sends with).
    pub spi_in: u32,
    /// Outbound SPI.
    pub spi_out: u32,
    /// strongSwan name of the cipher, e.g. `AES_GCM_16`, `AES_CBC`.
    pub encr_alg: String,
    /// Key size in bits.
    pub encr_keysize: Option<u32>,
    /// Integrity algorithm (`HMAC_SHA2_256_128`), none for AEAD.
    pub integ_alg: Option<String>,
    /// Counters.
    pub bytes_in: u64,
    /// Counters.
    pub bytes_out: u64,
    /// Counters.
    pub packets_in: u64,
    /// Counters.
    pub packets_out: u64,
    /// Local traffic selectors.
    pub local_ts: Vec<String>,
    /// Remote traffic selectors.
    pub remote_ts: Vec<String>,
    /// Every scalar field as printed.
    pub raw: BTreeMap<String, String>,
}

/// An IKE SA as reported by `list-sas`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IkeSa {
    /// Connection name.
    pub name: String,
    /// Unique ID (`[N]` in charon's log).
    pub uniqueid: u32,
    /// `ESTABLISHED`, `CONNECTING`, ...
    pub state: String,
    /// Local address and port.
    pub local_host: String,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote_host: String,
    /// Remote port.
    pub remote_port: u16,
    /// Whether this side initiated the IKE SA.
    pub initiator: bool,
    /// Initiator SPI, 16 hex digits.
    pub initiator_spi: String,
    /// Responder SPI, 16 hex digits.
    pub responder_spi: String,
    /// Cipher, e.g. `AES_GCM_16`.
    pub encr_alg: String,
    /// Key size in bits.
    pub encr_keysize: Option<u32>,
    /// Integrity algorithm, none for AEAD.
    pub integ_alg: Option<String>,
    /// PRF, e.g. `PRF_HMAC_SHA2_256`.
    pub prf_alg: String,
    /// Key exchange group, e.g. `ECP_256`, `MODP_2048`.
    pub dh_group: String,
    /// Child SAs.
    pub child_sas: Vec<ChildSa>,
    /// Every scalar field as printed.
    pub raw: BTreeMap<String, String>,
}

fn num<T: std::str::FromStr>(v: &Vici, k: &str) -> Option<T> {
    v.str(k).and_then(|s| s.parse().ok())
}

fn spi32(v: &Vici, k: &str) -> Result<u32> {
    match v.str(k) {
        Some(s) => u32::from_str_radix(s, 16).with_context(|| format!("{k}={s} is not a hex SPI")),
        None => Ok(0),
    }
}

impl ChildSa {
    fn from_vici(v: &Vici) -> Result<ChildSa> {
        Ok(ChildSa {
            name: v.str("name").unwrap_or_default().to_string(),
            uniqueid: num(v, "uniqueid").unwrap_or(0),
            state: v.str("state").unwrap_or_default().to_string(),
            protocol: v.str("protocol").unwrap_or_default().to_string(),
            encap: v.str("encap") == Some("yes"),
            spi_in: spi32(v, "spi-in")?,
            spi_out: spi32(v, "spi-out")?,
            encr_alg: v.str("encr-alg").unwrap_or_default().to_string(),
            encr_keysize: num(v, "encr-keysize"),
            integ_alg: v.str("integ-alg").map(String::from),
            bytes_in: num(v, "bytes-in").unwrap_or(0),
            bytes_out: num(v, "bytes-out").unwrap_or(0),
            packets_in: num(v, "packets-in").unwrap_or(0),
            packets_out: num(v, "packets-out").unwrap_or(0),
            local_ts: v.list("local-ts"),
            remote_ts: v.list("remote-ts"),
            raw: v.flat(),
        })
    }
}

impl IkeSa {
    fn from_vici(name: &str, v: &Vici) -> Result<IkeSa> {
        let mut child_sas = Vec::new();
        if let Some(c) = v.get("child-sas") {
            for (_, cv) in c.entries() {
                child_sas.push(ChildSa::from_vici(cv)?);
            }
        }
        Ok(IkeSa {
            name: name.to_string(),
            uniqueid: num(v, "uniqueid").unwrap_or(0),
            state: v.str("state").unwrap_or_default().to_string(),
            local_host: v.str("local-host").unwrap_or_default().to_string(),
            local_port: num(v, "local-port").unwrap_or(0),
            remote_host: v.str("remote-host").unwrap_or_default().to_string(),
            remote_port: num(v, "remote-port").unwrap_or(0),
            initiator: v.str("initiator") == Some("yes"),
            initiator_spi: v.str("initiator-spi").unwrap_or_default().to_string(),
            responder_spi: v.str("responder-spi").unwrap_or_default().to_string(),
            encr_alg: v.str("encr-alg").unwrap_or_default().to_string(),
            encr_keysize: num(v, "encr-keysize"),
            integ_alg: v.str("integ-alg").map(String::from),
            prf_alg: v.str("prf-alg").unwrap_or_default().to_string(),
            dh_group: v.str("dh-group").unwrap_or_default().to_string(),
            child_sas,
            raw: v.flat(),
        })
    }

    /// The installed Child SAs named `name`.
    pub fn child(&self, name: &str) -> Option<&ChildSa> {
        self.child_sas
            .iter()
            .find(|c| c.name == name && c.state == "INSTALLED")
    }
}

/// Parses the whole output of `swanctl --list-sas --raw` (one `list-sa event {...}` line per IKE SA).
pub fn parse_list_sas(out: &str) -> Result<Vec<IkeSa>> {
    let mut v = Vec::new();
    for line in out.lines() {
        let Some(body) = line.trim().strip_prefix("list-sa event ") else {
            continue;
        };
        let msg = parse_raw(body)?;
        for (name, ike) in msg.entries() {
            v.push(IkeSa::from_vici(name, ike)?);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "list-sa event {gw {uniqueid=1 version=2 state=ESTABLISHED local-host=192.0.2.1 local-port=4500 local-id=C=CH, O=Test, CN=gw remote-host=192.0.2.2 remote-port=4500 remote-id=192.0.2.2 initiator=yes initiator-spi=d2a947d07fba5b44 responder-spi=c0190eefff60bcda nat-remote=yes nat-any=yes encr-alg=AES_GCM_16 encr-keysize=256 prf-alg=PRF_HMAC_SHA2_256 dh-group=ECP_256 established=0 rekey-time=13883 child-sas {net-1 {name=net uniqueid=1 reqid=1 state=INSTALLED mode=TUNNEL protocol=ESP encap=yes spi-in=c0379ea5 spi-out=51af2837 encr-alg=AES_GCM_16 encr-keysize=256 bytes-in=336 packets-in=4 bytes-out=336 packets-out=4 local-ts=[198.18.1.0/24] remote-ts=[198.19.1.0/24 198.19.2.0/24]}}}}\nlist-sas reply {}\n";

    #[test]
    fn parses_raw_list_sas() {
        let sas = parse_list_sas(SAMPLE).unwrap();
        assert_eq!(sas.len(), 1);
        let ike = &sas[0];
        assert_eq!(ike.name, "gw");
        assert_eq!(ike.raw["local-id"], "C=CH, O=Test, CN=gw");
        assert!(ike.initiator);
        assert_eq!(ike.initiator_spi, "d2a947d07fba5b44");
        assert_eq!(ike.encr_keysize, Some(256));
        assert_eq!(ike.dh_group, "ECP_256");
        let c = ike.child("net").unwrap();
        assert_eq!(c.spi_in, 0xc0379ea5);
        assert_eq!(c.spi_out, 0x51af2837);
        assert!(c.encap);
        assert_eq!(c.packets_out, 4);
        assert_eq!(c.integ_alg, None);
        assert_eq!(c.remote_ts, vec!["198.19.1.0/24", "198.19.2.0/24"]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_list_sas("list-sa event {gw {uniqueid=1").is_err());
        assert!(parse_raw("no braces").is_err());
        assert!(parse_list_sas("list-sas reply {}").unwrap().is_empty());
    }
}
