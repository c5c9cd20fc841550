//! Named Linux network namespaces (`ip-netns(8)`, `setns(2)` with `CLONE_NEWNET`) that own the
//! processes started in them and are deleted on drop, also when the owner panics.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Weak};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{DEFAULT_GRACE, Proc, Shared};
use crate::{Error, Result};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace created by this process: loopback up, deleted on drop after the processes
/// started in it have been stopped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    procs: Mutex<Vec<Weak<Shared>>>,
}

fn display_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion; stdout on success, otherwise an error with its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    check_output(cmd, out)
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null());
    cmd.output().map_err(|e| Error::Spawn {
        cmd: display_cmd(cmd),
        source: e,
    })
}

fn check_output(cmd: &Command, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            cmd: display_cmd(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }
}

/// Runs `cmd` with `input` on its stdin; stdout on success, otherwise an error with its stderr.
pub(crate) fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::Spawn {
        cmd: display_cmd(cmd),
        source: e,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| Error::io(format!("writing stdin of `{}`", display_cmd(cmd)), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for `{}`", display_cmd(cmd)), e))?;
    check_output(cmd, out)
}

fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 48
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: prefix.to_string(),
            reason: "namespace prefix must be 1-32 of [A-Za-z0-9_-]",
        })
    }
}

fn ns_pids(name: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    // Compare each process's network namespace with the namespace file ourselves: `ip netns
    // pids` gives up (and lists nothing) when a process vanishes during its scan of /proc, which
    // happens all the time while other tests start and stop processes.
    let Ok(ns) = std::fs::metadata(Path::new(NETNS_RUN_DIR).join(name)) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != me && p > 1)
        .filter(|p| {
            std::fs::metadata(format!("/proc/{p}/ns/net"))
                .is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
        })
        .filter_map(|p| i32::try_from(p).ok())
        .collect()
}

/// Whether process `pid` has exited (gone, or a zombie waiting for its parent). A process leaves
/// `ip netns pids` when it drops its namespace, a moment before it has really exited.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

