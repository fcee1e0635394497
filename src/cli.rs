//! The command line: `run`, `check`, `demo`, `inject`, `hash-secret`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{self, Access, Config};

/// scopegate: an OAuth 2.0 bearer-token gateway.
#[derive(Debug, Parser)]
#[command(name = "scopegate", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SCOPEGATE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file.
        #[arg(
            long,
            short,
            env = "SCOPEGATE_CONFIG",
            default_value = "config/scopegate.yaml"
        )]
        config: PathBuf,
    },
    /// Validate a configuration file and print its route table (exit 1 on errors).
    Check {
        /// Configuration file.
        #[arg(
            long,
            short,
            env = "SCOPEGATE_CONFIG",
            default_value = "config/scopegate.yaml"
        )]
        config: PathBuf,
    },
    /// Run a self-contained demo: keys, JWKS, an echo upstream, and tokens to try.
    Demo {
        /// Proxy listen address [default: 127.0.0.1:8080, or a free port
        /// when that is taken].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin listen address [default: 127.0.0.1:9090, or a free port
        /// when that is taken].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Print an argon2 hash of a client secret or password read from standard
    /// input (for `client_secret_hash` / `password_hash`); at a terminal it
    /// is asked twice, without echo.
    HashSecret,
    /// Add the scopegate sidecar to Kubernetes manifests.
    Inject {
        /// Manifest file, or `-` for standard input.
        #[arg(long, short = 'f', default_value = "-")]
        file: String,
        /// Sidecar image [default: ghcr.io/scopegate/scopegate:0.1.0].
        #[arg(long)]
        image: Option<String>,
        /// ConfigMap holding scopegate.yaml [default: scopegate-config].
        #[arg(long)]
        config_map: Option<String>,
        /// scopegate's proxy port [default: 8080].
        #[arg(long)]
        proxy_port: Option<u16>,
        /// scopegate's admin port [default: 9090].
        #[arg(long)]
        admin_port: Option<u16>,
        /// The app's port on loopback [default: 3000].
        #[arg(long)]
        upstream_port: Option<u16>,
        /// Also inject into pods with `hostNetwork: true` (their loopback is
        /// the node's, so the app's port is open to the node).
        #[arg(long)]
        allow_host_network: bool,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it writes out the last lines.
    let _log = init_logging(cli.log_format);
    match cli.command {
        Command::Run { config: path } => match config::load_file(&path) {
            Ok(config) => run_gateway(path, config),
            Err(e) => refused(&path, &e),
        },
        Command::Check { config } => check(&config),
        Command::HashSecret => hash_secret(),
        Command::Demo {
            listen,
            admin_listen,
        } => with_runtime(0, crate::demo::run(listen, admin_listen)),
        Command::Inject {
            file,
            image,
            config_map,
            proxy_port,
            admin_port,
            upstream_port,
            allow_host_network,
        } => {
            let mut opts = crate::inject::InjectOptions {
                allow_host_network,
                ..crate::inject::InjectOptions::default()
            };
            if let Some(v) = image {
                opts.image = v;
            }
            if let Some(v) = config_map {
                opts.config_map = v;
            }
            if let Some(v) = proxy_port {
                opts.proxy_port = v;
            }
            if let Some(v) = admin_port {
                opts.admin_port = v;
            }
            if let Some(v) = upstream_port {
                opts.upstream_port = v;
            }
            inject(&file, &opts)
        }
    }
}

/// Logs to stderr from a thread of its own: a slow reader of the log (a
/// full pipe) never blocks the threads serving requests, and the access
/// line of a request costs no write of its own. Past [`LOG_LINES_WAITING`]
/// lines waiting, new ones are dropped rather than waited for. The guard
/// writes out what is left when it is dropped, at exit.
fn init_logging(format: LogFormat) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = log_filter(std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_WAITING)
        .lossy(true)
        .finish(std::io::stderr());
    crate::admin::metrics::count_dropped_log_lines(writer.error_counter());
    // Colour only for a person at a terminal: `kubectl logs`, Loki and
    // journald would otherwise store the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    // Other crates' lines a peer can have written at will, throttled.
    let foreign = crate::admin::throttle::ForeignLines::default();
    crate::admin::metrics::count_held_back_log_lines(foreign.held_back());
    let installed = match format {
        LogFormat::Text => builder.finish().with(foreign).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(foreign)
            .try_init(),
    };
    installed.ok().map(|()| guard)
}

