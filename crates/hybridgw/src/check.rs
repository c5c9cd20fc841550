//! `hybridgw check-config`: a readable report of a validated configuration, with every proposal in
//! strongSwan and Azure syntax and the Azure default-policy and legacy-algorithm flags (RFC 8247).

use std::fmt::Write as _;

use crate::config::{Config, Connection, Mode};
use crate::proposals::{self as props, Proposal};

/// Render the report. Never prints a secret.
pub fn report(cfg: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: OK, {} connection(s)",
        cfg.file.display(),
        cfg.connections.len()
    );
    if cfg.daemon.ike_port != 500 || cfg.daemon.natt_port != 4500 {
        let _ = writeln!(
            out,
            "  daemon: IKE on UDP {}, NAT-T/ESP on UDP {}",
            cfg.daemon.ike_port, cfg.daemon.natt_port
        );
    }
    let _ = writeln!(
        out,
        "  data plane: {} worker(s), CPU-local steering while traffic is light {}, UDP socket buffers {} KiB, TUN queues {} packets",
        cfg.daemon
            .workers
            .map_or_else(|| "one per core (at most 4)".to_string(), |n| n.to_string()),
        if cfg.daemon.cpu_affinity { "on" } else { "off" },
        cfg.daemon.socket_buffer / 1024,
        cfg.daemon.tun_queue_len
    );
    let d = &cfg.daemon.drain;
    let _ = writeln!(
        out,
        "  drain: DELETE once nothing arrives for {} ms, at most {} s; static routes +{} metric meanwhile; on SIGTERM {}",
        d.quiet.as_millis(),
        d.timeout.as_secs(),
        d.metric_penalty,
        if d.on_shutdown {
            "drain first"
        } else {
            "stop at once"
        }
    );
    if let Some(h) = &cfg.daemon.ha {
        let _ = writeln!(
            out,
            "  stateful HA: appliance {} of a keepalived pair, partner {} at {}; replication received on {}, secret from {}; marks every {} ms, a takeover skips {} sequence numbers, snapshot every {} ms; starts as backup (`hybridgw ha master` takes over)",
            h.local_id,
            h.peer_id,
            h.peer,
            h.listen,
            h.secret_source,
            h.mark_interval.as_millis(),
            h.seq_skip,
            h.snapshot_interval.as_millis()
        );
    }
    for c in &cfg.connections {
        connection(&mut out, c);
    }
    for w in &cfg.warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
    out
}

