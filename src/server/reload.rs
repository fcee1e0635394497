//! Hot reload: watch the config file's directory (a Kubernetes ConfigMap update
//! is a `..data` symlink swap, which a watch on the file itself would miss),
//! SIGHUP, and a slow poll as a fallback. A new config is fully validated and
//! ready before it replaces the old one; a bad one is refused and the old one
//! keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher;
use tokio::sync::{mpsc, watch};

use super::pipeline::Gateway;
use super::tls;
use crate::admin::metrics::{LabelNames, Metrics};
use crate::auth::cache::{digest, TokenDigest};
use crate::config::{self, Config, ServerSettings};

/// How long file events are collected before one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Fallback poll interval (filesystem events can be lost).
pub const POLL: Duration = Duration::from_secs(30);
/// How long a reload waits for new issuers' keys before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a reload did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is unreadable or invalid (message has file:line:column);
    /// with the files validation read before it stopped, when it ran.
    #[error("{0}")]
    Invalid(config::ConfigError, Option<Box<config::NamedFiles>>),
    /// The new runtime could not be built (CA files, ...).
    #[error("{0}")]
    Setup(String),
    /// Issuers (named) that the running config does not have, or had
    /// ready, did not become ready in time.
    #[error("issuers {1:?} did not become ready within {0:?}")]
    NotReady(Duration, Vec<String>),
}

/// Every `scopegate_config_reloads_total` result.
pub const RELOAD_RESULTS: [&str; 4] = ["success", "invalid", "setup_failed", "not_ready"];

impl ReloadError {
    fn label(&self) -> &'static str {
        match self {
            Self::Invalid(..) => "invalid",
            Self::Setup(_) => "setup_failed",
            Self::NotReady(..) => "not_ready",
        }
    }
}

/// The file-backed reloader for one running server.
pub struct Reloader {
    path: PathBuf,
    current: Arc<ArcSwap<Gateway>>,
    metrics: Arc<Metrics>,
    running: RunningSettings,
    last_text: TokenDigest,
    /// The files the running config names, and a digest of their contents
    /// when it was loaded (or when a refused change to them was seen).
    files: Vec<PathBuf>,
    last_files: TokenDigest,
    /// The text and files digests of a config last refused because its
    /// issuers' keys did not come in time, and when: unchanged, it is tried
    /// again by the poll, not by the file events that queued up during its
    /// wait (which would start the next wait at once, back to back).
    not_ready: Option<(TokenDigest, TokenDigest, std::time::Instant)>,
    /// Whether `last_text` and `last_files` are the running config's (a
    /// refusal for a reason of the moment leaves them so): a file put back
    /// to them then reads as the config in force.
    last_is_running: bool,
    /// The fallback poll's interval: [`POLL`] but in tests.
    poll: Duration,
    /// The read error last told for the config file, with a digest of
    /// what the file held: while it stays unreadable the same way, polls
    /// and events do not tell it again.
    unreadable: Option<(String, Option<TokenDigest>)>,
}

/// Settings the running server was started with; they change only on restart.
#[derive(Debug, Clone)]
pub struct RunningSettings {
    /// `server:` as started.
    pub server: ServerSettings,
    /// `admin.listen` as started.
    pub admin_listen: std::net::SocketAddr,
    /// The addresses the proxy and admin listeners are bound to: they stay
    /// until a restart, whatever a reload's `listen` says.
    pub bound: Vec<std::net::SocketAddr>,
}

impl Reloader {
    /// `running` is the config the server started with (for restart-only
    /// settings); `text` the digest of the file content it was loaded from
    /// ([`config::Config::text_digest`]), `files` the files it names
    /// ([`config::Config::referenced_files`]) and `files_digest` what they
    /// held when it was loaded ([`config::Config::files_digest`]).
    pub fn new(
        path: PathBuf,
        current: Arc<ArcSwap<Gateway>>,
        metrics: Arc<Metrics>,
        running: RunningSettings,
        text: TokenDigest,
        files: Vec<PathBuf>,
        files_digest: TokenDigest,
    ) -> Self {
        Self {
            path,
            current,
            metrics,
            running,
            last_text: text,
            files,
            last_files: files_digest,
            not_ready: None,
            last_is_running: true,
            poll: POLL,
            unreadable: None,
        }
    }

