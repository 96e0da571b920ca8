//! Tells a service manager when jobd is ready and when it is stopping (the `sd_notify`
//! protocol of systemd's `Type=notify` units). Without the ready notice, systemd would
//! either count jobd as started before it can take connections (`Type=simple`: units
//! ordered after it, and clients started with it, meet a refused connection while it is
//! still loading its jobs) or need a PID file; without the stopping notice, `systemctl
//! status` would show jobd as running while it is ending every job.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket named in
//! `$NOTIFY_SOCKET`: a path, or an abstract socket when the name starts with `@`. That
//! is a few lines of std, so no crate for it (nor libsystemd). Jobs never see the
//! variable: a job's environment is built from nothing, not inherited from jobd's.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable a service manager sets to the socket it listens on; unset: there is no
/// manager to tell, and every notice is a no-op.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

const READY: &str = "READY=1";
const STOPPING: &str = "STOPPING=1";

/// Why a notice did not reach the service manager. Each names the socket, since the
/// variable is set by whatever started jobd and a wrong one is otherwise hard to find.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The variable names no socket jobd can send to (not absolute, not `@`, too long).
    #[error("{NOTIFY_SOCKET}={socket:?} names no socket to notify: {reason}")]
    Address { socket: String, reason: String },
    /// The process could not make a socket (e.g. out of file descriptors).
    #[error("cannot make a socket to notify {NOTIFY_SOCKET}={socket:?}: {source}")]
    Socket { socket: String, source: io::Error },
    /// The manager's socket refused the notice, or is not there.
    #[error("cannot send {message} to {NOTIFY_SOCKET}={socket:?}: {source}")]
    Send {
        socket: String,
        message: &'static str,
        source: io::Error,
    },
}

/// Says jobd is ready: call once its listeners are bound, so that whatever is ordered
/// after the unit finds a server that accepts connections.
pub fn ready() -> Result<(), Error> {
    notify_from(std::env::var_os(NOTIFY_SOCKET).as_deref(), READY)
}

/// Says jobd has begun to shut down: call when the shutdown starts, since ending every
/// job takes up to their grace period and the manager should show that as stopping.
pub fn stopping() -> Result<(), Error> {
    notify_from(std::env::var_os(NOTIFY_SOCKET).as_deref(), STOPPING)
}

/// Sends `message` to `socket`, or does nothing when there is no socket.
fn notify_from(socket: Option<&OsStr>, message: &'static str) -> Result<(), Error> {
    let Some(socket) = socket else {
        return Ok(());
    };
    let name = socket.to_string_lossy().into_owned();
    let address = address(socket.as_bytes()).map_err(|reason| Error::Address {
        socket: name.clone(),
        reason,
    })?;
    let sender = UnixDatagram::unbound().map_err(|source| Error::Socket {
        socket: name.clone(),
        source,
    })?;
    // One datagram, whole or not at all: a short send cannot happen on a datagram socket.
    sender
        .send_to_addr(message.as_bytes(), &address)
        .map_err(|source| Error::Send {
            socket: name,
            message,
            source,
        })?;
    Ok(())
}

/// The socket address `$NOTIFY_SOCKET` names, as systemd reads it: a leading `@` means
/// the abstract namespace (the rest is the name), anything else must be an absolute path.
fn address(socket: &[u8]) -> Result<SocketAddr, String> {
    match socket {
        [] => Err("it is empty".to_owned()),
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name).map_err(|e| e.to_string()),
        [b'/', ..] => {
            SocketAddr::from_pathname(OsStr::from_bytes(socket)).map_err(|e| e.to_string())
        }
        _ => Err("it is neither an absolute path nor an abstract name starting with @".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What a receiver got in one datagram; a bounded wait, so a notice that never
    /// arrives fails the test instead of hanging it.
    fn received(receiver: &UnixDatagram) -> Vec<u8> {
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = receiver
            .recv(&mut buf)
            .expect("no notice arrived within 5 s");
        buf[..n].to_vec()
    }

    #[test]
    fn sends_ready_and_stopping_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();

        notify_from(Some(path.as_os_str()), READY).unwrap();
        assert_eq!(received(&receiver), b"READY=1");
        notify_from(Some(path.as_os_str()), STOPPING).unwrap();
        assert_eq!(received(&receiver), b"STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket_named_with_an_at_sign() {
        // Unique per run: the abstract namespace is the network namespace's, shared with
        // every other process (and test) on the host.
        let name = format!(
            "jobd-notify-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        );
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();

        notify_from(Some(OsStr::new(&format!("@{name}"))), READY).unwrap();
        assert_eq!(received(&receiver), b"READY=1");
    }

    #[test]
    fn no_socket_is_no_notice_and_no_error() {
        notify_from(None, READY).unwrap();
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody");
        let err = notify_from(Some(path.as_os_str()), READY).unwrap_err();
        assert!(matches!(err, Error::Send { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&*path.to_string_lossy()), "{text}");
        assert!(text.contains("READY=1"), "{text}");
    }

    #[test]
    fn names_that_are_no_socket_are_refused_with_the_name() {
        let too_long = format!("/{}", "x".repeat(200));
        for socket in ["", "relative/notify", too_long.as_str()] {
            let err = notify_from(Some(OsStr::new(socket)), READY).unwrap_err();
            assert!(matches!(err, Error::Address { .. }), "{socket:?}: {err:?}");
            assert!(err.to_string().contains(&format!("{socket:?}")), "{err}");
        }
    }
}
