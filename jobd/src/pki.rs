//! `jobd pki init`: a small certificate authority for development and small deployments.
//!
//! It writes a CA, a server certificate (SANs: localhost, 127.0.0.1, ::1 and any extra
//! names) and one client certificate per user, whose subject CN is the username and whose
//! O values are the roles. Every certificate expires. The folder is made 0700 and every
//! file in it 0600, from the moment each is created: the keys must stay secret, and jobs
//! run on the same host.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::identity::Role;

/// The OID of the subject O attribute. rcgen keeps one value per attribute type, so a
/// second O value is added under this spelled-out type; both encode as O.
const ORGANIZATION_OID: &[u64] = &[2, 5, 4, 10];

/// A user to issue a client certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub roles: Vec<Role>,
}

impl std::str::FromStr for User {
    type Err = String;

    /// Parses `NAME:ROLE[,ROLE]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, roles) = s
            .split_once(':')
            .ok_or_else(|| format!("{}: expected NAME:ROLE[,ROLE]", quote(s)))?;
        check_username(name)?;
        let roles = roles
            .split(',')
            .map(|r| {
                Role::parse(r).ok_or_else(|| format!("{}: roles are admin and user", quote(r)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(User {
            name: name.to_string(),
            roles,
        })
    }
}

/// X.509's upper bound for a CommonName (RFC 5280, `ub-common-name`).
const MAX_USERNAME_LEN: usize = 64;

/// A username becomes a certificate's CN and two file names (`NAME.pem`, `NAME-key.pem`)
/// beside the CA's and the server's, so it must fit a CN and must not name another file of
/// the PKI: `ca`, `server` and any `X-key` would overwrite the CA, the server's files or
/// user X's key.
pub(crate) fn check_username(name: &str) -> Result<(), String> {
    let shown = quote(name);
    if name.is_empty() {
        return Err("a username cannot be empty".into());
    }
    if name.len() > MAX_USERNAME_LEN {
        return Err(format!(
            "{shown}: a username has at most {MAX_USERNAME_LEN} characters (X.509's limit for a CN)"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!(
            "{shown}: a username uses letters, digits, '.', '_' and '-'"
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!(
            "{shown}: a username starts with a letter, a digit or '_'"
        ));
    }
    if name == "ca" || name == "server" || name.ends_with("-key") {
        return Err(format!(
            "{shown}: that name is taken by the PKI's own files (ca, server, NAME-key)"
        ));
    }
    Ok(())
}

/// A value from the command line, shown in an error: debug-quoted (so control characters
/// stay inert) and cut to a length a terminal line can hold.
fn quote(value: &str) -> String {
    const SHOWN: usize = 80;
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &value[..end], value.len()),
        None => format!("{value:?}"),
    }
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    pub out: PathBuf,
    pub users: Vec<User>,
    pub extra_sans: Vec<String>,
    pub days: u32,
    /// Replace existing files instead of refusing to.
    pub force: bool,
}

impl PkiOptions {
    /// The development defaults: admin (admin), alice and bob (user), one year.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        PkiOptions {
            out: out.into(),
            users: default_users(),
            extra_sans: Vec::new(),
            days: 365,
            force: false,
        }
    }
}

pub fn default_users() -> Vec<User> {
    [
        ("admin", Role::Admin),
        ("alice", Role::User),
        ("bob", Role::User),
    ]
    .into_iter()
    .map(|(name, role)| User {
        name: name.into(),
        roles: vec![role],
    })
    .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    #[error("user {0:?} is named twice")]
    DuplicateUser(String),
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot issue a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("the validity must be between 1 and 36500 days")]
    Days,
    #[error("{path} is not usable: {why}")]
    Crl { path: PathBuf, why: String },
    #[error("{0}")]
    User(String),
}

