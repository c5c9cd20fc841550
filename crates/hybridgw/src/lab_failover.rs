//! `hybridgw lab failover`: the ExpressRoute-with-VPN-failover reference test (Azure's "ExpressRoute
//! with VPN failover": connect, cut the circuit, reach the VNet over the VPN, restore) automated in
//! network namespaces, in static mode: floating routes plus a BFD-like path monitor on both
//! gateways (RFC 5880 section 6.8.4 detection), IPsec over the internet path (RFC 7296, RFC 3948).
//!
//! Topology (every address from the documentation and benchmarking ranges):
//! ```text
//!  host 198.18.1.10 -- 198.18.1.1 [on-prem router: hybridgw] er0 192.0.2.1 -- 192.0.2.2 [ER edge] 192.0.2.5 -- 192.0.2.6 er0 [Azure gw: hybridgw] 198.19.1.1 -- 198.19.1.10 host
//!                                                         wan 203.0.113.1 -- 203.0.113.2 [internet] 198.51.100.1 -- 198.51.100.2 wan
//! ```

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use netns::{Netns, Proc, veth_pair};

use crate::lab::{Scratch, interrupted, spawn_daemon, status, wait_established, write_private};
use crate::logging::LogFormat;

const AZURE_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
/// The path monitor of the lab: 200 ms x 3, 3 answers and a 3 s hold-down.
const INTERVAL_MS: u64 = 200;
const HOLD_DOWN_S: u64 = 3;

