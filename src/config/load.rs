//! Reading and parsing the YAML file, with errors that point at a line and column.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::Location;

use super::schema::RawConfig;
use crate::auth::cache::{digest, digest_of, TokenDigest};

/// A configuration problem, located in its file like a compiler error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or source name) the problem is in.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// What is wrong, for a person to fix.
    pub message: String,
}

impl ConfigError {
    /// An error at a YAML location (unknown locations print without line and column).
    pub fn at(file: &str, location: Location, message: impl Into<String>) -> Self {
        let known = location != Location::UNKNOWN;
        Self {
            file: file.to_owned(),
            line: known.then(|| location.line()),
            column: known.then(|| location.column()),
            message: one_line(message.into()),
        }
    }

    /// An error about what the file as a whole lacks, placed at its start.
    pub fn at_start(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: Some(1),
            column: Some(1),
            message: one_line(message.into()),
        }
    }

    /// An error about the file as a whole (unreadable, say).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self::at(file, Location::UNKNOWN, message)
    }

    /// The same error, placed at `location` if it had no place of its own
    /// (a check that failed on a default value, which is written nowhere,
    /// points at the item that took the default).
    #[must_use]
    pub fn or_at(self, location: Location) -> Self {
        if self.line.is_some() || location == Location::UNKNOWN {
            return self;
        }
        Self::at(&self.file, location, self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "{}:{}:{}: {}", self.file, line, column, self.message)
            }
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Something a configuration may say but its author should look at again
/// (a setting that invites a flood of fetches, a password in a ConfigMap):
/// the config is taken, and the warning located like a [`ConfigError`].
/// Kept apart from the log so that `scopegate check` can print it plainly
/// whatever `RUST_LOG` says, while the gateway logs it on each load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where it is, and what it says, as an error would.
    pub place: ConfigError,
    /// The issuer it is about, logged as a field of its own.
    pub issuer: Option<String>,
}

impl ConfigWarning {
    /// Logs it at warn level, as the gateway does when it loads a config.
    pub fn log(&self) {
        match &self.issuer {
            Some(issuer) => tracing::warn!(issuer = %issuer, "{}", self.place),
            None => tracing::warn!("{}", self.place),
        }
    }
}

impl fmt::Display for ConfigWarning {
    /// `file:line:column: warning: message`, as a compiler warns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = &self.place;
        match (place.line, place.column) {
            (Some(line), Some(column)) => write!(
                f,
                "{}:{line}:{column}: warning: {}",
                place.file, place.message
            ),
            _ => write!(f, "{}: warning: {}", place.file, place.message),
        }
    }
}

/// Reads a file; the error names the file (and, for text that is no UTF-8,
/// the line and column of the first byte that is not).
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::whole_file(&file, format!("cannot read: {e}")))?;
    text_of(&file, bytes)
}

/// A 1-based position from the number of items before it.
fn count(before: usize) -> u64 {
    u64::try_from(before).map_or(u64::MAX, |n| n.saturating_add(1))
}

/// The text of a file's bytes; an error at the first byte that is no UTF-8.
pub fn text_of(file: &str, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // The prefix is UTF-8, so it has lines and characters to count.
        let before = String::from_utf8_lossy(valid);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        ConfigError {
            file: file.to_owned(),
            line: Some(count(before.matches('\n').count())),
            column: Some(count(before[line_start..].chars().count())),
            message: "the file is not UTF-8 text".to_owned(),
        }
    })
}

/// A digest of files by path and the digest of their contents (`None`:
/// unreadable), to tell whether any of them changed since it was taken.
pub fn files_digest<'a>(
    files: impl IntoIterator<Item = (&'a Path, Option<TokenDigest>)>,
) -> TokenDigest {
    let mut all = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (path, contents) in files {
        let path = path.as_os_str().as_encoded_bytes();
        all.update(&(path.len() as u64).to_be_bytes());
        all.update(path);
        match contents {
            Some(contents) => {
                all.update(&[1]);
                all.update(&contents);
            }
            None => all.update(&[0]),
        }
    }
    digest_of(all.finish())
}

/// Files a configuration read, and a digest ([`files_digest`]) of what they
/// held when it read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFiles {
    /// The files, in the order they were first read.
    pub paths: Vec<PathBuf>,
    /// Their contents then (an unreadable file counts as such).
    pub digest: TokenDigest,
}

impl Default for NamedFiles {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            digest: files_digest([]),
        }
    }
}

/// [`files_digest`] of `files` as they are now.
pub fn current_files_digest(files: &[PathBuf]) -> TokenDigest {
    files_digest(
        files
            .iter()
            .map(|f| (f.as_path(), std::fs::read(f).ok().map(digest))),
    )
}

