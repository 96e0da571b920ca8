//! Compiles the job init (`init/main.rs`) into the small static binary that the library
//! carries (see `src/process/init.rs`). rustc alone: the init uses neither std nor libc,
//! so it links with no start files and no libraries, and its warnings are errors here.

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
    let status = Command::new(&rustc)
        .args([
            "--edition=2021",
            "--crate-type=bin",
            "--crate-name=jobworker_init",
        ])
        .args(["-D", "warnings", "-C", "opt-level=2", "-C", "panic=abort"])
        .args(["-C", "strip=symbols", "-C", "relocation-model=static"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static", "--target", &target])
        .arg("-o")
        .arg(&out)
        .arg("init/main.rs")
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("cannot compile the job init, worker/init/main.rs: {other:?}"),
    }
}
