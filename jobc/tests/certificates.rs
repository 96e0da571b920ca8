//! End to end, the certificates: jobc verifying jobd by CA and by name, jobd refusing
//! client certificates outside their validity, and identities read from unusual subjects.
//! Real binaries on loopback; extra certificates are issued here from the PKI's CA.

use std::time::Duration;

use testkit::{failure, issue, output, Jobd, Server, Validity, CN, JOBC_TIMEOUT, O};

/// `jobc list` as alice, trusting the CA file `ca`, to `server`: (exit code, stderr).
fn jobc_with_ca(s: &Server, ca: &std::path::Path, server: &str) -> (i32, String) {
    failure(&output(
        s.jobc_cmd("alice")
            .env("JOBC_CA", ca)
            .env("JOBC_SERVER", server)
            .arg("list"),
        JOBC_TIMEOUT,
    ))
}

#[test]
fn jobc_refuses_a_server_its_ca_did_not_sign() {
    let s = Server::start();
    // Another `jobd pki init`: a CA of the same name with another key.
    let same_name = tempfile::tempdir().unwrap();
    testkit::pki_init(same_name.path());
    // A CA of another name.
    let other_name = tempfile::tempdir().unwrap();
    testkit::self_signed_ca(other_name.path(), "another CA");
    for (ca, why) in [
        (
            same_name.path().join("ca.pem"),
            "its signature does not verify with the CA given with --ca",
        ),
        (
            other_name.path().join("ca.pem"),
            "it is not issued by the CA given with --ca",
        ),
    ] {
        for server in [s.server(), format!("127.0.0.1:{}", s.jobd.port)] {
            let (code, err) = jobc_with_ca(&s, &ca, &server);
            assert_eq!(
                (code, err),
                (
                    3,
                    format!("jobc: cannot verify the server's certificate: {why}\n")
                ),
                "{server}"
            );
        }
    }
    // The server saw the client give up on it, and served nothing.
    s.jobd
        .wait_log("the refused handshake", Duration::from_secs(5), |l| {
            l.contains("TLS handshake refused")
        });
    assert!(!s.jobd.log().iter().any(|l| l.contains("caller=")));
    s.shutdown();
}

#[test]
fn jobc_refuses_a_server_certificate_for_another_name() {
    let s = Server::start();
    // Signed by the right CA, but for other.example only.
    issue(
        &s.pki,
        "elsewhere",
        &[(CN, "jobd")],
        &["other.example"],
        true,
        Validity::current(),
    );
    let dir = testkit::public_tempdir();
    let other = Jobd::spawn(
        &dir.path().join("state"),
        &s.pki.join("ca.pem"),
        &s.pki.join("elsewhere.pem"),
        &s.pki.join("elsewhere-key.pem"),
        &[],
    )
    .expect("jobd with the other.example certificate");
    for server in [
        format!("localhost:{}", other.port),
        format!("127.0.0.1:{}", other.port),
    ] {
        let (code, err) = jobc_with_ca(&s, &s.pki.join("ca.pem"), &server);
        assert_eq!(code, 3, "{server}: {err}");
        assert!(
            err.starts_with("jobc: cannot verify the server's certificate: ")
                && err.contains("certificate not valid for name")
                && err.contains("only valid for DnsName(\"other.example\")")
                && err.ends_with('\n')
                && err.lines().count() == 1,
            "{server}: {err}"
        );
    }
    assert!(!other.log().iter().any(|l| l.contains("caller=")));
    drop(other);
    s.shutdown();
}

/// jobc as the certificate `name` in `s`'s PKI: (exit code, stderr).
fn as_cert(s: &Server, name: &str, args: &[&str]) -> (i32, String) {
    failure(&s.jobc(name, args))
}

#[test]
fn client_certificates_outside_their_validity_are_refused_in_the_handshake() {
    let s = Server::start();
    let now = time::OffsetDateTime::now_utc();
    issue(
        &s.pki,
        "early",
        &[(CN, "early"), (O, "user")],
        &[],
        false,
        Validity {
            not_before: now + time::Duration::days(1),
            not_after: now + time::Duration::days(2),
        },
    );
    issue(
        &s.pki,
        "late",
        &[(CN, "late"), (O, "user")],
        &[],
        false,
        Validity {
            not_before: now - time::Duration::days(2),
            not_after: now - time::Duration::days(1),
        },
    );
    for (name, why) in [
        ("early", "certificate not valid yet"),
        ("late", "certificate expired"),
    ] {
        assert_eq!(
            as_cert(&s, name, &["list"]),
            (
                3,
                "jobc: server refused this certificate: it has expired or is not valid yet\n"
                    .into()
            ),
            "{name}"
        );
        s.jobd.wait_log(why, Duration::from_secs(5), |l| {
            l.contains("TLS handshake refused") && l.contains(why)
        });
    }
    // Neither reached a handler.
    assert!(!s.jobd.log().iter().any(|l| l.contains("caller=")));
    s.shutdown();
}

