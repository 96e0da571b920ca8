//! Finding (and if need be building) the release `jobd` and `jobc` this benchmark runs,
//! and pueue when asked to install it. Benchmarks of debug builds would mislead, so the
//! binaries always come from the release folder of this workspace's target dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The release binaries under test.
pub struct Binaries {
    pub jobd: PathBuf,
    pub jobc: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ lives in the workspace")
        .to_path_buf()
}

/// `<target dir>/release`: beside this executable when it is a release build (which also
/// honours `CARGO_TARGET_DIR`), else the workspace's default.
fn release_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("release")))
        .unwrap_or_else(|| workspace_root().join("target/release"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `cargo build --release -p jobd -p jobc` (a no-op when they are up to date), so a
/// stale binary is never measured; carries on with existing binaries if cargo is missing.
pub fn ensure_built() -> Result<Binaries> {
    let dir = release_dir();
    let bins = Binaries {
        jobd: dir.join("jobd"),
        jobc: dir.join("jobc"),
    };
    eprintln!("building release jobd and jobc ...");
    let status = Command::new(cargo())
        .args(["build", "--release", "--quiet", "-p", "jobd", "-p", "jobc"])
        .current_dir(workspace_root())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => bail!("cargo build --release -p jobd -p jobc failed ({s})"),
        Err(e) if bins.jobd.exists() && bins.jobc.exists() => {
            eprintln!("warning: cannot run cargo ({e}); using the existing binaries");
        }
        Err(e) => return Err(e).context("cannot run cargo to build jobd and jobc"),
    }
    for bin in [&bins.jobd, &bins.jobc] {
        anyhow::ensure!(bin.exists(), "{} is missing after the build", bin.display());
    }
    Ok(bins)
}

impl Binaries {
    /// The `jobd` and `jobc` of another build, e.g. its `target/release`.
    pub fn in_dir(dir: &Path) -> Result<Binaries> {
        let bins = Binaries {
            jobd: dir.join("jobd"),
            jobc: dir.join("jobc"),
        };
        for bin in [&bins.jobd, &bins.jobc] {
            anyhow::ensure!(
                bin.is_file(),
                "--compare {}: there is no {} (give a build's target/release folder)",
                dir.display(),
                bin.display()
            );
        }
        Ok(bins)
    }
}

/// Whether both `pueue` and `pueued` are on PATH.
pub fn pueue_available() -> bool {
    ["pueue", "pueued"].iter().all(|name| on_path(name))
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(name))
                .map(|m| m.is_file())
                .unwrap_or(false)
        })
    })
}

/// `cargo install pueue --locked`, only when asked and only if pueue is missing.
pub fn install_pueue() -> Result<()> {
    if pueue_available() {
        return Ok(());
    }
    eprintln!("installing pueue with cargo install pueue --locked ...");
    let status = Command::new(cargo())
        .args(["install", "pueue", "--locked"])
        .status()
        .context("cannot run cargo install")?;
    anyhow::ensure!(status.success(), "cargo install pueue failed ({status})");
    anyhow::ensure!(
        pueue_available(),
        "pueue was installed but pueue/pueued are not on PATH (is ~/.cargo/bin in PATH?)"
    );
    Ok(())
}
