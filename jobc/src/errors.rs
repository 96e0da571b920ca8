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
    /// An established connection broke during a call (see [`is_connection_lost`]).
    pub connection_lost: bool,
}

impl Failure {
    pub fn new(exit_code: i32, message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            exit_code,
            unexplained: false,
            connection_lost: false,
        }
    }

    /// `the server went away`, with the server's own words when it said why (a shutdown).
    fn went_away(said: Option<&str>) -> Self {
        let message = match said {
            Some(why) if !why.is_empty() => format!("the server went away: {why}"),
            _ => "the server went away".to_string(),
        };
        Failure {
            connection_lost: true,
            ..Failure::new(EXIT_CONNECT, message)
        }
    }
}

/// Whether `failure` is an established connection that broke during a call (reset,
/// closed, the server shutting down or gone for good): what [`from_status`] makes of a
/// stream that ended so, printed as `the server went away`. Such a call may be worth
/// retrying on a new connection (`logs -f` can resume), where a refusal or a failed
/// request is not. A certificate refusal whose TLS alert was lost with the connection
/// looks the same at first; such a failure is also [`Failure::unexplained`], and
/// [`crate::client::diagnose`] (one fresh handshake) tells the two apart.
pub fn is_connection_lost(failure: &Failure) -> bool {
    failure.connection_lost
}

/// What went wrong underneath a transport failure. Typed, so that how a failure is
/// reported is decided on its kind, never on the words of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The server's certificate did not verify; says why.
    ServerCertificate(String),
    /// The server sent an alert about our certificate; says why, as the alert does.
    CertificateRefused(&'static str),
    /// The server sent an alert saying it does not speak TLS 1.3.
    OldTls,
    /// The server sent another alert (its name).
    Alert(String),
    /// What came back was not TLS (a plain-text server on the port, say).
    NotTls,
    /// TLS failed on our side.
    Tls(String),
    ConnectionRefused,
    ConnectionReset,
    /// The server closed the connection before the TLS handshake was done.
    ClosedBeforeHandshake,
    TimedOut,
    NoRoute,
    NetworkUnreachable,
    /// The host name did not resolve to an address.
    NameNotResolved,
    /// Any other I/O failure, as the system or jobc's own timeout words it.
    Io(String),
}

impl Reason {
    /// A certificate problem is the whole story: it is shown without "cannot connect to".
    pub fn stands_alone(&self) -> bool {
        matches!(
            self,
            Reason::ServerCertificate(_) | Reason::CertificateRefused(_)
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::ServerCertificate(why) => {
                write!(f, "cannot verify the server's certificate: {why}")
            }
            Reason::CertificateRefused(why) => write!(f, "server refused this certificate: {why}"),
            Reason::OldTls => f.write_str("the server does not speak TLS 1.3"),
            Reason::Alert(name) => write!(f, "TLS failed: the server sent {name}"),
            Reason::NotTls => f.write_str("the server does not answer in TLS (is it jobd?)"),
            Reason::Tls(why) => write!(f, "TLS failed: {why}"),
            Reason::ConnectionRefused => f.write_str("connection refused"),
            Reason::ConnectionReset => f.write_str("connection reset by the server"),
            Reason::ClosedBeforeHandshake => f.write_str(
                "the server closed the connection before the TLS handshake (for example \
                 because it is at its connection limit)",
            ),
            Reason::TimedOut => f.write_str("timed out"),
            Reason::NoRoute => f.write_str("no route to host"),
            Reason::NetworkUnreachable => f.write_str("network unreachable"),
            Reason::NameNotResolved => f.write_str("name not resolved"),
            Reason::Io(why) => f.write_str(why),
        }
    }
}

