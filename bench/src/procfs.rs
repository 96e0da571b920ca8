//! What the benchmark reads about other processes from `/proc`: resident and peak memory
//! (with the peak reset through `clear_refs`), thread counts, and the machine's load, so
//! that memory targets can be checked and a busy machine is visible in the report.

use std::time::Duration;

use anyhow::{Context, Result};

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    pub rss_kib: u64,
    /// The peak resident size since start or since the last [`reset_peak`].
    pub hwm_kib: u64,
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn status(pid: u32) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))
}

pub fn mem(pid: u32) -> Result<Mem> {
    let s = status(pid)?;
    Ok(Mem {
        rss_kib: status_field(&s, "VmRSS").context("no VmRSS")?,
        hwm_kib: status_field(&s, "VmHWM").context("no VmHWM")?,
    })
}

/// Resets the process's peak RSS (VmHWM) to its current RSS.
pub fn reset_peak(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("cannot reset the peak RSS of {pid}"))
}

/// Busy and total jiffies of all CPUs together, from the first line of `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// A process's name and the user plus system CPU time it has used, in clock ticks, from
/// `/proc/<pid>/stat`; `None` if it is gone.
fn stat_jiffies(pid: u32) -> Option<(String, u64)> {
    let (name, [utime, stime, _, _]) = stat_times(pid)?;
    Some((name, utime + stime))
}

/// The name and the utime, stime, cutime and cstime fields of `/proc/<pid>/stat`, in
/// jiffies; `None` if it is gone.
fn stat_times(pid: u32) -> Option<(String, [u64; 4])> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may hold spaces and parentheses itself.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some((name, [field(11)?, field(12)?, field(13)?, field(14)?]))
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU time of each process now, in jiffies, by pid (with its name).
fn process_jiffies() -> Vec<(u32, String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let (name, jiffies) = stat_jiffies(pid)?;
        Some((pid, name, jiffies))
    })
    .collect()
}

/// How busy the machine is over `sample` while this benchmark does nothing: the share
/// of all CPUs in use, and the processes using more than a tenth of one CPU.
pub fn busy(sample: Duration) -> (f64, Vec<(String, f64)>) {
    let (before, procs_before) = (cpu_jiffies(), process_jiffies());
    std::thread::sleep(sample);
    let (after, procs_after) = (cpu_jiffies(), process_jiffies());
    let share = match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => 0.0,
    };
    let hz = ticks_per_second();
    let mut hogs: Vec<(String, f64)> = procs_after
        .iter()
        .filter_map(|(pid, name, j1)| {
            let j0 = procs_before.iter().find(|(p, _, _)| p == pid)?.2;
            let cpus = (j1 - j0) as f64 / hz / sample.as_secs_f64();
            (cpus > 0.1).then(|| (name.clone(), cpus))
        })
        .collect();
    hogs.sort_by(|a, b| b.1.total_cmp(&a.1));
    (share, hogs)
}

/// Waits, up to `max`, until the machine is nearly idle (under a tenth of all CPUs busy
/// over 200 ms): the kernel tears down namespaces and writes back files for a while
/// after a burst of jobs, and a phase measured during that pays for the one before.
pub fn settle(max: Duration) {
    let t = std::time::Instant::now();
    while busy(Duration::from_millis(200)).0 >= 0.10 && t.elapsed() < max {}
}

/// User and system CPU time a process has used so far, all its threads together.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let (_, jiffies) =
        stat_jiffies(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    Ok(Duration::from_secs_f64(jiffies as f64 / ticks_per_second()))
}

/// CPU time of process `pid` and, apart, of its children it has reaped (and theirs): a
/// server's own work and its jobs'.
pub fn cpu_time_and_reaped(pid: u32) -> Result<(Duration, Duration)> {
    let (_, [utime, stime, cutime, cstime]) =
        stat_times(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let secs = |jiffies: u64| Duration::from_secs_f64(jiffies as f64 / ticks_per_second());
    Ok((secs(utime + stime), secs(cutime + cstime)))
}

/// User and system CPU time of this process (`RUSAGE_SELF`) or of its children that
/// have been waited for (`RUSAGE_CHILDREN`).
pub fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the zeroed struct; `who` is one of the two constants.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Bytes a process has passed to write-like system calls so far (`wchar` of
/// `/proc/PID/io`): for jobd serving a log read, what it sent on the socket (TLS records),
/// since the read writes no file.
pub fn written_bytes(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("cannot read /proc/{pid}/io"))?;
    status_field(&io, "wchar").context("no wchar in /proc/PID/io")
}
