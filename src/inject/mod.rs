//! `scopegate inject`: add the scopegate native sidecar to Kubernetes manifests.
//!
//! Like `linkerd inject`, [`inject`] reads one or more YAML documents (separated
//! by `---`) and returns them with every pod template changed to run scopegate
//! in front of the app:
//!
//! - the sidecar goes first in `initContainers`, with `restartPolicy: Always`
//!   (a Kubernetes >= 1.29 *native sidecar*: it starts before the app
//!   containers and stops after them), the proxy and admin ports, startup,
//!   readiness and liveness probes on the admin port, resource requests and
//!   limits, a locked-down `securityContext`, and the config mounted as a
//!   directory at `/etc/scopegate` (so ConfigMap updates reach it and hot reload
//!   works: no `subPath`);
//! - a `scopegate-config` volume from the ConfigMap named in
//!   [`InjectOptions::config_map`] is added;
//! - the pod template is annotated with `scopegate.io/inject: injected` and
//!   `scopegate.io/upstream-port`;
//! - a pod that sets no `terminationGracePeriodSeconds` gets 60, time for
//!   the app's preStop sleep and the sidecar's drain; a shorter one it sets
//!   is kept, and [`inject_with_warnings`] reports it.
//!
//! Pod templates are found in `Deployment`, `StatefulSet`, `DaemonSet`,
//! `ReplicaSet`, `ReplicationController`, `Job` (`spec.template.spec`), `CronJob`
//! (`spec.jobTemplate.spec.template.spec`) and `Pod` (`spec`); the items of a
//! `List` are handled one by one. Every other kind passes through unchanged.
//!
//! Injection is idempotent: a pod spec that already has a container or init
//! container named `scopegate` is left exactly as it is, so injecting the output
//! again changes nothing.
//!
//! YAML is read as kubectl reads it (go-yaml v2, YAML 1.1): a plain `yes`,
//! `y`, `on` or `true` is the boolean true and `no`, `n`, `off` or `false`
//! false, each in lower case, capitalised or upper case (`hostNetwork: yes`
//! is a host-network pod; other spellings, `yEs`, stay strings); integers
//! with a leading `0` are octal (`defaultMode: 0644` means 420); quoted
//! scalars stay strings (`"8080"`, `"no"`). Booleans are written back as
//! `true` and `false`, and the output quotes every string that a YAML 1.1
//! reader could take for a number, boolean or null. Keys come out as their
//! text, so a plain key that kubectl reads as other text than written (`y`
//! is the key `"true"` to it, `0644` the key `"420"`, `~` no key at all) is
//! refused with its line and column ([`InjectError::AmbiguousKey`]): quoting
//! it keeps the text; `true`, `80` and the like, which kubectl keeps as
//! written, pass. A plain value kubectl reads as a number this reader does
//! not (go-yaml drops every `_` first: `1_000.5`, `1__0`) is refused the
//! same way ([`InjectError::AmbiguousNumber`]).
//! Comments, anchors and key order are not kept: keys come out sorted unless
//! `serde_json`'s `preserve_order` feature is on.
//!
//! A container port conflicts with the sidecar's when it has the proxy or
//! admin port's number and is TCP (Kubernetes' default): a UDP or SCTP port
//! of that number is another port. A `containerPort` written as a whole
//! float (`8080.0`) is that integer, as kubectl sends it; one that is no
//! number from 1 to 65535 is refused.

use std::fmt;

use serde_json::{json, Map, Value};

/// Name of the injected sidecar container; its presence makes injection a no-op.
pub const SIDECAR_NAME: &str = "scopegate";
/// Name of the pod volume holding scopegate's config.
pub const CONFIG_VOLUME: &str = "scopegate-config";
/// Directory where the config volume is mounted in the sidecar.
pub const CONFIG_DIR: &str = "/etc/scopegate";
/// Path of the config file the sidecar is started with.
pub const CONFIG_PATH: &str = "/etc/scopegate/scopegate.yaml";
/// Pod annotation set on injected pod templates, with the value `injected`.
pub const INJECT_ANNOTATION: &str = "scopegate.io/inject";
/// Pod annotation recording the app port scopegate forwards to.
pub const UPSTREAM_PORT_ANNOTATION: &str = "scopegate.io/upstream-port";
/// The uid and gid the sidecar runs as (distroless `nonroot`).
pub const SIDECAR_UID: u32 = 65532;

/// Container port name of the proxy listener (at most 15 characters).
const PROXY_PORT_NAME: &str = "scopegate-http";
/// Container port name of the admin listener (at most 15 characters).
const ADMIN_PORT_NAME: &str = "scopegate-admin";

/// What [`inject`] adds to each pod template.
///
/// The ports must match the `server.listen` and `admin.listen` ports in the
/// route map held by the ConfigMap, and `upstream_port` the app's port there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOptions {
    /// Container image of the sidecar.
    pub image: String,
    /// Name of the ConfigMap holding `scopegate.yaml`, mounted at `/etc/scopegate`.
    pub config_map: String,
    /// Port scopegate's proxy listens on (the port Services should target).
    pub proxy_port: u16,
    /// Port of scopegate's admin listener (`/metrics`, `/healthz`, `/readyz`); probed by kubelet.
    pub admin_port: u16,
    /// Port the app listens on (on loopback) and scopegate forwards to.
    pub upstream_port: u16,
    /// Inject into pods with `hostNetwork: true`, whose loopback is the
    /// node's: the app's port is then open to the node without scopegate.
    pub allow_host_network: bool,
}

impl Default for InjectOptions {
    /// `ghcr.io/scopegate/scopegate:0.1.0`, ConfigMap `scopegate-config`, ports 8080, 9090 and 3000.
    fn default() -> Self {
        Self {
            image: "ghcr.io/scopegate/scopegate:0.1.0".to_owned(),
            config_map: "scopegate-config".to_owned(),
            proxy_port: 8080,
            admin_port: 9090,
            upstream_port: 3000,
            allow_host_network: false,
        }
    }
}

/// Where in the input a problem is: the document, and the `List` item if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRef {
    /// 1-based position of the document in the input (empty documents count).
    pub document: usize,
    /// 1-based position within `items` when the document is a `List`.
    pub item: Option<usize>,
    /// `Kind/name` of the object, when it has them.
    pub object: String,
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        if !self.object.is_empty() {
            write!(f, " ({})", self.object)?;
        }
        Ok(())
    }
}

/// Why [`inject`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The input is not valid YAML.
    #[error("document {document}: invalid YAML{}: {message}", fmt_position(*.line, *.column))]
    Parse {
        /// 1-based position of the document in the input (empty documents count).
        document: usize,
        /// 1-based line in the whole input, when known.
        line: Option<u64>,
        /// 1-based column, when known.
        column: Option<u64>,
        /// What the YAML parser said.
        message: String,
    },
    /// A document is YAML but not a Kubernetes object that can be injected.
    #[error("{at}: {message}")]
    InvalidManifest {
        /// The offending document.
        at: DocRef,
        /// What is wrong with it.
        message: String,
    },
    /// An existing container already declares a port the sidecar needs; both
    /// share the pod's network namespace, so one of them could not bind it.
    #[error(
        "{at}: container {container:?} already uses port {port}, which the scopegate sidecar \
         needs as its {purpose} port; choose another one (--proxy-port / --admin-port, and the \
         same port in the route map's listen address)"
    )]
    PortConflict {
        /// The offending document.
        at: DocRef,
        /// The container declaring the port.
        container: String,
        /// The port number.
        port: u16,
        /// `proxy` or `admin`.
        purpose: &'static str,
    },
    /// A mapping key written plain (unquoted) that kubectl's YAML 1.1 reader
    /// takes for a boolean, a number or null, and so applies as another key
    /// than the text written (`y` as `"true"`, `0644` as `"420"`) or refuses.
    /// The output writes every key as its text (quoted where needed), so it
    /// cannot be kept: quoting it in the input keeps the text, writing what
    /// kubectl makes of it keeps that.
    #[error(
        "document {document}: the unquoted key {key:?} at line {line}, column {column} is \
         {reads_as} to kubectl (YAML 1.1), not the text {key:?}; quote it to keep it as \
         written"
    )]
    AmbiguousKey {
        /// 1-based position of the document in the input (empty documents count).
        document: usize,
        /// 1-based line of the key in the whole input.
        line: u64,
        /// 1-based column of the key.
        column: u64,
        /// The key as written.
        key: String,
        /// What kubectl reads it as, for the message (`the boolean true`).
        reads_as: String,
    },
    /// A value written plain (unquoted) that kubectl's YAML 1.1 reader
    /// takes for a number this reader does not (`1_000.5` is 1000.5 to
    /// go-yaml v2, which drops every `_` first): the output would carry
    /// another value than kubectl applies.
    #[error(
        "document {document}: the unquoted value {value:?} at line {line}, column {column} is \
         the number {number} to kubectl (YAML 1.1); write it as {number}, or quote it to keep \
         the text"
    )]
    AmbiguousNumber {
        /// 1-based position of the document in the input (empty documents count).
        document: usize,
        /// 1-based line of the value in the whole input.
        line: u64,
        /// 1-based column of the value.
        column: u64,
        /// The value as written.
        value: String,
        /// The number kubectl reads.
        number: String,
    },
    /// The [`InjectOptions`] are unusable.
    #[error("invalid inject options: {0}")]
    InvalidOptions(String),
    /// A document could not be written back as YAML.
    #[error("document {document}: cannot write YAML: {message}")]
    Serialize {
        /// 1-based position of the document in the input.
        document: usize,
        /// What the YAML writer said.
        message: String,
    },
}