/// The log filter `RUST_LOG` asks for, or `info`. Unset or empty (a Helm
/// value left blank, which tracing would read as "nothing") is `info`; one
/// that cannot be read, and a bare word that is no level (`warning`, read as
/// a target of that name, which logs nothing of scopegate's), are said on
/// stderr, so that an operator raising the level in an incident learns why
/// nothing changed.
fn log_filter(value: Result<String, std::env::VarError>) -> tracing_subscriber::EnvFilter {
    const LEVELS: [&str; 12] = [
        "trace", "debug", "info", "warn", "error", "off", "0", "1", "2", "3", "4", "5",
    ];
    let info = || tracing_subscriber::EnvFilter::new("info");
    let value = match value {
        Ok(value) if !value.trim().is_empty() => value,
        Ok(_) | Err(std::env::VarError::NotPresent) => return info(),
        Err(std::env::VarError::NotUnicode(_)) => {
            say(format_args!(
                "scopegate: RUST_LOG is not UTF-8; logging at info"
            ));
            return info();
        }
    };
    // Each directive trimmed: tracing reads `info, debug`'s second as a
    // target named " debug".
    let value = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    match tracing_subscriber::EnvFilter::try_new(&value) {
        Ok(filter) => {
            for word in value.split(',') {
                let bare = !word.is_empty() && !word.contains(['=', ':', '[']);
                if bare
                    && !word.starts_with("scopegate")
                    && !LEVELS.iter().any(|l| word.eq_ignore_ascii_case(l))
                {
                    say(format_args!(
                        "scopegate: RUST_LOG: `{word}` is no level (trace, debug, info, warn, error, off), so it names a target (all of its levels)"
                    ));
                }
            }
            filter
        }
        Err(e) => {
            say(format_args!("scopegate: RUST_LOG: {e}; logging at info"));
            info()
        }
    }
}

/// Log lines that may wait for stderr. The channel holding them is
/// allocated whole at start: tracing-appender's default (128 000) took 4 MB
/// of the idle gateway's memory.
const LOG_LINES_WAITING: usize = 8192;

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn with_runtime<F>(workers: usize, future: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), String>>,
{
    install_crypto_provider();
    crate::server::raise_open_file_limit();
    // One worker: a current-thread runtime does the same work without the
    // work-stealing scheduler's cross-thread bookkeeping.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    if workers > 1 {
        builder.worker_threads(workers);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            say(format_args!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(future);
    // A blocking task still stuck (a reload reading a file that never
    // answers) must not keep a stopped gateway from exiting.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format_args!("scopegate: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// How long an exiting process waits for blocking tasks still running.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

fn run_gateway(path: PathBuf, config: Config) -> ExitCode {
    let workers = config.server.workers;
    with_runtime(workers, async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.admin_listen))?;
        crate::server::run_with_reload(
            path,
            config,
            listener,
            admin,
            crate::server::shutdown_signal(),
        )
        .await
        .map_err(|e| e.to_string())
    })
}

/// `scopegate check`: every warning is said plainly, as a compiler's
/// `file:line:column: warning: ...`, not through the log (whose level
/// `RUST_LOG` may set above warnings, and whose lines carry timestamps).
fn check(path: &Path) -> ExitCode {
    let (loaded, warnings) = config::load_file_with_warnings(path);
    for warning in &warnings {
        say(format_args!("{warning}"));
    }
    match loaded {
        Ok(config) => {
            for (at, warning) in fallthrough_warnings(&config) {
                let warning = config::ConfigWarning {
                    place: config::ConfigError::at(&path.display().to_string(), at, warning),
                    issuer: None,
                };
                say(format_args!("{warning}"));
            }
            let out = format!(
                "{}: configuration OK\n{}",
                path.display(),
                describe_routes(&config)
            );
            print(out.as_bytes())
        }
        Err(e) => refused(path, &e),
    }
}

