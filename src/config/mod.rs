//! Configuration: the YAML schema, loading with located errors, and validation
//! into the runtime types every other module uses.

pub mod load;
pub mod schema;
pub mod validate;

use std::path::Path;

pub use load::{ConfigError, ConfigWarning, NamedFiles};
pub use validate::{
    Access, AuthorizationServerPaths, AuthorizationServerSettings, Client, ClientAuth, Config,
    ForwardPolicy, Grant, Introspection, Issuer, KeySource, ResourceMetadata, ResponseStyle, Route,
    ScopeClaim, Secret, ServerSettings, TlsFiles, Upstream, User,
};

/// Reads, parses and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = load::read_file(path)?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    load_str(&path.display().to_string(), base_dir, &text)
}

/// [`load_file`], whose warnings are handed back instead of logged (with a
/// refusal too: those found before it), for `scopegate check` to print them
/// plainly whatever `RUST_LOG` says.
pub fn load_file_with_warnings(path: &Path) -> (Result<Config, ConfigError>, Vec<ConfigWarning>) {
    let source = path.display().to_string();
    let text = match load::read_file(path) {
        Ok(text) => text,
        Err(error) => return (Err(error), Vec::new()),
    };
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    let (loaded, warnings) = load_str_with_warnings(&source, base_dir, &text);
    (loaded.map_err(|(error, _)| error), warnings)
}

/// Parses and validates configuration text; `source` names it in errors and
/// `base_dir` resolves relative file paths in it.
pub fn load_str(source: &str, base_dir: &Path, text: &str) -> Result<Config, ConfigError> {
    load_str_naming_files(source, base_dir, text).map_err(|(error, _)| error)
}

/// [`load_str`], whose refusal also names the files validation read before
/// it stopped: a config refused because a key file was missing or not yet
/// complete is worth reading again once that file changes, although its own
/// text has not. Its warnings are logged.
pub fn load_str_naming_files(
    source: &str,
    base_dir: &Path,
    text: &str,
) -> Result<Config, (ConfigError, Box<NamedFiles>)> {
    let (loaded, warnings) = load_str_with_warnings(source, base_dir, text);
    for warning in &warnings {
        warning.log();
    }
    loaded
}

/// [`load_str_naming_files`], whose warnings are handed back, not logged.
fn load_str_with_warnings(source: &str, base_dir: &Path, text: &str) -> validate::Validated {
    let raw = match load::parse(source, text) {
        Ok(raw) => raw,
        Err(error) => return (Err((error, Box::default())), Vec::new()),
    };
    let (validated, warnings) = validate::validate_with_warnings(source, base_dir, raw);
    let loaded = validated.map(|mut config| {
        config.text_digest = crate::auth::cache::digest(text);
        config
    });
    (loaded, warnings)
}
