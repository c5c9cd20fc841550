//! CPU-local packet steering while traffic is light: worker `i` is pinned to the `i`-th CPU the
//! process may run on, and the kernel hands each packet to the worker of the CPU that is already
//! processing it — the UDP 4500 `SO_REUSEPORT` group through a classic BPF program that returns
//! the socket of the current CPU (`SO_ATTACH_REUSEPORT_CBPF` with the `SKF_AD_CPU` ancillary load,
//! `socket(7)`), the TUN through a steering eBPF program that returns the queue of the current CPU
//! (`TUNSETSTEERINGEBPF`, `bpf_get_smp_processor_id`). A packet then never wakes a thread on
//! another, idle CPU: the worker it wakes runs on the CPU whose softirq queued it, as in
//! receive-side scaling with one queue per core (RFC 4303 processing itself is unchanged).
//!
//! Waking an idle CPU is what a lone packet costs most on a virtual machine (the vCPU halted and
//! the hypervisor has to schedule it again), but keeping a busy flow's sealing, opening and
//! sending on one CPU gives up the parallelism of a pipeline over several. So [`Steering`]
//! switches by packet rate: CPU-local below [`LOCAL_BELOW`] packets per second, and above
//! [`SPREAD_ABOVE`] back to the kernel's hash steering with the workers free to run anywhere.
//! Hash steering keeps all packets of one SA on one worker at the receiver (the peer's 4-tuple
//! hashes to one socket); CPU-local steering does not, so a worker that finds a backlog
//! ([`BACKLOG_SPREAD`] packets in one wake-up) asks for hash steering at once, before one worker
//! can fall a replay window behind another.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Above this many packets per second (TUN reads plus UDP datagrams received, all workers) the
/// workers spread out. CPU-local steering lets two workers seal packets of one SA at once (two
/// flows sent from two CPUs), and the reordering that causes must stay far inside the peer's
/// replay window (strongSwan's default is 32 packets): at a few packets per wake-up it does; with
/// a 200 Mbit/s transfer beside a ping (about 18,000 packets/s, bursts below the backlog rule)
/// strongSwan dropped enough to lose pings, so only sparse traffic stays CPU-local.
pub(crate) const SPREAD_ABOVE: u64 = 5_000;
/// Below this many packets per second, for [`LOCAL_AFTER`], steering becomes CPU-local again.
pub(crate) const LOCAL_BELOW: u64 = 1_000;
/// How long the rate must stay below [`LOCAL_BELOW`] before going back to CPU-local steering.
pub(crate) const LOCAL_AFTER: Duration = Duration::from_secs(1);
/// Packets found waiting in one worker wake-up that switch to hash steering at once (see
/// `Shared::note_backlog`).
pub(crate) const BACKLOG_SPREAD: usize = 8;
/// Shortest interval a packet rate is measured over.
const MIN_RATE_INTERVAL: Duration = Duration::from_millis(200);
/// `SO_DETACH_REUSEPORT_BPF` (`asm-generic/socket.h`, Linux 5.8).
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

/// `SO_ATTACH_REUSEPORT_CBPF` (`asm-generic/socket.h`).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
/// `SKF_AD_OFF + SKF_AD_CPU` (`linux/filter.h`): a load from this offset yields the CPU id.
const SKF_AD_CPU_LOAD: u32 = (-0x1000i32 + 36) as u32;
/// `TUNSETSTEERINGEBPF` = `_IOR('T', 224, int)` (`linux/if_tun.h`).
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
/// `BPF_PROG_LOAD` command and `BPF_PROG_TYPE_SOCKET_FILTER` (`linux/bpf.h`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// `BPF_FUNC_get_smp_processor_id`.
const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;

/// Number of CPU ids a `cpu_set_t` holds.
const SET_BITS: usize = 8 * std::mem::size_of::<libc::cpu_set_t>();

/// The CPU set of thread `tid` (0: the calling thread), `sched_getaffinity(2)`.
fn get_affinity(tid: libc::pid_t) -> io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    #[allow(unsafe_code)]
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    #[allow(unsafe_code)]
    let r =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// Lets thread `tid` run on the CPUs of `set`.
fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a live cpu_set_t of the size passed; the kernel only reads it.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU ids in `set`, ascending.
fn cpus_of(set: &libc::cpu_set_t) -> Vec<usize> {
    // SAFETY: CPU_ISSET reads the set within its size (`cpu < SET_BITS`).
    #[allow(unsafe_code)]
    (0..SET_BITS)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
        .collect()
}

/// A set of one CPU.
fn single(cpu: usize) -> io::Result<libc::cpu_set_t> {
    if cpu >= SET_BITS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "CPU id out of range",
        ));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes within it (checked above).
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        Ok(set)
    }
}

/// `e` with what was being done.
fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Duplicates `fd` (the copy refers to the same open socket or TUN queue).
fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: dup of a descriptor the caller keeps open; the result is checked.
    #[allow(unsafe_code)]
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if d < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `d` is a fresh descriptor we own.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// How packets find their worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Workers pinned, packets to the worker of the current CPU.
    Local,
    /// Kernel hash steering, workers free to run on any allowed CPU.
    Spread,
}

/// Switches between CPU-local and hash steering by packet rate (see the module documentation).
/// Owned by the housekeeping thread, the only one that changes steering after start.
pub(crate) struct Steering {
    /// Worker `i` runs on `cpus[i]` in [`Mode::Local`].
    cpus: Vec<usize>,
    /// What the workers may run on in [`Mode::Spread`] (the process's set at start).
    allowed: libc::cpu_set_t,
    /// A descriptor of the reuseport group (a duplicate of worker 0's socket).
    udp: OwnedFd,
    /// A descriptor of each TUN device (duplicates of queue 0).
    tuns: Vec<OwnedFd>,
    /// The loaded TUN steering program.
    prog: OwnedFd,
    /// When to change modes.
    switch: RateSwitch,
}

impl Steering {
    /// Loads the programs for `workers` workers on the UDP group of `udp` and the TUN devices of
    /// `tuns` (queue `i` and socket `i` belong to worker `i`). Nothing is attached yet. `None`
    /// when there is nothing to gain: fewer than two workers or two CPUs.
    pub(crate) fn new(workers: usize, udp: RawFd, tuns: &[RawFd]) -> io::Result<Option<Self>> {
        let allowed = get_affinity(0)?;
        let mut cpus = cpus_of(&allowed);
        cpus.truncate(workers);
        if cpus.len() < 2 {
            return Ok(None);
        }
        let prog = load_tun_program(&cpus)?;
        Ok(Some(Self {
            udp: dup(udp)?,
            tuns: tuns.iter().map(|&fd| dup(fd)).collect::<io::Result<_>>()?,
            prog,
            cpus,
            allowed,
            switch: RateSwitch::new(),
        }))
    }

    /// Attaches the CPU-local programs and pins worker `i` (thread id `tids[i]`) to its CPU.
    pub(crate) fn go_local(&mut self, tids: &[AtomicI32]) -> io::Result<()> {
        attach_reuseport(self.udp.as_raw_fd(), &self.cpus)
            .map_err(|e| context("reuseport program", e))?;
        for t in &self.tuns {
            set_tun_program(t.as_raw_fd(), self.prog.as_raw_fd())
                .map_err(|e| context("TUN steering program", e))?;
        }
        for (tid, &cpu) in tids.iter().zip(&self.cpus) {
            let tid = tid.load(Relaxed);
            if tid > 0 {
                set_affinity(tid, &single(cpu)?).map_err(|e| context("pinning a worker", e))?;
            }
        }
        self.switch.mode = Mode::Local;
        Ok(())
    }

    /// Detaches the programs (the kernel's hash steering again) and lets every worker run on
    /// any allowed CPU.
    pub(crate) fn go_spread(&mut self, tids: &[AtomicI32]) -> io::Result<()> {
        for tid in tids {
            let tid = tid.load(Relaxed);
            if tid > 0 {
                set_affinity(tid, &self.allowed).map_err(|e| context("unpinning a worker", e))?;
            }
        }
        // The option's value is not read; ENOENT: nothing was attached.
        let detach = crate::udp::setsockopt_int(
            self.udp.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            0,
        );
        if let Err(e) = detach
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            return Err(context("detaching the reuseport program", e));
        }
        for t in &self.tuns {
            set_tun_program(t.as_raw_fd(), -1)
                .map_err(|e| context("detaching the TUN program", e))?;
        }
        self.switch.mode = Mode::Spread;
        Ok(())
    }

    /// Feeds the packet total (all workers) at `now` and whether a worker asked to spread
    /// (a backlog); returns the mode to switch to, if any.
    pub(crate) fn decide(&mut self, now: Instant, packets: u64, urgent: bool) -> Option<Mode> {
        if urgent && self.switch.mode == Mode::Local {
            self.switch.quiet_since = None;
            return Some(Mode::Spread);
        }
        self.switch.decide(now, packets)
    }
}