/// Says why the config at `path` was refused; when there is no file there
/// at all (as for `run` outside the directory of the default
/// `config/scopegate.yaml`), also how to name one.
fn refused(path: &Path, error: &config::ConfigError) -> ExitCode {
    say(format_args!("{error}"));
    if std::fs::metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        say(format_args!(
            "{}: no such file: name the config with --config PATH or SCOPEGATE_CONFIG (`scopegate demo` needs none)",
            path.display()
        ));
    }
    ExitCode::FAILURE
}

/// Paths and methods that a route needing a token seems to cover but that
/// go to a public route: a method its `methods` leave out; for
/// `/x/{*rest}`, `/x` and `/x/`, which the catch-all does not match; and for
/// `/x`, `/x/` (and the other way round), which is another path unless
/// `route_matching` folds it (Express, Rails, Laravel and Spring 5 route
/// both alike). An
/// upstream that serves them with the same handler would get them without
/// a token, so `scopegate check` warns (the config stays valid: it may be
/// meant). Routes that differ only in scopes are left alone: splitting
/// reads from writes by method is the usual design. The standard methods an
/// upstream serves are tried; extension methods (WebDAV's) are not.
///
/// Each warning comes with the place of the route's `path`.
pub fn fallthrough_warnings(config: &Config) -> Vec<(serde_saphyr::Location, String)> {
    const METHODS: [http::Method; 7] = [
        http::Method::GET,
        http::Method::HEAD,
        http::Method::POST,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::DELETE,
        http::Method::OPTIONS,
    ];
    let mut warnings = Vec::new();
    for (pattern, methods, route) in config.routes.iter() {
        let Access::Bearer { scopes, .. } = &route.access else {
            continue;
        };
        // (path, methods that fall through, the public route they reach)
        let mut cases: Vec<(String, &str)> = Vec::new();
        let sample = sample_path(pattern);
        if let Some(listed) = methods {
            let left_out = METHODS.iter().filter(|m| !listed.contains(m));
            cases.extend(left_out.map(|m| (sample.clone(), m.as_str())));
        }
        let served: Vec<&http::Method> = match methods {
            Some(listed) => listed.iter().collect(),
            None => METHODS.iter().collect(),
        };
        if let Some((prefix, _)) = pattern.rsplit_once("/{*") {
            let prefix = sample_path(prefix);
            for path in [prefix.clone(), format!("{prefix}/")] {
                if !path.is_empty() {
                    cases.extend(served.iter().map(|m| (path.clone(), m.as_str())));
                }
            }
        } else {
            // The other spelling of the path: a trailing slash more or less.
            let path = match sample.strip_suffix('/') {
                None => format!("{sample}/"),
                Some("") => String::new(),
                Some(bare) => bare.to_owned(),
            };
            if !path.is_empty() {
                cases.extend(served.iter().map(|m| (path.clone(), m.as_str())));
            }
        }
        let mut found: Vec<(String, Vec<&str>, &str)> = Vec::new();
        for (path, method) in cases {
            let Ok(method_value) = http::Method::from_bytes(method.as_bytes()) else {
                continue;
            };
            let Ok(crate::routes::Lookup::Matched(other)) =
                config.routes.route(&method_value, &path)
            else {
                continue;
            };
            if !matches!(other.access, Access::Public) || other.index == route.index {
                continue;
            }
            match found
                .iter_mut()
                .find(|(p, _, name)| *p == path && *name == &*other.name)
            {
                Some((_, methods, _)) => methods.push(method),
                None => found.push((path, vec![method], &other.name)),
            }
        }
        for (path, methods, other) in found {
            let why = if sample == path {
                "fall through"
            } else if pattern.contains("/{*") {
                "are not matched by its catch-all ({*rest} needs a character) and fall through"
            } else {
                "are another path (a trailing slash more or less; `route_matching: { trailing_slash: ignore }` if the app routes both alike) and fall through"
            };
            warnings.push((
                route.path_at,
                format!(
                    "{} {path}: route `{}` needs a token (bearer [{}]), but these {why} to public route `{other}`",
                    methods.join(","),
                    route.name,
                    scopes.describe()
                ),
            ));
        }
    }
    warnings
}

