//! End to end, what operators do to a running jobd: revoke a certificate and reload the
//! TLS material with SIGHUP (established connections and running jobs untouched), and
//! read the audit log, also after a crash in the middle of a line. Real jobd and jobc
//! binaries on loopback; `openssl s_client` says which certificate the server presents.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::{failure, output, Background, Jobd, JOBC_TIMEOUT};

/// A jobd on its own PKI (with a CRL from `jobd pki revoke`), and jobc for its users.
struct Site {
    dir: tempfile::TempDir,
    jobd: Jobd,
}

impl Site {
    fn start() -> Site {
        let dir = testkit::public_tempdir();
        testkit::pki_init(&dir.path().join("pki"));
        let site = Site::spawn(dir);
        site.revoke(&[]);
        site
    }

    fn spawn(dir: tempfile::TempDir) -> Site {
        let pki = dir.path().join("pki");
        if !pki.join("crl.pem").exists() {
            jobd_ok(&["pki", "revoke", "--dir", pki.to_str().unwrap()]);
        }
        let jobd = Jobd::spawn(
            &dir.path().join("state"),
            &pki.join("ca.pem"),
            &pki.join("server.pem"),
            &pki.join("server-key.pem"),
            &["--crl", pki.join("crl.pem").to_str().unwrap()],
        )
        .expect("jobd starts");
        Site { dir, jobd }
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    fn jobc(&self, user: &str) -> Command {
        let pki = self.pki();
        let mut cmd = Command::new(testkit::jobc_bin());
        cmd.env("JOBC_SERVER", format!("localhost:{}", self.jobd.port))
            .env("JOBC_CA", pki.join("ca.pem"))
            .env("JOBC_CERT", pki.join(format!("{user}.pem")))
            .env("JOBC_KEY", pki.join(format!("{user}-key.pem")));
        cmd
    }

    /// `jobc ARGS` as `user`: (exit code, stdout, stderr).
    fn run(&self, user: &str, args: &[&str]) -> (i32, String, String) {
        let out = output(self.jobc(user).args(args), JOBC_TIMEOUT);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn revoke(&self, args: &[&str]) {
        let pki = self.pki();
        let mut all = vec!["pki", "revoke", "--dir", pki.to_str().unwrap()];
        all.extend_from_slice(args);
        jobd_ok(&all);
    }

    /// SIGHUP, then the log line that says how the reload went.
    fn reload(&self, expect: &str) {
        let before = self.jobd.log().len();
        self.jobd.signal(libc::SIGHUP);
        testkit::wait_for("the reload", Duration::from_secs(10), || {
            self.jobd.log()[before..].iter().any(|l| l.contains(expect))
        });
    }
}

fn jobd_ok(args: &[&str]) -> String {
    let out = output(Command::new(testkit::jobd_bin()).args(args), JOBC_TIMEOUT);
    assert!(out.status.success(), "jobd {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The serial of the certificate the server presents, by openssl.
fn served_serial(site: &Site) -> String {
    let pki = site.pki();
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", site.jobd.port))
        .arg("-CAfile")
        .arg(pki.join("ca.pem"))
        .arg("-cert")
        .arg(pki.join("alice.pem"))
        .arg("-key")
        .arg(pki.join("alice-key.pem"))
        .args(["-tls1_3", "-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let pem_start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let pem_end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    serial_of_pem(&text[pem_start..pem_end])
}

fn serial_of_pem(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), pem.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn serial_of_file(path: &Path) -> String {
    serial_of_pem(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn a_revoked_certificate_is_refused_after_a_reload_and_nothing_running_is_touched() {
    let site = Site::start();
    let (code, _, err) = site.run("alice", &["list"]);
    assert_eq!(code, 0, "{err}");
    // A job of alice's, and a follow of it on a connection made before the reload.
    let (_, id, _) = site.run(
        "alice",
        &[
            "start",
            "sh",
            "-c",
            "while :; do echo tick; sleep 0.1; done",
        ],
    );
    let id = id.trim().to_string();
    let follower = Background::spawn(site.jobc("alice").args(["logs", "--raw", &id]));
    assert_eq!(follower.line(Duration::from_secs(10)), "tick");

    site.revoke(&["--user", "alice"]);
    // Not before the reload: jobd reads the CRL when it starts and on SIGHUP.
    assert_eq!(site.run("alice", &["list"]).0, 0);
    site.reload("reloaded the TLS certificate, key, CA and CRL");
    let (code, _, err) = site.run("alice", &["list"]);
    assert_eq!(
        (code, err.as_str()),
        (
            3,
            "jobc: server refused this certificate: it has been revoked\n"
        )
    );
    assert_eq!(site.run("bob", &["list"]).0, 0);
    // The follow made before goes on, and the job runs on.
    for _ in 0..5 {
        assert_eq!(follower.line(Duration::from_secs(10)), "tick");
    }
    let (code, out, _) = site.run("admin", &["status", &id]);
    assert_eq!((code, out.as_str()), (0, "running\n"));
    site.run("admin", &["stop", &id]);
    let (status, _, err) = follower.finish(Duration::from_secs(10));
    assert!(status.success(), "{err}");

    // A new certificate for alice (a new serial) is accepted: only the old one is revoked.
    let pki = site.pki();
    jobd_ok(&[
        "pki",
        "add-user",
        "--dir",
        pki.to_str().unwrap(),
        "--user",
        "alice:user",
        "--force",
    ]);
    assert_eq!(site.run("alice", &["list"]).0, 0);
}

#[test]
fn jobd_refuses_to_start_with_an_expired_crl() {
    let dir = testkit::public_tempdir();
    let pki = dir.path().join("pki");
    testkit::pki_init(&pki);
    // A CRL the CA signed two days ago, valid until yesterday.
    let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
    let key = rcgen::KeyPair::from_pem(&read("ca-key.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem"), key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::days(2),
        next_update: now - time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from(vec![1]),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    let path = pki.join("crl.pem");
    std::fs::write(&path, crl.pem().unwrap()).unwrap();
    let refused = Jobd::spawn(
        &dir.path().join("state"),
        &pki.join("ca.pem"),
        &pki.join("server.pem"),
        &pki.join("server-key.pem"),
        &["--crl", path.to_str().unwrap()],
    );
    let Err((status, log)) = refused else {
        panic!("jobd started with an expired CRL");
    };
    assert_eq!(status.code(), Some(1));
    let said = log.join("\n");
    assert!(
        said.contains("cannot set up TLS")
            && said.contains("expired at")
            && said.contains("jobd pki revoke --dir DIR"),
        "{said}"
    );
}

#[test]
fn a_renewed_server_certificate_is_served_after_a_reload_and_a_bad_one_is_not() {
    let site = Site::start();
    let first = served_serial(&site);
    assert_eq!(first, serial_of_file(&site.pki().join("server.pem")));
    // A renewed certificate (and key) from the same CA, put in place.
    let renewed = testkit::public_tempdir();
    std::fs::copy(site.pki().join("ca.pem"), renewed.path().join("ca.pem")).unwrap();
    std::fs::copy(
        site.pki().join("ca-key.pem"),
        renewed.path().join("ca-key.pem"),
    )
    .unwrap();
    testkit::issue(
        renewed.path(),
        "server",
        &[(testkit::CN, "jobd")],
        &["localhost", "127.0.0.1"],
        true,
        testkit::Validity::current(),
    );
    for file in ["server.pem", "server-key.pem"] {
        std::fs::copy(renewed.path().join(file), site.pki().join(file)).unwrap();
    }
    // Until the reload, the old one.
    assert_eq!(served_serial(&site), first);
    site.reload("reloaded the TLS certificate");
    let second = served_serial(&site);
    assert_ne!(second, first);
    assert_eq!(second, serial_of_file(&site.pki().join("server.pem")));
    assert_eq!(site.run("alice", &["list"]).0, 0);

    // A key that is not the certificate's: the reload fails, and the old material serves.
    std::fs::copy(
        site.pki().join("bob-key.pem"),
        site.pki().join("server-key.pem"),
    )
    .unwrap();
    site.reload("reload failed: keeping the TLS material in use");
    assert_eq!(served_serial(&site), second);
    assert_eq!(site.run("alice", &["list"]).0, 0);
}

#[test]
fn the_audit_log_has_a_line_per_request_and_survives_a_crash_mid_line() {
    let mut site = Site::start();
    let (_, id, _) = site.run("alice", &["start", "true"]);
    let id = id.trim().to_string();
    site.run("alice", &["wait", &id]);
    // Bob may not see alice's job: denied, though he is told "not found".
    let (code, _, _) = site.run("bob", &["status", &id]);
    assert_eq!(code, 1);
    let audit = site.dir.path().join("state").join("audit.log");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let all = lines();
    let start = all
        .iter()
        .find(|l| l["method"] == "Start")
        .expect("the Start");
    assert_eq!(start["caller"], "alice");
    assert_eq!(start["roles"], serde_json::json!(["user"]));
    assert_eq!(start["job"], id.as_str());
    assert_eq!(
        (start["allowed"].clone(), start["code"].clone()),
        (true.into(), "OK".into())
    );
    let openssl_serial = serial_of_file(&site.pki().join("alice.pem"));
    let audit_serial = start["serial"].as_str().unwrap().replace(':', "");
    assert_eq!(format!("serial={audit_serial}"), openssl_serial);
    assert!(
        start["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{start}"
    );
    humantime::parse_rfc3339(start["time"].as_str().unwrap()).unwrap();
    let bobs = all
        .iter()
        .find(|l| l["caller"] == "bob")
        .expect("bob's Status");
    assert_eq!(
        (
            bobs["method"].clone(),
            bobs["allowed"].clone(),
            bobs["code"].clone()
        ),
        ("Status".into(), false.into(), "NOT_FOUND".into())
    );
    // No job output, argv or environment in it.
    assert!(!std::fs::read_to_string(&audit)
        .unwrap()
        .contains("\"true\""));

    // A jobd killed in the middle of a line leaves a fragment; the next one ends it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&audit)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"time\":\"20"))
        .unwrap();
    site.jobd.kill();
    let dir = std::mem::replace(&mut site.dir, tempfile::tempdir().unwrap());
    let site = Site::spawn(dir);
    site.run("alice", &["list"]);
    let text = std::fs::read_to_string(site.dir.path().join("state").join("audit.log")).unwrap();
    let last: Vec<&str> = text.lines().rev().take(2).collect();
    let list: serde_json::Value = serde_json::from_str(last[0]).unwrap();
    assert_eq!(
        (list["method"].as_str(), list["caller"].as_str()),
        (Some("List"), Some("alice"))
    );
    assert_eq!(last[1], "{\"time\":\"20");
    let (failed, _) = failure(&output(site.jobc("alice").arg("list"), JOBC_TIMEOUT));
    assert_eq!(failed, 0);

    // Rotation: the file renamed, SIGHUP, and new lines go to a new file.
    let audit = site.dir.path().join("state").join("audit.log");
    let rotated = audit.with_extension("log.1");
    std::fs::rename(&audit, &rotated).unwrap();
    let before = std::fs::read_to_string(&rotated).unwrap();
    site.reload("reloaded the TLS certificate");
    site.run("bob", &["list"]);
    let fresh = std::fs::read_to_string(&audit).unwrap();
    let line: serde_json::Value = serde_json::from_str(fresh.lines().next().unwrap()).unwrap();
    assert_eq!(
        (line["method"].as_str(), line["caller"].as_str()),
        (Some("List"), Some("bob"))
    );
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), before);
}