/// Something [`inject_with_warnings`] did as asked but that may not work
/// as meant: the output is still written, and the operator told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectWarning {
    /// The document it is about.
    pub at: DocRef,
    /// What may go wrong, and what to do.
    pub message: String,
}

impl fmt::Display for InjectWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// What [`inject_with_warnings`] returns: the manifests and what to tell
/// the operator about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The documents, as [`inject`] returns them.
    pub output: String,
    /// In document order.
    pub warnings: Vec<InjectWarning>,
}

fn fmt_position(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// Add the scopegate sidecar to every pod template in `input`.
///
/// `input` holds one or more YAML documents separated by `---`. The result holds
/// the non-empty documents, in order, each ending in a newline, joined by
/// `---\n`. See the [module documentation](self) for what is changed.
///
/// # Errors
///
/// [`InjectError::Parse`] for invalid YAML (with the document and, where the
/// parser knows it, line and column), [`InjectError::AmbiguousKey`] for a
/// plain key kubectl would read as other text (with its line and column),
/// [`InjectError::AmbiguousNumber`] for a plain value kubectl would read as
/// a number this reader does not,
/// [`InjectError::InvalidManifest`] for a document that is not a mapping or
/// a workload whose pod spec is malformed (a `containerPort` that is no port
/// number too), [`InjectError::PortConflict`] when a container already
/// declares the proxy or admin port over TCP, and
/// [`InjectError::InvalidOptions`] for unusable `opts`.
pub fn inject(input: &str, opts: &InjectOptions) -> Result<String, InjectError> {
    inject_with_warnings(input, opts).map(|injected| injected.output)
}

/// [`inject`], and what the operator should be told about the result:
/// a pod whose own `terminationGracePeriodSeconds` is shorter than the
/// sidecar's drain needs (a live object from `kubectl get` carries the
/// API's default, 30), which is kept.
///
/// # Errors
///
/// As [`inject`].
pub fn inject_with_warnings(input: &str, opts: &InjectOptions) -> Result<Injected, InjectError> {
    validate_options(opts)?;
    let mut warnings = Vec::new();
    let mut out = String::with_capacity(input.len() + 2048);
    let mut first = true;
    for (index, chunk) in split_documents(input).iter().enumerate() {
        let document = index + 1;
        if !chunk.has_content {
            continue;
        }
        let mut value = parse_chunk(chunk, document)?;
        if value.is_null() {
            continue;
        }
        inject_document(&mut value, document, opts, &mut warnings)?;
        let yaml = serde_saphyr::to_string(&value).map_err(|e| InjectError::Serialize {
            document,
            message: e.to_string(),
        })?;
        if !first {
            out.push_str("---\n");
        }
        first = false;
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(Injected {
        output: out,
        warnings,
    })
}

fn validate_options(opts: &InjectOptions) -> Result<(), InjectError> {
    let bad = |m: String| Err(InjectError::InvalidOptions(m));
    if opts.image.trim().is_empty() || opts.image.chars().any(char::is_whitespace) {
        return bad(format!(
            "image {:?} is empty or contains whitespace",
            opts.image
        ));
    }
    if !is_dns_subdomain(&opts.config_map) {
        return bad(format!(
            "config map name {:?} is not a valid Kubernetes name (lowercase letters, digits, '-' \
             and '.', starting and ending with a letter or digit, at most 253 characters)",
            opts.config_map
        ));
    }
    let ports = [
        ("proxy", opts.proxy_port),
        ("admin", opts.admin_port),
        ("upstream", opts.upstream_port),
    ];
    for (name, port) in ports {
        if port == 0 {
            return bad(format!("{name} port must be between 1 and 65535"));
        }
    }
    for (i, (a, pa)) in ports.iter().enumerate() {
        for (b, pb) in ports.iter().skip(i + 1) {
            if pa == pb {
                return bad(format!("{a} and {b} ports are both {pa}; they must differ"));
            }
        }
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(ok_char)
        && alnum(s.chars().next())
        && alnum(s.chars().last())
}

// ---------------------------------------------------------------------------
// Splitting and parsing

/// One `---`-separated document of the input.
#[derive(Debug)]
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line of the input on which `text` starts.
    first_line: u64,
    /// Whether it has anything besides blank lines, comments, directives and markers.
    has_content: bool,
}

/// Whether `line` starts with the three-character marker `m` followed by
/// whitespace or the end of the line (`---`, `--- |`, but not `----`).
fn is_marker(line: &str, m: &str) -> bool {
    line.strip_prefix(m)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Split a YAML stream at its document markers, keeping line numbers.
///
/// A `---` line starts a new document unless the current one holds only
/// comments, blank lines and directives (a leading marker); a `...` line ends
/// the current document. Markers only count at column 0, where YAML forbids them
/// inside a document, so block and quoted scalars cannot contain them.
fn split_documents(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut has_content = false;
    let mut has_marker = false;
    let mut offset = 0usize;
    for (line_no, line) in (1u64..).zip(input.split_inclusive('\n')) {
        if is_marker(line, "---") {
            if has_content || has_marker {
                chunks.push(Chunk {
                    text: &input[start..offset],
                    first_line: start_line,
                    has_content,
                });
                start = offset;
                start_line = line_no;
                has_content = false;
            }
            has_marker = true;
            // Content on the marker line itself: `--- {a: 1}`, `--- !tag`, `--- |`.
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                has_content = true;
            }
        } else if is_marker(line, "...") {
            let end = offset + line.len();
            chunks.push(Chunk {
                text: &input[start..end],
                first_line: start_line,
                has_content,
            });
            start = end;
            start_line = line_no + 1;
            has_content = false;
            has_marker = false;
        } else {
            let t = line.trim();
            let directive = !has_marker && !has_content && line.starts_with('%');
            if !t.is_empty() && !t.starts_with('#') && !directive {
                has_content = true;
            }
        }
        offset += line.len();
    }
    if start < input.len() || chunks.is_empty() {
        chunks.push(Chunk {
            text: &input[start..],
            first_line: start_line,
            has_content,
        });
    }
    chunks
}

/// The plain scalars go-yaml v2 (kubectl's reader) takes for booleans
/// besides `true`/`True`/`TRUE` and `false`/`False`/`FALSE`: the YAML 1.1
/// spellings, in these cases only.
const YAML11_BOOLEANS: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off",
    "OFF",
];

fn parse_chunk(chunk: &Chunk<'_>, document: usize) -> Result<Value, InjectError> {
    // YAML 1.1 booleans (`yes`, `on`, `n`), as kubectl has them; and
    // Kubernetes (go-yaml) reads `0644` as octal: keep that meaning.
    let yaml11 = serde_saphyr::options! {
        legacy_octal_numbers: true,
        with_snippet: false,
    };
    let mut value = serde_saphyr::from_str_with_options::<Value>(chunk.text, yaml11).map_err(
        // A null or tagged key fails here: said as the key it is.
        |e| match check_keys(chunk, document) {
            Err(key @ InjectError::AmbiguousKey { .. }) => key,
            _ => parse_error(&e, chunk, document),
        },
    )?;
    // The parser takes those spellings in any case (`yEs`), which go-yaml
    // keeps as strings: read with YAML 1.2 booleans, where a plain `yEs`
    // stays a string, to find them. (An explicit `!!bool yes` fails there:
    // then there is nothing to find.)
    let yaml12 = serde_saphyr::options! {
        strict_booleans: true,
        legacy_octal_numbers: true,
        with_snippet: false,
    };
    if let Ok(strings) = serde_saphyr::from_str_with_options::<Value>(chunk.text, yaml12) {
        keep_go_yaml_strings(&mut value, strings);
    }
    // Keys are read as text, but kubectl reads a plain `y` or `0644` key
    // as a boolean or number, and writes that back as another key.
    check_keys(chunk, document)?;
    Ok(value)
}

/// Refuses the first mapping key of `chunk` that kubectl would apply as
/// another key than the text written (see [`InjectError::AmbiguousKey`]):
/// a plain one it takes for a boolean, number or null, a key tagged
/// `!!int`, `!!bool` and so on, or an alias of such a scalar.
fn check_keys(chunk: &Chunk<'_>, document: usize) -> Result<(), InjectError> {
    use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};

    /// A collection the walk is in; for a mapping, whether a key comes next.
    enum Open {
        Sequence,
        Mapping { key_next: bool },
    }
    /// A node ended: in a mapping, a key is followed by a value and that by a key.
    fn ended(open: &mut [Open]) {
        if let Some(Open::Mapping { key_next }) = open.last_mut() {
            *key_next = !*key_next;
        }
    }

    let mut open: Vec<Open> = Vec::new();
    // What an anchored scalar reads as when an alias makes it a key.
    let mut anchored: std::collections::HashMap<usize, (String, Option<String>)> =
        std::collections::HashMap::new();
    for event in Parser::new_from_str(chunk.text) {
        let (event, span) = event.map_err(|e| {
            let marker = e.marker();
            InjectError::Parse {
                document,
                line: u64::try_from(marker.line())
                    .ok()
                    .map(|line| line + chunk.first_line - 1),
                column: u64::try_from(marker.col() + 1).ok(),
                message: e.info(),
            }
        })?;
        let is_key = matches!(open.last(), Some(Open::Mapping { key_next: true }));
        let (key, reads_as) = match event {
            Event::SequenceStart(..) => {
                open.push(Open::Sequence);
                continue;
            }
            Event::MappingStart(..) => {
                open.push(Open::Mapping { key_next: true });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                open.pop();
                ended(&mut open);
                continue;
            }
            Event::Scalar(text, style, anchor, tag) => {
                if !is_key && style == ScalarStyle::Plain && tag.is_none() {
                    if let Some(number) = go_number_read_otherwise(&text) {
                        return Err(InjectError::AmbiguousNumber {
                            document,
                            line: u64::try_from(span.start.line()).unwrap_or(0) + chunk.first_line
                                - 1,
                            column: u64::try_from(span.start.col() + 1).unwrap_or(0),
                            value: text.to_string(),
                            number: number.to_string(),
                        });
                    }
                }
                let reads_as = match tag.as_deref() {
                    Some(tag) => tagged_key_reading(tag.handle(), tag.suffix()),
                    None if style == ScalarStyle::Plain => plain_key_reading(&text),
                    None => None,
                };
                if anchor != 0 {
                    anchored.insert(anchor, (text.to_string(), reads_as.clone()));
                }
                (text.to_string(), reads_as)
            }
            Event::Alias(anchor) => anchored
                .get(&anchor)
                .cloned()
                .unwrap_or_else(|| (String::new(), None)),
            _ => continue,
        };
        if let (true, Some(reads_as)) = (is_key, reads_as) {
            return Err(InjectError::AmbiguousKey {
                document,
                line: u64::try_from(span.start.line()).unwrap_or(0) + chunk.first_line - 1,
                column: u64::try_from(span.start.col() + 1).unwrap_or(0),
                key,
                reads_as,
            });
        }
        ended(&mut open);
    }
    Ok(())
}

