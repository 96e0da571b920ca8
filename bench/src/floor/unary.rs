//! The floor of a start from a CLI: a new process that makes one TCP connection, the
//! same mutual TLS 1.3 handshake as jobc (the same rustls configurations on both sides,
//! the same certificates), and one unary gRPC call, to a server that answers at once.
//!
//! Both ends speak HTTP/2 with the `h2` crate directly, with none of tonic, tower or
//! hyper: gRPC's framing of one unary call is a HEADERS frame, a DATA frame holding a
//! five-byte prefix and the message, and trailers with `grpc-status`. The client is this
//! bench's own binary run as `jobworker-bench --floor-client ...`, which does only that.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use proto::v1 as pb;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The argument that makes `jobworker-bench` the floor's client.
pub const CLIENT_FLAG: &str = "--floor-client";

const PATH: &str = "/jobworker.v1.JobService/Start";
/// What the server answers every Start with: an id of jobd's length.
const JOB_ID: &str = "00000000-0000-4000-8000-000000000000";

/// The server that answers at once, on 127.0.0.1 until dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serves with jobd's TLS configuration, from jobd's own builder, and `pki`'s
    /// server certificate.
    pub async fn start(pki: &Path) -> Result<Server> {
        let config = jobd::tls::server_config(
            &pki.join("ca.pem"),
            &pki.join("server.pem"),
            &pki.join("server-key.pem"),
        )?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(acceptor, tcp).await {
                        eprintln!("!!! the floor's server: {e:#}");
                    }
                });
            }
        });
        Ok(Server { addr, task })
    }
}

async fn serve(acceptor: TlsAcceptor, tcp: TcpStream) -> Result<()> {
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await.context("TLS handshake")?;
    let mut conn = h2::server::handshake(tls)
        .await
        .context("HTTP/2 handshake")?;
    while let Some(request) = conn.accept().await {
        let (request, mut respond) = request?;
        ensure!(
            request.uri().path() == PATH,
            "unexpected call {}",
            request.uri()
        );
        let mut body = request.into_body();
        let mut got = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        pb::StartRequest::decode(message(&got)?).context("a bad StartRequest")?;
        let reply = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())?;
        let mut send = respond.send_response(reply, false)?;
        send.send_data(
            framed(&pb::StartResponse {
                job_id: JOB_ID.into(),
            }),
            false,
        )?;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        send.send_trailers(trailers)?;
    }
    Ok(())
}

/// A gRPC message on the wire: uncompressed flag, big-endian length, the message.
fn framed(m: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + m.encoded_len());
    out.put_u8(0);
    out.put_u32(m.encoded_len() as u32);
    m.encode(&mut out)
        .expect("a BytesMut with room for the message takes all of it");
    out.freeze()
}

/// The one message a unary body holds.
fn message(body: &[u8]) -> Result<&[u8]> {
    ensure!(
        body.len() >= 5 && body[0] == 0,
        "not an uncompressed gRPC message"
    );
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    ensure!(
        body.len() == 5 + len,
        "a gRPC body of {} bytes, not {}",
        body.len(),
        5 + len
    );
    Ok(&body[5..])
}

/// The arguments of [`CLIENT_FLAG`]: the server's address and the PKI folder.
pub fn client_args(addr: SocketAddr, pki: &Path) -> [String; 3] {
    [
        CLIENT_FLAG.into(),
        addr.to_string(),
        pki.display().to_string(),
    ]
}

/// The client process: one connection, one Start, the id on stdout. Runs on a
/// single-threaded runtime, as jobc does.
pub fn client_main(args: &[String]) -> Result<()> {
    let [addr, pki] = args else {
        bail!("usage: jobworker-bench {CLIENT_FLAG} ADDR PKI_DIR");
    };
    let addr: SocketAddr = addr.parse().context("not an address")?;
    let pki = PathBuf::from(pki);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let id = runtime.block_on(call(addr, &pki))?;
    println!("{id}");
    Ok(())
}

async fn call(addr: SocketAddr, pki: &Path) -> Result<String> {
    let target = jobc::client::Target {
        server: addr.to_string(),
        ca: pki.join("ca.pem"),
        cert: pki.join("admin.pem"),
        key: pki.join("admin-key.pem"),
        connect_timeout: jobc::client::DEFAULT_CONNECT_TIMEOUT,
    };
    let config: Arc<rustls::ClientConfig> = jobc::client::tls_config(&target)?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").context("bad server name")?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let (client, conn) = h2::client::handshake(tls).await?;
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (reply, mut send) = client.send_request(request, false)?;
    send.send_data(
        framed(&pb::StartRequest {
            argv: vec!["true".into()],
            ..Default::default()
        }),
        true,
    )?;
    let reply = reply.await?;
    ensure!(reply.status() == 200, "HTTP status {}", reply.status());
    let mut body = reply.into_body();
    let mut got = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?.context("no trailers")?;
    let status = trailers.get("grpc-status").map(|v| v.as_bytes());
    ensure!(status == Some(b"0"), "grpc-status {status:?}");
    let id = pb::StartResponse::decode(message(&got)?)?.job_id;
    drop(client);
    conn.abort();
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_makes_one_call_that_the_server_answers() {
        let pki = tempfile::tempdir().expect("tempdir");
        jobd::pki::init(&jobd::pki::PkiOptions::new(pki.path())).expect("pki init");
        let server = Server::start(pki.path()).await.expect("server");
        let id = call(server.addr, pki.path()).await.expect("call");
        assert_eq!(id, JOB_ID);
        // A second connection works too: the server goes on accepting.
        assert_eq!(call(server.addr, pki.path()).await.expect("call"), JOB_ID);
    }

    #[tokio::test]
    async fn a_client_without_the_servers_ca_is_refused() {
        let (ours, theirs) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        for dir in [&ours, &theirs] {
            jobd::pki::init(&jobd::pki::PkiOptions::new(dir.path())).expect("pki init");
        }
        let server = Server::start(ours.path()).await.expect("server");
        assert!(call(server.addr, theirs.path()).await.is_err());
    }

    #[test]
    fn framing_round_trips_and_bad_bodies_are_refused() {
        let m = pb::StartResponse {
            job_id: JOB_ID.into(),
        };
        let wire = framed(&m);
        let back = pb::StartResponse::decode(message(&wire).expect("message")).expect("decode");
        assert_eq!(back, m);
        assert!(message(&wire[..4]).is_err());
        assert!(message(&[1, 0, 0, 0, 0]).is_err(), "compressed flag");
        assert!(message(&[0, 0, 0, 0, 9, 1]).is_err(), "short");
    }
}