/// Entry point of `hybridgw lab failover [--bgp]`.
pub fn main(format: LogFormat, bgp: bool) -> ExitCode {
    if bgp {
        eprintln!(
            "hybridgw lab failover --bgp: not implemented yet (BGP mode with BIRD on both sides is still open in project issue #7); run it without --bgp for the static mode"
        );
        return ExitCode::from(2);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("hybridgw lab failover: must run as root (it creates network namespaces)");
        return ExitCode::FAILURE;
    }
    crate::lab::watch_signals();
    match run(format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hybridgw lab failover: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Topo {
    oph: Netns,
    opr: Netns,
    erx: Netns,
    inet: Netns,
    azg: Netns,
    azh: Netns,
}

fn sh(ns: &Netns, cmd: &str) -> Result<(), String> {
    ns.exec(cmd.split_whitespace())
        .map(drop)
        .map_err(|e| format!("{}: `{cmd}`: {e}", ns.name()))
}

fn build() -> Result<Topo, String> {
    let mk = |_: &str| Netns::new("hgwfo").map_err(|e| format!("namespace: {e}"));
    let t = Topo {
        oph: mk("oph")?,
        opr: mk("opr")?,
        erx: mk("erx")?,
        inet: mk("inet")?,
        azg: mk("azg")?,
        azh: mk("azh")?,
    };
    let v = |a: &Netns, an: &str, b: &Netns, bn: &str| {
        veth_pair(a, an, b, bn).map_err(|e| format!("veth {an}/{bn}: {e}"))
    };
    v(&t.oph, "eth0", &t.opr, "lan0")?;
    v(&t.opr, "er0", &t.erx, "er-op")?;
    v(&t.erx, "er-az", &t.azg, "er0")?;
    v(&t.opr, "wan0", &t.inet, "in-op")?;
    v(&t.inet, "in-az", &t.azg, "wan0")?;
    v(&t.azg, "lan0", &t.azh, "eth0")?;
    let cmds: &[(&Netns, &[&str])] = &[
        (
            &t.oph,
            &[
                "ip addr add 198.18.1.10/24 dev eth0",
                // The hosts' MTU fits the tunnel: a transfer moved onto the VPN keeps its segments.
                "ip link set eth0 mtu 1400",
                "ip link set eth0 up",
                "ip route add default via 198.18.1.1",
            ],
        ),
        (
            &t.opr,
            &[
                "ip addr add 198.18.1.1/24 dev lan0",
                "ip addr add 192.0.2.1/30 dev er0",
                "ip addr add 203.0.113.1/30 dev wan0",
                "ip link set lan0 up",
                "ip link set er0 up",
                "ip link set wan0 up",
                // The ExpressRoute route to the VNet (what BGP would install; metric 100).
                "ip route add 198.19.1.0/24 via 192.0.2.2 dev er0 metric 100",
                "ip route add 192.0.2.4/30 via 192.0.2.2 dev er0",
                "ip route add 198.51.100.0/30 via 203.0.113.2 dev wan0",
                "sysctl -qw net.ipv4.ip_forward=1",
                "sysctl -qw net.ipv4.conf.all.rp_filter=0",
                "sysctl -qw net.ipv4.conf.default.rp_filter=0",
            ],
        ),
        (
            &t.erx,
            &[
                "ip addr add 192.0.2.2/30 dev er-op",
                "ip addr add 192.0.2.5/30 dev er-az",
                "ip link set er-op up",
                "ip link set er-az up",
                "ip route add 198.18.1.0/24 via 192.0.2.1",
                "ip route add 198.19.1.0/24 via 192.0.2.6",
                "sysctl -qw net.ipv4.ip_forward=1",
            ],
        ),
        (
            &t.inet,
            &[
                "ip addr add 203.0.113.2/30 dev in-op",
                "ip addr add 198.51.100.1/30 dev in-az",
                "ip link set in-op up",
                "ip link set in-az up",
                "sysctl -qw net.ipv4.ip_forward=1",
            ],
        ),
        (
            &t.azg,
            &[
                "ip addr add 198.19.1.1/24 dev lan0",
                "ip addr add 192.0.2.6/30 dev er0",
                "ip addr add 198.51.100.2/30 dev wan0",
                "ip link set lan0 up",
                "ip link set er0 up",
                "ip link set wan0 up",
                "ip route add 198.18.1.0/24 via 192.0.2.5 dev er0 metric 100",
                "ip route add 192.0.2.0/30 via 192.0.2.5 dev er0",
                "ip route add 203.0.113.0/30 via 198.51.100.1 dev wan0",
                "sysctl -qw net.ipv4.ip_forward=1",
                "sysctl -qw net.ipv4.conf.all.rp_filter=0",
                "sysctl -qw net.ipv4.conf.default.rp_filter=0",
            ],
        ),
        (
            &t.azh,
            &[
                "ip addr add 198.19.1.10/24 dev eth0",
                "ip link set eth0 mtu 1400",
                "ip link set eth0 up",
                "ip route add default via 198.19.1.1",
            ],
        ),
    ];
    for (ns, list) in cmds {
        for c in list.iter() {
            sh(ns, c)?;
        }
    }
    // The long transfer runs at 20 Mbit/s: it must not starve the 10 ms pings in the tunnel.
    t.oph
        .rate_limit("eth0", 20_000)
        .map_err(|e| format!("rate limit: {e}"))?;
    Ok(t)
}

/// One gateway's configuration; `ends` is (local, remote) outer address, `probe` (source, target).
fn config(
    name: &str,
    ends: (&str, &str),
    psk: &Path,
    tun: &str,
    prefix: &str,
    probe: (&str, &str),
    behaviour: &str,
) -> String {
    format!(
        r#"# hybridgw lab failover: {name}
[[connection]]
name = "{name}"
local_address = "{local}"
remote_address = "{remote}"
psk_file = "{psk}"
behaviour = "{behaviour}"
ike_proposals = "aes256-sha256-modp1024"
esp_proposals = "aes256gcm16"
tun_name = "{tun}"
remote_prefixes = ["{prefix}"]

[connection.failover]
primary_interface = "er0"
probe_source = "{src}"
probe_target = "{dst}"
interval_ms = {INTERVAL_MS}
timeout_ms = 100
down_after = 3
up_after = 3
hold_down_seconds = {HOLD_DOWN_S}
backup_metric = 200
"#,
        local = ends.0,
        remote = ends.1,
        psk = psk.display(),
        src = probe.0,
        dst = probe.1,
    )
}

fn counter(ns: &Netns, dev: &str) -> u64 {
    ns.exec([
        "cat",
        &format!("/sys/class/net/{dev}/statistics/tx_packets"),
    ])
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

/// Which path carries traffic, from tx counters over one second on both gateways:
/// (on-prem er0, on-prem tunnel, Azure er0, Azure tunnel) packets.
fn carried(t: &Topo) -> (u64, u64, u64, u64) {
    let read = || {
        (
            counter(&t.opr, "er0"),
            counter(&t.opr, "hgw-azure"),
            counter(&t.azg, "er0"),
            counter(&t.azg, "hgw-onprem"),
        )
    };
    let a = read();
    std::thread::sleep(Duration::from_secs(1));
    let b = read();
    (
        b.0.saturating_sub(a.0),
        b.1.saturating_sub(a.1),
        b.2.saturating_sub(a.2),
        b.3.saturating_sub(a.3),
    )
}

/// Checks the carrying path from the counters (the pings are ~100/s; probes are 5/s).
fn check_path(t: &Topo, want_er: bool, step: &str, fails: &mut Vec<String>) -> &'static str {
    let (oe, ot, ae, at) = carried(t);
    let (path, ok) = if want_er {
        ("ExpressRoute", oe >= 40 && ot <= 10 && ae >= 40 && at <= 10)
    } else {
        ("VPN", ot >= 40 && oe <= 15 && at >= 40 && ae <= 15)
    };
    println!(
        "lab:   {step}: 1 s of counters: on-prem er0 {oe} / tunnel {ot} packets out, Azure er0 {ae} / tunnel {at} packets out -> {}",
        if ok { path } else { "NOT the expected path" }
    );
    if !ok {
        fails.push(format!(
            "{step}: traffic not on {path} (on-prem er0 {oe}, tun {ot}; Azure er0 {ae}, tun {at})"
        ));
    }
    if ok { path } else { "unexpected" }
}

/// Loss figures of one transition, from `ping -D -i 0.01` output.
struct Loss {
    sent: u32,
    lost: u32,
    gap_ms: f64,
}

fn measure(out: &str) -> Loss {
    let mut ts: Vec<f64> = Vec::new();
    let mut seqs: Vec<u32> = Vec::new();
    let mut sent = 0;
    for line in out.lines() {
        if let Some(n) = line
            .split(" packets transmitted")
            .next()
            .filter(|_| line.contains("packets transmitted"))
        {
            sent = n.trim().parse().unwrap_or(0);
        }
        if !line.contains("bytes from") {
            continue;
        }
        let Some(seq) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if seqs.contains(&seq) {
            continue; // a duplicate
        }
        seqs.push(seq);
        if let Some(t) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
            .and_then(|(t, _)| t.parse::<f64>().ok())
        {
            ts.push(t);
        }
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    let gap = ts
        .windows(2)
        .map(|w| match w {
            [a, b] => b - a,
            _ => 0.0,
        })
        .fold(0.0, f64::max);
    Loss {
        sent,
        lost: sent.saturating_sub(seqs.len() as u32),
        gap_ms: (gap * 1000.0 - 10.0).max(0.0),
    }
}

/// Runs `action` one second into a `ping -i 0.01` of `secs` seconds and returns its loss figures.
fn transition(
    t: &Topo,
    secs: u32,
    action: impl FnOnce() -> Result<(), String>,
) -> Result<Loss, String> {
    let count = (secs * 100).to_string();
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| {
            t.oph.exec_output([
                "ping",
                "-D",
                "-n",
                "-i",
                "0.01",
                "-W",
                "1",
                "-c",
                &count,
                "198.19.1.10",
            ])
        });
        std::thread::sleep(Duration::from_secs(1));
        let r = action();
        let o = h.join().map_err(|_| "ping thread panicked".to_string())?;
        r?;
        o.map_err(|e| format!("ping: {e}"))
    })?;
    Ok(measure(&String::from_utf8_lossy(&out.stdout)))
}

