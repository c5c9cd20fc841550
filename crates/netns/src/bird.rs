//! BIRD 2 daemons inside a namespace, for the labs and the tests: one configuration file, control
//! socket, pid file and log per daemon, all in a directory the caller owns.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Netns, Proc, Result};

/// How long `bird` may take to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `bird -f` (stopped when dropped, like every [`Proc`]).
#[derive(Debug)]
pub struct Bird {
    proc: Proc,
    socket: PathBuf,
    log: PathBuf,
}

impl Bird {
    /// Writes `conf` to `DIR/NAME-bird.conf` (mode 0600) and starts `bird -f` on it in `ns`, with
    /// its control socket at `DIR/NAME-bird.ctl` and its log at `DIR/NAME-bird.log`; waits
    /// (bounded) until the socket exists. A daemon that exits instead is an error with its log.
    pub fn start(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Result<Bird> {
        let file = |ext: &str| dir.join(format!("{name}-bird.{ext}"));
        let (c, socket, pid, log) = (file("conf"), file("ctl"), file("pid"), file("log"));
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&c)?
                .write_all(conf.as_bytes())
        };
        write().map_err(|e| Error::io(format!("writing {}", c.display()), e))?;
        let proc = ns.spawn_logged(
            [
                "bird".as_ref(),
                "-f".as_ref(),
                "-c".as_ref(),
                c.as_os_str(),
                "-s".as_ref(),
                socket.as_os_str(),
                "-P".as_ref(),
                pid.as_os_str(),
            ],
            &log,
        )?;
        let t0 = Instant::now();
        while !socket.exists() {
            if !proc.is_running() || t0.elapsed() > START_TIMEOUT {
                return Err(Error::Timeout {
                    after: t0.elapsed(),
                    what: format!(
                        "bird ({name}) in {} to open its control socket: {}",
                        ns.name(),
                        std::fs::read_to_string(&log).unwrap_or_default().trim()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Bird { proc, socket, log })
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The log file (BIRD's stderr and stdout).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The process and the control socket, for a caller that keeps them apart.
    pub fn into_parts(self) -> (Proc, PathBuf) {
        (self.proc, self.socket)
    }

    /// `birdc -s SOCKET CMD...` in `ns`: its output (birdc exits non-zero for answers such as
    /// "Network not found", so the text is what counts; empty if it could not run).
    pub fn birdc(&self, ns: &Netns, cmd: &str) -> String {
        birdc(ns, &self.socket, cmd)
    }
}

/// `birdc -s SOCKET CMD...` in `ns` (see [`Bird::birdc`]).
pub fn birdc(ns: &Netns, socket: &Path, cmd: &str) -> String {
    let mut argv: Vec<String> = vec!["birdc".into(), "-s".into(), socket.display().to_string()];
    argv.extend(cmd.split_whitespace().map(str::to_string));
    ns.exec_output(argv)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
