//! Turning failures into one line a person understands, and into jobc's exit codes.
//!
//! Exit codes: 0 success; 1 the server refused or failed the request (not found, invalid
//! input, permission denied, ...); 2 usage error; 3 the server could not be reached or the
//! TLS handshake failed; 130 interrupted by Ctrl-C.

use std::error::Error as StdError;

use crate::client::ConnectError;

pub const EXIT_REQUEST: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CONNECT: i32 = 3;
pub const EXIT_INTERRUPTED: i32 = 130;

/// A failure of a jobc command, ready to print.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit_code: i32,
    /// The connection failed without saying why; worth a diagnosis (see
    /// [`crate::client::diagnose`]).
    pub unexplained: bool,
}

impl Failure {
    pub fn new(exit_code: i32, message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            exit_code,
            unexplained: false,
        }
    }
}

/// What went wrong underneath a transport failure. Typed, so that how a failure is
/// reported is decided on its kind, never on the words of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The server's certificate did not verify; says why.
    ServerCertificate(String),
    /// The server sent an alert about our certificate.
    CertificateRefused,
    /// The server sent an alert saying it does not speak TLS 1.3.
    OldTls,
    /// The server sent another alert (its name).
    Alert(String),
    /// TLS failed on our side.
    Tls(String),
    ConnectionRefused,
    ConnectionReset,
    TimedOut,
    /// Any other I/O failure, as the system or jobc's own timeout words it.
    Io(String),
}

impl Reason {
    /// A certificate problem is the whole story: it is shown without "cannot connect to".
    pub fn stands_alone(&self) -> bool {
        matches!(
            self,
            Reason::ServerCertificate(_) | Reason::CertificateRefused
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::ServerCertificate(why) => {
                write!(f, "cannot verify the server's certificate: {why}")
            }
            Reason::CertificateRefused => f.write_str("server refused this certificate"),
            Reason::OldTls => f.write_str("the server does not speak TLS 1.3"),
            Reason::Alert(name) => write!(f, "TLS failed: the server sent {name}"),
            Reason::Tls(why) => write!(f, "TLS failed: {why}"),
            Reason::ConnectionRefused => f.write_str("connection refused"),
            Reason::ConnectionReset => f.write_str("connection reset by the server"),
            Reason::TimedOut => f.write_str("timed out"),
            Reason::Io(why) => f.write_str(why),
        }
    }
}

/// What went wrong underneath a transport failure, found by walking the error chain.
fn transport_reason(err: &(dyn StdError + 'static)) -> Option<Reason> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_reason(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls_reason(tls));
            }
            if let Some(alert) = alert_in_text(io) {
                return Some(alert_reason(alert));
            }
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Reason::ConnectionRefused,
                // jobc's own connect timeout says which limit ran out.
                std::io::ErrorKind::TimedOut if io.get_ref().is_some() => {
                    Reason::Io(io.to_string())
                }
                std::io::ErrorKind::TimedOut => Reason::TimedOut,
                std::io::ErrorKind::ConnectionReset => Reason::ConnectionReset,
                _ => Reason::Io(io.to_string()),
            });
        }
        next = e.source();
    }
    None
}

/// The TLS alert an I/O error reports. tokio-rustls keeps the rustls error inside; h2
/// keeps only the text of the I/O errors it passes on, so an alert that arrives after the
/// handshake is known by rustls's wording alone, turned back into the alert here.
pub fn alert_of(io: &std::io::Error) -> Option<rustls::AlertDescription> {
    match io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => Some(*alert),
        Some(_) => None,
        None => alert_in_text(io),
    }
}

fn alert_in_text(io: &std::io::Error) -> Option<rustls::AlertDescription> {
    let text = io.to_string();
    let name = text.strip_prefix("received fatal alert: ")?;
    // Every code has its own Debug name (unknown ones too), so this finds the one sent.
    (0..=u8::MAX)
        .map(rustls::AlertDescription::from)
        .find(|alert| format!("{alert:?}") == name)
}

