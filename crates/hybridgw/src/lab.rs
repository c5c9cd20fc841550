//! `hybridgw lab`: builds the standard four-namespace topology, runs two hybridgw daemons (on-prem
//! initiator, Azure-side responder with Azure's default policy), proves ping and a TCP transfer cross
//! the tunnel and that the underlay carries only IKE and ESP-in-UDP (RFC 7296, RFC 3948), then removes
//! everything, also on Ctrl-C or failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns::topology::Lab;
use netns::{Netns, Proc};

use crate::capture;
use crate::control::{self, Request, Status};
use crate::logging::LogFormat;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Has the user pressed Ctrl-C (or sent SIGTERM)?
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sets [`interrupted`] on SIGINT or SIGTERM (a watcher thread).
pub fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut i), Ok(mut t)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("lab: interrupted, cleaning up");
        });
    });
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("hybridgw-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write a file with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// The two lab configurations: (on-prem side, Azure side).
pub fn lab_configs(lab: &Lab, psk_file: &Path) -> (String, String) {
    let onprem = format!(
        r#"# hybridgw lab: on-prem gateway (initiator), proposals an Azure default-policy gateway accepts
[[connection]]
name = "azure"
local_address = "{l}"
remote_address = "{r}"
psk_file = "{psk}"
behaviour = "initiate"
ike_proposals = "aes256-sha256-modp1024"
esp_proposals = "aes256gcm16"
tun_name = "hgw-azure"
remote_prefixes = ["{az}:100"]
"#,
        l = lab.onprem_gw_wan_ip,
        r = lab.azure_gw_wan_ip,
        psk = psk_file.display(),
        az = lab.azure_lan,
    );
    let azure = format!(
        r#"# hybridgw lab: the Azure side (responder, Azure's default policy)
[[connection]]
name = "onprem"
local_address = "{l}"
remote_address = "{r}"
psk_file = "{psk}"
behaviour = "ResponderOnly"
ike_proposals = "azure-default"
esp_proposals = "azure-default"
tun_name = "hgw-onprem"
remote_prefixes = ["{op}:100"]
"#,
        l = lab.azure_gw_wan_ip,
        r = lab.onprem_gw_wan_ip,
        psk = psk_file.display(),
        op = lab.onprem_lan,
    );
    (onprem, azure)
}

/// Start `hybridgw run` inside a namespace, logging to `log`.
pub fn spawn_daemon(
    ns: &Netns,
    exe: &Path,
    config: &Path,
    socket: &Path,
    log: &Path,
    format: LogFormat,
) -> netns::Result<Proc> {
    let fmt = match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    ns.spawn_logged(
        [
            exe.as_os_str(),
            "--log-format".as_ref(),
            fmt.as_ref(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "run".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        log,
    )
}

/// Status of a daemon, if it answers.
pub fn status(socket: &Path) -> Result<Status, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let r = rt.block_on(control::call(socket, &Request::Status))?;
    r.status
        .ok_or_else(|| r.message.unwrap_or_else(|| "no status".into()))
}

/// True when every connection of the status is `established`: every selector pair has an
/// installed Child SA.
pub fn all_established(st: &Status) -> bool {
    !st.connections.is_empty() && st.connections.iter().all(|c| c.state == "established")
}

/// Wait (bounded) until the daemon behind `socket` reports every connection established.
pub fn wait_established(
    socket: &Path,
    procs: &[&Proc],
    timeout: Duration,
) -> Result<Status, String> {
    let t0 = Instant::now();
    let mut last = String::from("no answer yet");
    while t0.elapsed() < timeout {
        if interrupted() {
            return Err("interrupted".into());
        }
        for p in procs {
            if let Ok(Some(st)) = p.try_wait() {
                return Err(format!("{} exited early with {st}", p.label()));
            }
        }
        match status(socket) {
            Ok(st) if all_established(&st) => return Ok(st),
            Ok(st) => {
                last = st
                    .connections
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {}{}",
                            c.name,
                            c.state,
                            c.last_error
                                .as_ref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "tunnel not established within {} s: {last}",
        timeout.as_secs()
    ))
}

/// Ping summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    pub rtt_avg_ms: Option<f64>,
}

/// Ping `dst` from `ns` (`count` packets, 0.2 s apart, bounded wait).
pub fn ping(ns: &Netns, dst: Ipv4Addr, count: u32) -> Result<PingResult, String> {
    let out = ns
        .exec_output([
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &dst.to_string(),
        ])
        .map_err(|e| e.to_string())?;
    parse_ping(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        format!(
            "cannot parse ping output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Parse `ping -q` output.
pub fn parse_ping(text: &str) -> Option<PingResult> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line.split(',').map(|p| {
        p.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u32>().ok())
    });
    let sent = nums.next()??;
    let received = nums.next()??;
    let rtt_avg_ms = text
        .lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok());
    Some(PingResult {
        sent,
        received,
        rtt_avg_ms,
    })
}

/// TCP transfer summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpResult {
    pub bytes: u64,
    pub seconds: f64,
}

impl TcpResult {
    pub fn mbit_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 * 8.0 / self.seconds / 1e6
        } else {
            0.0
        }
    }
}

