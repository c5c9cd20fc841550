//! Key material logged by charon (`ike` and `chd` at level 4, `mgr` at 2), turned into the
//! `uat:esp_sa` and `uat:ikev2_decryption_table` records with which tshark decrypts captures
//! (RFC 4303 ESP SAs, RFC 7296 section 2.14 SK_e/SK_a keys). Lab and test use only.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use anyhow::{Result, bail};
use zeroize::Zeroizing;

/// Key bytes that never show in `Debug` output and are wiped on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps key bytes.
    pub fn new(b: Vec<u8>) -> Self {
        Secret(Zeroizing::new(b))
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
    /// Lowercase hex (what tshark's tables want).
    pub fn hex(&self) -> String {
        hex::encode(&*self.0)
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// The keys of one ESP SA (one direction) as charon installed it.
#[derive(Clone, Debug)]
pub struct EspSaKeys {
    /// Child SA name and unique ID (`net{1}`).
    pub child: String,
    /// The Child SA's unique ID.
    pub child_id: u32,
    /// SPI.
    pub spi: u32,
    /// Outer source address as charon saw it.
    pub src: IpAddr,
    /// Outer destination address.
    pub dst: IpAddr,
    /// Whether this is the logging charon's inbound SA.
    pub inbound: bool,
    /// Whether the logging charon initiated the exchange that created this Child SA.
    pub child_initiator: bool,
    /// strongSwan cipher name (`AES_GCM_16`, `AES_CBC`).
    pub encr_alg: String,
    /// Cipher key (for GCM: key followed by the 4-byte salt, as RFC 4106 and tshark want).
    pub encr_key: Secret,
    /// strongSwan integrity name, if not AEAD.
    pub integ_alg: Option<String>,
    /// Integrity key (empty for AEAD).
    pub integ_key: Secret,
}

fn esp_encr_name(alg: &str) -> Result<&'static str> {
    Ok(match alg {
        "AES_GCM_16" => "AES-GCM with 16 octet ICV [RFC4106]",
        "AES_GCM_12" => "AES-GCM with 12 octet ICV [RFC4106]",
        "AES_GCM_8" => "AES-GCM with 8 octet ICV [RFC4106]",
        "AES_CBC" => "AES-CBC [RFC3602]",
        "AES_CTR" => "AES-CTR [RFC3686]",
        "3DES_CBC" => "TripleDES-CBC [RFC2451]",
        "NULL" | "ENCR_NULL" => "NULL",
        other => bail!("no tshark name known for ESP cipher {other}"),
    })
}

fn esp_integ_name(alg: Option<&str>) -> Result<&'static str> {
    Ok(match alg {
        None => "NULL",
        Some("HMAC_SHA1_96") => "HMAC-SHA-1-96 [RFC2404]",
        Some("HMAC_SHA2_256_128") => "HMAC-SHA-256-128 [RFC4868]",
        Some("HMAC_SHA2_384_192") => "HMAC-SHA-384-192 [RFC4868]",
        Some("HMAC_SHA2_512_256") => "HMAC-SHA-512-256 [RFC4868]",
        Some("HMAC_MD5_96") => "HMAC-MD5-96 [RFC2403]",
        Some(other) => bail!("no tshark name known for ESP integrity {other}"),
    })
}

fn hex_or_empty(s: &Secret) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("0x{}", s.hex())
    }
}

impl EspSaKeys {
    /// The `uat:esp_sa` record (tshark 4.0), with the outer addresses, or `"*"` for both when
    /// `any_addr` (e.g. when the capture point is on the other side of a NAT).
    pub fn tshark_record(&self, any_addr: bool) -> Result<String> {
        let (src, dst) = if any_addr {
            ("*".to_string(), "*".to_string())
        } else {
            (self.src.to_string(), self.dst.to_string())
        };
        let proto = match (any_addr, self.src) {
            (_, IpAddr::V6(_)) => "IPv6",
            _ => "IPv4",
        };
        Ok(format!(
            "\"{proto}\",\"{src}\",\"{dst}\",\"0x{:08x}\",\"{}\",\"{}\",\"{}\",\"{}\"",
            self.spi,
            esp_encr_name(&self.encr_alg)?,
            hex_or_empty(&self.encr_key),
            esp_integ_name(self.integ_alg.as_deref())?,
            hex_or_empty(&self.integ_key),
        ))
    }
}

