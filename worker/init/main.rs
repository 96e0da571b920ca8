//! jobworker-init: PID 1 of every job that has a PID namespace.
//!
//! The kernel delivers to a namespace's PID 1 only the signals it has a handler for, and
//! makes it the parent of every orphan. A program never written to be PID 1 so ignores a
//! plain `kill` and leaves zombies behind. Like tini for `docker run --init`, this init is
//! the parent of the job's program, forwards to it every signal it receives, reaps
//! whatever reparents to it, and exits as soon as the program has ended, telling jobd
//! exactly how it ended (an exit code cannot tell `exit 143` from SIGTERM).
//!
//! It is its own small program, not code of jobd, because it lives as long as the job,
//! as the job's user: it must share nothing with the server. It is written against the
//! kernel alone (no libc, no std: raw system calls), because on the hosts jobworker runs
//! on the start-up of a C library, with its CPU feature probes, costs ten times what
//! the whole exec of this program does, and every job pays for it. worker's build script
//! compiles it with rustc alone; the worker library carries the binary and runs it from a
//! sealed memfd, so nothing needs installing.
//!
//! The worker's spawn has already started the program (PID 2) when it execs this init
//! as PID 1, so that the two execs run side by side: `jobworker-init STATUS_FD
//! PROGRAM_PID`, with every signal still blocked from before the exec, so none is lost
//! meanwhile. As it exits, it writes one 8-byte message (code, value) on STATUS_FD:
//! EXITED with the code, or SIGNALED with the signal.
//!
//! jobd orders a signal with [`protocol::ORDER_SIGNAL`] sent by `sigqueue`, whose value
//! names the signal and whether it goes to every process of the job (`kill(-1)` from a
//! namespace's init reaches every process in it but the init) or to the program alone.
//! An order can name SIGKILL or SIGSTOP, which the init itself could not receive to pass on.

#![no_std]
#![no_main]

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the job init is written for x86_64 system calls");

#[path = "protocol.rs"]
#[allow(dead_code)]
mod protocol;

use protocol::*;

const SIGCHLD: i32 = 17;
const WNOHANG: usize = 1;
const SIG_BLOCK: usize = 0;
const PR_SET_NAME: usize = 15;
const PR_SET_DUMPABLE: usize = 4;
/// `si_code` of a signal sent with `sigqueue`.
const SI_QUEUE: i32 = -1;
/// Every signal, 1 to 64, as the kernel's 64-bit mask.
const ALL_SIGNALS: u64 = u64::MAX;

mod sys {
    pub const WRITE: usize = 1;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const PRCTL: usize = 157;
    pub const EXIT_GROUP: usize = 231;
}

/// A system call with up to four arguments; returns what the kernel does (-errno on
/// failure).
///
/// # Safety
/// The arguments must be what system call `n` expects (pointers valid for it).
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller's contract; `syscall` clobbers rcx and r11 only.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

fn exit(code: i32) -> ! {
    // SAFETY: exit_group takes a number and does not return.
    unsafe { syscall4(sys::EXIT_GROUP, code as usize, 0, 0, 0) };
    loop {}
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(127)
}

// The kernel starts a process with argc, then the argv pointers, on its stack.
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

/// The `n`th argument as a number, if it is one.
///
/// # Safety
/// `stack` must be the initial stack the kernel gave this process.
unsafe fn number_arg(stack: *const usize, n: usize) -> Option<i32> {
    // SAFETY: the caller's contract: argc, then argc pointers to NUL-terminated strings.
    unsafe {
        if *stack <= n {
            return None;
        }
        let mut text = *stack.add(1 + n) as *const u8;
        let mut value: i32 = 0;
        if *text == 0 {
            return None;
        }
        while *text != 0 {
            let digit = (*text).wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            value = value.checked_mul(10)?.checked_add(digit as i32)?;
            text = text.add(1);
        }
        Some(value)
    }
}

