//! Tenants kept apart by the host, not only by the API: alice's jobs attack bob's job, its
//! files and the server, as real jobs under every isolation a job may ask for, and find
//! nothing. Each user's jobs run under a uid of their own (stable across restarts, never a
//! host account's), and the state dir is the server's alone (0700 folders, 0600 files,
//! repaired at start-up). Jobs with a mount namespace get a private `/tmp`.
//!
//! These run as root, as jobd does: switching uids and making namespaces need it.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use worker::{Config, Error, Isolation, Job, JobSpec, JobState, UidRange, Worker};

mod support;
use support::{collect, live_start_ticks, run, within, Settling, StateDir};

/// How long any one wait in these tests may take.
const T: Duration = Duration::from_secs(20);

/// Bob's secret is built at run time from two halves, so that it is in his job's memory
/// and output but in no argv (which `/proc/<pid>/cmdline` shows to anyone).
const SECRET_HALVES: (&str, &str) = ("bobs-hidden", "treasure-4711");

fn secret() -> String {
    format!("{}-{}", SECRET_HALVES.0, SECRET_HALVES.1)
}

/// The worker as jobd configures it: every namespace by default, a uid per user. Jobs
/// without a PID namespace are allowed even without cgroups (which this host lacks and
/// jobd then refuses), so that every isolation a job may get where there are cgroups is
/// attacked here.
fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir);
    config.isolation = Isolation::ALL;
    config.job_uids = Some(UidRange::DYNAMIC_USER);
    config.allow_unheld_jobs = true;
    config
}

