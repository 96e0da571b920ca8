//! The cheapest way to start `true` in a job's namespaces, cgroup and user: `clone3` with
//! `CLONE_VM | CLONE_VFORK`, the way `posix_spawn` starts a process, plus `CLONE_PIDFD`,
//! the namespace flags and, where jobd has cgroups, `CLONE_INTO_CGROUP`. The child
//! borrows the caller's memory until it execs and the caller sleeps meanwhile, so there
//! is no page-table copy and no exec report pipe: a failure is written into shared memory
//! before the child exits.
//!
//! Written for the bench alone, with none of the worker's code, so that a change in the
//! worker's spawn shows against it rather than moving both sides.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
#[cfg(test)]
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// What the child gets: the namespaces of a job and the user it runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub pid: bool,
    pub mount: bool,
    pub net: bool,
    /// `(uid, gid)` to switch to, with no supplementary groups.
    pub user: Option<(u32, u32)>,
}

impl Setup {
    /// What `setup` costs in words, for the bench's output.
    pub fn describe(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if self.pid {
            parts.push("pid ns + /proc");
        }
        if self.mount {
            parts.push("mount ns");
        }
        if self.net {
            parts.push("made-ahead net ns + /sys");
        }
        if self.user.is_some() {
            parts.push("setresuid");
        }
        if parts.is_empty() {
            "no namespaces".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A started child: exec'd, not yet reaped.
pub struct Child {
    pid: libc::pid_t,
    _pidfd: OwnedFd,
}

impl Child {
    /// Waits for the child's exit; an error unless it exited with 0.
    pub fn reap(self) -> io::Result<()> {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child by its pid; `status` outlives the call.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the floor's child ended with wait status {status:#x}"
            )))
        }
    }
}

/// The descriptors a child needs.
pub struct Stdio<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// A network namespace made ahead, entered with `setns`, when `Setup::net`.
    pub netns: Option<BorrowedFd<'a>>,
    /// The job's cgroup folder, which the child is cloned into, where jobd has cgroups.
    pub cgroup: Option<BorrowedFd<'a>>,
}

/// The program and its argument vectors, made once.
pub struct Program {
    _args: Vec<CString>,
    path: *const c_char,
    argv: Vec<*const c_char>,
    envp: [*const c_char; 1],
}

// SAFETY: the pointers point into `_args`' heap buffers, which never move or change while
// the `Program` lives; they are only read, by children.
unsafe impl Send for Program {}
// SAFETY: as above: shared read-only.
unsafe impl Sync for Program {}

