//! Crash at random points: the real `jobd`, SIGKILLed while 20 Starts are in flight, then
//! restarted on the same state dir, many rounds. After each restart no process of the
//! round may run on, and every job whose Start returned an id must be listed as ended.
//!
//! Even rounds run with the server's default isolation, odd ones with only a PID namespace;
//! on a host without cgroups recovery finds a job's processes by its session alone.
//!
//! Each round's jobs are `sleep 3000.<tag><round>`, so the test recognises its own
//! processes by `/proc/<pid>/cmdline` (for detection only: whatever it finds it kills by
//! pid).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobc::client::{self, Target};
use proto::v1 as pb;
use testkit::Jobd;

const ROUNDS: u32 = 50;
const STARTS_PER_ROUND: usize = 20;
/// The latest point, after the Starts are sent, at which jobd is killed.
const MAX_KILL_DELAY_MS: u64 = 60;
/// How long any one wait in this test may take.
const T: Duration = Duration::from_secs(20);

/// A small xorshift generator: the kill delays need no more, and the seed is printed so
/// a failing run can be repeated (`CRASH_SEED=...`).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash test seed: CRASH_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts jobd on `state`; retries while the state dir is still locked: a process that
/// the killed jobd had cloned holds a copy of the lock until it execs or exits.
fn start_jobd(state: &Path, pki: &Path) -> Jobd {
    let deadline = Instant::now() + T;
    loop {
        let started = Jobd::spawn_with(
            &testkit::jobd_bin(),
            "warn,jobd=info",
            state,
            &pki.join("ca.pem"),
            &pki.join("server.pem"),
            &pki.join("server-key.pem"),
            &[],
        );
        match started {
            Ok(jobd) => return jobd,
            Err((_, log)) => {
                let locked = log.iter().any(|l| l.contains("is using the state dir"));
                assert!(
                    locked && Instant::now() < deadline,
                    "jobd did not start: {log:#?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Live processes whose argv is `sleep <arg>`, by pid.
fn processes_with_arg(arg: &str) -> Vec<i32> {
    let wanted = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.ends_with(wanted.as_bytes()) && c.starts_with(b"sleep\0"))
        })
        .collect()
}

/// Live processes whose command line names `text` (this test's state dir): its jobd, and
/// any process a jobd cloned that never exec'd.
fn processes_naming(text: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
        })
        .collect()
}

/// Kills, by pid, every process of the rounds seen so far when dropped, and whatever a
/// jobd of this test cloned and left unexec'd: a failing round leaves nothing running.
struct Cleanup {
    args: Vec<String>,
    state: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut pids: Vec<i32> = self
            .args
            .iter()
            .flat_map(|a| processes_with_arg(a))
            .collect();
        pids.extend(processes_naming(&self.state));
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions; the pid was just found
            // running this test's own marker argument or naming its own state dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn target(port: u16, pki: &Path) -> Target {
    Target {
        connect_timeout: T,
        ..testkit::target(pki, "admin", port)
    }
}

#[tokio::test]
async fn a_jobd_killed_at_random_points_during_starts_loses_no_job_and_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    testkit::pki_init(&pki);
    let state = dir.path().join("state");
    let mut rng = Rng::new();
    // Tells this run's processes from those of any other run on the host.
    let tag = 100_000 + rng.below(900_000);
    let mut cleanup = Cleanup {
        args: Vec::new(),
        state: state.display().to_string(),
    };
    let began = Instant::now();
    let mut jobd = start_jobd(&state, &pki);
    let (mut started_total, mut failed_total) = (0, 0);

    for round in 0..ROUNDS {
        let arg = format!("3000.{tag}{round:03}");
        cleanup.args.push(arg.clone());
        let client = tokio::time::timeout(T, client::connect(&target(jobd.port, &pki)))
            .await
            .expect("connect within the deadline")
            .unwrap();
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..STARTS_PER_ROUND {
            let mut client = client.clone();
            let argv = vec!["sleep".to_string(), arg.clone()];
            // Odd rounds with only a PID namespace (the least a server without cgroups
            // runs): no network namespace to make, so the starts come faster.
            let isolation = (round % 2 == 1).then_some(pb::Isolation {
                pid: true,
                ..Default::default()
            });
            starts.spawn(async move {
                client
                    .start(pb::StartRequest {
                        argv,
                        isolation,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().job_id)
            });
        }
        // The crash point: a random moment during the starts.
        tokio::time::sleep(Duration::from_millis(rng.below(MAX_KILL_DELAY_MS + 1))).await;
        jobd.kill();
        let mut ids = Vec::new();
        while let Some(result) = tokio::time::timeout(T, starts.join_next())
            .await
            .expect("every Start ends once jobd is gone")
        {
            match result.unwrap() {
                Ok(id) => ids.push(id),
                Err(_) => failed_total += 1,
            }
        }
        started_total += ids.len();
        drop(client);

        jobd = start_jobd(&state, &pki);
        // jobd listens only once it has restored every job: what runs now runs untracked.
        let alive = processes_with_arg(&arg);
        assert!(
            alive.is_empty(),
            "round {round}: {} process(es) of this round run on after the restart, \
             untracked: pids {alive:?}",
            alive.len()
        );
        let mut client = tokio::time::timeout(T, client::connect(&target(jobd.port, &pki)))
            .await
            .expect("connect within the deadline")
            .unwrap();
        // Every page: List is paged, and the rounds add up to more than one page.
        let mut listed: HashMap<String, pb::JobStatus> = HashMap::new();
        let mut page_token = String::new();
        loop {
            let request = pb::ListRequest {
                page_token: std::mem::take(&mut page_token),
                ..Default::default()
            };
            let page = tokio::time::timeout(T, client.list(request))
                .await
                .expect("List within the deadline")
                .unwrap()
                .into_inner();
            listed.extend(page.jobs.into_iter().map(|j| (j.job_id.clone(), j)));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        for id in &ids {
            let job = listed.get(id).unwrap_or_else(|| {
                panic!("round {round}: job {id}, whose Start returned, is not listed")
            });
            assert_ne!(
                job.state,
                pb::JobState::Running as i32,
                "round {round}: job {id} is listed as running after the restart"
            );
        }
        for job in listed.values() {
            assert!(
                job.state != pb::JobState::Running as i32,
                "round {round}: job {} of an earlier jobd is listed as running",
                job.job_id
            );
        }
        // Nothing is left in `jobs/` that the restart did not account for.
        let folders = std::fs::read_dir(state.join("jobs")).unwrap().count();
        assert_eq!(
            folders,
            listed.len(),
            "round {round}: job folders that List does not show"
        );
    }
    drop(jobd);
    let elapsed = began.elapsed();
    eprintln!(
        "{ROUNDS} rounds in {elapsed:?}: {started_total} starts returned an id, \
         {failed_total} failed with the crash"
    );
    assert!(
        started_total > 0 && failed_total > 0,
        "the kills never fell during the starts: {started_total} returned, {failed_total} failed"
    );
}
