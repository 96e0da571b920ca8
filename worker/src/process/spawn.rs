//! Starting a job's process with one `clone3` call.
//!
//! `clone3` gives us, in the same system call, a pidfd (exit notification without
//! polling and signals without PID-reuse races) and, once cgroups are on, placement in the
//! job's cgroup before the child runs a single instruction of its own. Namespaces become
//! more flags on the same call.
//!
//! Between `clone3` and `execve` the child is a copy of a multi-threaded process, so it
//! may only make async-signal-safe system calls: everything it needs (paths, argv, envp,
//! file descriptors) is prepared by the parent beforehand, and the child neither allocates
//! nor takes a lock. A failure in the child is reported through a close-on-exec pipe as
//! `(stage, errno)`; end of file on that pipe means `execve` succeeded.
//!
//! The exec gate: once set up (in its cgroup, namespaces, session, as its user), the child
//! says so on that pipe and blocks reading a second one, the [`Gate`], before it execs.
//! The pid is known as soon as `clone3` returns, so the job is recorded by another thread
//! while the child sets itself up, and released with one byte (often before the child
//! gets there, so it never waits). If jobd dies first, or cannot record the job, the child
//! reads end of file and exits without running a single instruction of the job's program:
//! a job's program never runs untracked, with or without cgroups.
//!
//! With a PID namespace the child is the namespace's PID 1. Past its gate it starts the
//! program as its own child (PID 2, on a stack of its own in the same memory) and, without
//! waiting, execs the job's init (see [`crate::process::init`]) from its memfd, which so
//! becomes the program's parent: the two execs run side by side. The report pipe is
//! close-on-exec in both, so end of file still means "both have exec'd" (or failed and
//! said why). The init says how the program ended on a status pipe of its own, which
//! [`wait_job`] reads.

use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use std::sync::Arc;

use crate::process::init::protocol::*;
use crate::process::init::InitProgram;
use crate::spec::Isolation;

const CLONE_VM: u64 = 0x100;
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Where in the child a failure happened, so the error names the step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Setsid,
    Stdio,
    Chdir,
    Exec,
    MountPrivate,
    MountProc,
    MountSys,
    LoopbackUp,
    Credentials,
    NoNewPrivs,
    JoinNetns,
    CloseFds,
    MountTmp,
    Init,
}

impl Stage {
    const ALL: [Stage; 14] = [
        Stage::Setsid,
        Stage::Stdio,
        Stage::Chdir,
        Stage::Exec,
        Stage::MountPrivate,
        Stage::MountProc,
        Stage::MountSys,
        Stage::LoopbackUp,
        Stage::Credentials,
        Stage::NoNewPrivs,
        Stage::JoinNetns,
        Stage::CloseFds,
        Stage::MountTmp,
        Stage::Init,
    ];

    fn code(self) -> u32 {
        self as u32
    }

    fn from_code(code: u32) -> Stage {
        Stage::ALL
            .get(code as usize)
            .copied()
            .unwrap_or(Stage::Exec)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Setsid => "setsid",
            Stage::Stdio => "redirect stdio",
            Stage::Chdir => "chdir",
            Stage::Exec => "exec",
            Stage::MountPrivate => "make the mount namespace private",
            Stage::MountProc => "mount /proc",
            Stage::MountSys => "mount /sys",
            Stage::LoopbackUp => "bring up loopback",
            Stage::Credentials => "switch user",
            Stage::NoNewPrivs => "set no_new_privs",
            Stage::JoinNetns => "enter its network namespace",
            Stage::CloseFds => "close inherited descriptors",
            Stage::MountTmp => "mount a private /tmp",
            Stage::Init => "start the job's init",
        })
    }
}

/// The `clone3` flags that give the child the new namespaces of `isolation`.
fn clone_flags(isolation: Isolation) -> u64 {
    (if isolation.pid { CLONE_NEWPID } else { 0 })
        | (if isolation.mount { CLONE_NEWNS } else { 0 })
        | (if isolation.net { CLONE_NEWNET } else { 0 })
}

