//! End to end, jobc's named contexts: two real jobd servers on their own PKIs and a third
//! context whose server is down, in one contexts file.

use std::process::Command;

use testkit::{output, Server, JOBC_TIMEOUT};

/// jobc with the contexts file `config` and no connection variables, so that only the
/// file (and the flags) say where to go.
fn jobc(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = output(
        Command::new(testkit::jobc_bin())
            .env_remove("JOBC_SERVER")
            .env("JOBC_CONFIG", config)
            .args(args),
        JOBC_TIMEOUT,
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn context(name: &str, s: &Server, user: &str) -> String {
    format!(
        "[contexts.{name}]\nserver = \"localhost:{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
        s.jobd.port,
        s.pki.join("ca.pem").display(),
        s.pki.join(format!("{user}.pem")).display(),
        s.pki.join(format!("{user}-key.pem")).display(),
    )
}

#[test]
fn contexts_choose_the_server_and_list_asks_them_all() {
    let one = Server::start();
    let two = Server::start();
    let a = one.start_job("alice", &["echo", "one"]);
    let b = two.start_job("bob", &["echo", "two"]);
    let (_held, down_port) = testkit::port_without_listener();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let mut text = String::from("# three servers\ncurrent = \"one\"\n\n");
    text.push_str(&context("one", &one, "alice"));
    text.push_str(&context("two", &two, "bob"));
    text.push_str(&format!(
        "[contexts.down]\nserver = \"127.0.0.1:{down_port}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        one.pki.join("ca.pem").display(),
        one.pki.join("alice.pem").display(),
        one.pki.join("alice-key.pem").display(),
    ));
    std::fs::write(&config, &text).unwrap();

    // The current context, then another by flag, then by `context use`.
    let (code, out, err) = jobc(&config, &["status", &a]);
    assert_eq!(
        (code, out.as_str()),
        (0, "finished (exit code: 0)\n"),
        "{err}"
    );
    let (code, out, _) = jobc(&config, &["--context", "two", "status", &b]);
    assert_eq!((code, out.as_str()), (0, "finished (exit code: 0)\n"));
    let (code, _, err) = jobc(&config, &["status", &b]);
    assert_eq!((code, err), (1, format!("jobc: job {b} not found\n")));
    let (code, _, _) = jobc(&config, &["context", "use", "two"]);
    assert_eq!(code, 0);
    let (code, out, _) = jobc(&config, &["context", "ls"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["CURRENT", "NAME", "SERVER"]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('*') && l.contains(" two ")),
        "{out}"
    );
    assert_eq!(lines.len(), 4, "{out}");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .starts_with("# three servers\n"));
    assert_eq!(jobc(&config, &["status", &b]).0, 0);
    // A flag wins over the context for its own setting.
    let (code, _, err) = jobc(
        &config,
        &["--server", &format!("127.0.0.1:{down_port}"), "status", &b],
    );
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = jobc(&config, &["--context", "nope", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("no context \"nope\""), "{err}");

    // Every server at once: the jobs of both, and the one that is down named.
    let (code, out, err) = jobc(&config, &["list", "--all-contexts"]);
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(
        err,
        format!(
            "jobc: context down: cannot connect to 127.0.0.1:{down_port}: connection refused\n"
        )
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["CONTEXT", "ID", "OWNER"]);
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[1][..3], ["one", a.as_str(), "alice"]);
    assert_eq!(rows[2][..3], ["two", b.as_str(), "bob"]);
    let (_, out, _) = jobc(&config, &["list", "--all-contexts", "-o", "json"]);
    let jobs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got: Vec<(&str, &str)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["context"].as_str().unwrap(), j["id"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [("one", a.as_str()), ("two", b.as_str())]);
    // A plain list's JSON has no context field.
    let (_, out, _) = jobc(&config, &["list", "-o", "json"]);
    assert!(!out.contains("\"context\""), "{out}");
    one.shutdown();
    two.shutdown();
}