/// Issues the CA, the server certificate and the users' certificates into `opts.out`.
pub fn init(opts: &PkiOptions) -> Result<(), PkiError> {
    if opts.days == 0 || opts.days > 36500 {
        return Err(PkiError::Days);
    }
    worker::private::create_dir_all(&opts.out).map_err(|source| PkiError::Write {
        path: opts.out.clone(),
        source,
    })?;
    let mut names = vec!["ca".to_string(), "server".to_string()];
    for user in &opts.users {
        if names[2..].contains(&user.name) {
            return Err(PkiError::DuplicateUser(user.name.clone()));
        }
        names.push(user.name.clone());
    }
    if !opts.force {
        for name in &names {
            refuse_existing(&opts.out, name)?;
        }
    }
    let now = OffsetDateTime::now_utc();
    let validity = |params: &mut CertificateParams| {
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(i64::from(opts.days));
    };

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "jobworker CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&opts.out, "ca.pem", &ca_cert.pem())?;
    write(&opts.out, "ca-key.pem", &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    sans.extend(opts.extra_sans.iter().cloned());
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, "jobd");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    write(&opts.out, "server.pem", &cert.pem())?;
    write(&opts.out, "server-key.pem", &key.serialize_pem())?;

    for user in &opts.users {
        let (cert, key) = client_certificate(&issuer, user, &validity)?;
        write(&opts.out, &format!("{}.pem", user.name), &cert)?;
        write(&opts.out, &format!("{}-key.pem", user.name), &key)?;
    }
    Ok(())
}

/// Issues a client certificate for `user` from the CA in `dir` (`ca.pem`, `ca-key.pem`),
/// valid from `not_before` to `not_after`, and writes `NAME.pem` and `NAME-key.pem`
/// there. Used to add users to an existing PKI (and by tests, for expired certificates).
/// An existing user's files are replaced only with `force`: silently issuing a new key
/// would lock out whoever holds the old one.
pub fn add_user(
    dir: &Path,
    user: &User,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    force: bool,
) -> Result<(), PkiError> {
    if !force {
        refuse_existing(dir, &user.name)?;
    }
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|source| PkiError::Write { path, source })
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?)?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key)?;
    let validity = |params: &mut CertificateParams| {
        params.not_before = not_before;
        params.not_after = not_after;
    };
    let (cert, key) = client_certificate(&issuer, user, &validity)?;
    write(dir, &format!("{}.pem", user.name), &cert)?;
    write(dir, &format!("{}-key.pem", user.name), &key)
}

