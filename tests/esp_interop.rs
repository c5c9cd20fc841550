//! ESP interoperability with independent implementations (RFC 4303, RFC 4106, RFC 3602,
//! RFC 4868, RFC 3948):
//! (a) Wireshark's ESP dissector (`tshark` with decryption on and our keys in its `esp_sa`
//!     table) must decrypt and authenticate packets we seal, written into a pcap as
//!     ESP-in-UDP/4500 between 192.0.2.1 and 192.0.2.2;
//! (b) ESP packets sealed by strongSwan (kernel-libipsec) must open with our code: a capture
//!     recorded once from a strongSwan-to-strongSwan tunnel, with its keys, is carried under
//!     `crates/esp/tests/data/` (see the README there).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use esp::algo::NEXT_HEADER_IPV4;
use esp::{Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, SaConfig};

const OUTER_SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OUTER_DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const INNER_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const INNER_DST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

/// RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let len = 20 + payload.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn icmp_echo(id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"hybridgw esp interop ping");
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(INNER_SRC, INNER_DST, 1, seq, &m)
}

fn udp_datagram(sport: u16, dport: u16, body: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]); // checksum optional over IPv4
    u.extend_from_slice(body);
    ipv4(INNER_SRC, INNER_DST, 17, 7, &u)
}

/// A minimal pcap writer (LINKTYPE_RAW: each record is an IPv4 packet).
struct Pcap(Vec<u8>);

impl Pcap {
    fn new() -> Pcap {
        let mut h = Vec::new();
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&101u32.to_le_bytes()); // LINKTYPE_RAW
        Pcap(h)
    }

    fn push(&mut self, ts: u32, packet: &[u8]) {
        self.0.extend_from_slice(&ts.to_le_bytes());
        self.0.extend_from_slice(&0u32.to_le_bytes());
        self.0
            .extend_from_slice(&(packet.len() as u32).to_le_bytes());
        self.0
            .extend_from_slice(&(packet.len() as u32).to_le_bytes());
        self.0.extend_from_slice(packet);
    }
}

