//! Who is calling: taken from the client certificate that the TLS layer verified.
//!
//! Username = subject CN; roles = every subject O value that names a known role. Unknown O
//! values are ignored, so a certificate with none of ours may do nothing.

use std::fmt;

use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub roles: Vec<Role>,
    /// The certificate's serial number, hex with colons (`openssl x509 -serial` shows it
    /// without them): what the audit log records and `jobd pki revoke --serial` takes.
    pub serial: String,
}

impl Identity {
    pub fn new(name: impl Into<String>, roles: Vec<Role>) -> Self {
        Identity {
            name: name.into(),
            roles,
            serial: String::new(),
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Reads the identity from a verified leaf certificate (DER).
    pub fn from_certificate(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
        let subject = cert.subject();
        let mut names = subject.iter_common_name();
        let name = names
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .ok_or(IdentityError::NoCommonName)?;
        if names.next().is_some() {
            return Err(IdentityError::SeveralCommonNames);
        }
        let mut roles = Vec::new();
        for o in subject.iter_organization() {
            if let Some(role) = o.as_str().ok().and_then(Role::parse) {
                if !roles.contains(&role) {
                    roles.push(role);
                }
            }
        }
        Ok(Identity {
            serial: crate::revoke::hex(cert.raw_serial()),
            ..Identity::new(name, roles)
        })
    }
}

/// The username as logs and messages show it: a CN may carry any character, and one with
/// a newline or an ESC must not forge or repaint a line of jobd's log.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", common::inert::Brief(&self.name))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed")]
    Unparsable,
    #[error("the client certificate has no subject common name (username)")]
    NoCommonName,
    #[error("the client certificate has more than one subject common name")]
    SeveralCommonNames,
}

/// Checks the subject inside the TLS handshake, after the CA and validity checks, so a
/// certificate without exactly one username is refused with a TLS alert (the client learns
/// why) instead of a connection dropped after the handshake.
#[derive(Debug)]
pub struct SubjectVerifier(pub std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for SubjectVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        Identity::from_certificate(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                std::sync::Arc::new(e),
            )))
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_cn_is_shown_inert_and_short() {
        let forged = "alice\n2026-12-02T00:00:00Z  INFO caller=admin method=\"Stop\" ok\u{1b}[2J";
        let shown = Identity::new(forged, vec![Role::User]).to_string();
        assert_eq!(
            shown,
            "alice\\u{a}2026-12-02T00:00:00Z  INFO caller=admin method=\"Stop\" ok\\u{1b}[2J"
        );
        let long = Identity::new("x".repeat(5000), vec![Role::User]).to_string();
        assert!(long.len() < 200, "{} bytes", long.len());
    }
}
