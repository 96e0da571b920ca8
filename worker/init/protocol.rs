// What jobd's worker and the job's init say to each other. Included by both programs
// (`include!` in the worker, `mod` in the init), so that each number is written once.

/// On the report pipe: the child waits at its exec gate.
pub const REPORT_AT_GATE: u32 = u32::MAX;
/// On the report pipe: the gate closed unreleased, so the child exits without exec.
pub const REPORT_REFUSED: u32 = u32::MAX - 1;
/// On the init's status pipe, as it exits: the program exited with the value as its code.
pub const REPORT_EXITED: u32 = u32::MAX - 4;
/// On the init's status pipe, as it exits: the program was killed by the signal in the value.
pub const REPORT_SIGNALED: u32 = u32::MAX - 5;

/// The signal that carries an order from jobd (SIGRTMAX). Sent with `sigqueue`, its
/// value says which signal to send to whom; sent plainly, it is forwarded like any other.
pub const ORDER_SIGNAL: i32 = 64;
/// The high half of an order's value, so that a stray queued signal is not one.
pub const ORDER_MAGIC: i32 = 0x4a57_0000;
/// In an order's value: send to every process of the job, not only to the program.
pub const ORDER_ALL: i32 = 0x100;
/// In an order's value: the signal to send.
pub const ORDER_SIGNAL_MASK: i32 = 0xff;

/// The kernel's `siginfo_t` as far as a signal sent with `rt_sigqueueinfo` goes (128
/// bytes): the form in which an order is sent and received.
#[repr(C)]
pub struct QueuedSigInfo {
    pub signo: i32,
    pub errno: i32,
    pub code: i32,
    pub pad: i32,
    pub pid: i32,
    pub uid: u32,
    /// `sival_int`: the low half of `union sigval` on the little-endian targets we build for.
    pub value: i32,
    pub value_high: i32,
    pub rest: [u8; 96],
}

impl QueuedSigInfo {
    pub const fn zeroed() -> QueuedSigInfo {
        QueuedSigInfo {
            signo: 0,
            errno: 0,
            code: 0,
            pad: 0,
            pid: 0,
            uid: 0,
            value: 0,
            value_high: 0,
            rest: [0; 96],
        }
    }
}
