//! The baselines for reading logs: TLS 1.3 relays over 127.0.0.1 in this process, with
//! the same rustls configurations and certificates as jobd and jobc (mutual TLS), whose
//! client writes what it gets to /dev/null as `jobc logs --raw > /dev/null` does. What a
//! log read costs with no gRPC, no HTTP/2 and no second process.
//!
//! Two sources: [`Source::File`] reads a file in 1 MiB blocks as jobd reads a log, so each
//! byte comes from the page cache (the target's baseline: the same work as a replay);
//! [`Source::Memory`] sends one hot 64 KiB buffer over and over (one copy and the cipher
//! on each side, less than a replay must do).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use jobc::client::Target;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const CHUNK: usize = 64 * 1024;
const FILE_BLOCK: usize = 1024 * 1024;

/// What the relay's server sends.
#[derive(Debug, Clone)]
pub enum Source {
    /// This many bytes from one reused buffer.
    Memory(u64),
    /// The whole file.
    File(PathBuf),
}

/// Sends `source` from a TLS server task to a TLS client; returns the bytes moved and
/// the time from connect to the client's end of stream.
pub async fn tls_relay(target: &Target, pki: &Path, source: Source) -> Result<(u64, Duration)> {
    let server_config = jobd::tls::server_config(
        &pki.join("ca.pem"),
        &pki.join("server.pem"),
        &pki.join("server-key.pem"),
    )?;
    let client_config = jobc::client::tls_config(target)?;
    let bytes = match &source {
        Source::Memory(n) => *n,
        Source::File(path) => std::fs::metadata(path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve(listener, TlsAcceptor::from(server_config), source));

    let mut sink = File::create("/dev/null")?;
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
        sink.write_all(&buf[..n])?;
        got += n as u64;
    }
    let took = t.elapsed();
    server.await.context("relay server task failed")??;
    ensure!(got == bytes, "the relay delivered {got} of {bytes} bytes");
    Ok((bytes, took))
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, source: Source) -> Result<()> {
    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;
    match source {
        Source::Memory(bytes) => send_memory(&mut tls, bytes).await?,
        Source::File(path) => send_file(&mut tls, &path).await?,
    }
    tls.shutdown().await?;
    Ok(())
}

async fn send_memory(tls: &mut TlsStream<TcpStream>, bytes: u64) -> Result<()> {
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        tls.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Page-cached reads, done on the runtime as jobd does them.
async fn send_file(tls: &mut TlsStream<TcpStream>, path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut block = vec![0u8; FILE_BLOCK];
    let mut pos = 0u64;
    loop {
        let n = file.read_at(&mut block, pos)?;
        if n == 0 {
            return Ok(());
        }
        tls.write_all(&block[..n]).await?;
        pos += n as u64;
    }
}