/// Wraps an ESP packet in UDP/4500 and the outer IPv4 header (RFC 3948 §2.1).
fn esp_in_udp(esp: &[u8], id: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&4500u16.to_be_bytes());
    u.extend_from_slice(&4500u16.to_be_bytes());
    u.extend_from_slice(&((8 + esp.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(esp);
    ipv4(OUTER_SRC, OUTER_DST, 17, id, &u)
}

fn seal(sa: &OutboundSa, inner: &[u8]) -> Vec<u8> {
    let h = sa.headroom();
    let mut buf = vec![0u8; h + inner.len() + sa.max_tailroom()];
    buf[h..h + inner.len()].copy_from_slice(inner);
    let r = sa
        .seal(&mut buf, h..h + inner.len(), NEXT_HEADER_IPV4)
        .expect("seal");
    buf[r].to_vec()
}

struct TsharkSa {
    spi: u32,
    encr: &'static str,
    enc_key: Vec<u8>,
    auth: &'static str,
    auth_key: Vec<u8>,
}

fn run_tshark(pcap: &Path, sa: &TsharkSa, fields: &[&str]) -> String {
    let auth_key = if sa.auth_key.is_empty() {
        String::new()
    } else {
        format!("0x{}", hex::encode(&sa.auth_key))
    };
    let record = format!(
        "uat:esp_sa:\"IPv4\",\"{OUTER_SRC}\",\"{OUTER_DST}\",\"0x{:08x}\",\"{}\",\"0x{}\",\"{}\",\"{}\"",
        sa.spi,
        sa.encr,
        hex::encode(&sa.enc_key),
        sa.auth,
        auth_key
    );
    let home = pcap.parent().unwrap();
    let mut cmd = Command::new("tshark");
    // A private config dir: no user preferences leak in.
    cmd.env("XDG_CONFIG_HOME", home).env("HOME", home);
    cmd.arg("-n").arg("-r").arg(pcap);
    cmd.args(["-d", "udp.port==4500,udpencap"]);
    cmd.args([
        "-o",
        "esp.enable_encryption_decode:TRUE",
        "-o",
        "esp.enable_authentication_check:TRUE",
    ]);
    cmd.args(["-o", &record]);
    cmd.args([
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark is installed and runs");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tshark_decodes(cipher: Cipher, integ: Integrity, encr: &'static str, auth: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let spi = 0xc0de_0000 | cipher.transform_id() as u32;
    let ek: Vec<u8> = (0..cipher.keymat_len())
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(1))
        .collect();
    let ik: Vec<u8> = (0..integ.key_len())
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(3))
        .collect();
    let cfg = SaConfig::new(
        spi,
        cipher,
        integ,
        KeyMaterial::from_slice(&ek),
        KeyMaterial::from_slice(&ik),
    );
    let tx = OutboundSa::new(&cfg).unwrap();

    let mut pcap = Pcap::new();
    let inners = [
        icmp_echo(0x4242, 1),
        udp_datagram(5000, 6000, b"hello from hybridgw"),
        icmp_echo(0x4242, 2),
        udp_datagram(5001, 6001, &[0x5a; 1000]),
    ];
    for (i, inner) in inners.iter().enumerate() {
        pcap.push(
            1_700_000_000 + i as u32,
            &esp_in_udp(&seal(&tx, inner), i as u16),
        );
    }
    let path = dir.path().join("ours.pcap");
    std::fs::write(&path, &pcap.0).unwrap();

    let sa = TsharkSa {
        spi,
        encr,
        enc_key: ek,
        auth,
        auth_key: ik,
    };
    let out = run_tshark(
        &path,
        &sa,
        &[
            "esp.spi",
            "esp.sequence",
            "ip.src",
            "ip.dst",
            "icmp.type",
            "udp.dstport",
            "data.data",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "tshark output:\n{out}");
    for (i, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f[0], format!("0x{spi:08x}"), "{line}");
        assert_eq!(f[1], (i + 1).to_string(), "{line}");
        // Outer and (decrypted) inner addresses.
        assert_eq!(
            f[2],
            format!("{OUTER_SRC},{INNER_SRC}"),
            "inner packet not decrypted: {line}"
        );
        assert_eq!(f[3], format!("{OUTER_DST},{INNER_DST}"), "{line}");
        if i % 2 == 0 {
            assert_eq!(f[4], "8", "inner ICMP echo request expected: {line}");
        } else {
            assert_eq!(
                f[5],
                format!("4500,{}", 6000 + i / 2),
                "inner UDP expected: {line}"
            );
        }
    }
    assert!(
        lines[1].contains(&hex::encode(b"hello from hybridgw")),
        "{}",
        lines[1]
    );

    // Authentication: Wireshark recomputes our ICV (CBC+HMAC) and must find it good.
    let verbose = Command::new("tshark")
        .env("XDG_CONFIG_HOME", dir.path())
        .env("HOME", dir.path())
        .arg("-n")
        .arg("-r")
        .arg(&path)
        .args(["-d", "udp.port==4500,udpencap"])
        .args(["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"])
        .args(["-o", &format!(
            "uat:esp_sa:\"IPv4\",\"{OUTER_SRC}\",\"{OUTER_DST}\",\"0x{spi:08x}\",\"{encr}\",\"0x{}\",\"{auth}\",\"{}\"",
            hex::encode(&sa.enc_key),
            if sa.auth_key.is_empty() { String::new() } else { format!("0x{}", hex::encode(&sa.auth_key)) }
        )])
        .arg("-V")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verbose.stdout);
    assert!(
        !text.to_lowercase().contains("incorrect"),
        "tshark reports a bad ICV:\n{text}"
    );
    if integ != Integrity::None {
        let good = text
            .lines()
            .filter(|l| l.contains("ESP ICV:") && l.trim_end().ends_with("[correct]"))
            .count();
        assert_eq!(good, 4, "tshark did not verify 4 ICVs:\n{text}");
    }
}

#[test]
fn tshark_decrypts_our_aes_gcm_packets() {
    tshark_decodes(
        Cipher::AesGcm16_256,
        Integrity::None,
        "AES-GCM with 16 octet ICV [RFC4106]",
        "NULL",
    );
    tshark_decodes(
        Cipher::AesGcm16_128,
        Integrity::None,
        "AES-GCM with 16 octet ICV [RFC4106]",
        "NULL",
    );
}

#[test]
fn tshark_decrypts_our_aes_cbc_hmac_sha256_packets() {
    tshark_decodes(
        Cipher::AesCbc256,
        Integrity::HmacSha256_128,
        "AES-CBC [RFC3602]",
        "HMAC-SHA-256-128 [RFC4868]",
    );
    tshark_decodes(
        Cipher::AesCbc128,
        Integrity::HmacSha1_96,
        "AES-CBC [RFC3602]",
        "HMAC-SHA-1-96 [RFC2404]",
    );
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/esp/tests/data")
}

/// Reads a pcap file (Ethernet or raw IPv4) and returns (outer src, outer dst, UDP payload)
/// for every UDP datagram to or from port 4500.
fn udp4500_payloads(pcap: &[u8]) -> Vec<(Ipv4Addr, Ipv4Addr, Vec<u8>)> {
    let magic = u32::from_le_bytes(pcap[0..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "little-endian pcap expected"
    );
    let linktype = u32::from_le_bytes(pcap[20..24].try_into().unwrap());
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        let frame = &pcap[off + 16..off + 16 + incl];
        off += 16 + incl;
        let ip = match linktype {
            1 if frame.len() > 14 && frame[12..14] == [0x08, 0x00] => &frame[14..],
            101 => frame,
            _ => continue,
        };
        if ip.len() < 28 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let ihl = usize::from(ip[0] & 15) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let udp = &ip[ihl..total];
        let (sp, dp) = (
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        );
        if sp != 4500 && dp != 4500 {
            continue;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        out.push((src, dst, udp[8..].to_vec()));
    }
    out
}

#[test]
fn strongswan_sealed_packets_open_with_our_code() {
    use esp::{DropReason, Received, SaDatabase, Udp4500, classify_udp4500};
    use std::sync::Arc;

    let dir = data_dir();
    let keys = std::fs::read_to_string(dir.join("strongswan-keys.txt")).unwrap();
    let mut db: SaDatabase = SaDatabase::new();
    let mut sas = 0;
    for line in keys
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let spi = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap();
        let (cipher, integ) = match (f[3], f[5]) {
            ("aes256gcm16", "none") => (Cipher::AesGcm16_256, Integrity::None),
            ("aes256", "sha256") => (Cipher::AesCbc256, Integrity::HmacSha256_128),
            other => panic!("unexpected suite {other:?}"),
        };
        let ik = if f[6] == "-" {
            Vec::new()
        } else {
            hex::decode(f[6]).unwrap()
        };
        let cfg = SaConfig::new(
            spi,
            cipher,
            integ,
            KeyMaterial::new(hex::decode(f[4]).unwrap()),
            KeyMaterial::new(ik),
        );
        db.insert_inbound(Arc::new(InboundSa::new(&cfg).unwrap()), None);
        sas += 1;
    }
    assert_eq!(sas, 4);

    let pcap = std::fs::read(dir.join("strongswan.pcap")).unwrap();
    let (mut esp_ok, mut ike) = (0, 0);
    for (src, dst, mut payload) in udp4500_payloads(&pcap) {
        match classify_udp4500(&payload) {
            Udp4500::Ike => {
                ike += 1;
                // IKEv2 header after the non-ESP marker: version 2.0 at offset 4 + 17.
                assert_eq!(payload[4 + 17], 0x20);
                continue;
            }
            Udp4500::Esp => {}
            other => panic!("unexpected {other:?} from {src}"),
        }
        let spi = u32::from_be_bytes(payload[..4].try_into().unwrap());
        let original = payload.clone();
        let Ok(Received::Esp { sa, opened }) = db.receive_udp4500(&mut payload) else {
            panic!("strongSwan packet SPI {spi:#x} {src} -> {dst} did not open");
        };
        assert_eq!(sa.spi(), spi);
        assert_eq!(opened.next_header, NEXT_HEADER_IPV4);
        let inner = &payload[opened.inner];
        // ICMP echo request (8) from 198.18.x.1 to 198.19.x.1, or the reply (0) back.
        let (isrc, idst) = (
            Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]),
            Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]),
        );
        assert_eq!(inner[9], 1, "inner ICMP expected");
        let icmp_type = inner[usize::from(inner[0] & 15) * 4];
        if src == OUTER_SRC {
            assert_eq!(
                (
                    isrc.octets()[..2].to_vec(),
                    idst.octets()[..2].to_vec(),
                    icmp_type
                ),
                (vec![198, 18], vec![198, 19], 8)
            );
        } else {
            assert_eq!(
                (
                    isrc.octets()[..2].to_vec(),
                    idst.octets()[..2].to_vec(),
                    icmp_type
                ),
                (vec![198, 19], vec![198, 18], 0)
            );
        }
        // The inner IPv4 header checksum verifies.
        assert_eq!(checksum(&inner[..20]), 0);
        esp_ok += 1;
        // The same packet again is a replay.
        assert!(matches!(
            db.receive_udp4500(&mut original.clone()),
            Err(DropReason::Replayed)
        ));
    }
    assert_eq!(esp_ok, 12, "3 pings each way over 2 Child SAs");
    assert!(ike >= 2);
    for sa in db.inbound_sas() {
        let s = sa.stats();
        assert_eq!((s.packets, s.drops.total()), (3, 3), "SA {:#x}", sa.spi());
        assert_eq!(s.drops.get(DropReason::Replayed), 3);
    }
}

