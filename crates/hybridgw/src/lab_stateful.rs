//! `hybridgw lab ha --stateful`: stateful HA (issue #14) in network namespaces. Two appliances
//! share one public address through keepalived (VRRP version 3, RFC 5798); the master
//! replicates its IKE SAs and Child SAs (RFC 7296, RFC 4303) over a dedicated link, and when
//! the master dies the backup continues the same SAs: the peer (an Azure stand-in: strongSwan
//! with kernel-libipsec and forced UDP encapsulation, RFC 3948, or a hybridgw responder) sees
//! no new IKE SA and no new Child SA. Under continuous 10 ms UDP probes both ways and one TCP
//! flow it shows the steady state, kills appliance A (SIGKILL of its hybridgw and keepalived,
//! links down: a power cut), restores A (which becomes master again after keepalived's
//! preempt delay), and tables per event and direction the longest time without traffic, the
//! probes lost, whether the peer's SAs stayed the same, whether the TCP flow survived and what
//! the new master's takeover reported. It fails when a target is missed.
//!
//! Topology (documentation and benchmarking ranges only):
//! ```text
//!  on-prem host 198.18.0.100 [br-lan]--lan0 198.18.0.11 [A] wan0 192.0.2.11 --[br-wan]-- 192.0.2.254 [router] 198.51.100.254 -- 198.51.100.1 [peer] 198.19.0.254 -- 198.19.0.1 [Azure host]
//!  LAN VIP 198.18.0.1         +--lan0 198.18.0.12 [B] wan0 192.0.2.12 --+   WAN VIP 192.0.2.10 (keepalived, one sync group)
//!                                  A ha0 203.0.113.1/30 ==== dedicated HA link ==== 203.0.113.2/30 ha0 B
//! ```

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns::{Netns, Proc, veth_pair};

use crate::control::{HaStatus, Status};
use crate::lab::{Scratch, interrupted, spawn_daemon, status, wait_for, write_private};
use crate::lab_failover::sh;
use crate::lab_probes::{Flows, Probes};
use crate::logging::LogFormat;

/// The peer that stands in for the Azure VPN gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// strongSwan (`charon-systemd`, kernel-libipsec, `encap = yes`), Azure's policy.
    Strongswan,
    /// A hybridgw responder with Azure's behaviour.
    Hybridgw,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Strongswan => "strongSwan",
            Peer::Hybridgw => "hybridgw",
        }
    }
}

/// Options of `hybridgw lab ha --stateful`.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub peer: Peer,
}

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const LAN_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER_WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PEER_LAN: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 254);
const ONPREM_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const AZURE_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const ONPREM_NET: &str = "198.18.0.0/24";
const VNET: &str = "198.19.0.0/24";
const HA_PORT: u16 = 4510;
/// VRRP advertisement interval (keepalived 2.2.7 with VRRPv3 takes centiseconds).
const ADVERT_INT: &str = "0.1";
/// A restored A waits this long before it takes the role back (it receives a snapshot every
/// second meanwhile).
const PREEMPT_DELAY_S: u64 = 4;
const PROBE_MS: u64 = 10;
const PROBE_PORT: u16 = 5301;
const TCP_PORT: u16 = 5401;
/// The TCP flow sends one 8-byte counter this often.
const TCP_EVERY_MS: u64 = 5;
/// Target: the longest time without traffic per event and direction.
const TARGET_GAP: Duration = Duration::from_millis(1000);

/// Entry point.
pub fn main(format: LogFormat, opts: Options) -> ExitCode {
    crate::lab::as_root("hybridgw lab ha --stateful", || run(format, opts))
}

// ------------------------------------------------------------------ topology

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Box_ {
    A,
    B,
}

impl Box_ {
    fn name(self) -> &'static str {
        match self {
            Box_::A => "a",
            Box_::B => "b",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Box_::A => "A",
            Box_::B => "B",
        }
    }
    fn idx(self) -> usize {
        self as usize
    }
    fn other(self) -> Box_ {
        match self {
            Box_::A => Box_::B,
            Box_::B => Box_::A,
        }
    }
    fn wan(self) -> &'static str {
        match self {
            Box_::A => "192.0.2.11/24",
            Box_::B => "192.0.2.12/24",
        }
    }
    fn lan(self) -> &'static str {
        match self {
            Box_::A => "198.18.0.11/24",
            Box_::B => "198.18.0.12/24",
        }
    }
    fn ha(self) -> Ipv4Addr {
        match self {
            Box_::A => Ipv4Addr::new(203, 0, 113, 1),
            Box_::B => Ipv4Addr::new(203, 0, 113, 2),
        }
    }
    fn priority(self) -> u8 {
        match self {
            Box_::A => 200,
            Box_::B => 100,
        }
    }
}

#[derive(Debug)]
struct Topo {
    oph: Netns,
    ap: [Netns; 2],
    rtr: Netns,
    peer: Netns,
    azh: Netns,
}

