//! Benchmarks of the `worker` library against bare baselines, with real processes.
//!
//! Run with `cargo bench -p worker --bench worker` (release build, no harness). Each
//! scenario prints its figures as it goes; a summary table with the targets closes the run.
//!
//! 1. **Start latency**: `start(true)` then `wait()`, against `std::process::Command` spawning
//!    and reaping `true`. Every job pays for a log file, two pipes, a capture thread and a
//!    `clone3`; this shows what that costs per job compared with the cheapest possible spawn.
//!    1b repeats it with 1 GiB resident in this process, as in a long-running server: a
//!    fork-style spawn copies the parent's page tables per job, so its cost grows with
//!    the parent's memory; a `vfork`-style spawn's does not.
//! 2. **Ingest throughput**: a job that `cat`s 1 GiB of 100-byte lines, timed until every
//!    byte is committed to the log, against `cat FILE > OUT` on the same filesystem (and
//!    `cat FILE | cat > OUT`, which makes the same copies as capture). Measured once with
//!    no reader (the target) and once with a follower that reads every byte as it comes.
//!    Capture adds a pipe hop, framing and a CRC per chunk; this shows whether a chatty
//!    job is slowed down by being captured.
//! 3. **Replay throughput**: a non-following reader over that 1 GiB log, with the process
//!    RSS before and after, to show readers stream from the file in bounded memory.
//! 4. **Fan-out**: 1,000 followers of one job writing 100 MiB, to show that readers share
//!    nothing with the writer and that peak memory stays bounded with many of them.
//!
//! Scenarios can be picked by number: `cargo bench -p worker --bench worker -- 2 3` runs
//! ingest and replay only (replay needs ingest's log, so 3 implies 2).
//!
//! Jobs run without cgroups, like the baselines. The run ends with how much CPU other
//! processes used during each scenario: on a shared machine a figure means little
//! without it. All scratch files live in one temporary directory under Cargo's target tmp
//! dir (or `/var/tmp` if that is a tmpfs), deleted at the end; every job started here
//! runs to its end before the scenario returns.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use worker::{CgroupMode, Config, Job, JobSpec, JobState, Worker};

/// Samples per side in scenario 1.
const START_RUNS: usize = 500;
/// Untimed runs per side before scenario 1 measures.
const START_WARMUP: usize = 25;
/// Scenario 1b: resident heap size, and samples per side (each start is slower there).
const BALLAST_BYTES: usize = 1 << 30;
const BALLAST_RUNS: usize = 100;
/// Scenario 2: length of each line, and how many lines make (just under) 1 GiB.
const LINE_LEN: usize = 100;
const INGEST_LINES: usize = (1 << 30) / LINE_LEN;
const INGEST_BYTES: u64 = (INGEST_LINES * LINE_LEN) as u64;
/// Timed repetitions per side in scenario 2 (after one warm-up); the median is reported.
const INGEST_REPS: usize = 5;
/// Scenario 4.
const FANOUT_READERS: usize = 1000;
const FANOUT_BYTES: u64 = 100 * 1024 * 1024;

const TMPFS_MAGIC: i64 = 0x0102_1994;

