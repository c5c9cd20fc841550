//! A client for BIRD 2's control socket (what `birdc` speaks; BIRD's `doc/reply_codes`), so
//! hybridgw can disable, enable and inspect BGP sessions without the `birdc` binary.
//!
//! The protocol: on connect BIRD greets with `0001 BIRD 2.0.12 ready.`; the client sends one
//! command line; the reply is lines `DDDD-text` (more follows), ` text` (more of the previous
//! line's code) and a last line `DDDD text`. Codes 0xxx report an action done, 1xxx are table
//! rows, 2xxx table headings, 8xxx run-time errors and 9xxx parse errors; lines starting with `+`
//! are spontaneous printouts. Every exchange here is bounded in time (one deadline per
//! command) and in size, and a reply BIRD should not send is an error value, never a panic.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest reply [`BirdControl`] reads before giving up (a full `show route all` of a big
/// table is larger: this client is for control commands, not for dumping tables).
pub const DEFAULT_MAX_REPLY: usize = 1 << 20;
/// The longest command line sent (BIRD's own CLI refuses much longer ones with 9000).
pub const MAX_COMMAND: usize = 1024;
/// The longest symbol BIRD takes (`SYM_MAX_LEN`).
pub const MAX_SYMBOL: usize = 64;

/// Why a control-socket exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BirdCtlError {
    /// The socket could not be reached (no BIRD there, permissions, a path too long).
    #[error("connecting to BIRD's control socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What `connect` said.
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("BIRD control socket: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// BIRD did not answer (in full) in time.
    #[error("BIRD control socket: no complete {what} within {after:?}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// BIRD closed the connection before the reply ended.
    #[error("BIRD closed its control socket in the middle of a reply")]
    Closed,
    /// The first line was not BIRD's `0001 ... ready.` greeting.
    #[error("not a BIRD control socket: the greeting was `{0}`")]
    Greeting(String),
    /// A line that is not part of BIRD's reply format.
    #[error("malformed reply from BIRD: {0}")]
    Malformed(String),
    /// The reply exceeded the size limit.
    #[error("BIRD's reply is over {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// BIRD answered with an error code (8xxx run-time, 9xxx parse error).
    #[error("BIRD refused the command: {code:04} {text}")]
    Bird {
        /// The reply code.
        code: u16,
        /// Its text.
        text: String,
    },
    /// No protocol of that name (BIRD's 8003 `No protocols match`).
    #[error("BIRD has no protocol `{0}`")]
    NoSuchProtocol(String),
    /// A protocol name that is not a BIRD symbol, refused before anything was sent.
    #[error("`{name}` is not a BIRD protocol name: {reason}")]
    InvalidName {
        /// The name (at most 40 characters of it, escaped).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A command that cannot be sent as one line.
    #[error("command refused: {0}")]
    InvalidCommand(&'static str),
    /// An earlier exchange failed half-way; the connection is out of step and must be reopened.
    #[error("the connection to BIRD is out of step after an earlier failure: reconnect")]
    Broken,
}

/// One line of a reply: its code (a continuation line carries the code of the line it continues)
/// and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyLine {
    /// The reply code, 0-9999.
    pub code: u16,
    /// The text after the code (or after the leading space of a continuation line).
    pub text: String,
}

/// A complete reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The lines in order, the last one the line that ended the reply.
    pub lines: Vec<ReplyLine>,
    /// Spontaneous printouts (`+` lines) that arrived with it.
    pub spontaneous: Vec<String>,
}

impl Reply {
    /// The code of the line that ended the reply.
    pub fn code(&self) -> u16 {
        self.lines.last().map_or(0, |l| l.code)
    }

