//! jobworker-init: PID 1 of every job that has a PID namespace.
//!
//! The kernel delivers to a namespace's PID 1 only the signals it has a handler for, and
//! makes it the parent of every orphan. A program never written to be PID 1 so ignores a
//! plain `kill` and leaves zombies behind. Like tini for `docker run --init`, this init
//! starts the job's program as its one child, forwards to it every signal it receives,
//! reaps whatever reparents to it, and exits as soon as the program has ended, telling
//! jobd exactly how it ended (an exit code cannot tell `exit 143` from SIGTERM).
//!
//! It is its own small program, not code of jobd run after a fork, because it lives as
//! long as the job, as the job's user: it must share nothing with the server. worker's
//! build script compiles it with rustc alone (std, no crates) and links it statically,
//! so its exec costs what an exec of `true` does; the worker library carries the binary
//! and runs it from a sealed memfd, so nothing needs installing.
//!
//! `jobworker-init REPORT_FD PROGRAM ARGV0 [ARGS...]`, in the job's environment, which it
//! passes on. On REPORT_FD, the worker's report pipe, it writes 8-byte messages (code,
//! value), as the worker's spawn reads them: STARTED once the program has exec'd, or
//! EXEC_FAILED with the errno; then, as it exits, EXITED or SIGNALED.
//!
//! jobd orders a signal with [`protocol::ORDER_SIGNAL`] sent by `sigqueue`, whose value
//! names the signal and whether it goes to every process of the job (`kill(-1)` from a
//! namespace's init reaches every process in it but the init) or to the program alone.
//! An order can name SIGKILL or SIGSTOP, which the init itself could not receive to pass on.

#[path = "protocol.rs"]
#[allow(dead_code)]
mod protocol;

use std::ffi::{c_char, CString, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStringExt;

use protocol::*;

const SIGCHLD: i32 = 17;
const WNOHANG: i32 = 1;
const F_SETFD: i32 = 2;
const FD_CLOEXEC: i32 = 1;
const PR_SET_NAME: i32 = 15;
const PR_SET_DUMPABLE: i32 = 4;
const SIGPIPE: i32 = 13;
const SIG_SETMASK: i64 = 2;
const O_CLOEXEC: i32 = 0o2000000;
/// `si_code` of a signal sent with `sigqueue`.
const SI_QUEUE: i32 = -1;

#[cfg(target_arch = "x86_64")]
mod sys {
    pub const RT_SIGPROCMASK: i64 = 14;
    pub const RT_SIGTIMEDWAIT: i64 = 128;
}
#[cfg(target_arch = "aarch64")]
mod sys {
    pub const RT_SIGPROCMASK: i64 = 135;
    pub const RT_SIGTIMEDWAIT: i64 = 137;
}

extern "C" {
    fn syscall(number: i64, ...) -> i64;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn kill(pid: i32, signal: i32) -> i32;
    fn fcntl(fd: i32, command: i32, ...) -> i32;
    fn prctl(option: i32, ...) -> i32;
    fn signal(signal: i32, handler: usize) -> usize;
    fn pipe2(fds: *mut i32, flags: i32) -> i32;
    fn fork() -> i32;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> i32;
    fn read(fd: i32, buf: *mut u8, n: usize) -> isize;
    fn write(fd: i32, buf: *const u8, n: usize) -> isize;
    fn close(fd: i32) -> i32;
    fn _exit(code: i32) -> !;
    fn __errno_location() -> *mut i32;
    static environ: *const *const c_char;
}

/// Every signal, 1 to 64, as the kernel's 64-bit mask (glibc's own calls would leave out
/// the two it reserves, and the default action of those would end this init).
const ALL_SIGNALS: u64 = u64::MAX;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let report = args
        .next()
        .and_then(|fd| fd.to_str()?.parse::<i32>().ok())
        .filter(|fd| *fd > 2);
    let (Some(report), Some(program), Some(argv0)) = (report, args.next(), args.next()) else {
        eprintln!("jobworker-init: usage: jobworker-init REPORT_FD PROGRAM ARGV0 [ARGS...]");
        std::process::exit(127);
    };
    // SAFETY: jobd passes its report pipe's write end under this number, for us to own.
    let mut report = Report(unsafe { File::from_raw_fd(report) });
    if let Err(errno) = set_up(&report) {
        report.say(REPORT_INIT_FAILED, errno);
        std::process::exit(127);
    }
    let argv: Vec<OsString> = std::iter::once(argv0).chain(args).collect();
    let program = match spawn(program, argv) {
        Ok(pid) => pid,
        Err(errno) => {
            report.say(REPORT_EXEC_FAILED, errno);
            std::process::exit(127);
        }
    };
    report.say(REPORT_STARTED, 0);
    loop {
        let (signal, info) = wait_signal();
        if signal == SIGCHLD {
            if let Some(status) = reap_all(program) {
                finish(&mut report, status);
            }
            continue;
        }
        let order = (signal == ORDER_SIGNAL
            && info.code == SI_QUEUE
            && info.value & !(ORDER_ALL | ORDER_SIGNAL_MASK) == ORDER_MAGIC)
            .then_some(info.value);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            match order {
                Some(value) if value & ORDER_ALL != 0 => kill(-1, value & ORDER_SIGNAL_MASK),
                Some(value) => kill(program, value & ORDER_SIGNAL_MASK),
                None => kill(program, signal),
            }
        };
    }
}

