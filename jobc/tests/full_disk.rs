//! A full state dir, as people see it: the real `jobd` on a small tmpfs that the test
//! mounts (and unmounts, also when it fails), driven by the real `jobc`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testkit::{Jobd, Tmpfs};

/// How long any one wait in this test may take.
const T: Duration = Duration::from_secs(20);

/// Fills the filesystem of `dir` until the kernel says it is full.
fn fill(dir: &Path) {
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
}

fn start_jobd(state: &Path, pki: &Path) -> Jobd {
    Jobd::spawn(
        state,
        &pki.join("ca.pem"),
        &pki.join("server.pem"),
        &pki.join("server-key.pem"),
        &[],
    )
    .unwrap_or_else(|(status, log)| panic!("jobd exited with {status:?}: {log:#?}"))
}

/// jobc as alice against `jobd`.
fn jobc(jobd: &Jobd, pki: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(testkit::jobc_bin());
    cmd.args(args)
        .env("JOBC_SERVER", format!("localhost:{}", jobd.port))
        .env("JOBC_CA", pki.join("ca.pem"))
        .env("JOBC_CERT", pki.join("alice.pem"))
        .env("JOBC_KEY", pki.join("alice-key.pem"));
    testkit::output(&mut cmd, testkit::JOBC_TIMEOUT)
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "jobc failed: {out:?}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_full_state_dir_refuses_starts_and_keeps_the_end_of_a_running_job_across_a_restart() {
    // Outside /tmp, which a job with a mount namespace sees as a tmpfs of its own.
    // Jobs run under uids of their own: they must reach the file the test creates.
    let dir = testkit::public_tempdir();
    let pki = dir.path().join("pki");
    testkit::pki_init(&pki);
    let state = dir.path().join("state");
    let _tmpfs = Tmpfs::mount(&state, "1m");
    let go = dir.path().join("go");
    let jobd = start_jobd(&state, &pki);

    let script = format!(
        "while [ ! -e {} ]; do sleep 0.01; done; head -c 100000 /dev/zero; exit 7",
        go.display()
    );
    let id = stdout(&jobc(&jobd, &pki, &["start", "sh", "-c", &script]))
        .trim()
        .to_string();
    fill(&state);

    let marker = format!("30.{}", std::process::id());
    let refused = jobc(&jobd, &pki, &["start", "sleep", &marker]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "jobc: cannot start sleep: the state dir is full\n"
    );
    // Its process was held at the exec gate and never ran `sleep`.
    let ran: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.ends_with(format!("\0{marker}\0").as_bytes()))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(ran.is_empty(), "the refused job runs: pids {ran:?}");

    std::fs::write(&go, "").unwrap();
    let expected = "finished (exit code: 7)\noutput not stored: the state dir is full\n";
    let deadline = Instant::now() + T;
    loop {
        let got = stdout(&jobc(&jobd, &pki, &["status", &id]));
        if got == expected {
            break;
        }
        assert!(Instant::now() < deadline, "status stayed {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A clean restart on the still full disk: the job reads as it ended, not as lost.
    let mut jobd = jobd;
    let status = jobd.terminate();
    assert_eq!(status.code(), Some(0), "jobd exited with {status:?}");
    fill(&state);
    let jobd = start_jobd(&state, &pki);
    assert_eq!(stdout(&jobc(&jobd, &pki, &["status", &id])), expected);
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&jobc(&jobd, &pki, &["status", "-o", "json", &id]))).unwrap();
    assert_eq!(json["server_lost"], false, "{json}");
    assert_eq!(json["record_error"], serde_json::Value::Null, "{json}");
}
