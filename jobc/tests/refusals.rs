//! End to end, how jobc words a refused certificate, a server it cannot reach and a
//! server that goes away during a call: one line each, no text of rustls, hyper or h2, exit
//! code 3. Real binaries on loopback. TLS 1.3 delivers the server's verdict on a client
//! certificate while jobc already sends its first request, so each refusal is tried a few
//! times: the line must not depend on which of the two comes first.

use std::time::Duration;

use testkit::{failure, issue, output, Background, Server, Validity, CN, JOBC_TIMEOUT, O};

const TRIES: usize = 5;

/// `jobc args` as the certificate `cert` and key `key`: (exit code, stderr).
fn with_cert(
    s: &Server,
    cert: &std::path::Path,
    key: &std::path::Path,
    args: &[&str],
) -> (i32, String) {
    failure(&output(
        s.jobc_cmd("alice")
            .env("JOBC_CERT", cert)
            .env("JOBC_KEY", key)
            .args(args),
        JOBC_TIMEOUT,
    ))
}

#[test]
fn each_refused_certificate_is_one_line_saying_why() {
    let s = Server::start();
    let now = time::OffsetDateTime::now_utc();
    let user = |name: &'static str| vec![(CN, name), (O, "user")];
    issue(
        &s.pki,
        "late",
        &user("late"),
        &[],
        false,
        Validity {
            not_before: now - time::Duration::days(2),
            not_after: now - time::Duration::days(1),
        },
    );
    issue(
        &s.pki,
        "early",
        &user("early"),
        &[],
        false,
        Validity {
            not_before: now + time::Duration::days(1),
            not_after: now + time::Duration::days(2),
        },
    );
    issue(
        &s.pki,
        "nameless",
        &[(O, "user")],
        &[],
        false,
        Validity::current(),
    );
    // A client certificate from a CA that jobd does not trust.
    let other = tempfile::tempdir().unwrap();
    testkit::self_signed_ca(other.path(), "another CA");
    issue(
        other.path(),
        "stranger",
        &user("stranger"),
        &[],
        false,
        Validity::current(),
    );

    let refused = |why: &str| (3, format!("jobc: server refused this certificate: {why}\n"));
    let expired = refused("it has expired or is not valid yet");
    let cases = [
        (
            s.pki.join("late.pem"),
            s.pki.join("late-key.pem"),
            expired.clone(),
        ),
        (
            s.pki.join("early.pem"),
            s.pki.join("early-key.pem"),
            expired,
        ),
        (
            other.path().join("stranger.pem"),
            other.path().join("stranger-key.pem"),
            refused("it is not issued by a CA the server trusts"),
        ),
        (
            s.pki.join("nameless.pem"),
            s.pki.join("nameless-key.pem"),
            refused("the server does not accept it"),
        ),
    ];
    for (cert, key, expected) in &cases {
        for args in [&["list"][..], &["start", "true"], &["logs", "no-such-job"]] {
            for _ in 0..TRIES {
                assert_eq!(
                    &with_cert(&s, cert, key, args),
                    expected,
                    "{cert:?} {args:?}"
                );
            }
        }
    }
    // None reached a handler.
    assert!(!s.jobd.log().iter().any(|l| l.contains("caller=")));
    s.shutdown();
}

#[test]
fn a_server_that_is_not_there_is_a_connection_refused() {
    let s = Server::start();
    for _ in 0..TRIES {
        assert_eq!(
            failure(&s.jobc("alice", &["--server", "127.0.0.1:1", "list"])),
            (
                3,
                "jobc: cannot connect to 127.0.0.1:1: connection refused\n".into()
            )
        );
    }
    s.shutdown();
}

#[test]
fn a_server_that_answers_in_plain_text_does_not_answer_in_tls() {
    let s = Server::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap().to_string();
    let answering = std::thread::spawn(move || {
        for _ in 0..TRIES {
            let (mut tcp, _) = listener.accept().unwrap();
            let _ = std::io::Write::write_all(&mut tcp, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    for _ in 0..TRIES {
        assert_eq!(
            failure(&s.jobc("alice", &["--server", &server, "list"])),
            (
                3,
                format!(
                    "jobc: cannot connect to {server}: the server does not answer in TLS \
                     (is it jobd?)\n"
                )
            )
        );
    }
    answering.join().unwrap();
    s.shutdown();
}

#[test]
fn a_server_killed_during_a_followed_stream_went_away() {
    let mut s = Server::start();
    let job = s.start_job(
        "alice",
        &["sh", "-c", "while :; do echo tick; sleep 0.05; done"],
    );
    let follower = Background::spawn(s.jobc_cmd("alice").args(["logs", "--raw", &job]));
    assert_eq!(follower.line(Duration::from_secs(10)), "tick");
    // SIGKILL: no goodbye on the connection, and nothing listens on the port after. The
    // follow says so, tries again for about 25 s, and gives up saying the same.
    s.jobd.kill();
    let (status, _, err) = follower.finish(Duration::from_secs(40));
    assert_eq!(
        (status.code(), err.as_str()),
        (
            Some(3),
            "jobc: the server went away; resuming the output\njobc: the server went away\n"
        )
    );
    // A new jobd on the same state kills what the old one left running.
    s.jobd = s.spawn_second().expect("jobd restarts on the same state");
    s.shutdown();
}
