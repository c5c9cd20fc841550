//! The `hybridgw` command line: run, check-config, status, up/down/rekey, lab (operations; IKEv2 per
//! RFC 7296 is driven by the daemon behind `run`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hybridgw::control::{self, Request};
use hybridgw::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "hybridgw",
    version,
    about = "Site-to-site IPsec VPN appliance for Azure VPN gateways"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Path of the control socket.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon with the given configuration.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file without touching the network and print its proposals.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show connections, SAs and counters of the running daemon.
    Status {
        /// Print JSON (stable field names, see appliance-config/README.md).
        #[arg(long)]
        json: bool,
    },
    /// Bring a connection up (initiate now); after a drain, enable its BIRD protocols again. The
    /// name of an active-active group brings up every member.
    Up { name: String },
    /// Take a connection down (delete its SAs, stop retrying until `up`).
    Down { name: String },
    /// Planned maintenance: withdraw a connection's (or an active-active group's) routes, wait
    /// until nothing arrives any more (or the timeout), then DELETE; waits for the outcome and
    /// exits non-zero if the drain timed out with traffic still arriving.
    Drain {
        name: String,
        /// Longest wait for the tunnel to go quiet (default: `[drain] timeout_seconds`, 30).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// Return once the drain has started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Rekey a connection's Child SAs now (or only the one with `--child SPI`).
    Rekey {
        name: String,
        /// The inbound SPI (hex, as `status` shows it) of the one Child SA to rekey.
        #[arg(long, value_name = "SPI")]
        child: Option<String>,
    },
    /// Stateful HA ([ha]): set this appliance's role. keepalived's notify scripts call
    /// `hybridgw ha master|backup|fault`; `master` continues the SAs replicated from the
    /// partner (the peer sees no new IKE SA), `backup` and `fault` leave them to the partner.
    Ha {
        /// `master`, `backup` or `fault`.
        role: String,
    },
    /// Azure in the loop: import a connection from Azure's JSON, check both halves agree,
    /// print the Azure side of a configuration.
    Azure {
        #[command(subcommand)]
        verb: hybridgw::azure::Verb,
    },
    /// Build the namespace lab, run two gateways, prove traffic crosses, tear it all down.
    Lab {
        #[command(subcommand)]
        which: Option<LabKind>,
    },
}

