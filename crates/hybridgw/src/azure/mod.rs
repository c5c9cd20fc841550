//! Azure in the loop (issue #17): `hybridgw azure import` turns Azure's own resource bodies
//! (`az network vpn-connection show`, `vnet-gateway show`, `local-gateway show`, `vnet show`,
//! `public-ip show`; the ARM shapes of Microsoft.Network/connections, virtualNetworkGateways,
//! localNetworkGateways) into a hybridgw configuration; `azure check` compares both halves;
//! `azure template` prints the Azure side of a configuration (`az`, ARM, Bicep). The IKEv2
//! (RFC 7296) parameters are those of Azure's IPsec/IKE policy; every input byte is hostile.

pub mod check;
pub mod import;
pub mod json;
pub mod model;
pub mod template;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use zeroize::Zeroizing;

use crate::config::{self, Config, Prefix};
pub use json::JsonError;
pub use model::{AzureHalf, Input};
pub use template::Format;

/// The `hybridgw azure` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Verb {
    /// Write a hybridgw configuration from Azure's JSON (the output of `az network
    /// vpn-connection show`, `vnet-gateway show`, `local-gateway show`, and optionally `vnet
    /// show` and `public-ip show`; several files, or arrays of resources). Exits 2 when values
    /// are still to be filled in, 1 on an error.
    Import {
        /// Write the configuration here (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write the connection's sharedKey to this new file (mode 0600) and point psk_file at
        /// it; without it the key is never written and the configuration uses psk_env.
        #[arg(long, value_name = "PATH")]
        psk_file: Option<PathBuf>,
        /// The Azure JSON files.
        #[arg(value_name = "AZURE.json", required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Compare a configuration with Azure's JSON and print every mismatch with what to change
    /// on which side; exits 1 on a mismatch that breaks or destabilises the tunnel.
    Check {
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
        #[arg(value_name = "AZURE.json", required = true)]
        inputs: Vec<PathBuf>,
        /// The configured connection to compare (default: the one matching each Azure
        /// connection).
        #[arg(long, value_name = "NAME")]
        connection: Option<String>,
        /// A prefix advertised over ExpressRoute (repeatable): the VPN must not be more
        /// specific (with [connection.failover], local_prefixes and the VNet count too).
        #[arg(long = "expressroute-prefix", value_name = "PREFIX")]
        expressroute: Vec<String>,
    },
    /// Print what Azure needs to match a configuration: `az` commands, an ARM template or a
    /// Bicep file for the local network gateway and the connection.
    Template {
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "az")]
        format: Format,
        /// The configured connection (default: every one; ARM, Bicep and JSON need one).
        #[arg(long, value_name = "NAME")]
        connection: Option<String>,
    },
}

/// Runs a verb.
pub fn main(verb: Verb) -> ExitCode {
    let r = match verb {
        Verb::Import {
            out,
            psk_file,
            inputs,
        } => import_main(&inputs, out.as_deref(), psk_file.as_deref()),
        Verb::Check {
            config,
            inputs,
            connection,
            expressroute,
        } => check_main(&config, &inputs, connection.as_deref(), &expressroute),
        Verb::Template {
            config,
            format,
            connection,
        } => template_main(&config, format, connection.as_deref()),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads and parses the input files.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Input>, JsonError> {
    paths
        .iter()
        .map(|p| {
            let name = p.display().to_string();
            let bytes = json::read_file(p)?;
            Ok(Input {
                value: json::parse_text(&name, &bytes)?,
                name,
            })
        })
        .collect()
}

/// A placeholder PSK for loading a configuration whose PSK is not needed (check, template).
const NOT_NEEDED: &str = "placeholder-psk-not-used-by-hybridgw-azure";

/// Loads a configuration without needing its PSK environment variable.
pub fn load_config(path: &Path) -> Result<Config, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?,
    );
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .or_else(|| Some(NOT_NEEDED.to_string()))
    };
    let cfg = config::parse(path, &text, &env).map_err(|e| e.to_string())?;
    config::cross_check(&cfg, &text).map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// The configuration text for the inputs, validated as `check-config` would (apart from the
