//! The baseline for reading logs: a TLS 1.3 relay over 127.0.0.1 in this process, with
//! the same rustls configurations and certificates as jobd and jobc (mutual TLS), moving
//! the same number of bytes in 64 KiB writes. It is what a log read costs with no gRPC,
//! no HTTP/2, no file and no second process.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use jobc::client::Target;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const CHUNK: usize = 64 * 1024;

/// Sends `bytes` from a TLS server task to a TLS client; returns the time from connect
/// to the client's end of stream.
pub async fn tls_relay(target: &Target, pki: &std::path::Path, bytes: u64) -> Result<Duration> {
    let server_config = jobd::tls::server_config(
        &pki.join("ca.pem"),
        &pki.join("server.pem"),
        &pki.join("server-key.pem"),
    )?;
    let client_config = jobc::client::tls_config(target)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve(listener, TlsAcceptor::from(server_config), bytes));

    let t = Instant::now();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").context("bad server name")?;
    let mut tls = TlsConnector::from(client_config).connect(name, tcp).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let took = t.elapsed();
    server.await.context("relay server task failed")??;
    ensure!(got == bytes, "the relay delivered {got} of {bytes} bytes");
    Ok(took)
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, bytes: u64) -> Result<()> {
    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        tls.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    tls.shutdown().await?;
    Ok(())
}