    /// The texts of the lines with `code`.
    pub fn texts(&self, code: u16) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(move |l| l.code == code)
            .map(|l| l.text.as_str())
    }

    /// All texts, one per line (what `birdc` prints).
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A protocol's state as `show protocols` names it (`proto_state_name` in BIRD's nest/proto.c).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoStatus {
    /// Running (a BGP session may still be connecting: see [`ProtoState::info`]).
    Up,
    /// Starting (for BGP: not established yet, `Active`/`Connect`/`Idle`).
    Start,
    /// Shutting down.
    Stop,
    /// Down, its routes still being flushed.
    Flush,
    /// Down (disabled, or failed and waiting).
    Down,
    /// A state this client does not know (a later BIRD).
    Other(String),
}

impl ProtoStatus {
    fn parse(s: &str) -> ProtoStatus {
        match s {
            "up" => ProtoStatus::Up,
            "start" => ProtoStatus::Start,
            "stop" => ProtoStatus::Stop,
            "flush" => ProtoStatus::Flush,
            "down" => ProtoStatus::Down,
            other => ProtoStatus::Other(other.to_string()),
        }
    }
}

/// One row of `show protocols`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtoState {
    /// The protocol's name.
    pub name: String,
    /// Its type (`BGP`, `Kernel`, `Device`, ...).
    pub proto: String,
    /// Its main table (`---` for BGP, whose channels each have one).
    pub table: String,
    /// Its state.
    pub state: ProtoStatus,
    /// When it entered that state, as BIRD's `timeformat protocol` prints it.
    pub since: String,
    /// The rest: for BGP the session state (`Established`, `Active`, `Connect`, `Idle`, ...)
    /// and the last error, e.g. `Active        Socket: Connection refused`; empty for some.
    pub info: String,
}

impl ProtoState {
    /// Whether this is a BGP session that is up (`up` and `Established`).
    pub fn is_established(&self) -> bool {
        self.state == ProtoStatus::Up && self.info.starts_with("Established")
    }

    /// Parses the text of a `show protocols` row (code 1002):
    /// `name proto table state since  info`, since and info separated by two spaces (BIRD prints
    /// `%-12s  %s`; a time format may put one space inside since, never two).
    pub fn parse_row(row: &str) -> Result<ProtoState, BirdCtlError> {
        let bad = || BirdCtlError::Malformed(format!("protocol row `{}`", shown(row)));
        let mut rest = row.trim_start();
        let mut field = || -> Option<String> {
            let end = rest.find(' ').unwrap_or(rest.len());
            let (f, r) = rest.split_at(end);
            rest = r.trim_start_matches(' ');
            (!f.is_empty()).then(|| f.to_string())
        };
        let name = field().ok_or_else(bad)?;
        let proto = field().ok_or_else(bad)?;
        let table = field().ok_or_else(bad)?;
        let state = field().ok_or_else(bad)?;
        let (since, info) = match rest.find("  ") {
            Some(i) => (&rest[..i], rest[i..].trim()),
            None => (rest.trim_end(), ""),
        };
        if since.is_empty() {
            return Err(bad());
        }
        Ok(ProtoState {
            name,
            proto,
            table,
            state: ProtoStatus::parse(&state),
            since: since.to_string(),
            info: info.to_string(),
        })
    }
}

/// Whether `enable`/`disable` changed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggled {
    /// The protocol was switched (BIRD's 0009 `disabled` / 0011 `enabled`).
    Changed,
    /// It already was in that state (0008 / 0010).
    Already,
}

/// Checks a protocol name before it goes into a command: a BIRD symbol
/// (`[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_SYMBOL`] characters). Such a name cannot end the
/// command, start another, or match other protocols as a pattern (no `*`, `?`, quote or space).
pub fn check_symbol(name: &str) -> Result<(), BirdCtlError> {
    let bad = |reason| {
        Err(BirdCtlError::InvalidName {
            name: shown(name),
            reason,
        })
    };
    let mut b = name.bytes();
    match b.next() {
        None => return bad("empty"),
        Some(c) if !(c.is_ascii_alphabetic() || c == b'_') => {
            return bad("must start with a letter or _");
        }
        Some(_) => {}
    }
    if !b.all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return bad("only letters, digits and _ may follow");
    }
    if name.len() > MAX_SYMBOL {
        return bad("longer than 64 characters");
    }
    Ok(())
}

fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    let e = format!("{cut:?}");
    e.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(&e)
        .to_string()
}

/// One line of the reply format.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// `DDDD-text` (`last` false) or `DDDD text` (`last` true).
    Coded {
        code: u16,
        last: bool,
        text: &'a str,
    },
    /// ` text`.
    Continuation(&'a str),
    /// `+text`.
    Spontaneous(&'a str),
}

fn parse_line(line: &str) -> Result<Line<'_>, BirdCtlError> {
    if let Some(t) = line.strip_prefix('+') {
        return Ok(Line::Spontaneous(t));
    }
    if let Some(t) = line.strip_prefix(' ') {
        return Ok(Line::Continuation(t));
    }
    let b = line.as_bytes();
    let digits = b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit);
    let sep = b.get(4).copied();
    if !digits || !matches!(sep, None | Some(b' ') | Some(b'-')) {
        return Err(BirdCtlError::Malformed(format!("line `{}`", shown(line))));
    }
    let code = b[..4]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !matches!(code / 1000, 0 | 1 | 2 | 8 | 9) {
        return Err(BirdCtlError::Malformed(format!(
            "reply code {code:04} is in no class BIRD uses"
        )));
    }
    Ok(Line::Coded {
        code,
        last: sep != Some(b'-'),
        text: line.get(5..).unwrap_or(""),
    })
}

/// A connection to BIRD's control socket.
#[derive(Debug)]
pub struct BirdControl {
    stream: UnixStream,
    timeout: Duration,
    max_reply: usize,
    greeting: String,
    /// Bytes received and not yet consumed as lines.
    buf: Vec<u8>,
    broken: bool,
}

