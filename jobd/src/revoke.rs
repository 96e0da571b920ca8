//! `jobd pki revoke`: a certificate revocation list signed by the PKI's own CA.
//!
//! A client certificate is valid for its whole life (a year by default); one that leaked
//! must stop working now. The CRL (`crl.pem` beside the CA) names the serial numbers the
//! CA has revoked, and `jobd serve --crl` refuses them at the handshake. Each revocation
//! signs a new CRL with every earlier entry, a CRL number one higher and a new
//! `nextUpdate`, and replaces the file atomically, so a jobd that reloads it never reads
//! half of one. A revocation with nothing to add only signs the list again, with a later
//! `nextUpdate`, which is how a CRL is kept from expiring.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

use crate::pki::PkiError;

/// The CRL's file name in a PKI folder.
pub const CRL_FILE: &str = "crl.pem";

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The certificate of this user in the PKI folder (`NAME.pem`).
    User(String),
    /// A certificate by its serial number, as `openssl x509 -serial` prints it (hex).
    Serial(Vec<u8>),
}

/// What a revocation did.
#[derive(Debug)]
pub struct Revoked {
    /// Serials added by this revocation (hex), and those that were revoked already.
    pub added: Vec<String>,
    pub already: Vec<String>,
    pub crl: PathBuf,
    pub next_update: OffsetDateTime,
}

/// Parses a serial as hex, with or without colons (`1A:2B`, `1a2b`).
pub fn parse_serial(text: &str) -> Result<Vec<u8>, String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || hex.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a serial number (hex, up to 20 bytes, e.g. 4F:1A:...)"
        ));
    }
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// A serial as people compare it: hex pairs with colons.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Adds `what` to the CRL of the PKI in `dir` (created if there is none), valid for `days`.
pub fn revoke(dir: &Path, what: &[Revocation], days: u32) -> Result<Revoked, PkiError> {
    if days == 0 || days > 36500 {
        return Err(PkiError::Days);
    }
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(|source| PkiError::Write { path, source })
    };
    let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(&read("ca-key.pem")?))?;
    let issuer = Issuer::from_ca_cert_pem(&String::from_utf8_lossy(&read("ca.pem")?), ca_key)?;
    let crl_path = dir.join(CRL_FILE);
    let (mut entries, number) = match fs::read(&crl_path) {
        Ok(pem) => existing_entries(&crl_path, &pem)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(source) => {
            return Err(PkiError::Write {
                path: crl_path,
                source,
            })
        }
    };
    let now = OffsetDateTime::now_utc();
    let (mut added, mut already) = (Vec::new(), Vec::new());
    for revocation in what {
        let serials = match revocation {
            Revocation::Serial(serial) => vec![serial.clone()],
            Revocation::User(name) => user_serials(dir, name)?,
        };
        for serial in serials {
            if entries.iter().any(|e| e.serial_number.as_ref() == serial) {
                already.push(hex(&serial));
                continue;
            }
            added.push(hex(&serial));
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: now,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
    }
    let next_update = now + Duration::days(i64::from(days));
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update,
        crl_number: SerialNumber::from((number + 1).to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    let pem = crl.pem()?;
    crate::pki::replace(dir, CRL_FILE, &pem)?;
    Ok(Revoked {
        added,
        already,
        crl: crl_path,
        next_update,
    })
}

/// The entries and the number of the CRL in `pem`, to carry over into the next one.
fn existing_entries(path: &Path, pem: &[u8]) -> Result<(Vec<RevokedCertParams>, u64), PkiError> {
    let bad = |why: String| PkiError::Crl {
        path: path.to_path_buf(),
        why,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| bad(e.to_string()))?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
        .map_err(|e| bad(e.to_string()))?;
    let number = crl
        .crl_number()
        .and_then(|n| {
            let digits = n.to_u64_digits();
            (digits.len() <= 1).then(|| digits.first().copied().unwrap_or(0))
        })
        .ok_or_else(|| bad("it has no CRL number jobd can count on from".into()))?;
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| {
            let at = OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                .map_err(|e| bad(e.to_string()))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: at,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
        })
        .collect::<Result<_, PkiError>>()?;
    Ok((entries, number))
}

