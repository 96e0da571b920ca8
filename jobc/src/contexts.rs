//! Named contexts: the servers a person works with, each with its certificates, in one
//! file, so that switching hosts is `jobc context use NAME` or `--context NAME` rather
//! than four flags (kubectl's contexts, docker's).
//!
//! The file is TOML, at `$JOBC_CONFIG`, else `$XDG_CONFIG_HOME/jobc/config.toml`, else
//! `~/.config/jobc/config.toml`:
//!
//! ```toml
//! current = "lab"
//!
//! [contexts.lab]
//! server = "lab.example.com:50051"
//! ca = "lab/ca.pem"            # relative paths are the file's folder's
//! cert = "lab/carol.pem"
//! key = "lab/carol-key.pem"
//! connect_timeout = "5s"       # optional
//! ```
//!
//! A flag or `JOBC_*` variable wins over the context for its own setting; what neither
//! gives comes from jobc's defaults (a local development jobd).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One context's settings; each is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    current: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

/// The contexts file, read.
#[derive(Debug)]
pub struct Contexts {
    path: PathBuf,
    file: File,
}

impl Contexts {
    /// Where the file is, by the environment.
    pub fn default_path() -> PathBuf {
        if let Some(path) = std::env::var_os("JOBC_CONFIG") {
            return PathBuf::from(path);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from(".config"));
        base.join("jobc").join("config.toml")
    }

    /// Reads the file at `path`; a missing file has no contexts.
    pub fn load(path: &Path) -> Result<Contexts, String> {
        let file = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| format!("{} is not a valid contexts file: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Contexts {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current(&self) -> Option<&str> {
        self.file.current.as_deref()
    }

    /// The context `name`, its relative paths made the file's folder's.
    pub fn get(&self, name: &str) -> Result<Context, String> {
        let context = self.file.contexts.get(name).ok_or_else(|| {
            format!(
                "no context {name:?} in {} (jobc context ls lists them)",
                self.path.display()
            )
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let near = |p: &Option<PathBuf>| p.as_ref().map(|p| dir.join(p));
        Ok(Context {
            ca: near(&context.ca),
            cert: near(&context.cert),
            key: near(&context.key),
            ..context.clone()
        })
    }

    /// The context `asked` for, else the current one, if any.
    pub fn chosen(&self, asked: Option<&str>) -> Result<Option<(String, Context)>, String> {
        match (asked, self.current()) {
            (Some(name), _) => Ok(Some((name.to_string(), self.get(name)?))),
            (None, Some(name)) => {
                let context = self
                    .get(name)
                    .map_err(|e| format!("the current context: {e}"))?;
                Ok(Some((name.to_string(), context)))
            }
            (None, None) => Ok(None),
        }
    }

    /// Every context, by name.
    pub fn all(&self) -> Result<Vec<(String, Context)>, String> {
        self.file
            .contexts
            .keys()
            .map(|name| Ok((name.clone(), self.get(name)?)))
            .collect()
    }

    /// Makes `name` the current context. Only the `current = ...` line of the file is
    /// written (or added at its top): comments and the rest stay as they were. The file
    /// is replaced atomically.
    pub fn set_current(&self, name: &str) -> Result<(), String> {
        self.get(name)?;
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let line = format!("current = {}", toml_string(name));
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        // Only a line before the first table belongs to the top level.
        let top = lines
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(lines.len());
        match lines[..top].iter().position(|l| is_current_line(l)) {
            Some(at) => lines[at] = line,
            None => lines.insert(0, line),
        }
        let mut new = lines.join("\n");
        new.push('\n');
        // It must still read as the same contexts, with the new current.
        let check: File = toml::from_str(&new)
            .map_err(|e| format!("cannot update {}: {e}", self.path.display()))?;
        if check.current.as_deref() != Some(name) {
            return Err(format!(
                "cannot update {}: its current line is not one jobc can rewrite",
                self.path.display()
            ));
        }
        let temp = self.path.with_extension("toml.tmp");
        std::fs::write(&temp, new)
            .and_then(|()| std::fs::rename(&temp, &self.path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                format!("cannot write {}: {e}", self.path.display())
            })
    }
}

fn is_current_line(line: &str) -> bool {
    line.trim_start()
        .strip_prefix("current")
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# my servers\n\
        current = \"a\"\n\
        \n\
        [contexts.a]\n\
        server = \"a.example:1\"\n\
        ca = \"a/ca.pem\"\n\
        \n\
        [contexts.b]\n\
        server = \"b.example:2\"\n\
        key = \"/abs/key.pem\"\n";

    #[test]
    fn contexts_resolve_paths_and_switch_keeping_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, FILE).unwrap();
        let contexts = Contexts::load(&path).unwrap();
        let (name, a) = contexts.chosen(None).unwrap().unwrap();
        assert_eq!(name, "a");
        assert_eq!(a.ca, Some(dir.path().join("a/ca.pem")));
        let (_, b) = contexts.chosen(Some("b")).unwrap().unwrap();
        assert_eq!(b.key, Some(PathBuf::from("/abs/key.pem")));
        let err = contexts.chosen(Some("c")).unwrap_err();
        assert!(err.contains("no context \"c\""), "{err}");

        contexts.set_current("b").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, FILE.replace("current = \"a\"", "current = \"b\""));
        assert_eq!(Contexts::load(&path).unwrap().current(), Some("b"));
        assert!(contexts.set_current("nope").is_err());
    }

    #[test]
    fn a_file_without_current_gets_one_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(Contexts::load(&path).unwrap().all().unwrap(), vec![]);
        std::fs::write(&path, "[contexts.x]\nserver = \"x:1\"\n").unwrap();
        let contexts = Contexts::load(&path).unwrap();
        assert_eq!(contexts.chosen(None).unwrap(), None);
        contexts.set_current("x").unwrap();
        assert_eq!(Contexts::load(&path).unwrap().current(), Some("x"));
        std::fs::write(&path, "[contexts.x]\nsrever = \"x:1\"\n").unwrap();
        assert!(Contexts::load(&path).unwrap_err().contains("srever"));
        std::fs::write(&path, "current = \"y\"\n[contexts.x]\n").unwrap();
        let contexts = Contexts::load(&path).unwrap();
        let err = contexts.chosen(None).unwrap_err();
        assert!(
            err.contains("the current context: no context \"y\""),
            "{err}"
        );
        // Which `context use` mends.
        contexts.set_current("x").unwrap();
    }
}
