//! `jobc list` reads every page of the list, as text and as JSON, with its filters, from
//! a real jobd whose pages hold two jobs at most.

use std::collections::HashSet;

use testkit::{failure, Server};

/// jobd with pages of at most two jobs (set in its config file).
fn server() -> (Server, tempfile::TempDir) {
    let config = tempfile::tempdir().expect("tempdir");
    let path = config.path().join("jobd.toml");
    std::fs::write(&path, "max_list_page_size = 2\n").expect("write the config file");
    let server = Server::start_with(&["--config", path.to_str().expect("UTF-8 path")]);
    (server, config)
}

/// The job ids of a `jobc list` table, checking its header.
fn table_ids(table: &str) -> Vec<String> {
    let mut lines = table.lines();
    assert!(
        lines.next().expect("a header").starts_with("ID "),
        "{table}"
    );
    lines
        .map(|l| l.split_whitespace().next().expect("an id").to_string())
        .collect()
}

fn json_ids(text: &str) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(text).expect("JSON");
    list.as_array()
        .expect("an array")
        .iter()
        .map(|j| j["id"].as_str().expect("an id").to_string())
        .collect()
}

#[test]
fn list_reads_every_page_with_filters() {
    let (s, _config) = server();
    let mut hers = Vec::new();
    for _ in 0..5 {
        let id = s.start_job("alice", &["true"]);
        s.wait_status("alice", &id, "finished (exit code: 0)");
        hers.push(id);
    }
    let bobs = s.start_job("bob", &["sleep", "60"]);

    // Everything, over three pages for alice and three for the admin.
    assert_eq!(table_ids(&s.ok("alice", &["list"])), hers);
    let all = table_ids(&s.ok("admin", &["list"]));
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 6);
    assert_eq!(all.last(), Some(&bobs), "oldest first");
    assert_eq!(json_ids(&s.ok("admin", &["list", "-o", "json"])), all);

    // Filters.
    assert_eq!(
        table_ids(&s.ok("admin", &["list", "--state", "running"])),
        [bobs.as_str()]
    );
    assert_eq!(
        table_ids(&s.ok("admin", &["list", "--state", "ended"])),
        hers
    );
    assert_eq!(
        json_ids(&s.ok("admin", &["list", "--owner", "alice", "-o", "json"])),
        hers
    );
    assert_eq!(
        table_ids(&s.ok("bob", &["list", "--owner", "bob"])),
        [bobs.as_str()]
    );
    assert_eq!(
        json_ids(&s.ok("bob", &["list", "--state", "ended", "-o", "json"])),
        Vec::<String>::new()
    );
    let (code, stderr) = failure(&s.jobc("alice", &["list", "--owner", "bob"]));
    assert_eq!(
        (code, stderr.as_str()),
        (1, "jobc: only an admin may list another user's jobs\n")
    );

    s.ok("bob", &["stop", "--grace", "0", &bobs]);
    s.shutdown();
}