/// An I/O error's text without the `(os error N)` that std appends to the system's words,
/// and starting in lower case, as the rest of a jobc sentence.
fn io_text(io: &std::io::Error) -> String {
    let text = io.to_string();
    let text = match (io.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => &text[..at],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// What went wrong underneath a transport failure, found by walking the error chain.
fn transport_reason(err: &(dyn StdError + 'static)) -> Option<Reason> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_reason(tls));
        }
        if e.downcast_ref::<crate::client::NameNotResolved>().is_some() {
            return Some(Reason::NameNotResolved);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls_reason(tls));
            }
            if let Some(inner) = io.get_ref() {
                if inner.is::<crate::client::NameNotResolved>() {
                    return Some(Reason::NameNotResolved);
                }
            }
            if let Some(alert) = alert_in_text(io) {
                return Some(alert_reason(alert));
            }
            use std::io::ErrorKind as K;
            return Some(match io.kind() {
                K::ConnectionRefused => Reason::ConnectionRefused,
                // jobc's own connect timeout says which limit ran out.
                K::TimedOut if io.get_ref().is_some() => Reason::Io(io.to_string()),
                K::TimedOut => Reason::TimedOut,
                K::ConnectionReset => Reason::ConnectionReset,
                K::HostUnreachable => Reason::NoRoute,
                K::NetworkUnreachable => Reason::NetworkUnreachable,
                _ => Reason::Io(io_text(io)),
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
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => Reason::NotTls,
        rustls::Error::PeerIncompatible(_) => Reason::OldTls,
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

/// What a TLS alert from the server means for the person running jobc. The server's
/// verdicts on a client certificate (RFC 8446, 6.2; rustls sends them as its
/// `CertificateError`s map) each say why, in the words of the alert.
pub fn alert_reason(alert: rustls::AlertDescription) -> Reason {
    use rustls::AlertDescription as A;
    let why = match alert {
        A::CertificateExpired => "it has expired or is not valid yet",
        A::CertificateRevoked => "it has been revoked",
        A::UnknownCA => "it is not issued by a CA the server trusts",
        A::CertificateRequired => "none was sent",
        A::DecryptError => "its signature does not verify with a CA the server trusts",
        A::UnsupportedCertificate => "it is not a certificate for a TLS client",
        A::AccessDenied => "access denied",
        // jobd's own checks of the subject (one common name) end in certificate_unknown;
        // its log names the reason.
        A::BadCertificate | A::CertificateUnknown | A::BadCertificateStatusResponse => {
            "the server does not accept it"
        }
        A::ProtocolVersion => return Reason::OldTls,
        other => return Reason::Alert(format!("{other:?}")),
    };
    Reason::CertificateRefused(why)
}

/// Whether a connection failed because one side refused the other's certificate: asking
/// again would be refused again.
pub fn is_certificate_refusal(e: &ConnectError) -> bool {
    match e {
        ConnectError::Config(_) => false,
        ConnectError::Connect { source, .. } => {
            transport_reason(source).is_some_and(|r| r.stands_alone())
        }
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        match &e {
            ConnectError::Config(msg) => Failure::new(EXIT_USAGE, msg.clone()),
            ConnectError::Connect { server, source } => {
                // jobd closes connections past its connection limit before the TLS
                // handshake (no handshake CPU for a connection it cannot serve); TLS 1.3
                // sends the server's verdict on our certificate only after our side of the
                // handshake, so a connection cut while we handshake was cut before it.
                let reason = match transport_reason(source) {
                    Some(reason) if reason.stands_alone() => reason,
                    _ if abrupt_close(source) => Reason::ClosedBeforeHandshake,
                    Some(reason) => reason,
                    None => Reason::Io(source.to_string()),
                };
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

/// A failed RPC: the server's own sentence for refusals; for a call whose connection broke
/// (reset, closed, or the server gone by the time tonic reconnected), `the server went
/// away`, which [`is_connection_lost`] recognises; a TLS verdict on our certificate
/// (which TLS 1.3 delivers during the first call) as the refusal it is.
/// `_server` is not named: the call's connection was open, so its address was right.
pub fn from_status(status: &tonic::Status, _server: &str) -> Failure {
    use tonic::Code;
    match status.code() {
        // A status the server sent carries no error of ours underneath: its words are the
        // reason. UNAVAILABLE from jobd ends the streams of a server shutting down.
        Code::Unavailable if status.source().is_none() => {
            Failure::went_away(Some(status.message()))
        }
        Code::Unavailable | Code::Unknown | Code::Cancelled if status.source().is_some() => {
            match transport_reason(status) {
                Some(reason) if reason.stands_alone() => {
                    Failure::new(EXIT_CONNECT, reason.to_string())
                }
                // Refused: tonic reconnected, and the server is no longer there.
                Some(Reason::ConnectionRefused) => Failure::went_away(None),
                // A connection the server cut says little by itself: the reason (such as
                // a TLS alert about our certificate) may have been lost with it.
                _ => Failure {
                    unexplained: true,
                    ..Failure::went_away(None)
                },
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
        assert_eq!(
            reason,
            Reason::CertificateRefused("the server does not accept it")
        );
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

    #[test]
    fn a_server_that_does_not_speak_tls_13_is_named_so() {
        let garbage = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(
            tls_reason(&garbage).to_string(),
            "the server does not answer in TLS (is it jobd?)"
        );
        let old = rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
        );
        assert_eq!(tls_reason(&old), Reason::OldTls);
    }

    #[test]
    fn system_words_lose_their_os_error_number() {
        let io = std::io::Error::from_raw_os_error(libc::ENETDOWN);
        assert_eq!(
            transport_reason(&io).map(|r| r.to_string()).as_deref(),
            Some("network is down")
        );
        for (errno, says) in [
            (libc::EHOSTUNREACH, "no route to host"),
            (libc::ENETUNREACH, "network unreachable"),
            (libc::ECONNREFUSED, "connection refused"),
        ] {
            let io = std::io::Error::from_raw_os_error(errno);
            let reason = transport_reason(&io).map(|r| r.to_string());
            assert_eq!(reason.as_deref(), Some(says), "{errno}");
        }
        let unresolved = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            crate::client::NameNotResolved::for_test("failed to lookup address information"),
        );
        assert_eq!(transport_reason(&unresolved), Some(Reason::NameNotResolved));
    }

    #[test]
    fn every_certificate_alert_says_why_the_certificate_was_refused() {
        use rustls::AlertDescription as A;
        for (alert, why) in [
            (A::CertificateExpired, "it has expired or is not valid yet"),
            (A::CertificateRevoked, "it has been revoked"),
            (A::UnknownCA, "it is not issued by a CA the server trusts"),
            (A::CertificateRequired, "none was sent"),
            (A::BadCertificate, "the server does not accept it"),
            (A::CertificateUnknown, "the server does not accept it"),
        ] {
            assert_eq!(
                alert_reason(alert).to_string(),
                format!("server refused this certificate: {why}")
            );
        }
        assert_eq!(alert_reason(A::ProtocolVersion), Reason::OldTls);
    }

    #[test]
    fn a_broken_call_is_the_server_going_away_and_says_so() {
        // A status the server sent: its words.
        let shutdown = tonic::Status::unavailable("the server is shutting down");
        let failure = from_status(&shutdown, "localhost:50051");
        assert_eq!(
            failure.message,
            "the server went away: the server is shutting down"
        );
        assert!(is_connection_lost(&failure) && !failure.unexplained);
        assert_eq!(failure.exit_code, EXIT_CONNECT);
        // A connection cut under a call: tonic's status carries the I/O error.
        for kind in [
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionRefused,
        ] {
            let status = tonic::Status::from_error(Box::new(std::io::Error::new(
                kind,
                "peer closed connection without sending TLS close_notify: https://docs.rs/",
            )));
            let failure = from_status(&status, "localhost:50051");
            assert_eq!(failure.message, "the server went away", "{kind:?}");
            assert!(is_connection_lost(&failure), "{kind:?}");
            assert_eq!(failure.exit_code, EXIT_CONNECT);
        }
        // A request the server refused is not a lost connection.
        let refused = from_status(&tonic::Status::not_found("job 1 not found"), "x:1");
        assert!(!is_connection_lost(&refused));
        assert_eq!(
            (refused.message.as_str(), refused.exit_code),
            ("job 1 not found", EXIT_REQUEST)
        );
    }
}