/// The mode decision by packet rate, with hysteresis: spread at once above [`SPREAD_ABOVE`],
/// local again after [`LOCAL_AFTER`] below [`LOCAL_BELOW`].
#[derive(Debug)]
struct RateSwitch {
    /// The mode in force (changed by the caller once applied).
    mode: Mode,
    /// Packet total and time of the last rate measurement.
    last: Option<(Instant, u64)>,
    /// Since when the rate has been below [`LOCAL_BELOW`] in [`Mode::Spread`].
    quiet_since: Option<Instant>,
}

impl RateSwitch {
    fn new() -> Self {
        Self {
            mode: Mode::Spread,
            last: None,
            quiet_since: None,
        }
    }

    fn decide(&mut self, now: Instant, packets: u64) -> Option<Mode> {
        let Some((then, before)) = self.last else {
            self.last = Some((now, packets));
            return None;
        };
        let dt = now.saturating_duration_since(then);
        if dt < MIN_RATE_INTERVAL {
            return None;
        }
        self.last = Some((now, packets));
        let rate = u128::from(packets.saturating_sub(before)) * 1_000_000 / dt.as_micros().max(1);
        let rate = u64::try_from(rate).unwrap_or(u64::MAX);
        match self.mode {
            Mode::Local if rate > SPREAD_ABOVE => Some(Mode::Spread),
            Mode::Local => None,
            Mode::Spread if rate < LOCAL_BELOW => {
                let since = *self.quiet_since.get_or_insert(then);
                if now.saturating_duration_since(since) >= LOCAL_AFTER {
                    self.quiet_since = None;
                    Some(Mode::Local)
                } else {
                    None
                }
            }
            Mode::Spread => {
                self.quiet_since = None;
                None
            }
        }
    }
}

/// The classic BPF program of the reuseport group: socket `i` for the packet being processed on
/// CPU `cpus[i]`; any other CPU returns an out-of-range index, for which the kernel falls back
/// to its 4-tuple hash.
fn reuseport_program(cpus: &[usize]) -> io::Result<Vec<libc::sock_filter>> {
    // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
    const BPF_RET_K: u16 = 0x06;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut p = Vec::with_capacity(2 + 2 * cpus.len());
    p.push(insn(BPF_LD_W_ABS, 0, 0, SKF_AD_CPU_LOAD));
    for (i, &cpu) in cpus.iter().enumerate() {
        let cpu = u32::try_from(cpu).map_err(|_| io::Error::other("CPU id out of range"))?;
        let idx = u32::try_from(i).map_err(|_| io::Error::other("too many sockets"))?;
        // if A == cpu: return idx (next instruction), else skip it
        p.push(insn(BPF_JMP_JEQ_K, 0, 1, cpu));
        p.push(insn(BPF_RET_K, 0, 0, idx));
    }
    p.push(insn(BPF_RET_K, 0, 0, u32::MAX));
    if p.len() > usize::from(u16::MAX) {
        return Err(io::Error::other("steering program too long"));
    }
    Ok(p)
}