/// Makes `dir` and everything in it private (0700 folders, 0600 files), as an older
/// `pki init` did not; returns what was tightened so the caller can say so.
pub fn make_private(dir: &Path) -> Result<worker::private::Repaired, PkiError> {
    worker::private::repair(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Fails if `NAME.pem` or `NAME-key.pem` is already in `dir`.
fn refuse_existing(dir: &Path, name: &str) -> Result<(), PkiError> {
    for file in [format!("{name}.pem"), format!("{name}-key.pem")] {
        let path = dir.join(file);
        if path.symlink_metadata().is_ok() {
            return Err(PkiError::Exists(path));
        }
    }
    Ok(())
}

/// Issues one client certificate; returns (certificate PEM, key PEM).
fn client_certificate(
    issuer: &Issuer<'_, KeyPair>,
    user: &User,
    validity: &dyn Fn(&mut CertificateParams),
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, user.name.as_str());
    for (i, role) in user.roles.iter().enumerate() {
        let ty = match i {
            0 => DnType::OrganizationName,
            1 => DnType::CustomDnType(ORGANIZATION_OID.to_vec()),
            _ => break, // only two roles exist
        };
        params.distinguished_name.push(ty, role.as_str());
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a new file, mode 0600: certificates too, as everything in the PKI's folder.
fn write(dir: &Path, name: &str, contents: &str) -> Result<(), PkiError> {
    let path = dir.join(name);
    let result = (|| {
        let _ = fs::remove_file(&path);
        let mut f = worker::private::options()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()
    })();
    result.map_err(|source| PkiError::Write { path, source })
}

/// Replaces `dir/name` with `contents` through a temporary file and a rename, so that a
/// reader (a jobd reloading its CRL) sees the old file or the new one, never a part.
pub(crate) fn replace(dir: &Path, name: &str, contents: &str) -> Result<(), PkiError> {
    let temp = format!(".{name}.{}.tmp", std::process::id());
    write(dir, &temp, contents)?;
    let (from, to) = (dir.join(&temp), dir.join(name));
    fs::rename(&from, &to).map_err(|source| {
        let _ = fs::remove_file(&from);
        PkiError::Write { path: to, source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            roles: vec![Role::User],
        }
    }

    fn valid_for_a_day() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now - Duration::minutes(5), now + Duration::days(1))
    }

    fn small_pki() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let mut opts = PkiOptions::new(&out);
        opts.users = vec![user("alice")];
        init(&opts).unwrap();
        (dir, out)
    }

    #[test]
    fn usernames_must_fit_a_cn_and_a_file_name() {
        let longest = "a".repeat(64);
        for ok in [
            "alice",
            "bob.smith",
            "_svc",
            "a-b_c.d",
            "x1",
            longest.as_str(),
        ] {
            assert!(format!("{ok}:user").parse::<User>().is_ok(), "{ok}");
        }
        let too_long = "a".repeat(65);
        for bad in [
            "",
            too_long.as_str(),
            "../etc",
            "a/b",
            ".hidden",
            "-rf",
            "caf\u{e9}",
            "\u{1b}[2J",
            "ca",
            "server",
            "alice-key",
            "a b",
        ] {
            let err = format!("{bad}:user").parse::<User>().unwrap_err();
            assert!(
                !err.contains('\u{1b}'),
                "the error shows control characters raw: {err}"
            );
        }
        let err = format!("{}:user", "x".repeat(10_000))
            .parse::<User>()
            .unwrap_err();
        assert!(
            err.len() < 200,
            "a long name is echoed whole: {} bytes",
            err.len()
        );
        assert!(err.contains("64"), "{err}");
    }

    #[test]
    fn add_user_refuses_to_replace_a_user_without_force() {
        let (_dir, pki) = small_pki();
        let (from, to) = valid_for_a_day();
        let key = pki.join("alice-key.pem");
        let before = fs::read_to_string(&key).unwrap();

        let err = add_user(&pki, &user("alice"), from, to, false).unwrap_err();
        assert!(
            matches!(&err, PkiError::Exists(p) if p.ends_with("alice.pem")),
            "{err}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            fs::read_to_string(&key).unwrap(),
            before,
            "the old key was replaced"
        );

        add_user(&pki, &user("alice"), from, to, true).unwrap();
        assert_ne!(
            fs::read_to_string(&key).unwrap(),
            before,
            "--force kept the old key"
        );

        add_user(&pki, &user("carol"), from, to, false).unwrap();
        assert!(pki.join("carol-key.pem").exists());
    }

    /// Folders under `root` that are not 0700 and files that are not 0600.
    fn not_private(root: &Path) -> Vec<(PathBuf, u32)> {
        use std::os::unix::fs::MetadataExt;
        let mut wrong = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let meta = fs::symlink_metadata(&path).unwrap();
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            if meta.mode() & 0o7777 != want {
                wrong.push((path.clone(), meta.mode() & 0o7777));
            }
            if meta.is_dir() {
                pending.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        }
        wrong
    }

    #[test]
    fn a_new_pki_is_private_from_its_folders_to_its_certificates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // Two levels, as `--out /etc/jobworker/pki` on a fresh host.
        let out = dir.path().join("jobworker/pki");
        init(&PkiOptions::new(&out)).unwrap();
        let (from, to) = valid_for_a_day();
        add_user(&out, &user("carol"), from, to, false).unwrap();
        assert!(out.join("carol-key.pem").exists());
        assert_eq!(not_private(&dir.path().join("jobworker")), vec![]);
    }

    #[test]
    fn make_private_repairs_a_pki_an_older_init_left_readable() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, pki) = small_pki();
        for (path, mode) in [
            (pki.clone(), 0o755),
            (pki.join("ca.pem"), 0o644),
            (pki.join("alice.pem"), 0o644),
        ] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        let repaired = make_private(&pki).unwrap();
        assert_eq!(repaired.count, 3, "{}", repaired.describe());
        assert!(repaired.describe().contains("ca.pem (was 0644)"));
        assert_eq!(not_private(&pki), vec![]);
    }

    #[test]
    fn init_refuses_existing_files_and_repeated_users() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("bob-key.pem"), "someone's key").unwrap();
        let mut opts = PkiOptions::new(&out);
        let err = init(&opts).unwrap_err();
        assert!(
            matches!(&err, PkiError::Exists(p) if p.ends_with("bob-key.pem")),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(out.join("bob-key.pem")).unwrap(),
            "someone's key"
        );
        assert!(!out.join("ca.pem").exists(), "a refused init wrote files");

        opts.users = vec![user("carol"), user("carol")];
        opts.force = true;
        let err = init(&opts).unwrap_err();
        assert!(
            matches!(err, PkiError::DuplicateUser(ref n) if n == "carol"),
            "{err}"
        );
    }
}
