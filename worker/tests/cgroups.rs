//! Resource control under a real cgroup v2 hierarchy with the cpu, io, memory and pids
//! controllers. This host's hierarchy may have none, so these tests are ignored by a plain
//! `cargo test`; `scripts/test-cgroups.sh` runs them with `--include-ignored`, directly
//! where the host can, otherwise inside a VM (`scripts/cgroup-vm/`). They move the test
//! process between cgroups, so they run one at a time (`--test-threads=1`).
//!
//! The two tests after "these need no controllers" run everywhere. `crash_child` is no test
//! of its own: the crash tests run it in a child process.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use worker::{CgroupMode, Config, DeviceRate, Error, JobSpec, JobState, Limits, Worker};

mod support;
use support::{collect, sh};

/// A worker whose jobd subtree lives in a fresh cgroup of its own; on drop, its jobs are
/// settled, the test process moves back to the root and every cgroup the test made must
/// be gone.
struct Fixture {
    worker: Worker,
    root: PathBuf,
    base: PathBuf,
    _state: support::StateDir,
}

fn cgroup_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    worker::disk::cgroup2_mount(&mountinfo).expect("no cgroup2 mount")
}

impl Fixture {
    fn new(name: &str, tune: impl FnOnce(&mut Config)) -> Fixture {
        let root = cgroup_root();
        fs::write(
            root.join("cgroup.subtree_control"),
            "+cpu +io +memory +pids",
        )
        .unwrap();
        let base = root.join(format!("jobworker-test-{name}"));
        fs::create_dir(&base).unwrap();
        let state = support::StateDir::new();
        let mut config = Config::new(state.path());
        config.cgroups = CgroupMode::Required;
        config.cgroup_root = Some(base.clone());
        tune(&mut config);
        let worker = Worker::new(config).unwrap();
        Fixture {
            worker,
            root,
            base,
            _state: state,
        }
    }

