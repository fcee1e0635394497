//! Reading and parsing the YAML file, with errors that point at a line and column.

use std::fmt;
use std::path::Path;

use serde_saphyr::Location;

use super::schema::RawConfig;

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
            message: message.into(),
        }
    }

    /// An error about the file as a whole (unreadable, say).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self::at(file, Location::UNKNOWN, message)
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

/// Reads a file; the error names the file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::whole_file(&path.display().to_string(), format!("cannot read: {e}"))
    })
}

/// Parses YAML text into the raw schema. This is the only place YAML is parsed.
pub fn parse(source_name: &str, text: &str) -> Result<RawConfig, ConfigError> {
    serde_saphyr::from_str::<RawConfig>(text).map_err(|e| {
        let plain = e.without_snippet();
        let location = plain.location().unwrap_or(Location::UNKNOWN);
        ConfigError::at(
            source_name,
            location,
            strip_location_suffix(&plain.to_string()),
        )
    })
}

/// serde-saphyr appends " at line L, column C" to plain messages; we print the
/// location in front instead, compiler style.
fn strip_location_suffix(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message);
    match first_line.rfind(" at line ") {
        Some(at) => first_line[..at].to_owned(),
        None => first_line.to_owned(),
    }
}