fn build() -> Result<Topo, String> {
    let mk = || Netns::new("hgwsha").map_err(|e| format!("namespace: {e}"));
    let t = Topo {
        oph: mk()?,
        ap: [mk()?, mk()?],
        rtr: mk()?,
        peer: mk()?,
        azh: mk()?,
    };
    let v = |a: &Netns, an: &str, b: &Netns, bn: &str| {
        veth_pair(a, an, b, bn).map_err(|e| format!("veth {an}/{bn}: {e}"))
    };
    // The two segments are Linux bridges: the WAN one in the router, the LAN one in the
    // on-prem host. No STP, no multicast snooping (VRRP is multicast).
    for (ns, br) in [(&t.rtr, "br-wan"), (&t.oph, "br-lan")] {
        sh(
            ns,
            &format!("ip link add name {br} type bridge stp_state 0 mcast_snooping 0"),
        )?;
        sh(ns, &format!("ip link set {br} up"))?;
    }
    v(&t.rtr, "wa", &t.ap[0], "wan0")?;
    v(&t.rtr, "wb", &t.ap[1], "wan0")?;
    v(&t.oph, "la", &t.ap[0], "lan0")?;
    v(&t.oph, "lb", &t.ap[1], "lan0")?;
    v(&t.ap[0], "ha0", &t.ap[1], "ha0")?;
    v(&t.rtr, "to-peer", &t.peer, "wan0")?;
    v(&t.peer, "lan0", &t.azh, "eth0")?;
    let base = [
        "sysctl -qw net.ipv4.ip_forward=1",
        "sysctl -qw net.ipv4.conf.all.rp_filter=0",
        "sysctl -qw net.ipv4.conf.default.rp_filter=0",
    ];
    for ns in [&t.rtr, &t.ap[0], &t.ap[1], &t.peer] {
        for c in base {
            sh(ns, c)?;
        }
    }
    let mut cmds: Vec<(&Netns, Vec<String>)> = vec![
        (
            &t.rtr,
            vec![
                "ip link set wa master br-wan".into(),
                "ip link set wb master br-wan".into(),
                "ip addr add 192.0.2.254/24 dev br-wan".into(),
                "ip addr add 198.51.100.254/24 dev to-peer".into(),
            ],
        ),
        (
            &t.oph,
            vec![
                "ip link set la master br-lan".into(),
                "ip link set lb master br-lan".into(),
                format!("ip addr add {ONPREM_HOST}/24 dev br-lan"),
                format!("ip route add default via {LAN_VIP}"),
            ],
        ),
        (
            &t.peer,
            vec![
                format!("ip addr add {PEER_WAN}/24 dev wan0"),
                format!("ip addr add {PEER_LAN}/24 dev lan0"),
                "ip route add 192.0.2.0/24 via 198.51.100.254".into(),
            ],
        ),
        (
            &t.azh,
            vec![
                format!("ip addr add {AZURE_HOST}/24 dev eth0"),
                format!("ip route add {ONPREM_NET} via {PEER_LAN}"),
            ],
        ),
    ];
    for b in [Box_::A, Box_::B] {
        cmds.push((
            &t.ap[b.idx()],
            vec![
                format!("ip addr add {} dev wan0", b.wan()),
                format!("ip addr add {} dev lan0", b.lan()),
                format!("ip addr add {}/30 dev ha0", b.ha()),
                "ip route add 198.51.100.0/24 via 192.0.2.254".into(),
            ],
        ));
    }
    for (ns, list) in &cmds {
        for c in list {
            sh(ns, c)?;
        }
    }
    Ok(t)
}

// ------------------------------------------------------------------ configurations

fn appliance_config(b: Box_, psk: &Path, ha_key: &Path) -> String {
    let (id, peer_id) = match b {
        Box_::A => (1, 2),
        Box_::B => (2, 1),
    };
    format!(
        r#"# hybridgw lab ha --stateful: appliance {label} of a keepalived pair (VIP {VIP})
[[connection]]
name = "azure"
local_address = "{VIP}"
remote_address = "{PEER_WAN}"
psk_file = "{psk}"
behaviour = "initiate"
ike_proposals = "aes256-sha256-modp2048"
esp_proposals = "aes256gcm16"
tun_name = "hgw-azure"
remote_prefixes = ["{VNET}:100"]

[connection.retry]
initial_seconds = 1
max_seconds = 4

[ha]
local_id = {id}
peer_id = {peer_id}
listen = "{me}:{HA_PORT}"
peer = "{them}:{HA_PORT}"
secret_file = "{key}"
mark_interval_ms = 20
seq_skip = 1048576
snapshot_interval_ms = 1000
"#,
        label = b.label(),
        psk = psk.display(),
        me = b.ha(),
        them = b.other().ha(),
        key = ha_key.display(),
    )
}

/// The hybridgw peer (`--peer hybridgw`): Azure's behaviour, a responder with DPD 45 s.
fn peer_config(psk: &Path) -> String {
    format!(
        r#"# hybridgw lab ha --stateful: the Azure side (responder)
[[connection]]
name = "onprem"
local_address = "{PEER_WAN}"
remote_address = "{VIP}"
psk_file = "{psk}"
behaviour = "ResponderOnly"
ike_proposals = "aes256-sha256-modp2048"
esp_proposals = "aes256gcm16"
tun_name = "hgw-onprem"
remote_prefixes = ["{ONPREM_NET}:100"]

[connection.dpd]
delay_seconds = 3
timeout_seconds = 45
action = "clear"
"#,
        psk = psk.display(),
    )
}

/// keepalived for appliance `b`: one VRRPv3 instance per segment, both in one sync group whose
/// notify scripts set the appliance's HA role. Both start as BACKUP (preempt_delay needs it).
fn keepalived_config(b: Box_, exe: &Path, sock: &Path) -> String {
    let notify = |role: &str| {
        format!(
            "\"{} --socket {} ha {role}\"",
            exe.display(),
            sock.display()
        )
    };
    let instance = |name: &str, ifname: &str, vrid: u8, vip: &str| {
        format!(
            "vrrp_instance {name} {{\n  state BACKUP\n  interface {ifname}\n  virtual_router_id {vrid}\n  priority {p}\n  advert_int {ADVERT_INT}\n  preempt_delay {PREEMPT_DELAY_S}\n  virtual_ipaddress {{\n    {vip} dev {ifname}\n  }}\n}}\n",
            p = b.priority(),
        )
    };
    format!(
        "# hybridgw lab ha --stateful: keepalived of appliance {label}\n\
         global_defs {{\n  router_id hgw-{name}\n  vrrp_version 3\n  script_user root\n  vrrp_garp_master_delay 1\n  vrrp_garp_master_repeat 3\n}}\n\
         vrrp_sync_group HGW {{\n  group {{\n    WAN\n    LAN\n  }}\n  notify_master {m}\n  notify_backup {bk}\n  notify_fault {f}\n}}\n\
         {wan}{lan}",
        label = b.label(),
        name = b.name(),
        m = notify("master"),
        bk = notify("backup"),
        f = notify("fault"),
        wan = instance("WAN", "wan0", 51, &format!("{VIP}/24")),
        lan = instance("LAN", "lan0", 52, &format!("{LAN_VIP}/24")),
    )
}

// ------------------------------------------------------------------ strongSwan peer

const SWAN_PLUGINS: &str = "kernel-libipsec kernel-netlink aesni openssl aes gcm sha2 sha1 hmac random nonce \
    pem pkcs1 pubkey x509 gmp kdf drbg socket-default vici counters";

/// charon-systemd in the peer namespace with its own strongswan.conf, vici socket and log.
#[derive(Debug)]
struct Swan {
    proc: Proc,
    conf: PathBuf,
    vici: PathBuf,
    log: PathBuf,
}