/// Parses YAML text into the raw schema. This is the only place YAML is parsed.
///
/// A tag serde-saphyr does not itself read (`!env NAME`, `!include x`,
/// anything but the core `!!str`, `!!int`, ... and the bare `!`) is refused
/// at its place: by default the parser drops it and keeps the value, so
/// `client_secret_env: !env X` would silently mean the literal text `X`.
pub fn parse(source_name: &str, text: &str) -> Result<RawConfig, ConfigError> {
    let mut options = serde_saphyr::Options::default();
    options.reject_unsupported_tags = true;
    serde_saphyr::from_str_with_options::<RawConfig>(text, options).map_err(|e| {
        let plain = e.without_snippet();
        let location = plain.location().unwrap_or(Location::UNKNOWN);
        let message = strip_location_suffix(&plain.to_string());
        let message = if message == "expected sequence start" && holds_a_scalar(text, location) {
            "expected a list (`[a, b]` or lines of `- a`); a single value is a list as `[value]`"
                .to_owned()
        } else {
            for_people(&message)
        };
        let about_a_value = message.contains("is not a duration");
        let mut error = ConfigError::at(
            source_name,
            location,
            message + &anchor_note(&plain.to_string()),
        );
        // The parser places a value that is not a duration at its key.
        if about_a_value {
            if let Some(column) = value_column(text, location) {
                error.column = Some(column);
            }
        }
        error
    })
}

/// The column of the value when `location` is a `key: value` on one line,
/// so that a message about the value points at it, not at its key.
fn value_column(text: &str, location: Location) -> Option<u64> {
    let line = text
        .lines()
        .nth(usize::try_from(location.line()).ok()?.checked_sub(1)?)?;
    let column = usize::try_from(location.column()).ok()?.checked_sub(1)?;
    let rest: Vec<char> = line.chars().skip(column).collect();
    let key = rest
        .iter()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-'))
        .count();
    if key == 0 || rest.get(key) != Some(&':') {
        return None;
    }
    let gap = rest[key + 1..]
        .iter()
        .take_while(|c| matches!(c, ' ' | '\t'))
        .count();
    let value = key + 1 + gap;
    if gap == 0 || matches!(rest.get(value), None | Some('#')) {
        return None;
    }
    u64::try_from(column + value + 1).ok()
}

/// Whether a plain value (not nothing, `~` or `null`, nor a comment) starts
/// at `location` in `text`: the parser says the same of a list key left
/// empty and of one given a single value, which need different advice.
fn holds_a_scalar(text: &str, location: Location) -> bool {
    let (Ok(line), Ok(column)) = (
        usize::try_from(location.line()),
        usize::try_from(location.column()),
    ) else {
        return false;
    };
    let Some(line) = text.lines().nth(line.saturating_sub(1)) else {
        return false;
    };
    let Some(rest) = line
        .char_indices()
        .nth(column.saturating_sub(1))
        .and_then(|(at, _)| line.get(at..))
    else {
        return false;
    };
    // An empty value's place is the key's colon.
    let value = rest.strip_prefix(':').unwrap_or(rest).trim();
    !(value.is_empty() || value.starts_with('#') || matches!(value, "~" | "null" | "Null" | "NULL"))
}