/// The plain scalars go-yaml v2 takes for `true`, and for `false`.
const GO_YAML_TRUE: [&str; 11] = [
    "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE",
];
const GO_YAML_FALSE: [&str; 11] = [
    "n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE",
];

/// What kubectl reads a plain mapping key `text` as, where that is not
/// the text itself: go-yaml v2 resolves it (to a boolean, an integer, a
/// float or null) and sigs.k8s.io/yaml writes the key back (`true`,
/// decimal digits, Go's shortest float notation) or refuses it (null).
/// `None` where the key stays the text: a string, or a value kubectl
/// writes back as exactly `text` (`true`, `80`). A float is always named,
/// even where its notation would come out the same (`1.5`).
fn plain_key_reading(text: &str) -> Option<String> {
    if text == "true" || text == "false" {
        return None;
    }
    if GO_YAML_TRUE.contains(&text) {
        return Some("the boolean true (the key \"true\")".to_owned());
    }
    if GO_YAML_FALSE.contains(&text) {
        return Some("the boolean false (the key \"false\")".to_owned());
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Some("null, which kubectl refuses as a key".to_owned());
    }
    let float = "a floating-point number (a key in Go's float notation)";
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF")
        || (unsigned.len() == text.len() && matches!(text, ".nan" | ".NaN" | ".NAN"))
    {
        return Some(float.to_owned());
    }
    match text.as_bytes().first() {
        Some(b'+' | b'-' | b'0'..=b'9') => {
            // go-yaml v2 drops underscores before reading a number.
            let plain = text.replace('_', "");
            if let Some(number) = go_integer(&plain) {
                return match number {
                    Some(n) if i64::try_from(n).is_ok() && n.to_string() == text => None,
                    Some(n) if i64::try_from(n).is_ok() => {
                        Some(format!("the number {n} (the key \"{n}\")"))
                    }
                    _ => Some("a number too large for kubectl's keys".to_owned()),
                };
            }
            is_go_yaml_float(&plain).then(|| float.to_owned())
        }
        Some(b'.') => is_go_yaml_float(text).then(|| float.to_owned()),
        _ => None,
    }
}

/// The number go-yaml v2 reads a plain value `text` as, where this
/// reader (serde-saphyr with [`parse_chunk`]'s options) reads another value:
/// go-yaml drops every `_` before reading a number (`1_000.5`, `1__0`,
/// `1_`), serde-saphyr only single ones between digits of an integer.
fn go_number_read_otherwise(text: &str) -> Option<f64> {
    if !matches!(
        text.as_bytes().first(),
        Some(b'+' | b'-' | b'.' | b'0'..=b'9')
    ) {
        return None;
    }
    let plain = text.replace('_', "");
    let go = match go_integer(&plain) {
        // A decimal integer past i64 (and u64) is read by the float rule.
        Some(Some(n)) if i64::try_from(n).is_ok() || u64::try_from(n).is_ok() => n as f64,
        _ if is_go_yaml_float(&plain) => plain.parse::<f64>().ok()?,
        _ => return None,
    };
    let options = serde_saphyr::options! {
        legacy_octal_numbers: true,
        with_snippet: false,
    };
    let ours = serde_saphyr::from_str_with_options::<Value>(text, options).ok();
    match ours.as_ref().and_then(Value::as_f64) {
        Some(n) if n == go => None,
        _ => Some(go),
    }
}

/// What kubectl reads a key tagged `handle` `suffix` as, where that may
/// not be its text: a core-schema tag other than `!!str` (`!!int 0644`,
/// `!!bool yes`). Other tags leave it a string.
fn tagged_key_reading(handle: &str, suffix: &str) -> Option<String> {
    (handle == "tag:yaml.org,2002:" && suffix != "str")
        .then(|| format!("a `!!{suffix}` scalar, whose key may be other text"))
}

/// `text` (without underscores) as Go's `strconv.ParseInt(text, 0, 64)`
/// reads it: an optional sign, then `0x`, `0o` or `0b` and digits of that
/// base, `0` and octal digits, or decimal digits. `None` when it is not
/// such a number; `Some(None)` when it is, but too large to hold.
fn go_integer(text: &str) -> Option<Option<i128>> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = unsigned.get(..2).map(str::to_ascii_lowercase);
    let (radix, digits) = match lower.as_deref() {
        Some("0x") => (16, &unsigned[2..]),
        Some("0o") => (8, &unsigned[2..]),
        Some("0b") => (2, &unsigned[2..]),
        _ if unsigned.len() > 1 && unsigned.starts_with('0') => (8, &unsigned[1..]),
        _ => (10, unsigned),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(
        i128::from_str_radix(digits, radix)
            .ok()
            .map(|n| if negative { -n } else { n }),
    )
}

/// Whether `text` is a float to go-yaml v2:
/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_go_yaml_float(text: &str) -> bool {
    let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = text.strip_prefix(['+', '-']).unwrap_or(text);
    let rest = if let Some(fraction) = rest.strip_prefix('.') {
        let n = digits(fraction);
        if n == 0 {
            return false;
        }
        &fraction[n..]
    } else {
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        let rest = &rest[n..];
        match rest.strip_prefix('.') {
            Some(fraction) => &fraction[digits(fraction)..],
            None => rest,
        }
    };
    match rest.strip_prefix(['e', 'E']) {
        None => rest.is_empty(),
        Some(exponent) => {
            let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            !exponent.is_empty() && digits(exponent) == exponent.len()
        }
    }
}

/// Turns back into strings the booleans of `yaml11` that `yaml12` (the
/// same text read with YAML 1.2 booleans) has as strings go-yaml v2 does
/// not take for booleans.
fn keep_go_yaml_strings(yaml11: &mut Value, yaml12: Value) {
    match (yaml11, yaml12) {
        (value @ Value::Bool(_), Value::String(text))
            if !YAML11_BOOLEANS.contains(&text.as_str()) =>
        {
            *value = Value::String(text);
        }
        (Value::Array(items), Value::Array(strings)) => {
            for (item, string) in items.iter_mut().zip(strings) {
                keep_go_yaml_strings(item, string);
            }
        }
        (Value::Object(members), Value::Object(strings)) => {
            for (key, string) in strings {
                if let Some(member) = members.get_mut(&key) {
                    keep_go_yaml_strings(member, string);
                }
            }
        }
        _ => {}
    }
}

