//! Listeners and lifecycle: accepting connections (plain or TLS), the admin
//! listener, key refreshers, and a shutdown that loses no request.

mod framing;
mod idle;
mod linger;
pub mod pipeline;
pub mod reload;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::Either;
use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::admin::metrics::{LabelNames, Metrics};
use crate::config::{Config, ServerSettings};
use crate::proxy::tunnel::ConnectionHold;
use crate::proxy::ClientInfo;
pub use pipeline::Gateway;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Metrics registration failed (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Runtime setup failed (CA or TLS files, ...).
    #[error("{0}")]
    Setup(String),
    /// A listener could not be bound or inspected.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the gateway on the given listeners until `shutdown` resolves, then
/// turns unready, keeps serving for `shutdown_delay`, stops accepting, and
/// drains in-flight requests for up to `shutdown_grace`. Once it returns
/// within that grace, no connection it served holds the config any more:
/// the same store file can be opened again at once. A `shutdown` that
/// resolves while the gateway is still being set up (its store opening)
/// ends it there, with `Ok`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve(config, None, listener, admin_listener, shutdown).await
}

/// Like [`run`], and reloads `config_path` when it changes (directory watch,
/// SIGHUP, slow poll). `config` must be what `config_path` held at start.
pub async fn run_with_reload(
    config_path: PathBuf,
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve(
        config,
        Some((config_path, reload::POLL)),
        listener,
        admin_listener,
        shutdown,
    )
    .await
}

/// [`run_with_reload`] with the fallback poll every `poll` instead of every
/// [`reload::POLL`]: for tests of the poll, which would otherwise wait half
/// a minute for it.
#[doc(hidden)]
pub async fn run_with_reload_polling_every(
    poll: std::time::Duration,
    config_path: PathBuf,
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve(
        config,
        Some((config_path, poll)),
        listener,
        admin_listener,
        shutdown,
    )
    .await
}