fn primary_states(sock_a: &Path, sock_b: &Path) -> (String, String) {
    let f = |s: &Path| {
        status(s)
            .ok()
            .and_then(|st| {
                st.connections
                    .first()
                    .and_then(|c| c.failover.as_ref().map(|f| f.primary_path.clone()))
            })
            .unwrap_or_else(|| "?".into())
    };
    (f(sock_a), f(sock_b))
}

fn run(format: LogFormat) -> Result<(), String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find my own binary: {e}"))?;
    let t_start = Instant::now();
    let scratch = Scratch::new("labfo").map_err(|e| format!("scratch directory: {e}"))?;
    let dir = scratch.0.clone();
    println!(
        "lab: building namespaces (on-prem host, on-prem router, ExpressRoute edge, internet, Azure VPN gateway, Azure host)"
    );
    let t = build()?;
    println!(
        "lab: {} 198.18.1.10 -- {} (hybridgw) == ExpressRoute er0 192.0.2.1 <-> {} <-> 192.0.2.6 er0 == {} (hybridgw) -- {} 198.19.1.10; VPN over {} (203.0.113.0/30, 198.51.100.0/30)",
        t.oph.name(),
        t.opr.name(),
        t.erx.name(),
        t.azg.name(),
        t.azh.name(),
        t.inet.name()
    );
    let psk_file = dir.join("lab.psk");
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("random PSK: {e}"))?;
    write_private(&psk_file, hex::encode(b).as_bytes()).map_err(|e| e.to_string())?;
    let onprem_cfg = config(
        "azure",
        ("203.0.113.1", "198.51.100.2"),
        &psk_file,
        "hgw-azure",
        "198.19.1.0/24",
        ("192.0.2.1", "192.0.2.6"),
        "initiate",
    );
    let azure_cfg = config(
        "onprem",
        ("198.51.100.2", "203.0.113.1"),
        &psk_file,
        "hgw-onprem",
        "198.18.1.0/24",
        ("192.0.2.6", "192.0.2.1"),
        "ResponderOnly",
    );
    let (onprem_conf, azure_conf) = (dir.join("onprem.toml"), dir.join("azure.toml"));
    write_private(&onprem_conf, onprem_cfg.as_bytes()).map_err(|e| e.to_string())?;
    write_private(&azure_conf, azure_cfg.as_bytes()).map_err(|e| e.to_string())?;
    let (onprem_sock, azure_sock) = (dir.join("onprem.sock"), dir.join("azure.sock"));
    let (onprem_log, azure_log) = (dir.join("onprem.log"), dir.join("azure.log"));
    let azure: Proc = spawn_daemon(&t.azg, &exe, &azure_conf, &azure_sock, &azure_log, format)
        .map_err(|e| e.to_string())?;
    crate::lab::wait_for(
        || status(&azure_sock).is_ok() || !azure.is_running(),
        Duration::from_secs(20),
    );
    let onprem: Proc = spawn_daemon(
        &t.opr,
        &exe,
        &onprem_conf,
        &onprem_sock,
        &onprem_log,
        format,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "lab: hybridgw on-prem (initiator) pid {}, Azure side (responder) pid {}, both with [connection.failover] on er0 ({INTERVAL_MS} ms x 3, {HOLD_DOWN_S} s hold-down, tunnel routes at metric 200)",
        onprem.pid(),
        azure.pid()
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
    wait_established(&onprem_sock, &[&onprem, &azure], Duration::from_secs(30))
        .inspect_err(|_| dump_logs())?;
    wait_established(&azure_sock, &[&azure], Duration::from_secs(10))
        .inspect_err(|_| dump_logs())?;
    let up = crate::lab::wait_for(
        || primary_states(&onprem_sock, &azure_sock) == ("up".into(), "up".into()),
        Duration::from_secs(15),
    );
    if !up {
        dump_logs();
        return Err(format!(
            "the path monitors did not declare ExpressRoute up: {:?}",
            primary_states(&onprem_sock, &azure_sock)
        ));
    }
    println!(
        "lab: tunnel established (standing by on the internet path), both path monitors say ExpressRoute is up"
    );

    // The long TCP transfer runs through every step.
    let total = Duration::from_secs(40);
    let mut fails: Vec<String> = Vec::new();
    let tcp = std::thread::scope(
        |s| -> Result<Result<crate::lab::TcpResult, String>, String> {
            let tcp = s.spawn(|| {
                crate::lab::tcp_transfer(
                    &t.oph,
                    &t.azh,
                    SocketAddr::from((AZURE_HOST, 5201)),
                    total,
                )
            });
            std::thread::sleep(Duration::from_millis(500));
            let r = steps(&t, &onprem_sock, &azure_sock, &mut fails);
            let tr = tcp.join().map_err(|_| "TCP thread panicked".to_string())?;
            r?;
            Ok(tr)
        },
    );
    let tcp = match tcp {
        Ok(r) => r,
        Err(e) => {
            dump_logs();
            return Err(e);
        }
    };
    match &tcp {
        Ok(r) => println!(
            "lab: TCP transfer survived every transition: {} MB checked in {:.1} s ({:.1} Mbit/s)",
            r.bytes / 1_000_000,
            r.seconds,
            r.mbit_per_s()
        ),
        Err(e) => {
            println!("lab: TCP transfer FAILED: {e}");
            fails.push(format!("TCP transfer: {e}"));
        }
    }
    // What `hybridgw status` shows on both gateways (the failover lines).
    for (side, sock) in [("on-prem", &onprem_sock), ("Azure", &azure_sock)] {
        match status(sock) {
            Ok(st) => {
                for line in crate::control::render(&st)
                    .lines()
                    .filter(|l| l.contains("failover") || l.contains(" via "))
                {
                    println!("lab: {side} `hybridgw status`: {}", line.trim());
                }
                if st.connections.iter().any(|c| c.failover.is_none()) {
                    fails.push(format!("{side}: status has no failover block"));
                }
            }
            Err(e) => fails.push(format!("{side}: status: {e}")),
        }
    }
    let on_exit = onprem.stop().map_err(|e| e.to_string())?;
    let az_exit = azure.stop().map_err(|e| e.to_string())?;
    println!("lab: daemons stopped ({on_exit}, {az_exit})");
    drop(t);
    println!(
        "lab: namespaces removed; total {:.1} s",
        t_start.elapsed().as_secs_f64()
    );
    if fails.is_empty() {
        println!("lab: PASS: failover and failback held in both cases (link down, blackhole)");
        Ok(())
    } else {
        dump_logs();
        Err(fails.join("; "))
    }
}

