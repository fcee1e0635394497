//! Building the pooled HTTP/1.1 + h2 clients (rustls for https) used for
//! upstreams and for the IdP (JWKS).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

/// A pooled client speaking http and https, to the identity provider.
pub type HttpsClient<B> = Client<WholeConnectTimeout, B>;

/// The https connector with one deadline on all of connecting: the name
/// lookup, TCP and the TLS handshake. The connector's own timeout covers
/// TCP alone, and hyper-util finishes a connect that lost the race to a
/// pooled connection in the background, unbounded: a provider whose TLS
/// front end accepts TCP and never answers the ClientHello would keep one
/// socket and task per such race.
#[derive(Clone)]
pub struct WholeConnectTimeout {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

impl tower_service::Service<http::Uri> for WholeConnectTimeout {
    type Response = <HttpsConnector<HttpConnector> as tower_service::Service<http::Uri>>::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, target: http::Uri) -> Self::Future {
        let (connecting, timeout) = (self.inner.call(target), self.timeout);
        Box::pin(async move {
            tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| -> Self::Error {
                    Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connecting (name lookup, TCP and TLS) took longer than the timeout",
                    ))
                })?
        })
    }
}

/// How often an identity provider's idle or busy HTTP/2 connection is
/// pinged: one that stops answering (a silent drop, a wedged peer) is closed
/// after one more call timeout, instead of taking every call for minutes
/// (the HTTP/2 connection is shared, and timed-out calls do not close it).
const IDP_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Builds a client for the identity provider (JWKS, discovery,
/// introspection) trusting the Mozilla roots plus `ca_file` (PEM), if given;
/// `timeout` bounds connecting and a ping's answer.
pub fn build_https_client<B>(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    pool_max_idle_per_host: usize,
    http2_only: bool,
) -> Result<HttpsClient<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    // Twice the callers' own deadline (as long as `connect_timeout`): a
    // call whose connect hangs still ends as a timeout of the call; this
    // bounds the connect hyper-util may go on with in the background.
    let connector = WholeConnectTimeout {
        inner: build_https_connector(ca_file, connect_timeout)?,
        timeout: connect_timeout.saturating_mul(2),
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(pool_max_idle_per_host)
        .http2_only(http2_only)
        .http2_keep_alive_interval(IDP_PING_INTERVAL)
        .http2_keep_alive_timeout(connect_timeout)
        .http2_keep_alive_while_idle(true)
        .build(connector))
}

/// The Mozilla roots plus the certificates in `ca_file` (PEM), if given; an
/// unreadable file, bad PEM or a file without certificates is an error that
/// names the file (configuration validation uses this too).
pub fn trusted_roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let pem = ca_file
        .map(|path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())))
        .transpose()?;
    roots_with(ca_file.zip(pem.as_deref()))
}

/// The Mozilla roots plus the certificates of a `ca_file` already read
/// (path and PEM contents), if any.
pub fn roots_with(ca_file: Option<(&Path, &[u8])>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some((path, mut pem)) = ca_file {
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem) {
            let cert = cert.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: bad certificate: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no certificates found", path.display()));
        }
    }
    Ok(roots)
}

/// Builds a connector for http and https (HTTP/1.1 and h2 by ALPN) trusting
/// the Mozilla roots plus `ca_file` (PEM), if given.
pub fn build_https_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, String> {
    connector(trusted_roots(ca_file)?, connect_timeout, Alpn::Both)
}

/// Connectors for one upstream, trusting the Mozilla roots plus `ca_file`:
/// one offering h2 and HTTP/1.1 by ALPN (only h2 when `http2_only`, nothing
/// when `http1_only`), and one for HTTP/1.1, for requests that ask to
/// switch protocols (HTTP/2 has no `Upgrade`).
pub fn build_upstream_connectors(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    http2_only: bool,
    http1_only: bool,
) -> Result<(HttpsConnector<HttpConnector>, HttpsConnector<HttpConnector>), String> {
    let roots = trusted_roots(ca_file)?;
    let offered = match (http2_only, http1_only) {
        (true, _) => Alpn::Http2,
        (false, true) => Alpn::Http1,
        (false, false) => Alpn::Both,
    };
    Ok((
        connector(roots.clone(), connect_timeout, offered)?,
        connector(roots, connect_timeout, Alpn::Http1)?,
    ))
}

/// What a connector offers by ALPN over TLS.
#[derive(Clone, Copy)]
enum Alpn {
    /// Nothing: the server speaks HTTP/1.1.
    Http1,
    /// `h2` alone: a server that does not agree fails the connection.
    Http2,
    /// `h2` and `http/1.1`: the server chooses.
    Both,
}

fn connector(
    roots: RootCertStore,
    connect_timeout: Duration,
    offered: Alpn,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    Ok(match offered {
        Alpn::Http1 => builder.enable_http1().wrap_connector(http),
        Alpn::Http2 => builder.enable_http2().wrap_connector(http),
        Alpn::Both => builder.enable_http1().enable_http2().wrap_connector(http),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An https identity provider that takes the TCP connection and never
    /// answers the ClientHello: the call fails by twice the connect timeout
    /// (not only at the caller's own deadline), and the socket is closed,
    /// not left to a background task for as long as the peer stays silent.
    #[tokio::test]
    async fn a_tls_handshake_that_never_ends_is_bounded_by_the_connect_timeout() {
        crate::cli::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client: HttpsClient<http_body_util::Empty<bytes::Bytes>> =
            build_https_client(None, Duration::from_millis(500), 4, false).unwrap();
        let uri: http::Uri = format!("https://{addr}/jwks").parse().unwrap();
        let call = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(20), client.get(uri)).await
        });
        let (mut socket, _) = listener.accept().await.unwrap();
        let answer = call.await.unwrap();
        let error = match answer {
            Ok(Err(error)) => error,
            Ok(Ok(response)) => panic!("answered: {response:?}"),
            Err(_) => panic!("still connecting 20 s later"),
        };
        assert!(error.is_connect(), "{error:?}");
        // The ClientHello, then the end of the connection.
        let mut read = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut read)).await;
        assert!(closed.is_ok(), "the stalled connection was kept open");
        assert!(!read.is_empty());
    }
}