/// The user and group the child switches to before exec (supplementary groups dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// Why a spawn failed: in the parent (`clone3` itself) or in the child at a given stage.
#[derive(Debug)]
pub enum SpawnError {
    Clone(io::Error),
    /// `clone3` failed for a reason namespaces explain (EPERM, ENOSPC, EINVAL with flags).
    Namespaces(io::Error),
    Child {
        stage: Stage,
        error: io::Error,
    },
    /// The [`Gate`] was dropped unreleased (the job could not be recorded): the child
    /// exited without running the program.
    Refused,
}

/// Everything the child needs, prepared by the parent so the child allocates nothing.
pub struct Command {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    /// New namespaces, created by the same `clone3` that starts the child.
    namespaces: Isolation,
    /// A network namespace made ahead (see [`crate::process::netns`]) to enter instead of a new one.
    netns: Option<OwnedFd>,
    credentials: Option<Credentials>,
    /// tmpfs options for a private `/tmp` and `/var/tmp`, with a mount namespace.
    tmp: Option<CString>,
    /// The init that a job with a PID namespace execs as its PID 1, beside the program.
    init: Option<Arc<InitProgram>>,
}

impl Command {
    /// `program` is the path to execute; `argv[0]` is passed as given.
    pub fn new(program: CString, argv: Vec<CString>, envp: Vec<CString>, cwd: CString) -> Self {
        Command {
            program,
            argv,
            envp,
            cwd,
            namespaces: Isolation::NONE,
            netns: None,
            credentials: None,
            tmp: None,
            init: None,
        }
    }

    /// Runs `init` as the job's PID 1, and the program as its child, when the job has a
    /// PID namespace (see `worker/init/main.rs`).
    pub fn init(mut self, init: Arc<InitProgram>) -> Self {
        self.init = Some(init);
        self
    }

    /// The init the child execs, if it has one.
    fn init_to_exec(&self) -> Option<&InitProgram> {
        self.init.as_deref().filter(|_| self.namespaces.pid)
    }

    pub fn namespaces(mut self, namespaces: Isolation) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// With `namespaces.net`, enters `netns` (fresh, unused, `lo` up) instead of creating
    /// a namespace in `clone3`.
    pub fn netns(mut self, netns: Option<OwnedFd>) -> Self {
        self.netns = netns;
        self
    }

    /// The namespace made ahead that the child enters, if it gets a network namespace.
    fn netns_to_join(&self) -> Option<&OwnedFd> {
        self.netns.as_ref().filter(|_| self.namespaces.net)
    }

    pub fn credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// With `namespaces.mount`, a fresh tmpfs of at most `size` bytes on `/tmp` and on
    /// `/var/tmp` (where the host has one), like systemd's `PrivateTmp=`: what a job leaves
    /// there is seen by no other job and goes away with the job's mount namespace.
    pub fn private_tmp(mut self, size: Option<u64>) -> Self {
        self.tmp = size.map(|bytes| {
            CString::new(format!("mode=1777,size={bytes}")).expect("digits and letters hold no NUL")
        });
        self
    }
}

/// The standard streams and the optional cgroup of the new process.
pub struct Stdio<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    pub cgroup: Option<BorrowedFd<'a>>,
}

/// A started process, not yet reaped.
pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// With an init, the read end of its status pipe, on which it tells how the program
    /// ended.
    status: Option<OwnedFd>,
}

/// What the child needs, in one place it can be handed by pointer.
#[derive(Clone, Copy)]
struct ChildContext<'a> {
    cmd: &'a Command,
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
    /// `jobworker-init STATUS_FD PROGRAM_PID`, when there is an init; the child writes
    /// the pid into `program_pid` first.
    init_argv: &'a [*const c_char],
    /// The init's status pipe (write end), or -1.
    status: RawFd,
    /// Room for the program's pid in decimal and a NUL, in the parent's memory.
    program_pid: *mut u8,
    /// The top of the stack the program's process runs on until it execs; null without
    /// an init.
    program_stack: *mut u8,
    stdio: &'a Stdio<'a>,
    report: RawFd,
    /// The exec gate's read end: one byte releases the child, end of file ends it.
    gate: RawFd,
}