/// Waits (bounded) until every one of `pids` has exited.
fn wait_exited(pids: &[i32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pids.iter().all(|&p| exited(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

/// Stops every process still inside namespace `name` (SIGTERM, a bounded wait, SIGKILL) and
/// returns once they have exited (bounded).
fn kill_remaining(name: &str) {
    let pids = ns_pids(name);
    if pids.is_empty() {
        return;
    }
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    if wait_exited(&pids, Duration::from_secs(2)) && ns_pids(name).is_empty() {
        return;
    }
    let stubborn = ns_pids(name);
    for &p in pids.iter().chain(&stubborn) {
        if !exited(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    let all: Vec<i32> = pids.iter().chain(&stubborn).copied().collect();
    wait_exited(&all, Duration::from_secs(1));
}

fn delete_ns(name: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..20 {
        match run(Command::new("ip").args(["netns", "del", name])) {
            Ok(_) => return Ok(()),
            Err(e) => {
                if !Path::new(NETNS_RUN_DIR).join(name).exists() {
                    return Ok(());
                }
                last = Some(e);
                sleep(Duration::from_millis(50));
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Timeout {
        after: Duration::from_secs(1),
        what: format!("deleting netns {name}"),
    }))
}

/// Stops every process inside namespace `name` and deletes it (for namespaces kept with
/// [`Netns::persist`]).
pub fn delete_named(name: &str) -> Result<()> {
    check_prefix(name)?;
    kill_remaining(name);
    delete_ns(name)
}

/// Deletes namespaces named `PREFIX-PID-N` (as [`Netns::new`] names them) whose creating process
/// `PID` no longer exists, after stopping what still runs in them. Returns the deleted names.
/// Useful after a test run was killed with SIGKILL (no destructor ran).
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    check_prefix(prefix)?;
    let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {NETNS_RUN_DIR}"), e)),
    };
    let mut deleted = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let mut parts = rest.split('-');
        let (Some(pid), Some(n), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<i32>(), n.parse::<u32>()) else {
            continue;
        };
        if pid <= 1 || kill(Pid::from_raw(pid), None) != Err(nix::errno::Errno::ESRCH) {
            continue;
        }
        kill_remaining(&name);
        delete_ns(&name)?;
        deleted.push(name);
    }
    Ok(deleted)
}

impl Netns {
    /// Creates a namespace named `PREFIX-PID-N` (unique in this process, and across processes by the
    /// PID) with its loopback up.
    pub fn new(prefix: &str) -> Result<Netns> {
        check_prefix(prefix)?;
        let pid = std::process::id();
        for _ in 0..1000 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{prefix}-{pid}-{n}");
            if Path::new(NETNS_RUN_DIR).join(&name).exists() {
                continue; // a leftover of an earlier process with the same PID
            }
            run(Command::new("ip").args(["netns", "add", &name]))?;
            let ns = Netns {
                name,
                procs: Mutex::new(Vec::new()),
            };
            ns.exec(["ip", "link", "set", "lo", "up"])?;
            return Ok(ns);
        }
        Err(Error::InvalidName {
            name: prefix.to_string(),
            reason: "no free namespace name",
        })
    }

    /// Takes ownership of an existing namespace `name` (e.g. one left by [`Netns::persist`]): the
    /// handle deletes it on drop like one made by [`Netns::new`].
    pub fn adopt(name: &str) -> Result<Netns> {
        check_prefix(name)?;
        if !Path::new(NETNS_RUN_DIR).join(name).exists() {
            return Err(Error::InvalidName {
                name: name.to_string(),
                reason: "no such network namespace",
            });
        }
        Ok(Netns {
            name: name.to_string(),
            procs: Mutex::new(Vec::new()),
        })
    }

    /// Gives up ownership: the namespace (and processes started in it whose [`Proc`] guards are
    /// forgotten) stays after this handle is gone; returns its name. Remove it later with
    /// [`Netns::adopt`] or [`delete_named`].
    pub fn persist(self) -> String {
        let name = self.name.clone();
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        std::mem::forget(self);
        name
    }

    /// The namespace's name (for `ip netns exec NAME` / `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec NAME program`); add
    /// arguments, environment and stdio, then run it with [`Netns::spawn_command`] to get an owned
    /// [`Proc`], or with `output()` for a short command.
    pub fn command<S: AsRef<OsStr>>(&self, program: S) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn argv_command<I, S>(&self, argv: I) -> Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut it = argv.into_iter();
        let prog = it.next().ok_or(Error::InvalidName {
            name: String::new(),
            reason: "empty command line",
        })?;
        let mut c = self.command(prog);
        c.args(it);
        Ok(c)
    }

    /// Runs `argv` (program first) inside the namespace to completion and returns its stdout, or an
    /// error that includes the command, exit status and stderr.
    pub fn exec<I, S>(&self, argv: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&mut self.argv_command(argv)?)
    }

    /// Runs `argv` inside the namespace and returns its raw output without judging the exit status.
    pub fn exec_output<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(&mut self.argv_command(argv)?)
    }

    /// Runs `argv` inside the namespace with `input` on stdin (e.g. `nft -f -`).
    pub fn exec_stdin<I, S>(&self, argv: I, input: &[u8]) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_with_stdin(&mut self.argv_command(argv)?, input)
    }

    /// Starts `argv` (program first) inside the namespace as an owned [`Proc`]; stdin, stdout and
    /// stderr are `/dev/null`.
    pub fn spawn<I, S>(&self, argv: I) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.argv_command(argv)?;
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.spawn_command(c)
    }

    /// Starts `argv` inside the namespace with stdout and stderr appended to `log`.
    pub fn spawn_logged<I, S>(&self, argv: I, log: &Path) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
        let f2 = f
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", log.display()), e))?;
        let mut c = self.argv_command(argv)?;
        c.stdin(Stdio::null()).stdout(f).stderr(f2);
        self.spawn_command(c)
    }

    /// Starts a command built with [`Netns::command`] as an owned [`Proc`]; the namespace stops it
    /// on its own drop if the [`Proc`] is still alive then.
    pub fn spawn_command(&self, mut cmd: Command) -> Result<Proc> {
        let label = display_cmd(&cmd);
        let child = cmd.spawn().map_err(|e| Error::Spawn {
            cmd: label.clone(),
            source: e,
        })?;
        let p = Proc::new(label, child);
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.retain(|w| w.strong_count() > 0);
        procs.push(std::sync::Arc::downgrade(&p.shared));
        Ok(p)
    }

    /// PIDs of all processes whose network namespace is this one (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        ns_pids(&self.name)
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .collect()
    }

    /// Runs `f` on a fresh thread that has joined this namespace with `setns(CLONE_NEWNET)`, so
    /// sockets it creates belong to the namespace; returns `f`'s result (a panic in `f` is
    /// propagated). Fails only if the namespace cannot be entered.
    pub fn try_run_in<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        let file =
            File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let name = &self.name;
        std::thread::scope(|s| {
            let h = s.spawn(move || -> Result<R> {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::sys(format!("setns into {name}"), e))?;
                drop(file);
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`Netns::try_run_in`], but panics if the namespace cannot be entered.
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        match self.try_run_in(f) {
            Ok(r) => r,
            Err(e) => panic!("run_in({}): {e}", self.name),
        }
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.try_run_in(|| UdpSocket::bind(addr))?
            .map_err(|e| Error::io(format!("binding UDP {addr} in {}", self.name), e))
    }

    /// A TCP listener bound to `addr` inside the namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.try_run_in(|| TcpListener::bind(addr))?
            .map_err(|e| Error::io(format!("listening on TCP {addr} in {}", self.name), e))
    }

    /// A TCP connection to `addr` made from inside the namespace.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.try_run_in(|| TcpStream::connect_timeout(&addr, timeout))?
            .map_err(|e| Error::io(format!("connecting to TCP {addr} from {}", self.name), e))
    }

    /// Sets a `net.*` sysctl of this namespace (`key` in dotted or slash form, e.g.
    /// `net.ipv4.ip_forward`); other keys are global and refused.
    pub fn sysctl_set(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        self.try_run_in(|| std::fs::write(&path, value.as_bytes()))?
            .map_err(|e| Error::io(format!("writing {} in {}", path.display(), self.name), e))
    }

    /// Reads a `net.*` sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        self.try_run_in(|| std::fs::read_to_string(&path))?
            .map(|s| s.trim().to_string())
            .map_err(|e| Error::io(format!("reading {} in {}", path.display(), self.name), e))
    }

    /// Turns IPv4 forwarding on or off.
    pub fn set_forwarding(&self, on: bool) -> Result<()> {
        self.sysctl_set("net.ipv4.ip_forward", if on { "1" } else { "0" })
    }

    /// Runs an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<()> {
        self.exec_stdin(["nft", "-f", "-"], ruleset.as_bytes())
            .map(drop)
    }
}

