//! A manually keyed data plane (RFC 4303 ESP in UDP, RFC 3948) for benchmarks and experiments:
//! one route-based tunnel, keys derived from a shared seed (test use only, never for real
//! traffic). Runs until SIGINT or SIGTERM, then prints its counters.
//!
//! ```text
//! manual_tunnel --bind 192.0.2.1:4500 --peer 192.0.2.2:4500 --tun dptun0 --addr 198.18.1.1/24 \
//!     --suite gcm|cbc --spi-out 0x1001 --spi-in 0x2001 [--workers N] [--seed N] [--mtu 1400] \
//!     [--busy-poll-us 0] [--slice-us 0] [--cpu-affinity on|off] [--offload on|off]
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use dataplane::{Dataplane, DataplaneConfig, OutboundRoute, TunnelConfig};
use esp::{Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, SaConfig};
use nix::sys::signal::{SigSet, Signal};

fn on_off(flag: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        o => Err(format!("{flag} on|off, not {o}")),
    }
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s}: {e}"))
}

/// Key bytes for `spi` from `seed` (a simple deterministic expansion; test keys only).
fn key(seed: u64, spi: u32, len: usize, salt: u8) -> KeyMaterial {
    let mut x = seed ^ (u64::from(spi) << 16) ^ u64::from(salt);
    let bytes = (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect();
    KeyMaterial::new(bytes)
}

fn sa(suite: &str, spi: u32, seed: u64) -> Result<SaConfig, String> {
    Ok(match suite {
        "gcm" => SaConfig::new(
            spi,
            Cipher::AesGcm16_256,
            Integrity::None,
            key(seed, spi, 36, 1),
            KeyMaterial::empty(),
        ),
        "cbc" => SaConfig::new(
            spi,
            Cipher::AesCbc256,
            Integrity::HmacSha256_128,
            key(seed, spi, 32, 1),
            key(seed, spi, 32, 2),
        ),
        other => return Err(format!("unknown suite {other} (gcm or cbc)")),
    })
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut bind, mut peer, mut tun, mut addr) = (None, None, None, None);
    let (mut suite, mut spi_out, mut spi_in) = ("gcm".to_string(), None, None);
    let (mut workers, mut seed, mut mtu) = (1usize, 1u64, 1400u16);
    let mut busy_poll = dataplane::DEFAULT_BUSY_POLL;
    let mut slice = dataplane::DEFAULT_WORKER_SLICE;
    let mut cpu_affinity = true;
    let mut offload = true;
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bind" => bind = Some(v()?.parse::<SocketAddr>().map_err(|e| e.to_string())?),
            "--peer" => peer = Some(v()?.parse::<SocketAddr>().map_err(|e| e.to_string())?),
            "--tun" => tun = Some(v()?),
            "--addr" => addr = Some(v()?),
            "--suite" => suite = v()?,
            "--spi-out" => spi_out = Some(parse_u32(&v()?)?),
            "--spi-in" => spi_in = Some(parse_u32(&v()?)?),
            "--workers" => workers = v()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--seed" => seed = v()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--busy-poll-us" => {
                busy_poll = std::time::Duration::from_micros(
                    v()?.parse().map_err(|e| format!("--busy-poll-us: {e}"))?,
                )
            }
            "--slice-us" => {
                slice = std::time::Duration::from_micros(
                    v()?.parse().map_err(|e| format!("--slice-us: {e}"))?,
                )
            }
            "--cpu-affinity" => cpu_affinity = on_off(&a, &v()?)?,
            "--offload" => offload = on_off(&a, &v()?)?,
            "--mtu" => mtu = v()?.parse().map_err(|e| format!("--mtu: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let bind = bind.ok_or("--bind is required")?;
    let peer = peer.ok_or("--peer is required")?;
    let mut t = TunnelConfig::route_based(tun.ok_or("--tun is required")?);
    t.tun.mtu = mtu;
    if let Some(a) = addr {
        let (ip, len) = a.split_once('/').ok_or("--addr needs ADDR/LEN")?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("--addr: {e}"))?;
        let len: u8 = len.parse().map_err(|e| format!("--addr: {e}"))?;
        t.tun.ipv4 = Some((ip, len));
    }
    let mut cfg = DataplaneConfig::new(bind);
    cfg.workers = workers;
    cfg.busy_poll = busy_poll;
    cfg.worker_slice = slice;
    cfg.cpu_affinity = cpu_affinity;
    cfg.offload = offload;
    cfg.tunnels.push(t);
    let spi_out = spi_out.ok_or("--spi-out is required")?;
    let spi_in = spi_in.ok_or("--spi-in is required")?;

    // Block the stop signals before any thread starts, so that only `wait` receives them.
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(|e| e.to_string())?;

    let (dp, _control) = Dataplane::start(cfg).map_err(|e| e.to_string())?;
    let tid = dataplane::TunnelId(0);
    let inbound = InboundSa::new(&sa(&suite, spi_in, seed)?).map_err(|e| e.to_string())?;
    let outbound = OutboundSa::new(&sa(&suite, spi_out, seed)?).map_err(|e| e.to_string())?;
    dp.install_inbound(tid, inbound, None)
        .map_err(|e| e.to_string())?;
    dp.install_outbound(tid, OutboundRoute::Any, outbound, peer)
        .map_err(|e| e.to_string())?;
    println!("ready");
    let sig = set.wait().map_err(|e| e.to_string())?;
    let c = dp.counters();
    for s in &c.sas {
        println!(
            "sa spi={:#010x} {:?} packets={} bytes={}",
            s.spi, s.direction, s.packets, s.bytes
        );
    }
    for (r, n) in c.drops.iter().filter(|(_, n)| *n > 0) {
        println!("drop {}={n}", r.name());
    }
    println!("{:?}", c.batching);
    println!("stopped by {sig:?}");
    dp.shutdown();
    Ok(())
}

fn main() {
    // Warnings of the data plane on stderr (RUST_LOG=debug for more).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run() {
        eprintln!("manual_tunnel: {e}");
        std::process::exit(2);
    }
}
