//! Connections: the cap on how many are open at once (a 503 past it), the
//! keep-alive/header timeout, and the lingering close that lets a client read
//! an error (413, 431, 503) instead of a TCP reset.
//!
//! A socket closed while the peer's data sits unread in its receive buffer (a
//! body the server refused, the rest of a 1 MiB header line) makes the kernel
//! send a reset, and the peer may lose the response it has not read yet. So a
//! connection is not closed at once: its write side is shut down (the client
//! sees the end of the response), then what the client still sends is read and
//! dropped until it closes its side, for at most [`LINGER`] and
//! [`LINGER_BYTES`] (nginx's "lingering close").
//!
//! Hand-written because tower layers see requests, not connections: neither the
//! cap with its 503 before any request is read nor the lingering close has a
//! tower or tower-http layer (the head timeout is hyper's own).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::error::ApiError;

/// Longest a closing connection is drained.
pub const LINGER: Duration = Duration::from_secs(5);
/// Most bytes a closing connection is drained of (a refused upload the client
/// sends in full: 4 times the body limit).
pub const LINGER_BYTES: usize = 64 * 1024 * 1024;
/// Longest a refused connection (over the cap) is drained.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Refusals being sent at once; past it a connection is closed unanswered.
const MAX_REFUSALS: usize = 64;
/// Descriptors kept free under the process limit (model files, the engine,
/// refusals, lingering closes).
const RESERVED_FDS: u64 = 256;
/// `--max-connections` default where the descriptor limit allows it.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 4096;

/// The cap on open connections, and the refusals past it.
pub struct Limiter {
    connections: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    pub max_connections: usize,
    /// The server's TLS: a refusal is sent over it too.
    tls: Option<TlsAcceptor>,
}

impl Limiter {
    pub fn new(max_connections: usize, tls: Option<TlsAcceptor>) -> Limiter {
        Limiter {
            connections: Arc::new(Semaphore::new(max_connections)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            max_connections,
            tls,
        }
    }

    /// A slot for a new connection, held until it has closed (lingering
    /// included); `None` at the cap, after the connection got its 503.
    pub fn admit(&self, stream: TcpStream) -> Option<Lingering> {
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => Some(Lingering {
                stream: Some(stream),
                permit: Some(permit),
            }),
            Err(_) => {
                if let Ok(permit) = self.refusals.clone().try_acquire_owned() {
                    let max = self.max_connections;
                    let tls = self.tls.clone();
                    tokio::spawn(async move {
                        refuse(stream, max, tls).await;
                        drop(permit);
                    });
                }
                None
            }
        }
    }
}

/// The default cap: [`DEFAULT_MAX_CONNECTIONS`], or less where the process
/// may not open that many descriptors.
pub fn default_max_connections() -> u64 {
    let limit = fd_limit().unwrap_or(u64::MAX);
    DEFAULT_MAX_CONNECTIONS.min(limit.saturating_sub(RESERVED_FDS).max(16))
}

#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
fn fd_limit() -> Option<u64> {
    None
}

/// The 503 a connection over the cap gets (OpenAI-shaped), then a close;
/// over TLS after a handshake (bounded by the refusal's linger time).
async fn refuse(mut stream: TcpStream, max: usize, tls: Option<TlsAcceptor>) {
    let body = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailableError",
        format!("The server has reached its limit of {max} open connections; try again shortly."),
    )
    .body()
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let Some(acceptor) = tls else {
        if stream.write_all(response.as_bytes()).await.is_ok() {
            linger(stream, REFUSAL_LINGER).await;
        }
        return;
    };
    let Ok(Ok(mut tls)) = tokio::time::timeout(REFUSAL_LINGER, acceptor.accept(stream)).await
    else {
        return;
    };
    if tls.write_all(response.as_bytes()).await.is_ok() && tls.shutdown().await.is_ok() {
        linger(tls.into_inner().0, REFUSAL_LINGER).await;
    }
}

/// Shuts the write side down, then reads and drops what the client still sends
/// until it closes, for at most `time` and [`LINGER_BYTES`].
async fn linger(mut stream: TcpStream, time: Duration) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + time;
    let mut buf = vec![0u8; 64 * 1024];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// A TCP stream that closes by lingering (see the module's notes) when hyper
/// drops it, holding its connection slot until then.
pub struct Lingering {
    stream: Option<TcpStream>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Lingering {
    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is only taken on drop"),
        )
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let permit = self.permit.take();
        runtime.spawn(async move {
            linger(stream, LINGER).await;
            drop(permit);
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    /// The write side only: reading goes on until the drop's lingering close.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_stays_under_the_descriptor_limit() {
        let cap = default_max_connections();
        assert!((16..=DEFAULT_MAX_CONNECTIONS).contains(&cap));
        if let Some(limit) = fd_limit() {
            assert!(cap < limit.max(17), "{cap} vs {limit}");
        }
    }
}