/// A path a pattern matches: each `{name}` and `{*rest}` as `x`, literal
/// braces (`{{`, `}}`) as themselves.
fn sample_path(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("{{") {
            out.push('{');
            rest = tail;
        } else if let Some(end) = after.find('}') {
            out.push('x');
            rest = &after[end + 1..];
        } else {
            out.push_str(after);
            rest = "";
        }
    }
    out.push_str(&rest.replace("}}", "}"));
    out
}

/// The route table as `scopegate check` prints it.
pub fn describe_routes(config: &Config) -> String {
    let mut out = String::new();
    for (path, methods, route) in config.routes.iter() {
        let methods = methods.map_or_else(
            || "*".to_owned(),
            |m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","),
        );
        let upstream = config
            .upstreams
            .get(route.upstream)
            .map_or("?", |u| &u.name);
        let mut access = match &route.access {
            Access::Public => "public".to_owned(),
            Access::Bearer {
                scopes, issuers, ..
            } => {
                let mut s = format!("bearer [{}]", scopes.describe());
                if let Some(issuers) = issuers {
                    let names: Vec<&str> = issuers
                        .iter()
                        .filter_map(|i| config.issuers.get(*i).map(|x| &*x.name))
                        .collect();
                    s.push_str(&format!(" issuers={}", names.join(",")));
                }
                s
            }
        };
        if route.forward.cors_preflight {
            access.push_str(" cors_preflight");
        }
        out.push_str(&format!(
            "  {methods:<16} {path:<32} -> {upstream:<12} {access}  ({})\n",
            route.name
        ));
    }
    out
}