/// Room for the child's few frames until exec; the child only makes system calls.
#[cfg(target_arch = "x86_64")]
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// Starts the child sharing our memory (`CLONE_VM`) instead of copying page tables (the
/// cost of a fork grows with the server's memory; this does not). Not `CLONE_VFORK`: this
/// thread must run while the child waits at the exec gate. The child runs on `stack`
/// with every signal blocked (so none of our handlers can run in it), and unblocks them
/// only once it has reset their dispositions. It shares this thread's `errno`, so this
/// thread makes no system call that could fail while the child lives: it hands the gate
/// to another thread and waits on the report pipe (see [`spawn`]). Returns the child's
/// pid, or -1 with errno set.
///
/// # Safety
/// `ctx` and `stack` must stay valid, and unused by anyone else, until the child has
/// exec'd or exited (end of file on the report pipe); signals must be blocked.
#[cfg(target_arch = "x86_64")]
unsafe fn clone_child(
    args: &mut CloneArgs,
    ctx: &ChildContext<'_>,
    stack: &mut [u128],
) -> libc::c_long {
    args.flags |= CLONE_VM;
    args.stack = stack.as_mut_ptr() as u64;
    args.stack_size = std::mem::size_of_val(stack) as u64;
    let ret: libc::c_long;
    // The child returns from the system call on its new stack: it must not touch this
    // function's frame, so it goes straight into `child_entry` with the context pointer.
    // SAFETY: the caller keeps `ctx` and `stack` alive for the child (this function's
    // contract); the parent's side of the asm only makes the system call, clobbering
    // rcx and r11 as `syscall` does.
    unsafe {
        std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r12",
        "call r13",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") args as *mut CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") ctx as *const ChildContext<'_>,
        in("r13") child_entry as unsafe extern "C" fn(*const ChildContext<'_>) -> !,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
        );
    }
    // The raw system call returns -errno; report it as libc wrappers do.
    if ret < 0 {
        // SAFETY: __errno_location returns this thread's errno, valid for writes.
        unsafe { *libc::__errno_location() = -ret as i32 };
        return -1;
    }
    ret
}

/// Elsewhere: a fork-style `clone3` (the child gets a copy of our memory and this stack).
///
/// # Safety
/// As for the x86_64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone_child(
    args: &mut CloneArgs,
    ctx: &ChildContext<'_>,
    _stack: &mut [u128],
) -> libc::c_long {
    // SAFETY: as the caller promised for this function.
    let ret = unsafe { clone3(args) };
    if ret == 0 {
        // SAFETY: `ctx` is valid in the child's copy of memory.
        unsafe { child_entry(ctx) };
    }
    ret
}

/// The child's first Rust frame.
///
/// # Safety
/// Only in a child just cloned by [`clone_child`], with `ctx` pointing to the context
/// the parent keeps alive until the child has exec'd or exited.
unsafe extern "C" fn child_entry(ctx: *const ChildContext<'_>) -> ! {
    // SAFETY: the contract above: `ctx` is valid and nobody else uses it meanwhile.
    unsafe { child_after_clone(&*ctx) }
}

/// The raw `clone3` system call: 0 in the child, its pid in the parent, -1 on error.
///
/// # Safety
/// Without CLONE_VM the child gets a copy of the address space and continues on its own
/// copy of this stack, as after `fork`; in a multi-threaded process it may then only make
/// async-signal-safe calls until it execs or exits.
unsafe fn clone3(args: &mut CloneArgs) -> libc::c_long {
    // SAFETY: `args` is a valid `clone_args` of the size passed; what the child may do
    // after is the caller's contract.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    }
}

fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// What the report pipe said.
#[derive(Debug)]
enum Report {
    /// End of file: the child exec'd (or, before the gate, died without a word).
    Closed,
    /// The child waits at the exec gate.
    AtGate,
    /// The gate closed unreleased; the child exits without exec.
    Refused,
    Failed(Stage, i32),
    /// The init tells how the program ended.
    Ended(ExitStatus),
}