/// The keys of one IKE SA.
#[derive(Clone, Debug)]
pub struct IkeSaKeys {
    /// Initiator SPI, 16 hex digits.
    pub ispi: String,
    /// Responder SPI, 16 hex digits.
    pub rspi: String,
    /// SK_ei (with the salt for GCM).
    pub sk_ei: Secret,
    /// SK_er.
    pub sk_er: Secret,
    /// SK_ai (empty for AEAD).
    pub sk_ai: Secret,
    /// SK_ar (empty for AEAD).
    pub sk_ar: Secret,
    /// ICV length of the AEAD cipher (16 unless the proposal said otherwise).
    pub gcm_icv: u8,
}

impl IkeSaKeys {
    /// The `uat:ikev2_decryption_table` record (tshark 4.0); the algorithms are inferred from the
    /// key lengths (AES-CBC or AES-GCM; HMAC-SHA1/SHA2).
    pub fn tshark_record(&self) -> Result<String> {
        let aead = self.sk_ai.is_empty();
        let encr = if aead {
            let bits = match self.sk_ei.len() {
                20 => 128,
                28 => 192,
                36 => 256,
                n => bail!("cannot infer the IKE AEAD cipher from a {n}-byte SK_ei"),
            };
            format!("AES-GCM-{bits} with {} octet ICV [RFC5282]", self.gcm_icv)
        } else {
            let bits = match self.sk_ei.len() {
                16 => 128,
                24 => 192,
                32 => 256,
                n => bail!("cannot infer the IKE cipher from a {n}-byte SK_ei"),
            };
            format!("AES-CBC-{bits} [RFC3602]")
        };
        let integ = if aead {
            "NONE [RFC4306]"
        } else {
            match self.sk_ai.len() {
                20 => "HMAC_SHA1_96 [RFC2404]",
                32 => "HMAC_SHA2_256_128 [RFC4868]",
                48 => "HMAC_SHA2_384_192 [RFC4868]",
                64 => "HMAC_SHA2_512_256 [RFC4868]",
                n => bail!("cannot infer the IKE integrity algorithm from a {n}-byte SK_ai"),
            }
        };
        Ok(format!(
            "{},{},{},{},\"{encr}\",{},{},\"{integ}\"",
            self.ispi,
            self.rspi,
            self.sk_ei.hex(),
            self.sk_er.hex(),
            self.sk_ai.hex(),
            self.sk_ar.hex()
        ))
    }
}

/// What a parsed charon log line consists of.
struct Line<'a> {
    thread: u32,
    group: &'a str,
    msg: &'a str,
}

fn split_line(line: &str) -> Option<Line<'_>> {
    // `[TIME ]TT[GRP] message`: find the thread/group token.
    let mut offset = 0;
    for tok in line.split(' ') {
        let start = offset;
        offset += tok.len() + 1;
        if tok.is_empty() {
            continue;
        }
        let Some(open) = tok.find('[') else {
            if start > 40 {
                return None;
            }
            continue;
        };
        let (t, g) = tok.split_at(open);
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || !g.ends_with(']') {
            if start > 40 {
                return None;
            }
            continue;
        }
        let thread = t.parse().ok()?;
        let group = &g[1..g.len() - 1];
        let msg = line.get(offset.min(line.len())..).unwrap_or("");
        return Some(Line { thread, group, msg });
    }
    None
}

/// `LABEL => N bytes @ 0x...` header of a hex dump.
fn dump_header(msg: &str) -> Option<(&str, usize)> {
    let (label, rest) = msg.split_once(" => ")?;
    let n = rest.split_whitespace().next()?.parse().ok()?;
    rest.contains("bytes").then_some((label.trim(), n))
}