impl BirdControl {
    /// Connects to the control socket at `path` and reads BIRD's greeting, both within
    /// `timeout`; every later command gets `timeout` too.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<BirdControl, BirdCtlError> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        let connect_err = |source| BirdCtlError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let addr = socket2::SockAddr::unix(path).map_err(connect_err)?;
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .map_err(connect_err)?;
        sock.connect_timeout(&addr, timeout.max(Duration::from_millis(1)))
            .map_err(connect_err)?;
        let mut c = BirdControl {
            stream: sock.into(),
            timeout,
            max_reply: DEFAULT_MAX_REPLY,
            greeting: String::new(),
            buf: Vec::new(),
            broken: false,
        };
        let reply = c.read_reply(deadline, "greeting").map_err(|e| match e {
            BirdCtlError::Malformed(m) => BirdCtlError::Greeting(m),
            e => e,
        })?;
        match reply.lines.as_slice() {
            [l] if l.code == 1 && l.text.starts_with("BIRD ") => {
                c.greeting = l.text.clone();
                Ok(c)
            }
            _ => Err(BirdCtlError::Greeting(shown(&reply.text()))),
        }
    }

    /// BIRD's greeting without its code, e.g. `BIRD 2.0.12 ready.`.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// Sets the largest reply accepted (default [`DEFAULT_MAX_REPLY`]).
    pub fn set_max_reply(&mut self, bytes: usize) {
        self.max_reply = bytes;
    }

    /// Sends one command line (printable ASCII, at most [`MAX_COMMAND`] bytes) and reads the
    /// whole reply. A reply with an error code (8xxx, 9xxx) is [`BirdCtlError::Bird`]. After a
    /// timeout, a malformed or oversized reply the connection is [`BirdCtlError::Broken`].
    pub fn command(&mut self, cmd: &str) -> Result<Reply, BirdCtlError> {
        if self.broken {
            return Err(BirdCtlError::Broken);
        }
        if cmd.trim().is_empty() {
            return Err(BirdCtlError::InvalidCommand("empty"));
        }
        if cmd.len() > MAX_COMMAND {
            return Err(BirdCtlError::InvalidCommand("longer than 1024 bytes"));
        }
        if !cmd.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(BirdCtlError::InvalidCommand(
                "only printable ASCII on one line (no newline, tab or control character)",
            ));
        }
        let deadline = Instant::now() + self.timeout;
        let r = self.exchange(cmd, deadline);
        if matches!(
            r,
            Err(BirdCtlError::Io { .. }
                | BirdCtlError::Timeout { .. }
                | BirdCtlError::Closed
                | BirdCtlError::Malformed(_)
                | BirdCtlError::TooLarge { .. })
        ) {
            self.broken = true;
        }
        let reply = r?;
        if let Some(e) = reply.lines.iter().find(|l| l.code >= 8000) {
            return Err(BirdCtlError::Bird {
                code: e.code,
                text: e.text.clone(),
            });
        }
        Ok(reply)
    }

    fn exchange(&mut self, cmd: &str, deadline: Instant) -> Result<Reply, BirdCtlError> {
        // A reply left over from before (it cannot happen with BIRD) would be taken for ours.
        if !self.buf.is_empty() {
            return Err(BirdCtlError::Malformed(
                "data arrived between replies".into(),
            ));
        }
        let mut line = Vec::with_capacity(cmd.len() + 1);
        line.extend_from_slice(cmd.as_bytes());
        line.push(b'\n');
        let left = remaining(deadline, self.timeout, "reply")?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|source| BirdCtlError::Io {
                what: "setting the write timeout",
                source,
            })?;
        self.stream.write_all(&line).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => BirdCtlError::Timeout {
                what: "command send",
                after: self.timeout,
            },
            _ => BirdCtlError::Io {
                what: "sending the command",
                source: e,
            },
        })?;
        self.read_reply(deadline, "reply")
    }

    /// Disables protocol `protocol` (BIRD stops it and keeps it down until enabled).
    pub fn disable(&mut self, protocol: &str) -> Result<Toggled, BirdCtlError> {
        self.toggle("disable", protocol, (9, 8))
    }

    /// Enables protocol `protocol` again.
    pub fn enable(&mut self, protocol: &str) -> Result<Toggled, BirdCtlError> {
        self.toggle("enable", protocol, (11, 10))
    }

    fn toggle(
        &mut self,
        verb: &str,
        protocol: &str,
        (changed, already): (u16, u16),
    ) -> Result<Toggled, BirdCtlError> {
        check_symbol(protocol)?;
        // Quoted, the name is a pattern; without wildcards it matches that protocol only, and
        // an unknown name is "8003 No protocols match" rather than a syntax error.
        let reply = self
            .command(&format!("{verb} \"{protocol}\""))
            .map_err(|e| no_such(e, protocol))?;
        let mine = |code| {
            reply
                .texts(code)
                .any(|t| t.split_once(':').is_some_and(|(n, _)| n == protocol))
        };
        if mine(changed) {
            Ok(Toggled::Changed)
        } else if mine(already) {
            Ok(Toggled::Already)
        } else {
            Err(BirdCtlError::Malformed(format!(
                "unexpected reply to `{verb}`: {}",
                shown(&reply.text())
            )))
        }
    }

    /// The state of protocol `protocol` (`show protocols "NAME"`).
    pub fn protocol_state(&mut self, protocol: &str) -> Result<ProtoState, BirdCtlError> {
        check_symbol(protocol)?;
        let reply = self
            .command(&format!("show protocols \"{protocol}\""))
            .map_err(|e| no_such(e, protocol))?;
        for row in reply.texts(1002) {
            let p = ProtoState::parse_row(row)?;
            if p.name == protocol {
                return Ok(p);
            }
        }
        Err(BirdCtlError::NoSuchProtocol(protocol.to_string()))
    }

    /// Reads lines until the one that ends a reply.
    fn read_reply(&mut self, deadline: Instant, what: &'static str) -> Result<Reply, BirdCtlError> {
        let mut reply = Reply::default();
        let mut used = 0usize;
        let mut last_code = None;
        loop {
            let raw = self.read_line(deadline, what, &mut used)?;
            let text = String::from_utf8_lossy(&raw);
            match parse_line(&text)? {
                Line::Spontaneous(t) => reply.spontaneous.push(t.to_string()),
                Line::Continuation(t) => {
                    let code = last_code.ok_or_else(|| {
                        BirdCtlError::Malformed("a continuation line came first".into())
                    })?;
                    reply.lines.push(ReplyLine {
                        code,
                        text: t.to_string(),
                    });
                }
                Line::Coded { code, last, text } => {
                    last_code = Some(code);
                    reply.lines.push(ReplyLine {
                        code,
                        text: text.to_string(),
                    });
                    if last {
                        return Ok(reply);
                    }
                }
            }
        }
    }

    /// One line without its `\n`; `used` counts the bytes of this reply so far.
    fn read_line(
        &mut self,
        deadline: Instant,
        what: &'static str,
        used: &mut usize,
    ) -> Result<Vec<u8>, BirdCtlError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                *used += i + 1;
                if *used > self.max_reply {
                    return Err(BirdCtlError::TooLarge {
                        limit: self.max_reply,
                    });
                }
                return Ok(line);
            }
            if *used + self.buf.len() > self.max_reply {
                return Err(BirdCtlError::TooLarge {
                    limit: self.max_reply,
                });
            }
            let left = remaining(deadline, self.timeout, what)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| BirdCtlError::Io {
                    what: "setting the read timeout",
                    source,
                })?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(BirdCtlError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(BirdCtlError::Timeout {
                        what,
                        after: self.timeout,
                    });
                }
                Err(source) => {
                    return Err(BirdCtlError::Io {
                        what: "reading the reply",
                        source,
                    });
                }
            }
        }
    }
}

