//! Packet reordering on a router namespace without `sch_netem` (this kernel has neither netem nor
//! NFQUEUE): forwarded IPv4 packets (RFC 791) are policy-routed into a TUN device, a small
//! userspace relay (Python 3 standard library only, `/usr/bin/python3`) holds a random share of
//! them for a while and writes everything back into the TUN, from where the kernel forwards it
//! on through the main table. Held packets leave after packets that arrived later: reordering.
//!
//! ```text
//! onp0 --(ip rule iif onp0/az0 -> table 100: underlay prefixes dev rt0)--> rt0 -> relay
//! relay -> rt0 --(iif rt0: main table)--> az0 / onp0
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netns::{Netns, Proc};

/// What to do to packets crossing the router.
#[derive(Clone, Debug)]
pub struct ReorderOptions {
    /// Name of the TUN device (at most 15 bytes).
    pub dev: String,
    /// Incoming interfaces whose packets go through the relay.
    pub from: Vec<String>,
    /// Destination prefixes routed into the relay (must be allowed test addresses).
    pub prefixes: Vec<String>,
    /// Percent of packets held back.
    pub hold_percent: u32,
    /// How long a held packet waits, at least and at most (uniformly at random).
    pub hold_min: Duration,
    /// See `hold_min`.
    pub hold_max: Duration,
    /// Percent of packets dropped by the relay (0: leave loss to nftables).
    pub drop_percent: u32,
}

/// The relay: packets in, a share held for `hold_min..=hold_max` ms, everything out again.
/// Prints `read W held X dropped Y reordered Z` once a second (Z counts packets written while a
/// packet that arrived earlier was still held).
const RELAY: &str = r#"
import fcntl, heapq, os, random, select, struct, sys, time
dev, hold_pct, hmin, hmax, drop_pct = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", dev.encode(), 0x0001 | 0x1000))
print("ready", flush=True)
held, seq = [], 0
n = {"read": 0, "held": 0, "dropped": 0, "reordered": 0}
last = time.monotonic()
while True:
    now = time.monotonic()
    while held and held[0][0] <= now:
        _, _, p = heapq.heappop(held)
        os.write(fd, p)
    timeout = max(0.0, held[0][0] - now) if held else 0.5
    r, _, _ = select.select([fd], [], [], min(timeout, 0.5))
    if r:
        p = os.read(fd, 65535)
        n["read"] += 1
        x = random.randrange(100)
        if x < drop_pct:
            n["dropped"] += 1
        elif x < drop_pct + hold_pct:
            n["held"] += 1
            seq += 1
            heapq.heappush(held, (time.monotonic() + random.uniform(hmin, hmax) / 1000.0, seq, p))
        else:
            if held:
                n["reordered"] += 1
            os.write(fd, p)
    if now - last >= 1.0:
        last = now
        print("read %(read)d held %(held)d dropped %(dropped)d reordered %(reordered)d" % n, flush=True)
"#;

/// A running relay; dropping it stops the process (the namespace's routes go with the namespace).
#[derive(Debug)]
pub struct Reorderer {
    proc: Proc,
    log: PathBuf,
}

/// Counters the relay printed last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Packets read from the TUN.
    pub read: u64,
    /// Packets held back.
    pub held: u64,
    /// Packets dropped.
    pub dropped: u64,
    /// Packets that overtook a held one.
    pub reordered: u64,
}

impl Reorderer {
    /// Starts the relay in `ns` (a forwarding router), writing its output to `log`, and routes
    /// packets arriving on `opts.from` for `opts.prefixes` through it.
    pub fn start(ns: &Netns, opts: &ReorderOptions, log: &Path) -> Result<Reorderer> {
        for p in &opts.prefixes {
            netns::check_cidr(p)?;
        }
        let proc = ns
            .spawn_logged(
                [
                    "/usr/bin/python3",
                    "-u",
                    "-c",
                    RELAY,
                    &opts.dev,
                    &opts.hold_percent.to_string(),
                    &opts.hold_min.as_millis().to_string(),
                    &opts.hold_max.as_millis().to_string(),
                    &opts.drop_percent.to_string(),
                ],
                log,
            )
            .context("starting the reordering relay (/usr/bin/python3)")?;
        let r = Reorderer {
            proc,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("ready")
        {
            if !r.proc.is_running() || Instant::now() >= deadline {
                bail!(
                    "reordering relay did not start: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ns.exec(["ip", "link", "set", "dev", &opts.dev, "up"])?;
        for k in ["all", "default", opts.dev.as_str()] {
            ns.sysctl_set(&format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
        }
        for p in &opts.prefixes {
            ns.exec(["ip", "route", "add", p, "dev", &opts.dev, "table", "100"])?;
        }
        for i in &opts.from {
            ns.exec([
                "ip", "rule", "add", "iif", i, "lookup", "100", "priority", "100",
            ])?;
        }
        Ok(r)
    }

    /// The relay's last counters.
    pub fn stats(&self) -> ReorderStats {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut s = ReorderStats::default();
        if let Some(line) = text.lines().rev().find(|l| l.starts_with("read ")) {
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if let [read, held, dropped, reordered] = v[..] {
                s = ReorderStats {
                    read,
                    held,
                    dropped,
                    reordered,
                };
            }
        }
        s
    }

    /// Stops the relay.
    pub fn stop(self) -> Result<()> {
        self.proc.stop()?;
        Ok(())
    }
}
