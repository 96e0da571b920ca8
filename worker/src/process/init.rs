//! The job init's binary, and how the worker talks to a running init.
//!
//! Every job with a PID namespace runs `worker/init/main.rs` as its PID 1 (why, and what
//! it does, is said there). The build script compiles it; this library carries it and,
//! once per worker, copies it into a sealed memfd that each child execs by descriptor:
//! there is no file to install, to find in a mount namespace, or to replace under a
//! running server.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

pub(crate) mod protocol {
    include!("../../init/protocol.rs");
}

static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/jobworker-init"));

/// The init's executable, ready to be exec'd by descriptor.
#[derive(Debug)]
pub struct InitProgram(OwnedFd);

impl InitProgram {
    /// Copies the binary into a memfd and seals it, so that no job can change the init of
    /// another (the seals stop writes through any descriptor or mapping).
    pub fn load() -> io::Result<InitProgram> {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        // Since Linux 6.3 a memfd must say that it is executable, where the host's
        // `vm.memfd_noexec` does not refuse that outright; before, the flag is unknown.
        let fd = match rustix::fs::memfd_create("jobworker-init", flags | MemfdFlags::EXEC) {
            Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create("jobworker-init", flags)?,
            made => made?,
        };
        let mut file = std::fs::File::from(fd);
        file.write_all(BINARY)?;
        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o555))?;
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )?;
        Ok(InitProgram(file.into()))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Orders the init of process `init` to send `signal` to the job's program, or with
/// `all` to every process of the job (SIGKILL and SIGSTOP included, which it could not
/// receive itself). The caller guarantees that `init` is not reaped yet.
pub(crate) fn order(init: i32, signal: i32, all: bool) -> io::Result<()> {
    use protocol::{QueuedSigInfo, ORDER_ALL, ORDER_MAGIC, ORDER_SIGNAL, ORDER_SIGNAL_MASK};
    let value = ORDER_MAGIC | if all { ORDER_ALL } else { 0 } | (signal & ORDER_SIGNAL_MASK);
    let info = QueuedSigInfo {
        signo: ORDER_SIGNAL,
        // SI_QUEUE, as sigqueue(3) sends it.
        code: -1,
        pid: std::process::id() as i32,
        // SAFETY: getuid has no preconditions.
        uid: unsafe { libc::getuid() },
        value,
        ..QueuedSigInfo::zeroed()
    };
    // SAFETY: a 128-byte siginfo of ours that the kernel only reads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigqueueinfo,
            init,
            ORDER_SIGNAL,
            &info as *const QueuedSigInfo,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_binary_is_sealed_and_executable() {
        let init = InitProgram::load().unwrap();
        let seals = rustix::fs::fcntl_get_seals(init.fd()).unwrap();
        assert!(seals.contains(SealFlags::WRITE | SealFlags::SEAL));
        let mut file = std::fs::File::from(init.0.try_clone().unwrap());
        assert!(
            file.write_all(b"x").is_err(),
            "a sealed init can be written"
        );
        assert_eq!(std::mem::size_of::<protocol::QueuedSigInfo>(), 128);
    }
}
