//! The systemd unit in `packaging/` is what production runs, yet nothing else reads it:
//! a misspelt key is only a warning in the journal and the option silently does not
//! apply (a unit without `Delegate=` runs jobs without limits). These tests have systemd
//! itself check the unit (`systemd-analyze verify`), against the jobd binary just built,
//! and check that it keeps the settings the README promises.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = include_str!("../../packaging/jobd.service");
/// Where the unit expects things on a production host, and what a test puts there.
const INSTALLED_BINARY: &str = "/usr/local/bin/jobd";
const CONFIG_DIR: &str = "/etc/jobworker";
const PKI_FILES: [&str; 3] = ["ca.pem", "server.pem", "server-key.pem"];

/// A copy of the unit whose ExecStart runs the jobd binary built for this test and whose
/// PKI files exist (empty) under `dir`, in `dir/jobd.service`: systemd checks that the
/// programs a unit names are there, and the unit's name comes from its file's.
fn installed_copy(dir: &Path, unit: &str) -> PathBuf {
    assert!(
        unit.contains(&format!("ExecStart={INSTALLED_BINARY} serve ")),
        "the unit should run `{INSTALLED_BINARY} serve`; update this test with the unit"
    );
    let config = dir.join("etc/jobworker");
    fs::create_dir_all(config.join("pki")).unwrap();
    for file in PKI_FILES {
        let path = format!("{CONFIG_DIR}/pki/{file}");
        assert!(unit.contains(&path), "the unit should name {path}");
        fs::write(config.join("pki").join(file), "").unwrap();
    }
    let unit = unit
        .replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_jobd"))
        .replace(CONFIG_DIR, config.to_str().unwrap());
    let path = dir.join("jobd.service");
    fs::write(&path, unit).unwrap();
    path
}

/// `systemd-analyze verify` of `unit`.
fn verify(unit: &Path) -> Output {
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("systemd-analyze is not installed: install systemd (apt-get install systemd)")
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

/// What systemd-analyze said about jobd.service. It also reports on other units of the
/// host it loads along the way (a broken unit elsewhere is not this unit's problem), but
/// everything it says about this one names the unit or its file.
fn complaints(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&output.stdout).lines())
        .filter(|line| line.contains("jobd.service"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn systemd_accepts_the_unit_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let unit = installed_copy(dir.path(), UNIT);
    let output = verify(&unit);
    let complaints = complaints(&output);
    assert!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify {}: {}\n{}\n{}",
        unit.display(),
        output.status,
        complaints.join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The check above could pass by looking in the wrong place; here it must see the faults.
#[test]
fn the_check_sees_an_unknown_key_and_a_missing_program() {
    let dir = tempfile::tempdir().unwrap();
    let broken = UNIT
        .replace("\nDelegate=yes\n", "\nDelegates=yes\n")
        .replace("ExecReload=/bin/kill ", "ExecReload=/nonexistent/kill ");
    assert_ne!(
        broken, UNIT,
        "the unit should have Delegate= and ExecReload="
    );
    let unit = installed_copy(dir.path(), &broken);
    let complaints = complaints(&verify(&unit));
    for fault in ["Delegates", "/nonexistent/kill"] {
        assert!(
            complaints.iter().any(|line| line.contains(fault)),
            "systemd-analyze said nothing about {fault}: {complaints:?}"
        );
    }
}

/// The settings the README and jobd's shutdown rely on, as systemd reads them (the last
/// assignment of a key wins).
#[test]
fn the_unit_keeps_what_jobd_relies_on() {
    let settings: Vec<(&str, &str)> = UNIT
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .collect();
    let value = |key: &str| {
        settings
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    };
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Delegate", "yes"),
        ("KillMode", "mixed"),
        ("Restart", "on-failure"),
        ("StateDirectory", "jobworker"),
        ("StateDirectoryMode", "0700"),
        ("TasksMax", "infinity"),
        ("OOMPolicy", "continue"),
    ] {
        assert_eq!(value(key), Some(want), "{key}=");
    }
    // Longer than the longest grace a Stop may ask for (600 s), which jobd's shutdown
    // waits out before it stops the other jobs with their own grace.
    let stop: u64 = value("TimeoutStopSec")
        .expect("TimeoutStopSec=")
        .parse()
        .expect("TimeoutStopSec= in seconds");
    assert!(stop > 600 + 5, "TimeoutStopSec={stop}");
    // Options that would change what every job sees.
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectControlGroups",
        "ProtectKernelTunables",
        "ProtectClock",
        "ProtectHostname",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictNamespaces",
    ] {
        assert_eq!(value(key), None, "{key}= would change what jobs see");
    }
}