/// PSK source). `Ok` also when values are still to be filled in (`incomplete`).
pub fn import_text(
    inputs: &[Input],
    psk: &import::PskRef,
) -> Result<(import::Imported, Vec<AzureHalf>), String> {
    let mut notes = Vec::new();
    let halves = model::halves(inputs, &mut notes).map_err(|e| e.to_string())?;
    let sources: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    let mut imported = import::render(&halves, psk, &sources)?;
    imported.notes.splice(0..0, notes);
    if imported.incomplete.is_empty() {
        // The same text with psk_env, so the check needs no PSK.
        let probe = import::render(&halves, &import::PskRef::Env, &sources)?;
        let path = Path::new("(generated)");
        let env = |_: &str| Some(NOT_NEEDED.to_string());
        let cfg = config::parse(path, &probe.toml, &env).map_err(|e| {
            format!("the configuration made from the Azure JSON does not pass check-config: {e}")
        })?;
        config::cross_check(&cfg, &probe.toml).map_err(|e| {
            format!("the configuration made from the Azure JSON does not pass check-config: {e}")
        })?;
    }
    Ok((imported, halves))
}

/// Writes a new file readable by its owner only; refuses to replace an existing one.
fn write_secret(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            format!(
                "{}: cannot create the PSK file: {e} (an existing file is never replaced: remove it or choose another path)",
                path.display()
            )
        })?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: cannot write the PSK file: {e}", path.display()))
}

fn import_main(
    inputs: &[PathBuf],
    out: Option<&Path>,
    psk_file: Option<&Path>,
) -> Result<ExitCode, String> {
    let inputs = read_inputs(inputs).map_err(|e| e.to_string())?;
    let abs = match psk_file {
        None => None,
        Some(p) => Some(std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?),
    };
    let psk = match &abs {
        Some(p) => import::PskRef::File(p),
        None => import::PskRef::Env,
    };
    let (imported, halves) = import_text(&inputs, &psk)?;
    let keys: Vec<&Zeroizing<String>> = halves
        .iter()
        .filter_map(|h| h.shared_key.as_ref())
        .collect();
    match &abs {
        Some(p) if !keys.is_empty() => {
            if halves.len() > 1 {
                return Err("--psk-file holds one key: import one connection at a time".into());
            }
            if keys[0].is_empty() {
                return Err("the connection's sharedKey is empty: nothing to write".into());
            }
            write_secret(p, keys[0].as_bytes())?;
            eprintln!(
                "wrote the connection's sharedKey to {} (mode 0600)",
                p.display()
            );
        }
        Some(p) => eprintln!(
            "note: the input carries no sharedKey: put the PSK into {} (mode 0600) yourself (`az network vpn-connection shared-key show` prints it)",
            p.display()
        ),
        None if !keys.is_empty() => eprintln!(
            "note: the input carries the connection's sharedKey: it was NOT written anywhere; pass --psk-file PATH to store it in a new 0600 file, or export it in the variable psk_env names"
        ),
        None => {}
    }
    match out {
        Some(o) => std::fs::write(o, imported.toml.as_bytes())
            .map_err(|e| format!("{}: cannot write: {e}", o.display()))?,
        None => print!("{}", imported.toml),
    }
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    if imported.incomplete.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for i in &imported.incomplete {
            eprintln!("to fill in: {i}");
        }
        eprintln!(
            "the configuration is incomplete ({} value(s) marked FILL-IN): it does not pass check-config yet",
            imported.incomplete.len()
        );
        Ok(ExitCode::from(2))
    }
}

