//! Listening on several addresses: the real jobd binary with `--listen` given twice serves
//! the same jobs on both, and an address it cannot bind is a start-up error naming it.

use proto::v1 as pb;
use testkit::{Jobd, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobd_serves_on_every_listen_address() {
    // testkit gives `--listen 127.0.0.1:0`; this adds the IPv6 loopback.
    let s = Server::start_with(&["--listen", "[::1]:0"]);
    let addrs = s.jobd.addrs.clone();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(
        addrs[0].ip().is_loopback() && addrs[0].is_ipv4(),
        "{addrs:?}"
    );
    assert!(
        addrs[1].ip().is_loopback() && addrs[1].is_ipv6(),
        "{addrs:?}"
    );
    let client = |addr: std::net::SocketAddr| {
        let target = jobc::client::Target {
            server: addr.to_string(),
            ..s.target("alice")
        };
        async move { jobc::client::connect(&target).await.unwrap() }
    };
    let mut v4 = client(addrs[0]).await;
    let mut v6 = client(addrs[1]).await;
    let id = v4
        .start(pb::StartRequest {
            argv: vec!["true".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    for (name, c) in [("IPv4", &mut v4), ("IPv6", &mut v6)] {
        let page = c
            .list(pb::ListRequest::default())
            .await
            .unwrap_or_else(|e| panic!("List on {name}: {e}"))
            .into_inner();
        let ids: Vec<_> = page.jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(ids, vec![id.as_str()], "{name}");
    }
    drop((v4, v6));
    s.shutdown();
}

#[test]
fn an_address_jobd_was_asked_for_and_cannot_bind_stops_it_at_start() {
    let s = Server::start();
    // No host has an address of 2001:db8::/32 (documentation only).
    let refused = |extra: &[&str]| {
        let dir = testkit::public_tempdir();
        match Jobd::spawn(
            &dir.path().join("state"),
            &s.pki.join("ca.pem"),
            &s.pki.join("server.pem"),
            &s.pki.join("server-key.pem"),
            extra,
        ) {
            Ok(jobd) => panic!("jobd started on {:?}", jobd.addrs),
            Err((status, log)) => (status.code(), log.join("\n")),
        }
    };
    let (code, log) = refused(&["--listen", "[2001:db8::1]:0"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("jobd: cannot listen on [2001:db8::1]:0: "),
        "{log}"
    );
    // The port of the running jobd is taken: an error too, not a warning.
    let taken = format!("127.0.0.1:{}", s.jobd.port);
    let (code, log) = refused(&["--listen", &taken]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("jobd: cannot listen on {taken}: ")),
        "{log}"
    );
    s.shutdown();
}