    fn job_cgroup(&self, id: &worker::JobId) -> PathBuf {
        self.worker.cgroup_jobs_dir().unwrap().join(id.to_string())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        fs::write(
            self.root.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap();
        // After the move: a thread settle starts in the server's cgroup could still be
        // exiting there when that cgroup is removed below.
        support::settle(&self.worker);
        let jobs = self.base.join("jobd/jobs");
        // Job cgroups are the subfolders; the rest are the cgroup's own control files.
        // (A missing jobs folder leaves the base behind too, which is asserted below.)
        let left: Vec<_> = fs::read_dir(&jobs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        for dir in [
            jobs,
            self.base.join("jobd/server"),
            self.base.join("jobd"),
            self.base.clone(),
        ] {
            let _ = fs::remove_dir(&dir);
        }
        let base_gone = !self.base.exists();
        if !std::thread::panicking() {
            assert!(left.is_empty(), "job cgroups left behind: {left:?}");
            assert!(base_gone, "{} left behind", self.base.display());
        }
    }
}

fn limited(spec: JobSpec, f: impl FnOnce(&mut Limits)) -> JobSpec {
    let mut limits = Limits::default();
    f(&mut limits);
    spec.with_limits(limits)
}

/// A job's stdout once it has ended.
async fn output(job: &worker::Job) -> String {
    collect(job.logs(true).unwrap()).await.stdout()
}

/// The job's end; it must come within a minute.
async fn ended(job: &worker::Job) -> worker::JobInfo {
    tokio::time::timeout(Duration::from_secs(60), job.wait())
        .await
        .expect("the job did not end within 60 s")
}

/// Waits up to 10 s for `pid` to be gone (or a zombie): a process leaves its cgroup, which
/// may then be removed, a moment before it is a zombie.
fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn the_job_is_in_its_cgroup_from_its_first_instruction() {
    let f = Fixture::new("first", |_| {});
    let job = f
        .worker
        .start(JobSpec::new(
            "alice",
            vec!["cat".into(), "/proc/self/cgroup".into()],
        ))
        .await
        .unwrap();
    let out = output(&job).await;
    let rel = f.job_cgroup(&job.id());
    let rel = rel.strip_prefix(&f.root).unwrap();
    assert_eq!(out, format!("0::/{}\n", rel.display()));
    assert!(
        !f.job_cgroup(&job.id()).exists(),
        "cgroup not removed after the job ended"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn memory_limit_oom_kills_and_says_so() {
    let f = Fixture::new("memory", |_| {});
    let spec = limited(
        JobSpec::new(
            "alice",
            vec![
                "python3".into(),
                "-c".into(),
                "b = b'x' * (100 << 20)".into(),
            ],
        ),
        |l| l.memory_bytes = Some(32 << 20),
    );
    let job = f.worker.start(spec).await.unwrap();
    let info = tokio::time::timeout(Duration::from_secs(120), job.wait())
        .await
        .unwrap();
    assert_eq!(info.state, JobState::Stopped { signal: 9 }, "{info:?}");
    assert!(info.oom_killed, "{info:?}");
    assert!(
        info.memory_peak_bytes > 16 << 20 && info.memory_peak_bytes <= 33 << 20,
        "{info:?}"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_job_killed_with_sigkill_by_hand_is_not_reported_as_oom() {
    let f = Fixture::new("notoom", |_| {});
    let spec = limited(
        JobSpec::new("alice", vec!["sleep".into(), "60".into()]),
        |l| l.memory_bytes = Some(32 << 20),
    );
    let job = f.worker.start(spec).await.unwrap();
    // SAFETY: signalling the process this test started, by pid.
    unsafe { libc::kill(job.info().pid, libc::SIGKILL) };
    let info = tokio::time::timeout(Duration::from_secs(30), job.wait())
        .await
        .unwrap();
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    assert!(
        !info.oom_killed,
        "exit by SIGKILL must not be guessed to be an OOM kill"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn cpu_limit_throttles_a_busy_loop() {
    let f = Fixture::new("cpu", |_| {});
    // A shell loop rather than an interpreter: in an emulated VM an interpreter's start-up
    // alone would use more CPU time than the bound checked below.
    let spec = limited(
        JobSpec::new(
            "alice",
            vec![
                "timeout".into(),
                "2".into(),
                "sh".into(),
                "-c".into(),
                "while :; do :; done".into(),
            ],
        ),
        |l| l.cpus = Some(0.1),
    );
    let started = Instant::now();
    let job = f.worker.start(spec).await.unwrap();
    let cpu_max = fs::read_to_string(f.job_cgroup(&job.id()).join("cpu.max")).unwrap();
    assert_eq!(cpu_max.trim(), "10000 100000");
    // The loop is throttled while it runs (the job lives at least 2 s).
    let stat_file = f.job_cgroup(&job.id()).join("cpu.stat");
    let throttled = |stat: &str| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stat = fs::read_to_string(&stat_file).unwrap();
        if throttled(&stat) > 0 {
            break;
        }
        assert!(job.is_running(), "the job ended unthrottled: {stat}");
        assert!(
            Instant::now() < deadline,
            "not throttled within 30 s: {stat}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = ended(&job).await;
    let took = started.elapsed();
    assert_eq!(
        info.state,
        JobState::Finished { exit_code: 124 },
        "timeout ends the loop"
    );
    assert!(took >= Duration::from_secs(2));
    // A tenth of a CPU over the job's life (start-up included: slow under emulation, and
    // itself throttled), plus what bandwidth control lets a period overrun by.
    let allowed = took.as_micros() as u64 / 10 + 150_000;
    assert!(
        info.cpu_usage_usec <= allowed,
        "used {} µs of cpu in {took:?}; allowed {allowed}",
        info.cpu_usage_usec
    );
    assert!(info.cpu_usage_usec > 0);
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn pids_limit_contains_a_fork_bomb() {
    let f = Fixture::new("pids", |_| {});
    let spec = limited(sh("bomb() { bomb | bomb & }; bomb; exec sleep 60"), |l| {
        l.pids = Some(8)
    });
    let job = f.worker.start(spec).await.unwrap();
    let cgroup = f.job_cgroup(&job.id());
    // Waits for the bomb to hit the limit (pids.events "max N" counts refused forks).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = fs::read_to_string(cgroup.join("pids.events")).unwrap();
        let refused: u64 = events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .unwrap()
            .parse()
            .unwrap();
        if refused > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the limit was not hit within 30 s: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak: u64 = fs::read_to_string(cgroup.join("pids.peak"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(peak <= 8, "pids.peak {peak}");
    // Other jobs still start and run.
    let other = f
        .worker
        .start(JobSpec::new("bob", vec!["echo".into(), "fine".into()]))
        .await
        .unwrap();
    assert_eq!(output(&other).await, "fine\n");
    assert_eq!(
        ended(&other).await.state,
        JobState::Finished { exit_code: 0 }
    );
    let info = job.stop(Duration::from_secs(2)).await.unwrap();
    assert!(!info.state.is_running());
    assert!(!cgroup.exists(), "fork bomb cgroup left behind");
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn device_write_limit_slows_direct_writes() {
    let disk = std::env::var("CGVM_DISK")
        .expect("CGVM_DISK names a scratch block device; scripts/test-cgroups.sh sets it");
    let f = Fixture::new("io", |_| {});
    let spec = limited(
        JobSpec::new(
            "alice",
            vec![
                "dd".into(),
                "if=/dev/zero".into(),
                format!("of={disk}"),
                "bs=64k".into(),
                "count=64".into(),
                "oflag=direct".into(),
            ],
        ),
        |l| {
            l.device_write_bps = vec![DeviceRate {
                device: disk.clone(),
                bytes_per_second: 1 << 20,
            }]
        },
    );
    let started = Instant::now();
    let job = f.worker.start(spec).await.unwrap();
    let io_max = fs::read_to_string(f.job_cgroup(&job.id()).join("io.max")).unwrap();
    assert!(io_max.contains("wbps=1048576"), "{io_max}");
    let info = tokio::time::timeout(Duration::from_secs(120), job.wait())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(info.state, JobState::Finished { exit_code: 0 });
    assert!(
        took >= Duration::from_millis(3500),
        "4 MiB at 1 MiB/s took only {took:?}"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn stop_kills_a_daemon_that_escaped_the_process_group() {
    let f = Fixture::new("daemon", |_| {});
    let job = f
        .worker
        .start(sh(
            "(setsid sh -c 'echo $$; exec sleep 1000' &); exec sleep 1000",
        ))
        .await
        .unwrap();
    let mut reader = job.logs(true).unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(30), reader.next_batch())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let daemon: i32 = String::from_utf8_lossy(&batch[0].data)
        .trim()
        .parse()
        .unwrap();
    // It really left the job's session and process group.
    // (The job is not isolated here: its pids are the host's.)
    let stat = fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_ne!(
        fields[2].parse::<i32>().unwrap(),
        job.info().pid,
        "daemon still in the job's group"
    );
    let cgroup = f.job_cgroup(&job.id());
    job.stop(Duration::from_secs(2)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(daemon) {
        assert!(
            Instant::now() < deadline,
            "daemon {daemon} survived the stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!cgroup.exists());
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn stale_job_cgroups_are_killed_and_removed_at_start_up() {
    let root = cgroup_root();
    fs::write(
        root.join("cgroup.subtree_control"),
        "+cpu +io +memory +pids",
    )
    .unwrap();
    let base = root.join("jobworker-test-stale");
    let stale = base.join("jobd/jobs/00000000-0000-4000-8000-000000000001");
    fs::create_dir_all(&stale).unwrap();
    fs::create_dir_all(base.join("jobd/server")).unwrap();
    // An "orphan" of an earlier jobd, started by this test.
    let mut orphan = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    fs::write(stale.join("cgroup.procs"), orphan.id().to_string()).unwrap();

    let state = support::StateDir::new();
    let mut config = Config::new(state.path());
    config.cgroups = CgroupMode::Required;
    config.cgroup_root = Some(base.clone());
    let fixture = Fixture {
        worker: Worker::new(config).unwrap(),
        root,
        base,
        _state: state,
    };
    // Worker::new returns once the stale cgroup is empty, which a dying process leaves
    // a moment before it can be reaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = orphan.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the orphan survived");
        std::thread::sleep(Duration::from_millis(10));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!stale.exists());
    drop(fixture);
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_path_that_is_not_a_block_device_is_refused() {
    let f = Fixture::new("baddev", |_| {});
    let spec = limited(JobSpec::new("alice", vec!["true".into()]), |l| {
        l.device_read_bps = vec![DeviceRate {
            device: "/dev/null".into(),
            bytes_per_second: 1 << 20,
        }]
    });
    let err = f.worker.start(spec).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(err.to_string(), "/dev/null is not a block device");
    assert!(f.worker.list(None).is_empty());
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_memory_limit_also_forbids_swap() {
    let f = Fixture::new("swap", |_| {});
    let spec = limited(
        JobSpec::new("alice", vec!["sleep".into(), "60".into()]),
        |l| l.memory_bytes = Some(32 << 20),
    );
    let job = f.worker.start(spec).await.unwrap();
    let cgroup = f.job_cgroup(&job.id());
    let read = |file: &str| fs::read_to_string(cgroup.join(file)).unwrap();
    let (max, swap) = (read("memory.max"), read("memory.swap.max"));
    job.stop(Duration::from_secs(2)).await.unwrap();
    assert_eq!(max.trim(), (32u64 << 20).to_string());
    // Without it the job could page out past its memory limit instead of being OOM-killed.
    assert_eq!(swap.trim(), "0", "memory.swap.max");
}

/// Reads `count` 64 KiB blocks of `device` with O_DIRECT (past the page cache, so the
/// disk's limit applies) as a job with `limits`; returns the job's io.max and how long the
/// job took.
async fn timed_direct_read(f: &Fixture, device: &str, limits: Limits) -> (String, Duration) {
    let spec = JobSpec::new(
        "alice",
        vec![
            "dd".into(),
            format!("if={device}"),
            "of=/dev/null".into(),
            "bs=64k".into(),
            "count=64".into(),
            "iflag=direct".into(),
        ],
    )
    .with_limits(limits);
    let started = Instant::now();
    let job = f.worker.start(spec).await.unwrap();
    let io_max = fs::read_to_string(f.job_cgroup(&job.id()).join("io.max")).unwrap();
    let info = tokio::time::timeout(Duration::from_secs(120), job.wait())
        .await
        .unwrap();
    assert_eq!(info.state, JobState::Finished { exit_code: 0 }, "{info:?}");
    (io_max, started.elapsed())
}

fn read_limit(device: &str, bytes_per_second: u64) -> Limits {
    Limits {
        device_read_bps: vec![DeviceRate {
            device: device.into(),
            bytes_per_second,
        }],
        ..Default::default()
    }
}

/// `major:minor` of a block device node.
fn dev_number(path: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let rdev = fs::metadata(path).unwrap().rdev();
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

fn scratch_disk() -> String {
    std::env::var("CGVM_DISK")
        .expect("CGVM_DISK names a scratch block device; scripts/test-cgroups.sh sets it")
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn device_read_limit_slows_direct_reads() {
    let disk = scratch_disk();
    let f = Fixture::new("ioread", |_| {});
    let (io_max, took) = timed_direct_read(&f, &disk, read_limit(&disk, 1 << 20)).await;
    assert_eq!(
        io_max.trim(),
        format!(
            "{} rbps=1048576 wbps=max riops=max wiops=max",
            dev_number(&disk)
        )
    );
    assert!(
        took >= Duration::from_millis(3500),
        "4 MiB at 1 MiB/s took only {took:?}"
    );
}

/// The scratch disk with an MBR partition table of one partition, made with no tool but
/// the kernel (the guest has no sfdisk); the table is wiped again on drop.
struct Partitioned {
    disk: String,
    partition: String,
}

/// `_IO(0x12, 95)`: asks the kernel to re-read a disk's partition table.
const BLKRRPART: libc::c_ulong = 0x125f;

impl Partitioned {
    fn new(disk: &str) -> Partitioned {
        let sys = format!("/sys/dev/block/{}", dev_number(disk));
        assert!(
            !std::path::Path::new(&sys).join("partition").exists(),
            "{disk} is a partition, not a disk"
        );
        let sectors: u64 = fs::read_to_string(format!("{sys}/size"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        const FIRST: u64 = 2048;
        assert!(sectors > FIRST + 2048, "{disk} is too small");
        let mut mbr = [0u8; 512];
        let entry = &mut mbr[446..462];
        entry[4] = 0x83; // Linux
        entry[8..12].copy_from_slice(&(FIRST as u32).to_le_bytes());
        entry[12..16].copy_from_slice(&((sectors - FIRST) as u32).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        Self::write_table(disk, &mbr);
        // The kernel names the partition (vda1, nvme0n1p1, ...) in the disk's sysfs folder;
        // devtmpfs then makes its node.
        let first_partition = || {
            fs::read_dir(&sys).ok()?.flatten().find_map(|e| {
                let number = fs::read_to_string(e.path().join("partition")).ok()?;
                (number.trim() == "1").then(|| format!("/dev/{}", e.file_name().to_string_lossy()))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let partition = loop {
            if let Some(p) = first_partition().filter(|p| std::path::Path::new(p).exists()) {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the partition of {disk} did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Partitioned {
            disk: disk.to_string(),
            partition,
        }
    }

    fn write_table(disk: &str, sector: &[u8; 512]) {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new().write(true).open(disk).unwrap();
        file.write_all_at(sector, 0).unwrap();
        file.sync_all().unwrap();
        // SAFETY: BLKRRPART takes no argument; the fd is an open block device.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART as _) };
        assert_eq!(rc, 0, "BLKRRPART: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Partitioned {
    fn drop(&mut self) {
        Self::write_table(&self.disk, &[0; 512]);
    }
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_partition_is_limited_through_its_whole_disk() {
    let disk = scratch_disk();
    let parts = Partitioned::new(&disk);
    let f = Fixture::new("iopart", |_| {});
    let (io_max, took) =
        timed_direct_read(&f, &parts.partition, read_limit(&parts.partition, 1 << 20)).await;
    assert_ne!(dev_number(&parts.partition), dev_number(&disk));
    // io.max takes whole disks only: the limit is on the disk that holds the partition.
    assert_eq!(
        io_max.trim(),
        format!(
            "{} rbps=1048576 wbps=max riops=max wiops=max",
            dev_number(&disk)
        )
    );
    assert!(
        took >= Duration::from_millis(3500),
        "4 MiB at 1 MiB/s through the partition took only {took:?}"
    );
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn the_base_defaults_to_the_servers_own_cgroup_and_the_server_moves_to_jobd_server() {
    let root = cgroup_root();
    fs::write(
        root.join("cgroup.subtree_control"),
        "+cpu +io +memory +pids",
    )
    .unwrap();
    // This process stands in for jobd started in a cgroup of its own (e.g. a systemd unit).
    let own = root.join("jobworker-test-own");
    fs::create_dir(&own).unwrap();
    fs::write(own.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    let config = |state: &std::path::Path| {
        let mut config = Config::new(state);
        config.cgroups = CgroupMode::Required;
        assert!(config.cgroup_root.is_none());
        config
    };
    let state = support::StateDir::new();
    let worker = Worker::new(config(state.path()));
    let f = Fixture {
        worker: worker.unwrap(),
        root: root.clone(),
        base: own.clone(),
        _state: state,
    };
    let server = "0::/jobworker-test-own/jobd/server\n";
    assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), server);
    assert_eq!(f.worker.cgroup_jobs_dir(), Some(own.join("jobd/jobs")));
    let job = f
        .worker
        .start(JobSpec::new(
            "alice",
            vec!["cat".into(), "/proc/self/cgroup".into()],
        ))
        .await
        .unwrap();
    assert_eq!(
        output(&job).await,
        format!("0::/jobworker-test-own/jobd/jobs/{}\n", job.id())
    );
    ended(&job).await;
    // A worker started again from jobd/server (a restart in place) keeps the same base
    // rather than nesting a new subtree inside its server cgroup.
    let state = support::StateDir::new();
    let again = Worker::new(config(state.path())).unwrap();
    let jobs_dir = again.cgroup_jobs_dir();
    support::settle(&again);
    drop(again);
    assert_eq!(jobs_dir, Some(own.join("jobd/jobs")));
    assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), server);
    assert!(!own.join("jobd/server/jobd").exists());
    drop(f);
}

/// Starts a daemon that leaves the job's session (double fork and setsid) and prints
/// "<its pid> <its session id>", then ends the job's main process with `then`.
fn with_daemon(then: &str) -> JobSpec {
    sh(&format!(
        "d=$( (setsid sh -c 'echo $$ $(cut -d\" \" -f6 /proc/$$/stat); exec sleep 1000 >/dev/null' &) ); echo $d; {then}"
    ))
}

fn parse_daemon(line: &str) -> (i32, i32) {
    let mut it = line.split_whitespace().map(|v| v.parse::<i32>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_daemon_dies_when_its_jobs_main_process_exits() {
    let f = Fixture::new("leftover", |_| {});
    let job = f.worker.start(with_daemon("exit 3")).await.unwrap();
    let cgroup = f.job_cgroup(&job.id());
    let leader = job.info().pid;
    let info = tokio::time::timeout(Duration::from_secs(30), job.wait())
        .await
        .expect("the job did not end with its main process");
    assert_eq!(info.state, JobState::Finished { exit_code: 3 });
    let (daemon, sid) = parse_daemon(&output(&job).await);
    assert_eq!(sid, daemon, "the daemon did not get a session of its own");
    assert_ne!(sid, leader);
    assert!(wait_gone(daemon), "daemon {daemon} outlived its job");
    assert!(!cgroup.exists(), "cgroup not removed after the job ended");
}

/// The crash tests' worker runs in a child process of this test binary (this test, run
/// with the variable set): it starts a job with a daemon, says so in a file, and waits to
/// be killed with SIGKILL. As an ordinary test it does nothing.
const CRASH_CHILD: &str = "JOBWORKER_TEST_CRASH_CHILD";
const CRASH_READY: &str = "crashed-job";

#[tokio::test]
#[ignore = "the crash tests run it in a child process"]
async fn crash_child() {
    let Some(args) = std::env::var_os(CRASH_CHILD) else {
        return;
    };
    let args = args.into_string().unwrap();
    let (state, base) = args.split_once('\t').unwrap();
    let mut config = Config::new(state);
    config.cgroups = CgroupMode::Required;
    config.cgroup_root = Some(base.into());
    let worker = Worker::new(config).unwrap();
    let job = worker.start(with_daemon("exec sleep 1000")).await.unwrap();
    let mut reader = job.logs(true).unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(30), reader.next_batch())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let daemon = String::from_utf8(batch[0].data.to_vec()).unwrap();
    let ready = PathBuf::from(state).join(CRASH_READY);
    let tmp = ready.with_extension("tmp");
    fs::write(
        &tmp,
        format!("{} {} {}", job.id(), job.info().pid, daemon.trim()),
    )
    .unwrap();
    fs::rename(&tmp, &ready).unwrap();
    // Killed long before this; should the parent be gone, do not leave the job behind.
    tokio::time::sleep(Duration::from_secs(120)).await;
    worker.shutdown().await;
}

/// A job left running by a worker that was killed with SIGKILL.
struct Crashed {
    id: worker::JobId,
    leader: i32,
    daemon: i32,
    cgroup: PathBuf,
}

/// Runs [`crash_child`]'s worker with its cgroups under `base`, and kills it once its job
/// and the job's daemon run.
fn crash_a_worker(state: &std::path::Path, base: &std::path::Path) -> Crashed {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--include-ignored", "--nocapture"])
        .env(
            CRASH_CHILD,
            format!("{}\t{}", state.display(), base.display()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = state.join(CRASH_READY);
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        if let Ok(text) = fs::read_to_string(&ready) {
            break text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the crash child ended before its job ran: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the crash child's job did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The crash. wait() returns at once: SIGKILL cannot be caught or blocked.
    child.kill().unwrap();
    child.wait().unwrap();
    fs::remove_file(&ready).unwrap();
    let mut fields = text.split_whitespace();
    let id: worker::JobId = fields.next().unwrap().parse().unwrap();
    let leader: i32 = fields.next().unwrap().parse().unwrap();
    let (daemon, sid) = parse_daemon(&fields.collect::<Vec<_>>().join(" "));
    assert_ne!(sid, leader, "the daemon is still in the job's session");
    let cgroup = base.join("jobd/jobs").join(id.to_string());
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    let procs: Vec<i32> = procs.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        procs.contains(&leader) && procs.contains(&daemon),
        "the job's processes outlive the crash in its cgroup: {procs:?}"
    );
    let record = worker::disk::read_record(&state.join("jobs").join(id.to_string())).unwrap();
    assert_eq!(record.state, worker::JobState::Running);
    assert_eq!(record.cgroup.as_ref(), Some(&cgroup));
    Crashed {
        id,
        leader,
        daemon,
        cgroup,
    }
}

/// What the worker after the crash must have done, whatever its cgroup set-up.
fn assert_recovered(worker: &Worker, state: &std::path::Path, crashed: &Crashed) {
    assert!(wait_gone(crashed.leader), "the job's main process survived");
    assert!(wait_gone(crashed.daemon), "the job's daemon survived");
    assert!(!crashed.cgroup.exists(), "the job's cgroup was not removed");
    let info = worker.job(&crashed.id).unwrap().info();
    assert_eq!(info.state, JobState::Stopped { signal: 9 });
    assert!(info.server_lost, "{info:?}");
    let record =
        worker::disk::read_record(&state.join("jobs").join(crashed.id.to_string())).unwrap();
    assert_eq!(record.state, worker::JobState::Stopped { signal: 9 });
    assert!(record.server_lost);
}

#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_crashed_workers_job_and_its_daemon_are_killed_through_its_cgroup_at_restart() {
    let root = cgroup_root();
    fs::write(
        root.join("cgroup.subtree_control"),
        "+cpu +io +memory +pids",
    )
    .unwrap();
    let base = root.join("jobworker-test-crash");
    fs::create_dir(&base).unwrap();
    let state = support::StateDir::new();
    let crashed = crash_a_worker(state.path(), &base);
    let mut config = Config::new(state.path());
    config.cgroups = CgroupMode::Required;
    config.cgroup_root = Some(base.clone());
    let worker = Worker::new(config).unwrap();
    assert_recovered(&worker, state.path(), &crashed);
    drop(Fixture {
        worker,
        root,
        base,
        _state: state,
    });
}

/// Restarted with cgroups off (or another base), the worker finds the job's processes
/// through the cgroup its record names, not in a cgroup subtree of its own.
#[tokio::test]
#[ignore = "needs cgroup v2 with cpu, io, memory, pids: run scripts/test-cgroups.sh"]
async fn a_crashed_workers_recorded_cgroup_is_killed_by_a_worker_without_cgroups() {
    let root = cgroup_root();
    fs::write(
        root.join("cgroup.subtree_control"),
        "+cpu +io +memory +pids",
    )
    .unwrap();
    let base = root.join("jobworker-test-crash-off");
    fs::create_dir(&base).unwrap();
    let state = support::StateDir::new();
    let crashed = crash_a_worker(state.path(), &base);
    let mut config = Config::new(state.path());
    config.cgroups = CgroupMode::Off;
    let worker = Worker::new(config).unwrap();
    assert!(worker.cgroup_jobs_dir().is_none());
    assert_recovered(&worker, state.path(), &crashed);
    support::settle(&worker);
    for dir in ["jobd/jobs", "jobd/server", "jobd", ""] {
        fs::remove_dir(base.join(dir)).unwrap();
    }
}

// ---- these need no controllers and run everywhere ----

#[tokio::test]
async fn required_cgroups_refuse_to_start_without_a_hierarchy() {
    let state = tempfile::tempdir().unwrap();
    let not_a_cgroup = tempfile::tempdir().unwrap();
    let mut config = Config::new(state.path());
    config.cgroups = CgroupMode::Required;
    config.cgroup_root = Some(not_a_cgroup.path().to_path_buf());
    let err = Worker::new(config).err().expect("started without cgroups");
    assert!(
        err.to_string()
            .starts_with("cgroups are required but unusable"),
        "{err}"
    );
}

#[tokio::test]
async fn auto_runs_without_limits_and_refuses_jobs_that_ask_for_them() {
    let not_a_cgroup = tempfile::tempdir().unwrap();
    let worker =
        support::TestWorker::with(|c| c.cgroup_root = Some(not_a_cgroup.path().to_path_buf()));
    assert!(worker.cgroup_jobs_dir().is_none());
    let err = worker
        .start(limited(JobSpec::new("alice", vec!["true".into()]), |l| {
            l.pids = Some(8)
        }))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    let job = worker
        .start(JobSpec::new("alice", vec!["true".into()]))
        .await
        .unwrap();
    assert_eq!(ended(&job).await.state, JobState::Finished { exit_code: 0 });
}

/// Changes a global sysctl, so it runs only in the VM with the other tests here.
#[tokio::test]
#[ignore = "sets user.max_net_namespaces to 0: run in the VM by scripts/test-cgroups.sh"]
async fn a_namespace_the_kernel_refuses_is_a_clear_start_error() {
    const KNOB: &str = "/proc/sys/user/max_net_namespaces";
    let saved = fs::read_to_string(KNOB).unwrap();
    fs::write(KNOB, "0").unwrap();
    let state = support::StateDir::new();
    let mut config = Config::new(state.path());
    config.cgroups = CgroupMode::Off;
    config.isolation = worker::Isolation::ALL;
    let worker = Worker::new(config);
    let result = match &worker {
        Ok(w) => Some((
            w.default_isolation(),
            w.start(
                JobSpec::new("alice", vec!["true".into()]).with_isolation(worker::Isolation::ALL),
            )
            .await,
        )),
        Err(_) => None,
    };
    fs::write(KNOB, saved.trim()).unwrap();
    let (default, started) = result.expect("the worker did not start");
    // The server's default drops what the kernel refuses...
    assert!(default.pid && default.mount && !default.net, "{default:?}");
    // ...but a job that asks for it explicitly gets a clear error, not a job without it.
    let err = started.expect_err("a job started without the namespace it asked for");
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("the kernel refused the job's namespaces"),
        "{err}"
    );
    assert!(worker.unwrap().list(None).is_empty());
}