/// `e`, from parsing `chunk`, as an [`InjectError::Parse`] with the
/// position in the whole input.
fn parse_error(e: &serde_saphyr::Error, chunk: &Chunk<'_>, document: usize) -> InjectError {
    let location = e.location().filter(|l| l.line() > 0);
    let line = location.map(|l| l.line() + chunk.first_line - 1);
    let column = location.map(|l| l.column()).filter(|c| *c > 0);
    let mut message = e.to_string();
    // The parser appends its own (chunk-relative) position; ours replaces it.
    if let Some(l) = location {
        let suffix = format!(" at line {}, column {}", l.line(), l.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
    }
    // Advice aimed at programs using the parser, not at people writing YAML.
    if let Some((head, _)) = message.split_once(", set DuplicateKeyPolicy") {
        message = head.to_owned();
    }
    InjectError::Parse {
        document,
        line,
        column,
        message,
    }
}

// ---------------------------------------------------------------------------
// Injection

/// The pod's `terminationGracePeriodSeconds` when it sets none: the base
/// manifests' budget for the app's preStop sleep and the gateway's drain.
const TERMINATION_GRACE_SECONDS: i64 = 60;

/// The kinds injected: each one's `apiVersion` and where its pod (the
/// object holding the pod's `metadata` and `spec`) is.
const INJECTED_KINDS: [(&str, &str, &[&str]); 8] = [
    ("Pod", "v1", &[]),
    ("Deployment", "apps/v1", &["spec", "template"]),
    ("StatefulSet", "apps/v1", &["spec", "template"]),
    ("DaemonSet", "apps/v1", &["spec", "template"]),
    ("ReplicaSet", "apps/v1", &["spec", "template"]),
    ("ReplicationController", "v1", &["spec", "template"]),
    ("Job", "batch/v1", &["spec", "template"]),
    (
        "CronJob",
        "batch/v1",
        &["spec", "jobTemplate", "spec", "template"],
    ),
];

fn object_name(obj: &Map<String, Value>) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("");
    match (kind.is_empty(), name.is_empty()) {
        (true, _) => String::new(),
        (false, true) => kind.to_owned(),
        (false, false) => format!("{kind}/{name}"),
    }
}

fn inject_document(
    value: &mut Value,
    document: usize,
    opts: &InjectOptions,
    warnings: &mut Vec<InjectWarning>,
) -> Result<(), InjectError> {
    let Value::Object(obj) = value else {
        return Err(InjectError::InvalidManifest {
            at: DocRef {
                document,
                item: None,
                object: String::new(),
            },
            message: "not a Kubernetes object (expected a mapping with apiVersion and kind)"
                .to_owned(),
        });
    };
    if obj.get("kind").and_then(Value::as_str) == Some("List") {
        let at = DocRef {
            document,
            item: None,
            object: object_name(obj),
        };
        let items = match obj.get_mut("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(InjectError::InvalidManifest {
                    at,
                    message: "`items` of a List must be a sequence".to_owned(),
                })
            }
        };
        for (i, item) in items.iter_mut().enumerate() {
            let mut at = DocRef {
                document,
                item: Some(i + 1),
                object: String::new(),
            };
            let Value::Object(item) = item else {
                return Err(InjectError::InvalidManifest {
                    at,
                    message: "List item is not a Kubernetes object".to_owned(),
                });
            };
            at.object = object_name(item);
            inject_object(item, &at, opts, warnings)?;
        }
        return Ok(());
    }
    let at = DocRef {
        document,
        item: None,
        object: object_name(obj),
    };
    inject_object(obj, &at, opts, warnings)
}

/// Inject one object (not a List). Other kinds are left alone.
fn inject_object(
    obj: &mut Map<String, Value>,
    at: &DocRef,
    opts: &InjectOptions,
    warnings: &mut Vec<InjectWarning>,
) -> Result<(), InjectError> {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(&(_, wanted, path)) = INJECTED_KINDS.iter().find(|(k, _, _)| *k == kind) else {
        return Ok(());
    };
    // A custom resource may share a built-in kind's name (Volcano's `Job`):
    // it is left alone. Without an `apiVersion`, the built-in is meant; an
    // older version of a built-in group is refused rather than passed on
    // without the sidecar (native sidecars need 1.29, which serves none).
    if let Some(api) = obj.get("apiVersion").and_then(Value::as_str) {
        if api != wanted {
            let group = api.rsplit_once('/').map_or("", |(group, _)| group);
            if matches!(group, "" | "apps" | "extensions" | "batch") {
                return Err(invalid(
                    at,
                    format!("{kind} of apiVersion `{api}` cannot take a native sidecar: use `{wanted}` (Kubernetes 1.29 or later)"),
                ));
            }
            return Ok(());
        }
    }
    // `template` is the object holding `metadata` and `spec` of the pod: the
    // Pod itself, or the workload's pod template.
    let mut template = obj;
    let mut walked = String::new();
    for key in path {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(key);
        template = match template.get_mut(*key) {
            Some(Value::Object(next)) => next,
            _ => {
                return Err(invalid(at, format!("{kind} has no `{walked}` mapping")));
            }
        };
    }
    let spec_path = if walked.is_empty() {
        "spec".to_owned()
    } else {
        format!("{walked}.spec")
    };
    let Some(Value::Object(pod_spec)) = template.get_mut("spec") else {
        return Err(invalid(at, format!("{kind} has no `{spec_path}` mapping")));
    };
    if !inject_pod_spec(pod_spec, at, &spec_path, opts, warnings)? {
        return Ok(());
    }
    annotate(template, at, opts)
}

fn invalid(at: &DocRef, message: String) -> InjectError {
    InjectError::InvalidManifest {
        at: at.clone(),
        message,
    }
}

/// Get `key` of `map` as a sequence, creating it if absent.
fn sequence<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
    at: &DocRef,
    path: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let slot = map.entry(key.to_owned()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(items) => Ok(items),
        _ => Err(invalid(at, format!("`{path}.{key}` must be a sequence"))),
    }
}

/// Add the sidecar and its volume. Returns false when the sidecar was already there.
fn inject_pod_spec(
    pod_spec: &mut Map<String, Value>,
    at: &DocRef,
    path: &str,
    opts: &InjectOptions,
    warnings: &mut Vec<InjectWarning>,
) -> Result<bool, InjectError> {
    // Check everything before changing anything. Already injected (with
    // whatever flags it took then): nothing to check or change.
    for key in ["containers", "initContainers"] {
        let containers = match pod_spec.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(c)) => c,
            Some(_) => return Err(invalid(at, format!("`{path}.{key}` must be a sequence"))),
        };
        for c in containers {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name == SIDECAR_NAME {
                return Ok(false);
            }
        }
    }
    if pod_spec.get("hostNetwork") == Some(&Value::Bool(true)) && !opts.allow_host_network {
        return Err(invalid(
            at,
            format!(
                "`{path}.hostNetwork` is true: the pod's loopback is the node's, so the app's \
                 port would be open to every process on the node without scopegate (pass \
                 --allow-host-network to inject anyway)"
            ),
        ));
    }
    for key in ["containers", "initContainers"] {
        let Some(Value::Array(containers)) = pod_spec.get(key) else {
            continue;
        };
        for (c_index, c) in containers.iter().enumerate() {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            let Some(Value::Array(ports)) = c.get("ports") else {
                continue;
            };
            for (p_index, p) in ports.iter().enumerate() {
                let port = match p.get("containerPort") {
                    None | Some(Value::Null) => continue,
                    Some(value) => port_number(value).ok_or_else(|| {
                        invalid(
                            at,
                            format!(
                                "`{path}.{key}[{c_index}].ports[{p_index}].containerPort` of \
                                 container {name:?} is {value}, not a port number (an integer \
                                 from 1 to 65535)"
                            ),
                        )
                    })?,
                };
                // The sidecar listens on TCP; a UDP or SCTP port of the same
                // number is another port (Kubernetes' default is TCP).
                if matches!(
                    p.get("protocol").and_then(Value::as_str),
                    Some("UDP" | "SCTP")
                ) {
                    continue;
                }
                for (purpose, wanted) in [("proxy", opts.proxy_port), ("admin", opts.admin_port)] {
                    if port == wanted {
                        return Err(InjectError::PortConflict {
                            at: at.clone(),
                            container: name.to_owned(),
                            port: wanted,
                            purpose,
                        });
                    }
                }
            }
        }
    }
    let mut add_volume = true;
    if let Some(v) = pod_spec.get("volumes") {
        match v {
            Value::Null => {}
            Value::Array(volumes) => {
                for vol in volumes {
                    if vol.get("name").and_then(Value::as_str) == Some(CONFIG_VOLUME) {
                        if vol.get("configMap").is_none() {
                            return Err(invalid(
                                at,
                                format!(
                                    "volume {CONFIG_VOLUME:?} already exists and is not a \
                                     ConfigMap volume"
                                ),
                            ));
                        }
                        // An existing ConfigMap volume of that name is the user's choice: keep it.
                        add_volume = false;
                    }
                }
            }
            _ => return Err(invalid(at, format!("`{path}.volumes` must be a sequence"))),
        }
    }

    // Kubernetes' default of 30 s is less than the gateway's own drain
    // (`shutdown_delay` 5 s + `shutdown_grace` 30 s), which a native sidecar
    // starts only once the app has stopped: the base's budget, when the pod
    // sets none. A shorter one the pod sets (every live object carries the
    // API's 30) is the operator's to change: said, and kept.
    let grace = pod_spec
        .entry("terminationGracePeriodSeconds".to_owned())
        .or_insert(Value::Null);
    if grace.is_null() {
        *grace = json!(TERMINATION_GRACE_SECONDS);
    } else if let Some(seconds) = grace.as_i64().filter(|&s| s < TERMINATION_GRACE_SECONDS) {
        warnings.push(InjectWarning {
            at: at.clone(),
            message: format!(
                "`{path}.terminationGracePeriodSeconds` is {seconds}, less than the \
                 {TERMINATION_GRACE_SECONDS} s the app's preStop sleep and scopegate's drain \
                 (shutdown_delay 5 s + shutdown_grace 30 s by default) take: the sidecar may be \
                 killed while requests are in flight; kept as it is (a live object from `kubectl \
                 get` carries the API's default of 30): set it to {TERMINATION_GRACE_SECONDS} or \
                 more"
            ),
        });
    }
    sequence(pod_spec, "initContainers", at, path)?.insert(0, sidecar(opts));
    if add_volume {
        sequence(pod_spec, "volumes", at, path)?.push(json!({
            "name": CONFIG_VOLUME,
            "configMap": { "name": opts.config_map },
        }));
    }
    Ok(true)
}