/// Send a patterned byte stream for `duration` from `from` to a listener in `to` at `addr`; the
/// receiver checks every byte of the pattern. Bounded in time.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    addr: SocketAddr,
    duration: Duration,
) -> Result<TcpResult, String> {
    let listener = to.tcp_listen(addr).map_err(|e| e.to_string())?;
    listener.set_nonblocking(false).map_err(|e| e.to_string())?;
    let receiver = std::thread::spawn(move || -> Result<TcpResult, String> {
        let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total: u64 = 0;
        let t0 = Instant::now();
        loop {
            let n = s
                .read(&mut buf)
                .map_err(|e| format!("receive after {total} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            for (i, b) in buf.iter().take(n).enumerate() {
                if *b != ((total + i as u64) % 251) as u8 {
                    return Err(format!("corrupted byte at offset {}", total + i as u64));
                }
            }
            total += n as u64;
        }
        Ok(TcpResult {
            bytes: total,
            seconds: t0.elapsed().as_secs_f64(),
        })
    });
    let mut s = match from.tcp_connect(addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            // Unblock the receiver thread with a local connection so it can be joined.
            let _ = to.tcp_connect(addr, Duration::from_secs(1));
            let _ = receiver.join();
            return Err(e.to_string());
        }
    };
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let pattern: Vec<u8> = (0..251u32 * 1024).map(|i| (i % 251) as u8).collect();
    let t0 = Instant::now();
    let mut sent_err = None;
    while t0.elapsed() < duration && !interrupted() {
        if let Err(e) = s.write_all(&pattern) {
            sent_err = Some(format!("send: {e}"));
            break;
        }
    }
    drop(s);
    let r = receiver
        .join()
        .map_err(|_| "receiver thread panicked".to_string())?;
    match (r, sent_err) {
        (Ok(r), None) => Ok(r),
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
    }
}

/// Entry point of `hybridgw lab`.
pub fn main(format: LogFormat) -> ExitCode {
    as_root("hybridgw lab", || run_lab(format))
}