/// Pairs configured connections with Azure halves (by name, then by addresses).
fn pair<'a, 'b>(
    logical: &'b [template::Logical<'a>],
    halves: &'b [AzureHalf],
) -> Vec<(&'b template::Logical<'a>, &'b AzureHalf)> {
    if logical.len() == 1 && halves.len() == 1 {
        return vec![(&logical[0], &halves[0])];
    }
    let mut out = Vec::new();
    for h in halves {
        let mut used = Vec::new();
        let name = import::conn_name(&h.name, &mut used);
        let by_name = logical.iter().find(|l| l.name == name || l.name == h.name);
        let by_addr = || {
            logical.iter().find(|l| {
                h.local.address == Some(l.members[0].local_address)
                    && h.gateway
                        .instances
                        .iter()
                        .any(|i| i.public_ip == Some(l.members[0].remote_address))
            })
        };
        if let Some(l) = by_name.or_else(by_addr) {
            out.push((l, h));
        }
    }
    out
}

fn check_main(
    config_path: &Path,
    inputs: &[PathBuf],
    connection: Option<&str>,
    expressroute: &[String],
) -> Result<ExitCode, String> {
    let cfg = load_config(config_path)?;
    let mut er: Vec<Prefix> = Vec::new();
    for e in expressroute {
        er.push(
            e.trim()
                .parse()
                .map_err(|m: String| format!("--expressroute-prefix: {m}"))?,
        );
    }
    let inputs = read_inputs(inputs).map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    let halves = model::halves(&inputs, &mut notes).map_err(|e| e.to_string())?;
    let logical = selected(&cfg, config_path, connection)?;
    let pairs = pair(&logical, &halves);
    for n in &notes {
        eprintln!("note: {n}");
    }
    if pairs.is_empty() {
        return Err(format!(
            "no configured connection matches an Azure connection (by name or by addresses): name one with --connection (configured: {}; Azure: {})",
            logical
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            halves
                .iter()
                .map(|h| model::short(&h.name))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut out = String::new();
    let (mut errors, mut warnings) = (0, 0);
    for (l, h) in &pairs {
        let f = check::compare(l, h, &er);
        warnings += f
            .iter()
            .filter(|x| x.severity == check::Severity::Warning)
            .count();
        errors += check::render(&mut out, l, h, &f);
    }
    print!("{out}");
    println!(
        "azure check: {errors} mismatch(es) that break or destabilise the tunnel, {warnings} warning(s)"
    );
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn template_main(
    config_path: &Path,
    format: Format,
    connection: Option<&str>,
) -> Result<ExitCode, String> {
    let cfg = load_config(config_path)?;
    let logical = selected(&cfg, config_path, connection)?;
    if logical.len() > 1 && format != Format::Az {
        return Err(format!(
            "{} connections: name one with --connection for ARM, Bicep or JSON",
            logical.len()
        ));
    }
    let mut out = String::new();
    for l in &logical {
        let h = template::expected(l)?;
        match format {
            Format::Az => {
                out.push_str(&template::az(&h, l.members[0]));
                out.push('\n');
            }
            Format::Arm => {
                out.push_str(
                    &serde_json::to_string_pretty(&template::arm(&h)).map_err(|e| e.to_string())?,
                );
                out.push('\n');
            }
            Format::Bicep => out.push_str(&template::bicep(&h)),
            Format::Json => {
                out.push_str(
                    &serde_json::to_string_pretty(&template::resources(&h))
                        .map_err(|e| e.to_string())?,
                );
                out.push('\n');
            }
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The configuration's logical connections, or only the one named `connection`.
fn selected<'a>(
    cfg: &'a Config,
    config_path: &Path,
    connection: Option<&str>,
) -> Result<Vec<template::Logical<'a>>, String> {
    let mut logical = template::logical(cfg);
    if let Some(n) = connection {
        logical.retain(|l| l.name == n);
        if logical.is_empty() {
            return Err(format!(
                "{}: no connection named `{n}`",
                config_path.display()
            ));
        }
    }
    Ok(logical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SelectorPair;

    const AA: &str = include_str!("../../../../tests/azure/active-active-bgp.json");
    const PB: &str = include_str!("../../../../tests/azure/policy-based.json");
    const DEF: &str = include_str!("../../../../tests/azure/default-az.json");

    fn input(text: &str) -> Vec<Input> {
        vec![Input {
            name: "t.json".into(),
            value: serde_json::from_str(text).expect("test input is JSON"),
        }]
    }

    #[test]
    fn reads_every_shape_into_the_same_half() {
        let mut notes = Vec::new();
        let h = model::halves(&input(AA), &mut notes).expect("aa");
        assert_eq!(h.len(), 1);
        let t = h[0].tunnels();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].public_ip, Some("198.51.100.41".parse().expect("ip")));
        assert_eq!(t[1].bgp_peer, Some("169.254.22.2".parse().expect("ip")));
        assert_eq!(h[0].local.bgp.map(|b| b.0), Some(65010));
        // az's flattened output (no `properties`) and the public IP matched by id.
        let d = model::halves(&input(DEF), &mut notes).expect("default");
        assert!(d[0].policy.is_none());
        assert_eq!(
            d[0].gateway.instances[0].public_ip,
            Some("198.51.100.10".parse().expect("ip"))
        );
        assert_eq!(d[0].vnet_prefixes.as_ref().map(Vec::len), Some(2));
        assert!(d[0].shared_key.is_some());
        // A list result; Azure's local side of a traffic selector is the VNet.
        let p = model::halves(&input(PB), &mut notes).expect("pb");
        assert!(p[0].policy_based);
        assert_eq!(
            p[0].traffic_selectors[0],
            SelectorPair {
                local: "198.18.0.0/24".parse().expect("p"),
                remote: "198.18.64.0/20".parse().expect("p"),
            }
        );
    }

    #[test]
    fn names_keys_and_toml_strings_are_safe() {
        let mut used = Vec::new();
        assert_eq!(import::conn_name("a b/c\"d", &mut used), "a-b-c-d");
        assert_eq!(import::conn_name("a b/c\"d", &mut used), "a-b-c-d-2");
        assert_eq!(import::conn_name("\u{1F600}", &mut used), "azure");
        assert_eq!(import::conn_name(&"x".repeat(100), &mut used).len(), 24);
        assert_eq!(import::q("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000Ad\"");
        assert_eq!(
            import::psk_env_name("weu-onprem"),
            "HYBRIDGW_PSK_WEU_ONPREM"
        );
        assert_eq!(import::dpd_delay_for(45), 30);
        assert_eq!(import::dpd_delay_for(30), 10);
        assert_eq!(import::dpd_delay_for(9), 3);
        let a: Prefix = "198.18.0.0/16".parse().expect("p");
        let b: Prefix = "198.18.4.0/24".parse().expect("p");
        assert!(check::covers(&a, &b) && !check::covers(&b, &a) && check::covers(&a, &a));
    }

    #[test]
    fn the_shared_key_never_reaches_the_configuration() {
        let (imp, halves) = import_text(&input(DEF), &import::PskRef::Env).expect("import");
        assert!(halves[0].shared_key.is_some());
        assert!(!imp.toml.contains("example-shared-key"));
        assert!(imp.toml.contains("psk_env = \"HYBRIDGW_PSK_WEU_ONPREM\""));
        assert!(imp.toml.contains("ike_proposals = \"azure-default\""));
        assert!(imp.incomplete.is_empty(), "{:?}", imp.incomplete);
    }

    /// A small deterministic generator (xorshift), for the mutation test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn mutate(v: &mut serde_json::Value, rng: &mut Rng) {
        use serde_json::{Value, json};
        let replacements = [
            json!(null),
            json!(true),
            json!(-1),
            json!(4294967296u64),
            json!(1.5),
            json!(""),
            json!("169.254.30.1"),
            json!("198.18.0.1/24"),
            json!("::/0"),
            json!("x".repeat(3000)),
            json!([]),
            json!({}),
            json!([1, "a", null]),
            json!("IKEv1"),
            json!("GCMAES256"),
        ];
        match v {
            Value::Object(o) if !o.is_empty() => {
                let keys: Vec<String> = o.keys().cloned().collect();
                let k = &keys[rng.below(keys.len())];
                match rng.below(4) {
                    0 => {
                        o.remove(k);
                    }
                    1 => {
                        o.insert(
                            k.clone(),
                            replacements[rng.below(replacements.len())].clone(),
                        );
                    }
                    _ => {
                        if let Some(x) = o.get_mut(k) {
                            mutate(x, rng);
                        }
                    }
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.below(a.len());
                match rng.below(4) {
                    0 => {
                        a.remove(i);
                    }
                    1 => a[i] = replacements[rng.below(replacements.len())].clone(),
                    2 => {
                        let x = a[i].clone();
                        a.push(x);
                    }
                    _ => mutate(&mut a[i], rng),
                }
            }
            other => *other = replacements[rng.below(replacements.len())].clone(),
        }
    }

    #[test]
    fn mutated_and_truncated_inputs_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let cfg_text = include_str!("../../../../tests/azure/active-active-bgp.toml");
        let cfg = config::parse(Path::new("aa.toml"), cfg_text, &|_| Some(NOT_NEEDED.into()))
            .expect("test config");
        let logical = template::logical(&cfg);
        let mut outcomes = [0usize; 2];
        for base in [AA, PB, DEF] {
            let v: serde_json::Value = serde_json::from_str(base).expect("json");
            for _ in 0..700 {
                let mut m = v.clone();
                for _ in 0..1 + rng.below(4) {
                    mutate(&mut m, &mut rng);
                }
                let inputs = vec![Input {
                    name: "m.json".into(),
                    value: m.clone(),
                }];
                let ok = import_text(&inputs, &import::PskRef::Env).is_ok();
                outcomes[usize::from(ok)] += 1;
                let mut notes = Vec::new();
                if let Ok(halves) = model::halves(&inputs, &mut notes) {
                    for h in &halves {
                        let _ = check::compare(&logical[0], h, &[]);
                    }
                }
                // Raw bytes: truncated and flipped.
                let mut bytes = serde_json::to_vec(&m).expect("to_vec");
                let cut = rng.below(bytes.len());
                bytes.truncate(cut.max(1));
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8);
                }
                if let Ok(value) = json::parse_text("b.json", &bytes) {
                    let _ = import_text(
                        &[Input {
                            name: "b.json".into(),
                            value,
                        }],
                        &import::PskRef::Env,
                    );
                }
            }
        }
        // Both outcomes happen: the mutations reach past the first check.
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }

    #[test]
    fn template_of_each_kind_of_connection_reads_back() {
        let cfg_text = include_str!("../../../../tests/azure/active-active-bgp.toml");
        let cfg = config::parse(Path::new("aa.toml"), cfg_text, &|_| Some(NOT_NEEDED.into()))
            .expect("test config");
        let l = &template::logical(&cfg)[0];
        assert_eq!(l.members.len(), 2);
        let h = template::expected(l).expect("expected");
        let inputs = vec![Input {
            name: "t.json".into(),
            value: template::resources(&h),
        }];
        let mut notes = Vec::new();
        let back = model::halves(&inputs, &mut notes).expect("read back");
        assert!(check::compare(l, &back[0], &[]).is_empty());
        let arm = template::arm(&h);
        assert_eq!(
            arm["resources"][0]["type"],
            "Microsoft.Network/localNetworkGateways"
        );
        assert!(template::bicep(&h).contains("customBgpIpAddress: '169.254.22.2'"));
    }
}