/// The port a `containerPort` holds, as kubectl sends it: a whole number
/// written as a float (`8080.0`, `!!float 8080`) is that integer. `None`
/// for anything but a number from 1 to 65535.
fn port_number(value: &Value) -> Option<u16> {
    let number = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (1.0..=65535.0).contains(f))
            .map(|f| f as u64)
    })?;
    u16::try_from(number).ok().filter(|&port| port != 0)
}

/// Annotate the pod template (or Pod) so the injection is visible.
fn annotate(
    template: &mut Map<String, Value>,
    at: &DocRef,
    opts: &InjectOptions,
) -> Result<(), InjectError> {
    let metadata = template.entry("metadata".to_owned()).or_insert(Value::Null);
    if metadata.is_null() {
        *metadata = Value::Object(Map::new());
    }
    let Value::Object(metadata) = metadata else {
        return Err(invalid(at, "pod `metadata` must be a mapping".to_owned()));
    };
    let annotations = metadata
        .entry("annotations".to_owned())
        .or_insert(Value::Null);
    if annotations.is_null() {
        *annotations = Value::Object(Map::new());
    }
    let Value::Object(annotations) = annotations else {
        return Err(invalid(
            at,
            "pod `metadata.annotations` must be a mapping".to_owned(),
        ));
    };
    annotations.insert(INJECT_ANNOTATION.to_owned(), json!("injected"));
    annotations.insert(
        UPSTREAM_PORT_ANNOTATION.to_owned(),
        Value::String(opts.upstream_port.to_string()),
    );
    Ok(())
}

/// The sidecar container.
fn sidecar(opts: &InjectOptions) -> Value {
    let probe = |path: &str, period: u32, timeout: u32, failures: u32| {
        json!({
            "httpGet": { "path": path, "port": opts.admin_port },
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": failures,
        })
    };
    json!({
        "name": SIDECAR_NAME,
        "image": opts.image,
        "restartPolicy": "Always",
        "args": ["run", "--config", CONFIG_PATH],
        "ports": [
            { "name": PROXY_PORT_NAME, "containerPort": opts.proxy_port, "protocol": "TCP" },
            { "name": ADMIN_PORT_NAME, "containerPort": opts.admin_port, "protocol": "TCP" },
        ],
        "startupProbe": probe("/healthz", 1, 1, 30),
        "readinessProbe": probe("/readyz", 5, 1, 2),
        "livenessProbe": probe("/healthz", 10, 2, 3),
        "resources": {
            // As the base: a full verified-token cache measured 110-116 MB.
            "requests": { "cpu": "50m", "memory": "128Mi" },
            "limits": { "cpu": "1", "memory": "256Mi" },
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": [
            { "name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true },
        ],
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    /// The documents of `yaml`, read as [`inject`] (and kubectl) reads them.
    fn parse_all(yaml: &str) -> Vec<Value> {
        split_documents(yaml)
            .iter()
            .enumerate()
            .filter(|(_, chunk)| chunk.has_content)
            .map(|(i, chunk)| parse_chunk(chunk, i + 1).expect("test YAML parses"))
            .filter(|doc| !doc.is_null())
            .collect()
    }

    fn inject_default(yaml: &str) -> String {
        inject(yaml, &InjectOptions::default()).expect("inject succeeds")
    }

    /// The injected sidecar asks for what the base Deployment's sidecar
    /// does (deploy/README.md promises the same resources and security
    /// context), so that a change to one cannot leave the other behind.
    #[test]
    fn the_sidecar_matches_the_base_deployments() {
        let base = parse_all(include_str!("../../deploy/kubernetes/base/deployment.yaml"));
        let deployment = base
            .iter()
            .find(|doc| doc["kind"] == "Deployment")
            .expect("a Deployment");
        let inits = pointer(deployment, "/spec/template/spec/initContainers");
        let from_base = inits
            .as_array()
            .and_then(|inits| inits.iter().find(|c| c["name"] == "scopegate"))
            .expect("the base's scopegate sidecar");
        let injected = sidecar(&InjectOptions::default());
        for field in ["resources", "securityContext", "restartPolicy"] {
            assert_eq!(injected[field], from_base[field], "{field}");
        }
    }

    fn pointer<'a>(v: &'a Value, p: &str) -> &'a Value {
        v.pointer(p)
            .unwrap_or_else(|| panic!("missing {p} in {v:#}"))
    }

    /// Asserts the pod spec at `p` got exactly one sidecar, first, and the volume.
    fn assert_injected(doc: &Value, p: &str) {
        let spec = pointer(doc, p);
        let inits = spec["initContainers"].as_array().expect("initContainers");
        assert_eq!(inits[0]["name"], "scopegate");
        assert_eq!(inits[0]["restartPolicy"], "Always");
        assert_eq!(
            inits.iter().filter(|c| c["name"] == "scopegate").count(),
            1,
            "one sidecar"
        );
        let c = &inits[0];
        assert_eq!(c["image"], "ghcr.io/scopegate/scopegate:0.1.0");
        assert_eq!(
            c["args"],
            json!(["run", "--config", "/etc/scopegate/scopegate.yaml"])
        );
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(c["ports"][1]["containerPort"], 9090);
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"], 9090, "{probe}");
        }
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["runAsUser"], 65532);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(
            c["volumeMounts"],
            json!([{ "name": "scopegate-config", "mountPath": "/etc/scopegate", "readOnly": true }])
        );
        assert!(c["volumeMounts"][0].get("subPath").is_none());
        let vols = spec["volumes"].as_array().expect("volumes");
        let cfg: Vec<_> = vols
            .iter()
            .filter(|v| v["name"] == "scopegate-config")
            .collect();
        assert_eq!(cfg.len(), 1);
        assert_eq!(cfg[0]["configMap"]["name"], "scopegate-config");
    }

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: app
          image: example/web:1.2.3
          ports:
            - containerPort: 3000
          volumeMounts:
            - name: data
              mountPath: /data
      volumes:
        - name: data
          emptyDir: {}