    /// Polls the file every `poll` instead of every [`POLL`]: for tests of
    /// the poll, which would otherwise wait half a minute for it.
    #[doc(hidden)]
    #[must_use]
    pub fn polling_every(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Watches and reloads (also on `hangup`, from [`hangup_signal`]) until
    /// `stop` changes.
    pub async fn run(mut self, mut hangup: Hangup, mut stop: watch::Receiver<bool>) {
        let (events, mut event_rx) = mpsc::channel::<()>(64);
        let _watcher = watch_directory(&self.path, events);
        let mut poll = tokio::time::interval(self.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        // A change that landed between loading the config and the watch
        // starting raised no event: look once now. A reload under way when
        // the server stops is given up (see `apply`).
        tokio::select! {
            () = self.reload(false) => {}
            _ = stop.changed() => return,
        }
        loop {
            let forced = tokio::select! {
                Some(()) = event_rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while event_rx.try_recv().is_ok() {}
                    false
                }
                () = next_hangup(&mut hangup) => true,
                _ = poll.tick() => false,
                _ = stop.changed() => return,
            };
            tokio::select! {
                () = self.reload(forced) => {}
                _ = stop.changed() => return,
            }
            // A full poll interval after this reload ended, not after it
            // began: a config refused for keys that did not come within
            // READY_TIMEOUT (as long as a poll) is not tried again at once,
            // back to back.
            poll.reset();
        }
    }

    /// Reloads if the file changed (or always, when `forced`).
    pub async fn reload(&mut self, forced: bool) {
        // Keys, secrets and certificates rotated in place (a Secret volume
        // elsewhere, cert-manager) change no byte of the config itself, so
        // the files it names are read too; all off the runtime, whose one
        // thread may be serving (`server.workers: 1`).
        let (path, named) = (self.path.clone(), self.files.clone());
        let read = tokio::task::spawn_blocking(move || {
            let text = config::load::read_file(&path);
            // What the file holds when it cannot be read as text (missing,
            // or not UTF-8): the same failure of other bytes is news.
            let held = text
                .is_err()
                .then(|| config::load::current_files_digest(std::slice::from_ref(&path)));
            (text, held, config::load::current_files_digest(&named))
        })
        .await;
        let (text, files) = match read {
            Ok((Ok(text), _, files)) => (text, files),
            Ok((Err(e), held, _)) => {
                let error = (e.to_string(), held);
                if forced || self.unreadable.as_ref() != Some(&error) {
                    self.failed(&ReloadError::Invalid(e, None));
                    self.unreadable = Some(error);
                }
                self.rotate_certificate().await;
                return;
            }
            Err(e) => {
                self.failed(&ReloadError::Setup(format!(
                    "reading the files failed: {e}"
                )));
                return;
            }
        };
        self.unreadable = None;
        let text_digest = digest(&text);
        if !forced && text_digest == self.last_text && files == self.last_files {
            // Put back to what runs after a refusal of the moment (a store
            // that could not be set up, keys that did not come, a file that
            // could not be read): the file and what runs agree again.
            if self.last_is_running {
                self.not_ready = None;
                self.metrics.config_last_reload_success.set(1);
            } else {
                self.rotate_certificate().await;
            }
            return;
        }
        if !forced
            && self.not_ready.is_some_and(|(t, f, at)| {
                t == text_digest && f == files && at.elapsed() < self.poll
            })
        {
            self.rotate_certificate().await;
            return;
        }
        self.not_ready = None;
        match self.apply(&text).await {
            Ok((named, named_digest)) => {
                self.last_text = text_digest;
                self.last_files = named_digest;
                self.last_is_running = true;
                self.files = named;
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                self.metrics.config_last_reload_success.set(1);
                tracing::info!(file = %self.path.display(), "configuration reloaded");
            }
            Err(e) => {
                if let ReloadError::NotReady(..) = &e {
                    self.not_ready = Some((text_digest, files, std::time::Instant::now()));
                }
                // Do not retry the same bad text on every poll; but a good
                // one refused for the moment (an issuer's keys not loading
                // yet) is tried again at the next poll, and one refused for
                // a file it names (a key in a Secret volume the kubelet has
                // not updated yet) once one of the files it read changes.
                if let ReloadError::Invalid(_, named) = &e {
                    self.last_is_running = false;
                    self.last_text = text_digest;
                    match named {
                        Some(named) => {
                            self.files.clone_from(&named.paths);
                            self.last_files = named.digest;
                        }
                        None => self.last_files = files,
                    }
                }
                self.failed(&e);
                self.rotate_certificate().await;
            }
        }
    }

    /// While the config file is refused, serves the running config's own
    /// certificate files if they changed (cert-manager renewing them in
    /// place): the certificate does not wait, perhaps past its expiry,
    /// for someone to mend the rest of the config. Files that do not load
    /// keep the served certificate, and are told once.
    async fn rotate_certificate(&self) {
        let Some(inbound) = self.current.load().tls().cloned() else {
            return;
        };
        let result = match tokio::task::spawn_blocking(move || inbound.refresh()).await {
            Ok(result) => result,
            Err(e) => Err(format!("reading the certificate files failed: {e}")),
        };
        let counted = |result: &str| {
            self.metrics
                .tls_certificate_rotations
                .with_label_values(&[result])
                .inc();
        };
        match result {
            Ok(tls::Refresh::Unchanged) => {}
            Ok(tls::Refresh::Rotated) => {
                counted("rotated");
                self.current.load().export_certificate_expiry();
                tracing::info!("TLS certificate files changed: the new certificate is served; the configuration file stays refused");
            }
            Err(error) => {
                counted("refused");
                tracing::error!(%error, "TLS certificate files changed but do not load: the previous certificate keeps serving");
            }
        }
    }

    fn failed(&self, error: &ReloadError) {
        self.metrics
            .config_reloads
            .with_label_values(&[error.label()])
            .inc();
        self.metrics.config_last_reload_success.set(0);
        self.metrics.refused();
        tracing::error!(error = %error, "configuration reload refused; the previous configuration keeps serving");
    }

    /// Applies `text`; returns the files the new config names, and a digest
    /// of their contents as they were when it was loaded.
    async fn apply(&mut self, text: &str) -> Result<(Vec<PathBuf>, TokenDigest), ReloadError> {
        let source = self.path.display().to_string();
        let base = self
            .path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        let text = text.to_owned();
        // Off the runtime: validation reads the keys, secrets and
        // certificates the config names.
        let (config, named_digest) = tokio::task::spawn_blocking(move || {
            let config = config::load_str_naming_files(&source, &base, &text)
                .map_err(|(error, named)| ReloadError::Invalid(error, Some(named)))?;
            let named_digest = config.files_digest;
            Ok::<_, ReloadError>((config, named_digest))
        })
        .await
        .map_err(|e| ReloadError::Setup(format!("loading failed: {e}")))??;
        // The config's own listen addresses were checked when it loaded;
        // the ones serving until a restart (a port 0 bound to one) now.
        if let Some(upstream) = self
            .running
            .bound
            .iter()
            .find_map(|&address| config::validate::upstream_reaching(&config, address))
        {
            return Err(ReloadError::Invalid(
                config::ConfigError::at(
                    &config.source,
                    upstream.url_at,
                    format!("upstream `{}` is this gateway's own running listener: every request would come back to it (listen addresses change only with a restart)", upstream.name),
                ),
                None,
            ));
        }
        let named = config.referenced_files.clone();
        let restart = restart_required(&self.running, &config);
        for setting in &restart {
            tracing::warn!(setting, "changed setting needs a restart to take effect");
        }
        let labels = LabelNames::of(&config);
        self.metrics.preparing(labels.clone());
        let old = self.current.load_full();
        let gateway = Gateway::build(config, Arc::clone(&self.metrics), Some(&old))
            .await
            .map_err(ReloadError::Setup)?;
        let reused = Arc::ptr_eq(gateway.authenticator(), old.authenticator());
        let gateway = Arc::new(gateway);
        // Until it serves, the new gateway's key refreshers stop with this
        // reload: refused, or given up when the server stops.
        let starting = (!reused).then(|| {
            gateway.authenticator().spawn_background();
            StopBackground(Some(Arc::clone(gateway.authenticator())))
        });
        if starting.is_some() {
            let awaited = || gateway.authenticator().awaited_issuers(old.authenticator());
            let ready = async {
                while !awaited().is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            if tokio::time::timeout(READY_TIMEOUT, ready).await.is_err() {
                let unready = awaited().into_iter().map(str::to_owned).collect();
                drop(starting);
                crate::retire::release(gateway);
                return Err(ReloadError::NotReady(READY_TIMEOUT, unready));
            }
        }
        if !reused {
            gateway.authenticator().serving();
        }
        self.current.store(gateway);
        self.current.load().export_certificate_expiry();
        if let Some(starting) = starting {
            starting.serving();
            old.authenticator().stop_background();
        }
        self.metrics
            .config_restart_required
            .set(i64::from(!restart.is_empty()));
        self.metrics.running(labels);
        // Dropped off the runtime when this is the last holder (here and
        // for a refused gateway above): closing a file store writes to disk.
        crate::retire::release(old);
        Ok((named, named_digest))
    }
}

/// Stops an authenticator's background work when dropped, unless it went
/// into service.
struct StopBackground(Option<Arc<crate::auth::Authenticator>>);

impl StopBackground {
    /// It serves now: its work goes on.
    fn serving(mut self) {
        self.0 = None;
    }
}

impl Drop for StopBackground {
    fn drop(&mut self) {
        if let Some(authenticator) = self.0.take() {
            authenticator.stop_background();
            crate::retire::release(authenticator);
        }
    }
}

/// Names the settings that differ but only take effect after a restart.
fn restart_required(running: &RunningSettings, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.server, &new.server);
    let mut changed = Vec::new();
    if a.listen != b.listen {
        changed.push("server.listen");
    }
    if running.admin_listen != new.admin_listen {
        changed.push("admin.listen");
    }
    // New certificate files, or new contents, are served from the reload
    // on; only turning TLS on or off needs the listener started anew.
    if a.tls.is_some() != b.tls.is_some() {
        changed.push("server.tls (on or off)");
    }
    if a.workers != b.workers {
        changed.push("server.workers");
    }
    if a.max_connections != b.max_connections {
        changed.push("server.max_connections");
    }
    if a.max_header_bytes != b.max_header_bytes {
        changed.push("server.max_header_bytes");
    }
    if a.header_read_timeout != b.header_read_timeout {
        changed.push("server.header_read_timeout");
    }
    if a.idle_timeout != b.idle_timeout {
        changed.push("server.idle_timeout");
    }
    if a.shutdown_delay != b.shutdown_delay || a.shutdown_grace != b.shutdown_grace {
        changed.push("server.shutdown_delay/shutdown_grace");
    }
    changed
}

/// Watches the directory holding `path`; every change becomes a nudge. Mere
/// access is not a change: reading the config (as every reload does) raises
/// an open event, which would otherwise start the next reload.
fn watch_directory(path: &Path, events: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = events.try_send(());
        }
    });
    match watcher {
        Ok(mut w) => match w.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; relying on SIGHUP and polling");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no filesystem watcher; relying on SIGHUP and polling");
            None
        }
    }
}

/// SIGHUPs, where there are any.
#[cfg(unix)]
pub type Hangup = Option<tokio::signal::unix::Signal>;
/// SIGHUPs, where there are any.
#[cfg(not(unix))]
pub type Hangup = ();

/// Starts taking SIGHUPs (for a reload) instead of letting them end the
/// process.
#[cfg(unix)]
pub fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
/// Starts taking SIGHUPs (for a reload) instead of letting them end the
/// process.
#[cfg(not(unix))]
pub fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(signal: &mut Hangup) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending::<()>().await
}