/// Opens a worker on `dir`. The state lock is an flock, and a child that a test of this
/// process spawns holds a copy of its descriptor until it execs (a few milliseconds):
/// a reopen right after a worker let go waits that out.
fn open(config: Config) -> Settling {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Worker::new(config.clone()) {
            Err(Error::FailedPrecondition(e)) if e.contains("another jobd") => {
                assert!(
                    Instant::now() < deadline,
                    "the state dir stayed locked: {e}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Settling(other.expect("a worker on the state dir")),
        }
    }
}

/// A worker as jobd runs it, on a state dir outside `/tmp` (which a job with a mount
/// namespace does not share): the attacks below then reach the real files.
struct Host {
    // Dropped in this order: the worker settles first, then the dir goes.
    worker: Settling,
    dir: StateDir,
}

impl Host {
    fn new() -> Host {
        let dir = StateDir::outside_tmp();
        Host {
            worker: open(config(dir.path())),
            dir,
        }
    }

    fn jobs_dir(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }
}

/// Every isolation a job may ask for: each subset of pid, mount and net.
fn every_isolation() -> Vec<Isolation> {
    (0..8)
        .map(|bits| Isolation {
            pid: bits & 1 != 0,
            mount: bits & 2 != 0,
            net: bits & 4 != 0,
        })
        .collect()
}

/// `owner`'s job running `sh -c script` in these namespaces.
fn sh_as(owner: &str, isolation: Isolation, script: &str) -> JobSpec {
    let spec = support::sh(script);
    JobSpec {
        owner: owner.into(),
        ..spec
    }
    .with_isolation(isolation)
}

/// Bob's job, running: it has printed its secret (so its output log holds it) and keeps
/// it in its memory, a shell variable, while it waits. Its pid and start time name it.
struct Bob {
    job: Arc<Job>,
    pid: i32,
    /// The shell that holds the secret: `pid` itself, or the child of the init at `pid`.
    program: i32,
    ticks: u64,
}

impl Bob {
    async fn start(w: &Worker, isolation: Isolation) -> Bob {
        let (a, b) = SECRET_HALVES;
        let job = w
            .start(sh_as(
                "bob",
                isolation,
                &format!("a={a}; b={b}; s=\"$a-$b\"; echo \"$s\"; sleep 1000"),
            ))
            .await
            .expect("bob's job starts");
        let mut reader = job.logs(true).unwrap();
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(&secret()) {
            let batch = within(T, "bob's secret in his output", reader.next_batch())
                .await
                .unwrap()
                .expect("bob's job ended before it printed its secret");
            batch.iter().for_each(|r| out.extend_from_slice(&r.data));
        }
        let pid = job.info().pid;
        let ticks = live_start_ticks(pid).expect("bob's job runs");
        let program = support::program_pid(&job.info());
        Bob {
            job,
            pid,
            program,
            ticks,
        }
    }

    /// Whether bob's job is still the process it was, alive, and running for the worker.
    fn alive(&self) -> bool {
        live_start_ticks(self.pid) == Some(self.ticks) && self.job.is_running()
    }

    async fn stop(self) {
        within(T, "bob's stop", self.job.stop(Duration::ZERO))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn alice_cannot_read_or_write_bobs_output_or_record_under_any_isolation() {
    let host = Host::new();
    // A file anyone may read, beside the state dir: alice's job reaching it shows that a
    // refusal below is the state dir's doing, not an unreachable path.
    let public = host.dir.scratch().join("public");
    fs::write(&public, "public\n").unwrap();
    fs::set_permissions(&public, fs::Permissions::from_mode(0o644)).unwrap();
    for isolation in every_isolation() {
        let bob = Bob::start(&host.worker, isolation).await;
        let folder = host.jobs_dir().join(bob.job.id().to_string());
        let targets = [
            folder.join("output.log"),
            folder.join("job.json"),
            host.dir.path().join(worker::USERS_FILE),
        ];
        let mut script = String::new();
        for f in &targets {
            let f = f.display();
            script.push_str(&format!(
                "cat {f} && echo 'READ {f}'; (: >> {f}) && echo 'WROTE {f}'; "
            ));
        }
        let (jobs, folder_shown, public_shown) =
            (host.jobs_dir(), folder.display(), public.display());
        script.push_str(&format!(
            "ls {jobs} && echo LISTED; touch {folder_shown}/planted && echo PLANTED; \
             cat {public_shown}",
            jobs = jobs.display()
        ));
        let (state, out, err) = run(&host.worker, sh_as("alice", isolation, &script)).await;
        assert!(
            matches!(state, JobState::Finished { .. }),
            "{isolation:?}: {state}"
        );
        assert!(
            out.ends_with("public\n"),
            "{isolation:?}: alice's job could not read a public file beside the state dir, \
             so this test shows nothing: {out} {err}"
        );
        for leak in ["READ", "WROTE", "LISTED", "PLANTED", secret().as_str()] {
            assert!(
                !out.contains(leak),
                "{isolation:?}: alice's job got through ({leak}): {out}"
            );
        }
        assert!(
            err.matches("Permission denied").count() >= 2 * targets.len() + 2,
            "{isolation:?}: not refused by permissions: {err}"
        );
        assert!(!folder.join("planted").exists());
        assert!(bob.alive(), "{isolation:?}: bob's job died");
        bob.stop().await;
    }
}

#[tokio::test]
async fn alice_cannot_signal_bobs_job_under_any_isolation() {
    let host = Host::new();
    for isolation in every_isolation() {
        let bob = Bob::start(&host.worker, isolation).await;
        let pid = bob.pid;
        let (state, out, err) = run(
            &host.worker,
            sh_as(
                "alice",
                isolation,
                &format!("kill -KILL {pid}; echo kill=$?; kill -STOP {pid}; echo stop=$?"),
            ),
        )
        .await;
        assert!(
            matches!(state, JobState::Finished { .. }),
            "{isolation:?}: {state}"
        );
        assert_eq!(
            out, "kill=1\nstop=1\n",
            "{isolation:?}: alice's job signalled bob's: {err}"
        );
        assert!(bob.alive(), "{isolation:?}: alice's job killed bob's");
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            !status.contains("State:\tT"),
            "{isolation:?}: bob's job was stopped"
        );
        bob.stop().await;
    }
}

/// Reads a process's readable memory through `/proc/<pid>/mem` and says whether `needle`
/// is in it; as alice's attack below does, from the test (root) itself.
fn memory_holds(pid: i32, needle: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    maps.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            return false;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap(),
            u64::from_str_radix(hi, 16).unwrap(),
        );
        if !perms.starts_with('r') || line.ends_with("[vvar]") || hi - lo > 64 << 20 {
            return false;
        }
        let mut buf = vec![0; (hi - lo) as usize];
        mem.read_exact_at(&mut buf, lo).is_ok() && buf.windows(needle.len()).any(|w| w == needle)
    })
}