/// `  16: 07 2F ...  ascii` continuation line: appends up to `want` bytes.
fn dump_line(msg: &str, out: &mut Vec<u8>, want: usize) -> bool {
    let t = msg.trim_start();
    let Some((off, rest)) = t.split_once(": ") else {
        return false;
    };
    if off.is_empty() || !off.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let take = want.saturating_sub(out.len()).min(16);
    let mut n = 0;
    for tok in rest.split(' ').filter(|s| !s.is_empty()).take(take) {
        match u8::from_str_radix(tok, 16) {
            Ok(b) if tok.len() == 2 => {
                out.push(b);
                n += 1;
            }
            _ => return false,
        }
    }
    n == take
}

fn spis_in(msg: &str) -> Option<(String, String)> {
    let rest = msg.split("with SPIs ").nth(1)?;
    let mut it = rest.split_whitespace();
    let i = it.next()?.strip_suffix("_i")?;
    let r = it.next()?.strip_suffix("_r")?;
    (i.len() == 16 && r.len() == 16).then(|| (i.to_string(), r.to_string()))
}

/// `NAME{ID}` in a message.
fn child_ref(s: &str) -> Option<(String, u32)> {
    let open = s.find('{')?;
    let close = s[open..].find('}')? + open;
    let name_start = s[..open].rfind(' ').map(|i| i + 1).unwrap_or(0);
    Some((
        s[name_start..open].to_string(),
        s[open + 1..close].parse().ok()?,
    ))
}

#[derive(Default)]
struct ChildCtx {
    name: String,
    encr_alg: Option<String>,
    integ_alg: Option<String>,
    keys: HashMap<String, Secret>,
}

/// An SA seen in "adding inbound/outbound ESP SA" + "SPI 0x…, src … dst …", not yet tied to a child.
struct SaLine {
    spi: u32,
    src: IpAddr,
    dst: IpAddr,
    inbound: bool,
}

#[derive(Default)]
struct ThreadState {
    dump: Option<(String, usize, Vec<u8>)>,
    /// IKE keys being collected, and once complete, waiting for the line naming their IKE SA.
    ike: HashMap<String, Secret>,
    child: Option<u32>,
    direction: Option<bool>,
    sas: Vec<SaLine>,
}

/// Everything key-related found in a charon log.
#[derive(Debug, Default)]
pub struct LogKeys {
    /// ESP SAs in log order.
    pub esp: Vec<EspSaKeys>,
    /// IKE SAs in log order.
    pub ike: Vec<IkeSaKeys>,
}

/// `NAME[ID]` in a message (IKE SA unique ID).
fn ike_ref(s: &str) -> Option<u32> {
    let open = s.find('[')?;
    let close = s[open..].find(']')? + open;
    s[open + 1..close].parse().ok()
}

