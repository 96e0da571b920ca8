//! The variables `jobc start` sends: `--env-file` files first, then each `-e`, as `docker
//! run` reads them (a later variable of a name wins on the server). A `KEY` without a
//! value takes jobc's own, and is left out where jobc has none.

use std::path::PathBuf;

use common::env::{parse_env_file, EnvLine};

/// `KEY=VALUE` strings from `files` and `vars`, with values of bare names from `lookup`.
pub fn job_env(
    vars: &[String],
    files: &[PathBuf],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the env file {}: {e}", file.display()))?;
        lines.extend(parse_env_file(&text).map_err(|e| format!("{}: {e}", file.display()))?);
    }
    lines.extend(vars.iter().map(|v| match v.contains('=') {
        true => EnvLine::Set(v.clone()),
        false => EnvLine::Inherit(v.clone()),
    }));
    Ok(lines
        .into_iter()
        .filter_map(|line| match line {
            EnvLine::Set(var) => Some(var),
            EnvLine::Inherit(name) => lookup(&name).map(|value| format!("{name}={value}")),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_first_and_bare_names_take_jobcs_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.env");
        std::fs::write(&file, "# settings\nA=from file\nTOKEN\nUNSET\n").unwrap();
        let lookup = |name: &str| (name == "TOKEN").then(|| "s3cret".to_string());
        let env = job_env(
            &["A=from flag".into(), "TOKEN".into()],
            std::slice::from_ref(&file),
            lookup,
        );
        assert_eq!(
            env.unwrap(),
            ["A=from file", "TOKEN=s3cret", "A=from flag", "TOKEN=s3cret"]
        );
        std::fs::write(&file, "GOOD=1\n2BAD=x\n").unwrap();
        let err = job_env(&[], std::slice::from_ref(&file), |_| None).unwrap_err();
        assert!(err.ends_with("app.env: line 2: environment variable name \"2BAD\" is not valid: use letters, digits and _, not starting with a digit"), "{err}");
        let err = job_env(&[], &[dir.path().join("missing")], |_| None).unwrap_err();
        assert!(err.starts_with("cannot read the env file"), "{err}");
    }
}