/// The parent's end of a child's exec gate. [`Gate::release`] lets the child exec;
/// dropping the gate unreleased makes it exit with 127 and never run the program.
#[derive(Debug)]
pub struct Gate(OwnedFd);

impl Gate {
    /// Lets the child exec, now or as soon as it has set itself up. A child that died
    /// meanwhile makes the write fail (EPIPE), which its report explains.
    pub fn release(self) {
        let _ = rustix::io::write(&self.0, &[1]);
    }
}

/// Blocks every signal in this thread until dropped: no handler runs here, and no system
/// call of ours is interrupted, while the child shares our memory and our `errno`.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        // SAFETY: sigset_t is plain data, filled by sigfillset; pthread_sigmask only
        // changes this thread's mask and stores the old one in `old`.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new` on this same thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Starts `cmd` in a new session with the given stdio, and returns once it has exec'd.
///
/// `hand_over` gets the child's pid and its [`Gate`] right after `clone3`, while the child
/// still sets itself up in this thread's memory and `errno`: it must only pass them to
/// another thread (a channel send), which records the job and releases the gate. If the
/// gate is dropped unreleased, the child exits and this returns [`SpawnError::Refused`].
pub fn spawn(
    cmd: &Command,
    stdio: &Stdio<'_>,
    hand_over: impl FnOnce(i32, Gate),
) -> Result<Child, SpawnError> {
    let argv = pointers(&cmd.argv);
    let envp = pointers(&cmd.envp);
    let (report_r, report_w) = pipe_cloexec().map_err(SpawnError::Clone)?;
    let (gate_r, gate_w) = pipe_cloexec().map_err(SpawnError::Clone)?;
    let status = match cmd.init_to_exec() {
        Some(_) => Some(pipe_cloexec().map_err(SpawnError::Clone)?),
        None => None,
    };
    let mut program_pid = [0u8; PID_TEXT_BYTES];
    let init_args: Vec<CString> = match &status {
        Some((_, status_w)) => vec![
            CString::from(c"jobworker-init"),
            CString::new(status_w.as_raw_fd().to_string()).expect("digits hold no NUL"),
        ],
        None => Vec::new(),
    };
    let mut init_argv = pointers(&init_args);
    if !init_args.is_empty() {
        // The pid, written by the child into `program_pid`, goes before the final null.
        init_argv.insert(2, program_pid.as_mut_ptr().cast_const().cast());
    }
    // Kept, like the child's own stack below, until the program's process has exec'd.
    let mut program_stack = status
        .is_some()
        .then(|| std::mem::ManuallyDrop::new(vec![0u128; CHILD_STACK_BYTES / 16]));

    let mut flags = CLONE_PIDFD | clone_flags(cmd.namespaces);
    if cmd.netns_to_join().is_some() {
        flags &= !CLONE_NEWNET; // the child enters the one made ahead
    }
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(cgroup) = stdio.cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cgroup.as_raw_fd() as u64;
    }

    let ctx = ChildContext {
        cmd,
        argv: &argv,
        envp: &envp,
        init_argv: &init_argv,
        status: status.as_ref().map_or(-1, |(_, w)| w.as_raw_fd()),
        program_pid: program_pid.as_mut_ptr(),
        // The top: stacks grow down.
        program_stack: program_stack
            .as_mut()
            .map_or(std::ptr::null_mut(), |s| s.as_mut_ptr_range().end.cast()),
        stdio,
        report: report_w.as_raw_fd(),
        gate: gate_r.as_raw_fd(),
    };
    // 16-byte aligned, and a multiple of 16 long: the stack top the kernel hands the
    // child is then aligned as the ABI wants at a call. Kept (like `ctx`) until the child
    // has exec'd or exited, which `read_report` below sees as end of file; leaked, not
    // freed, should `hand_over` panic, since the child may still be on it then.
    let mut stack = std::mem::ManuallyDrop::new(vec![0u128; CHILD_STACK_BYTES / 16]);
    let blocked = SignalsBlocked::new();
    // SAFETY: `ctx` and the stacks outlive the child's (and the program's process's) use
    // of them: this function frees them only after end of file on the report pipe, whose
    // write end each holds until it execs or exits, or once the child has been reaped;
    // signals are blocked; the child makes only async-signal-safe calls and never returns.
    let ret = unsafe { clone_child(&mut args, &ctx, &mut stack) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        drop(blocked);
        let ns_errors = [libc::EPERM, libc::ENOSPC, libc::EINVAL, libc::EUSERS];
        if cmd.namespaces != Isolation::NONE && ns_errors.contains(&e.raw_os_error().unwrap_or(0)) {
            return Err(SpawnError::Namespaces(e));
        }
        return Err(SpawnError::Clone(e));
    }

    // Parent. Close our copies of the child's ends, so end of file means the child has
    // exec'd or exited (report) and that nobody will release it (gate).
    drop(report_w);
    drop(gate_r);
    // SAFETY: CLONE_PIDFD stored a new descriptor that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let (status_r, status_w) = status.unzip();
    // Only the init may hold the write end, so that end of file means it is gone.
    drop(status_w);
    let mut child = Child {
        pid: ret as i32,
        pidfd,
        status: None,
    };
    hand_over(child.pid, Gate(gate_w));
    let unexpected = |what: &str| Err(SpawnError::Clone(io::Error::other(what.to_string())));
    let outcome = match read_report(report_r.as_fd()) {
        Ok(Report::AtGate) => match read_report(report_r.as_fd()) {
            Ok(Report::Closed) => Ok(()),
            Ok(Report::Refused) => Err(SpawnError::Refused),
            Ok(Report::Failed(stage, errno)) => Err(SpawnError::Child {
                stage,
                error: io::Error::from_raw_os_error(errno),
            }),
            Ok(_) => unexpected("the child reported out of turn after its exec gate"),
            Err(e) => Err(SpawnError::Clone(e)),
        },
        Ok(Report::Failed(stage, errno)) => Err(SpawnError::Child {
            stage,
            error: io::Error::from_raw_os_error(errno),
        }),
        Ok(Report::Closed) => unexpected("the child died before its exec gate"),
        Ok(_) => unexpected("the child reported out of turn before its exec gate"),
        Err(e) => Err(SpawnError::Clone(e)),
    };
    drop(blocked);
    match outcome {
        Ok(()) => {
            drop(std::mem::ManuallyDrop::into_inner(stack));
            drop(program_stack.map(std::mem::ManuallyDrop::into_inner));
            child.status = status_r;
            Ok(child)
        }
        Err(e) => {
            // The child has reported and is exiting with 127: reap it so no zombie is left,
            // and only then free the stacks it (or the program's process) may still be on.
            let _ = wait(child.pidfd.as_fd());
            drop(std::mem::ManuallyDrop::into_inner(stack));
            drop(program_stack.map(std::mem::ManuallyDrop::into_inner));
            Err(e)
        }
    }
}