fn sysctl_path(key: &str) -> Result<PathBuf> {
    let bad = |reason| Error::InvalidName {
        name: key.to_string(),
        reason,
    };
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    if !rel.starts_with("net/") {
        return Err(bad("only per-namespace net.* sysctls may be set"));
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
        || !rel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b))
    {
        return Err(bad("malformed sysctl key"));
    }
    Ok(Path::new("/proc/sys").join(rel))
}

impl Drop for Netns {
    fn drop(&mut self) {
        // 1. The processes started through this handle: SIGTERM to all, one shared grace period, SIGKILL.
        let procs: Vec<_> =
            std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .filter_map(|w| w.upgrade())
                .collect();
        for p in &procs {
            let _ = p.signal(Signal::SIGTERM);
        }
        let deadline = Instant::now() + DEFAULT_GRACE;
        for p in &procs {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = p.stop_with(Signal::SIGTERM, left) {
                eprintln!("netns {}: stopping {}: {e}", self.name, p.label);
            }
        }
        // 2. Anything else still inside (children of those, processes started by hand).
        kill_remaining(&self.name);
        // 3. The namespace itself (its veth ends go with it).
        if let Err(e) = delete_ns(&self.name) {
            eprintln!("netns: deleting {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        assert!(sysctl_path("kernel.panic").is_err());
        assert!(sysctl_path("net/../kernel/panic").is_err());
        assert!(sysctl_path("net.ipv4..x").is_err());
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("hgw-test_1").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a b").is_err());
        assert!(check_prefix("../x").is_err());
    }
}
