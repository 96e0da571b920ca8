//! cgroup v2 as plain file operations: finding the hierarchy, laying out jobd's subtree,
//! and one cgroup per job with its limits, its kill switch and its usage figures.
//!
//! Layout (the no-internal-processes rule allows processes only in leaves once
//! controllers are enabled):
//!
//! ```text
//! <base>/jobd/            cpu io memory pids enabled for children
//! <base>/jobd/server/     jobd itself
//! <base>/jobd/jobs/       cpu io memory pids enabled for children
//! <base>/jobd/jobs/<id>/  one job; limits written before its process exists
//! ```

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::spec::Limits;

/// The controllers every job cgroup needs.
pub const CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// cpu.max period in microseconds (the kernel's default).
const CPU_PERIOD_USEC: u64 = 100_000;

/// What to do about cgroups at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// Use cgroups when the hierarchy has every controller; otherwise run without limits.
    #[default]
    Auto,
    /// Refuse to start without a usable hierarchy.
    Required,
    /// Never use cgroups.
    Off,
}

impl std::str::FromStr for CgroupMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CgroupMode::Auto),
            "required" => Ok(CgroupMode::Required),
            "off" => Ok(CgroupMode::Off),
            _ => Err(format!("{s:?}: expected auto, required or off")),
        }
    }
}

/// A failure of a cgroup file operation, naming the file and, for a write, the value:
/// "Invalid argument" alone says nothing about which of a job's limits was refused.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted")]
    NoHierarchy,
    #[error("the cgroup v2 hierarchy at {base} lacks the {missing} controller(s)")]
    MissingControllers { base: PathBuf, missing: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot enable {controllers} in {} (a cgroup that holds processes cannot delegate \
         controllers; give jobd a cgroup of its own with --cgroup-root): {source}",
        path.display()
    )]
    Delegate {
        path: PathBuf,
        controllers: String,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    /// Whether the kernel refused the value written as such: EINVAL or ERANGE for a value
    /// the file does not take, ENODEV for a device io.max cannot throttle (a partition, a
    /// device without a request queue). The value comes from the job's limits, so that is
    /// the caller's to change; any other failure (ENOSPC, EIO, ...) is the server's.
    pub fn refuses_value(&self) -> bool {
        match self {
            CgroupError::Write { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::ENODEV)
            ),
            CgroupError::NoHierarchy
            | CgroupError::MissingControllers { .. }
            | CgroupError::Read { .. }
            | CgroupError::Create { .. }
            | CgroupError::Open { .. }
            | CgroupError::Delegate { .. } => false,
        }
    }
}

/// A block device named in a limit that cannot be limited here. Always the caller's: the
/// device is theirs to name.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {device}: {source}")]
    Unreadable {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("{device} is not a block device")]
    NotBlock { device: String },
    #[error("cannot find the disk that holds partition {device}")]
    NoDisk { device: String },
    #[error("cannot read the disk number of {device}")]
    NoDiskNumber { device: String },
    #[error("bad device number {number:?} of the disk that holds {device}")]
    BadNumber { device: String, number: String },
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn create_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Create {
        path: path.to_path_buf(),
        source,
    }
}

/// Finds the cgroup v2 mount point in a `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape(left.split_whitespace().nth(4)?)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path of this process from a `/proc/self/cgroup` text (`0::/path`).
pub fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The cgroup jobd's subtree goes under: the one jobd runs in, or, if jobd already runs
/// in `<base>/jobd/server` (a restart within its own subtree), that `<base>`.
pub fn default_base() -> Result<PathBuf, CgroupError> {
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo = fs::read_to_string(mountinfo_path).map_err(read_err(mountinfo_path))?;
    let mount = cgroup2_mount(&mountinfo).ok_or(CgroupError::NoHierarchy)?;
    let own_path = Path::new("/proc/self/cgroup");
    let own = fs::read_to_string(own_path).map_err(read_err(own_path))?;
    let own = own_cgroup(&own).ok_or(CgroupError::NoHierarchy)?;
    let own = own.trim_end_matches("/jobd/server");
    Ok(mount.join(own.trim_start_matches('/')))
}

fn controllers(path: &Path) -> Result<BTreeSet<String>, CgroupError> {
    let text = fs::read_to_string(path).map_err(read_err(path))?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}