/// Alice's attack on `/proc/<pid>/mem`: every readable mapping of bob's job, searched for
/// his secret. Prints LEAKED if it finds it, else why not.
const READ_MEMORY: &str = r#"
my ($pid, $needle) = @ARGV;
open(my $maps, "<", "/proc/$pid/maps") or die "maps: $!\n";
open(my $mem, "<", "/proc/$pid/mem") or die "mem: $!\n";
while (my $line = <$maps>) {
    my ($lo, $hi, $perms) = $line =~ /^([0-9a-f]+)-([0-9a-f]+) (\S+)/ or next;
    next if $perms !~ /^r/ || $line =~ /\[vvar\]/;
    my $len = hex($hi) - hex($lo);
    next if $len > 64 << 20;
    sysseek($mem, hex($lo), 0) or next;
    my $buf;
    my $n = sysread($mem, $buf, $len);
    if (defined $n && index($buf, $needle) >= 0) { print "LEAKED\n"; exit 0; }
}
print "searched, not found\n";
"#;

#[tokio::test]
async fn alice_cannot_read_the_memory_of_bobs_job_under_any_isolation() {
    let host = Host::new();
    for isolation in every_isolation() {
        let bob = Bob::start(&host.worker, isolation).await;
        // The secret is there to be found, and the search finds it (as root).
        assert!(
            memory_holds(bob.program, secret().as_bytes()),
            "{isolation:?}: bob's secret is not in his job's memory: this test shows nothing"
        );
        let attack = JobSpec::new(
            "alice",
            vec![
                "perl".into(),
                "-e".into(),
                READ_MEMORY.into(),
                bob.program.to_string(),
                secret(),
            ],
        )
        .with_isolation(isolation);
        let (state, out, err) = run(&host.worker, attack).await;
        assert!(
            !out.contains("LEAKED"),
            "{isolation:?}: alice's job read bob's memory"
        );
        assert_ne!(
            state,
            JobState::Finished { exit_code: 0 },
            "{isolation:?}: alice's job could open bob's memory: {out} {err}"
        );
        assert!(
            err.contains("maps: Permission denied") || err.contains("maps: No such file"),
            "{isolation:?}: {err}"
        );
        assert!(bob.alive());
        bob.stop().await;
    }
}

#[tokio::test]
async fn no_job_can_signal_the_server_under_any_isolation() {
    let host = Host::new();
    let server = std::process::id();
    for isolation in every_isolation() {
        // `kill -0` is the permission check of every signal, without a signal.
        let (state, out, err) = run(
            &host.worker,
            sh_as(
                "alice",
                isolation,
                &format!("kill -0 $$; echo self=$?; kill -0 {server}; echo server=$?"),
            ),
        )
        .await;
        assert!(
            matches!(state, JobState::Finished { .. }),
            "{isolation:?}: {state}"
        );
        assert_eq!(
            out, "self=0\nserver=1\n",
            "{isolation:?}: the job may signal the server: {err}"
        );
    }
}

/// The uid `owner`'s job runs as, from the job itself and from the worker.
async fn uid_of(w: &Worker, owner: &str) -> u32 {
    let job = w
        .start(JobSpec::new(owner, vec!["id".into(), "-u".into()]))
        .await
        .unwrap();
    let out = collect(job.logs(true).unwrap()).await.stdout();
    let info = within(T, "the job's end", job.wait()).await;
    let shown: u32 = out.trim().parse().unwrap();
    assert_eq!(
        info.uid,
        Some(shown),
        "{owner}: the record names another uid"
    );
    assert_eq!(
        info.gid,
        Some(shown),
        "{owner}: the gid is not the uid's number"
    );
    shown
}

