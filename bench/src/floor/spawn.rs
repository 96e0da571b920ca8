//! The cheapest way to start `true` in a job's namespaces and as its user: glibc's
//! `clone` with `CLONE_VM | CLONE_VFORK`, the way `posix_spawn` starts a process, plus
//! `CLONE_PIDFD` and the namespace flags. The child borrows the caller's memory until it
//! execs and the caller sleeps meanwhile, so there is no page-table copy and no exec
//! report pipe: a failure is written into shared memory before the child exits.
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

    fn top(&mut self) -> *mut c_void {
        self.0.as_mut_ptr_range().end.cast()
    }
}

/// Where in the child a step failed, for the error message.
const STEPS: [&str; 8] = [
    "enter the network namespace",
    "make / private",
    "mount /proc",
    "mount /sys",
    "redirect stdio",
    "switch user",
    "restore the signal mask",
    "exec",
];

struct ChildArgs<'a> {
    setup: Setup,
    program: &'a Program,
    stdio: [RawFd; 3],
    netns: RawFd,
    old_mask: libc::sigset_t,
    /// The failed step (index into `STEPS`, plus one) and its errno; 0 while all is well.
    failed_step: AtomicI32,
    failed_errno: AtomicI32,
}

/// Starts `program` in `setup`'s namespaces; returns once it has exec'd.
pub fn start(
    setup: Setup,
    program: &Program,
    stdio: &Stdio<'_>,
    stack: &mut Stack,
) -> io::Result<Child> {
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    if setup.pid {
        flags |= libc::CLONE_NEWPID;
    }
    if setup.mount {
        flags |= libc::CLONE_NEWNS;
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
    // SAFETY: blocks every signal in this thread so that no handler of this process runs
    // in the child while it shares our memory; the child restores the mask before exec
    // and we restore it after the clone. Both sets are valid for the calls.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut args.old_mask);
        // SAFETY: `child` runs on `stack`, which outlives it (CLONE_VFORK: this call
        // returns once the child has exec'd or exited), and reads `args`, which lives
        // on our stack for as long. With CLONE_PIDFD the pidfd is written to `pidfd`.
        let pid = libc::clone(
            child,
            stack.top(),
            flags,
            (&mut args as *mut ChildArgs<'_>).cast(),
            &mut pidfd as *mut c_int,
        );
        let e = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &args.old_mask, std::ptr::null_mut());
        if pid < 0 {
            return Err(io::Error::new(e.kind(), format!("clone failed: {e}")));
        }
        pid
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

/// The child, from `clone` to `execve`: raw system calls only. It shares the caller's
/// memory, so glibc's credential wrappers (which signal every thread of the caller's
/// process) are out, and it allocates nothing.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` that `start` keeps alive until we exec or exit.
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    let fail = |step: usize| -> c_int {
        args.failed_errno.store(errno(), Ordering::Release);
        args.failed_step.store(step as i32 + 1, Ordering::Release);
        // SAFETY: leaves the child at once, running no exit handlers in shared memory.
        unsafe { libc::_exit(127) }
    };
    let s = args.setup;
    // SAFETY: plain system calls on descriptors and C strings that outlive them.
    unsafe {
        if args.netns >= 0 && libc::setns(args.netns, libc::CLONE_NEWNET) < 0 {
            return fail(0);
        }
        if s.mount {
            if mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE) < 0 {
                return fail(1);
            }
            let fresh = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if s.pid && mount(Some(c"proc"), c"/proc", Some(c"proc"), fresh) < 0 {
                return fail(2);
            }
            let ro = fresh | libc::MS_RDONLY;
            if s.net && mount(Some(c"sysfs"), c"/sys", Some(c"sysfs"), ro) < 0 {
                return fail(3);
            }
        }
        for (target, fd) in args.stdio.iter().enumerate() {
            if libc::dup2(*fd, target as c_int) < 0 {
                return fail(4);
            }
        }
        if let Some((uid, gid)) = s.user {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
            {
                return fail(5);
            }
        }
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &args.old_mask as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            8usize,
        ) < 0
        {
            return fail(6);
        }
        libc::execve(
            args.program.path,
            args.program.argv.as_ptr(),
            args.program.envp.as_ptr(),
        );
    }
    fail(7)
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
) -> c_int {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: valid C strings or null, as mount(2) accepts.
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
        let devnull = File::open("/dev/null")?;
        let (mut out, out_w) = pipe();
        let stdio = Stdio {
            stdin: devnull.as_fd(),
            stdout: out_w.as_fd(),
            stderr: devnull.as_fd(),
            netns: netns.map(|fd| fd.as_fd()),
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
    fn the_child_enters_the_network_namespace_made_ahead_with_its_sys() {
        let pool = super::super::ahead::network_namespaces().expect("make a netns");
        let netns = pool.take().expect("a netns");
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
}
