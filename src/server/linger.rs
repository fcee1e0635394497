//! Lingering close (RFC 9112 9.6): a connection that ends with its client
//! still sending a request body (a refused upload) is read, and what comes
//! dropped, for a while after the answer, before its socket is closed.
//! Closed at once with bytes unread, the kernel answers them with a reset,
//! and a client still writing its body gets the reset instead of the answer:
//! the 401 that would have sent it to refresh its token is lost. nginx
//! (`lingering_close`), Envoy and Go's server do the same.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::proxy::ClientInfo;

/// How long a closing connection is read at most.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// How much of it is read at most.
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// A client connection's I/O that, dropped after an answer that closed the
/// connection with the body unread ([`ClientInfo::linger_on_close`]), goes
/// on reading it in a task of its own, holding the connection's slot.
pub(crate) struct Lingering<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// `None` only once dropped.
    io: Option<I>,
    client: Arc<ClientInfo>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<I> {
    pub(crate) fn new(io: I, client: Arc<ClientInfo>) -> Self {
        Self {
            io: Some(io),
            client,
        }
    }

    fn io(&mut self) -> io::Result<&mut I> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<I> {
    fn drop(&mut self) {
        if !self.client.lingers() {
            return;
        }
        let (Some(mut io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let client = Arc::clone(&self.client);
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER_TIME, async {
                // In stages: the answer's end first (hyper has usually
                // sent it; not where the request asked for an upgrade).
                let _ = io.shutdown().await;
                let mut rest = (&mut io).take(LINGER_BYTES);
                tokio::io::copy(&mut rest, &mut tokio::io::sink()).await
            })
            .await;
            // The slot goes with the socket.
            drop(io);
            drop(client);
        });
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