/// The report pipe's write end.
struct Report(File);

impl Report {
    fn say(&mut self, code: u32, value: i32) {
        let mut message = [0u8; 8];
        message[..4].copy_from_slice(&code.to_ne_bytes());
        message[4..].copy_from_slice(&value.to_ne_bytes());
        // Nobody is left to tell if jobd is gone.
        let _ = self.0.write_all(&message);
    }
}

/// Keeps the report pipe from the program, blocks every signal so that each is taken, in
/// turn, by [`wait_signal`], takes a name for `ps` (exec'd from a memfd, it would show as a
/// descriptor number), and makes itself undumpable: the job runs as the same user, and a
/// job that could trace its init could stop it before it reports, or make it report an
/// end that did not happen. Returns the errno of what failed.
fn set_up(report: &Report) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: fcntl on a descriptor we own; the mask is read from a local.
    unsafe {
        if fcntl(report.0.as_raw_fd(), F_SETFD, FD_CLOEXEC) < 0 {
            return Err(errno());
        }
        let mask = ALL_SIGNALS;
        if syscall(
            sys::RT_SIGPROCMASK,
            0i64,
            &mask as *const u64,
            0usize,
            8usize,
        ) < 0
        {
            return Err(errno());
        }
        prctl(PR_SET_NAME, c"jobworker-init".as_ptr());
        if prctl(PR_SET_DUMPABLE, 0) < 0 {
            return Err(errno());
        }
        // Rust's runtime ignores SIGPIPE, and an ignored signal stays ignored across exec.
        signal(SIGPIPE, 0);
    }
    Ok(())
}

/// Forks and execs the program with every signal unblocked, in this environment.
/// Returns its pid, or the errno of a failed exec (the child then exits with 127).
fn spawn(program: OsString, argv: Vec<OsString>) -> Result<i32, i32> {
    let c = |s: OsString| CString::new(s.into_vec()).map_err(|_| 22); // EINVAL
    let program = c(program)?;
    let argv: Vec<CString> = argv.into_iter().map(c).collect::<Result<_, _>>()?;
    let mut pointers: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let mut pipe = [0i32; 2];
    // SAFETY: this process has one thread, so the child of fork may run anything until
    // exec; every pointer handed over is to a live local.
    unsafe {
        if pipe2(pipe.as_mut_ptr(), O_CLOEXEC) < 0 {
            return Err(*__errno_location());
        }
        let pid = fork();
        if pid < 0 {
            return Err(*__errno_location());
        }
        if pid == 0 {
            let none = 0u64;
            syscall(
                sys::RT_SIGPROCMASK,
                SIG_SETMASK,
                &none as *const u64,
                0usize,
                8usize,
            );
            execve(program.as_ptr(), pointers.as_ptr(), environ);
            let errno = *__errno_location();
            write(pipe[1], (&errno as *const i32).cast(), 4);
            _exit(127);
        }
        close(pipe[1]);
        // End of file: the exec closed the pipe. Four bytes: the exec's errno.
        let mut errno = 0i32;
        let n = loop {
            let n = read(pipe[0], (&mut errno as *mut i32).cast(), 4);
            if n >= 0 || *__errno_location() != 4 {
                break n;
            }
        };
        close(pipe[0]);
        if n == 4 {
            let mut status = 0;
            waitpid(pid, &mut status, 0);
            return Err(errno);
        }
        Ok(pid)
    }
}

/// The next signal, with what came with it.
fn wait_signal() -> (i32, QueuedSigInfo) {
    let mask = ALL_SIGNALS;
    loop {
        let mut info = QueuedSigInfo::zeroed();
        // SAFETY: the mask and the 128-byte info are locals; no timeout.
        let signal = unsafe {
            syscall(
                sys::RT_SIGTIMEDWAIT,
                &mask as *const u64,
                &mut info as *mut QueuedSigInfo,
                0usize,
                8usize,
            )
        };
        if signal > 0 {
            return (signal as i32, info);
        }
    }
}

/// Reaps every child that has ended; returns the program's wait status if it was one.
fn reap_all(program: i32) -> Option<i32> {
    let mut ended = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
        if pid <= 0 {
            return ended;
        }
        if pid == program {
            ended = Some(status);
        }
    }
}

/// Tells jobd how the program ended and exits the same way, as far as an init can: the
/// kernel then kills whatever is left in the namespace.
fn finish(report: &mut Report, status: i32) -> ! {
    let signal = status & 0x7f;
    if signal == 0 {
        let code = (status >> 8) & 0xff;
        report.say(REPORT_EXITED, code);
        std::process::exit(code);
    }
    report.say(REPORT_SIGNALED, signal);
    std::process::exit(128 + signal);
}