/// The serial of `NAME.pem` in the PKI folder, after checking that it is that user's.
fn user_serials(dir: &Path, name: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    crate::pki::check_username(name).map_err(PkiError::User)?;
    let path = dir.join(format!("{name}.pem"));
    let pem = fs::read(&path).map_err(|source| PkiError::Write {
        path: path.clone(),
        source,
    })?;
    let bad = |why: String| PkiError::Crl {
        path: path.clone(),
        why,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let cn_matches = cert
        .subject()
        .iter_common_name()
        .any(|cn| cn.as_str().ok() == Some(name));
    if !cn_matches {
        return Err(bad(format!("its subject is not CN={name}")));
    }
    Ok(vec![cert.raw_serial().to_vec()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, PkiOptions};

    fn pki_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        pki::init(&PkiOptions::new(&out)).unwrap();
        dir
    }

    fn serial_of(path: &Path) -> Vec<u8> {
        let pem = fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        pem.parse_x509().unwrap().raw_serial().to_vec()
    }

    fn crl(path: &Path) -> (Vec<Vec<u8>>, u64) {
        let pem = fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
                .unwrap();
        let serials = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        let number = crl.crl_number().unwrap().to_u64_digits()[0];
        (serials, number)
    }

    #[test]
    fn revocations_accumulate_in_a_crl_signed_by_the_ca() {
        let dir = pki_dir();
        let pki = dir.path().join("pki");
        let bob = serial_of(&pki.join("bob.pem"));
        let done = revoke(&pki, &[Revocation::User("bob".into())], 7).unwrap();
        assert_eq!(done.added, [hex(&bob)]);
        assert_eq!(crl(&done.crl), (vec![bob.clone()], 1));

        let alice = serial_of(&pki.join("alice.pem"));
        let done = revoke(
            &pki,
            &[
                Revocation::Serial(parse_serial(&hex(&alice)).unwrap()),
                Revocation::User("bob".into()),
            ],
            7,
        )
        .unwrap();
        assert_eq!(
            (done.added, done.already),
            (vec![hex(&alice)], vec![hex(&bob)])
        );
        assert_eq!(crl(&done.crl), (vec![bob.clone(), alice.clone()], 2));

        // Nothing to add: signed again, the same entries, a later number.
        revoke(&pki, &[], 7).unwrap();
        assert_eq!(crl(&done.crl), (vec![bob, alice], 3));

        // The CA's signature verifies, as a TLS stack would check it.
        let ca = fs::read(pki.join("ca.pem")).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(&ca).unwrap();
        let ca = ca.parse_x509().unwrap();
        let pem = fs::read(&done.crl).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let (_, list) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
                .unwrap();
        list.verify_signature(ca.public_key()).unwrap();
    }

    #[test]
    fn unknown_users_and_bad_serials_are_refused() {
        let dir = pki_dir();
        let pki = dir.path().join("pki");
        let err = revoke(&pki, &[Revocation::User("carol".into())], 7).unwrap_err();
        assert!(err.to_string().contains("carol.pem"), "{err}");
        let err = revoke(&pki, &[Revocation::User("../ca".into())], 7).unwrap_err();
        assert!(matches!(err, PkiError::User(_)), "{err}");
        assert_eq!(parse_serial("1a:2B").unwrap(), [0x1a, 0x2b]);
        assert_eq!(parse_serial("abc").unwrap(), [0x0a, 0xbc]);
        for bad in ["", "xyz", &"a".repeat(41)] {
            assert!(parse_serial(bad).is_err(), "{bad}");
        }
        assert!(!pki.join(CRL_FILE).exists());
    }
}