/// Writes `value` to the cgroup file at `path`.
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Enables our controllers for the children of `dir` (those not enabled yet).
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = controllers(&control)?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !enabled.contains(**c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let controllers = missing.join(" ");
    fs::write(&control, &controllers).map_err(|source| CgroupError::Delegate {
        path: control,
        controllers,
        source,
    })
}

/// jobd's cgroup subtree.
#[derive(Debug)]
pub struct Cgroups {
    top: PathBuf,
}

impl Cgroups {
    /// Lays out `<base>/jobd/{server,jobs}`, moves this process into `server` when asked,
    /// enables the controllers, and kills and removes job cgroups left by an earlier run.
    pub fn setup(base: &Path, move_self: bool) -> Result<Cgroups, CgroupError> {
        let available = controllers(&base.join("cgroup.controllers"))?;
        let missing: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !available.contains(*c))
            .collect();
        if !missing.is_empty() {
            return Err(CgroupError::MissingControllers {
                base: base.to_path_buf(),
                missing: missing.join(", "),
            });
        }
        let top = base.join("jobd");
        for dir in [top.join("server"), top.join("jobs")] {
            fs::create_dir_all(&dir).map_err(create_err(&dir))?;
        }
        if move_self {
            let procs = top.join("server/cgroup.procs");
            write(&procs, &std::process::id().to_string())?;
        }
        enable_controllers(base)?;
        enable_controllers(&top)?;
        enable_controllers(&top.join("jobs"))?;
        let cgroups = Cgroups { top };
        cgroups.remove_stale();
        Ok(cgroups)
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.top.join("jobs")
    }

    /// Kills and removes every job cgroup: at start-up they belong to an earlier jobd.
    fn remove_stale(&self) {
        let Ok(entries) = fs::read_dir(self.jobs_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let cgroup = JobCgroup::at(entry.path());
            tracing::warn!(cgroup = %cgroup.path.display(), "killing a job cgroup left by an earlier jobd");
            if let Err(e) = cgroup.kill_and_remove(Duration::from_secs(10)) {
                tracing::error!(cgroup = %cgroup.path.display(), error = %e, "cannot remove stale cgroup");
            }
        }
    }

    /// Creates the cgroup of job `name` with its limits written, ready for `clone3`.
    pub fn create_job(&self, name: &str, limits: &CgroupLimits) -> Result<JobCgroup, CgroupError> {
        let path = self.jobs_dir().join(name);
        fs::create_dir(&path).map_err(create_err(&path))?;
        let mut cgroup = JobCgroup { path, dir: None };
        if let Err(e) = cgroup.apply(limits) {
            let _ = fs::remove_dir(&cgroup.path);
            return Err(e);
        }
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&cgroup.path)
            .map_err(|source| CgroupError::Open {
                path: cgroup.path.clone(),
                source,
            });
        match dir {
            Ok(f) => cgroup.dir = Some(OwnedFd::from(f)),
            Err(e) => {
                let _ = fs::remove_dir(&cgroup.path);
                return Err(e);
            }
        }
        Ok(cgroup)
    }
}

/// Limits translated to cgroup terms: devices resolved to whole-disk major:minor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupLimits {
    pub cpu_quota_usec: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// (major, minor, read bytes/s, write bytes/s)
    pub io: Vec<(u32, u32, Option<u64>, Option<u64>)>,
}

impl CgroupLimits {
    /// Translates validated limits; resolves device paths on this host.
    pub fn from_limits(limits: &Limits) -> Result<CgroupLimits, DeviceError> {
        let mut io: Vec<(u32, u32, Option<u64>, Option<u64>)> = Vec::new();
        let mut add =
            |device: &str, read: Option<u64>, write: Option<u64>| -> Result<(), DeviceError> {
                let (major, minor) = whole_disk(device)?;
                match io.iter_mut().find(|e| e.0 == major && e.1 == minor) {
                    Some(e) => {
                        e.2 = read.or(e.2);
                        e.3 = write.or(e.3);
                    }
                    None => io.push((major, minor, read, write)),
                }
                Ok(())
            };
        for r in &limits.device_read_bps {
            add(&r.device, Some(r.bytes_per_second), None)?;
        }
        for r in &limits.device_write_bps {
            add(&r.device, None, Some(r.bytes_per_second))?;
        }
        Ok(CgroupLimits {
            cpu_quota_usec: limits
                .cpus
                .map(|c| (c * CPU_PERIOD_USEC as f64).round() as u64),
            memory_bytes: limits.memory_bytes,
            pids: limits.pids,
            io,
        })
    }

