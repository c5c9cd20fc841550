//! Packet captures in a namespace (`tcpdump` writing pcap) and their dissection with `tshark`,
//! including decryption of ESP (RFC 4303) and IKEv2 (RFC 7296) with keys taken from charon's log.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netns::{Netns, Proc};
use nix::sys::signal::Signal;

use crate::keys::{EspSaKeys, IkeSaKeys};

/// A running `tcpdump -i IFACE -w FILE` inside a namespace. [`Capture::stop`] stops it with SIGINT
/// (which flushes the file) and returns the pcap; dropping it without `stop` kills it.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    pcap: PathBuf,
    dir: tempfile::TempDir,
}

/// A finished capture file; the file is deleted with this value.
#[derive(Debug)]
pub struct Pcap {
    path: PathBuf,
    _dir: tempfile::TempDir,
    /// tcpdump's final report (`N packets captured ...`).
    pub report: String,
}

impl Pcap {
    /// The pcap file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Keeps a copy at `dest` (e.g. for a failing test's artifacts).
    pub fn copy_to(&self, dest: &Path) -> Result<()> {
        std::fs::copy(&self.path, dest)
            .with_context(|| format!("copying capture to {}", dest.display()))?;
        Ok(())
    }
}

impl Capture {
    /// Starts capturing on `iface` in `ns` with an optional pcap-filter expression, and returns once
    /// tcpdump reports that it is listening (at most 10 s).
    pub fn start(ns: &Netns, iface: &str, filter: Option<&str>) -> Result<Capture> {
        netns::link::check_ifname(iface)?;
        let dir = tempfile::Builder::new().prefix("capture-").tempdir()?;
        let pcap = dir.path().join(format!("{iface}.pcap"));
        let mut cmd = ns.command("tcpdump");
        // -Z root: Debian's tcpdump otherwise drops to user tcpdump and cannot write the file.
        cmd.args([
            "-i",
            iface,
            "-n",
            "-U",
            "--immediate-mode",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
        ])
        .arg(&pcap);
        if let Some(f) = filter {
            cmd.arg(f);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = ns
            .spawn_command(cmd)
            .context("starting tcpdump (package tcpdump)")?;
        let stderr = proc.take_stderr().context("tcpdump stderr")?;
        let (tx, rx) = mpsc::channel();
        let report = dir.path().join("tcpdump.stderr");
        let report2 = report.clone();
        std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
                let _ = std::fs::write(&report2, &all);
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(Capture { proc, pcap, dir }),
            Err(_) => {
                let _ = proc.stop();
                bail!(
                    "tcpdump on {iface} in {} did not start: {}",
                    ns.name(),
                    std::fs::read_to_string(&report).unwrap_or_default()
                )
            }
        }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns the file.
    pub fn stop(self) -> Result<Pcap> {
        // Give packets in flight a moment to be written.
        std::thread::sleep(Duration::from_millis(100));
        self.proc
            .stop_with(Signal::SIGINT, Duration::from_secs(5))?;
        let report_path = self.dir.path().join("tcpdump.stderr");
        // The reader thread writes the final lines right after tcpdump exits.
        let mut report = String::new();
        for _ in 0..50 {
            report = std::fs::read_to_string(&report_path).unwrap_or_default();
            if report.contains("captured") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let Capture { proc, pcap, dir } = self;
        drop(proc);
        Ok(Pcap {
            path: pcap,
            _dir: dir,
            report,
        })
    }
}

/// A tshark invocation: decryption tables and preferences, then [`Tshark::fields`] or
/// [`Tshark::lines`] on a pcap.
#[derive(Clone, Debug, Default)]
pub struct Tshark {
    esp_sa: Vec<String>,
    ikev2: Vec<String>,
    prefs: Vec<String>,
}

impl Tshark {
    /// No keys.
    pub fn new() -> Tshark {
        Tshark::default()
    }

    /// Adds a raw `uat:esp_sa` record.
    pub fn esp_record(mut self, rec: &str) -> Self {
        self.esp_sa.push(rec.to_string());
        self
    }

    /// Adds a raw `uat:ikev2_decryption_table` record.
    pub fn ikev2_record(mut self, rec: &str) -> Self {
        self.ikev2.push(rec.to_string());
        self
    }

    /// Adds the ESP SAs (outer addresses wildcarded when `any_addr`).
    pub fn esp_keys(mut self, keys: &[EspSaKeys], any_addr: bool) -> Result<Self> {
        for k in keys {
            self.esp_sa.push(k.tshark_record(any_addr)?);
        }
        Ok(self)
    }

    /// Adds the IKE SAs.
    pub fn ike_keys(mut self, keys: &[IkeSaKeys]) -> Result<Self> {
        for k in keys {
            self.ikev2.push(k.tshark_record()?);
        }
        Ok(self)
    }

    /// Adds a preference (`-o NAME:VALUE`).
    pub fn pref(mut self, p: &str) -> Self {
        self.prefs.push(p.to_string());
        self
    }

    fn command(&self, pcap: &Path) -> Command {
        let mut c = Command::new("tshark");
        c.arg("-n").arg("-r").arg(pcap);
        // Decode UDP 4500 as ESP-in-UDP / IKE (the default heuristics already do; be explicit).
        c.args([
            "-o",
            "esp.enable_encryption_decode:TRUE",
            "-o",
            "esp.enable_authentication_check:TRUE",
        ]);
        for r in &self.esp_sa {
            c.arg("-o").arg(format!("uat:esp_sa:{r}"));
        }
        for r in &self.ikev2 {
            c.arg("-o").arg(format!("uat:ikev2_decryption_table:{r}"));
        }
        for p in &self.prefs {
            c.arg("-o").arg(p);
        }
        // Keep tshark away from any user profile.
        c.env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("hybridgw-tshark-empty-profile"),
        );
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, mut c: Command) -> Result<String> {
        let out = c.output().context("running tshark (package tshark)")?;
        if !out.status.success() {
            bail!(
                "tshark failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One summary line per packet matching the display filter (`-Y`), e.g. `"icmp"`.
    pub fn lines(&self, pcap: &Path, display_filter: Option<&str>) -> Result<Vec<String>> {
        let mut c = self.command(pcap);
        if let Some(f) = display_filter {
            c.args(["-Y", f]);
        }
        Ok(self.run(c)?.lines().map(String::from).collect())
    }

    /// The given fields (`-T fields -e F ...`) of each packet matching the display filter; a field
    /// that occurs several times in a packet (e.g. `ip.src` inside ESP) is joined with `,`.
    pub fn fields(
        &self,
        pcap: &Path,
        display_filter: Option<&str>,
        fields: &[&str],
    ) -> Result<Vec<Vec<String>>> {
        let mut c = self.command(pcap);
        if let Some(f) = display_filter {
            c.args(["-Y", f]);
        }
        c.args([
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ]);
        for f in fields {
            c.args(["-e", f]);
        }
        Ok(self
            .run(c)?
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect())
    }
}

/// Checks, without any keys, that no packet in `pcap` carries one of `inner` addresses in a
/// readable IPv4 header (i.e. everything between them went through the tunnel encrypted).
/// Returns the offending packets' summaries as the error.
pub fn assert_no_clear(pcap: &Path, inner: &[Ipv4Addr]) -> Result<()> {
    if inner.is_empty() {
        return Ok(());
    }
    let filter = inner
        .iter()
        .map(|a| format!("ip.addr == {a}"))
        .collect::<Vec<_>>()
        .join(" || ");
    let hits = Tshark::new().lines(pcap, Some(&filter))?;
    if !hits.is_empty() {
        bail!(
            "{} packet(s) with inner addresses {inner:?} appear in clear:\n{}",
            hits.len(),
            hits.join("\n")
        );
    }
    Ok(())
}

/// Checks that every IP packet in `pcap` is UDP to or from port 500 or 4500 (IKE and ESP-in-UDP).
pub fn assert_only_ike_ports(pcap: &Path) -> Result<()> {
    let hits = Tshark::new().lines(pcap, Some("ip && !(udp.port == 500 || udp.port == 4500)"))?;
    if !hits.is_empty() {
        bail!(
            "{} packet(s) other than UDP 500/4500 on the underlay:\n{}",
            hits.len(),
            hits.join("\n")
        );
    }
    Ok(())
}