/// Reaps the job's first process and tells how the job's program ended: the process's
/// own status, or, where it is the job's init, what the init last reported. An init that
/// did not report (killed, say, by a stop's SIGKILL) ended with its program.
pub fn wait_job(child: &Child) -> io::Result<ExitStatus> {
    let status = wait(child.pidfd.as_fd())?;
    let Some(report) = child.status.as_ref() else {
        return Ok(status);
    };
    // Whatever the init wrote is in the pipe by now; never wait for more.
    rustix::fs::fcntl_setfl(report, rustix::fs::OFlags::NONBLOCK)?;
    Ok(match (status, read_report(report.as_fd())) {
        (ExitStatus::Exited(_), Ok(Report::Ended(program))) => program,
        (ExitStatus::Exited(code), report) => {
            // An init ends by itself only once the program has; its PID namespace, and so
            // the program, dies with it. Killed is what the job was.
            tracing::error!(
                code,
                ?report,
                "the job's init exited without telling how the program ended"
            );
            ExitStatus::Signaled(libc::SIGKILL)
        }
        _ => status,
    })
}

fn read_report(fd: BorrowedFd<'_>) -> io::Result<Report> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of a local buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 if got == 0 => return Ok(Report::Closed),
            // Non-blocking, once the writer is gone: nothing was written.
            n if n < 0
                && got == 0
                && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock =>
            {
                return Ok(Report::Closed)
            }
            0 => return Err(io::Error::other("truncated report from child")),
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    // The init runs as the job's user: a value it sends is checked, not trusted.
    Ok(match stage {
        REPORT_AT_GATE => Report::AtGate,
        REPORT_REFUSED => Report::Refused,
        REPORT_EXITED if (0..=255).contains(&errno) => Report::Ended(ExitStatus::Exited(errno)),
        REPORT_SIGNALED if (1..=64).contains(&errno) => Report::Ended(ExitStatus::Signaled(errno)),
        REPORT_EXITED | REPORT_SIGNALED => {
            return Err(io::Error::other(
                "the job's init reported an impossible status",
            ))
        }
        code => Report::Failed(Stage::from_code(code), errno),
    })
}