/// Runs a lab as root: refuses without root, watches for Ctrl-C, prints the failure.
pub fn as_root(name: &str, run: impl FnOnce() -> Result<(), String>) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{name}: must run as root (it creates network namespaces)");
        return ExitCode::FAILURE;
    }
    watch_signals();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_lab(format: LogFormat) -> Result<(), String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find my own binary: {e}"))?;
    let t_start = Instant::now();
    let scratch = Scratch::new("lab").map_err(|e| format!("scratch directory: {e}"))?;
    let dir = scratch.0.clone();
    println!("lab: building namespaces (on-prem host, on-prem gateway, Azure gateway, Azure host)");
    // A router between the gateways carries only the underlay: capturing there sees exactly what
    // crosses the "internet".
    let lab = Lab::builder()
        .prefix("hgwlab")
        .router(true)
        .build()
        .map_err(|e| format!("building the lab: {e}"))?;
    let router = lab
        .router
        .as_ref()
        .ok_or("the lab has no router namespace")?;
    println!(
        "lab: {} {} -- {} {} == underlay {} <-> {} (router) <-> {} == {} {} -- {} {}",
        lab.onprem_host.name(),
        lab.onprem_host_ip,
        lab.onprem_gw.name(),
        lab.onprem_gw_lan_ip,
        lab.onprem_gw_wan_ip,
        router.name(),
        lab.azure_gw_wan_ip,
        lab.azure_gw.name(),
        lab.azure_gw_lan_ip,
        lab.azure_host.name(),
        lab.azure_host_ip
    );
    let psk_file = dir.join("lab.psk");
    let psk: String = {
        let mut b = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| format!("random PSK: {e}"))?;
        hex::encode(b)
    };
    write_private(&psk_file, psk.as_bytes()).map_err(|e| e.to_string())?;
    let (onprem_cfg, azure_cfg) = lab_configs(&lab, &psk_file);
    let onprem_conf = dir.join("onprem.toml");
    let azure_conf = dir.join("azure.toml");
    write_private(&onprem_conf, onprem_cfg.as_bytes()).map_err(|e| e.to_string())?;
    write_private(&azure_conf, azure_cfg.as_bytes()).map_err(|e| e.to_string())?;
    println!(
        "lab: configs {} and {}",
        onprem_conf.display(),
        azure_conf.display()
    );

    // Capture the underlay (every interface of the router) from before the first IKE packet.
    let sock = router
        .try_run_in(capture::packet_socket)
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("capture socket in {}: {e}", router.name()))?;
    let inner = vec![
        lab.onprem_host_ip,
        lab.azure_host_ip,
        lab.onprem_gw_lan_ip,
        lab.azure_gw_lan_ip,
    ];
    let live = capture::LiveCapture::start(sock, inner)
        .map_err(|e| format!("starting the capture: {e}"))?;

    let azure_sock = dir.join("azure.sock");
    let onprem_sock = dir.join("onprem.sock");
    let azure_log = dir.join("azure.log");
    let onprem_log = dir.join("onprem.log");
    let azure = spawn_daemon(
        &lab.azure_gw,
        &exe,
        &azure_conf,
        &azure_sock,
        &azure_log,
        format,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "lab: started hybridgw (Azure side, responder) in {} pid {}",
        lab.azure_gw.name(),
        azure.pid()
    );
    // The control socket answers only once the IKE sockets, data plane and TUN are up, so the
    // initiator's first packet never meets a closed port (an ICMP error on the underlay).
    wait_for(
        || status(&azure_sock).is_ok() || !azure.is_running(),
        Duration::from_secs(20),
    );
    let onprem = spawn_daemon(
        &lab.onprem_gw,
        &exe,
        &onprem_conf,
        &onprem_sock,
        &onprem_log,
        format,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "lab: started hybridgw (on-prem side, initiator) in {} pid {}",
        lab.onprem_gw.name(),
        onprem.pid()
    );

    let dump_logs = || {
        for (n, p) in [("on-prem", &onprem_log), ("azure", &azure_log)] {
            eprintln!(
                "---- {n} log ({}) ----\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            );
        }
    };
    let t_wait = Instant::now();
    let st = match wait_established(&onprem_sock, &[&onprem, &azure], Duration::from_secs(30)) {
        Ok(st) => st,
        Err(e) => {
            dump_logs();
            return Err(e);
        }
    };
    let az_st = wait_established(&azure_sock, &[&azure], Duration::from_secs(10))
        .inspect_err(|_| dump_logs())?;
    println!(
        "lab: tunnel established after {:.0} ms",
        t_wait.elapsed().as_secs_f64() * 1000.0
    );
    for (side, s) in [("on-prem", &st), ("azure", &az_st)] {
        for c in &s.connections {
            if let Some(i) = &c.ike_sa {
                println!(
                    "lab:   {side} IKE SA {}/{}/{}/{} spi {}/{}",
                    i.encryption, i.integrity, i.prf, i.dh_group, i.spi_i, i.spi_r
                );
            }
            for ch in &c.child_sas {
                println!(
                    "lab:   {side} Child SA {}{} spi in {} out {}",
                    ch.encryption,
                    if ch.integrity.is_empty() {
                        String::new()
                    } else {
                        format!("/{}", ch.integrity)
                    },
                    ch.spi_in,
                    ch.spi_out
                );
            }
        }
    }

    let p = ping(&lab.onprem_host, lab.azure_host_ip, 10);
    let p = p.inspect_err(|_| dump_logs())?;
    println!(
        "lab: ping {} -> {}: {}/{} received, RTT avg {}",
        lab.onprem_host_ip,
        lab.azure_host_ip,
        p.received,
        p.sent,
        p.rtt_avg_ms
            .map(|r| format!("{r:.3} ms"))
            .unwrap_or_else(|| "-".into())
    );
    if interrupted() {
        return Err("interrupted".into());
    }
    let tcp = tcp_transfer(
        &lab.onprem_host,
        &lab.azure_host,
        SocketAddr::from((lab.azure_host_ip, 5201)),
        Duration::from_secs(3),
    );
    let tcp = tcp.inspect_err(|_| dump_logs())?;
    println!(
        "lab: TCP {} -> {}:5201: {} bytes in {:.2} s = {:.1} Mbit/s (every byte checked)",
        lab.onprem_host_ip,
        lab.azure_host_ip,
        tcp.bytes,
        tcp.seconds,
        tcp.mbit_per_s()
    );
    let back = ping(&lab.azure_host, lab.onprem_host_ip, 3).inspect_err(|_| dump_logs())?;
    println!(
        "lab: ping {} -> {}: {}/{} received",
        lab.azure_host_ip, lab.onprem_host_ip, back.received, back.sent
    );

    // Counters from the daemon.
    if let Ok(st) = status(&onprem_sock) {
        for c in &st.connections {
            for ch in &c.child_sas {
                println!(
                    "lab:   on-prem Child SA counters: out {} packets / {} bytes, in {} packets / {} bytes",
                    ch.packets_out, ch.bytes_out, ch.packets_in, ch.bytes_in
                );
            }
        }
    }

    let audit = live.finish();
    println!(
        "lab: underlay capture in {} (all interfaces, each packet seen in and out, a GSO batch counts once): {} frames: {} IKE/500, {} IKE/4500, {} ESP-in-UDP, {} keepalives, {} non-IPv4; {} in clear",
        router.name(),
        audit.packets,
        audit.ike_500,
        audit.ike_4500,
        audit.esp,
        audit.keepalives,
        audit.non_ipv4,
        audit.leaks.len()
    );
    for l in audit.leaks.iter().take(10) {
        println!("lab:   LEAK {l}");
    }

    // Shut the daemons down cleanly and check they did.
    let on_exit = onprem.stop().map_err(|e| e.to_string())?;
    let az_exit = azure.stop().map_err(|e| e.to_string())?;
    println!("lab: daemons stopped ({on_exit}, {az_exit})");
    drop(lab);
    println!(
        "lab: namespaces removed; total {:.1} s",
        t_start.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    if p.received == 0 || back.received == 0 {
        failures.push("ping did not cross the tunnel".to_string());
    }
    if tcp.bytes == 0 {
        failures.push("the TCP transfer carried nothing".to_string());
    }
    if !audit.clean() {
        failures.push(format!(
            "underlay audit failed ({} packets in clear, {} ESP)",
            audit.leaks.len(),
            audit.esp
        ));
    }
    if !on_exit.success() || !az_exit.success() {
        failures.push("a daemon did not shut down cleanly".to_string());
    }
    if failures.is_empty() {
        println!(
            "lab: PASS: traffic crossed the tunnel (RTT {} ms, {:.1} Mbit/s) and nothing crossed the underlay in clear",
            p.rtt_avg_ms
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "-".into()),
            tcp.mbit_per_s()
        );
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Polls `f` every 50 ms until it holds, the timeout passes or the user interrupts.
pub fn wait_for(mut f: impl FnMut() -> bool, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout && !interrupted() {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let out = "PING 198.19.1.10 (198.19.1.10) 56(84) bytes of data.\n\n--- 198.19.1.10 ping statistics ---\n10 packets transmitted, 9 received, 10% packet loss, time 1803ms\nrtt min/avg/max/mdev = 0.081/0.112/0.201/0.031 ms\n";
        let p = parse_ping(out).unwrap();
        assert_eq!((p.sent, p.received), (10, 9));
        assert_eq!(p.rtt_avg_ms, Some(0.112));
        let none = "3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n";
        assert_eq!(
            parse_ping(none),
            Some(PingResult {
                sent: 3,
                received: 0,
                rtt_avg_ms: None
            })
        );
        assert_eq!(parse_ping("garbage"), None);
    }
}
