//! jobd's notices to systemd as a `Type=notify` unit's manager receives them: `READY=1`
//! only once jobd accepts connections (units ordered after jobd's rely on it), and
//! `STOPPING=1` when SIGTERM starts its shutdown. packaging/jobd.service depends on both.

use std::fs;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills jobd if the test ends before it did, so a failure leaves no server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next notice, or a failure that shows jobd's log.
fn notice(socket: &UnixDatagram, log: &Path, waiting_for: &str) -> String {
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "no {waiting_for} from jobd ({e}); its log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

#[test]
fn jobd_says_ready_once_it_listens_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let address_file = dir.path().join("address");
    let log = dir.path().join("jobd.log");
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_jobd"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--address-file")
            .arg(&address_file)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    assert_eq!(notice(&socket, &log, "READY=1"), "READY=1");
    // Ready means ready: the listener is bound and takes connections now.
    let address = fs::read_to_string(&address_file).expect("READY=1 before the address file");
    TcpStream::connect(address.trim()).expect("READY=1 before jobd accepts connections");

    let pid = libc::pid_t::try_from(server.0.id()).unwrap();
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's, not
    // yet reaped, so it names jobd and no other process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(notice(&socket, &log, "STOPPING=1"), "STOPPING=1");

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "jobd did not exit within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "jobd exited with {status}");
}