/// The child's side, from `clone3` to `execve`. Only async-signal-safe system calls, and
/// raw ones where glibc's wrapper would consult thread state that this copy of a
/// multi-threaded process no longer matches (the set*id family).
///
/// # Safety
/// Only in a child just cloned by [`clone_child`], before it execs: it closes and
/// replaces descriptors that Rust objects of the parent own, and runs on memory the
/// parent shares with it.
unsafe fn child_after_clone(ctx: &ChildContext<'_>) -> ! {
    let ChildContext {
        cmd,
        argv,
        envp,
        init_argv,
        status,
        program_pid,
        program_stack,
        stdio,
        report,
        gate,
    } = *ctx;
    fn fail(report: RawFd, stage: Stage) -> ! {
        // SAFETY: reads this thread's errno.
        say(report, stage.code(), unsafe { *libc::__errno_location() });
        // SAFETY: _exit ends the child without running anything of the parent's.
        unsafe { libc::_exit(127) }
    }
    // SAFETY: this function's contract. Every call below is an async-signal-safe system
    // call on the parent's prepared, still-valid data (C strings, descriptors, argv and
    // envp arrays), or a raw one where glibc's wrapper would consult thread state.
    unsafe {
        if libc::setsid() < 0 {
            fail(report, Stage::Setsid);
        }
        let ns = cmd.namespaces;
        let made_ahead = cmd.netns_to_join();
        // First, so /sys below shows this namespace's devices.
        if let Some(netns) = made_ahead {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                fail(report, Stage::JoinNetns);
            }
        }
        if ns.mount {
            // Nothing the job mounts may propagate back to the host.
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if mount(None, c"/", None, private) < 0 {
                fail(report, Stage::MountPrivate);
            }
            let fresh = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            // A /proc of the job's own PID namespace: `ps` shows only its processes.
            if ns.pid && mount(Some(c"proc"), c"/proc", Some(c"proc"), fresh) < 0 {
                fail(report, Stage::MountProc);
            }
            // sysfs shows the network devices of the namespace that mounts it.
            if ns.net
                && mount(
                    Some(c"sysfs"),
                    c"/sys",
                    Some(c"sysfs"),
                    fresh | libc::MS_RDONLY,
                ) < 0
            {
                fail(report, Stage::MountSys);
            }
        }
        if let Some(options) = cmd.tmp.as_ref().filter(|_| ns.mount) {
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            if mount_with(c"tmpfs", c"/tmp", c"tmpfs", flags, options) < 0 {
                fail(report, Stage::MountTmp);
            }
            if mount_with(c"tmpfs", c"/var/tmp", c"tmpfs", flags, options) < 0
                && *libc::__errno_location() != libc::ENOENT
            {
                fail(report, Stage::MountTmp);
            }
        }
        if ns.net && made_ahead.is_none() && !loopback_up() {
            fail(report, Stage::LoopbackUp);
        }
        for (fd, target) in [
            (stdio.stdin.as_raw_fd(), 0),
            (stdio.stdout.as_raw_fd(), 1),
            (stdio.stderr.as_raw_fd(), 2),
        ] {
            // dup2 onto itself would keep FD_CLOEXEC; clear it explicitly in that case.
            let ok = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                fail(report, Stage::Stdio);
            }
        }
        // The Rust runtime ignores SIGPIPE and exec keeps ignored signals ignored; jobs expect
        // default dispositions and an empty signal mask, as from a login shell.
        // The raw system call, because glibc's wrapper refuses its own reserved signals
        // (32, 33), which a parent may have left ignored.
        let default_action = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=64usize {
            if sig != libc::SIGKILL as usize && sig != libc::SIGSTOP as usize {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &default_action as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
        // An init keeps every signal blocked, to take each in turn once it runs; the program
        // unblocks them before its exec.
        let init = cmd
            .init_to_exec()
            .map_or(report, |init| init.fd().as_raw_fd());
        if init == report {
            unblock_all_signals();
        }
        if let Some(Credentials { uid, gid }) = cmd.credentials {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
            {
                fail(report, Stage::Credentials);
            }
        }
        // As the job's user: a directory it may not enter fails here.
        if libc::chdir(cmd.cwd.as_ptr()) < 0 {
            fail(report, Stage::Chdir);
        }
        // No setuid binary or file capability can give the job more than it starts with.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(report, Stage::NoNewPrivs);
        }
        // The exec gate. Every other descriptor goes first: a copy of another start's gate
        // kept here would keep that child waiting, and ours waiting on it, if jobd died now.
        let kept = if status < 0 { report } else { status };
        if !close_all_but([0, 1, 2, report, gate, init, kept]) {
            fail(report, Stage::CloseFds);
        }
        say(report, REPORT_AT_GATE, 0);
        let mut byte = 0u8;
        if libc::read(gate, (&mut byte as *mut u8).cast(), 1) != 1 {
            // End of file: jobd died or could not record the job. Never run it.
            say(report, REPORT_REFUSED, 0);
            libc::_exit(127);
        }
        libc::close(gate);
        if init != report {
            // The program, as this process's child: PID 2. Until it execs it runs on its
            // own stack in this memory. A program that cannot exec says why on the report
            // pipe, and the init then ends with it.
            let pid = libc::clone(
                program_entry,
                program_stack.cast(),
                libc::CLONE_VM | libc::SIGCHLD,
                (ctx as *const ChildContext<'_>).cast_mut().cast(),
            );
            if pid < 0 {
                fail(report, Stage::Init);
            }
            write_decimal(pid, program_pid);
            // The init keeps the status pipe, to say how the program ended.
            if libc::fcntl(status, libc::F_SETFD, 0) < 0 {
                fail(report, Stage::Init);
            }
            libc::syscall(
                libc::SYS_execveat,
                init,
                c"".as_ptr(),
                init_argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            fail(report, Stage::Init)
        }
        libc::execve(cmd.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(report, Stage::Exec)
    }
}

/// The program's process, cloned by a job's PID 1 with `CLONE_VM`: unblocks every signal
/// and execs the program; if it cannot, says why and exits.
extern "C" fn program_entry(ctx: *mut libc::c_void) -> libc::c_int {
    // SAFETY: PID 1 passes the context, which the parent keeps valid until this process
    // has exec'd or exited (its copy of the report pipe closes then); only
    // async-signal-safe calls follow.
    unsafe {
        let ctx = &*(ctx as *const ChildContext<'_>);
        unblock_all_signals();
        libc::execve(
            ctx.cmd.program.as_ptr(),
            ctx.argv.as_ptr(),
            ctx.envp.as_ptr(),
        );
        // errno is shared with PID 1 (same memory, same thread pointer), whose calls that
        // run meanwhile (fcntl, execveat) set it only if they fail: the start fails then
        // anyway.
        say(ctx.report, Stage::Exec.code(), *libc::__errno_location());
        libc::_exit(127)
    }
}

/// Writes one message, `(code, errno)`, on the report pipe; async-signal-safe.
fn say(report: RawFd, code: u32, errno: i32) {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&code.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes a local buffer of its own length.
    unsafe { libc::write(report, msg.as_ptr().cast(), msg.len()) };
}

/// Unblocks every signal (the raw call: glibc's would keep its own two blocked).
fn unblock_all_signals() {
    let none = 0u64;
    // SAFETY: reads a local mask of the kernel's size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

/// Digits of a pid, and a NUL.
const PID_TEXT_BYTES: usize = 12;

/// Writes `n` (not negative) in decimal, NUL-terminated, into `out` (PID_TEXT_BYTES
/// long); async-signal-safe.
///
/// # Safety
/// `out` must be valid for PID_TEXT_BYTES bytes of writes.
unsafe fn write_decimal(n: i32, out: *mut u8) {
    let mut digits = [0u8; PID_TEXT_BYTES];
    let mut len = 0;
    let mut n = n.max(0) as u32;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: len <= 10 < PID_TEXT_BYTES, within the caller's buffer.
        unsafe { *out.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above.
    unsafe { *out.add(len) = 0 };
}

/// Closes every descriptor but `keep`; async-signal-safe, allocates nothing.
///
/// # Safety
/// Only in a child about to exec: it closes descriptors that the parent's Rust objects
/// own.
unsafe fn close_all_but(mut keep: [RawFd; 7]) -> bool {
    keep.sort_unstable();
    let close_range = |from: u32, to: u32| {
        // SAFETY: the caller's contract; close_range reads no memory.
        unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) }
    };
    let mut from: u32 = 0;
    for fd in keep {
        let fd = fd as u32;
        if fd > from && close_range(from, fd - 1) < 0 {
            return false;
        }
        from = from.max(fd + 1);
    }
    close_range(from, u32::MAX) == 0
}

/// `mount(2)` without data; async-signal-safe.
fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> libc::c_int {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: NUL-terminated strings or null, as mount(2) takes them.
    unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    }
}

/// `mount(2)` with filesystem options; async-signal-safe.
fn mount_with(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: &CStr,
) -> libc::c_int {
    // SAFETY: NUL-terminated strings, as mount(2) takes them.
    unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    }
}

/// Brings up `lo` in the caller's network namespace (the only interface a new one has).
/// Async-signal-safe, for the child; errno tells why it failed.
pub(crate) fn loopback_up() -> bool {
    // SAFETY: a socket of our own, closed below; `ifreq` is plain data, zeroed is valid;
    // the two ioctls read and write that local `ifreq` only.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as c_char;
        }
        let ok = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0
        };
        libc::close(sock);
        ok
    }
}

/// The kernel's `struct sigaction` for `rt_sigaction` (not glibc's, which differs).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Tells whether this process may create `namespaces`: starts a child in them that
/// exits at once, and reaps it.
pub fn probe(namespaces: Isolation) -> io::Result<()> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | clone_flags(namespaces),
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: the child only calls _exit.
    let ret = unsafe { clone3(&mut args) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if ret == 0 {
        // SAFETY: the child exits at once.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: CLONE_PIDFD stored a descriptor we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    wait(pidfd.as_fd()).map(|_| ())
}

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Reaps the process behind `pidfd`, blocking until it has exited.
pub fn wait(pidfd: BorrowedFd<'_>) -> io::Result<ExitStatus> {
    const P_PIDFD: libc::idtype_t = 3;
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pidfd and out-pointer.
        let r = unsafe {
            libc::waitid(
                P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid with WEXITED succeeded, so si_status is valid.
        let status = unsafe { info.si_status() };
        return Ok(match info.si_code {
            libc::CLD_EXITED => ExitStatus::Exited(status),
            _ => ExitStatus::Signaled(status),
        });
    }
}