"#;

    #[test]
    fn deployment_gets_sidecar_volume_and_annotations() {
        let out = inject_default(DEPLOYMENT);
        let docs = parse_all(&out);
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_injected(d, "/spec/template/spec");
        // Existing content is kept.
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["name"],
            "app"
        );
        assert_eq!(d["spec"]["template"]["spec"]["volumes"][0]["name"], "data");
        assert_eq!(
            d["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        let ann = &d["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(ann["scopegate.io/inject"], "injected");
        assert_eq!(ann["scopegate.io/upstream-port"], "3000");
        assert!(ann["scopegate.io/upstream-port"].is_string());
        // Nothing is added outside the pod template.
        assert!(d["metadata"].get("annotations").is_none());
    }

    #[test]
    fn statefulset_daemonset_replicaset_replicationcontroller_job() {
        for (api, kind) in [
            ("apps/v1", "StatefulSet"),
            ("apps/v1", "DaemonSet"),
            ("apps/v1", "ReplicaSet"),
            ("v1", "ReplicationController"),
            ("batch/v1", "Job"),
        ] {
            let yaml = format!(
                "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\nspec:\n  template:\n    \
                 spec:\n      containers:\n        - name: app\n          image: app:1\n"
            );
            let docs = parse_all(&inject_default(&yaml));
            assert_injected(&docs[0], "/spec/template/spec");
        }
    }

    #[test]
    fn statefulset_keeps_existing_init_containers_after_the_sidecar() {
        let yaml = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      initContainers:
        - name: migrate
          image: db-migrate:1
      containers:
        - name: app
          image: db:1
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 1Gi}}
"#;
        let docs = parse_all(&inject_default(yaml));
        assert_injected(&docs[0], "/spec/template/spec");
        let inits = pointer(&docs[0], "/spec/template/spec/initContainers");
        assert_eq!(inits[1]["name"], "migrate");
        assert_eq!(
            pointer(
                &docs[0],
                "/spec/volumeClaimTemplates/0/spec/resources/requests/storage"
            ),
            "1Gi"
        );
    }

    #[test]
    fn host_network_pods_only_when_allowed() {
        let yaml = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  \
                    selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: \
                    {app: agent}}\n    spec:\n      hostNetwork: true\n      containers: [{name: \
                    agent, image: agent:1}]\n";
        let refused = inject(yaml, &InjectOptions::default())
            .unwrap_err()
            .to_string();
        assert!(refused.contains("hostNetwork"), "{refused}");
        let opts = InjectOptions {
            allow_host_network: true,
            ..InjectOptions::default()
        };
        let injected = inject(yaml, &opts).unwrap();
        let docs = parse_all(&injected);
        assert_injected(&docs[0], "/spec/template/spec");
        assert_eq!(pointer(&docs[0], "/spec/template/spec/hostNetwork"), true);
        // Injected once, allowed then: again without the flag changes nothing.
        let again = inject(&injected, &InjectOptions::default()).unwrap();
        assert_eq!(parse_all(&again), docs);
    }

    #[test]
    fn a_pod_without_a_termination_grace_period_gets_the_bases() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n    \
                    - name: app\n      image: app:1\n";
        let docs = parse_all(&inject_default(yaml));
        assert_eq!(pointer(&docs[0], "/spec/terminationGracePeriodSeconds"), 60);
        // One the pod sets is the operator's; a null one is unset.
        let own = yaml.replace("spec:\n", "spec:\n  terminationGracePeriodSeconds: 120\n");
        let docs = parse_all(&inject_default(&own));
        assert_eq!(
            pointer(&docs[0], "/spec/terminationGracePeriodSeconds"),
            120
        );
        // A shorter one is kept too, and said.
        let short = yaml.replace("spec:\n", "spec:\n  terminationGracePeriodSeconds: 30\n");
        let injected = inject_with_warnings(&short, &InjectOptions::default()).unwrap();
        let docs = parse_all(&injected.output);
        assert_eq!(pointer(&docs[0], "/spec/terminationGracePeriodSeconds"), 30);
        assert_eq!(injected.warnings.len(), 1, "{:?}", injected.warnings);
        assert_eq!(injected.warnings[0].at.object, "Pod/p");
        for quiet in [yaml.to_owned(), own] {
            let injected = inject_with_warnings(&quiet, &InjectOptions::default()).unwrap();
            assert_eq!(injected.warnings, [], "{quiet}");
        }
        let null = yaml.replace("spec:\n", "spec:\n  terminationGracePeriodSeconds: null\n");
        let docs = parse_all(&inject_default(&null));
        assert_eq!(pointer(&docs[0], "/spec/terminationGracePeriodSeconds"), 60);
    }

    #[test]
    fn custom_resources_named_like_built_in_kinds_pass_through() {
        let volcano = "apiVersion: batch.volcano.sh/v1alpha1\nkind: Job\nmetadata: {name: v}\n\
                       spec: {tasks: [{name: t, template: {spec: {containers: [{name: c, image: c:1}]}}}]}\n\
                       ---\napiVersion: example.com/v1\nkind: Deployment\nmetadata: {name: d}\n\
                       spec: {template: {spec: {containers: [{name: c, image: c:1}]}}}\n";
        assert_eq!(parse_all(&inject_default(volcano)), parse_all(volcano));
        // The built-in kinds, with and without their apiVersion.
        let built_in = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n\
                        spec: {template: {spec: {containers: [{name: c, image: c:1}]}}}\n---\n\
                        kind: Deployment\nmetadata: {name: e}\n\
                        spec: {template: {spec: {containers: [{name: c, image: c:1}]}}}\n";
        let docs = parse_all(&inject_default(built_in));
        for doc in &docs {
            assert_injected(doc, "/spec/template/spec");
        }
        // An older version of a built-in group is refused, not passed on
        // without the sidecar.
        for old in ["extensions/v1beta1", "apps/v1beta2"] {
            let yaml = built_in.replace("apps/v1", old);
            let refused = inject(&yaml, &InjectOptions::default())
                .unwrap_err()
                .to_string();
            assert!(refused.contains(old), "{refused}");
        }
    }

    #[test]
    fn pod_is_injected_at_spec_and_annotated_in_its_metadata() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n    \
                    - name: app\n      image: app:1\n";
        let docs = parse_all(&inject_default(yaml));
        assert_injected(&docs[0], "/spec");
        assert_eq!(
            pointer(&docs[0], "/metadata/annotations/scopegate.io~1inject"),
            "injected"
        );
    }

    #[test]
    fn cronjob_is_injected_in_its_job_template() {
        let yaml = r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: job
              image: job:1
"#;
        let docs = parse_all(&inject_default(yaml));
        assert_injected(&docs[0], "/spec/jobTemplate/spec/template/spec");
        assert_eq!(pointer(&docs[0], "/spec/schedule"), "0 3 * * *");
        assert!(docs[0]["spec"].get("template").is_none());
    }

    #[test]
    fn service_and_other_kinds_pass_through_unchanged() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    example.com/port: "8080"
spec:
  selector: {app: web}
  ports:
    - name: http
      port: 80
      targetPort: 8080