impl Program {
    /// `true`, as found in /usr/bin or /bin.
    pub fn true_() -> io::Result<Program> {
        let path = ["/usr/bin/true", "/bin/true"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or_else(|| io::Error::other("no true in /usr/bin or /bin"))?;
        Program::new(&[path])
    }

    /// `argv[0]` is the program's path, run with an empty environment.
    pub fn new(argv: &[&str]) -> io::Result<Program> {
        let args = argv
            .iter()
            .map(|a| CString::new(*a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| io::Error::other("an argument holds a NUL"))?;
        let path = args
            .first()
            .ok_or_else(|| io::Error::other("no program"))?
            .as_ptr();
        let argv = args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(Program {
            _args: args,
            path,
            argv,
            envp: [std::ptr::null()],
        })
    }
}

/// The child's stack: `CLONE_VM` children need one of their own.
pub struct Stack(Vec<u128>);

impl Stack {
    pub fn new() -> Stack {
        Stack(vec![0; 64 * 1024 / 16])
    }

    /// Its lowest address and its size, as `clone3` takes them (16-byte aligned: `u128`s).
    fn range(&mut self) -> (u64, u64) {
        (
            self.0.as_mut_ptr() as u64,
            std::mem::size_of_val(self.0.as_slice()) as u64,
        )
    }
}

/// The child's steps, each of which can fail, in their order.
#[derive(Clone, Copy)]
enum Step {
    Session = 1,
    JoinNetns,
    MountPrivate,
    MountProc,
    MountSys,
    MountTmp,
    Stdio,
    SignalDefaults,
    Credentials,
    NoNewPrivs,
    SignalMask,
    Exec,
}

/// What each [`Step`] does, for the error message.
const STEPS: [&str; 12] = [
    "start a session",
    "enter the network namespace",
    "make / private",
    "mount /proc",
    "mount /sys",
    "mount a private /tmp",
    "redirect stdio",
    "reset the signal dispositions",
    "switch user",
    "set no_new_privs",
    "restore the signal mask",
    "exec",
];

/// The job's private `/tmp` and `/var/tmp`, as jobd mounts them for a job without a
/// memory limit.
const TMP_OPTIONS: &CStr = c"mode=1777,size=67108864";

struct ChildArgs<'a> {
    setup: Setup,
    program: &'a Program,
    stdio: [RawFd; 3],
    netns: RawFd,
    old_mask: libc::sigset_t,
    /// The failed [`Step`] and its errno; 0 while all is well.
    failed_step: AtomicI32,
    failed_errno: AtomicI32,
}

/// Starts `program` in `setup`'s namespaces (and `stdio.cgroup`); returns once it has
/// exec'd.
pub fn start(
    setup: Setup,
    program: &Program,
    stdio: &Stdio<'_>,
    stack: &mut Stack,
) -> io::Result<Child> {
    let mut flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD;
    if setup.pid {
        flags |= CLONE_NEWPID;
    }
    if setup.mount {
        flags |= CLONE_NEWNS;
    }
    let netns = match (setup.net, stdio.netns) {
        (false, _) => -1,
        (true, Some(fd)) => fd.as_raw_fd(),
        (true, None) => return Err(io::Error::other("a network namespace needs one made ahead")),
    };
    let mut args = ChildArgs {
        setup,
        program,
        stdio: [
            stdio.stdin.as_raw_fd(),
            stdio.stdout.as_raw_fd(),
            stdio.stderr.as_raw_fd(),
        ],
        netns,
        // SAFETY: a sigset_t is plain data; all zeros is a valid (empty) set.
        old_mask: unsafe { std::mem::zeroed() },
        failed_step: AtomicI32::new(0),
        failed_errno: AtomicI32::new(0),
    };
    let mut pidfd: c_int = -1;
    let (stack_base, stack_size) = stack.range();
    let mut clone_args = CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack_base,
        stack_size,
        ..CloneArgs::default()
    };
    if let Some(cgroup) = stdio.cgroup {
        clone_args.flags |= CLONE_INTO_CGROUP;
        clone_args.cgroup = cgroup.as_raw_fd() as u64;
    }
    // SAFETY: blocks every signal in this thread so that no handler of this process runs
    // in the child while it shares our memory; the child restores the mask before exec
    // and we restore it after the clone. Both sets are valid for the calls.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut args.old_mask);
        // SAFETY: the child runs on `stack` and reads `args`, both of which outlive it:
        // with CLONE_VFORK this call returns only once the child has exec'd or exited.
        let pid = clone_vfork(&mut clone_args, &args);
        let e = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &args.old_mask, std::ptr::null_mut());
        if pid < 0 {
            return Err(io::Error::new(e.kind(), format!("clone3 failed: {e}")));
        }
        pid as libc::pid_t
    };
    // SAFETY: CLONE_PIDFD gave us this descriptor, which nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let child = Child { pid, _pidfd: pidfd };
    let step = args.failed_step.load(Ordering::Acquire);
    if step != 0 {
        let errno = args.failed_errno.load(Ordering::Acquire);
        let _ = child.reap();
        let e = io::Error::from_raw_os_error(errno);
        let what = STEPS.get(step as usize - 1).copied().unwrap_or("set up");
        return Err(io::Error::new(
            e.kind(),
            format!("the floor's child cannot {what}: {e}"),
        ));
    }
    Ok(child)
}

const CLONE_VM: u64 = libc::CLONE_VM as u64;
const CLONE_VFORK: u64 = libc::CLONE_VFORK as u64;
const CLONE_PIDFD: u64 = libc::CLONE_PIDFD as u64;
const CLONE_NEWPID: u64 = libc::CLONE_NEWPID as u64;
const CLONE_NEWNS: u64 = libc::CLONE_NEWNS as u64;
/// Not in the libc crate's Linux constants: from `linux/sched.h` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to its `cgroup` field (`CLONE_ARGS_SIZE_VER2`, Linux 5.7).
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

