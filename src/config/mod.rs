//! Configuration: the YAML schema, loading with located errors, and validation
//! into the runtime types every other module uses.

pub mod load;
pub mod schema;
pub mod validate;

use std::path::Path;

pub use load::{ConfigError, NamedFiles};
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

/// Parses and validates configuration text; `source` names it in errors and
/// `base_dir` resolves relative file paths in it.
pub fn load_str(source: &str, base_dir: &Path, text: &str) -> Result<Config, ConfigError> {
    load_str_naming_files(source, base_dir, text).map_err(|(error, _)| error)
}

/// [`load_str`], whose refusal also names the files validation read before
/// it stopped: a config refused because a key file was missing or not yet
/// complete is worth reading again once that file changes, although its own
/// text has not.
pub fn load_str_naming_files(
    source: &str,
    base_dir: &Path,
    text: &str,
) -> Result<Config, (ConfigError, Box<NamedFiles>)> {
    let raw = load::parse(source, text).map_err(|e| (e, Box::default()))?;
    let mut config = validate::validate_naming_files(source, base_dir, raw)?;
    config.text_digest = crate::auth::cache::digest(text);
    Ok(config)
}
