//! The server's TLS material (its certificate and key, the CA, the CRL) and its reload
//! without a restart.
//!
//! A restart of jobd kills every job it runs, so a renewed certificate or a new CRL must
//! be taken up by a running server. Each handshake takes the TLS config current when the
//! connection was accepted; a reload builds a whole new config from the files and swaps it
//! in, so established connections keep the one they were made with and new handshakes use
//! the new one. A reload that fails (a missing file, a key that does not match, an expired
//! CRL) changes nothing and says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use rustls::pki_types::CertificateRevocationListDer;
use tokio::sync::watch;
use x509_parser::prelude::FromDer;

use crate::tls;

/// Where the CA, the server certificate, its key and (optionally) the CRL are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates it lists are refused at the handshake.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `jobd pki init` writes in `dir`, with its CRL if `jobd pki revoke` made one.
    pub fn in_dir(dir: &Path) -> Self {
        let crl = dir.join(crate::revoke::CRL_FILE);
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            crl: crl.exists().then_some(crl),
        }
    }
}

/// The TLS config new handshakes use. Clones share it: a reload through one is seen by
/// every accept loop.
#[derive(Debug, Clone)]
pub struct Credentials {
    files: TlsFiles,
    current: Arc<watch::Sender<Arc<rustls::ServerConfig>>>,
}

impl Credentials {
    /// Reads every file; fails on anything a handshake could not use.
    pub fn load(files: TlsFiles) -> anyhow::Result<Credentials> {
        let config = build(&files)?;
        Ok(Credentials {
            files,
            current: Arc::new(watch::Sender::new(config)),
        })
    }

    /// The config as it is now and as reloads replace it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<rustls::ServerConfig>> {
        self.current.subscribe()
    }

    /// Reads every file again and, if all of it is usable, makes it the config of new
    /// handshakes; otherwise keeps the current one and returns why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = build(&self.files)?;
        self.current.send_replace(config);
        Ok(())
    }
}

fn build(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let crls = match &files.crl {
        Some(path) => vec![load_crl(path, SystemTime::now())?],
        None => Vec::new(),
    };
    tls::server_config_with_crls(&files.ca, &files.cert, &files.key, crls)
}

/// Reads a PEM CRL and refuses one past its `nextUpdate`: the CA promised a newer list by
/// then, so an older one may miss revocations (`jobd pki revoke` with nothing to revoke
/// signs a fresh one).
fn load_crl(path: &Path, now: SystemTime) -> anyhow::Result<CertificateRevocationListDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not a PEM file: {e}", path.display()))?;
    anyhow::ensure!(
        pem.label == "X509 CRL",
        "{} holds a {:?}, not an X509 CRL",
        path.display(),
        pem.label
    );
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
        .map_err(|e| anyhow::anyhow!("{} is not a CRL: {e}", path.display()))?;
    if let Some(next) = crl.next_update() {
        let next_secs = next.timestamp();
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        anyhow::ensure!(
            next_secs > now_secs,
            "the CRL {} expired at {} (its nextUpdate): sign a fresh one with \
             `jobd pki revoke --dir DIR`, which adds nothing when given nothing to revoke",
            path.display(),
            next.to_rfc2822().unwrap_or_else(|_| next_secs.to_string())
        );
    }
    Ok(CertificateRevocationListDer::from(pem.contents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, PkiOptions};

    #[test]
    fn a_crl_past_its_next_update_is_refused_and_a_failed_reload_keeps_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        pki::init(&PkiOptions::new(&pki_dir)).unwrap();
        let done = crate::revoke::revoke(&pki_dir, &[], 1).unwrap();
        let in_two_days = SystemTime::now() + std::time::Duration::from_secs(2 * 86400);
        let err = load_crl(&done.crl, in_two_days).unwrap_err().to_string();
        assert!(
            err.contains("expired at") && err.contains("jobd pki revoke"),
            "{err}"
        );
        load_crl(&done.crl, SystemTime::now()).unwrap();

        let files = TlsFiles::in_dir(&pki_dir);
        assert_eq!(files.crl.as_deref(), Some(done.crl.as_path()));
        let credentials = Credentials::load(files).unwrap();
        let before = credentials.subscribe().borrow().clone();
        // A key that does not belong to the certificate: the reload fails, nothing changes.
        std::fs::copy(
            pki_dir.join("alice-key.pem"),
            pki_dir.join("server-key.pem"),
        )
        .unwrap();
        let err = credentials.reload().unwrap_err();
        assert!(!format!("{err:#}").is_empty());
        assert!(Arc::ptr_eq(&before, &credentials.subscribe().borrow()));
        // A CRL that is not one.
        std::fs::copy(pki_dir.join("ca.pem"), &done.crl).unwrap();
        let err = load_crl(&done.crl, SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an X509 CRL"), "{err}");
    }
}