#[test]
fn unknown_o_values_alone_may_do_nothing() {
    // A short grace: jobd stops the sleeping job at the end.
    let s = Server::start_with(&["--grace", "1"]);
    let job = s.start_job("alice", &["sleep", "60"]);
    issue(
        &s.pki,
        "mallory",
        &[(CN, "mallory"), (O, "superuser"), (O, "Admin")],
        &[],
        false,
        Validity::current(),
    );
    let denied = (
        1,
        "jobc: this certificate carries no known role (admin or user) and may do nothing\n"
            .to_string(),
    );
    for args in [
        vec!["start", "true"],
        vec!["list"],
        vec!["status", &job],
        vec!["logs", &job],
        vec!["stop", &job],
        vec!["rm", &job],
        vec!["status", "not-an-id"],
    ] {
        assert_eq!(as_cert(&s, "mallory", &args), denied, "{args:?}");
    }
    s.jobd
        .wait_log("a PermissionDenied", Duration::from_secs(5), |l| {
            l.contains("caller=mallory") && l.contains("PermissionDenied")
        });
    assert_eq!(s.ok("alice", &["status", &job]), "running\n");
    s.shutdown();
}

#[test]
fn the_user_role_among_unknown_o_values_acts_as_a_user() {
    // A short grace: jobd stops the sleeping job at the end.
    let s = Server::start_with(&["--grace", "1"]);
    let alices = s.start_job("alice", &["sleep", "60"]);
    issue(
        &s.pki,
        "carol",
        &[(CN, "carol"), (O, "superuser"), (O, "user")],
        &[],
        false,
        Validity::current(),
    );
    let own = s.start_job("carol", &["sleep", "60"]);
    assert_eq!(s.status_json("carol", &own)["owner"], "carol");
    let list = s.ok("carol", &["list"]);
    assert!(list.contains(&own) && !list.contains(&alices), "{list}");
    // Not an admin: another user's job is not there for carol.
    for args in [vec!["status", &alices], vec!["stop", &alices]] {
        assert_eq!(
            as_cert(&s, "carol", &args),
            (1, format!("jobc: job {alices} not found\n")),
            "{args:?}"
        );
    }
    assert_eq!(
        as_cert(&s, "carol", &["start", "--as-root", "true"]),
        (1, "jobc: only an admin may start a job as root\n".into())
    );
    s.ok("carol", &["stop", "--grace", "1", &own]);
    assert_eq!(s.ok("alice", &["status", &alices]), "running\n");
    s.shutdown();
}

/// A certificate without exactly one username is refused in the TLS handshake, with an
/// alert, before any call is served, so jobc says the certificate was refused, and jobd's
/// log names the reason.
fn assert_refused_identity(subject: &[(&[u64], &str)], reason: &str) {
    let s = Server::start();
    issue(&s.pki, "odd", subject, &[], false, Validity::current());
    for args in [vec!["list"], vec!["start", "true"]] {
        assert_eq!(
            as_cert(&s, "odd", &args),
            (
                3,
                "jobc: server refused this certificate: the server does not accept it\n".into()
            ),
            "{subject:?} {args:?}"
        );
    }
    s.jobd.wait_log(reason, Duration::from_secs(5), |l| {
        l.contains("TLS handshake refused") && l.contains(reason)
    });
    // No handler ran, under any name (not even an empty one).
    assert!(
        !s.jobd.log().iter().any(|l| l.contains("caller=")),
        "{:#?}",
        s.jobd.log()
    );
    assert!(std::fs::read_dir(s.dir.path().join("state/jobs"))
        .unwrap()
        .next()
        .is_none());
    s.shutdown();
}

#[test]
fn a_certificate_without_a_common_name_is_refused() {
    assert_refused_identity(
        &[(O, "user")],
        "the client certificate has no subject common name",
    );
}

#[test]
fn a_certificate_with_an_empty_common_name_is_refused() {
    assert_refused_identity(
        &[(CN, ""), (O, "admin")],
        "the client certificate has no subject common name",
    );
}

#[test]
fn a_certificate_with_two_common_names_is_refused() {
    assert_refused_identity(
        &[(CN, "alice"), (CN, "admin"), (O, "user")],
        "the client certificate has more than one subject common name",
    );
}
