//! Bounded for everyone: List is paged (past 10,000 jobs and past 64 MiB of argv, with
//! every page small and jobd's memory flat), per-user quotas of running and kept jobs,
//! and handshakes capped per source address with a short timeout, so that a flood of idle
//! connections from one address leaves everyone else served.
//!
//! Many jobs are made cheaply: one real job is run, then its folder is copied with new
//! ids, owners and start times before jobd starts on the state dir, as a restart would
//! find them.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jobc::client::{self, Target};
use jobd::server::ServerConfig;
use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use rustls::pki_types::ServerName;
use tonic::transport::Channel;
use tonic::Code;

mod support;
use support::{Scratch, TestServer};

/// gRPC's default largest message, which most clients keep (jobc allows more).
const GRPC_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

async fn try_start(
    c: &mut JobServiceClient<Channel>,
    argv: &[&str],
) -> Result<String, tonic::Status> {
    c.start(pb::StartRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().job_id)
}

async fn start(c: &mut JobServiceClient<Channel>, argv: &[&str]) -> String {
    try_start(c, argv).await.unwrap()
}

async fn stop(c: &mut JobServiceClient<Channel>, id: &str) -> pb::JobStatus {
    c.stop(pb::StopRequest {
        job_id: id.into(),
        grace_period: Some(proto::Duration {
            seconds: 0,
            nanos: 0,
        }),
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

/// Waits (up to 10 s) until the job is no longer running.
async fn wait_ended(c: &mut JobServiceClient<Channel>, id: &str) -> pb::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = c
            .status(pb::StatusRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if st.state != pb::JobState::Running as i32 {
            return st;
        }
        assert!(Instant::now() < deadline, "job {id} still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every page of a list, in order; fails past `max_pages` (a token that never ends).
async fn pages(
    c: &mut JobServiceClient<Channel>,
    mut request: pb::ListRequest,
    max_pages: usize,
) -> Result<Vec<pb::ListResponse>, tonic::Status> {
    let mut all = Vec::new();
    loop {
        let page = c.list(request.clone()).await?.into_inner();
        let token = page.next_page_token.clone();
        all.push(page);
        if token.is_empty() {
            return Ok(all);
        }
        assert!(all.len() < max_pages, "more than {max_pages} pages");
        request.page_token = token;
    }
}

/// The list's order: start time, then id.
fn place(j: &pb::JobStatus) -> (i64, i32, String) {
    let t = j.started_at.unwrap_or_default();
    (t.seconds, t.nanos, j.job_id.clone())
}

/// The jobs of all pages, checking that they come in the list's order, each once.
fn jobs_in_order(pages: &[pb::ListResponse]) -> Vec<pb::JobStatus> {
    let jobs: Vec<pb::JobStatus> = pages.iter().flat_map(|p| p.jobs.clone()).collect();
    for pair in jobs.windows(2) {
        assert!(
            place(&pair[0]) < place(&pair[1]),
            "out of order or repeated: {:?} then {:?}",
            place(&pair[0]),
            place(&pair[1])
        );
    }
    jobs
}

/// Runs one job to its end in a server of its own on the scratch state dir, then copies
/// its folder `n` times with new ids; `describe(i)` gives copy i's owner and start time
/// (nanoseconds since the epoch). Returns the template job's id.
async fn fill_state(
    scratch: &Scratch,
    argv: &[&str],
    n: usize,
    describe: impl Fn(usize) -> (&'static str, i64),
) -> String {
    let server = TestServer::start_in(scratch, |_| {}).await;
    let mut alice = server.client_limited("alice", GRPC_MESSAGE_LIMIT).await;
    let id = start(&mut alice, argv).await;
    wait_ended(&mut alice, &id).await;
    server.shutdown().await;

    let jobs = scratch.state().join("jobs");
    let template = jobs.join(&id);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(template.join("job.json")).unwrap()).unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(&template)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "job.json")
        .collect();
    for i in 0..n {
        let (owner, started) = describe(i);
        let copy_id = uuid::Uuid::new_v4().to_string();
        let dir = jobs.join(&copy_id);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::metadata(&template).unwrap().permissions())
            .unwrap();
        for file in &files {
            std::fs::copy(file, dir.join(file.file_name().unwrap())).unwrap();
        }
        let mut copy = record.clone();
        copy["id"] = copy_id.into();
        copy["owner"] = owner.into();
        copy["started_at_unix_nanos"] = started.into();
        copy["ended_at_unix_nanos"] = (started + 1_000_000).into();
        std::fs::write(dir.join("job.json"), serde_json::to_vec(&copy).unwrap()).unwrap();
    }
    id
}

/// 2026-01-01, in nanoseconds since the epoch: before any job this test runs for real.
const BASE_NANOS: i64 = 1_767_225_600_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_ten_thousand_jobs_each_once() {
    let scratch = Scratch::new();
    let owners = ["admin", "alice", "bob"];
    // Four jobs share each start time, so the id must order them.
    let template = fill_state(&scratch, &["true"], 10_000, |i| {
        (owners[i % 3], BASE_NANOS + (i / 4) as i64)
    })
    .await;
    let server = TestServer::start_in(&scratch, |_| {}).await;
    let mut admin = server.client_limited("admin", GRPC_MESSAGE_LIMIT).await;
    let mut alice = server.client_limited("alice", GRPC_MESSAGE_LIMIT).await;
    let mut bob = server.client_limited("bob", GRPC_MESSAGE_LIMIT).await;
    let running = start(&mut bob, &["sleep", "60"]).await;
    let total: usize = 10_000 + 2;

    // The server's default page size (100), then the largest (1000), then one too large.
    for (asked, expected) in [(0, 100), (1000, 1000), (5000, 1000), (77, 77)] {
        let pages = pages(
            &mut admin,
            pb::ListRequest {
                page_size: asked,
                ..Default::default()
            },
            1000,
        )
        .await
        .unwrap();
        let (last, full) = pages.split_last().unwrap();
        for page in full {
            assert_eq!(page.jobs.len(), expected, "page_size {asked}");
        }
        assert!(last.jobs.len() <= expected);
        assert_eq!(pages.len(), total.div_ceil(expected), "page_size {asked}");
        let jobs = jobs_in_order(&pages);
        assert_eq!(jobs.len(), total, "page_size {asked}");
        let ids: HashSet<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(ids.len(), total, "page_size {asked}: a job seen twice");
        assert!(ids.contains(template.as_str()) && ids.contains(running.as_str()));
        // Started last, the running job ends the list.
        assert_eq!(jobs.last().unwrap().job_id, running);
    }

    // A user's pages hold their own jobs only: a third of the copies, and the template.
    let theirs = jobs_in_order(
        &pages(&mut alice, pb::ListRequest::default(), 1000)
            .await
            .unwrap(),
    );
    assert_eq!(theirs.len(), 10_000 / 3 + 1);
    assert!(theirs.iter().all(|j| j.owner == "alice"));

    // Filters, for an admin: by owner and by state.
    let bobs = jobs_in_order(
        &pages(
            &mut admin,
            pb::ListRequest {
                owner: "bob".into(),
                page_size: 1000,
                ..Default::default()
            },
            1000,
        )
        .await
        .unwrap(),
    );
    assert_eq!(bobs.len(), 10_000 / 3 + 1);
    assert!(bobs.iter().all(|j| j.owner == "bob"));
    let running_pages = pages(
        &mut admin,
        pb::ListRequest {
            state: pb::ListStateFilter::Running as i32,
            ..Default::default()
        },
        1000,
    )
    .await
    .unwrap();
    let ids: Vec<&str> = running_pages
        .iter()
        .flat_map(|p| &p.jobs)
        .map(|j| j.job_id.as_str())
        .collect();
    assert_eq!(ids, [running.as_str()]);
    let ended = jobs_in_order(
        &pages(
            &mut admin,
            pb::ListRequest {
                state: pb::ListStateFilter::Ended as i32,
                page_size: 1000,
                ..Default::default()
            },
            1000,
        )
        .await
        .unwrap(),
    );
    assert_eq!(ended.len(), total - 1);
    assert!(ended
        .iter()
        .all(|j| j.state != pb::JobState::Running as i32));

    stop(&mut bob, &running).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_tokens_and_refusals() {
    let scratch = Scratch::new();
    let server = TestServer::start_in(&scratch, |c| {
        c.service.list.default_page_size = 2;
        c.service.list.max_page_size = 3;
    })
    .await;
    let mut admin = server.client_limited("admin", GRPC_MESSAGE_LIMIT).await;
    let mut alice = server.client_limited("alice", GRPC_MESSAGE_LIMIT).await;
    let mut bob = server.client_limited("bob", GRPC_MESSAGE_LIMIT).await;
    let mut hers = Vec::new();
    for _ in 0..5 {
        let id = start(&mut alice, &["true"]).await;
        wait_ended(&mut alice, &id).await;
        hers.push(id);
    }
    let running = start(&mut bob, &["sleep", "60"]).await;

    // Pages of the default size; a larger page_size is lowered to the maximum.
    let listed = pages(&mut alice, pb::ListRequest::default(), 10)
        .await
        .unwrap();
    let sizes: Vec<usize> = listed.iter().map(|p| p.jobs.len()).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let ids: Vec<String> = jobs_in_order(&listed)
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(ids, hers, "alice sees her jobs, oldest first");
    let big = pages(
        &mut alice,
        pb::ListRequest {
            page_size: 1_000_000,
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    assert_eq!(big.iter().map(|p| p.jobs.len()).collect::<Vec<_>>(), [3, 2]);

    // A page token is a place, not an offset: deleting the job it points at, or one
    // before it, skips nothing and repeats nothing.
    let first = alice
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.jobs.len(), 2);
    for gone in [&hers[0], &hers[1]] {
        alice
            .remove(pb::RemoveRequest {
                job_id: gone.clone(),
            })
            .await
            .unwrap();
    }
    let rest = pages(
        &mut alice,
        pb::ListRequest {
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    let ids: Vec<String> = jobs_in_order(&rest).into_iter().map(|j| j.job_id).collect();
    assert_eq!(ids, hers[2..]);

    // Filters.
    let only = |pages: &[pb::ListResponse]| -> Vec<String> {
        pages
            .iter()
            .flat_map(|p| &p.jobs)
            .map(|j| j.job_id.clone())
            .collect()
    };
    let by_state = |state: pb::ListStateFilter| pb::ListRequest {
        state: state as i32,
        ..Default::default()
    };
    let by_owner = |owner: &str| pb::ListRequest {
        owner: owner.into(),
        ..Default::default()
    };
    let got = pages(&mut admin, by_state(pb::ListStateFilter::Running), 10)
        .await
        .unwrap();
    assert_eq!(only(&got), [running.as_str()]);
    let got = pages(&mut admin, by_state(pb::ListStateFilter::Ended), 10)
        .await
        .unwrap();
    assert_eq!(only(&got), hers[2..]);
    let got = pages(&mut admin, by_owner("bob"), 10).await.unwrap();
    assert_eq!(only(&got), [running.as_str()]);
    let got = pages(&mut alice, by_owner("alice"), 10).await.unwrap();
    assert_eq!(only(&got), hers[2..]);
    let got = pages(&mut bob, by_state(pb::ListStateFilter::Ended), 10)
        .await
        .unwrap();
    assert!(only(&got).is_empty());

    // Refusals: another user's jobs, bad tokens, a token of other filters, a negative
    // page size, an unknown state.
    let e = alice.list(by_owner("bob")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::PermissionDenied,
            "only an admin may list another user's jobs"
        )
    );
    let token = first.next_page_token;
    for bad in ["garbage", &token[..token.len() - 2], &format!("{token}00")] {
        let e = alice
            .list(pb::ListRequest {
                page_token: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("not one this server issued"), "{e:?}");
    }
    let mut other_filters = by_state(pb::ListStateFilter::Running);
    other_filters.page_token = token.clone();
    let e = alice.list(other_filters).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("other filters"), "{e:?}");
    let e = bob
        .list(pb::ListRequest {
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("other filters"), "{e:?}");
    let e = alice
        .list(pb::ListRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = alice
        .list(pb::ListRequest {
            state: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    stop(&mut bob, &running).await;
    server.shutdown().await;
}

/// `VmRSS` or `VmHWM` of a process, in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// The jobd binary on `scratch`, serving until dropped (SIGTERM, then SIGKILL if it hangs).
fn spawn_jobd(scratch: &Scratch) -> testkit::Jobd {
    let pki = scratch.pki();
    testkit::Jobd::spawn_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_jobd")),
        "info",
        &scratch.state(),
        &pki.join("ca.pem"),
        &pki.join("server.pem"),
        &pki.join("server-key.pem"),
        &[],
    )
    .unwrap_or_else(|(status, log)| panic!("jobd exited with {status:?}: {log:#?}"))
}

/// 600 jobs of 120 KB argv each, 72 MB in all: every page stays far below gRPC's 4 MiB,
/// and 16 clients listing everything at once leave jobd's memory (its peak RSS) about
/// where it was, because a page is built from its own jobs only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_past_64_mib_of_argv_keeps_pages_and_memory_small() {
    const JOBS: usize = 600;
    const ARG: usize = 120_000;
    let scratch = Scratch::new();
    let arg = "x".repeat(ARG);
    fill_state(&scratch, &["true", &arg], JOBS - 1, |i| {
        (["alice", "bob"][i % 2], BASE_NANOS + i as i64)
    })
    .await;
    let total_argv = JOBS * (ARG + 4);
    assert!(total_argv > 64 << 20);

    let mut jobd = spawn_jobd(&scratch);
    let pid = jobd.pid();
    let before = memory(pid, "VmRSS");
    // Restart the peak from here (Linux 4.0+: "5" resets VmHWM to the current RSS).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();

    let mut lists = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let target = Target {
            connect_timeout: Duration::from_secs(5),
            ..testkit::target(&scratch.pki(), "admin", jobd.port)
        };
        lists.spawn(async move {
            let mut c = client::connect(&target)
                .await
                .unwrap()
                .max_decoding_message_size(GRPC_MESSAGE_LIMIT);
            let pages = pages(&mut c, pb::ListRequest::default(), 1000)
                .await
                .unwrap();
            let largest = pages.iter().map(prost::Message::encoded_len).max().unwrap();
            let jobs = jobs_in_order(&pages);
            let argv: usize = jobs
                .iter()
                .map(|j| j.argv.iter().map(String::len).sum::<usize>())
                .sum();
            (jobs.len(), argv, pages.len(), largest)
        });
    }
    let results = tokio::time::timeout(Duration::from_secs(60), lists.join_all())
        .await
        .expect("16 lists did not end within 60 s");
    let peak = memory(pid, "VmHWM");
    for (jobs, argv, pages, largest) in &results {
        assert_eq!(*jobs, JOBS);
        assert_eq!(*argv, JOBS * (ARG + 4));
        assert!(*pages >= 30, "{pages} pages for 72 MB");
        assert!(
            *largest <= 2 * 1024 * 1024,
            "a page of {largest} bytes, past the 2 MiB a page should stay below"
        );
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "jobd RSS {} MiB before, peak {} MiB during 16 concurrent lists",
        before >> 20,
        peak >> 20
    );
    assert!(
        grown < 64 << 20,
        "jobd's peak RSS grew by {} MiB (from {} MiB) while 16 clients listed 72 MB of argv",
        grown >> 20,
        before >> 20
    );
    let status = jobd.terminate();
    assert_eq!(status.code(), Some(0), "jobd exited with {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_past_the_per_user_quota_are_refused() {
    let scratch = Scratch::new();
    let server = TestServer::start_in(&scratch, |c| c.worker.max_running_jobs_per_user = 2).await;
    let mut alice = server.client_limited("alice", GRPC_MESSAGE_LIMIT).await;
    let mut bob = server.client_limited("bob", GRPC_MESSAGE_LIMIT).await;
    let first = start(&mut alice, &["sleep", "60"]).await;
    let second = start(&mut alice, &["sleep", "60"]).await;
    let e = try_start(&mut alice, &["true"]).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.message(),
        "you already run 2 jobs, the most this server runs for one user; stop one \
         (jobc stop ID) or wait for one to end"
    );
    // The quota is per user: bob has his own.
    let bobs = start(&mut bob, &["sleep", "60"]).await;
    // A Stop that returned has freed its slot: the next start needs no retry.
    stop(&mut alice, &first).await;
    let third = start(&mut alice, &["sleep", "60"]).await;
    assert_eq!(
        try_start(&mut alice, &["true"]).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // A job that ends on its own frees its slot too: two quick jobs, then two long ones.
    for id in [&second, &third] {
        stop(&mut alice, id).await;
    }
    for _ in 0..2 {
        let quick = start(&mut alice, &["true"]).await;
        wait_ended(&mut alice, &quick).await;
    }
    let long = [
        start(&mut alice, &["sleep", "60"]).await,
        start(&mut alice, &["sleep", "60"]).await,
    ];
    for id in &long {
        stop(&mut alice, id).await;
    }
    stop(&mut bob, &bobs).await;
    server.shutdown().await;
}

/// 24 starts at once against a quota of 3: exactly 3 run, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_cannot_overshoot_the_quotas() {
    let scratch = Scratch::new();
    let server = TestServer::start_in(&scratch, |c| {
        c.worker.max_running_jobs_per_user = 3;
        c.worker.max_kept_jobs_per_user = 5;
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client_limited("alice", GRPC_MESSAGE_LIMIT).await);
    }
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..24 {
        let mut c = clients[i % clients.len()].clone();
        starts.spawn(async move { try_start(&mut c, &["sleep", "60"]).await });
    }
    let results = tokio::time::timeout(Duration::from_secs(30), starts.join_all())
        .await
        .expect("24 starts did not end within 30 s");
    let started: Vec<String> = results.iter().filter_map(|r| r.clone().ok()).collect();
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        }
    }
    let mut alice = clients.pop().unwrap();
    let listed = pages(
        &mut alice,
        pb::ListRequest {
            state: pb::ListStateFilter::Running as i32,
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    let running = listed.iter().map(|p| p.jobs.len()).sum::<usize>();
    for id in &started {
        stop(&mut alice, id).await;
    }
    assert_eq!(started.len(), 3, "{} of 24 starts ran", started.len());
    assert_eq!(running, 3);

    // Kept jobs: 3 are kept now, 2 more fit; 24 at once again must not pass 5.
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..24 {
        let mut c = clients[i % clients.len()].clone();
        starts.spawn(async move { try_start(&mut c, &["true"]).await });
    }
    let results = tokio::time::timeout(Duration::from_secs(30), starts.join_all())
        .await
        .expect("24 starts did not end within 30 s");
    let kept_more = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        kept_more, 2,
        "{kept_more} starts past 3 kept jobs with a quota of 5"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_jobs_past_the_per_user_quota_are_refused_also_after_a_restart() {
    let scratch = Scratch::new();
    let quota = |c: &mut ServerConfig| c.worker.max_kept_jobs_per_user = 3;
    let server = TestServer::start_in(&scratch, quota).await;
    let mut alice = server.client_limited("alice", GRPC_MESSAGE_LIMIT).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = start(&mut alice, &["true"]).await;
        wait_ended(&mut alice, &id).await;
        ids.push(id);
    }
    let refusal = "the server already keeps 3 of your jobs, the most it keeps for one user; \
                   delete ended ones (jobc rm ID)";
    let e = try_start(&mut alice, &["true"]).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::ResourceExhausted, refusal));
    let mut bob = server.client_limited("bob", GRPC_MESSAGE_LIMIT).await;
    let bobs = start(&mut bob, &["true"]).await;
    wait_ended(&mut bob, &bobs).await;
    // Deleting one makes room for one.
    alice
        .remove(pb::RemoveRequest {
            job_id: ids.remove(0),
        })
        .await
        .unwrap();
    let id = start(&mut alice, &["true"]).await;
    wait_ended(&mut alice, &id).await;
    assert_eq!(
        try_start(&mut alice, &["true"]).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    server.shutdown().await;

    // The kept jobs a restart finds count as before.
    let server = TestServer::start_in(&scratch, quota).await;
    let mut alice = server.client_limited("alice", GRPC_MESSAGE_LIMIT).await;
    let e = try_start(&mut alice, &["true"]).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::ResourceExhausted, refusal));
    let mut bob = server.client_limited("bob", GRPC_MESSAGE_LIMIT).await;
    start(&mut bob, &["true"]).await;
    server.shutdown().await;
}

/// Raises this process's open-file limit to at least `n` (as far as the hard limit goes).
fn allow_open_files(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit write and read the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < n {
            limit.rlim_cur = n.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(limit.rlim_cur >= n, "cannot open {n} files: {limit:?}");
}

const FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A TCP connection to `to` from `source`, which then says nothing.
async fn idle_connection(source: IpAddr, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .expect("no TCP connection within 5 s")
        .unwrap()
}

/// A gRPC client whose connection comes from `source`.
async fn client_from(
    source: IpAddr,
    server: &TestServer,
    user: &str,
) -> Result<JobServiceClient<Channel>, tonic::transport::Error> {
    let connector =
        tokio_rustls::TlsConnector::from(client::tls_config(&server.target(user)).unwrap());
    let addr = server.addr;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://localhost:{}", addr.port()))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_| {
                let connector = connector.clone();
                async move {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::new(source, 0))?;
                    let tcp = socket.connect(addr).await?;
                    let name = ServerName::try_from("localhost").unwrap();
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await?;
    Ok(JobServiceClient::new(channel))
}

/// Whether a client on a connection from `source` is served a List within `within`,
/// trying again every 50 ms while its connections are refused.
async fn served_from(source: IpAddr, server: &TestServer, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let attempts = async {
        loop {
            if let Ok(mut c) = client_from(source, server, "alice").await {
                if c.list(pb::ListRequest::default()).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout_at(deadline, attempts).await.is_ok()
}

/// 1,100 idle connections from 127.0.0.2 (more than jobd's 1,024 connection slots) take
/// only that address's 16 handshake slots: a client on 127.0.0.1 is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_from_one_address_leaves_others_served() {
    allow_open_files(4096);
    let scratch = Scratch::new();
    let server = TestServer::start_in(&scratch, |_| {}).await;
    let mut flood = Vec::with_capacity(1100);
    for _ in 0..1100 {
        flood.push(idle_connection(FLOOD_SOURCE, server.addr).await);
    }
    let began = Instant::now();
    let served = served_from(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &server,
        Duration::from_secs(2),
    )
    .await;
    assert!(
        served,
        "a client on 127.0.0.1 was not served within 2 s of 1,100 idle connections from 127.0.0.2"
    );
    eprintln!("served after {:?}", began.elapsed());
    // The flood's own address is held to its cap meanwhile.
    assert!(
        !served_from(FLOOD_SOURCE, &server, Duration::from_secs(2)).await,
        "127.0.0.2 was served while its idle connections held all its handshake slots"
    );
    drop(flood);
    server.shutdown().await;
}

/// A source's slots come back when its handshakes end, whether they fail (the peer goes
/// away) or time out. Ten connection slots, six of them held by clients on 127.0.0.1:
/// the server stays crowded, so the cap of 127.0.0.2 applies throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_slots_come_back_when_handshakes_end_or_time_out() {
    let scratch = Scratch::new();
    let server = TestServer::start_in(&scratch, |c| {
        c.transport.max_connections = 10;
        c.transport.max_handshakes_per_address = 2;
        c.transport.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut c = server.client_limited("alice", GRPC_MESSAGE_LIMIT).await;
        c.list(pb::ListRequest::default()).await.unwrap();
        held.push(c);
    }
    // Two idle connections hold 127.0.0.2's slots; closing them frees them.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(idle_connection(FLOOD_SOURCE, server.addr).await);
    }
    assert!(!served_from(FLOOD_SOURCE, &server, Duration::from_millis(500)).await);
    drop(idle);
    assert!(
        served_from(FLOOD_SOURCE, &server, Duration::from_millis(800)).await,
        "127.0.0.2 not served once its idle connections were closed"
    );

    // Two idle connections kept open: the server ends their handshakes after 1 s.
    let began = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(idle_connection(FLOOD_SOURCE, server.addr).await);
    }
    assert!(!served_from(FLOOD_SOURCE, &server, Duration::from_millis(500)).await);
    // The server closes each one at its timeout: a read sees the end.
    let mut byte = [0u8; 1];
    for conn in &mut idle {
        use tokio::io::AsyncReadExt;
        let read = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut byte))
            .await
            .expect("an idle connection was not closed within 3 s of a 1 s handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let closed_after = began.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed after {closed_after:?}, before the timeout"
    );
    assert!(
        served_from(FLOOD_SOURCE, &server, Duration::from_millis(800)).await,
        "127.0.0.2 not served after its idle handshakes timed out"
    );
    drop((idle, held));
    server.shutdown().await;
}