#[tokio::test]
async fn distinct_users_get_distinct_uids_that_survive_a_restart() {
    let dir = StateDir::new();
    let range = UidRange::DYNAMIC_USER;
    let (alice, bob) = {
        let w = open(config(dir.path()));
        let alice = uid_of(&w, "alice").await;
        let bob = uid_of(&w, "bob").await;
        assert_eq!(uid_of(&w, "alice").await, alice, "alice's uid changed");
        (alice, bob)
    };
    assert_ne!(alice, bob, "alice and bob share a uid");
    for uid in [alice, bob] {
        assert!(
            (range.first()..=range.last()).contains(&uid),
            "{uid} is outside {range}"
        );
    }
    let users = dir.path().join(worker::USERS_FILE);
    assert_eq!(fs::metadata(&users).unwrap().mode() & 0o7777, 0o600);

    // A new worker on the same state dir; bob asks first this time, and still gets his.
    let w = open(config(dir.path()));
    assert_eq!(uid_of(&w, "bob").await, bob, "bob's uid changed on restart");
    assert_eq!(
        uid_of(&w, "alice").await,
        alice,
        "alice's uid changed on restart"
    );
    let carol = uid_of(&w, "carol").await;
    assert!(
        carol != alice && carol != bob,
        "carol got someone else's uid"
    );
}

/// A uid in the host's account database whose next number is neither an account nor a
/// group: a range over the two tells whether the account's uid is skipped.
fn account_uid_with_a_free_neighbour() -> u32 {
    let ids = |path: &str| -> Vec<u32> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect()
    };
    let (users, groups) = (ids("/etc/passwd"), ids("/etc/group"));
    users
        .iter()
        .copied()
        .filter(|&uid| uid > 0 && uid < 65534)
        .find(|uid| !users.contains(&(uid + 1)) && !groups.contains(&(uid + 1)))
        .expect("an account in /etc/passwd with a free uid after it")
}