"#;
        let out = inject_default(yaml);
        assert_eq!(parse_all(&out), parse_all(yaml));
        assert!(!out.contains("scopegate"));
        // ConfigMaps, CRDs and kind-less mappings too.
        let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\n\
                     apiVersion: example.com/v1\nkind: Widget\nspec: {template: {spec: {}}}\n\
                     ---\nfoo: bar\n";
        assert_eq!(parse_all(&inject_default(other)), parse_all(other));
    }

    #[test]
    fn multi_document_input_keeps_order_and_skips_empty_documents() {
        let yaml = format!(
            "# leading comment\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
             spec: {{ports: [{{port: 80}}]}}\n---\n---\n# only a comment\n---\n{DEPLOYMENT}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: \
             [{{name: app, image: app:1}}]\n...\n"
        );
        let out = inject_default(&yaml);
        let docs = parse_all(&out);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["kind"], "Service");
        assert_eq!(docs[1]["kind"], "Deployment");
        assert_eq!(docs[2]["kind"], "Pod");
        assert_injected(&docs[1], "/spec/template/spec");
        assert_injected(&docs[2], "/spec");
        assert_eq!(out.matches("---\n").count(), 2, "joined by ---:\n{out}");
        assert!(!out.starts_with("---"));
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn list_items_are_injected() {
        let yaml = format!(
            "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    \
             metadata: {{name: s}}\n  - {}\n",
            serde_json::to_string(&parse_all(DEPLOYMENT)[0]).expect("json")
        );
        let docs = parse_all(&inject_default(&yaml));
        assert_eq!(docs[0]["items"][0]["kind"], "Service");
        assert!(docs[0]["items"][0].get("spec").is_none());
        assert_injected(&docs[0]["items"][1], "/spec/template/spec");
    }

    #[test]
    fn injecting_twice_equals_injecting_once() {
        let inputs = [
            DEPLOYMENT.to_owned(),
            format!("{DEPLOYMENT}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, \
             image: a}]}\n"
                .to_owned(),
        ];
        for input in inputs {
            let once = inject_default(&input);
            let twice = inject_default(&once);
            assert_eq!(once, twice);
            let thrice = inject_default(&twice);
            assert_eq!(once, thrice);
        }
    }

    #[test]
    fn existing_scopegate_container_leaves_document_untouched() {
        // A hand-written sidecar (even a classic one in `containers`) wins.
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    \
                    - name: app\n      image: app:1\n    - name: scopegate\n      image: \
                    mine:2\n      ports: [{containerPort: 8080}]\n";
        let out = inject_default(yaml);
        assert_eq!(parse_all(&out), parse_all(yaml));
    }

    #[test]
    fn quoted_strings_and_scalar_types_survive() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    prometheus.io/port: "8080"
    example.com/enabled: "true"
    example.com/mode: "on"
    example.com/answer: 'yes'
    example.com/no: "n"
    example.com/mixed: yEs
    example.com/mixed-off: oFF
    example.com/null: "null"
    example.com/tilde: "~"
    example.com/octal: "0755"
    example.com/float: "1.5"
    example.com/date: 2024-01-02
    example.com/empty: ""
    example.com/text: |
      line one
      line two
spec:
  replicas: 3
  progressDeadlineSeconds: 600
  paused: no
  template:
    metadata:
      labels:
        version: "1.0"
        track: "123"
    spec:
      containers:
        - name: app
          image: app:1
          stdin: Yes
          tty: OFF
          args: ["--port", "3000", "--debug", "true", "--ratio", "0.5"]
          env:
            - name: PORT
              value: "3000"
            - name: FLAG
              value: "off"
          resources:
            limits: {cpu: 500m, memory: 128Mi}
            requests: {cpu: 0.25}
      volumes:
        - name: cfg
          configMap:
            name: cfg
            defaultMode: 0644
"#;
        let out = inject_default(yaml);
        let before = &parse_all(yaml)[0];
        let after = &parse_all(&out)[0];
        // Everything that was there is unchanged, types included.
        assert_eq!(before["metadata"], after["metadata"]);
        assert_eq!(before["spec"]["replicas"], after["spec"]["replicas"]);
        assert_eq!(
            before["spec"]["template"]["spec"]["containers"],
            after["spec"]["template"]["spec"]["containers"]
        );
        let ann = &after["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/port"], json!("8080"));
        assert_eq!(ann["example.com/enabled"], json!("true"));
        assert_eq!(ann["example.com/mode"], json!("on"));
        assert_eq!(ann["example.com/answer"], json!("yes"));
        assert_eq!(ann["example.com/no"], json!("n"));
        // Plain, in a case go-yaml v2 does not take for a boolean.
        assert_eq!(ann["example.com/mixed"], json!("yEs"));
        assert_eq!(ann["example.com/mixed-off"], json!("oFF"));
        assert_eq!(ann["example.com/null"], json!("null"));
        assert_eq!(ann["example.com/tilde"], json!("~"));
        assert_eq!(ann["example.com/octal"], json!("0755"));
        assert_eq!(ann["example.com/float"], json!("1.5"));
        assert_eq!(ann["example.com/date"], json!("2024-01-02"));
        assert_eq!(ann["example.com/empty"], json!(""));
        assert_eq!(ann["example.com/text"], json!("line one\nline two\n"));
        assert_eq!(after["spec"]["replicas"], json!(3));
        // Plain YAML 1.1 booleans are booleans, as kubectl reads them.
        assert_eq!(after["spec"]["paused"], json!(false));
        let app = pointer(after, "/spec/template/spec/containers/0");
        assert_eq!(app["stdin"], json!(true));
        assert_eq!(app["tty"], json!(false));
        assert_eq!(
            pointer(after, "/spec/template/metadata/labels/version"),
            &json!("1.0")
        );
        assert_eq!(
            pointer(after, "/spec/template/metadata/labels/track"),
            &json!("123")
        );
        let env = pointer(after, "/spec/template/spec/containers/0/env");
        assert_eq!(env[0]["value"], json!("3000"));
        assert_eq!(env[1]["value"], json!("off"));
        assert_eq!(
            pointer(
                after,
                "/spec/template/spec/containers/0/resources/requests/cpu"
            ),
            &json!(0.25)
        );
        // Kubernetes reads 0644 as octal: 420.
        assert_eq!(
            pointer(after, "/spec/template/spec/volumes/0/configMap/defaultMode"),
            &json!(420)
        );
        // In the text, strings a YAML 1.1 reader (kubectl) would retype are quoted.
        for needle in [
            r#"prometheus.io/port: "8080""#,
            r#"example.com/enabled: "true""#,
            r#"example.com/mode: "on""#,
            r#"example.com/answer: "yes""#,
            r#"example.com/null: "null""#,
            r#"example.com/octal: "0755""#,
            r#"example.com/date: "2024-01-02""#,
            r#"example.com/mixed: "yEs""#,
            "paused: false",
            "stdin: true",
            r#"value: "off""#,
            r#"scopegate.io/upstream-port: "3000""#,
        ] {
            assert!(out.contains(needle), "missing {needle} in:\n{out}");
        }
    }

    #[test]
    fn bad_yaml_reports_document_line_and_column() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\n\
                    kind: Pod\nspec:\n  containers: [a, b\n  x: 1\n";
        let err = inject(yaml, &InjectOptions::default()).expect_err("invalid YAML");
        match &err {
            InjectError::Parse {
                document,
                line,
                column,
                message,
            } => {
                assert_eq!(*document, 2);
                let line = line.expect("line known");
                assert!((8..=10).contains(&line), "line {line}");
                assert!(column.is_some());
                assert!(!message.is_empty());
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with("document 2: invalid YAML at line "),
            "{text}"
        );
    }

    #[test]
    fn bad_yaml_in_first_document_and_duplicate_keys() {
        let err = inject("a: [1\n", &InjectOptions::default()).expect_err("invalid");
        assert!(
            matches!(err, InjectError::Parse { document: 1, .. }),
            "{err:?}"
        );
        let err = inject("kind: Pod\nkind: Service\n", &InjectOptions::default())
            .expect_err("duplicate key");
        assert!(
            matches!(
                err,
                InjectError::Parse {
                    document: 1,
                    line: Some(2),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn non_mapping_document_and_malformed_workloads_are_errors() {
        let err = inject("- a\n- b\n", &InjectOptions::default()).expect_err("a sequence");
        assert!(
            matches!(err, InjectError::InvalidManifest { .. }),
            "{err:?}"
        );
        let err = inject(
            "kind: Service\n---\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n",
            &InjectOptions::default(),
        )
        .expect_err("no template");
        assert_eq!(
            err.to_string(),
            "document 2 (Deployment/d): Deployment has no `spec.template` mapping"
        );
        let err = inject(
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: {name: a}}\n",
            &InjectOptions::default(),
        )
        .expect_err("containers not a list");
        assert!(
            err.to_string()
                .contains("`spec.containers` must be a sequence"),
            "{err}"
        );
    }

    #[test]
    fn port_conflicts_are_reported() {
        let yaml = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: app\n      \
                    image: a\n      ports: [{containerPort: 8080}]\n";
        let err = inject(yaml, &InjectOptions::default()).expect_err("conflict");
        assert!(
            matches!(&err, InjectError::PortConflict { port: 8080, purpose: "proxy", container, .. } if container == "app"),
            "{err:?}"
        );
        // With another proxy port it works, and the sidecar uses that port.
        let opts = InjectOptions {
            proxy_port: 8443,
            ..InjectOptions::default()
        };
        let docs = parse_all(&inject(yaml, &opts).expect("no conflict"));
        assert_eq!(
            pointer(&docs[0], "/spec/initContainers/0/ports/0/containerPort"),
            8443
        );
    }

    #[test]
    fn options_are_used_and_validated() {
        let opts = InjectOptions {
            image: "registry.example.com/scopegate:9".to_owned(),
            config_map: "orders-scopegate".to_owned(),
            proxy_port: 18080,
            admin_port: 19090,
            upstream_port: 5000,
            allow_host_network: false,
        };
        let docs = parse_all(&inject(DEPLOYMENT, &opts).expect("inject"));
        let spec = pointer(&docs[0], "/spec/template/spec");
        let c = &spec["initContainers"][0];
        assert_eq!(c["image"], "registry.example.com/scopegate:9");
        assert_eq!(c["ports"][0]["containerPort"], 18080);
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 19090);
        assert_eq!(spec["volumes"][1]["configMap"]["name"], "orders-scopegate");
        assert_eq!(
            pointer(
                &docs[0],
                "/spec/template/metadata/annotations/scopegate.io~1upstream-port"
            ),
            "5000"
        );

        let bad = [
            InjectOptions {
                image: " ".to_owned(),
                ..InjectOptions::default()
            },
            InjectOptions {
                config_map: "Not_Valid".to_owned(),
                ..InjectOptions::default()
            },
            InjectOptions {
                admin_port: 8080,
                ..InjectOptions::default()
            },
            InjectOptions {
                upstream_port: 0,
                ..InjectOptions::default()
            },
        ];
        for opts in bad {
            let err = inject(DEPLOYMENT, &opts).expect_err("invalid options");
            assert!(matches!(err, InjectError::InvalidOptions(_)), "{err:?}");
        }
    }

    #[test]
    fn existing_config_volume_is_reused_or_rejected() {
        let with = |vol: &str| {
            format!(
                "kind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: a, image: a}}]\n  \
                 volumes: [{vol}]\n"
            )
        };
        let docs = parse_all(&inject_default(&with(
            "{name: scopegate-config, configMap: {name: custom}}",
        )));
        let vols = pointer(&docs[0], "/spec/volumes")
            .as_array()
            .expect("volumes");
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0]["configMap"]["name"], "custom");
        let err = inject(
            &with("{name: scopegate-config, emptyDir: {}}"),
            &InjectOptions::default(),
        )
        .expect_err("not a configmap");
        assert!(
            matches!(err, InjectError::InvalidManifest { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn empty_input_gives_empty_output() {
        assert_eq!(inject_default(""), "");
        assert_eq!(inject_default("---\n# nothing\n---\n"), "");
    }

    #[test]
    fn split_documents_tracks_lines() {
        let chunks = split_documents("a: 1\n---\nb: 2\n--- |\n  text\n...\n%YAML 1.2\n---\nc: 3\n");
        let summary: Vec<_> = chunks
            .iter()
            .map(|c| (c.first_line, c.has_content))
            .collect();
        assert_eq!(summary, vec![(1, true), (2, true), (4, true), (7, true)]);
        assert_eq!(chunks[3].text, "%YAML 1.2\n---\nc: 3\n");
        // `----` and `---x` are not markers.
        assert_eq!(split_documents("a: |\n  ----\nb: ---x\n").len(), 1);
    }

    #[test]
    fn plain_keys_are_read_as_go_yaml_v2_reads_them() {
        // Kept as written by kubectl: strings, and values it writes back as
        // the same text.
        for key in [
            "x",
            "yEs",
            "oN",
            "true",
            "false",
            "80",
            "0",
            "-7",
            "1:20",
            "2001-12-14",
            "<<",
            "+.nan",
            "0x",
            "-",
            "1.2.3",
            "v1",
            "_1",
            "0b2",
            "1e",
        ] {
            assert_eq!(plain_key_reading(key), None, "{key}");
        }
        for (key, reads_as) in [
            ("y", "the boolean true (the key \"true\")"),
            ("On", "the boolean true (the key \"true\")"),
            ("True", "the boolean true (the key \"true\")"),
            ("N", "the boolean false (the key \"false\")"),
            ("0644", "the number 420 (the key \"420\")"),
            ("0x10", "the number 16 (the key \"16\")"),
            ("0o17", "the number 15 (the key \"15\")"),
            ("0B101", "the number 5 (the key \"5\")"),
            ("-0b101", "the number -5 (the key \"-5\")"),
            ("1_000", "the number 1000 (the key \"1000\")"),
            ("+5", "the number 5 (the key \"5\")"),
            ("-0", "the number 0 (the key \"0\")"),
            ("00", "the number 0 (the key \"0\")"),
            (
                "9223372036854775808",
                "a number too large for kubectl's keys",
            ),
            ("~", "null, which kubectl refuses as a key"),
            ("Null", "null, which kubectl refuses as a key"),
        ] {
            assert_eq!(plain_key_reading(key).as_deref(), Some(reads_as), "{key}");
        }
        for float in [
            "1.5", "1.", ".5", "-.5e3", "1e3", "1E+3", "08", ".inf", "-.Inf", ".NaN",
        ] {
            assert!(
                plain_key_reading(float).is_some_and(|r| r.starts_with("a floating-point")),
                "{float}"
            );
        }
    }

    /// go-yaml v2 drops every `_` of a plain scalar before reading a
    /// number; where serde-saphyr reads other than kubectl would, the value
    /// is refused where it is, and where both read one number it passes.
    #[test]
    fn numbers_kubectl_reads_otherwise_are_refused_where_they_are() {
        for (value, number) in [
            ("1_000.5", "1000.5"),
            ("3.14_15", "3.1415"),
            ("-1_0.0", "-10"),
            ("1e1_0", "10000000000"),
            ("1__0", "10"),
            ("1_", "1"),
            ("0x1F_", "31"),
        ] {
            let yaml = format!("kind: Widget\nspec:\n  items:\n    - {{a: 1, b: {value}}}\n");
            match inject(&yaml, &InjectOptions::default()) {
                Err(InjectError::AmbiguousNumber {
                    document: 1,
                    line: 4,
                    column: 17,
                    value: v,
                    number: n,
                }) => assert_eq!((v.as_str(), n.as_str()), (value, number)),
                other => panic!("{value}: {other:?}"),
            }
        }
        let err = inject("a: 1__0\n", &InjectOptions::default())
            .expect_err("refused")
            .to_string();
        assert_eq!(
            err,
            "document 1: the unquoted value \"1__0\" at line 1, column 4 is the number 10 to \
             kubectl (YAML 1.1); write it as 10, or quote it to keep the text"
        );
        // Read alike, quoted, or no number to go-yaml: kept.
        let yaml = "kind: Widget\nspec: {a: 1_000, b: 0644, c: \"1__0\", d: 1.5e3, e: _1, f: 1_a, g: 1.2.3}\n";
        let docs = parse_all(&inject_default(yaml));
        assert_eq!(
            docs[0]["spec"],
            json!({"a": 1000, "b": 420, "c": "1__0", "d": 1500.0, "e": "_1", "f": "1_a", "g": "1.2.3"})
        );
    }

    #[test]
    fn ambiguous_keys_are_refused_where_they_are() {
        let refused = |yaml: &str| match inject(yaml, &InjectOptions::default()) {
            Err(InjectError::AmbiguousKey {
                document,
                line,
                column,
                key,
                ..
            }) => (document, line, column, key),
            other => panic!("expected an ambiguous key in {yaml:?}, got {other:?}"),
        };
        // In the second document, in a flow mapping in a sequence.
        let yaml = "kind: Service\n---\nkind: Widget\nspec:\n  items:\n    - {a: 1, 0644: 2}\n";
        assert_eq!(refused(yaml), (2, 6, 14, "0644".to_owned()));
        // An alias of a scalar kubectl reads as a number, and a tagged key.
        let yaml = "kind: Widget\nspec:\n  a: &n 0x10\n  *n : b\n";
        assert_eq!(refused(yaml), (1, 4, 3, "0x10".to_owned()));
        for tagged in [
            "!!int 80",
            "!!bool yes",
            "!!float 1",
            "!!null ''",
            "!!binary aGk=",
        ] {
            let yaml = format!("kind: Widget\nspec: {{{tagged}: b}}\n");
            let err = inject(&yaml, &InjectOptions::default()).expect_err(tagged);
            assert!(
                matches!(err, InjectError::AmbiguousKey { line: 2, .. }),
                "{tagged}: {err:?}"
            );
        }
        // A value spelt so is no key; quoted keys, and ones kubectl keeps, pass.
        let yaml = "kind: Widget\nspec:\n  a: 0644\n  b: [y, ~]\n  \"y\": 1\n  '0644': 2\n  \
                    80: 3\n  true: 4\n  ? |\n    y\n  : 5\n";
        let docs = parse_all(&inject_default(yaml));
        assert_eq!(
            docs[0]["spec"],
            json!({"a": 420, "b": [true, null], "y": 1, "0644": 2, "80": 3, "true": 4, "y\n": 5})
        );
        let err = inject("a:\n  y: 1\n", &InjectOptions::default())
            .expect_err("refused")
            .to_string();
        assert_eq!(
            err,
            "document 1: the unquoted key \"y\" at line 2, column 3 is the boolean true (the \
             key \"true\") to kubectl (YAML 1.1), not the text \"y\"; quote it to keep it as \
             written"
        );
    }

    #[test]
    fn container_ports_are_read_as_kubectl_sends_them() {
        let pod = |ports: &str| {
            format!(
                "kind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n    - name: app\n      \
                 image: a\n      ports: {ports}\n"
            )
        };
        // A whole float is the integer; only TCP (or no protocol) conflicts.
        for ports in [
            "[{containerPort: 8080.0}]",
            "[{containerPort: !!float 8080}]",
            "[{containerPort: 8080, protocol: TCP}]",
            "[{containerPort: 9090, protocol: UDP}, {containerPort: 9090}]",
        ] {
            let err = inject(&pod(ports), &InjectOptions::default()).expect_err(ports);
            assert!(
                matches!(err, InjectError::PortConflict { .. }),
                "{ports}: {err:?}"
            );
        }
        for ports in [
            "[{containerPort: 9090, protocol: UDP}, {containerPort: 8080, protocol: SCTP}]",
            "[{containerPort: 3000.0}, {name: x}, {containerPort: null}]",
        ] {
            inject(&pod(ports), &InjectOptions::default()).expect(ports);
        }
        for (ports, shown) in [
            ("[{containerPort: 8080.5}]", "8080.5"),
            ("[{containerPort: \"8080\"}]", "\"8080\""),
            ("[{containerPort: 70000}]", "70000"),
            ("[{containerPort: 0}]", "0"),
            (
                "[{name: a, containerPort: 1}, {containerPort: -1, protocol: UDP}]",
                "-1",
            ),
        ] {
            let err = inject(&pod(ports), &InjectOptions::default()).expect_err(ports);
            assert!(
                matches!(err, InjectError::InvalidManifest { .. }),
                "{ports}: {err:?}"
            );
            assert!(
                err.to_string().contains(&format!(
                    "containerPort` of container \"app\" is {shown}, not a port number"
                )),
                "{ports}: {err}"
            );
        }
    }
}