fn main() {
    let started = Instant::now();
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |n: &str| picked.is_empty() || picked.iter().any(|p| p == n);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let scratch = scratch_dir();
    let state_dir = scratch.path().join("state");
    let data_dir = scratch.path().join("data");
    fs::create_dir_all(&data_dir).expect("create data dir");
    // No cgroups: the bare baselines have none either, and a bench must not reorganise
    // the host's cgroup tree.
    let mut config = Config::new(&state_dir);
    config.cgroups = CgroupMode::Off;
    // The bare baselines have no PID namespace either.
    config.allow_unheld_jobs = true;
    let worker = Worker::new(config).expect("worker");
    assert_eq!(
        fs::metadata(&state_dir).expect("state dir").dev(),
        fs::metadata(&data_dir).expect("data dir").dev(),
        "state dir and data dir must be on the same filesystem"
    );
    println!(
        "scratch dir: {} ({})",
        scratch.path().display(),
        fs_name(scratch.path())
    );
    println!(
        "cpus: {}; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    let mut summary = Summary::default();
    let mut interference = Vec::new();
    if run("1") {
        let probe = CpuClock::now();
        start_latency(&runtime, &worker, &mut summary);
        interference.push(("1", probe.since()));
    }
    if run("1b") {
        let probe = CpuClock::now();
        start_latency_large_heap(&runtime, &worker, &mut summary);
        interference.push(("1b", probe.since()));
    }
    if run("2") || run("3") {
        let probe = CpuClock::now();
        let job = ingest(&runtime, &worker, &data_dir, &mut summary);
        interference.push(("2", probe.since()));
        if run("3") {
            let probe = CpuClock::now();
            replay(&runtime, &job, &state_dir, &mut summary);
            interference.push(("3", probe.since()));
        }
    }
    if run("4") {
        let probe = CpuClock::now();
        fanout(&runtime, &worker, &mut summary);
        interference.push(("4", probe.since()));
    }

    runtime.block_on(worker.shutdown());
    drop(worker);
    drop(runtime);
    scratch.close().expect("remove scratch dir");
    summary.print();
    println!(
        "\nCPU used next to each scenario: by other processes (should be near 0), and by the \
         kernel (interrupts, writeback: partly this bench's own I/O)"
    );
    for (scenario, i) in interference {
        println!(
            "  {scenario:<2}: others {:>5.1} CPU-s, kernel {:>5.1} CPU-s, of {:.1} ({:.0}% others)",
            i.others,
            i.kernel,
            i.capacity,
            100.0 * i.others / i.capacity
        );
    }
    println!("load average at end: {}", load_average());
    println!(
        "\ntotal bench time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---- 1. start latency ----

fn start_latency(rt: &Runtime, worker: &Worker, summary: &mut Summary) {
    heading("1. start latency: start(`true`) + wait() vs Command::new(\"true\").spawn() + wait()");
    let m = measure_starts(rt, worker, START_RUNS);
    m.print();
    println!(
        "  ratio worker / bare:          {:>8.2}  (target <= 1.5)",
        m.ratio()
    );
    m.summarize("1", summary);
    summary.check(
        "1",
        "ratio worker/bare",
        m.ratio(),
        "<= 1.5",
        m.ratio() <= 1.5,
    );
}

/// Scenario 1 again while this process has a large resident heap, as a busy server would.
fn start_latency_large_heap(rt: &Runtime, worker: &Worker, summary: &mut Summary) {
    heading(&format!(
        "1b. start latency as in 1, with {} MiB resident in this process",
        BALLAST_BYTES >> 20
    ));
    // Every page written, so all of it is resident.
    let ballast = std::hint::black_box(vec![1u8; BALLAST_BYTES]);
    println!("  VmRSS: {:.1} MiB", mib(mem().rss_kib));
    let m = measure_starts(rt, worker, BALLAST_RUNS);
    drop(ballast);
    m.print();
    println!(
        "  ratio worker / bare:          {:>8.2}  (no target)",
        m.ratio()
    );
    m.summarize("1b", summary);
    summary.row("1b", "ratio worker/bare", format!("{:.2}", m.ratio()), "");
}

/// Medians of interleaved bare spawns and worker jobs of `true`.
struct Starts {
    runs: usize,
    bare: Duration,
    start: Duration,
    total: Duration,
}

fn measure_starts(rt: &Runtime, worker: &Worker, runs: usize) -> Starts {
    let bare = || {
        let t = Instant::now();
        let status = Command::new("true")
            .spawn()
            .expect("spawn true")
            .wait()
            .expect("wait true");
        assert!(status.success());
        t.elapsed()
    };
    let job = || {
        rt.block_on(async {
            let t = Instant::now();
            let job = worker.start(spec(&["true"])).await.expect("start true");
            let started = t.elapsed();
            let info = job.wait().await;
            let total = t.elapsed();
            assert_eq!(info.state, JobState::Finished { exit_code: 0 });
            (started, total)
        })
    };
    for _ in 0..START_WARMUP {
        bare();
        job();
    }
    // Interleaved, so that drift on the machine affects both sides alike.
    let (mut bare_t, mut start_t, mut total_t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        bare_t.push(bare());
        let (s, t) = job();
        start_t.push(s);
        total_t.push(t);
    }
    Starts {
        runs,
        bare: median(bare_t),
        start: median(start_t),
        total: median(total_t),
    }
}

impl Starts {
    fn ratio(&self) -> f64 {
        self.total.as_secs_f64() / self.bare.as_secs_f64()
    }

    fn print(&self) {
        println!(
            "  runs per side:                {} (after {START_WARMUP} warm-up runs)",
            self.runs
        );
        println!("  bare spawn + wait, median:    {:>8.1} µs", us(self.bare));
        println!("  worker start() alone, median: {:>8.1} µs", us(self.start));
        println!("  worker start + wait, median:  {:>8.1} µs", us(self.total));
    }

    fn summarize(&self, scenario: &str, summary: &mut Summary) {
        for (figure, d) in [
            ("bare spawn+wait median", self.bare),
            ("worker start() median", self.start),
            ("worker start+wait median", self.total),
        ] {
            summary.row(scenario, figure, format!("{:.1} µs", us(d)), "");
        }
    }
}

// ---- 2. ingest throughput ----

fn ingest(rt: &Runtime, worker: &Worker, data_dir: &Path, summary: &mut Summary) -> Arc<Job> {
    heading("2. ingest: job `cat FILE` (1 GiB of 100-byte lines) vs `sh -c 'cat FILE > OUT'`");
    let input = data_dir.join("input.txt");
    let out = data_dir.join("cat.out");
    let t = Instant::now();
    write_lines(&input);
    println!(
        "  input: {} bytes ({INGEST_LINES} lines), written in {:.1} s",
        INGEST_BYTES,
        t.elapsed().as_secs_f64()
    );
    let input_arg = input.to_str().expect("utf-8 path").to_string();

    // Repetition 0 is an untimed warm-up. Every output is deleted before the next run, so
    // each run writes into page-cache memory the previous one freed: on a VM, the first
    // touch of guest memory is slow, and whichever side got fresh memory would lose.
    let (mut cat_t, mut cat_sync_t, mut pipe_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut exit_t, mut committed_t, mut done_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut unread_t = Vec::new();
    let mut last_job = None;
    for rep in 0..=INGEST_REPS {
        let (cat, cat_sync) = shell_copy("cat \"$1\" > \"$2\"", &input, &out, data_dir);
        let (pipe, _) = shell_copy("cat \"$1\" | cat > \"$2\"", &input, &out, data_dir);

        // Flush earlier runs' dirty pages so that no run pays for another's writeback.
        syncfs(data_dir);
        let unread = rt.block_on(ingest_job_unread(worker, &input_arg));
        syncfs(data_dir);
        let run = rt.block_on(ingest_job(worker, &input_arg));
        println!(
            "  {}: cat>OUT {:.3} s (+fdatasync {:.3} s), piped {:.3} s | worker, no reader: \
             all bytes committed {:.3} s | worker, followed: exit {:.3} s, all bytes \
             committed {:.3} s, end of output {:.3} s",
            if rep == 0 {
                "warm-up (not counted)".to_string()
            } else {
                format!("rep {rep}")
            },
            cat.as_secs_f64(),
            cat_sync.as_secs_f64(),
            pipe.as_secs_f64(),
            unread.as_secs_f64(),
            run.exited.as_secs_f64(),
            run.committed.as_secs_f64(),
            run.done.as_secs_f64(),
        );
        if rep > 0 {
            cat_t.push(cat);
            cat_sync_t.push(cat_sync);
            pipe_t.push(pipe);
            unread_t.push(unread);
            exit_t.push(run.exited);
            committed_t.push(run.committed);
            done_t.push(run.done);
        }
        if rep < INGEST_REPS {
            rt.block_on(worker.remove(&run.job.id()))
                .expect("remove job");
        } else {
            last_job = Some(run.job);
        }
    }
    fs::remove_file(&input).expect("remove input");

    let mbps = |d: Duration| INGEST_BYTES as f64 / d.as_secs_f64() / 1e6;
    let cat = mbps(median(cat_t));
    let cat_sync = mbps(median(cat_sync_t));
    let pipe = mbps(median(pipe_t));
    let unread = mbps(median(unread_t));
    let exited = mbps(median(exit_t));
    let committed = mbps(median(committed_t));
    let done = mbps(median(done_t));
    let ratio = unread / cat;
    let ratio_pipe = unread / pipe;
    let ratio_followed = committed / cat;
    let ratio_sync = done / cat_sync;
    println!("  medians of {INGEST_REPS} runs (MB = 10^6 bytes):");
    println!("    cat > OUT (copy_file_range in cat 9.x): {cat:>8.0} MB/s");
    println!("    cat > OUT, then fdatasync(OUT):         {cat_sync:>8.0} MB/s");
    println!("    piped: cat FILE | cat > OUT:            {pipe:>8.0} MB/s");
    println!("    worker, no reader, all bytes committed: {unread:>8.0} MB/s");
    println!("    worker followed, until the job exited:  {exited:>8.0} MB/s");
    println!("    worker followed, all bytes committed:   {committed:>8.0} MB/s");
    println!("    worker followed, end of output (synced):{done:>8.0} MB/s");
    println!("    ratio worker (no reader) / cat:         {ratio:>8.2}  (target >= 0.7)");
    println!("    ratio worker (no reader) / piped:       {ratio_pipe:>8.2}");
    println!("    ratio worker followed / cat:            {ratio_followed:>8.2}");
    println!("    ratio worker end / (cat + fdatasync):   {ratio_sync:>8.2}");
    for (figure, value) in [
        ("cat > OUT", cat),
        ("cat > OUT + fdatasync", cat_sync),
        ("piped: cat FILE, to cat > OUT", pipe),
        ("worker, no reader: all bytes committed", unread),
        ("worker followed: all bytes committed", committed),
        ("worker followed: end of output (synced)", done),
    ] {
        summary.row("2", figure, format!("{value:.0} MB/s"), "");
    }
    summary.check(
        "2",
        "ratio worker (no reader)/cat",
        ratio,
        ">= 0.7",
        ratio >= 0.7,
    );
    summary.row(
        "2",
        "ratio worker (no reader)/piped",
        format!("{ratio_pipe:.2}"),
        "",
    );
    summary.row(
        "2",
        "ratio worker followed/cat",
        format!("{ratio_followed:.2}"),
        "",
    );
    summary.row(
        "2",
        "ratio worker end/(cat+fdatasync)",
        format!("{ratio_sync:.2}"),
        "",
    );
    last_job.expect("at least one repetition")
}

/// Runs `script` with `sh -c`, `$1` = `input` and `$2` = `out`; returns the time it took
/// and the time until `out` was also synced. Deletes `out`.
fn shell_copy(script: &str, input: &Path, out: &Path, dir: &Path) -> (Duration, Duration) {
    syncfs(dir);
    let t = Instant::now();
    let status = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(input)
        .arg(out)
        .status()
        .expect("run sh");
    let copied = t.elapsed();
    assert!(status.success(), "{script}: {status}");
    File::open(out)
        .and_then(|f| f.sync_data())
        .expect("fdatasync copy");
    let synced = t.elapsed();
    assert_eq!(fs::metadata(out).expect("copy").len(), INGEST_BYTES);
    fs::remove_file(out).expect("remove copy");
    (copied, synced)
}

/// Where the worker keeps a job's output (its state dir layout).
fn job_log(state_dir: &Path, job: &Job) -> PathBuf {
    state_dir
        .join("jobs")
        .join(job.id().to_string())
        .join(worker::disk::LOG_FILE)
}

struct IngestRun {
    job: Arc<Job>,
    exited: Duration,
    committed: Duration,
    done: Duration,
}

/// One captured `cat` with nobody reading, timed until its output is complete (every byte
/// committed to the log). The job is removed afterwards.
async fn ingest_job_unread(worker: &Worker, input: &str) -> Duration {
    let t = Instant::now();
    let job = worker
        .start(spec(&["cat", input]))
        .await
        .expect("start cat");
    job.output_complete().await;
    let elapsed = t.elapsed();
    let info = job.wait().await;
    assert_eq!(info.state, JobState::Finished { exit_code: 0 });
    assert_eq!(info.output_error, None);
    let mut reader = job.logs(false).expect("read back");
    let mut got = 0u64;
    while let Some(batch) = reader.next_batch().await.expect("read output") {
        got += batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
    }
    assert_eq!(got, INGEST_BYTES, "every byte stored");
    worker.remove(&job.id()).await.expect("remove job");
    elapsed
}

/// One captured `cat`, timed by a follower: when the job exited, when the follower had
/// every byte (all of it committed to the log), and when the follower hit the end of
/// the output (which the capture thread announces after syncing the log).
async fn ingest_job(worker: &Worker, input: &str) -> IngestRun {
    let t = Instant::now();
    let job = worker
        .start(spec(&["cat", input]))
        .await
        .expect("start cat");
    let mut reader = job.logs(true).expect("follow");
    let waiter = tokio::spawn({
        let job = Arc::clone(&job);
        async move {
            let info = job.wait().await;
            (info, t.elapsed())
        }
    });
    let mut got = 0u64;
    let mut committed = None;
    while let Some(batch) = reader.next_batch().await.expect("read output") {
        got += batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
        if got == INGEST_BYTES && committed.is_none() {
            committed = Some(t.elapsed());
        }
    }
    let done = t.elapsed();
    let (info, exited) = waiter.await.expect("wait task");
    assert_eq!(got, INGEST_BYTES, "follower got every byte");
    assert_eq!(info.state, JobState::Finished { exit_code: 0 });
    assert_eq!(job.info().output_error, None);
    IngestRun {
        job,
        exited,
        committed: committed.expect("all bytes seen"),
        done,
    }
}

/// Writes `INGEST_LINES` lines of `LINE_LEN` bytes: a line number, filler, newline.
fn write_lines(path: &Path) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).expect("create input"));
    let mut line = [b'x'; LINE_LEN];
    line[LINE_LEN - 1] = b'\n';
    for n in 0..INGEST_LINES {
        let mut v = n;
        for slot in line[..10].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        w.write_all(&line).expect("write input");
    }
    w.into_inner()
        .expect("flush input")
        .sync_all()
        .expect("sync input");
}

// ---- 3. replay throughput ----

fn replay(rt: &Runtime, job: &Job, state_dir: &Path, summary: &mut Summary) {
    heading("3. replay: a non-following reader over the 1 GiB log, records discarded");
    let log = job_log(state_dir, job);
    let log_len = fs::metadata(&log).expect("job log").len();
    println!("  log file: {log_len} bytes (page cache warm from the ingest run)");

    let read_all = || {
        rt.block_on(async {
            let mut reader = job.logs(false).expect("reader");
            let t = Instant::now();
            let mut got = 0u64;
            while let Some(batch) = reader.next_batch().await.expect("read log") {
                got += batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
            }
            assert_eq!(got, INGEST_BYTES);
            t.elapsed()
        })
    };
    reset_peak_rss();
    let before = mem();
    let warm = read_all();
    let after = mem();
    let warm_mbps = INGEST_BYTES as f64 / warm.as_secs_f64() / 1e6;

    // Again with the log evicted from the page cache (this file only), to see the disk.
    let f = File::open(&log).expect("open log");
    // SAFETY: plain fadvise on a descriptor we own.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
    drop(f);
    let cold = read_all();
    let cold_mbps = INGEST_BYTES as f64 / cold.as_secs_f64() / 1e6;
    let after_cold = mem();

    let growth = after.rss_kib as f64 / 1024.0 - before.rss_kib as f64 / 1024.0;
    println!(
        "  warm (page cache): {:.3} s, {warm_mbps:.0} MB/s of payload",
        warm.as_secs_f64()
    );
    println!(
        "  cold (evicted):    {:.3} s, {cold_mbps:.0} MB/s of payload",
        cold.as_secs_f64()
    );
    println!(
        "  VmRSS before {:.1} MiB, after warm {:.1} MiB (growth {growth:+.1} MiB), \
         after cold {:.1} MiB; VmHWM during replays {:.1} MiB",
        mib(before.rss_kib),
        mib(after.rss_kib),
        mib(after_cold.rss_kib),
        mib(after_cold.hwm_kib),
    );
    summary.row(
        "3",
        "replay, warm cache",
        format!("{warm_mbps:.0} MB/s"),
        "",
    );
    summary.row(
        "3",
        "replay, cold cache",
        format!("{cold_mbps:.0} MB/s"),
        "",
    );
    summary.row(
        "3",
        "VmRSS before -> after",
        format!(
            "{:.1} -> {:.1} MiB",
            mib(before.rss_kib),
            mib(after.rss_kib)
        ),
        "",
    );
    summary.check("3", "RSS growth (MiB)", growth, "a few MiB", growth <= 8.0);
}

// ---- 4. fan-out ----

fn fanout(rt: &Runtime, worker: &Worker, summary: &mut Summary) {
    heading("4. fan-out: 1,000 followers of one job writing 100 MiB (`head -c … /dev/zero`)");
    let bytes_arg = FANOUT_BYTES.to_string();
    reset_peak_rss();
    let before = mem();
    let sampler = Sampler::start();
    let (elapsed, exited) = rt.block_on(async {
        let t = Instant::now();
        let job = worker
            .start(spec(&["head", "-c", &bytes_arg, "/dev/zero"]))
            .await
            .expect("start head");
        let mut readers = JoinSet::new();
        for _ in 0..FANOUT_READERS {
            let mut reader = job.logs(true).expect("follow");
            readers.spawn(async move {
                let mut got = 0u64;
                while let Some(batch) = reader.next_batch().await.expect("read output") {
                    got += batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
                }
                got
            });
        }
        let waiter = tokio::spawn({
            let job = Arc::clone(&job);
            async move {
                let info = job.wait().await;
                (info, t.elapsed())
            }
        });
        let mut finished = 0;
        while let Some(got) = readers.join_next().await {
            assert_eq!(got.expect("reader task"), FANOUT_BYTES);
            finished += 1;
        }
        assert_eq!(finished, FANOUT_READERS);
        let elapsed = t.elapsed();
        let (info, exited) = waiter.await.expect("wait task");
        assert_eq!(info.state, JobState::Finished { exit_code: 0 });
        (elapsed, exited)
    });
    let peak_threads = sampler.stop();
    let after = mem();
    let delivered = FANOUT_BYTES as f64 * FANOUT_READERS as f64;
    println!("  every reader got exactly {FANOUT_BYTES} bytes");
    println!(
        "  job exited after {:.2} s; all {FANOUT_READERS} readers done after {:.2} s \
         ({:.0} MB/s delivered in total)",
        exited.as_secs_f64(),
        elapsed.as_secs_f64(),
        delivered / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "  VmRSS before {:.1} MiB, after {:.1} MiB; VmHWM (peak) {:.1} MiB",
        mib(before.rss_kib),
        mib(after.rss_kib),
        mib(after.hwm_kib)
    );
    println!(
        "  threads in this process: {} before, peak {peak_threads} (only reads that would \
         wait for the disk use tokio's blocking pool)",
        before.threads
    );
    summary.row(
        "4",
        "1,000 followers x 100 MiB: elapsed",
        format!("{:.2} s", elapsed.as_secs_f64()),
        "",
    );
    summary.row(
        "4",
        "VmRSS before -> after",
        format!(
            "{:.1} -> {:.1} MiB",
            mib(before.rss_kib),
            mib(after.rss_kib)
        ),
        "",
    );
    summary.row(
        "4",
        "VmHWM (peak RSS)",
        format!("{:.1} MiB", mib(after.hwm_kib)),
        "",
    );
    summary.row(
        "4",
        "threads: before -> peak",
        format!("{} -> {peak_threads}", before.threads),
        "",
    );
}

/// Samples this process's thread count in the background and keeps the highest.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(mem().threads);
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak
            }
        });
        Sampler { stop, thread }
    }

    /// The highest thread count seen.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread")
    }
}

