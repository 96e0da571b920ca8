//! Compiles the job init (`init/main.rs`) into a static binary that the library carries
//! (see `src/process/init.rs`). rustc alone: the init uses std and nothing else.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=init/main.rs");
    println!("cargo:rerun-if-changed=init/protocol.rs");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("jobworker-init");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let compile = |static_link: bool| {
        let mut rustc = Command::new(&rustc);
        rustc
            .args([
                "--edition=2021",
                "--crate-type=bin",
                "--crate-name=jobworker_init",
            ])
            .args([
                "-C",
                "opt-level=2",
                "-C",
                "panic=abort",
                "-C",
                "debuginfo=0",
            ])
            .args(["-C", "strip=symbols", "--target", &target])
            .arg("-o")
            .arg(&out)
            .arg("init/main.rs");
        if static_link {
            rustc.args(["-C", "target-feature=+crt-static"]);
        }
        rustc.status().map(|s| s.success()).unwrap_or(false)
    };
    // Static: no dynamic loader at each job's start. A host without a static libc gets a
    // dynamic init, slower to start but the same program.
    if !compile(true) {
        println!("cargo:warning=cannot link the job init statically (is libc6-dev installed?); linking it dynamically");
        if !compile(false) {
            panic!("cannot compile the job init, worker/init/main.rs");
        }
    }
}