fn tls_reason(e: &rustls::Error) -> Reason {
    match e {
        rustls::Error::AlertReceived(alert) => alert_reason(*alert),
        rustls::Error::InvalidCertificate(why) => {
            use rustls::CertificateError as E;
            let why = match why {
                E::UnknownIssuer => "it is not issued by the CA given with --ca".into(),
                E::BadSignature => {
                    "its signature does not verify with the CA given with --ca".into()
                }
                E::Expired | E::ExpiredContext { .. } => "it has expired".into(),
                E::NotValidYet | E::NotValidYetContext { .. } => "it is not valid yet".into(),
                other => other.to_string(),
            };
            Reason::ServerCertificate(why)
        }
        other => Reason::Tls(other.to_string()),
    }
}

/// Whether the error chain ends in the connection being cut (reset, broken pipe, EOF).
fn abrupt_close(err: &(dyn StdError + 'static)) -> bool {
    use std::io::ErrorKind as K;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof
            );
        }
        next = e.source();
    }
    false
}

/// What a TLS alert from the server means for the person running jobc.
pub fn alert_reason(alert: rustls::AlertDescription) -> Reason {
    use rustls::AlertDescription as A;
    match alert {
        A::BadCertificate
        | A::UnknownCA
        | A::CertificateExpired
        | A::CertificateRequired
        | A::CertificateRevoked
        | A::CertificateUnknown
        | A::UnsupportedCertificate
        | A::AccessDenied
        | A::DecryptError => Reason::CertificateRefused,
        A::ProtocolVersion => Reason::OldTls,
        other => Reason::Alert(format!("{other:?}")),
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        match &e {
            ConnectError::Config(msg) => Failure::new(EXIT_USAGE, msg.clone()),
            // jobd closes connections past its connection limit before the TLS
            // handshake (no handshake CPU for a connection it cannot serve); TLS 1.3 sends
            // the server's verdict on our certificate only after our side of the handshake,
            // so a connection cut while we handshake was cut before it.
            ConnectError::Connect { server, source } if abrupt_close(source) => Failure::new(
                EXIT_CONNECT,
                format!(
                    "cannot connect to {server}: the server closed the connection before the \
                     TLS handshake (for example because it is at its connection limit)"
                ),
            ),
            ConnectError::Connect { server, source } => {
                let reason =
                    transport_reason(source).unwrap_or_else(|| Reason::Io(source.to_string()));
                let message = if reason.stands_alone() {
                    reason.to_string()
                } else {
                    format!("cannot connect to {server}: {reason}")
                };
                Failure::new(EXIT_CONNECT, message)
            }
        }
    }
}

/// A failed RPC: the server's own sentence for refusals, a transport reason otherwise.
pub fn from_status(status: &tonic::Status, server: &str) -> Failure {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => {
            if let Some(reason) = transport_reason(status) {
                return if reason.stands_alone() {
                    Failure::new(EXIT_CONNECT, reason.to_string())
                } else {
                    Failure {
                        // A connection the server cut says little by itself: the reason
                        // (such as a TLS alert) may have been lost with it.
                        unexplained: abrupt_close(status),
                        ..Failure::new(
                            EXIT_CONNECT,
                            format!("lost the connection to {server}: {reason}"),
                        )
                    }
                };
            }
            Failure {
                unexplained: true,
                ..Failure::new(
                    EXIT_CONNECT,
                    format!("lost the connection to {server}: {}", status.message()),
                )
            }
        }
        _ => Failure::new(EXIT_REQUEST, status.message().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_known_from_the_error_and_from_its_text_alone() {
        for code in 0..=u8::MAX {
            let alert = rustls::AlertDescription::from(code);
            let typed = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(alert),
            );
            // What h2 passes on: the kind and the text, nothing typed.
            let text = std::io::Error::new(typed.kind(), typed.to_string());
            assert_eq!(alert_of(&typed), Some(alert), "{code}");
            assert_eq!(alert_of(&text), Some(alert), "{code}");
        }
        let bad = rustls::AlertDescription::BadCertificate;
        let text = std::io::Error::other(rustls::Error::AlertReceived(bad).to_string());
        let reason = transport_reason(&text).expect("an alert is a reason");
        assert_eq!(reason, Reason::CertificateRefused);
        assert!(reason.stands_alone());
    }

    #[test]
    fn only_certificate_reasons_stand_alone_whatever_the_words() {
        let io = std::io::Error::other("no certificate store here");
        let reason = transport_reason(&io).expect("an I/O error is a reason");
        assert!(!reason.stands_alone(), "{reason}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            transport_reason(&refused).map(|r| r.to_string()).as_deref(),
            Some("connection refused")
        );
    }
}
