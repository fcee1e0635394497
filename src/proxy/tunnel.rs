//! Upgraded connections (WebSocket): after `101 Switching Protocols` the
//! client's and the upstream's connections are joined byte for byte. The
//! tunnel keeps its client connection's slot (`max_connections`, the open
//! connections gauge), ends after `body_idle_timeout` with no byte either way,
//! when the token that opened it expires, and when the server stops.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

/// A client connection's hold on its `max_connections` slot and its place in
/// the open connections gauge, shared by the connection and any tunnel it
/// becomes: both end when the last holder lets go.
#[derive(Debug)]
pub struct ConnectionHold {
    _slot: OwnedSemaphorePermit,
    open: IntGauge,
    stopping: watch::Receiver<bool>,
}

impl ConnectionHold {
    /// Counts a connection open until the hold is dropped; `stopping` turns
    /// true when the server stops.
    pub fn new(
        slot: OwnedSemaphorePermit,
        open: IntGauge,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        open.inc();
        Self {
            _slot: slot,
            open,
            stopping,
        }
    }
}

impl Drop for ConnectionHold {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// When a tunnel opened with a token the gateway accepts until
/// `accepted_until` (seconds since the epoch: `exp` plus the leeway) must
/// end; capped, so that a far `exp` (or none, from introspection) cannot
/// overflow `Instant`.
pub fn deadline(accepted_until: u64) -> Instant {
    Instant::now() + crate::auth::jwt::time_until(accepted_until).min(MAX_TOKEN_TUNNEL)
}

/// The longest a token's tunnel may last, whatever its `exp`.
const MAX_TOKEN_TUNNEL: Duration = Duration::from_secs(24 * 3600);

/// Joins the two sides of a switched connection until either closes, no
/// byte moves for `idle_timeout` (to twice it), the token that opened it
/// expires (`token_expiry`), or the server stops.
pub async fn join(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle_timeout: Duration,
    token_expiry: Option<Instant>,
    hold: Option<Arc<ConnectionHold>>,
) {
    // The token was checked once, at the upgrade: the tunnel ends when the
    // token does, whatever moves through it.
    let token_expiry = async {
        match token_expiry {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let (client, upstream) = match (client.await, upstream.await) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (client, upstream) => {
            // The 101 went out, so the client sees its connection close.
            let side = if client.is_err() {
                "client"
            } else {
                "upstream"
            };
            let error = client.err().or(upstream.err());
            tracing::warn!(side, error = ?error, "protocol switch failed; tunnel not opened");
            return;
        }
    };
    let moved = Arc::new(AtomicU64::new(0));
    let mut client = Counted::new(TokioIo::new(client), Arc::clone(&moved));
    let mut upstream = Counted::new(TokioIo::new(upstream), Arc::clone(&moved));
    let idle = async {
        let mut seen = None;
        loop {
            tokio::time::sleep(idle_timeout).await;
            let now = moved.load(Ordering::Acquire);
            if seen == Some(now) {
                return;
            }
            seen = Some(now);
        }
    };
    let mut stopping = hold.as_ref().map(|h| h.stopping.clone());
    let stop = async {
        match stopping.as_mut() {
            Some(stopping) => {
                let _ = stopping.wait_for(|stop| *stop).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = idle => tracing::debug!("tunnel idle for body_idle_timeout; closed"),
        () = stop => tracing::debug!("server stopping; tunnel closed"),
        () = token_expiry => tracing::debug!("token expired; tunnel closed"),
    }
    drop(hold);
}

/// An I/O whose reads count into a shared tally of bytes moved.
struct Counted<T> {
    inner: T,
    moved: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    fn new(inner: T, moved: Arc<AtomicU64>) -> Self {
        Self { inner, moved }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.moved
                .fetch_add(u64::try_from(read).unwrap_or(u64::MAX), Ordering::AcqRel);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
