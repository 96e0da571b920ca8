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

/// What went wrong underneath a transport failure, found by walking the error chain.
fn transport_reason(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_reason(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls_reason(tls));
            }
            // h2 keeps only the text of I/O errors it passes on, so a TLS alert that
            // arrives after the handshake is known by its message alone.
            if let Some(alert) = io.to_string().strip_prefix("received fatal alert: ") {
                return Some(alert_reason(alert));
            }
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                // jobc's own connect timeout says which limit ran out.
                std::io::ErrorKind::TimedOut if io.get_ref().is_some() => io.to_string(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
                _ => io.to_string(),
            });
        }
        next = e.source();
    }
    None
}

fn tls_reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::AlertReceived(alert) => alert_reason(&format!("{alert:?}")),
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
            format!("cannot verify the server's certificate: {why}")
        }
        other => format!("TLS failed: {other}"),
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
pub fn alert_reason(alert: &str) -> String {
    match alert {
        "BadCertificate"
        | "UnknownCA"
        | "CertificateExpired"
        | "CertificateRequired"
        | "CertificateRevoked"
        | "CertificateUnknown"
        | "UnsupportedCertificate"
        | "AccessDenied"
        | "DecryptError" => "server refused this certificate".into(),
        "ProtocolVersion" => "the server does not speak TLS 1.3".into(),
        other => format!("TLS failed: the server sent {other}"),
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
                let reason = transport_reason(source).unwrap_or_else(|| source.to_string());
                let message = if reason.contains("certificate") {
                    reason
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
                return if reason.contains("certificate") {
                    Failure::new(EXIT_CONNECT, reason)
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