/// Parses a charon log written with `ike=4`, `chd=4` and `mgr=2` (see [`crate::CharonOptions`]).
///
/// ESP: keys are tied to Child SAs by the `CHILD_SA NAME{ID} state change: CREATED => INSTALLING`
/// line of the same thread, SAs to Child SAs by the following `… CHILD_SA NAME{ID} established with
/// SPIs` line (a rekey responder installs its outbound SA later, in another thread). Whether this
/// charon initiated the Child SA comes from `establishing CHILD_SA NAME{ID}`.
/// IKE: a complete key set belongs to the IKE SA named by the next `IKE_SA NAME[ID] state change: …
/// => ESTABLISHED`, `IKE_SA NAME[ID] rekeyed` or `checkin … NAME[ID] with SPIs` line of the same
/// thread; the SPIs of that unique ID come from any `checkin` line.
pub fn parse_log(log: &str) -> LogKeys {
    let mut threads: HashMap<u32, ThreadState> = HashMap::new();
    let mut children: HashMap<u32, ChildCtx> = HashMap::new();
    let mut initiated: HashSet<u32> = HashSet::new();
    let mut ike_spis: HashMap<u32, (String, String)> = HashMap::new();
    let mut ike_sets: Vec<(u32, HashMap<String, Secret>, u8)> = Vec::new();
    let mut gcm_icv = 16u8;
    let mut out = LogKeys::default();

    let emit = |out: &mut LogKeys,
                children: &HashMap<u32, ChildCtx>,
                initiated: &HashSet<u32>,
                id: u32,
                sa: SaLine| {
        if let Some(c) = children.get(&id) {
            out.esp.push(esp_from(c, id, sa, initiated.contains(&id)));
        }
    };

    for raw in log.lines() {
        let Some(l) = split_line(raw) else { continue };
        let st = threads.entry(l.thread).or_default();
        // Hex dump continuation.
        if let Some((label, want, mut buf)) = st.dump.take()
            && dump_line(l.msg, &mut buf, want)
        {
            if buf.len() >= want {
                let secret = Secret::new(buf);
                if l.group == "CHD" {
                    if let Some(c) = st.child.and_then(|id| children.get_mut(&id)) {
                        c.keys.insert(label, secret);
                    }
                } else {
                    st.ike.insert(label, secret);
                }
            } else {
                st.dump = Some((label, want, buf));
            }
            continue;
        }
        let msg = l.msg.trim();
        if let Some((label, n)) = dump_header(msg) {
            let label = label.strip_suffix(" secret").unwrap_or(label).to_string();
            let wanted = (l.group == "CHD" && label.ends_with(" key"))
                || (l.group == "IKE"
                    && ["Sk_ai", "Sk_ar", "Sk_ei", "Sk_er"].contains(&label.as_str()));
            if wanted && n > 0 && n <= 1024 {
                if l.group == "IKE" && label == "Sk_ai" {
                    st.ike.clear(); // a new key set starts
                }
                st.dump = Some((label, n, Vec::with_capacity(n)));
            }
            continue;
        }
        // The line that names the IKE SA of a complete key set.
        let named_ike = match l.group {
            "IKE"
                if msg.starts_with("IKE_SA ")
                    && ((msg.contains("state change:") && msg.ends_with("=> ESTABLISHED"))
                        || msg.contains(" rekeyed between")) =>
            {
                ike_ref(msg)
            }
            "MGR" if msg.starts_with("checkin") => {
                let id = msg.split(" with SPIs").next().and_then(ike_ref);
                if let (Some(id), Some((i, r))) = (id, spis_in(msg))
                    && r != "0000000000000000"
                {
                    ike_spis.insert(id, (i, r));
                }
                id
            }
            _ => None,
        };
        if let Some(id) = named_ike
            && st.ike.contains_key("Sk_er")
        {
            ike_sets.push((id, std::mem::take(&mut st.ike), gcm_icv));
        }
        match l.group {
            "CFG" => {
                if let Some(p) = msg.strip_prefix("selected proposal: IKE:") {
                    gcm_icv = if p.contains("AES_GCM_8") {
                        8
                    } else if p.contains("AES_GCM_12") {
                        12
                    } else {
                        16
                    };
                }
            }
            "IKE" => {
                if let Some(rest) = msg.strip_prefix("establishing CHILD_SA ") {
                    if let Some((_, id)) = child_ref(rest) {
                        initiated.insert(id);
                    }
                } else if msg.contains("CHILD_SA ")
                    && msg.contains(" established with SPIs")
                    && let Some((_, id)) = child_ref(msg)
                {
                    for sa in std::mem::take(&mut st.sas) {
                        emit(&mut out, &children, &initiated, id, sa);
                    }
                }
            }
            "CHD" => {
                if msg.contains("state change: CREATED => INSTALLING") {
                    if let Some((name, id)) = child_ref(msg) {
                        children.insert(
                            id,
                            ChildCtx {
                                name,
                                ..Default::default()
                            },
                        );
                        st.child = Some(id);
                    }
                } else if let Some(alg) = msg
                    .strip_prefix("using ")
                    .and_then(|r| r.strip_suffix(" for encryption"))
                {
                    if let Some(c) = st.child.and_then(|id| children.get_mut(&id)) {
                        c.encr_alg = Some(alg.to_string());
                    }
                } else if let Some(alg) = msg
                    .strip_prefix("using ")
                    .and_then(|r| r.strip_suffix(" for integrity"))
                {
                    if let Some(c) = st.child.and_then(|id| children.get_mut(&id)) {
                        c.integ_alg = Some(alg.to_string());
                    }
                } else if msg.starts_with("adding inbound ESP SA") {
                    st.direction = Some(true);
                } else if msg.starts_with("adding outbound ESP SA") {
                    st.direction = Some(false);
                } else if let Some(rest) = msg.strip_prefix("SPI 0x")
                    && let Some(inbound) = st.direction.take()
                    && let Some(sa) = sa_line(rest, inbound)
                {
                    st.sas.push(sa);
                }
            }
            _ => {}
        }
    }
    // SAs whose "established" line never came (e.g. a log cut short): best effort with the thread's child.
    let mut leftovers: Vec<_> = threads.into_iter().collect();
    leftovers.sort_by_key(|(t, _)| *t);
    for (_, st) in leftovers {
        if let Some(id) = st.child {
            for sa in st.sas {
                emit(&mut out, &children, &initiated, id, sa);
            }
        }
    }
    for (id, mut k, icv) in ike_sets {
        let Some((ispi, rspi)) = ike_spis.get(&id).cloned() else {
            continue;
        };
        out.ike.push(IkeSaKeys {
            ispi,
            rspi,
            sk_ei: k.remove("Sk_ei").unwrap_or_default(),
            sk_er: k.remove("Sk_er").unwrap_or_default(),
            sk_ai: k.remove("Sk_ai").unwrap_or_default(),
            sk_ar: k.remove("Sk_ar").unwrap_or_default(),
            gcm_icv: icv,
        });
    }
    out
}