    /// The `cpu.max` line, e.g. `50000 100000` for half a CPU.
    pub fn cpu_max(&self) -> Option<String> {
        self.cpu_quota_usec
            .map(|q| format!("{q} {CPU_PERIOD_USEC}"))
    }

    /// The `io.max` lines, e.g. `8:0 rbps=1048576 wbps=max`.
    pub fn io_max(&self) -> Vec<String> {
        self.io
            .iter()
            .map(|(major, minor, r, w)| {
                let rate = |v: &Option<u64>| v.map_or("max".to_string(), |v| v.to_string());
                format!("{major}:{minor} rbps={} wbps={}", rate(r), rate(w))
            })
            .collect()
    }
}

/// Resolves a block device path to the major:minor of its whole disk (a partition is
/// limited through the disk it is on, which is what io.max accepts).
pub fn whole_disk(device: &str) -> Result<(u32, u32), DeviceError> {
    let meta = fs::metadata(device).map_err(|source| DeviceError::Unreadable {
        device: device.to_string(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(DeviceError::NotBlock {
            device: device.to_string(),
        });
    }
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys.join("partition").exists() {
        // /sys/dev/block/M:m links to .../<disk>/<partition>; the disk's `dev` has its number.
        let disk_dev = fs::canonicalize(&sys)
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("dev")))
            .and_then(|d| fs::read_to_string(d).ok())
            .ok_or_else(|| DeviceError::NoDisk {
                device: device.to_string(),
            })?;
        let (ma, mi) =
            disk_dev
                .trim()
                .split_once(':')
                .ok_or_else(|| DeviceError::NoDiskNumber {
                    device: device.to_string(),
                })?;
        let parse = |s: &str| {
            s.parse::<u32>().map_err(|_| DeviceError::BadNumber {
                device: device.to_string(),
                number: s.to_string(),
            })
        };
        return Ok((parse(ma)?, parse(mi)?));
    }
    Ok((major, minor))
}

/// Resource usage read from a job's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub oom_killed: bool,
    pub cpu_usage_usec: u64,
    pub memory_peak_bytes: u64,
}

/// One job's cgroup.
#[derive(Debug)]
pub struct JobCgroup {
    path: PathBuf,
    /// Open directory for `CLONE_INTO_CGROUP`; `None` for stale cgroups being removed.
    dir: Option<OwnedFd>,
}