/// `clone3` for a child that shares our memory and runs [`child`] on the stack that
/// `args` names. glibc has no `clone3` wrapper, and a child on a new stack cannot return
/// into a Rust frame, so the system call is made here and the child calls [`child`] with
/// `child_args` straight from the instruction after it. Returns the child's pid, or -1
/// with errno set.
///
/// # Safety
/// `args` must hold `CLONE_VM | CLONE_VFORK` and a stack that nothing else uses, and the
/// stack and `child_args` must stay valid until the call returns (the child has exec'd
/// or exited by then). Signals must be blocked, as the child runs in our memory.
#[cfg(target_arch = "x86_64")]
unsafe fn clone_vfork(args: &mut CloneArgs, child_args: &ChildArgs<'_>) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the caller's contract above. In the parent the asm is the system call
    // alone (which clobbers rcx and r11); the child never comes back out of it: `child`
    // ends in execve or _exit, and `ud2` stops it should it ever return.
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
            in("r12") child_args as *const ChildArgs<'_>,
            in("r13") child as extern "C" fn(*mut c_void) -> c_int,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        // SAFETY: this thread's errno, valid for writes; the raw call returned -errno.
        unsafe { *libc::__errno_location() = -ret as c_int };
        return -1;
    }
    ret
}

/// Elsewhere the floor has no way into a cgroup at the clone: glibc's `clone`, without it.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone_vfork(args: &mut CloneArgs, child_args: &ChildArgs<'_>) -> libc::c_long {
    if args.flags & CLONE_INTO_CGROUP != 0 {
        // SAFETY: this thread's errno, valid for writes.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    }
    let top = (args.stack + args.stack_size) as *mut c_void;
    // SAFETY: the caller's contract; glibc's clone runs `child` on `top`, and with
    // CLONE_PIDFD writes the pidfd where `args.pidfd` points.
    unsafe {
        libc::clone(
            child,
            top,
            args.flags as c_int | args.exit_signal as c_int,
            (child_args as *const ChildArgs<'_>).cast_mut().cast(),
            args.pidfd as *mut c_int,
        ) as libc::c_long
    }
}

/// The child, from `clone3` to `execve`: raw system calls only. It shares the caller's
/// memory, so glibc's credential wrappers (which signal every thread of the caller's
/// process) are out, and it allocates nothing. It gives `true` what a job of jobd's sees:
/// a session of its own, the namespaces with their `/proc`, `/sys` and private `/tmp`
/// and `/var/tmp`, default signal handling, the job's user and `no_new_privs`.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` that `start` keeps alive until we exec or exit.
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    let fail = |step: Step| -> c_int {
        args.failed_errno.store(errno(), Ordering::Release);
        args.failed_step.store(step as i32, Ordering::Release);
        // SAFETY: leaves the child at once, running no exit handlers in shared memory.
        unsafe { libc::_exit(127) }
    };
    let s = args.setup;
    // SAFETY: plain system calls on descriptors and C strings that outlive them.
    unsafe {
        if libc::setsid() < 0 {
            return fail(Step::Session);
        }
        if args.netns >= 0 && libc::setns(args.netns, libc::CLONE_NEWNET) < 0 {
            return fail(Step::JoinNetns);
        }
        if s.mount {
            if mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None) < 0 {
                return fail(Step::MountPrivate);
            }
            let fresh = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if s.pid && mount(Some(c"proc"), c"/proc", Some(c"proc"), fresh, None) < 0 {
                return fail(Step::MountProc);
            }
            let ro = fresh | libc::MS_RDONLY;
            if s.net && mount(Some(c"sysfs"), c"/sys", Some(c"sysfs"), ro, None) < 0 {
                return fail(Step::MountSys);
            }
            let tmp = libc::MS_NOSUID | libc::MS_NODEV;
            for dir in [c"/tmp", c"/var/tmp"] {
                if mount(Some(c"tmpfs"), dir, Some(c"tmpfs"), tmp, Some(TMP_OPTIONS)) < 0
                    && !(dir == c"/var/tmp" && errno() == libc::ENOENT)
                {
                    return fail(Step::MountTmp);
                }
            }
        }
        for (target, fd) in args.stdio.iter().enumerate() {
            if libc::dup2(*fd, target as c_int) < 0 {
                return fail(Step::Stdio);
            }
        }
        // Default dispositions for every signal, as jobd gives its jobs: Rust ignores
        // SIGPIPE, and whoever started the bench may have left others ignored.
        let default = KernelSigaction::default();
        for sig in (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
            if libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            ) < 0
            {
                return fail(Step::SignalDefaults);
            }
        }
        if let Some((uid, gid)) = s.user {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
            {
                return fail(Step::Credentials);
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return fail(Step::NoNewPrivs);
        }
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &args.old_mask as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            8usize,
        ) < 0
        {
            return fail(Step::SignalMask);
        }
        libc::execve(
            args.program.path,
            args.program.argv.as_ptr(),
            args.program.envp.as_ptr(),
        );
    }
    fail(Step::Exec)
}

