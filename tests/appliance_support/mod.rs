//! Helpers shared by the `appliance_*` end-to-end tests: locating (and building) the `hybridgw`
//! binary, running daemons in lab namespaces, a strongSwan (charon, kernel-libipsec, RFC 3948
//! encapsulation) peer, iperf3 and capture checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hybridgw::control::Status;
use hybridgw::logging::LogFormat;
use netns::topology::Lab;
use netns::{Netns, Proc};

/// The `hybridgw` binary of this build profile, built once per test process
/// (`cargo build -p hybridgw`, a no-op when it is up to date).
pub fn hybridgw_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if std::env::var_os("HYBRIDGW_BIN").is_none() {
            // Build it (a no-op when up to date) into the target dir and profile of this test.
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", "hybridgw"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            if let Some(target) = profile_dir.parent() {
                cmd.env("CARGO_TARGET_DIR", target);
            }
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
            let st = cmd.status().expect("running cargo build -p hybridgw");
            assert!(st.success(), "cargo build -p hybridgw failed");
        }
        harness::hybridgw_bin().expect("locating the hybridgw binary")
    })
    .clone()
}

/// A private scratch directory, removed on drop.
pub fn scratch(tag: &str) -> hybridgw::lab::Scratch {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hybridgw::lab::Scratch::new(&format!("{tag}-{n}")).expect("scratch dir")
}