impl Swan {
    fn start(ns: &Netns, dir: &Path, psk: &str) -> Result<Swan, String> {
        let dir = dir.join("charon");
        for sub in [
            "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private",
            "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12",
        ] {
            std::fs::create_dir_all(dir.join("swanctl").join(sub)).map_err(|e| e.to_string())?;
        }
        let conf = dir.join("strongswan.conf");
        let vici = dir.join("charon.vici");
        let log = dir.join("charon.log");
        // Main table first (any-to-any selectors, as Azure's route-based gateways): the on-prem
        // prefix is routed into ipsec0 by the lab.
        let text = format!(
            "charon-systemd {{\n  load = {SWAN_PLUGINS}\n  routing_table_prio = 32767\n  cookie_threshold = 100000\n  block_threshold = 100000\n  init_limit_half_open = 0\n  init_limit_job_load = 0\n  install_virtual_ip = no\n  plugins {{\n    vici {{\n      socket = unix://{vici}\n    }}\n  }}\n  journal {{\n    default = -1\n  }}\n  filelog {{\n    lab {{\n      path = {log}\n      time_format = %H:%M:%S\n      append = no\n      flush_line = yes\n      default = 1\n      ike = 2\n      mgr = 1\n    }}\n  }}\n}}\nswanctl {{\n  load = pem pkcs1 x509 pubkey openssl random nonce\n}}\n",
            vici = vici.display(),
            log = log.display(),
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(dir.join("charon.stdout")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = ns.command("charon-systemd");
        cmd.env("STRONGSWAN_CONF", &conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let proc = ns
            .spawn_command(cmd)
            .map_err(|e| format!("starting charon-systemd: {e}"))?;
        let s = Swan {
            proc,
            conf,
            vici,
            log,
        };
        let up = wait_for(
            || !s.proc.is_running() || (s.vici.exists() && s.swanctl(&["--stats"]).is_ok()),
            Duration::from_secs(10),
        );
        if !up || !s.proc.is_running() {
            return Err(format!("charon-systemd did not start: {}", s.log_tail(20)));
        }
        // Azure: a responder with DPD (45 s), one Child SA with any-to-any selectors; forced
        // UDP encapsulation (kernel-libipsec needs it).
        let swanctl = format!(
            "connections {{\n  hgw {{\n    version = 2\n    local_addrs = {PEER_WAN}\n    remote_addrs = {VIP}\n    proposals = aes256-sha256-modp2048\n    encap = yes\n    mobike = no\n    dpd_delay = 45s\n    local {{\n      auth = psk\n      id = {PEER_WAN}\n    }}\n    remote {{\n      auth = psk\n      id = {VIP}\n    }}\n    children {{\n      net {{\n        local_ts = 0.0.0.0/0\n        remote_ts = 0.0.0.0/0\n        esp_proposals = aes256gcm16\n        start_action = none\n        dpd_action = clear\n      }}\n    }}\n  }}\n}}\nsecrets {{\n  ike-hgw {{\n    id-1 = {PEER_WAN}\n    id-2 = {VIP}\n    secret = 0x{hex}\n  }}\n}}\n",
            hex = hex::encode(psk.as_bytes()),
        );
        let file = dir.join("swanctl").join("swanctl.conf");
        write_private(&file, swanctl.as_bytes()).map_err(|e| e.to_string())?;
        let f = file.to_string_lossy().into_owned();
        let out = s.swanctl(&["--load-all", "--noprompt", "--file", &f])?;
        if out.contains("failed") {
            return Err(format!("swanctl --load-all: {out}"));
        }
        Ok(s)
    }

    fn swanctl(&self, args: &[&str]) -> Result<String, String> {
        let (cmd, rest) = args.split_first().ok_or("empty swanctl command")?;
        let out = StdCommand::new("swanctl")
            .arg(cmd)
            .arg("--uri")
            .arg(format!("unix://{}", self.vici.display()))
            .args(rest)
            .env("STRONGSWAN_CONF", &self.conf)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("swanctl: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "swanctl {} failed: {}{}",
                args.join(" "),
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

/// The SAs the peer holds, as comparable strings: per IKE SA its unique id, SPIs and state,
/// per Child SA its unique id, SPIs and state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PeerSas {
    ike: Vec<String>,
    child: Vec<String>,
}

impl PeerSas {
    fn summary(&self) -> String {
        format!(
            "IKE [{}] Child [{}]",
            self.ike.join(", "),
            self.child.join(", ")
        )
    }
    /// One established IKE SA with one installed Child SA.
    fn healthy(&self) -> bool {
        self.ike.len() == 1
            && self.child.len() == 1
            && self.ike.iter().all(|s| s.ends_with("ESTABLISHED"))
            && self.child.iter().all(|s| s.ends_with("INSTALLED"))
    }
}

/// Parses `swanctl --list-sas --raw`: a section holding `initiator-spi` is an IKE SA, one
/// holding `spi-in` a Child SA.
fn parse_list_sas(raw: &str) -> PeerSas {
    let spaced = raw.replace('{', " { ").replace('}', " } ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut stack: Vec<Vec<(String, String)>> = vec![Vec::new()];
    let mut out = PeerSas::default();
    let get = |sec: &[(String, String)], k: &str| -> String {
        sec.iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for t in tokens {
        match t {
            "{" => stack.push(Vec::new()),
            "}" => {
                let Some(sec) = stack.pop() else { break };
                if stack.is_empty() {
                    break;
                }
                if sec.iter().any(|(k, _)| k == "initiator-spi") {
                    out.ike.push(format!(
                        "#{} {}_{} {}",
                        get(&sec, "uniqueid"),
                        get(&sec, "initiator-spi"),
                        get(&sec, "responder-spi"),
                        get(&sec, "state")
                    ));
                } else if sec.iter().any(|(k, _)| k == "spi-in") {
                    out.child.push(format!(
                        "#{} {}/{} {}",
                        get(&sec, "uniqueid"),
                        get(&sec, "spi-in"),
                        get(&sec, "spi-out"),
                        get(&sec, "state")
                    ));
                }
            }
            kv => {
                if let Some((k, v)) = kv.split_once('=')
                    && let Some(top) = stack.last_mut()
                {
                    top.push((k.to_string(), v.to_string()));
                }
            }
        }
    }
    out
}

/// The SAs of a hybridgw peer from its status.
fn hybridgw_sas(st: &Status) -> PeerSas {
    let mut out = PeerSas::default();
    for c in &st.connections {
        for i in &c.ike_sas {
            out.ike.push(format!(
                "{}_{} {}",
                i.spi_i,
                i.spi_r,
                i.state.to_uppercase()
            ));
        }
        if c.ike_sas.is_empty()
            && let Some(i) = &c.ike_sa
        {
            out.ike.push(format!(
                "{}_{} {}",
                i.spi_i,
                i.spi_r,
                i.state.to_uppercase()
            ));
        }
        for ch in &c.child_sas {
            out.child.push(format!(
                "{}/{} {}",
                ch.spi_in,
                ch.spi_out,
                if ch.state == "installed" || ch.state == "active" {
                    "INSTALLED".to_string()
                } else {
                    ch.state.to_uppercase()
                }
            ));
        }
    }
    out
}

fn tail(p: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------------ traffic

/// One TCP flow on-prem host -> Azure host: an 8-byte counter every `TCP_EVERY_MS`, the
/// receiver checks that every value follows the one before.
#[derive(Debug)]
struct Tcp {
    stop: Arc<AtomicBool>,
    /// Receive time of every counter value.
    arrivals: Arc<Mutex<Vec<Instant>>>,
    error: Arc<Mutex<Option<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Tcp {
    fn start(from: &Netns, to: &Netns) -> Result<Tcp, String> {
        let addr = SocketAddr::from((AZURE_HOST, TCP_PORT));
        let listener = to.tcp_listen(addr).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let mut threads = Vec::new();
        {
            let (stop, arrivals, error) = (stop.clone(), arrivals.clone(), error.clone());
            threads.push(std::thread::spawn(move || {
                let r = (|| -> Result<(), String> {
                    let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))
                        .map_err(|e| e.to_string())?;
                    let mut expect: u64 = 0;
                    let mut b = [0u8; 8];
                    let until = Instant::now() + Duration::from_secs(3600);
                    while Instant::now() < until {
                        if let Err(e) = s.read_exact(&mut b) {
                            return if stop.load(Ordering::Relaxed) {
                                Ok(())
                            } else {
                                Err(format!("receive after {expect} counters: {e}"))
                            };
                        }
                        let v = u64::from_be_bytes(b);
                        if v != expect {
                            return Err(format!("counter {v} where {expect} was due"));
                        }
                        expect += 1;
                        arrivals
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Instant::now());
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
            }));
        }
        let mut s = from
            .tcp_connect(addr, Duration::from_secs(5))
            .map_err(|e| format!("TCP connect: {e}"))?;
        let _ = s.set_nodelay(true);
        {
            let (stop, error) = (stop.clone(), error.clone());
            threads.push(std::thread::spawn(move || {
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                let t0 = Instant::now();
                let until = t0 + Duration::from_secs(3600);
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let at = t0 + Duration::from_millis(TCP_EVERY_MS * n);
                    if let Some(d) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    if let Err(e) = s.write_all(&n.to_be_bytes()) {
                        error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(format!("send of counter {n}: {e}"));
                        return;
                    }
                    n += 1;
                }
            }));
        }
        Ok(Tcp {
            stop,
            arrivals,
            error,
            threads,
        })
    }

    fn count(&self) -> usize {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The longest stall of the flow between `t0` and `t1` (from the last arrival before `t0`).
    fn worst_stall(&self, t0: Instant, t1: Instant) -> Duration {
        let a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        let mut prev: Option<Instant> = a.iter().rev().find(|x| **x < t0).copied();
        let mut worst = Duration::ZERO;
        for x in a.iter().filter(|x| **x >= t0 && **x <= t1) {
            if let Some(p) = prev {
                worst = worst.max(x.saturating_duration_since(p));
            }
            prev = Some(*x);
        }
        if let Some(p) = prev {
            worst = worst.max(t1.saturating_duration_since(p));
        }
        worst
    }

    fn stop(self) -> Option<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

// ------------------------------------------------------------------ the running lab

#[derive(Debug)]
struct Appliance {
    hgw: Option<Proc>,
    keepalived: Option<Proc>,
    sock: PathBuf,
    log: PathBuf,
    ka_log: PathBuf,
    ka_conf: PathBuf,
    ka_pid: PathBuf,
    ka_vrrp_pid: PathBuf,
    conf: PathBuf,
}

#[derive(Debug)]
struct Lab {
    t: Topo,
    dir: PathBuf,
    exe: PathBuf,
    format: LogFormat,
    opts: Options,
    ap: [Appliance; 2],
    swan: Option<Swan>,
    peer_hgw: Option<(Proc, PathBuf, PathBuf)>,
}

impl Lab {
    fn ns(&self, b: Box_) -> &Netns {
        &self.t.ap[b.idx()]
    }

    fn app(&self, b: Box_) -> &Appliance {
        &self.ap[b.idx()]
    }

    fn start_hgw(&mut self, b: Box_) -> Result<(), String> {
        let a = &self.ap[b.idx()];
        let p = spawn_daemon(
            &self.t.ap[b.idx()],
            &self.exe,
            &a.conf,
            &a.sock,
            &a.log,
            self.format,
        )
        .map_err(|e| e.to_string())?;
        let sock = a.sock.clone();
        let ok = wait_for(
            || status(&sock).is_ok() || !p.is_running(),
            Duration::from_secs(20),
        );
        if !ok || !p.is_running() {
            return Err(format!(
                "hybridgw {} did not come up: {}",
                b.label(),
                tail(&self.ap[b.idx()].log, 20)
            ));
        }
        self.ap[b.idx()].hgw = Some(p);
        Ok(())
    }

    fn start_keepalived(&mut self, b: Box_) -> Result<(), String> {
        let a = &self.ap[b.idx()];
        let _ = std::fs::remove_file(&a.ka_pid);
        let _ = std::fs::remove_file(&a.ka_vrrp_pid);
        let p = self.t.ap[b.idx()]
            .spawn_logged(
                [
                    "keepalived".as_ref(),
                    "--dont-fork".as_ref(),
                    "--log-console".as_ref(),
                    "--log-detail".as_ref(),
                    "--no-syslog".as_ref(),
                    "--vrrp".as_ref(),
                    "--dont-respawn".as_ref(),
                    "--use-file".as_ref(),
                    a.ka_conf.as_os_str(),
                    "--pid".as_ref(),
                    a.ka_pid.as_os_str(),
                    "--vrrp_pid".as_ref(),
                    a.ka_vrrp_pid.as_os_str(),
                ],
                &a.ka_log,
            )
            .map_err(|e| format!("keepalived {}: {e}", b.label()))?;
        let vrrp_pid = a.ka_vrrp_pid.clone();
        let ok = wait_for(
            || vrrp_pid.exists() || !p.is_running(),
            Duration::from_secs(10),
        );
        if !ok || !p.is_running() {
            return Err(format!(
                "keepalived {} did not start: {}",
                b.label(),
                tail(&a.ka_log, 20)
            ));
        }
        self.ap[b.idx()].keepalived = Some(p);
        Ok(())
    }

    /// A power cut: nothing leaves or enters the appliance any more (nftables first, so not
    /// even a dying process's packet gets out), SIGKILL of keepalived's VRRP child, keepalived
    /// and hybridgw by their PIDs, then its links go down.
    fn kill_appliance(&mut self, b: Box_) -> Result<(), String> {
        self.ns(b)
            .nft(
                "table inet hgwsha_dead {\n chain pre { type filter hook prerouting priority -300; policy drop; }\n chain out { type filter hook output priority -300; policy drop; }\n}\n",
            )
            .map_err(|e| format!("nft: {e}"))?;
        let a = &mut self.ap[b.idx()];
        if let Some(ka) = a.keepalived.take() {
            // The VRRP child first (keepalived started it; its PID is in the -r file, checked
            // to be a keepalived whose parent is ours), then keepalived itself.
            if let Some(child) = vrrp_child(&a.ka_vrrp_pid, ka.pid()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = ka.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = ka.wait_timeout(Duration::from_secs(5));
        }
        if let Some(p) = a.hgw.take() {
            let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = p.wait_timeout(Duration::from_secs(5));
        }
        for dev in ["wan0", "lan0", "ha0"] {
            sh(self.ns(b), &format!("ip link set {dev} down"))?;
        }
        Ok(())
    }

    /// Power back: a rebooted box holds no VIP; links up, routes back, filter gone.
    fn revive_links(&self, b: Box_) -> Result<(), String> {
        let ns = self.ns(b);
        for (dev, vip) in [("wan0", VIP), ("lan0", LAN_VIP)] {
            let _ = ns.exec(["ip", "addr", "del", &format!("{vip}/24"), "dev", dev]);
        }
        for dev in ["wan0", "lan0", "ha0"] {
            sh(ns, &format!("ip link set {dev} up"))?;
        }
        sh(ns, "ip route replace 198.51.100.0/24 via 192.0.2.254")?;
        sh(ns, "nft delete table inet hgwsha_dead")
    }

    fn status_of(&self, b: Box_) -> Option<Status> {
        self.app(b).hgw.as_ref()?;
        status(&self.app(b).sock).ok()
    }

    fn ha_of(&self, b: Box_) -> Option<HaStatus> {
        self.status_of(b)?.ha
    }

    fn role(&self, b: Box_) -> String {
        self.ha_of(b).map(|h| h.role).unwrap_or_else(|| "-".into())
    }

    fn established(&self, b: Box_) -> bool {
        self.status_of(b)
            .is_some_and(|s| crate::lab::all_established(&s))
    }

    fn peer_sas(&self) -> Result<PeerSas, String> {
        if let Some(s) = &self.swan {
            return Ok(parse_list_sas(&s.swanctl(&["--list-sas", "--raw"])?));
        }
        if let Some((_, sock, _)) = &self.peer_hgw {
            return status(sock).map(|st| hybridgw_sas(&st));
        }
        Err("no peer".into())
    }

    /// Packets through each appliance's TUN (both directions).
    fn tun_packets(&self, b: Box_) -> u64 {
        let read = |what: &str| -> u64 {
            self.ns(b)
                .exec([
                    "cat",
                    &format!("/sys/class/net/hgw-azure/statistics/{what}"),
                ])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        read("tx_packets") + read("rx_packets")
    }

    /// Which appliances carry the tunnel's traffic (more than a few packets over `d`).
    fn carrying(&self, d: Duration) -> String {
        let before = [self.tun_packets(Box_::A), self.tun_packets(Box_::B)];
        std::thread::sleep(d);
        let after = [self.tun_packets(Box_::A), self.tun_packets(Box_::B)];
        let v: Vec<&str> = [Box_::A, Box_::B]
            .into_iter()
            .filter(|b| after[b.idx()].saturating_sub(before[b.idx()]) > 20)
            .map(Box_::label)
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join("+")
        }
    }

    fn dump(&self) {
        for b in [Box_::A, Box_::B] {
            let a = self.app(b);
            eprintln!(
                "---- appliance {} hybridgw log (last lines) ----\n{}",
                b.label(),
                tail(&a.log, 60)
            );
            eprintln!(
                "---- appliance {} keepalived log (last lines) ----\n{}",
                b.label(),
                tail(&a.ka_log, 30)
            );
            match self.status_of(b) {
                Some(st) => eprintln!(
                    "---- appliance {} status --json ----\n{}",
                    b.label(),
                    serde_json::to_string_pretty(&st).unwrap_or_default()
                ),
                None => eprintln!("---- appliance {}: no status ----", b.label()),
            }
        }
        if let Some(s) = &self.swan {
            eprintln!("---- charon log (last lines) ----\n{}", s.log_tail(60));
            eprintln!(
                "---- swanctl --list-sas ----\n{}",
                s.swanctl(&["--list-sas"]).unwrap_or_else(|e| e)
            );
        }
        if let Some((_, sock, log)) = &self.peer_hgw {
            eprintln!(
                "---- peer hybridgw log (last lines) ----\n{}",
                tail(log, 60)
            );
            if let Ok(st) = status(sock) {
                eprintln!(
                    "---- peer status --json ----\n{}",
                    serde_json::to_string_pretty(&st).unwrap_or_default()
                );
            }
        }
    }

    /// Starts a Child SA rekey: by appliance A (`ours`) or by the peer.
    fn rekey(&self, ours: bool) -> Result<String, String> {
        if ours {
            return self.cli(&self.app(Box_::A).sock, &["rekey", "azure"]);
        }
        match (&self.swan, &self.peer_hgw) {
            (Some(s), _) => s.swanctl(&["--rekey", "--child", "net"]),
            (None, Some((_, sock, _))) => self.cli(sock, &["rekey", "onprem"]),
            (None, None) => Err("no peer".into()),
        }
    }

    /// `hybridgw --socket SOCK ARGS...`: its output, or an error with its message.
    fn cli(&self, sock: &Path, args: &[&str]) -> Result<String, String> {
        let out = StdCommand::new(&self.exe)
            .arg("--socket")
            .arg(sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("hybridgw {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "hybridgw {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn stop_all(&mut self) {
        for a in self.ap.iter_mut() {
            if let Some(k) = a.keepalived.take() {
                let _ = k.stop();
            }
            if let Some(p) = a.hgw.take() {
                let _ = p.stop();
            }
        }
        if let Some(s) = self.swan.take() {
            let _ = s.proc.stop();
        }
        if let Some((p, _, _)) = self.peer_hgw.take() {
            let _ = p.stop();
        }
    }
}

/// The PID in keepalived's VRRP pid file, if it is a keepalived child of `parent`.
fn vrrp_child(pid_file: &Path, parent: u32) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...
    let (comm, rest) = stat.split_once(") ")?;
    let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
    (comm.ends_with("(keepalived") && ppid == parent).then_some(pid)
}

// ------------------------------------------------------------------ events and the table

/// One event's figures.
#[derive(Debug)]
struct Row {
    event: &'static str,
    up: Flows,
    down: Flows,
    carrying: String,
    /// The peer's SAs before and after.
    peer_before: PeerSas,
    peer_after: PeerSas,
    tcp_stall: Duration,
    tcp_ok: bool,
    /// What the new master reported (or, steady state, what the backup holds).
    ha: String,
    ha_ok: bool,
}

impl Row {
    fn peer_same(&self) -> bool {
        self.peer_before == self.peer_after && self.peer_after.healthy()
    }
    fn met(&self, f: &Flows) -> bool {
        f.worst_gap < TARGET_GAP && self.peer_same() && self.tcp_ok && self.ha_ok
    }
}

fn takeover_summary(h: Option<&HaStatus>) -> (String, bool) {
    let Some(h) = h else {
        return ("no status".into(), false);
    };
    let Some(t) = &h.last_takeover else {
        return (format!("role {}, no takeover", h.role), false);
    };
    let ok = h.role == "master"
        && t.in_sync
        && t.ike_continued >= 1
        && t.child_installed >= 1
        && t.fresh.is_empty();
    (
        format!(
            "in_sync={} lag={} ike={} child={} fresh={}",
            t.in_sync,
            t.lag_ms
                .map(|l| format!("{l}ms"))
                .unwrap_or_else(|| "-".into()),
            t.ike_continued,
            t.child_installed,
            if t.fresh.is_empty() {
                "none".to_string()
            } else {
                t.fresh.join(";").replace('|', "/")
            }
        ),
        ok,
    )
}

#[derive(Debug)]
struct Traffic {
    up: Probes,
    down: Probes,
    tcp: Tcp,
}

/// Runs one event under the probes: `act`, then waits (bounded) until `settled`, then 2 s for
/// the tail; returns the row.
fn event(
    lab: &mut Lab,
    tr: &Traffic,
    name: &'static str,
    act: &mut dyn FnMut(&mut Lab) -> Result<(), String>,
    settled: &mut dyn FnMut(&Lab, &Traffic) -> bool,
    bound: Duration,
    judge: &dyn Fn(&Lab) -> (String, bool),
) -> Result<Row, String> {
    println!("lab: EVENT {name}");
    let peer_before = lab.peer_sas()?;
    let (u0, d0) = (tr.up.mark(), tr.down.mark());
    let t0 = Instant::now();
    let tcp_n0 = tr.tcp.count();
    act(lab)?;
    let ok = wait_for(|| settled(lab, tr) || interrupted(), bound);
    println!(
        "lab:   {} after {:.2} s",
        if ok { "settled" } else { "NOT settled" },
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (u1, d1) = (tr.up.mark(), tr.down.mark());
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let carrying = lab.carrying(Duration::from_millis(500));
    let peer_after = lab.peer_sas()?;
    let (ha, ha_ok) = judge(lab);
    let tcp_moved = tr.tcp.count() > tcp_n0;
    let row = Row {
        event: name,
        up: tr.up.figures(u0, u1),
        down: tr.down.figures(d0, d1),
        carrying,
        peer_before,
        peer_after,
        tcp_stall: tr.tcp.worst_stall(t0, t1),
        tcp_ok: tcp_moved && tr.tcp.error().is_none(),
        ha,
        ha_ok,
    };
    println!(
        "lab: RESULT {name}: on-prem->Azure {:.0} ms without traffic, {} of {} lost; Azure->on-prem {:.0} ms, {} of {} lost; carried by {}; peer before {} after {}; TCP {} (longest stall {:.0} ms{}); HA {}",
        row.up.worst_gap.as_secs_f64() * 1000.0,
        row.up.lost,
        row.up.sent,
        row.down.worst_gap.as_secs_f64() * 1000.0,
        row.down.lost,
        row.down.sent,
        row.carrying,
        row.peer_before.summary(),
        row.peer_after.summary(),
        if row.tcp_ok { "alive" } else { "BROKEN" },
        row.tcp_stall.as_secs_f64() * 1000.0,
        tr.tcp.error().map(|e| format!(", {e}")).unwrap_or_default(),
        row.ha
    );
    if !ok {
        return Err(format!(
            "{name}: did not settle within {} s",
            bound.as_secs()
        ));
    }
    Ok(row)
}

fn print_table(rows: &[Row], peer: Peer) {
    println!(
        "lab: SUMMARY (stateful HA, keepalived VRRPv3 advert {ADVERT_INT} s, peer {}; probes every {PROBE_MS} ms each way, one TCP flow; target: < {} ms without traffic, the peer's SAs unchanged, TCP alive)",
        peer.name(),
        TARGET_GAP.as_millis()
    );
    println!(
        "lab: | event       | direction        | without traffic | lost / sent | carried by | peer SAs  | TCP   | TCP stall | HA (new master's takeover)                                     | target |"
    );
    for r in rows {
        for (dir, f) in [("on-prem -> Azure", &r.up), ("Azure -> on-prem", &r.down)] {
            println!(
                "lab: | {:<11} | {:<16} | {:>12.0} ms | {:>4} / {:<4} | {:<10} | {:<9} | {:<5} | {:>6.0} ms | {:<62} | {:<6} |",
                r.event,
                dir,
                f.worst_gap.as_secs_f64() * 1000.0,
                f.lost,
                f.sent,
                r.carrying,
                if r.peer_same() { "same" } else { "CHANGED" },
                if r.tcp_ok { "alive" } else { "BROKEN" },
                r.tcp_stall.as_secs_f64() * 1000.0,
                r.ha,
                if r.met(f) { "met" } else { "MISSED" },
            );
        }
    }
}

fn run(format: LogFormat, opts: Options) -> Result<(), String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find my own binary: {e}"))?;
    let t_start = Instant::now();
    let scratch = Scratch::new("labsha").map_err(|e| format!("scratch directory: {e}"))?;
    let dir = scratch.0.clone();
    let t = build()?;
    println!(
        "lab: stateful HA: on-prem host {}, appliance A {}, appliance B {}, router {}, peer ({}) {}, Azure host {}",
        t.oph.name(),
        t.ap[0].name(),
        t.ap[1].name(),
        t.rtr.name(),
        opts.peer.name(),
        t.peer.name(),
        t.azh.name()
    );
    let random_hex = |n: usize| -> Result<String, String> {
        let mut b = vec![0u8; n];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| format!("random bytes: {e}"))?;
        Ok(hex::encode(b))
    };
    let psk = random_hex(24)?;
    let psk_file = dir.join("lab.psk");
    write_private(&psk_file, psk.as_bytes()).map_err(|e| e.to_string())?;
    let ha_key = dir.join("ha.key");
    write_private(&ha_key, random_hex(32)?.as_bytes()).map_err(|e| e.to_string())?;

    let mk_app = |b: Box_| -> Result<Appliance, String> {
        let n = b.name();
        let a = Appliance {
            hgw: None,
            keepalived: None,
            sock: dir.join(format!("{n}.sock")),
            log: dir.join(format!("{n}.log")),
            ka_log: dir.join(format!("keepalived-{n}.log")),
            ka_conf: dir.join(format!("keepalived-{n}.conf")),
            ka_pid: dir.join(format!("keepalived-{n}.pid")),
            ka_vrrp_pid: dir.join(format!("keepalived-{n}.vrrp.pid")),
            conf: dir.join(format!("{n}.toml")),
        };
        write_private(&a.conf, appliance_config(b, &psk_file, &ha_key).as_bytes())
            .map_err(|e| e.to_string())?;
        write_private(&a.ka_conf, keepalived_config(b, &exe, &a.sock).as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(a)
    };
    let ap = [mk_app(Box_::A)?, mk_app(Box_::B)?];
    let mut lab = Lab {
        t,
        dir: dir.clone(),
        exe: exe.clone(),
        format,
        opts,
        ap,
        swan: None,
        peer_hgw: None,
    };
    let result = run_events(&mut lab);
    let (rows, mut fails) = match result {
        Ok((rows, fails)) => (rows, fails),
        Err((rows, e)) => (rows, vec![e]),
    };
    print_table(&rows, opts.peer);
    for r in &rows {
        for (dir, f) in [("on-prem -> Azure", &r.up), ("Azure -> on-prem", &r.down)] {
            if !r.met(f) {
                fails.push(format!(
                    "{} {dir}: missed (without traffic {:.0} ms, peer SAs {}, TCP {}, HA {})",
                    r.event,
                    f.worst_gap.as_secs_f64() * 1000.0,
                    if r.peer_same() { "same" } else { "changed" },
                    if r.tcp_ok { "alive" } else { "broken" },
                    r.ha
                ));
            }
        }
    }
    if rows.len() < 3 && fails.is_empty() {
        fails.push("not every event ran".into());
    }
    if !fails.is_empty() {
        lab.dump();
    }
    lab.stop_all();
    drop(lab);
    // HYBRIDGW_LAB_KEEP=DIR keeps the logs and configurations (no keys) for debugging.
    if let Some(keep) = std::env::var_os("HYBRIDGW_LAB_KEEP") {
        let keep = PathBuf::from(keep);
        let _ = std::fs::create_dir_all(&keep);
        let files = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain([dir.join("charon").join("charon.log")]);
        for f in files {
            let keepable = f
                .extension()
                .is_some_and(|x| x == "log" || x == "toml" || x == "conf");
            if keepable && let Some(n) = f.file_name() {
                let _ = std::fs::copy(&f, keep.join(n));
            }
        }
        println!("lab: logs kept in {}", keep.display());
    }
    drop(scratch);
    println!(
        "lab: namespaces removed; total {:.1} s",
        t_start.elapsed().as_secs_f64()
    );
    if fails.is_empty() {
        println!("lab: PASS: every event met its target");
        Ok(())
    } else {
        Err(fails.join("; "))
    }
}

type Failed = (Vec<Row>, String);

/// Starts everything, runs the three events; the rows so far come back also on an error.
fn run_events(lab: &mut Lab) -> Result<(Vec<Row>, Vec<String>), Failed> {
    let mut rows = Vec::new();
    macro_rules! tryr {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((rows, e)),
            }
        };
    }
    // The peer first, so the first IKE packet meets an open port.
    let psk = tryr!(std::fs::read_to_string(lab.dir.join("lab.psk")).map_err(|e| e.to_string()));
    match lab.opts.peer {
        Peer::Strongswan => {
            let s = tryr!(Swan::start(&lab.t.peer, &lab.dir, &psk));
            println!(
                "lab: started strongSwan (charon-systemd pid {})",
                s.proc.pid()
            );
            lab.swan = Some(s);
        }
        Peer::Hybridgw => {
            let conf = lab.dir.join("peer.toml");
            tryr!(
                write_private(&conf, peer_config(&lab.dir.join("lab.psk")).as_bytes())
                    .map_err(|e| e.to_string())
            );
            let sock = lab.dir.join("peer.sock");
            let log = lab.dir.join("peer.log");
            let p = tryr!(
                spawn_daemon(&lab.t.peer, &lab.exe, &conf, &sock, &log, lab.format)
                    .map_err(|e| e.to_string())
            );
            wait_for(
                || status(&sock).is_ok() || !p.is_running(),
                Duration::from_secs(20),
            );
            println!("lab: started the hybridgw peer (pid {})", p.pid());
            lab.peer_hgw = Some((p, sock, log));
        }
    }
    tryr!(lab.start_hgw(Box_::A));
    tryr!(lab.start_hgw(Box_::B));
    println!("lab: started hybridgw on A and B (both backup)");
    let t0 = Instant::now();
    tryr!(lab.start_keepalived(Box_::A));
    let up = wait_for(
        || lab.role(Box_::A) == "master" && lab.established(Box_::A),
        Duration::from_secs(30),
    );
    if !up {
        return Err((
            rows,
            format!(
                "A did not become master with the tunnel up (role {})",
                lab.role(Box_::A)
            ),
        ));
    }
    println!(
        "lab: A is master (keepalived), tunnel up after {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    tryr!(lab.start_keepalived(Box_::B));
    let synced = wait_for(
        || {
            lab.ha_of(Box_::B).is_some_and(|h| {
                h.role == "backup"
                    && h.in_sync
                    && h.standby_ike_sas >= 1
                    && h.standby_child_sas >= 1
            })
        },
        Duration::from_secs(15),
    );
    if !synced {
        return Err((rows, "B never held an in-sync replica".into()));
    }
    if lab.swan.is_some() {
        // Route-based: the on-prem prefix into kernel-libipsec's ipsec0 (main table first).
        tryr!(sh(
            &lab.t.peer,
            &format!("ip route replace {ONPREM_NET} dev ipsec0 src {PEER_LAN}")
        ));
    }
    let initial = tryr!(lab.peer_sas());
    println!("lab: B in sync; peer holds {}", initial.summary());
    let tr = Traffic {
        up: tryr!(Probes::start(
            &lab.t.oph,
            ONPREM_HOST,
            &lab.t.azh,
            AZURE_HOST,
            PROBE_PORT,
            1,
            Duration::from_millis(PROBE_MS)
        )),
        down: tryr!(Probes::start(
            &lab.t.azh,
            AZURE_HOST,
            &lab.t.oph,
            ONPREM_HOST,
            PROBE_PORT,
            1,
            Duration::from_millis(PROBE_MS)
        )),
        tcp: tryr!(Tcp::start(&lab.t.oph, &lab.t.azh)),
    };
    let res = events(lab, &tr, &mut rows);
    let Traffic { up, down, tcp } = tr;
    up.stop();
    down.stop();
    let tcp_err = tcp.stop();
    let mut fails = Vec::new();
    if let Err(e) = res {
        fails.push(e);
    }
    if let Some(e) = tcp_err {
        fails.push(format!("TCP flow: {e}"));
    }
    Ok((rows, fails))
}

fn events(lab: &mut Lab, tr: &Traffic, rows: &mut Vec<Row>) -> Result<(), String> {
    // Traffic flows before anything happens.
    let ok = wait_for(
        || tr.up.received_since(0) && tr.down.received_since(0) && tr.tcp.count() > 0,
        Duration::from_secs(10),
    );
    if !ok {
        return Err("no traffic crossed the tunnel at the start".into());
    }
    std::thread::sleep(Duration::from_millis(500));

    // 1. Steady state: A carries the tunnel, B holds the replica.
    rows.push(event(
        lab,
        tr,
        "steady",
        &mut |_| Ok(()),
        &mut |_, _| true,
        Duration::from_secs(1),
        &|l| match l.ha_of(Box_::B) {
            Some(h) => (
                format!(
                    "A {}, B {} in_sync={} lag={} standby ike={} child={}",
                    l.role(Box_::A),
                    h.role,
                    h.in_sync,
                    h.lag_ms
                        .map(|x| format!("{x}ms"))
                        .unwrap_or_else(|| "-".into()),
                    h.standby_ike_sas,
                    h.standby_child_sas
                ),
                l.role(Box_::A) == "master"
                    && h.role == "backup"
                    && h.in_sync
                    && h.standby_ike_sas >= 1
                    && h.standby_child_sas >= 1,
            ),
            None => ("B: no status".into(), false),
        },
    )?);

    // 2. A dies: B's keepalived becomes master and B continues the SAs.
    let since = std::cell::Cell::new((0, 0));
    rows.push(event(
        lab,
        tr,
        "A dies",
        &mut |l| {
            since.set((tr.up.mark(), tr.down.mark()));
            l.kill_appliance(Box_::A)
        },
        &mut |l, tr| {
            l.role(Box_::B) == "master"
                && l.established(Box_::B)
                && tr.up.received_since(since.get().0 + 1)
                && tr.down.received_since(since.get().1 + 1)
        },
        Duration::from_secs(15),
        &|l| takeover_summary(l.ha_of(Box_::B).as_ref()),
    )?);

    // 3. A restored: it starts as backup, receives a snapshot, and after keepalived's preempt
    // delay takes the role back; B becomes backup.
    let mut after_move: Option<(usize, usize)> = None;
    let mut a_synced_before = false;
    rows.push(event(
        lab,
        tr,
        "A restored",
        &mut |l| {
            l.revive_links(Box_::A)?;
            l.start_hgw(Box_::A)?;
            l.start_keepalived(Box_::A)
        },
        &mut |l, tr| {
            if after_move.is_none() {
                if l.ha_of(Box_::A)
                    .is_some_and(|h| h.role == "backup" && h.in_sync)
                {
                    a_synced_before = true;
                }
                if l.role(Box_::A) == "master" && l.role(Box_::B) == "backup" {
                    after_move = Some((tr.up.mark(), tr.down.mark()));
                }
                return false;
            }
            let (u, d) = after_move.unwrap_or_default();
            l.established(Box_::A) && tr.up.received_since(u) && tr.down.received_since(d)
        },
        Duration::from_secs(PREEMPT_DELAY_S + 15),
        &|l| takeover_summary(l.ha_of(Box_::A).as_ref()),
    )?);
    println!(
        "lab:   A held an in-sync replica before it took the role back: {}",
        if a_synced_before { "yes" } else { "NO" }
    );

    // 4. The IKE SA itself was continued twice (keys, message IDs): an exchange started by the
    // peer and one started by the appliance both succeed in it.
    for who in ["the peer", "A"] {
        let before = lab.peer_sas()?;
        lab.rekey(who == "A")
            .map_err(|e| format!("IKE check: a Child SA rekey by {who}: {e}"))?;
        let mut now = before.clone();
        let ok = wait_for(
            || {
                if let Ok(p) = lab.peer_sas() {
                    now = p;
                }
                now.ike == before.ike && now.healthy() && now.child != before.child
            },
            Duration::from_secs(10),
        );
        let (u, d) = (tr.up.mark(), tr.down.mark());
        let flows = wait_for(
            || tr.up.received_since(u) && tr.down.received_since(d),
            Duration::from_secs(5),
        );
        println!(
            "lab: IKE CHECK Child SA rekey started by {who} in the continued IKE SA: {} (peer now {}; traffic {})",
            if ok { "ok" } else { "FAILED" },
            now.summary(),
            if flows { "flows" } else { "STOPPED" }
        );
        if !ok || !flows {
            return Err(format!(
                "IKE check: the Child SA rekey started by {who} did not complete in the continued IKE SA (peer before {}, after {})",
                before.summary(),
                now.summary()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_swanctl_raw_list_sas() {
        let raw = "list-sas event {hgw {uniqueid=3 version=2 state=ESTABLISHED local-host=198.51.100.1 local-port=4500 initiator-spi=1122334455667788 responder-spi=99aabbccddeeff00 child-sas {net-4 {name=net uniqueid=4 reqid=1 state=INSTALLED mode=TUNNEL protocol=ESP encap=yes spi-in=c1a2b3c4 spi-out=0badf00d local-ts=[0.0.0.0/0] remote-ts=[0.0.0.0/0]}}}}\n";
        let p = parse_list_sas(raw);
        assert_eq!(
            p.ike,
            vec!["#3 1122334455667788_99aabbccddeeff00 ESTABLISHED"]
        );
        assert_eq!(p.child, vec!["#4 c1a2b3c4/0badf00d INSTALLED"]);
        assert!(p.healthy());
        assert_eq!(parse_list_sas(""), PeerSas::default());
    }

    #[test]
    fn keepalived_configuration_calls_hybridgw_ha() {
        let text = keepalived_config(
            Box_::A,
            Path::new("/usr/bin/true"),
            Path::new("/tmp/x.sock"),
        );
        assert!(text.contains("notify_master \"/usr/bin/true --socket /tmp/x.sock ha master\""));
        assert!(text.contains("advert_int 0.1") && text.contains("vrrp_version 3"));
    }
}