/// Escapes line breaks and other control characters (which a quoted value
/// may carry into a message), so that every error is one line.
fn one_line(message: String) -> String {
    if !message.chars().any(char::is_control) {
        return message;
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Rewords the parser's messages that give advice about its own Rust API
/// (`set DuplicateKeyPolicy`, `use Option<String>`) or name Rust types
/// (`invalid u64`) into what the person editing the file needs.
fn for_people(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return format!("duplicate key `{key}`: each key may appear only once");
    }
    if message.starts_with("cannot deserialize null into ") {
        return "a value is required here, not null (`~`, `null` or nothing)".to_owned();
    }
    if message.starts_with("multiple YAML documents detected") {
        return "a second YAML document (`---`): the config is one document".to_owned();
    }
    if message == "expected sequence start" {
        return "expected a list (`[a, b]` or lines of `- a`); a key left empty has no \
                value (null): write the value, or leave the key out"
            .to_owned();
    }
    if message == "expected mapping start" {
        return "expected a mapping of settings (`key: value` lines); the file as a whole \
                is one such mapping"
            .to_owned();
    }
    if message == "expected string scalar" {
        return "expected a single value, not a list or a mapping".to_owned();
    }
    if let Some(tag) = message
        .strip_prefix("unsupported tag `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return format!(
            "`{tag}` tags are not supported; scopegate reads secrets from *_env / *_file keys, \
             and takes no YAML tags but the core ones (`!!str`, `!!int`, ...): write the value \
             without the tag"
        );
    }
    if message.starts_with("cannot deserialize tagged scalar into ") {
        return "a tag (`!!int`, `!!str`, ...) does not fit here: write the value without \
                it (quoted, if it is text that looks like a number)"
            .to_owned();
    }
    if message == "invalid boolean" {
        return "expected `true` or `false`".to_owned();
    }
    if let Some(rest) = message.strip_prefix("invalid value: string ") {
        if let Some(value) = rest.strip_suffix(", expected a duration") {
            let value = value.trim_matches('"');
            // A bare number is the common slip: the unit is what is missing.
            if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
                return format!("`{value}` is not a duration: it needs a unit, e.g. `{value}s`");
            }
            return format!("`{value}` is not a duration (e.g. `2s`, `500ms`, `1m`)");
        }
    }
    if let Some(kind) = message.strip_prefix("invalid ") {
        if matches!(kind, "u8" | "u16" | "u32" | "u64" | "usize") {
            return "expected a whole number (0 or more)".to_owned();
        }
    }
    message.to_owned()
}

/// serde-saphyr appends " at line L, column C" to plain messages; we print the
/// location in front instead, compiler style.
/// A value reached through an alias carries " (defined at line L, column C)
/// (used at ...)" first: the message is cut before it, and where the anchor
/// is goes after the reworded message ([`anchor_note`]).
fn strip_location_suffix(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message);
    let cut = [" (defined at line ", " (used at line ", " at line "]
        .iter()
        .filter_map(|marker| first_line.find(marker))
        .min();
    match cut {
        Some(at) => first_line[..at].to_owned(),
        None => first_line.to_owned(),
    }
}

/// " (through an alias of the anchor at line L, column C)" when the parser
/// says the value came from an alias, so its anchor can be found.
fn anchor_note(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message);
    let Some(start) = first_line.find(" (defined at line ") else {
        return String::new();
    };
    let rest = &first_line[start + " (defined at ".len()..];
    match rest.find(')') {
        Some(end) => format!(
            " (the value is an alias `*` of the anchor at {})",
            &rest[..end]
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser's messages that talk about its Rust API are reworded (these
    /// also pin its wording: a new one shows up here, not in front of users).
    #[test]
    fn parser_advice_about_its_api_is_reworded() {
        let cases = [
            (
                "server:\n  listen: 127.0.0.1:1\n  listen: 127.0.0.1:2\n",
                "t.yaml:3:3: duplicate key `listen`: each key may appear only once",
            ),
            (
                "server:\n  listen: ~\n",
                "t.yaml:2:11: a value is required here, not null (`~`, `null` or nothing)",
            ),
            (
                "routes:\n  - path: /a\n    scopes: admin\n",
                "t.yaml:3:13: expected a list (`[a, b]` or lines of `- a`); a single value is a list as `[value]`",
            ),
            (
                "routes:\n  - path: /a\n    scopes:  # none\n",
                "t.yaml:3:11: expected a list (`[a, b]` or lines of `- a`); a key left empty has no value (null): write the value, or leave the key out",
            ),
            (
                "issuers:\n  - name: a\n    leeway: 30\n",
                "t.yaml:3:13: `30` is not a duration: it needs a unit, e.g. `30s`",
            ),
            (
                "server:\n  header_read_timeout:\t'5 apples'  # no\n",
                "t.yaml:2:24: `5 apples` is not a duration (e.g. `2s`, `500ms`, `1m`)",
            ),
            (
                "server:\n  workers: -1\n",
                "t.yaml:2:12: expected a whole number (0 or more)",
            ),
            (
                "server:\n  max_header_bytes: 1e309\n",
                "t.yaml:2:21: expected a whole number (0 or more)",
            ),
        ];
        for (yaml, want) in cases {
            match parse("t.yaml", yaml) {
                Ok(_) => panic!("accepted: {yaml}"),
                Err(e) => assert_eq!(e.to_string(), want),
            }
        }
    }

    /// A value with line breaks in it (a quoted or block scalar) does not
    /// break the message over lines.
    #[test]
    fn messages_are_one_line() {
        let e = ConfigError::whole_file("t.yaml", "`a\nb\u{7}` is not \"x\"");
        assert_eq!(e.to_string(), "t.yaml: `a\\nb\\u{7}` is not \"x\"");
    }
}
