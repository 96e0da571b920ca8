//! A job's environment variables: the rules a `KEY=VALUE` must follow, shared by jobc (to
//! refuse a bad `-e` before connecting) and the worker (which refuses it from any client),
//! and Docker's `--env-file` format, which jobc reads.

use std::fmt;

/// Most bytes of a job's whole environment (`KEY=VALUE` strings and their NULs): the
/// kernel refuses any single string past 128 KiB, and all of argv and the environment
/// together past a quarter of the stack limit, so a cap here turns an exec failure
/// nobody can explain into an error that says what to change.
pub const MAX_ENV_BYTES: usize = 128 * 1024;

/// Why a variable, or a whole environment, is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// No `=`: not `KEY=VALUE`.
    NotAssignment(String),
    /// The name is empty, starts with a digit, or holds other than letters, digits and `_`.
    BadName(String),
    /// A NUL byte, which no program can receive.
    Nul(String),
    /// The whole environment is past [`MAX_ENV_BYTES`].
    TooLarge(usize),
    /// A line of an env file that is none of the above, with its number.
    Line(usize, Box<EnvError>),
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |s: &str| crate::inert::Inert(s).to_string();
        match self {
            EnvError::NotAssignment(s) => {
                write!(f, "environment variable {:?} is not KEY=VALUE", shown(s))
            }
            EnvError::BadName(name) => write!(
                f,
                "environment variable name {:?} is not valid: use letters, digits and _, not starting with a digit",
                shown(name)
            ),
            EnvError::Nul(name) => write!(
                f,
                "environment variable {:?} contains a NUL byte, which cannot be passed to a program",
                shown(name)
            ),
            EnvError::TooLarge(bytes) => write!(
                f,
                "the environment is {bytes} bytes; at most {MAX_ENV_BYTES} are allowed"
            ),
            EnvError::Line(n, e) => write!(f, "line {n}: {e}"),
        }
    }
}

impl std::error::Error for EnvError {}

/// Splits `KEY=VALUE` into its name and value, refusing what the rules above refuse.
pub fn parse_var(var: &str) -> Result<(&str, &str), EnvError> {
    let (name, value) = var
        .split_once('=')
        .ok_or_else(|| EnvError::NotAssignment(var.to_string()))?;
    check_name(name)?;
    if value.contains('\0') {
        return Err(EnvError::Nul(name.to_string()));
    }
    Ok((name, value))
}

/// A name as POSIX shells accept it, so that every program can read it back.
pub fn check_name(name: &str) -> Result<(), EnvError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else if name.contains('\0') {
        Err(EnvError::Nul(name.replace('\0', "")))
    } else {
        Err(EnvError::BadName(name.to_string()))
    }
}

/// The size an environment takes in exec, as [`MAX_ENV_BYTES`] counts it.
pub fn size(vars: &[String]) -> usize {
    vars.iter().map(|v| v.len() + 1).sum()
}

/// One line of an env file: a variable, or a name whose value the caller's own
/// environment gives (`KEY` alone, as `docker run --env-file` reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvLine {
    Set(String),
    Inherit(String),
}

/// Reads Docker's `--env-file` format: one `KEY=VALUE` or `KEY` per line, taken as it is
/// (no quotes removed, no `$` expanded), with leading whitespace, blank lines and lines
/// starting with `#` skipped.
pub fn parse_env_file(text: &str) -> Result<Vec<EnvLine>, EnvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at_line = |e| EnvError::Line(i + 1, Box::new(e));
        if line.contains('=') {
            parse_var(line).map_err(at_line)?;
            vars.push(EnvLine::Set(line.to_string()));
        } else {
            let name = line.trim_end();
            check_name(name).map_err(at_line)?;
            vars.push(EnvLine::Inherit(name.to_string()));
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_posix_and_values_take_anything_but_nul() {
        assert_eq!(parse_var("FOO=1"), Ok(("FOO", "1")));
        assert_eq!(parse_var("_x9="), Ok(("_x9", "")));
        assert_eq!(parse_var("A=b=c d"), Ok(("A", "b=c d")));
        assert!(matches!(parse_var("FOO"), Err(EnvError::NotAssignment(_))));
        assert!(matches!(parse_var("=1"), Err(EnvError::BadName(_))));
        assert!(matches!(parse_var("9A=1"), Err(EnvError::BadName(_))));
        assert!(matches!(parse_var("A-B=1"), Err(EnvError::BadName(_))));
        assert!(matches!(parse_var("A B=1"), Err(EnvError::BadName(_))));
        assert_eq!(parse_var("A=x\0y"), Err(EnvError::Nul("A".into())));
        assert!(matches!(parse_var("A\0=1"), Err(EnvError::Nul(_))));
    }

    #[test]
    fn env_files_read_as_docker_reads_them() {
        let text = "\u{feff}# a comment\n\nFOO=bar\n  SPACED=\"quoted\" \nHOME\nEMPTY=\n";
        assert_eq!(
            parse_env_file(text).unwrap(),
            vec![
                EnvLine::Set("FOO=bar".into()),
                EnvLine::Set("SPACED=\"quoted\" ".into()),
                EnvLine::Inherit("HOME".into()),
                EnvLine::Set("EMPTY=".into()),
            ]
        );
        let e = parse_env_file("OK=1\nBAD NAME=2\n").unwrap_err();
        assert_eq!(
            e,
            EnvError::Line(2, Box::new(EnvError::BadName("BAD NAME".into())))
        );
        assert!(e
            .to_string()
            .starts_with("line 2: environment variable name"));
    }

    #[test]
    fn size_counts_each_string_and_its_nul() {
        assert_eq!(size(&["A=1".into(), "BB=".into()]), 8);
        assert!(EnvError::TooLarge(200_000)
            .to_string()
            .contains("at most 131072"));
    }
}