/// Opens every ESP packet of a capture with SAs built from strongSwan's logged keys; returns
/// (ESP packets opened, IKE datagrams seen).
fn open_capture_with_keys(pcap: &Path, keys: &[harness::EspSaKeys]) -> (usize, usize) {
    use esp::{DropReason, Received, SaDatabase, Udp4500, classify_udp4500};
    use std::sync::Arc;

    let mut db: SaDatabase = SaDatabase::new();
    for k in keys {
        let cipher = match (k.encr_alg.as_str(), k.encr_key.len()) {
            ("AES_GCM_16", 36) => Cipher::AesGcm16_256,
            ("AES_GCM_16", 20) => Cipher::AesGcm16_128,
            ("AES_CBC", 32) => Cipher::AesCbc256,
            ("AES_CBC", 16) => Cipher::AesCbc128,
            other => panic!("unexpected cipher {other:?}"),
        };
        let integ = match k.integ_alg.as_deref() {
            None => Integrity::None,
            Some("HMAC_SHA2_256_128") => Integrity::HmacSha256_128,
            Some("HMAC_SHA1_96") => Integrity::HmacSha1_96,
            other => panic!("unexpected integrity {other:?}"),
        };
        let cfg = SaConfig::new(
            k.spi,
            cipher,
            integ,
            KeyMaterial::from_slice(k.encr_key.bytes()),
            KeyMaterial::from_slice(k.integ_key.bytes()),
        );
        db.insert_inbound(Arc::new(InboundSa::new(&cfg).unwrap()), None);
    }
    let (mut opened_n, mut ike) = (0, 0);
    for (src, dst, mut payload) in udp4500_payloads(&std::fs::read(pcap).unwrap()) {
        match classify_udp4500(&payload) {
            Udp4500::Ike => {
                ike += 1;
                continue;
            }
            Udp4500::Keepalive => continue,
            Udp4500::Esp => {}
            Udp4500::Malformed => panic!("malformed UDP-4500 datagram from {src}"),
        }
        let spi = u32::from_be_bytes(payload[..4].try_into().unwrap());
        match db.receive_udp4500(&mut payload) {
            Ok(Received::Esp { opened, .. }) => {
                let inner = &payload[opened.inner];
                assert_eq!(inner[0] >> 4, 4);
                assert_eq!(checksum(&inner[..20]), 0, "inner IPv4 header checksum");
                opened_n += 1;
            }
            Err(DropReason::UnknownSpi) => panic!("no key for SPI {spi:#x} ({src} -> {dst})"),
            other => panic!("strongSwan packet SPI {spi:#x} {src} -> {dst}: {other:?}"),
        }
    }
    (opened_n, ike)
}