fn sa_line(rest: &str, inbound: bool) -> Option<SaLine> {
    // `c0379ea5, src 192.0.2.1 dst 192.0.2.2`
    let (spi, rest) = rest.split_once(',')?;
    let spi = u32::from_str_radix(spi.trim(), 16).ok()?;
    let mut it = rest.split_whitespace();
    let (_, src, _, dst) = (it.next()?, it.next()?, it.next()?, it.next()?);
    Some(SaLine {
        spi,
        src: src.parse().ok()?,
        dst: dst.parse().ok()?,
        inbound,
    })
}

fn esp_from(c: &ChildCtx, id: u32, sa: SaLine, child_initiator: bool) -> EspSaKeys {
    // The initiator's keys protect initiator->responder traffic (RFC 7296 section 2.17).
    let use_initiator_keys = sa.inbound != child_initiator;
    let who = if use_initiator_keys {
        "initiator"
    } else {
        "responder"
    };
    EspSaKeys {
        child: format!("{}{{{}}}", c.name, id),
        child_id: id,
        spi: sa.spi,
        src: sa.src,
        dst: sa.dst,
        inbound: sa.inbound,
        child_initiator,
        encr_alg: c.encr_alg.clone().unwrap_or_default(),
        encr_key: c
            .keys
            .get(&format!("encryption {who} key"))
            .cloned()
            .unwrap_or_default(),
        integ_alg: c.integ_alg.clone(),
        integ_key: c
            .keys
            .get(&format!("integrity {who} key"))
            .cloned()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
22:10:37 10[MGR] checkout IKEv2 SA by message with SPIs d2a947d07fba5b44_i 0000000000000000_r
22:10:37 10[MGR] checkin IKEv2 SA (unnamed)[1] with SPIs d2a947d07fba5b44_i c0190eefff60bcda_r
22:10:37 09[MGR] checkout IKEv2 SA by message with SPIs d2a947d07fba5b44_i c0190eefff60bcda_r
22:10:37 09[CFG] selected proposal: IKE:AES_GCM_16_256/PRF_HMAC_SHA2_256/ECP_256
22:10:37 09[IKE] Sk_d secret => 4 bytes @ 0x7f48600098f0
22:10:37 09[IKE]    0: 01 02 03 04                                      ....
22:10:37 09[IKE] Sk_ei secret => 20 bytes @ 0x7f4860009860
22:10:37 09[IKE]    0: 00 11 22 33 44 55 66 77 88 99 AA BB CC DD EE FF  ..\"3DUfw........
22:10:37 11[CHD] unrelated line from another thread
22:10:37 09[IKE]   16: 41 42 43 44                                      ABCD
22:10:37 09[IKE] Sk_er secret => 20 bytes @ 0x7f4860009884
22:10:37 09[IKE]    0: FF EE DD CC BB AA 99 88 77 66 55 44 33 22 11 00  ................
22:10:37 09[IKE]   16: 01 02 03 04                                      ....
22:10:37 09[IKE] establishing CHILD_SA net{1}
22:10:37 09[MGR] checkin IKEv2 SA gw[1] with SPIs d2a947d07fba5b44_i c0190eefff60bcda_r
22:10:37 12[CHD] CHILD_SA net{1} state change: CREATED => INSTALLING
22:10:37 12[CHD]   using AES_GCM_16 for encryption
22:10:37 12[CHD] encryption initiator key => 20 bytes @ 0x7f4860009d20
22:10:37 12[CHD]    0: 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10  ................
22:10:37 12[CHD]   16: 11 11 11 11                                      ....
22:10:37 12[CHD] encryption responder key => 20 bytes @ 0x7f4860003a40
22:10:37 12[CHD]    0: 20 20 20 20 20 20 20 20 20 20 20 20 20 20 20 20                  
22:10:37 12[CHD]   16: 22 22 22 22                                      \"\"\"\"
22:10:37 12[CHD] adding inbound ESP SA
22:10:37 12[CHD]   SPI 0xc0379ea5, src 192.0.2.2 dst 192.0.2.1
22:10:37 12[CHD] adding outbound ESP SA
22:10:37 12[CHD]   SPI 0x51af2837, src 192.0.2.1 dst 192.0.2.2
22:10:37 12[IKE] CHILD_SA net{1} established with SPIs c0379ea5_i 51af2837_o and TS 198.18.1.0/24 === 198.19.1.0/24
";

    #[test]
    fn extracts_ike_and_esp_keys() {
        let k = parse_log(LOG);
        assert_eq!(k.ike.len(), 1);
        let ike = &k.ike[0];
        assert_eq!(ike.ispi, "d2a947d07fba5b44");
        assert_eq!(ike.rspi, "c0190eefff60bcda");
        assert_eq!(ike.sk_ei.hex(), "00112233445566778899aabbccddeeff41424344");
        assert_eq!(
            ike.tshark_record().unwrap(),
            "d2a947d07fba5b44,c0190eefff60bcda,00112233445566778899aabbccddeeff41424344,\
             ffeeddccbbaa9988776655443322110001020304,\"AES-GCM-128 with 16 octet ICV [RFC5282]\",,,\"NONE [RFC4306]\""
        );
        assert_eq!(k.esp.len(), 2);
        // This side initiated net{1}: its inbound SA uses the responder's keys.
        let inb = &k.esp[0];
        assert!(inb.inbound && inb.child_initiator);
        assert_eq!(inb.spi, 0xc0379ea5);
        assert_eq!(
            inb.encr_key.hex(),
            "2020202020202020202020202020202022222222"
        );
        let outb = &k.esp[1];
        assert_eq!(
            outb.encr_key.hex(),
            "1010101010101010101010101010101011111111"
        );
        assert_eq!(
            outb.tshark_record(false).unwrap(),
            "\"IPv4\",\"192.0.2.1\",\"192.0.2.2\",\"0x51af2837\",\"AES-GCM with 16 octet ICV [RFC4106]\",\
             \"0x1010101010101010101010101010101011111111\",\"NULL\",\"\""
        );
        assert!(
            !format!("{outb:?}").contains("1010"),
            "keys must not appear in Debug output"
        );
    }

    #[test]
    fn ignores_garbage() {
        let k = parse_log(
            "garbage\n01[CHD] SPI 0xzz, src x dst y\n02[IKE] Sk_ei secret => 99999 bytes @ 0x0\n02[IKE]    0: 00",
        );
        assert!(k.esp.is_empty() && k.ike.is_empty());
    }
}