fn connection(out: &mut String, c: &Connection) {
    let _ = writeln!(out, "\nconnection {}:", c.name);
    let _ = writeln!(out, "  local  {} (id {})", c.local_address, c.local_id);
    let _ = writeln!(out, "  remote {} (id {})", c.remote_address, c.remote_id);
    let _ = writeln!(out, "  psk from {}", c.psk_source);
    let _ = writeln!(
        out,
        "  behaviour {:?}, force_encap {}, tunnel MTU {}, MSS clamp {}, unique {:?}",
        c.behaviour, c.force_encap, c.mtu, c.mss_clamp, c.unique
    );
    match &c.mode {
        Mode::RouteBased { remote_prefixes } => {
            let _ = writeln!(
                out,
                "  route-based: TUN {}, selectors 0.0.0.0/0 <-> 0.0.0.0/0",
                c.tun_name
            );
            for r in remote_prefixes {
                let _ = writeln!(
                    out,
                    "    route {} metric {} dev {}",
                    r.prefix, r.metric, c.tun_name
                );
            }
        }
        Mode::PolicyBased { selectors, metric } => {
            let _ = writeln!(
                out,
                "  policy-based: TUN {}, {}",
                c.tun_name,
                if c.child_sa_per_pair {
                    format!("one Child SA per selector pair ({})", selectors.len())
                } else {
                    "all selector pairs in one Child SA".to_string()
                }
            );
            for s in selectors {
                let _ = writeln!(out, "    selector {} <-> {}", s.local, s.remote);
            }
            for r in c.routes() {
                let _ = writeln!(
                    out,
                    "    route {} metric {metric} dev {}",
                    r.prefix, c.tun_name
                );
            }
        }
    }
    if let Some(a) = c.tun_address {
        let _ = writeln!(out, "  tunnel interface address {a}");
    }
    if let Some(f) = &c.failover {
        let _ = writeln!(
            out,
            "  failover: primary (ExpressRoute) interface {}, probe {} -> {} every {} ms (timeout {} ms), down after {} misses, up after {} answers + {} s hold-down",
            f.primary_interface,
            f.probe_source
                .map_or_else(|| "(interface address)".to_string(), |a| a.to_string()),
            f.probe_target,
            f.interval_ms,
            f.timeout_ms,
            f.down_after,
            f.up_after,
            f.hold_down_seconds
        );
        let _ = writeln!(
            out,
            "    tunnel routes float at metric {} (must be worse than the ExpressRoute route), override at metric {} while the primary is dead; detection within {} ms",
            f.backup_metric,
            f.override_metric,
            f.monitor().detection_time().as_millis()
        );
    }
    if let Some(g) = &c.group {
        let _ = writeln!(
            out,
            "  active-active `{}`: tunnel {} of 2, routes {}",
            g.name,
            g.member + 1,
            match g.multipath {
                crate::config::Multipath::Ecmp => "shared by both tunnels while both are up (ECMP)",
                crate::config::Multipath::Backup if g.member == 0 => "here while this tunnel is up",
                crate::config::Multipath::Backup =>
                    "here only while the first tunnel is down (backup)",
            }
        );
    }
    if let Some(b) = &c.bgp {
        let _ = writeln!(
            out,
            "  bgp: on-prem ASN {} (accepted by Azure), Azure ASN {}{}",
            b.onprem_asn,
            b.azure_asn,
            b.azure_peer.map_or_else(String::new, |p| format!(
                ", Azure peer {p} through the tunnel{}",
                c.tun_address
                    .map_or_else(String::new, |t| format!(" from {t}"))
            ))
        );
        let _ = writeln!(
            out,
            "    BIRD protocol of this tunnel {}; a drain disables {}{}",
            b.bird_protocol,
            b.drain_protocols.join(", "),
            b.bird_socket.as_ref().map_or_else(
                || " (no bird_socket: a drain cannot withdraw BGP routes, only delete the tunnel)"
                    .to_string(),
                |s| format!(" over {}", s.display())
            )
        );
    }
    let _ = writeln!(
        out,
        "  lifetimes: IKE {} s (rekey at {}), Child {} s (rekey at {}) / {} KB (rekey at {}); DPD delay {} s timeout {} s action {:?}; retry {}-{} s forever",
        c.lifetimes.ike_seconds,
        c.lifetimes
            .ike_rekey_seconds
            .map_or("90 %".to_string(), |v| format!("{v} s")),
        c.lifetimes.child_seconds,
        c.lifetimes
            .child_rekey_seconds
            .map_or("90 %".to_string(), |v| format!("{v} s")),
        c.lifetimes.child_kilobytes,
        c.lifetimes
            .child_rekey_kilobytes
            .map_or("90 %".to_string(), |v| format!("{v} KB")),
        c.dpd.delay_seconds,
        c.dpd.timeout_seconds,
        c.dpd.action,
        c.retry.initial_seconds,
        c.retry.max_seconds
    );
    if c.azure_custom_policy {
        let _ = writeln!(
            out,
            "  proposals from an Azure custom policy (set the same policy on the Azure connection)"
        );
    }
    proposals(out, "IKE", &c.ike_proposals);
    proposals(out, "ESP", &c.esp_proposals);

    let ike_ok = c.ike_proposals.iter().any(Proposal::azure_default_accepts);
    let esp_ok = c.esp_proposals.iter().any(Proposal::azure_default_accepts);
    if ike_ok && esp_ok {
        let _ = writeln!(out, "  Azure default policy: compatible");
    } else {
        let _ = writeln!(
            out,
            "  !!! AZURE DEFAULT POLICY: NOT COMPATIBLE ({}{}): the Azure connection needs a matching custom IPsec/IKE policy",
            if ike_ok {
                ""
            } else {
                "no IKE proposal accepted"
            },
            if esp_ok {
                ""
            } else if ike_ok {
                "no ESP proposal accepted"
            } else {
                ", no ESP proposal accepted"
            }
        );
    }
    if c.behaviour.responds()
        && !c.azure_custom_policy
        && !c.esp_proposals.iter().any(props::accepts_azure_initiated)
    {
        let _ = writeln!(
            out,
            "  !!! when Azure initiates (default policy, PFS none) no ESP proposal here matches: set behaviour = \"initiate\" or add a PFS-less proposal"
        );
    }
}

fn proposals(out: &mut String, what: &str, list: &[Proposal]) {
    let _ = writeln!(out, "  {what} proposals ({}):", list.len());
    for (i, p) in list.iter().enumerate() {
        let mut flags: Vec<String> = Vec::new();
        if !p.azure_default_accepts() {
            flags.push("NOT accepted by Azure's default policy".into());
        }
        for l in p.legacy_warnings() {
            flags.push(format!("LEGACY: {l}"));
        }
        let missing = p.unsupported_transforms();
        if !missing.is_empty() {
            flags.push(format!(
                "not implemented in this build, not offered: {}",
                missing.join(", ")
            ));
        }
        let _ = writeln!(
            out,
            "    {:>2}. strongSwan {:<32} Azure {:<28}{}",
            i + 1,
            p.to_strongswan(),
            props::azure_names(p),
            if flags.is_empty() {
                String::new()
            } else {
                format!(" !!! {}", flags.join("; "))
            }
        );
    }
}