// ---- helpers ----

fn spec(argv: &[&str]) -> JobSpec {
    JobSpec::new("bench", argv.iter().map(|s| s.to_string()).collect())
}

fn heading(title: &str) {
    println!("\n{title}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A fresh directory on a disk-backed filesystem: Cargo's target tmp dir, or `/var/tmp`
/// when that is a tmpfs (the ingest comparison must write to a real disk).
fn scratch_dir() -> tempfile::TempDir {
    let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&target_tmp).expect("create target tmp dir");
    let base = if fs_magic(&target_tmp) == TMPFS_MAGIC {
        PathBuf::from("/var/tmp")
    } else {
        target_tmp
    };
    assert_ne!(
        fs_magic(&base),
        TMPFS_MAGIC,
        "{} is a tmpfs",
        base.display()
    );
    tempfile::Builder::new()
        .prefix("worker-bench-")
        .tempdir_in(&base)
        .expect("create scratch dir")
}

fn fs_magic(path: &Path) -> i64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statfs is plain data, filled by the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    assert_eq!(r, 0, "statfs {}", path.display());
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let magic = st.f_type as i64;
    magic
}

fn fs_name(path: &Path) -> String {
    match fs_magic(path) {
        0xEF53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        TMPFS_MAGIC => "tmpfs".into(),
        m => format!("filesystem magic {m:#x}"),
    }
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews every figure.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU time (in clock ticks) used by the whole machine, by the kernel (interrupts and
/// kernel threads, such as writeback, which partly serve this process's own I/O) and by
/// this process with its reaped children, so that a scenario can tell how much other
/// work competed with it.
struct CpuClock {
    machine_busy: u64,
    machine_total: u64,
    kernel: u64,
    own: u64,
}

/// What ran next to a scenario, in CPU-seconds.
struct Interference {
    others: f64,
    kernel: f64,
    capacity: f64,
}

impl CpuClock {
    fn now() -> Self {
        let stat = fs::read_to_string("/proc/stat").expect("read /proc/stat");
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .expect("cpu line in /proc/stat")
            .split_whitespace()
            .map(|v| v.parse().expect("tick count"))
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is within user).
        let total: u64 = cpu.iter().take(8).sum();
        let idle = cpu[3] + cpu[4];
        let irq = cpu[5] + cpu[6];
        let kernel_threads: u64 = fs::read_dir("/proc")
            .expect("read /proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let f = proc_stat_fields(&format!("/proc/{pid}/stat"))?;
                // Children of kthreadd (pid 2) are kernel threads.
                (pid == 2 || f[1] == 2).then_some(f[11] + f[12])
            })
            .sum();
        let own = proc_stat_fields("/proc/self/stat").expect("read /proc/self/stat");
        CpuClock {
            machine_busy: total - idle,
            machine_total: total,
            kernel: irq + kernel_threads,
            own: own[11..15].iter().sum(),
        }
    }

    /// What ran on the machine besides this process since `self`.
    fn since(&self) -> Interference {
        let now = CpuClock::now();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let busy = now.machine_busy.saturating_sub(self.machine_busy);
        let own = now.own.saturating_sub(self.own);
        let kernel = now.kernel.saturating_sub(self.kernel);
        Interference {
            others: busy.saturating_sub(own + kernel) as f64 / hz,
            kernel: kernel as f64 / hz,
            capacity: now.machine_total.saturating_sub(self.machine_total) as f64 / hz,
        }
    }
}