/// Attaches the CPU-local program to the reuseport group `fd` belongs to; socket `i` of the group
/// (the `i`-th bound) serves CPU `cpus[i]`.
fn attach_reuseport(fd: RawFd, cpus: &[usize]) -> io::Result<()> {
    let mut prog = reuseport_program(cpus)?;
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies the program.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    /// dst register in the low nibble, src register in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

/// The prefix of `union bpf_attr` that `BPF_PROG_LOAD` reads.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The TUN steering program: queue `i` for a packet transmitted on CPU `cpus[i]`; any other CPU
/// returns its id, which the TUN driver reduces modulo the number of queues.
fn tun_program(cpus: &[usize]) -> io::Result<Vec<BpfInsn>> {
    const CALL: u8 = 0x05 | 0x80;
    const JNE_K: u8 = 0x05 | 0x50;
    const MOV64_K: u8 = 0x07 | 0xb0;
    const EXIT: u8 = 0x05 | 0x90;
    let insn = |code, off, imm| BpfInsn {
        code,
        regs: 0,
        off,
        imm,
    };
    let mut p = Vec::with_capacity(2 + 3 * cpus.len());
    p.push(insn(CALL, 0, BPF_FUNC_GET_SMP_PROCESSOR_ID));
    for (i, &cpu) in cpus.iter().enumerate() {
        let cpu = i32::try_from(cpu).map_err(|_| io::Error::other("CPU id out of range"))?;
        let q = i32::try_from(i).map_err(|_| io::Error::other("too many queues"))?;
        // if r0 != cpu: skip the next two; else r0 = q; exit
        p.push(insn(JNE_K, 2, cpu));
        p.push(insn(MOV64_K, 0, q));
        p.push(insn(EXIT, 0, 0));
    }
    p.push(insn(EXIT, 0, 0));
    Ok(p)
}

/// Loads the TUN steering program for `cpus` (`BPF_PROG_LOAD`).
fn load_tun_program(cpus: &[usize]) -> io::Result<OwnedFd> {
    let prog = tun_program(cpus)?;
    let license = b"GPL\0";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: u32::try_from(prog.len()).map_err(|_| io::Error::other("program too long"))?,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"hgw_tun_steer\0\0\0",
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute prefix of the size passed, pointing at
    // `prog` and `license`, both alive for the call; the kernel copies what it reads.
    #[allow(unsafe_code)]
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: `fd` is the fresh descriptor the kernel just returned to us.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches program `prog` (a descriptor, or -1 to detach) as the steering program of the TUN
/// device of queue `fd`; the device holds its own reference.
fn set_tun_program(fd: RawFd, prog: RawFd) -> io::Result<()> {
    // SAFETY: `fd` is an open TUN queue; the ioctl reads one int.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd, TUNSETSTEERINGEBPF as _, &prog as *const libc::c_int) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_map_each_cpu_to_its_index() {
        let p = reuseport_program(&[2, 5]).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(p[0].k, SKF_AD_CPU_LOAD);
        assert_eq!((p[1].k, p[2].k), (2, 0));
        assert_eq!((p[3].k, p[4].k), (5, 1));
        assert_eq!(p[5].k, u32::MAX);
        let t = tun_program(&[0, 1, 3]).unwrap();
        assert_eq!(t.len(), 11);
        assert_eq!(t[0].imm, BPF_FUNC_GET_SMP_PROCESSOR_ID);
        assert_eq!((t[7].imm, t[8].imm), (3, 2));
    }

    #[test]
    fn rate_switch_spreads_at_once_and_comes_back_after_a_quiet_second() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut r = RateSwitch::new();
        r.mode = Mode::Local;
        assert_eq!(r.decide(ms(0), 0), None, "first sample is the baseline");
        // 100 packets in 250 ms: 400/s, stays local.
        assert_eq!(r.decide(ms(250), 100), None);
        // Too short an interval is not measured at all, however many packets.
        assert_eq!(r.decide(ms(300), 1_000_000), None);
        // 2,500 more in the 250 ms since the last measurement: 10,000/s.
        assert_eq!(r.decide(ms(500), 2_600), Some(Mode::Spread));
        r.mode = Mode::Spread;
        // Busy: stays spread.
        assert_eq!(r.decide(ms(750), 5_100), None);
        // Quiet (400/s) from 750 ms on: back to local once a whole second was quiet.
        assert_eq!(r.decide(ms(1000), 5_200), None);
        assert_eq!(r.decide(ms(1500), 5_400), None);
        // A busy interval restarts the quiet second.
        assert_eq!(r.decide(ms(1750), 7_400), None);
        assert_eq!(r.decide(ms(2000), 7_500), None);
        assert_eq!(r.decide(ms(2500), 7_700), None);
        assert_eq!(r.decide(ms(2750), 7_800), Some(Mode::Local));
        r.mode = Mode::Local;
        // A counter that goes backwards (never happens; saturates) reads as quiet.
        assert_eq!(r.decide(ms(3000), 0), None);
    }

    #[test]
    fn allowed_cpus_are_listed() {
        let cpus = cpus_of(&get_affinity(0).unwrap());
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }
}