/// A running hybridgw daemon in a namespace.
pub struct Daemon {
    pub proc: Proc,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Daemon {
        let conf = dir.join(format!("{name}.toml"));
        hybridgw::lab::write_private(&conf, config.as_bytes()).expect("write config");
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let proc =
            hybridgw::lab::spawn_daemon(ns, &hybridgw_bin(), &conf, &socket, &log, LogFormat::Text)
                .expect("spawn hybridgw");
        let d = Daemon { proc, socket, log };
        d.wait_ready(Duration::from_secs(20));
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the daemon answers on its control socket: it is served only once the IKE
    /// sockets, the data plane and the TUN devices are up (so no IKE packet meets a closed port).
    pub fn wait_ready(&self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            if hybridgw::lab::status(&self.socket).is_ok() {
                return;
            }
            assert!(
                self.proc.is_running(),
                "hybridgw exited:\n{}",
                self.log_text()
            );
            assert!(
                t0.elapsed() < timeout,
                "hybridgw not ready after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until every connection has an installed Child SA; panics with the log otherwise.
    pub fn wait_established(&self, timeout: Duration) -> Status {
        match hybridgw::lab::wait_established(&self.socket, &[&self.proc], timeout) {
            Ok(s) => s,
            Err(e) => panic!(
                "{e}\n---- log {} ----\n{}",
                self.log.display(),
                self.log_text()
            ),
        }
    }

    /// `hybridgw status --json` through the CLI, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(hybridgw_bin())
            .args([
                "--socket",
                self.socket.to_str().expect("utf-8 path"),
                "status",
                "--json",
            ])
            .output()
            .expect("hybridgw status");
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Run a CLI subcommand against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(hybridgw_bin());
        c.args(["--socket", self.socket.to_str().expect("utf-8 path")])
            .args(args);
        c.output().expect("hybridgw cli")
    }
}

/// The first Child SA's (spi_in, spi_out, encryption, integrity) of the first connection.
pub fn child_of(status: &serde_json::Value) -> (String, String, String, String) {
    let ch = &status["connections"][0]["child_sas"][0];
    let s = |k: &str| ch[k].as_str().unwrap_or_default().to_string();
    (s("spi_in"), s("spi_out"), s("encryption"), s("integrity"))
}

/// Ping and require at least `min` answers.
pub fn ping_ok(
    from: &Netns,
    to: std::net::Ipv4Addr,
    count: u32,
    min: u32,
) -> hybridgw::lab::PingResult {
    let p = hybridgw::lab::ping(from, to, count).expect("ping ran");
    assert!(
        p.received >= min,
        "ping {to} from {}: {}/{} answered",
        from.name(),
        p.received,
        p.sent
    );
    p
}

/// iperf3 TCP for `secs` seconds from `client` to a server in `server_ns` (the harness's iperf3
/// helpers); returns Mbit/s received. `reverse` makes the server send.
pub fn iperf3_tcp(
    client: &Netns,
    server_ns: &Netns,
    server_ip: std::net::Ipv4Addr,
    secs: u64,
    reverse: bool,
) -> f64 {
    let _srv = harness::Iperf3Server::start(server_ns, server_ip, 5201).expect("iperf3 server");
    let o = harness::Iperf3Options {
        duration: Duration::from_secs(secs),
        reverse,
        ..Default::default()
    };
    let r = harness::iperf3_client(client, server_ip, 5201, &o).expect("iperf3 client");
    assert!(r.bytes_received > 0, "iperf3 moved no data");
    r.received_bps / 1e6
}

/// A capture on an interface, as a pcap file.
pub struct Capture {
    pub proc: Proc,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, dev: &str, dir: &Path, name: &str) -> Capture {
        let file = dir.join(format!("{name}.pcap"));
        let proc = ns
            .spawn_logged(
                [
                    "tcpdump",
                    "-i",
                    dev,
                    "-n",
                    "-U",
                    "-s",
                    "256",
                    "-w",
                    file.to_str().expect("utf-8"),
                ],
                &dir.join(format!("{name}.tcpdump.log")),
            )
            .expect("tcpdump");
        let t0 = Instant::now();
        while !file.exists() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture { proc, file }
    }

    /// Stop and check with both our pcap audit and tshark's dissectors that only IKE and
    /// ESP-in-UDP crossed and no inner address appeared.
    pub fn stop_and_check(self, inner: &[std::net::Ipv4Addr]) -> hybridgw::capture::Audit {
        let _ = self
            .proc
            .stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(3));
        let data = std::fs::read(&self.file).expect("capture file");
        let audit = hybridgw::capture::audit_pcap(&data, inner).expect("pcap parses");
        assert!(audit.clean(), "underlay audit: {audit:?}");
        // tshark, independently.
        let out = Command::new("tshark")
            .args([
                "-r",
                self.file.to_str().expect("utf-8"),
                "-n",
                "-T",
                "fields",
                "-e",
                "frame.protocols",
                "-e",
                "ip.src",
                "-e",
                "ip.dst",
            ])
            .output()
            .expect("tshark");
        assert!(
            out.status.success(),
            "tshark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut esp = 0;
        for line in text.lines() {
            let mut f = line.split('\t');
            let protos = f.next().unwrap_or_default();
            let addrs: Vec<&str> = f.flat_map(|x| x.split(',')).collect();
            if !protos.contains(":ip:") {
                continue; // ARP, IPv6 neighbour discovery
            }
            for a in &addrs {
                assert!(
                    !inner.iter().any(|i| i.to_string() == *a),
                    "tshark saw inner address {a} in clear: {line}"
                );
            }
            assert!(
                protos.ends_with(":udp:isakmp")
                    || protos.contains(":udp:udpencap")
                    || protos.ends_with(":esp"),
                "tshark saw non-IKE/ESP traffic: {line}"
            );
            if protos.ends_with(":esp") {
                esp += 1;
            }
        }
        assert!(esp > 0, "tshark saw no ESP at all");
        audit
    }
}

/// hybridgw config text for one route-based connection.
pub fn hgw_config(
    name: &str,
    local: std::net::Ipv4Addr,
    remote: std::net::Ipv4Addr,
    psk_file: &Path,
    extra: &str,
    tun: &str,
    remote_prefix: &str,
) -> String {
    format!(
        "[[connection]]\nname = \"{name}\"\nlocal_address = \"{local}\"\nremote_address = \"{remote}\"\npsk_file = \"{}\"\ntun_name = \"{tun}\"\nremote_prefixes = [\"{remote_prefix}:100\"]\n{extra}\n",
        psk_file.display()
    )
}

/// The Azure-side and on-prem hybridgw daemons of the standard lab (started in that order), each
/// configured with `hgw_config` plus its own extra TOML lines; returns (azure, onprem).
pub fn start_pair(
    lab: &Lab,
    dir: &Path,
    psk_file: &Path,
    azure_extra: &str,
    onprem_extra: &str,
) -> (Daemon, Daemon) {
    let azure = Daemon::start(
        &lab.azure_gw,
        dir,
        "azure",
        &hgw_config(
            "onprem",
            lab.azure_gw_wan_ip,
            lab.onprem_gw_wan_ip,
            psk_file,
            azure_extra,
            "hgw-onprem",
            &lab.onprem_lan.to_string(),
        ),
    );
    let onprem = Daemon::start(
        &lab.onprem_gw,
        dir,
        "onprem",
        &hgw_config(
            "azure",
            lab.onprem_gw_wan_ip,
            lab.azure_gw_wan_ip,
            psk_file,
            onprem_extra,
            "hgw-azure",
            &lab.azure_lan.to_string(),
        ),
    );
    (azure, onprem)
}

/// Write a random PSK (hex, 48 characters) to `dir/psk` (mode 0600); returns (path, value).
pub fn psk(dir: &Path) -> (PathBuf, String) {
    use std::io::Read;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    let v = hex::encode(b);
    let p = dir.join("psk");
    hybridgw::lab::write_private(&p, v.as_bytes()).expect("write psk");
    (p, v)
}

/// Build the standard lab with a unique prefix.
pub fn lab(prefix: &str) -> Lab {
    Lab::builder().prefix(prefix).build().expect("lab topology")
}