#[tokio::test]
async fn a_uid_of_a_host_account_is_never_given_to_a_job() {
    let account = account_uid_with_a_free_neighbour();
    let dir = StateDir::new();
    let mut config = config(dir.path());
    config.job_uids = Some(UidRange::new(account, account + 1).unwrap());
    let w = open(config);
    assert_eq!(
        uid_of(&w, "alice").await,
        account + 1,
        "alice's job was not given the free uid after account {account}'s"
    );
    // The only other uid in the range is the account's: bob's start is refused.
    let err = w
        .start(JobSpec::new("bob", vec!["true".into()]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    assert!(err.to_string().contains("job_uid_range"), "{err}");
    assert_eq!(w.list(Some("bob")).len(), 0, "a refused start left a job");
}

/// Every path under `root` whose mode is not 0700 (folders) or 0600 (files), with its
/// mode. Paths that vanish during the walk (a spare folder being claimed) are skipped.
fn not_private(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut wrong = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            wrong.push((path.clone(), mode));
        }
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    wrong
}

/// Waits until the worker has made its spare job folders, so that a walk sees them.
fn wait_for_spares(state: &Path) {
    let deadline = Instant::now() + T;
    while fs::read_dir(state.join("spare")).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "no spare job folder was made");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn the_state_dir_is_private_after_start_up_and_after_jobs_ran() {
    let host = Host::new();
    let state = host.dir.path();
    wait_for_spares(state);
    assert_eq!(not_private(state), vec![], "after start-up");

    let (finished, _, _) = run(&host.worker, sh_as("alice", Isolation::ALL, "echo done")).await;
    assert_eq!(finished, JobState::Finished { exit_code: 0 });
    let bob = Bob::start(&host.worker, Isolation::NONE).await;
    assert!(state.join(worker::USERS_FILE).exists());
    assert!(fs::read_dir(host.jobs_dir()).unwrap().count() >= 2);
    assert_eq!(not_private(state), vec![], "with jobs ended and running");
    bob.stop().await;
    assert_eq!(not_private(state), vec![], "after a stop");
}

/// Sets every folder under `root` to `dir_mode` and every file to `file_mode`.
fn chmod_all(root: &Path, dir_mode: u32, file_mode: u32) {
    let meta = fs::symlink_metadata(root).unwrap();
    let mode = if meta.is_dir() { dir_mode } else { file_mode };
    fs::set_permissions(root, fs::Permissions::from_mode(mode)).unwrap();
    if meta.is_dir() {
        for entry in fs::read_dir(root).unwrap() {
            chmod_all(&entry.unwrap().path(), dir_mode, file_mode);
        }
    }
}

#[tokio::test]
async fn a_state_dir_left_open_by_an_older_server_is_repaired_at_start_up() {
    let dir = StateDir::new();
    let id = {
        let w = open(config(dir.path()));
        let job = w
            .start(JobSpec::new("alice", vec!["echo".into(), "kept".into()]))
            .await
            .unwrap();
        within(T, "the job's output", job.output_complete()).await;
        job.id()
    };
    // As jobd before this change left it: folders 0755, files 0644.
    chmod_all(dir.path(), 0o755, 0o644);
    assert!(!not_private(dir.path()).is_empty());

    let w = open(config(dir.path()));
    assert_eq!(not_private(dir.path()), vec![], "left as it was");
    // And the job of the older server is still whole.
    let job = w.job(&id).unwrap();
    let batch = within(T, "the kept output", job.logs(false).unwrap().next_batch())
        .await
        .unwrap()
        .expect("the output survived the repair");
    assert_eq!(&batch[0].data[..], b"kept\n");
}

/// Files at these paths are removed when it is dropped, also when the test fails: a job
/// that writes to the host's `/tmp` where it should not leaves nothing behind.
struct RemovedOnDrop(Vec<PathBuf>);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

#[tokio::test]
async fn a_job_with_a_mount_namespace_gets_a_tmp_of_its_own() {
    let host = Host::new();
    let marker = format!("tenant-marker-{}", std::process::id());
    let _on_the_host = RemovedOnDrop(vec![
        Path::new("/tmp").join(&marker),
        Path::new("/var/tmp").join(&marker),
    ]);
    let writer = host
        .worker
        .start(sh_as(
            "alice",
            Isolation::ALL,
            &format!(
                "echo mine > /tmp/{marker} && echo mine > /var/tmp/{marker} && echo written; \
                 sleep 1000"
            ),
        ))
        .await
        .unwrap();
    let mut reader = writer.logs(true).unwrap();
    let batch = within(T, "the writer's files", reader.next_batch())
        .await
        .unwrap()
        .expect("the writer ended early");
    assert_eq!(&batch[0].data[..], b"written\n");
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "written to the host's /tmp"
    );
    assert!(
        !Path::new("/var/tmp").join(&marker).exists(),
        "written to the host's /var/tmp"
    );

    // Another job, of the same user even, sees an empty tmpfs of the default size.
    let (_, out, err) = run(
        &host.worker,
        sh_as(
            "alice",
            Isolation {
                net: false,
                ..Isolation::ALL
            },
            "ls -A /tmp /var/tmp; stat -f -c '%T %b %S' /tmp /var/tmp",
        ),
    )
    .await;
    let size = worker::PRIVATE_TMP_BYTES / 4096;
    assert_eq!(
        out,
        format!("/tmp:\n\n/var/tmp:\ntmpfs {size} 4096\ntmpfs {size} 4096\n"),
        "{err}"
    );

    // Without a mount namespace a job shares the host's /tmp (sticky; its uid guards it).
    let hosts = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let (_, out, _) = run(
        &host.worker,
        sh_as(
            "alice",
            Isolation::NONE,
            &format!("test -e {} && echo shared", hosts.path().display()),
        ),
    )
    .await;
    assert_eq!(out, "shared\n");
    within(T, "the writer's stop", writer.stop(Duration::ZERO))
        .await
        .unwrap();
}
