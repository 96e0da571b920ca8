//! Signal names, as `kill -s` takes them: jobc parses them to refuse a typo before it
//! connects, jobd parses what any client sends, and both print the same names.

use std::fmt;

/// Linux's signal names in number order (x86_64 and aarch64 agree on 1 to 31).
const NAMES: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// The real-time signals a program may use (glibc keeps 32 and 33 for itself).
const RTMIN: i32 = 34;
const RTMAX: i32 = 64;

/// A signal that cannot be sent: not a name or number of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSignal(pub String);

impl fmt::Display for UnknownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown signal {:?}: give a name such as HUP, SIGUSR1 or RTMIN+1, or a number from 1 to 64",
            crate::inert::Inert(&self.0).to_string()
        )
    }
}

impl std::error::Error for UnknownSignal {}

/// Parses `HUP`, `SIGHUP`, `hup`, `1`, `RTMIN+2` or `SIGRTMAX-1` into a signal number.
pub fn parse_signal(text: &str) -> Result<i32, UnknownSignal> {
    let unknown = || UnknownSignal(text.to_string());
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=RTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(unknown())
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(i) = NAMES.iter().position(|n| *n == name) {
        return Ok(i as i32 + 1);
    }
    // Aliases the kernel headers define.
    match name {
        "IOT" => return Ok(6),
        "POLL" => return Ok(29),
        "CLD" => return Ok(17),
        _ => {}
    }
    let offset = |s: &str| {
        s.parse::<i32>()
            .ok()
            .filter(|n| (0..=RTMAX - RTMIN).contains(n))
    };
    let rt = match name {
        "RTMIN" => Some(RTMIN),
        "RTMAX" => Some(RTMAX),
        _ => name
            .strip_prefix("RTMIN+")
            .and_then(offset)
            .map(|n| RTMIN + n)
            .or_else(|| {
                name.strip_prefix("RTMAX-")
                    .and_then(offset)
                    .map(|n| RTMAX - n)
            }),
    };
    rt.ok_or_else(unknown)
}

/// `SIGTERM` for 15, `SIGRTMIN+2` for 36, the number itself for 32 and 33.
pub fn signal_name(signal: i32) -> String {
    match signal {
        1..=31 => format!("SIG{}", NAMES[signal as usize - 1]),
        RTMIN => "SIGRTMIN".into(),
        RTMAX => "SIGRTMAX".into(),
        n if n > RTMIN && n < RTMAX => format!("SIGRTMIN+{}", n - RTMIN),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_parse_as_kill_takes_them() {
        assert_eq!(parse_signal("HUP"), Ok(1));
        assert_eq!(parse_signal("SIGUSR1"), Ok(10));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("64"), Ok(64));
        assert_eq!(parse_signal("RTMIN+2"), Ok(36));
        assert_eq!(parse_signal("SIGRTMAX-1"), Ok(63));
        assert_eq!(parse_signal("SYS"), Ok(31));
        for bad in [
            "0",
            "65",
            "-1",
            "",
            "SIG",
            "FOO",
            "RTMIN+31",
            "RTMAX-31",
            "SIGSIGHUP",
        ] {
            assert_eq!(parse_signal(bad), Err(UnknownSignal(bad.into())), "{bad}");
        }
    }

    #[test]
    fn every_name_reads_back_as_its_number() {
        for n in 1..=64 {
            assert_eq!(parse_signal(&signal_name(n)), Ok(n), "{n}");
        }
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(36), "SIGRTMIN+2");
    }
}