/// Live: a strongSwan-to-strongSwan tunnel (kernel-libipsec, ESP in UDP) between two gateways in
/// namespaces carries pings; every ESP packet captured on the underlay opens with our code,
/// using the keys charon logged. Both suites Azure uses by default.
#[test]
fn strongswan_live_tunnel_packets_open_with_our_code() {
    use harness::netns::topology::{Lab, WAN_IF};
    use harness::{Capture, Charon, CharonOptions, SwanConn, ping};
    use std::time::Duration;

    for esp_proposal in ["aes256gcm16", "aes256-sha256"] {
        let lab = Lab::builder().prefix("espi").build().unwrap();
        let conn = SwanConn::new(
            "gw",
            lab.onprem_gw_wan_ip.into(),
            lab.azure_gw_wan_ip.into(),
            "esp-interop-lab-psk-0123456789",
        )
        .ts(&["198.18.1.0/24"], &["198.19.1.0/24"])
        .proposals("aes256-sha256-modp2048", esp_proposal);
        let cap = Capture::start(&lab.onprem_gw, WAN_IF, Some("udp port 4500")).unwrap();
        let a = Charon::start(&lab.onprem_gw, CharonOptions::default()).unwrap();
        let b = Charon::start(&lab.azure_gw, CharonOptions::default()).unwrap();
        b.load(&conn.mirrored().render().unwrap()).unwrap();
        a.load(&conn.render().unwrap()).unwrap();
        a.initiate(&conn.child).unwrap();
        let s = ping(
            &lab.onprem_host,
            lab.azure_host_ip,
            5,
            Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(s.received, 5, "{esp_proposal}: {s:?}");
        let pcap = cap.stop().unwrap();
        let keys = a.esp_keys();
        assert_eq!(keys.len(), 2, "{esp_proposal}: one key set per direction");
        let (opened, ike) = open_capture_with_keys(pcap.path(), &keys);
        assert!(
            opened >= 10,
            "{esp_proposal}: only {opened} ESP packets opened"
        );
        assert!(
            ike >= 1,
            "{esp_proposal}: IKE on port 4500 expected after the NAT-T switch"
        );
        drop((a, b));
    }
}