/// Serves `config`; with `follow`, reloads the file at its path, polling it
/// at its interval too.
async fn serve(
    config: Config,
    follow: Option<(PathBuf, std::time::Duration)>,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    // Taken before anything that may take a while (opening a store): a
    // SIGHUP with no handler yet would end the process.
    let hangup = follow.as_ref().map(|_| reload::hangup_signal());
    let metrics = Arc::new(Metrics::new()?);
    let settings = config.server.clone();
    let running = reload::RunningSettings {
        server: settings.clone(),
        admin_listen: config.admin_listen,
        bound: [listener.local_addr(), admin_listener.local_addr()]
            .into_iter()
            .filter_map(Result::ok)
            .collect(),
    };
    let files = config.referenced_files.clone();
    let (text_digest, files_digest) = (config.text_digest, config.files_digest);
    metrics.running(LabelNames::of(&config));
    // A shutdown asked for while the gateway is still being set up (a store
    // that takes its time to open) ends it there, as one before any request
    // would: held until the accept loop, it waited out the setup.
    let mut shutdown = std::pin::pin!(shutdown);
    let first = tokio::select! {
        made = Gateway::new(config, Arc::clone(&metrics)) => made.map_err(ServerError::Setup)?,
        () = &mut shutdown => {
            tracing::info!("shutdown requested while starting: stopped before serving");
            return Ok(());
        }
    };
    // The listener's TLS is set at start; a reload that turns it off (which
    // takes a restart) keeps serving with the acceptor last in force.
    let mut tls = first.tls_acceptor();
    first.export_certificate_expiry();
    first.authenticator().spawn_background();
    let current = Arc::new(ArcSwap::from_pointee(first));

    let (stop_background, background) = tokio::sync::watch::channel(false);
    let reloader = if let (Some((path, poll)), Some(hangup)) = (follow, hangup) {
        let reloader = reload::Reloader::new(
            path,
            Arc::clone(&current),
            Arc::clone(&metrics),
            running,
            text_digest,
            files,
            files_digest,
        )
        .polling_every(poll);
        Some(tokio::spawn(reloader.run(hangup, background.clone())))
    } else {
        None
    };

    let draining = Arc::new(AtomicBool::new(false));
    let ready = {
        let current = Arc::clone(&current);
        let draining = Arc::clone(&draining);
        Arc::new(move || {
            !draining.load(Ordering::Acquire) && current.load().authenticator().is_ready()
        })
    };
    let admin_addr = admin_listener.local_addr()?;
    let admin = tokio::spawn(crate::admin::health::serve(
        admin_listener,
        Arc::clone(&metrics),
        ready,
        settings.header_read_timeout,
        background.clone(),
    ));

    tracing::info!(listen = %listener.local_addr()?, admin = %admin_addr, tls = tls.is_some(), "scopegate serving");
    // Every task that serves a connection (and, over HTTP/2, each stream's
    // task): `run` returns only once they have ended, and with them all
    // they hold of the config (the authorization server's store above all).
    let tasks = TaskTracker::new();
    let builder = Arc::new(connection_builder(&settings, &tasks));
    // Each step of shutdown tells the connections open then to finish what
    // they have and close (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`, an
    // idle one closed): when it starts, while new connections are still
    // taken (their HTTP/1.1 answers say `Connection: close`), so clients
    // leave during `shutdown_delay` instead of finding the connection gone
    // after; and when the drain starts.
    let (farewell_tx, farewell) = tokio::sync::watch::channel(Farewell::Serving);
    let connections = Arc::new(Semaphore::new(settings.max_connections));

    let stop = async {
        shutdown.await;
        draining.store(true, Ordering::Release);
        let _ = farewell_tx.send(Farewell::Leaving);
        tracing::info!(delay = ?settings.shutdown_delay, "shutdown requested: unready, still serving");
        tokio::time::sleep(settings.shutdown_delay).await;
    };
    tokio::pin!(stop);

    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit,
            () = &mut stop => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: keep serving the connections we have.
                tracing::warn!(error = %e, "accept failed");
                accept_failed(&e).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&current);
        let builder = Arc::clone(&builder);
        let farewell = farewell.clone();
        let metrics = Arc::clone(&metrics);
        // The current config's certificate: a reload serves a rotated one,
        // and one that turns TLS off keeps the last, not the first (expired
        // since, perhaps, or rotated away from for a leaked key).
        let tls = tls.as_mut().map(|last| {
            if let Some(acceptor) = current.load().tls_acceptor() {
                *last = acceptor;
            }
            last.clone()
        });
        // One deadline from accept: a TLS handshake that takes its time
        // leaves that much less for the first request head, so a slot is
        // never held for both in turn.
        let timeouts = ConnectionTimeouts {
            first_request_by: tokio::time::Instant::now() + settings.header_read_timeout,
            idle: settings.idle_timeout,
        };
        let hold = Arc::new(ConnectionHold::new(
            permit,
            metrics.open_connections.clone(),
            background.clone(),
        ));
        let client = Arc::new(
            ClientInfo::new(peer.ip(), tls.is_some())
                .holding(hold)
                .of_server(Arc::clone(&draining)),
        );
        tasks.spawn(async move {
            match tls {
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout_at(timeouts.first_request_by, handshake).await {
                        Ok(Ok(stream)) => {
                            // RFC 9113 3.3: `h2` agreed by ALPN is HTTP/2
                            // from the first byte, not a guess from them.
                            let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                Protocol::Http2
                            } else {
                                Protocol::Sniffed
                            };
                            serve_connection(
                                stream, peer, client, gateway, &builder, protocol, farewell,
                                timeouts,
                            )
                            .await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake not done in time"),
                    }
                }
                None => {
                    serve_connection(
                        stream,
                        peer,
                        client,
                        gateway,
                        &builder,
                        Protocol::Sniffed,
                        farewell,
                        timeouts,
                    )
                    .await;
                }
            }
        });
    }

    drop(listener);
    tracing::info!(grace = ?settings.shutdown_grace, "draining in-flight requests");
    let deadline = tokio::time::Instant::now() + settings.shutdown_grace;
    tasks.close();
    let _ = farewell_tx.send(Farewell::Draining);
    let drained = tasks.wait();
    if tokio::time::timeout_at(deadline, drained).await.is_err() {
        tracing::warn!("shutdown grace expired with requests still in flight");
    }
    let _ = stop_background.send(true);
    // The reloader ends (giving up a reload under way, which stops the
    // background work it started) before the running gateway's background
    // work is stopped: no reload swaps in another after that. Aborting it
    // is what `stop` would do at its next await, without waiting for it to
    // be polled (after a grace used up, a wait for it timed out at once).
    if let Some(reloader) = reloader {
        reloader.abort();
        let _ = reloader.await;
    }
    current.load().authenticator().stop_background();
    let _ = admin.await;
    Ok(())
}