/// The kernel's `struct sigaction` for the raw `rt_sigaction` call (glibc's differs):
/// all zeros is `SIG_DFL` with no flags and an empty mask.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

fn errno() -> i32 {
    // SAFETY: reads this thread's errno, which the failed call just set.
    unsafe { *libc::__errno_location() }
}

fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> c_int {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: valid C strings or null, as mount(2) accepts.
    unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    }
}

/// Brings up `lo` in this thread's network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a socket we close, and an ifreq we own, for two ioctls.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn pipe() -> (File, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills `fds` with two new descriptors, which we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are new and ours alone.
        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Runs `argv` with `setup` and returns what it wrote to stdout.
    fn output(setup: Setup, netns: Option<&OwnedFd>, argv: &[&str]) -> io::Result<String> {
        output_in(setup, netns, None, argv)
    }

    /// As [`output`], in the cgroup whose folder is `cgroup`.
    fn output_in(
        setup: Setup,
        netns: Option<&OwnedFd>,
        cgroup: Option<&OwnedFd>,
        argv: &[&str],
    ) -> io::Result<String> {
        let devnull = File::open("/dev/null")?;
        let (mut out, out_w) = pipe();
        let stdio = Stdio {
            stdin: devnull.as_fd(),
            stdout: out_w.as_fd(),
            stderr: devnull.as_fd(),
            netns: netns.map(|fd| fd.as_fd()),
            cgroup: cgroup.map(|fd| fd.as_fd()),
        };
        let child = start(setup, &Program::new(argv)?, &stdio, &mut Stack::new())?;
        drop(out_w);
        let mut got = String::new();
        out.read_to_string(&mut got)?;
        child.reap()?;
        Ok(got)
    }

    const NONE: Setup = Setup {
        pid: false,
        mount: false,
        net: false,
        user: None,
    };

    #[test]
    fn the_child_gets_its_pid_namespace_proc_and_user() {
        let setup = Setup {
            pid: true,
            mount: true,
            user: Some((65534, 65534)),
            ..NONE
        };
        // PID 1 of a new namespace, as nobody with no other group.
        let got =
            output(setup, None, &["/bin/sh", "-c", "echo $$ $(id -u) $(id -G)"]).expect("run sh");
        assert_eq!(got.trim(), "1 65534 65534");
        // Its /proc is the namespace's own: PID 1 there is the child itself.
        let got = output(setup, None, &["/bin/cat", "/proc/1/comm"]).expect("run cat");
        assert_eq!(got.trim(), "cat");
    }

    #[test]
    fn the_child_sees_what_a_job_of_jobd_sees() {
        let setup = Setup {
            pid: true,
            mount: true,
            user: Some((65534, 65534)),
            ..NONE
        };
        // Its own session (the session id is its pid), no_new_privs, no signal ignored
        // (Rust ignores SIGPIPE; a test runner may ignore more) or blocked, and an empty,
        // private tmpfs on /tmp and /var/tmp.
        let script = "echo $(cut -d' ' -f6 /proc/self/stat) $$; \
                      grep -E '^(NoNewPrivs|SigIgn|SigBlk):' /proc/self/status; \
                      stat -f -c %T /tmp /var/tmp; ls -A /tmp /var/tmp | wc -w";
        let got = output(setup, None, &["/bin/sh", "-c", script]).expect("run sh");
        let lines: Vec<&str> = got.lines().collect();
        let ids: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(ids, ["1", "1"], "{got}");
        let status = |key: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        assert_eq!(status("NoNewPrivs"), Some("1"), "{got}");
        assert_eq!(status("SigIgn"), Some("0000000000000000"), "{got}");
        assert_eq!(status("SigBlk"), Some("0000000000000000"), "{got}");
        assert_eq!(&lines[4..6], ["tmpfs", "tmpfs"], "{got}");
        assert_eq!(
            lines[6].trim(),
            "2",
            "only the two folders' own entries: {got}"
        );
    }

    #[test]
    fn the_child_enters_the_network_namespace_made_ahead_with_its_sys() {
        let pool = super::super::ahead::network_namespaces().expect("make a netns");
        let netns = pool
            .take(super::super::ahead::Refill::Now)
            .expect("a netns");
        let setup = Setup {
            mount: true,
            net: true,
            ..NONE
        };
        let got = output(setup, Some(&netns), &["/bin/ls", "/sys/class/net"]).expect("run ls");
        assert_eq!(got.trim(), "lo");
        let operstate = output(
            setup,
            Some(&netns),
            &["/bin/cat", "/sys/class/net/lo/flags"],
        )
        .expect("run cat");
        let flags =
            u32::from_str_radix(operstate.trim().trim_start_matches("0x"), 16).expect("hex flags");
        assert_ne!(flags & libc::IFF_UP as u32, 0, "lo is up");
    }

    #[test]
    fn a_failed_step_is_named_and_the_child_reaped() {
        let e = output(NONE, None, &["/nonexistent/program"]).expect_err("no such program");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("cannot exec"), "{e}");
        let e = output(Setup { net: true, ..NONE }, None, &["/bin/true"])
            .expect_err("no netns made ahead");
        assert!(e.to_string().contains("made ahead"), "{e}");
    }

    #[test]
    fn a_failing_program_is_an_error_at_its_reap() {
        let e = output(NONE, None, &["/bin/false"]).expect_err("false fails");
        assert!(e.to_string().contains("wait status"), "{e}");
    }

    /// Needs cgroup v2 with jobd's controllers: runs in the VM (`scripts/test-cgroups.sh`).
    #[test]
    #[ignore = "needs cgroup v2 with the cpu, io, memory and pids controllers (the VM has them)"]
    fn the_child_starts_in_its_cgroup_which_the_end_removes() {
        use super::super::cgroup::Cgroups;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mount = worker::disk::cgroup2_mount(&mountinfo).expect("a cgroup2 mount");
        std::fs::write(
            mount.join("cgroup.subtree_control"),
            "+cpu +io +memory +pids",
        )
        .expect("enable the controllers at the root");
        // Stands in for jobd's `<base>/jobd`, whose controllers jobd enables.
        let top = mount.join(format!("jobworker-test-floor.{}", std::process::id()));
        std::fs::create_dir(&top).expect("a cgroup for the test");
        std::fs::write(top.join("cgroup.subtree_control"), "+cpu +io +memory +pids")
            .expect("enable the controllers below it");
        let cgroups = Cgroups::new(&top).expect("the floor's cgroups");
        let setup = Setup {
            pid: true,
            mount: true,
            user: Some((65534, 65534)),
            ..NONE
        };
        for _ in 0..3 {
            let cgroup = cgroups.make().expect("a job cgroup");
            let got = output_in(
                setup,
                None,
                Some(cgroup.fd()),
                &["/bin/cat", "/proc/self/cgroup"],
            )
            .expect("run cat");
            let want = format!("/jobworker-test-floor.{}/bench-floor.", std::process::id());
            assert!(
                got.trim().starts_with("0::") && got.contains(&want),
                "{got}"
            );
            // Its cgroup has the job's controllers, as jobd's job cgroups do.
            let controllers = std::fs::read_to_string(
                top.join(format!("bench-floor.{}", std::process::id()))
                    .join("cgroup.subtree_control"),
            )
            .expect("controllers");
            assert_eq!(controllers.trim(), "cpu io memory pids");
            cgroups
                .end(cgroup)
                .expect("end: usage read, cgroup removed");
        }
        drop(cgroups);
        let left: Vec<_> = std::fs::read_dir(&top)
            .expect("read the test cgroup")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
        std::fs::remove_dir(&top).expect("remove the test cgroup");
    }
}