impl JobCgroup {
    /// A job cgroup found on disk (e.g. left by an earlier jobd), to kill and remove.
    pub fn at(path: PathBuf) -> JobCgroup {
        JobCgroup { path, dir: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.dir.as_ref().map(|d| d.as_fd())
    }

    fn apply(&mut self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let set = |file: &str, value: &str| write(&self.path.join(file), value);
        if let Some(cpu) = limits.cpu_max() {
            set("cpu.max", &cpu)?;
        }
        if let Some(bytes) = limits.memory_bytes {
            set("memory.max", &bytes.to_string())?;
            // Without swap accounting the file does not exist, and there is no swap to limit.
            match set("memory.swap.max", "0") {
                Err(CgroupError::Write { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                result => result?,
            }
        }
        if let Some(pids) = limits.pids {
            set("pids.max", &pids.to_string())?;
        }
        for line in limits.io_max() {
            set("io.max", &line)?;
        }
        Ok(())
    }

    /// The pids in the cgroup right now.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let text = fs::read_to_string(self.path.join("cgroup.procs"))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Sends `signal` to every process in the cgroup (SIGKILL goes through `cgroup.kill`,
    /// which also catches processes forked while we look).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if signal == libc::SIGKILL {
            return fs::write(self.path.join("cgroup.kill"), "1");
        }
        for pid in self.pids()? {
            // SAFETY: kill has no memory-safety preconditions; pids come from this cgroup.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Waits until no process is left, woken by the kernel's notification on
    /// `cgroup.events` rather than by polling at intervals. Returns false on timeout.
    pub fn wait_empty(&self, timeout: Duration) -> io::Result<bool> {
        let mut events = File::open(self.path.join("cgroup.events"))?;
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        loop {
            text.clear();
            events.rewind()?;
            events.read_to_string(&mut text)?;
            if text.lines().any(|l| l == "populated 0") {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd: events.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        }
    }

    /// Reads what the job used. Missing files read as zero (e.g. memory.peak before 5.19).
    pub fn usage(&self) -> Usage {
        let read = |file: &str| fs::read_to_string(self.path.join(file)).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(key)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        Usage {
            oom_killed: field(&read("memory.events"), "oom_kill") > 0,
            cpu_usage_usec: field(&read("cpu.stat"), "usage_usec"),
            memory_peak_bytes: read("memory.peak").trim().parse().unwrap_or(0),
        }
    }

    /// Kills what is left, waits for the cgroup to empty and removes it.
    pub fn kill_and_remove(&self, timeout: Duration) -> io::Result<()> {
        self.signal(libc::SIGKILL)?;
        if !self.wait_empty(timeout)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not empty", self.path.display()),
            ));
        }
        fs::remove_dir(&self.path)
    }

    /// Removes the (empty) cgroup of a job that never started.
    pub fn remove(&self) -> io::Result<()> {
        fs::remove_dir(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let escaped = "26 25 0:24 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(
            cgroup2_mount("27 25 0:25 / /x rw - cgroup cgroup rw,memory\n"),
            None
        );
    }

    #[test]
    fn reads_the_own_cgroup() {
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/jobd.service\n").as_deref(),
            Some("/system.slice/jobd.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn limits_translate_to_cgroup_files() {
        let limits = Limits {
            cpus: Some(0.5),
            memory_bytes: Some(64 << 20),
            pids: Some(8),
            ..Default::default()
        };
        let cg = CgroupLimits::from_limits(&limits).unwrap();
        assert_eq!(cg.cpu_max().as_deref(), Some("50000 100000"));
        assert_eq!(cg.memory_bytes, Some(64 << 20));
        assert_eq!(cg.pids, Some(8));
        let io = CgroupLimits {
            io: vec![(8, 0, Some(1 << 20), None), (259, 0, None, Some(5))],
            ..Default::default()
        };
        assert_eq!(
            io.io_max(),
            vec!["8:0 rbps=1048576 wbps=max", "259:0 rbps=max wbps=5"]
        );
    }

    /// The worker's error for an io.max write that `target` answers: the cgroup code is
    /// plain file operations, so a plain folder whose `io.max` leads to a file that answers
    /// as the kernel would stages the kernel's refusals. Also returns the io.max path.
    fn io_max_written_to(target: &str) -> (tempfile::TempDir, String, crate::Error) {
        let dir = tempfile::tempdir().unwrap();
        let io_max = dir.path().join("io.max");
        std::os::unix::fs::symlink(target, &io_max).unwrap();
        let limits = CgroupLimits {
            io: vec![(7, 0, Some(1 << 20), None)],
            ..Default::default()
        };
        let err = JobCgroup::at(dir.path().to_path_buf())
            .apply(&limits)
            .unwrap_err();
        (dir, io_max.display().to_string(), crate::Error::from(err))
    }

    #[test]
    fn an_io_max_value_the_kernel_refuses_is_the_callers_error_with_path_and_value() {
        // oom_score_adj refuses this line with EINVAL, as io.max refuses a device it
        // cannot throttle.
        let (_dir, io_max, err) = io_max_written_to("/proc/self/oom_score_adj");
        assert!(matches!(err, crate::Error::LimitRefused(_)), "{err:?}");
        let shown = err.to_string();
        let expected = format!("\"7:0 rbps=1048576 wbps=max\" to {io_max}: Invalid argument");
        assert!(shown.contains(&expected), "{shown}");
    }

    #[test]
    fn a_cgroup_write_that_fails_on_the_servers_side_is_a_server_fault() {
        // /dev/full fails every write with ENOSPC: nothing the caller asked for is wrong.
        let (_dir, io_max, err) = io_max_written_to("/dev/full");
        assert!(matches!(err, crate::Error::Cgroup(_)), "{err:?}");
        assert!(err.to_string().contains(&io_max), "{err}");
    }

    #[test]
    fn devices_must_be_block_devices() {
        assert_eq!(
            whole_disk("/dev/null").unwrap_err().to_string(),
            "/dev/null is not a block device"
        );
        assert!(whole_disk("/no/such/device")
            .unwrap_err()
            .to_string()
            .starts_with("device /no/such/device:"));
    }
}