#[derive(Debug, Subcommand)]
enum LabKind {
    /// ExpressRoute with VPN failover: the reference test (static mode: floating routes and path
    /// monitors on both gateways; `--bgp`: BIRD with BFD on the circuit and BGP over the tunnel).
    Failover {
        /// BGP mode: BIRD on the on-prem router, the ExpressRoute edge and the Azure gateway
        /// (AS65515), eBGP over the circuit with BFD and over the tunnel.
        #[arg(long)]
        bgp: bool,
    },
    /// Azure's dual redundancy: two appliances, an active-active Azure gateway, four tunnels
    /// with BGP; kills an Azure instance, kills an appliance, cuts an appliance's underlay and
    /// drains an appliance, and tables what each cost.
    Ha {
        /// Azure's DPD timeout in seconds (Azure's default 45; its minimum, 9, is quicker).
        #[arg(long, value_name = "SECONDS", default_value_t = 45)]
        azure_dpd_timeout: u64,
        /// Stateful HA instead (issue #14): two appliances behind one keepalived VIP, the
        /// backup continuing the master's SAs; kills the master, restores it, and tables what
        /// each cost (the peer must see no new IKE SA).
        #[arg(long)]
        stateful: bool,
        /// With `--stateful`: the peer standing in for Azure.
        #[arg(long, value_enum, default_value = "strongswan", requires = "stateful")]
        peer: hybridgw::lab_stateful::Peer,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let socket = control::socket_path(cli.socket);
    match cli.command {
        Command::Run { config } => hybridgw::daemon::main(&config, &socket, cli.log_format),
        Command::CheckConfig { file } => match hybridgw::config::load_checked(&file) {
            Ok(cfg) => {
                print!("{}", hybridgw::check::report(&cfg));
                // What the IKE engine will really offer (it drops what this build cannot execute).
                match hybridgw::engine::Engine::new(&cfg) {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {}: {e}", file.display());
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status { json } => match control::call_blocking(&socket, &Request::Status) {
            Ok(r) if r.ok => match r.status {
                Some(st) if json => {
                    println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Some(st) => {
                    print!("{}", control::render(&st));
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("error: the daemon sent no status");
                    ExitCode::FAILURE
                }
            },
            Ok(r) => fail(r.message),
            Err(e) => fail(Some(e)),
        },
        Command::Up { name } => simple(&socket, Request::Up { name }),
        Command::Down { name } => simple(&socket, Request::Down { name }),
        Command::Rekey { name, child } => simple(&socket, Request::Rekey { name, child }),
        Command::Ha { role } => simple(&socket, Request::Ha { role }),
        Command::Drain {
            name,
            timeout,
            no_wait,
        } => drain(&socket, name, timeout, no_wait),
        Command::Azure { verb } => hybridgw::azure::main(verb),
        Command::Lab { which: None } => hybridgw::lab::main(cli.log_format),
        Command::Lab {
            which: Some(LabKind::Failover { bgp }),
        } => hybridgw::lab_failover::main(cli.log_format, bgp),
        Command::Lab {
            which:
                Some(LabKind::Ha {
                    stateful: true,
                    peer,
                    ..
                }),
        } => {
            let opts = hybridgw::lab_stateful::Options { peer };
            hybridgw::lab_stateful::main(cli.log_format, opts)
        }
        Command::Lab {
            which: Some(LabKind::Ha {
                azure_dpd_timeout, ..
            }),
        } => hybridgw::lab_ha::main(
            cli.log_format,
            hybridgw::lab_ha::Options { azure_dpd_timeout },
        ),
    }
}

fn simple(socket: &std::path::Path, req: Request) -> ExitCode {
    match control::call_blocking(socket, &req) {
        Ok(r) if r.ok => {
            if let Some(m) = r.message {
                println!("{m}");
            }
            ExitCode::SUCCESS
        }
        Ok(r) => fail(r.message),
        Err(e) => fail(Some(e)),
    }
}

/// `hybridgw drain`: starts the drain, then follows `status` until every member is drained.
fn drain(socket: &std::path::Path, name: String, timeout: Option<u64>, no_wait: bool) -> ExitCode {
    let req = Request::Drain {
        name: name.clone(),
        timeout_seconds: timeout,
    };
    match control::call_blocking(socket, &req) {
        Ok(r) if r.ok => println!("{}", r.message.unwrap_or_default()),
        Ok(r) => return fail(r.message),
        Err(e) => return fail(Some(e)),
    }
    if no_wait {
        return ExitCode::SUCCESS;
    }
    // The daemon bounds the drain; this bound only covers a daemon that stops answering.
    let until = std::time::Instant::now()
        + std::time::Duration::from_secs(timeout.unwrap_or(3600).min(3600) + 10);
    while std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let st = match control::call_blocking(socket, &Request::Status) {
            Ok(r) if r.ok => r.status,
            Ok(r) => return fail(r.message),
            Err(e) => return fail(Some(e)),
        };
        let Some(st) = st else { continue };
        let members: Vec<_> = st
            .connections
            .iter()
            .filter(|c| c.name == name || c.active_active.as_ref().is_some_and(|a| a.group == name))
            .collect();
        if members.is_empty() {
            return fail(Some(format!("no connection named `{name}`")));
        }
        let done = members
            .iter()
            .all(|c| c.drain.as_deref().is_some_and(|d| d.starts_with("drained")));
        if done {
            let mut ok = true;
            for c in &members {
                let d = c.drain.as_deref().unwrap_or("");
                ok &= !d.contains("timed out");
                println!("{}: {d}", c.name);
            }
            return if ok {
                ExitCode::SUCCESS
            } else {
                fail(Some(
                    "the drain timed out: traffic was still arriving when the tunnel was deleted"
                        .into(),
                ))
            };
        }
    }
    fail(Some("the daemon did not finish the drain in time".into()))
}

fn fail(msg: Option<String>) -> ExitCode {
    eprintln!("error: {}", msg.unwrap_or_else(|| "failed".into()));
    ExitCode::FAILURE
}