/// The numeric fields of a `/proc/<pid>/stat` from field 3 (state, as 0) on: ppid is
/// index 1, utime, stime, cutime and cstime are indexes 11 to 14.
fn proc_stat_fields(path: &str) -> Option<Vec<u64>> {
    let stat = fs::read_to_string(path).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    Some(
        rest.split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect(),
    )
}

/// Writes back every dirty page of the filesystem holding `path`.
fn syncfs(path: &Path) {
    let dir = File::open(path).expect("open dir");
    // SAFETY: syncfs on a descriptor we own.
    assert_eq!(unsafe { libc::syncfs(dir.as_raw_fd()) }, 0, "syncfs");
}

#[derive(Debug, Clone, Copy)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
}

/// This process's resident set size, its peak and its thread count, from /proc/self/status.
fn mem() -> Mem {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    Mem {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
    }
}

/// Resets VmHWM to the current RSS (Linux >= 4.0), so a scenario's peak is its own.
fn reset_peak_rss() {
    fs::write("/proc/self/clear_refs", "5").expect("reset peak RSS");
}

#[derive(Default)]
struct Summary {
    rows: Vec<[String; 4]>,
}

impl Summary {
    fn row(&mut self, scenario: &str, metric: &str, value: String, target: &str) {
        self.rows.push([
            scenario.to_string(),
            metric.to_string(),
            value,
            target.to_string(),
        ]);
    }

    fn check(&mut self, scenario: &str, metric: &str, value: f64, target: &str, met: bool) {
        let verdict = if met { "met" } else { "MISSED" };
        self.row(
            scenario,
            metric,
            format!("{value:.2}"),
            &format!("{target} ({verdict})"),
        );
    }

    fn print(&self) {
        println!("\nsummary");
        let header = [
            "#".to_string(),
            "figure".to_string(),
            "value".to_string(),
            "target".to_string(),
        ];
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |row: &[String; 4]| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("| {} |", cells.join(" | "));
        };
        line(&header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("|-{}-|", rule.join("-|-"));
        for row in &self.rows {
            line(row);
        }
    }
}
