//! Text from a hostile peer, made inert before it reaches a terminal or a log line.
//!
//! Job ids, argv, usernames (certificate CNs) and paths all come from callers, and every
//! caller is an attacker to every other. Printed raw, an ESC sequence in a job's argv
//! clears an admin's screen and draws fake rows in `jobc list`, a newline in a CN forges a
//! line of jobd's log, and a 10 KB bad job id echoed into an error outgrows gRPC
//! clients' metadata limit. Both jobd and jobc show such values through this module.

use std::fmt;

/// How many characters of a bad value an error message quotes.
pub const QUOTED_CHARS: usize = 100;

/// Shows a string with every control character (C0, DEL, C1) and every bidirectional
/// override escaped as `\u{..}`, so that it reads as it is and cannot move the cursor,
/// start a new line or reorder what follows it. Everything else passes unchanged.
#[derive(Debug, Clone, Copy)]
pub struct Inert<'a>(pub &'a str);

impl fmt::Display for Inert<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..]
                .chars()
                .next()
                .expect("find returned the start of a character");
            write!(f, "\\u{{{:x}}}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// A caller's value quoted in an error or a log line: in double quotes, made [`Inert`],
/// and cut after [`QUOTED_CHARS`] characters with its full length said, so that an error
/// about a huge value stays one short line.
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

/// [`Quoted`] without the quotes, for a value that reads as a name (a program, a user).
#[derive(Debug, Clone, Copy)]
pub struct Brief<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        shorten(f, self.0, "\"")
    }
}

impl fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        shorten(f, self.0, "")
    }
}

fn shorten(f: &mut fmt::Formatter<'_>, value: &str, quote: &str) -> fmt::Result {
    let cut = value.char_indices().nth(QUOTED_CHARS).map(|(at, _)| at);
    let head = &value[..cut.unwrap_or(value.len())];
    write!(f, "{quote}{}{quote}", Inert(head))?;
    if cut.is_some() {
        write!(f, "… ({} bytes)", value.len())?;
    }
    Ok(())
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_escaped_and_the_rest_kept() {
        let cases = [
            ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
            ("\u{1b}[2J\u{1b}[H", "\\u{1b}[2J\\u{1b}[H"),
            ("a\nb\rc\td", "a\\u{a}b\\u{d}c\\u{9}d"),
            ("\u{7f}\u{9b}31m", "\\u{7f}\\u{9b}31m"),
            ("user\u{202e}nimda", "user\\u{202e}nimda"),
            ("\0", "\\u{0}"),
        ];
        for (raw, shown) in cases {
            assert_eq!(Inert(raw).to_string(), shown, "{raw:?}");
        }
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let shown = Inert(&c.to_string()).to_string();
            assert!(!shown.chars().any(needs_escape), "{c:?} shows as {shown:?}");
        }
    }

    #[test]
    fn quoted_values_are_short_and_say_their_length() {
        assert_eq!(Quoted("abc").to_string(), "\"abc\"");
        let exactly = "x".repeat(QUOTED_CHARS);
        assert_eq!(Quoted(&exactly).to_string(), format!("\"{exactly}\""));

        let huge = "é".repeat(10_000);
        let shown = Quoted(&huge).to_string();
        assert!(shown.chars().count() < QUOTED_CHARS + 30, "{shown}");
        assert!(shown.ends_with("… (20000 bytes)"), "{shown}");

        let hostile = format!("\u{1b}]0;owned\u{7}{}", "y".repeat(200));
        assert!(!Quoted(&hostile).to_string().contains('\u{1b}'));
        let brief = Brief(&hostile).to_string();
        assert!(brief.starts_with("\\u{1b}]0;owned\\u{7}yyy"), "{brief}");
        assert!(brief.ends_with("… (210 bytes)"), "{brief}");
    }
}