/// The time left before `deadline` (never zero, which the socket calls would refuse), or a
/// timeout error.
fn remaining(
    deadline: Instant,
    timeout: Duration,
    what: &'static str,
) -> Result<Duration, BirdCtlError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(BirdCtlError::Timeout {
            what,
            after: timeout,
        });
    }
    Ok(left.max(Duration::from_millis(1)))
}

fn no_such(e: BirdCtlError, protocol: &str) -> BirdCtlError {
    match e {
        BirdCtlError::Bird { code: 8003, .. } => BirdCtlError::NoSuchProtocol(protocol.to_string()),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    const GREETING: &[u8] = b"0001 BIRD 2.0.12 ready.\n";
    const T: Duration = Duration::from_secs(5);

    /// What the fake BIRD does after reading a command.
    enum Step {
        /// Writes these bytes (the reply).
        Reply(&'static [u8]),
        /// Writes these bytes and closes the connection.
        ReplyClose(&'static [u8]),
        /// Writes these bytes, then keeps silent (until the client gives up and closes).
        ReplySilent(&'static [u8]),
        /// Keeps silent (until the client gives up and closes).
        Silent,
    }

    /// A fake BIRD on a Unix socket in a temporary directory: sends `greeting`, then for every
    /// step reads one command line and acts. Returns the socket path's directory (kept alive) and
    /// a handle yielding the commands it received. Every wait is bounded.
    fn fake(
        greeting: &'static [u8],
        steps: Vec<Step>,
    ) -> (tempfile::TempDir, PathBuf, JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.ctl");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let h = std::thread::spawn(move || {
            let start = Instant::now();
            let (mut s, _) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(_) if start.elapsed() < T => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => panic!("fake bird: no client: {e}"),
                }
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            s.set_write_timeout(Some(T)).unwrap();
            let mut got = Vec::new();
            if s.write_all(greeting).is_err() {
                return got;
            }
            let mut r = BufReader::new(s.try_clone().unwrap());
            for step in steps {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return got;
                }
                got.push(line.trim_end_matches('\n').to_string());
                match step {
                    Step::Reply(b) => {
                        let _ = s.write_all(b);
                    }
                    Step::ReplyClose(b) => {
                        let _ = s.write_all(b);
                        return got;
                    }
                    Step::ReplySilent(b) => {
                        let _ = s.write_all(b);
                        let mut rest = String::new();
                        let _ = r.read_line(&mut rest);
                        return got;
                    }
                    Step::Silent => {
                        // Wait for the client to hang up (bounded by the read timeout).
                        let mut rest = String::new();
                        let _ = r.read_line(&mut rest);
                        return got;
                    }
                }
            }
            got
        });
        (dir, path, h)
    }

    const PROTOCOLS: &[u8] = b"2002-Name       Proto      Table      State  Since         Info\n\
        1002-azure_a    BGP        ---        start  09:04:35.893  Active        Socket: Connection refused\n\
        \x20azure_azure_long_name_x BGP        ---        up     2026-12-02 09:04:35  Established   \n\
        \x20kernel1    Kernel     master4    up     09:04:35.893  \n\
        0000 \n";

    #[test]
    fn greeting_commands_and_states() {
        let (_d, path, h) = fake(
            GREETING,
            vec![
                Step::Reply(PROTOCOLS),
                Step::Reply(PROTOCOLS),
                Step::Reply(PROTOCOLS),
                Step::Reply(b"0009-azure_a: disabled\n0000 \n"),
                Step::Reply(b"0008-azure_a: already disabled\n0000 \n"),
                Step::Reply(b"+spontaneous\n0011-azure_a: enabled\n0000 \n"),
                Step::Reply(b"0010-azure_a: already enabled\n0000 \n"),
                Step::Reply(b"8003 No protocols match\n"),
                Step::Reply(b"8003 No protocols match\n"),
                Step::Reply(b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n"),
                Step::Reply(
                    b"1000-BIRD 2.0.12\n1011-Router ID is 198.18.0.1\n Hostname is vm\n0013 Daemon is up and running\n",
                ),
            ],
        );
        let mut c = BirdControl::connect(&path, T).unwrap();
        assert_eq!(c.greeting(), "BIRD 2.0.12 ready.");
        let a = c.protocol_state("azure_a").unwrap();
        assert_eq!(
            a,
            ProtoState {
                name: "azure_a".into(),
                proto: "BGP".into(),
                table: "---".into(),
                state: ProtoStatus::Start,
                since: "09:04:35.893".into(),
                info: "Active        Socket: Connection refused".into(),
            }
        );
        assert!(!a.is_established());
        let long = c.protocol_state("azure_azure_long_name_x").unwrap();
        assert_eq!(long.since, "2026-12-02 09:04:35");
        assert_eq!(long.info, "Established");
        assert!(long.is_established());
        let k = c.protocol_state("kernel1").unwrap();
        assert_eq!((k.table.as_str(), k.info.as_str()), ("master4", ""));
        assert_eq!(c.disable("azure_a").unwrap(), Toggled::Changed);
        assert_eq!(c.disable("azure_a").unwrap(), Toggled::Already);
        assert_eq!(c.enable("azure_a").unwrap(), Toggled::Changed);
        assert_eq!(c.enable("azure_a").unwrap(), Toggled::Already);
        assert!(matches!(
            c.disable("nope"),
            Err(BirdCtlError::NoSuchProtocol(n)) if n == "nope"
        ));
        assert!(matches!(
            c.protocol_state("nope"),
            Err(BirdCtlError::NoSuchProtocol(_))
        ));
        assert!(matches!(
            c.command("blah"),
            Err(BirdCtlError::Bird { code: 9001, .. })
        ));
        let st = c.command("show status").unwrap();
        assert_eq!(st.code(), 13);
        assert_eq!(
            st.texts(1011).collect::<Vec<_>>(),
            ["Router ID is 198.18.0.1", "Hostname is vm"]
        );
        assert!(st.text().ends_with("Daemon is up and running"));
        drop(c);
        let got = h.join().unwrap();
        assert_eq!(
            got,
            [
                "show protocols \"azure_a\"",
                "show protocols \"azure_azure_long_name_x\"",
                "show protocols \"kernel1\"",
                "disable \"azure_a\"",
                "disable \"azure_a\"",
                "enable \"azure_a\"",
                "enable \"azure_a\"",
                "disable \"nope\"",
                "show protocols \"nope\"",
                "blah",
                "show status",
            ]
        );
    }

    #[test]
    fn names_and_commands_are_checked_before_sending() {
        let (_d, path, h) = fake(GREETING, vec![Step::Reply(b"0000 \n")]);
        let mut c = BirdControl::connect(&path, T).unwrap();
        for bad in [
            "",
            "a\"; down",
            "all\ndown",
            "*",
            "a?",
            "9x",
            "a b",
            "a-b",
            "'a'",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(c.disable(bad), Err(BirdCtlError::InvalidName { .. })),
                "{bad:?}"
            );
            assert!(matches!(
                c.protocol_state(bad),
                Err(BirdCtlError::InvalidName { .. })
            ));
        }
        for bad in ["", "  ", "show status\ndown", "a\rb", "a\tb", "é"] {
            assert!(
                matches!(c.command(bad), Err(BirdCtlError::InvalidCommand(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            c.command(&"x".repeat(MAX_COMMAND + 1)),
            Err(BirdCtlError::InvalidCommand(_))
        ));
        // Nothing went out but the one real command.
        c.command("show status").unwrap();
        drop(c);
        assert_eq!(h.join().unwrap(), ["show status"]);
    }

    #[test]
    fn silence_is_a_timeout_and_leaves_the_connection_broken() {
        let (_d, path, h) = fake(GREETING, vec![Step::Silent]);
        let mut c = BirdControl::connect(&path, Duration::from_millis(300)).unwrap();
        let start = Instant::now();
        assert!(matches!(
            c.command("show status"),
            Err(BirdCtlError::Timeout { .. })
        ));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(matches!(
            c.command("show status"),
            Err(BirdCtlError::Broken)
        ));
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn a_half_reply_then_silence_is_a_timeout_too() {
        let (_d, path, h) = fake(
            GREETING,
            vec![Step::ReplySilent(b"2002-Name  Proto\n1002-a BGP")],
        );
        let mut c = BirdControl::connect(&path, Duration::from_millis(300)).unwrap();
        assert!(matches!(
            c.command("show protocols"),
            Err(BirdCtlError::Timeout { .. })
        ));
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn odd_replies_are_errors_not_panics() {
        for (reply, want) in [
            (&b"hello\n"[..], "Malformed"),
            (b" continuation first\n", "Malformed"),
            (b"123\n", "Malformed"),
            (b"12345 x\n", "Malformed"),
            (b"5000 what\n", "Malformed"),
            (b"00a0 x\n", "Malformed"),
            (b"\n", "Malformed"),
            (b"\xff\xfe\n", "Malformed"),
            (b"1002-a\n", "Closed"),
        ] {
            let (_d, path, h) = fake(GREETING, vec![Step::ReplyClose(reply)]);
            let mut c = BirdControl::connect(&path, T).unwrap();
            let e = c.command("show protocols").unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{reply:?}: {e:?}");
            assert!(!e.to_string().is_empty());
            drop(c);
            h.join().unwrap();
        }
        // A row that is not a protocol row.
        let (_d, path, h) = fake(GREETING, vec![Step::Reply(b"1002-azure_a BGP\n0000 \n")]);
        let mut c = BirdControl::connect(&path, T).unwrap();
        assert!(matches!(
            c.protocol_state("azure_a"),
            Err(BirdCtlError::Malformed(_))
        ));
        drop(c);
        h.join().unwrap();
        // A disable reply about another protocol.
        let (_d, path, h) = fake(
            GREETING,
            vec![Step::Reply(b"0009-other: disabled\n0000 \n")],
        );
        let mut c = BirdControl::connect(&path, T).unwrap();
        assert!(matches!(
            c.disable("azure_a"),
            Err(BirdCtlError::Malformed(_))
        ));
        drop(c);
        h.join().unwrap();
        // Non-UTF-8 text inside a line is kept (lossily), not fatal.
        let (_d, path, h) = fake(GREETING, vec![Step::Reply(b"1011-Host \xff\n0013 ok\n")]);
        let mut c = BirdControl::connect(&path, T).unwrap();
        assert_eq!(
            c.command("show status").unwrap().lines[0].text,
            "Host \u{fffd}"
        );
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn replies_are_bounded_in_size() {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut v = Vec::new();
            for i in 0..5000 {
                v.extend_from_slice(
                    format!("1007-198.18.{}.0/24 unreachable\n", i % 250).as_bytes(),
                );
            }
            v.extend_from_slice(b"0000 \n");
            v
        });
        let (_d, path, h) = fake(GREETING, vec![Step::ReplyClose(big.as_slice())]);
        let mut c = BirdControl::connect(&path, T).unwrap();
        c.set_max_reply(10_000);
        assert!(matches!(
            c.command("show route"),
            Err(BirdCtlError::TooLarge { limit: 10_000 })
        ));
        drop(c);
        h.join().unwrap();
        // One endless line without a newline is bounded as well.
        static LINE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let line = LINE.get_or_init(|| vec![b'x'; 200_000]);
        let (_d, path, h) = fake(GREETING, vec![Step::ReplyClose(line.as_slice())]);
        let mut c = BirdControl::connect(&path, T).unwrap();
        c.set_max_reply(50_000);
        assert!(matches!(
            c.command("show route"),
            Err(BirdCtlError::TooLarge { .. })
        ));
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn connect_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            BirdControl::connect(dir.path().join("none.ctl"), T),
            Err(BirdCtlError::Connect { .. })
        ));
        assert!(matches!(
            BirdControl::connect(dir.path().join("x".repeat(200)), T),
            Err(BirdCtlError::Connect { .. })
        ));
        for g in [
            &b"0001 something else\n"[..],
            b"8007 Access denied\n",
            b"0001-BIRD\n0000 \n",
        ] {
            let (_d, path, h) = fake(g, vec![]);
            assert!(
                matches!(
                    BirdControl::connect(&path, T),
                    Err(BirdCtlError::Greeting(_))
                ),
                "{g:?}"
            );
            h.join().unwrap();
        }
        let (_d, path, h) = fake(b"junk\n", vec![]);
        assert!(matches!(
            BirdControl::connect(&path, T),
            Err(BirdCtlError::Greeting(_))
        ));
        h.join().unwrap();
        // A server that accepts and says nothing: the greeting times out.
        let (_d, path, h) = fake(b"", vec![Step::Silent]);
        let start = Instant::now();
        assert!(matches!(
            BirdControl::connect(&path, Duration::from_millis(200)),
            Err(BirdCtlError::Timeout { .. })
        ));
        assert!(start.elapsed() < Duration::from_secs(3));
        h.join().unwrap();
    }

    #[test]
    fn parsers_survive_arbitrary_input() {
        // A small deterministic generator (xorshift) over bytes that matter to the parsers.
        let alphabet = b" -+0123456789aZ_:.\"\xff\t";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((x >> (i % 8 * 8)) as usize + i) % alphabet.len()])
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse_line(&s);
            let _ = ProtoState::parse_row(&s);
        }
        assert_eq!(
            parse_line("0000").unwrap(),
            Line::Coded {
                code: 0,
                last: true,
                text: ""
            }
        );
        assert_eq!(
            parse_line("1002-x y").unwrap(),
            Line::Coded {
                code: 1002,
                last: false,
                text: "x y"
            }
        );
        assert_eq!(parse_line("+a").unwrap(), Line::Spontaneous("a"));
        assert_eq!(parse_line(" a").unwrap(), Line::Continuation("a"));
    }
}