/// Prints one transition's figures and checks them: a failover loses under 2 s of traffic, a
/// failback (almost) nothing.
fn report(what: &str, l: &Loss, path: &str, failback: bool, fails: &mut Vec<String>) {
    println!(
        "lab: RESULT {what}: time without traffic {:.0} ms, packets lost {} of {}, path now {path}",
        l.gap_ms, l.lost, l.sent
    );
    let ok = if failback {
        l.lost <= 20 && l.gap_ms < 500.0
    } else {
        l.gap_ms < 2000.0 && l.lost <= 200
    };
    if l.sent == 0 || !ok {
        fails.push(format!(
            "{what}: {:.0} ms without traffic, {} of {} pings lost",
            l.gap_ms, l.lost, l.sent
        ));
    }
}

fn steps(
    t: &Topo,
    onprem_sock: &Path,
    azure_sock: &Path,
    fails: &mut Vec<String>,
) -> Result<(), String> {
    let check_int = || {
        if interrupted() {
            Err("interrupted".to_string())
        } else {
            Ok(())
        }
    };
    println!("lab: step 1: connectivity over ExpressRoute");
    check_path(t, true, "step 1", fails);
    check_int()?;
    let settle = (HOLD_DOWN_S + 4) as u32;

    println!("lab: step 2a: the circuit is cut (link down on the ExpressRoute edge)");
    let l = transition(t, 4, || {
        sh(&t.erx, "ip link set er-op down")?;
        sh(&t.erx, "ip link set er-az down")
    })?;
    let p = check_path(t, false, "step 3 (after link down)", fails);
    report("failover/link-down", &l, p, false, fails);
    println!(
        "lab:   path monitors: {:?}",
        primary_states(onprem_sock, azure_sock)
    );
    check_int()?;

    println!("lab: step 4a: the circuit is restored (link up)");
    let l = transition(t, settle, || {
        sh(&t.erx, "ip link set er-op up")?;
        sh(&t.erx, "ip link set er-az up")?;
        // The edge relearns its routes (the kernel flushed them with the links), as its BGP would.
        sh(&t.erx, "ip route replace 198.18.1.0/24 via 192.0.2.1")?;
        sh(&t.erx, "ip route replace 198.19.1.0/24 via 192.0.2.6")
    })?;
    let p = check_path(t, true, "step 4 (after link up)", fails);
    report("failback/link-up", &l, p, true, fails);
    check_int()?;

    println!(
        "lab: step 2b: the circuit is up but blackholes (forwarding dropped on the ExpressRoute edge)"
    );
    let l = transition(t, 5, || {
        t.erx
            .nft("table inet hgwbh {\n chain cut {\n  type filter hook forward priority 0; policy drop;\n }\n}\n")
            .map_err(|e| format!("nft: {e}"))
    })?;
    let p = check_path(t, false, "step 3 (blackhole)", fails);
    report("failover/blackhole", &l, p, false, fails);
    println!(
        "lab:   path monitors: {:?}",
        primary_states(onprem_sock, azure_sock)
    );
    check_int()?;

    println!("lab: step 4b: forwarding restored");
    let l = transition(t, settle, || sh(&t.erx, "nft delete table inet hgwbh"))?;
    let p = check_path(t, true, "step 4 (blackhole healed)", fails);
    report("failback/blackhole-healed", &l, p, true, fails);
    check_int()?;
    Ok(())
}