/// The connection builders: one that tells HTTP/1 from HTTP/2 by the first
/// bytes (and serves upgrades), and one for HTTP/2 alone, for connections
/// whose TLS agreed on `h2`.
struct ConnectionBuilders {
    sniffing: auto::Builder<Tracked>,
    http2: auto::Builder<Tracked>,
}

/// How a connection's protocol is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// From its first bytes (no ALPN, or `http/1.1`).
    Sniffed,
    /// `h2` by ALPN: HTTP/2 only.
    Http2,
}

fn connection_builder(settings: &ServerSettings, tasks: &TaskTracker) -> ConnectionBuilders {
    let mut builder = auto::Builder::new(Tracked(tasks.clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // Response data queued per stream beyond what the client's window
        // lets out (h2's default is about 400 KiB): a client that opens
        // 256 streams with huge windows and then reads slowly would pin
        // about 100 MiB a connection at the default, 16 MiB with this.
        .max_send_buf_size(SEND_BUFFER_PER_STREAM);
    ConnectionBuilders {
        http2: builder.clone().http2_only(),
        sniffing: builder,
    }
}

/// See [`connection_builder`].
const SEND_BUFFER_PER_STREAM: usize = 64 * 1024;

/// How many `idle_timeout`s a connection that said GOAWAY for a response
/// its client left unread keeps its other streams.
const WIND_DOWN_PERIODS: u32 = 6;
/// How long a connection whose first request came too late may take to
/// hear and acknowledge its GOAWAY before it is closed.
const FIRST_REQUEST_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Runs hyper's tasks (HTTP/2 streams) on the runtime, tracked.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Per-connection time limits.
#[derive(Debug, Clone, Copy)]
struct ConnectionTimeouts {
    /// When the first request head must be complete (the TLS handshake
    /// included), counted from accept.
    first_request_by: tokio::time::Instant,
    /// With nothing in flight, after the first request.
    idle: Duration,
}

/// How far shutdown has come; each step sends the connections open then
/// away (see `run`).
#[derive(Debug, Clone, Copy)]
enum Farewell {
    Serving,
    /// Shutdown started: clients are moved on, new connections still taken.
    Leaving,
    /// The drain started: what is in flight finishes, nothing new comes.
    Draining,
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    client: Arc<ClientInfo>,
    gateway: Arc<ArcSwap<Gateway>>,
    builders: &ConnectionBuilders,
    protocol: Protocol,
    mut farewell: tokio::sync::watch::Receiver<Farewell>,
    timeouts: ConnectionTimeouts,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A connection taken after shutdown started is not sent away at once:
    // its answers say `Connection: close` (HTTP/2 ones get their GOAWAY
    // with the drain, at once if it began while the TLS handshake ran).
    let drained_already = matches!(*farewell.borrow_and_update(), Farewell::Draining);
    // For heads refused before they became requests (the metrics are one
    // for every config of the server).
    let metrics = Arc::clone(gateway.load().metrics());
    let activity = idle::Activity::new();
    let (io, requests) = framing::FramingWatch::new(idle::Watched::new(io, Arc::clone(&activity)));
    let first_request = Arc::new(tokio::sync::Notify::new());
    let arrived = Arc::clone(&first_request);
    let requests_activity = Arc::clone(&activity);
    // Read on after a close with a body unread (see `linger`).
    let io = linger::Lingering::new(io, Arc::clone(&client));
    let service = service_fn(move |mut request: Request<Incoming>| {
        arrived.notify_one();
        let in_flight = requests_activity.start();
        // What hyper hides of the head: a Content-Length next to
        // Transfer-Encoding or repeated, a fragment on the target.
        if let Some(flaw) = requests.next() {
            request.extensions_mut().insert(flaw);
        }
        // A request that may switch protocols (hyper marks it): if the
        // answer does, the watch must stop reading the tunnel as requests.
        let may_switch = request
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .map(|_| (request.method() == Method::CONNECT, Arc::clone(&requests)));
        // Each request runs on the config that was current when it arrived
        // (and, when a reload retired it meanwhile, may be its last holder).
        let gateway = crate::retire::Held::new(gateway.load_full());
        let client = Arc::clone(&client);
        let http1 = request.version() < http::Version::HTTP_2;
        async move {
            let mut response = gateway.handle(request, &client).await;
            let mut switched = false;
            if let Some((connect, requests)) = may_switch {
                let status = response.status();
                if status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success()) {
                    requests.switched();
                    switched = true;
                }
            }
            // Shutting down: the client goes elsewhere for its next request
            // (a tunnel the answer opens is no next request).
            if http1 && !switched && client.server_leaving() {
                crate::proxy::headers::announce_close(response.headers_mut());
            }
            Ok::<_, Infallible>(response.map(|body| idle::Tracked::new(body, in_flight)))
        }
    });
    let connection = match protocol {
        Protocol::Sniffed => Either::Left(
            builders
                .sniffing
                .serve_connection_with_upgrades(TokioIo::new(io), service),
        ),
        Protocol::Http2 => {
            Either::Right(builders.http2.serve_connection(TokioIo::new(io), service))
        }
    };
    // hyper's header_read_timeout only starts once hyper-util has told HTTP/1
    // from HTTP/2 by the first bytes, and HTTP/2 has none: a connection that
    // sends nothing, or dribbles the HTTP/2 preface, would hold its
    // `max_connections` slot forever. So the first request must arrive in
    // time: true if it did.
    let first_request_in_time = async {
        let notified = first_request.notified();
        tokio::time::timeout_at(timeouts.first_request_by, notified)
            .await
            .is_ok()
    };
    tokio::pin!(connection, first_request_in_time);
    // Either kind's GOAWAY or close once what is in flight is done.
    macro_rules! graceful_shutdown {
        () => {
            match connection.as_mut().as_pin_mut() {
                Either::Left(connection) => connection.graceful_shutdown(),
                Either::Right(connection) => connection.graceful_shutdown(),
            }
        };
    }
    let quiet = activity.quiet_for(timeouts.idle);
    tokio::pin!(quiet);
    let mut draining = false;
    let mut first_request_came = false;
    // Set when shutdown came before the first request of a connection that
    // may speak HTTP/1: sent away at once, it would be closed unanswered,
    // and its client (which never used it) could not tell whether its
    // request was taken. So that request is served, its answer saying
    // `Connection: close` as on a connection accepted during
    // `shutdown_delay`, and the connection is sent away when it comes (or
    // closed when it does not come in time).
    let mut farewell_on_first_request = false;
    if drained_already {
        draining = true;
        if protocol == Protocol::Sniffed {
            farewell_on_first_request = true;
        } else {
            graceful_shutdown!();
        }
    }
    // Set when a first request came as the connection closed for want of
    // one in time: it is served as when draining.
    let mut late_first_request = false;
    // Set by a GOAWAY for a response the client left unread: the other
    // streams may finish by then, not later (a client that keeps one moving,
    // or that never answers the GOAWAY's PING and so may still open
    // streams, would otherwise keep the unread one for ever).
    let mut wound_down_by: Option<tokio::time::Instant> = None;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            // Shutdown went a step further (or the gateway is gone): what
            // is in flight finishes, then the connection closes. Only ever
            // set once, to true.
            _ = farewell.changed(), if !draining => {
                draining = true;
                if protocol == Protocol::Sniffed && !first_request_came {
                    farewell_on_first_request = true;
                } else {
                    graceful_shutdown!();
                }
            }
            () = tokio::time::sleep_until(wound_down_by.unwrap_or_else(tokio::time::Instant::now)),
                if wound_down_by.is_some() =>
            {
                tracing::info!(%peer, "streams still open six idle_timeouts after a GOAWAY for an unread response; connection closed");
                return;
            }
            came = &mut first_request_in_time, if !first_request_came && !late_first_request => {
                if came {
                    first_request_came = true;
                    if farewell_on_first_request {
                        graceful_shutdown!();
                    }
                    continue;
                }
                tracing::debug!(%peer, "no request within header_read_timeout; connection closed");
                // An HTTP/2 client gets a GOAWAY, so a first request that
                // crosses the deadline is sent again elsewhere (a plain
                // close reads as a broken connection): briefly, as the
                // client may be a slowloris.
                graceful_shutdown!();
                if tokio::time::timeout(FIRST_REQUEST_CLOSE_WAIT, connection.as_mut())
                    .await
                    .is_err()
                    && first_request.notified().now_or_never().is_some()
                {
                    // One came before the GOAWAY's PING was answered, so
                    // the client is told it was taken: it finishes, as
                    // requests do when the gateway drains (the idle and
                    // stall checks still apply).
                    late_first_request = true;
                    draining = true;
                    continue;
                }
                return;
            }
            why = &mut quiet => {
                match why {
                    idle::Quiet::Stalled => {
                        tracing::info!(%peer, "the client took no response data for idle_timeout; connection closed");
                        return;
                    }
                    // Closed as when draining, so that an HTTP/2 client gets
                    // a GOAWAY saying which of its requests were taken: one
                    // sent just as the connection closes may be sent again.
                    idle::Quiet::Idle => {
                        tracing::debug!(%peer, "nothing in flight for idle_timeout; closing the connection");
                    }
                    // The client reads its other streams: the GOAWAY sends
                    // its next requests to a new connection, and those in
                    // flight may finish; the connection closes once none
                    // of them moves (the unread one never will).
                    idle::Quiet::StalledResponse => {
                        tracing::info!(%peer, "a response waited for the client to take its next part for five idle_timeouts; GOAWAY, and the connection closes once its other streams are done (within six idle_timeouts)");
                        graceful_shutdown!();
                        activity.wind_down();
                        wound_down_by = tokio::time::Instant::now()
                            .checked_add(timeouts.idle.saturating_mul(WIND_DOWN_PERIODS));
                        quiet.set(activity.quiet_for(timeouts.idle));
                        continue;
                    }
                }
                graceful_shutdown!();
                match tokio::time::timeout(timeouts.idle, connection.as_mut()).await {
                    Ok(result) => break result,
                    Err(_) => return,
                }
            }
        }
    };
    if let Err(e) = result {
        // A head hyper's HTTP/1 parser refused and answered itself (431,
        // 400): no request reached the gateway's own counting.
        if let Some(kind) = e.downcast_ref::<hyper::Error>().and_then(head_error_kind) {
            metrics.count_head_error(kind);
        }
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The `scopegate_client_head_errors_total` kind of a connection's error,
/// if it is a request head refused before it became a request. hyper's
/// `is_parse_too_large` holds for a head too large (431) and for a request
/// target over its 65 534 bytes (414) alike, and nothing public tells them
/// apart: both count as `too_large`, as the README says.
fn head_error_kind(error: &hyper::Error) -> Option<&'static str> {
    if error.is_parse_too_large() {
        Some("too_large")
    } else if error.is_parse() {
        Some("malformed")
    } else {
        // Not `is_timeout`: hyper's header-read timer also ends kept-alive
        // connections that sent nothing more, which is no error.
        None
    }
}

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does: each client connection and each upstream request takes a
/// descriptor, and a login shell's soft limit of 1 024 is far below the
/// default `max_connections` of 10 000. A failure is logged, not fatal.
#[cfg(unix)]
pub fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none() || limit.current == limit.maximum {
        return; // unlimited, or already at the ceiling
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit")
        }
        Err(e) => {
            tracing::warn!(error = %e, soft = ?limit.current, "could not raise the open-file limit")
        }
    }
}

/// Elsewhere the platform's limit stands.
#[cfg(not(unix))]
pub fn raise_open_file_limit() {}

/// After a failed `accept`: a failure of one connection (aborted or reset
/// before it was taken, refused by a firewall rule) lets the next be taken
/// at once, while anything else (out of file descriptors or memory) waits
/// 50 ms, so that the loop does not spin while it lasts.
pub(crate) async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    let one_connection = matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::PermissionDenied
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
    );
    if !one_connection {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), and from then on ends the
/// process at once, with status 130, on a second one: the drain
/// (`shutdown_delay`, `shutdown_grace`) is for orchestrators, and an operator
/// who presses Ctrl-C twice means now. The handlers are installed when this
/// is called (within the runtime), not when the future is first polled, so
/// a signal that comes while the gateway starts is not the default action's
/// (an abrupt exit).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let listeners = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
            .ok()
    };
    async move {
        #[cfg(unix)]
        if let Some((mut term, mut interrupt)) = listeners {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            // The same listeners: a second signal that comes at once is
            // not missed.
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
                crate::cli::say(format_args!(
                    "scopegate: second signal; exiting without waiting for the drain"
                ));
                std::process::exit(130);
            });
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