extern "C" fn entry(stack: *const usize) -> ! {
    // SAFETY: `_start` passes the kernel's initial stack.
    let (status, program) = unsafe { (number_arg(stack, 1), number_arg(stack, 2)) };
    let (Some(status), Some(program)) = (status, program) else {
        say(
            2,
            b"jobworker-init: usage: jobworker-init STATUS_FD PROGRAM_PID\n",
        );
        exit(127);
    };
    if !set_up() {
        say(2, b"jobworker-init: cannot set itself up\n");
        exit(127);
    }
    loop {
        let (signal, info) = wait_signal();
        if signal == SIGCHLD {
            if let Some(ended) = reap_all(program) {
                finish(status, ended);
            }
            continue;
        }
        let order = (signal == ORDER_SIGNAL
            && info.code == SI_QUEUE
            && info.value & !(ORDER_ALL | ORDER_SIGNAL_MASK) == ORDER_MAGIC)
            .then_some(info.value);
        let (to, signal) = match order {
            Some(value) if value & ORDER_ALL != 0 => (-1, value & ORDER_SIGNAL_MASK),
            Some(value) => (program, value & ORDER_SIGNAL_MASK),
            None => (program, signal),
        };
        // SAFETY: kill takes two numbers.
        unsafe { syscall4(sys::KILL, to as usize, signal as usize, 0, 0) };
    }
}

/// Writes `bytes` to `fd`, once: nobody is left to tell if that fails.
fn say(fd: i32, bytes: &[u8]) {
    // SAFETY: a buffer of ours, of its own length.
    unsafe {
        syscall4(
            sys::WRITE,
            fd as usize,
            bytes.as_ptr() as usize,
            bytes.len(),
            0,
        )
    };
}

/// Blocks every signal (it already is, from before the exec), so that each is taken, in
/// turn, by [`wait_signal`]; takes a name for `ps` (exec'd from a memfd, it would show as
/// a descriptor number); and makes itself undumpable: the job runs as the same user, and
/// a job that could trace its init could stop it, or make it report an end that did not
/// happen.
fn set_up() -> bool {
    let mask = ALL_SIGNALS;
    // SAFETY: the mask and the name are ours and outlive the calls.
    unsafe {
        let blocked = syscall4(
            sys::RT_SIGPROCMASK,
            SIG_BLOCK,
            &mask as *const u64 as usize,
            0,
            8,
        );
        syscall4(
            sys::PRCTL,
            PR_SET_NAME,
            c"jobworker-init".as_ptr() as usize,
            0,
            0,
        );
        let undumpable = syscall4(sys::PRCTL, PR_SET_DUMPABLE, 0, 0, 0);
        blocked == 0 && undumpable == 0
    }
}

/// The next signal, with what came with it.
fn wait_signal() -> (i32, QueuedSigInfo) {
    let mask = ALL_SIGNALS;
    loop {
        let mut info = QueuedSigInfo::zeroed();
        // SAFETY: the mask and the 128-byte info are locals; no timeout.
        let signal = unsafe {
            syscall4(
                sys::RT_SIGTIMEDWAIT,
                &mask as *const u64 as usize,
                &mut info as *mut QueuedSigInfo as usize,
                0,
                8,
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
        let mut status: i32 = 0;
        // SAFETY: wait4 writes the status into a local; no rusage.
        let pid = unsafe {
            syscall4(
                sys::WAIT4,
                -1isize as usize,
                &mut status as *mut i32 as usize,
                WNOHANG,
                0,
            )
        };
        if pid <= 0 {
            return ended;
        }
        if pid as i32 == program {
            ended = Some(status);
        }
    }
}

/// Tells jobd how the program ended and exits the same way, as far as an init can: the
/// kernel then kills whatever is left in the namespace.
fn finish(fd: i32, status: i32) -> ! {
    let signal = status & 0x7f;
    let (code, value, exit_code) = if signal == 0 {
        let code = (status >> 8) & 0xff;
        (REPORT_EXITED, code, code)
    } else {
        (REPORT_SIGNALED, signal, 128 + signal)
    };
    let mut message = [0u8; 8];
    message[..4].copy_from_slice(&code.to_ne_bytes());
    message[4..].copy_from_slice(&value.to_ne_bytes());
    say(fd, &message);
    exit(exit_code)
}
