//! A full state dir, as people see it: the real `jobd` on a small tmpfs that the test
//! mounts (and unmounts, also when it fails), driven by the real `jobc`.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one wait in this test may take.
const T: Duration = Duration::from_secs(20);

fn jobc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobc"))
}

fn jobd_bin() -> PathBuf {
    let path = jobc_bin().with_file_name("jobd");
    assert!(
        path.exists(),
        "{} is missing: build it first",
        path.display()
    );
    path
}

/// A tmpfs mounted at `path`, unmounted (lazily, so never left behind) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir(path).unwrap();
        let target = CString::new(path.as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={size},mode=0755")).unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"jobworker-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path; a lazy unmount does not fail for a busy mount.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

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

/// A jobd this test started; stopped with SIGTERM (by pid) when dropped.
struct Jobd {
    child: Child,
    port: u16,
}

impl Jobd {
    fn start(state: &Path, pki: &Path) -> Jobd {
        let mut child = Command::new(jobd_bin())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .arg("--ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server-key.pem"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let port = addr.split_whitespace().next().unwrap();
                    let _ = tx.send(Ok(port.rsplit(':').next().unwrap().parse::<u16>().unwrap()));
                }
                seen.push(line);
            }
            let _ = tx.send(Err(seen));
        });
        let port = rx
            .recv_timeout(T)
            .expect("jobd said nothing")
            .unwrap_or_else(|log| panic!("jobd did not start: {log:#?}"));
        Jobd { child, port }
    }

    /// SIGTERM, as a clean restart begins, and waits for jobd to exit.
    fn stop(mut self) {
        // SAFETY: signalling the jobd process this test started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + T;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "jobd did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn jobc(&self, pki: &Path, args: &[&str]) -> Output {
        Command::new(jobc_bin())
            .args(args)
            .env("JOBC_SERVER", format!("localhost:{}", self.port))
            .env("JOBC_CA", pki.join("ca.pem"))
            .env("JOBC_CERT", pki.join("alice.pem"))
            .env("JOBC_KEY", pki.join("alice-key.pem"))
            .output()
            .unwrap()
    }
}

impl Drop for Jobd {
    fn drop(&mut self) {
        // Only while it was not reaped: after that its pid may be someone else's.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `stop`; the child is ours, alive, and waited for below.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "jobc failed: {out:?}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_full_state_dir_refuses_starts_and_keeps_the_end_of_a_running_job_across_a_restart() {
    // Outside /tmp, which a job with a mount namespace sees as a tmpfs of its own.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Jobs run under uids of their own: they must reach the file the test creates.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new(jobd_bin())
        .args(["pki", "init", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let state = dir.path().join("state");
    let _tmpfs = Tmpfs::mount(&state, "1m");
    let go = dir.path().join("go");
    let jobd = Jobd::start(&state, &pki);

    let script = format!(
        "while [ ! -e {} ]; do sleep 0.01; done; head -c 100000 /dev/zero; exit 7",
        go.display()
    );
    let id = stdout(&jobd.jobc(&pki, &["start", "sh", "-c", &script]))
        .trim()
        .to_string();
    fill(&state);

    let marker = format!("30.{}", std::process::id());
    let refused = jobd.jobc(&pki, &["start", "sleep", &marker]);
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
        let got = stdout(&jobd.jobc(&pki, &["status", &id]));
        if got == expected {
            break;
        }
        assert!(Instant::now() < deadline, "status stayed {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A clean restart on the still full disk: the job reads as it ended, not as lost.
    jobd.stop();
    fill(&state);
    let jobd = Jobd::start(&state, &pki);
    assert_eq!(stdout(&jobd.jobc(&pki, &["status", &id])), expected);
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&jobd.jobc(&pki, &["status", "-o", "json", &id]))).unwrap();
    assert_eq!(json["server_lost"], false, "{json}");
    assert_eq!(json["record_error"], serde_json::Value::Null, "{json}");
}