fn hash_secret() -> ExitCode {
    let secret = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        match terminal::read_secret_twice() {
            Ok(secret) => secret,
            Err(message) => {
                say(format_args!("{message}"));
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut secret = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut secret) {
            say(format_args!("stdin: {e}"));
            return ExitCode::FAILURE;
        }
        secret
    };
    let secret = secret.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        say(format_args!(
            "usage: printf '%s' \"$SECRET\" | scopegate hash-secret"
        ));
        return ExitCode::FAILURE;
    }
    match crate::issuer::clients::hash_secret(secret) {
        Ok(hash) => print(format!("{hash}\n").as_bytes()),
        Err(e) => {
            say(format_args!("hashing failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// `hash-secret` typed at a terminal: the secret is not echoed (it would
/// stay on screen and in the terminal's scrollback), so it is asked twice,
/// as `passwd` and `htpasswd` do, to catch a typo nobody could see.
mod terminal {
    use std::io::{BufRead, Write};

    /// Reads the secret twice with echo off; the two must agree.
    pub(super) fn read_secret_twice() -> Result<String, String> {
        let first = read_without_echo("secret: ")?;
        if first.is_empty() {
            return Err("the secret is empty; nothing was hashed".into());
        }
        let again = read_without_echo("the same secret again: ")?;
        if first != again {
            return Err("the two secrets differ; nothing was hashed".into());
        }
        Ok(first)
    }

    /// Prompts on stderr and reads one line from stdin with the terminal's
    /// echo off, putting the terminal back as it was however the read ends.
    fn read_without_echo(prompt: &str) -> Result<String, String> {
        let stdin = std::io::stdin();
        let echo = EchoOff::new(&stdin)?;
        let mut stderr = std::io::stderr().lock();
        let _ = stderr
            .write_all(prompt.as_bytes())
            .and_then(|()| stderr.flush());
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        drop(echo);
        // The Enter that ended the line was not echoed either.
        let _ = stderr.write_all(b"\n");
        read.map_err(|e| format!("stdin: {e}"))?;
        let secret = line.trim_end_matches(['\n', '\r']);
        Ok(secret.to_owned())
    }

    /// The terminal's settings before echo was turned off, put back on drop.
    #[cfg(unix)]
    struct EchoOff<'a> {
        stdin: &'a std::io::Stdin,
        before: rustix::termios::Termios,
    }

    #[cfg(unix)]
    impl<'a> EchoOff<'a> {
        fn new(stdin: &'a std::io::Stdin) -> Result<Self, String> {
            use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
            let before = tcgetattr(stdin).map_err(|e| format!("stdin: {e}"))?;
            let mut quiet = before.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            tcsetattr(stdin, OptionalActions::Flush, &quiet)
                .map_err(|e| format!("stdin: cannot turn the terminal's echo off: {e}"))?;
            Ok(Self { stdin, before })
        }
    }

    #[cfg(unix)]
    impl Drop for EchoOff<'_> {
        fn drop(&mut self) {
            let _ = rustix::termios::tcsetattr(
                self.stdin,
                rustix::termios::OptionalActions::Now,
                &self.before,
            );
        }
    }

    /// Elsewhere the secret is read as typed.
    #[cfg(not(unix))]
    struct EchoOff;

    #[cfg(not(unix))]
    impl EchoOff {
        fn new(_: &std::io::Stdin) -> Result<Self, String> {
            Ok(Self)
        }
    }
}

/// Writes `out` to standard output; a failed write (a full disk, a closed
/// pipe) fails the command rather than leave a cut-off file behind a success.
fn print(out: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format_args!("cannot write the output: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes `line` and a line break to standard error, and goes on if that
/// fails: `eprintln!` panics on a stderr it cannot write (`2>/dev/full`,
/// the closed pipe of `scopegate run 2>&1 | jq` once jq has quit), which
/// turned an exit status of 1 into a panic's 101, and a second signal's
/// exit into nothing.
pub fn say(line: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(line)
        .and_then(|()| stderr.write_all(b"\n"));
}

fn inject(file: &str, opts: &crate::inject::InjectOptions) -> ExitCode {
    let input = if file == "-" {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            say(format_args!(
                "reading manifests from standard input (end with Ctrl-D; or give -f FILE)"
            ));
        }
        let mut s = String::new();
        match std::io::stdin().read_to_string(&mut s) {
            Ok(_) => s,
            Err(e) => {
                say(format_args!("stdin: {e}"));
                return ExitCode::FAILURE;
            }
        }
    } else {
        match std::fs::read_to_string(file) {
            Ok(s) => s,
            Err(e) => {
                say(format_args!("{file}: {e}"));
                return ExitCode::FAILURE;
            }
        }
    };
    match crate::inject::inject_with_warnings(&input, opts) {
        Ok(injected) => {
            for warning in &injected.warnings {
                say(format_args!("{file}: warning: {warning}"));
            }
            print(injected.output.as_bytes())
        }
        Err(e) => {
            say(format_args!("{file}: {e}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `inject --help` states the defaults `InjectOptions` really has (the
    /// flags are `Option`s, so clap cannot show them by itself).
    #[test]
    fn inject_help_states_the_real_defaults() {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("inject")
            .unwrap()
            .render_help()
            .to_string();
        let defaults = crate::inject::InjectOptions::default();
        for shown in [
            defaults.image,
            defaults.config_map,
            defaults.proxy_port.to_string(),
            defaults.admin_port.to_string(),
            defaults.upstream_port.to_string(),
        ] {
            assert!(
                help.contains(&format!("[default: {shown}]")),
                "{shown} in {help}"
            );
        }
    }
}
